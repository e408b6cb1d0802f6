/*
 * im_mysql.c - the one file that speaks libmariadb (Connector/C 3.3).
 */
#include "im_mysql.h"

#include <errmsg.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im_alloc.h"
#include "im_log.h"

#define DEFAULT_PORT         3306
#define DEFAULT_CONNECT_S    10
#define DEFAULT_IO_S         30
#define FIRST_COL_CAP        64 /* a text column's first buffer; grows on truncation */

typedef union {
    uint64_t u;
    int64_t i;
} num_t;

/* One result column of the current row. */
typedef struct {
    bool numeric; /* bound as LONGLONG into num; otherwise text into buf */
    bool is_unsigned;
    num_t num;
    char *buf;
    size_t cap;
    unsigned long len;
    my_bool is_null;
    my_bool error; /* set by the library when buf was too small */
} col_t;

struct im_mysql_stmt_s {
    im_mysql_t *db;
    im_mysql_stmt_t *prev, *next; /* db->stmts */
    char *sql;
    MYSQL_STMT *h; /* NULL: prepare again (after a reconnect) before executing */
    unsigned nparams;
    MYSQL_BIND *params;
    num_t *values; /* what the integer params point at */
    unsigned ncols;
    MYSQL_BIND *res_bind;
    col_t *cols;
    bool has_row;
    uint64_t affected;
};

struct im_mysql_s {
    im_mysql_config_t cfg; /* strings owned */
    MYSQL *h;              /* NULL while broken */
    im_mysql_stmt_t *stmts;
    uint64_t affected;
    unsigned errnum;
    char errmsg[512];
};

static pthread_once_t library_once = PTHREAD_ONCE_INIT;

/* mysql_library_init is not thread-safe; mysql_init would call it lazily from
 * whichever thread connects first. */
static void library_init(void)
{
    mysql_library_init(0, NULL, NULL);
}

void im_mysql_library_end(void)
{
    mysql_library_end();
}

im_err_t im_mysql_map_errno(unsigned code)
{
    switch (code) {
    case 0:
        return IM_OK;
    case ER_DUP_ENTRY:
        return IM_EEXIST;
    case ER_LOCK_WAIT_TIMEOUT:
    case ER_LOCK_DEADLOCK:
        return IM_EAGAIN;
    case CR_CONNECTION_ERROR:
    case CR_CONN_HOST_ERROR:
    case CR_UNKNOWN_HOST:
    case CR_SERVER_GONE_ERROR:
    case CR_SERVER_LOST:
    case CR_SERVER_LOST_EXTENDED:
    case CR_ERR_NET_READ:
    case CR_ERR_NET_WRITE:
    case ER_SERVER_SHUTDOWN:
    case ER_CONNECTION_KILLED:
        return IM_EUNAVAIL;
    default:
        return IM_EIO;
    }
}

static const char *db_name(const im_mysql_t *db)
{
    return db->cfg.name != NULL ? db->cfg.name : "mysql";
}

/* Closing the session first makes the library detach every statement from it
 * (ma_invalidate_stmts), so closing the statements afterwards frees them without
 * talking to a server that is gone. */
static void drop_session(im_mysql_t *db)
{
    im_mysql_stmt_t *st;

    if (db->h == NULL)
        return;
    mysql_close(db->h);
    db->h = NULL;
    for (st = db->stmts; st != NULL; st = st->next) {
        if (st->h != NULL)
            mysql_stmt_close(st->h);
        st->h = NULL;
    }
}

/* Records a failure and returns its mapped code; a lost connection is logged
 * once and dropped, so later calls fail fast until im_mysql_reconnect(). */
static im_err_t fail(im_mysql_t *db, unsigned code, const char *msg)
{
    im_err_t err = im_mysql_map_errno(code);

    db->errnum = code;
    snprintf(db->errmsg, sizeof(db->errmsg), "%s", msg != NULL ? msg : "");
    if (err == IM_EUNAVAIL && db->h != NULL) {
        im_log_warn("%s: connection lost: %s (error %u)", db_name(db), db->errmsg, code);
        drop_session(db);
    }
    return err;
}

static im_err_t fail_conn(im_mysql_t *db)
{
    return fail(db, mysql_errno(db->h), mysql_error(db->h));
}

static im_err_t fail_stmt(im_mysql_stmt_t *st)
{
    return fail(st->db, mysql_stmt_errno(st->h), mysql_stmt_error(st->h));
}

static im_err_t broken(im_mysql_t *db)
{
    return fail(db, CR_SERVER_GONE_ERROR, "not connected (reconnect first)");
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? im_strdup(s) : NULL;
}

static void config_copy(im_mysql_config_t *dst, const im_mysql_config_t *src)
{
    *dst = *src;
    dst->host = dup_or_null(src->host);
    dst->user = dup_or_null(src->user);
    dst->password = dup_or_null(src->password);
    dst->db = dup_or_null(src->db);
    dst->socket = dup_or_null(src->socket);
    dst->name = dup_or_null(src->name);
    if (dst->port == 0)
        dst->port = DEFAULT_PORT;
    if (dst->connect_timeout_s == 0)
        dst->connect_timeout_s = DEFAULT_CONNECT_S;
    if (dst->read_timeout_s == 0)
        dst->read_timeout_s = DEFAULT_IO_S;
    if (dst->write_timeout_s == 0)
        dst->write_timeout_s = DEFAULT_IO_S;
}

static void config_free(im_mysql_config_t *cfg)
{
    im_free((char *)cfg->host);
    im_free((char *)cfg->user);
    im_free((char *)cfg->password);
    im_free((char *)cfg->db);
    im_free((char *)cfg->socket);
    im_free((char *)cfg->name);
}

/* Opens a session with db->cfg into db->h. */
static im_err_t open_session(im_mysql_t *db)
{
    const im_mysql_config_t *cfg = &db->cfg;
    my_bool no_reconnect = 0;
    MYSQL *h;

    pthread_once(&library_once, library_init);
    h = mysql_init(NULL);
    if (h == NULL)
        return fail(db, CR_OUT_OF_MEMORY, "mysql_init: out of memory");
    mysql_options(h, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    mysql_options(h, MYSQL_OPT_CONNECT_TIMEOUT, &cfg->connect_timeout_s);
    mysql_options(h, MYSQL_OPT_READ_TIMEOUT, &cfg->read_timeout_s);
    mysql_options(h, MYSQL_OPT_WRITE_TIMEOUT, &cfg->write_timeout_s);
    /* The library's own reconnect would silently drop an open transaction. */
    mysql_options(h, MYSQL_OPT_RECONNECT, &no_reconnect);
    if (mysql_real_connect(h, cfg->socket != NULL ? NULL : cfg->host, cfg->user, cfg->password,
                           cfg->db, cfg->port, cfg->socket, 0) == NULL ||
        mysql_autocommit(h, 1) != 0) {
        im_err_t err = im_mysql_map_errno(mysql_errno(h));

        db->errnum = mysql_errno(h);
        snprintf(db->errmsg, sizeof(db->errmsg), "%s", mysql_error(h));
        mysql_close(h);
        return err;
    }
    db->h = h;
    return IM_OK;
}

im_mysql_t *im_mysql_connect(const im_mysql_config_t *cfg, char *err, size_t errlen)
{
    im_mysql_t *db;

    if (errlen > 0)
        err[0] = '\0';
    if ((cfg->host == NULL && cfg->socket == NULL) || cfg->user == NULL || cfg->db == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "mysql: host (or socket), user and db are required");
        return NULL;
    }
    db = im_calloc(1, sizeof(*db));
    config_copy(&db->cfg, cfg);
    if (open_session(db) != IM_OK) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "connecting to mysql://%s@%s:%u/%s: %s (error %u)",
                     db->cfg.user, db->cfg.socket != NULL ? db->cfg.socket : db->cfg.host,
                     db->cfg.port, db->cfg.db, db->errmsg, db->errnum);
        config_free(&db->cfg);
        im_free(db);
        return NULL;
    }
    return db;
}

void im_mysql_close(im_mysql_t *db)
{
    if (db == NULL)
        return;
    while (db->stmts != NULL)
        im_mysql_stmt_free(db->stmts);
    if (db->h != NULL)
        mysql_close(db->h);
    config_free(&db->cfg);
    im_free(db);
}

im_err_t im_mysql_reconnect(im_mysql_t *db)
{
    im_err_t err;

    drop_session(db);
    err = open_session(db);
    if (err == IM_OK)
        im_log_info("%s: reconnected", db_name(db));
    return err;
}

bool im_mysql_is_open(const im_mysql_t *db)
{
    return db->h != NULL;
}

uint64_t im_mysql_thread_id(const im_mysql_t *db)
{
    return db->h != NULL ? mysql_thread_id(db->h) : 0;
}

unsigned im_mysql_errno(const im_mysql_t *db)
{
    return db->errnum;
}

const char *im_mysql_error(const im_mysql_t *db)
{
    return db->errmsg;
}

/* ---------------------------------------------------------------- plain statements */

im_err_t im_mysql_exec(im_mysql_t *db, const char *sql)
{
    MYSQL_RES *res;

    if (db->h == NULL)
        return broken(db);
    if (mysql_real_query(db->h, sql, strlen(sql)) != 0)
        return fail_conn(db);
    res = mysql_store_result(db->h);
    if (res != NULL)
        mysql_free_result(res);
    else if (mysql_field_count(db->h) != 0)
        return fail_conn(db);
    db->affected = mysql_affected_rows(db->h);
    return IM_OK;
}

uint64_t im_mysql_affected_rows(const im_mysql_t *db)
{
    return db->affected;
}

im_err_t im_mysql_begin(im_mysql_t *db)
{
    return im_mysql_exec(db, "START TRANSACTION");
}

im_err_t im_mysql_commit(im_mysql_t *db)
{
    if (db->h == NULL)
        return broken(db);
    return mysql_commit(db->h) == 0 ? IM_OK : fail_conn(db);
}

im_err_t im_mysql_rollback(im_mysql_t *db)
{
    /* Not recorded as a failure: the error that broke the transaction is the one
     * worth keeping for the caller's log, and the server has rolled back. */
    if (db->h == NULL)
        return IM_EUNAVAIL;
    return mysql_rollback(db->h) == 0 ? IM_OK : fail_conn(db);
}

/* ---------------------------------------------------------------- prepared statements */

static bool is_integer_type(enum enum_field_types t)
{
    return t == MYSQL_TYPE_TINY || t == MYSQL_TYPE_SHORT || t == MYSQL_TYPE_INT24 ||
           t == MYSQL_TYPE_LONG || t == MYSQL_TYPE_LONGLONG || t == MYSQL_TYPE_YEAR;
}

static void bind_col(MYSQL_BIND *b, col_t *c)
{
    memset(b, 0, sizeof(*b));
    b->is_null = &c->is_null;
    b->error = &c->error;
    b->length = &c->len;
    if (c->numeric) {
        b->buffer_type = MYSQL_TYPE_LONGLONG;
        b->buffer = &c->num;
        b->buffer_length = sizeof(c->num);
        b->is_unsigned = c->is_unsigned;
    } else {
        b->buffer_type = MYSQL_TYPE_STRING;
        b->buffer = c->buf;
        b->buffer_length = c->cap - 1; /* room for the NUL we add */
    }
}

static void free_cols(im_mysql_stmt_t *st)
{
    unsigned i;

    for (i = 0; i < st->ncols; i++)
        im_free(st->cols[i].buf);
    im_free(st->cols);
    im_free(st->res_bind);
    st->cols = NULL;
    st->res_bind = NULL;
    st->ncols = 0;
}

/* Sets up one buffer per result column from the statement's metadata. */
static im_err_t setup_cols(im_mysql_stmt_t *st)
{
    MYSQL_RES *meta;
    MYSQL_FIELD *fields;
    unsigned i;

    free_cols(st);
    meta = mysql_stmt_result_metadata(st->h);
    if (meta == NULL)
        return mysql_stmt_errno(st->h) == 0 ? IM_OK : fail_stmt(st);
    st->ncols = mysql_num_fields(meta);
    fields = mysql_fetch_fields(meta);
    st->cols = im_calloc(st->ncols, sizeof(*st->cols));
    st->res_bind = im_calloc(st->ncols, sizeof(*st->res_bind));
    for (i = 0; i < st->ncols; i++) {
        col_t *c = &st->cols[i];

        c->numeric = is_integer_type(fields[i].type);
        c->is_unsigned = (fields[i].flags & UNSIGNED_FLAG) != 0;
        if (!c->numeric) {
            c->cap = FIRST_COL_CAP;
            c->buf = im_malloc(c->cap);
        }
        bind_col(&st->res_bind[i], c);
    }
    mysql_free_result(meta);
    return IM_OK;
}

/* Prepares st->sql on the current session into st->h. */
static im_err_t prepare_handle(im_mysql_stmt_t *st)
{
    im_mysql_t *db = st->db;
    MYSQL_STMT *h;
    im_err_t err;

    if (db->h == NULL)
        return broken(db);
    h = mysql_stmt_init(db->h);
    if (h == NULL)
        return fail_conn(db);
    st->h = h;
    if (mysql_stmt_prepare(h, st->sql, strlen(st->sql)) != 0) {
        err = fail_stmt(st);
        if (st->h != NULL) /* not already closed by a connection loss */
            mysql_stmt_close(st->h);
        st->h = NULL;
        return err;
    }
    if (mysql_stmt_param_count(h) != st->nparams && st->params != NULL) {
        /* The same text cannot change its placeholders; guard the arrays anyway. */
        mysql_stmt_close(h);
        st->h = NULL;
        return fail(db, CR_UNKNOWN_ERROR, "statement changed its parameter count on re-prepare");
    }
    return setup_cols(st);
}

im_err_t im_mysql_prepare(im_mysql_t *db, const char *sql, im_mysql_stmt_t **out)
{
    im_mysql_stmt_t *st = im_calloc(1, sizeof(*st));
    im_err_t err;
    unsigned i;

    *out = NULL;
    st->db = db;
    st->sql = im_strdup(sql);
    err = prepare_handle(st);
    if (err != IM_OK) {
        free_cols(st);
        im_free(st->sql);
        im_free(st);
        return err;
    }
    st->nparams = (unsigned)mysql_stmt_param_count(st->h);
    st->params = im_calloc(st->nparams > 0 ? st->nparams : 1, sizeof(*st->params));
    st->values = im_calloc(st->nparams > 0 ? st->nparams : 1, sizeof(*st->values));
    for (i = 0; i < st->nparams; i++)
        st->params[i].buffer_type = MYSQL_TYPE_NULL;
    st->next = db->stmts;
    if (db->stmts != NULL)
        db->stmts->prev = st;
    db->stmts = st;
    *out = st;
    return IM_OK;
}

im_err_t im_mysql_prepare_rows(im_mysql_t *db, im_mysql_stmt_t **slot, const char *head,
                               const char *tuple, size_t rows, const char *tail)
{
    size_t head_len = strlen(head), tuple_len = strlen(tuple), tail_len = strlen(tail);
    char *sql, *p;
    im_err_t err;

    if (*slot != NULL)
        return IM_OK;
    p = sql = im_malloc(head_len + rows * (tuple_len + 1) + tail_len + 1);
    memcpy(p, head, head_len);
    p += head_len;
    for (size_t i = 0; i < rows; i++) {
        if (i > 0)
            *p++ = ',';
        memcpy(p, tuple, tuple_len);
        p += tuple_len;
    }
    memcpy(p, tail, tail_len + 1);
    err = im_mysql_prepare(db, sql, slot);
    if (err != IM_OK)
        im_log_error("mysql: preparing %.80s... (%zu rows): %s", sql, rows, im_mysql_error(db));
    im_free(sql);
    return err;
}

im_err_t im_mysql_in_stmt(im_mysql_t *db, im_mysql_stmt_t *slots[IM_MYSQL_IN_SIZES],
                          const char *head, const char *tuple, size_t n, const char *tail,
                          im_mysql_stmt_t **st, size_t *rows)
{
    static const size_t sizes[IM_MYSQL_IN_SIZES] = {1, 8, IM_MYSQL_IN_MAX};
    size_t k = 0;
    im_err_t err;

    while (k + 1 < IM_MYSQL_IN_SIZES && sizes[k] < n)
        k++;
    *st = NULL;
    *rows = sizes[k];
    if (n > sizes[k])
        return IM_EINVAL;
    if ((err = im_mysql_prepare_rows(db, &slots[k], head, tuple, sizes[k], tail)) == IM_OK)
        *st = slots[k];
    return err;
}

void im_mysql_stmt_free(im_mysql_stmt_t *st)
{
    if (st == NULL)
        return;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        st->db->stmts = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    if (st->h != NULL)
        mysql_stmt_close(st->h);
    free_cols(st);
    im_free(st->params);
    im_free(st->values);
    im_free(st->sql);
    im_free(st);
}

unsigned im_mysql_stmt_param_count(const im_mysql_stmt_t *st)
{
    return st->nparams;
}

static MYSQL_BIND *param(im_mysql_stmt_t *st, unsigned idx)
{
    if (idx >= st->nparams) {
        im_log_error("%s: parameter %u of %u bound: %s", db_name(st->db), idx, st->nparams,
                     st->sql);
        abort(); /* a programming error: the SQL and the binding code disagree */
    }
    memset(&st->params[idx], 0, sizeof(st->params[idx]));
    return &st->params[idx];
}

void im_mysql_bind_u64(im_mysql_stmt_t *st, unsigned idx, uint64_t v)
{
    MYSQL_BIND *b = param(st, idx);

    st->values[idx].u = v;
    b->buffer_type = MYSQL_TYPE_LONGLONG;
    b->buffer = &st->values[idx];
    b->is_unsigned = 1;
}

void im_mysql_bind_i64(im_mysql_stmt_t *st, unsigned idx, int64_t v)
{
    MYSQL_BIND *b = param(st, idx);

    st->values[idx].i = v;
    b->buffer_type = MYSQL_TYPE_LONGLONG;
    b->buffer = &st->values[idx];
}

void im_mysql_bind_str(im_mysql_stmt_t *st, unsigned idx, const char *s, size_t len)
{
    MYSQL_BIND *b = param(st, idx);

    b->buffer_type = MYSQL_TYPE_STRING;
    b->buffer = (void *)s;
    b->buffer_length = len;
}

void im_mysql_bind_null(im_mysql_stmt_t *st, unsigned idx)
{
    param(st, idx)->buffer_type = MYSQL_TYPE_NULL;
}

im_err_t im_mysql_stmt_exec(im_mysql_stmt_t *st)
{
    im_err_t err;

    st->has_row = false;
    st->affected = 0;
    if (st->h == NULL && (err = prepare_handle(st)) != IM_OK)
        return err;
    /* The library copies the bind array, so values bound since the last call
     * take effect only when it is bound again. */
    if (st->nparams > 0 && mysql_stmt_bind_param(st->h, st->params) != 0)
        return fail_stmt(st);
    if (mysql_stmt_execute(st->h) != 0)
        return fail_stmt(st);
    if (st->ncols > 0) {
        if (mysql_stmt_bind_result(st->h, st->res_bind) != 0 || mysql_stmt_store_result(st->h) != 0)
            return fail_stmt(st);
    } else {
        st->affected = mysql_stmt_affected_rows(st->h);
    }
    return IM_OK;
}

uint64_t im_mysql_stmt_affected_rows(const im_mysql_stmt_t *st)
{
    return st->affected;
}

/* Re-reads the columns whose text did not fit, into buffers grown to size. */
static im_err_t fetch_truncated(im_mysql_stmt_t *st)
{
    unsigned i;

    for (i = 0; i < st->ncols; i++) {
        col_t *c = &st->cols[i];

        if (c->numeric || !c->error)
            continue;
        c->cap = (size_t)c->len + 1;
        c->buf = im_realloc(c->buf, c->cap);
        bind_col(&st->res_bind[i], c);
        if (mysql_stmt_fetch_column(st->h, &st->res_bind[i], i, 0) != 0)
            return fail_stmt(st);
    }
    /* Later rows are fetched straight into the grown buffers. */
    return mysql_stmt_bind_result(st->h, st->res_bind) == 0 ? IM_OK : fail_stmt(st);
}

im_err_t im_mysql_stmt_next(im_mysql_stmt_t *st)
{
    im_err_t err;
    unsigned i;
    int rc;

    st->has_row = false;
    if (st->h == NULL || st->ncols == 0)
        return IM_ENOENT;
    rc = mysql_stmt_fetch(st->h);
    if (rc == MYSQL_NO_DATA)
        return IM_ENOENT;
    if (rc == 1)
        return fail_stmt(st);
    if (rc == MYSQL_DATA_TRUNCATED && (err = fetch_truncated(st)) != IM_OK)
        return err;
    for (i = 0; i < st->ncols; i++) {
        col_t *c = &st->cols[i];

        if (!c->numeric)
            c->buf[c->is_null ? 0 : c->len] = '\0';
    }
    st->has_row = true;
    return IM_OK;
}

unsigned im_mysql_stmt_column_count(const im_mysql_stmt_t *st)
{
    return st->ncols;
}

static const col_t *col(const im_mysql_stmt_t *st, unsigned i)
{
    if (!st->has_row || i >= st->ncols || st->cols[i].is_null)
        return NULL;
    return &st->cols[i];
}

bool im_mysql_col_is_null(const im_mysql_stmt_t *st, unsigned i)
{
    return col(st, i) == NULL;
}

uint64_t im_mysql_col_u64(const im_mysql_stmt_t *st, unsigned i)
{
    const col_t *c = col(st, i);

    if (c == NULL)
        return 0;
    return c->numeric ? c->num.u : strtoull(c->buf, NULL, 10);
}

int64_t im_mysql_col_i64(const im_mysql_stmt_t *st, unsigned i)
{
    const col_t *c = col(st, i);

    if (c == NULL)
        return 0;
    return c->numeric ? c->num.i : strtoll(c->buf, NULL, 10);
}

const char *im_mysql_col_str(const im_mysql_stmt_t *st, unsigned i, size_t *len)
{
    const col_t *c = col(st, i);

    if (len != NULL)
        *len = c != NULL && !c->numeric ? c->len : 0;
    return c != NULL && !c->numeric ? c->buf : "";
}
