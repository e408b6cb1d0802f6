/*
 * dbreport - MariaDB write throughput on the real server, in one run: one
 * autocommit INSERT per message (what a naive service does) against the batch
 * writer's path, lg_store_insert_batch(), at several batch sizes.
 *
 * Rows go to scratch tables (bench_messages, bench_user_convs, made with CREATE
 * TABLE ... LIKE the real ones and dropped at the end), emptied before each mode
 * so every mode starts from the same table size.  The batched modes also write the
 * user_convs rows of their direct conversations, as the writer does; the
 * single-row mode writes messages only, so the ratio understates the batching win.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "im_alloc.h"
#include "im_config.h"
#include "im_log.h"
#include "im_mysql.h"
#include "lg_store.h"

#define MAX_BATCH_SIZES 16
#define BENCH_CONVS     64 /* direct conversations the rows are spread over */
#define BENCH_MESSAGES  "bench_messages"
#define BENCH_CONVS_T   "bench_user_convs"

typedef struct {
    int64_t rows;
    const char *batches;
    const char *state_dir;
    const char *mysql_host;
    int64_t mysql_port;
    const char *mysql_user;
    const char *mysql_password;
    const char *mysql_db;
    const char *mysql_socket;
} bm_dbreport_config_t;

static const im_cfg_opt_t opts[] = {
    {"rows", 'n', IM_CFG_INT, offsetof(bm_dbreport_config_t, rows), "20000", 1, 10000000,
     "messages written by each mode"},
    {"batches", 'b', IM_CFG_STR, offsetof(bm_dbreport_config_t, batches), "1,10,100,1000", 0, 0,
     "comma-separated batch sizes of the batched mode"},
    {"state-dir", 0, IM_CFG_STR, offsetof(bm_dbreport_config_t, state_dir), NULL, 0, 0,
     "read the IM_MYSQL_* settings of scripts/infra.sh from <dir>/env (environment and "
     "flags win)"},
    {"mysql-host", 0, IM_CFG_STR, offsetof(bm_dbreport_config_t, mysql_host), "127.0.0.1", 0, 0,
     "MariaDB host"},
    {"mysql-port", 0, IM_CFG_INT, offsetof(bm_dbreport_config_t, mysql_port), "3306", 1, 65535,
     "MariaDB port"},
    {"mysql-user", 0, IM_CFG_STR, offsetof(bm_dbreport_config_t, mysql_user), "im", 0, 0,
     "MariaDB user"},
    {"mysql-password", 0, IM_CFG_STR, offsetof(bm_dbreport_config_t, mysql_password), "", 0, 0,
     "MariaDB password"},
    {"mysql-db", 0, IM_CFG_STR, offsetof(bm_dbreport_config_t, mysql_db), "im", 0, 0,
     "database holding the migrated schema"},
    {"mysql-socket", 0, IM_CFG_STR, offsetof(bm_dbreport_config_t, mysql_socket), NULL, 0, 0,
     "Unix socket instead of TCP (empty: TCP)"},
};

static const im_cfg_spec_t spec = {
    "dbreport",
    "MariaDB write throughput: single-row autocommit INSERT vs the batch writer's store.", "IM",
    opts, sizeof(opts) / sizeof(opts[0])};

/* One generated message and the strings it points at. */
typedef struct {
    Im__V1__ChatMessage m;
    char conv[48];
    char client_msg_id[32];
    char body[128];
} bench_msg_t;

typedef struct {
    const char *mode;
    unsigned batch;
    size_t rows;
    double seconds;
} bench_row_t;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Loads KEY=VALUE lines of <dir>/env into the environment without overwriting
 * what is already set, so explicit environment variables and flags still win. */
static int load_state_env(const char *dir)
{
    char path[4096];

    snprintf(path, sizeof(path), "%s/env", dir);
    if (im_cfg_load_env_file(path) != IM_OK) {
        fprintf(stderr, "dbreport: cannot open %s: is the infra up? (scripts/infra.sh up)\n", path);
        return -1;
    }
    return 0;
}

/* Parses "1,10,100" into sizes; returns the count, or 0 for a bad list. */
static size_t parse_batches(const char *list, unsigned *sizes)
{
    size_t n = 0;
    const char *p = list;

    while (*p != '\0') {
        char *end;
        unsigned long v = strtoul(p, &end, 10);

        if (end == p || v == 0 || v > 1000000 || n == MAX_BATCH_SIZES ||
            (*end != ',' && *end != '\0'))
            return 0;
        sizes[n++] = (unsigned)v;
        p = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* Message i of a mode: ids, client ids and (conv, seq) never repeat within a
 * mode, and the tables are emptied between modes. */
static void gen_msg(bench_msg_t *b, size_t i, int64_t now_ms)
{
    uint64_t conv = i % BENCH_CONVS, a = 2 * conv + 1, c = 2 * conv + 2;
    uint64_t sender = (i / BENCH_CONVS) % 2 == 0 ? a : c;

    im__v1__chat_message__init(&b->m);
    snprintf(b->conv, sizeof(b->conv), "d:%" PRIu64 ":%" PRIu64, a, c);
    snprintf(b->client_msg_id, sizeof(b->client_msg_id), "bench-%zu", i);
    snprintf(b->body, sizeof(b->body),
             "benchmark message %zu: a typical short chat line with some text in it", i);
    b->m.id = i + 1;
    b->m.conv = b->conv;
    b->m.seq = i / BENCH_CONVS + 1;
    b->m.sender = sender;
    b->m.to_user = sender == a ? c : a;
    b->m.client_msg_id = b->client_msg_id;
    b->m.body = b->body;
    b->m.created_at_ms = now_ms + (int64_t)i;
}

static int check(im_err_t err, im_mysql_t *db, const char *what)
{
    if (err == IM_OK)
        return 0;
    fprintf(stderr, "dbreport: %s: %s: %s (error %u)\n", what, im_errname(err), im_mysql_error(db),
            im_mysql_errno(db));
    return -1;
}

static int reset_tables(im_mysql_t *db)
{
    if (check(im_mysql_exec(db, "TRUNCATE TABLE " BENCH_MESSAGES), db, "truncate") != 0 ||
        check(im_mysql_exec(db, "TRUNCATE TABLE " BENCH_CONVS_T), db, "truncate") != 0)
        return -1;
    return 0;
}

static int create_tables(im_mysql_t *db)
{
    static const char *const sql[] = {
        "DROP TABLE IF EXISTS " BENCH_MESSAGES,
        "DROP TABLE IF EXISTS " BENCH_CONVS_T,
        "CREATE TABLE " BENCH_MESSAGES " LIKE messages",
        "CREATE TABLE " BENCH_CONVS_T " LIKE user_convs",
    };
    size_t i;

    for (i = 0; i < sizeof(sql) / sizeof(sql[0]); i++)
        if (check(im_mysql_exec(db, sql[i]), db, sql[i]) != 0)
            return -1;
    return 0;
}

static void drop_tables(im_mysql_t *db)
{
    check(im_mysql_exec(db, "DROP TABLE IF EXISTS " BENCH_MESSAGES), db, "drop");
    check(im_mysql_exec(db, "DROP TABLE IF EXISTS " BENCH_CONVS_T), db, "drop");
}

/* One prepared single-row INSERT per message, each its own autocommit transaction. */
static int run_single(im_mysql_t *db, bench_msg_t *msgs, size_t rows, bench_row_t *out)
{
    im_mysql_stmt_t *st;
    double t0;
    size_t i;
    im_err_t err;

    err = im_mysql_prepare(db,
                           "INSERT INTO " BENCH_MESSAGES " (id, conv_id, seq, sender_id,"
                           " client_msg_id, body, created_at_ms) VALUES (?,?,?,?,?,?,?)",
                           &st);
    if (check(err, db, "prepare") != 0)
        return -1;
    t0 = now_s();
    for (i = 0; i < rows && err == IM_OK; i++) {
        const Im__V1__ChatMessage *m = &msgs[i].m;

        im_mysql_bind_u64(st, 0, m->id);
        im_mysql_bind_str(st, 1, m->conv, strlen(m->conv));
        im_mysql_bind_u64(st, 2, m->seq);
        im_mysql_bind_u64(st, 3, m->sender);
        im_mysql_bind_str(st, 4, m->client_msg_id, strlen(m->client_msg_id));
        im_mysql_bind_str(st, 5, m->body, strlen(m->body));
        im_mysql_bind_i64(st, 6, m->created_at_ms);
        err = im_mysql_stmt_exec(st);
    }
    *out = (bench_row_t){"single-row", 1, rows, now_s() - t0};
    im_mysql_stmt_free(st);
    return check(err, db, "single-row insert");
}

static int run_batched(im_mysql_t *db, lg_store_t *store, const Im__V1__ChatMessage **ptrs,
                       size_t rows, unsigned batch, bench_row_t *out)
{
    lg_store_result_t res;
    size_t done = 0, stored = 0;
    double t0 = now_s();
    im_err_t err = IM_OK;

    while (done < rows && err == IM_OK) {
        size_t n = rows - done < batch ? rows - done : batch;

        err = lg_store_insert_batch(store, ptrs + done, n, &res);
        stored += res.inserted;
        done += n;
    }
    *out = (bench_row_t){"batched", batch, rows, now_s() - t0};
    if (check(err, db, "lg_store_insert_batch") != 0)
        return -1;
    if (stored != rows) {
        fprintf(stderr, "dbreport: batch %u stored %zu of %zu rows\n", batch, stored, rows);
        return -1;
    }
    return 0;
}

static void print_table(const bench_row_t *rows, size_t n)
{
    double base = rows[0].rows / rows[0].seconds;
    size_t i;

    printf("%-10s %6s %9s %9s %10s %9s\n", "mode", "batch", "rows", "seconds", "rows/s",
           "vs single");
    for (i = 0; i < n; i++) {
        double rate = rows[i].rows / rows[i].seconds;

        printf("%-10s %6u %9zu %9.3f %10.0f %8.1fx\n", rows[i].mode, rows[i].batch, rows[i].rows,
               rows[i].seconds, rate, rate / base);
    }
}

/* All modes on db; the scratch tables exist. */
static int run_all(im_mysql_t *db, const bm_dbreport_config_t *cfg, const unsigned *sizes,
                   size_t nsizes)
{
    lg_store_config_t scfg = {BENCH_MESSAGES, BENCH_CONVS_T};
    size_t rows = (size_t)cfg->rows, i, nresults = 0;
    bench_msg_t *msgs = im_malloc(rows * sizeof(*msgs));
    const Im__V1__ChatMessage **ptrs = im_malloc(rows * sizeof(*ptrs));
    bench_row_t results[MAX_BATCH_SIZES + 1];
    lg_store_t *store = lg_store_new(db, &scfg);
    int64_t now_ms = (int64_t)time(NULL) * 1000;
    int rc = -1;

    for (i = 0; i < rows; i++) {
        gen_msg(&msgs[i], i, now_ms);
        ptrs[i] = &msgs[i].m;
    }
    if (store == NULL || reset_tables(db) != 0 ||
        run_single(db, msgs, rows, &results[nresults++]) != 0)
        goto out;
    for (i = 0; i < nsizes; i++) {
        if (reset_tables(db) != 0 ||
            run_batched(db, store, ptrs, rows, sizes[i], &results[nresults++]) != 0)
            goto out;
    }
    print_table(results, nresults);
    rc = 0;
out:
    lg_store_free(store);
    im_free(ptrs);
    im_free(msgs);
    return rc;
}

static int parse_config(int argc, char **argv, bm_dbreport_config_t *cfg)
{
    char err[256];
    im_err_t rc = im_cfg_parse(&spec, cfg, argc, argv, NULL, err, sizeof(err));

    /* The state dir's env file sits between the defaults and the environment, so
     * parse once to find it, load it, and parse again. */
    if (rc == IM_OK && cfg->state_dir != NULL && *cfg->state_dir != '\0') {
        if (load_state_env(cfg->state_dir) != 0)
            return 2;
        rc = im_cfg_parse(&spec, cfg, argc, argv, NULL, err, sizeof(err));
    }
    if (rc == IM_EHELP) {
        im_cfg_usage(&spec, stdout);
        return 1;
    }
    if (rc != IM_OK) {
        fprintf(stderr, "dbreport: %s\n", err);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    bm_dbreport_config_t cfg;
    unsigned sizes[MAX_BATCH_SIZES];
    size_t nsizes;
    im_mysql_config_t mcfg = {0};
    im_mysql_t *db;
    char err[512];
    int rc = parse_config(argc, argv, &cfg);

    if (rc != 0)
        return rc == 1 ? 0 : rc;
    nsizes = parse_batches(cfg.batches, sizes);
    if (nsizes == 0) {
        fprintf(stderr, "dbreport: --batches wants 1 to %d sizes like 1,10,100,1000\n",
                MAX_BATCH_SIZES);
        return 2;
    }
    im_log_set_level(IM_LOG_WARN);
    mcfg.host = cfg.mysql_host;
    mcfg.port = (unsigned)cfg.mysql_port;
    mcfg.user = cfg.mysql_user;
    mcfg.password = cfg.mysql_password;
    mcfg.db = cfg.mysql_db;
    mcfg.socket = cfg.mysql_socket != NULL && *cfg.mysql_socket != '\0' ? cfg.mysql_socket : NULL;
    mcfg.name = "dbreport";
    db = im_mysql_connect(&mcfg, err, sizeof(err));
    if (db == NULL) {
        fprintf(stderr, "dbreport: %s\n", err);
        return 1;
    }
    printf("dbreport: %" PRId64 " rows per mode, mysql %s:%u/%s\n", cfg.rows,
           mcfg.socket != NULL ? mcfg.socket : mcfg.host, mcfg.port, mcfg.db);
    rc = create_tables(db) == 0 && run_all(db, &cfg, sizes, nsizes) == 0 ? 0 : 1;
    drop_tables(db);
    im_mysql_close(db);
    im_mysql_library_end();
    return rc;
}
