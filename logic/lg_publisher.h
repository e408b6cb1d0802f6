/*
 * lg_publisher.h - the logic service's publishing thread.
 *
 * A Send is acked to its client only when the broker has confirmed the
 * persistent publish of the message.  RPC workers cannot share an AMQP
 * connection (one owner thread each), and a connection per worker would
 * waste the sliding window of confirms, so workers submit here: one thread
 * owns the connection, publishes everything submitted with up to `window`
 * messages unconfirmed, and reports each message's outcome exactly once
 * through the submitter's callback, on this thread:
 *   IM_OK        confirmed by the broker (durable when persistent to a durable queue)
 *   IM_EIO, ...  nacked, or the channel was closed by the broker
 *   IM_ECLOSED   the connection was lost before the confirm (the message may or
 *                may not be in the queue: the caller reports an error and the
 *                client retries with the same client message id, which dedups)
 *   IM_ETIMEDOUT not published before its deadline (broker unreachable)
 * Nothing submitted is ever dropped without its callback.
 *
 * Order: messages are published in submit order, and the outcomes of
 * published ones are reported in that order too, even when the broker
 * confirms a later one first (it may: a large persistent message goes to its
 * message store, a small one into the queue index).  So a callback that
 * publishes follow-ups (Send's deliveries) sends them in the order the
 * originals were submitted.  A message that fails before it is published
 * (its deadline passed, the publish call failed) is reported at once.
 *
 * Threads: lg_publisher_submit from any thread; everything else from the
 * thread that created the publisher.
 */
#ifndef LG_PUBLISHER_H
#define LG_PUBLISHER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_amqp.h"
#include "im_err.h"

/* The outcome of one submitted message.  Runs on the publisher thread; must
 * not block for long (hand work elsewhere) and must not call back into the
 * publisher except lg_publisher_submit. */
typedef void (*lg_publish_done_cb)(void *arg, im_err_t result);

typedef struct lg_publisher_s lg_publisher_t;

/* window: unconfirmed messages allowed in flight (>= 1); 256 is a good value
 * on this hardware (see PLATFORM.md: ~20k confirmed msg/s).  The strings of
 * amqp are copied.  Nothing connects until lg_publisher_start. */
lg_publisher_t *lg_publisher_new(const im_amqp_config_t *amqp, unsigned window);

/* Names a durable queue and a durable direct exchange (either may be NULL)
 * to declare after every connect, before anything is published.  Before
 * lg_publisher_start. */
void lg_publisher_declare(lg_publisher_t *p, const char *durable_queue,
                          const char *direct_exchange);

/* Spawns the thread, which connects (with backoff, forever) and publishes. */
im_err_t lg_publisher_start(lg_publisher_t *p);

/* Queues a message for publishing.  exchange "" with routing_key = a queue
 * name publishes straight to that queue.  body is copied.  timeout_ms bounds
 * how long it may wait to be sent (not for its confirm).  done(arg, result) is
 * called exactly once, later, on the publisher thread -- or before this
 * returns, with IM_ECLOSED, when the publisher is stopping.  Returns IM_OK, or
 * IM_ECLOSED (done already called). */
im_err_t lg_publisher_submit(lg_publisher_t *p, const char *exchange, const char *routing_key,
                             const void *body, size_t len, bool persistent, unsigned timeout_ms,
                             lg_publish_done_cb done, void *arg);

/* Stops accepting, publishes what is queued, waits up to grace_ms for the
 * outstanding confirms, reports whatever is left as IM_ECLOSED, closes the
 * connection and joins the thread.  Idempotent. */
void lg_publisher_stop(lg_publisher_t *p, unsigned grace_ms);

/* Stops (grace 0) if needed and frees.  NULL is fine. */
void lg_publisher_free(lg_publisher_t *p);

typedef struct {
    uint64_t submitted;
    uint64_t confirmed;
    uint64_t failed;
    uint64_t reconnects;
    uint64_t connected; /* 1 while connected with its queue and exchange declared */
} lg_publisher_stats_t;

/* A snapshot of the counters.  Any thread. */
void lg_publisher_stats(lg_publisher_t *p, lg_publisher_stats_t *out);

#endif
