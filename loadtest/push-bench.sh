#!/usr/bin/env bash
# HTTP publish to N subscribers of one channel on wspush's push service:
# publish → last subscriber latency, measured with `wsload push`.
#
#   loadtest/push-bench.sh [--server BIN] [--wsload BIN] [--conns N] [--reps N]
#                          [--duration S] [--window W] [--rows "w1pin w2"]
#                          [--cases "rate10 window"] [--nice N]
#
# Rows: w1pin = `wspush --workers 1` under `taskset -c 0`, wsload under
# `taskset -c 1`; w1nohist = the same with `--history-size 0` (history off,
# to measure what history costs); w2 = `wspush --workers 2` and wsload,
# both unpinned. A row name ending in `+pusher` (e.g. `w1pin+pusher`) is
# the same row over the Pusher protocol: subscribers on `/app/KEY`
# (`pusher:subscribe`), the publisher on the signed `POST /apps/ID/events`.
# Cases: rate10 = `--rate 10`; window = as fast as `--window W` allows.
# A fresh server (on a fresh port) per run; rows and cases interleaved per
# repetition; medians printed at the end. Raw JSON per run goes to
# target/loadtest-push/<time>/. `--nice -10` runs server and wsload ahead of
# other work on a shared machine (needs root). Needs a prior
# `cargo build --release -p wsload -p wspush`.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=target/release/wspush
WSLOAD=target/release/wsload
CONNS=10000
REPS=3
DUR=10
WINDOW=4
ROWS="w1pin w2"
CASES="rate10 window"
NICE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --server) SERVER=$2; shift 2 ;;
        --wsload) WSLOAD=$2; shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --window) WINDOW=$2; shift 2 ;;
        --rows) ROWS=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        --nice) NICE="nice -n $2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
OUT=target/loadtest-push/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
echo "nproc $(nproc); load $(cut -d' ' -f1-3 /proc/loadavg); $(lscpu | sed -n 's/^Model name: *//p' | head -1); server $SERVER; out $OUT" >&2
port=$((20000 + RANDOM % 20000))
for rep in $(seq 1 "$REPS"); do
    for row in $ROWS; do
        for case in $CASES; do
            port=$((port + 1))
            extra=()
            proto=(--url "ws://127.0.0.1:$port/ws")
            case $row in
                *+pusher)
                    extra=(--pusher-app bench:bench-key:bench-secret)
                    proto=(--url "ws://127.0.0.1:$port/app/bench-key" --pusher bench:bench-key:bench-secret) ;;
            esac
            case ${row%+pusher} in
                w1pin) spin="$NICE taskset -c 0"; lpin="$NICE taskset -c 1"; workers=1 ;;
                w1nohist) spin="$NICE taskset -c 0"; lpin="$NICE taskset -c 1"; workers=1; extra+=(--history-size 0) ;;
                w2) spin="$NICE"; lpin="$NICE"; workers=2 ;;
            esac
            case $case in
                rate10) load=(--rate 10) ;;
                window) load=(--window "$WINDOW") ;;
            esac
            $spin "$SERVER" --listen "127.0.0.1:$port" --workers "$workers" "${extra[@]}" >"$OUT/server-$row-$case-$rep.log" 2>&1 &
            spid=$!
            for _ in $(seq 100); do
                (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
                sleep 0.05
            done
            $lpin "$WSLOAD" push "${proto[@]}" --channel bench -c "$CONNS" \
                "${load[@]}" -d "$DUR" --server-pid "$spid" --json -q \
                >"$OUT/$row-$case-$rep.json" || echo "run $row $case $rep: wsload exit $?" >&2
            kill "$spid"; wait "$spid" 2>/dev/null || true
            python3 - "$OUT/$row-$case-$rep.json" <<'PY' >&2
import json, sys
v = json.load(open(sys.argv[1]))
print(f"{sys.argv[1]}: pub/s {v['publishes_per_s']} fanout p50 {v['fanout_p50_us']} p99 {v['fanout_p99_us']} us, "
      f"errors {v['errors']}, server cpu/delivery {v.get('server_cpu_us_per')} us, client util {v.get('client_cpu_util')}, "
      f"runq wait server {v.get('server_runq_wait_s')} s client {v.get('client_runq_wait_s')} s")
PY
        done
    done
done
python3 - "$OUT" $ROWS -- $CASES <<'PY'
import json, sys, glob, statistics
out = sys.argv[1]
i = sys.argv.index("--")
rows, cases = sys.argv[2:i], sys.argv[i + 1:]
keys = ["publishes_per_s", "deliveries_per_s", "fanout_p50_us", "fanout_p99_us", "fanout_max_us",
        "delivery_p50_us", "delivery_p99_us", "server_cpu_util", "server_cpu_us_per",
        "client_cpu_util", "client_cpu_us_per", "server_runq_wait_s", "client_runq_wait_s", "errors"]
print("| row | case | " + " | ".join(keys) + " | runs |")
print("|" + "---|" * (len(keys) + 3))
for r in rows:
    for c in cases:
        vs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{r}-{c}-*.json"))]
        if not vs:
            continue
        med = [statistics.median(v.get(k, 0) or 0 for v in vs) for k in keys]
        print(f"| {r} | {c} | " + " | ".join(f"{m:g}" for m in med) + f" | {len(vs)} |")
PY
