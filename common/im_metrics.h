/*
 * im_metrics.h - Prometheus pieces shared by the services: a latency
 * histogram with fixed buckets that any thread can observe into (relaxed
 * atomics: no lock on the hot path), and its text exposition.
 *
 *   static im_hist_t ack_latency;            // zero-initialised is ready
 *   im_hist_observe_us(&ack_latency, us);    // any thread
 *   n = im_hist_format(&ack_latency, "im_logic_send_ack_seconds",
 *                      "Send to broker confirm.", buf, cap);
 *
 * Buckets (seconds): 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5
 * 1 2.5 5 10 +Inf: the span from an in-memory hop to a stalled broker.
 */
#ifndef IM_METRICS_H
#define IM_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define IM_HIST_BUCKETS 14 /* finite upper bounds; +Inf is the count */

typedef struct {
    atomic_uint_fast64_t bucket[IM_HIST_BUCKETS]; /* per bucket, not cumulative */
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t sum_us;
} im_hist_t;

/* Records one observation of us microseconds.  Any thread. */
void im_hist_observe_us(im_hist_t *h, uint64_t us);

/* Writes "# HELP", "# TYPE name histogram", the cumulative name_bucket{le=}
 * lines, name_sum and name_count into buf (NUL-terminated).  Returns the
 * length written, or the length needed (snprintf-style) when cap is too
 * small; 2 KiB always suffices for a name under 64 bytes. */
size_t im_hist_format(const im_hist_t *h, const char *name, const char *help, char *buf,
                      size_t cap);

#endif
