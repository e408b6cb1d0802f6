/*
 * bm_buf.h - the buffer pool (common/im_buf.h) against malloc/free, on the
 * two patterns of a chat gateway: buffers of mixed sizes coming and going,
 * and one message fanned out to many connections.
 */
#ifndef BM_BUF_H
#define BM_BUF_H

#include <stddef.h>
#include <stdio.h>

/* Runs both patterns on the pool and on libc malloc/free, in this one
 * process, and prints a table of ops/s and the pool/malloc ratio to out:
 *   - alloc+free: `iterations` (> 0) steps, each freeing one of 64 live
 *     buffers and allocating a replacement of a random size (a random class
 *     of the default pool, a random size within it, at least 8 bytes),
 *     touching 8 bytes.
 *   - fan-out: iterations / 1000 messages (at least one) of 100 bytes, each
 *     delivered to 1000 connections: one buffer referenced 1000 times and
 *     released 1000 times, against 1000 malloc'd copies.  One op is one
 *     message.
 * Both are warmed up before timing, so the pool is measured in its steady
 * state.  Uses a default pool (about 1.4 MiB, up to ~3 MiB after warm-up).
 * Takes about a second for 5M iterations.  Single-threaded. */
void bm_buf_run(FILE *out, size_t iterations);

#endif
