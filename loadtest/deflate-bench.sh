#!/usr/bin/env bash
# permessage-deflate (issue 11) against no compression, in one sitting,
# interleaved per repetition (the order rotates), medians at the end:
#   push-10k   HTTP publish to 10,000 subscribers of one channel, ~1 KiB
#              JSON-like text (--text-payload -s 1000), as fast as
#              --window 4 allows; wsload always offers deflate (--deflate):
#              `off` declines it, `shared` deflates each publication once.
#   push-10k-15/s  the same at 15 publications/s (150,000 deliveries/s) for
#              both, so CPU per delivery compares at the same load.
#   echo-1KiB  100 connections echoing ~1 KiB JSON-like text: off vs
#              shared (a one-shot compressor per reply) vs dedicated (one
#              compressor per connection, context takeover).
#   idle-10k   10,000 idle connections to a shared server, offering deflate
#              or not: server RSS per connection.
# Server `--workers 1` pinned to CPU 0, wsload to CPU 1. Raw JSON per run:
# target/loadtest-deflate/<time>/.
#
#   loadtest/deflate-bench.sh [--reps N] [--duration S] [--only REGEX]
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=target/release/wspush
WSLOAD=target/release/wsload
REPS=3
DUR=8
ONLY=.
while [ $# -gt 0 ]; do
    case "$1" in
        --reps) REPS=$2; shift 2 ;;
        --duration) DUR=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
OUT=target/loadtest-deflate/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
echo "nproc $(nproc); load $(cut -d' ' -f1-3 /proc/loadavg); git $(git rev-parse --short HEAD); out $OUT" | tee "$OUT/machine.txt" >&2
PORT=$((20000 + RANDOM % 20000))

# name | server --compression | wsload arguments (path first)
RUNS=$(cat <<EOC
push-10k|off|/ws push --channel bench -c 10000 --window 4 -s 1000 --text-payload --deflate -d $DUR
push-10k|shared|/ws push --channel bench -c 10000 --window 4 -s 1000 --text-payload --deflate -d $DUR
push-10k-15/s|off|/ws push --channel bench -c 10000 --rate 15 -s 1000 --text-payload --deflate -d $DUR
push-10k-15/s|shared|/ws push --channel bench -c 10000 --rate 15 -s 1000 --text-payload --deflate -d $DUR
echo-1KiB|off|/echo echo -c 100 -p 1 -s 1000 --text-payload --deflate -d $DUR
echo-1KiB|shared|/echo echo -c 100 -p 1 -s 1000 --text-payload --deflate -d $DUR
echo-1KiB|dedicated|/echo echo -c 100 -p 1 -s 1000 --text-payload --deflate -d $DUR
idle-10k-offered|shared|/echo idle -c 10000 -d 3 --deflate
idle-10k-plain|shared|/echo idle -c 10000 -d 3
EOC
)

run_one() { # name mode rep path args...
    local name=$1 mode=$2 rep=$3 path=$4; shift 4
    PORT=$((PORT + 1))
    # Skip ports something else already listens on (a shared machine).
    while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
    taskset -c 0 "$SERVER" --listen "127.0.0.1:$PORT" --workers 1 --compression "$mode" >"$OUT/server.log" 2>&1 &
    local spid=$!
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.05
    done
    local file="$OUT/${name//\//_}.$mode.$rep.json"
    timeout 180 taskset -c 1 "$WSLOAD" "$@" --url "ws://127.0.0.1:$PORT$path" \
        --server-pid "$spid" --json -q >"$file" 2>"$file.err" || true
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    printf '  %-18s %-10s rep %s  %s\n' "$name" "$mode" "$rep" \
        "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ("msgs_per_s","deliveries_per_s","server_cpu_us_per","wire_bytes_per_msg","payload_bytes_per_msg","compressed","server_bytes_per_conn","errors") if k in d})' "$file" 2>/dev/null || echo "no result")" >&2
    sleep 0.5
}

mapfile -t lines <<<"$RUNS"
for rep in $(seq 1 "$REPS"); do
    n=${#lines[@]}
    for i in $(seq 0 $((n - 1))); do
        # Rotate the order each repetition.
        line=${lines[$(( (i + rep - 1) % n ))]}
        IFS='|' read -r name mode args <<<"$line"
        echo "$name" | grep -Eq -- "$ONLY" || continue
        # shellcheck disable=SC2086
        run_one "$name" "$mode" "$rep" $args
    done
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, sys, glob, statistics, collections
out = sys.argv[1]
runs = collections.defaultdict(list)
for f in sorted(glob.glob(f"{out}/*.json")):
    name, mode, _rep, _ = f.split("/")[-1].rsplit(".", 3)
    try:
        v = json.load(open(f))
        if v.get("errors", 1) == 0:  # failed runs (e.g. a port taken) are left out
            runs[(name, mode)].append(v)
    except Exception:
        pass
keys = ["deliveries_per_s", "msgs_per_s", "server_cpu_us_per", "server_cpu_util", "payload_bytes_per_msg",
        "wire_bytes_per_msg", "compressed", "server_bytes_per_conn", "server_rss_after_kb"]
print("| case | compression | " + " | ".join(keys) + " | runs |")
print("|" + "---|" * (len(keys) + 3))
for (name, mode), vs in sorted(runs.items()):
    med = []
    for k in keys:
        xs = [v[k] for v in vs if v.get(k) is not None]
        med.append(f"{statistics.median(xs):g}" if xs else "-")
    print(f"| {name} | {mode} | " + " | ".join(med) + f" | {len(vs)} |")
PY
