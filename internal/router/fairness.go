package router

import (
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

// Fairness lets a cluster decide which node's waiting interaction gets an agent
// that frees up: the node whose best waiting interaction ranks first (priority,
// then age) anywhere in the cluster (ADR 0006). Alone, a router has none.
type Fairness interface {
	// Defer reports whether an interaction waiting at another node, in one of
	// queues for channel ch, ranks ahead of one with priority prio enqueued at
	// enqueued: this node then leaves the freed agent to that node.
	Defer(queues []core.QueueID, ch core.Channel, prio int, enqueued time.Time) bool
}

// headsScan bounds the waiters Heads looks at per queue.
const headsScan = 64

// Head is the best waiting interaction of one queue and channel.
type Head struct {
	Queue      core.QueueID `json:"queue"`
	Channel    core.Channel `json:"channel"`
	Priority   int          `json:"priority"`
	EnqueuedAt time.Time    `json:"enqueued_at"`
}

// Heads lists the best waiting interaction of every queue, per channel (what
// this node tells the others for fairness).
func (r *Router) Heads() []Head {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.draining {
		return nil // a draining node takes no agents: others must not wait for it
	}
	var out []Head
	for _, q := range r.order {
		var seen [core.NumChannels]bool
		left := core.NumChannels
		// Sorted: the first of a channel is its best. The scan is bounded (this runs
		// under the lock, every few ms): a channel absent from the first
		// headsScan waiters is left out.
		for _, w := range q.waiting[:min(len(q.waiting), headsScan)] {
			i := w.Channel.Index()
			if i < 0 || seen[i] {
				continue
			}
			seen[i] = true
			out = append(out, Head{Queue: q.cfg.ID, Channel: w.Channel, Priority: w.Priority, EnqueuedAt: w.EnqueuedAt})
			if left--; left == 0 {
				break
			}
		}
	}
	return out
}

// Recheck offers every free agent the best waiting work again: after another
// node's heads changed, an agent this node left to it may be this node's again.
func (r *Router) Recheck() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.waiters) == 0 {
		return
	}
	for _, v := range r.byIndex {
		r.agentFreedLocked(v)
	}
}

// queueIDs lists the queues v serves (for Fairness.Defer).
func (v *agentView) queueIDs() []core.QueueID {
	out := make([]core.QueueID, 0, len(v.queues))
	for _, qs := range v.queues {
		out = append(out, qs.q.cfg.ID)
	}
	return out
}
