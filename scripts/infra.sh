#!/usr/bin/env bash
# infra.sh - the project's real RabbitMQ, MariaDB and Redis as local processes on 127.0.0.1.
#
# Usage: scripts/infra.sh up|down|stop SERVICE|status|env
#   up      start whatever is not running, wait until ready, create the `im` database and
#           users, apply new sql/migrations/NNN_name.sql, write and print $IM_STATE_DIR/env
#   down    stop exactly the processes `up` started (PID files), leaving none behind
#   stop S  stop only server S (rabbitmq, mariadb or redis), for fault tests; `up` restarts it
#   status  say which servers run; exit 0 when all do, 3 otherwise
#   env     print $IM_STATE_DIR/env (KEY=VALUE lines for clients)
#
# Environment:
#   IM_STATE_DIR   data, logs, PID files (default <repo>/.run)
#   IM_PORT_BASE   N: ports N..N+9 (AMQP, MySQL, Redis, Erlang dist, epmd, 5 rabbitmqctl);
#                  auto: a free block picked at random in 20000-31999 (below the ephemeral range)
#   IM_AMQP_PORT (5673) IM_MYSQL_PORT (3307) IM_REDIS_PORT (6380), used without IM_PORT_BASE;
#                  the Erlang ports are then 25673 (dist), 25674 (epmd), 25675-25679 (rabbitmqctl)
#   IM_REDIS_AOF=1 turn on Redis appendonly (under the state dir); default is no persistence
#   IM_INFRA_TIMEOUT  seconds to wait for each server to become ready (default 60)
#
# Ports are fixed at the first `up` of a state dir ($IM_STATE_DIR/ports); delete the state
# dir to choose new ones.  Credentials: im/im everywhere, AMQP vhost "/", database "im".
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=$(realpath -m "${IM_STATE_DIR:-$REPO/.run}")
TIMEOUT=${IM_INFRA_TIMEOUT:-60}
MIGRATIONS=$REPO/sql/migrations

EPMD=/usr/lib/erlang/bin/epmd
RABBIT_BIN=/usr/lib/rabbitmq/bin

IM_USER=im
IM_PASSWORD=im
IM_DB=im
IM_VHOST=/

# Every server gets this variable in its environment: it tells our processes (and their
# children) apart from anyone else's when checking PID files and after `down`.
MARKER="IM_INFRA_STATE=$STATE"

SERVICES=(epmd rabbitmq mariadb redis)

log() { printf 'infra: %s\n' "$*"; }
die() {
    printf 'infra: error: %s\n' "$*" >&2
    exit 1
}

# EPOCHREALTIME's decimal separator follows the locale: keep only the digits (microseconds).
now_ms() { echo $((${EPOCHREALTIME//[!0-9]/} / 1000)); }

# ---------------------------------------------------------------------------- ports

port_listening() { [ -n "$(ss -Hltn "sport = :$1")" ]; }

# Ten consecutive ports nobody listens on.  Two runs picking the same block at the same
# instant is possible but unlikely (1 in 1200), and the port check at start catches it.
pick_port_base() {
    local listening base p ok
    listening=$(ss -Hltn | awk '{n = split($4, a, ":"); print a[n]}' | sort -un)
    for _ in $(seq 50); do
        base=$((20000 + 10 * (RANDOM % 1200)))
        ok=1
        for ((p = base; p < base + 10; p++)); do
            if grep -qx "$p" <<<"$listening"; then
                ok=0
                break
            fi
        done
        if [ "$ok" = 1 ]; then
            echo "$base"
            return 0
        fi
    done
    die "no free block of 10 ports found in 20000-31999"
}

assign_ports() {
    local base=${IM_PORT_BASE:-}
    [ "$base" = auto ] && base=$(pick_port_base)
    if [ -n "$base" ]; then
        if ! [[ "$base" =~ ^[0-9]+$ ]] || [ "$base" -lt 1024 ] || [ "$base" -gt 65526 ]; then
            die "IM_PORT_BASE must be auto or a number in 1024-65526, not '$base'"
        fi
        AMQP_PORT=$base MYSQL_PORT=$((base + 1)) REDIS_PORT=$((base + 2))
        DIST_PORT=$((base + 3)) EPMD_PORT=$((base + 4))
        CTL_PORT_MIN=$((base + 5)) CTL_PORT_MAX=$((base + 9))
    else
        AMQP_PORT=${IM_AMQP_PORT:-5673} MYSQL_PORT=${IM_MYSQL_PORT:-3307}
        REDIS_PORT=${IM_REDIS_PORT:-6380}
        DIST_PORT=25673 EPMD_PORT=25674 CTL_PORT_MIN=25675 CTL_PORT_MAX=25679
    fi
    cat >"$STATE/ports" <<EOF
AMQP_PORT=$AMQP_PORT
MYSQL_PORT=$MYSQL_PORT
REDIS_PORT=$REDIS_PORT
DIST_PORT=$DIST_PORT
EPMD_PORT=$EPMD_PORT
CTL_PORT_MIN=$CTL_PORT_MIN
CTL_PORT_MAX=$CTL_PORT_MAX
EOF
}

# Reads the ports fixed at the first `up`.  Returns 1 when this state dir has none yet.
load_ports() {
    local key value
    [ -f "$STATE/ports" ] || return 1
    while IFS='=' read -r key value; do
        if ! [[ "$key" =~ ^(AMQP|MYSQL|REDIS|DIST|EPMD|CTL)_PORT(_MIN|_MAX)?$ ]] ||
            ! [[ "$value" =~ ^[0-9]+$ ]]; then
            die "$STATE/ports: bad line '$key=$value'"
        fi
        printf -v "$key" '%s' "$value"
    done <"$STATE/ports"
}

warn_ignored_port_settings() {
    local base=${IM_PORT_BASE:-}
    if [[ "$base" =~ ^[0-9]+$ && "$base" != "$AMQP_PORT" ]] ||
        [ "${IM_AMQP_PORT:-$AMQP_PORT}" != "$AMQP_PORT" ] ||
        [ "${IM_MYSQL_PORT:-$MYSQL_PORT}" != "$MYSQL_PORT" ] ||
        [ "${IM_REDIS_PORT:-$REDIS_PORT}" != "$REDIS_PORT" ]; then
        log "warning: ports were fixed at the first up ($STATE/ports); ignoring the" \
            "IM_*PORT* settings. Delete $STATE to change them."
    fi
}

# Everything below needs the ports; this derives the paths and per-server settings.
init_layout() {
    NODE=im$AMQP_PORT@localhost
    RMQ=$STATE/rabbitmq
    MDB=$STATE/mariadb
    RDS=$STATE/redis
    MYSQL_SOCKET=$MDB/mysqld.sock
    # sun_path holds 108 bytes: a deep build directory would make the socket unusable.
    if [ "${#MYSQL_SOCKET}" -ge 100 ]; then
        MYSQL_SOCKET=${TMPDIR:-/tmp}/im-mysqld-$(printf %s "$STATE" | cksum | cut -d' ' -f1).sock
    fi
    # The server and rabbitmqctl must agree on HOME (the Erlang cookie), the node name and
    # the epmd port; the RABBITMQ_* paths keep everything out of /var/lib/rabbitmq and away
    # from /etc/rabbitmq/rabbitmq-env.conf.  Erlang distribution listens on loopback only.
    RABBIT_ENV=(
        HOME="$RMQ/home"
        ERL_EPMD_PORT="$EPMD_PORT"
        RABBITMQ_NODENAME="$NODE"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$AMQP_PORT"
        RABBITMQ_DIST_PORT="$DIST_PORT"
        RABBITMQ_CTL_DIST_PORT_MIN="$CTL_PORT_MIN"
        RABBITMQ_CTL_DIST_PORT_MAX="$CTL_PORT_MAX"
        RABBITMQ_CONF_ENV_FILE="$RMQ/rabbitmq-env.conf"
        RABBITMQ_CONFIG_FILE="$RMQ/rabbitmq"
        RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ/enabled_plugins"
        RABBITMQ_MNESIA_BASE="$RMQ/mnesia"
        RABBITMQ_LOG_BASE="$RMQ/log"
        RABBITMQ_PID_FILE="$RMQ/beam.pid"
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
        "RABBITMQ_CTL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
    )
}

# ---------------------------------------------------------------------------- processes

pidfile() { echo "$STATE/$1.pid"; }

# A zombie counts as gone: PID 1 here reaps orphans lazily, so a dead child can linger.
alive() {
    local state
    state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

ours() { alive "$1" && grep -qzxF "$MARKER" "/proc/$1/environ" 2>/dev/null; }

# Prints the recorded pid of a running service.  A PID file whose process is gone (or is
# now someone else's) is stale: it is removed and the service counts as stopped.
running_pid() {
    local file pid
    file=$(pidfile "$1")
    [ -f "$file" ] || return 1
    pid=$(<"$file")
    if [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid"; then
        echo "$pid"
        return 0
    fi
    log "$1: removing stale PID file (pid ${pid:-?} is gone)" >&2
    rm -f "$file"
    return 1
}

# Starts a server in its own session (so a terminal's Ctrl-C or hangup does not reach it)
# with all output in its log.  Closing fd 9 keeps the state-dir lock from leaking into it.
# A background job of a non-interactive shell is no process-group leader, so setsid does
# not fork and $! is the server itself.
spawn() {
    local name=$1 logfile=$2
    shift 2
    env "$MARKER" setsid "$@" </dev/null >"$logfile" 2>&1 9>&- &
    echo $! >"$(pidfile "$name")"
}

# Polls `check` until it succeeds; fails with the log tail when the process dies or the
# timeout passes.
wait_ready() {
    local name=$1 pid=$2 logfile=$3 deadline
    shift 3
    deadline=$(($(now_ms) + TIMEOUT * 1000))
    until "$@" >/dev/null 2>&1; do
        if ! alive "$pid"; then
            tail -n 30 "$logfile" >&2 || true
            die "$name exited during startup (log: $logfile)"
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            tail -n 30 "$logfile" >&2 || true
            die "$name not ready after ${TIMEOUT}s (log: $logfile); 'infra.sh down' stops it"
        fi
        sleep 0.05
    done
}

# The pid and all its descendants, so helpers (erl_child_setup, inet_gethost) are waited
# for too.
process_tree() {
    ps -eo pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END {
            tree[root] = 1; print root
            do {
                grew = 0
                for (p in parent)
                    if (!(p in tree) && (parent[p] in tree)) { tree[p] = 1; print p; grew = 1 }
            } while (grew)
        }'
}

# True when every pid is gone within $1 seconds.
wait_gone() {
    local seconds=$1 deadline pid
    shift
    deadline=$(($(now_ms) + seconds * 1000))
    for pid in "$@"; do
        while alive "$pid"; do
            [ "$(now_ms)" -lt "$deadline" ] || return 1
            sleep 0.05
        done
    done
}

# Stops a service and every process under it: the graceful command (default: TERM the
# pid) with `grace` seconds to work, then TERM to all, then KILL.
stop_service() {
    local name=$1 grace=$2 pid pids
    shift 2
    pid=$(running_pid "$name") || return 0
    mapfile -t pids < <(process_tree "$pid")
    if [ $# -eq 0 ]; then
        kill -TERM "$pid" 2>/dev/null || true
    elif ! "$@" >>"$STATE/down.log" 2>&1; then
        log "$name: '$*' failed (see $STATE/down.log)"
        grace=0
    fi
    if ! wait_gone "$grace" "${pids[@]}"; then
        log "$name: sending TERM to ${pids[*]}"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        if ! wait_gone 10 "${pids[@]}"; then
            log "$name: sending KILL to ${pids[*]}"
            kill -KILL "${pids[@]}" 2>/dev/null || true
            wait_gone 5 "${pids[@]}" || die "$name: pids ${pids[*]} survived KILL"
        fi
    fi
    rm -f "$(pidfile "$name")"
    log "$name: stopped (pid $pid)"
}

# Processes carrying this state dir's marker: anything `down` failed to stop.
leftover_pids() {
    local file pid
    grep -lzxF "$MARKER" /proc/[0-9]*/environ 2>/dev/null | while read -r file; do
        pid=${file#/proc/}
        pid=${pid%/environ}
        if alive "$pid"; then echo "$pid"; fi
    done
}

# ---------------------------------------------------------------------------- servers

require_port_free() {
    port_listening "$2" && die "$1: port $2 is already in use by another process" \
        "(ss -ltnp 'sport = :$2'); delete $STATE to pick other ports"
    return 0
}

start_epmd() {
    require_port_free epmd "$EPMD_PORT"
    spawn epmd "$STATE/epmd.log" "$EPMD" -port "$EPMD_PORT" -address 127.0.0.1
}

wait_epmd() {
    wait_ready epmd "$(<"$(pidfile epmd)")" "$STATE/epmd.log" \
        env ERL_EPMD_PORT="$EPMD_PORT" "$EPMD" -names
}

start_rabbitmq() {
    require_port_free rabbitmq "$AMQP_PORT"
    require_port_free rabbitmq "$DIST_PORT"
    # Missing directories make the boot fail (failed_to_create_feature_flags_file_directory).
    mkdir -p "$RMQ/home" "$RMQ/mnesia" "$RMQ/log"
    : >"$RMQ/rabbitmq-env.conf"
    [ -f "$RMQ/enabled_plugins" ] || echo '[].' >"$RMQ/enabled_plugins"
    # The broker creates this user (instead of guest, which only logs in over loopback) when
    # it boots on an empty database, as the Docker image does from RABBITMQ_DEFAULT_USER.
    # That saves three rabbitmqctl runs (~1.4 s) per cold start.
    cat >"$RMQ/rabbitmq.conf" <<EOF
default_user = $IM_USER
default_pass = $IM_PASSWORD
default_vhost = $IM_VHOST
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
# Classic queues v2, and persistent messages up to 1 MiB (logic's ChatBatches) kept in the
# queue's own store instead of the node's shared message store.  The shared store rolls its
# file every 16 MiB and collects the old one: at 20,000 msgs/s that was every ~4 s, each time
# a second of p99 send->ack at 50-180 ms; the queue's own store drops segments as they are
# acked.  Same-run A/B at 20,000 msgs/s: p99 26-31 ms against 48-101 ms.
classic_queue.default_version = 2
queue_index_embed_msgs_below = 1048576
EOF
    # The recorded pid is the rabbitmq-server wrapper shell; beam.smp is its child and is
    # covered by process_tree when stopping.
    spawn rabbitmq "$RMQ/stdout.log" env "${RABBIT_ENV[@]}" "$RABBIT_BIN/rabbitmq-server"
}

# rabbitmq-server prints this once the listeners are up and the boot steps have run.
rabbitmq_booted() { grep -q 'Starting broker\.\.\. completed' "$RMQ/stdout.log"; }

rabbitmqctl() { env "${RABBIT_ENV[@]}" timeout 60 "$RABBIT_BIN/rabbitmqctl" -q "$@"; }

wait_rabbitmq() {
    wait_ready rabbitmq "$(<"$(pidfile rabbitmq)")" "$RMQ/stdout.log" rabbitmq_booted
}

mysql_root() {
    mariadb --no-defaults --socket="$MYSQL_SOCKET" -uroot --batch --skip-column-names "$@"
}

start_mariadb() {
    require_port_free mariadb "$MYSQL_PORT"
    mkdir -p "$MDB"
    # An interrupted initialisation leaves a data dir that will not boot: redo it.
    if [ ! -f "$MDB/initialized" ]; then
        rm -rf "$MDB/data"
        mariadb-install-db --no-defaults --datadir="$MDB/data" --user=root \
            --auth-root-authentication-method=normal --skip-test-db >"$MDB/install.log" 2>&1 ||
            {
                tail -n 30 "$MDB/install.log" >&2
                die "mariadb-install-db failed (log: $MDB/install.log)"
            }
        touch "$MDB/initialized"
    fi
    # skip-name-resolve: connections match 'im'@'127.0.0.1' (TCP) or 'im'@'localhost'
    # (socket) without a reverse DNS lookup per connect.
    # The InnoDB defaults (128 MiB buffer pool, 96 MiB redo log) make MariaDB flush
    # and fsync pages constantly once the messages table outgrows the pool;
    # IM_MARIADB_OPTS replaces these sizes (durability settings stay the defaults:
    # every commit is on disk).
    # shellcheck disable=SC2086
    spawn mariadb "$MDB/mariadbd.log" mariadbd --no-defaults --datadir="$MDB/data" \
        --socket="$MYSQL_SOCKET" --port="$MYSQL_PORT" --bind-address=127.0.0.1 --user=root \
        --skip-name-resolve \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
        ${IM_MARIADB_OPTS---innodb-buffer-pool-size=1G --innodb-log-file-size=512M}
}

wait_mariadb() {
    wait_ready mariadb "$(<"$(pidfile mariadb)")" "$MDB/mariadbd.log" \
        mariadb-admin --no-defaults --socket="$MYSQL_SOCKET" -uroot ping
}

setup_mariadb_db() {
    local host
    mysql_root -e "CREATE DATABASE IF NOT EXISTS \`$IM_DB\`
                       CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    for host in 127.0.0.1 localhost; do
        mysql_root -e "CREATE USER IF NOT EXISTS '$IM_USER'@'$host' IDENTIFIED BY '$IM_PASSWORD';
                       GRANT ALL PRIVILEGES ON \`$IM_DB\`.* TO '$IM_USER'@'$host'"
    done
}

# Applies sql/migrations/NNN_name.sql in order, each once.  Every migration records itself
# as its last statement (INSERT INTO schema_migrations), so the same files give the same
# ledger when Docker's entrypoint runs them; here we only check that it did.
apply_migrations() {
    local applied=" " file base version seen=" " count=0
    # 001 creates the ledger, so before it there is none.
    if [ "$(mysql_root -e "SELECT COUNT(*) FROM information_schema.tables
            WHERE table_schema = '$IM_DB' AND table_name = 'schema_migrations'")" = 1 ]; then
        applied=" $(mysql_root "$IM_DB" -e "SELECT version FROM schema_migrations" |
            tr '\n' ' ') "
    fi
    for file in "$MIGRATIONS"/*.sql; do
        [ -e "$file" ] || continue
        base=$(basename "$file")
        [[ "$base" =~ ^([0-9]{3})_[a-z0-9_]+\.sql$ ]] ||
            die "migration file name '$base' is not NNN_name.sql"
        version=$((10#${BASH_REMATCH[1]}))
        [[ "$seen" == *" $version "* ]] && die "two migrations have version $version"
        seen+="$version "
        [[ "$applied" == *" $version "* ]] && continue
        mysql_root "$IM_DB" <"$file" ||
            die "migration $base failed; it may be half-applied (MySQL DDL is not" \
                "transactional): repair by hand or delete $STATE"
        [ "$(mysql_root "$IM_DB" -e "SELECT COUNT(*) FROM schema_migrations
                WHERE version = $version")" = 1 ] ||
            die "migration $base did not record itself; end it with" \
                "INSERT INTO schema_migrations (version, name) VALUES ($version, '...');"
        log "mariadb: applied migration $base"
        count=$((count + 1))
    done
    [ "$count" -gt 0 ] || log "mariadb: migrations up to date"
}

start_redis() {
    local persistence=(--save '' --appendonly no)
    require_port_free redis "$REDIS_PORT"
    mkdir -p "$RDS"
    [ "${IM_REDIS_AOF:-0}" = 1 ] && persistence=(--save '' --appendonly yes --appendfsync everysec)
    # No process title: rewriting it clobbers /proc/<pid>/environ, where ours() looks.
    spawn redis "$RDS/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --dir "$RDS" --daemonize no --set-proc-title no "${persistence[@]}"
}

wait_redis() {
    wait_ready redis "$(<"$(pidfile redis)")" "$RDS/redis.log" redis_pong
}

redis_pong() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping)" = PONG ]; }

# ---------------------------------------------------------------------------- commands

write_env() {
    cat >"$STATE/env.tmp" <<EOF
IM_AMQP_HOST=127.0.0.1
IM_AMQP_PORT=$AMQP_PORT
IM_AMQP_USER=$IM_USER
IM_AMQP_PASSWORD=$IM_PASSWORD
IM_AMQP_VHOST=$IM_VHOST
IM_MYSQL_HOST=127.0.0.1
IM_MYSQL_PORT=$MYSQL_PORT
IM_MYSQL_USER=$IM_USER
IM_MYSQL_PASSWORD=$IM_PASSWORD
IM_MYSQL_DB=$IM_DB
IM_MYSQL_SOCKET=$MYSQL_SOCKET
IM_REDIS_HOST=127.0.0.1
IM_REDIS_PORT=$REDIS_PORT
EOF
    mv "$STATE/env.tmp" "$STATE/env"
}

# One `up` or `down` at a time per state dir.
lock_state() {
    exec 9>>"$STATE/lock"
    flock -w 120 9 || die "another infra.sh holds $STATE/lock"
}

# Waits for a server this `up` started; one that was already running needs no wait.
wait_started() {
    [[ " ${STARTED[*]} " == *" $1 "* ]] || return 0
    "wait_$1"
    log "$1: started (pid $(<"$(pidfile "$1")"))"
}

cmd_up() {
    local t0 svc
    t0=$(now_ms)
    mkdir -p "$STATE"
    lock_state
    if load_ports; then
        warn_ignored_port_settings
    else
        assign_ports
    fi
    init_layout

    STARTED=()
    for svc in "${SERVICES[@]}"; do
        running_pid "$svc" >/dev/null && continue
        "start_$svc"
        STARTED+=("$svc")
        # RabbitMQ must find our epmd rather than start one of its own.
        [ "$svc" = epmd ] && wait_started epmd
    done
    [ "${#STARTED[@]}" -gt 0 ] || log "already up: all servers were running"

    # Everything was started before any wait: the database is set up while RabbitMQ, which
    # takes seconds where the others take a fraction of one, is still booting.
    wait_started mariadb
    setup_mariadb_db
    apply_migrations
    wait_started redis
    wait_started rabbitmq
    write_env
    cat "$STATE/env"
    log "up in $(($(now_ms) - t0)) ms (state $STATE)"
}

cmd_down() {
    local leftovers
    [ -d "$STATE" ] || {
        log "nothing to stop ($STATE does not exist)"
        return 0
    }
    lock_state
    load_ports || {
        log "nothing to stop (no ports recorded in $STATE)"
        return 0
    }
    init_layout
    rm -f "$STATE/env"
    stop_service rabbitmq 30 rabbitmqctl stop
    stop_service mariadb 60
    stop_service redis 10
    # epmd refuses -kill while a node is registered; RabbitMQ is gone by now.
    stop_service epmd 5 env ERL_EPMD_PORT="$EPMD_PORT" "$EPMD" -kill

    # Anything a server spawned while stopping escaped the snapshot of its process tree;
    # it carries our marker, so these pids are ours to stop.
    mapfile -t leftovers < <(leftover_pids)
    if [ "${#leftovers[@]}" -gt 0 ]; then
        log "stopping stray processes of $STATE: ${leftovers[*]}"
        kill -TERM "${leftovers[@]}" 2>/dev/null || true
        wait_gone 10 "${leftovers[@]}" || kill -KILL "${leftovers[@]}" 2>/dev/null || true
        wait_gone 5 "${leftovers[@]}" || die "pids ${leftovers[*]} of $STATE survived KILL"
    fi
    log "down: no process of $STATE left"
}

# Stops one server and leaves the others running: fault-injection tests take a
# server away this way and bring it back with `up`, which starts what is missing.
cmd_stop() {
    local svc=${1:-}
    case $svc in
    rabbitmq | mariadb | redis) ;;
    *) die "stop needs one of: rabbitmq mariadb redis" ;;
    esac
    lock_state
    load_ports || die "nothing set up in $STATE"
    init_layout
    case $svc in
    rabbitmq) stop_service rabbitmq 30 rabbitmqctl stop ;;
    mariadb) stop_service mariadb 60 ;;
    redis) stop_service redis 10 ;;
    esac
    log "stopped $svc"
}

cmd_status() {
    local svc pid all=0 port
    if [ ! -d "$STATE" ] || ! load_ports; then
        log "not set up ($STATE)"
        return 3
    fi
    init_layout
    for svc in "${SERVICES[@]}"; do
        case $svc in
        epmd) port=$EPMD_PORT ;;
        rabbitmq) port=$AMQP_PORT ;;
        mariadb) port=$MYSQL_PORT ;;
        redis) port=$REDIS_PORT ;;
        esac
        if pid=$(running_pid "$svc"); then
            printf '%-9s running  pid %-7s port %s\n' "$svc" "$pid" "$port"
        else
            printf '%-9s stopped\n' "$svc"
            all=3
        fi
    done
    return "$all"
}

cmd_env() {
    [ -f "$STATE/env" ] || die "no $STATE/env: run 'infra.sh up' first"
    cat "$STATE/env"
}

case ${1:-} in
up) cmd_up ;;
down) cmd_down ;;
stop) cmd_stop "${2:-}" ;;
status) cmd_status ;;
env) cmd_env ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
