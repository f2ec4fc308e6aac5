package mesh

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ccmesh/ccmesh/internal/core"
)

// ErrPeerDown is a use of a peer's resource refrained from: the peer is down
// (or not a member). Nothing was sent.
var ErrPeerDown = errors.New("mesh: peer down")

// MaxSoundBytes bounds one sound file served to a peer (one NATS message,
// base64-encoded, must fit the default 1 MiB payload).
const MaxSoundBytes = 700 << 10

// soundsTimeout bounds fetching one sound file from a peer.
const soundsTimeout = 5 * time.Second

// Use admits one use of a resource of peer node (issue 5, ADR 0009): the one
// gate every resource goes through, agents' reservations included. While the
// peer is down it fails at once with ErrPeerDown (counted as refrained);
// otherwise it returns a context that ends when the peer goes down, so a use
// in progress (a SIP hand-over ringing there) ends with it.
func (m *Mesh) Use(node core.NodeID) (context.Context, error) {
	state, ctx, ok := m.health.admit(node, false)
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: %s is not a member", ErrPeerDown, node)
	case ctx == nil:
		return nil, fmt.Errorf("%w: %s is %s", ErrPeerDown, node, state)
	}
	return ctx, nil
}

// Sound fetches peer node's sound file of a kind (announcement, music or
// closed) for its queue q: the WAV file's bytes, or nil when that queue has
// none there. It obeys the refrain rule (Use).
func (m *Mesh) Sound(node core.NodeID, q core.QueueID, kind string) ([]byte, error) {
	r, err := m.request(node, request{Op: opSound, Queue: q, Kind: kind}, soundsTimeout, false)
	if err != nil {
		return nil, err
	}
	if err := r.err(""); err != nil {
		return nil, fmt.Errorf("mesh: sound %s/%s at %s: %w", q, kind, node, err)
	}
	return r.Data, nil
}

// serveSound answers a peer's opSound: only a file this node's configuration
// names for that queue is ever read.
func (m *Mesh) serveSound(req request) reply {
	if m.p.Sounds == nil {
		return reply{}
	}
	data, err := m.p.Sounds(req.Queue, req.Kind)
	switch {
	case err != nil:
		return encodeErr(err)
	case len(data) > MaxSoundBytes:
		return reply{Err: fmt.Sprintf("sound %s/%s is %d bytes (at most %d are served to peers)", req.Queue, req.Kind, len(data), MaxSoundBytes)}
	}
	return reply{Data: data}
}

// Reachable reports whether peer node is up or suspect (not down), without
// counting anything: for work that can simply wait for the peer.
func (m *Mesh) Reachable(node core.NodeID) bool {
	s := m.health.state(node)
	return s == PeerUp || s == PeerSuspect
}
