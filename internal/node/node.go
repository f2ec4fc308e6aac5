// Package node wires every component of a ccmesh node by hand and owns their
// start-up and shutdown order.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/api"
	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/interaction"
	"github.com/ccmesh/ccmesh/internal/mesh"
	"github.com/ccmesh/ccmesh/internal/router"
	"github.com/ccmesh/ccmesh/internal/sip"
	"github.com/ccmesh/ccmesh/internal/store"
)

// logWindow is how many events the in-memory log keeps; it is also the most the
// store writer may lag before producers wait.
const logWindow = 1 << 16

// Node is one running ccmesh node.
type Node struct {
	cfg    *config.Config
	logger *slog.Logger
	store  *store.Store
	log    *events.Log
	agents *agent.Manager
	router *router.Router
	ix     *interaction.Service
	api    *api.Server
	sip    *sip.Server // nil when no SIP listener is configured
	mesh   *mesh.Mesh  // nil when the node is not in a cluster
	ln     net.Listener
	ready  atomic.Bool
	start  uint64 // last seq persisted before this run
	// shared is the agents and queues in force (changed at run time).
	shared *shared
	// dir resolves agents for the SIP registrar; replaced on a change.
	dir *liveDirectory
	// sounds are the queues' sounds taken from peers (nil alone).
	sounds *peerSounds
}

// New opens storage, builds every component and binds the listeners. Nothing runs
// until Run.
func New(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*Node, error) {
	n := &Node{logger: logger.With("node", cfg.Node.ID), dir: &liveDirectory{}}
	if err := os.MkdirAll(cfg.Node.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("node: data_dir: %w", err)
	}
	cfg, sh, err := startingConfig(cfg, n.logger)
	if err != nil {
		return nil, err
	}
	n.cfg, n.shared = cfg, sh
	if cfg.Cluster.Enabled() {
		n.sounds = newPeerSounds(cfg.Node.DataDir, n.logger.With("component", "sounds"))
	}
	n.dir.Store(newDirectory(cfg.Agents))
	st, err := store.Open(ctx, cfg.Node.DataDir, n.logger)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n.store = st
	last, err := st.LastSeq(ctx)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("node: %w", err)
	}
	n.start = last
	n.log = events.NewLog(last, logWindow, true)
	clk := clock.Real{}
	epoch, err := nextEpoch(cfg.Node.DataDir, time.Now())
	if err != nil {
		st.Close()
		return nil, err
	}
	owned := cfg.Agents
	if cfg.Cluster.Enabled() {
		owned = mesh.Owned(cfg.Cluster.Members, cfg.Node.ID, cfg.Agents)
	}
	n.agents = agent.NewManager(agent.Params{
		Node: cfg.Node.ID, Agents: owned, Clock: clk, Log: n.log, MissedOffer: cfg.Routing.MissedOffer,
		Epoch: epoch, Logger: n.logger.With("component", "agent"),
		Reachable: n.reachable,
	})
	// Alone, the node's agent manager answers every reservation; in a cluster the
	// mesh sends those of other owners' agents to them (ADR 0006).
	var owners interface {
		router.Reserver
		router.Snapshotter
		interaction.Agents
	} = n.agents
	var fairness router.Fairness // in a cluster: a freed agent goes to the best interaction cluster-wide
	// fail releases what is already open when start-up cannot complete.
	fail := func(err error) (*Node, error) {
		if n.sip != nil {
			n.sip.Close()
		}
		if n.mesh != nil {
			n.mesh.Close()
		}
		st.Close()
		return nil, fmt.Errorf("node: %w", err)
	}
	if cfg.Cluster.Enabled() {
		n.mesh, err = mesh.New(mesh.Params{Config: cfg.Cluster, Node: cfg.Node.ID, Agents: cfg.Agents, Local: n.agents, Log: n.log, DataDir: cfg.Node.DataDir, OnSharedConfig: n.onReplicated,
			Contacts: n.localContacts, Registrations: n.localRegistrations, Sounds: n.serveSound, Logger: n.logger.With("component", "mesh")})
		if err != nil {
			return fail(err)
		}
		owners, fairness = n.mesh, n.mesh
	}
	n.ix, err = interaction.NewService(interaction.Params{Queues: cfg.Queues, Log: n.log, Clock: clk, Logger: n.logger.With("component", "interaction")})
	if err != nil {
		return fail(err)
	}
	n.router, err = router.New(router.Params{
		Queues: cfg.Queues, Agents: cfg.Agents, Reserver: owners, Offerer: n.ix, Owner: owners, Fairness: fairness, OnTimeout: n.ix.TimedOut,
		Log: n.log, Clock: clk, Logger: n.logger.With("component", "router"),
		MaxWaiting: cfg.Routing.MaxWaiting, Candidates: cfg.Routing.DecisionCandidates,
	})
	if err != nil {
		return fail(err)
	}
	n.ix.Wire(owners, n.router)
	if n.mesh != nil {
		n.agents.SetObserver(n.mesh) // lease ends go to whichever node holds the lease
		n.mesh.Wire(n.router, n.ix)
	} else {
		n.agents.SetObserver(n.ix)
	}
	var regs api.Registrations
	if cfg.SIP.Enabled() {
		routes, voice, err := n.voicePlan(cfg.Queues)
		if err != nil {
			return fail(err)
		}
		var contacts func(core.AgentID) []string
		if n.mesh != nil {
			contacts = n.mesh.Contacts // a phone may be registered at the agent's owner
		}
		var peers sip.Peers
		if n.mesh != nil {
			peers = n.mesh
		}
		n.sip, err = sip.New(sip.Params{Config: cfg.SIP, Directory: n.dir, Interactions: n.ix, Routes: routes, Queues: voice,
			Contacts: contacts, Peers: peers,
			Log: n.log, Clock: clk, Logger: n.logger.With("component", "sip")})
		if err != nil {
			return fail(err)
		}
		regs = n.sip.Registrar()
		// An agent's first phone registering, or last one going, changes whether
		// voice offers can reach the agent: the routers look at the agent again.
		n.sip.Registrar().OnReachability(func(id core.AgentID, ok bool) {
			cause := map[bool]string{true: "phone_registered", false: "phone_unregistered"}[ok]
			if err := n.agents.DeviceChanged(id, cause); err != nil {
				n.logger.Warn("record a phone change", "agent", id, "err", err)
			}
		})
		if d := n.sip.Deliverer(); d != nil {
			n.ix.SetDeliverer(core.ChannelVoice, d)
		}
	}
	var calls api.Calls
	if n.sip != nil {
		calls = n.sip
	}
	var cluster api.Cluster
	if n.mesh != nil {
		cluster = n.mesh
	}
	n.api = api.New(api.Params{
		Registrations: regs, Calls: calls, Cluster: cluster, AllAgents: cfg.Agents, Shared: n,
		Node: cfg.Node.ID, Tokens: cfg.APITokens, Agents: n.agents, Interactions: n.ix, Router: n.router,
		Store: st, Log: n.log, Logger: n.logger.With("component", "api"), Ready: n.ready.Load,
	})
	n.ln, err = net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		return fail(fmt.Errorf("listen http %s: %w", cfg.HTTP.Listen, err))
	}
	return n, nil
}

// reachable tells the agent manager whether an agent has a device for a
// channel: for voice, a phone registered here (in a cluster, phones register
// with their agent's home node). Without SIP there is no voice to reach.
func (n *Node) reachable(id core.AgentID, ch core.Channel) bool {
	if ch != core.ChannelVoice || n.sip == nil {
		return true
	}
	return n.sip.Registrar().Registered(id)
}

// localContacts are the contacts registered at this node for agent id (the
// mesh answers other nodes' questions with them).
func (n *Node) localContacts(id core.AgentID) []string {
	if n.sip == nil {
		return nil
	}
	var out []string
	for _, b := range n.sip.Registrar().Bindings(id) {
		out = append(out, b.Contact)
	}
	return out
}

// localRegistrations are this node's SIP registrations (for the cluster-wide list).
func (n *Node) localRegistrations() any {
	if n.sip == nil {
		return map[core.AgentID][]sip.Binding{}
	}
	return n.sip.Registrar().All()
}

// SIPAddrs returns the bound SIP UDP and TCP addresses ("" when off).
func (n *Node) SIPAddrs() (udp, tcp string) {
	if n.sip == nil {
		return "", ""
	}
	return n.sip.Addrs()
}

// directory resolves agents by id or DN for the SIP registrar.
type directory map[string]struct {
	id       core.AgentID
	password string
}

func newDirectory(agents []config.Agent) *directory {
	d := directory{}
	for _, a := range agents {
		e := struct {
			id       core.AgentID
			password string
		}{a.ID, a.Password}
		d[string(a.ID)] = e
		d[string(a.DN)] = e
	}
	return &d
}

// liveDirectory is the directory in force, replaced whole on a configuration change.
type liveDirectory struct{ atomic.Pointer[directory] }

// Lookup implements sip.Directory.
func (d *liveDirectory) Lookup(user string) (core.AgentID, string, bool) {
	e, ok := (*d.Load())[user]
	return e.id, e.password, ok
}

// HTTPAddr is the address the API listens on (useful with port 0).
func (n *Node) HTTPAddr() string { return n.ln.Addr().String() }

// Run serves until ctx ends, then drains: new interactions are refused while the
// ones in progress finish, bounded by the drain timeout; then everything stops in
// order and the store writes what is left.
func (n *Node) Run(ctx context.Context) error {
	// The store writer and router outlive ctx: they must run through the drain.
	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	g, gctx := errgroup.WithContext(bg)
	g.Go(func() error { return n.store.RunWriter(gctx, n.log) })
	g.Go(func() error { return n.router.Run(gctx, n.start) })
	if n.sip != nil {
		g.Go(func() error { return n.sip.Run(gctx) })
	}
	if n.mesh != nil {
		g.Go(func() error { return n.mesh.Run(gctx, n.start) })
		if n.sip != nil {
			g.Go(func() error { return n.runPeerSounds(gctx) })
		}
	}
	// Requests (event streams above all) end when shutdown starts, not after it.
	hctx, stopHTTP := context.WithCancel(gctx)
	defer stopHTTP()
	srv := &http.Server{
		Handler: n.api, BaseContext: func(net.Listener) context.Context { return hctx },
		// No WriteTimeout: event streams are long-lived responses.
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
	}
	srv.RegisterOnShutdown(stopHTTP)

	// Recover before serving: the listener is bound, so early clients wait in its
	// backlog instead of meeting a half-recovered node.
	err := n.closePreviousRun(ctx)
	var open []events.Interaction
	if err == nil {
		open, err = n.store.OpenInteractions(ctx)
	}
	if err == nil {
		err = n.ix.Recover(open)
	}
	if err != nil {
		stopBG()
		_ = g.Wait()
		_ = n.ln.Close()
		n.close()
		return fmt.Errorf("node: recover interactions: %w", err)
	}
	g.Go(func() error {
		if err := srv.Serve(n.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("node: http: %w", err)
		}
		return nil
	})
	if len(open) > 0 {
		n.logger.Info("recovered interactions from the previous run", "count", len(open))
	}
	_, _ = n.log.Append(events.Event{Time: time.Now().UTC(), Type: events.TypeNode, Data: events.Node{Node: n.cfg.Node.ID, State: "started"}})
	n.ready.Store(true)
	udp, tcp := n.SIPAddrs()
	attrs := []any{"http", "http://" + n.HTTPAddr(), "sip_udp", udp, "sip_tcp", tcp}
	if n.sip != nil {
		if tls, ws := n.sip.SecureAddrs(); tls != "" || ws != "" {
			attrs = append(attrs, "sip_tls", tls, "sip_ws", ws)
		}
	}
	attrs = append(attrs, "data", n.store.Path(), "agents", len(n.cfg.Agents), "queues", len(n.cfg.Queues))
	n.logger.Info("ready", attrs...)

	var runErr error
	select {
	case <-ctx.Done(): // first signal: drain
	case <-gctx.Done(): // a component failed
		runErr = errors.New("node: a component stopped")
	}
	n.ready.Store(false)
	if runErr != nil {
		// The store writer may be the one that died: nothing more can be made
		// durable, so close the log first to wake everything waiting on it.
		n.log.Close()
	} else {
		n.logger.Info("draining", "timeout", n.cfg.Node.DrainTimeout.D().String())
		_, _ = n.log.Append(events.Event{Time: time.Now().UTC(), Type: events.TypeNode, Data: events.Node{Node: n.cfg.Node.ID, State: "draining"}})
		// Queued interactions stay queued (durable; they resume at the next start);
		// those with agents finish.
		n.router.SetDraining(true)
		dctx, cancel := context.WithTimeout(context.Background(), n.cfg.Node.DrainTimeout.D())
		if err := n.ix.Drain(dctx); err != nil {
			n.logger.Warn("drain incomplete; open interactions resume at next start", "err", err)
		}
		cancel()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Shutdown(sctx)
	cancel()
	if runErr == nil {
		_, _ = n.log.Append(events.Event{Time: time.Now().UTC(), Type: events.TypeNode, Data: events.Node{Node: n.cfg.Node.ID, State: "stopped"}})
	}
	stopBG()
	if err := g.Wait(); err != nil && runErr == nil {
		runErr = err
	} else if err != nil {
		runErr = fmt.Errorf("%w: %w", runErr, err)
	}
	n.close()
	n.logger.Info("stopped")
	return runErr
}

// closePreviousRun records the end of what died with the previous run: its open
// leases are revoked and its logged-in agents logged out (agents log in again; their
// sessions lived in that process). History and reports then never show a lease or
// a session open forever.
func (n *Node) closePreviousRun(ctx context.Context) error {
	leases, err := n.store.OpenLeases(ctx)
	if err != nil {
		return err
	}
	agents, err := n.store.LoggedInAgents(ctx)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	evs := make([]events.Event, 0, len(leases)+len(agents))
	for _, l := range leases {
		evs = append(evs, events.Event{Time: now, Type: events.TypeLease, Agent: l.Agent, Interaction: l.Interaction,
			Data: events.Lease{Lease: l.Lease, Epoch: l.Epoch, Channel: l.Channel, Outcome: "revoked"}})
	}
	for _, a := range agents {
		evs = append(evs, events.Event{Time: now, Type: events.TypeAgentState, Agent: a,
			Data: events.AgentState{State: "logged_out", Presence: "logged_out", Cause: "node_restart", Epoch: n.agents.Epoch(), Load: []events.ChannelLoad{}}})
	}
	if len(evs) == 0 {
		return nil
	}
	if _, err := n.log.Append(evs...); err != nil {
		return err
	}
	n.logger.Info("closed what the previous run left open", "leases", len(leases), "agents", len(agents))
	return nil
}

func (n *Node) close() {
	if n.mesh != nil {
		n.mesh.Close()
	}
	n.log.Close()
	if err := n.store.Close(); err != nil {
		n.logger.Error("close store", "err", err)
	}
}
