/*
 * bm_hist.h - a fixed-memory latency histogram, HDR style: values below 16
 * are exact, above that each power of two is split into 16 linear
 * sub-buckets, so any recorded value is reported within 1/16 (6.25%) of
 * itself, over the whole uint64 range, in 976 counters (7.8 KiB).  Recording
 * is O(1) with no allocation; a percentile walks the counters once.
 *
 * Units are the caller's (the benchmark records nanoseconds).  Percentiles
 * return the highest value of the bucket holding that rank (never below the
 * true value), clamped to the exact maximum.  Not thread-safe: one owner.
 */
#ifndef BM_HIST_H
#define BM_HIST_H

#include <stdint.h>

#define BM_HIST_SUB_BITS 4
#define BM_HIST_SUB      (1u << BM_HIST_SUB_BITS)
#define BM_HIST_BUCKETS  ((64 - BM_HIST_SUB_BITS + 1) * BM_HIST_SUB)

typedef struct bm_hist_s {
    uint64_t count;
    uint64_t min, max; /* exact; min is UINT64_MAX while empty */
    uint64_t sum;      /* saturates instead of wrapping */
    uint64_t b[BM_HIST_BUCKETS];
} bm_hist_t;

/* Empties h. */
void bm_hist_reset(bm_hist_t *h);

/* Records one value. */
void bm_hist_add(bm_hist_t *h, uint64_t v);

/* Adds every value of src to dst. */
void bm_hist_merge(bm_hist_t *dst, const bm_hist_t *src);

/* The value at percentile p (0 < p <= 100) as described at the top; 0 when h
 * is empty. */
uint64_t bm_hist_pct(const bm_hist_t *h, double p);

/* The mean, 0 when empty. */
double bm_hist_mean(const bm_hist_t *h);

/* Bucket arithmetic, exposed for the unit test: the bucket of v, and the
 * lowest and highest value a bucket holds. */
unsigned bm_hist_bucket(uint64_t v);
uint64_t bm_hist_low(unsigned b);
uint64_t bm_hist_high(unsigned b);

#endif
