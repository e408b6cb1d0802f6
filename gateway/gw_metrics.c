#include "gw_metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "im_alloc.h"

void gw_sb_init(gw_sb_t *sb)
{
    memset(sb, 0, sizeof(*sb));
}

void gw_sb_free(gw_sb_t *sb)
{
    im_free(sb->p);
    gw_sb_init(sb);
}

static void sb_reserve(gw_sb_t *sb, size_t more)
{
    size_t cap = sb->cap ? sb->cap : 256;

    if (sb->len + more + 1 <= sb->cap)
        return;
    while (cap < sb->len + more + 1)
        cap *= 2;
    sb->p = im_realloc(sb->p, cap);
    sb->cap = cap;
}

void gw_sb_append(gw_sb_t *sb, const char *s, size_t n)
{
    sb_reserve(sb, n);
    memcpy(sb->p + sb->len, s, n);
    sb->len += n;
    sb->p[sb->len] = '\0';
}

void gw_sb_printf(gw_sb_t *sb, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    sb_reserve(sb, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(sb->p + sb->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

static const char *const close_names[GW_CLOSE__COUNT] = {
    [GW_CLOSE_NONE] = "none",       [GW_CLOSE_PEER] = "peer",
    [GW_CLOSE_DROPPED] = "dropped", [GW_CLOSE_SHUTDOWN] = "shutdown",
    [GW_CLOSE_IDLE] = "idle",       [GW_CLOSE_SLOW] = "slow_consumer",
    [GW_CLOSE_TOO_BIG] = "too_big", [GW_CLOSE_BAD_UTF8] = "bad_utf8",
    [GW_CLOSE_BINARY] = "binary",   [GW_CLOSE_RATE] = "rate_limit",
    [GW_CLOSE_KICKED] = "kicked",
};

static const char *const refuse_names[GW_REFUSE__COUNT] = {
    [GW_REFUSE_NO_TOKEN] = "no_token", [GW_REFUSE_BAD_TOKEN] = "bad_token",
    [GW_REFUSE_EXPIRED] = "expired",   [GW_REFUSE_NOT_FOUND] = "not_found",
    [GW_REFUSE_STOPPING] = "stopping",
};

static const char *const route_names[GW_ROUTE__COUNT] = {
    [GW_ROUTE_HEALTHZ] = "healthz", [GW_ROUTE_METRICS] = "metrics", [GW_ROUTE_API] = "api",
    [GW_ROUTE_STATIC] = "static",   [GW_ROUTE_OTHER] = "other",
};

const char *gw_close_kind_name(gw_close_kind_t kind)
{
    return (unsigned)kind < GW_CLOSE__COUNT ? close_names[kind] : "unknown";
}

static void head(gw_sb_t *out, const char *name, const char *type, const char *help)
{
    gw_sb_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(gw_sb_t *out, const char *name, const char *help, uint64_t v)
{
    head(out, name, "counter", help);
    gw_sb_printf(out, "%s %" PRIu64 "\n", name, v);
}

static void labelled(gw_sb_t *out, const char *name, const char *label, const char *const *names,
                     const uint64_t *v, size_t n, size_t first)
{
    for (size_t i = first; i < n; i++)
        gw_sb_printf(out, "%s{%s=\"%s\"} %" PRIu64 "\n", name, label, names[i], v[i]);
}

static void render_pool(const im_bufpool_stats_t *pool, gw_sb_t *out)
{
    head(out, "im_gateway_bufpool_in_use", "gauge", "Pooled frame buffers currently referenced.");
    gw_sb_printf(out, "im_gateway_bufpool_in_use %zu\n", pool->in_use);
    head(out, "im_gateway_bufpool_bytes", "gauge", "Memory held by the frame buffer pool.");
    gw_sb_printf(out, "im_gateway_bufpool_bytes %zu\n", pool->bytes);
    counter(out, "im_gateway_bufpool_exhausted_total",
            "Buffer allocations a full size class could not serve.", pool->exhausted);
    counter(out, "im_gateway_bufpool_heap_total",
            "Frames allocated from the heap because their size class was full.", pool->heap);
}

void gw_metrics_render(const gw_metrics_t *m, size_t open, const im_bufpool_stats_t *pool,
                       const char *gateway_id, const char *instance_id, gw_sb_t *out)
{
    /* Ids are [A-Za-z0-9._-] (gw_new checks), so they need no escaping. */
    head(out, "im_gateway_info", "gauge", "Always 1; labels name this gateway process.");
    gw_sb_printf(out, "im_gateway_info{gateway=\"%s\",instance=\"%s\"} 1\n", gateway_id,
                 instance_id);
    head(out, "im_gateway_connections", "gauge", "Open WebSocket sessions.");
    gw_sb_printf(out, "im_gateway_connections %zu\n", open);
    counter(out, "im_gateway_connections_total", "WebSocket sessions opened.",
            m->connections_total);
    counter(out, "im_gateway_frames_in_total", "Complete messages received from clients.",
            m->frames_in);
    counter(out, "im_gateway_frames_out_total", "Messages written to clients.", m->frames_out);
    counter(out, "im_gateway_bytes_in_total", "Payload bytes of messages received.", m->bytes_in);
    counter(out, "im_gateway_bytes_out_total", "Payload bytes of messages written.", m->bytes_out);
    head(out, "im_gateway_closes_total", "counter", "WebSocket sessions closed, by reason.");
    labelled(out, "im_gateway_closes_total", "reason", close_names, m->closes, GW_CLOSE__COUNT, 1);
    head(out, "im_gateway_upgrades_refused_total", "counter",
         "WebSocket upgrades refused before the handshake, by reason.");
    labelled(out, "im_gateway_upgrades_refused_total", "reason", refuse_names, m->refused,
             GW_REFUSE__COUNT, 0);
    head(out, "im_gateway_http_requests_total", "counter", "HTTP requests, by route.");
    labelled(out, "im_gateway_http_requests_total", "route", route_names, m->http, GW_ROUTE__COUNT,
             0);
    counter(out, "im_gateway_rate_limited_total", "Client messages refused by the rate limit.",
            m->rate_limited);
    counter(out, "im_gateway_frame_errors_total", "Error frames sent for bad client input.",
            m->frame_errors);
    counter(out, "im_gateway_pings_total", "WebSocket pings sent to quiet clients.", m->pings);
    counter(out, "im_gateway_posts_total", "Closures run on the event loop through gw_post.",
            m->posts);
    render_pool(pool, out);
}
