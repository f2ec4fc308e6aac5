package agent

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// stateEvents returns the agent state events of id in the log, oldest first.
func (f *fixture) stateEvents(t *testing.T, id core.AgentID) []events.AgentState {
	t.Helper()
	evs, _, err := f.log.Read(0, 1<<16, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.AgentState
	for _, ev := range evs {
		if st, ok := ev.Data.(events.AgentState); ok && ev.Agent == id {
			out = append(out, st)
		}
	}
	return out
}

func (f *fixture) lastState(t *testing.T, id core.AgentID) events.AgentState {
	t.Helper()
	evs := f.stateEvents(t, id)
	if len(evs) == 0 {
		t.Fatalf("no state event for %s", id)
	}
	return evs[len(evs)-1]
}

func (f *fixture) endsSeen() []LeaseEnd {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]LeaseEnd(nil), f.ends...)
}

func isDeny(err error, r DenyReason) bool {
	var d *DenyError
	return errors.As(err, &d) && d.Reason == r
}

var bob = config.Agent{ID: "bob", DN: "2002", Capacity: map[core.Channel]int{core.ChannelVoice: 1, core.ChannelChat: 2}}

// Adopt starts owning an agent logged out under the given fence, and every
// event, grant and snapshot of her carries it; a lower or equal fence is ignored.
func TestAdoptCarriesFence(t *testing.T) {
	f := newFixture(t, config.MissedOfferReady)
	must(t, f.m.Adopt(bob, 5))
	if st := f.lastState(t, "bob"); st.Fence != 5 || st.State != string(StateLoggedOut) || st.Presence != "logged_out" || st.Cause != CauseAdopted || st.Epoch != 7 {
		t.Fatalf("adopted event = %+v", st)
	}
	if st := f.state(t, "bob"); st.Fence != 5 {
		t.Fatalf("snapshot fence = %d, want 5", st.Fence)
	}
	if vs := f.m.Snapshots(); len(vs) != 2 || vs[1].ID != "bob" || vs[1].State.Fence != 5 || vs[1].DN != "2002" {
		t.Fatalf("snapshots = %+v", vs)
	}
	must(t, f.m.Login("bob"))
	must(t, f.m.SetReady("bob"))
	g, err := f.m.Reserve(ReserveRequest{Agent: "bob", Interaction: "ix", Channel: core.ChannelVoice, TTL: time.Second})
	must(t, err)
	if g.State.Fence != 5 {
		t.Fatalf("grant state fence = %d", g.State.Fence)
	}
	for _, st := range f.stateEvents(t, "bob") {
		if st.Fence != 5 {
			t.Fatalf("event without the fence: %+v", st)
		}
	}
	// The configured agent was never moved: fence 0.
	if st := f.state(t, "ann"); st.Fence != 0 {
		t.Fatalf("ann fence = %d", st.Fence)
	}

	// A lower or repeated fence changes nothing and emits nothing.
	n := len(f.stateEvents(t, "bob"))
	other := bob
	other.DN = "9999"
	must(t, f.m.Adopt(other, 3))
	must(t, f.m.Adopt(other, 5))
	if got := len(f.stateEvents(t, "bob")); got != n {
		t.Fatalf("%d events after ignored adopts, want %d", got, n)
	}
	if c, _ := f.m.Config("bob"); c.DN != "2002" {
		t.Fatalf("config changed by an ignored adopt: %+v", c)
	}
	// A higher fence is taken with the new config; her state and lease stay.
	must(t, f.m.Adopt(other, 9))
	st := f.lastState(t, "bob")
	if st.Fence != 9 || st.Cause != CauseAdopted || st.State != string(StateReserved) {
		t.Fatalf("re-adopted event = %+v", st)
	}
	if c, _ := f.m.Config("bob"); c.DN != "9999" {
		t.Fatalf("config after adopt: %+v", c)
	}
	must(t, f.m.Accept(g.Token))
}

// Detach is refused while the agent holds a lease, offered or busy (and
// in wrap-up), and allowed once it is released; afterwards she is unknown.
func TestDetach(t *testing.T) {
	f := newFixture(t, config.MissedOfferReady)
	must(t, f.m.Adopt(bob, 4))
	must(t, f.m.Login("bob"))
	must(t, f.m.SetReady("bob"))
	g, err := f.m.Reserve(ReserveRequest{Agent: "bob", Interaction: "ix", Channel: core.ChannelChat, TTL: time.Minute})
	must(t, err)

	before := len(f.stateEvents(t, "bob"))
	if err := f.m.Detach("bob", "moved"); !errors.Is(err, ErrAgentBusy) {
		t.Fatalf("detach while offered: %v", err)
	}
	must(t, f.m.Accept(g.Token))
	if err := f.m.Detach("bob", "moved"); !errors.Is(err, ErrAgentBusy) {
		t.Fatalf("detach while busy: %v", err)
	}
	must(t, f.m.Complete(g.Token, time.Minute))
	if err := f.m.Detach("bob", "moved"); !errors.Is(err, ErrAgentBusy) {
		t.Fatalf("detach in wrap-up: %v", err)
	}
	// Refusals change nothing: no event, the lease is still hers.
	if got := len(f.stateEvents(t, "bob")); got != before+2 { // accept, complete
		t.Fatalf("%d events, want %d", got, before+2)
	}
	must(t, f.m.EndWrapUp("bob"))

	must(t, f.m.Detach("bob", "moved"))
	st := f.lastState(t, "bob")
	if st.State != string(StateLoggedOut) || st.Presence != "logged_out" || st.Cause != "moved" || st.Fence != 4 {
		t.Fatalf("final event = %+v", st)
	}
	if _, err := f.m.Reserve(ReserveRequest{Agent: "bob", Interaction: "ix2", Channel: core.ChannelChat}); !isDeny(err, DenyUnknownAgent) {
		t.Fatalf("reserve after detach: %v", err)
	}
	if err := f.m.Login("bob"); !errors.Is(err, ErrUnknownAgent) {
		t.Fatalf("login after detach: %v", err)
	}
	if _, err := f.m.Snapshot("bob"); !errors.Is(err, ErrUnknownAgent) {
		t.Fatalf("snapshot after detach: %v", err)
	}
	if err := f.m.Detach("bob", ""); !errors.Is(err, ErrUnknownAgent) {
		t.Fatalf("detach twice: %v", err)
	}
	if ids := f.m.IDs(); !slices.Equal(ids, []core.AgentID{"ann"}) {
		t.Fatalf("ids = %v", ids)
	}

	// Adopted back later: logged out, and her versions keep growing so views
	// holding her final state take the new one.
	must(t, f.m.Adopt(bob, 4))
	if again := f.lastState(t, "bob"); again.Version <= st.Version || again.State != string(StateLoggedOut) {
		t.Fatalf("re-adopted %+v after %+v", again, st)
	}
}

// Reconfigure adds, updates and removes agents; a removed logged-in agent is
// logged out by force (leases revoked) with cause "removed".
func TestReconfigureAgents(t *testing.T) {
	ann := config.Agent{ID: "ann", Password: "old", Capacity: map[core.Channel]int{core.ChannelVoice: 1, core.ChannelChat: 2}}
	cid := config.Agent{ID: "cid", Capacity: map[core.Channel]int{core.ChannelChat: 1}}
	f := newFixture(t, config.MissedOfferReady, ann, bob, cid)
	must(t, f.m.Adopt(bob, 6)) // fence 6: adopted after start
	must(t, f.m.Login("bob"))
	must(t, f.m.SetReady("bob"))
	g, err := f.m.Reserve(ReserveRequest{Agent: "bob", Interaction: "ix-b", Channel: core.ChannelVoice, TTL: time.Minute})
	must(t, err)
	annEvents := len(f.stateEvents(t, "ann"))

	// ann: new password and skills, same capacity; bob and cid gone; dan new.
	ann2 := ann
	ann2.Password, ann2.Skills = "new", map[core.SkillName]int{"fr": 3}
	dan := config.Agent{ID: "dan", DN: "2004"}
	removed := f.m.Reconfigure([]config.Agent{dan, ann2})
	if !slices.Equal(removed, []core.AgentID{"bob", "cid"}) {
		t.Fatalf("removed = %v", removed)
	}
	if ids := f.m.IDs(); !slices.Equal(ids, []core.AgentID{"ann", "dan"}) {
		t.Fatalf("ids = %v", ids)
	}
	if c, _ := f.m.Config("ann"); c.Password != "new" || c.Skills["fr"] != 3 {
		t.Fatalf("ann config = %+v", c)
	}
	if got := len(f.stateEvents(t, "ann")); got != annEvents {
		t.Fatalf("ann: %d events, want %d (capacity unchanged)", got, annEvents)
	}
	if st := f.state(t, "dan"); st.State != string(StateLoggedOut) || st.Fence != 0 {
		t.Fatalf("dan = %+v", st)
	}
	must(t, f.m.Login("dan"))

	// bob was logged in with an offer: logged out with cause removed, the lease
	// revoked and reported; cid was logged out: removed silently.
	st := f.lastState(t, "bob")
	if st.State != string(StateLoggedOut) || st.Cause != CauseRemoved || st.Fence != 6 {
		t.Fatalf("bob's last event = %+v", st)
	}
	if ends := f.endsSeen(); len(ends) != 1 || ends[0].Token != g.Token || ends[0].Outcome != OutcomeRevoked {
		t.Fatalf("observer got %v", ends)
	}
	if n := len(f.stateEvents(t, "cid")); n != 0 {
		t.Fatalf("cid: %d events", n)
	}
	if _, err := f.m.Reserve(ReserveRequest{Agent: "bob", Interaction: "ix-b2", Channel: core.ChannelVoice}); !isDeny(err, DenyUnknownAgent) {
		t.Fatalf("reserve a removed agent: %v", err)
	}
	if err := f.m.Accept(g.Token); !errors.Is(err, ErrUnknownAgent) {
		t.Fatalf("accept a removed agent's lease: %v", err)
	}
	// Nothing to remove, add or announce: a no-op.
	if removed := f.m.Reconfigure([]config.Agent{ann2, dan}); len(removed) != 0 {
		t.Fatalf("removed = %v", removed)
	}
}

// A lowered capacity bounds new reservations only: the leases above it stay,
// and the views learn the new capacity from a "reconfigured" event.
func TestReconfigureLowersCapacity(t *testing.T) {
	f := newFixture(t, config.MissedOfferReady)
	must(t, f.m.Login("ann"))
	must(t, f.m.SetReady("ann"))
	t1 := f.reserve(t, "c1", core.ChannelChat)
	t2 := f.reserve(t, "c2", core.ChannelChat)
	must(t, f.m.Accept(t1))

	ann := config.Agent{ID: "ann", Capacity: map[core.Channel]int{core.ChannelVoice: 0, core.ChannelChat: 1, core.ChannelTask: 1, core.ChannelCallback: 0}}
	if removed := f.m.Reconfigure([]config.Agent{ann}); len(removed) != 0 {
		t.Fatalf("removed = %v", removed)
	}
	st := f.lastState(t, "ann")
	if st.Cause != CauseReconfigured {
		t.Fatalf("last event = %+v", st)
	}
	load := map[core.Channel]events.ChannelLoad{}
	for _, l := range st.Load {
		load[l.Channel] = l
	}
	if l := load[core.ChannelChat]; l.Capacity != 1 || l.Busy != 1 || l.Offered != 1 {
		t.Fatalf("chat load = %+v", l)
	}
	if _, ok := load[core.ChannelVoice]; ok {
		t.Fatalf("voice disabled and idle but still in the load: %+v", st.Load)
	}
	// Both leases survive; a third chat is refused, and so is voice (disabled).
	if _, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "c3", Channel: core.ChannelChat}); !isDeny(err, DenyAtCapacity) {
		t.Fatalf("chat beyond the new capacity: %v", err)
	}
	if _, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "v1", Channel: core.ChannelVoice}); !isDeny(err, DenyChannelDisabled) {
		t.Fatalf("voice after disabling: %v", err)
	}
	must(t, f.m.Accept(t2))
	must(t, f.m.Complete(t1, 0))
	// One chat still open: at the new capacity.
	if _, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "c3", Channel: core.ChannelChat}); !isDeny(err, DenyAtCapacity) {
		t.Fatalf("chat at the new capacity: %v", err)
	}
	must(t, f.m.Complete(t2, 0))
	f.reserve(t, "c3", core.ChannelChat)

	// Chat disabled under an open offer: the load still shows it, at capacity 0.
	ann.Capacity[core.ChannelChat] = 0
	f.m.Reconfigure([]config.Agent{ann})
	var chat []events.ChannelLoad
	for _, l := range f.lastState(t, "ann").Load {
		if l.Channel == core.ChannelChat {
			chat = append(chat, l)
		}
	}
	if len(chat) != 1 || chat[0].Capacity != 0 || chat[0].Offered != 1 {
		t.Fatalf("chat load after disabling it under an offer: %+v", chat)
	}
}

// Timers of a lease whose agent was removed or detached find nothing to do:
// no panic, no event, no observer call.
func TestTimersOfGoneAgent(t *testing.T) {
	f := newFixture(t, config.MissedOfferNotReady)
	must(t, f.m.Adopt(bob, 2))
	for _, id := range []core.AgentID{"ann", "bob"} {
		must(t, f.m.Login(id))
		must(t, f.m.SetReady(id))
	}
	offered := f.reserve(t, "ix1", core.ChannelVoice) // ann, 10s TTL
	g, err := f.m.Reserve(ReserveRequest{Agent: "bob", Interaction: "ix2", Channel: core.ChannelVoice, TTL: 10 * time.Second})
	must(t, err)
	must(t, f.m.Accept(g.Token))
	must(t, f.m.Complete(g.Token, 5*time.Second))
	must(t, f.m.EndWrapUp("bob"))
	must(t, f.m.Detach("bob", "moved"))
	f.m.Reconfigure(nil) // ann removed, her offer revoked
	seq := f.log.LastSeq()
	nEnds := len(f.endsSeen())

	f.clk.Advance(time.Minute)
	// A timer that fired just before the removal, and ran after it.
	f.m.expire(offered)
	f.m.wrapUpDone(offered)
	f.m.expire(g.Token)
	f.m.wrapUpDone(g.Token)
	if got := f.log.LastSeq(); got != seq {
		t.Fatalf("%d events after the agents left", got-seq)
	}
	if got := len(f.endsSeen()); got != nEnds {
		t.Fatalf("observer called %d more times", got-nEnds)
	}
}

// A remembered grant whose agent has since left can still be cancelled.
func TestCancelRequestOfGoneAgent(t *testing.T) {
	f := newFixture(t, config.MissedOfferReady)
	must(t, f.m.Login("ann"))
	must(t, f.m.SetReady("ann"))
	if _, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "ix", Channel: core.ChannelVoice, Request: "r1", TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	f.m.Reconfigure(nil)
	if err := f.m.CancelRequest("r1"); err != nil {
		t.Fatalf("cancel a request for a removed agent: %v", err)
	}
}
