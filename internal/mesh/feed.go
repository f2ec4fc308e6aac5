package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// feedMsg carries an owner's agent states. Seq numbers the owner's messages from
// 1; Gen changes when the owner restarts or lost track of its own log, so a
// follower resyncs from a snapshot whenever Gen changes or a Seq is skipped.
type feedMsg struct {
	From   core.NodeID  `json:"from"`
	Gen    uint64       `json:"gen"`
	Seq    uint64       `json:"seq"`
	States []agentState `json:"states"`
	// Boot identifies the sender's run (see noteBoot).
	Boot uint64 `json:"boot"`
}

// publishFeed follows this node's log and publishes its agents' states, one
// message per read, until ctx ends.
func (m *Mesh) publishFeed(ctx context.Context, after uint64) error {
	gen := uint64(time.Now().UnixNano())
	var seq uint64
	m.pubGen.Store(gen)
	buf := make([]events.Event, 0, 256)
	for {
		evs, more, err := m.p.Log.Read(after, 256, buf)
		if errors.Is(err, events.ErrClosed) {
			return nil
		}
		if err != nil {
			// Fell out of the log's window: followers must resync from a snapshot.
			m.logger.Warn("mesh: feed gap; followers will resync", "after", after, "err", err)
			after, gen, seq = m.p.Log.LastSeq(), gen+1, 0
			m.pubGen.Store(gen)
			m.pubSeq.Store(0)
			continue
		}
		if len(evs) == 0 {
			select {
			case <-more:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		msg := feedMsg{From: m.p.Node, Gen: gen, Boot: m.boot}
		for _, ev := range evs {
			if ev.Type != events.TypeAgentState {
				continue
			}
			// Every agent state in this log is this node's word as an owner (also
			// the last one of an agent that moved away): followers weigh it by the
			// directory and the state's fence.
			if st, ok := ev.Data.(events.AgentState); ok {
				msg.States = append(msg.States, agentState{Agent: ev.Agent, State: st})
			}
		}
		after = evs[len(evs)-1].Seq
		if len(msg.States) == 0 {
			continue
		}
		seq++
		msg.Seq = seq
		m.pubSeq.Store(seq)
		data, err := json.Marshal(msg)
		if err == nil {
			err = m.nc.Publish(m.subject("feed", m.p.Node), data)
		}
		if err != nil {
			// Followers see the skipped number and resync.
			m.logger.Warn("mesh: publish feed", "err", err)
		}
	}
}

// onFeed applies another owner's agent states to the routing view.
func (m *Mesh) onFeed(msg *nats.Msg) {
	var f feedMsg
	if err := json.Unmarshal(msg.Data, &f); err != nil {
		m.logger.Warn("mesh: bad feed message", "subject", msg.Subject, "err", err)
		return
	}
	if f.From == m.p.Node {
		return
	}
	m.mu.Lock()
	// A new generation, or numbers skipped, mean lost states: resync. A number
	// at or below the position is already covered (by a snapshot): just apply.
	gap := m.feedGen[f.From] != f.Gen || f.Seq > m.feedSeq[f.From]+1
	if m.feedGen[f.From] != f.Gen || f.Seq > m.feedSeq[f.From] {
		m.feedGen[f.From], m.feedSeq[f.From] = f.Gen, f.Seq
	}
	m.mu.Unlock()
	m.noteBoot(f.From, f.Boot)
	m.apply(f.From, f.States)
	if gap {
		go m.resync(f.From)
	}
}

// apply records states of agents owned by node and hands them to the view.
// Only the owner speaks for an agent — or a node whose state carries a later
// directory fence than this node has seen (the agent moved there and this
// node's directory has not caught up yet). Older states (by fence, owner
// epoch, then version) are ignored.
func (m *Mesh) apply(node core.NodeID, states []agentState) {
	for _, s := range states {
		if o := m.dir.get(s.Agent); o.Node != node && s.State.Fence <= o.Fence {
			continue
		}
		m.mu.Lock()
		old, seen := m.remote[s.Agent]
		newer := !seen || laterState(s.State, old)
		if newer {
			m.remote[s.Agent] = s.State
		}
		m.mu.Unlock()
		if newer && m.view != nil {
			m.view.ApplyAgentState(s.Agent, s.State)
		}
	}
}

// laterState orders two states of an agent by (fence, owner epoch, version).
func laterState(a, b events.AgentState) bool {
	if a.Fence != b.Fence {
		return a.Fence > b.Fence
	}
	if a.Epoch != b.Epoch {
		return a.Epoch > b.Epoch
	}
	return a.Version > b.Version
}

// resync fetches a snapshot of node's agents (on join, after a gap, after the
// owner restarted). A node that does not answer is retried a few times; its next
// feed message triggers another resync anyway.
func (m *Mesh) resync(node core.NodeID) {
	m.mu.Lock()
	if m.resyncing[node] {
		m.mu.Unlock()
		return
	}
	m.resyncing[node] = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.resyncing, node)
		m.mu.Unlock()
	}()
	wait := 100 * time.Millisecond
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if m.fetchSnapshot(node) == nil || m.nc.IsClosed() {
			return
		}
		time.Sleep(wait)
		wait = min(2*wait, 2*time.Second)
	}
	m.logger.Info("mesh: no snapshot from a member yet", "node", node)
}

// fetchSnapshot asks node for its agents' states and applies them, with the
// feed position they were taken at.
func (m *Mesh) fetchSnapshot(node core.NodeID) error {
	r, err := m.call(node, request{Op: opSnapshot})
	if err != nil {
		return err
	}
	m.apply(node, r.Agents)
	m.mu.Lock()
	if m.feedGen[node] != r.FeedGen || r.FeedSeq > m.feedSeq[node] {
		m.feedGen[node], m.feedSeq[node] = r.FeedGen, r.FeedSeq
	}
	m.mu.Unlock()
	return nil
}

// noteBoot watches each member's run: when a member that held leases here
// comes back as a new run, its previous run's interactions are gone (they
// failed at its start), so the leases it held are revoked here — the agents
// are not left reserved or busy by a holder that no longer exists.
// It reports whether node came back as a new run.
func (m *Mesh) noteBoot(node core.NodeID, boot uint64) bool {
	if boot == 0 {
		return false
	}
	m.mu.Lock()
	prev := m.boots[node]
	m.boots[node] = boot
	m.mu.Unlock()
	if prev == 0 || prev == boot {
		return false
	}
	if n := m.p.Local.RevokeHolder(node); n > 0 {
		m.logger.Info("mesh: a member restarted; its leases here revoked", "node", node, "leases", n)
	}
	return true
}

// leaseMsg is a lease that ended at its owner, for the node holding it.
type leaseMsg struct {
	Token       string             `json:"token"`
	Interaction core.InteractionID `json:"interaction"`
	Outcome     agent.LeaseOutcome `json:"outcome"`
}

// LeaseEnded is the owner's notice that a lease ended on its own (expired,
// revoked, wrap-up over): it goes to the node that asked for the lease
// (agent.Observer).
func (m *Mesh) LeaseEnded(e agent.LeaseEnd) {
	requester := e.Holder
	if requester == "" || requester == m.p.Node {
		if m.leases != nil {
			m.leases.LeaseEnded(e)
		}
		return
	}
	data, err := json.Marshal(leaseMsg{Token: e.Token.String(), Interaction: e.Interaction, Outcome: e.Outcome})
	if err == nil {
		err = m.nc.Publish(m.subject("lease", requester), data)
	}
	if err != nil {
		m.logger.Warn("mesh: lease end notice", "token", e.Token.String(), "to", requester, "err", err)
	}
}

// onLeaseEnd delivers a remote owner's lease end to the local observer.
func (m *Mesh) onLeaseEnd(msg *nats.Msg) {
	var l leaseMsg
	if err := json.Unmarshal(msg.Data, &l); err != nil {
		m.logger.Warn("mesh: bad lease notice", "err", err)
		return
	}
	tok, err := agent.ParseToken(l.Token)
	if err != nil {
		m.logger.Warn("mesh: bad lease notice", "err", err)
		return
	}
	if m.leases != nil {
		m.leases.LeaseEnded(agent.LeaseEnd{Token: tok, Interaction: l.Interaction, Outcome: l.Outcome})
	}
}
