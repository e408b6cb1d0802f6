/*
 * lg_store.c - the message store over im_mysql.
 */
#include "lg_store.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

#define TABLE_MAX     64 /* MySQL's identifier limit */
#define SHAPES        11 /* chunk sizes 1, 2, 4, ... LG_STORE_MAX_ROWS */
#define MSG_COLS      "id, conv_id, seq, sender_id, client_msg_id, body, created_at_ms"
#define MSG_PARAMS    7
#define CONV_PARAMS   3
#define HISTORY_NEWEST UINT64_MAX

_Static_assert(LG_STORE_MAX_ROWS == 1u << (SHAPES - 1), "one cached shape per power of two");

/* A (user, conversation) row of user_convs. */
typedef struct {
    uint64_t user;
    const char *conv;
    int64_t at_ms;
} conv_row_t;

struct lg_store_s {
    im_mysql_t *db;
    char messages[TABLE_MAX + 1];
    char user_convs[TABLE_MAX + 1];
    /* Statements per chunk shape, index log2(rows), prepared on first use. */
    im_mysql_stmt_t *insert[SHAPES];
    im_mysql_stmt_t *verify[SHAPES];
    im_mysql_stmt_t *convs[SHAPES];
    im_mysql_stmt_t *find, *count, *max_seq, *sync, *history;
    /* user_convs rows known to be committed: key (never 0) and until when it
     * is trusted (mono ms); known_mask + 1 entries, or none. */
    struct {
        uint64_t key, until_ms;
    } *known;
    size_t known_mask;
};

static bool valid_table(const char *name)
{
    size_t len = strlen(name);

    if (len == 0 || len > TABLE_MAX)
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == len;
}

lg_store_t *lg_store_new(im_mysql_t *db, const lg_store_config_t *cfg)
{
    const char *messages = cfg != NULL && cfg->messages_table != NULL ? cfg->messages_table
                                                                      : "messages";
    const char *user_convs = cfg != NULL && cfg->user_convs_table != NULL ? cfg->user_convs_table
                                                                          : "user_convs";
    lg_store_t *s;

    if (!valid_table(messages) || !valid_table(user_convs)) {
        im_log_error("store: invalid table name \"%s\" or \"%s\"", messages, user_convs);
        return NULL;
    }
    s = im_calloc(1, sizeof(*s));
    s->db = db;
    if (cfg != NULL && cfg->known_convs > 0) {
        size_t cap = 1;

        while (cap < cfg->known_convs && cap < ((size_t)1 << 24))
            cap <<= 1;
        s->known = im_calloc(cap, sizeof(*s->known));
        s->known_mask = cap - 1;
    }
    snprintf(s->messages, sizeof(s->messages), "%s", messages);
    snprintf(s->user_convs, sizeof(s->user_convs), "%s", user_convs);
    return s;
}

static void free_stmts(im_mysql_stmt_t **stmts, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        im_mysql_stmt_free(stmts[i]);
}

void lg_store_free(lg_store_t *s)
{
    if (s == NULL)
        return;
    free_stmts(s->insert, SHAPES);
    free_stmts(s->verify, SHAPES);
    free_stmts(s->convs, SHAPES);
    im_mysql_stmt_free(s->find);
    im_mysql_stmt_free(s->count);
    im_mysql_stmt_free(s->max_seq);
    im_mysql_stmt_free(s->sync);
    im_mysql_stmt_free(s->history);
    im_free(s->known);
    im_free(s);
}

static im_err_t ensure_open(lg_store_t *s)
{
    return im_mysql_is_open(s->db) ? IM_OK : im_mysql_reconnect(s->db);
}

/* Prepares `head`, then `tuple` repeated rows times separated by commas, then
 * `tail`, into *slot unless it is cached there already. */
static im_err_t prepare_rows(lg_store_t *s, im_mysql_stmt_t **slot, const char *head,
                             const char *tuple, size_t rows, const char *tail)
{
    return im_mysql_prepare_rows(s->db, slot, head, tuple, rows, tail);
}

/* Prepares a single statement with the store's table name in place of %s. */
static im_err_t prepare_one(lg_store_t *s, im_mysql_stmt_t **slot, const char *fmt,
                            const char *table)
{
    char sql[512];
    im_err_t err;

    if (*slot != NULL)
        return IM_OK;
    snprintf(sql, sizeof(sql), fmt, table);
    err = im_mysql_prepare(s->db, sql, slot);
    if (err != IM_OK)
        im_log_error("store: preparing %s: %s", sql, im_mysql_error(s->db));
    return err;
}

/* The largest power of two <= min(n, LG_STORE_MAX_ROWS), as its log2. */
static unsigned chunk_shape(size_t n)
{
    unsigned shape = 0;

    while (shape + 1 < SHAPES && ((size_t)1 << (shape + 1)) <= n)
        shape++;
    return shape;
}

static void bind_str(im_mysql_stmt_t *st, unsigned idx, const char *s)
{
    im_mysql_bind_str(st, idx, s, strlen(s));
}

/* ---------------------------------------------------------------- batch insert */

static void add_conflict(lg_store_result_t *res, const Im__V1__ChatMessage *m, const char *why)
{
    if (res->conflicts++ == 0) {
        res->first_conflict_id = m->id;
        im_log_error("store: message id=%" PRIu64 " conv=%s seq=%" PRIu64 " sender=%" PRIu64
                     " client_msg_id=%s not stored: %s",
                     m->id, m->conv, m->seq, m->sender, m->client_msg_id, why);
    }
}

/* After a chunk inserted fewer rows than it had messages: tells redeliveries
 * (this id is stored, with this conv and seq) from conflicts.  Runs only on that
 * rare path, so the quadratic match over at most LG_STORE_MAX_ROWS is fine. */
static im_err_t verify_chunk(lg_store_t *s, const Im__V1__ChatMessage *const *msgs,
                             unsigned shape, lg_store_result_t *res)
{
    size_t rows = (size_t)1 << shape, i;
    bool *seen = im_calloc(rows, sizeof(*seen));
    im_mysql_stmt_t *st;
    char head[128];
    im_err_t err;

    snprintf(head, sizeof(head), "SELECT id, conv_id, seq FROM `%s` WHERE id IN (", s->messages);
    err = prepare_rows(s, &s->verify[shape], head, "?", rows, ")");
    if (err != IM_OK)
        goto out;
    st = s->verify[shape];
    for (i = 0; i < rows; i++)
        im_mysql_bind_u64(st, (unsigned)i, msgs[i]->id);
    if ((err = im_mysql_stmt_exec(st)) != IM_OK)
        goto out;
    while ((err = im_mysql_stmt_next(st)) == IM_OK) {
        uint64_t id = im_mysql_col_u64(st, 0), seq = im_mysql_col_u64(st, 2);
        const char *conv = im_mysql_col_str(st, 1, NULL);

        for (i = 0; i < rows; i++)
            if (msgs[i]->id == id)
                seen[i] = msgs[i]->seq == seq && strcmp(msgs[i]->conv, conv) == 0;
    }
    if (err != IM_ENOENT)
        goto out;
    err = IM_OK;
    for (i = 0; i < rows; i++)
        if (!seen[i])
            add_conflict(res, msgs[i], "its (conv, seq) or (sender, client_msg_id) belongs to "
                                       "another id, or its id to another (conv, seq)");
out:
    im_free(seen);
    return err;
}

static im_err_t insert_chunk(lg_store_t *s, const Im__V1__ChatMessage *const *msgs,
                             unsigned shape, lg_store_result_t *res)
{
    size_t rows = (size_t)1 << shape, i, before = res->conflicts;
    uint64_t inserted;
    im_mysql_stmt_t *st;
    char head[160];
    im_err_t err;

    snprintf(head, sizeof(head), "INSERT INTO `%s` (" MSG_COLS ") VALUES ", s->messages);
    /* Not INSERT IGNORE: it would also turn data errors (a too long value) into
     * warnings and store truncated rows.  This form only absorbs duplicate keys. */
    err = prepare_rows(s, &s->insert[shape], head, "(?,?,?,?,?,?,?)", rows,
                       " ON DUPLICATE KEY UPDATE id = id");
    if (err != IM_OK)
        return err;
    st = s->insert[shape];
    for (i = 0; i < rows; i++) {
        const Im__V1__ChatMessage *m = msgs[i];
        unsigned p = (unsigned)i * MSG_PARAMS;

        im_mysql_bind_u64(st, p, m->id);
        bind_str(st, p + 1, m->conv);
        im_mysql_bind_u64(st, p + 2, m->seq);
        im_mysql_bind_u64(st, p + 3, m->sender);
        bind_str(st, p + 4, m->client_msg_id);
        bind_str(st, p + 5, m->body);
        im_mysql_bind_i64(st, p + 6, m->created_at_ms);
    }
    if ((err = im_mysql_stmt_exec(st)) != IM_OK)
        return err;
    inserted = im_mysql_stmt_affected_rows(st);
    res->inserted += inserted;
    if (inserted == rows)
        return IM_OK;
    if ((err = verify_chunk(s, msgs, shape, res)) != IM_OK)
        return err;
    res->duplicates += rows - inserted - (res->conflicts - before);
    return IM_OK;
}

static int conv_row_cmp(const void *a, const void *b)
{
    const conv_row_t *x = a, *y = b;

    if (x->user != y->user)
        return x->user < y->user ? -1 : 1;
    return strcmp(x->conv, y->conv);
}

/* The distinct (user, conv) pairs of the direct messages, sorted: one row each
 * however many messages the batch has in a conversation, and a fixed lock order
 * so that two writers inserting the same pairs do not deadlock. */
static size_t collect_conv_rows(const Im__V1__ChatMessage *const *msgs, size_t n, conv_row_t *rows)
{
    size_t count = 0, i, out;

    for (i = 0; i < n; i++) {
        if (msgs[i]->to_user == 0)
            continue;
        rows[count++] = (conv_row_t){msgs[i]->sender, msgs[i]->conv, msgs[i]->created_at_ms};
        rows[count++] = (conv_row_t){msgs[i]->to_user, msgs[i]->conv, msgs[i]->created_at_ms};
    }
    if (count == 0)
        return 0;
    qsort(rows, count, sizeof(*rows), conv_row_cmp);
    for (out = 1, i = 1; i < count; i++)
        if (conv_row_cmp(&rows[out - 1], &rows[i]) != 0)
            rows[out++] = rows[i];
    return out;
}

static im_err_t insert_conv_rows(lg_store_t *s, const conv_row_t *rows, size_t n)
{
    char head[128];
    size_t done = 0;

    snprintf(head, sizeof(head), "INSERT INTO `%s` (user_id, conv_id, created_at_ms) VALUES ",
             s->user_convs);
    while (done < n) {
        unsigned shape = chunk_shape(n - done);
        size_t chunk = (size_t)1 << shape, i;
        im_mysql_stmt_t *st;
        im_err_t err;

        err = prepare_rows(s, &s->convs[shape], head, "(?,?,?)", chunk,
                           " ON DUPLICATE KEY UPDATE user_id = user_id");
        if (err != IM_OK)
            return err;
        st = s->convs[shape];
        for (i = 0; i < chunk; i++) {
            const conv_row_t *r = &rows[done + i];
            unsigned p = (unsigned)i * CONV_PARAMS;

            im_mysql_bind_u64(st, p, r->user);
            bind_str(st, p + 1, r->conv);
            im_mysql_bind_i64(st, p + 2, r->at_ms);
        }
        if ((err = im_mysql_stmt_exec(st)) != IM_OK)
            return err;
        done += chunk;
    }
    return IM_OK;
}

/* The known-rows key of (user, conv): FNV-1a over both, never 0. */
static uint64_t known_key(const conv_row_t *r)
{
    uint64_t h = 14695981039346656037ull;

    for (int i = 0; i < 8; i++)
        h = (h ^ ((r->user >> (8 * i)) & 0xff)) * 1099511628211ull;
    for (const char *p = r->conv; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return h ? h : 1;
}

static bool known(const lg_store_t *s, const conv_row_t *r, uint64_t now)
{
    uint64_t key = known_key(r);

    return s->known != NULL && s->known[key & s->known_mask].key == key &&
           s->known[key & s->known_mask].until_ms > now;
}

/* After the commit: rows[0..n) exist. */
static void remember(lg_store_t *s, const conv_row_t *rows, size_t n)
{
    uint64_t until = im_mono_ms() + LG_STORE_KNOWN_MS;

    for (size_t i = 0; s->known != NULL && i < n; i++) {
        uint64_t key = known_key(&rows[i]);

        s->known[key & s->known_mask].key = key;
        s->known[key & s->known_mask].until_ms = until;
    }
}

/* Inserts the messages, then the user_convs rows not known to exist; those
 * are left in rows[0..*nrows) for remember() once committed. */
static im_err_t insert_all(lg_store_t *s, const Im__V1__ChatMessage *const *msgs, size_t n,
                           lg_store_result_t *res, conv_row_t *rows, size_t *nrows)
{
    size_t done = 0, all, kept = 0;
    uint64_t now = im_mono_ms();
    im_err_t err = IM_OK;

    *nrows = 0;
    while (done < n && err == IM_OK) {
        unsigned shape = chunk_shape(n - done);

        err = insert_chunk(s, msgs + done, shape, res);
        done += (size_t)1 << shape;
    }
    if (err != IM_OK)
        return err;
    all = collect_conv_rows(msgs, n, rows);
    for (size_t i = 0; i < all; i++)
        if (!known(s, &rows[i], now))
            rows[kept++] = rows[i];
    *nrows = kept;
    return insert_conv_rows(s, rows, kept);
}

im_err_t lg_store_insert_batch(lg_store_t *s, const Im__V1__ChatMessage *const *msgs, size_t n,
                               lg_store_result_t *res)
{
    im_err_t err;

    conv_row_t *rows;
    size_t nrows = 0;

    memset(res, 0, sizeof(*res));
    if (n == 0)
        return IM_OK;
    rows = im_malloc(2 * n * sizeof(*rows));
    if ((err = ensure_open(s)) != IM_OK || (err = im_mysql_begin(s->db)) != IM_OK ||
        (err = insert_all(s, msgs, n, res, rows, &nrows)) != IM_OK ||
        (err = im_mysql_commit(s->db)) != IM_OK) {
        im_log_warn("store: batch of %zu not stored (%s): %s (error %u)", n, im_errname(err),
                    im_mysql_error(s->db), im_mysql_errno(s->db));
        im_mysql_rollback(s->db);
        memset(res, 0, sizeof(*res));
        im_free(rows);
        return err;
    }
    remember(s, rows, nrows);
    im_free(rows);
    if (res->conflicts > 0)
        im_log_error("store: batch of %zu committed with %zu conflicting messages not stored "
                     "(first id=%" PRIu64 ")",
                     n, res->conflicts, res->first_conflict_id);
    return IM_OK;
}

/* ---------------------------------------------------------------- reads */

/* "d:<a>:<b>" -> to_user = whichever of a, b is not the sender; "g:<id>" -> to_group. */
static void set_recipient(Im__V1__ChatMessage *m)
{
    unsigned long long a, b, g;

    if (sscanf(m->conv, "d:%llu:%llu", &a, &b) == 2)
        m->to_user = a == m->sender ? b : a;
    else if (sscanf(m->conv, "g:%llu", &g) == 1)
        m->to_group = g;
}

/* The current row of a statement selecting MSG_COLS, as a new message. */
static Im__V1__ChatMessage *row_to_msg(const im_mysql_stmt_t *st)
{
    Im__V1__ChatMessage *m = im_malloc(sizeof(*m));
    size_t len;
    const char *s;

    im__v1__chat_message__init(m);
    m->id = im_mysql_col_u64(st, 0);
    s = im_mysql_col_str(st, 1, &len);
    m->conv = im_strndup(s, len);
    m->seq = im_mysql_col_u64(st, 2);
    m->sender = im_mysql_col_u64(st, 3);
    s = im_mysql_col_str(st, 4, &len);
    m->client_msg_id = im_strndup(s, len);
    s = im_mysql_col_str(st, 5, &len);
    m->body = im_strndup(s, len);
    m->created_at_ms = im_mysql_col_i64(st, 6);
    set_recipient(m);
    return m;
}

void lg_store_msg_free(Im__V1__ChatMessage *m)
{
    if (m == NULL)
        return;
    im_free(m->conv);
    im_free(m->client_msg_id);
    im_free(m->body);
    im_free(m);
}

void lg_store_page_free(lg_store_page_t *page)
{
    size_t i;

    for (i = 0; i < page->n; i++)
        lg_store_msg_free(page->msgs[i]);
    im_free(page->msgs);
    page->msgs = NULL;
    page->n = 0;
}

im_err_t lg_store_find(lg_store_t *s, uint64_t id, Im__V1__ChatMessage **out)
{
    im_err_t err;

    *out = NULL;
    if ((err = ensure_open(s)) != IM_OK ||
        (err = prepare_one(s, &s->find, "SELECT " MSG_COLS " FROM `%s` WHERE id = ?",
                           s->messages)) != IM_OK)
        return err;
    im_mysql_bind_u64(s->find, 0, id);
    if ((err = im_mysql_stmt_exec(s->find)) != IM_OK || (err = im_mysql_stmt_next(s->find)) != IM_OK)
        return err;
    *out = row_to_msg(s->find);
    return IM_OK;
}

/* Runs a prepared `SELECT <one number> ... WHERE conv_id = ?` into *out. */
static im_err_t select_conv_u64(lg_store_t *s, im_mysql_stmt_t **slot, const char *fmt,
                                const char *conv, uint64_t *out)
{
    im_err_t err;

    *out = 0;
    if ((err = ensure_open(s)) != IM_OK || (err = prepare_one(s, slot, fmt, s->messages)) != IM_OK)
        return err;
    bind_str(*slot, 0, conv);
    if ((err = im_mysql_stmt_exec(*slot)) != IM_OK || (err = im_mysql_stmt_next(*slot)) != IM_OK)
        return err;
    *out = im_mysql_col_u64(*slot, 0);
    return IM_OK;
}

im_err_t lg_store_count_conv(lg_store_t *s, const char *conv, uint64_t *out)
{
    return select_conv_u64(s, &s->count, "SELECT COUNT(*) FROM `%s` WHERE conv_id = ?", conv, out);
}

im_err_t lg_store_max_seq(lg_store_t *s, const char *conv, uint64_t *out)
{
    return select_conv_u64(s, &s->max_seq, "SELECT COALESCE(MAX(seq), 0) FROM `%s` WHERE conv_id = ?",
                           conv, out);
}

/* Runs a prepared page query (conv, seq bound, limit) and collects its rows. */
static im_err_t read_page(lg_store_t *s, im_mysql_stmt_t **slot, const char *fmt, const char *conv,
                          uint64_t seq, unsigned limit, lg_store_page_t *page)
{
    im_mysql_stmt_t *st;
    im_err_t err;

    page->msgs = NULL;
    page->n = 0;
    if (limit == 0 || limit > LG_STORE_MAX_PAGE)
        limit = LG_STORE_MAX_PAGE;
    if ((err = ensure_open(s)) != IM_OK || (err = prepare_one(s, slot, fmt, s->messages)) != IM_OK)
        return err;
    st = *slot;
    bind_str(st, 0, conv);
    im_mysql_bind_u64(st, 1, seq);
    im_mysql_bind_u64(st, 2, limit);
    if ((err = im_mysql_stmt_exec(st)) != IM_OK)
        return err;
    page->msgs = im_malloc(limit * sizeof(*page->msgs));
    while (page->n < limit && (err = im_mysql_stmt_next(st)) == IM_OK)
        page->msgs[page->n++] = row_to_msg(st);
    if (err != IM_OK && err != IM_ENOENT) {
        lg_store_page_free(page);
        return err;
    }
    return IM_OK;
}

im_err_t lg_store_sync(lg_store_t *s, const char *conv, uint64_t after_seq, unsigned limit,
                       lg_store_page_t *page)
{
    return read_page(s, &s->sync,
                     "SELECT " MSG_COLS " FROM `%s` WHERE conv_id = ? AND seq > ?"
                     " ORDER BY seq LIMIT ?",
                     conv, after_seq, limit, page);
}

im_err_t lg_store_history(lg_store_t *s, const char *conv, uint64_t before_seq, unsigned limit,
                          lg_store_page_t *page)
{
    return read_page(s, &s->history,
                     "SELECT " MSG_COLS " FROM `%s` WHERE conv_id = ? AND seq < ?"
                     " ORDER BY seq DESC LIMIT ?",
                     conv, before_seq != 0 ? before_seq : HISTORY_NEWEST, limit, page);
}
