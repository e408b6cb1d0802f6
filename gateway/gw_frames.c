/*
 * gw_frames.c - the client protocol's requests (README "Client protocol"):
 * each frame type becomes one async call to logic, and its result comes back
 * to the session as a reply frame (or an error frame with the same cid).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "gw_req.h"
#include "gw_service_int.h"
#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

/* ------------------------------------------------------------ send */

/* Answers one send: an ack frame, or an error frame with its cid. */
static void send_answer(gw_service_t *svc, gw_call_t *c, const Im__V1__SendResponse *r)
{
    im_jw_t w;
    im_buf_t *b;

    im_hist_observe_us(&svc->ack_latency, im_mono_ns() / 1000 - c->start_us);
    if (c->code != IM_RPC_OK || r == NULL) {
        if (c->code == IM_RPC_OK) {
            c->code = IM_RPC_INTERNAL;
            c->message = im_strdup("internal: logic answered no result for this send");
        }
        svc->send_errors++;
        gw__reply_error(svc, c);
        return;
    }
    svc->acks++;
    if ((b = gw__buf_begin(svc, 256, &w)) == NULL)
        return;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "ack");
    gw__jw_cid(&w, c);
    gw__jw_id(&w, "id", r->id);
    im_jw_key(&w, "conv");
    im_jw_cstr(&w, r->conv);
    im_jw_key(&w, "seq");
    im_jw_uint64(&w, r->seq);
    im_jw_key(&w, "ts");
    im_jw_int64(&w, r->created_at_ms);
    if (r->duplicate) {
        im_jw_key(&w, "duplicate");
        im_jw_bool(&w, true);
    }
    im_jw_obj_end(&w);
    gw__buf_send(svc, c->session_id, b, &w);
}

static void flush_lane(gw_service_t *svc, size_t lane);

/* A SendBatch is back: each of its sends gets its own result, or the call's
 * failure; then its lane sends what waited meanwhile. */
static void send_batch_done(gw_service_t *svc, gw_call_t *bc)
{
    const Im__V1__SendBatchResponse *r = (const Im__V1__SendBatchResponse *)bc->resp;
    bool whole = bc->code == IM_RPC_OK && r != NULL && r->n_results == bc->n_members;

    if (bc->code == IM_RPC_UNAVAILABLE || bc->code == IM_RPC_DEADLINE_EXCEEDED)
        svc->client_down_until[bc->client] = im_mono_ms() + GW_CLIENT_DOWN_MS;
    for (size_t i = 0; i < bc->n_members; i++) {
        gw_call_t *c = bc->members[i];
        const Im__V1__SendResult *res = whole ? r->results[i] : NULL;

        if (!whole) {
            c->code = bc->code != IM_RPC_OK ? bc->code : IM_RPC_INTERNAL;
            c->message = im_strdup(bc->code != IM_RPC_OK && bc->message
                                       ? bc->message
                                       : "internal: logic answered a batch of another size");
        } else if (res->code != IM_RPC_OK) {
            c->code = (im_rpc_code_t)res->code;
            c->message = im_strdup(res->error);
        }
        send_answer(svc, c, whole && res->code == IM_RPC_OK ? res->response : NULL);
        gw__call_free(c);
    }
    svc->lanes[bc->lane].busy = false;
    flush_lane(svc, bc->lane);
}

/* The lanes, cfg.send_lanes per logic client, made on first use. */
static void lanes_init(gw_service_t *svc)
{
    if (svc->lanes != NULL)
        return;
    svc->n_lanes = svc->cfg.send_lanes * (svc->n_clients ? svc->n_clients : 1);
    svc->lanes = im_calloc(svc->n_lanes, sizeof(*svc->lanes));
    svc->client_down_until =
        im_calloc(svc->n_clients ? svc->n_clients : 1, sizeof(*svc->client_down_until));
}

/* The lane of a conversation: the same on every gateway given the same
 * --logic list, so a conversation's sends reach one logic instance, which
 * gives them seqs in the order each gateway sent them. */
static size_t lane_of(const gw_service_t *svc, uint64_t sender, uint64_t to_user,
                      uint64_t to_group)
{
    uint64_t lo = sender < to_user ? sender : to_user, hi = sender < to_user ? to_user : sender;
    uint64_t h = to_group ? to_group * 0x9E3779B97F4A7C15ull
                          : (lo * 0x9E3779B97F4A7C15ull) ^ (hi * 0xC2B2AE3D27D4EB4Full);

    h ^= h >> 29;
    return (size_t)(h % svc->n_lanes);
}

/* Sends the lane's waiting sends (up to GW_SEND_BATCH_MAX) as one SendBatch
 * unless one is in flight.  The lane's logic client, or the next one up
 * when that one failed lately. */
static void flush_lane(gw_service_t *svc, size_t lane)
{
    Im__V1__SendBatchRequest req = IM__V1__SEND_BATCH_REQUEST__INIT;
    gw_lane_t *l = &svc->lanes[lane];
    Im__V1__SendRequest **sends;
    uint64_t now = im_mono_ms();
    size_t n = 0, bytes = 0;
    size_t client = svc->n_clients ? lane % svc->n_clients : 0; /* 0 after stop: fails */
    gw_call_t *bc;

    if (l->busy || l->n == 0)
        return;
    /* At most GW_SEND_BATCH_MAX sends and, by their size packed, about
     * GW_SEND_BATCH_BYTES (always at least one): well under the 4 MiB a gRPC
     * message may have, so a few big bodies cannot fail a whole lane. */
    while (n < l->n && n < GW_SEND_BATCH_MAX) {
        size_t one = im__v1__send_request__get_packed_size(l->q[n]->send);

        if (n > 0 && bytes + one > GW_SEND_BATCH_BYTES)
            break;
        bytes += one;
        n++;
    }
    for (size_t k = 0; k < svc->n_clients && svc->client_down_until[client] > now; k++)
        client = (client + 1) % svc->n_clients;
    bc = gw__call_new(svc, GW_CALL_SEND, send_batch_done);
    bc->members = im_malloc(n * sizeof(*bc->members));
    memcpy(bc->members, l->q, n * sizeof(*bc->members));
    bc->n_members = n;
    bc->lane = lane;
    bc->client = client;
    l->n -= n;
    memmove(l->q, l->q + n, l->n * sizeof(*l->q));
    l->busy = true;
    sends = im_malloc(n * sizeof(*sends));
    for (size_t i = 0; i < n; i++)
        sends[i] = bc->members[i]->send;
    req.sends = sends;
    req.n_sends = n;
    svc->send_batches++;
    gw__call_to(svc, bc, client, &im__v1__message__descriptor, GW_METHOD_SEND_BATCH, &req.base);
    im_free(sends);
}

void gw__flush_sends(gw_service_t *svc)
{
    for (size_t i = 0; i < svc->n_lanes; i++)
        flush_lane(svc, i);
}

/* ------------------------------------------------------------ sync */

/* Sends each message of the page as a "msg" frame, then "synced". */
static void sync_done(gw_service_t *svc, gw_call_t *c)
{
    const Im__V1__SyncResponse *r = (const Im__V1__SyncResponse *)c->resp;
    im_jw_t w;
    im_buf_t *b;

    if (c->code != IM_RPC_OK) {
        gw__reply_error(svc, c);
        return;
    }
    for (size_t i = 0; i < r->n_messages; i++) {
        if ((b = gw__msg_frame(svc, r->messages[i])) == NULL)
            return;
        gw_session_send(svc->gw, c->session_id, b);
        im_buf_unref(b);
    }
    if ((b = gw__buf_begin(svc, 128, &w)) == NULL)
        return;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "synced");
    gw__jw_cid(&w, c);
    im_jw_key(&w, "count");
    im_jw_uint64(&w, r->n_messages);
    im_jw_key(&w, "more");
    im_jw_bool(&w, r->more);
    im_jw_obj_end(&w);
    gw__buf_send(svc, c->session_id, b, &w);
}

/* ------------------------------------------------------------ read, typing */

static void read_done(gw_service_t *svc, gw_call_t *c)
{
    const Im__V1__MarkReadResponse *r = (const Im__V1__MarkReadResponse *)c->resp;
    im_jw_t w;
    im_buf_t *b;

    if (c->code != IM_RPC_OK) {
        gw__reply_error(svc, c);
        return;
    }
    if ((b = gw__buf_begin(svc, 128, &w)) == NULL)
        return;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "read_ok");
    gw__jw_cid(&w, c);
    im_jw_key(&w, "seq");
    im_jw_uint64(&w, r->read_seq);
    im_jw_obj_end(&w);
    gw__buf_send(svc, c->session_id, b, &w);
}

/* Typing has no reply unless it is refused. */
static void typing_done(gw_service_t *svc, gw_call_t *c)
{
    if (c->code != IM_RPC_OK)
        gw__reply_error(svc, c);
}

/* ------------------------------------------------------------ history, conversations */

static void history_done(gw_service_t *svc, gw_call_t *c)
{
    const Im__V1__HistoryResponse *r = (const Im__V1__HistoryResponse *)c->resp;
    im_jw_t w;
    im_buf_t *b;

    if (c->code != IM_RPC_OK) {
        gw__reply_error(svc, c);
        return;
    }
    if ((b = gw__buf_begin(svc, gw__history_size(r), &w)) == NULL)
        return;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "history");
    gw__jw_cid(&w, c);
    gw__jw_history(&w, r);
    im_jw_obj_end(&w);
    gw__buf_send(svc, c->session_id, b, &w);
}

static void convs_done(gw_service_t *svc, gw_call_t *c)
{
    const Im__V1__ConversationsResponse *r = (const Im__V1__ConversationsResponse *)c->resp;
    im_jw_t w;
    im_buf_t *b;

    if (c->code != IM_RPC_OK) {
        gw__reply_error(svc, c);
        return;
    }
    if ((b = gw__buf_begin(svc, 256 + r->n_conversations * 320, &w)) == NULL)
        return;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "conversations");
    gw__jw_cid(&w, c);
    gw__jw_conversations(&w, r);
    im_jw_obj_end(&w);
    gw__buf_send(svc, c->session_id, b, &w);
}

/* ------------------------------------------------------------ requests */

/* Queues the send on its conversation's lane.  A lane with nothing in
 * flight sends once the loop has handled what it read (so the sends of one
 * turn travel together); one with a SendBatch in flight sends when that is
 * answered, with everything that came meanwhile. */
static void start_send(gw_service_t *svc, const gw_frame_t *f, const gw_req_t *r, gw_call_t *c)
{
    Im__V1__SendRequest *req = im_malloc(sizeof(*req));
    char origin[128];
    gw_lane_t *l;

    im__v1__send_request__init(req);
    snprintf(origin, sizeof(origin), "%s/%" PRIx64, gw_instance_id(svc->gw), f->session_id);
    req->sender = f->user_id;
    req->to_user = r->to_user;
    req->to_group = r->to_group;
    req->client_msg_id = c->cid;
    req->body = im_strdup(r->body);
    req->origin_session = im_strdup(origin);
    c->send = req;
    svc->sends++;
    lanes_init(svc);
    l = &svc->lanes[lane_of(svc, req->sender, req->to_user, req->to_group)];
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->q = im_realloc(l->q, l->cap * sizeof(*l->q));
    }
    l->q[l->n++] = c;
    if (!l->busy)
        gw__flush_soon(svc);
}

static void start_sync(gw_service_t *svc, const gw_frame_t *f, const gw_req_t *r, gw_call_t *c)
{
    Im__V1__SyncRequest req = IM__V1__SYNC_REQUEST__INIT;
    Im__V1__ConvPosition *pos = im_calloc(r->n_have ? r->n_have : 1, sizeof(*pos));
    Im__V1__ConvPosition **ptrs = im_calloc(r->n_have ? r->n_have : 1, sizeof(*ptrs));

    for (size_t i = 0; i < r->n_have; i++) {
        im__v1__conv_position__init(&pos[i]);
        pos[i].conv = (char *)r->have[i].conv;
        pos[i].seq = r->have[i].seq;
        ptrs[i] = &pos[i];
    }
    req.user_id = f->user_id;
    req.have = ptrs;
    req.n_have = r->n_have;
    req.limit = (uint32_t)(r->limit && r->limit < svc->cfg.sync_limit ? r->limit
                                                                      : svc->cfg.sync_limit);
    gw__call(svc, c, &im__v1__message__descriptor, 1, &req.base);
    im_free(pos);
    im_free(ptrs);
}

static void start_other(gw_service_t *svc, const gw_frame_t *f, const gw_req_t *r, gw_call_t *c)
{
    switch (r->kind) {
    case GW_REQ_READ: {
        Im__V1__MarkReadRequest req = IM__V1__MARK_READ_REQUEST__INIT;
        req.user_id = f->user_id;
        req.conv = (char *)r->conv;
        req.seq = r->seq;
        gw__call(svc, c, &im__v1__message__descriptor, 3, &req.base);
        break;
    }
    case GW_REQ_TYPING: {
        Im__V1__TypingRequest req = IM__V1__TYPING_REQUEST__INIT;
        req.user_id = f->user_id;
        req.to_user = r->to_user;
        req.to_group = r->to_group;
        gw__call(svc, c, &im__v1__message__descriptor, 5, &req.base);
        break;
    }
    case GW_REQ_HISTORY: {
        Im__V1__HistoryRequest req = IM__V1__HISTORY_REQUEST__INIT;
        req.user_id = f->user_id;
        req.conv = (char *)r->conv;
        req.before_seq = r->before;
        req.limit = (uint32_t)(r->limit > 0 && r->limit <= 200 ? r->limit : 50);
        gw__call(svc, c, &im__v1__message__descriptor, 2, &req.base);
        break;
    }
    default: {
        Im__V1__ConversationsRequest req = IM__V1__CONVERSATIONS_REQUEST__INIT;
        req.user_id = f->user_id;
        gw__call(svc, c, &im__v1__message__descriptor, 4, &req.base);
        break;
    }
    }
}

im_err_t gw__on_frame(gw_t *gw, const gw_frame_t *f, void *arg)
{
    static const gw_call_done_fn done[] = {
        [GW_REQ_SEND] = NULL,            [GW_REQ_SYNC] = sync_done,
        [GW_REQ_READ] = read_done,       [GW_REQ_TYPING] = typing_done,
        [GW_REQ_HISTORY] = history_done, [GW_REQ_CONVERSATIONS] = convs_done,
    };
    static const gw_call_kind_t kinds[] = {
        [GW_REQ_SEND] = GW_CALL_SEND,       [GW_REQ_SYNC] = GW_CALL_SYNC,
        [GW_REQ_READ] = GW_CALL_READ,       [GW_REQ_TYPING] = GW_CALL_TYPING,
        [GW_REQ_HISTORY] = GW_CALL_HISTORY, [GW_REQ_CONVERSATIONS] = GW_CALL_CONVS,
    };
    gw_service_t *svc = arg;
    gw_req_error_t err;
    gw_call_t *c;
    gw_req_t r;

    if (!gw_req_decode(f->doc, f->cid, f->type, &r, &err)) {
        gw_req_free(&r);
        if (err.code == NULL)
            return IM_ENOENT; /* not a request type: unknown_type */
        gw_send_error(gw, f->session_id, f, err.code, err.message);
        return IM_OK;
    }
    c = gw__call_new(svc, kinds[r.kind], done[r.kind]);
    c->session_id = f->session_id;
    c->user = f->user_id;
    memcpy(c->cid, r.cid, sizeof(c->cid));
    c->cid_is_number = r.cid_is_number;
    if (r.kind == GW_REQ_SEND)
        start_send(svc, f, &r, c);
    else if (r.kind == GW_REQ_SYNC)
        start_sync(svc, f, &r, c);
    else
        start_other(svc, f, &r, c);
    gw_req_free(&r);
    return IM_OK;
}
