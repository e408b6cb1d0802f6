#include "lg_publisher.h"

#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

#define IDLE_WAIT_MS    200 /* idle: wake this often to service heartbeats */
#define CONFIRM_WAIT_MS 100 /* confirms due: wake at least this often (deadlines) */
#define BACKOFF_MIN_MS  50
#define BACKOFF_MAX_MS  2000

typedef struct req_s {
    struct req_s *next;
    char *exchange, *routing_key;
    void *body;
    size_t len;
    bool persistent;
    uint64_t deadline_ms; /* mono; must be published by then */
    lg_publish_done_cb done;
    void *arg;
    bool settled;    /* the broker answered: result, reported in publish order */
    im_err_t result;
} req_t;

typedef struct {
    req_t *head, *tail;
} req_list_t;

struct lg_publisher_s {
    im_amqp_config_t cfg;
    char *host, *user, *password, *vhost, *name;
    char *durable_queue, *direct_exchange; /* declared on each connect; may be NULL */
    unsigned window;

    pthread_t thread;
    bool started;

    pthread_mutex_t lock; /* guards submitted, stopping, stats */
    int wake_fd;          /* eventfd: a submit into an empty list, or stop */
    req_list_t submitted;
    bool stopping;
    uint64_t grace_deadline_ms;
    lg_publisher_stats_t stats;

    /* Publisher-thread state. */
    im_amqp_conn_t *conn;
    im_amqp_publisher_t *pub;
    req_list_t ready;   /* taken from `submitted`, not yet published */
    req_t **inflight;   /* [window], by seqno % window: published, unconfirmed */
    req_list_t flying;  /* published and not reported yet, in publish order */
    unsigned ninflight; /* in `flying` */
};

static void list_push(req_list_t *l, req_t *r)
{
    r->next = NULL;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
}

/* Appends all of src to dst and empties src. */
static void list_splice(req_list_t *dst, req_list_t *src)
{
    if (src->head == NULL)
        return;
    if (dst->tail)
        dst->tail->next = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    src->head = src->tail = NULL;
}

static req_t *list_pop(req_list_t *l)
{
    req_t *r = l->head;
    if (r) {
        l->head = r->next;
        if (l->head == NULL)
            l->tail = NULL;
    }
    return r;
}

static void req_free(req_t *r)
{
    im_free(r->exchange);
    im_free(r->routing_key);
    im_free(r->body);
    im_free(r);
}

/* Reports r's outcome, exactly once, and frees it. */
static void finish(lg_publisher_t *p, req_t *r, im_err_t result)
{
    pthread_mutex_lock(&p->lock);
    if (result == IM_OK)
        p->stats.confirmed++;
    else
        p->stats.failed++;
    pthread_mutex_unlock(&p->lock);
    r->done(r->arg, result);
    req_free(r);
}

static char *dup_or_null(const char *s)
{
    return s ? im_strdup(s) : NULL;
}

lg_publisher_t *lg_publisher_new(const im_amqp_config_t *amqp, unsigned window)
{
    lg_publisher_t *p;

    if (amqp->host == NULL || window == 0) {
        im_log_error("publisher: invalid config (host, window >= 1)");
        return NULL;
    }
    p = im_calloc(1, sizeof(*p));
    p->cfg = *amqp;
    p->cfg.host = p->host = im_strdup(amqp->host);
    p->cfg.user = p->user = dup_or_null(amqp->user);
    p->cfg.password = p->password = dup_or_null(amqp->password);
    p->cfg.vhost = p->vhost = dup_or_null(amqp->vhost);
    p->cfg.name = p->name = im_strdup(amqp->name ? amqp->name : "publisher");
    p->window = window;
    p->inflight = im_calloc(window, sizeof(*p->inflight));
    pthread_mutex_init(&p->lock, NULL);
    p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->wake_fd < 0) {
        im_log_error("publisher: eventfd failed");
        lg_publisher_free(p);
        return NULL;
    }
    return p;
}

static void wake_up(lg_publisher_t *p)
{
    uint64_t one = 1;

    if (write(p->wake_fd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is saturated, so a wakeup is pending anyway. */
    }
}

/* Sleeps until the broker sends something (confirms, heartbeats), a submit
 * wakes it (unless listen_wake is false: the window is full and new work
 * could not be published anyway) or timeout_ms pass. */
static void wait_for_work(lg_publisher_t *p, bool listen_wake, int timeout_ms)
{
    struct pollfd fds[2] = {{.fd = im_amqp_fd(p->conn), .events = POLLIN},
                            {.fd = p->wake_fd, .events = POLLIN}};
    uint64_t n;

    if (im_amqp_publisher_buffered(p->pub))
        return;
    if (poll(fds, listen_wake ? 2 : 1, timeout_ms) > 0 && (fds[1].revents & POLLIN)) {
        if (read(p->wake_fd, &n, sizeof(n)) < 0) {
            /* EAGAIN: another read took it */
        }
    }
}

im_err_t lg_publisher_submit(lg_publisher_t *p, const char *exchange, const char *routing_key,
                             const void *body, size_t len, bool persistent, unsigned timeout_ms,
                             lg_publish_done_cb done, void *arg)
{
    req_t *r = im_calloc(1, sizeof(*r));
    bool wake;

    r->exchange = im_strdup(exchange);
    r->routing_key = im_strdup(routing_key);
    r->body = im_malloc(len);
    memcpy(r->body, body, len);
    r->len = len;
    r->persistent = persistent;
    r->deadline_ms = im_mono_ms() + timeout_ms;
    r->done = done;
    r->arg = arg;

    pthread_mutex_lock(&p->lock);
    if (p->stopping || !p->started) {
        pthread_mutex_unlock(&p->lock);
        finish(p, r, IM_ECLOSED);
        return IM_ECLOSED;
    }
    p->stats.submitted++;
    wake = p->submitted.head == NULL;
    list_push(&p->submitted, r);
    pthread_mutex_unlock(&p->lock);
    /* The thread empties the list before it sleeps: only the first submit
     * into an empty list needs to wake it. */
    if (wake)
        wake_up(p);
    return IM_OK;
}

/* The adapter's per-seqno outcome.  The broker may answer out of order (a
 * large persistent message goes to its message store, a small one into the
 * queue index, and they reach disk at different times): submitters hear in
 * publish order, so one whose callback publishes follow-ups (Send's
 * deliveries) sends them in the order it published. */
static void on_confirm(uint64_t seqno, im_err_t result, void *arg)
{
    lg_publisher_t *p = arg;
    req_t **slot = &p->inflight[seqno % p->window];
    req_t *r = *slot;

    if (r == NULL)
        return; /* reported already (cannot happen: the adapter reports once) */
    *slot = NULL;
    r->settled = true;
    r->result = result;
    while ((r = p->flying.head) != NULL && r->settled) {
        list_pop(&p->flying);
        p->ninflight--;
        finish(p, r, r->result);
    }
}
static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool is_stopping(lg_publisher_t *p)
{
    bool s;
    pthread_mutex_lock(&p->lock);
    s = p->stopping;
    pthread_mutex_unlock(&p->lock);
    return s;
}

/* Fails queued requests whose deadline passed while they could not be sent. */
static void expire_ready(lg_publisher_t *p, uint64_t now)
{
    req_list_t keep = {0};
    req_t *r;

    while ((r = list_pop(&p->ready)) != NULL) {
        if (r->deadline_ms <= now)
            finish(p, r, IM_ETIMEDOUT);
        else
            list_push(&keep, r);
    }
    p->ready = keep;
}

void lg_publisher_declare(lg_publisher_t *p, const char *durable_queue,
                          const char *direct_exchange)
{
    im_free(p->durable_queue);
    im_free(p->direct_exchange);
    p->durable_queue = durable_queue ? im_strdup(durable_queue) : NULL;
    p->direct_exchange = direct_exchange ? im_strdup(direct_exchange) : NULL;
}

/* What must exist before anything is published: a message published to a
 * missing queue through the default exchange is confirmed and dropped. */
static im_err_t declare(lg_publisher_t *p)
{
    im_amqp_queue_opts_t q = {.name = p->durable_queue, .durable = true};
    im_err_t rc = IM_OK;

    if (p->durable_queue != NULL)
        rc = im_amqp_declare_queue(p->conn, &q, NULL, 0, NULL);
    if (rc == IM_OK && p->direct_exchange != NULL)
        rc = im_amqp_declare_exchange(p->conn, p->direct_exchange, "direct", true);
    if (rc != IM_OK)
        im_log_warn("publisher: declaring: %s (%s)", im_strerror(rc),
                    im_amqp_last_error(p->conn));
    return rc;
}

/* Connects (or reconnects) until it works, the publisher stops, or -- while
 * requests wait -- their deadlines pass (they are failed meanwhile). */
static bool ensure_connected(lg_publisher_t *p)
{
    unsigned backoff = BACKOFF_MIN_MS;
    char err[256];

    if (p->conn != NULL && im_amqp_is_open(p->conn))
        return true;
    for (;;) {
        if (p->conn == NULL) {
            p->conn = im_amqp_connect(&p->cfg, err, sizeof(err));
            if (p->conn)
                p->pub = im_amqp_publisher_new(p->conn, p->window, on_confirm, p);
            else
                im_log_warn("publisher: connect failed: %s", err);
        } else if (im_amqp_reconnect(p->conn) == IM_OK) { /* also after a failed declare */
            pthread_mutex_lock(&p->lock);
            p->stats.reconnects++;
            pthread_mutex_unlock(&p->lock);
        }
        if (p->conn && im_amqp_is_open(p->conn) && declare(p) == IM_OK) {
            pthread_mutex_lock(&p->lock);
            p->stats.connected = 1;
            pthread_mutex_unlock(&p->lock);
            break;
        }
        pthread_mutex_lock(&p->lock);
        p->stats.connected = 0;
        pthread_mutex_unlock(&p->lock);
        pthread_mutex_lock(&p->lock);
        list_splice(&p->ready, &p->submitted);
        pthread_mutex_unlock(&p->lock);
        expire_ready(p, im_mono_ms());
        if (is_stopping(p))
            return false;
        sleep_ms(backoff);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    return true;
}

/* Publishes from `ready` until the window is full.  Returns false when the
 * connection was lost (outstanding ones were reported failed by the adapter;
 * the unsent ones stay queued). */
static bool publish_ready(lg_publisher_t *p)
{
    req_t *r;

    while ((r = p->ready.head) != NULL) {
        uint64_t seqno;
        im_err_t rc = im_amqp_publish(p->pub, r->exchange, r->routing_key, r->body, r->len,
                                      r->persistent, &seqno);
        if (rc == IM_EAGAIN)
            return true; /* window full: confirms first */
        if (rc == IM_ECLOSED || rc == IM_EIO)
            return false;
        list_pop(&p->ready);
        if (rc != IM_OK) {
            finish(p, r, rc);
            continue;
        }
        p->inflight[seqno % p->window] = r;
        list_push(&p->flying, r);
        p->ninflight++;
    }
    return true;
}

/* Fails everything still held: at stop, after the grace period. */
static void fail_all_held(lg_publisher_t *p)
{
    req_t *r;

    pthread_mutex_lock(&p->lock);
    list_splice(&p->ready, &p->submitted);
    pthread_mutex_unlock(&p->lock);
    while ((r = list_pop(&p->ready)) != NULL)
        finish(p, r, IM_ECLOSED);
    for (unsigned i = 0; i < p->window; i++)
        p->inflight[i] = NULL;
    while ((r = list_pop(&p->flying)) != NULL)
        finish(p, r, r->settled ? r->result : IM_ECLOSED);
    p->ninflight = 0;
}

static void *publisher_main(void *arg)
{
    lg_publisher_t *p = arg;

    for (;;) {
        bool stopping, window_full;
        uint64_t now = im_mono_ms(), grace_deadline;

        if (!ensure_connected(p))
            break;
        pthread_mutex_lock(&p->lock);
        list_splice(&p->ready, &p->submitted);
        stopping = p->stopping;
        grace_deadline = p->grace_deadline_ms;
        pthread_mutex_unlock(&p->lock);
        if (stopping && ((p->ready.head == NULL && p->ninflight == 0) || now >= grace_deadline))
            break;

        expire_ready(p, now);
        if (!publish_ready(p))
            continue; /* lost: reconnect at the top */
        /* Nothing more can go out now (none ready, or the window is full):
         * sleep on the socket and the wakeup fd, not in a polling loop. */
        window_full = p->ready.head != NULL;
        wait_for_work(p, !window_full, p->ninflight ? CONFIRM_WAIT_MS : IDLE_WAIT_MS);
        if (im_amqp_publisher_poll(p->pub, 0) == IM_ECLOSED)
            continue;
    }
    fail_all_held(p);
    im_amqp_publisher_free(p->pub);
    im_amqp_close(p->conn);
    p->pub = NULL;
    p->conn = NULL;
    return NULL;
}

im_err_t lg_publisher_start(lg_publisher_t *p)
{
    pthread_mutex_lock(&p->lock);
    if (p->started) {
        pthread_mutex_unlock(&p->lock);
        return IM_EINVAL;
    }
    p->started = true;
    pthread_mutex_unlock(&p->lock);
    if (pthread_create(&p->thread, NULL, publisher_main, p) != 0) {
        pthread_mutex_lock(&p->lock);
        p->started = false;
        pthread_mutex_unlock(&p->lock);
        return IM_EIO;
    }
    return IM_OK;
}

void lg_publisher_stop(lg_publisher_t *p, unsigned grace_ms)
{
    pthread_mutex_lock(&p->lock);
    if (!p->started || p->stopping) {
        pthread_mutex_unlock(&p->lock);
        return;
    }
    p->stopping = true;
    p->grace_deadline_ms = im_mono_ms() + grace_ms;
    pthread_mutex_unlock(&p->lock);
    wake_up(p);
    pthread_join(p->thread, NULL);
}

void lg_publisher_free(lg_publisher_t *p)
{
    if (p == NULL)
        return;
    lg_publisher_stop(p, 0);
    pthread_mutex_destroy(&p->lock);
    if (p->wake_fd >= 0)
        close(p->wake_fd);
    im_free(p->inflight);
    im_free(p->host);
    im_free(p->user);
    im_free(p->password);
    im_free(p->vhost);
    im_free(p->name);
    im_free(p->durable_queue);
    im_free(p->direct_exchange);
    im_free(p);
}

void lg_publisher_stats(lg_publisher_t *p, lg_publisher_stats_t *out)
{
    pthread_mutex_lock(&p->lock);
    *out = p->stats;
    pthread_mutex_unlock(&p->lock);
}
