package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// agentOwner is an agent as GET /agents/{id} shows her in a cluster.
type agentOwner struct {
	Owner string `json:"owner"`
	State struct {
		State string `json:"state"`
	} `json:"state"`
}

// Issue 4's operations, through three ccmesh processes: an agent logging in at
// another node moves there (every member sees the new owner); the agents and
// queues pushed to one member (`ccmesh config push`) reach all of them and are
// used at once (a new agent takes an interaction of a new queue created at
// another member); a bad configuration is refused with the field named; and a
// member restarted alone starts from its last-known-good copy, with the agents
// that moved to it.
func TestClusterMovesAndSharedConfiguration(t *testing.T) {
	t.Parallel()
	procs, files := startClusterFiles(t)
	c1, c2, c3 := newClient(t, procs[0].base), newClient(t, procs[1].base), newClient(t, procs[2].base)

	// ann, owned by node-2, logs in at node-1: she moves there.
	c1.call("POST", "/api/v1/agents/ann/login", agent("ann"), "", http.StatusOK)
	for _, c := range []*client{c1, c2, c3} {
		eventually(t, 10*time.Second, c.base+" seeing ann at node-1", func() bool {
			a := decode[agentOwner](t, c.call("GET", "/api/v1/agents/ann", supervisor(), "", 200))
			return a.Owner == "node-1" && a.State.State == "not_ready"
		})
	}
	if st, _, body, _ := c2.try("POST", "/api/v1/agents/ann/state", agent("ann"), `{"state":"ready"}`); st != 409 || !strings.Contains(string(body), "owned by node node-1") {
		t.Fatalf("ann's state at node-2 after she moved: %d %s", st, body)
	}
	if code, out, errOut := run(t, "cluster", "status", "--url", procs[2].base, "--token", supervisorToken); code != 0 || !strings.Contains(out, "directory in sync=true, agents moved=1") {
		t.Fatalf("ccmesh cluster status after the move: exit %d\n%s%s", code, out, errOut)
	}

	// The shared configuration in force: the file's, revision 0.
	cur := decode[struct {
		Revision uint64 `json:"revision"`
		Source   string `json:"source"`
		YAML     string `json:"yaml"`
	}](t, c2.call("GET", "/api/v1/config/shared", admin(), "", 200))
	if cur.Revision != 0 || cur.Source != "file" || !strings.Contains(cur.YAML, "id: ann") {
		t.Fatalf("shared configuration at start: %+v", cur)
	}
	// A refused change names the field, and changes nothing.
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(cur.YAML), &doc); err != nil {
		t.Fatal(err)
	}
	queues := doc["queues"].([]any)
	queues[0].(map[string]any)["skills"] = map[string]any{"klingon": 3}
	badYAML, _ := yaml.Marshal(doc)
	if st, _, body, _ := c2.try("PUT", "/api/v1/config/shared", admin(), string(badYAML)); st != 422 || !strings.Contains(string(body), "klingon") {
		t.Fatalf("invalid configuration: %d %s", st, body)
	}
	if st, _, body, _ := c2.try("PUT", "/api/v1/config/shared", supervisor(), cur.YAML); st != 403 {
		t.Fatalf("a supervisor changing the configuration: %d %s", st, body)
	}
	// Add zed (owned by node-1) and a vip queue only zed serves, pushed to node-2.
	if err := yaml.Unmarshal([]byte(cur.YAML), &doc); err != nil {
		t.Fatal(err)
	}
	doc["agents"] = append(doc["agents"].([]any), map[string]any{"id": "zed", "dn": "1099", "password": "zed-pass", "home": "node-1", "skills": map[string]any{"vip": 5}})
	doc["queues"] = append(doc["queues"].([]any), map[string]any{"id": "vip", "dn": "2099", "skills": map[string]any{"vip": 1}})
	next, _ := yaml.Marshal(doc)
	file := filepath.Join(t.TempDir(), "shared.yaml")
	if err := os.WriteFile(file, next, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := run(t, "config", "push", file, "--url", procs[1].base, "--token", adminToken, "--if-revision", "0"); code != 0 || !strings.Contains(out, "revision") {
		t.Fatalf("ccmesh config push: exit %d\n%s%s", code, out, errOut)
	}
	for _, c := range []*client{c1, c2, c3} {
		eventually(t, 10*time.Second, c.base+" serving the vip queue", func() bool {
			st, _, _, _ := c.try("GET", "/api/v1/queues/vip", admin(), "")
			return st == 200
		})
	}
	if code, out, errOut := run(t, "config", "show", "--url", procs[2].base, "--token", adminToken); code != 0 || !strings.Contains(errOut, "(replicated)") || !strings.Contains(out, "id: zed") {
		t.Fatalf("ccmesh config show at node-3: exit %d\n%s%s", code, out, errOut)
	}
	// zed logs in at node-3 (moving there from node-1) and takes a vip
	// interaction created at node-1.
	c3.call("POST", "/api/v1/agents/zed/login", agent("zed"), "", http.StatusOK)
	c3.call("POST", "/api/v1/agents/zed/state", agent("zed"), `{"state":"ready"}`, http.StatusOK)
	eventually(t, 10*time.Second, "node-1 seeing zed ready", func() bool {
		st := decode[struct {
			AgentsReady int `json:"agents_ready"`
		}](t, c1.call("GET", "/api/v1/queues/vip", admin(), "", http.StatusOK))
		return st.AgentsReady == 1
	})
	id := c1.create("vip")
	eventually(t, 10*time.Second, "the vip interaction offered to zed", func() bool {
		ix := c1.ix(id)
		return ix.State == "offered" && ix.Agent == "zed"
	})

	// Everyone stops; node-3 starts again alone: its agents and queues come from
	// its last-known-good copy, and zed, who moved to it, logs in there.
	for _, p := range procs {
		p.signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		if code := p.wait(40 * time.Second); code != 0 {
			t.Fatalf("stop: exit %d", code)
		}
	}
	p3 := serve(t, files[2])
	c3 = newClient(t, p3.base)
	got := decode[struct {
		Revision uint64 `json:"revision"`
		Source   string `json:"source"`
	}](t, c3.call("GET", "/api/v1/config/shared", admin(), "", 200))
	if got.Revision == 0 || got.Source != "last_known_good" {
		t.Fatalf("node-3 alone: shared configuration %+v", got)
	}
	c3.call("GET", "/api/v1/queues/vip", admin(), "", 200)
	c3.call("POST", "/api/v1/agents/zed/login", agent("zed"), "", http.StatusOK)
	if a := decode[agentOwner](t, c3.call("GET", "/api/v1/agents/ann", supervisor(), "", 200)); a.Owner != "node-1" {
		t.Fatalf("node-3 alone: ann's owner %q (moved to node-1 before)", a.Owner)
	}
}
