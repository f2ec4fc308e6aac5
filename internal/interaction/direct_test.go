package interaction

import (
	"errors"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
)

func ready(t *testing.T, st *stack, ids ...core.AgentID) {
	t.Helper()
	for _, id := range ids {
		must(t, st.m.Login(id))
		must(t, st.m.SetReady(id))
		st.r.ApplyAgentState(id, snapshot(t, st.m, id))
	}
}

func skilled(ids ...core.AgentID) []config.Agent {
	var out []config.Agent
	for _, id := range ids {
		out = append(out, config.Agent{ID: id, Skills: map[core.SkillName]int{"x": 1}})
	}
	return out
}

// A direct offer reserves exactly the named agent, needs no queue, and ends
// (rather than queueing) when not taken; an unavailable agent refuses it up front.
func TestDirectOffer(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC))
	st := newStack(t, clk, skilled("ann", "bob"), []config.Queue{queue("q", 20*time.Second, 10*time.Second)})
	if _, _, err := st.s.Direct(CreateRequest{Channel: core.ChannelVoice}, "bob"); !errors.Is(err, ErrAgentUnavailable) {
		t.Fatalf("direct to a logged-out agent: %v", err)
	}
	var deny *agent.DenyError
	ready(t, st, "ann", "bob")
	ix, _, err := st.s.Direct(CreateRequest{Channel: core.ChannelVoice}, "bob")
	if err != nil {
		t.Fatal(err)
	}
	if ix.State != string(StateOffered) || ix.Agent != "bob" || ix.Queue != "" {
		t.Fatalf("direct = %+v", ix)
	}
	if _, _, err := st.s.Direct(CreateRequest{Channel: core.ChannelVoice}, "bob"); !errors.As(err, &deny) {
		t.Fatalf("second direct to a reserved agent: %v", err)
	}
	must2(t)(st.s.Accept(ix.ID, "bob"))
	must2(t)(st.s.Complete(ix.ID, "bob"))
	// No wrap-up after an internal call: bob is ready again at once.
	if v, _ := st.m.Snapshot("bob"); v.State.State != string(agent.StateReady) {
		t.Fatalf("bob after a direct call: %+v", v.State)
	}
	// Not answered: the interaction fails instead of queueing.
	ix2, _, err := st.s.Direct(CreateRequest{Channel: core.ChannelVoice}, "ann")
	must(t, err)
	must2(t)(st.s.Reject(ix2.ID, "ann"))
	if _, live := st.s.Get(ix2.ID); live {
		t.Fatal("a rejected direct offer is still live")
	}
}

// Blind transfer to a queue: the transferring agent wraps up, the interaction
// waits in the target queue and is offered to an agent there. Blind transfer to
// an agent: the target is reserved before anything changes; if the target misses
// the offer the interaction goes back to its original queue.
func TestTransfer(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC))
	q2 := queue("q2", 20*time.Second, 0)
	q2.Skills = map[core.SkillName]int{"y": 1}
	agents := append(skilled("ann", "bob"), config.Agent{ID: "cat", Skills: map[core.SkillName]int{"y": 1}})
	st := newStack(t, clk, agents, []config.Queue{queue("q", 20*time.Second, 10*time.Second), q2})
	ready(t, st, "ann")
	ix, _, err := st.s.Create(CreateRequest{Channel: core.ChannelVoice, Queue: "q"})
	must(t, err)
	must2(t)(st.s.Accept(ix.ID, "ann"))

	if _, err := st.s.Transfer(ix.ID, "ann", Target{Queue: "nope"}); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("transfer to an unknown queue: %v", err)
	}
	if _, err := st.s.Transfer(ix.ID, "bob", Target{Queue: "q2"}); !errors.Is(err, ErrNotYours) {
		t.Fatalf("transfer by a non-holder: %v", err)
	}
	if _, err := st.s.Transfer(ix.ID, "ann", Target{Agent: "bob"}); !errors.Is(err, ErrAgentUnavailable) {
		t.Fatalf("transfer to a logged-out agent: %v", err)
	}
	if got, _ := st.s.Get(ix.ID); got.State != string(StateConnected) || got.Agent != "ann" {
		t.Fatalf("a refused transfer changed the interaction: %+v", got)
	}

	// To queue q2: ann wraps up; cat (the only agent with skill y) gets it.
	must2(t)(st.s.Transfer(ix.ID, "ann", Target{Queue: "q2"}))
	if v, _ := st.m.Snapshot("ann"); v.State.State != string(agent.StateWrapUp) {
		t.Fatalf("ann after transfer: %+v", v.State)
	}
	got, _ := st.s.Get(ix.ID)
	if got.State != string(StateQueued) || got.Queue != "q2" || got.Attributes["transferred_by"] != "ann" {
		t.Fatalf("after transfer to q2: %+v", got)
	}
	ready(t, st, "cat")
	if got, _ := st.s.Get(ix.ID); got.State != string(StateOffered) || got.Agent != "cat" {
		t.Fatalf("q2 interaction not offered to cat: %+v", got)
	}
	must2(t)(st.s.Accept(ix.ID, "cat"))

	// To agent bob, who misses it: back to q2 (its queue now), offered to cat again later.
	ready(t, st, "bob")
	must2(t)(st.s.Transfer(ix.ID, "cat", Target{Agent: "bob"}))
	if got, _ := st.s.Get(ix.ID); got.State != string(StateOffered) || got.Agent != "bob" {
		t.Fatalf("after transfer to bob: %+v", got)
	}
	must2(t)(st.s.Reject(ix.ID, "bob"))
	if got, _ := st.s.Get(ix.ID); got.State != string(StateQueued) || got.Queue != "q2" {
		t.Fatalf("after bob missed the transfer: %+v", got)
	}
}

func must2(t *testing.T) func(uint64, error) {
	return func(_ uint64, err error) {
		t.Helper()
		must(t, err)
	}
}

// A closed queue with a closed target hands new interactions to the target while
// the target is open; with no open target it refuses them.
func TestClosedQueueTarget(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 23, 20, 0, 0, 0, time.UTC)) // a Monday, 20:00
	day := &config.BusinessHours{TimeZone: "UTC", Open: []config.OpenWindow{{Days: []string{"mon", "tue", "wed", "thu", "fri"}, From: "09:00", To: "17:00"}}}
	office := queue("office", 20*time.Second, 0)
	office.BusinessHours, office.ClosedTarget = day, "night"
	night := queue("night", 20*time.Second, 0)
	other := queue("other", 20*time.Second, 0)
	other.BusinessHours, other.ClosedTarget = day, "office" // office is closed too
	st := newStack(t, clk, skilled("ann"), []config.Queue{office, night, other})
	ix, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "office", Attributes: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	if ix.Queue != "night" || ix.Attributes["closed_queue"] != "office" || ix.Attributes["k"] != "v" {
		t.Fatalf("created in %q with %v, want night with closed_queue=office", ix.Queue, ix.Attributes)
	}
	if _, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "other"}); !errors.Is(err, ErrQueueClosed) {
		t.Fatalf("closed queue whose target is closed: %v", err)
	}
	clk.Advance(14 * time.Hour) // Tuesday 10:00: office is open again
	if ix, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "office"}); err != nil || ix.Queue != "office" {
		t.Fatalf("open office: %+v, %v", ix, err)
	}
}
