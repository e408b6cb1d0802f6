#include "bm_rest_io.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "im_alloc.h"
#include "im_time.h"

#define RESP_MAX (256 * 1024)

struct bm_rest_s {
    struct sockaddr_in dst;
    char *host;
    int fd;
    char *buf; /* response being read */
    size_t cap;
};

bm_rest_t *bm_rest_new(const struct sockaddr_in *dst, const char *host)
{
    bm_rest_t *r = im_calloc(1, sizeof(*r));

    r->dst = *dst;
    r->host = im_strdup(host);
    r->fd = -1;
    r->cap = RESP_MAX;
    r->buf = im_malloc(r->cap + 1);
    return r;
}

void bm_rest_free(bm_rest_t *r)
{
    if (r == NULL)
        return;
    if (r->fd >= 0)
        close(r->fd);
    im_free(r->host);
    im_free(r->buf);
    im_free(r);
}

static void drop(bm_rest_t *r)
{
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
}

/* Waits until fd is ready for events or the deadline passes: 0, or -ETIMEDOUT. */
static int wait_fd(int fd, short events, uint64_t deadline_ms)
{
    for (;;) {
        uint64_t now = im_mono_ms();
        struct pollfd p = {.fd = fd, .events = events};
        int n;

        if (now >= deadline_ms)
            return -ETIMEDOUT;
        n = poll(&p, 1, (int)(deadline_ms - now));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

static int open_conn(bm_rest_t *r, uint64_t deadline_ms)
{
    int one = 1, err = 0, rc;
    socklen_t elen = sizeof(err);

    r->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (r->fd < 0)
        return -errno;
    setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(r->fd, (struct sockaddr *)&r->dst, sizeof(r->dst)) != 0) {
        if (errno != EINPROGRESS) {
            rc = -errno;
            drop(r);
            return rc;
        }
        if ((rc = wait_fd(r->fd, POLLOUT, deadline_ms)) != 0) {
            drop(r);
            return rc;
        }
        getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err != 0) {
            drop(r);
            return -err;
        }
    }
    return 0;
}

static int send_all(int fd, const char *p, size_t len, uint64_t deadline_ms)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        int rc;
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR)
            return -errno;
        if ((rc = wait_fd(fd, POLLOUT, deadline_ms)) != 0)
            return rc;
    }
    return 0;
}

/* Reads one response into r->buf.  Returns the status with *body and *blen set,
 * -EPIPE if the server closed before any byte (a stale keep-alive), or
 * another -errno.  *keep says whether the connection may be reused. */
static int read_response(bm_rest_t *r, uint64_t deadline_ms, const char **body, size_t *blen,
                         int *keep)
{
    size_t have = 0, head = 0, clen = 0;
    int status = 0, rc;

    *keep = 1;
    for (;;) {
        ssize_t n = recv(r->fd, r->buf + have, r->cap - have, 0);
        if (n == 0)
            return have == 0 ? -EPIPE : -EPROTO;
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                return have == 0 && errno == ECONNRESET ? -EPIPE : -errno;
            if ((rc = wait_fd(r->fd, POLLIN, deadline_ms)) != 0)
                return rc;
            continue;
        }
        have += (size_t)n;
        r->buf[have] = '\0';
        if (head == 0) {
            char *e = strstr(r->buf, "\r\n\r\n"), *cl, *conn;
            if (e == NULL) {
                if (have == r->cap)
                    return -EPROTO;
                continue;
            }
            head = (size_t)(e - r->buf) + 4;
            if (sscanf(r->buf, "HTTP/1.%*d %d", &status) != 1)
                return -EPROTO;
            /* Header names are case-insensitive: search a lower-cased copy. */
            for (size_t i = 0; i < head; i++)
                if (r->buf[i] >= 'A' && r->buf[i] <= 'Z')
                    r->buf[i] = (char)(r->buf[i] - 'A' + 'a');
            cl = strstr(r->buf, "\ncontent-length:");
            if (cl == NULL || cl > e)
                return -EPROTO; /* the gateway always sends one */
            clen = strtoul(cl + 16, NULL, 10);
            conn = strstr(r->buf, "\nconnection:");
            if (conn != NULL && conn < e && strncmp(conn + 12, " close", 6) == 0)
                *keep = 0;
            if (head + clen > r->cap)
                return -EPROTO;
        }
        if (have >= head + clen) {
            *body = r->buf + head;
            *blen = clen;
            return status;
        }
    }
}

int bm_rest_call(bm_rest_t *r, const char *method, const char *path, const char *token,
                 const char *body, char *out, size_t cap, int timeout_ms)
{
    uint64_t deadline = im_mono_ms() + (uint64_t)timeout_ms;
    size_t blen = body ? strlen(body) : 0, rlen = 0;
    char *req = im_malloc(blen + 2048 + (token ? strlen(token) : 0));
    const char *rbody = NULL;
    int n, rc = -EPROTO, keep = 0;

    n = sprintf(req, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, path, r->host);
    if (token)
        n += sprintf(req + n, "Authorization: Bearer %s\r\n", token);
    if (body)
        n += sprintf(req + n, "Content-Type: application/json\r\n");
    n += sprintf(req + n, "Content-Length: %zu\r\n\r\n", blen);
    if (body)
        memcpy(req + n, body, blen);
    for (int attempt = 0; attempt < 2; attempt++) {
        int fresh = r->fd < 0;

        if (fresh && (rc = open_conn(r, deadline)) != 0)
            break;
        rc = send_all(r->fd, req, (size_t)n + blen, deadline);
        if (rc == 0)
            rc = read_response(r, deadline, &rbody, &rlen, &keep);
        if (rc >= 0)
            break;
        drop(r);
        /* A keep-alive connection the server had closed: once more, fresh. */
        if (fresh || (rc != -EPIPE && rc != -ECONNRESET))
            break;
    }
    im_free(req);
    if (rc < 0) {
        snprintf(out, cap, "%s", strerror(-rc));
        return rc;
    }
    if (rlen >= cap)
        rlen = cap - 1;
    memcpy(out, rbody, rlen);
    out[rlen] = '\0';
    if (!keep)
        drop(r);
    return rc;
}
