/*
 * im_rpc.h - unary gRPC server and client for protobuf-c messages.
 *
 * The only gRPC adapter of the project: gRPC core's headers are included by
 * im_rpc_io.c alone, so this header speaks protobuf-c and im_rpc_code_t (the
 * standard gRPC status codes under our own names; the values are the wire
 * values).  The wire is standard gRPC over insecure HTTP/2: any gRPC client
 * (grpc-js, grpcurl) can call an im_rpc server and vice versa.
 *
 * Threads
 *   Server: n_cq_threads completion-queue threads accept calls, decode
 *   requests, run non-blocking handlers and send replies.  A handler flagged
 *   blocking (MySQL, Redis, AMQP, sleeps) runs on one of n_workers worker
 *   threads instead, so a slow handler never stalls the other calls on its
 *   completion queue.
 *   Client: one completion-queue thread per client delivers every result.
 *
 * Only unary calls (one request, one response) are supported.
 */
#ifndef IM_RPC_H
#define IM_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "im_err.h"

/* The gRPC status codes: IM_RPC_OK, IM_RPC_CANCELLED, ... with the values of
 * grpc_status_code, which are the values on the wire. */
#define IM_RPC_CODE_MAP(X)                                                                         \
    X(OK, 0)                                                                                       \
    X(CANCELLED, 1)                                                                                \
    X(UNKNOWN, 2)                                                                                  \
    X(INVALID_ARGUMENT, 3)                                                                         \
    X(DEADLINE_EXCEEDED, 4)                                                                        \
    X(NOT_FOUND, 5)                                                                                \
    X(ALREADY_EXISTS, 6)                                                                           \
    X(PERMISSION_DENIED, 7)                                                                        \
    X(RESOURCE_EXHAUSTED, 8)                                                                       \
    X(FAILED_PRECONDITION, 9)                                                                      \
    X(ABORTED, 10)                                                                                 \
    X(OUT_OF_RANGE, 11)                                                                            \
    X(UNIMPLEMENTED, 12)                                                                           \
    X(INTERNAL, 13)                                                                                \
    X(UNAVAILABLE, 14)                                                                             \
    X(DATA_LOSS, 15)                                                                               \
    X(UNAUTHENTICATED, 16)

typedef enum {
#define IM__RPC_CODE_ENUM(name, val) IM_RPC_##name = (val),
    IM_RPC_CODE_MAP(IM__RPC_CODE_ENUM)
#undef IM__RPC_CODE_ENUM
} im_rpc_code_t;

/* "DEADLINE_EXCEEDED" etc.; "?" for a value outside the map.  Static, any thread. */
const char *im_rpc_code_name(im_rpc_code_t code);

/* Error mapping between our im_err_t and gRPC status codes.  To a status:
 * IM_OK->OK, IM_EINVAL->INVALID_ARGUMENT, IM_ENOENT->NOT_FOUND,
 * IM_EEXIST->ALREADY_EXISTS, IM_EPERM->PERMISSION_DENIED,
 * IM_EAUTH->UNAUTHENTICATED, IM_EUNAVAIL->UNAVAILABLE,
 * IM_ETIMEDOUT->DEADLINE_EXCEEDED, IM_EFULL->RESOURCE_EXHAUSTED, any other
 * error->INTERNAL.  Back: the inverse of those pairs, CANCELLED->IM_ECLOSED,
 * any other code->IM_EIO.  Pure functions, any thread. */
im_rpc_code_t im_rpc_code_from_err(im_err_t err);
im_err_t im_rpc_code_to_err(im_rpc_code_t code);

/* ================================================================ server */

typedef struct im_rpc_server_s im_rpc_server_t;

/* One incoming call, from the moment its handler runs until the handler
 * completes it with im_rpc_reply() or im_rpc_fail(). */
typedef struct im_rpc_call_s im_rpc_call_t;

/* Runs once per call whose request decoded; arg is the one given to
 * im_rpc_server_add_service.  It runs on a completion-queue thread (must not
 * block) or, for a method flagged blocking, on a worker thread.  It must see
 * to it that the call is completed exactly once, by im_rpc_reply() or
 * im_rpc_fail(), from this or any other thread, now or later; until then the
 * call stays allocated, and im_rpc_server_stop() waits for it. */
typedef void (*im_rpc_handler_cb)(im_rpc_call_t *call, void *arg);

/* How one method of a service is served.  handler NULL: the method is not
 * served (callers get UNIMPLEMENTED). */
typedef struct {
    im_rpc_handler_cb handler;
    bool blocking; /* true: run the handler on a worker thread */
} im_rpc_method_t;

/* A server that will listen on addr ("127.0.0.1:0", "0.0.0.0:50051",
 * "[::]:0"; port 0 picks a free port).  Starts its n_cq_threads completion-
 * queue threads (0 is taken as 1) and n_workers worker threads (0: no method
 * may be blocking) now; nothing is bound before im_rpc_server_start().  Never
 * NULL; aborts if a thread cannot be started.  Free with
 * im_rpc_server_free().  Any thread. */
im_rpc_server_t *im_rpc_server_new(const char *addr, unsigned n_cq_threads, unsigned n_workers);

/* Serves service sd: methods[i] says how sd->methods[i] is handled
 * (sd->n_methods entries, copied; the descriptor must outlive the server,
 * which generated descriptors do).  The gRPC path of method i is
 * "/" + sd->name + "/" + sd->methods[i].name.  arg is passed to every handler
 * of the service.  A request that does not decode as the method's input type
 * is answered INVALID_ARGUMENT without calling the handler.
 * Returns IM_OK; IM_EINVAL if the server is already started or a method is
 * blocking but the server has no workers; IM_EEXIST if a path is already
 * served.  Before im_rpc_server_start(), from the thread that made the server. */
im_err_t im_rpc_server_add_service(im_rpc_server_t *s, const ProtobufCServiceDescriptor *sd,
                                   const im_rpc_method_t *methods, void *arg);

/* Binds the address and starts serving; *port (may be NULL) receives the
 * bound TCP port, useful with port 0.  Calls to paths no service serves are
 * answered UNIMPLEMENTED at once.  Returns IM_OK; IM_EIO if the address cannot
 * be bound (the server is then only good for im_rpc_server_free); IM_EINVAL if
 * already started or stopped.  Same thread as im_rpc_server_add_service. */
im_err_t im_rpc_server_start(im_rpc_server_t *s, unsigned *port);

/* Graceful stop: stops accepting calls and waits up to grace_ms for the calls
 * in flight to be completed by their handlers.  Then cancels the rest: their
 * clients see CANCELLED, blocking calls still waiting for a worker are dropped
 * without running their handler, and handlers already running complete their
 * call as usual (the reply is discarded).  Returns once every call has been
 * completed and released, so a handler that never completes its call makes
 * this wait forever.  Calling it again does nothing.  From the owner thread,
 * not from a handler or a server thread. */
void im_rpc_server_stop(im_rpc_server_t *s, unsigned grace_ms);

/* Stops the server (im_rpc_server_stop with no grace, if not done already),
 * joins its threads and frees it.  NULL is fine.  Not from a handler or a
 * server thread. */
void im_rpc_server_free(im_rpc_server_t *s);

/* The decoded request, of the method's input type (cast it to the generated
 * struct).  Owned by the call: valid until the call is completed. */
const ProtobufCMessage *im_rpc_call_request(const im_rpc_call_t *call);

/* The client's address, e.g. "ipv4:127.0.0.1:43512".  Owned by the call:
 * valid until the call is completed. */
const char *im_rpc_call_peer(im_rpc_call_t *call);

/* The call's deadline on the im_mono_ms() clock (im_time.h); UINT64_MAX when
 * the client set none. */
uint64_t im_rpc_call_deadline_ms(const im_rpc_call_t *call);

/* The first request metadata value for key (lower-case, e.g.
 * "authorization"), NOT NUL-terminated, with its length in *len; NULL when
 * absent.  Owned by the call: valid until the call is completed. */
const char *im_rpc_call_metadata(const im_rpc_call_t *call, const char *key, size_t *len);

/* Like im_rpc_call_metadata() but returns a NUL-terminated copy the caller
 * frees with im_free(), or NULL when absent. */
char *im_rpc_call_metadata_dup(const im_rpc_call_t *call, const char *key);

/* Completes call with status OK and response resp, which must be of the
 * method's output type (otherwise the client gets INTERNAL and an error is
 * logged).  resp is packed before this returns: the caller keeps ownership and
 * may free it at once.  call and everything obtained from it are invalid once
 * this is called.  Exactly once per call (counting im_rpc_fail), from any
 * thread. */
void im_rpc_reply(im_rpc_call_t *call, const ProtobufCMessage *resp);

/* Completes call with a non-OK status code and an optional message (copied;
 * NULL for none) that the client receives.  IM_RPC_OK is a caller bug and is
 * sent as UNKNOWN.  Otherwise as im_rpc_reply(). */
void im_rpc_fail(im_rpc_call_t *call, im_rpc_code_t code, const char *msg);

/* ================================================================ client */

typedef struct im_rpc_client_s im_rpc_client_t;

/* One request metadata entry.  key: lower-case letters, digits, '-', '_', '.';
 * value: printable ASCII, unless the key ends in "-bin" (then any C string;
 * gRPC base64-encodes it on the wire).  Both copied by im_rpc_call. */
typedef struct {
    const char *key;
    const char *value;
} im_rpc_md_t;

/* What a call produced, handed to its im_rpc_done_cb. */
typedef struct {
    im_rpc_code_t code;
    /* The status message: from the server, or gRPC's description of a
     * client-side failure ("Deadline Exceeded", "failed to connect...").
     * Never NULL, may be "".  Valid during the callback only. */
    const char *message;
    /* The decoded response (the method's output type) when code is OK, else
     * NULL.  Freed by the client after the callback returns; to keep it, set
     * resp to NULL in the callback and free it later with
     * protobuf_c_message_free_unpacked(resp, NULL). */
    ProtobufCMessage *resp;
} im_rpc_result_t;

/* Delivers the result of one call, exactly once, on the client's thread.  It
 * should be quick (copy or steal what it needs, push it to its owner's queue);
 * it may start new calls with im_rpc_call, but must not call im_rpc_call_sync
 * or im_rpc_client_free on the same client. */
typedef void (*im_rpc_done_cb)(void *arg, im_rpc_result_t *res);

/* A client of the server at target ("127.0.0.1:50051", "localhost:50051").
 * Connects lazily, on the first call, and reconnects as needed.  Starts the
 * client's thread.  Never NULL.  Free with im_rpc_client_free().  Any thread. */
im_rpc_client_t *im_rpc_client_new(const char *target);

/* Cancels the calls in flight (their callbacks still run, once, with CANCELLED
 * unless their result was already in), waits for every callback to return,
 * joins the client's thread and frees the client.  No new call may be started
 * once this begins.  NULL is fine.  Not from a done callback. */
void im_rpc_client_free(im_rpc_client_t *c);

/* Starts a unary call of method number `method` of service sd with request req
 * (packed before this returns: the caller keeps it) and returns without
 * waiting.  The call fails with DEADLINE_EXCEEDED if no result arrives within
 * timeout_ms (mandatory, > 0).  md: n_md request metadata entries (NULL/0 for
 * none).  done(arg, result) then runs exactly once on the client's thread.
 * Returns IM_OK (done will run); IM_EINVAL for timeout_ms 0, a method out of
 * range, req not of the method's input type or an illegal metadata entry;
 * IM_ECLOSED if the client is being freed; IM_EIO if gRPC refuses to start
 * the call (logged).  On error done never runs.  Any thread, including a done
 * callback; never blocks on the network. */
im_err_t im_rpc_call(im_rpc_client_t *c, const ProtobufCServiceDescriptor *sd, unsigned method,
                     const ProtobufCMessage *req, unsigned timeout_ms, const im_rpc_md_t *md,
                     size_t n_md, im_rpc_done_cb done, void *arg);

/* im_rpc_call() that waits for the result, for tools and tests.  Returns the
 * status code; an IM_E* error of im_rpc_call() comes back as
 * im_rpc_code_from_err(err), or UNAVAILABLE for IM_ECLOSED.  resp must not be
 * NULL: when OK, *resp receives the response (free it with
 * protobuf_c_message_free_unpacked(*resp, NULL)), otherwise NULL.  msg (may be
 * NULL) receives the status message, truncated to msg_size - 1 bytes.
 * Blocks: never from a done callback of the same client. */
im_rpc_code_t im_rpc_call_sync(im_rpc_client_t *c, const ProtobufCServiceDescriptor *sd,
                               unsigned method, const ProtobufCMessage *req, unsigned timeout_ms,
                               const im_rpc_md_t *md, size_t n_md, ProtobufCMessage **resp,
                               char *msg, size_t msg_size);

#endif
