package e2e

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTour is the newcomer's tour: serve, log in, get a task, handle it, read
// its history and why it was routed to the agent.
func TestTour(t *testing.T) {
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir()}))
	c := newClient(t, p.base)

	h := decode[map[string]string](t, c.call("GET", "/healthz", nil, "", http.StatusOK))
	if h["status"] != "ok" {
		t.Fatalf("/healthz: %v", h)
	}
	c.call("GET", "/readyz", nil, "", http.StatusOK)

	a := decode[agentBody](t, c.call("POST", "/api/v1/agents/ann/login", agent("ann"), "", http.StatusOK))
	if a.State.State != "not_ready" {
		t.Fatalf("after login: %q", a.State.State)
	}
	a = decode[agentBody](t, c.call("POST", "/api/v1/agents/ann/state", curl(agent("ann")), `{"state":"ready"}`, http.StatusOK))
	if a.State.State != "ready" {
		t.Fatalf("after ready: %q", a.State.State)
	}
	c.loginReady("sales", 1)

	id := decode[ixBody](t, c.call("POST", "/api/v1/interactions", curl(admin()), `{"queue":"sales","attributes":{"subject":"Quote for 20 seats"}}`, http.StatusCreated)).ID
	eventually(t, 5*time.Second, "the offer on ann's desktop", func() bool {
		a = decode[agentBody](t, c.call("GET", "/api/v1/agents/ann", agent("ann"), "", http.StatusOK))
		return len(a.Interactions) == 1 && a.Interactions[0].ID == id && a.Interactions[0].State == "offered"
	})
	if got := decode[ixBody](t, c.call("POST", "/api/v1/interactions/"+id+"/accept", agent("ann"), "", http.StatusOK)); got.State != "connected" {
		t.Fatalf("after accept: %q", got.State)
	}
	if got := decode[ixBody](t, c.call("POST", "/api/v1/interactions/"+id+"/complete", agent("ann"), "", http.StatusOK)); got.State != "wrap_up" {
		t.Fatalf("after complete: %q", got.State)
	}
	a = decode[agentBody](t, c.call("GET", "/api/v1/agents/ann", agent("ann"), "", http.StatusOK))
	if a.State.State != "wrap_up" {
		t.Errorf("agent after complete: %q, want wrap_up", a.State.State)
	}
	eventually(t, 5*time.Second, "wrap-up over (1s)", func() bool {
		return c.ix(id).State == "ended"
	})
	if a = decode[agentBody](t, c.call("GET", "/api/v1/agents/ann", agent("ann"), "", http.StatusOK)); a.State.State != "ready" {
		t.Errorf("agent after wrap-up: %q, want ready", a.State.State)
	}

	if got, want := c.states(id), []string{"created", "queued", "offered", "connected", "wrap_up", "ended"}; !slices.Equal(got, want) {
		t.Errorf("history %v, want %v", got, want)
	}
	ds := decode[struct {
		Decisions []struct {
			Data struct {
				Chosen     string `json:"chosen"`
				Outcome    string `json:"outcome"`
				Candidates []struct {
					Agent  string `json:"agent"`
					Result string `json:"result"`
				} `json:"candidates"`
			} `json:"data"`
		} `json:"decisions"`
	}](t, c.call("GET", "/api/v1/interactions/"+id+"/decisions", agent("ann"), "", http.StatusOK))
	if len(ds.Decisions) != 1 || ds.Decisions[0].Data.Chosen != "ann" || ds.Decisions[0].Data.Outcome != "reserved" ||
		len(ds.Decisions[0].Data.Candidates) == 0 || ds.Decisions[0].Data.Candidates[0].Agent != "ann" {
		t.Errorf("decisions %+v, want one: ann reserved", ds)
	}
	hist := decode[struct {
		Events []json.RawMessage `json:"events"`
	}](t, c.call("GET", "/api/v1/agents/ann/history", agent("ann"), "", http.StatusOK))
	if len(hist.Events) < 8 { // login, ready, lease granted/accepted/completed/ended and the state changes
		t.Errorf("agent history has %d events", len(hist.Events))
	}
	if m := string(c.call("GET", "/metrics", nil, "", http.StatusOK)); !strings.Contains(m, `ccmesh_queue_answered_total{queue="sales"} 1`) {
		t.Errorf("/metrics: sales answered not 1")
	}

	// Nothing in progress: SIGTERM stops at once, exit 0.
	p.signal(syscall.SIGTERM)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestDrain: the first SIGTERM stops new work while the task in progress finishes.
func TestDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: SIGTERM drain (-short)")
	}
	t.Parallel()
	data := t.TempDir()
	const drain = 20 * time.Second
	cfg := writeConfig(t, configOpts{dataDir: data, drainTimeout: "20s"})
	p := serve(t, cfg)
	c := newClient(t, p.base)
	id := c.connect("ann")

	p.signal(syscall.SIGTERM)
	sent := time.Now()
	eventually(t, 5*time.Second, "/readyz 503 while draining", func() bool {
		st, _, _, err := c.try("GET", "/readyz", nil, "")
		return err == nil && st == http.StatusServiceUnavailable
	})
	st, hdr, body, err := c.try("POST", "/api/v1/interactions", admin(), `{"queue":"sales"}`)
	if err != nil {
		t.Fatalf("create while draining: %v", err)
	}
	if e := decode[errBody](t, body); st != http.StatusServiceUnavailable || e.Error.Code != "draining" {
		t.Errorf("create while draining: %d %s, want 503 draining", st, body)
	}
	if hdr.Get("Retry-After") == "" {
		t.Errorf("503 draining without Retry-After")
	}
	// Still serving reads, and the task is still there.
	c.call("GET", "/healthz", nil, "", http.StatusOK)
	if p.exited() {
		t.Fatalf("exited during drain with a task connected")
	}
	if got := c.ix(id); got.State != "connected" {
		t.Fatalf("task during drain: %q", got.State)
	}

	got := decode[ixBody](t, c.call("POST", "/api/v1/interactions/"+id+"/complete", agent("ann"), "", http.StatusOK))
	if got.State != "wrap_up" {
		t.Fatalf("complete during drain: %q", got.State)
	}
	// Wrap-up (1s) ends the last interaction: the node stops, exit 0.
	if code := p.wait(drain); code != 0 {
		t.Errorf("exit code %d after drain, want 0", code)
	}
	if el := time.Since(sent); el > drain {
		t.Errorf("drain took %v, longer than the drain timeout", el)
	}
	if p.find("drain incomplete") != "" || p.find("msg=stopped") == "" {
		t.Errorf("log does not show a complete drain")
	}

	// The completed task is durable: a new run on the same data shows it ended.
	p2 := serve(t, cfg)
	c2 := newClient(t, p2.base)
	if got := c2.ix(id); got.State != "ended" {
		t.Errorf("after restart: %q, want ended", got.State)
	}
	p2.signal(syscall.SIGTERM)
	if code := p2.wait(10 * time.Second); code != 0 {
		t.Errorf("second run exit %d", code)
	}
}

// TestSecondSignalExitsAtOnce: a second SIGTERM does not wait for the drain.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: SIGTERM drain (-short)")
	}
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), drainTimeout: "60s"}))
	c := newClient(t, p.base)
	c.connect("ann")

	p.signal(syscall.SIGTERM)
	eventually(t, 5*time.Second, "the drain to start", func() bool { return p.find("msg=draining") != "" })
	if p.exited() {
		t.Fatalf("exited on the first signal with work in progress")
	}
	p.signal(syscall.SIGTERM)
	start := time.Now()
	code := p.wait(5 * time.Second)
	if code != 130 {
		t.Errorf("exit code %d after the second signal, want 130", code)
	}
	if p.find("second signal") == "" {
		t.Errorf("no 'second signal' log line")
	}
	t.Logf("exited %v after the second signal", time.Since(start))
}
