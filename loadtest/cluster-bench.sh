#!/usr/bin/env bash
# The Redis hop's cost: HTTP publish → last subscriber latency and the max
# publication rate with no loss, on one node without Redis, one node with
# Redis, and two nodes joined through Redis (subscribers split over both,
# every publication through the first node's API).
#
#   loadtest/cluster-bench.sh [--conns N] [--reps N] [--duration S]
#                             [--window W] [--rows "single redis1 redis2"]
#                             [--cases "rate10 window"]
#
# Each node runs `wspush --workers 1`; a fresh `redis-server` (no
# persistence) and fresh nodes per run; wsload runs as 2 processes (one per
# node in redis2). Raw JSON per run in target/loadtest-cluster/<time>/.
# Needs `redis-server` and a prior `cargo build --release -p wsload -p wspush`.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=target/release/wspush
WSLOAD=target/release/wsload
CONNS=10000
REPS=3
DUR=10
WINDOW=4
ROWS="single redis1 redis2"
CASES="rate10 window"
while [ $# -gt 0 ]; do
    case "$1" in
        --conns) CONNS=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --window) WINDOW=$2; shift 2 ;;
        --rows) ROWS=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
OUT=target/loadtest-cluster/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
echo "nproc $(nproc); load $(cut -d' ' -f1-3 /proc/loadavg); out $OUT" >&2
port=$((20000 + RANDOM % 20000))
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}
for rep in $(seq 1 "$REPS"); do
    for row in $ROWS; do
        for case in $CASES; do
            pids=()
            rport=$((port += 1)); p1=$((port += 1)); p2=$((port += 1))
            redis=()
            if [ "$row" != single ]; then
                redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
                    >"$OUT/redis-$row-$case-$rep.log" 2>&1 &
                pids+=($!)
                wait_port "$rport"
                redis=(--redis "redis://127.0.0.1:$rport")
            fi
            "$SERVER" --listen "127.0.0.1:$p1" --workers 1 "${redis[@]}" >"$OUT/node1-$row-$case-$rep.log" 2>&1 &
            s1=$!; pids+=("$s1")
            wait_port "$p1"
            urls=(--url "ws://127.0.0.1:$p1/ws")
            if [ "$row" = redis2 ]; then
                "$SERVER" --listen "127.0.0.1:$p2" --workers 1 "${redis[@]}" >"$OUT/node2-$row-$case-$rep.log" 2>&1 &
                pids+=($!)
                wait_port "$p2"
                urls+=(--also-url "ws://127.0.0.1:$p2/ws")
            fi
            case $case in
                rate10) load=(--rate 10) ;;
                window) load=(--window "$WINDOW") ;;
            esac
            "$WSLOAD" push "${urls[@]}" --procs 2 --channel bench -c "$CONNS" \
                "${load[@]}" -d "$DUR" --server-pid "$s1" --json -q \
                >"$OUT/$row-$case-$rep.json" || echo "run $row $case $rep: wsload exit $?" >&2
            kill "${pids[@]}" 2>/dev/null || true
            wait 2>/dev/null || true
            python3 - "$OUT/$row-$case-$rep.json" <<'PY' >&2
import json, sys
v = json.load(open(sys.argv[1]))
print(f"{sys.argv[1]}: pub/s {v['publishes_per_s']} deliveries/s {v.get('deliveries_per_s')} fanout p50 {v['fanout_p50_us']} p99 {v['fanout_p99_us']} us, "
      f"errors {v['errors']} lost {v.get('lost')}")
PY
        done
    done
done
python3 - "$OUT" <<'PY'
import json, glob, os, statistics, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(f)[:-5]
    row, case, _ = name.rsplit("-", 2)
    try:
        v = json.load(open(f))
    except Exception:
        continue
    rows.setdefault((row, case), []).append(v)
print("| row | case | publications/s | fan-out p50 | fan-out p99 | errors |")
print("|---|---|---|---|---|---|")
for (row, case), vs in sorted(rows.items()):
    med = lambda k: statistics.median(v[k] for v in vs if v.get(k) is not None)
    print(f"| {row} | {case} | {med('publishes_per_s'):.0f} | {med('fanout_p50_us')/1000:.1f} ms | {med('fanout_p99_us')/1000:.1f} ms | {sum(v['errors'] for v in vs)} |")
PY
