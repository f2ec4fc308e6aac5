package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

const (
	sqlInsertEvent = `INSERT OR IGNORE INTO events(seq, time, type, agent, interaction, queue, data)
VALUES (?, ?, ?, ?, ?, ?, ?)`
	// The WHERE keeps the newest state when batches are replayed out of order.
	sqlUpsertInteraction = `INSERT INTO interactions(id, channel, queue, priority, state, previous, agent, reason,
	created_at, enqueued_at, answered_at, ended_at, attributes, updated_seq, idempotency_key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET
	channel = excluded.channel, queue = excluded.queue, priority = excluded.priority,
	state = excluded.state, previous = excluded.previous, agent = excluded.agent,
	reason = excluded.reason, created_at = excluded.created_at,
	enqueued_at = excluded.enqueued_at, answered_at = excluded.answered_at,
	ended_at = excluded.ended_at, attributes = excluded.attributes,
	updated_seq = excluded.updated_seq, idempotency_key = excluded.idempotency_key
WHERE excluded.updated_seq > interactions.updated_seq`
	// An agent's last state and the open leases are rows updated in place; the
	// WHERE keeps the newest when an older event is projected after a newer
	// one. A lease that ended is deleted and leaves no trace, so batches must
	// come in seq order (RunWriter's do; a replay overlaps only events
	// already stored, which are skipped).
	sqlUpsertAgentLast = `INSERT INTO agent_last_state(agent, seq, state) VALUES (?, ?, ?)
ON CONFLICT(agent) DO UPDATE SET seq = excluded.seq, state = excluded.state
WHERE excluded.seq > agent_last_state.seq`
	sqlUpsertOpenLease = `INSERT INTO open_leases(epoch, lease, seq, agent, interaction, channel, outcome)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(epoch, lease) DO UPDATE SET seq = excluded.seq, agent = excluded.agent,
	interaction = excluded.interaction, channel = excluded.channel, outcome = excluded.outcome
WHERE excluded.seq > open_leases.seq`
	sqlDeleteOpenLease = `DELETE FROM open_leases WHERE epoch = ? AND lease = ? AND seq < ?`
)

// nullStr stores the empty string as NULL.
func nullStr[S ~string](s S) any {
	if s == "" {
		return nil
	}
	return string(s)
}

// payload returns Data as a T whether it holds a T or a *T.
func payload[T any](d any) (T, bool) {
	switch v := d.(type) {
	case T:
		return v, true
	case *T:
		if v != nil {
			return *v, true
		}
	}
	var zero T
	return zero, false
}

// leaseKey names a lease: its id within its owner's epoch.
type leaseKey struct {
	epoch uint64
	lease core.LeaseID
}

// openOutcome reports whether a lease is still open after outcome.
func openOutcome(outcome string) bool {
	return outcome == "granted" || outcome == "accepted" || outcome == "completed"
}

// WriteBatch writes evs and their projection rows in one transaction. It is
// idempotent on seq: an event whose seq is already stored is skipped together with
// its projections, so replaying a batch after a crash is harmless. Payloads of
// unexpected types are stored in events but not projected. WriteBatch may block on
// disk I/O; it is safe for concurrent use (writes are serialised).
//
// Projection rows hold the latest state of something (an interaction, an agent's
// state, an open lease), so only the newest event (by seq) of each among those
// the batch stores is projected: under load an interaction changes state several
// times, and a lease is granted and ended, within one batch — a skipped upsert
// saves its index updates too. Batches must come in seq order, as RunWriter
// writes them (see sqlUpsertAgentLast).
func (s *Store) WriteBatch(ctx context.Context, evs []events.Event) (err error) {
	if len(evs) == 0 {
		return nil
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: write batch: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	insEvent := tx.StmtContext(ctx, s.insEvent)
	// Projection statements are bound to the tx only when first needed.
	var upInteraction, upAgent, upLease, delLease *sql.Stmt
	bind := func(p **sql.Stmt, base *sql.Stmt) *sql.Stmt {
		if *p == nil {
			*p = tx.StmtContext(ctx, base)
		}
		return *p
	}
	// First the events, noting which were not stored yet; then the
	// projections, from the newest fresh event of each interaction, agent and
	// lease (by seq, whatever its place in evs).
	fresh := make([]bool, len(evs))
	var written, projected uint64
	var data []byte // reused: each event's JSON is copied into its string
	for i := range evs {
		e := &evs[i]
		data, err = events.AppendJSON(data[:0], e.Data)
		if err != nil {
			return fmt.Errorf("store: write batch: marshal event %d (%s): %w", e.Seq, e.Type, err)
		}
		res, err := insEvent.ExecContext(ctx, int64(e.Seq), fmtTime(e.Time), string(e.Type),
			nullStr(e.Agent), nullStr(e.Interaction), nullStr(e.Queue), string(data))
		if err != nil {
			return fmt.Errorf("store: write batch: insert event %d: %w", e.Seq, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("store: write batch: insert event %d: %w", e.Seq, err)
		}
		// n == 0: already stored, with its projection.
		fresh[i] = n > 0
		written += uint64(n)
	}
	for _, i := range newestOfEach(evs, fresh) {
		e := &evs[i]
		switch e.Type {
		case events.TypeInteraction:
			it, _ := payload[events.Interaction](e.Data)
			err = s.projectInteraction(ctx, bind(&upInteraction, s.upInteraction), e, it)
		case events.TypeAgentState:
			as, _ := payload[events.AgentState](e.Data)
			_, err = bind(&upAgent, s.upAgentLast).ExecContext(ctx, string(e.Agent), int64(e.Seq), as.State)
		case events.TypeLease:
			l, _ := payload[events.Lease](e.Data)
			if openOutcome(l.Outcome) {
				_, err = bind(&upLease, s.upOpenLease).ExecContext(ctx, int64(l.Epoch), int64(l.Lease), int64(e.Seq),
					string(e.Agent), nullStr(e.Interaction), nullStr(l.Channel), l.Outcome)
			} else {
				_, err = bind(&delLease, s.delOpenLease).ExecContext(ctx, int64(l.Epoch), int64(l.Lease), int64(e.Seq))
			}
		}
		if err != nil {
			return fmt.Errorf("store: write batch: project event %d (%s): %w", e.Seq, e.Type, err)
		}
		projected++
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: write batch: commit: %w", err)
	}
	s.commits.Add(1)
	s.written.Add(written)
	s.projected.Add(projected)
	return nil
}

// newestOfEach returns the indexes in evs of the newest (highest seq) fresh
// event of each interaction, agent and lease, in the order of evs; events of
// other types, or with payloads of unexpected types, are never returned.
func newestOfEach(evs []events.Event, fresh []bool) []int {
	newest := map[any]int{} // interaction id, agent id or leaseKey → index in evs
	for i := range evs {
		if !fresh[i] {
			continue
		}
		e := &evs[i]
		var key any
		switch e.Type {
		case events.TypeInteraction:
			if it, ok := payload[events.Interaction](e.Data); ok {
				key = cmp.Or(it.ID, e.Interaction)
			}
		case events.TypeAgentState:
			if _, ok := payload[events.AgentState](e.Data); ok {
				key = e.Agent
			}
		case events.TypeLease:
			if l, ok := payload[events.Lease](e.Data); ok {
				key = leaseKey{l.Epoch, l.Lease}
			}
		}
		if key == nil {
			continue
		}
		if j, seen := newest[key]; !seen || evs[j].Seq < e.Seq {
			newest[key] = i
		}
	}
	out := make([]int, 0, len(newest))
	for _, i := range newest {
		out = append(out, i)
	}
	slices.Sort(out)
	return out
}

func (s *Store) projectInteraction(ctx context.Context, st *sql.Stmt, e *events.Event, it events.Interaction) error {
	var attrs any
	if len(it.Attributes) > 0 {
		b, err := json.Marshal(it.Attributes)
		if err != nil {
			return err
		}
		attrs = string(b)
	}
	id := it.ID
	if id == "" {
		id = e.Interaction
	}
	_, err := st.ExecContext(ctx, string(id), string(it.Channel), nullStr(it.Queue), it.Priority,
		it.State, nullStr(it.Previous), nullStr(it.Agent), nullStr(it.Reason),
		fmtTime(it.CreatedAt), nullTime(it.EnqueuedAt), nullTime(it.AnsweredAt), nullTime(it.EndedAt),
		attrs, int64(e.Seq), nullStr(it.IdempotencyKey))
	return err
}

// Writer tuning.
const (
	readBatch = 4000
	// groupMin and groupWait: a batch smaller than groupMin waits groupWait
	// once for more events before it is written (group commit).
	groupMin  = 64
	groupWait = time.Millisecond
	// commitEvery paces the commits under load: after a batch of groupMin
	// events or more, the next commit starts no sooner than commitEvery
	// after this one began. Each commit rewrites the hot pages it touches
	// (the tables' and indexes' right edges, the agents' index pages) and
	// fsyncs the WAL; at 2,500 calls/s the writer otherwise commits ~215
	// times a second, ~11 calls each, and 3,000 calls/s did not pass
	// sipbench (p99 call setup 3 s; with 25 ms: 0.7 s). Under load a durable
	// acknowledgement waits up to commitEvery + groupWait longer, plus the
	// write itself; at low load nothing changes.
	commitEvery   = 25 * time.Millisecond
	writeAttempts = 5
	firstBackoff  = 50 * time.Millisecond
	drainTimeout  = 5 * time.Second
)

// RunWriter is the node's single store writer. Starting after l.DurableSeq(), it
// reads events from l in batches, writes each with WriteBatch and then marks it
// durable on the log, which releases waiters of Log.WaitDurable. It blocks until ctx
// ends, then drains — writes everything appended up to that point, within a few
// seconds — and returns nil. A write that still fails after retries, a gap in the
// log (a bug: the log never evicts non-durable events) or a drain that cannot finish
// ends it with an error. Run at most one RunWriter per store and log.
func (s *Store) RunWriter(ctx context.Context, l *events.Log) error {
	after := l.DurableSeq()
	buf := make([]events.Event, 0, readBatch)
	// Writes in progress are not cancelled by shutdown; they are bounded by retries.
	wctx := context.WithoutCancel(ctx)
	lingered := false
	var paceUntil time.Time // when the next commit may start (zero: at once)
	for {
		if ctx.Err() != nil {
			return s.drain(l, after, buf)
		}
		evs, more, err := l.Read(after, readBatch, buf)
		if err != nil {
			return s.readError(l, after, err)
		}
		if len(evs) == 0 {
			select {
			case <-more: // new events were appended (or the log closed): read again
			case <-ctx.Done(): // shutdown: drain what is already appended, then stop
				return s.drain(l, after, buf)
			}
			continue
		}
		if len(evs) < groupMin && !lingered {
			// Group commit: a small batch waits a moment for the events
			// arriving behind it — one commit writes each touched page and
			// syncs once for all of them (under load most of the writer's
			// time goes to committing).
			lingered = true
			select {
			case <-time.After(groupWait): // lingered: read again
			case <-ctx.Done(): // shutdown: the loop's top drains
			}
			continue
		}
		lingered = false
		if wait := time.Until(paceUntil); wait > 0 && len(evs) < readBatch {
			// Under load: let this commit gather what arrives meanwhile
			// (a full batch has nothing to gather: write it now).
			select {
			case <-time.After(wait): // paced: read again, with what arrived
			case <-ctx.Done(): // shutdown: the loop's top drains
			}
			paceUntil = time.Time{}
			continue
		}
		began := time.Now()
		if err := s.writeRetry(wctx, evs); err != nil {
			return err
		}
		if s.committed != nil {
			s.committed(began, len(evs))
		}
		if len(evs) >= groupMin {
			paceUntil = began.Add(commitEvery)
		}
		after = evs[len(evs)-1].Seq
		l.MarkDurable(after)
	}
}

// drain writes every event appended up to now, within drainTimeout.
func (s *Store) drain(l *events.Log, after uint64, buf []events.Event) error {
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	target := l.LastSeq()
	start := after
	for after < target {
		evs, _, err := l.Read(after, readBatch, buf)
		if err != nil {
			return s.readError(l, after, err)
		}
		if len(evs) == 0 {
			break
		}
		if err := s.writeRetry(ctx, evs); err != nil {
			return fmt.Errorf("store: writer: drain: %w", err)
		}
		after = evs[len(evs)-1].Seq
		l.MarkDurable(after)
	}
	s.log.Info("store writer stopped", "drained", after-start, "durable_seq", after)
	return nil
}

func (s *Store) readError(l *events.Log, after uint64, err error) error {
	if errors.Is(err, events.ErrClosed) {
		// The log was closed under the writer; only a problem if events are lost.
		if last := l.LastSeq(); last > after {
			return fmt.Errorf("store: writer: log closed with %d events not durable (seq %d..%d): %w",
				last-after, after+1, last, err)
		}
		s.log.Info("store writer stopped: log closed", "durable_seq", after)
		return nil
	}
	// ErrGap: the log evicted an event the store never confirmed. That is a bug.
	return fmt.Errorf("store: writer: read after seq %d: %w", after, err)
}

// writeRetry writes evs, retrying with exponential backoff before giving up.
func (s *Store) writeRetry(ctx context.Context, evs []events.Event) error {
	backoff := firstBackoff
	var err error
	for attempt := 1; ; attempt++ {
		if err = s.WriteBatch(ctx, evs); err == nil {
			return nil
		}
		first, last := evs[0].Seq, evs[len(evs)-1].Seq
		if attempt == writeAttempts {
			s.log.Error("store write failed, giving up", "first_seq", first, "last_seq", last,
				"attempts", attempt, "err", err)
			return fmt.Errorf("store: writer: seq %d..%d after %d attempts: %w", first, last, attempt, err)
		}
		s.log.Warn("store write failed, retrying", "first_seq", first, "last_seq", last,
			"attempt", attempt, "backoff", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C: // backoff elapsed: retry
		case <-ctx.Done(): // drain deadline passed: give up
			t.Stop()
			return fmt.Errorf("store: writer: seq %d..%d: %w (last error: %w)", first, last, ctx.Err(), err)
		}
		backoff *= 2
	}
}
