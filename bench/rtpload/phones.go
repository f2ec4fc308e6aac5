package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/ccmesh/ccmesh/internal/sdp"
)

// phoneGroup is one SIP signalling socket shared by many agents' phones: each
// agent registers a Contact with its own user part (sip:a0001@127.0.0.1:PORT),
// and an INVITE from the node is routed by its Request-URI user. Every answered
// call gets its own media socket (a stream).
type phoneGroup struct {
	l      *load
	ua     *sipgo.UserAgent
	client *sipgo.Client
	dsc    *sipgo.DialogServerCache
	conn   net.PacketConn
	port   int
	agents int // agents a0001..aNNNN exist
}

func contentSDP() sip.Header { return sip.NewHeader("Content-Type", "application/sdp") }

// startPhones opens one signalling socket per perSocket agents.
func startPhones(l *load, agents, perSocket int) ([]*phoneGroup, error) {
	var groups []*phoneGroup
	for first := 0; first < agents; first += perSocket {
		ua, err := sipgo.NewUA(sipgo.WithUserAgent("rtpload-phone"), sipgo.WithUserAgentHostname("127.0.0.1"))
		if err != nil {
			return groups, err
		}
		g := &phoneGroup{l: l, ua: ua, agents: agents}
		groups = append(groups, g)
		srv, err := sipgo.NewServer(ua)
		if err != nil {
			return groups, err
		}
		if g.client, err = sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1")); err != nil {
			return groups, err
		}
		if g.conn, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			return groups, err
		}
		g.port = g.conn.LocalAddr().(*net.UDPAddr).Port
		g.dsc = sipgo.NewDialogServerCache(g.client, sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "phone", Host: "127.0.0.1", Port: g.port}})
		srv.OnInvite(g.onInvite)
		srv.OnAck(func(req *sip.Request, tx sip.ServerTransaction) { _ = g.dsc.ReadAck(req, tx) })
		srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
			if err := g.dsc.ReadBye(req, tx); err != nil {
				_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
			}
		})
		go func() { _ = srv.ServeUDP(g.conn) }()
	}
	return groups, nil
}

func closePhones(groups []*phoneGroup) {
	for _, g := range groups {
		if g.conn != nil {
			_ = g.conn.Close()
		}
		_ = g.ua.Close()
	}
}

// register registers agent i's phone (digest, whichever algorithm sipgo picks
// from the node's challenge).
func (g *phoneGroup) register(ctx context.Context, nodeSIP string, i int) error {
	user := agentID(i)
	var uri sip.Uri
	if err := sip.ParseUri("sip:"+nodeSIP, &uri); err != nil {
		return err
	}
	req := sip.NewRequest(sip.REGISTER, uri)
	req.AppendHeader(sip.NewHeader("From", "<sip:"+user+"@127.0.0.1>;tag=reg-"+user))
	req.AppendHeader(sip.NewHeader("To", "<sip:"+user+"@127.0.0.1>"))
	contact := sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: user, Host: "127.0.0.1", Port: g.port}}
	req.AppendHeader(&contact)
	req.AppendHeader(sip.NewHeader("Expires", "3600"))
	res, err := g.client.Do(ctx, req)
	if err == nil && res.StatusCode == 401 {
		res, err = g.client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: user, Password: user + "-pass"})
	}
	if err != nil {
		return fmt.Errorf("REGISTER %s: %w", user, err)
	}
	if res.StatusCode != 200 {
		return fmt.Errorf("REGISTER %s: %d %s", user, res.StatusCode, res.Reason)
	}
	return nil
}

// onInvite answers the node's INVITE to an agent's phone at once with the
// phone's own media socket, then sends RTP to the node's address from the
// INVITE's SDP until the node hangs up.
func (g *phoneGroup) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	l := g.l
	reply := func(code int, reason string) {
		_ = tx.Respond(sip.NewResponseFromRequest(req, code, reason, nil))
	}
	n, err := strconv.Atoi(strings.TrimPrefix(req.Recipient.User, "a"))
	if err != nil || !strings.HasPrefix(req.Recipient.User, "a") || n < 1 || n > g.agents {
		l.agentRefused.Add(1)
		reply(404, "Not Found")
		return
	}
	offer, err := sdp.Parse(req.Body())
	if err != nil || !offer.Addr.IsValid() {
		l.agentRefused.Add(1)
		reply(488, "Not Acceptable Here")
		return
	}
	s, err := l.newStream(dirAgentToCaller, uint32(n-1))
	if err != nil {
		l.agentRefused.Add(1)
		reply(503, "Service Unavailable (no media socket)")
		return
	}
	dlg, err := g.dsc.ReadInvite(req, tx)
	if err != nil {
		s.stop()
		l.agentRefused.Add(1)
		return
	}
	answer := sdp.Description{Addr: s.addr(), SessionID: uint64(n), Version: 1,
		Codecs: []sdp.Codec{sdp.PCMU}, TelephoneEvent: 101, Direction: sdp.SendRecv}.Marshal()
	if err := dlg.Respond(200, "OK", answer, contentSDP()); err != nil {
		s.stop()
		l.agentRefused.Add(1)
		return
	}
	l.agentAnswered.Add(1)
	s.start(offer.Addr)
	go func() {
		select {
		case <-dlg.Context().Done(): // the node's BYE
		case <-l.done: // the tool is ending
		}
		s.stop()
		l.agentEnded.Add(1)
		_ = dlg.Close()
	}()
}

// caller is one caller user agent; many calls share it (each with its own
// dialog and media socket). It takes the node's BYE for calls the node ends.
type caller struct {
	ua  *sipgo.UserAgent
	dcc *sipgo.DialogClientCache
}

func startCallers(n int) ([]*caller, error) {
	var cs []*caller
	for range n {
		ua, err := sipgo.NewUA(sipgo.WithUserAgent("rtpload-caller"), sipgo.WithUserAgentHostname("127.0.0.1"))
		if err != nil {
			return cs, err
		}
		c := &caller{ua: ua}
		cs = append(cs, c)
		srv, err := sipgo.NewServer(ua)
		if err != nil {
			return cs, err
		}
		client, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.1"))
		if err != nil {
			return cs, err
		}
		// Port 0: sipgo fills the Contact from the Via of the socket the INVITE
		// leaves from, where the node's in-dialog requests then arrive.
		c.dcc = sipgo.NewDialogClientCache(client, sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "customer", Host: "127.0.0.1"}})
		srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
			if err := c.dcc.ReadBye(req, tx); err != nil {
				_ = tx.Respond(sip.NewResponseFromRequest(req, 481, "Call/Transaction Does Not Exist", nil))
			}
		})
	}
	return cs, nil
}

func closeCallers(cs []*caller) {
	for _, c := range cs {
		_ = c.ua.Close()
	}
}

// failReason is a short label for why a call was not answered.
func failReason(err error) string {
	var dr *sipgo.ErrDialogResponse
	if errors.As(err, &dr) {
		return fmt.Sprintf("%d %s", dr.Res.StatusCode, dr.Res.Reason)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "no answer within 30s"
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return s
}
