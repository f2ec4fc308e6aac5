// Package e2e holds black-box tests of the ccmesh binary: it is built once in
// TestMain, run as a child process on 127.0.0.1:0 with a temporary data directory,
// and driven over HTTP and with signals.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binary is the ccmesh binary built by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ccmesh-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "ccmesh")
	build := exec.Command("go", "build", "-o", binary, "../../cmd/ccmesh")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: go build:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	adminToken      = "ccmesh-admin-token-change-me"
	supervisorToken = "ccmesh-supervisor-token-change-me"
)

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

// run runs the binary to completion and returns its exit code, stdout and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return code, stdout.String(), stderr.String()
}

// configOpts adjust the example configuration for a test.
type configOpts struct {
	dataDir      string
	drainTimeout string // default 30s
	wrapUp       string // default 1s
	offerTimeout string // default 20s
	// digest overrides sip.digest_algorithms, e.g. "[MD5, SHA-256]" for sipp 3.6
	// (MD5 only, answers the first challenge) or "[MD5]" for baresip 1.0 (whose
	// libre gives up on any challenge it cannot compute).
	digest string
	// maxWait overrides the queues' max_wait (default 10m).
	maxWait string
	// rtpTimeout overrides sip.rtp_timeout (default 60s).
	rtpTimeout string
	// sipExtra is appended to the sip section (indented two spaces per key).
	sipExtra string
	// queueExtra is appended to the sales queue's settings.
	queueExtra string
	// nodeID replaces node-1; extra is appended to the file; replace lists more
	// (old, new) substitutions.
	nodeID  string
	extra   string
	replace [][2]string
}

// writeConfig writes examples/single-node.yaml with port 0, the data dir and the
// timings of o, and returns its path.
func writeConfig(t *testing.T, o configOpts) string {
	t.Helper()
	src, err := os.ReadFile("../../examples/single-node.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if o.drainTimeout == "" {
		o.drainTimeout = "30s"
	}
	if o.wrapUp == "" {
		o.wrapUp = "1s"
	}
	if o.offerTimeout == "" {
		o.offerTimeout = "20s"
	}
	s := string(src)
	for _, r := range []struct{ old, new string }{
		{"listen: 127.0.0.1:8080", "listen: 127.0.0.1:0"},
		{"listen_udp: 127.0.0.1:5060", "listen_udp: 127.0.0.1:0"},
		{"listen_tcp: 127.0.0.1:5060", "listen_tcp: 127.0.0.1:0"},
		{"data_dir: ./ccmesh-data", "data_dir: " + jsonString(o.dataDir)},
		{"drain_timeout: 30s", "drain_timeout: " + o.drainTimeout},
		{"wrap_up: 10s", "wrap_up: " + o.wrapUp},
		{"offer_timeout: 20s", "offer_timeout: " + o.offerTimeout},
		{"max_wait: 10m", "max_wait: " + map[bool]string{true: "10m", false: o.maxWait}[o.maxWait == ""]},
		{"rtp_timeout: 60s", "rtp_timeout: " + map[bool]string{true: "60s", false: o.rtpTimeout}[o.rtpTimeout == ""] + o.sipExtra},
		{"    dn: \"2001\"\n", "    dn: \"2001\"\n" + o.queueExtra},
		{"digest_algorithms: [SHA-256, MD5]", "digest_algorithms: " + map[bool]string{true: "[SHA-256, MD5]", false: o.digest}[o.digest == ""]},
	} {
		if !strings.Contains(s, r.old) {
			t.Fatalf("examples/single-node.yaml no longer contains %q; update the e2e tests", r.old)
		}
		s = strings.ReplaceAll(s, r.old, r.new)
	}
	for _, r := range o.replace {
		if !strings.Contains(s, r[0]) {
			t.Fatalf("examples/single-node.yaml no longer contains %q; update the e2e tests", r[0])
		}
		s = strings.ReplaceAll(s, r[0], r[1])
	}
	if o.nodeID != "" {
		s = strings.Replace(s, "  id: node-1\n", "  id: "+o.nodeID+"\n", 1)
	}
	s += o.extra
	path := filepath.Join(t.TempDir(), "ccmesh.yaml")
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// proc is a running `ccmesh serve`.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	base string // http://127.0.0.1:PORT, from the "ready" log line
	// sipUDP and sipTCP are the SIP listeners' host:port from the same line.
	sipUDP, sipTCP string
	// sipTLS and sipWS are set when the config enables them.
	sipTLS, sipWS string
	done          chan struct{}

	// mu guards lines.
	mu    sync.Mutex
	lines []string
}

var (
	readyRE = regexp.MustCompile(`msg=ready .*\bhttp=(http://[0-9.]+:[0-9]+)`)
	sipRE   = regexp.MustCompile(`\bsip_udp=([0-9.]+:[0-9]+) sip_tcp=([0-9.]+:[0-9]+)`)
	tlsRE   = regexp.MustCompile(`\bsip_tls=([0-9.]+:[0-9]+) sip_ws=([0-9.]+:[0-9]+)`)
)

// serve starts `ccmesh serve --config cfg` and waits for its "ready" log line.
func serve(t *testing.T, cfg string) *proc {
	t.Helper()
	return serveIn(t, cfg, "")
}

// serveIn is serve inside network namespace ns ("" for this one).
func serveIn(t *testing.T, cfg, ns string) *proc {
	t.Helper()
	cmd := exec.Command(binary, "serve", "--config", cfg)
	if ns != "" {
		cmd = exec.Command("ip", "netns", "exec", ns, binary, "serve", "--config", cfg)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait() // after every read from the pipe
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("ccmesh log:\n%s", p.log())
		}
	})
	var line string
	eventually(t, 15*time.Second, "the ready log line", func() bool {
		if p.exited() {
			t.Fatalf("ccmesh exited before ready (code %d):\n%s", cmd.ProcessState.ExitCode(), p.log())
		}
		line = p.find("msg=ready ")
		return line != ""
	})
	m := readyRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("ready line without http address: %q", line)
	}
	p.base = m[1]
	if m := sipRE.FindStringSubmatch(line); m != nil {
		p.sipUDP, p.sipTCP = m[1], m[2]
	}
	if m := tlsRE.FindStringSubmatch(line); m != nil {
		p.sipTLS, p.sipWS = m[1], m[2]
	}
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// find returns the first log line containing s, or "".
func (p *proc) find(s string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// wait waits up to timeout for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		p.t.Fatalf("ccmesh still running %v later", timeout)
	}
	return -1
}

// client talks HTTP to a node.
type client struct {
	t    testing.TB
	base string
	http *http.Client
}

func newClient(t testing.TB, base string) *client {
	c := &client{t: t, base: base, http: &http.Client{Timeout: 10 * time.Second}}
	t.Cleanup(c.http.CloseIdleConnections)
	return c
}

type auth func(*http.Request)

func admin() auth {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+adminToken) }
}
func supervisor() auth {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+supervisorToken) }
}
func agent(id string) auth { return func(r *http.Request) { r.SetBasicAuth(id, id+"-pass") } }

// curl sends the body as `curl -d` does, with a form content type (the README's tour).
func curl(a auth) auth {
	return func(r *http.Request) {
		a(r)
		if r.Body != nil {
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	}
}

// try sends a request; err is set when no answer came (connection refused, reset).
func (c *client) try(method, path string, a auth, body string) (int, http.Header, []byte, error) {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		return 0, nil, nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if a != nil {
		a(req)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, err
	}
	return resp.StatusCode, resp.Header, data, nil
}

// call sends a request and fails the test unless the status is want.
func (c *client) call(method, path string, a auth, body string, want int) []byte {
	c.t.Helper()
	st, _, data, err := c.try(method, path, a, body)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	if st != want {
		c.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, st, want, data)
	}
	return data
}

func decode[T any](t testing.TB, data []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("decode %T from %s: %v", v, data, err)
	}
	return v
}

type ixBody struct {
	ID         string `json:"id"`
	Queue      string `json:"queue"`
	State      string `json:"state"`
	Agent      string `json:"agent"`
	Reason     string `json:"reason"`
	AnsweredAt string `json:"answered_at"`
	EndedAt    string `json:"ended_at"`
}

type agentBody struct {
	ID    string `json:"id"`
	State struct {
		State  string `json:"state"`
		Reason string `json:"reason"`
	} `json:"state"`
	Interactions []ixBody `json:"interactions"`
}

type errBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (c *client) ix(id string) ixBody {
	c.t.Helper()
	return decode[ixBody](c.t, c.call("GET", "/api/v1/interactions/"+id, admin(), "", http.StatusOK))
}

// states returns the lifecycle states recorded in /interactions/{id}/events.
func (c *client) states(id string) []string {
	c.t.Helper()
	body := decode[struct {
		Events []struct {
			Type string `json:"type"`
			Data ixBody `json:"data"`
		} `json:"events"`
	}](c.t, c.call("GET", "/api/v1/interactions/"+id+"/events", admin(), "", http.StatusOK))
	var out []string
	for _, ev := range body.Events {
		if ev.Type == "interaction.state" {
			out = append(out, ev.Data.State)
		}
	}
	return out
}

// loginReady logs agents in and makes them ready, then waits until the router
// counts at least want ready agents on queue q.
func (c *client) loginReady(q string, want int, ids ...string) {
	c.t.Helper()
	for _, id := range ids {
		c.call("POST", "/api/v1/agents/"+id+"/login", agent(id), "", http.StatusOK)
		c.call("POST", "/api/v1/agents/"+id+"/state", agent(id), `{"state":"ready"}`, http.StatusOK)
	}
	eventually(c.t, 5*time.Second, fmt.Sprintf("%d agents ready on %s", want, q), func() bool {
		st := decode[struct {
			AgentsReady int `json:"agents_ready"`
		}](c.t, c.call("GET", "/api/v1/queues/"+q, admin(), "", http.StatusOK))
		return st.AgentsReady >= want
	})
}

// create makes a task in q and returns its id.
func (c *client) create(q string) string {
	c.t.Helper()
	ix := decode[ixBody](c.t, c.call("POST", "/api/v1/interactions", admin(), `{"queue":"`+q+`"}`, http.StatusCreated))
	if ix.ID == "" {
		c.t.Fatalf("create: no id")
	}
	return ix.ID
}

// connect creates a task in sales and has agent id (the only ready sales agent) accept it.
func (c *client) connect(id string) string {
	c.t.Helper()
	c.loginReady("sales", 1, id)
	ix := c.create("sales")
	eventually(c.t, 5*time.Second, "offer to "+id, func() bool {
		got := c.ix(ix)
		return got.State == "offered" && got.Agent == id
	})
	got := decode[ixBody](c.t, c.call("POST", "/api/v1/interactions/"+ix+"/accept", agent(id), "", http.StatusOK))
	if got.State != "connected" {
		c.t.Fatalf("after accept: %q", got.State)
	}
	return ix
}

// voice lists the node's voice interactions, newest first.
func (c *client) voice() []ixBody {
	c.t.Helper()
	return decode[struct {
		Interactions []ixBody `json:"interactions"`
	}](c.t, c.call("GET", "/api/v1/interactions?channel=voice", admin(), "", 200)).Interactions
}

func jsonUnmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
