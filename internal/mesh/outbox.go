package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ccmesh/ccmesh/internal/atomicfile"
	"github.com/ccmesh/ccmesh/internal/core"
)

// The outbox (issue 5, ADR 0009) keeps the writes to replicated state that a
// node cut off from the quorum cannot make — an agent logging in here while
// her owner is down, a configuration push — and makes them once the quorum
// is back. Each is kept once (a move per agent, the last push), durably
// (data_dir/outbox.json), and written with compare-and-swap against the
// revision it was based on, so it is written at most once and never over a
// change the majority made meanwhile: such a change wins, and the kept write
// is dropped and reported.

// ErrConfigPending is a configuration push kept in the outbox: the quorum is
// out of reach; it is written when it is back (unless the configuration
// changed meanwhile).
var ErrConfigPending = errors.New("configuration kept until the cluster is reachable")

// outboxFile is the name of the outbox in the data directory.
const outboxFile = "outbox.json"

// outboxInterval is how often kept writes are tried.
const outboxInterval = time.Second

// pendingMove is an agent who logged in here while her owner was down and
// the directory could not be written: she is this node's meanwhile.
type pendingMove struct {
	// From and Fence are the ownership she had when she logged in here.
	From  core.NodeID `json:"from"`
	Fence uint64      `json:"fence"`
	At    time.Time   `json:"at"`
}

// pendingConfig is a configuration push kept for the quorum.
type pendingConfig struct {
	Data []byte `json:"data"`
	// Base is the revision it replaces (0: none written yet).
	Base uint64    `json:"base"`
	At   time.Time `json:"at"`
}

// outboxState is the outbox as saved; guarded by directory.mu.
type outboxState struct {
	Moves  map[core.AgentID]pendingMove `json:"moves"`
	Config *pendingConfig               `json:"config,omitempty"`
}

// OutboxState is the outbox as GET /api/v1/cluster shows it.
type OutboxState struct {
	Moves  []PendingMove `json:"moves"`
	Config *PendingPush  `json:"config,omitempty"`
}

// PendingMove is one kept move.
type PendingMove struct {
	Agent core.AgentID `json:"agent"`
	From  core.NodeID  `json:"from"`
	Since time.Time    `json:"since"`
}

// PendingPush is the kept configuration push.
type PendingPush struct {
	BasedOn uint64    `json:"based_on"`
	Since   time.Time `json:"since"`
}

func (d *directory) outboxPath() string {
	if d.path == "" {
		return ""
	}
	return filepath.Join(filepath.Dir(d.path), outboxFile)
}

// loadOutbox reads the outbox a previous run kept (absent: empty).
func (d *directory) loadOutbox() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.outbox = outboxState{Moves: map[core.AgentID]pendingMove{}}
	p := d.outboxPath()
	if p == "" {
		return nil
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = json.Unmarshal(data, &d.outbox)
	}
	if err != nil {
		return fmt.Errorf("mesh: %s is unreadable (its kept writes are lost if you remove it): %w", p, err)
	}
	if d.outbox.Moves == nil {
		d.outbox.Moves = map[core.AgentID]pendingMove{}
	}
	d.rebuildLocked()
	return nil
}

// saveOutboxLocked writes the outbox atomically (d.mu held).
func (d *directory) saveOutboxLocked() error {
	p := d.outboxPath()
	if p == "" {
		return nil
	}
	data, err := json.Marshal(d.outbox)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(p, data, 0o600); err != nil {
		return fmt.Errorf("mesh: save the outbox: %w", err)
	}
	return nil
}

// Outbox returns the writes kept for the quorum.
func (m *Mesh) Outbox() OutboxState {
	m.dir.mu.Lock()
	defer m.dir.mu.Unlock()
	st := OutboxState{Moves: []PendingMove{}}
	for id, p := range m.dir.outbox.Moves {
		st.Moves = append(st.Moves, PendingMove{Agent: id, From: p.From, Since: p.At})
	}
	if c := m.dir.outbox.Config; c != nil {
		st.Config = &PendingPush{BasedOn: c.Base, Since: c.At}
	}
	return st
}

// keepMove makes agent id this node's while her owner is down and the
// directory cannot be written (Claim failed with ErrDirectoryUnavailable):
// the move is kept in the outbox and written after the heal. It reports
// false when that does not apply (her owner is reachable: retry, or log in
// there).
func (m *Mesh) keepMove(id core.AgentID) bool {
	m.dir.moveMu.Lock()
	cur := m.dir.get(id)
	if cur.Node == m.p.Node {
		m.dir.moveMu.Unlock()
		return true
	}
	if cur.Node == "" || m.health.state(cur.Node) != PeerDown {
		m.dir.moveMu.Unlock()
		return false
	}
	changed, err := m.keepLocked(id, pendingMove{From: cur.Node, Fence: cur.Fence, At: time.Now().UTC()})
	m.dir.moveMu.Unlock()
	m.refreshReach(changed)
	if err != nil {
		m.logger.Error("mesh: move not kept", "agent", id, "err", err)
		return false
	}
	m.logger.Warn("mesh: agent logged in here while her owner is down and the directory out of reach; move kept for the heal",
		"agent", id, "owner", cur.Node)
	return true
}

// keepLocked puts move p of agent id in the outbox and adopts her (moveMu
// held); it returns the agents for refreshReach once moveMu is released.
func (m *Mesh) keepLocked(id core.AgentID, p pendingMove) ([]core.AgentID, error) {
	m.dir.mu.Lock()
	m.dir.outbox.Moves[id] = p
	if err := m.dir.saveOutboxLocked(); err != nil {
		delete(m.dir.outbox.Moves, id) // not kept: not hers here either
		m.dir.mu.Unlock()
		return nil, err
	}
	old, now := m.dir.rebuildLocked()
	m.dir.mu.Unlock()
	return m.reconcile(old, now), nil
}

// runOutbox writes the kept writes whenever the quorum is reachable, until
// ctx ends.
func (m *Mesh) runOutbox(ctx context.Context) {
	t := time.NewTicker(outboxInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.flushMoves(ctx)
		m.flushConfig(ctx)
	}
}

// flushMoves writes each kept move: at the fence it was based on, it is
// claimed like any login (the owner hands her over, compare-and-swap); if
// the directory moved her meanwhile, that move wins (rebuildLocked drops the
// kept one and she is let go here).
func (m *Mesh) flushMoves(ctx context.Context) {
	h := m.dir.kv.Load()
	if h == nil {
		return
	}
	m.dir.mu.Lock()
	kept := make(map[core.AgentID]pendingMove, len(m.dir.outbox.Moves))
	for id, p := range m.dir.outbox.Moves {
		kept[id] = p
	}
	m.dir.mu.Unlock()
	for id, p := range kept {
		if err := m.syncEntry(id); err != nil {
			return // still out of reach
		}
		if !m.stillKept(id, p) {
			continue // dropped by a newer move
		}
		err := m.claim(ctx, id, p.Fence) // never over a move made meanwhile
		switch {
		case errors.Is(err, ErrDirectoryUnavailable):
			return
		case err == nil:
			m.logger.Info("mesh: kept move written", "agent", id, "from", p.From, "fence", m.dir.get(id).Fence)
			m.dropKept(id, p, "")
		case errors.Is(err, ErrMoveConflict):
			// The next round reads the entry that won.
		default:
			m.dropKept(id, p, err.Error())
		}
	}
}

// stillKept reports whether the outbox still holds move p of agent id.
func (m *Mesh) stillKept(id core.AgentID, p pendingMove) bool {
	m.dir.mu.Lock()
	defer m.dir.mu.Unlock()
	q, ok := m.dir.outbox.Moves[id]
	return ok && q == p
}

// dropKept removes a kept move (refused: why is set) and lets the directory
// decide her owner again.
func (m *Mesh) dropKept(id core.AgentID, p pendingMove, why string) {
	m.dir.moveMu.Lock()
	m.dir.mu.Lock()
	if q, ok := m.dir.outbox.Moves[id]; !ok || q != p {
		m.dir.mu.Unlock()
		m.dir.moveMu.Unlock()
		return
	}
	delete(m.dir.outbox.Moves, id)
	if err := m.dir.saveOutboxLocked(); err != nil {
		m.logger.Error("mesh: outbox not saved", "err", err)
	}
	old, now := m.dir.rebuildLocked()
	m.dir.mu.Unlock()
	changed := m.reconcile(old, now)
	m.dir.moveMu.Unlock()
	m.refreshReach(changed)
	if why != "" {
		m.logger.Warn("mesh: move kept while cut off refused after the heal; the directory's owner keeps her", "agent", id, "owner", now[id].Node, "why", why)
	}
}

// keepConfig keeps a configuration push for the quorum; base is the revision
// it replaces. A later push replaces an earlier one.
func (m *Mesh) keepConfig(data []byte, base uint64) error {
	m.dir.mu.Lock()
	defer m.dir.mu.Unlock()
	m.dir.outbox.Config = &pendingConfig{Data: data, Base: base, At: time.Now().UTC()}
	return m.dir.saveOutboxLocked()
}

// flushConfig writes the kept configuration push with compare-and-swap on
// its base revision: if the configuration changed meanwhile, the kept push
// is dropped (unless that change is this very document: written already).
func (m *Mesh) flushConfig(ctx context.Context) {
	h := m.shared.kv.Load()
	m.dir.mu.Lock()
	c := m.dir.outbox.Config
	m.dir.mu.Unlock()
	if h == nil || c == nil {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var rev uint64
	var err error
	if c.Base == 0 {
		rev, err = h.kv.Create(wctx, sharedKey, c.Data)
	} else {
		rev, err = h.kv.Update(wctx, sharedKey, c.Data, c.Base)
	}
	why := ""
	switch {
	case err == nil:
		m.logger.Info("mesh: kept configuration written", "revision", rev, "based_on", c.Base)
	case isCASConflict(err):
		e, gerr := h.kv.Get(wctx, sharedKey)
		if gerr != nil {
			return // try again
		}
		if bytes.Equal(e.Value(), c.Data) {
			break // written before (this node stopped before it forgot it)
		}
		why = fmt.Sprintf("the configuration changed meanwhile (revision %d, the push was based on %d): push it again", e.Revision(), c.Base)
	default:
		return // still out of reach
	}
	m.dir.mu.Lock()
	if m.dir.outbox.Config == c {
		m.dir.outbox.Config = nil
		if err := m.dir.saveOutboxLocked(); err != nil {
			m.logger.Error("mesh: outbox not saved", "err", err)
		}
	}
	m.dir.mu.Unlock()
	if why != "" {
		m.logger.Warn("mesh: configuration kept while cut off not written", "why", why)
	}
}
