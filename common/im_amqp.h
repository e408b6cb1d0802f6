/*
 * im_amqp.h - the RabbitMQ adapter: connections, declarations, a publisher with
 * confirms and a sliding window, and a consumer with manual acks.
 *
 * The only file that includes rabbitmq-c is im_amqp.c; callers see im_err_t and
 * plain C types.
 *
 * Threads
 *   A connection is not thread-safe: one owner thread makes every call on it (and
 *   on the publisher over it).  Publish and consume on separate connections: a
 *   confirm frame arriving while a consumer waits for a delivery (or the other way
 *   round) would confuse both.  Different connections may be used from different
 *   threads at the same time.
 *
 * Channel and connection failures
 *   Every connection uses one channel.  When the broker closes that channel (a
 *   publish to a missing exchange: 404, an ack of an unknown tag: 406) the adapter
 *   answers close-ok and opens the channel again, so the connection stays usable;
 *   what was in progress on the old channel fails with the mapped reply code:
 *   404 -> IM_ENOENT, 403 -> IM_EPERM, 405 (resource locked) -> IM_EEXIST,
 *   406 (precondition failed) -> IM_EINVAL, anything else -> IM_EIO.
 *   When the connection itself is lost (socket error, heartbeat timeout,
 *   connection.close from the broker) calls return IM_ECLOSED and the connection
 *   stays unusable until im_amqp_reconnect().
 *   In both cases im_amqp_last_error() says what happened, with the broker's reply
 *   code and text, and the event is logged once at warn level.
 *
 * Heartbeats are serviced only inside calls that read or write the socket: an idle
 * owner must call im_amqp_publisher_poll() or im_amqp_consumer_next() at least
 * every heartbeat_s / 2 seconds, or the broker drops the connection.
 */
#ifndef IM_AMQP_H
#define IM_AMQP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_err.h"

/* ================================================================ connection */

typedef struct {
    const char *host;     /* required */
    unsigned port;        /* 0: 5672 */
    const char *user;     /* required */
    const char *password; /* required */
    const char *vhost;    /* NULL: "/" */
    const char *name;     /* shown in our log lines and as the broker's connection
                             name; NULL: "amqp" */
    unsigned heartbeat_s; /* 0: no heartbeats */
    unsigned timeout_ms;  /* bounds the TCP connect, the login and every synchronous
                             broker round trip (declare, consume, channel open);
                             0: 10000 */
} im_amqp_config_t;

typedef struct im_amqp_conn_s im_amqp_conn_t;

/* Connects, logs in and opens the channel.  The strings of cfg are copied.
 * Returns the connection, or NULL with the reason in err (errlen bytes, always
 * NUL-terminated when errlen > 0; err may be NULL).  Free with im_amqp_close(). */
im_amqp_conn_t *im_amqp_connect(const im_amqp_config_t *cfg, char *err, size_t errlen);

/* Closes the connection politely if it is still up (unacked deliveries go back to
 * their queues) and frees it.  A publisher over it must be freed first.  NULL is
 * fine. */
void im_amqp_close(im_amqp_conn_t *conn);

/* Drops the current socket (politely if it is still up) and connects again with
 * the same config.  Consumers started on the connection are gone: call
 * im_amqp_consume() again.  A publisher over it reports its outstanding seqnos as
 * failed (IM_ECLOSED) at its next call and then re-enables confirms by itself.
 * Returns IM_OK, or the error of the new attempt, after which the connection stays
 * closed and may be retried: IM_EUNAVAIL (TCP connect failed), IM_EAUTH (login
 * refused: 403), IM_ECLOSED / IM_EIO (the broker closed or broke the handshake). */
im_err_t im_amqp_reconnect(im_amqp_conn_t *conn);

/* True while the connection is up (false after a loss, until a successful
 * im_amqp_reconnect()). */
bool im_amqp_is_open(const im_amqp_conn_t *conn);

/* The last failure on this connection as text ("" if none).  Owned by conn, valid
 * until the next call on it. */
const char *im_amqp_last_error(const im_amqp_conn_t *conn);

/* ================================================================ declarations */

/* Synchronous: each waits for the broker's answer (at most timeout_ms).  Make them
 * before publishing or consuming on the connection (at start-up or right after a
 * reconnect), not while confirms or deliveries are in flight on it. */

typedef struct {
    const char *name;       /* "" or NULL: the broker picks a name (see name_out) */
    bool passive;           /* only check that it exists (IM_ENOENT if not) */
    bool durable;           /* survives a broker restart */
    bool exclusive;         /* this connection only; deleted when it closes */
    bool auto_delete;       /* deleted when its last consumer goes */
    const char *queue_type; /* x-queue-type ("classic", "quorum"); NULL: default */
    uint32_t expires_ms;    /* x-expires: deleted after this long unused; 0: never */
} im_amqp_queue_opts_t;

/* Declares a queue.  name_out (if not NULL, name_outlen bytes) receives the queue's
 * name, NUL-terminated; IM_ERANGE if it does not fit (the queue exists anyway).
 * *message_count (if not NULL) receives the number of ready messages, which is what
 * a passive declare is usually for.  IM_ENOENT: passive and missing; IM_EEXIST:
 * exclusive to another connection; IM_EINVAL: exists with other options. */
im_err_t im_amqp_declare_queue(im_amqp_conn_t *conn, const im_amqp_queue_opts_t *opts,
                               char *name_out, size_t name_outlen, uint32_t *message_count);

/* Deletes a queue (whatever it holds).  *message_count (if not NULL) receives the
 * number of messages deleted with it.  Deleting a missing queue is IM_OK. */
im_err_t im_amqp_delete_queue(im_amqp_conn_t *conn, const char *name, uint32_t *message_count);

/* Declares an exchange of type "direct", "fanout", "topic" or "headers".
 * IM_EINVAL: it exists with another type or durability. */
im_err_t im_amqp_declare_exchange(im_amqp_conn_t *conn, const char *name, const char *type,
                                  bool durable);

/* Deletes an exchange (and its bindings).  Deleting a missing one is IM_OK. */
im_err_t im_amqp_delete_exchange(im_amqp_conn_t *conn, const char *name);

/* Binds queue to exchange with routing_key (a topic pattern for topic exchanges,
 * ignored by fanout).  IM_ENOENT: the queue or the exchange is missing. */
im_err_t im_amqp_bind(im_amqp_conn_t *conn, const char *queue, const char *exchange,
                      const char *routing_key);

/* Removes that binding.  Removing a binding that does not exist is IM_OK. */
im_err_t im_amqp_unbind(im_amqp_conn_t *conn, const char *queue, const char *exchange,
                        const char *routing_key);

/* ================================================================ publisher */

/* The outcome of one published message, reported exactly once per seqno:
 *   IM_OK       the broker confirmed it: routed and, for a persistent message to a
 *               durable queue, written to disk.  A message that no queue matched is
 *               confirmed too (the adapter does not publish mandatory): routing is
 *               made certain by declaring queues and bindings first.
 *   IM_EIO      nacked by the broker (an internal broker error), or the channel
 *               closed with an unmapped reply code
 *   IM_ENOENT, IM_EPERM, IM_EINVAL ...
 *               the broker closed the channel (404: the exchange does not exist ...)
 *               while the message was unconfirmed
 *   IM_ECLOSED  the connection was lost while the message was unconfirmed
 * On any failure the message may or may not have reached a queue: republish it if
 * it matters (delivery is at least once).  Runs on the owner thread, inside
 * im_amqp_publish, im_amqp_publisher_poll or im_amqp_publish_sync; it must not
 * call into the publisher or its connection. */
typedef void (*im_amqp_confirm_cb)(uint64_t seqno, im_err_t result, void *arg);

typedef struct im_amqp_publisher_s im_amqp_publisher_t;

/* A publisher with confirms on conn, allowing at most `window` messages (0 counts as 1)
 * unconfirmed at a time.  cb may be NULL if only im_amqp_publish_sync is used.
 * Confirm mode is enabled lazily, at the first publish.  conn must outlive the
 * publisher and carry no other publisher.  Free with im_amqp_publisher_free(). */
im_amqp_publisher_t *im_amqp_publisher_new(im_amqp_conn_t *conn, unsigned window,
                                           im_amqp_confirm_cb cb, void *arg);

/* Frees the publisher.  Unconfirmed seqnos are NOT reported: poll until
 * im_amqp_publisher_outstanding() is 0 first if their outcome matters.  NULL is
 * fine. */
void im_amqp_publisher_free(im_amqp_publisher_t *pub);

/* Sends one message without waiting for its confirm and stores its seqno in
 * *out_seqno (if not NULL).  Seqnos of a publisher start at 1 and increase by one
 * per accepted message, across channel reopens and reconnects.  exchange "" is the
 * default exchange, where routing_key names the queue.  persistent: delivery mode
 * 2 (survives a broker restart when the queue is durable).  The body is copied
 * out before the call returns.
 * Returns IM_OK (the outcome comes later through cb);
 *   IM_EAGAIN   `window` messages are unconfirmed: poll, then retry;
 *   IM_ECLOSED / IM_EIO  the connection is lost: nothing was sent for this call
 *               (no seqno), outstanding seqnos were reported failed; reconnect;
 *   other       failure to re-enable confirms after a channel reopen.
 * May block while the socket is full (the broker applies flow control). */
im_err_t im_amqp_publish(im_amqp_publisher_t *pub, const char *exchange, const char *routing_key,
                         const void *body, size_t len, bool persistent, uint64_t *out_seqno);

/* Waits up to timeout_ms (0: just look) for frames from the broker and reports
 * every confirm or failure they carry through cb, in seqno order within each broker
 * ack (a `multiple` ack is expanded into one call per seqno).  Returns IM_OK if at
 * least one frame was processed, IM_EAGAIN if none came in time, IM_ECLOSED /
 * IM_EIO when the connection is lost (every outstanding seqno was reported failed
 * first).  A channel closed by the broker is reported through cb and reopened:
 * that is IM_OK. */
im_err_t im_amqp_publisher_poll(im_amqp_publisher_t *pub, int timeout_ms);

/* For owners that wait on the socket themselves (poll() on it with other
 * fds, then im_amqp_publisher_poll(pub, 0)): the connection's socket, -1 when
 * closed; and whether frames are already buffered in the library, which a
 * poll() on the socket would not show (poll them first, do not wait). */
int im_amqp_fd(const im_amqp_conn_t *conn);
bool im_amqp_publisher_buffered(const im_amqp_publisher_t *pub);

/* Messages published and not yet reported. */
unsigned im_amqp_publisher_outstanding(const im_amqp_publisher_t *pub);

/* Publishes one message and waits up to timeout_ms for its outcome, which it
 * returns (see im_amqp_confirm_cb; IM_ETIMEDOUT if none came in time: it may still
 * arrive later through cb).  Confirms of other outstanding messages that arrive
 * meanwhile go to cb as usual.  A full window is waited for within the same
 * timeout. */
im_err_t im_amqp_publish_sync(im_amqp_publisher_t *pub, const char *exchange,
                              const char *routing_key, const void *body, size_t len,
                              bool persistent, int timeout_ms);

/* ================================================================ consumer */

typedef struct {
    uint64_t delivery_tag; /* for im_amqp_ack / im_amqp_nack */
    const void *body;      /* valid until the next im_amqp_consumer_next or close */
    size_t len;
    bool redelivered;      /* delivered before and not acked then */
    char routing_key[256]; /* NUL-terminated (AMQP caps it at 255 bytes) */
} im_amqp_delivery_t;

/* Starts consuming queue on conn with at most `prefetch` unacked deliveries (0: no
 * limit; use at least the batch size when acking in batches).  no_ack: the broker
 * forgets a message as soon as it is sent (for transient fan-out only).  One
 * consumer per connection.  IM_ENOENT: no such queue; IM_EEXIST: the queue is
 * exclusive to another connection. */
im_err_t im_amqp_consume(im_amqp_conn_t *conn, const char *queue, uint16_t prefetch, bool no_ack);

/* Waits up to timeout_ms (0: just look, -1: forever) for the next delivery.
 * Returns IM_OK and fills *out; IM_EAGAIN if none came in time; IM_ECLOSED if the
 * consumer is gone: the connection was lost, or the broker closed the channel or
 * cancelled the consumer (its queue was deleted) -- unacked deliveries return to
 * the queue and their tags are void.  Recover with im_amqp_reconnect() and
 * im_amqp_consume().  IM_EIO: a protocol error (the connection is closed). */
im_err_t im_amqp_consumer_next(im_amqp_conn_t *conn, int timeout_ms, im_amqp_delivery_t *out);

/* Acknowledges delivery tag (and, with multiple, every unacked tag below it).
 * Fire and forget: a tag the broker does not know closes the channel, which the
 * next im_amqp_consumer_next reports as IM_ECLOSED.  IM_ECLOSED if the connection
 * is lost. */
im_err_t im_amqp_ack(im_amqp_conn_t *conn, uint64_t tag, bool multiple);

/* Rejects tag (and with multiple every unacked tag below it): requeue puts the
 * messages back in the queue (redelivered later, flag set), otherwise the broker
 * drops them (or dead-letters them if the queue says so).  Like im_amqp_ack. */
im_err_t im_amqp_nack(im_amqp_conn_t *conn, uint64_t tag, bool multiple, bool requeue);

#endif
