/*
 * 11-message: the Message and Session services of the real logic binary on
 * real RabbitMQ, MariaDB and Redis: Send (validation, authorization, the row
 * stored exactly once, dedup of a retry), the fan-out deliveries routed by
 * sessions in Redis, Sync after an offline period, History, MarkRead with its
 * receipt, Conversations, and kill -9 of logic while sends are in flight.
 *
 * The test plays the gateways: it registers sessions with Session.Online and
 * binds its own queue to the fan-out exchange for "gw.<its gateway ids>".
 *
 * Usage (ctest passes it): test_11_message <logic binary>
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im.pb-c.h"
#include "im_amqp.h"
#include "im_mysql.h"
#include "im_redis.h"
#include "im_test.h"
#include "im_time.h"
#include "it_chat.h"
#include "it_env.h"
#include "it_logic.h"
#include "it_servers.h"

static it_logic_t lg = {.tag = "it11"};
static im_mysql_t *db;
static im_redis_t *redis;
static im_amqp_conn_t *amqp;
static it_fanout_t fan;

/* Method numbers, in proto/im.proto order. */
enum { SEND, SYNC, HISTORY, MARK_READ, CONVERSATIONS, TYPING };
enum { ONLINE, OFFLINE, HEARTBEAT };

/* ------------------------------------------------------------ tests */

TEST(session_online_offline_heartbeat)
{
    uint64_t u = it_new_user(&lg, "ses");
    Im__V1__SessionResponse *r;

    r = it_session(&lg, ONLINE, u, fan.gw_a, "s1", IM_RPC_OK);
    ASSERT_TRUE(r->first);
    ASSERT_GT(r->ttl_ms, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = it_session(&lg, ONLINE, u, fan.gw_b, "s2", IM_RPC_OK);
    ASSERT_TRUE(!r->first);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = it_session(&lg, HEARTBEAT, 0, fan.gw_a, "", IM_RPC_OK);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = it_session(&lg, OFFLINE, u, fan.gw_a, "s1", IM_RPC_OK);
    ASSERT_TRUE(!r->last);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = it_session(&lg, OFFLINE, u, fan.gw_b, "s2", IM_RPC_OK);
    ASSERT_TRUE(r->last);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    it_session(&lg, ONLINE, u, "bad/gateway", "s1", IM_RPC_INVALID_ARGUMENT);
    it_session(&lg, ONLINE, u, fan.gw_a, "", IM_RPC_INVALID_ARGUMENT);
    it_session(&lg, ONLINE, 0, fan.gw_a, "s1", IM_RPC_INVALID_ARGUMENT);
}

TEST(send_refusals_have_clear_codes)
{
    uint64_t a = it_new_user(&lg, "ref"), b = it_new_user(&lg, "ref"),
             owner = it_new_user(&lg, "ref");
    uint64_t g = it_new_group(&lg, owner);
    char big[5000], msg[256];

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ASSERT_EQ(it_send(&lg, a, 0, 0, "c1", "hi", NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(it_starts_with(msg, "bad_target: "));
    ASSERT_EQ(it_send(&lg, a, b, g, "c1", "hi", NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(it_starts_with(msg, "bad_target: "));
    ASSERT_EQ(it_send(&lg, a, b, 0, "c1", "", NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(it_starts_with(msg, "empty_body: "));
    ASSERT_EQ(it_send(&lg, a, b, 0, "c1", big, NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(it_starts_with(msg, "body_too_large: "));
    ASSERT_EQ(it_send(&lg, a, b, 0, "", "hi", NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(it_starts_with(msg, "bad_client_msg_id: "));
    ASSERT_EQ(it_send(&lg, a, b, 0, "c 1", "hi", NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_EQ(it_send(&lg, a, b + 1000000, 0, "c1", "hi", NULL, msg, sizeof(msg)),
              IM_RPC_NOT_FOUND);
    ASSERT_TRUE(it_starts_with(msg, "unknown_user: "));
    ASSERT_EQ(it_send(&lg, a, 0, g + 1, "c1", "hi", NULL, msg, sizeof(msg)), IM_RPC_NOT_FOUND);
    ASSERT_TRUE(it_starts_with(msg, "unknown_group: "));
    ASSERT_EQ(it_send(&lg, a, 0, g, "c1", "hi", NULL, msg, sizeof(msg)), IM_RPC_PERMISSION_DENIED);
    ASSERT_TRUE(it_starts_with(msg, "not_member: "));
    /* Broken UTF-8: refused by logic (or by protobuf decoding), never stored. */
    ASSERT_EQ(it_send(&lg, a, b, 0, "c1", "bad \xc3\x28 utf8", NULL, msg, sizeof(msg)),
              IM_RPC_INVALID_ARGUMENT);
    /* None of these claimed the client message id. */
    ASSERT_EQ(it_send(&lg, a, b, 0, "c1", "fine", NULL, msg, sizeof(msg)), IM_RPC_OK);
}

TEST(direct_send_is_stored_once_and_a_retry_is_deduplicated)
{
    uint64_t a = it_new_user(&lg, "dir"), b = it_new_user(&lg, "dir");
    Im__V1__SendResponse *r1, *r2;
    char msg[256], conv[48], *window;

    ASSERT_EQ(it_send(&lg, a, b, 0, "m-1", "hello \xf0\x9f\x91\x8b", &r1, msg, sizeof(msg)),
              IM_RPC_OK);
    it_direct_conv(conv, sizeof(conv), a, b);
    ASSERT_STR_EQ(r1->conv, conv);
    ASSERT_GE(r1->seq, 1);
    ASSERT_TRUE(!r1->duplicate);
    ASSERT_EQ(it_rows_with_id(db, r1->id, 1), 1);
    /* The retry: same id, conv and seq, flagged, and no second row. */
    ASSERT_EQ(it_send(&lg, a, b, 0, "m-1", "hello again", &r2, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_U64_EQ(r2->id, r1->id);
    ASSERT_U64_EQ(r2->seq, r1->seq);
    ASSERT_TRUE(r2->duplicate);
    protobuf_c_message_free_unpacked(&r2->base, NULL);
    /* Redis lost the dedup key: the stored row still answers the retry.
     * Logic looks in the table only while this Redis run may lack records
     * (im:dedup:since, set when the run began: no window if the table was
     * empty then, as on fresh infra), so open that window as a restart
     * would, and put the old one back after. */
    window = it_dedup_window_force(redis);
    ASSERT_EQ(im_redis_command(redis, NULL, "DEL im:dedup:%" PRIu64 ":m-1", a), IM_OK);
    ASSERT_EQ(it_send(&lg, a, b, 0, "m-1", "hello again", &r2, msg, sizeof(msg)), IM_RPC_OK);
    it_dedup_window_restore(redis, window);
    ASSERT_U64_EQ(r2->id, r1->id);
    ASSERT_TRUE(r2->duplicate);
    protobuf_c_message_free_unpacked(&r2->base, NULL);
    it_sleep_ms(200); /* the writer's delay, for a second row to show if there were one */
    ASSERT_EQ(it_rows_with_id(db, r1->id, 2), 1);
    /* Another sender may use the same client message id. */
    ASSERT_EQ(it_send(&lg, b, a, 0, "m-1", "mine", &r2, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_NE(r2->id, r1->id);
    ASSERT_TRUE(r2->seq > r1->seq);
    protobuf_c_message_free_unpacked(&r2->base, NULL);
    protobuf_c_message_free_unpacked(&r1->base, NULL);
}

TEST(fanout_reaches_the_gateways_that_hold_the_users)
{
    uint64_t a = it_new_user(&lg, "fan"), b = it_new_user(&lg, "fan"), c = it_new_user(&lg, "fan");
    uint64_t g = it_new_group(&lg, a);
    Im__V1__SendResponse *r;
    Im__V1__Delivery *d;
    char msg[256], rkey[256], want[64];
    int seen_a = 0, seen_b = 0;

    /* b on gateway A; a's other device on gateway B; c on a dead gateway. */
    it_online(&lg, b, fan.gw_a, "b1");
    it_online(&lg, a, fan.gw_b, "a2");
    it_online(&lg, c, "it11-dead", "c1");
    ASSERT_EQ(im_redis_command(redis, NULL, "DEL im:gw:it11-dead"), IM_OK);
    ASSERT_EQ(it_send(&lg, a, b, 0, "f-1", "to b", &r, msg, sizeof(msg)), IM_RPC_OK);
    for (int i = 0; i < 2; i++) {
        d = it_next_of_kind(&fan, 3000, 'm', rkey, sizeof(rkey));
        ASSERT_TRUE(d != NULL && d->message != NULL);
        ASSERT_U64_EQ(d->message->id, r->id);
        ASSERT_STR_EQ(d->message->body, "to b");
        ASSERT_EQ(d->n_user_ids, 1);
        if (strcmp(rkey + 3, fan.gw_a) == 0 && d->user_ids[0] == b)
            seen_b++;
        if (strcmp(rkey + 3, fan.gw_b) == 0 && d->user_ids[0] == a)
            seen_a++;
        protobuf_c_message_free_unpacked(&d->base, NULL);
    }
    ASSERT_EQ(seen_a, 1);
    ASSERT_EQ(seen_b, 1);
    ASSERT_TRUE(it_next_of_kind(&fan, 3000, 'm', NULL, 0) == NULL);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* The dead gateway's route was pruned on the way. */
    ASSERT_EQ(it_routes_of(redis, c), 1); /* not looked up yet: c got nothing */
    ASSERT_EQ(it_send(&lg, a, c, 0, "f-2", "to c", NULL, msg, sizeof(msg)), IM_RPC_OK);
    d = it_next_of_kind(&fan, 3000, 'm', rkey, sizeof(rkey)); /* a's other device only */
    ASSERT_TRUE(d != NULL);
    ASSERT_STR_EQ(rkey + 3, fan.gw_b);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    ASSERT_TRUE(it_next_of_kind(&fan, 3000, 'm', NULL, 0) == NULL);
    ASSERT_EQ(it_routes_of(redis, c), 0);
    /* A group message is one publish to g.<id>. */
    snprintf(want, sizeof(want), "g.%" PRIu64, g);
    ASSERT_EQ(im_amqp_bind(amqp, fan.queue, IT_DELIVER_EXCHANGE, want), IM_OK);
    it_join(&lg, b, g);
    ASSERT_EQ(it_send(&lg, a, 0, g, "f-3", "to the group", &r, msg, sizeof(msg)), IM_RPC_OK);
    d = it_next_of_kind(&fan, 3000, 'm', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL && d->message != NULL);
    ASSERT_STR_EQ(rkey, want);
    ASSERT_U64_EQ(d->message->to_group, g);
    ASSERT_U64_EQ(d->message->seq, r->seq);
    ASSERT_EQ(d->n_user_ids, 0);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static Im__V1__SyncResponse *sync_call(uint64_t user, const char *conv, uint64_t have,
                                       unsigned limit)
{
    Im__V1__SyncRequest req = IM__V1__SYNC_REQUEST__INIT;
    Im__V1__ConvPosition pos = IM__V1__CONV_POSITION__INIT, *posp = &pos;
    ProtobufCMessage *resp = NULL;
    char msg[256];

    req.user_id = user;
    req.limit = limit;
    if (conv != NULL) {
        pos.conv = (char *)conv;
        pos.seq = have;
        req.have = &posp;
        req.n_have = 1;
    }
    ASSERT_EQ(
        it_logic_call(&lg, &im__v1__message__descriptor, SYNC, &req.base, &resp, msg, sizeof(msg)),
        IM_RPC_OK);
    return (Im__V1__SyncResponse *)resp;
}

TEST(sync_after_offline_returns_exactly_the_missed_messages_in_order)
{
    uint64_t a = it_new_user(&lg, "syn"), b = it_new_user(&lg, "syn"),
             owner = it_new_user(&lg, "syn");
    uint64_t g = it_new_group(&lg, owner), seqs[8], gseqs[3];
    Im__V1__SendResponse *r;
    Im__V1__SyncResponse *s;
    char msg[256], cid[16], conv[48], gconv[32];

    it_join(&lg, b, g);
    for (int i = 0; i < 8; i++) {
        snprintf(cid, sizeof(cid), "s-%d", i);
        ASSERT_EQ(it_send(&lg, a, b, 0, cid, cid, &r, msg, sizeof(msg)), IM_RPC_OK);
        seqs[i] = r->seq;
        snprintf(conv, sizeof(conv), "%s", r->conv);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(cid, sizeof(cid), "g-%d", i);
        ASSERT_EQ(it_send(&lg, owner, 0, g, cid, cid, &r, msg, sizeof(msg)), IM_RPC_OK);
        gseqs[i] = r->seq;
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    snprintf(gconv, sizeof(gconv), "g:%" PRIu64, g);
    /* Everything, once the writer has stored it (bounded by its delay). */
    for (int i = 0; i < 100; i++) {
        s = sync_call(b, NULL, 0, 0);
        if (s->n_messages >= 11)
            break;
        protobuf_c_message_free_unpacked(&s->base, NULL);
        it_sleep_ms(50);
    }
    ASSERT_EQ(s->n_messages, 11);
    ASSERT_TRUE(!s->more);
    {
        int d = 0, gi = 0;
        for (size_t i = 0; i < s->n_messages; i++) {
            Im__V1__ChatMessage *m = s->messages[i];
            if (strcmp(m->conv, conv) == 0) {
                ASSERT_U64_EQ(m->seq, seqs[d]);
                d++;
            } else {
                ASSERT_STR_EQ(m->conv, gconv);
                ASSERT_U64_EQ(m->seq, gseqs[gi]);
                gi++;
            }
        }
        ASSERT_EQ(d, 8);
        ASSERT_EQ(gi, 3);
    }
    protobuf_c_message_free_unpacked(&s->base, NULL);
    /* b had the direct chat up to the 5th: exactly the last 3 of it, and the group's. */
    s = sync_call(b, conv, seqs[4], 0);
    ASSERT_EQ(s->n_messages, 6);
    ASSERT_U64_EQ(s->messages[0]->seq, seqs[5]);
    ASSERT_U64_EQ(s->messages[2]->seq, seqs[7]);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    /* A limit cuts it, and says so. */
    s = sync_call(b, conv, 0, 4);
    ASSERT_EQ(s->n_messages, 4);
    ASSERT_TRUE(s->more);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    /* An outsider syncs nothing of it. */
    s = sync_call(it_new_user(&lg, "syn"), NULL, 0, 0);
    ASSERT_EQ(s->n_messages, 0);
    protobuf_c_message_free_unpacked(&s->base, NULL);
}

static im_rpc_code_t history(uint64_t user, const char *conv, uint64_t before, unsigned limit,
                             Im__V1__HistoryResponse **out, char *msg, size_t msglen)
{
    Im__V1__HistoryRequest req = IM__V1__HISTORY_REQUEST__INIT;

    req.user_id = user;
    req.conv = (char *)conv;
    req.before_seq = before;
    req.limit = limit;
    *out = NULL;
    return it_logic_call(&lg, &im__v1__message__descriptor, HISTORY, &req.base,
                         (ProtobufCMessage **)out, msg, msglen);
}

TEST(history_pages_backwards_and_only_for_participants)
{
    uint64_t a = it_new_user(&lg, "his"), b = it_new_user(&lg, "his"),
             eve = it_new_user(&lg, "his");
    uint64_t owner = it_new_user(&lg, "his"), g = it_new_group(&lg, owner), seqs[5];
    Im__V1__HistoryResponse *h;
    Im__V1__SendResponse *r;
    char msg[256], cid[16], conv[48], gconv[32];

    for (int i = 0; i < 5; i++) {
        snprintf(cid, sizeof(cid), "h-%d", i);
        ASSERT_EQ(it_send(&lg, a, b, 0, cid, cid, &r, msg, sizeof(msg)), IM_RPC_OK);
        seqs[i] = r->seq;
        snprintf(conv, sizeof(conv), "%s", r->conv);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    ASSERT_EQ(it_rows_with_id(db, 0, 0), 0); /* (warms nothing; keeps helpers used) */
    for (int i = 0; i < 100; i++) {
        ASSERT_EQ(history(b, conv, 0, 3, &h, msg, sizeof(msg)), IM_RPC_OK);
        if (h->n_messages == 3 && h->messages[0]->seq == seqs[4])
            break;
        protobuf_c_message_free_unpacked(&h->base, NULL);
        it_sleep_ms(50);
    }
    ASSERT_EQ(h->n_messages, 3);
    ASSERT_U64_EQ(h->messages[0]->seq, seqs[4]);
    ASSERT_U64_EQ(h->messages[2]->seq, seqs[2]);
    ASSERT_TRUE(h->more);
    protobuf_c_message_free_unpacked(&h->base, NULL);
    ASSERT_EQ(history(a, conv, seqs[2], 3, &h, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_EQ(h->n_messages, 2);
    ASSERT_U64_EQ(h->messages[0]->seq, seqs[1]);
    ASSERT_TRUE(!h->more);
    protobuf_c_message_free_unpacked(&h->base, NULL);
    ASSERT_EQ(history(eve, conv, 0, 3, &h, msg, sizeof(msg)), IM_RPC_PERMISSION_DENIED);
    ASSERT_TRUE(it_starts_with(msg, "not_participant: "));
    snprintf(gconv, sizeof(gconv), "g:%" PRIu64, g);
    ASSERT_EQ(history(eve, gconv, 0, 3, &h, msg, sizeof(msg)), IM_RPC_PERMISSION_DENIED);
    ASSERT_TRUE(it_starts_with(msg, "not_member: "));
    ASSERT_EQ(history(eve, "g:1", 0, 3, &h, msg, sizeof(msg)), IM_RPC_NOT_FOUND);
    ASSERT_EQ(history(eve, "d:9:3", 0, 3, &h, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(it_starts_with(msg, "bad_conv: "));
    ASSERT_EQ(history(eve, "x' OR 1=1 --", 0, 3, &h, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
}

static uint64_t mark_read(uint64_t user, const char *conv, uint64_t seq)
{
    Im__V1__MarkReadRequest req = IM__V1__MARK_READ_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256];
    uint64_t out;

    req.user_id = user;
    req.conv = (char *)conv;
    req.seq = seq;
    ASSERT_EQ(it_logic_call(&lg, &im__v1__message__descriptor, MARK_READ, &req.base, &resp, msg,
                            sizeof(msg)),
              IM_RPC_OK);
    out = ((Im__V1__MarkReadResponse *)resp)->read_seq;
    protobuf_c_message_free_unpacked(resp, NULL);
    return out;
}

static const Im__V1__Conversation *find_conv(const Im__V1__ConversationsResponse *r,
                                             const char *conv)
{
    for (size_t i = 0; i < r->n_conversations; i++)
        if (strcmp(r->conversations[i]->conv, conv) == 0)
            return r->conversations[i];
    return NULL;
}

static Im__V1__ConversationsResponse *conversations(uint64_t user)
{
    Im__V1__ConversationsRequest req = IM__V1__CONVERSATIONS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256];

    req.user_id = user;
    ASSERT_EQ(it_logic_call(&lg, &im__v1__message__descriptor, CONVERSATIONS, &req.base, &resp, msg,
                            sizeof(msg)),
              IM_RPC_OK);
    return (Im__V1__ConversationsResponse *)resp;
}

TEST(mark_read_never_goes_back_tells_the_peer_and_counts_unread)
{
    uint64_t a = it_new_user(&lg, "rd"), b = it_new_user(&lg, "rd"), seqs[5];
    Im__V1__ConversationsResponse *cr;
    const Im__V1__Conversation *c;
    Im__V1__SendResponse *r;
    Im__V1__Delivery *d;
    char msg[256], cid[16], conv[48], rkey[256];

    for (int i = 0; i < 5; i++) {
        snprintf(cid, sizeof(cid), "r-%d", i);
        ASSERT_EQ(it_send(&lg, a, b, 0, cid, cid, &r, msg, sizeof(msg)), IM_RPC_OK);
        seqs[i] = r->seq;
        snprintf(conv, sizeof(conv), "%s", r->conv);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    ASSERT_EQ(it_rows_with_id(db, 0, 0), 0);
    it_online(&lg, a, fan.gw_a, "a1");
    it_drain_deliveries(&fan, 3000); /* (nothing: a came online after) */
    ASSERT_U64_EQ(mark_read(b, conv, seqs[2]), seqs[2]);
    d = it_next_of_kind(&fan, 3000, 'r', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL && d->receipt != NULL && d->message == NULL);
    ASSERT_STR_EQ(rkey + 3, fan.gw_a);
    ASSERT_STR_EQ(d->receipt->conv, conv);
    ASSERT_U64_EQ(d->receipt->user_id, b);
    ASSERT_U64_EQ(d->receipt->read_seq, seqs[2]);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    /* Lower marks change nothing and tell nobody. */
    ASSERT_U64_EQ(mark_read(b, conv, seqs[0]), seqs[2]);
    ASSERT_TRUE(it_next_of_kind(&fan, 3000, 'r', NULL, 0) == NULL);
    for (int i = 0; i < 100; i++) { /* until the writer stored all five */
        cr = conversations(b);
        c = find_conv(cr, conv);
        if (c != NULL && c->last_seq == seqs[4])
            break;
        protobuf_c_message_free_unpacked(&cr->base, NULL);
        it_sleep_ms(50);
    }
    ASSERT_TRUE(c != NULL);
    ASSERT_U64_EQ(c->peer, a);
    ASSERT_U64_EQ(c->read_seq, seqs[2]);
    ASSERT_U64_EQ(c->unread, 2);
    ASSERT_GT(c->last_at_ms, 0);
    protobuf_c_message_free_unpacked(&cr->base, NULL);
    cr = conversations(a);
    c = find_conv(cr, conv);
    ASSERT_TRUE(c != NULL);
    ASSERT_U64_EQ(c->unread, 0); /* all its own */
    ASSERT_U64_EQ(c->peer_read_seq, seqs[2]);
    protobuf_c_message_free_unpacked(&cr->base, NULL);
    {
        Im__V1__MarkReadRequest req = IM__V1__MARK_READ_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        req.user_id = it_new_user(&lg, "rd");
        req.conv = conv;
        req.seq = 1;
        ASSERT_EQ(it_logic_call(&lg, &im__v1__message__descriptor, MARK_READ, &req.base, &resp, msg,
                                sizeof(msg)),
                  IM_RPC_PERMISSION_DENIED);
    }
}

TEST(typing_presence_and_group_events_reach_online_users)
{
    uint64_t a = it_new_user(&lg, "ntf"), b = it_new_user(&lg, "ntf"),
             eve = it_new_user(&lg, "ntf");
    Im__V1__TypingRequest treq = IM__V1__TYPING_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    Im__V1__Delivery *d;
    char msg[256], rkey[256];
    uint64_t g;

    /* a and b have a direct chat; a is online on gateway A. */
    ASSERT_EQ(it_send(&lg, a, b, 0, "n-1", "hi", NULL, msg, sizeof(msg)), IM_RPC_OK);
    for (int i = 0; i < 100; i++) { /* user_convs is written with the message */
        Im__V1__ConversationsResponse *cr = conversations(a);
        size_t n = cr->n_conversations;
        protobuf_c_message_free_unpacked(&cr->base, NULL);
        if (n > 0)
            break;
        it_sleep_ms(50);
    }
    it_online(&lg, a, fan.gw_a, "a1");
    /* b typing to a. */
    treq.user_id = b;
    treq.to_user = a;
    ASSERT_EQ(it_logic_call(&lg, &im__v1__message__descriptor, TYPING, &treq.base, &resp, msg,
                            sizeof(msg)),
              IM_RPC_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
    d = it_next_of_kind(&fan, 3000, 't', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL);
    ASSERT_U64_EQ(d->typing->user_id, b);
    ASSERT_EQ(d->n_user_ids, 1);
    ASSERT_U64_EQ(d->user_ids[0], a);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    /* b's first session: a hears b is online; b's last going: offline. */
    it_online(&lg, b, fan.gw_b, "b1");
    d = it_next_of_kind(&fan, 3000, 'p', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL);
    ASSERT_U64_EQ(d->presence->user_id, b);
    ASSERT_TRUE(d->presence->online);
    ASSERT_STR_EQ(rkey + 3, fan.gw_a);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    protobuf_c_message_free_unpacked(&it_session(&lg, OFFLINE, b, fan.gw_b, "b1", IM_RPC_OK)->base,
                                     NULL);
    d = it_next_of_kind(&fan, 3000, 'p', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL);
    if (d->presence->online)
        fprintf(stderr, "presence of %" PRIu64 " (a %" PRIu64 ", b %" PRIu64 ") online via %s\n",
                d->presence->user_id, a, b, rkey);
    ASSERT_TRUE(!d->presence->online);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    /* a joins a group: a's gateway hears of it. */
    g = it_new_group(&lg, eve);
    /* eve is not online: nothing for her */
    d = it_next_of_kind(&fan, 3000, 'g', rkey, sizeof(rkey));
    ASSERT_TRUE(d == NULL);
    it_join(&lg, a, g);
    d = it_next_of_kind(&fan, 3000, 'g', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL);
    ASSERT_U64_EQ(d->group_event->group_id, g);
    ASSERT_U64_EQ(d->group_event->user_id, a);
    ASSERT_TRUE(d->group_event->joined);
    ASSERT_STR_EQ(rkey + 3, fan.gw_a);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    /* Typing into a group one is not in is refused. */
    treq.to_user = 0;
    treq.to_group = g;
    ASSERT_EQ(it_logic_call(&lg, &im__v1__message__descriptor, TYPING, &treq.base, &resp, msg,
                            sizeof(msg)),
              IM_RPC_PERMISSION_DENIED);
    protobuf_c_message_free_unpacked(&it_session(&lg, OFFLINE, a, fan.gw_a, "a1", IM_RPC_OK)->base,
                                     NULL);
    it_drain_deliveries(&fan, 3000);
}

/* ------------------------------------------------------------ kill -9 */

#define KILL_SENDS 3000

static atomic_int kill_done, kill_ok;
static uint64_t kill_ids[KILL_SENDS];

static void kill_send_cb(void *arg, im_rpc_result_t *res)
{
    uintptr_t i = (uintptr_t)arg;

    if (res->code == IM_RPC_OK) {
        kill_ids[i] = ((const Im__V1__SendResponse *)res->resp)->id;
        atomic_fetch_add(&kill_ok, 1);
    }
    atomic_fetch_add(&kill_done, 1);
}

TEST(kill9_while_sending_every_acked_message_is_stored_once)
{
    uint64_t a = it_new_user(&lg, "k9"), b = it_new_user(&lg, "k9");
    char sql[256];
    im_mysql_stmt_t *st = NULL;
    uint64_t t0;
    int ok;

    /* Many sends in flight, then kill -9 in the middle of them. */
    for (uintptr_t i = 0; i < KILL_SENDS; i++) {
        Im__V1__SendRequest req = IM__V1__SEND_REQUEST__INIT;
        char cid[24];

        snprintf(cid, sizeof(cid), "k-%u", (unsigned)i);
        req.sender = a;
        req.to_user = b;
        req.client_msg_id = cid;
        req.body = "kill me";
        ASSERT_EQ(im_rpc_call(lg.client, &im__v1__message__descriptor, SEND, &req.base, 20000,
                              NULL, 0, kill_send_cb, (void *)i),
                  IM_OK);
        if (i == KILL_SENDS / 2)
            it_sleep_ms(50);
    }
    t0 = im_mono_ms();
    while (atomic_load(&kill_ok) < KILL_SENDS / 10 && im_mono_ms() - t0 < 20000)
        it_sleep_ms(1);
    it_logic_kill(&lg); /* frees the client: every call has completed */
    ok = atomic_load(&kill_ok);
    ASSERT_EQ(atomic_load(&kill_done), KILL_SENDS);
    ASSERT_GT(ok, 0);
    ASSERT_TRUE(it_logic_start(&lg, NULL));
    /* Every acked id is stored exactly once once the writer drained the queue. */
    snprintf(sql, sizeof(sql), "SELECT COUNT(*), COUNT(DISTINCT id) FROM messages WHERE id = ?");
    ASSERT_EQ(im_mysql_prepare(db, sql, &st), IM_OK);
    for (int i = 0; i < KILL_SENDS; i++) {
        if (kill_ids[i] == 0)
            continue;
        for (int tries = 0;; tries++) {
            im_mysql_bind_u64(st, 0, kill_ids[i]);
            ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
            ASSERT_EQ(im_mysql_stmt_next(st), IM_OK);
            if (im_mysql_col_u64(st, 0) == 1 || tries == 200)
                break;
            it_sleep_ms(50);
        }
        ASSERT_U64_EQ(im_mysql_col_u64(st, 0), 1);
    }
    im_mysql_stmt_free(st);
    printf("     kill -9 after %d of %d sends acked; all stored once\n", ok, KILL_SENDS);
}

static void cleanup(void)
{
    it_logic_kill(&lg);
}

int main(int argc, char **argv)
{
    const char *extra[] = {"--writer-delay", "5ms", NULL};

    if (argc < 2) {
        fprintf(stderr, "usage: %s <logic binary>\n", argv[0]);
        return 2;
    }
    lg.bin = argv[1];
    if (it_env_load() != IM_OK)
        return 1;
    atexit(cleanup);
    db = it_mysql_connect("it11");
    redis = it_redis_connect("it11");
    amqp = it_amqp_connect("it11");
    if (db == NULL || redis == NULL || amqp == NULL)
        return 1;
    if (!it_fanout_open(&fan, amqp, "it11"))
        return 1;
    if (!it_logic_start(&lg, extra))
        return 1;
    RUN(session_online_offline_heartbeat);
    RUN(send_refusals_have_clear_codes);
    RUN(direct_send_is_stored_once_and_a_retry_is_deduplicated);
    RUN(fanout_reaches_the_gateways_that_hold_the_users);
    RUN(sync_after_offline_returns_exactly_the_missed_messages_in_order);
    RUN(history_pages_backwards_and_only_for_participants);
    RUN(mark_read_never_goes_back_tells_the_peer_and_counts_unread);
    RUN(typing_presence_and_group_events_reach_online_users);
    RUN(kill9_while_sending_every_acked_message_is_stored_once);
    if (!it_logic_stop_checked(&lg))
        return 1;
    im_mysql_close(db);
    im_redis_close(redis);
    im_amqp_close(amqp);
    return it_test_done_log(&lg);
}
