/*
 * lg_rpc.h - the logic service's gRPC API: serves Auth, Group, Message and
 * Session of proto/im.proto through common/im_rpc.h, with lg_auth, lg_group,
 * lg_message (Send), lg_sync (Sync, History, MarkRead, Conversations) and
 * lg_session doing the work.
 *
 * Database connections: one MySQL session per worker thread.  The server
 * runs n_workers worker threads for blocking handlers, and this module keeps
 * a pool of exactly n_workers sessions; a handler checks one out for the
 * length of the call and returns it.  Since at most n_workers handlers run at
 * once, a handler never waits for a session: each worker in effect owns one
 * connection, but the pool (unlike thread-local storage) is closed by the
 * owner thread in lg_rpc_free, not by worker threads on their way out.
 * Each worker session also holds a Redis connection (seqs, dedup, routes).
 * Sessions connect lazily and reconnect after a loss, so a database or Redis
 * that is down only fails the calls that need it, made meanwhile
 * (UNAVAILABLE "db_unavailable" / "redis_unavailable"): the Session service
 * works without MySQL, and History without Redis.
 * Send completes its call from the publisher thread when the broker confirmed.
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
#include "im_redis.h"
#include "lg_publisher.h"

typedef struct lg_rpc_s lg_rpc_t;

typedef struct {
    const char *listen;       /* "127.0.0.1:9000"; port 0 picks one */
    unsigned n_workers;       /* >= 1: blocking threads and MySQL sessions */
    im_mysql_config_t mysql;  /* copied by each session's connect */
    const uint8_t *secret;    /* HS256 key, borrowed: must outlive the server */
    size_t secret_len;
    int64_t token_ttl_s;
    im_idgen_t *ids;          /* borrowed */
    im_redis_config_t redis;  /* copied by each session's connect */
    lg_publisher_t *publisher; /* borrowed, started: Send and the fan-out */
    const char *queue;        /* durable queue of accepted messages */
    size_t max_body;          /* bytes of a message body */
    unsigned publish_timeout_ms;
    uint64_t dedup_ttl_ms;    /* dedup records' life in Redis; 0: LG_DEDUP_TTL_MS */
    int64_t session_ttl_ms;   /* gateway lease (lg_session.h) */
    uint64_t seq_step;        /* lg_seq lease size; 0: default */
} lg_rpc_config_t;

/* Builds the server (nothing is bound yet).  Hashes the dummy password, so
 * call after im_password_set_cost.  The strings of cfg must outlive the
 * server.  Returns NULL with a log line on failure. */
lg_rpc_t *lg_rpc_new(const lg_rpc_config_t *cfg);

/* Binds and serves; logs "logic: grpc listening on HOST:PORT" at info level
 * and stores the port in *port (may be NULL).  Returns IM_OK or IM_EIO
 * (address not bindable, logged). */
im_err_t lg_rpc_start(lg_rpc_t *r, unsigned *port);

/* The state Send shares across workers (for its metrics). */
struct lg_message_shared_s *lg_rpc_message_shared(lg_rpc_t *r);

/* Stops serving: up to grace_ms for calls in flight, then cancels the rest,
 * and returns when every call is completed.  The publisher must still run
 * (Sends in flight complete from its callbacks).  Idempotent. */
void lg_rpc_stop(lg_rpc_t *r, unsigned grace_ms);

/* Stops (no grace) if needed, closes every session and frees r.  The
 * publisher must be stopped first: its callbacks use r's shared state.
 * NULL is fine. */
void lg_rpc_free(lg_rpc_t *r);

#endif
