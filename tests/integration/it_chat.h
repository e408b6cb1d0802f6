/*
 * it_chat.h - what the integration tests that run the real logic binary
 * share: users, groups and sessions made through its gRPC services (each
 * helper takes the it_logic_t to call), the rows and Redis keys logic leaves,
 * and the test in the role of two gateways, reading what logic publishes to
 * them.
 *
 *   static it_logic_t lg = {.tag = "it13"};
 *   static it_fanout_t fan;
 *
 *   it_fanout_open(&fan, amqp, "it13");   // in main: gateway ids fan.gw_a, fan.gw_b
 *   uint64_t a = it_new_user(&lg, "mix"); // in a TEST: "mix_<pid>_<n>", IT_PASSWORD
 *   uint64_t g = it_new_group(&lg, a);    // "it13 group", after lg.tag
 *   it_online(&lg, a, fan.gw_a, "a1");
 *   d = it_next_of_kind(&fan, 3000, 'm', rkey, sizeof(rkey));   // NULL: none came
 *   ...
 *   if (!it_logic_stop_checked(&lg))      // the end of main
 *       return 1;
 *   return it_test_done_log(&lg);         // lg's log removed when all passed
 *
 * The helpers that assert end the running TEST on failure (im_test.h): call
 * them from tests only.  it_fanout_open() and the end-of-main pair do not
 * assert.  A failure in here names a line of this file; the runner's FAIL line
 * names the test.  The only state kept here is it_serial()'s counter.  Static
 * inline: include from the one .c file of each test.
 */
#ifndef IT_CHAT_H
#define IT_CHAT_H

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "im.pb-c.h"
#include "im_amqp.h"
#include "im_mysql.h"
#include "im_redis.h"
#include "im_test.h"
#include "im_time.h"
#include "it_logic.h"

#define IT_DELIVER_EXCHANGE "im.deliver" /* logic's fan-out exchange */
#define IT_PASSWORD         "password1"  /* of every it_new_user() */

/* Method numbers of the calls made here, in proto/im.proto order. */
enum { IT__AUTH_SIGNUP = 0, IT__AUTH_DELETE_ACCOUNT = 3 };
enum { IT__GROUP_CREATE = 0, IT__GROUP_JOIN = 1 };
enum { IT__SESSION_ONLINE = 0 };

/* True when s begins with prefix; a NULL s reads as "". */
static inline bool it_starts_with(const char *s, const char *prefix)
{
    return strncmp(s != NULL ? s : "", prefix, strlen(prefix)) == 0;
}

/* 1, 2, 3, ... for this process: makes names and client message ids unique. */
static inline unsigned it_serial(void)
{
    static unsigned serial;

    return ++serial;
}

/* A fresh valid username, "<tag>_<pid>_<serial>", into buf. */
static inline void it_username(char *buf, size_t len, const char *tag)
{
    snprintf(buf, len, "%s_%d_%u", tag, (int)getpid() % 100000, it_serial());
}

/* "d:<lower id>:<higher id>", the conversation of a direct chat. */
static inline void it_direct_conv(char *out, size_t size, uint64_t x, uint64_t y)
{
    snprintf(out, size, "d:%" PRIu64 ":%" PRIu64, x < y ? x : y, x < y ? y : x);
}

/* ------------------------------------------------------------ calls to logic */

/* Signs up a fresh user (it_username(tag), IT_PASSWORD); returns its id. */
static inline uint64_t it_new_user(it_logic_t *lg, const char *tag)
{
    Im__V1__RegisterRequest req = IM__V1__REGISTER_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char name[40], msg[256];
    uint64_t id;

    it_username(name, sizeof(name), tag);
    req.username = name;
    req.password = IT_PASSWORD;
    ASSERT_EQ(it_logic_call(lg, &im__v1__auth__descriptor, IT__AUTH_SIGNUP, &req.base, &resp, msg,
                            sizeof(msg)),
              IM_RPC_OK);
    id = ((Im__V1__RegisterResponse *)resp)->user_id;
    protobuf_c_message_free_unpacked(resp, NULL);
    return id;
}

/* Creates a group owned by owner, named "<lg->tag> group"; returns its id. */
static inline uint64_t it_new_group(it_logic_t *lg, uint64_t owner)
{
    Im__V1__CreateGroupRequest req = IM__V1__CREATE_GROUP_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char name[64], msg[256];
    uint64_t id;

    snprintf(name, sizeof(name), "%s group", lg->tag);
    req.user_id = owner;
    req.name = name;
    ASSERT_EQ(it_logic_call(lg, &im__v1__group__descriptor, IT__GROUP_CREATE, &req.base, &resp, msg,
                            sizeof(msg)),
              IM_RPC_OK);
    id = ((Im__V1__GroupResponse *)resp)->group->id;
    protobuf_c_message_free_unpacked(resp, NULL);
    return id;
}

static inline void it_join(it_logic_t *lg, uint64_t user, uint64_t group)
{
    Im__V1__GroupRequest req = IM__V1__GROUP_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256];

    req.user_id = user;
    req.group_id = group;
    ASSERT_EQ(it_logic_call(lg, &im__v1__group__descriptor, IT__GROUP_JOIN, &req.base, &resp, msg,
                            sizeof(msg)),
              IM_RPC_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
}

/* Deletes the account of a user made by it_new_user(). */
static inline void it_delete_account(it_logic_t *lg, uint64_t user)
{
    Im__V1__DeleteAccountRequest req = IM__V1__DELETE_ACCOUNT_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256];

    req.user_id = user;
    req.password = IT_PASSWORD;
    ASSERT_EQ(it_logic_call(lg, &im__v1__auth__descriptor, IT__AUTH_DELETE_ACCOUNT, &req.base,
                            &resp, msg, sizeof(msg)),
              IM_RPC_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
}

/* The Session method numbered method (Online, Offline, Heartbeat) for
 * (user, gw, sid), which must answer want; returns its response, to free
 * (NULL when refused). */
static inline Im__V1__SessionResponse *it_session(it_logic_t *lg, unsigned method, uint64_t user,
                                                  const char *gw, const char *sid,
                                                  im_rpc_code_t want)
{
    Im__V1__SessionRequest req = IM__V1__SESSION_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256];

    req.user_id = user;
    req.gateway_id = (char *)gw;
    req.session_id = (char *)sid;
    ASSERT_EQ(
        it_logic_call(lg, &im__v1__session__descriptor, method, &req.base, &resp, msg, sizeof(msg)),
        want);
    return (Im__V1__SessionResponse *)resp;
}

/* Session.Online of (user, gw, sid), which must succeed. */
static inline void it_online(it_logic_t *lg, uint64_t user, const char *gw, const char *sid)
{
    Im__V1__SessionResponse *r = it_session(lg, IT__SESSION_ONLINE, user, gw, sid, IM_RPC_OK);

    protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* A Message.Send (method 0) from -> to_user or to_group; *out (may be NULL)
 * gets the response to free. */
static inline im_rpc_code_t it_send(it_logic_t *lg, uint64_t from, uint64_t to_user,
                                    uint64_t to_group, const char *cid, const char *body,
                                    Im__V1__SendResponse **out, char *msg, size_t msglen)
{
    Im__V1__SendRequest req = IM__V1__SEND_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    im_rpc_code_t code;

    req.sender = from;
    req.to_user = to_user;
    req.to_group = to_group;
    req.client_msg_id = (char *)cid;
    req.body = (char *)body;
    code = it_logic_call(lg, &im__v1__message__descriptor, 0, &req.base, &resp, msg, msglen);
    if (out != NULL)
        *out = (Im__V1__SendResponse *)resp;
    else if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

/* ------------------------------------------------------------ what logic stored */

/* Rows stored with this id, waiting up to 5 s for at least `want`. */
static inline uint64_t it_rows_with_id(im_mysql_t *db, uint64_t id, uint64_t want)
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

/* Sessions in the user's route set (im:route:<user>). */
static inline long long it_routes_of(im_redis_t *redis, uint64_t user)
{
    im_redis_reply_t *rep = NULL;
    long long n;

    ASSERT_EQ(im_redis_command(redis, &rep, "ZCARD im:route:%" PRIu64, user), IM_OK);
    n = im_redis_reply_int(rep);
    im_redis_reply_free(rep);
    return n;
}

/* Sets until when (unix ms) this Redis run counts as one that may have lost
 * dedup records, so that logic also checks claims against the table: 0 closes
 * the window (a Redis that kept its data).  Logic sets this window itself when
 * a Redis run begins; on a database that was empty then it sets none, and a
 * record deleted by hand would not be looked for.  Returns the old value of
 * "im:dedup:since" (LG_DEDUP_SINCE_KEY, "<run_id> <until ms>"), NULL when
 * there was none, for it_dedup_window_restore(), which frees it. */
static inline char *it_dedup_window_set(im_redis_t *redis, uint64_t until_ms)
{
    im_redis_reply_t *rep = NULL;
    const char *run_id, *v;
    char value[96], *old = NULL;

    ASSERT_EQ(im_redis_command(redis, &rep, "GET im:dedup:since"), IM_OK);
    if ((v = im_redis_reply_str(rep, NULL)) != NULL)
        old = strdup(v);
    im_redis_reply_free(rep);
    ASSERT_EQ(im_redis_run_id(redis, &run_id), IM_OK);
    snprintf(value, sizeof(value), "%s %" PRIu64, run_id, until_ms);
    ASSERT_EQ(im_redis_command(redis, NULL, "SET im:dedup:since %s", value), IM_OK);
    return old;
}

/* The state of a Redis run that may have lost dedup records (a restart while
 * the table held messages of the last day), for an hour. */
static inline char *it_dedup_window_force(im_redis_t *redis)
{
    return it_dedup_window_set(redis, im_wall_ms() + 3600 * 1000);
}

/* Puts back (or deletes) what it_dedup_window_force() found; frees old. */
static inline void it_dedup_window_restore(im_redis_t *redis, char *old)
{
    if (old != NULL)
        ASSERT_EQ(im_redis_command(redis, NULL, "SET im:dedup:since %s", old), IM_OK);
    else
        ASSERT_EQ(im_redis_command(redis, NULL, "DEL im:dedup:since"), IM_OK);
    free(old);
}

/* ------------------------------------------------------------ the test as gateways */

/* Two gateway ids and one private queue (exclusive, auto-delete) bound to
 * the fan-out exchange for "gw.<gw_a>" and "gw.<gw_b>", consumed with
 * automatic acks.  A test binds more keys (g.<group>) to queue itself. */
typedef struct {
    im_amqp_conn_t *amqp; /* not owned: the test closes it */
    char queue[64];       /* "<tag>.fanout.<pid>" */
    char gw_a[48];        /* "<tag>-a-<pid>" */
    char gw_b[48];        /* "<tag>-b-<pid>" */
} it_fanout_t;

/* Names, declares, binds and starts consuming fan's queue on amqp.  Returns
 * false when the exchange, the queue or the consumer could not be set up; a
 * failed bind shows later as deliveries that do not come. */
static inline bool it_fanout_open(it_fanout_t *fan, im_amqp_conn_t *amqp, const char *tag)
{
    im_amqp_queue_opts_t q = {.exclusive = true, .auto_delete = true};
    char key[64];

    fan->amqp = amqp;
    snprintf(fan->gw_a, sizeof(fan->gw_a), "%s-a-%d", tag, (int)getpid());
    snprintf(fan->gw_b, sizeof(fan->gw_b), "%s-b-%d", tag, (int)getpid());
    snprintf(fan->queue, sizeof(fan->queue), "%s.fanout.%d", tag, (int)getpid());
    q.name = fan->queue;
    if (im_amqp_declare_exchange(amqp, IT_DELIVER_EXCHANGE, "direct", true) != IM_OK ||
        im_amqp_declare_queue(amqp, &q, NULL, 0, NULL) != IM_OK)
        return false;
    snprintf(key, sizeof(key), "gw.%s", fan->gw_a);
    im_amqp_bind(amqp, fan->queue, IT_DELIVER_EXCHANGE, key);
    snprintf(key, sizeof(key), "gw.%s", fan->gw_b);
    im_amqp_bind(amqp, fan->queue, IT_DELIVER_EXCHANGE, key);
    return im_amqp_consume(amqp, fan->queue, 0, true) == IM_OK;
}

/* The next delivery on fan's queue within timeout_ms, decoded (to free);
 * NULL if none came.  One that does not decode fails the test.  rkey (may be
 * NULL) gets its routing key. */
static inline Im__V1__Delivery *it_next_delivery(const it_fanout_t *fan, int timeout_ms, char *rkey,
                                                 size_t rkeylen)
{
    im_amqp_delivery_t d;
    Im__V1__Delivery *out;

    if (im_amqp_consumer_next(fan->amqp, timeout_ms, &d) != IM_OK)
        return NULL;
    out = im__v1__delivery__unpack(NULL, d.len, d.body);
    ASSERT_NOT_NULL(out);
    if (rkey != NULL)
        snprintf(rkey, rkeylen, "%s", d.routing_key);
    return out;
}

/* Whether d is of kind: 'm' a chat message, 'c' chat messages (one, or a
 * Delivery.batch of them), 'r' a receipt, 't' typing, 'p' presence, 'g' a
 * group event. */
static inline bool it__delivery_is(const Im__V1__Delivery *d, char kind)
{
    switch (kind) {
    case 'm':
        return d->message != NULL;
    case 'c':
        return d->message != NULL || d->n_batch > 0;
    case 'r':
        return d->receipt != NULL;
    case 't':
        return d->typing != NULL;
    case 'p':
        return d->presence != NULL;
    case 'g':
        return d->group_event != NULL;
    default:
        return false;
    }
}

/* The next delivery of kind (see it__delivery_is), freeing the others on
 * the way; NULL once none came for timeout_ms. */
static inline Im__V1__Delivery *it_next_of_kind(const it_fanout_t *fan, int timeout_ms, char kind,
                                                char *rkey, size_t rkeylen)
{
    Im__V1__Delivery *d;

    while ((d = it_next_delivery(fan, timeout_ms, rkey, rkeylen)) != NULL) {
        if (it__delivery_is(d, kind))
            return d;
        protobuf_c_message_free_unpacked(&d->base, NULL);
    }
    return NULL;
}

/* Reads and frees deliveries until none came for timeout_ms. */
static inline void it_drain_deliveries(const it_fanout_t *fan, int timeout_ms)
{
    Im__V1__Delivery *d;

    while ((d = it_next_delivery(fan, timeout_ms, NULL, 0)) != NULL)
        protobuf_c_message_free_unpacked(&d->base, NULL);
}

/* ------------------------------------------------------------ the end of main */

/* it_logic_stop(); false, with a FAIL line on stderr, when logic did not exit
 * 0 (a crash, or a leak under ASan). */
static inline bool it_logic_stop_checked(it_logic_t *lg)
{
    if (it_logic_stop(lg))
        return true;
    fprintf(stderr, "FAIL logic did not exit cleanly on SIGTERM\n");
    return false;
}

/* im_test_done(), then lg's log removed when every test passed, or its path
 * on stderr when one failed.  Returns the exit status. */
static inline int it_test_done_log(const it_logic_t *lg)
{
    int rc = im_test_done();

    if (rc == 0)
        unlink(lg->log_path);
    else
        fprintf(stderr, "logic's log: %s\n", lg->log_path);
    return rc;
}

#endif
