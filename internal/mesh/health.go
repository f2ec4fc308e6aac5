package mesh

import (
	"context"
	"encoding/json"
	"sync"
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
	// Epoch is the sender's agent-owner epoch: its leases' tokens carry it.
	Epoch uint64 `json:"epoch"`
	// IntervalMillis is the sender's heartbeat interval: a peer beating less
	// often than this node is judged by its own interval.
	IntervalMillis int64 `json:"interval_ms"`
}

// peer is one other member's health, guarded by health.mu.
type peer struct {
	state PeerState
	last  time.Time // last heartbeat; zero: never heard
	since time.Time // in this state since
	// ctx ends when the peer goes down: requests in flight to it end with it.
	ctx    context.Context
	cancel context.CancelFunc
	// back is closed (and replaced) when the peer comes back from down:
	// what waits to tell it something goes at once.
	back chan struct{}
	// downs counts the times it went down (also the generation a heal checks).
	downs uint64
	// maxGap is the longest silence between two heartbeats while not down:
	// the margin left before a false detection.
	maxGap time.Duration
	// interval is the peer's own heartbeat interval (0: not heard yet).
	interval time.Duration
	// epoch is the peer's agent-owner epoch, from its heartbeats.
	epoch uint64
	// sent counts requests sent to the peer; refrained those not sent
	// because it was down or had just missed one.
	sent, refrained uint64
}

type health struct {
	interval time.Duration
	// every is how often silences are checked; downAfter the silence that
	// makes a peer down.
	every, downAfter time.Duration
	mu               sync.Mutex
	peers            map[core.NodeID]*peer
	lastCheck        time.Time
	skipped          bool // the last check was skipped after a stall
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
		h.peers[n] = &peer{state: PeerDown, since: now, ctx: ctx, cancel: cancel, back: make(chan struct{})}
	}
	return h
}

// admit decides whether a request may go to peer n and counts it: refused
// (refrained) while n is down or skip is set, else sent under the context
// that ends if n goes down. ok is false for a node that is not a peer.
func (h *health) admit(n core.NodeID, skip bool) (state PeerState, ctx context.Context, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, ok := h.peers[n]
	if !ok {
		return "", nil, false
	}
	if p.state == PeerDown || skip {
		p.refrained++
		return p.state, nil, true
	}
	p.sent++
	return p.state, p.ctx, true
}

// comeback returns a channel closed when peer n next comes back from down
// (nil for a node that is not a peer: never).
func (h *health) comeback(n core.NodeID) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p, ok := h.peers[n]; ok {
		return p.back
	}
	return nil
}

// state returns a peer's state ("" for a node that is not a peer).
func (h *health) state(n core.NodeID) PeerState {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p, ok := h.peers[n]; ok {
		return p.state
	}
	return ""
}

// generation returns a peer's state and how many times it went down.
func (h *health) generation(n core.NodeID) (PeerState, uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p, ok := h.peers[n]; ok {
		return p.state, p.downs
	}
	return "", 0
}

// epoch returns the peer's agent-owner epoch as its heartbeats tell (0: unknown).
func (h *health) epoch(n core.NodeID) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p, ok := h.peers[n]; ok {
		return p.epoch
	}
	return 0
}

// transition is a peer's change of state.
type transition struct {
	peer     core.NodeID
	from, to PeerState
	// silent is how long it had been silent; never is set when it had never
	// been heard.
	silent time.Duration
	never  bool
}

// heard records a heartbeat; a peer that was not up is up again.
func (h *health) heard(hb heartbeat, now time.Time) (transition, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, ok := h.peers[hb.From]
	if !ok {
		return transition{}, false
	}
	never, silent := p.last.IsZero(), now.Sub(p.last)
	p.last, p.epoch = now, hb.Epoch
	p.interval = time.Duration(hb.IntervalMillis) * time.Millisecond
	if p.state == PeerUp || p.state == PeerSuspect && !never {
		p.maxGap = max(p.maxGap, silent)
	}
	if p.state == PeerUp {
		return transition{}, false
	}
	t := transition{peer: hb.From, from: p.state, to: PeerUp, silent: silent, never: never}
	if p.state == PeerDown {
		p.ctx, p.cancel = context.WithCancel(context.Background())
		close(p.back)
		p.back = make(chan struct{})
	}
	p.state, p.since = PeerUp, now
	return t, true
}

// check moves silent peers to suspect or down. After a stall of this node
// (the check itself came late) it only takes note: the heartbeats that
// arrived meanwhile have not been read yet, and every peer would look silent.
func (h *health) check(now time.Time) []transition {
	h.mu.Lock()
	defer h.mu.Unlock()
	stalled := !h.lastCheck.IsZero() && now.Sub(h.lastCheck) > 4*h.every+50*time.Millisecond
	h.lastCheck = now
	if stalled && !h.skipped {
		h.skipped = true // once: checks that are always late must still detect
		return nil
	}
	h.skipped = false
	var out []transition
	for n, p := range h.peers {
		silent := now.Sub(p.last)
		// A peer beating less often than this node is judged by its interval.
		suspectAfter, downAfter := 2*h.interval, h.downAfter
		if p.interval > h.interval {
			suspectAfter, downAfter = 2*p.interval, max(downAfter, 3*p.interval)
		}
		to := p.state
		switch {
		case p.state != PeerDown && silent > downAfter:
			to = PeerDown
		case p.state == PeerUp && silent > suspectAfter:
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

// runHealth publishes this node's heartbeats, watches its peers' and acts on
// their changes, until ctx ends. Each runs on its own goroutine: acting on a
// change (the event log, the router's lock) must never delay a heartbeat,
// or this node's peers would take it down.
func (m *Mesh) runHealth(ctx context.Context) {
	go func() {
		beat := time.NewTicker(m.health.interval)
		defer beat.Stop()
		var seq uint64
		for {
			m.sendHeartbeat(&seq)
			select {
			case <-ctx.Done():
				return
			case <-beat.C:
			}
		}
	}()
	go func() {
		watch := time.NewTicker(m.health.every)
		defer watch.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-watch.C:
				for _, t := range m.health.check(now) {
					m.notifyPeer(t)
				}
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case t := <-m.transitions:
			m.peerChanged(t)
		}
	}
}

func (m *Mesh) sendHeartbeat(seq *uint64) {
	*seq++
	data, err := json.Marshal(heartbeat{From: m.p.Node, Boot: m.boot, Seq: *seq, Epoch: m.p.Local.Epoch(),
		IntervalMillis: m.health.interval.Milliseconds()})
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
	if m.noteBoot(hb.From, hb.Boot) && m.health.state(hb.From) != PeerDown {
		// Restarted faster than it could be taken down: heal as after a down.
		m.notifyPeer(transition{peer: hb.From, from: PeerDown, to: PeerUp})
	}
	if t, changed := m.health.heard(hb, time.Now()); changed {
		m.notifyPeer(t)
	}
}

// notifyPeer hands a peer's change to the goroutine acting on changes; if it
// stays busy for a second (or has stopped), the change is logged instead.
func (m *Mesh) notifyPeer(t transition) {
	select {
	case m.transitions <- t:
	case <-time.After(time.Second):
		m.logger.Error("mesh: a peer's change of health was not acted on in time", "peer", t.peer, "from", t.from, "to", t.to)
	}
}

// peerChanged acts on a peer's change of state: an event, a log line, and the
// refrain (down) or heal (up after down).
func (m *Mesh) peerChanged(t transition) {
	silent := t.silent
	if t.never {
		silent = 0
	}
	_, _ = m.p.Log.Append(events.Event{Time: time.Now().UTC(), Type: events.TypePeer,
		Data: events.Peer{Peer: t.peer, State: string(t.to), Previous: string(t.from), SilentMillis: silent.Milliseconds()}})
	switch {
	case t.to == PeerDown:
		m.logger.Warn("mesh: peer down; refraining from it", "peer", t.peer, "silent", silent.Round(time.Millisecond).String())
		m.setReachable(t.peer, false, 0)
	case t.to == PeerSuspect:
		m.logger.Info("mesh: peer suspect", "peer", t.peer, "silent", silent.Round(time.Millisecond).String())
	case t.from == PeerDown:
		m.logger.Info("mesh: peer up", "peer", t.peer)
		_, gen := m.health.generation(t.peer)
		go m.heal(t.peer, gen)
	}
}

// setReachable takes a peer's agents out of routing (down) or brings them back
// — the latter only if the peer has not gone down again since generation gen.
// Serialised, so a heal finishing late cannot undo a newer down.
func (m *Mesh) setReachable(n core.NodeID, reachable bool, gen uint64) {
	if m.view == nil {
		return
	}
	m.reachMu.Lock()
	defer m.reachMu.Unlock()
	if reachable {
		if state, downs := m.health.generation(n); state == PeerDown || downs != gen {
			return
		}
	}
	m.view.SetUnreachable(m.ownedBy(n), !reachable)
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

// heal brings a peer back after it was down (generation gen): its agents'
// states are fetched afresh before they return to the routing view, then the
// leases held across the link are reconciled.
func (m *Mesh) heal(n core.NodeID, gen uint64) {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		if state, downs := m.health.generation(n); state == PeerDown || downs != gen || m.nc.IsClosed() {
			return // down again: the next heal will do it
		}
		if err := m.fetchSnapshot(n); err == nil {
			break
		}
		time.Sleep(wait)
	}
	m.setReachable(n, true, gen)
	m.reconcileLeases(n, gen)
}
