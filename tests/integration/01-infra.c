/*
 * 01-infra: the servers of scripts/infra.sh answer with the credentials, schema and
 * semantics the services rely on.
 *
 * Each server is spoken to through its own client library, not through our adapters, so
 * a failure here is about the infrastructure.  Every name the test creates (rows, queue,
 * keys) carries a per-run tag, so runs against one set of servers do not interfere, and
 * the rows are deleted by the last MySQL test even when an earlier one failed.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <hiredis/hiredis.h>
#include <mysql.h>
#include <mysqld_error.h>

#include "im_test.h"
#include "it_env.h"

#define MSG_ROWS      5
#define AMQP_MESSAGES 100
#define IO_TIMEOUT_S  10

static char run_tag[24];  /* "<pid>-<ms>": unique per run on this machine */
static uint64_t run_base; /* first message id / sender id of this run */
static MYSQL *db;

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------- MySQL */

#define DB_OK(call)                                                                                \
    do {                                                                                           \
        if ((call) != 0)                                                                           \
            IM__FAIL("%s: %s (error %u)", #call, mysql_error(db), mysql_errno(db));                \
    } while (0)

/* conv_id of one test: distinct per test and run, and all sharing the prefix cleanup
 * deletes by. */
static void conv_id(char *buf, size_t size, const char *test)
{
    snprintf(buf, size, "t:%s:%s", run_tag, test);
}

static void db_exec(const char *sql)
{
    MYSQL_RES *res;

    ASSERT_NOT_NULL(db);
    DB_OK(mysql_query(db, sql));
    res = mysql_store_result(db);
    if (res != NULL)
        mysql_free_result(res);
    else if (mysql_field_count(db) != 0)
        IM__FAIL("%s: reading the result: %s", sql, mysql_error(db));
}

/* The single unsigned integer `sql` selects. */
static uint64_t db_u64(const char *sql)
{
    MYSQL_RES *res;
    MYSQL_ROW row;
    uint64_t value;

    ASSERT_NOT_NULL(db);
    DB_OK(mysql_query(db, sql));
    res = mysql_store_result(db);
    if (res == NULL)
        IM__FAIL("%s: no result: %s", sql, mysql_error(db));
    row = mysql_fetch_row(res);
    if (row == NULL || row[0] == NULL) {
        mysql_free_result(res);
        IM__FAIL("%s: expected one non-NULL value", sql);
    }
    value = strtoull(row[0], NULL, 10);
    mysql_free_result(res);
    return value;
}

static void msg_body(char *buf, size_t size, unsigned i)
{
    /* Multibyte text, and an emoji that needs utf8mb4's 4-byte sequences. */
    snprintf(buf, size, "h\xc3\xa9llo \xf0\x9f\x91\x8b #%u", i);
}

/* "<verb> INTO messages ..." for message `seq` of conv, sent by this run's sender. */
static void insert_msg_sql(char *buf, size_t size, const char *verb, const char *conv, unsigned seq,
                           uint64_t id, const char *client_id)
{
    char body[64];

    msg_body(body, sizeof(body), seq);
    snprintf(buf, size,
             "%s INTO messages (id, conv_id, seq, sender_id, client_msg_id, body, "
             "created_at_ms) VALUES (%" PRIu64 ", '%s', %u, %" PRIu64 ", '%s', '%s', %" PRIu64 ")",
             verb, id, conv, seq, run_base, client_id, body, now_ms());
}

TEST(mysql_connect)
{
    const char *host = it_env("IM_MYSQL_HOST"), *user = it_env("IM_MYSQL_USER");
    const char *password = it_env("IM_MYSQL_PASSWORD"), *name = it_env("IM_MYSQL_DB");
    unsigned port = it_env_port("IM_MYSQL_PORT"), timeout = IO_TIMEOUT_S;

    ASSERT_NOT_NULL(host);
    ASSERT_NOT_NULL(user);
    ASSERT_NOT_NULL(password);
    ASSERT_NOT_NULL(name);
    ASSERT_NE(port, 0);
    db = mysql_init(NULL);
    ASSERT_NOT_NULL(db);
    DB_OK(mysql_options(db, MYSQL_SET_CHARSET_NAME, "utf8mb4"));
    DB_OK(mysql_options(db, MYSQL_OPT_CONNECT_TIMEOUT, &timeout));
    DB_OK(mysql_options(db, MYSQL_OPT_READ_TIMEOUT, &timeout));
    if (mysql_real_connect(db, host, user, password, name, port, NULL, 0) == NULL) {
        char err[512];
        unsigned code = mysql_errno(db);

        snprintf(err, sizeof(err), "%s", mysql_error(db));
        mysql_close(db);
        db = NULL; /* the other MySQL tests then fail at ASSERT_NOT_NULL(db) */
        IM__FAIL("connecting to mysql://%s@%s:%u/%s: %s (error %u)", user, host, port, name, err,
                 code);
    }
}

TEST(mysql_migrations_applied)
{
    ASSERT_U64_EQ(db_u64("SELECT COUNT(*) FROM schema_migrations WHERE version = 1"), 1);
    ASSERT_U64_EQ(db_u64("SELECT COUNT(*) FROM information_schema.tables"
                         " WHERE table_schema = DATABASE() AND table_name IN"
                         " ('users', 'groups', 'group_members', 'messages', 'read_state',"
                         "  'user_convs')"),
                  6);
}

/* Several rows in one transaction with one multi-row INSERT (the batching the writer
 * does), then read back in seq order, bodies intact in utf8mb4. */
TEST(mysql_multirow_insert_roundtrip)
{
    char conv[64], sql[2048], body[64];
    size_t len;
    MYSQL_RES *res;
    MYSQL_ROW row;
    unsigned i;

    ASSERT_NOT_NULL(db);
    conv_id(conv, sizeof(conv), "multirow");
    len = (size_t)snprintf(sql, sizeof(sql),
                           "INSERT INTO messages (id, conv_id, seq, sender_id, client_msg_id,"
                           " body, created_at_ms) VALUES ");
    for (i = 1; i <= MSG_ROWS; i++) {
        msg_body(body, sizeof(body), i);
        len +=
            (size_t)snprintf(sql + len, sizeof(sql) - len,
                             "%s(%" PRIu64 ", '%s', %u, %" PRIu64 ", 'm%u', '%s', %" PRIu64 ")",
                             i > 1 ? ", " : "", run_base + i, conv, i, run_base, i, body, now_ms());
        ASSERT_LT(len, sizeof(sql));
    }
    DB_OK(mysql_autocommit(db, 0));
    DB_OK(mysql_query(db, sql));
    ASSERT_U64_EQ(mysql_affected_rows(db), MSG_ROWS);
    DB_OK(mysql_commit(db));
    DB_OK(mysql_autocommit(db, 1));

    snprintf(sql, sizeof(sql),
             "SELECT seq, client_msg_id, body FROM messages WHERE conv_id = '%s' ORDER BY seq",
             conv);
    DB_OK(mysql_query(db, sql));
    res = mysql_store_result(db);
    ASSERT_NOT_NULL(res);
    ASSERT_U64_EQ(mysql_num_rows(res), MSG_ROWS);
    for (i = 1; (row = mysql_fetch_row(res)) != NULL; i++) {
        char client_id[16];

        snprintf(client_id, sizeof(client_id), "m%u", i);
        msg_body(body, sizeof(body), i);
        ASSERT_U64_EQ(strtoull(row[0], NULL, 10), i);
        ASSERT_STR_EQ(row[1], client_id);
        ASSERT_STR_EQ(row[2], body);
    }
    mysql_free_result(res);
}

/* The unique keys are what make sequence numbers and client retries safe. */
TEST(mysql_unique_keys)
{
    char conv[64], sql[1024];
    uint64_t id = run_base + 100;

    ASSERT_NOT_NULL(db);
    conv_id(conv, sizeof(conv), "unique");
    insert_msg_sql(sql, sizeof(sql), "INSERT", conv, 1, id, "u1");
    DB_OK(mysql_query(db, sql));

    /* Another message claiming seq 1 of the conversation is refused... */
    insert_msg_sql(sql, sizeof(sql), "INSERT", conv, 1, id + 1, "u2");
    if (mysql_query(db, sql) == 0)
        IM__FAIL("a second message with (conv_id, seq) = ('%s', 1) was accepted", conv);
    ASSERT_EQ(mysql_errno(db), ER_DUP_ENTRY);

    /* ...and INSERT IGNORE skips it, leaving the first. */
    insert_msg_sql(sql, sizeof(sql), "INSERT IGNORE", conv, 1, id + 1, "u2");
    DB_OK(mysql_query(db, sql));
    ASSERT_U64_EQ(mysql_affected_rows(db), 0);

    /* A client retry (same sender and client_msg_id, new id and seq) is absorbed by the
     * (sender_id, client_msg_id) key: 0 affected rows, the original row unchanged. */
    insert_msg_sql(sql, sizeof(sql), "INSERT", conv, 2, id + 2, "u1");
    strcat(sql, " ON DUPLICATE KEY UPDATE id = id");
    DB_OK(mysql_query(db, sql));
    ASSERT_U64_EQ(mysql_affected_rows(db), 0);

    snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM messages WHERE conv_id = '%s'", conv);
    ASSERT_U64_EQ(db_u64(sql), 1);
    snprintf(sql, sizeof(sql),
             "SELECT id FROM messages WHERE sender_id = %" PRIu64 " AND client_msg_id = 'u1'",
             run_base);
    ASSERT_U64_EQ(db_u64(sql), id);
}

/* Runs last and whatever failed before: the rows of this run must not outlive it. */
TEST(mysql_cleanup)
{
    char sql[256];

    ASSERT_NOT_NULL(db);
    /* Commits whatever a failed test left open, so the DELETE below is not rolled back. */
    DB_OK(mysql_autocommit(db, 1));
    snprintf(sql, sizeof(sql), "DELETE FROM messages WHERE conv_id LIKE 't:%s:%%'", run_tag);
    db_exec(sql);
    snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM messages WHERE conv_id LIKE 't:%s:%%'",
             run_tag);
    ASSERT_U64_EQ(db_u64(sql), 0);
}

/* ---------------------------------------------------------------- RabbitMQ */

static void amqp_check(amqp_rpc_reply_t reply, const char *what)
{
    switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        IM__FAIL("%s: %s", what, amqp_error_string2(reply.library_error));
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = reply.reply.decoded;
            IM__FAIL("%s: connection closed by broker: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        }
        if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = reply.reply.decoded;
            IM__FAIL("%s: channel closed by broker: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        }
        IM__FAIL("%s: broker sent method 0x%08x", what, (unsigned)reply.reply.id);
    default:
        IM__FAIL("%s: no reply", what);
    }
}

/* A logged-in connection with channel 1 open. */
static amqp_connection_state_t amqp_open(void)
{
    const char *host = it_env("IM_AMQP_HOST"), *user = it_env("IM_AMQP_USER");
    const char *password = it_env("IM_AMQP_PASSWORD"), *vhost = it_env("IM_AMQP_VHOST");
    unsigned port = it_env_port("IM_AMQP_PORT");
    struct timeval tv = {IO_TIMEOUT_S, 0};
    amqp_connection_state_t conn;
    amqp_socket_t *sock;
    int rc;

    ASSERT_NOT_NULL(host);
    ASSERT_NOT_NULL(user);
    ASSERT_NOT_NULL(password);
    ASSERT_NOT_NULL(vhost);
    ASSERT_NE(port, 0);
    conn = amqp_new_connection();
    ASSERT_NOT_NULL(conn);
    sock = amqp_tcp_socket_new(conn);
    ASSERT_NOT_NULL(sock);
    rc = amqp_socket_open_noblock(sock, host, (int)port, &tv);
    if (rc != AMQP_STATUS_OK) {
        amqp_destroy_connection(conn);
        IM__FAIL("connecting to amqp://%s:%u: %s", host, port, amqp_error_string2(rc));
    }
    amqp_check(amqp_login(conn, vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN, user,
                          password),
               "amqp_login");
    amqp_channel_open(conn, 1);
    amqp_check(amqp_get_rpc_reply(conn), "amqp_channel_open");
    return conn;
}

static void amqp_close(amqp_connection_state_t conn)
{
    amqp_check(amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS), "amqp_channel_close");
    amqp_check(amqp_connection_close(conn, AMQP_REPLY_SUCCESS), "amqp_connection_close");
    amqp_destroy_connection(conn);
}

/* Reads frames until every delivery tag 1..count is confirmed; a nack fails the test. */
static void amqp_wait_confirms(amqp_connection_state_t conn, uint64_t count)
{
    bool acked[AMQP_MESSAGES + 1] = {false};
    uint64_t confirmed = 0;

    ASSERT_LE(count, AMQP_MESSAGES);
    while (confirmed < count) {
        struct timeval tv = {IO_TIMEOUT_S, 0};
        amqp_basic_ack_t *ack;
        amqp_frame_t frame;
        uint64_t tag, from;
        int rc;

        amqp_maybe_release_buffers(conn);
        rc = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
        if (rc != AMQP_STATUS_OK)
            IM__FAIL("waiting for confirms (%" PRIu64 " of %" PRIu64 "): %s", confirmed, count,
                     amqp_error_string2(rc));
        if (frame.frame_type != AMQP_FRAME_METHOD)
            IM__FAIL("expected a confirm, got frame type %u", frame.frame_type);
        if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD)
            IM__FAIL("broker nacked delivery tag %" PRIu64,
                     ((amqp_basic_nack_t *)frame.payload.method.decoded)->delivery_tag);
        if (frame.payload.method.id != AMQP_BASIC_ACK_METHOD)
            IM__FAIL("expected basic.ack, got method 0x%08x", (unsigned)frame.payload.method.id);
        ack = frame.payload.method.decoded;
        ASSERT_GE(ack->delivery_tag, 1);
        ASSERT_LE(ack->delivery_tag, count);
        from = ack->multiple ? 1 : ack->delivery_tag;
        for (tag = from; tag <= ack->delivery_tag; tag++) {
            confirmed += !acked[tag];
            acked[tag] = true;
        }
    }
}

/* A durable queue, 100 persistent messages published with confirms on one connection,
 * consumed in order with prefetch and one multiple ack on another (rabbitmq-c connections
 * are not thread-safe, and the services keep the two roles apart the same way). */
TEST(amqp_confirmed_publish_consume)
{
    char queue_name[80], body[32];
    amqp_bytes_t queue, consumer_tag;
    amqp_connection_state_t pub, sub;
    amqp_basic_properties_t props;
    amqp_table_entry_t expires;
    amqp_queue_delete_ok_t *deleted;
    amqp_basic_consume_ok_t *consume;
    uint64_t last_tag = 0;
    unsigned i;

    snprintf(queue_name, sizeof(queue_name), "it.01-infra.%s", run_tag);
    queue = amqp_cstring_bytes(queue_name);
    pub = amqp_open();
    sub = amqp_open();

    /* x-expires: if this test dies before deleting the queue, the broker drops it. */
    expires.key = amqp_cstring_bytes("x-expires");
    expires.value.kind = AMQP_FIELD_KIND_I32;
    expires.value.value.i32 = 60000;
    amqp_queue_declare(pub, 1, queue, 0, 1, 0, 0, (amqp_table_t){1, &expires});
    amqp_check(amqp_get_rpc_reply(pub), "amqp_queue_declare");

    amqp_confirm_select(pub, 1);
    amqp_check(amqp_get_rpc_reply(pub), "amqp_confirm_select");
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    props.content_type = amqp_cstring_bytes("text/plain");
    for (i = 0; i < AMQP_MESSAGES; i++) {
        int rc;

        snprintf(body, sizeof(body), "msg-%03u", i);
        rc = amqp_basic_publish(pub, 1, amqp_empty_bytes, queue, 0, 0, &props,
                                amqp_cstring_bytes(body));
        if (rc != AMQP_STATUS_OK)
            IM__FAIL("amqp_basic_publish #%u: %s", i, amqp_error_string2(rc));
    }
    amqp_wait_confirms(pub, AMQP_MESSAGES);

    /* One ack for everything at the end means all of them must be in flight at once. */
    amqp_basic_qos(sub, 1, 0, AMQP_MESSAGES, 0);
    amqp_check(amqp_get_rpc_reply(sub), "amqp_basic_qos");
    consume = amqp_basic_consume(sub, 1, queue, amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    amqp_check(amqp_get_rpc_reply(sub), "amqp_basic_consume");
    /* The reply lives in the connection's pool, which the consume loop releases. */
    consumer_tag = amqp_bytes_malloc_dup(consume->consumer_tag);
    for (i = 0; i < AMQP_MESSAGES; i++) {
        struct timeval tv = {IO_TIMEOUT_S, 0};
        amqp_envelope_t env;

        amqp_maybe_release_buffers(sub);
        snprintf(body, sizeof(body), "msg-%03u", i);
        amqp_check(amqp_consume_message(sub, &env, &tv, 0), "amqp_consume_message");
        ASSERT_EQ(env.message.body.len, strlen(body));
        ASSERT_MEM_EQ(env.message.body.bytes, body, strlen(body));
        ASSERT_TRUE(env.message.properties._flags & AMQP_BASIC_DELIVERY_MODE_FLAG);
        ASSERT_EQ(env.message.properties.delivery_mode, AMQP_DELIVERY_PERSISTENT);
        ASSERT_EQ(env.redelivered, 0);
        last_tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
    }
    ASSERT_U64_EQ(last_tag, AMQP_MESSAGES);
    ASSERT_EQ(amqp_basic_ack(sub, 1, last_tag, 1), AMQP_STATUS_OK);

    amqp_basic_cancel(sub, 1, consumer_tag);
    amqp_check(amqp_get_rpc_reply(sub), "amqp_basic_cancel");
    amqp_bytes_free(consumer_tag);
    /* Unacked messages would go back to the queue on cancel and be counted here. */
    deleted = amqp_queue_delete(sub, 1, queue, 0, 0);
    amqp_check(amqp_get_rpc_reply(sub), "amqp_queue_delete");
    ASSERT_EQ(deleted->message_count, 0);
    amqp_close(sub);
    amqp_close(pub);
}

/* ---------------------------------------------------------------- Redis */

/* Runs a command and checks the reply type; an error reply or a lost connection fails. */
static redisReply *redis_cmd(redisContext *c, int type, const char *fmt, ...)
{
    redisReply *reply;
    va_list ap;

    va_start(ap, fmt);
    reply = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (reply == NULL)
        IM__FAIL("redis %s: %s", fmt, c->errstr);
    if (reply->type == REDIS_REPLY_ERROR)
        IM__FAIL("redis %s: %s", fmt, reply->str);
    if (reply->type != type)
        IM__FAIL("redis %s: reply type %d, expected %d", fmt, reply->type, type);
    return reply;
}

static long long redis_int(redisContext *c, const char *cmd, const char *key)
{
    redisReply *reply = redis_cmd(c, REDIS_REPLY_INTEGER, "%s %s", cmd, key);
    long long value = reply->integer;

    freeReplyObject(reply);
    return value;
}

TEST(redis_incr_set_get_del)
{
    const char *host = it_env("IM_REDIS_HOST");
    unsigned port = it_env_port("IM_REDIS_PORT");
    struct timeval tv = {IO_TIMEOUT_S, 0};
    char counter[80], key[80];
    redisContext *c;
    redisReply *reply;

    ASSERT_NOT_NULL(host);
    ASSERT_NE(port, 0);
    c = redisConnectWithTimeout(host, (int)port, tv);
    ASSERT_NOT_NULL(c);
    if (c->err) {
        char err[128];

        snprintf(err, sizeof(err), "%s", c->errstr);
        redisFree(c);
        IM__FAIL("connecting to redis://%s:%u: %s", host, port, err);
    }
    snprintf(counter, sizeof(counter), "it:01-infra:%s:counter", run_tag);
    snprintf(key, sizeof(key), "it:01-infra:%s:key", run_tag);

    ASSERT_EQ(redis_int(c, "INCR", counter), 1);
    ASSERT_EQ(redis_int(c, "INCR", counter), 2);

    reply = redis_cmd(c, REDIS_REPLY_STATUS, "SET %s %s EX %d", key, run_tag, 60);
    ASSERT_STR_EQ(reply->str, "OK");
    freeReplyObject(reply);
    reply = redis_cmd(c, REDIS_REPLY_STRING, "GET %s", key);
    ASSERT_STR_EQ(reply->str, run_tag);
    freeReplyObject(reply);
    ASSERT_GT(redis_int(c, "TTL", key), 0);
    ASSERT_LE(redis_int(c, "TTL", key), 60);

    reply = redis_cmd(c, REDIS_REPLY_INTEGER, "DEL %s %s", counter, key);
    ASSERT_EQ(reply->integer, 2);
    freeReplyObject(reply);
    ASSERT_EQ(redis_int(c, "EXISTS", key), 0);
    redisFree(c);
}

int main(void)
{
    if (it_env_load() != IM_OK)
        return 1;
    snprintf(run_tag, sizeof(run_tag), "%ld-%" PRIu64, (long)getpid(), now_ms());
    /* Ids of this run: milliseconds, then 8 bits of pid, then room for 4096 rows. */
    run_base = (now_ms() << 20) | ((uint64_t)(getpid() & 0xff) << 12);

    RUN(mysql_connect);
    RUN(mysql_migrations_applied);
    RUN(mysql_multirow_insert_roundtrip);
    RUN(mysql_unique_keys);
    RUN(mysql_cleanup);
    RUN(amqp_confirmed_publish_consume);
    RUN(redis_incr_set_get_del);

    if (db != NULL)
        mysql_close(db);
    mysql_library_end();
    return im_test_done();
}
