#!/usr/bin/env bash
# Calls through one ccmesh node with media anchored at the node.
#
#   bash bench/calls.sh                      # RATE=50 calls/s, COUNT=1000 calls, N=200 agents
#   RATE=100 COUNT=3000 bash bench/calls.sh
#
# N agents register (sipp, digest MD5) with contacts that all point at one sipp UAS,
# which answers every call; they log in and get ready through the API. A sipp caller
# then dials the queue's route point at RATE calls/s, COUNT calls in all; each call
# waits for an agent (early media: the node's music), is bridged through the node's
# RTP relay, talks 1 s and hangs up. Printed: sipp's successful/failed calls and
# call-setup times, the node's CPU time and RSS. Loopback only, bounded in count and
# time; every process started here is stopped on exit.
set -euo pipefail
N=${N:-200}
RATE=${RATE:-50}
COUNT=${COUNT:-1000}
SIP_PORT=${SIP_PORT:-15100}
HTTP_PORT=${HTTP_PORT:-18100}
UAS_PORT=${UAS_PORT:-17100}
cd "$(dirname "$0")/.."
command -v sipp >/dev/null || { echo "sipp is required (apt-get install sip-tester)" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

go run ./bench/apiload -gen-config "$dir" -agents "$N" -queues 1 -listen "127.0.0.1:$HTTP_PORT" >/dev/null
sed -i 's/voice: 0/voice: 1/' "$dir/config.yaml"
cat >> "$dir/config.yaml" <<YAML
sip:
  listen_udp: 127.0.0.1:$SIP_PORT
  listen_tcp: ""
  digest_algorithms: [MD5]
YAML
go build -o "$dir/ccmesh" ./cmd/ccmesh
"$dir/ccmesh" serve --config "$dir/config.yaml" 2>"$dir/node.log" &
node=$!
pids+=("$node")
for _ in $(seq 1 50); do curl -sf "127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.2; done

echo "SEQUENTIAL" >"$dir/users.csv"
for i in $(seq -f "%04g" 1 "$N"); do echo "a$i;[authentication username=a$i password=a$i-pass]" >>"$dir/users.csv"; done
(cd "$dir" && sipp "127.0.0.1:$SIP_PORT" -sf "$OLDPWD/test/e2e/sipp/register_contact.xml" -inf users.csv \
	-key contact_port "$UAS_PORT" -m "$N" -r 200 -i 127.0.0.1 -p 0 -nostdin -timeout 60s >/dev/null)
for i in $(seq -f "%04g" 1 "$N"); do
	curl -sf -u "a$i:a$i-pass" -X POST "127.0.0.1:$HTTP_PORT/api/v1/agents/a$i/login" >/dev/null
	curl -sf -u "a$i:a$i-pass" "127.0.0.1:$HTTP_PORT/api/v1/agents/a$i/state" -d '{"state":"ready"}' >/dev/null
done

(cd "$dir" && exec sipp -sn uas -i 127.0.0.1 -p "$UAS_PORT" -nostdin -timeout $((COUNT / RATE + 60))s >uas.out 2>&1) &
pids+=("$!")
sleep 0.5
cpu0=$(awk '{print $14+$15}' "/proc/$node/stat")
start=$(date +%s.%N)
set +e
(cd "$dir" && sipp "127.0.0.1:$SIP_PORT" -sf "$OLDPWD/test/e2e/sipp/caller.xml" -s 20001 -r "$RATE" -m "$COUNT" \
	-i 127.0.0.1 -p 0 -nostdin -timeout $((COUNT / RATE + 60))s -default_behaviors all,-abortunexp \
	-trace_stat -stf stats.csv >caller.out 2>&1)
code=$?
set -e
end=$(date +%s.%N)
cpu1=$(awk '{print $14+$15}' "/proc/$node/stat")
hz=$(getconf CLK_TCK)
echo "calls: rate $RATE/s, $COUNT calls, $N agents (sipp exit $code)"
grep -E "Successful call|Failed call" "$dir/caller.out" | sed 's/|/ /g' | awk '{print "  " $1, $2, $NF}'
grep -E "Response Time" -A0 "$dir/caller.out" | head -2 | sed 's/^/  /'
awk -v c0="$cpu0" -v c1="$cpu1" -v hz="$hz" -v s="$start" -v e="$end" \
	'BEGIN { printf "  node CPU %.2f s over %.1f s = %.2f cores\n", (c1-c0)/hz, e-s, (c1-c0)/hz/(e-s) }'
echo "  node RSS $(awk '/VmRSS/ {print $2/1024 " MiB"}' "/proc/$node/status") (peak $(awk '/VmHWM/ {print $2/1024 " MiB"}' "/proc/$node/status"))"
echo "  (logs and sipp stats in $dir)"
