// Package interaction holds the one interaction type shared by calls, chats,
// callbacks and tasks, its lifecycle state machine, and the Service that drives
// interactions through queueing, offer, connection, wrap-up and end.
package interaction

import "fmt"

// State is a lifecycle state of an interaction.
//
//	created ──► queued ──► offered ──► connected ──► wrap_up ──► ended
//	   │           │  ▲         │  ▲        │
//	   │           │  └─────────┘  └────────┤ transfer to an agent (blind)
//	   │           │  missed offer,         │
//	   │           │  rejection, revoked    │
//	   │           ▲────────────────────────┘ transfer to a queue (blind)
//	   │ direct offer (internal call to an agent's DN): created ──► offered
//	   ▼           ▼
//	failed     abandoned · timed_out · failed · handed_over (to a peer's queue)
type State string

// Lifecycle states.
const (
	StateCreated   State = "created"
	StateQueued    State = "queued"
	StateOffered   State = "offered"
	StateConnected State = "connected"
	StateWrapUp    State = "wrap_up"
	StateEnded     State = "ended"
	StateAbandoned State = "abandoned"
	StateFailed    State = "failed"
	StateTimedOut  State = "timed_out"
	// StateHandedOver: a peer's queue took the call (queue overflow to a
	// peer, issue 5); it goes on there, media still anchored here.
	StateHandedOver State = "handed_over"
)

// transitions lists the allowed moves; anything else is a bug or a stale request.
var transitions = map[State][]State{
	StateCreated:   {StateQueued, StateOffered, StateFailed, StateAbandoned},
	StateQueued:    {StateOffered, StateAbandoned, StateTimedOut, StateFailed, StateHandedOver},
	StateOffered:   {StateConnected, StateQueued, StateAbandoned, StateFailed, StateHandedOver},
	StateConnected: {StateWrapUp, StateEnded, StateFailed, StateQueued, StateOffered},
	StateWrapUp:    {StateEnded},
}

// Terminal reports whether s is an end state.
func (s State) Terminal() bool {
	switch s {
	case StateEnded, StateAbandoned, StateFailed, StateTimedOut, StateHandedOver:
		return true
	}
	return false
}

// CanMove reports whether from → to is a lifecycle transition.
func CanMove(from, to State) bool {
	for _, t := range transitions[from] {
		if t == to {
			return true
		}
	}
	return false
}

// TransitionError is a refused lifecycle move.
type TransitionError struct {
	From, To State
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("interaction: cannot move from %s to %s", e.From, e.To)
}
