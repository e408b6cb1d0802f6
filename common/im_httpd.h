/*
 * im_httpd.h - a very small HTTP/1.0 server for operational endpoints
 * (/metrics, /healthz) of services that have no HTTP stack of their own.
 * One thread, one request per connection, GET only, answers then closes;
 * a client gets 2 s to send its request.  Not for user traffic.
 */
#ifndef IM_HTTPD_H
#define IM_HTTPD_H

#include <stddef.h>

#include "im_err.h"

typedef struct im_httpd_s im_httpd_t;

/* Answers one GET of path: sets *body (im_malloc'd, freed by the server) and
 * *len, may set *content_type (static string; default text/plain), and
 * returns the HTTP status.  Runs on the server's thread. */
typedef int (*im_httpd_handler)(void *arg, const char *path, char **body, size_t *len,
                                const char **content_type);

/* Listens on addr ("127.0.0.1:9100", "0.0.0.0:0") and serves from a new
 * thread.  *port (may be NULL) gets the bound port.  NULL with err set when
 * the address is bad or cannot be bound. */
im_httpd_t *im_httpd_start(const char *addr, im_httpd_handler handler, void *arg,
                           unsigned *port, char *err, size_t errlen);

/* Stops the thread and closes the socket.  NULL is fine. */
void im_httpd_stop(im_httpd_t *h);

#endif
