/*
 * im_queue.h - a thread-safe hand-off queue of intrusive nodes with a wakeup.
 *
 * Threads hand work to each other through a queue plus a wakeup (h2o's
 * multithread queue): any number of producer threads push, one consumer takes
 * everything queued so far in a single batch.  The producer whose push turns
 * the queue from empty into non-empty calls the wakeup callback; later pushes
 * into a non-empty queue do not, so a burst of N items costs one wakeup (one
 * lws_cancel_service, one eventfd write), not N.
 *
 * The consumer contract that makes this lossless: after each wakeup, call
 * im_queue_drain() once and process what it returns.  A drain empties the
 * queue, so the next push after it wakes the consumer again.  A wakeup may be
 * spurious (its items were already taken by an earlier drain): a drain that
 * returns NULL is normal.
 *
 * Items are intrusive: embed an im_queue_node_t in your struct and recover the
 * struct with IM_QUEUE_ENTRY.  The queue never allocates per item and never
 * frees a node; a pushed node belongs to the queue until a drain returns it,
 * then to the consumer.
 *
 *   typedef struct { im_queue_node_t node; int value; } job_t;
 *   im_queue_push(q, &job->node);                             // any thread
 *   for (n = im_queue_drain(q); n != NULL; n = next) {        // consumer
 *       next = n->next;                                       // before freeing n
 *       job_t *job = IM_QUEUE_ENTRY(n, job_t, node);
 *       ...
 *   }
 */
#ifndef IM_QUEUE_H
#define IM_QUEUE_H

#include <stddef.h>

typedef struct im_queue_node_s {
    struct im_queue_node_s *next;
} im_queue_node_t;

/* The struct of type `type` whose member `member` is the node `node`. */
#define IM_QUEUE_ENTRY(node, type, member) ((type *)((char *)(node)-offsetof(type, member)))

/* Called by a producer, on the producer's thread, right after its push made
 * the queue non-empty, outside the queue's lock (so it may block briefly or
 * take other locks, but it must not push to the same queue).  Must be
 * thread-safe: producers on several threads may call it concurrently. */
typedef void (*im_queue_wakeup_cb)(void *arg);

typedef struct im_queue_s im_queue_t;

/* A new empty queue.  wakeup may be NULL (the consumer polls).  Never NULL.
 * Free with im_queue_free(). */
im_queue_t *im_queue_new(im_queue_wakeup_cb wakeup, void *arg);

/* Frees the queue.  Nodes still queued are not touched: drain first if they
 * own memory.  No other thread may use q during or after this call. */
void im_queue_free(im_queue_t *q);

/* Appends node (FIFO per producer) and, if the queue was empty, calls the
 * wakeup callback before returning.  node must not be queued already; its
 * `next` is overwritten.  Any thread. */
void im_queue_push(im_queue_t *q, im_queue_node_t *node);

/* Takes every queued node at once and returns them as a NULL-terminated list
 * linked through `next`, oldest first; NULL when the queue is empty.  The
 * caller owns the returned nodes.  The lock is held only to detach the list,
 * so producers never wait for the consumer's processing.  Meant for one
 * consumer thread; any thread may call it, the queue stays consistent. */
im_queue_node_t *im_queue_drain(im_queue_t *q);

#endif
