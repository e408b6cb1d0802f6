/*
 * gw_rate.h - a token bucket for the messages one connection may send.
 *
 * rate tokens per second refill the bucket up to burst; each message takes
 * one.  A message that finds the bucket empty is refused (the client gets an
 * `error` frame "rate_limited") but still takes its token, so the bucket goes
 * into debt: a client that keeps sending while refused digs deeper, and one
 * that is `burst` messages in debt is abusive and gets closed.  A client that
 * only overshoots briefly recovers after burst/rate seconds of quiet at most.
 *
 * Integer arithmetic in thousandths of a token: no floating point, exact.
 * Pure: any thread, but one bucket belongs to one connection (not atomic).
 */
#ifndef GW_RATE_H
#define GW_RATE_H

#include <stdint.h>

typedef enum {
    GW_RATE_OK = 0,  /* allowed */
    GW_RATE_LIMITED, /* refused: tell the client, keep the connection */
    GW_RATE_ABUSE    /* refused, and the debt reached burst: close */
} gw_rate_result_t;

typedef struct gw_bucket_s {
    int64_t milli;    /* tokens * 1000; negative = debt */
    uint64_t last_ms; /* time of the last refill */
} gw_bucket_t;

/* A full bucket at time now_ms. */
void gw_bucket_init(gw_bucket_t *b, uint32_t burst, uint64_t now_ms);

/* Takes one token at now_ms (monotonic).  rate 0 disables limiting (always
 * GW_RATE_OK).  burst > 0 when rate > 0. */
gw_rate_result_t gw_bucket_take(gw_bucket_t *b, uint32_t rate, uint32_t burst, uint64_t now_ms);

#endif
