#include "bm_hist.h"

#include <string.h>

void bm_hist_reset(bm_hist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

unsigned bm_hist_bucket(uint64_t v)
{
    unsigned e;

    if (v < BM_HIST_SUB)
        return (unsigned)v;
    e = 63u - (unsigned)__builtin_clzll(v); /* v in [2^e, 2^(e+1)), e >= SUB_BITS */
    return (e - BM_HIST_SUB_BITS + 1) * BM_HIST_SUB +
           (unsigned)((v >> (e - BM_HIST_SUB_BITS)) & (BM_HIST_SUB - 1));
}

uint64_t bm_hist_low(unsigned b)
{
    unsigned e = b / BM_HIST_SUB + BM_HIST_SUB_BITS - 1, m = b % BM_HIST_SUB;

    if (b < BM_HIST_SUB)
        return b;
    return ((uint64_t)1 << e) | ((uint64_t)m << (e - BM_HIST_SUB_BITS));
}

uint64_t bm_hist_high(unsigned b)
{
    unsigned e = b / BM_HIST_SUB + BM_HIST_SUB_BITS - 1;

    if (b < BM_HIST_SUB)
        return b;
    return bm_hist_low(b) + (((uint64_t)1 << (e - BM_HIST_SUB_BITS)) - 1);
}

void bm_hist_add(bm_hist_t *h, uint64_t v)
{
    h->b[bm_hist_bucket(v)]++;
    h->count++;
    h->sum = h->sum + v < h->sum ? UINT64_MAX : h->sum + v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void bm_hist_merge(bm_hist_t *dst, const bm_hist_t *src)
{
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < BM_HIST_BUCKETS; i++)
        dst->b[i] += src->b[i];
    dst->count += src->count;
    dst->sum = dst->sum + src->sum < dst->sum ? UINT64_MAX : dst->sum + src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t bm_hist_pct(const bm_hist_t *h, double p)
{
    uint64_t rank, seen = 0;

    if (h->count == 0)
        return 0;
    /* The smallest value with at least p% of the values at or below it. */
    rank = (uint64_t)((p / 100.0) * (double)h->count + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    for (unsigned i = 0; i < BM_HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = bm_hist_high(i);
            return v > h->max ? h->max : v < h->min ? h->min : v;
        }
    }
    return h->max;
}

double bm_hist_mean(const bm_hist_t *h)
{
    return h->count ? (double)h->sum / (double)h->count : 0.0;
}
