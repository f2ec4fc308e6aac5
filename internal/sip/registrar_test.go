package sip

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/sip/digest"
)

type dir map[string][2]string // user → {agent id, password}

func (d dir) Lookup(user string) (core.AgentID, string, bool) {
	e, ok := d[user]
	return core.AgentID(e[0]), e[1], ok
}

var testDir = dir{"ann": {"ann", "ann-pass"}, "1001": {"ann", "ann-pass"}, "bob": {"bob", "bob-pass"}}

type harness struct {
	t      *testing.T
	srv    *Server
	clk    *clock.Fake
	log    *events.Log
	client *sipgo.Client
	target string
	cseq   uint32
}

func newHarness(t *testing.T, mutate func(*config.SIPConfig)) *harness {
	t.Helper()
	cfg := config.SIPConfig{ListenUDP: "127.0.0.1:0"}
	if mutate != nil {
		mutate(&cfg)
	}
	c := config.Config{SIP: cfg}
	config.ApplyDefaults(&c)
	h := &harness{t: t, clk: clock.NewFake(time.Now()), log: events.NewLog(0, 1<<12, false)}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	var err error
	h.srv, err = New(Params{Config: c.SIP, Directory: testDir, Log: h.log, Clock: h.clk, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	udp, _ := h.srv.Addrs()
	h.target = udp
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("test-phone"), sipgo.WithUserAgentHostname("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if h.client, err = sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.client.Close(); _ = ua.Close() })
	return h
}

// req builds a REGISTER for aor with the given contacts and Expires (-1: none).
func (h *harness) req(aor, callID string, expires int, contacts ...string) *sip.Request {
	var uri sip.Uri
	if err := sip.ParseUri("sip:"+h.target, &uri); err != nil {
		h.t.Fatal(err)
	}
	r := sip.NewRequest(sip.REGISTER, uri)
	r.AppendHeader(sip.NewHeader("From", "<sip:"+aor+"@127.0.0.1>;tag=t1"))
	r.AppendHeader(sip.NewHeader("To", "<sip:"+aor+"@127.0.0.1>"))
	cid := sip.CallIDHeader(callID)
	r.AppendHeader(&cid)
	h.cseq++
	r.AppendHeader(&sip.CSeqHeader{SeqNo: h.cseq, MethodName: sip.REGISTER})
	for _, c := range contacts {
		r.AppendHeader(sip.NewHeader("Contact", c))
	}
	if expires >= 0 {
		r.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(expires)))
	}
	return r
}

func (h *harness) do(r *sip.Request) *sip.Response {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A new transaction each time: a reused Via branch is a retransmission, which
	// the server rightly answers with its previous response.
	r = r.Clone()
	r.RemoveHeader("Via")
	res, err := h.client.Do(ctx, r)
	if err != nil {
		h.t.Fatalf("%s: %v", r.Method, err)
	}
	return res
}

// challenge sends r unauthenticated and returns the challenge for alg.
func (h *harness) challenge(r *sip.Request, alg digest.Algorithm) (string, []string) {
	h.t.Helper()
	res := h.do(r.Clone())
	if res.StatusCode != 401 {
		h.t.Fatalf("unauthenticated REGISTER: %d %s", res.StatusCode, res.Reason)
	}
	var all []string
	nonce := ""
	for _, hd := range res.GetHeaders("WWW-Authenticate") {
		all = append(all, hd.Value())
		if strings.Contains(hd.Value(), "algorithm="+string(alg)+",") {
			nonce = between(hd.Value(), `nonce="`, `"`)
		}
	}
	if nonce == "" {
		h.t.Fatalf("no %s challenge in %v", alg, all)
	}
	return nonce, all
}

func between(s, a, b string) string {
	i := strings.Index(s, a)
	if i < 0 {
		return ""
	}
	s = s[i+len(a):]
	j := strings.Index(s, b)
	if j < 0 {
		return ""
	}
	return s[:j]
}

// authorize adds digest credentials for user/password with nonce and nc.
func authorize(r *sip.Request, alg digest.Algorithm, user, pass, realm, nonce string, nc uint64) {
	c := digest.Credentials{Username: user, Realm: realm, Nonce: nonce, URI: r.Recipient.String(), Algorithm: alg, CNonce: "c0ffee", QOP: "auth", NC: nc}
	c.Response = c.Expected(pass, "REGISTER")
	r.RemoveHeader("Authorization")
	r.AppendHeader(sip.NewHeader("Authorization", fmt.Sprintf(
		`Digest username="%s", realm="%s", nonce="%s", uri="%s", response="%s", algorithm=%s, cnonce="%s", qop=auth, nc=%08x`,
		c.Username, c.Realm, c.Nonce, c.URI, c.Response, c.Algorithm, c.CNonce, c.NC)))
}

// register authenticates and sends r; it returns the final response.
func (h *harness) register(r *sip.Request, alg digest.Algorithm, user, pass string) *sip.Response {
	h.t.Helper()
	nonce, _ := h.challenge(r, alg)
	r2 := r.Clone()
	h.cseq++
	r2.CSeq().SeqNo = h.cseq
	authorize(r2, alg, user, pass, "ccmesh", nonce, 1)
	return h.do(r2)
}

func TestRegisterBothAlgorithmsAndAOR(t *testing.T) {
	h := newHarness(t, nil)
	_, all := h.challenge(h.req("ann", "c1", 300, "<sip:ann@127.0.0.1:5555>"), digest.SHA256)
	if len(all) != 2 || !strings.Contains(all[0], "SHA-256") || !strings.Contains(all[1], "MD5") {
		t.Fatalf("challenges %v: want SHA-256 then MD5 (RFC 8760)", all)
	}
	if res := h.register(h.req("ann", "c1", 300, "<sip:ann@127.0.0.1:5555>"), digest.SHA256, "ann", "ann-pass"); res.StatusCode != 200 {
		t.Fatalf("SHA-256: %d %s", res.StatusCode, res.Reason)
	}
	// By DN, with MD5, a second phone.
	res := h.register(h.req("1001", "c2", 300, "<sip:1001@127.0.0.1:6666>"), digest.MD5, "1001", "ann-pass")
	if res.StatusCode != 200 || len(res.GetHeaders("Contact")) != 2 {
		t.Fatalf("MD5 by DN: %d %s, contacts %v", res.StatusCode, res.Reason, res.GetHeaders("Contact"))
	}
	if b := h.srv.Registrar().Bindings("ann"); len(b) != 2 {
		t.Fatalf("bindings %+v", b)
	}
	if !h.srv.Registrar().Registered("ann") || h.srv.Registrar().Registered("bob") {
		t.Fatal("Registered: want ann (two bindings) and not bob (none)")
	}
	// Bob's credentials cannot register Ann's address of record.
	if res := h.register(h.req("ann", "c3", 300, "<sip:x@127.0.0.1:7777>"), digest.MD5, "bob", "bob-pass"); res.StatusCode != 403 {
		t.Fatalf("AOR mismatch: %d", res.StatusCode)
	}
}

func TestRegisterFailuresAndReplay(t *testing.T) {
	h := newHarness(t, nil)
	r := h.req("ann", "c1", 300, "<sip:ann@127.0.0.1:5555>")
	if res := h.register(r, digest.MD5, "ann", "wrong"); res.StatusCode != 403 {
		t.Fatalf("wrong password: %d", res.StatusCode)
	}
	if res := h.register(h.req("nobody", "c9", 300, "<sip:n@127.0.0.1:1>"), digest.MD5, "nobody", "x"); res.StatusCode != 403 {
		t.Fatalf("unknown user: %d", res.StatusCode)
	}
	// Replay: the same nonce and nonce count twice.
	nonce, _ := h.challenge(r, digest.SHA256)
	first := r.Clone()
	authorize(first, digest.SHA256, "ann", "ann-pass", "ccmesh", nonce, 1)
	if res := h.do(first); res.StatusCode != 200 {
		t.Fatalf("first use: %d", res.StatusCode)
	}
	again := r.Clone()
	h.cseq++
	again.CSeq().SeqNo = h.cseq
	authorize(again, digest.SHA256, "ann", "ann-pass", "ccmesh", nonce, 1)
	if res := h.do(again); res.StatusCode != 403 {
		t.Fatalf("replayed nc: %d %s", res.StatusCode, res.Reason)
	}
	// A higher nonce count on the same nonce is fine.
	h.cseq++
	again.CSeq().SeqNo = h.cseq
	authorize(again, digest.SHA256, "ann", "ann-pass", "ccmesh", nonce, 2)
	if res := h.do(again); res.StatusCode != 200 {
		t.Fatalf("next nc: %d %s", res.StatusCode, res.Reason)
	}
	// Expired nonce with right credentials → 401 stale=true.
	nonce, _ = h.challenge(r, digest.SHA256)
	h.clk.Advance(6 * time.Minute)
	late := r.Clone()
	h.cseq++
	late.CSeq().SeqNo = h.cseq
	authorize(late, digest.SHA256, "ann", "ann-pass", "ccmesh", nonce, 1)
	res := h.do(late)
	if res.StatusCode != 401 || !strings.Contains(res.GetHeader("WWW-Authenticate").Value(), "stale=true") {
		t.Fatalf("stale nonce: %d %v", res.StatusCode, res.GetHeader("WWW-Authenticate"))
	}
	// Malformed Authorization → 400.
	bad := r.Clone()
	bad.AppendHeader(sip.NewHeader("Authorization", `Digest username="ann", nonce=`))
	if res := h.do(bad); res.StatusCode != 400 {
		t.Fatalf("malformed credentials: %d", res.StatusCode)
	}
}

func TestRegisterExpiryRulesAndRemoval(t *testing.T) {
	h := newHarness(t, func(c *config.SIPConfig) { c.MaxContacts = 2 })
	// Too brief → 423 with Min-Expires.
	res := h.register(h.req("ann", "c1", 10, "<sip:ann@127.0.0.1:5555>"), digest.MD5, "ann", "ann-pass")
	if res.StatusCode != 423 || res.GetHeader("Min-Expires") == nil || res.GetHeader("Min-Expires").Value() != "60" {
		t.Fatalf("too brief: %d %v", res.StatusCode, res.GetHeader("Min-Expires"))
	}
	// Too long → cut to max (2h); contact's own expires param wins over the header.
	res = h.register(h.req("ann", "c1", 99999, "<sip:ann@127.0.0.1:5555>", "<sip:ann@127.0.0.1:5556>;expires=120"), digest.MD5, "ann", "ann-pass")
	if res.StatusCode != 200 {
		t.Fatalf("register: %d %s", res.StatusCode, res.Reason)
	}
	b := h.srv.Registrar().Bindings("ann")
	if len(b) != 2 || b[0].ExpiresAt.Sub(h.clk.Now()) != 2*time.Hour || b[1].ExpiresAt.Sub(h.clk.Now()) != 2*time.Minute {
		t.Fatalf("bindings %+v", b)
	}
	// A third phone is over max_contacts.
	if res := h.register(h.req("ann", "c2", 300, "<sip:ann@127.0.0.1:5557>"), digest.MD5, "ann", "ann-pass"); res.StatusCode != 403 {
		t.Fatalf("max contacts: %d", res.StatusCode)
	}
	// Contact * needs Expires: 0.
	if res := h.register(h.req("ann", "c1", 300, "*"), digest.MD5, "ann", "ann-pass"); res.StatusCode != 400 {
		t.Fatalf("* with expires: %d", res.StatusCode)
	}
	// Expiry: the 2-minute binding goes, with an event.
	h.clk.Advance(121 * time.Second)
	h.srv.Registrar().Sweep()
	if b := h.srv.Registrar().Bindings("ann"); len(b) != 1 || b[0].Contact != "sip:ann@127.0.0.1:5555" {
		t.Fatalf("after expiry %+v", b)
	}
	// Unregister everything with * and Expires: 0.
	if res := h.register(h.req("ann", "c1", 0, "*"), digest.MD5, "ann", "ann-pass"); res.StatusCode != 200 {
		t.Fatalf("unregister *: %d %s", res.StatusCode, res.Reason)
	}
	if b := h.srv.Registrar().Bindings("ann"); len(b) != 0 {
		t.Fatalf("after unregister %+v", b)
	}
	if h.srv.Registrar().Registered("ann") {
		t.Fatal("Registered after unregister *: want false")
	}
	evs, _, _ := h.log.Read(0, 100, nil)
	var actions []string
	for _, ev := range evs {
		if d, ok := ev.Data.(events.Registration); ok {
			actions = append(actions, d.Action)
		}
	}
	if fmt.Sprint(actions) != "[registered registered expired unregistered]" {
		t.Fatalf("registration events %v", actions)
	}
}

func TestRegisterCSeqOrderAndRefresh(t *testing.T) {
	h := newHarness(t, nil)
	if res := h.register(h.req("ann", "c1", 300, "<sip:ann@127.0.0.1:5555>"), digest.MD5, "ann", "ann-pass"); res.StatusCode != 200 {
		t.Fatalf("register: %d", res.StatusCode)
	}
	// Refresh with a higher CSeq on the same Call-ID.
	h.clk.Advance(time.Minute)
	if res := h.register(h.req("ann", "c1", 600, "<sip:ann@127.0.0.1:5555>"), digest.MD5, "ann", "ann-pass"); res.StatusCode != 200 {
		t.Fatalf("refresh: %d", res.StatusCode)
	}
	if b := h.srv.Registrar().Bindings("ann"); len(b) != 1 || b[0].ExpiresAt.Sub(h.clk.Now()) != 10*time.Minute {
		t.Fatalf("refreshed %+v", b)
	}
	// An older CSeq on the same Call-ID is refused (RFC 3261 §10.3 step 7).
	h.cseq = 1
	if res := h.register(h.req("ann", "c1", 600, "<sip:ann@127.0.0.1:5555>"), digest.MD5, "ann", "ann-pass"); res.StatusCode != 500 {
		t.Fatalf("stale CSeq: %d", res.StatusCode)
	}
}

func TestThrottleAndHygiene(t *testing.T) {
	h := newHarness(t, nil)
	for i := 0; i < maxFailures; i++ {
		if res := h.register(h.req("ann", "c1", 300, "<sip:ann@127.0.0.1:5555>"), digest.MD5, "ann", "guess"); res.StatusCode != 403 {
			t.Fatalf("failure %d: %d", i, res.StatusCode)
		}
	}
	res := h.do(h.req("ann", "c1", 300, "<sip:ann@127.0.0.1:5555>"))
	if res.StatusCode != 403 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("blocked source: %d %s", res.StatusCode, res.Reason)
	}
	if st := h.srv.Registrar().Stats(); st.AuthFailures != maxFailures || st.BlockedRequests != 1 || st.Challenges != maxFailures {
		t.Fatalf("stats %+v", st)
	}
	h.clk.Advance(blockFor + failureWindow + time.Second)
	h.srv.Registrar().Sweep()
	if res := h.register(h.req("ann", "c1", 300, "<sip:ann@127.0.0.1:5555>"), digest.MD5, "ann", "ann-pass"); res.StatusCode != 200 {
		t.Fatalf("after the block: %d", res.StatusCode)
	}
	// OPTIONS keepalive; an unsupported method gets 405 with Allow.
	var uri sip.Uri
	_ = sip.ParseUri("sip:"+h.target, &uri)
	if res := h.do(sip.NewRequest(sip.OPTIONS, uri)); res.StatusCode != 200 || res.GetHeader("Allow") == nil {
		t.Fatalf("OPTIONS: %d", res.StatusCode)
	}
	res = h.do(sip.NewRequest(sip.SUBSCRIBE, uri))
	if res.StatusCode != 405 || !strings.Contains(res.GetHeader("Allow").Value(), "REGISTER") {
		t.Fatalf("SUBSCRIBE: %d %v", res.StatusCode, res.GetHeader("Allow"))
	}
}

// The registrar tells when an agent gets its first phone and loses its last
// one: by un-registration and by expiry, not on refreshes or extra phones.
func TestReachabilityChanges(t *testing.T) {
	h := newHarness(t, nil)
	var mu sync.Mutex
	var got []string
	h.srv.Registrar().OnReachability(func(id core.AgentID, ok bool) {
		mu.Lock()
		got = append(got, fmt.Sprintf("%s:%v", id, ok))
		mu.Unlock()
	})
	reg := func(callID string, expires int, contacts ...string) {
		t.Helper()
		if res := h.register(h.req("ann", callID, expires, contacts...), digest.MD5, "ann", "ann-pass"); res.StatusCode != 200 {
			t.Fatalf("register: %d %s", res.StatusCode, res.Reason)
		}
	}
	reg("c1", 300, "<sip:ann@127.0.0.1:5555>")
	reg("c2", 300, "<sip:ann@127.0.0.1:5556>") // a second phone
	reg("c1", 120, "<sip:ann@127.0.0.1:5555>") // a refresh
	reg("c1", 0, "*")                          // both gone
	reg("c3", 60, "<sip:ann@127.0.0.1:5557>")
	h.clk.Advance(61 * time.Second)
	h.srv.Registrar().Sweep() // expired
	mu.Lock()
	defer mu.Unlock()
	if want := "[ann:true ann:false ann:true ann:false]"; fmt.Sprint(got) != want {
		t.Fatalf("reachability changes %v, want %s", got, want)
	}
}
