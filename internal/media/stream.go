package media

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtp"
)

// maxLag is how far behind schedule a Stream may fall before it stops catching
// up: beyond it, the missed frames are skipped (the RTP timestamp jumps, the
// sequence number does not, which a receiver reads as a gap in the audio)
// rather than sent in a burst its jitter buffer would drop anyway.
const maxLag = 200 * time.Millisecond

// StreamParams configures a Stream.
type StreamParams struct {
	// Conn is the local RTP socket; required. The Stream writes to it from Run
	// and never reads from it or closes it.
	Conn net.PacketConn
	// Dest is the remote party's RTP address; required. See SetDest.
	Dest net.Addr
	// Codec is the payload format: PCMU or PCMA.
	Codec Codec
	// Clip is played first, looping if Loop is set. Nil starts with silence.
	Clip *Clip
	// Loop makes Clip play again from the start when it ends.
	Loop bool
	// OnClipEnd, if set, is called on Run's goroutine right after the last frame
	// of a non-looping clip has been sent (not when a clip is replaced by
	// SetClip). It must not block; it may call SetClip, and the new clip then
	// starts on the very next frame, so an announcement followed by music has
	// no gap. Until SetClip is called the stream sends silence. A SetClip from
	// another goroutine racing with the end of the clip may be overridden by
	// the one made here.
	OnClipEnd func(ended *Clip)
	// Logger receives write errors; nil discards them.
	Logger *slog.Logger
	// Continue, if set, makes the stream carry on an RTP identity the remote party
	// already hears (a relay's, when a bridged call goes on hold): its SSRC, and
	// the sequence number and timestamp of the next packet. Otherwise they are random.
	Continue *Continuation
}

// StreamStats counts what a Stream did.
type StreamStats struct {
	// Packets is the number of RTP packets written.
	Packets uint64
	// WriteErrors is the number of packets the socket refused.
	WriteErrors uint64
	// SkippedFrames is the number of 20 ms frames skipped because the sender
	// fell more than 200 ms behind schedule.
	SkippedFrames uint64
}

// Stream sends audio clips to one destination as RTP, one 20 ms packet per frame,
// paced against absolute time: packet n leaves at start + n×20 ms, so scheduling
// delays never accumulate into drift. The SSRC, first sequence number and first
// timestamp are random (RFC 3550 §5.1); the marker bit is set on the first
// packet. Between clips, and after a non-looping clip, it sends silence, so the
// sequence numbers and timestamps stay continuous (+1 and +160 per packet) for
// the life of the stream, whatever is played. A sender stalled for more than
// 200 ms skips the frames it missed instead of sending them in a burst: the
// timestamp jumps while the sequence number stays contiguous (see StreamStats).
//
// All methods are safe for concurrent use; none blocks except Run.
type Stream struct {
	conn  net.PacketConn
	codec Codec
	ssrc  uint32
	onEnd func(*Clip)
	log   *slog.Logger

	// running is set by the first Run.
	running atomic.Bool
	// onSend, if set before Run, is called after each packet is written (test hook).
	onSend func(seq uint16, ts uint32, at time.Time)

	// mu guards every field below.
	mu    sync.Mutex
	dest  net.Addr
	clip  *Clip // nil: silence
	loop  bool
	pos   int    // next frame of clip
	seq   uint16 // sequence number of the next packet
	ts    uint32 // timestamp of the next packet
	stats StreamStats
	wrErr bool // the last write failed (logs once per run of failures)
	begun bool // the first packet has been built (it carries the marker bit)
	// halted is set by Halt: no packet is built after it.
	halted bool
}

// NewStream returns a stream that will send to p.Dest from p.Conn once Run is
// called. It fails if Conn or Dest is missing or Codec is not PCMU or PCMA.
func NewStream(p StreamParams) (*Stream, error) {
	switch {
	case p.Conn == nil:
		return nil, errors.New("media: new stream: no connection")
	case p.Dest == nil:
		return nil, errors.New("media: new stream: no destination")
	case !p.Codec.Valid():
		return nil, fmt.Errorf("media: new stream: unsupported codec %v", p.Codec)
	}
	log := p.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Stream{
		conn:  p.Conn,
		codec: p.Codec,
		ssrc:  rand.Uint32(),
		onEnd: p.OnClipEnd,
		log:   log,
		dest:  p.Dest,
		clip:  p.Clip,
		loop:  p.Loop,
		seq:   uint16(rand.Uint32()),
		ts:    rand.Uint32(),
	}
	if c := p.Continue; c != nil {
		s.ssrc, s.seq, s.ts = c.SSRC, c.Seq, c.Timestamp
	}
	return s, nil
}

// SSRC returns the stream's synchronisation source identifier.
func (s *Stream) SSRC() uint32 { return s.ssrc }

// Codec returns the stream's payload format.
func (s *Stream) Codec() Codec { return s.codec }

// Next returns the sequence number and timestamp the next packet will carry; a
// relay taking over the same SSRC can continue from them.
func (s *Stream) Next() (seq uint16, ts uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq, s.ts
}

// Halt stops the stream for good and returns where a successor (a relay) must
// continue: no packet is built after Halt returns, so the successor never repeats
// a sequence number. Run then returns nil at its next frame.
func (s *Stream) Halt() Continuation {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.halted = true
	return Continuation{SSRC: s.ssrc, Seq: s.seq, Timestamp: s.ts}
}

// Stats returns the counters so far.
func (s *Stream) Stats() StreamStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// SetClip plays c from its start on the next frame, replacing whatever was
// playing; loop makes it repeat. A nil c plays silence. Sequence numbers and
// timestamps continue without a break.
func (s *Stream) SetClip(c *Clip, loop bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clip, s.loop, s.pos = c, loop, 0
}

// SetDest sends the following packets to addr (for example once symmetric RTP
// has shown where the remote party really is). A nil addr is ignored.
func (s *Stream) SetDest(addr net.Addr) {
	if addr == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dest = addr
}

// Run sends packets until ctx is done, then returns nil. It returns an error if
// the connection is closed under it, or if Run was already called. Run blocks;
// call it once, on its own goroutine.
func (s *Stream) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("media: stream: Run called twice")
	}
	pkt := rtp.Packet{Header: rtp.Header{
		Version:     2,
		PayloadType: s.codec.PayloadType(),
		SSRC:        s.ssrc,
	}}
	buf := make([]byte, pkt.Header.MarshalSize()+FrameSamples)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()

	start := time.Now()
	for n := 0; ; n++ {
		due := start.Add(time.Duration(n) * FrameDuration)
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done(): // stopped by the owner
				return nil
			case <-timer.C: // packet n is due
			}
		} else {
			if ctx.Err() != nil {
				return nil
			}
			if late := -wait; late > maxLag {
				k := int(late / FrameDuration)
				n += k
				s.skip(k)
			}
		}

		f, ok := s.next()
		if !ok {
			return nil // halted
		}
		pkt.SequenceNumber, pkt.Timestamp, pkt.Marker, pkt.Payload = f.seq, f.ts, f.marker, f.payload
		m, err := pkt.MarshalTo(buf)
		if err != nil {
			return fmt.Errorf("media: stream %08x: marshal RTP: %w", s.ssrc, err)
		}
		_, err = s.conn.WriteTo(buf[:m], f.dest)
		if err != nil && errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("media: stream %08x: %w", s.ssrc, err)
		}
		s.wrote(err, f.dest)
		if s.onSend != nil {
			s.onSend(f.seq, f.ts, time.Now())
		}
		if f.ended != nil && s.onEnd != nil {
			s.onEnd(f.ended)
		}
	}
}

// frame is what goes into one packet.
type frame struct {
	payload []byte
	seq     uint16
	ts      uint32
	marker  bool
	dest    net.Addr
	ended   *Clip // a non-looping clip that has just finished
}

// next takes the next frame from the current clip and advances the counters; it
// reports false once the stream is halted.
func (s *Stream) next() (frame, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.halted {
		return frame{}, false
	}
	f := frame{seq: s.seq, ts: s.ts, marker: !s.begun, dest: s.dest}
	s.begun = true
	if c := s.clip; c != nil && !s.loop && s.pos >= c.Frames() {
		// Only after skipped frames: the clip ended while we were late.
		f.ended, s.clip = c, nil
	}
	if c := s.clip; c != nil {
		f.payload = c.Frame(s.pos, s.codec)
		s.pos++
		if n := c.Frames(); s.loop && n > 0 {
			s.pos %= n
		} else if !s.loop && s.pos >= n {
			f.ended, s.clip, s.pos = c, nil, 0
		}
	} else {
		f.payload = silenceFrames[s.codec.index()]
	}
	s.seq++
	s.ts += FrameSamples
	return f, true
}

// skip advances the timestamp and the clip by k frames that will not be sent.
func (s *Stream) skip(k int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ts += uint32(k * FrameSamples)
	s.stats.SkippedFrames += uint64(k)
	if s.clip != nil {
		s.pos += k
		if n := s.clip.Frames(); s.loop && n > 0 {
			s.pos %= n
		}
	}
}

// wrote records the outcome of one write, logging the first of a run of errors.
func (s *Stream) wrote(err error, dest net.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.stats.Packets++
		s.wrErr = false
		return
	}
	s.stats.WriteErrors++
	if !s.wrErr {
		s.wrErr = true
		s.log.Warn("media: RTP write failed", "ssrc", s.ssrc, "dest", dest.String(), "err", err)
	}
}
