#!/usr/bin/env bash
# idle-scale.sh - hold more idle connections than one process may open files
# (20,000 on the reference machine, for the gateway and the benchmark alike):
# several benchmark processes in idle mode against one gateway running
# --workers N, and the gateway's RSS per connection summed over the master
# and its workers, read from /proc while every connection is held.
#
#   scripts/idle-scale.sh TOTAL [PER_PROCESS]       # e.g. 200000 19000
#
# Environment: IM_STATE_DIR (scripts/up.sh's, default .run: jwt-secret),
# GATEWAY (127.0.0.1:8080), GATEWAY_PID (default: $IM_STATE_DIR/gateway.pid),
# RAMP (seconds to spread each process's connects over, default 60), HOLD
# (seconds to hold once connected, default 30), OUT (directory for each
# process's output, default a new one under /tmp).  Each benchmark process
# binds its own 4 source addresses 127.<10+k>.0.1-4 (about 112k ports), and
# is bounded by RAMP + HOLD + its drain; this script waits at most RAMP +
# HOLD + 120 s for all of them, then stops any that is left, by pid.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
total=${1:?usage: idle-scale.sh TOTAL [PER_PROCESS]}
per=${2:-19000}
state=${IM_STATE_DIR:-$repo/.run}
gateway=${GATEWAY:-127.0.0.1:8080}
gw_pid=${GATEWAY_PID:-$(cat "$state/gateway.pid")}
ramp=${RAMP:-60}
hold=${HOLD:-30}
out=${OUT:-$(mktemp -d /tmp/idle-scale.XXXXXX)}
bench=$repo/build/benchmark/benchmark
mkdir -p "$out"

# The gateway's processes: the pid given and its descendants (--workers).
descendants() {
    local p=$1 kid
    echo "$p"
    [ -r "/proc/$p/task/$p/children" ] || return 0
    for kid in $(<"/proc/$p/task/$p/children"); do descendants "$kid"; done
}
gw_pids() { descendants "$gw_pid" | tr '\n' ' '; }
rss_kb() { # sum of VmRSS over pids, in kB
    local sum=0 p kb
    for p in "$@"; do
        kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        sum=$((sum + ${kb:-0}))
    done
    echo "$sum"
}
mem_avail_kb() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }

procs=$(((total + per - 1) / per))
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

read -r -a gws <<<"$(gw_pids)"
rss0=$(rss_kb "${gws[@]}")
avail0=$(mem_avail_kb)
echo "idle-scale: $total connections to $gateway in $procs benchmark processes, gateway pids ${gws[*]}, RSS $((rss0 / 1024)) MiB"
left=$total
for ((k = 0; k < procs; k++)); do
    n=$((left < per ? left : per))
    left=$((left - n))
    src="127.$((10 + k)).0.1-127.$((10 + k)).0.4"
    "$bench" -m idle -c "$n" --ramp "${ramp}s" -d "${hold}s" --auth mint --source "$src" \
        -g "$gateway" --state-dir "$state" --gateway-pid "$gw_pid" \
        --json-file "$out/$k.json" >"$out/$k.txt" 2>"$out/$k.err" &
    pids+=($!)
done

# Wait until every process has all its connections ready (or gave up).
deadline=$((SECONDS + ramp + 120))
while :; do
    ready=0
    for ((k = 0; k < procs; k++)); do
        grep -q "connections ready" "$out/$k.err" 2>/dev/null && ready=$((ready + 1))
        kill -0 "${pids[$k]}" 2>/dev/null || ready=$((ready + 1))
    done
    [ "$ready" -ge "$procs" ] && break
    [ "$SECONDS" -ge "$deadline" ] && { echo "idle-scale: not all ready in time" >&2; break; }
    sleep 1
done
sleep 2
read -r -a gws <<<"$(gw_pids)"
rss1=$(rss_kb "${gws[@]}")
avail1=$(mem_avail_kb)
port=${gateway##*:}
held=$(ss -Htn state established "( sport = :$port )" | wc -l)
bench_rss=$(rss_kb "${pids[@]}")
per_worker=""
for p in "${gws[@]}"; do per_worker+=" $p:$(($(rss_kb "$p") / 1024))MiB"; done

deadline=$((SECONDS + hold + 120))
for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 1; done
done
ready_total=0
for ((k = 0; k < procs; k++)); do
    r=$(sed -n 's/^benchmark: \([0-9]*\) of [0-9]* connections ready.*/\1/p' "$out/$k.err" | head -1)
    ready_total=$((ready_total + ${r:-0}))
done

echo "idle-scale: ready $ready_total of $total (benchmark processes' own count); held at the gateway port: $held established sockets"
echo "idle-scale: gateway RSS $((rss0 / 1024)) MiB -> $((rss1 / 1024)) MiB over ${#gws[@]} processes:$per_worker"
if [ "$held" -gt 0 ]; then
    echo "idle-scale: gateway $(((rss1 - rss0) * 1024 / held)) bytes per held connection"
    echo "idle-scale: benchmark processes $((bench_rss * 1024 / held)) bytes per connection; MemAvailable fell $(((avail0 - avail1) * 1024 / held)) bytes per connection (both ends' kernel sockets, every process)"
fi
echo "idle-scale: per-process output in $out"
