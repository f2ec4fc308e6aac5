#!/usr/bin/env bash
# Router, reservation, store-writer and media micro-benchmarks behind
# docs/BENCHMARKS.md: each run six times (bounded by -benchtime), then
# summarised with benchstat (median ± spread). Results stay in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
OUT=${OUT:-$(mktemp -d /tmp/ccmesh-micro.XXXXXX)}
mkdir -p "$OUT"
BENCHSTAT=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
run() { # name package pattern benchtime
	echo "== $1: go test -run '^\$' -bench '$3' -benchtime $4 -count 6 $2" >&2
	"$GO" test -run '^$' -bench "$3" -benchtime "$4" -count 6 "$2" | tee "$OUT/$1.txt" >&2
}
run router ./internal/router/ 'RouteAndReserve' 100000x
run mesh ./internal/mesh/ 'CrossNodeReserve' 5000x
run store ./internal/store/ 'WriteBatch' 100x
run calls ./internal/store/ 'WriteCalls/calls=50$' 150x
run media ./internal/media/ 'Streams' 1x
echo "== benchstat ($OUT)"
for f in router mesh store calls media; do
	"$GO" run "$BENCHSTAT" "$OUT/$f.txt"
	echo
done
