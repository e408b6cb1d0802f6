#include "lg_message.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im.pb-c.h"
#include "im_alloc.h"
#include "im_log.h"
#include "im_metrics.h"
#include "im_time.h"
#include "im_utf8.h"
#include "lg_auth.h"
#include "lg_target.h"

#define CONV_MAX 48
#define KEY_MAX (32 + 20 + LG_CLIENT_MSG_ID_MAX)
#define RECORD_MAX 128

/* Users known to exist, so a direct send need not ask MySQL each time.
 * Direct-mapped; an entry is trusted for USER_CACHE_MS (users are never
 * removed, only soft-deleted, which does not stop delivery today). */
#define USER_CACHE_SIZE 4096
#define USER_CACHE_MS 60000
typedef struct {
    uint64_t id[USER_CACHE_SIZE];
    uint64_t until_ms[USER_CACHE_SIZE];
} user_cache_t;

static bool user_cached(const user_cache_t *c, uint64_t id, uint64_t now)
{
    size_t i = (size_t)(id * 0x9E3779B97F4A7C15ull >> 52) % USER_CACHE_SIZE;

    return c->id[i] == id && c->until_ms[i] > now;
}

static void user_cache_put(user_cache_t *c, uint64_t id, uint64_t now)
{
    size_t i = (size_t)(id * 0x9E3779B97F4A7C15ull >> 52) % USER_CACHE_SIZE;

    c->id[i] = id;
    c->until_ms[i] = now + USER_CACHE_MS;
}

/* Claims KEYS[1] ("pending", NX, ARGV[1] ms).  KEYS[2] holds
 * "<run_id> <check_until_ms>": until then, claims must also be checked
 * against the table, because this server (ARGV[2] is its run_id) may have
 * lost records.  Returns {1, check_until} when claimed, {1, ""} when claimed
 * but KEYS[2] is missing or from another run (the caller computes and sets
 * it), {0, current value} when not claimed, {2, ""} when the sender's
 * account is deleted (KEYS[3] exists). */
static const char claim_lua[] =
    "if redis.call('EXISTS', KEYS[3]) == 1 then return {2, ''} end\n" /* sender deleted */
    "if not redis.call('SET', KEYS[1], 'pending', 'NX', 'PX', ARGV[1]) then\n"
    "  return {0, redis.call('GET', KEYS[1]) or ''}\n"
    "end\n"
    "local v = redis.call('GET', KEYS[2]) or ''\n"
    "local rid, untl = string.match(v, '^(%S+) (%d+)$')\n"
    "if rid ~= ARGV[2] then return {1, ''} end\n"
    "return {1, untl}\n";

struct lg_message_shared_s {
    lg_message_config_t cfg;
    atomic_uint_fast64_t sends, refused, failed;
    im_hist_t ack_latency; /* Send received -> answered after the confirm */
    pthread_mutex_t stripes[LG_SEND_STRIPES];
    im_redis_t *redis; /* publisher thread only */
};

struct lg_message_s {
    lg_message_shared_t *sh;
    im_mysql_t *db;
    im_redis_t *redis;
    lg_seq_t *seq;
    lg_session_t *sessions;
    im_redis_script_t claim;
    user_cache_t users; /* recipients known to exist */
    lg_target_t target;
    im_mysql_stmt_t *find_sent;
    im_mysql_stmt_t *newest;
};

/* One accepted message waiting for its confirm; freed by the callback. */
typedef struct {
    lg_message_shared_t *sh;
    im_rpc_call_t *call;
    Im__V1__ChatMessage msg;
    char conv[CONV_MAX + 1];
    char key[KEY_MAX];
    char *body;
    char *client_msg_id;
    char *origin_session;
    uint64_t start_us;
    lg_route_t routes[LG_ROUTES_MAX]; /* direct messages: where to deliver */
    size_t n_routes;
} pending_t;

static const struct {
    size_t offset;
    const char *sql;
} statements[] = {
    {offsetof(lg_message_t, newest), "SELECT COALESCE(MAX(id), 0) FROM messages"},
    {offsetof(lg_message_t, find_sent),
     "SELECT id, conv_id, seq, created_at_ms FROM messages "
     "WHERE sender_id = ? AND client_msg_id = ?"},
};

lg_message_shared_t *lg_message_shared_new(const lg_message_config_t *cfg)
{
    lg_message_shared_t *sh = im_calloc(1, sizeof(*sh));

    sh->cfg = *cfg;
    for (size_t i = 0; i < LG_SEND_STRIPES; i++)
        pthread_mutex_init(&sh->stripes[i], NULL);
    return sh;
}

void lg_message_shared_free(lg_message_shared_t *sh)
{
    if (sh == NULL)
        return;
    for (size_t i = 0; i < LG_SEND_STRIPES; i++)
        pthread_mutex_destroy(&sh->stripes[i]);
    im_redis_close(sh->redis);
    im_free(sh);
}

im_err_t lg_message_new(lg_message_shared_t *sh, im_mysql_t *db, im_redis_t *redis,
                        lg_seq_t *seq, lg_session_t *sessions, lg_message_t **out)
{
    lg_message_t *m = im_calloc(1, sizeof(*m));

    m->sh = sh;
    m->db = db;
    m->redis = redis;
    m->seq = seq;
    m->sessions = sessions;
    m->claim = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(claim_lua);
    for (size_t i = 0; i < sizeof(statements) / sizeof(statements[0]); i++) {
        im_mysql_stmt_t **st = (im_mysql_stmt_t **)(void *)((char *)m + statements[i].offset);
        im_err_t rc = im_mysql_prepare(db, statements[i].sql, st);

        if (rc != IM_OK) {
            lg_message_free(m);
            return rc;
        }
    }
    if (lg_target_init(&m->target, db) != IM_OK) {
        lg_message_free(m);
        return IM_EIO;
    }
    *out = m;
    return IM_OK;
}

size_t lg_message_format_metrics(lg_message_shared_t *sh, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(
        buf, cap,
        "# HELP im_logic_sends_total Message.Send calls received.\n"
        "# TYPE im_logic_sends_total counter\nim_logic_sends_total %" PRIu64 "\n"
        "# HELP im_logic_send_refused_total Sends refused before publishing (bad input, "
        "not allowed, a server unavailable).\n"
        "# TYPE im_logic_send_refused_total counter\nim_logic_send_refused_total %" PRIu64 "\n"
        "# HELP im_logic_send_failed_total Sends the broker did not confirm.\n"
        "# TYPE im_logic_send_failed_total counter\nim_logic_send_failed_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&sh->sends), (uint64_t)atomic_load(&sh->refused),
        (uint64_t)atomic_load(&sh->failed));

    return n + im_hist_format(&sh->ack_latency, "im_logic_send_ack_seconds",
                              "Send received to answered after the broker's confirm.",
                              n < cap ? buf + n : buf + cap, n < cap ? cap - n : 0);
}

void lg_message_free(lg_message_t *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < sizeof(statements) / sizeof(statements[0]); i++)
        im_mysql_stmt_free(*(im_mysql_stmt_t **)(void *)((char *)m + statements[i].offset));
    lg_target_free(&m->target);
    im_free(m);
}

/* ------------------------------------------------------------ validation */

static bool client_msg_id_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > LG_CLIENT_MSG_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return false;
    return true;
}

im_rpc_code_t lg_message_validate(const Im__V1__SendRequest *req, size_t max_body, char *msg,
                                  size_t msglen)
{
    size_t len = strlen(req->body);

    if (req->sender == 0)
        snprintf(msg, msglen, "bad_sender: sender is required");
    else if ((req->to_user != 0) == (req->to_group != 0))
        snprintf(msg, msglen, "bad_target: exactly one of to_user and to_group is required");
    else if (len == 0)
        snprintf(msg, msglen, "empty_body: the body is empty");
    else if (len > max_body)
        snprintf(msg, msglen, "body_too_large: the body is over %zu bytes", max_body);
    else if (!im_utf8_valid(req->body, len))
        snprintf(msg, msglen, "bad_utf8: the body is not valid UTF-8");
    else if (!client_msg_id_ok(req->client_msg_id))
        snprintf(msg, msglen, "bad_client_msg_id: 1..%d printable ASCII characters",
                 LG_CLIENT_MSG_ID_MAX);
    else
        return IM_RPC_OK;
    return IM_RPC_INVALID_ARGUMENT;
}

/* The conversation of a send: "g:<group>" or "d:<lower>:<higher>". */
static im_rpc_code_t conv_of(const Im__V1__SendRequest *req, char *conv)
{
    if (req->to_group) {
        snprintf(conv, CONV_MAX + 1, "g:%" PRIu64, req->to_group);
    } else {
        uint64_t lo = req->sender < req->to_user ? req->sender : req->to_user;
        uint64_t hi = req->sender < req->to_user ? req->to_user : req->sender;
        snprintf(conv, CONV_MAX + 1, "d:%" PRIu64 ":%" PRIu64, lo, hi);
    }
    return IM_RPC_OK;
}

/* Checks that the target exists and the sender may write to it; sets conv. */
static im_rpc_code_t check_target(lg_message_t *m, const Im__V1__SendRequest *req, char *conv,
                                  char *msg, size_t msglen)
{
    uint64_t now = im_mono_ms();
    im_rpc_code_t code;

    if (req->to_user && user_cached(&m->users, req->to_user, now))
        return conv_of(req, conv);
    code = lg_target_check(&m->target, req->sender, req->to_user, req->to_group, "send: target",
                           msg, msglen);
    if (code != IM_RPC_OK)
        return code;
    if (req->to_user)
        user_cache_put(&m->users, req->to_user, now);
    return conv_of(req, conv);
}

/* ------------------------------------------------------------ dedup */

static void reply_duplicate(im_rpc_call_t *call, uint64_t id, const char *conv, uint64_t seq,
                            int64_t ts)
{
    Im__V1__SendResponse resp = IM__V1__SEND_RESPONSE__INIT;

    resp.id = id;
    resp.conv = (char *)conv;
    resp.seq = seq;
    resp.created_at_ms = ts;
    resp.duplicate = true;
    im_rpc_reply(call, &resp.base);
}

/* Answers from a "<id> <conv> <seq> <ts>" record.  False if it does not parse. */
static bool reply_from_record(im_rpc_call_t *call, const char *rec)
{
    char conv[CONV_MAX + 1];
    uint64_t id, seq;
    int64_t ts;

    if (sscanf(rec, "%" SCNu64 " %48s %" SCNu64 " %" SCNd64, &id, conv, &seq, &ts) != 4)
        return false;
    reply_duplicate(call, id, conv, seq, ts);
    return true;
}

static im_rpc_code_t redis_status(lg_message_t *m, im_err_t rc, char *msg, size_t msglen)
{
    im_log_warn("send: redis: %s (%s)", im_strerror(rc), im_redis_error(m->redis));
    if (!im_redis_is_open(m->redis))
        im_redis_reconnect(m->redis);
    snprintf(msg, msglen, "redis_unavailable: try again");
    return IM_RPC_UNAVAILABLE;
}

/* This Redis run may lack the dedup records of every message sent up to 24 h
 * before it started: until 24 h after the newest stored message (its id
 * holds its time), claims are also checked against the table.  Records it
 * in LG_DEDUP_SINCE_KEY for the run.  On a database error: 24 h from now. */
static uint64_t check_until(lg_message_t *m, const char *run_id)
{
    uint64_t until = im_wall_ms() + LG_DEDUP_TTL_MS;
    im_err_t rc = im_mysql_stmt_exec(m->newest);
    char value[96];

    if (rc == IM_OK && (rc = im_mysql_stmt_next(m->newest)) == IM_OK) {
        uint64_t newest = im_mysql_col_u64(m->newest, 0);
        until = newest ? im_id_unix_ms(newest) + LG_DEDUP_TTL_MS : 0;
    }
    im_log_info("send: redis run %.8s: dedup is also checked in MySQL until %" PRIu64
                " (unix ms)", run_id, until);
    snprintf(value, sizeof(value), "%s %" PRIu64, run_id, until);
    if (im_redis_command(m->redis, NULL, "SET %s %s", LG_DEDUP_SINCE_KEY, value) != IM_OK)
        im_log_warn("send: recording the dedup check window failed");
    return until;
}

/* Claims key for this send.  Returns IM_RPC_OK with *claimed true when the
 * caller goes on (*check_db: Redis may have lost records, ask the table
 * too), or with *claimed false when the call was answered as a duplicate;
 * another code (msg set) otherwise. */
static im_rpc_code_t claim(lg_message_t *m, im_rpc_call_t *call, uint64_t sender, const char *key,
                           bool *claimed, bool *check_db, char *msg, size_t msglen)
{
    char ttl[16], deleted[40];
    const char *run_id = NULL, *args[5];
    const char *second;
    im_redis_reply_t *rep = NULL;
    im_err_t rc;

    if (!im_redis_is_open(m->redis))
        im_redis_reconnect(m->redis);
    rc = im_redis_run_id(m->redis, &run_id);
    snprintf(ttl, sizeof(ttl), "%d", LG_DEDUP_TTL_MS);
    snprintf(deleted, sizeof(deleted), LG_DELETED_KEY, (unsigned long long)sender);
    args[0] = key;
    args[1] = LG_DEDUP_SINCE_KEY;
    args[2] = deleted;
    args[3] = ttl;
    args[4] = run_id;
    if (rc == IM_OK)
        rc = im_redis_eval(m->redis, &m->claim, 3, 5, args, NULL, &rep);
    if (rc != IM_OK)
        return redis_status(m, rc, msg, msglen);
    if (im_redis_reply_int(im_redis_reply_elem(rep, 0)) == 2) {
        im_redis_reply_free(rep);
        snprintf(msg, msglen, "user_deleted: this account was deleted");
        return IM_RPC_PERMISSION_DENIED;
    }
    *claimed = im_redis_reply_int(im_redis_reply_elem(rep, 0)) == 1;
    second = im_redis_reply_str(im_redis_reply_elem(rep, 1), NULL);
    if (*claimed) {
        uint64_t until = *second ? strtoull(second, NULL, 10) : check_until(m, run_id);
        *check_db = im_wall_ms() < until;
        im_redis_reply_free(rep);
        return IM_RPC_OK;
    }
    if (strcmp(second, "pending") != 0 && reply_from_record(call, second)) {
        im_redis_reply_free(rep);
        return IM_RPC_OK;
    }
    im_redis_reply_free(rep);
    snprintf(msg, msglen, "in_progress: the same message is being sent, retry");
    return IM_RPC_ABORTED;
}

/* The Redis key may have been lost: the table's unique key is the fallback.
 * Returns IM_RPC_OK with *found set (the call answered when found). */
static im_rpc_code_t find_stored(lg_message_t *m, im_rpc_call_t *call,
                                 const Im__V1__SendRequest *req, bool *found, char *msg,
                                 size_t msglen)
{
    im_mysql_stmt_t *st = m->find_sent;
    im_err_t rc;

    im_mysql_bind_u64(st, 0, req->sender);
    im_mysql_bind_str(st, 1, req->client_msg_id, strlen(req->client_msg_id));
    rc = im_mysql_stmt_exec(st);
    if (rc == IM_OK)
        rc = im_mysql_stmt_next(st);
    *found = rc == IM_OK;
    if (rc == IM_ENOENT)
        return IM_RPC_OK;
    if (rc != IM_OK)
        return lg__db_status(m->db, rc, "send: dedup", msg, msglen);
    reply_duplicate(call, im_mysql_col_u64(st, 0), im_mysql_col_str(st, 1, NULL),
                    im_mysql_col_u64(st, 2), im_mysql_col_i64(st, 3));
    return IM_RPC_OK;
}

/* ------------------------------------------------------------ confirm */

static void pending_free(pending_t *p)
{
    im_free(p->body);
    im_free(p->client_msg_id);
    im_free(p->origin_session);
    im_free(p);
}

/* The publisher thread's own Redis connection, made on first use. */
static im_redis_t *callback_redis(lg_message_shared_t *sh)
{
    if (sh->redis == NULL)
        sh->redis = im_redis_connect(&sh->cfg.redis, NULL, 0);
    else if (!im_redis_is_open(sh->redis))
        im_redis_reconnect(sh->redis);
    return sh->redis != NULL && im_redis_is_open(sh->redis) ? sh->redis : NULL;
}

/* Runs on the publisher thread before the client is answered, so a retry
 * after the answer finds the record. */
static void record_outcome(pending_t *p, bool ok)
{
    im_redis_t *r = callback_redis(p->sh);
    char rec[RECORD_MAX];
    im_err_t rc;

    if (r == NULL) {
        im_log_warn("send: redis unavailable: dedup key %s left to expire", p->key);
        return;
    }
    if (ok) {
        snprintf(rec, sizeof(rec), "%" PRIu64 " %s %" PRIu64 " %" PRId64, p->msg.id, p->conv,
                 p->msg.seq, p->msg.created_at_ms);
        rc = im_redis_command(r, NULL, "SET %s %s PX %d", p->key, rec, LG_DEDUP_TTL_MS);
    } else {
        rc = im_redis_command(r, NULL, "DEL %s", p->key);
    }
    if (rc != IM_OK)
        im_log_warn("send: updating %s: %s (%s)", p->key, im_strerror(rc), im_redis_error(r));
}

static void deliver_done_cb(void *arg, im_err_t result)
{
    (void)arg;
    (void)result; /* transient: an offline gateway catches up by Sync */
}

void lg_message_fanout(lg_message_shared_t *sh, const char *rkey, const Im__V1__Delivery *d)
{
    size_t len = im__v1__delivery__get_packed_size(d);
    uint8_t *buf = im_malloc(len ? len : 1);

    im__v1__delivery__pack(d, buf);
    /* A live delivery that cannot go out within a second is dropped: late,
     * it could overtake nothing but be overtaken (another instance's later
     * message of the same conversation), and the gateways, which lost the
     * broker too, tell their clients to resync anyway. */
    lg_publisher_submit(sh->cfg.publisher, LG_DELIVER_EXCHANGE, rkey, buf, len, false,
                        LG_DELIVER_TIMEOUT_MS, deliver_done_cb, NULL);
    im_free(buf);
}

/* One Delivery per gateway for a direct message, one per group otherwise. */
static void deliver(pending_t *p)
{
    Im__V1__Delivery d = IM__V1__DELIVERY__INIT;
    char rkey[LG_GATEWAY_ID_MAX + 8];

    d.message = &p->msg;
    d.origin_session = p->origin_session;
    if (p->msg.to_group) {
        snprintf(rkey, sizeof(rkey), "g.%" PRIu64, p->msg.to_group);
        lg_message_fanout(p->sh, rkey, &d);
        return;
    }
    for (size_t i = 0; i < p->n_routes; i++) {
        snprintf(rkey, sizeof(rkey), "gw.%.*s", LG_GATEWAY_ID_MAX, p->routes[i].gateway);
        d.user_ids = p->routes[i].users;
        d.n_user_ids = p->routes[i].n_users;
        lg_message_fanout(p->sh, rkey, &d);
    }
}

static void confirm_cb(void *arg, im_err_t result)
{
    pending_t *p = arg;
    Im__V1__SendResponse resp = IM__V1__SEND_RESPONSE__INIT;
    char msg[128];

    if (result != IM_OK) {
        atomic_fetch_add(&p->sh->failed, 1);
        snprintf(msg, sizeof(msg), "broker_unavailable: %s, retry with the same client_msg_id",
                 im_strerror(result));
        record_outcome(p, false);
        im_rpc_fail(p->call, IM_RPC_UNAVAILABLE, msg);
        pending_free(p);
        return;
    }
    resp.id = p->msg.id;
    resp.conv = p->conv;
    resp.seq = p->msg.seq;
    resp.created_at_ms = p->msg.created_at_ms;
    /* Deliveries are queued before the sender hears back: its next message
     * (maybe through another logic instance) cannot overtake this one. */
    deliver(p);
    record_outcome(p, true);
    im_rpc_reply(p->call, &resp.base);
    im_hist_observe_us(&p->sh->ack_latency, im_mono_ns() / 1000 - p->start_us);
    pending_free(p);
}

/* ------------------------------------------------------------ send */

static uint32_t conv_hash(const char *conv)
{
    uint32_t h = 2166136261u; /* FNV-1a */

    for (; *conv; conv++)
        h = (h ^ (uint8_t)*conv) * 16777619u;
    return h;
}

static pending_t *pending_new(lg_message_t *m, im_rpc_call_t *call,
                              const Im__V1__SendRequest *req, const char *conv, const char *key)
{
    pending_t *p = im_calloc(1, sizeof(*p));

    p->sh = m->sh;
    p->call = call;
    p->start_us = im_mono_ns() / 1000;
    snprintf(p->conv, sizeof(p->conv), "%s", conv);
    snprintf(p->key, sizeof(p->key), "%s", key);
    p->body = im_strdup(req->body);
    p->client_msg_id = im_strdup(req->client_msg_id);
    p->origin_session = im_strdup(req->origin_session);
    im__v1__chat_message__init(&p->msg);
    p->msg.conv = p->conv;
    p->msg.sender = req->sender;
    p->msg.client_msg_id = p->client_msg_id;
    p->msg.body = p->body;
    p->msg.to_user = req->to_user;
    p->msg.to_group = req->to_group;
    return p;
}

/* Where the recipient's devices and the sender's other devices are. */
static void find_routes(lg_message_t *m, pending_t *p)
{
    uint64_t users[2] = {p->msg.to_user, p->msg.sender};
    size_t n = p->msg.to_user == p->msg.sender ? 1 : 2;
    im_err_t rc = lg_session_routes(m->sessions, users, n, p->routes, &p->n_routes);

    if (rc != IM_OK)
        im_log_warn("send: routes of %" PRIu64 ": %s: no live delivery, recipients sync",
                    p->msg.to_user, im_strerror(rc));
}

/* Publishes p's message persistently; the confirm completes the call. */
static void publish(lg_message_t *m, pending_t *p)
{
    Im__V1__ChatMessage *one = &p->msg;
    Im__V1__ChatBatch batch = IM__V1__CHAT_BATCH__INIT;
    uint8_t *buf;
    size_t len;

    batch.messages = &one;
    batch.n_messages = 1;
    len = im__v1__chat_batch__get_packed_size(&batch);
    buf = im_malloc(len);
    im__v1__chat_batch__pack(&batch, buf);
    lg_publisher_submit(m->sh->cfg.publisher, "", m->sh->cfg.queue, buf, len, true,
                        m->sh->cfg.publish_timeout_ms, confirm_cb, p);
    im_free(buf);
}

/* Validation, target and dedup.  Returns IM_RPC_OK with *go true when the
 * message is new and key is claimed; IM_RPC_OK with *go false when the call
 * was answered as a duplicate. */
static im_rpc_code_t admit(lg_message_t *m, im_rpc_call_t *call, const Im__V1__SendRequest *req,
                           char *conv, char *key, bool *go, char *msg, size_t msglen)
{
    im_rpc_code_t code = lg_message_validate(req, m->sh->cfg.max_body, msg, msglen);
    bool found, check_db = true;

    *go = false;
    if (code == IM_RPC_OK)
        code = check_target(m, req, conv, msg, msglen);
    if (code != IM_RPC_OK)
        return code;
    snprintf(key, KEY_MAX, "im:dedup:%" PRIu64 ":%s", req->sender, req->client_msg_id);
    code = claim(m, call, req->sender, key, go, &check_db, msg, msglen);
    if (code != IM_RPC_OK || !*go || !check_db)
        return code;
    code = find_stored(m, call, req, &found, msg, msglen);
    if (code == IM_RPC_OK && !found)
        return IM_RPC_OK;
    *go = false;
    /* Stored (answered) or unknown: the key must not say "pending" for a day. */
    im_redis_command(m->redis, NULL, "DEL %s", key);
    return code;
}

void lg_message_send(lg_message_t *m, im_rpc_call_t *call)
{
    const Im__V1__SendRequest *req = (const Im__V1__SendRequest *)im_rpc_call_request(call);
    char conv[CONV_MAX + 1], key[KEY_MAX], msg[256];
    pthread_mutex_t *stripe;
    uint64_t seq = 0;
    bool go;
    im_err_t rc;
    pending_t *p;
    im_rpc_code_t code;

    atomic_fetch_add(&m->sh->sends, 1);
    code = admit(m, call, req, conv, key, &go, msg, sizeof(msg));
    if (code != IM_RPC_OK) {
        atomic_fetch_add(&m->sh->refused, 1);
        im_rpc_fail(call, code, msg);
        return;
    }
    if (!go)
        return;
    p = pending_new(m, call, req, conv, key);
    if (req->to_user)
        find_routes(m, p);
    /* Seq and publish under the conversation's stripe lock: the publisher
     * sends in submit order, so this instance's messages of a conversation
     * reach the queue and the gateways in seq order. */
    stripe = &m->sh->stripes[conv_hash(conv) % LG_SEND_STRIPES];
    pthread_mutex_lock(stripe);
    rc = lg_seq_next(m->seq, conv, &seq);
    if (rc == IM_OK) {
        p->msg.id = im_id_next(m->sh->cfg.ids);
        p->msg.seq = seq;
        p->msg.created_at_ms = (int64_t)im_wall_ms();
        publish(m, p);
    }
    pthread_mutex_unlock(stripe);
    if (rc != IM_OK) {
        im_log_warn("send: seq for %s: %s", conv, im_strerror(rc));
        im_redis_command(m->redis, NULL, "DEL %s", key);
        im_rpc_fail(call, IM_RPC_UNAVAILABLE, "seq_unavailable: try again");
        atomic_fetch_add(&m->sh->refused, 1);
        pending_free(p);
    }
}
