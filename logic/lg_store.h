/*
 * lg_store.h - the message store: the batch writer's idempotent multi-row insert
 * into MySQL, and the reads the service answers sync and history with.
 *
 * A store borrows one im_mysql connection and caches its prepared statements on
 * it, so it shares the connection's rule: one thread at a time (the writer thread
 * has its own store; each service worker that reads has its own).
 *
 * A connection lost in an earlier call is re-established at the start of the next
 * call, never in the middle of a transaction: the failed call has already
 * returned IM_EUNAVAIL and its caller retries the whole batch.
 *
 * Rows go to the `messages` and `user_convs` tables of sql/migrations by default;
 * the table names can be changed (the dbreport benchmark writes to scratch
 * copies made with CREATE TABLE ... LIKE).
 */
#ifndef LG_STORE_H
#define LG_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "im.pb-c.h"
#include "im_err.h"
#include "im_mysql.h"

/* Rows per INSERT statement.  A batch is split into power-of-two chunks of at
 * most this many rows, so at most log2(LG_STORE_MAX_ROWS) + 1 statement shapes are
 * ever prepared per table. */
#define LG_STORE_MAX_ROWS 1024u

/* Page size cap of lg_store_sync() and lg_store_history(). */
#define LG_STORE_MAX_PAGE 1000u

typedef struct {
    const char *messages_table;   /* NULL: "messages" */
    const char *user_convs_table; /* NULL: "user_convs" */
    /* user_convs rows this store committed are remembered (a direct-mapped
     * table of this many entries, rounded up to a power of two; 0: none) and
     * not written again for LG_STORE_KNOWN_MS: a chat's later messages then
     * cost the messages row only.  Only for a store whose user_convs rows are
     * never deleted behind its back (the service's writer). */
    size_t known_convs;
} lg_store_config_t;

#define LG_STORE_KNOWN_MS (10 * 60 * 1000)

typedef struct lg_store_s lg_store_t;

/* Creates a store over db, which it borrows: db must outlive the store and be
 * closed by the caller after lg_store_free().  cfg may be NULL (default tables);
 * table names must be plain identifiers ([A-Za-z0-9_], at most 64 bytes).
 * Nothing is prepared until first use.  Returns NULL (with a log line) for an
 * invalid table name.  Free with lg_store_free(). */
lg_store_t *lg_store_new(im_mysql_t *db, const lg_store_config_t *cfg);

/* Frees the store's prepared statements and the store; not db.  NULL is fine. */
void lg_store_free(lg_store_t *s);

/* What lg_store_insert_batch() did with each message of the batch. */
typedef struct {
    size_t inserted;   /* new rows */
    size_t duplicates; /* already stored with the same id and (conv, seq): redeliveries */
    /* Not stored, and never silently: a different message already holds this one's
     * (conv, seq) or (sender, client_msg_id), or this id is stored with another
     * (conv, seq).  A seq was reused or a dedup was missed upstream.  Each batch with
     * conflicts is logged at error level. */
    size_t conflicts;
    uint64_t first_conflict_id; /* id of the first conflicting message; 0 if none */
} lg_store_result_t;

/* Stores msgs[0..n) in ONE transaction: multi-row INSERTs into the messages table
 * (idempotent on the id), plus the (user, conv) rows of user_convs for the sender
 * and to_user of every direct message (to_user != 0; group membership lives in
 * group_members), then COMMIT.  msgs are read only; res is always filled (zeros on
 * failure).  n == 0 is a no-op.
 * Returns IM_OK after COMMIT (conflicts, if any, are in res: the other messages
 * are committed and retrying would not store the conflicting ones).  On any
 * database error the transaction is rolled back, nothing of the batch is stored,
 * and the mapped error is returned: IM_EAGAIN (lock wait timeout, deadlock) and
 * IM_EUNAVAIL (connection lost) are worth retrying the same batch; IM_EIO is
 * anything else (im_mysql_error(db) has the server's message). */
im_err_t lg_store_insert_batch(lg_store_t *s, const Im__V1__ChatMessage *const *msgs, size_t n,
                               lg_store_result_t *res);

/* A message read back.  Its strings and the struct are allocated by the store
 * (not by protobuf-c): free with lg_store_msg_free().  to_user and to_group are
 * derived from the conversation id ("d:<a>:<b>": to_user is the participant that
 * is not the sender; "g:<id>": to_group). */
void lg_store_msg_free(Im__V1__ChatMessage *m);

/* The message with this id: IM_OK and *out (the caller frees it with
 * lg_store_msg_free), IM_ENOENT, or a mapped database error. */
im_err_t lg_store_find(lg_store_t *s, uint64_t id, Im__V1__ChatMessage **out);

/* Number of stored messages of conv. */
im_err_t lg_store_count_conv(lg_store_t *s, const char *conv, uint64_t *out);

/* Highest stored seq of conv; 0 when it has no messages. */
im_err_t lg_store_max_seq(lg_store_t *s, const char *conv, uint64_t *out);

/* A page of messages, owned by the caller: free with lg_store_page_free(). */
typedef struct {
    Im__V1__ChatMessage **msgs;
    size_t n;
} lg_store_page_t;

void lg_store_page_free(lg_store_page_t *page);

/* Sync: the messages of conv with seq > after_seq, oldest first, at most limit
 * (0 or more than LG_STORE_MAX_PAGE: LG_STORE_MAX_PAGE).  *page is overwritten;
 * on error it is left empty. */
im_err_t lg_store_sync(lg_store_t *s, const char *conv, uint64_t after_seq, unsigned limit,
                       lg_store_page_t *page);

/* History: the messages of conv with seq < before_seq (0: from the newest),
 * newest first as HistoryResponse lists them, at most limit (as for sync). */
im_err_t lg_store_history(lg_store_t *s, const char *conv, uint64_t before_seq, unsigned limit,
                          lg_store_page_t *page);

#endif
