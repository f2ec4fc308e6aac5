package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// Operations of the reservation protocol.
const (
	opReserve  = "reserve"
	opAccept   = "accept"
	opReject   = "reject"
	opRelease  = "release"
	opComplete = "complete"
	opSnapshot = "snapshot"
	opContacts = "contacts"
	opRegs     = "registrations"
	opCancel   = "cancel"
	opHandoff  = "handoff"
	opLeases   = "leases"
	opSound    = "sound"
)

// request is a message to an agent's owner.
type request struct {
	Op   string      `json:"op"`
	From core.NodeID `json:"from"`
	// reserve
	Agent       core.AgentID       `json:"agent,omitempty"`
	Interaction core.InteractionID `json:"interaction,omitempty"`
	Channel     core.Channel       `json:"channel,omitempty"`
	TTLMillis   int64              `json:"ttl_ms,omitempty"`
	Request     core.RequestID     `json:"request,omitempty"`
	// accept, reject, release, complete
	Token        string `json:"token,omitempty"`
	WrapUpMillis int64  `json:"wrap_up_ms,omitempty"`
	// handoff: the directory revision the claimer read
	Fence uint64 `json:"fence,omitempty"`
	// leases: the tokens the sender holds at the owner
	Tokens []string `json:"tokens,omitempty"`
	// sound: a queue's sound file of a kind
	Queue core.QueueID `json:"queue,omitempty"`
	Kind  string       `json:"kind,omitempty"`
}

// reply is the owner's answer. Err carries a code that maps back to the agent
// package's sentinel errors, so callers on any node test them with errors.Is.
type reply struct {
	Token    string             `json:"token,omitempty"`
	State    *events.AgentState `json:"state,omitempty"`
	Deny     agent.DenyReason   `json:"deny,omitempty"`
	Err      string             `json:"err,omitempty"`
	Code     string             `json:"code,omitempty"`
	Agents   []agentState       `json:"agents,omitempty"`
	Contacts []string           `json:"contacts,omitempty"`
	Tokens   []string           `json:"tokens,omitempty"`
	Raw      json.RawMessage    `json:"raw,omitempty"`
	Data     []byte             `json:"data,omitempty"` // sound
	// FeedGen and FeedSeq (snapshot): the owner's feed position when it took
	// the snapshot; the follower continues from there.
	FeedGen uint64 `json:"feed_gen,omitempty"`
	FeedSeq uint64 `json:"feed_seq,omitempty"`
}

type agentState struct {
	Agent core.AgentID      `json:"agent"`
	State events.AgentState `json:"state"`
}

// errCodes maps the owner's errors to wire codes and back.
var errCodes = map[string]error{
	"unknown_agent": agent.ErrUnknownAgent,
	"stale_epoch":   agent.ErrStaleEpoch,
	"lease_ended":   agent.ErrLeaseEnded,
	"wrong_state":   agent.ErrWrongLeaseState,
	"logged_out":    agent.ErrLoggedOut,
	"bad_token":     agent.ErrBadToken,
	"agent_busy":    agent.ErrAgentBusy,
	"move_conflict": ErrMoveConflict,
	"no_directory":  ErrDirectoryUnavailable,
}

func encodeErr(err error) reply {
	var deny *agent.DenyError
	if errors.As(err, &deny) {
		return reply{Deny: deny.Reason, Err: err.Error()}
	}
	for code, e := range errCodes {
		if errors.Is(err, e) {
			return reply{Code: code, Err: err.Error()}
		}
	}
	return reply{Err: err.Error()}
}

func (r reply) err(id core.AgentID) error {
	switch {
	case r.Deny != "":
		return &agent.DenyError{Agent: id, Reason: r.Deny}
	case r.Err == "":
		return nil
	case errCodes[r.Code] != nil:
		return fmt.Errorf("%w (at the owner: %s)", errCodes[r.Code], r.Err)
	}
	return errors.New("owner: " + r.Err)
}

// call sends req to node and decodes its reply; no answer within the request
// timeout is ErrOwnerUnreachable.
func (m *Mesh) call(node core.NodeID, req request) (reply, error) {
	return m.request(node, req, m.timeout, true)
}

// request is call with its own timeout; skipDown false asks even a member
// that did not answer just before.
func (m *Mesh) request(node core.NodeID, req request, timeout time.Duration, skipDown bool) (reply, error) {
	req.From = m.p.Node
	data, err := json.Marshal(req)
	if err != nil {
		return reply{}, err
	}
	// A member that just failed to answer is not asked again for a moment: the
	// router calls with its lock held, so each wait on a dead member stalls
	// routing (ADR 0006); one probe per downFor is enough to see it return.
	// Refrain (issue 5): nothing is sent to a peer that is down, and a request
	// in flight ends when its peer goes down.
	m.mu.Lock()
	missed := skipDown && time.Now().Before(m.downUntil[node])
	m.mu.Unlock()
	state, peerCtx, ok := m.health.admit(node, missed)
	switch {
	case !ok:
		return reply{}, fmt.Errorf("mesh: %s to %s: not a member", req.Op, node)
	case peerCtx == nil && state == PeerDown:
		return reply{}, fmt.Errorf("mesh: %s to %s: %w (down)", req.Op, node, ErrOwnerUnreachable)
	case peerCtx == nil:
		return reply{}, fmt.Errorf("mesh: %s to %s: %w (did not answer just before)", req.Op, node, ErrOwnerUnreachable)
	}
	ctx, cancel := context.WithTimeout(peerCtx, timeout)
	defer cancel()
	msg, err := m.nc.RequestWithContext(ctx, m.subject("rpc", node), data)
	if err != nil {
		if peerCtx.Err() != nil {
			return reply{}, fmt.Errorf("mesh: %s to %s: %w (went down)", req.Op, node, ErrOwnerUnreachable)
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) {
			m.mu.Lock()
			m.downUntil[node] = time.Now().Add(downFor)
			m.mu.Unlock()
			return reply{}, fmt.Errorf("mesh: %s to %s: %w (%v)", req.Op, node, ErrOwnerUnreachable, err)
		}
		return reply{}, fmt.Errorf("mesh: %s to %s: %w", req.Op, node, err)
	}
	var r reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return reply{}, fmt.Errorf("mesh: %s to %s: bad reply: %w", req.Op, node, err)
	}
	return r, nil
}

// downFor is how long a member that did not answer is taken as unreachable.
const downFor = time.Second

// Reserve asks the agent's owner for a reservation (router.Reserver): a local
// call when this node owns the agent, a request otherwise.
func (m *Mesh) Reserve(req agent.ReserveRequest) (agent.Grant, error) {
	owner := m.dir.get(req.Agent).Node
	if owner == m.p.Node {
		return m.p.Local.Reserve(req)
	}
	if owner == "" {
		return agent.Grant{}, &agent.DenyError{Agent: req.Agent, Reason: agent.DenyUnknownAgent}
	}
	if req.Request == "" { // so that a reservation whose answer is lost can be withdrawn
		req.Request = core.RequestID(fmt.Sprintf("%s/%d/%d", m.p.Node, m.pubGen.Load(), m.reqSeq.Add(1)))
	}
	r, err := m.call(owner, request{Op: opReserve, Agent: req.Agent, Interaction: req.Interaction, Channel: req.Channel,
		TTLMillis: req.TTL.Milliseconds(), Request: req.Request})
	if errors.Is(err, ErrOwnerUnreachable) {
		// The owner may have granted it anyway: withdraw it (no penalty), so the
		// agent is not held for an offer nobody will deliver.
		go m.retry(owner, request{Op: opCancel, Request: req.Request})
	}
	if err != nil {
		return agent.Grant{}, err
	}
	if err := r.err(req.Agent); err != nil {
		return agent.Grant{}, err
	}
	tok, err := agent.ParseToken(r.Token)
	if err != nil || r.State == nil {
		return agent.Grant{}, fmt.Errorf("mesh: reserve at %s: bad grant %q", owner, r.Token)
	}
	return agent.Grant{Token: tok, State: *r.State}, nil
}

// tokenOp runs accept, reject, release or complete at the token's owner.
func (m *Mesh) tokenOp(op string, tok agent.Token, wrapUp time.Duration, local func() error) error {
	owner := m.dir.get(tok.Agent).Node
	if owner == m.p.Node {
		return local()
	}
	if owner == "" {
		return agent.ErrUnknownAgent
	}
	req := request{Op: op, Token: tok.String(), WrapUpMillis: wrapUp.Milliseconds()}
	r, err := m.call(owner, req)
	if errors.Is(err, ErrOwnerUnreachable) && op != opAccept {
		// The interaction has moved on here; the owner must learn it too, or the
		// agent stays held: keep telling it in the background (repeats are
		// harmless: the lease has ended by then).
		go m.retry(owner, req)
		m.logger.Warn("mesh: owner unreachable; retrying in the background", "op", op, "owner", owner, "token", req.Token)
		return nil
	}
	if err != nil {
		return err
	}
	return r.err(tok.Agent)
}

// retry sends req to node until it answers, for up to retryFor: again after
// a growing wait, and at once when the node comes back from down (so an agent
// held by the notice is freed as soon as the link heals).
func (m *Mesh) retry(node core.NodeID, req request) {
	wait := 250 * time.Millisecond
	deadline := time.Now().Add(retryFor)
	for time.Now().Before(deadline) && !m.nc.IsClosed() {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-m.health.comeback(node):
			t.Stop()
		}
		if _, err := m.call(node, req); err == nil || !errors.Is(err, ErrOwnerUnreachable) {
			return
		}
		wait = min(2*wait, 5*time.Second)
	}
	m.logger.Error("mesh: gave up telling the owner", "op", req.Op, "owner", node, "token", req.Token)
}

// retryFor bounds how long a lease's end is retried: past it, the owner (if
// it was restarted meanwhile) forgot the lease anyway, and the heal's lease
// reconciliation settles what the holder no longer holds.
const retryFor = 30 * time.Minute

// Accept is the agent taking the offer (interaction.Agents).
func (m *Mesh) Accept(tok agent.Token) error {
	return m.tokenOp(opAccept, tok, 0, func() error { return m.p.Local.Accept(tok) })
}

// Reject is a refused or missed offer.
func (m *Mesh) Reject(tok agent.Token) error {
	return m.tokenOp(opReject, tok, 0, func() error { return m.p.Local.Reject(tok) })
}

// Release gives a reservation back without penalty.
func (m *Mesh) Release(tok agent.Token) error {
	return m.tokenOp(opRelease, tok, 0, func() error { return m.p.Local.Release(tok) })
}

// Complete ends the agent's work; wrap-up follows at the owner.
func (m *Mesh) Complete(tok agent.Token, wrapUp time.Duration) error {
	return m.tokenOp(opComplete, tok, wrapUp, func() error { return m.p.Local.Complete(tok, wrapUp) })
}

// serveRPC answers requests for the agents this node owns.
func (m *Mesh) serveRPC(msg *nats.Msg) {
	var req request
	var r reply
	if err := json.Unmarshal(msg.Data, &req); err != nil {
		r = reply{Err: "bad request: " + err.Error()}
	} else {
		r = m.handle(req)
	}
	data, err := json.Marshal(r)
	if err != nil {
		data, _ = json.Marshal(reply{Err: err.Error()})
	}
	if err := msg.Respond(data); err != nil {
		m.logger.Warn("mesh: reply", "op", req.Op, "from", req.From, "err", err)
	}
}

func (m *Mesh) handle(req request) reply {
	if req.Op == opSnapshot {
		// The position first: states published after it are newer than the
		// snapshot or in it, and versions order them either way.
		gen, seq := m.pubGen.Load(), m.pubSeq.Load()
		var out []agentState
		for _, v := range m.p.Local.Snapshots() {
			out = append(out, agentState{Agent: v.ID, State: v.State})
		}
		return reply{Agents: out, FeedGen: gen, FeedSeq: seq}
	}
	if req.Op == opRegs {
		if m.p.Registrations == nil {
			return reply{}
		}
		raw, err := json.Marshal(m.p.Registrations())
		if err != nil {
			return encodeErr(err)
		}
		return reply{Raw: raw}
	}
	if req.Op == opCancel {
		if err := m.p.Local.CancelRequest(req.Request); err != nil {
			return encodeErr(err)
		}
		return reply{}
	}
	if req.Op == opLeases {
		keep := map[agent.Token]bool{}
		for _, t := range req.Tokens {
			if tok, err := agent.ParseToken(t); err == nil {
				keep[tok] = true
			}
		}
		live, revoked := m.p.Local.ReconcileHolder(req.From, keep, time.Now().Add(-reconcileGrace))
		if revoked > 0 {
			m.logger.Info("mesh: leases a peer no longer holds revoked", "peer", req.From, "revoked", revoked)
		}
		out := reply{Tokens: []string{}}
		for _, t := range live {
			out.Tokens = append(out.Tokens, t.String())
		}
		return out
	}
	if req.Op == opSound {
		return m.serveSound(req)
	}
	if req.Op == opHandoff {
		if err := m.handOff(req.Agent, req.From, req.Fence); err != nil {
			return encodeErr(err)
		}
		return reply{}
	}
	if req.Op == opContacts {
		if m.p.Contacts == nil {
			return reply{}
		}
		return reply{Contacts: m.p.Contacts(req.Agent)}
	}
	if req.Op == opReserve {
		// The lease remembers its holder: its end is reported to that node.
		g, err := m.p.Local.Reserve(agent.ReserveRequest{Agent: req.Agent, Interaction: req.Interaction, Channel: req.Channel,
			TTL: time.Duration(req.TTLMillis) * time.Millisecond, Request: req.Request, Holder: req.From})
		if err != nil {
			return encodeErr(err)
		}
		st := g.State
		return reply{Token: g.Token.String(), State: &st}
	}
	tok, err := agent.ParseToken(req.Token)
	if err != nil {
		return encodeErr(err)
	}
	switch req.Op {
	case opAccept:
		err = m.p.Local.Accept(tok)
	case opReject:
		err = m.p.Local.Reject(tok)
	case opRelease:
		err = m.p.Local.Release(tok)
	case opComplete:
		err = m.p.Local.Complete(tok, time.Duration(req.WrapUpMillis)*time.Millisecond)
	default:
		return reply{Err: fmt.Sprintf("unknown operation %q", req.Op)}
	}
	if err != nil {
		return encodeErr(err)
	}
	return reply{}
}

// Contacts lists the SIP contacts where agent id's phone is registered: those
// registered at this node, else those at the agent's owner (a call arriving
// here rings a phone registered there; media stays anchored here).
func (m *Mesh) Contacts(id core.AgentID) []string {
	var local []string
	if m.p.Contacts != nil {
		local = m.p.Contacts(id)
	}
	owner := m.dir.get(id).Node
	if len(local) > 0 || owner == m.p.Node || owner == "" {
		return local
	}
	r, err := m.call(owner, request{Op: opContacts, Agent: id})
	if err != nil {
		m.logger.Info("mesh: contacts of a remote agent", "agent", id, "owner", owner, "err", err)
		return nil
	}
	return r.Contacts
}

// PeerRegistrations asks every other member for its SIP registrations (as it
// marshals them: the API decodes them); members that do not answer in time are
// listed in missing.
func (m *Mesh) PeerRegistrations() (regs map[core.NodeID]json.RawMessage, missing []core.NodeID) {
	regs = map[core.NodeID]json.RawMessage{}
	for _, n := range m.p.Config.Members {
		if n == m.p.Node {
			continue
		}
		r, err := m.call(n, request{Op: opRegs})
		if err != nil || r.Err != "" {
			missing = append(missing, n)
			continue
		}
		if len(r.Raw) > 0 {
			regs[n] = r.Raw
		}
	}
	return regs, missing
}

// Snapshots is every agent's current state as this node knows it: its own
// agents from their owner, the others from the feed (router.Snapshotter).
func (m *Mesh) Snapshots() []agent.View {
	out := m.p.Local.Snapshots()
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, st := range m.remote {
		out = append(out, agent.View{ID: id, State: st})
	}
	return out
}

// reconcileLeases settles, after the link to owner n was down (generation
// gen), the leases this node holds there: it sends the tokens of n's current
// run it still holds; n keeps those, revokes its older leases for this node
// that are not among them, and answers which it kept. An offer whose lease n
// no longer has goes back to its queue here; a call whose lease is gone goes
// on (its media is here) — only the owner's bookkeeping of it ended.
func (m *Mesh) reconcileLeases(n core.NodeID, gen uint64) {
	held, ok := m.leases.(interface {
		HeldTokens() map[core.InteractionID]agent.Token
	})
	epoch := m.health.epoch(n)
	if !ok || epoch == 0 {
		return
	}
	mine := map[string]core.InteractionID{}
	req := request{Op: opLeases, Tokens: []string{}}
	for ix, tok := range held.HeldTokens() {
		if tok.Epoch == epoch {
			mine[tok.String()] = ix
			req.Tokens = append(req.Tokens, tok.String())
		}
	}
	var r reply
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if state, downs := m.health.generation(n); state == PeerDown || downs != gen {
			return
		}
		if r, err = m.request(n, req, leasesTimeout, false); err == nil && r.Err != "" {
			err = errors.New(r.Err)
		}
		if err == nil {
			break
		}
		time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
	}
	if err != nil {
		m.logger.Warn("mesh: reconcile leases after a peer came back", "peer", n, "err", err)
		return
	}
	for _, t := range r.Tokens {
		delete(mine, t)
	}
	for t, ix := range mine {
		tok, err := agent.ParseToken(t)
		if err != nil {
			continue
		}
		m.logger.Info("mesh: a lease ended at its owner while the link was down", "peer", n, "interaction", ix, "token", t)
		m.leases.LeaseEnded(agent.LeaseEnd{Token: tok, Interaction: ix, Outcome: agent.OutcomeExpired})
	}
}

// leasesTimeout bounds a lease reconciliation request.
const leasesTimeout = 2 * time.Second

// reconcileGrace is how recent a lease may be and still be kept by a
// reconciliation that does not list it: the holder's list is a snapshot, and
// a lease granted just before may not be in it yet.
const reconcileGrace = 3 * time.Second
