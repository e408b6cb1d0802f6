/*
 * bm_ws_report.c - the results of a run: a Go-style text summary on stdout,
 * the same as one JSON object (--json), and the per-second series as CSV
 * (--csv FILE; scripts/bench-plot.sh draws it).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bm_ws.h"
#include "im_alloc.h"
#include "im_json.h"

/* A duration in nanoseconds, Go style: 850us, 12.34ms, 1.203s. */
static const char *dur(uint64_t ns, char *buf, size_t cap)
{
    if (ns < 1000000)
        snprintf(buf, cap, "%.0fus", (double)ns / 1e3);
    else if (ns < 1000000000)
        snprintf(buf, cap, "%.2fms", (double)ns / 1e6);
    else
        snprintf(buf, cap, "%.3fs", (double)ns / 1e9);
    return buf;
}

static const char *mib(uint64_t bytes, char *buf, size_t cap)
{
    snprintf(buf, cap, "%.1f MiB", (double)bytes / (1024.0 * 1024.0));
    return buf;
}

static double load_s(void)
{
    return B.t_load1 > B.t_load0 ? (double)(B.t_load1 - B.t_load0) / 1e9 : 0.0;
}

static double per_s(uint64_t n)
{
    double s = load_s();
    return s > 0 ? (double)n / s : 0.0;
}

/* Bytes per connection between two RSS readings, or -1 when meaningless. */
static double per_conn(uint64_t before, uint64_t after)
{
    if (B.ready_at_rss1 == 0 || before == 0 || after == 0)
        return -1;
    return ((double)after - (double)before) / (double)B.ready_at_rss1;
}

static const char *mode_blurb(void)
{
    switch (B.mode) {
    case BM_DIRECT:
        return "direct (pairs of users chatting)";
    case BM_GROUP:
        return "group (members of groups, some of them sending to the group)";
    case BM_CONNECT:
        return "connect (connect storm: connect, wait for ready, close, again)";
    case BM_IDLE:
        return "idle (hold connections, answer pings)";
    default:
        return "db (dbreport, then pairs chatting while the writer's progress is polled)";
    }
}

static void print_hist_row(const char *name, const bm_hist_t *h)
{
    char a[6][24];

    if (h->count == 0) {
        printf("  %-15s %10s\n", name, "-");
        return;
    }
    printf("  %-15s %10s %10s %10s %10s %10s %10s %9" PRIu64 "\n", name,
           dur(bm_hist_pct(h, 50), a[0], 24), dur(bm_hist_pct(h, 90), a[1], 24),
           dur(bm_hist_pct(h, 99), a[2], 24), dur(bm_hist_pct(h, 99.9), a[3], 24),
           dur(h->max, a[4], 24), dur((uint64_t)bm_hist_mean(h), a[5], 24), h->count);
}

/* Most frequent first. */
static int cmp_kind(const void *a, const void *b)
{
    uint64_t ca = ((const bm_kind_t *)a)->count, cb = ((const bm_kind_t *)b)->count;

    return ca < cb ? 1 : ca > cb ? -1 : 0;
}

static void sort_kinds(bm_kinds_t *k)
{
    qsort(k->k, k->n, sizeof(k->k[0]), cmp_kind);
}

void bm__report_text(void)
{
    char a[4][32];
    double pc;
    uint64_t gw_rss0 = 0, gw_rss1 = 0;
    size_t n_gw = 0;

    sort_kinds(&B.errors);
    sort_kinds(&B.frames);
    printf("Summary:\n");
    printf("  Mode:          %s\n", mode_blurb());
    printf("  Gateways:      %s", B.cfg.gateways);
    if (B.nsrc)
        printf(" (from source addresses %s)", B.cfg.sources);
    printf("\n  Users:         %s (set-up %.1fs)\n", B.auth_desc, (double)B.setup_ms / 1e3);
    printf("  Connections:   %zu requested, %" PRIu64 " attempts, %" PRIu64 " upgraded, %" PRIu64
           " ready",
           B.n, B.connects, B.upgraded, B.readies);
    if (B.mode != BM_CONNECT)
        printf(", %u ready when the load began", B.ready_at_rss1);
    if (B.cfg.ramp_ms)
        printf(", ramp %.1fs", (double)B.cfg.ramp_ms / 1e3);
    if (B.t_connected > B.t_connect0 && B.mode != BM_CONNECT)
        printf(", all in %s", dur(B.t_connected - B.t_connect0, a[0], 32));
    printf("\n  Load:          %.2fs", load_s());
    if (B.t_drain1 > B.t_load1)
        printf(" (then %.2fs draining)", (double)(B.t_drain1 - B.t_load1) / 1e9);
    printf("\n");
    if (B.mode == BM_DIRECT || B.mode == BM_GROUP || B.mode == BM_DB) {
        printf("  Sending:       ");
        if (B.cfg.rate)
            printf("%" PRId64 " msg/s per sending client", B.cfg.rate);
        else
            printf("as fast as acks allow");
        printf(", at most %" PRId64 " unacked each, %" PRId64 "-byte bodies", B.cfg.inflight,
               B.cfg.size);
        if (B.mode == BM_GROUP)
            printf(", %zu group(s) of %" PRId64 ", %" PRId64 " sender(s) each", B.ngroups,
                   B.cfg.group_size, B.cfg.senders ? B.cfg.senders : B.cfg.group_size);
        printf("\n");
    }

    if (B.mode == BM_CONNECT) {
        printf("\nConnect storm:\n");
        printf("  cycles        %10" PRIu64 "  %10.1f/s  (connect, upgrade, ready, close)\n",
               B.cycles, per_s(B.cycles));
        printf("  clean closes  %10" PRIu64 "\n", B.closes_clean);
        if (B.t_first_wave)
            printf("  first wave    all %zu slots ready once after %s\n", B.n,
                   dur(B.t_first_wave - B.t_load0, a[0], 32));
    } else if (B.mode != BM_IDLE) {
        printf("\nMessages:        total   in the load window   rate in the window\n");
        printf("  sent          %10" PRIu64 "  %10" PRIu64 "  %16.1f/s\n", B.sent, B.win_sent,
               per_s(B.win_sent));
        printf("  acked         %10" PRIu64 "  %10" PRIu64 "  %16.1f/s\n", B.acked, B.win_acked,
               per_s(B.win_acked));
        printf("  delivered     %10" PRIu64 "  %10" PRIu64 "  %16.1f/s  (expected %" PRIu64
               " in total: recipients ready at send time)\n",
               B.delivered, B.win_delivered, per_s(B.win_delivered), B.expected_acked);
        printf("  refused       %10" PRIu64 "  (an error frame answered the send)\n", B.errored);
        if (B.skipped)
            printf("  not sent      %10" PRIu64 "  (the client's unacked window was full)\n",
                   B.skipped);
    }

    printf("\nLatency:               p50        p90        p99      p99.9        max       "
           "mean     count\n");
    print_hist_row("connect (101)", &B.h_connect);
    print_hist_row("ready", &B.h_ready);
    if (B.mode != BM_CONNECT && B.mode != BM_IDLE) {
        print_hist_row("send->ack", &B.h_ack);
        print_hist_row("send->deliver", &B.h_e2e);
    }

    if (B.mode != BM_CONNECT && B.mode != BM_IDLE) {
        printf("\nCorrectness (waiting up to %.1fs after the load for the last acks and "
               "deliveries):\n",
               (double)B.cfg.drain_ms / 1e3);
        printf("  lost              %" PRIu64 " deliveries (%" PRIu64
               " acked messages missing at least one recipient)\n",
               B.lost, B.lost_msgs);
        printf("  duplicates        %" PRIu64 " (deliveries beyond one per recipient)\n",
               B.duplicates);
        printf("  order violations  %" PRIu64 " (a delivery with a lower seq than one delivered"
               " before it in the same conversation",
               B.order_violations);
        if (B.order_violations)
            printf("; at most %" PRIu64 " seqs back", B.order_max_back);
        printf(")\n");
        printf("  unacked           %" PRIu64 " (neither ack nor error)", B.unacked);
        if (B.late_acks)
            printf(", %" PRIu64 " acked after the %.1fs ack timeout", B.late_acks,
                   (double)B.cfg.ack_timeout_ms / 1e3);
        printf("\n");
        if (B.delivered_unacked || B.delivered_errored || B.dup_acks || B.dup_flagged || B.foreign)
            printf("  also              %" PRIu64 " delivered but never acked, %" PRIu64
                   " delivered after an error, %" PRIu64 " repeated acks, %" PRIu64
                   " acks flagged duplicate, %" PRIu64 " msgs not from this run\n",
                   B.delivered_unacked, B.delivered_errored, B.dup_acks, B.dup_flagged, B.foreign);
    }

    printf("\nErrors: %" PRIu64 "\n", B.errors_total);
    for (size_t i = 0; i < B.errors.n; i++)
        printf("  %-28s %" PRIu64 "\n", B.errors.k[i].name, B.errors.k[i].count);
    if (B.errors.other)
        printf("  %-28s %" PRIu64 "\n", "(other kinds)", B.errors.other);

    printf("\nFrames received:");
    for (size_t i = 0; i < B.frames.n; i++)
        printf("%s %s %" PRIu64, i ? "," : "", B.frames.k[i].name, B.frames.k[i].count);
    {
        const bm_loop_stats_t *s = bm_loop_stats(B.loop);
        printf("\n  %" PRIu64 " bytes in, %" PRIu64 " bytes out, %" PRIu64
               " pings answered, %" PRIu64 " sends buffered (socket full)\n",
               s->bytes_in, s->bytes_out, s->pings, s->out_buffered);
        printf("  event loop: %" PRIu64 " iterations, longest %s of work, %" PRIu64
               " over 100ms%s\n",
               s->iterations, dur(s->max_busy_ns, a[0], 32), s->slow,
               s->max_busy_ns > 1000000000ull ? " (the benchmark itself stalled: its latencies "
                                                "and the server's pings suffered)"
                                              : "");
    }

    printf("\nMemory (RSS before connecting -> all connected, %u connections ready):\n",
           B.ready_at_rss1);
    /* From before the client array existed: the struct is part of the cost. */
    pc = per_conn(B.self_rss_base, B.self_rss1);
    printf("  %-22s %s -> %s", "benchmark (this)", mib(B.self_rss_base, a[0], 32),
           mib(B.self_rss1, a[1], 32));
    if (pc >= 0)
        printf(", %.0f bytes per connection", pc);
    printf(" (client struct %zu bytes; the rest is the loop's fixed buffers and heap)\n",
           sizeof(bm_client_t));
    for (size_t i = 0; i < B.nwatch; i++) {
        const bm_watch_t *w = &B.watch[i];
        char label[48];
        if (!w->gateway)
            continue;
        snprintf(label, sizeof(label), "%s %d", w->name, (int)w->pid);
        pc = per_conn(w->rss0, w->rss1);
        printf("  %-22s %s -> %s", label, mib(w->rss0, a[0], 32), mib(w->rss1, a[1], 32));
        if (pc >= 0)
            printf(", %.0f bytes per connection", pc);
        printf("\n");
        gw_rss0 += w->rss0;
        gw_rss1 += w->rss1;
        n_gw++;
    }
    if (n_gw > 1 && (pc = per_conn(gw_rss0, gw_rss1)) >= 0)
        printf("  %-22s %s -> %s, %.0f bytes per connection (all %zu processes)\n",
               "gateways, together", mib(gw_rss0, a[0], 32), mib(gw_rss1, a[1], 32), pc, n_gw);
    if (B.ready_at_rss1)
        printf("  %-22s %.0f bytes per connection in TCP buffers (/proc/net/sockstat, both ends); "
               "MemAvailable fell %.0f bytes per connection (noisy: page cache, other "
               "processes)\n",
               "kernel", ((double)B.tcpmem1 - (double)B.tcpmem0) / (double)B.ready_at_rss1,
               ((double)B.avail0 - (double)B.avail1) / (double)B.ready_at_rss1);

    if (load_s() > 0) {
        double s = load_s();
        printf("\nCPU during the load (100%% = one core):\n ");
        printf(" benchmark %.0f%%", (double)(B.self_cpu1 - B.self_cpu0) / 1e9 / s * 100.0);
        for (size_t i = 0; i < B.nwatch; i++) {
            const bm_watch_t *w = &B.watch[i];
            if (w->cpu1 >= w->cpu0 && w->cpu1)
                printf(", %s %.0f%%", w->name, (double)(w->cpu1 - w->cpu0) / 1e9 / s * 100.0);
        }
        printf("\n");
        if (B.mach_total1 > B.mach_total0)
            printf("  machine %.0f%% busy (all %ld cores; other processes included), load average "
                   "%.2f -> %.2f\n",
                   100.0 * (double)(B.mach_busy1 - B.mach_busy0) /
                       (double)(B.mach_total1 - B.mach_total0),
                   sysconf(_SC_NPROCESSORS_ONLN), B.load0, B.load1);
    }
    if (B.mode == BM_DB)
        bm__db_text();
}

/* ------------------------------------------------------------ JSON */

static void jw_num(im_jw_t *w, const char *key, double v)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%.3f", v);

    im_jw_key(w, key);
    im_jw_number(w, buf, (size_t)n);
}

static void jw_u(im_jw_t *w, const char *key, uint64_t v)
{
    im_jw_key(w, key);
    im_jw_uint64(w, v);
}

static void jw_hist(im_jw_t *w, const char *key, const bm_hist_t *h)
{
    im_jw_key(w, key);
    im_jw_obj_begin(w);
    jw_u(w, "count", h->count);
    jw_num(w, "p50_ms", (double)bm_hist_pct(h, 50) / 1e6);
    jw_num(w, "p90_ms", (double)bm_hist_pct(h, 90) / 1e6);
    jw_num(w, "p99_ms", (double)bm_hist_pct(h, 99) / 1e6);
    jw_num(w, "p999_ms", (double)bm_hist_pct(h, 99.9) / 1e6);
    jw_num(w, "max_ms", (double)h->max / 1e6);
    jw_num(w, "mean_ms", bm_hist_mean(h) / 1e6);
    im_jw_obj_end(w);
}

static void jw_kinds(im_jw_t *w, const char *key, const bm_kinds_t *k)
{
    im_jw_key(w, key);
    im_jw_obj_begin(w);
    for (size_t i = 0; i < k->n; i++)
        jw_u(w, k->k[i].name, k->k[i].count);
    if (k->other)
        jw_u(w, "(other)", k->other);
    im_jw_obj_end(w);
}

int bm__report_json(FILE *out)
{
    size_t cap = 65536 + B.nrows * 512 + (B.dbreport_out ? strlen(B.dbreport_out) * 6 : 0);
    char *buf = im_malloc(cap);
    const bm_loop_stats_t *ls = bm_loop_stats(B.loop);
    double s = load_s();
    im_jw_t w;
    size_t len;

    sort_kinds(&B.errors);
    sort_kinds(&B.frames);
    im_jw_init(&w, buf, cap, 0);
    im_jw_obj_begin(&w);
    im_jw_key(&w, "mode");
    im_jw_cstr(&w, bm__mode_name(B.mode));
    im_jw_key(&w, "config");
    im_jw_obj_begin(&w);
    jw_u(&w, "connections", (uint64_t)B.cfg.connections);
    jw_num(&w, "duration_s", (double)B.cfg.duration_ms / 1e3);
    im_jw_key(&w, "gateways");
    im_jw_cstr(&w, B.cfg.gateways);
    im_jw_key(&w, "sources");
    im_jw_cstr(&w, B.cfg.sources ? B.cfg.sources : "");
    jw_u(&w, "rate_per_client", (uint64_t)B.cfg.rate);
    jw_u(&w, "inflight", (uint64_t)B.cfg.inflight);
    jw_u(&w, "size", (uint64_t)B.cfg.size);
    jw_num(&w, "ramp_s", (double)B.cfg.ramp_ms / 1e3);
    jw_u(&w, "group_size", (uint64_t)B.cfg.group_size);
    jw_u(&w, "senders", (uint64_t)B.cfg.senders);
    jw_num(&w, "ack_timeout_s", (double)B.cfg.ack_timeout_ms / 1e3);
    jw_num(&w, "drain_s", (double)B.cfg.drain_ms / 1e3);
    im_jw_obj_end(&w);
    im_jw_key(&w, "users");
    im_jw_obj_begin(&w);
    im_jw_key(&w, "auth");
    im_jw_cstr(&w, B.minted ? "mint" : "rest");
    im_jw_key(&w, "description");
    im_jw_cstr(&w, B.auth_desc);
    jw_num(&w, "setup_s", (double)B.setup_ms / 1e3);
    im_jw_obj_end(&w);
    jw_num(&w, "load_s", s);
    jw_num(&w, "drain_s", B.t_drain1 > B.t_load1 ? (double)(B.t_drain1 - B.t_load1) / 1e9 : 0);

    im_jw_key(&w, "connections");
    im_jw_obj_begin(&w);
    jw_u(&w, "requested", B.n);
    jw_u(&w, "attempts", B.connects);
    jw_u(&w, "upgraded", B.upgraded);
    jw_u(&w, "ready", B.readies);
    jw_u(&w, "ready_at_load_start", B.ready_at_rss1);
    jw_num(&w, "all_ready_s",
           B.t_connected > B.t_connect0 ? (double)(B.t_connected - B.t_connect0) / 1e9 : 0);
    jw_u(&w, "cycles", B.cycles);
    jw_num(&w, "cycles_per_s", per_s(B.cycles));
    jw_u(&w, "clean_closes", B.closes_clean);
    jw_num(&w, "first_wave_s", B.t_first_wave ? (double)(B.t_first_wave - B.t_load0) / 1e9 : 0);
    im_jw_obj_end(&w);

    im_jw_key(&w, "messages");
    im_jw_obj_begin(&w);
    jw_u(&w, "sent", B.sent);
    jw_u(&w, "acked", B.acked);
    jw_u(&w, "delivered", B.delivered);
    jw_u(&w, "expected_deliveries", B.expected_acked);
    jw_u(&w, "refused", B.errored);
    jw_u(&w, "not_sent_window_full", B.skipped);
    jw_u(&w, "sent_in_window", B.win_sent);
    jw_u(&w, "acked_in_window", B.win_acked);
    jw_u(&w, "delivered_in_window", B.win_delivered);
    jw_num(&w, "sent_per_s", per_s(B.win_sent));
    jw_num(&w, "acked_per_s", per_s(B.win_acked));
    jw_num(&w, "delivered_per_s", per_s(B.win_delivered));
    im_jw_obj_end(&w);

    im_jw_key(&w, "latency");
    im_jw_obj_begin(&w);
    jw_hist(&w, "connect", &B.h_connect);
    jw_hist(&w, "ready", &B.h_ready);
    jw_hist(&w, "send_ack", &B.h_ack);
    jw_hist(&w, "send_deliver", &B.h_e2e);
    im_jw_obj_end(&w);

    im_jw_key(&w, "correctness");
    im_jw_obj_begin(&w);
    jw_u(&w, "lost_deliveries", B.lost);
    jw_u(&w, "lost_messages", B.lost_msgs);
    jw_u(&w, "duplicates", B.duplicates);
    jw_u(&w, "order_violations", B.order_violations);
    jw_u(&w, "order_max_back", B.order_max_back);
    jw_u(&w, "unacked", B.unacked);
    jw_u(&w, "late_acks", B.late_acks);
    jw_u(&w, "delivered_unacked", B.delivered_unacked);
    jw_u(&w, "delivered_after_error", B.delivered_errored);
    jw_u(&w, "repeated_acks", B.dup_acks);
    jw_u(&w, "acks_flagged_duplicate", B.dup_flagged);
    jw_u(&w, "foreign_msgs", B.foreign);
    im_jw_obj_end(&w);

    jw_u(&w, "errors_total", B.errors_total);
    jw_kinds(&w, "errors", &B.errors);
    jw_kinds(&w, "frames", &B.frames);
    im_jw_key(&w, "io");
    im_jw_obj_begin(&w);
    jw_u(&w, "bytes_in", ls->bytes_in);
    jw_u(&w, "bytes_out", ls->bytes_out);
    jw_u(&w, "pings_answered", ls->pings);
    jw_u(&w, "sends_buffered", ls->out_buffered);
    jw_u(&w, "loop_iterations", ls->iterations);
    jw_num(&w, "loop_max_busy_ms", (double)ls->max_busy_ns / 1e6);
    jw_u(&w, "loop_slow_iterations", ls->slow);
    im_jw_obj_end(&w);

    im_jw_key(&w, "memory");
    im_jw_obj_begin(&w);
    jw_u(&w, "connections", B.ready_at_rss1);
    jw_u(&w, "client_struct_bytes", sizeof(bm_client_t));
    jw_u(&w, "bench_rss_before", B.self_rss_base);
    jw_u(&w, "bench_rss_connected", B.self_rss1);
    jw_num(&w, "bench_bytes_per_conn", per_conn(B.self_rss_base, B.self_rss1));
    jw_num(&w, "kernel_tcp_bytes_per_conn",
           B.ready_at_rss1 ? ((double)B.tcpmem1 - (double)B.tcpmem0) / (double)B.ready_at_rss1 : 0);
    jw_num(&w, "mem_available_drop_per_conn",
           B.ready_at_rss1 ? ((double)B.avail0 - (double)B.avail1) / (double)B.ready_at_rss1 : 0);
    im_jw_key(&w, "gateways");
    im_jw_arr_begin(&w);
    for (size_t i = 0; i < B.nwatch; i++) {
        const bm_watch_t *g = &B.watch[i];
        if (!g->gateway)
            continue;
        im_jw_obj_begin(&w);
        jw_u(&w, "pid", (uint64_t)g->pid);
        jw_u(&w, "rss_before", g->rss0);
        jw_u(&w, "rss_connected", g->rss1);
        jw_u(&w, "rss_end", g->rss2);
        jw_num(&w, "bytes_per_conn", per_conn(g->rss0, g->rss1));
        im_jw_obj_end(&w);
    }
    im_jw_arr_end(&w);
    im_jw_obj_end(&w);

    im_jw_key(&w, "cpu_pct");
    im_jw_obj_begin(&w);
    if (s > 0) {
        jw_num(&w, "benchmark", (double)(B.self_cpu1 - B.self_cpu0) / 1e9 / s * 100.0);
        for (size_t i = 0; i < B.nwatch; i++) {
            char key[48];
            const bm_watch_t *g = &B.watch[i];
            snprintf(key, sizeof(key), "%s:%d", g->name, (int)g->pid);
            if (g->cpu1 >= g->cpu0 && g->cpu1)
                jw_num(&w, key, (double)(g->cpu1 - g->cpu0) / 1e9 / s * 100.0);
        }
    }
    if (B.mach_total1 > B.mach_total0)
        jw_num(&w, "machine_busy",
               100.0 * (double)(B.mach_busy1 - B.mach_busy0) /
                   (double)(B.mach_total1 - B.mach_total0));
    im_jw_obj_end(&w);
    jw_num(&w, "loadavg_start", B.load0);
    jw_num(&w, "loadavg_end", B.load1);

    if (B.mode == BM_DB) {
        im_jw_key(&w, "db");
        im_jw_obj_begin(&w);
        bm__db_json(&w);
        im_jw_obj_end(&w);
    }

    im_jw_key(&w, "series");
    im_jw_arr_begin(&w);
    for (size_t i = 0; i < B.nrows; i++) {
        const bm_row_t *r = &B.rows[i];
        im_jw_obj_begin(&w);
        jw_num(&w, "t", r->t);
        jw_u(&w, "open", r->open);
        jw_u(&w, "sent", r->sent);
        jw_u(&w, "acked", r->acked);
        jw_u(&w, "delivered", r->delivered);
        jw_u(&w, "errors", r->errors);
        jw_u(&w, "connects", r->connects);
        jw_num(&w, "ack_p50_ms", (double)r->ack_p50 / 1e6);
        jw_num(&w, "ack_p99_ms", (double)r->ack_p99 / 1e6);
        jw_num(&w, "e2e_p50_ms", (double)r->e2e_p50 / 1e6);
        jw_num(&w, "e2e_p99_ms", (double)r->e2e_p99 / 1e6);
        jw_num(&w, "connect_p50_ms", (double)r->conn_p50 / 1e6);
        jw_num(&w, "connect_p99_ms", (double)r->conn_p99 / 1e6);
        if (B.mode == BM_DB)
            jw_u(&w, "stored", r->stored - (i ? B.rows[i - 1].stored : 0));
        im_jw_obj_end(&w);
    }
    im_jw_arr_end(&w);
    im_jw_obj_end(&w);
    if (im_jw_finish(&w, &len) != IM_OK) {
        fprintf(stderr, "benchmark: the JSON report did not fit\n");
        im_free(buf);
        return -1;
    }
    fwrite(buf, 1, len, out);
    fputc('\n', out);
    im_free(buf);
    return 0;
}

/* ------------------------------------------------------------ CSV */

int bm__report_csv(const char *path)
{
    FILE *f = fopen(path, "w");

    if (f == NULL) {
        fprintf(stderr, "benchmark: cannot write %s\n", path);
        return -1;
    }
    fprintf(f, "t_s,open,sent,acked,delivered,errors,connects,ack_p50_ms,ack_p99_ms,e2e_p50_ms,"
               "e2e_p99_ms,connect_p50_ms,connect_p99_ms,stored\n");
    for (size_t i = 0; i < B.nrows; i++) {
        const bm_row_t *r = &B.rows[i];
        fprintf(f,
                "%.3f,%u,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64
                ",%.3f,%.3f,%.3f,%.3f,%.3f,%.3f,%" PRIu64 "\n",
                r->t, r->open, r->sent, r->acked, r->delivered, r->errors, r->connects,
                (double)r->ack_p50 / 1e6, (double)r->ack_p99 / 1e6, (double)r->e2e_p50 / 1e6,
                (double)r->e2e_p99 / 1e6, (double)r->conn_p50 / 1e6, (double)r->conn_p99 / 1e6,
                r->stored - (i ? B.rows[i - 1].stored : 0));
    }
    return fclose(f) == 0 ? 0 : -1;
}
