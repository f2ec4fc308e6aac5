package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// requestTTL is how long a reserve answer is remembered for idempotent retries;
// longer than any retry of a reserve request.
const requestTTL = 2 * time.Minute

// maxRemembered bounds the idempotency table; the oldest answers go first.
const maxRemembered = 1 << 16

type presence uint8

const (
	presLoggedOut presence = iota
	presNotReady
	presReady
)

func (p presence) String() string {
	switch p {
	case presNotReady:
		return "not_ready"
	case presReady:
		return "ready"
	}
	return "logged_out"
}

type leaseState uint8

const (
	leaseOffered leaseState = iota // granted, waiting for the agent
	leaseBusy                      // accepted
	leaseWrapUp                    // completed, wrap-up running
)

type lease struct {
	id          core.LeaseID
	interaction core.InteractionID
	channel     core.Channel
	holder      core.NodeID // "" for this node
	granted     time.Time
	state       leaseState
	timer       clock.Timer // offer expiry while offered, wrap-up end while wrapping up
}

// agentState is one agent's owned state. Guarded by Manager.mu.
type agentState struct {
	cfg       config.Agent
	capacity  [core.NumChannels]int
	presence  presence
	reason    string
	leases    map[core.LeaseID]*lease
	offered   [core.NumChannels]int
	busy      [core.NumChannels]int
	wrap      [core.NumChannels]int
	idleSince time.Time
	version   uint64
	// fence is the cluster directory revision under which this node holds the
	// agent (0: the configured owner, never moved); every state carries it.
	fence uint64
}

type remembered struct {
	req     core.RequestID
	expires time.Time
	grant   Grant
	err     error
}

// Grant is a successful reservation: the token and the agent's state after it.
type Grant struct {
	Token Token
	State events.AgentState
}

// Params are the Manager's dependencies.
type Params struct {
	// Node is the owner node's id.
	Node core.NodeID
	// Agents are the agents this node owns.
	Agents []config.Agent
	// Clock drives leases and wrap-up; clock.Real{} in production.
	Clock clock.Clock
	// Log receives every transition as an event.
	Log *events.Log
	// MissedOffer is the policy after an expired or rejected offer.
	MissedOffer config.MissedOfferAction
	// Epoch is the owner's epoch; it must grow across restarts of the owner.
	Epoch uint64
	// Logger is scoped to the component by the caller.
	Logger *slog.Logger
	// Reachable, when set, says whether the agent has a device for a channel
	// (a registered phone for voice); a reservation on a channel without one is
	// denied no_device. Called with the Manager's lock held: it must not call
	// back into the Manager.
	Reachable func(core.AgentID, core.Channel) bool
}

// Manager owns the state of a set of agents. It is safe for concurrent use; no
// method blocks except on the event log's backpressure.
type Manager struct {
	node        core.NodeID
	clock       clock.Clock
	log         *events.Log
	missedOffer config.MissedOfferAction
	epoch       uint64
	logger      *slog.Logger
	reachable   func(core.AgentID, core.Channel) bool

	// mu guards everything below, and the agentState values.
	mu        sync.Mutex
	agents    map[core.AgentID]*agentState
	nextLease core.LeaseID
	requests  map[core.RequestID]*remembered
	reqOrder  []*remembered // FIFO for expiry of requests; reqOrder[reqHead:] are live
	reqHead   int
	observer  Observer
	// retiredVersion is the highest state version of any agent that stopped
	// being owned here (detached or removed). An agent owned again starts from
	// it, so her versions keep growing under the same fence and epoch and views
	// that still hold her old state accept the new one.
	retiredVersion uint64
}

// NewManager returns a Manager owning p.Agents, all logged out.
func NewManager(p Params) *Manager {
	m := &Manager{
		node:        p.Node,
		clock:       p.Clock,
		log:         p.Log,
		missedOffer: p.MissedOffer,
		epoch:       p.Epoch,
		logger:      p.Logger,
		reachable:   p.Reachable,
		agents:      make(map[core.AgentID]*agentState, len(p.Agents)),
		requests:    map[core.RequestID]*remembered{},
	}
	if m.logger == nil {
		m.logger = slog.Default()
	}
	for _, a := range p.Agents {
		m.agents[a.ID] = m.newAgentLocked(a, 0)
	}
	return m
}

// newAgentLocked returns the state of a newly owned agent: logged out, idle
// from now, versions continuing after any agent that left.
func (m *Manager) newAgentLocked(a config.Agent, fence uint64) *agentState {
	st := &agentState{leases: map[core.LeaseID]*lease{}, idleSince: m.clock.Now(), fence: fence, version: m.retiredVersion}
	st.configure(a)
	return st
}

// configure applies an agent's configuration and reports whether her
// capacity changed. Leases already granted are kept even above the new
// capacity; it bounds new reservations only.
func (a *agentState) configure(c config.Agent) (capacityChanged bool) {
	a.cfg = c
	for _, ch := range core.Channels {
		i := ch.Index()
		if n := c.CapacityFor(ch); n != a.capacity[i] {
			a.capacity[i] = n
			capacityChanged = true
		}
	}
	return capacityChanged
}

// SetObserver installs the observer of unrequested lease ends. Call before use.
func (m *Manager) SetObserver(o Observer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.observer = o
}

// Epoch returns the owner's epoch.
func (m *Manager) Epoch() uint64 { return m.epoch }

// Config returns the configuration of an agent.
func (m *Manager) Config(id core.AgentID) (config.Agent, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.agents[id]
	if !ok {
		return config.Agent{}, false
	}
	return a.cfg, true
}

// IDs returns every owned agent id, sorted.
func (m *Manager) IDs() []core.AgentID {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]core.AgentID, 0, len(m.agents))
	for id := range m.agents {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// Login logs the agent in as not_ready("login"). Logging in twice is a no-op.
func (m *Manager) Login(id core.AgentID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.agents[id]
	if !ok {
		return fmt.Errorf("agent: login %s: %w", id, ErrUnknownAgent)
	}
	if a.presence != presLoggedOut {
		return nil
	}
	a.presence, a.reason = presNotReady, "login"
	return m.emitStateLocked(a, "login")
}

// Logout logs the agent out. Unless force is set it refuses while the agent holds
// offers or interactions (ErrHasWork); with force, outstanding leases are revoked
// and reported to the Observer.
func (m *Manager) Logout(id core.AgentID, force bool) error {
	m.mu.Lock()
	a, ok := m.agents[id]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("agent: logout %s: %w", id, ErrUnknownAgent)
	}
	if a.presence == presLoggedOut {
		m.mu.Unlock()
		return nil
	}
	if len(a.leases) > 0 && !force {
		n := len(a.leases)
		m.mu.Unlock()
		return fmt.Errorf("agent: logout %s (%d open): %w", id, n, ErrHasWork)
	}
	ends, err := m.revokeAllLocked(a)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	a.presence, a.reason = presLoggedOut, ""
	err = m.emitStateLocked(a, "logout")
	obs := m.observer
	m.mu.Unlock()
	m.notify(obs, ends)
	return err
}

// revokeAllLocked ends every lease of a as revoked and returns the ends to
// report to the Observer once the lock is released.
func (m *Manager) revokeAllLocked(a *agentState) ([]LeaseEnd, error) {
	var ends []LeaseEnd
	for _, l := range a.leases {
		ends = append(ends, LeaseEnd{Token: m.token(a, l), Interaction: l.interaction, Outcome: OutcomeRevoked, Holder: l.holder})
		if err := m.endLeaseLocked(a, l, string(OutcomeRevoked)); err != nil {
			return ends, err
		}
	}
	return ends, nil
}

// RevokeHolder ends every lease held by node (a cluster member that restarted:
// the interactions behind those leases died with its previous run), as revoked,
// without a missed-offer penalty. It returns how many leases ended.
func (m *Manager) RevokeHolder(node core.NodeID) int {
	if node == "" {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, a := range m.agents {
		ended := false
		for _, l := range a.leases {
			if l.holder != node {
				continue
			}
			if err := m.endLeaseLocked(a, l, string(OutcomeRevoked)); err != nil {
				m.logger.Error("revoke a restarted member's lease", "agent", a.cfg.ID, "err", err)
				continue
			}
			ended = true
			n++
		}
		if ended {
			if err := m.emitStateLocked(a, "holder_restarted"); err != nil {
				m.logger.Error("revoke a restarted member's lease", "agent", a.cfg.ID, "err", err)
			}
		}
	}
	return n
}

// SetReady makes a logged-in agent ready. Any wrap-up in progress continues; the
// agent receives offers on channels with free capacity.
func (m *Manager) SetReady(id core.AgentID) error {
	return m.setPresence(id, presReady, "", "set_ready")
}

// SetNotReady makes a logged-in agent not ready with a reason.
func (m *Manager) SetNotReady(id core.AgentID, reason string) error {
	if reason == "" {
		reason = "unspecified"
	}
	return m.setPresence(id, presNotReady, reason, "set_not_ready")
}

func (m *Manager) setPresence(id core.AgentID, p presence, reason, cause string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.agents[id]
	if !ok {
		return fmt.Errorf("agent: %s %s: %w", cause, id, ErrUnknownAgent)
	}
	if a.presence == presLoggedOut {
		return fmt.Errorf("agent: %s %s: %w", cause, id, ErrLoggedOut)
	}
	if a.presence == p && a.reason == reason {
		return nil
	}
	if p == presReady {
		// Idle time counts from when the agent became available.
		a.idleSince = m.clock.Now()
	}
	a.presence, a.reason = p, reason
	return m.emitStateLocked(a, cause)
}

// DeviceChanged records that a logged-in agent's devices changed (a phone
// registered, or its last registration ended): a state event with that cause,
// so that routers that held the agent unreachable look at it again. Unknown or
// logged-out agents are ignored.
func (m *Manager) DeviceChanged(id core.AgentID, cause string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.agents[id]
	if !ok || a.presence == presLoggedOut {
		return nil
	}
	return m.emitStateLocked(a, cause)
}

// EndWrapUp ends every wrap-up of the agent now (the agent says "done").
func (m *Manager) EndWrapUp(id core.AgentID) error {
	m.mu.Lock()
	a, ok := m.agents[id]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("agent: end wrap-up %s: %w", id, ErrUnknownAgent)
	}
	var ends []LeaseEnd
	for _, l := range a.leases {
		if l.state != leaseWrapUp {
			continue
		}
		ends = append(ends, LeaseEnd{Token: m.token(a, l), Interaction: l.interaction, Outcome: OutcomeWrapUpEnded, Holder: l.holder})
		if err := m.endLeaseLocked(a, l, string(OutcomeWrapUpEnded)); err != nil {
			m.mu.Unlock()
			return err
		}
	}
	var err error
	if len(ends) > 0 {
		err = m.emitStateLocked(a, "wrap_up_ended")
	}
	obs := m.observer
	m.mu.Unlock()
	m.notify(obs, ends)
	return err
}

// Reserve grants a lease on the agent for the interaction, or returns a *DenyError.
// A repeat of the same non-empty request id within two minutes gets the first answer.
func (m *Manager) Reserve(req ReserveRequest) (Grant, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	if req.Request != "" {
		m.pruneLocked(now)
		if r, ok := m.requests[req.Request]; ok {
			return r.grant, r.err
		}
	}
	g, err := m.reserveLocked(req)
	if req.Request != "" {
		r := &remembered{req: req.Request, expires: now.Add(requestTTL), grant: g, err: err}
		m.requests[req.Request] = r
		m.reqOrder = append(m.reqOrder, r)
	}
	return g, err
}

// CancelRequest withdraws a reservation by its request id, when the requester
// gave up waiting for the answer (a lost reply): a lease it granted is released
// without penalty, and a request that has not arrived yet will be denied
// (cancelled) when it does.
func (m *Manager) CancelRequest(id core.RequestID) error {
	if id == "" {
		return nil
	}
	m.mu.Lock()
	now := m.clock.Now()
	m.pruneLocked(now)
	r, ok := m.requests[id]
	if !ok {
		r = &remembered{req: id, expires: now.Add(requestTTL), err: &DenyError{Reason: DenyCancelled}}
		m.requests[id] = r
		m.reqOrder = append(m.reqOrder, r)
		m.mu.Unlock()
		return nil
	}
	tok := r.grant.Token
	m.mu.Unlock()
	if tok.IsZero() {
		return nil // it was denied: nothing to give back
	}
	// A lease already ended, or its agent no longer owned here (detached or
	// removed, which ended her leases): nothing to give back either.
	if err := m.Release(tok); err != nil && !errors.Is(err, ErrLeaseEnded) && !errors.Is(err, ErrUnknownAgent) {
		return err
	}
	return nil
}

func (m *Manager) reserveLocked(req ReserveRequest) (Grant, error) {
	a, ok := m.agents[req.Agent]
	if !ok {
		return Grant{}, &DenyError{Agent: req.Agent, Reason: DenyUnknownAgent}
	}
	ci := req.Channel.Index()
	switch {
	case ci < 0:
		return Grant{}, &DenyError{Agent: req.Agent, Reason: DenyChannelDisabled}
	case a.presence == presLoggedOut:
		return Grant{}, &DenyError{Agent: req.Agent, Reason: DenyLoggedOut}
	case a.presence != presReady:
		return Grant{}, &DenyError{Agent: req.Agent, Reason: DenyNotReady}
	case a.capacity[ci] == 0:
		return Grant{}, &DenyError{Agent: req.Agent, Reason: DenyChannelDisabled}
	}
	for _, l := range a.leases {
		if l.interaction == req.Interaction {
			return Grant{}, &DenyError{Agent: req.Agent, Reason: DenyDuplicate}
		}
	}
	if a.offered[ci]+a.busy[ci]+a.wrap[ci] >= a.capacity[ci] {
		return Grant{}, &DenyError{Agent: req.Agent, Reason: DenyAtCapacity}
	}
	if m.reachable != nil && !m.reachable(req.Agent, req.Channel) {
		return Grant{}, &DenyError{Agent: req.Agent, Reason: DenyNoDevice}
	}
	m.nextLease++
	l := &lease{id: m.nextLease, interaction: req.Interaction, channel: req.Channel, holder: req.Holder, state: leaseOffered, granted: m.clock.Now()}
	a.leases[l.id] = l
	a.offered[ci]++
	tok := m.token(a, l)
	if req.TTL > 0 {
		l.timer = m.clock.AfterFunc(req.TTL, func() { m.expire(tok) })
	}
	if err := m.emitLeaseLocked(a, l, "granted", req.TTL, req.Request); err != nil {
		return Grant{}, err
	}
	st, err := m.emitStateLocked2(a, "reserve")
	if err != nil {
		return Grant{}, err
	}
	return Grant{Token: tok, State: st}, nil
}

// Accept turns an offered lease into a busy interaction. Accepting twice is a no-op.
func (m *Manager) Accept(tok Token) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, l, err := m.lookupLocked(tok, "accept")
	if err != nil {
		return err
	}
	switch l.state {
	case leaseBusy:
		return nil
	case leaseWrapUp:
		return fmt.Errorf("agent: accept %s: %w", tok, ErrWrongLeaseState)
	}
	stopTimer(l)
	ci := l.channel.Index()
	a.offered[ci]--
	a.busy[ci]++
	l.state = leaseBusy
	if err := m.emitLeaseLocked(a, l, "accepted", 0, ""); err != nil {
		return err
	}
	return m.emitStateLocked(a, "accept")
}

// Reject ends an offered lease at the agent's request; the missed-offer policy applies.
func (m *Manager) Reject(tok Token) error {
	return m.endOffer(tok, "rejected", true)
}

// Release ends a lease without penalty for the agent: an offer withdrawn (the
// customer left, another agent took it) or an interaction ended without wrap-up.
func (m *Manager) Release(tok Token) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, l, err := m.lookupLocked(tok, "release")
	if err != nil {
		return err
	}
	if err := m.endLeaseLocked(a, l, "released"); err != nil {
		return err
	}
	return m.emitStateLocked(a, "release")
}

// Complete ends an accepted interaction; the agent's slot stays taken for wrapUp
// (0 frees it at once), then the Observer hears OutcomeWrapUpEnded.
func (m *Manager) Complete(tok Token, wrapUp time.Duration) error {
	m.mu.Lock()
	a, l, err := m.lookupLocked(tok, "complete")
	if err != nil {
		m.mu.Unlock()
		return err
	}
	if state := l.state; state != leaseBusy {
		m.mu.Unlock()
		if state == leaseWrapUp {
			return nil // completing twice is a no-op
		}
		return fmt.Errorf("agent: complete %s: %w", tok, ErrWrongLeaseState)
	}
	ci := l.channel.Index()
	a.busy[ci]--
	a.wrap[ci]++
	l.state = leaseWrapUp
	if err := m.emitLeaseLocked(a, l, "completed", 0, ""); err != nil {
		m.mu.Unlock()
		return err
	}
	var ends []LeaseEnd
	if wrapUp > 0 {
		l.timer = m.clock.AfterFunc(wrapUp, func() { m.wrapUpDone(tok) })
		err = m.emitStateLocked(a, "complete")
	} else {
		ends = append(ends, LeaseEnd{Token: tok, Interaction: l.interaction, Outcome: OutcomeWrapUpEnded, Holder: l.holder})
		if err = m.endLeaseLocked(a, l, string(OutcomeWrapUpEnded)); err == nil {
			err = m.emitStateLocked(a, "complete")
		}
	}
	obs := m.observer
	m.mu.Unlock()
	m.notify(obs, ends)
	return err
}

func (m *Manager) endOffer(tok Token, outcome string, penalise bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, l, err := m.lookupLocked(tok, outcome)
	if err != nil {
		return err
	}
	if l.state != leaseOffered {
		return fmt.Errorf("agent: %s %s: %w", outcome, tok, ErrWrongLeaseState)
	}
	if err := m.endLeaseLocked(a, l, outcome); err != nil {
		return err
	}
	cause := outcome
	if penalise && m.missedOffer == config.MissedOfferNotReady && a.presence == presReady {
		a.presence, a.reason = presNotReady, ReasonMissedOffer
		cause = "missed_offer"
	}
	return m.emitStateLocked(a, cause)
}

// expire runs on the lease timer. The agent may have been detached or removed
// meanwhile (lookupLocked then fails): nothing to do.
func (m *Manager) expire(tok Token) {
	m.mu.Lock()
	a, l, err := m.lookupLocked(tok, "expire")
	if err != nil || l.state != leaseOffered {
		m.mu.Unlock()
		return // accepted or ended meanwhile, or the agent is no longer owned here
	}
	if err := m.endLeaseLocked(a, l, string(OutcomeExpired)); err != nil {
		m.mu.Unlock()
		m.logger.Error("expire lease", "agent", tok.Agent, "err", err)
		return
	}
	cause := "offer_expired"
	if m.missedOffer == config.MissedOfferNotReady && a.presence == presReady {
		a.presence, a.reason = presNotReady, ReasonMissedOffer
		cause = "missed_offer"
	}
	if err := m.emitStateLocked(a, cause); err != nil {
		m.logger.Error("expire lease", "agent", tok.Agent, "err", err)
	}
	obs := m.observer
	ix, holder := l.interaction, l.holder
	m.mu.Unlock()
	m.notify(obs, []LeaseEnd{{Token: tok, Interaction: ix, Outcome: OutcomeExpired, Holder: holder}})
}

// wrapUpDone runs on the wrap-up timer. The agent may have been removed
// meanwhile (lookupLocked then fails): nothing to do.
func (m *Manager) wrapUpDone(tok Token) {
	m.mu.Lock()
	a, l, err := m.lookupLocked(tok, "wrap-up end")
	if err != nil || l.state != leaseWrapUp {
		m.mu.Unlock()
		return // ended early meanwhile, or the agent is no longer owned here
	}
	if err := m.endLeaseLocked(a, l, string(OutcomeWrapUpEnded)); err == nil {
		err = m.emitStateLocked(a, "wrap_up_ended")
		if err != nil {
			m.logger.Error("wrap-up end", "agent", tok.Agent, "err", err)
		}
	}
	obs := m.observer
	ix, holder := l.interaction, l.holder
	m.mu.Unlock()
	m.notify(obs, []LeaseEnd{{Token: tok, Interaction: ix, Outcome: OutcomeWrapUpEnded, Holder: holder}})
}

func (m *Manager) notify(obs Observer, ends []LeaseEnd) {
	if obs == nil {
		return
	}
	for _, e := range ends {
		obs.LeaseEnded(e)
	}
}

func (m *Manager) lookupLocked(tok Token, op string) (*agentState, *lease, error) {
	a, ok := m.agents[tok.Agent]
	if !ok {
		return nil, nil, fmt.Errorf("agent: %s %s: %w", op, tok, ErrUnknownAgent)
	}
	if tok.Epoch != m.epoch {
		return nil, nil, fmt.Errorf("agent: %s %s (epoch is %d): %w", op, tok, m.epoch, ErrStaleEpoch)
	}
	l, ok := a.leases[tok.Lease]
	if !ok {
		return nil, nil, fmt.Errorf("agent: %s %s: %w", op, tok, ErrLeaseEnded)
	}
	return a, l, nil
}

// endLeaseLocked removes l from a, freeing its slot, and emits the lease event.
func (m *Manager) endLeaseLocked(a *agentState, l *lease, outcome string) error {
	stopTimer(l)
	ci := l.channel.Index()
	switch l.state {
	case leaseOffered:
		a.offered[ci]--
	case leaseBusy:
		a.busy[ci]--
	case leaseWrapUp:
		a.wrap[ci]--
	}
	delete(a.leases, l.id)
	a.idleSince = m.clock.Now()
	return m.emitLeaseLocked(a, l, outcome, 0, "")
}

func stopTimer(l *lease) {
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
}

func (m *Manager) token(a *agentState, l *lease) Token {
	return Token{Agent: a.cfg.ID, Epoch: m.epoch, Lease: l.id}
}

func (m *Manager) pruneLocked(now time.Time) {
	for m.reqHead < len(m.reqOrder) && (now.After(m.reqOrder[m.reqHead].expires) || len(m.reqOrder)-m.reqHead >= maxRemembered) {
		delete(m.requests, m.reqOrder[m.reqHead].req)
		m.reqOrder[m.reqHead] = nil
		m.reqHead++
	}
	// Compact once the dead prefix is half the slice: amortised O(1) per request.
	if m.reqHead > 1024 && m.reqHead*2 >= len(m.reqOrder) {
		m.reqOrder = append(m.reqOrder[:0], m.reqOrder[m.reqHead:]...)
		m.reqHead = 0
	}
}

func (a *agentState) state() State {
	if a.presence == presLoggedOut {
		return StateLoggedOut
	}
	var offered, busy, wrap int
	for i := 0; i < core.NumChannels; i++ {
		offered += a.offered[i]
		busy += a.busy[i]
		wrap += a.wrap[i]
	}
	switch {
	case busy > 0:
		return StateBusy
	case offered > 0:
		return StateReserved
	case wrap > 0:
		return StateWrapUp
	case a.presence == presReady:
		return StateReady
	}
	return StateNotReady
}

func (a *agentState) snapshot(epoch uint64) events.AgentState {
	st := events.AgentState{
		State:     string(a.state()),
		Presence:  a.presence.String(),
		Version:   a.version,
		Epoch:     epoch,
		Fence:     a.fence,
		IdleSince: a.idleSince.UTC(),
		Load:      make([]events.ChannelLoad, 0, core.NumChannels),
	}
	if a.presence == presNotReady {
		st.Reason = a.reason
	}
	for _, ch := range core.Channels {
		i := ch.Index()
		// A disabled channel is left out, unless a reconfiguration disabled it
		// under leases still open there.
		if a.capacity[i] == 0 && a.offered[i]+a.busy[i]+a.wrap[i] == 0 {
			continue
		}
		st.Load = append(st.Load, events.ChannelLoad{
			Channel: ch, Capacity: a.capacity[i], Offered: a.offered[i], Busy: a.busy[i], WrapUp: a.wrap[i],
		})
	}
	return st
}

func (m *Manager) emitStateLocked(a *agentState, cause string) error {
	_, err := m.emitStateLocked2(a, cause)
	return err
}

func (m *Manager) emitStateLocked2(a *agentState, cause string) (events.AgentState, error) {
	a.version++
	st := a.snapshot(m.epoch)
	st.Cause = cause
	_, err := m.log.Append(events.Event{
		Time: m.clock.Now().UTC(), Type: events.TypeAgentState, Agent: a.cfg.ID, Data: st,
	})
	if err != nil {
		return st, fmt.Errorf("agent: %s %s: %w", cause, a.cfg.ID, err)
	}
	return st, nil
}

func (m *Manager) emitLeaseLocked(a *agentState, l *lease, outcome string, ttl time.Duration, req core.RequestID) error {
	_, err := m.log.Append(events.Event{
		Time: m.clock.Now().UTC(), Type: events.TypeLease, Agent: a.cfg.ID, Interaction: l.interaction,
		Data: events.Lease{Lease: l.id, Epoch: m.epoch, Channel: l.channel, Outcome: outcome, TTLMillis: ttl.Milliseconds(), Request: req},
	})
	if err != nil {
		return fmt.Errorf("agent: lease %d %s of %s: %w", l.id, outcome, a.cfg.ID, err)
	}
	return nil
}

// LeaseInfo describes one open lease of an agent.
type LeaseInfo struct {
	Token       Token              `json:"-"`
	Lease       core.LeaseID       `json:"lease"`
	Interaction core.InteractionID `json:"interaction"`
	Channel     core.Channel       `json:"channel"`
	// State is offered, busy or wrap_up.
	State string `json:"state"`
}

// View is a read-only snapshot of one agent.
type View struct {
	ID     core.AgentID           `json:"id"`
	Name   string                 `json:"name"`
	DN     core.DN                `json:"dn"`
	State  events.AgentState      `json:"state"`
	Leases []LeaseInfo            `json:"leases"`
	Skills map[core.SkillName]int `json:"skills"`
}

// Snapshot returns a view of one agent.
func (m *Manager) Snapshot(id core.AgentID) (View, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.agents[id]
	if !ok {
		return View{}, fmt.Errorf("agent: snapshot %s: %w", id, ErrUnknownAgent)
	}
	return m.viewLocked(a), nil
}

// Snapshots returns views of every agent, sorted by id.
func (m *Manager) Snapshots() []View {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]View, 0, len(m.agents))
	for _, a := range m.agents {
		out = append(out, m.viewLocked(a))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (m *Manager) viewLocked(a *agentState) View {
	v := View{ID: a.cfg.ID, Name: a.cfg.Name, DN: a.cfg.DN, State: a.snapshot(m.epoch), Skills: a.cfg.Skills, Leases: []LeaseInfo{}}
	for _, l := range a.leases {
		s := "offered"
		switch l.state {
		case leaseBusy:
			s = "busy"
		case leaseWrapUp:
			s = "wrap_up"
		}
		v.Leases = append(v.Leases, LeaseInfo{Token: m.token(a, l), Lease: l.id, Interaction: l.interaction, Channel: l.channel, State: s})
	}
	sort.Slice(v.Leases, func(i, j int) bool { return v.Leases[i].Lease < v.Leases[j].Lease })
	return v
}
