package interaction

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/router"
)

type stack struct {
	log *events.Log
	m   *agent.Manager
	r   *router.Router
	s   *Service
	clk clock.Clock
}

func newStack(t *testing.T, clk clock.Clock, agents []config.Agent, queues []config.Queue) *stack {
	t.Helper()
	st := &stack{log: events.NewLog(0, 1<<20, false), clk: clk}
	st.m = agent.NewManager(agent.Params{Node: "n1", Agents: agents, Clock: clk, Log: st.log, MissedOffer: config.MissedOfferNotReady, Epoch: 1})
	var err error
	if st.s, err = NewService(Params{Queues: queues, Log: st.log, Clock: clk}); err != nil {
		t.Fatal(err)
	}
	if st.r, err = router.New(router.Params{Queues: queues, Agents: agents, Reserver: st.m, Offerer: st.s, OnTimeout: st.s.TimedOut, Log: st.log, Clock: clk, TickInterval: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	st.s.Wire(st.m, st.r)
	st.m.SetObserver(st.s)
	return st
}

func queue(id string, offer, wrap time.Duration) config.Queue {
	return config.Queue{ID: core.QueueID(id), Strategy: config.StrategyLongestIdle, Skills: map[core.SkillName]int{"x": 1},
		OfferTimeout: config.Duration(offer), WrapUp: ptrD(config.Duration(wrap)),
		ServiceLevel: config.ServiceLevel{Threshold: config.Duration(time.Second), TargetPercent: 80}}
}

func TestRejectKeepsPlaceInQueue(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC))
	agents := []config.Agent{{ID: "ann", Skills: map[core.SkillName]int{"x": 1}}, {ID: "bob", Skills: map[core.SkillName]int{"x": 1}}}
	st := newStack(t, clk, agents, []config.Queue{queue("q", 20*time.Second, 0)})
	first, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q"})
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	second, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q"})
	if err != nil {
		t.Fatal(err)
	}
	// ann gets ready: the older interaction is hers.
	must(t, st.m.Login("ann"))
	must(t, st.m.SetReady("ann"))
	st.r.ApplyAgentState("ann", snapshot(t, st.m, "ann"))
	if ix, _ := st.s.Get(first.ID); ix.State != string(StateOffered) || ix.Agent != "ann" {
		t.Fatalf("first = %+v", ix)
	}
	// She rejects it: it goes back ahead of the second one, and she is not ready.
	if _, err := st.s.Reject(first.ID, "ann"); err != nil {
		t.Fatal(err)
	}
	if v, _ := st.m.Snapshot("ann"); v.State.Reason != agent.ReasonMissedOffer {
		t.Fatalf("ann after reject: %+v", v.State)
	}
	must(t, st.m.Login("bob"))
	must(t, st.m.SetReady("bob"))
	st.r.ApplyAgentState("bob", snapshot(t, st.m, "bob"))
	if ix, _ := st.s.Get(first.ID); ix.State != string(StateOffered) || ix.Agent != "bob" {
		t.Fatalf("first after reject should be offered to bob before the second: %+v", ix)
	}
	if ix, _ := st.s.Get(second.ID); ix.State != string(StateQueued) {
		t.Fatalf("second = %+v", ix)
	}
	// Offer timeout: the lease expires at the owner, the interaction is re-queued.
	clk.Advance(20 * time.Second)
	if ix, _ := st.s.Get(first.ID); ix.State != string(StateQueued) || ix.Agent != "" {
		t.Fatalf("first after expiry = %+v", ix)
	}
	// Wrong agent, wrong state.
	if _, err := st.s.Accept(second.ID, "bob"); !errors.Is(err, ErrNotYours) {
		t.Fatalf("accept by non-holder: %v", err)
	}
	if _, err := st.s.Complete("ix-none", "bob"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("complete unknown: %v", err)
	}
}

func snapshot(t *testing.T, m *agent.Manager, id core.AgentID) events.AgentState {
	t.Helper()
	v, err := m.Snapshot(id)
	if err != nil {
		t.Fatal(err)
	}
	return v.State
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentLifecycles drives the real service, router and agent manager from
// many goroutines (creates, accepts, rejects, completes, cancels, agents going
// ready and not ready, offers expiring on the real clock) and audits the outcome:
// every interaction ends in a terminal state or is still consistently live, no
// agent is ever above capacity, and nothing waits in the router that the service
// does not consider queued.
func TestConcurrentLifecycles(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	var agents []config.Agent
	for i := 0; i < 12; i++ {
		agents = append(agents, config.Agent{ID: core.AgentID(fmt.Sprintf("a%02d", i)), Skills: map[core.SkillName]int{"x": 1},
			Capacity: map[core.Channel]int{core.ChannelTask: 1 + i%3}})
	}
	queues := []config.Queue{queue("q1", 30*time.Millisecond, 5*time.Millisecond), queue("q2", 50*time.Millisecond, 0)}
	st := newStack(t, clock.Real{}, agents, queues)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { _ = st.r.Run(ctx, 0); close(runDone) }()
	for _, a := range agents {
		must(t, st.m.Login(a.ID))
		must(t, st.m.SetReady(a.ID))
	}
	var mu sync.Mutex
	created := map[core.InteractionID]bool{}
	var wg sync.WaitGroup
	deadline := time.Now().Add(3 * time.Second)
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for i := 0; i < 3000 && time.Now().Before(deadline); i++ {
				a := agents[rng.Intn(len(agents))].ID
				switch op := rng.Intn(100); {
				case op < 30:
					ix, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: queues[rng.Intn(2)].ID})
					if err == nil {
						mu.Lock()
						created[ix.ID] = true
						mu.Unlock()
					}
				case op < 80:
					for _, ix := range st.s.Held(a) {
						switch State(ix.State) {
						case StateOffered:
							if rng.Intn(4) == 0 {
								_, _ = st.s.Reject(ix.ID, a)
							} else {
								_, _ = st.s.Accept(ix.ID, a)
							}
						case StateConnected:
							_, _ = st.s.Complete(ix.ID, a)
						}
					}
				case op < 88:
					mu.Lock()
					var any core.InteractionID
					for id := range created {
						any = id
						break
					}
					mu.Unlock()
					_, _ = st.s.Abandon(any, "customer left")
				case op < 96:
					_ = st.m.SetReady(a)
				default:
					_ = st.m.SetNotReady(a, "break")
				}
			}
		}(int64(w + 1))
	}
	wg.Wait()
	// Let everything settle: agents ready, every offer answered, queues empty.
	settle := time.Now().Add(10 * time.Second)
	for st.s.Live() > 0 && time.Now().Before(settle) {
		for _, a := range agents {
			_ = st.m.SetReady(a.ID)
			for _, ix := range st.s.Held(a.ID) {
				switch State(ix.State) {
				case StateOffered:
					_, _ = st.s.Accept(ix.ID, a.ID)
				case StateConnected:
					_, _ = st.s.Complete(ix.ID, a.ID)
				}
			}
		}
		time.Sleep(5 * time.Millisecond) // real clock: wrap-ups end on their own
	}
	cancel()
	<-runDone
	if n := st.s.Live(); n != 0 {
		t.Fatalf("%d interactions still live after settling; router waiting %d", n, st.r.Waiting())
	}
	if n := st.r.Waiting(); n != 0 {
		t.Fatalf("router still holds %d waiting interactions", n)
	}
	// Audit the log: terminal states, lifecycle moves, capacity.
	evs, _, err := st.log.Read(0, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	last := map[core.InteractionID]string{}
	for _, ev := range evs {
		switch d := ev.Data.(type) {
		case events.Interaction:
			if prev, ok := last[d.ID]; ok && !CanMove(State(prev), State(d.State)) {
				t.Fatalf("seq %d: %s moved %s → %s", ev.Seq, d.ID, prev, d.State)
			}
			last[d.ID] = d.State
		case events.AgentState:
			for _, l := range d.Load {
				if l.Offered+l.Busy+l.WrapUp > l.Capacity {
					t.Fatalf("seq %d: %s over capacity: %+v", ev.Seq, ev.Agent, l)
				}
			}
		}
	}
	ended := 0
	for id := range created {
		if !State(last[id]).Terminal() {
			t.Errorf("%s ended in %q", id, last[id])
		}
		ended++
	}
	if ended < 200 {
		t.Fatalf("only %d interactions: too little exercised", ended)
	}
	t.Logf("%d interactions, %d events", ended, len(evs))
}

func ptrD(d config.Duration) *config.Duration { return &d }

// racyAgents abandons the interaction between the service's check and the owner's
// accept: the window where an accept and a cancel cross.
type racyAgents struct {
	Agents
	s  *Service
	ix core.InteractionID
}

func (r racyAgents) Accept(tok agent.Token) error {
	if _, err := r.s.Abandon(r.ix, "customer left"); err != nil {
		return err
	}
	return r.Agents.Accept(tok)
}

func TestAcceptLosesToConcurrentAbandon(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC))
	agents := []config.Agent{{ID: "ann", Skills: map[core.SkillName]int{"x": 1}}}
	st := newStack(t, clk, agents, []config.Queue{queue("q", 20*time.Second, 0)})
	must(t, st.m.Login("ann"))
	must(t, st.m.SetReady("ann"))
	st.r.ApplyAgentState("ann", snapshot(t, st.m, "ann"))
	ix, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q"})
	if err != nil || ix.State != string(StateOffered) {
		t.Fatalf("create: %+v %v", ix, err)
	}
	st.s.Wire(racyAgents{Agents: st.m, s: st.s, ix: ix.ID}, st.r)
	if _, err := st.s.Accept(ix.ID, "ann"); !errors.Is(err, ErrWrongState) && !errors.Is(err, agent.ErrLeaseEnded) {
		t.Fatalf("accept after abandon: %v, want a refusal", err)
	}
	if stats, _ := st.r.Stats("q"); stats.Answered != 0 || stats.Abandoned != 1 {
		t.Fatalf("stats: %+v", stats)
	}
	if v, _ := st.m.Snapshot("ann"); v.State.State != "ready" || len(v.Leases) != 0 {
		t.Fatalf("ann should be free again: %+v", v)
	}
}

// A lease that expired before the router's Offer reached the Service is refused as
// dead: the interaction stays queued instead of being "offered" on a dead token.
func TestOfferOnExpiredLeaseIsRefused(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC))
	st := newStack(t, clk, []config.Agent{{ID: "ann", Skills: map[core.SkillName]int{"x": 1}}}, []config.Queue{queue("q", 20*time.Second, 0)})
	ix, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q"})
	if err != nil {
		t.Fatal(err)
	}
	tok := agent.Token{Agent: "ann", Epoch: 1, Lease: 42}
	st.s.LeaseEnded(agent.LeaseEnd{Token: tok, Interaction: ix.ID, Outcome: agent.OutcomeExpired})
	if res := st.s.Offer(router.Offer{Interaction: ix.ID, Queue: "q", Grant: agent.Grant{Token: tok}}); res != router.OfferDead {
		t.Fatalf("offer on a dead lease: %v, want OfferDead", res)
	}
	if got, _ := st.s.Get(ix.ID); got.State != string(StateQueued) {
		t.Fatalf("state %s, want queued", got.State)
	}
	// Another lease for the same interaction is taken as usual.
	must(t, st.m.Login("ann"))
	must(t, st.m.SetReady("ann"))
	g, err := st.m.Reserve(agent.ReserveRequest{Agent: "ann", Interaction: ix.ID, Channel: core.ChannelTask, TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res := st.s.Offer(router.Offer{Interaction: ix.ID, Queue: "q", Grant: g}); res != router.OfferTaken {
		t.Fatalf("offer on a live lease: %v", res)
	}
	// An offer for an interaction that ended gives the agent back.
	if _, err := st.s.Abandon(ix.ID, "gone"); err != nil {
		t.Fatal(err)
	}
	g2, err := st.m.Reserve(agent.ReserveRequest{Agent: "ann", Interaction: ix.ID, Channel: core.ChannelTask, TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res := st.s.Offer(router.Offer{Interaction: ix.ID, Queue: "q", Grant: g2}); res != router.OfferGone {
		t.Fatalf("offer for an ended interaction: %v", res)
	}
	if v, _ := st.m.Snapshot("ann"); len(v.Leases) != 0 {
		t.Fatalf("lease not released: %+v", v.Leases)
	}
}

// After a restart, tasks resume in place but calls and chats, whose sessions died,
// are failed instead of being offered to agents with nobody behind them.
func TestRecoverResumesTasksOnly(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC))
	st := newStack(t, clk, []config.Agent{{ID: "ann", Skills: map[core.SkillName]int{"x": 1}}}, []config.Queue{queue("q", 20*time.Second, 0)})
	enq := clk.Now().Add(-time.Minute).UTC()
	err := st.s.Recover([]events.Interaction{
		{ID: "task-1", Channel: core.ChannelTask, Queue: "q", State: "offered", EnqueuedAt: enq, CreatedAt: enq},
		{ID: "call-1", Channel: core.ChannelVoice, Queue: "q", State: "queued", EnqueuedAt: enq, CreatedAt: enq},
		{ID: "call-2", Channel: core.ChannelVoice, Queue: "q", State: "wrap_up", Agent: "ann", EnqueuedAt: enq, CreatedAt: enq},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ix, ok := st.s.Get("task-1"); !ok || ix.State != string(StateQueued) {
		t.Fatalf("task after restart: %+v %v", ix, ok)
	}
	for _, id := range []core.InteractionID{"call-1", "call-2"} {
		if _, ok := st.s.Get(id); ok {
			t.Fatalf("%s is still live after restart", id)
		}
	}
	evs, _, _ := st.log.Read(0, 100, nil)
	failed := 0
	for _, ev := range evs {
		if d, ok := ev.Data.(events.Interaction); ok && d.State == string(StateFailed) && strings.Contains(d.Reason, "voice session was lost") {
			failed++
		}
	}
	if failed != 2 {
		t.Fatalf("%d calls failed, want 2", failed)
	}
}

// Ids sort by creation time and never repeat: within a millisecond, and when
// the clock steps back, each id is the previous one plus one.
func TestNewIDOrderedByTime(t *testing.T) {
	var g idGenerator
	at := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	prefix := func(id core.InteractionID) string { return string(id[:len("ix-")+11]) }
	seen := map[core.InteractionID]bool{}
	prev := core.InteractionID("")
	check := func(id core.InteractionID) {
		t.Helper()
		if len(id) != len("ix-")+20 || id[:3] != "ix-" || strings.Trim(string(id[3:]), "0123456789abcdef") != "" {
			t.Fatalf("id %q: want ix- and 20 hex digits", id)
		}
		if id <= prev || seen[id] {
			t.Fatalf("id %q after %q: want increasing, unique", id, prev)
		}
		seen[id], prev = true, id
	}
	for i := range 1000 { // one per millisecond, then 1,000 in one
		check(g.next(at.Add(time.Duration(i) * time.Millisecond)))
	}
	last := at.Add(999 * time.Millisecond)
	want := prefix(prev)
	for range 1000 {
		check(g.next(last))
		if prefix(prev) != want {
			t.Fatalf("id %q in the same millisecond: want the time prefix %s", prev, want)
		}
	}
	check(g.next(at)) // the clock stepped back a second
	if fmt.Sprintf("ix-%011x", last.UnixMilli()) != want {
		t.Fatalf("time prefix %s, want %011x (the creation time in ms)", want, last.UnixMilli())
	}
	g.tail = 1<<idTailBits - 1 // the millisecond's tail used up: the next one borrows the next millisecond
	check(g.next(last))
	if prefix(prev) != fmt.Sprintf("ix-%011x", last.UnixMilli()+1) {
		t.Fatalf("id %q: want the next millisecond", prev)
	}
}
