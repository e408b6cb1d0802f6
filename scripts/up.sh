#!/usr/bin/env bash
# The README's "start everything" command: installs what is missing, builds,
# starts the infrastructure (RabbitMQ, MariaDB, Redis) as local processes under
# .run/, then the services.  Stop everything with scripts/down.sh.
#
# Services: logic (gRPC API on 127.0.0.1:9000 and the batch writer: durable
# queue -> MySQL), then the gateway (WebSocket and REST on IM_GATEWAY_PORT,
# default 8080, serving the web client at /).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=${IM_STATE_DIR:-$repo/.run}
export IM_STATE_DIR=$state

"$repo/scripts/deps.sh"
"$repo/scripts/build.sh" "$repo/build"
"$repo/scripts/infra.sh" up

# start_service NAME BINARY [args...]: runs it in the background with the
# infra settings in its environment, logging to $state/NAME.log; a second
# up.sh leaves a running one alone.
start_service() {
    local name=$1 pidfile=$state/$1.pid pid
    shift
    if [ -f "$pidfile" ] && pid=$(<"$pidfile") && kill -0 "$pid" 2>/dev/null &&
        grep -q "^State:[[:space:]]*[RSD]" "/proc/$pid/status" 2>/dev/null; then
        echo "up: $name already running (pid $pid)"
        return 0
    fi
    (
        set -a
        # shellcheck disable=SC1091
        . "$state/env"
        exec "$@" >>"$state/$name.log" 2>&1 </dev/null
    ) &
    echo $! >"$pidfile"
    sleep 0.3
    if ! kill -0 "$!" 2>/dev/null; then
        echo "up: $name exited at once; see $state/$name.log" >&2
        tail -n 20 "$state/$name.log" >&2
        return 1
    fi
    echo "up: $name running (pid $!, log $state/$name.log)"
}

# One token secret per state dir, made once, so tokens survive restarts and
# every service of this machine shares it.  Production sets IM_JWT_SECRET.
if [ -z "${IM_JWT_SECRET:-}" ]; then
    if [ ! -s "$state/jwt-secret" ]; then
        (umask 077 && head -c 48 /dev/urandom | base64 -w0 >"$state/jwt-secret")
    fi
    IM_JWT_SECRET=$(<"$state/jwt-secret")
fi
export IM_JWT_SECRET

start_service logic "$repo/build/logic/logic"
# The gateway does not wait for logic: calls made before logic listens fail
# and are retried by clients; its heartbeat thread retries by itself.
# One gateway process per core is the way to use more cores (libwebsockets
# runs one service thread per context): IM_GATEWAYS=N starts N of them on
# consecutive ports from IM_GATEWAY_PORT (put a load balancer in front), and
# IM_GATEWAY_WORKERS=N makes each a master of N worker processes sharing its
# port (SO_REUSEPORT).
port=${IM_GATEWAY_PORT:-8080}
for ((g = 0; g < ${IM_GATEWAYS:-1}; g++)); do
    name=gateway
    [ "$g" -gt 0 ] && name=gateway-$g
    start_service "$name" "$repo/build/gateway/gateway" --listen "0.0.0.0:$((port + g))" \
        --gateway-id "$(hostname)-gw$g" --workers "${IM_GATEWAY_WORKERS:-1}"
done
echo
echo "Everything is up (settings above, also in $state/env)."
echo "Web client and API: http://127.0.0.1:$port/  (WebSocket: /ws)"
echo "Stop it with: scripts/down.sh"
