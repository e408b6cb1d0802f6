#include "lg_writer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

/* The messages of the deliveries read since the last successful flush. */
typedef struct {
    Im__V1__ChatBatch **batches; /* unpacked delivery bodies, freed after the ack */
    size_t nbatches, batches_cap;
    Im__V1__ChatMessage **msgs; /* flat view over all batches' messages */
    size_t nmsgs, msgs_cap;
    uint64_t last_tag;     /* highest delivery tag held */
    uint64_t first_at_ms;  /* when the oldest message arrived (mono) */
} pending_t;

struct lg_writer_s {
    lg_writer_config_t cfg;
    char *host, *user, *password, *vhost, *name, *queue; /* owned copies of cfg strings */
    lg_writer_flush_fn flush;
    void *flush_arg;

    pthread_t thread;
    bool started;
    atomic_bool stopping;

    pthread_mutex_t stats_lock;
    lg_writer_stats_t stats;

    /* Writer-thread state. */
    im_amqp_conn_t *conn;
    pending_t pend;
    unsigned backoff_ms;
    uint64_t retry_at_ms; /* no flush attempt before this (after a failure) */
};

void lg_writer_config_default(lg_writer_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->batch_size = 1024;
    cfg->max_delay_ms = 20;
    cfg->prefetch = 2000;
    cfg->backoff_min_ms = 50;
    cfg->backoff_max_ms = 5000;
    cfg->stop_timeout_ms = 10000;
}

static char *dup_or_null(const char *s)
{
    return s ? im_strdup(s) : NULL;
}

lg_writer_t *lg_writer_new(const lg_writer_config_t *cfg, lg_writer_flush_fn flush, void *arg)
{
    lg_writer_t *w;

    if (cfg->queue == NULL || cfg->amqp.host == NULL || cfg->batch_size == 0 ||
        cfg->prefetch < cfg->batch_size || cfg->prefetch > UINT16_MAX || flush == NULL) {
        im_log_error("writer: invalid config (queue, host, batch_size > 0, "
                     "batch_size <= prefetch <= 65535, flush)");
        return NULL;
    }
    w = im_calloc(1, sizeof(*w));
    w->cfg = *cfg;
    w->host = dup_or_null(cfg->amqp.host);
    w->user = dup_or_null(cfg->amqp.user);
    w->password = dup_or_null(cfg->amqp.password);
    w->vhost = dup_or_null(cfg->amqp.vhost);
    w->name = im_strdup(cfg->amqp.name ? cfg->amqp.name : "writer");
    w->queue = im_strdup(cfg->queue);
    w->cfg.amqp.host = w->host;
    w->cfg.amqp.user = w->user;
    w->cfg.amqp.password = w->password;
    w->cfg.amqp.vhost = w->vhost;
    w->cfg.amqp.name = w->name;
    w->cfg.queue = w->queue;
    if (w->cfg.backoff_min_ms == 0)
        w->cfg.backoff_min_ms = 1;
    if (w->cfg.backoff_max_ms < w->cfg.backoff_min_ms)
        w->cfg.backoff_max_ms = w->cfg.backoff_min_ms;
    w->flush = flush;
    w->flush_arg = arg;
    atomic_init(&w->stopping, false);
    pthread_mutex_init(&w->stats_lock, NULL);
    return w;
}

#define STAT_ADD(w, field, n)                                                          \
    do {                                                                               \
        pthread_mutex_lock(&(w)->stats_lock);                                          \
        (w)->stats.field += (n);                                                       \
        pthread_mutex_unlock(&(w)->stats_lock);                                        \
    } while (0)

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ pending batch */

static void pending_release(pending_t *p)
{
    for (size_t i = 0; i < p->nbatches; i++)
        im__v1__chat_batch__free_unpacked(p->batches[i], NULL);
    p->nbatches = 0;
    p->nmsgs = 0;
    p->last_tag = 0;
}

static void pending_destroy(pending_t *p)
{
    pending_release(p);
    im_free(p->batches);
    im_free(p->msgs);
    memset(p, 0, sizeof(*p));
}

/* Takes ownership of b. */
static void pending_add(pending_t *p, Im__V1__ChatBatch *b, uint64_t tag)
{
    if (p->nmsgs == 0)
        p->first_at_ms = im_mono_ms();
    if (p->nbatches == p->batches_cap) {
        p->batches_cap = p->batches_cap ? p->batches_cap * 2 : 64;
        p->batches = im_realloc(p->batches, p->batches_cap * sizeof(*p->batches));
    }
    p->batches[p->nbatches++] = b;
    if (p->nmsgs + b->n_messages > p->msgs_cap) {
        while (p->nmsgs + b->n_messages > p->msgs_cap)
            p->msgs_cap = p->msgs_cap ? p->msgs_cap * 2 : 1024;
        p->msgs = im_realloc(p->msgs, p->msgs_cap * sizeof(*p->msgs));
    }
    memcpy(p->msgs + p->nmsgs, b->messages, b->n_messages * sizeof(*p->msgs));
    p->nmsgs += b->n_messages;
    p->last_tag = tag;
}

/* ------------------------------------------------------------ connection */

/* Connects, declares the queue and starts consuming.  On failure the caller
 * backs off and tries again. */
static im_err_t open_consumer(lg_writer_t *w)
{
    char err[256];
    im_amqp_queue_opts_t q = {.name = w->queue, .durable = true};
    im_err_t rc;

    if (w->conn == NULL) {
        w->conn = im_amqp_connect(&w->cfg.amqp, err, sizeof(err));
        if (w->conn == NULL) {
            im_log_warn("writer: connect to %s:%u failed: %s", w->host, w->cfg.amqp.port, err);
            return IM_EUNAVAIL;
        }
    } else if ((rc = im_amqp_reconnect(w->conn)) != IM_OK) {
        im_log_warn("writer: reconnect failed: %s", im_amqp_last_error(w->conn));
        return rc;
    }
    if ((rc = im_amqp_declare_queue(w->conn, &q, NULL, 0, NULL)) != IM_OK ||
        (rc = im_amqp_consume(w->conn, w->queue, (uint16_t)w->cfg.prefetch, false)) != IM_OK) {
        im_log_warn("writer: queue %s: %s", w->queue, im_amqp_last_error(w->conn));
        return rc;
    }
    im_log_info("writer: draining %s (batch %u, max delay %u ms, prefetch %u)", w->queue,
                w->cfg.batch_size, w->cfg.max_delay_ms, w->cfg.prefetch);
    return IM_OK;
}

static void backoff_wait(lg_writer_t *w)
{
    unsigned slept = 0;

    /* Sleep in slices so a stop request is seen quickly. */
    while (slept < w->backoff_ms && !atomic_load(&w->stopping)) {
        unsigned slice = w->backoff_ms - slept < 50 ? w->backoff_ms - slept : 50;
        sleep_ms(slice);
        slept += slice;
    }
    w->backoff_ms = w->backoff_ms * 2 > w->cfg.backoff_max_ms ? w->cfg.backoff_max_ms
                                                               : w->backoff_ms * 2;
}

/* Connects with backoff until it works or the writer is stopping. */
static bool ensure_consumer(lg_writer_t *w)
{
    bool first = w->conn == NULL;

    w->backoff_ms = w->cfg.backoff_min_ms;
    while (!atomic_load(&w->stopping)) {
        if (open_consumer(w) == IM_OK) {
            if (!first)
                STAT_ADD(w, reconnects, 1);
            pthread_mutex_lock(&w->stats_lock);
            w->stats.connected = 1;
            pthread_mutex_unlock(&w->stats_lock);
            w->backoff_ms = w->cfg.backoff_min_ms;
            return true;
        }
        backoff_wait(w);
    }
    return false;
}

/* ------------------------------------------------------------ the loop */

/* Writes what is pending and acks it.  Returns true when the pending set is
 * empty afterwards. */
static bool try_flush(lg_writer_t *w)
{
    size_t n = w->pend.nmsgs;
    im_err_t rc;

    if (w->pend.nbatches == 0)
        return true;
    rc = n ? w->flush(w->flush_arg, w->pend.msgs, n) : IM_OK;
    if (rc != IM_OK) {
        STAT_ADD(w, flush_errors, 1);
        im_log_warn("writer: flush of %zu messages failed (%s); retrying in %u ms, nothing acked",
                    n, im_strerror(rc), w->backoff_ms);
        w->retry_at_ms = im_mono_ms() + w->backoff_ms;
        w->backoff_ms = w->backoff_ms * 2 > w->cfg.backoff_max_ms ? w->cfg.backoff_max_ms
                                                                   : w->backoff_ms * 2;
        return false;
    }
    /* Committed: now, and only now, the broker may forget these deliveries.  If
     * the ack is lost with the connection they are redelivered and the
     * idempotent insert absorbs them. */
    if (im_amqp_ack(w->conn, w->pend.last_tag, true) != IM_OK)
        im_log_warn("writer: ack up to tag %llu failed: %s (will be redelivered)",
                    (unsigned long long)w->pend.last_tag, im_amqp_last_error(w->conn));
    pthread_mutex_lock(&w->stats_lock);
    w->stats.messages += n;
    w->stats.batches++;
    w->stats.last_batch = n;
    pthread_mutex_unlock(&w->stats_lock);
    pending_release(&w->pend);
    w->backoff_ms = w->cfg.backoff_min_ms;
    w->retry_at_ms = 0;
    return true;
}

static bool flush_due(const lg_writer_t *w, uint64_t now)
{
    if (w->pend.nbatches == 0 || now < w->retry_at_ms)
        return false;
    return w->pend.nmsgs >= w->cfg.batch_size ||
           now - w->pend.first_at_ms >= w->cfg.max_delay_ms;
}

/* How long the next read may wait: until the batch is due, or a short idle
 * poll so stop requests and heartbeats are handled. */
static int read_timeout(const lg_writer_t *w, uint64_t now)
{
    uint64_t due;

    if (w->pend.nbatches == 0)
        return 200;
    due = w->pend.first_at_ms + w->cfg.max_delay_ms;
    if (w->retry_at_ms > due)
        due = w->retry_at_ms;
    return due > now ? (int)(due - now) : 0;
}

static void handle_delivery(lg_writer_t *w, const im_amqp_delivery_t *d)
{
    Im__V1__ChatBatch *b = im__v1__chat_batch__unpack(NULL, d->len, d->body);

    STAT_ADD(w, deliveries, 1);
    if (b == NULL) {
        /* Cannot ever be stored: reject it alone (multiple = false) so the
         * batch's later `multiple` ack does not cover it. */
        STAT_ADD(w, poison, 1);
        im_log_error("writer: delivery %llu (%zu bytes) is not a ChatBatch; rejected",
                     (unsigned long long)d->delivery_tag, d->len);
        im_amqp_nack(w->conn, d->delivery_tag, false, false);
        return;
    }
    pending_add(&w->pend, b, d->delivery_tag);
}

static void *writer_main(void *arg)
{
    lg_writer_t *w = arg;
    im_amqp_delivery_t d;
    uint64_t stop_deadline = 0;

    if (!ensure_consumer(w))
        goto out;
    for (;;) {
        uint64_t now = im_mono_ms();
        im_err_t rc;

        if (atomic_load(&w->stopping)) {
            if (stop_deadline == 0)
                stop_deadline = now + w->cfg.stop_timeout_ms;
            if (w->pend.nbatches == 0 || now >= stop_deadline)
                break;
            if (now >= w->retry_at_ms)
                try_flush(w);
            else
                sleep_ms(10);
            continue;
        }
        if (flush_due(w, now)) {
            try_flush(w);
            continue;
        }
        /* Read even while a failed flush waits for its retry: deliveries keep
         * coming up to the prefetch and the connection stays alive. */
        rc = im_amqp_consumer_next(w->conn, read_timeout(w, now), &d);
        if (rc == IM_OK) {
            handle_delivery(w, &d);
        } else if (rc != IM_EAGAIN) {
            pthread_mutex_lock(&w->stats_lock);
            w->stats.connected = 0;
            pthread_mutex_unlock(&w->stats_lock);
            im_log_warn("writer: consumer lost (%s); %zu unacked messages will be redelivered",
                        im_amqp_last_error(w->conn), w->pend.nmsgs);
            pending_release(&w->pend);
            w->retry_at_ms = 0;
            if (!ensure_consumer(w))
                break;
        }
    }
out:
    if (w->pend.nbatches)
        im_log_warn("writer: stopping with %zu uncommitted messages; the broker redelivers them",
                    w->pend.nmsgs);
    pending_destroy(&w->pend);
    im_amqp_close(w->conn); /* unacked deliveries return to the queue */
    w->conn = NULL;
    return NULL;
}

im_err_t lg_writer_start(lg_writer_t *w)
{
    if (w->started)
        return IM_EINVAL;
    w->backoff_ms = w->cfg.backoff_min_ms;
    if (pthread_create(&w->thread, NULL, writer_main, w) != 0)
        return IM_EIO;
    w->started = true;
    return IM_OK;
}

void lg_writer_stop(lg_writer_t *w)
{
    if (!w->started)
        return;
    atomic_store(&w->stopping, true);
    pthread_join(w->thread, NULL);
    w->started = false;
}

void lg_writer_free(lg_writer_t *w)
{
    if (w == NULL)
        return;
    lg_writer_stop(w);
    pthread_mutex_destroy(&w->stats_lock);
    im_free(w->host);
    im_free(w->user);
    im_free(w->password);
    im_free(w->vhost);
    im_free(w->name);
    im_free(w->queue);
    im_free(w);
}

void lg_writer_stats(lg_writer_t *w, lg_writer_stats_t *out)
{
    pthread_mutex_lock(&w->stats_lock);
    *out = w->stats;
    pthread_mutex_unlock(&w->stats_lock);
}
