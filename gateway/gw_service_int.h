/*
 * gw_service_int.h - what the parts of gw_service share: the service struct,
 * the per-session and per-group state of the loop thread, and the async call
 * context that carries a gRPC result back to the loop.  Not for other users.
 */
#ifndef GW_SERVICE_INT_H
#define GW_SERVICE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gw.h"
#include "gw_deliver.h"
#include "gw_service.h"
#include "im.pb-c.h"
#include "im_map.h"
#include "im_metrics.h"
#include "im_rpc.h"

#define GW_CID_MAX 64
#define GW_SEND_BATCH_MAX 1000 /* sends per SendBatch call at most (logic's limit) */
#define GW_SEND_BATCH_BYTES (1024 * 1024) /* and about this many bytes packed */
/* Lanes per logic client, by default (--send-lanes).  One per logic worker
 * (its --grpc-workers, 4): measured on 2 cores with one gateway and one logic,
 * 4 lanes instead of 16 halved send->ack at 2,000-6,000 msgs/s (bigger
 * batches, less work per message) at the same saturated rate; 2 lost a
 * fifth of that rate. */
#define GW_SEND_LANES 4
#define GW_CLIENT_DOWN_MS 1000 /* a client that failed a SendBatch is skipped this long */
#define GW_METHOD_SEND_BATCH 6 /* Message.SendBatch's index in im.proto */
#define GW_SESSION_BATCH_MAX 256 /* sessions per Session.Connect / Disconnect call */
#define GW_SESSION_CALLS_MAX 2   /* of each kind in flight; the rest wait and batch up */
#define GW_METHOD_CONNECT 3      /* Session.Connect's index in im.proto */
#define GW_METHOD_DISCONNECT 4   /* Session.Disconnect's index */

typedef struct gw_call_s gw_call_t;

/* A growing list of (session id, user) pairs. */
typedef struct {
    uint64_t *v;
    size_t n, cap; /* in pairs */
} gw_pairs_t;

/* One lane of sends (see gw_service_s.lanes). */
typedef struct {
    gw_call_t **q; /* waiting, in arrival order */
    size_t n, cap;
    bool busy; /* a SendBatch of this lane is in flight */
} gw_lane_t;

/* A session as the service sees it (loop thread). */
typedef struct {
    uint64_t id, user;
    uint64_t *groups; /* groups this session is indexed under */
    size_t n_groups, cap_groups;
    bool online; /* Session.Online succeeded: Offline is due at close */
    int pending; /* Online and Mine not answered yet: "ready" when 0 */
} gw_sess_t;

/* The local sessions that are members of a group (loop thread). */
typedef struct {
    uint64_t *sessions;
    size_t n, cap;
} gw_members_t;

struct gw_service_s {
    gw_service_config_t cfg;
    char *logic, *amqp_host, *amqp_user, *amqp_password, *amqp_vhost;
    gw_t *gw;
    im_rpc_client_t **clients;
    size_t n_clients;
    atomic_uint next_client;
    atomic_int outstanding; /* calls whose result has not reached the loop */
    gw_deliver_t *deliver;
    pthread_t heartbeat;
    bool started;
    atomic_bool stopping, logic_ok, deliver_was_up;
    pthread_mutex_t hb_lock;
    pthread_cond_t hb_cond;
    /* Sessions to register again after the gateway's lease was lost (Redis
     * lost its routes, or the gateway was cut off longer than the TTL), as
     * (id, user) pairs: Session.Connect calls with routes_only, at most
     * GW_SESSION_BATCH_MAX sessions each and GW_SESSION_CALLS_MAX in flight.
     * Those that failed wait in rereg_retry for the next heartbeat. */
    gw_pairs_t rereg, rereg_retry;
    unsigned rereg_calls;
    atomic_bool rereg_waiting; /* rereg_retry is not empty: for the heartbeat thread */
    uint64_t reregistered;     /* counter: sessions registered again */
    im_map_t groups;   /* group id -> gw_members_t */
    /* Counters (loop thread). */
    uint64_t sends, acks, send_errors, delivered, deliveries, resyncs, send_batches;
    /* Sends waiting for their lane (gw_frames.c): a conversation's sends
     * always take the same lane, and a lane has one SendBatch in flight at a
     * time, so they reach logic in the order they were read. */
    gw_lane_t *lanes;
    size_t n_lanes;
    uint64_t *client_down_until; /* [n_clients], mono ms: skipped by lanes until then */
    /* Sessions opened / closed in this turn, as (id, user) pairs: one
     * Session.Connect / Disconnect each turn. */
    uint64_t *connects, *disconnects;
    size_t n_connects, n_disconnects;
    bool flush_posted;
    /* Session.Connect / Disconnect calls in flight ([1] connect, [0]
     * disconnect).  At GW_SESSION_CALLS_MAX, new sessions wait for one to
     * come back, so a storm makes bigger batches instead of more calls;
     * drain (at stop) sends regardless. */
    unsigned session_calls[2];
    bool drain;
    im_hist_t ack_latency; /* send frame in -> ack frame out */
};

/* What a call was for, so its result is handled right. */
typedef enum {
    GW_CALL_ONLINE,
    GW_CALL_OFFLINE,
    GW_CALL_SEND,
    GW_CALL_SYNC,
    GW_CALL_READ,
    GW_CALL_HISTORY,
    GW_CALL_CONVS,
    GW_CALL_TYPING,
    GW_CALL_HTTP,   /* an /api request: http_kind says which */
} gw_call_kind_t;

typedef void (*gw_call_done_fn)(gw_service_t *svc, gw_call_t *c);

struct gw_call_s {
    gw_service_t *svc;
    gw_call_kind_t kind;
    gw_call_done_fn done; /* runs on the loop with the result */
    uint64_t session_id, user;
    char cid[GW_CID_MAX + 1]; /* echoed; "" when none */
    bool cid_is_number;
    gw_http_req_t *http;
    int http_ok_status;
    uint64_t start_us; /* when the request arrived (im_mono_ns / 1000) */
    /* The result. */
    im_rpc_code_t code;
    char *message;
    ProtobufCMessage *resp;
    /* A send waiting for its turn's SendBatch: its request (owned). */
    Im__V1__SendRequest *send;
    /* A SendBatch: the sends it carries, answered and freed by its done;
     * its lane and logic client. */
    gw_call_t **members;
    size_t n_members, lane, client;
    /* A Session.Connect / Disconnect: (session id, user) of each, in order. */
    uint64_t *pairs;
    size_t n_pairs;
};

/* Frees c, its request and result (not its members). */
void gw__call_free(gw_call_t *c);

/* Sends a SendBatch for every lane with sends waiting and none in flight
 * (gw_frames.c). */
void gw__flush_sends(gw_service_t *svc);

/* Makes sure the batches collected in this turn of the loop (sends,
 * connects, disconnects) go out once the loop has handled what it read: one
 * posted task per turn. */
void gw__flush_soon(gw_service_t *svc);

/* Starts method of service sd on the next logic client; done runs on the
 * loop.  On a local failure done runs too (soon, from the loop) with code
 * UNAVAILABLE.  c is freed after done returns. */
void gw__call(gw_service_t *svc, gw_call_t *c, const ProtobufCServiceDescriptor *sd,
              unsigned method, const ProtobufCMessage *req);
/* As gw__call, on logic client i. */
void gw__call_to(gw_service_t *svc, gw_call_t *c, size_t i, const ProtobufCServiceDescriptor *sd,
                 unsigned method, const ProtobufCMessage *req);
gw_call_t *gw__call_new(gw_service_t *svc, gw_call_kind_t kind, gw_call_done_fn done);

/* "<code>: text" of a status message, split: code into buf (the gRPC code's
 * name in lower case when the message has none), text returned. */
const char *gw__status_split(const gw_call_t *c, char *code, size_t codelen);

/* Sends an error frame for a failed call to its session. */
void gw__reply_error(gw_service_t *svc, const gw_call_t *c);

/* A complete JSON message in a pooled buffer: begin gives a writer over a
 * buffer of at least cap bytes (NULL when the pool is empty), finish sets its
 * length and returns it (NULL and unref on a writer error). */
im_buf_t *gw__buf_begin(gw_service_t *svc, size_t cap, im_jw_t *w);
im_buf_t *gw__buf_finish(gw_service_t *svc, im_buf_t *b, im_jw_t *w);
/* gw__buf_finish, then queues the frame to the session and drops our ref. */
void gw__buf_send(gw_service_t *svc, uint64_t session_id, im_buf_t *b, im_jw_t *w);

/* A {"type":"msg",...} frame of m (NULL when the pool is empty). */
im_buf_t *gw__msg_frame(gw_service_t *svc, const Im__V1__ChatMessage *m);

/* JSON pieces. */
void gw__jw_id(im_jw_t *w, const char *key, uint64_t id);
void gw__jw_msg_fields(im_jw_t *w, const Im__V1__ChatMessage *m);
void gw__jw_cid(im_jw_t *w, const gw_call_t *c);

/* Encoders shared by frames and REST (gw_api.c): "messages": [...], "more";
 * "conversations": [...]; a buffer size that fits the history. */
void gw__jw_history(im_jw_t *w, const Im__V1__HistoryResponse *r);
void gw__jw_conversations(im_jw_t *w, const Im__V1__ConversationsResponse *r);
size_t gw__history_size(const Im__V1__HistoryResponse *r);

/* Frames (gw_frames.c) and REST (gw_api.c). */
im_err_t gw__on_frame(gw_t *gw, const gw_frame_t *f, void *arg);
void gw__on_http(gw_t *gw, gw_http_req_t *req, void *arg);

/* Group index (gw_service.c). */
void gw__group_add(gw_service_t *svc, gw_sess_t *s, uint64_t group);
void gw__group_remove(gw_service_t *svc, gw_sess_t *s, uint64_t group);

#endif
