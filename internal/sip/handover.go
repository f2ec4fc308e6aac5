package sip

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/media"
	"github.com/ccmesh/ccmesh/internal/sdp"
)

// Handover hands a queue's calls still waiting after After to a peer's queue
// (issue 5, ADR 0009): the node places a second leg, an INVITE to the peer
// queue's route point, and keeps the call in its own queue meanwhile. The
// first to answer takes the call: a local agent (the peer leg is cancelled),
// or the peer (the local interaction ends handed_over and the caller is
// bridged to the peer leg, media still anchored here). An attempt refused,
// failed, or cut short by the peer going down leaves the call waiting here
// and is tried again HandoverRetry later.
type Handover struct {
	After    time.Duration
	Resource string      // the resource's id (history, logs)
	Node     core.NodeID // the peer providing it: nothing is sent while it is down
	URI      string      // the peer queue's route point, sip:DN@host:port
}

// Peers is the gate to peers' resources (the mesh): Use fails at once while
// the peer is down, else returns a context that ends if it goes down.
type Peers interface {
	Use(core.NodeID) (context.Context, error)
}

// HandoverRetry is how long a call waits before its hand-over is tried again.
const HandoverRetry = 5 * time.Second

// Headers of a hand-over INVITE: the resource it came through (the peer does
// not hand it over again: no ping-pong) and the caller's From.
const (
	headerHandover = "X-Ccmesh-Handover"
	headerCaller   = "X-Ccmesh-Caller"
)

// peerLeg is the outcome of one hand-over attempt (gen tells stale ones apart).
type peerLeg struct {
	gen    uint64
	b      *sipgo.DialogClientSession // nil when the attempt failed
	rx     net.PacketConn
	remote sdp.Media
	desc   sdp.Description // the node's SDP on the leg
	err    error
}

// handover is a call's hand-over attempts, owned by its run goroutine.
type handover struct {
	h      *Handover
	timer  *time.Timer
	cancel context.CancelFunc // the attempt in progress
	// retry is the wait before the next attempt after a failed or refrained
	// one: HandoverRetry, doubled each time up to handoverMaxRetry.
	retry time.Duration
}

// handoverMaxRetry bounds the back-off between attempts.
const handoverMaxRetry = time.Minute

func (m *calls) newHandover(c *call) *handover {
	if c.handover == nil || m.peers == nil {
		return &handover{}
	}
	return &handover{h: c.handover, timer: time.NewTimer(c.handover.After), retry: HandoverRetry}
}

// due is the timer of the next attempt (nil: none).
func (ho *handover) due() <-chan time.Time {
	if ho.timer == nil {
		return nil
	}
	return ho.timer.C
}

// later arms the next attempt, backing off.
func (ho *handover) later() {
	ho.timer.Reset(ho.retry)
	ho.retry = min(2*ho.retry, handoverMaxRetry)
}

// startHandover begins an attempt, or refrains while the peer is down.
func (m *calls) startHandover(c *call, ho *handover) {
	peerCtx, err := m.peers.Use(ho.h.Node)
	if err != nil {
		m.stats.handoverRefrained.Add(1)
		m.logger.Info("sip: hand-over refrained from", "interaction", c.ix, "resource", ho.h.Resource, "err", err)
		ho.later()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), maxRing)
	ho.cancel = cancel
	c.mu.Lock()
	gen := c.hoGen
	c.mu.Unlock()
	go m.placePeerLeg(ctx, cancel, peerCtx, c, ho.h, gen)
}

// stopHandover ends the attempt in progress (CANCEL) and makes any outcome
// still to come stale — one already delivered is hung up; no further attempt
// starts.
func (m *calls) stopHandover(c *call, ho *handover) {
	if ho.cancel != nil {
		ho.cancel()
		ho.cancel = nil
	}
	if ho.timer != nil {
		ho.timer.Stop()
		ho.timer = nil
	}
	c.mu.Lock()
	c.hoGen++
	c.mu.Unlock()
	select {
	case pl := <-c.peerLeg: // answered just as the call went another way
		go m.hangUpLeg(pl.b, pl.rx)
	default:
	}
}

// settleHandover takes an attempt's outcome in the run goroutine: true when
// the peer took the call (the caller is now bridged to the peer leg).
func (m *calls) settleHandover(c *call, ho *handover, pl peerLeg) bool {
	c.mu.Lock()
	stale := pl.gen != c.hoGen
	c.mu.Unlock()
	if stale {
		m.hangUpLeg(pl.b, pl.rx)
		return false
	}
	if ho.cancel != nil {
		ho.cancel()
		ho.cancel = nil
	}
	if pl.err != nil {
		m.stats.handoverFailed.Add(1)
		m.logger.Info("sip: hand-over failed; the call waits here", "interaction", c.ix, "resource", ho.h.Resource, "err", pl.err)
		ho.later()
		return false
	}
	// Marked first: a local agent's answer racing it is hung up (Deliver),
	// and the interaction's end is not taken for the call's (Ended).
	c.mu.Lock()
	c.handedOver = true
	c.mu.Unlock()
	if _, err := m.svc.HandOver(c.ix, "handed over to "+ho.h.Resource+" at "+string(ho.h.Node)); err != nil {
		// A local agent took it meanwhile (theirs wins), or it ended.
		c.mu.Lock()
		c.handedOver = false
		c.mu.Unlock()
		m.hangUpLeg(pl.b, pl.rx)
		return false
	}
	m.stopHandover(c, ho)
	c.mu.Lock()
	c.tok, c.agentID = agent.Token{}, ""
	c.b, c.bRx, c.bDesc = pl.b, pl.rx, pl.desc
	c.mu.Unlock()
	m.mu.Lock()
	m.byB[pl.b] = c
	m.mu.Unlock()
	m.stats.handedOver.Add(1)
	m.logger.Info("sip: call handed over", "interaction", c.ix, "resource", ho.h.Resource, "node", ho.h.Node)
	return true
}

// placePeerLeg INVITEs the peer queue and reports the outcome on c.peerLeg,
// unless the attempt went stale meanwhile (the leg is then hung up). If the
// peer goes down first, the failure is reported at once and the INVITE
// cancelled in the background (a CANCEL still goes: the mesh may be cut while
// SIP still reaches the peer; sipgo's transaction timers bound it).
func (m *calls) placePeerLeg(ctx context.Context, cancel context.CancelFunc, peerCtx context.Context, c *call, h *Handover, gen uint64) {
	done := make(chan peerLeg, 1)
	go func() { done <- m.invitePeer(ctx, c, h, gen) }()
	var pl peerLeg
	select {
	case pl = <-done:
	case <-peerCtx.Done():
		cancel()
		pl = peerLeg{gen: gen, err: errors.New("cut short: the peer went down")}
		go func() {
			late := <-done
			m.hangUpLeg(late.b, late.rx) // answered as it was cancelled
		}()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done || c.hoGen != gen {
		go m.hangUpLeg(pl.b, pl.rx)
		return
	}
	select {
	case c.peerLeg <- pl: // one attempt at a time: the buffer has room
	default:
		go m.hangUpLeg(pl.b, pl.rx)
	}
}

// invitePeer places the peer leg and waits for its answer.
func (m *calls) invitePeer(ctx context.Context, c *call, h *Handover, gen uint64) peerLeg {
	pl := peerLeg{gen: gen}
	var uri sip.Uri
	if err := sip.ParseUri(h.URI, &uri); err != nil {
		pl.err = fmt.Errorf("uri %q: %w", h.URI, err)
		return pl
	}
	rx, err := m.listen()
	if err != nil {
		pl.err = fmt.Errorf("no media port: %w", err)
		return pl
	}
	pref := sdp.PCMU
	if c.codec == media.PCMA {
		pref = sdp.PCMA
	}
	desc := sdp.Offer(rx.LocalAddr().(*net.UDPAddr).AddrPort(), rand.Uint64N(1<<62), pref)
	maxFwd := sip.MaxForwardsHeader(c.maxFwd)
	b, err := m.invite(ctx, uri, desc.Marshal(), contentSDP(), &maxFwd,
		sip.NewHeader(headerHandover, h.Resource), sip.NewHeader(headerCaller, c.from))
	if err == nil {
		err = b.WaitAnswer(ctx, sipgo.AnswerOptions{})
	}
	if err != nil {
		if b != nil && b.InviteResponse != nil && b.InviteResponse.IsSuccess() {
			m.ackAndHangUp(b) // answered as the attempt was cancelled
		}
		closeConn(rx)
		if ctx.Err() != nil {
			err = fmt.Errorf("cancelled: %w", ctx.Err())
		}
		pl.err = err
		return pl
	}
	_ = b.Ack(ctx)
	remote, perr := sdp.Parse(b.InviteResponse.Body())
	if perr == nil && len(remote.Codecs) == 0 {
		perr = sdp.ErrNoCommon
	}
	if perr != nil {
		m.hangUpLeg(b, rx)
		pl.err = fmt.Errorf("peer's answer: %w", perr)
		return pl
	}
	pl.b, pl.rx, pl.remote, pl.desc = b, rx, remote, desc
	return pl
}

// ackAndHangUp ends a leg that answered when it was no longer wanted.
func (m *calls) ackAndHangUp(b *sipgo.DialogClientSession) {
	ctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	_ = b.Ack(ctx)
	stop()
	m.hangUpLeg(b, nil)
}

// hangUpLeg BYEs an answered leg that is not bridged and frees its socket
// (nothing for a nil leg).
func (m *calls) hangUpLeg(b *sipgo.DialogClientSession, rx net.PacketConn) {
	closeConn(rx)
	if b == nil {
		return
	}
	m.bye(b.Bye)
	_ = b.Close()
}
