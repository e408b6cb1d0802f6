#include "bm_wheel.h"

#include <stdint.h>

#include "im_alloc.h"
#include "im_time.h"
#include "im_wheel.h"

#define MIN_TIMEOUT_MS 1000
#define MAX_TIMEOUT_MS 60000
#define NOT_IN_HEAP    SIZE_MAX

/* The straightforward alternative: a binary min-heap on the expiry, each
 * timer remembering its index so cancel and re-arm are O(log n) instead of a
 * search. */
typedef struct heap_timer_s heap_timer_t;
typedef void (*heap_timer_cb)(heap_timer_t *t, void *arg);

struct heap_timer_s {
    uint64_t expires; /* absolute ms */
    size_t idx;       /* position in the heap, NOT_IN_HEAP when not pending */
    heap_timer_cb cb;
    void *arg;
};

typedef struct {
    heap_timer_t **items;
    size_t len;
    uint64_t now_ms;
} heap_t;

static void heap_set(heap_t *h, size_t i, heap_timer_t *t)
{
    h->items[i] = t;
    t->idx = i;
}

static void sift_up(heap_t *h, size_t i)
{
    heap_timer_t *t = h->items[i];

    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (h->items[parent]->expires <= t->expires)
            break;
        heap_set(h, i, h->items[parent]);
        i = parent;
    }
    heap_set(h, i, t);
}

static void sift_down(heap_t *h, size_t i)
{
    heap_timer_t *t = h->items[i];

    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= h->len)
            break;
        if (child + 1 < h->len && h->items[child + 1]->expires < h->items[child]->expires)
            child++;
        if (t->expires <= h->items[child]->expires)
            break;
        heap_set(h, i, h->items[child]);
        i = child;
    }
    heap_set(h, i, t);
}

static void heap_cancel(heap_t *h, heap_timer_t *t)
{
    size_t i = t->idx;
    heap_timer_t *last;

    if (i == NOT_IN_HEAP)
        return;
    t->idx = NOT_IN_HEAP;
    last = h->items[--h->len];
    if (last == t)
        return;
    heap_set(h, i, last);
    sift_up(h, i);
    sift_down(h, last->idx);
}

/* Same contract as im_wheel_add: arms or re-arms, relative to the clock. */
static void heap_add(heap_t *h, heap_timer_t *t, uint64_t timeout_ms)
{
    heap_cancel(h, t);
    t->expires = h->now_ms + timeout_ms;
    heap_set(h, h->len++, t);
    sift_up(h, t->idx);
}

static size_t heap_advance(heap_t *h, uint64_t now_ms)
{
    size_t fired = 0;

    h->now_ms = now_ms;
    while (h->len > 0 && h->items[0]->expires <= now_ms) {
        heap_timer_t *t = h->items[0];
        heap_cancel(h, t);
        t->cb(t, t->arg);
        fired++;
    }
    return fired;
}

/* The random choices, drawn once so both contenders get the same ones and
 * the generator stays out of the timings. */
typedef struct {
    size_t n;
    uint64_t *add_ms;
    size_t *rearm_idx;
    uint64_t *rearm_ms;
} workload_t;

/* Nanoseconds per phase, and what the phase did. */
typedef struct {
    uint64_t add_ns, rearm_ns, expire_ns;
    size_t fired;
} result_t;

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void workload_init(workload_t *wl, size_t n)
{
    uint64_t seed = 0x9e3779b97f4a7c15u;
    const uint64_t range = MAX_TIMEOUT_MS - MIN_TIMEOUT_MS + 1;

    wl->n = n;
    wl->add_ms = im_malloc(n * sizeof(*wl->add_ms));
    wl->rearm_idx = im_malloc(n * sizeof(*wl->rearm_idx));
    wl->rearm_ms = im_malloc(n * sizeof(*wl->rearm_ms));
    for (size_t i = 0; i < n; i++) {
        wl->add_ms[i] = MIN_TIMEOUT_MS + xorshift(&seed) % range;
        wl->rearm_idx[i] = (size_t)(xorshift(&seed) % n);
        wl->rearm_ms[i] = MIN_TIMEOUT_MS + xorshift(&seed) % range;
    }
}

static void workload_free(workload_t *wl)
{
    im_free(wl->add_ms);
    im_free(wl->rearm_idx);
    im_free(wl->rearm_ms);
}

static void wheel_cb(im_timer_t *t, void *arg)
{
    (void)t;
    ++*(size_t *)arg;
}

static void heap_cb(heap_timer_t *t, void *arg)
{
    (void)t;
    ++*(size_t *)arg;
}

static result_t run_wheel(const workload_t *wl)
{
    im_timer_t *timers = im_malloc(wl->n * sizeof(*timers));
    im_wheel_t *w = im_malloc(sizeof(*w));
    result_t r = {0};
    uint64_t t0, now = 0;

    im_wheel_init(w, now, 1);
    for (size_t i = 0; i < wl->n; i++)
        im_timer_init(&timers[i], wheel_cb, &r.fired);
    t0 = im_mono_ns();
    for (size_t i = 0; i < wl->n; i++)
        im_wheel_add(w, &timers[i], wl->add_ms[i]);
    r.add_ns = im_mono_ns() - t0;
    t0 = im_mono_ns();
    for (size_t i = 0; i < wl->n; i++)
        im_wheel_add(w, &timers[wl->rearm_idx[i]], wl->rearm_ms[i]);
    r.rearm_ns = im_mono_ns() - t0;
    t0 = im_mono_ns();
    while (im_wheel_count(w) > 0)
        im_wheel_advance(w, ++now);
    r.expire_ns = im_mono_ns() - t0;
    im_wheel_destroy(w);
    im_free(w);
    im_free(timers);
    return r;
}

static result_t run_heap(const workload_t *wl)
{
    heap_timer_t *timers = im_malloc(wl->n * sizeof(*timers));
    heap_t h = {im_malloc(wl->n * sizeof(*h.items)), 0, 0};
    result_t r = {0};
    uint64_t t0, now = 0;

    for (size_t i = 0; i < wl->n; i++)
        timers[i] = (heap_timer_t){0, NOT_IN_HEAP, heap_cb, &r.fired};
    t0 = im_mono_ns();
    for (size_t i = 0; i < wl->n; i++)
        heap_add(&h, &timers[i], wl->add_ms[i]);
    r.add_ns = im_mono_ns() - t0;
    t0 = im_mono_ns();
    for (size_t i = 0; i < wl->n; i++)
        heap_add(&h, &timers[wl->rearm_idx[i]], wl->rearm_ms[i]);
    r.rearm_ns = im_mono_ns() - t0;
    t0 = im_mono_ns();
    while (h.len > 0)
        heap_advance(&h, ++now);
    r.expire_ns = im_mono_ns() - t0;
    im_free(h.items);
    im_free(timers);
    return r;
}

static double ops_per_s(size_t ops, uint64_t ns)
{
    return ns ? (double)ops * 1e9 / (double)ns : 0.0;
}

static void print_row(FILE *out, const char *op, size_t ops, uint64_t wheel_ns, uint64_t heap_ns)
{
    double wheel = ops_per_s(ops, wheel_ns), heap = ops_per_s(ops, heap_ns);

    fprintf(out, "%-8s %14.0f %14.0f %7.2fx\n", op, wheel, heap, heap > 0 ? wheel / heap : 0.0);
}

void bm_wheel_run(FILE *out, size_t n_timers)
{
    workload_t wl;
    result_t wheel, heap;

    workload_init(&wl, n_timers);
    wheel = run_wheel(&wl);
    heap = run_heap(&wl);
    fprintf(out, "timers: %zu, timeouts %d-%d ms, 1 ms clock steps; ratio = wheel / heap\n",
            n_timers, MIN_TIMEOUT_MS, MAX_TIMEOUT_MS);
    fprintf(out, "%-8s %14s %14s %8s\n", "op", "wheel ops/s", "heap ops/s", "ratio");
    print_row(out, "add", n_timers, wheel.add_ns, heap.add_ns);
    print_row(out, "rearm", n_timers, wheel.rearm_ns, heap.rearm_ns);
    print_row(out, "expire", n_timers, wheel.expire_ns, heap.expire_ns);
    print_row(out, "total", 3 * n_timers, wheel.add_ns + wheel.rearm_ns + wheel.expire_ns,
              heap.add_ns + heap.rearm_ns + heap.expire_ns);
    if (wheel.fired != n_timers || heap.fired != n_timers)
        fprintf(out, "error: fired %zu (wheel) and %zu (heap), expected %zu\n", wheel.fired,
                heap.fired, n_timers);
    workload_free(&wl);
}
