package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// migrations are applied in order; migrations[i] brings the schema to version i+1.
// Never edit a released migration: append a new one.
var migrations = []string{
	// 1: events and their projections.
	`
CREATE TABLE events (
	seq         INTEGER PRIMARY KEY,
	time        TEXT NOT NULL,
	type        TEXT NOT NULL,
	agent       TEXT,
	interaction TEXT,
	queue       TEXT,
	data        TEXT NOT NULL -- JSON
);
CREATE INDEX events_interaction ON events(interaction, seq) WHERE interaction IS NOT NULL;
CREATE INDEX events_agent ON events(agent, seq) WHERE agent IS NOT NULL;
CREATE INDEX events_type ON events(type, seq);

CREATE TABLE interactions (
	id          TEXT PRIMARY KEY,
	channel     TEXT NOT NULL,
	queue       TEXT,
	priority    INTEGER NOT NULL DEFAULT 0,
	state       TEXT NOT NULL,
	previous    TEXT,
	agent       TEXT,
	reason      TEXT,
	created_at  TEXT NOT NULL,
	enqueued_at TEXT,
	answered_at TEXT,
	ended_at    TEXT,
	attributes  TEXT, -- JSON object
	updated_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX interactions_created ON interactions(created_at, id);
CREATE INDEX interactions_state ON interactions(state, created_at);
CREATE INDEX interactions_queue ON interactions(queue, created_at);
CREATE INDEX interactions_channel ON interactions(channel, created_at);
CREATE INDEX interactions_agent ON interactions(agent, created_at) WHERE agent IS NOT NULL;
CREATE INDEX interactions_open ON interactions(created_at)
	WHERE state NOT IN ('ended', 'abandoned', 'failed', 'timed_out');

CREATE TABLE agent_state_history (
	seq     INTEGER PRIMARY KEY,
	agent   TEXT NOT NULL,
	time    TEXT NOT NULL,
	state   TEXT NOT NULL,
	reason  TEXT,
	cause   TEXT,
	version INTEGER,
	epoch   INTEGER,
	load    TEXT -- JSON array
);
CREATE INDEX agent_state_history_agent ON agent_state_history(agent, seq);

CREATE TABLE routing_decisions (
	seq         INTEGER PRIMARY KEY,
	interaction TEXT,
	queue       TEXT,
	time        TEXT NOT NULL,
	direction   TEXT,
	strategy    TEXT,
	step        INTEGER,
	chosen      TEXT,
	outcome     TEXT,
	candidates  TEXT, -- JSON array
	data        TEXT  -- JSON: the whole Decision
);
CREATE INDEX routing_decisions_interaction ON routing_decisions(interaction, seq);

CREATE TABLE leases (
	seq         INTEGER PRIMARY KEY,
	agent       TEXT NOT NULL,
	interaction TEXT,
	lease       INTEGER NOT NULL,
	epoch       INTEGER NOT NULL,
	channel     TEXT,
	outcome     TEXT NOT NULL,
	time        TEXT NOT NULL
);
CREATE INDEX leases_agent ON leases(agent, seq);
`,
	// 2: idempotency keys of interactions created through the API.
	`
ALTER TABLE interactions ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX interactions_idempotency_key ON interactions(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX leases_epoch ON leases(epoch, lease, seq);
`,
	// 3: handed_over (a peer's queue took the call) is a final state too.
	`
DROP INDEX interactions_open;
CREATE INDEX interactions_open ON interactions(created_at)
	WHERE state NOT IN ('ended', 'abandoned', 'failed', 'timed_out', 'handed_over');
`,
	// 4: less to write per event (issue 6): routing decisions are read from
	// events (by interaction); nothing reads events by type alone, nor leases
	// by agent (open leases are found by epoch); an agent's history is her
	// states and leases only, so only those are indexed by agent.
	`
DROP INDEX events_type;
DROP TABLE routing_decisions;
DROP INDEX leases_agent;
DROP INDEX events_agent;
CREATE INDEX events_agent ON events(agent, seq) WHERE type IN ('agent.state', 'agent.lease');
`,
	// 5: less to write per event (issue 6): an agent's states and leases are
	// read from events (events_agent); what start-up recovery needs is kept in
	// two small tables updated in place — each agent's last state, and the
	// leases still open — instead of two ever-growing ones.
	`
CREATE TABLE agent_last_state (
	agent TEXT PRIMARY KEY,
	seq   INTEGER NOT NULL,
	state TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO agent_last_state(agent, seq, state)
	SELECT agent, seq, state FROM agent_state_history
	WHERE seq IN (SELECT MAX(seq) FROM agent_state_history GROUP BY agent);
CREATE TABLE open_leases (
	epoch       INTEGER NOT NULL,
	lease       INTEGER NOT NULL,
	seq         INTEGER NOT NULL,
	agent       TEXT NOT NULL,
	interaction TEXT,
	channel     TEXT,
	outcome     TEXT NOT NULL,
	PRIMARY KEY (epoch, lease)
) WITHOUT ROWID;
INSERT INTO open_leases(epoch, lease, seq, agent, interaction, channel, outcome)
	SELECT epoch, lease, seq, agent, interaction, channel, outcome FROM leases
	WHERE seq IN (SELECT MAX(seq) FROM leases GROUP BY epoch, lease)
	  AND outcome IN ('granted', 'accepted', 'completed');
DROP TABLE agent_state_history;
DROP TABLE leases;
`,
}

const sqlMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER PRIMARY KEY,
	applied_at TEXT NOT NULL
)`

func schemaVersion(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (int, error) {
	var v int
	err := q.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// migrate applies every pending migration, each in its own transaction, and
// refuses a database whose version is newer than len(migrations).
func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.w.ExecContext(ctx, sqlMigrationsTable); err != nil {
		return fmt.Errorf("store: migrate %s: %w", s.path, err)
	}
	for {
		done, err := s.migrateOne(ctx)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// migrateOne applies the next migration, if any, reporting done when none is pending.
// Reading the version inside the (immediate) transaction makes concurrent opens safe.
func (s *Store) migrateOne(ctx context.Context) (done bool, err error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("store: migrate %s: begin: %w", s.path, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	v, err := schemaVersion(ctx, tx)
	if err != nil {
		return false, fmt.Errorf("store: migrate %s: read version: %w", s.path, err)
	}
	if v > len(migrations) {
		return false, fmt.Errorf("store: open %s: schema version %d, this binary knows up to %d (upgrade ccmesh or use another data dir): %w",
			s.path, v, len(migrations), ErrSchemaTooNew)
	}
	if v == len(migrations) {
		return true, tx.Rollback()
	}
	next := v + 1
	if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
		return false, fmt.Errorf("store: migrate %s to version %d: %w", s.path, next, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)`,
		next, fmtTime(time.Now())); err != nil {
		return false, fmt.Errorf("store: migrate %s to version %d: record: %w", s.path, next, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("store: migrate %s to version %d: commit: %w", s.path, next, err)
	}
	s.log.Info("store migrated", "path", s.path, "version", next)
	return false, nil
}
