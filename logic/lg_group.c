#include "lg_group.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im_alloc.h"
#include "im_time.h"
#include "im_utf8.h"
#include "lg_auth.h"

/* Room for any name the table holds (VARCHAR(64) of up to 4-byte characters). */
#define NAME_BUF (4 * LG_GROUP_NAME_MAX + 1)

typedef struct {
    Im__V1__GroupInfo info;
    char name[NAME_BUF];
} group_row_t;

struct lg_group_s {
    im_mysql_t *db;
    im_idgen_t *ids;
    im_mysql_stmt_t *insert_group;
    im_mysql_stmt_t *insert_member;
    im_mysql_stmt_t *delete_member;
    im_mysql_stmt_t *get_group;
    im_mysql_stmt_t *list_members;
    im_mysql_stmt_t *list_mine;
    /* Response storage, reused from call to call. */
    group_row_t one;
    group_row_t *rows;
    Im__V1__GroupInfo **row_ptrs;
    size_t rows_cap;
    uint64_t *members;
    size_t members_cap;
    im_mysql_stmt_t *ids_of[IM_MYSQL_IN_SIZES]; /* prepared on first use */
};

static const struct {
    size_t offset;
    const char *sql;
} statements[] = {
    {offsetof(lg_group_t, insert_group),
     "INSERT INTO `groups` (id, name, owner_id, created_at_ms) VALUES (?, ?, ?, ?)"},
    {offsetof(lg_group_t, insert_member),
     "INSERT INTO group_members (group_id, user_id, joined_at_ms) VALUES (?, ?, ?) "
     "ON DUPLICATE KEY UPDATE joined_at_ms = joined_at_ms"},
    {offsetof(lg_group_t, delete_member),
     "DELETE FROM group_members WHERE group_id = ? AND user_id = ?"},
    /* One round trip answers "does it exist, what is it, am I in it". */
    {offsetof(lg_group_t, get_group),
     "SELECT g.id, g.name, g.owner_id,"
     " (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.id),"
     " EXISTS (SELECT 1 FROM group_members m WHERE m.group_id = g.id AND m.user_id = ?) "
     "FROM `groups` g WHERE g.id = ?"},
    {offsetof(lg_group_t, list_members),
     "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY user_id"},
    {offsetof(lg_group_t, list_mine),
     "SELECT g.id, g.name, g.owner_id,"
     " (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.id) "
     "FROM group_members m JOIN `groups` g ON g.id = m.group_id "
     "WHERE m.user_id = ? ORDER BY g.id"},
};

im_err_t lg_group_new(im_mysql_t *db, im_idgen_t *ids, lg_group_t **out)
{
    lg_group_t *g = im_calloc(1, sizeof(*g));

    g->db = db;
    g->ids = ids;
    for (size_t i = 0; i < sizeof(statements) / sizeof(statements[0]); i++) {
        im_mysql_stmt_t **st = (im_mysql_stmt_t **)(void *)((char *)g + statements[i].offset);
        im_err_t rc = im_mysql_prepare(db, statements[i].sql, st);

        if (rc != IM_OK) {
            lg_group_free(g);
            return rc;
        }
    }
    *out = g;
    return IM_OK;
}

void lg_group_free(lg_group_t *g)
{
    if (g == NULL)
        return;
    for (size_t i = 0; i < sizeof(statements) / sizeof(statements[0]); i++)
        im_mysql_stmt_free(*(im_mysql_stmt_t **)(void *)((char *)g + statements[i].offset));
    for (size_t k = 0; k < IM_MYSQL_IN_SIZES; k++)
        im_mysql_stmt_free(g->ids_of[k]);
    im_free(g->rows);
    im_free(g->row_ptrs);
    im_free(g->members);
    im_free(g);
}

/* Reads columns id, name, owner, member count of st's current row into r. */
static void read_row(const im_mysql_stmt_t *st, group_row_t *r)
{
    size_t len;
    const char *name = im_mysql_col_str(st, 1, &len);

    im__v1__group_info__init(&r->info);
    r->info.id = im_mysql_col_u64(st, 0);
    r->info.owner = im_mysql_col_u64(st, 2);
    r->info.member_count = (uint32_t)im_mysql_col_u64(st, 3);
    if (len >= sizeof(r->name))
        len = sizeof(r->name) - 1;
    memcpy(r->name, name, len);
    r->name[len] = '\0';
    r->info.name = r->name;
}

/* Loads group_id into g->one as seen by user_id.  Returns IM_RPC_OK and sets
 * *member, or NOT_FOUND / a database status. */
static im_rpc_code_t load_group(lg_group_t *g, uint64_t user_id, uint64_t group_id, bool *member,
                                char *msg, size_t msglen)
{
    im_err_t rc;

    im_mysql_bind_u64(g->get_group, 0, user_id);
    im_mysql_bind_u64(g->get_group, 1, group_id);
    rc = im_mysql_stmt_exec(g->get_group);
    if (rc == IM_OK)
        rc = im_mysql_stmt_next(g->get_group);
    if (rc == IM_ENOENT) {
        snprintf(msg, msglen, "unknown_group: no group %llu", (unsigned long long)group_id);
        return IM_RPC_NOT_FOUND;
    }
    if (rc != IM_OK)
        return lg__db_status(g->db, rc, "group: load", msg, msglen);
    read_row(g->get_group, &g->one);
    *member = im_mysql_col_u64(g->get_group, 4) != 0;
    return IM_RPC_OK;
}

static bool user_ok(uint64_t user_id, char *msg, size_t msglen)
{
    if (user_id == 0)
        snprintf(msg, msglen, "bad_user: user_id is required");
    return user_id != 0;
}

/* Runs a membership statement: (group, user) or (group, user, now). */
static im_err_t exec_member(im_mysql_stmt_t *st, uint64_t group_id, uint64_t user_id,
                            bool with_time)
{
    im_mysql_bind_u64(st, 0, group_id);
    im_mysql_bind_u64(st, 1, user_id);
    if (with_time)
        im_mysql_bind_i64(st, 2, (int64_t)im_wall_ms());
    return im_mysql_stmt_exec(st);
}

/* The group row and the owner's membership go in together or not at all. */
static im_err_t insert_group(lg_group_t *g, uint64_t id, const char *name, uint64_t owner)
{
    im_err_t rc = im_mysql_begin(g->db);

    if (rc != IM_OK)
        return rc;
    im_mysql_bind_u64(g->insert_group, 0, id);
    im_mysql_bind_str(g->insert_group, 1, name, strlen(name));
    im_mysql_bind_u64(g->insert_group, 2, owner);
    im_mysql_bind_i64(g->insert_group, 3, (int64_t)im_wall_ms());
    rc = im_mysql_stmt_exec(g->insert_group);
    if (rc == IM_OK)
        rc = exec_member(g->insert_member, id, owner, true);
    if (rc == IM_OK)
        rc = im_mysql_commit(g->db);
    if (rc != IM_OK)
        im_mysql_rollback(g->db);
    return rc;
}

im_rpc_code_t lg_group_create(lg_group_t *g, const Im__V1__CreateGroupRequest *req,
                              Im__V1__GroupResponse *resp, char *msg, size_t msglen)
{
    size_t len = strlen(req->name);
    uint64_t id;
    im_err_t rc;

    if (!user_ok(req->user_id, msg, msglen))
        return IM_RPC_INVALID_ARGUMENT;
    if (len == 0 || len > LG_GROUP_NAME_MAX || !im_utf8_valid(req->name, len)) {
        snprintf(msg, msglen, "bad_name: 1..%d bytes of UTF-8", LG_GROUP_NAME_MAX);
        return IM_RPC_INVALID_ARGUMENT;
    }
    id = im_id_next(g->ids);
    rc = insert_group(g, id, req->name, req->user_id);
    if (rc != IM_OK)
        return lg__db_status(g->db, rc, "group: create", msg, msglen);
    im__v1__group_info__init(&g->one.info);
    snprintf(g->one.name, sizeof(g->one.name), "%s", req->name);
    g->one.info.id = id;
    g->one.info.name = g->one.name;
    g->one.info.owner = req->user_id;
    g->one.info.member_count = 1;
    resp->group = &g->one.info;
    return IM_RPC_OK;
}

/* Join and Leave: check the group, apply the change, answer with the group as
 * it is afterwards. */
static im_rpc_code_t change_membership(lg_group_t *g, const Im__V1__GroupRequest *req, bool join,
                                       Im__V1__GroupResponse *resp, char *msg, size_t msglen)
{
    im_rpc_code_t code;
    bool member;
    im_err_t rc;

    if (!user_ok(req->user_id, msg, msglen))
        return IM_RPC_INVALID_ARGUMENT;
    code = load_group(g, req->user_id, req->group_id, &member, msg, msglen);
    if (code != IM_RPC_OK)
        return code;
    if (!join && g->one.info.owner == req->user_id) {
        snprintf(msg, msglen, "owner_cannot_leave: the owner of group %llu cannot leave it",
                 (unsigned long long)req->group_id);
        return IM_RPC_FAILED_PRECONDITION;
    }
    if (member != join) {
        rc = join ? exec_member(g->insert_member, req->group_id, req->user_id, true)
                  : exec_member(g->delete_member, req->group_id, req->user_id, false);
        if (rc != IM_OK)
            return lg__db_status(g->db, rc, join ? "group: join" : "group: leave", msg, msglen);
        code = load_group(g, req->user_id, req->group_id, &member, msg, msglen);
        if (code != IM_RPC_OK)
            return code;
    }
    resp->group = &g->one.info;
    return IM_RPC_OK;
}

im_rpc_code_t lg_group_join(lg_group_t *g, const Im__V1__GroupRequest *req,
                            Im__V1__GroupResponse *resp, char *msg, size_t msglen)
{
    return change_membership(g, req, true, resp, msg, msglen);
}

im_rpc_code_t lg_group_leave(lg_group_t *g, const Im__V1__GroupRequest *req,
                             Im__V1__GroupResponse *resp, char *msg, size_t msglen)
{
    return change_membership(g, req, false, resp, msg, msglen);
}

im_rpc_code_t lg_group_members(lg_group_t *g, const Im__V1__GroupRequest *req,
                               Im__V1__MembersResponse *resp, char *msg, size_t msglen)
{
    im_rpc_code_t code;
    size_t n = 0;
    bool member;
    im_err_t rc;

    if (!user_ok(req->user_id, msg, msglen))
        return IM_RPC_INVALID_ARGUMENT;
    code = load_group(g, req->user_id, req->group_id, &member, msg, msglen);
    if (code != IM_RPC_OK)
        return code;
    if (!member) {
        snprintf(msg, msglen, "not_member: you are not a member of group %llu",
                 (unsigned long long)req->group_id);
        return IM_RPC_PERMISSION_DENIED;
    }
    im_mysql_bind_u64(g->list_members, 0, req->group_id);
    rc = im_mysql_stmt_exec(g->list_members);
    while (rc == IM_OK && (rc = im_mysql_stmt_next(g->list_members)) == IM_OK) {
        if (n == g->members_cap) {
            g->members_cap = g->members_cap ? 2 * g->members_cap : 64;
            g->members = im_realloc(g->members, g->members_cap * sizeof(*g->members));
        }
        g->members[n++] = im_mysql_col_u64(g->list_members, 0);
    }
    if (rc != IM_ENOENT)
        return lg__db_status(g->db, rc, "group: members", msg, msglen);
    resp->n_user_ids = n;
    resp->user_ids = g->members;
    return IM_RPC_OK;
}

im_rpc_code_t lg_group_mine(lg_group_t *g, const Im__V1__MyGroupsRequest *req,
                            Im__V1__MyGroupsResponse *resp, char *msg, size_t msglen)
{
    size_t n = 0;
    im_err_t rc;

    if (!user_ok(req->user_id, msg, msglen))
        return IM_RPC_INVALID_ARGUMENT;
    im_mysql_bind_u64(g->list_mine, 0, req->user_id);
    rc = im_mysql_stmt_exec(g->list_mine);
    while (rc == IM_OK && (rc = im_mysql_stmt_next(g->list_mine)) == IM_OK) {
        if (n == g->rows_cap) {
            g->rows_cap = g->rows_cap ? 2 * g->rows_cap : 16;
            g->rows = im_realloc(g->rows, g->rows_cap * sizeof(*g->rows));
            g->row_ptrs = im_realloc(g->row_ptrs, g->rows_cap * sizeof(*g->row_ptrs));
        }
        read_row(g->list_mine, &g->rows[n++]);
    }
    if (rc != IM_ENOENT)
        return lg__db_status(g->db, rc, "group: mine", msg, msglen);
    /* Pointers only now: a realloc above may have moved the rows. */
    for (size_t i = 0; i < n; i++) {
        g->rows[i].info.name = g->rows[i].name;
        g->row_ptrs[i] = &g->rows[i].info;
    }
    resp->n_groups = n;
    resp->groups = g->row_ptrs;
    return IM_RPC_OK;
}

/* ---------------------------------------------------------------- many users */

static int membership_cmp(const void *a, const void *b)
{
    const lg_membership_t *x = a, *y = b;

    if (x->user != y->user)
        return x->user < y->user ? -1 : 1;
    return (x->group > y->group) - (x->group < y->group);
}

im_rpc_code_t lg_group_ids_of(lg_group_t *g, const uint64_t *users, size_t n,
                              lg_membership_t **out, size_t *n_out, char *msg, size_t msglen)
{
    size_t max = IM_MYSQL_IN_MAX, count = 0, cap = 0;
    lg_membership_t *rows = NULL;
    im_err_t rc = IM_OK;

    for (size_t done = 0; done < n && rc == IM_OK;) {
        size_t chunk = n - done < max ? n - done : max, places;
        im_mysql_stmt_t *st;

        rc = im_mysql_in_stmt(g->db, g->ids_of,
                              "SELECT user_id, group_id FROM group_members WHERE user_id IN (",
                              "?", chunk, ")", &st, &places);
        if (rc != IM_OK)
            break;
        for (size_t i = 0; i < places; i++) /* unused places repeat the first */
            im_mysql_bind_u64(st, (unsigned)i, users[done + (i < chunk ? i : 0)]);
        rc = im_mysql_stmt_exec(st);
        while (rc == IM_OK && (rc = im_mysql_stmt_next(st)) == IM_OK) {
            if (count == cap) {
                cap = cap ? 2 * cap : 64;
                rows = im_realloc(rows, cap * sizeof(*rows));
            }
            rows[count].user = im_mysql_col_u64(st, 0);
            rows[count++].group = im_mysql_col_u64(st, 1);
        }
        if (rc == IM_ENOENT)
            rc = IM_OK;
        done += chunk;
    }
    if (rc != IM_OK) {
        im_free(rows);
        *out = NULL;
        *n_out = 0;
        return lg__db_status(g->db, rc, "group: ids of users", msg, msglen);
    }
    /* A user named in two chunks came back twice: once is enough. */
    if (count > 1) {
        size_t w = 1;

        qsort(rows, count, sizeof(*rows), membership_cmp);
        for (size_t i = 1; i < count; i++)
            if (membership_cmp(&rows[i], &rows[w - 1]) != 0)
                rows[w++] = rows[i];
        count = w;
    }
    *out = rows;
    *n_out = count;
    return IM_RPC_OK;
}
