/*
 * lg_rpc.h - the logic service's gRPC API: serves Auth and Group of
 * proto/im.proto through common/im_rpc.h, with lg_auth and lg_group doing the
 * work.
 *
 * Database connections: one MySQL session per worker thread.  The server
 * runs n_workers worker threads for blocking handlers, and this module keeps
 * a pool of exactly n_workers sessions; a handler checks one out for the
 * length of the call and returns it.  Since at most n_workers handlers run at
 * once, a handler never waits for a session: each worker in effect owns one
 * connection, but the pool (unlike thread-local storage) is closed by the
 * owner thread in lg_rpc_free, not by worker threads on their way out.
 * Sessions connect lazily and reconnect after a loss, so a database that is
 * down only fails the calls made meanwhile (UNAVAILABLE "db_unavailable").
 * VerifyToken needs no database and runs on the completion-queue thread.
 *
 * Threads: new, start and free from one thread (main).
 */
#ifndef LG_RPC_H
#define LG_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "im_err.h"
#include "im_id.h"
#include "im_mysql.h"

typedef struct lg_rpc_s lg_rpc_t;

typedef struct {
    const char *listen;       /* "127.0.0.1:9000"; port 0 picks one */
    unsigned n_workers;       /* >= 1: blocking threads and MySQL sessions */
    im_mysql_config_t mysql;  /* copied by each session's connect */
    const uint8_t *secret;    /* HS256 key, borrowed: must outlive the server */
    size_t secret_len;
    int64_t token_ttl_s;
    im_idgen_t *ids;          /* borrowed */
} lg_rpc_config_t;

/* Builds the server (nothing is bound yet).  Hashes the dummy password, so
 * call after im_password_set_cost.  The strings of cfg must outlive the
 * server.  Returns NULL with a log line on failure. */
lg_rpc_t *lg_rpc_new(const lg_rpc_config_t *cfg);

/* Binds and serves; logs "logic: grpc listening on HOST:PORT" at info level
 * and stores the port in *port (may be NULL).  Returns IM_OK or IM_EIO
 * (address not bindable, logged). */
im_err_t lg_rpc_start(lg_rpc_t *r, unsigned *port);

/* Stops serving (up to one second of grace for calls in flight), closes
 * every session and frees r.  NULL is fine. */
void lg_rpc_free(lg_rpc_t *r);

#endif
