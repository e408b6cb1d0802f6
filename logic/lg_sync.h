/*
 * lg_sync.h - the read side of the Message service (proto/im.proto): Sync,
 * History, MarkRead and Conversations, as plain C over one MySQL connection.
 *
 * Who may read what: a direct conversation "d:<a>:<b>" only by a and b; a
 * group conversation "g:<id>" only by current members.  Sync covers the
 * user's direct conversations (user_convs, filled by the writer) and the
 * groups it belongs to now.
 *
 * Visibility: Sync and History read MySQL, so a message is visible to them
 * once the writer committed it: within writer-delay (default 20 ms) plus one
 * INSERT transaction of the send's ack while the database is up; while it is
 * down, acked messages wait in the durable queue and appear when it returns.
 *
 * Known limit: two messages of one conversation, acked close together, may be
 * committed in the opposite order (two writers, or two batches).  A Sync that
 * runs between those commits returns the later seq without the earlier one,
 * and a client that then asks only for "after the later seq" never gets the
 * earlier one by Sync (it had it live if it was online).  Clients that need
 * the guarantee re-sync from a seq a few seconds old (duplicates are keyed by
 * id).
 *
 * MarkRead keeps the highest seq a user marked per conversation (never
 * lowered) and, when it rose, tells the other participants and the user's
 * other devices with a Receipt delivery (direct: by their routes; group: one
 * publish to "g.<id>").
 *
 * Statuses: INVALID_ARGUMENT bad_user, bad_conv; PERMISSION_DENIED
 * not_participant, not_member; NOT_FOUND unknown_group; UNAVAILABLE
 * db_unavailable; INTERNAL.
 *
 * Threads: an lg_sync_t belongs to the thread that owns its connections.
 */
#ifndef LG_SYNC_H
#define LG_SYNC_H

#include <stddef.h>

#include "im.pb-c.h"
#include "im_err.h"
#include "im_mysql.h"
#include "im_rpc.h"
#include "lg_message.h"
#include "lg_session.h"

#define LG_SYNC_DEFAULT_LIMIT 500u

typedef struct lg_sync_s lg_sync_t;

/* Over db (borrowed; free this first).  sh (borrowed) publishes receipts.
 * Prepares the statements now: IM_OK and *out, or the error. */
im_err_t lg_sync_new(im_mysql_t *db, lg_message_shared_t *sh, lg_sync_t **out);
void lg_sync_free(lg_sync_t *s);

/* Each fills resp (initialised by the caller) and returns IM_RPC_OK, or
 * another code with the status message in msg.  What resp points to lives in
 * s until the next call on s. */
im_rpc_code_t lg_sync_sync(lg_sync_t *s, const Im__V1__SyncRequest *req,
                           Im__V1__SyncResponse *resp, char *msg, size_t msglen);
im_rpc_code_t lg_sync_history(lg_sync_t *s, const Im__V1__HistoryRequest *req,
                              Im__V1__HistoryResponse *resp, char *msg, size_t msglen);
/* sessions routes the receipt of a direct conversation; NULL (Redis down)
 * skips that live delivery (the peer sees the mark in Conversations). */
im_rpc_code_t lg_sync_mark_read(lg_sync_t *s, lg_session_t *sessions,
                                const Im__V1__MarkReadRequest *req,
                                Im__V1__MarkReadResponse *resp, char *msg, size_t msglen);
im_rpc_code_t lg_sync_conversations(lg_sync_t *s, const Im__V1__ConversationsRequest *req,
                                    Im__V1__ConversationsResponse *resp, char *msg,
                                    size_t msglen);

/* Parses a conversation id: "d:<a>:<b>" with 0 < a < b sets *a, *b (and
 * *group 0); "g:<id>" with id > 0 sets *group.  False for anything else. */
bool lg_conv_parse(const char *conv, uint64_t *a, uint64_t *b, uint64_t *group);

#endif
