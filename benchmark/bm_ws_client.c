/*
 * bm_ws_client.c - the load tool's clients: the JSON protocol of README
 * "Client protocol" on top of bm_ws_io, send pacing, and the bookkeeping of
 * latency and correctness.
 *
 * Every message a client sends gets a number g (its index in B.msgs); the
 * cid is "<run tag>-g", and the body starts "g.sender.t_send_ns." so a receiver finds the
 * record and the send time without any lookup.  A record counts the
 * deliveries expected (the recipients ready when it was sent) and seen;
 * after the drain, acked messages with fewer are lost, extra ones are
 * duplicates.  Each client is in exactly one conversation (its direct
 * partner, or its group), so ordering is checked with one number per client:
 * the conversation seq of deliveries must increase.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bm_ws.h"
#include "im_alloc.h"
#include "im_json.h"
#include "im_time.h"

#define NTOK          96
#define CLOSE_WAIT_MS 3000

static void timer_cb(im_timer_t *t, void *arg);

static bm_client_t *client_of(bm_ws_t *ws)
{
    return (bm_client_t *)(void *)ws; /* ws is the first member */
}

/* ------------------------------------------------------------ counters */

void bm__kind_add(bm_kinds_t *k, const char *name, uint64_t n)
{
    for (size_t i = 0; i < k->n; i++) {
        if (strcmp(k->k[i].name, name) == 0) {
            k->k[i].count += n;
            return;
        }
    }
    if (k->n == BM_KINDS_MAX) {
        k->other += n;
        return;
    }
    snprintf(k->k[k->n].name, sizeof(k->k[k->n].name), "%s", name);
    k->k[k->n].count = n;
    k->n++;
}

void bm__error(const char *kind)
{
    bm__kind_add(&B.errors, kind, 1);
    B.errors_total++;
    B.sec.errors++;
}

static const char *errno_kind(int err)
{
    static char buf[24];

    switch (err) {
    case ECONNREFUSED:
        return "refused";
    case ECONNRESET:
        return "reset";
    case ETIMEDOUT:
        return "timedout";
    case EADDRNOTAVAIL:
        return "no_ports";
    case EADDRINUSE:
        return "addr_in_use";
    case EMFILE:
    case ENFILE:
        return "fd_limit";
    case EPIPE:
        return "broken_pipe";
    case ENETUNREACH:
        return "unreachable";
    default:
        snprintf(buf, sizeof(buf), "errno_%d", err);
        return buf;
    }
}

/* ------------------------------------------------------------ connecting */

void bm__client_init(bm_client_t *c, uint32_t idx)
{
    bm_ws_init(&c->ws);
    im_timer_init(&c->timer, timer_cb, c);
    c->idx = idx;
    c->state = CL_WAIT;
    c->gw = (uint16_t)(idx % B.ngw);
    c->src = B.nsrc ? (uint16_t)((idx / B.ngw) % B.nsrc) : 0;
}

static void arm(bm_client_t *c, uint64_t ms)
{
    im_wheel_add(bm_loop_wheel(B.loop), &c->timer, ms);
}

void bm__client_start(bm_client_t *c, uint64_t delay_ms)
{
    c->state = CL_WAIT;
    arm(c, delay_ms);
}

static void start_connect(bm_client_t *c)
{
    char token[1100], path[1200];
    char kind[48];
    im_err_t rc;

    if (bm__token(c->idx, token, sizeof(token)) == NULL) {
        bm__error("token");
        c->state = CL_DOWN;
        return;
    }
    snprintf(path, sizeof(path), "/ws?token=%s", token);
    c->t_start_ns = im_mono_ns();
    rc = bm_ws_connect(B.loop, &c->ws, &B.gw[c->gw], B.nsrc ? &B.src[c->src] : NULL,
                       B.gw_host[c->gw], path, NULL);
    if (rc != IM_OK) {
        snprintf(kind, sizeof(kind), "connect:%s", errno_kind(c->ws.err));
        bm__error(kind);
        c->state = CL_DOWN;
        /* Connect storms retry: a full port range or fd table frees up as
         * earlier connections finish closing. */
        if (B.mode == BM_CONNECT && B.phase == BM_PH_LOAD)
            arm(c, 10);
        return;
    }
    B.connects++;
    B.sec.connects++;
    c->state = CL_CONNECTING;
    arm(c, (uint64_t)B.cfg.connect_timeout_ms);
}

static void open_cb(bm_ws_t *ws, void *arg)
{
    bm_client_t *c = client_of(ws);

    (void)arg;
    B.upgraded++;
    bm_hist_add(&B.h_connect, im_mono_ns() - c->t_start_ns);
    c->state = CL_UPGRADED;
}

/* ------------------------------------------------------------ sending */

static uint32_t expected_for(const bm_client_t *c)
{
    if (B.mode == BM_GROUP)
        return B.group_ready[c->peer] > 0 ? B.group_ready[c->peer] - 1 : 0;
    return c->peer < B.n && B.clients[c->peer].state == CL_READY ? 1 : 0;
}

static void send_one(bm_client_t *c)
{
    uint64_t now = im_mono_ns();
    size_t g = B.nmsgs, n, body_start;
    bm_msg_t *m;
    int k;

    if (B.nmsgs == B.msgs_cap) {
        B.msgs_cap = B.msgs_cap ? B.msgs_cap * 2 : 65536;
        B.msgs = im_realloc(B.msgs, B.msgs_cap * sizeof(*B.msgs));
    }
    m = &B.msgs[B.nmsgs++];
    memset(m, 0, sizeof(*m));
    m->t_send_ns = now;
    m->sender = c->idx;
    m->expected = expected_for(c);
    m->state = MSG_SENT;

    if (B.mode == BM_GROUP)
        k = snprintf(B.frame, B.frame_cap,
                     "{\"type\":\"send\",\"cid\":\"%s-%zu\",\"to\":{\"group\":\"%" PRIu64
                     "\"},\"body\":\"",
                     B.run_tag, g, B.group_ids[c->peer]);
    else
        k = snprintf(B.frame, B.frame_cap,
                     "{\"type\":\"send\",\"cid\":\"%s-%zu\",\"to\":{\"user\":\"%" PRIu64
                     "\"},\"body\":\"",
                     B.run_tag, g, B.clients[c->peer].user);
    body_start = (size_t)k;
    k += snprintf(B.frame + k, B.frame_cap - (size_t)k, "%zu.%u.%" PRIu64 ".", g, c->idx, now);
    n = (size_t)k;
    while (n - body_start < (size_t)B.cfg.size)
        B.frame[n++] = 'x';
    memcpy(B.frame + n, "\"}", 2);
    n += 2;
    if (bm_ws_send_text(B.loop, &c->ws, B.frame, n) != IM_OK) {
        m->state = MSG_ERROR;
        bm__error("send_failed");
        return;
    }
    c->inflight++;
    B.sent++;
    B.sec.sent++;
}

/* Sends what the pacing says is due and re-arms the timer. */
static void pace(bm_client_t *c)
{
    uint64_t now = im_mono_ns(), interval;

    if (B.phase != BM_PH_LOAD || c->state != CL_READY || !c->sender)
        return;
    if (B.cfg.rate == 0) { /* closed loop: keep the window full; acks refill it */
        while (c->inflight < (uint64_t)B.cfg.inflight && c->state == CL_READY && !c->ws.dead)
            send_one(c);
        arm(c, 100); /* in case every message in the window timed out */
        return;
    }
    interval = 1000000000ull / (uint64_t)B.cfg.rate;
    if (c->next_send_ns + 1000000000ull < now) { /* stalled over a second: do not burst */
        B.skipped += (now - c->next_send_ns) / interval;
        c->next_send_ns = now;
    }
    while (c->next_send_ns <= now && c->state == CL_READY) {
        if (c->inflight < (uint64_t)B.cfg.inflight)
            send_one(c);
        else
            B.skipped++;
        c->next_send_ns += interval;
    }
    arm(c, (c->next_send_ns - now + BM_NS_PER_MS - 1) / BM_NS_PER_MS);
}

void bm__client_load(bm_client_t *c)
{
    if (c->state != CL_READY || !c->sender)
        return;
    /* Spread the first sends over one interval so clients do not send in step. */
    if (B.cfg.rate > 0) {
        uint64_t interval = 1000000000ull / (uint64_t)B.cfg.rate, offset;
        offset = (uint64_t)c->idx * 7919 * BM_NS_PER_MS / 1000 % interval;
        c->next_send_ns = im_mono_ns() + offset;
        arm(c, offset / BM_NS_PER_MS);
    } else {
        arm(c, 0);
    }
}

void bm__client_close(bm_client_t *c)
{
    if (c->ws.state == BM_WS_OPEN) {
        bm_ws_close(B.loop, &c->ws, 1000);
        c->state = CL_CLOSING;
        arm(c, CLOSE_WAIT_MS);
    } else if (c->ws.fd >= 0 && c->state != CL_CLOSING && c->state != CL_TIMEDOUT) {
        c->state = CL_TIMEDOUT; /* still connecting: no handshake to wait for */
        bm_ws_abort(B.loop, &c->ws, 0);
    } else if (c->ws.fd < 0) {
        im_wheel_cancel(bm_loop_wheel(B.loop), &c->timer);
        c->state = CL_DOWN;
    }
}

static void timer_cb(im_timer_t *t, void *arg)
{
    bm_client_t *c = arg;

    (void)t;
    switch (c->state) {
    case CL_WAIT:
    case CL_DOWN:
        if (B.phase == BM_PH_CONNECT || (B.phase == BM_PH_LOAD && B.mode == BM_CONNECT))
            start_connect(c);
        break;
    case CL_CONNECTING:
    case CL_UPGRADED:
        bm__error(c->state == CL_CONNECTING ? "connect_timeout" : "ready_timeout");
        c->state = CL_TIMEDOUT;
        bm_ws_abort(B.loop, &c->ws, 0);
        break;
    case CL_READY:
        pace(c);
        break;
    case CL_CLOSING:
        bm__error("close_timeout");
        c->state = CL_TIMEDOUT;
        bm_ws_abort(B.loop, &c->ws, 0);
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------ frames in */

static void on_ready(bm_client_t *c)
{
    uint64_t dt;

    if (c->state != CL_UPGRADED) {
        bm__kind_add(&B.frames, "ready (again)", 1);
        return;
    }
    dt = im_mono_ns() - c->t_start_ns;
    bm_hist_add(&B.h_ready, dt);
    bm_hist_add(&B.sec.conn, dt);
    B.readies++;
    c->state = CL_READY;
    c->last_seq = 0;
    B.ready_now++;
    if (B.mode == BM_GROUP)
        B.group_ready[c->peer]++;
    if (!c->ever_ready) {
        c->ever_ready = 1;
        if (B.mode == BM_CONNECT && ++B.cycles == B.n)
            B.t_first_wave = im_mono_ns();
    } else if (B.mode == BM_CONNECT) {
        B.cycles++;
    }
    im_wheel_cancel(bm_loop_wheel(B.loop), &c->timer);
    if (B.mode == BM_CONNECT) {
        bm__client_close(c);
        return;
    }
    if (B.phase == BM_PH_LOAD)
        bm__client_load(c);
}

/* The message number in a cid string "<run tag>-<g>"; SIZE_MAX if it is not
 * one of ours.  The tag keeps cids unique across runs: the server dedups a
 * sender's cids for a day, and --users-file reuses senders. */
static size_t msg_of_cid(const im_json_t *doc, int t)
{
    char buf[40], *end, *p;
    unsigned long long v;
    size_t tlen = strlen(B.run_tag);

    if (t < 0 || im_json_str(doc, t, buf, sizeof(buf), NULL) != IM_OK ||
        strncmp(buf, B.run_tag, tlen) != 0 || buf[tlen] != '-')
        return SIZE_MAX;
    p = buf + tlen + 1;
    if (*p < '0' || *p > '9')
        return SIZE_MAX;
    v = strtoull(p, &end, 10);
    return *end == '\0' && v < B.nmsgs ? (size_t)v : SIZE_MAX;
}

static void resolved(bm_msg_t *m)
{
    bm_client_t *s = &B.clients[m->sender];

    if (s->inflight > 0)
        s->inflight--;
    if (B.cfg.rate == 0 && B.phase == BM_PH_LOAD)
        pace(s);
}

static void on_ack(const im_json_t *doc)
{
    size_t g = msg_of_cid(doc, im_json_find(doc, 0, "cid"));
    bool dup = false;
    bm_msg_t *m;
    uint64_t dt;

    if (g == SIZE_MAX) {
        bm__kind_add(&B.frames, "ack (unknown cid)", 1);
        return;
    }
    m = &B.msgs[g];
    if (im_json_bool(doc, im_json_find(doc, 0, "duplicate"), &dup) == IM_OK && dup)
        B.dup_flagged++;
    if (m->state == MSG_ACKED || m->state == MSG_ERROR) {
        B.dup_acks++;
        return;
    }
    dt = im_mono_ns() - m->t_send_ns;
    bm_hist_add(&B.h_ack, dt);
    bm_hist_add(&B.sec.ack, dt);
    B.acked++;
    B.sec.acked++;
    B.expected_acked += m->expected;
    if (m->state == MSG_TIMEOUT) {
        m->late = 1;
        B.late_acks++;
        m->state = MSG_ACKED;
        return;
    }
    m->state = MSG_ACKED;
    resolved(m);
}

static void on_error(const im_json_t *doc)
{
    char code[24], kind[48];
    size_t g = msg_of_cid(doc, im_json_find(doc, 0, "cid"));

    if (im_json_str(doc, im_json_find(doc, 0, "code"), code, sizeof(code), NULL) != IM_OK)
        snprintf(code, sizeof(code), "?");
    /* An error without our cid cannot be matched to its send, which then
     * stays unacked until --ack-timeout: say so in its kind. */
    snprintf(kind, sizeof(kind), "error:%s%s", code, g == SIZE_MAX ? " (no cid)" : "");
    bm__error(kind);
    if (g != SIZE_MAX && B.msgs[g].state == MSG_SENT) {
        B.msgs[g].state = MSG_ERROR;
        B.errored++;
        resolved(&B.msgs[g]);
    }
}

/* A delivered message: its body p[0..n) (no escapes) and seq (0: none). */
static void on_msg_body(bm_client_t *c, const char *p, uint64_t seq, bool has_seq)
{
    uint64_t t_send, now = im_mono_ns();
    unsigned long long g, sender;
    char *end;
    bm_msg_t *m;

    /* The body is ours only if it starts "g.sender.t_send_ns." (no escapes). */
    g = strtoull(p, &end, 10);
    if (*end != '.' || g >= B.nmsgs)
        goto foreign;
    sender = strtoull(end + 1, &end, 10);
    if (*end != '.' || sender != B.msgs[g].sender)
        goto foreign;
    t_send = strtoull(end + 1, &end, 10);
    if (*end != '.' || t_send != B.msgs[g].t_send_ns)
        goto foreign;
    m = &B.msgs[g];
    m->delivered++;
    B.delivered++;
    B.sec.delivered++;
    if (m->delivered <= m->expected)
        B.useful_deliveries++;
    bm_hist_add(&B.h_e2e, now - t_send);
    bm_hist_add(&B.sec.e2e, now - t_send);
    if (has_seq) {
        if (seq < c->last_seq) {
            B.order_violations++;
            if (c->last_seq - seq > B.order_max_back)
                B.order_max_back = c->last_seq - seq;
        } else
            c->last_seq = seq;
    }
    return;
foreign:
    B.foreign++;
}

static void on_msg(bm_client_t *c, const im_json_t *doc)
{
    int bt = im_json_find(doc, 0, "body");
    uint64_t seq = 0;
    bool has_seq;

    if (bt < 0 || im_json_type(doc, bt) != IM_JSON_STRING || (doc->tok[bt].flags & IM_JSON_F_ESC)) {
        B.foreign++;
        return;
    }
    has_seq = im_json_uint64(doc, im_json_find(doc, 0, "seq"), &seq) == IM_OK;
    on_msg_body(c, doc->js + doc->tok[bt].start, seq, has_seq);
}

/* The gateway's msg frames start {"type":"msg", and carry ,"seq":N before
 * ,"body":"...": read those two straight from the text, which is what the
 * benchmark spends its time on at hundreds of thousands of deliveries a
 * second.  False (use the full parser) for anything else, or a body with an
 * escape. */
static const char *find(const char *p, const char *end, const char *needle, size_t n)
{
    for (; p + n <= end; p++)
        if (*p == needle[0] && memcmp(p, needle, n) == 0)
            return p;
    return NULL;
}

static bool fast_msg(bm_client_t *c, const char *d, size_t len)
{
    static const char head[] = "{\"type\":\"msg\",";
    const char *end = d + len, *p, *q;
    uint64_t seq = 0;

    if (len < sizeof(head) - 1 || memcmp(d, head, sizeof(head) - 1) != 0)
        return false;
    if ((p = find(d, end, ",\"seq\":", 7)) == NULL)
        return false;
    for (p += 7; p < end && *p >= '0' && *p <= '9'; p++)
        seq = seq * 10 + (uint64_t)(*p - '0');
    if ((q = find(p, end, ",\"body\":\"", 9)) == NULL)
        return false;
    q += 9;
    for (p = q; p < end && *p != '"'; p++)
        if (*p == '\\')
            return false;
    if (p == end)
        return false;
    bm__kind_add(&B.frames, "msg", 1);
    on_msg_body(c, q, seq, true);
    return true;
}

static void text_cb(bm_ws_t *ws, const char *data, size_t len, void *arg)
{
    bm_client_t *c = client_of(ws);
    im_json_tok_t tok[NTOK];
    im_json_t doc;
    char type[24];
    int t;

    (void)arg;
    if (fast_msg(c, data, len))
        return;
    if (im_json_parse(&doc, data, len, tok, NTOK, 0) != IM_OK) {
        bm__kind_add(&B.frames, "(unparsed)", 1);
        return;
    }
    t = im_json_find(&doc, 0, "type");
    if (im_json_str(&doc, t, type, sizeof(type), NULL) != IM_OK)
        snprintf(type, sizeof(type), "(no type)");
    bm__kind_add(&B.frames, type, 1);
    if (strcmp(type, "msg") == 0)
        on_msg(c, &doc);
    else if (strcmp(type, "ack") == 0)
        on_ack(&doc);
    else if (strcmp(type, "ready") == 0)
        on_ready(c);
    else if (strcmp(type, "error") == 0)
        on_error(&doc);
}

/* ------------------------------------------------------------ the end of a connection */

static void end_cb(bm_ws_t *ws, bm_end_t why, void *arg)
{
    bm_client_t *c = client_of(ws);
    int was = c->state;
    char kind[48];

    (void)arg;
    if (was == CL_READY) {
        B.ready_now--;
        if (B.mode == BM_GROUP)
            B.group_ready[c->peer]--;
    }
    if (was == CL_CLOSING && why == BM_END_CLEAN) {
        B.closes_clean++;
    } else if (was != CL_TIMEDOUT) {
        switch (why) {
        case BM_END_CLEAN:
            snprintf(kind, sizeof(kind), "close:%u", ws->code);
            break;
        case BM_END_CONNECT:
            snprintf(kind, sizeof(kind), "connect:%s", errno_kind(ws->err));
            break;
        case BM_END_HTTP:
            snprintf(kind, sizeof(kind), "http:%u", ws->code);
            break;
        case BM_END_PROTOCOL:
            snprintf(kind, sizeof(kind), "protocol");
            break;
        case BM_END_EOF:
            snprintf(kind, sizeof(kind), was == CL_CLOSING ? "eof_while_closing" : "eof");
            break;
        case BM_END_ERROR:
            snprintf(kind, sizeof(kind), "socket:%s", errno_kind(ws->err));
            break;
        default:
            snprintf(kind, sizeof(kind), "abort");
            break;
        }
        bm__error(kind);
    }
    c->state = CL_DOWN;
    c->inflight = 0; /* unanswered sends time out through the scan */
    im_wheel_cancel(bm_loop_wheel(B.loop), &c->timer);
    if (B.mode == BM_CONNECT && B.phase == BM_PH_LOAD)
        arm(c, 0); /* the next cycle: from a timer, not from inside this callback */
}

const bm_ws_ops_t bm__client_ops = {open_cb, text_cb, end_cb};

/* ------------------------------------------------------------ every second */

static void scan_timeouts(uint64_t now)
{
    uint64_t limit = (uint64_t)B.cfg.ack_timeout_ms * BM_NS_PER_MS;

    while (B.scan < B.nmsgs && B.msgs[B.scan].t_send_ns + limit <= now) {
        bm_msg_t *m = &B.msgs[B.scan++];
        if (m->state == MSG_SENT) {
            m->state = MSG_TIMEOUT;
            B.timedout++;
            bm__error("ack_timeout");
            resolved(m);
        }
    }
}

void bm__tick_cb(im_timer_t *t, void *arg)
{
    uint64_t now = im_mono_ns();
    bm_row_t *r;

    (void)arg;
    scan_timeouts(now);
    if (B.nrows == B.rows_cap) {
        B.rows_cap = B.rows_cap ? 2 * B.rows_cap : 128;
        B.rows = im_realloc(B.rows, B.rows_cap * sizeof(*B.rows));
    }
    r = &B.rows[B.nrows++];
    memset(r, 0, sizeof(*r));
    r->t = (double)(now - B.t_load0) / 1e9;
    r->open = B.ready_now;
    r->sent = B.sec.sent;
    r->acked = B.sec.acked;
    r->delivered = B.sec.delivered;
    r->errors = B.sec.errors;
    r->connects = B.sec.connects;
    r->stored = B.db ? bm__db_stored() : 0;
    r->ack_p50 = bm_hist_pct(&B.sec.ack, 50);
    r->ack_p99 = bm_hist_pct(&B.sec.ack, 99);
    r->e2e_p50 = bm_hist_pct(&B.sec.e2e, 50);
    r->e2e_p99 = bm_hist_pct(&B.sec.e2e, 99);
    r->conn_p50 = bm_hist_pct(&B.sec.conn, 50);
    r->conn_p99 = bm_hist_pct(&B.sec.conn, 99);
    if (B.cfg.progress)
        fprintf(stderr,
                "benchmark: %5.1fs open %u sent %" PRIu64 " acked %" PRIu64 " delivered %" PRIu64
                " errors %" PRIu64 " connects %" PRIu64 " ack p99 %.1fms e2e p99 %.1fms\n",
                r->t, r->open, r->sent, r->acked, r->delivered, r->errors, r->connects,
                (double)r->ack_p99 / 1e6, (double)r->e2e_p99 / 1e6);
    bm__client_reset_second();
    if (B.phase == BM_PH_LOAD || B.phase == BM_PH_DRAIN) {
        /* Rows on whole seconds since the load began: no drift. */
        uint64_t next_ms = B.t_load0 / BM_NS_PER_MS + (B.nrows + 1) * 1000,
                 now_ms = now / BM_NS_PER_MS;
        im_wheel_add(bm_loop_wheel(B.loop), t, next_ms > now_ms ? next_ms - now_ms : 0);
    }
}

void bm__client_reset_second(void)
{
    B.sec.sent = B.sec.acked = B.sec.delivered = B.sec.errors = B.sec.connects = 0;
    bm_hist_reset(&B.sec.ack);
    bm_hist_reset(&B.sec.e2e);
    bm_hist_reset(&B.sec.conn);
}

uint64_t bm__client_pending(void)
{
    int64_t unresolved =
        (int64_t)(B.sent + B.late_acks) - (int64_t)(B.acked + B.errored + B.timedout);
    /* Deliveries may come before their ack (another socket): clamp at 0. */
    int64_t undelivered = (int64_t)B.expected_acked - (int64_t)B.useful_deliveries;

    return (uint64_t)(unresolved > 0 ? unresolved : 0) +
           (uint64_t)(undelivered > 0 ? undelivered : 0);
}

void bm__client_finish(void)
{
    for (size_t i = 0; i < B.nmsgs; i++) {
        const bm_msg_t *m = &B.msgs[i];

        if (m->delivered > m->expected)
            B.duplicates += m->delivered - m->expected;
        if (m->state == MSG_ACKED) {
            if (m->delivered < m->expected) {
                B.lost += m->expected - m->delivered;
                B.lost_msgs++;
            }
        } else if (m->state == MSG_ERROR) {
            if (m->delivered)
                B.delivered_errored++;
        } else {
            B.unacked++;
            if (m->delivered)
                B.delivered_unacked++;
        }
    }
}
