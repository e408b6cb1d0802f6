/*
 * im_rpc_io.c - the gRPC core adapter: every grpc_* call of the project is here.
 *
 * Each server call and each client call has exactly one batch in flight at a
 * time (server: the request notification, then one reply batch that sends
 * metadata, message and status and receives the close; client: one batch with
 * all six unary ops), so batches on one call never need serialising and the
 * completion of that batch is the one place the call is freed.
 */
#define _GNU_SOURCE /* pthread_setname_np: named threads in gdb, top -H, perf */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_queue.h"
#include "im_rpc.h"
#include "im_time.h"

#define IM__RPC_CODE_CHECK(name, val)                                                              \
    _Static_assert((int)IM_RPC_##name == (int)GRPC_STATUS_##name, "IM_RPC_" #name);
IM_RPC_CODE_MAP(IM__RPC_CODE_CHECK)
#undef IM__RPC_CODE_CHECK

/* Registered-call requests kept pending per method and completion queue: a
 * call arriving while none is pending waits inside gRPC until one is re-armed,
 * so this bounds how many calls of one method a CQ can accept back to back. */
#define PENDING_PER_METHOD 16

const char *im_rpc_code_name(im_rpc_code_t code)
{
    switch (code) {
#define IM__RPC_CODE_NAME(name, val)                                                               \
    case IM_RPC_##name:                                                                            \
        return #name;
        IM_RPC_CODE_MAP(IM__RPC_CODE_NAME)
#undef IM__RPC_CODE_NAME
    }
    return "?";
}

/* The pairs both directions share; errors outside it are INTERNAL one way and
 * codes outside it IM_EIO the other. */
#define ERR_CODE_PAIRS(X)                                                                          \
    X(IM_OK, OK)                                                                                   \
    X(IM_EINVAL, INVALID_ARGUMENT)                                                                 \
    X(IM_ENOENT, NOT_FOUND)                                                                        \
    X(IM_EEXIST, ALREADY_EXISTS)                                                                   \
    X(IM_EPERM, PERMISSION_DENIED)                                                                 \
    X(IM_EAUTH, UNAUTHENTICATED)                                                                   \
    X(IM_EUNAVAIL, UNAVAILABLE)                                                                    \
    X(IM_ETIMEDOUT, DEADLINE_EXCEEDED)                                                             \
    X(IM_EFULL, RESOURCE_EXHAUSTED)

im_rpc_code_t im_rpc_code_from_err(im_err_t err)
{
    switch (err) {
#define ERR_TO_CODE(e, c)                                                                          \
    case e:                                                                                        \
        return IM_RPC_##c;
        ERR_CODE_PAIRS(ERR_TO_CODE)
#undef ERR_TO_CODE
    }
    return IM_RPC_INTERNAL;
}

im_err_t im_rpc_code_to_err(im_rpc_code_t code)
{
    switch (code) {
#define CODE_TO_ERR(e, c)                                                                          \
    case IM_RPC_##c:                                                                               \
        return e;
        ERR_CODE_PAIRS(CODE_TO_ERR)
#undef CODE_TO_ERR
    case IM_RPC_CANCELLED:
        return IM_ECLOSED;
    default:
        return IM_EIO;
    }
}

/* ================================================================ shared helpers */

/* "/" + service full name + "/" + method name, the gRPC path.  im_free() it. */
static char *method_path(const ProtobufCServiceDescriptor *sd, unsigned method)
{
    size_t size = strlen(sd->name) + strlen(sd->methods[method].name) + 3;
    char *path = im_malloc(size);

    snprintf(path, size, "/%s/%s", sd->name, sd->methods[method].name);
    return path;
}

static grpc_byte_buffer *encode(const ProtobufCMessage *msg)
{
    grpc_slice slice = grpc_slice_malloc(protobuf_c_message_get_packed_size(msg));
    grpc_byte_buffer *bb;

    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
    bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return bb;
}

/* NULL when bb is NULL (no message was received) or does not parse as desc.
 * readall because a received message may be split over several slices or be
 * compressed.  Free the result with protobuf_c_message_free_unpacked(m, NULL). */
static ProtobufCMessage *decode(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc)
{
    grpc_byte_buffer_reader reader;
    grpc_slice slice;
    ProtobufCMessage *msg;

    if (bb == NULL || !grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    slice = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    msg = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(slice),
                                    GRPC_SLICE_START_PTR(slice));
    grpc_slice_unref(slice);
    return msg;
}

/* gRPC's own diagnostics (bind failures, transport errors) go through im_log,
 * so they share its format and sink.  GRPC_VERBOSITY still filters them first. */
static void grpc_log_cb(gpr_log_func_args *args)
{
    im_log_level_t level = args->severity == GPR_LOG_SEVERITY_ERROR  ? IM_LOG_ERROR
                           : args->severity == GPR_LOG_SEVERITY_INFO ? IM_LOG_INFO
                                                                     : IM_LOG_DEBUG;

    if (im_log_enabled(level))
        im__log(level, args->file, args->line, "grpc: %s", args->message);
}

static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void install_grpc_log(void)
{
    gpr_set_log_function(grpc_log_cb);
}

/* Every server and client holds one grpc_init() reference until it is freed. */
static void rpc_init(void)
{
    pthread_once(&log_once, install_grpc_log);
    grpc_init();
}

/* Thread creation failing at start-up is treated like allocation failure. */
static void start_thread(pthread_t *tid, void *(*fn)(void *), void *arg, const char *name)
{
    int rc = pthread_create(tid, NULL, fn, arg);

    if (rc != 0) {
        im_log_error("rpc: cannot start thread %s: %s", name, strerror(rc));
        abort();
    }
    pthread_setname_np(*tid, name);
}

/* ================================================================ server */

typedef struct {
    char *path;
    void *handle; /* from grpc_server_register_method */
    const ProtobufCMethodDescriptor *desc;
    im_rpc_handler_cb handler;
    bool blocking;
    void *arg;
} method_t;

typedef struct {
    im_rpc_server_t *server;
    grpc_completion_queue *cq;
    pthread_t thread;
} cq_thread_t;

/* Blocking handlers wait here for a worker.  Not an im_queue: that one hands a
 * whole batch to a single consumer, while here each call must go to whichever
 * worker is free, so workers pop one node at a time. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t nonempty;
    im_queue_node_t *head, **tail;
    bool stop;
    unsigned n_threads;
    pthread_t *threads;
} pool_t;

struct im_rpc_server_s {
    char *addr;
    grpc_server *server;
    cq_thread_t *cqs;
    unsigned n_cqs;
    pool_t pool;
    method_t *methods;
    size_t n_methods;
    bool started, stopped;  /* touched by the owner thread only */
    atomic_bool stopping;   /* shutdown began: stop re-arming requests */
    atomic_bool cancelling; /* grace is over: skip handlers not yet started */
    pthread_mutex_t lock;   /* guards n_live and shutdown_done */
    pthread_cond_t idle;    /* n_live reached 0 or the shutdown completed */
    size_t n_live;          /* allocated im_rpc_call_t, pending requests included */
    bool shutdown_done;
    char shutdown_tag; /* its address tags the shutdown notification */
};

typedef enum {
    CALL_REQUESTED, /* waiting in gRPC for an incoming call */
    CALL_FINISHING  /* the reply batch is in flight */
} call_state_t;

struct im_rpc_call_s {
    im_queue_node_t node;   /* in the worker pool while waiting for a worker */
    cq_thread_t *cqt;       /* the completion queue the call is bound to */
    const method_t *method; /* NULL: a path no service serves */
    call_state_t state;
    grpc_call *call;
    grpc_metadata_array md;
    gpr_timespec deadline;
    grpc_byte_buffer *payload;
    grpc_call_details details; /* for unserved paths only */
    ProtobufCMessage *request;
    uint64_t deadline_ms;
    char *peer; /* gpr_malloc'd, fetched on first use */
    grpc_byte_buffer *response;
    int cancelled; /* RECV_CLOSE_ON_SERVER must write somewhere; not acted on */
};

static void call_finish(im_rpc_call_t *call, grpc_status_code code, const char *msg,
                        grpc_byte_buffer *response);

/* ---------------------------------------------------------------- worker pool */

static void pool_push(pool_t *p, im_queue_node_t *node)
{
    node->next = NULL;
    pthread_mutex_lock(&p->lock);
    *p->tail = node;
    p->tail = &node->next;
    pthread_cond_signal(&p->nonempty);
    pthread_mutex_unlock(&p->lock);
}

/* Blocks until a node is queued; NULL once the pool is stopping and empty. */
static im_queue_node_t *pool_pop(pool_t *p)
{
    im_queue_node_t *node;

    pthread_mutex_lock(&p->lock);
    while (p->head == NULL && !p->stop)
        pthread_cond_wait(&p->nonempty, &p->lock);
    node = p->head;
    if (node != NULL) {
        p->head = node->next;
        if (p->head == NULL)
            p->tail = &p->head;
    }
    pthread_mutex_unlock(&p->lock);
    return node;
}

static void *worker_main(void *arg)
{
    im_rpc_server_t *s = arg;
    im_queue_node_t *node;

    while ((node = pool_pop(&s->pool)) != NULL) {
        im_rpc_call_t *call = IM_QUEUE_ENTRY(node, im_rpc_call_t, node);

        if (atomic_load(&s->cancelling))
            call_finish(call, GRPC_STATUS_UNAVAILABLE, "server shutting down", NULL);
        else
            call->method->handler(call, call->method->arg);
    }
    return NULL;
}

static void pool_start(im_rpc_server_t *s, unsigned n_threads)
{
    pool_t *p = &s->pool;
    unsigned i;

    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->nonempty, NULL);
    p->tail = &p->head;
    p->n_threads = n_threads;
    p->threads = im_calloc(n_threads ? n_threads : 1, sizeof(*p->threads));
    for (i = 0; i < n_threads; i++)
        start_thread(&p->threads[i], worker_main, s, "rpc-worker");
}

/* Joins the workers once they have emptied the queue. */
static void pool_stop(pool_t *p)
{
    unsigned i;

    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->nonempty);
    pthread_mutex_unlock(&p->lock);
    for (i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    im_free(p->threads);
    pthread_cond_destroy(&p->nonempty);
    pthread_mutex_destroy(&p->lock);
}

/* ---------------------------------------------------------------- call lifecycle */

static im_rpc_call_t *call_new(cq_thread_t *cqt, const method_t *method)
{
    im_rpc_server_t *s = cqt->server;
    im_rpc_call_t *call = im_calloc(1, sizeof(*call));

    call->cqt = cqt;
    call->method = method;
    call->state = CALL_REQUESTED;
    grpc_metadata_array_init(&call->md);
    grpc_call_details_init(&call->details);
    pthread_mutex_lock(&s->lock);
    s->n_live++;
    pthread_mutex_unlock(&s->lock);
    return call;
}

static void call_free(im_rpc_call_t *call)
{
    im_rpc_server_t *s = call->cqt->server;

    if (call->request != NULL)
        protobuf_c_message_free_unpacked(call->request, NULL);
    if (call->payload != NULL)
        grpc_byte_buffer_destroy(call->payload);
    if (call->response != NULL)
        grpc_byte_buffer_destroy(call->response);
    grpc_metadata_array_destroy(&call->md);
    grpc_call_details_destroy(&call->details);
    gpr_free(call->peer);
    if (call->call != NULL)
        grpc_call_unref(call->call);
    im_free(call);

    pthread_mutex_lock(&s->lock);
    if (--s->n_live == 0)
        pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->lock);
}

/* Arms one request for the next incoming call of method (NULL: of any path no
 * service serves) on cqt's completion queue. */
static void request_call(cq_thread_t *cqt, const method_t *method)
{
    grpc_server *server = cqt->server->server;
    im_rpc_call_t *call = call_new(cqt, method);
    grpc_call_error err;

    if (method != NULL)
        err = grpc_server_request_registered_call(server, method->handle, &call->call,
                                                  &call->deadline, &call->md, &call->payload,
                                                  cqt->cq, cqt->cq, call);
    else
        err = grpc_server_request_call(server, &call->call, &call->details, &call->md, cqt->cq,
                                       cqt->cq, call);
    if (err != GRPC_CALL_OK) {
        im_log_error("rpc: cannot request calls of %s: %s", method ? method->path : "(any)",
                     grpc_call_error_to_string(err));
        call_free(call);
    }
}

/* Starts the one reply batch; its completion frees the call.  Sending initial
 * metadata explicitly keeps the reply shape identical for OK and errors. */
static void call_finish(im_rpc_call_t *call, grpc_status_code code, const char *msg,
                        grpc_byte_buffer *response)
{
    grpc_slice details = grpc_slice_from_copied_string(msg != NULL ? msg : "");
    grpc_op ops[4] = {{.op = GRPC_OP_SEND_INITIAL_METADATA}};
    size_t n = 1;
    grpc_call_error err;

    if (response != NULL)
        ops[n++] =
            (grpc_op){.op = GRPC_OP_SEND_MESSAGE, .data.send_message.send_message = response};
    ops[n++] = (grpc_op){.op = GRPC_OP_SEND_STATUS_FROM_SERVER,
                         .data.send_status_from_server = {
                             .status = code,
                             .status_details = msg != NULL ? &details : NULL,
                         }};
    ops[n++] = (grpc_op){.op = GRPC_OP_RECV_CLOSE_ON_SERVER,
                         .data.recv_close_on_server.cancelled = &call->cancelled};

    call->response = response;
    call->state = CALL_FINISHING; /* before the batch: it may complete at once */
    err = grpc_call_start_batch(call->call, ops, n, call, NULL);
    grpc_slice_unref(details);
    if (err != GRPC_CALL_OK) {
        im_log_error("rpc %s: cannot send the reply: %s",
                     call->method ? call->method->path : "(unserved)",
                     grpc_call_error_to_string(err));
        call_free(call);
    }
}

/* gRPC's monotonic clock has its own origin, so convert through "time left". */
static uint64_t deadline_to_mono_ms(gpr_timespec deadline)
{
    gpr_timespec now, left;

    if (deadline.tv_sec == INT64_MAX)
        return UINT64_MAX;
    now = gpr_now(deadline.clock_type);
    if (gpr_time_cmp(deadline, now) <= 0)
        return im_mono_ms();
    left = gpr_time_sub(deadline, now);
    return im_mono_ms() + (uint64_t)left.tv_sec * 1000u + (uint64_t)left.tv_nsec / 1000000u;
}

static void call_reject_unserved(im_rpc_call_t *call)
{
    grpc_slice path = call->details.method;
    char msg[256];

    snprintf(msg, sizeof(msg), "unknown method %.*s", (int)GRPC_SLICE_LENGTH(path),
             (const char *)GRPC_SLICE_START_PTR(path));
    call_finish(call, GRPC_STATUS_UNIMPLEMENTED, msg, NULL);
}

/* A call arrived: decode it and run or queue its handler. */
static void call_begin(im_rpc_call_t *call)
{
    const method_t *m = call->method;
    char msg[256];

    if (m == NULL) {
        call_reject_unserved(call);
        return;
    }
    call->deadline_ms = deadline_to_mono_ms(call->deadline);
    call->request = decode(call->payload, m->desc->input);
    grpc_byte_buffer_destroy(call->payload); /* not needed while the handler runs */
    call->payload = NULL;
    if (call->request == NULL) {
        snprintf(msg, sizeof(msg), "request is not a valid %s", m->desc->input->name);
        call_finish(call, GRPC_STATUS_INVALID_ARGUMENT, msg, NULL);
        return;
    }
    if (m->blocking)
        pool_push(&call->cqt->server->pool, &call->node);
    else
        m->handler(call, m->arg);
}

static void server_event(cq_thread_t *cqt, void *tag, bool ok)
{
    im_rpc_server_t *s = cqt->server;
    im_rpc_call_t *call = tag;

    if (tag == &s->shutdown_tag) {
        pthread_mutex_lock(&s->lock);
        s->shutdown_done = true;
        pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->lock);
        return;
    }
    /* !ok on a request: the server is shutting down.  On a reply batch it
     * means the client is gone; either way the call is over. */
    if (call->state == CALL_FINISHING || !ok) {
        call_free(call);
        return;
    }
    if (!atomic_load(&s->stopping))
        request_call(cqt, call->method);
    call_begin(call);
}

static void *cq_main(void *arg)
{
    cq_thread_t *cqt = arg;

    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(cqt->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);

        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            server_event(cqt, ev.tag, ev.success != 0);
    }
    return NULL;
}

/* ---------------------------------------------------------------- server API */

im_rpc_server_t *im_rpc_server_new(const char *addr, unsigned n_cq_threads, unsigned n_workers)
{
    im_rpc_server_t *s = im_calloc(1, sizeof(*s));
    pthread_condattr_t attr;
    unsigned i;

    rpc_init();
    s->addr = im_strdup(addr);
    s->server = grpc_server_create(NULL, NULL);
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->idle, &attr);
    pthread_condattr_destroy(&attr);

    s->n_cqs = n_cq_threads ? n_cq_threads : 1;
    s->cqs = im_calloc(s->n_cqs, sizeof(*s->cqs));
    for (i = 0; i < s->n_cqs; i++) {
        s->cqs[i].server = s;
        s->cqs[i].cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(s->server, s->cqs[i].cq, NULL);
        start_thread(&s->cqs[i].thread, cq_main, &s->cqs[i], "rpc-cq");
    }
    pool_start(s, n_workers);
    return s;
}

static bool path_is_served(const im_rpc_server_t *s, const char *path)
{
    size_t i;

    for (i = 0; i < s->n_methods; i++)
        if (strcmp(s->methods[i].path, path) == 0)
            return true;
    return false;
}

/* Checks the whole table before registering anything, so a refused service
 * leaves no half-registered methods behind. */
static im_err_t check_service(const im_rpc_server_t *s, const ProtobufCServiceDescriptor *sd,
                              const im_rpc_method_t *methods)
{
    im_err_t err = IM_OK;
    unsigned i;

    if (s->started || s->stopped)
        return IM_EINVAL;
    for (i = 0; i < sd->n_methods && err == IM_OK; i++) {
        char *path;

        if (methods[i].handler == NULL)
            continue;
        if (methods[i].blocking && s->pool.n_threads == 0)
            return IM_EINVAL;
        path = method_path(sd, i);
        if (path_is_served(s, path))
            err = IM_EEXIST;
        im_free(path);
    }
    return err;
}

im_err_t im_rpc_server_add_service(im_rpc_server_t *s, const ProtobufCServiceDescriptor *sd,
                                   const im_rpc_method_t *methods, void *arg)
{
    im_err_t err = check_service(s, sd, methods);
    unsigned i;

    if (err != IM_OK)
        return err;
    s->methods = im_realloc(s->methods, (s->n_methods + sd->n_methods) * sizeof(*s->methods));
    for (i = 0; i < sd->n_methods; i++) {
        method_t *m = &s->methods[s->n_methods];

        if (methods[i].handler == NULL)
            continue;
        m->path = method_path(sd, i);
        m->handle = grpc_server_register_method(s->server, m->path, NULL,
                                                GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        m->desc = &sd->methods[i];
        m->handler = methods[i].handler;
        m->blocking = methods[i].blocking;
        m->arg = arg;
        s->n_methods++;
    }
    return IM_OK;
}

im_err_t im_rpc_server_start(im_rpc_server_t *s, unsigned *port)
{
    grpc_server_credentials *creds;
    int bound;
    unsigned i, k;
    size_t m;

    if (s->started || s->stopped)
        return IM_EINVAL;
    creds = grpc_insecure_server_credentials_create();
    bound = grpc_server_add_http2_port(s->server, s->addr, creds);
    grpc_server_credentials_release(creds);
    if (bound <= 0) {
        im_log_error("rpc: cannot listen on %s", s->addr);
        return IM_EIO;
    }
    grpc_server_start(s->server);
    s->started = true;
    for (i = 0; i < s->n_cqs; i++) {
        for (m = 0; m < s->n_methods; m++)
            for (k = 0; k < PENDING_PER_METHOD; k++)
                request_call(&s->cqs[i], &s->methods[m]);
        request_call(&s->cqs[i], NULL);
    }
    if (port != NULL)
        *port = (unsigned)bound;
    return IM_OK;
}

/* Waits until the shutdown completed and every call is released, for at most
 * timeout_ms (UINT64_MAX: no limit).  Returns whether that happened. */
static bool wait_idle(im_rpc_server_t *s, uint64_t timeout_ms)
{
    uint64_t deadline_ns = im_mono_ns() + timeout_ms * 1000000u;
    struct timespec ts = {(time_t)(deadline_ns / 1000000000u), (long)(deadline_ns % 1000000000u)};
    bool idle;

    pthread_mutex_lock(&s->lock);
    while (!(s->shutdown_done && s->n_live == 0)) {
        if (timeout_ms == UINT64_MAX)
            pthread_cond_wait(&s->idle, &s->lock);
        else if (pthread_cond_timedwait(&s->idle, &s->lock, &ts) == ETIMEDOUT)
            break;
    }
    idle = s->shutdown_done && s->n_live == 0;
    pthread_mutex_unlock(&s->lock);
    return idle;
}

void im_rpc_server_stop(im_rpc_server_t *s, unsigned grace_ms)
{
    if (s->stopped)
        return;
    s->stopped = true;
    atomic_store(&s->stopping, true);
    grpc_server_shutdown_and_notify(s->server, s->cqs[0].cq, &s->shutdown_tag);
    if (wait_idle(s, grace_ms))
        return;
    atomic_store(&s->cancelling, true);
    grpc_server_cancel_all_calls(s->server);
    wait_idle(s, UINT64_MAX);
}

void im_rpc_server_free(im_rpc_server_t *s)
{
    unsigned i;
    size_t m;

    if (s == NULL)
        return;
    im_rpc_server_stop(s, 0);
    grpc_server_destroy(s->server);
    pool_stop(&s->pool);
    for (i = 0; i < s->n_cqs; i++)
        grpc_completion_queue_shutdown(s->cqs[i].cq);
    for (i = 0; i < s->n_cqs; i++) {
        pthread_join(s->cqs[i].thread, NULL);
        grpc_completion_queue_destroy(s->cqs[i].cq);
    }
    for (m = 0; m < s->n_methods; m++)
        im_free(s->methods[m].path);
    im_free(s->methods);
    im_free(s->cqs);
    im_free(s->addr);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->lock);
    im_free(s);
    grpc_shutdown();
}

/* ---------------------------------------------------------------- call API */

const ProtobufCMessage *im_rpc_call_request(const im_rpc_call_t *call)
{
    return call->request;
}

const char *im_rpc_call_peer(im_rpc_call_t *call)
{
    if (call->peer == NULL)
        call->peer = grpc_call_get_peer(call->call);
    return call->peer;
}

uint64_t im_rpc_call_deadline_ms(const im_rpc_call_t *call)
{
    return call->deadline_ms;
}

const char *im_rpc_call_metadata(const im_rpc_call_t *call, const char *key, size_t *len)
{
    size_t i;

    for (i = 0; i < call->md.count; i++) {
        const grpc_metadata *md = &call->md.metadata[i];

        if (grpc_slice_str_cmp(md->key, key) == 0) {
            *len = GRPC_SLICE_LENGTH(md->value);
            return (const char *)GRPC_SLICE_START_PTR(md->value);
        }
    }
    return NULL;
}

char *im_rpc_call_metadata_dup(const im_rpc_call_t *call, const char *key)
{
    size_t len;
    const char *value = im_rpc_call_metadata(call, key, &len);

    return value != NULL ? im_strndup(value, len) : NULL;
}

void im_rpc_reply(im_rpc_call_t *call, const ProtobufCMessage *resp)
{
    const ProtobufCMessageDescriptor *want = call->method->desc->output;

    if (resp == NULL || resp->descriptor != want) {
        im_log_error("rpc %s: handler replied with %s instead of %s", call->method->path,
                     resp != NULL ? resp->descriptor->name : "NULL", want->name);
        call_finish(call, GRPC_STATUS_INTERNAL, "server replied with the wrong type", NULL);
        return;
    }
    call_finish(call, GRPC_STATUS_OK, NULL, encode(resp));
}

void im_rpc_fail(im_rpc_call_t *call, im_rpc_code_t code, const char *msg)
{
    if (code == IM_RPC_OK) {
        im_log_error("rpc %s: im_rpc_fail with OK, sending UNKNOWN", call->method->path);
        code = IM_RPC_UNKNOWN;
    }
    call_finish(call, (grpc_status_code)code, msg, NULL);
}

/* ================================================================ client */

typedef struct client_call_s client_call_t;

struct im_rpc_client_s {
    grpc_channel *channel;
    grpc_completion_queue *cq;
    pthread_t thread;
    pthread_mutex_t lock;    /* guards the three fields below */
    pthread_cond_t idle;     /* n_inflight reached 0 */
    client_call_t *inflight; /* started calls whose callback has not returned */
    size_t n_inflight;
    bool closing;
};

struct client_call_s {
    client_call_t *prev, *next; /* in client->inflight */
    im_rpc_client_t *client;
    grpc_call *call;
    const ProtobufCMessageDescriptor *output;
    im_rpc_done_cb done;
    void *arg;
    grpc_metadata *md; /* our copies of the request metadata */
    size_t n_md;
    grpc_byte_buffer *request, *response;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status;
    grpc_slice details;
};

static void client_call_free(client_call_t *cc)
{
    size_t i;

    for (i = 0; i < cc->n_md; i++) {
        grpc_slice_unref(cc->md[i].key);
        grpc_slice_unref(cc->md[i].value);
    }
    im_free(cc->md);
    if (cc->request != NULL)
        grpc_byte_buffer_destroy(cc->request);
    if (cc->response != NULL)
        grpc_byte_buffer_destroy(cc->response);
    grpc_metadata_array_destroy(&cc->initial_md);
    grpc_metadata_array_destroy(&cc->trailing_md);
    grpc_slice_unref(cc->details);
    if (cc->call != NULL)
        grpc_call_unref(cc->call);
    im_free(cc);
}

/* Under c->lock. */
static void inflight_unlink(im_rpc_client_t *c, client_call_t *cc)
{
    if (cc->prev != NULL)
        cc->prev->next = cc->next;
    else
        c->inflight = cc->next;
    if (cc->next != NULL)
        cc->next->prev = cc->prev;
    if (--c->n_inflight == 0)
        pthread_cond_broadcast(&c->idle);
}

static void client_event(client_call_t *cc, bool ok)
{
    im_rpc_client_t *c = cc->client;
    im_rpc_result_t res = {(im_rpc_code_t)cc->status, NULL, NULL};
    char *msg =
        im_strndup((const char *)GRPC_SLICE_START_PTR(cc->details), GRPC_SLICE_LENGTH(cc->details));
    char bad[256];

    res.message = msg;
    if (!ok) { /* gRPC documents the status batch as always succeeding */
        res.code = IM_RPC_INTERNAL;
        res.message = "call batch failed";
    } else if (res.code == IM_RPC_OK) {
        res.resp = decode(cc->response, cc->output);
        if (res.resp == NULL) {
            snprintf(bad, sizeof(bad), "response is not a valid %s", cc->output->name);
            res.code = IM_RPC_INTERNAL;
            res.message = bad;
        }
    }
    cc->done(cc->arg, &res);
    if (res.resp != NULL)
        protobuf_c_message_free_unpacked(res.resp, NULL);
    im_free(msg);

    /* Unlinked only now, so im_rpc_client_free returns after every callback
     * and can still cancel this call until then. */
    pthread_mutex_lock(&c->lock);
    inflight_unlink(c, cc);
    pthread_mutex_unlock(&c->lock);
    client_call_free(cc);
}

static void *client_main(void *arg)
{
    im_rpc_client_t *c = arg;

    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);

        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE)
            client_event(ev.tag, ev.success != 0);
    }
    return NULL;
}

im_rpc_client_t *im_rpc_client_new(const char *target)
{
    im_rpc_client_t *c = im_calloc(1, sizeof(*c));
    grpc_channel_credentials *creds;

    rpc_init();
    creds = grpc_insecure_credentials_create();
    c->channel = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    c->cq = grpc_completion_queue_create_for_next(NULL);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->idle, NULL);
    start_thread(&c->thread, client_main, c, "rpc-client");
    return c;
}

void im_rpc_client_free(im_rpc_client_t *c)
{
    client_call_t *cc;

    if (c == NULL)
        return;
    pthread_mutex_lock(&c->lock);
    c->closing = true;
    /* Under the lock: a listed call is not yet unref'd (client_event unlinks
     * before it frees), so cancelling it is safe. */
    for (cc = c->inflight; cc != NULL; cc = cc->next)
        grpc_call_cancel(cc->call, NULL);
    while (c->n_inflight > 0)
        pthread_cond_wait(&c->idle, &c->lock);
    pthread_mutex_unlock(&c->lock);

    grpc_channel_destroy(c->channel);
    grpc_completion_queue_shutdown(c->cq);
    pthread_join(c->thread, NULL);
    grpc_completion_queue_destroy(c->cq);
    pthread_cond_destroy(&c->idle);
    pthread_mutex_destroy(&c->lock);
    im_free(c);
    grpc_shutdown();
}

static bool metadata_is_legal(const im_rpc_md_t *md, size_t n_md)
{
    size_t i;

    for (i = 0; i < n_md; i++) {
        grpc_slice key = grpc_slice_from_static_string(md[i].key);
        grpc_slice value = grpc_slice_from_static_string(md[i].value);

        if (!grpc_header_key_is_legal(key) ||
            (!grpc_is_binary_header(key) && !grpc_header_nonbin_value_is_legal(value)))
            return false;
    }
    return true;
}

static client_call_t *client_call_new(im_rpc_client_t *c, const ProtobufCMethodDescriptor *m,
                                      const ProtobufCMessage *req, const im_rpc_md_t *md,
                                      size_t n_md, im_rpc_done_cb done, void *arg)
{
    client_call_t *cc = im_calloc(1, sizeof(*cc));
    size_t i;

    cc->client = c;
    cc->output = m->output;
    cc->done = done;
    cc->arg = arg;
    cc->md = im_calloc(n_md ? n_md : 1, sizeof(*cc->md));
    for (i = 0; i < n_md; i++) {
        cc->md[i].key = grpc_slice_from_copied_string(md[i].key);
        cc->md[i].value = grpc_slice_from_copied_string(md[i].value);
    }
    cc->n_md = n_md;
    cc->request = encode(req);
    grpc_metadata_array_init(&cc->initial_md);
    grpc_metadata_array_init(&cc->trailing_md);
    cc->status = GRPC_STATUS_UNKNOWN;
    cc->details = grpc_empty_slice();
    return cc;
}

static grpc_call_error client_call_start(client_call_t *cc)
{
    grpc_op ops[] = {
        {.op = GRPC_OP_SEND_INITIAL_METADATA,
         .data.send_initial_metadata = {.count = cc->n_md, .metadata = cc->md}},
        {.op = GRPC_OP_SEND_MESSAGE, .data.send_message.send_message = cc->request},
        {.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT},
        {.op = GRPC_OP_RECV_INITIAL_METADATA,
         .data.recv_initial_metadata.recv_initial_metadata = &cc->initial_md},
        {.op = GRPC_OP_RECV_MESSAGE, .data.recv_message.recv_message = &cc->response},
        {.op = GRPC_OP_RECV_STATUS_ON_CLIENT,
         .data.recv_status_on_client = {.trailing_metadata = &cc->trailing_md,
                                        .status = &cc->status,
                                        .status_details = &cc->details}},
    };

    return grpc_call_start_batch(cc->call, ops, sizeof(ops) / sizeof(ops[0]), cc, NULL);
}

im_err_t im_rpc_call(im_rpc_client_t *c, const ProtobufCServiceDescriptor *sd, unsigned method,
                     const ProtobufCMessage *req, unsigned timeout_ms, const im_rpc_md_t *md,
                     size_t n_md, im_rpc_done_cb done, void *arg)
{
    gpr_timespec deadline;
    client_call_t *cc;
    grpc_call_error gerr;
    char *path;
    grpc_slice path_slice;

    if (timeout_ms == 0 || method >= sd->n_methods || req == NULL ||
        req->descriptor != sd->methods[method].input || !metadata_is_legal(md, n_md))
        return IM_EINVAL;
    cc = client_call_new(c, &sd->methods[method], req, md, n_md, done, arg);
    path = method_path(sd, method);
    path_slice = grpc_slice_from_copied_string(path);
    im_free(path);
    deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
    cc->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq,
                                        path_slice, NULL, deadline, NULL);
    grpc_slice_unref(path_slice);

    pthread_mutex_lock(&c->lock);
    if (c->closing) {
        pthread_mutex_unlock(&c->lock);
        client_call_free(cc);
        return IM_ECLOSED;
    }
    cc->next = c->inflight;
    if (c->inflight != NULL)
        c->inflight->prev = cc;
    c->inflight = cc;
    c->n_inflight++;
    pthread_mutex_unlock(&c->lock);

    gerr = client_call_start(cc);
    if (gerr != GRPC_CALL_OK) {
        im_log_error("rpc: cannot start a call of %s/%s: %s", sd->name, sd->methods[method].name,
                     grpc_call_error_to_string(gerr));
        pthread_mutex_lock(&c->lock);
        inflight_unlink(c, cc);
        pthread_mutex_unlock(&c->lock);
        client_call_free(cc);
        return IM_EIO;
    }
    return IM_OK;
}

/* ---------------------------------------------------------------- sync wrapper */

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    im_rpc_code_t code;
    ProtobufCMessage *resp;
    char *msg;
    size_t msg_size;
} sync_wait_t;

static void sync_done_cb(void *arg, im_rpc_result_t *res)
{
    sync_wait_t *w = arg;

    pthread_mutex_lock(&w->lock);
    w->code = res->code;
    w->resp = res->resp;
    res->resp = NULL;
    if (w->msg != NULL && w->msg_size > 0)
        snprintf(w->msg, w->msg_size, "%s", res->message);
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

im_rpc_code_t im_rpc_call_sync(im_rpc_client_t *c, const ProtobufCServiceDescriptor *sd,
                               unsigned method, const ProtobufCMessage *req, unsigned timeout_ms,
                               const im_rpc_md_t *md, size_t n_md, ProtobufCMessage **resp,
                               char *msg, size_t msg_size)
{
    sync_wait_t w = {.msg = msg, .msg_size = msg_size};
    im_err_t err;

    *resp = NULL;
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    err = im_rpc_call(c, sd, method, req, timeout_ms, md, n_md, sync_done_cb, &w);
    if (err != IM_OK) {
        w.code = err == IM_ECLOSED ? IM_RPC_UNAVAILABLE : im_rpc_code_from_err(err);
        if (msg != NULL && msg_size > 0)
            snprintf(msg, msg_size, "%s", im_strerror(err));
    } else {
        pthread_mutex_lock(&w.lock);
        while (!w.done)
            pthread_cond_wait(&w.cond, &w.lock);
        pthread_mutex_unlock(&w.lock);
        *resp = w.resp;
    }
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.lock);
    return w.code;
}
