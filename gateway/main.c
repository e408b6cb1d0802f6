/*
 * gateway - the WebSocket gateway binary: flags and environment in, a
 * running gateway out, a graceful stop on SIGINT/SIGTERM (every client gets
 * close 1001, then exit 0).
 *
 * Prints "gateway: listening on HOST:PORT" once bound; with --listen HOST:0
 * the PORT is the one the kernel picked (tests parse this line).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "gw.h"
#include "gw_service.h"
#include "im_log.h"

static volatile sig_atomic_t stop_requested;
static gw_t *volatile running;

/* Only sets flags (gw_request_stop is an atomic store): the loop acts. */
static void on_signal(int sig)
{
    gw_t *gw = running;

    (void)sig;
    stop_requested = 1;
    if (gw != NULL)
        gw_request_stop(gw);
}

/* One process holds as many connections as it may open files: use the whole
 * hard limit (20000 on the reference machine). */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int setup(int argc, char **argv, gw_config_t *cfg)
{
    im_log_level_t level;
    char err[256];
    im_err_t rc = im_cfg_parse(&gw_config_spec, cfg, argc, argv, NULL, err, sizeof(err));

    if (rc == IM_EHELP) {
        im_cfg_usage(&gw_config_spec, stdout);
        return 0;
    }
    if (rc != IM_OK) {
        fprintf(stderr, "gateway: %s\n", err);
        return 2;
    }
    if (im_log_parse_level(cfg->log_level, &level) != IM_OK) {
        fprintf(stderr, "gateway: --log-level: unknown level \"%s\"\n", cfg->log_level);
        return 2;
    }
    im_log_set_level(level);
    im_log_set_ident("gateway");
    return -1;
}

/* The upstream wiring (logic over gRPC, deliveries from RabbitMQ), or NULL
 * with --logic "" (the bare WebSocket core). */
static gw_service_t *upstream(const gw_config_t *cfg, gw_hooks_t *hooks)
{
    gw_service_config_t sc = {
        .logic = cfg->logic,
        .amqp = {.host = cfg->amqp_host,
                 .port = (unsigned)cfg->amqp_port,
                 .user = cfg->amqp_user,
                 .password = cfg->amqp_password,
                 .vhost = cfg->amqp_vhost,
                 .heartbeat_s = 30},
        .rpc_timeout_ms = (unsigned)cfg->rpc_timeout_ms,
        .heartbeat_ms = (unsigned)cfg->heartbeat_ms,
        .sync_limit = (unsigned)cfg->sync_limit,
    };
    gw_service_t *svc;

    if (cfg->logic == NULL || *cfg->logic == '\0') {
        im_log_warn("gateway: --logic \"\": no upstream, clients can only ping");
        return NULL;
    }
    svc = gw_service_new(&sc);
    gw_service_hooks(svc, hooks);
    return svc;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    gw_config_t cfg;
    gw_hooks_t hooks;
    gw_service_t *svc;
    char err[256];
    gw_t *gw;
    int rc = setup(argc, argv, &cfg);

    if (rc >= 0)
        return rc;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();

    svc = upstream(&cfg, &hooks);
    gw = gw_new(&cfg, svc ? &hooks : NULL, NULL, err, sizeof(err));
    if (gw == NULL) {
        im_log_error("gateway: %s", err);
        gw_service_free(svc);
        return 1;
    }
    if (svc != NULL && gw_service_start(svc, gw) != IM_OK) {
        im_log_error("gateway: cannot start its upstream threads");
        gw_free(gw);
        gw_service_free(svc);
        return 1;
    }
    running = gw;
    if (stop_requested)
        gw_request_stop(gw);
    /* gw_new checked that listen is host:port. */
    im_log_info("gateway: listening on %.*s:%d (gateway %s, instance %s)",
                (int)(strrchr(cfg.listen, ':') - cfg.listen), cfg.listen, gw_port(gw), gw_id(gw),
                gw_instance_id(gw));
    rc = gw_run(gw) == IM_OK ? 0 : 1;
    running = NULL;
    if (svc != NULL)
        gw_service_stop(svc); /* no more posts from its threads */
    gw_free(gw);
    gw_service_free(svc);
    im_log_info("gateway: stopped");
    return rc;
}
