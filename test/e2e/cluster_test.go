package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

var routesRE = regexp.MustCompile(`msg="mesh: NATS server up".* routes=([0-9.]+:[0-9]+)`)

// clusterYAML is the cluster section of a member of node-1..node-3 whose
// embedded NATS takes routes on a free port (its client port private, the
// default) and routes to seed ("" for the first).
func clusterYAML(seed string) string {
	s := "\ncluster:\n  name: e2e\n  members: [node-1, node-2, node-3]\n  routes_listen: 127.0.0.1:0\n"
	if seed != "" {
		s += "  peers: [nats-route://" + seed + "]\n"
	}
	return s
}

// startCluster runs three ccmesh processes in one cluster, ann owned by node-2.
func startCluster(t *testing.T) []*proc {
	t.Helper()
	procs, _ := startClusterFiles(t)
	return procs
}

// waitClustered waits until every member has routes to all its peers and has
// read the replicated directory (JetStream up).
func waitClustered(t *testing.T, procs []*proc) {
	t.Helper()
	routes := len(procs) - 1
	for i, p := range procs {
		c := newClient(t, p.base)
		eventually(t, 20*time.Second, fmt.Sprintf("node-%d in the cluster (routes to both peers, directory read)", i+1), func() bool {
			st := decode[struct {
				NATS struct {
					Routes int `json:"routes"`
				} `json:"nats"`
				Directory struct {
					InSync bool `json:"in_sync"`
				} `json:"directory"`
			}](t, c.call("GET", "/api/v1/cluster", supervisor(), "", 200))
			return st.NATS.Routes >= routes && st.Directory.InSync
		})
	}
}

// startClusterFiles is startCluster also returning each member's
// configuration file (to restart it).
func startClusterFiles(t *testing.T) ([]*proc, []string) {
	t.Helper()
	return startClusterOpts(t, nil)
}

// startClusterOpts is startClusterFiles with more substitutions in every
// member's configuration.
func startClusterOpts(t *testing.T, replace [][2]string) ([]*proc, []string) {
	t.Helper()
	homes := append([][2]string{{"  - id: ann\n", "  - id: ann\n    home: node-2\n"}}, replace...)
	var procs []*proc
	var files []string
	seed := ""
	for i := 1; i <= 3; i++ {
		file := writeConfig(t, configOpts{dataDir: t.TempDir(), digest: "[MD5, SHA-256]", drainTimeout: "3s", nodeID: fmt.Sprintf("node-%d", i),
			extra: clusterYAML(seed), replace: homes})
		files = append(files, file)
		p := serve(t, file)
		if seed == "" {
			m := routesRE.FindStringSubmatch(p.find("mesh: NATS server up"))
			if m == nil {
				t.Fatalf("node-1 did not log its routes address:\n%s", p.log())
			}
			seed = m[1]
		}
		procs = append(procs, p)
	}
	waitClustered(t, procs)
	return procs, files
}

// Issue 4's cross-node call: a sipp caller reaches node-1; ann, owned by node-2,
// logged in there with her phone registered there, is reserved at node-2 through
// the mesh, her phone is rung by node-1 (media anchored at node-1) and answers.
// `ccmesh cluster status` and GET /api/v1/cluster show the three members.
func TestCallAtOneNodeAnsweredByAgentOwnedByAnother(t *testing.T) {
	t.Parallel()
	procs := startCluster(t)
	p1, p2 := procs[0], procs[1]
	c1, c2 := newClient(t, p1.base), newClient(t, p2.base)
	// ann's state changes only at node-2, her owner.
	if st, _, body, _ := c1.try("POST", "/api/v1/agents/ann/state", agent("ann"), `{"state":"ready"}`); st != 409 || !strings.Contains(string(body), "owned by node node-2") {
		t.Fatalf("ann's state at node-1, which does not own her: %d %s", st, body)
	}
	uas := sippPhone(t, p2, "ann", "-sn", "uas")
	c2.loginReady("sales", 1, "ann")
	eventually(t, 10*time.Second, "node-1 sees ann ready through node-2's feed", func() bool {
		st := decode[struct {
			AgentsReady int `json:"agents_ready"`
		}](t, c1.call("GET", "/api/v1/queues/sales", admin(), "", 200))
		return st.AgentsReady >= 1
	})
	// Agents are listed cluster-wide, each with its owner.
	ann := decode[struct {
		agentBody
		Owner string `json:"owner"`
	}](t, c1.call("GET", "/api/v1/agents/ann", supervisor(), "", 200))
	if ann.Owner != "node-2" || ann.State.State != "ready" {
		t.Fatalf("ann seen from node-1: owner %q, state %+v", ann.Owner, ann.State)
	}
	eventually(t, 5*time.Second, "node-1 listing the cluster's 10 agents (snapshots from both peers)", func() bool {
		return len(decode[struct {
			Agents []struct {
				ID string `json:"id"`
			} `json:"agents"`
		}](t, c1.call("GET", "/api/v1/agents", supervisor(), "", 200)).Agents) == 10
	})
	// Registrations are listed cluster-wide: node-1 shows ann's phone registered at node-2.
	if regs := decode[registrationsBody](t, c1.call("GET", "/api/v1/registrations", supervisor(), "", 200)); len(regs.Registrations["ann"]) != 1 {
		t.Fatalf("node-1's registrations: %+v", regs.Registrations)
	}
	if code, out := sipp(t, "caller.xml", p1.sipUDP, "u1", nil, 1, "-s", "2001"); code != 0 {
		t.Fatalf("caller at node-1: exit %d\n%s", code, out)
	}
	select {
	case res := <-uas:
		if !strings.HasPrefix(res, "exit 0") {
			t.Fatalf("ann's phone: %s", res)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("ann's phone did not finish")
	}
	list := c1.voice()
	if len(list) != 1 || list[0].Agent != "ann" {
		t.Fatalf("node-1's voice interactions: %+v", list)
	}
	if states := strings.Join(c1.states(list[0].ID), ","); !strings.HasPrefix(states, "created,queued,offered,connected,wrap_up") {
		t.Fatalf("lifecycle at node-1: %s", states)
	}
	// The lease was granted, accepted and completed at ann's owner.
	hist := string(c2.call("GET", "/api/v1/agents/ann/history", admin(), "", 200))
	for _, want := range []string{`"reserved"`, `"busy"`} {
		if !strings.Contains(hist, want) {
			t.Fatalf("ann's history at node-2 lacks %s:\n%s", want, hist)
		}
	}
	code, out, errOut := run(t, "cluster", "status", "--url", p1.base, "--token", supervisorToken)
	if code != 0 || !strings.Contains(out, "cluster e2e, seen from node-1") || !regexp.MustCompile(`node-3\s+up\s`).MatchString(out) {
		t.Fatalf("ccmesh cluster status: exit %d\n%s%s", code, out, errOut)
	}
}
