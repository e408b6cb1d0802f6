/*
 * benchmark - the WebSocket load tool: many client connections from one event
 * loop, speaking the client protocol to one or more gateways, measuring
 * connect, send->ack and send->deliver latency, throughput, errors, memory
 * per connection and delivery correctness (loss, duplicates, order).
 *
 *   ./build/benchmark/benchmark -c 500 -d 30s                 # pairs chatting
 *   ./build/benchmark/benchmark -m group --group-size 100 -c 1000 -r 2
 *   ./build/benchmark/benchmark -m idle -c 19000 --ramp 20s    # memory per connection
 *   ./build/benchmark/benchmark -m connect -c 200 -d 20s       # connect storm
 *   ./build/benchmark/benchmark -m db -c 100 -r 0 -d 20s       # dbreport + writer drain
 *
 * Phases: set-up (users and groups over REST), connect (with --ramp), load
 * (-d), drain (no new sends; wait --drain for the last acks and
 * deliveries), close.  See bm_ws.h for the module map.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "bm_sys.h"
#include "bm_ws.h"
#include "im_alloc.h"
#include "im_config.h"
#include "im_jwt.h"
#include "im_time.h"

bm_state_t B;

#define OPT(name, sh, type, field, def, min, max, help)                                            \
    {                                                                                              \
        name, sh, type, offsetof(bm_cfg_t, field), def, min, max, help                             \
    }
static const im_cfg_opt_t opts[] = {
    OPT("connections", 'c', IM_CFG_INT, connections, "100", 1, 10000000,
        "client connections (each its own user)"),
    OPT("duration", 'd', IM_CFG_DURATION, duration_ms, "10s", 100, 86400000,
        "length of the load phase (after everyone is connected)"),
    OPT("gateways", 'g', IM_CFG_STR, gateways, "127.0.0.1:8080", 0, 0,
        "gateway address(es) host:port, comma-separated; clients are spread round-robin"),
    OPT("mode", 'm', IM_CFG_STR, mode, "direct", 0, 0,
        "direct (pairs chatting), group, connect (connect storm), idle (hold connections), db "
        "(dbreport + the writer's drain rate under a direct load)"),
    OPT("group-size", 0, IM_CFG_INT, group_size, "100", 2, 1000000,
        "group mode: members per group (the connections are cut into groups of this size)"),
    OPT("senders", 0, IM_CFG_INT, senders, "1", 0, 1000000,
        "group mode: members of each group that send (0: all)"),
    OPT("rate", 'r', IM_CFG_INT, rate, "1", 0, 100000,
        "messages per second per sending client (0: closed loop, keep --inflight unacked)"),
    OPT("inflight", 0, IM_CFG_INT, inflight, "16", 1, 100000,
        "unacked messages per client at most (sends due beyond it are skipped and counted)"),
    OPT("size", 's', IM_CFG_SIZE, size, "100", 0, 60000,
        "message body bytes (at least the ~40-byte header: number, sender, send time)"),
    OPT("ramp", 0, IM_CFG_DURATION, ramp_ms, "0", 0, 3600000,
        "spread the connects evenly over this long"),
    OPT("source", 0, IM_CFG_STR, sources, "", 0, 0,
        "source addresses to bind, comma-separated, ranges allowed (127.0.1.1-127.0.1.8): each "
        "gives ~28k more ports per gateway"),
    OPT("json", 0, IM_CFG_BOOL, json, "false", 0, 0, "print the results as one JSON object"),
    OPT("json-file", 0, IM_CFG_STR, json_file, "", 0, 0,
        "also write the JSON results to this file (the text summary stays on stdout)"),
    OPT("csv", 0, IM_CFG_STR, csv, "", 0, 0,
        "write the per-second series to this CSV file (scripts/bench-plot.sh draws it)"),
    OPT("auth", 0, IM_CFG_STR, auth, "auto", 0, 0,
        "rest (register + login every user), mint (sign tokens with the secret; direct/db "
        "modes still register), auto (mint when a secret is found)"),
    OPT("jwt-secret", 0, IM_CFG_STR, jwt_secret, "", 0, 0,
        "the gateways' token secret (else IM_JWT_SECRET, else <state-dir>/jwt-secret)"),
    OPT("state-dir", 0, IM_CFG_STR, state_dir, "", 0, 0,
        "scripts/up.sh's state directory (\"\": IM_STATE_DIR, else .run): jwt-secret, pid "
        "files of the processes to watch, MariaDB settings for db mode"),
    OPT("users-file", 0, IM_CFG_STR, users_file, "", 0, 0,
        "registered users (\"id name\" lines) to reuse; newly registered ones are appended"),
    OPT("gateway-pid", 0, IM_CFG_STR, gateway_pids, "", 0, 0,
        "gateway pid(s), comma-separated, for RSS per connection (default: "
        "<state-dir>/gateway*.pid)"),
    OPT("watch", 0, IM_CFG_STR, watch, "", 0, 0,
        "more pids whose CPU use is reported, comma-separated"),
    OPT("connect-timeout", 0, IM_CFG_DURATION, connect_timeout_ms, "10s", 1, 600000,
        "connect + upgrade + ready must take less"),
    OPT("ack-timeout", 0, IM_CFG_DURATION, ack_timeout_ms, "10s", 100, 600000,
        "a send without ack or error for this long counts as ack_timeout"),
    OPT("drain", 0, IM_CFG_DURATION, drain_ms, "5s", 0, 600000,
        "after the load, wait at most this long for acks and deliveries before judging loss"),
    OPT("setup-threads", 0, IM_CFG_INT, setup_threads, "8", 1, 64,
        "parallel REST calls during set-up"),
    OPT("dbreport", 0, IM_CFG_STR, dbreport, "", 0, 0,
        "db mode: the dbreport binary (\"\": next to this one)"),
    OPT("db-rows", 0, IM_CFG_INT, db_rows, "20000", 1, 10000000, "db mode: rows per dbreport mode"),
    OPT("tag", 0, IM_CFG_STR, tag, "", 0, 0,
        "run tag in user and group names, 6 hex digits (\"\": random)"),
    OPT("progress", 0, IM_CFG_BOOL, progress, "true", 0, 0,
        "one progress line per second on stderr"),
};
static const im_cfg_spec_t spec = {
    "benchmark",
    "WebSocket load tool for the imserver gateways: connections, messages, latency, "
    "correctness, memory.",
    "IM_BM", opts, sizeof(opts) / sizeof(opts[0])};

const char *bm__mode_name(bm_mode_t m)
{
    static const char *const names[] = {"direct", "group", "connect", "idle", "db"};

    return names[m];
}

static void on_signal(int sig)
{
    (void)sig;
    B.stop = 1;
}

/* ------------------------------------------------------------ addresses */

static int parse_gateways(void)
{
    char *list = im_strdup(B.cfg.gateways), *save = NULL;
    size_t cap = 0;

    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
        char *colon = strrchr(t, ':');

        if (colon == NULL) {
            fprintf(stderr, "benchmark: --gateways: expected host:port, got \"%s\"\n", t);
            im_free(list);
            return -1;
        }
        *colon = '\0';
        if (getaddrinfo(t, colon + 1, &hints, &ai) != 0) {
            fprintf(stderr, "benchmark: --gateways: cannot resolve %s:%s\n", t, colon + 1);
            im_free(list);
            return -1;
        }
        if (B.ngw == cap) {
            cap = cap ? cap * 2 : 4;
            B.gw = im_realloc(B.gw, cap * sizeof(*B.gw));
            B.gw_host = im_realloc(B.gw_host, cap * sizeof(*B.gw_host));
        }
        memcpy(&B.gw[B.ngw], ai->ai_addr, sizeof(B.gw[0]));
        freeaddrinfo(ai);
        *colon = ':';
        B.gw_host[B.ngw++] = im_strdup(t);
    }
    im_free(list);
    if (B.ngw == 0) {
        fprintf(stderr, "benchmark: --gateways is empty\n");
        return -1;
    }
    return 0;
}

static int parse_sources(void)
{
    char *list = im_strdup(B.cfg.sources), *save = NULL;
    size_t cap = 0;

    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *dash = strchr(t, '-');
        struct in_addr lo, hi;

        if (dash)
            *dash = '\0';
        if (inet_pton(AF_INET, t, &lo) != 1 || (dash && inet_pton(AF_INET, dash + 1, &hi) != 1)) {
            fprintf(stderr, "benchmark: --source: bad IPv4 address in \"%s\"\n", B.cfg.sources);
            im_free(list);
            return -1;
        }
        if (!dash)
            hi = lo;
        for (uint32_t a = ntohl(lo.s_addr); a <= ntohl(hi.s_addr) && B.nsrc < 65535; a++) {
            if (B.nsrc == cap) {
                cap = cap ? cap * 2 : 8;
                B.src = im_realloc(B.src, cap * sizeof(*B.src));
            }
            memset(&B.src[B.nsrc], 0, sizeof(B.src[0]));
            B.src[B.nsrc].sin_family = AF_INET;
            B.src[B.nsrc].sin_addr.s_addr = htonl(a);
            B.nsrc++;
            if (a == UINT32_MAX)
                break;
        }
    }
    im_free(list);
    return 0;
}

/* ------------------------------------------------------------ watched processes */

static void watch_add(pid_t pid, const char *name, int gateway)
{
    char comm[32];

    if (pid <= 0 || B.nwatch == BM_WATCH_MAX || bm_sys_comm(pid, comm, sizeof(comm))[0] == '\0')
        return;
    for (size_t i = 0; i < B.nwatch; i++) {
        if (B.watch[i].pid == pid) {
            B.watch[i].gateway |= gateway;
            return;
        }
    }
    snprintf(B.watch[B.nwatch].name, sizeof(B.watch[0].name), "%s", name ? name : comm);
    B.watch[B.nwatch].pid = pid;
    B.watch[B.nwatch].gateway = gateway;
    B.nwatch++;
}

static pid_t pid_file(const char *dir, const char *name)
{
    char path[4096];
    FILE *f;
    int pid = 0;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if ((f = fopen(path, "r")) == NULL)
        return 0;
    if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
    fclose(f);
    return pid;
}

static void watch_list(const char *list, int gateway)
{
    char *copy = im_strdup(list), *save = NULL;

    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
        watch_add((pid_t)atoi(t), NULL, gateway);
    im_free(copy);
}

/* A gateway running --workers: its workers hold the connections. */
static void watch_workers(void)
{
    size_t n = B.nwatch;

    for (size_t i = 0; i < n; i++) {
        char path[64], name[32];
        FILE *f;
        int pid, k = 0;

        if (!B.watch[i].gateway)
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)B.watch[i].pid,
                 (int)B.watch[i].pid);
        if ((f = fopen(path, "r")) == NULL)
            continue;
        while (fscanf(f, "%d", &pid) == 1) {
            snprintf(name, sizeof(name), "%.16s-w%d", B.watch[i].name, k++ % 1000);
            watch_add((pid_t)pid, name, 1);
        }
        fclose(f);
    }
}

static void setup_watch(void)
{
    static const struct {
        const char *file, *name;
    } infra[] = {{"logic.pid", "logic"},
                 {"redis.pid", "redis"},
                 {"mariadb.pid", "mariadb"},
                 {"rabbitmq/beam.pid", "rabbitmq"}};
    int explicit_gw = B.cfg.gateway_pids && *B.cfg.gateway_pids;
    char name[32];

    if (explicit_gw)
        watch_list(B.cfg.gateway_pids, 1);
    for (int g = 0; g < 16; g++) {
        char file[32];
        snprintf(file, sizeof(file), g ? "gateway-%d.pid" : "gateway.pid", g);
        snprintf(name, sizeof(name), g ? "gateway-%d" : "gateway", g);
        watch_add(pid_file(B.cfg.state_dir, file), name, !explicit_gw);
    }
    watch_workers();
    for (size_t i = 0; i < sizeof(infra) / sizeof(infra[0]); i++)
        watch_add(pid_file(B.cfg.state_dir, infra[i].file), infra[i].name, 0);
    if (B.cfg.watch && *B.cfg.watch)
        watch_list(B.cfg.watch, 0);
}

static void sample_rss(int which)
{
    uint64_t self = bm_sys_rss(0), avail = bm_sys_mem_available();

    if (which == 0) {
        B.self_rss0 = self;
        B.avail0 = avail;
        B.tcpmem0 = bm_sys_tcp_mem();
    } else if (which == 1) {
        B.self_rss1 = self;
        B.avail1 = avail;
        B.tcpmem1 = bm_sys_tcp_mem();
    }
    for (size_t i = 0; i < B.nwatch; i++) {
        uint64_t r = bm_sys_rss(B.watch[i].pid);
        if (which == 0)
            B.watch[i].rss0 = r;
        else if (which == 1)
            B.watch[i].rss1 = r;
        else
            B.watch[i].rss2 = r;
    }
}

static void sample_cpu(int end)
{
    if (end) {
        B.self_cpu1 = bm_sys_cpu_ns(0);
        bm_sys_machine_cpu(&B.mach_busy1, &B.mach_total1);
        B.load1 = bm_sys_loadavg();
    } else {
        B.self_cpu0 = bm_sys_cpu_ns(0);
        bm_sys_machine_cpu(&B.mach_busy0, &B.mach_total0);
        B.load0 = bm_sys_loadavg();
    }
    for (size_t i = 0; i < B.nwatch; i++) {
        uint64_t c = bm_sys_cpu_ns(B.watch[i].pid);
        if (end)
            B.watch[i].cpu1 = c;
        else
            B.watch[i].cpu0 = c;
    }
}

/* ------------------------------------------------------------ phases */

/* Clients still on their way to ready (or to giving up). */
static size_t unsettled(void)
{
    size_t n = 0;

    for (size_t i = 0; i < B.n; i++) {
        uint8_t s = B.clients[i].state;
        n += s == CL_WAIT || s == CL_CONNECTING || s == CL_UPGRADED || s == CL_TIMEDOUT;
    }
    return n;
}

static size_t open_count(void)
{
    size_t n = 0;

    for (size_t i = 0; i < B.n; i++)
        n += B.clients[i].ws.fd >= 0;
    return n;
}

static void run_until(uint64_t deadline_ms, int (*done)(void))
{
    uint64_t next_check = 0;

    while (!B.stop && im_mono_ms() < deadline_ms) {
        uint64_t now;
        int left = (int)(deadline_ms - im_mono_ms());

        bm_loop_once(B.loop, left < 50 ? (left > 0 ? left : 0) : 50);
        now = im_mono_ms();
        if (done && now >= next_check) { /* the checks scan every client: 10 per second */
            next_check = now + 100;
            if (done())
                break;
        }
    }
}

static int all_settled(void)
{
    return unsettled() == 0;
}

static int drained(void)
{
    if (B.mode == BM_CONNECT)
        return unsettled() == 0;
    if (bm__client_pending() != 0)
        return 0;
    return B.mode != BM_DB || bm__db_stored() >= B.acked;
}

static int all_closed(void)
{
    return open_count() == 0;
}

static void assign_roles(void)
{
    for (size_t i = 0; i < B.n; i++) {
        bm_client_t *c = &B.clients[i];

        bm__client_init(c, (uint32_t)i);
        if (B.mode == BM_GROUP) {
            uint64_t pos = i % (uint64_t)B.cfg.group_size;
            c->peer = (uint32_t)(i / (uint64_t)B.cfg.group_size);
            c->sender = B.cfg.senders == 0 || pos < (uint64_t)B.cfg.senders;
        } else if (B.mode == BM_DIRECT || B.mode == BM_DB) {
            c->peer = (uint32_t)(i ^ 1);
            c->sender = c->peer < B.n;
        } else {
            c->peer = UINT32_MAX;
        }
    }
}

static int parse_args(int argc, char **argv)
{
    char err[256];
    im_err_t rc = im_cfg_parse(&spec, &B.cfg, argc, argv, NULL, err, sizeof(err));

    if (rc == IM_EHELP) {
        im_cfg_usage(&spec, stdout);
        exit(0);
    }
    if (rc != IM_OK) {
        fprintf(stderr, "benchmark: %s\n", err);
        return -1;
    }
    for (int m = BM_DIRECT; m <= BM_DB; m++)
        if (strcmp(B.cfg.mode, bm__mode_name((bm_mode_t)m)) == 0)
            B.mode = (bm_mode_t)m;
    if (strcmp(B.cfg.mode, bm__mode_name(B.mode)) != 0) {
        fprintf(stderr, "benchmark: --mode must be direct, group, connect, idle or db\n");
        return -1;
    }
    if (!B.cfg.state_dir || !*B.cfg.state_dir) {
        const char *e = getenv("IM_STATE_DIR");
        B.cfg.state_dir = e && *e ? e : ".run";
    }
    if (B.cfg.tag && *B.cfg.tag) {
        if (strlen(B.cfg.tag) > 6 || strspn(B.cfg.tag, "0123456789abcdef") != strlen(B.cfg.tag)) {
            fprintf(stderr, "benchmark: --tag must be 1..6 lower-case hex digits\n");
            return -1;
        }
        snprintf(B.run_tag, sizeof(B.run_tag), "%s", B.cfg.tag);
    } else {
        uint32_t r = 0;
        if (getrandom(&r, sizeof(r), 0) != sizeof(r))
            r = (uint32_t)im_mono_ns();
        snprintf(B.run_tag, sizeof(B.run_tag), "%06x", r & 0xffffff);
    }
    if (B.mode == BM_GROUP && B.cfg.senders > B.cfg.group_size)
        B.cfg.senders = B.cfg.group_size;
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t need;
    size_t max_frame;
    int rc = 0;

    if (parse_args(argc, argv) != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    B.nofile = bm_sys_raise_nofile();
    need = (uint64_t)B.cfg.connections + 64;
    if (need > B.nofile) {
        fprintf(stderr,
                "benchmark: %" PRId64 " connections need ~%" PRIu64
                " file descriptors; this process may open %" PRIu64
                " (ulimit -Hn). Run several benchmark processes (and gateways) to hold more.\n",
                B.cfg.connections, need, B.nofile);
        return 2;
    }
    if (parse_gateways() != 0 || parse_sources() != 0)
        return 2;

    /* The benchmark's own baseline: before any per-client memory exists. */
    B.self_rss_base = bm_sys_rss(0);
    B.n = (size_t)B.cfg.connections;
    B.clients = im_calloc(B.n, sizeof(*B.clients));
    if (B.mode == BM_GROUP) {
        B.ngroups = (B.n + (size_t)B.cfg.group_size - 1) / (size_t)B.cfg.group_size;
        B.group_ids = im_calloc(B.ngroups, sizeof(*B.group_ids));
        B.group_ready = im_calloc(B.ngroups, sizeof(*B.group_ready));
    }
    assign_roles();
    setup_watch();
    bm_hist_reset(&B.h_connect);
    bm_hist_reset(&B.h_ready);
    bm_hist_reset(&B.h_ack);
    bm_hist_reset(&B.h_e2e);
    bm_hist_reset(&B.sec.ack);
    bm_hist_reset(&B.sec.e2e);
    bm_hist_reset(&B.sec.conn);

    if (B.cfg.progress)
        fprintf(stderr, "benchmark: mode %s, %zu connections to %s, run tag %s, state dir %s\n",
                bm__mode_name(B.mode), B.n, B.cfg.gateways, B.run_tag, B.cfg.state_dir);
    B.phase = BM_PH_SETUP;
    if (bm__setup() != 0)
        return 3;
    if (B.cfg.progress)
        fprintf(stderr, "benchmark: users: %s\n", B.auth_desc);
    if (B.mode == BM_DB && bm__db_report() != 0)
        fprintf(stderr, "benchmark: dbreport failed (exit %d):\n%s", B.dbreport_rc,
                B.dbreport_out ? B.dbreport_out : "");

    max_frame = (size_t)B.cfg.size * 6 + 4096;
    if (max_frame < 65536)
        max_frame = 65536;
    B.frame_cap = (size_t)B.cfg.size + 256;
    B.frame = im_malloc(B.frame_cap);
    B.loop = bm_loop_new(&bm__client_ops, NULL, max_frame);
    if (B.loop == NULL) {
        fprintf(stderr, "benchmark: epoll: %s\n", strerror(errno));
        return 1;
    }
    sample_rss(0);

    /* Connect (every mode but connect, whose storm is its load). */
    B.t_connect0 = im_mono_ns();
    if (B.mode != BM_CONNECT) {
        B.phase = BM_PH_CONNECT;
        for (size_t i = 0; i < B.n; i++)
            bm__client_start(&B.clients[i], (uint64_t)B.cfg.ramp_ms * i / B.n);
        run_until(im_mono_ms() + (uint64_t)B.cfg.ramp_ms + (uint64_t)B.cfg.connect_timeout_ms +
                      2000,
                  all_settled);
        if (B.ready_now == B.n)
            B.t_connected = im_mono_ns();
        if (B.cfg.progress)
            fprintf(stderr, "benchmark: %u of %zu connections ready in %.2fs\n", B.ready_now, B.n,
                    (double)(im_mono_ns() - B.t_connect0) / 1e9);
    }
    sample_rss(1);
    B.ready_at_rss1 = B.ready_now;

    /* Load. */
    if (B.mode == BM_DB && bm__db_start() != 0)
        fprintf(stderr, "benchmark: db mode: the writer's progress will not be measured\n");
    B.phase = BM_PH_LOAD;
    B.t_load0 = im_mono_ns();
    sample_cpu(0);
    bm__client_reset_second();
    im_timer_init(&B.tick, bm__tick_cb, NULL);
    im_wheel_add(bm_loop_wheel(B.loop), &B.tick, 1000);
    for (size_t i = 0; i < B.n; i++) {
        if (B.mode == BM_CONNECT)
            bm__client_start(&B.clients[i], (uint64_t)B.cfg.ramp_ms * i / B.n);
        else
            bm__client_load(&B.clients[i]);
    }
    run_until(im_mono_ms() + (uint64_t)B.cfg.duration_ms, NULL);
    B.t_load1 = im_mono_ns();
    B.win_sent = B.sent;
    B.win_acked = B.acked;
    B.win_delivered = B.delivered;
    sample_cpu(1);
    sample_rss(2);

    /* Drain: no new sends (or connects); wait for what is on its way. */
    B.phase = BM_PH_DRAIN;
    run_until(im_mono_ms() + (uint64_t)B.cfg.drain_ms, drained);
    B.t_drain1 = im_mono_ns();
    im_wheel_cancel(bm_loop_wheel(B.loop), &B.tick);
    bm__tick_cb(&B.tick, NULL); /* the last, partial second */

    /* Close everything with a close handshake. */
    B.phase = BM_PH_CLOSE;
    for (size_t i = 0; i < B.n; i++)
        bm__client_close(&B.clients[i]);
    B.stop = 0; /* a ^C ends the load, not the reporting */
    run_until(im_mono_ms() + 4000, all_closed);
    B.phase = BM_PH_DONE;
    bm__db_stop();

    bm__client_finish();
    if (B.cfg.json)
        rc = bm__report_json(stdout) != 0;
    else
        bm__report_text();
    if (B.cfg.json_file && *B.cfg.json_file) {
        FILE *f = fopen(B.cfg.json_file, "w");
        if (f == NULL || bm__report_json(f) != 0 || fclose(f) != 0) {
            fprintf(stderr, "benchmark: cannot write %s\n", B.cfg.json_file);
            rc = 1;
        }
    }
    if (B.cfg.csv && *B.cfg.csv && bm__report_csv(B.cfg.csv) != 0)
        rc = 1;
    if (B.lost || B.duplicates || B.order_violations || (B.readies == 0 && B.n > 0))
        rc = 1;

    for (size_t i = 0; i < B.n; i++)
        bm_ws_abort(B.loop, &B.clients[i].ws, 1);
    bm_loop_free(B.loop);
    for (size_t i = 0; B.tokens && i < B.n; i++)
        im_free(B.tokens[i]);
    im_free(B.tokens);
    for (size_t i = 0; i < B.ngw; i++)
        im_free(B.gw_host[i]);
    im_free(B.gw_host);
    im_free(B.gw);
    im_free(B.src);
    im_free(B.clients);
    im_free(B.group_ids);
    im_free(B.group_ready);
    im_free(B.msgs);
    im_free(B.rows);
    im_free(B.frame);
    im_free(B.dbreport_out);
    im_free(B.db);
    return rc;
}
