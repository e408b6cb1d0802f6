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
#include "it_env.h"
#include "it_logic.h"
#include "it_servers.h"

#define EXCHANGE "im.deliver"

static it_logic_t lg = {.tag = "it11"};
static im_mysql_t *db;
static im_redis_t *redis;
static im_amqp_conn_t *amqp;
static char fanout_queue[64], gw_a[48], gw_b[48];
static unsigned serial;

/* Method numbers, in proto/im.proto order. */
enum { SIGNUP };
enum { CREATE, JOIN };
enum { SEND, SYNC, HISTORY, MARK_READ, CONVERSATIONS, TYPING };
enum { ONLINE, OFFLINE, HEARTBEAT };

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static im_rpc_code_t call(const ProtobufCServiceDescriptor *sd, unsigned method,
                          const ProtobufCMessage *req, ProtobufCMessage **resp, char *msg,
                          size_t msglen)
{
    return it_logic_call(&lg, sd, method, req, resp, msg, msglen);
}

static uint64_t new_user(const char *tag)
{
    Im__V1__RegisterRequest req = IM__V1__REGISTER_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char name[40], msg[256];
    uint64_t id;

    snprintf(name, sizeof(name), "%s_%d_%u", tag, (int)getpid() % 100000, ++serial);
    req.username = name;
    req.password = "password1";
    ASSERT_EQ(call(&im__v1__auth__descriptor, SIGNUP, &req.base, &resp, msg, sizeof(msg)),
              IM_RPC_OK);
    id = ((Im__V1__RegisterResponse *)resp)->user_id;
    protobuf_c_message_free_unpacked(resp, NULL);
    return id;
}

static uint64_t new_group(uint64_t owner)
{
    Im__V1__CreateGroupRequest req = IM__V1__CREATE_GROUP_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256];
    uint64_t id;

    req.user_id = owner;
    req.name = "it11 group";
    ASSERT_EQ(call(&im__v1__group__descriptor, CREATE, &req.base, &resp, msg, sizeof(msg)),
              IM_RPC_OK);
    id = ((Im__V1__GroupResponse *)resp)->group->id;
    protobuf_c_message_free_unpacked(resp, NULL);
    return id;
}

static void join(uint64_t user, uint64_t group)
{
    Im__V1__GroupRequest req = IM__V1__GROUP_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256];

    req.user_id = user;
    req.group_id = group;
    ASSERT_EQ(call(&im__v1__group__descriptor, JOIN, &req.base, &resp, msg, sizeof(msg)),
              IM_RPC_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
}

/* A Send; *out (may be NULL) gets the response to free. */
static im_rpc_code_t send_msg(uint64_t from, uint64_t to_user, uint64_t to_group, const char *cid,
                              const char *body, Im__V1__SendResponse **out, char *msg,
                              size_t msglen)
{
    Im__V1__SendRequest req = IM__V1__SEND_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    im_rpc_code_t code;

    req.sender = from;
    req.to_user = to_user;
    req.to_group = to_group;
    req.client_msg_id = (char *)cid;
    req.body = (char *)body;
    code = call(&im__v1__message__descriptor, SEND, &req.base, &resp, msg, msglen);
    if (out != NULL)
        *out = (Im__V1__SendResponse *)resp;
    else if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

static Im__V1__SessionResponse *session(unsigned method, uint64_t user, const char *gw,
                                        const char *sid, im_rpc_code_t want)
{
    Im__V1__SessionRequest req = IM__V1__SESSION_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256];

    req.user_id = user;
    req.gateway_id = (char *)gw;
    req.session_id = (char *)sid;
    ASSERT_EQ(call(&im__v1__session__descriptor, method, &req.base, &resp, msg, sizeof(msg)),
              want);
    return (Im__V1__SessionResponse *)resp;
}

static void online(uint64_t user, const char *gw, const char *sid)
{
    protobuf_c_message_free_unpacked(&session(ONLINE, user, gw, sid, IM_RPC_OK)->base, NULL);
}

/* Rows stored with this id, waiting up to 5 s for at least `want`. */
static uint64_t rows_with_id(uint64_t id, uint64_t want)
{
    char sql[128];
    uint64_t n = 0;

    for (int i = 0; i < 100; i++) {
        im_mysql_stmt_t *st = NULL;

        snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM messages WHERE id = %" PRIu64, id);
        ASSERT_EQ(im_mysql_prepare(db, sql, &st), IM_OK);
        ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
        ASSERT_EQ(im_mysql_stmt_next(st), IM_OK);
        n = im_mysql_col_u64(st, 0);
        im_mysql_stmt_free(st);
        if (n >= want)
            break;
        it_sleep_ms(50);
    }
    return n;
}

/* The next delivery on our fan-out queue within 3 s, decoded; NULL if none. */
static Im__V1__Delivery *next_delivery(char *rkey, size_t rkeylen)
{
    im_amqp_delivery_t d;
    Im__V1__Delivery *out;

    if (im_amqp_consumer_next(amqp, 3000, &d) != IM_OK)
        return NULL;
    out = im__v1__delivery__unpack(NULL, d.len, d.body);
    if (rkey != NULL)
        snprintf(rkey, rkeylen, "%s", d.routing_key);
    return out;
}

/* The next delivery, skipping those of other kinds than `want`
 * ('m'essage, 'r'eceipt, 't'yping, 'p'resence, 'g'roup event); NULL after 3 s. */
static Im__V1__Delivery *next_of_kind(char want, char *rkey, size_t rkeylen)
{
    Im__V1__Delivery *d;

    while ((d = next_delivery(rkey, rkeylen)) != NULL) {
        if ((want == 'm' && d->message) || (want == 'r' && d->receipt) ||
            (want == 't' && d->typing) || (want == 'p' && d->presence) ||
            (want == 'g' && d->group_event))
            return d;
        protobuf_c_message_free_unpacked(&d->base, NULL);
    }
    return NULL;
}

/* ------------------------------------------------------------ tests */

TEST(session_online_offline_heartbeat)
{
    uint64_t u = new_user("ses");
    Im__V1__SessionResponse *r;

    r = session(ONLINE, u, gw_a, "s1", IM_RPC_OK);
    ASSERT_TRUE(r->first);
    ASSERT_GT(r->ttl_ms, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = session(ONLINE, u, gw_b, "s2", IM_RPC_OK);
    ASSERT_TRUE(!r->first);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = session(HEARTBEAT, 0, gw_a, "", IM_RPC_OK);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = session(OFFLINE, u, gw_a, "s1", IM_RPC_OK);
    ASSERT_TRUE(!r->last);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = session(OFFLINE, u, gw_b, "s2", IM_RPC_OK);
    ASSERT_TRUE(r->last);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    session(ONLINE, u, "bad/gateway", "s1", IM_RPC_INVALID_ARGUMENT);
    session(ONLINE, u, gw_a, "", IM_RPC_INVALID_ARGUMENT);
    session(ONLINE, 0, gw_a, "s1", IM_RPC_INVALID_ARGUMENT);
}

TEST(send_refusals_have_clear_codes)
{
    uint64_t a = new_user("ref"), b = new_user("ref"), owner = new_user("ref");
    uint64_t g = new_group(owner);
    char big[5000], msg[256];

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ASSERT_EQ(send_msg(a, 0, 0, "c1", "hi", NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(starts_with(msg, "bad_target: "));
    ASSERT_EQ(send_msg(a, b, g, "c1", "hi", NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(starts_with(msg, "bad_target: "));
    ASSERT_EQ(send_msg(a, b, 0, "c1", "", NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(starts_with(msg, "empty_body: "));
    ASSERT_EQ(send_msg(a, b, 0, "c1", big, NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(starts_with(msg, "body_too_large: "));
    ASSERT_EQ(send_msg(a, b, 0, "", "hi", NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(starts_with(msg, "bad_client_msg_id: "));
    ASSERT_EQ(send_msg(a, b, 0, "c 1", "hi", NULL, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_EQ(send_msg(a, b + 1000000, 0, "c1", "hi", NULL, msg, sizeof(msg)), IM_RPC_NOT_FOUND);
    ASSERT_TRUE(starts_with(msg, "unknown_user: "));
    ASSERT_EQ(send_msg(a, 0, g + 1, "c1", "hi", NULL, msg, sizeof(msg)), IM_RPC_NOT_FOUND);
    ASSERT_TRUE(starts_with(msg, "unknown_group: "));
    ASSERT_EQ(send_msg(a, 0, g, "c1", "hi", NULL, msg, sizeof(msg)), IM_RPC_PERMISSION_DENIED);
    ASSERT_TRUE(starts_with(msg, "not_member: "));
    /* Broken UTF-8: refused by logic (or by protobuf decoding), never stored. */
    ASSERT_EQ(send_msg(a, b, 0, "c1", "bad \xc3\x28 utf8", NULL, msg, sizeof(msg)),
              IM_RPC_INVALID_ARGUMENT);
    /* None of these claimed the client message id. */
    ASSERT_EQ(send_msg(a, b, 0, "c1", "fine", NULL, msg, sizeof(msg)), IM_RPC_OK);
}

TEST(direct_send_is_stored_once_and_a_retry_is_deduplicated)
{
    uint64_t a = new_user("dir"), b = new_user("dir");
    Im__V1__SendResponse *r1, *r2;
    char msg[256], conv[48];

    ASSERT_EQ(send_msg(a, b, 0, "m-1", "hello \xf0\x9f\x91\x8b", &r1, msg, sizeof(msg)),
              IM_RPC_OK);
    snprintf(conv, sizeof(conv), "d:%" PRIu64 ":%" PRIu64, a < b ? a : b, a < b ? b : a);
    ASSERT_STR_EQ(r1->conv, conv);
    ASSERT_GE(r1->seq, 1);
    ASSERT_TRUE(!r1->duplicate);
    ASSERT_EQ(rows_with_id(r1->id, 1), 1);
    /* The retry: same id, conv and seq, flagged, and no second row. */
    ASSERT_EQ(send_msg(a, b, 0, "m-1", "hello again", &r2, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_U64_EQ(r2->id, r1->id);
    ASSERT_U64_EQ(r2->seq, r1->seq);
    ASSERT_TRUE(r2->duplicate);
    protobuf_c_message_free_unpacked(&r2->base, NULL);
    /* Redis lost the dedup key: the stored row still answers the retry.
     * Logic looks in the table only while this Redis run may lack records
     * (im:dedup:since, set when the run began: no window if the table was
     * empty then, as on fresh infra), so open that window as a restart
     * would, and put the old one back after. */
    {
        im_redis_reply_t *rep = NULL;
        const char *run_id, *v;
        char since[96], old[96] = "";

        ASSERT_EQ(im_redis_command(redis, &rep, "GET im:dedup:since"), IM_OK);
        if ((v = im_redis_reply_str(rep, NULL)) != NULL)
            snprintf(old, sizeof(old), "%s", v);
        im_redis_reply_free(rep);
        ASSERT_EQ(im_redis_run_id(redis, &run_id), IM_OK);
        snprintf(since, sizeof(since), "%s %" PRIu64, run_id, im_wall_ms() + 3600 * 1000);
        ASSERT_EQ(im_redis_command(redis, NULL, "SET im:dedup:since %s", since), IM_OK);
        ASSERT_EQ(im_redis_command(redis, NULL, "DEL im:dedup:%" PRIu64 ":m-1", a), IM_OK);
        ASSERT_EQ(send_msg(a, b, 0, "m-1", "hello again", &r2, msg, sizeof(msg)), IM_RPC_OK);
        if (old[0] != '\0')
            ASSERT_EQ(im_redis_command(redis, NULL, "SET im:dedup:since %s", old), IM_OK);
        else
            ASSERT_EQ(im_redis_command(redis, NULL, "DEL im:dedup:since"), IM_OK);
    }
    ASSERT_U64_EQ(r2->id, r1->id);
    ASSERT_TRUE(r2->duplicate);
    protobuf_c_message_free_unpacked(&r2->base, NULL);
    it_sleep_ms(200); /* the writer's delay, for a second row to show if there were one */
    ASSERT_EQ(rows_with_id(r1->id, 2), 1);
    /* Another sender may use the same client message id. */
    ASSERT_EQ(send_msg(b, a, 0, "m-1", "mine", &r2, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_NE(r2->id, r1->id);
    ASSERT_TRUE(r2->seq > r1->seq);
    protobuf_c_message_free_unpacked(&r2->base, NULL);
    protobuf_c_message_free_unpacked(&r1->base, NULL);
}

TEST(fanout_reaches_the_gateways_that_hold_the_users)
{
    uint64_t a = new_user("fan"), b = new_user("fan"), c = new_user("fan");
    uint64_t g = new_group(a);
    Im__V1__SendResponse *r;
    Im__V1__Delivery *d;
    char msg[256], rkey[256], want[64];
    int seen_a = 0, seen_b = 0;

    /* b on gateway A; a's other device on gateway B; c on a dead gateway. */
    online(b, gw_a, "b1");
    online(a, gw_b, "a2");
    online(c, "it11-dead", "c1");
    ASSERT_EQ(im_redis_command(redis, NULL, "DEL im:gw:it11-dead"), IM_OK);
    ASSERT_EQ(send_msg(a, b, 0, "f-1", "to b", &r, msg, sizeof(msg)), IM_RPC_OK);
    for (int i = 0; i < 2; i++) {
        d = next_of_kind('m', rkey, sizeof(rkey));
        ASSERT_TRUE(d != NULL && d->message != NULL);
        ASSERT_U64_EQ(d->message->id, r->id);
        ASSERT_STR_EQ(d->message->body, "to b");
        ASSERT_EQ(d->n_user_ids, 1);
        if (strcmp(rkey + 3, gw_a) == 0 && d->user_ids[0] == b)
            seen_b++;
        if (strcmp(rkey + 3, gw_b) == 0 && d->user_ids[0] == a)
            seen_a++;
        protobuf_c_message_free_unpacked(&d->base, NULL);
    }
    ASSERT_EQ(seen_a, 1);
    ASSERT_EQ(seen_b, 1);
    ASSERT_TRUE(next_of_kind('m', NULL, 0) == NULL);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* The dead gateway's route was pruned on the way. */
    {
        im_redis_reply_t *rep = NULL;
        ASSERT_EQ(im_redis_command(redis, &rep, "ZCARD im:route:%" PRIu64, c), IM_OK);
        ASSERT_EQ(im_redis_reply_int(rep), 1); /* not looked up yet: c got nothing */
        im_redis_reply_free(rep);
        ASSERT_EQ(send_msg(a, c, 0, "f-2", "to c", NULL, msg, sizeof(msg)), IM_RPC_OK);
        d = next_of_kind('m', rkey, sizeof(rkey)); /* a's other device only */
        ASSERT_TRUE(d != NULL);
        ASSERT_STR_EQ(rkey + 3, gw_b);
        protobuf_c_message_free_unpacked(&d->base, NULL);
        ASSERT_TRUE(next_of_kind('m', NULL, 0) == NULL);
        ASSERT_EQ(im_redis_command(redis, &rep, "ZCARD im:route:%" PRIu64, c), IM_OK);
        ASSERT_EQ(im_redis_reply_int(rep), 0);
        im_redis_reply_free(rep);
    }
    /* A group message is one publish to g.<id>. */
    snprintf(want, sizeof(want), "g.%" PRIu64, g);
    ASSERT_EQ(im_amqp_bind(amqp, fanout_queue, EXCHANGE, want), IM_OK);
    join(b, g);
    ASSERT_EQ(send_msg(a, 0, g, "f-3", "to the group", &r, msg, sizeof(msg)), IM_RPC_OK);
    d = next_of_kind('m', rkey, sizeof(rkey));
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
    ASSERT_EQ(call(&im__v1__message__descriptor, SYNC, &req.base, &resp, msg, sizeof(msg)),
              IM_RPC_OK);
    return (Im__V1__SyncResponse *)resp;
}

TEST(sync_after_offline_returns_exactly_the_missed_messages_in_order)
{
    uint64_t a = new_user("syn"), b = new_user("syn"), owner = new_user("syn");
    uint64_t g = new_group(owner), seqs[8], gseqs[3];
    Im__V1__SendResponse *r;
    Im__V1__SyncResponse *s;
    char msg[256], cid[16], conv[48], gconv[32];

    join(b, g);
    for (int i = 0; i < 8; i++) {
        snprintf(cid, sizeof(cid), "s-%d", i);
        ASSERT_EQ(send_msg(a, b, 0, cid, cid, &r, msg, sizeof(msg)), IM_RPC_OK);
        seqs[i] = r->seq;
        snprintf(conv, sizeof(conv), "%s", r->conv);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(cid, sizeof(cid), "g-%d", i);
        ASSERT_EQ(send_msg(owner, 0, g, cid, cid, &r, msg, sizeof(msg)), IM_RPC_OK);
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
    s = sync_call(new_user("syn"), NULL, 0, 0);
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
    return call(&im__v1__message__descriptor, HISTORY, &req.base, (ProtobufCMessage **)out, msg,
                msglen);
}

TEST(history_pages_backwards_and_only_for_participants)
{
    uint64_t a = new_user("his"), b = new_user("his"), eve = new_user("his");
    uint64_t owner = new_user("his"), g = new_group(owner), seqs[5];
    Im__V1__HistoryResponse *h;
    Im__V1__SendResponse *r;
    char msg[256], cid[16], conv[48], gconv[32];

    for (int i = 0; i < 5; i++) {
        snprintf(cid, sizeof(cid), "h-%d", i);
        ASSERT_EQ(send_msg(a, b, 0, cid, cid, &r, msg, sizeof(msg)), IM_RPC_OK);
        seqs[i] = r->seq;
        snprintf(conv, sizeof(conv), "%s", r->conv);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    ASSERT_EQ(rows_with_id(0, 0), 0); /* (warms nothing; keeps helpers used) */
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
    ASSERT_TRUE(starts_with(msg, "not_participant: "));
    snprintf(gconv, sizeof(gconv), "g:%" PRIu64, g);
    ASSERT_EQ(history(eve, gconv, 0, 3, &h, msg, sizeof(msg)), IM_RPC_PERMISSION_DENIED);
    ASSERT_TRUE(starts_with(msg, "not_member: "));
    ASSERT_EQ(history(eve, "g:1", 0, 3, &h, msg, sizeof(msg)), IM_RPC_NOT_FOUND);
    ASSERT_EQ(history(eve, "d:9:3", 0, 3, &h, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(starts_with(msg, "bad_conv: "));
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
    ASSERT_EQ(call(&im__v1__message__descriptor, MARK_READ, &req.base, &resp, msg, sizeof(msg)),
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
    ASSERT_EQ(call(&im__v1__message__descriptor, CONVERSATIONS, &req.base, &resp, msg,
                   sizeof(msg)),
              IM_RPC_OK);
    return (Im__V1__ConversationsResponse *)resp;
}

TEST(mark_read_never_goes_back_tells_the_peer_and_counts_unread)
{
    uint64_t a = new_user("rd"), b = new_user("rd"), seqs[5];
    Im__V1__ConversationsResponse *cr;
    const Im__V1__Conversation *c;
    Im__V1__SendResponse *r;
    Im__V1__Delivery *d;
    char msg[256], cid[16], conv[48], rkey[256];

    for (int i = 0; i < 5; i++) {
        snprintf(cid, sizeof(cid), "r-%d", i);
        ASSERT_EQ(send_msg(a, b, 0, cid, cid, &r, msg, sizeof(msg)), IM_RPC_OK);
        seqs[i] = r->seq;
        snprintf(conv, sizeof(conv), "%s", r->conv);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    ASSERT_EQ(rows_with_id(0, 0), 0);
    online(a, gw_a, "a1");
    while ((d = next_delivery(NULL, 0)) != NULL) /* (nothing: a came online after) */
        protobuf_c_message_free_unpacked(&d->base, NULL);
    ASSERT_U64_EQ(mark_read(b, conv, seqs[2]), seqs[2]);
    d = next_of_kind('r', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL && d->receipt != NULL && d->message == NULL);
    ASSERT_STR_EQ(rkey + 3, gw_a);
    ASSERT_STR_EQ(d->receipt->conv, conv);
    ASSERT_U64_EQ(d->receipt->user_id, b);
    ASSERT_U64_EQ(d->receipt->read_seq, seqs[2]);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    /* Lower marks change nothing and tell nobody. */
    ASSERT_U64_EQ(mark_read(b, conv, seqs[0]), seqs[2]);
    ASSERT_TRUE(next_of_kind('r', NULL, 0) == NULL);
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
        req.user_id = new_user("rd");
        req.conv = conv;
        req.seq = 1;
        ASSERT_EQ(call(&im__v1__message__descriptor, MARK_READ, &req.base, &resp, msg,
                       sizeof(msg)),
                  IM_RPC_PERMISSION_DENIED);
    }
}

TEST(typing_presence_and_group_events_reach_online_users)
{
    uint64_t a = new_user("ntf"), b = new_user("ntf"), eve = new_user("ntf");
    Im__V1__TypingRequest treq = IM__V1__TYPING_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    Im__V1__Delivery *d;
    char msg[256], rkey[256];
    uint64_t g;

    /* a and b have a direct chat; a is online on gateway A. */
    ASSERT_EQ(send_msg(a, b, 0, "n-1", "hi", NULL, msg, sizeof(msg)), IM_RPC_OK);
    for (int i = 0; i < 100; i++) { /* user_convs is written with the message */
        Im__V1__ConversationsResponse *cr = conversations(a);
        size_t n = cr->n_conversations;
        protobuf_c_message_free_unpacked(&cr->base, NULL);
        if (n > 0)
            break;
        it_sleep_ms(50);
    }
    online(a, gw_a, "a1");
    /* b typing to a. */
    treq.user_id = b;
    treq.to_user = a;
    ASSERT_EQ(call(&im__v1__message__descriptor, TYPING, &treq.base, &resp, msg, sizeof(msg)),
              IM_RPC_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
    d = next_of_kind('t', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL);
    ASSERT_U64_EQ(d->typing->user_id, b);
    ASSERT_EQ(d->n_user_ids, 1);
    ASSERT_U64_EQ(d->user_ids[0], a);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    /* b's first session: a hears b is online; b's last going: offline. */
    online(b, gw_b, "b1");
    d = next_of_kind('p', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL);
    ASSERT_U64_EQ(d->presence->user_id, b);
    ASSERT_TRUE(d->presence->online);
    ASSERT_STR_EQ(rkey + 3, gw_a);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    protobuf_c_message_free_unpacked(&session(OFFLINE, b, gw_b, "b1", IM_RPC_OK)->base, NULL);
    d = next_of_kind('p', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL);
    if (d->presence->online)
        fprintf(stderr, "presence of %" PRIu64 " (a %" PRIu64 ", b %" PRIu64 ") online via %s\n",
                d->presence->user_id, a, b, rkey);
    ASSERT_TRUE(!d->presence->online);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    /* a joins a group: a's gateway hears of it. */
    g = new_group(eve);
    d = next_of_kind('g', rkey, sizeof(rkey)); /* eve is not online: nothing for her */
    ASSERT_TRUE(d == NULL);
    join(a, g);
    d = next_of_kind('g', rkey, sizeof(rkey));
    ASSERT_TRUE(d != NULL);
    ASSERT_U64_EQ(d->group_event->group_id, g);
    ASSERT_U64_EQ(d->group_event->user_id, a);
    ASSERT_TRUE(d->group_event->joined);
    ASSERT_STR_EQ(rkey + 3, gw_a);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    /* Typing into a group one is not in is refused. */
    treq.to_user = 0;
    treq.to_group = g;
    ASSERT_EQ(call(&im__v1__message__descriptor, TYPING, &treq.base, &resp, msg, sizeof(msg)),
              IM_RPC_PERMISSION_DENIED);
    protobuf_c_message_free_unpacked(&session(OFFLINE, a, gw_a, "a1", IM_RPC_OK)->base, NULL);
    while ((d = next_delivery(NULL, 0)) != NULL)
        protobuf_c_message_free_unpacked(&d->base, NULL);
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
    uint64_t a = new_user("k9"), b = new_user("k9");
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
    char key[64];
    im_amqp_queue_opts_t q = {.exclusive = true, .auto_delete = true};
    int rc;

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
    snprintf(gw_a, sizeof(gw_a), "it11-a-%d", (int)getpid());
    snprintf(gw_b, sizeof(gw_b), "it11-b-%d", (int)getpid());
    snprintf(fanout_queue, sizeof(fanout_queue), "it11.fanout.%d", (int)getpid());
    q.name = fanout_queue;
    if (im_amqp_declare_exchange(amqp, EXCHANGE, "direct", true) != IM_OK ||
        im_amqp_declare_queue(amqp, &q, NULL, 0, NULL) != IM_OK)
        return 1;
    snprintf(key, sizeof(key), "gw.%s", gw_a);
    im_amqp_bind(amqp, fanout_queue, EXCHANGE, key);
    snprintf(key, sizeof(key), "gw.%s", gw_b);
    im_amqp_bind(amqp, fanout_queue, EXCHANGE, key);
    if (im_amqp_consume(amqp, fanout_queue, 0, true) != IM_OK)
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
    if (!it_logic_stop(&lg)) {
        fprintf(stderr, "FAIL logic did not exit cleanly on SIGTERM\n");
        return 1;
    }
    im_mysql_close(db);
    im_redis_close(redis);
    im_amqp_close(amqp);
    rc = im_test_done();
    if (rc == 0)
        unlink(lg.log_path);
    else
        fprintf(stderr, "logic's log: %s\n", lg.log_path);
    return rc;
}
