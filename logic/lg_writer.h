/*
 * lg_writer.h - the batch writer: drains the durable message queue into MySQL.
 *
 * The contract that makes "nothing lost" true:
 *   1. Consume the durable queue with prefetch >= the batch size.
 *   2. Collect deliveries until the batch is full or its oldest message has
 *      waited max_delay_ms.
 *   3. Hand the batch to the flush function, which writes it in ONE
 *      transaction (multi-row INSERT, idempotent on the message id) and
 *      returns only after COMMIT.
 *   4. Only then ack every delivery of the batch with one `multiple` ack up to
 *      its last tag, from the thread that owns the channel.
 * A flush error acks nothing: the batch is kept and retried with exponential
 * backoff (deliveries keep being read meanwhile, up to the prefetch, so the
 * connection's heartbeats are serviced).  A lost AMQP connection drops the
 * batch without acking it: the broker redelivers it to whichever consumer is
 * left, and the idempotent insert stores each message once.  So several
 * writers (several logic instances) may drain one queue at the same time.
 *
 * A delivery whose body is not a ChatBatch can never be stored: it is logged,
 * counted and rejected without requeue (dead-lettered when the queue has a
 * dead-letter exchange), so it cannot wedge the queue.
 *
 * Threads: lg_writer_start() spawns the writer's own thread, which owns its
 * AMQP connection and calls flush.  The other functions are for the thread
 * that created the writer.
 */
#ifndef LG_WRITER_H
#define LG_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "im.pb-c.h"
#include "im_amqp.h"
#include "im_err.h"

/* Writes msgs[0..n) in one transaction and returns IM_OK only after COMMIT.
 * Must be idempotent: messages already stored (same id) are not stored again
 * and are not an error.  Any other result means nothing was committed.
 * Called on the writer thread only; msgs are owned by the writer. */
typedef im_err_t (*lg_writer_flush_fn)(void *arg, Im__V1__ChatMessage *const *msgs, size_t n);

typedef struct {
    im_amqp_config_t amqp;    /* connection settings (strings copied) */
    const char *queue;        /* durable queue to drain (declared if missing) */
    unsigned batch_size;      /* flush at this many messages */
    unsigned max_delay_ms;    /* ... or when the oldest has waited this long */
    unsigned prefetch;        /* unacked deliveries the broker may push; >= batch_size */
    unsigned backoff_min_ms;  /* first retry delay after a failed flush or connect */
    unsigned backoff_max_ms;  /* cap of the doubling delay */
    unsigned stop_timeout_ms; /* lg_writer_stop: how long to keep retrying a flush */
} lg_writer_config_t;

/* Fills cfg with the defaults (batch 1024, delay 20 ms, prefetch 2000,
 * backoff 50 ms .. 5 s, stop timeout 10 s); the caller sets amqp and queue. */
void lg_writer_config_default(lg_writer_config_t *cfg);

typedef struct {
    uint64_t deliveries;   /* AMQP deliveries received */
    uint64_t messages;     /* chat messages flushed and acked */
    uint64_t batches;      /* successful flushes */
    uint64_t flush_errors; /* failed flush attempts (each retried) */
    uint64_t poison;       /* deliveries rejected as undecodable */
    uint64_t reconnects;   /* AMQP connections re-established */
    uint64_t last_batch;   /* size of the last successful flush */
    uint64_t connected;    /* 1 while consuming, 0 while (re)connecting */
} lg_writer_stats_t;

typedef struct lg_writer_s lg_writer_t;

/* Creates a writer; nothing runs until lg_writer_start.  cfg is copied.
 * Returns NULL (with a log line) for an invalid config.  Free with
 * lg_writer_free. */
lg_writer_t *lg_writer_new(const lg_writer_config_t *cfg, lg_writer_flush_fn flush, void *arg);

/* Spawns the writer thread.  It connects (retrying with backoff until it
 * succeeds or the writer is stopped), declares the queue and starts draining.
 * Returns IM_OK, or IM_EINVAL if already started. */
im_err_t lg_writer_start(lg_writer_t *w);

/* Graceful stop: the writer stops reading, flushes and acks what it holds
 * (retrying for at most stop_timeout_ms; what it cannot commit by then stays
 * unacked and is redelivered), closes its connection, and the thread is
 * joined.  Idempotent. */
void lg_writer_stop(lg_writer_t *w);

/* Stops it if running and frees it.  NULL is fine. */
void lg_writer_free(lg_writer_t *w);

/* A consistent snapshot of the counters.  Any thread. */
void lg_writer_stats(lg_writer_t *w, lg_writer_stats_t *out);

#endif
