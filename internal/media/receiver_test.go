package media

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"
)

// rtpPacket is one packet as seen by a Receiver.
type rtpPacket struct {
	rtp.Header
	Payload []byte
	At      time.Time // arrival
}

// Receiver reads RTP from a UDP socket on 127.0.0.1 and keeps every packet, for
// tests. It is safe for concurrent use.
type Receiver struct {
	conn net.PacketConn
	done chan struct{}

	// mu guards pkts and bad.
	mu   sync.Mutex
	pkts []rtpPacket
	bad  int // datagrams that were not RTP
}

// newReceiver listens on 127.0.0.1:0 until the test ends.
func newReceiver(t testing.TB) *Receiver {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Receiver{conn: conn, done: make(chan struct{})}
	go r.loop()
	t.Cleanup(func() { conn.Close(); <-r.done })
	return r
}

// Addr returns the address to send RTP to.
func (r *Receiver) Addr() net.Addr { return r.conn.LocalAddr() }

func (r *Receiver) loop() {
	defer close(r.done)
	buf := make([]byte, 1500)
	for {
		n, _, err := r.conn.ReadFrom(buf)
		if err != nil {
			return // closed by the test's cleanup
		}
		at := time.Now()
		var p rtp.Packet
		r.mu.Lock()
		if p.Unmarshal(buf[:n]) != nil {
			r.bad++
		} else {
			r.pkts = append(r.pkts, rtpPacket{Header: p.Header, Payload: append([]byte(nil), p.Payload...), At: at})
		}
		r.mu.Unlock()
	}
}

// Packets returns a copy of what has arrived so far.
func (r *Receiver) Packets() []rtpPacket {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]rtpPacket(nil), r.pkts...)
}

// WaitFor waits up to timeout for n packets and returns the first n.
func (r *Receiver) WaitFor(t testing.TB, n int, timeout time.Duration) []rtpPacket {
	t.Helper()
	var got []rtpPacket
	eventually(t, timeout, func() bool { got = r.Packets(); return len(got) >= n },
		"%d RTP packets, got %d", n, func() int { return len(got) })
	return got[:n]
}

// CheckContinuity fails the test unless pkts have one SSRC and payload type and
// consecutive sequence numbers and timestamps (+1, +160, with wrap-around).
func CheckContinuity(t testing.TB, pkts []rtpPacket) {
	t.Helper()
	for i := 1; i < len(pkts); i++ {
		a, b := pkts[i-1], pkts[i]
		if b.SSRC != a.SSRC || b.PayloadType != a.PayloadType {
			t.Fatalf("packet %d: SSRC %08x PT %d after SSRC %08x PT %d", i, b.SSRC, b.PayloadType, a.SSRC, a.PayloadType)
		}
		if b.SequenceNumber != a.SequenceNumber+1 {
			t.Fatalf("packet %d: sequence %d after %d", i, b.SequenceNumber, a.SequenceNumber)
		}
		if b.Timestamp != a.Timestamp+FrameSamples {
			t.Fatalf("packet %d: timestamp %d after %d (want +%d)", i, b.Timestamp, a.Timestamp, FrameSamples)
		}
		if len(b.Payload) != FrameSamples {
			t.Fatalf("packet %d: %d-byte payload", i, len(b.Payload))
		}
	}
}

// meanSpacing returns the mean interval between the first and last of times.
func meanSpacing(times []time.Time) time.Duration {
	if len(times) < 2 {
		return 0
	}
	return times[len(times)-1].Sub(times[0]) / time.Duration(len(times)-1)
}

// eventually polls cond every 5 ms until it holds or timeout passes, then fails
// the test with the message (whose args may be funcs returning the value).
func eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			for i, a := range args {
				if f, ok := a.(func() int); ok {
					args[i] = f()
				}
			}
			t.Fatalf("after %v: want "+format, append([]any{timeout}, args...)...)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runStream starts s.Run on a goroutine; the returned stop cancels it and
// returns Run's result, failing the test if Run does not return within 1 s.
// Cleanup stops it too.
func runStream(t testing.TB, s *Stream) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(time.Second):
				t.Errorf("Run did not return within 1 s of cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}
