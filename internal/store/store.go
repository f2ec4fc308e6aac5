// Package store is the node's durable history: it persists the sequenced events of
// internal/events to an embedded SQLite database (modernc.org/sqlite, pure Go, WAL)
// together with query-friendly projections (interactions; each agent's last state
// and the open leases, for start-up recovery), and answers the history and
// recovery queries (routing decisions and agents' histories are read from the
// events themselves).
//
// One goroutine writes (RunWriter, through a single connection); any number may
// query concurrently through a separate read pool. A Store is safe for concurrent use.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// FileName is the name of the database file inside the store directory.
const FileName = "ccmesh.db"

// ErrNotFound is returned by queries for a single record that does not exist.
var ErrNotFound = errors.New("store: not found")

// ErrSchemaTooNew is returned by Open when the database was migrated by a newer
// ccmesh binary than this one.
var ErrSchemaTooNew = errors.New("store: database schema is newer than this binary supports")

// Store is the SQLite-backed event store. It is safe for concurrent use; WriteBatch
// calls are serialised on one writer connection.
type Store struct {
	log  *slog.Logger
	path string
	// w is the single writer connection (SetMaxOpenConns(1)); r is the read pool.
	w *sql.DB
	r *sql.DB
	// Statements prepared on the writer connection, used through tx.StmtContext.
	insEvent, upInteraction, upAgentLast, upOpenLease, delOpenLease *sql.Stmt
	// Counters of committed writes (WriterStats).
	commits, written, projected atomic.Uint64
	// committed, if set (tests), is called by RunWriter after each commit of
	// its loop (not those of the drain at shutdown) with when it began and
	// how many events it held.
	committed func(began time.Time, events int)
}

// WriterStats counts what the store committed since it was opened.
type WriterStats struct {
	// Commits is the number of transactions (batches) committed; Events the
	// events they stored; Projections the projection statements (upserts of
	// interactions and agents' last states, upserts and deletes of open
	// leases) they ran.
	Commits, Events, Projections uint64
}

// WriterStats returns the store's write counters.
func (s *Store) WriterStats() WriterStats {
	return WriterStats{Commits: s.commits.Load(), Events: s.written.Load(), Projections: s.projected.Load()}
}

// busyTimeoutMillis bounds how long a connection waits for a lock held by another.
const busyTimeoutMillis = 10000

// dsn builds the connection string; every pooled connection runs the pragmas.
func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMillis))
	q.Add("_pragma", "foreign_keys(1)")
	// FULL: each commit fsyncs the WAL, so an acknowledged event survives power loss.
	q.Add("_pragma", "synchronous(FULL)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		// The writer: 8 MiB of page cache (the default is 2 MiB; under load
		// it re-read hot index pages from the OS on every batch). Not more:
		// SQLite scans the cache's whole hash table at the end of many
		// commits (pcache1TruncateUnsafe), 12 % of the writer with 64 MiB and
		// small batches (BenchmarkWriteCalls, pprof). A checkpoint every
		// 10,000 WAL pages (40 MiB) instead of 1,000 copies each hot page to
		// the database once for many more commits.
		q.Add("_pragma", "cache_size(-8192)")
		q.Add("_pragma", "wal_autocheckpoint(10000)")
		// Take the write lock at BEGIN: no deadlock-prone lock upgrades.
		q.Set("_txlock", "immediate")
	}
	return "file:" + path + "?" + q.Encode()
}

// Open creates dir if needed, opens (or creates) dir/ccmesh.db, applies pending
// migrations and prepares the writer. It refuses, with ErrSchemaTooNew, a database
// migrated by a newer binary. The caller must Close the store.
func Open(ctx context.Context, dir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	path := filepath.Join(dir, FileName)
	s := &Store{log: log.With("component", "store"), path: path}

	w, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	s.w = w
	if err := s.checkWAL(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}

	r, err := sql.Open("sqlite", dsn(path, true))
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("store: open %s for reading: %w", path, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	s.r = r
	if err := r.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: open %s for reading: %w", path, err)
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, err
	}
	s.log.Info("store opened", "path", path, "schema_version", len(migrations))
	return s, nil
}

// checkWAL verifies that the writer connection runs in WAL mode.
func (s *Store) checkWAL(ctx context.Context) error {
	var mode string
	if err := s.w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("store: open %s: %w", s.path, err)
	}
	if mode != "wal" {
		return fmt.Errorf("store: open %s: journal mode is %q, want wal", s.path, mode)
	}
	return nil
}

func (s *Store) prepare(ctx context.Context) error {
	for _, p := range []struct {
		dst **sql.Stmt
		sql string
	}{
		{&s.insEvent, sqlInsertEvent},
		{&s.upInteraction, sqlUpsertInteraction},
		{&s.upAgentLast, sqlUpsertAgentLast},
		{&s.upOpenLease, sqlUpsertOpenLease},
		{&s.delOpenLease, sqlDeleteOpenLease},
	} {
		st, err := s.w.PrepareContext(ctx, p.sql)
		if err != nil {
			return fmt.Errorf("store: prepare: %w", err)
		}
		*p.dst = st
	}
	return nil
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Close closes the prepared statements and both connection pools. The writer must
// have returned first.
func (s *Store) Close() error {
	var errs []error
	for _, st := range []*sql.Stmt{s.insEvent, s.upInteraction, s.upAgentLast, s.upOpenLease, s.delOpenLease} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// SchemaVersion returns the highest migration version applied to the database.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	v, err := schemaVersion(ctx, s.r)
	if err != nil {
		return 0, fmt.Errorf("store: schema version: %w", err)
	}
	return v, nil
}

// timeLayout is RFC 3339 with a fixed nine-digit fraction, always UTC ("Z"), so
// that stored times sort correctly as text. time.RFC3339Nano parses it.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

func fmtTime(t time.Time) string { return t.UTC().Format(timeLayout) }

// nullTime stores the zero time as NULL.
func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return fmtTime(t)
}

func parseTime(s sql.NullString) (time.Time, error) {
	if !s.Valid || s.String == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s.String)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse time %q: %w", s.String, err)
	}
	return t, nil
}
