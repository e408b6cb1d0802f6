/*
 * dbreport - MariaDB write throughput on the real server, in one run:
 *
 *   single-row    one autocommit INSERT per message (what a naive service does)
 *   raw-bulk      the MariaDB bulk-insert ceiling: one plain multi-row INSERT of
 *                 --bulk-rows rows per transaction, messages table only, nothing
 *                 else (no user_convs rows, no duplicate handling)
 *   batched       the writer's store path, lg_store_insert_batch(), at several
 *                 batch sizes
 *   writer-drain  the real writer (lg_writer) draining a backlog of persistent
 *                 ChatBatch messages from a private durable RabbitMQ queue into
 *                 the same tables through lg_store, acking after each commit
 *
 * Rows go to scratch tables (bench_messages, bench_user_convs, made with CREATE
 * TABLE ... LIKE the real ones and dropped at the end), emptied before each mode
 * so every mode starts from the same table size.  The batched and writer-drain
 * modes also write the user_convs rows of their direct conversations, with a
 * store configured as the service's writer configures its own (each mode and
 * round gets a new store, as after a writer restart, so it writes each
 * conversation's rows once); single-row and raw-bulk write messages only, so
 * the ratios against them understate the writer.
 *
 * The drain mode first publishes its backlog with publisher confirms, which is
 * timed too: the broker's persistent publish rate is the other raw limit the
 * service is compared with.  The queue is declared under a unique name and
 * deleted at the end, also after a failure or SIGINT/SIGTERM.  Without a
 * reachable RabbitMQ the drain mode is reported as skipped, with the reason.
 *
 * raw-bulk and writer-drain each take about a second, so one run of each says
 * more about what else the machine did in that second than about them: they
 * run --rounds times, alternating (raw-bulk, publish, drain, raw-bulk, ...) so
 * both see the same conditions, and the report gives the median with the
 * range.  single-row and the batched series run once.
 *
 * Besides the table and the summary, one "dbreport-summary:" line carries the
 * headline numbers as key=value pairs (drain_reason=, when present, is last and
 * takes the rest of the line) for the benchmark's JSON output.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "im_alloc.h"
#include "im_amqp.h"
#include "im_config.h"
#include "im_log.h"
#include "im_mysql.h"
#include "lg_store.h"
#include "lg_writer.h"

#define MAX_BATCH_SIZES 16
#define MAX_RESULTS     (MAX_BATCH_SIZES + 3)
#define MAX_ROUNDS      15
#define BENCH_CONVS     64 /* direct conversations the rows are spread over */
#define BENCH_MESSAGES  "bench_messages"
#define BENCH_CONVS_T   "bench_user_convs"
#define MSG_COLS        "id, conv_id, seq, sender_id, client_msg_id, body, created_at_ms"
#define AMQP_TIMEOUT_MS 5000
/* user_convs rows a store remembers, as lg_service.c's LG_WRITER_KNOWN_CONVS:
 * the batched and drain modes store the way the service's writer does. */
#define BENCH_KNOWN_CONVS 65536
#define POLL_SLICE_MS   1 /* how often the drain's progress is looked at */

typedef struct {
    int64_t rows;
    const char *batches;
    int64_t bulk_rows;
    int64_t rounds;
    int drain;
    int64_t chat_batch;
    int64_t publish_window;
    int64_t writer_batch;
    int64_t writer_prefetch;
    int64_t writer_delay_ms;
    int64_t drain_timeout_ms;
    const char *state_dir;
    const char *mysql_host;
    int64_t mysql_port;
    const char *mysql_user;
    const char *mysql_password;
    const char *mysql_db;
    const char *mysql_socket;
    const char *amqp_host;
    int64_t amqp_port;
    const char *amqp_user;
    const char *amqp_password;
    const char *amqp_vhost;
} bm_dbreport_config_t;

#define OPT(name, type, field, def, min, max, help)                                    \
    {name, 0, type, offsetof(bm_dbreport_config_t, field), def, min, max, help}

static const im_cfg_opt_t opts[] = {
    {"rows", 'n', IM_CFG_INT, offsetof(bm_dbreport_config_t, rows), "20000", 1, 10000000,
     "messages written by each mode"},
    {"batches", 'b', IM_CFG_STR, offsetof(bm_dbreport_config_t, batches), "1,10,100,1000", 0, 0,
     "comma-separated batch sizes of the batched mode"},
    OPT("bulk-rows", IM_CFG_INT, bulk_rows, "1000", 1, 5000,
        "raw-bulk mode: rows per multi-row INSERT (one transaction each)"),
    OPT("rounds", IM_CFG_INT, rounds, "5", 1, MAX_ROUNDS,
        "raw-bulk and writer-drain: alternating runs of each; the median is reported"),
    OPT("drain", IM_CFG_BOOL, drain, "true", 0, 0,
        "run the writer-drain mode (needs RabbitMQ; --no-drain skips it)"),
    OPT("chat-batch", IM_CFG_INT, chat_batch, "16", 1, 10000,
        "writer-drain: messages per published ChatBatch (logic's SendBatch packs the sends "
        "of one gateway loop turn into one)"),
    OPT("publish-window", IM_CFG_INT, publish_window, "256", 1, 65535,
        "writer-drain: persistent publishes awaiting their confirm at once (logic's default)"),
    OPT("writer-batch", IM_CFG_INT, writer_batch, "1024", 1, 10000,
        "writer-drain: the writer's messages per INSERT transaction (logic's default)"),
    OPT("writer-prefetch", IM_CFG_INT, writer_prefetch, "2000", 1, 65535,
        "writer-drain: unacked deliveries the writer holds (logic's default)"),
    OPT("writer-delay", IM_CFG_DURATION, writer_delay_ms, "20ms", 0, 10000,
        "writer-drain: longest a message waits for its batch to fill (logic's default)"),
    OPT("drain-timeout", IM_CFG_DURATION, drain_timeout_ms, "60s", 1000, 3600000,
        "writer-drain: give up when publishing or draining makes no progress this long"),
    OPT("state-dir", IM_CFG_STR, state_dir, NULL, 0, 0,
        "read the IM_MYSQL_* and IM_AMQP_* settings of scripts/infra.sh from <dir>/env "
        "(environment and flags win)"),
    OPT("mysql-host", IM_CFG_STR, mysql_host, "127.0.0.1", 0, 0, "MariaDB host"),
    OPT("mysql-port", IM_CFG_INT, mysql_port, "3306", 1, 65535, "MariaDB port"),
    OPT("mysql-user", IM_CFG_STR, mysql_user, "im", 0, 0, "MariaDB user"),
    OPT("mysql-password", IM_CFG_STR, mysql_password, "", 0, 0, "MariaDB password"),
    OPT("mysql-db", IM_CFG_STR, mysql_db, "im", 0, 0, "database holding the migrated schema"),
    OPT("mysql-socket", IM_CFG_STR, mysql_socket, NULL, 0, 0,
        "Unix socket instead of TCP (empty: TCP)"),
    OPT("amqp-host", IM_CFG_STR, amqp_host, "127.0.0.1", 0, 0, "RabbitMQ host"),
    OPT("amqp-port", IM_CFG_INT, amqp_port, "5673", 1, 65535, "RabbitMQ port"),
    OPT("amqp-user", IM_CFG_STR, amqp_user, "im", 0, 0, "RabbitMQ user"),
    OPT("amqp-password", IM_CFG_STR, amqp_password, "im", 0, 0, "RabbitMQ password"),
    OPT("amqp-vhost", IM_CFG_STR, amqp_vhost, "/", 0, 0, "RabbitMQ virtual host"),
};

static const im_cfg_spec_t spec = {
    "dbreport",
    "MariaDB write throughput: single-row autocommit INSERT and raw multi-row bulk INSERT vs "
    "the batch writer's store, and the real writer draining a RabbitMQ backlog.",
    "IM", opts, sizeof(opts) / sizeof(opts[0])};

/* One generated message and the strings it points at. */
typedef struct {
    Im__V1__ChatMessage m;
    char conv[48];
    char client_msg_id[32];
    char body[128];
} bench_msg_t;

/* A mode's line of the table: one run, or the median of several. */
typedef struct {
    const char *mode;
    unsigned batch;
    size_t rows;
    double seconds; /* rows / the median rate */
    unsigned runs;
    double lo, hi; /* rows/s of the slowest and the fastest run */
} bench_row_t;

typedef enum { DRAIN_OK, DRAIN_SKIPPED, DRAIN_FAILED } drain_state_t;

/* One round of the writer-drain mode: the backlog's publish and its drain. */
typedef struct {
    int published;    /* every publish confirmed */
    size_t amqp_msgs; /* ChatBatch messages published and confirmed */
    double publish_s; /* first publish -> last confirm */
    double startup_s; /* writer start -> consuming (not in drain_s) */
    double drain_s;   /* consuming -> every row committed and acked */
    lg_writer_stats_t stats;
    size_t duplicates, conflicts; /* what the store reported, summed over flushes */
} drain_round_t;

/* The writer-drain mode: its queue and connections, kept over the rounds. */
typedef struct {
    drain_state_t state;
    char reason[512]; /* why skipped or failed */
    char queue[96];
    im_amqp_config_t amqp;
    im_amqp_conn_t *conn; /* declares, publishes, deletes */
    im_mysql_t *wdb;      /* the writer thread's connection */
    unsigned rounds;      /* completed */
    drain_round_t round[MAX_ROUNDS];
} drain_t;

/* The writer thread's side of the drain: its own connection and store. */
typedef struct {
    lg_store_t *store;
    size_t duplicates, conflicts;
} drain_db_t;

/* Set by SIGINT/SIGTERM; the loops stop and the cleanup still runs. */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
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

static int count_rows(im_mysql_t *db, uint64_t *out)
{
    im_mysql_stmt_t *st;
    im_err_t err = im_mysql_prepare(db, "SELECT COUNT(*) FROM " BENCH_MESSAGES, &st);

    *out = 0;
    if (err == IM_OK && (err = im_mysql_stmt_exec(st)) == IM_OK &&
        (err = im_mysql_stmt_next(st)) == IM_OK)
        *out = im_mysql_col_u64(st, 0);
    if (err == IM_OK)
        while (im_mysql_stmt_next(st) == IM_OK) {
        }
    im_mysql_stmt_free(st);
    return check(err, db, "count rows");
}

static void bind_msg(im_mysql_stmt_t *st, unsigned p, const Im__V1__ChatMessage *m)
{
    im_mysql_bind_u64(st, p, m->id);
    im_mysql_bind_str(st, p + 1, m->conv, strlen(m->conv));
    im_mysql_bind_u64(st, p + 2, m->seq);
    im_mysql_bind_u64(st, p + 3, m->sender);
    im_mysql_bind_str(st, p + 4, m->client_msg_id, strlen(m->client_msg_id));
    im_mysql_bind_str(st, p + 5, m->body, strlen(m->body));
    im_mysql_bind_i64(st, p + 6, m->created_at_ms);
}

/* ---------------------------------------------------------------- MariaDB modes */

/* One prepared single-row INSERT per message, each its own autocommit
 * transaction.  *secs is the time taken. */
static int run_single(im_mysql_t *db, bench_msg_t *msgs, size_t rows, double *secs)
{
    im_mysql_stmt_t *st;
    double t0;
    size_t i;
    im_err_t err;

    err = im_mysql_prepare(
        db, "INSERT INTO " BENCH_MESSAGES " (" MSG_COLS ") VALUES (?,?,?,?,?,?,?)", &st);
    if (check(err, db, "prepare") != 0)
        return -1;
    t0 = now_s();
    for (i = 0; i < rows && err == IM_OK && !interrupted; i++) {
        bind_msg(st, 0, &msgs[i].m);
        err = im_mysql_stmt_exec(st);
    }
    *secs = now_s() - t0;
    im_mysql_stmt_free(st);
    return check(err, db, "single-row insert") != 0 || interrupted ? -1 : 0;
}

/* Prepares INSERT INTO messages (...) VALUES (...) x rows: a plain insert, no
 * ON DUPLICATE KEY, which is the cheapest statement the server has for it. */
static im_err_t prepare_bulk(im_mysql_t *db, size_t rows, im_mysql_stmt_t **out)
{
    static const char head[] = "INSERT INTO " BENCH_MESSAGES " (" MSG_COLS ") VALUES ";
    static const char tuple[] = "(?,?,?,?,?,?,?)";
    char *sql = im_malloc(sizeof(head) + rows * sizeof(tuple)), *p = sql;
    size_t i;
    im_err_t err;

    memcpy(p, head, sizeof(head) - 1);
    p += sizeof(head) - 1;
    for (i = 0; i < rows; i++) {
        if (i > 0)
            *p++ = ',';
        memcpy(p, tuple, sizeof(tuple) - 1);
        p += sizeof(tuple) - 1;
    }
    *p = '\0';
    err = im_mysql_prepare(db, sql, out);
    im_free(sql);
    return err;
}

/* Raw bulk: bulk rows per statement, BEGIN + INSERT + COMMIT each.  The
 * statements are prepared before the clock starts, as single-row's is. */
static int run_raw_bulk(im_mysql_t *db, bench_msg_t *msgs, size_t rows, size_t bulk, double *secs)
{
    im_mysql_stmt_t *full = NULL, *rest = NULL;
    size_t done = 0, tail = rows % bulk;
    double t0;
    im_err_t err = IM_OK;
    int rc = -1;

    if (rows >= bulk && check(prepare_bulk(db, bulk, &full), db, "prepare bulk") != 0)
        goto out;
    if (tail > 0 && check(prepare_bulk(db, tail, &rest), db, "prepare bulk") != 0)
        goto out;
    t0 = now_s();
    while (done < rows && err == IM_OK && !interrupted) {
        size_t n = rows - done >= bulk ? bulk : tail, i;
        im_mysql_stmt_t *st = n == bulk ? full : rest;

        for (i = 0; i < n; i++)
            bind_msg(st, (unsigned)(i * 7), &msgs[done + i].m);
        if ((err = im_mysql_begin(db)) == IM_OK && (err = im_mysql_stmt_exec(st)) == IM_OK)
            err = im_mysql_commit(db);
        done += n;
    }
    *secs = now_s() - t0;
    if (check(err, db, "raw bulk insert") != 0) {
        im_mysql_rollback(db);
        goto out;
    }
    rc = interrupted ? -1 : 0;
out:
    im_mysql_stmt_free(full);
    im_mysql_stmt_free(rest);
    return rc;
}

/* The store path alone, with a new store (statements and remembered
 * user_convs rows start cold, as in each drain round). */
static int run_batched(im_mysql_t *db, const lg_store_config_t *scfg,
                       const Im__V1__ChatMessage **ptrs, size_t rows, unsigned batch, double *secs)
{
    lg_store_t *store = lg_store_new(db, scfg);
    lg_store_result_t res;
    size_t done = 0, stored = 0;
    double t0 = now_s();
    im_err_t err = store != NULL ? IM_OK : IM_EINVAL;

    while (done < rows && err == IM_OK && !interrupted) {
        size_t n = rows - done < batch ? rows - done : batch;

        err = lg_store_insert_batch(store, ptrs + done, n, &res);
        stored += res.inserted;
        done += n;
    }
    *secs = now_s() - t0;
    lg_store_free(store);
    if (check(err, db, "lg_store_insert_batch") != 0 || interrupted)
        return -1;
    if (stored != rows) {
        fprintf(stderr, "dbreport: batch %u stored %zu of %zu rows\n", batch, stored, rows);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- writer drain */

static void drain_fail(drain_t *d, drain_state_t state, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void drain_fail(drain_t *d, drain_state_t state, const char *fmt, ...)
{
    va_list ap;

    d->state = state;
    va_start(ap, fmt);
    vsnprintf(d->reason, sizeof(d->reason), fmt, ap);
    va_end(ap);
}

typedef struct {
    uint64_t ok, failed;
    im_err_t first_err;
} confirms_t;

static void confirm_cb(uint64_t seqno, im_err_t result, void *arg)
{
    confirms_t *c = arg;

    (void)seqno;
    if (result == IM_OK) {
        c->ok++;
    } else if (c->failed++ == 0) {
        c->first_err = result;
    }
}

/* Waits for confirms until the broker has answered something (IM_OK), the
 * connection fails, or timeout_ms pass without a single frame, or a signal
 * came (IM_ETIMEDOUT). */
static im_err_t await_confirms(im_amqp_publisher_t *pub, int64_t timeout_ms)
{
    int64_t waited = 0;
    im_err_t rc;

    while ((rc = im_amqp_publisher_poll(pub, 100)) == IM_EAGAIN) {
        if ((waited += 100) >= timeout_ms || interrupted)
            return IM_ETIMEDOUT;
    }
    return rc;
}

/* Publishes msgs[0..rows) as persistent ChatBatch messages of chat_batch rows
 * to the queue with confirms, and times it up to the last confirm. */
static void publish_backlog(drain_t *d, drain_round_t *r, const bm_dbreport_config_t *cfg,
                            bench_msg_t *msgs, size_t rows)
{
    size_t per = (size_t)cfg->chat_batch, done = 0, cap = 0, sent = 0;
    Im__V1__ChatMessage **items = im_malloc(per * sizeof(*items));
    confirms_t conf = {0, 0, IM_OK};
    im_amqp_publisher_t *pub;
    uint8_t *buf = NULL;
    im_err_t rc = IM_OK;
    double t0;

    pub = im_amqp_publisher_new(d->conn, (unsigned)cfg->publish_window, confirm_cb, &conf);
    t0 = now_s();
    while (done < rows && rc == IM_OK && !interrupted) {
        Im__V1__ChatBatch batch = IM__V1__CHAT_BATCH__INIT;
        size_t n = rows - done < per ? rows - done : per, len, i;

        for (i = 0; i < n; i++)
            items[i] = &msgs[done + i].m;
        batch.n_messages = n;
        batch.messages = items;
        len = im__v1__chat_batch__get_packed_size(&batch);
        if (len > cap) {
            cap = len * 2;
            buf = im_realloc(buf, cap);
        }
        im__v1__chat_batch__pack(&batch, buf);
        while ((rc = im_amqp_publish(pub, "", d->queue, buf, len, true, NULL)) == IM_EAGAIN &&
               (rc = await_confirms(pub, cfg->drain_timeout_ms)) == IM_OK) {
        }
        if (rc == IM_OK) {
            sent++;
            done += n;
        }
    }
    while (rc == IM_OK && im_amqp_publisher_outstanding(pub) > 0)
        rc = await_confirms(pub, cfg->drain_timeout_ms);
    r->publish_s = now_s() - t0;
    r->amqp_msgs = (size_t)conf.ok;
    if (interrupted)
        drain_fail(d, DRAIN_FAILED, "interrupted while publishing");
    else if (rc != IM_OK)
        drain_fail(d, DRAIN_FAILED, "publish %zu of %zu ChatBatch messages: %s (%s)", sent + 1,
                   (rows + per - 1) / per, im_errname(rc), im_amqp_last_error(d->conn));
    else if (conf.failed > 0)
        drain_fail(d, DRAIN_FAILED, "%" PRIu64 " of %zu publishes not confirmed (first: %s)",
                   conf.failed, sent, im_errname(conf.first_err));
    else
        r->published = 1;
    /* Unconfirmed seqnos are not reported after this; the queue is deleted anyway. */
    im_amqp_publisher_free(pub);
    im_free(buf);
    im_free(items);
}

/* The writer's flush, as lg_service wires it, but into the scratch tables. */
static im_err_t drain_flush(void *arg, Im__V1__ChatMessage *const *msgs, size_t n)
{
    drain_db_t *w = arg;
    lg_store_result_t res;
    im_err_t rc =
        lg_store_insert_batch(w->store, (const Im__V1__ChatMessage *const *)msgs, n, &res);

    w->duplicates += res.duplicates;
    w->conflicts += res.conflicts;
    return rc;
}

/* Starts an lg_writer on the queue and waits until it has committed and acked
 * every row, through its own store over the writer's connection d->wdb. */
static void run_writer(drain_t *d, drain_round_t *r, const bm_dbreport_config_t *cfg, size_t rows)
{
    lg_store_config_t scfg = {
        .messages_table = BENCH_MESSAGES,
        .user_convs_table = BENCH_CONVS_T,
        .known_convs = BENCH_KNOWN_CONVS,
    };
    drain_db_t ddb = {lg_store_new(d->wdb, &scfg), 0, 0};
    lg_writer_config_t wc;
    lg_writer_t *w;
    double t0, t_ready = 0, t_progress;
    uint64_t last = 0;

    lg_writer_config_default(&wc);
    wc.amqp = d->amqp;
    wc.amqp.name = "dbreport-writer";
    wc.amqp.heartbeat_s = 30;
    wc.queue = d->queue;
    wc.batch_size = (unsigned)cfg->writer_batch;
    wc.prefetch = (unsigned)cfg->writer_prefetch;
    wc.max_delay_ms = (unsigned)cfg->writer_delay_ms;
    w = ddb.store != NULL ? lg_writer_new(&wc, drain_flush, &ddb) : NULL;
    if (w == NULL || lg_writer_start(w) != IM_OK) {
        drain_fail(d, DRAIN_FAILED, "cannot start the writer (writer-batch <= writer-prefetch?)");
        goto out;
    }
    t0 = t_progress = now_s();
    for (;;) {
        double t = now_s();

        lg_writer_stats(w, &r->stats);
        if (t_ready == 0 && r->stats.connected)
            t_ready = t;
        if (r->stats.messages >= rows)
            break;
        if (r->stats.messages != last) {
            last = r->stats.messages;
            t_progress = t;
        }
        if (interrupted) {
            drain_fail(d, DRAIN_FAILED, "interrupted while draining");
            break;
        }
        if ((t - t_progress) * 1000 >= (double)cfg->drain_timeout_ms) {
            drain_fail(d, DRAIN_FAILED,
                       "writer stalled at %" PRIu64 " of %zu rows for %.0f s (connected %" PRIu64
                       ", flush errors %" PRIu64 ", poison %" PRIu64 ")",
                       r->stats.messages, rows, t - t_progress, r->stats.connected,
                       r->stats.flush_errors, r->stats.poison);
            break;
        }
        sleep_ms(POLL_SLICE_MS);
    }
    if (t_ready == 0) /* connected and done between two looks */
        t_ready = t0;
    r->startup_s = t_ready - t0;
    r->drain_s = now_s() - t_ready;
    lg_writer_stop(w);
    lg_writer_stats(w, &r->stats);
out:
    lg_writer_free(w);
    lg_store_free(ddb.store);
    r->duplicates = ddb.duplicates;
    r->conflicts = ddb.conflicts;
}

/* Connects to RabbitMQ (skipped when it cannot), declares the private queue
 * the way the writer declares its own, and opens the writer's MariaDB
 * connection.  drain_close() undoes it whatever the state. */
static void drain_open(drain_t *d, const bm_dbreport_config_t *cfg, const im_mysql_config_t *mcfg)
{
    im_amqp_queue_opts_t q = {.durable = true};
    im_mysql_config_t wcfg = *mcfg;
    char err[256];
    im_err_t rc;

    memset(d, 0, sizeof(*d));
    d->amqp = (im_amqp_config_t){
        .host = cfg->amqp_host,
        .port = (unsigned)cfg->amqp_port,
        .user = cfg->amqp_user,
        .password = cfg->amqp_password,
        .vhost = cfg->amqp_vhost,
        .name = "dbreport",
        .timeout_ms = AMQP_TIMEOUT_MS,
    };
    if (!cfg->drain) {
        drain_fail(d, DRAIN_SKIPPED, "--no-drain");
        return;
    }
    d->conn = im_amqp_connect(&d->amqp, err, sizeof(err));
    if (d->conn == NULL) {
        drain_fail(d, DRAIN_SKIPPED, "RabbitMQ at %s:%u not reachable: %s", d->amqp.host,
                   d->amqp.port, err);
        return;
    }
    snprintf(d->queue, sizeof(d->queue), "dbreport.drain.%ld.%lld", (long)getpid(),
             (long long)time(NULL));
    q.name = d->queue;
    if ((rc = im_amqp_declare_queue(d->conn, &q, NULL, 0, NULL)) != IM_OK) {
        drain_fail(d, DRAIN_FAILED, "declare %s: %s (%s)", d->queue, im_errname(rc),
                   im_amqp_last_error(d->conn));
        return;
    }
    wcfg.name = "dbreport-writer";
    d->wdb = im_mysql_connect(&wcfg, err, sizeof(err));
    if (d->wdb == NULL)
        drain_fail(d, DRAIN_FAILED, "writer's MariaDB connection: %s", err);
}

/* One round: publish the backlog, empty the tables, drain it with a new
 * writer, check that every row is there.  db is the main connection. */
static void drain_round(drain_t *d, const bm_dbreport_config_t *cfg, im_mysql_t *db,
                        bench_msg_t *msgs, size_t rows)
{
    drain_round_t *r = &d->round[d->rounds];
    im_amqp_queue_opts_t q = {.name = d->queue, .passive = true};
    uint32_t ready = 0;
    uint64_t stored = 0;

    memset(r, 0, sizeof(*r));
    publish_backlog(d, r, cfg, msgs, rows);
    if (d->state != DRAIN_OK)
        return;
    if (im_amqp_declare_queue(d->conn, &q, NULL, 0, &ready) == IM_OK && ready != r->amqp_msgs)
        fprintf(stderr, "dbreport: %s holds %u messages after %zu confirmed publishes\n", d->queue,
                ready, r->amqp_msgs);
    if (reset_tables(db) != 0) {
        drain_fail(d, DRAIN_FAILED, "cannot empty the scratch tables");
        return;
    }
    run_writer(d, r, cfg, rows);
    if (d->state != DRAIN_OK)
        return;
    if (count_rows(db, &stored) != 0 || stored != rows) {
        drain_fail(d, DRAIN_FAILED, "the writer acked %" PRIu64 " rows, %s holds %" PRIu64,
                   r->stats.messages, BENCH_MESSAGES, stored);
        return;
    }
    d->rounds++;
}

/* Deletes the queue whatever happened (a lost connection is made again for
 * it) and closes the connections. */
static void drain_close(drain_t *d)
{
    uint32_t left = 0;
    im_err_t rc;

    im_mysql_close(d->wdb);
    d->wdb = NULL;
    if (d->conn == NULL)
        return;
    if (!im_amqp_is_open(d->conn) && im_amqp_reconnect(d->conn) != IM_OK) {
        fprintf(stderr, "dbreport: cannot delete queue %s: %s\n", d->queue,
                im_amqp_last_error(d->conn));
    } else if ((rc = im_amqp_delete_queue(d->conn, d->queue, &left)) != IM_OK) {
        fprintf(stderr, "dbreport: delete queue %s: %s (%s)\n", d->queue, im_errname(rc),
                im_amqp_last_error(d->conn));
    } else if (left > 0 && d->state == DRAIN_OK) {
        fprintf(stderr, "dbreport: %s still held %u messages\n", d->queue, left);
    }
    im_amqp_close(d->conn);
    d->conn = NULL;
}

/* ---------------------------------------------------------------- report */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* The median of v[0..n) (n >= 1); v is sorted in place. */
static double median(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A table line from the times of n runs of rows each. */
static bench_row_t summarize(const char *mode, unsigned batch, size_t rows, const double *secs,
                             size_t n)
{
    double rates[MAX_ROUNDS];
    bench_row_t r = {mode, batch, rows, 0, (unsigned)n, 0, 0};
    double mid;
    size_t i;

    for (i = 0; i < n; i++)
        rates[i] = secs[i] > 0 ? (double)rows / secs[i] : 0;
    mid = median(rates, n);
    r.seconds = mid > 0 ? (double)rows / mid : 0;
    r.lo = rates[0];
    r.hi = rates[n - 1];
    return r;
}

static double rate(const bench_row_t *r)
{
    return r != NULL && r->seconds > 0 ? (double)r->rows / r->seconds : 0;
}

static const bench_row_t *find_row(const bench_row_t *rows, size_t n, const char *mode)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (strcmp(rows[i].mode, mode) == 0)
            return &rows[i];
    return NULL;
}

static void print_table(const bench_row_t *rows, size_t n)
{
    double base = rate(&rows[0]), ceiling = rate(find_row(rows, n, "raw-bulk"));
    size_t i;

    printf("%-12s %6s %9s %9s %10s %9s %9s %4s  %s\n", "mode", "batch", "rows", "seconds",
           "rows/s", "vs single", "% of bulk", "runs", "min..max rows/s");
    for (i = 0; i < n; i++) {
        double r = rate(&rows[i]);

        printf("%-12s %6u %9zu %9.3f %10.0f %8.1fx %8.1f%% %4u", rows[i].mode, rows[i].batch,
               rows[i].rows, rows[i].seconds, r, base > 0 ? r / base : 0,
               ceiling > 0 ? 100 * r / ceiling : 0, rows[i].runs);
        if (rows[i].runs > 1)
            printf("  %.0f..%.0f", rows[i].lo, rows[i].hi);
        printf("\n");
    }
}

static const char *verdict(double value, double target)
{
    return value >= target ? "met" : "MISSED";
}

static void print_summary(const bench_row_t *rows, size_t n, const drain_t *d,
                          const double *bulk_secs, const bm_dbreport_config_t *cfg)
{
    const bench_row_t *single = find_row(rows, n, "single-row");
    const bench_row_t *bulk = find_row(rows, n, "raw-bulk");
    double s = rate(single), b = rate(bulk), w = rate(find_row(rows, n, "writer-drain"));
    double pub[MAX_ROUNDS], pub_msgs = 0, pub_rows;
    const char *state = d->state == DRAIN_OK        ? "ok"
                        : d->state == DRAIN_SKIPPED ? "skipped"
                                                    : "failed";
    uint64_t flushes = 0, flushed = 0, flush_errors = 0;
    size_t dups = 0, i, npub = 0;
    double startup = 0;

    for (i = 0; i < d->rounds; i++) {
        const drain_round_t *r = &d->round[i];

        flushes += r->stats.batches;
        flushed += r->stats.messages;
        flush_errors += r->stats.flush_errors;
        dups += r->duplicates;
        startup = r->startup_s > startup ? r->startup_s : startup;
    }
    for (i = 0; i <= d->rounds && i < MAX_ROUNDS; i++)
        if (d->round[i].published && d->round[i].publish_s > 0)
            pub[npub++] = (double)d->round[i].amqp_msgs / d->round[i].publish_s;
    if (npub > 0)
        pub_msgs = median(pub, npub);
    pub_rows = pub_msgs * (double)cfg->chat_batch;

    printf("\nsummary (one run, same scratch tables, %zu rows per mode; raw bulk and writer drain: "
           "median of %u alternating rounds):\n",
           single ? single->rows : (size_t)0, bulk ? bulk->runs : 0);
    printf("  single-row autocommit       %10.0f rows/s\n", s);
    printf("  raw bulk (MariaDB ceiling)  %10.0f rows/s = %.1fx single-row (%" PRId64
           " rows per INSERT, one transaction each)\n",
           b, s > 0 ? b / s : 0, cfg->bulk_rows);
    if (d->state == DRAIN_OK && d->rounds > 0) {
        printf("  writer drain                %10.0f rows/s = %.1f%% of raw bulk (target >= 70%%: "
               "%s), %.1fx single-row (target >= 20x: %s)\n",
               w, b > 0 ? 100 * w / b : 0, verdict(b > 0 ? w / b : 0, 0.70), s > 0 ? w / s : 0,
               verdict(s > 0 ? w / s : 0, 20));
        printf("    writer drain / raw bulk, round by round:");
        for (i = 0; i < d->rounds; i++)
            printf(" %.0f%%", d->round[i].drain_s > 0 ? 100 * bulk_secs[i] / d->round[i].drain_s
                                                      : 0);
        printf("\n    %" PRIu64 " flushes of %.0f rows on average (writer batch %" PRId64
               ", prefetch %" PRId64 ", max delay %" PRId64 " ms), %" PRIu64
               " flush errors, %zu duplicates; each writer was consuming within %.0f ms of its "
               "start (not in the time)\n",
               flushes, flushes ? (double)flushed / (double)flushes : 0, cfg->writer_batch,
               cfg->writer_prefetch, cfg->writer_delay_ms, flush_errors, dups, startup * 1000);
    } else {
        printf("  writer drain                %s: %s\n", state, d->reason);
    }
    if (npub > 0)
        printf("  RabbitMQ persistent publish rate (confirmed): %.0f msgs/s = %.0f rows/s "
               "(median of %zu: %zu ChatBatch of %" PRId64 " rows each time, window %" PRId64
               ", queue %s)\n",
               pub_msgs, pub_rows, npub, d->round[0].amqp_msgs, cfg->chat_batch,
               cfg->publish_window, d->queue);
    else
        printf("  RabbitMQ persistent publish rate (confirmed): not measured (drain %s)\n", state);

    printf("dbreport-summary: rows=%zu rounds=%u single_row_rows_per_s=%.0f "
           "raw_bulk_rows_per_s=%.0f raw_bulk_x_single=%.2f",
           single ? single->rows : (size_t)0, bulk ? bulk->runs : 0, s, b, s > 0 ? b / s : 0);
    for (i = 0; i < n; i++)
        if (strcmp(rows[i].mode, "batched") == 0)
            printf(" batched_%u_rows_per_s=%.0f", rows[i].batch, rate(&rows[i]));
    printf(" drain=%s", state);
    if (d->state == DRAIN_OK && d->rounds > 0)
        printf(" writer_drain_rows_per_s=%.0f writer_drain_pct_of_raw_bulk=%.1f "
               "writer_drain_x_single=%.2f",
               w, b > 0 ? 100 * w / b : 0, s > 0 ? w / s : 0);
    if (npub > 0)
        printf(" amqp_publish_msgs_per_s=%.0f amqp_publish_rows_per_s=%.0f "
               "rows_per_chat_batch=%" PRId64 " publish_window=%" PRId64,
               pub_msgs, pub_rows, cfg->chat_batch, cfg->publish_window);
    if (d->state != DRAIN_OK)
        printf(" drain_reason=%s", d->reason);
    printf("\n");
}

/* All modes on db; the scratch tables exist. */
static int run_all(im_mysql_t *db, const im_mysql_config_t *mcfg, const bm_dbreport_config_t *cfg,
                   const unsigned *sizes, size_t nsizes)
{
    lg_store_config_t scfg = {
        .messages_table = BENCH_MESSAGES,
        .user_convs_table = BENCH_CONVS_T,
        .known_convs = BENCH_KNOWN_CONVS,
    };
    size_t rows = (size_t)cfg->rows, bulk = (size_t)cfg->bulk_rows, i, nresults = 0;
    unsigned rounds = (unsigned)cfg->rounds, r;
    bench_msg_t *msgs = im_malloc(rows * sizeof(*msgs));
    const Im__V1__ChatMessage **ptrs = im_malloc(rows * sizeof(*ptrs));
    bench_row_t results[MAX_RESULTS];
    double secs, bulk_secs[MAX_ROUNDS], drain_secs[MAX_ROUNDS];
    int64_t now_ms = (int64_t)time(NULL) * 1000;
    drain_t *drain = im_calloc(1, sizeof(*drain));
    int rc = -1;

    for (i = 0; i < rows; i++) {
        gen_msg(&msgs[i], i, now_ms);
        ptrs[i] = &msgs[i].m;
    }
    if (reset_tables(db) != 0 || run_single(db, msgs, rows, &secs) != 0)
        goto out;
    results[nresults++] = summarize("single-row", 1, rows, &secs, 1);
    for (i = 0; i < nsizes; i++) {
        if (reset_tables(db) != 0 || run_batched(db, &scfg, ptrs, rows, sizes[i], &secs) != 0)
            goto out;
        results[nresults++] = summarize("batched", sizes[i], rows, &secs, 1);
    }
    drain_open(drain, cfg, mcfg);
    for (r = 0; r < rounds; r++) {
        if (reset_tables(db) != 0 || run_raw_bulk(db, msgs, rows, bulk, &bulk_secs[r]) != 0)
            goto out;
        if (drain->state == DRAIN_OK)
            drain_round(drain, cfg, db, msgs, rows);
    }
    /* raw-bulk goes second, next to single-row: the other raw limit. */
    memmove(&results[2], &results[1], (nresults - 1) * sizeof(results[0]));
    results[1] = summarize("raw-bulk", (unsigned)(rows < bulk ? rows : bulk), rows, bulk_secs,
                           rounds);
    nresults++;
    if (drain->state == DRAIN_OK) {
        for (r = 0; r < drain->rounds; r++)
            drain_secs[r] = drain->round[r].drain_s;
        results[nresults++] = summarize("writer-drain", (unsigned)cfg->writer_batch, rows,
                                        drain_secs, drain->rounds);
    }
    print_table(results, nresults);
    print_summary(results, nresults, drain, bulk_secs, cfg);
    rc = drain->state == DRAIN_FAILED ? -1 : 0;
out:
    drain_close(drain);
    im_free(drain);
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

/* SIGINT/SIGTERM only set a flag, so the queue and the tables are still
 * removed; SIGPIPE is ignored so a reader that went away (the benchmark was
 * interrupted) does not kill us before that. */
static void install_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
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
    install_signals();
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
    printf("dbreport: %" PRId64 " rows per mode, mysql %s:%u/%s, amqp %s:%" PRId64 "%s\n",
           cfg.rows, mcfg.socket != NULL ? mcfg.socket : mcfg.host, mcfg.port, mcfg.db,
           cfg.amqp_host, cfg.amqp_port, cfg.amqp_vhost);
    fflush(stdout);
    rc = create_tables(db) == 0 && run_all(db, &mcfg, &cfg, sizes, nsizes) == 0 ? 0 : 1;
    drop_tables(db);
    if (interrupted) {
        fflush(stdout);
        fprintf(stderr, "dbreport: interrupted; scratch tables and queue removed\n");
    }
    im_mysql_close(db);
    im_mysql_library_end();
    return rc;
}
