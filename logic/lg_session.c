#include "lg_session.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

#define ROUTE_TTL_MS (7LL * 24 * 3600 * 1000)
#define KEY_MAX 48
#define MEMBER_MAX (LG_GATEWAY_ID_MAX + 1 + LG_SESSION_ID_MAX + 1)

/* The gateway part of a route member "<gateway>/<session>", or nil. */
#define LUA_GATEWAY_OF "local function gw_of(m) return string.match(m, '^(.*)/[^/]*$') end\n"
/* Live members other than ARGV[1] of KEYS[1], removing the dead ones. */
#define LUA_COUNT_LIVE                                                                             \
    "local live = 0\n"                                                                             \
    "for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do\n"                                \
    "  if m ~= ARGV[1] then\n"                                                                     \
    "    local gw = gw_of(m)\n"                                                                    \
    "    if gw and redis.call('EXISTS', 'im:gw:' .. gw) == 1 then live = live + 1\n"               \
    "    else redis.call('ZREM', KEYS[1], m) end\n"                                                \
    "  end\n"                                                                                      \
    "end\n"

/* KEYS[1] route set; ARGV: member, now ms, gateway, lease ms, route ttl ms,
 * user id.  Returns how many other live sessions the user has, or -1 when
 * the user deleted its account (no session is registered). */
static const char online_lua[] = LUA_GATEWAY_OF
    "if redis.call('EXISTS', 'im:deleted:' .. ARGV[6]) == 1 then return -1 end\n"
    "redis.call('SET', 'im:gw:' .. ARGV[3], '1', 'PX', ARGV[4])\n" LUA_COUNT_LIVE
    "redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[5])\n"
    "return live\n";

/* KEYS[1] route set; ARGV[1] member.  Returns the live sessions left. */
static const char offline_lua[] = LUA_GATEWAY_OF "redis.call('ZREM', KEYS[1], ARGV[1])\n"
    LUA_COUNT_LIVE "return live\n";

/* KEYS: route sets.  Returns, per key, the distinct live gateways.  Each
 * gateway's lease is read once per call (a batch names many users on few
 * gateways). */
static const char routes_lua[] = LUA_GATEWAY_OF
    "local out, alive = {}, {}\n"
    "for i, k in ipairs(KEYS) do\n"
    "  local gws, seen = {}, {}\n"
    "  for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do\n"
    "    local gw = gw_of(m)\n"
    "    if gw and alive[gw] == nil then\n"
    "      alive[gw] = redis.call('EXISTS', 'im:gw:' .. gw) == 1\n"
    "    end\n"
    "    if gw and alive[gw] then\n"
    "      if not seen[gw] then seen[gw] = true; gws[#gws + 1] = gw end\n"
    "    else redis.call('ZREM', k, m) end\n"
    "  end\n"
    "  out[i] = gws\n"
    "end\n"
    "return out\n";

struct lg_session_s {
    im_redis_t *redis;
    int64_t ttl_ms;
    im_redis_script_t online;
    im_redis_script_t offline;
    im_redis_script_t routes;
};

lg_session_t *lg_session_new(im_redis_t *redis, int64_t ttl_ms)
{
    lg_session_t *s = im_calloc(1, sizeof(*s));

    s->redis = redis;
    s->ttl_ms = ttl_ms > 0 ? ttl_ms : LG_SESSION_TTL_DEFAULT_MS;
    s->online = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(online_lua);
    s->offline = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(offline_lua);
    s->routes = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(routes_lua);
    return s;
}

void lg_session_free(lg_session_t *s)
{
    im_free(s);
}

bool lg_session_id_ok(const char *id)
{
    size_t n = strlen(id);

    if (n == 0 || n > LG_GATEWAY_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

static im_rpc_code_t check_request(const Im__V1__SessionRequest *req, bool need_session, char *msg,
                                   size_t msglen)
{
    if (!lg_session_id_ok(req->gateway_id)) {
        snprintf(msg, msglen, "bad_gateway_id: 1..%d of [A-Za-z0-9._:-]", LG_GATEWAY_ID_MAX);
        return IM_RPC_INVALID_ARGUMENT;
    }
    if (!need_session)
        return IM_RPC_OK;
    if (req->user_id == 0) {
        snprintf(msg, msglen, "bad_user: user_id is required");
        return IM_RPC_INVALID_ARGUMENT;
    }
    if (!lg_session_id_ok(req->session_id)) {
        snprintf(msg, msglen, "bad_session_id: 1..%d of [A-Za-z0-9._:-]", LG_SESSION_ID_MAX);
        return IM_RPC_INVALID_ARGUMENT;
    }
    return IM_RPC_OK;
}

/* A failed Redis call: reconnect for the next one and report UNAVAILABLE. */
static im_rpc_code_t redis_status(lg_session_t *s, im_err_t rc, const char *what, char *msg,
                                  size_t msglen)
{
    im_log_warn("session: %s: %s (%s)", what, im_strerror(rc), im_redis_error(s->redis));
    if (!im_redis_is_open(s->redis))
        im_redis_reconnect(s->redis);
    snprintf(msg, msglen, "redis_unavailable: the session store is unavailable, try again");
    return IM_RPC_UNAVAILABLE;
}

/* Runs script on the user's route set with ARGV[1] = the session's member
 * and more args; *live gets the script's integer result. */
static im_err_t run_on_route(lg_session_t *s, im_redis_script_t *script,
                             const Im__V1__SessionRequest *req, const char *const *more,
                             int n_more, long long *live)
{
    char key[KEY_MAX], member[MEMBER_MAX];
    const char *args[8];
    im_redis_reply_t *rep = NULL;
    im_err_t rc;
    int argc = 0;

    snprintf(key, sizeof(key), "im:route:%" PRIu64, req->user_id);
    snprintf(member, sizeof(member), "%s/%s", req->gateway_id, req->session_id);
    args[argc++] = key;
    args[argc++] = member;
    for (int i = 0; i < n_more; i++)
        args[argc++] = more[i];
    if (!im_redis_is_open(s->redis))
        im_redis_reconnect(s->redis);
    rc = im_redis_eval(s->redis, script, 1, argc, args, NULL, &rep);
    if (rc != IM_OK)
        return rc;
    *live = im_redis_reply_int(rep);
    im_redis_reply_free(rep);
    return IM_OK;
}

im_rpc_code_t lg_session_online(lg_session_t *s, const Im__V1__SessionRequest *req,
                                Im__V1__SessionResponse *resp, char *msg, size_t msglen)
{
    char now[24], ttl[24], route_ttl[24], user[24];
    const char *more[5] = {now, req->gateway_id, ttl, route_ttl, user};
    im_rpc_code_t code = check_request(req, true, msg, msglen);
    long long others = 0;
    im_err_t rc;

    if (code != IM_RPC_OK)
        return code;
    snprintf(now, sizeof(now), "%" PRIu64, im_wall_ms());
    snprintf(ttl, sizeof(ttl), "%" PRId64, s->ttl_ms);
    snprintf(route_ttl, sizeof(route_ttl), "%lld", ROUTE_TTL_MS);
    snprintf(user, sizeof(user), "%" PRIu64, req->user_id);
    rc = run_on_route(s, &s->online, req, more, 5, &others);
    if (rc != IM_OK)
        return redis_status(s, rc, "online", msg, msglen);
    if (others < 0) {
        snprintf(msg, msglen, "user_deleted: this account was deleted");
        return IM_RPC_PERMISSION_DENIED;
    }
    resp->ttl_ms = s->ttl_ms;
    resp->first = others == 0;
    return IM_RPC_OK;
}

im_rpc_code_t lg_session_offline(lg_session_t *s, const Im__V1__SessionRequest *req,
                                 Im__V1__SessionResponse *resp, char *msg, size_t msglen)
{
    im_rpc_code_t code = check_request(req, true, msg, msglen);
    long long left = 0;
    im_err_t rc;

    if (code != IM_RPC_OK)
        return code;
    rc = run_on_route(s, &s->offline, req, NULL, 0, &left);
    if (rc != IM_OK)
        return redis_status(s, rc, "offline", msg, msglen);
    resp->ttl_ms = s->ttl_ms;
    resp->last = left == 0;
    return IM_RPC_OK;
}

im_rpc_code_t lg_session_heartbeat(lg_session_t *s, const Im__V1__SessionRequest *req,
                                   Im__V1__SessionResponse *resp, char *msg, size_t msglen)
{
    im_rpc_code_t code = check_request(req, false, msg, msglen);
    im_redis_reply_t *rep = NULL;
    im_err_t rc;

    if (code != IM_RPC_OK)
        return code;
    if (!im_redis_is_open(s->redis))
        im_redis_reconnect(s->redis);
    rc = im_redis_command(s->redis, &rep, "SET im:gw:%s 1 PX %" PRId64 " GET", req->gateway_id,
                          s->ttl_ms);
    if (rc != IM_OK)
        return redis_status(s, rc, "heartbeat", msg, msglen);
    resp->ttl_ms = s->ttl_ms;
    /* No lease before: it expired, or Redis lost it (restart, failover)
     * and the routes with it.  The gateway registers its sessions again. */
    resp->first = im_redis_reply_type(rep) == IM_REDIS_NIL;
    im_redis_reply_free(rep);
    return IM_RPC_OK;
}

/* Adds user to gateway's entry in out[0..*n), making one if needed. */
static void route_add(lg_route_t *out, size_t *n, const char *gateway, size_t len, uint64_t user)
{
    size_t i;

    for (i = 0; i < *n; i++)
        if (strlen(out[i].gateway) == len && memcmp(out[i].gateway, gateway, len) == 0)
            break;
    if (i == *n) {
        if (*n == LG_ROUTES_MAX || len > LG_GATEWAY_ID_MAX) {
            im_log_warn("session: user %" PRIu64 " on too many gateways: %.*s not routed to",
                        user, (int)len, gateway);
            return;
        }
        memcpy(out[i].gateway, gateway, len);
        out[i].gateway[len] = '\0';
        out[i].n_users = 0;
        (*n)++;
    }
    if (out[i].n_users < LG_ROUTE_USERS_MAX)
        out[i].users[out[i].n_users++] = user;
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

im_err_t lg_session_routes_many(lg_session_t *s, lg_route_query_t *q, size_t n)
{
    size_t total = 0, nu = 0;
    uint64_t *users;
    char *keys;
    const char **args;
    im_redis_reply_t *rep = NULL;
    im_err_t rc;

    for (size_t i = 0; i < n; i++) {
        q[i].n_out = 0;
        if (q[i].n_users == 0 || q[i].n_users > LG_ROUTE_USERS_MAX)
            return IM_EINVAL;
        total += q[i].n_users;
    }
    if (total == 0)
        return IM_OK;
    users = im_malloc(total * sizeof(*users));
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < q[i].n_users; j++)
            users[nu++] = q[i].users[j];
    qsort(users, nu, sizeof(*users), u64_cmp);
    total = nu;
    nu = 0;
    for (size_t i = 0; i < total; i++)
        if (nu == 0 || users[nu - 1] != users[i])
            users[nu++] = users[i];
    keys = im_malloc(nu * KEY_MAX);
    args = im_malloc(nu * sizeof(*args));
    for (size_t i = 0; i < nu; i++) {
        snprintf(keys + i * KEY_MAX, KEY_MAX, "im:route:%" PRIu64, users[i]);
        args[i] = keys + i * KEY_MAX;
    }
    if (!im_redis_is_open(s->redis))
        im_redis_reconnect(s->redis);
    rc = im_redis_eval(s->redis, &s->routes, (int)nu, (int)nu, args, NULL, &rep);
    if (rc == IM_OK && im_redis_reply_count(rep) != nu)
        rc = IM_EPARSE;
    for (size_t i = 0; rc == IM_OK && i < n; i++) {
        for (size_t u = 0; u < q[i].n_users; u++) {
            uint64_t *at = bsearch(&q[i].users[u], users, nu, sizeof(*users), u64_cmp);
            const im_redis_reply_t *gws = im_redis_reply_elem(rep, (size_t)(at - users));

            for (size_t j = 0; j < im_redis_reply_count(gws); j++) {
                size_t len = 0;
                const char *gw = im_redis_reply_str(im_redis_reply_elem(gws, j), &len);

                if (gw != NULL)
                    route_add(q[i].out, &q[i].n_out, gw, len, q[i].users[u]);
            }
        }
    }
    im_redis_reply_free(rep);
    im_free(args);
    im_free(keys);
    im_free(users);
    return rc;
}

im_err_t lg_session_routes(lg_session_t *s, const uint64_t *users, size_t n, lg_route_t *out,
                           size_t *n_out)
{
    lg_route_query_t q = {.n_users = n, .out = out};
    im_err_t rc;

    *n_out = 0;
    if (n == 0 || n > LG_ROUTE_USERS_MAX)
        return IM_EINVAL;
    memcpy(q.users, users, n * sizeof(*users));
    rc = lg_session_routes_many(s, &q, 1);
    *n_out = rc == IM_OK ? q.n_out : 0;
    return rc;
}
