package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// moduleRoot is the repository's root (where go.mod is), for go run / go build.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run rtpload from inside the ccmesh repository (no go.mod found)")
	}
	return filepath.Dir(mod), nil
}

var queueRe = regexp.MustCompile(`\{id: q1, dn: "(\d+)"`)

// writeConfig has bench/apiload generate the node's configuration (agents
// a0001.. with password aNNNN-pass, queue q1 without wrap-up), then gives every
// agent voice capacity 1 and adds the SIP section. It returns the config's
// path and the queue's route point (its DN).
func writeConfig(root, dir string, agents, maxCalls int) (path, routePoint string, err error) {
	gen := exec.Command("go", "run", "./bench/apiload", "-gen-config", dir, "-agents", strconv.Itoa(agents),
		"-queues", "1", "-listen", fmt.Sprintf("127.0.0.1:%d", *flagHTTPPort))
	gen.Dir = root
	if out, err := gen.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("bench/apiload -gen-config: %v\n%s", err, out)
	}
	path = filepath.Join(dir, "config.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", err
	}
	cfg := strings.ReplaceAll(string(b), "voice: 0", "voice: 1")
	if n := strings.Count(cfg, "voice: 1"); n != agents {
		return "", "", fmt.Errorf("%s: %d agents with voice capacity, want %d (did bench/apiload's output change?)", path, n, agents)
	}
	m := queueRe.FindStringSubmatch(cfg)
	if m == nil {
		return "", "", fmt.Errorf("%s: no queue q1 with a DN (did bench/apiload's output change?)", path)
	}
	if !strings.Contains(cfg, `wrap_up: "0s"`) {
		return "", "", fmt.Errorf("%s: queue q1 has a wrap-up; rtpload needs none", path)
	}
	cfg += fmt.Sprintf("sip:\n  listen_udp: 127.0.0.1:%d\n  listen_tcp: \"\"\n  digest_algorithms: [SHA-256, MD5]\n"+
		"  rtp_timeout: 60s\n  max_calls: %d\n", *flagSIPPort, maxCalls)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return "", "", err
	}
	return path, m[1], nil
}

// buildNode builds ./cmd/ccmesh into dir.
func buildNode(root, dir string) (string, error) {
	bin := filepath.Join(dir, "ccmesh")
	build := exec.Command("go", "build", "-o", bin, "./cmd/ccmesh")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/ccmesh: %v\n%s", err, out)
	}
	return bin, nil
}

// node is the ccmesh process this tool started.
type node struct {
	cmd    *exec.Cmd
	pid    int
	log    string
	exited chan struct{}
}

// startNode starts bin serve --config cfg, its output in dir/node.log. Without
// -keep the node also gets SIGKILL if this tool dies.
func startNode(bin, cfg, dir string, keep bool) (*node, error) {
	logPath := filepath.Join(dir, "node.log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "--config", cfg)
	cmd.Stdout, cmd.Stderr = f, f
	if !keep {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	n := &node{cmd: cmd, pid: cmd.Process.Pid, log: logPath, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(n.exited)
	}()
	return n, nil
}

// waitReady polls /readyz until it answers 200.
func (n *node) waitReady(base string, within time.Duration) error {
	deadline := time.Now().Add(within)
	c := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-n.exited:
			return fmt.Errorf("the node exited before it was ready; its log:\n%s", tail(n.log, 20))
		default:
		}
		if res, err := c.Get(base + "/readyz"); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the node was not ready within %s; its log:\n%s", within, tail(n.log, 20))
}

// stop ends the node (only the process this tool started, by its PID): SIGTERM,
// then SIGKILL if it has not exited after its drain timeout.
func (n *node) stop() {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = syscall.Kill(n.pid, syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(8 * time.Second):
		_ = syscall.Kill(n.pid, syscall.SIGKILL)
		<-n.exited
	}
}

func tail(path string, lines int) string {
	b, _ := os.ReadFile(path)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// logSummary counts the node log's lines by level and its WARN and ERROR
// messages, most frequent first.
func logSummary(path string) (lines int, byLevel map[string]int, msgs []string) {
	byLevel = map[string]int{}
	f, err := os.Open(path)
	if err != nil {
		return 0, byLevel, nil
	}
	defer f.Close()
	count := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		lines++
		lvl := field(line, "level")
		byLevel[lvl]++
		if lvl == "WARN" || lvl == "ERROR" {
			msg := lvl + " " + field(line, "msg")
			if e := field(line, "err"); e != "" {
				msg += ": " + e
			}
			count[msg]++
		}
	}
	for m := range count {
		msgs = append(msgs, m)
	}
	sort.Slice(msgs, func(i, j int) bool { return count[msgs[i]] > count[msgs[j]] })
	for i, m := range msgs {
		msgs[i] = fmt.Sprintf("%d× %s", count[m], m)
	}
	return lines, byLevel, msgs
}

// field returns key's value in a log/slog text line (quoted or not).
func field(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		if !strings.HasPrefix(line, key+"=") {
			return ""
		}
		i = -1
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if s, err := strconv.QuotedPrefix(v); err == nil {
			u, _ := strconv.Unquote(s)
			return u
		}
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// udpCounters reads the kernel's UDP counters (whole machine) from /proc/net/snmp.
func udpCounters() map[string]int64 {
	m := map[string]int64{}
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return m
	}
	var names []string
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f[1:]
			continue
		}
		for i, v := range f[1:] {
			if i < len(names) {
				m[names[i]], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return m
}

// socketDrops reads the per-socket drop counters of UDP sockets on loopback,
// by local port, from /proc/net/udp.
func socketDrops() map[uint16]uint64 {
	m := map[uint16]uint64{}
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return m
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 13 || !strings.HasPrefix(f[1], "0100007F:") {
			continue
		}
		port, err1 := strconv.ParseUint(strings.TrimPrefix(f[1], "0100007F:"), 16, 16)
		drops, err2 := strconv.ParseUint(f[len(f)-1], 10, 64)
		if err1 == nil && err2 == nil {
			m[uint16(port)] += drops
		}
	}
	return m
}

// readyAgents logs every agent in and makes it ready through the API, 16 at a time.
func readyAgents(ctx context.Context, base string, n int) error {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	post := func(id, path, body string) error {
		req, err := http.NewRequestWithContext(ctx, "POST", base+"/api/v1/agents/"+id+path, strings.NewReader(body))
		if err != nil {
			return err
		}
		req.SetBasicAuth(id, id+"-pass")
		req.Header.Set("Content-Type", "application/json")
		res, err := c.Do(req)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
		if res.StatusCode != 200 {
			return fmt.Errorf("agent %s: POST %s: %d %s", id, path, res.StatusCode, bytes.TrimSpace(b))
		}
		return nil
	}
	return parallel(ctx, n, func(i int) error {
		id := agentID(i)
		if err := post(id, "/login", ""); err != nil {
			return err
		}
		return post(id, "/state", `{"state":"ready"}`)
	})
}

// parallel runs f(0..n-1), 16 at a time, and returns the first error.
func parallel(ctx context.Context, n int, f func(int) error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	sem := make(chan struct{}, 16)
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := f(i); err != nil {
				once.Do(func() { first = err })
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

func agentID(i int) string { return fmt.Sprintf("a%04d", i+1) }
