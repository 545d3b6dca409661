#!/usr/bin/env bash
# Side-by-side load tests: wspush (--workers 1) against the reference peers
# on fastwebsockets and tokio-tungstenite (single-threaded each), in one
# sitting, interleaved, repeated; prints medians and ratios (wspush / peer).
#
#   loadtest/compare.sh                       # all cases, 3 repetitions
#   loadtest/compare.sh --only 'echo|chat'    # cases whose name matches
#   loadtest/compare.sh --reps 1 --duration 3 --servers "wspush fastwebsockets"
#   loadtest/compare.sh --nice -10            # ahead of other work on a shared machine
#   WSPUSH_BASE=/path/to/older/wspush loadtest/compare.sh --servers "wspush wspush-base"
#                                             # before/after: another build of wspush as a peer
#   UWS_PEER=/path/to/peer-uwebsockets loadtest/compare.sh
#                                             # adds uWebSockets (a binary built outside
#                                             # the repository; see loadtest/README.md)
#
# Servers run pinned to CPU 0 (taskset -c 0), wsload to CPU 1. Each run starts
# a fresh server on a fresh port. Raw JSON per run and the summary go to
# target/loadtest-compare/<time>/. Every run is bounded (wsload stops by itself;
# a run is killed after 120 s).
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=3
DUR=5
ONLY=.
SERVERS="wspush fastwebsockets tokio-tungstenite"
BUILD=1
NICE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2 ;;
    --duration) DUR=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --nice) NICE=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
ROOT=$PWD
FWS=$ROOT/loadtest/peers/fastwebsockets
TT=$ROOT/loadtest/peers/tokio-tungstenite
if [ "$BUILD" = 1 ]; then
  cargo build --release -p wspush -p wsload
  (cd "$FWS" && cargo build --release)
  (cd "$TT" && cargo build --release)
fi
OUT=$ROOT/target/loadtest-compare/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT/bin"
# Snapshot the binaries: a rebuild during the sitting must not change them.
cp "$ROOT/target/release/wsload" "$ROOT/target/release/wspush" "$OUT/bin/"
for peer in "$FWS/target/release/peer-fastwebsockets" "$TT/target/release/peer-tokio-tungstenite"; do
  if [ -x "$peer" ]; then cp "$peer" "$OUT/bin/"; fi
done
WSLOAD=$OUT/bin/wsload
if [ -n "${WSPUSH_BASE:-}" ]; then cp "$WSPUSH_BASE" "$OUT/bin/wspush-base"; fi
if [ -n "${UWS_PEER:-}" ]; then
  cp "$UWS_PEER" "$OUT/bin/peer-uwebsockets"
  case " $SERVERS " in *" uwebsockets "*) ;; *) SERVERS="$SERVERS uwebsockets" ;; esac
fi

server_cmd() { # name port
  case "$1" in
    wspush) echo "$OUT/bin/wspush --listen 127.0.0.1:$2 --workers 1" ;;
    wspush-base) echo "$OUT/bin/wspush-base --listen 127.0.0.1:$2 --workers 1" ;;
    fastwebsockets) echo "$OUT/bin/peer-fastwebsockets --listen 127.0.0.1:$2" ;;
    tokio-tungstenite) echo "$OUT/bin/peer-tokio-tungstenite --listen 127.0.0.1:$2" ;;
    uwebsockets) echo "$OUT/bin/peer-uwebsockets $2" ;;
    *) echo "unknown server $1" >&2; exit 2 ;;
  esac
}

# name | wsload arguments (the URL path comes first)
CASES=$(cat <<EOC
echo-100x20B|/echo echo -c 100 -p 1 -s 20 -d $DUR
echo-100x1KiB|/echo echo -c 100 -p 1 -s 1024 -d $DUR
echo-10x64KiB|/echo echo -c 10 -p 1 -s 65536 --binary -d $DUR
bcast-1k-10/s|/broadcast broadcast -c 1000 --publishers 1 --rate 10 -s 32 -d $DUR
bcast-1k-max|/broadcast broadcast -c 1000 --publishers 1 --window 16 -s 32 -d $DUR
bcast-10k-10/s|/broadcast broadcast -c 10000 --publishers 1 --rate 10 -s 32 -d $DUR
bcast-10k-max|/broadcast broadcast -c 10000 --publishers 1 --window 16 -s 32 -d $DUR
chat-100|/broadcast broadcast -c 100 --publishers 100 --window 4 -s 32 -d $DUR
chat-1000|/broadcast broadcast -c 1000 --publishers 1000 --window 1 -s 32 -d $DUR
connect-10k|/echo connect -c 10000 --concurrency 200
idle-10k|/echo idle -c 10000 -d 3
EOC
)

{
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); nice $NICE"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo ?)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/')"
} | tee "$OUT/machine.txt"

grep '^cpu' /proc/stat >"$OUT/stat.start"
PORT=$((20000 + RANDOM % 20000))
wait_listen() { # port
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  return 1
}

run_one() { # case-name server rep args...
  local name=$1 server=$2 rep=$3; shift 3
  local path=$1; shift
  PORT=$((PORT + 1))
  # shellcheck disable=SC2046
  nice -n "$NICE" taskset -c 0 $(server_cmd "$server" "$PORT") >"$OUT/server.log" 2>&1 &
  local spid=$!
  if ! wait_listen "$PORT"; then
    echo "  $server did not start" >&2
    kill "$spid" 2>/dev/null || true
    return
  fi
  local file="$OUT/$(echo "$name" | tr '/' '_').$server.$rep.json"
  timeout 120 nice -n "$NICE" taskset -c 1 "$WSLOAD" "$@" --url "ws://127.0.0.1:$PORT$path" \
    --server-pid "$spid" --json -q --max-errors 1000000000 >"$file" 2>"$file.err" || true
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  printf '  %-16s %-18s rep %s  %s\n' "$name" "$server" "$rep" \
    "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ("msgs_per_s","deliveries_per_s","handshakes_per_s","server_bytes_per_conn","server_cpu_us_per","errors") if k in d})' "$file" 2>/dev/null || echo "no result")"
  sleep 0.5
}

for rep in $(seq 1 "$REPS"); do
  # Rotate the server order each repetition so none always goes first.
  read -r -a order <<<"$SERVERS"
  n=${#order[@]}
  shift_by=$(( (rep - 1) % n ))
  rotated=("${order[@]:$shift_by}" "${order[@]:0:$shift_by}")
  while IFS='|' read -r name args; do
    [ -z "$name" ] && continue
    echo "$name" | grep -Eq -- "$ONLY" || continue
    for server in "${rotated[@]}"; do
      # shellcheck disable=SC2086
      run_one "$name" "$server" "$rep" $args
    done
  done <<<"$CASES"
done

grep '^cpu' /proc/stat >"$OUT/stat.end"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
# Where the CPUs went during the sitting (others' niced work shows as "nice").
paste "$OUT/stat.start" "$OUT/stat.end" | awk '{n = NF / 2; t = 0
  for (i = 2; i <= n; i++) { d[i] = $(i + n) - $i; t += d[i] }
  if (t > 0) printf "%s during the sitting: user %.0f%%, nice %.0f%%, system %.0f%%, idle %.0f%%, softirq %.0f%%\n",
    $1, 100 * d[2] / t, 100 * d[3] / t, 100 * d[4] / t, 100 * d[5] / t, 100 * d[8] / t}' | tee -a "$OUT/machine.txt"
python3 - "$OUT" "$SERVERS" "$CASES" <<'EOPY' | tee "$OUT/summary.md"
import glob, json, os, statistics, sys
out, servers, cases = sys.argv[1], sys.argv[2].split(), sys.argv[3]
metrics = {
    "echo": [("msgs_per_s", "msg/s"), ("rtt_p50_us", "RTT p50 µs"), ("rtt_p99_us", "RTT p99 µs"),
             ("server_cpu_us_per", "server CPU µs/msg"), ("client_cpu_us_per", "wsload CPU µs/msg"),
             ("server_cpu_util", "server CPU util"), ("client_cpu_util", "wsload CPU util")],
    "bcast": [("deliveries_per_s", "deliveries/s"), ("fanout_p50_us", "fan-out p50 µs"),
              ("fanout_p99_us", "fan-out p99 µs"), ("delivery_p99_us", "delivery p99 µs"),
              ("server_cpu_us_per", "server CPU µs/delivery"), ("client_cpu_us_per", "wsload CPU µs/delivery"),
              ("server_cpu_util", "server CPU util"), ("client_cpu_util", "wsload CPU util")],
    "connect": [("handshakes_per_s", "handshakes/s"), ("handshake_p50_us", "handshake p50 µs"),
                ("handshake_p99_us", "handshake p99 µs"), ("server_cpu_us_per", "server CPU µs/handshake"),
                ("failed", "failed handshakes")],
    "idle": [("server_bytes_per_conn", "server RSS bytes/conn"), ("server_rss_after_kb", "server RSS KiB at 10k")],
}
print("```text\n" + open(os.path.join(out, "machine.txt")).read().strip() + "\n```\n")
others = [s for s in servers if s != "wspush"]
for line in cases.strip().splitlines():
    name, args = line.split("|", 1)
    path, wsargs = args.split(" ", 1)
    fname = name.replace("/", "_")
    kind = "bcast" if name.startswith("chat") else name.split("-")[0]
    runs = {s: [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{fname}.{s}.*.json")) if os.path.getsize(f) > 0]
            for s in servers}
    if not any(runs.values()):
        continue
    reps = max(len(r) for r in runs.values())
    print(f"### {name}\n")
    print(f"`loadtest/compare.sh --only '^{name}$'` — each run is "
          f"`taskset -c 1 wsload {wsargs} --url ws://127.0.0.1:PORT{path} --server-pid PID` "
          f"against a fresh server on CPU 0; median of {reps} runs.\n")
    head = ["metric"] + servers + [f"wspush / {s}" for s in others]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key, label in metrics[kind] + [("errors", "errors (max of runs)")]:
        med = {}
        for s in servers:
            vals = [r[key] for r in runs[s] if isinstance(r.get(key), (int, float))]
            if vals:
                med[s] = max(vals) if key == "errors" else statistics.median(vals)
        if not med:
            continue
        cells = [label]
        for s in servers:
            v = med.get(s)
            cells.append("–" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"))
        for s in others:
            a, b = med.get("wspush"), med.get(s)
            cells.append(f"{a / b:.2f}×" if a is not None and b not in (None, 0) and key != "errors" else "")
        print("| " + " | ".join(cells) + " |")
    print()
print(f"\nmedians of the repetitions; raw runs in {out}")
EOPY
