package interaction

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/router"
)

// Errors of the Service; the API maps them to HTTP statuses.
var (
	ErrNotFound     = errors.New("interaction not found")
	ErrUnknownQueue = errors.New("unknown queue")
	ErrQueueClosed  = errors.New("queue is closed (business hours)")
	ErrDraining     = errors.New("node is draining: not accepting new interactions")
	ErrBusy         = errors.New("node is at its waiting limit")
	ErrNotYours     = errors.New("interaction is not offered to or held by this agent")
	ErrWrongState   = errors.New("operation not allowed in the interaction's state")
	ErrBadRequest   = errors.New("bad request")
	// ErrReplayed: the idempotency key was used before; Create returns that interaction.
	ErrReplayed = errors.New("idempotency key already used")
)

// Agents is what the Service needs of the agents' owner. Methods may block briefly
// and are safe for concurrent use.
type Agents interface {
	Accept(agent.Token) error
	Reject(agent.Token) error
	Release(agent.Token) error
	Complete(agent.Token, time.Duration) error
	// Reserve is used for direct offers (internal calls, transfers to an agent);
	// queued interactions are reserved by the router.
	Reserve(agent.ReserveRequest) (agent.Grant, error)
}

// Queues is what the Service needs of the router.
type Queues interface {
	Enqueue(router.Waiting) error
	Remove(core.InteractionID) bool
	RecordAnswered(core.QueueID, time.Duration)
	RecordAbandoned(core.QueueID, time.Duration)
}

// Deliverer carries the offers of one channel to the agent — the SIP edge rings the
// agent's phone for voice. The Service calls it on a goroutine of its own, never
// with a lock held; methods may block and must be safe for concurrent use.
type Deliverer interface {
	// Deliver presents the offered interaction to the agent holding tok. The
	// deliverer answers through Accept (the agent took it) or Reject (refused,
	// unreachable, no answer).
	Deliver(ix events.Interaction, tok agent.Token)
	// Withdraw takes back an offer that ended otherwise (expired, abandoned).
	Withdraw(id core.InteractionID, tok agent.Token)
	// Ended tells that the interaction reached an end state (state: ended,
	// abandoned, failed, timed_out), whoever ended it: the edge ends what is left
	// of the session (a caller still waiting, a call still up).
	Ended(id core.InteractionID, state string)
}

// Params are the Service's dependencies.
type Params struct {
	Queues []config.Queue
	Log    *events.Log
	Clock  clock.Clock
	Logger *slog.Logger
}

type queueInfo struct {
	cfg   config.Queue
	hours *config.Hours
}

type live struct {
	events.Interaction
	token agent.Token
	// enqueued is EnqueuedAt with its monotonic reading (waits survive wall-clock jumps).
	enqueued time.Time
}

// Service owns the live interactions of this node. It is safe for concurrent use.
// Lock order: the router's lock may be held when Offer is called; the Service never
// calls the router or the agents while holding its own lock.
type Service struct {
	log    *events.Log
	clock  clock.Clock
	logger *slog.Logger
	agents Agents
	router Queues
	// deliverers by channel; set before start, read-only after.
	deliverers map[core.Channel]Deliverer

	// mu guards queues, live, dead, keys, draining and idle.
	mu sync.Mutex
	// queues are the configured queues. Reconfigure replaces the map as a whole
	// and never changes it in place: a map read under mu (queueMap) may be read
	// afterwards without it. Live interactions may name a queue no longer in it.
	queues map[core.QueueID]queueInfo
	live   map[core.InteractionID]*live
	// dead holds leases that ended before their offer reached the Service (an
	// expiry racing the router's Offer); Offer refuses them. Entries leave with
	// their interaction.
	dead map[core.InteractionID]agent.Token
	// keys maps the idempotency keys of live interactions to them.
	keys     map[string]core.InteractionID
	draining bool
	idle     chan struct{} // closed when draining and no interaction is with an agent
}

// NewService returns a Service; call Wire before use.
func NewService(p Params) (*Service, error) {
	s := &Service{log: p.Log, clock: p.Clock, logger: p.Logger, live: map[core.InteractionID]*live{}, dead: map[core.InteractionID]agent.Token{}, keys: map[string]core.InteractionID{}}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	qs, err := compileQueues(p.Queues)
	if err != nil {
		return nil, fmt.Errorf("interaction: %w", err)
	}
	s.queues = qs
	return s, nil
}

// compileQueues compiles the business hours of every queue.
func compileQueues(queues []config.Queue) (map[core.QueueID]queueInfo, error) {
	qs := make(map[core.QueueID]queueInfo, len(queues))
	for _, q := range queues {
		h, err := config.CompileHours(q.BusinessHours)
		if err != nil {
			return nil, fmt.Errorf("queue %s: %w", q.ID, err)
		}
		qs[q.ID] = queueInfo{cfg: q, hours: h}
	}
	return qs, nil
}

// queueMap returns the configured queues. The map is never changed in place:
// read it without the lock.
func (s *Service) queueMap() map[core.QueueID]queueInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queues
}

// Wire connects the Service to the agents' owner and the router (they depend on each other).
func (s *Service) Wire(a Agents, r Queues) {
	s.agents, s.router = a, r
}

// SetDeliverer routes the offers of channel ch to d. Call before start.
func (s *Service) SetDeliverer(ch core.Channel, d Deliverer) {
	if s.deliverers == nil {
		s.deliverers = map[core.Channel]Deliverer{}
	}
	s.deliverers[ch] = d
}

// CreateRequest asks for a new interaction.
type CreateRequest struct {
	Channel  core.Channel
	Queue    core.QueueID
	Priority *int
	// Attributes are free key/values shown to the agent (subject, customer, ...).
	Attributes map[string]string
	// IdempotencyKey, when set, makes a repeat of the request return the first
	// interaction (while it is live; the API looks ended ones up in the store).
	IdempotencyKey string
	// ID, when set (from NewID), is the new interaction's id: an edge that must be
	// ready for the interaction's first offer registers it before Create.
	ID core.InteractionID
}

// Create makes an interaction, persists it and queues it. It returns the
// interaction (perhaps already offered) and the event seq to wait on for durability.
func (s *Service) Create(req CreateRequest) (events.Interaction, uint64, error) {
	qs := s.queueMap()
	qi, ok := qs[req.Queue]
	if !ok {
		return events.Interaction{}, 0, fmt.Errorf("interaction: create in %q: %w", req.Queue, ErrUnknownQueue)
	}
	if req.Channel.Index() < 0 {
		return events.Interaction{}, 0, fmt.Errorf("interaction: create: %w: unknown channel %q", ErrBadRequest, req.Channel)
	}
	now := s.clock.Now()
	if q, t, err := openQueue(qs, req.Queue, now); err != nil {
		return events.Interaction{}, 0, fmt.Errorf("interaction: create: %w", err)
	} else if q != req.Queue {
		// The queue's closed target takes it; the history says where it was meant to go.
		attrs := maps.Clone(req.Attributes)
		if attrs == nil {
			attrs = map[string]string{}
		}
		attrs["closed_queue"] = string(req.Queue)
		req.Queue, req.Attributes, qi = q, attrs, t
	}
	prio := qi.cfg.Priority
	if req.Priority != nil {
		if *req.Priority < 0 || *req.Priority > 100 {
			return events.Interaction{}, 0, fmt.Errorf("interaction: create: %w: priority %d out of range 0..100", ErrBadRequest, *req.Priority)
		}
		prio = *req.Priority
	}
	id := req.ID
	if id == "" {
		id = NewID()
	}
	ix := &live{Interaction: events.Interaction{
		ID: id, Channel: req.Channel, Queue: req.Queue, Priority: prio, State: string(StateCreated),
		CreatedAt: now.UTC(), Attributes: req.Attributes, IdempotencyKey: req.IdempotencyKey,
	}}
	s.mu.Lock()
	if id, ok := s.keys[req.IdempotencyKey]; ok && req.IdempotencyKey != "" {
		snap := s.live[id].Interaction
		s.mu.Unlock()
		return snap, 0, fmt.Errorf("interaction: create: %w", ErrReplayed)
	}
	if s.draining {
		s.mu.Unlock()
		return events.Interaction{}, 0, fmt.Errorf("interaction: create: %w", ErrDraining)
	}
	if _, dup := s.live[ix.ID]; dup {
		s.mu.Unlock()
		return events.Interaction{}, 0, fmt.Errorf("interaction: create: %w: id %s in use", ErrBadRequest, ix.ID)
	}
	s.live[ix.ID] = ix
	if req.IdempotencyKey != "" {
		s.keys[req.IdempotencyKey] = ix.ID
	}
	seq, err := s.emitLocked(ix, "")
	if err == nil {
		ix.EnqueuedAt, ix.enqueued = now.UTC(), now
		seq, err = s.moveLocked(ix, StateQueued, "")
	}
	if err != nil {
		// Not recorded (the log is closing): forget it entirely.
		delete(s.live, ix.ID)
		delete(s.keys, req.IdempotencyKey)
	}
	s.mu.Unlock()
	if err != nil {
		return events.Interaction{}, 0, err
	}
	if err := s.enqueue(ix, now); err != nil {
		if errors.Is(err, router.ErrFull) {
			err = fmt.Errorf("interaction: create: %w", ErrBusy)
		}
		// A refused create does not consume its idempotency key: the retry the
		// client is told to make (503 + Retry-After) must create.
		s.mu.Lock()
		if ix.IdempotencyKey != "" {
			delete(s.keys, ix.IdempotencyKey)
			ix.IdempotencyKey = ""
		}
		s.mu.Unlock()
		seq2, ferr := s.fail(ix.ID, "queue_refused: "+err.Error())
		if ferr == nil {
			seq = seq2
		}
		return events.Interaction{}, seq, err
	}
	s.mu.Lock()
	snap := ix.Interaction // the latest state, even if it already ended
	s.mu.Unlock()
	return snap, s.log.LastSeq(), nil
}

// openQueue returns the queue of qs that takes a new arrival for q at now: q when
// it is open, else its closed target when that one is configured and open; else
// ErrQueueClosed (ErrUnknownQueue when q is not configured).
func openQueue(qs map[core.QueueID]queueInfo, q core.QueueID, now time.Time) (core.QueueID, queueInfo, error) {
	qi, ok := qs[q]
	if !ok {
		return "", queueInfo{}, fmt.Errorf("%s: %w", q, ErrUnknownQueue)
	}
	if qi.hours.IsOpen(now) {
		return q, qi, nil
	}
	if t, ok := qs[qi.cfg.ClosedTarget]; ok && t.hours.IsOpen(now) {
		return qi.cfg.ClosedTarget, t, nil
	}
	return "", queueInfo{}, fmt.Errorf("%s: %w", q, ErrQueueClosed)
}

// enqueue hands a queued interaction to the router, then makes sure it did not end
// meanwhile (an abandon racing the enqueue would otherwise leave a ghost behind).
func (s *Service) enqueue(ix *live, enqueuedAt time.Time) error {
	s.mu.Lock()
	w := router.Waiting{ID: ix.ID, Channel: ix.Channel, Queue: ix.Queue, Priority: ix.Priority, EnqueuedAt: enqueuedAt}
	s.mu.Unlock()
	if err := s.router.Enqueue(w); err != nil {
		return err
	}
	s.mu.Lock()
	gone := State(ix.State) != StateQueued && State(ix.State) != StateOffered
	s.mu.Unlock()
	if gone {
		s.router.Remove(ix.ID)
	}
	return nil
}

// Offer records a reservation granted by the router. Called with the router's lock held.
func (s *Service) Offer(o router.Offer) router.OfferResult {
	s.mu.Lock()
	ix, ok := s.live[o.Interaction]
	if ok && State(ix.State) == StateQueued && s.dead[o.Interaction] == o.Grant.Token {
		// The lease expired before we got here: nothing to release, keep waiting.
		delete(s.dead, o.Interaction)
		s.mu.Unlock()
		return router.OfferDead
	}
	if !ok || State(ix.State) != StateQueued {
		s.mu.Unlock()
		// The interaction ended while the router reserved: give the agent back.
		if err := s.agents.Release(o.Grant.Token); err != nil && !errors.Is(err, agent.ErrLeaseEnded) {
			s.logger.Warn("release stale offer", "interaction", o.Interaction, "err", err)
		}
		return router.OfferGone
	}
	ix.token = o.Grant.Token
	ix.Agent = o.Grant.Token.Agent
	_, err := s.moveLocked(ix, StateOffered, "")
	snap := ix.Interaction
	s.mu.Unlock()
	if d := s.deliverers[snap.Channel]; d != nil && err == nil {
		go d.Deliver(snap, o.Grant.Token)
	}
	if err != nil {
		s.logger.Error("offer", "interaction", o.Interaction, "err", err)
		if rerr := s.agents.Release(o.Grant.Token); rerr != nil && !errors.Is(rerr, agent.ErrLeaseEnded) {
			s.logger.Warn("release unrecorded offer", "interaction", o.Interaction, "err", rerr)
		}
		return router.OfferGone
	}
	return router.OfferTaken
}

// Accept is the agent taking the offer. Accepting again what the agent already
// holds is a no-op.
func (s *Service) Accept(id core.InteractionID, by core.AgentID) (uint64, error) {
	if s.holds(id, by, StateConnected) {
		return 0, nil
	}
	ix, tok, err := s.held(id, by, StateOffered)
	if err != nil {
		return 0, err
	}
	if err := s.agents.Accept(tok); err != nil {
		return 0, fmt.Errorf("interaction: accept %s: %w", id, err)
	}
	s.mu.Lock()
	if State(ix.State) != StateOffered || ix.token != tok {
		// Abandoned or re-queued while the owner accepted: the abandon path
		// releases the lease; the agent's accept came too late.
		state := ix.State
		s.mu.Unlock()
		return 0, fmt.Errorf("interaction: accept %s: became %s meanwhile: %w", id, state, ErrWrongState)
	}
	now := s.clock.Now()
	ix.AnsweredAt = now.UTC()
	wait := now.Sub(ix.enqueued)
	seq, err := s.moveLocked(ix, StateConnected, "")
	q := ix.Queue
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	s.router.RecordAnswered(q, wait)
	return seq, nil
}

// Reject is the agent declining the offer: the interaction goes back to its place in the queue.
func (s *Service) Reject(id core.InteractionID, by core.AgentID) (uint64, error) {
	_, tok, err := s.held(id, by, StateOffered)
	if err != nil {
		return 0, err
	}
	if err := s.agents.Reject(tok); err != nil {
		return 0, fmt.Errorf("interaction: reject %s: %w", id, err)
	}
	return s.requeue(id, tok, "rejected by "+string(by))
}

// Complete ends the agent's work on a connected interaction; wrap-up follows.
// Completing again during wrap-up is a no-op.
func (s *Service) Complete(id core.InteractionID, by core.AgentID) (uint64, error) {
	return s.CompleteWithReason(id, by, "")
}

// CompleteWithReason is Complete recording why the conversation ended (the
// caller hung up, the media stopped, ...) in the interaction's history.
func (s *Service) CompleteWithReason(id core.InteractionID, by core.AgentID, reason string) (uint64, error) {
	if s.holds(id, by, StateWrapUp) {
		return 0, nil
	}
	ix, tok, err := s.held(id, by, StateConnected)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	seq, err := s.moveLocked(ix, StateWrapUp, reason)
	wrap := s.wrapUpLocked(ix)
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if err := s.agents.Complete(tok, wrap); err != nil {
		return 0, fmt.Errorf("interaction: complete %s: %w", id, err)
	}
	return seq, nil
}

// Abandon ends an interaction at the customer's or an integrator's request.
func (s *Service) Abandon(id core.InteractionID, reason string) (uint64, error) {
	return s.leave(id, StateAbandoned, reason)
}

// HandOver ends a waiting interaction that a peer's queue took (queue
// overflow to a peer): an offer in progress is withdrawn. It is not counted
// as abandoned.
func (s *Service) HandOver(id core.InteractionID, reason string) (uint64, error) {
	return s.leave(id, StateHandedOver, reason)
}

// leave ends a waiting interaction in state to (abandoned or handed over);
// a connected one is completed instead.
func (s *Service) leave(id core.InteractionID, to State, reason string) (uint64, error) {
	s.mu.Lock()
	ix, ok := s.live[id]
	if !ok {
		s.mu.Unlock()
		return 0, fmt.Errorf("interaction: %s %s: %w", to, id, ErrNotFound)
	}
	state, tok := State(ix.State), ix.token
	var ch core.Channel
	var seq uint64
	var err error
	var wait time.Duration
	switch {
	case state == StateQueued || state == StateOffered:
		wait = s.clock.Now().Sub(ix.enqueued)
		seq, err = s.moveLocked(ix, to, reason)
		ch = ix.Channel
	case state == StateConnected && to == StateAbandoned:
		holder := ix.Agent
		s.mu.Unlock()
		return s.Complete(id, holder)
	default:
		s.mu.Unlock()
		return 0, fmt.Errorf("interaction: %s %s in %s: %w", to, id, state, ErrWrongState)
	}
	q := ix.Queue
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if state == StateQueued {
		s.router.Remove(id)
	} else {
		if err := s.agents.Release(tok); err != nil && !errors.Is(err, agent.ErrLeaseEnded) {
			s.logger.Warn("release on abandon", "interaction", id, "err", err)
		}
		if d := s.deliverers[ch]; d != nil {
			go d.Withdraw(id, tok)
		}
	}
	if to == StateAbandoned {
		s.router.RecordAbandoned(q, wait)
	}
	return seq, nil
}

// TimedOut ends interactions the router dropped at their queue's max wait.
func (s *Service) TimedOut(w router.Waiting) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ix, ok := s.live[w.ID]; ok && State(ix.State) == StateQueued {
		if _, err := s.moveLocked(ix, StateTimedOut, "max wait exceeded"); err != nil {
			s.logger.Error("time out", "interaction", w.ID, "err", err)
		}
	}
}

// LeaseEnded follows leases the agents' owner ended on its own (agent.Observer).
func (s *Service) LeaseEnded(e agent.LeaseEnd) {
	switch e.Outcome {
	case agent.OutcomeExpired:
		if _, err := s.requeue(e.Interaction, e.Token, "offer expired"); err != nil && !errors.Is(err, ErrWrongState) {
			s.logger.Warn("requeue after expiry", "interaction", e.Interaction, "err", err)
		}
		s.markDead(e.Interaction, e.Token)
	case agent.OutcomeRevoked:
		s.mu.Lock()
		ix, ok := s.live[e.Interaction]
		state := StateEnded
		if ok {
			state = State(ix.State)
		}
		s.mu.Unlock()
		switch state {
		case StateQueued:
			s.markDead(e.Interaction, e.Token)
		case StateOffered:
			if _, err := s.requeue(e.Interaction, e.Token, "agent logged out"); err != nil && !errors.Is(err, ErrWrongState) {
				s.logger.Warn("requeue after revoke", "interaction", e.Interaction, "err", err)
			}
			s.markDead(e.Interaction, e.Token)
		case StateConnected, StateWrapUp:
			s.end(e.Interaction, e.Token, "agent logged out")
		}
	case agent.OutcomeWrapUpEnded:
		s.end(e.Interaction, e.Token, "")
	}
}

// markDead remembers a lease that ended while its interaction was still queued in
// the Service: the router's Offer for it, if it comes, is refused.
func (s *Service) markDead(id core.InteractionID, tok agent.Token) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ix, ok := s.live[id]; ok && State(ix.State) == StateQueued && ix.token != tok {
		s.dead[id] = tok
	}
}

func (s *Service) end(id core.InteractionID, tok agent.Token, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, ok := s.live[id]
	if !ok || ix.token != tok {
		return
	}
	if State(ix.State) == StateConnected {
		if _, err := s.moveLocked(ix, StateWrapUp, reason); err != nil {
			s.logger.Error("end", "interaction", id, "err", err)
			return
		}
	}
	if State(ix.State) == StateWrapUp {
		ix.EndedAt = s.clock.Now().UTC()
		if _, err := s.moveLocked(ix, StateEnded, reason); err != nil {
			s.logger.Error("end", "interaction", id, "err", err)
		}
	}
}

// requeue puts an offered interaction back in its queue at its original place.
func (s *Service) requeue(id core.InteractionID, tok agent.Token, reason string) (uint64, error) {
	s.mu.Lock()
	ix, ok := s.live[id]
	if !ok {
		s.mu.Unlock()
		return 0, fmt.Errorf("interaction: requeue %s: %w", id, ErrNotFound)
	}
	if State(ix.State) != StateOffered || ix.token != tok {
		s.mu.Unlock()
		return 0, fmt.Errorf("interaction: requeue %s in %s: %w", id, ix.State, ErrWrongState)
	}
	ch := ix.Channel
	_, configured := s.queues[ix.Queue]
	if ix.Queue == "" || !configured {
		// A direct offer has no queue to go back to, nor does an offer whose
		// queue was removed from the configuration meanwhile: it ends.
		why := "direct offer not taken: " + reason
		if ix.Queue != "" {
			why = ReasonQueueRemoved + ": offer not taken: " + reason
		}
		seq, err := s.moveLocked(ix, StateFailed, why)
		s.mu.Unlock()
		if d := s.deliverers[ch]; d != nil {
			go d.Withdraw(id, tok)
		}
		return seq, err
	}
	ix.token, ix.Agent = agent.Token{}, ""
	seq, err := s.moveLocked(ix, StateQueued, reason)
	enq := ix.enqueued
	s.mu.Unlock()
	if d := s.deliverers[ch]; d != nil {
		go d.Withdraw(id, tok)
	}
	if err != nil {
		return 0, err
	}
	if err := s.enqueue(ix, enq); err != nil {
		return s.fail(id, "requeue refused: "+err.Error())
	}
	return seq, nil
}

func (s *Service) fail(id core.InteractionID, reason string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, ok := s.live[id]
	if !ok {
		return 0, ErrNotFound
	}
	return s.moveLocked(ix, StateFailed, reason)
}

// holds reports whether agent by holds interaction id in one of the states.
func (s *Service) holds(id core.InteractionID, by core.AgentID, states ...State) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, ok := s.live[id]
	if !ok || ix.Agent != by {
		return false
	}
	for _, st := range states {
		if State(ix.State) == st {
			return true
		}
	}
	return false
}

// held returns the interaction if it is in state want and held by agent by.
func (s *Service) held(id core.InteractionID, by core.AgentID, want State) (*live, agent.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, ok := s.live[id]
	if !ok {
		return nil, agent.Token{}, fmt.Errorf("interaction: %s: %w", id, ErrNotFound)
	}
	if ix.Agent != by {
		return nil, agent.Token{}, fmt.Errorf("interaction: %s: %w", id, ErrNotYours)
	}
	if State(ix.State) != want {
		return nil, agent.Token{}, fmt.Errorf("interaction: %s is %s, want %s: %w", id, ix.State, want, ErrWrongState)
	}
	return ix, ix.token, nil
}

// moveLocked applies a lifecycle transition and emits its event.
func (s *Service) moveLocked(ix *live, to State, reason string) (uint64, error) {
	from := State(ix.State)
	if !CanMove(from, to) {
		return 0, &TransitionError{From: from, To: to}
	}
	ix.State = string(to)
	ix.Previous = string(from)
	ix.Reason = reason
	if to.Terminal() && ix.EndedAt.IsZero() {
		ix.EndedAt = s.clock.Now().UTC()
	}
	seq, err := s.emitLocked(ix, string(from))
	if to.Terminal() {
		delete(s.live, ix.ID)
		delete(s.dead, ix.ID)
		if ix.IdempotencyKey != "" {
			delete(s.keys, ix.IdempotencyKey)
		}
		if d := s.deliverers[ix.Channel]; d != nil {
			go d.Ended(ix.ID, string(to))
		}
	}
	if s.draining && s.idle != nil && s.withAgentsLocked() == 0 {
		close(s.idle)
		s.idle = nil
	}
	return seq, err
}

func (s *Service) emitLocked(ix *live, previous string) (uint64, error) {
	snap := ix.Interaction
	snap.Previous = previous
	if ix.Attributes != nil {
		snap.Attributes = make(map[string]string, len(ix.Attributes))
		for k, v := range ix.Attributes {
			snap.Attributes[k] = v
		}
	}
	seq, err := s.log.Append(events.Event{
		Time: s.clock.Now().UTC(), Type: events.TypeInteraction, Interaction: ix.ID, Queue: ix.Queue, Agent: ix.Agent, Data: snap,
	})
	if err != nil {
		return 0, fmt.Errorf("interaction: record %s: %w", ix.ID, err)
	}
	return seq, nil
}

// Get returns a live interaction's snapshot.
func (s *Service) Get(id core.InteractionID) (events.Interaction, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, ok := s.live[id]
	if !ok {
		return events.Interaction{}, false
	}
	return ix.Interaction, true
}

// Held returns the interactions currently offered to or held by an agent.
func (s *Service) Held(by core.AgentID) []events.Interaction {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []events.Interaction
	for _, ix := range s.live {
		if ix.Agent == by {
			out = append(out, ix.Interaction)
		}
	}
	return out
}

// Live returns how many interactions are not yet ended.
func (s *Service) Live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.live)
}

// withAgentsLocked counts interactions offered to or held by an agent.
func (s *Service) withAgentsLocked() int {
	n := 0
	for _, ix := range s.live {
		switch State(ix.State) {
		case StateOffered, StateConnected, StateWrapUp:
			n++
		}
	}
	return n
}

// Drain stops accepting new interactions and waits until every interaction that is
// with an agent (offered, connected, wrap-up) ends, or ctx ends. Queued ones stay
// queued — they are durable and resume at the next start; the caller stops the
// router from offering them.
func (s *Service) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	n := s.withAgentsLocked()
	if n == 0 {
		s.mu.Unlock()
		return nil
	}
	if s.idle == nil {
		s.idle = make(chan struct{})
	}
	idle := s.idle
	s.mu.Unlock()
	s.logger.Info("draining: waiting for interactions with agents", "count", n)
	select {
	case <-idle: // every interaction with an agent ended
		return nil
	case <-ctx.Done(): // drain timeout
		s.mu.Lock()
		n = s.withAgentsLocked()
		s.mu.Unlock()
		return fmt.Errorf("interaction: drain with %d still with agents: %w", n, ctx.Err())
	}
}

// Recover re-queues interactions a previous run left open. Queued and offered
// tasks and callbacks keep their place in the queue; a call or chat cannot resume
// (its caller's session died with the previous run) and is failed; connected ones
// are failed, their agent's session having died too.
func (s *Service) Recover(open []events.Interaction) error {
	qs := s.queueMap()
	for _, old := range open {
		ix := &live{Interaction: old}
		if old.Channel == core.ChannelVoice || old.Channel == core.ChannelChat {
			ix.State = string(StateCreated)
			if State(old.State) == StateWrapUp || State(old.State) == StateConnected {
				ix.State = string(StateConnected)
			}
			s.mu.Lock()
			s.live[ix.ID] = ix
			_, err := s.moveLocked(ix, StateFailed, "node restarted: the "+string(old.Channel)+" session was lost")
			s.mu.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		switch State(old.State) {
		case StateCreated, StateQueued, StateOffered:
			ix.Agent = ""
			if _, ok := qs[old.Queue]; !ok {
				ix.State = string(StateCreated)
				s.mu.Lock()
				s.live[ix.ID] = ix
				_, err := s.moveLocked(ix, StateFailed, "queue no longer configured")
				s.mu.Unlock()
				if err != nil {
					return err
				}
				continue
			}
			ix.State = string(StateQueued)
			s.mu.Lock()
			s.live[ix.ID] = ix
			if ix.IdempotencyKey != "" {
				s.keys[ix.IdempotencyKey] = ix.ID
			}
			_, err := s.emitLocked(ix, old.State)
			s.mu.Unlock()
			if err != nil {
				return err
			}
			enq := old.EnqueuedAt
			if enq.IsZero() {
				enq = old.CreatedAt
			}
			ix.enqueued = enq
			if err := s.enqueue(ix, enq); err != nil {
				if _, ferr := s.fail(ix.ID, "recovery: "+err.Error()); ferr != nil {
					return ferr
				}
			}
		case StateWrapUp:
			// The work was done; only the wrap-up timer died with the previous run.
			s.mu.Lock()
			s.live[ix.ID] = ix
			ix.EndedAt = s.clock.Now().UTC()
			_, err := s.moveLocked(ix, StateEnded, "node restarted during wrap-up")
			s.mu.Unlock()
			if err != nil {
				return err
			}
		default:
			ix.State = string(StateConnected)
			s.mu.Lock()
			s.live[ix.ID] = ix
			_, err := s.moveLocked(ix, StateFailed, "node restarted while "+old.State)
			s.mu.Unlock()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// NewID returns a fresh interaction id: "ix-" and 20 hex digits, the first 11
// the creation time in milliseconds since the Unix epoch (44 bits: until the
// year 2527), the last 9 a 36-bit number drawn at random at each new
// millisecond and incremented within one. Ids sort by creation time, so the
// store's interactions table and its id-keyed indexes grow at one end instead
// of touching a random page per new interaction (issue 6); the ids of one
// process never repeat and always increase (a clock stepping back does not
// reorder them); ids made by two nodes in the same millisecond collide with a
// chance of 1 in 2^36. An id is a name, not a secret.
func NewID() core.InteractionID {
	return ids.next(time.Now())
}

// ids makes the process's interaction ids.
var ids idGenerator

// idGenerator makes increasing ids; safe for concurrent use.
type idGenerator struct {
	mu   sync.Mutex
	ms   uint64 // the millisecond of the last id
	tail uint64 // its 36-bit tail
}

const idTailBits = 36

func (g *idGenerator) next(now time.Time) core.InteractionID {
	ms := uint64(now.UnixMilli()) & (1<<44 - 1)
	g.mu.Lock()
	if ms > g.ms {
		g.ms, g.tail = ms, randomTail()
	} else if g.tail++; g.tail >= 1<<idTailBits {
		// Same millisecond (or the clock stepped back) and the tail is used
		// up: borrow the next millisecond.
		g.ms, g.tail = g.ms+1, randomTail()
	}
	ms, tail := g.ms, g.tail
	g.mu.Unlock()
	return core.InteractionID(fmt.Sprintf("ix-%011x%09x", ms, tail))
}

// randomTail draws a tail in the lower half of its range, leaving room to
// increment within the millisecond.
func randomTail() uint64 {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("interaction: crypto/rand: %v", err)) // never happens on Linux
	}
	return binary.BigEndian.Uint64(b[:]) & (1<<(idTailBits-1) - 1)
}
