package mesh

import (
	"slices"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

// Status is what GET /api/v1/cluster shows.
type Status struct {
	Enabled bool          `json:"enabled"`
	Name    string        `json:"name,omitempty"`
	Node    core.NodeID   `json:"node"`
	Members []MemberState `json:"members,omitempty"`
	// NATS is the connection to the cluster's NATS.
	NATS NATSState `json:"nats"`
	// Directory is the replicated directory of agents that moved.
	Directory DirectoryState `json:"directory"`
	// Outbox is what this node keeps for the quorum (cut off from it).
	Outbox OutboxState `json:"outbox"`
}

// DirectoryState describes this node's copy of the replicated directory.
type DirectoryState struct {
	// InSync is true once the replicated directory has been read (moves are
	// possible only then); before, the cached copy of the last run applies.
	InSync bool `json:"in_sync"`
	// Moved is how many agents are owned elsewhere than configured.
	Moved int `json:"moved"`
}

// MemberState is one member as this node sees it.
type MemberState struct {
	ID   core.NodeID `json:"id"`
	Self bool        `json:"self"`
	// Agents is how many agents the member owns.
	Agents int `json:"agents"`
	// FeedSeq is the last feed message applied from it (0: none yet); FeedGen
	// changes when it restarts.
	FeedSeq uint64 `json:"feed_seq"`
	FeedGen uint64 `json:"feed_gen,omitempty"`
	// LastSeenMillis is how long ago this node last heard the member's
	// heartbeat; -1 never. Health is up, suspect (silent for two heartbeat
	// intervals) or down (silent for cluster.peer_timeout: nothing is sent to
	// it, its agents are out of routing), "self" for this node.
	LastSeenMillis int64  `json:"last_seen_ms"`
	Health         string `json:"health"`
	// SinceMillis is how long the member has been in this health.
	SinceMillis int64 `json:"since_ms"`
	// Downs counts the times it went down; RequestsSent the requests sent to
	// it, RequestsRefrained those not sent because it was down.
	Downs uint64 `json:"downs"`
	// MaxSilenceMillis is the longest gap between two of its heartbeats
	// while it was up: how close it came to being taken down.
	MaxSilenceMillis  int64  `json:"max_silence_ms"`
	RequestsSent      uint64 `json:"requests_sent"`
	RequestsRefrained uint64 `json:"requests_refrained"`
}

// NATSState describes the NATS connection and the embedded server.
type NATSState struct {
	Connected bool   `json:"connected"`
	Embedded  bool   `json:"embedded"`
	Routes    int    `json:"routes"`
	ClientURL string `json:"client_url,omitempty"`
	RoutesURL string `json:"routes_url,omitempty"`
}

// Status reports the members, who owns how many agents and how far each feed is.
func (m *Mesh) Status() Status {
	st := Status{Enabled: true, Name: m.p.Config.Name, Node: m.p.Node}
	owned := map[core.NodeID]int{}
	for _, o := range *m.dir.owners.Load() {
		owned[o.Node]++
	}
	now := time.Now()
	m.mu.Lock()
	for _, id := range m.p.Config.Members {
		st.Members = append(st.Members, MemberState{ID: id, Self: id == m.p.Node, Agents: owned[id], FeedSeq: m.feedSeq[id], FeedGen: m.feedGen[id],
			LastSeenMillis: -1})
	}
	m.mu.Unlock()
	m.health.mu.Lock()
	for i := range st.Members {
		ms := &st.Members[i]
		p, ok := m.health.peers[ms.ID]
		if !ok {
			ms.LastSeenMillis, ms.Health = 0, "self"
			continue
		}
		ms.Health, ms.SinceMillis, ms.Downs, ms.MaxSilenceMillis = string(p.state), now.Sub(p.since).Milliseconds(), p.downs, p.maxGap.Milliseconds()
		ms.RequestsSent, ms.RequestsRefrained = p.sent, p.refrained
		if !p.last.IsZero() {
			ms.LastSeenMillis = now.Sub(p.last).Milliseconds()
		}
	}
	m.health.mu.Unlock()
	slices.SortFunc(st.Members, func(a, b MemberState) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	st.Directory = DirectoryState{InSync: m.DirectoryInSync(), Moved: m.movedCount()}
	st.Outbox = m.Outbox()
	st.NATS.Connected = m.nc != nil && m.nc.IsConnected()
	if m.srv != nil {
		st.NATS.Embedded, st.NATS.Routes, st.NATS.ClientURL, st.NATS.RoutesURL = true, m.srv.NumRoutes(), m.srv.ClientURL(), m.RoutesAddr()
	}
	return st
}
