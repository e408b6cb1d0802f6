#include "bm_buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "im_buf.h"
#include "im_time.h"

#define LIVE    64   /* buffers alive at once in alloc+free; below every default max */
#define TOUCH   8    /* bytes written to each allocation, so both really hand out memory */
#define NSIZES  4096 /* request sizes drawn in advance, used round-robin */
#define FANOUT  1000 /* connections per fanned-out message */
#define PAYLOAD 100  /* bytes per fanned-out message */

/* Sizes are drawn before timing so the random generator costs neither side. */
static void draw_sizes(size_t *sizes)
{
    im_bufpool_config_t cfg;
    uint32_t x = 2463534242u;

    im_bufpool_config_default(&cfg);
    for (size_t i = 0; i < NSIZES; i++) {
        size_t cls, lo, hi;

        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        cls = x % cfg.nclasses;
        lo = cls ? cfg.classes[cls - 1].size + 1 : TOUCH;
        hi = cfg.classes[cls].size;
        sizes[i] = lo + (x >> 8) % (hi - lo + 1);
    }
}

static double per_sec(size_t ops, uint64_t ns)
{
    return ns ? (double)ops * 1e9 / (double)ns : 0.0;
}

/* A NULL here means the pool's defaults no longer fit the benchmark: say so
 * rather than measure something else. */
static im_buf_t *must_alloc(im_bufpool_t *pool, size_t size)
{
    im_buf_t *b = im_buf_alloc(pool, size);

    if (b == NULL) {
        fprintf(stderr, "bm_buf: pool refused %zu bytes\n", size);
        abort();
    }
    return b;
}

static void pool_churn(im_bufpool_t *pool, im_buf_t **live, const size_t *sizes, size_t steps)
{
    for (size_t i = 0; i < steps; i++) {
        im_buf_t **slot = &live[i % LIVE];

        im_buf_unref(*slot);
        *slot = must_alloc(pool, sizes[i % NSIZES]);
        memset(im_buf_data(*slot), (int)i, TOUCH);
    }
}

static void malloc_churn(char **live, const size_t *sizes, size_t steps)
{
    for (size_t i = 0; i < steps; i++) {
        char **slot = &live[i % LIVE];

        free(*slot);
        *slot = malloc(sizes[i % NSIZES]);
        if (*slot == NULL)
            abort();
        memset(*slot, (int)i, TOUCH);
    }
}

static double pool_alloc_free(const size_t *sizes, size_t iterations)
{
    im_bufpool_t *pool = im_bufpool_new(NULL);
    im_buf_t *live[LIVE] = {0};
    uint64_t t0;
    double rate;

    pool_churn(pool, live, sizes, NSIZES);
    t0 = im_mono_ns();
    pool_churn(pool, live, sizes, iterations);
    rate = per_sec(iterations, im_mono_ns() - t0);
    for (size_t i = 0; i < LIVE; i++)
        im_buf_unref(live[i]);
    im_bufpool_free(pool);
    return rate;
}

static double malloc_alloc_free(const size_t *sizes, size_t iterations)
{
    char *live[LIVE] = {0};
    uint64_t t0;
    double rate;

    malloc_churn(live, sizes, NSIZES);
    t0 = im_mono_ns();
    malloc_churn(live, sizes, iterations);
    rate = per_sec(iterations, im_mono_ns() - t0);
    for (size_t i = 0; i < LIVE; i++)
        free(live[i]);
    return rate;
}

/* The queues of FANOUT connections, one slot each, filled then drained as a
 * gateway's write loop would. */
static void pool_fanout(im_bufpool_t *pool, im_buf_t **queued, const char *msg, size_t n)
{
    for (size_t m = 0; m < n; m++) {
        im_buf_t *b = must_alloc(pool, PAYLOAD);

        im_buf_append(b, msg, PAYLOAD);
        for (size_t i = 0; i < FANOUT; i++)
            queued[i] = im_buf_ref(b);
        im_buf_unref(b);
        for (size_t i = 0; i < FANOUT; i++)
            im_buf_unref(queued[i]);
    }
}

static void malloc_fanout(char **queued, const char *msg, size_t n)
{
    for (size_t m = 0; m < n; m++) {
        for (size_t i = 0; i < FANOUT; i++) {
            queued[i] = malloc(PAYLOAD);
            if (queued[i] == NULL)
                abort();
            memcpy(queued[i], msg, PAYLOAD);
        }
        for (size_t i = 0; i < FANOUT; i++)
            free(queued[i]);
    }
}

static void fanout_rates(size_t messages, double *pool_rate, double *malloc_rate)
{
    static im_buf_t *queued_bufs[FANOUT];
    static char *queued_copies[FANOUT];
    im_bufpool_t *pool = im_bufpool_new(NULL);
    char msg[PAYLOAD];
    uint64_t t0;

    memset(msg, 'm', sizeof(msg));
    pool_fanout(pool, queued_bufs, msg, 1);
    t0 = im_mono_ns();
    pool_fanout(pool, queued_bufs, msg, messages);
    *pool_rate = per_sec(messages, im_mono_ns() - t0);
    im_bufpool_free(pool);

    malloc_fanout(queued_copies, msg, 1);
    t0 = im_mono_ns();
    malloc_fanout(queued_copies, msg, messages);
    *malloc_rate = per_sec(messages, im_mono_ns() - t0);
}

static void row(FILE *out, const char *op, double pool, double libc)
{
    fprintf(out, "%-34s %14.0f %14.0f %7.2fx\n", op, pool, libc, libc > 0 ? pool / libc : 0.0);
}

void bm_buf_run(FILE *out, size_t iterations)
{
    static size_t sizes[NSIZES];
    size_t messages = iterations / FANOUT ? iterations / FANOUT : 1;
    double pool_rate, malloc_rate;

    draw_sizes(sizes);
    fprintf(out,
            "buffer pool: %zu alloc+free steps (%d live, sizes %d B-64 KiB), %zu fan-outs of "
            "%d B to %d connections; ratio = pool / malloc\n",
            iterations, LIVE, TOUCH, messages, PAYLOAD, FANOUT);
    fprintf(out, "%-34s %14s %14s %8s\n", "op", "pool ops/s", "malloc ops/s", "ratio");
    row(out, "alloc+free, random size", pool_alloc_free(sizes, iterations),
        malloc_alloc_free(sizes, iterations));
    fanout_rates(messages, &pool_rate, &malloc_rate);
    row(out, "fan-out 1 msg x 1000 (msgs/s)", pool_rate, malloc_rate);
}
