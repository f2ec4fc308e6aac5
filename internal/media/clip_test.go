package media

import (
	"bytes"
	"math"
	"testing"
	"time"
)

func TestClipFrames(t *testing.T) {
	samples := testSamples(2*FrameSamples + 10)
	c := NewClip("test", samples)
	if c.Frames() != 3 || c.Duration() != 41250*time.Microsecond {
		t.Fatalf("Frames %d Duration %v", c.Frames(), c.Duration())
	}
	for _, codec := range []Codec{PCMU, PCMA} {
		enc := codec.Encode(nil, samples)
		if f := c.Frame(1, codec); !bytes.Equal(f, enc[FrameSamples:2*FrameSamples]) {
			t.Errorf("%v frame 1 differs", codec)
		}
		last := c.Frame(2, codec)
		if len(last) != FrameSamples || !bytes.Equal(last[:10], enc[2*FrameSamples:]) {
			t.Fatalf("%v last frame: %d bytes", codec, len(last))
		}
		for _, b := range last[10:] {
			if b != codec.silenceByte() {
				t.Fatalf("%v last frame not padded with silence: %x", codec, last)
			}
		}
		// Frames loop in both directions.
		if !bytes.Equal(c.Frame(3, codec), c.Frame(0, codec)) || !bytes.Equal(c.Frame(-1, codec), last) ||
			!bytes.Equal(c.Frame(3*1000+1, codec), c.Frame(1, codec)) {
			t.Errorf("%v frames do not loop", codec)
		}
	}
	if c.Frame(0, Codec(9)) != nil {
		t.Errorf("invalid codec rendered a frame")
	}
	empty := NewClip("empty", nil)
	if empty.Frames() != 0 || !bytes.Equal(empty.Frame(7, PCMA), bytes.Repeat([]byte{0xD5}, FrameSamples)) {
		t.Errorf("an empty clip should render A-law silence")
	}
}

func TestClipConcurrentFrames(t *testing.T) {
	c := NewClip("shared", testSamples(8000))
	done := make(chan []byte)
	for i := range 8 {
		go func() { done <- c.Frame(i, Codec(i%2*8)) }()
	}
	for range 8 {
		if f := <-done; len(f) != FrameSamples {
			t.Fatalf("frame of %d bytes", len(f))
		}
	}
}

// peak returns the largest magnitude in s.
func peak(s []int16) int {
	p := 0
	for _, v := range s {
		p = max(p, int(v), -int(v))
	}
	return p
}

// crossings counts sign changes in s.
func crossings(s []int16) int {
	n := 0
	for i := 1; i < len(s); i++ {
		if (s[i-1] < 0) != (s[i] < 0) {
			n++
		}
	}
	return n
}

func TestTone(t *testing.T) {
	c := Tone([]float64{425}, time.Second, 4*time.Second, 5*time.Second)
	s := c.Samples()
	if len(s) != 5*SampleRate || c.Frames() != 250 {
		t.Fatalf("%d samples, %d frames", len(s), c.Frames())
	}
	if p := peak(s); p > toneLevel || p < toneLevel*95/100 {
		t.Errorf("peak %d, want just under %d", p, toneLevel)
	}
	if n := crossings(s[:SampleRate]); n < 845 || n > 855 {
		t.Errorf("%d zero crossings in the first second, want ~850 for 425 Hz", n)
	}
	if peak(s[SampleRate:]) != 0 {
		t.Errorf("the off period is not silent")
	}
	if s[0] != 0 || s[SampleRate-1] != 0 {
		t.Errorf("burst edges not faded: %d, %d", s[0], s[SampleRate-1])
	}

	dual := Tone([]float64{440, 480}, 2*time.Second, 4*time.Second, 0)
	if dual.Duration() != 6*time.Second || peak(dual.Samples()) > toneLevel {
		t.Errorf("dual tone: %v, peak %d", dual.Duration(), peak(dual.Samples()))
	}
	cont := Tone([]float64{1000}, time.Second, 0, 3*time.Second)
	if cont.Duration() != 3*time.Second || peak(cont.Samples()[2*SampleRate:]) < toneLevel*9/10 {
		t.Errorf("continuous tone: %v", cont.Duration())
	}
	if n := crossings(cont.Samples()); math.Abs(float64(n)-6000) > 5 {
		t.Errorf("continuous 1 kHz tone: %d crossings in 3 s", n)
	}
	if silent := Tone(nil, time.Second, 0, time.Second); peak(silent.Samples()) != 0 {
		t.Errorf("a tone of no frequencies should be silence")
	}
}

func TestDefaultSounds(t *testing.T) {
	if Ringback() != Ringback() || MusicOnHold() != MusicOnHold() {
		t.Errorf("default sounds are rebuilt on each call")
	}
	if r := Ringback(); r.Duration() != 5*time.Second || r.Name() != "ringback" {
		t.Errorf("ringback: %v %q", r.Duration(), r.Name())
	}
	m := MusicOnHold()
	s := m.Samples()
	if m.Duration() != 6400*time.Millisecond || m.Frames() != 320 {
		t.Errorf("music on hold: %v, %d frames", m.Duration(), m.Frames())
	}
	if p := peak(s); p < 3000 || p > 8192 {
		t.Errorf("music on hold peak %d, want loud enough yet below -12 dBFS", p)
	}
	// It starts and ends at zero, so looping does not click.
	if abs := max(s[0], -s[0], s[len(s)-1], -s[len(s)-1]); abs > 50 {
		t.Errorf("music on hold edges: %d ... %d", s[0], s[len(s)-1])
	}
	// Several distinct notes: the zero-crossing rate changes from note to note.
	notes := map[int]bool{}
	for i := 0; i+3200 <= len(s); i += 3200 {
		notes[crossings(s[i:i+3200])/20] = true
	}
	if len(notes) < 5 {
		t.Errorf("music on hold sounds like %d notes", len(notes))
	}
}
