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
// (as recorded under sipbench load): the interaction's six states, the agent's
// lease (granted, accepted, completed, wrap-up ended) and three states, and the
// routing decision.
func callEvents(dst []events.Event, seq *uint64, id core.InteractionID, agent core.AgentID, lease core.LeaseID, at time.Time) []events.Event {
	attrs := map[string]string{"call_id": fmt.Sprintf("%d-17494@127.0.0.1", lease), "from": "sip:customer@127.0.0.1:5060", "to": "20001"}
	ix := events.Interaction{ID: id, Channel: core.ChannelVoice, Queue: "q1", CreatedAt: at, EnqueuedAt: at, Attributes: attrs}
	add := func(typ events.Type, ag core.AgentID, ixID core.InteractionID, data any) {
		*seq++
		q := core.QueueID("")
		if typ == events.TypeInteraction || typ == events.TypeDecision {
			q = "q1"
		}
		dst = append(dst, events.Event{Seq: *seq, Time: at, Type: typ, Agent: ag, Interaction: ixID, Queue: q, Data: data})
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

// BenchmarkWriteCalls measures the store writer with call-shaped batches: 200
// agents, fresh interaction ids, the events of calls=N calls per batch (a
// writer batch holds the calls of ~50–150 ms under load), every call's events
// in one batch. It reports calls/s; compare with sipbench's calls/s.
func BenchmarkWriteCalls(b *testing.B) {
	for _, calls := range []int{6, 25, 50, 200} {
		b.Run(fmt.Sprintf("calls=%d", calls), func(b *testing.B) {
			s := openTest(b, b.TempDir())
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(1, 2))
			var seq uint64
			var lease core.LeaseID
			buf := make([]events.Event, 0, 14*calls)
			at := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
			total := 0
			cpu0 := cpuTime()
			for b.Loop() {
				buf = buf[:0]
				for range calls {
					lease++
					at = at.Add(300 * time.Microsecond)
					agent := core.AgentID(fmt.Sprintf("a%04d", rng.IntN(200)+1))
					buf = callEvents(buf, &seq, interaction.NewID(), agent, lease, at)
				}
				if err := s.WriteBatch(ctx, buf); err != nil {
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
