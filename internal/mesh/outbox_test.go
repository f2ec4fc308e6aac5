package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
)

// keep puts a move in n's outbox as if kept while cut off (based on the
// ownership n knows now).
func keep(t *testing.T, n *testNode, id core.AgentID) pendingMove {
	t.Helper()
	cur := n.mesh.dir.get(id)
	p := pendingMove{From: cur.Node, Fence: cur.Fence, At: time.Now().UTC()}
	n.mesh.dir.moveMu.Lock()
	changed, err := n.mesh.keepLocked(id, p)
	n.mesh.dir.moveMu.Unlock()
	n.mesh.refreshReach(changed)
	must(t, err)
	return p
}

// history is how many revisions the directory bucket holds for agent id.
func history(t *testing.T, n *testNode, id core.AgentID) int {
	t.Helper()
	h, err := n.mesh.dir.kv.Load().kv.History(context.Background(), string(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0
	}
	must(t, err)
	return len(h)
}

// Cut off from both peers (no quorum), n1 lets kim — owned by the dead n2 —
// log in: the move is kept in its outbox (on disk) and she is n1's meanwhile.
func TestMoveKeptWhileCutOff(t *testing.T) {
	agents := []config.Agent{taskAgent("kim", "n2", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n2, n3 := node(nodes, "n1"), node(nodes, "n2"), node(nodes, "n3")
	inSync(t, nodes)
	n2.mesh.Close()
	n3.mesh.Close()
	eventually(t, "n1 taking n2 and n3 as down", func() bool {
		return n1.mesh.health.state("n2") == PeerDown && n1.mesh.health.state("n3") == PeerDown
	})
	if err := n1.mesh.Claim(context.Background(), "kim"); err != nil {
		t.Fatalf("login of kim at n1 cut off: %v", err)
	}
	if n1.mesh.Owner("kim") != "n1" || !slices.Contains(n1.agents.IDs(), "kim") {
		t.Fatalf("kim after the kept move: owner %s, n1 holds %v", n1.mesh.Owner("kim"), n1.agents.IDs())
	}
	ready(t, n1, "kim") // she works here meanwhile
	ob := n1.mesh.Outbox()
	if len(ob.Moves) != 1 || ob.Moves[0].Agent != "kim" || ob.Moves[0].From != "n2" {
		t.Fatalf("outbox: %+v", ob)
	}
	data, err := os.ReadFile(filepath.Join(n1.mesh.p.DataDir, outboxFile))
	must(t, err)
	var saved outboxState
	must(t, json.Unmarshal(data, &saved))
	if _, ok := saved.Moves["kim"]; !ok {
		t.Fatalf("outbox on disk: %s", data)
	}
	// A configuration push is kept too (based on the revision in force here).
	if _, err := n1.mesh.PutSharedConfig(context.Background(), []byte("agents: []\n"), 0, false, 0); !errors.Is(err, ErrConfigPending) {
		t.Fatalf("push cut off: %v", err)
	}
	if n1.mesh.Outbox().Config == nil {
		t.Fatal("the push is not in the outbox")
	}
	// One conditional on a revision other than the one in force is refused at once.
	if _, err := n1.mesh.PutSharedConfig(context.Background(), []byte("agents: []\n"), 7, true, 0); !errors.Is(err, ErrConfigConflict) {
		t.Fatalf("stale conditional push cut off: %v", err)
	}
}

// After the heal, a kept move is written once (compare-and-swap at the fence
// it was based on) and every node follows; one overtaken by a move made
// meanwhile is dropped and the agent let go.
func TestKeptMovesAfterTheHeal(t *testing.T) {
	agents := []config.Agent{taskAgent("kim", "n2", 1), taskAgent("lou", "n2", 1)}
	nodes := startCluster(t, agents, []config.Queue{taskQueue("q")}, nil)
	n1, n3 := node(nodes, "n1"), node(nodes, "n3")
	inSync(t, nodes)
	keep(t, n1, "kim")
	// lou was kept at n1 on what it knew before the cut, but the majority
	// moved her to n3 meanwhile.
	must(t, n3.mesh.Claim(context.Background(), "lou"))
	n1.mesh.dir.moveMu.Lock()
	changed, err := n1.mesh.keepLocked("lou", pendingMove{From: "n2", Fence: 0, At: time.Now()})
	n1.mesh.dir.moveMu.Unlock()
	n1.mesh.refreshReach(changed)
	must(t, err)
	for _, n := range nodes {
		eventually(t, string(n.id)+" seeing kim at n1 and lou at n3", func() bool {
			return n.mesh.Owner("kim") == "n1" && n.mesh.Owner("lou") == "n3"
		})
	}
	eventually(t, "n1's outbox empty", func() bool { return len(n1.mesh.Outbox().Moves) == 0 })
	if slices.Contains(n1.agents.IDs(), "lou") || !slices.Contains(n1.agents.IDs(), "kim") {
		t.Fatalf("n1 holds %v", n1.agents.IDs())
	}
	if got := history(t, n1, "kim"); got != 1 {
		t.Fatalf("kim's directory entries: %d, want 1 (written once)", got)
	}
	// Kept again after it was written (a stop before the outbox was saved):
	// dropped, no second write.
	fence := n1.mesh.dir.get("kim").Fence
	n1.mesh.dir.mu.Lock()
	n1.mesh.dir.outbox.Moves["kim"] = pendingMove{From: "n2", Fence: 0}
	n1.mesh.dir.rebuildLocked()
	n1.mesh.dir.mu.Unlock()
	if len(n1.mesh.Outbox().Moves) != 0 || n1.mesh.dir.get("kim").Fence != fence {
		t.Fatalf("a stale kept move survived: %+v", n1.mesh.Outbox())
	}
	if got := history(t, n1, "kim"); got != 1 {
		t.Fatalf("kim's directory entries: %d, want 1", got)
	}
}

// A kept configuration push is written after the heal when the configuration
// did not change meanwhile, dropped when it did, and not written twice.
func TestKeptConfigurationAfterTheHeal(t *testing.T) {
	nodes := startClusterWith(t, nil, nil, nil, nil)
	n1, n2 := node(nodes, "n1"), node(nodes, "n2")
	eventually(t, "the configuration bucket open", func() bool { return n1.mesh.ConfigInSync() && n2.mesh.ConfigInSync() })
	rev1, err := n2.mesh.PutSharedConfig(context.Background(), []byte("v1"), 0, true, 0)
	must(t, err)
	h := n1.mesh.shared.kv.Load().kv
	latest := func() (uint64, string) {
		e, err := h.Get(context.Background(), sharedKey)
		must(t, err)
		return e.Revision(), string(e.Value())
	}
	// Based on the latest: written.
	must(t, n1.mesh.keepConfig([]byte("v2"), rev1))
	eventually(t, "the kept push written", func() bool { _, v := latest(); return v == "v2" })
	rev2, _ := latest()
	eventually(t, "the outbox empty", func() bool { return n1.mesh.Outbox().Config == nil })
	// The same document kept again (written before a stop): no second revision.
	must(t, n1.mesh.keepConfig([]byte("v2"), rev1))
	eventually(t, "the outbox empty again", func() bool { return n1.mesh.Outbox().Config == nil })
	if r, _ := latest(); r != rev2 {
		t.Fatalf("written twice: revision %d after %d", r, rev2)
	}
	// Based on a revision the majority replaced: dropped.
	must(t, n1.mesh.keepConfig([]byte("v3"), rev1))
	eventually(t, "the stale push dropped", func() bool { return n1.mesh.Outbox().Config == nil })
	if r, v := latest(); r != rev2 || v != "v2" {
		t.Fatalf("a stale kept push was written: %d %q", r, v)
	}
}
