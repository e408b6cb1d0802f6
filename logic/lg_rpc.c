#include "lg_rpc.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im.pb-c.h"
#include "im_alloc.h"
#include "im_log.h"
#include "im_rpc.h"
#include "lg_auth.h"
#include "lg_group.h"
#include "lg_message.h"
#include "lg_notify.h"
#include "lg_seq.h"
#include "lg_session.h"
#include "lg_sync.h"

/* A worker's connections and the objects over them. */
typedef struct session_s {
    struct session_s *next; /* in the free list */
    im_mysql_t *db;
    im_redis_t *redis;
    lg_auth_t *auth;      /* db */
    lg_group_t *group;    /* db */
    lg_sync_t *sync;      /* db */
    lg_notify_t *notify;  /* db */
    lg_session_t *routes; /* redis */
    lg_seq_t *seq;        /* db + redis */
    lg_message_t *message; /* db + redis */
} session_t;

/* What a handler needs of its session. */
enum { NEED_DB = 1, NEED_REDIS = 2 };

struct lg_rpc_s {
    lg_rpc_config_t cfg;
    lg_auth_keys_t keys;
    im_rpc_server_t *server;
    lg_message_shared_t *shared;
    session_t *sessions; /* cfg.n_workers of them */
    session_t *free_list;
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

static session_t *session_take(lg_rpc_t *r)
{
    session_t *s;

    pthread_mutex_lock(&r->lock);
    /* Never waits while handlers <= workers == sessions; kept for safety. */
    while (r->free_list == NULL)
        pthread_cond_wait(&r->cond, &r->lock);
    s = r->free_list;
    r->free_list = s->next;
    pthread_mutex_unlock(&r->lock);
    return s;
}

static void session_give(lg_rpc_t *r, session_t *s)
{
    pthread_mutex_lock(&r->lock);
    s->next = r->free_list;
    r->free_list = s;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* Frees what uses both connections (before either closes). */
static void session_drop_both(session_t *s)
{
    lg_message_free(s->message);
    lg_seq_free(s->seq);
    s->message = NULL;
    s->seq = NULL;
}

static void session_drop_db(session_t *s)
{
    session_drop_both(s);
    lg_auth_free(s->auth);
    lg_group_free(s->group);
    lg_sync_free(s->sync);
    lg_notify_free(s->notify);
    s->notify = NULL;
    im_mysql_close(s->db);
    s->auth = NULL;
    s->group = NULL;
    s->sync = NULL;
    s->db = NULL;
}

static void session_close(session_t *s)
{
    session_drop_db(s);
    lg_session_free(s->routes);
    im_redis_close(s->redis);
    s->routes = NULL;
    s->redis = NULL;
}

/* MySQL connected (or reconnected) and the statements over it prepared. */
static im_err_t ready_db(lg_rpc_t *r, session_t *s)
{
    char err[256];
    im_err_t rc = IM_OK;

    if (s->db == NULL) {
        s->db = im_mysql_connect(&r->cfg.mysql, err, sizeof(err));
        if (s->db == NULL) {
            im_log_warn("rpc: mysql connect failed: %s", err);
            return IM_EUNAVAIL;
        }
    } else if (!im_mysql_is_open(s->db)) {
        rc = im_mysql_reconnect(s->db);
    }
    if (rc == IM_OK && s->auth == NULL) {
        if ((rc = lg_auth_new(s->db, &r->keys, &s->auth)) == IM_OK &&
            (rc = lg_group_new(s->db, r->cfg.ids, &s->group)) == IM_OK &&
            (rc = lg_sync_new(s->db, r->shared, &s->sync)) == IM_OK)
            rc = lg_notify_new(s->db, r->shared, &s->notify);
        if (rc != IM_OK) {
            im_log_warn("rpc: preparing statements: %s (%s)", im_strerror(rc),
                        im_mysql_error(s->db));
            session_drop_db(s); /* start from a fresh connection next time */
        }
    }
    return rc;
}

/* Redis connected once (later losses are handled by its users). */
static im_err_t ready_redis(lg_rpc_t *r, session_t *s)
{
    char err[256];

    if (s->redis == NULL) {
        s->redis = im_redis_connect(&r->cfg.redis, err, sizeof(err));
        if (s->redis == NULL) {
            im_log_warn("rpc: redis connect failed: %s", err);
            return IM_EUNAVAIL;
        }
        s->routes = lg_session_new(s->redis, r->cfg.session_ttl_ms);
    }
    return IM_OK;
}

/* The seq allocator and Send handler, over both connections. */
static im_err_t ready_both(lg_rpc_t *r, session_t *s)
{
    im_err_t rc = IM_OK;

    if (s->message != NULL)
        return IM_OK;
    if ((rc = lg_seq_new(s->redis, s->db, r->cfg.seq_step, &s->seq)) == IM_OK)
        rc = lg_message_new(r->shared, s->db, s->redis, s->seq, s->routes, &s->message);
    if (rc != IM_OK) {
        im_log_warn("rpc: preparing send: %s (%s)", im_strerror(rc), im_mysql_error(s->db));
        session_drop_both(s);
    }
    return rc;
}

/* Connects, reconnects or prepares what need asks for.  Returns IM_RPC_OK, or
 * UNAVAILABLE with msg set when a server cannot be reached. */
static im_rpc_code_t session_ready(lg_rpc_t *r, session_t *s, int need, char *msg, size_t msglen)
{
    if ((need & NEED_DB) && ready_db(r, s) != IM_OK) {
        snprintf(msg, msglen, "db_unavailable: the database is unavailable, try again");
        return IM_RPC_UNAVAILABLE;
    }
    if ((need & NEED_REDIS) && ready_redis(r, s) != IM_OK) {
        snprintf(msg, msglen, "redis_unavailable: redis is unavailable, try again");
        return IM_RPC_UNAVAILABLE;
    }
    if (need == (NEED_DB | NEED_REDIS) && ready_both(r, s) != IM_OK) {
        snprintf(msg, msglen, "db_unavailable: the database is unavailable, try again");
        return IM_RPC_UNAVAILABLE;
    }
    return IM_RPC_OK;
}

static void complete(im_rpc_call_t *call, im_rpc_code_t code, const ProtobufCMessage *resp,
                     const char *msg)
{
    if (code == IM_RPC_OK)
        im_rpc_reply(call, resp);
    else
        im_rpc_fail(call, code, msg);
}

/* A blocking handler: takes a session, readies what it needs, runs
 * fn(s->obj, request, &response), replies, and only then gives the session
 * back, since the response points into obj's buffers. */
#define HANDLER(name, need, obj, fn, ReqT, RespT, ...)                                          \
    static void name##_cb(im_rpc_call_t *call, void *arg)                                          \
    {                                                                                              \
        lg_rpc_t *r = arg;                                                                         \
        RespT resp = __VA_ARGS__;                                                                    \
        char msg[256];                                                                             \
        session_t *s = session_take(r);                                                            \
        im_rpc_code_t code = session_ready(r, s, need, msg, sizeof(msg));                          \
                                                                                                   \
        if (code == IM_RPC_OK)                                                                     \
            code = fn(s->obj, (const ReqT *)im_rpc_call_request(call), &resp, msg, sizeof(msg));   \
        complete(call, code, &resp.base, msg);                                                     \
        session_give(r, s);                                                                        \
    }

#define DB_HANDLER(name, obj, fn, ReqT, RespT, ...)                                               \
    HANDLER(name, NEED_DB, obj, fn, ReqT, RespT, __VA_ARGS__)
#define REDIS_HANDLER(name, fn, RespT, ...)                                                        \
    HANDLER(name, NEED_REDIS, routes, fn, Im__V1__SessionRequest, RespT, __VA_ARGS__)

DB_HANDLER(signup, auth, lg_auth_signup, Im__V1__RegisterRequest, Im__V1__RegisterResponse,
           IM__V1__REGISTER_RESPONSE__INIT)
DB_HANDLER(find_users, auth, lg_auth_find, Im__V1__FindUsersRequest, Im__V1__FindUsersResponse,
           IM__V1__FIND_USERS_RESPONSE__INIT)
DB_HANDLER(members, group, lg_group_members, Im__V1__GroupRequest, Im__V1__MembersResponse,
           IM__V1__MEMBERS_RESPONSE__INIT)
DB_HANDLER(mine, group, lg_group_mine, Im__V1__MyGroupsRequest, Im__V1__MyGroupsResponse,
           IM__V1__MY_GROUPS_RESPONSE__INIT)
DB_HANDLER(sync, sync, lg_sync_sync, Im__V1__SyncRequest, Im__V1__SyncResponse,
           IM__V1__SYNC_RESPONSE__INIT)
DB_HANDLER(history, sync, lg_sync_history, Im__V1__HistoryRequest, Im__V1__HistoryResponse,
           IM__V1__HISTORY_RESPONSE__INIT)
/* Conversations, with whether each direct peer is online now (its routes in
 * Redis; skipped when Redis is away), for clients that connect after the
 * peer did and so never got its presence notice.  The first PEERS_ONLINE_MAX
 * direct conversations are looked up. */
#define PEERS_ONLINE_MAX 100

static void conversations_cb(im_rpc_call_t *call, void *arg)
{
    lg_rpc_t *r = arg;
    Im__V1__ConversationsResponse resp = IM__V1__CONVERSATIONS_RESPONSE__INIT;
    char msg[256];
    session_t *s = session_take(r);
    im_rpc_code_t code = session_ready(r, s, NEED_DB, msg, sizeof(msg));

    if (code == IM_RPC_OK)
        code = lg_sync_conversations(
            s->sync, (const Im__V1__ConversationsRequest *)im_rpc_call_request(call), &resp, msg,
            sizeof(msg));
    if (code == IM_RPC_OK && ready_redis(r, s) == IM_OK) {
        for (size_t i = 0, asked = 0; i < resp.n_conversations && asked < PEERS_ONLINE_MAX; i++) {
            Im__V1__Conversation *c = resp.conversations[i];
            lg_route_t routes[LG_ROUTES_MAX];
            size_t n = 0;

            if (c->peer == 0)
                continue;
            asked++;
            if (lg_session_routes(s->routes, &c->peer, 1, routes, &n) != IM_OK)
                break;
            c->peer_online = n > 0;
        }
    }
    complete(call, code, &resp.base, msg);
    session_give(r, s);
}
REDIS_HANDLER(heartbeat, lg_session_heartbeat, Im__V1__SessionResponse,
              IM__V1__SESSION_RESPONSE__INIT)

/* Login attempts: after LOGIN_FAILS_MAX failures for one username within
 * LOGIN_WINDOW_S (counted in Redis, so across every logic instance), further
 * attempts are refused without checking the password until the window
 * ends; a success clears the count.  With Redis down the limit is not
 * enforced (logged): logins keep working. */
#define LOGIN_FAILS_MAX 10
#define LOGIN_WINDOW_S 900

static void login_key(const char *username, char *key, size_t len)
{
    size_t n = (size_t)snprintf(key, len, "im:login:fail:%s", username);

    for (size_t i = sizeof("im:login:fail:") - 1; i < n && i < len; i++)
        if (key[i] >= 'A' && key[i] <= 'Z')
            key[i] = (char)(key[i] - 'A' + 'a'); /* usernames ignore case */
}

/* Refusal when the username has too many recent failures, else IM_RPC_OK. */
static im_rpc_code_t login_allowed(im_redis_t *redis, const char *key, char *msg, size_t msglen)
{
    im_redis_reply_t *rep = NULL;
    long long fails = 0, ttl = 0;

    if (redis == NULL || im_redis_command(redis, &rep, "GET %s", key) != IM_OK) {
        im_log_warn("rpc: login limit not checked: redis unavailable");
        return IM_RPC_OK;
    }
    if (im_redis_reply_type(rep) == IM_REDIS_STR)
        fails = strtoll(im_redis_reply_str(rep, NULL), NULL, 10);
    im_redis_reply_free(rep);
    if (fails < LOGIN_FAILS_MAX)
        return IM_RPC_OK;
    if (im_redis_command(redis, &rep, "TTL %s", key) == IM_OK) {
        ttl = im_redis_reply_int(rep);
        im_redis_reply_free(rep);
    }
    snprintf(msg, msglen, "too_many_attempts: too many failed logins, try again in %lld s",
             ttl > 0 ? ttl : (long long)LOGIN_WINDOW_S);
    return IM_RPC_RESOURCE_EXHAUSTED;
}

static void login_count(im_redis_t *redis, const char *key, bool failed)
{
    if (redis == NULL)
        return;
    if (!failed) {
        im_redis_command(redis, NULL, "DEL %s", key);
        return;
    }
    /* The window starts at the first failure (NX keeps it from sliding). */
    if (im_redis_command(redis, NULL, "INCR %s", key) == IM_OK)
        im_redis_command(redis, NULL, "EXPIRE %s %d NX", key, LOGIN_WINDOW_S);
}

static void login_cb(im_rpc_call_t *call, void *arg)
{
    lg_rpc_t *r = arg;
    const Im__V1__LoginRequest *req = (const Im__V1__LoginRequest *)im_rpc_call_request(call);
    Im__V1__LoginResponse resp = IM__V1__LOGIN_RESPONSE__INIT;
    char msg[256], key[128];
    session_t *s = session_take(r);
    im_rpc_code_t code = session_ready(r, s, NEED_DB, msg, sizeof(msg));
    im_redis_t *redis = NULL;

    if (code == IM_RPC_OK) {
        redis = ready_redis(r, s) == IM_OK ? s->redis : NULL;
        if (redis != NULL && !im_redis_is_open(redis) && im_redis_reconnect(redis) != IM_OK)
            redis = NULL;
        login_key(req->username, key, sizeof(key));
        code = login_allowed(redis, key, msg, sizeof(msg));
    }
    if (code == IM_RPC_OK) {
        code = lg_auth_login(s->auth, req, &resp, msg, sizeof(msg));
        if (code == IM_RPC_OK || code == IM_RPC_UNAUTHENTICATED)
            login_count(redis, key, code != IM_RPC_OK);
    }
    complete(call, code, &resp.base, msg);
    session_give(r, s);
}

/* DeleteAccount: the mark in MySQL, then one in Redis that refuses the
 * account's sessions and sends while any of its tokens may still be valid. */
static void delete_cb(im_rpc_call_t *call, void *arg)
{
    lg_rpc_t *r = arg;
    const Im__V1__DeleteAccountRequest *req =
        (const Im__V1__DeleteAccountRequest *)im_rpc_call_request(call);
    Im__V1__DeleteAccountResponse resp = IM__V1__DELETE_ACCOUNT_RESPONSE__INIT;
    char msg[256], key[48];
    session_t *s = session_take(r);
    im_rpc_code_t code = session_ready(r, s, NEED_DB | NEED_REDIS, msg, sizeof(msg));

    if (code == IM_RPC_OK)
        code = lg_auth_delete(s->auth, req, &resp, msg, sizeof(msg));
    if (code == IM_RPC_OK) {
        snprintf(key, sizeof(key), LG_DELETED_KEY, (unsigned long long)req->user_id);
        if (!im_redis_is_open(s->redis))
            im_redis_reconnect(s->redis);
        if (im_redis_command(s->redis, NULL, "SET %s 1 EX %lld", key,
                             (long long)r->cfg.token_ttl_s + 60) != IM_OK) {
            /* Deleted in MySQL (login refused); old tokens keep working
             * until they expire.  Say so rather than pretend. */
            im_log_error("rpc: user %llu deleted but not marked in redis: old tokens stay valid",
                         (unsigned long long)req->user_id);
            code = IM_RPC_UNAVAILABLE;
            snprintf(msg, sizeof(msg), "redis_unavailable: the account is deleted, but "
                                       "existing sessions may go on until their tokens expire");
        }
    }
    complete(call, code, &resp.base, msg);
    session_give(r, s);
}

/* Group changes that move a user in or out of a group tell the gateways
 * holding that user (they bind or unbind the group's routing key). */
#define GROUP_CHANGE_HANDLER(name, fn, ReqT, joined)                                               \
    static void name##_cb(im_rpc_call_t *call, void *arg)                                          \
    {                                                                                              \
        lg_rpc_t *r = arg;                                                                         \
        const ReqT *req = (const ReqT *)im_rpc_call_request(call);                                 \
        Im__V1__GroupResponse resp = IM__V1__GROUP_RESPONSE__INIT;                                 \
        char msg[256];                                                                             \
        session_t *s = session_take(r);                                                            \
        im_rpc_code_t code = session_ready(r, s, NEED_DB, msg, sizeof(msg));                       \
                                                                                                   \
        if (code == IM_RPC_OK)                                                                     \
            code = fn(s->group, req, &resp, msg, sizeof(msg));                                     \
        if (code == IM_RPC_OK && resp.group != NULL && ready_redis(r, s) == IM_OK)                 \
            lg_notify_group_event(r->shared, s->routes, resp.group->id, req->user_id, joined);     \
        complete(call, code, &resp.base, msg);                                                     \
        session_give(r, s);                                                                        \
    }

GROUP_CHANGE_HANDLER(create, lg_group_create, Im__V1__CreateGroupRequest, true)
GROUP_CHANGE_HANDLER(join, lg_group_join, Im__V1__GroupRequest, true)
GROUP_CHANGE_HANDLER(leave, lg_group_leave, Im__V1__GroupRequest, false)

/* Online and Offline need only Redis; when the user's first session came
 * or its last went, its peers and groups are told (if MySQL is there to say
 * who they are). */
static void session_change(im_rpc_call_t *call, lg_rpc_t *r, bool online)
{
    const Im__V1__SessionRequest *req = (const Im__V1__SessionRequest *)im_rpc_call_request(call);
    Im__V1__SessionResponse resp = IM__V1__SESSION_RESPONSE__INIT;
    char msg[256];
    session_t *s = session_take(r);
    im_rpc_code_t code = session_ready(r, s, NEED_REDIS, msg, sizeof(msg));

    uint64_t user = req->user_id; /* req goes with the call */

    if (code == IM_RPC_OK)
        code = online ? lg_session_online(s->routes, req, &resp, msg, sizeof(msg))
                      : lg_session_offline(s->routes, req, &resp, msg, sizeof(msg));
    complete(call, code, &resp.base, msg);
    if (code == IM_RPC_OK && (online ? resp.first : resp.last) && ready_db(r, s) == IM_OK)
        lg_notify_presence(s->notify, s->routes, user, online);
    session_give(r, s);
}

/* Connect's groups: those of every routed session's user, in one query per
 * 64 users; groups_error on the sessions when the database fails. */
static void connect_groups(session_t *s, const Im__V1__SessionBatchRequest *req,
                           Im__V1__SessionResult *res, bool db_ok)
{
    uint64_t *users = im_calloc(req->n_sessions ? req->n_sessions : 1, sizeof(*users));
    lg_membership_t *rows = NULL;
    size_t n = 0, n_rows = 0;
    char msg[256];
    im_rpc_code_t code = IM_RPC_UNAVAILABLE;

    snprintf(msg, sizeof(msg), "db_unavailable: the database is unavailable");
    for (size_t i = 0; i < req->n_sessions; i++)
        if (res[i].code == IM_RPC_OK)
            users[n++] = req->sessions[i]->user_id;
    if (n > 0 && db_ok)
        code = lg_group_ids_of(s->group, users, n, &rows, &n_rows, msg, sizeof(msg));
    for (size_t i = 0; n > 0 && i < req->n_sessions; i++) {
        uint64_t user = req->sessions[i]->user_id;
        size_t lo = 0, hi = n_rows;

        if (res[i].code != IM_RPC_OK)
            continue;
        if (code != IM_RPC_OK) {
            res[i].groups_error = im_strdup(msg);
            continue;
        }
        while (lo < hi) { /* the user's first row */
            size_t mid = lo + (hi - lo) / 2;

            if (rows[mid].user < user)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (hi = lo; hi < n_rows && rows[hi].user == user; hi++)
            ;
        res[i].group_ids = im_calloc(hi > lo ? hi - lo : 1, sizeof(uint64_t));
        for (size_t g = lo; g < hi; g++)
            res[i].group_ids[g - lo] = rows[g].group;
        res[i].n_group_ids = hi - lo;
    }
    im_free(rows);
    im_free(users);
}

/* Connect (online true: Online and Mine, or only Online with routes_only)
 * or Disconnect (Offline) for each session of a batch.  Presence goes out
 * after the answer, as for one. */
static void session_batch(im_rpc_call_t *call, lg_rpc_t *r, bool online)
{
    const Im__V1__SessionBatchRequest *req =
        (const Im__V1__SessionBatchRequest *)im_rpc_call_request(call);
    Im__V1__SessionBatchResponse resp = IM__V1__SESSION_BATCH_RESPONSE__INIT;
    size_t n = req->n_sessions;
    Im__V1__SessionResult *res, **ptrs;
    Im__V1__SessionResponse *sres;
    uint64_t *notify;
    size_t n_notify = 0;
    char msg[256];
    session_t *s;
    im_rpc_code_t code;
    bool db_ok;

    if (n > LG_SESSION_BATCH_MAX) {
        snprintf(msg, sizeof(msg), "batch_too_large: at most %d sessions per call",
                 LG_SESSION_BATCH_MAX);
        im_rpc_fail(call, IM_RPC_INVALID_ARGUMENT, msg);
        return;
    }
    s = session_take(r);
    if ((code = session_ready(r, s, NEED_REDIS, msg, sizeof(msg))) != IM_RPC_OK) {
        im_rpc_fail(call, code, msg);
        session_give(r, s);
        return;
    }
    db_ok = ready_db(r, s) == IM_OK;
    res = im_calloc(n ? n : 1, sizeof(*res));
    ptrs = im_calloc(n ? n : 1, sizeof(*ptrs));
    sres = im_calloc(n ? n : 1, sizeof(*sres));
    notify = im_calloc(n ? n : 1, sizeof(*notify));
    for (size_t i = 0; i < n; i++) {
        const Im__V1__SessionRequest *sr = req->sessions[i];

        im__v1__session_result__init(&res[i]);
        im__v1__session_response__init(&sres[i]);
        ptrs[i] = &res[i];
        code = online ? lg_session_online(s->routes, sr, &sres[i], msg, sizeof(msg))
                      : lg_session_offline(s->routes, sr, &sres[i], msg, sizeof(msg));
        res[i].code = (uint32_t)code;
        if (code != IM_RPC_OK) {
            res[i].error = im_strdup(msg);
            continue;
        }
        res[i].session = &sres[i];
        if (online ? sres[i].first : sres[i].last)
            notify[n_notify++] = sr->user_id;
    }
    if (online && !req->routes_only)
        connect_groups(s, req, res, db_ok);
    resp.results = ptrs;
    resp.n_results = n;
    im_rpc_reply(call, &resp.base);
    if (n_notify > 0 && db_ok)
        lg_notify_presence_many(s->notify, s->routes, notify, n_notify, online);
    session_give(r, s);
    for (size_t i = 0; i < n; i++) { /* ours, unless still the init's defaults */
        if (res[i].code != IM_RPC_OK)
            im_free(res[i].error);
        if (res[i].groups_error != NULL && res[i].groups_error[0] != '\0')
            im_free(res[i].groups_error);
        im_free(res[i].group_ids);
    }
    im_free(notify);
    im_free(sres);
    im_free(ptrs);
    im_free(res);
}

static void connect_cb(im_rpc_call_t *call, void *arg)
{
    session_batch(call, arg, true);
}

static void disconnect_cb(im_rpc_call_t *call, void *arg)
{
    session_batch(call, arg, false);
}

static void online_cb(im_rpc_call_t *call, void *arg)
{
    session_change(call, arg, true);
}

static void offline_cb(im_rpc_call_t *call, void *arg)
{
    session_change(call, arg, false);
}

/* A handler that needs the database and uses routes when Redis is there:
 * fn(s->obj, routes or NULL, request, &response).  Typing (may the user
 * write there? then tell the target) and MarkRead (the mark needs only the
 * database; the receipt of a direct conversation is routed through Redis). */
#define DB_ROUTES_HANDLER(name, obj, fn, ReqT, RespT, ...)                                         \
    static void name##_cb(im_rpc_call_t *call, void *arg)                                          \
    {                                                                                              \
        lg_rpc_t *r = arg;                                                                         \
        RespT resp = __VA_ARGS__;                                                                  \
        char msg[256];                                                                             \
        session_t *s = session_take(r);                                                            \
        im_rpc_code_t code = session_ready(r, s, NEED_DB, msg, sizeof(msg));                       \
                                                                                                   \
        if (code == IM_RPC_OK)                                                                     \
            code = fn(s->obj, ready_redis(r, s) == IM_OK ? s->routes : NULL,                       \
                      (const ReqT *)im_rpc_call_request(call), &resp, msg, sizeof(msg));           \
        complete(call, code, &resp.base, msg);                                                     \
        session_give(r, s);                                                                        \
    }

DB_ROUTES_HANDLER(typing, notify, lg_notify_typing, Im__V1__TypingRequest, Im__V1__TypingResponse,
                  IM__V1__TYPING_RESPONSE__INIT)
DB_ROUTES_HANDLER(mark_read, sync, lg_sync_mark_read, Im__V1__MarkReadRequest,
                  Im__V1__MarkReadResponse, IM__V1__MARK_READ_RESPONSE__INIT)

/* Send and SendBatch complete their calls themselves: now when nothing is
 * to be published, later on the confirm. */
static void send_common(im_rpc_call_t *call, lg_rpc_t *r, bool many)
{
    char msg[256];
    session_t *s = session_take(r);
    im_rpc_code_t code = session_ready(r, s, NEED_DB | NEED_REDIS, msg, sizeof(msg));

    if (code != IM_RPC_OK)
        im_rpc_fail(call, code, msg);
    else if (many)
        lg_message_send_batch(s->message, call);
    else
        lg_message_send(s->message, call);
    session_give(r, s);
}

static void send_cb(im_rpc_call_t *call, void *arg)
{
    send_common(call, arg, false);
}

static void send_batch_cb(im_rpc_call_t *call, void *arg)
{
    send_common(call, arg, true);
}

/* HMAC only: cheap enough for the completion-queue thread. */
static void verify_token_cb(im_rpc_call_t *call, void *arg)
{
    lg_rpc_t *r = arg;
    Im__V1__VerifyTokenResponse resp = IM__V1__VERIFY_TOKEN_RESPONSE__INIT;
    im_jwt_claims_t claims;
    char msg[256];
    im_rpc_code_t code = lg_auth_verify_token(
        &r->keys, (const Im__V1__VerifyTokenRequest *)im_rpc_call_request(call), &resp, &claims,
        msg, sizeof(msg));

    complete(call, code, &resp.base, msg);
}

/* In the order of the methods in proto/im.proto (= the descriptors'). */
static const im_rpc_method_t auth_methods[] = {
    {signup_cb, true},
    {login_cb, true},
    {verify_token_cb, false},
    {delete_cb, true},
    {find_users_cb, true},
};
static const im_rpc_method_t group_methods[] = {
    {create_cb, true}, {join_cb, true}, {leave_cb, true}, {members_cb, true}, {mine_cb, true},
};
static const im_rpc_method_t message_methods[] = {
    {send_cb, true},          {sync_cb, true},   {history_cb, true}, {mark_read_cb, true},
    {conversations_cb, true}, {typing_cb, true},  {send_batch_cb, true},
};
static const im_rpc_method_t session_methods[] = {
    {online_cb, true},     {offline_cb, true},    {heartbeat_cb, true},
    {connect_cb, true},    {disconnect_cb, true},
};

static im_err_t add_service(lg_rpc_t *r, const ProtobufCServiceDescriptor *sd,
                            const im_rpc_method_t *methods)
{
    return im_rpc_server_add_service(r->server, sd, methods, r);
}

lg_rpc_t *lg_rpc_new(const lg_rpc_config_t *cfg)
{
    lg_rpc_t *r = im_calloc(1, sizeof(*r));
    im_err_t rc;

    r->cfg = *cfg;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    r->sessions = im_calloc(cfg->n_workers, sizeof(*r->sessions));
    for (unsigned i = 0; i < cfg->n_workers; i++)
        session_give(r, &r->sessions[i]);
    rc = lg_auth_keys_init(&r->keys, cfg->secret, cfg->secret_len, cfg->token_ttl_s, cfg->ids);
    if (rc != IM_OK) {
        im_log_error("rpc: hashing the dummy password: %s", im_strerror(rc));
        lg_rpc_free(r);
        return NULL;
    }
    r->shared = lg_message_shared_new(&(lg_message_config_t){
        .queue = cfg->queue,
        .max_body = cfg->max_body,
        .publish_timeout_ms = cfg->publish_timeout_ms,
        .dedup_ttl_ms = cfg->dedup_ttl_ms,
        .publisher = cfg->publisher,
        .ids = cfg->ids,
        .redis = cfg->redis,
    });
    r->server = im_rpc_server_new(cfg->listen, 1, cfg->n_workers);
    if ((rc = add_service(r, &im__v1__auth__descriptor, auth_methods)) != IM_OK ||
        (rc = add_service(r, &im__v1__group__descriptor, group_methods)) != IM_OK ||
        (rc = add_service(r, &im__v1__message__descriptor, message_methods)) != IM_OK ||
        (rc = add_service(r, &im__v1__session__descriptor, session_methods)) != IM_OK) {
        im_log_error("rpc: registering services: %s", im_strerror(rc));
        lg_rpc_free(r);
        return NULL;
    }
    return r;
}

im_err_t lg_rpc_start(lg_rpc_t *r, unsigned *port)
{
    const char *colon = strrchr(r->cfg.listen, ':');
    int host_len = colon ? (int)(colon - r->cfg.listen) : (int)strlen(r->cfg.listen);
    unsigned bound = 0;
    im_err_t rc = im_rpc_server_start(r->server, &bound);

    if (rc != IM_OK) {
        im_log_error("logic: cannot listen on %s: %s", r->cfg.listen, im_strerror(rc));
        return rc;
    }
    im_log_info("logic: grpc listening on %.*s:%u", host_len, r->cfg.listen, bound);
    if (port != NULL)
        *port = bound;
    return IM_OK;
}

struct lg_message_shared_s *lg_rpc_message_shared(lg_rpc_t *r)
{
    return r->shared;
}

void lg_rpc_stop(lg_rpc_t *r, unsigned grace_ms)
{
    if (r != NULL && r->server != NULL)
        im_rpc_server_stop(r->server, grace_ms);
}

void lg_rpc_free(lg_rpc_t *r)
{
    if (r == NULL)
        return;
    im_rpc_server_free(r->server); /* joins the workers: no session is in use now */
    for (unsigned i = 0; i < r->cfg.n_workers; i++)
        session_close(&r->sessions[i]);
    im_free(r->sessions);
    lg_message_shared_free(r->shared);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    im_free(r);
}
