#!/usr/bin/env bash
# bench-suite.sh - the benchmark runs quoted in README.md, against a system
# started by scripts/up.sh (same IM_STATE_DIR), each kept as NAME.txt (summary),
# NAME.json, NAME.csv (per second), NAME.stderr and NAME-*.png plots.
#
#   scripts/bench-suite.sh results/$(date +%F)          # every run (~12 minutes)
#   scripts/bench-suite.sh /tmp/b direct-1000 group-1000 # only those
#
# db-100 writes 100,000 rows per dbreport mode: the writer lingers up to its
# 20 ms --writer-delay for the last partial batch of a drain, which is ~12% of
# draining 20,000 rows but ~2% of 100,000 (the steady rate is what it reports).
#
# Users for the direct and db runs are registered once through the REST API
# and kept in OUTDIR/users.txt (registering 2,000 takes a few minutes: the
# password hash is deliberately slow); group and idle runs mint tokens.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:?usage: bench-suite.sh OUTDIR [RUN...]}
shift
mkdir -p "$out"
B="$repo/build/benchmark/benchmark"
users="$out/users.txt"

# name: arguments.  Every run is bounded by its -d (plus ramp and drain).
declare -A runs=(
    [direct-1000-r2]="-m direct -c 1000 -r 2 -d 30s --users-file $users"
    [direct-2000-r2]="-m direct -c 2000 -r 2 -d 30s --users-file $users"
    [direct-1000-r10]="-m direct -c 1000 -r 10 -d 30s --users-file $users"
    [direct-2000-r10]="-m direct -c 2000 -r 10 -d 30s --users-file $users"
    [direct-2100-r10]="-m direct -c 2100 -r 10 -d 30s --users-file $users"
    [group-1000]="-m group --group-size 1000 -c 1000 --senders 10 -r 40 -d 20s --auth mint"
    [group-1000-max]="-m group --group-size 1000 -c 1000 --senders 30 -r 40 -d 20s --auth mint"
    [connect-200]="-m connect -c 200 -d 20s --auth mint"
    [idle-19000]="-m idle -c 19000 --ramp 60s -d 30s --auth mint --source 127.0.0.2-127.0.0.9"
    [db-100]="-m db -c 100 -d 10s --db-rows 100000 --users-file $users"
)
order=(direct-1000-r2 direct-2000-r2 direct-1000-r10 direct-2000-r10 direct-2100-r10 group-1000 group-1000-max connect-200
    idle-19000 db-100)
[ $# -gt 0 ] && order=("$@")

for name in "${order[@]}"; do
    args=${runs[$name]:?unknown run $name}
    echo "bench-suite: $name: benchmark $args"
    # shellcheck disable=SC2086
    "$B" $args --csv "$out/$name.csv" --json-file "$out/$name.json" \
        >"$out/$name.txt" 2>"$out/$name.stderr" || echo "bench-suite: $name exited $?"
    "$repo/scripts/bench-plot.sh" "$out/$name.csv" "$out/$name" "$name" >/dev/null 2>&1 || true
    sed -n '/^Messages/,/^Latency/p' "$out/$name.txt" | head -8
    sleep 5 # let the system settle between runs
done
