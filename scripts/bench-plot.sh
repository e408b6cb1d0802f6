#!/usr/bin/env bash
# bench-plot.sh - draws the per-second CSV of build/benchmark/benchmark --csv as PNGs:
# throughput (sent, acked, delivered, errors, connects per second; open connections)
# and latency percentiles (send->ack, send->deliver, connect->ready; p50 and p99 of each second).
#
#   scripts/bench-plot.sh results/2026-12-02/direct.csv            # -> direct-throughput.png, direct-latency.png
#   scripts/bench-plot.sh run.csv out/run "direct, 200 connections" # prefix and title of your choice
#
# Needs gnuplot (gnuplot-nox, installed by scripts/deps.sh).
set -euo pipefail

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 FILE.csv [OUTPUT_PREFIX] [TITLE]" >&2
    exit 2
fi
csv=$1
prefix=${2:-${csv%.csv}}
title=${3:-$(basename "$prefix")}
command -v gnuplot >/dev/null || { echo "bench-plot: gnuplot is not installed (apt-get install gnuplot-nox)" >&2; exit 1; }
if [ "$(wc -l <"$csv")" -lt 2 ]; then
    echo "bench-plot: $csv has no rows" >&2
    exit 1
fi
# Columns by name, so the plot survives new columns in the CSV.
col() {
    head -n1 "$csv" | tr ',' '\n' | grep -nx "$1" | cut -d: -f1
}
t=$(col t_s)
open=$(col open)
sent=$(col sent)
acked=$(col acked)
delivered=$(col delivered)
errors=$(col errors)
connects=$(col connects)
ack50=$(col ack_p50_ms)
ack99=$(col ack_p99_ms)
e2e50=$(col e2e_p50_ms)
e2e99=$(col e2e_p99_ms)
con50=$(col connect_p50_ms)
con99=$(col connect_p99_ms)

# Latency series with at least one sample (log scale: an all-zero series is an error).
has_data() {
    awk -F, -v c="$1" 'NR > 1 && $c + 0 > 0 { found = 1 } END { exit !found }' "$csv"
}
lat=()
for spec in "$ack50:send->ack p50" "$ack99:send->ack p99" "$e2e50:send->deliver p50" \
    "$e2e99:send->deliver p99" "$con50:connect->ready p50" "$con99:connect->ready p99"; do
    c=${spec%%:*}
    if has_data "$c"; then
        lat+=("'${csv}' using ${t}:(nz(column(${c}))) with linespoints title '${spec#*:}'")
    fi
done
latplot=$(IFS=','; echo "${lat[*]}")
# Headroom above the open-connections line, which is often flat at its maximum.
y2max=$(awk -F, -v c="$open" 'NR > 1 && $c + 0 > m { m = $c + 0 } END { print (m > 0 ? m * 1.15 : 1) }' "$csv")

gnuplot <<GP
set datafile separator ','
set datafile columnheaders
set terminal pngcairo size 1100,600 noenhanced
set grid
set key outside right top
set xlabel 'seconds since the load began'

set output '${prefix}-throughput.png'
set title '${title}: per second'
set ylabel 'per second'
set y2label 'open connections'
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:${y2max}]
plot '${csv}' using ${t}:${sent} with linespoints title 'sent', \
     '' using ${t}:${acked} with linespoints title 'acked', \
     '' using ${t}:${delivered} with linespoints title 'delivered', \
     '' using ${t}:${errors} with linespoints title 'errors', \
     '' using ${t}:${connects} with linespoints title 'connects', \
     '' using ${t}:${open} axes x1y2 with lines dashtype 2 title 'open (right axis)'
GP

if [ ${#lat[@]} -gt 0 ]; then
    gnuplot <<GP
set datafile separator ','
set datafile columnheaders
set terminal pngcairo size 1100,600 noenhanced
set grid
set key outside right top
set xlabel 'seconds since the load began'
set output '${prefix}-latency.png'
set title '${title}: latency percentiles of each second'
set ylabel 'milliseconds (log scale)'
set logscale y
# A second without samples has 0: not drawn.
nz(x) = x > 0 ? x : 1/0
plot ${latplot}
GP
    echo "bench-plot: ${prefix}-throughput.png ${prefix}-latency.png"
else
    echo "bench-plot: ${prefix}-throughput.png (no latency samples to plot)"
fi
