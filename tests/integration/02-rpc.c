/*
 * 02-rpc: the im_rpc layer against itself over real gRPC on 127.0.0.1 (ephemeral
 * ports, no other servers needed).
 *
 * The main server serves grpc.health.v1.Health/Check without blocking, and the
 * same method under the name test.Slow/Check as a blocking handler that sleeps
 * 50 ms on a worker.  Check behaves according to the requested service name:
 *   ""          -> SERVING
 *   "missing"   -> NOT_FOUND with a message
 *   "whoami"    -> records the authorization header, peer and deadline it saw
 *   "late"      -> parks the call; the test completes it later
 *   "wrongtype" -> replies with a message of the wrong type (-> INTERNAL)
 * Descriptors the server does not serve, or whose input type is not the one
 * the server expects, are built here by hand from the generated ones.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "health.pb-c.h"
#include "im_alloc.h"
#include "im_rpc.h"
#include "im_test.h"
#include "im_time.h"

#define SLOW_MS    50
#define WORKERS    4
#define MAX_PARKED 16

typedef Grpc__Health__V1__HealthCheckRequest check_req_t;
typedef Grpc__Health__V1__HealthCheckResponse check_resp_t;

static const ProtobufCServiceDescriptor *const health = &grpc__health__v1__health__descriptor;

/* A one-method service descriptor; im_rpc uses only the name and methods. */
#define TEST_SERVICE(full_name, method)                                                            \
    {                                                                                              \
        .magic = PROTOBUF_C__SERVICE_DESCRIPTOR_MAGIC, .name = (full_name), .n_methods = 1,        \
        .methods = &(method), .method_indices_by_name = first_index,                               \
    }

static const unsigned first_index[] = {0};

/* The Health method under another service name: served blocking by the main
 * server (test.Slow) or by nobody (test.Nope). */
static const ProtobufCMethodDescriptor check_method = {
    "Check", &grpc__health__v1__health_check_request__descriptor,
    &grpc__health__v1__health_check_response__descriptor};
static const ProtobufCServiceDescriptor slow_service = TEST_SERVICE("test.Slow", check_method);
static const ProtobufCServiceDescriptor nope_service = TEST_SERVICE("test.Nope", check_method);

/* The real Health/Check path, but the client sends a HealthCheckResponse: its
 * field 1 is a varint where the server expects a string, so it does not parse. */
static const ProtobufCMethodDescriptor garbage_method = {
    "Check", &grpc__health__v1__health_check_response__descriptor,
    &grpc__health__v1__health_check_response__descriptor};
static const ProtobufCServiceDescriptor garbage_service =
    TEST_SERVICE("grpc.health.v1.Health", garbage_method);

static im_rpc_server_t *server;
static im_rpc_client_t *client;
static char target[64];

/* What the handlers saw, and the calls parked by "late"; under seen_lock. */
static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static char *seen_auth, *seen_peer;
static uint64_t seen_deadline_ms;
static im_rpc_call_t *parked[MAX_PARKED];
static unsigned n_parked;
static unsigned slow_started;

/* ---------------------------------------------------------------- handlers */

static void reply_status(im_rpc_call_t *call, int status)
{
    check_resp_t resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;

    resp.status = status;
    im_rpc_reply(call, &resp.base);
}

static void record_whoami(im_rpc_call_t *call)
{
    pthread_mutex_lock(&seen_lock);
    im_free(seen_auth);
    im_free(seen_peer);
    seen_auth = im_rpc_call_metadata_dup(call, "authorization");
    seen_peer = im_strdup(im_rpc_call_peer(call));
    seen_deadline_ms = im_rpc_call_deadline_ms(call);
    pthread_mutex_unlock(&seen_lock);
}

static void park(im_rpc_call_t *call)
{
    pthread_mutex_lock(&seen_lock);
    if (n_parked < MAX_PARKED) {
        parked[n_parked++] = call;
        call = NULL;
    }
    pthread_mutex_unlock(&seen_lock);
    if (call != NULL)
        im_rpc_fail(call, IM_RPC_RESOURCE_EXHAUSTED, "test parking lot full");
}

static void check_cb(im_rpc_call_t *call, void *arg)
{
    const check_req_t *req = (const check_req_t *)im_rpc_call_request(call);
    check_req_t wrong = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;

    if (strcmp(req->service, "missing") == 0) {
        im_rpc_fail(call, IM_RPC_NOT_FOUND, "no service named missing");
    } else if (strcmp(req->service, "late") == 0) {
        park(call);
    } else if (strcmp(req->service, "wrongtype") == 0) {
        im_rpc_reply(call, &wrong.base);
    } else {
        if (strcmp(req->service, "whoami") == 0)
            record_whoami(call);
        reply_status(call, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    }
}

static void slow_cb(im_rpc_call_t *call, void *arg)
{
    pthread_mutex_lock(&seen_lock);
    slow_started++;
    pthread_mutex_unlock(&seen_lock);
    usleep(SLOW_MS * 1000);
    reply_status(call, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
}

static const im_rpc_method_t health_methods[] = {{check_cb, false}};
static const im_rpc_method_t slow_methods[] = {{slow_cb, true}};

/* Waits until *count (under seen_lock) reaches n or 5 s pass; returns it. */
static unsigned wait_seen(const unsigned *count, unsigned n)
{
    uint64_t until = im_mono_ms() + 5000;
    unsigned got;

    pthread_mutex_lock(&seen_lock);
    while (*count < n && im_mono_ms() < until) {
        pthread_mutex_unlock(&seen_lock);
        usleep(1000);
        pthread_mutex_lock(&seen_lock);
    }
    got = *count;
    pthread_mutex_unlock(&seen_lock);
    return got;
}

/* Completes every parked call, as a handler that answers too late would. */
static void reply_parked(void)
{
    pthread_mutex_lock(&seen_lock);
    while (n_parked > 0)
        reply_status(parked[--n_parked],
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    pthread_mutex_unlock(&seen_lock);
}

/* ---------------------------------------------------------------- async tally */

/* Results of many async calls: each call's arg is its slot in `calls`. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned n;                /* callbacks run so far */
    unsigned by_code[17];      /* callbacks per status code */
    unsigned char calls[1000]; /* callbacks per call: must end at exactly 1 */
} tally_t;

typedef struct {
    tally_t *t;
    unsigned slot;
} tally_arg_t;

static void tally_init(tally_t *t)
{
    pthread_condattr_t attr;

    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cond, &attr);
    pthread_condattr_destroy(&attr);
}

static void tally_destroy(tally_t *t)
{
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
}

static void tally_cb(void *arg, im_rpc_result_t *res)
{
    tally_arg_t *ta = arg;
    tally_t *t = ta->t;

    pthread_mutex_lock(&t->lock);
    t->n++;
    if ((unsigned)res->code < 17)
        t->by_code[res->code]++;
    t->calls[ta->slot]++;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

/* Waits until at least n callbacks ran or timeout_ms passed; returns the count. */
static unsigned tally_wait(tally_t *t, unsigned n, unsigned timeout_ms)
{
    uint64_t until_ns = im_mono_ns() + (uint64_t)timeout_ms * 1000000u;
    struct timespec until = {(time_t)(until_ns / 1000000000u), (long)(until_ns % 1000000000u)};
    unsigned got;

    pthread_mutex_lock(&t->lock);
    while (t->n < n && pthread_cond_timedwait(&t->cond, &t->lock, &until) == 0)
        ;
    got = t->n;
    pthread_mutex_unlock(&t->lock);
    return got;
}

static im_err_t call_check(im_rpc_client_t *c, const ProtobufCServiceDescriptor *sd,
                           const char *service, unsigned timeout_ms, tally_arg_t *ta)
{
    check_req_t req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;

    req.service = (char *)service;
    return im_rpc_call(c, sd, 0, &req.base, timeout_ms, NULL, 0, tally_cb, ta);
}

/* Sync Check of `service` via sd; returns the code, *status gets the response
 * status (-1 when there is no response), msg the status message. */
static im_rpc_code_t check_sync(im_rpc_client_t *c, const ProtobufCServiceDescriptor *sd,
                                const char *service, unsigned timeout_ms, const im_rpc_md_t *md,
                                size_t n_md, int *status, char *msg, size_t msg_size)
{
    check_req_t req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp;
    im_rpc_code_t code;

    req.service = (char *)service;
    code = im_rpc_call_sync(c, sd, 0, &req.base, timeout_ms, md, n_md, &resp, msg, msg_size);
    *status = resp != NULL ? (int)((check_resp_t *)resp)->status : -1;
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    return code;
}

/* A server with the Health and test.Slow services on an ephemeral port. */
static im_rpc_server_t *test_server(unsigned workers, unsigned *port)
{
    im_rpc_server_t *s = im_rpc_server_new("127.0.0.1:0", 2, workers);

    if (im_rpc_server_add_service(s, health, health_methods, NULL) != IM_OK ||
        im_rpc_server_add_service(s, &slow_service, slow_methods, NULL) != IM_OK ||
        im_rpc_server_start(s, port) != IM_OK) {
        im_rpc_server_free(s);
        return NULL;
    }
    return s;
}

/* ---------------------------------------------------------------- tests */

TEST(error_mapping_both_ways)
{
    static const struct {
        im_err_t err;
        im_rpc_code_t code;
    } pairs[] = {
        {IM_OK, IM_RPC_OK},
        {IM_EINVAL, IM_RPC_INVALID_ARGUMENT},
        {IM_ENOENT, IM_RPC_NOT_FOUND},
        {IM_EEXIST, IM_RPC_ALREADY_EXISTS},
        {IM_EPERM, IM_RPC_PERMISSION_DENIED},
        {IM_EAUTH, IM_RPC_UNAUTHENTICATED},
        {IM_EUNAVAIL, IM_RPC_UNAVAILABLE},
        {IM_ETIMEDOUT, IM_RPC_DEADLINE_EXCEEDED},
        {IM_EFULL, IM_RPC_RESOURCE_EXHAUSTED},
    };
    size_t i;

    for (i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        ASSERT_EQ(im_rpc_code_from_err(pairs[i].err), pairs[i].code);
        ASSERT_EQ(im_rpc_code_to_err(pairs[i].code), pairs[i].err);
    }
    ASSERT_EQ(im_rpc_code_from_err(IM_EIO), IM_RPC_INTERNAL);
    ASSERT_EQ(im_rpc_code_from_err(IM_EPARSE), IM_RPC_INTERNAL);
    ASSERT_EQ(im_rpc_code_to_err(IM_RPC_CANCELLED), IM_ECLOSED);
    ASSERT_EQ(im_rpc_code_to_err(IM_RPC_INTERNAL), IM_EIO);
    ASSERT_STR_EQ(im_rpc_code_name(IM_RPC_DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
    ASSERT_STR_EQ(im_rpc_code_name((im_rpc_code_t)99), "?");
}

TEST(server_setup_errors)
{
    /* 192.0.2.1 is TEST-NET-1: never a local address, so binding it fails. */
    im_rpc_server_t *s = im_rpc_server_new("192.0.2.1:0", 1, 0);

    ASSERT_EQ(im_rpc_server_add_service(s, &slow_service, slow_methods, NULL), IM_EINVAL);
    ASSERT_EQ(im_rpc_server_add_service(s, health, health_methods, NULL), IM_OK);
    ASSERT_EQ(im_rpc_server_add_service(s, health, health_methods, NULL), IM_EEXIST);
    ASSERT_EQ(im_rpc_server_start(s, NULL), IM_EIO);
    im_rpc_server_free(s);
}

TEST(check_ok)
{
    char msg[128];
    int status;

    ASSERT_EQ(check_sync(client, health, "", 2000, NULL, 0, &status, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_EQ(status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    ASSERT_STR_EQ(msg, "");
}

TEST(handler_failure_reaches_client)
{
    char msg[128];
    int status;

    ASSERT_EQ(check_sync(client, health, "missing", 2000, NULL, 0, &status, msg, sizeof(msg)),
              IM_RPC_NOT_FOUND);
    ASSERT_EQ(status, -1);
    ASSERT_STR_EQ(msg, "no service named missing");
}

TEST(metadata_peer_and_deadline_reach_handler)
{
    static const im_rpc_md_t md[] = {{"x-request-id", "r-17"}, {"authorization", "Bearer t0k3n"}};
    uint64_t before = im_mono_ms();
    char msg[128], auth[64], peer[64];
    uint64_t deadline_ms;
    int status;

    ASSERT_EQ(check_sync(client, health, "whoami", 3000, md, 2, &status, msg, sizeof(msg)),
              IM_RPC_OK);
    /* Copied out so a failed assertion does not leave the lock held. */
    pthread_mutex_lock(&seen_lock);
    snprintf(auth, sizeof(auth), "%s", seen_auth ? seen_auth : "(none)");
    snprintf(peer, sizeof(peer), "%s", seen_peer ? seen_peer : "(none)");
    deadline_ms = seen_deadline_ms;
    pthread_mutex_unlock(&seen_lock);
    ASSERT_STR_EQ(auth, "Bearer t0k3n");
    ASSERT_EQ(strncmp(peer, "ipv4:127.0.0.1:", 15), 0);
    /* The server dates the deadline from its own receipt of the call, so it
     * can be a few ms later than the client's. */
    ASSERT_GT(deadline_ms, before + 2000);
    ASSERT_LE(deadline_ms, im_mono_ms() + 3000 + 100);
}

TEST(unknown_method_is_unimplemented_at_once)
{
    uint64_t t0 = im_mono_ms();
    char msg[128];
    int status;

    ASSERT_EQ(check_sync(client, &nope_service, "", 5000, NULL, 0, &status, msg, sizeof(msg)),
              IM_RPC_UNIMPLEMENTED);
    ASSERT_LT(im_mono_ms() - t0, 1000);
    ASSERT_STR_EQ(msg, "unknown method /test.Nope/Check");
}

TEST(garbage_request_is_invalid_argument)
{
    check_resp_t req = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    ProtobufCMessage *resp;
    char msg[128];

    req.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    ASSERT_EQ(im_rpc_call_sync(client, &garbage_service, 0, &req.base, 2000, NULL, 0, &resp, msg,
                               sizeof(msg)),
              IM_RPC_INVALID_ARGUMENT);
    ASSERT_NULL(resp);
    ASSERT_STR_EQ(msg, "request is not a valid grpc.health.v1.HealthCheckRequest");
}

TEST(reply_of_wrong_type_is_internal)
{
    char msg[128];
    int status;

    ASSERT_EQ(check_sync(client, health, "wrongtype", 2000, NULL, 0, &status, msg, sizeof(msg)),
              IM_RPC_INTERNAL);
}

TEST(bad_call_arguments_are_refused)
{
    check_req_t req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    check_resp_t other = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    static const im_rpc_md_t bad_key[] = {{"Bad Key", "v"}};
    static const im_rpc_md_t bad_value[] = {{"k", "line\nbreak"}};

    ASSERT_EQ(im_rpc_call(client, health, 0, &req.base, 0, NULL, 0, tally_cb, NULL), IM_EINVAL);
    ASSERT_EQ(im_rpc_call(client, health, 1, &req.base, 100, NULL, 0, tally_cb, NULL), IM_EINVAL);
    ASSERT_EQ(im_rpc_call(client, health, 0, &other.base, 100, NULL, 0, tally_cb, NULL), IM_EINVAL);
    ASSERT_EQ(im_rpc_call(client, health, 0, &req.base, 100, bad_key, 1, tally_cb, NULL),
              IM_EINVAL);
    ASSERT_EQ(im_rpc_call(client, health, 0, &req.base, 100, bad_value, 1, tally_cb, NULL),
              IM_EINVAL);
}

TEST(deadline_exceeded_then_late_reply_is_released)
{
    uint64_t t0 = im_mono_ms(), elapsed;
    char msg[128];
    int status;

    ASSERT_EQ(check_sync(client, health, "late", 100, NULL, 0, &status, msg, sizeof(msg)),
              IM_RPC_DEADLINE_EXCEEDED);
    elapsed = im_mono_ms() - t0;
    ASSERT_GE(elapsed, 95);
    ASSERT_LT(elapsed, 1000);
    ASSERT_EQ(wait_seen(&n_parked, 1), 1);
    reply_parked(); /* the server must free the expired call; ASan and stop check it */
    ASSERT_EQ(check_sync(client, health, "", 2000, NULL, 0, &status, msg, sizeof(msg)), IM_RPC_OK);
}

TEST(blocking_handlers_do_not_stall_the_cq)
{
    tally_t t;
    tally_arg_t args[32];
    uint64_t t0 = im_mono_ms(), elapsed;
    unsigned i, slow_done;
    char msg[128];
    int status;

    tally_init(&t);
    for (i = 0; i < 32; i++) {
        args[i] = (tally_arg_t){&t, i};
        ASSERT_EQ(call_check(client, &slow_service, "", 10000, &args[i]), IM_OK);
    }
    /* While the workers sleep, the CQ threads still answer a non-blocking call. */
    ASSERT_EQ(check_sync(client, health, "", 5000, NULL, 0, &status, msg, sizeof(msg)), IM_RPC_OK);
    pthread_mutex_lock(&t.lock);
    slow_done = t.n;
    pthread_mutex_unlock(&t.lock);
    ASSERT_LT(slow_done, 32);

    ASSERT_EQ(tally_wait(&t, 32, 10000), 32);
    elapsed = im_mono_ms() - t0;
    printf("     32 x %d ms blocking calls on %d workers: %" PRIu64 " ms (fast call after %u)\n",
           SLOW_MS, WORKERS, elapsed, slow_done);
    ASSERT_LT(elapsed, 20 * SLOW_MS);
    ASSERT_EQ(t.by_code[IM_RPC_OK], 32);
    tally_destroy(&t);
}

TEST(thousand_calls_64_in_flight_complete_once)
{
    static tally_t t;
    static tally_arg_t args[1000];
    uint64_t t0 = im_mono_ms(), elapsed;
    unsigned i;

    tally_init(&t);
    for (i = 0; i < 1000; i++) {
        ASSERT_GE(tally_wait(&t, i >= 64 ? i - 63 : 0, 10000), i >= 64 ? i - 63 : 0);
        args[i] = (tally_arg_t){&t, i};
        ASSERT_EQ(call_check(client, health, "", 10000, &args[i]), IM_OK);
    }
    ASSERT_EQ(tally_wait(&t, 1000, 10000), 1000);
    elapsed = im_mono_ms() - t0;
    usleep(20000); /* a duplicate callback would land now */
    pthread_mutex_lock(&t.lock);
    ASSERT_EQ(t.n, 1000);
    ASSERT_EQ(t.by_code[IM_RPC_OK], 1000);
    for (i = 0; i < 1000; i++)
        ASSERT_EQ(t.calls[i], 1);
    pthread_mutex_unlock(&t.lock);
    printf("     1000 calls, 64 in flight: %" PRIu64 " ms (%.0f calls/s)\n", elapsed,
           1000.0 * 1000.0 / (double)(elapsed ? elapsed : 1));
    tally_destroy(&t);
}

TEST(server_down_fails_within_timeout)
{
    unsigned port;
    im_rpc_server_t *s = test_server(1, &port);
    im_rpc_client_t *c;
    char addr[64], msg[128];
    uint64_t t0;
    im_rpc_code_t code;
    int status;

    ASSERT_NOT_NULL(s);
    im_rpc_server_free(s); /* the port is now closed */
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
    c = im_rpc_client_new(addr);
    t0 = im_mono_ms();
    code = check_sync(c, health, "", 500, NULL, 0, &status, msg, sizeof(msg));
    ASSERT_LT(im_mono_ms() - t0, 1500);
    ASSERT_TRUE(code == IM_RPC_UNAVAILABLE || code == IM_RPC_DEADLINE_EXCEEDED);
    im_rpc_client_free(c);
}

TEST(client_free_cancels_calls_in_flight)
{
    im_rpc_client_t *c = im_rpc_client_new(target);
    tally_t t;
    tally_arg_t args[8];
    unsigned i;

    tally_init(&t);
    for (i = 0; i < 8; i++) {
        args[i] = (tally_arg_t){&t, i};
        ASSERT_EQ(call_check(c, health, "late", 10000, &args[i]), IM_OK);
    }
    ASSERT_EQ(wait_seen(&n_parked, 8), 8);
    im_rpc_client_free(c);
    ASSERT_EQ(t.n, 8);
    ASSERT_EQ(t.by_code[IM_RPC_CANCELLED], 8);
    for (i = 0; i < 8; i++)
        ASSERT_EQ(t.calls[i], 1);
    reply_parked(); /* replies to cancelled calls: discarded, calls released */
    tally_destroy(&t);
}

/* Every call has reached a handler before the stop: a call the server has not
 * matched yet (still in flight from the client, or waiting in gRPC's queue for
 * a requested call) is refused UNAVAILABLE by gRPC's shutdown, so waiting for
 * only one started handler made this test race the client under load. */
TEST(graceful_stop_lets_calls_finish)
{
    unsigned port;
    im_rpc_server_t *s = test_server(4, &port);
    im_rpc_client_t *c;
    tally_t t;
    tally_arg_t args[4];
    unsigned i;

    ASSERT_NOT_NULL(s);
    snprintf(target, sizeof(target), "127.0.0.1:%u", port);
    c = im_rpc_client_new(target);
    tally_init(&t);
    pthread_mutex_lock(&seen_lock);
    slow_started = 0;
    pthread_mutex_unlock(&seen_lock);
    for (i = 0; i < 4; i++) {
        args[i] = (tally_arg_t){&t, i};
        ASSERT_EQ(call_check(c, &slow_service, "", 5000, &args[i]), IM_OK);
    }
    ASSERT_EQ(wait_seen(&slow_started, 4), 4);
    im_rpc_server_stop(s, 5000);
    ASSERT_EQ(tally_wait(&t, 4, 5000), 4);
    ASSERT_EQ(t.by_code[IM_RPC_OK], 4);
    im_rpc_server_free(s);
    im_rpc_client_free(c);
    tally_destroy(&t);
}

TEST(stop_cancels_calls_in_flight)
{
    unsigned port;
    im_rpc_server_t *s = test_server(2, &port);
    im_rpc_client_t *c;
    tally_t t;
    tally_arg_t args[16];
    uint64_t t0;
    unsigned i, ran;

    ASSERT_NOT_NULL(s);
    snprintf(target, sizeof(target), "127.0.0.1:%u", port);
    c = im_rpc_client_new(target);
    tally_init(&t);
    pthread_mutex_lock(&seen_lock);
    slow_started = 0;
    pthread_mutex_unlock(&seen_lock);
    for (i = 0; i < 16; i++) {
        args[i] = (tally_arg_t){&t, i};
        ASSERT_EQ(call_check(c, &slow_service, "", 5000, &args[i]), IM_OK);
    }
    ASSERT_GE(wait_seen(&slow_started, 1), 1);

    t0 = im_mono_ms();
    im_rpc_server_free(s);
    ASSERT_LT(im_mono_ms() - t0, 16 * SLOW_MS / 2); /* queued handlers were skipped */
    pthread_mutex_lock(&seen_lock);
    ran = slow_started;
    pthread_mutex_unlock(&seen_lock);
    ASSERT_LT(ran, 16);
    ASSERT_EQ(tally_wait(&t, 16, 5000), 16);
    for (i = 0; i < 16; i++)
        ASSERT_EQ(t.calls[i], 1);
    ASSERT_EQ(t.by_code[IM_RPC_OK] + t.by_code[IM_RPC_CANCELLED] + t.by_code[IM_RPC_UNAVAILABLE],
              16);
    im_rpc_client_free(c);
    tally_destroy(&t);
}

int main(void)
{
    unsigned port = 0;

    server = test_server(WORKERS, &port);
    if (server == NULL) {
        fprintf(stderr, "cannot start the test server\n");
        return 1;
    }
    snprintf(target, sizeof(target), "127.0.0.1:%u", port);
    client = im_rpc_client_new(target);

    RUN(error_mapping_both_ways);
    RUN(server_setup_errors);
    RUN(check_ok);
    RUN(handler_failure_reaches_client);
    RUN(metadata_peer_and_deadline_reach_handler);
    RUN(unknown_method_is_unimplemented_at_once);
    RUN(garbage_request_is_invalid_argument);
    RUN(reply_of_wrong_type_is_internal);
    RUN(bad_call_arguments_are_refused);
    RUN(deadline_exceeded_then_late_reply_is_released);
    RUN(blocking_handlers_do_not_stall_the_cq);
    RUN(thousand_calls_64_in_flight_complete_once);
    RUN(server_down_fails_within_timeout);
    RUN(client_free_cancels_calls_in_flight);

    im_rpc_client_free(client);
    reply_parked(); /* in case a test failed with calls still parked */
    im_rpc_server_free(server);
    im_free(seen_auth);
    im_free(seen_peer);

    /* These start their own servers and reuse `target`. */
    RUN(graceful_stop_lets_calls_finish);
    RUN(stop_cancels_calls_in_flight);
    return im_test_done();
}
