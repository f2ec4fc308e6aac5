package sip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/sip/digest"
)

// Throttling of failed authentication, per source IP.
const (
	maxFailures   = 10              // failures allowed per window
	failureWindow = time.Minute     // the window
	blockFor      = 5 * time.Minute // how long a source is refused past the limit
	sweepEvery    = time.Second     // expiry sweep of bindings, nonces, failures
	maxSources    = 100000          // bound on tracked sources
)

// Directory resolves the user part of an address of record or a digest username —
// an agent's id or its DN — to the agent and its password. Safe for concurrent use.
type Directory interface {
	Lookup(user string) (id core.AgentID, password string, ok bool)
}

// Binding is one registered contact of an agent (RFC 3261 §10.3).
type Binding struct {
	Contact   string    `json:"contact"`
	ExpiresAt time.Time `json:"expires_at"`
	CallID    string    `json:"call_id"`
	CSeq      uint32    `json:"cseq"`
	Transport string    `json:"transport"`
	Source    string    `json:"source"`
	UserAgent string    `json:"user_agent,omitempty"`
	Since     time.Time `json:"since"`
}

type failState struct {
	count        int
	windowStart  time.Time
	blockedUntil time.Time
}

// Registrar authenticates REGISTER requests with digest and keeps the bindings of
// agents' phones. It is safe for concurrent use; one mutex guards the bindings and
// the failure counters.
type Registrar struct {
	cfg    config.SIPConfig
	dir    Directory
	algs   []digest.Algorithm
	nonces *digest.Nonces
	log    *events.Log
	clock  clock.Clock
	logger *slog.Logger

	// Counters for /metrics.
	authFailures, blockedRequests, challenges atomic.Uint64

	// mu guards bindings, failures and onReach.
	mu sync.Mutex
	// onReach, when set, learns when an agent gets its first phone or loses its
	// last (called without the registrar's lock).
	onReach  func(id core.AgentID, reachable bool)
	bindings map[core.AgentID][]*Binding
	failures map[string]*failState
}

// NewRegistrar returns a registrar for cfg (defaults applied and validated).
func NewRegistrar(cfg config.SIPConfig, dir Directory, log *events.Log, clk clock.Clock, logger *slog.Logger) (*Registrar, error) {
	r := &Registrar{cfg: cfg, dir: dir, log: log, clock: clk, logger: logger,
		bindings: map[core.AgentID][]*Binding{}, failures: map[string]*failState{}}
	for _, a := range cfg.DigestAlgorithms {
		alg, err := digest.ParseAlgorithm(a)
		if err != nil {
			return nil, fmt.Errorf("sip: %w", err)
		}
		r.algs = append(r.algs, alg)
	}
	r.nonces = digest.NewNonces(cfg.NonceTTL.D(), clk.Now)
	return r, nil
}

// OnReachability sets the function told when an agent gets its first registered
// phone or loses its last one. Call before the registrar serves.
func (r *Registrar) OnReachability(f func(id core.AgentID, reachable bool)) {
	r.mu.Lock()
	r.onReach = f
	r.mu.Unlock()
}

// reply sends a response built from req with extra headers.
func reply(tx sip.ServerTransaction, req *sip.Request, code int, reason string, hdrs ...sip.Header) {
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	_ = tx.Respond(res)
}

// RegistrarStats are the registrar's counters since start and its current bindings.
type RegistrarStats struct {
	Bindings        int
	Challenges      uint64
	AuthFailures    uint64
	BlockedRequests uint64
}

// Stats returns the counters.
func (r *Registrar) Stats() RegistrarStats {
	r.mu.Lock()
	n := 0
	for _, bs := range r.bindings {
		n += len(bs)
	}
	r.mu.Unlock()
	return RegistrarStats{Bindings: n, Challenges: r.challenges.Load(), AuthFailures: r.authFailures.Load(), BlockedRequests: r.blockedRequests.Load()}
}

func (r *Registrar) challenge(tx sip.ServerTransaction, req *sip.Request, stale bool) {
	r.challenges.Add(1)
	res := sip.NewResponseFromRequest(req, 401, "Unauthorized", nil)
	for _, a := range r.algs {
		res.AppendHeader(sip.NewHeader("WWW-Authenticate", digest.Challenge{
			Realm: r.cfg.Realm, Nonce: r.nonces.New(), Algorithm: a, Stale: stale,
		}.String()))
	}
	_ = tx.Respond(res)
}

func sourceIP(req *sip.Request) string {
	host, _, err := net.SplitHostPort(req.Source())
	if err != nil {
		return req.Source()
	}
	return host
}

// blocked reports whether src is refused for too many failures.
func (r *Registrar) blocked(src string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.failures[src]
	return ok && now.Before(f.blockedUntil)
}

func (r *Registrar) fail(src string, now time.Time) {
	r.authFailures.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.failures[src]
	if !ok {
		if len(r.failures) >= maxSources {
			return // bounded: a flood of sources is the network's problem to stop
		}
		f = &failState{windowStart: now}
		r.failures[src] = f
	}
	if now.Sub(f.windowStart) > failureWindow {
		f.count, f.windowStart = 0, now
	}
	f.count++
	if f.count >= maxFailures {
		f.blockedUntil = now.Add(blockFor)
		r.logger.Warn("sip: source blocked after failed authentications", "source", src, "failures", f.count, "for", blockFor.String())
	}
}

// HandleRegister processes one REGISTER (RFC 3261 §10.3) after digest authentication.
func (r *Registrar) HandleRegister(req *sip.Request, tx sip.ServerTransaction) {
	now := r.clock.Now()
	src := sourceIP(req)
	if r.blocked(src, now) {
		r.blockedRequests.Add(1)
		reply(tx, req, 403, "Forbidden (too many failed authentications)", sip.NewHeader("Retry-After", strconv.Itoa(int(blockFor.Seconds()))))
		return
	}
	to := req.To()
	if to == nil || to.Address.User == "" {
		reply(tx, req, 400, "Bad Request (To has no user)")
		return
	}
	auth := req.GetHeader("Authorization")
	if auth == nil {
		r.challenge(tx, req, false)
		return
	}
	cred, err := digest.Parse(auth.Value())
	if err != nil {
		reply(tx, req, 400, "Bad Request (malformed Authorization)")
		return
	}
	if cred.Realm != r.cfg.Realm || !r.offers(cred.Algorithm) {
		r.challenge(tx, req, false)
		return
	}
	agentID, password, ok := r.dir.Lookup(cred.Username)
	if !ok || cred.Verify(password, string(req.Method)) != nil {
		r.fail(src, now)
		reply(tx, req, 403, "Forbidden")
		return
	}
	switch err := r.nonces.Check(cred.Nonce, cred.NC, cred.QOP == "auth"); {
	case errors.Is(err, digest.ErrStale), errors.Is(err, digest.ErrBadNonce):
		// Right credentials on an old nonce (or one from before a restart): retry.
		r.challenge(tx, req, true)
		return
	case err != nil:
		r.fail(src, now)
		reply(tx, req, 403, "Forbidden (nonce replayed)")
		return
	}
	if aor, _, ok := r.dir.Lookup(to.Address.User); !ok || aor != agentID {
		reply(tx, req, 403, "Forbidden (credentials do not match the address of record)")
		return
	}
	r.register(req, tx, agentID, now)
}

func (r *Registrar) offers(a digest.Algorithm) bool {
	for _, x := range r.algs {
		if x == a {
			return true
		}
	}
	return false
}

type update struct {
	contact string
	expires time.Duration // 0 removes
}

// register applies the Contact headers of an authenticated REGISTER atomically.
func (r *Registrar) register(req *sip.Request, tx sip.ServerTransaction, id core.AgentID, now time.Time) {
	defExp := r.cfg.DefaultExpires.D()
	if h := req.GetHeader("Expires"); h != nil {
		n, err := strconv.ParseUint(strings.TrimSpace(h.Value()), 10, 32)
		if err != nil {
			reply(tx, req, 400, "Bad Request (Expires)")
			return
		}
		defExp = time.Duration(n) * time.Second
	}
	var ups []update
	wildcard := false
	for _, h := range req.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok {
			reply(tx, req, 400, "Bad Request (Contact)")
			return
		}
		if c.Address.Wildcard {
			wildcard = true
			continue
		}
		exp := defExp
		if v, ok := c.Params.Get("expires"); ok {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				reply(tx, req, 400, "Bad Request (Contact expires)")
				return
			}
			exp = time.Duration(n) * time.Second
		}
		if exp > 0 && exp < r.cfg.MinExpires.D() {
			reply(tx, req, 423, "Interval Too Brief", sip.NewHeader("Min-Expires", strconv.Itoa(int(r.cfg.MinExpires.D().Seconds()))))
			return
		}
		if exp > r.cfg.MaxExpires.D() {
			exp = r.cfg.MaxExpires.D()
		}
		ups = append(ups, update{contact: c.Address.String(), expires: exp})
	}
	if wildcard && (len(ups) > 0 || defExp != 0) {
		reply(tx, req, 400, "Bad Request (Contact * needs Expires: 0 and no other contact)")
		return
	}
	callID, cseq := "", uint32(0)
	if h := req.CallID(); h != nil {
		callID = h.Value()
	}
	if h := req.CSeq(); h != nil {
		cseq = h.SeqNo
	}
	ua := ""
	if h := req.GetHeader("User-Agent"); h != nil {
		ua = h.Value()
	}

	var evs []events.Event
	r.mu.Lock()
	cur := r.bindings[id]
	next := make([]*Binding, 0, len(cur)+len(ups))
	emit := func(action string, b *Binding, exp time.Duration) {
		evs = append(evs, events.Event{Time: now.UTC(), Type: events.TypeRegistration, Agent: id, Data: events.Registration{
			Action: action, Contact: b.Contact, ExpiresSeconds: int64(exp.Seconds()), Transport: b.Transport, Source: b.Source, UserAgent: b.UserAgent,
		}})
	}
	if wildcard {
		for _, b := range cur {
			if b.CallID == callID && cseq <= b.CSeq {
				r.mu.Unlock()
				reply(tx, req, 500, "Server Internal Error (CSeq out of order)", sip.NewHeader("Retry-After", "1"))
				return
			}
			emit("unregistered", b, 0)
		}
	} else {
		byContact := map[string]update{}
		for _, u := range ups {
			byContact[u.contact] = u
		}
		for _, b := range cur {
			u, ok := byContact[b.Contact]
			if !ok {
				next = append(next, b)
				continue
			}
			delete(byContact, b.Contact)
			if b.CallID == callID && cseq <= b.CSeq {
				r.mu.Unlock()
				reply(tx, req, 500, "Server Internal Error (CSeq out of order)", sip.NewHeader("Retry-After", "1"))
				return
			}
			if u.expires == 0 {
				emit("unregistered", b, 0)
				continue
			}
			nb := *b
			nb.ExpiresAt, nb.CallID, nb.CSeq, nb.Source, nb.Transport = now.Add(u.expires), callID, cseq, req.Source(), req.Transport()
			if ua != "" {
				nb.UserAgent = ua
			}
			next = append(next, &nb)
			emit("refreshed", &nb, u.expires)
		}
		for _, u := range ups {
			if _, fresh := byContact[u.contact]; !fresh || u.expires == 0 {
				continue
			}
			b := &Binding{Contact: u.contact, ExpiresAt: now.Add(u.expires), CallID: callID, CSeq: cseq,
				Transport: req.Transport(), Source: req.Source(), UserAgent: ua, Since: now}
			next = append(next, b)
			emit("registered", b, u.expires)
		}
		if len(next) > r.cfg.MaxContacts {
			r.mu.Unlock()
			reply(tx, req, 403, fmt.Sprintf("Forbidden (at most %d contacts per agent)", r.cfg.MaxContacts))
			return
		}
	}
	changed, onReach := (len(cur) > 0) != (len(next) > 0), r.onReach
	if len(next) == 0 {
		delete(r.bindings, id)
	} else {
		r.bindings[id] = next
	}
	var appendErr error
	if len(evs) > 0 {
		_, appendErr = r.log.Append(evs...)
	}
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	for _, b := range next {
		res.AppendHeader(sip.NewHeader("Contact", "<"+b.Contact+">;expires="+strconv.Itoa(int(b.ExpiresAt.Sub(now).Round(time.Second).Seconds()))))
	}
	r.mu.Unlock()
	if changed && onReach != nil {
		onReach(id, len(next) > 0)
	}
	if appendErr != nil {
		reply(tx, req, 500, "Server Internal Error")
		return
	}
	// RFC 3261 §20.17: an RFC 1123 date in GMT.
	res.AppendHeader(sip.NewHeader("Date", now.UTC().Format("Mon, 02 Jan 2006 15:04:05 GMT")))
	_ = tx.Respond(res)
}

// Bindings returns the live bindings of an agent, soonest-expiring last.
func (r *Registrar) Bindings(id core.AgentID) []Binding {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Binding, 0, len(r.bindings[id]))
	for _, b := range r.bindings[id] {
		out = append(out, *b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ExpiresAt.After(out[j].ExpiresAt) })
	return out
}

// Registered reports whether agent id has a live binding: Bindings without
// the copy and the sort, for the router's reachability check on every offer.
func (r *Registrar) Registered(id core.AgentID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.bindings[id]) > 0
}

// All returns every agent's bindings.
func (r *Registrar) All() map[core.AgentID][]Binding {
	r.mu.Lock()
	ids := make([]core.AgentID, 0, len(r.bindings))
	for id := range r.bindings {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	out := make(map[core.AgentID][]Binding, len(ids))
	for _, id := range ids {
		if b := r.Bindings(id); len(b) > 0 {
			out[id] = b
		}
	}
	return out
}

// Sweep removes expired bindings (emitting "expired"), old nonces and failure records.
func (r *Registrar) Sweep() {
	now := r.clock.Now()
	r.nonces.Sweep()
	var evs []events.Event
	var gone []core.AgentID
	r.mu.Lock()
	for id, bs := range r.bindings {
		keep := bs[:0]
		for _, b := range bs {
			if now.Before(b.ExpiresAt) {
				keep = append(keep, b)
				continue
			}
			evs = append(evs, events.Event{Time: now.UTC(), Type: events.TypeRegistration, Agent: id, Data: events.Registration{
				Action: "expired", Contact: b.Contact, Transport: b.Transport, Source: b.Source, UserAgent: b.UserAgent,
			}})
		}
		if len(keep) == 0 {
			delete(r.bindings, id)
			gone = append(gone, id)
		} else {
			r.bindings[id] = keep
		}
	}
	for src, f := range r.failures {
		if now.After(f.blockedUntil) && now.Sub(f.windowStart) > failureWindow {
			delete(r.failures, src)
		}
	}
	onReach := r.onReach
	r.mu.Unlock()
	if len(evs) > 0 {
		if _, err := r.log.Append(evs...); err != nil {
			r.logger.Error("sip: record expired registrations", "err", err)
		}
	}
	if onReach != nil {
		for _, id := range gone {
			onReach(id, false)
		}
	}
}

// run sweeps every second until ctx ends.
func (r *Registrar) run(ctx context.Context) error {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done(): // shutting down
			return nil
		case <-t.C: // expire bindings
			r.Sweep()
		}
	}
}
