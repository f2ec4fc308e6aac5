package media

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtp"
)

// Leg is one side of an anchored call: the node's socket facing a party, and where
// that party receives RTP.
type Leg struct {
	// Conn is the node's socket for this party (bound by the caller of NewRelay).
	Conn net.PacketConn
	// Peer is the party's RTP address from its SDP; it is replaced by the source of
	// the first packet the party sends (symmetric RTP, so phones behind NAT work).
	Peer net.Addr
	// TelephoneEvent is the RFC 4733 payload type this party negotiated, 0 for none.
	TelephoneEvent uint8
}

// Continuation is the RTP identity the caller already hears (from the Stream that
// played music while the call waited): the relay keeps SSRC, sequence and
// timestamp continuous so the caller's session never changes (no re-INVITE).
type Continuation struct {
	SSRC      uint32
	Seq       uint16
	Timestamp uint32
}

// RelayParams configures a Relay.
type RelayParams struct {
	// Caller and Agent are the two legs.
	Caller, Agent Leg
	// ToCaller continues the caller's stream; without it the agent's packets pass as they are.
	ToCaller *Continuation
	// Timeout ends the call when no packet arrives from either party for this long
	// (0 disables). OnTimeout is then called once, from the relay's goroutine.
	Timeout   time.Duration
	OnTimeout func()
}

// RelayStats counts relayed packets.
type RelayStats struct {
	CallerToAgent, AgentToCaller uint64
	Dropped                      uint64 // not RTP, or from an unexpected source after latching
}

// Relay forwards RTP both ways between the two legs of a call through the node.
// Run it once; Stop or ctx ends it. Counters are safe to read concurrently.
type Relay struct {
	p RelayParams

	c2a, a2c, dropped atomic.Uint64
	lastRx            atomic.Int64 // unix nanos of the last packet from either side

	// mu guards the latched peers and the caller-side rewriting state.
	mu         sync.Mutex
	callerPeer net.Addr
	agentPeer  net.Addr
	callerLat  bool
	agentLat   bool
	outSeq     uint16
	tsOffset   uint32
	tsSet      bool
	lastInTS   uint32
	agentSSRC  uint32
	// held drops media both ways while the agent holds the call (the caller hears
	// music from a Stream meanwhile).
	held bool
}

// NewRelay checks p and returns a relay.
func NewRelay(p RelayParams) (*Relay, error) {
	if p.Caller.Conn == nil || p.Agent.Conn == nil || p.Caller.Peer == nil || p.Agent.Peer == nil {
		return nil, errors.New("media: relay needs both legs' sockets and peers")
	}
	r := &Relay{p: p, callerPeer: p.Caller.Peer, agentPeer: p.Agent.Peer}
	if p.ToCaller != nil {
		r.outSeq = p.ToCaller.Seq
	}
	return r, nil
}

// Hold stops relaying both ways (the agent put the call on hold) and returns
// where the caller's stream stands, for the Stream that plays music meanwhile.
// Media still counts against the timeout. ok is false without ToCaller.
func (r *Relay) Hold() (next Continuation, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held = true
	c := r.p.ToCaller
	if c == nil {
		return Continuation{}, false
	}
	next = Continuation{SSRC: c.SSRC, Seq: r.outSeq, Timestamp: c.Timestamp}
	if r.tsSet {
		next.Timestamp = r.lastInTS + r.tsOffset + FrameSamples
	}
	return next, true
}

// UpdateAgent applies a new SDP from the agent (a re-INVITE): where it receives
// RTP and its telephone-event payload type. A new address is latched again from
// the agent's next packet.
func (r *Relay) UpdateAgent(peer net.Addr, telephoneEvent uint8) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.p.Agent.TelephoneEvent = telephoneEvent
	if peer != nil && peer.String() != r.agentPeer.String() {
		r.agentPeer, r.agentLat = peer, false
	}
}

// CallerPeer is where the caller's RTP goes: its SDP address until its first
// packet, then the address that packet came from (symmetric RTP).
func (r *Relay) CallerPeer() net.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.callerPeer
}

// Resume relays again after Hold, continuing the caller's stream from next (where
// the music stopped): the agent's next packet carries next's sequence number and
// timestamp.
func (r *Relay) Resume(next Continuation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held = false
	r.p.ToCaller = &next
	r.outSeq = next.Seq
	r.tsSet = false
}

// Stats returns the counters.
func (r *Relay) Stats() RelayStats {
	return RelayStats{CallerToAgent: r.c2a.Load(), AgentToCaller: r.a2c.Load(), Dropped: r.dropped.Load()}
}

// Run relays until ctx ends (then it returns nil) or a socket fails. The sockets
// are not closed: they belong to the caller of NewRelay.
func (r *Relay) Run(ctx context.Context) error {
	r.lastRx.Store(time.Now().UnixNano())
	errc := make(chan error, 2)
	stop := make(chan struct{})
	go func() { errc <- r.pump(r.p.Caller.Conn, true, stop) }()
	go func() { errc <- r.pump(r.p.Agent.Conn, false, stop) }()
	var tick <-chan time.Time
	if r.p.Timeout > 0 {
		t := time.NewTicker(r.p.Timeout / 4)
		defer t.Stop()
		tick = t.C
	}
	var err error
	timedOut := false
loop:
	for {
		select {
		case <-ctx.Done(): // call over
			break loop
		case err = <-errc: // a socket failed
			break loop
		case <-tick: // media silence check
			if time.Since(time.Unix(0, r.lastRx.Load())) >= r.p.Timeout && !timedOut {
				timedOut = true
				if r.p.OnTimeout != nil {
					r.p.OnTimeout()
				}
			}
		}
	}
	close(stop)
	// Unblock the readers; the sockets stay open for their owner.
	_ = r.p.Caller.Conn.SetReadDeadline(time.Now())
	_ = r.p.Agent.Conn.SetReadDeadline(time.Now())
	for i := 0; i < 2; i++ {
		if e := <-errc; err == nil {
			err = e
		}
	}
	_ = r.p.Caller.Conn.SetReadDeadline(time.Time{})
	_ = r.p.Agent.Conn.SetReadDeadline(time.Time{})
	return err
}

// pump reads one leg's socket and forwards to the other leg.
func (r *Relay) pump(conn net.PacketConn, fromCaller bool, stop <-chan struct{}) error {
	buf := make([]byte, 1500)
	var pkt rtp.Packet
	for {
		n, src, err := conn.ReadFrom(buf)
		if err != nil {
			select {
			case <-stop: // Run is ending: the deadline woke us
				return nil
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("media: relay read: %w", err)
		}
		if err := pkt.Unmarshal(buf[:n]); err != nil || pkt.Version != 2 {
			r.dropped.Add(1)
			continue
		}
		out, dst, verdict := r.route(&pkt, src, fromCaller)
		switch verdict {
		case routeHeld:
			continue
		case routeDrop:
			r.dropped.Add(1)
			continue
		}
		b, err := out.Marshal()
		if err != nil {
			r.dropped.Add(1)
			continue
		}
		conn2 := r.p.Agent.Conn
		if !fromCaller {
			conn2 = r.p.Caller.Conn
		}
		if _, err := conn2.WriteTo(b, dst); err != nil {
			r.dropped.Add(1)
			continue
		}
		if fromCaller {
			r.c2a.Add(1)
		} else {
			r.a2c.Add(1)
		}
	}
}

// What route decided for a packet.
const (
	routeForward = iota
	routeDrop    // not from the latched party, or a DTMF event the other side cannot take
	routeHeld    // valid media while on hold
)

// route latches the sender's address, maps RFC 4733 payload types between the legs
// and, toward the caller, continues the caller's RTP identity.
func (r *Relay) route(pkt *rtp.Packet, src net.Addr, fromCaller bool) (*rtp.Packet, net.Addr, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	from, to := r.p.Caller, r.p.Agent
	if !fromCaller {
		from, to = r.p.Agent, r.p.Caller
	}
	// Symmetric RTP: the first packet fixes the party's address; later packets from
	// elsewhere are dropped (no media hijacking mid-call).
	if fromCaller {
		if !r.callerLat {
			r.callerPeer, r.callerLat = src, true
		} else if src.String() != r.callerPeer.String() {
			return nil, nil, routeDrop
		}
	} else {
		if !r.agentLat {
			r.agentPeer, r.agentLat = src, true
		} else if src.String() != r.agentPeer.String() {
			return nil, nil, routeDrop
		}
	}
	r.lastRx.Store(time.Now().UnixNano())
	if r.held {
		return nil, nil, routeHeld
	}
	if from.TelephoneEvent != 0 && pkt.PayloadType == from.TelephoneEvent {
		if to.TelephoneEvent == 0 {
			return nil, nil, routeDrop // the other side cannot take DTMF events
		}
		pkt.PayloadType = to.TelephoneEvent
	}
	dst := r.agentPeer
	if !fromCaller {
		dst = r.callerPeer
		if c := r.p.ToCaller; c != nil {
			switch {
			case !r.tsSet:
				// First packet: map the agent's clock onto the caller's timeline
				// where the music left off.
				r.tsOffset = c.Timestamp - pkt.Timestamp
				r.agentSSRC, r.tsSet = pkt.SSRC, true
			case pkt.SSRC != r.agentSSRC:
				// A new agent stream (re-INVITE, new phone): continue one frame
				// after the last packet the caller got.
				r.tsOffset = r.lastInTS + r.tsOffset + FrameSamples - pkt.Timestamp
				r.agentSSRC = pkt.SSRC
			}
			r.lastInTS = pkt.Timestamp
			pkt.SSRC = c.SSRC
			pkt.SequenceNumber = r.outSeq
			r.outSeq++
			pkt.Timestamp += r.tsOffset
		}
	}
	return pkt, dst, routeForward
}
