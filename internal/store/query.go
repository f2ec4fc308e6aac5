package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// Query limits.
const (
	// DefaultLimit is used when a query's limit is zero or negative.
	DefaultLimit = 100
	// MaxLimit caps ListInteractions, AgentHistory and Interaction-level queries.
	MaxLimit = 1000
	// MaxEventsLimit caps Events (stream resume reads bigger pages).
	MaxEventsLimit = 10000
)

func clampLimit(n, def, maxN int) int {
	if n <= 0 {
		return def
	}
	return min(n, maxN)
}

// LastSeq returns the highest event seq stored, 0 when there is none. The node
// creates its events.Log with NewLog(lastSeq, ...) at start.
func (s *Store) LastSeq(ctx context.Context) (uint64, error) {
	var seq int64
	if err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(seq), 0) FROM events`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("store: last seq: %w", err)
	}
	return uint64(seq), nil
}

// InteractionFilter selects interactions for ListInteractions. Zero fields match any.
type InteractionFilter struct {
	State   string
	Queue   core.QueueID
	Channel core.Channel
	Agent   core.AgentID
	// Since (inclusive) and Until (exclusive) bound created_at.
	Since, Until time.Time
	// Limit is the page size: DefaultLimit when zero, at most MaxLimit.
	Limit int
	// BeforeCreated and BeforeID are the cursor of the next page: set them to the
	// CreatedAt and ID of the last interaction of the previous page. BeforeID may be
	// empty, then every interaction created at BeforeCreated is skipped.
	BeforeCreated time.Time
	BeforeID      core.InteractionID
}

const interactionCols = `id, channel, queue, priority, state, previous, agent, reason,
	created_at, enqueued_at, answered_at, ended_at, attributes, idempotency_key`

// GetInteraction returns the latest state of interaction id, or ErrNotFound.
func (s *Store) GetInteraction(ctx context.Context, id core.InteractionID) (events.Interaction, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+interactionCols+` FROM interactions WHERE id = ?`, string(id))
	if err != nil {
		return events.Interaction{}, fmt.Errorf("store: get interaction %s: %w", id, err)
	}
	its, err := scanInteractions(rows)
	if err != nil {
		return events.Interaction{}, fmt.Errorf("store: get interaction %s: %w", id, err)
	}
	if len(its) == 0 {
		return events.Interaction{}, fmt.Errorf("store: get interaction %s: %w", id, ErrNotFound)
	}
	return its[0], nil
}

// InteractionByKey returns the interaction created with idempotency key, or ErrNotFound.
func (s *Store) InteractionByKey(ctx context.Context, key string) (events.Interaction, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+interactionCols+` FROM interactions WHERE idempotency_key = ?`, key)
	if err != nil {
		return events.Interaction{}, fmt.Errorf("store: interaction by key: %w", err)
	}
	its, err := scanInteractions(rows)
	if err != nil {
		return events.Interaction{}, fmt.Errorf("store: interaction by key: %w", err)
	}
	if len(its) == 0 {
		return events.Interaction{}, fmt.Errorf("store: interaction by key: %w", ErrNotFound)
	}
	return its[0], nil
}

// OpenLease is a lease whose last recorded outcome left it open.
type OpenLease struct {
	Agent       core.AgentID
	Interaction core.InteractionID
	Lease       core.LeaseID
	Epoch       uint64
	Channel     core.Channel
	Outcome     string
}

// OpenLeases returns the leases that never ended, whatever their epoch: at
// start-up they are the leases that died with an earlier run (leases live in
// the process that granted them).
func (s *Store) OpenLeases(ctx context.Context) ([]OpenLease, error) {
	rows, err := s.r.QueryContext(ctx, `
SELECT agent, COALESCE(interaction, ''), lease, epoch, COALESCE(channel, ''), outcome FROM open_leases
ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("store: open leases: %w", err)
	}
	defer rows.Close()
	var out []OpenLease
	for rows.Next() {
		var l OpenLease
		var lease, epoch int64
		if err := rows.Scan(&l.Agent, &l.Interaction, &lease, &epoch, &l.Channel, &l.Outcome); err != nil {
			return nil, fmt.Errorf("store: open leases: %w", err)
		}
		l.Lease, l.Epoch = core.LeaseID(lease), uint64(epoch)
		out = append(out, l)
	}
	return out, rows.Err()
}

// LoggedInAgents returns the agents whose last recorded state is not logged_out.
func (s *Store) LoggedInAgents(ctx context.Context) ([]core.AgentID, error) {
	rows, err := s.r.QueryContext(ctx, `
SELECT agent FROM agent_last_state WHERE state <> 'logged_out' ORDER BY agent`)
	if err != nil {
		return nil, fmt.Errorf("store: logged-in agents: %w", err)
	}
	defer rows.Close()
	var out []core.AgentID
	for rows.Next() {
		var a core.AgentID
		if err := rows.Scan(&a); err != nil {
			return nil, fmt.Errorf("store: logged-in agents: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// ListInteractions returns the interactions matching f, newest (by created_at) first.
func (s *Store) ListInteractions(ctx context.Context, f InteractionFilter) ([]events.Interaction, error) {
	var where []string
	var args []any
	add := func(cond string, a ...any) {
		where = append(where, cond)
		args = append(args, a...)
	}
	if f.State != "" {
		add("state = ?", f.State)
	}
	if f.Queue != "" {
		add("queue = ?", string(f.Queue))
	}
	if f.Channel != "" {
		add("channel = ?", string(f.Channel))
	}
	if f.Agent != "" {
		add("agent = ?", string(f.Agent))
	}
	if !f.Since.IsZero() {
		add("created_at >= ?", fmtTime(f.Since))
	}
	if !f.Until.IsZero() {
		add("created_at < ?", fmtTime(f.Until))
	}
	if !f.BeforeCreated.IsZero() {
		if f.BeforeID != "" {
			add("(created_at, id) < (?, ?)", fmtTime(f.BeforeCreated), string(f.BeforeID))
		} else {
			add("created_at < ?", fmtTime(f.BeforeCreated))
		}
	}
	q := `SELECT ` + interactionCols + ` FROM interactions`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	q += ` ORDER BY created_at DESC, id DESC LIMIT ?`
	args = append(args, clampLimit(f.Limit, DefaultLimit, MaxLimit))
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("store: list interactions: %w", err)
	}
	its, err := scanInteractions(rows)
	if err != nil {
		return nil, fmt.Errorf("store: list interactions: %w", err)
	}
	return its, nil
}

// OpenInteractions returns every interaction not in a final state (ended,
// abandoned, failed, timed_out, handed_over), oldest first: what a restarted node must recover.
func (s *Store) OpenInteractions(ctx context.Context) ([]events.Interaction, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+interactionCols+` FROM interactions
WHERE state NOT IN ('ended', 'abandoned', 'failed', 'timed_out', 'handed_over') ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("store: open interactions: %w", err)
	}
	its, err := scanInteractions(rows)
	if err != nil {
		return nil, fmt.Errorf("store: open interactions: %w", err)
	}
	return its, nil
}

func scanInteractions(rows *sql.Rows) ([]events.Interaction, error) {
	defer rows.Close()
	var out []events.Interaction
	for rows.Next() {
		var (
			it                                    events.Interaction
			queue, previous, agent, reason, attrs sql.NullString
			created, enq, ans, ended, key         sql.NullString
		)
		if err := rows.Scan(&it.ID, &it.Channel, &queue, &it.Priority, &it.State, &previous, &agent, &reason,
			&created, &enq, &ans, &ended, &attrs, &key); err != nil {
			return nil, err
		}
		it.IdempotencyKey = key.String
		it.Queue, it.Previous, it.Agent, it.Reason = core.QueueID(queue.String), previous.String,
			core.AgentID(agent.String), reason.String
		var err error
		for _, p := range []struct {
			dst *time.Time
			src sql.NullString
		}{{&it.CreatedAt, created}, {&it.EnqueuedAt, enq}, {&it.AnsweredAt, ans}, {&it.EndedAt, ended}} {
			if *p.dst, err = parseTime(p.src); err != nil {
				return nil, fmt.Errorf("interaction %s: %w", it.ID, err)
			}
		}
		if attrs.Valid && attrs.String != "" {
			if err := json.Unmarshal([]byte(attrs.String), &it.Attributes); err != nil {
				return nil, fmt.Errorf("interaction %s: attributes: %w", it.ID, err)
			}
		}
		out = append(out, it)
	}
	return out, rows.Err()
}

const eventCols = `seq, time, type, agent, interaction, queue, data`

// InteractionEvents returns every event of interaction id in seq order, with Data
// as json.RawMessage. An unknown id gives an empty slice.
func (s *Store) InteractionEvents(ctx context.Context, id core.InteractionID) ([]events.Event, error) {
	evs, err := s.queryEvents(ctx, rawData, `SELECT `+eventCols+` FROM events WHERE interaction = ? ORDER BY seq`, string(id))
	if err != nil {
		return nil, fmt.Errorf("store: interaction events %s: %w", id, err)
	}
	return evs, nil
}

// Events returns up to limit events with seq > after, in seq order, with Data as
// json.RawMessage: the on-disk continuation of an event stream whose position has
// left the in-memory log. limit defaults to DefaultLimit and is capped at MaxEventsLimit.
func (s *Store) Events(ctx context.Context, after uint64, limit int) ([]events.Event, error) {
	evs, err := s.queryEvents(ctx, rawData, `SELECT `+eventCols+` FROM events WHERE seq > ? ORDER BY seq LIMIT ?`,
		int64(after), clampLimit(limit, DefaultLimit, MaxEventsLimit))
	if err != nil {
		return nil, fmt.Errorf("store: events after %d: %w", after, err)
	}
	return evs, nil
}

// sqlAgentHistory reads an agent's states and leases through the partial
// index events_agent: its type condition is written as the index's, in
// literals (SQLite uses a partial index only for a query that repeats it).
const sqlAgentHistory = `SELECT ` + eventCols + ` FROM events
WHERE agent = ? AND type IN ('` + string(events.TypeAgentState) + `', '` + string(events.TypeLease) + `') ORDER BY seq DESC LIMIT ?`

// AgentHistory returns up to limit state and lease events of agent, newest first,
// with Data as json.RawMessage. limit defaults to DefaultLimit and is capped at MaxLimit.
func (s *Store) AgentHistory(ctx context.Context, agent core.AgentID, limit int) ([]events.Event, error) {
	evs, err := s.queryEvents(ctx, rawData, sqlAgentHistory, string(agent), clampLimit(limit, DefaultLimit, MaxLimit))
	if err != nil {
		return nil, fmt.Errorf("store: agent history %s: %w", agent, err)
	}
	return evs, nil
}

// Decisions returns the routing decisions about interaction id in seq order, with
// Data as events.Decision.
func (s *Store) Decisions(ctx context.Context, id core.InteractionID) ([]events.Event, error) {
	evs, err := s.queryEvents(ctx, decisionData, `SELECT `+eventCols+` FROM events
WHERE interaction = ? AND type = ? ORDER BY seq`, string(id), string(events.TypeDecision))
	if err != nil {
		return nil, fmt.Errorf("store: decisions %s: %w", id, err)
	}
	return evs, nil
}

// decoder turns a stored data column into an Event's Data.
type decoder func([]byte) (any, error)

func rawData(b []byte) (any, error) { return json.RawMessage(b), nil }

func decisionData(b []byte) (any, error) {
	var d events.Decision
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	return d, nil
}

func (s *Store) queryEvents(ctx context.Context, dec decoder, q string, args ...any) ([]events.Event, error) {
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []events.Event{}
	for rows.Next() {
		var (
			e                         events.Event
			seq                       int64
			tm                        sql.NullString
			agent, interaction, queue sql.NullString
			data                      []byte
		)
		if err := rows.Scan(&seq, &tm, &e.Type, &agent, &interaction, &queue, &data); err != nil {
			return nil, err
		}
		e.Seq = uint64(seq)
		if e.Time, err = parseTime(tm); err != nil {
			return nil, fmt.Errorf("event %d: %w", e.Seq, err)
		}
		e.Agent, e.Interaction, e.Queue = core.AgentID(agent.String), core.InteractionID(interaction.String),
			core.QueueID(queue.String)
		// Scan into *[]byte copies, so data is ours to keep.
		if e.Data, err = dec(data); err != nil {
			return nil, fmt.Errorf("event %d: decode data: %w", e.Seq, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
