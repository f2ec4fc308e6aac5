package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"slices"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

// ClusterConfig makes the node one member of a peer-to-peer cluster over NATS
// (ADR 0006). Without it (no members) the node runs alone.
type ClusterConfig struct {
	// Name is the cluster's name: the NATS cluster name and the root of every
	// subject (default "ccmesh").
	Name string `yaml:"name" json:"name"`
	// Members are the node ids of the cluster, this node's included. Every node
	// has the same list: it decides which node owns an agent without a home.
	Members []core.NodeID `yaml:"members" json:"members"`
	// NATSURL, when set, uses an existing NATS cluster instead of the embedded
	// server (nats://host:port[,nats://...]).
	NATSURL string `yaml:"nats_url" json:"nats_url"`
	// Listen is the embedded NATS server's client address (host:port), for
	// tools such as the nats CLI. Empty (the default) opens no client port: the
	// node connects in-process, and nobody else can publish on the mesh.
	Listen string `yaml:"listen" json:"listen"`
	// RoutesListen is where the embedded server accepts its peers' routes
	// (host:port, default 127.0.0.1:6222).
	RoutesListen string `yaml:"routes_listen" json:"routes_listen"`
	// Peers are the other members' route URLs (nats-route://host:port).
	Peers []string `yaml:"peers" json:"peers"`
	// RequestTimeout bounds a request to a peer (a reservation at an agent's
	// owner); past it the request fails and the router moves on (default 250ms).
	RequestTimeout Duration `yaml:"request_timeout" json:"request_timeout"`
	// HeartbeatInterval is how often the node tells its peers it is alive
	// (default 250ms); PeerTimeout bounds how long after a peer stops it is
	// down (default 1s): no request goes to it, its agents leave the routing
	// view. A peer silent for two intervals is suspect.
	HeartbeatInterval Duration `yaml:"heartbeat_interval" json:"heartbeat_interval"`
	PeerTimeout       Duration `yaml:"peer_timeout" json:"peer_timeout"`
	// RouteUser and RoutePassword authenticate the embedded servers' routes to
	// each other (the same on every member); peers' URLs get them added.
	RouteUser     string `yaml:"route_user" json:"route_user,omitempty"`
	RoutePassword string `yaml:"route_password" json:"-"`
	// TLS secures the routes (mutual TLS: each member presents Cert and checks
	// its peers against CA), and the connection to an external NATS.
	TLS ClusterTLS `yaml:"tls" json:"tls"`
	// Credentials is a NATS credentials file for an external NATS (nats_url).
	Credentials string `yaml:"credentials" json:"credentials,omitempty"`
	// Resources are peers' resources this node may invoke (a queue to overflow
	// to, a media service); queues name them.
	Resources []Resource `yaml:"resources" json:"resources,omitempty"`
}

// ClusterTLS is the cluster's TLS material (PEM files).
type ClusterTLS struct {
	Cert string `yaml:"cert" json:"cert,omitempty"`
	Key  string `yaml:"key" json:"key,omitempty"`
	CA   string `yaml:"ca" json:"ca,omitempty"`
}

// Enabled reports whether TLS is configured.
func (t ClusterTLS) Enabled() bool { return t.Cert != "" || t.Key != "" || t.CA != "" }

// Enabled reports whether the node is part of a cluster.
func (c *ClusterConfig) Enabled() bool { return len(c.Members) > 0 }

// Cluster defaults.
const (
	DefaultClusterName    = "ccmesh"
	DefaultRoutesListen   = "127.0.0.1:6222"
	DefaultRequestTimeout = Duration(250 * time.Millisecond)
	// DefaultHeartbeatInterval and DefaultPeerTimeout detect a silent peer
	// within a second (issue 5).
	DefaultHeartbeatInterval = Duration(250 * time.Millisecond)
	DefaultPeerTimeout       = Duration(time.Second)
)

func applyClusterDefaults(c *ClusterConfig) {
	if !c.Enabled() {
		return
	}
	if c.Name == "" {
		c.Name = DefaultClusterName
	}
	if c.NATSURL == "" {
		if c.RoutesListen == "" {
			c.RoutesListen = DefaultRoutesListen
		}
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.PeerTimeout == 0 {
		c.PeerTimeout = DefaultPeerTimeout
	}
}

func (c *Config) validateCluster(p *problems) {
	cl := &c.Cluster
	if !cl.Enabled() {
		if cl.NATSURL != "" || len(cl.Peers) > 0 || cl.Listen != "" || cl.RoutesListen != "" {
			p.add("cluster.members", "required when the cluster section sets anything (list every node id, this one included)")
		}
		for i, a := range c.Agents {
			if a.Home != "" && a.Home != c.Node.ID {
				p.add(fmt.Sprintf("agents[%d].home", i), "%q is another node, but this node is not in a cluster", a.Home)
			}
		}
		return
	}
	if !nodeIDRE.MatchString(cl.Name) {
		p.add("cluster.name", "invalid name %q (want 1..64 of a-z 0-9 -)", cl.Name)
	}
	seen := map[core.NodeID]int{}
	for i, m := range cl.Members {
		f := fmt.Sprintf("cluster.members[%d]", i)
		switch {
		case !nodeIDRE.MatchString(string(m)):
			p.add(f, "invalid node id %q", m)
		case seen[m] > 0:
			p.add(f, "duplicate node id %q", m)
		}
		seen[m]++
	}
	if !slices.Contains(cl.Members, c.Node.ID) {
		p.add("cluster.members", "must include this node's id %q", c.Node.ID)
	}
	if cl.NATSURL != "" {
		for _, u := range splitURLs(cl.NATSURL) {
			if pu, err := url.Parse(u); err != nil || (pu.Scheme != "nats" && pu.Scheme != "tls") || pu.Host == "" {
				p.add("cluster.nats_url", "invalid URL %q (want nats://host:port, comma-separated)", u)
			}
		}
		if len(cl.Peers) > 0 {
			p.add("cluster.peers", "set either nats_url (an external NATS) or peers (the embedded one), not both")
		}
	} else {
		if cl.Listen != "" {
			validateListen(p, "cluster.listen", cl.Listen)
		}
		validateListen(p, "cluster.routes_listen", cl.RoutesListen)
		for i, r := range cl.Peers {
			if pu, err := url.Parse(r); err != nil || pu.Scheme != "nats-route" || pu.Host == "" {
				p.add(fmt.Sprintf("cluster.peers[%d]", i), "invalid route URL %q (want nats-route://host:port)", r)
			}
		}
	}
	if (cl.RouteUser == "") != (cl.RoutePassword == "") {
		p.add("cluster.route_password", "route_user and route_password go together")
	} else if cl.RoutePassword != "" && len(cl.RoutePassword) < 16 {
		p.add("cluster.route_password", "at least 16 characters")
	}
	if t := cl.TLS; t.Enabled() {
		switch {
		case t.Cert == "" || t.Key == "" || t.CA == "":
			p.add("cluster.tls", "cert, key and ca are all required (mutual TLS between members)")
		default:
			if _, err := tls.LoadX509KeyPair(t.Cert, t.Key); err != nil {
				p.add("cluster.tls.cert", "cannot load the certificate and key: %v", err)
			}
			if data, err := os.ReadFile(t.CA); err != nil {
				p.add("cluster.tls.ca", "%v", err)
			} else if !x509.NewCertPool().AppendCertsFromPEM(data) {
				p.add("cluster.tls.ca", "no PEM certificate in %s", t.CA)
			}
		}
	}
	if cl.Credentials != "" && cl.NATSURL == "" {
		p.add("cluster.credentials", "only for an external NATS (set nats_url)")
	}
	if cl.RequestTimeout < Duration(10*time.Millisecond) || cl.RequestTimeout > Duration(10*time.Second) {
		p.add("cluster.request_timeout", "%q out of range 10ms..10s", cl.RequestTimeout)
	}
	if cl.HeartbeatInterval < Duration(50*time.Millisecond) || cl.HeartbeatInterval > Duration(10*time.Second) {
		p.add("cluster.heartbeat_interval", "%q out of range 50ms..10s", cl.HeartbeatInterval)
	} else if cl.PeerTimeout < 4*cl.HeartbeatInterval || cl.PeerTimeout > Duration(time.Minute) {
		p.add("cluster.peer_timeout", "%q out of range: at least four heartbeat intervals (%s), at most 1m", cl.PeerTimeout, 4*cl.HeartbeatInterval)
	}
	for i, a := range c.Agents {
		if a.Home != "" && !slices.Contains(cl.Members, a.Home) {
			p.add(fmt.Sprintf("agents[%d].home", i), "unknown node %q (not in cluster.members)", a.Home)
		}
	}
}

func splitURLs(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if u := s[start:i]; u != "" {
				out = append(out, u)
			}
			start = i + 1
		}
	}
	return out
}
