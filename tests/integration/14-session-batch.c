/*
 * 14-session-batch: Session.Connect and Session.Disconnect of the real logic
 * binary on real RabbitMQ, MariaDB and Redis.  Each session of a batch is
 * judged as Online / Offline would judge it (same code and message), the
 * valid ones are routed to (im:route:<user>) and unrouted again with first
 * and last right within the batch, Connect carries each user's groups as
 * Group.Mine has them, a connecting user's direct peers hear its presence
 * (once, for its first session, and once for its last going), the size limit
 * holds, and with MariaDB unreachable Connect still routes and says that the
 * groups are missing.
 *
 * The test plays the gateways, as 11-message does: it registers a peer with
 * Session.Online and binds its own queue to the fan-out exchange for
 * "gw.<its gateway ids>".  The last test stops MariaDB (infra.sh stop) and
 * starts it again: ctest runs it alone.
 *
 * Usage (ctest passes them): test_14_session_batch <logic binary> <infra.sh>
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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

#define BATCH_MAX 1000 /* LG_SESSION_BATCH_MAX */

static it_logic_t lg = {.tag = "it14"};
static it_logic_t nodb = {.tag = "it14-nodb"};
static const char *infra_sh;
static im_mysql_t *db;
static im_redis_t *redis;
static im_amqp_conn_t *amqp;
static it_fanout_t fan;

/* Method numbers, in proto/im.proto order. */
enum { CREATE, JOIN, LEAVE, MEMBERS, MINE };
enum { SEND, SYNC, HISTORY, MARK_READ, CONVERSATIONS };
enum { ONLINE, OFFLINE, HEARTBEAT, CONNECT, DISCONNECT };

static const char *str(const char *s)
{
    return s != NULL ? s : "";
}

/* Group.Mine's ids for user, in its order, into ids[0..*n) (at most max). */
static void mine(uint64_t user, uint64_t *ids, size_t max, size_t *n)
{
    Im__V1__MyGroupsRequest req = IM__V1__MY_GROUPS_REQUEST__INIT;
    Im__V1__MyGroupsResponse *r = NULL;
    char msg[256];

    req.user_id = user;
    ASSERT_EQ(it_logic_call(&lg, &im__v1__group__descriptor, MINE, &req.base,
                            (ProtobufCMessage **)&r, msg, sizeof(msg)),
              IM_RPC_OK);
    ASSERT_LE(r->n_groups, max);
    for (size_t i = 0; i < r->n_groups; i++)
        ids[i] = r->groups[i]->id;
    *n = r->n_groups;
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* A direct message from -> to, and its user_convs rows stored (presence
 * finds a user's peers there), waiting up to 5 s for the writer. */
static void chat(uint64_t from, uint64_t to)
{
    Im__V1__SendRequest req = IM__V1__SEND_REQUEST__INIT;
    Im__V1__ConversationsRequest creq = IM__V1__CONVERSATIONS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256], cid[32];
    size_t n = 0;

    snprintf(cid, sizeof(cid), "chat-%u", it_serial());
    req.sender = from;
    req.to_user = to;
    req.client_msg_id = cid;
    req.body = "hello";
    ASSERT_EQ(
        it_logic_call(&lg, &im__v1__message__descriptor, SEND, &req.base, &resp, msg, sizeof(msg)),
        IM_RPC_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
    creq.user_id = from;
    for (int i = 0; i < 100 && n == 0; i++) {
        ASSERT_EQ(it_logic_call(&lg, &im__v1__message__descriptor, CONVERSATIONS, &creq.base, &resp,
                                msg, sizeof(msg)),
                  IM_RPC_OK);
        n = ((Im__V1__ConversationsResponse *)resp)->n_conversations;
        protobuf_c_message_free_unpacked(resp, NULL);
        if (n == 0)
            it_sleep_ms(50);
    }
    ASSERT_EQ(n, 1);
}

/* ------------------------------------------------------------ batches */

/* A SessionBatchRequest under construction: its sessions own copies of
 * their gateway and session ids. */
typedef struct {
    Im__V1__SessionRequest *reqs;
    Im__V1__SessionRequest **ptrs;
    char (*gws)[80];
    char (*sids)[80];
    size_t n, cap;
} sbatch_t;

static sbatch_t *sbatch_new(size_t cap)
{
    sbatch_t *b = calloc(1, sizeof(*b));

    b->reqs = calloc(cap ? cap : 1, sizeof(*b->reqs));
    b->ptrs = calloc(cap ? cap : 1, sizeof(*b->ptrs));
    b->gws = calloc(cap ? cap : 1, sizeof(*b->gws));
    b->sids = calloc(cap ? cap : 1, sizeof(*b->sids));
    b->cap = cap;
    return b;
}

static void sbatch_free(sbatch_t *b)
{
    if (b == NULL)
        return;
    free(b->sids);
    free(b->gws);
    free(b->ptrs);
    free(b->reqs);
    free(b);
}

static void sbatch_add(sbatch_t *b, uint64_t user, const char *gw, const char *sid)
{
    Im__V1__SessionRequest *r;

    if (b->n == b->cap)
        IM__FAIL("batch full at %zu", b->cap);
    r = &b->reqs[b->n];
    im__v1__session_request__init(r);
    snprintf(b->gws[b->n], sizeof(b->gws[b->n]), "%s", gw);
    snprintf(b->sids[b->n], sizeof(b->sids[b->n]), "%s", sid);
    r->user_id = user;
    r->gateway_id = b->gws[b->n];
    r->session_id = b->sids[b->n];
    b->ptrs[b->n++] = r;
}

/* Connect or Disconnect of b on logic l; *out gets the response (to
 * free) when OK. */
static im_rpc_code_t sbatch_call_on(it_logic_t *l, unsigned method, const sbatch_t *b,
                                    Im__V1__SessionBatchResponse **out, char *msg, size_t msglen)
{
    Im__V1__SessionBatchRequest req = IM__V1__SESSION_BATCH_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    im_rpc_code_t code;

    req.sessions = b->ptrs;
    req.n_sessions = b->n;
    code = it_logic_call(l, &im__v1__session__descriptor, method, &req.base, &resp, msg, msglen);
    *out = (Im__V1__SessionBatchResponse *)resp;
    return code;
}

/* Connect or Disconnect that must succeed with one result per session. */
static Im__V1__SessionBatchResponse *sbatch_ok_on(it_logic_t *l, unsigned method, const sbatch_t *b)
{
    Im__V1__SessionBatchResponse *r = NULL;
    char msg[256] = "";
    im_rpc_code_t code = sbatch_call_on(l, method, b, &r, msg, sizeof(msg));

    if (code != IM_RPC_OK)
        IM__FAIL("%s of %zu: code %d: %s", method == CONNECT ? "Connect" : "Disconnect", b->n,
                 (int)code, msg);
    ASSERT_EQ(r->n_results, b->n);
    return r;
}

static Im__V1__SessionBatchResponse *sbatch_ok(unsigned method, const sbatch_t *b)
{
    return sbatch_ok_on(&lg, method, b);
}

/* Result i was accepted: its session response, first / last as want (-1:
 * either), and (Disconnect) no groups. */
static const Im__V1__SessionResponse *
accepted(unsigned method, const Im__V1__SessionBatchResponse *r, size_t i, int want)
{
    const Im__V1__SessionResult *res = r->results[i];
    bool flag;

    if (res->code != IM_RPC_OK)
        IM__FAIL("result %zu: code %u: %s", i, res->code, str(res->error));
    ASSERT_STR_EQ(str(res->error), "");
    ASSERT_NOT_NULL(res->session);
    ASSERT_GT(res->session->ttl_ms, 0);
    flag = method == CONNECT ? res->session->first : res->session->last;
    if (want >= 0 && flag != (want == 1))
        IM__FAIL("result %zu: %s is %d, want %d", i, method == CONNECT ? "first" : "last", flag,
                 want);
    if (method == CONNECT)
        ASSERT_TRUE(!res->session->last);
    else
        ASSERT_TRUE(!res->session->first);
    if (method == DISCONNECT) {
        ASSERT_EQ(res->n_group_ids, 0);
        ASSERT_STR_EQ(str(res->groups_error), "");
    }
    return res->session;
}

/* Result i was refused with code and an error starting with prefix, and
 * carries nothing else. */
static void refused(const Im__V1__SessionBatchResponse *r, size_t i, im_rpc_code_t code,
                    const char *prefix)
{
    const Im__V1__SessionResult *res = r->results[i];

    if (res->code != (uint32_t)code || !it_starts_with(res->error, prefix))
        IM__FAIL("result %zu: code %u \"%s\", want %d \"%s...\"", i, res->code, str(res->error),
                 (int)code, prefix);
    ASSERT_NULL(res->session);
    ASSERT_EQ(res->n_group_ids, 0);
    ASSERT_STR_EQ(str(res->groups_error), "");
}

/* The single Online (Connect) or Offline (Disconnect) of the very same
 * request as session i: the same code and, when refused, the same message.
 * *single gets its response (to free) when OK. */
static void same_as_single(unsigned method, const sbatch_t *b,
                           const Im__V1__SessionBatchResponse *r, size_t i,
                           Im__V1__SessionResponse **single)
{
    Im__V1__SessionRequest copy = *b->ptrs[i];
    ProtobufCMessage *resp = NULL;
    char msg[256] = "";
    im_rpc_code_t code;

    code = it_logic_call(&lg, &im__v1__session__descriptor, method == CONNECT ? ONLINE : OFFLINE,
                         &copy.base, &resp, msg, sizeof(msg));
    if ((uint32_t)code != r->results[i]->code ||
        (code != IM_RPC_OK && strcmp(msg, str(r->results[i]->error)) != 0))
        IM__FAIL("session %zu: %s says %d \"%s\", the batch said %u \"%s\"", i,
                 method == CONNECT ? "Online" : "Offline", (int)code, msg, r->results[i]->code,
                 str(r->results[i]->error));
    *single = (Im__V1__SessionResponse *)resp;
}

/* Result i's group ids are want[0..n), in any order, each once. */
static void same_groups(const Im__V1__SessionResult *res, const uint64_t *want, size_t n, size_t i)
{
    if (res->n_group_ids != n)
        IM__FAIL("result %zu: %zu group ids, want %zu", i, res->n_group_ids, n);
    for (size_t k = 0; k < n; k++) {
        size_t seen = 0;

        for (size_t g = 0; g < n; g++)
            seen += res->group_ids[g] == want[k];
        if (seen != 1)
            IM__FAIL("result %zu: group %" PRIu64 " listed %zu times", i, want[k], seen);
    }
}

/* ------------------------------------------------------------ redis */

/* True while the gateway's lease (im:gw:<gw>) exists. */
static bool leased(const char *gw)
{
    im_redis_reply_t *rep = NULL;
    bool found;

    ASSERT_EQ(im_redis_command(redis, &rep, "EXISTS im:gw:%s", gw), IM_OK);
    found = im_redis_reply_int(rep) == 1;
    im_redis_reply_free(rep);
    return found;
}

/* True when "<gw>/<sid>" is in the user's route set. */
static bool routed(uint64_t user, const char *gw, const char *sid)
{
    im_redis_reply_t *rep = NULL;
    char key[48], member[160];
    bool found;

    snprintf(key, sizeof(key), "im:route:%" PRIu64, user);
    snprintf(member, sizeof(member), "%s/%s", gw, sid);
    ASSERT_EQ(im_redis_command(redis, &rep, "ZSCORE %s %s", key, member), IM_OK);
    found = im_redis_reply_type(rep) != IM_REDIS_NIL;
    im_redis_reply_free(rep);
    return found;
}

/* ------------------------------------------------------------ tests */

TEST(empty_batch_gets_no_results)
{
    sbatch_t *b = sbatch_new(0);
    Im__V1__SessionBatchResponse *r;

    r = sbatch_ok(CONNECT, b);
    ASSERT_EQ(r->n_results, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = sbatch_ok(DISCONNECT, b);
    ASSERT_EQ(r->n_results, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    sbatch_free(b);
}

/* The mixed batch of (a)-(c), kept for Disconnect. */
static sbatch_t *mixed;
static uint64_t u0, u1, u3, gone;

static const struct {
    uint64_t *user; /* NULL: user 0 */
    int gw;         /* 0: fan.gw_a, 1: fan.gw_b, 2: the literal gateway id below */
    const char *gw_literal;
    const char *sid;
    im_rpc_code_t code; /* Connect's */
    const char *prefix;
    int first, last; /* for the accepted ones */
} mixed_spec[] = {
    {&u1, 0, NULL, "u1-s1", IM_RPC_OK, NULL, 1, 0},
    {&u0, 2, "bad/gateway", "u0-s1", IM_RPC_INVALID_ARGUMENT, "bad_gateway_id: ", 0, 0},
    {&u3, 0, NULL, "u3-s1", IM_RPC_OK, NULL, 1, 0},
    {&u1, 1, NULL, "u1-s2", IM_RPC_OK, NULL, 0, 1},
    {&u0, 0, NULL, "", IM_RPC_INVALID_ARGUMENT, "bad_session_id: ", 0, 0},
    {NULL, 0, NULL, "zero-s1", IM_RPC_INVALID_ARGUMENT, "bad_user: ", 0, 0},
    {&gone, 0, NULL, "gone-s1", IM_RPC_PERMISSION_DENIED, "user_deleted: ", 0, 0},
    {&u0, 0, NULL, "u0-s1", IM_RPC_OK, NULL, 1, 1},
    {&u3, 1, NULL, "u3-s2", IM_RPC_OK, NULL, 0, 0},
    {&u3, 2, "gw with space", "u3-s9", IM_RPC_INVALID_ARGUMENT, "bad_gateway_id: ", 0, 0},
    {&u0, 0, NULL, "s1234567890123456789012345678901234567890123456789012345678901234",
     IM_RPC_INVALID_ARGUMENT, "bad_session_id: ", 0, 0}, /* 65 characters */
    {&u1, 2, "g1234567890123456789012345678901234567890123456789012345678901234", "u1-s9",
     IM_RPC_INVALID_ARGUMENT, "bad_gateway_id: ", 0, 0}, /* 65 characters */
    {&u0, 1, NULL, "u0\xc3\xa9s2", IM_RPC_INVALID_ARGUMENT, "bad_session_id: ", 0, 0},
    {&u3, 0, NULL, "u3-s3", IM_RPC_OK, NULL, 0, 1},
};
#define MIXED_N (sizeof(mixed_spec) / sizeof(mixed_spec[0]))

static const char *spec_gw(size_t i)
{
    return mixed_spec[i].gw == 0   ? fan.gw_a
           : mixed_spec[i].gw == 1 ? fan.gw_b
                                   : mixed_spec[i].gw_literal;
}

static uint64_t spec_user(size_t i)
{
    return mixed_spec[i].user != NULL ? *mixed_spec[i].user : 0;
}

/* (a), (b) Connect of sessions of several users, some invalid: each answered
 * as Online answers the same request, the valid ones routed with first only
 * for a user's first session, each with the groups Group.Mine lists (users
 * in 0, 1 and 3 groups). */
TEST(connect_answers_each_session_as_online_would_with_its_groups)
{
    uint64_t other, g1, g3[3], ids[8];
    Im__V1__SessionBatchResponse *r;
    size_t n;

    u0 = it_new_user(&lg, "mix");
    u1 = it_new_user(&lg, "mix");
    u3 = it_new_user(&lg, "mix");
    gone = it_new_user(&lg, "mix");
    other = it_new_user(&lg, "mix");
    g1 = it_new_group(&lg, other);
    it_join(&lg, u1, g1);
    g3[0] = it_new_group(&lg, u3);
    g3[1] = g1;
    it_join(&lg, u3, g1);
    g3[2] = it_new_group(&lg, other);
    it_join(&lg, u3, g3[2]);
    it_delete_account(&lg, gone);
    mixed = sbatch_new(MIXED_N);
    for (size_t i = 0; i < MIXED_N; i++)
        sbatch_add(mixed, spec_user(i), spec_gw(i), mixed_spec[i].sid);
    r = sbatch_ok(CONNECT, mixed);
    for (size_t i = 0; i < MIXED_N; i++) {
        const Im__V1__SessionResult *res = r->results[i];
        Im__V1__SessionResponse *single = NULL;

        if (mixed_spec[i].code != IM_RPC_OK) {
            refused(r, i, mixed_spec[i].code, mixed_spec[i].prefix);
            same_as_single(CONNECT, mixed, r, i, &single);
            continue;
        }
        accepted(CONNECT, r, i, mixed_spec[i].first);
        ASSERT_TRUE(routed(spec_user(i), spec_gw(i), mixed_spec[i].sid));
        /* (b) the groups, as Group.Mine lists them */
        if (res->groups_error != NULL && res->groups_error[0] != '\0')
            IM__FAIL("result %zu: groups_error \"%s\"", i, res->groups_error);
        mine(spec_user(i), ids, 8, &n);
        same_groups(res, ids, n, i);
        /* The single Online of it now: OK, first only when it is the user's
         * one session (Online counts the user's sessions other than it). */
        same_as_single(CONNECT, mixed, r, i, &single);
        ASSERT_NOT_NULL(single);
        ASSERT_EQ(single->first, spec_user(i) == u0);
        ASSERT_EQ(single->ttl_ms, res->session->ttl_ms);
        protobuf_c_message_free_unpacked(&single->base, NULL);
    }
    /* The groups are the ones made above. */
    for (size_t i = 0; i < MIXED_N; i++) {
        const Im__V1__SessionResult *res = r->results[i];
        uint64_t user = spec_user(i);

        if (res->code != IM_RPC_OK)
            continue;
        if (user == u0)
            ASSERT_EQ(res->n_group_ids, 0);
        if (user == u1) {
            ASSERT_EQ(res->n_group_ids, 1);
            ASSERT_U64_EQ(res->group_ids[0], g1);
        }
        if (user == u3)
            same_groups(res, g3, 3, i);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* Exactly the valid sessions are routed; none of the deleted user. */
    ASSERT_EQ(it_routes_of(redis, u0), 1);
    ASSERT_EQ(it_routes_of(redis, u1), 2);
    ASSERT_EQ(it_routes_of(redis, u3), 3);
    ASSERT_EQ(it_routes_of(redis, gone), 0);
    ASSERT_TRUE(!routed(u0, fan.gw_a, ""));
    ASSERT_TRUE(!routed(u3, "gw with space", "u3-s9"));
}

/* (c) Disconnect of the same sessions: each answered as Offline answers it,
 * every route gone, last only for a user's last session. */
TEST(disconnect_takes_each_session_offline_last_for_the_last)
{
    Im__V1__SessionBatchResponse *r;

    ASSERT_NOT_NULL(mixed);
    r = sbatch_ok(DISCONNECT, mixed);
    for (size_t i = 0; i < MIXED_N; i++) {
        Im__V1__SessionResponse *single = NULL;

        if (mixed_spec[i].code == IM_RPC_INVALID_ARGUMENT) {
            refused(r, i, mixed_spec[i].code, mixed_spec[i].prefix);
            same_as_single(DISCONNECT, mixed, r, i, &single);
            continue;
        }
        if (spec_user(i) == gone) {
            /* Offline does not look for the deletion mark: a session it
             * does not hold is simply not there (the user has none left). */
            accepted(DISCONNECT, r, i, 1);
        } else {
            accepted(DISCONNECT, r, i, mixed_spec[i].last);
            ASSERT_TRUE(!routed(spec_user(i), spec_gw(i), mixed_spec[i].sid));
        }
        same_as_single(DISCONNECT, mixed, r, i, &single);
        ASSERT_NOT_NULL(single);
        ASSERT_TRUE(single->last); /* nothing left by now */
        protobuf_c_message_free_unpacked(&single->base, NULL);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    ASSERT_EQ(it_routes_of(redis, u0), 0);
    ASSERT_EQ(it_routes_of(redis, u1), 0);
    ASSERT_EQ(it_routes_of(redis, u3), 0);
    ASSERT_EQ(it_routes_of(redis, gone), 0);
    sbatch_free(mixed);
    mixed = NULL;
}

/* Checks that d is the presence of user (online or not) for peer on fan.gw_a. */
static void check_presence(const Im__V1__Delivery *d, const char *rkey, uint64_t user,
                           uint64_t peer, bool online)
{
    ASSERT_NOT_NULL(d);
    ASSERT_STR_EQ(rkey + 3, fan.gw_a);
    ASSERT_U64_EQ(d->presence->user_id, user);
    ASSERT_EQ(d->presence->online, online);
    ASSERT_GT(d->presence->at_ms, 0);
    ASSERT_EQ(d->n_user_ids, 1);
    ASSERT_U64_EQ(d->user_ids[0], peer);
}

/* Session.Online or Offline of one session of user on gateway A. */
static void one_session(unsigned method, uint64_t user, const char *sid)
{
    Im__V1__SessionRequest one = IM__V1__SESSION_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256];

    one.user_id = user;
    one.gateway_id = fan.gw_a;
    one.session_id = (char *)sid;
    ASSERT_EQ(it_logic_call(&lg, &im__v1__session__descriptor, method, &one.base, &resp, msg,
                            sizeof(msg)),
              IM_RPC_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
}

/* (d2) Presence of several users connecting in one batch (looked up for the
 * whole batch at once): each peer hears exactly its own peer, once. */
TEST(presence_of_a_batch_reaches_each_users_own_peers)
{
    uint64_t a1 = it_new_user(&lg, "pres"), a2 = it_new_user(&lg, "pres"),
             p1 = it_new_user(&lg, "pres"), p2 = it_new_user(&lg, "pres"),
             lone = it_new_user(&lg, "pres");
    uint64_t peers[2] = {p1, p2};
    const char *sids[2] = {"p1-1", "p2-1"};
    sbatch_t *b = sbatch_new(3);
    Im__V1__SessionBatchResponse *r;
    Im__V1__Delivery *d;
    char rkey[256];
    bool heard[2] = {false, false};

    chat(a1, p1);
    chat(a2, p2);
    for (int i = 0; i < 2; i++)
        one_session(ONLINE, peers[i], sids[i]);
    it_drain_deliveries(&fan, 300);
    sbatch_add(b, a1, fan.gw_b, "a1-1");
    sbatch_add(b, lone, fan.gw_b, "lone-1");
    sbatch_add(b, a2, fan.gw_b, "a2-1");
    r = sbatch_ok(CONNECT, b);
    for (size_t i = 0; i < 3; i++)
        accepted(CONNECT, r, i, 1);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    while ((d = it_next_of_kind(&fan, 1500, 'p', rkey, sizeof(rkey))) != NULL) {
        int k = d->presence->user_id == a1 ? 0 : d->presence->user_id == a2 ? 1 : -1;

        if (k < 0 || heard[k])
            IM__FAIL("unexpected presence of %" PRIu64 " (heard: %d %d)",
                     d->presence->user_id, heard[0], heard[1]);
        check_presence(d, rkey, k == 0 ? a1 : a2, peers[k], true);
        heard[k] = true;
        protobuf_c_message_free_unpacked(&d->base, NULL);
    }
    ASSERT_TRUE(heard[0] && heard[1]);
    r = sbatch_ok(DISCONNECT, b);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    for (int i = 0; i < 2; i++)
        one_session(OFFLINE, peers[i], sids[i]);
    it_drain_deliveries(&fan, 300);
    sbatch_free(b);
}

/* (d) A peer of a connecting user (they have a direct chat; the peer is
 * online on gateway A) hears once that it came online, for its first
 * session of the batch, and once that it went offline, for its last;
 * a user without peers tells nobody. */
TEST(presence_reaches_a_peer_after_connect_and_after_disconnect)
{
    uint64_t a = it_new_user(&lg, "pres"), peer = it_new_user(&lg, "pres"),
             lone = it_new_user(&lg, "pres");
    sbatch_t *b = sbatch_new(3);
    Im__V1__SessionBatchResponse *r;
    Im__V1__SessionRequest one = IM__V1__SESSION_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    Im__V1__Delivery *d;
    char rkey[256], msg[256];

    chat(a, peer);
    one.user_id = peer;
    one.gateway_id = fan.gw_a;
    one.session_id = "peer-1";
    ASSERT_EQ(it_logic_call(&lg, &im__v1__session__descriptor, ONLINE, &one.base, &resp, msg,
                            sizeof(msg)),
              IM_RPC_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
    it_drain_deliveries(&fan, 300);
    sbatch_add(b, a, fan.gw_b, "a-1");
    sbatch_add(b, lone, fan.gw_b, "lone-1");
    sbatch_add(b, a, fan.gw_b, "a-2");
    r = sbatch_ok(CONNECT, b);
    accepted(CONNECT, r, 0, 1);
    accepted(CONNECT, r, 1, 1);
    accepted(CONNECT, r, 2, 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    d = it_next_of_kind(&fan, 3000, 'p', rkey, sizeof(rkey));
    check_presence(d, rkey, a, peer, true);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    ASSERT_NULL(it_next_of_kind(&fan, 500, 'p', NULL, 0)); /* once, not per session */

    r = sbatch_ok(DISCONNECT, b);
    accepted(DISCONNECT, r, 0, 0);
    accepted(DISCONNECT, r, 1, 1);
    accepted(DISCONNECT, r, 2, 1);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    d = it_next_of_kind(&fan, 3000, 'p', rkey, sizeof(rkey));
    check_presence(d, rkey, a, peer, false);
    protobuf_c_message_free_unpacked(&d->base, NULL);
    ASSERT_NULL(it_next_of_kind(&fan, 500, 'p', NULL, 0));

    ASSERT_EQ(it_logic_call(&lg, &im__v1__session__descriptor, OFFLINE, &one.base, &resp, msg,
                            sizeof(msg)),
              IM_RPC_OK);
    protobuf_c_message_free_unpacked(resp, NULL);
    it_drain_deliveries(&fan, 300);
    sbatch_free(b);
}

#define BIG_USERS 100 /* 10 sessions each */

/* The user of session i of the big batch: every user once in each run of
 * BIG_USERS sessions, in an order unlike their ids. */
static size_t big_user(size_t i)
{
    return (i * 37 + 11) % BIG_USERS;
}

/* (e) 1001 sessions are refused as a whole and register nothing (not even
 * the gateway's lease); 1000 of 100 users are each routed, first once per
 * user, each with its user's groups (users in 0, 1 or 2 groups, more users
 * than one database query takes); Disconnect of them has last once per
 * user. */
TEST(batch_size_limit)
{
    sbatch_t *b = sbatch_new(BATCH_MAX + 1);
    Im__V1__SessionBatchResponse *r = NULL;
    uint64_t users[BIG_USERS], want[BIG_USERS][2], ga, gb, ids[8], t0;
    size_t n_want[BIG_USERS] = {0}, n;
    char gw_c[48], sid[32], msg[256];

    for (size_t u = 0; u < BIG_USERS; u++)
        users[u] = it_new_user(&lg, "big");
    ga = it_new_group(&lg, users[0]);
    gb = it_new_group(&lg, users[BIG_USERS - 1]);
    for (size_t u = 0; u < BIG_USERS; u++) {
        if (u % 7 == 0) {
            if (u != 0)
                it_join(&lg, users[u], ga);
            want[u][n_want[u]++] = ga;
        }
        if (u % 5 == 4) {
            if (u != BIG_USERS - 1)
                it_join(&lg, users[u], gb);
            want[u][n_want[u]++] = gb;
        }
    }
    snprintf(gw_c, sizeof(gw_c), "it14-c-%d", (int)getpid());
    for (size_t i = 0; i <= BATCH_MAX; i++) {
        snprintf(sid, sizeof(sid), "big-%zu", i);
        sbatch_add(b, users[big_user(i)], gw_c, sid);
    }
    for (unsigned m = CONNECT; m <= DISCONNECT; m++) {
        ASSERT_EQ(sbatch_call_on(&lg, m, b, &r, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
        ASSERT_NULL(r);
        ASSERT_STR_EQ(msg, "batch_too_large: at most 1000 sessions per call");
    }
    for (size_t u = 0; u < BIG_USERS; u++)
        ASSERT_EQ(it_routes_of(redis, users[u]), 0);
    ASSERT_TRUE(!leased(gw_c));

    b->n = BATCH_MAX;
    t0 = im_mono_ms();
    r = sbatch_ok(CONNECT, b);
    printf("     Connect of 1000 sessions of 100 users: %" PRIu64 " ms\n", im_mono_ms() - t0);
    for (size_t i = 0; i < BATCH_MAX; i++) {
        const Im__V1__SessionResult *res = r->results[i];
        size_t u = big_user(i);

        accepted(CONNECT, r, i, i < BIG_USERS);
        ASSERT_STR_EQ(str(res->groups_error), "");
        same_groups(res, want[u], n_want[u], i);
        if (i < BIG_USERS) { /* and as Group.Mine lists them */
            mine(users[u], ids, 8, &n);
            same_groups(res, ids, n, i);
        }
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    for (size_t u = 0; u < BIG_USERS; u++)
        ASSERT_EQ(it_routes_of(redis, users[u]), BATCH_MAX / BIG_USERS);
    ASSERT_TRUE(leased(gw_c));

    t0 = im_mono_ms();
    r = sbatch_ok(DISCONNECT, b);
    printf("     Disconnect of 1000 sessions: %" PRIu64 " ms\n", im_mono_ms() - t0);
    for (size_t i = 0; i < BATCH_MAX; i++)
        accepted(DISCONNECT, r, i, i >= BATCH_MAX - BIG_USERS);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    for (size_t u = 0; u < BIG_USERS; u++)
        ASSERT_EQ(it_routes_of(redis, users[u]), 0);
    it_drain_deliveries(&fan, 300);
    b->n = BATCH_MAX + 1;
    sbatch_free(b);
}

/* Connect of (user, gw, "<tag>-1") and (user, gw, "<tag>-2") on logic l:
 * both routed, and both with groups_error starting with "db_unavailable";
 * then Disconnect of both unroutes them. */
static void connect_without_db(it_logic_t *l, uint64_t user, const char *gw, const char *tag)
{
    sbatch_t *b = sbatch_new(3);
    Im__V1__SessionBatchResponse *r;
    char sid[32];
    uint64_t t0;

    for (int i = 1; i <= 2; i++) {
        snprintf(sid, sizeof(sid), "%s-%d", tag, i);
        sbatch_add(b, user, gw, sid);
    }
    sbatch_add(b, 0, gw, "nobody-1");
    t0 = im_mono_ms();
    r = sbatch_ok_on(l, CONNECT, b);
    printf("     Connect without the database (%s): %" PRIu64 " ms, groups_error \"%s\"\n", tag,
           im_mono_ms() - t0, str(r->results[0]->groups_error));
    for (size_t i = 0; i < 2; i++) {
        accepted(CONNECT, r, i, i == 0);
        if (!it_starts_with(r->results[i]->groups_error, "db_unavailable"))
            IM__FAIL("result %zu: groups_error \"%s\", want \"db_unavailable...\"", i,
                     str(r->results[i]->groups_error));
        ASSERT_EQ(r->results[i]->n_group_ids, 0);
        ASSERT_TRUE(routed(user, gw, b->sids[i]));
    }
    refused(r, 2, IM_RPC_INVALID_ARGUMENT, "bad_user: ");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = sbatch_ok_on(l, DISCONNECT, b);
    accepted(DISCONNECT, r, 0, 0);
    accepted(DISCONNECT, r, 1, 1);
    refused(r, 2, IM_RPC_INVALID_ARGUMENT, "bad_user: ");
    protobuf_c_message_free_unpacked(&r->base, NULL);
    ASSERT_EQ(it_routes_of(redis, user), 0);
    sbatch_free(b);
}

/* A loopback TCP port nobody listens on (bound, then closed). */
static unsigned closed_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    unsigned port;

    ASSERT_GE(fd, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ASSERT_EQ(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Runs `infra.sh <args>` for our state dir (inherited IM_STATE_DIR). */
static void infra(const char *args)
{
    char cmd[1024];

    snprintf(cmd, sizeof(cmd), "%s %s >/dev/null 2>&1", infra_sh, args);
    ASSERT_EQ(system(cmd), 0);
}

/* (f) Without MariaDB, Connect still routes each session (Online needs
 * only Redis) and says the groups are missing, so that the gateway closes
 * the session rather than let it miss its group messages: on a logic that
 * never reached the database, and on one whose database went away under
 * it.  Once MariaDB is back, Connect lists the groups again. */
TEST(connect_with_the_database_down_still_routes_and_says_so)
{
    uint64_t u = it_new_user(&lg, "nodb"), g = it_new_group(&lg, u);
    char port[16];
    const char *extra[] = {"--mysql-port", port, NULL};
    sbatch_t *b = sbatch_new(1);
    Im__V1__SessionBatchResponse *r;

    /* A logic whose MySQL port is closed. */
    snprintf(port, sizeof(port), "%u", closed_port());
    ASSERT_TRUE(it_logic_start(&nodb, extra));
    connect_without_db(&nodb, u, fan.gw_a, "never");
    ASSERT_TRUE(it_logic_stop(&nodb));

    /* MariaDB stopped under the running logic (its workers hold connections). */
    im_mysql_close(db);
    db = NULL;
    infra("stop mariadb");
    connect_without_db(&lg, u, fan.gw_b, "gone");
    infra("up");
    ASSERT_EQ(it_env_load(), IM_OK);
    db = it_mysql_connect("it14");

    /* Back: the groups again (the first call may still meet a dead
     * connection and reconnect for the next). */
    sbatch_add(b, u, fan.gw_a, "back-1");
    for (int i = 0; i < 50; i++) {
        r = sbatch_ok(CONNECT, b);
        accepted(CONNECT, r, 0, -1);
        if (str(r->results[0]->groups_error)[0] == '\0')
            break;
        protobuf_c_message_free_unpacked(&r->base, NULL);
        it_sleep_ms(100);
    }
    ASSERT_STR_EQ(str(r->results[0]->groups_error), "");
    ASSERT_EQ(r->results[0]->n_group_ids, 1);
    ASSERT_U64_EQ(r->results[0]->group_ids[0], g);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = sbatch_ok(DISCONNECT, b);
    accepted(DISCONNECT, r, 0, 1);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    sbatch_free(b);
}

static void cleanup(void)
{
    it_logic_kill(&nodb);
    it_logic_kill(&lg);
}

int main(int argc, char **argv)
{
    int rc;

    if (argc < 3) {
        fprintf(stderr, "usage: %s <logic binary> <infra.sh>\n", argv[0]);
        return 2;
    }
    lg.bin = nodb.bin = argv[1];
    infra_sh = argv[2];
    if (it_env_load() != IM_OK)
        return 1;
    atexit(cleanup);
    db = it_mysql_connect("it14");
    redis = it_redis_connect("it14");
    amqp = it_amqp_connect("it14");
    if (db == NULL || redis == NULL || amqp == NULL)
        return 1;
    if (!it_fanout_open(&fan, amqp, "it14"))
        return 1;
    if (!it_logic_start(&lg, NULL))
        return 1;
    RUN(empty_batch_gets_no_results);
    RUN(connect_answers_each_session_as_online_would_with_its_groups);
    RUN(disconnect_takes_each_session_offline_last_for_the_last);
    RUN(presence_reaches_a_peer_after_connect_and_after_disconnect);
    RUN(presence_of_a_batch_reaches_each_users_own_peers);
    RUN(batch_size_limit);
    RUN(connect_with_the_database_down_still_routes_and_says_so);
    if (!it_logic_stop_checked(&lg))
        return 1;
    sbatch_free(mixed);
    im_mysql_close(db);
    im_redis_close(redis);
    im_amqp_close(amqp);
    rc = im_test_done();
    if (rc == 0) {
        unlink(lg.log_path);
        unlink(nodb.log_path);
    } else {
        fprintf(stderr, "logic's log: %s (without a database: %s)\n", lg.log_path, nodb.log_path);
    }
    return rc;
}
