/*
 * 05-seq: the Redis adapter against a real server, then per-conversation seqs
 * (logic/lg_seq) across leases, several allocators, lost keys, FLUSHALL, a stale
 * hash from an earlier Redis run, a lost MariaDB row and a Redis restart; and
 * lg_seq_next_many (a batch's seqs in one script, leases running out mid-array,
 * bad convs failing alone).
 *
 * Conversations and keys carry a per-run tag.  FLUSHALL and the restart touch the
 * whole Redis server of the infra fixture: they run last.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "im_mysql.h"
#include "im_redis.h"
#include "im_test.h"
#include "im_time.h"
#include "it_env.h"
#include "it_servers.h"
#include "lg_seq.h"

#define LONG_RUN      10000
#define THREAD_ALLOCS 5000
#define SMALL_STEP    10

static char run_tag[24];
static im_redis_t *rd, *rd2;
static im_mysql_t *db, *db2;

/* ---------------------------------------------------------------- helpers */

static void conv_name(char *buf, size_t size, const char *test)
{
    snprintf(buf, size, "t:%s:%s", run_tag, test);
}

static void redis_ok(im_redis_t *r, const char *cmd, const char *arg)
{
    im_err_t err = im_redis_command(r, NULL, cmd, arg);

    if (err != IM_OK)
        IM__FAIL("%s %s: %s (%s)", cmd, arg, im_errname(err), im_redis_error(r));
}

static uint64_t reserved_upto(const char *conv)
{
    im_mysql_stmt_t *st;
    uint64_t v;

    ASSERT_EQ(im_mysql_prepare(db, "SELECT reserved_upto FROM conv_seq_reserve WHERE conv_id = ?",
                               &st),
              IM_OK);
    im_mysql_bind_str(st, 0, conv, strlen(conv));
    ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
    if (im_mysql_stmt_next(st) != IM_OK) {
        im_mysql_stmt_free(st);
        IM__FAIL("no conv_seq_reserve row for %s", conv);
    }
    v = im_mysql_col_u64(st, 0);
    im_mysql_stmt_free(st);
    return v;
}

static lg_seq_t *seq_new(im_redis_t *r, im_mysql_t *m, uint64_t step)
{
    lg_seq_t *s = NULL;

    ASSERT_EQ(lg_seq_new(r, m, step, &s), IM_OK);
    return s;
}

static uint64_t next(lg_seq_t *s, const char *conv)
{
    uint64_t v = 0;
    im_err_t err = lg_seq_next(s, conv, &v);

    if (err != IM_OK)
        IM__FAIL("lg_seq_next(%s): %s", conv, im_errname(err));
    return v;
}

/* Allocates n seqs, each greater than *last, which it advances. */
static void next_n(lg_seq_t *s, const char *conv, unsigned n, uint64_t *last)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        uint64_t v = next(s, conv);

        if (v <= *last)
            IM__FAIL("%s: seq %" PRIu64 " after %" PRIu64, conv, v, *last);
        *last = v;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

/* Fails on a repeated value in v[0..n) (sorts v). */
static void assert_unique(uint64_t *v, size_t n)
{
    size_t i;

    qsort(v, n, sizeof(*v), cmp_u64);
    for (i = 1; i < n; i++)
        if (v[i] == v[i - 1])
            IM__FAIL("seq %" PRIu64 " handed out twice", v[i]);
}

/* ---------------------------------------------------------------- adapter */

TEST(redis_connect)
{
    rd = it_redis_connect("05-seq");
    rd2 = it_redis_connect("05-seq");
    db = it_mysql_connect("05-seq");
    db2 = it_mysql_connect("05-seq");
}

TEST(redis_commands_and_replies)
{
    char key[64], hkey[64];
    const char *argv[] = {"HSET", hkey, "bin", "a\0b c", "n", "42"};
    const size_t lens[] = {4, 0, 3, 5, 1, 2};
    size_t argl[6], len;
    im_redis_reply_t *rep;
    uint64_t v;

    snprintf(key, sizeof(key), "it:05:%s:s", run_tag);
    snprintf(hkey, sizeof(hkey), "it:05:%s:h", run_tag);
    memcpy(argl, lens, sizeof(argl));
    argl[1] = strlen(hkey);

    ASSERT_EQ(im_redis_command(rd, &rep, "SET %s %s PX %d", key, "two words", 60000), IM_OK);
    ASSERT_EQ(im_redis_reply_type(rep), IM_REDIS_STATUS);
    ASSERT_STR_EQ(im_redis_reply_str(rep, NULL), "OK");
    im_redis_reply_free(rep);
    ASSERT_EQ(im_redis_command(rd, &rep, "GET %s", key), IM_OK);
    ASSERT_STR_EQ(im_redis_reply_str(rep, &len), "two words");
    ASSERT_EQ(len, 9);
    ASSERT_EQ(im_redis_reply_u64(rep, &v), IM_EPARSE);
    im_redis_reply_free(rep);

    ASSERT_EQ(im_redis_command_argv(rd, &rep, 6, argv, argl), IM_OK);
    ASSERT_EQ(im_redis_reply_type(rep), IM_REDIS_INT);
    ASSERT_EQ(im_redis_reply_int(rep), 2);
    im_redis_reply_free(rep);
    ASSERT_EQ(im_redis_command(rd, &rep, "HMGET %s bin n missing", hkey), IM_OK);
    ASSERT_EQ(im_redis_reply_count(rep), 3);
    ASSERT_MEM_EQ(im_redis_reply_str(im_redis_reply_elem(rep, 0), &len), "a\0b c", 5);
    ASSERT_EQ(len, 5);
    ASSERT_EQ(im_redis_reply_u64(im_redis_reply_elem(rep, 1), &v), IM_OK);
    ASSERT_U64_EQ(v, 42);
    ASSERT_EQ(im_redis_reply_type(im_redis_reply_elem(rep, 2)), IM_REDIS_NIL);
    ASSERT_EQ(im_redis_reply_u64(im_redis_reply_elem(rep, 2), &v), IM_ENOENT);
    ASSERT_NULL(im_redis_reply_elem(rep, 3));
    im_redis_reply_free(rep);

    /* An error reply maps to a code, keeps the text and leaves the connection up. */
    ASSERT_EQ(im_redis_command(rd, &rep, "INCR %s", hkey), IM_EINVAL);
    ASSERT_NULL(rep);
    ASSERT_EQ(strncmp(im_redis_error(rd), "WRONGTYPE", 9), 0);
    ASSERT_EQ(im_redis_command(rd, NULL, "NOSUCHCOMMAND"), IM_EIO);
    ASSERT_TRUE(im_redis_is_open(rd));
    ASSERT_EQ(im_redis_command(rd, NULL, "DEL %s %s", key, hkey), IM_OK);
}

TEST(redis_pipeline)
{
    char set[64];
    im_redis_reply_t *rep;
    int i;

    snprintf(set, sizeof(set), "it:05:%s:set", run_tag);
    ASSERT_EQ(im_redis_append(rd, "SADD %s %s", set, "a"), IM_OK);
    ASSERT_EQ(im_redis_append(rd, "SADD %s %s", set, "b"), IM_OK);
    ASSERT_EQ(im_redis_append(rd, "INCR %s", set), IM_OK);
    ASSERT_EQ(im_redis_append(rd, "SREM %s %s", set, "a"), IM_OK);
    ASSERT_EQ(im_redis_command(rd, NULL, "PING"), IM_EINVAL); /* replies pending */
    for (i = 0; i < 2; i++) {
        ASSERT_EQ(im_redis_get_reply(rd, &rep), IM_OK);
        ASSERT_EQ(im_redis_reply_int(rep), 1);
        im_redis_reply_free(rep);
    }
    ASSERT_EQ(im_redis_get_reply(rd, &rep), IM_EINVAL); /* WRONGTYPE, then on */
    ASSERT_EQ(im_redis_get_reply(rd, NULL), IM_OK);
    ASSERT_EQ(im_redis_get_reply(rd, NULL), IM_EINVAL); /* none pending */
    ASSERT_EQ(im_redis_command(rd, &rep, "SMEMBERS %s", set), IM_OK);
    ASSERT_EQ(im_redis_reply_count(rep), 1);
    ASSERT_STR_EQ(im_redis_reply_str(im_redis_reply_elem(rep, 0), NULL), "b");
    im_redis_reply_free(rep);
    ASSERT_EQ(im_redis_command(rd, NULL, "DEL %s", set), IM_OK);
}

TEST(redis_script_survives_script_flush)
{
    static const char body[] = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    im_redis_script_t script = IM_REDIS_SCRIPT_INIT(body);
    char key[64];
    const char *args[] = {key, "5"};
    im_redis_reply_t *rep;

    snprintf(key, sizeof(key), "it:05:%s:script", run_tag);
    ASSERT_EQ(im_redis_eval(rd, &script, 1, 2, args, NULL, &rep), IM_OK);
    ASSERT_EQ(im_redis_reply_int(rep), 5);
    im_redis_reply_free(rep);
    ASSERT_EQ(strlen(script.sha1), 40);
    ASSERT_EQ(im_redis_command(rd, NULL, "SCRIPT FLUSH"), IM_OK);
    ASSERT_EQ(im_redis_eval(rd, &script, 1, 2, args, NULL, &rep), IM_OK);
    ASSERT_EQ(im_redis_reply_int(rep), 10);
    im_redis_reply_free(rep);
    ASSERT_EQ(im_redis_eval(rd, &script, 3, 2, args, NULL, NULL), IM_EINVAL);
    ASSERT_EQ(im_redis_command(rd, NULL, "DEL %s", key), IM_OK);
}

/* A connection killed by the server fails once, refuses until reconnected, then
 * works again with a fresh session. */
TEST(redis_lost_connection_and_reconnect)
{
    im_redis_reply_t *rep;
    long long id;

    ASSERT_EQ(im_redis_command(rd2, &rep, "CLIENT ID"), IM_OK);
    id = im_redis_reply_int(rep);
    im_redis_reply_free(rep);
    ASSERT_EQ(im_redis_command(rd, NULL, "CLIENT KILL ID %lld", id), IM_OK);
    ASSERT_EQ(im_redis_command(rd2, NULL, "PING"), IM_EUNAVAIL);
    ASSERT_TRUE(!im_redis_is_open(rd2));
    ASSERT_EQ(im_redis_command(rd2, NULL, "PING"), IM_EUNAVAIL);
    ASSERT_EQ(im_redis_append(rd2, "PING"), IM_EUNAVAIL);
    ASSERT_EQ(im_redis_reconnect(rd2), IM_OK);
    ASSERT_EQ(im_redis_command(rd2, &rep, "PING"), IM_OK);
    ASSERT_STR_EQ(im_redis_reply_str(rep, NULL), "PONG");
    im_redis_reply_free(rep);
}

TEST(redis_connect_refused)
{
    im_redis_config_t cfg = {.host = "127.0.0.1", .port = 1, .connect_timeout_ms = 500};
    char err[256] = "";

    ASSERT_NULL(im_redis_connect(&cfg, err, sizeof(err)));
    ASSERT_TRUE(strstr(err, "127.0.0.1:1") != NULL);
}

/* ---------------------------------------------------------------- seqs */

TEST(seq_first_use_starts_at_1)
{
    char conv[64];
    lg_seq_t *s = seq_new(rd, db, 0);

    conv_name(conv, sizeof(conv), "first");
    ASSERT_U64_EQ(next(s, conv), 1);
    ASSERT_U64_EQ(next(s, conv), 2);
    ASSERT_U64_EQ(reserved_upto(conv), LG_SEQ_DEFAULT_STEP);
    ASSERT_EQ(lg_seq_next(s, "", NULL), IM_EINVAL);
    ASSERT_EQ(lg_seq_next(s, "0123456789012345678901234567890123456789012345678", NULL),
              IM_EINVAL);
    lg_seq_free(s);
}

TEST(seq_10000_strictly_increasing)
{
    char conv[64], key[80];
    lg_seq_t *s = seq_new(rd, db, 0);
    uint64_t last = 0, t0;
    im_redis_reply_t *rep;

    conv_name(conv, sizeof(conv), "long");
    t0 = im_mono_ns();
    next_n(s, conv, LONG_RUN, &last);
    printf("  %d allocations on one conv: %.0f/s (step %d)\n", LONG_RUN,
           LONG_RUN / ((double)(im_mono_ns() - t0) / 1e9), LG_SEQ_DEFAULT_STEP);
    ASSERT_U64_EQ(last, LONG_RUN); /* one allocator, no loss: no gaps */
    snprintf(key, sizeof(key), "im:seq:%s", conv);
    ASSERT_EQ(im_redis_command(rd, &rep, "MEMORY USAGE %s", key), IM_OK);
    printf("  redis memory for this conv: %lld bytes\n", im_redis_reply_int(rep));
    im_redis_reply_free(rep);
    lg_seq_free(s);
}

/* Two allocators, like two logic processes, taking turns in irregular runs. */
TEST(seq_two_allocators_interleaved)
{
    char conv[64];
    lg_seq_t *a = seq_new(rd, db, SMALL_STEP), *b = seq_new(rd2, db2, SMALL_STEP);
    uint64_t all[2000], last_a = 0, last_b = 0;
    size_t n = 0;

    conv_name(conv, sizeof(conv), "two");
    while (n < 2000) {
        unsigned run = (unsigned)(n % 7) + 1, i;

        for (i = 0; i < run && n < 2000; i++) {
            next_n(a, conv, 1, &last_a);
            all[n++] = last_a;
        }
        for (i = 0; i < run + 2 && n < 2000; i++) {
            next_n(b, conv, 1, &last_b);
            all[n++] = last_b;
        }
    }
    assert_unique(all, n);
    lg_seq_free(a);
    lg_seq_free(b);
}

typedef struct {
    const char *conv;
    uint64_t got[THREAD_ALLOCS];
    im_err_t err;
    bool increasing;
} worker_t;

/* Each thread has its own connections and allocator, as a process would. */
static void *worker_main(void *arg)
{
    worker_t *w = arg;
    im_redis_config_t rcfg = it_redis_config("05-seq-worker");
    im_mysql_config_t mcfg = it_mysql_config("05-seq-worker");
    im_redis_t *r = im_redis_connect(&rcfg, NULL, 0);
    im_mysql_t *m = im_mysql_connect(&mcfg, NULL, 0);
    lg_seq_t *s = NULL;
    unsigned i;

    w->err = r == NULL || m == NULL ? IM_EUNAVAIL : lg_seq_new(r, m, SMALL_STEP, &s);
    w->increasing = true;
    for (i = 0; w->err == IM_OK && i < THREAD_ALLOCS; i++) {
        w->err = lg_seq_next(s, w->conv, &w->got[i]);
        if (i > 0 && w->got[i] <= w->got[i - 1])
            w->increasing = false;
    }
    lg_seq_free(s);
    im_mysql_close(m);
    im_redis_close(r);
    return NULL;
}

TEST(seq_concurrent_threads_no_duplicates)
{
    static worker_t w[2];
    static uint64_t all[2 * THREAD_ALLOCS];
    pthread_t th[2];
    char conv[64];
    int i;

    conv_name(conv, sizeof(conv), "threads");
    for (i = 0; i < 2; i++) {
        w[i].conv = conv;
        ASSERT_EQ(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (i = 0; i < 2; i++) {
        if (w[i].err != IM_OK)
            IM__FAIL("worker %d: %s", i, im_errname(w[i].err));
        ASSERT_TRUE(w[i].increasing);
        memcpy(all + i * THREAD_ALLOCS, w[i].got, sizeof(w[i].got));
    }
    assert_unique(all, 2 * THREAD_ALLOCS);
}

TEST(seq_convs_independent)
{
    char x[64], y[64];
    lg_seq_t *s = seq_new(rd, db, SMALL_STEP);
    uint64_t i;

    conv_name(x, sizeof(x), "indep-x");
    conv_name(y, sizeof(y), "indep-y");
    for (i = 1; i <= 50; i++) {
        ASSERT_U64_EQ(next(s, x), i);
        ASSERT_U64_EQ(next(s, y), 2 * i - 1);
        ASSERT_U64_EQ(next(s, y), 2 * i);
    }
    lg_seq_free(s);
}

TEST(seq_step_crossing)
{
    char conv[64];
    lg_seq_t *s = seq_new(rd, db, SMALL_STEP);
    uint64_t i;

    conv_name(conv, sizeof(conv), "step");
    for (i = 1; i <= 1000; i++)
        ASSERT_U64_EQ(next(s, conv), i);
    ASSERT_U64_EQ(reserved_upto(conv), 1000);
    ASSERT_U64_EQ(next(s, conv), 1001);
    ASSERT_U64_EQ(reserved_upto(conv), 1010);
    lg_seq_free(s);
}

TEST(seq_key_deleted_midstream)
{
    char conv[64], key[80];
    lg_seq_t *s = seq_new(rd, db, 0);
    uint64_t last = 0;

    conv_name(conv, sizeof(conv), "del");
    snprintf(key, sizeof(key), "im:seq:%s", conv);
    next_n(s, conv, 100, &last);
    redis_ok(rd, "DEL %s", key);
    next_n(s, conv, 1, &last);
    ASSERT_U64_EQ(last, LG_SEQ_DEFAULT_STEP + 1); /* the gap is the rest of the lease */
    next_n(s, conv, 100, &last);
    lg_seq_free(s);
}

/* A hash brought back from an RDB/AOF file of an earlier server run may hold an
 * old counter: it must count as lost. */
TEST(seq_stale_hash_from_other_run)
{
    char conv[64], key[80];
    lg_seq_t *s = seq_new(rd, db, SMALL_STEP);
    uint64_t last = 0;
    im_err_t err;

    conv_name(conv, sizeof(conv), "stale");
    snprintf(key, sizeof(key), "im:seq:%s", conv);
    next_n(s, conv, 25, &last);
    err = im_redis_command(rd, NULL, "HSET %s n 3 c 1000 r %s", key,
                           "0123456789012345678901234567890123456789");
    ASSERT_EQ(err, IM_OK);
    next_n(s, conv, 1, &last);
    ASSERT_U64_EQ(last, 31);
    lg_seq_free(s);
}

/* The MariaDB row reset under a live Redis counter: reserving starts above the
 * counter, not above the row. */
TEST(seq_db_row_lost_under_live_redis)
{
    char conv[64];
    lg_seq_t *s = seq_new(rd, db, SMALL_STEP);
    im_mysql_stmt_t *del;
    uint64_t last = 0;

    conv_name(conv, sizeof(conv), "rowlost");
    next_n(s, conv, 15, &last);
    ASSERT_EQ(im_mysql_prepare(db, "DELETE FROM conv_seq_reserve WHERE conv_id = ?", &del), IM_OK);
    im_mysql_bind_str(del, 0, conv, strlen(conv));
    ASSERT_EQ(im_mysql_stmt_exec(del), IM_OK);
    im_mysql_stmt_free(del);
    next_n(s, conv, 10, &last);
    ASSERT_U64_EQ(last, 25);
    ASSERT_U64_EQ(reserved_upto(conv), 30);
    lg_seq_free(s);
}

/* ---------------------------------------------------------------- many at once */

/* lg_seq_next_many() on convs[0..n); fails the test unless exactly want_failed
 * entries failed. */
static void next_many(lg_seq_t *s, const char *const *convs, size_t n, uint64_t *out,
                      im_err_t *errs, size_t want_failed)
{
    size_t failed = lg_seq_next_many(s, convs, n, out, errs);

    if (failed != want_failed)
        IM__FAIL("lg_seq_next_many: %zu of %zu failed, want %zu", failed, n, want_failed);
}

/* The one-script path counts in Lua numbers (doubles) and writes the counter
 * back as text: near 2^52 every digit must survive (Lua's default format
 * keeps 14). */
TEST(seq_next_many_exact_near_2_pow_52)
{
    char x[64], key[96];
    const char *convs[] = {x, x, x};
    uint64_t out[3];
    im_err_t errs[3];
    im_redis_reply_t *rep;
    lg_seq_t *s = seq_new(rd, db, 0);

    conv_name(x, sizeof(x), "many-big");
    ASSERT_U64_EQ(next(s, x), 1); /* the hash exists, of this run */
    snprintf(key, sizeof(key), "im:seq:%s", x);
    ASSERT_EQ(im_redis_command(rd, NULL, "HSET %s n 4503599627370486 c 4503599627370596", key),
              IM_OK);
    next_many(s, convs, 3, out, errs, 0);
    ASSERT_U64_EQ(out[0], UINT64_C(4503599627370487));
    ASSERT_U64_EQ(out[1], UINT64_C(4503599627370488));
    ASSERT_U64_EQ(out[2], UINT64_C(4503599627370489));
    ASSERT_EQ(im_redis_command(rd, &rep, "HGET %s n", key), IM_OK);
    ASSERT_STR_EQ(im_redis_reply_str(rep, NULL), "4503599627370489");
    im_redis_reply_free(rep);
    ASSERT_U64_EQ(next(s, x), UINT64_C(4503599627370490));
    redis_ok(rd, "DEL %s", key);
    lg_seq_free(s);
}

/* Each conv gets, occurrence by occurrence in array order, the seqs that n
 * calls of lg_seq_next would give: its first use (init, slow path) and a live
 * lease (one script) alike, and lg_seq_next continues after them. */
TEST(seq_next_many_repeats_in_array_order)
{
    char x[64], y[64], z[64];
    const char *a1[] = {x, y, x, z, y, x};
    const char *a2[] = {y, z, y, x, x};
    uint64_t out[6];
    im_err_t errs[6];
    lg_seq_t *s = seq_new(rd, db, 0);

    conv_name(x, sizeof(x), "many-x");
    conv_name(y, sizeof(y), "many-y");
    conv_name(z, sizeof(z), "many-z");
    ASSERT_U64_EQ(next(s, x), 1);
    ASSERT_U64_EQ(next(s, x), 2);
    ASSERT_U64_EQ(next(s, x), 3);
    /* x has a lease; y and z have no hash yet. */
    next_many(s, a1, 6, out, errs, 0);
    for (size_t i = 0; i < 6; i++)
        ASSERT_EQ(errs[i], IM_OK);
    ASSERT_U64_EQ(out[0], 4);
    ASSERT_U64_EQ(out[1], 1);
    ASSERT_U64_EQ(out[2], 5);
    ASSERT_U64_EQ(out[3], 1);
    ASSERT_U64_EQ(out[4], 2);
    ASSERT_U64_EQ(out[5], 6);
    /* All three have a lease now: the one-script path. */
    next_many(s, a2, 5, out, errs, 0);
    ASSERT_U64_EQ(out[0], 3);
    ASSERT_U64_EQ(out[1], 2);
    ASSERT_U64_EQ(out[2], 4);
    ASSERT_U64_EQ(out[3], 7);
    ASSERT_U64_EQ(out[4], 8);
    ASSERT_U64_EQ(next(s, x), 9);
    ASSERT_U64_EQ(next(s, y), 5);
    ASSERT_U64_EQ(next(s, z), 3);
    ASSERT_EQ(lg_seq_next_many(s, a1, 0, out, errs), 0);
    ASSERT_U64_EQ(next(s, x), 10); /* n = 0 took nothing */
    lg_seq_free(s);
}

#define MANY_ROUNDS 60
#define MANY_LEN    11
#define TINY_STEP   3

/* With a lease of 3 every call runs out mid-array: the entries after the
 * ceiling go through lg_seq_next (a reserve each time), and the seqs still
 * count up by one per occurrence, per conv, in array order, with single
 * lg_seq_next calls mixed in. */
TEST(seq_next_many_crosses_leases_mid_array)
{
    static const char pattern[MANY_LEN] = "aabababbbaa";
    char a[64], b[64];
    const char *convs[MANY_LEN];
    uint64_t out[MANY_LEN], last_a = 0, last_b = 0;
    im_err_t errs[MANY_LEN];
    lg_seq_t *s = seq_new(rd, db, TINY_STEP);

    conv_name(a, sizeof(a), "lease-a");
    conv_name(b, sizeof(b), "lease-b");
    for (size_t i = 0; i < MANY_LEN; i++)
        convs[i] = pattern[i] == 'a' ? a : b;
    for (unsigned r = 0; r < MANY_ROUNDS; r++) {
        next_many(s, convs, MANY_LEN - r % 4, out, errs, 0);
        for (size_t i = 0; i < MANY_LEN - r % 4; i++) {
            uint64_t *last = pattern[i] == 'a' ? &last_a : &last_b;

            ASSERT_EQ(errs[i], IM_OK);
            if (out[i] != *last + 1)
                IM__FAIL("round %u entry %zu (%c): seq %" PRIu64 " after %" PRIu64, r, i,
                         pattern[i], out[i], *last);
            *last = out[i];
        }
        if (r % 3 == 0)
            next_n(s, a, 1 + r % 5, &last_a);
    }
    ASSERT_GE(reserved_upto(a), last_a);
    ASSERT_LE(reserved_upto(a), last_a + TINY_STEP); /* one lease ahead at most */
    ASSERT_GE(reserved_upto(b), last_b);
    lg_seq_free(s);
}

/* The ceiling field of conv's hash. */
static uint64_t ceiling(const char *conv)
{
    im_redis_reply_t *rep;
    uint64_t c = 0;

    ASSERT_EQ(im_redis_command(rd, &rep, "HGET im:seq:%s c", conv), IM_OK);
    ASSERT_EQ(im_redis_reply_u64(rep, &c), IM_OK);
    im_redis_reply_free(rep);
    return c;
}

/* Takes n seqs of conv one call each, checking each is *last + 1. */
static void many_one_by_one(lg_seq_t *s, const char *conv, unsigned n, uint64_t *last)
{
    const char *convs[1] = {conv};
    uint64_t out[1];
    im_err_t errs[1];

    for (unsigned i = 0; i < n; i++) {
        next_many(s, convs, 1, out, errs, 0);
        if (out[0] != *last + 1)
            IM__FAIL("%s: seq %" PRIu64 " after %" PRIu64, conv, out[0], *last);
        *last = out[0];
    }
}

/* A lease with fewer than half a step left is reported once per ceiling, to
 * the allocator that took the seq, and lg_seq_prefetch() reserves the next
 * step and raises the ceiling before the lease runs out: seqs go on by one
 * across the old ceiling without waiting for a reserve. */
TEST(seq_next_many_renews_a_low_lease_early)
{
    char x[64];
    uint64_t last = 0;
    lg_seq_t *s = seq_new(rd, db, SMALL_STEP), *other = seq_new(rd2, db2, SMALL_STEP);

    conv_name(x, sizeof(x), "renew");
    ASSERT_U64_EQ(next(s, x), 1); /* init + reserve: c = 10 */
    last = 1;
    ASSERT_U64_EQ(ceiling(x), SMALL_STEP);
    many_one_by_one(s, x, 4, &last); /* n = 5: 5 left, not low yet */
    ASSERT_EQ(lg_seq_prefetch(s), 0);
    ASSERT_U64_EQ(reserved_upto(x), SMALL_STEP);
    many_one_by_one(s, x, 1, &last);     /* n = 6: 4 left */
    many_one_by_one(other, x, 1, &last); /* the same ceiling: not reported again */
    ASSERT_EQ(lg_seq_prefetch(other), 0);
    ASSERT_U64_EQ(ceiling(x), SMALL_STEP);
    ASSERT_EQ(lg_seq_prefetch(s), 1);
    ASSERT_U64_EQ(reserved_upto(x), 2 * SMALL_STEP);
    ASSERT_U64_EQ(ceiling(x), 2 * SMALL_STEP);
    ASSERT_EQ(lg_seq_prefetch(s), 0); /* nothing noted since */
    /* Through the old ceiling without a reserve: reserved_upto stays. */
    many_one_by_one(s, x, SMALL_STEP - 2, &last); /* n = 15: 5 left */
    ASSERT_U64_EQ(last, SMALL_STEP + 5);
    ASSERT_U64_EQ(reserved_upto(x), 2 * SMALL_STEP);
    /* Low again under the new ceiling (n = 16): reported to the allocator that took it. */
    ASSERT_EQ(lg_seq_prefetch(s), 0);
    ASSERT_EQ(lg_seq_prefetch(other), 0);
    many_one_by_one(other, x, 1, &last);
    ASSERT_EQ(lg_seq_prefetch(other), 1);
    ASSERT_U64_EQ(ceiling(x), 3 * SMALL_STEP);
    ASSERT_U64_EQ(next(s, x), last + 1);
    lg_seq_free(other);
    lg_seq_free(s);
}

/* A renewal that cannot commit changes nothing: the lease runs out and is
 * renewed the usual way, and seqs go on by one. */
TEST(seq_early_renewal_without_its_row_changes_nothing)
{
    char x[64];
    uint64_t last;
    lg_seq_t *s = seq_new(rd, db, SMALL_STEP);
    char sql[160];

    conv_name(x, sizeof(x), "renew-norow");
    last = next(s, x);
    many_one_by_one(s, x, SMALL_STEP / 2 + 1, &last); /* low: noted */
    snprintf(sql, sizeof(sql), "DELETE FROM conv_seq_reserve WHERE conv_id = '%s'", x);
    ASSERT_EQ(im_mysql_exec(db, sql), IM_OK);
    ASSERT_EQ(lg_seq_prefetch(s), 0); /* no row: nothing to raise */
    ASSERT_U64_EQ(ceiling(x), SMALL_STEP);
    many_one_by_one(s, x, SMALL_STEP, &last); /* through a reserve that makes the row again */
    ASSERT_GE(reserved_upto(x), last);
    lg_seq_free(s);
}

/* Two allocators on one conv (two logic processes), one taking batches and
 * the other single seqs, both with tiny leases: every seq once, each
 * allocator's strictly increasing. */
TEST(seq_next_many_with_another_allocator_no_duplicates)
{
    char conv[64];
    const char *convs[7];
    lg_seq_t *a = seq_new(rd, db, TINY_STEP), *b = seq_new(rd2, db2, TINY_STEP + 2);
    static uint64_t all[4000];
    uint64_t out[7], last_a = 0, last_b = 0;
    im_err_t errs[7];
    size_t n = 0;

    conv_name(conv, sizeof(conv), "many-two");
    for (size_t i = 0; i < 7; i++)
        convs[i] = conv;
    while (n + 7 + 5 <= sizeof(all) / sizeof(all[0])) {
        size_t len = 1 + n % 7;

        next_many(a, convs, len, out, errs, 0);
        for (size_t i = 0; i < len; i++) {
            if (out[i] <= last_a)
                IM__FAIL("batch: seq %" PRIu64 " after %" PRIu64, out[i], last_a);
            last_a = all[n++] = out[i];
        }
        for (size_t i = 0; i < 1 + n % 5; i++) {
            next_n(b, conv, 1, &last_b);
            all[n++] = last_b;
        }
    }
    assert_unique(all, n);
    lg_seq_free(a);
    lg_seq_free(b);
}

/* A conv whose hash was lost, or is left from another Redis run, takes the
 * slow path from inside a batch and continues above the committed lease. */
TEST(seq_next_many_lost_and_stale_hashes)
{
    char lost[64], stale[64], live[64], key[80];
    const char *convs[] = {live, lost, stale, lost, live, stale};
    uint64_t out[6], d_lost, d_stale;
    im_err_t errs[6];
    lg_seq_t *s = seq_new(rd, db, SMALL_STEP);

    conv_name(lost, sizeof(lost), "many-lost");
    conv_name(stale, sizeof(stale), "many-stale");
    conv_name(live, sizeof(live), "many-live");
    for (uint64_t i = 1; i <= 4; i++) {
        ASSERT_U64_EQ(next(s, lost), i);
        ASSERT_U64_EQ(next(s, stale), i);
        ASSERT_U64_EQ(next(s, live), i);
    }
    snprintf(key, sizeof(key), "im:seq:%s", lost);
    redis_ok(rd, "DEL %s", key);
    snprintf(key, sizeof(key), "im:seq:%s", stale);
    ASSERT_EQ(im_redis_command(rd, NULL, "HSET %s n 1 c 1000 r %s", key,
                               "0123456789012345678901234567890123456789"),
              IM_OK);
    d_lost = reserved_upto(lost);
    d_stale = reserved_upto(stale);
    next_many(s, convs, 6, out, errs, 0);
    ASSERT_U64_EQ(out[0], 5);
    ASSERT_U64_EQ(out[1], d_lost + 1);
    ASSERT_U64_EQ(out[2], d_stale + 1);
    ASSERT_U64_EQ(out[3], d_lost + 2);
    ASSERT_U64_EQ(out[4], 6);
    ASSERT_U64_EQ(out[5], d_stale + 2);
    lg_seq_free(s);
}

/* A bad conv fails its own entries only (IM_EINVAL, out 0); the others get
 * their seqs in order, a 48-byte conv included. */
TEST(seq_next_many_bad_conv_fails_only_its_entries)
{
    char x[64], y[64], longest[49], too_long[50];
    const char *convs[] = {x, "", x, too_long, longest, y, "", x, too_long};
    const im_err_t want[] = {IM_OK, IM_EINVAL, IM_OK, IM_EINVAL, IM_OK,
                             IM_OK, IM_EINVAL, IM_OK, IM_EINVAL};
    const size_t n = sizeof(convs) / sizeof(convs[0]);
    uint64_t out[sizeof(convs) / sizeof(convs[0])];
    im_err_t errs[sizeof(convs) / sizeof(convs[0])];
    lg_seq_t *s = seq_new(rd, db, TINY_STEP);
    int len;

    conv_name(x, sizeof(x), "bad-x");
    conv_name(y, sizeof(y), "bad-y");
    len = snprintf(longest, sizeof(longest), "t:%s:long:", run_tag);
    memset(longest + len, 'l', sizeof(longest) - 1 - (size_t)len);
    longest[48] = '\0';
    memset(too_long, 'v', 49);
    too_long[49] = '\0';
    ASSERT_U64_EQ(next(s, x), 1);
    ASSERT_U64_EQ(next(s, y), 1);
    memset(out, 0xff, sizeof(out));
    next_many(s, convs, n, out, errs, 4);
    for (size_t i = 0; i < n; i++) {
        if (errs[i] != want[i])
            IM__FAIL("entry %zu: %s, want %s", i, im_errname(errs[i]), im_errname(want[i]));
        if (want[i] != IM_OK)
            ASSERT_U64_EQ(out[i], 0);
    }
    ASSERT_U64_EQ(out[0], 2);
    ASSERT_U64_EQ(out[2], 3);
    ASSERT_U64_EQ(out[4], 1);
    ASSERT_U64_EQ(out[5], 2);
    ASSERT_U64_EQ(out[7], 4);
    ASSERT_U64_EQ(next(s, x), 5);
    /* All bad: nothing handed out, nothing else touched. */
    next_many(s, convs + 1, 1, out, errs, 1);
    ASSERT_EQ(errs[0], IM_EINVAL);
    ASSERT_U64_EQ(next(s, longest), 2);
    lg_seq_free(s);
}

TEST(seq_flushall)
{
    char conv[64];
    lg_seq_t *a = seq_new(rd, db, 0), *b = seq_new(rd2, db2, 0);
    uint64_t last_a = 0, last_b = 0;

    conv_name(conv, sizeof(conv), "flush");
    next_n(a, conv, 10, &last_a);
    next_n(b, conv, 10, &last_b);
    redis_ok(rd, "FLUSHALL%s", "");
    next_n(b, conv, 1, &last_b);
    ASSERT_GT(last_b, last_a);
    next_n(a, conv, 1, &last_a);
    ASSERT_GT(last_a, last_b);
    lg_seq_free(a);
    lg_seq_free(b);
}

/* infra.sh stops Redis (it keeps no data: --save '') and starts it again: the
 * allocator's connection is dead, it reconnects and continues above
 * everything handed out before. */
TEST(seq_redis_restart)
{
    char conv[64], cmd[1024];
    const char *infra_sh = getenv("IM_INFRA_SH");
    lg_seq_t *s = seq_new(rd, db, 0);
    uint64_t last = 0;
    const char *old_id, *new_id;
    char old_run[41];

    ASSERT_NOT_NULL(infra_sh);
    conv_name(conv, sizeof(conv), "restart");
    next_n(s, conv, 10, &last);
    ASSERT_EQ(im_redis_run_id(rd, &old_id), IM_OK);
    snprintf(old_run, sizeof(old_run), "%s", old_id);

    snprintf(cmd, sizeof(cmd), "'%s' stop redis >/dev/null && '%s' up >/dev/null", infra_sh,
             infra_sh);
    ASSERT_EQ(system(cmd), 0);

    next_n(s, conv, 1, &last);
    ASSERT_U64_EQ(last, LG_SEQ_DEFAULT_STEP + 1);
    ASSERT_EQ(im_redis_run_id(rd, &new_id), IM_OK);
    ASSERT_TRUE(strcmp(old_run, new_id) != 0);
    next_n(s, conv, 10, &last);
    lg_seq_free(s);
}

TEST(cleanup)
{
    char sql[256];

    ASSERT_NOT_NULL(db);
    snprintf(sql, sizeof(sql), "DELETE FROM conv_seq_reserve WHERE conv_id LIKE 't:%s:%%'",
             run_tag);
    ASSERT_EQ(im_mysql_exec(db, sql), IM_OK);
}

int main(void)
{
    if (it_env_load() != IM_OK)
        return 1;
    snprintf(run_tag, sizeof(run_tag), "%ld-%" PRIu64, (long)getpid(), im_wall_ms() % 100000000);

    RUN(redis_connect);
    RUN(redis_commands_and_replies);
    RUN(redis_pipeline);
    RUN(redis_script_survives_script_flush);
    RUN(redis_lost_connection_and_reconnect);
    RUN(redis_connect_refused);
    RUN(seq_first_use_starts_at_1);
    RUN(seq_10000_strictly_increasing);
    RUN(seq_two_allocators_interleaved);
    RUN(seq_concurrent_threads_no_duplicates);
    RUN(seq_convs_independent);
    RUN(seq_step_crossing);
    RUN(seq_key_deleted_midstream);
    RUN(seq_stale_hash_from_other_run);
    RUN(seq_db_row_lost_under_live_redis);
    RUN(seq_next_many_repeats_in_array_order);
    RUN(seq_next_many_exact_near_2_pow_52);
    RUN(seq_next_many_crosses_leases_mid_array);
    RUN(seq_next_many_renews_a_low_lease_early);
    RUN(seq_early_renewal_without_its_row_changes_nothing);
    RUN(seq_next_many_with_another_allocator_no_duplicates);
    RUN(seq_next_many_lost_and_stale_hashes);
    RUN(seq_next_many_bad_conv_fails_only_its_entries);
    RUN(seq_flushall);
    RUN(seq_redis_restart);
    RUN(cleanup);

    im_redis_close(rd);
    im_redis_close(rd2);
    im_mysql_close(db);
    im_mysql_close(db2);
    im_mysql_library_end();
    return im_test_done();
}
