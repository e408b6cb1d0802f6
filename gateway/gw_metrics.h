/*
 * gw_metrics.h - the gateway's counters and their Prometheus text rendering,
 * plus gw_sb_t, the growable string the renderer (and the /metrics hook)
 * appends to.
 *
 * Counters are plain integers owned by the event-loop thread: every event
 * they count happens there, and /metrics is rendered there too.
 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "gw_session.h"

/* A NUL-terminated string that grows as it is appended to (im_realloc, so
 * appending never fails).  Zero-initialise, or gw_sb_init; free with
 * gw_sb_free. */
typedef struct gw_sb_s {
    char *p;
    size_t len, cap;
} gw_sb_t;

void gw_sb_init(gw_sb_t *sb);
void gw_sb_free(gw_sb_t *sb);
void gw_sb_append(gw_sb_t *sb, const char *s, size_t n);
void gw_sb_printf(gw_sb_t *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Why an upgrade was refused (HTTP 401/404/503 before the WebSocket exists). */
typedef enum {
    GW_REFUSE_NO_TOKEN,
    GW_REFUSE_BAD_TOKEN,
    GW_REFUSE_EXPIRED,
    GW_REFUSE_NOT_FOUND,
    GW_REFUSE_STOPPING,
    GW_REFUSE__COUNT
} gw_refuse_t;

/* Routes of the HTTP side, for the requests counter. */
typedef enum {
    GW_ROUTE_HEALTHZ,
    GW_ROUTE_METRICS,
    GW_ROUTE_API,
    GW_ROUTE_STATIC,
    GW_ROUTE_OTHER,
    GW_ROUTE__COUNT
} gw_route_t;

typedef struct gw_metrics_s {
    uint64_t connections_total;         /* sessions opened */
    uint64_t frames_in, frames_out;     /* complete messages */
    uint64_t bytes_in, bytes_out;       /* their payload bytes */
    uint64_t closes[GW_CLOSE__COUNT];   /* by gw_close_kind_t */
    uint64_t refused[GW_REFUSE__COUNT]; /* upgrades refused before the handshake */
    uint64_t http[GW_ROUTE__COUNT];     /* HTTP requests by route */
    uint64_t rate_limited;              /* messages refused by the token bucket */
    uint64_t frame_errors;              /* error frames sent for bad input */
    uint64_t posts;                     /* closures run through gw_post */
    uint64_t pings;                     /* WebSocket pings sent */
} gw_metrics_t;

/* The label of a close kind ("idle", "slow_consumer", ...). */
const char *gw_close_kind_name(gw_close_kind_t kind);

/* Appends the Prometheus text exposition (format 0.0.4) of m, with the
 * connections gauge `open` and the buffer pool's state, to out. */
void gw_metrics_render(const gw_metrics_t *m, size_t open, const im_bufpool_stats_t *pool,
                       const char *gateway_id, const char *instance_id, gw_sb_t *out);

#endif
