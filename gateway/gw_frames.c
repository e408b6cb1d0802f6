/*
 * gw_frames.c - the client protocol's requests (README "Client protocol"):
 * each frame type becomes one async call to logic, and its result comes back
 * to the session as a reply frame (or an error frame with the same cid).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "gw_service_int.h"
#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

#define CONV_MAX 48
#define BODY_MAX (64 * 1024)

/* Copies the frame's cid (a string or a number) into c.  False (an error
 * frame sent) when it is there but unusable. */
static bool take_cid(gw_service_t *svc, const gw_frame_t *f, gw_call_t *c, bool required)
{
    im_json_type_t type;
    size_t len = 0;

    if (f->cid < 0) {
        if (required)
            gw_send_error(svc->gw, f->session_id, f, "bad_request", "cid is required");
        return !required;
    }
    type = im_json_type(f->doc, f->cid);
    if (type == IM_JSON_NUMBER) { /* the number's text, as the client wrote it */
        const im_json_tok_t *tok = &f->doc->tok[f->cid];
        len = tok->end - tok->start;
        if (len < sizeof(c->cid)) {
            memcpy(c->cid, f->doc->js + tok->start, len);
            c->cid[len] = '\0';
        }
    } else if (type != IM_JSON_STRING ||
               im_json_str(f->doc, f->cid, c->cid, sizeof(c->cid), &len) != IM_OK) {
        len = 0;
    }
    if (len == 0 || len >= sizeof(c->cid) || strlen(c->cid) != len) {
        gw_send_error(svc->gw, f->session_id, f, "bad_request",
                      "cid must be a string or number of 1..64 characters");
        return false;
    }
    c->cid_is_number = type == IM_JSON_NUMBER;
    return true;
}

/* The string member key of the frame into buf; false (error sent) if it is
 * missing, not a string or too long. */
static bool take_str(gw_service_t *svc, const gw_frame_t *f, const char *key, char *buf,
                     size_t cap, size_t *len)
{
    int t = im_json_find(f->doc, 0, key);
    char msg[96];

    size_t n = 0;

    if (t >= 0 && im_json_type(f->doc, t) == IM_JSON_STRING &&
        im_json_str(f->doc, t, buf, cap, &n) == IM_OK && strlen(buf) == n) {
        if (len != NULL)
            *len = n;
        return true;
    }
    if (t >= 0 && im_json_type(f->doc, t) == IM_JSON_STRING && n >= cap)
        snprintf(msg, sizeof(msg), "%s is over %zu bytes", key, cap - 1);
    else
        snprintf(msg, sizeof(msg), "%s must be a string without NUL characters", key);
    gw_send_error(svc->gw, f->session_id, f,
                  n >= cap && strcmp(key, "body") == 0 ? "body_too_large" : "bad_request", msg);
    return false;
}

/* "to": {"user": id} or {"group": id}; false (error sent) otherwise. */
static bool take_target(gw_service_t *svc, const gw_frame_t *f, uint64_t *user, uint64_t *group)
{
    int to = im_json_find(f->doc, 0, "to");

    *user = *group = 0;
    if (to >= 0 && im_json_type(f->doc, to) == IM_JSON_OBJECT) {
        *user = gw__json_id(f->doc, to, "user");
        *group = gw__json_id(f->doc, to, "group");
    }
    if ((*user != 0) != (*group != 0))
        return true;
    gw_send_error(svc->gw, f->session_id, f, "bad_target",
                  "to must be {\"user\": id} or {\"group\": id}");
    return false;
}

static gw_call_t *frame_call(gw_service_t *svc, const gw_frame_t *f, gw_call_kind_t kind,
                             gw_call_done_fn done)
{
    gw_call_t *c = gw__call_new(svc, kind, done);

    c->session_id = f->session_id;
    c->user = f->user_id;
    return c;
}

/* ------------------------------------------------------------ send */

static void send_done(gw_service_t *svc, gw_call_t *c)
{
    const Im__V1__SendResponse *r = (const Im__V1__SendResponse *)c->resp;
    im_jw_t w;
    im_buf_t *b;

    im_hist_observe_us(&svc->ack_latency, im_mono_ns() / 1000 - c->start_us);
    if (c->code != IM_RPC_OK) {
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
    if ((b = gw__buf_finish(b, &w)) != NULL) {
        gw_session_send(svc->gw, c->session_id, b);
        im_buf_unref(b);
    }
}

static im_err_t on_send(gw_service_t *svc, const gw_frame_t *f)
{
    Im__V1__SendRequest req = IM__V1__SEND_REQUEST__INIT;
    gw_call_t *c = frame_call(svc, f, GW_CALL_SEND, send_done);
    char origin[128], *body = NULL;
    size_t len = 0;

    if (!take_cid(svc, f, c, true) || !take_target(svc, f, &req.to_user, &req.to_group))
        goto refused;
    body = im_malloc(BODY_MAX + 1);
    if (!take_str(svc, f, "body", body, BODY_MAX + 1, &len))
        goto refused;
    snprintf(origin, sizeof(origin), "%s/%" PRIx64, gw_instance_id(svc->gw), f->session_id);
    req.sender = f->user_id;
    req.client_msg_id = c->cid;
    req.body = body;
    req.origin_session = origin;
    svc->sends++;
    gw__call(svc, c, &im__v1__message__descriptor, 0, &req.base);
    im_free(body);
    return IM_OK;
refused:
    im_free(body);
    im_free(c);
    return IM_OK;
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
        const Im__V1__ChatMessage *m = r->messages[i];
        if ((b = gw__buf_begin(svc, 512 + strlen(m->body) * 6, &w)) == NULL)
            return;
        im_jw_obj_begin(&w);
        im_jw_key(&w, "type");
        im_jw_cstr(&w, "msg");
        gw__jw_msg_fields(&w, m);
        im_jw_obj_end(&w);
        if ((b = gw__buf_finish(b, &w)) == NULL)
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
    if ((b = gw__buf_finish(b, &w)) != NULL) {
        gw_session_send(svc->gw, c->session_id, b);
        im_buf_unref(b);
    }
}

/* "have": {"<conv>": seq, ...}: the highest seq the client holds per conv. */
static im_err_t on_sync(gw_service_t *svc, const gw_frame_t *f)
{
    Im__V1__SyncRequest req = IM__V1__SYNC_REQUEST__INIT;
    gw_call_t *c = frame_call(svc, f, GW_CALL_SYNC, sync_done);
    int have = im_json_find(f->doc, 0, "have"), lim = im_json_find(f->doc, 0, "limit");
    Im__V1__ConvPosition *pos = NULL, **ptrs = NULL;
    char (*convs)[CONV_MAX + 1] = NULL;
    size_t n = 0, cap = 0;
    uint64_t limit = 0;

    if (!take_cid(svc, f, c, false))
        goto done;
    if (have >= 0 && im_json_type(f->doc, have) != IM_JSON_OBJECT) {
        gw_send_error(svc->gw, f->session_id, f, "bad_request",
                      "have must be an object {conv: seq}");
        goto done;
    }
    for (int k = have >= 0 ? im_json_first(f->doc, have) : -1; k >= 0;
         k = im_json_next(f->doc, k)) {
        uint64_t seq = 0;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            pos = im_realloc(pos, cap * sizeof(*pos));
            ptrs = im_realloc(ptrs, cap * sizeof(*ptrs));
            convs = im_realloc(convs, cap * sizeof(*convs));
        }
        if (im_json_str(f->doc, k, convs[n], sizeof(convs[n]), NULL) != IM_OK ||
            im_json_uint64(f->doc, k + 1, &seq) != IM_OK) {
            gw_send_error(svc->gw, f->session_id, f, "bad_request",
                          "have: each key a conversation id, each value a seq");
            goto done;
        }
        im__v1__conv_position__init(&pos[n]);
        pos[n].seq = seq;
        n++;
    }
    for (size_t i = 0; i < n; i++) { /* the arrays have stopped moving */
        pos[i].conv = convs[i];
        ptrs[i] = &pos[i];
    }
    if (lim >= 0)
        im_json_uint64(f->doc, lim, &limit);
    req.user_id = f->user_id;
    req.have = ptrs;
    req.n_have = n;
    req.limit = (uint32_t)(limit && limit < svc->cfg.sync_limit ? limit : svc->cfg.sync_limit);
    gw__call(svc, c, &im__v1__message__descriptor, 1, &req.base);
    c = NULL;
done:
    im_free(c);
    im_free(pos);
    im_free(ptrs);
    im_free(convs);
    return IM_OK;
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
    if ((b = gw__buf_finish(b, &w)) != NULL) {
        gw_session_send(svc->gw, c->session_id, b);
        im_buf_unref(b);
    }
}

static im_err_t on_read(gw_service_t *svc, const gw_frame_t *f)
{
    Im__V1__MarkReadRequest req = IM__V1__MARK_READ_REQUEST__INIT;
    gw_call_t *c = frame_call(svc, f, GW_CALL_READ, read_done);
    int seq_t = im_json_find(f->doc, 0, "seq");
    char conv[CONV_MAX + 1];

    if (!take_cid(svc, f, c, false) || !take_str(svc, f, "conv", conv, sizeof(conv), NULL)) {
        im_free(c);
        return IM_OK;
    }
    if (seq_t < 0 || im_json_uint64(f->doc, seq_t, &req.seq) != IM_OK) {
        gw_send_error(svc->gw, f->session_id, f, "bad_request", "seq must be a number");
        im_free(c);
        return IM_OK;
    }
    req.user_id = f->user_id;
    req.conv = conv;
    gw__call(svc, c, &im__v1__message__descriptor, 3, &req.base);
    return IM_OK;
}

/* Typing has no reply unless it is refused. */
static void typing_done(gw_service_t *svc, gw_call_t *c)
{
    if (c->code != IM_RPC_OK)
        gw__reply_error(svc, c);
}

static im_err_t on_typing(gw_service_t *svc, const gw_frame_t *f)
{
    Im__V1__TypingRequest req = IM__V1__TYPING_REQUEST__INIT;
    gw_call_t *c = frame_call(svc, f, GW_CALL_TYPING, typing_done);

    if (!take_cid(svc, f, c, false) || !take_target(svc, f, &req.to_user, &req.to_group)) {
        im_free(c);
        return IM_OK;
    }
    req.user_id = f->user_id;
    gw__call(svc, c, &im__v1__message__descriptor, 5, &req.base);
    return IM_OK;
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
    if ((b = gw__buf_finish(b, &w)) != NULL) {
        gw_session_send(svc->gw, c->session_id, b);
        im_buf_unref(b);
    }
}

static im_err_t on_history(gw_service_t *svc, const gw_frame_t *f)
{
    Im__V1__HistoryRequest req = IM__V1__HISTORY_REQUEST__INIT;
    gw_call_t *c = frame_call(svc, f, GW_CALL_HISTORY, history_done);
    int before = im_json_find(f->doc, 0, "before"), lim = im_json_find(f->doc, 0, "limit");
    char conv[CONV_MAX + 1];
    uint64_t limit = 50;

    if (!take_cid(svc, f, c, false) || !take_str(svc, f, "conv", conv, sizeof(conv), NULL)) {
        im_free(c);
        return IM_OK;
    }
    if (before >= 0)
        im_json_uint64(f->doc, before, &req.before_seq);
    if (lim >= 0)
        im_json_uint64(f->doc, lim, &limit);
    req.user_id = f->user_id;
    req.conv = conv;
    req.limit = (uint32_t)(limit > 0 && limit <= 200 ? limit : 50);
    gw__call(svc, c, &im__v1__message__descriptor, 2, &req.base);
    return IM_OK;
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
    if ((b = gw__buf_finish(b, &w)) != NULL) {
        gw_session_send(svc->gw, c->session_id, b);
        im_buf_unref(b);
    }
}

static im_err_t on_conversations(gw_service_t *svc, const gw_frame_t *f)
{
    Im__V1__ConversationsRequest req = IM__V1__CONVERSATIONS_REQUEST__INIT;
    gw_call_t *c = frame_call(svc, f, GW_CALL_CONVS, convs_done);

    if (!take_cid(svc, f, c, false)) {
        im_free(c);
        return IM_OK;
    }
    req.user_id = f->user_id;
    gw__call(svc, c, &im__v1__message__descriptor, 4, &req.base);
    return IM_OK;
}

im_err_t gw__on_frame(gw_t *gw, const gw_frame_t *f, void *arg)
{
    static const struct {
        const char *type;
        im_err_t (*fn)(gw_service_t *svc, const gw_frame_t *f);
    } types[] = {
        {"send", on_send},         {"sync", on_sync},       {"read", on_read},
        {"typing", on_typing},     {"history", on_history}, {"conversations", on_conversations},
    };

    (void)gw;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(f->type, types[i].type) == 0)
            return types[i].fn(arg, f);
    return IM_ENOENT;
}
