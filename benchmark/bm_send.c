/*
 * sendbench - Message.Send throughput and latency of a running logic service,
 * over gRPC, with a fixed number of calls in flight: what a gateway sees
 * between a client's send and its ack (validation, dedup claim in Redis, seq,
 * persistent publish, broker confirm).  No WebSocket: that is the gateway's
 * benchmark.
 *
 *   ./build/benchmark/sendbench --target 127.0.0.1:9000 --inflight 256 --duration 10s
 *
 * Users are made with Auth.SignUp (sendbench_<pid>_<n>); messages go between
 * pairs of them.  Latency: log-linear histogram (16 sub-buckets per power of
 * two, so within ~6%), fixed memory.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "im.pb-c.h"
#include "im_alloc.h"
#include "im_config.h"
#include "im_rpc.h"
#include "im_time.h"

typedef struct {
    const char *target;
    int64_t inflight;
    int64_t duration_ms;
    int64_t pairs;
    int64_t body;
} bm_send_config_t;

#define OPT(name, type, field, def, min, max, help)                                                \
    {name, 0, type, offsetof(bm_send_config_t, field), def, min, max, help}
static const im_cfg_opt_t opts[] = {
    OPT("target", IM_CFG_STR, target, "127.0.0.1:9000", 0, 0, "logic's gRPC address"),
    OPT("inflight", IM_CFG_INT, inflight, "256", 1, 100000, "Send calls in flight"),
    OPT("duration", IM_CFG_DURATION, duration_ms, "10s", 100, 3600000, "how long to send"),
    OPT("pairs", IM_CFG_INT, pairs, "64", 1, 10000, "pairs of users (conversations)"),
    OPT("body", IM_CFG_SIZE, body, "100", 1, 4096, "message body bytes"),
};
static const im_cfg_spec_t spec = {"sendbench", "Message.Send throughput and latency over gRPC.",
                                   "IM_BM", opts, sizeof(opts) / sizeof(opts[0])};

#define SUB 16
#define BUCKETS (64 * SUB)

static struct {
    bm_send_config_t cfg;
    im_rpc_client_t *client;
    uint64_t *users;
    char *body;
    uint64_t deadline_ms;
    atomic_ulong next, ok, failed, outstanding;
    atomic_ulong hist[BUCKETS];
} B;

typedef struct {
    uint64_t start_us;
} slot_t;

static unsigned bucket_of(uint64_t us)
{
    unsigned e, m;

    if (us < SUB)
        return (unsigned)us;
    e = 63u - (unsigned)__builtin_clzll(us); /* us in [2^e, 2^(e+1)) */
    m = (unsigned)((us >> (e - 4)) & (SUB - 1));
    return (e - 3) * SUB + m;
}

static uint64_t bucket_low(unsigned b)
{
    unsigned e = b / SUB + 3, m = b % SUB;

    if (b < SUB)
        return b;
    return ((uint64_t)1 << e) | ((uint64_t)m << (e - 4));
}

static uint64_t percentile(double p, uint64_t total)
{
    uint64_t want = (uint64_t)(p * (double)total), seen = 0;

    for (unsigned b = 0; b < BUCKETS; b++) {
        seen += atomic_load(&B.hist[b]);
        if (seen > want)
            return bucket_low(b);
    }
    return 0;
}

static void start_one(slot_t *slot);

static void done_cb(void *arg, im_rpc_result_t *res)
{
    slot_t *slot = arg;
    uint64_t us = im_mono_ns() / 1000 - slot->start_us;

    if (res->code == IM_RPC_OK) {
        atomic_fetch_add(&B.ok, 1);
        atomic_fetch_add(&B.hist[bucket_of(us)], 1);
    } else {
        atomic_fetch_add(&B.failed, 1);
        if (atomic_load(&B.failed) <= 5)
            fprintf(stderr, "sendbench: %s %s\n", im_rpc_code_name(res->code), res->message);
    }
    if (im_mono_ms() < B.deadline_ms)
        start_one(slot);
    else
        atomic_fetch_sub(&B.outstanding, 1);
}

static void start_one(slot_t *slot)
{
    Im__V1__SendRequest req = IM__V1__SEND_REQUEST__INIT;
    uint64_t n = atomic_fetch_add(&B.next, 1);
    uint64_t pair = n % (uint64_t)B.cfg.pairs;
    char cid[32];

    snprintf(cid, sizeof(cid), "b%d-%" PRIu64, (int)getpid(), n);
    req.sender = B.users[2 * pair + (n / (uint64_t)B.cfg.pairs) % 2];
    req.to_user = B.users[2 * pair + 1 - (n / (uint64_t)B.cfg.pairs) % 2];
    req.client_msg_id = cid;
    req.body = B.body;
    slot->start_us = im_mono_ns() / 1000;
    if (im_rpc_call(B.client, &im__v1__message__descriptor, 0, &req.base, 10000, NULL, 0, done_cb,
                    slot) != IM_OK) {
        atomic_fetch_add(&B.failed, 1);
        atomic_fetch_sub(&B.outstanding, 1);
    }
}

static int make_users(void)
{
    char name[48], msg[256];

    B.users = im_calloc((size_t)B.cfg.pairs * 2, sizeof(*B.users));
    for (int64_t i = 0; i < B.cfg.pairs * 2; i++) {
        Im__V1__RegisterRequest req = IM__V1__REGISTER_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        im_rpc_code_t code;

        snprintf(name, sizeof(name), "sb_%d_%" PRId64, (int)getpid() % 1000000, i);
        req.username = name;
        req.password = "sendbench-password";
        code = im_rpc_call_sync(B.client, &im__v1__auth__descriptor, 0, &req.base, 30000, NULL, 0,
                                &resp, msg, sizeof(msg));
        if (code != IM_RPC_OK) {
            fprintf(stderr, "sendbench: sign-up at %s failed: %s %s\n", B.cfg.target,
                    im_rpc_code_name(code), msg);
            return 1;
        }
        B.users[i] = ((Im__V1__RegisterResponse *)resp)->user_id;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return 0;
}

int main(int argc, char **argv)
{
    char err[256];
    im_err_t rc = im_cfg_parse(&spec, &B.cfg, argc, argv, NULL, err, sizeof(err));
    slot_t *slots;
    uint64_t t0, elapsed, ok;

    if (rc == IM_EHELP) {
        im_cfg_usage(&spec, stdout);
        return 0;
    }
    if (rc != IM_OK) {
        fprintf(stderr, "sendbench: %s\n", err);
        return 2;
    }
    B.client = im_rpc_client_new(B.cfg.target);
    if (make_users() != 0)
        return 1;
    B.body = im_malloc((size_t)B.cfg.body + 1);
    memset(B.body, 'm', (size_t)B.cfg.body);
    B.body[B.cfg.body] = '\0';
    slots = im_calloc((size_t)B.cfg.inflight, sizeof(*slots));
    t0 = im_mono_ms();
    B.deadline_ms = t0 + (uint64_t)B.cfg.duration_ms;
    atomic_store(&B.outstanding, (unsigned long)B.cfg.inflight);
    for (int64_t i = 0; i < B.cfg.inflight; i++)
        start_one(&slots[i]);
    while (atomic_load(&B.outstanding) > 0 && im_mono_ms() < B.deadline_ms + 15000) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    elapsed = im_mono_ms() - t0;
    ok = atomic_load(&B.ok);
    printf("sendbench: %s, %" PRId64 " in flight, %" PRId64 " conversations, %" PRId64
           " B bodies, %.1f s\n",
           B.cfg.target, B.cfg.inflight, B.cfg.pairs, B.cfg.body, (double)elapsed / 1000.0);
    printf("  acked sends   %" PRIu64 " (%.0f/s)\n", ok, (double)ok * 1000.0 / (double)elapsed);
    printf("  failed        %lu\n", atomic_load(&B.failed));
    printf("  send->ack     p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  p99.9 %.2f ms\n",
           (double)percentile(0.50, ok) / 1000.0, (double)percentile(0.90, ok) / 1000.0,
           (double)percentile(0.99, ok) / 1000.0, (double)percentile(0.999, ok) / 1000.0);
    im_rpc_client_free(B.client);
    im_free(slots);
    im_free(B.users);
    im_free(B.body);
    return atomic_load(&B.failed) > 0 ? 1 : 0;
}
