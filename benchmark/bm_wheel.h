/*
 * bm_wheel.h - the timing wheel (common/im_wheel.h) against a binary min-heap
 * timer queue, on the workload of a heartbeat server.
 */
#ifndef BM_WHEEL_H
#define BM_WHEEL_H

#include <stddef.h>
#include <stdio.h>

/* Runs the same workload on both, in this one process: arm n_timers timers
 * (n_timers > 0) with random timeouts of 1-60 s, re-arm n_timers random ones
 * (a heartbeat arriving), then advance a 1 ms clock until every timer has
 * fired.  Prints a table of ops/s per phase and the wheel/heap ratio to out.
 * Allocates about 120 bytes per timer.  Takes a few seconds for 1M timers.
 * Single-threaded. */
void bm_wheel_run(FILE *out, size_t n_timers);

#endif
