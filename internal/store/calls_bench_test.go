package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/interaction"
)

// callEvents appends the fourteen events a queued voice call writes in a node
// (as recorded under sipbench load), without their seqs: the interaction's six
// states, the agent's lease (granted, accepted, completed, wrap-up ended) and
// three states, and the routing decision — in three phases: offered (the
// first six), answered (three), ended (five).
func callEvents(dst []events.Event, id core.InteractionID, agent core.AgentID, lease core.LeaseID, at time.Time) []events.Event {
	attrs := map[string]string{"call_id": fmt.Sprintf("%d-17494@127.0.0.1", lease), "from": "sip:customer@127.0.0.1:5060", "to": "20001"}
	ix := events.Interaction{ID: id, Channel: core.ChannelVoice, Queue: "q1", CreatedAt: at, EnqueuedAt: at, Attributes: attrs}
	add := func(typ events.Type, ag core.AgentID, ixID core.InteractionID, data any) {
		q := core.QueueID("")
		if typ == events.TypeInteraction || typ == events.TypeDecision {
			q = "q1"
		}
		dst = append(dst, events.Event{Time: at, Type: typ, Agent: ag, Interaction: ixID, Queue: q, Data: data})
	}
	state := func(st, prev string) {
		ix.Previous, ix.State = prev, st
		add(events.TypeInteraction, ix.Agent, id, ix)
	}
	load := func(offered, busy int) []events.ChannelLoad {
		return []events.ChannelLoad{{Channel: core.ChannelVoice, Capacity: 1, Offered: offered, Busy: busy}}
	}
	const epoch = 1795350188426320745
	state("created", "")
	state("queued", "created")
	add(events.TypeLease, agent, id, events.Lease{Lease: lease, Epoch: epoch, Channel: core.ChannelVoice, Outcome: "granted", TTLMillis: 20000})
	add(events.TypeAgentState, agent, "", events.AgentState{State: "reserved", Presence: "ready", Cause: "reserve", Epoch: epoch, Load: load(1, 0)})
	ix.Agent = agent
	state("offered", "queued")
	add(events.TypeDecision, "", id, events.Decision{Direction: "interaction_arrived", Strategy: "longest-idle", Queues: []core.QueueID{"q1"},
		Eligible: 200, Candidates: []events.Candidate{{Agent: agent, Why: "longest idle", Result: "granted"}}, Chosen: agent, Outcome: "reserved"})
	add(events.TypeLease, agent, id, events.Lease{Lease: lease, Epoch: epoch, Channel: core.ChannelVoice, Outcome: "accepted"})
	add(events.TypeAgentState, agent, "", events.AgentState{State: "busy", Presence: "ready", Cause: "accept", Epoch: epoch, Load: load(0, 1)})
	ix.AnsweredAt = at
	state("connected", "offered")
	ix.Reason = "caller hung up"
	state("wrap_up", "connected")
	add(events.TypeLease, agent, id, events.Lease{Lease: lease, Epoch: epoch, Channel: core.ChannelVoice, Outcome: "completed"})
	add(events.TypeLease, agent, id, events.Lease{Lease: lease, Epoch: epoch, Channel: core.ChannelVoice, Outcome: "wrap_up_ended"})
	add(events.TypeAgentState, agent, "", events.AgentState{State: "ready", Presence: "ready", Cause: "complete", Epoch: epoch, Load: load(0, 0)})
	ix.Reason, ix.EndedAt = "", at
	state("ended", "wrap_up")
	return dst
}

// callPhases are where callEvents' phases end.
var callPhases = [3]int{6, 9, 14}

// BenchmarkWriteCalls measures the store writer with call-shaped batches: 200
// agents, fresh interaction ids, calls=N calls per batch. As in a node under
// load, a call's events span three batches: batch k holds the offers of the
// calls of group k, the answers of group k-1 and the ends of group k-2. It
// reports calls/s and the process's CPU per call.
func BenchmarkWriteCalls(b *testing.B) {
	for _, calls := range []int{6, 25, 50, 200} {
		b.Run(fmt.Sprintf("calls=%d", calls), func(b *testing.B) {
			s := openTest(b, b.TempDir())
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(1, 2))
			var seq uint64
			var lease core.LeaseID
			at := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
			var groups [3][]events.Event // the groups of calls k, k-1, k-2
			batch := make([]events.Event, 0, 14*calls)
			total := 0
			cpu0 := cpuTime()
			for b.Loop() {
				groups[0], groups[1], groups[2] = groups[2][:0], groups[0], groups[1]
				for range calls {
					lease++
					at = at.Add(300 * time.Microsecond)
					agent := core.AgentID(fmt.Sprintf("a%04d", rng.IntN(200)+1))
					groups[0] = callEvents(groups[0], interaction.NewID(), agent, lease, at)
				}
				batch = batch[:0]
				for phase, g := range groups {
					from := 0
					if phase > 0 {
						from = callPhases[phase-1]
					}
					for c := 0; c+14 <= len(g); c += 14 {
						for _, e := range g[c+from : c+callPhases[phase]] {
							seq++
							e.Seq = seq
							batch = append(batch, e)
						}
					}
				}
				if err := s.WriteBatch(ctx, batch); err != nil {
					b.Fatal(err)
				}
				total += calls
			}
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "calls/s")
			// The process's CPU per call: steadier than calls/s on a shared
			// machine (fsync waits and other processes do not count).
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(total), "cpu-µs/call")
		})
	}
}

// cpuTime is the CPU time (user + system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
