package media

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// newConn returns a UDP socket on 127.0.0.1:0, closed when the test ends.
func newConn(t testing.TB) net.PacketConn {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sendLog records the sender's own timestamps through the onSend hook.
type sendLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (l *sendLog) hook(_ uint16, _ uint32, at time.Time) {
	l.mu.Lock()
	l.times = append(l.times, at)
	l.mu.Unlock()
}

func (l *sendLog) get() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.times)
}

// skipped reports (and logs) frames the stream skipped because the machine
// stalled it for more than maxLag; timestamp checks cannot hold then.
func skipped(t *testing.T, s *Stream) bool {
	if n := s.Stats().SkippedFrames; n > 0 {
		t.Logf("the sender was stalled more than %v and skipped %d frames: timestamp and payload checks relaxed", maxLag, n)
		return true
	}
	return false
}

func TestStreamSendsPacedRTP(t *testing.T) {
	t.Parallel()
	const n = 50
	clip := NewClip("ramp", testSamples(7*FrameSamples)) // 7 distinct frames
	rx := newReceiver(t)
	s, err := NewStream(StreamParams{Conn: newConn(t), Dest: rx.Addr(), Codec: PCMA, Clip: clip, Loop: true})
	if err != nil {
		t.Fatal(err)
	}
	var log sendLog
	s.onSend = log.hook
	seq0, ts0 := s.Next()
	began := time.Now()
	stop := runStream(t, s)
	pkts := rx.WaitFor(t, n, 5*time.Second)
	elapsed := time.Since(began)
	if err := stop(); err != nil {
		t.Fatalf("Run returned %v after cancel", err)
	}
	sent := log.get()[:n]

	if pkts[0].SequenceNumber != seq0 || pkts[0].SSRC != s.SSRC() {
		t.Errorf("first packet seq %d SSRC %08x, want %d %08x", pkts[0].SequenceNumber, pkts[0].SSRC, seq0, s.SSRC())
	}
	for i, p := range pkts {
		if p.Version != 2 || p.PayloadType != 8 || p.Marker != (i == 0) || p.Padding || p.Extension || len(p.CSRC) != 0 {
			t.Fatalf("packet %d: header %+v", i, p.Header)
		}
	}
	if !skipped(t, s) {
		if pkts[0].Timestamp != ts0 {
			t.Errorf("first timestamp %d, want %d", pkts[0].Timestamp, ts0)
		}
		CheckContinuity(t, pkts)
		for i, p := range pkts {
			if !bytes.Equal(p.Payload, clip.Frame(i, PCMA)) {
				t.Fatalf("packet %d: payload is not frame %d of the clip", i, i%clip.Frames())
			}
		}
	}

	// Pacing. The sender's own send times are the reliable measure; arrival
	// times add the receiver's scheduling, so their bound is looser.
	sendMean := meanSpacing(sent)
	arrivals := make([]time.Time, n)
	for i, p := range pkts {
		arrivals[i] = p.At
	}
	arrMean := meanSpacing(arrivals)
	var worst time.Duration
	for i := 1; i < n; i++ {
		worst = max(worst, sent[i].Sub(sent[i-1]))
	}
	t.Logf("%d packets in %v; mean spacing sent %v, arrived %v; largest send gap %v",
		n, elapsed.Round(time.Millisecond), sendMean, arrMean, worst)
	if d := sendMean - FrameDuration; d < -3*time.Millisecond || d > 3*time.Millisecond {
		t.Errorf("mean send spacing %v, want %v ± 3ms", sendMean, FrameDuration)
	}
	if d := arrMean - FrameDuration; d < -6*time.Millisecond || d > 6*time.Millisecond {
		t.Errorf("mean arrival spacing %v, want %v ± 6ms", arrMean, FrameDuration)
	}
	// Absolute pacing: 49 intervals can never take less than 49×20 ms minus the
	// first packet's own lateness, which is bounded by the time to the first send.
	if span, first := sent[n-1].Sub(sent[0]), sent[0].Sub(began); span < (n-1)*FrameDuration-first {
		t.Errorf("%d packets sent in %v: faster than real time", n, span)
	}
}

func TestStreamAnnouncementThenMusic(t *testing.T) {
	t.Parallel()
	announce := NewClip("announce", testSamples(10 * FrameSamples)[:9*FrameSamples+40]) // 10 frames, last partial
	music := MusicOnHold()
	rx := newReceiver(t)
	var (
		s     *Stream
		mu    sync.Mutex
		ended []*Clip
	)
	s, err := NewStream(StreamParams{
		Conn: newConn(t), Dest: rx.Addr(), Codec: PCMU, Clip: announce,
		OnClipEnd: func(c *Clip) {
			mu.Lock()
			ended = append(ended, c)
			mu.Unlock()
			s.SetClip(music, true)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runStream(t, s)
	pkts := rx.WaitFor(t, 25, 5*time.Second)
	// Replace the music by ringback from outside, mid-stream.
	s.SetClip(Ringback(), true)
	all := rx.WaitFor(t, len(rx.Packets())+10, 5*time.Second)

	mu.Lock()
	if len(ended) != 1 || ended[0] != announce {
		t.Errorf("OnClipEnd called for %v, want once for the announcement", ended)
	}
	mu.Unlock()
	if skipped(t, s) {
		return
	}
	CheckContinuity(t, all)
	for i, p := range pkts {
		want := music.Frame(i-10, PCMU)
		if i < 10 {
			want = announce.Frame(i, PCMU)
		}
		if !bytes.Equal(p.Payload, want) {
			t.Fatalf("packet %d: payload is not the expected clip frame", i)
		}
	}
	// After the external switch: music frames, then ringback from its start.
	k := slices.IndexFunc(all[25:], func(p rtpPacket) bool { return bytes.Equal(p.Payload, Ringback().Frame(0, PCMU)) })
	if k < 0 {
		t.Fatalf("ringback never started")
	}
	k += 25
	for i := k; i < len(all); i++ {
		if !bytes.Equal(all[i].Payload, Ringback().Frame(i-k, PCMU)) {
			t.Fatalf("packet %d: not ringback frame %d", i, i-k)
		}
	}
	for i := 25; i < k; i++ {
		if !bytes.Equal(all[i].Payload, music.Frame(i-10, PCMU)) {
			t.Fatalf("packet %d: not music frame %d", i, i-10)
		}
	}
}

func TestStreamSilenceAndDest(t *testing.T) {
	t.Parallel()
	rx1, rx2 := newReceiver(t), newReceiver(t)
	short := NewClip("beep", testSamples(2*FrameSamples))
	s, err := NewStream(StreamParams{Conn: newConn(t), Dest: rx1.Addr(), Codec: PCMU, Clip: short})
	if err != nil {
		t.Fatal(err)
	}
	runStream(t, s)
	first := rx1.WaitFor(t, 5, 5*time.Second)
	s.SetDest(rx2.Addr())
	s.SetDest(nil) // ignored
	second := rx2.WaitFor(t, 3, 5*time.Second)
	if skipped(t, s) {
		return
	}
	// The clip plays once, then silence.
	silence := bytes.Repeat([]byte{0xFF}, FrameSamples)
	for i, p := range first {
		want := silence
		if i < 2 {
			want = short.Frame(i, PCMU)
		}
		if !bytes.Equal(p.Payload, want) {
			t.Fatalf("packet %d: unexpected payload", i)
		}
	}
	// The new destination gets the continuation of the same stream (once rx1
	// has read everything sent before the switch).
	var all []rtpPacket
	eventually(t, 5*time.Second, func() bool {
		all = rx1.Packets()
		return all[len(all)-1].SequenceNumber+1 == second[0].SequenceNumber
	}, "rx1 to have read every packet sent before the switch")
	CheckContinuity(t, append(all, second...))
	if second[0].Marker {
		t.Errorf("marker set after a change of destination")
	}
	if st := s.Stats(); st.Packets < uint64(len(all)+3) || st.WriteErrors != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestStreamLifecycle(t *testing.T) {
	t.Parallel()
	conn := newConn(t)
	dest := conn.LocalAddr()
	for _, p := range []StreamParams{
		{Dest: dest},
		{Conn: conn},
		{Conn: conn, Dest: dest, Codec: Codec(18)},
	} {
		if _, err := NewStream(p); err == nil || !strings.HasPrefix(err.Error(), "media: new stream: ") {
			t.Errorf("NewStream(%+v) error %v", p, err)
		}
	}

	s, err := NewStream(StreamParams{Conn: conn, Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	if s.Codec() != PCMU {
		t.Errorf("default codec %v", s.Codec())
	}
	stop := runStream(t, s)
	eventually(t, 5*time.Second, func() bool { return s.Stats().Packets >= 2 }, "2 packets sent")
	if err := s.Run(t.Context()); err == nil {
		t.Errorf("a second Run was allowed")
	}
	began := time.Now()
	if err := stop(); err != nil {
		t.Errorf("Run returned %v after cancel", err)
	}
	if d := time.Since(began); d > 500*time.Millisecond {
		t.Errorf("Run took %v to return after cancel", d)
	}

	// A stream whose socket is closed under it ends with an error.
	conn2 := newConn(t)
	s2, err := NewStream(StreamParams{Conn: conn2, Dest: dest})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s2.Run(t.Context()) }()
	eventually(t, 5*time.Second, func() bool { return s2.Stats().Packets >= 1 }, "1 packet sent")
	conn2.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Run on a closed socket returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Run did not notice its socket closing")
	}
}

func TestStreamSkipsWhenFarBehind(t *testing.T) {
	t.Parallel()
	conn := newConn(t)
	clip := NewClip("ramp", testSamples(5*FrameSamples))
	s, err := NewStream(StreamParams{Conn: conn, Dest: conn.LocalAddr(), Codec: PCMU, Clip: clip, Loop: true})
	if err != nil {
		t.Fatal(err)
	}
	f0, _ := s.next()
	s.skip(12) // as if stalled for 12 frames
	f1, _ := s.next()
	if f1.seq != f0.seq+1 || f1.ts != f0.ts+13*FrameSamples || f1.marker || !f0.marker {
		t.Errorf("after a skip: seq %d→%d ts %d→%d", f0.seq, f1.seq, f0.ts, f1.ts)
	}
	if !bytes.Equal(f1.payload, clip.Frame(13, PCMU)) {
		t.Errorf("the clip did not advance with the skipped frames")
	}
	if s.Stats().SkippedFrames != 12 {
		t.Errorf("stats %+v", s.Stats())
	}

	// A non-looping clip that ends during the skip ends (once), then silence.
	s.SetClip(clip, false)
	s.skip(7)
	f2, _ := s.next()
	if f2.ended != clip || !bytes.Equal(f2.payload, silenceFrames[0]) {
		t.Errorf("a clip ending during a skip: ended %v", f2.ended)
	}
	if f3, _ := s.next(); f3.ended != nil {
		t.Errorf("the end was reported twice")
	}
}
