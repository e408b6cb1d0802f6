/*
 * gw_io.c - the gateway's event loop on libwebsockets 4.1: the one file that
 * includes it.  One context, one vhost, one protocol that serves both HTTP and
 * WebSocket on the same port.  Everything else in the gateway sees
 * connections as opaque `void *conn` and calls back through gw__io_*.
 *
 * Facts about lws 4.1.6 this file relies on, each checked against the real
 * library with an independent client (tests/gateway/):
 *   - An upgrade is offered to LWS_CALLBACK_HTTP_CONFIRM_UPGRADE while the
 *     connection is still plain HTTP, so a bad token gets a real HTTP 401
 *     before any handshake.  The response is written by hand: lws has not
 *     parsed the request line yet and its header helpers would say
 *     "HTTP/1.0", which WebSocket clients refuse to read.
 *     (FILTER_PROTOCOL_CONNECTION comes later, in the ws role already.)
 *   - Clients that send no Sec-WebSocket-Protocol get protocols[0].
 *   - lws_cancel_service is the only call that is safe from other threads; it
 *     raises LWS_CALLBACK_EVENT_WAIT_CANCELLED here, on the loop thread.
 *   - lws_sul_schedule gives one-shot timers on the loop; re-scheduling in
 *     the callback makes the periodic housekeeping tick.
 *   - Port 0 binds an ephemeral port; lws_get_vhost_listen_port reports it.
 *   - A pong with an empty payload never reaches the callback: our pings
 *     carry two bytes.
 *   - Failing a callback after lws_close_reason() sends the close frame but
 *     then drops the socket at once, so a client still sending sees a reset,
 *     not our close code: send_close() writes the frame itself and waits for
 *     the client's reply instead.
 *   - A POST with Content-Length: 0 still gets an HTTP_BODY callback, with
 *     no data, after the request was dispatched.
 */
#define _GNU_SOURCE /* accept4 */
#include "gw_int.h"

#include <ev.h>
#include <libwebsockets.h>
#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

/* Outbound frames are written straight from pooled buffers: lws puts the
 * WebSocket header in the LWS_PRE bytes before the payload. */
_Static_assert(IM_BUF_HEADROOM >= LWS_PRE, "im_buf headroom too small for lws_write");

/* Frames written per writable callback at most (fairness between sockets);
 * fewer when the socket stops taking data. */
#define WRITE_BATCH 32
/* Frames queued to one socket go out together, framed here and written in
 * one send() of at most this many bytes: a send per frame is what caps
 * fan-out (a 1,000-member group message is 1,000 sends), and a connection
 * that fell behind catches up in far fewer.  No extension is negotiated
 * (no permessage-deflate), so server frames are plain: FIN + opcode, length. */
#define COALESCE_MAX 16384
/* Per-connection receive buffer lws allocates for the life of the connection:
 * the largest part of an idle connection's memory that we choose (full
 * service, 5,000 idle connections: 3,521 bytes of RSS each with 1 KiB, 2,426
 * with 256 bytes; the bare core measured 3.2 KiB with 1 KiB and 6 KiB with
 * 4 KiB; 19,000 connections: 2,046 bytes with 256, see README for 192).  A
 * send frame with a 100-byte body (~180 bytes of JSON) fits; bigger ones
 * arrive in several RECEIVE callbacks and are reassembled in the session. */
#define RX_BUFFER 192
/* Largest single send(); without it lws would cut every frame into
 * RX_BUFFER-sized sends.  Above the largest default pool class (64 KiB). */
#define TX_PACKET (128 * 1024)
/* A reassembly buffer above this is released after its message. */
#define RX_KEEP   4096
#define QUERY_MAX 2048

typedef struct gw_io_s {
    gw_t *gw;
    /* lws's own loop is poll(): every turn walks every socket, half of the
     * gateway's CPU with 1,000 connections at 2 msgs/s each.  A libev loop
     * (epoll) of ours, which lws drives through its libev plugin, costs per
     * ready socket instead. */
    struct ev_loop *loop;
    void *loops[1];
    struct lws_context *ctx;
    struct lws_protocols protocols[2];
    lws_sorted_usec_list_t tick;
    /* --workers: our own listening socket (SO_REUSEPORT, shared with the
     * other workers), accepted here and handed to lws; -1 otherwise. */
    int lfd;
    ev_io accept_w;
    bool accept_paused; /* out of file descriptors: resumed by the tick */
    uint64_t emfile_logged_ms;
    /* gw__io_wake runs on other threads: it may only touch the context
     * under this lock, and the context is unpublished before destruction. */
    pthread_mutex_t wake_lock;
    struct lws_context *wake_ctx;
} gw_io_t;

/* Per-connection data (lws zeroes it).  One struct for both uses of the
 * connection: an HTTP request in flight, or a WebSocket session. */
typedef struct pss_s {
    gw_session_t *s;    /* WebSocket: set at ESTABLISHED */
    gw_http_req_t *req; /* HTTP: the request being answered */
    uint64_t user_id;   /* from the token, between the filter and ESTABLISHED */
    int peer_code;      /* close code the client sent, 0 if none */
} pss_t;

static gw_t *gw_of(struct lws *wsi)
{
    return wsi ? lws_context_user(lws_get_context(wsi)) : NULL;
}

/* ---- logging ---- */

static void log_emit(int level, const char *line)
{
    size_t n = strlen(line);
    im_log_level_t lv = (level & LLL_ERR)    ? IM_LOG_WARN
                        : (level & LLL_WARN) ? IM_LOG_INFO
                                             : IM_LOG_DEBUG;

    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    im_log(lv, "lws: %.*s", (int)n, line);
}

/* lws errors are mostly about misbehaving clients: they go out as our
 * warnings; its notices only at debug. */
static void log_setup(void)
{
    int levels = LLL_ERR | LLL_WARN;

    if (im_log_enabled(IM_LOG_DEBUG))
        levels |= LLL_NOTICE;
    if (im_log_enabled(IM_LOG_TRACE))
        levels |= LLL_INFO;
    lws_set_log_level(levels, log_emit);
}

/* ---- tokens ---- */

/* The token of an "Authorization: Bearer T" header, inside buf; NULL if none. */
static const char *bearer_of(struct lws *wsi, char *buf, size_t cap)
{
    int n = lws_hdr_copy(wsi, buf, (int)cap, WSI_TOKEN_HTTP_AUTHORIZATION);
    const char *t = buf + 7;

    if (n <= 7 || strncasecmp(buf, "Bearer ", 7) != 0)
        return NULL;
    while (*t == ' ')
        t++;
    return t;
}

/* The token of an upgrade request: "Authorization: Bearer T" (apps) or
 * "?token=T" (browsers cannot set headers on a WebSocket).  Moves it to the
 * start of buf and returns its length; 0 when there is none. */
static size_t find_token(struct lws *wsi, char *buf, size_t cap)
{
    const char *t = bearer_of(wsi, buf, cap);

    if (t == NULL)
        t = lws_get_urlarg_by_name(wsi, "token=", buf, (int)cap);
    if (t == NULL)
        return 0;
    memmove(buf, t, strlen(t) + 1);
    return strlen(buf);
}

/* ---- HTTP responses ---- */

static int write_headers(struct lws *wsi, int status, const char *ctype, size_t len, int auth)
{
    unsigned char buf[LWS_PRE + 1024], *start = buf + LWS_PRE, *p = start,
                                       *end = buf + sizeof buf - 1;

    if (lws_add_http_common_headers(wsi, (unsigned)status, ctype, (lws_filepos_t)len, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end) ||
        (auth && lws_add_http_header_by_name(wsi, (const unsigned char *)"www-authenticate:",
                                             (const unsigned char *)"Bearer", 6, &p, end)))
        return -1;
    return lws_finalize_write_http_header(wsi, start, &p, end) ? -1 : 0;
}

/* Answers an upgrade request with an HTTP error instead of switching
 * protocols, then hangs up.  The response is written whole by hand: at this
 * point lws has not yet looked at the request line, so its header helpers
 * would answer "HTTP/1.0", which WebSocket clients refuse to read. */
static int refuse_upgrade(gw_t *gw, struct lws *wsi, int status, gw_refuse_t why, const char *code,
                          const char *message)
{
    char buf[LWS_PRE + 1024], body[512], *p = buf + LWS_PRE;
    size_t blen = gw__json_error(body, sizeof body, code, message);
    const char *text = status == 401   ? "Unauthorized"
                       : status == 404 ? "Not Found"
                                       : "Service Unavailable";
    int n = snprintf(p, sizeof buf - LWS_PRE,
                     "HTTP/1.1 %d %s\r\n"
                     "content-type: application/json\r\n"
                     "content-length: %zu\r\n"
                     "cache-control: no-store\r\n"
                     "%s"
                     "connection: close\r\n\r\n%s",
                     status, text, blen, status == 401 ? "www-authenticate: Bearer\r\n" : "", body);

    gw->metrics.refused[why]++;
    im_log_debug("upgrade refused: %d %s", status, code);
    if (n > 0 && (size_t)n < sizeof buf - LWS_PRE)
        lws_write(wsi, (unsigned char *)p, (size_t)n, LWS_WRITE_HTTP);
    /* -1: hang up.  A few hundred bytes on a fresh socket: the kernel takes
     * them whole, nothing is left buffered in lws. */
    return -1;
}

static int confirm_upgrade(gw_t *gw, struct lws *wsi, const char *up)
{
    char path[16], token[IM_JWT_MAX_LEN + 16];
    im_jwt_claims_t claims;
    size_t len;
    im_err_t rc;

    if (up == NULL || strcasecmp(up, "websocket") != 0)
        return 0;
    if (gw->stopping)
        return refuse_upgrade(gw, wsi, 503, GW_REFUSE_STOPPING, "unavailable",
                              "the gateway is stopping");
    if (lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI) <= 0 || strcmp(path, "/ws") != 0)
        return refuse_upgrade(gw, wsi, 404, GW_REFUSE_NOT_FOUND, "not_found",
                              "the WebSocket endpoint is /ws");
    len = find_token(wsi, token, sizeof token);
    if (len == 0)
        return refuse_upgrade(gw, wsi, 401, GW_REFUSE_NO_TOKEN, "unauthorized",
                              "a token is required (?token= or Authorization: Bearer)");
    rc = gw__auth(gw, token, len, &claims);
    if (rc == IM_ETIMEDOUT)
        return refuse_upgrade(gw, wsi, 401, GW_REFUSE_EXPIRED, "token_expired",
                              "the token has expired: log in again");
    if (rc != IM_OK)
        return refuse_upgrade(gw, wsi, 401, GW_REFUSE_BAD_TOKEN, "unauthorized", "invalid token");
    return 0;
}

/* The upgrade was confirmed a moment ago; now that lws allocated our
 * per-connection data, read the token again to keep its claims. */
static int filter_ws(gw_t *gw, struct lws *wsi, pss_t *pss)
{
    char token[IM_JWT_MAX_LEN + 16];
    im_jwt_claims_t claims;
    size_t len = find_token(wsi, token, sizeof token);

    if (pss == NULL || len == 0 || gw__auth(gw, token, len, &claims) != IM_OK)
        return 1;
    pss->user_id = claims.sub;
    return 0;
}

/* ---- WebSocket sessions ---- */

/* Sends our close frame (once) and keeps the connection open.  lws 4.1, when
 * a callback fails after lws_close_reason(), shuts the socket right after the
 * close frame without waiting for the client's reply, so a client that is
 * still sending gets a reset instead of our close code.  Instead we write the
 * frame ourselves and go on reading (and dropping) input until the client's
 * close arrives (WS_PEER_INITIATED_CLOSE then hangs up) or GW_CLOSE_GRACE_S
 * runs out.  lws 4.1 has no public "close frame" write type, so the frame is
 * written raw: FIN + opcode 8, an unmasked length below 126, code, reason. */
static int send_close(struct lws *wsi, gw_session_t *s)
{
    unsigned char buf[LWS_PRE + 4 + GW_CLOSE_REASON_MAX], *p = buf + LWS_PRE;
    size_t rlen = s->close_reason ? strlen(s->close_reason) : 0;

    _Static_assert(GW_CLOSE_REASON_MAX + 2 <= 125, "close payload must fit a short frame");
    if (s->close_sent)
        return 0;
    s->close_sent = 1;
    p[0] = 0x88;
    p[1] = (unsigned char)(2 + rlen);
    p[2] = (unsigned char)(s->close_code >> 8);
    p[3] = (unsigned char)s->close_code;
    if (rlen > 0)
        memcpy(p + 4, s->close_reason, rlen);
    return lws_write(wsi, p, 4 + rlen, LWS_WRITE_RAW) < 0 ? -1 : 0;
}

/* Appends a chunk of a message that spans several callbacks. */
static void rx_append(gw_session_t *s, const char *in, size_t len)
{
    if (s->rx_len + len > s->rx_cap) {
        s->rx_cap = s->rx_len + len > 2 * s->rx_cap ? s->rx_len + len : 2 * s->rx_cap;
        s->rx = im_realloc(s->rx, s->rx_cap);
    }
    memcpy(s->rx + s->rx_len, in, len);
    s->rx_len += len;
}

static void rx_done(gw_session_t *s)
{
    s->rx_len = 0;
    if (s->rx_cap > RX_KEEP) {
        im_free(s->rx);
        s->rx = NULL;
        s->rx_cap = 0;
    }
}

/* A chunk of a client message.  Closes decided here are carried out by the
 * writable callback (send_close); the rest of the input is dropped. */
static int on_receive(gw_t *gw, struct lws *wsi, gw_session_t *s, const char *in, size_t len)
{
    int final = lws_is_final_fragment(wsi);

    if (s->closing)
        return 0;
    gw__session_touch(gw, s);
    if (lws_is_first_fragment(wsi))
        s->rx_len = 0;
    if (lws_frame_is_binary(wsi)) {
        gw__session_close(gw, s, 1003, "binary messages are not supported", GW_CLOSE_BINARY);
        return 0;
    }
    /* Refuse as soon as the frame header says it will not fit, before
     * buffering any of it. */
    if (s->rx_len + len + lws_remaining_packet_payload(wsi) > (size_t)gw->cfg.max_frame) {
        gw__session_close(gw, s, 1009, "message too big", GW_CLOSE_TOO_BIG);
        return 0;
    }
    if (final && s->rx_len == 0) {
        gw__frame_text(gw, s, in, len); /* the common case: no copy */
    } else {
        rx_append(s, in, len);
        if (final) {
            gw__frame_text(gw, s, s->rx, s->rx_len);
            if (!s->closing)
                rx_done(s);
        }
    }
    return 0;
}

/* Writes the frames at the head of s's queue that fit COALESCE_MAX as one
 * send.  Returns how many (0: the head alone is too big, for the plain path),
 * or -1 when the write failed. */
static int coalesce(gw_t *gw, struct lws *wsi, gw_session_t *s)
{
    static unsigned char out[LWS_PRE + COALESCE_MAX]; /* the loop thread's */
    unsigned char *p = out + LWS_PRE;
    size_t used = 0;
    int frames = 0;
    im_buf_t *b;

    while (frames < WRITE_BATCH && (b = gw_sendq_peek(s)) != NULL) {
        size_t len = im_buf_len(b), hdr = len < 126 ? 2 : len < 65536 ? 4 : 10;

        if (used + hdr + len > COALESCE_MAX)
            break;
        p[used] = 0x81; /* FIN, text */
        if (len < 126) {
            p[used + 1] = (unsigned char)len;
        } else if (len < 65536) {
            p[used + 1] = 126;
            p[used + 2] = (unsigned char)(len >> 8);
            p[used + 3] = (unsigned char)len;
        } else {
            p[used + 1] = 127;
            for (int i = 0; i < 8; i++)
                p[used + 2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
        }
        memcpy(p + used + hdr, im_buf_data(b), len);
        used += hdr + len;
        frames++;
        gw->metrics.frames_out++;
        gw->metrics.bytes_out += len;
        gw_sendq_drop_head(s);
    }
    if (frames == 0)
        return 0;
    return lws_write(wsi, p, used, LWS_WRITE_RAW) < 0 ? -1 : frames;
}

static int on_writable(gw_t *gw, struct lws *wsi, gw_session_t *s)
{
    unsigned char ping[LWS_PRE + 2] = {[LWS_PRE] = 'g', [LWS_PRE + 1] = 'w'};
    int coalesced;
    im_buf_t *b;

    if (s->closing)
        return send_close(wsi, s);
    if (s->ping_due) {
        s->ping_due = 0;
        gw->metrics.pings++;
        /* A non-empty payload: lws 4.1 does not report empty pongs to the
         * callback, and the pong is what proves the client alive. */
        if (lws_write(wsi, ping + LWS_PRE, 2, LWS_WRITE_PING) < 0)
            return -1;
    } else if (gw_sendq_len(s) > 1 && (coalesced = coalesce(gw, wsi, s)) != 0) {
        if (coalesced < 0)
            return -1;
    } else {
        for (int n = 0; n < WRITE_BATCH && (b = gw_sendq_peek(s)) != NULL; n++) {
            size_t len = im_buf_len(b);

            if (lws_write(wsi, (unsigned char *)im_buf_data(b), len, LWS_WRITE_TEXT) < 0)
                return -1;
            gw->metrics.frames_out++;
            gw->metrics.bytes_out += len;
            gw_sendq_drop_head(s);
            if (lws_send_pipe_choked(wsi))
                break;
        }
    }
    if (gw_sendq_len(s) > 0)
        lws_callback_on_writable(wsi);
    return 0;
}

static int ws_callback(gw_t *gw, struct lws *wsi, enum lws_callback_reasons reason, pss_t *pss,
                       void *in, size_t len)
{
    gw_session_t *s = pss ? pss->s : NULL;

    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return filter_ws(gw, wsi, pss);
    case LWS_CALLBACK_ESTABLISHED:
        /* A session opened during shutdown is closed at once: through the
         * writable callback, since failing ESTABLISHED sends no close frame. */
        pss->s = gw__session_open(gw, wsi, pss->user_id);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        return s ? on_receive(gw, wsi, s, in, len) : -1;
    case LWS_CALLBACK_RECEIVE_PONG:
        if (s != NULL)
            gw__session_touch(gw, s);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return s ? on_writable(gw, wsi, s) : 0;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        pss->peer_code = len >= 2 ? ((unsigned char *)in)[0] << 8 | ((unsigned char *)in)[1] : 1005;
        /* The reply to our close ends the handshake: hang up.  Otherwise
         * returning 0 lets lws echo the client's close. */
        return s != NULL && s->close_sent;
    case LWS_CALLBACK_CLOSED:
        if (s != NULL) {
            pss->s = NULL;
            gw__session_closed(gw, s, pss->peer_code);
        }
        return 0;
    default:
        return 0;
    }
}

/* ---- HTTP ---- */

static const char *method_name(int m)
{
    static const char *const names[] = {"GET",   "POST",   "OPTIONS", "PUT",
                                        "PATCH", "DELETE", "CONNECT", "HEAD"};

    return m >= 0 && (size_t)m < sizeof names / sizeof names[0] ? names[m] : "OTHER";
}

/* The URL arguments as lws decoded them, joined by '&'. */
static void collect_query(struct lws *wsi, char *buf, size_t cap)
{
    char frag[QUERY_MAX];
    size_t n = 0;

    buf[0] = '\0';
    for (int i = 0; lws_hdr_copy_fragment(wsi, frag, sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i) >= 0;
         i++) {
        int m = snprintf(buf + n, cap - n, "%s%s", n ? "&" : "", frag);

        if (m < 0 || (size_t)m >= cap - n)
            break;
        n += (size_t)m;
    }
}

static const char *mime_of(const char *file)
{
    static const struct {
        const char *ext, *type;
    } ours[] = {{".json", "application/json"},
                {".map", "application/json"},
                {".wasm", "application/wasm"},
                {".webmanifest", "application/manifest+json"},
                {".mjs", "text/javascript"}};
    const char *dot = strrchr(file, '.'), *t;

    for (size_t i = 0; dot && i < sizeof ours / sizeof ours[0]; i++) {
        if (strcmp(dot, ours[i].ext) == 0)
            return ours[i].type;
    }
    t = lws_get_mimetype(file, NULL);
    return t ? t : "application/octet-stream";
}

/* Maps a URL path to a regular file under static-dir: no segment may start
 * with '.', which rules out "..", and a directory means its index.html. */
static int static_file(gw_t *gw, const char *path, char *out, size_t cap)
{
    struct stat st;
    int n;

    if (path[0] != '/' || strstr(path, "/.") != NULL || strchr(path, '\\') != NULL)
        return 0;
    n = snprintf(out, cap, "%s%s", gw->static_dir, path);
    if (n < 0 || (size_t)n >= cap || stat(out, &st) != 0)
        return 0;
    if (S_ISDIR(st.st_mode)) {
        n = snprintf(out, cap, "%s%s%sindex.html", gw->static_dir, path,
                     path[strlen(path) - 1] == '/' ? "" : "/");
        if (n < 0 || (size_t)n >= cap || stat(out, &st) != 0)
            return 0;
    }
    return S_ISREG(st.st_mode);
}

static int serve_static(gw_t *gw, struct lws *wsi, const char *file)
{
    int n;

    gw->metrics.http[GW_ROUTE_STATIC]++;
    n = lws_serve_http_file(wsi, file, mime_of(file), NULL, 0);
    /* <0: failed; >0: sent whole and the transaction is over, so the
     * connection goes on only if lws can reuse it. */
    if (n < 0 || (n > 0 && lws_http_transaction_completed(wsi)))
        return -1;
    return 0;
}

/* The declared body length; 0 when there is none. */
static unsigned long long content_length(struct lws *wsi)
{
    char buf[32];

    if (lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0)
        return 0;
    return strtoull(buf, NULL, 10);
}

/* Hands a complete request on; an /api request that waits for its hook gets
 * api-timeout before lws cuts the connection. */
static void dispatch(gw_t *gw, struct lws *wsi, gw_http_req_t *req)
{
    gw__http_dispatch(gw, req);
    if (req->state == GW_HTTP_WITH_HOOK)
        lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT,
                        (int)((gw->cfg.api_timeout_ms + 999) / 1000));
}

static int on_http(gw_t *gw, struct lws *wsi, pss_t *pss, const char *path)
{
    char file[PATH_MAX], query[QUERY_MAX], auth[IM_JWT_MAX_LEN + 16];
    unsigned long long body;
    char *uri;
    int ulen, m = lws_http_get_uri_and_method(wsi, &uri, &ulen);
    gw_http_req_t *req;

    if ((m == LWSHUMETH_GET || m == LWSHUMETH_HEAD) && gw__http_route(path) == GW_ROUTE_STATIC &&
        gw->static_dir != NULL && static_file(gw, path, file, sizeof file))
        return serve_static(gw, wsi, file);
    collect_query(wsi, query, sizeof query);
    req = gw__http_new(gw, wsi, method_name(m), path, query, bearer_of(wsi, auth, sizeof auth));
    pss->req = req;
    body = content_length(wsi);
    if (body > 0) {
        /* The body arrives in HTTP_BODY callbacks; an oversized one is still
         * read (and dropped) so the 413 goes out on a clean connection. */
        if (body > (unsigned long long)gw->cfg.max_body)
            req->body_too_big = req->route == GW_ROUTE_API;
        return 0;
    }
    dispatch(gw, wsi, req);
    return 0;
}

static int http_writable(struct lws *wsi, pss_t *pss)
{
    gw_http_req_t *req = pss->req;
    int auth;

    if (req == NULL || req->state < GW_HTTP_HEADERS)
        return 0;
    if (req->state == GW_HTTP_HEADERS) {
        auth = req->status == 401;
        if (write_headers(wsi, req->status, req->content_type, req->resp_len, auth) < 0)
            return -1;
        req->state = GW_HTTP_BODY;
        if (req->resp_len > 0) {
            lws_callback_on_writable(wsi);
            return 0;
        }
    } else if (lws_write(wsi, (unsigned char *)req->resp + IM_BUF_HEADROOM, req->resp_len,
                         LWS_WRITE_HTTP_FINAL) < 0) {
        return -1;
    }
    pss->req = NULL;
    gw__http_free(req);
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int http_callback(gw_t *gw, struct lws *wsi, enum lws_callback_reasons reason, pss_t *pss,
                         void *in, size_t len)
{
    switch (reason) {
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return confirm_upgrade(gw, wsi, in);
    case LWS_CALLBACK_HTTP:
        return on_http(gw, wsi, pss, in);
    /* lws 4.1 also reports an empty body (Content-Length: 0) that on_http
     * already dispatched: only a request still reading is fed here. */
    case LWS_CALLBACK_HTTP_BODY:
        if (pss->req != NULL && pss->req->state == GW_HTTP_READING)
            gw__http_body(gw, pss->req, in, len);
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (pss->req != NULL && pss->req->state == GW_HTTP_READING)
            dispatch(gw, wsi, pss->req);
        return 0;
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return http_writable(wsi, pss);
    case LWS_CALLBACK_HTTP_FILE_COMPLETION:
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    case LWS_CALLBACK_CLOSED_HTTP:
        if (pss != NULL && pss->req != NULL) {
            gw__http_conn_gone(pss->req);
            pss->req = NULL;
        }
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, pss, in, len);
    }
}

/* ---- the protocol callback ---- */

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    gw_t *gw = gw_of(wsi);
    pss_t *pss = user;

    if (gw == NULL)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        gw__run_posts(gw);
        return 0;
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
        return gw->stopping; /* no new connections once stopping */
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
    case LWS_CALLBACK_ESTABLISHED:
    case LWS_CALLBACK_RECEIVE:
    case LWS_CALLBACK_RECEIVE_PONG:
    case LWS_CALLBACK_SERVER_WRITEABLE:
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    case LWS_CALLBACK_CLOSED:
        return ws_callback(gw, wsi, reason, pss, in, len);
    default:
        return http_callback(gw, wsi, reason, pss, in, len);
    }
}

/* ---- the loop ---- */

static void tick_cb(lws_sorted_usec_list_t *sul)
{
    gw_io_t *io = lws_container_of(sul, gw_io_t, tick);

    if (io->gw->stopping && io->lfd >= 0) { /* new connections: to the other workers */
        ev_io_stop(io->loop, &io->accept_w);
        close(io->lfd);
        io->lfd = -1;
    }
    if (io->accept_paused && io->lfd >= 0) {
        io->accept_paused = false;
        ev_io_start(io->loop, &io->accept_w);
    }
    gw__tick(io->gw);
    lws_sul_schedule(io->ctx, 0, &io->tick, tick_cb, GW_TICK_MS * LWS_US_PER_MS);
}

/* No lws idle policy: the gateway pings and closes idle connections itself on
 * its timing wheel.  lws's own validity timer is re-armed on every frame
 * received and sits in a sorted list that each insertion walks: 85% of the
 * gateway's CPU holding 10,000 idle connections. */
static const lws_retry_bo_t no_validity = {.secs_since_valid_ping = 0,
                                           .secs_since_valid_hangup = 0};

static void fill_info(gw_t *gw, gw_io_t *io, struct lws_context_creation_info *info)
{
    const char *h = gw->listen_host;
    int any = strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0 || strcmp(h, "*") == 0;

    memset(info, 0, sizeof(*info));
    /* With workers, the vhost listens on nothing: sockets come from
     * accept_cb through lws_adopt_socket_vhost(). */
    info->port = io->lfd >= 0 ? CONTEXT_PORT_NO_LISTEN_SERVER : gw->listen_port;
    info->iface = any ? NULL : h;
    /* An IPv4 address (or 0.0.0.0) needs an IPv4 socket; "::" is dual-stack. */
    if (strchr(h, ':') == NULL)
        info->options |= LWS_SERVER_OPTION_DISABLE_IPV6;
    info->protocols = io->protocols;
    info->user = gw;
    info->vhost_name = gw->gateway_id;
    info->server_string = "imserver-gateway";
    info->options |= LWS_SERVER_OPTION_LIBEV;
    info->retry_and_idle_policy = &no_validity;
    io->loops[0] = io->loop;
    info->foreign_loops = io->loops;
    info->timeout_secs = 10;
    /* Header buffers are taken per connection only during the handshake;
     * enough for a burst of concurrent upgrades without queueing. */
    info->max_http_header_pool = 1024;
}

/* lws, given an address no interface has, does not fail: it keeps retrying
 * in the background (for interfaces that come up late) while nothing
 * listens.  A server should refuse to start instead: probe with a bind to an
 * ephemeral port. */
static int address_is_local(const char *host)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
    struct addrinfo *ai;
    int fd, ok;

    if (getaddrinfo(host, "0", &hints, &ai) != 0)
        return 0;
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ok = fd >= 0 && bind(fd, ai->ai_addr, ai->ai_addrlen) == 0;
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return ok;
}

/* --workers: every worker binds its own socket to the same address with
 * SO_REUSEPORT, and the kernel spreads new connections over them.  lws 4.1
 * sets SO_REUSEPORT only for its own service threads, so the workers listen
 * here and give each accepted socket to lws. */
static int listen_shared(const char *host, int port, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_PASSIVE};
    struct addrinfo *ai;
    char service[16];
    int fd = -1, one = 1, zero = 0;

    snprintf(service, sizeof(service), "%d", port);
    if (getaddrinfo(strcmp(host, "*") == 0 ? "0.0.0.0" : host, service, &hints, &ai) != 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: not a numeric address", host, port);
        return -1;
    }
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && ai->ai_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

/* New connections on our own listening socket (--workers), handed to lws.
 * Out of file descriptors, this worker stops accepting until the next tick
 * (the kernel still queues this socket's share of new connections: they
 * wait in its backlog).  Stopping, it listens no more: the kernel sends new
 * connections to the other workers' sockets. */
static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    gw_io_t *io = lws_container_of(w, gw_io_t, accept_w);
    struct lws_vhost *vh = lws_get_vhost_by_name(io->ctx, io->gw->gateway_id);
    int one = 1;

    (void)revents;
    if (io->gw->stopping) {
        ev_io_stop(loop, w);
        close(io->lfd);
        io->lfd = -1;
        return;
    }
    for (int i = 0; i < 64; i++) {
        int fd = accept4(io->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                uint64_t now = im_mono_ms();

                if (now >= io->emfile_logged_ms + 10000) {
                    io->emfile_logged_ms = now;
                    im_log_warn("gateway: out of file descriptors (%zu sessions): not "
                                "accepting for a moment",
                                gw_session_count(io->gw));
                }
                ev_io_stop(loop, w);
                io->accept_paused = true;
            }
            return;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (vh == NULL)
            close(fd);
        else
            lws_adopt_socket_vhost(vh, fd); /* on failure lws has closed fd */
    }
}

im_err_t gw__io_start(gw_t *gw, char *err, size_t errlen)
{
    struct lws_context_creation_info info;
    gw_io_t *io = im_calloc(1, sizeof(*io));

    io->gw = gw;
    io->lfd = -1;
    pthread_mutex_init(&io->wake_lock, NULL);
    io->protocols[0] = (struct lws_protocols){
        .name = "im.v1",
        .callback = callback,
        .per_session_data_size = sizeof(pss_t),
        .rx_buffer_size = RX_BUFFER,
        .tx_packet_size = TX_PACKET,
    };
    gw->io = io;
    log_setup();
    if (!address_is_local(gw->listen_host)) {
        snprintf(err, errlen, "cannot listen on %s: not an address of this host", gw->listen_host);
        return IM_EINVAL;
    }
    io->loop = ev_loop_new(EVBACKEND_EPOLL);
    if (io->loop == NULL) {
        snprintf(err, errlen, "cannot make the event loop (epoll)");
        return IM_EIO;
    }
    if (gw->cfg.workers > 1 &&
        (io->lfd = listen_shared(gw->listen_host, gw->listen_port, err, errlen)) < 0)
        return IM_EIO;
    fill_info(gw, io, &info);
    io->ctx = lws_create_context(&info);
    if (io->ctx == NULL) {
        snprintf(err, errlen,
                 "cannot listen on %s:%d (address in use? or lws's libev plugin, package "
                 "libwebsockets-evlib-ev, is missing)",
                 gw->listen_host, gw->listen_port);
        return IM_EIO;
    }
    if (io->lfd >= 0) {
        gw->port = gw->listen_port;
        ev_io_init(&io->accept_w, accept_cb, io->lfd, EV_READ);
        ev_io_start(io->loop, &io->accept_w);
    } else {
        gw->port = lws_get_vhost_listen_port(lws_get_vhost_by_name(io->ctx, gw->gateway_id));
    }
    pthread_mutex_lock(&io->wake_lock);
    io->wake_ctx = io->ctx;
    pthread_mutex_unlock(&io->wake_lock);
    lws_sul_schedule(io->ctx, 0, &io->tick, tick_cb, GW_TICK_MS * LWS_US_PER_MS);
    return IM_OK;
}

static void destroy_context(gw_io_t *io)
{
    if (io->lfd >= 0) {
        ev_io_stop(io->loop, &io->accept_w);
        close(io->lfd);
        io->lfd = -1;
    }
    if (io->ctx == NULL)
        return;
    pthread_mutex_lock(&io->wake_lock);
    io->wake_ctx = NULL;
    pthread_mutex_unlock(&io->wake_lock);
    lws_sul_cancel(&io->tick);
    lws_context_destroy(io->ctx);
    io->ctx = NULL;
}

im_err_t gw__io_run(gw_t *gw)
{
    gw_io_t *io = gw->io;

    /* One turn at a time: the tick (a timer on this loop) brings it back to
     * check for the end at least every GW_TICK_MS. */
    while (!gw__done(gw))
        ev_run(io->loop, EVRUN_ONCE);
    if (gw_session_count(gw) > 0)
        im_log_info("gateway: cutting %zu sessions that did not close in time",
                    gw_session_count(gw));
    destroy_context(io);
    return IM_OK;
}

void gw__io_free(gw_t *gw)
{
    gw_io_t *io = gw->io;

    if (io == NULL)
        return;
    destroy_context(io);
    if (io->loop != NULL)
        ev_loop_destroy(io->loop);
    pthread_mutex_destroy(&io->wake_lock);
    im_free(io);
    gw->io = NULL;
}

void gw__io_wake(gw_t *gw)
{
    gw_io_t *io = gw->io;

    if (io == NULL)
        return;
    pthread_mutex_lock(&io->wake_lock);
    if (io->wake_ctx != NULL)
        lws_cancel_service(io->wake_ctx);
    pthread_mutex_unlock(&io->wake_lock);
}

void gw__io_want_write(gw_t *gw, void *conn)
{
    (void)gw;
    if (conn != NULL)
        lws_callback_on_writable(conn);
}

void gw__io_close_soon(gw_t *gw, void *conn)
{
    (void)gw;
    if (conn == NULL)
        return;
    lws_callback_on_writable(conn);
    lws_set_timeout(conn, PENDING_TIMEOUT_USER_OK, GW_CLOSE_GRACE_S);
}
