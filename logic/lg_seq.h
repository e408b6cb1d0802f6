/*
 * lg_seq.h - per-conversation sequence numbers: 1, 2, 3, ... handed out by Redis,
 * made durable by leases reserved in MariaDB (the segment scheme of Meituan Leaf).
 *
 * Guarantees, for each conversation, across any number of logic processes and
 * across Redis restarts, FLUSHALL or lost keys:
 *   - a seq is never handed out twice;
 *   - seqs increase in the order they are handed out (each later lg_seq_next, in
 *     any process, returns more than every earlier one returned);
 *   - there may be gaps: after a Redis loss, what was reserved but not handed out
 *     (up to about two steps: the lease in use, renewed early by a step, and a
 *     reserve made meanwhile), and a seq whose reply was lost on the way back
 *     from Redis is skipped.
 * Seqs stay below 2^53 (Redis scripts compare them as doubles); at a million
 * messages a second that is 285 years of one conversation.
 *
 * How, in short (the long version is at the top of lg_seq.c): the table
 * conv_seq_reserve holds reserved_upto, a committed bound on every seq ever handed
 * out; Redis only hands out seqs below a ceiling copied from a committed
 * reserved_upto, and a counter lost in Redis restarts from reserved_upto.
 *
 * Redis memory: one hash per conversation that ever had a message, key
 * "im:seq:<conv_id>", fields n (counter), c (ceiling), r (Redis run_id) and, once
 * a lease was renewed early, p (the ceiling the renewal was asked for), no TTL:
 * about 150 bytes per conversation (MEMORY USAGE, redis 7.0, 20-byte conv_id),
 * 150 MB per million conversations.
 */
#ifndef LG_SEQ_H
#define LG_SEQ_H

#include <stdint.h>

#include "im_err.h"
#include "im_mysql.h"
#include "im_redis.h"

#define LG_SEQ_DEFAULT_STEP 1000

typedef struct lg_seq_s lg_seq_t;

/* An allocator over the two connections, which it borrows: they must outlive it
 * and belong to the thread that calls lg_seq_next().  It prepares its statements
 * on db now.  step is the lease size (seqs reserved per MariaDB transaction; 0
 * means LG_SEQ_DEFAULT_STEP): larger means fewer transactions and larger gaps
 * after a Redis loss.  Returns IM_OK and *out, or the error of preparing
 * (conv_seq_reserve missing: IM_EIO).  Free with lg_seq_free(). */
im_err_t lg_seq_new(im_redis_t *redis, im_mysql_t *db, uint64_t step, lg_seq_t **out);

/* Frees s and its prepared statements (not the connections).  NULL is fine. */
void lg_seq_free(lg_seq_t *s);

/* The next seq of conversation conv (1..48 bytes, as messages.conv_id) in *out.
 * Usually one Redis round trip; once per lease also a short MariaDB transaction.
 * After a lost Redis or MariaDB connection it reconnects that connection once
 * and goes on.  Returns IM_OK; IM_EINVAL for a bad conv; IM_EUNAVAIL or
 * IM_ETIMEDOUT when a server stays unreachable; IM_EAGAIN when contention made it
 * give up after several rounds (call again); another mapped error from the
 * adapters.  On error no seq is returned (one lost with a Redis reply is a gap).
 * The connections' thread only. */
im_err_t lg_seq_next(lg_seq_t *s, const char *conv, uint64_t *out);

/* The next seq of each of convs[0..n) (a conversation may appear several
 * times: each occurrence gets the next one, in array order), as if by n calls
 * of lg_seq_next() in that order, but in one Redis round trip while every
 * conversation's lease lasts; the others go through lg_seq_next() after it.
 * errs[i] is IM_OK with out[i] set, or the error for convs[i]; once a
 * conversation failed, its later occurrences fail with the same error (so the
 * ones handed out keep the array's order), and once a server stayed
 * unreachable (IM_EUNAVAIL, IM_ETIMEDOUT) every later one that needs the slow
 * path fails with that at once.  Returns the number that failed. */
size_t lg_seq_next_many(lg_seq_t *s, const char *const *convs, size_t n, uint64_t *out,
                        im_err_t *errs);

/* The Redis key of conv's seq hash, for scripts that take seqs with
 * LG_SEQ_LUA ("" when conv is empty or longer than 48 bytes). */
#define LG_SEQ_KEY_MAX (7 + 48 + 1)
void lg_seq_key(const char *conv, char out[LG_SEQ_KEY_MAX]);

/* The fast path of lg_seq_next_many() as Lua, for a script that hands out
 * seqs together with other work in the same round trip (the send's dedup
 * claim).  Over a table st the script makes ({}), it defines
 *   seq_peek(st, key, run_id)  the seq the hash key (lg_seq_key()) hands out
 *                              next as a string, or nil when it needs init or
 *                              reserve: lg_seq_next()'s job, after the script;
 *   seq_take(st, key)          the peeked seq is used;
 *   seq_store(st, low)         writes the counters of the hashes taken from,
 *                              and returns the keys of those left with fewer
 *                              than low seqs in their lease that nobody asked
 *                              to renew yet (field p: the ceiling a renewal was
 *                              asked for): pass them to lg_seq_note_low().
 * Peeks without a take hand out nothing; a hash that gave nil keeps giving nil
 * in that script, so what the caller takes later through lg_seq_next() comes
 * after what the script handed out.  A key that is not a hash gives nil (a
 * pcall: the script goes on, and lg_seq_next() reports the error).  Counters
 * are written with %.0f, exact below 2^53 (Lua's default number format keeps
 * only 14 digits). */
#define LG_SEQ_LUA                                                                         \
    "local function seq_peek(st, k, rid)\n"                                              \
    "  local s = st[k]\n"                                                                \
    "  if s == nil then\n"                                                               \
    "    local v = redis.pcall('HMGET', k, 'n', 'c', 'r', 'p')\n"                        \
    "    if v.err then v = {false} end\n"                                                \
    "    s = {ok = v[1] ~= false and v[3] == rid, n = tonumber(v[1] or '0'),\n"          \
    "         c = tonumber(v[2] or '0'), p = v[4], dirty = false}\n"                     \
    "    st[k] = s\n"                                                                    \
    "  end\n"                                                                            \
    "  if s.ok and s.n < s.c then return string.format('%.0f', s.n + 1) end\n"           \
    "  s.ok = false\n"                                                                   \
    "  return nil\n"                                                                     \
    "end\n"                                                                              \
    "local function seq_take(st, k) st[k].n = st[k].n + 1; st[k].dirty = true end\n"     \
    "local function seq_store(st, low)\n"                                                \
    "  local keys = {}\n"                                                                \
    "  for k, s in pairs(st) do\n"                                                       \
    "    if s.dirty then\n"                                                              \
    "      local n, c = string.format('%.0f', s.n), string.format('%.0f', s.c)\n"        \
    "      if s.c - s.n < low and s.p ~= c then\n"                                       \
    "        redis.call('HSET', k, 'n', n, 'p', c); keys[#keys + 1] = k\n"               \
    "      else\n"                                                                       \
    "        redis.call('HSET', k, 'n', n)\n"                                            \
    "      end\n"                                                                        \
    "    end\n"                                                                          \
    "  end\n"                                                                            \
    "  return keys\n"                                                                    \
    "end\n"

/* How few seqs a lease may have left before seq_store() reports it (ARGV for
 * its low): half a step. */
uint64_t lg_seq_low_mark(const lg_seq_t *s);

/* Notes the conversations of the seq hash keys that seq_store() reported, the
 * elements of rep from index from on, for the next lg_seq_prefetch().  At most
 * LG_SEQ_PREFETCH_MAX are kept; beyond that (or when the renewal fails) the
 * lease is renewed the usual way, when it has run out.  Elements that are not
 * keys from lg_seq_key() are ignored. */
#define LG_SEQ_PREFETCH_MAX 4096
void lg_seq_note_low(lg_seq_t *s, const im_redis_reply_t *rep, size_t from);

/* Renews, before they run out, the leases of the conversations noted since the
 * last call: one MariaDB transaction per 64 conversations reserves a further
 * step for each, then one script raises their ceilings in Redis, so a busy
 * conversation never waits for its lease (Leaf's segment prefetch).  Call it
 * off the path of a waiting reply, holding no locks: it waits for a commit.
 * Returns how many ceilings it raised; failures are logged, and those leases
 * are renewed when they run out. */
size_t lg_seq_prefetch(lg_seq_t *s);

#endif
