// Package events is the node's append-only, sequenced event log. Every state change
// of an agent, interaction or routing decision is one Event with a sequence number
// assigned here. Subscribers (the store writer, the router, API event streams) read
// the log by sequence; the store writer's progress is the durability point that API
// handlers wait on before acknowledging a request.
package events

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

// Type names the kind of an event. Types are stable strings in the API.
type Type string

// Event types.
const (
	// TypeAgentState is an agent state transition; Data is AgentState.
	TypeAgentState Type = "agent.state"
	// TypeLease is a reservation lease transition; Data is Lease.
	TypeLease Type = "agent.lease"
	// TypeInteraction is an interaction lifecycle transition; Data is Interaction.
	TypeInteraction Type = "interaction.state"
	// TypeDecision is a routing decision; Data is Decision.
	TypeDecision Type = "routing.decision"
	// TypeNode is a node lifecycle event (started, draining, stopped); Data is Node.
	TypeNode Type = "node"
	// TypeRegistration is a change of an agent's SIP registration; Data is Registration.
	TypeRegistration Type = "sip.registration"
	// TypePeer is a change of a cluster peer's health as this node sees it;
	// Data is Peer.
	TypePeer Type = "cluster.peer"
)

// Event is one entry of the log. Data is one of the payload types of this package and
// must not be modified after Append.
type Event struct {
	// Seq is assigned by Log.Append: 1, 2, 3, ... without gaps, across restarts.
	Seq uint64 `json:"seq"`
	// Time is the wall-clock time of the change, UTC.
	Time time.Time `json:"time"`
	// Type is the kind of event.
	Type Type `json:"type"`
	// Agent, Interaction and Queue are set when the event concerns them.
	Agent       core.AgentID       `json:"agent,omitempty"`
	Interaction core.InteractionID `json:"interaction,omitempty"`
	Queue       core.QueueID       `json:"queue,omitempty"`
	// Data is the typed payload.
	Data any `json:"data"`
}

// ChannelLoad is an agent's load on one channel.
type ChannelLoad struct {
	Channel  core.Channel `json:"channel"`
	Capacity int          `json:"capacity"`
	Offered  int          `json:"offered"`
	Busy     int          `json:"busy"`
	WrapUp   int          `json:"wrap_up"`
}

// AgentState is the payload of TypeAgentState: the agent's state after the change.
type AgentState struct {
	// State is logged_out, not_ready, ready, reserved, busy or wrap_up.
	State string `json:"state"`
	// Presence is logged_out, not_ready or ready: what the agent chose, whatever its load.
	Presence string `json:"presence"`
	// Reason is the not-ready reason, if any.
	Reason string `json:"reason,omitempty"`
	// Cause says what triggered the change (login, logout, set_state, reserve, accept, ...).
	Cause string `json:"cause"`
	// Version increases by one on every change of this agent (per-agent sequence).
	Version uint64 `json:"version"`
	// Epoch is the owner's epoch for the agent.
	Epoch uint64 `json:"epoch"`
	// Fence is the cluster directory's revision under which the owner holds the
	// agent (0: the configured owner, never moved). It orders states before the
	// epoch: an owner the agent moved to wins over the one it left (ADR 0006).
	Fence uint64 `json:"fence,omitempty"`
	// Load is the per-channel load after the change.
	Load []ChannelLoad `json:"load"`
	// IdleSince is when the agent last became free on any channel.
	IdleSince time.Time `json:"idle_since"`
}

// Lease is the payload of TypeLease.
type Lease struct {
	// Lease is the lease id; Epoch the owner's epoch.
	Lease core.LeaseID `json:"lease"`
	Epoch uint64       `json:"epoch"`
	// Channel is the lease's channel.
	Channel core.Channel `json:"channel"`
	// Outcome is granted, accepted, rejected, released, expired, revoked, completed or wrap_up_ended.
	Outcome string `json:"outcome"`
	// TTLMillis is the lease time-to-live (granted only).
	TTLMillis int64 `json:"ttl_ms,omitempty"`
	// Request is the idempotency key of the reserve request.
	Request core.RequestID `json:"request,omitempty"`
}

// Interaction is the payload of TypeInteraction: the interaction after the change.
type Interaction struct {
	ID         core.InteractionID `json:"id"`
	Channel    core.Channel       `json:"channel"`
	Queue      core.QueueID       `json:"queue"`
	Priority   int                `json:"priority"`
	State      string             `json:"state"`
	Previous   string             `json:"previous,omitempty"`
	Agent      core.AgentID       `json:"agent,omitempty"`
	Reason     string             `json:"reason,omitempty"`
	CreatedAt  time.Time          `json:"created_at"`
	EnqueuedAt time.Time          `json:"enqueued_at,omitzero"`
	AnsweredAt time.Time          `json:"answered_at,omitzero"`
	EndedAt    time.Time          `json:"ended_at,omitzero"`
	// Attributes are the caller-supplied key/values (subject, customer id, ...).
	Attributes map[string]string `json:"attributes,omitempty"`
	// IdempotencyKey is the client's Idempotency-Key of the create request, if any.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// Candidate is one agent considered by a routing decision.
type Candidate struct {
	Agent core.AgentID `json:"agent"`
	// Score is the strategy's score (higher wins); Why explains it in words.
	Score float64 `json:"score"`
	Why   string  `json:"why"`
	// Result is granted, denied:<reason>, error:<message> or not_tried.
	Result string `json:"result"`
}

// MarshalJSON renders each candidate's Why from the strategy and score when the
// router left it empty: the text is built off the routing hot path.
func (d Decision) MarshalJSON() ([]byte, error) {
	type plain Decision
	p := plain(d)
	if len(d.Candidates) > 0 {
		p.Candidates = make([]Candidate, len(d.Candidates))
		copy(p.Candidates, d.Candidates)
		for i := range p.Candidates {
			if p.Candidates[i].Why == "" {
				p.Candidates[i].Why = explain(d.Strategy, p.Candidates[i].Score)
			}
		}
	}
	return json.Marshal(p)
}

func explain(strategy string, score float64) string {
	switch strategy {
	case "most-skilled":
		return "skill sum " + strconv.FormatFloat(score, 'f', 0, 64) + " on the required skills"
	case "round-robin":
		return "round-robin: " + strconv.FormatFloat(-score, 'f', 0, 64) + " agents after the last one chosen"
	case "least-occupied":
		return "occupancy " + strconv.FormatFloat(-score*100, 'f', 0, 64) + "% on the channel"
	}
	return "idle " + (time.Duration(score) * time.Millisecond).String()
}

// Decision is the payload of TypeDecision: why an interaction went (or did not go) to an agent.
type Decision struct {
	// Direction is "interaction_arrived" (pick an agent), "agent_freed" (pick an
	// interaction) or "overflow_step" (an overflow step widened the eligible agents).
	Direction string `json:"direction"`
	Strategy  string `json:"strategy"`
	// Step is the overflow step in force (0 = none).
	Step int `json:"step"`
	// Queues are the queues whose agents were eligible.
	Queues []core.QueueID `json:"queues"`
	// Eligible counts agents eligible by skill; Candidates are the best of them, in order tried.
	Eligible   int         `json:"eligible"`
	Candidates []Candidate `json:"candidates"`
	// Chosen is the agent granted, empty if none.
	Chosen core.AgentID `json:"chosen,omitempty"`
	// Outcome is reserved, no_agent or all_denied.
	Outcome string `json:"outcome"`
	// WaitMillis is the interaction's wait when decided.
	WaitMillis int64 `json:"wait_ms"`
	// DecisionMicros is how long the decision and reservation took.
	DecisionMicros int64 `json:"decision_us"`
}

// Registration is the payload of TypeRegistration: one contact of an agent's phone.
type Registration struct {
	// Action is registered, refreshed, unregistered or expired.
	Action  string `json:"action"`
	Contact string `json:"contact"`
	// ExpiresSeconds is the granted lifetime (0 when removed).
	ExpiresSeconds int64  `json:"expires_s"`
	Transport      string `json:"transport,omitempty"`
	Source         string `json:"source,omitempty"`
	UserAgent      string `json:"user_agent,omitempty"`
}

// Peer is the payload of TypePeer.
type Peer struct {
	Peer core.NodeID `json:"peer"`
	// State is up, suspect or down; Previous what it was.
	State    string `json:"state"`
	Previous string `json:"previous"`
	// SilentMillis is how long the peer had been silent (no heartbeat) when
	// the state changed.
	SilentMillis int64 `json:"silent_ms"`
}

// Node is the payload of TypeNode.
type Node struct {
	Node  core.NodeID `json:"node"`
	State string      `json:"state"`
}
