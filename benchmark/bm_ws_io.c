#include "bm_ws_io.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "im_alloc.h"
#include "im_time.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define EVENTS     1024
#define HEADER_MAX 8192 /* longest upgrade response we read */
#define WS_GUID    "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

struct bm_loop_s {
    int ep;
    bm_ws_ops_t ops;
    void *arg;
    size_t max_frame;
    char *rx; /* shared read buffer: max_frame + header room */
    size_t rx_cap;
    char *tx; /* shared frame-building buffer */
    size_t tx_cap;
    uint64_t rng;  /* xorshift64*: masks and handshake keys */
    bm_ws_t *dead; /* connections to end after the current event or timer batch */
    im_wheel_t wheel;
    bm_loop_stats_t stats;
};

/* ------------------------------------------------------------ helpers */

static uint64_t rnd(bm_loop_t *l)
{
    /* Masks only have to be unpredictable to proxies between a browser and a
     * server (RFC 6455 10.3); a load tool talking to its own server needs no
     * cryptographic generator. */
    l->rng ^= l->rng >> 12;
    l->rng ^= l->rng << 25;
    l->rng ^= l->rng >> 27;
    return l->rng * UINT64_C(2685821657736338717);
}

static void base64(const unsigned char *in, size_t len, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;

    for (i = 0; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
}

/* SHA-1 (FIPS 180-4), for Sec-WebSocket-Accept only. */
static uint32_t rol(uint32_t x, unsigned n)
{
    return x << n | x >> (32 - n);
}

static void sha1_block(uint32_t h[5], const unsigned char *p)
{
    uint32_t w[80], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];

    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        uint32_t f, k, t;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

static void sha1(const void *data, size_t len, unsigned char out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    const unsigned char *p = data;
    unsigned char last[128] = {0};
    size_t full = len / 64 * 64, rest = len - full, n;
    uint64_t bits = (uint64_t)len * 8;

    for (size_t i = 0; i < full; i += 64)
        sha1_block(h, p + i);
    memcpy(last, p + full, rest);
    last[rest] = 0x80;
    n = rest + 1 + 8 <= 64 ? 64 : 128;
    for (int i = 0; i < 8; i++)
        last[n - 1 - i] = (unsigned char)(bits >> (8 * i));
    sha1_block(h, last);
    if (n == 128)
        sha1_block(h, last + 64);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

static uint64_t fnv1a(const char *s, size_t len)
{
    uint64_t h = UINT64_C(14695981039346656037);

    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * UINT64_C(1099511628211);
    return h;
}

/* ------------------------------------------------------------ loop */

bm_loop_t *bm_loop_new(const bm_ws_ops_t *ops, void *arg, size_t max_frame)
{
    bm_loop_t *l;
    int ep = epoll_create1(EPOLL_CLOEXEC);

    if (ep < 0)
        return NULL;
    l = im_calloc(1, sizeof(*l));
    l->ep = ep;
    l->ops = *ops;
    l->arg = arg;
    l->max_frame = max_frame;
    l->rx_cap = max_frame + HEADER_MAX + 14;
    l->rx = im_malloc(l->rx_cap);
    l->tx_cap = max_frame + 14;
    l->tx = im_malloc(l->tx_cap);
    if (getrandom(&l->rng, sizeof(l->rng), 0) != sizeof(l->rng) || l->rng == 0)
        l->rng = im_mono_ns() | 1;
    im_wheel_init(&l->wheel, im_mono_ms(), 1);
    return l;
}

im_wheel_t *bm_loop_wheel(bm_loop_t *l)
{
    return &l->wheel;
}

const bm_loop_stats_t *bm_loop_stats(const bm_loop_t *l)
{
    return &l->stats;
}

void bm_ws_init(bm_ws_t *ws)
{
    memset(ws, 0, sizeof(*ws));
    ws->fd = -1;
}

/* Closes the socket and frees the buffers: ws is idle again. */
static void teardown(bm_ws_t *ws)
{
    if (ws->fd >= 0)
        close(ws->fd); /* also leaves the epoll set: the fd is never dup'ed */
    im_free(ws->in);
    im_free(ws->out);
    im_free(ws->frag);
    ws->in = ws->out = ws->frag = NULL;
    ws->in_len = ws->out_len = ws->out_off = ws->frag_len = 0;
    ws->fd = -1;
    ws->state = BM_WS_IDLE;
    ws->want_out = 0;
}

/* Queues ws to end with why: the callback runs from reap(), never from inside
 * the call that found the problem (its caller may still be using ws). */
static void fail(bm_loop_t *l, bm_ws_t *ws, bm_end_t why, int err)
{
    if (ws->dead || ws->fd < 0)
        return;
    ws->dead = (uint8_t)(why + 1);
    ws->err = err;
    ws->next_dead = l->dead;
    l->dead = ws;
}

static void reap(bm_loop_t *l)
{
    while (l->dead != NULL) {
        bm_ws_t *ws = l->dead;
        bm_end_t why = (bm_end_t)(ws->dead - 1);

        l->dead = ws->next_dead;
        ws->next_dead = NULL;
        ws->dead = 0;
        teardown(ws);
        l->ops.end_cb(ws, why, l->arg);
    }
}

void bm_loop_free(bm_loop_t *l)
{
    if (l == NULL)
        return;
    im_wheel_destroy(&l->wheel);
    close(l->ep);
    im_free(l->rx);
    im_free(l->tx);
    im_free(l);
}

static void watch_out(bm_loop_t *l, bm_ws_t *ws, int on)
{
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = ws};

    if (ws->want_out == on)
        return;
    ws->want_out = (uint8_t)on;
    epoll_ctl(l->ep, EPOLL_CTL_MOD, ws->fd, &ev);
}

/* Writes what is buffered; true when nothing is left. */
static int flush(bm_loop_t *l, bm_ws_t *ws)
{
    while (ws->out_off < ws->out_len) {
        ssize_t n = send(ws->fd, ws->out + ws->out_off, ws->out_len - ws->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                watch_out(l, ws, 1);
                return 0;
            }
            fail(l, ws, BM_END_ERROR, errno);
            return 0;
        }
        l->stats.bytes_out += (uint64_t)n;
        ws->out_off += (uint32_t)n;
    }
    im_free(ws->out);
    ws->out = NULL;
    ws->out_len = ws->out_off = 0;
    watch_out(l, ws, 0);
    return 1;
}

/* Writes buf[0..len) after whatever is queued; the rest waits for EPOLLOUT. */
static void out_write(bm_loop_t *l, bm_ws_t *ws, const char *buf, size_t len)
{
    ssize_t n = 0;

    if (ws->dead)
        return;
    if (ws->out == NULL && ws->state != BM_WS_CONNECTING) {
        n = send(ws->fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                fail(l, ws, BM_END_ERROR, errno);
                return;
            }
            n = 0;
        }
        l->stats.bytes_out += (uint64_t)n;
        if ((size_t)n == len)
            return;
    }
    l->stats.out_buffered++;
    ws->out = im_realloc(ws->out, ws->out_len + (len - (size_t)n));
    memcpy(ws->out + ws->out_len, buf + n, len - (size_t)n);
    ws->out_len += (uint32_t)(len - (size_t)n);
    if (ws->state != BM_WS_CONNECTING)
        watch_out(l, ws, 1);
}

/* Frames payload with opcode op, masked, and writes it. */
static void write_frame(bm_loop_t *l, bm_ws_t *ws, unsigned op, const char *payload, size_t len)
{
    unsigned char *p = (unsigned char *)l->tx;
    size_t h = 2;
    uint32_t mask = (uint32_t)rnd(l);
    unsigned char m[4];

    if (len + 14 > l->tx_cap)
        return; /* callers keep frames within max_frame */
    p[0] = (unsigned char)(0x80 | op);
    if (len < 126) {
        p[1] = (unsigned char)(0x80 | len);
    } else if (len <= 0xffff) {
        p[1] = 0x80 | 126;
        p[2] = (unsigned char)(len >> 8);
        p[3] = (unsigned char)len;
        h = 4;
    } else {
        p[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            p[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
        h = 10;
    }
    memcpy(m, &mask, 4);
    memcpy(p + h, m, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        p[h + i] = (unsigned char)payload[i] ^ m[i & 3];
    l->stats.frames_out++;
    out_write(l, ws, l->tx, h + len);
}

/* ------------------------------------------------------------ connect, upgrade */

im_err_t bm_ws_connect(bm_loop_t *l, bm_ws_t *ws, const struct sockaddr_in *dst,
                       const struct sockaddr_in *src, const char *host, const char *path,
                       const char *extra_headers)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = ws};
    unsigned char key[16], digest[20];
    char key64[32], accept[32], keyguid[96];
    int one = 1, fd, n;
    size_t cap;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ws->err = errno;
        return IM_EFULL;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (src != NULL) {
        /* Without this, bind() reserves a port for the source address alone,
         * so one source address holds at most ~28k connections in total
         * instead of ~28k per destination. */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (const struct sockaddr *)src, sizeof(*src)) != 0)
            goto failed;
    }
    if (connect(fd, (const struct sockaddr *)dst, sizeof(*dst)) != 0 && errno != EINPROGRESS)
        goto failed;
    if (epoll_ctl(l->ep, EPOLL_CTL_ADD, fd, &ev) != 0)
        goto failed;

    for (int i = 0; i < 2; i++) {
        uint64_t r = rnd(l);
        memcpy(key + 8 * i, &r, 8);
    }
    base64(key, sizeof(key), key64);
    snprintf(keyguid, sizeof(keyguid), "%s%s", key64, WS_GUID);
    sha1(keyguid, strlen(keyguid), digest);
    base64(digest, sizeof(digest), accept);

    cap = strlen(path) + strlen(host) + (extra_headers ? strlen(extra_headers) : 0) + 256;
    ws->out = im_malloc(cap);
    n = snprintf(ws->out, cap,
                 "GET %s HTTP/1.1\r\n"
                 "Host: %s\r\n"
                 "Upgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\n"
                 "Sec-WebSocket-Version: 13\r\n"
                 "%s\r\n",
                 path, host, key64, extra_headers ? extra_headers : "");
    ws->out_len = (uint32_t)n;
    ws->out_off = 0;
    ws->fd = fd;
    ws->state = BM_WS_CONNECTING;
    ws->want_out = 1;
    ws->accept_hash = fnv1a(accept, strlen(accept));
    ws->peer_closed = 0;
    ws->code = 0;
    ws->err = 0;
    return IM_OK;

failed:
    ws->err = errno;
    close(fd);
    return IM_EIO;
}

/* The value of header name in the response head h[0..len), trimmed; NULL if absent. */
static const char *header(const char *h, size_t len, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *p = memchr(h, '\n', len), *end = h + len;

    while (p != NULL && p + 1 < end) {
        const char *line = p + 1, *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL)
            break;
        if ((size_t)(eol - line) > nlen && line[nlen] == ':' &&
            strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        p = eol;
    }
    return NULL;
}

static int has_token(const char *v, size_t len, const char *tok)
{
    size_t tlen = strlen(tok);

    for (size_t i = 0; i + tlen <= len; i++)
        if (strncasecmp(v + i, tok, tlen) == 0)
            return 1;
    return 0;
}

/* Parses the upgrade response at the start of p[0..len).  Returns the bytes
 * it took (frames may follow), 0 if it is not complete yet, -1 when ws was
 * failed. */
static long parse_upgrade(bm_loop_t *l, bm_ws_t *ws, const char *p, size_t len)
{
    const char *end = NULL, *v;
    size_t vlen, head;
    int status = 0;

    for (size_t i = 3; i < len && i < HEADER_MAX; i++) {
        if (p[i] == '\n' && p[i - 1] == '\r' && p[i - 2] == '\n' && p[i - 3] == '\r') {
            end = p + i + 1;
            break;
        }
    }
    if (end == NULL) {
        if (len >= HEADER_MAX) {
            fail(l, ws, BM_END_PROTOCOL, 0);
            return -1;
        }
        return 0;
    }
    head = (size_t)(end - p);
    if (head < 12 || strncmp(p, "HTTP/1.1 ", 9) != 0 || sscanf(p + 9, "%3d", &status) != 1) {
        fail(l, ws, BM_END_PROTOCOL, 0);
        return -1;
    }
    if (status != 101) {
        ws->code = (uint16_t)status;
        fail(l, ws, BM_END_HTTP, 0);
        return -1;
    }
    if ((v = header(p, head, "upgrade", &vlen)) == NULL || !has_token(v, vlen, "websocket") ||
        (v = header(p, head, "connection", &vlen)) == NULL || !has_token(v, vlen, "upgrade") ||
        (v = header(p, head, "sec-websocket-accept", &vlen)) == NULL ||
        fnv1a(v, vlen) != ws->accept_hash) {
        fail(l, ws, BM_END_PROTOCOL, 0);
        return -1;
    }
    ws->state = BM_WS_OPEN;
    l->ops.open_cb(ws, l->arg);
    return (long)head;
}

/* ------------------------------------------------------------ frames in */

static void on_close_frame(bm_loop_t *l, bm_ws_t *ws, const unsigned char *p, size_t len)
{
    uint16_t code = len >= 2 ? (uint16_t)(p[0] << 8 | p[1]) : 1005;

    if (ws->state == BM_WS_CLOSING) {
        ws->state = BM_WS_CLOSE_WAIT; /* our close answered: the server hangs up next */
        return;
    }
    ws->peer_closed = 1;
    ws->code = code;
    /* Echo the code (RFC 6455 5.5.1), then wait for the server's FIN. */
    if (ws->state == BM_WS_OPEN) {
        unsigned char c[2] = {(unsigned char)(code >> 8), (unsigned char)code};
        write_frame(l, ws, 0x8, (const char *)c, code == 1005 ? 0 : 2);
    }
    ws->state = BM_WS_CLOSE_WAIT;
}

static void deliver(bm_loop_t *l, bm_ws_t *ws, const char *p, size_t len)
{
    l->stats.frames_in++;
    if (ws->state == BM_WS_OPEN || ws->state == BM_WS_CLOSING)
        l->ops.text_cb(ws, p, len, l->arg);
}

/* Handles the complete frames at the start of p[0..len); returns the bytes
 * taken (a partial frame is left), or -1 when ws was failed. */
static long parse_frames(bm_loop_t *l, bm_ws_t *ws, const char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf;
    size_t off = 0;

    while (len - off >= 2 && !ws->dead && ws->fd >= 0) {
        const unsigned char *f = p + off;
        unsigned fin = f[0] & 0x80, op = f[0] & 0x0f;
        uint64_t plen = f[1] & 0x7f;
        size_t h = 2;

        if ((f[0] & 0x70) != 0 || (f[1] & 0x80) != 0) { /* no extensions; servers never mask */
            fail(l, ws, BM_END_PROTOCOL, 0);
            return -1;
        }
        if (plen == 126) {
            if (len - off < 4)
                break;
            plen = (uint64_t)f[2] << 8 | f[3];
            h = 4;
        } else if (plen == 127) {
            if (len - off < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = plen << 8 | f[2 + i];
            h = 10;
        }
        if (plen > l->max_frame || (op >= 0x8 && (plen > 125 || !fin))) {
            fail(l, ws, BM_END_PROTOCOL, 0);
            return -1;
        }
        if (len - off < h + plen)
            break;
        off += h + (size_t)plen;
        switch (op) {
        case 0x1: /* text */
        case 0x2: /* binary: counted, not delivered */
            if (ws->frag != NULL || ws->frag_len != 0) {
                fail(l, ws, BM_END_PROTOCOL, 0);
                return -1;
            }
            if (op == 0x2) {
                l->stats.binary++;
                if (!fin)
                    ws->frag_len = UINT32_MAX; /* skip its continuations */
            } else if (fin) {
                deliver(l, ws, (const char *)f + h, (size_t)plen);
            } else {
                ws->frag = im_malloc((size_t)plen ? (size_t)plen : 1);
                memcpy(ws->frag, f + h, (size_t)plen);
                ws->frag_len = (uint32_t)plen;
            }
            break;
        case 0x0: /* continuation */
            if (ws->frag_len == UINT32_MAX) {
                if (fin)
                    ws->frag_len = 0;
                break;
            }
            if (ws->frag == NULL || ws->frag_len + plen > l->max_frame) {
                fail(l, ws, BM_END_PROTOCOL, 0);
                return -1;
            }
            ws->frag = im_realloc(ws->frag, ws->frag_len + (size_t)plen);
            memcpy(ws->frag + ws->frag_len, f + h, (size_t)plen);
            ws->frag_len += (uint32_t)plen;
            if (fin) {
                char *m = ws->frag;
                size_t mlen = ws->frag_len;
                ws->frag = NULL;
                ws->frag_len = 0;
                deliver(l, ws, m, mlen);
                im_free(m);
            }
            break;
        case 0x8:
            on_close_frame(l, ws, f + h, (size_t)plen);
            break;
        case 0x9: /* ping: the pong carries the same payload (the gateway checks it) */
            l->stats.pings++;
            if (ws->state == BM_WS_OPEN || ws->state == BM_WS_CLOSING)
                write_frame(l, ws, 0xA, (const char *)f + h, (size_t)plen);
            break;
        case 0xA:
            break;
        default:
            fail(l, ws, BM_END_PROTOCOL, 0);
            return -1;
        }
    }
    return ws->dead ? -1 : (long)off;
}

/* ------------------------------------------------------------ events */

static void on_readable(bm_loop_t *l, bm_ws_t *ws)
{
    size_t have = ws->in_len;
    ssize_t n;
    long used = 0, u;

    if (have)
        memcpy(l->rx, ws->in, have);
    n = recv(ws->fd, l->rx + have, l->rx_cap - have, 0);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            fail(l, ws,
                 errno == ECONNRESET && ws->state == BM_WS_CLOSE_WAIT ? BM_END_CLEAN : BM_END_ERROR,
                 errno);
        return;
    }
    if (n == 0) {
        fail(l, ws, ws->state == BM_WS_CLOSE_WAIT ? BM_END_CLEAN : BM_END_EOF, 0);
        return;
    }
    l->stats.bytes_in += (uint64_t)n;
    have += (size_t)n;
    if (ws->state == BM_WS_UPGRADING || ws->state == BM_WS_CONNECTING) {
        if ((used = parse_upgrade(l, ws, l->rx, have)) <= 0)
            goto keep;
    }
    if ((u = parse_frames(l, ws, l->rx + used, have - (size_t)used)) < 0)
        return;
    used += u;
keep:
    if (used < 0 || ws->dead || ws->fd < 0)
        return;
    if ((size_t)used == have) {
        im_free(ws->in);
        ws->in = NULL;
        ws->in_len = 0;
    } else if ((size_t)used > 0 || ws->in_len != have) {
        size_t rest = have - (size_t)used;
        char *keep = im_malloc(rest);
        memcpy(keep, l->rx + used, rest);
        im_free(ws->in);
        ws->in = keep;
        ws->in_len = (uint32_t)rest;
    }
}

static void on_event(bm_loop_t *l, bm_ws_t *ws, uint32_t events)
{
    if (ws->fd < 0 || ws->dead)
        return;
    if (ws->state == BM_WS_CONNECTING) {
        int err = 0;
        socklen_t elen = sizeof(err);

        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        if (getsockopt(ws->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
            err = errno;
        if (err != 0) {
            fail(l, ws, BM_END_CONNECT, err);
            return;
        }
        ws->state = BM_WS_UPGRADING;
    }
    if (events & EPOLLOUT)
        flush(l, ws);
    if (!ws->dead && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        on_readable(l, ws);
}

int bm_loop_once(bm_loop_t *l, int max_wait_ms)
{
    struct epoll_event ev[EVENTS];
    uint64_t wait = im_wheel_next_timeout(&l->wheel, max_wait_ms < 0 ? 0 : (uint64_t)max_wait_ms);
    int n = epoll_wait(l->ep, ev, EVENTS, (int)wait);
    uint64_t t0 = im_mono_ns(), busy;

    for (int i = 0; i < n; i++) {
        on_event(l, ev[i].data.ptr, ev[i].events);
        reap(l);
    }
    im_wheel_advance(&l->wheel, im_mono_ms());
    reap(l);
    /* The load tool's own health: a loop that works for long stretches
     * delays every reading it takes (and pongs: the gateway may drop it). */
    busy = im_mono_ns() - t0;
    l->stats.iterations++;
    if (busy > l->stats.max_busy_ns)
        l->stats.max_busy_ns = busy;
    if (busy > 100000000ull)
        l->stats.slow++;
    return n < 0 ? 0 : n;
}

/* ------------------------------------------------------------ frames out */

im_err_t bm_ws_send_text(bm_loop_t *l, bm_ws_t *ws, const char *data, size_t len)
{
    if (ws->state != BM_WS_OPEN || ws->dead)
        return IM_ECLOSED;
    if (len > l->max_frame)
        return IM_ERANGE;
    write_frame(l, ws, 0x1, data, len);
    return ws->dead ? IM_ECLOSED : IM_OK;
}

void bm_ws_close(bm_loop_t *l, bm_ws_t *ws, uint16_t code)
{
    unsigned char c[2] = {(unsigned char)(code >> 8), (unsigned char)code};

    if (ws->state != BM_WS_OPEN || ws->dead)
        return;
    write_frame(l, ws, 0x8, (const char *)c, 2);
    ws->state = BM_WS_CLOSING;
}

void bm_ws_abort(bm_loop_t *l, bm_ws_t *ws, int quiet)
{
    if (ws->fd < 0)
        return;
    if (!quiet) {
        fail(l, ws, BM_END_ABORT, 0);
        return;
    }
    if (ws->dead) { /* unlink it from the dead list */
        for (bm_ws_t **pp = &l->dead; *pp; pp = &(*pp)->next_dead) {
            if (*pp == ws) {
                *pp = ws->next_dead;
                break;
            }
        }
        ws->dead = 0;
        ws->next_dead = NULL;
    }
    teardown(ws);
}
