package router

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// withDefaults fills what newFixture fills in the queues it is given, for the
// configurations handed to Reconfigure.
func withDefaults(queues ...config.Queue) []config.Queue {
	for i := range queues {
		if queues[i].OfferTimeout == 0 {
			queues[i].OfferTimeout = config.Duration(20 * time.Second)
		}
		if queues[i].Strategy == "" {
			queues[i].Strategy = config.StrategyLongestIdle
		}
		queues[i].ServiceLevel = config.ServiceLevel{Threshold: config.Duration(20 * time.Second), TargetPercent: 80}
	}
	return queues
}

// newRoutingFixture is newFixture whose owner knows every agent of owned but whose
// router routes with routed only (the others come in through Reconfigure).
func newRoutingFixture(t *testing.T, queues []config.Queue, owned, routed []config.Agent) *fixture {
	t.Helper()
	f := newFixture(t, queues, owned)
	var err error
	f.r, err = New(Params{Queues: queues, Agents: routed, Reserver: f.m, Offerer: f.offers, Log: f.log, Clock: f.clk,
		OnTimeout: func(w Waiting) { f.timedOut = append(f.timedOut, w) }})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) reconfigure(queues []config.Queue, agents []config.Agent) []Waiting {
	f.t.Helper()
	dropped, err := f.r.Reconfigure(queues, agents)
	if err != nil {
		f.t.Fatal(err)
	}
	f.feed()
	return dropped
}

func skills(kv ...any) map[core.SkillName]int {
	m := map[core.SkillName]int{}
	for i := 0; i < len(kv); i += 2 {
		m[core.SkillName(kv[i].(string))] = kv[i+1].(int)
	}
	return m
}

// An agent added to the configuration is offered the waiting interaction once her
// owner's ready state arrives; until then she is unavailable, as in New.
func TestReconfigureAddedAgentGetsWaitingWork(t *testing.T) {
	queues := []config.Queue{{ID: "sales", Skills: skills("sales", 1)}}
	ann, bob := agentWith("ann", skills("support", 5)), agentWith("bob", skills("sales", 3))
	f := newRoutingFixture(t, queues, []config.Agent{ann, bob}, []config.Agent{ann})
	f.ready("ann")
	f.enqueue("i1", "sales", core.ChannelTask, 0)
	if f.offers.count() != 0 {
		t.Fatal("offered with no sales agent configured")
	}
	if dropped := f.reconfigure(withDefaults(config.Queue{ID: "sales", Skills: skills("sales", 1)}), []config.Agent{ann, bob}); len(dropped) != 0 {
		t.Fatalf("dropped %v", dropped)
	}
	if f.offers.count() != 0 || f.r.Waiting() != 1 {
		t.Fatalf("bob offered before his owner's state: %d offers, %d waiting", f.offers.count(), f.r.Waiting())
	}
	if st, _ := f.r.Stats("sales"); st.AgentsEligible != 1 || st.AgentsReady != 0 {
		t.Fatalf("stats %+v", st)
	}
	f.ready("bob")
	f.expectOffer("i1", "bob")
	if d := lastDecision(t, f.log, "i1"); d.Direction != "agent_freed" || d.Chosen != "bob" {
		t.Fatalf("decision %+v", d)
	}
}

// An agent whose skills now meet a queue's is offered its waiting interaction by
// Reconfigure itself: she was ready already and stays so.
func TestReconfigureChangedSkillsQualifyAgent(t *testing.T) {
	queues := []config.Queue{{ID: "sales", Skills: skills("sales", 5)}, {ID: "support", Skills: skills("support", 1)}}
	f := newFixture(t, queues, []config.Agent{agentWith("ann", skills("sales", 2, "support", 1))})
	f.ready("ann")
	f.enqueue("i1", "sales", core.ChannelTask, 0)
	if f.offers.count() != 0 {
		t.Fatal("ann offered a sales interaction below the queue's level")
	}
	f.reconfigure(queues, []config.Agent{agentWith("ann", skills("sales", 7, "support", 1))})
	f.expectOffer("i1", "ann")
	if f.r.Waiting() != 0 {
		t.Fatalf("waiting = %d", f.r.Waiting())
	}
	if st, _ := f.r.Stats("sales"); st.AgentsEligible != 1 || st.Offered != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A removed queue's interactions come back as dropped and leave the router; the
// other queues' interactions stay, in order, with the queues' counters.
func TestReconfigureRemovedQueueDropsItsWaiters(t *testing.T) {
	sales := config.Queue{ID: "sales", Skills: skills("sales", 1), Overflow: []config.OverflowStep{
		{After: config.Duration(10 * time.Second), Relax: 1}, {After: config.Duration(20 * time.Second), Relax: 1},
	}}
	billing := config.Queue{ID: "billing", Skills: skills("sales", 1)}
	f := newFixture(t, []config.Queue{sales, billing}, []config.Agent{agentWith("ann", skills("sales", 1))})
	f.enqueue("b1", "billing", core.ChannelTask, 0)
	f.enqueue("s-low", "sales", core.ChannelTask, 1)
	f.clk.Advance(time.Second)
	f.enqueue("b2", "billing", core.ChannelTask, 9)
	f.enqueue("s-high", "sales", core.ChannelTask, 5)
	f.clk.Advance(time.Second)
	f.enqueue("s-low2", "sales", core.ChannelTask, 1)
	f.clk.Advance(30 * time.Second)
	f.r.Tick() // the sales interactions reach their last overflow step (2)
	f.r.RecordAnswered("sales", time.Second)

	// sales loses its overflow steps; billing goes.
	dropped := f.reconfigure(withDefaults(config.Queue{ID: "sales", Skills: skills("sales", 1)}), []config.Agent{agentWith("ann", skills("sales", 1))})
	var ids []core.InteractionID
	for _, w := range dropped {
		if w.Queue != "billing" {
			t.Fatalf("dropped %+v", w)
		}
		ids = append(ids, w.ID)
	}
	if fmt.Sprint(ids) != "[b2 b1]" || f.r.Waiting() != 3 {
		t.Fatalf("dropped %v, %d waiting", ids, f.r.Waiting())
	}
	if f.r.Remove("b1") {
		t.Fatal("a dropped interaction is still waiting")
	}
	if _, ok := f.r.Stats("billing"); ok {
		t.Fatal("billing still has stats")
	}
	if err := f.r.Enqueue(Waiting{ID: "b3", Queue: "billing", Channel: core.ChannelTask}); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("enqueue to a removed queue: %v", err)
	}
	for _, h := range f.r.Heads() {
		if h.Queue != "sales" || h.Priority != 5 {
			t.Fatalf("heads %+v", f.r.Heads())
		}
	}
	if st, _ := f.r.Stats("sales"); st.Answered != 1 || st.Waiting != 3 {
		t.Fatalf("sales stats lost: %+v", st)
	}
	f.r.Tick() // steps were clamped: nothing to do, nothing to break

	f.ready("ann")
	var got []core.InteractionID
	for i := 0; i < 3; i++ {
		o, ok := f.offers.last()
		if !ok || (len(got) > 0 && o.Interaction == got[len(got)-1]) {
			t.Fatalf("no new offer after %v", got)
		}
		got = append(got, o.Interaction)
		f.finish(o)
	}
	if fmt.Sprint(got) != "[s-high s-low s-low2]" || f.offers.count() != 3 {
		t.Fatalf("served %v (%d offers)", got, f.offers.count())
	}
}

// An invalid configuration changes nothing: the error says so and routing goes on
// with the old queues and agents.
func TestReconfigureInvalidKeepsRouting(t *testing.T) {
	queues := []config.Queue{{ID: "sales", Skills: skills("sales", 1)}}
	ann := agentWith("ann", skills("sales", 1))
	f := newFixture(t, queues, []config.Agent{ann})
	f.enqueue("i1", "sales", core.ChannelTask, 0)
	bad := withDefaults(config.Queue{ID: "support", Skills: skills("support", 1), Overflow: []config.OverflowStep{
		{After: config.Duration(time.Second), AddQueues: []core.QueueID{"nope"}},
	}})
	dropped, err := f.r.Reconfigure(bad, nil)
	if !errors.Is(err, ErrUnknownQueue) || !strings.HasPrefix(err.Error(), "router: reconfigure: ") || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("err = %v", err)
	}
	if len(dropped) != 0 || f.r.Waiting() != 1 {
		t.Fatalf("dropped %v, %d waiting", dropped, f.r.Waiting())
	}
	if _, err := f.r.Reconfigure(withDefaults(config.Queue{ID: "sales"}), []config.Agent{ann, ann}); err == nil {
		t.Fatal("duplicate agent accepted")
	}
	if _, ok := f.r.Stats("support"); ok {
		t.Fatal("the invalid configuration's queue exists")
	}
	f.ready("ann")
	o := f.expectOffer("i1", "ann")
	f.finish(o)
	f.enqueue("i2", "sales", core.ChannelTask, 0)
	f.expectOffer("i2", "ann")
}

// A removed agent leaves the view: free as she is at her owner, she is offered
// nothing, whatever states her owner still sends.
func TestReconfigureRemovedAgentGetsNothing(t *testing.T) {
	queues := []config.Queue{{ID: "q", Skills: skills("x", 1)}}
	ann, bob := agentWith("ann", skills("x", 1)), agentWith("bob", skills("x", 1))
	f := newFixture(t, queues, []config.Agent{ann, bob})
	f.ready("ann")
	f.reconfigure(queues, []config.Agent{bob})
	f.enqueue("i1", "q", core.ChannelTask, 0)
	if err := f.m.SetNotReady("ann", "break"); err != nil {
		t.Fatal(err)
	}
	if err := f.m.SetReady("ann"); err != nil {
		t.Fatal(err)
	}
	f.feed()
	f.r.Recheck()
	if f.offers.count() != 0 || f.r.Waiting() != 1 {
		t.Fatalf("removed agent offered: %+v", f.offers.offers)
	}
	if st, _ := f.r.Stats("q"); st.AgentsEligible != 1 || st.AgentsReady != 0 {
		t.Fatalf("stats %+v", st)
	}
	f.ready("bob")
	f.expectOffer("i1", "bob")
}

// The view's (fence, epoch, version) survives Reconfigure: an older state arriving
// after it is still ignored, a newer one still applies. The owner's capacities
// seen stay over the configured ones.
func TestReconfigureKeepsStateOrder(t *testing.T) {
	queues := []config.Queue{{ID: "q", Skills: skills("x", 1)}}
	ann := agentWith("ann", skills("x", 1))
	ann.Capacity = map[core.Channel]int{core.ChannelTask: 1, core.ChannelChat: 2}
	f := newFixture(t, queues, []config.Agent{ann})
	f.ready("ann") // at the owner: ready, epoch 1, fence 0; she would take work if asked
	// The agent moved to another owner (fence 1), which shows her not ready.
	f.r.ApplyAgentState("ann", events.AgentState{Presence: "not_ready", Fence: 1, Epoch: 1, Version: 5, IdleSince: t0,
		Load: []events.ChannelLoad{{Channel: core.ChannelTask, Capacity: 1}, {Channel: core.ChannelChat, Capacity: 3}}})

	changed := ann
	changed.Skills = skills("x", 4)
	changed.Capacity = map[core.Channel]int{core.ChannelTask: 1, core.ChannelChat: 6}
	f.reconfigure(queues, []config.Agent{changed})
	v := f.r.agents["ann"]
	if v.fence != 1 || v.epoch != 1 || v.version != 5 || v.ready || v.cap[core.ChannelChat.Index()] != 3 || v.skills["x"] != 4 {
		t.Fatalf("view after reconfigure: %+v", *v)
	}

	f.enqueue("i1", "q", core.ChannelTask, 0)
	for _, st := range []events.AgentState{
		{Presence: "ready", Fence: 0, Epoch: 9, Version: 50}, // the owner she left, however late its epoch
		{Presence: "ready", Fence: 1, Epoch: 1, Version: 4},  // an older version of the new owner
		{Presence: "ready", Fence: 1, Epoch: 1, Version: 5},  // the same version
	} {
		f.r.ApplyAgentState("ann", st)
		if f.offers.count() != 0 {
			t.Fatalf("stale state %+v applied after reconfigure: offered", st)
		}
	}
	f.r.ApplyAgentState("ann", events.AgentState{Presence: "ready", Fence: 1, Epoch: 1, Version: 6, IdleSince: t0})
	f.expectOffer("i1", "ann")
}

// Reconfigure runs safely alongside enqueues, removals, the feed and ticks
// (run with -race); interactions end up offered, waiting or dropped, none lost.
func TestReconfigureConcurrent(t *testing.T) {
	a, b := config.Queue{ID: "a", Skills: skills("x", 1)}, config.Queue{ID: "b", Skills: skills("x", 1)}
	agents := []config.Agent{agentWith("ann", skills("x", 1)), agentWith("bob", skills("x", 1))}
	f := newFixture(t, []config.Queue{a, b}, agents)
	cfgs := [][]config.Queue{withDefaults(a, b), withDefaults(a)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	dropped := 0
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < 50; i++ {
			d, err := f.r.Reconfigure(cfgs[i%2], agents[:1+i%2])
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			dropped += len(d)
			mu.Unlock()
			f.r.Tick()
		}
	}()
	enqueued := 0
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			q := core.QueueID("a")
			if i%2 == 1 {
				q = "b"
			}
			if err := f.r.Enqueue(Waiting{ID: core.InteractionID(fmt.Sprintf("i%d", i)), Queue: q, Channel: core.ChannelTask}); err == nil {
				enqueued++
			} else if !errors.Is(err, ErrUnknownQueue) {
				t.Error(err)
			}
			_ = f.r.Heads()
			_ = f.r.AllStats()
		}
	}()
	f.ready("ann", "bob")
	wg.Wait()
	f.feed()
	if got := f.offers.count() + f.r.Waiting() + dropped; got != enqueued {
		t.Fatalf("%d offered + %d waiting + %d dropped != %d enqueued", f.offers.count(), f.r.Waiting(), dropped, enqueued)
	}
}
