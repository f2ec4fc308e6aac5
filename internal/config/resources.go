package config

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/ccmesh/ccmesh/internal/core"
)

// ResourceKind is what a peer's resource is (issue 5, ADR 0009).
type ResourceKind string

// Resource kinds.
const (
	// ResourceQueue is a queue hosted by a peer: a queue's overflow step hands
	// its waiting calls to it over SIP (media stays anchored here).
	ResourceQueue ResourceKind = "queue"
	// ResourceMedia is a peer's media service: its announcement, music and
	// closed message for a queue, played here when this node has none.
	ResourceMedia ResourceKind = "media"
)

// Resource is a resource of a peer node this node may invoke. Every use goes
// through the peer health gate: nothing is asked of a peer that is down.
type Resource struct {
	// ID names the resource for the queues that use it.
	ID string `yaml:"id" json:"id"`
	// Kind is queue or media.
	Kind ResourceKind `yaml:"kind" json:"kind"`
	// Node is the member that provides it.
	Node core.NodeID `yaml:"node" json:"node"`
	// URI (queue) is the peer queue's route point: sip:DN@host:port.
	URI string `yaml:"uri" json:"uri,omitempty"`
	// Queue (media) is the peer's queue whose sounds are used (default: the
	// queue that names this resource).
	Queue core.QueueID `yaml:"queue" json:"queue,omitempty"`
}

// Resource returns the resource named id, if declared (it may be this node's
// own: see Active).
func (c *ClusterConfig) Resource(id string) (Resource, bool) {
	for _, r := range c.Resources {
		if r.ID == id {
			return r, true
		}
	}
	return Resource{}, false
}

// PeerResource returns the resource named id if declared and provided by a
// node other than self: the ones a queue actually uses at self.
func (c *ClusterConfig) PeerResource(id string, self core.NodeID) (Resource, bool) {
	r, ok := c.Resource(id)
	return r, ok && r.Node != self
}

// validateResources checks cluster.resources and the queues' uses of them.
func (c *Config) validateResources(p *problems) {
	cl := &c.Cluster
	seen := map[string]bool{}
	for i, r := range cl.Resources {
		f := fmt.Sprintf("cluster.resources[%d]", i)
		if !cl.Enabled() {
			p.add(f, "resources are a peer's: this node is not in a cluster")
			return
		}
		switch {
		case !objectIDRE.MatchString(r.ID):
			p.add(f+".id", "invalid id %q (want 1..64 of a-z 0-9 . _ -)", r.ID)
		case seen[r.ID]:
			p.add(f+".id", "duplicate id %q", r.ID)
		}
		seen[r.ID] = true
		// (This node's own resources may be listed too — the same list on
		// every member; they are inactive here.)
		if !slices.Contains(cl.Members, r.Node) {
			p.add(f+".node", "unknown node %q (not in cluster.members)", r.Node)
		}
		switch r.Kind {
		case ResourceQueue:
			if err := checkQueueURI(r.URI); err != nil {
				p.add(f+".uri", "%v", err)
			}
			if r.Queue != "" {
				p.add(f+".queue", "only for kind media (a queue resource is reached at its uri)")
			}
		case ResourceMedia:
			if r.URI != "" {
				p.add(f+".uri", "only for kind queue")
			}
			if r.Queue != "" && !objectIDRE.MatchString(string(r.Queue)) {
				p.add(f+".queue", "invalid queue id %q", r.Queue)
			}
		default:
			p.add(f+".kind", "unknown kind %q (want queue or media)", r.Kind)
		}
	}
	for i, q := range c.Queues {
		qf := fmt.Sprintf("queues[%d]", i)
		handovers := 0
		for j, st := range q.Overflow {
			if st.To == "" {
				continue
			}
			sf := fmt.Sprintf("%s.overflow[%d].to", qf, j)
			handovers++
			r, ok := cl.Resource(st.To)
			switch {
			case !ok:
				p.add(sf, "unknown resource %q (declare it in cluster.resources)", st.To)
			case r.Kind != ResourceQueue:
				p.add(sf, "resource %q is kind %s, not queue", st.To, r.Kind)
			case handovers > 1:
				p.add(sf, "one hand-over step per queue (the first is %q)", firstTo(q.Overflow))
			case q.Media == MediaDirect:
				p.add(sf, "a hand-over needs media anchored (queue media is direct)")
			}
		}
		if from := q.Sounds.From; from != "" {
			r, ok := cl.Resource(from)
			switch {
			case !ok:
				p.add(qf+".sounds.from", "unknown resource %q (declare it in cluster.resources)", from)
			case r.Kind != ResourceMedia:
				p.add(qf+".sounds.from", "resource %q is kind %s, not media", from, r.Kind)
			case q.Media == MediaDirect:
				p.add(qf+".sounds.from", "sounds need media anchored (queue media is direct)")
			}
		}
	}
}

func firstTo(steps []OverflowStep) string {
	for _, st := range steps {
		if st.To != "" {
			return st.To
		}
	}
	return ""
}

// checkQueueURI accepts sip:user@host[:port] (the peer queue's route point).
func checkQueueURI(s string) error {
	u, err := url.Parse(s)
	switch {
	case s == "":
		return fmt.Errorf("required for kind queue (sip:DN@host:port of the peer's queue)")
	case err != nil || u.Scheme != "sip" || u.Opaque == "":
		return fmt.Errorf("invalid URI %q (want sip:DN@host:port)", s)
	}
	user, host, ok := strings.Cut(u.Opaque, "@")
	if !ok || user == "" || host == "" || strings.ContainsAny(host, ";?") {
		return fmt.Errorf("invalid URI %q (want sip:DN@host:port, no parameters)", s)
	}
	return nil
}
