package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/pion/rtp"

	"github.com/ccmesh/ccmesh/internal/media"
	"github.com/ccmesh/ccmesh/internal/sdp"
)

// Issue 5 (shared resources): node-1 declares two of node-2's resources —
// its support queue (to hand over calls waiting in sales) and its media
// service (node-1 has no announcement file for sales). A caller at node-1
// hears node-2's announcement, fetched through the mesh; after 1 s in sales
// with no sales agent anywhere, the call is handed over to node-2's support
// queue, where carla answers: node-1's interaction ends handed_over and the
// caller talks to carla through node-1 (media anchored there). Then node-2 is
// A local agent answering first wins over a hand-over ringing at the peer.
// Then node-2 is killed while a hand-over rings there: the attempt ends at
// once, the call keeps its place at node-1 (nothing more is sent to the down
// peer) and a local agent takes it. node-1, restarted alone, still plays the
// peer's announcement from the copy it kept.
func TestQueueHandoverAndMediaFromPeer(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	announcement := toneWAV(4000) // 0.5 s
	wav := filepath.Join(dir, "welcome.wav")
	if err := os.WriteFile(wav, announcement, 0o600); err != nil {
		t.Fatal(err)
	}
	sip2 := freeUDPPort(t)
	section := func(id, seed, more string) string {
		s := "\ncluster:\n  name: e2e-res\n  members: [node-1, node-2]\n  routes_listen: 127.0.0.1:0\n"
		if seed != "" {
			s += "  peers: [nats-route://" + seed + "]\n"
		}
		return s + more
	}
	carla := [2]string{"  - id: carla\n", "  - id: carla\n    home: node-2\n"}
	// node-2: its sales queue has the announcement.
	p2 := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), digest: "[MD5, SHA-256]", drainTimeout: "3s", nodeID: "node-2",
		extra: section("node-2", "", ""), queueExtra: "    sounds: {announcement: " + jsonString(wav) + "}\n",
		replace: [][2]string{carla, {"listen_udp: 127.0.0.1:0", fmt.Sprintf("listen_udp: 127.0.0.1:%d", sip2)}}}))
	m := routesRE.FindStringSubmatch(p2.find("mesh: NATS server up"))
	if m == nil {
		t.Fatalf("node-2 did not log its routes address:\n%s", p2.log())
	}
	// node-1: sales names a file it does not have, and takes node-2's.
	data1 := t.TempDir()
	resources := fmt.Sprintf("  resources:\n"+
		"    - {id: east-support, kind: queue, node: node-2, uri: \"sip:2002@127.0.0.1:%d\"}\n"+
		"    - {id: east-sounds, kind: media, node: node-2}\n", sip2)
	cfg1 := writeConfig(t, configOpts{dataDir: data1, digest: "[MD5, SHA-256]", drainTimeout: "3s", nodeID: "node-1",
		extra: section("node-1", m[1], resources), queueExtra: "    sounds: {announcement: /nonexistent/welcome.wav, from: east-sounds}\n",
		replace: [][2]string{carla, {"  - id: bob\n", "  - id: bob\n    home: node-1\n"},
			{"      - after: 60s        # after a minute", "      - after: 1s\n        to: east-support\n      - after: 60s        # after a minute"}}})
	if code, _, stderr := run(t, "check", "--config", cfg1); code != 0 {
		t.Fatalf("check: %s", stderr)
	}
	p1 := serve(t, cfg1)
	c1, c2 := newClient(t, p1.base), newClient(t, p2.base)
	waitClustered(t, []*proc{p1, p2})
	kept := filepath.Join(data1, "peer-sounds", "east-sounds", "sales", "announcement.wav")
	eventually(t, 10*time.Second, "node-1 keeping node-2's announcement", func() bool {
		got, err := os.ReadFile(kept)
		return err == nil && bytes.Equal(got, announcement)
	})
	clip, err := media.LoadWAV(bytes.NewReader(announcement))
	if err != nil {
		t.Fatal(err)
	}
	first := clip.Frame(0, media.PCMU)
	longPhone(t, p2, "carla", 5, 60*time.Second)
	c2.loginReady("support", 1, "carla")

	// The hand-over: the caller hears the peer's announcement, then carla.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	callerMedia, dlg := goCall(ctx, t, p1.sipUDP, "2001", sdp.PCMU, 0)
	readRTP(t, callerMedia, 3*time.Second, func(p *rtp.Packet) bool { return bytes.Equal(p.Payload, first) })
	if err := dlg.WaitAnswer(ctx, sipgo.AnswerOptions{}); err != nil {
		t.Fatalf("the handed-over call was not answered: %v\nnode-1:\n%s", err, p1.log())
	}
	if err := dlg.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	var here, there ixBody
	eventually(t, 5*time.Second, "node-1's interaction handed over, node-2's connected to carla", func() bool {
		v1, v2 := c1.voice(), c2.voice()
		if len(v1) == 0 || len(v2) == 0 {
			return false
		}
		here, there = v1[0], v2[0]
		return here.State == "handed_over" && there.State == "connected" && there.Agent == "carla" && there.Queue == "support"
	})
	if !strings.Contains(here.Reason, "east-support at node-2") {
		t.Errorf("node-1's interaction reason %q, want the resource named", here.Reason)
	}
	attrs := decode[struct {
		Attributes map[string]string `json:"attributes"`
	}](t, c2.call("GET", "/api/v1/interactions/"+there.ID, admin(), "", 200)).Attributes
	if attrs["handed_over_by"] != "east-support" || !strings.Contains(attrs["from"], "go-caller") {
		t.Errorf("node-2's interaction attributes %v: want handed_over_by east-support and the caller's From", attrs)
	}
	// Media anchored at node-1: the caller's RTP goes to node-1's address in the answer.
	ans, err := sdp.Parse(dlg.InviteResponse.Body())
	if err != nil || ans.Addr.Addr().String() != "127.0.0.1" {
		t.Fatalf("caller's answer %v, %v", ans, err)
	}
	if err := dlg.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "node-2's side of the call ended", func() bool {
		st := c2.ix(there.ID).State
		return st == "wrap_up" || st == "ended"
	})

	// A local agent answering first wins: the peer leg is cancelled.
	c2.call("POST", "/api/v1/agents/carla/state", agent("carla"), `{"state":"not_ready"}`, 200)
	longPhone(t, p1, "bob", 5, 60*time.Second)
	_, dlg2 := goCall(ctx, t, p1.sipUDP, "2001", sdp.PCMU, 0)
	waiting := waitHandedOverWaiting(t, c2, there.ID)
	c1.loginReady("sales", 1, "bob")
	if err := dlg2.WaitAnswer(ctx, sipgo.AnswerOptions{}); err != nil {
		t.Fatalf("bob did not answer: %v", err)
	}
	_ = dlg2.Ack(ctx)
	eventually(t, 5*time.Second, "bob connected at node-1, the peer's copy abandoned", func() bool {
		v1 := c1.voice()
		return len(v1) > 0 && v1[0].State == "connected" && v1[0].Agent == "bob" && c2.ix(waiting).State == "abandoned"
	})
	_ = dlg2.Bye(ctx)
	c1.call("POST", "/api/v1/agents/bob/state", agent("bob"), `{"state":"not_ready"}`, 200)

	// The peer dies while a hand-over rings there: the attempt ends at once,
	// the call keeps its place here, later attempts are refrained from, and a
	// local agent takes it.
	callerMedia3, dlg3 := goCall(ctx, t, p1.sipUDP, "2001", sdp.PCMU, 0)
	waitHandedOverWaiting(t, c2, waiting)
	killed := time.Now()
	if err := p2.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var sent uint64
	eventually(t, 3*time.Second, "node-1 taking node-2 as down", func() bool {
		v := c1.member("node-2")
		sent = v.RequestsSent
		return v.Health == "down"
	})
	eventually(t, 2*time.Second, "the attempt in flight ended", func() bool {
		return strings.Contains(p1.log(), "hand-over failed; the call waits here")
	})
	cutShort := time.Since(killed)
	if v := c1.voice(); len(v) == 0 || v[0].State != "queued" {
		t.Fatalf("the call waiting at node-1 after node-2 died: %+v, want queued", v)
	}
	readRTP(t, callerMedia3, time.Second, func(p *rtp.Packet) bool { return len(p.Payload) == 160 }) // still hearing the node
	eventually(t, 8*time.Second, "the next attempt refrained from", func() bool {
		return strings.Contains(p1.log(), "hand-over refrained from")
	})
	if after := c1.member("node-2"); after.RequestsSent != sent || after.RequestsRefrained == 0 {
		t.Errorf("requests to the down node-2: sent %d after detection, refrained %d", after.RequestsSent-sent, after.RequestsRefrained)
	}
	c1.call("POST", "/api/v1/agents/bob/state", agent("bob"), `{"state":"ready"}`, 200)
	if err := dlg3.WaitAnswer(ctx, sipgo.AnswerOptions{}); err != nil {
		t.Fatalf("the call kept at node-1 was not answered by bob: %v", err)
	}
	_ = dlg3.Ack(ctx)
	_ = dlg3.Bye(ctx)
	t.Logf("hand-over ringing at a peer killed: cut short %v after the kill; call kept and answered locally", cutShort.Round(time.Millisecond))

	// node-1 restarts alone: the peer's announcement plays from the copy it kept.
	p1.signal(syscall.SIGTERM)
	if code := p1.wait(15 * time.Second); code != 0 {
		t.Fatalf("node-1 stopped with %d", code)
	}
	p1 = serve(t, cfg1)
	callerMedia4, dlg4 := goCall(ctx, t, p1.sipUDP, "2001", sdp.PCMU, 0)
	readRTP(t, callerMedia4, 3*time.Second, func(p *rtp.Packet) bool { return bytes.Equal(p.Payload, first) })
	_ = dlg4
}

// waitHandedOverWaiting waits until a call handed over to node c (other than
// the interaction not) waits in its support queue, and returns its id.
func waitHandedOverWaiting(t *testing.T, c *client, not string) string {
	t.Helper()
	var id string
	eventually(t, 5*time.Second, "the hand-over waiting in node-2's support queue", func() bool {
		v := c.voice()
		if len(v) == 0 || v[0].ID == not || v[0].Queue != "support" || v[0].State != "queued" {
			return false
		}
		id = v[0].ID
		return true
	})
	return id
}
