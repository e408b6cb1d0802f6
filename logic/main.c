/*
 * logic - the logic service binary: flags and environment in, a running
 * lg_service out (gRPC API and writer), a graceful stop on SIGINT/SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "im_log.h"
#include "lg_config.h"
#include "lg_service.h"

static volatile sig_atomic_t stop_requested;

/* Only sets a flag: the main loop acts on it. */
static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    lg_config_t cfg;
    lg_service_t *svc;
    im_log_level_t level;
    char err[256];
    im_err_t rc = im_cfg_parse(&lg_config_spec, &cfg, argc, argv, NULL, err, sizeof(err));

    if (rc == IM_EHELP) {
        im_cfg_usage(&lg_config_spec, stdout);
        return 0;
    }
    if (rc != IM_OK) {
        fprintf(stderr, "logic: %s\n", err);
        return 2;
    }
    if (im_log_parse_level(cfg.log_level, &level) != IM_OK) {
        fprintf(stderr, "logic: --log-level: unknown level \"%s\"\n", cfg.log_level);
        return 2;
    }
    im_log_set_level(level);
    im_log_set_ident("logic");

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    svc = lg_service_new(&cfg);
    if (svc == NULL || lg_service_start(svc, NULL) != IM_OK) {
        im_log_error("logic: failed to start");
        lg_service_free(svc);
        return 1;
    }
    im_log_info("logic: running (queue %s, mysql %s:%lld, amqp %s:%lld)", cfg.queue,
                cfg.mysql_host, (long long)cfg.mysql_port, cfg.amqp_host,
                (long long)cfg.amqp_port);
    while (!stop_requested) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    im_log_info("logic: stopping");
    lg_service_free(svc);
    im_log_info("logic: stopped");
    return 0;
}
