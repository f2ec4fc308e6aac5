package agent

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
)

// Ownership and configuration changes at run time: an agent moving to or from
// this owner (Adopt, Detach) and a new cluster configuration (Reconfigure).

// Cause values of the state events emitted by Adopt, Reconfigure and Detach.
const (
	CauseAdopted      = "adopted"
	CauseReconfigured = "reconfigured"
	CauseRemoved      = "removed"
	CauseDetached     = "detached"
)

// Adopt makes this Manager the owner of agent a under the directory revision
// fence. A new agent starts logged out. An agent already owned here under a
// lower fence takes the new fence and configuration and keeps her presence and
// leases; under the same or a higher fence nothing changes (a repeated Adopt is
// a no-op). When something changed, one state event with cause "adopted" tells
// every view the new fence. The error is the event log's.
func (m *Manager) Adopt(a config.Agent, fence uint64) error {
	if a.ID == "" {
		return errors.New("agent: adopt: empty agent id")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st, ok := m.agents[a.ID]
	switch {
	case !ok:
		st = m.newAgentLocked(a, fence)
		m.agents[a.ID] = st
	case fence > st.fence:
		st.fence = fence
		st.configure(a)
	default:
		return nil
	}
	if err := m.emitStateLocked(st, CauseAdopted); err != nil {
		return fmt.Errorf("agent: adopt %s (fence %d): %w", a.ID, fence, err)
	}
	m.logger.Info("agent adopted", "agent", a.ID, "fence", fence)
	return nil
}

// Detach stops owning an agent (she moved to another owner). While she holds
// any lease — offered, busy or wrap-up, on any channel — it refuses with
// ErrAgentBusy and changes nothing. Otherwise it emits her final state
// (logged_out, with cause, "detached" when empty, under her current fence) and
// forgets her: later calls for her fail with ErrUnknownAgent, and her lease and
// wrap-up timers, if any still fire, find nothing to do. Reservation answers
// remembered for idempotency are kept: a repeated request gets its first answer.
func (m *Manager) Detach(id core.AgentID, cause string) error {
	if cause == "" {
		cause = CauseDetached
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.agents[id]
	if !ok {
		return fmt.Errorf("agent: detach %s: %w", id, ErrUnknownAgent)
	}
	if n := len(a.leases); n > 0 {
		return fmt.Errorf("agent: detach %s (%d open): %w", id, n, ErrAgentBusy)
	}
	a.presence, a.reason = presLoggedOut, ""
	err := m.emitStateLocked(a, cause)
	m.forgetLocked(a)
	if err != nil {
		return fmt.Errorf("agent: detach %s: %w", id, err)
	}
	m.logger.Info("agent detached", "agent", id, "cause", cause, "fence", a.fence)
	return nil
}

// Reconfigure applies a new configuration: agents are every agent this Manager
// owns under it (the caller includes the agents it adopted). New agents are
// added logged out, under fence 0. Agents already owned keep their state, leases
// and fence and take the new configuration (password, DN, skills, capacity); a
// changed capacity bounds new reservations only — open leases are kept even
// above it — and is announced by a state event with cause "reconfigured". Agents
// not listed are removed: a logged-in one is first logged out by force (her
// leases revoked and reported to the Observer) with cause "removed". It returns
// the removed ids, sorted. Event log failures are logged, not returned: the new
// configuration is applied regardless.
func (m *Manager) Reconfigure(agents []config.Agent) (removed []core.AgentID) {
	want := make(map[core.AgentID]config.Agent, len(agents))
	for _, a := range agents {
		want[a.ID] = a
	}
	m.mu.Lock()
	var ends []LeaseEnd
	for id, a := range m.agents {
		if _, ok := want[id]; ok {
			continue
		}
		removed = append(removed, id)
		if a.presence != presLoggedOut || len(a.leases) > 0 {
			e, err := m.revokeAllLocked(a)
			ends = append(ends, e...)
			if err != nil {
				m.logger.Error("reconfigure: revoke the leases of a removed agent", "agent", id, "err", err)
			}
			a.presence, a.reason = presLoggedOut, ""
			if err := m.emitStateLocked(a, CauseRemoved); err != nil {
				m.logger.Error("reconfigure: log out a removed agent", "agent", id, "err", err)
			}
		}
		m.forgetLocked(a)
	}
	added := 0
	for id, c := range want {
		a, ok := m.agents[id]
		if !ok {
			m.agents[id] = m.newAgentLocked(c, 0)
			added++
			continue
		}
		if a.configure(c) {
			if err := m.emitStateLocked(a, CauseReconfigured); err != nil {
				m.logger.Error("reconfigure: announce a new capacity", "agent", id, "err", err)
			}
		}
	}
	obs := m.observer
	m.mu.Unlock()
	m.notify(obs, ends)
	sort.Slice(removed, func(i, j int) bool { return removed[i] < removed[j] })
	if added > 0 || len(removed) > 0 {
		m.logger.Info("agents reconfigured", "added", added, "removed", len(removed), "revoked", len(ends))
	}
	return removed
}

// forgetLocked removes a from the owned agents. Her version is remembered as
// a floor for the versions of agents owned later (see retiredVersion).
func (m *Manager) forgetLocked(a *agentState) {
	for _, l := range a.leases {
		stopTimer(l)
	}
	m.retiredVersion = max(m.retiredVersion, a.version)
	delete(m.agents, a.cfg.ID)
}

// ReconcileHolder settles the leases node holds here after a link to it was
// down (heal): those it still holds (keep) are kept and returned; the others,
// whose interactions ended at node while the link was down, are revoked — the
// agent is not left reserved or busy by a lease that died with the link —
// unless granted at or after grantedBefore (node's list is a snapshot that may
// miss a lease granted just before it; those are kept and returned).
// Nothing is reported to the observer: node no longer holds them.
func (m *Manager) ReconcileHolder(node core.NodeID, keep map[Token]bool, grantedBefore time.Time) (live []Token, revoked int) {
	if node == "" {
		return nil, 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, a := range m.agents {
		ended := false
		for _, l := range a.leases {
			if l.holder != node {
				continue
			}
			if tok := m.token(a, l); keep[tok] || !l.granted.Before(grantedBefore) {
				live = append(live, tok)
				continue
			}
			if err := m.endLeaseLocked(a, l, string(OutcomeRevoked)); err != nil {
				m.logger.Error("reconcile a holder's leases", "agent", a.cfg.ID, "err", err)
				continue
			}
			ended = true
			revoked++
		}
		if ended {
			if err := m.emitStateLocked(a, "holder_reconciled"); err != nil {
				m.logger.Error("reconcile a holder's leases", "agent", a.cfg.ID, "err", err)
			}
		}
	}
	return live, revoked
}
