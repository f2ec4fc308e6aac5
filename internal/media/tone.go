package media

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// toneLevel is the peak amplitude of a tone, all frequencies summed: about
// -12 dBFS, well below clipping and near the -10 dBm0 of network tones.
const toneLevel = 8000

// toneRamp is the fade at each edge of a tone burst, which avoids clicks.
const toneRamp = 5 * time.Millisecond

// Tone generates a call-progress style tone: the sum of freqs (Hz, equal levels,
// peak about -12 dBFS) for on, then silence for off, repeated until total. A zero
// off gives a continuous tone; a total of zero or less gives one on+off cycle.
// Each burst fades in and out over 5 ms so it does not click. The clip is meant
// to loop, so make total a multiple of on+off.
//
// Examples: ringback in most of Europe is Tone([]float64{425}, time.Second,
// 4*time.Second, 5*time.Second); in North America Tone([]float64{440, 480},
// 2*time.Second, 4*time.Second, 6*time.Second).
func Tone(freqs []float64, on, off, total time.Duration) *Clip {
	if total <= 0 {
		total = on + off
	}
	n := durSamples(total)
	samples := make([]int16, n)
	onN, period := durSamples(on), durSamples(on+off)
	if off <= 0 || period <= 0 {
		onN, period = n, n
	}
	ramp := durSamples(toneRamp)
	if ramp > onN/2 {
		ramp = onN / 2
	}
	amp := 0.0
	if len(freqs) > 0 {
		amp = toneLevel / float64(len(freqs))
	}
	for i := range samples {
		k := i % max(period, 1)
		if k >= onN {
			continue
		}
		env := 1.0
		switch {
		case off <= 0:
			// continuous: no bursts to fade
		case k < ramp:
			env = float64(k) / float64(ramp)
		case onN-1-k < ramp:
			env = float64(onN-1-k) / float64(ramp)
		}
		t := float64(i) / SampleRate
		v := 0.0
		for _, f := range freqs {
			v += math.Sin(2 * math.Pi * f * t)
		}
		samples[i] = int16(math.Round(amp * env * v))
	}
	return NewClip(fmt.Sprintf("tone %v Hz %v on %v off", freqs, on, off), samples)
}

// durSamples converts a duration to a number of samples at SampleRate.
func durSamples(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int(d * SampleRate / time.Second)
}

// Ringback returns the European ringback tone (425 Hz, 1 s on, 4 s off), a
// 5-second clip to be looped. The clip is built once and shared.
func Ringback() *Clip { return ringback() }

var ringback = sync.OnceValue(func() *Clip {
	c := Tone([]float64{425}, time.Second, 4*time.Second, 5*time.Second)
	c.name = "ringback"
	return c
})

// MusicOnHold returns a gentle built-in hold melody, 6.4 s long, that loops
// seamlessly: soft sine notes (with a little second harmonic) of a slow arpeggio,
// each with a quick attack and an exponential decay, peaking near -14 dBFS. It is
// the default when no music file is configured. The clip is built once and shared.
func MusicOnHold() *Clip { return musicOnHold() }

var musicOnHold = sync.OnceValue(func() *Clip {
	// A I–vi–IV–V arpeggio in C major: four bars of four notes, 400 ms each.
	notes := []float64{
		261.63, 329.63, 392.00, 523.25, // C E G C'
		220.00, 261.63, 329.63, 440.00, // A C E A
		174.61, 220.00, 261.63, 349.23, // F A C F
		196.00, 246.94, 293.66, 392.00, // G B D G
	}
	const noteDur = 400 * time.Millisecond
	noteN := durSamples(noteDur)
	attack := durSamples(10 * time.Millisecond)
	samples := make([]int16, noteN*len(notes))
	const level = 6500.0
	for j, f := range notes {
		for k := range noteN {
			env := math.Exp(-float64(k) / (0.12 * SampleRate))
			if k < attack {
				env *= float64(k) / float64(attack)
			}
			// Fade the last 20 ms to zero so notes join without a click.
			if tail := noteN - 1 - k; tail < attack*2 {
				env *= float64(tail) / float64(attack*2)
			}
			t := float64(k) / SampleRate
			v := math.Sin(2*math.Pi*f*t) + 0.25*math.Sin(4*math.Pi*f*t)
			samples[j*noteN+k] = int16(math.Round(level / 1.25 * env * v))
		}
	}
	return NewClip("music on hold", samples)
})
