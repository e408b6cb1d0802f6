/*
 * gw_config.h - the gateway's settings: one declarative table drives its
 * flags, environment variables (prefix IM: --idle-timeout is IM_IDLE_TIMEOUT)
 * and --help (common/im_config.h).  `gateway --help` lists them all.
 *
 * The struct is filled by im_cfg_parse; its strings point into argv, the
 * environment or the table's defaults, so it must outlive nothing but the
 * call to gw_new, which copies what it keeps.
 */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stdint.h>

#include "im_config.h"

typedef struct {
    const char *listen;          /* host:port; port 0 picks a free port (logged) */
    const char *gateway_id;      /* "" = hostname-pid */
    const char *jwt_secret;      /* HS256 key shared with logic, >= 32 bytes */
    int dev;                     /* no secret: use a random one, with a warning */
    int64_t jwt_leeway_ms;       /* allowed clock skew for exp/iat */
    int64_t idle_timeout_ms;     /* close a connection that sent nothing this long */
    int64_t ping_interval_ms;    /* ping a quiet connection this often; 0 = never */
    int64_t max_frame;           /* largest client message in bytes (1009 above) */
    int64_t send_queue_max;      /* frames queued per connection before 1008 */
    int64_t rate_limit;          /* client messages per second; 0 = unlimited */
    int64_t rate_burst;          /* bucket size */
    int64_t max_body;            /* largest /api request body (413 above) */
    int64_t api_timeout_ms;      /* how long an /api request may wait for its answer */
    int64_t shutdown_timeout_ms; /* how long SIGTERM waits for clients to close */
    const char *static_dir;      /* web client files served at /; "" = none */
    const char *log_level;
    int64_t workers;             /* processes sharing the port (SO_REUSEPORT); main.c */
    /* Upstream (gw_service.h); logic "" = none: the bare WebSocket core. */
    const char *logic;          /* host:port[,host:port...] of logic's gRPC API */
    const char *amqp_host;
    int64_t amqp_port;
    const char *amqp_user;
    const char *amqp_password;
    const char *amqp_vhost;
    int64_t rpc_timeout_ms;     /* deadline of each call to logic */
    int64_t heartbeat_ms;       /* Session.Heartbeat period */
    int64_t sync_limit;         /* messages per sync page */
    int64_t send_lanes;         /* SendBatch lanes per logic address */
} gw_config_t;

/* The table, for im_cfg_parse / im_cfg_usage. */
extern const im_cfg_spec_t gw_config_spec;

/* Fills cfg with the table's defaults (no environment, no flags): what a
 * test or an embedding program starts from before changing a few fields. */
void gw_config_defaults(gw_config_t *cfg);

#endif
