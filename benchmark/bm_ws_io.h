/*
 * bm_ws_io.h - the load tool's WebSocket client engine: one epoll loop, any
 * number of non-blocking client connections, no thread per connection.  The
 * one benchmark file that touches sockets on the hot path.
 *
 * A connection (bm_ws_t) is caller memory, usually the first member of the
 * caller's per-client struct; it costs ~80 bytes while idle: input that ends
 * mid-frame and output the kernel did not take are copied to the heap only
 * when that happens, and freed once consumed.  Everything is read into and
 * framed in the loop's shared buffers.
 *
 * What it speaks (RFC 6455, client side): the HTTP/1.1 upgrade with a random
 * Sec-WebSocket-Key and a checked Sec-WebSocket-Accept; masked text frames
 * out; text frames in (fragmented ones reassembled), ping answered by a pong
 * with the same payload, close answered (and our own close sent on request),
 * then the TCP close is left to the server, as RFC 6455 7.1.1 asks, so TIME_WAIT
 * lands on the server side.  No extensions, no subprotocol.
 *
 * Callbacks (bm_ws_ops_t) run on the loop thread from inside bm_loop_once.
 * They may send on or close their own connection and any other, but must not
 * restart a connection that just ended (bm_ws_connect) from inside end_cb:
 * arm a timer instead (events of the same batch may still name it).
 *
 * Threads: a loop and its connections belong to the thread that runs it.
 */
#ifndef BM_WS_IO_H
#define BM_WS_IO_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "im_err.h"
#include "im_wheel.h"

typedef struct bm_loop_s bm_loop_t;
typedef struct bm_ws_s bm_ws_t;

typedef enum {
    BM_WS_IDLE = 0,   /* no socket */
    BM_WS_CONNECTING, /* TCP connect in progress, upgrade request queued */
    BM_WS_UPGRADING,  /* request sent, waiting for "101 Switching Protocols" */
    BM_WS_OPEN,       /* frames flow */
    BM_WS_CLOSING,    /* our close frame sent, waiting for the server's */
    BM_WS_CLOSE_WAIT  /* close frames exchanged, waiting for the server's FIN */
} bm_ws_state_t;

/* Why a connection ended (end_cb). */
typedef enum {
    BM_END_CLEAN = 0, /* close handshake done and TCP closed; code: the close code */
    BM_END_CONNECT,   /* TCP connect failed; err: errno */
    BM_END_HTTP,      /* the upgrade was answered with another status; code: it */
    BM_END_PROTOCOL,  /* the server broke RFC 6455 or sent a bad handshake */
    BM_END_EOF,       /* the server hung up without a close frame */
    BM_END_ERROR,     /* read or write failed; err: errno (ECONNRESET, EPIPE, ...) */
    BM_END_ABORT      /* bm_ws_abort */
} bm_end_t;

struct bm_ws_s {
    char *in;             /* unparsed input (a partial frame or header), or NULL */
    char *out;            /* output the socket has not taken yet, or NULL */
    char *frag;           /* a fragmented message being reassembled, or NULL */
    bm_ws_t *next_dead;   /* the loop's list of connections to end */
    uint64_t accept_hash; /* hash of the Sec-WebSocket-Accept we expect */
    uint32_t in_len, out_len, out_off, frag_len;
    int fd;              /* -1 when idle */
    int err;             /* errno of BM_END_CONNECT / BM_END_ERROR */
    uint16_t code;       /* close code received (1005: none), or the HTTP status */
    uint8_t state;       /* bm_ws_state_t */
    uint8_t peer_closed; /* the server's close frame came first */
    uint8_t dead;        /* bm_end_t + 1 while queued to end, else 0 */
    uint8_t want_out;    /* EPOLLOUT registered */
};

typedef struct bm_ws_ops_s {
    /* The upgrade succeeded: frames may be sent. */
    void (*open_cb)(bm_ws_t *ws, void *arg);
    /* A complete text message (not NUL-terminated; valid until return). */
    void (*text_cb)(bm_ws_t *ws, const char *data, size_t len, void *arg);
    /* The connection is over and its socket closed; ws is idle again and may
     * be reconnected, but not from here (see the top of this file). */
    void (*end_cb)(bm_ws_t *ws, bm_end_t why, void *arg);
} bm_ws_ops_t;

/* Totals of the loop, for the report. */
typedef struct bm_loop_stats_s {
    uint64_t bytes_in, bytes_out;
    uint64_t frames_in, frames_out;
    uint64_t pings;        /* server pings answered */
    uint64_t binary;       /* binary messages received (the protocol has none) */
    uint64_t out_buffered; /* sends the kernel did not take whole at once */
    uint64_t iterations;   /* bm_loop_once calls */
    uint64_t max_busy_ns;  /* longest time one call spent working (not waiting) */
    uint64_t slow;         /* calls that worked for more than 100 ms */
} bm_loop_stats_t;

/* A loop with the callbacks ops (copied) and their arg.  Frames up to
 * max_frame bytes are accepted (larger: BM_END_PROTOCOL).  Free with
 * bm_loop_free.  Returns NULL with errno set if epoll cannot be had. */
bm_loop_t *bm_loop_new(const bm_ws_ops_t *ops, void *arg, size_t max_frame);

/* Aborts every connection still open (without callbacks) and frees the loop. */
void bm_loop_free(bm_loop_t *l);

/* The loop's timing wheel (1 ms ticks, advanced by bm_loop_once). */
im_wheel_t *bm_loop_wheel(bm_loop_t *l);

const bm_loop_stats_t *bm_loop_stats(const bm_loop_t *l);

/* Waits for socket events or the next timer, at most max_wait_ms, and runs
 * every callback due.  Returns the number of socket events handled. */
int bm_loop_once(bm_loop_t *l, int max_wait_ms);

/* Prepares an idle connection (fd -1).  Call once before first use. */
void bm_ws_init(bm_ws_t *ws);

/* Starts connecting ws (idle) to dst, from src if not NULL (its port 0: the
 * kernel picks one per destination, IP_BIND_ADDRESS_NO_PORT), and queues the
 * upgrade request "GET path" with Host: host.  extra_headers (NULL or lines
 * each ending in \r\n) are added.  Returns IM_OK (open_cb or end_cb follows),
 * or an error with ws->err set and ws still idle: IM_EFULL when no socket can
 * be had (EMFILE, ENFILE), IM_EIO when connect() failed at once
 * (EADDRNOTAVAIL: out of ports).  No callback runs from inside. */
im_err_t bm_ws_connect(bm_loop_t *l, bm_ws_t *ws, const struct sockaddr_in *dst,
                       const struct sockaddr_in *src, const char *host, const char *path,
                       const char *extra_headers);

/* Sends data[0..len) as one masked text frame.  Returns IM_OK (sent or
 * buffered), IM_ECLOSED when ws is not open (or is ending: end_cb follows). */
im_err_t bm_ws_send_text(bm_loop_t *l, bm_ws_t *ws, const char *data, size_t len);

/* Starts the close handshake with code (e.g. 1000); end_cb follows with
 * BM_END_CLEAN once the server answers and hangs up, or never: the caller
 * bounds the wait with bm_ws_abort.  A no-op unless ws is open. */
void bm_ws_close(bm_loop_t *l, bm_ws_t *ws, uint16_t code);

/* Closes the socket now (an RST if data is unread) and returns ws to idle.
 * end_cb runs with BM_END_ABORT unless quiet. */
void bm_ws_abort(bm_loop_t *l, bm_ws_t *ws, int quiet);

#endif
