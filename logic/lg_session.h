/*
 * lg_session.h - the Session service of proto/im.proto (Online, Offline,
 * Heartbeat) and the routing lookup that the fan-out of direct messages and
 * receipts uses.  Plain C over one Redis connection, no gRPC.
 *
 * Redis layout
 *   im:gw:<gateway id>     "1" with a TTL of ttl_ms: the gateway's lease,
 *                          refreshed by its Heartbeat (one call per gateway
 *                          every ttl/3, not one per connection: a million
 *                          connections cost no more heartbeats than one).
 *   im:route:<user id>     sorted set of "<gateway id>/<session id>", score =
 *                          when it came online (ms); PEXPIRE 7 days, renewed
 *                          by each Online, so a forgotten set goes away.
 * A route is believed only while its gateway's lease exists: when a gateway
 * crashes, all its sessions stop being routed to within ttl_ms, and the stale
 * members are removed by the next Online, Offline or lookup of that user
 * (lazily; they cost nothing meanwhile).  Gateway ids are unique per process
 * start, so a restarted gateway never inherits its predecessor's sessions.
 * Heartbeat answers first = true when the lease did not exist (it had run
 * out, or Redis lost it with every route): the gateway then registers all its
 * sessions again, which is how routing is rebuilt after a Redis restart.
 * Every step is a Lua script: atomic, one round trip.  (The scripts touch
 * im:gw:* keys they are not given as KEYS: fine on one Redis or a replicated
 * one, not on Redis Cluster.)
 *
 * Statuses: INVALID_ARGUMENT "bad_user" / "bad_gateway_id" / "bad_session_id"
 * (ids: 1..64 of [A-Za-z0-9._:-]), UNAVAILABLE "redis_unavailable".
 *
 * Threads: an lg_session_t belongs to the thread that owns its connection.
 */
#ifndef LG_SESSION_H
#define LG_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im.pb-c.h"
#include "im_err.h"
#include "im_redis.h"
#include "im_rpc.h"

#define LG_GATEWAY_ID_MAX 64
#define LG_SESSION_ID_MAX 64
#define LG_SESSION_TTL_DEFAULT_MS 30000
#define LG_SESSION_BATCH_MAX 1000 /* sessions per Session.Connect / Disconnect call */

typedef struct lg_session_s lg_session_t;

/* Over redis (borrowed; it must outlive s).  ttl_ms: gateway lease length
 * (0: LG_SESSION_TTL_DEFAULT_MS).  Never NULL. */
lg_session_t *lg_session_new(im_redis_t *redis, int64_t ttl_ms);
void lg_session_free(lg_session_t *s);

/* The RPCs: fill resp (initialised by the caller) and return IM_RPC_OK, or
 * another code with the status message in msg. */
im_rpc_code_t lg_session_online(lg_session_t *s, const Im__V1__SessionRequest *req,
                                Im__V1__SessionResponse *resp, char *msg, size_t msglen);
im_rpc_code_t lg_session_offline(lg_session_t *s, const Im__V1__SessionRequest *req,
                                 Im__V1__SessionResponse *resp, char *msg, size_t msglen);
im_rpc_code_t lg_session_heartbeat(lg_session_t *s, const Im__V1__SessionRequest *req,
                                   Im__V1__SessionResponse *resp, char *msg, size_t msglen);

/* Where users are: one entry per live gateway holding at least one of them,
 * with the users it holds (a subset of the ones asked, in their order). */
#define LG_ROUTE_USERS_MAX 2
#define LG_ROUTES_MAX 16
typedef struct {
    char gateway[LG_GATEWAY_ID_MAX + 1];
    uint64_t users[LG_ROUTE_USERS_MAX];
    size_t n_users;
} lg_route_t;

/* Looks up users[0..n) (n <= LG_ROUTE_USERS_MAX), pruning dead routes on the
 * way.  Fills out[0..*n_out); gateways beyond LG_ROUTES_MAX are dropped with
 * a warning (those devices catch up by Sync).  Returns IM_OK or the Redis
 * error (after one reconnect attempt), with *n_out 0. */
im_err_t lg_session_routes(lg_session_t *s, const uint64_t *users, size_t n, lg_route_t *out,
                           size_t *n_out);

/* One lookup of lg_session_routes_many(): users[0..n_users) in, the routes
 * out[0..n_out) (out has room for LG_ROUTES_MAX). */
typedef struct {
    uint64_t users[LG_ROUTE_USERS_MAX];
    size_t n_users;
    lg_route_t *out;
    size_t n_out;
} lg_route_query_t;

/* As lg_session_routes() for each of q[0..n), in one Redis round trip (each
 * user looked up once however many queries name it). */
im_err_t lg_session_routes_many(lg_session_t *s, lg_route_query_t *q, size_t n);

/* True when id is 1..64 of [A-Za-z0-9._:-] (gateway and session ids). */
bool lg_session_id_ok(const char *id);

#endif
