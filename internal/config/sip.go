package config

import (
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"time"
)

// SIPConfig is the SIP edge of the node: listeners, digest authentication and
// registrations of agents' phones. With no listener set, SIP is off.
type SIPConfig struct {
	// ListenUDP and ListenTCP are host:port ("" disables that transport; port 0 picks one).
	ListenUDP string `yaml:"listen_udp" json:"listen_udp"`
	ListenTCP string `yaml:"listen_tcp" json:"listen_tcp"`
	// Realm is the digest realm phones authenticate in (default "ccmesh").
	Realm string `yaml:"realm" json:"realm"`
	// DigestAlgorithms are offered in this order (RFC 8760): SHA-256 and/or MD5
	// (default [SHA-256, MD5]).
	DigestAlgorithms []string `yaml:"digest_algorithms" json:"digest_algorithms"`
	// NonceTTL is how long a digest nonce stays valid (default 5m).
	NonceTTL Duration `yaml:"nonce_ttl" json:"nonce_ttl"`
	// MinExpires, DefaultExpires and MaxExpires bound registrations (defaults 60s,
	// 1h, 2h): shorter requests get 423 Interval Too Brief, longer ones are cut.
	MinExpires     Duration `yaml:"min_expires" json:"min_expires"`
	DefaultExpires Duration `yaml:"default_expires" json:"default_expires"`
	MaxExpires     Duration `yaml:"max_expires" json:"max_expires"`
	// MaxContacts bounds the phones one agent registers at once (default 5).
	MaxContacts int `yaml:"max_contacts" json:"max_contacts"`
	// RTPTimeout ends a bridged call when no RTP arrived from either party for
	// this long (default 60s).
	RTPTimeout Duration `yaml:"rtp_timeout" json:"rtp_timeout"`
	// ListenTLS (SIP over TLS, RFC 3261 §26) needs TLSCert and TLSKey, PEM files.
	ListenTLS string `yaml:"listen_tls" json:"listen_tls"`
	TLSCert   string `yaml:"tls_cert" json:"tls_cert"`
	TLSKey    string `yaml:"tls_key" json:"tls_key"`
	// ListenWS is SIP over WebSocket (RFC 7118), for browser phones.
	ListenWS string `yaml:"listen_ws" json:"listen_ws"`
	// MaxCalls bounds the calls in progress (each holds two media sockets); past
	// it new calls get 503 with Retry-After (default 2000).
	MaxCalls int `yaml:"max_calls" json:"max_calls"`
}

// Enabled reports whether any SIP listener is configured.
func (s *SIPConfig) Enabled() bool {
	return s.ListenUDP != "" || s.ListenTCP != "" || s.ListenTLS != "" || s.ListenWS != ""
}

// SIP defaults.
const (
	DefaultRealm          = "ccmesh"
	DefaultNonceTTL       = Duration(5 * time.Minute)
	DefaultMinExpires     = Duration(60 * time.Second)
	DefaultDefaultExpires = Duration(time.Hour)
	DefaultMaxExpires     = Duration(2 * time.Hour)
	DefaultMaxContacts    = 5
	DefaultRTPTimeout     = Duration(60 * time.Second)
	DefaultMaxCalls       = 2000
)

// DigestAlgorithmNames lists the supported digest algorithms.
var DigestAlgorithmNames = []string{"SHA-256", "MD5"}

func applySIPDefaults(s *SIPConfig) {
	if s.Realm == "" {
		s.Realm = DefaultRealm
	}
	if len(s.DigestAlgorithms) == 0 {
		s.DigestAlgorithms = append([]string(nil), DigestAlgorithmNames...)
	}
	if s.NonceTTL == 0 {
		s.NonceTTL = DefaultNonceTTL
	}
	if s.MinExpires == 0 {
		s.MinExpires = DefaultMinExpires
	}
	if s.DefaultExpires == 0 {
		s.DefaultExpires = DefaultDefaultExpires
	}
	if s.MaxExpires == 0 {
		s.MaxExpires = DefaultMaxExpires
	}
	if s.MaxContacts == 0 {
		s.MaxContacts = DefaultMaxContacts
	}
	if s.RTPTimeout == 0 {
		s.RTPTimeout = DefaultRTPTimeout
	}
	if s.MaxCalls == 0 {
		s.MaxCalls = DefaultMaxCalls
	}
}

func validateListen(p *problems, field, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		p.add(field, "invalid address %q (want host:port, e.g. 127.0.0.1:5060)", addr)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.add(field, "invalid port %q in %q (want 0..65535)", port, addr)
	} else if strings.ContainsAny(host, " /") {
		p.add(field, "invalid host %q in %q", host, addr)
	}
}

func (c *Config) validateSIP(p *problems) {
	s := &c.SIP
	if s.ListenUDP != "" {
		validateListen(p, "sip.listen_udp", s.ListenUDP)
	}
	if s.ListenTCP != "" {
		validateListen(p, "sip.listen_tcp", s.ListenTCP)
	}
	if s.ListenWS != "" {
		validateListen(p, "sip.listen_ws", s.ListenWS)
	}
	if s.ListenTLS != "" {
		validateListen(p, "sip.listen_tls", s.ListenTLS)
		switch {
		case s.TLSCert == "":
			p.add("sip.tls_cert", "required with listen_tls (a PEM certificate file)")
		case s.TLSKey == "":
			p.add("sip.tls_key", "required with listen_tls (a PEM private key file)")
		default:
			if _, err := tls.LoadX509KeyPair(s.TLSCert, s.TLSKey); err != nil {
				p.add("sip.tls_cert", "cannot load the certificate and key: %v", err)
			}
		}
	} else if s.TLSCert != "" || s.TLSKey != "" {
		p.add("sip.listen_tls", "tls_cert and tls_key are set but listen_tls is empty")
	}
	if s.MaxCalls < 1 || s.MaxCalls > 100000 {
		p.add("sip.max_calls", "%d out of range 1..100000", s.MaxCalls)
	}
	if s.Realm == "" || strings.ContainsAny(s.Realm, "\"\\\r\n") {
		p.add("sip.realm", "invalid realm %q (non-empty, no quotes, backslashes or line breaks)", s.Realm)
	}
	if len(s.DigestAlgorithms) == 0 {
		p.add("sip.digest_algorithms", "must name at least one of %s", strings.Join(DigestAlgorithmNames, ", "))
	}
	seen := map[string]bool{}
	for i, a := range s.DigestAlgorithms {
		f := "sip.digest_algorithms[" + strconv.Itoa(i) + "]"
		switch {
		case a != "SHA-256" && a != "MD5":
			p.add(f, "unknown algorithm %q (want one of %s)", a, strings.Join(DigestAlgorithmNames, ", "))
		case seen[a]:
			p.add(f, "duplicate algorithm %q", a)
		}
		seen[a] = true
	}
	if s.NonceTTL < Duration(10*time.Second) || s.NonceTTL > Duration(time.Hour) {
		p.add("sip.nonce_ttl", "%q out of range 10s..1h", s.NonceTTL)
	}
	if s.MinExpires < Duration(time.Second) {
		p.add("sip.min_expires", "must be >= 1s, got %q", s.MinExpires)
	}
	if s.DefaultExpires < s.MinExpires || s.DefaultExpires > s.MaxExpires {
		p.add("sip.default_expires", "%q must lie between min_expires %q and max_expires %q", s.DefaultExpires, s.MinExpires, s.MaxExpires)
	}
	if s.MaxExpires > Duration(24*time.Hour) {
		p.add("sip.max_expires", "%q over 24h", s.MaxExpires)
	}
	if s.MaxContacts < 1 || s.MaxContacts > 20 {
		p.add("sip.max_contacts", "%d out of range 1..20", s.MaxContacts)
	}
	if s.RTPTimeout < Duration(5*time.Second) || s.RTPTimeout > Duration(time.Hour) {
		p.add("sip.rtp_timeout", "%q out of range 5s..1h", s.RTPTimeout)
	}
}
