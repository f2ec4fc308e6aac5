package sip

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/interaction"
	"github.com/ccmesh/ccmesh/internal/media"
	"github.com/ccmesh/ccmesh/internal/sdp"
)

// Interactions is what the call flow needs of the interaction service.
type Interactions interface {
	Create(interaction.CreateRequest) (events.Interaction, uint64, error)
	Direct(interaction.CreateRequest, core.AgentID) (events.Interaction, uint64, error)
	Accept(core.InteractionID, core.AgentID) (uint64, error)
	Reject(core.InteractionID, core.AgentID) (uint64, error)
	CompleteWithReason(core.InteractionID, core.AgentID, string) (uint64, error)
	Transfer(core.InteractionID, core.AgentID, interaction.Target) (uint64, error)
	Abandon(core.InteractionID, string) (uint64, error)
	HandOver(core.InteractionID, string) (uint64, error)
}

// QueueVoice is how a queue treats its callers: the clips it plays (nil ones fall
// back to the generated music, or to nothing for Announcement and Closed), and
// whether calls are answered at once rather than held in early media.
type QueueVoice struct {
	Announcement, Music, Closed *media.Clip
	AnswerFirst                 bool
	// Direct: signalling only; the parties' SDP pass through and RTP flows
	// between them (no music, hold or transfer).
	Direct bool
	// Handover, when set, hands calls still waiting to a peer's queue.
	Handover *Handover
}

// calls is the B2BUA (ADR 0005): a caller's INVITE to a route point becomes a voice
// interaction (to an agent's DN, a direct one); the caller hears the node while it
// waits; the agent the router reserved is rung on its registered phone; when it
// answers, the node bridges the two legs through its own sockets (media anchored
// at the node). One goroutine per call (run) owns the call's progress; the SIP
// and interaction callbacks talk to it through the call's channels.
type calls struct {
	svc Interactions
	// plan maps route points to queues and their voice settings; replaced
	// whole when the configuration changes.
	plan atomic.Pointer[dialPlan]
	dir  Directory // agents by id or DN, for direct calls and transfers
	reg  *Registrar
	// contacts finds an agent's registered phones (the registrar, or the mesh).
	contacts func(core.AgentID) []string
	peers    Peers // the gate to peers' resources (nil: not in a cluster)
	dsc      *sipgo.DialogServerCache
	// dccUDP places UDP legs from the node's listening socket (its large
	// receive buffer; phones behind NAT expect requests from the port they
	// registered with); dcc the others (other transports, and UDP peers the
	// listener's address cannot reach), each from a socket sipgo opens.
	dcc, dccUDP *sipgo.DialogClientCache
	// udpLocal is the UDP listener's address (unspecified: any).
	udpLocal netip.Addr
	host     netip.Addr
	// contact is the node's Contact for responses it builds itself.
	contact sip.ContactHeader
	// rtpTimeout ends a bridged call whose media stopped both ways.
	rtpTimeout time.Duration
	// maxCalls bounds the calls in progress (overload → 503).
	maxCalls int
	logger   *slog.Logger

	stats callCounters

	// mu guards the indexes below.
	mu   sync.Mutex
	byIx map[core.InteractionID]*call
	byA  map[*sipgo.DialogServerSession]*call
	byB  map[*sipgo.DialogClientSession]*call
	// inviting maps the merge key of INVITEs whose transaction is still open to
	// their branch, to answer merged (looped) requests 482 (RFC 3261 §8.2.2.2).
	inviting map[string]string
	// acks are the re-INVITE 2xx still sent again until their ACK (respond2xx).
	acks map[string]chan struct{}
}

// CallStats are the call counters since start (for metrics).
type CallStats struct {
	Active        int    // calls in progress
	Started       uint64 // INVITEs that became calls
	Bridged       uint64 // agent legs bridged (a transferred call counts again)
	Overloaded    uint64 // refused 503 (call limit, waiting limit, draining, no media port)
	Holds         uint64
	Transfers     uint64
	MediaTimeouts uint64
	// Hand-overs to a peer's queue: taken there, failed (refused, no answer,
	// cut short), refrained from (peer down: nothing sent).
	HandedOver, HandoverFailed, HandoverRefrained uint64
}

type callCounters struct {
	started, bridged, overloaded, holds, transfers, mediaTimeouts atomic.Uint64
	handedOver, handoverFailed, handoverRefrained                 atomic.Uint64
}

// Stats returns the call counters.
func (m *calls) Stats() CallStats {
	m.mu.Lock()
	active := len(m.byIx)
	m.mu.Unlock()
	return CallStats{Active: active, Started: m.stats.started.Load(), Bridged: m.stats.bridged.Load(),
		Overloaded: m.stats.overloaded.Load(), Holds: m.stats.holds.Load(), Transfers: m.stats.transfers.Load(),
		MediaTimeouts: m.stats.mediaTimeouts.Load(), HandedOver: m.stats.handedOver.Load(),
		HandoverFailed: m.stats.handoverFailed.Load(), HandoverRefrained: m.stats.handoverRefrained.Load()}
}

// call is one caller's call.
type call struct {
	ix       core.InteractionID
	queue    core.QueueID // "" for a direct call to an agent
	offer    sdp.Media    // the caller's
	codec    media.Codec
	callerRx net.PacketConn
	maxFwd   uint32 // Max-Forwards for the agent leg (the caller's, minus one)
	mergeKey string
	// music is what the caller hears on hold and while re-queued.
	music *media.Clip
	// direct: media flows between the parties; offerBody is the caller's SDP,
	// passed to the agent.
	direct    bool
	offerBody []byte
	// from is the caller's From (passed on to a peer queue).
	from string
	// handover is the queue's hand-over to a peer (nil: none, or the call
	// came from a peer's hand-over and stays here).
	handover *Handover
	peerLeg  chan peerLeg // hand-over outcomes (placePeerLeg → run)

	bridged chan bridge   // an agent answered (Deliver → run)
	ended   chan string   // the interaction ended elsewhere (Ended → run)
	handed  chan bool     // a transfer finished (onRefer → talk): true = the agent leg was handed over
	timeout chan struct{} // the media stopped (relay → run), one per bridge
	a       *sipgo.DialogServerSession

	mu sync.Mutex
	// done is set by forget: nothing may start on the call after it.
	done bool
	// ans is the node's answer to the caller: only its direction and version
	// ever change (a re-INVITE from the caller), never its address or codec.
	ans      sdp.Description
	answered bool // the caller got the 200
	tok      agent.Token
	agentID  core.AgentID
	// rings stops ringing, by offer: a withdrawn offer's ring is cancelled even
	// when the next offer's Deliver already started.
	rings map[agent.Token]context.CancelFunc
	// callerPeer is where the caller's RTP was latched by the last relay.
	callerPeer net.Addr
	// b and bRx are the agent leg that answered and the socket facing it.
	b     *sipgo.DialogClientSession
	bRx   net.PacketConn
	bDesc sdp.Description // the node's SDP on b
	// agentBody is the agent's SDP answer, the caller's answer with direct media.
	agentBody []byte
	// connected: the legs are bridged through relay.
	connected bool
	relay     *media.Relay
	stopRelay context.CancelFunc
	moh       *media.Stream // what the caller hears when not bridged or on hold
	stopMoH   context.CancelFunc
	agentHold bool // the agent put the call on hold
	// transferring: a REFER is being carried out; set by onRefer, cleared by talk
	// when it takes the outcome from handed (so one REFER at a time, and an agent
	// BYE meanwhile waits for the outcome).
	transferring bool
	bCodec       sdp.Codec // the codec of the agent leg
	// hoGen numbers hand-over attempts: an outcome of an older one is stale.
	hoGen uint64
	// handedOver: b is the peer queue's leg; the interaction here has ended.
	handedOver bool
}

type bridge struct {
	b      *sipgo.DialogClientSession
	rx     net.PacketConn // nil with direct media
	agent  core.AgentID
	remote sdp.Media
	body   []byte // the agent's SDP
}

// callsParams are newCalls' inputs.
type callsParams struct {
	svc        Interactions
	routes     map[string]core.QueueID
	dir        Directory
	queues     map[core.QueueID]QueueVoice
	reg        *Registrar
	contacts   func(core.AgentID) []string
	peers      Peers
	client     *sipgo.Client
	clientUDP  *sipgo.Client // sends from the UDP listener (nil: client)
	udpLocal   netip.Addr    // the UDP listener's address
	host       string
	port       int
	rtpTimeout time.Duration
	maxCalls   int
	logger     *slog.Logger
}

func newCalls(p callsParams) (*calls, error) {
	host := p.host
	if p.maxCalls <= 0 {
		p.maxCalls = config.DefaultMaxCalls
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, fmt.Errorf("sip: media address %q: %w", host, err)
	}
	contact := sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: "ccmesh", Host: host, Port: p.port}}
	if p.contacts == nil {
		reg := p.reg
		p.contacts = func(id core.AgentID) []string {
			var out []string
			for _, b := range reg.Bindings(id) {
				out = append(out, b.Contact)
			}
			return out
		}
	}
	m := &calls{svc: p.svc, dir: p.dir, reg: p.reg, contacts: p.contacts, peers: p.peers, host: ip, contact: contact, udpLocal: p.udpLocal,
		rtpTimeout: p.rtpTimeout, maxCalls: p.maxCalls, logger: p.logger,
		dsc: sipgo.NewDialogServerCache(p.client, contact), dcc: sipgo.NewDialogClientCache(p.client, contact),
		dccUDP: sipgo.NewDialogClientCache(cmp.Or(p.clientUDP, p.client), contact),
		byIx:   map[core.InteractionID]*call{}, byA: map[*sipgo.DialogServerSession]*call{}, byB: map[*sipgo.DialogClientSession]*call{},
		inviting: map[string]string{}, acks: map[string]chan struct{}{}}
	m.plan.Store(&dialPlan{routes: p.routes, queues: p.queues})
	return m, nil
}

// dialPlan is what route points lead to: queue ids and DNs to queues, and
// each queue's voice settings.
type dialPlan struct {
	routes map[string]core.QueueID
	queues map[core.QueueID]QueueVoice
}

// maxRing bounds how long the node rings an agent's phone, whatever happens
// (the longest offer_timeout is 10 minutes).
const maxRing = 11 * time.Minute

func contentSDP() sip.Header { return sip.NewHeader("Content-Type", "application/sdp") }

// invite places a call leg to uri: over UDP (no transport parameter) from the
// node's listening socket when its address can reach uri's, else over the
// transport the URI names from a socket of its own.
func (m *calls) invite(ctx context.Context, uri sip.Uri, body []byte, hdrs ...sip.Header) (*sipgo.DialogClientSession, error) {
	dcc := m.dcc
	if t, ok := uri.UriParams.Get("transport"); (!ok || strings.EqualFold(t, "udp")) && m.reaches(uri.Host) {
		dcc = m.dccUDP
	}
	return dcc.Invite(ctx, uri, body, hdrs...)
}

// reaches reports whether a UDP socket on the listener's address can send to
// host: any address can, except that a loopback one reaches only loopback,
// and an IPv4 or IPv6 one only its own family.
func (m *calls) reaches(host string) bool {
	l := m.udpLocal
	if !l.IsValid() || l.IsUnspecified() {
		return true
	}
	dst, err := netip.ParseAddr(host)
	if err != nil { // a name: unless on loopback, the listener can send there
		return !l.IsLoopback()
	}
	dst = dst.Unmap()
	return l.Is4() == dst.Is4() && (!l.IsLoopback() || dst.IsLoopback())
}

// dccs are the dialog caches of the legs the node placed.
func (m *calls) dccs() [2]*sipgo.DialogClientCache {
	return [2]*sipgo.DialogClientCache{m.dccUDP, m.dcc}
}

// listen opens a media socket on the node's address.
func (m *calls) listen() (net.PacketConn, error) {
	return net.ListenPacket("udp", netip.AddrPortFrom(m.host, 0).String())
}

// destination is what an INVITE's request URI asks for: a queue's route point or
// an agent (by DN or id).
type destination struct {
	queue core.QueueID
	agent core.AgentID
}

func (m *calls) resolve(user string) (destination, bool) {
	if q, ok := m.plan.Load().routes[user]; ok {
		return destination{queue: q}, true
	}
	if user != "" {
		if id, _, ok := m.dir.Lookup(user); ok {
			return destination{agent: id}, true
		}
	}
	return destination{}, false
}

// onInvite handles an INVITE. A new call's handler goroutine runs the call to
// its end (run); sipgo gives each request its own goroutine.
func (m *calls) onInvite(req *sip.Request, tx sip.ServerTransaction) {
	if to := req.To(); to != nil {
		if _, ok := to.Params.Get("tag"); ok {
			m.reinvite(req, tx)
			return
		}
	}
	mf := req.MaxForwards()
	if mf != nil && *mf == 0 {
		reply(tx, req, 483, "Too Many Hops")
		return
	}
	key, merged := m.merged(req)
	if merged {
		reply(tx, req, 482, "Loop Detected")
		return
	}
	dst, ok := m.resolve(req.Recipient.User)
	if !ok {
		m.endInviting(key)
		reply(tx, req, 404, "Not Found")
		return
	}
	m.mu.Lock()
	full := len(m.byIx) >= m.maxCalls
	m.mu.Unlock()
	if full {
		m.stats.overloaded.Add(1)
		m.endInviting(key)
		reply(tx, req, 503, "Service Unavailable (call limit)", sip.NewHeader("Retry-After", "5"))
		return
	}
	direct := dst.queue != "" && m.plan.Load().queues[dst.queue].Direct
	offer, err := sdp.Parse(req.Body())
	if err == nil && len(offer.Codecs) == 0 && !direct { // direct media: the codecs are the parties' business
		err = sdp.ErrNoCommon
	}
	switch {
	case errors.Is(err, sdp.ErrNoCommon), errors.Is(err, sdp.ErrNoAudio):
		m.endInviting(key)
		reply(tx, req, 488, "Not Acceptable Here", sip.NewHeader("Warning", `304 ccmesh "`+err.Error()+`"`))
		return
	case err != nil:
		m.endInviting(key)
		reply(tx, req, 400, "Bad Request (SDP)")
		return
	}
	c := &call{queue: dst.queue, offer: offer, mergeKey: key, maxFwd: 69, direct: direct, offerBody: req.Body(),
		bridged: make(chan bridge, 1), ended: make(chan string, 1), handed: make(chan bool, 1), peerLeg: make(chan peerLeg, 1),
		rings: map[agent.Token]context.CancelFunc{}}
	if mf != nil {
		c.maxFwd = uint32(*mf) - 1
	}
	if !direct {
		if c.callerRx, err = m.listen(); err != nil {
			m.stats.overloaded.Add(1)
			m.endInviting(key)
			reply(tx, req, 503, "Service Unavailable (no media port)", sip.NewHeader("Retry-After", "5"))
			return
		}
		c.ans, _ = sdp.Answer(offer, c.callerRx.LocalAddr().(*net.UDPAddr).AddrPort(), rand.Uint64N(1<<62))
		c.codec = mediaCodec(c.ans.Codecs[0])
	}
	snd := m.plan.Load().queues[dst.queue]
	c.music = snd.Music
	if c.music == nil {
		c.music = media.MusicOnHold()
	}
	if f := req.From(); f != nil {
		c.from = f.Address.String()
	}
	attrs := map[string]string{"call_id": req.CallID().Value(), "to": req.Recipient.User}
	handedIn := req.GetHeader(headerHandover) != nil
	if h := req.GetHeader(headerHandover); h != nil {
		// Handed over by a peer: it stays here, and the caller is the peer's.
		attrs["handed_over_by"] = h.Value()
		if cl := req.GetHeader(headerCaller); cl != nil {
			c.from = cl.Value()
		}
	} else if dst.queue != "" {
		c.handover = snd.Handover
	}
	attrs["from"] = c.from
	// Registered before Create: the router may offer the call to a ready agent at
	// once, and Deliver must find it.
	c.ix = interaction.NewID()
	m.mu.Lock()
	m.byIx[c.ix] = c
	m.mu.Unlock()
	cr := interaction.CreateRequest{ID: c.ix, Channel: core.ChannelVoice, Queue: dst.queue,
		Attributes: attrs}
	if dst.agent != "" {
		_, _, err = m.svc.Direct(cr, dst.agent)
	} else {
		_, _, err = m.svc.Create(cr)
	}
	if err != nil {
		c.ix = "" // nothing to abandon
		m.mu.Lock()
		delete(m.byIx, cr.ID)
		m.mu.Unlock()
		m.endInviting(key)
		c.close()
	}
	var deny *agent.DenyError
	switch {
	case err == nil:
	case errors.Is(err, interaction.ErrQueueClosed):
		m.closed(req, tx, dst.queue, offer)
		return
	case errors.Is(err, interaction.ErrBusy), errors.Is(err, interaction.ErrDraining):
		m.stats.overloaded.Add(1)
		reply(tx, req, 503, "Service Unavailable", sip.NewHeader("Retry-After", "30"))
		return
	case errors.As(err, &deny) && (deny.Reason == agent.DenyAtCapacity || deny.Reason == agent.DenyDuplicate):
		reply(tx, req, 486, "Busy Here")
		return
	case errors.Is(err, interaction.ErrAgentUnavailable):
		reply(tx, req, 480, "Temporarily Unavailable ("+err.Error()+")")
		return
	default:
		reply(tx, req, 500, "Server Internal Error")
		m.logger.Error("sip: create voice interaction", "err", err)
		return
	}
	if c.a, err = m.dsc.ReadInvite(req, tx); err != nil {
		m.abandon(c, "dialog: "+err.Error())
		reply(tx, req, 500, "Server Internal Error")
		return
	}
	m.mu.Lock()
	m.byA[c.a] = c
	m.mu.Unlock()
	m.stats.started.Add(1)
	// Early media: the caller hears the node while it waits (RFC 3960 style 183);
	// or, for trunks that drop early media, the call is answered first.
	code, reason, body, hdrs := 183, "Session Progress", c.ans.Marshal(), []sip.Header{contentSDP()}
	switch {
	case direct: // signalling only: the caller hears its own ringback
		code, reason, body, hdrs = 180, "Ringing", nil, nil
	case snd.AnswerFirst && dst.queue != "" && !handedIn:
		// (a hand-over from a peer is answered only by an agent: the peer
		// keeps the call in its own queue until then)
		code, reason = 200, "OK"
	}
	if err := c.a.Respond(code, reason, body, hdrs...); err != nil {
		m.abandon(c, fmt.Sprintf("%d failed", code))
		return
	}
	c.mu.Lock()
	c.answered = code == 200
	switch {
	case direct:
	case dst.agent != "": // a direct call rings
		m.playLocked(c, media.Ringback(), nil, nil)
	case snd.Announcement != nil: // the queue's announcement once, then its music
		m.playLocked(c, snd.Announcement, c.music, nil)
	default:
		m.playLocked(c, c.music, nil, nil)
	}
	c.mu.Unlock()
	m.run(c, tx)
}

// run follows the call from its early media to its end: waiting (for an agent),
// talking (bridged), and back to waiting after a blind transfer.
func (m *calls) run(c *call, tx sip.ServerTransaction) {
	// A CANCEL is seen at once through OnCancel; the transaction itself ends only
	// after its Timer I, seconds later, too late to stop offering the call.
	cancelled := make(chan struct{})
	var once sync.Once
	if !tx.OnCancel(func(*sip.Request) { once.Do(func() { close(cancelled) }) }) {
		once.Do(func() { close(cancelled) })
	}
	txDone := tx.Done()
	var byed <-chan struct{} // the caller's BYE, once answered
	c.mu.Lock()
	if c.answered { // answer mode "answer": the INVITE transaction is over
		cancelled, txDone, byed = nil, nil, c.a.Context().Done()
	}
	c.mu.Unlock()
	ho := m.newHandover(c)
	defer func() { m.stopHandover(c, ho) }()
	for {
		select {
		case <-cancelled: // the caller hung up (the transaction layer answered 200 and 487)
			m.abandon(c, "caller hung up while waiting")
			return
		case <-txDone: // the transaction ended otherwise (transport failure)
			m.abandon(c, "caller transaction ended")
			return
		case <-byed: // the caller hung up while re-queued after a transfer
			m.abandon(c, "caller hung up while waiting")
			return
		case state := <-c.ended: // max wait, cancelled through the API, a direct offer not taken
			c.mu.Lock()
			answered := c.answered
			c.mu.Unlock()
			if answered {
				m.bye(c.a.Bye)
			} else {
				_ = c.a.Respond(480, "Temporarily Unavailable ("+state+")", nil)
			}
			m.forget(c)
			return
		case <-ho.due(): // waited long enough here: try the peer's queue too
			m.startHandover(c, ho)
		case pl := <-c.peerLeg: // the hand-over attempt ended
			if !m.settleHandover(c, ho, pl) {
				continue
			}
			br := bridge{b: pl.b, rx: pl.rx, remote: pl.remote, body: pl.b.InviteResponse.Body()}
			if m.connect(c, br) {
				m.endInviting(c.mergeKey)
				m.talk(c, br) // a peer leg never REFERs: its end is the call's
			}
			return
		case br := <-c.bridged: // the agent answered
			m.stopHandover(c, ho)
			if !m.connect(c, br) {
				return
			}
			m.stats.bridged.Add(1)
			m.endInviting(c.mergeKey)
			cancelled, txDone, byed = nil, nil, c.a.Context().Done()
			if !m.talk(c, br) {
				return
			}
			// Waiting again after a blind transfer: to another queue or agent,
			// so the first queue's hand-over no longer applies.
			m.stopHandover(c, ho)
			ho = &handover{}
		}
	}
}

// connect bridges the caller with the agent leg that answered, continuing the
// caller's RTP stream, and answers the caller (first time) with the SDP it
// already has. It reports false when the call ended instead.
func (m *calls) connect(c *call, br bridge) bool {
	if c.direct {
		c.mu.Lock()
		c.connected, c.answered, c.agentBody, c.timeout = true, true, br.body, nil
		c.mu.Unlock()
		if err := c.a.Respond(200, "OK", br.body, contentSDP()); err != nil && c.a.Context().Err() == nil {
			m.logger.Error("sip: answer caller", "interaction", c.ix, "err", err)
			m.hangup(c, "answer failed")
			return false
		}
		return true // (a caller that hung up right after its ACK is seen by talk)
	}
	c.mu.Lock()
	cont := c.haltMoHLocked()
	timeout := make(chan struct{})
	var once sync.Once
	var callerPeer net.Addr = net.UDPAddrFromAddrPort(c.offer.Addr)
	if c.callerPeer != nil { // latched by an earlier bridge (before a transfer)
		callerPeer = c.callerPeer
	}
	relay, err := media.NewRelay(media.RelayParams{
		Caller:    media.Leg{Conn: c.callerRx, Peer: callerPeer, TelephoneEvent: c.offer.TelephoneEvent},
		Agent:     media.Leg{Conn: br.rx, Peer: net.UDPAddrFromAddrPort(br.remote.Addr), TelephoneEvent: br.remote.TelephoneEvent},
		ToCaller:  &cont,
		Timeout:   m.rtpTimeout,
		OnTimeout: func() { once.Do(func() { close(timeout) }) },
	})
	answered, ans := c.answered, c.ans.Marshal()
	if err == nil {
		ctx, stop := context.WithCancel(context.Background())
		c.relay, c.stopRelay, c.timeout = relay, stop, timeout
		c.connected, c.answered, c.agentHold = true, true, false
		if len(br.remote.Codecs) > 0 {
			c.bCodec = br.remote.Codecs[0]
		}
		go func() { _ = relay.Run(ctx) }()
	}
	c.mu.Unlock()
	if err == nil && !answered {
		if err = c.a.Respond(200, "OK", ans, contentSDP()); err != nil && c.a.Context().Err() != nil {
			return true // the caller hung up right after its ACK: talk sees the BYE
		}
	}
	if err != nil {
		m.logger.Error("sip: bridge", "interaction", c.ix, "err", err)
		m.hangup(c, "bridge failed")
		return false
	}
	return true
}

// talk waits for the end of a bridged conversation. It reports true when the
// agent leg was handed over by a blind transfer and the caller waits again.
func (m *calls) talk(c *call, br bridge) bool {
	for {
		select {
		case <-c.a.Context().Done(): // the caller hung up
			m.hangup(c, "caller hung up")
			return false
		case <-br.b.Context().Done(): // the agent hung up
			c.mu.Lock()
			transferring := c.transferring
			c.mu.Unlock()
			if transferring && m.transferOutcome(c) {
				return true // the transfer BYE, or the agent's own after its REFER
			}
			m.hangup(c, "agent hung up")
			return false
		case ok := <-c.handed: // a transfer finished (or was refused: keep talking)
			c.mu.Lock()
			c.transferring = false
			c.mu.Unlock()
			if ok {
				return true
			}
		case <-c.timeout: // media stopped both ways
			m.stats.mediaTimeouts.Add(1)
			m.logger.Warn("sip: media stopped; ending call", "interaction", c.ix)
			m.hangup(c, "media timeout")
			return false
		case <-c.ended: // ended elsewhere (agent logged out, API)
			m.hangup(c, "ended")
			return false
		}
	}
}

// transferOutcome waits for the REFER under way to finish and takes its outcome.
func (m *calls) transferOutcome(c *call) bool {
	ok := <-c.handed
	c.mu.Lock()
	c.transferring = false
	c.mu.Unlock()
	return ok
}

// hangup ends a call that was answered: BYE to both legs still up, wrap-up for
// the agent (or abandon, if no agent holds it any more).
func (m *calls) hangup(c *call, reason string) {
	c.mu.Lock()
	ag, handedOver := c.agentID, c.handedOver
	c.mu.Unlock()
	if handedOver { // the interaction ended here when the peer took it
		m.logger.Info("sip: handed-over call ended", "interaction", c.ix, "reason", reason)
	} else if _, err := m.svc.CompleteWithReason(c.ix, ag, reason); err != nil {
		if _, err := m.svc.Abandon(c.ix, reason); err != nil && !errors.Is(err, interaction.ErrNotFound) {
			m.logger.Warn("sip: end after hangup", "interaction", c.ix, "reason", reason, "err", err)
		}
	}
	// Both legs at once: a caller that does not answer its BYE must not delay the agent's.
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.bye(c.a.Bye) // a no-op if the caller hung up
	}()
	m.forget(c) // BYEs the agent leg
	<-done
}

// bye sends a BYE with a bound on how long it may take.
func (m *calls) bye(f func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = f(ctx)
}

// abandon ends a call that is not connected.
func (m *calls) abandon(c *call, reason string) {
	if c.ix != "" {
		if _, err := m.svc.Abandon(c.ix, reason); err != nil && !errors.Is(err, interaction.ErrNotFound) {
			m.logger.Warn("sip: abandon", "interaction", c.ix, "err", err)
		}
	}
	m.forget(c)
}

// forget releases everything the call holds: indexes, a ringing agent leg
// (cancelled), an answered one (BYE), media.
func (m *calls) forget(c *call) {
	c.mu.Lock()
	c.done = true
	rings, b := c.rings, c.b
	c.rings, c.b, c.connected = nil, nil, false
	m.stopMediaLocked(c)
	c.mu.Unlock()
	m.mu.Lock()
	delete(m.byIx, c.ix)
	delete(m.byA, c.a)
	if b != nil {
		delete(m.byB, b)
	}
	m.mu.Unlock()
	m.endInviting(c.mergeKey)
	select {
	case pl := <-c.peerLeg: // a hand-over outcome nobody took
		m.hangUpLeg(pl.b, pl.rx)
	default:
	}
	for _, cancel := range rings {
		cancel()
	}
	if b != nil {
		m.bye(b.Bye)
		_ = b.Close() // leaves sipgo's dialog cache
	}
	if c.a != nil {
		_ = c.a.Close()
	}
	c.close()
}

// stopMediaLocked stops the relay and the caller's stream (c.mu held).
func (m *calls) stopMediaLocked(c *call) {
	if c.stopRelay != nil {
		c.stopRelay()
		c.relay, c.stopRelay = nil, nil
	}
	if c.stopMoH != nil {
		c.stopMoH()
		c.moh, c.stopMoH = nil, nil
	}
}

func (c *call) close() {
	// The relay and streams stop when their sockets close.
	if c.callerRx != nil {
		_ = c.callerRx.Close()
	}
	c.mu.Lock()
	rx := c.bRx
	c.bRx = nil
	c.mu.Unlock()
	closeConn(rx)
}

// closeConn closes a media socket that may be absent (direct media).
func closeConn(c net.PacketConn) {
	if c != nil {
		_ = c.Close()
	}
}

// playLocked starts what the caller hears while not bridged (c.mu held): first,
// then (if set) then in a loop; first loops when then is nil. cont continues the
// caller's RTP identity from a relay.
func (m *calls) playLocked(c *call, first, then *media.Clip, cont *media.Continuation) {
	var st *media.Stream
	var dest net.Addr = net.UDPAddrFromAddrPort(c.offer.Addr)
	if c.relay != nil { // after a bridge: where the caller really is (symmetric RTP)
		dest = c.relay.CallerPeer()
	}
	p := media.StreamParams{Conn: c.callerRx, Dest: dest, Codec: c.codec,
		Clip: first, Loop: then == nil, Continue: cont, Logger: m.logger}
	if then != nil {
		p.OnClipEnd = func(*media.Clip) { st.SetClip(then, true) }
	}
	st, err := media.NewStream(p)
	if err != nil {
		m.logger.Error("sip: caller stream", "interaction", c.ix, "err", err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	c.moh, c.stopMoH = st, stop
	go func() { _ = st.Run(ctx) }()
}

// haltMoHLocked stops the caller's stream and returns where the next sender must
// continue (c.mu held).
func (c *call) haltMoHLocked() media.Continuation {
	if c.moh == nil {
		return media.Continuation{SSRC: rand.Uint32(), Seq: uint16(rand.Uint32()), Timestamp: rand.Uint32()}
	}
	cont := c.moh.Halt()
	c.stopMoH()
	c.moh, c.stopMoH = nil, nil
	return cont
}

// holdLocked puts a bridged call on music (agent hold, or a transfer under way).
func (m *calls) holdLocked(c *call) {
	if c.relay == nil || c.moh != nil {
		return
	}
	if cont, ok := c.relay.Hold(); ok {
		m.playLocked(c, c.music, nil, &cont)
	}
}

// resumeLocked bridges a held call again.
func (m *calls) resumeLocked(c *call) {
	if c.relay == nil || c.moh == nil {
		return
	}
	c.relay.Resume(c.haltMoHLocked())
}

// closed answers a call to a closed queue: its closed announcement as early media
// (if it has one), then 480.
func (m *calls) closed(req *sip.Request, tx sip.ServerTransaction, q core.QueueID, offer sdp.Media) {
	clip := m.plan.Load().queues[q].Closed
	if clip == nil {
		reply(tx, req, 480, "Temporarily Unavailable (queue closed)")
		return
	}
	conn, err := m.listen()
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
	defer dlg.Close()
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

// Deliver rings the agent's registered phone for an offered voice interaction
// (interaction.Deliverer). It runs on its own goroutine.
func (m *calls) Deliver(ix events.Interaction, tok agent.Token) {
	m.mu.Lock()
	c := m.byIx[ix.ID]
	m.mu.Unlock()
	if c == nil {
		// No call behind it any more: end it without holding the agent responsible.
		_, _ = m.svc.Abandon(ix.ID, "call no longer exists")
		return
	}
	contacts := m.contacts(tok.Agent)
	if len(contacts) == 0 {
		m.logger.Info("sip: agent has no registered phone; offer refused", "agent", tok.Agent, "interaction", ix.ID)
		_, _ = m.svc.Reject(ix.ID, tok.Agent)
		return
	}
	var uri sip.Uri
	if err := sip.ParseUri(contacts[0], &uri); err != nil {
		_, _ = m.svc.Reject(ix.ID, tok.Agent)
		return
	}
	var rx net.PacketConn
	var desc sdp.Description
	body := c.offerBody // direct media: the caller's own offer
	if !c.direct {
		var err error
		if rx, err = m.listen(); err != nil {
			m.logger.Warn("sip: no media port for the agent leg", "interaction", ix.ID, "err", err)
			_, _ = m.svc.Reject(ix.ID, tok.Agent)
			return
		}
		pref := sdp.PCMU
		if c.codec == media.PCMA {
			pref = sdp.PCMA
		}
		desc = sdp.Offer(rx.LocalAddr().(*net.UDPAddr).AddrPort(), rand.Uint64N(1<<62), pref)
		body = desc.Marshal()
	}
	// Bounded whatever happens; the lease's expiry withdraws the ring much sooner.
	ctx, cancel := context.WithTimeout(context.Background(), maxRing)
	defer cancel()
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		closeConn(rx)
		return
	}
	c.rings[tok] = cancel
	c.tok, c.agentID = tok, tok.Agent
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.rings, tok)
		c.mu.Unlock()
	}()
	maxFwd := sip.MaxForwardsHeader(c.maxFwd)
	b, err := m.invite(ctx, uri, body, contentSDP(), &maxFwd)
	if err == nil {
		err = b.WaitAnswer(ctx, sipgo.AnswerOptions{})
	}
	if ctx.Err() != nil {
		closeConn(rx)
		if b != nil && b.InviteResponse != nil && b.InviteResponse.IsSuccess() {
			m.ackAndHangUp(b) // the phone answered as the ring was withdrawn
		}
		return // withdrawn: sipgo sent CANCEL
	}
	if err != nil {
		// Busy, declined, unreachable or no answer: a missed offer; the call keeps its place.
		m.logger.Info("sip: agent did not answer", "agent", tok.Agent, "interaction", ix.ID, "err", err)
		closeConn(rx)
		_, _ = m.svc.Reject(ix.ID, tok.Agent)
		return
	}
	_ = b.Ack(ctx)
	remote, perr := sdp.Parse(b.InviteResponse.Body())
	if perr != nil || len(remote.Codecs) == 0 && !c.direct {
		m.hangUpLeg(b, rx)
		_, _ = m.svc.Reject(ix.ID, tok.Agent)
		return
	}
	c.mu.Lock()
	if c.done || c.tok != tok || c.handedOver {
		c.mu.Unlock()
		m.hangUpLeg(b, rx)
		return
	}
	// From here the call's end BYEs this leg.
	c.b, c.bRx, c.bDesc = b, rx, desc
	c.mu.Unlock()
	m.mu.Lock()
	m.byB[b] = c
	m.mu.Unlock()
	if _, err := m.svc.Accept(ix.ID, tok.Agent); err != nil {
		// The offer ended meanwhile (caller gone, lease expired): hang up the agent.
		c.mu.Lock()
		if c.b == b {
			c.b, c.bRx = nil, nil
		}
		c.mu.Unlock()
		m.mu.Lock()
		delete(m.byB, b)
		m.mu.Unlock()
		m.hangUpLeg(b, rx)
		return
	}
	c.bridged <- bridge{b: b, rx: rx, agent: tok.Agent, remote: remote, body: b.InviteResponse.Body()}
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
	cancel := c.rings[tok]
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// Ended tells the call's goroutine that its interaction ended elsewhere
// (interaction.Deliverer): a waiting caller gets 480, a call still up is hung up.
func (m *calls) Ended(id core.InteractionID, state string) {
	m.mu.Lock()
	c := m.byIx[id]
	m.mu.Unlock()
	if c == nil {
		return // the SIP side ended it first
	}
	if state == string(interaction.StateHandedOver) {
		return // a peer's queue took the call: it goes on
	}
	select {
	case c.ended <- state:
	default:
	}
}

// mediaCodec is the media package's codec for a negotiated SDP codec.
func mediaCodec(c sdp.Codec) media.Codec {
	if c == sdp.PCMA {
		return media.PCMA
	}
	return media.PCMU
}
