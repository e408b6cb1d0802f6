/*
 * bm_ws_db.c - db mode: the database side of a run.
 *
 * First the existing dbreport binary (next to this one, or --dbreport) runs
 * against the same MariaDB and RabbitMQ (the state dir's env) and its output
 * is kept for the report: single-row autocommit, the raw multi-row bulk
 * insert ceiling, the store's batched path, the real writer draining a
 * RabbitMQ backlog, and the broker's confirmed persistent publish rate.  Its
 * "dbreport-summary:" line goes into the JSON output as numbers.  Then the
 * run is a direct-mode load, while a thread counts the run's rows in
 * `messages` (ids are snowflakes, so "id >= the first id of this second"
 * selects them with a primary-key range) every 200 ms: acked messages stored
 * per second is the writer's drain rate, acked minus stored is its lag, and
 * after the last ack the time until everything is stored is how long the
 * queue takes to drain.  The drain rate measured this way is bounded by the
 * send rate; dbreport's writer-drain number (a backlog) is the ceiling.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bm_ws.h"
#include "im_config.h"
#include "im_alloc.h"
#include "im_id.h"
#include "im_json.h"
#include "im_mysql.h"
#include "im_time.h"

#define POLL_MS 200

struct bm_db_s {
    pthread_t th;
    int started;
    atomic_int stop;
    atomic_uint_fast64_t stored;
    atomic_uint_fast64_t polls;
    uint64_t floor_id;
    im_mysql_t *db;
    im_mysql_stmt_t *count;
    char err[256];
};

/* ------------------------------------------------------------ dbreport */

int bm__db_report(void)
{
    char path[4200], self[4096], rows[32], *slash, buf[4096];
    const char *argv[8];
    int fds[2], status = 0;
    size_t len = 0, cap = 0;
    ssize_t n, k;
    pid_t pid;

    if (B.cfg.dbreport && *B.cfg.dbreport) {
        snprintf(path, sizeof(path), "%s", B.cfg.dbreport);
    } else {
        k = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (k <= 0)
            return -1;
        self[k] = '\0';
        slash = strrchr(self, '/');
        if (slash)
            *slash = '\0';
        snprintf(path, sizeof(path), "%s/dbreport", self);
    }
    snprintf(rows, sizeof(rows), "%" PRId64, B.cfg.db_rows);
    argv[0] = path;
    argv[1] = "--state-dir";
    argv[2] = B.cfg.state_dir;
    argv[3] = "--rows";
    argv[4] = rows;
    argv[5] = NULL;
    if (pipe(fds) != 0)
        return -1;
    if (B.cfg.progress)
        fprintf(stderr, "benchmark: running %s --state-dir %s --rows %s\n", path, B.cfg.state_dir,
                rows);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execv(path, (char *const *)argv);
        fprintf(stderr, "cannot run %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    while ((n = read(fds[0], buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
        if (n < 0)
            continue;
        if (len + (size_t)n + 1 > cap) {
            cap = (len + (size_t)n + 1) * 2;
            B.dbreport_out = im_realloc(B.dbreport_out, cap);
        }
        memcpy(B.dbreport_out + len, buf, (size_t)n);
        len += (size_t)n;
        B.dbreport_out[len] = '\0';
    }
    close(fds[0]);
    waitpid(pid, &status, 0);
    B.dbreport_rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (B.dbreport_out == NULL)
        B.dbreport_out = im_strdup("");
    return B.dbreport_rc == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ the poller */

/* KEY=VALUE lines of <state>/env into the environment, not overriding it. */
static void load_state_env(void)
{
    char path[4096];

    snprintf(path, sizeof(path), "%s/env", B.cfg.state_dir);
    im_cfg_load_env_file(path);
}

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);

    return v && *v ? v : def;
}

static void *poller(void *arg)
{
    bm_db_t *d = arg;

    while (!atomic_load(&d->stop)) {
        struct timespec ts = {0, POLL_MS * 1000000L};
        im_err_t rc;

        im_mysql_bind_u64(d->count, 0, d->floor_id);
        rc = im_mysql_stmt_exec(d->count);
        if (rc == IM_OK && (rc = im_mysql_stmt_next(d->count)) == IM_OK) {
            atomic_store(&d->stored, im_mysql_col_u64(d->count, 0));
            atomic_fetch_add(&d->polls, 1);
            while (im_mysql_stmt_next(d->count) == IM_OK) {
            }
        } else if (rc == IM_EUNAVAIL) {
            im_mysql_reconnect(d->db);
        }
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int bm__db_start(void)
{
    bm_db_t *d = im_calloc(1, sizeof(*d));
    im_mysql_config_t mc = {0};
    const char *sock;

    load_state_env();
    sock = env_or("IM_MYSQL_SOCKET", NULL);
    mc.host = env_or("IM_MYSQL_HOST", "127.0.0.1");
    mc.port = (unsigned)atoi(env_or("IM_MYSQL_PORT", "3307"));
    mc.user = env_or("IM_MYSQL_USER", "im");
    mc.password = env_or("IM_MYSQL_PASSWORD", "im");
    mc.db = env_or("IM_MYSQL_DB", "im");
    mc.socket = sock;
    mc.name = "bench-db";
    B.db = d;
    d->db = im_mysql_connect(&mc, d->err, sizeof(d->err));
    if (d->db == NULL || im_mysql_prepare(d->db, "SELECT COUNT(*) FROM messages WHERE id >= ?",
                                          &d->count) != IM_OK) {
        fprintf(stderr, "benchmark: db mode: MySQL: %s\n", d->db ? im_mysql_error(d->db) : d->err);
        return -1;
    }
    /* The smallest id any node can issue from now on (a second of slack for
     * clocks of other hosts). */
    d->floor_id = (im_wall_ms() - 1000 - IM_ID_EPOCH_MS) << (IM_ID_SEQ_BITS + IM_ID_NODE_BITS);
    im_mysql_bind_u64(d->count, 0, d->floor_id);
    if (im_mysql_stmt_exec(d->count) == IM_OK && im_mysql_stmt_next(d->count) == IM_OK) {
        uint64_t before = im_mysql_col_u64(d->count, 0);
        while (im_mysql_stmt_next(d->count) == IM_OK) {
        }
        if (before != 0)
            fprintf(stderr, "benchmark: db mode: %" PRIu64 " rows newer than the run already\n",
                    before);
    }
    if (pthread_create(&d->th, NULL, poller, d) != 0)
        return -1;
    d->started = 1;
    return 0;
}

uint64_t bm__db_stored(void)
{
    return B.db ? atomic_load(&B.db->stored) : 0;
}

void bm__db_stop(void)
{
    bm_db_t *d = B.db;

    if (d == NULL)
        return;
    if (d->started) {
        atomic_store(&d->stop, 1);
        pthread_join(d->th, NULL);
        d->started = 0;
    }
    im_mysql_stmt_free(d->count);
    d->count = NULL;
    im_mysql_close(d->db);
    d->db = NULL;
}

/* ------------------------------------------------------------ results */

typedef struct {
    uint64_t stored, at_load_end, peak_per_s;
    double drain_s; /* load end -> everything acked is stored; < 0: never */
} db_res_t;

static db_res_t results(void)
{
    db_res_t r = {0};

    r.stored = bm__db_stored();
    r.drain_s = -1;
    for (size_t i = 0; i < B.nrows; i++) {
        uint64_t prev = i ? B.rows[i - 1].stored : 0;
        uint64_t per_s = B.rows[i].stored - prev;
        if (per_s > r.peak_per_s && B.rows[i].stored >= prev)
            r.peak_per_s = per_s;
        if (B.rows[i].t * 1e9 <= (double)(B.t_load1 - B.t_load0) + 1e8)
            r.at_load_end = B.rows[i].stored;
    }
    if (B.t_drain1 && r.stored >= B.acked)
        r.drain_s = (double)(B.t_drain1 - B.t_load1) / 1e9;
    return r;
}

void bm__db_text(void)
{
    db_res_t r = results();
    double load_s = (double)(B.t_load1 - B.t_load0) / 1e9;

    printf("\ndb: dbreport (MariaDB and RabbitMQ raw limits, the store, the writer's drain), "
           "exit %d:\n%s",
           B.dbreport_rc,
           B.dbreport_out ? B.dbreport_out : "(not run)\n");
    printf("db: the writer under this load (rows of this run in `messages`, polled every %d ms)\n",
           POLL_MS);
    printf("  stored         %" PRIu64 " of %" PRIu64 " acked\n", r.stored, B.acked);
    printf("  drain rate     %.0f rows/s over the load, peak %" PRIu64 " rows/s in one second\n",
           load_s > 0 ? (double)r.at_load_end / load_s : 0.0, r.peak_per_s);
    printf("  lag at end     %" PRId64 " acked messages not yet in MySQL when sending stopped\n",
           (int64_t)B.win_acked - (int64_t)r.at_load_end);
    if (r.drain_s >= 0)
        printf("  drained        everything acked was stored %.2f s after sending stopped\n",
               r.drain_s);
    else
        printf("  drained        NOT everything acked was stored by the end of the drain\n");
}

/* True when v[0..len) is a JSON number without exponent (what dbreport prints
 * with %.Nf): -?(0|[1-9][0-9]*)(.[0-9]+)? */
static int is_json_number(const char *v, size_t len)
{
    size_t i = len > 0 && v[0] == '-' ? 1 : 0, start = i, frac;

    while (i < len && v[i] >= '0' && v[i] <= '9')
        i++;
    if (i == start || (v[start] == '0' && i - start > 1))
        return 0;
    if (i < len && v[i] == '.') {
        frac = ++i;
        while (i < len && v[i] >= '0' && v[i] <= '9')
            i++;
        if (i == frac)
            return 0;
    }
    return i == len;
}

static void jw_value(im_jw_t *w, const char *v, size_t len)
{
    if (is_json_number(v, len))
        im_jw_number(w, v, len);
    else
        im_jw_str(w, v, len);
}

/* dbreport's "dbreport-summary: k=v k=v ..." line as a JSON object (null when
 * dbreport did not print one).  drain_reason, when present, is the last key
 * and its value is the rest of the line. */
static void jw_dbreport_summary(im_jw_t *w)
{
    static const char tag[] = "\ndbreport-summary:";
    const char *line = B.dbreport_out ? strstr(B.dbreport_out, tag) : NULL, *p, *end;

    if (line == NULL) {
        im_jw_null(w);
        return;
    }
    line += sizeof(tag) - 1;
    end = strchr(line, '\n');
    if (end == NULL)
        end = line + strlen(line);
    im_jw_obj_begin(w);
    for (p = line; p < end;) {
        const char *key, *eq, *val, *stop;

        while (p < end && *p == ' ')
            p++;
        key = p;
        eq = memchr(p, '=', (size_t)(end - p));
        if (eq == NULL || eq == key)
            break;
        val = eq + 1;
        if (eq - key == 12 && strncmp(key, "drain_reason", 12) == 0)
            stop = end;
        else if ((stop = memchr(val, ' ', (size_t)(end - val))) == NULL)
            stop = end;
        im_jw_keyn(w, key, (size_t)(eq - key));
        jw_value(w, val, (size_t)(stop - val));
        p = stop;
    }
    im_jw_obj_end(w);
}

void bm__db_json(void *arg)
{
    im_jw_t *w = arg;
    db_res_t r = results();

    im_jw_key(w, "dbreport_exit");
    im_jw_int64(w, B.dbreport_rc);
    im_jw_key(w, "dbreport_output");
    im_jw_cstr(w, B.dbreport_out ? B.dbreport_out : "");
    im_jw_key(w, "dbreport");
    jw_dbreport_summary(w);
    im_jw_key(w, "stored");
    im_jw_uint64(w, r.stored);
    im_jw_key(w, "stored_at_load_end");
    im_jw_uint64(w, r.at_load_end);
    im_jw_key(w, "peak_stored_per_s");
    im_jw_uint64(w, r.peak_per_s);
    im_jw_key(w, "drain_s");
    if (r.drain_s >= 0) {
        char num[32];
        int k = snprintf(num, sizeof(num), "%.3f", r.drain_s);
        im_jw_number(w, num, (size_t)k);
    } else {
        im_jw_null(w);
    }
}
