/*
 * gw_testd - the gateway library with test hooks, run as a process by
 * 06-hooks.py.  It exercises every hook the service wiring will use, the way
 * that wiring will: work handed to another thread and answered through
 * gw_post, one encoded buffer queued to many sessions, async HTTP answers.
 *
 * Same flags and log line as the real binary (gw_config_spec).  Frames:
 *   {"type":"echo","data":S}     worker thread -> gw_post -> {"type":"echo","data":S}
 *   {"type":"flood","n":N}       one buffer queued N times: {"type":"flood"}
 *   {"type":"fanout","data":S}   to every session of the user: {"type":"fanout","data":S,"count":K}
 *   {"type":"kick"}              gw_session_close(4000, "kicked")
 *   {"type":"fail"}              the hook fails: error "internal"
 * HTTP:
 *   /api/echo                    worker thread -> gw_post -> 200 {method,path,query,body,bearer}
 *   /api/health/down|up          flips what on_health reports (204)
 *   anything else under /api/    404 through gw_http_respond_error
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"
#include "im_alloc.h"
#include "im_log.h"

typedef struct job_s {
    struct job_s *next;
    gw_t *gw;
    uint64_t session_id; /* echo frame */
    gw_http_req_t *req;  /* or an HTTP request */
    char *data;
} job_t;

/* The worker: a plain mutex/condvar list, standing in for a gRPC thread. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    job_t *head, **tail;
    int stop;
} worker = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, &worker.head, 0};

static volatile sig_atomic_t stop_requested;
static gw_t *volatile running;
static int unhealthy;
static unsigned long opens, closes;
static int last_close_code;

static void on_signal(int sig)
{
    gw_t *gw = running;

    (void)sig;
    stop_requested = 1;
    if (gw != NULL)
        gw_request_stop(gw);
}

/* ---- replies, built on the loop thread ---- */

static im_buf_t *encode(gw_t *gw, const char *type, const char *data, int count)
{
    size_t len, dlen = data ? strlen(data) : 0;
    im_buf_t *b = im_buf_alloc(gw_pool(gw), 64 + 6 * dlen);
    im_jw_t w;

    if (b == NULL)
        return NULL;
    im_jw_init(&w, im_buf_data(b), im_buf_cap(b), 0);
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, type);
    if (data != NULL) {
        im_jw_key(&w, "data");
        im_jw_str(&w, data, dlen);
    }
    if (count >= 0) {
        im_jw_key(&w, "count");
        im_jw_int64(&w, count);
    }
    im_jw_obj_end(&w);
    if (im_jw_finish(&w, &len) != IM_OK) {
        im_buf_unref(b);
        return NULL;
    }
    im_buf_set_len(b, len);
    return b;
}

/* Runs on the loop thread, posted by the worker. */
static void job_done(gw_t *gw, void *arg)
{
    job_t *job = arg;

    if (job->req != NULL) {
        gw_http_respond(gw, job->req, 200, NULL, job->data, strlen(job->data));
    } else {
        im_buf_t *b = encode(gw, "echo", job->data, -1);

        /* IM_ENOENT when the client left meanwhile: nothing to do. */
        if (b != NULL)
            gw_session_send(gw, job->session_id, b);
        im_buf_unref(b);
    }
    im_free(job->data);
    im_free(job);
}

static void *worker_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&worker.lock);
    for (;;) {
        job_t *job;

        while (worker.head == NULL && !worker.stop)
            pthread_cond_wait(&worker.cond, &worker.lock);
        if (worker.head == NULL)
            break;
        job = worker.head;
        worker.head = job->next;
        if (worker.head == NULL)
            worker.tail = &worker.head;
        pthread_mutex_unlock(&worker.lock);
        gw_post(job->gw, job_done, job);
        pthread_mutex_lock(&worker.lock);
    }
    pthread_mutex_unlock(&worker.lock);
    return NULL;
}

static void submit(job_t *job)
{
    pthread_mutex_lock(&worker.lock);
    job->next = NULL;
    *worker.tail = job;
    worker.tail = &job->next;
    pthread_cond_signal(&worker.cond);
    pthread_mutex_unlock(&worker.lock);
}

/* ---- hooks ---- */

/* What the hooks keep per session, in the session's own data area. */
typedef struct {
    uint64_t id;     /* the session it belongs to */
    uint64_t frames; /* frames the hook saw on it */
} sess_data_t;

static unsigned long bad_data; /* data missing, not zeroed, or another session's */

static void on_open(gw_t *gw, const gw_session_info_t *s, void *arg)
{
    sess_data_t *d = s->data;

    (void)gw, (void)arg;
    opens++;
    if (d == NULL || d->id != 0 || d->frames != 0 || gw_session_data(gw, s->id) != d)
        bad_data++;
    else
        d->id = s->id;
}

static void on_close(gw_t *gw, const gw_session_info_t *s, int code, void *arg)
{
    sess_data_t *d = s->data;

    (void)gw, (void)arg;
    if (d == NULL || d->id != s->id || gw_session_data(gw, s->id) != NULL)
        bad_data++;
    closes++;
    last_close_code = code;
    im_log_info("testd: closed session=%016llx user=%llu code=%d", (unsigned long long)s->id,
                (unsigned long long)s->user_id, code);
}

static char *str_member(const gw_frame_t *f, const char *key)
{
    char buf[4096];
    int t = im_json_find(f->doc, 0, key);

    if (im_json_str(f->doc, t, buf, sizeof buf, NULL) != IM_OK)
        return NULL;
    return im_strdup(buf);
}

static im_err_t flood(gw_t *gw, const gw_frame_t *f)
{
    int64_t n = 0;
    im_buf_t *b;

    im_json_int64(f->doc, im_json_find(f->doc, 0, "n"), &n);
    if ((b = encode(gw, "flood", NULL, -1)) == NULL)
        return IM_EFULL;
    /* One buffer, n references: the slow-consumer limit applies. */
    for (int64_t i = 0; i < n && gw_session_send(gw, f->session_id, b) == IM_OK; i++)
        ;
    im_buf_unref(b);
    return IM_OK;
}

static im_err_t fanout(gw_t *gw, const gw_frame_t *f)
{
    char *data = str_member(f, "data");
    uint64_t ids[16];
    size_t count = gw_user_sessions(gw, f->user_id, ids, 16);
    im_buf_t *b = encode(gw, "fanout", data ? data : "", (int)count);

    im_free(data);
    if (b == NULL)
        return IM_EFULL;
    gw_user_send(gw, f->user_id, b);
    im_buf_unref(b);
    return IM_OK;
}

static im_err_t on_frame(gw_t *gw, const gw_frame_t *f, void *arg)
{
    sess_data_t *d = gw_session_data(gw, f->session_id);

    (void)arg;
    if (d == NULL || d->id != f->session_id)
        bad_data++;
    else
        d->frames++;
    if (strcmp(f->type, "frames") == 0) {
        im_buf_t *b = encode(gw, "frames", NULL, d ? (int)d->frames : -1);

        if (b == NULL)
            return IM_EFULL;
        gw_session_send(gw, f->session_id, b);
        im_buf_unref(b);
        return IM_OK;
    }
    if (strcmp(f->type, "echo") == 0) {
        job_t *job = im_calloc(1, sizeof(*job));

        job->gw = gw;
        job->session_id = f->session_id;
        job->data = str_member(f, "data");
        if (job->data == NULL)
            job->data = im_strdup("");
        submit(job);
        return IM_OK;
    }
    if (strcmp(f->type, "flood") == 0)
        return flood(gw, f);
    if (strcmp(f->type, "fanout") == 0)
        return fanout(gw, f);
    if (strcmp(f->type, "kick") == 0)
        return gw_session_close(gw, f->session_id, 4000, "kicked");
    if (strcmp(f->type, "fail") == 0)
        return IM_EIO;
    return IM_ENOENT;
}

static void http_echo(gw_t *gw, gw_http_req_t *req)
{
    job_t *job = im_calloc(1, sizeof(*job));
    const char *bearer = gw_http_bearer(req);
    size_t blen, len = 0;
    const char *body = gw_http_body(req, &blen);
    char out[8192];
    im_jw_t w;

    im_jw_init(&w, out, sizeof out - 1, 0);
    im_jw_obj_begin(&w);
    im_jw_key(&w, "method");
    im_jw_cstr(&w, gw_http_method(req));
    im_jw_key(&w, "path");
    im_jw_cstr(&w, gw_http_path(req));
    im_jw_key(&w, "query");
    im_jw_cstr(&w, gw_http_query(req));
    im_jw_key(&w, "body");
    im_jw_str(&w, body, blen);
    im_jw_key(&w, "bearer");
    if (bearer)
        im_jw_cstr(&w, bearer);
    else
        im_jw_null(&w);
    im_jw_obj_end(&w);
    if (im_jw_finish(&w, &len) != IM_OK)
        len = (size_t)snprintf(out, sizeof out, "{}");
    out[len] = '\0';
    job->gw = gw;
    job->req = req;
    job->data = im_strdup(out);
    submit(job); /* answered later, from the worker through gw_post */
}

static void on_http(gw_t *gw, gw_http_req_t *req, void *arg)
{
    const char *path = gw_http_path(req);

    (void)arg;
    if (strcmp(path, "/api/echo") == 0) {
        http_echo(gw, req);
    } else if (strcmp(path, "/api/health/down") == 0 || strcmp(path, "/api/health/up") == 0) {
        unhealthy = strcmp(path, "/api/health/down") == 0;
        gw_http_respond(gw, req, 204, NULL, "", 0);
    } else {
        gw_http_respond_error(gw, req, 404, "not_found", "testd: no such endpoint");
    }
}

static int on_health(gw_t *gw, im_jw_t *w, void *arg)
{
    (void)gw, (void)arg;
    im_jw_key(w, "upstream");
    im_jw_cstr(w, unhealthy ? "down" : "ok");
    return unhealthy;
}

static void on_metrics(gw_t *gw, gw_sb_t *out, void *arg)
{
    (void)gw, (void)arg;
    gw_sb_printf(out, "# TYPE gw_testd_opens_total counter\ngw_testd_opens_total %lu\n", opens);
    gw_sb_printf(out, "# TYPE gw_testd_closes_total counter\ngw_testd_closes_total %lu\n", closes);
    gw_sb_printf(out, "# TYPE gw_testd_bad_session_data_total counter\n"
                      "gw_testd_bad_session_data_total %lu\n",
                 bad_data);
    gw_sb_printf(out, "# TYPE gw_testd_last_close_code gauge\ngw_testd_last_close_code %d\n",
                 last_close_code);
}

int main(int argc, char **argv)
{
    gw_hooks_t hooks = {.on_open = on_open,
                        .on_close = on_close,
                        .on_frame = on_frame,
                        .on_http = on_http,
                        .on_health = on_health,
                        .on_metrics = on_metrics,
                        .session_data_size = sizeof(sess_data_t)};
    struct sigaction sa;
    gw_config_t cfg;
    pthread_t th;
    char err[256];
    gw_t *gw;

    if (im_cfg_parse(&gw_config_spec, &cfg, argc, argv, NULL, err, sizeof err) != IM_OK) {
        fprintf(stderr, "gw_testd: %s\n", err);
        return 2;
    }
    im_log_set_ident("gw_testd");
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if ((gw = gw_new(&cfg, &hooks, NULL, err, sizeof err)) == NULL) {
        im_log_error("gw_testd: %s", err);
        return 1;
    }
    running = gw;
    if (stop_requested)
        gw_request_stop(gw);
    pthread_create(&th, NULL, worker_main, NULL);
    im_log_info("gateway: listening on 127.0.0.1:%d", gw_port(gw));
    gw_run(gw);
    running = NULL;
    pthread_mutex_lock(&worker.lock);
    worker.stop = 1;
    pthread_cond_signal(&worker.cond);
    pthread_mutex_unlock(&worker.lock);
    pthread_join(th, NULL);
    gw_free(gw); /* runs the closures the worker posted last */
    im_log_info("gw_testd: stopped");
    return 0;
}
