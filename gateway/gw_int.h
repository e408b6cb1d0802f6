/*
 * gw_int.h - what the gateway's own files share: the gw_t and request
 * structs and the gw__ functions that cross files.  Not for users of the
 * library (they have gw.h).
 *
 *   gw.c        lifecycle, gw_post, sessions API, timers, token checks
 *   gw_frame.c  client messages: validation, built-in types, dispatch, errors
 *   gw_http.c   HTTP routes and /api requests, /healthz and /metrics bodies
 *   gw_io.c     the only file that includes libwebsockets (the event loop)
 * and the self-contained modules with their own headers: gw_session (table,
 * user index, send queues), gw_rate (token bucket), gw_metrics, gw_config.
 *
 * Everything here runs on the loop thread unless marked otherwise.
 */
#ifndef GW_INT_H
#define GW_INT_H

#include <stdatomic.h>
#include <stdint.h>

#include "gw.h"
#include "gw_session.h"
#include "im_jwt.h"
#include "im_queue.h"
#include "im_wheel.h"

/* The wheel's tick and the period of the loop's housekeeping timer. */
#define GW_TICK_MS 100
/* After a session is told to close, how long the close handshake may take
 * before the connection is cut (a peer that reads nothing never lets the
 * close frame out). */
#define GW_CLOSE_GRACE_S 2

struct gw_s {
    gw_config_t cfg;   /* strings below are our own copies, not cfg's */
    char *listen_host; /* numeric: "0.0.0.0", "127.0.0.1", "::" */
    int listen_port;   /* as given (0 = any) */
    int port;          /* as bound */
    char *static_dir;  /* NULL: no static files */
    uint8_t *secret;
    size_t secret_len;
    char gateway_id[64];
    char instance_id[96];
    gw_hooks_t hooks;
    im_bufpool_t *pool;
    int own_pool;

    gw_sessions_t sessions;
    im_wheel_t wheel;
    im_queue_t *posts;
    gw_metrics_t metrics;
    uint64_t started_ms;
    uint64_t next_http_id;

    atomic_int stop_requested; /* set by gw_request_stop, any thread */
    int stopping;              /* shutdown under way (loop thread) */
    uint64_t stop_deadline_ms;
    int ran; /* gw_run was called */

    void *io; /* gw_io.c's state (the lws context) */
};

typedef enum {
    GW_HTTP_READING,   /* headers seen, body (if any) arriving */
    GW_HTTP_WITH_HOOK, /* handed to on_http; waiting for gw_http_respond */
    GW_HTTP_HEADERS,   /* response ready: headers next */
    GW_HTTP_BODY,      /* headers written: body next */
} gw_http_state_t;

struct gw_http_req_s {
    uint64_t id;
    void *conn; /* the io layer's connection; NULL once the client went away */
    gw_route_t route;
    gw_http_state_t state;
    char method[8];
    char *path, *query, *bearer; /* bearer NULL when absent */
    char *body;                  /* NUL-terminated */
    size_t body_len, body_cap;
    int body_too_big;
    /* The response: resp has IM_BUF_HEADROOM free bytes before the body
     * (libwebsockets writes its framing there). */
    int status;
    char content_type[64];
    char *resp;
    size_t resp_len;
};

/* ---- gw.c ---- */

/* A new session for an authenticated upgrade on conn: timers armed, on_open
 * called.  Never NULL. */
gw_session_t *gw__session_open(gw_t *gw, void *conn, uint64_t user_id);

/* The connection of s is gone: timers cancelled, counted, on_close called,
 * s freed.  peer_code is the code the peer sent (0: none). */
void gw__session_closed(gw_t *gw, gw_session_t *s, int peer_code);

/* Starts closing s (once): drops its queue, records code/reason/kind, and
 * asks the io layer to send the close frame. */
void gw__session_close(gw_t *gw, gw_session_t *s, int code, const char *reason,
                       gw_close_kind_t kind);

/* Traffic from s: re-arms its idle and ping timers. O(1). */
void gw__session_touch(gw_t *gw, gw_session_t *s);

/* gw_session_send for a session pointer. */
im_err_t gw__send(gw_t *gw, gw_session_t *s, im_buf_t *buf);

/* Verifies a bearer token: IM_OK with *out filled, IM_ETIMEDOUT (expired),
 * IM_EAUTH (anything else). */
im_err_t gw__auth(gw_t *gw, const char *token, size_t len, im_jwt_claims_t *out);

/* The housekeeping tick (every GW_TICK_MS): timers, stop requests. */
void gw__tick(gw_t *gw);

/* Runs every closure queued by gw_post (those queued meanwhile wait for the
 * next call); returns how many ran. */
size_t gw__run_posts(gw_t *gw);

/* 1 when gw_run's loop may end: stopping and every session gone, or the
 * shutdown deadline passed. */
int gw__done(gw_t *gw);

/* ---- gw_frame.c ---- */

/* A complete text message from s.  May reply, call on_frame, or start
 * closing s (1007 invalid UTF-8, 1008 rate-limit abuse). */
void gw__frame_text(gw_t *gw, gw_session_t *s, const char *data, size_t len);

/* ---- gw_http.c ---- */

/* Which route serves path. */
gw_route_t gw__http_route(const char *path);

/* A request arriving on conn; strings are copied (query may be "", bearer
 * NULL). */
gw_http_req_t *gw__http_new(gw_t *gw, void *conn, const char *method, const char *path,
                            const char *query, const char *bearer);

/* A chunk of request body: kept for /api up to max-body, else discarded. */
void gw__http_body(gw_t *gw, gw_http_req_t *req, const char *data, size_t len);

/* The request is complete: answer it or hand it to on_http. */
void gw__http_dispatch(gw_t *gw, gw_http_req_t *req);

/* The client went away: a request the hook holds is freed when the hook
 * responds; any other is freed now. */
void gw__http_conn_gone(gw_http_req_t *req);

/* Frees a request whose response was written. */
void gw__http_free(gw_http_req_t *req);

/* Writes {"error":{"code":code,"message":message}} into buf, NUL-terminated,
 * and returns its length (0, an empty string, if it does not fit in cap). */
size_t gw__json_error(char *buf, size_t cap, const char *code, const char *message);

/* ---- gw_io.c ---- */

/* Creates the libwebsockets context and binds; sets gw->port. */
im_err_t gw__io_start(gw_t *gw, char *err, size_t errlen);

/* Runs the event loop until gw__done(); then destroys the context (the last
 * connections' close callbacks run inside). */
im_err_t gw__io_run(gw_t *gw);

/* Destroys the context if gw__io_run did not, and frees the io state. */
void gw__io_free(gw_t *gw);

/* Wakes the loop so that it runs gw__run_posts.  Any thread. */
void gw__io_wake(gw_t *gw);

/* Asks for a writable callback on conn (a session's or a request's). */
void gw__io_want_write(gw_t *gw, void *conn);

/* conn is closing: the close frame goes out at the next writable callback,
 * and the connection is cut after GW_CLOSE_GRACE_S whatever happens. */
void gw__io_close_soon(gw_t *gw, void *conn);

#endif
