package router

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// All ten best candidates are denied (stale view): the router ranks again and
// reaches the eleventh, free agent, instead of leaving the interaction waiting.
func TestAllDeniedReranksToFreeAgent(t *testing.T) {
	var agents []config.Agent
	for i := 0; i < 11; i++ {
		agents = append(agents, agentWith(fmt.Sprintf("a%02d", i), map[core.SkillName]int{"x": 1}))
	}
	f := newFixture(t, []config.Queue{{ID: "q", Skills: map[core.SkillName]int{"x": 1}}}, agents)
	for i := 0; i < 11; i++ {
		f.ready(core.AgentID(fmt.Sprintf("a%02d", i)))
		f.clk.Advance(time.Second) // a00 idle longest ... a10 least
	}
	// 10 longest-idle agents go not ready at the owner; router view is stale.
	for i := 0; i < 10; i++ {
		if err := f.m.SetNotReady(core.AgentID(fmt.Sprintf("a%02d", i)), "break"); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.r.Enqueue(Waiting{ID: "i1", Queue: "q", Channel: core.ChannelTask}); err != nil {
		t.Fatal(err)
	}
	f.expectOffer("i1", "a10")
	d := lastDecision(t, f.log, "i1")
	if d.Outcome != "reserved" || len(d.Candidates) != 11 || d.Candidates[10].Agent != "a10" || d.Candidates[0].Result != "denied:not_ready" {
		t.Fatalf("decision %+v", d)
	}
}

// A grant's newer state reaches the view before the owner's older "voice freed"
// event: the stale event must still wake the agent for the waiting voice call.
func TestFreedSlotNotLostBehindGrantState(t *testing.T) {
	a := agentWith("ann", map[core.SkillName]int{"x": 1})
	a.Capacity = map[core.Channel]int{core.ChannelVoice: 1, core.ChannelChat: 1, core.ChannelTask: 0, core.ChannelCallback: 0}
	f := newFixture(t, []config.Queue{{ID: "q", Skills: map[core.SkillName]int{"x": 1}}}, []config.Agent{a})
	f.ready("ann")
	f.enqueue("v1", "q", core.ChannelVoice, 0)
	o := f.expectOffer("v1", "ann")
	if err := f.m.Accept(o.Grant.Token); err != nil {
		t.Fatal(err)
	}
	f.feed()
	// voice waiter arrives while ann is busy on voice
	f.enqueue("v2", "q", core.ChannelVoice, 0)
	// ann completes v1 (no wrap-up): voice frees at the owner; router has not fed it yet
	if err := f.m.Complete(o.Grant.Token, 0); err != nil {
		t.Fatal(err)
	}
	// a chat arrives before the feed runs: router reserves ann on chat, applies grant state
	if err := f.r.Enqueue(Waiting{ID: "c1", Queue: "q", Channel: core.ChannelChat}); err != nil {
		t.Fatal(err)
	}
	f.feed()
	n := 0
	for _, of := range f.offers.offers {
		if of.Interaction == "v2" {
			n++
		}
	}
	if n != 1 || f.r.Waiting() != 0 {
		t.Fatalf("v2 offered %d times, %d waiting: ann's freed voice slot was missed", n, f.r.Waiting())
	}
}

// The router's feed fell out of the log's window: it rebuilds its view from the
// owner's snapshots instead of missing the agents' changes for good.
func TestFeedGapResyncsFromOwner(t *testing.T) {
	f := newFixture(t, []config.Queue{{ID: "q", Skills: map[core.SkillName]int{"x": 1}}},
		[]config.Agent{agentWith("ann", map[core.SkillName]int{"x": 1})})
	small := events.NewLog(0, 2, false)
	f.m = agent.NewManager(agent.Params{Node: "n1", Agents: []config.Agent{agentWith("ann", map[core.SkillName]int{"x": 1})}, Clock: f.clk, Log: small, MissedOffer: config.MissedOfferNotReady, Epoch: 1})
	r, err := New(Params{Queues: []config.Queue{{ID: "q", Skills: map[core.SkillName]int{"x": 1}, OfferTimeout: config.Duration(time.Second)}},
		Agents: []config.Agent{agentWith("ann", map[core.SkillName]int{"x": 1})}, Reserver: f.m, Offerer: f.offers, Owner: f.m, Log: small, Clock: f.clk})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Enqueue(Waiting{ID: "i1", Queue: "q", Channel: core.ChannelTask}); err != nil {
		t.Fatal(err)
	}
	// ann logs in and gets ready: more events than the window holds, before the feed runs.
	for i := 0; i < 3; i++ {
		_ = f.m.Login("ann")
		_ = f.m.SetNotReady("ann", "x")
	}
	_ = f.m.SetReady("ann")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx, 0); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for f.offers.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond) // polling a background goroutine's effect
	}
	cancel()
	<-done
	f.expectOffer("i1", "ann")
}
