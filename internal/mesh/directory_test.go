package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/interaction"
)

func inSync(t *testing.T, nodes []*testNode) {
	t.Helper()
	for _, n := range nodes {
		eventually(t, string(n.id)+" reading the directory", n.mesh.DirectoryInSync)
	}
}

// An agent logging in at another node moves there: her owner hands her over,
// the move is written to the replicated directory, every node routes to the
// new owner, and the old one can no longer grant her — nor can its states,
// however late or high their epoch, override the new owner's.
func TestAgentMovesWhenSheLogsInElsewhere(t *testing.T) {
	agents := []config.Agent{taskAgent("mia", "n1", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n2, n3 := node(nodes, "n1"), node(nodes, "n2"), node(nodes, "n3")
	inSync(t, nodes)
	ready(t, n1, "mia")
	if err := n2.mesh.Claim(context.Background(), "mia"); err != nil {
		t.Fatalf("claim: %v", err)
	}
	if !slices.Contains(n2.agents.IDs(), "mia") || slices.Contains(n1.agents.IDs(), "mia") {
		t.Fatalf("after the move: n1 owns %v, n2 owns %v", n1.agents.IDs(), n2.agents.IDs())
	}
	for _, n := range nodes {
		eventually(t, string(n.id)+" seeing mia at n2", func() bool { return n.mesh.Owner("mia") == "n2" })
	}
	fence := n3.mesh.dir.get("mia").Fence
	if fence == 0 {
		t.Fatal("a move without a fence")
	}
	// The stale owner cannot grant her.
	var deny *agent.DenyError
	if _, err := n1.agents.Reserve(agent.ReserveRequest{Agent: "mia", Interaction: "ix-stale", Channel: core.ChannelTask, TTL: time.Minute}); !errors.As(err, &deny) || deny.Reason != agent.DenyUnknownAgent {
		t.Fatalf("old owner reserved a moved agent: %v", err)
	}
	// She starts logged out at n2; logged in there, an interaction at n3 reaches her through n2.
	ready(t, n2, "mia")
	ix, _, err := n3.ix.Create(interaction.CreateRequest{Channel: core.ChannelTask, Queue: "q"})
	must(t, err)
	waitOffered(t, n3, ix.ID, "mia")
	if v, _ := n2.agents.Snapshot("mia"); v.State.State != string(agent.StateReserved) || v.State.Fence != fence {
		t.Fatalf("mia at n2: %+v (fence want %d)", v.State, fence)
	}
	// A late state from the old owner — higher epoch, higher version, ready —
	// does not override the new owner's in another node's view.
	before := n3.mesh.Snapshots()
	n3.mesh.apply("n1", []agentState{{Agent: "mia", State: events.AgentState{State: "ready", Presence: "ready", Epoch: 1 << 62, Version: 1 << 40}}})
	if after := n3.mesh.Snapshots(); !slices.EqualFunc(sortViews(before), sortViews(after), func(a, b agent.View) bool {
		return a.State.Version == b.State.Version && a.State.Fence == b.State.Fence
	}) {
		t.Fatalf("a stale owner's state was applied: %+v", after)
	}
	// The directory is cached for a start without the cluster.
	data, err := os.ReadFile(filepath.Join(n2.mesh.p.DataDir, directoryFile))
	must(t, err)
	var cached map[core.AgentID]ownership
	must(t, json.Unmarshal(data, &cached))
	if cached["mia"] != (ownership{Node: "n2", Fence: fence}) {
		t.Fatalf("cached directory: %s", data)
	}
}

func sortViews(v []agent.View) []agent.View {
	slices.SortFunc(v, func(a, b agent.View) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return v
}

// A busy agent does not move: the owner refuses the hand-over until her work
// ends, and nothing changes in the directory meanwhile.
func TestBusyAgentDoesNotMove(t *testing.T) {
	agents := []config.Agent{taskAgent("max", "n1", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n3 := node(nodes, "n1"), node(nodes, "n3")
	inSync(t, nodes)
	ready(t, n1, "max")
	g, err := n3.mesh.Reserve(agent.ReserveRequest{Agent: "max", Interaction: "ix-1", Channel: core.ChannelTask, TTL: time.Minute})
	must(t, err)
	if err := n3.mesh.Claim(context.Background(), "max"); !errors.Is(err, agent.ErrAgentBusy) {
		t.Fatalf("claim of a busy agent: %v", err)
	}
	if n3.mesh.Owner("max") != "n1" || !slices.Contains(n1.agents.IDs(), "max") {
		t.Fatal("a busy agent moved")
	}
	must(t, n3.mesh.Release(g.Token))
	must(t, n3.mesh.Claim(context.Background(), "max"))
	if n3.mesh.Owner("max") != "n3" {
		t.Fatal("max did not move after her work ended")
	}
	// Moving back is a move like any other, with a later fence.
	first := n3.mesh.dir.get("max").Fence
	must(t, n1.mesh.Claim(context.Background(), "max"))
	if o := n1.mesh.dir.get("max"); o.Node != "n1" || o.Fence <= first {
		t.Fatalf("move back: %+v (previous fence %d)", o, first)
	}
}

// A node starting alone takes the agents its cached directory gives it, not
// only its configured ones.
func TestStartAloneFromTheCachedDirectory(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, directoryFile), []byte(`{"mia":{"owner":"n2","fence":7},"max":{"owner":"n3","fence":8}}`), 0o600))
	agents := []config.Agent{taskAgent("mia", "n1", 1), taskAgent("max", "n2", 1), taskAgent("joe", "n2", 1)}
	log := events.NewLog(0, 1024, false)
	t.Cleanup(log.Close)
	local := agent.NewManager(agent.Params{Node: "n2", Agents: Owned(members, "n2", agents), Epoch: 1, Clock: clock.Real{}, Log: log})
	cfg := config.ClusterConfig{Name: "test", Members: members, RoutesListen: "127.0.0.1:0", RequestTimeout: config.Duration(time.Second)}
	m, err := New(Params{Config: cfg, Node: "n2", Agents: agents, Local: local, Log: log, DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	must(t, err)
	t.Cleanup(m.Close)
	if got := local.IDs(); !slices.Equal(got, []core.AgentID{"joe", "mia"}) {
		t.Fatalf("owned at start: %v", got)
	}
	if v, _ := local.Snapshot("mia"); v.State.Fence != 7 {
		t.Fatalf("mia's fence: %+v", v.State)
	}
	// A corrupt cache is a clear error, not a silent start with the wrong agents.
	must(t, os.WriteFile(filepath.Join(dir, directoryFile), []byte(`{"mia":`), 0o600))
	if _, err := New(Params{Config: cfg, Node: "n2", Agents: agents, Local: local, Log: log, DataDir: dir}); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt cache: %v", err)
	}
}

// Moves back and forth in quick succession: each node's watch and its own
// claims race, and the releases of older moves must never undo the adoption
// of a newer one — exactly the directory's owner holds the agent after each.
// (Before claims read the bucket at its leader, a lagging replica's answer
// broke this within a few thousand moves.)
func TestRapidMovesKeepOneHolder(t *testing.T) {
	nodes := startCluster(t, []config.Agent{taskAgent("ann", "n1", 1)}, nil, nil)
	inSync(t, nodes)
	n1, n2 := node(nodes, "n1"), node(nodes, "n2")
	for i := range 1000 {
		to := []*testNode{n2, n1}[i%2]
		if err := to.mesh.Claim(context.Background(), "ann"); err != nil {
			t.Fatalf("move %d to %s: %v", i, to.id, err)
		}
		if !slices.Contains(to.agents.IDs(), "ann") {
			t.Fatalf("move %d: %s does not hold ann", i, to.id)
		}
	}
	for _, n := range nodes {
		eventually(t, string(n.id)+" agreeing on ann's owner", func() bool { return n.mesh.Owner("ann") == "n1" })
	}
	eventually(t, "only n1 holding ann", func() bool {
		return slices.Contains(n1.agents.IDs(), "ann") && !slices.Contains(n2.agents.IDs(), "ann")
	})
}

// A hand-over is agreed only at the fence the owner itself holds (checked
// with the bucket), never on the claimer's word: a forged or stale fence is a
// conflict and changes nothing.
func TestHandoffAtAnotherFenceIsRefused(t *testing.T) {
	nodes := startCluster(t, []config.Agent{taskAgent("mia", "n1", 1)}, nil, nil)
	n1, n2 := node(nodes, "n1"), node(nodes, "n2")
	inSync(t, nodes)
	for _, fence := range []uint64{1 << 62, 7} {
		r, err := n2.mesh.call("n1", request{Op: opHandoff, Agent: "mia", Fence: fence})
		must(t, err)
		if err := r.err("mia"); !errors.Is(err, ErrMoveConflict) {
			t.Fatalf("hand-over at fence %d: %v", fence, err)
		}
	}
	if o := n1.mesh.dir.get("mia"); o != (ownership{Node: "n1"}) || !slices.Contains(n1.agents.IDs(), "mia") {
		t.Fatalf("after refused hand-overs: %+v, n1 holds %v", o, n1.agents.IDs())
	}
}

// An owner that learns its agent moved away while she is on a call does not
// cut the call: no new offers, and she is let go when her work ends.
func TestAgentMovedAwayWhileBusyKeepsHerWork(t *testing.T) {
	nodes := startCluster(t, []config.Agent{taskAgent("max", "n1", 1)}, nil, nil)
	n1, n3 := node(nodes, "n1"), node(nodes, "n3")
	inSync(t, nodes)
	ready(t, n1, "max")
	g, err := n3.mesh.Reserve(agent.ReserveRequest{Agent: "max", Interaction: "ix-1", Channel: core.ChannelTask, TTL: time.Minute})
	must(t, err)
	must(t, n3.mesh.Accept(g.Token))
	// n2 takes her over as if n1 had not answered (the move n1 then sees).
	n1.mesh.recordMove("max", ownership{Node: "n2", Fence: 1 << 40})
	v, err := n1.agents.Snapshot("max")
	if err != nil || v.State.State != string(agent.StateBusy) || v.State.Presence != "not_ready" {
		t.Fatalf("max at n1 after the move: %+v %v", v.State, err)
	}
	must(t, n3.mesh.Complete(g.Token, 0))
	eventually(t, "n1 letting max go once her work ended", func() bool { return !slices.Contains(n1.agents.IDs(), "max") })
}

// The bucket is the truth at sync: cached moves it lacks are dropped, and
// fences from a bucket since re-created do not outrank its revisions.
func TestSyncReplacesTheCachedDirectory(t *testing.T) {
	nodes := startCluster(t, []config.Agent{taskAgent("mia", "n1", 1), taskAgent("max", "n2", 1)}, nil, nil)
	n1 := node(nodes, "n1")
	inSync(t, nodes)
	n1.mesh.resetMoves(map[core.AgentID]ownership{"max": {Node: "n1", Fence: 1 << 40}}) // a stale cache
	if !slices.Contains(n1.agents.IDs(), "max") {
		t.Fatal("the stale entry was not applied")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, err := n1.mesh.dir.kv.Load().kv.WatchAll(ctx)
	must(t, err)
	defer func() { _ = w.Stop() }()
	entries, err := n1.mesh.currentEntries(ctx, w)
	must(t, err)
	n1.mesh.resetMoves(entries)
	if o := n1.mesh.dir.get("max"); o != (ownership{Node: "n2"}) || slices.Contains(n1.agents.IDs(), "max") {
		t.Fatalf("after a sync with the bucket: %+v, n1 holds %v", o, n1.agents.IDs())
	}
}
