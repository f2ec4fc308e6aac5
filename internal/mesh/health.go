package mesh

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// Peer health (issue 5, seed 000): every member publishes a heartbeat on
// hb.<node> every HeartbeatInterval and watches everyone else's. A peer silent
// for two intervals is suspect. PeerTimeout bounds detection: a peer that
// stops is down within it — its last heartbeat may be up to an interval older
// than its end, and checks run every tenth of an interval, so it is down once
// silent for PeerTimeout less an interval and a check period (725 ms with the
// defaults: three heartbeats missed). NATS route
// pings alone take tens of seconds to notice a silent partition; heartbeats
// measure the path end to end. While a peer is down this node refrains: no
// request is sent to it (they fail at once), requests in flight to it end, its
// agents leave the routing view and its fairness heads are ignored. When its
// heartbeats resume it is up again: its agents' states are fetched afresh and
// the leases held across the link are reconciled (heal).

// PeerState is a peer's health as this node sees it.
type PeerState string

// Peer states.
const (
	PeerUp      PeerState = "up"
	PeerSuspect PeerState = "suspect"
	PeerDown    PeerState = "down"
)

// heartbeat is the message on hb.<node>.
type heartbeat struct {
	From core.NodeID `json:"from"`
	Boot uint64      `json:"boot"`
	Seq  uint64      `json:"seq"`
}

// peer is one other member's health. Its fields are guarded by health.mu but
// the counters, which are atomic.
type peer struct {
	state PeerState
	last  time.Time // last heartbeat; zero: never heard
	since time.Time // in this state since
	// ctx ends when the peer goes down: requests in flight to it end with it.
	ctx    context.Context
	cancel context.CancelFunc
	downs  uint64
	// maxGap is the longest silence between two heartbeats while up: the
	// margin left before a false detection.
	maxGap time.Duration
	// sent counts requests sent to the peer; refrained those not sent
	// because it was down.
	sent, refrained atomic.Uint64
}

type health struct {
	interval time.Duration
	// every is how often silences are checked; downAfter the silence that
	// makes a peer down.
	every, downAfter time.Duration
	mu               sync.Mutex
	peers            map[core.NodeID]*peer
}

func newHealth(members []core.NodeID, self core.NodeID, interval, timeout time.Duration) *health {
	every := max(interval/10, time.Millisecond)
	h := &health{interval: interval, every: every, downAfter: max(timeout-interval-every, 2*interval+every), peers: map[core.NodeID]*peer{}}
	now := time.Now()
	for _, n := range members {
		if n == self {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // down until heard from
		h.peers[n] = &peer{state: PeerDown, since: now, ctx: ctx, cancel: cancel}
	}
	return h
}

// peerContext returns a peer's state and the context its requests run under
// (nil for a node that is not a peer).
func (h *health) peerContext(n core.NodeID) (PeerState, context.Context, *peer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, ok := h.peers[n]
	if !ok {
		return "", nil, nil
	}
	return p.state, p.ctx, p
}

// state returns a peer's state ("" for a node that is not a peer).
func (h *health) state(n core.NodeID) PeerState {
	s, _, _ := h.peerContext(n)
	return s
}

// transition is a peer's change of state.
type transition struct {
	peer     core.NodeID
	from, to PeerState
	silent   time.Duration
}

// heard records a heartbeat; a peer that was not up is up again.
func (h *health) heard(n core.NodeID, now time.Time) (transition, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, ok := h.peers[n]
	if !ok {
		return transition{}, false
	}
	silent := now.Sub(p.last)
	p.last = now
	if p.state == PeerUp {
		p.maxGap = max(p.maxGap, silent)
		return transition{}, false
	}
	t := transition{peer: n, from: p.state, to: PeerUp, silent: silent}
	if p.state == PeerDown {
		p.ctx, p.cancel = context.WithCancel(context.Background())
	}
	p.state, p.since = PeerUp, now
	return t, true
}

// check moves silent peers to suspect or down.
func (h *health) check(now time.Time) []transition {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []transition
	for n, p := range h.peers {
		silent := now.Sub(p.last)
		to := p.state
		switch {
		case p.state != PeerDown && silent > h.downAfter:
			to = PeerDown
		case p.state == PeerUp && silent > 2*h.interval:
			to = PeerSuspect
		}
		if to == p.state {
			continue
		}
		out = append(out, transition{peer: n, from: p.state, to: to, silent: silent})
		p.state, p.since = to, now
		if to == PeerDown {
			p.downs++
			p.cancel() // requests in flight to it end now
		}
	}
	return out
}

// runHealth publishes this node's heartbeats and watches its peers' until ctx ends.
func (m *Mesh) runHealth(ctx context.Context) {
	beat := time.NewTicker(m.health.interval)
	defer beat.Stop()
	watch := time.NewTicker(m.health.every)
	defer watch.Stop()
	var seq uint64
	m.sendHeartbeat(&seq)
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			m.sendHeartbeat(&seq)
		case now := <-watch.C:
			for _, t := range m.health.check(now) {
				m.peerChanged(t)
			}
		}
	}
}

func (m *Mesh) sendHeartbeat(seq *uint64) {
	*seq++
	data, err := json.Marshal(heartbeat{From: m.p.Node, Boot: m.boot, Seq: *seq})
	if err == nil {
		err = m.nc.Publish(m.subject("hb", m.p.Node), data)
	}
	if err != nil && !m.nc.IsClosed() {
		m.logger.Warn("mesh: heartbeat", "err", err)
	}
}

// onHeartbeat records a peer's heartbeat.
func (m *Mesh) onHeartbeat(msg *nats.Msg) {
	var hb heartbeat
	if err := json.Unmarshal(msg.Data, &hb); err != nil {
		m.logger.Warn("mesh: bad heartbeat", "subject", msg.Subject, "err", err)
		return
	}
	if hb.From == m.p.Node {
		return
	}
	m.noteBoot(hb.From, hb.Boot)
	if t, changed := m.health.heard(hb.From, time.Now()); changed {
		m.peerChanged(t)
	}
}

// peerChanged acts on a peer's change of state: an event, a log line, and the
// refrain (down) or heal (up after down).
func (m *Mesh) peerChanged(t transition) {
	silent := t.silent
	if silent > time.Hour { // never heard before
		silent = 0
	}
	_, _ = m.p.Log.Append(events.Event{Time: time.Now().UTC(), Type: events.TypePeer,
		Data: events.Peer{Peer: t.peer, State: string(t.to), Previous: string(t.from), SilentMillis: silent.Milliseconds()}})
	switch {
	case t.to == PeerDown:
		m.logger.Warn("mesh: peer down; refraining from it", "peer", t.peer, "silent", silent.Round(time.Millisecond).String())
		if m.view != nil {
			m.view.SetUnreachable(m.ownedBy(t.peer), true)
		}
	case t.to == PeerSuspect:
		m.logger.Info("mesh: peer suspect", "peer", t.peer, "silent", silent.Round(time.Millisecond).String())
	case t.from == PeerDown:
		m.logger.Info("mesh: peer up", "peer", t.peer)
		go m.heal(t.peer)
	}
}

// ownedBy lists the agents a node owns.
func (m *Mesh) ownedBy(n core.NodeID) []core.AgentID {
	var out []core.AgentID
	for id, o := range *m.dir.owners.Load() {
		if o.Node == n {
			out = append(out, id)
		}
	}
	return out
}

// heal brings a peer back after it was down: its agents' states are fetched
// afresh before they return to the routing view, and the leases held across
// the link are reconciled both ways.
func (m *Mesh) heal(n core.NodeID) {
	m.resync(n)
	if m.view != nil && m.health.state(n) == PeerUp {
		m.view.SetUnreachable(m.ownedBy(n), false)
	}
	m.reconcileLeases(n)
}
