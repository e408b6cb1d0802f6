/*
 * gw.c - the gateway's lifecycle and everything about sessions that is not
 * socket I/O: opening and closing them, their timers, the outbound queue
 * policy, token checks, and gw_post.
 */
#include "gw_int.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"
#include "im_utf8.h"

#ifndef GW_WEB_DIR
#define GW_WEB_DIR ""
#endif

#define MIN_SECRET_LEN 32

#define SESSION_OF(t, member) ((gw_session_t *)((char *)(t)-offsetof(gw_session_t, member)))

typedef struct post_s {
    im_queue_node_t node;
    gw_task_cb fn;
    void *arg;
} post_t;

/* ---- settings ---- */

/* The numeric form of host ("localhost" -> "127.0.0.1"): libwebsockets
 * takes an interface name or an address, not a host name. */
static im_err_t resolve_host(const char *host, char *out, size_t cap)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai;
    int rc = getaddrinfo(host, NULL, &hints, &ai);

    if (rc != 0)
        return IM_EINVAL;
    rc = getnameinfo(ai->ai_addr, ai->ai_addrlen, out, (socklen_t)cap, NULL, 0, NI_NUMERICHOST);
    freeaddrinfo(ai);
    return rc == 0 ? IM_OK : IM_EINVAL;
}

/* Splits "host:port" or "[v6]:port" into gw->listen_host (numeric) and
 * gw->listen_port. */
static im_err_t parse_listen(gw_t *gw, const char *s, char *err, size_t errlen)
{
    const char *colon = strrchr(s, ':'), *host = s;
    size_t hlen = colon ? (size_t)(colon - s) : 0;
    char name[256], numeric[NI_MAXHOST];
    char *end;
    long port;

    if (colon == NULL || hlen == 0 || hlen >= sizeof name)
        goto bad;
    if (host[0] == '[' && host[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || port < 0 || port > 65535 || hlen == 0)
        goto bad;
    memcpy(name, host, hlen);
    name[hlen] = '\0';
    if (resolve_host(name, numeric, sizeof numeric) != IM_OK) {
        snprintf(err, errlen, "--listen: cannot resolve \"%s\"", name);
        return IM_EINVAL;
    }
    gw->listen_host = im_strdup(numeric);
    gw->listen_port = (int)port;
    return IM_OK;
bad:
    snprintf(err, errlen, "--listen: expected host:port (e.g. 0.0.0.0:8080), got \"%s\"", s);
    return IM_EINVAL;
}

static im_err_t load_secret(gw_t *gw, char *err, size_t errlen)
{
    const char *s = gw->cfg.jwt_secret;

    if (s != NULL && *s != '\0') {
        if (strlen(s) < MIN_SECRET_LEN) {
            snprintf(err, errlen, "--jwt-secret (IM_JWT_SECRET) must be at least %d bytes",
                     MIN_SECRET_LEN);
            return IM_EINVAL;
        }
        gw->secret_len = strlen(s);
        gw->secret = (uint8_t *)im_strdup(s);
        return IM_OK;
    }
    if (!gw->cfg.dev) {
        snprintf(err, errlen, "--jwt-secret (IM_JWT_SECRET) is required (or --dev)");
        return IM_EINVAL;
    }
    gw->secret_len = MIN_SECRET_LEN;
    gw->secret = im_malloc(MIN_SECRET_LEN);
    if (getrandom(gw->secret, MIN_SECRET_LEN, 0) != MIN_SECRET_LEN) {
        snprintf(err, errlen, "getrandom failed: %s", strerror(errno));
        return IM_EIO;
    }
    im_log_warn("gateway: --dev: no --jwt-secret, verifying with a random secret: "
                "no token from logic will be accepted");
    return IM_OK;
}

/* Ids appear in metric labels and queue names: keep them to [A-Za-z0-9._-]. */
static void sanitize_id(char *s)
{
    for (; *s; s++) {
        if (!isalnum((unsigned char)*s) && *s != '.' && *s != '_' && *s != '-')
            *s = '-';
    }
}

static im_err_t make_ids(gw_t *gw, char *err, size_t errlen)
{
    uint8_t rnd[8];
    char host[40] = "gateway";

    if (gw->cfg.gateway_id != NULL && *gw->cfg.gateway_id != '\0') {
        if (strlen(gw->cfg.gateway_id) >= 48) {
            snprintf(err, errlen, "--gateway-id: at most 47 bytes");
            return IM_EINVAL;
        }
        snprintf(gw->gateway_id, sizeof gw->gateway_id, "%s", gw->cfg.gateway_id);
    } else {
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        snprintf(gw->gateway_id, sizeof gw->gateway_id, "%s-%ld", host, (long)getpid());
    }
    sanitize_id(gw->gateway_id);
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        snprintf(err, errlen, "getrandom failed: %s", strerror(errno));
        return IM_EIO;
    }
    snprintf(gw->instance_id, sizeof gw->instance_id, "%s-%02x%02x%02x%02x%02x%02x%02x%02x",
             gw->gateway_id, rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    return IM_OK;
}

/* static-dir: the built-in default (the source tree's web/) may be missing,
 * which just means no web client yet; a directory the user named must exist. */
static im_err_t pick_static_dir(gw_t *gw, char *err, size_t errlen)
{
    const char *d = gw->cfg.static_dir;
    struct stat st;

    if (d == NULL || *d == '\0')
        return IM_OK;
    if (stat(d, &st) == 0 && S_ISDIR(st.st_mode)) {
        gw->static_dir = im_strdup(d);
        return IM_OK;
    }
    if (strcmp(d, GW_WEB_DIR) == 0)
        return IM_OK;
    snprintf(err, errlen, "--static-dir: \"%s\" is not a directory", d);
    return IM_EINVAL;
}

static im_err_t check_config(gw_t *gw, char *err, size_t errlen)
{
    const gw_config_t *c = &gw->cfg;
    im_err_t rc;

    if (c->ping_interval_ms > 0 && c->ping_interval_ms >= c->idle_timeout_ms) {
        snprintf(err, errlen, "--ping-interval must be below --idle-timeout (or 0)");
        return IM_EINVAL;
    }
    if ((rc = parse_listen(gw, c->listen ? c->listen : "", err, errlen)) != IM_OK ||
        (rc = load_secret(gw, err, errlen)) != IM_OK || (rc = make_ids(gw, err, errlen)) != IM_OK ||
        (rc = pick_static_dir(gw, err, errlen)) != IM_OK)
        return rc;
    return IM_OK;
}

/* ---- lifecycle ---- */

static void wake_cb(void *arg)
{
    gw__io_wake(arg);
}

gw_t *gw_new(const gw_config_t *cfg, const gw_hooks_t *hooks, im_bufpool_t *pool, char *err,
             size_t errlen)
{
    gw_t *gw = im_calloc(1, sizeof(*gw));

    gw->cfg = *cfg;
    if (hooks != NULL)
        gw->hooks = *hooks;
    if (check_config(gw, err, errlen) != IM_OK)
        goto fail;
    /* Borrowed strings of cfg are not kept past this call. */
    gw->cfg.listen = gw->cfg.jwt_secret = gw->cfg.static_dir = gw->cfg.gateway_id = NULL;
    gw->cfg.log_level = NULL;
    gw->pool = pool ? pool : im_bufpool_new(NULL);
    gw->own_pool = pool == NULL;
    gw_sessions_init(&gw->sessions);
    gw->sessions.data_size = gw->hooks.session_data_size;
    gw->started_ms = im_mono_ms();
    im_wheel_init(&gw->wheel, gw->started_ms, GW_TICK_MS);
    gw->posts = im_queue_new(wake_cb, gw);
    atomic_init(&gw->stop_requested, 0);
    if (gw__io_start(gw, err, errlen) != IM_OK)
        goto fail;
    return gw;
fail:
    gw_free(gw);
    return NULL;
}

im_err_t gw_run(gw_t *gw)
{
    if (gw->ran)
        return IM_EINVAL;
    gw->ran = 1;
    return gw__io_run(gw);
}

void gw_request_stop(gw_t *gw)
{
    atomic_store(&gw->stop_requested, 1);
}

void gw_free(gw_t *gw)
{
    if (gw == NULL)
        return;
    gw__io_free(gw); /* the last connections close (and their hooks run) here */
    if (gw->posts != NULL) {
        /* Until none is left: a task may post another (a batch flushed now
         * fails at once, and its answer is a task too). */
        while (gw__run_posts(gw) > 0)
            ;
        im_queue_free(gw->posts);
    }
    /* Timers first: they live inside the sessions. */
    im_wheel_destroy(&gw->wheel);
    gw_sessions_destroy(&gw->sessions);
    if (gw->own_pool)
        im_bufpool_free(gw->pool);
    if (gw->secret != NULL)
        explicit_bzero(gw->secret, gw->secret_len);
    im_free(gw->secret);
    im_free(gw->listen_host);
    im_free(gw->static_dir);
    im_free(gw);
}

int gw_port(const gw_t *gw)
{
    return gw->port;
}

const char *gw_id(const gw_t *gw)
{
    return gw->gateway_id;
}

const char *gw_instance_id(const gw_t *gw)
{
    return gw->instance_id;
}

im_bufpool_t *gw_pool(const gw_t *gw)
{
    return gw->pool;
}

const gw_metrics_t *gw_metrics(const gw_t *gw)
{
    return &gw->metrics;
}

/* ---- cross-thread closures ---- */

void gw_post(gw_t *gw, gw_task_cb fn, void *arg)
{
    post_t *p = im_malloc(sizeof(*p));

    p->fn = fn;
    p->arg = arg;
    im_queue_push(gw->posts, &p->node);
}

size_t gw__run_posts(gw_t *gw)
{
    im_queue_node_t *n, *next;
    size_t ran = 0;

    for (n = im_queue_drain(gw->posts); n != NULL; n = next) {
        post_t *p = IM_QUEUE_ENTRY(n, post_t, node);

        next = n->next;
        gw->metrics.posts++;
        p->fn(gw, p->arg);
        im_free(p);
        ran++;
    }
    return ran;
}

/* ---- ticks and shutdown ---- */

static void begin_shutdown(gw_t *gw)
{
    uint32_t pos = 0;
    gw_session_t *s;

    gw->stopping = 1;
    gw->stop_deadline_ms = im_mono_ms() + (uint64_t)gw->cfg.shutdown_timeout_ms;
    im_log_info("gateway: stopping: refusing new connections, closing %zu sessions",
                gw_sessions_count(&gw->sessions));
    while ((s = gw_sessions_next(&gw->sessions, &pos)) != NULL)
        gw__session_close(gw, s, 1001, "going away", GW_CLOSE_SHUTDOWN);
}

void gw__tick(gw_t *gw)
{
    im_wheel_advance(&gw->wheel, im_mono_ms());
    if (!gw->stopping && atomic_load(&gw->stop_requested))
        begin_shutdown(gw);
}

int gw__done(gw_t *gw)
{
    return gw->stopping &&
           (gw_sessions_count(&gw->sessions) == 0 || im_mono_ms() >= gw->stop_deadline_ms);
}

/* ---- sessions ---- */

/* One timer per session, re-armed lazily: input only records its time, and
 * the timer, when it fires, looks at how long the peer has been quiet.  Quiet
 * for the idle timeout: closed.  Quiet for a ping interval (or another one
 * since the last ping): pinged.  Else it sleeps until the next of those. */
static void quiet_cb(im_timer_t *t, void *arg)
{
    gw_t *gw = arg;
    gw_session_t *s = SESSION_OF(t, timer);
    uint64_t now = im_mono_ms(), quiet = now - s->last_rx_ms, next;
    uint64_t idle = (uint64_t)gw->cfg.idle_timeout_ms, ping = (uint64_t)gw->cfg.ping_interval_ms;

    if (now < s->last_rx_ms)
        quiet = 0;
    if (quiet >= idle) {
        im_log_debug("session=%016llx user=%llu: idle timeout", (unsigned long long)s->id,
                     (unsigned long long)s->user_id);
        gw__session_close(gw, s, 1000, "idle timeout", GW_CLOSE_IDLE);
        return;
    }
    next = idle - quiet;
    if (ping > 0) {
        if (quiet >= ping) {
            s->ping_due = 1;
            gw__io_want_write(gw, s->conn);
        }
        /* The next multiple of the interval since the last input. */
        if (ping - quiet % ping < next)
            next = ping - quiet % ping;
    }
    im_wheel_add(&gw->wheel, t, next ? next : 1);
}

void gw__session_touch(gw_t *gw, gw_session_t *s)
{
    (void)gw;
    s->last_rx_ms = im_mono_ms();
}

static void fill_info(const gw_t *gw, gw_session_t *s, gw_session_info_t *out)
{
    out->id = s->id;
    out->user_id = s->user_id;
    out->data = gw->sessions.data_size ? (void *)s->data : NULL;
}

gw_session_t *gw__session_open(gw_t *gw, void *conn, uint64_t user_id)
{
    gw_session_t *s = gw_sessions_add(&gw->sessions, user_id);
    gw_session_info_t info;

    s->conn = conn;
    s->last_rx_ms = im_mono_ms();
    im_timer_init(&s->timer, quiet_cb, gw);
    gw_bucket_init(&s->bucket, (uint32_t)gw->cfg.rate_burst, s->last_rx_ms);
    im_wheel_add(&gw->wheel, &s->timer,
                 (uint64_t)(gw->cfg.ping_interval_ms > 0 ? gw->cfg.ping_interval_ms
                                                         : gw->cfg.idle_timeout_ms));
    gw->metrics.connections_total++;
    im_log_debug("session=%016llx user=%llu: open", (unsigned long long)s->id,
                 (unsigned long long)user_id);
    if (gw->hooks.on_open != NULL) {
        fill_info(gw, s, &info);
        gw->hooks.on_open(gw, &info, gw->hooks.arg);
    }
    /* An upgrade that raced the start of a shutdown. */
    if (gw->stopping)
        gw__session_close(gw, s, 1001, "going away", GW_CLOSE_SHUTDOWN);
    return s;
}

void gw__session_closed(gw_t *gw, gw_session_t *s, int peer_code)
{
    gw_close_kind_t kind = (gw_close_kind_t)s->close_kind;
    gw_session_info_t info;
    int code;

    if (kind == GW_CLOSE_NONE)
        kind = peer_code ? GW_CLOSE_PEER : GW_CLOSE_DROPPED;
    code = s->closing ? s->close_code : peer_code ? peer_code : 1006;
    gw->metrics.closes[kind]++;
    im_wheel_cancel(&gw->wheel, &s->timer);
    im_log_debug("session=%016llx user=%llu: closed (%s, %d)", (unsigned long long)s->id,
                 (unsigned long long)s->user_id, gw_close_kind_name(kind), code);
    /* The hook sees the session already removed, as gw.h promises, with its
     * data still there. */
    fill_info(gw, s, &info);
    gw_sessions_unlink(&gw->sessions, s);
    if (gw->hooks.on_close != NULL)
        gw->hooks.on_close(gw, &info, code, gw->hooks.arg);
    gw_session_free(s);
}

/* The close frame's reason must be valid UTF-8: a reason cut to fit must not
 * end inside a character. */
static void set_reason(gw_session_t *s, const char *reason)
{
    size_t len = reason ? strlen(reason) : 0;

    if (len > GW_CLOSE_REASON_MAX)
        len = GW_CLOSE_REASON_MAX;
    im_free(s->close_reason);
    s->close_reason = im_malloc(len + 1);
    memcpy(s->close_reason, reason ? reason : "", len);
    s->close_reason[len] = '\0';
    while (len > 0 && !im_utf8_valid(s->close_reason, len))
        s->close_reason[--len] = '\0';
}

void gw__session_close(gw_t *gw, gw_session_t *s, int code, const char *reason,
                       gw_close_kind_t kind)
{
    if (s->closing)
        return;
    s->closing = 1;
    s->close_code = (uint16_t)code;
    s->close_kind = (uint8_t)kind;
    set_reason(s, reason);
    gw_sendq_clear(s);
    im_free(s->rx);
    s->rx = NULL;
    s->rx_len = s->rx_cap = 0;
    im_wheel_cancel(&gw->wheel, &s->timer);
    gw__io_close_soon(gw, s->conn);
}

im_err_t gw__send(gw_t *gw, gw_session_t *s, im_buf_t *buf)
{
    if (s->closing)
        return IM_ECLOSED;
    if (gw_sendq_push(s, im_buf_ref(buf), (uint32_t)gw->cfg.send_queue_max) != IM_OK) {
        im_buf_unref(buf);
        im_log_info("session=%016llx user=%llu: slow consumer (%u frames queued), closing",
                    (unsigned long long)s->id, (unsigned long long)s->user_id, gw_sendq_len(s));
        gw__session_close(gw, s, 1008, "slow consumer", GW_CLOSE_SLOW);
        return IM_EFULL;
    }
    if (gw_sendq_len(s) == 1)
        gw__io_want_write(gw, s->conn);
    return IM_OK;
}

im_err_t gw_session_send(gw_t *gw, uint64_t session_id, im_buf_t *buf)
{
    gw_session_t *s = gw_sessions_get(&gw->sessions, session_id);

    return s ? gw__send(gw, s, buf) : IM_ENOENT;
}

size_t gw_user_send(gw_t *gw, uint64_t user_id, im_buf_t *buf)
{
    size_t n = 0;

    /* A slow session is only marked closing here, never unlinked, so the
     * walk stays valid. */
    for (gw_session_t *s = gw_sessions_user_first(&gw->sessions, user_id); s; s = s->user_next)
        n += gw__send(gw, s, buf) == IM_OK;
    return n;
}

size_t gw_user_sessions(gw_t *gw, uint64_t user_id, uint64_t *ids, size_t max)
{
    size_t n = 0;

    for (gw_session_t *s = gw_sessions_user_first(&gw->sessions, user_id); s; s = s->user_next) {
        if (n < max)
            ids[n] = s->id;
        n++;
    }
    return n;
}

im_err_t gw_session_close(gw_t *gw, uint64_t session_id, int code, const char *reason)
{
    gw_session_t *s = gw_sessions_get(&gw->sessions, session_id);

    if (s == NULL)
        return IM_ENOENT;
    if (code < 1000 || code > 4999)
        return IM_EINVAL;
    gw__session_close(gw, s, code, reason, GW_CLOSE_KICKED);
    return IM_OK;
}

im_err_t gw_session_info(gw_t *gw, uint64_t session_id, gw_session_info_t *out)
{
    gw_session_t *s = gw_sessions_get(&gw->sessions, session_id);

    if (s == NULL)
        return IM_ENOENT;
    fill_info(gw, s, out);
    return IM_OK;
}

void *gw_session_data(gw_t *gw, uint64_t session_id)
{
    gw_session_t *s = gw_sessions_get(&gw->sessions, session_id);

    return s != NULL && gw->sessions.data_size ? (void *)s->data : NULL;
}

void gw_sessions_foreach(gw_t *gw, void (*fn)(gw_t *gw, const gw_session_info_t *s, void *arg),
                         void *arg)
{
    gw_session_info_t info;

    for (uint32_t i = 0; i < gw->sessions.nslots; i++) {
        gw_session_t *s = gw->sessions.slots[i].s;

        if (s != NULL) {
            fill_info(gw, s, &info);
            fn(gw, &info, arg);
        }
    }
}

size_t gw_session_count(const gw_t *gw)
{
    return gw_sessions_count(&gw->sessions);
}

im_err_t gw__auth(gw_t *gw, const char *token, size_t len, im_jwt_claims_t *out)
{
    int64_t now_s = (int64_t)(im_wall_ms() / 1000);

    return im_jwt_verify(gw->secret, gw->secret_len, token, len, now_s,
                         gw->cfg.jwt_leeway_ms / 1000, out);
}
