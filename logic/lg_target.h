/*
 * lg_target.h - "may this user write to that user or group?", asked by Send
 * and by Typing: the user must exist; the group must exist and have the
 * writer as a member.  Two prepared statements on one MySQL connection.
 *
 * Statuses: NOT_FOUND "unknown_user" / "unknown_group", PERMISSION_DENIED
 * "not_member", and the database ones of lg__db_status.
 *
 * Threads: the connection's.
 */
#ifndef LG_TARGET_H
#define LG_TARGET_H

#include <stddef.h>
#include <stdint.h>

#include "im_err.h"
#include "im_mysql.h"
#include "im_rpc.h"

typedef struct {
    im_mysql_t *db;
    im_mysql_stmt_t *user_exists;
    im_mysql_stmt_t *group_member;
} lg_target_t;

/* Prepares on db (borrowed).  IM_OK, or the prepare error (t then holds
 * nothing to free). */
im_err_t lg_target_init(lg_target_t *t, im_mysql_t *db);
void lg_target_free(lg_target_t *t);

/* Exactly one of to_user and to_group is non-zero.  what names the caller
 * in log lines. */
im_rpc_code_t lg_target_check(lg_target_t *t, uint64_t user, uint64_t to_user, uint64_t to_group,
                              const char *what, char *msg, size_t msglen);

#endif
