/*
 * lg_seq.c - per-conversation seqs from Redis, made durable by leases in MariaDB
 * (see lg_seq.h for the guarantees).
 *
 * State.  MariaDB: conv_seq_reserve.reserved_upto (D), only ever raised, always
 * committed before Redis may use it.  Redis: the hash im:seq:<conv> with
 *   n  the counter: the last seq handed out in this incarnation of the hash,
 *   c  the ceiling: the largest committed D copied into Redis,
 *   r  the run_id of the Redis server that the hash was initialised on.
 *
 * Operations (each Redis step is one Lua script, so it is atomic):
 *   next   if the hash is missing or r is not the server's run_id: "need init".
 *          If given a ceiling D' (from the reserve just made): c = max(c, D').
 *          If n >= c: "need reserve" (nothing consumed).  Else n += 1, return n.
 *          A missing hash is never created here: that is init's job.
 *   reserve, in one MariaDB transaction holding the conv's row lock:
 *          read D; for "need init" set n = c = D, r = run_id, unless a hash of this
 *          run_id exists already; D' = max(D, n seen) + step; commit.  Then next
 *          again with D'.
 *
 * Why no seq is handed out twice or out of order:
 *  1. Every ceiling was committed first, so every seq ever handed out is <= D.
 *  2. A hash is only ever created by init, under the row lock, from the D read
 *     under that lock: no reservation can commit between the read and the
 *     creation, so the new n is >= every seq any earlier incarnation handed out.
 *  3. Within one incarnation n only grows, and raising c never hands out anything
 *     at or below n.  A late raise (a process that stalled after its commit) into
 *     a newer incarnation is harmless: its D' committed before that incarnation's
 *     init read D >= D', so c stays <= n; a D' committed after the init is a fresh
 *     lease above everything handed out.
 *  So each incarnation starts above the previous ones and counts up.
 *
 * Why r: a Redis restarted from an RDB or AOF file may bring back an old hash
 * whose n is below seqs handed out since the file was written.  Its r names the
 * previous server run, so it counts as missing and is initialised again from D.
 * A replica promoted after a failover has a run_id of its own, so the same holds
 * for hashes it copied from the old master.
 *
 * The lock is held across one Redis round trip only on init, which happens once
 * per conversation per Redis run.  Reserves are rare (one per step seqs).  When
 * two processes run out together both reserve a step; nothing is wasted, as c
 * jumps to the higher D' and n counts through both.  Since the reserve's D' is
 * above c, the next script that raises to it always has a seq to hand out: a call
 * takes at most init, reserve and that, unless Redis is lost in between.
 */
#include "lg_seq.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im_alloc.h"
#include "im_log.h"

#define KEY_PREFIX   "im:seq:"
#define CONV_MAX     48
#define MAX_ROUNDS   8 /* a round either hands out a seq or moves the state on */
#define U64_DIGITS   21

/* Replies of the next script: {kind, value}. */
enum { NEXT_NEED_INIT = 0, NEXT_GOT = 1, NEXT_NEED_RESERVE = 2 };

/* KEYS[1] the hash, ARGV[1] the run_id, ARGV[2] (optional) a committed D to raise
 * the ceiling to first.  Returns {NEXT_*, n}.  Raising and taking in one script
 * means a process that just reserved gets its seq even while others drain the
 * lease as fast as Redis answers. */
static const char next_lua[] =
    "local v = redis.call('HMGET', KEYS[1], 'n', 'c', 'r')\n"
    "if not v[1] or v[3] ~= ARGV[1] then return {0, 0} end\n"
    "local c = tonumber(v[2] or '0')\n"
    "if ARGV[2] and tonumber(ARGV[2]) > c then\n"
    "  c = tonumber(ARGV[2])\n"
    "  redis.call('HSET', KEYS[1], 'c', ARGV[2])\n"
    "end\n"
    "if tonumber(v[1]) >= c then return {2, v[1]} end\n"
    "return {1, redis.call('HINCRBY', KEYS[1], 'n', 1)}\n";

/* The next script's common case for many hashes at once: KEYS the hashes
 * (repeats allowed), ARGV[1] the run_id, ARGV[2] the low mark.  out[i] is the
 * seq, or 0 when that hash needs init or reserve (nothing consumed; the caller
 * takes the slow path, which finds out which); after the n seqs, the keys
 * whose leases run low (seq_store()).  Each hash is read once and its counter
 * written once, however often it repeats. */
static const char next_many_lua[] = LG_SEQ_LUA
    "local out, st = {}, {}\n"
    "for i, k in ipairs(KEYS) do\n"
    "  local n = seq_peek(st, k, ARGV[1])\n"
    "  if n then seq_take(st, k); out[i] = n else out[i] = 0 end\n"
    "end\n"
    "for _, k in ipairs(seq_store(st, tonumber(ARGV[2]))) do out[#out + 1] = k end\n"
    "return out\n";

/* Raises the ceilings of the hashes KEYS[i] of this run (ARGV[1]) to the
 * committed ARGV[i + 1] where that is higher.  A key that is not a hash is
 * skipped. */
static const char raise_lua[] =
    "for i, k in ipairs(KEYS) do\n"
    "  local v = redis.pcall('HMGET', k, 'c', 'r')\n"
    "  if not v.err and v[2] == ARGV[1] and tonumber(ARGV[i + 1]) > tonumber(v[1] or '0') then\n"
    "    redis.call('HSET', k, 'c', ARGV[i + 1])\n"
    "  end\n"
    "end\n"
    "return 0\n";

/* KEYS[1] the hash, ARGV[1] the run_id, ARGV[2] D. */
static const char init_lua[] =
    "if redis.call('HGET', KEYS[1], 'r') == ARGV[1] then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'n', ARGV[2], 'c', ARGV[2], 'r', ARGV[1])\n"
    "return 1\n";

struct lg_seq_s {
    im_redis_t *redis;
    im_mysql_t *db;
    uint64_t step;
    /* Creates the row at 0 if missing, and locks it either way.  Not INSERT IGNORE:
     * that takes a shared lock on an existing row, and two transactions upgrading
     * their shared locks for the FOR UPDATE below deadlock. */
    im_mysql_stmt_t *ensure;
    im_mysql_stmt_t *lock;   /* reads D and locks the row */
    im_mysql_stmt_t *store;  /* writes D' */
    im_redis_script_t next, init, next_many, raise;
    /* lg_seq_prefetch(): the conversations noted low, and its statements */
    char (*low)[CONV_MAX + 1];
    size_t n_low;
    im_mysql_stmt_t *bump[IM_MYSQL_IN_SIZES], *read[IM_MYSQL_IN_SIZES];
};

/* What one call works on: the conversation, its Redis key and the server run. */
typedef struct {
    const char *conv;
    size_t conv_len;
    char key[sizeof(KEY_PREFIX) + CONV_MAX];
    const char *run_id;
} call_t;

im_err_t lg_seq_new(im_redis_t *redis, im_mysql_t *db, uint64_t step, lg_seq_t **out)
{
    lg_seq_t *s = im_calloc(1, sizeof(*s));
    im_err_t err;

    s->redis = redis;
    s->db = db;
    s->step = step != 0 ? step : LG_SEQ_DEFAULT_STEP;
    s->next = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(next_lua);
    s->init = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(init_lua);
    s->next_many = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(next_many_lua);
    s->raise = (im_redis_script_t)IM_REDIS_SCRIPT_INIT(raise_lua);
    err = im_mysql_prepare(db,
                           "INSERT INTO conv_seq_reserve (conv_id, reserved_upto) VALUES (?, 0)"
                           " ON DUPLICATE KEY UPDATE reserved_upto = reserved_upto",
                           &s->ensure);
    if (err == IM_OK)
        err = im_mysql_prepare(db,
                               "SELECT reserved_upto FROM conv_seq_reserve"
                               " WHERE conv_id = ? FOR UPDATE",
                               &s->lock);
    if (err == IM_OK)
        err = im_mysql_prepare(
            db, "UPDATE conv_seq_reserve SET reserved_upto = ? WHERE conv_id = ?", &s->store);
    if (err != IM_OK) {
        im_log_error("lg_seq: preparing statements: %s", im_mysql_error(db));
        lg_seq_free(s);
        return err;
    }
    *out = s;
    return IM_OK;
}

void lg_seq_free(lg_seq_t *s)
{
    if (s == NULL)
        return;
    im_mysql_stmt_free(s->ensure);
    im_mysql_stmt_free(s->lock);
    im_mysql_stmt_free(s->store);
    for (size_t i = 0; i < IM_MYSQL_IN_SIZES; i++) {
        im_mysql_stmt_free(s->bump[i]);
        im_mysql_stmt_free(s->read[i]);
    }
    im_free(s->low);
    im_free(s);
}

/* ---------------------------------------------------------------- Redis steps */

/* Runs script on the call's key with the run_id and, if value_str is not NULL,
 * one more argument. */
static im_err_t run_script(lg_seq_t *s, im_redis_script_t *script, const call_t *c,
                           const char *value_str, im_redis_reply_t **out)
{
    const char *args[3] = {c->key, c->run_id, value_str};

    return im_redis_eval(s->redis, script, 1, value_str != NULL ? 3 : 2, args, NULL, out);
}

/* The next script, raising the ceiling to raise_to first unless it is 0. */
static im_err_t redis_next(lg_seq_t *s, const call_t *c, uint64_t raise_to, int *kind,
                           uint64_t *value)
{
    char raise_str[U64_DIGITS];
    im_redis_reply_t *rep;
    const im_redis_reply_t *k, *v;
    im_err_t err;

    snprintf(raise_str, sizeof(raise_str), "%" PRIu64, raise_to);
    err = run_script(s, &s->next, c, raise_to != 0 ? raise_str : NULL, &rep);
    if (err != IM_OK)
        return err;
    k = im_redis_reply_elem(rep, 0);
    v = im_redis_reply_elem(rep, 1);
    if (k == NULL || v == NULL || im_redis_reply_type(k) != IM_REDIS_INT ||
        im_redis_reply_u64(v, value) != IM_OK)
        err = IM_EPARSE;
    else
        *kind = (int)im_redis_reply_int(k);
    im_redis_reply_free(rep);
    return err;
}

/* Initialises the hash from d unless a hash of this run exists. */
static im_err_t redis_init(lg_seq_t *s, const call_t *c, uint64_t d)
{
    char d_str[U64_DIGITS];

    snprintf(d_str, sizeof(d_str), "%" PRIu64, d);
    return run_script(s, &s->init, c, d_str, NULL);
}

/* ---------------------------------------------------------------- MariaDB lease */

/* The conv's reserved_upto, with its row created if missing and locked until the
 * transaction ends. */
static im_err_t lock_row(lg_seq_t *s, const call_t *c, uint64_t *d)
{
    im_err_t err;

    im_mysql_bind_str(s->ensure, 0, c->conv, c->conv_len);
    err = im_mysql_stmt_exec(s->ensure);
    if (err != IM_OK)
        return err;
    im_mysql_bind_str(s->lock, 0, c->conv, c->conv_len);
    err = im_mysql_stmt_exec(s->lock);
    if (err == IM_OK)
        err = im_mysql_stmt_next(s->lock);
    if (err == IM_OK)
        *d = im_mysql_col_u64(s->lock, 0);
    return err;
}

/* The transaction of "reserve" in the comment at the top: initialises the Redis
 * hash when init is set, and stores in *upto a reserved_upto above seen and above
 * the one read, for the raise once committed. */
static im_err_t reserve_tx(lg_seq_t *s, const call_t *c, bool init, uint64_t seen,
                           uint64_t *upto)
{
    uint64_t d;
    im_err_t err;

    err = lock_row(s, c, &d);
    if (err == IM_OK && init)
        err = redis_init(s, c, d);
    if (err != IM_OK)
        return err;
    *upto = (d > seen ? d : seen) + s->step;
    im_mysql_bind_u64(s->store, 0, *upto);
    im_mysql_bind_str(s->store, 1, c->conv, c->conv_len);
    return im_mysql_stmt_exec(s->store);
}

static im_err_t reserve(lg_seq_t *s, const call_t *c, bool init, uint64_t seen,
                        uint64_t *upto)
{
    im_err_t err = im_mysql_begin(s->db);

    if (err != IM_OK)
        return err;
    err = reserve_tx(s, c, init, seen, upto);
    if (err == IM_OK)
        return im_mysql_commit(s->db);
    im_mysql_rollback(s->db);
    return err;
}

/* ---------------------------------------------------------------- allocation */

/* One attempt: a seq (IM_OK), or the state moved on by a reserve and the caller
 * should try again (IM_EAGAIN, with *raise_to the committed ceiling to raise to
 * in the next attempt), or an error. */
static im_err_t attempt(lg_seq_t *s, call_t *c, uint64_t *raise_to, uint64_t *out)
{
    uint64_t value;
    int kind;
    im_err_t err;

    err = im_redis_run_id(s->redis, &c->run_id);
    if (err == IM_OK)
        err = redis_next(s, c, *raise_to, &kind, &value);
    if (err != IM_OK)
        return err;
    switch (kind) {
    case NEXT_GOT:
        *out = value;
        return IM_OK;
    case NEXT_NEED_INIT:
        err = reserve(s, c, true, 0, raise_to);
        break;
    case NEXT_NEED_RESERVE:
        err = reserve(s, c, false, value, raise_to);
        break;
    default:
        return IM_EPARSE;
    }
    return err != IM_OK ? err : IM_EAGAIN;
}

/* After a failed attempt: reconnects a connection that was lost, once per call
 * for each.  True when the caller should attempt again. */
static bool recover(lg_seq_t *s, im_err_t err, bool *redis_done, bool *db_done)
{
    if (err == IM_EAGAIN)
        return true;
    if (!im_redis_is_open(s->redis) && !*redis_done) {
        *redis_done = true;
        return im_redis_reconnect(s->redis) == IM_OK;
    }
    if (!im_mysql_is_open(s->db) && !*db_done) {
        *db_done = true;
        return im_mysql_reconnect(s->db) == IM_OK;
    }
    return false;
}

void lg_seq_key(const char *conv, char out[LG_SEQ_KEY_MAX])
{
    size_t len = conv != NULL ? strlen(conv) : 0;

    _Static_assert(LG_SEQ_KEY_MAX == sizeof(KEY_PREFIX) + CONV_MAX, "LG_SEQ_KEY_MAX");
    if (len == 0 || len > CONV_MAX)
        out[0] = '\0';
    else
        snprintf(out, LG_SEQ_KEY_MAX, KEY_PREFIX "%s", conv);
}

im_err_t lg_seq_next(lg_seq_t *s, const char *conv, uint64_t *out)
{
    bool redis_done = false, db_done = false;
    uint64_t raise_to = 0;
    im_err_t err = IM_EAGAIN;
    call_t c;
    unsigned round;

    c.conv = conv;
    c.conv_len = conv != NULL ? strlen(conv) : 0;
    if (c.conv_len == 0 || c.conv_len > CONV_MAX)
        return IM_EINVAL;
    memcpy(c.key, KEY_PREFIX, sizeof(KEY_PREFIX) - 1);
    memcpy(c.key + sizeof(KEY_PREFIX) - 1, conv, c.conv_len + 1);
    for (round = 0; round < MAX_ROUNDS; round++) {
        err = attempt(s, &c, &raise_to, out);
        if (err == IM_OK || !recover(s, err, &redis_done, &db_done))
            break;
    }
    if (err != IM_OK && err != IM_EAGAIN)
        im_log_warn("lg_seq: conv %s: %s (last redis error: %s; last mysql error: %s)", conv,
                    im_strerror(err), im_redis_error(s->redis), im_mysql_error(s->db));
    return err;
}

/* The fast path of lg_seq_next_many(): out[i] = 0 where it did not hand out
 * one (or everywhere, when the script could not run). */
static void next_many_fast(lg_seq_t *s, const char *const *convs, size_t n, uint64_t *out)
{
    size_t keylen = sizeof(KEY_PREFIX) + CONV_MAX;
    char *keys = im_malloc(n * keylen), low[U64_DIGITS];
    const char **args = im_malloc((n + 2) * sizeof(*args));
    im_redis_reply_t *rep = NULL;
    const char *run_id;
    size_t nkeys = 0;

    memset(out, 0, n * sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(convs[i]);

        if (len == 0 || len > CONV_MAX)
            continue; /* the slow path says IM_EINVAL */
        args[nkeys] = keys + nkeys * keylen;
        snprintf(keys + nkeys * keylen, keylen, KEY_PREFIX "%s", convs[i]);
        nkeys++;
    }
    snprintf(low, sizeof(low), "%" PRIu64, lg_seq_low_mark(s));
    if (nkeys == n && im_redis_run_id(s->redis, &run_id) == IM_OK) {
        args[n] = run_id;
        args[n + 1] = low;
        if (im_redis_eval(s->redis, &s->next_many, (int)n, (int)n + 2, args, NULL, &rep) ==
                IM_OK &&
            im_redis_reply_count(rep) >= n) {
            for (size_t i = 0; i < n; i++)
                if (im_redis_reply_u64(im_redis_reply_elem(rep, i), &out[i]) != IM_OK)
                    out[i] = 0;
            lg_seq_note_low(s, rep, n);
        }
        im_redis_reply_free(rep);
    }
    im_free(args);
    im_free(keys);
}

size_t lg_seq_next_many(lg_seq_t *s, const char *const *convs, size_t n, uint64_t *out,
                        im_err_t *errs)
{
    size_t failed = 0;
    im_err_t down = IM_OK;

    if (n == 0)
        return 0;
    next_many_fast(s, convs, n, out);
    for (size_t i = 0; i < n; i++) {
        errs[i] = IM_OK;
        /* A conversation that failed earlier in the array fails again. */
        for (size_t j = 0; j < i && failed > 0; j++)
            if (errs[j] != IM_OK && strcmp(convs[j], convs[i]) == 0) {
                errs[i] = errs[j];
                break;
            }
        /* A server that stayed unreachable for one conversation (each
         * lg_seq_next tries one reconnect) fails the rest at once: the
         * caller holds locks other sends wait for. */
        if (errs[i] == IM_OK && out[i] == 0)
            errs[i] = down != IM_OK ? down : lg_seq_next(s, convs[i], &out[i]);
        if (errs[i] == IM_EUNAVAIL || errs[i] == IM_ETIMEDOUT)
            down = errs[i];
        if (errs[i] != IM_OK) {
            out[i] = 0;
            failed++;
        }
    }
    return failed;
}

/* ---------------------------------------------------------------- early renewal */

uint64_t lg_seq_low_mark(const lg_seq_t *s)
{
    return s->step / 2;
}

void lg_seq_note_low(lg_seq_t *s, const im_redis_reply_t *rep, size_t from)
{
    size_t plen = sizeof(KEY_PREFIX) - 1;

    for (size_t i = from; i < im_redis_reply_count(rep) && s->n_low < LG_SEQ_PREFETCH_MAX; i++) {
        size_t len;
        const char *key = im_redis_reply_str(im_redis_reply_elem(rep, i), &len);

        if (key == NULL || len <= plen || len - plen > CONV_MAX ||
            memcmp(key, KEY_PREFIX, plen) != 0)
            continue;
        if (s->low == NULL)
            s->low = im_malloc(LG_SEQ_PREFETCH_MAX * sizeof(*s->low));
        memcpy(s->low[s->n_low], key + plen, len - plen);
        s->low[s->n_low++][len - plen] = '\0';
    }
}

static int conv_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Runs head "IN (" convs[0..n) ")" from slots (prepared on first use; the
 * places past n repeat the first conv), with step bound first when with_step;
 * *st is the statement, for its rows. */
static im_err_t exec_in(lg_seq_t *s, im_mysql_stmt_t *slots[IM_MYSQL_IN_SIZES], const char *head,
                        bool with_step, char (*convs)[CONV_MAX + 1], size_t n, im_mysql_stmt_t **st)
{
    unsigned at = 0;
    size_t rows;
    im_err_t err = im_mysql_in_stmt(s->db, slots, head, "?", n, ")", st, &rows);

    if (err != IM_OK)
        return err;
    if (with_step)
        im_mysql_bind_u64(*st, at++, s->step);
    for (size_t i = 0; i < rows; i++) {
        const char *c = convs[i < n ? i : 0];

        im_mysql_bind_str(*st, at++, c, strlen(c));
    }
    return im_mysql_stmt_exec(*st);
}

/* One transaction: each of convs[0..n) (n <= IM_MYSQL_IN_MAX, sorted, so that
 * row locks are taken in one order everywhere) gets a further step; their new
 * reserved_upto go into upto[i] (0 for a conversation without a row). */
static im_err_t bump_tx(lg_seq_t *s, char (*convs)[CONV_MAX + 1], size_t n, uint64_t *upto)
{
    im_mysql_stmt_t *st = NULL;
    im_err_t err;

    memset(upto, 0, n * sizeof(*upto));
    err =
        exec_in(s, s->bump,
                "UPDATE conv_seq_reserve SET reserved_upto = reserved_upto + ? WHERE conv_id IN (",
                true, convs, n, &st);
    if (err == IM_OK)
        err = exec_in(s, s->read,
                      "SELECT conv_id, reserved_upto FROM conv_seq_reserve WHERE conv_id IN (",
                      false, convs, n, &st);
    while (err == IM_OK && (err = im_mysql_stmt_next(st)) == IM_OK) {
        const char *conv = im_mysql_col_str(st, 0, NULL);
        char(*hit)[CONV_MAX + 1] = bsearch(conv, convs, n, sizeof(*convs), conv_cmp);

        if (hit != NULL)
            upto[hit - convs] = im_mysql_col_u64(st, 1);
    }
    return err == IM_ENOENT ? IM_OK : err;
}

/* Renews the leases of convs[0..n) (as bump_tx) and raises their ceilings;
 * returns how many it raised, or 0 with *errp set on failure. */
static size_t prefetch_chunk(lg_seq_t *s, char (*convs)[CONV_MAX + 1], size_t n, im_err_t *errp)
{
    uint64_t upto[IM_MYSQL_IN_MAX];
    char keys[IM_MYSQL_IN_MAX][sizeof(KEY_PREFIX) + CONV_MAX], nums[IM_MYSQL_IN_MAX][U64_DIGITS];
    const char *args[2 * IM_MYSQL_IN_MAX + 1];
    const char *run_id;
    size_t k = 0;
    im_err_t err = im_mysql_begin(s->db);

    if (err == IM_OK) {
        err = bump_tx(s, convs, n, upto);
        if (err == IM_OK)
            err = im_mysql_commit(s->db);
        else
            im_mysql_rollback(s->db);
    }
    if (err == IM_OK)
        err = im_redis_run_id(s->redis, &run_id);
    if (err != IM_OK) {
        *errp = err;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (upto[i] == 0)
            continue;
        snprintf(keys[k], sizeof(keys[k]), KEY_PREFIX "%s", convs[i]);
        snprintf(nums[k], sizeof(nums[k]), "%" PRIu64, upto[i]);
        k++;
    }
    for (size_t i = 0; i < k; i++) {
        args[i] = keys[i];
        args[k + 1 + i] = nums[i];
    }
    args[k] = run_id;
    if (k > 0 && (err = im_redis_eval(s->redis, &s->raise, (int)k, (int)(2 * k + 1), args, NULL,
                                      NULL)) != IM_OK) {
        *errp = err;
        return 0;
    }
    return k;
}

size_t lg_seq_prefetch(lg_seq_t *s)
{
    size_t n = 0, raised = 0;
    im_err_t err = IM_OK;

    if (s->n_low == 0)
        return 0;
    qsort(s->low, s->n_low, sizeof(*s->low), conv_cmp);
    for (size_t i = 0; i < s->n_low; i++)
        if (n == 0 || strcmp(s->low[n - 1], s->low[i]) != 0)
            memmove(s->low[n++], s->low[i], sizeof(*s->low));
    s->n_low = 0;
    for (size_t done = 0; done < n && err == IM_OK; done += IM_MYSQL_IN_MAX) {
        size_t chunk = n - done < IM_MYSQL_IN_MAX ? n - done : IM_MYSQL_IN_MAX;

        raised += prefetch_chunk(s, s->low + done, chunk, &err);
    }
    if (err != IM_OK)
        im_log_warn("lg_seq: renewing leases early (%zu conversations, %zu done): %s (redis: %s; "
                    "mysql: %s); the rest are renewed when they run out",
                    n, raised, im_strerror(err), im_redis_error(s->redis), im_mysql_error(s->db));
    return raised;
}
