package config

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSIPValidation(t *testing.T) {
	d := func(v time.Duration) Duration { return Duration(v) }
	cases := []struct {
		name   string
		mutate func(*SIPConfig)
		field  string
		want   string
	}{
		{"udp address", func(s *SIPConfig) { s.ListenUDP = "5060" }, "sip.listen_udp", `invalid address "5060"`},
		{"tcp port", func(s *SIPConfig) { s.ListenTCP = "127.0.0.1:70000" }, "sip.listen_tcp", `invalid port "70000"`},
		{"realm quote", func(s *SIPConfig) { s.Realm = `cc"mesh` }, "sip.realm", `invalid realm "cc\"mesh"`},
		{"algorithm", func(s *SIPConfig) { s.DigestAlgorithms = []string{"SHA-512"} }, "sip.digest_algorithms[0]", `unknown algorithm "SHA-512"`},
		{"duplicate algorithm", func(s *SIPConfig) { s.DigestAlgorithms = []string{"MD5", "MD5"} }, "sip.digest_algorithms[1]", `duplicate algorithm "MD5"`},
		{"nonce ttl", func(s *SIPConfig) { s.NonceTTL = d(time.Second) }, "sip.nonce_ttl", `"1s" out of range 10s..1h`},
		{"min expires", func(s *SIPConfig) { s.MinExpires = d(time.Millisecond) }, "sip.min_expires", `must be >= 1s, got "1ms"`},
		{"default expires", func(s *SIPConfig) { s.DefaultExpires = d(3 * time.Hour) }, "sip.default_expires", `"3h" must lie between`},
		{"max expires", func(s *SIPConfig) { s.MaxExpires, s.DefaultExpires = d(48*time.Hour), d(time.Hour) }, "sip.max_expires", `"48h" over 24h`},
		{"max contacts", func(s *SIPConfig) { s.MaxContacts = 21 }, "sip.max_contacts", "21 out of range 1..20"},
		{"rtp timeout", func(s *SIPConfig) { s.RTPTimeout = d(time.Second) }, "sip.rtp_timeout", `"1s" out of range 5s..1h`},
		{"tls without cert", func(s *SIPConfig) { s.ListenTLS = "127.0.0.1:5061" }, "sip.tls_cert", "required with listen_tls"},
		{"tls without key", func(s *SIPConfig) { s.ListenTLS, s.TLSCert = "127.0.0.1:5061", "c.pem" }, "sip.tls_key", "required with listen_tls"},
		{"tls files missing", func(s *SIPConfig) {
			s.ListenTLS, s.TLSCert, s.TLSKey = "127.0.0.1:5061", "/nonexistent/c.pem", "/nonexistent/k.pem"
		}, "sip.tls_cert", "cannot load the certificate and key"},
		{"cert without tls", func(s *SIPConfig) { s.TLSCert = "c.pem" }, "sip.listen_tls", "listen_tls is empty"},
		{"ws address", func(s *SIPConfig) { s.ListenWS = "nohost" }, "sip.listen_ws", `invalid address "nohost"`},
		{"max calls", func(s *SIPConfig) { s.MaxCalls = -1 }, "sip.max_calls", "-1 out of range 1..100000"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.mutate(&c.SIP)
			var ve *ValidationError
			if err := c.Validate(); !errors.As(err, &ve) {
				t.Fatalf("Validate = %v, want a ValidationError", err)
			}
			if len(ve.Problems) != 1 || ve.Problems[0].Field != tc.field || !strings.Contains(ve.Problems[0].Message, tc.want) {
				t.Fatalf("problems %v, want one at %s containing %q", ve.Problems, tc.field, tc.want)
			}
		})
	}
	// A config without the section runs without SIP, with the defaults filled in.
	c := Default()
	c.SIP = SIPConfig{}
	ApplyDefaults(c)
	if err := c.Validate(); err != nil || c.SIP.Enabled() || c.SIP.Realm != DefaultRealm || c.SIP.RTPTimeout != DefaultRTPTimeout {
		t.Fatalf("no sip section: %+v %v", c.SIP, err)
	}
}

func TestQueueSoundsValidated(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "welcome.wav")
	bad := filepath.Join(dir, "music.wav")
	if err := os.WriteFile(good, wav(8000, 1, 100), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, wav(44100, 2, 100), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Default()
	c.Queues[0].Sounds = QueueSounds{Announcement: good, Music: bad, Closed: filepath.Join(dir, "missing.wav")}
	var ve *ValidationError
	if err := c.Validate(); !errors.As(err, &ve) {
		t.Fatalf("Validate = %v", err)
	}
	got := map[string]string{}
	for _, pr := range ve.Problems {
		got[pr.Field] = pr.Message
	}
	if len(got) != 2 || !strings.Contains(got["queues[0].sounds.music"], "44100 Hz stereo") || !strings.Contains(got["queues[0].sounds.music"], "sox") ||
		!strings.Contains(got["queues[0].sounds.closed"], "missing.wav") {
		t.Fatalf("problems %v", ve.Problems)
	}
}

// wav returns a 16-bit PCM WAV with the given rate and channels.
func wav(rate, channels, samples int) []byte {
	var b bytes.Buffer
	le := func(v any) { _ = binary.Write(&b, binary.LittleEndian, v) }
	n := samples * channels * 2
	b.WriteString("RIFF")
	le(uint32(36 + n))
	b.WriteString("WAVEfmt ")
	le(uint32(16))
	le(uint16(1))
	le(uint16(channels))
	le(uint32(rate))
	le(uint32(rate * channels * 2))
	le(uint16(channels * 2))
	le(uint16(16))
	b.WriteString("data")
	le(uint32(n))
	b.Write(make([]byte, n))
	return b.Bytes()
}
