/*
 * gw_service.h - the gateway wired to the rest of the system: the client
 * protocol's requests go to logic over gRPC (async, never blocking the loop),
 * deliveries come from RabbitMQ (gw_deliver) and are fanned out to local
 * sessions, sessions are registered with logic's Session service (routing in
 * Redis), and /api/v1 is a REST front for logic.  The protocol is in README
 * ("Client protocol").
 *
 *   gw_service_t *svc = gw_service_new(&scfg);
 *   gw_hooks_t hooks;
 *   gw_service_hooks(svc, &hooks);
 *   gw_t *gw = gw_new(&cfg, &hooks, NULL, err, sizeof err);
 *   gw_service_start(svc, gw);   // deliveries, heartbeats
 *   gw_run(gw);
 *   gw_service_stop(svc);        // before gw_free: no more posts
 *   gw_free(gw);
 *   gw_service_free(svc);
 *
 * Ids: every 64-bit id (users, groups, messages) is a JSON string on the wire
 * (JavaScript numbers lose precision above 2^53); seq and times are numbers.
 * Requests accept ids as strings or numbers.
 *
 * Threads: new, hooks, start, stop and free on the loop's thread (main); the
 * hooks run on the loop; gRPC results and deliveries arrive on other threads
 * and are handed to the loop with gw_post.
 */
#ifndef GW_SERVICE_H
#define GW_SERVICE_H

#include <stdint.h>

#include "gw.h"
#include "im_amqp.h"
#include "im_err.h"

typedef struct gw_service_s gw_service_t;

typedef struct {
    const char *logic;          /* "host:port[,host:port...]": calls round-robin */
    im_amqp_config_t amqp;      /* strings copied */
    unsigned rpc_timeout_ms;    /* deadline of every call to logic */
    unsigned heartbeat_ms;      /* Session.Heartbeat period (< logic's session TTL / 2) */
    unsigned sync_limit;        /* messages per sync page */
    unsigned send_lanes;        /* SendBatch lanes per logic address (0: GW_SEND_LANES) */
} gw_service_config_t;

/* Never NULL.  Copies cfg. */
gw_service_t *gw_service_new(const gw_service_config_t *cfg);

/* The hooks to give gw_new. */
void gw_service_hooks(gw_service_t *svc, gw_hooks_t *out);

/* Starts the delivery consumer and the heartbeat thread for gw. */
im_err_t gw_service_start(gw_service_t *svc, gw_t *gw);

/* Stops both and cancels calls in flight (their results are dropped).  After
 * gw_run returned, before gw_free.  Idempotent. */
void gw_service_stop(gw_service_t *svc);

void gw_service_free(gw_service_t *svc);

#endif
