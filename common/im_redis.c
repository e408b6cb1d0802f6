/*
 * im_redis.c - the Redis adapter over hiredis 0.14 (see im_redis.h).
 *
 * The only file that includes <hiredis/hiredis.h>.  im_redis_reply_t is never
 * defined: a reply handle is a redisReply pointer converted to an opaque type and
 * back, so callers cannot reach hiredis's fields and no copy is made.
 *
 * A broken connection has no context at all (ctx == NULL): hiredis cannot be
 * used again after an I/O error, and an unread reply to a timed-out command
 * could otherwise be taken as the answer to the next one.
 */
#include "im_redis.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "im_alloc.h"
#include "im_log.h"

#define DEFAULT_PORT               6379
#define DEFAULT_CONNECT_TIMEOUT_MS 2000
#define DEFAULT_COMMAND_TIMEOUT_MS 5000
#define RUN_ID_LEN                 40

struct im_redis_s {
    redisContext *ctx; /* NULL while broken */
    char *host, *name;
    unsigned port, connect_timeout_ms, command_timeout_ms;
    unsigned pending; /* appended commands whose replies are unread */
    char run_id[RUN_ID_LEN + 1]; /* "" until asked on this connection */
    char err[256];
};

static const redisReply *raw(const im_redis_reply_t *rep)
{
    return (const redisReply *)rep;
}

static struct timeval ms_to_tv(unsigned ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};

    return tv;
}

/* ---------------------------------------------------------------- errors */

static const struct {
    const char *word;
    im_err_t err;
} error_words[] = {
    {"NOSCRIPT", IM_ENOENT},  {"LOADING", IM_EAGAIN}, {"BUSY", IM_EAGAIN},
    {"TRYAGAIN", IM_EAGAIN},  {"MASTERDOWN", IM_EAGAIN}, {"OOM", IM_EFULL},
    {"WRONGTYPE", IM_EINVAL}, {"NOAUTH", IM_EAUTH},   {"WRONGPASS", IM_EAUTH},
    {"NOPERM", IM_EAUTH},     {"READONLY", IM_EPERM},
};

static im_err_t map_error_reply(const char *msg)
{
    size_t word = strcspn(msg, " ");
    size_t i;

    for (i = 0; i < sizeof(error_words) / sizeof(error_words[0]); i++)
        if (strlen(error_words[i].word) == word && memcmp(msg, error_words[i].word, word) == 0)
            return error_words[i].err;
    return IM_EIO;
}

/* The context failed (I/O error, EOF, timeout): drop it so that no later call
 * can read a stale reply, and say which of the two public errors it was. */
static im_err_t break_conn(im_redis_t *r)
{
    int saved_errno = errno;
    bool timed_out = r->ctx->err == REDIS_ERR_IO &&
                     (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK);

    snprintf(r->err, sizeof(r->err), "%s", timed_out ? "timed out waiting for a reply"
                                                     : r->ctx->errstr);
    im_log_warn("redis %s: connection lost: %s", r->name, r->err);
    redisFree(r->ctx);
    r->ctx = NULL;
    r->pending = 0;
    return timed_out ? IM_ETIMEDOUT : IM_EUNAVAIL;
}

/* Turns what hiredis returned into our result: a reply handed to the caller, an
 * error reply mapped and freed, or a lost connection. */
static im_err_t finish(im_redis_t *r, redisReply *rep, im_redis_reply_t **out)
{
    im_err_t err;

    if (rep == NULL)
        return break_conn(r);
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(r->err, sizeof(r->err), "%s", rep->str);
        err = map_error_reply(rep->str);
        freeReplyObject(rep);
        return err;
    }
    if (out != NULL)
        *out = (im_redis_reply_t *)rep;
    else
        freeReplyObject(rep);
    return IM_OK;
}

/* ---------------------------------------------------------------- connection */

static redisContext *open_ctx(const im_redis_t *r, char *err, size_t errlen)
{
    redisContext *ctx = redisConnectWithTimeout(r->host, (int)r->port,
                                                ms_to_tv(r->connect_timeout_ms));

    if (ctx == NULL) {
        snprintf(err, errlen, "connecting to %s:%u: out of memory", r->host, r->port);
        return NULL;
    }
    if (ctx->err == 0 && redisSetTimeout(ctx, ms_to_tv(r->command_timeout_ms)) == REDIS_OK)
        redisEnableKeepAlive(ctx);
    if (ctx->err != 0) {
        snprintf(err, errlen, "connecting to %s:%u: %s", r->host, r->port, ctx->errstr);
        redisFree(ctx);
        return NULL;
    }
    return ctx;
}

im_redis_t *im_redis_connect(const im_redis_config_t *cfg, char *err, size_t errlen)
{
    im_redis_t *r;
    char dummy[1];

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    if (cfg == NULL || cfg->host == NULL) {
        snprintf(err, errlen, "redis: host is required");
        return NULL;
    }
    r = im_calloc(1, sizeof(*r));
    r->host = im_strdup(cfg->host);
    r->name = im_strdup(cfg->name != NULL ? cfg->name : "redis");
    r->port = cfg->port != 0 ? cfg->port : DEFAULT_PORT;
    r->connect_timeout_ms =
        cfg->connect_timeout_ms != 0 ? cfg->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    r->command_timeout_ms =
        cfg->command_timeout_ms != 0 ? cfg->command_timeout_ms : DEFAULT_COMMAND_TIMEOUT_MS;
    r->ctx = open_ctx(r, err, errlen);
    if (r->ctx == NULL) {
        im_redis_close(r);
        return NULL;
    }
    return r;
}

void im_redis_close(im_redis_t *r)
{
    if (r == NULL)
        return;
    if (r->ctx != NULL)
        redisFree(r->ctx);
    im_free(r->host);
    im_free(r->name);
    im_free(r);
}

im_err_t im_redis_reconnect(im_redis_t *r)
{
    if (r->ctx != NULL)
        redisFree(r->ctx);
    r->pending = 0;
    r->run_id[0] = '\0';
    r->ctx = open_ctx(r, r->err, sizeof(r->err));
    if (r->ctx == NULL)
        return IM_EUNAVAIL;
    im_log_info("redis %s: reconnected to %s:%u", r->name, r->host, r->port);
    return IM_OK;
}

bool im_redis_is_open(const im_redis_t *r)
{
    return r->ctx != NULL;
}

const char *im_redis_error(const im_redis_t *r)
{
    return r->err;
}

im_err_t im_redis_run_id(im_redis_t *r, const char **out)
{
    im_redis_reply_t *rep;
    const char *info, *field;
    im_err_t err;

    if (r->run_id[0] == '\0') {
        err = im_redis_command(r, &rep, "INFO server");
        if (err != IM_OK)
            return err;
        info = im_redis_reply_str(rep, NULL);
        field = info != NULL ? strstr(info, "\nrun_id:") : NULL;
        if (field == NULL || strspn(field + 8, "0123456789abcdef") != RUN_ID_LEN) {
            im_redis_reply_free(rep);
            snprintf(r->err, sizeof(r->err), "INFO server reported no run_id");
            return IM_EPARSE;
        }
        memcpy(r->run_id, field + 8, RUN_ID_LEN);
        r->run_id[RUN_ID_LEN] = '\0';
        im_redis_reply_free(rep);
    }
    *out = r->run_id;
    return IM_OK;
}

/* ---------------------------------------------------------------- replies */

im_redis_type_t im_redis_reply_type(const im_redis_reply_t *rep)
{
    switch (raw(rep)->type) {
    case REDIS_REPLY_INTEGER:
        return IM_REDIS_INT;
    case REDIS_REPLY_STRING:
        return IM_REDIS_STR;
    case REDIS_REPLY_STATUS:
        return IM_REDIS_STATUS;
    case REDIS_REPLY_ERROR:
        return IM_REDIS_ERR;
    case REDIS_REPLY_ARRAY:
        return IM_REDIS_ARRAY;
    default:
        return IM_REDIS_NIL;
    }
}

long long im_redis_reply_int(const im_redis_reply_t *rep)
{
    return raw(rep)->type == REDIS_REPLY_INTEGER ? raw(rep)->integer : 0;
}

const char *im_redis_reply_str(const im_redis_reply_t *rep, size_t *len)
{
    const redisReply *x = raw(rep);

    if (x->type != REDIS_REPLY_STRING && x->type != REDIS_REPLY_STATUS &&
        x->type != REDIS_REPLY_ERROR)
        return NULL;
    if (len != NULL)
        *len = x->len;
    return x->str;
}

im_err_t im_redis_reply_u64(const im_redis_reply_t *rep, uint64_t *out)
{
    const redisReply *x = raw(rep);
    unsigned long long v;
    char *end;

    switch (x->type) {
    case REDIS_REPLY_NIL:
        return IM_ENOENT;
    case REDIS_REPLY_INTEGER:
        if (x->integer < 0)
            return IM_EPARSE;
        *out = (uint64_t)x->integer;
        return IM_OK;
    case REDIS_REPLY_STRING:
        if (x->len == 0 || strspn(x->str, "0123456789") != x->len)
            return IM_EPARSE;
        errno = 0;
        v = strtoull(x->str, &end, 10);
        if (errno != 0)
            return IM_EPARSE;
        *out = v;
        return IM_OK;
    default:
        return IM_EPARSE;
    }
}

size_t im_redis_reply_count(const im_redis_reply_t *rep)
{
    return raw(rep)->type == REDIS_REPLY_ARRAY ? raw(rep)->elements : 0;
}

const im_redis_reply_t *im_redis_reply_elem(const im_redis_reply_t *rep, size_t i)
{
    if (i >= im_redis_reply_count(rep))
        return NULL;
    return (const im_redis_reply_t *)raw(rep)->element[i];
}

void im_redis_reply_free(im_redis_reply_t *rep)
{
    if (rep != NULL)
        freeReplyObject(rep);
}

/* ---------------------------------------------------------------- commands */

/* The checks every command shares: a context to talk to, and no pipelined replies
 * that would be read in place of this command's. */
static im_err_t can_command(im_redis_t *r, im_redis_reply_t **out)
{
    if (out != NULL)
        *out = NULL;
    if (r->ctx == NULL)
        return IM_EUNAVAIL;
    return r->pending == 0 ? IM_OK : IM_EINVAL;
}

im_err_t im_redis_commandv(im_redis_t *r, im_redis_reply_t **out, const char *fmt, va_list ap)
{
    im_err_t err = can_command(r, out);

    if (err != IM_OK)
        return err;
    return finish(r, redisvCommand(r->ctx, fmt, ap), out);
}

im_err_t im_redis_command(im_redis_t *r, im_redis_reply_t **out, const char *fmt, ...)
{
    im_err_t err;
    va_list ap;

    va_start(ap, fmt);
    err = im_redis_commandv(r, out, fmt, ap);
    va_end(ap);
    return err;
}

im_err_t im_redis_command_argv(im_redis_t *r, im_redis_reply_t **out, int argc,
                               const char *const *argv, const size_t *lens)
{
    im_err_t err = can_command(r, out);

    if (err != IM_OK)
        return err;
    /* hiredis only reads argv; its prototype just lacks the inner const. */
    return finish(r, redisCommandArgv(r->ctx, argc, (const char **)argv, lens), out);
}

im_err_t im_redis_append(im_redis_t *r, const char *fmt, ...)
{
    va_list ap;
    int rc;

    if (r->ctx == NULL)
        return IM_EUNAVAIL;
    va_start(ap, fmt);
    rc = redisvAppendCommand(r->ctx, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK)
        return break_conn(r);
    r->pending++;
    return IM_OK;
}

im_err_t im_redis_append_argv(im_redis_t *r, int argc, const char *const *argv,
                              const size_t *lens)
{
    if (r->ctx == NULL)
        return IM_EUNAVAIL;
    if (redisAppendCommandArgv(r->ctx, argc, (const char **)argv, lens) != REDIS_OK)
        return break_conn(r);
    r->pending++;
    return IM_OK;
}

im_err_t im_redis_get_reply(im_redis_t *r, im_redis_reply_t **out)
{
    void *rep = NULL;

    if (out != NULL)
        *out = NULL;
    if (r->ctx == NULL)
        return IM_EUNAVAIL;
    if (r->pending == 0)
        return IM_EINVAL;
    if (redisGetReply(r->ctx, &rep) != REDIS_OK)
        return break_conn(r);
    r->pending--;
    return finish(r, rep, out);
}

/* ---------------------------------------------------------------- scripts */

static im_err_t load_script(im_redis_t *r, im_redis_script_t *s)
{
    im_redis_reply_t *rep;
    const char *sha;
    size_t len;
    im_err_t err;

    err = im_redis_command(r, &rep, "SCRIPT LOAD %s", s->body);
    if (err != IM_OK)
        return err;
    sha = im_redis_reply_str(rep, &len);
    if (sha == NULL || len != sizeof(s->sha1) - 1) {
        im_redis_reply_free(rep);
        snprintf(r->err, sizeof(r->err), "SCRIPT LOAD returned no SHA1");
        return IM_EPARSE;
    }
    memcpy(s->sha1, sha, len + 1);
    im_redis_reply_free(rep);
    return IM_OK;
}

im_err_t im_redis_eval(im_redis_t *r, im_redis_script_t *script, int nkeys, int argc,
                       const char *const *args, const size_t *lens, im_redis_reply_t **out)
{
    const char *argv_stack[IM_REDIS_EVAL_STACK_ARGS + 3], **argv = argv_stack;
    size_t argl_stack[IM_REDIS_EVAL_STACK_ARGS + 3], *argl = argl_stack;
    char nkeys_str[16];
    im_err_t err;
    int i;

    if (out != NULL)
        *out = NULL;
    if (argc < 0 || argc > IM_REDIS_EVAL_MAX_ARGS || nkeys < 0 || nkeys > argc)
        return IM_EINVAL;
    if (script->sha1[0] == '\0' && (err = load_script(r, script)) != IM_OK)
        return err;
    if (argc > IM_REDIS_EVAL_STACK_ARGS) {
        argv = im_malloc(((size_t)argc + 3) * sizeof(*argv));
        argl = im_malloc(((size_t)argc + 3) * sizeof(*argl));
    }
    snprintf(nkeys_str, sizeof(nkeys_str), "%d", nkeys);
    argv[0] = "EVALSHA";
    argv[1] = script->sha1;
    argv[2] = nkeys_str;
    for (i = 0; i < 3; i++)
        argl[i] = strlen(argv[i]);
    for (i = 0; i < argc; i++) {
        argv[i + 3] = args[i];
        argl[i + 3] = lens != NULL ? lens[i] : strlen(args[i]);
    }
    err = im_redis_command_argv(r, out, argc + 3, argv, argl);
    if (err == IM_ENOENT && strncmp(r->err, "NOSCRIPT", 8) == 0) {
        /* The server lost its script cache (restart, SCRIPT FLUSH): EVAL both
         * runs the script and caches it under the same SHA for the next EVALSHA. */
        argv[0] = "EVAL";
        argv[1] = script->body;
        argl[0] = strlen(argv[0]);
        argl[1] = strlen(argv[1]);
        err = im_redis_command_argv(r, out, argc + 3, argv, argl);
    }
    if (argv != argv_stack) {
        im_free(argv);
        im_free(argl);
    }
    return err;
}
