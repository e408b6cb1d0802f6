/*
 * im_time.h - clocks.  Monotonic for timeouts and latencies, realtime for ids
 * and timestamps shown to users.  All inline, any thread.
 */
#ifndef IM_TIME_H
#define IM_TIME_H

#include <stdint.h>
#include <time.h>

static inline uint64_t im_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t im_mono_ms(void)
{
    return im_mono_ns() / 1000000u;
}

/* Milliseconds since the Unix epoch (wall clock: may step backwards). */
static inline uint64_t im_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

#endif
