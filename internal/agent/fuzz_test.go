package agent

import (
	"testing"
)

// FuzzParseToken: tokens come back from the network (API, cluster RPC); parsing must
// never panic, and whatever parses must print back to an equivalent token.
func FuzzParseToken(f *testing.F) {
	for _, s := range []string{"ann:7:1", "a.b-c:18446744073709551615:0", "::", "ann:1", ":1:1", "x:y:z", "ann:+1:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("%q → %+v → %q → %+v, %v", s, tok, tok.String(), again, err)
		}
	})
}
