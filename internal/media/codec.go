package media

import (
	"fmt"
	"strings"
	"time"
)

// Audio parameters shared by every codec this package speaks.
const (
	// SampleRate is the audio sample rate and RTP clock rate, in Hz.
	SampleRate = 8000
	// FrameDuration is the audio carried by one RTP packet (ptime 20).
	FrameDuration = 20 * time.Millisecond
	// FrameSamples is the number of samples in one frame, which is also the RTP
	// timestamp increment between packets.
	FrameSamples = SampleRate / 50 // 160: 20 ms at 8 kHz
)

// Codec is an audio codec identified by its static RTP payload type
// (RFC 3551 §6): PCMU (0) or PCMA (8). The zero value is PCMU.
type Codec uint8

// The codecs this package encodes.
const (
	// PCMU is G.711 µ-law, RTP payload type 0.
	PCMU Codec = 0
	// PCMA is G.711 A-law, RTP payload type 8.
	PCMA Codec = 8
)

// CodecForPayloadType returns the codec carried by RTP payload type pt, and false
// if this package does not speak it.
func CodecForPayloadType(pt uint8) (Codec, bool) {
	c := Codec(pt)
	return c, c.Valid()
}

// CodecByName returns the codec with the SDP rtpmap encoding name name
// ("PCMU" or "PCMA", case-insensitive), and false if there is none.
func CodecByName(name string) (Codec, bool) {
	switch {
	case strings.EqualFold(name, "PCMU"):
		return PCMU, true
	case strings.EqualFold(name, "PCMA"):
		return PCMA, true
	}
	return 0, false
}

// Valid reports whether c is PCMU or PCMA.
func (c Codec) Valid() bool { return c == PCMU || c == PCMA }

// PayloadType returns the RTP payload type of c.
func (c Codec) PayloadType() uint8 { return uint8(c) }

// ClockRate returns the RTP clock rate of c, in Hz.
func (c Codec) ClockRate() int { return SampleRate }

// String returns the SDP encoding name of c ("PCMU", "PCMA"), or "Codec(n)".
func (c Codec) String() string {
	switch c {
	case PCMU:
		return "PCMU"
	case PCMA:
		return "PCMA"
	}
	return fmt.Sprintf("Codec(%d)", uint8(c))
}

// Encode appends the encoding of pcm in c to dst and returns the extended slice.
// An invalid codec appends nothing.
func (c Codec) Encode(dst []byte, pcm []int16) []byte {
	switch c {
	case PCMU:
		return EncodeMuLawSlice(dst, pcm)
	case PCMA:
		return EncodeALawSlice(dst, pcm)
	}
	return dst
}

// Decode appends the linear samples of payload, encoded in c, to dst and returns
// the extended slice. An invalid codec appends nothing.
func (c Codec) Decode(dst []int16, payload []byte) []int16 {
	switch c {
	case PCMU:
		return DecodeMuLawSlice(dst, payload)
	case PCMA:
		return DecodeALawSlice(dst, payload)
	}
	return dst
}

// silenceByte returns the encoding of a zero sample in c.
func (c Codec) silenceByte() byte {
	if c == PCMA {
		return 0xD5
	}
	return 0xFF
}

// index returns a dense index for the valid codecs (PCMU 0, PCMA 1).
func (c Codec) index() int {
	if c == PCMA {
		return 1
	}
	return 0
}

// silenceFrames holds one frame of silence per codec index; never modified.
var silenceFrames = func() [2][]byte {
	var f [2][]byte
	for _, c := range []Codec{PCMU, PCMA} {
		b := make([]byte, FrameSamples)
		for i := range b {
			b[i] = c.silenceByte()
		}
		f[c.index()] = b
	}
	return f
}()
