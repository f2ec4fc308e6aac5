package sdp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// An offer as sipp and common phones send it.
const phoneOffer = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" +
	"m=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"

func TestParseAndAnswer(t *testing.T) {
	m, err := Parse([]byte(phoneOffer))
	if err != nil {
		t.Fatal(err)
	}
	if m.Addr != netip.MustParseAddrPort("127.0.0.1:6000") || len(m.Codecs) != 2 || m.Codecs[0] != PCMA || m.TelephoneEvent != 101 || m.Direction != SendRecv || m.Ptime != 20 {
		t.Fatalf("parsed %+v", m)
	}
	ans, err := Answer(m, netip.MustParseAddrPort("127.0.0.1:20000"), 42)
	if err != nil {
		t.Fatal(err)
	}
	body := string(ans.Marshal())
	for _, want := range []string{"c=IN IP4 127.0.0.1\r\n", "m=audio 20000 RTP/AVP 8 101\r\n", "a=rtpmap:8 PCMA/8000\r\n", "a=rtpmap:101 telephone-event/8000\r\n", "a=sendrecv\r\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("answer lacks %q:\n%s", want, body)
		}
	}
	// Our own output parses back to the same media.
	back, err := Parse(ans.Marshal())
	if err != nil || back.Codecs[0] != PCMA || back.TelephoneEvent != 101 || back.Addr.Port() != 20000 {
		t.Fatalf("round trip: %+v %v", back, err)
	}
}

func TestDirectionsAndHold(t *testing.T) {
	for offered, answered := range map[string]Direction{"sendonly": RecvOnly, "recvonly": SendOnly, "inactive": Inactive, "sendrecv": SendRecv} {
		m, err := Parse([]byte(phoneOffer + "a=" + offered + "\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		if m.Direction.Reverse() != answered {
			t.Errorf("%s → %s, want %s", offered, m.Direction.Reverse(), answered)
		}
	}
	// Session-level direction applies when the stream has none (hold by some phones).
	held := strings.Replace(phoneOffer, "t=0 0\r\n", "t=0 0\r\na=sendonly\r\n", 1)
	if m, _ := Parse([]byte(held)); m.Direction != SendOnly {
		t.Fatalf("session-level sendonly: %s", m.Direction)
	}
}

func TestRejections(t *testing.T) {
	cases := map[string]error{
		"":        ErrMalformed,
		"garbage": ErrMalformed,
		strings.Replace(phoneOffer, "m=audio 6000 RTP/AVP 8 0 101", "m=audio 6000 RTP/AVP 18 101", 1): ErrNoCommon,
		strings.Replace(phoneOffer, "m=audio 6000", "m=video 6000", 1):                                ErrNoAudio,
		strings.Replace(phoneOffer, "m=audio 6000", "m=audio 0", 1):                                   ErrNoAudio,
		strings.Replace(phoneOffer, "c=IN IP4 127.0.0.1", "c=IN IP4 phone.example", 1):                ErrMalformed,
		strings.Replace(phoneOffer, "a=rtpmap:8 PCMA/8000", "a=rtpmap:8 G729/8000", 1) + "":           nil, // 0 still fine
	}
	for body, want := range cases {
		m, err := Parse([]byte(body))
		if err == nil {
			_, err = Choose(m)
		}
		if want == nil {
			if err != nil {
				t.Errorf("%q: %v", body, err)
			}
			continue
		}
		if !errors.Is(err, want) {
			t.Errorf("%.40q: got %v, want %v", body, err, want)
		}
	}
}

func TestOfferToAgent(t *testing.T) {
	d := Offer(netip.MustParseAddrPort("127.0.0.1:30000"), 7, PCMA)
	m, err := Parse(d.Marshal())
	if err != nil || len(m.Codecs) != 2 || m.Codecs[0] != PCMA || m.Codecs[1] != PCMU || m.TelephoneEvent != 101 {
		t.Fatalf("offer %+v %v\n%s", m, err, d.Marshal())
	}
}

// FuzzParse: session descriptions come from the network.
func FuzzParse(f *testing.F) {
	f.Add([]byte(phoneOffer))
	f.Add([]byte("v=0\r\nm=audio 1 RTP/AVP 0\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := Parse(body)
		if err != nil {
			return
		}
		if !m.Addr.IsValid() || m.Addr.Port() == 0 {
			t.Fatalf("accepted without an address: %+v", m)
		}
		if c, err := Choose(m); err == nil {
			if _, err := Parse(Description{Addr: m.Addr, Codecs: []Codec{c}, Direction: m.Direction}.Marshal()); err != nil {
				t.Fatalf("our SDP does not parse: %v", err)
			}
		}
	})
}
