#include "gw_config.h"

#include <stddef.h>

#define OPT(name, type, field, def, min, max, help)                                                \
    {                                                                                              \
        name, 0, type, offsetof(gw_config_t, field), def, min, max, help                           \
    }

/* GW_WEB_DIR is the source tree's web/ (set by CMake): a build serves the web
 * client from where it is checked out unless told otherwise.  A missing
 * directory is not an error (static files are then off); see gw_new. */
#ifndef GW_WEB_DIR
#define GW_WEB_DIR ""
#endif

static const im_cfg_opt_t opts[] = {
    OPT("listen", IM_CFG_STR, listen, "0.0.0.0:8080", 0, 0,
        "HTTP and WebSocket address host:port (port 0: any free port, logged)"),
    OPT("gateway-id", IM_CFG_STR, gateway_id, "", 0, 0,
        "name of this gateway (\"\": hostname-pid); each start adds a random suffix"),
    OPT("jwt-secret", IM_CFG_STR, jwt_secret, NULL, 0, 0,
        "HS256 key of the login tokens, at least 32 bytes, shared with logic"),
    OPT("dev", IM_CFG_BOOL, dev, "false", 0, 0,
        "development: without --jwt-secret, verify with a random secret"),
    OPT("jwt-leeway", IM_CFG_DURATION, jwt_leeway_ms, "30s", 0, 3600000,
        "clock skew allowed when checking token exp and iat"),
    OPT("idle-timeout", IM_CFG_DURATION, idle_timeout_ms, "60s", 100, 86400000,
        "close a connection that sent nothing (pongs count) for this long"),
    OPT("ping-interval", IM_CFG_DURATION, ping_interval_ms, "25s", 0, 86400000,
        "send a WebSocket ping after this much quiet (0: never; < idle-timeout)"),
    OPT("max-frame", IM_CFG_SIZE, max_frame, "64k", 128, 16 << 20,
        "largest client message, fragments included (close 1009 above)"),
    OPT("send-queue-max", IM_CFG_INT, send_queue_max, "1024", 1, 1 << 20,
        "frames queued to one connection; a reader that falls further behind is closed (1008)"),
    OPT("rate-limit", IM_CFG_INT, rate_limit, "50", 0, 1000000,
        "client messages per second per connection (0: unlimited)"),
    OPT("rate-burst", IM_CFG_INT, rate_burst, "100", 1, 1000000,
        "messages a connection may send at once before rate-limit applies"),
    OPT("max-body", IM_CFG_SIZE, max_body, "64k", 0, 16 << 20,
        "largest /api request body (413 above)"),
    OPT("api-timeout", IM_CFG_DURATION, api_timeout_ms, "30s", 1000, 600000,
        "longest an /api request waits for its answer before the connection is dropped"),
    OPT("shutdown-timeout", IM_CFG_DURATION, shutdown_timeout_ms, "2s", 0, 60000,
        "on SIGTERM, how long to wait for clients to acknowledge 1001 before exiting"),
    OPT("static-dir", IM_CFG_STR, static_dir, GW_WEB_DIR, 0, 0,
        "directory of web client files served at / (\"\": none)"),
    OPT("log-level", IM_CFG_STR, log_level, "info", 0, 0, "error, warn, info, debug or trace"),
    OPT("workers", IM_CFG_INT, workers, "1", 1, 256,
        "worker processes sharing the listen port (SO_REUSEPORT), each a gateway with its own "
        "id (<gateway-id>-w<n>) and file limit; a master restarts any that dies"),
    OPT("logic", IM_CFG_STR, logic, "127.0.0.1:9000", 0, 0,
        "logic's gRPC address(es), comma-separated, called round-robin (\"\": no upstream, "
        "the bare WebSocket core for tests)"),
    OPT("amqp-host", IM_CFG_STR, amqp_host, "127.0.0.1", 0, 0, "RabbitMQ host (deliveries)"),
    OPT("amqp-port", IM_CFG_INT, amqp_port, "5673", 1, 65535, "RabbitMQ port"),
    OPT("amqp-user", IM_CFG_STR, amqp_user, "im", 0, 0, "RabbitMQ user"),
    OPT("amqp-password", IM_CFG_STR, amqp_password, "im", 0, 0, "RabbitMQ password"),
    OPT("amqp-vhost", IM_CFG_STR, amqp_vhost, "/", 0, 0, "RabbitMQ virtual host"),
    OPT("rpc-timeout", IM_CFG_DURATION, rpc_timeout_ms, "10s", 100, 600000,
        "deadline of each call to logic"),
    OPT("heartbeat-interval", IM_CFG_DURATION, heartbeat_ms, "10s", 100, 600000,
        "how often this gateway renews its session lease (below logic's --session-ttl / 2)"),
    OPT("sync-limit", IM_CFG_INT, sync_limit, "500", 1, 1000, "messages per sync page"),
    OPT("send-lanes", IM_CFG_INT, send_lanes, "4", 1, 64,
        "SendBatch lanes per logic address, each with one call in flight (a conversation "
        "always takes the same lane); about logic's --grpc-workers"),
};

const im_cfg_spec_t gw_config_spec = {
    "gateway",
    "imserver WebSocket gateway: holds client connections, verifies their tokens, forwards "
    "their requests to logic over gRPC and delivers messages from RabbitMQ to them.",
    "IM", opts, sizeof(opts) / sizeof(opts[0])};

void gw_config_defaults(gw_config_t *cfg)
{
    static const im_cfg_spec_t no_env = {"gateway", "", NULL, opts, sizeof(opts) / sizeof(opts[0])};
    char *argv[] = {"gateway", NULL};
    char err[8];

    /* The defaults are constants of this file: they always parse. */
    im_cfg_parse(&no_env, cfg, 1, argv, NULL, err, sizeof(err));
}
