package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// faultHomes spreads the sales agents over the three members: bob and farid
// at node-1, ann and ines at node-2, dev and hugo at node-3.
var faultHomes = map[string]string{"bob": "node-1", "farid": "node-1", "ann": "node-2", "ines": "node-2", "dev": "node-3", "hugo": "node-3"}

// memberView is a peer as GET /api/v1/cluster shows it.
type memberView struct {
	ID                string `json:"id"`
	Health            string `json:"health"`
	Downs             uint64 `json:"downs"`
	RequestsSent      uint64 `json:"requests_sent"`
	RequestsRefrained uint64 `json:"requests_refrained"`
}

func (c *client) member(id string) memberView {
	c.t.Helper()
	st := decode[struct {
		Members []memberView `json:"members"`
	}](c.t, c.call("GET", "/api/v1/cluster", supervisor(), "", 200))
	for _, m := range st.Members {
		if m.ID == id {
			return m
		}
	}
	c.t.Fatalf("member %s not in %+v", id, st.Members)
	return memberView{}
}

// longPhone registers a phone for agent id at node p and answers up to calls
// calls with sipp's UAS for at most life; the test's end stops it.
func longPhone(t *testing.T, p *proc, id string, calls int, life time.Duration) {
	t.Helper()
	port := freeUDPPort(t)
	if code, out := sipp(t, "register_contact.xml", p.sipUDP, "u1", []string{id + ";[authentication username=" + id + " password=" + id + "-pass]"}, 1,
		"-key", "contact_port", fmt.Sprint(port)); code != 0 {
		t.Fatalf("register %s's phone: exit %d\n%s", id, code, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), life)
	cmd := exec.CommandContext(ctx, "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", fmt.Sprint(port), "-m", fmt.Sprint(calls), "-nostdin")
	cmd.Dir = t.TempDir()
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("%s's phone: %v", id, err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
}

// callerLoad runs sipp callers against node p's sales queue: calls calls at
// rate per second, each talking for talk; it returns sipp's exit code and its
// output when done.
func callerLoad(t *testing.T, p *proc, calls int, rate float64, talk time.Duration) <-chan string {
	return goSipp(t, "caller_talk.xml", p.sipUDP, "u1", nil, calls, "-s", "2001", "-r", fmt.Sprint(rate),
		"-d", fmt.Sprint(talk.Milliseconds()), "-timeout", "28s")
}

// Issue 5 (a): kill -9 of one member of three under a steady call load at
// another. The survivors detect it within the peer timeout, send it nothing
// from then on, and no call at node-1 fails — neither those in progress (a
// call bridged to an agent of the dead member keeps its media, anchored at
// node-1) nor the new ones (routed to the agents still reachable).
func TestKillOneMemberUnderLoad(t *testing.T) {
	t.Parallel()
	var homes [][2]string
	for id, home := range faultHomes {
		if id != "ann" {
			homes = append(homes, [2]string{"  - id: " + id + "\n", "  - id: " + id + "\n    home: " + home + "\n"})
		}
	}
	procs, _ := startClusterOpts(t, homes)
	clients := []*client{newClient(t, procs[0].base), newClient(t, procs[1].base), newClient(t, procs[2].base)}
	for id, home := range faultHomes {
		i := int(home[len(home)-1] - '1')
		longPhone(t, procs[i], id, 100, 60*time.Second)
		clients[i].loginReady("sales", 1, id)
	}
	eventually(t, 10*time.Second, "node-1 seeing the six sales agents ready", func() bool {
		st := decode[struct {
			AgentsReady int `json:"agents_ready"`
		}](t, clients[0].call("GET", "/api/v1/queues/sales", admin(), "", 200))
		return st.AgentsReady == 6
	})
	load := callerLoad(t, procs[0], 30, 2, 1500*time.Millisecond)
	time.Sleep(4 * time.Second) // calls in progress, some with node-3's agents
	killed := time.Now()
	if err := procs[2].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	detect := map[string]time.Duration{}
	var sentAtDetection uint64
	for i, c := range clients[:2] {
		eventually(t, 3*time.Second, fmt.Sprintf("node-%d taking node-3 as down", i+1), func() bool {
			m := c.member("node-3")
			if m.Health == "down" && i == 0 {
				sentAtDetection = m.RequestsSent
			}
			return m.Health == "down"
		})
		detect[fmt.Sprintf("node-%d", i+1)] = time.Since(killed)
	}
	for n, d := range detect {
		if d > 1500*time.Millisecond {
			t.Errorf("%s detected the kill after %v (peer_timeout 1s)", n, d)
		}
	}
	res := <-load
	if !strings.HasPrefix(res, "exit 0") {
		t.Fatalf("calls at node-1 failed after node-3 was killed:\n%s", res)
	}
	after := clients[0].member("node-3")
	if after.RequestsSent != sentAtDetection {
		t.Errorf("node-1 sent %d requests to node-3 after detecting it down", after.RequestsSent-sentAtDetection)
	}
	t.Logf("kill -9 node-3: detected by node-1 after %v, node-2 after %v; 30 calls at node-1, 0 failed; requests to node-3 after detection: %d (refrained %d)",
		detect["node-1"].Round(time.Millisecond), detect["node-2"].Round(time.Millisecond), after.RequestsSent-sentAtDetection, after.RequestsRefrained)
}
