package store

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/ccmesh/ccmesh/internal/events"
)

func BenchmarkExp(b *testing.B) {
	s := openTest(b, b.TempDir())
	for _, p := range strings.Split(os.Getenv("EXP_PRAGMAS"), ";") {
		if p != "" {
			if _, err := s.w.Exec("PRAGMA " + p); err != nil {
				b.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	buf := make([]events.Event, 0, 1000)
	next := uint64(1)
	for b.Loop() {
		buf = mixedBatch(buf, next, 1000)
		next += 1000
		if err := s.WriteBatch(ctx, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(next-1)/b.Elapsed().Seconds(), "events/s")
}
