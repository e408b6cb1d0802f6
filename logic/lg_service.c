#include "lg_service.h"

#include "im_alloc.h"
#include "im_log.h"
#include "im_mysql.h"
#include "lg_store.h"

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
};

static im_err_t writer_flush(void *arg, Im__V1__ChatMessage *const *msgs, size_t n)
{
    writer_db_t *w = arg;
    lg_store_result_t res;
    char err[256];
    im_err_t rc;

    if (w->db == NULL) {
        w->db = im_mysql_connect(&w->cfg, err, sizeof(err));
        if (w->db == NULL) {
            im_log_warn("writer: mysql connect failed: %s", err);
            return IM_EUNAVAIL;
        }
        w->store = lg_store_new(w->db, NULL);
    }
    rc = lg_store_insert_batch(w->store, (const Im__V1__ChatMessage *const *)msgs, n, &res);
    if (rc == IM_OK && res.conflicts)
        im_log_error("writer: %zu of %zu messages conflict with stored ones and were not stored",
                     res.conflicts, n);
    return rc;
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
    if (s->writer == NULL) {
        im_free(s);
        return NULL;
    }
    return s;
}

im_err_t lg_service_start(lg_service_t *s)
{
    return lg_writer_start(s->writer);
}

void lg_service_stop(lg_service_t *s)
{
    lg_writer_stop(s->writer);
}

void lg_service_free(lg_service_t *s)
{
    if (s == NULL)
        return;
    lg_writer_free(s->writer); /* stops the thread that uses wdb */
    lg_store_free(s->wdb.store);
    im_mysql_close(s->wdb.db);
    im_free(s);
}

void lg_service_writer_stats(lg_service_t *s, lg_writer_stats_t *out)
{
    lg_writer_stats(s->writer, out);
}
