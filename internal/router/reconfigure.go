package router

import (
	"fmt"

	"github.com/ccmesh/ccmesh/internal/config"
)

// Reconfigure replaces the queues and agents the router routes with, keeping
// what is live:
//   - an agent still configured keeps her view of the owner's state (fence, epoch,
//     version, readiness, load, idle time, and the capacities of the last state
//     applied; the configured ones until then); her skills, and so the queues she
//     serves, come from the new configuration. A new agent starts unavailable
//     until her owner's next state, as in New; a removed one leaves the view.
//   - a queue still configured (same ID) keeps its waiting interactions in their
//     order and its statistics; round-robin resumes after the same agent if she
//     is still configured. The interactions waiting in a removed queue leave the
//     router and are returned as dropped: the caller ends them.
//
// The configuration is compiled first, outside the lock; if it is invalid (an
// overflow step adding an unknown queue, a duplicate id) nothing changes and the
// error is returned. After the swap, under the same lock hold, every free agent is
// offered the best waiting interaction it is now eligible for, as when an agent
// frees up: Reserve and Offer may be called before Reconfigure returns.
//
// Safe for concurrent use; it may block while owners answer reservations.
func (r *Router) Reconfigure(queues []config.Queue, agents []config.Agent) (dropped []Waiting, err error) {
	t, err := buildTopology(queues, agents)
	if err != nil {
		return nil, fmt.Errorf("router: reconfigure: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range t.byIndex {
		if old, ok := r.agents[v.id]; ok {
			v.keepState(old)
		}
	}
	for _, q := range t.order {
		old, ok := r.queues[q.cfg.ID]
		if !ok {
			continue
		}
		q.waiting, q.stats = old.waiting, old.stats
		if old.rrLast >= 0 && old.rrLast < len(r.byIndex) {
			if v, ok := t.agents[r.byIndex[old.rrLast].id]; ok {
				q.rrLast = v.index
			}
		}
		last := len(q.steps) - 1
		for _, w := range q.waiting {
			w.q = q
			w.lastStep = min(w.lastStep, last)
		}
		old.waiting = nil
	}
	for _, old := range r.order {
		if _, kept := t.queues[old.cfg.ID]; kept {
			continue
		}
		for _, w := range old.waiting {
			delete(r.waiters, w.ID)
			dropped = append(dropped, w.Waiting)
		}
		old.waiting = nil
	}
	r.queues, r.order, r.agents, r.byIndex = t.queues, t.order, t.agents, t.byIndex
	r.scratch = nil // it may hold views of the old topology
	r.logger.Info("router reconfigured", "queues", len(t.order), "agents", len(t.byIndex), "dropped", len(dropped))
	// Agents that became eligible for a queue, or queues that gained agents: give
	// every free agent its best waiting interaction, as when an agent frees up.
	for _, v := range r.byIndex {
		r.agentFreedLocked(v)
	}
	return dropped, nil
}

// keepState copies old's view of the owner's state into v (a fresh view of the
// same agent under a new configuration).
func (v *agentView) keepState(old *agentView) {
	v.fence, v.epoch, v.version = old.fence, old.epoch, old.version
	v.ready, v.used, v.idleSince, v.unreachable = old.ready, old.used, old.idleSince, old.unreachable
	if old.stated {
		v.stated, v.cap = true, old.cap
	}
}
