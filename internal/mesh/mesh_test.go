package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/interaction"
	"github.com/ccmesh/ccmesh/internal/router"
)

// testNode is one cluster member, wired like internal/node does: its own log,
// owner of its share of the agents, a router over all agents, the interaction
// service, and the mesh.
type testNode struct {
	id     core.NodeID
	log    *events.Log
	agents *agent.Manager
	router *router.Router
	ix     *interaction.Service
	mesh   *Mesh
}

var members = []core.NodeID{"n1", "n2", "n3"}

// startClusterB is startCluster for benchmarks, with one task queue.
func startClusterB(b *testing.B, agents []config.Agent) []*testNode {
	return startCluster(b, agents, []config.Queue{taskQueue("q")}, nil)
}

// startCluster starts three members on loopback, clustered over routes to n1.
func startCluster(t testing.TB, agents []config.Agent, queues []config.Queue, deliver func(*testNode) interaction.Deliverer) []*testNode {
	t.Helper()
	return startClusterWith(t, agents, queues, deliver, nil)
}

// startClusterWith is startCluster with each member's cluster config changed by mutate.
func startClusterWith(t testing.TB, agents []config.Agent, queues []config.Queue, deliver func(*testNode) interaction.Deliverer,
	mutate func(*config.ClusterConfig)) []*testNode {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var nodes []*testNode
	var seed string
	for _, id := range members {
		cfg := config.ClusterConfig{Name: "test", Members: members, Listen: "127.0.0.1:0", RoutesListen: "127.0.0.1:0",
			RequestTimeout: config.Duration(time.Second)}
		if seed != "" {
			cfg.Peers = []string{"nats-route://" + seed}
		}
		if mutate != nil {
			mutate(&cfg)
		}
		n := &testNode{id: id, log: events.NewLog(0, 1<<20, false)}
		logger := slog.New(slog.DiscardHandler)
		if os.Getenv("MESH_TEST_LOG") != "" {
			logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", id)
		}
		n.agents = agent.NewManager(agent.Params{Node: id, Agents: Owned(members, id, agents), Clock: clock.Real{}, Log: n.log,
			MissedOffer: config.MissedOfferNotReady, Epoch: uint64(time.Now().UnixNano()), Logger: logger})
		var err error
		if n.ix, err = interaction.NewService(interaction.Params{Queues: queues, Log: n.log, Clock: clock.Real{}, Logger: logger}); err != nil {
			t.Fatal(err)
		}
		if n.mesh, err = New(Params{Config: cfg, Node: id, Agents: agents, Local: n.agents, Log: n.log, Logger: logger, DataDir: t.TempDir()}); err != nil {
			t.Fatal(err)
		}
		if n.router, err = router.New(router.Params{Queues: queues, Agents: agents, Reserver: n.mesh, Offerer: n.ix, Owner: n.mesh, Fairness: n.mesh,
			OnTimeout: n.ix.TimedOut, Log: n.log, Clock: clock.Real{}, Logger: logger, TickInterval: 20 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		n.ix.Wire(n.mesh, n.router)
		n.agents.SetObserver(n.mesh)
		n.mesh.Wire(n.router, n.ix)
		if deliver != nil {
			n.ix.SetDeliverer(core.ChannelTask, deliver(n))
		}
		if seed == "" {
			seed = n.mesh.RoutesAddr()
		}
		wg.Add(2)
		go func() { defer wg.Done(); _ = n.router.Run(ctx, 0) }()
		go func() { defer wg.Done(); _ = n.mesh.Run(ctx, 0) }()
		nodes = append(nodes, n)
	}
	t.Cleanup(func() {
		cancel()
		for _, n := range nodes {
			n.log.Close()
		}
		wg.Wait()
		for _, n := range nodes {
			n.mesh.Close()
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range nodes {
		for n.mesh.srv.NumRoutes() < len(members)-1 {
			if time.Now().After(deadline) {
				t.Fatalf("%s has %d routes", n.id, n.mesh.srv.NumRoutes())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Every member answers every other (its subscriptions reached the routes).
	for _, a := range nodes {
		for _, b := range nodes {
			for a != b {
				if _, err := a.mesh.call(b.id, request{Op: opSnapshot}); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s gets no answer from %s", a.id, b.id)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	return nodes
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitOffered waits until interaction id at n is offered (to agent, when set).
func waitOffered(t *testing.T, n *testNode, id core.InteractionID, agent core.AgentID) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s offered to %q at %s", id, agent, n.id), func() bool {
		got, _ := n.ix.Get(id)
		return got.State == string(interaction.StateOffered) && (agent == "" || got.Agent == agent)
	})
}

func node(nodes []*testNode, id core.NodeID) *testNode {
	for _, n := range nodes {
		if n.id == id {
			return n
		}
	}
	return nil
}

func taskQueue(id string) config.Queue {
	wrap := config.Duration(0)
	return config.Queue{ID: core.QueueID(id), Strategy: config.StrategyLongestIdle, Skills: map[core.SkillName]int{"s": 1},
		OfferTimeout: config.Duration(5 * time.Second), WrapUp: &wrap,
		ServiceLevel: config.ServiceLevel{Threshold: config.Duration(time.Second), TargetPercent: 80}}
}

func taskAgent(id string, home core.NodeID, capacity int) config.Agent {
	return config.Agent{ID: core.AgentID(id), Home: home, Skills: map[core.SkillName]int{"s": 5},
		Capacity: map[core.Channel]int{core.ChannelTask: capacity, core.ChannelVoice: 0, core.ChannelChat: 0, core.ChannelCallback: 0}}
}

func TestOwnersAreTheSameEverywhereAndHonourHome(t *testing.T) {
	var agents []config.Agent
	for i := range 300 {
		agents = append(agents, config.Agent{ID: core.AgentID(fmt.Sprintf("a%03d", i))})
	}
	agents[7].Home = "n3"
	a, b := Owners(members, agents), Owners([]core.NodeID{"n3", "n1", "n2"}, agents)
	count := map[core.NodeID]int{}
	for id, n := range a {
		if b[id] != n {
			t.Fatalf("owner of %s depends on the members' order: %s vs %s", id, n, b[id])
		}
		count[n]++
	}
	if a["a007"] != "n3" {
		t.Fatalf("home ignored: a007 owned by %s", a["a007"])
	}
	for _, n := range members {
		if count[n] < 60 {
			t.Fatalf("unbalanced ownership: %v", count)
		}
	}
	// A member leaving moves only its own agents.
	c := Owners([]core.NodeID{"n1", "n2"}, agents)
	for id, n := range a {
		if n != "n3" && c[id] != n {
			t.Fatalf("%s moved from %s to %s though its owner stayed", id, n, c[id])
		}
	}
}

// An interaction created at n1 is routed to an agent owned by n2: n1 sees the
// agent ready through n2's feed, reserves at n2 (which grants), and the accept,
// completion and wrap-up happen at n2; n2's history shows every step.
func TestInteractionAtOneNodeTakesAgentOwnedByAnother(t *testing.T) {
	agents := []config.Agent{taskAgent("ann", "n2", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n2 := node(nodes, "n1"), node(nodes, "n2")
	if err := n1.agents.Login("ann"); !errors.Is(err, agent.ErrUnknownAgent) {
		t.Fatalf("login of ann at n1 (not her owner): %v", err)
	}
	ready(t, n2, "ann")
	ix, _, err := n1.ix.Create(interaction.CreateRequest{Channel: core.ChannelTask, Queue: "q"})
	must(t, err)
	waitOffered(t, n1, ix.ID, "ann")
	if v, _ := n2.agents.Snapshot("ann"); v.State.State != string(agent.StateReserved) {
		t.Fatalf("ann at her owner: %+v", v.State)
	}
	_, err = n1.ix.Accept(ix.ID, "ann")
	must(t, err)
	if v, _ := n2.agents.Snapshot("ann"); v.State.State != string(agent.StateBusy) {
		t.Fatalf("ann after accept: %+v", v.State)
	}
	_, err = n1.ix.Complete(ix.ID, "ann")
	must(t, err)
	eventually(t, "the interaction ended (wrap-up 0 ended at the owner)", func() bool {
		_, live := n1.ix.Get(ix.ID)
		return !live
	})
	if v, _ := n2.agents.Snapshot("ann"); v.State.State != string(agent.StateReady) {
		t.Fatalf("ann after the interaction: %+v", v.State)
	}
}

// A missed offer at a remote owner comes back as a lease end: the interaction
// goes back to its queue at n1, and the agent is not ready at n2.
func TestRemoteOfferExpiryComesBack(t *testing.T) {
	agents := []config.Agent{taskAgent("bob", "n3", 1)}
	q := taskQueue("q")
	q.OfferTimeout = config.Duration(300 * time.Millisecond)
	nodes := startCluster(t, agents, []config.Queue{q}, nil)
	n1, n3 := node(nodes, "n1"), node(nodes, "n3")
	ready(t, n3, "bob")
	ix, _, err := n1.ix.Create(interaction.CreateRequest{Channel: core.ChannelTask, Queue: "q"})
	must(t, err)
	waitOffered(t, n1, ix.ID, "")
	eventually(t, "back in the queue after the offer expired at n3", func() bool {
		got, _ := n1.ix.Get(ix.ID)
		return got.State == string(interaction.StateQueued) && got.Agent == ""
	})
	if v, _ := n3.agents.Snapshot("bob"); v.State.State != string(agent.StateNotReady) || v.State.Reason != agent.ReasonMissedOffer {
		t.Fatalf("bob after the missed offer: %+v", v.State)
	}
}

// Only the owner grants, and only under its current epoch: a token from an old
// epoch (the owner restarted) is refused through the protocol, and so is a
// reservation of an agent the asked node does not own.
func TestStaleEpochCannotAct(t *testing.T) {
	agents := []config.Agent{taskAgent("cat", "n2", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n2 := node(nodes, "n1"), node(nodes, "n2")
	ready(t, n2, "cat")
	g, err := n1.mesh.Reserve(agent.ReserveRequest{Agent: "cat", Interaction: "ix-1", Channel: core.ChannelTask, TTL: time.Minute})
	must(t, err)
	stale := g.Token
	stale.Epoch--
	if err := n1.mesh.Accept(stale); !errors.Is(err, agent.ErrStaleEpoch) {
		t.Fatalf("accept with a stale epoch: %v, want ErrStaleEpoch", err)
	}
	if _, err := n1.mesh.Reserve(agent.ReserveRequest{Agent: "cat", Interaction: "ix-2", Channel: core.ChannelTask, TTL: time.Minute}); err == nil {
		t.Fatal("a second reservation beyond capacity was granted")
	} else if deny := new(agent.DenyError); !errors.As(err, &deny) || deny.Reason != agent.DenyAtCapacity {
		t.Fatalf("second reservation: %v, want at_capacity", err)
	}
	// n2 itself refuses to act for an agent owned elsewhere: ask n3 about cat directly.
	r, err := n1.mesh.call("n3", request{Op: opReserve, Agent: "cat", Interaction: "ix-3", Channel: core.ChannelTask, TTLMillis: 1000})
	must(t, err)
	if err := r.err("cat"); !errors.Is(err, agent.ErrUnknownAgent) && !isDeny(err, agent.DenyUnknownAgent) {
		t.Fatalf("reserve at a non-owner: %v", err)
	}
	must(t, n1.mesh.Accept(g.Token))
}

func isDeny(err error, reason agent.DenyReason) bool {
	var d *agent.DenyError
	return errors.As(err, &d) && d.Reason == reason
}

// A node whose peer is gone fails fast: a reservation at an unreachable owner
// returns ErrOwnerUnreachable within the request timeout.
func TestUnreachableOwnerFailsFast(t *testing.T) {
	agents := []config.Agent{taskAgent("dan", "n3", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n3 := node(nodes, "n1"), node(nodes, "n3")
	n3.mesh.Close()
	start := time.Now()
	_, err := n1.mesh.Reserve(agent.ReserveRequest{Agent: "dan", Interaction: "ix-1", Channel: core.ChannelTask, TTL: time.Minute})
	if !errors.Is(err, ErrOwnerUnreachable) {
		t.Fatalf("reserve at a stopped owner: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %s", d)
	}
	// Asked again at once, it does not wait: the member is taken as down for a moment.
	start = time.Now()
	if _, err := n1.mesh.Reserve(agent.ReserveRequest{Agent: "dan", Interaction: "ix-2", Channel: core.ChannelTask, TTL: time.Minute}); !errors.Is(err, ErrOwnerUnreachable) {
		t.Fatalf("second reserve: %v", err)
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("the second request to a down member took %s", d)
	}
}

// ready logs agent id in at its owner n and makes it ready.
func ready(t *testing.T, n *testNode, id core.AgentID) {
	t.Helper()
	must(t, n.agents.Login(id))
	must(t, n.agents.SetReady(id))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// autoWorker accepts every offer at once and completes it after a moment.
type autoWorker struct {
	n    *testNode
	done *atomic.Int64
}

func (w autoWorker) Deliver(ix events.Interaction, tok agent.Token) {
	if _, err := w.n.ix.Accept(ix.ID, tok.Agent); err != nil {
		return
	}
	time.Sleep(time.Millisecond)
	if _, err := w.n.ix.Complete(ix.ID, tok.Agent); err == nil {
		w.done.Add(1)
	}
}
func (autoWorker) Withdraw(core.InteractionID, agent.Token) {}
func (autoWorker) Ended(core.InteractionID, string)         {}

// The cluster stress test of issue 4: all three nodes route interactions at
// once to 300 agents spread over them by ownership (capacity 1 each), every
// reservation of a remote agent going through its owner. Then an audit replays
// each owner's lease events: no agent ever held more leases than its capacity,
// and every lease ended. MESH_STRESS_INTERACTIONS changes the count (default
// 100,000). The logs are in memory only here (no SQLite writer).
func TestClusterStressNeverOverbooks(t *testing.T) {
	total := 100000
	if v := os.Getenv("MESH_STRESS_INTERACTIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("MESH_STRESS_INTERACTIONS=%q: want a positive count", v)
		}
		total = n
	}
	var agents []config.Agent
	for i := range 300 {
		agents = append(agents, taskAgent(fmt.Sprintf("a%03d", i), "", 1))
	}
	var done atomic.Int64
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, func(n *testNode) interaction.Deliverer {
		return autoWorker{n: n, done: &done}
	})
	for _, n := range nodes {
		for _, a := range Owned(members, n.id, agents) {
			must(t, n.agents.Login(a.ID))
			must(t, n.agents.SetReady(a.ID))
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	creators := len(nodes) * 4
	for k, n := range nodes {
		for c := range 4 {
			count := total / creators
			if k*4+c < total%creators {
				count++
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range count {
					for {
						_, _, err := n.ix.Create(interaction.CreateRequest{Channel: core.ChannelTask, Queue: "q"})
						if errors.Is(err, interaction.ErrBusy) {
							time.Sleep(time.Millisecond) // the node's waiting limit: back off
							continue
						}
						if err != nil {
							failed.Add(1)
						}
						break
					}
				}
			}()
		}
	}
	wg.Wait()
	want := int64(total)
	deadline := time.Now().Add(3 * time.Minute)
	for done.Load() < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	elapsed := time.Since(start)
	if failed.Load() != 0 || done.Load() != want {
		t.Fatalf("%d interactions completed of %d (%d creates failed)", done.Load(), want, failed.Load())
	}
	t.Logf("%d interactions through 3 nodes and 300 agents in %s (%.0f/s)", want, elapsed.Round(time.Millisecond), float64(want)/elapsed.Seconds())

	// Audit from the owners' logs.
	for _, n := range nodes {
		open := map[core.AgentID]int{}
		var after uint64
		buf := make([]events.Event, 0, 4096)
		for {
			evs, _, err := n.log.Read(after, 4096, buf)
			must(t, err)
			if len(evs) == 0 {
				break
			}
			for _, ev := range evs {
				after = ev.Seq
				if ev.Type != events.TypeLease {
					continue
				}
				l := ev.Data.(events.Lease)
				switch l.Outcome {
				case "granted":
					if open[ev.Agent]++; open[ev.Agent] > 1 {
						t.Fatalf("%s: agent %s holds %d leases (capacity 1) at seq %d", n.id, ev.Agent, open[ev.Agent], ev.Seq)
					}
				case "rejected", "released", "expired", "revoked", "wrap_up_ended":
					open[ev.Agent]--
				}
			}
		}
		for id, k := range open {
			if k != 0 {
				t.Fatalf("%s: agent %s ends with %d open leases", n.id, id, k)
			}
		}
	}
}

// served records the order in which offers reach agents, across members, and
// works each offer for a short while.
type served struct {
	n     *testNode
	mu    *sync.Mutex
	order *[]core.InteractionID
}

func (s served) Deliver(ix events.Interaction, tok agent.Token) {
	s.mu.Lock()
	*s.order = append(*s.order, ix.ID)
	s.mu.Unlock()
	if _, err := s.n.ix.Accept(ix.ID, tok.Agent); err != nil {
		return
	}
	time.Sleep(30 * time.Millisecond)
	_, _ = s.n.ix.Complete(ix.ID, tok.Agent)
}
func (served) Withdraw(core.InteractionID, agent.Token) {}
func (served) Ended(core.InteractionID, string)         {}

// Fairness across members: interactions wait at all three members (created
// 300 ms apart, round the members, none at the agent's owner first) while the
// only agent is away; when she gets ready she takes them oldest first, wherever
// each one waits — not the owner's own first, not whichever member hears of her
// first. The tolerance is FairnessTolerance (100 ms): interactions enqueued
// closer together than that may be served in either order.
func TestFreedAgentGoesToTheOldestInteractionClusterWide(t *testing.T) {
	agents := []config.Agent{taskAgent("fay", "n2", 1)}
	var mu sync.Mutex
	var order []core.InteractionID
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, func(n *testNode) interaction.Deliverer {
		return served{n: n, mu: &mu, order: &order}
	})
	n2 := node(nodes, "n2")
	must(t, n2.agents.Login("fay")) // logged in, not ready: everything waits
	var created []core.InteractionID
	for i, id := range []core.NodeID{"n1", "n3", "n2", "n1", "n3", "n2"} {
		if i > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		ix, _, err := node(nodes, id).ix.Create(interaction.CreateRequest{Channel: core.ChannelTask, Queue: "q"})
		must(t, err)
		created = append(created, ix.ID)
	}
	time.Sleep(100 * time.Millisecond) // the heads reach every member
	must(t, n2.agents.SetReady("fay"))
	eventually(t, "all six served", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == len(created)
	})
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(order, created) {
		t.Fatalf("served in the order %v, want the creation order %v", order, created)
	}
}

// A remote reservation can be withdrawn through the protocol by its request id
// (what a requester does when the grant's answer was lost).
func TestRemoteReservationCancelledByRequestID(t *testing.T) {
	agents := []config.Agent{taskAgent("hal", "n2", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n2 := node(nodes, "n1"), node(nodes, "n2")
	ready(t, n2, "hal")
	_, err := n1.mesh.Reserve(agent.ReserveRequest{Agent: "hal", Interaction: "ix-1", Channel: core.ChannelTask, TTL: time.Minute, Request: "lost-1"})
	must(t, err)
	if v, _ := n2.agents.Snapshot("hal"); v.State.State != string(agent.StateReserved) {
		t.Fatalf("hal after the grant: %+v", v.State)
	}
	r, err := n1.mesh.call("n2", request{Op: opCancel, Request: "lost-1"})
	must(t, err)
	must(t, r.err("hal"))
	if v, _ := n2.agents.Snapshot("hal"); v.State.State != string(agent.StateReady) {
		t.Fatalf("hal after the cancel: %+v", v.State)
	}
}

// A member that comes back as a new run held leases whose interactions died with
// its previous run: the owner revokes them (the agent is not left reserved).
func TestOwnerRevokesLeasesOfARestartedHolder(t *testing.T) {
	agents := []config.Agent{taskAgent("ivy", "n2", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n2 := node(nodes, "n1"), node(nodes, "n2")
	ready(t, n2, "ivy")
	_, err := n1.mesh.Reserve(agent.ReserveRequest{Agent: "ivy", Interaction: "ix-1", Channel: core.ChannelTask, TTL: time.Minute})
	must(t, err)
	eventually(t, "n2 knowing n1's run", func() bool {
		n2.mesh.mu.Lock()
		defer n2.mesh.mu.Unlock()
		return n2.mesh.boots["n1"] == n1.mesh.boot
	})
	n2.mesh.noteBoot("n1", n1.mesh.boot) // the same run: nothing happens
	if v, _ := n2.agents.Snapshot("ivy"); v.State.State != string(agent.StateReserved) {
		t.Fatalf("ivy revoked for the same run: %+v", v.State)
	}
	n2.mesh.noteBoot("n1", n1.mesh.boot+1) // n1 restarted
	if v, _ := n2.agents.Snapshot("ivy"); v.State.State != string(agent.StateReady) {
		t.Fatalf("ivy after her holder restarted: %+v", v.State)
	}
}
