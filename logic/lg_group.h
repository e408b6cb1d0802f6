/*
 * lg_group.h - the Group service's rules (proto/im.proto: Create, Join,
 * Leave, Members, Mine) as plain C over one MySQL connection: decoded request
 * in, response or status out, no gRPC.
 *
 * Logic trusts its callers: user_id in a request is taken as authenticated
 * (the gateway verified the caller's token), which holds because the gRPC API
 * listens on a private network only.  Whether that user exists is not checked.
 *
 * Rules and statuses (message format "<code>: <text>", see im.proto):
 *   user_id 0 / bad name     INVALID_ARGUMENT "bad_user: ..." / "bad_name: ..."
 *                            (name: 1..64 bytes of valid UTF-8)
 *   unknown group            NOT_FOUND "unknown_group: ..."
 *   Create                   the creator becomes owner and first member
 *   Join                     idempotent: joining again changes nothing
 *   Leave                    idempotent for non-members; the owner cannot
 *                            leave (FAILED_PRECONDITION "owner_cannot_leave:
 *                            ...") because a group is never without an owner
 *                            and ownership transfer does not exist yet
 *   Members                  members only: PERMISSION_DENIED "not_member: ..."
 *   Mine                     the user's groups in id order
 *   database trouble         UNAVAILABLE "db_unavailable: ...", INTERNAL
 *
 * Threads: an lg_group_t belongs to the thread that uses its connection.
 */
#ifndef LG_GROUP_H
#define LG_GROUP_H

#include <stddef.h>

#include "im.pb-c.h"
#include "im_err.h"
#include "im_id.h"
#include "im_mysql.h"
#include "im_rpc.h"

#define LG_GROUP_NAME_MAX 64 /* bytes */

typedef struct lg_group_s lg_group_t;

/* Prepares the statements on db (borrowed; free this before closing db).  ids
 * (borrowed) issues group ids.  Returns IM_OK and *out, or the
 * im_mysql_prepare error. */
im_err_t lg_group_new(im_mysql_t *db, im_idgen_t *ids, lg_group_t **out);

/* Frees g and its statements and buffers.  NULL is fine. */
void lg_group_free(lg_group_t *g);

/* Each call fills resp (initialised by the caller with the generated INIT
 * macro) and returns IM_RPC_OK, or returns another code with the status
 * message in msg (msglen bytes, NUL-terminated).  Everything put in resp
 * (sub-messages, arrays, strings) lives in g until the next call on g. */
im_rpc_code_t lg_group_create(lg_group_t *g, const Im__V1__CreateGroupRequest *req,
                              Im__V1__GroupResponse *resp, char *msg, size_t msglen);
im_rpc_code_t lg_group_join(lg_group_t *g, const Im__V1__GroupRequest *req,
                            Im__V1__GroupResponse *resp, char *msg, size_t msglen);
im_rpc_code_t lg_group_leave(lg_group_t *g, const Im__V1__GroupRequest *req,
                             Im__V1__GroupResponse *resp, char *msg, size_t msglen);
im_rpc_code_t lg_group_members(lg_group_t *g, const Im__V1__GroupRequest *req,
                               Im__V1__MembersResponse *resp, char *msg, size_t msglen);
im_rpc_code_t lg_group_mine(lg_group_t *g, const Im__V1__MyGroupsRequest *req,
                            Im__V1__MyGroupsResponse *resp, char *msg, size_t msglen);

/* One (user, group) membership of lg_group_ids_of(). */
typedef struct {
    uint64_t user, group;
} lg_membership_t;

/* The groups of each of users[0..n) (repeats allowed), as Mine would list
 * them but ids only, in a few queries for the whole list: *out (im_free it)
 * gets *n_out rows sorted by user, then group.  Returns IM_RPC_OK, or the
 * database status with msg set (*out NULL). */
im_rpc_code_t lg_group_ids_of(lg_group_t *g, const uint64_t *users, size_t n,
                              lg_membership_t **out, size_t *n_out, char *msg, size_t msglen);

#endif
