/*
 * 06-writer: the batch writer on a real RabbitMQ.  The flush function here is
 * an in-memory recorder that can be told to fail, so the test can check the
 * ack discipline itself: nothing is acked before a flush succeeded, a failed
 * flush is retried and loses nothing, a stop with an unwritable database
 * leaves every message in the queue, poison is set aside.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "im_amqp.h"
#include "im_test.h"
#include "im_time.h"
#include "it_env.h"
#include "it_servers.h"
#include "lg_writer.h"

#define MAX_IDS 20000

/* The "database": which ids were committed, how often. */
typedef struct {
    pthread_mutex_t lock;
    unsigned char seen[MAX_IDS + 1];
    size_t rows;
    size_t max_batch;
    atomic_int fail_next;   /* fail this many flushes */
    atomic_bool fail_all;   /* fail every flush */
} sink_t;

static sink_t sink = {.lock = PTHREAD_MUTEX_INITIALIZER};

static im_err_t record_flush(void *arg, Im__V1__ChatMessage *const *msgs, size_t n)
{
    sink_t *s = arg;

    if (atomic_load(&s->fail_all))
        return IM_EUNAVAIL;
    if (atomic_load(&s->fail_next) > 0) {
        atomic_fetch_sub(&s->fail_next, 1);
        return IM_EUNAVAIL;
    }
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        uint64_t id = msgs[i]->id;
        if (id >= 1 && id <= MAX_IDS && s->seen[id]++ == 0)
            s->rows++; /* idempotent, like INSERT IGNORE on the primary key */
    }
    if (n > s->max_batch)
        s->max_batch = n;
    pthread_mutex_unlock(&s->lock);
    return IM_OK;
}

static void sink_reset(void)
{
    pthread_mutex_lock(&sink.lock);
    memset(sink.seen, 0, sizeof(sink.seen));
    sink.rows = 0;
    sink.max_batch = 0;
    pthread_mutex_unlock(&sink.lock);
    atomic_store(&sink.fail_next, 0);
    atomic_store(&sink.fail_all, false);
}

static size_t sink_rows(void)
{
    size_t n;
    pthread_mutex_lock(&sink.lock);
    n = sink.rows;
    pthread_mutex_unlock(&sink.lock);
    return n;
}

static void unique_queue(char *buf, size_t len, const char *what)
{
    snprintf(buf, len, "it06.%s.%d.%llu", what, (int)getpid(),
             (unsigned long long)(im_mono_ns() % 1000000000u));
}

/* Publishes ids first..last (one ChatBatch per message) persistently to queue
 * and waits for every confirm. */
static void publish_range(im_amqp_conn_t *conn, const char *queue, uint64_t first, uint64_t last)
{
    im_amqp_publisher_t *pub = im_amqp_publisher_new(conn, 256, NULL, NULL);
    uint8_t buf[256];

    ASSERT_NOT_NULL(pub);
    for (uint64_t id = first; id <= last; id++) {
        Im__V1__ChatMessage m = IM__V1__CHAT_MESSAGE__INIT, *mp = &m;
        Im__V1__ChatBatch b = IM__V1__CHAT_BATCH__INIT;
        char cid[32];
        size_t len;
        im_err_t rc;

        snprintf(cid, sizeof(cid), "c%llu", (unsigned long long)id);
        m.id = id;
        m.conv = "d:1:2";
        m.seq = id;
        m.sender = 1;
        m.to_user = 2;
        m.client_msg_id = cid;
        m.body = "hello";
        b.n_messages = 1;
        b.messages = &mp;
        len = im__v1__chat_batch__pack(&b, buf);
        while ((rc = im_amqp_publish(pub, "", queue, buf, len, true, NULL)) == IM_EAGAIN)
            im_amqp_publisher_poll(pub, 100);
        ASSERT_EQ(rc, IM_OK);
    }
    while (im_amqp_publisher_outstanding(pub) > 0)
        ASSERT_NE(im_amqp_publisher_poll(pub, 1000), IM_ECLOSED);
    im_amqp_publisher_free(pub);
}

static uint32_t ready_count(im_amqp_conn_t *conn, const char *queue)
{
    im_amqp_queue_opts_t q = {.name = queue, .passive = true};
    uint32_t n = 0;
    ASSERT_EQ(im_amqp_declare_queue(conn, &q, NULL, 0, &n), IM_OK);
    return n;
}

static void declare_durable(im_amqp_conn_t *conn, const char *queue)
{
    im_amqp_queue_opts_t q = {.name = queue, .durable = true};
    ASSERT_EQ(im_amqp_declare_queue(conn, &q, NULL, 0, NULL), IM_OK);
}

/* Waits until the sink holds `rows` rows or timeout_ms passes. */
static void wait_rows(size_t rows, unsigned timeout_ms)
{
    uint64_t end = im_mono_ms() + timeout_ms;
    while (sink_rows() < rows && im_mono_ms() < end) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    ASSERT_EQ(sink_rows(), rows);
}

static lg_writer_t *start_writer(const char *queue, unsigned batch, unsigned stop_timeout_ms)
{
    lg_writer_config_t cfg;
    lg_writer_t *w;

    lg_writer_config_default(&cfg);
    cfg.amqp = it_amqp_config("it06-writer");
    cfg.queue = queue;
    cfg.batch_size = batch;
    cfg.prefetch = batch * 2;
    cfg.backoff_min_ms = 20;
    cfg.backoff_max_ms = 200;
    cfg.stop_timeout_ms = stop_timeout_ms;
    w = lg_writer_new(&cfg, record_flush, &sink);
    ASSERT_NOT_NULL(w);
    ASSERT_EQ(lg_writer_start(w), IM_OK);
    return w;
}

TEST(drains_everything_in_batches_and_acks_it)
{
    im_amqp_conn_t *conn = it_amqp_connect("it06-main");
    char queue[96];
    lg_writer_stats_t st;
    lg_writer_t *w;

    sink_reset();
    unique_queue(queue, sizeof(queue), "drain");
    declare_durable(conn, queue);
    publish_range(conn, queue, 1, 5000);
    w = start_writer(queue, 500, 2000);
    wait_rows(5000, 30000);
    lg_writer_stop(w);
    lg_writer_stats(w, &st);
    ASSERT_EQ(st.messages, 5000);
    ASSERT_LE(sink.max_batch, 1000); /* never more than the prefetch */
    ASSERT_GE(st.batches, 5);
    lg_writer_free(w);
    /* Every delivery was acked: after the writer's connection closed, nothing
     * came back to the queue. */
    ASSERT_EQ(ready_count(conn, queue), 0);
    im_amqp_delete_queue(conn, queue, NULL);
    im_amqp_close(conn);
}

TEST(failed_flushes_are_retried_and_lose_nothing)
{
    im_amqp_conn_t *conn = it_amqp_connect("it06-main");
    char queue[96];
    lg_writer_stats_t st;
    lg_writer_t *w;

    sink_reset();
    atomic_store(&sink.fail_next, 3);
    unique_queue(queue, sizeof(queue), "retry");
    declare_durable(conn, queue);
    publish_range(conn, queue, 1, 2000);
    w = start_writer(queue, 200, 2000);
    wait_rows(2000, 30000);
    lg_writer_stop(w);
    lg_writer_stats(w, &st);
    ASSERT_EQ(st.flush_errors, 3);
    ASSERT_EQ(st.messages, 2000);
    lg_writer_free(w);
    ASSERT_EQ(ready_count(conn, queue), 0);
    im_amqp_delete_queue(conn, queue, NULL);
    im_amqp_close(conn);
}

/* The database never comes back: the writer must not ack anything, so after
 * it stops every message is back in the queue, ready for the next writer. */
TEST(no_ack_without_commit)
{
    im_amqp_conn_t *conn = it_amqp_connect("it06-main");
    char queue[96];
    lg_writer_stats_t st;
    lg_writer_t *w;
    uint64_t t0;

    sink_reset();
    atomic_store(&sink.fail_all, true);
    unique_queue(queue, sizeof(queue), "noack");
    declare_durable(conn, queue);
    /* Fewer than the prefetch (200), so the writer holds all of them. */
    publish_range(conn, queue, 1, 150);
    w = start_writer(queue, 100, 300);
    t0 = im_mono_ms();
    while (im_mono_ms() - t0 < 5000) {
        lg_writer_stats(w, &st);
        if (st.deliveries == 150 && st.flush_errors >= 2)
            break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    ASSERT_EQ(st.deliveries, 150);
    ASSERT_GE(st.flush_errors, 2);
    lg_writer_stop(w);
    lg_writer_stats(w, &st);
    ASSERT_EQ(st.messages, 0);
    ASSERT_EQ(sink_rows(), 0);
    lg_writer_free(w);
    /* The broker requeues unacked deliveries when the connection closes; give
     * it a moment to count them as ready again. */
    t0 = im_mono_ms();
    while (ready_count(conn, queue) < 150 && im_mono_ms() - t0 < 5000) {
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    ASSERT_EQ(ready_count(conn, queue), 150);

    /* A healthy writer then stores all of them exactly once. */
    atomic_store(&sink.fail_all, false);
    w = start_writer(queue, 100, 2000);
    wait_rows(150, 30000);
    lg_writer_free(w);
    ASSERT_EQ(ready_count(conn, queue), 0);
    im_amqp_delete_queue(conn, queue, NULL);
    im_amqp_close(conn);
}

TEST(poison_is_rejected_and_does_not_wedge_the_queue)
{
    im_amqp_conn_t *conn = it_amqp_connect("it06-main");
    im_amqp_publisher_t *pub;
    char queue[96];
    lg_writer_stats_t st;
    lg_writer_t *w;
    static const char junk[] = "\xff\xff\xff not protobuf";

    sink_reset();
    unique_queue(queue, sizeof(queue), "poison");
    declare_durable(conn, queue);
    publish_range(conn, queue, 1, 50);
    /* A second and third publisher on the same connection in turn: regression
     * test for confirm numbering restarting per publisher (it hung here). */
    pub = im_amqp_publisher_new(conn, 16, NULL, NULL);
    ASSERT_EQ(im_amqp_publish_sync(pub, "", queue, junk, sizeof(junk) - 1, true, 5000), IM_OK);
    im_amqp_publisher_free(pub);
    publish_range(conn, queue, 51, 100);
    w = start_writer(queue, 10, 2000);
    wait_rows(100, 30000);
    lg_writer_stop(w);
    lg_writer_stats(w, &st);
    ASSERT_EQ(st.poison, 1);
    ASSERT_EQ(st.deliveries, 101);
    lg_writer_free(w);
    ASSERT_EQ(ready_count(conn, queue), 0);
    im_amqp_delete_queue(conn, queue, NULL);
    im_amqp_close(conn);
}

/* Two logic instances drain one queue: every message lands, none twice. */
TEST(two_writers_share_a_queue)
{
    im_amqp_conn_t *conn = it_amqp_connect("it06-main");
    char queue[96];
    lg_writer_stats_t a, b;
    lg_writer_t *w1, *w2;

    sink_reset();
    unique_queue(queue, sizeof(queue), "two");
    declare_durable(conn, queue);
    w1 = start_writer(queue, 100, 2000);
    w2 = start_writer(queue, 100, 2000);
    publish_range(conn, queue, 1, 4000);
    wait_rows(4000, 30000);
    lg_writer_stop(w1);
    lg_writer_stop(w2);
    lg_writer_stats(w1, &a);
    lg_writer_stats(w2, &b);
    ASSERT_EQ(a.messages + b.messages, 4000);
    lg_writer_free(w1);
    lg_writer_free(w2);
    ASSERT_EQ(ready_count(conn, queue), 0);
    im_amqp_delete_queue(conn, queue, NULL);
    im_amqp_close(conn);
}

int main(void)
{
    if (it_env_load() != IM_OK)
        return 1;
    RUN(drains_everything_in_batches_and_acks_it);
    RUN(failed_flushes_are_retried_and_lose_nothing);
    RUN(no_ack_without_commit);
    RUN(poison_is_rejected_and_does_not_wedge_the_queue);
    RUN(two_writers_share_a_queue);
    return im_test_done();
}
