#include "lg_target.h"

#include <inttypes.h>
#include <stdio.h>

#include "lg_auth.h"

im_err_t lg_target_init(lg_target_t *t, im_mysql_t *db)
{
    im_err_t rc;

    t->db = db;
    t->user_exists = t->group_member = NULL;
    rc = im_mysql_prepare(db, "SELECT 1 FROM users WHERE id = ? AND deleted_at_ms IS NULL",
                          &t->user_exists);
    if (rc == IM_OK)
        rc = im_mysql_prepare(
            db,
            "SELECT EXISTS (SELECT 1 FROM group_members m WHERE m.group_id = g.id "
            "AND m.user_id = ?) FROM `groups` g WHERE g.id = ?",
            &t->group_member);
    if (rc != IM_OK)
        lg_target_free(t);
    return rc;
}

void lg_target_free(lg_target_t *t)
{
    im_mysql_stmt_free(t->user_exists);
    im_mysql_stmt_free(t->group_member);
    t->user_exists = t->group_member = NULL;
}

im_rpc_code_t lg_target_check(lg_target_t *t, uint64_t user, uint64_t to_user, uint64_t to_group,
                              const char *what, char *msg, size_t msglen)
{
    im_mysql_stmt_t *st = to_user ? t->user_exists : t->group_member;
    im_err_t rc;

    if (to_user) {
        im_mysql_bind_u64(st, 0, to_user);
    } else {
        im_mysql_bind_u64(st, 0, user);
        im_mysql_bind_u64(st, 1, to_group);
    }
    rc = im_mysql_stmt_exec(st);
    if (rc == IM_OK)
        rc = im_mysql_stmt_next(st);
    if (rc == IM_ENOENT) {
        snprintf(msg, msglen, "%s: no %s %" PRIu64, to_user ? "unknown_user" : "unknown_group",
                 to_user ? "user" : "group", to_user ? to_user : to_group);
        return IM_RPC_NOT_FOUND;
    }
    if (rc != IM_OK)
        return lg__db_status(t->db, rc, what, msg, msglen);
    if (to_group && im_mysql_col_u64(st, 0) == 0) {
        snprintf(msg, msglen, "not_member: you are not a member of group %" PRIu64, to_group);
        return IM_RPC_PERMISSION_DENIED;
    }
    return IM_RPC_OK;
}
