package config

import (
	"strings"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

func TestResourceValidation(t *testing.T) {
	base := func(c *Config) {
		c.Cluster = ClusterConfig{Members: []core.NodeID{"node-1", "node-2"}, Peers: []string{"nats-route://127.0.0.1:6223"},
			Resources: []Resource{
				{ID: "east-support", Kind: ResourceQueue, Node: "node-2", URI: "sip:2100@127.0.0.2:5060"},
				{ID: "east-sounds", Kind: ResourceMedia, Node: "node-2"},
			}}
		c.Queues[0].Overflow = append(c.Queues[0].Overflow, OverflowStep{After: Duration(time.Hour), To: "east-support"})
		c.Queues[0].Sounds.From = "east-sounds"
	}
	cases := []struct {
		name   string
		mutate func(*Config)
		field  string
		want   string
	}{
		{"no cluster", func(c *Config) { c.Cluster.Members, c.Cluster.Peers = nil, nil }, "cluster.resources[0]", "not in a cluster"},
		{"bad id", func(c *Config) { c.Cluster.Resources[0].ID = "East!" }, "cluster.resources[0].id", `invalid id "East!"`},
		{"duplicate id", func(c *Config) { c.Cluster.Resources[1].ID = "east-support" }, "cluster.resources[1].id", "duplicate"},
		{"unknown node", func(c *Config) { c.Cluster.Resources[0].Node = "node-7" }, "cluster.resources[0].node", `unknown node "node-7"`},
		{"kind", func(c *Config) { c.Cluster.Resources[0].Kind = "trunk" }, "cluster.resources[0].kind", `unknown kind "trunk"`},
		{"no uri", func(c *Config) { c.Cluster.Resources[0].URI = "" }, "cluster.resources[0].uri", "required for kind queue"},
		{"bad uri", func(c *Config) { c.Cluster.Resources[0].URI = "http://x" }, "cluster.resources[0].uri", `invalid URI "http://x"`},
		{"uri without user", func(c *Config) { c.Cluster.Resources[0].URI = "sip:127.0.0.2" }, "cluster.resources[0].uri", "want sip:DN@host:port"},
		{"uri on media", func(c *Config) { c.Cluster.Resources[1].URI = "sip:1@h" }, "cluster.resources[1].uri", "only for kind queue"},
		{"queue on queue", func(c *Config) { c.Cluster.Resources[0].Queue = "sales" }, "cluster.resources[0].queue", "only for kind media"},
		{"unknown to", func(c *Config) { c.Queues[0].Overflow[len(c.Queues[0].Overflow)-1].To = "west" }, "", `unknown resource "west"`},
		{"to a media", func(c *Config) { c.Queues[0].Overflow[len(c.Queues[0].Overflow)-1].To = "east-sounds" }, "", "not queue"},
		{"two hand-overs", func(c *Config) {
			c.Queues[0].Overflow = append(c.Queues[0].Overflow, OverflowStep{After: Duration(2 * time.Hour), To: "east-support"})
		}, "", "one hand-over step per queue"},
		{"direct media", func(c *Config) { c.Queues[0].Media = MediaDirect }, "", "needs media anchored"},
		{"unknown from", func(c *Config) { c.Queues[0].Sounds.From = "west" }, "queues[0].sounds.from", `unknown resource "west"`},
		{"from a queue", func(c *Config) { c.Queues[0].Sounds.From = "east-support" }, "queues[0].sounds.from", "not media"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { wantProblem(t, base, tc.mutate, tc.field, tc.want) })
	}
	c := Default()
	base(c)
	ApplyDefaults(c)
	if err := c.Validate(); err != nil {
		t.Fatalf("valid resources: %v", err)
	}
	if r, ok := c.Cluster.Resource("east-sounds"); !ok || r.Kind != ResourceMedia {
		t.Fatalf("Resource(east-sounds) = %+v, %v", r, ok)
	}
	// The same list on every member: at node-2, its own resources are valid
	// and inactive.
	c.Node.ID = "node-2"
	if err := c.Validate(); err != nil {
		t.Fatalf("this node's own resources: %v", err)
	}
	if _, ok := c.Cluster.PeerResource("east-support", "node-2"); ok {
		t.Fatal("a resource of this node taken as a peer's")
	}
	if _, ok := c.Cluster.PeerResource("east-support", "node-1"); !ok {
		t.Fatal("node-2's resource not a peer's at node-1")
	}
	c.Node.ID = "node-1"
	// The keys parse from YAML, and a misspelt one is named.
	y := `node: {id: node-1}
cluster:
  members: [node-1, node-2]
  resources:
    - {id: east, kind: queue, node: node-2, uri: "sip:2100@127.0.0.2:5060", quue: x}
`
	if _, err := Parse([]byte(y)); err == nil || !strings.Contains(err.Error(), `unknown key "quue" in a cluster.resources entry`) {
		t.Fatalf("misspelt key: %v", err)
	}
}
