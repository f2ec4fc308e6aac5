package agent

import (
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
)

var t0 = time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)

type fixture struct {
	m    *Manager
	clk  *clock.Fake
	log  *events.Log
	mu   sync.Mutex
	ends []LeaseEnd
}

func newFixture(t testing.TB, policy config.MissedOfferAction, agents ...config.Agent) *fixture {
	t.Helper()
	if len(agents) == 0 {
		agents = []config.Agent{{ID: "ann", Capacity: map[core.Channel]int{core.ChannelVoice: 1, core.ChannelChat: 2, core.ChannelTask: 1, core.ChannelCallback: 0}}}
	}
	f := &fixture{clk: clock.NewFake(t0), log: events.NewLog(0, 1<<18, false)}
	f.m = NewManager(Params{Node: "n1", Agents: agents, Clock: f.clk, Log: f.log, MissedOffer: policy, Epoch: 7})
	f.m.SetObserver(ObserverFunc(func(e LeaseEnd) {
		f.mu.Lock()
		f.ends = append(f.ends, e)
		f.mu.Unlock()
	}))
	return f
}

func (f *fixture) state(t *testing.T, id core.AgentID) events.AgentState {
	t.Helper()
	v, err := f.m.Snapshot(id)
	if err != nil {
		t.Fatal(err)
	}
	return v.State
}

func (f *fixture) reserve(t *testing.T, ix string, ch core.Channel) Token {
	t.Helper()
	g, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: core.InteractionID(ix), Channel: ch, TTL: 10 * time.Second})
	if err != nil {
		t.Fatalf("reserve %s: %v", ix, err)
	}
	return g.Token
}

// TestTransitions walks every agent state transition from a given starting point.
func TestTransitions(t *testing.T) {
	type step func(t *testing.T, f *fixture, tok *Token) error
	login := func(t *testing.T, f *fixture, _ *Token) error { return f.m.Login("ann") }
	ready := func(t *testing.T, f *fixture, _ *Token) error { return f.m.SetReady("ann") }
	notReady := func(t *testing.T, f *fixture, _ *Token) error { return f.m.SetNotReady("ann", "lunch") }
	logout := func(t *testing.T, f *fixture, _ *Token) error { return f.m.Logout("ann", false) }
	forceLogout := func(t *testing.T, f *fixture, _ *Token) error { return f.m.Logout("ann", true) }
	reserve := func(t *testing.T, f *fixture, tok *Token) error {
		g, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "ix1", Channel: core.ChannelVoice, TTL: 10 * time.Second})
		*tok = g.Token
		return err
	}
	accept := func(t *testing.T, f *fixture, tok *Token) error { return f.m.Accept(*tok) }
	reject := func(t *testing.T, f *fixture, tok *Token) error { return f.m.Reject(*tok) }
	release := func(t *testing.T, f *fixture, tok *Token) error { return f.m.Release(*tok) }
	complete := func(t *testing.T, f *fixture, tok *Token) error { return f.m.Complete(*tok, 30*time.Second) }
	completeNoWrap := func(t *testing.T, f *fixture, tok *Token) error { return f.m.Complete(*tok, 0) }
	endWrap := func(t *testing.T, f *fixture, _ *Token) error { return f.m.EndWrapUp("ann") }
	advance := func(d time.Duration) step {
		return func(t *testing.T, f *fixture, _ *Token) error { f.clk.Advance(d); return nil }
	}

	cases := []struct {
		name    string
		policy  config.MissedOfferAction
		steps   []step
		wantErr error // of the last step
		deny    DenyReason
		state   State
		reason  string
	}{
		{name: "logged_out → not_ready on login", steps: []step{login}, state: StateNotReady, reason: "login"},
		{name: "not_ready → ready", steps: []step{login, ready}, state: StateReady},
		{name: "ready → not_ready with reason", steps: []step{login, ready, notReady}, state: StateNotReady, reason: "lunch"},
		{name: "ready → logged_out", steps: []step{login, ready, logout}, state: StateLoggedOut},
		{name: "logged_out: set ready refused", steps: []step{ready}, wantErr: ErrLoggedOut, state: StateLoggedOut},
		{name: "logged_out: reserve denied", steps: []step{reserve}, deny: DenyLoggedOut, state: StateLoggedOut},
		{name: "not_ready: reserve denied", steps: []step{login, reserve}, deny: DenyNotReady, state: StateNotReady, reason: "login"},
		{name: "ready → reserved", steps: []step{login, ready, reserve}, state: StateReserved},
		{name: "reserved: second voice offer denied", steps: []step{login, ready, reserve, reserve}, deny: DenyDuplicate, state: StateReserved},
		{name: "reserved → busy on accept", steps: []step{login, ready, reserve, accept}, state: StateBusy},
		{name: "accept twice is a no-op", steps: []step{login, ready, reserve, accept, accept}, state: StateBusy},
		{name: "busy → wrap_up on complete", steps: []step{login, ready, reserve, accept, complete}, state: StateWrapUp},
		{name: "wrap_up → ready when timed out", steps: []step{login, ready, reserve, accept, complete, advance(30 * time.Second)}, state: StateReady},
		{name: "wrap_up → ready when ended early", steps: []step{login, ready, reserve, accept, complete, endWrap}, state: StateReady},
		{name: "busy → ready on complete without wrap-up", steps: []step{login, ready, reserve, accept, completeNoWrap}, state: StateReady},
		{name: "complete before accept refused", steps: []step{login, ready, reserve, complete}, wantErr: ErrWrongLeaseState, state: StateReserved},
		{name: "reserved → not_ready(missed offer) on reject", policy: config.MissedOfferNotReady, steps: []step{login, ready, reserve, reject}, state: StateNotReady, reason: ReasonMissedOffer},
		{name: "reserved → ready on reject under ready policy", policy: config.MissedOfferReady, steps: []step{login, ready, reserve, reject}, state: StateReady},
		{name: "reserved → not_ready(missed offer) on expiry", policy: config.MissedOfferNotReady, steps: []step{login, ready, reserve, advance(10 * time.Second)}, state: StateNotReady, reason: ReasonMissedOffer},
		{name: "reserved → ready on expiry under ready policy", policy: config.MissedOfferReady, steps: []step{login, ready, reserve, advance(10 * time.Second)}, state: StateReady},
		{name: "reserved → ready on release (no penalty)", policy: config.MissedOfferNotReady, steps: []step{login, ready, reserve, release}, state: StateReady},
		{name: "accept after expiry refused", steps: []step{login, ready, reserve, advance(10 * time.Second), accept}, wantErr: ErrLeaseEnded, state: StateNotReady, reason: ReasonMissedOffer},
		{name: "accepted lease does not expire", steps: []step{login, ready, reserve, accept, advance(time.Hour)}, state: StateBusy},
		{name: "reserved: logout refused", steps: []step{login, ready, reserve, logout}, wantErr: ErrHasWork, state: StateReserved},
		{name: "busy: forced logout", steps: []step{login, ready, reserve, accept, forceLogout}, state: StateLoggedOut},
		{name: "busy → not_ready presence keeps busy", steps: []step{login, ready, reserve, accept, notReady}, state: StateBusy, reason: "lunch"},
		{name: "not_ready after wrap-up stays not_ready", steps: []step{login, ready, reserve, accept, notReady, complete, advance(30 * time.Second)}, state: StateNotReady, reason: "lunch"},
		{name: "login twice is a no-op", steps: []step{login, ready, login}, state: StateReady},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			policy := tc.policy
			if policy == "" {
				policy = config.MissedOfferNotReady
			}
			f := newFixture(t, policy)
			var tok Token
			var err error
			for i, s := range tc.steps {
				err = s(t, f, &tok)
				if err != nil && i < len(tc.steps)-1 {
					t.Fatalf("step %d: %v", i, err)
				}
			}
			var deny *DenyError
			switch {
			case tc.deny != "":
				if !errors.As(err, &deny) || deny.Reason != tc.deny {
					t.Fatalf("last step: got %v, want deny %s", err, tc.deny)
				}
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("last step: got %v, want %v", err, tc.wantErr)
				}
			case err != nil:
				t.Fatalf("last step: %v", err)
			}
			st := f.state(t, "ann")
			if State(st.State) != tc.state || st.Reason != tc.reason {
				t.Fatalf("state = %s (%q), want %s (%q)", st.State, st.Reason, tc.state, tc.reason)
			}
		})
	}
}

func TestCapacityPerChannel(t *testing.T) {
	f := newFixture(t, config.MissedOfferNotReady)
	must(t, f.m.Login("ann"))
	must(t, f.m.SetReady("ann"))
	f.reserve(t, "c1", core.ChannelChat)
	f.reserve(t, "c2", core.ChannelChat)
	_, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "c3", Channel: core.ChannelChat})
	var deny *DenyError
	if !errors.As(err, &deny) || deny.Reason != DenyAtCapacity {
		t.Fatalf("third chat: %v, want at_capacity", err)
	}
	// Voice is a separate channel with its own capacity.
	f.reserve(t, "v1", core.ChannelVoice)
	// Callback capacity 0 disables the channel.
	_, err = f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "cb", Channel: core.ChannelCallback})
	if !errors.As(err, &deny) || deny.Reason != DenyChannelDisabled {
		t.Fatalf("callback: %v, want channel_disabled", err)
	}
	if _, err := f.m.Reserve(ReserveRequest{Agent: "nobody", Interaction: "x", Channel: core.ChannelVoice}); !errors.As(err, &deny) || deny.Reason != DenyUnknownAgent {
		t.Fatalf("unknown agent: %v", err)
	}
}

func TestTokens(t *testing.T) {
	f := newFixture(t, config.MissedOfferNotReady)
	must(t, f.m.Login("ann"))
	must(t, f.m.SetReady("ann"))
	tok := f.reserve(t, "ix", core.ChannelTask)
	stale := tok
	stale.Epoch = 6
	if err := f.m.Accept(stale); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("stale epoch accept: %v", err)
	}
	forged := tok
	forged.Lease = 999
	if err := f.m.Accept(forged); !errors.Is(err, ErrLeaseEnded) {
		t.Fatalf("unknown lease accept: %v", err)
	}
	parsed, err := ParseToken(tok.String())
	if err != nil || parsed != tok {
		t.Fatalf("ParseToken(%q) = %v, %v", tok.String(), parsed, err)
	}
	for _, bad := range []string{"", "ann", "ann:1", "ann:x:1", ":1:2", "ann:1:-2"} {
		if _, err := ParseToken(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseToken(%q): %v, want ErrBadToken", bad, err)
		}
	}
	must(t, f.m.Release(tok))
	if err := f.m.Release(tok); !errors.Is(err, ErrLeaseEnded) {
		t.Fatalf("double release: %v", err)
	}
}

func TestReserveIdempotent(t *testing.T) {
	f := newFixture(t, config.MissedOfferNotReady)
	must(t, f.m.Login("ann"))
	must(t, f.m.SetReady("ann"))
	req := ReserveRequest{Agent: "ann", Interaction: "ix", Channel: core.ChannelVoice, TTL: time.Minute, Request: "r1"}
	g1, err1 := f.m.Reserve(req)
	g2, err2 := f.m.Reserve(req)
	if err1 != nil || err2 != nil || g1.Token != g2.Token {
		t.Fatalf("repeat: %v %v %v %v", g1.Token, err1, g2.Token, err2)
	}
	// A new request id for another interaction is a new reservation (denied: voice is full).
	_, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "ix2", Channel: core.ChannelVoice, Request: "r2"})
	var deny *DenyError
	if !errors.As(err, &deny) || deny.Reason != DenyAtCapacity {
		t.Fatalf("r2: %v", err)
	}
	// The denial is remembered too, even after capacity frees up.
	must(t, f.m.Release(g1.Token))
	if _, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "ix2", Channel: core.ChannelVoice, Request: "r2"}); !errors.As(err, &deny) {
		t.Fatalf("r2 repeat: %v, want the remembered denial", err)
	}
	// After the retention time the id is forgotten.
	f.clk.Advance(requestTTL + time.Second)
	if _, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "ix2", Channel: core.ChannelVoice, Request: "r2"}); err != nil {
		t.Fatalf("r2 after ttl: %v", err)
	}
}

func TestObserverAndEvents(t *testing.T) {
	f := newFixture(t, config.MissedOfferNotReady)
	must(t, f.m.Login("ann"))
	must(t, f.m.SetReady("ann"))
	tok := f.reserve(t, "ix", core.ChannelVoice)
	f.clk.Advance(10 * time.Second)
	tok2 := f.reserve2(t, "ix2")
	must(t, f.m.Accept(tok2))
	must(t, f.m.Complete(tok2, time.Second))
	f.clk.Advance(time.Second)
	f.mu.Lock()
	ends := append([]LeaseEnd(nil), f.ends...)
	f.mu.Unlock()
	want := []LeaseEnd{{Token: tok, Interaction: "ix", Outcome: OutcomeExpired}, {Token: tok2, Interaction: "ix2", Outcome: OutcomeWrapUpEnded}}
	if fmt.Sprint(ends) != fmt.Sprint(want) {
		t.Fatalf("observer got %v, want %v", ends, want)
	}
	// Every transition is an event with a contiguous sequence and per-agent versions.
	evs, _, err := f.log.Read(0, 1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	var lastVersion uint64
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, ev.Seq)
		}
		if st, ok := ev.Data.(events.AgentState); ok {
			if st.Version != lastVersion+1 {
				t.Fatalf("version %d after %d", st.Version, lastVersion)
			}
			lastVersion = st.Version
		}
	}
	if lastVersion < 8 {
		t.Fatalf("only %d state events", lastVersion)
	}
}

func (f *fixture) reserve2(t *testing.T, ix string) Token {
	must(t, f.m.SetReady("ann")) // back from missed offer
	return f.reserve(t, ix, core.ChannelVoice)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRandomizedCapacityAndLeases runs random operations from many goroutines and
// audits the event log: no agent ever holds more than its capacity per channel, and
// every lease granted ends accepted→(completed→wrap_up_ended), rejected, released,
// expired or revoked.
func TestRandomizedCapacityAndLeases(t *testing.T) {
	const (
		nAgents  = 20
		workers  = 8
		stepsPer = 2500 // 20,000 operations in all
	)
	var agents []config.Agent
	for i := 0; i < nAgents; i++ {
		agents = append(agents, config.Agent{ID: core.AgentID(fmt.Sprintf("a%02d", i)), Capacity: map[core.Channel]int{
			core.ChannelVoice: 1, core.ChannelChat: 1 + i%4, core.ChannelCallback: 1, core.ChannelTask: 2,
		}})
	}
	f := newFixture(t, config.MissedOfferNotReady, agents...)
	for _, a := range agents {
		must(t, f.m.Login(a.ID))
		must(t, f.m.SetReady(a.ID))
	}
	var held sync.Map // token → accepted bool
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// Time moves in the background so offers expire and wrap-ups end.
	go func() {
		for {
			select {
			case <-stop: // test over
				return
			default: // keep time moving
				f.clk.Advance(50 * time.Millisecond)
			}
		}
	}()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for i := 0; i < stepsPer; i++ {
				a := agents[rng.Intn(nAgents)].ID
				switch op := rng.Intn(100); {
				case op < 40:
					ch := core.Channels[rng.Intn(core.NumChannels)]
					g, err := f.m.Reserve(ReserveRequest{Agent: a, Interaction: core.InteractionID(fmt.Sprintf("ix-%d-%d", seed, i)), Channel: ch, TTL: time.Duration(1+rng.Intn(20)) * 100 * time.Millisecond})
					if err == nil {
						held.Store(g.Token, false)
					}
				case op < 85:
					// act on some held token
					held.Range(func(k, v any) bool {
						tok := k.(Token)
						switch rng.Intn(5) {
						case 0, 1:
							if f.m.Accept(tok) == nil {
								held.Store(tok, true)
							}
						case 2:
							_ = f.m.Reject(tok)
						case 3:
							_ = f.m.Release(tok)
						case 4:
							_ = f.m.Complete(tok, time.Duration(rng.Intn(3))*200*time.Millisecond)
						}
						return rng.Intn(4) != 0
					})
				case op < 93:
					_ = f.m.SetReady(a)
				case op < 96:
					_ = f.m.SetNotReady(a, "random")
				case op < 98:
					_ = f.m.EndWrapUp(a)
				default:
					if f.m.Logout(a, rng.Intn(2) == 0) == nil {
						_ = f.m.Login(a)
					}
				}
			}
		}(int64(w + 1))
	}
	wg.Wait()
	close(stop)
	// End everything: force logout revokes what is left, then let timers run out.
	for _, a := range agents {
		must(t, f.m.Logout(a.ID, true))
	}
	f.clk.Advance(time.Hour)

	capOf := map[core.AgentID]map[core.Channel]int{}
	for _, a := range agents {
		capOf[a.ID] = map[core.Channel]int{}
		for _, ch := range core.Channels {
			capOf[a.ID][ch] = a.CapacityFor(ch)
		}
	}
	type key struct {
		a  core.AgentID
		ch core.Channel
	}
	open := map[key]int{}
	leaseState := map[core.LeaseID]string{}
	leaseKey := map[core.LeaseID]key{}
	evs, _, err := f.log.Read(0, 1<<22, nil)
	if err != nil {
		t.Fatal(err)
	}
	granted := 0
	for _, ev := range evs {
		switch d := ev.Data.(type) {
		case events.AgentState:
			for _, l := range d.Load {
				if n := l.Offered + l.Busy + l.WrapUp; n > l.Capacity || l.Capacity != capOf[ev.Agent][l.Channel] {
					t.Fatalf("seq %d: agent %s %s load %d over capacity %d", ev.Seq, ev.Agent, l.Channel, n, l.Capacity)
				}
			}
		case events.Lease:
			k := key{ev.Agent, d.Channel}
			prev := leaseState[d.Lease]
			switch d.Outcome {
			case "granted":
				if prev != "" {
					t.Fatalf("lease %d granted twice", d.Lease)
				}
				granted++
				open[k]++
				leaseKey[d.Lease] = k
				if open[k] > capOf[k.a][k.ch] {
					t.Fatalf("seq %d: %s holds %d %s leases, capacity %d", ev.Seq, k.a, open[k], k.ch, capOf[k.a][k.ch])
				}
			case "accepted":
				if prev != "granted" {
					t.Fatalf("lease %d accepted from %q", d.Lease, prev)
				}
			case "completed":
				if prev != "accepted" {
					t.Fatalf("lease %d completed from %q", d.Lease, prev)
				}
			case "rejected", "expired":
				if prev != "granted" {
					t.Fatalf("lease %d %s from %q", d.Lease, d.Outcome, prev)
				}
				open[k]--
			case "released", "revoked":
				if prev == "" || isEnd(prev) {
					t.Fatalf("lease %d %s from %q", d.Lease, d.Outcome, prev)
				}
				open[k]--
			case "wrap_up_ended":
				if prev != "completed" {
					t.Fatalf("lease %d wrap-up ended from %q", d.Lease, prev)
				}
				open[k]--
			default:
				t.Fatalf("unknown outcome %q", d.Outcome)
			}
			leaseState[d.Lease] = d.Outcome
		}
	}
	if granted < 1000 {
		t.Fatalf("only %d leases granted: the test exercises too little", granted)
	}
	for id, st := range leaseState {
		if !isEnd(st) {
			t.Errorf("lease %d (%v) never ended: last %s", id, leaseKey[id], st)
		}
	}
	for k, n := range open {
		if n != 0 {
			t.Errorf("%v: %d leases open at the end", k, n)
		}
	}
	t.Logf("%d events, %d leases granted", len(evs), granted)
}

func isEnd(outcome string) bool {
	switch outcome {
	case "rejected", "expired", "released", "revoked", "wrap_up_ended":
		return true
	}
	return false
}

// Without a device for the channel an agent is denied no_device (no penalty:
// it stays ready), and a device change is an event the routers see.
func TestNoDeviceDeniesWithoutPenalty(t *testing.T) {
	f := newFixture(t, config.MissedOfferNotReady, config.Agent{ID: "ann"})
	phone := false
	f.m.reachable = func(_ core.AgentID, ch core.Channel) bool { return ch != core.ChannelVoice || phone }
	if err := f.m.Login("ann"); err != nil {
		t.Fatal(err)
	}
	if err := f.m.SetReady("ann"); err != nil {
		t.Fatal(err)
	}
	_, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "ix-1", Channel: core.ChannelVoice, TTL: time.Minute})
	var deny *DenyError
	if !errors.As(err, &deny) || deny.Reason != DenyNoDevice {
		t.Fatalf("voice without a phone: %v, want no_device", err)
	}
	if st := f.state(t, "ann"); st.State != string(StateReady) {
		t.Fatalf("ann after a no_device denial: %+v", st)
	}
	if _, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "ix-2", Channel: core.ChannelTask, TTL: time.Minute}); err != nil {
		t.Fatalf("a task needs no phone: %v", err)
	}
	before := f.state(t, "ann").Version
	phone = true
	if err := f.m.DeviceChanged("ann", "phone_registered"); err != nil {
		t.Fatal(err)
	}
	if st := f.state(t, "ann"); st.Version != before+1 {
		t.Fatalf("after the phone registered: %+v (version before %d)", st, before)
	}
	if err := f.m.DeviceChanged("nobody", "phone_registered"); err != nil {
		t.Fatalf("an unknown agent is ignored: %v", err)
	}
}

// A reservation whose requester gave up (its answer was lost) is withdrawn by its
// request id: released without penalty if granted, refused if it comes later.
func TestCancelRequest(t *testing.T) {
	f := newFixture(t, config.MissedOfferNotReady, config.Agent{ID: "ann"})
	if err := f.m.Login("ann"); err != nil {
		t.Fatal(err)
	}
	if err := f.m.SetReady("ann"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "ix-1", Channel: core.ChannelTask, TTL: time.Minute, Request: "r1"}); err != nil {
		t.Fatal(err)
	}
	if err := f.m.CancelRequest("r1"); err != nil {
		t.Fatal(err)
	}
	if st := f.state(t, "ann"); st.State != string(StateReady) {
		t.Fatalf("ann after a cancelled grant: %+v (released, no penalty expected)", st)
	}
	if err := f.m.CancelRequest("r2"); err != nil { // before the request arrives
		t.Fatal(err)
	}
	_, err := f.m.Reserve(ReserveRequest{Agent: "ann", Interaction: "ix-2", Channel: core.ChannelTask, TTL: time.Minute, Request: "r2"})
	var deny *DenyError
	if !errors.As(err, &deny) || deny.Reason != DenyCancelled {
		t.Fatalf("a request arriving after its cancel: %v, want cancelled", err)
	}
	if err := f.m.CancelRequest("r1"); err != nil { // twice: harmless
		t.Fatal(err)
	}
}
