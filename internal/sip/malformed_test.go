package sip

import (
	"net"

	"github.com/emiago/sipgo/sip"
	"strings"
	"testing"
	"time"
)

const brokenRegister = "REGISTER sip:127.0.0.1 SIP/2.0\r\n" +
	"Via: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bK-x1\r\n" +
	"From: <sip:ann@127.0.0.1>;tag=1\r\n" +
	"To: <sip:ann@127.0.0.1>\r\n" +
	"Call-ID: broken-1\r\n" +
	"CSeq: 1 REGISTER\r\n" +
	"this line has no colon\r\n" +
	"Content-Length: 0\r\n\r\n"

func TestBadRequestBuilder(t *testing.T) {
	res := string(badRequest([]byte(brokenRegister)))
	for _, want := range []string{"SIP/2.0 400 Bad Request\r\n", "Via: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bK-x1\r\n",
		"Call-ID: broken-1\r\n", "CSeq: 1 REGISTER\r\n", "To: <sip:ann@127.0.0.1>\r\n", "Content-Length: 0\r\n\r\n"} {
		if !strings.Contains(res, want) {
			t.Errorf("400 lacks %q:\n%s", want, res)
		}
	}
	for _, data := range []string{
		"SIP/2.0 200 OK\r\nVia: x\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 X\r\n\r\n", // a response
		"garbage", "\r\n\r\n", "REGISTER sip:x SIP/2.0\r\nVia: x\r\n\r\n", // no From/To/...
		"register sip:x SIP/2.0\r\nVia: x\r\nFrom: a\r\nTo: b\r\nCall-ID: c\r\nCSeq: 1 X\r\n\r\n", // not a method token
	} {
		if res := badRequest([]byte(data)); res != nil {
			t.Errorf("badRequest(%q) = %q, want nil", data, res)
		}
	}
}

func TestMalformedDatagramsOverUDP(t *testing.T) {
	h := newHarness(t, nil)
	conn, err := net.Dial("udp", h.target)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	read := func() string {
		buf := make([]byte, 4096)
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := conn.Read(buf)
		if err != nil {
			return ""
		}
		return string(buf[:n])
	}
	if _, err := conn.Write([]byte(brokenRegister)); err != nil {
		t.Fatal(err)
	}
	if res := read(); !strings.HasPrefix(res, "SIP/2.0 400 ") || !strings.Contains(res, "Call-ID: broken-1") {
		t.Fatalf("malformed request: %q", res)
	}
	for _, junk := range []string{"\r\n\r\n", "garbage\x00\x01", "SIP/2.0 200 OK\r\n\r\n"} {
		if _, err := conn.Write([]byte(junk)); err != nil {
			t.Fatal(err)
		}
		if res := read(); res != "" {
			t.Fatalf("answered %q with %q", junk, res)
		}
	}
	// The server still serves well-formed requests afterwards.
	valid := strings.Replace(strings.Replace(brokenRegister, "this line has no colon\r\n", "", 1), "REGISTER sip", "OPTIONS sip", 1)
	valid = strings.Replace(valid, "CSeq: 1 REGISTER", "CSeq: 1 OPTIONS", 1)
	if _, err := conn.Write([]byte(valid)); err != nil {
		t.Fatal(err)
	}
	if res := read(); !strings.HasPrefix(res, "SIP/2.0 200 ") {
		t.Fatalf("OPTIONS after junk: %q", res)
	}
}

// FuzzBadRequest: the builder reads attacker-controlled bytes; it must not panic,
// and what it answers must be a 400 that parses and echoes the request's Call-ID.
func FuzzBadRequest(f *testing.F) {
	f.Add([]byte(brokenRegister))
	f.Add([]byte("INVITE sip:a SIP/2.0\nv: x\nf: a\nt: b\ni: c\nCSeq: 1 INVITE\n\n"))
	f.Add([]byte("garbage"))
	s := sip.NewParser()
	f.Fuzz(func(t *testing.T, data []byte) {
		res := badRequest(data)
		if res == nil {
			return
		}
		msg, err := s.ParseSIP(res)
		if err != nil {
			t.Fatalf("our 400 does not parse: %v\n%q\nfrom %q", err, res, data)
		}
		r, ok := msg.(*sip.Response)
		if !ok || r.StatusCode != 400 || r.CallID() == nil || !strings.Contains(string(data), r.CallID().Value()) {
			t.Fatalf("answer %q to %q", res, data)
		}
	})
}
