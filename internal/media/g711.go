package media

// G.711 (ITU-T G.711, 11/1988) companding between 16-bit linear PCM and 8-bit
// µ-law / A-law, after the public-domain Sun Microsystems reference (g711.c).
// µ-law is computed on the 16-bit magnitude (sign-symmetric); A-law on the 13-bit
// value x>>3, as the standard specifies.

const (
	muLawBias = 0x84  // 132: added to the magnitude so the segment is its top bit
	muLawClip = 32635 // largest magnitude that fits once biased
)

// EncodeMuLaw compresses one 16-bit linear sample to G.711 µ-law.
// Silence (0) encodes to 0xFF.
func EncodeMuLaw(pcm int16) byte {
	s := int(pcm)
	sign := 0
	if s < 0 {
		s = -s
		sign = 0x80
	}
	if s > muLawClip {
		s = muLawClip
	}
	s += muLawBias
	// The segment (exponent) is the position of the top set bit above bit 7.
	exp := 7
	for mask := 0x4000; s&mask == 0 && exp > 0; mask >>= 1 {
		exp--
	}
	mant := (s >> (exp + 3)) & 0x0F
	return ^byte(sign | exp<<4 | mant)
}

// DecodeMuLaw expands one G.711 µ-law byte to a 16-bit linear sample, the midpoint
// of the quantisation interval. The range is ±32124.
func DecodeMuLaw(u byte) int16 {
	u = ^u
	t := (int(u&0x0F)<<3 + muLawBias) << ((u & 0x70) >> 4)
	if u&0x80 != 0 {
		return int16(muLawBias - t)
	}
	return int16(t - muLawBias)
}

// EncodeALaw compresses one 16-bit linear sample to G.711 A-law (with the even
// bits inverted, as sent on the wire). Silence (0) encodes to 0xD5.
func EncodeALaw(pcm int16) byte {
	v := int(pcm) >> 3 // 13-bit
	mask := byte(0xD5)
	if v < 0 {
		mask = 0x55
		v = -v - 1
	}
	// Segment ends, in the 13-bit domain: 0x1F, 0x3F, 0x7F, ... 0xFFF.
	seg := 0
	for end := 0x1F; v > end && seg < 8; end = end<<1 | 1 {
		seg++
	}
	if seg >= 8 {
		return 0x7F ^ mask
	}
	a := seg << 4
	if seg < 2 {
		a |= (v >> 1) & 0x0F
	} else {
		a |= (v >> seg) & 0x0F
	}
	return byte(a) ^ mask
}

// DecodeALaw expands one G.711 A-law byte to a 16-bit linear sample, the midpoint
// of the quantisation interval. The range is ±32256.
func DecodeALaw(a byte) int16 {
	a ^= 0x55
	t := int(a&0x0F) << 4
	switch seg := (a & 0x70) >> 4; seg {
	case 0:
		t += 8
	case 1:
		t += 0x108
	default:
		t = (t + 0x108) << (seg - 1)
	}
	if a&0x80 != 0 {
		return int16(t)
	}
	return int16(-t)
}

// EncodeMuLawSlice appends the µ-law encoding of pcm to dst and returns the
// extended slice; dst may be nil.
func EncodeMuLawSlice(dst []byte, pcm []int16) []byte { return appendEach(dst, pcm, EncodeMuLaw) }

// DecodeMuLawSlice appends the linear decoding of the µ-law bytes in g to dst and
// returns the extended slice; dst may be nil.
func DecodeMuLawSlice(dst []int16, g []byte) []int16 { return appendEach(dst, g, DecodeMuLaw) }

// EncodeALawSlice appends the A-law encoding of pcm to dst and returns the
// extended slice; dst may be nil.
func EncodeALawSlice(dst []byte, pcm []int16) []byte { return appendEach(dst, pcm, EncodeALaw) }

// DecodeALawSlice appends the linear decoding of the A-law bytes in g to dst and
// returns the extended slice; dst may be nil.
func DecodeALawSlice(dst []int16, g []byte) []int16 { return appendEach(dst, g, DecodeALaw) }

// appendEach appends f of every element of src to dst.
func appendEach[S, D any](dst []D, src []S, f func(S) D) []D {
	dst = grow(dst, len(src))
	for _, s := range src {
		dst = append(dst, f(s))
	}
	return dst
}

// grow makes room for n more elements with at most one allocation.
func grow[S ~[]E, E any](s S, n int) S {
	if cap(s)-len(s) < n {
		ns := make(S, len(s), len(s)+n)
		copy(ns, s)
		return ns
	}
	return s
}
