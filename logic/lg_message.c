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
#define RECORD_MAX 192

/* Users known to exist, so a direct send need not ask MySQL each time.
 * Set-associative (USER_CACHE_WAYS per set): a direct-mapped table of this
 * size let two busy recipients that share a slot evict each other on every
 * send, which cost a SELECT per send for ~1 in 9 of them with 2,000 users.
 * An entry is trusted for USER_CACHE_MS (users are never removed, only
 * soft-deleted, which does not stop delivery today). */
#define USER_CACHE_SETS 4096 /* a power of two */
#define USER_CACHE_WAYS 4
#define USER_CACHE_MS 60000
typedef struct {
    uint64_t id[USER_CACHE_SETS][USER_CACHE_WAYS];
    uint64_t until_ms[USER_CACHE_SETS][USER_CACHE_WAYS];
} user_cache_t;

static size_t user_cache_set(uint64_t id)
{
    return (size_t)(id * 0x9E3779B97F4A7C15ull >> 40) & (USER_CACHE_SETS - 1);
}

static bool user_cached(const user_cache_t *c, uint64_t id, uint64_t now)
{
    size_t s = user_cache_set(id);

    for (int w = 0; w < USER_CACHE_WAYS; w++)
        if (c->id[s][w] == id)
            return c->until_ms[s][w] > now;
    return false;
}

/* Refreshes id's way if it has one, else takes the way that expires first
 * (an empty or expired one before any live one). */
static void user_cache_put(user_cache_t *c, uint64_t id, uint64_t now)
{
    size_t s = user_cache_set(id);
    int victim = 0;

    for (int w = 0; w < USER_CACHE_WAYS; w++) {
        if (c->id[s][w] == id) {
            victim = w;
            break;
        }
        if (c->until_ms[s][w] < c->until_ms[s][victim])
            victim = w;
    }
    c->id[s][victim] = id;
    c->until_ms[s][victim] = now + USER_CACHE_MS;
}

/* Claims the dedup keys of a batch of sends and, in the common case, hands
 * out their seqs in the same round trip.  KEYS[1] holds "<run_id>
 * <check_until_ms>": until then, claims must also be checked against the
 * table, because this server (ARGV[2] is its run_id) may have lost records.
 * Then, per send, KEYS[3i-1] its dedup key, KEYS[3i] its sender's deleted
 * mark and KEYS[3i+1] its conversation's seq hash (LG_SEQ_LUA).  ARGV[1] is
 * how long a "pending" claim lasts (ms), ARGV[3] the time (unix ms), ARGV[4]
 * the lease a takeover gets (ms), ARGV[5] how long a "sending" record lasts
 * (ms), ARGV[6] the end of its lease (unix ms), ARGV[7] the seq leases' low
 * mark (lg_seq_low_mark()), then per send ARGV[3i+5..7] its id, conversation
 * and time.
 *
 * Outside a check window a send whose conversation has a seq to hand out is
 * claimed straight into "sending <id> <conv> <seq> <ts> <lease end>" (it
 * will be published); otherwise into "pending" (the caller checks the table,
 * takes the seq and writes the "sending" record).  Returns {check_until or ""
 * when KEYS[1] is missing or from another run (the caller computes and sets
 * it), then per send: 4, the seq when claimed as "sending"; 1, "" when claimed
 * "pending"; 0, the key's value when not claimed; 2, "" when the sender's
 * account is deleted; 3, "<id> <conv> <seq> <ts>" when the key was "sending"
 * that message with its lease over: this call now holds it and publishes that
 * same message again; 5, Redis's error when the key is not a string}, then
 * the seq hash keys whose leases run low (seq_store(): lg_seq_note_low()).  A
 * sender's mark is read once per call.  The SETs are pcalls: an error must not
 * abort the script after it claimed keys with seqs that seq_store() has not
 * written yet (Redis keeps a script's writes up to an error). */
static const char claim_lua[] = LG_SEQ_LUA
    "local v = redis.call('GET', KEYS[1]) or ''\n"
    "local rid, untl = string.match(v, '^(%S+) (%d+)$')\n"
    "local out, gone, st, o = {''}, {}, {}, 1\n"
    "local now = tonumber(ARGV[3])\n"
    "local fast = rid == ARGV[2] and tonumber(untl) <= now\n"
    "if rid == ARGV[2] then out[1] = untl end\n"
    "for i = 2, #KEYS, 3 do\n"
    "  local key, del, a = KEYS[i], KEYS[i + 1], 8 + (i - 2)\n"
    "  local code, val = 0, ''\n"
    "  if gone[del] == nil then gone[del] = redis.call('EXISTS', del) == 1 end\n"
    "  if gone[del] then\n"
    "    code = 2\n"
    "  else\n"
    "    local n = fast and seq_peek(st, KEYS[i + 2], ARGV[2]) or nil\n"
    "    local cur\n"
    "    if n then\n"
    "      cur = redis.pcall('SET', key, 'sending ' .. ARGV[a] .. ' ' .. ARGV[a + 1] .. ' ' ..\n"
    "                        n .. ' ' .. ARGV[a + 2] .. ' ' .. ARGV[6],\n"
    "                        'NX', 'PX', ARGV[5], 'GET')\n"
    "    else\n"
    "      cur = redis.pcall('SET', key, 'pending', 'NX', 'PX', ARGV[1], 'GET')\n"
    "    end\n"
    "    if type(cur) == 'table' and cur.err then\n"
    "      code = 5; val = cur.err\n"
    "    elseif not cur then\n"
    "      if n then seq_take(st, KEYS[i + 2]); code = 4; val = n else code = 1 end\n"
    "    else\n"
    "      local rec, lease = string.match(cur, '^sending (.+) (%d+)$')\n"
    "      if rec ~= nil and tonumber(lease) <= now then\n"
    "        redis.call('SET', key, 'sending ' .. rec .. ' ' ..\n"
    "                   string.format('%.0f', now + tonumber(ARGV[4])), 'KEEPTTL')\n"
    "        code = 3; val = rec\n"
    "      else\n"
    "        val = cur\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  out[o + 1] = code; out[o + 2] = val; o = o + 2\n"
    "end\n"
    "for _, k in ipairs(seq_store(st, tonumber(ARGV[7]))) do out[#out + 1] = k end\n"
    "return out\n";

/* Deletes the keys (KEYS) that still say "pending": claims this call made
 * and will not publish.  A claim that expired meanwhile may be another
 * call's by now, and stays. */
static const char release_lua[] =
    "for i = 1, #KEYS do\n"
    "  if redis.call('GET', KEYS[i]) == 'pending' then redis.call('DEL', KEYS[i]) end\n"
    "end\n"
    "return 0\n";

/* A publish that was not confirmed: each key (KEYS[i]) that still holds the
 * exact "sending" value this call wrote (ARGV[2i]) gets ARGV[2i + 1], the same
 * record with its lease over, for ARGV[1] ms.  A key another call took over
 * meanwhile (its lease ran out first), or already final, is left alone. */
static const char unconfirmed_lua[] =
    "for i = 1, #KEYS do\n"
    "  if redis.call('GET', KEYS[i]) == ARGV[2 * i] then\n"
    "    redis.call('SET', KEYS[i], ARGV[2 * i + 1], 'PX', ARGV[1])\n"
    "  end\n"
    "end\n"
    "return 0\n";

/* Turns the keys this call claimed "pending" (KEYS) into "sending" records
 * (ARGV[1 + i], for ARGV[1] ms) before their messages are published.  Per
 * key: 1 when done, 0 when the key is no longer "pending" (the claim expired
 * and another call took it): that message must not be published. */
static const char sending_lua[] =
    "local out = {}\n"
    "for i = 1, #KEYS do\n"
    "  if redis.call('GET', KEYS[i]) == 'pending' then\n"
    "    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1]); out[i] = 1\n"
    "  else\n"
    "    out[i] = 0\n"
    "  end\n"
    "end\n"
    "return out\n";

struct lg_message_shared_s {
    lg_message_config_t cfg;
    atomic_uint_fast64_t sends, refused, failed, renewed;
    im_hist_t ack_latency; /* Send received -> answered after the confirm */
    pthread_mutex_t stripes[LG_SEND_STRIPES];
    im_redis_t *redis; /* publisher thread only */
    im_redis_script_t unconfirmed; /* publisher thread only */
};

struct lg_message_s {
    lg_message_shared_t *sh;
    im_mysql_t *db;
    im_redis_t *redis;
    lg_seq_t *seq;
    lg_session_t *sessions;
    im_redis_script_t claim, sending, release;
    user_cache_t users; /* recipients known to exist */
    lg_target_t target;
    im_mysql_stmt_t *find_sent[IM_MYSQL_IN_SIZES];  /* prepared on first use */
    im_mysql_stmt_t *find_users[IM_MYSQL_IN_SIZES]; /* likewise */
    im_mysql_stmt_t *newest;
};

static const struct {
    size_t offset;
    const char *sql;
} statements[] = {
    {offsetof(lg_message_t, newest), "SELECT COALESCE(MAX(id), 0) FROM messages"},
};

lg_message_shared_t *lg_message_shared_new(const lg_message_config_t *cfg)
{
    lg_message_shared_t *sh = im_calloc(1, sizeof(*sh));

    sh->cfg = *cfg;
    if (sh->cfg.dedup_ttl_ms == 0)
        sh->cfg.dedup_ttl_ms = LG_DEDUP_TTL_MS;
    sh->unconfirmed = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(unconfirmed_lua);
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
    m->sending = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(sending_lua);
    m->release = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(release_lua);
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
        "# TYPE im_logic_send_failed_total counter\nim_logic_send_failed_total %" PRIu64 "\n"
        "# HELP im_logic_seq_leases_renewed_total Conversations' seq leases renewed before "
        "they ran out.\n"
        "# TYPE im_logic_seq_leases_renewed_total counter\n"
        "im_logic_seq_leases_renewed_total %" PRIu64 "\n",
        (uint64_t)atomic_load(&sh->sends), (uint64_t)atomic_load(&sh->refused),
        (uint64_t)atomic_load(&sh->failed), (uint64_t)atomic_load(&sh->renewed));

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
    for (size_t k = 0; k < IM_MYSQL_IN_SIZES; k++) {
        im_mysql_stmt_free(m->find_sent[k]);
        im_mysql_stmt_free(m->find_users[k]);
    }
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

/* Puts the recipients of ids[0..n) (n <= IM_MYSQL_IN_MAX) that exist into the
 * cache, in one query.  Returns its result. */
static im_err_t warm_chunk(lg_message_t *m, const uint64_t *ids, size_t n, uint64_t now)
{
    im_mysql_stmt_t *st;
    size_t rows;
    im_err_t rc;

    rc = im_mysql_in_stmt(m->db, m->find_users,
                          "SELECT id FROM users WHERE deleted_at_ms IS NULL AND id IN (", "?", n,
                          ")", &st, &rows);
    if (rc != IM_OK)
        return rc;
    for (size_t i = 0; i < rows; i++) /* unused places repeat the first id */
        im_mysql_bind_u64(st, (unsigned)i, ids[i < n ? i : 0]);
    rc = im_mysql_stmt_exec(st);
    while (rc == IM_OK && (rc = im_mysql_stmt_next(st)) == IM_OK)
        user_cache_put(&m->users, im_mysql_col_u64(st, 0), now);
    return rc == IM_ENOENT ? IM_OK : rc;
}

/* Looks up the recipients of reqs[0..n) that are not cached, 64 per query,
 * so that a cold cache (a new worker, or a minute without their messages)
 * costs a query per 64 recipients instead of one per send.  Those not found
 * stay out of the cache: check_target() then says why, one by one.  A failed
 * query is not reported here: the one-by-one checks that follow meet the same
 * database and report it. */
static void warm_users(lg_message_t *m, const Im__V1__SendRequest *const *reqs, size_t n)
{
    uint64_t ids[IM_MYSQL_IN_MAX], now = im_mono_ms();
    size_t k = 0;

    for (size_t i = 0; i < n; i++) {
        uint64_t id = reqs[i]->to_user;
        bool seen = false;

        if (id == 0 || reqs[i]->to_group != 0 || user_cached(&m->users, id, now))
            continue;
        for (size_t j = 0; j < k && !seen; j++)
            seen = ids[j] == id;
        if (seen)
            continue;
        ids[k++] = id;
        if (k == IM_MYSQL_IN_MAX) {
            if (warm_chunk(m, ids, k, now) != IM_OK)
                return;
            k = 0;
        }
    }
    if (k > 1) /* one alone is check_target()'s own query */
        warm_chunk(m, ids, k, now);
}

/* ------------------------------------------------------------ a call's sends */

/* One send of a call, from admission to its answer. */
typedef struct {
    const Im__V1__SendRequest *req; /* the call's: valid until the call is completed */
    im_rpc_code_t code;             /* IM_RPC_OK: accepted, or answered as a duplicate */
    char *error;                    /* the refusal's status message */
    bool go;                        /* its dedup key is claimed: to be published */
    bool dup;                       /* a retry of an accepted send: resp is the original */
    bool again;                     /* publishes the message of an earlier unconfirmed try */
    bool sending;                   /* key holds this call's "sending" record of msg */
    uint64_t lease_until;           /* of the "sending" record this call holds in key */
    Im__V1__SendResponse resp;
    Im__V1__ChatMessage msg;
    char conv[CONV_MAX + 1];
    char key[KEY_MAX];
    lg_route_t *routes; /* a direct message to publish: where to deliver it */
    size_t n_routes;
} item_t;

/* The sends of one call (Send: one; SendBatch: its list), freed once it is
 * answered: now, when none is to be published, else from the confirm. */
typedef struct {
    lg_message_shared_t *sh;
    im_rpc_call_t *call;
    bool many; /* SendBatch */
    uint64_t start_us;
    size_t n, n_go;
    item_t *items;
} batch_t;

static void refuse(lg_message_shared_t *sh, item_t *it, im_rpc_code_t code, const char *error)
{
    it->code = code;
    im_free(it->error);
    it->error = im_strdup(error);
    it->go = false;
    atomic_fetch_add(&sh->refused, 1);
}

static void batch_free(batch_t *b)
{
    for (size_t i = 0; i < b->n; i++) {
        im_free(b->items[i].error);
        im_free(b->items[i].routes);
    }
    im_free(b->items);
    im_free(b);
}

/* Completes the call with every send's outcome, and frees b. */
static void answer(batch_t *b)
{
    if (!b->many) {
        item_t *it = &b->items[0];

        if (it->code != IM_RPC_OK)
            im_rpc_fail(b->call, it->code, it->error);
        else
            im_rpc_reply(b->call, &it->resp.base);
    } else {
        Im__V1__SendBatchResponse resp = IM__V1__SEND_BATCH_RESPONSE__INIT;
        Im__V1__SendResult *res = im_calloc(b->n ? b->n : 1, sizeof(*res));
        Im__V1__SendResult **ptrs = im_calloc(b->n ? b->n : 1, sizeof(*ptrs));

        for (size_t i = 0; i < b->n; i++) {
            im__v1__send_result__init(&res[i]);
            res[i].code = (uint32_t)b->items[i].code;
            if (b->items[i].code != IM_RPC_OK)
                res[i].error = b->items[i].error;
            else
                res[i].response = &b->items[i].resp;
            ptrs[i] = &res[i];
        }
        resp.results = ptrs;
        resp.n_results = b->n;
        im_rpc_reply(b->call, &resp.base);
        im_free(ptrs);
        im_free(res);
    }
    if (b->n_go > 0)
        im_hist_observe_us(&b->sh->ack_latency, im_mono_ns() / 1000 - b->start_us);
    batch_free(b);
}

/* ------------------------------------------------------------ dedup */

/* Reads a "<id> <conv> <seq> <ts>" record into it's duplicate answer.  False
 * if it does not parse. */
static bool dup_from_record(item_t *it, const char *rec)
{
    char conv[CONV_MAX + 1];
    uint64_t id, seq;
    int64_t ts;

    if (sscanf(rec, "%" SCNu64 " %48s %" SCNu64 " %" SCNd64, &id, conv, &seq, &ts) != 4)
        return false;
    snprintf(it->conv, sizeof(it->conv), "%s", conv);
    it->dup = true;
    it->resp.id = id;
    it->resp.conv = it->conv;
    it->resp.seq = seq;
    it->resp.created_at_ms = ts;
    it->resp.duplicate = true;
    return true;
}

/* This Redis run may lack the dedup records of every message sent up to 24 h
 * before it started: until 24 h after the newest stored message (its id
 * holds its time), claims are also checked against the table.  Records it
 * in LG_DEDUP_SINCE_KEY for the run.  On a database error: 24 h from now. */
static uint64_t check_until(lg_message_t *m, const char *run_id)
{
    uint64_t until = im_wall_ms() + m->sh->cfg.dedup_ttl_ms;
    im_err_t rc = im_mysql_stmt_exec(m->newest);
    char value[96];

    if (rc == IM_OK && (rc = im_mysql_stmt_next(m->newest)) == IM_OK) {
        uint64_t newest = im_mysql_col_u64(m->newest, 0);
        until = newest ? im_id_unix_ms(newest) + m->sh->cfg.dedup_ttl_ms : 0;
    }
    im_log_info("send: redis run %.8s: dedup is also checked in MySQL until %" PRIu64
                " (unix ms)", run_id, until);
    snprintf(value, sizeof(value), "%s %" PRIu64, run_id, until);
    if (im_redis_command(m->redis, NULL, "SET %s %s", LG_DEDUP_SINCE_KEY, value) != IM_OK)
        im_log_warn("send: recording the dedup check window failed");
    return until;
}

/* The "sending <id> <conv> <seq> <ts> <lease until>" value of it's message. */
static void sending_value(const item_t *it, uint64_t until, char out[RECORD_MAX])
{
    snprintf(out, RECORD_MAX, "sending %" PRIu64 " %s %" PRIu64 " %" PRId64 " %" PRIu64,
             it->msg.id, it->conv, it->msg.seq, it->msg.created_at_ms, until);
}

/* How long a "sending" record holds its key against retries: longer than a
 * publish may wait to go out, plus a confirm's round trip. */
static unsigned lease_ms(const lg_message_shared_t *sh)
{
    return 2 * sh->cfg.publish_timeout_ms + 5000;
}

/* The key held "sending <rec>" whose lease had ended: the try that wrote it
 * was not confirmed (the broker went away, or its logic instance died), so
 * its message may or may not be in the queue.  This send publishes that same
 * message again (same id, seq and time): the writer stores an id once, and the
 * client gets the id that is stored either way. */
static void take_over(lg_message_shared_t *sh, item_t *it, const char *rec, uint64_t until)
{
    char conv[CONV_MAX + 1];
    uint64_t id, seq;
    int64_t ts;

    if (rec == NULL ||
        sscanf(rec, "%" SCNu64 " %48s %" SCNu64 " %" SCNd64, &id, conv, &seq, &ts) != 4) {
        refuse(sh, it, IM_RPC_ABORTED, "in_progress: the same message is being sent, retry");
        return;
    }
    if (strcmp(conv, it->conv) != 0) {
        refuse(sh, it, IM_RPC_INVALID_ARGUMENT,
               "client_msg_id_reused: this client_msg_id was sent to another conversation");
        return;
    }
    it->lease_until = until; /* as claim_lua wrote it */
    it->go = true;
    it->again = true;
    it->msg.id = id;
    it->msg.seq = seq;
    it->msg.created_at_ms = ts;
}

/* Deletes the claimed keys of the sends that will not be published after
 * all, while they still say "pending" (release_lua).  One script. */
static void release_keys(lg_message_t *m, char *const *keys, size_t n)
{
    im_err_t rc;

    if (n == 0)
        return;
    rc = im_redis_eval(m->redis, &m->release, (int)n, (int)n, (const char *const *)keys, NULL,
                       NULL);
    if (rc != IM_OK)
        im_log_warn("send: releasing %zu dedup keys: %s (they expire in %d s)", n,
                    im_strerror(rc), LG_DEDUP_PENDING_MS / 1000);
}
/* Claims the dedup keys of the sends admitted so far, in one script (see
 * claim_lua), under the stripe locks of their conversations: those claimed
 * get go, the others an answer (duplicate) or a refusal.  Each admitted send
 * gets its id and time first; a send claimed as "sending" also has its seq
 * and is ready to publish.  Sets *check_db when Redis may have lost records
 * (every claim is then "pending"). */
static void claim_all(lg_message_t *m, batch_t *b, bool *check_db)
{
    size_t k = 0, nargs, nkeys, at = 1;
    char ttl[16], now[24], lease[16], sending_ttl[16], until[24], low[24];
    char (*deleted)[40], (*seqkeys)[LG_SEQ_KEY_MAX], (*nums)[2][24];
    uint64_t now_ms = im_wall_ms(), until_ms = now_ms + lease_ms(m->sh);
    const char **args, *run_id = NULL;
    im_redis_reply_t *rep = NULL;
    im_err_t rc;

    *check_db = false;
    for (size_t i = 0; i < b->n; i++)
        k += b->items[i].code == IM_RPC_OK && !b->items[i].dup;
    if (k == 0)
        return;
    nkeys = 1 + 3 * k;
    nargs = nkeys + 7 + 3 * k;
    args = im_malloc(nargs * sizeof(*args));
    deleted = im_malloc(k * sizeof(*deleted));
    seqkeys = im_malloc(k * sizeof(*seqkeys));
    nums = im_malloc(k * sizeof(*nums));
    args[0] = LG_DEDUP_SINCE_KEY;
    for (size_t i = 0, j = 0; i < b->n; i++) {
        item_t *it = &b->items[i];
        const char **a = args + nkeys + 7 + 3 * j;

        if (it->code != IM_RPC_OK || it->dup)
            continue;
        it->msg.id = im_id_next(m->sh->cfg.ids);
        it->msg.created_at_ms = (int64_t)now_ms;
        snprintf(it->key, KEY_MAX, "im:dedup:%" PRIu64 ":%s", it->req->sender,
                 it->req->client_msg_id);
        snprintf(deleted[j], sizeof(deleted[j]), LG_DELETED_KEY,
                 (unsigned long long)it->req->sender);
        lg_seq_key(it->conv, seqkeys[j]);
        snprintf(nums[j][0], sizeof(nums[j][0]), "%" PRIu64, it->msg.id);
        snprintf(nums[j][1], sizeof(nums[j][1]), "%" PRId64, it->msg.created_at_ms);
        args[1 + 3 * j] = it->key;
        args[2 + 3 * j] = deleted[j];
        args[3 + 3 * j] = seqkeys[j];
        a[0] = nums[j][0];
        a[1] = it->conv;
        a[2] = nums[j][1];
        j++;
    }
    snprintf(ttl, sizeof(ttl), "%d", LG_DEDUP_PENDING_MS);
    snprintf(now, sizeof(now), "%" PRIu64, now_ms);
    snprintf(lease, sizeof(lease), "%u", lease_ms(m->sh));
    snprintf(sending_ttl, sizeof(sending_ttl), "%" PRIu64, m->sh->cfg.dedup_ttl_ms);
    snprintf(until, sizeof(until), "%" PRIu64, until_ms);
    snprintf(low, sizeof(low), "%" PRIu64, lg_seq_low_mark(m->seq));
    if (!im_redis_is_open(m->redis))
        im_redis_reconnect(m->redis);
    rc = im_redis_run_id(m->redis, &run_id);
    args[nkeys] = ttl;
    args[nkeys + 1] = run_id;
    args[nkeys + 2] = now;
    args[nkeys + 3] = lease;
    args[nkeys + 4] = sending_ttl;
    args[nkeys + 5] = until;
    args[nkeys + 6] = low;
    if (rc == IM_OK)
        rc = im_redis_eval(m->redis, &m->claim, (int)nkeys, (int)nargs, args, NULL, &rep);
    if (rc == IM_OK && im_redis_reply_count(rep) < 1 + 2 * k)
        rc = IM_EPARSE;
    if (rc == IM_OK)
        lg_seq_note_low(m->seq, rep, 1 + 2 * k);
    if (rc != IM_OK) {
        im_log_warn("send: redis: %s (%s)", im_strerror(rc), im_redis_error(m->redis));
        if (!im_redis_is_open(m->redis))
            im_redis_reconnect(m->redis);
    }
    for (size_t i = 0; i < b->n; i++) {
        item_t *it = &b->items[i];
        const char *value;
        long long got;

        if (it->code != IM_RPC_OK || it->dup)
            continue;
        if (rc != IM_OK) {
            refuse(b->sh, it, IM_RPC_UNAVAILABLE, "redis_unavailable: try again");
            continue;
        }
        got = im_redis_reply_int(im_redis_reply_elem(rep, at));
        value = im_redis_reply_str(im_redis_reply_elem(rep, at + 1), NULL);
        at += 2;
        if (got == 4 && im_redis_reply_u64(im_redis_reply_elem(rep, at - 1), &it->msg.seq) ==
                            IM_OK) {
            it->go = true;
            it->sending = true;
            it->lease_until = until_ms;
        } else if (got == 4) { /* cannot happen: the script formats the seq */
            refuse(b->sh, it, IM_RPC_INTERNAL, "internal: bad seq from the dedup claim");
        } else if (got == 1) {
            it->go = true;
        } else if (got == 3) {
            take_over(b->sh, it, value, now_ms + lease_ms(b->sh));
        } else if (got == 2) {
            refuse(b->sh, it, IM_RPC_PERMISSION_DENIED, "user_deleted: this account was deleted");
        } else if (got == 5) {
            im_log_error("send: dedup key %s: %s", it->key, value ? value : "?");
            refuse(b->sh, it, IM_RPC_INTERNAL, "internal: the dedup record is unusable");
        } else if (value == NULL || strcmp(value, "pending") == 0 || !dup_from_record(it, value)) {
            refuse(b->sh, it, IM_RPC_ABORTED,
                   "in_progress: the same message is being sent, retry");
        }
    }
    if (rc == IM_OK) {
        const char *since = im_redis_reply_str(im_redis_reply_elem(rep, 0), NULL);
        bool any_go = false;

        for (size_t i = 0; i < b->n; i++)
            any_go |= b->items[i].go;
        if (any_go) {
            uint64_t check = since && *since ? strtoull(since, NULL, 10) : check_until(m, run_id);

            *check_db = now_ms < check; /* the script's clock: its choice of path */
        }
    }
    im_redis_reply_free(rep);
    im_free(nums);
    im_free(seqkeys);
    im_free(deleted);
    im_free(args);
}

/* Looks up the sends at[0..n) (n <= IM_MYSQL_IN_MAX) in the table: each one
 * found becomes a duplicate answer.  Returns the query's result. */
static im_err_t find_chunk(lg_message_t *m, item_t **at, size_t n)
{
    size_t rows;
    im_mysql_stmt_t *st;
    im_err_t rc;

    rc = im_mysql_in_stmt(m->db, m->find_sent,
                          "SELECT id, conv_id, seq, created_at_ms, sender_id, client_msg_id "
                          "FROM messages WHERE (sender_id, client_msg_id) IN (",
                          "(?,?)", n, ")", &st, &rows);
    if (rc != IM_OK)
        return rc;
    for (size_t i = 0; i < rows; i++) { /* unused places repeat the first pair */
        const Im__V1__SendRequest *req = at[i < n ? i : 0]->req;

        im_mysql_bind_u64(st, (unsigned)(2 * i), req->sender);
        im_mysql_bind_str(st, (unsigned)(2 * i + 1), req->client_msg_id,
                          strlen(req->client_msg_id));
    }
    rc = im_mysql_stmt_exec(st);
    while (rc == IM_OK && (rc = im_mysql_stmt_next(st)) == IM_OK) {
        uint64_t sender = im_mysql_col_u64(st, 4);
        const char *cmid = im_mysql_col_str(st, 5, NULL);

        for (size_t i = 0; i < n; i++) {
            item_t *it = at[i];

            if (it->dup || it->req->sender != sender || strcmp(it->req->client_msg_id, cmid))
                continue;
            it->dup = true;
            snprintf(it->conv, sizeof(it->conv), "%s", im_mysql_col_str(st, 1, NULL));
            it->resp.id = im_mysql_col_u64(st, 0);
            it->resp.conv = it->conv;
            it->resp.seq = im_mysql_col_u64(st, 2);
            it->resp.created_at_ms = im_mysql_col_i64(st, 3);
            it->resp.duplicate = true;
        }
    }
    return rc == IM_ENOENT ? IM_OK : rc;
}

/* The Redis keys may have been lost: the table's unique key is the fallback
 * for every claimed send, up to IM_MYSQL_IN_MAX per query.  Those found are answered
 * as duplicates; on a database error they are refused.  Either way their
 * keys are released. */
static void find_stored_all(lg_message_t *m, batch_t *b)
{
    size_t max = IM_MYSQL_IN_MAX, n = 0;
    item_t **at = im_malloc(max * sizeof(*at));
    char **release = im_calloc(b->n, sizeof(*release));
    size_t n_release = 0;
    char msg[256];

    for (size_t i = 0; i <= b->n; i++) {
        im_rpc_code_t code = IM_RPC_OK;
        im_err_t rc;

        if (i < b->n && b->items[i].go && !b->items[i].again)
            at[n++] = &b->items[i];
        if (n == 0 || (n < max && i < b->n))
            continue;
        rc = find_chunk(m, at, n);
        if (rc != IM_OK)
            code = lg__db_status(m->db, rc, "send: dedup", msg, sizeof(msg));
        for (size_t j = 0; j < n; j++) {
            if (rc != IM_OK)
                refuse(b->sh, at[j], code, msg);
            else if (at[j]->dup)
                at[j]->go = false;
            if (rc != IM_OK || at[j]->dup)
                release[n_release++] = at[j]->key;
        }
        n = 0;
    }
    release_keys(m, release, n_release);
    im_free(release);
    im_free(at);
}

/* ------------------------------------------------------------ confirm */

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
 * after the answer finds the record: the published sends' keys get their
 * records (ok), or, where they still hold this call's "sending" value, the
 * same with the lease over, so that the retry publishes the same message
 * again at once.  One round trip (pipelined SETs, or one script). */
static void record_outcome(batch_t *b, bool ok)
{
    im_redis_t *r = callback_redis(b->sh);
    size_t queued = 0, k = 0;
    char rec[RECORD_MAX];

    if (r == NULL) {
        im_log_warn("send: redis unavailable: %zu dedup keys keep their sending records",
                    b->n_go);
        return;
    }
    if (!ok) {
        /* Only where this call's own "sending" value is still there. */
        const char **args = im_malloc((3 * b->n_go + 1) * sizeof(*args));
        char (*recs)[RECORD_MAX] = im_malloc((b->n_go ? 2 * b->n_go : 1) * sizeof(*recs));
        char ttl[16];
        im_err_t rc;

        snprintf(ttl, sizeof(ttl), "%" PRIu64, b->sh->cfg.dedup_ttl_ms);
        args[b->n_go] = ttl;
        for (size_t i = 0; i < b->n && k < b->n_go; i++) {
            item_t *it = &b->items[i];

            if (!it->go)
                continue;
            /* The value this call holds (written by mark_sending or by
             * claim_lua's takeover, both in this format), and the same
             * with the lease over. */
            sending_value(it, it->lease_until, recs[2 * k]);
            sending_value(it, 0, recs[2 * k + 1]);
            args[k] = it->key;
            args[b->n_go + 1 + 2 * k] = recs[2 * k];
            args[b->n_go + 2 + 2 * k] = recs[2 * k + 1];
            k++;
        }
        rc = im_redis_eval(r, &b->sh->unconfirmed, (int)k, (int)(3 * k + 1), args, NULL, NULL);
        if (rc != IM_OK)
            im_log_warn("send: ending the leases of %zu unconfirmed sends: %s (%s)", k,
                        im_strerror(rc), im_redis_error(r));
        im_free(recs);
        im_free(args);
        return;
    }
    /* The record is the same whoever writes it (a retry that took over
     * publishes this same message), so it is written unconditionally. */
    for (size_t i = 0; i < b->n; i++) {
        item_t *it = &b->items[i];
        im_err_t rc;

        if (!it->go)
            continue;
        snprintf(rec, sizeof(rec), "%" PRIu64 " %s %" PRIu64 " %" PRId64, it->msg.id, it->conv,
                 it->msg.seq, it->msg.created_at_ms);
        rc = im_redis_append(r, "SET %s %s PX %" PRIu64, it->key, rec, b->sh->cfg.dedup_ttl_ms);
        queued += rc == IM_OK;
    }
    for (size_t i = 0; i < queued; i++) {
        im_err_t rc = im_redis_get_reply(r, NULL);

        if (rc != IM_OK)
            im_log_warn("send: updating a dedup key: %s (%s)", im_strerror(rc),
                        im_redis_error(r));
    }
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

/* One delivery of the batch and the routing key it goes to. */
typedef struct {
    char rkey[LG_GATEWAY_ID_MAX + 8];
    Im__V1__Delivery d;
    bool sent;
} out_t;

/* Publishes the deliveries of the published sends: a group message to its
 * group's key, a direct one to each gateway holding the recipient or the
 * sender's other devices.  The deliveries for one key travel together in one
 * Delivery's batch, in the order of the sends. */
static void deliver_all(batch_t *b)
{
    size_t n = 0, cap = 0;
    out_t *outs;
    Im__V1__Delivery **group;

    for (size_t i = 0; i < b->n; i++)
        if (b->items[i].go)
            cap += b->items[i].msg.to_group ? 1 : b->items[i].n_routes;
    if (cap == 0)
        return;
    outs = im_calloc(cap, sizeof(*outs));
    group = im_calloc(cap, sizeof(*group));
    for (size_t i = 0; i < b->n; i++) {
        item_t *it = &b->items[i];

        if (!it->go)
            continue;
        for (size_t r = 0; r < (it->msg.to_group ? 1 : it->n_routes); r++) {
            out_t *o = &outs[n++];

            im__v1__delivery__init(&o->d);
            o->d.message = &it->msg;
            o->d.origin_session = it->req->origin_session;
            if (it->msg.to_group) {
                snprintf(o->rkey, sizeof(o->rkey), "g.%" PRIu64, it->msg.to_group);
            } else {
                snprintf(o->rkey, sizeof(o->rkey), "gw.%.*s", LG_GATEWAY_ID_MAX,
                         it->routes[r].gateway);
                o->d.user_ids = it->routes[r].users;
                o->d.n_user_ids = it->routes[r].n_users;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        Im__V1__Delivery parent = IM__V1__DELIVERY__INIT;
        size_t k = 0;

        if (outs[i].sent)
            continue;
        for (size_t j = i; j < n; j++)
            if (!outs[j].sent && strcmp(outs[j].rkey, outs[i].rkey) == 0) {
                outs[j].sent = true;
                group[k++] = &outs[j].d;
            }
        parent.batch = group;
        parent.n_batch = k;
        lg_message_fanout(b->sh, outs[i].rkey, k == 1 ? group[0] : &parent);
    }
    im_free(group);
    im_free(outs);
}

static void confirm_cb(void *arg, im_err_t result)
{
    batch_t *b = arg;
    char msg[128];

    if (result != IM_OK) {
        atomic_fetch_add(&b->sh->failed, b->n_go);
        snprintf(msg, sizeof(msg), "broker_unavailable: %s, retry with the same client_msg_id",
                 im_strerror(result));
        record_outcome(b, false);
        for (size_t i = 0; i < b->n; i++)
            if (b->items[i].go) {
                b->items[i].code = IM_RPC_UNAVAILABLE;
                b->items[i].error = im_strdup(msg);
            }
        answer(b);
        return;
    }
    for (size_t i = 0; i < b->n; i++) {
        item_t *it = &b->items[i];

        if (!it->go)
            continue;
        it->resp.id = it->msg.id;
        it->resp.conv = it->conv;
        it->resp.seq = it->msg.seq;
        it->resp.created_at_ms = it->msg.created_at_ms;
    }
    /* Deliveries are queued before the sender hears back: its next message
     * (maybe through another logic instance) cannot overtake these. */
    deliver_all(b);
    record_outcome(b, true);
    answer(b);
}

/* ------------------------------------------------------------ send */

static uint32_t conv_hash(const char *conv)
{
    uint32_t h = 2166136261u; /* FNV-1a */

    for (; *conv; conv++)
        h = (h ^ (uint8_t)*conv) * 16777619u;
    return h;
}

/* Where each admitted direct message's recipient and sender's other devices
 * are: one lookup for the batch, before the claim (a send that turns out to
 * be a duplicate wasted its lookup, which is rare). */
static void find_routes(lg_message_t *m, batch_t *b)
{
    lg_route_query_t *q = im_calloc(b->n, sizeof(*q));
    size_t nq = 0;
    im_err_t rc;

    for (size_t i = 0; i < b->n; i++) {
        item_t *it = &b->items[i];

        if (it->code != IM_RPC_OK || it->dup || it->req->to_group)
            continue;
        it->routes = im_calloc(LG_ROUTES_MAX, sizeof(*it->routes));
        q[nq].users[0] = it->req->to_user;
        q[nq].users[1] = it->req->sender;
        q[nq].n_users = it->req->to_user == it->req->sender ? 1 : 2;
        q[nq].out = it->routes;
        nq++;
    }
    rc = nq > 0 ? lg_session_routes_many(m->sessions, q, nq) : IM_OK;
    if (rc != IM_OK)
        im_log_warn("send: routes of %zu messages: %s: no live delivery, recipients sync", nq,
                    im_strerror(rc));
    for (size_t i = 0, j = 0; i < b->n && rc == IM_OK; i++) {
        const item_t *it = &b->items[i];

        if (it->code == IM_RPC_OK && !it->dup && !it->req->to_group)
            b->items[i].n_routes = q[j++].n_out;
    }
    im_free(q);
}

/* Before anything is published: the keys claimed "pending" become
 * "sending <id> <conv> <seq> <ts> <lease until>" records (as claim_lua
 * writes them in the common case), so that a retry
 * after an unknown outcome (the broker or this instance lost before the
 * confirm) publishes the same message again instead of a new one.  A send
 * whose claim was lost meanwhile is refused; when Redis fails, all are (their
 * seqs are skipped: a gap, as when a publish fails). */
static void mark_sending(lg_message_t *m, batch_t *b)
{
    size_t k = 0;
    const char **args;
    char (*recs)[RECORD_MAX], ttl[16];
    uint64_t until = im_wall_ms() + lease_ms(m->sh);
    im_redis_reply_t *rep = NULL;
    im_err_t rc;

    for (size_t i = 0; i < b->n; i++)
        k += b->items[i].go && !b->items[i].again && !b->items[i].sending;
    if (k == 0)
        return;
    args = im_malloc((2 * k + 1) * sizeof(*args));
    recs = im_malloc(k * sizeof(*recs));
    snprintf(ttl, sizeof(ttl), "%" PRIu64, m->sh->cfg.dedup_ttl_ms);
    args[k] = ttl;
    for (size_t i = 0, j = 0; i < b->n; i++) {
        item_t *it = &b->items[i];

        if (!it->go || it->again || it->sending)
            continue;
        sending_value(it, until, recs[j]);
        args[j] = it->key;
        args[k + 1 + j] = recs[j];
        j++;
    }
    rc = im_redis_eval(m->redis, &m->sending, (int)k, (int)(2 * k + 1), args, NULL, &rep);
    if (rc == IM_OK && im_redis_reply_count(rep) != k)
        rc = IM_EPARSE;
    if (rc != IM_OK) {
        im_log_warn("send: redis: %s (%s)", im_strerror(rc), im_redis_error(m->redis));
        if (!im_redis_is_open(m->redis))
            im_redis_reconnect(m->redis);
    }
    for (size_t i = 0, j = 0; i < b->n; i++) {
        item_t *it = &b->items[i];

        if (!it->go || it->again || it->sending)
            continue;
        if (rc != IM_OK)
            refuse(b->sh, it, IM_RPC_UNAVAILABLE, "redis_unavailable: try again");
        else if (im_redis_reply_int(im_redis_reply_elem(rep, j)) != 1)
            refuse(b->sh, it, IM_RPC_ABORTED,
                   "in_progress: the same message is being sent, retry");
        else {
            it->lease_until = until;
            it->sending = true;
        }
        j++;
    }
    im_redis_reply_free(rep);
    im_free(recs);
    im_free(args);
}

/* The stripe locks of the conversations of the sends admitted so far (go:
 * only those still to publish), as a mask. */
static uint64_t stripes_of(const batch_t *b, bool go)
{
    uint64_t stripes = 0;

    _Static_assert(LG_SEND_STRIPES <= 64, "stripes are a 64-bit mask");
    for (size_t i = 0; i < b->n; i++) {
        const item_t *it = &b->items[i];

        if (go ? it->go : it->code == IM_RPC_OK && !it->dup)
            stripes |= 1ull << (conv_hash(it->conv) % LG_SEND_STRIPES);
    }
    return stripes;
}

/* In index order: two batches never wait for each other in a cycle. */
static void lock_stripes(lg_message_shared_t *sh, uint64_t stripes)
{
    for (unsigned s = 0; s < LG_SEND_STRIPES; s++)
        if (stripes & (1ull << s))
            pthread_mutex_lock(&sh->stripes[s]);
}

static void unlock_stripes(lg_message_shared_t *sh, uint64_t stripes)
{
    for (unsigned s = 0; s < LG_SEND_STRIPES; s++)
        if (stripes & (1ull << s))
            pthread_mutex_unlock(&sh->stripes[s]);
}

/* Seqs for the sends claimed "pending", and one persistent publish
 * of all to go; the confirm answers the call.  Called under the stripe locks
 * (stripes) of their conversations, which it releases: seqs are taken and
 * the batch submitted under them, and the publisher sends in submit order, so
 * this instance's messages of a conversation reach the queue and the gateways
 * in seq order.  Returns false when none is left to publish (the caller
 * answers). */
static bool publish_all(lg_message_t *m, batch_t *b, uint64_t stripes)
{
    Im__V1__ChatBatch batch = IM__V1__CHAT_BATCH__INIT;
    const char **convs = im_calloc(b->n, sizeof(*convs));
    uint64_t *seqs = im_calloc(b->n, sizeof(*seqs));
    im_err_t *errs = im_calloc(b->n, sizeof(*errs));
    Im__V1__ChatMessage **msgs = im_calloc(b->n, sizeof(*msgs));
    char (*release)[KEY_MAX] = NULL, **keys; /* keys of sends refused here */
    size_t k = 0, n_release = 0;

    for (size_t i = 0; i < b->n; i++)
        if (b->items[i].go && !b->items[i].again && !b->items[i].sending)
            convs[k++] = b->items[i].conv;
    lg_seq_next_many(m->seq, convs, k, seqs, errs);
    k = 0;
    b->n_go = 0;
    for (size_t i = 0, j = 0; i < b->n; i++) {
        item_t *it = &b->items[i];

        if (!it->go || it->again || it->sending)
            continue;
        if (errs[j] != IM_OK) {
            im_log_warn("send: seq for %s: %s", it->conv, im_strerror(errs[j]));
            refuse(b->sh, it, IM_RPC_UNAVAILABLE, "seq_unavailable: try again");
            if (release == NULL)
                release = im_calloc(b->n, sizeof(*release));
            memcpy(release[n_release++], it->key, KEY_MAX); /* b may be gone by then */
            j++;
            continue;
        }
        it->msg.seq = seqs[j++]; /* its id and time are claim_all()'s */
    }
    mark_sending(m, b);
    for (size_t i = 0; i < b->n; i++)
        if (b->items[i].go) {
            msgs[k++] = &b->items[i].msg;
            b->n_go++;
        }
    if (k > 0) {
        size_t len;
        uint8_t *buf;

        batch.messages = msgs;
        batch.n_messages = k;
        len = im__v1__chat_batch__get_packed_size(&batch);
        buf = im_malloc(len);
        im__v1__chat_batch__pack(&batch, buf);
        /* From here the confirm callback owns b (it may run at once). */
        lg_publisher_submit(m->sh->cfg.publisher, "", m->sh->cfg.queue, buf, len, true,
                            m->sh->cfg.publish_timeout_ms, confirm_cb, b);
        im_free(buf);
    }
    unlock_stripes(m->sh, stripes);
    /* Out of the locks: order does not matter here, and Redis may be slow. */
    keys = im_calloc(n_release ? n_release : 1, sizeof(*keys));
    for (size_t i = 0; i < n_release; i++)
        keys[i] = release[i];
    release_keys(m, keys, n_release);
    im_free(keys);
    im_free(release);
    im_free(msgs);
    im_free(errs);
    im_free(seqs);
    im_free(convs);
    return k > 0;
}

/* Serves a Send (many false) or a SendBatch. */
static void send_calls(lg_message_t *m, im_rpc_call_t *call, bool many)
{
    const ProtobufCMessage *req = im_rpc_call_request(call);
    const Im__V1__SendRequest *one = (const Im__V1__SendRequest *)req;
    const Im__V1__SendRequest *const *reqs;
    batch_t *b;
    size_t n;
    char msg[256];
    bool check_db;
    uint64_t stripes;

    if (many) {
        reqs = (const Im__V1__SendRequest *const *)((const Im__V1__SendBatchRequest *)req)->sends;
        n = ((const Im__V1__SendBatchRequest *)req)->n_sends;
        if (n > LG_SEND_BATCH_MAX) {
            snprintf(msg, sizeof(msg), "batch_too_large: at most %d sends per call",
                     LG_SEND_BATCH_MAX);
            im_rpc_fail(call, IM_RPC_INVALID_ARGUMENT, msg);
            return;
        }
    } else {
        reqs = &one;
        n = 1;
    }
    atomic_fetch_add(&m->sh->sends, n);
    b = im_calloc(1, sizeof(*b));
    b->sh = m->sh;
    b->call = call;
    b->many = many;
    b->start_us = im_mono_ns() / 1000;
    b->n = n;
    b->items = im_calloc(n ? n : 1, sizeof(*b->items));
    warm_users(m, reqs, n);
    for (size_t i = 0; i < n; i++) {
        item_t *it = &b->items[i];
        im_rpc_code_t code;

        it->req = reqs[i];
        im__v1__send_response__init(&it->resp);
        code = lg_message_validate(it->req, m->sh->cfg.max_body, msg, sizeof(msg));
        if (code == IM_RPC_OK)
            code = check_target(m, it->req, it->conv, msg, sizeof(msg));
        if (code != IM_RPC_OK) {
            refuse(m->sh, it, code, msg);
            continue;
        }
        im__v1__chat_message__init(&it->msg);
        it->msg.conv = it->conv;
        it->msg.sender = it->req->sender;
        it->msg.client_msg_id = it->req->client_msg_id;
        it->msg.body = it->req->body;
        it->msg.to_user = it->req->to_user;
        it->msg.to_group = it->req->to_group;
    }
    find_routes(m, b);
    /* The claim hands out seqs: under the locks, which publish_all() releases. */
    stripes = stripes_of(b, false);
    lock_stripes(m->sh, stripes);
    claim_all(m, b, &check_db);
    if (check_db) {
        /* Every claim is "pending": no seq was handed out yet. */
        unlock_stripes(m->sh, stripes);
        find_stored_all(m, b);
        stripes = stripes_of(b, true);
        lock_stripes(m->sh, stripes);
    }
    if (!publish_all(m, b, stripes))
        answer(b);
    /* b may be gone.  Leases that ran low are renewed now, after this call's
     * sends are on their way, so that later ones do not wait for a lease. */
    atomic_fetch_add(&m->sh->renewed, lg_seq_prefetch(m->seq));
}

void lg_message_send(lg_message_t *m, im_rpc_call_t *call)
{
    send_calls(m, call, false);
}

void lg_message_send_batch(lg_message_t *m, im_rpc_call_t *call)
{
    send_calls(m, call, true);
}
