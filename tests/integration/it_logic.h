/*
 * it_logic.h - run the real logic binary from an integration test and call it.
 *
 *   it_logic_t lg = {.bin = argv[1], .tag = "it11"};
 *   it_logic_start(&lg, extra_args);   // port in lg.port, client in lg.client
 *   it_logic_call(&lg, &im__v1__message__descriptor, 0, &req.base, &resp, msg, sizeof msg);
 *   it_logic_stop(&lg);                // SIGTERM; true when it exited 0
 *
 * The child gets the infra env that it_env_load() exported, a private queue
 * (IM_QUEUE=<tag>.<test pid>), its stderr in /tmp/<tag>-logic.<pid>.log, and
 * gRPC on a free loopback port read back from its log.  A test that fails
 * still stops it: call it_logic_kill() from an atexit handler.
 */
#ifndef IT_LOGIC_H
#define IT_LOGIC_H

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "im_rpc.h"

#define IT_LOGIC_SECRET "it-logic-secret-0123456789abcdef-0123456789"
#define IT_LOGIC_TIMEOUT_MS 10000

typedef struct {
    const char *bin;  /* the logic binary */
    const char *tag;  /* names the queue and the log */
    pid_t pid;
    unsigned port;
    char target[32];
    char log_path[96];
    char queue[64];
    im_rpc_client_t *client;
} it_logic_t;

static inline void it_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#define IT_LOGIC__MARK "---- it_logic_start"
#define IT_LOGIC__KEY "logic: grpc listening on 127.0.0.1:"

/* The port of the last "grpc listening" line after the last start marker. */
static inline unsigned it_logic__port(const it_logic_t *lg)
{
    FILE *f = fopen(lg->log_path, "r");
    char line[1024];
    unsigned port = 0;

    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        char *p = strstr(line, IT_LOGIC__KEY);

        if (strncmp(line, IT_LOGIC__MARK, strlen(IT_LOGIC__MARK)) == 0)
            port = 0;
        else if (p != NULL)
            port = (unsigned)strtoul(p + strlen(IT_LOGIC__KEY), NULL, 10);
    }
    if (f != NULL)
        fclose(f);
    return port;
}

/* Starts logic with the test defaults plus extra (NULL-terminated, may be
 * NULL) and connects a client.  The log is appended to, so a restart keeps
 * the earlier run's lines.  Returns false (log path printed) on failure. */
static inline bool it_logic_start(it_logic_t *lg, const char *const *extra)
{
    const char *args[32] = {lg->bin,         "--grpc-listen",   "127.0.0.1:0", "--http-listen",
                            "127.0.0.1:0",   "--jwt-secret",    IT_LOGIC_SECRET, "--password-cost",
                            "min",           NULL};
    int n = 9;
    FILE *trunc;

    if (lg->log_path[0] == '\0') {
        snprintf(lg->log_path, sizeof(lg->log_path), "/tmp/%s-logic.%d.log", lg->tag,
                 (int)getpid());
        snprintf(lg->queue, sizeof(lg->queue), "%s.%d", lg->tag, (int)getpid());
    }
    for (; extra != NULL && *extra != NULL && n < 31; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    /* The port is read from the log: only lines after this marker count. */
    if ((trunc = fopen(lg->log_path, "a")) != NULL) {
        fputs(IT_LOGIC__MARK "\n", trunc);
        fclose(trunc);
    }
    lg->pid = fork();
    if (lg->pid == 0) {
        if (freopen(lg->log_path, "a", stderr) == NULL)
            _exit(126);
        setenv("IM_QUEUE", lg->queue, 1);
        unsetenv("IM_JWT_SECRET");
        execv(lg->bin, (char *const *)args);
        _exit(127);
    }
    lg->port = 0;
    for (int i = 0; i < 2000 && lg->port == 0; i++) { /* up to 20 s */
        lg->port = it_logic__port(lg);
        if (lg->port == 0)
            it_sleep_ms(10);
    }
    if (lg->port == 0) {
        fprintf(stderr, "logic did not report its port; its log is %s\n", lg->log_path);
        return false;
    }
    snprintf(lg->target, sizeof(lg->target), "127.0.0.1:%u", lg->port);
    lg->client = im_rpc_client_new(lg->target);
    return true;
}

/* SIGTERM and wait: true if it exited 0 (under ASan: also without leaks). */
static inline bool it_logic_stop(it_logic_t *lg)
{
    int status = -1;

    im_rpc_client_free(lg->client);
    lg->client = NULL;
    if (lg->pid > 0) {
        kill(lg->pid, SIGTERM);
        waitpid(lg->pid, &status, 0);
        lg->pid = 0;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* kill -9 and reap (fault tests, and cleanup after a failed test). */
static inline void it_logic_kill(it_logic_t *lg)
{
    im_rpc_client_free(lg->client);
    lg->client = NULL;
    if (lg->pid > 0) {
        kill(lg->pid, SIGKILL);
        waitpid(lg->pid, NULL, 0);
        lg->pid = 0;
    }
}

static inline im_rpc_code_t it_logic_call(it_logic_t *lg, const ProtobufCServiceDescriptor *sd,
                                          unsigned method, const ProtobufCMessage *req,
                                          ProtobufCMessage **resp, char *msg, size_t msglen)
{
    return im_rpc_call_sync(lg->client, sd, method, req, IT_LOGIC_TIMEOUT_MS, NULL, 0, resp, msg,
                            msglen);
}

#endif
