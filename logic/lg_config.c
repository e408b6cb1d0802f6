#include "lg_config.h"

#include <stddef.h>

#define OPT(name, type, field, def, min, max, help)                                    \
    {name, 0, type, offsetof(lg_config_t, field), def, min, max, help}

static const im_cfg_opt_t opts[] = {
    OPT("amqp-host", IM_CFG_STR, amqp_host, "127.0.0.1", 0, 0, "RabbitMQ host"),
    OPT("amqp-port", IM_CFG_INT, amqp_port, "5673", 1, 65535, "RabbitMQ port"),
    OPT("amqp-user", IM_CFG_STR, amqp_user, "im", 0, 0, "RabbitMQ user"),
    OPT("amqp-password", IM_CFG_STR, amqp_password, "im", 0, 0, "RabbitMQ password"),
    OPT("amqp-vhost", IM_CFG_STR, amqp_vhost, "/", 0, 0, "RabbitMQ virtual host"),
    OPT("mysql-host", IM_CFG_STR, mysql_host, "127.0.0.1", 0, 0, "MySQL/MariaDB host"),
    OPT("mysql-port", IM_CFG_INT, mysql_port, "3307", 1, 65535, "MySQL/MariaDB port"),
    OPT("mysql-user", IM_CFG_STR, mysql_user, "im", 0, 0, "MySQL user"),
    OPT("mysql-password", IM_CFG_STR, mysql_password, "im", 0, 0, "MySQL password"),
    OPT("mysql-db", IM_CFG_STR, mysql_db, "im", 0, 0, "MySQL database"),
    OPT("redis-host", IM_CFG_STR, redis_host, "127.0.0.1", 0, 0, "Redis host"),
    OPT("redis-port", IM_CFG_INT, redis_port, "6380", 1, 65535, "Redis port"),
    OPT("queue", IM_CFG_STR, queue, "im.messages", 0, 0,
        "durable queue of accepted messages, drained into MySQL"),
    OPT("max-body", IM_CFG_SIZE, max_body, "4KiB", 1, 1048576, "largest message body"),
    OPT("publish-timeout", IM_CFG_DURATION, publish_timeout_ms, "5s", 100, 600000,
        "longest a send waits for the broker before it fails (the client retries)"),
    OPT("dedup-ttl", IM_CFG_DURATION, dedup_ttl_ms, "24h", 60000, 604800000,
        "how long a sent message's dedup record stays in Redis: a retry of the same "
        "client_msg_id within it is answered with the original (~250 bytes of Redis each)"),
    OPT("publish-window", IM_CFG_INT, publish_window, "256", 1, 65535,
        "persistent publishes awaiting their confirm at once"),
    OPT("session-ttl", IM_CFG_DURATION, session_ttl_ms, "30s", 1000, 3600000,
        "a gateway's sessions stop being routed to this long after its last heartbeat"),
    OPT("writer-batch", IM_CFG_INT, writer_batch, "1024", 1, 10000,
        "messages per INSERT transaction (a power of two up to 1024 goes as one "
        "prepared statement when the batch fills exactly)"),
    OPT("writer-delay", IM_CFG_DURATION, writer_delay_ms, "20ms", 0, 10000,
        "longest a message waits for its batch to fill"),
    OPT("writer-prefetch", IM_CFG_INT, writer_prefetch, "2000", 1, 65535,
        "unacked deliveries the writer holds (>= writer-batch)"),
    OPT("log-level", IM_CFG_STR, log_level, "info", 0, 0, "error, warn, info, debug or trace"),
    OPT("grpc-listen", IM_CFG_STR, grpc_listen, "127.0.0.1:9000", 0, 0,
        "address of the gRPC API (port 0: any free port, logged)"),
    OPT("http-listen", IM_CFG_STR, http_listen, "127.0.0.1:9100", 0, 0,
        "IPv4 address of GET /metrics (Prometheus) and /healthz (\"\": none; port 0: any, logged)"),
    OPT("grpc-workers", IM_CFG_INT, grpc_workers, "4", 1, 256,
        "threads for database-bound calls, each with its own MySQL connection"),
    OPT("jwt-secret", IM_CFG_STR, jwt_secret, NULL, 0, 0,
        "HS256 key for login tokens, at least 32 bytes, shared with the gateways"),
    OPT("token-ttl", IM_CFG_DURATION, token_ttl_ms, "24h", 60000, 366LL * 86400000,
        "lifetime of a login token"),
    OPT("node-id", IM_CFG_INT, node_id, "0", 0, 1023, "id generator node, unique per instance"),
    OPT("password-cost", IM_CFG_STR, password_cost, "interactive", 0, 0,
        "argon2id cost: interactive, or min (tests only: no protection)"),
    OPT("dev", IM_CFG_BOOL, dev, "false", 0, 0,
        "development: without --jwt-secret, sign with a random secret"),
};

const im_cfg_spec_t lg_config_spec = {
    "logic", "imserver logic service: the gRPC API (auth, groups, messages, sessions) and the "
    "writer that drains the durable message queue into MySQL in batches.",
    "IM", opts, sizeof(opts) / sizeof(opts[0])};
