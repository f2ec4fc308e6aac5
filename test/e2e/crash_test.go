package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestCrashKeepsAcknowledgedWork: whatever the API acknowledged before a SIGKILL
// is there after a restart on the same data, and open interactions are recovered.
func TestCrashKeepsAcknowledgedWork(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: crash under load (-short)")
	}
	t.Parallel()
	cfg := writeConfig(t, configOpts{dataDir: t.TempDir()})
	p := serve(t, cfg)
	c := newClient(t, p.base)
	agents := []string{"ann", "bob", "dev", "farid", "ines"} // all sales agents but hugo
	c.loginReady("sales", len(agents), agents...)

	const (
		load        = 2 * time.Second
		creators    = 4
		maxCreates  = 900 // stays under the list API's page limit of 1000
		maxRequests = 20000
		// 4 creators every 10ms: about 800 creations in 2s.
		creatorEvery = 10 * time.Millisecond
	)
	var (
		mu        sync.Mutex
		created   []string            // 201 Created
		accepted  = map[string]bool{} // 200 on accept
		completed = map[string]bool{} // 200 on complete
		creates   atomic.Int64
		requests  atomic.Int64
		stop      = make(chan struct{})
		wg        sync.WaitGroup
	)
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return requests.Add(1) > maxRequests
		}
	}
	// Clients with no shared state with the test's own client.
	loadClient := func() *client {
		lc := newClient(t, p.base)
		lc.http.Timeout = 5 * time.Second
		return lc
	}
	for i := 0; i < creators; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lc := loadClient()
			// Paced so that creations are still in flight when the node is killed.
			tick := time.NewTicker(creatorEvery)
			defer tick.Stop()
			for !stopped() && creates.Add(1) <= maxCreates {
				select {
				case <-stop: // the node was killed
					return
				case <-tick.C: // next creation
				}
				st, _, body, err := lc.try("POST", "/api/v1/interactions", admin(), `{"queue":"sales","attributes":{"load":"yes"}}`)
				if err != nil || st != http.StatusCreated {
					continue // not acknowledged
				}
				var ix ixBody
				if decodeErr := jsonUnmarshal(body, &ix); decodeErr != nil || ix.ID == "" {
					t.Errorf("201 with a body that has no id: %s", body)
					return
				}
				mu.Lock()
				created = append(created, ix.ID)
				mu.Unlock()
			}
		}()
	}
	for i, id := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lc := loadClient()
			for n := 0; !stopped(); n++ {
				st, _, body, err := lc.try("GET", "/api/v1/agents/"+id, agent(id), "")
				if err != nil || st != http.StatusOK {
					continue
				}
				var a agentBody
				if jsonUnmarshal(body, &a) != nil {
					continue
				}
				for _, ix := range a.Interactions {
					switch ix.State {
					case "offered":
						if (n+i)%5 == 4 {
							continue // let some offers be, so some stay offered at the crash
						}
						if st, _, _, err := lc.try("POST", "/api/v1/interactions/"+ix.ID+"/accept", agent(id), ""); err == nil && st == http.StatusOK {
							mu.Lock()
							accepted[ix.ID] = true
							mu.Unlock()
						}
					case "connected":
						if i < 2 {
							continue // ann and bob keep theirs connected until the crash
						}
						if st, _, _, err := lc.try("POST", "/api/v1/interactions/"+ix.ID+"/complete", agent(id), ""); err == nil && st == http.StatusOK {
							mu.Lock()
							completed[ix.ID] = true
							mu.Unlock()
						}
					}
				}
			}
		}()
	}

	time.Sleep(load) // the load duration itself, not synchronisation
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	if code := p.wait(10 * time.Second); code != -1 {
		t.Logf("exit code %d after SIGKILL", code) // -1: killed by a signal
	}
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("acknowledged before the crash: %d created, %d accepted, %d completed", len(created), len(accepted), len(completed))
	if len(created) < 20 {
		t.Fatalf("only %d interactions created under load; the test proves little", len(created))
	}
	if len(accepted) == 0 {
		t.Fatalf("no accept acknowledged under load")
	}

	// Restart on the same data.
	p2 := serve(t, cfg)
	c2 := newClient(t, p2.base)
	if p2.find("recovered interactions from the previous run") == "" {
		t.Errorf("no 'recovered interactions' log line after the restart")
	}

	createdSet := map[string]bool{}
	states := map[string]int{}
	var lost []string
	for _, id := range created {
		createdSet[id] = true
		st, _, body, err := c2.try("GET", "/api/v1/interactions/"+id, admin(), "")
		if err != nil {
			t.Fatalf("GET %s after restart: %v", id, err)
		}
		if st != http.StatusOK {
			lost = append(lost, fmt.Sprintf("%s (%d)", id, st))
			continue
		}
		var ix ixBody
		if err := jsonUnmarshal(body, &ix); err != nil {
			t.Fatal(err)
		}
		states[ix.State]++
		switch ix.State {
		case "queued", "ended", "failed":
		default:
			t.Errorf("%s is %q after recovery; want queued, ended or failed", id, ix.State)
		}
		if ix.State == "failed" && !strings.HasPrefix(ix.Reason, "node restarted while") {
			t.Errorf("%s failed with reason %q", id, ix.Reason)
		}
	}
	if len(lost) > 0 {
		t.Fatalf("%d acknowledged interactions lost in the crash: %v", len(lost), lost[:min(len(lost), 10)])
	}
	t.Logf("states after recovery: %v", states)

	for id := range accepted {
		if !createdSet[id] {
			continue // created by a 201 the client did not read before the crash
		}
		ix := c2.ix(id)
		if ix.AnsweredAt == "" {
			t.Errorf("accepted %s has no answered_at after restart", id)
		}
		if ix.State != "ended" && ix.State != "failed" {
			t.Errorf("accepted %s is %q after restart; want ended or failed", id, ix.State)
		}
		sts := c2.states(id)
		if !slices.Contains(sts, "connected") {
			t.Errorf("accepted %s: events %v lack connected", id, sts)
		}
		if completed[id] && !slices.Contains(sts, "wrap_up") {
			t.Errorf("completed %s: events %v lack wrap_up", id, sts)
		}
	}

	// Nothing is left half-way: no offers, connections or wrap-ups survive a restart
	// (agents' sessions died), and every queued interaction is in the router again.
	for _, st := range []string{"created", "offered", "connected", "wrap_up"} {
		body := decode[struct {
			Interactions []ixBody `json:"interactions"`
		}](t, c2.call("GET", "/api/v1/interactions?limit=1000&state="+st, admin(), "", http.StatusOK))
		if len(body.Interactions) != 0 {
			t.Errorf("%d interactions still %s after recovery, e.g. %+v", len(body.Interactions), st, body.Interactions[0])
		}
	}
	queued := decode[struct {
		Interactions []ixBody `json:"interactions"`
	}](t, c2.call("GET", "/api/v1/interactions?limit=1000&state=queued&queue=sales", admin(), "", http.StatusOK)).Interactions
	if len(queued) == 0 {
		t.Fatalf("no queued interaction after recovery; the load should have left some waiting")
	}
	qs := decode[struct {
		Waiting int `json:"waiting"`
	}](t, c2.call("GET", "/api/v1/queues/sales", admin(), "", http.StatusOK))
	if qs.Waiting != len(queued) {
		t.Errorf("sales queue has %d waiting, the store %d queued", qs.Waiting, len(queued))
	}
	// A recovered interaction reaches an agent who becomes ready.
	inQueue := map[string]bool{}
	for _, ix := range queued {
		inQueue[ix.ID] = true
	}
	c2.loginReady("sales", 0, "hugo")
	var a agentBody
	eventually(t, 5*time.Second, "a recovered interaction offered to hugo", func() bool {
		a = decode[agentBody](t, c2.call("GET", "/api/v1/agents/hugo", agent("hugo"), "", http.StatusOK))
		return len(a.Interactions) == 1 && a.Interactions[0].State == "offered"
	})
	if !inQueue[a.Interactions[0].ID] {
		t.Errorf("hugo was offered %s, which was not queued after recovery", a.Interactions[0].ID)
	}
	c2.call("POST", "/api/v1/interactions/"+a.Interactions[0].ID+"/accept", agent("hugo"), "", http.StatusOK)
}
