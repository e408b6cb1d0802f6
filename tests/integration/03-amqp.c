/*
 * 03-amqp: the RabbitMQ adapter (common/im_amqp.h) against the real broker of
 * scripts/infra.sh: confirms through the sliding window, batch consumption with
 * `multiple` acks, redelivery, nack, channel errors and recovery, topic routing.
 *
 * Every queue and exchange name carries a per-run tag, and queues get x-expires, so
 * a run that dies half-way leaves nothing behind for long.  Throughput of the two
 * hot paths (publish with confirms, consume with batch acks) is printed as
 * "rate: ..." lines.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "im_amqp.h"
#include "im_test.h"
#include "im_time.h"
#include "it_env.h"
#include "it_servers.h"

#define WAIT_MS      10000
#define BULK_COUNT   2000
#define BULK_WINDOW  256
#define BULK_BODY    256
#define BULK_PREFTCH 500
#define ACK_EVERY    100
#define QUEUE_TTL_MS 60000

static char run_tag[40];

/* Outcomes reported through the confirm callback, in arrival order. */
typedef struct {
    uint64_t seqno[BULK_COUNT + 64];
    im_err_t result[BULK_COUNT + 64];
    unsigned count;
} confirms_t;

static void confirm_cb(uint64_t seqno, im_err_t result, void *arg)
{
    confirms_t *c = arg;

    if (c->count < sizeof(c->seqno) / sizeof(c->seqno[0])) {
        c->seqno[c->count] = seqno;
        c->result[c->count] = result;
    }
    c->count++;
}

static im_amqp_conn_t *connect_as(const char *name)
{
    im_amqp_config_t cfg = it_amqp_config(name);
    char err[256];
    im_amqp_conn_t *conn;

    cfg.timeout_ms = WAIT_MS;
    ASSERT_NOT_NULL(cfg.host);
    ASSERT_NOT_NULL(cfg.user);
    ASSERT_NOT_NULL(cfg.password);
    ASSERT_NE(cfg.port, 0);
    conn = im_amqp_connect(&cfg, err, sizeof(err));
    if (conn == NULL)
        IM__FAIL("connecting %s: %s", name, err);
    return conn;
}

#define AMQP_OK(conn, call)                                                                        \
    do {                                                                                           \
        im_err_t amqp_ok_err = (call);                                                             \
        if (amqp_ok_err != IM_OK)                                                                  \
            IM__FAIL("%s: %s (%s)", #call, im_errname(amqp_ok_err), im_amqp_last_error(conn));     \
    } while (0)

/* A durable queue of this run, unique per test. */
static void durable_queue(im_amqp_conn_t *conn, char *name, size_t size, const char *test)
{
    im_amqp_queue_opts_t opts = {.durable = true, .expires_ms = QUEUE_TTL_MS};

    snprintf(name, size, "it.03-amqp.%s.%s", run_tag, test);
    opts.name = name;
    AMQP_OK(conn, im_amqp_declare_queue(conn, &opts, NULL, 0, NULL));
}

static uint32_t ready_count(im_amqp_conn_t *conn, const char *queue)
{
    im_amqp_queue_opts_t opts = {.name = queue, .passive = true};
    uint32_t count = UINT32_MAX;

    AMQP_OK(conn, im_amqp_declare_queue(conn, &opts, NULL, 0, &count));
    return count;
}

/* Body i: "msg-000042 " then padding to len bytes (at least 12). */
static void make_body(char *buf, size_t len, unsigned i)
{
    snprintf(buf, len, "msg-%06u ", i);
    memset(buf + 11, 'a' + (int)(i % 26), len - 11);
}

/* Publishes bodies first..first+n-1 (each len bytes) through the window and polls
 * until every one is reported. */
static void publish_all(im_amqp_publisher_t *pub, im_amqp_conn_t *conn, const char *exchange,
                        const char *key, unsigned first, unsigned n, size_t len)
{
    char body[BULK_BODY];
    unsigned i = 0;

    ASSERT_LE(len, sizeof(body));
    while (i < n) {
        im_err_t err;

        make_body(body, len, first + i);
        err = im_amqp_publish(pub, exchange, key, body, len, true, NULL);
        if (err == IM_OK) {
            i++;
            continue;
        }
        if (err != IM_EAGAIN)
            IM__FAIL("publish #%u: %s (%s)", i, im_errname(err), im_amqp_last_error(conn));
        err = im_amqp_publisher_poll(pub, WAIT_MS);
        if (err != IM_OK)
            IM__FAIL("poll with a full window: %s (%s)", im_errname(err), im_amqp_last_error(conn));
    }
    while (im_amqp_publisher_outstanding(pub) > 0)
        AMQP_OK(conn, im_amqp_publisher_poll(pub, WAIT_MS));
}

static void expect_delivery(im_amqp_conn_t *conn, im_amqp_delivery_t *d, unsigned i, size_t len,
                            bool redelivered)
{
    char body[BULK_BODY];

    AMQP_OK(conn, im_amqp_consumer_next(conn, WAIT_MS, d));
    make_body(body, len, i);
    ASSERT_EQ(d->len, len);
    ASSERT_MEM_EQ(d->body, body, len);
    ASSERT_EQ(d->redelivered, redelivered);
}

TEST(connect_refused_has_reason)
{
    im_amqp_config_t cfg = {.host = "127.0.0.1",
                            .port = 1,
                            .user = "im",
                            .password = "im",
                            .name = "it-refused",
                            .timeout_ms = 2000};
    char err[256] = "";

    ASSERT_NULL(im_amqp_connect(&cfg, err, sizeof(err)));
    ASSERT_TRUE(strstr(err, "amqp://127.0.0.1:1") != NULL);
}

TEST(connect_bad_password_is_auth_error)
{
    im_amqp_config_t cfg = it_amqp_config("it-badpw");
    char err[256] = "";

    cfg.password = "wrong";
    ASSERT_NOT_NULL(cfg.host);
    ASSERT_NULL(im_amqp_connect(&cfg, err, sizeof(err)));
    ASSERT_TRUE(strstr(err, "403") != NULL);
}

/* 2000 persistent 256-byte messages through a window of 256, consumed with prefetch 500
 * and acked 100 at a time: every seqno confirmed once and in order, every body in
 * order, nothing left. */
TEST(bulk_confirm_then_batch_consume)
{
    static confirms_t got;
    char queue[128];
    im_amqp_conn_t *pc = connect_as("it-bulk-pub"), *cc = connect_as("it-bulk-sub");
    im_amqp_publisher_t *pub;
    im_amqp_delivery_t d;
    uint64_t t0, t1;
    unsigned i;

    memset(&got, 0, sizeof(got));
    durable_queue(pc, queue, sizeof(queue), "bulk");
    pub = im_amqp_publisher_new(pc, BULK_WINDOW, confirm_cb, &got);
    t0 = im_mono_ns();
    publish_all(pub, pc, "", queue, 0, BULK_COUNT, BULK_BODY);
    t1 = im_mono_ns();
    printf("rate: publish with confirms (window %u, %u-byte persistent): %.0f msg/s\n", BULK_WINDOW,
           BULK_BODY, BULK_COUNT * 1e9 / (double)(t1 - t0));
    ASSERT_EQ(got.count, BULK_COUNT);
    for (i = 0; i < BULK_COUNT; i++) {
        ASSERT_U64_EQ(got.seqno[i], i + 1);
        ASSERT_EQ(got.result[i], IM_OK);
    }
    ASSERT_EQ(ready_count(pc, queue), BULK_COUNT);

    AMQP_OK(cc, im_amqp_consume(cc, queue, BULK_PREFTCH, false));
    t0 = im_mono_ns();
    for (i = 0; i < BULK_COUNT; i++) {
        expect_delivery(cc, &d, i, BULK_BODY, false);
        ASSERT_STR_EQ(d.routing_key, queue);
        if ((i + 1) % ACK_EVERY == 0)
            AMQP_OK(cc, im_amqp_ack(cc, d.delivery_tag, true));
    }
    t1 = im_mono_ns();
    printf("rate: consume + multiple ack every %u (prefetch %u): %.0f msg/s\n", ACK_EVERY,
           BULK_PREFTCH, BULK_COUNT * 1e9 / (double)(t1 - t0));
    ASSERT_EQ(im_amqp_consumer_next(cc, 200, &d), IM_EAGAIN);
    /* Closing makes the broker settle our acks; anything unacked would be back. */
    im_amqp_close(cc);
    ASSERT_EQ(ready_count(pc, queue), 0);
    AMQP_OK(pc, im_amqp_delete_queue(pc, queue, NULL));
    im_amqp_publisher_free(pub);
    im_amqp_close(pc);
}

/* Deliveries not acked when the consumer's connection goes come back, flagged. */
TEST(unacked_redelivered_after_close)
{
    char queue[128];
    im_amqp_conn_t *pc = connect_as("it-redeliver-pub"), *cc = connect_as("it-redeliver-sub1");
    im_amqp_publisher_t *pub;
    im_amqp_delivery_t d;
    unsigned i;

    durable_queue(pc, queue, sizeof(queue), "redeliver");
    pub = im_amqp_publisher_new(pc, 16, NULL, NULL);
    publish_all(pub, pc, "", queue, 0, 10, 32);
    AMQP_OK(cc, im_amqp_consume(cc, queue, 10, false));
    for (i = 0; i < 10; i++)
        expect_delivery(cc, &d, i, 32, false);
    im_amqp_close(cc);

    cc = connect_as("it-redeliver-sub2");
    AMQP_OK(cc, im_amqp_consume(cc, queue, 10, false));
    for (i = 0; i < 10; i++)
        expect_delivery(cc, &d, i, 32, true);
    AMQP_OK(cc, im_amqp_ack(cc, d.delivery_tag, true));
    im_amqp_close(cc);
    ASSERT_EQ(ready_count(pc, queue), 0);
    AMQP_OK(pc, im_amqp_delete_queue(pc, queue, NULL));
    im_amqp_publisher_free(pub);
    im_amqp_close(pc);
}

/* nack with requeue puts the message back (redelivered); without, it is gone. */
TEST(nack_requeue_and_drop)
{
    char queue[128];
    im_amqp_conn_t *pc = connect_as("it-nack-pub"), *cc = connect_as("it-nack-sub");
    im_amqp_publisher_t *pub;
    im_amqp_delivery_t d;
    uint32_t deleted = UINT32_MAX;

    durable_queue(pc, queue, sizeof(queue), "nack");
    pub = im_amqp_publisher_new(pc, 4, NULL, NULL);
    publish_all(pub, pc, "", queue, 0, 1, 24);
    AMQP_OK(cc, im_amqp_consume(cc, queue, 10, false));

    expect_delivery(cc, &d, 0, 24, false);
    AMQP_OK(cc, im_amqp_nack(cc, d.delivery_tag, false, true));
    expect_delivery(cc, &d, 0, 24, true);
    AMQP_OK(cc, im_amqp_nack(cc, d.delivery_tag, false, false));
    ASSERT_EQ(im_amqp_consumer_next(cc, 300, &d), IM_EAGAIN);
    im_amqp_close(cc);
    AMQP_OK(pc, im_amqp_delete_queue(pc, queue, &deleted));
    ASSERT_EQ(deleted, 0);
    im_amqp_publisher_free(pub);
    im_amqp_close(pc);
}

/* Acking a tag the broker never gave closes the channel (406); the consumer reports
 * IM_ECLOSED and reconnect + consume bring the message back. */
TEST(bad_ack_closes_consumer_then_recovers)
{
    char queue[128];
    im_amqp_conn_t *pc = connect_as("it-badack-pub"), *cc = connect_as("it-badack-sub");
    im_amqp_publisher_t *pub;
    im_amqp_delivery_t d;

    durable_queue(pc, queue, sizeof(queue), "badack");
    pub = im_amqp_publisher_new(pc, 4, NULL, NULL);
    publish_all(pub, pc, "", queue, 0, 1, 24);
    AMQP_OK(cc, im_amqp_consume(cc, queue, 10, false));
    expect_delivery(cc, &d, 0, 24, false);
    AMQP_OK(cc, im_amqp_ack(cc, d.delivery_tag + 1000, false));
    ASSERT_EQ(im_amqp_consumer_next(cc, WAIT_MS, &d), IM_ECLOSED);
    ASSERT_TRUE(strstr(im_amqp_last_error(cc), "406") != NULL);

    AMQP_OK(cc, im_amqp_reconnect(cc));
    AMQP_OK(cc, im_amqp_consume(cc, queue, 10, false));
    expect_delivery(cc, &d, 0, 24, true);
    AMQP_OK(cc, im_amqp_ack(cc, d.delivery_tag, false));
    im_amqp_close(cc);
    ASSERT_EQ(ready_count(pc, queue), 0);
    AMQP_OK(pc, im_amqp_delete_queue(pc, queue, NULL));
    im_amqp_publisher_free(pub);
    im_amqp_close(pc);
}

/* A publish to a missing exchange: the broker closes the channel with 404, the
 * outstanding seqnos fail with IM_ENOENT, the adapter reopens the channel and the
 * same publisher carries on with the next seqnos. */
TEST(missing_exchange_fails_and_publisher_recovers)
{
    static confirms_t got;
    char queue[128], exchange[128];
    im_amqp_conn_t *pc = connect_as("it-404-pub");
    im_amqp_publisher_t *pub;
    uint64_t seqno;
    unsigned i;

    memset(&got, 0, sizeof(got));
    durable_queue(pc, queue, sizeof(queue), "404");
    snprintf(exchange, sizeof(exchange), "it.03-amqp.%s.missing", run_tag);
    pub = im_amqp_publisher_new(pc, 8, confirm_cb, &got);

    ASSERT_EQ(im_amqp_publish_sync(pub, exchange, "k", "x", 1, true, WAIT_MS), IM_ENOENT);
    ASSERT_TRUE(strstr(im_amqp_last_error(pc), "404") != NULL);
    ASSERT_TRUE(im_amqp_is_open(pc));
    ASSERT_EQ(got.count, 1);
    ASSERT_U64_EQ(got.seqno[0], 1);
    ASSERT_EQ(got.result[0], IM_ENOENT);

    AMQP_OK(pc, im_amqp_publish_sync(pub, "", queue, "ok", 2, true, WAIT_MS));
    ASSERT_EQ(got.count, 2);
    ASSERT_U64_EQ(got.seqno[1], 2);

    /* Asynchronously, mixed with good messages: every seqno is reported once. */
    for (i = 0; i < 3; i++)
        AMQP_OK(pc, im_amqp_publish(pub, "", queue, "ok", 2, true, NULL));
    AMQP_OK(pc, im_amqp_publish(pub, exchange, "k", "x", 1, true, &seqno));
    ASSERT_U64_EQ(seqno, 6);
    while (im_amqp_publisher_outstanding(pub) > 0)
        AMQP_OK(pc, im_amqp_publisher_poll(pub, WAIT_MS));
    ASSERT_EQ(got.count, 6);
    for (i = 2; i < 6; i++)
        ASSERT_U64_EQ(got.seqno[i], i + 1);
    ASSERT_EQ(got.result[5], IM_ENOENT);

    AMQP_OK(pc, im_amqp_publish_sync(pub, "", queue, "ok", 2, true, WAIT_MS));
    ASSERT_U64_EQ(got.seqno[6], 7);
    AMQP_OK(pc, im_amqp_delete_queue(pc, queue, NULL));
    AMQP_OK(pc, im_amqp_delete_queue(pc, queue, NULL));
    AMQP_OK(pc, im_amqp_delete_exchange(pc, exchange));
    im_amqp_publisher_free(pub);
    im_amqp_close(pc);
}

/* publish_sync gives up at its deadline; the confirm still arrives through cb. */
TEST(publish_sync_timeout_then_late_confirm)
{
    static confirms_t got;
    char queue[128];
    im_amqp_conn_t *pc = connect_as("it-sync-pub");
    im_amqp_publisher_t *pub;

    memset(&got, 0, sizeof(got));
    durable_queue(pc, queue, sizeof(queue), "sync");
    pub = im_amqp_publisher_new(pc, 4, confirm_cb, &got);
    ASSERT_EQ(im_amqp_publish_sync(pub, "", queue, "late", 4, true, 0), IM_ETIMEDOUT);
    ASSERT_EQ(im_amqp_publisher_outstanding(pub), 1);
    AMQP_OK(pc, im_amqp_publisher_poll(pub, WAIT_MS));
    ASSERT_EQ(got.count, 1);
    ASSERT_EQ(got.result[0], IM_OK);
    AMQP_OK(pc, im_amqp_publish_sync(pub, "", queue, "now", 3, true, WAIT_MS));
    ASSERT_EQ(got.count, 2);
    ASSERT_EQ(ready_count(pc, queue), 2);
    AMQP_OK(pc, im_amqp_delete_queue(pc, queue, NULL));
    im_amqp_publisher_free(pub);
    im_amqp_close(pc);
}

/* Messages unconfirmed when the connection is replaced are reported failed, never
 * dropped silently, and the publisher works on the new connection. */
TEST(reconnect_fails_outstanding)
{
    static confirms_t got;
    char queue[128];
    im_amqp_conn_t *pc = connect_as("it-reconnect-pub");
    im_amqp_publisher_t *pub;
    unsigned i;

    memset(&got, 0, sizeof(got));
    durable_queue(pc, queue, sizeof(queue), "reconnect");
    pub = im_amqp_publisher_new(pc, 64, confirm_cb, &got);
    for (i = 0; i < 50; i++)
        AMQP_OK(pc, im_amqp_publish(pub, "", queue, "r", 1, true, NULL));
    AMQP_OK(pc, im_amqp_reconnect(pc));
    ASSERT_EQ(im_amqp_publisher_poll(pub, 0), IM_EAGAIN);
    ASSERT_EQ(got.count, 50);
    for (i = 0; i < 50; i++) {
        ASSERT_U64_EQ(got.seqno[i], i + 1);
        ASSERT_EQ(got.result[i], IM_ECLOSED);
    }
    ASSERT_EQ(im_amqp_publisher_outstanding(pub), 0);
    AMQP_OK(pc, im_amqp_publish_sync(pub, "", queue, "r", 1, true, WAIT_MS));
    ASSERT_U64_EQ(got.seqno[50], 51);
    ASSERT_EQ(got.result[50], IM_OK);
    AMQP_OK(pc, im_amqp_delete_queue(pc, queue, NULL));
    im_amqp_publisher_free(pub);
    im_amqp_close(pc);
}

/* Gateway-style fan-out: a topic exchange, one exclusive auto-delete queue per
 * gateway with its own binding, transient messages routed by key. */
TEST(topic_exchange_routes_by_key)
{
    static const struct {
        const char *key;
        int gateway; /* 0: no queue matches */
    } msgs[] = {{"gw.1.a", 1}, {"gw.2.x.y", 2}, {"gw.3.z", 0}, {"gw.1.b", 1}, {"gw.2", 2}};
    char exchange[128], queues[2][256];
    const char *patterns[2] = {"gw.1.*", "gw.2.#"};
    im_amqp_conn_t *pc = connect_as("it-topic-pub"), *gw[2];
    im_amqp_publisher_t *pub;
    im_amqp_delivery_t d;
    unsigned i, g;

    snprintf(exchange, sizeof(exchange), "it.03-amqp.%s.topic", run_tag);
    AMQP_OK(pc, im_amqp_declare_exchange(pc, exchange, "topic", false));
    for (g = 0; g < 2; g++) {
        im_amqp_queue_opts_t opts = {.exclusive = true, .auto_delete = true};

        gw[g] = connect_as(g == 0 ? "it-topic-gw1" : "it-topic-gw2");
        AMQP_OK(gw[g], im_amqp_declare_queue(gw[g], &opts, queues[g], sizeof(queues[g]), NULL));
        ASSERT_TRUE(queues[g][0] != '\0');
        AMQP_OK(gw[g], im_amqp_bind(gw[g], queues[g], exchange, patterns[g]));
        AMQP_OK(gw[g], im_amqp_consume(gw[g], queues[g], 0, true));
    }
    pub = im_amqp_publisher_new(pc, 8, NULL, NULL);
    for (i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++)
        AMQP_OK(pc, im_amqp_publish_sync(pub, exchange, msgs[i].key, msgs[i].key,
                                         strlen(msgs[i].key), false, WAIT_MS));
    for (g = 0; g < 2; g++) {
        for (i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
            if (msgs[i].gateway != (int)g + 1)
                continue;
            AMQP_OK(gw[g], im_amqp_consumer_next(gw[g], WAIT_MS, &d));
            ASSERT_STR_EQ(d.routing_key, msgs[i].key);
            ASSERT_EQ(d.len, strlen(msgs[i].key));
            ASSERT_MEM_EQ(d.body, msgs[i].key, d.len);
        }
        ASSERT_EQ(im_amqp_consumer_next(gw[g], 200, &d), IM_EAGAIN);
        im_amqp_close(gw[g]);
    }
    AMQP_OK(pc, im_amqp_delete_exchange(pc, exchange));
    im_amqp_publisher_free(pub);
    im_amqp_close(pc);
}

int main(void)
{
    if (it_env_load() != IM_OK)
        return 1;
    snprintf(run_tag, sizeof(run_tag), "%ld-%" PRIu64, (long)getpid(), im_wall_ms());

    RUN(connect_refused_has_reason);
    RUN(connect_bad_password_is_auth_error);
    RUN(bulk_confirm_then_batch_consume);
    RUN(unacked_redelivered_after_close);
    RUN(nack_requeue_and_drop);
    RUN(bad_ack_closes_consumer_then_recovers);
    RUN(missing_exchange_fails_and_publisher_recovers);
    RUN(publish_sync_timeout_then_late_confirm);
    RUN(reconnect_fails_outstanding);
    RUN(topic_exchange_routes_by_key);
    return im_test_done();
}
