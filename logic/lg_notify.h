/*
 * lg_notify.h - what logic tells online users without storing it: typing
 * notices (Message.Typing), presence (a user's first session came or last one
 * went: Session.Online/Offline) and group membership changes (Group.Create,
 * Join, Leave: the gateways holding the user re-bind their group keys).
 *
 * All of it rides the fan-out exchange as transient Deliveries (see
 * lg_message.h): direct peers by their routes in Redis, groups by one publish
 * to "g.<id>".  Best effort by design: a notice lost with a gateway or the
 * broker is not retried (a reconnecting client asks for state afresh).
 *
 * Presence goes to the user's direct-chat peers (its LG_PRESENCE_PEERS_MAX
 * most recent) and to each of its groups of at most
 * LG_PRESENCE_GROUP_MEMBERS_MAX members: in a group of N members coming
 * online, presence costs N^2 frames (a benchmark saw 500k frames for 1000
 * members), so large groups get none, as in most chat systems.
 *
 * Threads: an lg_notify_t belongs to the thread that owns its connection.
 */
#ifndef LG_NOTIFY_H
#define LG_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im.pb-c.h"
#include "im_err.h"
#include "im_mysql.h"
#include "im_rpc.h"
#include "lg_message.h"
#include "lg_session.h"
#include "lg_target.h"

#define LG_PRESENCE_PEERS_MAX 200
#define LG_PRESENCE_GROUPS_MAX 200
#define LG_PRESENCE_GROUP_MEMBERS_MAX 100 /* also in the SQL of lg_notify.c */

typedef struct lg_notify_s lg_notify_t;

/* Over db (borrowed; free this first); sh publishes.  Prepares now. */
im_err_t lg_notify_new(im_mysql_t *db, lg_message_shared_t *sh, lg_notify_t **out);
void lg_notify_free(lg_notify_t *n);

/* Message.Typing: checks that the user may write to the target (NOT_FOUND
 * unknown_user / unknown_group, PERMISSION_DENIED not_member,
 * INVALID_ARGUMENT bad_target) and tells the target's online devices. */
im_rpc_code_t lg_notify_typing(lg_notify_t *n, lg_session_t *sessions,
                               const Im__V1__TypingRequest *req, Im__V1__TypingResponse *resp,
                               char *msg, size_t msglen);

/* Tells user's peers and groups that it came online or went offline.
 * Errors are logged, not returned. */
void lg_notify_presence(lg_notify_t *n, lg_session_t *sessions, uint64_t user, bool online);

/* The same for users[0..count) (a Session.Connect / Disconnect batch): two
 * queries per 64 users rather than two per user. */
void lg_notify_presence_many(lg_notify_t *n, lg_session_t *sessions, const uint64_t *users,
                             size_t count, bool online);

/* Tells the gateways holding user's sessions that it joined or left group.
 * Needs no database (n may be NULL: only sh is used). */
void lg_notify_group_event(lg_message_shared_t *sh, lg_session_t *sessions, uint64_t group,
                           uint64_t user, bool joined);

#endif
