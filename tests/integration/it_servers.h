/*
 * it_servers.h - connection settings and connect-or-fail helpers for the
 * servers of scripts/infra.sh, so every integration test reaches them the
 * same way.  Include after im_test.h and it_env.h, and call it_env_load()
 * first.  Static inline: include from one .c file per test.
 */
#ifndef IT_SERVERS_H
#define IT_SERVERS_H

#include "im_amqp.h"
#include "im_mysql.h"
#include "im_redis.h"

/* Settings from the env file; name labels the connection in log lines.  The
 * strings point into the environment (see it_env). */
static inline im_amqp_config_t it_amqp_config(const char *name)
{
    im_amqp_config_t c = {
        .host = it_env("IM_AMQP_HOST"),
        .port = it_env_port("IM_AMQP_PORT"),
        .user = it_env("IM_AMQP_USER"),
        .password = it_env("IM_AMQP_PASSWORD"),
        .vhost = it_env("IM_AMQP_VHOST"),
        .name = name,
        .heartbeat_s = 30,
    };
    return c;
}

static inline im_mysql_config_t it_mysql_config(const char *name)
{
    im_mysql_config_t c = {
        .host = it_env("IM_MYSQL_HOST"),
        .port = it_env_port("IM_MYSQL_PORT"),
        .user = it_env("IM_MYSQL_USER"),
        .password = it_env("IM_MYSQL_PASSWORD"),
        .db = it_env("IM_MYSQL_DB"),
        .name = name,
    };
    return c;
}

static inline im_redis_config_t it_redis_config(const char *name)
{
    im_redis_config_t c = {
        .host = it_env("IM_REDIS_HOST"),
        .port = it_env_port("IM_REDIS_PORT"),
        .name = name,
    };
    return c;
}

/* Connect or fail the current test with the reason. */
static inline im_amqp_conn_t *it_amqp_connect(const char *name)
{
    im_amqp_config_t c = it_amqp_config(name);
    char err[256];
    im_amqp_conn_t *conn = im_amqp_connect(&c, err, sizeof(err));

    if (conn == NULL)
        IM__FAIL("amqp connect (%s): %s", name, err);
    return conn;
}

static inline im_mysql_t *it_mysql_connect(const char *name)
{
    im_mysql_config_t c = it_mysql_config(name);
    char err[256];
    im_mysql_t *db = im_mysql_connect(&c, err, sizeof(err));

    if (db == NULL)
        IM__FAIL("mysql connect (%s): %s", name, err);
    return db;
}

static inline im_redis_t *it_redis_connect(const char *name)
{
    im_redis_config_t c = it_redis_config(name);
    char err[256];
    im_redis_t *r = im_redis_connect(&c, err, sizeof(err));

    if (r == NULL)
        IM__FAIL("redis connect (%s): %s", name, err);
    return r;
}

#endif
