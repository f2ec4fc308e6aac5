package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/pion/rtp"

	"github.com/ccmesh/ccmesh/internal/sdp"
)

// reinvite sends a re-INVITE in dlg with the phone's media in direction dir,
// ACKs the 200 and returns the node's answer.
func (ph *goPhone) reinvite(ctx context.Context, t *testing.T, dlg *sipgo.DialogServerSession, dir sdp.Direction) sdp.Media {
	t.Helper()
	ph.version++
	body := sdp.Description{Addr: ph.media.LocalAddr().(*net.UDPAddr).AddrPort(), SessionID: 9, Version: ph.version,
		Codecs: []sdp.Codec{sdp.PCMU}, TelephoneEvent: 101, Direction: dir}.Marshal()
	node := dlg.InviteRequest.Contact().Address
	req := sip.NewRequest(sip.INVITE, node)
	req.SetBody(body)
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	res, err := dlg.Do(ctx, req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("re-INVITE %s: %v %v", dir, res, err)
	}
	if err := dlg.WriteRequest(sip.NewRequest(sip.ACK, node)); err != nil {
		t.Fatal(err)
	}
	ans, err := sdp.Parse(res.Body())
	if err != nil {
		t.Fatalf("answer to re-INVITE: %v", err)
	}
	return ans
}

// refer asks the node to transfer dlg's call to target (blind) and returns the
// final response's status.
func refer(ctx context.Context, t *testing.T, dlg *sipgo.DialogServerSession, target string) int {
	t.Helper()
	req := sip.NewRequest(sip.REFER, dlg.InviteRequest.Contact().Address)
	req.AppendHeader(sip.NewHeader("Refer-To", "<"+target+">"))
	res, err := dlg.Do(ctx, req)
	if err != nil {
		t.Fatalf("REFER: %v", err)
	}
	return res.StatusCode
}

// answeredCall places a call to number, has phone's agent answer it and returns
// the caller's media socket, the node's address for it, the caller's dialog and
// the phone's.
type liveCall struct {
	callerMedia  net.PacketConn
	toCallerNode *net.UDPAddr
	caller       *sipgo.DialogClientSession
}

func waitAnswered(ctx context.Context, t *testing.T, node, number string) liveCall {
	t.Helper()
	media, dlg := goCall(ctx, t, node, number, sdp.PCMU, 101)
	if err := dlg.WaitAnswer(ctx, sipgo.AnswerOptions{}); err != nil {
		t.Fatalf("caller not answered: %v", err)
	}
	if err := dlg.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := sdp.Parse(dlg.InviteResponse.Body())
	if err != nil {
		t.Fatal(err)
	}
	return liveCall{callerMedia: media, toCallerNode: net.UDPAddrFromAddrPort(m.Addr), caller: dlg}
}

func answeredBy(t *testing.T, ph *goPhone) (sdp.Media, *sipgo.DialogServerSession) {
	t.Helper()
	var offered sdp.Media
	select {
	case offered = <-ph.offered:
	case <-time.After(10 * time.Second):
		t.Fatal("the phone was not rung")
	}
	select {
	case d := <-ph.dialogs:
		return offered, d
	case <-time.After(5 * time.Second):
		t.Fatal("the phone did not answer")
	}
	return sdp.Media{}, nil
}

// speak sends the phone's voice (payload b) to the node until the caller hears
// it, and returns the packet the caller got.
func speak(t *testing.T, ph *goPhone, toNode sdp.Media, call liveCall, b byte) *rtp.Packet {
	t.Helper()
	voice := bytes.Repeat([]byte{b}, 160)
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		writeRTP(t, ph.media, net.UDPAddrFromAddrPort(toNode.Addr), 0, uint16(1000+i), voice)
		if got := tryRTP(call.callerMedia, 60*time.Millisecond, func(p *rtp.Packet) bool { return bytes.Equal(p.Payload, voice) }); got != nil {
			return got
		}
	}
	t.Fatalf("the agent's audio (%#x) never reached the caller", b)
	return nil
}

// isMusic tells the node's generated music from silence and from the phones' test voices.
func isMusic(p *rtp.Packet) bool {
	return p.PayloadType == 0 && len(p.Payload) == 160 && bytes.Count(p.Payload, []byte{0xFF}) < 100 &&
		bytes.Count(p.Payload, p.Payload[:1]) < 160
}

// Hold and resume by the agent's phone (re-INVITE sendonly, then sendrecv): on
// hold the caller hears music on hold in the same RTP stream (one SSRC,
// sequence numbers rising) and none of the agent's audio; after resume the
// agent's audio reaches the caller again. The caller is never re-INVITEd.
func TestAgentHoldPlaysMusicThenResumes(t *testing.T) {
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir()}))
	c := newClient(t, p.base)
	phone := startGoPhone(t, p.sipUDP, "ann", "ann-pass")
	c.loginReady("sales", 1, "ann")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := waitAnswered(ctx, t, p.sipUDP, "2001")
	toAgentNode, dlg := answeredBy(t, phone)
	talk := speak(t, phone, toAgentNode, call, 0x42)

	// Hold: the node answers recvonly and plays music to the caller.
	if ans := phone.reinvite(ctx, t, dlg, sdp.SendOnly); ans.Direction != sdp.RecvOnly {
		t.Fatalf("answer to hold: direction %q, want recvonly", ans.Direction)
	}
	writeRTP(t, phone.media, net.UDPAddrFromAddrPort(toAgentNode.Addr), 0, 2000, bytes.Repeat([]byte{0x42}, 160))
	music := readRTP(t, call.callerMedia, 3*time.Second, isMusic)
	if music.SSRC != talk.SSRC || int16(music.SequenceNumber-talk.SequenceNumber) <= 0 {
		t.Fatalf("on hold: music ssrc %x seq %d after talk ssrc %x seq %d", music.SSRC, music.SequenceNumber, talk.SSRC, talk.SequenceNumber)
	}
	for i := 0; i < 10; i++ { // the agent keeps sending (sendonly): the caller must not hear it
		writeRTP(t, phone.media, net.UDPAddrFromAddrPort(toAgentNode.Addr), 0, uint16(2001+i), bytes.Repeat([]byte{0x42}, 160))
		if got := tryRTP(call.callerMedia, 30*time.Millisecond, func(p *rtp.Packet) bool { return p.Payload[0] == 0x42 }); got != nil {
			t.Fatal("the caller heard the agent while on hold")
		}
	}
	// Resume.
	if ans := phone.reinvite(ctx, t, dlg, sdp.SendRecv); ans.Direction != sdp.SendRecv {
		t.Fatalf("answer to resume: direction %q", ans.Direction)
	}
	back := speak(t, phone, toAgentNode, call, 0x43)
	if back.SSRC != talk.SSRC || int16(back.SequenceNumber-music.SequenceNumber) <= 0 {
		t.Fatalf("after resume: ssrc %x seq %d, music ssrc %x seq %d", back.SSRC, back.SequenceNumber, music.SSRC, music.SequenceNumber)
	}
	m := string(c.call("GET", "/metrics", nil, "", 200))
	for _, want := range []string{`ccmesh_sip_calls_total{event="hold"} 1`, `ccmesh_sip_calls_total{event="bridged"} 1`, "ccmesh_sip_calls_active 1"} {
		if !strings.Contains(m, want) {
			t.Fatalf("metrics lack %s", want)
		}
	}
	hangUp(ctx, t, call.caller, phone)
}

// Blind transfers by REFER: ann sends the caller to the support queue (NOTIFY
// 200, then her leg ends and she wraps up; the caller hears music meanwhile in
// the same RTP stream), carla (support) takes it, then transfers it to dev's DN
// (a direct offer); dev's audio reaches the caller. A transfer to an unknown
// target is refused and the call stays. The caller's dialog never changes.
func TestBlindTransferToQueueThenToAgentDN(t *testing.T) {
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), wrapUp: "10s"}))
	c := newClient(t, p.base)
	ann := startGoPhone(t, p.sipUDP, "ann", "ann-pass")
	carla := startGoPhone(t, p.sipUDP, "carla", "carla-pass")
	dev := startGoPhone(t, p.sipUDP, "dev", "dev-pass")
	c.loginReady("sales", 1, "ann")
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	call := waitAnswered(ctx, t, p.sipUDP, "2001")
	annMedia, annDlg := answeredBy(t, ann)
	first := speak(t, ann, annMedia, call, 0x42)

	if code := refer(ctx, t, annDlg, "sip:nobody@"+p.sipUDP); code != 404 {
		t.Fatalf("REFER to an unknown target: %d, want 404", code)
	}
	speak(t, ann, annMedia, call, 0x44) // still talking

	if code := refer(ctx, t, annDlg, "sip:2002@"+p.sipUDP); code != 202 {
		t.Fatalf("REFER to the support queue: %d, want 202", code)
	}
	select {
	case body := <-ann.notifies:
		if !strings.HasPrefix(body, "SIP/2.0 200") {
			t.Fatalf("NOTIFY body %q", body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no NOTIFY for the transfer")
	}
	select {
	case <-ann.byes:
	case <-time.After(5 * time.Second):
		t.Fatal("ann's leg was not ended after the transfer")
	}
	music := readRTP(t, call.callerMedia, 3*time.Second, isMusic)
	if music.SSRC != first.SSRC {
		t.Fatalf("music after transfer: ssrc %x, want %x", music.SSRC, first.SSRC)
	}
	eventually(t, 5*time.Second, "ann in wrap-up", func() bool {
		return decode[agentBody](t, c.call("GET", "/api/v1/agents/ann", supervisor(), "", 200)).State.State == "wrap_up"
	})

	c.loginReady("support", 1, "carla")
	carlaMedia, carlaDlg := answeredBy(t, carla)
	speak(t, carla, carlaMedia, call, 0x45)

	c.loginReady("support", 1, "dev")
	if code := refer(ctx, t, carlaDlg, "sip:1004@"+p.sipUDP); code != 202 {
		t.Fatalf("REFER to dev's DN: %d, want 202", code)
	}
	devMedia, _ := answeredBy(t, dev)
	last := speak(t, dev, devMedia, call, 0x46)
	if last.SSRC != first.SSRC {
		t.Fatalf("caller's stream changed: ssrc %x, want %x", last.SSRC, first.SSRC)
	}
	ix := c.voice()
	if len(ix) != 1 || ix[0].Agent != "dev" || ix[0].State != "connected" || ix[0].Queue != "support" {
		t.Fatalf("after two transfers: %+v", ix)
	}
	states := strings.Join(c.states(ix[0].ID), ",")
	if want := "created,queued,offered,connected,queued,offered,connected,offered,connected"; states != want {
		t.Fatalf("lifecycle %s, want %s", states, want)
	}
	hangUp(ctx, t, call.caller, dev)
}

// The same branches with sipp as the agents' phones: a sipp phone holds and
// resumes (the node answers recvonly, then sendrecv), and a sipp phone
// transfers blind to another agent's DN, whose sipp phone takes the call; the
// sipp caller (which fails on any re-INVITE) stays on the line throughout.
func TestSippAgentHoldsAndTransfers(t *testing.T) {
	t.Run("hold", func(t *testing.T) {
		t.Parallel()
		p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), digest: "[MD5, SHA-256]"}))
		c := newClient(t, p.base)
		uas := annsPhone(t, p, c, "-sf", mustAbs(t, "sipp/agent_hold.xml"))
		if code, out := sipp(t, "caller_talk.xml", p.sipUDP, "u1", nil, 1, "-s", "2001", "-d", "2500"); code != 0 {
			t.Fatalf("caller: exit %d\n%s", code, out)
		}
		if res := <-uas; !strings.HasPrefix(res, "exit 0") {
			t.Fatalf("agent phone: %s", res)
		}
		if !strings.Contains(p.log(), "agent put the call on hold") || !strings.Contains(p.log(), "agent resumed the call") {
			t.Fatalf("no hold and resume in the node's log:\n%s", p.log())
		}
	})
	t.Run("transfer", func(t *testing.T) {
		t.Parallel()
		p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), digest: "[MD5, SHA-256]"}))
		c := newClient(t, p.base)
		ann := annsPhone(t, p, c, "-sf", mustAbs(t, "sipp/agent_transfer.xml"), "-key", "target", "1002")
		bob := sippPhone(t, p, "bob", "-sn", "uas")
		caller := goSipp(t, "caller_talk.xml", p.sipUDP, "u1", nil, 1, "-s", "2001", "-d", "4000")
		// Bob gets ready once ann has the call (both can take sales calls).
		var id string
		eventually(t, 10*time.Second, "ann connected", func() bool {
			list := c.voice()
			if len(list) == 1 && list[0].State == "connected" && list[0].Agent == "ann" {
				id = list[0].ID
				return true
			}
			return false
		})
		c.loginReady("sales", 1, "bob")
		for who, ch := range map[string]<-chan string{"ann's phone": ann, "caller": caller, "bob's phone": bob} {
			select {
			case res := <-ch:
				if !strings.HasPrefix(res, "exit 0") {
					t.Fatalf("%s: %s", who, res)
				}
			case <-time.After(25 * time.Second):
				t.Fatalf("%s did not finish", who)
			}
		}
		if got := c.ix(id); got.Agent != "bob" || got.State != "wrap_up" && got.State != "ended" {
			t.Fatalf("after the transfer: %+v", got)
		}
		if states := strings.Join(c.states(id), ","); !strings.HasPrefix(states, "created,queued,offered,connected,offered,connected,wrap_up") {
			t.Fatalf("lifecycle %s", states)
		}
	})
}

// hangUp sends the caller's BYE and waits for the node to BYE the agent's phone.
func hangUp(ctx context.Context, t *testing.T, caller *sipgo.DialogClientSession, phone *goPhone) {
	t.Helper()
	if err := caller.Bye(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-phone.byes:
	case <-time.After(5 * time.Second):
		t.Fatal("the agent's phone got no BYE")
	}
}

// rawSIP sends msg (CRLF line ends added) over UDP to node and returns the status
// lines of the responses received within wait, up to the first final one.
func rawSIP(t *testing.T, conn net.PacketConn, node string, msg string, wait time.Duration) []string {
	t.Helper()
	addr, err := net.ResolveUDPAddr("udp", node)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteTo([]byte(strings.ReplaceAll(msg, "\n", "\r\n")), addr); err != nil {
		t.Fatal(err)
	}
	var got []string
	buf := make([]byte, 4096)
	deadline := time.Now().Add(wait)
	for {
		_ = conn.SetReadDeadline(deadline)
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			return got
		}
		line := strings.SplitN(string(buf[:n]), "\r\n", 2)[0]
		got = append(got, line)
		if len(line) > 8 && line[8] == ' ' && line[9] >= '2' {
			return got // final
		}
	}
}

func rawInvite(local, node, user, branch, callID string) string {
	body := "v=0\no=x 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
	return "INVITE sip:" + user + "@" + node + " SIP/2.0\n" +
		"Via: SIP/2.0/UDP " + local + ";branch=" + branch + "\n" +
		"From: <sip:customer@127.0.0.1>;tag=raw1\nTo: <sip:" + user + "@" + node + ">\n" +
		"Call-ID: " + callID + "\nCSeq: 1 INVITE\nContact: <sip:customer@" + local + ">\nMax-Forwards: 70\n" +
		"Content-Type: application/sdp\nContent-Length: " + fmt.Sprint(len(strings.ReplaceAll(body, "\n", "\r\n"))) + "\n\n" + body
}

// Direct calls to an agent's DN and protocol hygiene: a call to a logged-out
// agent's DN gets 480, to a ready agent's DN it rings that agent's phone with no
// queue; in-dialog requests for unknown dialogs get 481; the same INVITE
// arriving twice by different paths (same From tag, Call-ID and CSeq, another
// branch) gets 482.
func TestDirectCallsAndInDialogHygiene(t *testing.T) {
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir()}))
	c := newClient(t, p.base)
	dev := startGoPhone(t, p.sipUDP, "dev", "dev-pass")
	raw := listenUDP(t)
	local := raw.LocalAddr().String()

	if got := rawSIP(t, raw, p.sipUDP, rawInvite(local, p.sipUDP, "1004", "z9hG4bK-a", "direct-1@test"), time.Second); !contains(got, "SIP/2.0 480") {
		t.Fatalf("INVITE to a logged-out agent's DN: %v, want 480", got)
	}
	c.call("POST", "/api/v1/agents/dev/login", agent("dev"), "", 200)
	c.call("POST", "/api/v1/agents/dev/state", agent("dev"), `{"state":"ready"}`, 200)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call := waitAnswered(ctx, t, p.sipUDP, "1004")
	devMedia, _ := answeredBy(t, dev)
	speak(t, dev, devMedia, call, 0x47)
	list := c.voice()
	if len(list) != 1 || list[0].Agent != "dev" || list[0].Queue != "" || list[0].State != "connected" {
		t.Fatalf("direct call: %+v", list)
	}
	// Dev is busy now: a second direct call is refused busy.
	if got := rawSIP(t, raw, p.sipUDP, rawInvite(local, p.sipUDP, "1004", "z9hG4bK-b", "direct-2@test"), time.Second); !contains(got, "SIP/2.0 486") {
		t.Fatalf("INVITE to a busy agent's DN: %v, want 486", got)
	}
	hangUp(ctx, t, call.caller, dev)

	for _, m := range []string{"BYE", "INVITE", "REFER"} {
		msg := m + " sip:ccmesh@" + p.sipUDP + " SIP/2.0\nVia: SIP/2.0/UDP " + local + ";branch=z9hG4bK-" + m + "\n" +
			"From: <sip:x@127.0.0.1>;tag=aa\nTo: <sip:ccmesh@127.0.0.1>;tag=nosuchdialog\nCall-ID: none@test\nCSeq: 5 " + m + "\n" +
			"Refer-To: <sip:2001@127.0.0.1>\nContact: <sip:x@" + local + ">\nMax-Forwards: 70\nContent-Length: 0\n\n"
		if got := rawSIP(t, raw, p.sipUDP, msg, time.Second); !contains(got, "SIP/2.0 481") {
			t.Fatalf("%s outside any dialog: %v, want 481", m, got)
		}
	}

	// Merged request: nobody is ready in sales, so the first INVITE waits (183).
	first := rawSIP(t, raw, p.sipUDP, rawInvite(local, p.sipUDP, "2001", "z9hG4bK-m1", "merged@test"), 500*time.Millisecond)
	if !contains(first, "SIP/2.0 183") {
		t.Fatalf("first INVITE: %v, want 183", first)
	}
	if got := rawSIP(t, raw, p.sipUDP, rawInvite(local, p.sipUDP, "2001", "z9hG4bK-m2", "merged@test"), time.Second); !contains(got, "SIP/2.0 482") {
		t.Fatalf("merged INVITE: %v, want 482", got)
	}
}

func contains(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// A bridged call whose media stops both ways for sip.rtp_timeout is ended by the
// node (BYE to the agent's phone) and the reason is in the interaction's history.
func TestCallEndedWhenMediaStops(t *testing.T) {
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), rtpTimeout: "5s"}))
	c := newClient(t, p.base)
	phone := startGoPhone(t, p.sipUDP, "ann", "ann-pass")
	c.loginReady("sales", 1, "ann")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := waitAnswered(ctx, t, p.sipUDP, "2001")
	toAgent, _ := answeredBy(t, phone)
	speak(t, phone, toAgent, call, 0x42) // media flows, then nobody sends
	start := time.Now()
	select {
	case <-phone.byes:
	case <-time.After(12 * time.Second):
		t.Fatal("the call was not ended after the media stopped")
	}
	if d := time.Since(start); d < 4*time.Second {
		t.Fatalf("ended %s after the media stopped, before the 5 s timeout", d)
	}
	list := c.voice()
	if len(list) != 1 {
		t.Fatalf("interactions: %+v", list)
	}
	if body := string(c.call("GET", "/api/v1/interactions/"+list[0].ID+"/events", admin(), "", 200)); !strings.Contains(body, "media timeout") {
		t.Fatalf("no media timeout in the history:\n%s", body)
	}
}

// The caller hangs up while the agent's phone rings (sipp on both sides): the
// node CANCELs the ring, the interaction ends abandoned with its wait recorded,
// and the agent's reservation is released without a missed-offer penalty.
func TestCallerAbandonsWhileAgentPhoneRings(t *testing.T) {
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), digest: "[MD5, SHA-256]"}))
	c := newClient(t, p.base)
	uas := annsPhone(t, p, c, "-sf", mustAbs(t, "sipp/agent_noanswer.xml"))
	if code, out := sipp(t, "caller_cancel.xml", p.sipUDP, "u1", nil, 1, "-s", "2001", "-d", "1500"); code != 0 {
		t.Fatalf("caller: exit %d\n%s", code, out)
	}
	select {
	case res := <-uas:
		if !strings.HasPrefix(res, "exit 0") {
			t.Fatalf("ann's phone (expects the node's CANCEL): %s", res)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ann's phone was not cancelled")
	}
	var list []ixBody
	eventually(t, 2*time.Second, "the call abandoned", func() bool {
		list = c.voice()
		return len(list) == 1 && list[0].State == "abandoned"
	})
	if states := strings.Join(c.states(list[0].ID), ","); states != "created,queued,offered,abandoned" {
		t.Fatalf("lifecycle %s", states)
	}
	if body := string(c.call("GET", "/api/v1/interactions/"+list[0].ID+"/events", admin(), "", 200)); !strings.Contains(body, `"outcome": "released"`) {
		t.Fatalf("the lease was not released:\n%s", body)
	}
	if st := decode[agentBody](t, c.call("GET", "/api/v1/agents/ann", agent("ann"), "", 200)).State; st.State != "ready" {
		t.Fatalf("ann after the caller hung up during the ring: %+v (no penalty expected)", st)
	}
}

// An agent who is ready but has no phone registered is not offered calls (no
// missed-offer penalty, no ring into the void): the call waits; once her phone
// registers, the call is offered to it and answered.
func TestReadyAgentWithoutPhoneGetsTheCallOncePhoneRegisters(t *testing.T) {
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir(), digest: "[MD5, SHA-256]"}))
	c := newClient(t, p.base)
	c.loginReady("sales", 1, "ann") // no phone yet
	caller := goSipp(t, "caller.xml", p.sipUDP, "u1", nil, 1, "-s", "2001")
	var id string
	eventually(t, 5*time.Second, "the call queued", func() bool {
		list := c.voice()
		if len(list) == 1 && list[0].State == "queued" {
			id = list[0].ID
			return true
		}
		return false
	})
	time.Sleep(300 * time.Millisecond)
	if got := c.ix(id); got.State != "queued" {
		t.Fatalf("the call left the queue without a phone to ring: %+v", got)
	}
	if st := decode[agentBody](t, c.call("GET", "/api/v1/agents/ann", agent("ann"), "", 200)).State; st.State != "ready" {
		t.Fatalf("ann without a phone: %+v (no missed offer expected)", st)
	}
	if body := string(c.call("GET", "/api/v1/interactions/"+id+"/decisions", admin(), "", 200)); !strings.Contains(body, "denied:no_device") {
		t.Fatalf("no no_device denial in the decisions:\n%s", body)
	}
	uas := sippPhone(t, p, "ann", "-sn", "uas")
	for who, ch := range map[string]<-chan string{"caller": caller, "ann's phone": uas} {
		select {
		case res := <-ch:
			if !strings.HasPrefix(res, "exit 0") {
				t.Fatalf("%s: %s", who, res)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s did not finish", who)
		}
	}
}
