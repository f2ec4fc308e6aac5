package api_test

// API tests over real HTTP: each test starts a real node (storage, router, agents,
// interactions, API) on 127.0.0.1:0 with a temporary data directory and talks to
// it with net/http only.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/node"
)

const (
	adminToken      = "ccmesh-admin-token-change-me"
	supervisorToken = "ccmesh-supervisor-token-change-me"
)

// ---------------------------------------------------------------------------
// Harness

// syncBuffer collects the node's log; it is printed when a test fails.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// eventually polls cond every 20ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type testNode struct {
	t      *testing.T
	base   string
	client *http.Client
}

// startNode runs a node from config.Default() adjusted for tests (port 0, temp
// data dir, short drain, 1s wrap-up); mutate may change the config further.
func startNode(t *testing.T, mutate func(*config.Config)) *testNode {
	t.Helper()
	cfg := config.Default()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.SIP.ListenUDP, cfg.SIP.ListenTCP = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Node.DataDir = t.TempDir()
	cfg.Node.DrainTimeout = config.Duration(500 * time.Millisecond)
	for i := range cfg.Queues {
		wrap := config.Duration(time.Second)
		cfg.Queues[i].WrapUp = &wrap
	}
	if mutate != nil {
		mutate(cfg)
	}
	config.ApplyDefaults(cfg)
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config invalid: %v", err)
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	n, err := node.New(ctx, cfg, logger)
	if err != nil {
		cancel()
		t.Fatalf("node.New: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	tn := &testNode{t: t, base: "http://" + n.HTTPAddr(), client: &http.Client{Timeout: 15 * time.Second}}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("node.Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("node did not stop within 20s of cancel")
		}
		tn.client.CloseIdleConnections()
		if t.Failed() {
			t.Logf("node log:\n%s", logs.String())
		}
	})
	eventually(t, 10*time.Second, "node ready (/readyz 200)", func() bool {
		st, _, _ := tn.do("GET", "/readyz", nil, nil)
		return st == http.StatusOK
	})
	return tn
}

// auth sets credentials on a request; nil sends none.
type auth func(*http.Request)

func bearer(tok string) auth {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
}
func basic(user, pass string) auth       { return func(r *http.Request) { r.SetBasicAuth(user, pass) } }
func agentAuth(id string) auth           { return basic(id, id+"-pass") }
func (n *testNode) admin() auth          { return bearer(adminToken) }
func (n *testNode) supervisor() auth     { return bearer(supervisorToken) }
func (n *testNode) agent(id string) auth { return agentAuth(id) }

// do sends a request. body is nil (none), a string or []byte (sent raw as JSON) or
// any other value (marshalled).
func (n *testNode) do(method, path string, a auth, body any) (int, http.Header, []byte) {
	n.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			n.t.Fatalf("marshal: %v", err)
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, n.base+path, r)
	if err != nil {
		n.t.Fatalf("new request: %v", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a != nil {
		a(req)
	}
	resp, err := n.client.Do(req)
	if err != nil {
		n.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		n.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, data
}

// call sends a request and fails the test unless the status is want.
func (n *testNode) call(method, path string, a auth, body any, want int) []byte {
	n.t.Helper()
	st, _, data := n.do(method, path, a, body)
	if st != want {
		n.t.Fatalf("%s %s: status %d, want %d; body: %s", method, path, st, want, data)
	}
	return data
}

type errBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// wantError sends a request and checks the status and the stable error code.
func (n *testNode) wantError(method, path string, a auth, body any, status int, code string) errBody {
	n.t.Helper()
	st, hdr, data := n.do(method, path, a, body)
	if st != status {
		n.t.Fatalf("%s %s: status %d, want %d; body: %s", method, path, st, status, data)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		n.t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	var e errBody
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		n.t.Fatalf("%s %s: error body %s is not {\"error\":{\"code\",\"message\"}}: %v", method, path, data, err)
	}
	if e.Error.Code != code {
		n.t.Fatalf("%s %s: error code %q, want %q; body: %s", method, path, e.Error.Code, code, data)
	}
	if e.Error.Message == "" {
		n.t.Errorf("%s %s: empty error message", method, path)
	}
	return e
}

func decodeJSON[T any](t testing.TB, data []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("decode %T from %s: %v", v, data, err)
	}
	return v
}

// ---------------------------------------------------------------------------
// Wire shapes (only what the tests read)

type ixBody struct {
	ID         string            `json:"id"`
	Channel    string            `json:"channel"`
	Queue      string            `json:"queue"`
	Priority   int               `json:"priority"`
	State      string            `json:"state"`
	Previous   string            `json:"previous"`
	Agent      string            `json:"agent"`
	Reason     string            `json:"reason"`
	CreatedAt  string            `json:"created_at"`
	EnqueuedAt string            `json:"enqueued_at"`
	AnsweredAt string            `json:"answered_at"`
	EndedAt    string            `json:"ended_at"`
	Attributes map[string]string `json:"attributes"`
}

type agentBody struct {
	ID    string `json:"id"`
	State struct {
		State    string `json:"state"`
		Presence string `json:"presence"`
		Reason   string `json:"reason"`
		Cause    string `json:"cause"`
		Version  uint64 `json:"version"`
	} `json:"state"`
	Leases []struct {
		Interaction string `json:"interaction"`
		Channel     string `json:"channel"`
		State       string `json:"state"`
	} `json:"leases"`
	Interactions []ixBody `json:"interactions"`
}

type eventBody struct {
	Seq         uint64          `json:"seq"`
	Type        string          `json:"type"`
	Agent       string          `json:"agent"`
	Interaction string          `json:"interaction"`
	Queue       string          `json:"queue"`
	Data        json.RawMessage `json:"data"`
}

type decisionBody struct {
	Direction  string `json:"direction"`
	Strategy   string `json:"strategy"`
	Eligible   int    `json:"eligible"`
	Chosen     string `json:"chosen"`
	Outcome    string `json:"outcome"`
	Candidates []struct {
		Agent  string  `json:"agent"`
		Score  float64 `json:"score"`
		Why    string  `json:"why"`
		Result string  `json:"result"`
	} `json:"candidates"`
}

type queueStats struct {
	Queue               string  `json:"queue"`
	Waiting             int     `json:"waiting"`
	LongestWaitMillis   int64   `json:"longest_wait_ms"`
	AgentsEligible      int     `json:"agents_eligible"`
	AgentsReady         int     `json:"agents_ready"`
	Offered             uint64  `json:"offered"`
	Answered            uint64  `json:"answered"`
	Abandoned           uint64  `json:"abandoned"`
	ServiceLevelPercent float64 `json:"service_level_percent"`
	ServiceLevelTarget  int     `json:"service_level_target_percent"`
	ThresholdMillis     int64   `json:"service_level_threshold_ms"`
}

// ---------------------------------------------------------------------------
// Flow helpers

func (n *testNode) getAgent(id string, a auth) agentBody {
	n.t.Helper()
	return decodeJSON[agentBody](n.t, n.call("GET", "/api/v1/agents/"+id, a, nil, http.StatusOK))
}

func (n *testNode) getIx(id string) ixBody {
	n.t.Helper()
	return decodeJSON[ixBody](n.t, n.call("GET", "/api/v1/interactions/"+id, n.admin(), nil, http.StatusOK))
}

func (n *testNode) queue(id string) queueStats {
	n.t.Helper()
	return decodeJSON[queueStats](n.t, n.call("GET", "/api/v1/queues/"+id, n.admin(), nil, http.StatusOK))
}

// login logs an agent in, checking the not_ready("login") state.
func (n *testNode) login(id string) {
	n.t.Helper()
	a := decodeJSON[agentBody](n.t, n.call("POST", "/api/v1/agents/"+id+"/login", n.agent(id), nil, http.StatusOK))
	if a.ID != id || a.State.State != "not_ready" || a.State.Reason != "login" {
		n.t.Fatalf("after login %s: id %q state %q reason %q, want not_ready/login", id, a.ID, a.State.State, a.State.Reason)
	}
}

func (n *testNode) setReady(id string) {
	n.t.Helper()
	a := decodeJSON[agentBody](n.t, n.call("POST", "/api/v1/agents/"+id+"/state", n.agent(id), map[string]string{"state": "ready"}, http.StatusOK))
	if a.State.State != "ready" || a.State.Presence != "ready" {
		n.t.Fatalf("after ready %s: state %q presence %q", id, a.State.State, a.State.Presence)
	}
}

// readyAgents logs the agents in, makes them ready and waits until the router
// counts want ready agents on queue q.
func (n *testNode) readyAgents(q string, want int, ids ...string) {
	n.t.Helper()
	for _, id := range ids {
		n.login(id)
		n.setReady(id)
	}
	eventually(n.t, 5*time.Second, fmt.Sprintf("%d agents ready on %s", want, q), func() bool {
		return n.queue(q).AgentsReady == want
	})
}

// create makes a task in queue q as admin and checks the 201 answer.
func (n *testNode) create(q string) ixBody {
	n.t.Helper()
	st, hdr, data := n.do("POST", "/api/v1/interactions", n.admin(), map[string]any{"queue": q, "attributes": map[string]string{"subject": "test " + q}})
	if st != http.StatusCreated {
		n.t.Fatalf("create in %s: status %d, want 201; body %s", q, st, data)
	}
	ix := decodeJSON[ixBody](n.t, data)
	if !strings.HasPrefix(ix.ID, "ix-") || ix.Queue != q || ix.Channel != "task" {
		n.t.Fatalf("create in %s: unexpected body %s", q, data)
	}
	if ix.State != "queued" && ix.State != "offered" {
		n.t.Fatalf("create in %s: state %q, want queued or offered", q, ix.State)
	}
	if loc := hdr.Get("Location"); loc != "/api/v1/interactions/"+ix.ID {
		n.t.Errorf("create: Location %q, want /api/v1/interactions/%s", loc, ix.ID)
	}
	if ix.Attributes["subject"] != "test "+q {
		n.t.Errorf("create: attributes %v not echoed", ix.Attributes)
	}
	return ix
}

// waitOffered waits until interaction id is offered to an agent other than not.
func (n *testNode) waitOffered(id, not string, timeout time.Duration) ixBody {
	n.t.Helper()
	var ix ixBody
	eventually(n.t, timeout, "interaction "+id+" offered (not to "+not+")", func() bool {
		ix = n.getIx(id)
		return ix.State == "offered" && ix.Agent != "" && ix.Agent != not
	})
	return ix
}

// events returns the interaction.state events of id, as the payload's states.
func (n *testNode) lifecycle(id string, a auth) ([]string, []ixBody) {
	n.t.Helper()
	body := decodeJSON[struct {
		Interaction string      `json:"interaction"`
		Events      []eventBody `json:"events"`
	}](n.t, n.call("GET", "/api/v1/interactions/"+id+"/events", a, nil, http.StatusOK))
	if body.Interaction != id {
		n.t.Fatalf("events: interaction %q, want %q", body.Interaction, id)
	}
	var states []string
	var snaps []ixBody
	var last uint64
	for _, ev := range body.Events {
		if ev.Seq <= last {
			n.t.Errorf("events of %s not in seq order: %d after %d", id, ev.Seq, last)
		}
		last = ev.Seq
		if ev.Interaction != id {
			n.t.Errorf("events of %s include an event of %q", id, ev.Interaction)
		}
		if ev.Type != "interaction.state" {
			continue
		}
		ix := decodeJSON[ixBody](n.t, ev.Data)
		states = append(states, ix.State)
		snaps = append(snaps, ix)
	}
	return states, snaps
}

func (n *testNode) decisions(id string) []decisionBody {
	n.t.Helper()
	body := decodeJSON[struct {
		Interaction string `json:"interaction"`
		Decisions   []struct {
			Type        string       `json:"type"`
			Interaction string       `json:"interaction"`
			Data        decisionBody `json:"data"`
		} `json:"decisions"`
	}](n.t, n.call("GET", "/api/v1/interactions/"+id+"/decisions", n.admin(), nil, http.StatusOK))
	var out []decisionBody
	for _, d := range body.Decisions {
		if d.Type != "routing.decision" || d.Interaction != id {
			n.t.Errorf("decision of type %q about %q in decisions of %s", d.Type, d.Interaction, id)
		}
		out = append(out, d.Data)
	}
	return out
}

// ---------------------------------------------------------------------------
// Tests

func TestFullFlow(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	n.readyAgents("sales", 1, "ann")

	ix := n.create("sales")
	id := ix.ID

	// The agent sees the offer on her own resource.
	var a agentBody
	eventually(t, 5*time.Second, "offer visible on GET /agents/ann", func() bool {
		a = n.getAgent("ann", n.agent("ann"))
		return len(a.Interactions) == 1 && a.Interactions[0].ID == id && a.Interactions[0].State == "offered"
	})
	if a.State.State != "reserved" {
		t.Errorf("agent with an offer: state %q, want reserved", a.State.State)
	}
	if len(a.Leases) != 1 || a.Leases[0].Interaction != id || a.Leases[0].State != "offered" || a.Leases[0].Channel != "task" {
		t.Errorf("agent leases %+v, want one offered task lease on %s", a.Leases, id)
	}

	got := decodeJSON[ixBody](t, n.call("POST", "/api/v1/interactions/"+id+"/accept", n.agent("ann"), nil, http.StatusOK))
	if got.State != "connected" || got.Agent != "ann" || got.AnsweredAt == "" {
		t.Fatalf("after accept: state %q agent %q answered_at %q", got.State, got.Agent, got.AnsweredAt)
	}
	if a = n.getAgent("ann", n.agent("ann")); a.State.State != "busy" {
		t.Errorf("after accept: agent state %q, want busy", a.State.State)
	}

	got = decodeJSON[ixBody](t, n.call("POST", "/api/v1/interactions/"+id+"/complete", n.agent("ann"), nil, http.StatusOK))
	if got.State != "wrap_up" {
		t.Fatalf("after complete: state %q, want wrap_up", got.State)
	}
	if a = n.getAgent("ann", n.agent("ann")); a.State.State != "wrap_up" {
		t.Errorf("after complete: agent state %q, want wrap_up", a.State.State)
	}

	// Wrap-up is 1s; then the agent is ready and the interaction ended.
	eventually(t, 5*time.Second, "wrap-up over", func() bool {
		a = n.getAgent("ann", n.agent("ann"))
		return a.State.State == "ready" && len(a.Interactions) == 0 && len(a.Leases) == 0
	})
	var end ixBody
	eventually(t, 5*time.Second, "interaction ended", func() bool {
		end = n.getIx(id)
		return end.State == "ended"
	})
	if end.EndedAt == "" || end.AnsweredAt == "" || end.Agent != "ann" || end.Previous != "wrap_up" {
		t.Errorf("ended interaction: %+v", end)
	}

	states, _ := n.lifecycle(id, n.admin())
	if want := []string{"created", "queued", "offered", "connected", "wrap_up", "ended"}; !slices.Equal(states, want) {
		t.Errorf("lifecycle %v, want %v", states, want)
	}
	// The agent who handled it may read its history too; another agent may not.
	if st, _ := n.lifecycle(id, n.agent("ann")); len(st) != 6 {
		t.Errorf("ann reading the events: %v", st)
	}
	n.login("bob")
	n.wantError("GET", "/api/v1/interactions/"+id, n.agent("bob"), nil, http.StatusForbidden, "forbidden")
	n.wantError("GET", "/api/v1/interactions/"+id+"/events", n.agent("bob"), nil, http.StatusForbidden, "forbidden")

	ds := n.decisions(id)
	if len(ds) != 1 {
		t.Fatalf("decisions: %d, want 1: %+v", len(ds), ds)
	}
	d := ds[0]
	if d.Chosen != "ann" || d.Outcome != "reserved" || d.Direction != "interaction_arrived" || d.Strategy != "longest-idle" {
		t.Errorf("decision %+v, want ann reserved by interaction_arrived/longest-idle", d)
	}
	if d.Eligible != 6 { // ann bob dev farid hugo ines have sales >= 3
		t.Errorf("decision eligible %d, want 6", d.Eligible)
	}
	if len(d.Candidates) != 1 || d.Candidates[0].Agent != "ann" || d.Candidates[0].Result != "granted" || d.Candidates[0].Why == "" {
		t.Errorf("decision candidates %+v, want [ann granted]", d.Candidates)
	}

	// Agent history has the lease lifecycle of the interaction.
	hist := decodeJSON[struct {
		Agent  string      `json:"agent"`
		Events []eventBody `json:"events"`
	}](t, n.call("GET", "/api/v1/agents/ann/history", n.agent("ann"), nil, http.StatusOK))
	var outcomes []string
	for i := len(hist.Events) - 1; i >= 0; i-- { // newest first on the wire
		ev := hist.Events[i]
		if ev.Type == "agent.lease" && ev.Interaction == id {
			outcomes = append(outcomes, decodeJSON[struct {
				Outcome string `json:"outcome"`
			}](t, ev.Data).Outcome)
		}
	}
	if want := []string{"granted", "accepted", "completed", "wrap_up_ended"}; !slices.Equal(outcomes, want) {
		t.Errorf("lease outcomes in history %v, want %v", outcomes, want)
	}

	q := n.queue("sales")
	if q.Waiting != 0 || q.Offered != 1 || q.Answered != 1 || q.ServiceLevelPercent != 100 {
		t.Errorf("sales stats after one answered task: %+v", q)
	}
}

func TestRejectRequeuesToAnotherAgent(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	n.readyAgents("sales", 2, "ann", "bob")
	id := n.create("sales").ID
	first := n.waitOffered(id, "", 5*time.Second).Agent

	n.call("POST", "/api/v1/interactions/"+id+"/reject", n.agent(first), nil, http.StatusOK)
	a := n.getAgent(first, n.agent(first))
	if a.State.State != "not_ready" || a.State.Reason != "missed offer" {
		t.Errorf("after reject, %s: state %q reason %q, want not_ready/missed offer", first, a.State.State, a.State.Reason)
	}
	second := n.waitOffered(id, first, 5*time.Second).Agent
	if second != "ann" && second != "bob" {
		t.Fatalf("re-offered to %q", second)
	}
	// The first agent no longer holds it.
	n.wantError("POST", "/api/v1/interactions/"+id+"/accept", n.agent(first), nil, http.StatusForbidden, "not_yours")

	states, snaps := n.lifecycle(id, n.admin())
	if want := []string{"created", "queued", "offered", "queued", "offered"}; !slices.Equal(states, want) {
		t.Fatalf("lifecycle %v, want %v", states, want)
	}
	if r := snaps[3].Reason; r != "rejected by "+first {
		t.Errorf("requeue reason %q, want %q", r, "rejected by "+first)
	}
	if snaps[2].Agent != first || snaps[4].Agent != second {
		t.Errorf("offers went to %q then %q, want %q then %q", snaps[2].Agent, snaps[4].Agent, first, second)
	}
	ds := n.decisions(id)
	if len(ds) < 2 || ds[len(ds)-1].Chosen != second {
		t.Errorf("decisions %+v: the last should choose %s", ds, second)
	}
	n.call("POST", "/api/v1/interactions/"+id+"/accept", n.agent(second), nil, http.StatusOK)
}

func TestOfferTimeoutRequeues(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *config.Config) {
		for i := range c.Queues {
			c.Queues[i].OfferTimeout = config.Duration(2 * time.Second)
		}
	})
	n.readyAgents("sales", 2, "ann", "bob")
	id := n.create("sales").ID
	first := n.waitOffered(id, "", 5*time.Second).Agent
	start := time.Now()

	second := n.waitOffered(id, first, 10*time.Second).Agent
	if el := time.Since(start); el < time.Second {
		t.Errorf("re-offered after %v; the offer timeout is 2s", el)
	}
	a := n.getAgent(first, n.admin())
	if a.State.State != "not_ready" || a.State.Reason != "missed offer" {
		t.Errorf("after the offer expired, %s: state %q reason %q, want not_ready/missed offer", first, a.State.State, a.State.Reason)
	}
	states, snaps := n.lifecycle(id, n.admin())
	if want := []string{"created", "queued", "offered", "queued", "offered"}; !slices.Equal(states, want) {
		t.Fatalf("lifecycle %v, want %v", states, want)
	}
	if r := snaps[3].Reason; r != "offer expired" {
		t.Errorf("requeue reason %q, want %q", r, "offer expired")
	}
	n.wantError("POST", "/api/v1/interactions/"+id+"/accept", n.agent(first), nil, http.StatusForbidden, "not_yours")
	n.call("POST", "/api/v1/interactions/"+id+"/accept", n.agent(second), nil, http.StatusOK)
}

func TestCancelWhileQueued(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	ix := n.create("support") // nobody logged in: it waits
	if ix.State != "queued" {
		t.Fatalf("state %q, want queued", ix.State)
	}
	if q := n.queue("support"); q.Waiting != 1 {
		t.Errorf("support waiting %d, want 1", q.Waiting)
	}
	n.login("carla")
	n.wantError("POST", "/api/v1/interactions/"+ix.ID+"/cancel", n.agent("carla"), nil, http.StatusForbidden, "forbidden")

	got := decodeJSON[ixBody](t, n.call("POST", "/api/v1/interactions/"+ix.ID+"/cancel", n.admin(), nil, http.StatusOK))
	if got.State != "abandoned" || got.Reason != "cancelled by admin" || got.EndedAt == "" {
		t.Errorf("after cancel: %+v", got)
	}
	if got := n.getIx(ix.ID); got.State != "abandoned" {
		t.Errorf("GET after cancel: state %q, want abandoned", got.State)
	}
	q := n.queue("support")
	if q.Waiting != 0 || q.Abandoned != 1 {
		t.Errorf("support stats after cancel: %+v", q)
	}
	n.wantError("POST", "/api/v1/interactions/"+ix.ID+"/cancel", n.admin(), nil, http.StatusConflict, "wrong_state")
	n.wantError("POST", "/api/v1/interactions/ix-00000000000000000000/cancel", n.admin(), nil, http.StatusNotFound, "not_found")
	states, _ := n.lifecycle(ix.ID, n.admin())
	if want := []string{"created", "queued", "abandoned"}; !slices.Equal(states, want) {
		t.Errorf("lifecycle %v, want %v", states, want)
	}
}

func TestBadJSON(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	n.login("ann")
	cases := []struct{ name, create, state string }{
		{"syntax error", `{"queue": "sales"`, `{"state": "ready"`},
		{"not json", `queue=sales`, `state=ready`},
		{"unknown field", `{"queue": "sales", "colour": "red"}`, `{"state": "ready", "colour": "red"}`},
		{"trailing data", `{"queue": "sales"} {"queue": "sales"}`, `{"state": "ready"} {"state": "ready"}`},
		{"trailing garbage", `{"queue": "sales"} x`, `{"state": "ready"} x`},
		{"empty body", ``, ``},
		{"wrong type string", `{"queue": 5}`, `{"state": 5}`},
		{"wrong type int", `{"queue": "sales", "priority": "high"}`, `{"state": "not_ready", "reason": 7}`},
		{"wrong type map", `{"queue": "sales", "attributes": ["a"]}`, `{"state": ["ready"]}`},
		{"null for object", `null x`, `null x`},
		{"array", `[{"queue": "sales"}]`, `[{"state": "ready"}]`},
	}
	for _, c := range cases {
		t.Run("create/"+c.name, func(t *testing.T) {
			n := *n
			n.t = t
			n.wantError("POST", "/api/v1/interactions", n.admin(), c.create, http.StatusBadRequest, "bad_json")
		})
		t.Run("state/"+c.name, func(t *testing.T) {
			n := *n
			n.t = t
			n.wantError("POST", "/api/v1/agents/ann/state", n.agent("ann"), c.state, http.StatusBadRequest, "bad_json")
		})
	}
	if a := n.getAgent("ann", n.admin()); a.State.State != "not_ready" || a.State.Reason != "login" {
		t.Errorf("bad bodies changed ann: %q/%q", a.State.State, a.State.Reason)
	}
	// Well-formed JSON with bad values.
	for _, c := range []struct{ name, path, body string }{
		{"voice via API", "/api/v1/interactions", `{"queue": "sales", "channel": "voice"}`},
		{"unknown channel", "/api/v1/interactions", `{"queue": "sales", "channel": "fax"}`},
		{"missing queue", "/api/v1/interactions", `{}`},
		{"priority out of range", "/api/v1/interactions", `{"queue": "sales", "priority": 101}`},
		{"unknown state", "/api/v1/agents/ann/state", `{"state": "dancing"}`},
		{"reason with ready", "/api/v1/agents/ann/state", `{"state": "ready", "reason": "lunch"}`},
	} {
		t.Run("value/"+c.name, func(t *testing.T) {
			n := *n
			n.t = t
			a := n.admin()
			if strings.Contains(c.path, "/agents/") {
				a = n.agent("ann")
			}
			n.wantError("POST", c.path, a, c.body, http.StatusBadRequest, "bad_request")
		})
	}
	t.Run("content type", func(t *testing.T) {
		req, _ := http.NewRequest("POST", n.base+"/api/v1/interactions", strings.NewReader(`{"queue":"sales"}`))
		req.Header.Set("Content-Type", "application/xml")
		bearer(adminToken)(req)
		resp, err := n.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnsupportedMediaType {
			t.Errorf("Content-Type application/xml: status %d, want 415", resp.StatusCode)
		}
	})
	t.Run("trailing close bracket", func(t *testing.T) {
		// json.Decoder.More reports false before '}' or ']', so a body with a
		// stray closing bracket after the object passes the trailing-data check.
		n := *n
		n.t = t
		n.wantError("POST", "/api/v1/interactions", n.admin(), `{"queue": "support"}}`, http.StatusBadRequest, "bad_json")
		n.wantError("POST", "/api/v1/interactions", n.admin(), `{"queue": "support"}]`, http.StatusBadRequest, "bad_json")
	})
	// Nothing above created an interaction (except the known-bug probe, in support).
	if q := n.queue("sales"); q.Waiting != 0 || q.Offered != 0 {
		t.Errorf("bad requests created interactions: %+v", q)
	}
}

func TestNotFound(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	n.login("ann")
	const noIx = "ix-00000000000000000000"
	for _, c := range []struct {
		method, path string
		a            auth
		code         string
	}{
		{"GET", "/api/v1/agents/nobody", n.admin(), "not_found"},
		{"GET", "/api/v1/agents/nobody/history", n.admin(), "not_found"},
		{"POST", "/api/v1/agents/nobody/login", n.supervisor(), "not_found"},
		{"POST", "/api/v1/agents/nobody/logout", n.supervisor(), "not_found"},
		{"GET", "/api/v1/interactions/" + noIx, n.admin(), "not_found"},
		{"GET", "/api/v1/interactions/" + noIx + "/events", n.admin(), "not_found"},
		{"GET", "/api/v1/interactions/" + noIx + "/decisions", n.admin(), "not_found"},
		{"GET", "/api/v1/interactions/" + noIx, n.agent("ann"), "not_found"},
		{"POST", "/api/v1/interactions/" + noIx + "/accept", n.agent("ann"), "not_found"},
		{"POST", "/api/v1/interactions/" + noIx + "/reject", n.agent("ann"), "not_found"},
		{"POST", "/api/v1/interactions/" + noIx + "/complete", n.agent("ann"), "not_found"},
		{"GET", "/api/v1/queues/nope", n.admin(), "not_found"},
		{"GET", "/api/v1/nope", n.admin(), "not_found"},
	} {
		n.wantError(c.method, c.path, c.a, nil, http.StatusNotFound, c.code)
	}
	n.wantError("POST", "/api/v1/agents/nobody/state", n.supervisor(), `{"state":"ready"}`, http.StatusNotFound, "not_found")
	n.wantError("POST", "/api/v1/interactions", n.admin(), `{"queue":"nope"}`, http.StatusNotFound, "unknown_queue")
}

func TestAuth(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)

	// No credentials: 401 with a challenge, on every protected endpoint.
	for _, p := range []string{"/api/v1/queues", "/api/v1/agents", "/api/v1/agents/ann", "/api/v1/interactions", "/api/v1/events"} {
		st, hdr, data := n.do("GET", p, nil, nil)
		if st != http.StatusUnauthorized {
			t.Errorf("GET %s without credentials: %d, want 401; %s", p, st, data)
			continue
		}
		if ch := hdr.Get("WWW-Authenticate"); !strings.Contains(ch, "Basic") || !strings.Contains(ch, "Bearer") {
			t.Errorf("GET %s: WWW-Authenticate %q, want Basic and Bearer challenges", p, ch)
		}
		if e := decodeJSON[errBody](t, data); e.Error.Code != "unauthorized" {
			t.Errorf("GET %s: code %q, want unauthorized", p, e.Error.Code)
		}
	}
	n.wantError("POST", "/api/v1/agents/ann/login", basic("ann", "wrong"), nil, http.StatusUnauthorized, "unauthorized")
	n.wantError("POST", "/api/v1/agents/ann/login", basic("ann", ""), nil, http.StatusUnauthorized, "unauthorized")
	n.wantError("GET", "/api/v1/queues", basic("nobody", "nobody-pass"), nil, http.StatusUnauthorized, "unauthorized")
	n.wantError("GET", "/api/v1/queues", bearer("not-a-valid-token-at-all"), nil, http.StatusUnauthorized, "unauthorized")
	n.wantError("GET", "/api/v1/queues", basic("bob", "ann-pass"), nil, http.StatusUnauthorized, "unauthorized")
	// Health, readiness and metrics are open.
	n.call("GET", "/healthz", nil, nil, http.StatusOK)

	n.login("ann")
	n.login("bob")
	// An agent acting on another agent.
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/api/v1/agents/bob/login", ""},
		{"POST", "/api/v1/agents/bob/logout", ""},
		{"POST", "/api/v1/agents/bob/state", `{"state":"ready"}`},
		{"GET", "/api/v1/agents/bob", ""},
		{"GET", "/api/v1/agents/bob/history", ""},
		{"GET", "/api/v1/agents", ""},
		{"POST", "/api/v1/interactions", `{"queue":"sales"}`}, // agents do not create interactions
		{"GET", "/api/v1/interactions", ""},
	} {
		var body any
		if c.body != "" {
			body = c.body
		}
		n.wantError(c.method, c.path, n.agent("ann"), body, http.StatusForbidden, "forbidden")
	}
	if a := n.getAgent("bob", n.admin()); a.State.State != "not_ready" {
		t.Errorf("bob changed by ann's refused calls: %q", a.State.State)
	}
	// Tokens may not act as agents.
	n.wantError("POST", "/api/v1/interactions/ix-00000000000000000000/accept", n.supervisor(), nil, http.StatusForbidden, "forbidden")
	// A supervisor may change an agent's state.
	a := decodeJSON[agentBody](t, n.call("POST", "/api/v1/agents/bob/state", n.supervisor(), `{"state":"not_ready","reason":"coaching"}`, http.StatusOK))
	if a.State.State != "not_ready" || a.State.Reason != "coaching" {
		t.Errorf("supervisor set bob not_ready(coaching): got %q/%q", a.State.State, a.State.Reason)
	}
	// Forcing a logout is for supervisors only, even on oneself.
	n.wantError("POST", "/api/v1/agents/ann/logout", n.agent("ann"), `{"force":true}`, http.StatusForbidden, "forbidden")
	if a := n.getAgent("ann", n.agent("ann")); a.State.State != "not_ready" {
		t.Errorf("ann after refused forced logout: %q, want not_ready", a.State.State)
	}
	a = decodeJSON[agentBody](t, n.call("POST", "/api/v1/agents/ann/logout", n.supervisor(), `{"force":true}`, http.StatusOK))
	if a.State.State != "logged_out" {
		t.Errorf("after supervisor forced logout: %q", a.State.State)
	}
	// A plain logout by the agent herself is allowed.
	a = decodeJSON[agentBody](t, n.call("POST", "/api/v1/agents/bob/logout", n.agent("bob"), nil, http.StatusOK))
	if a.State.State != "logged_out" {
		t.Errorf("after own logout: %q", a.State.State)
	}
}

func TestLogoutWithWork(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	n.readyAgents("sales", 1, "ann")
	id := n.create("sales").ID
	n.waitOffered(id, "", 5*time.Second)

	n.wantError("POST", "/api/v1/agents/ann/logout", n.agent("ann"), nil, http.StatusConflict, "agent_has_work")
	n.wantError("POST", "/api/v1/agents/ann/logout", n.agent("ann"), `{"force":false}`, http.StatusConflict, "agent_has_work")
	n.wantError("POST", "/api/v1/agents/ann/logout", n.supervisor(), nil, http.StatusConflict, "agent_has_work")
	n.wantError("POST", "/api/v1/agents/ann/logout", n.agent("ann"), `{"force":true}`, http.StatusForbidden, "forbidden")
	if ix := n.getIx(id); ix.State != "offered" || ix.Agent != "ann" {
		t.Fatalf("refused logouts changed the interaction: %+v", ix)
	}

	a := decodeJSON[agentBody](t, n.call("POST", "/api/v1/agents/ann/logout", n.supervisor(), `{"force":true}`, http.StatusOK))
	if a.State.State != "logged_out" || len(a.Leases) != 0 || len(a.Interactions) != 0 {
		t.Errorf("after forced logout: %+v", a)
	}
	var ix ixBody
	eventually(t, 5*time.Second, "revoked offer back in the queue", func() bool {
		ix = n.getIx(id)
		return ix.State == "queued"
	})
	if ix.Agent != "" || ix.Reason != "agent logged out" {
		t.Errorf("requeued after forced logout: agent %q reason %q", ix.Agent, ix.Reason)
	}
	if q := n.queue("sales"); q.Waiting != 1 {
		t.Errorf("sales waiting %d, want 1", q.Waiting)
	}

	// Forced logout of a connected interaction ends it. Once ann is ready
	// again, the waiting interaction is hers at once.
	n.login("ann")
	n.call("POST", "/api/v1/agents/ann/state", n.agent("ann"), `{"state":"ready"}`, http.StatusOK)
	n.waitOffered(id, "", 5*time.Second)
	n.call("POST", "/api/v1/interactions/"+id+"/accept", n.agent("ann"), nil, http.StatusOK)
	n.wantError("POST", "/api/v1/agents/ann/logout", n.agent("ann"), nil, http.StatusConflict, "agent_has_work")
	n.call("POST", "/api/v1/agents/ann/logout", n.supervisor(), `{"force":true}`, http.StatusOK)
	eventually(t, 5*time.Second, "connected interaction ended by forced logout", func() bool {
		ix = n.getIx(id)
		return ix.State == "ended"
	})
	if ix.Reason != "agent logged out" {
		t.Errorf("ended reason %q, want %q", ix.Reason, "agent logged out")
	}
}

func TestAcceptCompleteConflicts(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	n.login("bob") // logged in, not ready
	n.readyAgents("sales", 1, "ann")
	id := n.create("sales").ID
	if ix := n.waitOffered(id, "", 5*time.Second); ix.Agent != "ann" {
		t.Fatalf("offered to %q, want ann", ix.Agent)
	}

	n.wantError("POST", "/api/v1/interactions/"+id+"/accept", n.agent("bob"), nil, http.StatusForbidden, "not_yours")
	n.wantError("POST", "/api/v1/interactions/"+id+"/reject", n.agent("bob"), nil, http.StatusForbidden, "not_yours")
	n.wantError("POST", "/api/v1/interactions/"+id+"/complete", n.agent("ann"), nil, http.StatusConflict, "wrong_state")
	if ix := n.getIx(id); ix.State != "offered" || ix.Agent != "ann" {
		t.Fatalf("refused calls changed the interaction: %+v", ix)
	}

	n.call("POST", "/api/v1/interactions/"+id+"/accept", n.agent("ann"), nil, http.StatusOK)
	// Repeating an accept (a retry after a lost response) is a no-op.
	if ix := decodeJSON[ixBody](t, n.call("POST", "/api/v1/interactions/"+id+"/accept", n.agent("ann"), nil, http.StatusOK)); ix.State != "connected" {
		t.Fatalf("repeated accept: %+v", ix)
	}
	n.wantError("POST", "/api/v1/interactions/"+id+"/reject", n.agent("ann"), nil, http.StatusConflict, "wrong_state")
	n.wantError("POST", "/api/v1/interactions/"+id+"/complete", n.agent("bob"), nil, http.StatusForbidden, "not_yours")

	n.call("POST", "/api/v1/interactions/"+id+"/complete", n.agent("ann"), nil, http.StatusOK)
	// Repeating a complete during wrap-up is a no-op too.
	n.call("POST", "/api/v1/interactions/"+id+"/complete", n.agent("ann"), nil, http.StatusOK)
	n.wantError("POST", "/api/v1/interactions/"+id+"/accept", n.agent("ann"), nil, http.StatusConflict, "wrong_state")

	// "ready" during wrap-up ends the wrap-up at once.
	n.call("POST", "/api/v1/agents/ann/state", n.agent("ann"), `{"state":"ready"}`, http.StatusOK)
	eventually(t, 5*time.Second, "interaction ended after early wrap-up end", func() bool { return n.getIx(id).State == "ended" })
	n.wantError("POST", "/api/v1/interactions/"+id+"/complete", n.agent("ann"), nil, http.StatusNotFound, "not_found")
}

func TestQueueStats(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	body := decodeJSON[struct {
		Queues []queueStats `json:"queues"`
	}](t, n.call("GET", "/api/v1/queues", n.agent("ann"), nil, http.StatusOK))
	if len(body.Queues) != 2 || body.Queues[0].Queue != "sales" || body.Queues[1].Queue != "support" {
		t.Fatalf("queues %+v, want sales then support", body.Queues)
	}
	for _, q := range body.Queues {
		if q.Waiting != 0 || q.AgentsReady != 0 || q.Answered != 0 || q.ServiceLevelPercent != -1 ||
			q.ServiceLevelTarget != 80 || q.ThresholdMillis != 20000 {
			t.Errorf("initial stats of %s: %+v", q.Queue, q)
		}
	}
	if s := body.Queues[0]; s.AgentsEligible != 6 {
		t.Errorf("sales eligible %d, want 6", s.AgentsEligible)
	}
	if s := body.Queues[1]; s.AgentsEligible != 7 {
		t.Errorf("support eligible %d, want 7", s.AgentsEligible)
	}

	// Two waiting in support (nobody ready there), ann ready for sales only.
	w1 := n.create("support")
	n.create("support")
	n.readyAgents("sales", 1, "ann")
	if s := n.queue("support"); s.Waiting != 2 || s.AgentsReady != 0 {
		t.Errorf("support: %+v, want 2 waiting, 0 ready", s)
	}
	eventually(t, 5*time.Second, "longest wait grows", func() bool { return n.queue("support").LongestWaitMillis > 0 })

	id := n.create("sales").ID
	n.waitOffered(id, "", 5*time.Second)
	// ann still counts as ready: she has free capacity on other channels.
	if s := n.queue("sales"); s.AgentsReady != 1 || s.Offered != 1 || s.Waiting != 0 {
		t.Errorf("sales with ann reserved: %+v", s)
	}
	n.call("POST", "/api/v1/interactions/"+id+"/accept", n.agent("ann"), nil, http.StatusOK)
	s := n.queue("sales")
	if s.Answered != 1 || s.ServiceLevelPercent != 100 {
		t.Errorf("sales after one quick answer: %+v, want answered 1, service level 100", s)
	}
	n.call("POST", "/api/v1/interactions/"+w1.ID+"/cancel", n.admin(), nil, http.StatusOK)
	if s := n.queue("support"); s.Waiting != 1 || s.Abandoned != 1 || s.ServiceLevelPercent != -1 {
		t.Errorf("support after a quick abandon: %+v (an abandon within the threshold does not count)", s)
	}
}

func TestListInteractions(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	q1, q2 := n.create("support"), n.create("support")
	n.readyAgents("sales", 1, "ann")
	conn := n.create("sales")
	n.waitOffered(conn.ID, "", 5*time.Second)
	n.call("POST", "/api/v1/interactions/"+conn.ID+"/accept", n.agent("ann"), nil, http.StatusOK)

	list := func(query string) []string {
		t.Helper()
		body := decodeJSON[struct {
			Interactions []ixBody `json:"interactions"`
		}](t, n.call("GET", "/api/v1/interactions"+query, n.supervisor(), nil, http.StatusOK))
		ids := []string{}
		for _, ix := range body.Interactions {
			ids = append(ids, ix.ID)
		}
		return ids
	}
	same := func(query string, want ...string) {
		t.Helper()
		got := list(query)
		if want == nil {
			want = []string{}
		}
		if !slices.Equal(got, want) {
			t.Errorf("GET /interactions%s = %v, want %v", query, got, want)
		}
	}
	// Newest first.
	same("", conn.ID, q2.ID, q1.ID)
	same("?state=queued", q2.ID, q1.ID)
	same("?queue=support", q2.ID, q1.ID)
	same("?queue=sales", conn.ID)
	same("?state=connected", conn.ID)
	same("?agent=ann", conn.ID)
	same("?agent=bob")
	same("?state=ended")
	same("?state=connected&queue=support")
	same("?channel=task&limit=2", conn.ID, q2.ID)
	same("?limit=1", conn.ID)
	same("?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z")

	for _, q := range []string{"?state=bogus", "?state=QUEUED", "?limit=0", "?limit=-1", "?limit=abc", "?channel=fax", "?since=yesterday"} {
		n.wantError("GET", "/api/v1/interactions"+q, n.admin(), nil, http.StatusBadRequest, "bad_request")
	}
}

// sseEvent is one event read from the stream.
type sseEvent struct {
	id   uint64
	typ  string
	data string
}

// openStream reads GET /api/v1/events in the background; stop closes it.
func (n *testNode) openStream(t *testing.T, a auth, query, lastID string) (<-chan sseEvent, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", n.base+"/api/v1/events"+query, nil)
	a(req)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("open stream: %v", err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("open stream: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	ch := make(chan sseEvent, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.typ != "" {
					select {
					case ch <- ev:
					case <-ctx.Done():
						return
					}
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id, _ = strconv.ParseUint(line[4:], 10, 64)
			case strings.HasPrefix(line, "event: "):
				ev.typ = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	stop := func() {
		cancel()
		resp.Body.Close()
		<-done
	}
	t.Cleanup(stop)
	return ch, stop
}

func nextEvent(t *testing.T, ch <-chan sseEvent, timeout time.Duration) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("event stream closed")
		}
		return ev
	case <-time.After(timeout):
		t.Fatalf("no event within %v", timeout)
	}
	return sseEvent{}
}

func TestEventStreamResume(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	// Generate events: logins and state changes.
	for _, id := range []string{"ann", "bob", "carla"} {
		n.login(id)
		n.setReady(id)
	}
	ch, stop := n.openStream(t, n.admin(), "?after=0", "")
	const k = 7 // node started, then login and ready of three agents
	var first []sseEvent
	for i := 0; i < k; i++ {
		ev := nextEvent(t, ch, 5*time.Second)
		var body eventBody
		if err := json.Unmarshal([]byte(ev.data), &body); err != nil {
			t.Fatalf("event data %q: %v", ev.data, err)
		}
		if body.Seq != ev.id || body.Type != ev.typ {
			t.Errorf("SSE id %d / event %q disagree with data seq %d / type %q", ev.id, ev.typ, body.Seq, body.Type)
		}
		// A staff stream sees every event: ids are 1, 2, 3, ...
		if want := uint64(i + 1); ev.id != want {
			t.Fatalf("event %d has id %d, want %d", i, ev.id, want)
		}
		first = append(first, ev)
	}
	stop()
	if first[0].typ != "node" {
		t.Errorf("first event type %q, want node (started)", first[0].typ)
	}

	// Resume after the third event, with Last-Event-ID: exactly the following events.
	ch2, _ := n.openStream(t, n.admin(), "", strconv.FormatUint(first[2].id, 10))
	for i := 3; i < k; i++ {
		ev := nextEvent(t, ch2, 5*time.Second)
		if ev != first[i] {
			t.Fatalf("resumed event %d = %+v, want %+v", i, ev, first[i])
		}
	}
	// And ?after=N works the same.
	ch3, _ := n.openStream(t, n.admin(), "?after="+strconv.FormatUint(first[5].id, 10), "")
	if ev := nextEvent(t, ch3, 5*time.Second); ev != first[6] {
		t.Fatalf("?after resumed with %+v, want %+v", ev, first[6])
	}

	// Live events arrive on an open stream, filtered by type.
	ch4, _ := n.openStream(t, n.admin(), "?types=interaction.state", "")
	id := n.create("support").ID
	for _, want := range []string{"created", "queued"} {
		ev := nextEvent(t, ch4, 5*time.Second)
		if ev.typ != "interaction.state" {
			t.Fatalf("types filter let through %q", ev.typ)
		}
		var body struct {
			Interaction string `json:"interaction"`
			Data        ixBody `json:"data"`
		}
		if err := json.Unmarshal([]byte(ev.data), &body); err != nil {
			t.Fatal(err)
		}
		if body.Interaction != id || body.Data.State != want {
			t.Errorf("live event: %s %s, want %s %s", body.Interaction, body.Data.State, id, want)
		}
	}
	n.wantError("GET", "/api/v1/events?after=abc", n.admin(), nil, http.StatusBadRequest, "bad_request")
}

func TestEventStreamAgentSeesOwnEvents(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	n.login("ann")
	ch, _ := n.openStream(t, n.agent("ann"), "?after=0", "")
	// Other agents' events, an interaction offered to bob, then one more of ann's.
	n.readyAgents("support", 1, "bob")
	id := n.create("support").ID
	n.waitOffered(id, "", 5*time.Second)
	n.call("POST", "/api/v1/agents/ann/state", n.agent("ann"), `{"state":"not_ready","reason":"the marker"}`, http.StatusOK)

	deadline := time.Now().Add(10 * time.Second)
	seen := 0
	var last uint64
	for {
		ev := nextEvent(t, ch, time.Until(deadline))
		seen++
		if ev.id <= last {
			t.Errorf("ids not increasing: %d after %d", ev.id, last)
		}
		last = ev.id
		var body eventBody
		if err := json.Unmarshal([]byte(ev.data), &body); err != nil {
			t.Fatal(err)
		}
		if body.Agent != "ann" {
			t.Fatalf("ann's stream carried an event about %q: %s", body.Agent, ev.data)
		}
		if ev.typ == "agent.state" && strings.Contains(ev.data, `"the marker"`) {
			break
		}
	}
	if seen != 2 { // login, not_ready(the marker)
		t.Errorf("ann saw %d events, want 2", seen)
	}
}

func TestHealthMetricsOpenAPI(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	h := decodeJSON[map[string]string](t, n.call("GET", "/healthz", nil, nil, http.StatusOK))
	if h["status"] != "ok" || h["node"] != "node-1" {
		t.Errorf("/healthz %v", h)
	}
	r := decodeJSON[map[string]string](t, n.call("GET", "/readyz", nil, nil, http.StatusOK))
	if r["status"] != "ready" {
		t.Errorf("/readyz %v", r)
	}
	n.create("support")
	m := string(n.call("GET", "/metrics", nil, nil, http.StatusOK))
	for _, want := range []string{
		`ccmesh_queue_waiting{queue="support"} 1`,
		`ccmesh_queue_waiting{queue="sales"} 0`,
		`ccmesh_interactions_created_total{channel="task",queue="support"} 1`,
		`ccmesh_agents{state="logged_out"} 10`,
		`ccmesh_interactions_live 1`,
		"ccmesh_events_last_seq",
		"ccmesh_http_requests_total",
		"ccmesh_store_commits_total",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// The create was answered after its events were committed.
	for _, name := range []string{"ccmesh_store_commits_total", "ccmesh_store_events_written_total", "ccmesh_store_projection_writes_total"} {
		if zero := name + " 0\n"; strings.Contains(m, zero) || !strings.Contains(m, name+" ") {
			t.Errorf("/metrics: %s missing or 0", name)
		}
	}
	data := n.call("GET", "/api/v1/openapi.json", nil, nil, http.StatusOK)
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.") {
		t.Errorf("openapi version %v", doc["openapi"])
	}
	if _, ok := doc["paths"].(map[string]any); !ok {
		t.Errorf("openapi.json has no paths object")
	}
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	n := startNode(t, nil)
	post := func(body, key string) (int, http.Header, []byte) { return n.createWithKey(body, key) }
	st, _, data := post(`{"queue":"sales"}`, "order-42")
	if st != http.StatusCreated {
		t.Fatalf("first create: %d %s", st, data)
	}
	first := decodeJSON[ixBody](t, data)
	st, h, data := post(`{"queue":"sales"}`, "order-42")
	if st != http.StatusOK || h.Get("Idempotent-Replayed") != "true" || decodeJSON[ixBody](t, data).ID != first.ID {
		t.Fatalf("replay while live: %d %v %s", st, h, data)
	}
	st, _, data = post(`{"queue":"support"}`, "order-42")
	if st != http.StatusUnprocessableEntity || !strings.Contains(string(data), "idempotency_key_reused") {
		t.Fatalf("reuse for another queue: %d %s", st, data)
	}
	// Once the interaction ended, a retry still finds it (in the store).
	n.call("POST", "/api/v1/interactions/"+first.ID+"/cancel", n.admin(), nil, http.StatusOK)
	st, _, data = post(`{"queue":"sales"}`, "order-42")
	if st != http.StatusOK || decodeJSON[ixBody](t, data).ID != first.ID {
		t.Fatalf("replay after end: %d %s", st, data)
	}
	// Without a key, every request creates.
	st1, _, d1 := post(`{"queue":"sales"}`, "")
	st2, _, d2 := post(`{"queue":"sales"}`, "")
	if st1 != http.StatusCreated || st2 != http.StatusCreated || decodeJSON[ixBody](t, d1).ID == decodeJSON[ixBody](t, d2).ID {
		t.Fatalf("no key: %d %d", st1, st2)
	}
	if st, _, _ := post(`{"queue":"sales"}`, strings.Repeat("k", 129)); st != http.StatusBadRequest {
		t.Fatalf("long key: %d", st)
	}
}

func TestBusyDoesNotConsumeIdempotencyKey(t *testing.T) {
	t.Parallel()
	n := startNode(t, func(c *config.Config) { c.Routing.MaxWaiting = 1 })
	first := n.create("sales") // nobody is ready: it waits and fills the node
	post := func(key string) (int, http.Header, []byte) { return n.createWithKey(`{"queue":"sales"}`, key) }
	st, h, data := post("retry-me")
	if st != http.StatusServiceUnavailable || h.Get("Retry-After") == "" || !strings.Contains(string(data), `"busy"`) {
		t.Fatalf("over the waiting limit: %d %v %s", st, h, data)
	}
	n.call("POST", "/api/v1/interactions/"+first.ID+"/cancel", n.admin(), nil, http.StatusOK)
	if st, _, data := post("retry-me"); st != http.StatusCreated {
		t.Fatalf("retry with the same key after busy: %d %s", st, data)
	}
}

// createWithKey posts body to /interactions as admin with an Idempotency-Key ("" for none).
func (n *testNode) createWithKey(body, key string) (int, http.Header, []byte) {
	n.t.Helper()
	req, err := http.NewRequest("POST", n.base+"/api/v1/interactions", strings.NewReader(body))
	if err != nil {
		n.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := n.client.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, data
}
