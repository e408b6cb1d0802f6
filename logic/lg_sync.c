#include "lg_sync.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"
#include "lg_auth.h"
#include "lg_store.h"

#define CONV_MAX 48

/* The user's conversations: direct ones from user_convs, groups from
 * group_members.  Params: user, user. */
#define USER_CONVS                                                                                 \
    "SELECT conv_id FROM user_convs WHERE user_id = ? "                                            \
    "UNION ALL SELECT CONVERT(CONCAT('g:', group_id) USING ascii) COLLATE ascii_bin "              \
    "FROM group_members WHERE user_id = ?"

struct lg_sync_s {
    im_mysql_t *db;
    lg_message_shared_t *sh;
    lg_store_t *store;
    im_mysql_stmt_t *convs_last;    /* conv, last seq */
    im_mysql_stmt_t *convs_full;    /* Conversations */
    im_mysql_stmt_t *group_member;  /* is member, for one group */
    im_mysql_stmt_t *read_upsert;
    im_mysql_stmt_t *read_get;
    /* What the last response points to. */
    lg_store_page_t *pages;
    size_t n_pages, cap_pages;
    Im__V1__ChatMessage **msgs;
    size_t cap_msgs;
    Im__V1__Conversation *convs;
    Im__V1__Conversation **conv_ptrs;
    char (*conv_ids)[CONV_MAX + 1];
    size_t cap_convs;
};

static const struct {
    size_t offset;
    const char *sql;
} statements[] = {
    {offsetof(lg_sync_t, convs_last),
     "SELECT c.conv_id, COALESCE((SELECT MAX(m.seq) FROM messages m "
     "WHERE m.conv_id = c.conv_id), 0) FROM (" USER_CONVS ") c"},
    /* Unread counts scan the unread rows of each conversation (an index range). */
    {offsetof(lg_sync_t, convs_full),
     "SELECT c.conv_id, "
     "  COALESCE((SELECT MAX(m.seq) FROM messages m WHERE m.conv_id = c.conv_id), 0) last_seq, "
     "  COALESCE(r.read_seq, 0), "
     "  COALESCE((SELECT m.created_at_ms FROM messages m WHERE m.conv_id = c.conv_id "
     "    ORDER BY m.seq DESC LIMIT 1), 0) last_at, "
     "  (SELECT COUNT(*) FROM messages m WHERE m.conv_id = c.conv_id "
     "    AND m.seq > COALESCE(r.read_seq, 0) AND m.sender_id <> ?), "
     "  COALESCE((SELECT MAX(o.read_seq) FROM read_state o WHERE o.conv_id = c.conv_id "
     "    AND o.user_id <> ?), 0) "
     "FROM (" USER_CONVS ") c "
     "LEFT JOIN read_state r ON r.user_id = ? AND r.conv_id = c.conv_id "
     "ORDER BY 4 DESC, 1"},
    {offsetof(lg_sync_t, group_member),
     "SELECT EXISTS (SELECT 1 FROM group_members m WHERE m.group_id = g.id AND m.user_id = ?) "
     "FROM `groups` g WHERE g.id = ?"},
    {offsetof(lg_sync_t, read_upsert),
     "INSERT INTO read_state (user_id, conv_id, read_seq, updated_at_ms) VALUES (?, ?, ?, ?) "
     "ON DUPLICATE KEY UPDATE updated_at_ms = IF(VALUES(read_seq) > read_seq, "
     "VALUES(updated_at_ms), updated_at_ms), read_seq = GREATEST(read_seq, VALUES(read_seq))"},
    {offsetof(lg_sync_t, read_get),
     "SELECT read_seq FROM read_state WHERE user_id = ? AND conv_id = ?"},
};
#define N_STATEMENTS (sizeof(statements) / sizeof(statements[0]))

static im_mysql_stmt_t **stmt_at(lg_sync_t *s, size_t i)
{
    return (im_mysql_stmt_t **)(void *)((char *)s + statements[i].offset);
}

im_err_t lg_sync_new(im_mysql_t *db, lg_message_shared_t *sh, lg_sync_t **out)
{
    lg_sync_t *s = im_calloc(1, sizeof(*s));

    s->db = db;
    s->sh = sh;
    s->store = lg_store_new(db, NULL);
    for (size_t i = 0; i < N_STATEMENTS; i++) {
        im_err_t rc = im_mysql_prepare(db, statements[i].sql, stmt_at(s, i));

        if (rc != IM_OK) {
            im_log_warn("sync: preparing: %s", im_mysql_error(db));
            lg_sync_free(s);
            return rc;
        }
    }
    *out = s;
    return IM_OK;
}

/* Forgets the previous response. */
static void reset(lg_sync_t *s)
{
    for (size_t i = 0; i < s->n_pages; i++)
        lg_store_page_free(&s->pages[i]);
    s->n_pages = 0;
}

void lg_sync_free(lg_sync_t *s)
{
    if (s == NULL)
        return;
    reset(s);
    for (size_t i = 0; i < N_STATEMENTS; i++)
        im_mysql_stmt_free(*stmt_at(s, i));
    lg_store_free(s->store);
    im_free(s->pages);
    im_free(s->msgs);
    im_free(s->convs);
    im_free(s->conv_ptrs);
    im_free(s->conv_ids);
    im_free(s);
}

bool lg_conv_parse(const char *conv, uint64_t *a, uint64_t *b, uint64_t *group)
{
    char canon[CONV_MAX + 2];
    int end = 0;

    *a = *b = *group = 0;
    if (strlen(conv) > CONV_MAX)
        return false;
    if (sscanf(conv, "d:%" SCNu64 ":%" SCNu64 "%n", a, b, &end) == 2 && conv[end] == '\0') {
        snprintf(canon, sizeof(canon), "d:%" PRIu64 ":%" PRIu64, *a, *b);
        return *a > 0 && *a < *b && strcmp(canon, conv) == 0;
    }
    *a = *b = 0;
    if (sscanf(conv, "g:%" SCNu64 "%n", group, &end) == 1 && conv[end] == '\0') {
        snprintf(canon, sizeof(canon), "g:%" PRIu64, *group);
        return *group > 0 && strcmp(canon, conv) == 0;
    }
    *group = 0;
    return false;
}

/* May user read conv?  IM_RPC_OK, or a refusal with msg set. */
static im_rpc_code_t check_access(lg_sync_t *s, uint64_t user, const char *conv, char *msg,
                                  size_t msglen)
{
    uint64_t a, b, group;
    im_err_t rc;

    if (user == 0) {
        snprintf(msg, msglen, "bad_user: user_id is required");
        return IM_RPC_INVALID_ARGUMENT;
    }
    if (!lg_conv_parse(conv, &a, &b, &group)) {
        snprintf(msg, msglen, "bad_conv: not a conversation id (d:<a>:<b> or g:<id>)");
        return IM_RPC_INVALID_ARGUMENT;
    }
    if (group == 0) {
        if (user == a || user == b)
            return IM_RPC_OK;
        snprintf(msg, msglen, "not_participant: %s is not your conversation", conv);
        return IM_RPC_PERMISSION_DENIED;
    }
    im_mysql_bind_u64(s->group_member, 0, user);
    im_mysql_bind_u64(s->group_member, 1, group);
    rc = im_mysql_stmt_exec(s->group_member);
    if (rc == IM_OK)
        rc = im_mysql_stmt_next(s->group_member);
    if (rc == IM_ENOENT) {
        snprintf(msg, msglen, "unknown_group: no group %" PRIu64, group);
        return IM_RPC_NOT_FOUND;
    }
    if (rc != IM_OK)
        return lg__db_status(s->db, rc, "sync: membership", msg, msglen);
    if (im_mysql_col_u64(s->group_member, 0) == 0) {
        snprintf(msg, msglen, "not_member: you are not a member of group %" PRIu64, group);
        return IM_RPC_PERMISSION_DENIED;
    }
    return IM_RPC_OK;
}

/* ------------------------------------------------------------ sync */

static lg_store_page_t *page_add(lg_sync_t *s)
{
    if (s->n_pages == s->cap_pages) {
        s->cap_pages = s->cap_pages ? s->cap_pages * 2 : 8;
        s->pages = im_realloc(s->pages, s->cap_pages * sizeof(*s->pages));
    }
    memset(&s->pages[s->n_pages], 0, sizeof(s->pages[0]));
    return &s->pages[s->n_pages++];
}

/* Points the response array at every message of the pages, in page order. */
static size_t collect(lg_sync_t *s)
{
    size_t n = 0;

    for (size_t i = 0; i < s->n_pages; i++)
        n += s->pages[i].n;
    if (n > s->cap_msgs) {
        s->cap_msgs = n;
        s->msgs = im_realloc(s->msgs, n * sizeof(*s->msgs));
    }
    n = 0;
    for (size_t i = 0; i < s->n_pages; i++)
        for (size_t j = 0; j < s->pages[i].n; j++)
            s->msgs[n++] = s->pages[i].msgs[j];
    return n;
}

static uint64_t have_seq(const Im__V1__SyncRequest *req, const char *conv)
{
    for (size_t i = 0; i < req->n_have; i++)
        if (req->have[i]->conv != NULL && strcmp(req->have[i]->conv, conv) == 0)
            return req->have[i]->seq;
    return 0;
}

/* The conversations of the user that have messages past what it has, with
 * where it is in each: conv ids copied into s->conv_ids, from/last in
 * s->convs (reused as scratch). */
static im_err_t behind(lg_sync_t *s, const Im__V1__SyncRequest *req, size_t *n_out)
{
    im_mysql_stmt_t *st = s->convs_last;
    size_t n = 0;
    im_err_t rc;

    im_mysql_bind_u64(st, 0, req->user_id);
    im_mysql_bind_u64(st, 1, req->user_id);
    rc = im_mysql_stmt_exec(st);
    while (rc == IM_OK && (rc = im_mysql_stmt_next(st)) == IM_OK) {
        const char *conv = im_mysql_col_str(st, 0, NULL);
        uint64_t from = have_seq(req, conv), last = im_mysql_col_u64(st, 1);

        if (last <= from)
            continue;
        if (n == s->cap_convs) {
            s->cap_convs = s->cap_convs ? s->cap_convs * 2 : 16;
            s->convs = im_realloc(s->convs, s->cap_convs * sizeof(*s->convs));
            s->conv_ptrs = im_realloc(s->conv_ptrs, s->cap_convs * sizeof(*s->conv_ptrs));
            s->conv_ids = im_realloc(s->conv_ids, s->cap_convs * sizeof(*s->conv_ids));
        }
        snprintf(s->conv_ids[n], sizeof(s->conv_ids[n]), "%s", conv);
        s->convs[n].read_seq = from; /* scratch: where to start */
        s->convs[n].last_seq = last;
        n++;
    }
    *n_out = n;
    return rc == IM_ENOENT ? IM_OK : rc;
}

im_rpc_code_t lg_sync_sync(lg_sync_t *s, const Im__V1__SyncRequest *req,
                           Im__V1__SyncResponse *resp, char *msg, size_t msglen)
{
    unsigned limit = req->limit ? req->limit : LG_SYNC_DEFAULT_LIMIT, left;
    size_t n = 0, got = 0;
    im_err_t rc;

    reset(s);
    if (req->user_id == 0) {
        snprintf(msg, msglen, "bad_user: user_id is required");
        return IM_RPC_INVALID_ARGUMENT;
    }
    if (limit > LG_STORE_MAX_PAGE)
        limit = LG_STORE_MAX_PAGE;
    rc = behind(s, req, &n);
    left = limit;
    for (size_t i = 0; rc == IM_OK && i < n; i++) {
        lg_store_page_t *page;

        if (left == 0) {
            resp->more = true;
            break;
        }
        page = page_add(s);
        rc = lg_store_sync(s->store, s->conv_ids[i], s->convs[i].read_seq, left, page);
        if (rc != IM_OK)
            break;
        left -= (unsigned)page->n;
        if (left == 0 && page->n > 0 &&
            page->msgs[page->n - 1]->seq < s->convs[i].last_seq)
            resp->more = true;
    }
    if (rc != IM_OK) {
        reset(s);
        return lg__db_status(s->db, rc, "sync", msg, msglen);
    }
    got = collect(s);
    resp->messages = s->msgs;
    resp->n_messages = got;
    return IM_RPC_OK;
}

/* ------------------------------------------------------------ history */

im_rpc_code_t lg_sync_history(lg_sync_t *s, const Im__V1__HistoryRequest *req,
                              Im__V1__HistoryResponse *resp, char *msg, size_t msglen)
{
    unsigned limit = req->limit ? req->limit : 50;
    im_rpc_code_t code;
    lg_store_page_t *page;
    im_err_t rc;

    reset(s);
    code = check_access(s, req->user_id, req->conv, msg, msglen);
    if (code != IM_RPC_OK)
        return code;
    if (limit >= LG_STORE_MAX_PAGE)
        limit = LG_STORE_MAX_PAGE - 1;
    page = page_add(s);
    /* One more than asked tells whether there is more. */
    rc = lg_store_history(s->store, req->conv, req->before_seq, limit + 1, page);
    if (rc != IM_OK) {
        reset(s);
        return lg__db_status(s->db, rc, "history", msg, msglen);
    }
    resp->more = page->n > limit;
    resp->messages = page->msgs;
    resp->n_messages = page->n > limit ? limit : page->n;
    return IM_RPC_OK;
}

/* ------------------------------------------------------------ read marks */

static void receipt_publish(lg_sync_t *s, lg_session_t *sessions, uint64_t user,
                            const char *conv, uint64_t read_seq)
{
    Im__V1__Delivery d = IM__V1__DELIVERY__INIT;
    Im__V1__Receipt r = IM__V1__RECEIPT__INIT;
    lg_route_t routes[LG_ROUTES_MAX];
    char rkey[LG_GATEWAY_ID_MAX + 8];
    uint64_t a, b, group, users[2];
    size_t n = 0;
    im_err_t rc;

    r.conv = (char *)conv;
    r.user_id = user;
    r.read_seq = read_seq;
    r.at_ms = (int64_t)im_wall_ms();
    d.receipt = &r;
    lg_conv_parse(conv, &a, &b, &group);
    if (group != 0) {
        snprintf(rkey, sizeof(rkey), "g.%" PRIu64, group);
        lg_message_fanout(s->sh, rkey, &d);
        return;
    }
    users[0] = user == a ? b : a;
    users[1] = user;
    rc = sessions ? lg_session_routes(sessions, users, 2, routes, &n) : IM_EUNAVAIL;
    if (rc != IM_OK)
        im_log_warn("read: routes for a receipt of %s: %s", conv, im_strerror(rc));
    for (size_t i = 0; i < n; i++) {
        snprintf(rkey, sizeof(rkey), "gw.%.*s", LG_GATEWAY_ID_MAX, routes[i].gateway);
        d.user_ids = routes[i].users;
        d.n_user_ids = routes[i].n_users;
        lg_message_fanout(s->sh, rkey, &d);
    }
}

/* The stored read mark into *out (0 when none). */
static im_err_t read_get(lg_sync_t *s, uint64_t user, const char *conv, uint64_t *out)
{
    im_err_t rc;

    im_mysql_bind_u64(s->read_get, 0, user);
    im_mysql_bind_str(s->read_get, 1, conv, strlen(conv));
    rc = im_mysql_stmt_exec(s->read_get);
    if (rc == IM_OK)
        rc = im_mysql_stmt_next(s->read_get);
    *out = rc == IM_OK ? im_mysql_col_u64(s->read_get, 0) : 0;
    return rc == IM_ENOENT ? IM_OK : rc;
}

im_rpc_code_t lg_sync_mark_read(lg_sync_t *s, lg_session_t *sessions,
                                const Im__V1__MarkReadRequest *req,
                                Im__V1__MarkReadResponse *resp, char *msg, size_t msglen)
{
    im_rpc_code_t code = check_access(s, req->user_id, req->conv, msg, msglen);
    uint64_t before = 0, after = 0;
    im_mysql_stmt_t *st = s->read_upsert;
    im_err_t rc;

    if (code != IM_RPC_OK)
        return code;
    rc = read_get(s, req->user_id, req->conv, &before);
    if (rc == IM_OK && req->seq > before) {
        im_mysql_bind_u64(st, 0, req->user_id);
        im_mysql_bind_str(st, 1, req->conv, strlen(req->conv));
        im_mysql_bind_u64(st, 2, req->seq);
        im_mysql_bind_i64(st, 3, (int64_t)im_wall_ms());
        rc = im_mysql_stmt_exec(st);
    }
    if (rc == IM_OK)
        rc = read_get(s, req->user_id, req->conv, &after);
    if (rc != IM_OK)
        return lg__db_status(s->db, rc, "read", msg, msglen);
    resp->read_seq = after;
    if (after > before)
        receipt_publish(s, sessions, req->user_id, req->conv, after);
    return IM_RPC_OK;
}

/* ------------------------------------------------------------ conversations */

static void conv_fill(lg_sync_t *s, size_t i, uint64_t user)
{
    im_mysql_stmt_t *st = s->convs_full;
    Im__V1__Conversation *c = &s->convs[i];
    uint64_t a, b, group;

    im__v1__conversation__init(c);
    snprintf(s->conv_ids[i], sizeof(s->conv_ids[i]), "%s", im_mysql_col_str(st, 0, NULL));
    if (lg_conv_parse(s->conv_ids[i], &a, &b, &group)) {
        c->peer = group ? 0 : (user == a ? b : a);
        c->group_id = group;
    }
    c->last_seq = im_mysql_col_u64(st, 1);
    c->read_seq = im_mysql_col_u64(st, 2);
    c->last_at_ms = im_mysql_col_i64(st, 3);
    c->unread = im_mysql_col_u64(st, 4);
    c->peer_read_seq = im_mysql_col_u64(st, 5);
}

im_rpc_code_t lg_sync_conversations(lg_sync_t *s, const Im__V1__ConversationsRequest *req,
                                    Im__V1__ConversationsResponse *resp, char *msg,
                                    size_t msglen)
{
    im_mysql_stmt_t *st = s->convs_full;
    size_t n = 0;
    im_err_t rc;

    reset(s);
    if (req->user_id == 0) {
        snprintf(msg, msglen, "bad_user: user_id is required");
        return IM_RPC_INVALID_ARGUMENT;
    }
    for (unsigned i = 0; i < 5; i++)
        im_mysql_bind_u64(st, i, req->user_id);
    rc = im_mysql_stmt_exec(st);
    while (rc == IM_OK && (rc = im_mysql_stmt_next(st)) == IM_OK) {
        if (n == s->cap_convs) {
            s->cap_convs = s->cap_convs ? s->cap_convs * 2 : 16;
            s->convs = im_realloc(s->convs, s->cap_convs * sizeof(*s->convs));
            s->conv_ptrs = im_realloc(s->conv_ptrs, s->cap_convs * sizeof(*s->conv_ptrs));
            s->conv_ids = im_realloc(s->conv_ids, s->cap_convs * sizeof(*s->conv_ids));
        }
        conv_fill(s, n++, req->user_id);
    }
    if (rc != IM_ENOENT)
        return lg__db_status(s->db, rc, "conversations", msg, msglen);
    for (size_t i = 0; i < n; i++) { /* the arrays have stopped moving */
        s->convs[i].conv = s->conv_ids[i];
        s->conv_ptrs[i] = &s->convs[i];
    }
    resp->conversations = s->conv_ptrs;
    resp->n_conversations = n;
    return IM_RPC_OK;
}
