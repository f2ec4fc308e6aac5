package sip

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/interaction"
	"github.com/ccmesh/ccmesh/internal/sdp"
)

// merged registers a new INVITE by its merge key (From tag, Call-ID, CSeq) and
// reports whether another INVITE with the same key but a different branch is
// already being handled: the same request arriving twice by different paths,
// answered 482 (RFC 3261 §8.2.2.2). The key is released by endInviting.
func (m *calls) merged(req *sip.Request) (key string, merged bool) {
	from, cid, cseq, via := req.From(), req.CallID(), req.CSeq(), req.Via()
	if from == nil || cid == nil || cseq == nil || via == nil {
		return "", false
	}
	tag, _ := from.Params.Get("tag")
	branch, _ := via.Params.Get("branch")
	key = tag + "\x00" + cid.Value() + "\x00" + strconv.FormatUint(uint64(cseq.SeqNo), 10)
	m.mu.Lock()
	defer m.mu.Unlock()
	if b, ok := m.inviting[key]; ok {
		if b != branch {
			return "", true
		}
		return "", false // the same transaction (sipgo absorbs retransmissions)
	}
	m.inviting[key] = branch
	return key, false
}

func (m *calls) endInviting(key string) {
	if key == "" {
		return
	}
	m.mu.Lock()
	delete(m.inviting, key)
	m.mu.Unlock()
}

// leg finds the call an in-dialog request belongs to: through the caller's
// dialog (agentLeg false) or the agent's (agentLeg true).
func (m *calls) leg(req *sip.Request) (c *call, agentLeg bool, d *sipgo.Dialog) {
	if a, err := m.dsc.MatchDialogRequest(req); err == nil {
		m.mu.Lock()
		c = m.byA[a]
		m.mu.Unlock()
		return c, false, &a.Dialog
	}
	for _, dcc := range m.dccs() {
		if b, err := dcc.MatchRequestDialog(req); err == nil {
			m.mu.Lock()
			c = m.byB[b]
			m.mu.Unlock()
			return c, true, &b.Dialog
		}
	}
	return nil, false, nil
}

// reinvite answers an INVITE inside a call (RFC 3261 §14). From the agent, a
// sendonly or inactive offer (or a null address, RFC 2543 style) is hold: the
// caller hears music on hold from the same stream; sendrecv resumes the bridge.
// From the caller (a session refresh, or its own hold) the node answers with the
// SDP it gave, in the mirrored direction. A re-INVITE without SDP gets the
// node's current SDP as the offer.
func (m *calls) reinvite(req *sip.Request, tx sip.ServerTransaction) {
	c, agentLeg, d := m.leg(req)
	if c == nil {
		reply(tx, req, 481, "Call/Transaction Does Not Exist")
		return
	}
	if err := d.ReadRequest(req, tx); err != nil {
		reply(tx, req, 500, "Server Internal Error (CSeq out of order)", sip.NewHeader("Retry-After", "1"))
		return
	}
	var offer sdp.Media
	hasOffer := len(req.Body()) > 0
	if hasOffer {
		var err error
		if offer, err = sdp.Parse(req.Body()); err != nil {
			if errors.Is(err, sdp.ErrNoAudio) {
				reply(tx, req, 488, "Not Acceptable Here")
			} else {
				reply(tx, req, 400, "Bad Request (SDP)")
			}
			return
		}
	}
	c.mu.Lock()
	var body []byte
	switch {
	case c.direct && agentLeg:
		c.mu.Unlock()
		reply(tx, req, 488, "Not Acceptable Here (hold needs media anchored at the node)")
		return
	case !agentLeg && !c.answered:
		// A re-INVITE in the early dialog (RFC 3261 §14.2).
		c.mu.Unlock()
		reply(tx, req, 500, "Server Internal Error (call not answered yet)", sip.NewHeader("Retry-After", "1"))
		return
	case c.direct: // a session refresh from the caller: the agent's SDP again
		body = c.agentBody
	case agentLeg:
		if !c.connected || c.b == nil || &c.b.Dialog != d {
			c.mu.Unlock()
			reply(tx, req, 481, "Call/Transaction Does Not Exist")
			return
		}
		desc := c.bDesc
		if hasOffer {
			// The codec stays the call's (no transcoding): offered, or 488.
			if !offersCodec(offer, c.bCodec) {
				c.mu.Unlock()
				reply(tx, req, 488, "Not Acceptable Here", sip.NewHeader("Warning", `304 ccmesh "the call's codec must stay"`))
				return
			}
			desc = sdp.Description{Addr: desc.Addr, SessionID: desc.SessionID, Version: desc.Version + 1,
				Codecs: []sdp.Codec{c.bCodec}, TelephoneEvent: offer.TelephoneEvent, Direction: offer.Direction.Reverse()}
			hold := offer.Direction == sdp.SendOnly || offer.Direction == sdp.Inactive || offer.Addr.Addr().IsUnspecified()
			if !offer.Addr.Addr().IsUnspecified() && c.relay != nil {
				c.relay.UpdateAgent(net.UDPAddrFromAddrPort(offer.Addr), offer.TelephoneEvent)
			}
			if hold && !c.agentHold {
				m.stats.holds.Add(1)
				m.holdLocked(c)
				m.logger.Info("sip: agent put the call on hold", "interaction", c.ix, "agent", c.agentID)
			} else if !hold && c.agentHold && !c.transferring {
				m.resumeLocked(c)
				m.logger.Info("sip: agent resumed the call", "interaction", c.ix, "agent", c.agentID)
			}
			c.agentHold = hold
		}
		c.bDesc = desc
		body = desc.Marshal()
	default:
		desc := c.ans
		before := string(desc.Marshal())
		if hasOffer {
			if !offersCodec(offer, desc.Codecs[0]) {
				c.mu.Unlock()
				reply(tx, req, 488, "Not Acceptable Here", sip.NewHeader("Warning", `304 ccmesh "the call's codec must stay"`))
				return
			}
			if dir := offer.Direction.Reverse(); dir != "" {
				desc.Direction = dir
			}
			desc.TelephoneEvent = offer.TelephoneEvent
			if string(desc.Marshal()) != before {
				desc.Version++ // a changed session description (RFC 3264 §8)
			}
		}
		c.ans = desc
		body = desc.Marshal()
	}
	c.mu.Unlock()
	res := sip.NewResponseFromRequest(req, 200, "OK", body)
	res.AppendHeader(sip.HeaderClone(&m.contact))
	res.AppendHeader(contentSDP())
	m.respond2xx(req, tx, res)
}

// respond2xx sends a 2xx to an INVITE inside a dialog and, over UDP, sends it
// again at T1, doubling up to T2, until its ACK arrives or 64×T1 passed (RFC 3261
// §13.3.1.4: the UAS core, not the transaction, retransmits a 2xx).
func (m *calls) respond2xx(req *sip.Request, tx sip.ServerTransaction, res *sip.Response) {
	if err := tx.Respond(res); err != nil || !strings.EqualFold(req.Transport(), "UDP") {
		return
	}
	key := ackKey(req)
	acked := make(chan struct{})
	m.mu.Lock()
	m.acks[key] = acked
	m.mu.Unlock()
	go func() {
		defer func() {
			m.mu.Lock()
			if m.acks[key] == acked {
				delete(m.acks, key)
			}
			m.mu.Unlock()
		}()
		giveUp := time.NewTimer(64 * sip.T1)
		defer giveUp.Stop()
		wait := sip.T1
		t := time.NewTimer(wait)
		defer t.Stop()
		for {
			select {
			case <-acked:
				return
			case <-giveUp.C:
				return
			case <-t.C:
				_ = tx.Respond(res)
				wait = min(2*wait, sip.T2)
				t.Reset(wait)
			}
		}
	}()
}

// ackKey matches an ACK to the 2xx it acknowledges: same Call-ID and CSeq number.
func ackKey(req *sip.Request) string {
	if cid, cseq := req.CallID(), req.CSeq(); cid != nil && cseq != nil {
		return cid.Value() + "\x00" + strconv.FormatUint(uint64(cseq.SeqNo), 10)
	}
	return ""
}

func offersCodec(offer sdp.Media, c sdp.Codec) bool {
	for _, o := range offer.Codecs {
		if o == c {
			return true
		}
	}
	return false
}

// onRefer handles a blind transfer by the agent (RFC 3515): Refer-To names a
// queue's route point or an agent (DN or id). The node checks the target,
// re-routes the interaction (Service.Transfer), answers 202, reports the outcome
// with a NOTIFY (message/sipfrag) and ends the agent's leg; the caller hears
// music on hold meanwhile and is never re-INVITEd. A target that cannot take the
// call is refused with a final response and the call stays with the agent.
func (m *calls) onRefer(req *sip.Request, tx sip.ServerTransaction) {
	c, agentLeg, d := m.leg(req)
	switch {
	case c == nil:
		reply(tx, req, 481, "Call/Transaction Does Not Exist")
		return
	case !agentLeg:
		reply(tx, req, 403, "Forbidden (only the agent can transfer)")
		return
	case c.direct:
		reply(tx, req, 403, "Forbidden (transfer needs media anchored at the node)")
		return
	}
	if err := d.ReadRequest(req, tx); err != nil {
		reply(tx, req, 500, "Server Internal Error (CSeq out of order)", sip.NewHeader("Retry-After", "1"))
		return
	}
	h := req.GetHeader("Refer-To")
	if h == nil {
		reply(tx, req, 400, "Bad Request (missing Refer-To)")
		return
	}
	var to sip.Uri
	v := strings.TrimSpace(h.Value())
	if i, j := strings.IndexByte(v, '<'), strings.IndexByte(v, '>'); i >= 0 && j > i {
		v = v[i+1 : j]
	}
	if err := sip.ParseUri(v, &to); err != nil {
		reply(tx, req, 400, "Bad Request (Refer-To)")
		return
	}
	dst, ok := m.resolve(to.User)
	if !ok {
		reply(tx, req, 404, "Not Found (transfer target)")
		return
	}
	target := interaction.Target{Queue: dst.queue, Agent: dst.agent}

	c.mu.Lock()
	if !c.connected || c.b == nil || &c.b.Dialog != d || c.transferring {
		c.mu.Unlock()
		reply(tx, req, 491, "Request Pending")
		return
	}
	c.transferring = true
	m.holdLocked(c) // the caller hears music from now on
	old, oldRx, ag := c.b, c.bRx, c.agentID
	c.mu.Unlock()

	_, err := m.svc.Transfer(c.ix, ag, target)
	if err != nil {
		c.mu.Lock()
		if !c.agentHold {
			m.resumeLocked(c)
		}
		c.mu.Unlock()
		c.handed <- false // talk takes it and clears transferring
		code, reason := 500, "Server Internal Error"
		var deny *agent.DenyError
		switch {
		case errors.As(err, &deny) && (deny.Reason == agent.DenyAtCapacity || deny.Reason == agent.DenyDuplicate):
			code, reason = 486, "Busy Here"
		case errors.Is(err, interaction.ErrAgentUnavailable), errors.Is(err, interaction.ErrQueueClosed):
			code, reason = 480, "Temporarily Unavailable"
		case errors.Is(err, interaction.ErrBusy):
			code, reason = 503, "Service Unavailable (queue full)"
		case errors.Is(err, interaction.ErrBadRequest):
			code, reason = 403, "Forbidden (transfer to oneself)"
		case errors.Is(err, interaction.ErrWrongState), errors.Is(err, interaction.ErrNotYours), errors.Is(err, interaction.ErrNotFound):
			code, reason = 481, "Call/Transaction Does Not Exist"
		default:
			m.logger.Error("sip: transfer", "interaction", c.ix, "err", err)
		}
		reply(tx, req, code, reason)
		return
	}
	// The agent's leg is handed over: the caller stays on music until the next
	// agent answers (connect continues the same RTP stream).
	c.mu.Lock()
	if c.relay != nil {
		c.callerPeer = c.relay.CallerPeer()
		c.stopRelay()
	}
	c.relay, c.stopRelay = nil, nil
	if c.b == old {
		c.b, c.bRx = nil, nil
	}
	c.connected, c.agentHold = false, false
	c.mu.Unlock()
	m.mu.Lock()
	delete(m.byB, old)
	m.mu.Unlock()
	c.handed <- true // talk takes it, clears transferring and waits for the next agent
	m.stats.transfers.Add(1)
	m.logger.Info("sip: blind transfer", "interaction", c.ix, "agent", ag, "to", target.String())
	reply(tx, req, 202, "Accepted")
	go func() {
		target := old.InviteRequest.Recipient
		if ct := old.InviteResponse.Contact(); ct != nil {
			target = ct.Address
		}
		notify := sip.NewRequest(sip.NOTIFY, target)
		notify.AppendHeader(sip.NewHeader("Event", "refer"))
		notify.AppendHeader(sip.NewHeader("Subscription-State", "terminated;reason=noresource"))
		notify.AppendHeader(sip.NewHeader("Content-Type", "message/sipfrag;version=2.0"))
		notify.SetBody([]byte("SIP/2.0 200 OK\r\n"))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := old.Do(ctx, notify); err != nil {
			m.logger.Debug("sip: transfer NOTIFY", "interaction", c.ix, "err", err)
		}
		cancel()
		m.bye(old.Bye) // unless the agent already did
		_ = old.Close()
		closeConn(oldRx)
	}()
}

// onAck, onBye and onCancel feed in-dialog requests to the dialog caches.
func (m *calls) onAck(req *sip.Request, tx sip.ServerTransaction) {
	m.mu.Lock()
	acked, ok := m.acks[ackKey(req)]
	delete(m.acks, ackKey(req))
	m.mu.Unlock()
	if ok { // the ACK of a re-INVITE's 200: stop sending it again
		close(acked)
		return
	}
	_ = m.dsc.ReadAck(req, tx)
}

func (m *calls) onBye(req *sip.Request, tx sip.ServerTransaction) {
	if err := m.dsc.ReadBye(req, tx); err == nil {
		return
	}
	for _, dcc := range m.dccs() {
		if err := dcc.ReadBye(req, tx); err == nil {
			return
		}
	}
	reply(tx, req, 481, "Call/Transaction Does Not Exist")
}

func (m *calls) onCancel(*sip.Request, sip.ServerTransaction) {
	// The transaction layer already answered 200 to the CANCEL and 487 to the INVITE;
	// run sees it through OnCancel.
}
