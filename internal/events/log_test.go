package events

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestAppendReadSequence(t *testing.T) {
	l := NewLog(41, 8, false)
	for i := 0; i < 5; i++ {
		if seq, err := l.Append(Event{Type: TypeNode}); err != nil || seq != uint64(42+i) {
			t.Fatalf("append %d: seq %d, %v", i, seq, err)
		}
	}
	evs, _, err := l.Read(41, 3, nil)
	if err != nil || len(evs) != 3 || evs[0].Seq != 42 || evs[2].Seq != 44 {
		t.Fatalf("read: %v %v", evs, err)
	}
	evs, more, err := l.Read(46, 10, nil)
	if err != nil || len(evs) != 0 {
		t.Fatalf("read at end: %v %v", evs, err)
	}
	go l.Append(Event{Type: TypeNode})
	select {
	case <-more: // woken by the append
	case <-time.After(5 * time.Second):
		t.Fatal("reader not woken by append")
	}
	// Past the window: a gap.
	for i := 0; i < 10; i++ {
		if _, err := l.Append(Event{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := l.Read(41, 1, nil); !errors.Is(err, ErrGap) {
		t.Fatalf("read evicted: %v, want ErrGap", err)
	}
}

// TestBackpressure: a full window of non-durable events blocks Append until the
// store marks them durable; nothing is evicted before it is durable.
func TestBackpressure(t *testing.T) {
	l := NewLog(0, 4, true)
	for i := 0; i < 4; i++ {
		if _, err := l.Append(Event{}); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan uint64)
	go func() {
		seq, _ := l.Append(Event{})
		done <- seq
	}()
	select {
	case seq := <-done:
		t.Fatalf("append %d did not wait for durability", seq)
	case <-time.After(50 * time.Millisecond): // still blocked, as it should be
	}
	if evs, _, err := l.Read(0, 10, nil); err != nil || len(evs) != 4 {
		t.Fatalf("non-durable events must stay readable: %d %v", len(evs), err)
	}
	l.MarkDurable(1)
	if seq := <-done; seq != 5 {
		t.Fatalf("seq %d", seq)
	}
	if _, _, err := l.Read(0, 1, nil); !errors.Is(err, ErrGap) {
		t.Fatalf("durable seq 1 should have been evicted: %v", err)
	}
}

func TestWaitDurableAndClose(t *testing.T) {
	l := NewLog(0, 16, true)
	seq, _ := l.Append(Event{}, Event{}, Event{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.WaitDurable(ctx, seq); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait without writer: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := l.Sync(context.Background()); err != nil {
			t.Errorf("sync: %v", err)
		}
	}()
	l.MarkDurable(2)
	l.MarkDurable(3)
	wg.Wait()
	if l.DurableSeq() != 3 || l.LastSeq() != 3 {
		t.Fatalf("durable %d last %d", l.DurableSeq(), l.LastSeq())
	}
	// Marking beyond the end is clamped.
	l.MarkDurable(99)
	if l.DurableSeq() != 3 {
		t.Fatalf("durable %d after clamping", l.DurableSeq())
	}
	// Close wakes blocked waiters and refuses new work.
	_, _ = l.Append(Event{})
	errc := make(chan error, 1)
	go func() { errc <- l.WaitDurable(context.Background(), 4) }()
	l.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("wait after close: %v", err)
	}
	if _, err := l.Append(Event{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
}

func TestConcurrentAppendersContiguous(t *testing.T) {
	l := NewLog(0, 1<<13, false)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				if _, err := l.Append(Event{}, Event{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	evs, _, err := l.Read(0, 1<<13, nil)
	if err != nil || len(evs) != 8000 {
		t.Fatalf("%d events, %v", len(evs), err)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, ev.Seq)
		}
	}
}

func TestDecisionWhyRenderedAtMarshal(t *testing.T) {
	d := Decision{Strategy: "most-skilled", Candidates: []Candidate{{Agent: "ann", Score: 11}, {Agent: "bob", Score: 3, Why: "given"}}}
	b, err := d.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(b); !contains(got, `"why":"skill sum 11 on the required skills"`) || !contains(got, `"why":"given"`) {
		t.Fatalf("marshal: %s", got)
	}
	if d.Candidates[0].Why != "" {
		t.Fatal("marshal modified the event's data")
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
