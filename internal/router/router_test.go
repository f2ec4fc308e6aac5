package router

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

var t0 = time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)

type recorder struct {
	mu     sync.Mutex
	offers []Offer
}

func (r *recorder) Offer(o Offer) OfferResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.offers = append(r.offers, o)
	return OfferTaken
}

func (r *recorder) last() (Offer, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.offers) == 0 {
		return Offer{}, false
	}
	return r.offers[len(r.offers)-1], true
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.offers)
}

type fixture struct {
	t        *testing.T
	clk      *clock.Fake
	log      *events.Log
	m        *agent.Manager
	r        *Router
	offers   *recorder
	fed      uint64
	timedOut []Waiting
}

func newFixture(t *testing.T, queues []config.Queue, agents []config.Agent) *fixture {
	t.Helper()
	for i := range queues {
		if queues[i].OfferTimeout == 0 {
			queues[i].OfferTimeout = config.Duration(20 * time.Second)
		}
		if queues[i].Strategy == "" {
			queues[i].Strategy = config.StrategyLongestIdle
		}
		queues[i].ServiceLevel = config.ServiceLevel{Threshold: config.Duration(20 * time.Second), TargetPercent: 80}
	}
	f := &fixture{t: t, clk: clock.NewFake(t0), log: events.NewLog(0, 1<<16, false), offers: &recorder{}}
	f.m = agent.NewManager(agent.Params{Node: "n1", Agents: agents, Clock: f.clk, Log: f.log, MissedOffer: config.MissedOfferNotReady, Epoch: 1})
	var err error
	f.r, err = New(Params{Queues: queues, Agents: agents, Reserver: f.m, Offerer: f.offers, Log: f.log, Clock: f.clk,
		OnTimeout: func(w Waiting) { f.timedOut = append(f.timedOut, w) }})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// feed applies the owner's events to the router's view, as Run does.
func (f *fixture) feed() {
	for {
		evs, _, err := f.log.Read(f.fed, 1000, nil)
		if err != nil {
			f.t.Fatal(err)
		}
		if len(evs) == 0 {
			return
		}
		for _, ev := range evs {
			f.fed = ev.Seq
			if st, ok := ev.Data.(events.AgentState); ok {
				f.r.ApplyAgentState(ev.Agent, st)
			}
		}
	}
}

func (f *fixture) ready(ids ...core.AgentID) {
	f.t.Helper()
	for _, id := range ids {
		if err := f.m.Login(id); err != nil {
			f.t.Fatal(err)
		}
		if err := f.m.SetReady(id); err != nil {
			f.t.Fatal(err)
		}
		f.feed()
	}
}

func (f *fixture) enqueue(id string, q core.QueueID, ch core.Channel, prio int) {
	f.t.Helper()
	if err := f.r.Enqueue(Waiting{ID: core.InteractionID(id), Queue: q, Channel: ch, Priority: prio}); err != nil {
		f.t.Fatal(err)
	}
	f.feed()
}

// expectOffer asserts the latest offer went to agent for interaction ix.
func (f *fixture) expectOffer(ix string, want core.AgentID) Offer {
	f.t.Helper()
	o, ok := f.offers.last()
	if !ok || o.Interaction != core.InteractionID(ix) || o.Grant.Token.Agent != want {
		f.t.Fatalf("last offer = %+v (ok=%v), want %s → %s", o, ok, ix, want)
	}
	return o
}

func (f *fixture) finish(o Offer) {
	f.t.Helper()
	if err := f.m.Accept(o.Grant.Token); err != nil {
		f.t.Fatal(err)
	}
	if err := f.m.Complete(o.Grant.Token, 0); err != nil {
		f.t.Fatal(err)
	}
	f.feed()
}

func agentWith(id string, skills map[core.SkillName]int) config.Agent {
	return config.Agent{ID: core.AgentID(id), Skills: skills}
}

func TestLongestIdle(t *testing.T) {
	f := newFixture(t, []config.Queue{{ID: "sales", Skills: map[core.SkillName]int{"sales": 1}}},
		[]config.Agent{agentWith("ann", map[core.SkillName]int{"sales": 5}), agentWith("bob", map[core.SkillName]int{"sales": 5}), agentWith("cat", map[core.SkillName]int{"sales": 5})})
	f.ready("bob")
	f.clk.Advance(time.Second)
	f.ready("cat")
	f.clk.Advance(time.Second)
	f.ready("ann")
	f.clk.Advance(time.Second)
	// bob was idle longest (ready since t0), then cat, then ann.
	f.enqueue("i1", "sales", core.ChannelTask, 0)
	f.expectOffer("i1", "bob")
	f.enqueue("i2", "sales", core.ChannelTask, 0)
	f.expectOffer("i2", "cat")
	f.enqueue("i3", "sales", core.ChannelTask, 0)
	f.expectOffer("i3", "ann")
}

func TestMostSkilled(t *testing.T) {
	f := newFixture(t, []config.Queue{{ID: "q", Strategy: config.StrategyMostSkilled, Skills: map[core.SkillName]int{"french": 1, "billing": 1}}},
		[]config.Agent{
			agentWith("ann", map[core.SkillName]int{"french": 3, "billing": 3}),  // 6
			agentWith("bob", map[core.SkillName]int{"french": 9, "billing": 2}),  // 11
			agentWith("cat", map[core.SkillName]int{"french": 10, "billing": 0}), // not eligible: billing 0 < 1
			agentWith("dan", map[core.SkillName]int{"french": 5, "english": 9}),  // not eligible: no billing
		})
	f.ready("ann", "bob", "cat", "dan")
	f.enqueue("i1", "q", core.ChannelTask, 0)
	f.expectOffer("i1", "bob")
	f.enqueue("i2", "q", core.ChannelTask, 0)
	f.expectOffer("i2", "ann")
	f.enqueue("i3", "q", core.ChannelTask, 0)
	if n := f.offers.count(); n != 2 {
		t.Fatalf("%d offers, want 2: cat and dan lack the skills", n)
	}
	// The decision explains itself.
	d := lastDecision(t, f.log, "i1")
	if d.Chosen != "bob" || d.Eligible != 2 || len(d.Candidates) != 2 || d.Candidates[0].Score != 11 || d.Candidates[1].Agent != "ann" {
		t.Fatalf("decision = %+v", d)
	}
}

func TestRoundRobin(t *testing.T) {
	var agents []config.Agent
	for _, id := range []string{"a", "b", "c"} {
		agents = append(agents, agentWith(id, map[core.SkillName]int{"x": 1}))
	}
	f := newFixture(t, []config.Queue{{ID: "q", Strategy: config.StrategyRoundRobin, Skills: map[core.SkillName]int{"x": 1}}}, agents)
	f.ready("c", "b", "a")
	var got []core.AgentID
	for i := 0; i < 6; i++ {
		ix := fmt.Sprintf("i%d", i)
		f.enqueue(ix, "q", core.ChannelTask, 0)
		o, _ := f.offers.last()
		got = append(got, o.Grant.Token.Agent)
		f.finish(o)
	}
	if fmt.Sprint(got) != "[a b c a b c]" {
		t.Fatalf("round robin order %v", got)
	}
}

func TestLeastOccupied(t *testing.T) {
	agents := []config.Agent{
		{ID: "ann", Skills: map[core.SkillName]int{"chat": 1}, Capacity: map[core.Channel]int{core.ChannelChat: 4}},
		{ID: "bob", Skills: map[core.SkillName]int{"chat": 1}, Capacity: map[core.Channel]int{core.ChannelChat: 2}},
	}
	f := newFixture(t, []config.Queue{{ID: "q", Strategy: config.StrategyLeastOccupied, Skills: map[core.SkillName]int{"chat": 1}}}, agents)
	f.ready("ann", "bob")
	// 0/4 vs 0/2: tie on occupancy, ann idle longer. Then 1/4 (25%) vs 0/2 → bob;
	// 1/4 vs 1/2 (50%) → ann; 2/4 vs 1/2 tie → ... by idle.
	var got []core.AgentID
	for i := 0; i < 6; i++ {
		f.enqueue(fmt.Sprintf("c%d", i), "q", core.ChannelChat, 0)
		o, ok := f.offers.last()
		if !ok {
			t.Fatal("no offer")
		}
		got = append(got, o.Grant.Token.Agent)
	}
	counts := map[core.AgentID]int{}
	for _, a := range got {
		counts[a]++
	}
	if counts["ann"] != 4 || counts["bob"] != 2 || got[0] != "ann" || got[1] != "bob" {
		t.Fatalf("least-occupied picks %v", got)
	}
	// Both full now: the next chat waits.
	f.enqueue("c6", "q", core.ChannelChat, 0)
	if f.r.Waiting() != 1 {
		t.Fatalf("waiting = %d", f.r.Waiting())
	}
}

func TestPriorityThenAgeWhenAgentFrees(t *testing.T) {
	f := newFixture(t, []config.Queue{{ID: "q", Skills: map[core.SkillName]int{"x": 1}}},
		[]config.Agent{agentWith("ann", map[core.SkillName]int{"x": 1})})
	f.enqueue("old-low", "q", core.ChannelTask, 1)
	f.clk.Advance(time.Second)
	f.enqueue("new-high", "q", core.ChannelTask, 9)
	f.clk.Advance(time.Second)
	f.enqueue("newer-low", "q", core.ChannelTask, 1)
	if f.offers.count() != 0 {
		t.Fatal("offered with no agent ready")
	}
	f.ready("ann")
	o := f.expectOffer("new-high", "ann")
	f.finish(o)
	o = f.expectOffer("old-low", "ann")
	f.finish(o)
	f.expectOffer("newer-low", "ann")
	d := lastDecision(t, f.log, "newer-low")
	if d.Direction != "agent_freed" || d.Chosen != "ann" {
		t.Fatalf("decision %+v", d)
	}
}

func TestAgentFreedPicksBestAcrossQueues(t *testing.T) {
	f := newFixture(t, []config.Queue{
		{ID: "sales", Skills: map[core.SkillName]int{"sales": 1}},
		{ID: "support", Skills: map[core.SkillName]int{"support": 1}},
		{ID: "vip", Skills: map[core.SkillName]int{"vip": 1}},
	}, []config.Agent{agentWith("ann", map[core.SkillName]int{"sales": 3, "support": 3})})
	f.enqueue("vip-1", "vip", core.ChannelTask, 50) // ann is not eligible
	f.enqueue("sup-old", "support", core.ChannelTask, 5)
	f.clk.Advance(time.Second)
	f.enqueue("sales-new", "sales", core.ChannelTask, 5)
	f.clk.Advance(time.Second)
	f.enqueue("sales-prio", "sales", core.ChannelTask, 7)
	f.ready("ann")
	o := f.expectOffer("sales-prio", "ann") // highest priority among her queues
	f.finish(o)
	o = f.expectOffer("sup-old", "ann") // then the oldest at equal priority
	f.finish(o)
	f.expectOffer("sales-new", "ann")
	if _, ok := f.r.Stats("vip"); !ok || f.r.Waiting() != 1 {
		t.Fatalf("vip interaction should still wait; waiting=%d", f.r.Waiting())
	}
}

func TestOverflowRelaxAndAddQueues(t *testing.T) {
	f := newFixture(t, []config.Queue{
		{ID: "sales", Skills: map[core.SkillName]int{"sales": 8}, Overflow: []config.OverflowStep{
			{After: config.Duration(30 * time.Second), Relax: 3},
			{After: config.Duration(60 * time.Second), AddQueues: []core.QueueID{"support"}},
		}},
		{ID: "support", Skills: map[core.SkillName]int{"support": 1}},
	}, []config.Agent{
		agentWith("junior", map[core.SkillName]int{"sales": 5}),
		agentWith("helper", map[core.SkillName]int{"support": 4}),
	})
	f.ready("helper")
	f.enqueue("i1", "sales", core.ChannelTask, 0)
	f.enqueue("i2", "sales", core.ChannelTask, 0)
	f.ready("junior") // not eligible yet: level 5 < 8
	if f.offers.count() != 0 {
		t.Fatal("offered before overflow")
	}
	f.clk.Advance(29 * time.Second)
	f.r.Tick()
	if f.offers.count() != 0 {
		t.Fatal("offered before 30s")
	}
	f.clk.Advance(time.Second)
	f.r.Tick()
	f.expectOffer("i1", "junior") // relaxed to 5
	d := lastDecision(t, f.log, "i1")
	if d.Step != 1 || d.Direction != "overflow_step" {
		t.Fatalf("decision %+v", d)
	}
	f.clk.Advance(30 * time.Second)
	f.r.Tick()
	f.expectOffer("i2", "helper") // support agents added at 60s
	if d := lastDecision(t, f.log, "i2"); d.Step != 2 || fmt.Sprint(d.Queues) != "[sales support]" {
		t.Fatalf("decision %+v", d)
	}
	// Agent-freed direction honours steps too: a fresh sales interaction is not for helper.
	o, _ := f.offers.last()
	f.enqueue("i3", "sales", core.ChannelTask, 0)
	f.finish(o) // helper frees up
	if last, _ := f.offers.last(); last.Interaction == "i3" {
		t.Fatal("helper got a sales interaction before the add_queues step")
	}
}

func TestDeniedMovesToNextCandidate(t *testing.T) {
	f := newFixture(t, []config.Queue{{ID: "q", Skills: map[core.SkillName]int{"x": 1}}},
		[]config.Agent{agentWith("ann", map[core.SkillName]int{"x": 1}), agentWith("bob", map[core.SkillName]int{"x": 1})})
	f.ready("ann", "bob")
	// ann goes not-ready at her owner; the router has not seen it yet (stale view).
	if err := f.m.SetNotReady("ann", "break"); err != nil {
		t.Fatal(err)
	}
	if err := f.r.Enqueue(Waiting{ID: "i1", Queue: "q", Channel: core.ChannelTask}); err != nil {
		t.Fatal(err)
	}
	f.expectOffer("i1", "bob")
	d := lastDecision(t, f.log, "i1")
	if len(d.Candidates) != 2 || d.Candidates[0].Agent != "ann" || d.Candidates[0].Result != "denied:not_ready" || d.Candidates[1].Result != "granted" {
		t.Fatalf("decision %+v", d)
	}
}

func TestMaxWaitAndErrors(t *testing.T) {
	f := newFixture(t, []config.Queue{{ID: "q", MaxWait: config.Duration(time.Minute), Skills: map[core.SkillName]int{"x": 1}}},
		[]config.Agent{agentWith("ann", map[core.SkillName]int{"x": 1})})
	f.enqueue("i1", "q", core.ChannelTask, 0)
	if err := f.r.Enqueue(Waiting{ID: "i1", Queue: "q", Channel: core.ChannelTask}); !errors.Is(err, ErrAlreadyQueued) {
		t.Fatalf("duplicate enqueue: %v", err)
	}
	if err := f.r.Enqueue(Waiting{ID: "i2", Queue: "nope", Channel: core.ChannelTask}); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("unknown queue: %v", err)
	}
	f.clk.Advance(time.Minute)
	f.r.Tick()
	if len(f.timedOut) != 1 || f.timedOut[0].ID != "i1" || f.r.Waiting() != 0 {
		t.Fatalf("timed out %v, waiting %d", f.timedOut, f.r.Waiting())
	}
	st, _ := f.r.Stats("q")
	if st.TimedOut != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestBackpressure(t *testing.T) {
	f := newFixture(t, []config.Queue{{ID: "q", Skills: map[core.SkillName]int{"x": 1}}}, []config.Agent{agentWith("ann", map[core.SkillName]int{"x": 1})})
	f.r.maxWaiting = 2
	f.enqueue("i1", "q", core.ChannelTask, 0)
	f.enqueue("i2", "q", core.ChannelTask, 0)
	if err := f.r.Enqueue(Waiting{ID: "i3", Queue: "q", Channel: core.ChannelTask}); !errors.Is(err, ErrFull) {
		t.Fatalf("enqueue past the limit: %v", err)
	}
}

func TestStatsServiceLevel(t *testing.T) {
	f := newFixture(t, []config.Queue{{ID: "q", Skills: map[core.SkillName]int{"x": 1}}}, []config.Agent{agentWith("ann", map[core.SkillName]int{"x": 1})})
	f.ready("ann")
	f.r.RecordAnswered("q", 5*time.Second)
	f.r.RecordAnswered("q", 25*time.Second)
	f.r.RecordAbandoned("q", 3*time.Second)  // inside the threshold: not counted against
	f.r.RecordAbandoned("q", 30*time.Second) // after: counted
	st, _ := f.r.Stats("q")
	if st.Answered != 2 || st.Abandoned != 2 || st.AgentsReady != 1 || st.ServiceLevelPercent < 33.3 || st.ServiceLevelPercent > 33.4 {
		t.Fatalf("stats %+v", st)
	}
}

func lastDecision(t *testing.T, l *events.Log, ix core.InteractionID) events.Decision {
	t.Helper()
	evs, _, err := l.Read(0, 1<<16, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(evs) - 1; i >= 0; i-- {
		if d, ok := evs[i].Data.(events.Decision); ok && evs[i].Interaction == ix {
			return d
		}
	}
	t.Fatalf("no decision for %s", ix)
	return events.Decision{}
}

var _ = agent.Token{}
