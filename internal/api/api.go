// Package api is the REST API v1 of a node: agents, queues, interactions, routing
// decisions, the event stream, health and metrics. Errors are converted here, once,
// to an HTTP status and a stable code: {"error":{"code":"not_found","message":"..."}}.
package api

import (
	"bufio"
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/interaction"
	"github.com/ccmesh/ccmesh/internal/mesh"
	"github.com/ccmesh/ccmesh/internal/router"
	"github.com/ccmesh/ccmesh/internal/sip"
	"github.com/ccmesh/ccmesh/internal/store"
)

//go:embed openapi.json
var openAPI []byte

// owned refuses, in a cluster, to change an agent another node owns: only the
// owner changes its agents (ADR 0006); the answer names that node.
func (s *Server) owned(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.p.Cluster != nil {
			id := core.AgentID(r.PathValue("id"))
			if owner := s.p.Cluster.Owner(id); owner != "" && owner != s.p.Node {
				writeError(w, http.StatusConflict, "agent_elsewhere",
					fmt.Sprintf("agent %s is owned by node %s: use that node's API (or log in here to move her)", id, owner))
				return
			}
		}
		h(w, r)
	}
}

// moveHere, in a cluster, makes this node the owner of an agent logging in
// here (ADR 0006): her owner hands her over unless she is busy there.
func (s *Server) moveHere(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.p.Cluster != nil {
			id := core.AgentID(r.PathValue("id"))
			if owner := s.p.Cluster.Owner(id); owner != "" && owner != s.p.Node {
				if err := s.p.Cluster.Claim(r.Context(), id); err != nil {
					s.moveError(w, id, owner, err)
					return
				}
				s.p.Logger.Info("agent moved here to log in", "agent", id, "from", owner)
			}
		}
		h(w, r)
	}
}

func (s *Server) moveError(w http.ResponseWriter, id core.AgentID, owner core.NodeID, err error) {
	switch {
	case errors.Is(err, agent.ErrAgentBusy):
		writeError(w, http.StatusConflict, "agent_busy",
			fmt.Sprintf("agent %s is busy at node %s: she can log in here once her current work there ends", id, owner))
	case errors.Is(err, mesh.ErrMoveConflict):
		writeError(w, http.StatusConflict, "move_conflict", fmt.Sprintf("agent %s moved meanwhile: try again", id))
	case errors.Is(err, mesh.ErrDirectoryUnavailable):
		writeError(w, http.StatusServiceUnavailable, "directory_unavailable",
			fmt.Sprintf("agent %s is owned by node %s and the cluster directory cannot record a move now: log in there, or retry", id, owner))
	case errors.Is(err, agent.ErrUnknownAgent) && s.known(id):
		// A configured agent unknown at the node asked: it no longer owned
		// her (another move won).
		writeError(w, http.StatusConflict, "move_conflict", fmt.Sprintf("agent %s moved meanwhile: try again", id))
	case errors.Is(err, agent.ErrUnknownAgent):
		writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("unknown agent %s", id))
	default:
		s.p.Logger.Error("move an agent here", "agent", id, "err", err)
		writeError(w, http.StatusBadGateway, "move_failed", fmt.Sprintf("agent %s could not move here from node %s", id, owner))
	}
}

// maxBody bounds request bodies.
const maxBody = 1 << 20

// Registrations is the registrar's read side. Safe for concurrent use.
type Registrations interface {
	Bindings(core.AgentID) []sip.Binding
	All() map[core.AgentID][]sip.Binding
	Stats() sip.RegistrarStats
}

// Calls is the SIP edge's call counters. Safe for concurrent use.
type Calls interface {
	CallStats() sip.CallStats
}

// SharedConfig is the configuration of agents and queues shared by the
// cluster's members (or the node's own, alone), changed at run time.
type SharedConfig interface {
	// Shared is the revision in force.
	Shared() SharedState
	// PutShared validates YAML data and makes it the next revision
	// (replicated in a cluster); with conditional set, only if expect is
	// still the latest. It returns the revision and whether this node applied
	// it already. Errors: config.ErrInvalid, mesh.ErrConfigConflict,
	// mesh.ErrConfigUnavailable, mesh.ErrConfigPending (kept for the heal).
	PutShared(ctx context.Context, data []byte, expect uint64, conditional bool) (rev uint64, applied bool, err error)
}

// SharedState is the shared configuration in force at a node.
type SharedState struct {
	// Revision is the replicated revision (0: the node's file, never changed).
	Revision uint64 `json:"revision"`
	// Source is "file", "last_known_good" (the copy kept from a previous run)
	// or "replicated".
	Source string `json:"source"`
	// YAML is the agents and queues document.
	YAML string `json:"yaml"`
}

// Cluster reports the node's cluster membership (nil when the node is alone).
type Cluster interface {
	Status() mesh.Status
	// Owner is the node owning an agent ("" for an unknown agent).
	Owner(core.AgentID) core.NodeID
	// Claim moves an agent to this node (she logs in here).
	Claim(context.Context, core.AgentID) error
	// PeerRegistrations are the other members' registrations, JSON as in
	// GET /registrations' map, and the members that did not answer.
	PeerRegistrations() (map[core.NodeID]json.RawMessage, []core.NodeID)
	// Snapshots are every agent's state as this node knows it (its own from
	// its manager, the others' from their owners' feeds).
	Snapshots() []agent.View
}

// Params are the API's dependencies.
type Params struct {
	Cluster Cluster
	// Shared is the shared configuration (optional: without it the
	// /config/shared endpoints answer 404).
	Shared SharedConfig
	// AllAgents are the agents that may authenticate (all the cluster's); the
	// node's own agents (Agents) always may.
	AllAgents []config.Agent
	// Registrations and Calls are nil when the node runs without SIP.
	Registrations Registrations
	Calls         Calls
	Node          core.NodeID
	Tokens        []config.APIToken
	Agents        *agent.Manager
	Interactions  *interaction.Service
	Router        *router.Router
	Store         *store.Store
	Log           *events.Log
	Logger        *slog.Logger
	// Ready reports whether the node takes traffic (started, not draining).
	Ready func() bool
}

// Server serves the API. It is safe for concurrent use.
type Server struct {
	p Params
	// agents are every agent's configuration by id (in a cluster, the agents
	// of other owners too: an agent authenticates anywhere, changes only at
	// her owner); replaced whole on a configuration change.
	agents  atomic.Pointer[map[core.AgentID]config.Agent]
	mux     *http.ServeMux
	reg     *prometheus.Registry
	metrics *metrics
	streams atomic.Int64
}

// New returns the API server.
func New(p Params) *Server {
	s := &Server{p: p, mux: http.NewServeMux(), reg: prometheus.NewRegistry()}
	s.SetAgents(p.AllAgents)
	if s.p.Logger == nil {
		s.p.Logger = slog.Default()
	}
	s.metrics = newMetrics(s.reg, s)
	s.routes()
	return s
}

// known reports whether id is a configured agent (of any owner).
func (s *Server) known(id core.AgentID) bool {
	_, ok := (*s.agents.Load())[id]
	return ok
}

// SetAgents replaces the agents that may authenticate (a configuration change).
func (s *Server) SetAgents(agents []config.Agent) {
	m := make(map[core.AgentID]config.Agent, len(agents))
	for _, a := range agents {
		m[a.ID] = a
	}
	s.agents.Store(&m)
}

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /healthz", s.healthz)
	m.HandleFunc("GET /readyz", s.readyz)
	m.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	m.HandleFunc("GET /api/v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPI)
	})
	m.HandleFunc("GET /api/v1/agents", s.auth(staff, s.listAgents))
	m.HandleFunc("GET /api/v1/agents/{id}", s.auth(selfOrStaff, s.getAgent))
	m.HandleFunc("GET /api/v1/agents/{id}/history", s.auth(selfOrStaff, s.agentHistory))
	m.HandleFunc("POST /api/v1/agents/{id}/login", s.auth(selfOrSupervisor, s.moveHere(s.login)))
	m.HandleFunc("POST /api/v1/agents/{id}/logout", s.auth(selfOrSupervisor, s.owned(s.logout)))
	m.HandleFunc("POST /api/v1/agents/{id}/state", s.auth(selfOrSupervisor, s.owned(s.setState)))
	m.HandleFunc("GET /api/v1/registrations", s.auth(staff, s.listRegistrations))
	m.HandleFunc("GET /api/v1/cluster", s.auth(staff, s.clusterStatus))
	m.HandleFunc("GET /api/v1/config/shared", s.auth(admin, s.getShared))
	m.HandleFunc("PUT /api/v1/config/shared", s.auth(admin, s.putShared))
	m.HandleFunc("GET /api/v1/queues", s.auth(anyone, s.listQueues))
	m.HandleFunc("GET /api/v1/queues/{id}", s.auth(anyone, s.getQueue))
	m.HandleFunc("POST /api/v1/interactions", s.auth(tokens, s.createInteraction))
	m.HandleFunc("GET /api/v1/interactions", s.auth(tokens, s.listInteractions))
	m.HandleFunc("GET /api/v1/interactions/{id}", s.auth(anyone, s.getInteraction))
	m.HandleFunc("GET /api/v1/interactions/{id}/events", s.auth(anyone, s.interactionEvents))
	m.HandleFunc("GET /api/v1/interactions/{id}/decisions", s.auth(anyone, s.interactionDecisions))
	m.HandleFunc("POST /api/v1/interactions/{id}/accept", s.auth(agentsOnly, s.accept))
	m.HandleFunc("POST /api/v1/interactions/{id}/reject", s.auth(agentsOnly, s.reject))
	m.HandleFunc("POST /api/v1/interactions/{id}/complete", s.auth(agentsOnly, s.complete))
	m.HandleFunc("POST /api/v1/interactions/{id}/cancel", s.auth(tokens, s.cancel))
	m.HandleFunc("GET /api/v1/events", s.auth(anyone, s.stream))
	m.HandleFunc("/api/", s.noRoute)
}

// noRoute answers 405 (with Allow) when the path exists for other methods, else 404.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := r.Clone(r.Context())
		probe.Method = m
		if _, pattern := s.mux.Handler(probe); pattern != "/api/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" not allowed on "+r.URL.Path+"; allowed: "+strings.Join(allow, ", "))
		return
	}
	writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path)
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
	s.mux.ServeHTTP(rw, r)
	s.metrics.requests.WithLabelValues(methodLabel(r.Method), strconv.Itoa(rw.code)).Inc()
}

// methodLabel bounds the metric's label values: clients choose the method string.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodHead, http.MethodOptions:
		return m
	}
	return "other"
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// Flush lets the event stream flush through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "node": s.p.Node})
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.p.Ready != nil && !s.p.Ready() {
		writeError(w, http.StatusServiceUnavailable, "not_ready", "node is starting or draining")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "node": s.p.Node})
}

// principal is who is calling.
type principal struct {
	agent core.AgentID // set for agents
	role  config.Role  // set for token holders
	name  string
}

func (p principal) staff() bool {
	return p.role == config.RoleSupervisor || p.role == config.RoleAdmin
}

// policy decides whether a principal may call an endpoint, given the {id} path value.
type policy func(p principal, id string) bool

func anyone(principal, string) bool         { return true }
func staff(p principal, _ string) bool      { return p.staff() }
func tokens(p principal, _ string) bool     { return p.role != "" }
func admin(p principal, _ string) bool      { return p.role == config.RoleAdmin }
func agentsOnly(p principal, _ string) bool { return p.agent != "" }
func selfOrStaff(p principal, id string) bool {
	return p.staff() || p.role == config.RoleIntegrator || (p.agent != "" && string(p.agent) == id)
}
func selfOrSupervisor(p principal, id string) bool {
	return p.staff() || (p.agent != "" && string(p.agent) == id)
}

type ctxKey struct{}

// auth authenticates (Bearer token or agent Basic credentials) and applies pol.
func (s *Server) auth(pol policy, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := s.authenticate(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="ccmesh", Bearer realm="ccmesh"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing or invalid credentials: use an API token (Authorization: Bearer) or an agent's id and password (Basic)")
			return
		}
		if !pol(p, r.PathValue("id")) {
			writeError(w, http.StatusForbidden, "forbidden", "this principal may not "+r.Method+" "+r.URL.Path)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, p)))
	}
}

func (s *Server) authenticate(r *http.Request) (principal, bool) {
	h := r.Header.Get("Authorization")
	if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
		for _, t := range s.p.Tokens {
			if subtle.ConstantTimeCompare([]byte(t.Token), []byte(tok)) == 1 {
				return principal{role: t.Role, name: t.Name}, true
			}
		}
		return principal{}, false
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return principal{}, false
	}
	id := core.AgentID(user)
	a, found := (*s.agents.Load())[id]
	want := a.Password
	if !found {
		if a, ok := s.p.Agents.Config(id); ok {
			want, found = a.Password, true
		}
	}
	if !found {
		// Compare anyway so timing does not reveal which agent ids exist.
		subtle.ConstantTimeCompare([]byte(pass), []byte("\x00invalid"))
		return principal{}, false
	}
	if subtle.ConstantTimeCompare([]byte(want), []byte(pass)) != 1 {
		return principal{}, false
	}
	return principal{agent: id, name: string(id)}, true
}

func who(r *http.Request) principal {
	p, _ := r.Context().Value(ctxKey{}).(principal)
	return p
}

// errorBody is the one error shape of the API.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b errorBody
	b.Error.Code, b.Error.Message = code, msg
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// fail converts a domain error to its HTTP status and code: the API's one edge.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var deny *agent.DenyError
	var trans *interaction.TransitionError
	status, code := http.StatusInternalServerError, "internal"
	switch {
	case errors.Is(err, interaction.ErrNotFound), errors.Is(err, store.ErrNotFound), errors.Is(err, agent.ErrUnknownAgent):
		status, code = http.StatusNotFound, "not_found"
	case errors.Is(err, interaction.ErrUnknownQueue), errors.Is(err, router.ErrUnknownQueue):
		status, code = http.StatusNotFound, "unknown_queue"
	case errors.Is(err, interaction.ErrBadRequest):
		status, code = http.StatusBadRequest, "bad_request"
	case errors.Is(err, interaction.ErrNotYours):
		status, code = http.StatusForbidden, "not_yours"
	case errors.Is(err, interaction.ErrWrongState), errors.As(err, &trans), errors.Is(err, agent.ErrWrongLeaseState):
		status, code = http.StatusConflict, "wrong_state"
	case errors.Is(err, agent.ErrLeaseEnded), errors.Is(err, agent.ErrStaleEpoch):
		status, code = http.StatusConflict, "lease_ended"
	case errors.Is(err, agent.ErrHasWork):
		status, code = http.StatusConflict, "agent_has_work"
	case errors.Is(err, agent.ErrLoggedOut):
		status, code = http.StatusConflict, "logged_out"
	case errors.As(err, &deny):
		status, code = http.StatusConflict, "denied_"+string(deny.Reason)
	case errors.Is(err, interaction.ErrQueueClosed):
		status, code = http.StatusConflict, "queue_closed"
	case errors.Is(err, interaction.ErrBusy), errors.Is(err, router.ErrFull):
		w.Header().Set("Retry-After", "5")
		status, code = http.StatusServiceUnavailable, "busy"
	case errors.Is(err, interaction.ErrDraining):
		w.Header().Set("Retry-After", "30")
		status, code = http.StatusServiceUnavailable, "draining"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.Is(err, events.ErrClosed):
		status, code = http.StatusServiceUnavailable, "unavailable"
	}
	if status == http.StatusInternalServerError {
		s.p.Logger.Error("api", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeError(w, status, code, err.Error())
}

// decode reads one JSON object into v, rejecting unknown fields, trailing data and big bodies.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	// curl -d sends application/x-www-form-urlencoded; the body is parsed as JSON whatever it says.
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") &&
		!strings.HasPrefix(ct, "application/x-www-form-urlencoded") && !strings.HasPrefix(ct, "text/plain") {
		writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "Content-Type must be application/json, got "+ct)
		return false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		msg := "invalid JSON body: " + err.Error()
		if errors.Is(err, io.EOF) {
			msg = "empty body: a JSON object is required"
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body larger than %d bytes", maxBody))
			return false
		}
		writeError(w, http.StatusBadRequest, "bad_json", msg)
		return false
	}
	if err := dec.Decode(&json.RawMessage{}); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "bad_json", "invalid JSON body: data after the object")
		return false
	}
	return true
}

// decodeOptional is decode for bodies that may be absent (an empty body leaves v as is).
func decodeOptional(w http.ResponseWriter, r *http.Request, v any) bool {
	br := bufio.NewReader(r.Body)
	if _, err := br.Peek(1); errors.Is(err, io.EOF) {
		return true
	}
	r.Body = io.NopCloser(br)
	return decode(w, r, v)
}

// durable waits until everything the request changed is committed to storage, so
// that what the API acknowledges survives a crash.
func (s *Server) durable(r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	return s.p.Log.Sync(ctx)
}
