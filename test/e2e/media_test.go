package e2e

import (
	"bytes"
	"context"
	"errors"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/pion/rtp"

	"github.com/ccmesh/ccmesh/internal/sdp"
)

// goPhone is an agent's phone written with sipgo: it registers (digest, whatever
// algorithm the node offers first) and answers every INVITE with its own media.
type goPhone struct {
	media   net.PacketConn
	offered chan sdp.Media // the node's SDP in each INVITE
	byes    chan struct{}
	// dialogs are the calls the phone answered; notifies the bodies of NOTIFYs it got.
	dialogs  chan *sipgo.DialogServerSession
	notifies chan string
	version  uint64 // of the phone's SDP, bumped by each re-INVITE
}

func startGoPhone(t *testing.T, node string, user, pass string) *goPhone {
	t.Helper()
	ph := &goPhone{offered: make(chan sdp.Media, 4), byes: make(chan struct{}, 4), dialogs: make(chan *sipgo.DialogServerSession, 4),
		notifies: make(chan string, 4), version: 1}
	ph.media = listenUDP(t)
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("go-phone"), sipgo.WithUserAgentHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	srv, err := sipgo.NewServer(ua)
	if err != nil {
		t.Fatal(err)
	}
	client, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	sig := listenUDP(t)
	go func() { _ = srv.ServeUDP(sig) }()
	port := sig.LocalAddr().(*net.UDPAddr).Port
	contact := sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: user, Host: "127.0.0.1", Port: port}}
	dsc := sipgo.NewDialogServerCache(client, contact)
	answer := sdp.Description{Addr: ph.media.LocalAddr().(*net.UDPAddr).AddrPort(), SessionID: 9, Version: 1,
		Codecs: []sdp.Codec{sdp.PCMU}, TelephoneEvent: 101, Direction: sdp.SendRecv}.Marshal()
	srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		m, err := sdp.Parse(req.Body())
		if err != nil {
			reply := sip.NewResponseFromRequest(req, 488, "Not Acceptable Here", nil)
			_ = tx.Respond(reply)
			return
		}
		ph.offered <- m
		dlg, err := dsc.ReadInvite(req, tx)
		if err != nil {
			return
		}
		if dlg.Respond(200, "OK", answer, sip.NewHeader("Content-Type", "application/sdp")) == nil {
			ph.dialogs <- dlg
		}
		<-tx.Done()
	})
	srv.OnNotify(func(req *sip.Request, tx sip.ServerTransaction) {
		_ = tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
		ph.notifies <- string(req.Body())
	})
	srv.OnAck(func(req *sip.Request, tx sip.ServerTransaction) { _ = dsc.ReadAck(req, tx) })
	srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		if err := dsc.ReadBye(req, tx); err == nil {
			ph.byes <- struct{}{}
		}
	})
	// REGISTER with digest.
	var uri sip.Uri
	if err := sip.ParseUri("sip:"+node, &uri); err != nil {
		t.Fatal(err)
	}
	req := sip.NewRequest(sip.REGISTER, uri)
	req.AppendHeader(sip.NewHeader("From", "<sip:"+user+"@127.0.0.1>;tag=reg1"))
	req.AppendHeader(sip.NewHeader("To", "<sip:"+user+"@127.0.0.1>"))
	req.AppendHeader(&contact)
	req.AppendHeader(sip.NewHeader("Expires", "300"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := client.Do(ctx, req)
	if err == nil && res.StatusCode == 401 {
		res, err = client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: user, Password: pass})
	}
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("go phone REGISTER: %v %v", res, err)
	}
	return ph
}

func listenUDP(t *testing.T) net.PacketConn {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readRTP(t *testing.T, c net.PacketConn, within time.Duration, want func(*rtp.Packet) bool) *rtp.Packet {
	t.Helper()
	deadline := time.Now().Add(within)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		_ = c.SetReadDeadline(deadline)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			break
		}
		var p rtp.Packet
		if p.Unmarshal(buf[:n]) == nil && want(&p) {
			return &p
		}
	}
	t.Fatalf("no matching RTP packet within %s", within)
	return nil
}

func writeRTP(t *testing.T, c net.PacketConn, to net.Addr, pt uint8, seq uint16, payload []byte) {
	t.Helper()
	b, _ := (&rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: pt, SequenceNumber: seq, Timestamp: uint32(seq) * 160, SSRC: 0x5151}, Payload: payload}).Marshal()
	if _, err := c.WriteTo(b, to); err != nil {
		t.Fatal(err)
	}
}

// Media anchored at the node: while queued the caller hears the node's music;
// once the agent answers, audio flows both ways through the node with the
// caller's RTP identity unchanged, and DTMF (RFC 4733) is relayed.
func TestMediaAnchoredAtTheNode(t *testing.T) {
	t.Parallel()
	p := serve(t, writeConfig(t, configOpts{dataDir: t.TempDir()})) // SHA-256 first: sipgo's digest handles it
	c := newClient(t, p.base)
	phone := startGoPhone(t, p.sipUDP, "ann", "ann-pass")

	// The caller.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	callerMedia, dlg := goCall(ctx, t, p.sipUDP, "2001", sdp.PCMU, 101)
	early := make(chan sdp.Media, 1)
	answered := make(chan error, 1)
	go func() {
		answered <- dlg.WaitAnswer(ctx, sipgo.AnswerOptions{OnResponse: func(r *sip.Response) error {
			if r.StatusCode == 183 {
				if m, err := sdp.Parse(r.Body()); err == nil {
					early <- m
				}
			}
			return nil
		}})
	}()
	var nodeForCaller sdp.Media
	select {
	case nodeForCaller = <-early:
	case <-time.After(5 * time.Second):
		t.Fatal("no 183 with SDP")
	}
	// 1. Music while queued: non-silent PCMU from the node's caller-facing address.
	music := readRTP(t, callerMedia, 3*time.Second, func(p *rtp.Packet) bool {
		return p.PayloadType == 0 && len(p.Payload) == 160 && bytes.Count(p.Payload, []byte{0xFF}) < 100
	})
	// 2. Ann gets ready: the node rings the go phone, which answers.
	c.loginReady("sales", 1, "ann")
	var nodeForAgent sdp.Media
	select {
	case nodeForAgent = <-phone.offered:
	case <-time.After(5 * time.Second):
		t.Fatal("the agent's phone was not rung")
	}
	if err := <-answered; err != nil {
		t.Fatalf("caller not answered: %v", err)
	}
	if err := dlg.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	final, err := sdp.Parse(dlg.InviteResponse.Body())
	if err != nil || final.Addr != nodeForCaller.Addr {
		t.Fatalf("the caller's media address changed at answer: 183 %v, 200 %v (%v)", nodeForCaller.Addr, final.Addr, err)
	}
	// 3. Agent → caller, through the node, as the same RTP stream the music was.
	toAgentNode := net.UDPAddrFromAddrPort(nodeForAgent.Addr)
	toCallerNode := net.UDPAddrFromAddrPort(nodeForCaller.Addr)
	agentVoice := bytes.Repeat([]byte{0x42}, 160)
	deadline := time.Now().Add(5 * time.Second)
	var got *rtp.Packet
	for i := 0; got == nil && time.Now().Before(deadline); i++ {
		writeRTP(t, phone.media, toAgentNode, 0, uint16(100+i), agentVoice)
		got = tryRTP(callerMedia, 100*time.Millisecond, func(p *rtp.Packet) bool { return bytes.Equal(p.Payload, agentVoice) })
	}
	if got == nil {
		t.Fatal("the agent's audio never reached the caller")
	}
	if got.SSRC != music.SSRC {
		t.Fatalf("caller's stream identity changed: music SSRC %x, agent audio SSRC %x", music.SSRC, got.SSRC)
	}
	// 4. Caller → agent.
	callerVoice := bytes.Repeat([]byte{0x24}, 160)
	writeRTP(t, callerMedia, toCallerNode, 0, 1, callerVoice)
	readRTP(t, phone.media, 2*time.Second, func(p *rtp.Packet) bool { return bytes.Equal(p.Payload, callerVoice) })
	// 5. DTMF: an RFC 4733 event for digit 5 from the caller reaches the agent.
	writeRTP(t, callerMedia, toCallerNode, 101, 2, []byte{5, 0x0a, 0x00, 0xa0})
	dtmf := readRTP(t, phone.media, 2*time.Second, func(p *rtp.Packet) bool { return p.PayloadType == nodeForAgent.TelephoneEvent })
	if dtmf.Payload[0] != 5 {
		t.Fatalf("DTMF event %d, want 5", dtmf.Payload[0])
	}
	// 6. The caller hangs up: the agent's leg is hung up too.
	hangUp(ctx, t, dlg, phone)
	eventually(t, 5*time.Second, "the call in wrap-up", func() bool {
		list := c.voice()
		return len(list) == 1 && strings.Contains("wrap_up ended", list[0].State)
	})
}

func tryRTP(c net.PacketConn, within time.Duration, want func(*rtp.Packet) bool) *rtp.Packet {
	deadline := time.Now().Add(within)
	buf := make([]byte, 1500)
	for {
		_ = c.SetReadDeadline(deadline)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return nil
		}
		var p rtp.Packet
		if p.Unmarshal(buf[:n]) == nil && want(&p) {
			return &p
		}
	}
}

// toneWAV returns n samples of a 440 Hz tone as an 8 kHz 16-bit mono WAV.
func toneWAV(n int) []byte {
	b := silentWAV(n)
	for i := 0; i < n; i++ {
		v := int16(8000 * math.Sin(2*math.Pi*440*float64(i)/8000))
		b[44+2*i], b[45+2*i] = byte(v), byte(uint16(v)>>8)
	}
	return b
}

// A queue closed today (business hours) plays its closed announcement as early
// media, then answers 480; ccmesh check accepts the WAV and the node loads it.
func TestClosedQueueAnnouncementThen480(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	closedWAV := filepath.Join(dir, "closed.wav")
	if err := os.WriteFile(closedWAV, toneWAV(8000), 0o600); err != nil { // 1 s
		t.Fatal(err)
	}
	path := writeConfig(t, configOpts{dataDir: t.TempDir()})
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	today := time.Now().UTC().Format("2006-01-02")
	extra := "  - id: support\n" +
		"    sounds: {closed: " + jsonString(closedWAV) + "}\n" +
		"    business_hours: {timezone: UTC, open: [{days: [mon, tue, wed, thu, fri, sat, sun], from: \"00:00\", to: \"24:00\"}], closed_dates: [\"" + today + "\"]}\n"
	cfg := strings.Replace(string(src), "  - id: support\n", extra, 1)
	if cfg == string(src) {
		t.Fatal("examples/single-node.yaml changed; update this test")
	}
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run(t, "check", "--config", path); code != 0 {
		t.Fatalf("check: %s", stderr)
	}
	p := serve(t, path)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	callerMedia, dlg := goCall(ctx, t, p.sipUDP, "2002", sdp.PCMA, 0)
	final := make(chan error, 1)
	go func() { final <- dlg.WaitAnswer(ctx, sipgo.AnswerOptions{}) }()
	// The announcement: non-silent PCMA while the call is in early media.
	readRTP(t, callerMedia, 3*time.Second, func(p *rtp.Packet) bool {
		return p.PayloadType == 8 && len(p.Payload) == 160 && bytes.Count(p.Payload, []byte{0xD5}) < 100
	})
	select {
	case err := <-final:
		var dr *sipgo.ErrDialogResponse
		if !errors.As(err, &dr) || dr.Res.StatusCode != 480 {
			t.Fatalf("final answer: %v, want 480", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no final answer after the announcement")
	}
}

// goCall places a call from a sipgo caller to number at node, offering codec (and
// telephone-events as te when non-zero) on a fresh media socket. It returns that
// socket and the dialog, INVITE sent; the test waits for the answer itself.
func goCall(ctx context.Context, t *testing.T, node, number string, codec sdp.Codec, te uint8) (net.PacketConn, *sipgo.DialogClientSession) {
	t.Helper()
	media := listenUDP(t)
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("go-caller"), sipgo.WithUserAgentHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	client, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	dcc := sipgo.NewDialogClientCache(client, sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "customer", Host: "127.0.0.1"}})
	offer := sdp.Description{Addr: media.LocalAddr().(*net.UDPAddr).AddrPort(), SessionID: 5, Version: 1,
		Codecs: []sdp.Codec{codec}, TelephoneEvent: te, Direction: sdp.SendRecv}.Marshal()
	var uri sip.Uri
	if err := sip.ParseUri("sip:"+number+"@"+node, &uri); err != nil {
		t.Fatal(err)
	}
	dlg, err := dcc.Invite(ctx, uri, offer, sip.NewHeader("Content-Type", "application/sdp"))
	if err != nil {
		t.Fatal(err)
	}
	return media, dlg
}
