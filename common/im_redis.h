/*
 * im_redis.h - the Redis adapter: a synchronous connection, commands in
 * format or argv form, pipelining, Lua scripts by SHA with a fallback, and
 * replies read through accessors.
 *
 * The only file that includes <hiredis/hiredis.h> is im_redis.c; callers see
 * im_err_t, plain C types and the opaque im_redis_reply_t.
 *
 * Threads
 *   A connection belongs to one thread at a time: nothing here locks.  Replies
 *   may be read and freed from any thread (they do not refer to the connection).
 *
 * Errors
 *   An error reply from the server ("-ERR ...") makes the command return an
 *   error and no reply; im_redis_error() has the server's text.  The first word
 *   selects the code:
 *     NOSCRIPT                                   -> IM_ENOENT
 *     LOADING, BUSY, TRYAGAIN, MASTERDOWN        -> IM_EAGAIN (retry later)
 *     OOM                                        -> IM_EFULL
 *     WRONGTYPE                                  -> IM_EINVAL
 *     NOAUTH, WRONGPASS, NOPERM                  -> IM_EAUTH
 *     READONLY                                   -> IM_EPERM
 *     anything else                              -> IM_EIO
 *   The connection stays usable after an error reply.
 *
 *   A lost connection (reset, EOF, server restart) returns IM_EUNAVAIL; a command
 *   that got no answer within command_timeout_ms returns IM_ETIMEDOUT.  Either
 *   marks the connection broken: every later call returns IM_EUNAVAIL at once
 *   until im_redis_reconnect() succeeds.  Whether the lost command ran on the
 *   server is unknown.  Nothing reconnects by itself: a silent reconnect would
 *   also run non-idempotent commands twice.  The loss is logged once at warn level.
 */
#ifndef IM_REDIS_H
#define IM_REDIS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_err.h"

/* ================================================================ connection */

typedef struct {
    const char *host;            /* required */
    unsigned port;               /* 0: 6379 */
    const char *name;            /* shown in our log lines; NULL: "redis" */
    unsigned connect_timeout_ms; /* 0: 2000 */
    unsigned command_timeout_ms; /* bounds each wait for a reply; 0: 5000 */
} im_redis_config_t;

typedef struct im_redis_s im_redis_t;

/* Connects over TCP with TCP keepalive on.  The strings of cfg are copied.
 * Returns the connection, or NULL with the reason in err (errlen bytes, always
 * NUL-terminated when errlen > 0; err may be NULL).  Free with im_redis_close().
 * Any thread. */
im_redis_t *im_redis_connect(const im_redis_config_t *cfg, char *err, size_t errlen);

/* Closes and frees r.  Replies not read yet are dropped.  NULL is fine. */
void im_redis_close(im_redis_t *r);

/* Drops the current socket (if any) and connects again with the same config.
 * Pipelined replies not read yet are dropped; loaded scripts are reloaded on
 * their next use if the server lost them.  Returns IM_OK, or IM_EUNAVAIL (the
 * connection stays broken and the call may be repeated). */
im_err_t im_redis_reconnect(im_redis_t *r);

/* False after a connection loss or timeout, until a successful reconnect. */
bool im_redis_is_open(const im_redis_t *r);

/* The text of the last error on r (server error reply or connection failure);
 * "" if none yet.  Belongs to r, overwritten by the next failure. */
const char *im_redis_error(const im_redis_t *r);

/* The run_id of the server r is connected to: 40 hex digits, different after
 * every server start.  Asked once per connection (INFO server) and cached until
 * the next reconnect.  Sets *out to a string owned by r.  Returns IM_OK, a
 * command error, or IM_EPARSE if the server did not report one. */
im_err_t im_redis_run_id(im_redis_t *r, const char **out);

/* ================================================================ replies */

typedef struct im_redis_reply_s im_redis_reply_t;

typedef enum {
    IM_REDIS_NIL,
    IM_REDIS_INT,
    IM_REDIS_STR,    /* bulk string */
    IM_REDIS_STATUS, /* +OK and the like */
    IM_REDIS_ERR,    /* only as an array element, e.g. inside EXEC's reply */
    IM_REDIS_ARRAY
} im_redis_type_t;

im_redis_type_t im_redis_reply_type(const im_redis_reply_t *rep);

/* The value of an IM_REDIS_INT reply; 0 for other types. */
long long im_redis_reply_int(const im_redis_reply_t *rep);

/* The bytes of an IM_REDIS_STR, IM_REDIS_STATUS or IM_REDIS_ERR reply, followed
 * by a NUL, with their length in *len (len may be NULL); NULL for other types.
 * The memory belongs to the reply. */
const char *im_redis_reply_str(const im_redis_reply_t *rep, size_t *len);

/* An unsigned number from an IM_REDIS_INT >= 0 or a decimal IM_REDIS_STR (as HGET
 * returns).  Returns IM_OK, IM_ENOENT for IM_REDIS_NIL, IM_EPARSE otherwise. */
im_err_t im_redis_reply_u64(const im_redis_reply_t *rep, uint64_t *out);

/* The number of elements of an IM_REDIS_ARRAY reply; 0 for other types. */
size_t im_redis_reply_count(const im_redis_reply_t *rep);

/* Element i of an array reply, or NULL when i is out of range.  The element
 * belongs to rep: never free it separately. */
const im_redis_reply_t *im_redis_reply_elem(const im_redis_reply_t *rep, size_t i);

/* Frees a reply returned by the functions below and all its elements.  NULL is
 * fine. */
void im_redis_reply_free(im_redis_reply_t *rep);

/* ================================================================ commands */

/* Runs one command and waits for its reply.  The format is hiredis's, not
 * printf's: "%s" is one argument whatever spaces or quotes it contains, "%b"
 * takes (const void *, size_t) for binary-safe bytes, and the integer
 * conversions of printf work ("%d", "%lld", "%" PRIu64, ...).  Only the literal
 * text is split on spaces.
 * On IM_OK, *out is the reply, the caller's to free with im_redis_reply_free();
 * out may be NULL to discard it.  On error *out is NULL.  Refuses with IM_EINVAL
 * while pipelined replies are unread (their replies would come first). */
im_err_t im_redis_command(im_redis_t *r, im_redis_reply_t **out, const char *fmt, ...);
im_err_t im_redis_commandv(im_redis_t *r, im_redis_reply_t **out, const char *fmt, va_list ap);

/* The same with the arguments given one by one: argv[i] is lens[i] bytes (no
 * NUL needed); lens may be NULL when every argument is a NUL-terminated string. */
im_err_t im_redis_command_argv(im_redis_t *r, im_redis_reply_t **out, int argc,
                               const char *const *argv, const size_t *lens);

/* Pipelining: queue commands in the output buffer with im_redis_append*(), then
 * read one reply per command, in order, with im_redis_get_reply() (the first
 * get_reply sends everything queued).  The append functions only fail on a broken
 * connection (IM_EUNAVAIL).  An error reply fails only its own get_reply; the
 * replies after it are still read normally. */
im_err_t im_redis_append(im_redis_t *r, const char *fmt, ...);
im_err_t im_redis_append_argv(im_redis_t *r, int argc, const char *const *argv,
                              const size_t *lens);
/* As im_redis_command() for the oldest unread reply; IM_EINVAL when none is
 * pending. */
im_err_t im_redis_get_reply(im_redis_t *r, im_redis_reply_t **out);

/* ================================================================ scripts */

/* A Lua script run by SHA1.  Define one per script and per thread (the SHA is
 * filled in by the first run):
 *   static const char body[] = "return redis.call('INCR', KEYS[1])";
 *   im_redis_script_t incr = IM_REDIS_SCRIPT_INIT(body);
 */
typedef struct {
    const char *body; /* the Lua source; must outlive the script */
    char sha1[41];    /* "" until loaded */
} im_redis_script_t;

#define IM_REDIS_SCRIPT_INIT(source) {(source), ""}

/* Keys + arguments up to this many are passed without a heap allocation. */
#define IM_REDIS_EVAL_STACK_ARGS 16
/* The most keys + arguments one im_redis_eval() passes. */
#define IM_REDIS_EVAL_MAX_ARGS 65536

/* Runs the script with args[0..nkeys) as KEYS and args[nkeys..argc) as ARGV
 * (lens as in im_redis_command_argv()).  The first run loads it with SCRIPT LOAD;
 * later runs use EVALSHA, and on NOSCRIPT (the server restarted or flushed its
 * script cache) run it once with EVAL, which caches it again.  A script is atomic
 * on the server.  Returns as im_redis_command(); IM_EINVAL when argc exceeds
 * IM_REDIS_EVAL_MAX_ARGS or nkeys is not in 0..argc. */
im_err_t im_redis_eval(im_redis_t *r, im_redis_script_t *script, int nkeys, int argc,
                       const char *const *args, const size_t *lens, im_redis_reply_t **out);

#endif
