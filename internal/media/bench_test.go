//go:build unix

package media

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkStreams runs N paced streams (each with its own socket, as each call
// has) for 2 s to one local UDP sink and reports the process CPU time they cost
// (senders plus the sink) per stream and per second of audio. Run with:
//
//	go test -run '^$' -bench Streams -benchtime 1x ./internal/media/
func BenchmarkStreams(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) { benchStreams(b, n, 2*time.Second) })
	}
}

func benchStreams(b *testing.B, n int, dur time.Duration) {
	sink, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	if uc, ok := sink.(*net.UDPConn); ok {
		uc.SetReadBuffer(8 << 20)
	}
	var got atomic.Int64
	sinkDone := make(chan struct{})
	go func() {
		defer close(sinkDone)
		buf := make([]byte, 1500)
		for {
			if _, _, err := sink.ReadFrom(buf); err != nil {
				return // closed
			}
			got.Add(1)
		}
	}()

	conns := make([]net.PacketConn, n)
	for i := range conns {
		if conns[i], err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			b.Fatal(err)
		}
		defer conns[i].Close()
	}
	music := MusicOnHold()
	music.Frame(0, PCMU) // encode once, outside the measurement

	b.ResetTimer()
	var cpu time.Duration
	var sent, late uint64
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), dur)
		streams := make([]*Stream, n)
		for i := range streams {
			streams[i], err = NewStream(StreamParams{Conn: conns[i], Dest: sink.LocalAddr(), Codec: PCMU, Clip: music, Loop: true})
			if err != nil {
				b.Fatal(err)
			}
		}
		before := cpuTime()
		var wg sync.WaitGroup
		for _, s := range streams {
			wg.Go(func() { s.Run(ctx) })
		}
		wg.Wait()
		cpu += cpuTime() - before
		cancel()
		for _, s := range streams {
			st := s.Stats()
			sent += st.Packets
			late += st.SkippedFrames
		}
	}
	b.StopTimer()
	time.Sleep(50 * time.Millisecond) // let the sink drain
	streamSeconds := float64(b.N) * float64(n) * dur.Seconds()
	b.ReportMetric(float64(cpu.Microseconds())/streamSeconds, "cpu-µs/stream-s")
	b.ReportMetric(100*cpu.Seconds()/(float64(b.N)*dur.Seconds()), "%core")
	b.ReportMetric(float64(sent)/streamSeconds, "pkts/stream-s")
	b.ReportMetric(float64(late), "skipped-frames")
	if sent > 0 {
		b.ReportMetric(100*(1-float64(got.Load())/float64(sent)), "%lost")
	}
}

// cpuTime returns the user plus system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
