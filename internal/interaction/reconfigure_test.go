package interaction

import (
	"errors"
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

// endRecorder is a Deliverer that remembers the Ended calls.
type endRecorder struct {
	mu    sync.Mutex
	ended map[core.InteractionID]string
}

func (d *endRecorder) Deliver(events.Interaction, agent.Token)  {}
func (d *endRecorder) Withdraw(core.InteractionID, agent.Token) {}
func (d *endRecorder) Ended(id core.InteractionID, state string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ended == nil {
		d.ended = map[core.InteractionID]string{}
	}
	d.ended[id] = state
}

// waitEnded polls until the deliverer heard that id ended, and returns the state.
func (d *endRecorder) waitEnded(t *testing.T, id core.InteractionID) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d.mu.Lock()
		state, ok := d.ended[id]
		d.mu.Unlock()
		if ok {
			return state
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deliverer was not told that %s ended", id)
		}
		time.Sleep(time.Millisecond)
	}
}

// lastRecorded returns the last interaction event of id in the log.
func lastRecorded(t *testing.T, log *events.Log, id core.InteractionID) events.Interaction {
	t.Helper()
	evs, _, err := log.Read(0, 1<<16, nil)
	if err != nil {
		t.Fatal(err)
	}
	var last *events.Interaction
	for _, ev := range evs {
		if ix, ok := ev.Data.(events.Interaction); ok && ix.ID == id {
			last = &ix
		}
	}
	if last == nil {
		t.Fatalf("no event for %s", id)
	}
	return *last
}

// A queue added by Reconfigure takes new interactions; one taken away refuses them.
func TestReconfigureAddsQueue(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	q1, q2 := queue("q1", 20*time.Second, 0), queue("q2", 20*time.Second, 0)
	st := newStack(t, clk, skilled("ann"), []config.Queue{q1, q2}) // the router knows both
	must(t, st.s.Reconfigure([]config.Queue{q1}))
	if _, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q2"}); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("create in a queue not configured yet: %v", err)
	}
	q2.Priority = 7
	must(t, st.s.Reconfigure([]config.Queue{q1, q2}))
	ix, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q2"})
	if err != nil {
		t.Fatal(err)
	}
	if ix.State != string(StateQueued) || ix.Queue != "q2" || ix.Priority != 7 {
		t.Fatalf("created %+v", ix)
	}
	ready(t, st, "ann")
	if got, _ := st.s.Get(ix.ID); got.State != string(StateOffered) || got.Agent != "ann" {
		t.Fatalf("after ann got ready: %+v", got)
	}
}

// When its queue is removed, an interaction waiting there ends failed with
// reason queue_removed once the router drops it, and the edge hears Ended; the
// interactions already with agents carry on, and an offer not taken fails
// instead of going back to the queue that is no more.
func TestReconfigureRemovesQueue(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	q1, q2 := queue("q1", 20*time.Second, 0), queue("q2", 20*time.Second, 0)
	st := newStack(t, clk, skilled("ann", "bob"), []config.Queue{q1, q2})
	d := &endRecorder{}
	st.s.SetDeliverer(core.ChannelTask, d)

	conn, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q1"})
	must(t, err)
	ready(t, st, "ann")
	must2(t)(st.s.Accept(conn.ID, "ann"))
	offered, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q1"})
	must(t, err)
	ready(t, st, "bob")
	if got, _ := st.s.Get(offered.ID); got.State != string(StateOffered) || got.Agent != "bob" {
		t.Fatalf("offered = %+v", got)
	}
	queued, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q1"})
	must(t, err)
	if queued.State != string(StateQueued) {
		t.Fatalf("queued = %+v", queued)
	}

	must(t, st.s.Reconfigure([]config.Queue{q2}))
	if _, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q1"}); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("create in a removed queue: %v", err)
	}
	if _, err := st.s.Transfer(conn.ID, "ann", Target{Queue: "q1"}); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("transfer to a removed queue: %v", err)
	}

	// The router drops what waited in q1 (as its own reconfiguration does).
	if !st.r.Remove(queued.ID) {
		t.Fatal("the queued interaction was not in the router")
	}
	st.s.QueueRemoved([]router.Waiting{
		{ID: queued.ID, Channel: core.ChannelTask, Queue: "q1"},
		{ID: conn.ID, Channel: core.ChannelTask, Queue: "q1"}, // not queued: left alone
		{ID: "ix-unknown", Channel: core.ChannelTask, Queue: "q1"},
	})
	if _, ok := st.s.Get(queued.ID); ok {
		t.Fatal("the queued interaction is still live")
	}
	if ev := lastRecorded(t, st.log, queued.ID); ev.State != string(StateFailed) || ev.Reason != ReasonQueueRemoved || ev.Previous != string(StateQueued) {
		t.Fatalf("queued interaction ended as %+v", ev)
	}
	if state := d.waitEnded(t, queued.ID); state != string(StateFailed) {
		t.Fatalf("Ended(%s, %s)", queued.ID, state)
	}
	if got, _ := st.s.Get(conn.ID); got.State != string(StateConnected) {
		t.Fatalf("connected interaction after the removal: %+v", got)
	}

	// bob does not take his offer: there is no queue to go back to.
	must2(t)(st.s.Reject(offered.ID, "bob"))
	if ev := lastRecorded(t, st.log, offered.ID); ev.State != string(StateFailed) || !strings.HasPrefix(ev.Reason, ReasonQueueRemoved) {
		t.Fatalf("rejected offer ended as %+v", ev)
	}
	if state := d.waitEnded(t, offered.ID); state != string(StateFailed) {
		t.Fatalf("Ended(%s, %s)", offered.ID, state)
	}

	// ann finishes: the default wrap-up applies, then it ends as usual.
	must2(t)(st.s.Complete(conn.ID, "ann"))
	clk.Advance(config.DefaultWrapUp.D() - time.Second)
	if got, _ := st.s.Get(conn.ID); got.State != string(StateWrapUp) {
		t.Fatalf("before the default wrap-up ends: %+v", got)
	}
	clk.Advance(time.Second)
	if state := d.waitEnded(t, conn.ID); state != string(StateEnded) {
		t.Fatalf("Ended(%s, %s)", conn.ID, state)
	}
	if st.s.Live() != 0 {
		t.Fatalf("%d interactions still live", st.s.Live())
	}
}

// Business hours that do not compile reject the whole configuration: the
// queues stay as they were.
func TestReconfigureRejectsBadHours(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	q1, q2 := queue("q1", 20*time.Second, 0), queue("q2", 20*time.Second, 0)
	st := newStack(t, clk, skilled("ann"), []config.Queue{q1, q2})
	bad := queue("q3", 20*time.Second, 0)
	bad.BusinessHours = &config.BusinessHours{TimeZone: "Nowhere/Atlantis", Open: []config.OpenWindow{{Days: []string{"mon"}, From: "09:00", To: "17:00"}}}
	err := st.s.Reconfigure([]config.Queue{q1, bad}) // would remove q2, add q3
	if err == nil || !strings.HasPrefix(err.Error(), "interaction: reconfigure: queue q3: ") {
		t.Fatalf("bad hours: %v", err)
	}
	if _, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q2"}); err != nil {
		t.Fatalf("q2 after a rejected reconfiguration: %v", err)
	}
	if _, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "q3"}); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("q3 after a rejected reconfiguration: %v", err)
	}
}

// A closed queue whose closed target was removed refuses new interactions.
func TestReconfigureRemovesClosedTarget(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 23, 20, 0, 0, 0, time.UTC)) // a Monday, 20:00
	office := queue("office", 20*time.Second, 0)
	office.BusinessHours = &config.BusinessHours{TimeZone: "UTC", Open: []config.OpenWindow{{Days: []string{"mon"}, From: "09:00", To: "17:00"}}}
	office.ClosedTarget = "night"
	night := queue("night", 20*time.Second, 0)
	st := newStack(t, clk, skilled("ann"), []config.Queue{office, night})
	if ix, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "office"}); err != nil || ix.Queue != "night" {
		t.Fatalf("closed office before: %+v, %v", ix, err)
	}
	must(t, st.s.Reconfigure([]config.Queue{office}))
	if _, _, err := st.s.Create(CreateRequest{Channel: core.ChannelTask, Queue: "office"}); !errors.Is(err, ErrQueueClosed) {
		t.Fatalf("closed office whose target was removed: %v", err)
	}
}
