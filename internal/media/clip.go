package media

import (
	"sync"
	"time"
)

// Clip is a piece of 8 kHz mono audio, held as 16-bit linear samples, that can be
// rendered as 20 ms frames in PCMU or PCMA. A Clip is immutable once built and
// safe for concurrent use: one Clip (music on hold, say) can feed any number of
// streams, and each codec's encoding is computed once and shared.
type Clip struct {
	// name describes where the clip came from (a file path or a generator).
	name string
	// samples is the audio; never modified after construction.
	samples []int16
	// enc caches the encoding per codec index, padded with silence to a whole
	// number of frames. Each entry is written once under its sync.Once.
	enc [2]struct {
		once sync.Once
		data []byte
	}
}

// NewClip returns a clip playing samples (8 kHz mono, 16-bit linear). The clip
// keeps samples: the caller must not modify them afterwards. name is used in
// logs and errors only.
func NewClip(name string, samples []int16) *Clip {
	return &Clip{name: name, samples: samples}
}

// newEncodedClip returns a clip decoded from G.711 bytes in codec c, keeping the
// original bytes as its encoding for c so they are sent unchanged.
func newEncodedClip(name string, c Codec, g []byte) *Clip {
	clip := &Clip{name: name, samples: c.Decode(nil, g)}
	e := &clip.enc[c.index()]
	e.once.Do(func() {
		// Copy so the clip does not pin the buffer g was sliced from.
		n := (len(g) + FrameSamples - 1) / FrameSamples * FrameSamples
		e.data = padFrames(append(make([]byte, 0, n), g...), c)
	})
	return clip
}

// Name returns the description given when the clip was made (a path or a
// generator name).
func (c *Clip) Name() string { return c.name }

// Samples returns the clip's linear samples. The slice is shared: do not modify it.
func (c *Clip) Samples() []int16 { return c.samples }

// Duration returns the length of the audio.
func (c *Clip) Duration() time.Duration {
	return time.Duration(len(c.samples)) * time.Second / SampleRate
}

// Frames returns the number of 20 ms frames in the clip; a partial last frame is
// counted (and padded with silence when rendered).
func (c *Clip) Frames() int {
	return (len(c.samples) + FrameSamples - 1) / FrameSamples
}

// Frame returns frame i of the clip encoded in codec: FrameSamples bytes, ready to
// be an RTP payload. Frames loop: i is taken modulo Frames(), so any i (even
// negative) is valid. An empty clip renders silence; an invalid codec returns
// nil. The returned slice is shared by every caller: do not modify it.
func (c *Clip) Frame(i int, codec Codec) []byte {
	if !codec.Valid() {
		return nil
	}
	n := c.Frames()
	if n == 0 {
		return silenceFrames[codec.index()]
	}
	i %= n
	if i < 0 {
		i += n
	}
	data := c.encoded(codec)
	return data[i*FrameSamples : (i+1)*FrameSamples : (i+1)*FrameSamples]
}

// encoded returns the whole clip encoded in codec (valid), computing it once.
func (c *Clip) encoded(codec Codec) []byte {
	e := &c.enc[codec.index()]
	e.once.Do(func() { e.data = padFrames(codec.Encode(nil, c.samples), codec) })
	return e.data
}

// padFrames extends g with the codec's silence to a multiple of FrameSamples.
func padFrames(g []byte, codec Codec) []byte {
	rem := len(g) % FrameSamples
	if rem == 0 {
		return g
	}
	out := make([]byte, len(g), len(g)+FrameSamples-rem)
	copy(out, g)
	for range FrameSamples - rem {
		out = append(out, codec.silenceByte())
	}
	return out
}
