#include <pthread.h>
#include <stdlib.h>

#include "im_id.h"
#include "im_test.h"

static uint64_t fake_now;

static uint64_t fake_clock(void)
{
    return fake_now;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts ids in place and counts equal neighbours. */
static size_t count_duplicates(uint64_t *ids, size_t n)
{
    size_t dups = 0;

    qsort(ids, n, sizeof(uint64_t), cmp_u64);
    for (size_t i = 1; i < n; i++)
        dups += ids[i] == ids[i - 1];
    return dups;
}

TEST(layout_roundtrip)
{
    im_idgen_t g;
    uint64_t id;

    fake_now = IM_ID_EPOCH_MS + 123456;
    ASSERT_EQ(im_idgen_init(&g, 77, 0, fake_clock), IM_OK);
    id = im_id_next(&g);
    ASSERT_U64_EQ(im_id_unix_ms(id), IM_ID_EPOCH_MS + 123456);
    ASSERT_EQ(im_id_node(id), 77);
    ASSERT_EQ(im_id_seq(id), 0);
    ASSERT_EQ(id >> 63, 0);
    ASSERT_EQ(im_idgen_init(&g, IM_ID_MAX_NODE + 1, 0, NULL), IM_ERANGE);
}

/* 1M ids from the real clock: strictly increasing, hence unique. */
TEST(million_unique_increasing)
{
    im_idgen_t g;
    uint64_t prev = 0;

    ASSERT_EQ(im_idgen_init(&g, 1, 0, NULL), IM_OK);
    for (int i = 0; i < 1000000; i++) {
        uint64_t id = im_id_next(&g);
        if (id <= prev)
            ASSERT_GT(id, prev);
        prev = id;
    }
}

/* A frozen clock: 4096 per ms, then the generator borrows the next ms. */
TEST(sequence_overflow_borrows_next_ms)
{
    im_idgen_t g;
    uint64_t id = 0, prev = 0;

    fake_now = IM_ID_EPOCH_MS + 1000;
    im_idgen_init(&g, 3, 0, fake_clock);
    for (int i = 0; i < 3 * 4096; i++) {
        id = im_id_next(&g);
        ASSERT_GT(id, prev);
        prev = id;
    }
    ASSERT_U64_EQ(im_id_unix_ms(id), IM_ID_EPOCH_MS + 1002);
    ASSERT_EQ(im_id_seq(id), 4095);
}

TEST(clock_steps_backwards)
{
    im_idgen_t g;
    uint64_t before, after, prev;

    fake_now = IM_ID_EPOCH_MS + 50000;
    im_idgen_init(&g, 5, 0, fake_clock);
    before = im_id_next(&g);
    fake_now -= 10000; /* NTP steps the clock back 10 s */
    prev = before;
    for (int i = 0; i < 10000; i++) {
        after = im_id_next(&g);
        ASSERT_GT(after, prev);
        prev = after;
    }
    /* Once the clock passes the logical time again, ids follow it. */
    fake_now += 20000;
    after = im_id_next(&g);
    ASSERT_GT(after, prev);
    ASSERT_U64_EQ(im_id_unix_ms(after), fake_now);
}

TEST(not_before_covers_restart_behind_clock)
{
    im_idgen_t g1, g2;
    uint64_t last, first;

    fake_now = IM_ID_EPOCH_MS + 90000;
    im_idgen_init(&g1, 9, 0, fake_clock);
    last = im_id_next(&g1);
    fake_now -= 5000; /* restart with a clock that is behind */
    im_idgen_init(&g2, 9, last, fake_clock);
    first = im_id_next(&g2);
    ASSERT_GT(first, last);
    ASSERT_GT(im_id_unix_ms(first), im_id_unix_ms(last));
}

TEST(nodes_never_collide)
{
    enum { N = 200000 };
    uint64_t *ids = malloc(sizeof(uint64_t) * 2 * N);
    im_idgen_t a, b;

    ASSERT_NOT_NULL(ids);
    fake_now = IM_ID_EPOCH_MS + 7;
    im_idgen_init(&a, 1, 0, fake_clock);
    im_idgen_init(&b, 2, 0, fake_clock);
    for (int i = 0; i < N; i++) {
        ids[2 * i] = im_id_next(&a);
        ids[2 * i + 1] = im_id_next(&b);
    }
    ASSERT_EQ(count_duplicates(ids, 2 * N), 0);
    free(ids);
}

enum { THREADS = 4, PER_THREAD = 100000 };
static im_idgen_t shared_gen;
static uint64_t thread_ids[THREADS][PER_THREAD];

static void *issue_ids(void *arg)
{
    uint64_t *out = arg;
    for (int i = 0; i < PER_THREAD; i++)
        out[i] = im_id_next(&shared_gen);
    return NULL;
}

TEST(threads_share_a_generator)
{
    pthread_t th[THREADS];
    uint64_t *all = malloc(sizeof(thread_ids));

    ASSERT_NOT_NULL(all);
    im_idgen_init(&shared_gen, 4, 0, NULL);
    for (int t = 0; t < THREADS; t++)
        pthread_create(&th[t], NULL, issue_ids, thread_ids[t]);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    for (int t = 0; t < THREADS; t++) {
        for (int i = 1; i < PER_THREAD; i++)
            ASSERT_GT(thread_ids[t][i], thread_ids[t][i - 1]); /* per-thread order */
    }
    memcpy(all, thread_ids, sizeof(thread_ids));
    ASSERT_EQ(count_duplicates(all, THREADS * PER_THREAD), 0);
    free(all);
}

int main(void)
{
    RUN(layout_roundtrip);
    RUN(million_unique_increasing);
    RUN(sequence_overflow_borrows_next_ms);
    RUN(clock_steps_backwards);
    RUN(not_before_covers_restart_behind_clock);
    RUN(nodes_never_collide);
    RUN(threads_share_a_generator);
    return im_test_done();
}
