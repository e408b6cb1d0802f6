/*
 * lg_config.h - the logic service's settings: one declarative table drives
 * its flags, environment variables and --help (common/im_config.h).
 *
 * The environment prefix is IM, so the connection settings are the same
 * variables scripts/infra.sh writes to $IM_STATE_DIR/env (IM_AMQP_PORT,
 * IM_MYSQL_HOST, ...): `set -a; . .run/env; build/logic/logic` just works.
 */
#ifndef LG_CONFIG_H
#define LG_CONFIG_H

#include <stdint.h>

#include "im_config.h"

typedef struct {
    const char *amqp_host;
    int64_t amqp_port;
    const char *amqp_user;
    const char *amqp_password;
    const char *amqp_vhost;
    const char *mysql_host;
    int64_t mysql_port;
    const char *mysql_user;
    const char *mysql_password;
    const char *mysql_db;
    const char *redis_host;
    int64_t redis_port;
    const char *queue;       /* the durable message queue the writer drains */
    int64_t max_body;        /* bytes of a message body */
    int64_t publish_timeout_ms; /* longest a Send waits to reach the broker */
    int64_t dedup_ttl_ms;    /* life of a sent message's dedup record in Redis */
    int64_t publish_window;  /* unconfirmed publishes in flight */
    int64_t session_ttl_ms;  /* gateway lease: sessions expire this long after
                                their gateway's last heartbeat */
    int64_t writer_batch;    /* rows per transaction */
    int64_t writer_delay_ms; /* max wait of the oldest message before a flush */
    int64_t writer_prefetch;
    const char *log_level;
    const char *grpc_listen;   /* host:port of the gRPC API; port 0 picks one */
    const char *http_listen;   /* host:port of /metrics and /healthz; "" = none */
    int64_t grpc_workers;      /* threads (and MySQL connections) for blocking calls */
    const char *jwt_secret;    /* HS256 key, >= 32 bytes; required unless dev */
    int64_t token_ttl_ms;      /* lifetime of a login token */
    int64_t node_id;           /* id generator node, unique per logic instance */
    const char *password_cost; /* "interactive" (default) or "min" (tests only) */
    int dev;                   /* no secret given: use a random one, with a warning */
} lg_config_t;

/* The table, for im_cfg_parse / im_cfg_usage. */
extern const im_cfg_spec_t lg_config_spec;

#endif
