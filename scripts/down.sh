#!/usr/bin/env bash
# Stops everything scripts/up.sh started, by the PID files under .run/:
# the services first (gracefully: SIGTERM, they flush what they hold), then
# the infrastructure.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${IM_STATE_DIR:-$repo/.run}
export IM_STATE_DIR=$state

stop_service() {
    local name=$1 pidfile=$state/$1.pid pid i
    [ -f "$pidfile" ] || return 0
    pid=$(<"$pidfile")
    if kill -TERM "$pid" 2>/dev/null; then
        for ((i = 0; i < 150; i++)); do
            grep -q "^State:[[:space:]]*[RSD]" "/proc/$pid/status" 2>/dev/null || break
            sleep 0.1
        done
        if grep -q "^State:[[:space:]]*[RSD]" "/proc/$pid/status" 2>/dev/null; then
            echo "down: $name (pid $pid) did not stop in 15 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "down: stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
}

for pidfile in "$state"/gateway*.pid; do
    [ -e "$pidfile" ] || continue
    name=$(basename "$pidfile" .pid)
    stop_service "$name"
done
stop_service logic
"$repo/scripts/infra.sh" down
