#include "lg_notify.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
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
    im_mysql_stmt_t *peers[IM_MYSQL_IN_SIZES];  /* prepared on first use */
    im_mysql_stmt_t *groups[IM_MYSQL_IN_SIZES]; /* prepared on first use */
};

/* Each user's LG_PRESENCE_PEERS_MAX most recent conversations, and its
 * LG_PRESENCE_GROUPS_MAX most recently joined groups of at most
 * LG_PRESENCE_GROUP_MEMBERS_MAX members: (user, conv) and (user, group) rows. */
static const char peers_head[] =
    "SELECT user_id, conv_id FROM (SELECT user_id, conv_id, ROW_NUMBER() OVER "
    "(PARTITION BY user_id ORDER BY created_at_ms DESC) AS rn FROM user_convs WHERE user_id IN (";
static const char peers_tail[] = ")) t WHERE rn <= 200";
static const char groups_head[] =
    "SELECT user_id, group_id FROM (SELECT gm.user_id, gm.group_id, ROW_NUMBER() OVER "
    "(PARTITION BY gm.user_id ORDER BY gm.joined_at_ms DESC) AS rn FROM group_members gm "
    "WHERE gm.user_id IN (";
static const char groups_tail[] =
    ") AND (SELECT COUNT(*) FROM group_members m WHERE m.group_id = gm.group_id) <= 100) t "
    "WHERE rn <= 200";
_Static_assert(LG_PRESENCE_PEERS_MAX == 200 && LG_PRESENCE_GROUPS_MAX == 200 &&
                   LG_PRESENCE_GROUP_MEMBERS_MAX == 100,
               "the limits are in the SQL above");

im_err_t lg_notify_new(im_mysql_t *db, lg_message_shared_t *sh, lg_notify_t **out)
{
    lg_notify_t *n = im_calloc(1, sizeof(*n));

    n->db = db;
    n->sh = sh;
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
    for (size_t k = 0; k < IM_MYSQL_IN_SIZES; k++) {
        im_mysql_stmt_free(n->peers[k]);
        im_mysql_stmt_free(n->groups[k]);
    }
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

/* One (user, id) row of a presence lookup. */
typedef struct {
    uint64_t user, id;
} pair_t;

static int pair_cmp(const void *a, const void *b)
{
    const pair_t *x = a, *y = b;

    return x->user < y->user ? -1 : x->user > y->user;
}

/* The first of rows[0..n) (sorted by user) whose user is not below user. */
static size_t first_of(const pair_t *rows, size_t n, uint64_t user)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (rows[mid].user < user)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Runs the peers or groups lookup for users[0..n) (n <= 64), appending
 * (user, peer or group) pairs to *out.  False on a database error (logged). */
static bool lookup(lg_notify_t *n, bool peers, const uint64_t *users, size_t count, pair_t **out,
                   size_t *n_out, size_t *cap)
{
    size_t places;
    im_mysql_stmt_t *st;
    im_err_t rc = im_mysql_in_stmt(n->db, peers ? n->peers : n->groups,
                                   peers ? peers_head : groups_head, "?", count,
                                   peers ? peers_tail : groups_tail, &st, &places);

    if (rc != IM_OK)
        return false;
    for (size_t i = 0; i < places; i++) /* unused places repeat the first user */
        im_mysql_bind_u64(st, (unsigned)i, users[i < count ? i : 0]);
    rc = im_mysql_stmt_exec(st);
    while (rc == IM_OK && (rc = im_mysql_stmt_next(st)) == IM_OK) {
        uint64_t user = im_mysql_col_u64(st, 0), id, a, b, group;

        if (peers) {
            if (!lg_conv_parse(im_mysql_col_str(st, 1, NULL), &a, &b, &group) || group != 0)
                continue;
            id = a == user ? b : a;
        } else {
            id = im_mysql_col_u64(st, 1);
        }
        if (*n_out == *cap) {
            *cap = *cap ? 2 * *cap : 64;
            *out = im_realloc(*out, *cap * sizeof(**out));
        }
        (*out)[(*n_out)++] = (pair_t){user, id};
    }
    if (rc != IM_ENOENT) {
        im_log_warn("notify: presence lookup: %s", im_strerror(rc));
        return false;
    }
    return true;
}

void lg_notify_presence_many(lg_notify_t *n, lg_session_t *sessions, const uint64_t *users,
                             size_t count, bool online)
{
    Im__V1__Delivery d = IM__V1__DELIVERY__INIT;
    Im__V1__Presence p = IM__V1__PRESENCE__INIT;
    pair_t *peers = NULL, *groups = NULL;
    size_t n_peers = 0, n_groups = 0, cap_peers = 0, cap_groups = 0, max = IM_MYSQL_IN_MAX;
    uint64_t *ids = NULL;
    size_t cap_ids = 0;

    for (size_t i = 0; i < count; i += max) {
        size_t chunk = count - i < max ? count - i : max;

        lookup(n, true, users + i, chunk, &peers, &n_peers, &cap_peers);
        lookup(n, false, users + i, chunk, &groups, &n_groups, &cap_groups);
    }
    if (n_peers > 1) /* qsort's array must not be NULL, even for 0 */
        qsort(peers, n_peers, sizeof(*peers), pair_cmp);
    if (n_groups > 1)
        qsort(groups, n_groups, sizeof(*groups), pair_cmp);
    p.online = online;
    p.at_ms = (int64_t)im_wall_ms();
    d.presence = &p;
    for (size_t i = 0; i < count; i++) {
        size_t k = 0, a = first_of(peers, n_peers, users[i]);
        size_t g = first_of(groups, n_groups, users[i]);

        p.user_id = users[i];
        for (size_t j = a; j < n_peers && peers[j].user == users[i]; j++) {
            if (k == cap_ids) {
                cap_ids = cap_ids ? 2 * cap_ids : 64;
                ids = im_realloc(ids, cap_ids * sizeof(*ids));
            }
            ids[k++] = peers[j].id;
        }
        to_users(n->sh, sessions, ids, k, &d);
        for (size_t j = g; j < n_groups && groups[j].user == users[i]; j++) {
            d.group_id = groups[j].id;
            to_group(n->sh, groups[j].id, &d);
        }
        d.group_id = 0;
    }
    im_free(ids);
    im_free(groups);
    im_free(peers);
}

void lg_notify_presence(lg_notify_t *n, lg_session_t *sessions, uint64_t user, bool online)
{
    lg_notify_presence_many(n, sessions, &user, 1, online);
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
