#include "lg_service.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "im_alloc.h"
#include "im_httpd.h"
#include "im_id.h"
#include "im_log.h"
#include "im_mysql.h"
#include "im_sodium.h"
#include "lg_message.h"
#include "lg_publisher.h"
#include "lg_rpc.h"
#include "lg_store.h"

/* Shortest --jwt-secret accepted: HS256 keys shorter than the hash are weak. */
#define SECRET_MIN 32
#define LG_WRITER_KNOWN_CONVS 65536 /* user_convs rows the writer remembers (1 MiB) */

/* The writer's database side, used only on the writer thread: connected
 * lazily, so a database that is down at start-up is just a failed flush that
 * is retried. */
typedef struct {
    im_mysql_config_t cfg;
    im_mysql_t *db;
    lg_store_t *store;
} writer_db_t;

struct lg_service_s {
    const lg_config_t *cfg;
    writer_db_t wdb;
    lg_writer_t *writer;
    uint8_t dev_secret[SECRET_MIN];
    im_idgen_t ids;
    lg_publisher_t *publisher;
    lg_rpc_t *rpc;
    im_httpd_t *httpd;
    bool stopped;
};

static im_err_t writer_flush(void *arg, Im__V1__ChatMessage *const *msgs, size_t n)
{
    writer_db_t *w = arg;
    lg_store_result_t res;
    char err[256];
    im_err_t rc;

    if (w->db == NULL) {
        lg_store_config_t scfg = {.known_convs = LG_WRITER_KNOWN_CONVS};

        w->db = im_mysql_connect(&w->cfg, err, sizeof(err));
        if (w->db == NULL) {
            im_log_warn("writer: mysql connect failed: %s", err);
            return IM_EUNAVAIL;
        }
        w->store = lg_store_new(w->db, &scfg);
    }
    rc = lg_store_insert_batch(w->store, (const Im__V1__ChatMessage *const *)msgs, n, &res);
    if (rc == IM_OK && res.conflicts)
        im_log_error("writer: %zu of %zu messages conflict with stored ones and were not stored",
                     res.conflicts, n);
    return rc;
}

/* Checks the token secret, or makes a random one with --dev.  Returns false
 * with a log line when the service must not start. */
static bool secret_setup(lg_service_t *s, const uint8_t **secret, size_t *len)
{
    const char *given = s->cfg->jwt_secret;

    if (given != NULL && *given != '\0') {
        if (strlen(given) < SECRET_MIN) {
            im_log_error("logic: --jwt-secret must be at least %d bytes", SECRET_MIN);
            return false;
        }
        *secret = (const uint8_t *)given;
        *len = strlen(given);
        return true;
    }
    if (!s->cfg->dev) {
        im_log_error("logic: no token secret: set --jwt-secret or IM_JWT_SECRET (at least %d "
                     "bytes, the same on every logic and gateway), or pass --dev",
                     SECRET_MIN);
        return false;
    }
    im_random_bytes(s->dev_secret, sizeof(s->dev_secret));
    im_log_warn("logic: --dev without --jwt-secret: signing tokens with a random secret; "
                "they do not survive a restart and no gateway can verify them");
    *secret = s->dev_secret;
    *len = sizeof(s->dev_secret);
    return true;
}

/* The gRPC API: password cost, ids and the token secret, then the server. */
static bool rpc_setup(lg_service_t *s)
{
    const lg_config_t *cfg = s->cfg;
    lg_rpc_config_t rpc_cfg = {
        .listen = cfg->grpc_listen,
        .n_workers = (unsigned)cfg->grpc_workers,
        .mysql = s->wdb.cfg,
        .token_ttl_s = cfg->token_ttl_ms / 1000,
        .ids = &s->ids,
        .redis = {.host = cfg->redis_host, .port = (unsigned)cfg->redis_port, .name = "rpc"},
        .queue = cfg->queue,
        .max_body = (size_t)cfg->max_body,
        .publish_timeout_ms = (unsigned)cfg->publish_timeout_ms,
        .dedup_ttl_ms = (uint64_t)cfg->dedup_ttl_ms,
        .session_ttl_ms = cfg->session_ttl_ms,
    };

    if (strcmp(cfg->password_cost, "min") == 0) {
        im_log_warn("logic: --password-cost min: password hashes offer no protection (tests only)");
        im_password_set_cost(IM_PWCOST_MIN);
    } else if (strcmp(cfg->password_cost, "interactive") == 0) {
        im_password_set_cost(IM_PWCOST_INTERACTIVE);
    } else {
        im_log_error("logic: --password-cost: \"%s\" is not interactive or min",
                     cfg->password_cost);
        return false;
    }
    if (im_sodium_init() != IM_OK) {
        im_log_error("logic: no source of randomness");
        return false;
    }
    if (!secret_setup(s, &rpc_cfg.secret, &rpc_cfg.secret_len))
        return false;
    if (im_idgen_init(&s->ids, (uint32_t)cfg->node_id, 0, NULL) != IM_OK)
        return false;
    rpc_cfg.mysql.name = "rpc";
    rpc_cfg.publisher = s->publisher;
    s->rpc = lg_rpc_new(&rpc_cfg);
    return s->rpc != NULL;
}

lg_service_t *lg_service_new(const lg_config_t *cfg)
{
    lg_service_t *s = im_calloc(1, sizeof(*s));
    lg_writer_config_t wc;

    s->cfg = cfg;
    s->wdb.cfg = (im_mysql_config_t){
        .host = cfg->mysql_host,
        .port = (unsigned)cfg->mysql_port,
        .user = cfg->mysql_user,
        .password = cfg->mysql_password,
        .db = cfg->mysql_db,
        .name = "writer",
    };
    lg_writer_config_default(&wc);
    wc.amqp = (im_amqp_config_t){
        .host = cfg->amqp_host,
        .port = (unsigned)cfg->amqp_port,
        .user = cfg->amqp_user,
        .password = cfg->amqp_password,
        .vhost = cfg->amqp_vhost,
        .name = "writer",
        .heartbeat_s = 30,
    };
    wc.queue = cfg->queue;
    wc.batch_size = (unsigned)cfg->writer_batch;
    wc.max_delay_ms = (unsigned)cfg->writer_delay_ms;
    wc.prefetch = (unsigned)cfg->writer_prefetch;
    s->writer = lg_writer_new(&wc, writer_flush, &s->wdb);
    wc.amqp.name = "publisher";
    s->publisher = lg_publisher_new(&wc.amqp, (unsigned)cfg->publish_window);
    if (s->publisher != NULL)
        lg_publisher_declare(s->publisher, cfg->queue, LG_DELIVER_EXCHANGE);
    if (s->writer == NULL || !rpc_setup(s)) {
        lg_service_free(s);
        return NULL;
    }
    return s;
}

/* Appends printf-style text to a growing im_malloc'd buffer. */
typedef struct {
    char *p;
    size_t len, cap;
} text_t;

static void text_reserve(text_t *t, size_t more)
{
    if (t->len + more + 1 > t->cap) {
        t->cap = (t->len + more + 1) * 2;
        t->p = im_realloc(t->p, t->cap);
    }
}

__attribute__((format(printf, 2, 3))) static void text_printf(text_t *t, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    text_reserve(t, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

static void counter(text_t *t, const char *name, const char *help, uint64_t v)
{
    text_printf(t, "# HELP %s %s\n# TYPE %s counter\n%s %" PRIu64 "\n", name, help, name, name,
                v);
}

static void gauge(text_t *t, const char *name, const char *help, uint64_t v)
{
    text_printf(t, "# HELP %s %s\n# TYPE %s gauge\n%s %" PRIu64 "\n", name, help, name, name, v);
}

static void render_metrics(lg_service_t *s, text_t *t)
{
    lg_publisher_stats_t ps;
    lg_writer_stats_t ws;
    size_t n;

    lg_publisher_stats(s->publisher, &ps);
    lg_writer_stats(s->writer, &ws);
    gauge(t, "im_logic_up", "Always 1 while the process serves.", 1);
    n = lg_message_format_metrics(lg_rpc_message_shared(s->rpc), NULL, 0);
    text_reserve(t, n);
    lg_message_format_metrics(lg_rpc_message_shared(s->rpc), t->p + t->len, t->cap - t->len);
    t->len += n;
    counter(t, "im_logic_publisher_confirmed_total", "Publishes the broker confirmed.",
            ps.confirmed);
    counter(t, "im_logic_publisher_failed_total", "Publishes nacked, lost or timed out.",
            ps.failed);
    counter(t, "im_logic_publisher_reconnects_total", "Publisher connections re-made.",
            ps.reconnects);
    gauge(t, "im_logic_publisher_connected", "1 while the publisher is connected.", ps.connected);
    counter(t, "im_logic_writer_messages_total", "Messages committed to MySQL and acked.",
            ws.messages);
    counter(t, "im_logic_writer_batches_total", "Batches committed.", ws.batches);
    counter(t, "im_logic_writer_flush_errors_total", "Failed flushes (each retried).",
            ws.flush_errors);
    counter(t, "im_logic_writer_poison_total", "Deliveries rejected as undecodable.", ws.poison);
    counter(t, "im_logic_writer_reconnects_total", "Writer connections re-made.", ws.reconnects);
    gauge(t, "im_logic_writer_last_batch_size", "Messages in the last committed batch.",
          ws.last_batch);
    gauge(t, "im_logic_writer_unacked", "Deliveries received but not yet committed and acked.",
          ws.deliveries >= ws.messages + ws.poison ? ws.deliveries - ws.messages - ws.poison : 0);
    gauge(t, "im_logic_writer_connected", "1 while the writer consumes.", ws.connected);
}

/* GET /metrics and /healthz (200 while the publisher and the writer have
 * their broker connections; the database may be down: the queue holds). */
static int http_handler(void *arg, const char *path, char **body, size_t *len,
                        const char **content_type)
{
    lg_service_t *s = arg;
    text_t t = {0};
    int status = 200;

    if (strcmp(path, "/metrics") == 0) {
        *content_type = "text/plain; version=0.0.4; charset=utf-8";
        render_metrics(s, &t);
    } else if (strcmp(path, "/healthz") == 0) {
        lg_publisher_stats_t ps;
        lg_writer_stats_t ws;
        lg_publisher_stats(s->publisher, &ps);
        lg_writer_stats(s->writer, &ws);
        status = ps.connected && ws.connected ? 200 : 503;
        *content_type = "application/json";
        text_printf(&t, "{\"status\":\"%s\",\"publisher\":%s,\"writer\":%s}\n",
                    status == 200 ? "ok" : "unavailable", ps.connected ? "true" : "false",
                    ws.connected ? "true" : "false");
    } else {
        status = 404;
        text_printf(&t, "not found\n");
    }
    *body = t.p;
    *len = t.len;
    return status;
}

static im_err_t http_start(lg_service_t *s)
{
    const char *addr = s->cfg->http_listen;
    unsigned port = 0;
    char err[256];
    int host_len;

    if (addr == NULL || *addr == '\0')
        return IM_OK;
    s->httpd = im_httpd_start(addr, http_handler, s, &port, err, sizeof(err));
    if (s->httpd == NULL) {
        im_log_error("logic: --http-listen: %s", err);
        return IM_EIO;
    }
    host_len = (int)(strrchr(addr, ':') - addr);
    im_log_info("logic: http listening on %.*s:%u (/metrics, /healthz)", host_len, addr, port);
    return IM_OK;
}

im_err_t lg_service_start(lg_service_t *s, unsigned *grpc_port)
{
    im_err_t rc = lg_publisher_start(s->publisher);

    if (rc == IM_OK)
        rc = lg_rpc_start(s->rpc, grpc_port);
    if (rc == IM_OK)
        rc = lg_writer_start(s->writer);
    if (rc == IM_OK)
        rc = http_start(s);
    return rc;
}

/* Calls in flight finish first (Sends need the publisher for their confirm),
 * then the publisher drains, then the writer flushes what it holds. */
void lg_service_stop(lg_service_t *s)
{
    if (s->stopped)
        return;
    s->stopped = true;
    im_httpd_stop(s->httpd);
    s->httpd = NULL;
    lg_rpc_stop(s->rpc, 2000);
    lg_publisher_stop(s->publisher, 2000);
    lg_rpc_free(s->rpc);
    s->rpc = NULL;
    lg_writer_stop(s->writer);
}

void lg_service_free(lg_service_t *s)
{
    if (s == NULL)
        return;
    im_httpd_stop(s->httpd);
    lg_rpc_stop(s->rpc, 0);
    lg_publisher_free(s->publisher); /* stops it: no callback runs after this */
    lg_rpc_free(s->rpc);
    lg_writer_free(s->writer); /* stops the thread that uses wdb */
    lg_store_free(s->wdb.store);
    im_mysql_close(s->wdb.db);
    im_free(s);
}

void lg_service_writer_stats(lg_service_t *s, lg_writer_stats_t *out)
{
    lg_writer_stats(s->writer, out);
}
