/* gw_rate: the token bucket lets a burst through, refills at the rate,
 * refuses without closing while the client only overshoots, and reports
 * abuse once the debt reaches a whole burst. */
#include "gw_rate.h"
#include "im_test.h"

TEST(burst_then_limited)
{
    gw_bucket_t b;

    gw_bucket_init(&b, 10, 1000);
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(gw_bucket_take(&b, 5, 10, 1000), GW_RATE_OK);
    ASSERT_EQ(gw_bucket_take(&b, 5, 10, 1000), GW_RATE_LIMITED);
}

TEST(refills_at_the_rate)
{
    gw_bucket_t b;

    gw_bucket_init(&b, 1, 0);
    ASSERT_EQ(gw_bucket_take(&b, 50, 1, 0), GW_RATE_OK);
    ASSERT_EQ(gw_bucket_take(&b, 50, 1, 19), GW_RATE_LIMITED); /* 0.95 - 1 token of debt */
    /* 50/s = one token per 20 ms; the refused message took one too. */
    ASSERT_EQ(gw_bucket_take(&b, 50, 1, 39), GW_RATE_LIMITED);
    gw_bucket_init(&b, 1, 0);
    ASSERT_EQ(gw_bucket_take(&b, 50, 1, 0), GW_RATE_OK);
    ASSERT_EQ(gw_bucket_take(&b, 50, 1, 20), GW_RATE_OK);
    ASSERT_EQ(gw_bucket_take(&b, 50, 1, 40), GW_RATE_OK);
}

TEST(never_above_burst)
{
    gw_bucket_t b;
    int ok = 0;

    gw_bucket_init(&b, 3, 0);
    for (int i = 0; i < 10; i++)
        ok += gw_bucket_take(&b, 100, 3, 3600000) == GW_RATE_OK; /* an hour idle */
    ASSERT_EQ(ok, 3);
}

TEST(sustained_overuse_is_abuse)
{
    gw_bucket_t b;
    int limited = 0;
    gw_rate_result_t r;

    gw_bucket_init(&b, 10, 0);
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(gw_bucket_take(&b, 1, 10, 0), GW_RATE_OK);
    while ((r = gw_bucket_take(&b, 1, 10, 0)) == GW_RATE_LIMITED)
        limited++;
    ASSERT_EQ(r, GW_RATE_ABUSE);
    ASSERT_EQ(limited, 9); /* the tenth message of debt is the abusive one */
    /* Debt is bounded: quiet for (burst + 1) / rate seconds recovers. */
    ASSERT_EQ(gw_bucket_take(&b, 1, 10, 11000), GW_RATE_OK);
}

TEST(zero_rate_means_unlimited)
{
    gw_bucket_t b;

    gw_bucket_init(&b, 1, 0);
    for (int i = 0; i < 1000; i++)
        ASSERT_EQ(gw_bucket_take(&b, 0, 1, 0), GW_RATE_OK);
}

TEST(huge_gap_does_not_overflow)
{
    gw_bucket_t b;

    gw_bucket_init(&b, 1000000, 0);
    ASSERT_EQ(gw_bucket_take(&b, 1000000, 1000000, UINT64_MAX / 2), GW_RATE_OK);
    ASSERT_TRUE(b.milli <= (int64_t)1000000 * 1000);
}

int main(void)
{
    RUN(burst_then_limited);
    RUN(refills_at_the_rate);
    RUN(never_above_burst);
    RUN(sustained_overuse_is_abuse);
    RUN(zero_rate_means_unlimited);
    RUN(huge_gap_does_not_overflow);
    return im_test_done();
}
