package events

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrGap is returned by Log.Read when the requested events have left the in-memory
// window; the reader must fetch them from the store (or resync from a snapshot).
var ErrGap = errors.New("events: requested sequence is no longer in memory")

// ErrClosed is returned once the log is closed.
var ErrClosed = errors.New("events: log closed")

// Log is a bounded, in-memory window over the node's event sequence. It is safe for
// concurrent use. Append may block: when the window is full of events the store has
// not yet made durable, Append waits (backpressure) instead of dropping or growing.
type Log struct {
	durableRequired bool

	// mu guards every field below.
	mu      sync.Mutex
	ring    []Event
	first   uint64 // seq of ring's oldest event; first == next when empty
	next    uint64 // seq the next Append gets
	durable uint64 // highest seq the store has committed
	closed  bool
	// appended is closed and replaced on an Append after a reader took it: a
	// broadcast to readers waiting for more.
	appended  chan struct{}
	handedOut bool // a reader holds appended
	// durableCh is closed and replaced when durable advances after a waiter took it.
	durableCh     chan struct{}
	durableWaited bool // a waiter holds durableCh
	// space is signalled when durable advances, waking blocked Appends.
	space *sync.Cond
}

// NewLog returns a log whose next event gets seq last+1 (last is the highest seq
// already persisted, 0 for a new node). capacity bounds the in-memory window. When
// durableRequired is false, events count as durable as soon as they are appended
// (for benchmarks and tests without a store).
func NewLog(last uint64, capacity int, durableRequired bool) *Log {
	if capacity < 1 {
		capacity = 1
	}
	l := &Log{
		durableRequired: durableRequired,
		ring:            make([]Event, capacity),
		first:           last + 1,
		next:            last + 1,
		durable:         last,
		appended:        make(chan struct{}),
		durableCh:       make(chan struct{}),
	}
	l.space = sync.NewCond(&l.mu)
	return l
}

// Append assigns sequence numbers to evs, in order, and adds them to the log. It
// returns the seq of the last event. It blocks while the window is full of
// non-durable events; it returns ErrClosed after Close.
func (l *Log) Append(evs ...Event) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	capacity := uint64(len(l.ring))
	for i := range evs {
		for {
			if l.closed {
				return 0, ErrClosed
			}
			if l.next-l.first < capacity {
				break
			}
			// Window full: evict the oldest event if the store has it.
			if l.first <= l.durable {
				l.ring[l.first%capacity] = Event{}
				l.first++
				continue
			}
			l.space.Wait()
		}
		evs[i].Seq = l.next
		l.ring[l.next%capacity] = evs[i]
		l.next++
	}
	if !l.durableRequired {
		l.setDurableLocked(l.next - 1)
	}
	if l.handedOut {
		close(l.appended)
		l.appended = make(chan struct{})
		l.handedOut = false
	}
	return l.next - 1, nil
}

// Read copies into dst (reusing its storage) the events with seq > after, at most
// max of them. It returns them, plus a channel that is closed when more events are
// appended. Reading past the end returns no events. If after+1 has left the window,
// Read returns ErrGap.
func (l *Log) Read(after uint64, max int, dst []Event) ([]Event, <-chan struct{}, error) {
	return l.read(after, max, dst, false)
}

// ReadDurable is Read limited to events the store has committed: what it returns
// survives a crash, so its sequence numbers are never handed out again. The channel
// is closed when more events become durable.
func (l *Log) ReadDurable(after uint64, max int, dst []Event) ([]Event, <-chan struct{}, error) {
	return l.read(after, max, dst, true)
}

func (l *Log) read(after uint64, max int, dst []Event, durableOnly bool) ([]Event, <-chan struct{}, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	dst = dst[:0]
	if l.closed {
		return dst, nil, ErrClosed
	}
	last, wake := l.next-1, l.appended
	if durableOnly {
		last, wake = l.durable, l.durableCh
		l.durableWaited = true
	} else {
		l.handedOut = true
	}
	if after+1 < l.first {
		return dst, wake, fmt.Errorf("read after %d (window starts at %d): %w", after, l.first, ErrGap)
	}
	capacity := uint64(len(l.ring))
	for s := after + 1; s <= last && len(dst) < max; s++ {
		dst = append(dst, l.ring[s%capacity])
	}
	return dst, wake, nil
}

// LastSeq returns the seq of the newest event (0 if none ever).
func (l *Log) LastSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next - 1
}

// DurableSeq returns the highest seq the store has committed.
func (l *Log) DurableSeq() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.durable
}

// MarkDurable records that every event up to seq is committed to storage.
func (l *Log) MarkDurable(seq uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.setDurableLocked(seq)
}

func (l *Log) setDurableLocked(seq uint64) {
	if seq <= l.durable {
		return
	}
	if seq > l.next-1 {
		seq = l.next - 1
	}
	l.durable = seq
	if l.durableWaited {
		close(l.durableCh)
		l.durableCh = make(chan struct{})
		l.durableWaited = false
	}
	l.space.Broadcast()
}

// WaitDurable blocks until every event up to seq is committed, ctx ends or the log closes.
func (l *Log) WaitDurable(ctx context.Context, seq uint64) error {
	for {
		l.mu.Lock()
		durable, ch, closed := l.durable, l.durableCh, l.closed
		l.durableWaited = true
		l.mu.Unlock()
		if durable >= seq {
			return nil
		}
		if closed {
			return ErrClosed
		}
		select {
		case <-ch: // durable advanced: re-check
		case <-ctx.Done():
			return fmt.Errorf("events: wait for seq %d to be durable: %w", seq, ctx.Err())
		}
	}
}

// Sync waits until every event appended so far is durable.
func (l *Log) Sync(ctx context.Context) error {
	return l.WaitDurable(ctx, l.LastSeq())
}

// Close wakes every waiter; later Appends and Reads fail with ErrClosed.
func (l *Log) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	close(l.appended)
	close(l.durableCh)
	l.space.Broadcast()
}
