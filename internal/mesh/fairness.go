package mesh

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/router"
)

// Heads are published every headsEvery when they changed, and at least every
// headsRefresh; heads older than headsStale are ignored (a member that went
// quiet must not hold agents back).
const (
	// FairnessTolerance is how much earlier another member's interaction must
	// have been enqueued (at the same priority) for this node to leave a freed
	// agent to it: within it, whichever member sees the agent first takes it.
	// It absorbs the heads' staleness (headsEvery plus transit), so members do
	// not defer to interactions already served.
	FairnessTolerance = 100 * time.Millisecond
	headsEvery        = 20 * time.Millisecond
	headsRefresh      = 500 * time.Millisecond
	headsStale        = 2 * time.Second
	recheckEvery      = 250 * time.Millisecond
)

// HeadsSource is the router's side of fairness.
type HeadsSource interface {
	Heads() []router.Head
	Recheck()
}

type headsMsg struct {
	From  core.NodeID   `json:"from"`
	Heads []router.Head `json:"heads"`
	// FeedGen and FeedSeq are the sender's feed position: a follower that is
	// behind on two heads in a row lost feed messages and resyncs (a quiet
	// owner's feed sends nothing that would show the gap).
	FeedGen uint64 `json:"feed_gen"`
	FeedSeq uint64 `json:"feed_seq"`
	// Boot identifies the sender's run: a new one means it restarted.
	Boot uint64 `json:"boot"`
}

type remoteHeads struct {
	at    time.Time
	heads []router.Head
	// behindAt is the sender's feed number this node had not reached when the
	// last heads arrived (0: not behind).
	behindAt uint64
}

// publishHeads tells the other members this node's best waiting interactions.
func (m *Mesh) publishHeads(ctx context.Context, src HeadsSource) {
	t := time.NewTicker(headsEvery)
	defer t.Stop()
	var last []router.Head
	var sent, rechecked time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		heads := src.Heads()
		if len(heads) > 0 && time.Since(rechecked) >= recheckEvery {
			// An agent left to another member's head that has since gone stale
			// (the member went quiet) is offered this node's work again.
			src.Recheck()
			rechecked = time.Now()
		}
		if slices.Equal(heads, last) && time.Since(sent) < headsRefresh {
			continue
		}
		data, err := json.Marshal(headsMsg{From: m.p.Node, Heads: heads, FeedGen: m.pubGen.Load(), FeedSeq: m.pubSeq.Load(), Boot: m.boot})
		if err == nil {
			err = m.nc.Publish(m.prefix+"heads."+string(m.p.Node), data)
		}
		if err != nil {
			m.logger.Debug("mesh: publish heads", "err", err)
			continue
		}
		last, sent = heads, time.Now()
	}
}

// onHeads records another member's heads; when they changed, free agents are
// offered work again (one this node deferred to may have been served).
func (m *Mesh) onHeads(msg *nats.Msg) {
	var h headsMsg
	if err := json.Unmarshal(msg.Data, &h); err != nil || h.From == m.p.Node {
		return
	}
	m.mu.Lock()
	prev := m.heads[h.From]
	m.heads[h.From] = remoteHeads{at: time.Now(), heads: h.Heads}
	behind := h.FeedSeq > 0 && (m.feedGen[h.From] != h.FeedGen || m.feedSeq[h.From] < h.FeedSeq)
	lagging := behind && prev.behindAt != 0 && prev.behindAt <= h.FeedSeq && m.feedSeq[h.From] < prev.behindAt
	if behind {
		rh := m.heads[h.From]
		rh.behindAt = h.FeedSeq
		m.heads[h.From] = rh
	}
	m.mu.Unlock()
	m.noteBoot(h.From, h.Boot)
	if lagging {
		go m.resync(h.From)
	}
	if src, ok := m.view.(HeadsSource); ok && !slices.Equal(prev.heads, h.Heads) {
		src.Recheck()
	}
}

// Defer reports whether another member's waiting interaction, in one of queues
// for channel ch, ranks ahead of this node's candidate (router.Fairness):
// higher priority, or the same priority and enqueued more than
// FairnessTolerance earlier.
func (m *Mesh) Defer(queues []core.QueueID, ch core.Channel, prio int, enqueued time.Time) bool {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for n, rh := range m.heads {
		if now.Sub(rh.at) > headsStale || m.health.state(n) == PeerDown {
			continue // a silent or down member holds nothing back
		}
		for _, h := range rh.heads {
			if h.Channel != ch || !slices.Contains(queues, h.Queue) {
				continue
			}
			if h.Priority > prio || h.Priority == prio && h.EnqueuedAt.Before(enqueued.Add(-FairnessTolerance)) {
				return true
			}
		}
	}
	return false
}
