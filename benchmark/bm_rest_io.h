/*
 * bm_rest_io.h - a small blocking HTTP/1.1 client for the REST API, used by
 * the load tool's set-up phase only (register, login, groups), from a few
 * worker threads, each with its own bm_rest_t.  Keep-alive; a connection the
 * server closed is reopened once per call.
 *
 * Threads: one bm_rest_t per thread at a time.
 */
#ifndef BM_REST_IO_H
#define BM_REST_IO_H

#include <netinet/in.h>
#include <stddef.h>

typedef struct bm_rest_s bm_rest_t;

/* A client for the server at dst; host is the Host header.  Connects lazily.
 * Free with bm_rest_free. */
bm_rest_t *bm_rest_new(const struct sockaddr_in *dst, const char *host);
void bm_rest_free(bm_rest_t *r);

/* Sends method path with body (NULL: none; JSON otherwise) and, if token is
 * not NULL, "Authorization: Bearer token"; waits at most timeout_ms for the
 * whole answer.  Returns the HTTP status with the body in out (NUL-terminated,
 * truncated to cap - 1 bytes), or -errno (e.g. -ECONNREFUSED, -ETIMEDOUT,
 * -EPROTO for an unreadable answer) with out set to a message. */
int bm_rest_call(bm_rest_t *r, const char *method, const char *path, const char *token,
                 const char *body, char *out, size_t cap, int timeout_ms);

#endif
