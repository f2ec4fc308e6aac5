package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func openTest(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(context.Background(), dir, testLogger(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

var t0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

func interactionEvent(seq uint64, id string, state string, created time.Time, ptr bool) events.Event {
	it := events.Interaction{
		ID: core.InteractionID(id), Channel: core.ChannelVoice, Queue: "sales", Priority: 3,
		State: state, CreatedAt: created, Attributes: map[string]string{"customer": "c-" + id},
	}
	if state != "created" {
		it.EnqueuedAt = created.Add(time.Second)
	}
	if state == "connected" || state == "ended" {
		it.Agent = "alice"
		it.AnsweredAt = created.Add(5 * time.Second)
	}
	if state == "ended" {
		it.EndedAt = created.Add(time.Minute)
	}
	var data any = it
	if ptr {
		data = &it
	}
	return events.Event{Seq: seq, Time: created.Add(time.Duration(seq) * time.Millisecond), Type: events.TypeInteraction,
		Agent: it.Agent, Interaction: it.ID, Queue: it.Queue, Data: data}
}

func agentEvent(seq uint64, agent string, state string) events.Event {
	return events.Event{Seq: seq, Time: t0.Add(time.Duration(seq) * time.Millisecond), Type: events.TypeAgentState,
		Agent: core.AgentID(agent), Data: events.AgentState{State: state, Cause: "set_state", Version: seq, Epoch: 1,
			Load: []events.ChannelLoad{{Channel: core.ChannelVoice, Capacity: 1}}}}
}

func decisionEvent(seq uint64, id string) events.Event {
	return events.Event{Seq: seq, Time: t0.Add(time.Duration(seq) * time.Millisecond), Type: events.TypeDecision,
		Interaction: core.InteractionID(id), Queue: "sales", Agent: "alice",
		Data: &events.Decision{Direction: "interaction_arrived", Strategy: "longest_idle", Queues: []core.QueueID{"sales"},
			Eligible: 2, Candidates: []events.Candidate{{Agent: "alice", Score: 1, Why: "idle 5m", Result: "granted"}},
			Chosen: "alice", Outcome: "reserved", WaitMillis: 1200, DecisionMicros: 35}}
}

func leaseEvent(seq uint64, id string) events.Event {
	return events.Event{Seq: seq, Time: t0.Add(time.Duration(seq) * time.Millisecond), Type: events.TypeLease,
		Agent: "alice", Interaction: core.InteractionID(id),
		Data: events.Lease{Lease: core.LeaseID(seq), Epoch: 1, Channel: core.ChannelVoice, Outcome: "granted", TTLMillis: 15000}}
}

func count(t testing.TB, s *Store, table string) int {
	t.Helper()
	var n int
	if err := s.r.QueryRow(`SELECT COUNT(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

func TestMigrationsFreshAndReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := Open(ctx, dir+"/sub/dir", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.SchemaVersion(ctx)
	if err != nil || v != len(migrations) {
		t.Fatalf("version = %d, %v; want %d", v, err, len(migrations))
	}
	var mode string
	if err := s.r.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v", mode, err)
	}
	var sync int
	if err := s.w.QueryRow("PRAGMA synchronous").Scan(&sync); err != nil || sync != 2 {
		t.Fatalf("synchronous = %d, %v; want 2 (FULL)", sync, err)
	}
	if err := s.WriteBatch(ctx, []events.Event{agentEvent(1, "alice", "ready")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		s = openTest(t, dir+"/sub/dir")
		if n := count(t, s, "schema_migrations"); n != len(migrations) {
			t.Fatalf("schema_migrations rows = %d", n)
		}
		if last, err := s.LastSeq(ctx); err != nil || last != 1 {
			t.Fatalf("LastSeq = %d, %v", last, err)
		}
		_ = s.Close()
	}
}

func TestRefuseNewerSchema(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	if _, err := s.w.Exec(`INSERT INTO schema_migrations(version, applied_at) VALUES (?, 'x')`, len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	_, err := Open(context.Background(), dir, testLogger(t))
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open = %v, want ErrSchemaTooNew", err)
	}
	t.Logf("error: %v", err)
}

func TestWriteBatchAndQueries(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	if last, err := s.LastSeq(ctx); err != nil || last != 0 {
		t.Fatalf("LastSeq on empty = %d, %v", last, err)
	}
	batch := []events.Event{
		interactionEvent(1, "i1", "created", t0, false),
		interactionEvent(2, "i1", "queued", t0, true),
		decisionEvent(3, "i1"),
		leaseEvent(4, "i1"),
		agentEvent(5, "alice", "reserved"),
		interactionEvent(6, "i1", "connected", t0, false),
		interactionEvent(7, "i2", "queued", t0.Add(time.Minute), false),
		interactionEvent(8, "i3", "ended", t0.Add(2*time.Minute), true),
		{Seq: 9, Time: t0, Type: events.TypeNode, Data: events.Node{Node: "n1", State: "started"}},
		agentEvent(10, "alice", "busy"),
		agentEvent(11, "bob", "ready"),
	}
	if err := s.WriteBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if last, err := s.LastSeq(ctx); err != nil || last != 11 {
		t.Fatalf("LastSeq = %d, %v", last, err)
	}

	// GetInteraction: latest state, full round trip.
	got, err := s.GetInteraction(ctx, "i1")
	if err != nil {
		t.Fatal(err)
	}
	want := batch[5].Data.(events.Interaction)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("GetInteraction:\n got %+v\nwant %+v", got, want)
	}
	if _, err := s.GetInteraction(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetInteraction(nope) = %v", err)
	}

	// ListInteractions: filters, order, cursor.
	list := func(f InteractionFilter) []string {
		t.Helper()
		its, err := s.ListInteractions(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, it := range its {
			ids = append(ids, string(it.ID))
		}
		return ids
	}
	for name, c := range map[string]struct {
		f    InteractionFilter
		want []string
	}{
		"all":       {InteractionFilter{}, []string{"i3", "i2", "i1"}},
		"state":     {InteractionFilter{State: "queued"}, []string{"i2"}},
		"agent":     {InteractionFilter{Agent: "alice"}, []string{"i3", "i1"}},
		"queue":     {InteractionFilter{Queue: "sales", Channel: core.ChannelVoice}, []string{"i3", "i2", "i1"}},
		"channel":   {InteractionFilter{Channel: core.ChannelChat}, nil},
		"since":     {InteractionFilter{Since: t0.Add(time.Minute)}, []string{"i3", "i2"}},
		"until":     {InteractionFilter{Until: t0.Add(time.Minute)}, []string{"i1"}},
		"limit":     {InteractionFilter{Limit: 1}, []string{"i3"}},
		"cursor":    {InteractionFilter{Limit: 1, BeforeCreated: t0.Add(2 * time.Minute), BeforeID: "i3"}, []string{"i2"}},
		"cursor-ts": {InteractionFilter{BeforeCreated: t0.Add(time.Minute)}, []string{"i1"}},
	} {
		if got := list(c.f); !reflect.DeepEqual(got, c.want) {
			t.Errorf("ListInteractions %s = %v, want %v", name, got, c.want)
		}
	}

	open, err := s.OpenInteractions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(open) != 2 || open[0].ID != "i1" || open[1].ID != "i2" {
		t.Fatalf("OpenInteractions = %+v", open)
	}

	evs, err := s.InteractionEvents(ctx, "i1")
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, e := range evs {
		seqs = append(seqs, e.Seq)
	}
	if !reflect.DeepEqual(seqs, []uint64{1, 2, 3, 4, 6}) {
		t.Fatalf("InteractionEvents seqs = %v", seqs)
	}
	var it events.Interaction
	if err := json.Unmarshal(evs[1].Data.(json.RawMessage), &it); err != nil || it.State != "queued" {
		t.Fatalf("InteractionEvents data = %s, %v", evs[1].Data, err)
	}
	if !evs[0].Time.Equal(batch[0].Time) || evs[0].Type != events.TypeInteraction || evs[0].Queue != "sales" {
		t.Fatalf("InteractionEvents[0] = %+v", evs[0])
	}

	all, err := s.Events(ctx, 8, 2)
	if err != nil || len(all) != 2 || all[0].Seq != 9 || all[1].Seq != 10 {
		t.Fatalf("Events(8, 2) = %+v, %v", all, err)
	}
	if all, err := s.Events(ctx, 0, 0); err != nil || len(all) != 11 {
		t.Fatalf("Events(0, 0) = %d, %v", len(all), err)
	}
	if all, err := s.Events(ctx, 11, 10); err != nil || len(all) != 0 {
		t.Fatalf("Events(11, 10) = %d, %v", len(all), err)
	}

	hist, err := s.AgentHistory(ctx, "alice", 10)
	if err != nil {
		t.Fatal(err)
	}
	seqs = nil
	for _, e := range hist {
		seqs = append(seqs, e.Seq)
	}
	if !reflect.DeepEqual(seqs, []uint64{10, 5, 4}) {
		t.Fatalf("AgentHistory seqs = %v", seqs)
	}

	decs, err := s.Decisions(ctx, "i1")
	if err != nil || len(decs) != 1 {
		t.Fatalf("Decisions = %+v, %v", decs, err)
	}
	if d, ok := decs[0].Data.(events.Decision); !ok || !reflect.DeepEqual(d, *batch[2].Data.(*events.Decision)) {
		t.Fatalf("Decisions data = %#v", decs[0].Data)
	}

	// Each agent's last state only (alice was reserved, then busy), and the
	// one open lease.
	if n := count(t, s, "agent_last_state"); n != 2 {
		t.Fatalf("agent_last_state rows = %d", n)
	}
	var state string
	if err := s.r.QueryRow(`SELECT state FROM agent_last_state WHERE agent = 'alice'`).Scan(&state); err != nil || state != "busy" {
		t.Fatalf("alice's last state = %q, %v", state, err)
	}
	if open, err := s.OpenLeases(ctx); err != nil || len(open) != 1 || open[0].Lease != 4 || open[0].Interaction != "i1" || open[0].Outcome != "granted" {
		t.Fatalf("OpenLeases = %+v, %v", open, err)
	}
}

func TestWriteBatchIdempotentReplay(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	b1 := []events.Event{interactionEvent(1, "i1", "queued", t0, false), agentEvent(2, "alice", "ready")}
	b2 := []events.Event{interactionEvent(3, "i1", "connected", t0, false), leaseEvent(4, "i1"), decisionEvent(5, "i1")}
	for _, b := range [][]events.Event{b1, b2, b1, b2, append(b1, b2...)} {
		if err := s.WriteBatch(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	for table, want := range map[string]int{"events": 5, "agent_last_state": 1, "open_leases": 1, "interactions": 1} {
		if n := count(t, s, table); n != want {
			t.Errorf("%s rows = %d, want %d", table, n, want)
		}
	}
	// Replaying the older batch must not roll the projection back.
	it, err := s.GetInteraction(ctx, "i1")
	if err != nil || it.State != "connected" {
		t.Fatalf("GetInteraction = %+v, %v", it, err)
	}
	// A stale projection row (seq 1) is never re-applied over a newer one even
	// if the events table lost it: upsert is guarded by updated_seq.
	if _, err := s.w.Exec(`DELETE FROM events WHERE seq = 1`); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteBatch(ctx, b1); err != nil {
		t.Fatal(err)
	}
	if it, _ := s.GetInteraction(ctx, "i1"); it.State != "connected" {
		t.Fatalf("state after stale replay = %s", it.State)
	}
}

// startWriter runs s.RunWriter in a goroutine and returns its cancel and result.
func startWriter(s *Store, l *events.Log) (context.CancelFunc, <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.RunWriter(ctx, l) }()
	return cancel, done
}

func checkContiguous(t testing.TB, s *Store, want uint64) {
	t.Helper()
	var n, lo, hi int64
	if err := s.r.QueryRow(`SELECT COUNT(*), COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM events`).Scan(&n, &lo, &hi); err != nil {
		t.Fatal(err)
	}
	if uint64(n) != want || (n > 0 && (lo != 1 || hi != n)) {
		t.Fatalf("events: count %d, seq %d..%d; want %d contiguous from 1", n, lo, hi, want)
	}
}

func TestRunWriterConcurrentAppends(t *testing.T) {
	s := openTest(t, t.TempDir())
	l := events.NewLog(0, 512, true) // small window: exercises backpressure
	cancel, done := startWriter(s, l)
	defer cancel()

	const writers, per = 8, 1250
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range per {
				id := fmt.Sprintf("w%d-i%d", w, i/4%50)
				var err error
				switch i % 4 {
				case 0:
					_, err = l.Append(interactionEvent(0, id, "queued", t0.Add(time.Duration(i)*time.Second), false))
				case 1:
					_, err = l.Append(agentEvent(0, fmt.Sprintf("a%d", w), "ready"))
				case 2:
					_, err = l.Append(decisionEvent(0, id))
				default:
					_, err = l.Append(leaseEvent(0, id))
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	ctx, c := context.WithTimeout(context.Background(), 30*time.Second)
	defer c()
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	checkContiguous(t, s, writers*per)
	if n := count(t, s, "interactions"); n != writers*50 {
		t.Fatalf("interactions = %d", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("RunWriter = %v", err)
	}
}

func TestRunWriterDrainsOnCancel(t *testing.T) {
	s := openTest(t, t.TempDir())
	l := events.NewLog(0, 10000, true)
	// Cancelled before it starts: the writer must still write what was appended.
	for i := range 3000 {
		if _, err := l.Append(agentEvent(0, "alice", fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.RunWriter(ctx, l); err != nil {
		t.Fatalf("RunWriter = %v", err)
	}
	if l.DurableSeq() != 3000 {
		t.Fatalf("DurableSeq = %d", l.DurableSeq())
	}
	checkContiguous(t, s, 3000)

	// Cancelled while running with a backlog.
	cancelW, done := startWriter(s, l)
	for range 5000 {
		if _, err := l.Append(agentEvent(0, "bob", "ready")); err != nil {
			t.Fatal(err)
		}
	}
	last := l.LastSeq()
	cancelW()
	if err := <-done; err != nil {
		t.Fatalf("RunWriter = %v", err)
	}
	if l.DurableSeq() < last {
		t.Fatalf("DurableSeq = %d < appended %d", l.DurableSeq(), last)
	}
	checkContiguous(t, s, 8000)
}

func TestRunWriterResumesAfterReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	for round := 1; round <= 3; round++ {
		s, err := Open(ctx, dir, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		last, err := s.LastSeq(ctx)
		if err != nil {
			t.Fatal(err)
		}
		l := events.NewLog(last, 256, true)
		cancel, done := startWriter(s, l)
		for range 1000 {
			if _, err := l.Append(agentEvent(0, "alice", "ready")); err != nil {
				t.Fatal(err)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		checkContiguous(t, s, uint64(round*1000))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRunWriterClosedLog(t *testing.T) {
	s := openTest(t, t.TempDir())
	l := events.NewLog(0, 16, true)
	l.Close()
	if err := s.RunWriter(context.Background(), l); err != nil {
		t.Fatalf("RunWriter on closed empty log = %v", err)
	}
}

func TestRunWriterWriteErrorStops(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for retries")
	}
	s := openTest(t, t.TempDir())
	// Break the schema under the writer: every write now fails.
	if _, err := s.w.Exec(`DROP TABLE agent_last_state`); err != nil {
		t.Fatal(err)
	}
	l := events.NewLog(0, 16, true)
	if _, err := l.Append(agentEvent(0, "alice", "ready")); err != nil {
		t.Fatal(err)
	}
	err := s.RunWriter(context.Background(), l)
	if err == nil {
		t.Fatal("RunWriter = nil, want error")
	}
	t.Logf("error: %v", err)
	if l.DurableSeq() != 0 {
		t.Fatalf("DurableSeq = %d after failed write", l.DurableSeq())
	}
}

// mixedBatch builds n events of every projected type starting at seq first.
func mixedBatch(dst []events.Event, first uint64, n int) []events.Event {
	dst = dst[:0]
	for i := range n {
		seq := first + uint64(i)
		id := fmt.Sprintf("i%d", seq/4)
		switch seq % 4 {
		case 0:
			dst = append(dst, interactionEvent(seq, id, "queued", t0, false))
		case 1:
			dst = append(dst, agentEvent(seq, "alice", "ready"))
		case 2:
			dst = append(dst, decisionEvent(seq, id))
		default:
			dst = append(dst, leaseEvent(seq, id))
		}
	}
	return dst
}

// BenchmarkWriteBatch measures WriteBatch with mixed batches of 1000 events.
func BenchmarkWriteBatch(b *testing.B) {
	for _, size := range []int{500, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			s := openTest(b, b.TempDir())
			ctx := context.Background()
			buf := make([]events.Event, 0, size)
			next := uint64(1)
			for b.Loop() {
				buf = mixedBatch(buf, next, size)
				next += uint64(size)
				if err := s.WriteBatch(ctx, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(next-1)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

func TestOpenLeasesAndLoggedInAgents(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	at := time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)
	lease := func(seq uint64, agent string, id core.LeaseID, epoch uint64, outcome string) events.Event {
		return events.Event{Seq: seq, Time: at, Type: events.TypeLease, Agent: core.AgentID(agent), Interaction: core.InteractionID(fmt.Sprintf("ix-%d", id)),
			Data: events.Lease{Lease: id, Epoch: epoch, Channel: core.ChannelTask, Outcome: outcome}}
	}
	state := func(seq uint64, agent, st string) events.Event {
		return events.Event{Seq: seq, Time: at, Type: events.TypeAgentState, Agent: core.AgentID(agent), Data: events.AgentState{State: st}}
	}
	if err := s.WriteBatch(ctx, []events.Event{
		lease(1, "ann", 1, 5, "granted"),                                    // an earlier run's, never ended: open too
		lease(2, "ann", 1, 7, "granted"), lease(3, "ann", 1, 7, "accepted"), // open (accepted)
		lease(4, "bob", 2, 7, "granted"), lease(5, "bob", 2, 7, "expired"), // ended
		lease(6, "bob", 3, 7, "granted"), // open
		state(7, "ann", "busy"), state(8, "bob", "ready"), state(9, "bob", "logged_out"), state(10, "cat", "not_ready"),
	}); err != nil {
		t.Fatal(err)
	}
	// In another batch: a lease granted earlier ends, one is granted and ends.
	if err := s.WriteBatch(ctx, []events.Event{
		lease(11, "cat", 4, 7, "granted"), lease(12, "cat", 5, 7, "granted"), lease(13, "cat", 4, 7, "rejected"),
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteBatch(ctx, []events.Event{lease(14, "cat", 5, 7, "released")}); err != nil {
		t.Fatal(err)
	}
	open, err := s.OpenLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(open) != 3 || open[0].Epoch != 5 || open[1].Lease != 1 || open[1].Outcome != "accepted" || open[2].Lease != 3 || open[2].Agent != "bob" || open[2].Epoch != 7 {
		t.Fatalf("open leases %+v", open)
	}
	agents, err := s.LoggedInAgents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(agents) != "[ann cat]" {
		t.Fatalf("logged in %v", agents)
	}
}

// An agent's history is read through the partial index on her states and
// leases, not by scanning the events.
func TestAgentHistoryUsesItsIndex(t *testing.T) {
	s := openTest(t, t.TempDir())
	var id, parent, notUsed int
	var detail string
	if err := s.r.QueryRow("EXPLAIN QUERY PLAN "+sqlAgentHistory, "alice", 10).Scan(&id, &parent, &notUsed, &detail); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(detail, "USING INDEX events_agent") {
		t.Fatalf("query plan %q: want the events_agent index", detail)
	}
}

// Migration 5 keeps what start-up recovery needs from a version-4 database:
// each agent's last state and the leases still open.
func TestMigrationToLastStateAndOpenLeases(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	db, err := sql.Open("sqlite", dsn(filepath.Join(dir, FileName), false))
	if err != nil {
		t.Fatal(err)
	}
	stmts := []string{sqlMigrationsTable}
	for v, m := range migrations[:4] {
		stmts = append(stmts, m, fmt.Sprintf(`INSERT INTO schema_migrations(version, applied_at) VALUES (%d, 'x')`, v+1))
	}
	stmts = append(stmts,
		`INSERT INTO agent_state_history(seq, agent, time, state) VALUES
			(1, 'ann', 'x', 'ready'), (2, 'bob', 'x', 'ready'), (5, 'ann', 'x', 'busy'), (6, 'bob', 'x', 'logged_out')`,
		`INSERT INTO leases(seq, agent, interaction, lease, epoch, channel, outcome, time) VALUES
			(3, 'ann', 'ix-1', 1, 7, 'voice', 'granted', 'x'), (4, 'ann', 'ix-1', 1, 7, 'voice', 'accepted', 'x'),
			(7, 'bob', 'ix-2', 2, 7, 'voice', 'granted', 'x'), (8, 'bob', 'ix-2', 2, 7, 'voice', 'expired', 'x'),
			(9, 'ann', 'ix-3', 1, 6, 'voice', 'granted', 'x')`)
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	agents, err := s.LoggedInAgents(ctx)
	if err != nil || fmt.Sprint(agents) != "[ann]" {
		t.Fatalf("LoggedInAgents = %v, %v", agents, err)
	}
	open, err := s.OpenLeases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(open) != 2 || open[0].Lease != 1 || open[0].Epoch != 7 || open[0].Outcome != "accepted" || open[1].Epoch != 6 {
		t.Fatalf("OpenLeases = %+v", open)
	}
	for _, table := range []string{"agent_state_history", "leases"} {
		var n int
		if err := s.r.QueryRow(`SELECT COUNT(*) FROM sqlite_schema WHERE name = ?`, table).Scan(&n); err != nil || n != 0 {
			t.Fatalf("table %s still there (%d, %v)", table, n, err)
		}
	}
}

// A batch replayed over a range partly stored, with an event repeated inside
// the batch: every event is stored once, in order.
func TestWriteBatchReplayOverlap(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	batch := func(from, to uint64) []events.Event {
		var evs []events.Event
		for seq := from; seq <= to; seq++ {
			evs = append(evs, agentEvent(seq, fmt.Sprintf("a%d", seq%7), "ready"))
		}
		return evs
	}
	if err := s.WriteBatch(ctx, batch(1, 40)); err != nil {
		t.Fatal(err)
	}
	again := append(batch(30, 110), agentEvent(100, "a2", "ready"))
	if err := s.WriteBatch(ctx, again); err != nil {
		t.Fatal(err)
	}
	checkContiguous(t, s, 110)
	if st := s.WriterStats(); st.Commits != 2 || st.Events != 110 {
		t.Fatalf("WriterStats = %+v, want 2 commits, 110 events", st)
	}
	// a2's newest event is seq 107, although a repeat of 100 (stored) ends the batch.
	var seq int64
	if err := s.r.QueryRow(`SELECT seq FROM agent_last_state WHERE agent = 'a2'`).Scan(&seq); err != nil || seq != 107 {
		t.Fatalf("a2's last state at seq %d, %v; want 107", seq, err)
	}
	// An event already stored ending a batch does not hide the newer one
	// before it: ann logs out at seq 112.
	if err := s.WriteBatch(ctx, []events.Event{agentEvent(111, "ann", "ready"), agentEvent(112, "ann", "logged_out"), agentEvent(111, "ann", "ready")}); err != nil {
		t.Fatal(err)
	}
	if agents, err := s.LoggedInAgents(ctx); err != nil || slices.Contains(agents, "ann") {
		t.Fatalf("LoggedInAgents = %v, %v; ann logged out at seq 112", agents, err)
	}
	var data string
	if err := s.r.QueryRow(`SELECT data FROM events WHERE seq = 77`).Scan(&data); err != nil || !strings.Contains(data, `"version":77`) {
		t.Fatalf("event 77 data = %s, %v", data, err)
	}
}

// Under a steady stream of events the writer starts a commit no sooner than
// commitEvery after one of groupMin events or more began, and everything
// becomes durable.
func TestRunWriterPacesCommitsUnderLoad(t *testing.T) {
	s := openTest(t, t.TempDir())
	type commit struct {
		began time.Time
		n     int
	}
	commits := make(chan commit, 1000)
	s.committed = func(began time.Time, n int) { commits <- commit{began, n} }
	l := events.NewLog(0, 1<<16, true)
	cancel, done := startWriter(s, l)
	start := time.Now()
	for time.Since(start) < 300*time.Millisecond {
		batch := make([]events.Event, groupMin)
		for i := range batch {
			batch[i] = agentEvent(0, fmt.Sprintf("a%d", i%20), "ready")
		}
		if _, err := l.Append(batch...); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // unpaced, the writer would commit after each
	}
	if err := l.WaitDurable(context.Background(), l.LastSeq()); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(commits)
	var prev commit
	total := 0
	for c := range commits {
		if prev.n >= groupMin && c.began.Sub(prev.began) < commitEvery {
			t.Errorf("commit of %d events began %v after one of %d: want at least %v", c.n, c.began.Sub(prev.began), prev.n, commitEvery)
		}
		prev, total = c, total+c.n
	}
	if st := s.WriterStats(); uint64(total) != l.LastSeq() || st.Events != l.LastSeq() {
		t.Fatalf("committed %d events (stats %+v), appended %d", total, st, l.LastSeq())
	}
}
