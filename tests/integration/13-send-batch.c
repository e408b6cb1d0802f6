/*
 * 13-send-batch: Message.SendBatch of the real logic binary on real
 * RabbitMQ, MariaDB and Redis.  Each send of a batch is judged as Send
 * would judge it (same code and message), a conversation's sends get
 * consecutive seqs in batch order and are stored once each, a client
 * message id twice in one batch is accepted once, retries are duplicates,
 * the size limit holds, and the live deliveries for one gateway travel as
 * one AMQP message whose Delivery.batch keeps the seq order, also across
 * concurrent batches of very different sizes.
 *
 * The test plays the gateways, as 11-message does: it registers sessions
 * with Session.Online and binds its own queue to the fan-out exchange for
 * "gw.<its gateway ids>".
 *
 * Usage (ctest passes it): test_13_send_batch <logic binary>
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

#define BATCH_MAX  1000         /* LG_SEND_BATCH_MAX */
#define UNKNOWN_ID (1ull << 62) /* no user or group has it */
#define ORIGIN     "it13-origin/7"

static it_logic_t lg = {.tag = "it13"};
static im_mysql_t *db;
static im_redis_t *redis;
static im_amqp_conn_t *amqp;
static it_fanout_t fan;

/* Method numbers, in proto/im.proto order. */
enum { SEND, SEND_BATCH = 6 };

/* ------------------------------------------------------------ batches */

/* A SendBatchRequest under construction: its sends own copies of their
 * client message ids and bodies. */
typedef struct {
    Im__V1__SendRequest *reqs;
    Im__V1__SendRequest **ptrs;
    char (*cids)[72];
    char **bodies;
    size_t n, cap;
} batch_t;

static batch_t *batch_new(size_t cap)
{
    batch_t *b = calloc(1, sizeof(*b));

    b->reqs = calloc(cap ? cap : 1, sizeof(*b->reqs));
    b->ptrs = calloc(cap ? cap : 1, sizeof(*b->ptrs));
    b->cids = calloc(cap ? cap : 1, sizeof(*b->cids));
    b->bodies = calloc(cap ? cap : 1, sizeof(*b->bodies));
    b->cap = cap;
    return b;
}

static void batch_free(batch_t *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->n; i++)
        free(b->bodies[i]);
    free(b->bodies);
    free(b->cids);
    free(b->ptrs);
    free(b->reqs);
    free(b);
}

/* Appends a send; body NULL means "the cid". */
static Im__V1__SendRequest *batch_add(batch_t *b, uint64_t from, uint64_t to_user,
                                      uint64_t to_group, const char *cid, const char *body)
{
    Im__V1__SendRequest *r;

    if (b->n == b->cap)
        IM__FAIL("batch full at %zu", b->cap);
    r = &b->reqs[b->n];
    im__v1__send_request__init(r);
    snprintf(b->cids[b->n], sizeof(b->cids[b->n]), "%s", cid);
    b->bodies[b->n] = strdup(body != NULL ? body : cid);
    r->sender = from;
    r->to_user = to_user;
    r->to_group = to_group;
    r->client_msg_id = b->cids[b->n];
    r->body = b->bodies[b->n];
    r->origin_session = ORIGIN;
    b->ptrs[b->n] = r;
    b->n++;
    return r;
}

static void batch_request(const batch_t *b, Im__V1__SendBatchRequest *req)
{
    im__v1__send_batch_request__init(req);
    req->sends = b->ptrs;
    req->n_sends = b->n;
}

/* The SendBatch call; *out gets the response (to free) when OK. */
static im_rpc_code_t send_batch(const batch_t *b, Im__V1__SendBatchResponse **out, char *msg,
                                size_t msglen)
{
    Im__V1__SendBatchRequest req;
    ProtobufCMessage *resp = NULL;
    im_rpc_code_t code;

    batch_request(b, &req);
    code =
        it_logic_call(&lg, &im__v1__message__descriptor, SEND_BATCH, &req.base, &resp, msg, msglen);
    *out = (Im__V1__SendBatchResponse *)resp;
    return code;
}

/* SendBatch that must succeed with one result per send. */
static Im__V1__SendBatchResponse *send_batch_ok(const batch_t *b)
{
    Im__V1__SendBatchResponse *r = NULL;
    char msg[256] = "";
    im_rpc_code_t code = send_batch(b, &r, msg, sizeof(msg));

    if (code != IM_RPC_OK)
        IM__FAIL("SendBatch of %zu: code %d: %s", b->n, (int)code, msg);
    ASSERT_EQ(r->n_results, b->n);
    return r;
}

/* A plain Send of req; *out (may be NULL) gets the response to free. */
static im_rpc_code_t send_one(const Im__V1__SendRequest *req, Im__V1__SendResponse **out, char *msg,
                              size_t msglen)
{
    ProtobufCMessage *resp = NULL;
    im_rpc_code_t code =
        it_logic_call(&lg, &im__v1__message__descriptor, SEND, &req->base, &resp, msg, msglen);

    if (out != NULL)
        *out = (Im__V1__SendResponse *)resp;
    else if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

/* A Send from a to b with cid as its client message id and body, which must
 * be accepted; its response (free it). */
static Im__V1__SendResponse *send_direct_ok(uint64_t a, uint64_t b, const char *cid)
{
    Im__V1__SendRequest one = IM__V1__SEND_REQUEST__INIT;
    Im__V1__SendResponse *resp = NULL;
    char msg[256];

    one.sender = a;
    one.to_user = b;
    one.client_msg_id = (char *)cid;
    one.body = (char *)cid;
    if (send_one(&one, &resp, msg, sizeof(msg)) != IM_RPC_OK)
        IM__FAIL("send %s: %s", cid, msg);
    return resp;
}

/* Result i was accepted (not as a duplicate); returns its response. */
static const Im__V1__SendResponse *accepted(const Im__V1__SendBatchResponse *r, size_t i)
{
    const Im__V1__SendResult *res = r->results[i];

    if (res->code != IM_RPC_OK)
        IM__FAIL("result %zu: code %u: %s", i, res->code, res->error);
    ASSERT_NOT_NULL(res->response);
    ASSERT_NE(res->response->id, 0);
    ASSERT_GE(res->response->seq, 1);
    ASSERT_GT(res->response->created_at_ms, 0);
    if (res->response->duplicate)
        IM__FAIL("result %zu: a duplicate", i);
    return res->response;
}

/* Result i was refused with code and an error starting with prefix. */
static void refused(const Im__V1__SendBatchResponse *r, size_t i, im_rpc_code_t code,
                    const char *prefix)
{
    const Im__V1__SendResult *res = r->results[i];

    if (res->code != (uint32_t)code || !it_starts_with(res->error, prefix))
        IM__FAIL("result %zu: code %u \"%s\", want %d \"%s...\"", i, res->code,
                 res->error ? res->error : "(null)", (int)code, prefix);
    ASSERT_NULL(res->response);
}

/* ------------------------------------------------------------ storage */

/* Rows of conv, waiting up to 10 s for at least `want` (0: now). */
static uint64_t rows_in_conv(const char *conv, uint64_t want)
{
    im_mysql_stmt_t *st = NULL;
    uint64_t n = 0;

    ASSERT_EQ(im_mysql_prepare(db, "SELECT COUNT(*) FROM messages WHERE conv_id = ?", &st), IM_OK);
    for (int i = 0; i < 200; i++) {
        im_mysql_bind_str(st, 0, conv, strlen(conv));
        ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
        ASSERT_EQ(im_mysql_stmt_next(st), IM_OK);
        n = im_mysql_col_u64(st, 0);
        if (n >= want)
            break;
        it_sleep_ms(50);
    }
    im_mysql_stmt_free(st);
    return n;
}

/* ------------------------------------------------------------ deliveries */

/* Checks that d is a batch for the routing key "gw.<gw>" holding, in order,
 * the messages with ids want[0..n), each for the users want_users[i]
 * (0-terminated, at most 2). */
static void check_batch(const Im__V1__Delivery *d, const char *rkey, const char *gw,
                        const uint64_t *want, const uint64_t (*want_users)[3], size_t n)
{
    ASSERT_STR_EQ(rkey + 3, gw);
    ASSERT_NULL(d->message);
    ASSERT_EQ(d->n_user_ids, 0);
    if (d->n_batch != n)
        IM__FAIL("delivery to %s carries %zu, want %zu", rkey, d->n_batch, n);
    for (size_t i = 0; i < n; i++) {
        const Im__V1__Delivery *e = d->batch[i];
        size_t nu = 0;

        while (nu < 2 && want_users[i][nu] != 0)
            nu++;
        ASSERT_NOT_NULL(e->message);
        ASSERT_EQ(e->n_batch, 0);
        if (e->message->id != want[i])
            IM__FAIL("%s: entry %zu is message %" PRIu64 ", want %" PRIu64, rkey, i, e->message->id,
                     want[i]);
        ASSERT_STR_EQ(e->origin_session, ORIGIN);
        ASSERT_EQ(e->n_user_ids, nu);
        for (size_t u = 0; u < nu; u++) {
            bool found = false;

            for (size_t k = 0; k < e->n_user_ids; k++)
                found |= e->user_ids[k] == want_users[i][u];
            if (!found)
                IM__FAIL("%s: entry %zu is not for user %" PRIu64, rkey, i, want_users[i][u]);
        }
    }
}

/* ------------------------------------------------------------ tests */

/* (f) */
TEST(empty_batch_gets_no_results)
{
    batch_t *b = batch_new(0);
    Im__V1__SendBatchResponse *r = send_batch_ok(b);

    ASSERT_EQ(r->n_results, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    batch_free(b);
}

/* (a) Every send of a batch is judged on its own: the refused ones get the
 * code and message a Send of the same request gets, the others are accepted
 * and stored, and a refusal claims nothing. */
TEST(mixed_batch_answers_each_send_as_send_would)
{
    uint64_t a = it_new_user(&lg, "mix"), b = it_new_user(&lg, "mix"),
             eve = it_new_user(&lg, "mix");
    uint64_t gone = it_new_user(&lg, "mix"), g = it_new_group(&lg, a);
    batch_t *bt = batch_new(16);
    Im__V1__SendBatchResponse *r;
    const Im__V1__SendResponse *ok_direct, *ok_group;
    char conv[48], gconv[32], msg[256];
    static const struct {
        size_t index;
        im_rpc_code_t code;
        const char *prefix;
    } refusals[] = {
        {1, IM_RPC_INVALID_ARGUMENT, "empty_body: "},
        {2, IM_RPC_INVALID_ARGUMENT, "bad_utf8: "},
        {3, IM_RPC_NOT_FOUND, "unknown_user: "},
        {5, IM_RPC_PERMISSION_DENIED, "not_member: "},
        {6, IM_RPC_INVALID_ARGUMENT, "bad_client_msg_id: "},
        {7, IM_RPC_INVALID_ARGUMENT, "bad_target: "},
        {8, IM_RPC_NOT_FOUND, "unknown_group: "},
        {9, IM_RPC_INVALID_ARGUMENT, "body_too_large: "},
        {10, IM_RPC_INVALID_ARGUMENT, "bad_sender: "},
        {12, IM_RPC_PERMISSION_DENIED, "user_deleted: "},
    };
    char big[5000];

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    batch_add(bt, a, b, 0, "mx-0", "hello b");                 /* 0 ok */
    batch_add(bt, a, b, 0, "mx-1", "");                        /* 1 */
    batch_add(bt, a, b, 0, "mx-2", "bad \xc3\x28 utf8");       /* 2 */
    batch_add(bt, a, UNKNOWN_ID, 0, "mx-3", "nobody");         /* 3 */
    batch_add(bt, a, 0, g, "mx-4", "hello group");             /* 4 ok */
    batch_add(bt, eve, 0, g, "mx-5", "let me in");             /* 5 */
    batch_add(bt, a, b, 0, "mx 6", "space in the cid");        /* 6 */
    batch_add(bt, a, 0, 0, "mx-7", "to nobody");               /* 7 */
    batch_add(bt, a, 0, UNKNOWN_ID, "mx-8", "no such group");  /* 8 */
    batch_add(bt, a, b, 0, "mx-9", big);                       /* 9 */
    batch_add(bt, 0, b, 0, "mx-10", "from nobody");            /* 10 */
    batch_add(bt, b, a, 0, "mx-11", "hello a");                /* 11 ok */
    batch_add(bt, gone, a, 0, "mx-12", "from a deleted user"); /* 12 */
    it_delete_account(&lg, gone);
    r = send_batch_ok(bt);
    ok_direct = accepted(r, 0);
    ok_group = accepted(r, 4);
    it_direct_conv(conv, sizeof(conv), a, b);
    snprintf(gconv, sizeof(gconv), "g:%" PRIu64, g);
    ASSERT_STR_EQ(ok_direct->conv, conv);
    ASSERT_STR_EQ(ok_group->conv, gconv);
    ASSERT_STR_EQ(accepted(r, 11)->conv, conv);
    ASSERT_GT(accepted(r, 11)->seq, ok_direct->seq);
    ASSERT_NE(ok_direct->id, ok_group->id);
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
        size_t k = refusals[i].index;
        im_rpc_code_t code;

        refused(r, k, refusals[i].code, refusals[i].prefix);
        /* A Send of the very same request: the same code and message. */
        code = send_one(bt->ptrs[k], NULL, msg, sizeof(msg));
        if ((uint32_t)code != r->results[k]->code || strcmp(msg, r->results[k]->error) != 0)
            IM__FAIL("send %zu: Send says %d \"%s\", SendBatch said %u \"%s\"", k, (int)code, msg,
                     r->results[k]->code, r->results[k]->error);
    }
    ASSERT_EQ(it_rows_with_id(db, ok_direct->id, 1), 1);
    ASSERT_EQ(it_rows_with_id(db, ok_group->id, 1), 1);
    ASSERT_EQ(it_rows_with_id(db, accepted(r, 11)->id, 1), 1);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* The refused sends claimed nothing: their ids are free for a good send. */
    {
        Im__V1__SendRequest fixed = *bt->ptrs[1];
        Im__V1__SendResponse *sr = NULL;

        fixed.body = "not empty now";
        ASSERT_EQ(send_one(&fixed, &sr, msg, sizeof(msg)), IM_RPC_OK);
        ASSERT_TRUE(!sr->duplicate);
        protobuf_c_message_free_unpacked(&sr->base, NULL);
    }
    batch_free(bt);
}

#define ORDER_SENDS 40

/* (b), (d) Sends of one conversation, both directions, mixed with another
 * conversation's: consecutive seqs in batch order that continue the
 * conversation's, one row each in that order; then retries, by Send and
 * by SendBatch, even with the Redis record gone, are the same messages. */
TEST(one_conversation_gets_consecutive_seqs_in_batch_order_and_one_row_each)
{
    uint64_t a = it_new_user(&lg, "ord"), b = it_new_user(&lg, "ord"), c = it_new_user(&lg, "ord");
    batch_t *bt = batch_new(ORDER_SENDS);
    Im__V1__SendBatchResponse *r, *again;
    Im__V1__SendResponse *first, *dup;
    uint64_t ids[ORDER_SENDS], seqs[ORDER_SENDS], last_ab, last_ac = 0;
    char ab[48], ac[48], cid[32], msg[256];
    size_t n_ab = 1, n_ac = 0;
    im_mysql_stmt_t *st = NULL;
    char *window;

    it_direct_conv(ab, sizeof(ab), a, b);
    it_direct_conv(ac, sizeof(ac), a, c);
    {
        Im__V1__SendRequest one = IM__V1__SEND_REQUEST__INIT;

        one.sender = a;
        one.to_user = b;
        one.client_msg_id = "ord-first";
        one.body = "ord-first";
        ASSERT_EQ(send_one(&one, &first, msg, sizeof(msg)), IM_RPC_OK);
        last_ab = first->seq;
    }
    for (size_t i = 0; i < ORDER_SENDS; i++) {
        snprintf(cid, sizeof(cid), "ord-%zu", i);
        if (i % 4 == 0)
            batch_add(bt, b, a, 0, cid, NULL);
        else if (i % 4 == 3)
            batch_add(bt, a, c, 0, cid, NULL);
        else
            batch_add(bt, a, b, 0, cid, NULL);
    }
    r = send_batch_ok(bt);
    for (size_t i = 0; i < ORDER_SENDS; i++) {
        const Im__V1__SendResponse *res = accepted(r, i);
        bool in_ac = i % 4 == 3;
        uint64_t *last = in_ac ? &last_ac : &last_ab;

        ASSERT_STR_EQ(res->conv, in_ac ? ac : ab);
        if (res->seq != *last + 1)
            IM__FAIL("send %zu in %s: seq %" PRIu64 " after %" PRIu64, i, res->conv, res->seq,
                     *last);
        *last = res->seq;
        ids[i] = res->id;
        seqs[i] = res->seq;
        n_ab += !in_ac;
        n_ac += in_ac;
    }
    ASSERT_U64_EQ(last_ac, n_ac); /* a new conversation starts at 1 */
    /* Stored once each, in batch order. */
    ASSERT_EQ(rows_in_conv(ab, n_ab), n_ab);
    ASSERT_EQ(rows_in_conv(ac, n_ac), n_ac);
    it_sleep_ms(100); /* a second row would show by now */
    ASSERT_EQ(rows_in_conv(ab, 0), n_ab);
    ASSERT_EQ(im_mysql_prepare(db,
                               "SELECT id, seq, sender_id, client_msg_id, body FROM messages "
                               "WHERE conv_id = ? OR conv_id = ? ORDER BY conv_id = ?, seq",
                               &st),
              IM_OK);
    im_mysql_bind_str(st, 0, ab, strlen(ab));
    im_mysql_bind_str(st, 1, ac, strlen(ac));
    im_mysql_bind_str(st, 2, ac, strlen(ac));
    ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
    ASSERT_EQ(im_mysql_stmt_next(st), IM_OK); /* ab's first: the plain Send */
    ASSERT_U64_EQ(im_mysql_col_u64(st, 0), first->id);
    for (int pass = 0; pass < 2; pass++) /* ab's, then ac's, in batch order */
        for (size_t i = 0; i < ORDER_SENDS; i++) {
            if ((i % 4 == 3) != (pass == 1))
                continue;
            ASSERT_EQ(im_mysql_stmt_next(st), IM_OK);
            ASSERT_U64_EQ(im_mysql_col_u64(st, 0), ids[i]);
            ASSERT_U64_EQ(im_mysql_col_u64(st, 1), seqs[i]);
            ASSERT_U64_EQ(im_mysql_col_u64(st, 2), bt->reqs[i].sender);
            ASSERT_STR_EQ(im_mysql_col_str(st, 3, NULL), bt->cids[i]);
            ASSERT_STR_EQ(im_mysql_col_str(st, 4, NULL), bt->bodies[i]);
        }
    ASSERT_EQ(im_mysql_stmt_next(st), IM_ENOENT);
    im_mysql_stmt_free(st);

    /* (d) A plain Send retrying one of them: the original message. */
    ASSERT_EQ(send_one(bt->ptrs[5], &dup, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_TRUE(dup->duplicate);
    ASSERT_U64_EQ(dup->id, ids[5]);
    ASSERT_U64_EQ(dup->seq, seqs[5]);
    ASSERT_STR_EQ(dup->conv, ab);
    protobuf_c_message_free_unpacked(&dup->base, NULL);
    /* The whole batch again, two records lost in Redis on the way: all
     * duplicates of the originals, found in Redis or in the table. */
    window = it_dedup_window_force(redis);
    ASSERT_EQ(im_redis_command(redis, NULL, "DEL im:dedup:%" PRIu64 ":ord-6", a), IM_OK);
    ASSERT_EQ(im_redis_command(redis, NULL, "DEL im:dedup:%" PRIu64 ":ord-8", b), IM_OK);
    again = send_batch_ok(bt);
    it_dedup_window_restore(redis, window);
    for (size_t i = 0; i < ORDER_SENDS; i++) {
        const Im__V1__SendResult *res = again->results[i];

        if (res->code != IM_RPC_OK)
            IM__FAIL("retry %zu: code %u: %s", i, res->code, res->error);
        ASSERT_TRUE(res->response->duplicate);
        ASSERT_U64_EQ(res->response->id, ids[i]);
        ASSERT_U64_EQ(res->response->seq, seqs[i]);
    }
    protobuf_c_message_free_unpacked(&again->base, NULL);
    it_sleep_ms(100);
    ASSERT_EQ(rows_in_conv(ab, 0), n_ab);
    ASSERT_EQ(rows_in_conv(ac, 0), n_ac);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    protobuf_c_message_free_unpacked(&first->base, NULL);
    batch_free(bt);
}

/* The common case claims a send's dedup key and takes its seq in one Redis
 * script (the dedup window closed).  A conversation whose seq lease runs out
 * in the middle of a batch, and one that has no seq hash yet, go on through
 * the slow path: still consecutive seqs in batch order, one row each, and a
 * final dedup record (not "sending") for each once acked. */
TEST(lease_running_out_mid_batch_keeps_seqs_consecutive)
{
    uint64_t a = it_new_user(&lg, "lse"), b = it_new_user(&lg, "lse"), c = it_new_user(&lg, "lse");
    batch_t *bt = batch_new(8);
    Im__V1__SendBatchResponse *r;
    Im__V1__SendResponse *first;
    char ab[48], ac[48], cid[32], msg[256], *window = it_dedup_window_set(redis, 0);
    uint64_t next_ab, next_ac = 1;
    im_redis_reply_t *rep = NULL;

    it_direct_conv(ab, sizeof(ab), a, b);
    it_direct_conv(ac, sizeof(ac), a, c);
    first = send_direct_ok(a, b, "lse-first");
    next_ab = first->seq + 1;
    /* Two seqs left in ab's lease. */
    ASSERT_EQ(im_redis_command(redis, NULL, "HSET im:seq:%s c %" PRIu64, ab, first->seq + 2),
              IM_OK);
    for (int i = 0; i < 8; i++) {
        snprintf(cid, sizeof(cid), "lse-%d", i);
        batch_add(bt, a, i % 4 == 1 ? c : b, 0, cid, NULL);
    }
    r = send_batch_ok(bt);
    for (size_t i = 0; i < 8; i++) {
        const Im__V1__SendResponse *res = accepted(r, i);
        uint64_t *next = i % 4 == 1 ? &next_ac : &next_ab;
        const char *v;

        ASSERT_STR_EQ(res->conv, i % 4 == 1 ? ac : ab);
        if (res->seq != *next)
            IM__FAIL("send %zu in %s: seq %" PRIu64 ", want %" PRIu64, i, res->conv, res->seq,
                     *next);
        (*next)++;
        ASSERT_EQ(im_redis_command(redis, &rep, "GET im:dedup:%" PRIu64 ":%s", a, bt->cids[i]),
                  IM_OK);
        v = im_redis_reply_str(rep, NULL);
        ASSERT_NOT_NULL(v);
        snprintf(msg, sizeof(msg), "%" PRIu64 " %s %" PRIu64 " %" PRId64, res->id, res->conv,
                 res->seq, res->created_at_ms);
        ASSERT_STR_EQ(v, msg);
        im_redis_reply_free(rep);
        rep = NULL;
    }
    ASSERT_EQ(rows_in_conv(ab, next_ab - first->seq), next_ab - first->seq);
    ASSERT_EQ(rows_in_conv(ac, 2), 2);
    it_sleep_ms(100); /* a second row would show by now */
    ASSERT_EQ(rows_in_conv(ab, 0), next_ab - first->seq);
    ASSERT_EQ(rows_in_conv(ac, 0), 2);
    it_dedup_window_restore(redis, window);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    protobuf_c_message_free_unpacked(&first->base, NULL);
    batch_free(bt);
}

/* conv's reserved_upto, waiting up to 5 s for it to differ from old (0: now). */
static uint64_t reserved_upto(const char *conv, uint64_t old)
{
    im_mysql_stmt_t *st = NULL;
    uint64_t v = 0;

    ASSERT_EQ(
        im_mysql_prepare(db, "SELECT reserved_upto FROM conv_seq_reserve WHERE conv_id = ?", &st),
        IM_OK);
    for (int i = 0; i < 100; i++) {
        im_mysql_bind_str(st, 0, conv, strlen(conv));
        ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
        ASSERT_EQ(im_mysql_stmt_next(st), IM_OK);
        v = im_mysql_col_u64(st, 0);
        while (im_mysql_stmt_next(st) == IM_OK)
            ;
        if (old == 0 || v != old)
            break;
        it_sleep_ms(50);
    }
    im_mysql_stmt_free(st);
    return v;
}

static uint64_t seq_field(const char *conv, const char *field)
{
    im_redis_reply_t *rep = NULL;
    uint64_t v = 0;

    ASSERT_EQ(im_redis_command(redis, &rep, "HGET im:seq:%s %s", conv, field), IM_OK);
    ASSERT_EQ(im_redis_reply_u64(rep, &v), IM_OK);
    im_redis_reply_free(rep);
    return v;
}

/* Sends n messages a -> b in one batch (cids "<prefix>-<i>") and checks their
 * seqs are *next, *next + 1, ... */
static void send_consecutive(uint64_t a, uint64_t b, const char *prefix, size_t n, uint64_t *next)
{
    batch_t *bt = batch_new(n);
    Im__V1__SendBatchResponse *r;
    char cid[48];

    for (size_t i = 0; i < n; i++) {
        snprintf(cid, sizeof(cid), "%s-%zu", prefix, i);
        batch_add(bt, a, b, 0, cid, NULL);
    }
    r = send_batch_ok(bt);
    for (size_t i = 0; i < n; i++) {
        const Im__V1__SendResponse *res = accepted(r, i);

        if (res->seq != *next)
            IM__FAIL("%s %zu: seq %" PRIu64 ", want %" PRIu64, prefix, i, res->seq, *next);
        (*next)++;
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    batch_free(bt);
}

/* A lease that runs low in the claim script (fewer than half a step left) is
 * renewed by the worker after the batch, before it runs out: the next step is
 * reserved in MariaDB and the ceiling raised, and later sends go through the
 * old ceiling with no reserve of their own. */
TEST(a_low_lease_is_renewed_before_it_runs_out)
{
    uint64_t a = it_new_user(&lg, "lwl"), b = it_new_user(&lg, "lwl"), next, d0, d1;
    Im__V1__SendResponse *first;
    char ab[48], *window = it_dedup_window_set(redis, 0);

    it_direct_conv(ab, sizeof(ab), a, b);
    first = send_direct_ok(a, b, "lwl-first");
    next = first->seq + 1;
    d0 = reserved_upto(ab, 0);
    /* Six seqs left in the lease: low. */
    ASSERT_EQ(im_redis_command(redis, NULL, "HSET im:seq:%s c %" PRIu64, ab, first->seq + 6),
              IM_OK);
    send_consecutive(a, b, "lwl-1", 2, &next);
    d1 = reserved_upto(ab, d0);
    ASSERT_GT(d1, d0);
    ASSERT_U64_EQ(seq_field(ab, "p"), first->seq + 6); /* the renewal was asked once */
    for (int i = 0; i < 100 && seq_field(ab, "c") != d1; i++)
        it_sleep_ms(50);
    ASSERT_U64_EQ(seq_field(ab, "c"), d1);
    /* Through the old ceiling: consecutive, and no reserve (it would move d1). */
    send_consecutive(a, b, "lwl-2", 8, &next);
    ASSERT_U64_EQ(reserved_upto(ab, 0), d1);
    ASSERT_EQ(rows_in_conv(ab, next - first->seq), next - first->seq);
    it_dedup_window_restore(redis, window);
    protobuf_c_message_free_unpacked(&first->base, NULL);
}

/* A dedup key that is not a string (written by something else): its send is
 * refused INTERNAL, and the claim script goes on, so the sends before and after
 * it in the batch keep their seqs and no seq is handed out twice. */
TEST(a_broken_dedup_key_fails_its_send_only)
{
    uint64_t a = it_new_user(&lg, "bdk"), b = it_new_user(&lg, "bdk");
    batch_t *bt = batch_new(3);
    Im__V1__SendBatchResponse *r;
    Im__V1__SendResponse *first, *next;
    Im__V1__SendRequest one = IM__V1__SEND_REQUEST__INIT;
    char msg[256], *window = it_dedup_window_set(redis, 0);

    one.sender = a;
    one.to_user = b;
    one.client_msg_id = "bdk-first";
    one.body = "bdk-first";
    ASSERT_EQ(send_one(&one, &first, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_EQ(im_redis_command(redis, NULL, "HSET im:dedup:%" PRIu64 ":bdk-broken x y", a), IM_OK);
    batch_add(bt, a, b, 0, "bdk-0", NULL);
    batch_add(bt, a, b, 0, "bdk-broken", NULL);
    batch_add(bt, a, b, 0, "bdk-2", NULL);
    r = send_batch_ok(bt);
    ASSERT_U64_EQ(accepted(r, 0)->seq, first->seq + 1);
    refused(r, 1, IM_RPC_INTERNAL, "internal");
    ASSERT_U64_EQ(accepted(r, 2)->seq, first->seq + 2);
    one.client_msg_id = "bdk-next";
    one.body = "bdk-next";
    ASSERT_EQ(send_one(&one, &next, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_U64_EQ(next->seq, first->seq + 3);
    ASSERT_EQ(im_redis_command(redis, NULL, "DEL im:dedup:%" PRIu64 ":bdk-broken", a), IM_OK);
    it_dedup_window_restore(redis, window);
    protobuf_c_message_free_unpacked(&next->base, NULL);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    protobuf_c_message_free_unpacked(&first->base, NULL);
    batch_free(bt);
}

/* (c) The same client message id twice in one batch: the first claims it
 * and is accepted, the second finds the claim pending and is told to retry
 * (ABORTED in_progress), as a concurrent Send would be.  Once recorded, both
 * occurrences are duplicates of the one message. */
TEST(same_client_msg_id_twice_in_one_batch)
{
    uint64_t a = it_new_user(&lg, "twice"), b = it_new_user(&lg, "twice");
    batch_t *bt = batch_new(4), *bt2 = batch_new(4);
    Im__V1__SendBatchResponse *r;
    const Im__V1__SendResponse *orig;
    uint64_t orig_id, orig_seq;
    im_mysql_stmt_t *st = NULL;

    batch_add(bt, a, b, 0, "tw-1", "first");
    batch_add(bt, a, b, 0, "tw-1", "second");
    batch_add(bt, a, b, 0, "tw-2", "other");
    r = send_batch_ok(bt);
    orig = accepted(r, 0);
    orig_id = orig->id;
    orig_seq = orig->seq;
    refused(r, 1, IM_RPC_ABORTED, "in_progress: ");
    ASSERT_EQ(accepted(r, 2)->seq, orig_seq + 1); /* the refused one took no seq */
    ASSERT_EQ(it_rows_with_id(db, orig_id, 1), 1);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    it_sleep_ms(100);
    ASSERT_EQ(im_mysql_prepare(db,
                               "SELECT COUNT(*), MIN(body) FROM messages "
                               "WHERE sender_id = ? AND client_msg_id = 'tw-1'",
                               &st),
              IM_OK);
    im_mysql_bind_u64(st, 0, a);
    ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
    ASSERT_EQ(im_mysql_stmt_next(st), IM_OK);
    ASSERT_U64_EQ(im_mysql_col_u64(st, 0), 1);
    ASSERT_STR_EQ(im_mysql_col_str(st, 1, NULL), "first");
    im_mysql_stmt_free(st);
    /* Recorded now: every occurrence is the original. */
    batch_add(bt2, a, b, 0, "tw-1", "third");
    batch_add(bt2, a, b, 0, "tw-1", "fourth");
    r = send_batch_ok(bt2);
    for (size_t i = 0; i < 2; i++) {
        ASSERT_EQ(r->results[i]->code, IM_RPC_OK);
        ASSERT_TRUE(r->results[i]->response->duplicate);
        ASSERT_U64_EQ(r->results[i]->response->id, orig_id);
        ASSERT_U64_EQ(r->results[i]->response->seq, orig_seq);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    batch_free(bt);
    batch_free(bt2);
}

/* (e) 1001 sends are refused as a whole and claim nothing; 1000 are all
 * accepted, with consecutive seqs, and stored. */
TEST(batch_size_limit)
{
    uint64_t a = it_new_user(&lg, "big"), b = it_new_user(&lg, "big");
    batch_t *bt = batch_new(BATCH_MAX + 1);
    Im__V1__SendBatchResponse *r = NULL;
    Im__V1__SendResponse *sr = NULL;
    char cid[32], conv[48], msg[256];
    uint64_t t0;

    for (size_t i = 0; i <= BATCH_MAX; i++) {
        snprintf(cid, sizeof(cid), "big-%zu", i);
        batch_add(bt, a, b, 0, cid, NULL);
    }
    ASSERT_EQ(send_batch(bt, &r, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_NULL(r);
    ASSERT_STR_EQ(msg, "batch_too_large: at most 1000 sends per call");
    ASSERT_EQ(send_one(bt->ptrs[BATCH_MAX], &sr, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_TRUE(!sr->duplicate); /* not claimed by the refused batch */
    ASSERT_U64_EQ(sr->seq, 1);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    bt->n = BATCH_MAX; /* the other 1000, the last one dropped */
    t0 = im_mono_ms();
    r = send_batch_ok(bt);
    printf("     1000 sends in one SendBatch: %" PRIu64 " ms\n", im_mono_ms() - t0);
    for (size_t i = 0; i < BATCH_MAX; i++)
        if (accepted(r, i)->seq != 2 + i)
            IM__FAIL("send %zu: seq %" PRIu64 ", want %zu", i, r->results[i]->response->seq, 2 + i);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    it_direct_conv(conv, sizeof(conv), a, b);
    ASSERT_EQ(rows_in_conv(conv, BATCH_MAX + 1), BATCH_MAX + 1);
    bt->n = BATCH_MAX + 1;
    batch_free(bt);
}

/* (g) Live delivery: the direct messages of a batch for one gateway are one
 * AMQP message whose Delivery.batch holds them in batch (= seq) order, each
 * with its own users; another gateway gets its own; a group's messages go
 * together to its key; a batch of one is a plain Delivery. */
TEST(deliveries_for_one_gateway_travel_as_one_batch_in_seq_order)
{
    uint64_t a = it_new_user(&lg, "live"), b = it_new_user(&lg, "live"),
             c = it_new_user(&lg, "live");
    uint64_t d = it_new_user(&lg, "live"), g;
    batch_t *bt = batch_new(8), *gb = batch_new(8), *one = batch_new(1);
    Im__V1__SendBatchResponse *r;
    Im__V1__Delivery *dl;
    uint64_t ids[8], ab_seq = 0, ac_seq = 0;
    char rkey[256], want_key[64];
    bool got_a = false, got_b = false;

    /* b and c on gateway A; d and a's other device on gateway B. */
    it_online(&lg, b, fan.gw_a, "b1");
    it_online(&lg, c, fan.gw_a, "c1");
    it_online(&lg, d, fan.gw_b, "d1");
    it_online(&lg, a, fan.gw_b, "a2");
    it_drain_deliveries(&fan, 300); /* presence and the like */
    batch_add(bt, a, b, 0, "lv-0", NULL);
    batch_add(bt, a, c, 0, "lv-1", NULL);
    batch_add(bt, a, b, 0, "lv-2", NULL);
    batch_add(bt, a, d, 0, "lv-3", NULL);
    batch_add(bt, a, c, 0, "lv-4", NULL);
    batch_add(bt, a, UNKNOWN_ID, 0, "lv-5", NULL); /* refused: delivered nowhere */
    r = send_batch_ok(bt);
    for (size_t i = 0; i < 5; i++) {
        const Im__V1__SendResponse *res = accepted(r, i);

        ids[i] = res->id;
        if (bt->reqs[i].to_user == b) {
            ASSERT_GT(res->seq, ab_seq);
            ab_seq = res->seq;
        } else if (bt->reqs[i].to_user == c) {
            ASSERT_GT(res->seq, ac_seq);
            ac_seq = res->seq;
        }
    }
    refused(r, 5, IM_RPC_NOT_FOUND, "unknown_user: ");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    for (int k = 0; k < 2; k++) {
        dl = it_next_of_kind(&fan, 3000, 'c', rkey, sizeof(rkey));
        ASSERT_NOT_NULL(dl);
        if (strcmp(rkey + 3, fan.gw_a) == 0) {
            const uint64_t want[] = {ids[0], ids[1], ids[2], ids[4]};
            const uint64_t users[][3] = {{b}, {c}, {b}, {c}};

            ASSERT_TRUE(!got_a);
            got_a = true;
            check_batch(dl, rkey, fan.gw_a, want, users, 4);
        } else {
            const uint64_t users[][3] = {{a}, {a}, {a}, {d, a}, {a}};

            ASSERT_TRUE(!got_b);
            got_b = true;
            check_batch(dl, rkey, fan.gw_b, ids, users, 5);
        }
        protobuf_c_message_free_unpacked(&dl->base, NULL);
    }
    /* One AMQP message per gateway, no more. */
    ASSERT_NULL(it_next_of_kind(&fan, 500, 'c', NULL, 0));

    /* A group's messages: one delivery to g.<id>, in seq order.  The direct
     * one in the same batch goes its own way. */
    g = it_new_group(&lg, a);
    it_join(&lg, b, g);
    snprintf(want_key, sizeof(want_key), "g.%" PRIu64, g);
    ASSERT_EQ(im_amqp_bind(amqp, fan.queue, IT_DELIVER_EXCHANGE, want_key), IM_OK);
    it_drain_deliveries(&fan, 300);
    batch_add(gb, a, 0, g, "lg-0", NULL);
    batch_add(gb, b, 0, g, "lg-1", NULL);
    batch_add(gb, a, b, 0, "lg-2", NULL);
    batch_add(gb, a, 0, g, "lg-3", NULL);
    r = send_batch_ok(gb);
    for (int k = 0; k < 3; k++) { /* g.<id>, fan.gw_a (b) and fan.gw_b (a's device) */
        dl = it_next_of_kind(&fan, 3000, 'c', rkey, sizeof(rkey));
        ASSERT_NOT_NULL(dl);
        if (strcmp(rkey, want_key) == 0) {
            ASSERT_EQ(dl->n_batch, 3);
            for (size_t i = 0; i < 3; i++) {
                const Im__V1__ChatMessage *m = dl->batch[i]->message;
                size_t at = i < 2 ? i : 3;

                ASSERT_NOT_NULL(m);
                ASSERT_U64_EQ(m->id, r->results[at]->response->id);
                ASSERT_U64_EQ(m->seq, r->results[at]->response->seq);
                ASSERT_U64_EQ(m->to_group, g);
                if (i > 0)
                    ASSERT_U64_EQ(m->seq, dl->batch[i - 1]->message->seq + 1);
            }
        } else {
            ASSERT_NOT_NULL(dl->message); /* one message for that key: not wrapped */
            ASSERT_EQ(dl->n_batch, 0);
            ASSERT_U64_EQ(dl->message->id, r->results[2]->response->id);
        }
        protobuf_c_message_free_unpacked(&dl->base, NULL);
    }
    ASSERT_NULL(it_next_of_kind(&fan, 500, 'c', NULL, 0));
    protobuf_c_message_free_unpacked(&r->base, NULL);

    /* A batch of one: a plain Delivery per gateway, as Send's (d is on B,
     * the sender c's own session on A). */
    batch_add(one, c, d, 0, "lo-0", NULL);
    r = send_batch_ok(one);
    got_a = got_b = false;
    for (int k = 0; k < 2; k++) {
        bool on_a;

        dl = it_next_of_kind(&fan, 3000, 'c', rkey, sizeof(rkey));
        ASSERT_NOT_NULL(dl);
        on_a = strcmp(rkey + 3, fan.gw_a) == 0;
        ASSERT_TRUE(on_a ? !got_a : !got_b && strcmp(rkey + 3, fan.gw_b) == 0);
        *(on_a ? &got_a : &got_b) = true;
        ASSERT_EQ(dl->n_batch, 0);
        ASSERT_NOT_NULL(dl->message);
        ASSERT_U64_EQ(dl->message->id, accepted(r, 0)->id);
        ASSERT_EQ(dl->n_user_ids, 1);
        ASSERT_U64_EQ(dl->user_ids[0], on_a ? c : d);
        protobuf_c_message_free_unpacked(&dl->base, NULL);
    }
    ASSERT_NULL(it_next_of_kind(&fan, 500, 'c', NULL, 0));
    protobuf_c_message_free_unpacked(&r->base, NULL);
    batch_free(bt);
    batch_free(gb);
    batch_free(one);
}

/* ------------------------------------------------------------ concurrent batches */

#define CONC_CALLS 60
#define CONC_MAX   25

typedef struct {
    batch_t *b;
    atomic_int done;
    im_rpc_code_t code;
    char error[128];
    uint64_t seqs[CONC_MAX];
    size_t n_ok;
} conc_call_t;

static conc_call_t conc[CONC_CALLS];

static void conc_done_cb(void *arg, im_rpc_result_t *res)
{
    conc_call_t *c = arg;
    const Im__V1__SendBatchResponse *r = (const Im__V1__SendBatchResponse *)res->resp;

    c->code = res->code;
    snprintf(c->error, sizeof(c->error), "%s", res->message);
    for (size_t i = 0; r != NULL && i < r->n_results && i < CONC_MAX; i++)
        if (r->results[i]->code == IM_RPC_OK && r->results[i]->response != NULL)
            c->seqs[c->n_ok++] = r->results[i]->response->seq;
    atomic_store(&c->done, 1);
}

/* Many SendBatch calls in flight at once on one conversation, some of one
 * small send (the broker keeps it in its queue index) and some of 25 sends of
 * 4 KB (a 100 KB message that goes to its message store, confirmed at
 * another time): the deliveries reach the gateway in seq order.  (The
 * publisher reports confirms in publish order; before, the benchmark saw
 * such deliveries reordered.) */
TEST(concurrent_batches_of_mixed_sizes_deliver_in_seq_order)
{
    uint64_t a = it_new_user(&lg, "conc"), b = it_new_user(&lg, "conc");
    static char big[4001];
    size_t total = 0, got = 0;
    uint64_t last = 0, t0;
    Im__V1__Delivery *dl;
    char rkey[256];

    memset(big, 'q', sizeof(big) - 1);
    it_online(&lg, b, fan.gw_a, "b1");
    it_drain_deliveries(&fan, 300);
    for (size_t k = 0; k < CONC_CALLS; k++) {
        size_t n = k % 3 == 0 ? 1 : k % 3 == 1 ? CONC_MAX : 1 + k % 7;
        Im__V1__SendBatchRequest req;
        char cid[32];

        conc[k].b = batch_new(n);
        for (size_t i = 0; i < n; i++) {
            snprintf(cid, sizeof(cid), "cc-%zu-%zu", k, i);
            batch_add(conc[k].b, a, b, 0, cid, n == CONC_MAX ? big : NULL);
        }
        total += n;
        batch_request(conc[k].b, &req);
        ASSERT_EQ(im_rpc_call(lg.client, &im__v1__message__descriptor, SEND_BATCH, &req.base, 20000,
                              NULL, 0, conc_done_cb, &conc[k]),
                  IM_OK);
    }
    t0 = im_mono_ms();
    while (got < total && im_mono_ms() - t0 < 20000) {
        dl = it_next_of_kind(&fan, 1000, 'c', rkey, sizeof(rkey));
        if (dl == NULL)
            continue;
        for (size_t i = 0; i < (dl->n_batch ? dl->n_batch : 1); i++) {
            const Im__V1__ChatMessage *m = dl->n_batch ? dl->batch[i]->message : dl->message;

            ASSERT_NOT_NULL(m);
            if (m->seq <= last)
                IM__FAIL("delivery %zu: seq %" PRIu64 " after %" PRIu64, got, m->seq, last);
            last = m->seq;
            got++;
        }
        protobuf_c_message_free_unpacked(&dl->base, NULL);
    }
    for (size_t k = 0; k < CONC_CALLS; k++) {
        while (!atomic_load(&conc[k].done))
            it_sleep_ms(5);
        if (conc[k].code != IM_RPC_OK || conc[k].n_ok != conc[k].b->n)
            IM__FAIL("call %zu: code %d (%s), %zu of %zu accepted", k, (int)conc[k].code,
                     conc[k].error, conc[k].n_ok, conc[k].b->n);
        for (size_t i = 1; i < conc[k].n_ok; i++)
            ASSERT_U64_EQ(conc[k].seqs[i], conc[k].seqs[i - 1] + 1);
        batch_free(conc[k].b);
        conc[k].b = NULL;
    }
    ASSERT_EQ(got, total);
    ASSERT_U64_EQ(last, total); /* a new conversation: 1..total, none lost */
    printf("     %zu sends in %d concurrent batches delivered in seq order\n", total, CONC_CALLS);
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
    db = it_mysql_connect("it13");
    redis = it_redis_connect("it13");
    amqp = it_amqp_connect("it13");
    if (db == NULL || redis == NULL || amqp == NULL)
        return 1;
    if (!it_fanout_open(&fan, amqp, "it13"))
        return 1;
    if (!it_logic_start(&lg, extra))
        return 1;
    RUN(empty_batch_gets_no_results);
    RUN(mixed_batch_answers_each_send_as_send_would);
    RUN(one_conversation_gets_consecutive_seqs_in_batch_order_and_one_row_each);
    RUN(lease_running_out_mid_batch_keeps_seqs_consecutive);
    RUN(a_low_lease_is_renewed_before_it_runs_out);
    RUN(a_broken_dedup_key_fails_its_send_only);
    RUN(same_client_msg_id_twice_in_one_batch);
    RUN(batch_size_limit);
    RUN(deliveries_for_one_gateway_travel_as_one_batch_in_seq_order);
    RUN(concurrent_batches_of_mixed_sizes_deliver_in_seq_order);
    if (!it_logic_stop_checked(&lg))
        return 1;
    im_mysql_close(db);
    im_redis_close(redis);
    im_amqp_close(amqp);
    return it_test_done_log(&lg);
}
