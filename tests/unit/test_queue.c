/* im_queue: FIFO batches, one wakeup per empty -> non-empty transition, and no
 * item lost or duplicated when four producers race one consumer. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "im_alloc.h"
#include "im_queue.h"
#include "im_test.h"

#define PRODUCERS    4
#define PER_PRODUCER 100000

typedef struct {
    im_queue_node_t node;
    unsigned producer;
    unsigned seq;
} item_t;

static void count_wakeup(void *arg)
{
    atomic_fetch_add((atomic_uint *)arg, 1);
}

TEST(drain_empty_returns_null)
{
    im_queue_t *q = im_queue_new(NULL, NULL);

    ASSERT_NULL(im_queue_drain(q));
    im_queue_free(q);
}

TEST(drain_returns_fifo_batch)
{
    im_queue_t *q = im_queue_new(NULL, NULL);
    item_t items[3];
    im_queue_node_t *n;
    unsigned i;

    for (i = 0; i < 3; i++) {
        items[i].seq = i;
        im_queue_push(q, &items[i].node);
    }
    n = im_queue_drain(q);
    for (i = 0; i < 3; i++) {
        ASSERT_NOT_NULL(n);
        ASSERT_EQ(IM_QUEUE_ENTRY(n, item_t, node)->seq, i);
        n = n->next;
    }
    ASSERT_NULL(n);
    ASSERT_NULL(im_queue_drain(q));

    /* The drained queue accepts new items at the head again. */
    im_queue_push(q, &items[1].node);
    n = im_queue_drain(q);
    ASSERT_TRUE(n == &items[1].node);
    ASSERT_NULL(n->next);
    im_queue_free(q);
}

TEST(wakeup_only_when_queue_becomes_non_empty)
{
    atomic_uint wakeups = 0;
    im_queue_t *q = im_queue_new(count_wakeup, &wakeups);
    item_t items[100];
    unsigned i;

    for (i = 0; i < 100; i++)
        im_queue_push(q, &items[i].node);
    ASSERT_EQ(atomic_load(&wakeups), 1);
    ASSERT_NOT_NULL(im_queue_drain(q));
    ASSERT_NULL(im_queue_drain(q)); /* an empty drain does not re-arm anything */
    ASSERT_EQ(atomic_load(&wakeups), 1);
    im_queue_push(q, &items[0].node);
    im_queue_push(q, &items[1].node);
    ASSERT_EQ(atomic_load(&wakeups), 2);
    im_queue_drain(q);
    im_queue_free(q);
}

/* ------------------------------------------------------------ stress */

typedef struct {
    im_queue_t *q;
    int efd;
    atomic_uint wakeups;
    item_t *items; /* PRODUCERS * PER_PRODUCER, producer p owns slice p */
} stress_t;

typedef struct {
    stress_t *st;
    unsigned producer;
} producer_arg_t;

/* The eventfd is how a non-lws consumer sleeps; the counter is what the test
 * checks against the number of batches. */
static void stress_wakeup(void *arg)
{
    stress_t *st = arg;
    uint64_t one = 1;

    atomic_fetch_add(&st->wakeups, 1);
    if (write(st->efd, &one, sizeof(one)) != sizeof(one))
        abort();
}

static void *producer_main(void *arg)
{
    producer_arg_t *pa = arg;
    item_t *mine = pa->st->items + (size_t)pa->producer * PER_PRODUCER;
    unsigned i;

    for (i = 0; i < PER_PRODUCER; i++) {
        mine[i].producer = pa->producer;
        mine[i].seq = i;
        im_queue_push(pa->st->q, &mine[i].node);
    }
    return NULL;
}

TEST(four_producers_every_item_exactly_once)
{
    stress_t st = {0};
    producer_arg_t args[PRODUCERS];
    pthread_t tids[PRODUCERS];
    unsigned next_seq[PRODUCERS] = {0};
    unsigned long received = 0, batches = 0;
    unsigned p;

    st.efd = eventfd(0, EFD_CLOEXEC);
    ASSERT_GE(st.efd, 0);
    st.q = im_queue_new(stress_wakeup, &st);
    st.items = im_calloc((size_t)PRODUCERS * PER_PRODUCER, sizeof(item_t));
    for (p = 0; p < PRODUCERS; p++) {
        args[p] = (producer_arg_t){&st, p};
        ASSERT_EQ(pthread_create(&tids[p], NULL, producer_main, &args[p]), 0);
    }

    while (received < (unsigned long)PRODUCERS * PER_PRODUCER) {
        uint64_t ticks;
        im_queue_node_t *n = NULL;

        ASSERT_EQ(read(st.efd, &ticks, sizeof(ticks)), sizeof(ticks));
        n = im_queue_drain(st.q);
        if (n != NULL)
            batches++;
        for (; n != NULL; n = n->next) {
            item_t *it = IM_QUEUE_ENTRY(n, item_t, node);

            /* Per-producer order is FIFO, so "the next expected seq" proves
             * exactly-once: a loss or a duplicate breaks the sequence. */
            ASSERT_LT(it->producer, PRODUCERS);
            ASSERT_EQ(it->seq, next_seq[it->producer]);
            next_seq[it->producer]++;
            received++;
        }
    }
    for (p = 0; p < PRODUCERS; p++) {
        ASSERT_EQ(pthread_join(tids[p], NULL), 0);
        ASSERT_EQ(next_seq[p], PER_PRODUCER);
    }
    ASSERT_NULL(im_queue_drain(st.q));

    /* Every empty -> non-empty transition is ended by exactly one non-empty
     * drain, so the two counts match whatever the interleaving was. */
    ASSERT_EQ(atomic_load(&st.wakeups), batches);
    ASSERT_LT(batches, received);
    printf("     %lu items in %lu batches (%.1f items per wakeup)\n", received, batches,
           (double)received / (double)batches);

    im_free(st.items);
    im_queue_free(st.q);
    close(st.efd);
}

int main(void)
{
    RUN(drain_empty_returns_null);
    RUN(drain_returns_fifo_batch);
    RUN(wakeup_only_when_queue_becomes_non_empty);
    RUN(four_producers_every_item_exactly_once);
    return im_test_done();
}
