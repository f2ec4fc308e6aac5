package sip

import (
	"net/netip"
	"testing"
)

// UDP legs leave from the listener only where its address can send.
func TestListenerReaches(t *testing.T) {
	cases := []struct {
		listener, host string
		want           bool
	}{
		{"0.0.0.0", "10.0.0.7", true},
		{"::", "10.0.0.7", true},
		{"127.0.0.1", "127.0.0.1", true},
		{"127.0.0.1", "10.213.1.2", false}, // a loopback source reaches only loopback
		{"127.0.0.1", "phone.example", false},
		{"10.0.0.1", "127.0.0.1", true},
		{"10.0.0.1", "192.0.2.9", true},
		{"10.0.0.1", "phone.example", true},
		{"10.0.0.1", "2001:db8::9", false}, // not across families
		{"2001:db8::1", "10.0.0.7", false},
		{"2001:db8::1", "2001:db8::9", true},
		{"", "10.0.0.7", true}, // unknown: as before
	}
	for _, c := range cases {
		m := &calls{}
		if c.listener != "" {
			m.udpLocal = netip.MustParseAddr(c.listener)
		}
		if got := m.reaches(c.host); got != c.want {
			t.Errorf("listener %q reaches %q = %v, want %v", c.listener, c.host, got, c.want)
		}
	}
}
