#!/usr/bin/env bash
# deps.sh - install every Debian 12 package the build, the servers and the tests need.
#
# Usage: scripts/deps.sh        (as root; a no-op taking well under a second when all is there)
#
# Only missing packages are installed, with --no-install-recommends.  Server packages
# (rabbitmq-server, mariadb-server, redis-server) normally start their system service on
# install; we never want that: scripts/infra.sh runs private instances on other ports.
# A temporary policy-rc.d that denies every start (exit 101) prevents it when the machine
# has no policy of its own.
set -euo pipefail

PACKAGES=(
    # build
    build-essential cmake pkg-config git ca-certificates
    # client libraries and code generators
    librabbitmq-dev libmariadb-dev libhiredis-dev libprotobuf-c-dev protobuf-c-compiler
    protobuf-compiler libgrpc-dev libwebsockets-dev libsodium-dev libjwt-dev libjsmn-dev
    # the gateway runs lws on a libev (epoll) loop through the evlib-ev plugin
    libev-dev libwebsockets-evlib-ev
    # servers run by scripts/infra.sh (mariadb-client provides the mariadb/mariadb-admin CLI)
    rabbitmq-server mariadb-server mariadb-client redis-server
    # fuzzing and sanitizers
    clang-14 libclang-rt-14-dev
    # test clients and reports (use /usr/bin/python3: it sees these modules)
    python3-websockets python3-pymysql python3-pika python3-redis python3-yaml gnuplot-nox
    # the web client's browser test (tests/web): headless chromium driven from node; npm only
    # when there is none yet (NodeSource's nodejs bundles npm and conflicts with Debian's)
    chromium nodejs $(command -v npm >/dev/null 2>&1 || echo npm)
    # tests/deploy: nginx -t and a WebSocket through the load balancer's config
    nginx
    # ps, ss: used by infra.sh
    procps iproute2
)
POLICY=/usr/sbin/policy-rc.d

missing_packages() {
    local installed
    # One query for all: dpkg-query prints the known ones and fails if any is unknown.
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null |
        awk '$2 == "installed" {print $1}' || true)
    comm -23 <(printf '%s\n' "${PACKAGES[@]}" | sort -u) <(printf '%s\n' "$installed" | sort -u)
}

# Denies service starts for the duration of the install; removed on any exit.
install_start_policy() {
    [ -e "$POLICY" ] && return 0
    printf '#!/bin/sh\n# temporary, from scripts/deps.sh: no service starts\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
}

# Pids of server processes, to tell the ones the install started from those already running.
server_pids() {
    ps -eo pid=,comm= | awk '$2 ~ /^(beam\.smp|epmd|mariadbd|mysqld|redis-server)$/ {print $1}' |
        sort
}

main() {
    local missing before started
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "deps: all ${#PACKAGES[@]} packages already installed"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps: missing ${missing[*]}; run as root to install them" >&2
        return 1
    fi

    before=$(server_pids)
    install_start_policy
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

    started=$(comm -13 <(printf '%s\n' "$before") <(server_pids) | tr '\n' ' ')
    if [ -n "${started// /}" ]; then
        echo "deps: warning: the install started server processes (pids $started);" \
            "$POLICY allowed it. Stop those services: infra.sh needs none of them." >&2
    fi
    echo "deps: installed ${#missing[@]} of ${#PACKAGES[@]} packages: ${missing[*]}"
}

main "$@"
