package digest

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
func TestRFC7616Vectors(t *testing.T) {
	for _, tc := range []struct {
		alg  string
		want string
	}{
		{"MD5", "8ca523f5e9506fed4657c9700eebdbec"},
		{"SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"},
	} {
		h := `Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", algorithm=` + tc.alg +
			`, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, response="` +
			tc.want + `", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"`
		c, err := Parse(h)
		if err != nil {
			t.Fatalf("%s: %v", tc.alg, err)
		}
		if got := c.Expected("Circle of Life", "GET"); got != tc.want {
			t.Errorf("%s: response %s, want %s", tc.alg, got, tc.want)
		}
		if err := c.Verify("Circle of Life", "GET"); err != nil {
			t.Errorf("%s: verify: %v", tc.alg, err)
		}
		if err := c.Verify("circle of life", "GET"); !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: wrong password: %v", tc.alg, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, h := range []string{
		``, `Basic dXNlcjpwYXNz`, `Digest`, `Digest username="a"`,
		`Digest username="a", nonce="n", uri="sip:x", response="r", qop=auth-int`,
		`Digest username="a", nonce="n", uri="sip:x", response="r", qop=auth`, // no cnonce/nc
		`Digest username="a", nonce="n", uri="sip:x", response="r", nc=1, cnonce="c", qop=auth`,
		`Digest username="a", username="b", nonce="n", uri="sip:x", response="r"`,
		`Digest username="a, nonce="n"`, `Digest username="a" nonce="n"`,
		`Digest username="a", nonce="n", uri="sip:x", response="r", algorithm=SHA-512-256`,
		`Digest =x`, "Digest " + strings.Repeat("x", 5000),
	} {
		if _, err := Parse(h); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) = %v, want ErrMalformed", clip(h), err)
		}
	}
	c, err := Parse(`digest  username="1001",realm="ccmesh",nonce="n",uri="sip:127.0.0.1",response="ABC",unknown=x`)
	if err != nil || c.Username != "1001" || c.Algorithm != MD5 || c.Response != "abc" {
		t.Fatalf("lenient parse: %+v %v", c, err)
	}
}

func TestNonces(t *testing.T) {
	now := time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	n := NewNonces(time.Minute, clock)
	a := n.New()
	if a == n.New() {
		t.Fatal("nonces repeat")
	}
	if err := n.Check(a, 1, true); err != nil {
		t.Fatal(err)
	}
	if err := n.Check(a, 1, true); !errors.Is(err, ErrReplay) {
		t.Fatalf("same nc again: %v", err)
	}
	if err := n.Check(a, 2, true); err != nil {
		t.Fatalf("next nc: %v", err)
	}
	if err := n.Check(a, 0, false); !errors.Is(err, ErrReplay) {
		t.Fatalf("qop-less reuse: %v", err)
	}
	b := n.New()
	if err := n.Check(b, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := n.Check(b, 0, false); !errors.Is(err, ErrReplay) {
		t.Fatalf("qop-less replay: %v", err)
	}
	// Forged: another process's key, or a flipped byte.
	other := NewNonces(time.Minute, clock).New()
	if err := n.Check(other, 1, true); !errors.Is(err, ErrBadNonce) {
		t.Fatalf("foreign nonce: %v", err)
	}
	if err := n.Check("not-base64!", 1, true); !errors.Is(err, ErrBadNonce) {
		t.Fatalf("garbage nonce: %v", err)
	}
	c := n.New()
	advance(time.Minute + time.Second)
	if err := n.Check(c, 1, true); !errors.Is(err, ErrStale) {
		t.Fatalf("expired nonce: %v", err)
	}
	if n.Tracked() != 2 {
		t.Fatalf("tracked %d", n.Tracked())
	}
	n.Sweep()
	if n.Tracked() != 0 {
		t.Fatalf("after sweep %d", n.Tracked())
	}
}

func TestChallengeString(t *testing.T) {
	got := Challenge{Realm: "ccmesh", Nonce: "abc", Algorithm: SHA256, Stale: true}.String()
	want := `Digest realm="ccmesh", nonce="abc", algorithm=SHA-256, qop="auth", stale=true`
	if got != want {
		t.Fatalf("got %s", got)
	}
}

// FuzzParse: credentials come from the network. Parse must never panic, and what
// it accepts must carry the required fields.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`Digest username="1001", realm="ccmesh", nonce="abc", uri="sip:127.0.0.1", response="0123", algorithm=MD5`,
		`Digest username="a", realm="r", nonce="n", uri="sip:x", response="r", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c"`,
		`Digest username="a\"b", nonce="n", uri="u", response="r"`, `Digest `, `Digest a=`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		c, err := Parse(h)
		if err != nil {
			return
		}
		if c.Username == "" || c.Nonce == "" || c.URI == "" || c.Response == "" {
			t.Fatalf("accepted without required fields: %q → %+v", h, c)
		}
		_ = c.Expected("pw", "REGISTER")
	})
}
