package sip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/interaction"
	"github.com/ccmesh/ccmesh/internal/media"
	"github.com/ccmesh/ccmesh/internal/sdp"
)

// Interactions is what the call flow needs of the interaction service.
type Interactions interface {
	Create(interaction.CreateRequest) (events.Interaction, uint64, error)
	Accept(core.InteractionID, core.AgentID) (uint64, error)
	Reject(core.InteractionID, core.AgentID) (uint64, error)
	Complete(core.InteractionID, core.AgentID) (uint64, error)
	Abandon(core.InteractionID, string) (uint64, error)
}

// QueueSounds are the clips a queue plays to callers; nil ones fall back to the
// generated music (Music) or to nothing (Announcement, Closed).
type QueueSounds struct {
	Announcement, Music, Closed *media.Clip
}

// calls is the B2BUA (ADR 0005): a caller's INVITE to a route point becomes a voice
// interaction; the caller hears music from the node while it waits; the agent the
// router reserved is rung on its registered phone; when it answers, the node
// bridges the two legs through its own sockets (media anchored at the node).
type calls struct {
	svc    Interactions
	routes map[string]core.QueueID // route-point user part (DN or queue id) → queue
	sounds map[core.QueueID]QueueSounds
	reg    *Registrar
	dsc    *sipgo.DialogServerCache
	dcc    *sipgo.DialogClientCache
	host   netip.Addr
	// rtpTimeout ends a bridged call whose media stopped both ways.
	rtpTimeout time.Duration
	logger     *slog.Logger

	// mu guards byIx.
	mu   sync.Mutex
	byIx map[core.InteractionID]*call
}

// call is one caller's call. Its fields after creation are guarded by mu.
type call struct {
	ix       core.InteractionID
	a        *sipgo.DialogServerSession
	answer   []byte // our SDP toward the caller: it never changes
	codec    media.Codec
	offer    sdp.Media
	callerRx net.PacketConn
	agentRx  net.PacketConn
	moh      *media.Stream
	stopMoH  context.CancelFunc
	bridged  chan bridge // the agent answered
	ended    chan string // the interaction ended elsewhere while the caller waited

	mu        sync.Mutex
	tok       agent.Token
	cancelB   context.CancelFunc
	b         *sipgo.DialogClientSession
	agentID   core.AgentID
	connected bool
}

type bridge struct {
	b      *sipgo.DialogClientSession
	agent  core.AgentID
	remote sdp.Media
}

func newCalls(svc Interactions, routes map[string]core.QueueID, sounds map[core.QueueID]QueueSounds, reg *Registrar, client *sipgo.Client, host string, port int, rtpTimeout time.Duration, logger *slog.Logger) (*calls, error) {
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, fmt.Errorf("sip: media address %q: %w", host, err)
	}
	contact := sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "ccmesh", Host: host, Port: port}}
	return &calls{svc: svc, routes: routes, sounds: sounds, reg: reg, host: ip, rtpTimeout: rtpTimeout, logger: logger,
		dsc: sipgo.NewDialogServerCache(client, contact), dcc: sipgo.NewDialogClientCache(client, contact),
		byIx: map[core.InteractionID]*call{}}, nil
}

func contentSDP() sip.Header { return sip.NewHeader("Content-Type", "application/sdp") }

// onInvite handles a new INVITE. It returns only when the INVITE transaction is
// over (final response sent, or the caller cancelled).
func (m *calls) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	if to := req.To(); to != nil {
		if _, ok := to.Params.Get("tag"); ok {
			// A re-INVITE inside a call: hold/resume is not built yet; keep the session.
			reply(tx, req, 488, "Not Acceptable Here (re-INVITE not supported yet)")
			return
		}
	}
	if mf := req.MaxForwards(); mf != nil && *mf == 0 {
		reply(tx, req, 483, "Too Many Hops")
		return
	}
	q, ok := m.routes[req.Recipient.User]
	if !ok {
		reply(tx, req, 404, "Not Found")
		return
	}
	offer, err := sdp.Parse(req.Body())
	if err == nil && len(offer.Codecs) == 0 {
		err = sdp.ErrNoCommon
	}
	switch {
	case errors.Is(err, sdp.ErrNoCommon), errors.Is(err, sdp.ErrNoAudio):
		reply(tx, req, 488, "Not Acceptable Here", sip.NewHeader("Warning", `304 ccmesh "`+err.Error()+`"`))
		return
	case err != nil:
		reply(tx, req, 400, "Bad Request (SDP)")
		return
	}
	c := &call{offer: offer, bridged: make(chan bridge, 1), ended: make(chan string, 1)}
	if c.callerRx, err = net.ListenPacket("udp", netip.AddrPortFrom(m.host, 0).String()); err == nil {
		c.agentRx, err = net.ListenPacket("udp", netip.AddrPortFrom(m.host, 0).String())
	}
	if err != nil {
		c.close()
		reply(tx, req, 503, "Service Unavailable (no media port)", sip.NewHeader("Retry-After", "5"))
		return
	}
	ans, _ := sdp.Answer(offer, c.callerRx.LocalAddr().(*net.UDPAddr).AddrPort(), rand.Uint64N(1<<62))
	c.answer = ans.Marshal()
	c.codec = mediaCodec(ans.Codecs[0])
	from := ""
	if f := req.From(); f != nil {
		from = f.Address.String()
	}
	// Registered before Create: the router may offer the call to a ready agent at
	// once, and Deliver must find it.
	c.ix = interaction.NewID()
	m.mu.Lock()
	m.byIx[c.ix] = c
	m.mu.Unlock()
	_, _, err = m.svc.Create(interaction.CreateRequest{ID: c.ix, Channel: core.ChannelVoice, Queue: q,
		Attributes: map[string]string{"from": from, "call_id": req.CallID().Value()}})
	if err != nil {
		id := c.ix
		c.ix = "" // nothing to abandon
		m.mu.Lock()
		delete(m.byIx, id)
		m.mu.Unlock()
		c.close()
	}
	switch {
	case errors.Is(err, interaction.ErrQueueClosed):
		m.closed(req, tx, q, offer)
		return
	case errors.Is(err, interaction.ErrBusy), errors.Is(err, interaction.ErrDraining):
		reply(tx, req, 503, "Service Unavailable", sip.NewHeader("Retry-After", "30"))
		return
	case err != nil:
		reply(tx, req, 500, "Server Internal Error")
		m.logger.Error("sip: create voice interaction", "err", err)
		return
	}
	if c.a, err = m.dsc.ReadInvite(req, tx); err != nil {
		m.abandon(c, "dialog: "+err.Error())
		reply(tx, req, 500, "Server Internal Error")
		return
	}
	// Early media: the caller hears the node while it waits (RFC 3960 style 183).
	if err := c.a.Respond(183, "Session Progress", c.answer, contentSDP()); err != nil {
		m.abandon(c, "183 failed")
		return
	}
	// The queue's announcement once, then its music (or the generated music) in a loop.
	snd := m.sounds[q]
	music := snd.Music
	if music == nil {
		music = media.MusicOnHold()
	}
	first, loop := music, true
	if snd.Announcement != nil {
		first, loop = snd.Announcement, false
	}
	c.moh, _ = media.NewStream(media.StreamParams{Conn: c.callerRx, Dest: net.UDPAddrFromAddrPort(offer.Addr), Codec: c.codec,
		Clip: first, Loop: loop, Logger: m.logger, OnClipEnd: func(*media.Clip) { c.moh.SetClip(music, true) }})
	mctx, stop := context.WithCancel(context.Background())
	c.stopMoH = stop
	go func() { _ = c.moh.Run(mctx) }()

	// A CANCEL is seen at once through OnCancel; the transaction itself ends only
	// after its Timer I, seconds later, too late to stop offering the call.
	cancelled := make(chan struct{})
	var once sync.Once
	if !tx.OnCancel(func(*sip.Request) { once.Do(func() { close(cancelled) }) }) {
		once.Do(func() { close(cancelled) })
	}
	select {
	case <-cancelled: // the caller hung up (the transaction layer answered 200 and 487)
		m.abandon(c, "caller hung up while waiting")
		return
	case <-tx.Done(): // the transaction ended otherwise (transport failure)
		m.abandon(c, "caller transaction ended")
		return
	case state := <-c.ended: // max wait reached, or cancelled through the API
		_ = c.a.Respond(480, "Temporarily Unavailable ("+state+")", nil)
		m.forget(c)
		return
	case br := <-c.bridged: // the agent answered
		m.connect(c, br)
	}
}

// closed answers a call to a closed queue: its closed announcement as early media
// (if it has one), then 480.
func (m *calls) closed(req *sip.Request, tx sip.ServerTransaction, q core.QueueID, offer sdp.Media) {
	clip := m.sounds[q].Closed
	if clip == nil {
		reply(tx, req, 480, "Temporarily Unavailable (queue closed)")
		return
	}
	conn, err := net.ListenPacket("udp", netip.AddrPortFrom(m.host, 0).String())
	if err != nil {
		reply(tx, req, 480, "Temporarily Unavailable (queue closed)")
		return
	}
	defer conn.Close()
	dlg, err := m.dsc.ReadInvite(req, tx)
	if err != nil {
		reply(tx, req, 480, "Temporarily Unavailable (queue closed)")
		return
	}
	ans, err := sdp.Answer(offer, conn.LocalAddr().(*net.UDPAddr).AddrPort(), rand.Uint64N(1<<62))
	if err != nil {
		_ = dlg.Respond(480, "Temporarily Unavailable (queue closed)", nil)
		return
	}
	codec := mediaCodec(ans.Codecs[0])
	if err := dlg.Respond(183, "Session Progress", ans.Marshal(), contentSDP()); err != nil {
		return
	}
	played := make(chan struct{})
	var once sync.Once
	st, err := media.NewStream(media.StreamParams{Conn: conn, Dest: net.UDPAddrFromAddrPort(offer.Addr), Codec: codec, Clip: clip,
		Logger: m.logger, OnClipEnd: func(*media.Clip) { once.Do(func() { close(played) }) }})
	if err == nil {
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		go func() { _ = st.Run(ctx) }()
		select {
		case <-played: // the announcement was heard
		case <-tx.Done(): // the caller hung up
			return
		case <-time.After(clip.Duration() + 5*time.Second): // bound, whatever happens
		}
	}
	_ = dlg.Respond(480, "Temporarily Unavailable (queue closed)", nil)
}

// connect bridges the legs and answers the caller with the SDP it already has.
func (m *calls) connect(c *call, br bridge) {
	seq, ts := c.moh.Next()
	c.stopMoH()
	relay, err := media.NewRelay(media.RelayParams{
		Caller:   media.Leg{Conn: c.callerRx, Peer: net.UDPAddrFromAddrPort(c.offer.Addr), TelephoneEvent: c.offer.TelephoneEvent},
		Agent:    media.Leg{Conn: c.agentRx, Peer: net.UDPAddrFromAddrPort(br.remote.Addr), TelephoneEvent: br.remote.TelephoneEvent},
		ToCaller: &media.Continuation{SSRC: c.moh.SSRC(), Seq: seq, Timestamp: ts},
		Timeout:  m.rtpTimeout,
		OnTimeout: func() {
			m.logger.Warn("sip: media stopped; ending call", "interaction", c.ix)
			m.hangup(c, true, true)
		},
	})
	if err == nil {
		err = c.a.Respond(200, "OK", c.answer, contentSDP())
	}
	if err != nil {
		m.logger.Error("sip: bridge", "interaction", c.ix, "err", err)
		m.hangup(c, true, true)
		return
	}
	rctx, stop := context.WithCancel(context.Background())
	go func() { _ = relay.Run(rctx) }()
	go func() {
		// The call lasts until either dialog ends (BYE from either side).
		select {
		case <-c.a.Context().Done(): // the caller hung up
			m.hangup(c, false, true)
		case <-br.b.Context().Done(): // the agent hung up
			m.hangup(c, true, false)
		}
		stop()
	}()
}

// hangup ends a connected call: BYE to the legs still up, wrap-up for the agent.
func (m *calls) hangup(c *call, byeCaller, byeAgent bool) {
	c.mu.Lock()
	b, ag, connected := c.b, c.agentID, c.connected
	c.connected = false
	c.mu.Unlock()
	if !connected {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if byeCaller {
		_ = c.a.Bye(ctx)
	}
	if byeAgent && b != nil {
		_ = b.Bye(ctx)
	}
	if _, err := m.svc.Complete(c.ix, ag); err != nil {
		m.logger.Warn("sip: complete after hangup", "interaction", c.ix, "err", err)
	}
	m.forget(c)
}

// abandon ends a call that never connected.
func (m *calls) abandon(c *call, reason string) {
	if c.ix != "" {
		if _, err := m.svc.Abandon(c.ix, reason); err != nil {
			m.logger.Warn("sip: abandon", "interaction", c.ix, "err", err)
		}
	}
	m.forget(c)
}

func (m *calls) forget(c *call) {
	m.mu.Lock()
	delete(m.byIx, c.ix)
	m.mu.Unlock()
	// An agent leg still ringing is cancelled; one that answered is hung up.
	c.mu.Lock()
	cancel, b, connected := c.cancelB, c.b, c.connected
	c.connected = false
	c.mu.Unlock()
	if cancel != nil && b == nil {
		cancel()
	}
	if b != nil && connected {
		ctx, stop := context.WithTimeout(context.Background(), 5*time.Second)
		_ = b.Bye(ctx)
		stop()
	}
	if c.stopMoH != nil {
		c.stopMoH()
	}
	c.close()
}

func (c *call) close() {
	// The relay and stream stop when their sockets close.
	if c.callerRx != nil {
		_ = c.callerRx.Close()
	}
	if c.agentRx != nil {
		_ = c.agentRx.Close()
	}
}

// Deliver rings the agent's registered phone for an offered voice interaction
// (interaction.Deliverer). It runs on its own goroutine.
func (m *calls) Deliver(ix events.Interaction, tok agent.Token) {
	m.mu.Lock()
	c := m.byIx[ix.ID]
	m.mu.Unlock()
	if c == nil {
		_, _ = m.svc.Reject(ix.ID, tok.Agent)
		return
	}
	binds := m.reg.Bindings(tok.Agent)
	if len(binds) == 0 {
		m.logger.Info("sip: agent has no registered phone; offer refused", "agent", tok.Agent, "interaction", ix.ID)
		_, _ = m.svc.Reject(ix.ID, tok.Agent)
		return
	}
	var uri sip.Uri
	if err := sip.ParseUri(binds[0].Contact, &uri); err != nil {
		_, _ = m.svc.Reject(ix.ID, tok.Agent)
		return
	}
	pref := sdp.PCMU
	if c.codec == media.PCMA {
		pref = sdp.PCMA
	}
	offer := sdp.Offer(c.agentRx.LocalAddr().(*net.UDPAddr).AddrPort(), rand.Uint64N(1<<62), pref)
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.tok, c.cancelB, c.agentID = tok, cancel, tok.Agent
	c.mu.Unlock()
	defer cancel()
	b, err := m.dcc.Invite(ctx, uri, offer.Marshal(), contentSDP())
	if err == nil {
		err = b.WaitAnswer(ctx, sipgo.AnswerOptions{})
	}
	if ctx.Err() != nil {
		return // withdrawn: sipgo sent CANCEL
	}
	if err != nil {
		// Busy, declined, unreachable or no answer: a missed offer; the call keeps its place.
		m.logger.Info("sip: agent did not answer", "agent", tok.Agent, "interaction", ix.ID, "err", err)
		_, _ = m.svc.Reject(ix.ID, tok.Agent)
		return
	}
	_ = b.Ack(ctx)
	remote, perr := sdp.Parse(b.InviteResponse.Body())
	if perr != nil || len(remote.Codecs) == 0 {
		_ = b.Bye(ctx)
		_, _ = m.svc.Reject(ix.ID, tok.Agent)
		return
	}
	c.mu.Lock()
	c.b, c.connected = b, true // from here a hang-up of the caller BYEs this leg
	c.mu.Unlock()
	if _, err := m.svc.Accept(ix.ID, tok.Agent); err != nil {
		// The offer ended meanwhile (caller gone, lease expired): hang up the agent.
		c.mu.Lock()
		c.connected = false
		c.mu.Unlock()
		_ = b.Bye(context.Background())
		return
	}
	select {
	case c.bridged <- bridge{b: b, agent: tok.Agent, remote: remote}:
	default:
	}
}

// Withdraw cancels ringing the agent (interaction.Deliverer).
func (m *calls) Withdraw(id core.InteractionID, tok agent.Token) {
	m.mu.Lock()
	c := m.byIx[id]
	m.mu.Unlock()
	if c == nil {
		return
	}
	c.mu.Lock()
	cancel := c.cancelB
	same := c.tok == tok && !c.connected
	c.mu.Unlock()
	if same && cancel != nil {
		cancel()
	}
}

// Ended ends what is left of a call whose interaction ended elsewhere
// (interaction.Deliverer): a waiting caller gets 480, a call still up is hung up.
func (m *calls) Ended(id core.InteractionID, state string) {
	m.mu.Lock()
	c := m.byIx[id]
	m.mu.Unlock()
	if c == nil {
		return // the SIP side ended it first
	}
	c.mu.Lock()
	connected := c.connected
	c.mu.Unlock()
	if connected {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.a.Bye(ctx)
		m.forget(c) // BYEs the agent's leg
		return
	}
	select {
	case c.ended <- state:
	default:
	}
}

// onAck, onBye and onCancel feed in-dialog requests to the dialog caches.
func (m *calls) onAck(req *sip.Request, tx sip.ServerTransaction) {
	_ = m.dsc.ReadAck(req, tx)
}

func (m *calls) onBye(req *sip.Request, tx sip.ServerTransaction) {
	if err := m.dsc.ReadBye(req, tx); err == nil {
		return
	}
	if err := m.dcc.ReadBye(req, tx); err == nil {
		return
	}
	reply(tx, req, 481, "Call/Transaction Does Not Exist")
}

func (m *calls) onCancel(*sip.Request, sip.ServerTransaction) {
	// The transaction layer already answered 200 to the CANCEL and 487 to the INVITE;
	// onInvite sees its transaction end.
}

// mediaCodec is the media package's codec for a negotiated SDP codec.
func mediaCodec(c sdp.Codec) media.Codec {
	if c == sdp.PCMA {
		return media.PCMA
	}
	return media.PCMU
}
