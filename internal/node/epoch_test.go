package node

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The epoch grows across runs even when the clock steps back, and a corrupt
// epoch file stops the start-up with a clear error.
func TestNextEpochGrowsAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)
	first, err := nextEpoch(dir, now)
	if err != nil || first != uint64(now.UnixNano()) {
		t.Fatalf("first epoch %d, %v", first, err)
	}
	second, err := nextEpoch(dir, now.Add(-time.Hour)) // the clock stepped back
	if err != nil || second != first+1 {
		t.Fatalf("after a clock step back: %d, %v; want %d", second, err, first+1)
	}
	third, err := nextEpoch(dir, now.Add(time.Hour))
	if err != nil || third != uint64(now.Add(time.Hour).UnixNano()) {
		t.Fatalf("later: %d, %v", third, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "epoch"), []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := nextEpoch(dir, now); err == nil {
		t.Fatal("a corrupt epoch file was accepted")
	}
}
