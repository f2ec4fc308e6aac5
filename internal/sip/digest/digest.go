// Package digest implements the server side of HTTP Digest authentication as used
// by SIP (RFC 3261 §22.4, RFC 7616, RFC 8760 for SHA-256): challenges, parsing of
// the client's credentials, verification, and nonces that expire and cannot be
// replayed.
package digest

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Algorithm is a digest algorithm name as it appears on the wire.
type Algorithm string

// Supported algorithms (RFC 8760 §2: SHA-256 preferred, MD5 for older phones).
const (
	SHA256 Algorithm = "SHA-256"
	MD5    Algorithm = "MD5"
)

// ParseAlgorithm accepts the wire names, case-insensitively; empty means MD5 (RFC 2617).
func ParseAlgorithm(s string) (Algorithm, error) {
	switch strings.ToUpper(s) {
	case "", "MD5":
		return MD5, nil
	case "SHA-256":
		return SHA256, nil
	}
	return "", fmt.Errorf("digest: unsupported algorithm %q", s)
}

func (a Algorithm) hash() hash.Hash {
	if a == SHA256 {
		return sha256.New()
	}
	return md5.New()
}

// H is the algorithm's hash of s, in lower-case hex.
func (a Algorithm) H(s string) string {
	h := a.hash()
	h.Write([]byte(s))
	return hex.EncodeToString(h.Sum(nil))
}

// Challenge is one WWW-Authenticate value.
type Challenge struct {
	Realm     string
	Nonce     string
	Opaque    string
	Algorithm Algorithm
	// Stale tells the client its nonce expired but its credentials were right.
	Stale bool
}

// String renders the header value, always with qop="auth".
func (c Challenge) String() string {
	var b strings.Builder
	b.WriteString(`Digest realm="`)
	b.WriteString(c.Realm)
	b.WriteString(`", nonce="`)
	b.WriteString(c.Nonce)
	b.WriteString(`", algorithm=`)
	b.WriteString(string(c.Algorithm))
	b.WriteString(`, qop="auth"`)
	if c.Opaque != "" {
		b.WriteString(`, opaque="`)
		b.WriteString(c.Opaque)
		b.WriteString(`"`)
	}
	if c.Stale {
		b.WriteString(", stale=true")
	}
	return b.String()
}

// Credentials are the parsed Authorization (or Proxy-Authorization) header.
type Credentials struct {
	Username, Realm, Nonce, URI, Response string
	Algorithm                             Algorithm
	CNonce, QOP, Opaque                   string
	// NC is the nonce count (qop=auth), 0 without qop.
	NC uint64
}

// Errors of parsing and verification.
var (
	ErrMalformed = errors.New("digest: malformed credentials")
	ErrStale     = errors.New("digest: nonce expired")
	ErrReplay    = errors.New("digest: nonce count replayed")
	ErrBadNonce  = errors.New("digest: nonce not issued here")
	ErrMismatch  = errors.New("digest: wrong response")
)

// maxHeader bounds what Parse reads.
const maxHeader = 4096

// Parse reads a "Digest k=v, k="v", ..." header value. It rejects anything it does
// not fully understand rather than guessing.
func Parse(header string) (Credentials, error) {
	var c Credentials
	if len(header) > maxHeader {
		return c, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, maxHeader)
	}
	rest, ok := cutScheme(header)
	if !ok {
		return c, fmt.Errorf("%w: scheme is not Digest", ErrMalformed)
	}
	seen := map[string]bool{}
	for {
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			break
		}
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return c, fmt.Errorf("%w: expected key=value near %q", ErrMalformed, clip(rest))
		}
		key := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimLeft(rest[eq+1:], " \t")
		var val string
		if strings.HasPrefix(rest, `"`) {
			end := 1
			var sb strings.Builder
			for ; end < len(rest) && rest[end] != '"'; end++ {
				if rest[end] == '\\' && end+1 < len(rest) {
					end++
				}
				sb.WriteByte(rest[end])
			}
			if end >= len(rest) {
				return c, fmt.Errorf("%w: unterminated quoted value for %s", ErrMalformed, key)
			}
			val, rest = sb.String(), rest[end+1:]
		} else {
			end := strings.IndexByte(rest, ',')
			if end < 0 {
				end = len(rest)
			}
			val, rest = strings.TrimSpace(rest[:end]), rest[end:]
		}
		if seen[key] {
			return c, fmt.Errorf("%w: %s given twice", ErrMalformed, key)
		}
		seen[key] = true
		switch key {
		case "username":
			c.Username = val
		case "realm":
			c.Realm = val
		case "nonce":
			c.Nonce = val
		case "uri":
			c.URI = val
		case "response":
			c.Response = strings.ToLower(val)
		case "algorithm":
			a, err := ParseAlgorithm(val)
			if err != nil {
				return c, fmt.Errorf("%w: %v", ErrMalformed, err)
			}
			c.Algorithm = a
		case "cnonce":
			c.CNonce = val
		case "qop":
			c.QOP = val
		case "nc":
			n, err := strconv.ParseUint(val, 16, 32)
			if err != nil || len(val) != 8 {
				return c, fmt.Errorf("%w: nc %q is not 8 hex digits", ErrMalformed, clip(val))
			}
			c.NC = n
		case "opaque":
			c.Opaque = val
		default:
			// Unknown parameters are allowed by RFC 7616 and ignored.
		}
		rest = strings.TrimLeft(rest, " \t")
		if rest != "" {
			if rest[0] != ',' {
				return c, fmt.Errorf("%w: expected ',' near %q", ErrMalformed, clip(rest))
			}
			rest = rest[1:]
		}
	}
	if !seen["algorithm"] {
		c.Algorithm = MD5
	}
	switch {
	case c.Username == "" || c.Nonce == "" || c.URI == "" || c.Response == "":
		return c, fmt.Errorf("%w: username, nonce, uri and response are required", ErrMalformed)
	case c.QOP != "" && c.QOP != "auth":
		return c, fmt.Errorf("%w: qop %q not supported (want auth)", ErrMalformed, clip(c.QOP))
	case c.QOP == "auth" && (c.CNonce == "" || !seen["nc"]):
		return c, fmt.Errorf("%w: qop=auth needs cnonce and nc", ErrMalformed)
	}
	return c, nil
}

func cutScheme(h string) (string, bool) {
	h = strings.TrimLeft(h, " \t")
	if len(h) < 7 || !strings.EqualFold(h[:6], "Digest") || (h[6] != ' ' && h[6] != '\t') {
		return "", false
	}
	return h[7:], true
}

func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

// Expected computes the response a client with password must send for method.
func (c Credentials) Expected(password, method string) string {
	a := c.Algorithm
	ha1 := a.H(c.Username + ":" + c.Realm + ":" + password)
	ha2 := a.H(method + ":" + c.URI)
	if c.QOP == "auth" {
		return a.H(ha1 + ":" + c.Nonce + ":" + fmt.Sprintf("%08x", c.NC) + ":" + c.CNonce + ":auth:" + ha2)
	}
	return a.H(ha1 + ":" + c.Nonce + ":" + ha2)
}

// Verify checks the response in constant time.
func (c Credentials) Verify(password, method string) error {
	if subtle.ConstantTimeCompare([]byte(c.Expected(password, method)), []byte(c.Response)) != 1 {
		return ErrMismatch
	}
	return nil
}

// Nonces issues nonces and checks them: a nonce carries its issue time and an HMAC
// under a per-process key, so forged or expired nonces are refused without state;
// the nonce counts seen are remembered until expiry, so a (nonce, nc) pair is good
// once. Safe for concurrent use.
type Nonces struct {
	key []byte
	ttl time.Duration
	now func() time.Time

	// mu guards used.
	mu   sync.Mutex
	used map[string]*nonceUse
}

type nonceUse struct {
	expires time.Time
	maxNC   uint64
	noQOP   bool // used once without qop: no further use allowed
}

// NewNonces returns a nonce issuer whose nonces live ttl; now is the clock.
func NewNonces(ttl time.Duration, now func() time.Time) *Nonces {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(fmt.Sprintf("digest: crypto/rand: %v", err)) // never on Linux
	}
	return &Nonces{key: key, ttl: ttl, now: now, used: map[string]*nonceUse{}}
}

// New returns a fresh nonce.
func (n *Nonces) New() string {
	var b [8 + 8 + 16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(n.now().UnixNano()))
	if _, err := rand.Read(b[8:16]); err != nil {
		panic(fmt.Sprintf("digest: crypto/rand: %v", err))
	}
	m := hmac.New(sha256.New, n.key)
	m.Write(b[:16])
	copy(b[16:], m.Sum(nil)[:16])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Check validates nonce for one use with nonce count nc (0 without qop). It
// returns ErrBadNonce for a nonce not issued by this process, ErrStale once it
// expired, ErrReplay for a nonce count not above the last one accepted.
func (n *Nonces) Check(nonce string, nc uint64, qop bool) error {
	raw, err := base64.RawURLEncoding.DecodeString(nonce)
	if err != nil || len(raw) != 32 {
		return ErrBadNonce
	}
	m := hmac.New(sha256.New, n.key)
	m.Write(raw[:16])
	if !hmac.Equal(m.Sum(nil)[:16], raw[16:]) {
		return ErrBadNonce
	}
	now := n.now()
	issued := time.Unix(0, int64(binary.BigEndian.Uint64(raw[:8])))
	if now.Sub(issued) > n.ttl || issued.After(now.Add(time.Minute)) {
		return ErrStale
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	u, ok := n.used[nonce]
	switch {
	case !ok:
		u = &nonceUse{expires: issued.Add(n.ttl)}
		n.used[nonce] = u
	case u.noQOP || !qop:
		return ErrReplay
	case nc <= u.maxNC:
		return ErrReplay
	}
	if qop {
		u.maxNC = nc
	} else {
		u.noQOP = true
	}
	return nil
}

// Sweep forgets expired nonces; call it periodically.
func (n *Nonces) Sweep() {
	now := n.now()
	n.mu.Lock()
	defer n.mu.Unlock()
	for k, u := range n.used {
		if now.After(u.expires) {
			delete(n.used, k)
		}
	}
}

// Tracked returns how many nonces are remembered (for tests and metrics).
func (n *Nonces) Tracked() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.used)
}
