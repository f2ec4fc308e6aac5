package interaction

import (
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// ErrAgentUnavailable is a direct offer the target agent's owner denied (not
// logged in, not ready, at capacity); errors.As finds the agent.DenyError.
var ErrAgentUnavailable = errors.New("agent unavailable")

// Target is where a blind transfer sends an interaction: a queue, or one agent.
// Exactly one is set.
type Target struct {
	Queue core.QueueID
	Agent core.AgentID
}

func (t Target) String() string {
	if t.Agent != "" {
		return "agent " + string(t.Agent)
	}
	return "queue " + string(t.Queue)
}

// wrapUpLocked is the wrap-up an agent gets after ix: its queue's, none for a
// queue-less (direct) interaction, the default one when its queue has been
// removed since.
func (s *Service) wrapUpLocked(ix *live) time.Duration {
	if ix.Queue == "" {
		return 0
	}
	qi, ok := s.queues[ix.Queue]
	if !ok {
		return config.DefaultWrapUp.D()
	}
	return qi.cfg.WrapUpTime()
}

// offerTimeout is how long a direct offer of an interaction of queue q (""
// for none, or one since removed: the default) may ring. Call without s.mu.
func (s *Service) offerTimeout(q core.QueueID) time.Duration {
	if qi, ok := s.queueMap()[q]; ok && qi.cfg.OfferTimeout != 0 {
		return qi.cfg.OfferTimeout.D()
	}
	return config.DefaultOfferTimeout.D()
}

// Direct creates an interaction offered straight to agent to, without a queue
// (an internal call to an agent's DN). The agent's owner must grant the
// reservation, or Direct fails with ErrAgentUnavailable and nothing is recorded.
// If the agent does not take the offer the interaction fails: there is no queue
// to go back to.
func (s *Service) Direct(req CreateRequest, to core.AgentID) (events.Interaction, uint64, error) {
	if req.Channel.Index() < 0 {
		return events.Interaction{}, 0, fmt.Errorf("interaction: direct: %w: unknown channel %q", ErrBadRequest, req.Channel)
	}
	id := req.ID
	if id == "" {
		id = NewID()
	}
	s.mu.Lock()
	draining := s.draining
	_, dup := s.live[id]
	s.mu.Unlock()
	switch {
	case draining:
		return events.Interaction{}, 0, fmt.Errorf("interaction: direct: %w", ErrDraining)
	case dup:
		return events.Interaction{}, 0, fmt.Errorf("interaction: direct: %w: id %s in use", ErrBadRequest, id)
	}
	g, err := s.agents.Reserve(agent.ReserveRequest{Agent: to, Interaction: id, Channel: req.Channel, TTL: s.offerTimeout("")})
	if err != nil {
		return events.Interaction{}, 0, fmt.Errorf("interaction: direct to %s: %w: %w", to, ErrAgentUnavailable, err)
	}
	now := s.clock.Now()
	ix := &live{Interaction: events.Interaction{
		ID: id, Channel: req.Channel, State: string(StateCreated), CreatedAt: now.UTC(), Attributes: req.Attributes,
	}, enqueued: now}
	s.mu.Lock()
	s.live[id] = ix
	seq, err := s.emitLocked(ix, "")
	if err == nil {
		ix.token, ix.Agent = g.Token, to
		seq, err = s.moveLocked(ix, StateOffered, "direct")
	}
	if err != nil {
		delete(s.live, id)
	}
	snap := ix.Interaction
	s.mu.Unlock()
	if err != nil {
		s.releaseQuietly(g.Token, id)
		return events.Interaction{}, 0, err
	}
	if d := s.deliverers[snap.Channel]; d != nil {
		go d.Deliver(snap, g.Token)
	}
	return snap, seq, nil
}

// Transfer hands a connected interaction held by agent by over to t (a blind
// transfer): by goes to wrap-up at once and the interaction is queued in t.Queue
// (a new place at the back of its priority, as a new arrival there) or offered
// to t.Agent directly. A transfer to an agent who cannot be reserved fails with
// ErrAgentUnavailable and changes nothing (the call stays with by); if the agent
// does not answer, the interaction goes back to its queue at its original place.
func (s *Service) Transfer(id core.InteractionID, by core.AgentID, t Target) (uint64, error) {
	if (t.Queue == "") == (t.Agent == "") || t.Agent == by {
		return 0, fmt.Errorf("interaction: transfer %s: %w: want one target other than the agent", id, ErrBadRequest)
	}
	ix, tok, err := s.held(id, by, StateConnected)
	if err != nil {
		return 0, err
	}
	var qi queueInfo
	var g agent.Grant
	if t.Queue != "" {
		qs := s.queueMap()
		if _, ok := qs[t.Queue]; !ok {
			return 0, fmt.Errorf("interaction: transfer %s to %s: %w", id, t.Queue, ErrUnknownQueue)
		}
		if t.Queue, qi, err = openQueue(qs, t.Queue, s.clock.Now()); err != nil {
			return 0, fmt.Errorf("interaction: transfer %s: %w", id, err)
		}
	} else {
		s.mu.Lock()
		q := ix.Queue
		s.mu.Unlock()
		if g, err = s.agents.Reserve(agent.ReserveRequest{Agent: t.Agent, Interaction: id, Channel: ix.Channel, TTL: s.offerTimeout(q)}); err != nil {
			return 0, fmt.Errorf("interaction: transfer %s to %s: %w: %w", id, t.Agent, ErrAgentUnavailable, err)
		}
	}
	now := s.clock.Now()
	s.mu.Lock()
	if State(ix.State) != StateConnected || ix.token != tok {
		state := ix.State
		s.mu.Unlock()
		if !g.Token.IsZero() {
			s.releaseQuietly(g.Token, id)
		}
		return 0, fmt.Errorf("interaction: transfer %s: became %s meanwhile: %w", id, state, ErrWrongState)
	}
	wrap := s.wrapUpLocked(ix)
	ix.Attributes = maps.Clone(ix.Attributes)
	if ix.Attributes == nil {
		ix.Attributes = map[string]string{}
	}
	ix.Attributes["transferred_by"] = string(by)
	reason := "transferred by " + string(by) + " to " + t.String()
	var seq uint64
	if t.Queue != "" {
		ix.token, ix.Agent = agent.Token{}, ""
		ix.Queue, ix.Priority = t.Queue, qi.cfg.Priority
		ix.EnqueuedAt, ix.enqueued = now.UTC(), now
		seq, err = s.moveLocked(ix, StateQueued, reason)
	} else {
		ix.token, ix.Agent = g.Token, t.Agent
		seq, err = s.moveLocked(ix, StateOffered, reason)
	}
	snap := ix.Interaction
	s.mu.Unlock()
	if cerr := s.agents.Complete(tok, wrap); cerr != nil && !errors.Is(cerr, agent.ErrLeaseEnded) {
		s.logger.Warn("complete the transferring agent", "interaction", id, "agent", by, "err", cerr)
	}
	if err != nil {
		return 0, err
	}
	if t.Queue != "" {
		if err := s.enqueue(ix, now); err != nil {
			// The agent has already let go: the interaction cannot be kept.
			if _, ferr := s.fail(id, "transfer refused by queue: "+err.Error()); ferr != nil {
				s.logger.Warn("fail a refused transfer", "interaction", id, "err", ferr)
			}
			return 0, fmt.Errorf("interaction: transfer %s to %s: %w: %w", id, t.Queue, ErrBusy, err)
		}
		return seq, nil
	}
	if d := s.deliverers[snap.Channel]; d != nil {
		go d.Deliver(snap, g.Token)
	}
	return seq, nil
}

// releaseQuietly gives back a reservation nobody will use.
func (s *Service) releaseQuietly(tok agent.Token, id core.InteractionID) {
	if err := s.agents.Release(tok); err != nil && !errors.Is(err, agent.ErrLeaseEnded) {
		s.logger.Warn("release unused reservation", "interaction", id, "err", err)
	}
}
