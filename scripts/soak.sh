#!/usr/bin/env bash
# soak.sh - the system at moderate load for a long, bounded time, watching
# for memory growth and errors.  Not part of CI.
#
#   scripts/soak.sh [MINUTES] [CONNECTIONS] [RATE]      default: 10 200 2
#
# Starts the system with up.sh in its own state dir (IM_STATE_DIR, default
# /tmp/im-soak) on IM_GATEWAY_PORT (default 18090), runs the benchmark in
# direct mode (-c CONNECTIONS, -r RATE messages/s per sender) for MINUTES,
# samples the gateway's and logic's RSS every second, then stops everything
# with down.sh, even when interrupted.  Writes to results/soak-<date>/:
# rss.csv (t, gateway_kb, logic_kb), the benchmark's text/json/csv, and
# rss.png (gnuplot).  RSS should be flat after warm-up: the script prints the
# growth between the end of the first fifth and the end, per process.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
minutes=${1:-10}
conns=${2:-200}
rate=${3:-2}
export IM_STATE_DIR=${IM_STATE_DIR:-/tmp/im-soak}
export IM_GATEWAY_PORT=${IM_GATEWAY_PORT:-18090}
export IM_PORT_BASE=${IM_PORT_BASE:-auto}
out=$repo/results/soak-$(date +%Y-%m-%d-%H%M)
mkdir -p "$out"

cleanup() {
    [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null || true
    "$repo/scripts/down.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$repo/scripts/up.sh" >"$out/up.log" 2>&1
gw_pid=$(<"$IM_STATE_DIR/gateway.pid")
lg_pid=$(<"$IM_STATE_DIR/logic.pid")

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# The sampler stops by itself after the run's length plus a minute.
(
    echo "t,gateway_kb,logic_kb"
    for ((t = 0; t < minutes * 60 + 60; t++)); do
        echo "$t,$(rss_kb "$gw_pid"),$(rss_kb "$lg_pid")"
        sleep 1
    done
) >"$out/rss.csv" &
sampler=$!

"$repo/build/benchmark/benchmark" -g "127.0.0.1:$IM_GATEWAY_PORT" -m direct -c "$conns" \
    -r "$rate" -d "${minutes}m" --drain 30s --progress=false --state-dir "$IM_STATE_DIR" \
    --json-file "$out/bench.json" --csv "$out/bench.csv" >"$out/bench.txt" 2>"$out/bench.stderr" ||
    echo "soak: the benchmark reported problems (see $out/bench.txt)" >&2
kill "$sampler" 2>/dev/null || true
sampler=

gnuplot <<PLOT || echo "soak: gnuplot failed; rss.csv is there" >&2
set terminal pngcairo size 1000,500
set output "$out/rss.png"
set datafile separator ","
set key autotitle columnhead
set xlabel "seconds"
set ylabel "RSS (MiB)"
set title "RSS under ${conns} connections at ${rate} msg/s each, ${minutes} min"
plot "$out/rss.csv" using 1:(\$2/1024) with lines title "gateway", \
     "" using 1:(\$3/1024) with lines title "logic"
PLOT

awk -F, -v warm=$((minutes * 12)) -v end=$((minutes * 60)) '
    NR > 1 && $1 == warm { g0 = $2; l0 = $3 }
    NR > 1 && $1 <= end  { g1 = $2; l1 = $3 }
    END { printf "soak: RSS after warm-up -> end: gateway %d -> %d KiB, logic %d -> %d KiB\n",
                 g0, g1, l0, l1 }' "$out/rss.csv" | tee "$out/summary.txt"
grep -E "acked|delivered|lost|error" "$out/bench.txt" | head -20 | tee -a "$out/summary.txt"
echo "soak: results in $out"
