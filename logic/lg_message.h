/*
 * lg_message.h - Message.Send and Message.SendBatch of proto/im.proto: the
 * durable path.  A Send is a batch of one; each step below is done once for
 * the whole batch (one Redis script per step, one MySQL lookup per 64 sends).
 *
 * Each send is validated, deduplicated, given an id (im_id) and a
 * per-conversation seq (lg_seq); the accepted ones are published as ONE
 * persistent ChatBatch to the durable queue the writer drains.  The calls are
 * answered only when the broker has confirmed that publish: the reply is sent from the publisher's
 * callback, so a worker thread never waits for a confirm.  A nack, a lost
 * connection or a timeout answers UNAVAILABLE "broker_unavailable: ..."; the
 * client retries with the same client_msg_id, which is safe (dedup below).
 *
 * Statuses ("<code>: <text>", see im.proto):
 *   INVALID_ARGUMENT  bad_sender, bad_target (not exactly one of to_user /
 *                     to_group), empty_body, body_too_large, bad_utf8,
 *                     bad_client_msg_id (1..64 printable ASCII)
 *   NOT_FOUND         unknown_user, unknown_group
 *   PERMISSION_DENIED not_member (group send by a non-member)
 *   ABORTED           in_progress (the same client_msg_id is being sent now)
 *   UNAVAILABLE       db_unavailable, redis_unavailable, broker_unavailable
 *
 * Conversations: "d:<lower id>:<higher id>" (direct), "g:<group id>".
 *
 * Dedup: Redis key im:dedup:<sender>:<client_msg_id>, dedup_ttl_ms (24 h).  It is
 * claimed BEFORE the publish as "sending <id> <conv> <seq> <ts> <lease
 * until>" (SET NX GET, taking the conversation's seq in the same script, which
 * needs Redis >= 7.0), or, when the seq needs MySQL or Redis may have lost
 * records, first as "pending" (LG_DEDUP_PENDING_MS) and as "sending" once the
 * seq is known; after the confirm and before the answer, the record "<id>
 * <conv> <seq> <ts>".  A retry that finds the record answers
 * the original id, conv and seq with duplicate = true; one that finds
 * "pending" or a "sending" whose lease is running answers ABORTED.  A publish
 * whose outcome is unknown (nack, connection lost before the confirm, this
 * instance killed) leaves "sending" with its lease over (at once, or when the
 * lease runs out): the retry then publishes that same message again (same
 * id, seq and time), so whether or not the first publish reached the queue,
 * the message is stored once under the id the client is given.  Its live
 * delivery may then come after later messages of its conversation (it keeps
 * its seq; Sync is ordered).  A claim that is never published (a refusal after
 * the claim, a crash before the "sending" record) is deleted or expires.
 * Redis may lose records (restart, failover, restore from a snapshot): the key
 * LG_DEDUP_SINCE_KEY holds the server's run_id and until when claims must
 * also be checked against the messages table's unique key (sender_id,
 * client_msg_id).  When the run_id changed, that is 24 h after the newest
 * stored message (read from its id): a fresh system, or one whose Redis kept
 * running, costs no MySQL query per send.
 * Redis must not evict keys (maxmemory-policy noeviction).  Known window:
 * after a Redis loss, a message that is confirmed but still in the queue (not
 * yet written) is not found there, so its retry is accepted as new and the
 * writer then drops it on that unique key: the client holds the second id
 * while the first one is stored.
 *
 * Fan-out: before publishing a direct message, the routes of the recipient
 * and of the sender (its other devices) are looked up in Redis (lg_session);
 * after the confirm, a transient Delivery per message and gateway holding any
 * of them goes to the direct exchange LG_DELIVER_EXCHANGE with routing key
 * "gw.<gateway id>" and user_ids naming whom it holds.  A group message is
 * ONE publish with key "g.<group id>" (a batch's deliveries for one key
 * travel in one AMQP message, in Delivery.batch): the broker copies it to every gateway
 * that bound that key because it holds a member.  Deliveries are not
 * confirmed and may be lost with a gateway or the broker: the durable copy is
 * the queued one, and a device that missed a delivery gets it by Sync.  A
 * routing lookup that fails only costs the live delivery (logged).
 *
 * Order: within one logic instance, taking the seqs and submitting the publish
 * happen under the stripe locks of the batch's conversations, and the
 * publisher sends and reports in submit order, so a conversation's messages
 * reach the queue and the gateways in seq order.  Two logic instances taking seqs of one conversation at the
 * same moment may still deliver live out of order (Sync is always ordered).
 *
 * Threads: an lg_message_t belongs to one worker thread (it uses that thread's
 * MySQL, Redis and lg_seq).  lg_message_shared_t is shared by all of them;
 * its Redis connection is used only on the publisher thread (in callbacks).
 */
#ifndef LG_MESSAGE_H
#define LG_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "im.pb-c.h"
#include "im_err.h"
#include "im_id.h"
#include "im_mysql.h"
#include "im_redis.h"
#include "im_rpc.h"
#include "lg_publisher.h"
#include "lg_seq.h"
#include "lg_session.h"

#define LG_DELIVER_EXCHANGE "im.deliver"
#define LG_DELIVER_TIMEOUT_MS 1000 /* a live delivery not sent by then is dropped */
#define LG_CLIENT_MSG_ID_MAX 64
#define LG_SEND_BATCH_MAX 1000
#define LG_SEND_STRIPES 64 /* locks keeping a conversation's seq and publish in order */
#define LG_DEDUP_TTL_MS (24 * 3600 * 1000) /* the default of --dedup-ttl */
#define LG_DEDUP_PENDING_MS 60000 /* a claim not yet turned into a "sending" record */
#define LG_DEDUP_SINCE_KEY "im:dedup:since"

typedef struct {
    const char *queue;            /* durable queue of ChatBatch messages (borrowed) */
    size_t max_body;              /* bytes */
    unsigned publish_timeout_ms;  /* longest wait to be sent to the broker */
    uint64_t dedup_ttl_ms;        /* life of a dedup record (0: LG_DEDUP_TTL_MS) */
    lg_publisher_t *publisher;    /* borrowed, started */
    im_idgen_t *ids;              /* borrowed */
    im_redis_config_t redis;      /* for the publisher-thread connection; strings borrowed */
} lg_message_config_t;

typedef struct lg_message_shared_s lg_message_shared_t;
typedef struct lg_message_s lg_message_t;

/* State shared by every worker.  cfg and its strings must outlive it.  Never
 * NULL.  Free after the publisher stopped (no callback may still run). */
lg_message_shared_t *lg_message_shared_new(const lg_message_config_t *cfg);
void lg_message_shared_free(lg_message_shared_t *sh);

/* A worker's Send handler over its connections (borrowed: free this first).
 * Prepares statements on db.  Returns IM_OK and *out, or the prepare error. */
im_err_t lg_message_new(lg_message_shared_t *sh, im_mysql_t *db, im_redis_t *redis,
                        lg_seq_t *seq, lg_session_t *sessions, lg_message_t **out);
void lg_message_free(lg_message_t *m);

/* The checks of a Send that need no server: sender, exactly one target,
 * body 1..max_body bytes of valid UTF-8, client_msg_id 1..64 printable
 * ASCII.  IM_RPC_OK or INVALID_ARGUMENT with msg set.  Pure. */
im_rpc_code_t lg_message_validate(const Im__V1__SendRequest *req, size_t max_body, char *msg,
                                  size_t msglen);

/* Prometheus text of the Send counters and latency histogram into buf
 * (snprintf-style return).  Any thread. */
size_t lg_message_format_metrics(lg_message_shared_t *sh, char *buf, size_t cap);

/* Publishes d (packed) to the fan-out exchange with routing key rkey,
 * without a confirm.  Any thread. */
void lg_message_fanout(lg_message_shared_t *sh, const char *rkey, const Im__V1__Delivery *d);

/* Serves one Send call: completes it now on an error or a duplicate, or later
 * from the publisher thread once the broker answered.  The worker's thread. */
void lg_message_send(lg_message_t *m, im_rpc_call_t *call);

/* Serves one SendBatch call: each send as by Send, answered in the call's
 * results in order; the accepted ones published together (one confirm).
 * More than LG_SEND_BATCH_MAX sends: INVALID_ARGUMENT batch_too_large. */
void lg_message_send_batch(lg_message_t *m, im_rpc_call_t *call);

#endif
