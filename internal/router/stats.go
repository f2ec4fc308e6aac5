package router

import (
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

// QueueStats are a queue's live figures. Counters run since the node started.
type QueueStats struct {
	Queue    core.QueueID `json:"queue"`
	Name     string       `json:"name"`
	Strategy string       `json:"strategy"`
	// Waiting is how many interactions wait now; LongestWaitMillis the oldest one's wait.
	Waiting           int   `json:"waiting"`
	LongestWaitMillis int64 `json:"longest_wait_ms"`
	// AgentsEligible have the queue's skills; AgentsReady are ready with free capacity
	// on some channel.
	AgentsEligible int `json:"agents_eligible"`
	AgentsReady    int `json:"agents_ready"`
	// Offered, Answered, Abandoned and TimedOut count interactions.
	Offered   uint64 `json:"offered"`
	Answered  uint64 `json:"answered"`
	Abandoned uint64 `json:"abandoned"`
	TimedOut  uint64 `json:"timed_out"`
	// ServiceLevelPercent is answered within the threshold over answered, abandoned
	// after the threshold and timed out (abandons inside the threshold do not count);
	// -1 when nothing counted yet.
	ServiceLevelPercent float64 `json:"service_level_percent"`
	ServiceLevelTarget  int     `json:"service_level_target_percent"`
	ThresholdMillis     int64   `json:"service_level_threshold_ms"`
}

// Stats returns the figures of one queue.
func (r *Router) Stats(id core.QueueID) (QueueStats, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q, ok := r.queues[id]
	if !ok {
		return QueueStats{}, false
	}
	return r.statsLocked(q, r.clock.Now()), true
}

// AllStats returns the figures of every queue in configuration order.
func (r *Router) AllStats() []QueueStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clock.Now()
	out := make([]QueueStats, 0, len(r.order))
	for _, q := range r.order {
		out = append(out, r.statsLocked(q, now))
	}
	return out
}

func (r *Router) statsLocked(q *queue, now time.Time) QueueStats {
	s := QueueStats{
		Queue: q.cfg.ID, Name: q.cfg.Name, Strategy: string(q.cfg.Strategy), Waiting: len(q.waiting),
		AgentsEligible: len(q.steps[0].eligible), Offered: q.stats.offered, Answered: q.stats.answered,
		Abandoned: q.stats.abandoned, TimedOut: q.stats.timedOut, ServiceLevelPercent: -1,
		ServiceLevelTarget: q.cfg.ServiceLevel.TargetPercent, ThresholdMillis: q.cfg.ServiceLevel.Threshold.D().Milliseconds(),
	}
	for _, w := range q.waiting {
		if d := now.Sub(w.EnqueuedAt).Milliseconds(); d > s.LongestWaitMillis {
			s.LongestWaitMillis = d
		}
	}
	for _, v := range q.steps[0].eligible {
		for ci := 0; ci < core.NumChannels; ci++ {
			if v.free(ci) {
				s.AgentsReady++
				break
			}
		}
	}
	// Timed-out interactions waited past their queue's max wait: they count against
	// the service level like abandons after the threshold.
	if den := q.stats.answered + q.stats.abandonedAfterSL + q.stats.timedOut; den > 0 {
		s.ServiceLevelPercent = 100 * float64(q.stats.answeredInSL) / float64(den)
	}
	return s
}

// RecordAnswered counts an interaction of the queue answered after waiting wait.
func (r *Router) RecordAnswered(id core.QueueID, wait time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if q, ok := r.queues[id]; ok {
		q.stats.answered++
		if wait <= q.cfg.ServiceLevel.Threshold.D() {
			q.stats.answeredInSL++
		}
	}
}

// RecordAbandoned counts an interaction of the queue abandoned after waiting wait.
func (r *Router) RecordAbandoned(id core.QueueID, wait time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if q, ok := r.queues[id]; ok {
		q.stats.abandoned++
		if wait > q.cfg.ServiceLevel.Threshold.D() {
			q.stats.abandonedAfterSL++
		}
	}
}

// Waiting returns how many interactions wait in all queues.
func (r *Router) Waiting() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.waiters)
}
