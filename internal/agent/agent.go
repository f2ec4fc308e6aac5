// Package agent is the owner side of agent state: sessions, presence, per-channel
// capacity and reservation leases. Exactly one Manager (on the agent's owner node)
// decides every change of an agent's state; everyone else reads the events it emits.
//
// State model. An agent has a presence — logged_out, not_ready (with a reason) or
// ready — and, per channel, a capacity and counts of offered (reserved), busy and
// wrap-up interactions. The displayed state is derived:
//
//	logged_out  presence logged out
//	busy        at least one accepted interaction on some channel
//	reserved    no busy interaction, at least one offer (lease) outstanding
//	wrap_up     only wrap-up work left (timed)
//	ready / not_ready   otherwise, the presence
//
// A reservation is a lease: Reserve returns a Token (agent, epoch, lease id) or a
// *DenyError. Accept, Reject, Release and Complete need the token; tokens of another
// epoch are refused. A lease not accepted within its TTL expires: the slot returns
// and, under the missed-offer policy, the agent goes not_ready("missed offer").
//
// Ownership and configuration change at run time. Adopt makes the Manager the
// owner of an agent under a cluster directory fence, carried by every state it
// emits for her, so that views order the states of an agent that moved by
// (fence, epoch, version); Detach lets an agent without leases go; Reconfigure
// applies a new set of owned agents (added, updated, removed).
package agent

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

// State is the derived, displayed state of an agent.
type State string

// Agent states.
const (
	StateLoggedOut State = "logged_out"
	StateNotReady  State = "not_ready"
	StateReady     State = "ready"
	StateReserved  State = "reserved"
	StateBusy      State = "busy"
	StateWrapUp    State = "wrap_up"
)

// ReasonMissedOffer is the not-ready reason set after a missed or rejected offer.
const ReasonMissedOffer = "missed offer"

// DenyReason says why a reservation was refused. Values are stable API strings.
type DenyReason string

// Deny reasons.
const (
	DenyUnknownAgent    DenyReason = "unknown_agent"
	DenyLoggedOut       DenyReason = "logged_out"
	DenyNotReady        DenyReason = "not_ready"
	DenyAtCapacity      DenyReason = "at_capacity"
	DenyChannelDisabled DenyReason = "channel_disabled"
	DenyDuplicate       DenyReason = "already_offered"
	// DenyNoDevice: the agent has no device for the channel (no phone registered
	// for voice). Not the agent's doing: no missed-offer penalty.
	DenyNoDevice DenyReason = "no_device"
	// DenyCancelled: the requester withdrew the request before it arrived.
	DenyCancelled DenyReason = "cancelled"
)

// DenyError is the typed refusal of a reservation.
type DenyError struct {
	Agent  core.AgentID
	Reason DenyReason
}

func (e *DenyError) Error() string {
	return fmt.Sprintf("agent %s: reservation denied: %s", e.Agent, e.Reason)
}

// Errors for token operations and state changes. Match them with errors.Is.
var (
	// ErrUnknownAgent: no such agent on this owner.
	ErrUnknownAgent = errors.New("unknown agent")
	// ErrStaleEpoch: the token was issued under another epoch of the owner.
	ErrStaleEpoch = errors.New("token from a stale epoch")
	// ErrLeaseEnded: the lease already ended (expired, released, rejected or completed).
	ErrLeaseEnded = errors.New("lease already ended")
	// ErrWrongLeaseState: the operation does not apply in the lease's state (e.g. Complete before Accept).
	ErrWrongLeaseState = errors.New("operation not allowed in the lease's state")
	// ErrHasWork: the agent cannot log out while holding offers or interactions.
	ErrHasWork = errors.New("agent has interactions in progress")
	// ErrAgentBusy: the agent cannot leave this owner (Detach) while she holds
	// a lease (offered, busy or wrap-up on any channel).
	ErrAgentBusy = errors.New("agent holds a reservation")
	// ErrLoggedOut: the agent must log in first.
	ErrLoggedOut = errors.New("agent is logged out")
	// ErrBadToken: the token string is malformed.
	ErrBadToken = errors.New("malformed token")
)

// Token proves a reservation. It is a value: compare with ==.
type Token struct {
	Agent core.AgentID
	Epoch uint64
	Lease core.LeaseID
}

// String renders the token as "agent:epoch:lease" (agent ids never contain ':').
func (t Token) String() string {
	return string(t.Agent) + ":" + strconv.FormatUint(t.Epoch, 10) + ":" + strconv.FormatUint(uint64(t.Lease), 10)
}

// IsZero reports whether t is the zero token.
func (t Token) IsZero() bool { return t == Token{} }

// ParseToken parses the String form.
func ParseToken(s string) (Token, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return Token{}, fmt.Errorf("%w: %q", ErrBadToken, s)
	}
	j := strings.LastIndexByte(s[:i], ':')
	if j <= 0 {
		return Token{}, fmt.Errorf("%w: %q", ErrBadToken, s)
	}
	epoch, err1 := strconv.ParseUint(s[j+1:i], 10, 64)
	lease, err2 := strconv.ParseUint(s[i+1:], 10, 64)
	if err1 != nil || err2 != nil {
		return Token{}, fmt.Errorf("%w: %q", ErrBadToken, s)
	}
	return Token{Agent: core.AgentID(s[:j]), Epoch: epoch, Lease: core.LeaseID(lease)}, nil
}

// ReserveRequest asks the owner to reserve an agent for an interaction.
type ReserveRequest struct {
	Agent       core.AgentID
	Interaction core.InteractionID
	Channel     core.Channel
	// TTL is how long the offer may stay unanswered before the lease expires.
	TTL time.Duration
	// Request makes the call idempotent: a repeat gets the first answer. Optional.
	Request core.RequestID
	// Holder is the node the lease is granted to, in a cluster ("" for this
	// node): its end is reported to that node (LeaseEnd.Holder).
	Holder core.NodeID
}

// LeaseOutcome is how a lease ended, reported to the Observer.
type LeaseOutcome string

// Lease outcomes reported to observers (a subset of the lease event outcomes).
const (
	// OutcomeExpired: the offer was not answered in time.
	OutcomeExpired LeaseOutcome = "expired"
	// OutcomeWrapUpEnded: the interaction's wrap-up is over; the slot is free again.
	OutcomeWrapUpEnded LeaseOutcome = "wrap_up_ended"
	// OutcomeRevoked: the owner ended the lease (forced logout).
	OutcomeRevoked LeaseOutcome = "revoked"
)

// LeaseEnd tells an Observer that a lease ended without the holder asking.
type LeaseEnd struct {
	Token       Token
	Interaction core.InteractionID
	Outcome     LeaseOutcome
	// Holder is the node holding the lease ("" for this node).
	Holder core.NodeID
}

// Observer learns of lease ends the token holder did not ask for. Calls come from
// timer goroutines or API goroutines, never with the Manager's lock held; they may
// block briefly and must be safe for concurrent use.
type Observer interface {
	LeaseEnded(LeaseEnd)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(LeaseEnd)

// LeaseEnded calls f.
func (f ObserverFunc) LeaseEnded(e LeaseEnd) { f(e) }
