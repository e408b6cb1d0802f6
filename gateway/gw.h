/*
 * gw.h - the WebSocket gateway as a library (imgateway): one HTTP port that
 * upgrades authenticated clients to WebSocket sessions on GET /ws, answers
 * /healthz and /metrics, hands /api/... to a hook and serves static files.
 *
 * Threads: a gateway runs on one event-loop thread, the one that calls
 * gw_run (libwebsockets has one service thread per context).  Every function
 * here is for that thread, called from a hook or from a closure run by
 * gw_post, except where its comment says "any thread".  Other threads hand
 * work to the loop with gw_post and never hold a session pointer: they name
 * sessions by their 64-bit id, which stays unique after the session closes
 * (a send to a closed session returns IM_ENOENT and does nothing).
 *
 * Client protocol (JSON text frames, one message per frame):
 *   -> {"type":"ping","cid":"c1"}        <- {"type":"pong","cid":"c1"}
 *   -> anything else with a string "type" goes to the on_frame hook;
 *      without one (or for an unknown type):
 *   <- {"type":"error","code":"unknown_type","message":"...","cid":"c1"}
 *   error codes: bad_json, bad_request, unknown_type, rate_limited, internal.
 *   "cid", if present (a string or a number), is echoed in the reply.
 *   Close codes: 1000 idle timeout, 1001 gateway stopping, 1003 binary
 *   message, 1007 invalid UTF-8, 1008 slow consumer or sustained rate-limit
 *   abuse, 1009 message above max-frame.
 *
 * Typical use (gateway/main.c):
 *   gw_t *gw = gw_new(&cfg, &hooks, NULL, err, sizeof err);
 *   gw_run(gw);            // until gw_request_stop(), e.g. from a signal handler
 *   gw_free(gw);
 */
#ifndef GW_H
#define GW_H

#include <stddef.h>
#include <stdint.h>

#include "gw_config.h"
#include "gw_metrics.h"
#include "im_buf.h"
#include "im_err.h"
#include "im_json.h"

typedef struct gw_s gw_t;
typedef struct gw_http_req_s gw_http_req_t;

/* What the hooks learn about a session.  Pointers are valid during the call. */
typedef struct gw_session_info_s {
    uint64_t id;      /* the session id: unique for the life of the process */
    uint64_t user_id; /* the token's sub */
    void *data;       /* the hooks' session_data_size bytes (zeroed at open), or NULL */
} gw_session_info_t;

/* A client message with a string "type" that the gateway does not handle
 * itself.  doc and type are valid during the on_frame call only: copy what
 * must outlive it. */
typedef struct gw_frame_s {
    uint64_t session_id;
    uint64_t user_id;
    const char *type;     /* NUL-terminated, at most GW_TYPE_MAX bytes */
    const im_json_t *doc; /* the whole message; token 0 is the object */
    int cid;              /* token index of "cid", or negative when absent */
} gw_frame_t;

#define GW_TYPE_MAX 32

/*
 * Hooks for the service wiring (logic over gRPC, delivery over AMQP).  Every
 * member may be NULL; the default is noted.  All run on the loop thread, and
 * each may call any loop-thread function of this file.
 */
typedef struct gw_hooks_s {
    void *arg; /* passed to every hook */

    /* A session opened (after the upgrade).  Default: nothing. */
    void (*on_open)(gw_t *gw, const gw_session_info_t *s, void *arg);

    /* A session is gone; code is the close code sent or received (1006 when
     * the connection just dropped).  The id is already unusable: sends to it
     * return IM_ENOENT.  Default: nothing. */
    void (*on_close)(gw_t *gw, const gw_session_info_t *s, int code, void *arg);

    /* A client message of a type the gateway does not handle itself.  Return
     * IM_OK when handled (replying now or later is up to the hook), IM_ENOENT
     * for an unknown type (the client gets error "unknown_type"), or another
     * error (the client gets error "internal").  Default: unknown_type. */
    im_err_t (*on_frame)(gw_t *gw, const gw_frame_t *f, void *arg);

    /* An HTTP request under /api/.  The hook owns req until it passes it to
     * gw_http_respond, exactly once, now or later (on the loop thread, e.g.
     * from a gw_post closure).  Default: 404 {"error":{"code":"not_found",...}}. */
    void (*on_http)(gw_t *gw, gw_http_req_t *req, void *arg);

    /* /healthz: may add members to the "checks" object w is inside (a key,
     * then a value, per check).  Return 0 when healthy; non-zero makes the
     * answer 503 with "status":"unavailable".  Default: healthy. */
    int (*on_health)(gw_t *gw, im_jw_t *w, void *arg);

    /* /metrics: may append more Prometheus text (complete lines) to out. */
    void (*on_metrics)(gw_t *gw, gw_sb_t *out, void *arg);

    /* Bytes the hooks keep per session, allocated with the session (zeroed)
     * and freed after on_close: see gw_session_info_t.data and
     * gw_session_data().  Saves a map and an allocation per connection. */
    size_t session_data_size;
} gw_hooks_t;

/* Makes a gateway from cfg (copied) and hooks (copied; NULL = all defaults)
 * and binds its listening socket, so gw_port() is known on return.  pool is
 * the buffer pool for outbound frames, shared with other threads that encode
 * them; NULL makes a private one with the default classes.  The pool must
 * outlive the gateway.  Returns NULL with a one-line reason in err on a bad
 * setting (a short secret, ping-interval >= idle-timeout, a bad listen
 * address) or when the address cannot be bound.  Call from the thread that
 * will call gw_run. */
gw_t *gw_new(const gw_config_t *cfg, const gw_hooks_t *hooks, im_bufpool_t *pool, char *err,
             size_t errlen);

/* Serves until gw_request_stop() is called, then stops gracefully: refuses
 * new connections, closes every session with 1001 "going away", waits up to
 * shutdown-timeout for them to go, and returns IM_OK.  Hooks and gw_post
 * closures run inside this call.  Once only. */
im_err_t gw_run(gw_t *gw);

/* Asks gw_run to stop; it notices within one tick (100 ms).  Any thread, and
 * async-signal-safe (it only sets an atomic flag). */
void gw_request_stop(gw_t *gw);

/* Frees the gateway after gw_run returned (or without running it).  Closures
 * still queued by gw_post run first, on this thread, and find no sessions;
 * /api requests still held by on_http must be answered by then (by such a
 * closure at the latest), or they leak.  No other thread may call gw_post
 * during or after this. */
void gw_free(gw_t *gw);

/* The bound port (the real one when cfg asked for port 0).  Any thread. */
int gw_port(const gw_t *gw);

/* The configured gateway id (e.g. "host-1234") and this process's unique
 * instance id ("<gateway id>-<16 hex digits>", new at every start; use it to
 * name per-instance queues).  Valid until gw_free.  Any thread. */
const char *gw_id(const gw_t *gw);
const char *gw_instance_id(const gw_t *gw);

/* The outbound frame pool (the one given to gw_new, or the private one).
 * Any thread. */
im_bufpool_t *gw_pool(const gw_t *gw);

/* Runs fn(gw, arg) on the loop thread, soon, in FIFO order per posting
 * thread.  Wakes the loop (lws_cancel_service) only when the queue was
 * empty, so a burst costs one wakeup.  Any thread.  Allocates one small node
 * per call; fn owns arg. */
typedef void (*gw_task_cb)(gw_t *gw, void *arg);
void gw_post(gw_t *gw, gw_task_cb fn, void *arg);

/*
 * Sessions (loop thread only).
 */

/* Queues buf (a complete JSON text message in an im_buf from the pool, len
 * set) to session_id.  The session takes its own reference, so one buffer may
 * be queued to many sessions and the caller still drops its own reference
 * afterwards.  Returns IM_OK; IM_ENOENT when no such session (closed);
 * IM_ECLOSED when it is closing; IM_EFULL when its queue held send-queue-max
 * frames already: the session is then closed with 1008 "slow consumer" and
 * buf is not queued. */
im_err_t gw_session_send(gw_t *gw, uint64_t session_id, im_buf_t *buf);

/* Queues buf to every session of user_id; returns how many took it. */
size_t gw_user_send(gw_t *gw, uint64_t user_id, im_buf_t *buf);

/* Stores up to max ids of user_id's sessions in ids and returns how many
 * sessions the user has here (which may be more than max). */
size_t gw_user_sessions(gw_t *gw, uint64_t user_id, uint64_t *ids, size_t max);

/* Starts closing a session with code (1000..4999) and a UTF-8 reason of at
 * most 63 bytes (longer is cut).  Queued frames are dropped; on_close follows
 * when the connection is gone.  IM_ENOENT when no such session. */
im_err_t gw_session_close(gw_t *gw, uint64_t session_id, int code, const char *reason);

/* Fills *out for a live session.  IM_ENOENT when none. */
im_err_t gw_session_info(gw_t *gw, uint64_t session_id, gw_session_info_t *out);

/* The hooks' data of a live session (gw_hooks_t.session_data_size bytes), or
 * NULL when there is no such session (or the size is 0).  Loop thread. */
void *gw_session_data(gw_t *gw, uint64_t session_id);

/* Calls fn for every live session, in no particular order.  fn may send to
 * and start closing sessions (a close completes later), not free the gateway.
 * Loop thread. */
void gw_sessions_foreach(gw_t *gw, void (*fn)(gw_t *gw, const gw_session_info_t *s, void *arg),
                         void *arg);

/* Live sessions on this gateway. */
size_t gw_session_count(const gw_t *gw);

/* Sends {"type":"error","code":code,"message":message} to a session, with
 * the "cid" of f echoed when f is not NULL and has one.  code is ASCII,
 * message UTF-8.  Returns what gw_session_send returns, or IM_EFULL when the
 * pool had no buffer. */
im_err_t gw_send_error(gw_t *gw, uint64_t session_id, const gw_frame_t *f, const char *code,
                       const char *message);

/* Appends the "cid" member of f's message to w (inside an object), if f has
 * one: for hooks building their own replies. */
void gw_frame_echo_cid(const gw_frame_t *f, im_jw_t *w);

/*
 * HTTP requests under /api/ (see on_http).  Accessors return strings owned by
 * req, valid until gw_http_respond.
 */
const char *gw_http_method(const gw_http_req_t *req); /* "GET", "POST", ... */
const char *gw_http_path(const gw_http_req_t *req);   /* "/api/v1/login" */
/* The URL arguments as decoded by lws, joined by '&' ("a=1&b=2"), or "". */
const char *gw_http_query(const gw_http_req_t *req);
/* The body, NUL-terminated ("" if none); *len (if not NULL) is its length. */
const char *gw_http_body(const gw_http_req_t *req, size_t *len);
const char *gw_http_bearer(const gw_http_req_t *req); /* Authorization: Bearer token, or NULL */
uint64_t gw_http_id(const gw_http_req_t *req);        /* for log lines */

/* Answers req with status, content_type (NULL: application/json) and body
 * (copied; may be NULL when len is 0), and releases req: it must not be used
 * afterwards.  If the client went away meanwhile, this only releases req.
 * Loop thread only. */
void gw_http_respond(gw_t *gw, gw_http_req_t *req, int status, const char *content_type,
                     const char *body, size_t len);

/* gw_http_respond with {"error":{"code":code,"message":message}}. */
void gw_http_respond_error(gw_t *gw, gw_http_req_t *req, int status, const char *code,
                           const char *message);

/* The gateway's counters (read-only; loop thread). */
const gw_metrics_t *gw_metrics(const gw_t *gw);

#endif
