#include "gw_service.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw_service_int.h"
#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

static char *dup_or_null(const char *s)
{
    return s ? im_strdup(s) : NULL;
}

/* One client per comma-separated address. */
static void make_clients(gw_service_t *svc)
{
    char *list = im_strdup(svc->logic), *save = NULL;

    for (char *t = strtok_r(list, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        svc->clients = im_realloc(svc->clients, (svc->n_clients + 1) * sizeof(*svc->clients));
        svc->clients[svc->n_clients++] = im_rpc_client_new(t);
    }
    im_free(list);
}

gw_service_t *gw_service_new(const gw_service_config_t *cfg)
{
    gw_service_t *svc = im_calloc(1, sizeof(*svc));

    svc->cfg = *cfg;
    svc->cfg.logic = svc->logic = im_strdup(cfg->logic && *cfg->logic ? cfg->logic
                                                                        : "127.0.0.1:9000");
    svc->cfg.amqp.host = svc->amqp_host = dup_or_null(cfg->amqp.host);
    svc->cfg.amqp.user = svc->amqp_user = dup_or_null(cfg->amqp.user);
    svc->cfg.amqp.password = svc->amqp_password = dup_or_null(cfg->amqp.password);
    svc->cfg.amqp.vhost = svc->amqp_vhost = dup_or_null(cfg->amqp.vhost);
    if (svc->cfg.rpc_timeout_ms == 0)
        svc->cfg.rpc_timeout_ms = 10000;
    if (svc->cfg.heartbeat_ms == 0)
        svc->cfg.heartbeat_ms = 10000;
    if (svc->cfg.sync_limit == 0)
        svc->cfg.sync_limit = 500;
    if (svc->cfg.send_lanes == 0)
        svc->cfg.send_lanes = GW_SEND_LANES;
    make_clients(svc);
    im_map_init(&svc->groups);
    pthread_mutex_init(&svc->hb_lock, NULL);
    pthread_cond_init(&svc->hb_cond, NULL);
    return svc;
}

/* ------------------------------------------------------------ calls */

gw_call_t *gw__call_new(gw_service_t *svc, gw_call_kind_t kind, gw_call_done_fn done)
{
    gw_call_t *c = im_calloc(1, sizeof(*c));

    c->svc = svc;
    c->kind = kind;
    c->done = done;
    c->start_us = im_mono_ns() / 1000;
    return c;
}

void gw__call_free(gw_call_t *c)
{
    if (c->resp != NULL)
        protobuf_c_message_free_unpacked(c->resp, NULL);
    if (c->send != NULL) {
        im_free(c->send->body);
        im_free(c->send->origin_session);
        im_free(c->send);
    }
    im_free(c->members);
    im_free(c->pairs);
    im_free(c->message);
    im_free(c);
}

/* On the loop: the result is in. */
static void call_done_task(gw_t *gw, void *arg)
{
    gw_call_t *c = arg;

    (void)gw;
    if (c->done != NULL)
        c->done(c->svc, c);
    gw__call_free(c);
}

/* On the client's thread: keep the result, hand it to the loop. */
static void rpc_done_cb(void *arg, im_rpc_result_t *res)
{
    gw_call_t *c = arg;

    c->code = res->code;
    c->message = im_strdup(res->message);
    c->resp = res->resp;
    res->resp = NULL;
    if (c->code == IM_RPC_UNAVAILABLE || c->code == IM_RPC_DEADLINE_EXCEEDED)
        atomic_store(&c->svc->logic_ok, false);
    atomic_fetch_sub(&c->svc->outstanding, 1); /* answered: gw_service_stop may go on */
    gw_post(c->svc->gw, call_done_task, c);
}

void gw__call(gw_service_t *svc, gw_call_t *c, const ProtobufCServiceDescriptor *sd,
              unsigned method, const ProtobufCMessage *req)
{
    unsigned next = atomic_fetch_add(&svc->next_client, 1);

    gw__call_to(svc, c, svc->n_clients ? next % svc->n_clients : 0, sd, method, req);
}

void gw__call_to(gw_service_t *svc, gw_call_t *c, size_t i, const ProtobufCServiceDescriptor *sd,
                 unsigned method, const ProtobufCMessage *req)
{
    im_err_t rc = IM_ECLOSED;

    /* After gw_service_stop there are no clients: what is still flushed
     * (sessions closed by gw_free) fails here, at once. */
    if (i < svc->n_clients) {
        atomic_fetch_add(&svc->outstanding, 1);
        rc = im_rpc_call(svc->clients[i], sd, method, req, svc->cfg.rpc_timeout_ms, NULL, 0,
                         rpc_done_cb, c);
        if (rc != IM_OK)
            atomic_fetch_sub(&svc->outstanding, 1);
    }
    if (rc != IM_OK) {
        c->code = IM_RPC_UNAVAILABLE;
        c->message = im_strdup("unavailable: the logic service cannot be called");
        gw_post(svc->gw, call_done_task, c);
    }
}

const char *gw__status_split(const gw_call_t *c, char *code, size_t codelen)
{
    const char *m = c->message ? c->message : "";
    const char *colon = strstr(m, ": ");
    size_t n = colon ? (size_t)(colon - m) : 0;
    bool word = n > 0 && n < codelen;

    for (size_t i = 0; word && i < n; i++)
        word = (m[i] >= 'a' && m[i] <= 'z') || m[i] == '_' || (m[i] >= '0' && m[i] <= '9');
    if (word) {
        memcpy(code, m, n);
        code[n] = '\0';
        return colon + 2;
    }
    snprintf(code, codelen, "%s", im_rpc_code_name(c->code));
    for (char *p = code; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    if (c->code == IM_RPC_UNAVAILABLE || c->code == IM_RPC_DEADLINE_EXCEEDED ||
        c->code == IM_RPC_CANCELLED)
        snprintf(code, codelen, "unavailable");
    return *m ? m : "the request failed";
}

void gw__reply_error(gw_service_t *svc, const gw_call_t *c)
{
    char code[48];
    const char *text = gw__status_split(c, code, sizeof(code));
    im_jw_t w;
    im_buf_t *b = gw__buf_begin(svc, 512 + strlen(text) * 6, &w);

    if (b == NULL)
        return;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "error");
    im_jw_key(&w, "code");
    im_jw_cstr(&w, code);
    im_jw_key(&w, "message");
    im_jw_cstr(&w, text);
    gw__jw_cid(&w, c);
    im_jw_obj_end(&w);
    gw__buf_send(svc, c->session_id, b, &w);
}

/* ------------------------------------------------------------ JSON helpers */

im_buf_t *gw__buf_begin(gw_service_t *svc, size_t cap, im_jw_t *w)
{
    im_buf_t *b = im_buf_alloc_any(gw_pool(svc->gw), cap);

    if (b == NULL) {
        im_log_warn("service: no %zu-byte buffer: a frame is dropped", cap);
        return NULL;
    }
    im_jw_init(w, im_buf_data(b), im_buf_cap(b), 0);
    return b;
}

/* Frames are begun with room for the worst case (every byte escaped) and
 * usually need far less: one that fits a smaller size class moves there, so
 * frames queued to slow readers hold small buffers, not 4 KiB ones. */
im_buf_t *gw__buf_finish(gw_service_t *svc, im_buf_t *b, im_jw_t *w)
{
    size_t len = 0;
    im_err_t rc = im_jw_finish(w, &len);
    im_buf_t *small;

    if (rc != IM_OK || im_buf_set_len(b, len) != IM_OK) {
        im_log_warn("service: encoding a frame: %s", im_strerror(rc));
        im_buf_unref(b);
        return NULL;
    }
    if (len * 4 > im_buf_cap(b) || (small = im_buf_alloc(gw_pool(svc->gw), len)) == NULL)
        return b;
    im_buf_append(small, im_buf_data(b), len);
    im_buf_unref(b);
    return small;
}

void gw__buf_send(gw_service_t *svc, uint64_t session_id, im_buf_t *b, im_jw_t *w)
{
    if ((b = gw__buf_finish(svc, b, w)) != NULL) {
        gw_session_send(svc->gw, session_id, b);
        im_buf_unref(b);
    }
}

im_buf_t *gw__msg_frame(gw_service_t *svc, const Im__V1__ChatMessage *m)
{
    im_jw_t w;
    im_buf_t *b = gw__buf_begin(svc, 512 + (m->body ? strlen(m->body) : 0) * 6, &w);

    if (b == NULL)
        return NULL;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "msg");
    gw__jw_msg_fields(&w, m);
    im_jw_obj_end(&w);
    return gw__buf_finish(svc, b, &w);
}

void gw__jw_id(im_jw_t *w, const char *key, uint64_t id)
{
    char s[24];

    snprintf(s, sizeof(s), "%" PRIu64, id);
    im_jw_key(w, key);
    im_jw_cstr(w, s);
}

void gw__jw_cid(im_jw_t *w, const gw_call_t *c)
{
    if (c->cid[0] == '\0')
        return;
    im_jw_key(w, "cid");
    if (c->cid_is_number)
        im_jw_number(w, c->cid, strlen(c->cid));
    else
        im_jw_cstr(w, c->cid);
}

/* id, conv, seq, from, to, body, ts, cid of a stored or delivered message. */
void gw__jw_msg_fields(im_jw_t *w, const Im__V1__ChatMessage *m)
{
    gw__jw_id(w, "id", m->id);
    im_jw_key(w, "conv");
    im_jw_cstr(w, m->conv ? m->conv : "");
    im_jw_key(w, "seq");
    im_jw_uint64(w, m->seq);
    gw__jw_id(w, "from", m->sender);
    im_jw_key(w, "to");
    im_jw_obj_begin(w);
    if (m->to_group)
        gw__jw_id(w, "group", m->to_group);
    else
        gw__jw_id(w, "user", m->to_user);
    im_jw_obj_end(w);
    im_jw_key(w, "body");
    im_jw_cstr(w, m->body ? m->body : "");
    im_jw_key(w, "ts");
    im_jw_int64(w, m->created_at_ms);
    if (m->client_msg_id != NULL && *m->client_msg_id) {
        im_jw_key(w, "cid");
        im_jw_cstr(w, m->client_msg_id);
    }
}

/* ------------------------------------------------------------ group index */

void gw__group_add(gw_service_t *svc, gw_sess_t *s, uint64_t group)
{
    gw_members_t *m = im_map_get(&svc->groups, group);

    for (size_t i = 0; i < s->n_groups; i++)
        if (s->groups[i] == group)
            return;
    if (m == NULL) {
        m = im_calloc(1, sizeof(*m));
        im_map_put(&svc->groups, group, m);
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 4;
        m->sessions = im_realloc(m->sessions, m->cap * sizeof(*m->sessions));
    }
    m->sessions[m->n++] = s->id;
    if (s->n_groups == s->cap_groups) {
        s->cap_groups = s->cap_groups ? s->cap_groups * 2 : 4;
        s->groups = im_realloc(s->groups, s->cap_groups * sizeof(*s->groups));
    }
    s->groups[s->n_groups++] = group;
    gw_deliver_bind_group(svc->deliver, group);
}

void gw__group_remove(gw_service_t *svc, gw_sess_t *s, uint64_t group)
{
    gw_members_t *m = im_map_get(&svc->groups, group);
    size_t i;

    for (i = 0; i < s->n_groups && s->groups[i] != group; i++)
        ;
    if (i == s->n_groups || m == NULL)
        return;
    s->groups[i] = s->groups[--s->n_groups];
    for (i = 0; i < m->n; i++) {
        if (m->sessions[i] == s->id) {
            m->sessions[i] = m->sessions[--m->n];
            break;
        }
    }
    if (m->n == 0) {
        im_map_del(&svc->groups, group);
        im_free(m->sessions);
        im_free(m);
    }
    gw_deliver_unbind_group(svc->deliver, group);
}

/* ------------------------------------------------------------ sessions */

static void session_request(gw_service_t *svc, const gw_sess_t *s, Im__V1__SessionRequest *req,
                            char *sid, size_t sidlen)
{
    snprintf(sid, sidlen, "%" PRIx64, s->id);
    req->user_id = s->user;
    req->gateway_id = (char *)gw_instance_id(svc->gw);
    req->session_id = sid;
}

/* Online and Mine are both in: the session is routed to and holds its
 * groups, so from now on nothing addressed to it is missed live, and a sync
 * started now covers everything before.  The client learns it by "ready". */
static void session_ready(gw_service_t *svc, gw_sess_t *s)
{
    char frame[96];
    int n;
    im_buf_t *b;

    if (--s->pending > 0)
        return;
    n = snprintf(frame, sizeof(frame), "{\"type\":\"ready\",\"user\":\"%" PRIu64 "\"}", s->user);
    if ((b = im_buf_alloc_any(gw_pool(svc->gw), (size_t)n)) == NULL)
        return;
    im_buf_append(b, frame, (size_t)n);
    gw_session_send(svc->gw, s->id, b);
    im_buf_unref(b);
}

/* The session's group keys are bound at the broker: back to the loop. */
typedef struct {
    gw_service_t *svc;
    uint64_t session_id;
} barrier_ctx_t;

static barrier_ctx_t *barrier_new(gw_service_t *svc, uint64_t session_id)
{
    barrier_ctx_t *b = im_malloc(sizeof(*b));

    b->svc = svc;
    b->session_id = session_id;
    atomic_fetch_add(&svc->outstanding, 1);
    return b;
}

static void bound_task(gw_t *gw, void *arg)
{
    barrier_ctx_t *b = arg;
    gw_sess_t *s = gw_session_data(gw, b->session_id);

    (void)gw;
    if (s != NULL)
        session_ready(b->svc, s);
    im_free(b);
}

static void bound_cb(void *arg)
{
    barrier_ctx_t *b = arg;

    atomic_fetch_sub(&b->svc->outstanding, 1);
    gw_post(b->svc->gw, bound_task, b);
}

static void flush_sessions(gw_service_t *svc, bool connect);

/* Appends (id, user) to a connect or disconnect batch, sent at the end of
 * the turn or at once when full. */
static void session_batch_add(gw_service_t *svc, bool connect, uint64_t id, uint64_t user)
{
    uint64_t **list = connect ? &svc->connects : &svc->disconnects;
    size_t *n = connect ? &svc->n_connects : &svc->n_disconnects;

    if (*list == NULL)
        *list = im_malloc(2 * GW_SESSION_BATCH_MAX * sizeof(**list));
    (*list)[2 * *n] = id;
    (*list)[2 * *n + 1] = user;
    if (++*n == GW_SESSION_BATCH_MAX)
        flush_sessions(svc, connect);
    else
        gw__flush_soon(svc);
}

/* A Session.Connect is back: each session it carried is routed to (or
 * closed, so that its client reconnects rather than miss messages), then
 * holds its groups, then hears "ready" once their keys are bound. */
static void connect_done(gw_service_t *svc, gw_call_t *bc)
{
    const Im__V1__SessionBatchResponse *r = (const Im__V1__SessionBatchResponse *)bc->resp;
    bool whole = bc->code == IM_RPC_OK && r != NULL && r->n_results == bc->n_pairs;

    if (!whole)
        im_log_warn("service: Session.Connect of %zu sessions: %s", bc->n_pairs,
                    bc->message ? bc->message : "answered for another number of sessions");
    for (size_t i = 0; i < bc->n_pairs; i++) {
        uint64_t id = bc->pairs[2 * i], user = bc->pairs[2 * i + 1];
        const Im__V1__SessionResult *res = whole ? r->results[i] : NULL;
        gw_sess_t *s = gw_session_data(svc->gw, id);

        if (res == NULL || res->code != IM_RPC_OK) {
            if (res != NULL)
                im_log_warn("service: Session.Online of user %" PRIu64 ": %s", user, res->error);
            else /* timed out, maybe after logic routed it: take it offline again */
                session_batch_add(svc, false, id, user);
            if (s != NULL && res != NULL && res->code == IM_RPC_PERMISSION_DENIED)
                gw_session_close(svc->gw, id, 1008, "user_deleted");
            else if (s != NULL)
                gw_session_close(svc->gw, id, 1011, "try again later");
            continue;
        }
        if (s == NULL) { /* closed meanwhile: the Offline it skipped is due now */
            session_batch_add(svc, false, id, user);
            continue;
        }
        s->online = true;
        session_ready(svc, s);
        if (res->groups_error != NULL && res->groups_error[0] != '\0') {
            /* Without its groups the session would miss group messages:
             * make the client reconnect rather than run half-blind. */
            im_log_warn("service: groups of user %" PRIu64 ": %s", user, res->groups_error);
            gw_session_close(svc->gw, id, 1011, "try again later");
            continue;
        }
        if (res->n_group_ids == 0) { /* no group key to wait for */
            session_ready(svc, s);
            continue;
        }
        for (size_t g = 0; g < res->n_group_ids; g++)
            gw__group_add(svc, s, res->group_ids[g]);
        gw_deliver_barrier(svc->deliver, bound_cb, barrier_new(svc, id));
    }
    svc->session_calls[1]--;
    flush_sessions(svc, true); /* what waited for this call */
}

static void disconnect_done(gw_service_t *svc, gw_call_t *bc)
{
    if (bc->code != IM_RPC_OK)
        im_log_debug("service: Session.Disconnect of %zu sessions: %s", bc->n_pairs,
                     bc->message);
    svc->session_calls[0]--;
    flush_sessions(svc, false); /* what waited for this call */
}

static void session_batch_call(gw_service_t *svc, gw_call_t *bc, bool connect, bool routes_only);

static void flush_sessions(gw_service_t *svc, bool connect)
{
    uint64_t **list = connect ? &svc->connects : &svc->disconnects;
    size_t *n = connect ? &svc->n_connects : &svc->n_disconnects;
    gw_call_t *bc;

    if (*n == 0 ||
        (svc->session_calls[connect] >= GW_SESSION_CALLS_MAX && *n < GW_SESSION_BATCH_MAX &&
         !svc->drain))
        return;
    svc->session_calls[connect]++;
    bc = gw__call_new(svc, connect ? GW_CALL_ONLINE : GW_CALL_OFFLINE,
                      connect ? connect_done : disconnect_done);
    bc->pairs = *list;
    bc->n_pairs = *n;
    *list = NULL;
    *n = 0;
    session_batch_call(svc, bc, connect, false);
}

/* Sends bc's pairs as one Session.Connect (connect; routes_only: without
 * the groups) or Session.Disconnect. */
static void session_batch_call(gw_service_t *svc, gw_call_t *bc, bool connect, bool routes_only)
{
    Im__V1__SessionBatchRequest req = IM__V1__SESSION_BATCH_REQUEST__INIT;
    Im__V1__SessionRequest *reqs, **ptrs;
    char (*sids)[24];

    reqs = im_calloc(bc->n_pairs, sizeof(*reqs));
    ptrs = im_calloc(bc->n_pairs, sizeof(*ptrs));
    sids = im_calloc(bc->n_pairs, sizeof(*sids));
    for (size_t i = 0; i < bc->n_pairs; i++) {
        gw_sess_t one = {.id = bc->pairs[2 * i], .user = bc->pairs[2 * i + 1]};

        im__v1__session_request__init(&reqs[i]);
        session_request(svc, &one, &reqs[i], sids[i], sizeof(sids[i]));
        ptrs[i] = &reqs[i];
    }
    req.sessions = ptrs;
    req.n_sessions = bc->n_pairs;
    req.routes_only = routes_only;
    gw__call(svc, bc, &im__v1__session__descriptor,
             connect ? GW_METHOD_CONNECT : GW_METHOD_DISCONNECT, &req.base);
    im_free(sids);
    im_free(ptrs);
    im_free(reqs);
}

static void flush_all(gw_service_t *svc)
{
    flush_sessions(svc, true);
    flush_sessions(svc, false);
    gw__flush_sends(svc);
}

static void flush_task(gw_t *gw, void *arg)
{
    gw_service_t *svc = arg;

    (void)gw;
    svc->flush_posted = false;
    flush_all(svc);
}

void gw__flush_soon(gw_service_t *svc)
{
    if (svc->flush_posted)
        return;
    svc->flush_posted = true;
    gw_post(svc->gw, flush_task, svc);
}

static void on_open(gw_t *gw, const gw_session_info_t *info, void *arg)
{
    gw_service_t *svc = arg;
    gw_sess_t *s = info->data; /* zeroed, freed with the session */

    (void)gw;
    s->id = info->id;
    s->user = info->user_id;
    s->pending = 2; /* routed to (Online), groups bound (Mine + barrier) */
    session_batch_add(svc, true, s->id, s->user);
}

static void on_close(gw_t *gw, const gw_session_info_t *info, int code, void *arg)
{
    gw_service_t *svc = arg;
    gw_sess_t *s = info->data;

    (void)gw;
    (void)code;
    if (s == NULL)
        return;
    while (s->n_groups > 0)
        gw__group_remove(svc, s, s->groups[s->n_groups - 1]);
    if (s->online)
        session_batch_add(svc, false, s->id, s->user);
    im_free(s->groups);
    s->groups = NULL;
}

/* ------------------------------------------------------------ deliveries */

/* The origin session id when the origin is this gateway instance, else 0. */
static uint64_t local_origin(gw_service_t *svc, const char *origin)
{
    const char *me = gw_instance_id(svc->gw);
    size_t n = strlen(me);

    if (origin == NULL || strncmp(origin, me, n) != 0 || origin[n] != '/')
        return 0;
    return strtoull(origin + n + 1, NULL, 16);
}

#define USER_IDS_STACK 64

/* The ids of every session of user here: in stack (USER_IDS_STACK long) when
 * they fit, else in an allocation the caller frees (the result != stack). */
static uint64_t *user_sessions(gw_service_t *svc, uint64_t user, uint64_t *stack, size_t *n)
{
    uint64_t *all = stack;

    *n = gw_user_sessions(svc->gw, user, stack, USER_IDS_STACK);
    if (*n > USER_IDS_STACK) {
        all = im_malloc(*n * sizeof(*all));
        *n = gw_user_sessions(svc->gw, user, all, *n);
    }
    return all;
}

/* Queues b to the sessions of the users (direct) or of the group's local
 * members, except `skip` and (when skip_user) the sessions of skip_user. */
static void fan_out(gw_service_t *svc, const Im__V1__Delivery *d, uint64_t group, im_buf_t *b,
                    uint64_t skip, uint64_t skip_user)
{
    uint64_t ids[USER_IDS_STACK];

    if (group != 0) {
        gw_members_t *m = im_map_get(&svc->groups, group);
        for (size_t i = 0; m != NULL && i < m->n; i++) {
            gw_sess_t *s = gw_session_data(svc->gw, m->sessions[i]);
            if (m->sessions[i] != skip && s != NULL && s->user != skip_user &&
                gw_session_send(svc->gw, m->sessions[i], b) == IM_OK)
                svc->delivered++;
        }
        return;
    }
    for (size_t u = 0; u < d->n_user_ids; u++) {
        size_t n;
        uint64_t *all;

        if (d->user_ids[u] == skip_user)
            continue;
        all = user_sessions(svc, d->user_ids[u], ids, &n);
        for (size_t i = 0; i < n; i++)
            if (all[i] != skip && gw_session_send(svc->gw, all[i], b) == IM_OK)
                svc->delivered++;
        if (all != ids)
            im_free(all);
    }
}

static void deliver_message(gw_service_t *svc, const Im__V1__Delivery *d)
{
    const Im__V1__ChatMessage *m = d->message;
    im_buf_t *b = gw__msg_frame(svc, m);

    if (b == NULL)
        return;
    fan_out(svc, d, m->to_group, b, local_origin(svc, d->origin_session), 0);
    im_buf_unref(b);
}

static void deliver_receipt(gw_service_t *svc, const Im__V1__Delivery *d)
{
    const Im__V1__Receipt *r = d->receipt;
    uint64_t group = 0;
    im_jw_t w;
    im_buf_t *b = gw__buf_begin(svc, 256, &w);

    if (b == NULL || r->conv == NULL) {
        im_buf_unref(b);
        return;
    }
    if (sscanf(r->conv, "g:%" SCNu64, &group) != 1)
        group = 0;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "receipt");
    im_jw_key(&w, "conv");
    im_jw_cstr(&w, r->conv);
    gw__jw_id(&w, "user", r->user_id);
    im_jw_key(&w, "seq");
    im_jw_uint64(&w, r->read_seq);
    im_jw_key(&w, "ts");
    im_jw_int64(&w, r->at_ms);
    im_jw_obj_end(&w);
    if ((b = gw__buf_finish(svc, b, &w)) == NULL)
        return;
    fan_out(svc, d, group, b, 0, 0);
    im_buf_unref(b);
}

static void deliver_typing(gw_service_t *svc, const Im__V1__Delivery *d)
{
    const Im__V1__Typing *t = d->typing;
    uint64_t group = 0;
    im_jw_t w;
    im_buf_t *b = gw__buf_begin(svc, 256, &w);

    if (b == NULL || t->conv == NULL) {
        im_buf_unref(b);
        return;
    }
    if (sscanf(t->conv, "g:%" SCNu64, &group) != 1)
        group = 0;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "typing");
    im_jw_key(&w, "conv");
    im_jw_cstr(&w, t->conv);
    gw__jw_id(&w, "user", t->user_id);
    im_jw_obj_end(&w);
    if ((b = gw__buf_finish(svc, b, &w)) == NULL)
        return;
    fan_out(svc, d, group, b, 0, t->user_id);
    im_buf_unref(b);
}

/* Presence goes to direct peers (user_ids) or to one group's members
 * (group_id, from the "g.<id>" key it was routed by). */
static void deliver_presence(gw_service_t *svc, const Im__V1__Delivery *d)
{
    const Im__V1__Presence *p = d->presence;
    im_jw_t w;
    im_buf_t *b = gw__buf_begin(svc, 256, &w);

    if (b == NULL)
        return;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "presence");
    gw__jw_id(&w, "user", p->user_id);
    im_jw_key(&w, "online");
    im_jw_bool(&w, p->online);
    im_jw_key(&w, "ts");
    im_jw_int64(&w, p->at_ms);
    im_jw_obj_end(&w);
    if ((b = gw__buf_finish(svc, b, &w)) == NULL)
        return;
    fan_out(svc, d, d->group_id, b, 0, p->user_id);
    im_buf_unref(b);
}

static void deliver_group_event(gw_service_t *svc, const Im__V1__Delivery *d)
{
    const Im__V1__GroupEvent *e = d->group_event;
    uint64_t ids[USER_IDS_STACK], *all;
    size_t n;
    im_jw_t w;
    im_buf_t *b;

    all = user_sessions(svc, e->user_id, ids, &n);
    for (size_t i = 0; i < n; i++) {
        gw_sess_t *s = gw_session_data(svc->gw, all[i]);
        if (s == NULL)
            continue;
        if (e->joined)
            gw__group_add(svc, s, e->group_id);
        else
            gw__group_remove(svc, s, e->group_id);
    }
    if (all != ids)
        im_free(all);
    b = gw__buf_begin(svc, 256, &w);
    if (b == NULL)
        return;
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, "group");
    gw__jw_id(&w, "group", e->group_id);
    im_jw_key(&w, "joined");
    im_jw_bool(&w, e->joined);
    im_jw_obj_end(&w);
    if ((b = gw__buf_finish(svc, b, &w)) == NULL)
        return;
    gw_user_send(svc->gw, e->user_id, b);
    im_buf_unref(b);
}

typedef struct {
    gw_service_t *svc;
    Im__V1__Delivery *d;
} delivery_job_t;

static void deliver_one(gw_service_t *svc, const Im__V1__Delivery *d)
{
    svc->deliveries++;
    if (d->message != NULL)
        deliver_message(svc, d);
    else if (d->receipt != NULL)
        deliver_receipt(svc, d);
    else if (d->typing != NULL)
        deliver_typing(svc, d);
    else if (d->presence != NULL)
        deliver_presence(svc, d);
    else if (d->group_event != NULL)
        deliver_group_event(svc, d);
}

static void delivery_job(gw_t *gw, void *arg)
{
    delivery_job_t *j = arg;
    gw_service_t *svc = j->svc;
    const Im__V1__Delivery *d = j->d;

    (void)gw;
    if (d->n_batch == 0)
        deliver_one(svc, d);
    for (size_t i = 0; i < d->n_batch; i++)
        if (d->batch[i]->n_batch == 0) /* one level: logic never nests them */
            deliver_one(svc, d->batch[i]);
    protobuf_c_message_free_unpacked(&j->d->base, NULL);
    im_free(j);
}

static void on_delivery(void *arg, Im__V1__Delivery *d)
{
    gw_service_t *svc = arg;
    delivery_job_t *j = im_malloc(sizeof(*j));

    j->svc = svc;
    j->d = d;
    gw_post(svc->gw, delivery_job, j);
}

static void resync_one(gw_t *gw, const gw_session_info_t *info, void *arg)
{
    gw_session_send(gw, info->id, arg);
}

/* After deliveries may have been lost, every client is told to sync. */
static void resync_task(gw_t *gw, void *arg)
{
    gw_service_t *svc = arg;
    static const char frame[] = "{\"type\":\"resync\"}";
    im_buf_t *b = im_buf_alloc_any(gw_pool(gw), sizeof(frame));

    if (b == NULL)
        return;
    im_buf_append(b, frame, sizeof(frame) - 1);
    svc->resyncs++;
    gw_sessions_foreach(gw, resync_one, b);
    im_buf_unref(b);
}

/* The first "up" is the start: nothing was missed before it. */
static void on_deliver_state(void *arg, bool up)
{
    gw_service_t *svc = arg;

    if (up && atomic_exchange(&svc->deliver_was_up, true))
        gw_post(svc->gw, resync_task, svc);
}

/* ------------------------------------------------------------ heartbeats */

static void pairs_push(gw_pairs_t *p, uint64_t id, uint64_t user)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        p->v = im_realloc(p->v, 2 * p->cap * sizeof(*p->v));
    }
    p->v[2 * p->n] = id;
    p->v[2 * p->n + 1] = user;
    p->n++;
}

static void flush_rereg(gw_service_t *svc);

/* A routes-only Session.Connect of sessions registered again is back: those
 * routed are online; a session closed meanwhile is taken offline again (it
 * may have been routed to); a deleted user's session is closed; the others
 * wait for the next heartbeat and are tried again. */
static void rereg_done(gw_service_t *svc, gw_call_t *bc)
{
    const Im__V1__SessionBatchResponse *r = (const Im__V1__SessionBatchResponse *)bc->resp;
    bool whole = bc->code == IM_RPC_OK && r != NULL && r->n_results == bc->n_pairs;
    size_t failed = 0;

    svc->rereg_calls--;
    for (size_t i = 0; i < bc->n_pairs; i++) {
        uint64_t id = bc->pairs[2 * i], user = bc->pairs[2 * i + 1];
        const Im__V1__SessionResult *res = whole ? r->results[i] : NULL;
        gw_sess_t *s = gw_session_data(svc->gw, id);

        if (res != NULL && res->code == IM_RPC_OK) {
            svc->reregistered++;
            if (s == NULL)
                session_batch_add(svc, false, id, user);
            else
                s->online = true;
        } else if (s == NULL) {
            if (res == NULL) /* timed out, maybe after logic routed it */
                session_batch_add(svc, false, id, user);
        } else if (res != NULL && res->code == IM_RPC_PERMISSION_DENIED) {
            gw_session_close(svc->gw, id, 1008, "user_deleted");
        } else {
            pairs_push(&svc->rereg_retry, id, user);
            failed++;
        }
    }
    if (failed > 0) {
        im_log_warn("service: registering %zu sessions again failed (%s): retried at the next "
                    "heartbeat",
                    failed, whole ? "per session" : bc->message ? bc->message : "bad answer");
        atomic_store(&svc->rereg_waiting, true);
    }
    flush_rereg(svc);
}

/* Sends the sessions waiting in rereg, GW_SESSION_BATCH_MAX per call, while
 * fewer than GW_SESSION_CALLS_MAX such calls are in flight.  Sessions closed
 * since they were listed are skipped (their Offline went out). */
static void flush_rereg(gw_service_t *svc)
{
    while (svc->rereg.n > 0 && svc->rereg_calls < GW_SESSION_CALLS_MAX) {
        gw_call_t *bc = gw__call_new(svc, GW_CALL_ONLINE, rereg_done);
        size_t k = 0;

        bc->pairs = im_malloc(2 * GW_SESSION_BATCH_MAX * sizeof(*bc->pairs));
        while (svc->rereg.n > 0 && k < GW_SESSION_BATCH_MAX) {
            const uint64_t *p = &svc->rereg.v[2 * --svc->rereg.n];

            if (gw_session_data(svc->gw, p[0]) == NULL)
                continue;
            bc->pairs[2 * k] = p[0];
            bc->pairs[2 * k + 1] = p[1];
            k++;
        }
        if (k == 0) {
            gw__call_free(bc);
            break;
        }
        bc->n_pairs = k;
        svc->rereg_calls++;
        session_batch_call(svc, bc, true, true);
    }
}

static void rereg_one(gw_t *gw, const gw_session_info_t *info, void *arg)
{
    gw_service_t *svc = arg;
    const gw_sess_t *s = info->data;

    (void)gw;
    pairs_push(&svc->rereg, s->id, s->user);
}

/* The lease was gone (Redis lost it, and every route with it, or this
 * gateway was cut off longer than the TTL): register every session again,
 * in batches.  A list still being sent is replaced by the new one. */
static void reregister_task(gw_t *gw, void *arg)
{
    gw_service_t *svc = arg;

    svc->rereg.n = 0;
    svc->rereg_retry.n = 0;
    atomic_store(&svc->rereg_waiting, false);
    gw_sessions_foreach(gw, rereg_one, svc);
    if (svc->rereg.n > 0)
        im_log_warn("service: session lease was lost: registering %zu sessions again",
                    svc->rereg.n);
    flush_rereg(svc);
}

/* The heartbeat after a registration that failed: those sessions again. */
static void rereg_retry_task(gw_t *gw, void *arg)
{
    gw_service_t *svc = arg;

    (void)gw;
    atomic_store(&svc->rereg_waiting, false);
    for (size_t i = 0; i < svc->rereg_retry.n; i++)
        pairs_push(&svc->rereg, svc->rereg_retry.v[2 * i], svc->rereg_retry.v[2 * i + 1]);
    svc->rereg_retry.n = 0;
    flush_rereg(svc);
}

static void *heartbeat_main(void *arg)
{
    gw_service_t *svc = arg;

    pthread_mutex_lock(&svc->hb_lock);
    while (!atomic_load(&svc->stopping)) {
        Im__V1__SessionRequest req = IM__V1__SESSION_REQUEST__INIT;
        ProtobufCMessage *resp = NULL;
        struct timespec until;
        bool ok = false;

        pthread_mutex_unlock(&svc->hb_lock);
        req.gateway_id = (char *)gw_instance_id(svc->gw);
        for (size_t i = 0; i < svc->n_clients; i++) {
            if (im_rpc_call_sync(svc->clients[i], &im__v1__session__descriptor, 2, &req.base,
                                 svc->cfg.rpc_timeout_ms, NULL, 0, &resp, NULL, 0) == IM_RPC_OK) {
                ok = true;
                if (((Im__V1__SessionResponse *)resp)->first)
                    gw_post(svc->gw, reregister_task, svc);
                else if (atomic_load(&svc->rereg_waiting))
                    gw_post(svc->gw, rereg_retry_task, svc);
                protobuf_c_message_free_unpacked(resp, NULL);
                break;
            }
        }
        if (!ok && atomic_load(&svc->logic_ok))
            im_log_warn("service: no logic instance answered the heartbeat");
        atomic_store(&svc->logic_ok, ok);
        pthread_mutex_lock(&svc->hb_lock);
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += svc->cfg.heartbeat_ms / 1000;
        until.tv_nsec += (long)(svc->cfg.heartbeat_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (!atomic_load(&svc->stopping))
            pthread_cond_timedwait(&svc->hb_cond, &svc->hb_lock, &until);
    }
    pthread_mutex_unlock(&svc->hb_lock);
    return NULL;
}

/* ------------------------------------------------------------ health, metrics */

static int on_health(gw_t *gw, im_jw_t *w, void *arg)
{
    gw_service_t *svc = arg;
    bool logic = atomic_load(&svc->logic_ok), broker = gw_deliver_is_up(svc->deliver);

    (void)gw;
    im_jw_key(w, "logic");
    im_jw_cstr(w, logic ? "ok" : "unavailable");
    im_jw_key(w, "broker");
    im_jw_cstr(w, broker ? "ok" : "unavailable");
    return logic && broker ? 0 : 1;
}

static void on_metrics(gw_t *gw, gw_sb_t *out, void *arg)
{
    gw_service_t *svc = arg;
    gw_deliver_stats_t ds;

    (void)gw;
    gw_deliver_stats(svc->deliver, &ds);
    gw_sb_printf(out, "# TYPE im_gateway_sends_total counter\nim_gateway_sends_total %" PRIu64 "\n",
                 svc->sends);
    gw_sb_printf(out, "# TYPE im_gateway_acks_total counter\nim_gateway_acks_total %" PRIu64 "\n",
                 svc->acks);
    gw_sb_printf(out,
                 "# TYPE im_gateway_send_errors_total counter\nim_gateway_send_errors_total %" PRIu64
                 "\n",
                 svc->send_errors);
    gw_sb_printf(out,
                 "# HELP im_gateway_send_batches_total SendBatch calls to logic (sends per call = "
                 "sends / batches).\n# TYPE im_gateway_send_batches_total counter\n"
                 "im_gateway_send_batches_total %" PRIu64 "\n",
                 svc->send_batches);
    gw_sb_printf(out,
                 "# TYPE im_gateway_deliveries_total counter\nim_gateway_deliveries_total %" PRIu64
                 "\n",
                 svc->deliveries);
    gw_sb_printf(out,
                 "# TYPE im_gateway_delivered_frames_total counter\n"
                 "im_gateway_delivered_frames_total %" PRIu64 "\n",
                 svc->delivered);
    gw_sb_printf(out, "# TYPE im_gateway_resyncs_total counter\nim_gateway_resyncs_total %" PRIu64
                      "\n",
                 svc->resyncs);
    gw_sb_printf(out, "# TYPE im_gateway_groups_bound gauge\nim_gateway_groups_bound %" PRIu64 "\n",
                 ds.groups);
    gw_sb_printf(out,
                 "# TYPE im_gateway_reregistered_sessions_total counter\n"
                 "im_gateway_reregistered_sessions_total %" PRIu64 "\n",
                 svc->reregistered);
    {
        char hist[2048];
        size_t n = im_hist_format(&svc->ack_latency, "im_gateway_send_ack_seconds",
                                  "Client send frame to its ack (durable) or error.", hist,
                                  sizeof(hist));
        gw_sb_append(out, hist, n < sizeof(hist) ? n : sizeof(hist) - 1);
    }
    gw_sb_printf(out, "# TYPE im_gateway_logic_up gauge\nim_gateway_logic_up %d\n",
                 atomic_load(&svc->logic_ok) ? 1 : 0);
    gw_sb_printf(out, "# TYPE im_gateway_broker_up gauge\nim_gateway_broker_up %d\n",
                 gw_deliver_is_up(svc->deliver) ? 1 : 0);
    gw_sb_printf(out,
                 "# TYPE im_gateway_upstream_calls_in_flight gauge\n"
                 "im_gateway_upstream_calls_in_flight %d\n",
                 atomic_load(&svc->outstanding));
}

/* ------------------------------------------------------------ lifecycle */

void gw_service_hooks(gw_service_t *svc, gw_hooks_t *out)
{
    memset(out, 0, sizeof(*out));
    out->arg = svc;
    out->session_data_size = sizeof(gw_sess_t);
    out->on_open = on_open;
    out->on_close = on_close;
    out->on_frame = gw__on_frame;
    out->on_http = gw__on_http;
    out->on_health = on_health;
    out->on_metrics = on_metrics;
}

im_err_t gw_service_start(gw_service_t *svc, gw_t *gw)
{
    gw_deliver_config_t dc = {
        .amqp = svc->cfg.amqp,
        .gateway_id = gw_instance_id(gw),
        .on_delivery = on_delivery,
        .on_state = on_deliver_state,
        .arg = svc,
    };
    im_err_t rc;

    svc->gw = gw;
    dc.amqp.heartbeat_s = dc.amqp.heartbeat_s ? dc.amqp.heartbeat_s : 30;
    svc->deliver = gw_deliver_new(&dc);
    if ((rc = gw_deliver_start(svc->deliver)) != IM_OK)
        return rc;
    if (pthread_create(&svc->heartbeat, NULL, heartbeat_main, svc) != 0)
        return IM_ENOMEM;
    svc->started = true;
    return IM_OK;
}

void gw_service_stop(gw_service_t *svc)
{
    if (!svc->started)
        return;
    svc->started = false;
    pthread_mutex_lock(&svc->hb_lock);
    atomic_store(&svc->stopping, true);
    pthread_cond_signal(&svc->hb_cond);
    pthread_mutex_unlock(&svc->hb_lock);
    pthread_join(svc->heartbeat, NULL);
    /* Freed now, while gw is alive: waiting barriers fire and post to it. */
    gw_deliver_free(svc->deliver);
    svc->deliver = NULL;
    /* The loop has stopped (this is its thread or it is gone): the batches
     * its last turn collected, the Disconnects of the sessions closed at
     * shutdown above all, go out now, however many calls are in flight. */
    svc->drain = true;
    flush_all(svc);
    /* Offline calls of the sessions closed at shutdown: give them a second. */
    for (int i = 0; i < 100 && atomic_load(&svc->outstanding) > 0; i++) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (size_t i = 0; i < svc->n_clients; i++)
        im_rpc_client_free(svc->clients[i]);
    svc->n_clients = 0;
}

void gw_service_free(gw_service_t *svc)
{
    uint64_t key;
    void *val;

    if (svc == NULL)
        return;
    gw_service_stop(svc);
    for (size_t i = 0; i < svc->n_clients; i++)
        im_rpc_client_free(svc->clients[i]);
    im_free(svc->connects);
    im_free(svc->disconnects);
    im_free(svc->rereg.v);
    im_free(svc->rereg_retry.v);
    for (size_t i = 0; i < svc->n_lanes; i++) {
        for (size_t j = 0; j < svc->lanes[i].n; j++) /* the loop never ran again */
            gw__call_free(svc->lanes[i].q[j]);
        im_free(svc->lanes[i].q);
    }
    im_free(svc->lanes);
    im_free(svc->client_down_until);
    IM_MAP_FOREACH(&svc->groups, key, val)
    {
        im_free(((gw_members_t *)val)->sessions);
        im_free(val);
    }
    im_map_free(&svc->groups);
    gw_deliver_free(svc->deliver);
    pthread_mutex_destroy(&svc->hb_lock);
    pthread_cond_destroy(&svc->hb_cond);
    im_free(svc->clients);
    im_free(svc->logic);
    im_free(svc->amqp_host);
    im_free(svc->amqp_user);
    im_free(svc->amqp_password);
    im_free(svc->amqp_vhost);
    im_free(svc);
}
