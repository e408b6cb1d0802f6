/*
 * 04-store: the batch writer's store on the real MariaDB.  Every message is stored
 * exactly once however often it is delivered, conflicts are reported rather than
 * dropped, a failed transaction leaves nothing behind, and reads come back in seq
 * order with the bytes that went in.
 *
 * Ids, user ids and so conversation ids are derived from a per-run base, so runs
 * against one server do not interfere; the last test deletes this run's rows.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_mysql.h"
#include "im_test.h"
#include "it_env.h"
#include "it_servers.h"
#include "lg_store.h"

#define BATCH     500
#define CONVS     5    /* direct conversations of the big batch, BATCH / CONVS each */
#define BIG_BATCH 1100 /* more than LG_STORE_MAX_ROWS: two INSERT statements */
#define ID_SPAN   (UINT64_C(1) << 20)

typedef struct {
    Im__V1__ChatMessage m;
    char conv[64]; /* room for the too long one */
    char client_msg_id[32];
    char body[64];
} tmsg_t;

static uint64_t run_base; /* first id of this run; user ids are run_base + small numbers */
static im_mysql_t *db;    /* the store's connection */
static im_mysql_t *check; /* a second session: reads what is committed */
static lg_store_t *store;
static tmsg_t *batch;     /* the BATCH messages of the first test, reused by the later ones */

/* Bodies that must survive byte for byte: SQL and quoting, then Unicode that
 * normalising or a 3-byte utf8 charset would change. */
static const char *const odd_bodies[] = {
    "'); DROP TABLE messages; --",
    "Robert'); DELETE FROM users WHERE '1'='1 \\' \\\" ` %s %n \\0 \\n",
    "\"double\" 'single' `back` \\backslash\\ ; -- /* c */ #",
    "\xF0\x9F\x98\x80 \xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB \xF0\x9F\x8F\xB3\xEF\xB8\x8F",
    "\u05E9\u05DC\u05D5\u05DD \u202E\u0645\u0631\u062D\u0628\u0627\u202C end",
    "e\u0301 a\u0308\u0323 Z\u0351\u0327\u034D \u1100\u1161\u11A8",
    "\u00A0\u200B\uFEFF zero-width and no-break spaces",
};
#define ODD_BODIES (sizeof(odd_bodies) / sizeof(odd_bodies[0]))

static char long_body[10000];

static uint64_t user_id(unsigned n)
{
    return run_base + n;
}

static void direct_conv(char *buf, size_t size, uint64_t a, uint64_t b)
{
    snprintf(buf, size, "d:%" PRIu64 ":%" PRIu64, a < b ? a : b, a < b ? b : a);
}

/* A direct message from sender to to_user; id is run_base + id_off. */
static void make_msg(tmsg_t *t, unsigned id_off, uint64_t sender, uint64_t to_user, uint64_t seq)
{
    im__v1__chat_message__init(&t->m);
    direct_conv(t->conv, sizeof(t->conv), sender, to_user);
    snprintf(t->client_msg_id, sizeof(t->client_msg_id), "c-%u", id_off);
    snprintf(t->body, sizeof(t->body), "message %u", id_off);
    t->m.id = run_base + id_off;
    t->m.conv = t->conv;
    t->m.seq = seq;
    t->m.sender = sender;
    t->m.to_user = to_user;
    t->m.client_msg_id = t->client_msg_id;
    t->m.body = t->body;
    t->m.created_at_ms = 1700000000000 + id_off;
}

/* Pointers to n messages of ts, as the store takes them. */
static const Im__V1__ChatMessage **ptrs(tmsg_t *ts, size_t n)
{
    const Im__V1__ChatMessage **p = im_malloc(n * sizeof(*p));
    size_t i;

    for (i = 0; i < n; i++)
        p[i] = &ts[i].m;
    return p;
}

static im_err_t store_batch(tmsg_t *ts, size_t n, lg_store_result_t *res)
{
    const Im__V1__ChatMessage **p = ptrs(ts, n);
    im_err_t err = lg_store_insert_batch(store, p, n, res);

    im_free(p);
    return err;
}

static im_mysql_t *connect_db(const char *name)
{
    im_mysql_config_t cfg = it_mysql_config(name);
    char err[512];
    im_mysql_t *c;

    cfg.read_timeout_s = 20;
    c = im_mysql_connect(&cfg, err, sizeof(err));
    if (c == NULL)
        IM__FAIL("%s", err);
    return c;
}

/* The single number `sql` (a fixed query, ids only) selects, read on `check`. */
static uint64_t check_u64(const char *sql)
{
    im_mysql_stmt_t *st;
    uint64_t v;

    ASSERT_EQ(im_mysql_prepare(check, sql, &st), IM_OK);
    ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
    ASSERT_EQ(im_mysql_stmt_next(st), IM_OK);
    v = im_mysql_col_u64(st, 0);
    im_mysql_stmt_free(st);
    return v;
}

/* Rows of this run with id in [run_base + from, run_base + to). */
static uint64_t count_ids(unsigned from, unsigned to)
{
    char sql[160];

    snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM messages WHERE id >= %" PRIu64 " AND id < %" PRIu64,
             run_base + from, run_base + to);
    return check_u64(sql);
}

static void assert_same(const Im__V1__ChatMessage *got, const Im__V1__ChatMessage *want)
{
    ASSERT_U64_EQ(got->id, want->id);
    ASSERT_STR_EQ(got->conv, want->conv);
    ASSERT_U64_EQ(got->seq, want->seq);
    ASSERT_U64_EQ(got->sender, want->sender);
    ASSERT_U64_EQ(got->to_user, want->to_user);
    ASSERT_U64_EQ(got->to_group, 0);
    ASSERT_STR_EQ(got->client_msg_id, want->client_msg_id);
    ASSERT_EQ(strlen(got->body), strlen(want->body));
    ASSERT_MEM_EQ(got->body, want->body, strlen(want->body));
    ASSERT_EQ(got->created_at_ms, want->created_at_ms);
}

TEST(connect)
{
    db = connect_db("store");
    check = connect_db("check");
    store = lg_store_new(db, NULL);
    ASSERT_NOT_NULL(store);
    ASSERT_NULL(lg_store_new(db, &(lg_store_config_t){.messages_table = "messages`; DROP"}));
}

/* 500 direct messages over CONVS conversations, seq 1.. in each, some with the odd
 * bodies and one longer than any buffer the adapter starts with. */
TEST(batch_stored_once_verbatim)
{
    lg_store_result_t res;
    unsigned i;
    uint64_t n;
    char sql[200];

    batch = im_calloc(BATCH, sizeof(*batch));
    memset(long_body, 'x', sizeof(long_body) - 1);
    for (i = 0; i < BATCH; i++) {
        unsigned conv = i % CONVS;

        make_msg(&batch[i], i, user_id(2 * conv + (i & 1)), user_id(2 * conv + !(i & 1)),
                 i / CONVS + 1);
        if (i < ODD_BODIES)
            batch[i].m.body = (char *)odd_bodies[i];
    }
    batch[BATCH - 1].m.body = long_body;

    ASSERT_EQ(store_batch(batch, BATCH, &res), IM_OK);
    ASSERT_U64_EQ(res.inserted, BATCH);
    ASSERT_U64_EQ(res.duplicates, 0);
    ASSERT_U64_EQ(res.conflicts, 0);
    ASSERT_U64_EQ(count_ids(0, BATCH), BATCH);
    for (i = 0; i < BATCH; i++) {
        Im__V1__ChatMessage *got;

        ASSERT_EQ(lg_store_find(store, batch[i].m.id, &got), IM_OK);
        assert_same(got, &batch[i].m);
        lg_store_msg_free(got);
    }
    for (i = 0; i < CONVS; i++) {
        ASSERT_EQ(lg_store_count_conv(store, batch[i].conv, &n), IM_OK);
        ASSERT_U64_EQ(n, BATCH / CONVS);
    }
    /* Both participants of each conversation, once each. */
    snprintf(sql, sizeof(sql),
             "SELECT COUNT(*) FROM user_convs WHERE user_id >= %" PRIu64 " AND user_id < %" PRIu64,
             user_id(0), user_id(2 * CONVS));
    ASSERT_U64_EQ(check_u64(sql), 2 * CONVS);
    ASSERT_EQ(lg_store_find(store, run_base + ID_SPAN - 1, &(Im__V1__ChatMessage *){NULL}),
              IM_ENOENT);
}

TEST(redelivered_batch_is_not_stored_twice)
{
    lg_store_result_t res;

    ASSERT_NOT_NULL(batch);
    ASSERT_EQ(store_batch(batch, BATCH, &res), IM_OK);
    ASSERT_U64_EQ(res.inserted, 0);
    ASSERT_U64_EQ(res.duplicates, BATCH);
    ASSERT_U64_EQ(res.conflicts, 0);
    ASSERT_U64_EQ(count_ids(0, BATCH), BATCH);
}

/* Every other message of the first batch again, between 250 new ones that continue
 * its conversations with seq 101..150. */
TEST(mixed_batch_stores_only_new)
{
    tmsg_t *fresh = im_calloc(BATCH, sizeof(*fresh));
    const Im__V1__ChatMessage **p = im_malloc(BATCH * sizeof(*p));
    lg_store_result_t res;
    im_err_t err;
    unsigned i;

    ASSERT_NOT_NULL(batch);
    for (i = 0; i < BATCH; i++) {
        unsigned conv = i % CONVS, k = i / CONVS;

        if (i % 2 == 0) {
            p[i] = &batch[i].m;
            continue;
        }
        /* The odd i of one conversation take every other k: k / 2 counts 0, 1, ... */
        make_msg(&fresh[i], BATCH + i, user_id(2 * conv), user_id(2 * conv + 1),
                 BATCH / CONVS + k / 2 + 1);
        p[i] = &fresh[i].m;
    }
    err = lg_store_insert_batch(store, p, BATCH, &res);
    im_free(p);
    im_free(fresh);
    ASSERT_EQ(err, IM_OK);
    ASSERT_U64_EQ(res.inserted, BATCH / 2);
    ASSERT_U64_EQ(res.duplicates, BATCH / 2);
    ASSERT_U64_EQ(res.conflicts, 0);
    ASSERT_U64_EQ(count_ids(0, 2 * BATCH), BATCH + BATCH / 2);
}

/* A new id reusing a stored (conv, seq), another reusing a stored (sender,
 * client_msg_id): neither is stored, both are reported, the rest is committed. */
TEST(conflicts_are_reported)
{
    tmsg_t ts[3];
    lg_store_result_t res;

    ASSERT_NOT_NULL(batch);
    make_msg(&ts[0], 3000, batch[0].m.sender, batch[0].m.to_user, batch[0].m.seq);
    make_msg(&ts[1], 3001, batch[1].m.sender, batch[1].m.to_user, 9000);
    snprintf(ts[1].client_msg_id, sizeof(ts[1].client_msg_id), "%s", batch[1].client_msg_id);
    make_msg(&ts[2], 3002, user_id(40), user_id(41), 1);
    ASSERT_EQ(store_batch(ts, 3, &res), IM_OK);
    ASSERT_U64_EQ(res.inserted, 1);
    ASSERT_U64_EQ(res.duplicates, 0);
    ASSERT_U64_EQ(res.conflicts, 2);
    ASSERT_U64_EQ(res.first_conflict_id, run_base + 3000);
    ASSERT_U64_EQ(count_ids(3000, 3002), 0);
    ASSERT_U64_EQ(count_ids(3002, 3003), 1);
}

/* The second INSERT of a 1100-message batch fails (a conversation id longer than
 * its column, refused in strict mode): the first 1024 rows are rolled back. */
TEST(failed_statement_rolls_back_batch)
{
    tmsg_t *big = im_calloc(BIG_BATCH, sizeof(*big));
    lg_store_result_t res;
    unsigned i;

    for (i = 0; i < BIG_BATCH; i++)
        make_msg(&big[i], 10000 + i, user_id(50), user_id(51), i + 1);
    snprintf(big[BIG_BATCH - 1].conv, sizeof(big[0].conv), "d:%047u", 1);
    ASSERT_EQ(store_batch(big, BIG_BATCH, &res), IM_EIO);
    im_free(big);
    ASSERT_NE(im_mysql_errno(db), 0);
    ASSERT_U64_EQ(res.inserted, 0);
    ASSERT_U64_EQ(count_ids(10000, 10000 + BIG_BATCH), 0);
    ASSERT_TRUE(im_mysql_is_open(db));
}

/* Holds a lock on the user_convs row a batch will need, on its own session. */
static im_mysql_t *hold_user_conv(const tmsg_t *t)
{
    im_mysql_t *holder = connect_db("holder");
    im_mysql_stmt_t *st;

    ASSERT_EQ(im_mysql_begin(holder), IM_OK);
    ASSERT_EQ(im_mysql_prepare(holder,
                               "INSERT INTO user_convs (user_id, conv_id, created_at_ms)"
                               " VALUES (?, ?, 0)",
                               &st),
              IM_OK);
    im_mysql_bind_u64(st, 0, t->m.sender);
    im_mysql_bind_str(st, 1, t->conv, strlen(t->conv));
    ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
    im_mysql_stmt_free(st);
    return holder;
}

typedef struct {
    im_mysql_t *conn; /* handed to the thread, which alone uses it */
    uint64_t victim;
    im_err_t err;
} killer_t;

static void *killer_main(void *arg)
{
    killer_t *k = arg;
    char sql[64];

    usleep(300 * 1000); /* long enough for the batch to be waiting for the lock */
    snprintf(sql, sizeof(sql), "KILL CONNECTION %" PRIu64, k->victim);
    k->err = im_mysql_exec(k->conn, sql);
    return NULL;
}

/* The store's session is killed while its transaction waits for a lock, after its
 * INSERT into messages: IM_EUNAVAIL, nothing stored; the next call reconnects and
 * stores the batch. */
TEST(killed_connection_rolls_back_and_reconnects)
{
    tmsg_t ts[4];
    lg_store_result_t res;
    killer_t k = {0};
    pthread_t thread;
    im_mysql_t *holder;
    unsigned i;

    for (i = 0; i < 4; i++)
        make_msg(&ts[i], 20000 + i, user_id(60), user_id(61), i + 1);
    holder = hold_user_conv(&ts[0]);
    k.conn = connect_db("killer");
    k.victim = im_mysql_thread_id(db);
    ASSERT_EQ(pthread_create(&thread, NULL, killer_main, &k), 0);
    ASSERT_EQ(store_batch(ts, 4, &res), IM_EUNAVAIL);
    pthread_join(thread, NULL);
    im_mysql_close(k.conn);
    ASSERT_EQ(k.err, IM_OK);
    ASSERT_TRUE(!im_mysql_is_open(db));
    ASSERT_U64_EQ(count_ids(20000, 20004), 0);

    ASSERT_EQ(im_mysql_rollback(holder), IM_OK);
    im_mysql_close(holder);
    ASSERT_EQ(store_batch(ts, 4, &res), IM_OK);
    ASSERT_U64_EQ(res.inserted, 4);
    ASSERT_U64_EQ(count_ids(20000, 20004), 4);
}

/* A lock wait timeout is IM_EAGAIN (worth retrying), and rolls the batch back. */
TEST(lock_timeout_is_eagain_and_rolls_back)
{
    tmsg_t ts[2];
    lg_store_result_t res;
    im_mysql_t *holder;

    make_msg(&ts[0], 21000, user_id(70), user_id(71), 1);
    make_msg(&ts[1], 21001, user_id(71), user_id(70), 2);
    holder = hold_user_conv(&ts[0]);
    ASSERT_EQ(im_mysql_exec(db, "SET SESSION innodb_lock_wait_timeout = 1"), IM_OK);
    ASSERT_EQ(store_batch(ts, 2, &res), IM_EAGAIN);
    ASSERT_EQ(im_mysql_errno(db), 1205);
    ASSERT_U64_EQ(count_ids(21000, 21002), 0);
    ASSERT_EQ(im_mysql_rollback(holder), IM_OK);
    im_mysql_close(holder);
    ASSERT_EQ(store_batch(ts, 2, &res), IM_OK);
    ASSERT_U64_EQ(count_ids(21000, 21002), 2);
}

/* user_convs rows of (u1, u2)'s conversation, read on `check`. */
static uint64_t count_conv_rows(uint64_t u1, uint64_t u2)
{
    char sql[200], conv[64];

    direct_conv(conv, sizeof(conv), u1, u2);
    snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM user_convs WHERE conv_id = '%s'", conv);
    return check_u64(sql);
}

static im_err_t store_with(lg_store_t *st, tmsg_t *ts, size_t n)
{
    const Im__V1__ChatMessage **p = ptrs(ts, n);
    lg_store_result_t res;
    im_err_t err = lg_store_insert_batch(st, p, n, &res);

    im_free(p);
    return err;
}

/* A store with known_convs writes a conversation's user_convs rows once: a
 * row deleted behind its back stays deleted (the proof it was not written
 * again), while a store without stays idempotent and writes it back.  A batch
 * that rolled back remembers nothing. */
TEST(known_convs_written_once_after_commit)
{
    lg_store_t *cached = lg_store_new(db, &(lg_store_config_t){.known_convs = 16});
    tmsg_t ts[2];
    char sql[200];
    im_mysql_t *holder;

    ASSERT_NOT_NULL(cached);
    make_msg(&ts[0], 22000, user_id(80), user_id(81), 1);
    ASSERT_EQ(store_with(cached, ts, 1), IM_OK);
    ASSERT_U64_EQ(count_conv_rows(user_id(80), user_id(81)), 2);
    snprintf(sql, sizeof(sql), "DELETE FROM user_convs WHERE conv_id = '%s'", ts[0].conv);
    ASSERT_EQ(im_mysql_exec(check, sql), IM_OK);
    make_msg(&ts[0], 22001, user_id(81), user_id(80), 2);
    ASSERT_EQ(store_with(cached, ts, 1), IM_OK);
    ASSERT_U64_EQ(count_conv_rows(user_id(80), user_id(81)), 0);
    make_msg(&ts[0], 22002, user_id(81), user_id(80), 3);
    ASSERT_EQ(store_with(store, ts, 1), IM_OK);
    ASSERT_U64_EQ(count_conv_rows(user_id(80), user_id(81)), 2);

    /* Rolled back (a lock wait timeout): nothing remembered, the retry writes. */
    make_msg(&ts[0], 22010, user_id(90), user_id(91), 1);
    holder = hold_user_conv(&ts[0]);
    ASSERT_EQ(im_mysql_exec(db, "SET SESSION innodb_lock_wait_timeout = 1"), IM_OK);
    ASSERT_EQ(store_with(cached, ts, 1), IM_EAGAIN);
    ASSERT_EQ(im_mysql_rollback(holder), IM_OK);
    im_mysql_close(holder);
    ASSERT_EQ(store_with(cached, ts, 1), IM_OK);
    ASSERT_U64_EQ(count_conv_rows(user_id(90), user_id(91)), 2);
    lg_store_free(cached);
}

/* Conversation 0 now holds seq 1..150 (the first batch and the mixed one). */
TEST(sync_history_max_seq)
{
    const char *conv;
    lg_store_page_t page;
    uint64_t max;
    size_t i;

    ASSERT_NOT_NULL(batch);
    conv = batch[0].conv;
    ASSERT_EQ(lg_store_max_seq(store, conv, &max), IM_OK);
    ASSERT_U64_EQ(max, 150);
    ASSERT_EQ(lg_store_max_seq(store, "d:0:0", &max), IM_OK);
    ASSERT_U64_EQ(max, 0);

    ASSERT_EQ(lg_store_sync(store, conv, 120, 20, &page), IM_OK);
    ASSERT_EQ(page.n, 20);
    for (i = 0; i < page.n; i++) {
        ASSERT_U64_EQ(page.msgs[i]->seq, 121 + i);
        ASSERT_STR_EQ(page.msgs[i]->conv, conv);
    }
    lg_store_page_free(&page);
    ASSERT_EQ(lg_store_sync(store, conv, 145, 0, &page), IM_OK);
    ASSERT_EQ(page.n, 5);
    lg_store_page_free(&page);
    ASSERT_EQ(lg_store_sync(store, conv, 150, 10, &page), IM_OK);
    ASSERT_EQ(page.n, 0);
    lg_store_page_free(&page);

    ASSERT_EQ(lg_store_history(store, conv, 0, 3, &page), IM_OK);
    ASSERT_EQ(page.n, 3);
    for (i = 0; i < page.n; i++)
        ASSERT_U64_EQ(page.msgs[i]->seq, 150 - i);
    lg_store_page_free(&page);
    ASSERT_EQ(lg_store_history(store, conv, 3, 10, &page), IM_OK);
    ASSERT_EQ(page.n, 2);
    ASSERT_U64_EQ(page.msgs[0]->seq, 2);
    ASSERT_U64_EQ(page.msgs[1]->seq, 1);
    assert_same(page.msgs[1], &batch[0].m);
    lg_store_page_free(&page);
}

/* Runs last, whatever failed before. */
TEST(cleanup)
{
    char sql[200];

    ASSERT_NOT_NULL(check);
    snprintf(sql, sizeof(sql), "DELETE FROM messages WHERE id >= %" PRIu64 " AND id < %" PRIu64,
             run_base, run_base + ID_SPAN);
    ASSERT_EQ(im_mysql_exec(check, sql), IM_OK);
    snprintf(sql, sizeof(sql),
             "DELETE FROM user_convs WHERE user_id >= %" PRIu64 " AND user_id < %" PRIu64,
             run_base, run_base + ID_SPAN);
    ASSERT_EQ(im_mysql_exec(check, sql), IM_OK);
    ASSERT_U64_EQ(count_ids(0, ID_SPAN), 0);
}

int main(void)
{
    struct timespec ts;

    if (it_env_load() != IM_OK)
        return 1;
    im_log_set_level(IM_LOG_ERROR);
    clock_gettime(CLOCK_REALTIME, &ts);
    /* 35 bits of milliseconds (a year), 8 bits of pid, then ID_SPAN ids for this run. */
    run_base = ((((uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000) &
                 ((UINT64_C(1) << 35) - 1))
                << 28) |
               ((uint64_t)(getpid() & 0xff) << 20);

    RUN(connect);
    RUN(batch_stored_once_verbatim);
    RUN(redelivered_batch_is_not_stored_twice);
    RUN(mixed_batch_stores_only_new);
    RUN(conflicts_are_reported);
    RUN(failed_statement_rolls_back_batch);
    RUN(killed_connection_rolls_back_and_reconnects);
    RUN(lock_timeout_is_eagain_and_rolls_back);
    RUN(known_convs_written_once_after_commit);
    RUN(sync_history_max_seq);
    RUN(cleanup);

    lg_store_free(store);
    im_mysql_close(db);
    im_mysql_close(check);
    im_free(batch);
    im_mysql_library_end();
    return im_test_done();
}
