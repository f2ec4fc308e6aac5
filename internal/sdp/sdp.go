// Package sdp negotiates the audio of a call by the offer/answer model (RFC 3264)
// on top of pion/sdp: it reads an offer, picks a codec both sides support (G.711
// µ-law or A-law) and RFC 4733 telephone-events, and writes the node's answer or
// offer for the media the node anchors.
package sdp

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	psdp "github.com/pion/sdp/v3"
)

// Errors; the SIP edge maps ErrMalformed to 400 and ErrNoCommon to 488.
var (
	ErrMalformed = errors.New("sdp: malformed session description")
	ErrNoAudio   = errors.New("sdp: no usable audio stream")
	ErrNoCommon  = errors.New("sdp: no codec in common (want PCMU or PCMA)")
)

// Codec is an audio codec the node speaks.
type Codec struct {
	Name        string // PCMU or PCMA
	PayloadType uint8
}

// The codecs the node speaks, in its order of preference.
var (
	PCMU = Codec{Name: "PCMU", PayloadType: 0}
	PCMA = Codec{Name: "PCMA", PayloadType: 8}
)

// Direction is the media direction attribute (RFC 3264 §5.1).
type Direction string

// Directions.
const (
	SendRecv Direction = "sendrecv"
	SendOnly Direction = "sendonly"
	RecvOnly Direction = "recvonly"
	Inactive Direction = "inactive"
)

// Reverse is the direction an answer gives to an offered one (RFC 3264 §6.1).
func (d Direction) Reverse() Direction {
	switch d {
	case SendOnly:
		return RecvOnly
	case RecvOnly:
		return SendOnly
	}
	return d
}

// Media is what a session description says about its audio.
type Media struct {
	// Addr is where the other side receives RTP (connection address and m= port).
	Addr netip.AddrPort
	// Codecs are the offered audio codecs the node supports, in the offer's order.
	Codecs []Codec
	// TelephoneEvent is the RFC 4733 payload type, 0 when not offered.
	TelephoneEvent uint8
	Direction      Direction
	// Ptime is the packetisation time in ms (20 when absent).
	Ptime int
}

// maxSDP bounds what Parse reads.
const maxSDP = 16 << 10

// Parse reads the first audio stream of a session description. A stream with
// port 0 is declined and skipped (RFC 3264 §5.1).
func Parse(body []byte) (Media, error) {
	var m Media
	if len(body) == 0 || len(body) > maxSDP {
		return m, fmt.Errorf("%w: %d bytes", ErrMalformed, len(body))
	}
	var sd psdp.SessionDescription
	if err := sd.Unmarshal(body); err != nil {
		return m, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	sessionDir := directionOf(sd.Attributes)
	for _, md := range sd.MediaDescriptions {
		if md.MediaName.Media != "audio" || md.MediaName.Port.Value == 0 {
			continue
		}
		ci := md.ConnectionInformation
		if ci == nil {
			ci = sd.ConnectionInformation
		}
		if ci == nil || ci.Address == nil {
			return m, fmt.Errorf("%w: audio stream without a connection address", ErrMalformed)
		}
		ip, err := netip.ParseAddr(ci.Address.Address)
		if err != nil {
			return m, fmt.Errorf("%w: connection address %q is not an IP address", ErrMalformed, ci.Address.Address)
		}
		port := md.MediaName.Port.Value
		if port < 1 || port > 65535 {
			return m, fmt.Errorf("%w: port %d", ErrMalformed, port)
		}
		m.Addr = netip.AddrPortFrom(ip, uint16(port))
		rtpmap := map[string]string{} // payload type → encoding name, upper case
		for _, a := range md.Attributes {
			if a.Key != "rtpmap" {
				continue
			}
			pt, enc, ok := strings.Cut(a.Value, " ")
			if ok {
				rtpmap[pt] = strings.ToUpper(strings.SplitN(enc, "/", 2)[0])
			}
		}
		for _, f := range md.MediaName.Formats {
			name, ok := rtpmap[f]
			switch {
			case f == "0" && (!ok || name == "PCMU"):
				m.Codecs = append(m.Codecs, PCMU)
			case f == "8" && (!ok || name == "PCMA"):
				m.Codecs = append(m.Codecs, PCMA)
			case ok && name == "TELEPHONE-EVENT":
				if pt, err := strconv.ParseUint(f, 10, 8); err == nil && pt >= 96 && pt <= 127 {
					m.TelephoneEvent = uint8(pt)
				}
			}
		}
		m.Direction = directionOf(md.Attributes)
		if m.Direction == "" {
			m.Direction = sessionDir
		}
		if m.Direction == "" {
			m.Direction = SendRecv
		}
		m.Ptime = 20
		if v, ok := md.Attribute("ptime"); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 && n <= 200 {
				m.Ptime = n
			}
		}
		return m, nil
	}
	return m, ErrNoAudio
}

func directionOf(attrs []psdp.Attribute) Direction {
	for _, a := range attrs {
		switch Direction(a.Key) {
		case SendRecv, SendOnly, RecvOnly, Inactive:
			return Direction(a.Key)
		}
	}
	return ""
}

// Choose picks the codec for an answer: the first offered codec the node supports
// (the offerer's preference, RFC 3264 §6.1).
func Choose(offer Media) (Codec, error) {
	if len(offer.Codecs) == 0 {
		return Codec{}, ErrNoCommon
	}
	return offer.Codecs[0], nil
}

// Description is the node's side of a media session.
type Description struct {
	// Addr is where the node receives RTP for this call.
	Addr netip.AddrPort
	// SessionID and Version identify the o= line; bump Version on every change.
	SessionID, Version uint64
	// Codecs are listed in order; the first is the one the node sends.
	Codecs []Codec
	// TelephoneEvent is the RFC 4733 payload type to list, 0 for none.
	TelephoneEvent uint8
	Direction      Direction
}

// Marshal writes the description as SDP.
func (d Description) Marshal() []byte {
	ip := d.Addr.Addr()
	af := "IP4"
	if ip.Is6() && !ip.Is4In6() {
		af = "IP6"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "v=0\r\no=ccmesh %d %d IN %s %s\r\ns=ccmesh\r\nc=IN %s %s\r\nt=0 0\r\n", d.SessionID, d.Version, af, ip, af, ip)
	fmt.Fprintf(&b, "m=audio %d RTP/AVP", d.Addr.Port())
	for _, c := range d.Codecs {
		fmt.Fprintf(&b, " %d", c.PayloadType)
	}
	if d.TelephoneEvent != 0 {
		fmt.Fprintf(&b, " %d", d.TelephoneEvent)
	}
	b.WriteString("\r\n")
	for _, c := range d.Codecs {
		fmt.Fprintf(&b, "a=rtpmap:%d %s/8000\r\n", c.PayloadType, c.Name)
	}
	if d.TelephoneEvent != 0 {
		fmt.Fprintf(&b, "a=rtpmap:%d telephone-event/8000\r\na=fmtp:%d 0-16\r\n", d.TelephoneEvent, d.TelephoneEvent)
	}
	b.WriteString("a=ptime:20\r\n")
	dir := d.Direction
	if dir == "" {
		dir = SendRecv
	}
	b.WriteString("a=" + string(dir) + "\r\n")
	return []byte(b.String())
}

// Answer builds the node's answer to offer, receiving at addr.
func Answer(offer Media, addr netip.AddrPort, sessionID uint64) (Description, error) {
	c, err := Choose(offer)
	if err != nil {
		return Description{}, err
	}
	return Description{Addr: addr, SessionID: sessionID, Version: 1, Codecs: []Codec{c},
		TelephoneEvent: offer.TelephoneEvent, Direction: offer.Direction.Reverse()}, nil
}

// Offer builds the node's offer (to an agent's phone), receiving at addr: both
// G.711 codecs, preferred first, and telephone-events as payload type 101.
func Offer(addr netip.AddrPort, sessionID uint64, preferred Codec) Description {
	codecs := []Codec{preferred, PCMA}
	if preferred == PCMA {
		codecs[1] = PCMU
	}
	return Description{Addr: addr, SessionID: sessionID, Version: 1, Codecs: codecs, TelephoneEvent: 101, Direction: SendRecv}
}
