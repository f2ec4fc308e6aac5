package mesh

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/interaction"
)

// The health state machine: up on a heartbeat, suspect after two silent
// intervals, down once silent for the timeout less an interval and a check
// period (so a peer that stops is down within the timeout) — its requests'
// context ends — and up again on the next heartbeat with a fresh context.
func TestPeerHealthStates(t *testing.T) {
	h := newHealth([]core.NodeID{"n1", "n2"}, "n1", 250*time.Millisecond, time.Second)
	if h.state("n2") != PeerDown || h.state("n1") != "" {
		t.Fatalf("at start: n2 %q, self %q", h.state("n2"), h.state("n1"))
	}
	t0 := time.Now()
	if tr, ok := h.heard(heartbeat{From: "n2", Epoch: 7}, t0); !ok || tr.from != PeerDown || tr.to != PeerUp || !tr.never {
		t.Fatalf("first heartbeat: %+v %v", tr, ok)
	}
	_, ctx, _ := h.admit("n2", false)
	steps := []struct {
		after time.Duration
		want  PeerState
	}{{400 * time.Millisecond, PeerUp}, {600 * time.Millisecond, PeerSuspect}, {700 * time.Millisecond, PeerSuspect}, {730 * time.Millisecond, PeerDown}}
	for _, s := range steps {
		h.lastCheck = t0.Add(s.after) // checks every 25 ms: no stall
		h.check(t0.Add(s.after))
		if got := h.state("n2"); got != s.want {
			t.Fatalf("after %v silent: %s, want %s", s.after, got, s.want)
		}
	}
	if ctx.Err() == nil {
		t.Fatal("requests in flight to a down peer were not ended")
	}
	if _, ctx, _ := h.admit("n2", false); ctx != nil {
		t.Fatal("a request was admitted to a down peer")
	}
	if _, ok := h.heard(heartbeat{From: "n2", Epoch: 7}, t0.Add(2*time.Second)); !ok || h.state("n2") != PeerUp || h.epoch("n2") != 7 {
		t.Fatal("a heartbeat did not bring the peer back")
	}
	if _, ctx, _ := h.admit("n2", false); ctx == nil || ctx.Err() != nil {
		t.Fatal("a peer back up kept its ended context")
	}
	// A stall of this node (a check long overdue) takes nobody down at once...
	h.lastCheck = t0.Add(2 * time.Second)
	if out := h.check(t0.Add(4 * time.Second)); len(out) != 0 || h.state("n2") != PeerUp {
		t.Fatalf("a stall took peers down: %+v", out)
	}
	// ...but checks that keep coming late still detect.
	if out := h.check(t0.Add(5 * time.Second)); len(out) != 1 || h.state("n2") != PeerDown {
		t.Fatalf("late checks never detect: %+v", out)
	}
}

// A member that goes silent is down at the others within the peer timeout;
// from then on nothing is sent to it — a reservation of its agent fails at
// once — its agents leave the routing view, and an interaction goes to an
// agent of a member still up.
func TestDeadPeerIsRefrainedFrom(t *testing.T) {
	agents := []config.Agent{taskAgent("ann", "n3", 1), taskAgent("bob", "n2", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n2, n3 := node(nodes, "n1"), node(nodes, "n2"), node(nodes, "n3")
	ready(t, n3, "ann")
	ready(t, n2, "bob")
	eventually(t, "n1 seeing both agents ready", func() bool {
		st, _ := n1.router.Stats("q")
		return st.AgentsReady == 2
	})
	silent := time.Now()
	n3.mesh.Close() // n3 dies: no heartbeat, no answer
	eventually(t, "n1 taking n3 as down", func() bool { return n1.mesh.health.state("n3") == PeerDown })
	detect := time.Since(silent)
	if detect > 3*time.Second { // a bound, not a benchmark (BenchmarkPeerDownDetection)
		t.Fatalf("detection took %v (peer_timeout 1 s)", detect)
	}
	sentNow := func() (uint64, uint64) {
		n1.mesh.health.mu.Lock()
		defer n1.mesh.health.mu.Unlock()
		p := n1.mesh.health.peers["n3"]
		return p.sent, p.refrained
	}
	sent, _ := sentNow()
	start := time.Now()
	_, err := n1.mesh.Reserve(agent.ReserveRequest{Agent: "ann", Interaction: "ix-x", Channel: core.ChannelTask, TTL: time.Minute})
	if !errors.Is(err, ErrOwnerUnreachable) || time.Since(start) > 200*time.Millisecond { // fails without asking: no request timeout
		t.Fatalf("reserve at a down owner: %v after %v", err, time.Since(start))
	}
	if after, refrained := sentNow(); after != sent || refrained == 0 {
		t.Fatalf("requests sent to a down peer: %d → %d (refrained %d)", sent, after, refrained)
	}
	eventually(t, "n3's agent out of n1's routing view", func() bool {
		st, _ := n1.router.Stats("q")
		return st.AgentsReady == 1
	})
	ix, _, err := n1.ix.Create(interaction.CreateRequest{Channel: core.ChannelTask, Queue: "q"})
	must(t, err)
	waitOffered(t, n1, ix.ID, "bob")
	st := n1.mesh.Status()
	i := slices.IndexFunc(st.Members, func(m MemberState) bool { return m.ID == "n3" })
	if m := st.Members[i]; m.Health != "down" || m.Downs != 1 || m.RequestsRefrained == 0 {
		t.Fatalf("n3 in n1's status: %+v", m)
	}
}

// BenchmarkPeerDownDetection measures how long after a member dies (its NATS
// connection closed: no heartbeat, no answer) another member takes it as down,
// one three-member cluster per iteration; it reports the median and the worst.
//
//	go test -run '^$' -bench PeerDownDetection -benchtime 20x ./internal/mesh/
func BenchmarkPeerDownDetection(b *testing.B) {
	var lat []time.Duration
	for range b.N {
		nodes := startClusterB(b, []config.Agent{taskAgent("ann", "n3", 1)})
		n1, n3 := node(nodes, "n1"), node(nodes, "n3")
		for n1.mesh.health.state("n3") != PeerUp {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(time.Duration(len(lat)%5) * 50 * time.Millisecond) // spread the kills over the heartbeat interval
		start := time.Now()
		n3.mesh.Close()
		for n1.mesh.health.state("n3") != PeerDown {
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(start))
		for _, n := range nodes {
			n.mesh.Close() // the next cluster runs alone on the cores
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Milliseconds()), "max-ms")
}

// An agent whose owner died logs in at a survivor, which takes her over (the
// two survivors are the directory's quorum); the other survivor routes to her
// again — she is no longer held unreachable with her dead owner.
func TestAgentTakenOverFromADeadMember(t *testing.T) {
	agents := []config.Agent{taskAgent("ann", "n3", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n2, n3 := node(nodes, "n1"), node(nodes, "n2"), node(nodes, "n3")
	inSync(t, nodes)
	ready(t, n3, "ann")
	n3.mesh.Close()
	eventually(t, "n1 and n2 taking n3 as down", func() bool {
		return n1.mesh.health.state("n3") == PeerDown && n2.mesh.health.state("n3") == PeerDown
	})
	deadline := time.Now().Add(20 * time.Second) // the survivors may elect a new JetStream leader first
	for {
		err := n2.mesh.Claim(context.Background(), "ann")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("take ann over from the dead n3: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	ready(t, n2, "ann")
	ix, _, err := n1.ix.Create(interaction.CreateRequest{Channel: core.ChannelTask, Queue: "q"})
	must(t, err)
	waitOffered(t, n1, ix.ID, "ann")
}

// A heal settles the leases held across the link: the owner revokes a lease
// the holder no longer holds (its notice was lost during the cut), keeps the
// one it still holds, and a lease granted just before the holder's list is
// kept too.
func TestHealReconcilesLeases(t *testing.T) {
	agents := []config.Agent{taskAgent("hal", "n2", 3)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n2 := node(nodes, "n1"), node(nodes, "n2")
	ready(t, n2, "hal")
	// A lease whose interaction n1 no longer holds (as if its end was lost).
	_, err := n1.mesh.Reserve(agent.ReserveRequest{Agent: "hal", Interaction: "ix-ghost", Channel: core.ChannelTask, TTL: time.Hour})
	must(t, err)
	ix, _, err := n1.ix.Create(interaction.CreateRequest{Channel: core.ChannelTask, Queue: "q"})
	must(t, err)
	waitOffered(t, n1, ix.ID, "")
	time.Sleep(reconcileGrace + 100*time.Millisecond) // both leases older than the grace
	// A fresh lease the holder's list cannot show yet.
	_, err = n1.mesh.Reserve(agent.ReserveRequest{Agent: "hal", Interaction: "ix-fresh", Channel: core.ChannelTask, TTL: time.Hour})
	must(t, err)
	offered := func() int {
		v, _ := n2.agents.Snapshot("hal")
		for _, l := range v.State.Load {
			if l.Channel == core.ChannelTask {
				return l.Offered
			}
		}
		return -1
	}
	if got := offered(); got != 3 {
		t.Fatalf("hal's offers before the heal: %d", got)
	}
	// n1 takes n2 as down (as after a cut), then its next heartbeat brings it back.
	now := time.Now().Add(5 * time.Second)
	n1.mesh.health.mu.Lock()
	n1.mesh.health.lastCheck = now
	n1.mesh.health.mu.Unlock()
	for _, tr := range n1.mesh.health.check(now) {
		n1.mesh.transitions <- tr
	}
	eventually(t, "the heal revoking the lost lease only", func() bool { return offered() == 2 })
	if got, _ := n1.ix.Get(ix.ID); got.State != string(interaction.StateOffered) {
		t.Fatalf("the interaction n1 holds after the heal: %+v", got)
	}
	if n1.mesh.health.state("n2") != PeerUp {
		t.Fatal("n2 not up again")
	}
}
