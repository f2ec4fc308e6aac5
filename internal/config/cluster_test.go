package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

func TestClusterValidation(t *testing.T) {
	base := func(c *Config) {
		c.Cluster = ClusterConfig{Members: []core.NodeID{"node-1", "node-2"}, Peers: []string{"nats-route://127.0.0.1:6223"}}
	}
	cases := []struct {
		name   string
		mutate func(*Config)
		field  string
		want   string
	}{
		{"not a member", func(c *Config) { c.Cluster.Members = []core.NodeID{"node-2", "node-3"} }, "cluster.members", `must include this node's id "node-1"`},
		{"duplicate member", func(c *Config) { c.Cluster.Members = append(c.Cluster.Members, "node-2") }, "cluster.members[2]", `duplicate node id "node-2"`},
		{"bad member", func(c *Config) { c.Cluster.Members = append(c.Cluster.Members, "Node_3") }, "cluster.members[2]", `invalid node id "Node_3"`},
		{"bad peer", func(c *Config) { c.Cluster.Peers = []string{"127.0.0.1:6222"} }, "cluster.peers[0]", `invalid route URL "127.0.0.1:6222"`},
		{"external and peers", func(c *Config) { c.Cluster.NATSURL = "nats://10.0.0.1:4222" }, "cluster.peers", "either nats_url"},
		{"bad nats url", func(c *Config) { c.Cluster.NATSURL, c.Cluster.Peers = "http://x", nil }, "cluster.nats_url", `invalid URL "http://x"`},
		{"password alone", func(c *Config) { c.Cluster.RoutePassword = "0123456789abcdef" }, "cluster.route_password", "go together"},
		{"short password", func(c *Config) { c.Cluster.RouteUser, c.Cluster.RoutePassword = "u", "short" }, "cluster.route_password", "at least 16"},
		{"tls incomplete", func(c *Config) { c.Cluster.TLS.Cert = "c.pem" }, "cluster.tls", "cert, key and ca are all required"},
		{"tls missing files", func(c *Config) { c.Cluster.TLS = ClusterTLS{Cert: "/none/c", Key: "/none/k", CA: "/none/ca"} }, "cluster.tls.cert", "cannot load"},
		{"credentials without nats_url", func(c *Config) { c.Cluster.Credentials = "x.creds" }, "cluster.credentials", "only for an external NATS"},
		{"timeout", func(c *Config) { c.Cluster.RequestTimeout = Duration(time.Minute) }, "cluster.request_timeout", `"1m" out of range 10ms..10s`},
		{"heartbeat", func(c *Config) { c.Cluster.HeartbeatInterval = Duration(time.Millisecond) }, "cluster.heartbeat_interval", `"1ms" out of range 50ms..10s`},
		{"peer timeout", func(c *Config) { c.Cluster.PeerTimeout = Duration(900 * time.Millisecond) }, "cluster.peer_timeout", "at least four heartbeat intervals (1s)"},
		{"unknown home", func(c *Config) { c.Agents[0].Home = "node-9" }, "agents[0].home", `unknown node "node-9"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { wantProblem(t, base, tc.mutate, tc.field, tc.want) })
	}
	// Alone, a home other than this node is an error; a valid cluster passes.
	c := Default()
	c.Agents[0].Home = "node-2"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "agents[0].home") {
		t.Fatalf("home without a cluster: %v", err)
	}
	c = Default()
	base(c)
	ApplyDefaults(c)
	if err := c.Validate(); err != nil {
		t.Fatalf("a valid cluster: %v", err)
	}
	if c.Cluster.Name != DefaultClusterName || c.Cluster.RequestTimeout != DefaultRequestTimeout || c.Cluster.Listen != "" || c.Cluster.RoutesListen != DefaultRoutesListen {
		t.Fatalf("defaults not applied: %+v", c.Cluster)
	}
}

// wantProblem applies base then mutate to the default configuration and
// checks that Validate reports a problem at field ("": any) containing want.
func wantProblem(t *testing.T, base, mutate func(*Config), field, want string) {
	t.Helper()
	c := Default()
	base(c)
	mutate(c)
	ApplyDefaults(c)
	var ve *ValidationError
	if err := c.Validate(); !errors.As(err, &ve) {
		t.Fatalf("Validate = %v, want a ValidationError", err)
	}
	for _, p := range ve.Problems {
		if (field == "" || p.Field == field) && strings.Contains(p.Message, want) {
			return
		}
	}
	t.Fatalf("problems %v, want one at %q containing %q", ve.Problems, field, want)
}
