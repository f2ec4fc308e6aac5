package main

import (
	"context"
	"encoding/binary"
	"errors"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// RTP as the phones send it: PCMU, one 160-byte frame every 20 ms.
const (
	rtpHeaderLen = 12
	frameBytes   = 160
	frameSamples = 160
	framePeriod  = 20 * time.Millisecond
	// Each sender goroutine spreads its streams over sendSlots slots of
	// framePeriod/sendSlots, so that the node gets a steady flow rather than one
	// burst of every stream's packet every 20 ms.
	sendSlots = 10
	slotDur   = framePeriod / sendSlots
	// A sender more than maxLag behind schedule skips the frames it missed
	// (they are not counted as sent) instead of sending them in a burst.
	maxLag = 200 * time.Millisecond
)

// Directions, named by the party that sends.
const (
	dirCallerToAgent = 0
	dirAgentToCaller = 1
)

var (
	dirName = [2]string{"caller→agent", "agent→caller"}
	dirMark = [2]byte{'C', 'A'}
)

// Phases a packet is counted in. The sender decides a packet's phase when it
// sends it and writes it into the payload; the receiver counts the packet
// under the same phase, so sent and received always compare like with like,
// however late a packet arrives.
const (
	phaseNone   = 0 // not counted: the stream has not heard its peer yet (not bridged), or the window is over
	phaseRamp   = 1 // bridged, before the hold window opened
	phaseWindow = 2 // the hold window
	nPhases     = 3
)

// The payload of every packet the tool sends (the rest is PCMU silence):
//
//	[0:2]   'R' 'L'  magic
//	[2]     'C' caller→agent or 'A' agent→caller
//	[3]     phase
//	[4:8]   sender id: the call index (caller) or the agent index (agent)
//	[8:12]  frame number within the stream
//	[12:20] send time, ns since the tool started (same clock as the receiver's)
const markLen = 20

// stream is one party's media of one call: a UDP socket that sends to the
// node's address for that leg and receives what the node relays from the other
// party. The sender goroutine owns the RTP state; the stream's own receiver
// goroutine owns the receive state; counters are atomic.
type stream struct {
	l    *load
	dir  int    // the direction this stream sends
	id   uint32 // call index (caller) or agent index (agent)
	conn *net.UDPConn
	dst  netip.AddrPort // the node's address for this leg, from its SDP

	// call is the call this stream belongs to: set at creation for a caller
	// stream, learnt from the first caller packet for an agent stream.
	call atomic.Pointer[callState]

	// Sender state (sender goroutine only).
	pkt   [rtpHeaderLen + frameBytes]byte
	seq   uint16
	ts    uint32
	frame uint32

	started, stopped atomic.Bool
	// heard: the first marked packet from the other party arrived, so the
	// node's relay is up for this call: from then on sent packets count.
	heard atomic.Bool
	peer  atomic.Uint32 // the other party's id, from its first packet

	sent     [nPhases]atomic.Uint64
	sendErrs atomic.Uint64
	recv     [nPhases]atomic.Uint64
	// unmarked: packets without the tool's marker (the node's music before the
	// bridge); afterBridge: those arriving after the peer was heard.
	unmarked, unmarkedAfterBridge atomic.Uint64
	foreign                       atomic.Uint64 // marked, but from another party than the first one heard
	reordered                     atomic.Uint64 // frame number not above the last one received
}

// newStream opens a media socket on loopback. The caller's receive goroutine
// starts at once (the node's music arrives before the bridge and must not fill
// the socket); sending starts with start.
func (l *load) newStream(dir int, id uint32) (*stream, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	// The tool is the instrument: give its sockets room so that loss is the
	// node's (per-socket drops are reported for both sides anyway).
	_ = c.SetReadBuffer(1 << 20)
	s := &stream{l: l, dir: dir, id: id, conn: c}
	h := s.pkt[:]
	h[0] = 0x80 // V=2
	h[1] = 0    // PT 0 (PCMU)
	s.seq, s.ts = uint16(rand.Uint32()), rand.Uint32()
	binary.BigEndian.PutUint32(h[8:12], rand.Uint32()) // SSRC
	p := h[rtpHeaderLen:]
	for i := range p {
		p[i] = 0xFF
	}
	p[0], p[1], p[2] = 'R', 'L', dirMark[dir]
	binary.BigEndian.PutUint32(p[4:8], id)
	l.allStreams(s)
	go s.receive()
	return s, nil
}

func (s *stream) addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// start begins sending to dst (the node's address for this leg).
func (s *stream) start(dst netip.AddrPort) {
	s.dst = dst
	s.l.addToSender(s)
	s.started.Store(true)
}

// stop ends sending and receiving and closes the socket.
func (s *stream) stop() {
	if s.stopped.Swap(true) {
		return
	}
	_ = s.conn.Close()
}

// send writes the stream's next packet (sender goroutine).
func (s *stream) send(phase int) {
	if !s.heard.Load() {
		phase = phaseNone
	}
	b := s.pkt[:]
	binary.BigEndian.PutUint16(b[2:4], s.seq)
	binary.BigEndian.PutUint32(b[4:8], s.ts)
	p := b[rtpHeaderLen:]
	p[3] = byte(phase)
	binary.BigEndian.PutUint32(p[8:12], s.frame)
	binary.BigEndian.PutUint64(p[12:20], uint64(s.l.now()))
	if _, err := s.conn.WriteToUDPAddrPort(b, s.dst); err != nil {
		if !s.stopped.Load() {
			s.sendErrs.Add(1)
		}
		return
	}
	s.sent[phase].Add(1)
	s.seq++
	s.ts += frameSamples
	s.frame++
}

// receive reads the stream's socket until it is closed, attributing packets by
// the payload marker (the node rewrites SSRC and sequence numbers toward the
// caller, so RTP identity says nothing about who sent a packet).
func (s *stream) receive() {
	buf := make([]byte, 1500)
	want := dirMark[1-s.dir]
	from := 1 - s.dir
	var lastFrame uint32
	got := false
	for {
		n, _, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.stopped.Load() {
				return
			}
			continue
		}
		now := s.l.now()
		p, ok := rtpPayload(buf[:n])
		if !ok || len(p) < markLen || p[0] != 'R' || p[1] != 'L' || p[2] != want || p[3] >= nPhases {
			s.unmarked.Add(1)
			if s.heard.Load() {
				s.unmarkedAfterBridge.Add(1)
			}
			continue
		}
		id := binary.BigEndian.Uint32(p[4:8])
		if !s.heard.Load() {
			s.peer.Store(id)
			s.heard.Store(true)
			s.l.heard(s, id)
		} else if id != s.peer.Load() {
			s.foreign.Add(1)
			continue
		}
		frame := binary.BigEndian.Uint32(p[8:12])
		if got && frame <= lastFrame {
			s.reordered.Add(1)
		} else {
			lastFrame, got = frame, true
		}
		phase := int(p[3])
		if phase == phaseNone {
			continue
		}
		s.recv[phase].Add(1)
		lat := now - time.Duration(binary.BigEndian.Uint64(p[12:20]))
		s.l.latency[phase][from].add(lat)
		if phase == phaseWindow {
			s.l.lastWindowRx.Store(int64(now))
		}
	}
}

// rtpPayload returns the payload of an RTP packet (RFC 3550 §5.1).
func rtpPayload(b []byte) ([]byte, bool) {
	if len(b) < rtpHeaderLen || b[0]>>6 != 2 {
		return nil, false
	}
	off := rtpHeaderLen + 4*int(b[0]&0x0F)
	if b[0]&0x10 != 0 { // header extension
		if len(b) < off+4 {
			return nil, false
		}
		off += 4 + 4*int(binary.BigEndian.Uint16(b[off+2:off+4]))
	}
	end := len(b)
	if b[0]&0x20 != 0 && end > 0 { // padding
		end -= int(b[end-1])
	}
	if off > end {
		return nil, false
	}
	return b[off:end], true
}

// sender sends one packet every 20 ms for each of its streams, from one
// goroutine: stream i goes out in slot i mod sendSlots of each period.
type sender struct {
	mu      sync.Mutex
	streams []*stream
	// lagSkips counts the times the sender fell more than maxLag behind,
	// skippedFrames the frames it did not send then (about: every stream of
	// the sender loses the skipped periods); maxBehind is the worst lateness
	// seen, ns.
	lagSkips, skippedFrames atomic.Uint64
	maxBehind               atomic.Int64
}

func (sh *sender) run(ctx context.Context, l *load, offset time.Duration) {
	next := time.Now().Add(offset)
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for k := 0; ; k++ {
		if d := time.Until(next); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		} else if ctx.Err() != nil {
			return
		}
		if behind := time.Since(next); behind > time.Duration(sh.maxBehind.Load()) {
			sh.maxBehind.Store(int64(behind))
		}
		phase := int(l.phase.Load())
		sh.mu.Lock()
		list := sh.streams
		sh.mu.Unlock()
		for i := k % sendSlots; i < len(list); i += sendSlots {
			if s := list[i]; !s.stopped.Load() {
				s.send(phase)
			}
		}
		next = next.Add(slotDur)
		if time.Since(next) > maxLag {
			// Far behind: resynchronise on the slot grid, skipping whole periods.
			sh.lagSkips.Add(1)
			periods := time.Since(next) / framePeriod
			next = next.Add(periods * framePeriod)
			sh.skippedFrames.Add(uint64(periods) * uint64(len(list)))
		}
	}
}

// histogram counts durations in µs with about 6% resolution (8 sub-buckets per
// power of two); safe for concurrent use.
type histogram struct {
	b   [256]atomic.Uint64
	max atomic.Int64
}

func (h *histogram) add(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	i := int(us)
	if us >= 16 {
		e := bits.Len64(us) - 4
		i = e*8 + int(us>>e)
	}
	if i >= len(h.b) {
		i = len(h.b) - 1
	}
	h.b[i].Add(1)
	for {
		m := h.max.Load()
		if int64(d) <= m || h.max.CompareAndSwap(m, int64(d)) {
			return
		}
	}
}

func (h *histogram) count() uint64 {
	var n uint64
	for i := range h.b {
		n += h.b[i].Load()
	}
	return n
}

// quantile returns the upper bound of the bucket holding quantile q.
func (h *histogram) quantile(q float64) time.Duration {
	n := h.count()
	if n == 0 {
		return 0
	}
	target := uint64(q*float64(n) + 0.5)
	if target < 1 {
		target = 1
	}
	var cum uint64
	for i := range h.b {
		cum += h.b[i].Load()
		if cum >= target {
			top := uint64(i) + 1
			if i >= 16 {
				e := i/8 - 1
				top = uint64(i-8*e+1) << e
			}
			if d := time.Duration(top) * time.Microsecond; d < time.Duration(h.max.Load()) {
				return d
			}
			return time.Duration(h.max.Load())
		}
	}
	return time.Duration(h.max.Load())
}
