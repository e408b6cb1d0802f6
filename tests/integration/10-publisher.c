/*
 * 10-publisher: the logic service's publishing thread on a real RabbitMQ.
 * Every submitted message gets exactly one outcome; confirmed ones are in
 * the queue; broker refusals, an unreachable broker and a stop are reported,
 * never dropped; outcomes come in submit order even when the broker confirms
 * out of order.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "im_test.h"
#include "im_time.h"
#include "it_env.h"
#include "it_servers.h"
#include "lg_publisher.h"

#define N_THREADS 4
#define PER_THREAD 1250

/* Outcome slots: each submission owns one, so a second report is visible. */
typedef struct {
    atomic_int calls;
    atomic_int result;
} outcome_t;

static outcome_t outcomes[N_THREADS * PER_THREAD];

static void record(void *arg, im_err_t result)
{
    outcome_t *o = arg;
    atomic_store(&o->result, result);
    atomic_fetch_add(&o->calls, 1);
}

static void reset_outcomes(void)
{
    for (size_t i = 0; i < sizeof(outcomes) / sizeof(outcomes[0]); i++) {
        atomic_store(&outcomes[i].calls, 0);
        atomic_store(&outcomes[i].result, 1);
    }
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits until outcomes[0..n) all have a report. */
static void wait_outcomes(size_t n, unsigned timeout_ms)
{
    uint64_t end = im_mono_ms() + timeout_ms;
    size_t done;

    do {
        done = 0;
        for (size_t i = 0; i < n; i++)
            done += atomic_load(&outcomes[i].calls) > 0;
        if (done == n)
            return;
        sleep_ms(5);
    } while (im_mono_ms() < end);
    ASSERT_EQ(done, n);
}

static char queue[96];
static lg_publisher_t *shared_pub;

static void *submitter(void *arg)
{
    size_t t = (size_t)arg;
    char body[64];

    for (size_t i = 0; i < PER_THREAD; i++) {
        size_t k = t * PER_THREAD + i;
        int len = snprintf(body, sizeof(body), "message %zu", k);
        lg_publisher_submit(shared_pub, "", queue, body, (size_t)len, true, 10000, record,
                            &outcomes[k]);
    }
    return NULL;
}

static uint32_t ready_count(im_amqp_conn_t *conn, const char *name)
{
    im_amqp_queue_opts_t q = {.name = name, .passive = true};
    uint32_t n = 0;
    ASSERT_EQ(im_amqp_declare_queue(conn, &q, NULL, 0, &n), IM_OK);
    return n;
}

static lg_publisher_t *start_publisher(const char *name)
{
    im_amqp_config_t cfg = it_amqp_config(name);
    lg_publisher_t *p = lg_publisher_new(&cfg, 256);

    ASSERT_NOT_NULL(p);
    ASSERT_EQ(lg_publisher_start(p), IM_OK);
    return p;
}

TEST(many_threads_every_message_confirmed_once)
{
    im_amqp_conn_t *conn = it_amqp_connect("it10");
    im_amqp_queue_opts_t q = {.name = queue, .durable = true};
    pthread_t th[N_THREADS];
    size_t n = N_THREADS * PER_THREAD;

    reset_outcomes();
    ASSERT_EQ(im_amqp_declare_queue(conn, &q, NULL, 0, NULL), IM_OK);
    shared_pub = start_publisher("it10-pub");
    for (size_t t = 0; t < N_THREADS; t++)
        pthread_create(&th[t], NULL, submitter, (void *)t);
    for (size_t t = 0; t < N_THREADS; t++)
        pthread_join(th[t], NULL);
    wait_outcomes(n, 30000);
    lg_publisher_free(shared_pub);
    for (size_t i = 0; i < n; i++) {
        ASSERT_EQ(atomic_load(&outcomes[i].calls), 1);
        ASSERT_EQ(atomic_load(&outcomes[i].result), IM_OK);
    }
    /* Confirmed means in the queue. */
    ASSERT_EQ(ready_count(conn, queue), n);
    im_amqp_delete_queue(conn, queue, NULL);
    im_amqp_close(conn);
}

TEST(missing_exchange_is_reported_and_publishing_goes_on)
{
    im_amqp_conn_t *conn = it_amqp_connect("it10");
    im_amqp_queue_opts_t q = {.name = queue, .durable = true};
    lg_publisher_t *p;

    reset_outcomes();
    ASSERT_EQ(im_amqp_declare_queue(conn, &q, NULL, 0, NULL), IM_OK);
    p = start_publisher("it10-pub");
    ASSERT_EQ(lg_publisher_submit(p, "it10.no.such.exchange", "x", "a", 1, true, 5000, record,
                                  &outcomes[0]),
              IM_OK);
    wait_outcomes(1, 10000);
    ASSERT_EQ(atomic_load(&outcomes[0].result), IM_ENOENT);
    ASSERT_EQ(lg_publisher_submit(p, "", queue, "b", 1, true, 5000, record, &outcomes[1]), IM_OK);
    wait_outcomes(2, 10000);
    ASSERT_EQ(atomic_load(&outcomes[1].result), IM_OK);
    lg_publisher_free(p);
    ASSERT_EQ(atomic_load(&outcomes[0].calls), 1);
    ASSERT_EQ(atomic_load(&outcomes[1].calls), 1);
    im_amqp_delete_queue(conn, queue, NULL);
    im_amqp_close(conn);
}

/* No broker at all: the caller learns it at the deadline, not never. */
TEST(unreachable_broker_times_out)
{
    im_amqp_config_t cfg = it_amqp_config("it10-nowhere");
    lg_publisher_t *p;
    uint64_t t0;

    reset_outcomes();
    cfg.port = 1; /* nothing listens there */
    cfg.timeout_ms = 200;
    p = lg_publisher_new(&cfg, 16);
    ASSERT_EQ(lg_publisher_start(p), IM_OK);
    t0 = im_mono_ms();
    ASSERT_EQ(lg_publisher_submit(p, "", "q", "x", 1, true, 300, record, &outcomes[0]), IM_OK);
    wait_outcomes(1, 10000);
    ASSERT_EQ(atomic_load(&outcomes[0].result), IM_ETIMEDOUT);
    ASSERT_LT(im_mono_ms() - t0, 5000);
    lg_publisher_free(p);
    ASSERT_EQ(atomic_load(&outcomes[0].calls), 1);
}

TEST(stop_reports_everything_and_refuses_later_submits)
{
    im_amqp_conn_t *conn = it_amqp_connect("it10");
    im_amqp_queue_opts_t q = {.name = queue, .durable = true};
    lg_publisher_t *p;
    size_t ok = 0;

    reset_outcomes();
    ASSERT_EQ(im_amqp_declare_queue(conn, &q, NULL, 0, NULL), IM_OK);
    p = start_publisher("it10-pub");
    for (size_t i = 0; i < 1000; i++)
        lg_publisher_submit(p, "", queue, "z", 1, true, 10000, record, &outcomes[i]);
    lg_publisher_stop(p, 10000);
    for (size_t i = 0; i < 1000; i++) {
        ASSERT_EQ(atomic_load(&outcomes[i].calls), 1);
        ok += atomic_load(&outcomes[i].result) == IM_OK;
    }
    ASSERT_EQ(ok, 1000); /* a graceful stop with time to spare confirms them all */
    ASSERT_EQ(lg_publisher_submit(p, "", queue, "late", 4, true, 1000, record, &outcomes[1000]),
              IM_ECLOSED);
    ASSERT_EQ(atomic_load(&outcomes[1000].calls), 1);
    ASSERT_EQ(atomic_load(&outcomes[1000].result), IM_ECLOSED);
    lg_publisher_free(p);
    ASSERT_EQ(ready_count(conn, queue), 1000);
    im_amqp_delete_queue(conn, queue, NULL);
    im_amqp_close(conn);
}

/* ---------------------------------------------------------------- order */

#define ORDER_N     3000
#define ORDER_BIG   (64 * 1024) /* over the queue-index embedding limit: message store */
#define ORDER_SMALL 100         /* embedded in the queue index */

static atomic_int order_done;
static int order_seen[ORDER_N]; /* the i-th report was for submission order_seen[i] */
static atomic_int order_result[ORDER_N];

static void record_order(void *arg, im_err_t result)
{
    int k = (int)(uintptr_t)arg;
    int at = atomic_fetch_add(&order_done, 1);

    atomic_store(&order_result[k], result);
    if (at < ORDER_N)
        order_seen[at] = k;
}

/* RabbitMQ may confirm a later persistent message before an earlier one: a
 * large one goes to the message store, a small one into the queue index,
 * and a transient one to neither, and they are done at different times.
 * Submitters must still hear in submit order (Send publishes its deliveries
 * from the callback, so the order of the callbacks is the order clients see).
 * Without the ordering the reports do not come out of order on every run;
 * with it they must never. */
TEST(outcomes_are_reported_in_submit_order_across_message_kinds)
{
    im_amqp_conn_t *conn = it_amqp_connect("it10");
    im_amqp_queue_opts_t q = {.name = queue, .durable = true};
    static char big[ORDER_BIG];
    char small[ORDER_SMALL];
    lg_publisher_t *p;
    uint32_t lcg = 12345;
    size_t kinds[3] = {0, 0, 0};
    uint64_t end;
    int out_of_order = 0;

    memset(big, 'B', sizeof(big));
    memset(small, 's', sizeof(small));
    atomic_store(&order_done, 0);
    ASSERT_EQ(im_amqp_declare_queue(conn, &q, NULL, 0, NULL), IM_OK);
    p = start_publisher("it10-order");
    for (int k = 0; k < ORDER_N; k++) {
        /* Irregular runs of each kind: about a third each. */
        unsigned kind;

        lcg = lcg * 1103515245u + 12345u;
        kind = (lcg >> 16) % 3;
        kinds[kind]++;
        snprintf(kind == 0 ? big : small, 16, "%08d", k);
        ASSERT_EQ(lg_publisher_submit(p, "", queue, kind == 0 ? big : small,
                                      kind == 0 ? sizeof(big) : sizeof(small), kind != 2, 60000,
                                      record_order, (void *)(uintptr_t)k),
                  IM_OK);
    }
    end = im_mono_ms() + 60000;
    while (atomic_load(&order_done) < ORDER_N && im_mono_ms() < end)
        sleep_ms(5);
    ASSERT_EQ(atomic_load(&order_done), ORDER_N);
    lg_publisher_free(p);
    ASSERT_EQ(atomic_load(&order_done), ORDER_N); /* nothing reported twice */
    for (int i = 0; i < ORDER_N; i++)
        out_of_order += order_seen[i] != i;
    for (int i = 0; i < ORDER_N; i++) {
        if (order_seen[i] != i)
            IM__FAIL("report %d was for submission %d (%d of %d out of place; %zu large, "
                     "%zu small, %zu transient)",
                     i, order_seen[i], out_of_order, ORDER_N, kinds[0], kinds[1], kinds[2]);
        ASSERT_EQ(atomic_load(&order_result[i]), IM_OK);
    }
    ASSERT_EQ(ready_count(conn, queue), ORDER_N);
    im_amqp_delete_queue(conn, queue, NULL);
    im_amqp_close(conn);
}

static void new_queue(void)
{
    static int n;
    snprintf(queue, sizeof(queue), "it10.%d.%d.%llu", (int)getpid(), ++n,
             (unsigned long long)(im_wall_ms() % 100000000u));
}

int main(void)
{
    if (it_env_load() != IM_OK)
        return 1;
    new_queue();
    RUN(many_threads_every_message_confirmed_once);
    new_queue();
    RUN(missing_exchange_is_reported_and_publishing_goes_on);
    RUN(unreachable_broker_times_out);
    new_queue();
    RUN(stop_reports_everything_and_refuses_later_submits);
    new_queue();
    RUN(outcomes_are_reported_in_submit_order_across_message_kinds);
    return im_test_done();
}
