#include "gw_rate.h"

void gw_bucket_init(gw_bucket_t *b, uint32_t burst, uint64_t now_ms)
{
    b->milli = (int64_t)burst * 1000;
    b->last_ms = now_ms;
}

gw_rate_result_t gw_bucket_take(gw_bucket_t *b, uint32_t rate, uint32_t burst, uint64_t now_ms)
{
    int64_t full = (int64_t)burst * 1000;

    if (rate == 0)
        return GW_RATE_OK;
    /* rate tokens per second is rate thousandths per millisecond.  A clock
     * that did not advance (or a huge gap) cannot overflow: the gap is capped
     * at what refills an empty bucket from the deepest debt. */
    if (now_ms > b->last_ms) {
        uint64_t gap = now_ms - b->last_ms, cap = 2 * (uint64_t)full / rate + 1;

        b->milli += (int64_t)(gap < cap ? gap : cap) * rate;
        if (b->milli > full)
            b->milli = full;
        b->last_ms = now_ms;
    }
    if (b->milli >= 1000) {
        b->milli -= 1000;
        return GW_RATE_OK;
    }
    if (b->milli - 1000 <= -full) {
        b->milli = -full; /* the debt stops growing: recovery stays bounded */
        return GW_RATE_ABUSE;
    }
    b->milli -= 1000;
    return GW_RATE_LIMITED;
}
