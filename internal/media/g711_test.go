package media

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"slices"
	"testing"
	"time"
)

// Reference digests computed with CPython's audioop (lin2ulaw, lin2alaw, ulaw2lin,
// alaw2lin), an independent G.711 implementation:
//
//	pos = b''.join(struct.pack('<h', x) for x in range(0, 32768))
//	allv = b''.join(struct.pack('<h', x) for x in range(-32768, 32768))
//	sha256(audioop.lin2ulaw(pos, 2)), sha256(audioop.lin2alaw(allv, 2))
//	sha256(audioop.ulaw2lin(bytes(range(256)), 2)), likewise alaw2lin
//
// audioop drops the 2 low bits of negative µ-law inputs with a floor shift, where
// this package (like Sun's g711.c) encodes the magnitude, so for µ-law only the
// non-negative half is compared and the negative half is checked for symmetry.
const (
	refMuLawEncodeNonNeg = "912062bf9c931c7ebc1dc1fd1d74faf0cfefcd47e8408a3ed4d07aa59f0f1c20"
	refALawEncodeAll     = "38488f6fd710f4686360edc4d38639f96c491595ef93f8eb8d62d5e07ca6ce7b"
	refMuLawDecode       = "3dab54339e520bb2c924826e3b72a917a2b612e9fd12fc867500f1d983a75827"
	refALawDecode        = "e04788d110e58ff8c70c93b8480190d973e3b67876b6119abbaec766cc75c174"
)

func TestG711KnownValues(t *testing.T) {
	tests := []struct {
		pcm   int16
		mu, a byte
	}{
		{0, 0xFF, 0xD5},
		{1, 0xFF, 0xD5},
		{-1, 0x7F, 0x55}, // audioop gives 0x7E (see above); g711.c gives 0x7F
		{8, 0xFE, 0xD5},
		{100, 0xF2, 0xD3},
		{-100, 0x72, 0x53},
		{1000, 0xCE, 0xFA},
		{-1000, 0x4E, 0x7A},
		{4096, 0xAF, 0x85},
		{-4096, 0x2F, 0x1A},
		{12345, 0x97, 0xBD},
		{-12345, 0x17, 0x3D},
		{32124, 0x80, 0xAA},
		{32767, 0x80, 0xAA},
		{-32768, 0x00, 0x2A},
	}
	for _, tt := range tests {
		if got := EncodeMuLaw(tt.pcm); got != tt.mu {
			t.Errorf("EncodeMuLaw(%d) = %#02x, want %#02x", tt.pcm, got, tt.mu)
		}
		if got := EncodeALaw(tt.pcm); got != tt.a {
			t.Errorf("EncodeALaw(%d) = %#02x, want %#02x", tt.pcm, got, tt.a)
		}
	}
	decodes := []struct {
		code  byte
		mu, a int16
	}{
		{0x00, -32124, -5504},
		{0x7F, 0, -848},
		{0x80, 32124, 5504},
		{0xFF, 0, 848},
		{0x55, -716, -8},
		{0xD5, 716, 8},
		{0x2A, -5372, -32256},
		{0xAA, 5372, 32256},
		{0x0F, -16764, -6784},
		{0x8F, 16764, 6784},
	}
	for _, tt := range decodes {
		if got := DecodeMuLaw(tt.code); got != tt.mu {
			t.Errorf("DecodeMuLaw(%#02x) = %d, want %d", tt.code, got, tt.mu)
		}
		if got := DecodeALaw(tt.code); got != tt.a {
			t.Errorf("DecodeALaw(%#02x) = %d, want %d", tt.code, got, tt.a)
		}
	}
}

func TestG711MatchesReference(t *testing.T) {
	digest := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	var nonNeg, all []int16
	for x := 0; x <= math.MaxInt16; x++ {
		nonNeg = append(nonNeg, int16(x))
	}
	for x := math.MinInt16; x <= math.MaxInt16; x++ {
		all = append(all, int16(x))
	}
	if got := digest(EncodeMuLawSlice(nil, nonNeg)); got != refMuLawEncodeNonNeg {
		t.Errorf("µ-law encoding of 0..32767 differs from the reference: sha256 %s", got)
	}
	if got := digest(EncodeALawSlice(nil, all)); got != refALawEncodeAll {
		t.Errorf("A-law encoding of every int16 differs from the reference: sha256 %s", got)
	}
	codes := make([]byte, 256)
	for i := range codes {
		codes[i] = byte(i)
	}
	le := func(s []int16) []byte {
		b := make([]byte, 0, 2*len(s))
		for _, v := range s {
			b = binary.LittleEndian.AppendUint16(b, uint16(v))
		}
		return b
	}
	if got := digest(le(DecodeMuLawSlice(nil, codes))); got != refMuLawDecode {
		t.Errorf("µ-law decoding table differs from the reference: sha256 %s", got)
	}
	if got := digest(le(DecodeALawSlice(nil, codes))); got != refALawDecode {
		t.Errorf("A-law decoding table differs from the reference: sha256 %s", got)
	}
	// µ-law negatives mirror positives (only the sign bit differs).
	for x := 1; x <= math.MaxInt16; x++ {
		if p, n := EncodeMuLaw(int16(x)), EncodeMuLaw(int16(-x)); n != p&^0x80 {
			t.Fatalf("EncodeMuLaw(%d) = %#02x, want %#02x (mirror of %d)", -x, n, p&^0x80, x)
		}
	}
}

func TestG711RoundTrip(t *testing.T) {
	abs := func(v int) int { return max(v, -v) }
	var worstMu, worstA float64
	prevMu, prevA := math.MinInt, math.MinInt
	for x := math.MinInt16; x <= math.MaxInt16; x++ {
		mu := int(DecodeMuLaw(EncodeMuLaw(int16(x))))
		a := int(DecodeALaw(EncodeALaw(int16(x))))
		// µ-law: the error is at most half a quantisation step, which is at most
		// (|x|+132)/32; clipping beyond ±32124 stays inside that bound too.
		if e := abs(mu - x); e*32 > abs(x)+muLawBias {
			t.Fatalf("µ-law round trip of %d gave %d (error %d)", x, mu, e)
		}
		// A-law: half a step is at most max(8, |x|/32), plus one 13-bit unit (8)
		// from the asymmetric negative range.
		if e := abs(a - x); e > 16+abs(x)/32 {
			t.Fatalf("A-law round trip of %d gave %d (error %d)", x, a, e)
		}
		if mu < prevMu || a < prevA {
			t.Fatalf("round trip not monotonic at %d", x)
		}
		prevMu, prevA = mu, a
		if abs(x) >= 256 {
			worstMu = max(worstMu, float64(abs(mu-x))/float64(abs(x)))
			worstA = max(worstA, float64(abs(a-x))/float64(abs(x)))
		}
	}
	t.Logf("worst relative error for |x| >= 256: µ-law %.4f, A-law %.4f", worstMu, worstA)

	// Decoding then encoding gives the code back, except µ-law's negative zero.
	for c := range 256 {
		if got := EncodeALaw(DecodeALaw(byte(c))); got != byte(c) {
			t.Errorf("A-law %#02x → %d → %#02x", c, DecodeALaw(byte(c)), got)
		}
		want := byte(c)
		if c == 0x7F {
			want = 0xFF
		}
		if got := EncodeMuLaw(DecodeMuLaw(byte(c))); got != want {
			t.Errorf("µ-law %#02x → %d → %#02x, want %#02x", c, DecodeMuLaw(byte(c)), got, want)
		}
	}
}

func TestG711SliceHelpers(t *testing.T) {
	pcm := []int16{0, 1, -1, 300, -300, 32767, -32768, 1234}
	mu := EncodeMuLawSlice([]byte{0xAB}, pcm)
	a := EncodeALawSlice(nil, pcm)
	if len(mu) != 1+len(pcm) || mu[0] != 0xAB || len(a) != len(pcm) {
		t.Fatalf("lengths: µ-law %d, A-law %d; want append semantics", len(mu), len(a))
	}
	for i, s := range pcm {
		if mu[1+i] != EncodeMuLaw(s) || a[i] != EncodeALaw(s) {
			t.Errorf("sample %d (%d): slice encoders disagree with scalar ones", i, s)
		}
	}
	dmu := DecodeMuLawSlice(nil, mu[1:])
	da := DecodeALawSlice(make([]int16, 0, 1), a)
	for i := range pcm {
		if dmu[i] != DecodeMuLaw(mu[1+i]) || da[i] != DecodeALaw(a[i]) {
			t.Errorf("sample %d: slice decoders disagree with scalar ones", i)
		}
	}
	if got := PCMU.Encode(nil, pcm); !slices.Equal(got, mu[1:]) {
		t.Errorf("PCMU.Encode = %x, want %x", got, mu[1:])
	}
	if got := PCMA.Decode(nil, a); !slices.Equal(got, da) {
		t.Errorf("PCMA.Decode = %v, want %v", got, da)
	}
	if got := Codec(3).Encode(nil, pcm); len(got) != 0 {
		t.Errorf("invalid codec encoded %d bytes", len(got))
	}
}

func TestCodec(t *testing.T) {
	if FrameSamples != int(SampleRate*FrameDuration/time.Second) {
		t.Fatalf("FrameSamples %d does not match %v at %d Hz", FrameSamples, FrameDuration, SampleRate)
	}
	tests := []struct {
		c    Codec
		pt   uint8
		name string
	}{{PCMU, 0, "PCMU"}, {PCMA, 8, "PCMA"}}
	for _, tt := range tests {
		if tt.c.PayloadType() != tt.pt || tt.c.String() != tt.name || tt.c.ClockRate() != 8000 || !tt.c.Valid() {
			t.Errorf("%v: pt %d name %q rate %d", tt.c, tt.c.PayloadType(), tt.c.String(), tt.c.ClockRate())
		}
		if c, ok := CodecForPayloadType(tt.pt); !ok || c != tt.c {
			t.Errorf("CodecForPayloadType(%d) = %v, %v", tt.pt, c, ok)
		}
		if c, ok := CodecByName(tt.name); !ok || c != tt.c {
			t.Errorf("CodecByName(%q) = %v, %v", tt.name, c, ok)
		}
	}
	if c, ok := CodecByName("pcma"); !ok || c != PCMA {
		t.Errorf("CodecByName is case-sensitive")
	}
	for _, pt := range []uint8{3, 9, 18, 96} {
		if _, ok := CodecForPayloadType(pt); ok {
			t.Errorf("CodecForPayloadType(%d) accepted", pt)
		}
	}
	if _, ok := CodecByName("G722"); ok {
		t.Errorf("CodecByName(G722) accepted")
	}
	if s := Codec(18).String(); s != "Codec(18)" {
		t.Errorf("Codec(18).String() = %q", s)
	}
}
