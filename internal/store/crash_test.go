package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ccmesh/ccmesh/internal/events"
)

// crashDirEnv, when set, turns TestCrashChild into the child process of
// TestCrashKill9: it writes into the store at that directory until killed.
const crashDirEnv = "CCMESH_STORE_CRASH_DIR"

// TestCrashChild is not a test on its own: TestCrashKill9 runs the test binary
// with -test.run=^TestCrashChild$ and crashDirEnv set. It appends events from a few
// goroutines and prints each seq once it is durable (acknowledged), until killed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("child process of TestCrashKill9 only")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // never outlive the parent for long
	defer cancel()
	s, err := Open(ctx, dir, testLogger(t))
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	last, err := s.LastSeq(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "last seq:", err)
		os.Exit(2)
	}
	l := events.NewLog(last, 4096, true)
	go func() {
		if err := s.RunWriter(ctx, l); err != nil {
			fmt.Fprintln(os.Stderr, "writer:", err)
			os.Exit(3)
		}
	}()
	var mu sync.Mutex // one ack line per write to stdout
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				batch := mixedBatch(nil, 0, 1+i%5)
				for j := range batch {
					batch[j].Seq = 0
				}
				seq, err := l.Append(batch...)
				if err != nil {
					return
				}
				if err := l.WaitDurable(ctx, seq); err != nil {
					return
				}
				mu.Lock()
				fmt.Fprintf(out, "%d %d\n", w, seq)
				_ = out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestCrashKill9 kills a writing child process with SIGKILL and checks that every
// seq it acknowledged is in the reopened store, with seq contiguous from 1. It does
// two rounds so the second child resumes a store recovered from a crash.
func TestCrashKill9(t *testing.T) {
	if os.Getenv(crashDirEnv) != "" {
		t.Skip("in child")
	}
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	dir := t.TempDir()
	var maxAck uint64
	for round := 1; round <= 2; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acks := 0
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var w int
			var seq uint64
			if _, err := fmt.Sscanf(sc.Text(), "%d %d", &w, &seq); err != nil {
				continue // not an ack line (test framework output)
			}
			maxAck = max(maxAck, seq)
			acks++
			if acks == 3000 {
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				break
			}
		}
		// Read whatever acks were already printed before the kill landed.
		for sc.Scan() {
			var w int
			var seq uint64
			if _, err := fmt.Sscanf(sc.Text(), "%d %d", &w, &seq); err == nil {
				maxAck = max(maxAck, seq)
				acks++
			}
		}
		err = cmd.Wait()
		if acks < 3000 {
			t.Fatalf("round %d: child exited after %d acks: %v", round, acks, err)
		}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child did not die of SIGKILL: %v", round, err)
		}

		s, err := Open(context.Background(), dir, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		last, err := s.LastSeq(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if last < maxAck {
			t.Fatalf("round %d: store has seq up to %d, child acknowledged %d", round, last, maxAck)
		}
		checkContiguous(t, s, last)
		t.Logf("round %d: %d acks, highest acknowledged %d, stored %d", round, acks, maxAck, last)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
