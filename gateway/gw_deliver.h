/*
 * gw_deliver.h - the gateway's side of the fan-out: a thread that owns an
 * AMQP connection, consumes this gateway's delivery queue and hands each
 * decoded Delivery (proto/im.proto) to a callback.
 *
 * Topology (see logic/lg_message.h): the durable direct exchange "im.deliver";
 * this gateway's queue "im.gw.<gateway id>" (transient, auto-delete, x-expires
 * so it disappears with a crashed gateway) bound with "gw.<gateway id>" (direct
 * messages and receipts for users logic found here in Redis) and "g.<group>"
 * for every group that has a member connected here (one publish per group
 * message reaches every such gateway).  Group keys are refcounted: bind once
 * per local member session, unbind as many times; the broker binding follows
 * the first bind and the last unbind.
 *
 * Bindings are made on a second connection owned by the same thread, because a
 * connection that consumes cannot also wait for declare/bind answers.
 *
 * On a lost connection the thread reconnects with backoff, declares and binds
 * everything again, and reports state changes: up = false when deliveries may
 * have been missed, up = true when they flow again.  Deliveries are transient:
 * whatever was published meanwhile is gone, so the gateway tells its clients
 * to sync when it comes back up.
 *
 * Threads: new/start/stop/free from one thread; bind, unbind and is_up from
 * any thread; callbacks on the delivery thread (hand work to the loop).
 */
#ifndef GW_DELIVER_H
#define GW_DELIVER_H

#include <stdbool.h>
#include <stdint.h>

#include "im.pb-c.h"
#include "im_amqp.h"
#include "im_err.h"

#define GW_DELIVER_EXCHANGE "im.deliver"

typedef struct gw_deliver_s gw_deliver_t;

typedef struct {
    im_amqp_config_t amqp;  /* strings copied */
    const char *gateway_id; /* copied; names the queue and the routing key */
    /* A delivery, owned by the callee: free it with
     * protobuf_c_message_free_unpacked(d, NULL). */
    void (*on_delivery)(void *arg, Im__V1__Delivery *d);
    /* The consumer came up (bound, consuming) or went down.  May be NULL. */
    void (*on_state)(void *arg, bool up);
    void *arg;
} gw_deliver_config_t;

/* Never NULL.  Nothing connects before gw_deliver_start. */
gw_deliver_t *gw_deliver_new(const gw_deliver_config_t *cfg);

/* Spawns the delivery thread; it connects with backoff, forever. */
im_err_t gw_deliver_start(gw_deliver_t *d);

/* Refcounted group bindings.  Any thread; applied by the delivery thread
 * within its poll interval (50 ms). */
void gw_deliver_bind_group(gw_deliver_t *d, uint64_t group);
void gw_deliver_unbind_group(gw_deliver_t *d, uint64_t group);

/* Calls done(arg) on the delivery thread once every bind and unbind asked
 * for before this call is in effect at the broker (after a reconnect, if the
 * broker is away meanwhile).  Any thread. */
void gw_deliver_barrier(gw_deliver_t *d, void (*done)(void *arg), void *arg);

/* True while consuming.  Any thread. */
bool gw_deliver_is_up(gw_deliver_t *d);

typedef struct {
    uint64_t received;   /* deliveries handed to on_delivery */
    uint64_t bad;        /* bodies that did not decode (dropped, logged) */
    uint64_t reconnects;
    uint64_t groups;     /* groups bound now */
} gw_deliver_stats_t;

void gw_deliver_stats(gw_deliver_t *d, gw_deliver_stats_t *out);

/* Stops the thread and closes the connections (the queue goes with them).
 * Idempotent. */
void gw_deliver_stop(gw_deliver_t *d);

/* Stops if needed and frees.  NULL is fine. */
void gw_deliver_free(gw_deliver_t *d);

#endif
