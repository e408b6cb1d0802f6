#include "lg_notify.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"
#include "lg_auth.h"
#include "lg_sync.h"
#include "lg_target.h"

struct lg_notify_s {
    im_mysql_t *db;
    lg_message_shared_t *sh;
    lg_target_t target;
    im_mysql_stmt_t *peers;
    im_mysql_stmt_t *groups;
};

static const struct {
    size_t offset;
    const char *sql;
} statements[] = {
    {offsetof(lg_notify_t, peers),
     "SELECT conv_id FROM user_convs WHERE user_id = ? ORDER BY created_at_ms DESC LIMIT 200"},
    {offsetof(lg_notify_t, groups),
     "SELECT gm.group_id FROM group_members gm WHERE gm.user_id = ? "
     "AND (SELECT COUNT(*) FROM group_members m WHERE m.group_id = gm.group_id) <= 100 "
     "ORDER BY gm.joined_at_ms DESC LIMIT 200"},
};
#define N_STATEMENTS (sizeof(statements) / sizeof(statements[0]))

static im_mysql_stmt_t **stmt_at(lg_notify_t *n, size_t i)
{
    return (im_mysql_stmt_t **)(void *)((char *)n + statements[i].offset);
}

im_err_t lg_notify_new(im_mysql_t *db, lg_message_shared_t *sh, lg_notify_t **out)
{
    lg_notify_t *n = im_calloc(1, sizeof(*n));

    n->db = db;
    n->sh = sh;
    for (size_t i = 0; i < N_STATEMENTS; i++) {
        im_err_t rc = im_mysql_prepare(db, statements[i].sql, stmt_at(n, i));

        if (rc != IM_OK) {
            lg_notify_free(n);
            return rc;
        }
    }
    if (lg_target_init(&n->target, db) != IM_OK) {
        lg_notify_free(n);
        return IM_EIO;
    }
    *out = n;
    return IM_OK;
}

void lg_notify_free(lg_notify_t *n)
{
    if (n == NULL)
        return;
    for (size_t i = 0; i < N_STATEMENTS; i++)
        im_mysql_stmt_free(*stmt_at(n, i));
    lg_target_free(&n->target);
    im_free(n);
}

/* Publishes d to the gateways holding users[0..n) (any n), one Delivery per
 * gateway per lookup of up to LG_ROUTE_USERS_MAX users. */
static void to_users(lg_message_shared_t *sh, lg_session_t *sessions, const uint64_t *users,
                     size_t n, Im__V1__Delivery *d)
{
    lg_route_t routes[LG_ROUTES_MAX];
    char rkey[LG_GATEWAY_ID_MAX + 8];

    for (size_t i = 0; i < n; i += LG_ROUTE_USERS_MAX) {
        size_t chunk = n - i < LG_ROUTE_USERS_MAX ? n - i : LG_ROUTE_USERS_MAX, n_routes = 0;
        im_err_t rc = lg_session_routes(sessions, users + i, chunk, routes, &n_routes);

        if (rc != IM_OK) {
            im_log_warn("notify: routes: %s", im_strerror(rc));
            return;
        }
        for (size_t r = 0; r < n_routes; r++) {
            snprintf(rkey, sizeof(rkey), "gw.%.*s", LG_GATEWAY_ID_MAX, routes[r].gateway);
            d->user_ids = routes[r].users;
            d->n_user_ids = routes[r].n_users;
            lg_message_fanout(sh, rkey, d);
        }
    }
    d->user_ids = NULL;
    d->n_user_ids = 0;
}

static void to_group(lg_message_shared_t *sh, uint64_t group, Im__V1__Delivery *d)
{
    char rkey[32];

    snprintf(rkey, sizeof(rkey), "g.%" PRIu64, group);
    lg_message_fanout(sh, rkey, d);
}

/* IM_RPC_OK when user may write to the target, else a refusal in msg. */
static im_rpc_code_t check_target(lg_notify_t *n, const Im__V1__TypingRequest *req, char *msg,
                                  size_t msglen)
{
    if (req->user_id == 0 || (req->to_user != 0) == (req->to_group != 0)) {
        snprintf(msg, msglen, "bad_target: user_id and exactly one of to_user, to_group");
        return IM_RPC_INVALID_ARGUMENT;
    }
    return lg_target_check(&n->target, req->user_id, req->to_user, req->to_group, "typing", msg,
                           msglen);
}

im_rpc_code_t lg_notify_typing(lg_notify_t *n, lg_session_t *sessions,
                               const Im__V1__TypingRequest *req, Im__V1__TypingResponse *resp,
                               char *msg, size_t msglen)
{
    Im__V1__Delivery d = IM__V1__DELIVERY__INIT;
    Im__V1__Typing t = IM__V1__TYPING__INIT;
    im_rpc_code_t code = check_target(n, req, msg, msglen);
    char conv[48];

    (void)resp;
    if (code != IM_RPC_OK)
        return code;
    t.user_id = req->user_id;
    t.conv = conv;
    d.typing = &t;
    if (req->to_group) {
        snprintf(conv, sizeof(conv), "g:%" PRIu64, req->to_group);
        to_group(n->sh, req->to_group, &d);
    } else {
        uint64_t lo = req->user_id < req->to_user ? req->user_id : req->to_user;
        uint64_t hi = req->user_id < req->to_user ? req->to_user : req->user_id;
        snprintf(conv, sizeof(conv), "d:%" PRIu64 ":%" PRIu64, lo, hi);
        if (sessions != NULL)
            to_users(n->sh, sessions, &req->to_user, 1, &d);
    }
    return IM_RPC_OK;
}

/* Runs st (bound to user) and collects column 0 as ids via pick. */
static size_t collect(im_mysql_stmt_t *st, uint64_t user, uint64_t *out, size_t max,
                      uint64_t (*pick)(im_mysql_stmt_t *st, uint64_t user))
{
    size_t n = 0;
    im_err_t rc;

    im_mysql_bind_u64(st, 0, user);
    rc = im_mysql_stmt_exec(st);
    while (rc == IM_OK && n < max && (rc = im_mysql_stmt_next(st)) == IM_OK) {
        uint64_t id = pick(st, user);
        if (id != 0)
            out[n++] = id;
    }
    if (rc != IM_OK && rc != IM_ENOENT)
        im_log_warn("notify: presence lookup: %s", im_strerror(rc));
    return n;
}

static uint64_t pick_peer(im_mysql_stmt_t *st, uint64_t user)
{
    uint64_t a, b, group;

    if (!lg_conv_parse(im_mysql_col_str(st, 0, NULL), &a, &b, &group) || group != 0)
        return 0;
    return a == user ? b : a;
}

static uint64_t pick_group(im_mysql_stmt_t *st, uint64_t user)
{
    (void)user;
    return im_mysql_col_u64(st, 0);
}

void lg_notify_presence(lg_notify_t *n, lg_session_t *sessions, uint64_t user, bool online)
{
    Im__V1__Delivery d = IM__V1__DELIVERY__INIT;
    Im__V1__Presence p = IM__V1__PRESENCE__INIT;
    uint64_t ids[LG_PRESENCE_PEERS_MAX > LG_PRESENCE_GROUPS_MAX ? LG_PRESENCE_PEERS_MAX
                                                                : LG_PRESENCE_GROUPS_MAX];
    size_t k;

    p.user_id = user;
    p.online = online;
    p.at_ms = (int64_t)im_wall_ms();
    d.presence = &p;
    k = collect(n->peers, user, ids, LG_PRESENCE_PEERS_MAX, pick_peer);
    to_users(n->sh, sessions, ids, k, &d);
    k = collect(n->groups, user, ids, LG_PRESENCE_GROUPS_MAX, pick_group);
    for (size_t i = 0; i < k; i++) {
        d.group_id = ids[i];
        to_group(n->sh, ids[i], &d);
    }
}

void lg_notify_group_event(lg_message_shared_t *sh, lg_session_t *sessions, uint64_t group,
                           uint64_t user, bool joined)
{
    Im__V1__Delivery d = IM__V1__DELIVERY__INIT;
    Im__V1__GroupEvent e = IM__V1__GROUP_EVENT__INIT;

    e.group_id = group;
    e.user_id = user;
    e.joined = joined;
    d.group_event = &e;
    to_users(sh, sessions, &user, 1, &d);
}
