#include "gw_deliver.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "im_alloc.h"
#include "im_log.h"

#define POLL_MS 50
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define QUEUE_EXPIRES_MS 60000
#define NAME_MAX_LEN 96

/* A group's wanted refcount and whether the broker has the binding. */
typedef struct barrier_s {
    struct barrier_s *next;
    void (*done)(void *arg);
    void *arg;
} barrier_t;

typedef struct {
    uint64_t group; /* 0: free slot */
    uint32_t refs;
    bool bound;
    bool dirty; /* queued in `changed` */
} group_t;

struct gw_deliver_s {
    gw_deliver_config_t cfg;
    char *host, *user, *password, *vhost, *gateway_id;
    char queue[NAME_MAX_LEN], own_key[NAME_MAX_LEN];

    pthread_t thread;
    bool started;
    atomic_bool stopping, up;

    pthread_mutex_t lock; /* groups, changed, stats */
    group_t *groups;      /* open addressing, cap_groups slots */
    size_t cap_groups, n_groups;
    uint64_t *changed; /* groups whose refs crossed 0 since the thread looked */
    size_t n_changed, cap_changed;
    gw_deliver_stats_t stats;
    barrier_t *barriers; /* waiting for the bindings asked before them */

    /* Delivery-thread state. */
    im_amqp_conn_t *consume; /* consumes the queue */
    im_amqp_conn_t *control; /* declares and binds */
};

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static char *dup_or_null(const char *s)
{
    return s ? im_strdup(s) : NULL;
}

gw_deliver_t *gw_deliver_new(const gw_deliver_config_t *cfg)
{
    gw_deliver_t *d = im_calloc(1, sizeof(*d));

    d->cfg = *cfg;
    d->cfg.amqp.host = d->host = im_strdup(cfg->amqp.host);
    d->cfg.amqp.user = d->user = dup_or_null(cfg->amqp.user);
    d->cfg.amqp.password = d->password = dup_or_null(cfg->amqp.password);
    d->cfg.amqp.vhost = d->vhost = dup_or_null(cfg->amqp.vhost);
    d->cfg.gateway_id = d->gateway_id = im_strdup(cfg->gateway_id);
    snprintf(d->queue, sizeof(d->queue), "im.gw.%s", cfg->gateway_id);
    snprintf(d->own_key, sizeof(d->own_key), "gw.%s", cfg->gateway_id);
    d->cap_groups = 64;
    d->groups = im_calloc(d->cap_groups, sizeof(*d->groups));
    pthread_mutex_init(&d->lock, NULL);
    return d;
}

/* ------------------------------------------------------------ group table */

static size_t slot_of(uint64_t group, size_t cap)
{
    return (size_t)((group * 0x9E3779B97F4A7C15ull) >> 20) & (cap - 1);
}

static group_t *group_find(gw_deliver_t *d, uint64_t group, bool create);

static void groups_grow(gw_deliver_t *d)
{
    group_t *old = d->groups;
    size_t old_cap = d->cap_groups;

    d->cap_groups *= 2;
    d->groups = im_calloc(d->cap_groups, sizeof(*d->groups));
    d->n_groups = 0;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].group != 0)
            *group_find(d, old[i].group, true) = old[i];
    im_free(old);
}

/* Slots are never emptied (a group with refs 0 keeps its slot), so linear
 * probing needs no tombstones; the table only grows with distinct groups. */
static group_t *group_find(gw_deliver_t *d, uint64_t group, bool create)
{
    size_t i;

    if (create && (d->n_groups + 1) * 2 > d->cap_groups)
        groups_grow(d);
    for (i = slot_of(group, d->cap_groups);; i = (i + 1) & (d->cap_groups - 1)) {
        if (d->groups[i].group == group)
            return &d->groups[i];
        if (d->groups[i].group == 0)
            break;
    }
    if (!create)
        return NULL;
    d->groups[i].group = group;
    d->n_groups++;
    return &d->groups[i];
}

static void mark_changed(gw_deliver_t *d, group_t *g)
{
    if (g->dirty)
        return;
    g->dirty = true;
    if (d->n_changed == d->cap_changed) {
        d->cap_changed = d->cap_changed ? d->cap_changed * 2 : 64;
        d->changed = im_realloc(d->changed, d->cap_changed * sizeof(*d->changed));
    }
    d->changed[d->n_changed++] = g->group;
}

void gw_deliver_bind_group(gw_deliver_t *d, uint64_t group)
{
    group_t *g;

    if (group == 0)
        return;
    pthread_mutex_lock(&d->lock);
    g = group_find(d, group, true);
    if (g->refs++ == 0)
        mark_changed(d, g);
    pthread_mutex_unlock(&d->lock);
}

void gw_deliver_unbind_group(gw_deliver_t *d, uint64_t group)
{
    group_t *g;

    pthread_mutex_lock(&d->lock);
    g = group_find(d, group, false);
    if (g != NULL && g->refs > 0 && --g->refs == 0)
        mark_changed(d, g);
    pthread_mutex_unlock(&d->lock);
}

void gw_deliver_barrier(gw_deliver_t *d, void (*done)(void *arg), void *arg)
{
    barrier_t *b = im_malloc(sizeof(*b));

    b->done = done;
    b->arg = arg;
    pthread_mutex_lock(&d->lock);
    b->next = d->barriers;
    d->barriers = b;
    pthread_mutex_unlock(&d->lock);
}

/* Fires the barriers taken before a successful apply. */
static void fire_barriers(barrier_t *list)
{
    while (list != NULL) {
        barrier_t *next = list->next;
        list->done(list->arg);
        im_free(list);
        list = next;
    }
}

/* ------------------------------------------------------------ broker side */

static im_err_t bind_key(gw_deliver_t *d, uint64_t group, bool bind)
{
    char key[32];

    snprintf(key, sizeof(key), "g.%" PRIu64, group);
    return bind ? im_amqp_bind(d->control, d->queue, GW_DELIVER_EXCHANGE, key)
                : im_amqp_unbind(d->control, d->queue, GW_DELIVER_EXCHANGE, key);
}

/* Makes the broker's bindings match the refcounts of the changed groups (all
 * groups when `all`, after a reconnect).  Returns false when the control
 * connection failed (what was not applied stays queued). */
static bool apply_bindings(gw_deliver_t *d, bool all)
{
    barrier_t *taken;

    pthread_mutex_lock(&d->lock);
    taken = d->barriers; /* these wait for what was asked before them */
    d->barriers = NULL;
    if (all) {
        d->n_changed = 0;
        d->stats.groups = 0;
        for (size_t i = 0; i < d->cap_groups; i++) {
            d->groups[i].dirty = false;
            d->groups[i].bound = false; /* the queue is new */
            if (d->groups[i].group != 0 && d->groups[i].refs > 0)
                mark_changed(d, &d->groups[i]);
        }
    }
    while (d->n_changed > 0) {
        uint64_t id = d->changed[--d->n_changed];
        group_t *g = group_find(d, id, false);
        bool want = g->refs > 0;
        im_err_t rc;

        g->dirty = false;
        if (want == g->bound)
            continue;
        pthread_mutex_unlock(&d->lock); /* a broker round trip: not under the lock */
        rc = bind_key(d, id, want);
        pthread_mutex_lock(&d->lock);
        g = group_find(d, id, false); /* the table may have grown meanwhile */
        if (rc != IM_OK) {
            mark_changed(d, g); /* retried after the reconnect */
            while (taken != NULL) { /* and so are the barriers */
                barrier_t *next = taken->next;
                taken->next = d->barriers;
                d->barriers = taken;
                taken = next;
            }
            pthread_mutex_unlock(&d->lock);
            im_log_warn("deliver: %s g.%" PRIu64 ": %s", want ? "binding" : "unbinding", id,
                        im_strerror(rc));
            return false;
        }
        g->bound = want;
        if (want)
            d->stats.groups++;
        else
            d->stats.groups--;
        if ((g->refs > 0) != g->bound)
            mark_changed(d, g); /* changed again meanwhile */
    }
    pthread_mutex_unlock(&d->lock);
    fire_barriers(taken);
    return true;
}

/* conn connected: made on first use, reconnected when lost.  NULL or a
 * closed connection when the broker cannot be reached. */
static im_amqp_conn_t *open_conn(gw_deliver_t *d, im_amqp_conn_t *conn, const char *name,
                                 unsigned heartbeat_s)
{
    im_amqp_config_t cfg = d->cfg.amqp;
    char err[256];

    if (conn != NULL) {
        if (!im_amqp_is_open(conn))
            im_amqp_reconnect(conn);
        return conn;
    }
    cfg.name = name;
    cfg.heartbeat_s = heartbeat_s;
    conn = im_amqp_connect(&cfg, err, sizeof(err));
    if (conn == NULL)
        im_log_warn("deliver: connect to %s:%u failed: %s", d->host, d->cfg.amqp.port, err);
    return conn;
}

/* Both connections open, the queue declared and bound, consuming. */
static bool setup(gw_deliver_t *d)
{
    im_amqp_queue_opts_t q = {
        .name = d->queue, .auto_delete = true, .expires_ms = QUEUE_EXPIRES_MS};
    im_err_t rc;

    /* The control connection idles between bindings: no heartbeats on it
     * (TCP keepalive and the next failed call find a dead one). */
    d->control = open_conn(d, d->control, "gateway-control", 0);
    d->consume = open_conn(d, d->consume, "gateway-deliver", d->cfg.amqp.heartbeat_s);
    if (d->control == NULL || d->consume == NULL || !im_amqp_is_open(d->control) ||
        !im_amqp_is_open(d->consume))
        return false;
    if ((rc = im_amqp_declare_exchange(d->control, GW_DELIVER_EXCHANGE, "direct", true)) !=
            IM_OK ||
        (rc = im_amqp_declare_queue(d->control, &q, NULL, 0, NULL)) != IM_OK ||
        (rc = im_amqp_bind(d->control, d->queue, GW_DELIVER_EXCHANGE, d->own_key)) != IM_OK) {
        im_log_warn("deliver: declaring %s: %s", d->queue, im_strerror(rc));
        return false;
    }
    if (!apply_bindings(d, true))
        return false;
    /* no_ack: deliveries are transient copies; the durable one is in MySQL. */
    if ((rc = im_amqp_consume(d->consume, d->queue, 0, true)) != IM_OK) {
        im_log_warn("deliver: consuming %s: %s", d->queue, im_strerror(rc));
        return false;
    }
    return true;
}

static void set_up(gw_deliver_t *d, bool up)
{
    if (atomic_exchange(&d->up, up) == up)
        return;
    im_log_info("deliver: %s %s", d->queue, up ? "consuming" : "lost: reconnecting");
    if (d->cfg.on_state != NULL)
        d->cfg.on_state(d->cfg.arg, up);
}

static void handle(gw_deliver_t *d, const im_amqp_delivery_t *in)
{
    Im__V1__Delivery *msg = im__v1__delivery__unpack(NULL, in->len, in->body);

    pthread_mutex_lock(&d->lock);
    if (msg == NULL)
        d->stats.bad++;
    else
        d->stats.received++;
    pthread_mutex_unlock(&d->lock);
    if (msg == NULL) {
        im_log_warn("deliver: a %zu-byte body under %s is not a Delivery: dropped", in->len,
                    in->routing_key);
        return;
    }
    d->cfg.on_delivery(d->cfg.arg, msg);
}

/* Consumes until the connection fails or the gateway stops. */
static void consume_loop(gw_deliver_t *d)
{
    while (!atomic_load(&d->stopping)) {
        im_amqp_delivery_t in;
        im_err_t rc = im_amqp_consumer_next(d->consume, POLL_MS, &in);

        if (rc == IM_OK)
            handle(d, &in);
        else if (rc != IM_EAGAIN)
            return;
        if (!apply_bindings(d, false))
            return;
    }
}

static void *deliver_main(void *arg)
{
    gw_deliver_t *d = arg;
    unsigned backoff = BACKOFF_MIN_MS;

    while (!atomic_load(&d->stopping)) {
        if (!setup(d)) {
            set_up(d, false);
            for (unsigned slept = 0; slept < backoff && !atomic_load(&d->stopping); slept += 50)
                sleep_ms(50);
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
        } else {
            backoff = BACKOFF_MIN_MS;
            set_up(d, true);
            consume_loop(d);
            if (atomic_load(&d->stopping))
                break;
            set_up(d, false);
        }
        /* Start the consumer afresh: its queue goes with it and is declared
         * and bound again, whatever state the failure left it in. */
        if (d->consume != NULL && im_amqp_is_open(d->consume))
            im_amqp_reconnect(d->consume);
        pthread_mutex_lock(&d->lock);
        d->stats.reconnects++;
        pthread_mutex_unlock(&d->lock);
    }
    return NULL;
}

im_err_t gw_deliver_start(gw_deliver_t *d)
{
    if (d->started)
        return IM_EINVAL;
    if (pthread_create(&d->thread, NULL, deliver_main, d) != 0)
        return IM_ENOMEM;
    d->started = true;
    return IM_OK;
}

bool gw_deliver_is_up(gw_deliver_t *d)
{
    return atomic_load(&d->up);
}

void gw_deliver_stats(gw_deliver_t *d, gw_deliver_stats_t *out)
{
    pthread_mutex_lock(&d->lock);
    *out = d->stats;
    pthread_mutex_unlock(&d->lock);
}

void gw_deliver_stop(gw_deliver_t *d)
{
    if (!d->started)
        return;
    atomic_store(&d->stopping, true);
    pthread_join(d->thread, NULL);
    d->started = false;
    atomic_store(&d->up, false);
    im_amqp_close(d->consume);
    im_amqp_close(d->control);
    d->consume = d->control = NULL;
}

void gw_deliver_free(gw_deliver_t *d)
{
    if (d == NULL)
        return;
    gw_deliver_stop(d);
    pthread_mutex_destroy(&d->lock);
    fire_barriers(d->barriers); /* their owners are waiting to free them */
    im_free(d->groups);
    im_free(d->changed);
    im_free(d->host);
    im_free(d->user);
    im_free(d->password);
    im_free(d->vhost);
    im_free(d->gateway_id);
    im_free(d);
}
