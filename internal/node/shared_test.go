package node

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/interaction"
	"github.com/ccmesh/ccmesh/internal/mesh"
)

func testConfig(t *testing.T, dir string) *config.Config {
	t.Helper()
	c := config.Default()
	c.Node.DataDir = dir
	c.HTTP.Listen = "127.0.0.1:0"
	c.SIP.ListenUDP, c.SIP.ListenTCP = "127.0.0.1:0", "127.0.0.1:0"
	return c
}

func newTestNode(t *testing.T, c *config.Config) *Node {
	t.Helper()
	n, err := New(context.Background(), c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = n.ln.Close()
		if n.sip != nil {
			n.sip.Close()
		}
		n.close()
	})
	return n
}

// A node alone changes its agents and queues at once: a new queue takes
// interactions, a stale revision is refused, a bad document changes nothing,
// and the next start uses the last-known-good copy instead of the file.
func TestSharedConfigurationAlone(t *testing.T) {
	dir := t.TempDir()
	n := newTestNode(t, testConfig(t, dir))
	if st := n.Shared(); st.Revision != 0 || st.Source != "file" || !strings.Contains(st.YAML, "id: ann") {
		t.Fatalf("at start: %+v", st)
	}
	if _, _, err := n.PutShared(context.Background(), []byte("agents: []\nqueues: [{id: q}]\nfoo: 1\n"), 0, false); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "foo") {
		t.Fatalf("bad document: %v", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(n.Shared().YAML), &doc); err != nil {
		t.Fatal(err)
	}
	doc["agents"] = append(doc["agents"].([]any), map[string]any{"id": "zed", "dn": "1099", "password": "zed-pass", "skills": map[string]any{"vip": 5}})
	doc["queues"] = append(doc["queues"].([]any), map[string]any{"id": "vip", "dn": "2099", "skills": map[string]any{"vip": 1}})
	data, _ := yaml.Marshal(doc)
	if _, _, err := n.ix.Create(interaction.CreateRequest{Channel: core.ChannelTask, Queue: "vip"}); err == nil {
		t.Fatal("a queue not configured yet took an interaction")
	}
	rev, applied, err := n.PutShared(context.Background(), data, 0, true)
	if err != nil || rev != 1 || !applied {
		t.Fatalf("put: %d %v", rev, err)
	}
	if _, _, err := n.ix.Create(interaction.CreateRequest{Channel: core.ChannelTask, Queue: "vip"}); err != nil {
		t.Fatalf("the new queue: %v", err)
	}
	if _, ok := n.agents.Config("zed"); !ok {
		t.Fatal("the new agent is not owned")
	}
	if _, _, err := n.PutShared(context.Background(), data, 0, true); !errors.Is(err, mesh.ErrConfigConflict) {
		t.Fatalf("a second change based on revision 0: %v", err)
	}
	// A sound file that does not load here is an invalid configuration, and
	// changes nothing.
	doc["queues"].([]any)[0].(map[string]any)["sounds"] = map[string]any{"music": filepath.Join(dir, "missing.wav")}
	noSound, _ := yaml.Marshal(doc)
	if _, _, err := n.PutShared(context.Background(), noSound, 0, false); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "missing.wav") {
		t.Fatalf("a missing sound file: %v", err)
	}
	if n.Shared().Revision != 1 {
		t.Fatalf("a refused change moved the revision to %d", n.Shared().Revision)
	}
	if _, _, err := n.PutShared(context.Background(), data, 7, true); !errors.Is(err, mesh.ErrConfigConflict) {
		t.Fatalf("stale revision: %v", err)
	}
	saved, err := os.ReadFile(filepath.Join(dir, sharedFile))
	if err != nil || !strings.HasPrefix(string(saved), revisionHeader+"1\n") {
		t.Fatalf("last-known-good copy: %v\n%s", err, saved)
	}
	// Saved again: one header, not two.
	if _, _, err := n.PutShared(context.Background(), []byte(n.Shared().YAML), 1, true); err != nil {
		t.Fatal(err)
	}
	saved, _ = os.ReadFile(filepath.Join(dir, sharedFile))
	if strings.Count(string(saved), revisionHeader) != 1 {
		t.Fatalf("headers pile up:\n%s", saved)
	}
}

func TestStartFromLastKnownGood(t *testing.T) {
	dir := t.TempDir()
	c := testConfig(t, dir)
	sales := c.Queues[0]
	sales.Overflow = nil // it overflowed to support, not in the copy
	data, _ := yaml.Marshal(config.Shared{Agents: c.Agents[:2], Queues: []config.Queue{sales}})
	if err := saveLastKnownGood(dir, 4, data); err != nil {
		t.Fatal(err)
	}
	n := newTestNode(t, c)
	if st := n.Shared(); st.Revision != 4 || st.Source != "last_known_good" {
		t.Fatalf("start: %+v", st)
	}
	if ids := n.agents.IDs(); len(ids) != 2 {
		t.Fatalf("agents from the copy: %v", ids)
	}
}

// A copy that no longer fits the node's file (here: not a shared document at
// all) is reported and the file is used; a copy without its header is an error.
func TestLastKnownGoodThatDoesNotFit(t *testing.T) {
	dir := t.TempDir()
	if err := saveLastKnownGood(dir, 2, []byte("agents: [{id: x, skills: {a: 1}}]\nqueues: [{id: q, skills: {zz: 1}}]\n")); err != nil {
		t.Fatal(err)
	}
	n := newTestNode(t, testConfig(t, dir))
	if st := n.Shared(); st.Source != "file" {
		t.Fatalf("an invalid copy was used: %+v", st)
	}
	dir = t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, sharedFile), []byte("agents: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(context.Background(), testConfig(t, dir), slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "first line") {
		t.Fatalf("copy without a header: %v", err)
	}
}
