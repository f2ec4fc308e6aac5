package sip

import (
	"bytes"
	"strings"

	"github.com/emiago/sipgo/sip"
)

// maxEcho bounds how much of a header a 400 echoes back.
const maxEcho = 1024

// badRequest builds the 400 answer to a datagram sipgo could not parse. A response
// must echo Via, From, To, Call-ID and CSeq (RFC 3261 §8.2.6.2), so they are taken
// from the raw text. It returns nil — drop silently — when the datagram is not a
// request (a response, garbage, a keepalive) or lacks a header the answer needs.
func badRequest(data []byte) []byte {
	text := string(data)
	if i := strings.Index(text, "\r\n\r\n"); i >= 0 {
		text = text[:i] // headers only; the body is not ours to echo
	}
	lines := strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n")
	if len(lines) < 2 || !isRequestLine(lines[0]) {
		return nil
	}
	var vias []string
	var from, to, callID, cseq string
	for _, raw := range lines[1:] {
		if raw == "" || raw[0] == ' ' || raw[0] == '\t' {
			continue // folded continuation lines are not echoed
		}
		name, value, ok := strings.Cut(raw, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		if value == "" || len(value) > maxEcho || strings.ContainsAny(value, "\r\n\x00") {
			continue
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "via", "v":
			vias = append(vias, value)
		case "from", "f":
			if from == "" {
				from = value
			}
		case "to", "t":
			if to == "" {
				to = value
			}
		case "call-id", "i":
			if callID == "" {
				callID = value
			}
		case "cseq":
			if cseq == "" {
				cseq = value
			}
		}
	}
	if len(vias) == 0 || from == "" || to == "" || callID == "" || cseq == "" {
		return nil
	}
	var b bytes.Buffer
	b.WriteString("SIP/2.0 400 Bad Request\r\n")
	for _, v := range vias {
		b.WriteString("Via: " + v + "\r\n")
	}
	b.WriteString("From: " + from + "\r\n")
	b.WriteString("To: " + to + "\r\n")
	b.WriteString("Call-ID: " + callID + "\r\n")
	b.WriteString("CSeq: " + cseq + "\r\n")
	b.WriteString("Warning: 399 ccmesh \"malformed request\"\r\n")
	b.WriteString("Content-Length: 0\r\n\r\n")
	// When the malformation is in a header we must echo (a broken Via, say), the
	// client could not match our answer either: drop instead.
	if _, err := responseParser.ParseSIP(b.Bytes()); err != nil {
		return nil
	}
	return b.Bytes()
}

// responseParser checks the answers badRequest builds; sipgo's Parser is stateless.
var responseParser = sip.NewParser()

// isRequestLine reports whether l looks like "METHOD uri SIP/2.0".
func isRequestLine(l string) bool {
	f := strings.Fields(l)
	if len(f) != 3 || f[2] != "SIP/2.0" || len(f[0]) > 32 {
		return false
	}
	for _, c := range f[0] {
		if (c < 'A' || c > 'Z') && c != '-' && c != '_' {
			return false
		}
	}
	return true
}
