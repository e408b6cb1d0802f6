#include "im_httpd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "im_alloc.h"
#include "im_log.h"

#define REQUEST_MAX 4096

struct im_httpd_s {
    int fd;
    int stop_pipe[2];
    pthread_t thread;
    im_httpd_handler handler;
    void *arg;
};

static const char *reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void respond(int fd, int status, const char *ctype, const char *body, size_t len)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, reason(status), ctype, len);

    write_all(fd, head, (size_t)n);
    write_all(fd, body, len);
}

/* Reads the request head (2 s at most) and answers it. */
static void serve(im_httpd_t *h, int fd)
{
    struct timeval tv = {2, 0};
    char req[REQUEST_MAX + 1], path[1024];
    size_t got = 0;
    char *body = NULL;
    size_t len = 0;
    const char *ctype = "text/plain; charset=utf-8";
    int status;

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (got < REQUEST_MAX) {
        ssize_t r = recv(fd, req + got, REQUEST_MAX - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n") != NULL || strstr(req, "\n\n") != NULL)
            break;
    }
    req[got] = '\0';
    if (sscanf(req, "GET %1023s HTTP/", path) != 1) {
        static const char msg[] = "only GET\n";
        respond(fd, strncmp(req, "GET ", 4) == 0 ? 400 : 405, ctype, msg, sizeof(msg) - 1);
        return;
    }
    status = h->handler(h->arg, path, &body, &len, &ctype);
    respond(fd, status, ctype, body ? body : "", body ? len : 0);
    im_free(body);
}

static void *httpd_main(void *arg)
{
    im_httpd_t *h = arg;
    struct pollfd fds[2] = {{.fd = h->fd, .events = POLLIN}, {.fd = h->stop_pipe[0], .events = POLLIN}};

    for (;;) {
        int fd;

        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            break;
        if (fds[1].revents)
            break;
        if (!(fds[0].revents & POLLIN))
            continue;
        fd = accept(h->fd, NULL, NULL);
        if (fd < 0)
            continue;
        serve(h, fd);
        close(fd);
    }
    return NULL;
}

/* Binds host:port (IPv4). */
static int listen_on(const char *addr, unsigned *port, char *err, size_t errlen)
{
    char host[64];
    unsigned p = 0;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof(sa);
    int one = 1, fd;

    if (sscanf(addr, "%63[^:]:%u", host, &p) != 2 || p > 65535 ||
        inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        snprintf(err, errlen, "\"%s\" is not IPv4-address:port", addr);
        return -1;
    }
    sa.sin_port = htons((uint16_t)p);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (port != NULL)
        *port = ntohs(sa.sin_port);
    return fd;
}

im_httpd_t *im_httpd_start(const char *addr, im_httpd_handler handler, void *arg,
                           unsigned *port, char *err, size_t errlen)
{
    im_httpd_t *h = im_calloc(1, sizeof(*h));

    h->handler = handler;
    h->arg = arg;
    h->fd = listen_on(addr, port, err, errlen);
    if (h->fd < 0) {
        im_free(h);
        return NULL;
    }
    if (pipe(h->stop_pipe) != 0 || pthread_create(&h->thread, NULL, httpd_main, h) != 0) {
        snprintf(err, errlen, "cannot start the HTTP thread");
        close(h->fd);
        im_free(h);
        return NULL;
    }
    return h;
}

void im_httpd_stop(im_httpd_t *h)
{
    if (h == NULL)
        return;
    if (write(h->stop_pipe[1], "x", 1) != 1)
        im_log_warn("httpd: cannot wake the server thread");
    pthread_join(h->thread, NULL);
    close(h->fd);
    close(h->stop_pipe[0]);
    close(h->stop_pipe[1]);
    im_free(h);
}
