#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "im_alloc.h"
#include "im_buf.h"
#include "im_test.h"

/* ---- helpers ---- */

static size_t n_allocs, n_frees;

static void *count_malloc(size_t n)
{
    n_allocs++;
    return malloc(n);
}

static void *count_calloc(size_t count, size_t n)
{
    n_allocs++;
    return calloc(count, n);
}

static void *count_realloc(void *p, size_t n)
{
    n_allocs++;
    return realloc(p, n);
}

static void count_free(void *p)
{
    n_frees++;
    free(p);
}

static const im_allocator_t counting = {count_malloc, count_calloc, count_realloc, count_free};

static uint32_t rnd(uint32_t *state)
{
    uint32_t x = *state;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

/* One class per entry of sizes[], each holding at most max buffers,
 * allocated grow at a time and nothing up front. */
static im_bufpool_t *small_pool(const size_t *sizes, size_t n, size_t max, size_t grow)
{
    im_bufpool_config_t cfg = {0};

    cfg.nclasses = n;
    for (size_t i = 0; i < n; i++)
        cfg.classes[i] = (im_bufclass_config_t){sizes[i], max, 0, grow};
    return im_bufpool_new(&cfg);
}

static im_bufclass_stats_t class_stats(const im_bufpool_t *pool, size_t cls)
{
    im_bufpool_stats_t st;

    im_bufpool_stats(pool, &st);
    return st.classes[cls];
}

static size_t pool_in_use(const im_bufpool_t *pool)
{
    im_bufpool_stats_t st;

    im_bufpool_stats(pool, &st);
    return st.in_use;
}

/* ---- configuration ---- */

TEST(defaults)
{
    im_bufpool_t *pool = im_bufpool_new(NULL);
    im_bufpool_config_t cfg;
    im_bufpool_stats_t st;
    static const size_t sizes[] = {256, 1024, 4096, 16384, 65536};

    ASSERT_NOT_NULL(pool);
    im_bufpool_config_default(&cfg);
    im_bufpool_stats(pool, &st);
    ASSERT_EQ(st.nclasses, 5);
    ASSERT_EQ(cfg.nclasses, 5);
    for (size_t i = 0; i < 5; i++) {
        ASSERT_EQ(st.classes[i].size, sizes[i]);
        ASSERT_EQ(st.classes[i].max, cfg.classes[i].max);
        ASSERT_EQ(st.classes[i].allocated, cfg.classes[i].prealloc);
        ASSERT_EQ(st.classes[i].in_use, 0);
    }
    ASSERT_EQ(st.in_use, 0);
    ASSERT_GT(st.bytes, 0);
    im_bufpool_free(pool);
    im_bufpool_free(NULL);
}

TEST(config_rejects_invalid)
{
    im_bufpool_config_t good, cfg;

    im_bufpool_config_default(&good);
    cfg = good;
    cfg.nclasses = 0;
    ASSERT_NULL(im_bufpool_new(&cfg));
    cfg = good;
    cfg.nclasses = IM_BUF_MAX_CLASSES + 1;
    ASSERT_NULL(im_bufpool_new(&cfg));
    cfg = good;
    cfg.classes[0].size = 0;
    ASSERT_NULL(im_bufpool_new(&cfg));
    cfg = good;
    cfg.classes[2].size = cfg.classes[1].size; /* sizes must strictly increase */
    ASSERT_NULL(im_bufpool_new(&cfg));
    cfg = good;
    cfg.classes[4].size = IM_BUF_SIZE_LIMIT + 1;
    ASSERT_NULL(im_bufpool_new(&cfg));
    cfg = good;
    cfg.classes[1].max = 0;
    ASSERT_NULL(im_bufpool_new(&cfg));
    cfg = good;
    cfg.classes[1].prealloc = cfg.classes[1].max + 1;
    ASSERT_NULL(im_bufpool_new(&cfg));
    cfg = good;
    cfg.classes[3].grow = 0;
    ASSERT_NULL(im_bufpool_new(&cfg));
    cfg = good;
    cfg.classes[4].max = SIZE_MAX; /* a slab this big would overflow size_t */
    cfg.classes[4].grow = SIZE_MAX / 2;
    ASSERT_NULL(im_bufpool_new(&cfg));
}

/* ---- size classes ---- */

TEST(class_selection_boundaries)
{
    im_bufpool_t *pool = im_bufpool_new(NULL);
    static const struct {
        size_t ask, cap;
    } cases[] = {
        {0, 256},       {1, 256},       {255, 256},     {256, 256},    {257, 1024},
        {1024, 1024},   {1025, 4096},   {4096, 4096},   {4097, 16384}, {16384, 16384},
        {16385, 65536}, {65535, 65536}, {65536, 65536},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        im_buf_t *b = im_buf_alloc(pool, cases[i].ask);

        ASSERT_NOT_NULL(b);
        ASSERT_EQ(im_buf_cap(b), cases[i].cap);
        ASSERT_EQ(im_buf_len(b), 0);
        im_buf_unref(b);
    }
    ASSERT_EQ(pool_in_use(pool), 0);
    im_bufpool_free(pool);
}

TEST(oversize_refused_and_counted)
{
    im_bufpool_t *pool = im_bufpool_new(NULL);
    im_bufpool_stats_t st;
    im_buf_t *b;

    ASSERT_NULL(im_buf_alloc(pool, 65537));
    ASSERT_NULL(im_buf_alloc(pool, SIZE_MAX));
    im_bufpool_stats(pool, &st);
    ASSERT_U64_EQ(st.oversize, 2);
    ASSERT_U64_EQ(st.exhausted, 0);
    ASSERT_EQ(st.in_use, 0);
    b = im_buf_alloc(pool, 65536); /* the largest class itself still serves */
    ASSERT_NOT_NULL(b);
    im_buf_unref(b);
    im_bufpool_free(pool);
}

/* ---- headroom ---- */

TEST(headroom_aligned_and_writable)
{
    static const size_t sizes[] = {100, 1000};
    im_bufpool_t *pool = small_pool(sizes, 2, 4, 4);
    im_buf_t *bufs[8];

    ASSERT_EQ(IM_BUF_HEADROOM % 16, 0);
    ASSERT_GE(IM_BUF_HEADROOM, 16); /* LWS_PRE in libwebsockets 4.1 */
    /* Fill headroom and the whole payload of every buffer of both classes
     * (neighbours in one slab), then check nothing overlapped. */
    for (int i = 0; i < 8; i++) {
        char *data;

        bufs[i] = im_buf_alloc(pool, sizes[i / 4]);
        ASSERT_NOT_NULL(bufs[i]);
        data = im_buf_data(bufs[i]);
        ASSERT_EQ((uintptr_t)data % IM_BUF_ALIGN, 0);
        memset(data - IM_BUF_HEADROOM, 'A' + i, IM_BUF_HEADROOM + im_buf_cap(bufs[i]));
        ASSERT_EQ(im_buf_set_len(bufs[i], im_buf_cap(bufs[i])), IM_OK);
    }
    for (int i = 0; i < 8; i++) {
        char *data = im_buf_data(bufs[i]);
        size_t cap = im_buf_cap(bufs[i]);

        ASSERT_EQ(cap, sizes[i / 4]);
        ASSERT_EQ(im_buf_len(bufs[i]), cap);
        for (size_t j = 0; j < IM_BUF_HEADROOM + cap; j++)
            ASSERT_EQ(data[(ptrdiff_t)j - IM_BUF_HEADROOM], 'A' + i);
    }
    for (int i = 0; i < 8; i++)
        im_buf_unref(bufs[i]);
    ASSERT_EQ(pool_in_use(pool), 0);
    im_bufpool_free(pool);
}

/* ---- payload ---- */

TEST(len_and_append)
{
    static const size_t sizes[] = {16};
    im_bufpool_t *pool = small_pool(sizes, 1, 1, 1);
    im_buf_t *b = im_buf_alloc(pool, 10);

    ASSERT_NOT_NULL(b);
    ASSERT_EQ(im_buf_cap(b), 16);
    ASSERT_EQ(im_buf_append(b, "hello ", 6), IM_OK);
    ASSERT_EQ(im_buf_append(b, "world", 5), IM_OK);
    ASSERT_EQ(im_buf_len(b), 11);
    ASSERT_MEM_EQ(im_buf_data(b), "hello world", 11);
    ASSERT_EQ(im_buf_append(b, "!!!!!!", 6), IM_ERANGE); /* 17 > 16: nothing copied */
    ASSERT_EQ(im_buf_len(b), 11);
    ASSERT_EQ(im_buf_append(b, "!!!!!", 5), IM_OK); /* exactly full */
    ASSERT_EQ(im_buf_len(b), 16);
    ASSERT_EQ(im_buf_append(b, "", 0), IM_OK);
    ASSERT_EQ(im_buf_append(b, "x", 1), IM_ERANGE);
    ASSERT_EQ(im_buf_set_len(b, 17), IM_ERANGE);
    ASSERT_EQ(im_buf_len(b), 16);
    ASSERT_EQ(im_buf_set_len(b, 3), IM_OK);
    ASSERT_EQ(im_buf_len(b), 3);
    im_buf_unref(b);
    b = im_buf_alloc(pool, 1); /* the same buffer, recycled: length starts again at 0 */
    ASSERT_NOT_NULL(b);
    ASSERT_EQ(im_buf_len(b), 0);
    im_buf_unref(b);
    im_bufpool_free(pool);
}

/* ---- exhaustion ---- */

/* im_buf_alloc_any: a full class or an oversize request is served from the
 * heap, counted, and freed by the last unref (ASan checks the free); the
 * pool's own buffers are unaffected. */
TEST(alloc_any_falls_back_to_heap)
{
    static const size_t sizes[] = {64};
    im_bufpool_t *pool = small_pool(sizes, 1, 2, 2);
    im_buf_t *a = im_buf_alloc_any(pool, 10), *b = im_buf_alloc_any(pool, 10);
    im_buf_t *heap, *big;
    im_bufpool_stats_t st;

    ASSERT_NOT_NULL(a);
    ASSERT_NOT_NULL(b);
    ASSERT_NULL(im_buf_alloc(pool, 10)); /* the class is full */
    heap = im_buf_alloc_any(pool, 10);
    big = im_buf_alloc_any(pool, 5000);
    ASSERT_NOT_NULL(heap);
    ASSERT_NOT_NULL(big);
    ASSERT_GE(im_buf_cap(big), 5000);
    memset(im_buf_data(big) - IM_BUF_HEADROOM, 'x', IM_BUF_HEADROOM + 5000);
    ASSERT_EQ(im_buf_append(heap, "hello", 5), IM_OK);
    ASSERT_EQ(im_buf_len(heap), 5);
    ASSERT_NULL(im_buf_alloc_any(pool, IM_BUF_SIZE_LIMIT + 1));
    im_bufpool_stats(pool, &st);
    ASSERT_U64_EQ(st.heap, 2);
    ASSERT_EQ(st.in_use, 2); /* heap buffers are not the pool's */
    im_buf_ref(heap);
    im_buf_unref(heap);
    im_buf_unref(heap);
    im_buf_unref(big);
    im_buf_unref(a);
    im_buf_unref(b);
    im_bufpool_stats(pool, &st);
    ASSERT_EQ(st.in_use, 0);
    im_bufpool_free(pool);
}

TEST(exhaustion_null_counted_and_recovers)
{
    static const size_t sizes[] = {64, 128};
    im_bufpool_t *pool = small_pool(sizes, 2, 4, 2);
    im_buf_t *bufs[4];
    im_bufpool_stats_t st;

    for (int i = 0; i < 4; i++) {
        bufs[i] = im_buf_alloc(pool, 64);
        ASSERT_NOT_NULL(bufs[i]);
    }
    ASSERT_NULL(im_buf_alloc(pool, 64));
    ASSERT_NULL(im_buf_alloc(pool, 1));
    im_bufpool_stats(pool, &st);
    ASSERT_U64_EQ(st.classes[0].exhausted, 2);
    ASSERT_EQ(st.classes[0].in_use, 4);
    ASSERT_EQ(st.classes[0].allocated, 4);
    /* No borrowing from the larger class: it is untouched and still serves. */
    ASSERT_EQ(st.classes[1].in_use, 0);
    ASSERT_U64_EQ(st.classes[1].exhausted, 0);
    ASSERT_U64_EQ(st.exhausted, 2);
    ASSERT_U64_EQ(st.oversize, 0);

    im_buf_unref(bufs[2]);
    bufs[2] = im_buf_alloc(pool, 64);
    ASSERT_NOT_NULL(bufs[2]);
    ASSERT_NULL(im_buf_alloc(pool, 64));
    im_bufpool_stats(pool, &st);
    ASSERT_U64_EQ(st.classes[0].exhausted, 3);
    ASSERT_EQ(st.classes[0].high_water, 4);
    for (int i = 0; i < 4; i++)
        im_buf_unref(bufs[i]);
    ASSERT_EQ(pool_in_use(pool), 0);
    for (int i = 0; i < 4; i++) {
        bufs[i] = im_buf_alloc(pool, 64);
        ASSERT_NOT_NULL(bufs[i]);
    }
    for (int i = 0; i < 4; i++)
        im_buf_unref(bufs[i]);
    im_bufpool_free(pool);
}

/* ---- refcounts ---- */

TEST(refcount_returns_on_last_unref_only)
{
    enum { CONNS = 1000 };
    static const size_t sizes[] = {256};
    im_bufpool_t *pool = small_pool(sizes, 1, 1, 1); /* one buffer: reuse proves release */
    im_buf_t *queued[CONNS];
    im_buf_t *b = im_buf_alloc(pool, 200);

    ASSERT_NOT_NULL(b);
    ASSERT_EQ(im_buf_append(b, "fan-out", 7), IM_OK);
    for (int i = 0; i < CONNS; i++) {
        queued[i] = im_buf_ref(b);
        ASSERT_TRUE(queued[i] == b);
    }
    im_buf_unref(b); /* the producer lets go; the 1000 queues still hold it */
    ASSERT_EQ(class_stats(pool, 0).in_use, 1);
    for (int i = 0; i < CONNS - 1; i++) {
        im_buf_unref(queued[i]);
        ASSERT_EQ(class_stats(pool, 0).in_use, 1);
        ASSERT_MEM_EQ(im_buf_data(queued[CONNS - 1]), "fan-out", 7);
    }
    ASSERT_NULL(im_buf_alloc(pool, 1)); /* still referenced, so not on the free list */
    im_buf_unref(queued[CONNS - 1]);
    ASSERT_EQ(class_stats(pool, 0).in_use, 0);
    b = im_buf_alloc(pool, 1);
    ASSERT_NOT_NULL(b);
    im_buf_unref(b);
    im_buf_unref(NULL);
    im_bufpool_free(pool);
}

/* ---- growth and the allocator ---- */

TEST(grows_in_slabs_up_to_max_never_shrinks)
{
    static const size_t sizes[] = {256};
    im_bufpool_t *pool;
    im_buf_t *bufs[7];
    im_bufclass_stats_t cs;

    n_allocs = n_frees = 0;
    im_set_allocator(&counting);
    pool = small_pool(sizes, 1, 7, 3);
    ASSERT_EQ(n_allocs, 1); /* the pool itself, no prealloc */
    ASSERT_EQ(class_stats(pool, 0).allocated, 0);
    for (int i = 0; i < 7; i++) {
        static const size_t want_allocated[] = {3, 3, 3, 6, 6, 6, 7};
        static const size_t want_allocs[] = {2, 2, 2, 3, 3, 3, 4};

        bufs[i] = im_buf_alloc(pool, 256);
        ASSERT_NOT_NULL(bufs[i]);
        ASSERT_EQ(class_stats(pool, 0).allocated, want_allocated[i]);
        ASSERT_EQ(n_allocs, want_allocs[i]); /* one allocation per slab */
    }
    ASSERT_NULL(im_buf_alloc(pool, 256));
    ASSERT_EQ(n_allocs, 4);
    for (int i = 0; i < 7; i++)
        im_buf_unref(bufs[i]);
    cs = class_stats(pool, 0);
    ASSERT_EQ(cs.allocated, 7);
    ASSERT_EQ(cs.in_use, 0);
    ASSERT_EQ(cs.high_water, 7);
    ASSERT_GE(cs.bytes, 7 * (256 + IM_BUF_HEADROOM));
    ASSERT_EQ(n_frees, 0); /* kept for reuse while the pool lives */
    im_bufpool_free(pool);
    ASSERT_EQ(n_frees, n_allocs);
    im_set_allocator(NULL);
}

TEST(no_malloc_in_steady_state)
{
    enum { LIVE = 64, ITERS = 200000 };
    im_bufpool_t *pool;
    im_buf_t *live[LIVE] = {0};
    im_buf_t *warm[LIVE];
    uint32_t seed = 12345;
    size_t allocs_before, frees_before;

    n_allocs = n_frees = 0;
    im_set_allocator(&counting);
    pool = im_bufpool_new(NULL);
    /* Warm-up: grow every class to the most this loop can hold at once. */
    for (size_t c = 0; c < 5; c++) {
        size_t size = class_stats(pool, c).size;

        for (int i = 0; i < LIVE; i++)
            warm[i] = im_buf_alloc(pool, size);
        for (int i = 0; i < LIVE; i++)
            im_buf_unref(warm[i]);
    }
    allocs_before = n_allocs;
    frees_before = n_frees;
    for (int i = 0; i < ITERS; i++) {
        uint32_t r = rnd(&seed);
        size_t slot = r % LIVE;
        im_buf_t *b;

        im_buf_unref(live[slot]);
        b = im_buf_alloc(pool, (r >> 8) % 65537);
        ASSERT_NOT_NULL(b);
        im_buf_data(b)[0] = (char)r;
        if (r & 0x80000000u) { /* fan out to a few queues and drain them */
            im_buf_ref(b);
            im_buf_ref(b);
            im_buf_unref(b);
            im_buf_unref(b);
        }
        live[slot] = b;
    }
    ASSERT_EQ(n_allocs - allocs_before, 0);
    ASSERT_EQ(n_frees - frees_before, 0);
    for (int i = 0; i < LIVE; i++)
        im_buf_unref(live[i]);
    ASSERT_EQ(pool_in_use(pool), 0);
    im_bufpool_free(pool);
    ASSERT_EQ(n_frees, n_allocs);
    im_set_allocator(NULL);
}

/* ---- stats ---- */

TEST(stats_per_class)
{
    static const size_t sizes[] = {64, 128, 256};
    im_bufpool_t *pool = small_pool(sizes, 3, 10, 5);
    im_buf_t *a[3], *b[2], *c;
    im_bufpool_stats_t st;

    for (int i = 0; i < 3; i++)
        a[i] = im_buf_alloc(pool, 64);
    for (int i = 0; i < 2; i++)
        b[i] = im_buf_alloc(pool, 65);
    c = im_buf_alloc(pool, 256);
    ASSERT_NULL(im_buf_alloc(pool, 257));
    im_bufpool_stats(pool, &st);
    ASSERT_EQ(st.nclasses, 3);
    ASSERT_EQ(st.classes[0].in_use, 3);
    ASSERT_EQ(st.classes[1].in_use, 2);
    ASSERT_EQ(st.classes[2].in_use, 1);
    ASSERT_EQ(st.in_use, 6);
    ASSERT_EQ(st.classes[0].allocated, 5);
    ASSERT_EQ(st.classes[0].bytes + st.classes[1].bytes + st.classes[2].bytes, st.bytes);
    ASSERT_U64_EQ(st.oversize, 1);

    for (int i = 0; i < 3; i++)
        im_buf_unref(a[i]);
    im_buf_unref(b[0]);
    im_bufpool_stats(pool, &st);
    ASSERT_EQ(st.classes[0].in_use, 0);
    ASSERT_EQ(st.classes[0].high_water, 3);
    ASSERT_EQ(st.classes[1].in_use, 1);
    ASSERT_EQ(st.classes[1].high_water, 2);
    ASSERT_EQ(st.in_use, 2);
    im_buf_unref(b[1]);
    im_buf_unref(c);
    ASSERT_EQ(pool_in_use(pool), 0);
    im_bufpool_free(pool);
}

/* ---- threads ---- */

/* A bounded blocking queue: the hand-off between the thread that fills a
 * buffer (the AMQP consumer) and the threads that send it (event loops). */
enum { QCAP = 64 };

typedef struct queue_s {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    im_buf_t *items[QCAP];
    size_t head, n;
    int closed;
} queue_t;

static void queue_init(queue_t *q)
{
    memset(q, 0, sizeof(*q));
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
}

static void queue_destroy(queue_t *q)
{
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
}

static void queue_push(queue_t *q, im_buf_t *b)
{
    pthread_mutex_lock(&q->lock);
    while (q->n == QCAP)
        pthread_cond_wait(&q->cond, &q->lock);
    q->items[(q->head + q->n++) % QCAP] = b;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

static void queue_close(queue_t *q)
{
    pthread_mutex_lock(&q->lock);
    q->closed = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

/* NULL once the queue is closed and drained. */
static im_buf_t *queue_pop(queue_t *q)
{
    im_buf_t *b = NULL;

    pthread_mutex_lock(&q->lock);
    while (q->n == 0 && !q->closed)
        pthread_cond_wait(&q->cond, &q->lock);
    if (q->n > 0) {
        b = q->items[q->head];
        q->head = (q->head + 1) % QCAP;
        q->n--;
        pthread_cond_broadcast(&q->cond);
    }
    pthread_mutex_unlock(&q->lock);
    return b;
}

enum { LOOPS = 3, MESSAGES = 20000 };

typedef struct fanout_s {
    im_bufpool_t *pool;
    queue_t queues[LOOPS];
    size_t received[LOOPS];
    size_t corrupt[LOOPS];
    size_t retries;
} fanout_t;

typedef struct loop_arg_s {
    fanout_t *f;
    size_t idx;
} loop_arg_t;

/* Payload: the message number in the first 4 bytes, then that number's low
 * byte repeated, so a receiver can tell a recycled-too-early buffer. */
static void fill_message(im_buf_t *b, uint32_t n, size_t len)
{
    char *data = im_buf_data(b);

    memcpy(data, &n, sizeof(n));
    memset(data + sizeof(n), (int)(n & 0xff), len - sizeof(n));
    im_buf_set_len(b, len);
}

static int message_ok(im_buf_t *b)
{
    const char *data = im_buf_data(b);
    uint32_t n;

    memcpy(&n, data, sizeof(n));
    for (size_t i = sizeof(n); i < im_buf_len(b); i++)
        if (data[i] != (char)(n & 0xff))
            return 0;
    return 1;
}

static void *amqp_thread(void *arg)
{
    fanout_t *f = arg;
    uint32_t seed = 777;

    for (uint32_t n = 0; n < MESSAGES; n++) {
        size_t len = sizeof(n) + rnd(&seed) % 5000;
        im_buf_t *b;

        while ((b = im_buf_alloc(f->pool, len)) == NULL) {
            f->retries++; /* exhausted: the loops are behind; let them catch up */
            sched_yield();
        }
        fill_message(b, n, len);
        for (size_t i = 0; i < LOOPS; i++)
            queue_push(&f->queues[i], i + 1 < LOOPS ? im_buf_ref(b) : b);
    }
    for (size_t i = 0; i < LOOPS; i++)
        queue_close(&f->queues[i]);
    return NULL;
}

static void *loop_thread(void *arg)
{
    loop_arg_t *la = arg;
    fanout_t *f = la->f;
    im_buf_t *b;

    while ((b = queue_pop(&f->queues[la->idx])) != NULL) {
        if (!message_ok(b))
            f->corrupt[la->idx]++;
        f->received[la->idx]++;
        im_buf_unref(b);
    }
    return NULL;
}

TEST(mt_fill_on_one_thread_release_on_others)
{
    static const size_t sizes[] = {256, 1024, 4096, 8192};
    static fanout_t f;
    pthread_t amqp, loops[LOOPS];
    loop_arg_t args[LOOPS];
    im_bufpool_stats_t st;

    memset(&f, 0, sizeof(f));
    f.pool = small_pool(sizes, 4, 32, 8); /* small, so exhaustion happens under load */
    for (size_t i = 0; i < LOOPS; i++)
        queue_init(&f.queues[i]);
    for (size_t i = 0; i < LOOPS; i++) {
        args[i] = (loop_arg_t){&f, i};
        ASSERT_EQ(pthread_create(&loops[i], NULL, loop_thread, &args[i]), 0);
    }
    ASSERT_EQ(pthread_create(&amqp, NULL, amqp_thread, &f), 0);
    pthread_join(amqp, NULL);
    for (size_t i = 0; i < LOOPS; i++)
        pthread_join(loops[i], NULL);

    for (size_t i = 0; i < LOOPS; i++) {
        ASSERT_EQ(f.received[i], MESSAGES);
        ASSERT_EQ(f.corrupt[i], 0);
        queue_destroy(&f.queues[i]);
    }
    im_bufpool_stats(f.pool, &st);
    ASSERT_EQ(st.in_use, 0);
    ASSERT_U64_EQ(st.exhausted, f.retries);
    for (size_t i = 0; i < 4; i++) {
        ASSERT_LE(st.classes[i].allocated, 32);
        ASSERT_LE(st.classes[i].high_water, 32);
    }
    im_bufpool_free(f.pool);
}

/* Workers allocate, share and release buffers at random; a reference moves
 * to another worker through a mailbox, so the last release of a buffer
 * happens on any thread.  The workers own up to 32 buffers at once and the
 * pool holds 24, so allocations are refused all the time. */
enum { WORKERS = 4, STRESS_OPS = 100000, MAILBOXES = 8, OWN = 8, STRESS_MAX = 8 };

static const size_t stress_sizes[] = {256, 1024, 4096};

typedef struct stress_s {
    im_bufpool_t *pool;
    _Atomic(im_buf_t *) mailbox[MAILBOXES];
    size_t corrupt[WORKERS];
    size_t refused[WORKERS];
} stress_t;

typedef struct worker_arg_s {
    stress_t *s;
    size_t idx;
} worker_arg_t;

/* Releases a buffer that came from another worker, checking it first. */
static void check_and_release(stress_t *s, size_t idx, im_buf_t *b)
{
    if (b != NULL && !message_ok(b))
        s->corrupt[idx]++;
    im_buf_unref(b);
}

static void stress_step(stress_t *s, size_t idx, im_buf_t **own, uint32_t r)
{
    im_buf_t **mine = &own[r % OWN];
    _Atomic(im_buf_t *) *box = &s->mailbox[(r >> 4) % MAILBOXES];
    size_t len = stress_sizes[(r >> 12) % 3] - (r >> 16) % 64;

    switch ((r >> 8) % 4) {
    case 0:
        im_buf_unref(*mine);
        *mine = im_buf_alloc(s->pool, len);
        if (*mine == NULL)
            s->refused[idx]++;
        else
            fill_message(*mine, r, len);
        break;
    case 1:
        if (*mine != NULL)
            check_and_release(s, idx, atomic_exchange(box, im_buf_ref(*mine)));
        break;
    case 2:
        check_and_release(s, idx, atomic_exchange(box, NULL));
        break;
    default:
        if (*mine != NULL)
            check_and_release(s, idx, im_buf_ref(*mine));
        break;
    }
}

static void *stress_worker(void *arg)
{
    worker_arg_t *wa = arg;
    im_buf_t *own[OWN] = {0};
    uint32_t seed = 1 + (uint32_t)wa->idx * 7919;

    for (int i = 0; i < STRESS_OPS; i++)
        stress_step(wa->s, wa->idx, own, rnd(&seed));
    for (int i = 0; i < OWN; i++)
        im_buf_unref(own[i]);
    return NULL;
}

TEST(mt_alloc_share_release_stress)
{
    static stress_t s;
    pthread_t threads[WORKERS];
    worker_arg_t args[WORKERS];
    im_bufpool_stats_t st;
    uint64_t refused = 0;

    memset(&s, 0, sizeof(s));
    s.pool = small_pool(stress_sizes, 3, STRESS_MAX, 3);
    for (size_t i = 0; i < MAILBOXES; i++)
        atomic_init(&s.mailbox[i], NULL);
    for (size_t i = 0; i < WORKERS; i++) {
        args[i] = (worker_arg_t){&s, i};
        ASSERT_EQ(pthread_create(&threads[i], NULL, stress_worker, &args[i]), 0);
    }
    for (size_t i = 0; i < WORKERS; i++)
        pthread_join(threads[i], NULL);
    for (size_t i = 0; i < MAILBOXES; i++)
        check_and_release(&s, 0, atomic_exchange(&s.mailbox[i], NULL));

    im_bufpool_stats(s.pool, &st);
    for (size_t i = 0; i < WORKERS; i++) {
        ASSERT_EQ(s.corrupt[i], 0);
        refused += s.refused[i];
    }
    ASSERT_EQ(st.in_use, 0);
    ASSERT_U64_EQ(st.exhausted, refused);
    ASSERT_GT(refused, 0);
    for (size_t i = 0; i < 3; i++) {
        ASSERT_LE(st.classes[i].allocated, STRESS_MAX);
        ASSERT_LE(st.classes[i].high_water, STRESS_MAX);
    }
    im_bufpool_free(s.pool);
}

int main(void)
{
    RUN(defaults);
    RUN(config_rejects_invalid);
    RUN(class_selection_boundaries);
    RUN(oversize_refused_and_counted);
    RUN(headroom_aligned_and_writable);
    RUN(len_and_append);
    RUN(exhaustion_null_counted_and_recovers);
    RUN(alloc_any_falls_back_to_heap);
    RUN(refcount_returns_on_last_unref_only);
    RUN(grows_in_slabs_up_to_max_never_shrinks);
    RUN(no_malloc_in_steady_state);
    RUN(stats_per_class);
    RUN(mt_fill_on_one_thread_release_on_others);
    RUN(mt_alloc_share_release_stress);
    return im_test_done();
}
