/*
 * gateway - the WebSocket gateway binary: flags and environment in, a
 * running gateway out, a graceful stop on SIGINT/SIGTERM (every client gets
 * close 1001, then exit 0).
 *
 * Prints "gateway: listening on HOST:PORT" once bound; with --listen HOST:0
 * the PORT is the one the kernel picked (tests parse this line).
 *
 * --workers N (N > 1): this process becomes a master that forks N gateways
 * sharing the listen port through SO_REUSEPORT, as nginx's worker processes
 * do.  Each is a whole gateway (its own id <gateway-id>-w<n>, AMQP queue,
 * logic channel and file limit: one process can hold no more connections
 * than it may open files).  The master restarts a worker that dies, forwards
 * SIGINT/SIGTERM to all of them and exits 0 when all stopped cleanly.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gw.h"
#include "gw_service.h"
#include "im_log.h"

static volatile sig_atomic_t stop_requested;
static gw_t *volatile running;
/* A worker's signal mask from before the master blocked SIGINT/SIGTERM,
 * restored once serve() has its handlers (a stop in between is kept). */
static const sigset_t *worker_mask;

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
        .send_lanes = (unsigned)cfg->send_lanes,
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

/* One gateway in this process until SIGINT/SIGTERM.  Returns the exit code. */
static int serve(gw_config_t *cfg)
{
    struct sigaction sa;
    gw_hooks_t hooks;
    gw_service_t *svc;
    char err[256];
    gw_t *gw;
    int rc;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (worker_mask != NULL)
        sigprocmask(SIG_SETMASK, worker_mask, NULL);

    svc = upstream(cfg, &hooks);
    gw = gw_new(cfg, svc ? &hooks : NULL, NULL, err, sizeof(err));
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
                (int)(strrchr(cfg->listen, ':') - cfg->listen), cfg->listen, gw_port(gw),
                gw_id(gw), gw_instance_id(gw));
    rc = gw_run(gw) == IM_OK ? 0 : 1;
    running = NULL;
    if (svc != NULL)
        gw_service_stop(svc); /* no more posts from its threads */
    gw_free(gw);
    gw_service_free(svc);
    im_log_info("gateway: stopped");
    return rc;
}

/* ---- --workers N: a master process and N gateways sharing the port ---- */

#define WORKERS_MAX 256
#define RESTART_DELAY_MS 1000      /* after a worker's first failure; doubles... */
#define RESTART_DELAY_MAX_MS 60000 /* ...up to this, while it keeps dying young */
#define RESTART_STABLE_MS 30000    /* a worker that ran this long starts over at 1 s */
#define STOP_KILL_MS 10000         /* after the workers' own shutdown timeout: SIGKILL */

typedef struct {
    pid_t pid;           /* 0: not running */
    uint64_t started_ms; /* when it was last started */
    uint64_t start_ms;   /* when it may be (re)started */
    uint64_t delay_ms;   /* the next restart delay */
    char id[64];         /* its gateway id, "" for the default hostname-pid */
} worker_t;

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Forks worker n.  The child runs a gateway and never returns. */
static void spawn(worker_t *w, int n, gw_config_t *cfg, const sigset_t *old_mask)
{
    pid_t pid = fork();

    if (pid < 0) {
        im_log_error("gateway: fork of worker %d: %s", n, strerror(errno));
        w->start_ms = now_ms() + RESTART_DELAY_MS;
        return;
    }
    if (pid == 0) {
        /* SIGINT/SIGTERM stay blocked until serve() has its handlers. */
        worker_mask = old_mask;
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* a master killed with -9 takes its workers */
        if (getppid() == 1)
            _exit(1);
        if (w->id[0] != '\0')
            cfg->gateway_id = w->id;
        exit(serve(cfg));
    }
    w->pid = pid;
    w->started_ms = now_ms();
    im_log_info("gateway: worker %d started (pid %ld)", n, (long)pid);
}

/* Starts cfg->workers gateways, restarts any that exits while running, and
 * on SIGINT/SIGTERM stops them all.  0 when every worker stopped cleanly. */
static int master(gw_config_t *cfg)
{
    static worker_t w[WORKERS_MAX];
    int n = (int)cfg->workers, rc = 0, live = 0;
    const char *colon = strrchr(cfg->listen, ':');
    bool stopping = false;
    uint64_t kill_at = 0;
    sigset_t set, old;

    if (colon == NULL || atoi(colon + 1) == 0) {
        fprintf(stderr, "gateway: --workers needs a fixed port in --listen (not %s)\n",
                cfg->listen);
        return 2;
    }
    for (int i = 0; i < n; i++)
        if (cfg->gateway_id != NULL && *cfg->gateway_id != '\0')
            snprintf(w[i].id, sizeof(w[i].id), "%.40s-w%d", cfg->gateway_id, i);
    /* Signals are taken synchronously (sigtimedwait) so none is missed
     * between checks; the workers get the old mask back. */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &old);
    im_log_info("gateway: master (pid %ld) of %d workers on %s", (long)getpid(), n, cfg->listen);
    for (;;) {
        struct timespec ts = {0, 200 * 1000000L};
        int sig = sigtimedwait(&set, NULL, &ts), status;
        pid_t pid;

        if ((sig == SIGINT || sig == SIGTERM) && !stopping) {
            stopping = true;
            kill_at = now_ms() + (uint64_t)cfg->shutdown_timeout_ms + STOP_KILL_MS;
            im_log_info("gateway: stopping %d workers", live);
            for (int i = 0; i < n; i++)
                if (w[i].pid > 0)
                    kill(w[i].pid, SIGTERM);
        }
        if (stopping && kill_at != 0 && now_ms() >= kill_at) {
            kill_at = 0; /* once */
            for (int i = 0; i < n; i++)
                if (w[i].pid > 0) {
                    im_log_warn("gateway: worker %d (pid %ld) did not stop: killing it", i,
                                (long)w[i].pid);
                    kill(w[i].pid, SIGKILL);
                }
        }
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
            for (int i = 0; i < n; i++) {
                if (w[i].pid != pid)
                    continue;
                w[i].pid = 0;
                live--;
                if (stopping && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
                    rc = 1; /* a worker that did not stop cleanly */
                if (!stopping) {
                    uint64_t now = now_ms();

                    /* One that keeps dying at start (a bad setting, the port
                     * taken) is retried less and less often, and said so. */
                    if (now - w[i].started_ms >= RESTART_STABLE_MS || w[i].delay_ms == 0)
                        w[i].delay_ms = RESTART_DELAY_MS;
                    else if ((w[i].delay_ms *= 2) > RESTART_DELAY_MAX_MS)
                        w[i].delay_ms = RESTART_DELAY_MAX_MS;
                    im_log_warn("gateway: worker %d (pid %ld) %s %d after %" PRIu64
                                " ms; restarting it in %" PRIu64 " ms",
                                i, (long)pid, WIFEXITED(status) ? "exited" : "killed by signal",
                                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                                now - w[i].started_ms, w[i].delay_ms);
                    w[i].start_ms = now + w[i].delay_ms;
                }
            }
        if (stopping) {
            if (live == 0)
                break;
            continue;
        }
        for (int i = 0; i < n; i++)
            if (w[i].pid == 0 && now_ms() >= w[i].start_ms) {
                spawn(&w[i], i, cfg, &old);
                live += w[i].pid > 0;
            }
    }
    im_log_info("gateway: master stopped");
    return stopping ? rc : 1;
}

int main(int argc, char **argv)
{
    gw_config_t cfg;
    int rc = setup(argc, argv, &cfg);

    if (rc >= 0)
        return rc;
    raise_fd_limit();
    if (cfg.workers > 1)
        return master(&cfg);
    return serve(&cfg);
}
