package media

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/rtp"
)

func udp(t *testing.T) net.PacketConn {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sendRTP(t *testing.T, from net.PacketConn, to net.Addr, pt uint8, ssrc uint32, seq uint16, ts uint32, payload []byte) {
	t.Helper()
	b, err := (&rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: pt, SSRC: ssrc, SequenceNumber: seq, Timestamp: ts}, Payload: payload}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := from.WriteTo(b, to); err != nil {
		t.Fatal(err)
	}
}

func recvRTP(t *testing.T, c net.PacketConn) (*rtp.Packet, net.Addr) {
	t.Helper()
	buf := make([]byte, 1500)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, src, err := c.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no packet: %v", err)
	}
	var p rtp.Packet
	if err := p.Unmarshal(buf[:n]); err != nil {
		t.Fatal(err)
	}
	return &p, src
}

func noPacket(t *testing.T, c net.PacketConn) {
	t.Helper()
	buf := make([]byte, 1500)
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _, err := c.ReadFrom(buf); err == nil {
		t.Fatalf("unexpected packet of %d bytes", n)
	}
}

type relayRig struct {
	nodeCaller, nodeAgent net.PacketConn // the node's two sockets
	caller, agent         net.PacketConn // the parties
	relay                 *Relay
	cancel                context.CancelFunc
	done                  chan error
}

func newRelayRig(t *testing.T, cont *Continuation, timeout time.Duration, onTimeout func()) *relayRig {
	g := &relayRig{nodeCaller: udp(t), nodeAgent: udp(t), caller: udp(t), agent: udp(t)}
	var err error
	g.relay, err = NewRelay(RelayParams{
		Caller:   Leg{Conn: g.nodeCaller, Peer: g.caller.LocalAddr(), TelephoneEvent: 101},
		Agent:    Leg{Conn: g.nodeAgent, Peer: g.agent.LocalAddr(), TelephoneEvent: 96},
		ToCaller: cont, Timeout: timeout, OnTimeout: onTimeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel, g.done = cancel, make(chan error, 1)
	go func() { g.done <- g.relay.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-g.done; err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	return g
}

func TestRelayBothWaysWithContinuationAndDTMF(t *testing.T) {
	g := newRelayRig(t, &Continuation{SSRC: 0xCAFE, Seq: 1000, Timestamp: 50000}, 0, nil)
	// Caller → agent: as is.
	sendRTP(t, g.caller, g.nodeCaller.LocalAddr(), 0, 1, 7, 700, []byte{1, 2, 3})
	p, src := recvRTP(t, g.agent)
	if p.SSRC != 1 || p.SequenceNumber != 7 || string(p.Payload) != "\x01\x02\x03" || src.String() != g.nodeAgent.LocalAddr().String() {
		t.Fatalf("to agent: %+v from %s", p.Header, src)
	}
	// Agent → caller: continues the caller's stream identity.
	for i := 0; i < 3; i++ {
		sendRTP(t, g.agent, g.nodeAgent.LocalAddr(), 0, 0xA6E, uint16(90+i), uint32(9000+160*i), []byte{9})
		p, src := recvRTP(t, g.caller)
		if p.SSRC != 0xCAFE || p.SequenceNumber != uint16(1000+i) || p.Timestamp != uint32(50000+160*i) || src.String() != g.nodeCaller.LocalAddr().String() {
			t.Fatalf("to caller #%d: %+v", i, p.Header)
		}
	}
	// The agent's phone restarts its stream (new SSRC): the caller's timeline goes on.
	sendRTP(t, g.agent, g.nodeAgent.LocalAddr(), 0, 0xBEEF, 5, 123, []byte{9})
	if p, _ := recvRTP(t, g.caller); p.SSRC != 0xCAFE || p.SequenceNumber != 1003 || p.Timestamp != 50000+160*3 {
		t.Fatalf("after agent SSRC change: %+v", p.Header)
	}
	// DTMF: caller's 101 becomes the agent's 96, and back.
	sendRTP(t, g.caller, g.nodeCaller.LocalAddr(), 101, 1, 8, 860, []byte{5, 0x80, 0, 160})
	if p, _ := recvRTP(t, g.agent); p.PayloadType != 96 {
		t.Fatalf("DTMF to agent: PT %d", p.PayloadType)
	}
	sendRTP(t, g.agent, g.nodeAgent.LocalAddr(), 96, 0xBEEF, 6, 283, []byte{1, 0x80, 0, 160})
	if p, _ := recvRTP(t, g.caller); p.PayloadType != 101 {
		t.Fatalf("DTMF to caller: PT %d", p.PayloadType)
	}
	// Counted once written: the last packet may be received before it is.
	deadline := time.Now().Add(time.Second)
	for s := g.relay.Stats(); s.CallerToAgent != 2 || s.AgentToCaller != 5; s = g.relay.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v", s)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRelayLatchesAndRefusesHijack(t *testing.T) {
	g := newRelayRig(t, nil, 0, nil)
	// The agent's phone really sends from another port than its SDP said (NAT).
	natted := udp(t)
	sendRTP(t, natted, g.nodeAgent.LocalAddr(), 0, 2, 1, 0, []byte{1})
	recvRTP(t, g.caller)
	// From now on the caller's audio goes to where the agent really is.
	sendRTP(t, g.caller, g.nodeCaller.LocalAddr(), 0, 1, 1, 0, []byte{2})
	if p, _ := recvRTP(t, natted); p.Payload[0] != 2 {
		t.Fatalf("latched: %v", p.Payload)
	}
	noPacket(t, g.agent)
	// A third party cannot inject into the call once latched; garbage is dropped.
	intruder := udp(t)
	sendRTP(t, intruder, g.nodeAgent.LocalAddr(), 0, 3, 1, 0, []byte{6})
	if _, err := intruder.WriteTo([]byte("not rtp"), g.nodeCaller.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	noPacket(t, g.caller)
	if s := g.relay.Stats(); s.Dropped != 2 {
		t.Fatalf("dropped %d, want 2", s.Dropped)
	}
}

func TestRelayTimeoutAndStop(t *testing.T) {
	var fired atomic.Int32
	g := newRelayRig(t, nil, 300*time.Millisecond, func() { fired.Add(1) })
	deadline := time.Now().Add(3 * time.Second)
	for fired.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // waiting for the relay's own timer
	}
	if fired.Load() != 1 {
		t.Fatalf("timeout fired %d times", fired.Load())
	}
	time.Sleep(400 * time.Millisecond) // longer than another timeout period
	if fired.Load() != 1 {
		t.Fatalf("timeout fired again: %d", fired.Load())
	}
	g.cancel()
	if err := <-g.done; err != nil {
		t.Fatalf("run: %v", err)
	}
	g.done <- nil // for the cleanup
	// The node's sockets still work after the relay stopped.
	if _, err := g.nodeCaller.WriteTo([]byte{0}, g.caller.LocalAddr()); err != nil {
		t.Fatalf("socket after stop: %v", err)
	}
}

// On hold the relay passes nothing either way; a stream continuing from Hold's
// position and a resume from the stream's position keep the caller's RTP
// identity continuous (one SSRC, contiguous sequence numbers) across
// talk → music → talk.
func TestRelayHoldResumeContinuity(t *testing.T) {
	cont := &Continuation{SSRC: 0xC0FFEE, Seq: 100, Timestamp: 8000}
	g := newRelayRig(t, cont, 0, nil)
	sendRTP(t, g.agent, g.nodeAgent.LocalAddr(), 0, 7, 1, 160, []byte{1})
	p, _ := recvRTP(t, g.caller)
	if p.SSRC != cont.SSRC || p.SequenceNumber != 100 || p.Timestamp != 8000 {
		t.Fatalf("before hold: got ssrc %x seq %d ts %d", p.SSRC, p.SequenceNumber, p.Timestamp)
	}
	next, ok := g.relay.Hold()
	if !ok || next.SSRC != cont.SSRC || next.Seq != 101 || next.Timestamp != 8160 {
		t.Fatalf("Hold() = %+v, %v; want ssrc %x seq 101 ts 8160", next, ok, cont.SSRC)
	}
	sendRTP(t, g.agent, g.nodeAgent.LocalAddr(), 0, 7, 2, 320, []byte{2})
	sendRTP(t, g.caller, g.nodeCaller.LocalAddr(), 0, 9, 1, 160, []byte{3})
	noPacket(t, g.caller)
	noPacket(t, g.agent)

	// The music takes over the caller's stream where the relay stopped.
	st, err := NewStream(StreamParams{Conn: g.nodeCaller, Dest: g.caller.LocalAddr(), Codec: PCMU, Clip: MusicOnHold(), Loop: true, Continue: &next})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx) }()
	var last *rtp.Packet
	for i := 0; i < 3; i++ {
		m, _ := recvRTP(t, g.caller)
		if m.SSRC != cont.SSRC || m.SequenceNumber != 101+uint16(i) {
			t.Fatalf("music packet %d: ssrc %x seq %d", i, m.SSRC, m.SequenceNumber)
		}
		last = m
	}
	resume := st.Halt()
	if err := <-done; err != nil {
		t.Fatalf("halted stream: %v", err)
	}
	// Anything the stream sent after our third read precedes resume.Seq.
	for {
		buf := make([]byte, 1500)
		_ = g.caller.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := g.caller.ReadFrom(buf); err != nil {
			break
		}
	}
	if resume.SSRC != cont.SSRC || resume.Seq <= last.SequenceNumber {
		t.Fatalf("Halt() = %+v after seq %d", resume, last.SequenceNumber)
	}
	g.relay.Resume(resume)
	sendRTP(t, g.agent, g.nodeAgent.LocalAddr(), 0, 7, 50, 9000, []byte{4})
	p, _ = recvRTP(t, g.caller)
	if p.SSRC != cont.SSRC || p.SequenceNumber != resume.Seq || p.Timestamp != resume.Timestamp || p.Payload[0] != 4 {
		t.Fatalf("after resume: got ssrc %x seq %d ts %d payload %v; want seq %d ts %d", p.SSRC, p.SequenceNumber, p.Timestamp, p.Payload, resume.Seq, resume.Timestamp)
	}
	sendRTP(t, g.caller, g.nodeCaller.LocalAddr(), 0, 9, 2, 320, []byte{5})
	if q, _ := recvRTP(t, g.agent); q.Payload[0] != 5 {
		t.Fatalf("caller → agent after resume: payload %v", q.Payload)
	}
	if s := g.relay.Stats(); s.Dropped != 0 {
		t.Fatalf("held packets counted as dropped: %+v", s)
	}
}

// Media on hold keeps the call alive: the timeout counts packets from either
// party even when they are not relayed.
func TestRelayHoldKeepsTimeoutFed(t *testing.T) {
	var fired atomic.Bool
	g := newRelayRig(t, &Continuation{SSRC: 1}, 300*time.Millisecond, func() { fired.Store(true) })
	g.relay.Hold()
	for i := 0; i < 12; i++ {
		sendRTP(t, g.caller, g.nodeCaller.LocalAddr(), 0, 9, uint16(i), uint32(i*160), []byte{1})
		time.Sleep(50 * time.Millisecond)
	}
	if fired.Load() {
		t.Fatal("timeout fired while the caller kept sending on hold")
	}
	time.Sleep(600 * time.Millisecond)
	if !fired.Load() {
		t.Fatal("timeout did not fire after media stopped")
	}
}
