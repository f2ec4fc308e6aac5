// Package sip is the SIP edge of a node, on sipgo: UDP, TCP, TLS and WebSocket listeners, protocol
// hygiene (OPTIONS keepalives, 405 with Allow), and the registrar of agents' phones
// with digest authentication. Errors become SIP statuses here and nowhere else.
package sip

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"golang.org/x/sync/errgroup"

	"github.com/ccmesh/ccmesh/internal/clock"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/interaction"
)

// udpReadBuffer is the socket receive buffer: the default overflows near 4,000
// calls/s (measured; see shared/FIELD-NOTES.md beside the repository).
const udpReadBuffer = 8 << 20

// allowed lists the methods the node answers, for Allow headers.
var allowed = []string{"INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "REFER"}

// Params are the SIP edge's dependencies.
type Params struct {
	Config    config.SIPConfig
	Directory Directory
	// Interactions and Routes enable calls: an INVITE to a route point (a queue's
	// DN or id) becomes a voice interaction. Without them INVITE gets 405.
	Interactions Interactions
	Routes       map[string]core.QueueID
	// Queues are the queues' sounds and answer modes.
	Queues map[core.QueueID]QueueVoice
	// Contacts, when set, finds where an agent's phone is registered (in a
	// cluster: here or at the agent's owner); otherwise this node's registrar.
	Contacts func(core.AgentID) []string
	// Peers is the gate to peers' resources, for queues' hand-overs (nil
	// when the node is not in a cluster).
	Peers  Peers
	Log    *events.Log
	Clock  clock.Clock
	Logger *slog.Logger
}

// Server is the SIP edge. Create it with New (which binds the listeners), then Run.
type Server struct {
	ua     *sipgo.UserAgent
	srv    *sipgo.Server
	udp    net.PacketConn
	tcp    net.Listener
	tls    net.Listener // wraps a TCP listener
	ws     net.Listener
	reg    *Registrar
	calls  *calls // nil without Interactions
	parser *sip.Parser
	logger *slog.Logger
}

// SetQueues replaces the route points and the queues' voice settings (a
// configuration change). Calls in progress keep the settings they started with.
func (s *Server) SetQueues(routes map[string]core.QueueID, queues map[core.QueueID]QueueVoice) {
	if s.calls != nil {
		s.calls.plan.Store(&dialPlan{routes: routes, queues: queues})
	}
}

// New binds the configured listeners and builds the server.
func New(p Params) (*Server, error) {
	s := &Server{logger: p.Logger}
	var err error
	if s.reg, err = NewRegistrar(p.Config, p.Directory, p.Log, p.Clock, p.Logger); err != nil {
		return nil, err
	}
	host := "127.0.0.1"
	for _, addr := range []string{p.Config.ListenUDP, p.Config.ListenTCP, p.Config.ListenTLS, p.Config.ListenWS} {
		if h, _, err := net.SplitHostPort(addr); err == nil && h != "" {
			host = h
			break
		}
	}
	if p.Config.ListenUDP != "" {
		pc, err := net.ListenPacket("udp", p.Config.ListenUDP)
		if err != nil {
			return nil, fmt.Errorf("sip: listen udp %s: %w", p.Config.ListenUDP, err)
		}
		if uc, ok := pc.(*net.UDPConn); ok {
			if err := uc.SetReadBuffer(udpReadBuffer); err != nil {
				p.Logger.Warn("sip: could not enlarge the UDP receive buffer", "err", err)
			}
		}
		s.udp = pc
	}
	for _, l := range []struct {
		name, addr string
		dst        *net.Listener
	}{{"tcp", p.Config.ListenTCP, &s.tcp}, {"tls", p.Config.ListenTLS, &s.tls}, {"ws", p.Config.ListenWS, &s.ws}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("sip: listen %s %s: %w", l.name, l.addr, err)
		}
		*l.dst = ln
	}
	if s.tls != nil {
		cert, err := tls.LoadX509KeyPair(p.Config.TLSCert, p.Config.TLSKey)
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("sip: tls certificate: %w", err)
		}
		s.tls = tls.NewListener(s.tls, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	}
	s.parser = sip.NewParser()
	if s.ua, err = sipgo.NewUA(sipgo.WithUserAgent("ccmesh"), sipgo.WithUserAgentHostname(host),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerReadFilter(s.filter))); err != nil {
		s.closeListeners()
		return nil, fmt.Errorf("sip: user agent: %w", err)
	}
	if s.srv, err = sipgo.NewServer(s.ua, sipgo.WithServerLogger(p.Logger)); err != nil {
		s.closeListeners()
		return nil, fmt.Errorf("sip: server: %w", err)
	}
	s.srv.OnRegister(s.reg.HandleRegister)
	s.srv.OnOptions(s.options)
	s.srv.OnNoRoute(s.notAllowed)
	if p.Interactions != nil && s.udp != nil {
		client, err := sipgo.NewClient(s.ua, sipgo.WithClientHostname(host))
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("sip: client: %w", err)
		}
		// UDP requests leave from the listening socket: its 8 MiB receive
		// buffer takes the answers (a client socket of its own had the system
		// default and dropped answers under load).
		clientUDP, err := sipgo.NewClient(s.ua, sipgo.WithClientHostname(host), sipgo.WithClientConnectionAddr(s.udp.LocalAddr().String()))
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("sip: client: %w", err)
		}
		port := s.udp.LocalAddr().(*net.UDPAddr).Port
		if s.calls, err = newCalls(callsParams{svc: p.Interactions, routes: p.Routes, dir: p.Directory, queues: p.Queues, reg: s.reg, contacts: p.Contacts, peers: p.Peers,
			client: client, clientUDP: clientUDP, udpLocal: s.udp.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), host: host, port: port, rtpTimeout: p.Config.RTPTimeout.D(), maxCalls: p.Config.MaxCalls, logger: p.Logger}); err != nil {
			s.closeListeners()
			return nil, err
		}
		s.srv.OnInvite(s.calls.onInvite)
		s.srv.OnAck(s.calls.onAck)
		s.srv.OnBye(s.calls.onBye)
		s.srv.OnCancel(s.calls.onCancel)
		s.srv.OnRefer(s.calls.onRefer)
	}
	return s, nil
}

// Deliverer returns the voice deliverer (nil when calls are off).
func (s *Server) Deliverer() interaction.Deliverer {
	if s.calls == nil {
		return nil
	}
	return s.calls
}

// filter sees every UDP datagram before sipgo parses it: sipgo drops what it cannot
// parse without a word, so a malformed request is answered 400 here (RFC 3261
// §21.4.1) and dropped. TCP is a stream: there sipgo's framing decides.
func (s *Server) filter(info sip.TransportReadProps, data []byte) ([]byte, error) {
	if info.Transport != "UDP" || s.udp == nil || len(bytes.Trim(data, "\r\n\x00")) == 0 {
		return data, nil
	}
	if _, err := s.parser.ParseSIP(data); err == nil {
		return data, nil
	}
	if res := badRequest(data); res != nil {
		if _, err := s.udp.WriteTo(res, info.RemoteAddr); err != nil {
			s.logger.Warn("sip: answer malformed request", "source", info.RemoteAddr, "err", err)
		}
	}
	s.logger.Debug("sip: malformed datagram dropped", "source", info.RemoteAddr, "bytes", len(data))
	return nil, nil
}

// CallStats returns the call counters (zero when calls are off).
func (s *Server) CallStats() CallStats {
	if s.calls == nil {
		return CallStats{}
	}
	return s.calls.Stats()
}

// Registrar returns the registrar (for the API's view of registrations).
func (s *Server) Registrar() *Registrar { return s.reg }

// Addrs returns the bound UDP and TCP addresses ("" when off).
func (s *Server) Addrs() (udp, tcp string) {
	if s.udp != nil {
		udp = s.udp.LocalAddr().String()
	}
	return udp, addrOf(s.tcp)
}

// SecureAddrs returns the bound TLS and WebSocket addresses ("" when off).
func (s *Server) SecureAddrs() (tls, ws string) { return addrOf(s.tls), addrOf(s.ws) }

func addrOf(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	if s.udp != nil {
		g.Go(func() error { return ignoreClosed(s.srv.ServeUDP(s.udp)) })
	}
	if s.tcp != nil {
		g.Go(func() error { return ignoreClosed(s.srv.ServeTCP(s.tcp)) })
	}
	if s.tls != nil {
		g.Go(func() error { return ignoreClosed(s.srv.ServeTLS(s.tls)) })
	}
	if s.ws != nil {
		g.Go(func() error { return ignoreClosed(s.srv.ServeWS(s.ws)) })
	}
	g.Go(func() error { return s.reg.run(gctx) })
	g.Go(func() error {
		<-gctx.Done() // shutting down (or a listener failed)
		s.closeListeners()
		return s.srv.Close()
	})
	if err := g.Wait(); err != nil {
		return fmt.Errorf("sip: %w", err)
	}
	return nil
}

// Close releases the listeners of a server that will not Run (start-up failed).
func (s *Server) Close() { s.closeListeners() }

func (s *Server) closeListeners() {
	if s.udp != nil {
		_ = s.udp.Close()
	}
	for _, l := range []net.Listener{s.tcp, s.tls, s.ws} {
		if l != nil {
			_ = l.Close()
		}
	}
}

func ignoreClosed(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// options answers OPTIONS (keepalives and capability queries, RFC 3261 §11).
func (s *Server) options(req *sip.Request, tx sip.ServerTransaction) {
	reply(tx, req, 200, "OK", sip.NewHeader("Allow", strings.Join(allowed, ", ")), sip.NewHeader("Accept", "application/sdp"))
}

// notAllowed answers methods the node does not implement: 405 with Allow
// (RFC 3261 §21.4.6). An ACK gets no response.
func (s *Server) notAllowed(req *sip.Request, tx sip.ServerTransaction) {
	if req.IsAck() {
		return
	}
	reply(tx, req, 405, "Method Not Allowed", sip.NewHeader("Allow", strings.Join(allowed, ", ")))
}
