/*
 * im_mysql.h - the MariaDB/MySQL adapter: connections, plain statements,
 * prepared statements with typed parameters and a row iterator, transactions.
 *
 * The only file that includes <mysql.h> is im_mysql.c; callers see im_err_t and
 * plain C types.
 *
 * Threads
 *   A connection, and every statement prepared on it, belongs to one thread at a
 *   time: nothing here locks.  Different connections may be used from different
 *   threads at once.  A thread that needs the database opens its own connection.
 *
 * User data
 *   Anything that carries user data (message bodies, names, client ids) goes
 *   through a prepared statement and a bound parameter, never into SQL text:
 *   the bytes are stored verbatim whatever quotes or SQL they contain.
 *   im_mysql_exec() is for fixed statements written by the program.
 *
 * Errors
 *   Server and client error numbers map to im_err_t:
 *     1062 duplicate key                                      -> IM_EEXIST
 *     1205 lock wait timeout, 1213 deadlock                   -> IM_EAGAIN (retry
 *       the whole transaction: the server rolled it back or the statement out)
 *     2002/2003/2005/2006/2013/2055, net read/write errors,
 *     1053 server shutdown, 1927 connection killed            -> IM_EUNAVAIL
 *     anything else                                           -> IM_EIO
 *   After a failure, im_mysql_errno() and im_mysql_error() give the server's number
 *   and message for logs.  IM_EUNAVAIL marks the connection broken: every later
 *   call returns IM_EUNAVAIL at once (without touching the network) until
 *   im_mysql_reconnect() succeeds.  The adapter logs the loss once at warn level;
 *   other errors are the caller's to log.  Nothing reconnects by itself: a silent
 *   reconnect in the middle of a transaction would lose its first half.
 */
#ifndef IM_MYSQL_H
#define IM_MYSQL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_err.h"

/* ================================================================ connection */

typedef struct {
    const char *host;           /* required unless socket is set */
    unsigned port;              /* 0: 3306 */
    const char *user;           /* required */
    const char *password;       /* NULL: none */
    const char *db;             /* required: the default database */
    const char *socket;         /* Unix socket path; NULL: TCP to host:port */
    const char *name;           /* shown in our log lines; NULL: "mysql" */
    unsigned connect_timeout_s; /* 0: 10 */
    unsigned read_timeout_s;    /* bounds each wait for the server; 0: 30 */
    unsigned write_timeout_s;   /* 0: 30 */
} im_mysql_config_t;

typedef struct im_mysql_s im_mysql_t;

/* Connects with charset utf8mb4 and autocommit on.  The strings of cfg are copied.
 * Returns the connection, or NULL with the reason in err (errlen bytes, always
 * NUL-terminated when errlen > 0; err may be NULL).  Free with im_mysql_close().
 * Any thread (the first call initialises the client library once). */
im_mysql_t *im_mysql_connect(const im_mysql_config_t *cfg, char *err, size_t errlen);

/* Frees the statements still prepared on db, closes and frees it.  An open
 * transaction is rolled back by the server.  NULL is fine. */
void im_mysql_close(im_mysql_t *db);

/* Drops the current session (an open transaction is lost, the server rolls it
 * back) and connects again with the same config.  Statements prepared on db stay
 * valid: each is prepared again on the new session at its next execution.
 * Returns IM_OK, or the mapped error of the new attempt (db then stays broken and
 * the call may be repeated). */
im_err_t im_mysql_reconnect(im_mysql_t *db);

/* False after a connection loss, until a successful im_mysql_reconnect(). */
bool im_mysql_is_open(const im_mysql_t *db);

/* The server's id of this session (CONNECTION_ID()), e.g. for KILL in tests; 0
 * while broken. */
uint64_t im_mysql_thread_id(const im_mysql_t *db);

/* The error number and message of the last failed call on db (or on one of its
 * statements); 0 and "" if none failed yet.  The string belongs to db and is
 * overwritten by the next failure. */
unsigned im_mysql_errno(const im_mysql_t *db);
const char *im_mysql_error(const im_mysql_t *db);

/* Maps a server or client error number to im_err_t (table above); 0 -> IM_OK. */
im_err_t im_mysql_map_errno(unsigned code);

/* Releases the client library's global state.  Call once at exit, after every
 * connection is closed; optional (it only quiets leak checkers). */
void im_mysql_library_end(void);

/* ================================================================ plain statements */

/* Runs one fixed statement (no user data: see above) and discards any result.
 * Returns IM_OK or a mapped error. */
im_err_t im_mysql_exec(im_mysql_t *db, const char *sql);

/* Rows changed by the last im_mysql_exec() on db. */
uint64_t im_mysql_affected_rows(const im_mysql_t *db);

/* START TRANSACTION / COMMIT / ROLLBACK.  After COMMIT or ROLLBACK the session
 * is back in autocommit mode.  A failed COMMIT means nothing was committed.
 * Rolling back on a broken connection returns IM_EUNAVAIL and keeps the error that
 * broke it in im_mysql_error(); the server has rolled the transaction back. */
im_err_t im_mysql_begin(im_mysql_t *db);
im_err_t im_mysql_commit(im_mysql_t *db);
im_err_t im_mysql_rollback(im_mysql_t *db);

/* ================================================================ prepared statements */

typedef struct im_mysql_stmt_s im_mysql_stmt_t;

/* Prepares sql (with ? placeholders) on db.  Returns IM_OK and sets *out, or a
 * mapped error (a syntax error is IM_EIO with the server's message).  The
 * statement belongs to db: free it with im_mysql_stmt_free(), or im_mysql_close()
 * frees what is left. */
im_err_t im_mysql_prepare(im_mysql_t *db, const char *sql, im_mysql_stmt_t **out);

/* Prepares head + rows copies of tuple joined by "," + tail into *slot unless
 * *slot is set already: the statements of multi-row INSERTs and of IN lists
 * ("... IN (" "?" ")", or "((?,?)" pairs), one per size the caller uses.
 * Returns IM_OK or the error of im_mysql_prepare (logged). */
im_err_t im_mysql_prepare_rows(im_mysql_t *db, im_mysql_stmt_t **slot, const char *head,
                               const char *tuple, size_t rows, const char *tail);

/* A lookup of up to IM_MYSQL_IN_MAX keys at once ("... IN (" tuple ")"),
 * prepared for IM_MYSQL_IN_SIZES numbers of tuples (1, 8 and 64) in slots:
 * sets *st to the smallest that holds n (1 <= n <= IM_MYSQL_IN_MAX), preparing
 * it on first use, and *rows to its number of tuples (the caller fills the
 * places past n with a repeat of the first key).  Returns IM_OK, the error of
 * im_mysql_prepare, or IM_EINVAL when n is too large. */
#define IM_MYSQL_IN_SIZES 3
#define IM_MYSQL_IN_MAX 64
im_err_t im_mysql_in_stmt(im_mysql_t *db, im_mysql_stmt_t *slots[IM_MYSQL_IN_SIZES],
                          const char *head, const char *tuple, size_t n, const char *tail,
                          im_mysql_stmt_t **st, size_t *rows);

/* Frees st (the server-side statement too).  NULL is fine. */
void im_mysql_stmt_free(im_mysql_stmt_t *st);

/* The number of ? placeholders. */
unsigned im_mysql_stmt_param_count(const im_mysql_stmt_t *st);

/* Binds parameter idx (0-based, < param count) for the next executions.  Every
 * parameter starts as NULL and keeps its value until bound again.  The integer
 * binders copy the value; im_mysql_bind_str() keeps the pointer: s[0..len) must
 * stay valid and unchanged until the last im_mysql_stmt_exec() that uses it.
 * The bytes need no NUL and no escaping. */
void im_mysql_bind_u64(im_mysql_stmt_t *st, unsigned idx, uint64_t v);
void im_mysql_bind_i64(im_mysql_stmt_t *st, unsigned idx, int64_t v);
void im_mysql_bind_str(im_mysql_stmt_t *st, unsigned idx, const char *s, size_t len);
void im_mysql_bind_null(im_mysql_stmt_t *st, unsigned idx);

/* Executes st with the bound parameters.  A result set (SELECT) is read into
 * client memory whole, so the connection is free for other statements while the
 * rows are iterated.  Returns IM_OK or a mapped error. */
im_err_t im_mysql_stmt_exec(im_mysql_stmt_t *st);

/* Rows changed by the last execution (for INSERT ... ON DUPLICATE KEY UPDATE:
 * 1 per inserted row, 0 per duplicate left unchanged). */
uint64_t im_mysql_stmt_affected_rows(const im_mysql_stmt_t *st);

/* Advances to the next row of the last execution's result.  Returns IM_OK with a
 * row to read through the im_mysql_col_* functions, IM_ENOENT after the last row
 * (or when the statement returns none), or a mapped error. */
im_err_t im_mysql_stmt_next(im_mysql_stmt_t *st);

/* Columns of the current row (0-based, < the result's column count; out of range
 * reads as NULL).  A NULL value reads as 0 or "".  Integer columns are read as
 * numbers; any other column is text, converted with strtoull/strtoll by the
 * integer readers (and an integer column reads as "" as text).  im_mysql_col_str() returns the bytes with a NUL after them
 * and their length in *len (len may be NULL); the memory belongs to st and is
 * valid until the next im_mysql_stmt_next() or im_mysql_stmt_exec(). */
unsigned im_mysql_stmt_column_count(const im_mysql_stmt_t *st);
bool im_mysql_col_is_null(const im_mysql_stmt_t *st, unsigned col);
uint64_t im_mysql_col_u64(const im_mysql_stmt_t *st, unsigned col);
int64_t im_mysql_col_i64(const im_mysql_stmt_t *st, unsigned col);
const char *im_mysql_col_str(const im_mysql_stmt_t *st, unsigned col, size_t *len);

#endif
