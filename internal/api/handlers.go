package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ccmesh/ccmesh/internal/agent"
	"github.com/ccmesh/ccmesh/internal/config"
	"github.com/ccmesh/ccmesh/internal/core"
	"github.com/ccmesh/ccmesh/internal/events"
	"github.com/ccmesh/ccmesh/internal/interaction"
	"github.com/ccmesh/ccmesh/internal/mesh"
	"github.com/ccmesh/ccmesh/internal/sip"
	"github.com/ccmesh/ccmesh/internal/store"
)

// agentBody is an agent as the API shows it: its owner-side view plus what it
// holds and where its phones are registered.
type agentBody struct {
	agent.View
	Interactions  []events.Interaction `json:"interactions"`
	Registrations []sip.Binding        `json:"registrations"`
	// Owner is, in a cluster, the node that owns the agent.
	Owner core.NodeID `json:"owner,omitempty"`
}

func (s *Server) agentBody(v agent.View) agentBody {
	held := s.p.Interactions.Held(v.ID)
	if held == nil {
		held = []events.Interaction{}
	}
	regs := []sip.Binding{}
	if s.p.Registrations != nil {
		regs = s.p.Registrations.Bindings(v.ID)
	}
	b := agentBody{View: v, Interactions: held, Registrations: regs}
	if s.p.Cluster != nil {
		b.Owner = s.p.Cluster.Owner(v.ID)
		if v.Name == "" { // another owner's agent: its static fields from the configuration
			cfg := (*s.agents.Load())[v.ID]
			b.Name, b.DN, b.Skills = cfg.Name, cfg.DN, cfg.Skills
		}
		if b.Leases == nil {
			b.Leases = []agent.LeaseInfo{}
		}
	}
	return b
}

// views are the agents the API lists: this node's, or in a cluster every
// member's as this node knows them.
func (s *Server) views() []agent.View {
	if s.p.Cluster == nil {
		return s.p.Agents.Snapshots()
	}
	views := s.p.Cluster.Snapshots()
	slices.SortFunc(views, func(a, b agent.View) int { return strings.Compare(string(a.ID), string(b.ID)) })
	return views
}

func (s *Server) clusterStatus(w http.ResponseWriter, _ *http.Request) {
	if s.p.Cluster == nil {
		writeJSON(w, http.StatusOK, mesh.Status{Node: s.p.Node})
		return
	}
	writeJSON(w, http.StatusOK, s.p.Cluster.Status())
}

func (s *Server) listRegistrations(w http.ResponseWriter, _ *http.Request) {
	all := map[core.AgentID][]sip.Binding{}
	if s.p.Registrations != nil {
		all = s.p.Registrations.All()
	}
	body := map[string]any{"registrations": all}
	if s.p.Cluster != nil {
		// In a cluster, phones register at any member: the list is the cluster's.
		peers, missing := s.p.Cluster.PeerRegistrations()
		for node, raw := range peers {
			var theirs map[core.AgentID][]sip.Binding
			if err := json.Unmarshal(raw, &theirs); err != nil {
				s.p.Logger.Warn("registrations from a member", "node", node, "err", err)
				missing = append(missing, node)
				continue
			}
			for id, b := range theirs {
				all[id] = append(all[id], b...)
			}
		}
		if len(missing) > 0 {
			body["unreachable_members"] = missing
		}
	}
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) listAgents(w http.ResponseWriter, _ *http.Request) {
	views := s.views()
	out := make([]agentBody, len(views))
	for i, v := range views {
		out[i] = s.agentBody(v)
	}
	writeJSON(w, http.StatusOK, map[string]any{"agents": out})
}

func (s *Server) getAgent(w http.ResponseWriter, r *http.Request) {
	id := core.AgentID(r.PathValue("id"))
	v, err := s.p.Agents.Snapshot(id)
	if err != nil && s.p.Cluster != nil {
		for _, o := range s.p.Cluster.Snapshots() {
			if o.ID == id {
				v, err = o, nil
				break
			}
		}
		if err != nil && s.known(id) {
			// A configured agent whose owner has not been heard from: her
			// owner is known, her state is not.
			v, err = agent.View{ID: id, State: events.AgentState{State: "unknown", Presence: "unknown", Load: []events.ChannelLoad{}}}, nil
		}
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.agentBody(v))
}

func (s *Server) agentHistory(w http.ResponseWriter, r *http.Request) {
	id := core.AgentID(r.PathValue("id"))
	if _, ok := s.p.Agents.Config(id); !ok {
		s.fail(w, r, fmt.Errorf("history of %s: %w", id, agent.ErrUnknownAgent))
		return
	}
	limit, ok := intParam(w, r, "limit", 100)
	if !ok {
		return
	}
	if err := s.durable(r); err != nil {
		s.fail(w, r, err)
		return
	}
	evs, err := s.p.Store.AgentHistory(r.Context(), id, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"agent": id, "events": nonNil(evs)})
}

// respondAgent waits for durability and answers with the agent's view.
func (s *Server) respondAgent(w http.ResponseWriter, r *http.Request, id core.AgentID, err error) {
	if err == nil {
		err = s.durable(r)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	v, err := s.p.Agents.Snapshot(id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.agentBody(v))
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	id := core.AgentID(r.PathValue("id"))
	s.respondAgent(w, r, id, s.p.Agents.Login(id))
}

type logoutRequest struct {
	// Force revokes the agent's offers and interactions (supervisors only).
	Force bool `json:"force"`
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	var req logoutRequest
	if !decodeOptional(w, r, &req) {
		return
	}
	if req.Force && !who(r).staff() {
		writeError(w, http.StatusForbidden, "forbidden", "only a supervisor may force a logout")
		return
	}
	id := core.AgentID(r.PathValue("id"))
	s.respondAgent(w, r, id, s.p.Agents.Logout(id, req.Force))
}

type stateRequest struct {
	// State is "ready" or "not_ready". "ready" during wrap-up ends the wrap-up.
	State  string `json:"state"`
	Reason string `json:"reason"`
}

func (s *Server) setState(w http.ResponseWriter, r *http.Request) {
	var req stateRequest
	if !decode(w, r, &req) {
		return
	}
	id := core.AgentID(r.PathValue("id"))
	var err error
	switch req.State {
	case "ready":
		if req.Reason != "" {
			writeError(w, http.StatusBadRequest, "bad_request", "reason: only allowed with state not_ready")
			return
		}
		if err = s.p.Agents.EndWrapUp(id); err == nil {
			err = s.p.Agents.SetReady(id)
		}
	case "not_ready":
		if len(req.Reason) > 200 {
			writeError(w, http.StatusBadRequest, "bad_request", "reason: longer than 200 characters")
			return
		}
		err = s.p.Agents.SetNotReady(id, req.Reason)
	default:
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("state: %q is not one of ready, not_ready", req.State))
		return
	}
	s.respondAgent(w, r, id, err)
}

func (s *Server) listQueues(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"queues": s.p.Router.AllStats()})
}

func (s *Server) getQueue(w http.ResponseWriter, r *http.Request) {
	st, ok := s.p.Router.Stats(core.QueueID(r.PathValue("id")))
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "unknown queue "+strconv.Quote(r.PathValue("id")))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

type createRequest struct {
	Channel    string            `json:"channel"`
	Queue      string            `json:"queue"`
	Priority   *int              `json:"priority"`
	Attributes map[string]string `json:"attributes"`
}

func (s *Server) createInteraction(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Channel == "" {
		req.Channel = string(core.ChannelTask)
	}
	ch, err := core.ParseChannel(req.Channel)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "channel: "+err.Error())
		return
	}
	if ch != core.ChannelTask {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("channel: %q interactions arrive through their own edge (SIP, IM); the API creates \"task\" interactions", ch))
		return
	}
	if req.Queue == "" {
		writeError(w, http.StatusBadRequest, "bad_request", "queue: required")
		return
	}
	if len(req.Attributes) > 64 {
		writeError(w, http.StatusBadRequest, "bad_request", "attributes: at most 64 keys")
		return
	}
	for k, v := range req.Attributes {
		if k == "" || len(k) > 64 || len(v) > 4096 {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("attributes[%q]: keys are 1..64 characters, values at most 4096", k))
			return
		}
	}
	key := r.Header.Get("Idempotency-Key")
	if len(key) > 128 {
		writeError(w, http.StatusBadRequest, "bad_request", "Idempotency-Key: longer than 128 characters")
		return
	}
	if key != "" {
		// A retry of a request whose interaction already ended: answer it again.
		if err := s.durable(r); err != nil {
			s.fail(w, r, err)
			return
		}
		if ix, err := s.p.Store.InteractionByKey(r.Context(), key); err == nil {
			s.replay(w, ix, req)
			return
		}
	}
	ix, _, err := s.p.Interactions.Create(interaction.CreateRequest{
		Channel: ch, Queue: core.QueueID(req.Queue), Priority: req.Priority, Attributes: req.Attributes, IdempotencyKey: key,
	})
	if errors.Is(err, interaction.ErrReplayed) {
		s.replay(w, ix, req)
		return
	}
	// Wait for durability even on failure: a refused interaction is recorded as failed.
	if derr := s.durable(r); err == nil {
		err = derr
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.metrics.created.WithLabelValues(req.Queue, string(ch)).Inc()
	if cur, ok := s.p.Interactions.Get(ix.ID); ok {
		ix = cur
	}
	w.Header().Set("Location", "/api/v1/interactions/"+string(ix.ID))
	writeJSON(w, http.StatusCreated, ix)
}

// replay answers a repeated create (same Idempotency-Key) with the first
// interaction, or 422 when the repeat asks for something else.
func (s *Server) replay(w http.ResponseWriter, ix events.Interaction, req createRequest) {
	if string(ix.Queue) != req.Queue {
		writeError(w, http.StatusUnprocessableEntity, "idempotency_key_reused",
			fmt.Sprintf("Idempotency-Key was used for interaction %s in queue %s; this request asks for queue %s", ix.ID, ix.Queue, req.Queue))
		return
	}
	if cur, ok := s.p.Interactions.Get(ix.ID); ok {
		ix = cur
	}
	w.Header().Set("Location", "/api/v1/interactions/"+string(ix.ID))
	w.Header().Set("Idempotent-Replayed", "true")
	writeJSON(w, http.StatusOK, ix)
}

func (s *Server) listInteractions(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := store.InteractionFilter{
		State: q.Get("state"), Queue: core.QueueID(q.Get("queue")), Channel: core.Channel(q.Get("channel")), Agent: core.AgentID(q.Get("agent")),
	}
	if f.Channel != "" {
		if _, err := core.ParseChannel(string(f.Channel)); err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", "channel: "+err.Error())
			return
		}
	}
	if f.State != "" {
		ok := false
		for _, st := range []interaction.State{interaction.StateCreated, interaction.StateQueued, interaction.StateOffered, interaction.StateConnected, interaction.StateWrapUp, interaction.StateEnded, interaction.StateAbandoned, interaction.StateFailed, interaction.StateTimedOut, interaction.StateHandedOver} {
			ok = ok || string(st) == f.State
		}
		if !ok {
			writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("state: unknown state %q", f.State))
			return
		}
	}
	for name, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("%s: %q is not an RFC 3339 time", name, v))
				return
			}
			*dst = t
		}
	}
	limit, ok := intParam(w, r, "limit", store.DefaultLimit)
	if !ok {
		return
	}
	f.Limit = limit
	if err := s.durable(r); err != nil {
		s.fail(w, r, err)
		return
	}
	list, err := s.p.Store.ListInteractions(r.Context(), f)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"interactions": nonNil(list)})
}

// lookup returns an interaction, live or stored, checking that an agent caller holds or held it.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request) (events.Interaction, bool) {
	id := core.InteractionID(r.PathValue("id"))
	ix, ok := s.p.Interactions.Get(id)
	if !ok {
		if err := s.durable(r); err != nil {
			s.fail(w, r, err)
			return ix, false
		}
		var err error
		if ix, err = s.p.Store.GetInteraction(r.Context(), id); err != nil {
			s.fail(w, r, err)
			return ix, false
		}
	}
	if p := who(r); p.agent != "" && ix.Agent != p.agent {
		writeError(w, http.StatusForbidden, "forbidden", "agents see only their own interactions")
		return ix, false
	}
	return ix, true
}

func (s *Server) getInteraction(w http.ResponseWriter, r *http.Request) {
	if ix, ok := s.lookup(w, r); ok {
		writeJSON(w, http.StatusOK, ix)
	}
}

func (s *Server) interactionEvents(w http.ResponseWriter, r *http.Request) {
	s.interactionHistory(w, r, "events", s.p.Store.InteractionEvents)
}

func (s *Server) interactionDecisions(w http.ResponseWriter, r *http.Request) {
	s.interactionHistory(w, r, "decisions", s.p.Store.Decisions)
}

// interactionHistory answers {"interaction": id, key: [...]} with the stored events
// fetch returns, once everything the node did so far is durable.
func (s *Server) interactionHistory(w http.ResponseWriter, r *http.Request, key string,
	fetch func(context.Context, core.InteractionID) ([]events.Event, error)) {
	ix, ok := s.lookup(w, r)
	if !ok {
		return
	}
	if err := s.durable(r); err != nil {
		s.fail(w, r, err)
		return
	}
	evs, err := fetch(r.Context(), ix.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"interaction": ix.ID, key: nonNil(evs)})
}

type agentAction func(core.InteractionID, core.AgentID) (uint64, error)

func (s *Server) act(w http.ResponseWriter, r *http.Request, f agentAction) {
	id := core.InteractionID(r.PathValue("id"))
	_, err := f(id, who(r).agent)
	if err == nil {
		err = s.durable(r)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.respondInteraction(w, r, id)
}

func (s *Server) respondInteraction(w http.ResponseWriter, r *http.Request, id core.InteractionID) {
	ix, ok := s.p.Interactions.Get(id)
	if !ok {
		var err error
		if ix, err = s.p.Store.GetInteraction(r.Context(), id); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, ix)
}

func (s *Server) accept(w http.ResponseWriter, r *http.Request) {
	s.act(w, r, s.p.Interactions.Accept)
}

func (s *Server) reject(w http.ResponseWriter, r *http.Request) {
	s.act(w, r, s.p.Interactions.Reject)
}

func (s *Server) complete(w http.ResponseWriter, r *http.Request) {
	s.act(w, r, s.p.Interactions.Complete)
}

func (s *Server) cancel(w http.ResponseWriter, r *http.Request) {
	id := core.InteractionID(r.PathValue("id"))
	_, err := s.p.Interactions.Abandon(id, "cancelled by "+who(r).name)
	if errors.Is(err, interaction.ErrNotFound) {
		// Ended already, or never existed: tell which (once the end is durable).
		if derr := s.durable(r); derr != nil {
			s.fail(w, r, derr)
			return
		}
		if ix, gerr := s.p.Store.GetInteraction(r.Context(), id); gerr == nil {
			err = fmt.Errorf("cancel %s: already %s: %w", id, ix.State, interaction.ErrWrongState)
		}
	}
	if err == nil {
		err = s.durable(r)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.respondInteraction(w, r, id)
}

func intParam(w http.ResponseWriter, r *http.Request, name string, def int) (int, bool) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("%s: %q is not a positive integer", name, v))
		return 0, false
	}
	return n, true
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// getShared returns the shared configuration in force at this node (it holds
// the agents' passwords: admins only).
func (s *Server) getShared(w http.ResponseWriter, r *http.Request) {
	if s.p.Shared == nil {
		s.noRoute(w, r)
		return
	}
	st := s.p.Shared.Shared()
	w.Header().Set("ETag", strconv.Quote(strconv.FormatUint(st.Revision, 10)))
	if r.URL.Query().Get("format") == "yaml" {
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = io.WriteString(w, st.YAML)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// maxSharedConfig bounds a shared configuration: it travels as one NATS
// message (1 MiB by default, headers included).
const maxSharedConfig = 768 << 10

// putShared makes the body (YAML: agents and queues) the next revision of the
// shared configuration. If-Match: "<revision>" makes it conditional ("0":
// only if it was never changed).
func (s *Server) putShared(w http.ResponseWriter, r *http.Request) {
	if s.p.Shared == nil {
		s.noRoute(w, r)
		return
	}
	var expect uint64
	m := r.Header.Get("If-Match")
	if m != "" {
		n, err := strconv.ParseUint(strings.Trim(m, `"`), 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", `If-Match must be a revision in quotes, e.g. "12"`)
			return
		}
		expect = n
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxSharedConfig))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the configuration exceeds %d bytes", maxSharedConfig))
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "bad_request", "reading the body: "+err.Error())
		return
	}
	rev, applied, err := s.p.Shared.PutShared(r.Context(), data, expect, m != "")
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, map[string]any{"revision": rev, "applied_here": applied})
	case errors.Is(err, config.ErrInvalid):
		writeError(w, http.StatusUnprocessableEntity, "invalid_config", err.Error())
	case errors.Is(err, mesh.ErrConfigConflict):
		writeError(w, http.StatusPreconditionFailed, "revision_changed",
			fmt.Sprintf("the shared configuration is no longer at revision %d: read it again", expect))
	case errors.Is(err, mesh.ErrConfigPending):
		// Cut off from the quorum: kept in the outbox, written after the heal.
		writeJSON(w, http.StatusAccepted, map[string]any{"pending": true, "applied_here": false,
			"detail": "the cluster's quorum is out of reach: the configuration is kept here and written when it is back, unless it changed meanwhile"})
	case errors.Is(err, mesh.ErrConfigUnavailable):
		writeError(w, http.StatusServiceUnavailable, "config_unavailable",
			"the replicated configuration cannot be written now (no quorum, or the cluster is starting): retry")
	default:
		s.p.Logger.Error("change the shared configuration", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "the configuration could not be changed")
	}
}
