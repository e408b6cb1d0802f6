#include "im_metrics.h"

#include <inttypes.h>
#include <stdio.h>

/* Upper bounds in microseconds, and as Prometheus writes them. */
static const uint64_t bound_us[IM_HIST_BUCKETS] = {500,    1000,    2500,    5000,   10000,
                                                   25000,  50000,   100000,  250000, 500000,
                                                   1000000, 2500000, 5000000, 10000000};
static const char *const bound_text[IM_HIST_BUCKETS] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1",    "0.25",  "0.5",    "1",     "2.5",  "5",     "10"};

void im_hist_observe_us(im_hist_t *h, uint64_t us)
{
    unsigned i = 0;

    while (i < IM_HIST_BUCKETS && us > bound_us[i])
        i++;
    if (i < IM_HIST_BUCKETS)
        atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
}

size_t im_hist_format(const im_hist_t *h, const char *name, const char *help, char *buf,
                      size_t cap)
{
    uint64_t cumulative = 0, count = atomic_load_explicit(&h->count, memory_order_relaxed);
    uint64_t sum_us = atomic_load_explicit(&h->sum_us, memory_order_relaxed);
    size_t n = 0;
    int w;

#define APPEND(...)                                                                                \
    do {                                                                                           \
        w = snprintf(buf + (n < cap ? n : cap), n < cap ? cap - n : 0, __VA_ARGS__);               \
        n += w > 0 ? (size_t)w : 0;                                                                \
    } while (0)
    APPEND("# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (unsigned i = 0; i < IM_HIST_BUCKETS; i++) {
        cumulative += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        APPEND("%s_bucket{le=\"%s\"} %" PRIu64 "\n", name, bound_text[i], cumulative);
    }
    /* Observations in flight between the reads may make +Inf lag count by
     * one; +Inf must never be below the last bucket. */
    APPEND("%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, count > cumulative ? count : cumulative);
    APPEND("%s_sum %" PRIu64 ".%06" PRIu64 "\n", name, sum_us / 1000000, sum_us % 1000000);
    APPEND("%s_count %" PRIu64 "\n", name, count > cumulative ? count : cumulative);
#undef APPEND
    return n;
}
