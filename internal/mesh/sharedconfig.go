package mesh

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The replicated configuration (ADR 0007): the cluster's agents and queues as
// one YAML document under the key "shared" of a JetStream KV bucket. Any node
// writes a new revision (after validating it); every node watches the key and
// applies each revision it accepts, keeping it as its last-known-good copy.

// ErrConfigUnavailable is a configuration change attempted while the
// replicated bucket cannot be written (JetStream not up yet, or no quorum).
var ErrConfigUnavailable = errors.New("replicated configuration unavailable")

// ErrConfigConflict is a change based on a revision that is no longer the latest.
var ErrConfigConflict = errors.New("the configuration changed meanwhile")

// sharedKey is the key of the shared configuration in its bucket.
const sharedKey = "shared"

// configHistory is how many revisions the bucket keeps.
const configHistory = 10

type sharedConfig struct {
	kv atomic.Pointer[kvHandle]
}

// runSharedConfig watches the replicated configuration and hands every
// revision to Params.OnSharedConfig, until ctx ends; a watch that fails is
// started again (the latest revision comes first, and the node skips the
// revisions it has).
func (m *Mesh) runSharedConfig(ctx context.Context) {
	kv, err := m.openBucket(ctx, "config", configHistory)
	if err != nil {
		return
	}
	for wait := 500 * time.Millisecond; ctx.Err() == nil; wait = min(2*wait, 10*time.Second) {
		err := m.watchSharedConfig(ctx, kv)
		if ctx.Err() != nil {
			return
		}
		m.logger.Warn("mesh: configuration watch ended; watching again", "err", err, "in", wait.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (m *Mesh) watchSharedConfig(ctx context.Context, kv jetstream.KeyValue) error {
	w, err := kv.Watch(ctx, sharedKey)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return errors.New("updates closed")
			case e == nil:
				m.shared.kv.Store(&kvHandle{kv})
			case e.Operation() == jetstream.KeyValuePut && m.p.OnSharedConfig != nil:
				m.p.OnSharedConfig(e.Revision(), e.Value())
			}
		}
	}
}

// PutSharedConfig writes a new revision of the shared configuration. With
// conditional set, only if expect is still the latest revision (0: none
// written yet) — a compare-and-swap. The caller validates data first. It
// returns the new revision. When the bucket cannot be written (no quorum),
// the push is kept in the outbox and ErrConfigPending returned: it is written
// after the heal, replacing inForce (the revision in force at the caller) —
// never a revision the majority wrote meanwhile.
func (m *Mesh) PutSharedConfig(ctx context.Context, data []byte, expect uint64, conditional bool, inForce uint64) (uint64, error) {
	rev, err := m.putSharedConfig(ctx, data, expect, conditional)
	if errors.Is(err, ErrConfigUnavailable) {
		if conditional && expect != inForce {
			return 0, fmt.Errorf("mesh: write the configuration (expected revision %d, %d in force here): %w", expect, inForce, ErrConfigConflict)
		}
		base := inForce
		if kerr := m.keepConfig(data, base); kerr != nil {
			return 0, fmt.Errorf("%w (and not kept: %w)", err, kerr)
		}
		m.logger.Warn("mesh: configuration push kept for the heal (the cluster's quorum is out of reach)", "based_on", base)
		return 0, fmt.Errorf("mesh: write the configuration: %w (based on revision %d)", ErrConfigPending, base)
	}
	return rev, err
}

func (m *Mesh) putSharedConfig(ctx context.Context, data []byte, expect uint64, conditional bool) (uint64, error) {
	h := m.shared.kv.Load()
	if h == nil {
		return 0, fmt.Errorf("mesh: write the configuration: %w", ErrConfigUnavailable)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var rev uint64
	var err error
	switch {
	case !conditional:
		rev, err = h.kv.Put(cctx, sharedKey, data)
	case expect == 0:
		rev, err = h.kv.Create(cctx, sharedKey, data)
	default:
		rev, err = h.kv.Update(cctx, sharedKey, data, expect)
	}
	if err != nil {
		if isCASConflict(err) {
			return 0, fmt.Errorf("mesh: write the configuration (expected revision %d): %w", expect, ErrConfigConflict)
		}
		return 0, fmt.Errorf("mesh: write the configuration: %w: %w", ErrConfigUnavailable, err)
	}
	return rev, nil
}

// ConfigInSync reports whether the replicated configuration has been read.
func (m *Mesh) ConfigInSync() bool { return m.shared.kv.Load() != nil }

// isCASConflict reports a compare-and-swap that lost (a stale revision).
func isCASConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
