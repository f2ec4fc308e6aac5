package media

import (
	"bytes"
	"runtime"
	"testing"
)

// FuzzLoadWAV checks that the WAV parser never panics, that an accepted file
// yields a clip no larger than its input and able to render every frame in both
// codecs, and that parsing allocates memory proportional to the input, whatever
// sizes the headers claim.
func FuzzLoadWAV(f *testing.F) {
	g := []byte{0x00, 0x7F, 0x80, 0xFF, 0x55, 0xD5, 1, 2, 3}
	seeds := []wavSpec{
		{format: wavPCM, channels: 1, rate: 8000, bits: 16, data: pcm16(testSamples(170))},
		{format: wavPCM, channels: 1, rate: 8000, bits: 16, data: pcm16(testSamples(3)), extensible: true},
		{format: wavPCM, channels: 1, rate: 8000, bits: 16, data: pcm16(testSamples(8)), dataSize: u32(0xFFFFFFFF), riffSize: u32(0)},
		{format: wavPCM, channels: 1, rate: 8000, bits: 16, data: pcm16(testSamples(5)),
			before: []chunk{{"LIST", []byte("INFOabc")}}, between: []chunk{{"fact", []byte{4, 0, 0, 0}}}},
		{format: wavMuLaw, channels: 1, rate: 8000, bits: 8, data: g},
		{format: wavALaw, channels: 1, rate: 8000, bits: 8, data: g, extensible: true},
		{format: wavPCM, channels: 2, rate: 44100, bits: 16, data: make([]byte, 8)},
		{format: wavFloat, channels: 1, rate: 8000, bits: 32, data: make([]byte, 8)},
		{format: wavPCM, channels: 1, rate: 8000, bits: 16, dataSize: u32(1 << 30)},
	}
	for _, s := range seeds {
		f.Add(makeWAV(s))
	}
	f.Add([]byte("RIFF\x00\x00\x00\x00WAVELIST\xff\xff\xff\x7f"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		clip, err := LoadWAV(bytes.NewReader(data))
		runtime.ReadMemStats(&after)
		// io.ReadAll's growth costs a few times the input; decoding G.711 doubles
		// it. Anything claimed by a header but absent cannot fit this bound.
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(16*len(data)+256<<10) {
			t.Fatalf("allocated %d bytes for %d bytes of input", alloc, len(data))
		}
		if err != nil {
			if clip != nil {
				t.Fatalf("clip and error %v", err)
			}
			_ = err.Error()
			return
		}
		if n := len(clip.Samples()); n == 0 || n > len(data) {
			t.Fatalf("%d samples from %d bytes", n, len(data))
		}
		for _, codec := range []Codec{PCMU, PCMA} {
			for i := range clip.Frames() + 1 {
				if len(clip.Frame(i, codec)) != FrameSamples {
					t.Fatalf("frame %d in %v has the wrong size", i, codec)
				}
			}
		}
	})
}
