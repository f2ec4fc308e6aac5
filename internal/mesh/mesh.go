// Package mesh makes a node one member of a peer-to-peer cluster over NATS
// (ADR 0006): the embedded NATS server clustered over routes (or an external
// NATS), which node owns each agent, the reservation protocol (request/reply to
// the agent's owner, which alone grants or denies), the owners' feed of agent
// states that keeps every node's routing view of all agents, and the notices of
// leases that ended at an owner for an interaction held by another node.
//
// Subjects, under "ccm.<cluster>.":
//
//	rpc.<node>    request/reply to the node owning an agent (reserve, accept,
//	              reject, release, complete, snapshot)
//	feed.<node>   the owner's agent states, numbered per owner (gaps → resync)
//	lease.<node>  leases that ended at their owner, for the node that asked
//	heads.<node>  the member's best waiting interaction per queue and channel,
//	              so a freed agent goes to the best one cluster-wide
package mesh

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

// ErrOwnerUnreachable is a request to an agent's owner that got no answer in time.
var ErrOwnerUnreachable = errors.New("agent's owner unreachable")

// View receives the states of agents owned by other nodes (the router).
type View interface {
	ApplyAgentState(core.AgentID, events.AgentState)
	// SetUnreachable takes agents out of routing (their owner is down) or
	// brings them back.
	SetUnreachable(ids []core.AgentID, unreachable bool)
}

// Params are the mesh's dependencies.
type Params struct {
	Config config.ClusterConfig
	Node   core.NodeID
	// Agents are all the cluster's agents; Local owns this node's share of them.
	Agents []config.Agent
	Local  *agent.Manager
	// OnSharedConfig receives every revision of the replicated configuration
	// (optional); it validates and applies it or logs why not.
	OnSharedConfig func(revision uint64, data []byte)
	// DataDir keeps the last-known directory (agents that moved), so the node
	// starts with the right agents even when alone.
	DataDir string
	// Log is this node's event log: the feed publishes its agent states.
	Log *events.Log
	// Contacts lists the SIP contacts registered at this node for an agent
	// (optional): other nodes ask for them to ring the agent's phone.
	Contacts func(core.AgentID) []string
	// Registrations returns this node's SIP registrations for the cluster-wide
	// list (optional; JSON-marshalable).
	Registrations func() any
	// Sounds reads this node's sound file of a kind (announcement, music,
	// closed) for queue q, nil when it has none (optional): peers that take
	// their sounds from this node's media service ask for it.
	Sounds func(q core.QueueID, kind string) ([]byte, error)
	Logger *slog.Logger
}

// Mesh is this node's membership in the cluster. Create it with New, Wire it,
// then Run it. Its methods are safe for concurrent use.
type Mesh struct {
	p      Params
	prefix string
	dir    *directory
	shared sharedConfig
	health *health
	// transitions carries peers' changes of health to the goroutine acting on them.
	transitions chan transition
	// reachMu orders taking a peer's agents out of routing and bringing them back.
	reachMu sync.Mutex
	timeout time.Duration
	srv     *server.Server // nil with an external NATS
	nc      *nats.Conn
	logger  *slog.Logger

	// set by Wire before Run
	view   View
	leases agent.Observer

	mu sync.Mutex
	// remote are the last states of agents owned elsewhere, for the router's resync.
	remote map[core.AgentID]events.AgentState
	// feedGen and feedSeq are the last feed generation and number seen per owner.
	feedGen map[core.NodeID]uint64
	feedSeq map[core.NodeID]uint64
	// resyncing marks owners whose snapshot is being fetched.
	resyncing map[core.NodeID]bool
	// heads are the other members' best waiting interactions (fairness).
	heads map[core.NodeID]remoteHeads
	// pubGen and pubSeq are this node's feed position (for its heads).
	pubGen, pubSeq atomic.Uint64
	// reqSeq numbers this node's reservation requests to other owners.
	reqSeq atomic.Uint64
	// downUntil: members that did not answer, not asked again until then.
	downUntil map[core.NodeID]time.Time
	// boot identifies this run; boots are the other members' runs as last seen.
	boot  uint64
	boots map[core.NodeID]uint64
	subs  []*nats.Subscription
}

// New starts the embedded NATS server (unless the config names an external
// one), connects, and computes agent ownership. It does not subscribe yet.
func New(p Params) (*Mesh, error) {
	if p.Logger == nil {
		p.Logger = slog.Default()
	}
	m := &Mesh{p: p, prefix: "ccm." + p.Config.Name + ".", dir: newDirectory(p.Node, p.Config.Members, p.Agents, p.DataDir),
		timeout: p.Config.RequestTimeout.D(), logger: p.Logger,
		remote: map[core.AgentID]events.AgentState{}, feedGen: map[core.NodeID]uint64{}, feedSeq: map[core.NodeID]uint64{}, resyncing: map[core.NodeID]bool{},
		heads: map[core.NodeID]remoteHeads{}, downUntil: map[core.NodeID]time.Time{}, boots: map[core.NodeID]uint64{}, boot: uint64(time.Now().UnixNano())}
	if m.timeout <= 0 {
		m.timeout = config.DefaultRequestTimeout.D()
	}
	interval, peerTimeout := p.Config.HeartbeatInterval.D(), p.Config.PeerTimeout.D()
	if interval <= 0 {
		interval = config.DefaultHeartbeatInterval.D()
	}
	if peerTimeout <= 0 {
		peerTimeout = config.DefaultPeerTimeout.D()
	}
	m.health = newHealth(p.Config.Members, p.Node, interval, peerTimeout)
	m.transitions = make(chan transition, 256)
	// Agents that moved before the last stop are where the cached directory
	// says, until the replicated one is read.
	configured := *m.dir.owners.Load()
	if err := m.dir.load(); err != nil {
		return nil, err
	}
	if err := m.dir.loadOutbox(); err != nil { // moves kept while cut off hold too
		return nil, err
	}
	m.reconcile(configured, *m.dir.owners.Load())
	opts := []nats.Option{nats.Name(string(p.Node)), nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}
	url := p.Config.NATSURL
	if url != "" {
		if t := p.Config.TLS; t.Enabled() {
			opts = append(opts, nats.ClientCert(t.Cert, t.Key), nats.RootCAs(t.CA))
		}
		if p.Config.Credentials != "" {
			opts = append(opts, nats.UserCredentials(p.Config.Credentials))
		}
	}
	if url == "" {
		srv, user, err := startServer(p.Config, p.Node, p.DataDir, p.Logger)
		if err != nil {
			return nil, err
		}
		m.srv = srv
		opts = append(opts, nats.InProcessServer(srv))
		if user != nil {
			pub, err := user.PublicKey()
			if err != nil {
				m.Close()
				return nil, fmt.Errorf("mesh: %w", err)
			}
			opts = append(opts, nats.Nkey(pub, user.Sign))
		}
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("mesh: connect to NATS: %w", err)
	}
	m.nc = nc
	return m, nil
}

// startServer runs the embedded NATS server: clients on cfg.Listen, routes on
// cfg.RoutesListen to cfg.Peers, JetStream (the replicated directory and
// configuration) stored under dataDir/nats. Port 0 picks a free port.
//
// Without cfg.Listen the client port is still opened (the server starts its
// routes only once a client listener is up: DontListen leaves them down), on
// a random loopback port closed to anyone without this run's random user key
// (an nkey), which it returns for the node's own connection.
func startServer(cfg config.ClusterConfig, node core.NodeID, dataDir string, logger *slog.Logger) (srv *server.Server, user nkeys.KeyPair, err error) {
	if dataDir == "" {
		return nil, nil, errors.New("mesh: no data directory for JetStream")
	}
	host, port, private := "127.0.0.1", server.RANDOM_PORT, cfg.Listen == ""
	var nkeyUsers []*server.NkeyUser
	if private {
		if user, err = nkeys.CreateUser(); err != nil {
			return nil, nil, fmt.Errorf("mesh: node key: %w", err)
		}
		pub, err := user.PublicKey()
		if err != nil {
			return nil, nil, fmt.Errorf("mesh: node key: %w", err)
		}
		nkeyUsers = []*server.NkeyUser{{Nkey: pub}}
	} else {
		if host, port, err = hostPort(cfg.Listen); err != nil {
			return nil, nil, fmt.Errorf("mesh: cluster.listen: %w", err)
		}
	}
	rhost, rport, err := hostPort(cfg.RoutesListen)
	if err != nil {
		return nil, nil, fmt.Errorf("mesh: cluster.routes_listen: %w", err)
	}
	var routes []*url.URL
	for _, r := range cfg.Peers {
		u, err := url.Parse(r)
		if err != nil {
			return nil, nil, fmt.Errorf("mesh: cluster.peers: %w", err)
		}
		if cfg.RouteUser != "" && u.User == nil {
			u.User = url.UserPassword(cfg.RouteUser, cfg.RoutePassword)
		}
		routes = append(routes, u)
	}
	if len(routes) == 0 {
		// JetStream in a cluster needs a route configured: the first member of
		// a cluster (no peers yet) routes to itself, which the server ignores.
		if rport == server.RANDOM_PORT {
			if rport, err = freePort(rhost); err != nil {
				return nil, nil, fmt.Errorf("mesh: cluster.routes_listen: %w", err)
			}
		}
		u := &url.URL{Scheme: "nats-route", Host: net.JoinHostPort(rhost, strconv.Itoa(rport))}
		if cfg.RouteUser != "" {
			u.User = url.UserPassword(cfg.RouteUser, cfg.RoutePassword)
		}
		routes = append(routes, u)
	}
	opts := &server.Options{
		ServerName: string(node), Host: host, Port: port, Nkeys: nkeyUsers, NoSigs: true,
		// Route pings every 2 s, two missed: a silent peer's subscriptions go within
		// ~6 s, so requests to it fail at once (no responders) rather than waiting
		// out the request timeout (the default interval is far longer).
		Cluster: server.ClusterOpts{Name: cfg.Name, Host: rhost, Port: rport, ConnectRetries: -1,
			Username: cfg.RouteUser, Password: cfg.RoutePassword, PingInterval: 2 * time.Second, MaxPingsOut: 2},
		Routes:    routes,
		JetStream: true, StoreDir: filepath.Join(dataDir, "nats"),
		// A small cap: the buckets hold one entry per moved agent and a few
		// configuration revisions.
		JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30,
	}
	if t := cfg.TLS; t.Enabled() {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: t.Cert, KeyFile: t.Key, CaFile: t.CA, Verify: true})
		if err != nil {
			return nil, nil, fmt.Errorf("mesh: cluster.tls: %w", err)
		}
		// Members are both TLS clients and servers of each other's routes: verify
		// both ways against the same CA (as nats-server does for cluster blocks).
		tc.RootCAs, tc.ClientAuth = tc.ClientCAs, tls.RequireAndVerifyClientCert
		opts.Cluster.TLSConfig, opts.Cluster.TLSTimeout = tc, 2
	}
	srv, err = server.NewServer(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("mesh: NATS server: %w", err)
	}
	srv.SetLogger(natsLogger{logger.With("component", "nats")}, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, nil, errors.New("mesh: the embedded NATS server did not start within 10 s")
	}
	clients := srv.ClientURL()
	if private {
		clients = "private"
	} else {
		logger.Warn("mesh: cluster.listen opens a NATS client port without authentication: whoever reaches it can read and change the cluster's replicated state (agents' passwords included); keep it on loopback for trusted tools",
			"clients", clients)
	}
	logger.Info("mesh: NATS server up", "clients", clients, "routes", srv.ClusterAddr().String())
	return srv, user, nil
}

func hostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	if n == 0 {
		n = server.RANDOM_PORT
	}
	return h, n, nil
}

// freePort picks a free TCP port on host (for a route listener that must know
// its own port before it starts).
func freePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// RoutesAddr is the embedded server's route listener ("" with an external NATS).
func (m *Mesh) RoutesAddr() string {
	if m.srv == nil || m.srv.ClusterAddr() == nil {
		return ""
	}
	return m.srv.ClusterAddr().String()
}

// Owners computes every agent's owner: its configured home, else the member
// with the highest rendezvous hash of (member, agent) — the same on every node,
// and only the agents of a member that leaves move.
func Owners(members []core.NodeID, agents []config.Agent) map[core.AgentID]core.NodeID {
	out := make(map[core.AgentID]core.NodeID, len(agents))
	for _, a := range agents {
		if a.Home != "" {
			out[a.ID] = a.Home
			continue
		}
		var best core.NodeID
		var bestScore uint64
		for _, n := range members {
			h := fnv.New64a()
			_, _ = h.Write([]byte(n))
			_, _ = h.Write([]byte{0})
			_, _ = h.Write([]byte(a.ID))
			if s := mix(h.Sum64()); best == "" || s > bestScore {
				best, bestScore = n, s
			}
		}
		out[a.ID] = best
	}
	return out
}

// mix is the splitmix64 finalizer: FNV alone spreads inputs that differ only in
// their last bytes poorly across the high bits compared here.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Owner returns the node owning agent id ("" for an unknown agent).
func (m *Mesh) Owner(id core.AgentID) core.NodeID { return m.dir.get(id).Node }

// Owned lists the agents of cfg owned by node (for its agent.Manager).
func Owned(members []core.NodeID, node core.NodeID, agents []config.Agent) []config.Agent {
	owners := Owners(members, agents)
	var out []config.Agent
	for _, a := range agents {
		if owners[a.ID] == node {
			out = append(out, a)
		}
	}
	return out
}

// Wire connects the mesh to the router's view and to the observer of leases
// (the interaction Service). Call before Run.
func (m *Mesh) Wire(view View, leases agent.Observer) {
	m.view, m.leases = view, leases
}

// Run serves requests to this node's agents, publishes their states, follows
// the other owners' feeds, and relays lease ends, until ctx ends. after is the
// log sequence the feed starts after.
func (m *Mesh) Run(ctx context.Context, after uint64) error {
	if err := m.subscribe(); err != nil {
		return err
	}
	for _, n := range m.p.Config.Members {
		if n != m.p.Node {
			go m.resync(n)
		}
	}
	if src, ok := m.view.(HeadsSource); ok {
		go m.publishHeads(ctx, src)
	}
	go m.runDirectory(ctx)
	go m.runHealth(ctx)
	go m.runSharedConfig(ctx)
	go m.runOutbox(ctx)
	err := m.publishFeed(ctx, after)
	for _, s := range m.subs {
		_ = s.Unsubscribe()
	}
	return err
}

// Close disconnects and stops the embedded server.
func (m *Mesh) Close() {
	if m.nc != nil {
		m.nc.Close()
	}
	if m.srv != nil {
		m.srv.Shutdown()
		m.srv.WaitForShutdown()
	}
}

func (m *Mesh) subject(kind string, node core.NodeID) string {
	return m.prefix + kind + "." + string(node)
}

func (m *Mesh) subscribe() error {
	for _, s := range []struct {
		subj string
		h    nats.MsgHandler
	}{
		{m.subject("rpc", m.p.Node), m.serveRPC},
		{m.prefix + "feed.*", m.onFeed},
		{m.subject("lease", m.p.Node), m.onLeaseEnd},
		{m.prefix + "heads.*", m.onHeads},
		{m.prefix + "hb.*", m.onHeartbeat},
	} {
		sub, err := m.nc.Subscribe(s.subj, s.h)
		if err != nil {
			return fmt.Errorf("mesh: subscribe %s: %w", s.subj, err)
		}
		m.subs = append(m.subs, sub)
	}
	if err := m.nc.Flush(); err != nil {
		return fmt.Errorf("mesh: subscribe: %w", err)
	}
	return nil
}
