package interaction

import (
	"fmt"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/router"
)

// ReasonQueueRemoved is the end reason of interactions whose queue was removed
// from the configuration while they waited in it.
const ReasonQueueRemoved = "queue_removed"

// Reconfigure replaces the queues this node hosts. Every queue's business
// hours are compiled first; on an error nothing changes and the error names
// the queue ("interaction: reconfigure: queue q1: ...").
//
// New interactions (Create, Transfer to a queue) see the new queues at once.
// Live interactions of a removed queue keep going: an offered or connected one
// continues with its agent (wrap-up and offer timeout falling back to the
// defaults), one whose offer is not taken fails with reason queue_removed, and
// the queued ones are ended by QueueRemoved once the router drops them.
// Safe for concurrent use.
func (s *Service) Reconfigure(queues []config.Queue) error {
	qs, err := compileQueues(queues)
	if err != nil {
		return fmt.Errorf("interaction: reconfigure: %w", err)
	}
	s.mu.Lock()
	old := s.queues
	s.queues = qs
	s.mu.Unlock()
	added, removed := 0, 0
	for id := range qs {
		if _, ok := old[id]; !ok {
			added++
		}
	}
	for id := range old {
		if _, ok := qs[id]; !ok {
			removed++
		}
	}
	s.logger.Info("queues reconfigured", "queues", len(qs), "added", added, "removed", removed)
	return nil
}

// QueueRemoved ends the interactions the router dropped from a queue that was
// removed from the configuration: each one still queued in that queue becomes
// failed with reason queue_removed, through the usual end path (its event is
// recorded and its channel's Deliverer hears Ended, so the edge ends the
// customer's session). Interactions no longer queued there (ended, offered,
// moved to another queue meanwhile) are left alone. Call it without the
// router's lock held; safe for concurrent use.
func (s *Service) QueueRemoved(dropped []router.Waiting) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range dropped {
		ix, ok := s.live[w.ID]
		if !ok || State(ix.State) != StateQueued || ix.Queue != w.Queue {
			continue
		}
		if _, err := s.moveLocked(ix, StateFailed, ReasonQueueRemoved); err != nil {
			s.logger.Error("end an interaction of a removed queue", "interaction", w.ID, "queue", w.Queue, "err", err)
		}
	}
}

// HeldTokens returns the lease token of every live interaction that holds one
// (offered, connected, in wrap-up), by interaction: what this node holds at
// the agents' owners, for reconciling them after a link was down.
func (s *Service) HeldTokens() map[core.InteractionID]agent.Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[core.InteractionID]agent.Token{}
	for id, ix := range s.live {
		if !ix.token.IsZero() {
			out[id] = ix.token
		}
	}
	return out
}
