/*
 * gw_frame.c - client messages: the checks every message passes (UTF-8,
 * rate, JSON shape), the built-in "ping", dispatch of every other type to
 * the on_frame hook, and the error frames the client gets back.
 */
#include "gw_int.h"

#include <stdio.h>
#include <string.h>

#include "im_log.h"
#include "im_time.h"
#include "im_utf8.h"

/* Values (keys included) one message may hold.  A chat message has about a
 * dozen; this leaves room for batches while bounding the stack. */
#define MAX_TOKENS 512
/* A cid longer than this (as raw JSON text) is refused rather than echoed. */
#define CID_MAX 128

/* Writes the "cid" member of doc (token cid) to w, if there is one. */
static void echo_cid(const im_json_t *doc, int cid, im_jw_t *w)
{
    const im_json_tok_t *t;
    char buf[CID_MAX + 1];
    size_t len;

    if (doc == NULL || cid < 0)
        return;
    t = &doc->tok[cid];
    im_jw_key(w, "cid");
    if (t->type == IM_JSON_NUMBER)
        im_jw_number(w, doc->js + t->start, t->end - t->start);
    else if (im_json_str(doc, cid, buf, sizeof buf, &len) == IM_OK)
        im_jw_str(w, buf, len);
    else
        im_jw_null(w); /* cannot happen: check_cid bounds it */
}

/* Encodes {"type":type[,"code":code,"message":message][,"cid":...]} into a
 * pool buffer and queues it to s. */
static im_err_t send_simple(gw_t *gw, gw_session_t *s, const im_json_t *doc, int cid,
                            const char *type, const char *code, const char *message)
{
    size_t cap = 64 + strlen(type) + CID_MAX, len;
    im_buf_t *b;
    im_jw_t w;
    im_err_t rc;

    if (code != NULL)
        cap += strlen(code) + 6 * strlen(message);
    if ((b = im_buf_alloc_any(gw->pool, cap)) == NULL)
        return IM_EFULL;
    im_jw_init(&w, im_buf_data(b), im_buf_cap(b), 0);
    im_jw_obj_begin(&w);
    im_jw_key(&w, "type");
    im_jw_cstr(&w, type);
    if (code != NULL) {
        im_jw_key(&w, "code");
        im_jw_cstr(&w, code);
        im_jw_key(&w, "message");
        im_jw_cstr(&w, message);
    }
    echo_cid(doc, cid, &w);
    im_jw_obj_end(&w);
    rc = im_jw_finish(&w, &len);
    if (rc == IM_OK) {
        im_buf_set_len(b, len);
        rc = gw__send(gw, s, b);
    }
    im_buf_unref(b);
    return rc;
}

static void reply_error(gw_t *gw, gw_session_t *s, const im_json_t *doc, int cid, const char *code,
                        const char *message)
{
    gw->metrics.frame_errors++;
    send_simple(gw, s, doc, cid, "error", code, message);
}

static const char *parse_error_text(im_err_t rc)
{
    switch (rc) {
    case IM_EEXIST:
        return "duplicate key in an object";
    case IM_EDEPTH:
        return "nested too deeply";
    case IM_EFULL:
        return "too many values in one message";
    case IM_EUTF8:
        return "invalid \\u escape (lone surrogate)";
    default:
        return "malformed JSON";
    }
}

/* cid, when present, must be a short string or a number: it is echoed back. */
static int check_cid(const im_json_t *doc, int cid)
{
    im_json_type_t t = im_json_type(doc, cid);

    if (cid == IM_ENOENT)
        return 1;
    return (t == IM_JSON_STRING || t == IM_JSON_NUMBER) &&
           doc->tok[cid].end - doc->tok[cid].start <= CID_MAX;
}

/* Reads the "type" string into type[GW_TYPE_MAX + 1]; 0 if absent or bad. */
static int read_type(const im_json_t *doc, char *type)
{
    int t = im_json_find(doc, 0, "type");
    size_t len;

    return im_json_type(doc, t) == IM_JSON_STRING &&
           im_json_str(doc, t, type, GW_TYPE_MAX + 1, &len) == IM_OK && len > 0 &&
           strlen(type) == len;
}

static void dispatch(gw_t *gw, gw_session_t *s, const im_json_t *doc, int cid, const char *type)
{
    gw_frame_t f = {s->id, s->user_id, type, doc, cid};
    char msg[GW_TYPE_MAX + 32];
    im_err_t rc = IM_ENOENT;

    if (strcmp(type, "ping") == 0) {
        send_simple(gw, s, doc, cid, "pong", NULL, NULL);
        return;
    }
    if (gw->hooks.on_frame != NULL)
        rc = gw->hooks.on_frame(gw, &f, gw->hooks.arg);
    if (rc == IM_ENOENT) {
        snprintf(msg, sizeof msg, "unknown type \"%s\"", type);
        reply_error(gw, s, doc, cid, "unknown_type", msg);
    } else if (rc != IM_OK) {
        im_log_warn("session=%016llx user=%llu: handling \"%s\" failed: %s",
                    (unsigned long long)s->id, (unsigned long long)s->user_id, type,
                    im_strerror(rc));
        reply_error(gw, s, doc, cid, "internal", "the message could not be handled");
    }
}

/* Returns 0 when the message must not be processed (refused or closing).
 * doc and cid (may be NULL / negative) let a rate_limited error echo the
 * cid, so the client knows which message to send again later. */
static int admit(gw_t *gw, gw_session_t *s, const im_json_t *doc, int cid)
{
    switch (gw_bucket_take(&s->bucket, (uint32_t)gw->cfg.rate_limit, (uint32_t)gw->cfg.rate_burst,
                           im_mono_ms())) {
    case GW_RATE_OK:
        return 1;
    case GW_RATE_LIMITED:
        gw->metrics.rate_limited++;
        reply_error(gw, s, doc, cid, "rate_limited", "too many messages: slow down");
        return 0;
    case GW_RATE_ABUSE:
    default:
        gw->metrics.rate_limited++;
        im_log_info("session=%016llx user=%llu: rate limit abuse, closing",
                    (unsigned long long)s->id, (unsigned long long)s->user_id);
        gw__session_close(gw, s, 1008, "rate limit exceeded", GW_CLOSE_RATE);
        return 0;
    }
}

void gw__frame_text(gw_t *gw, gw_session_t *s, const char *data, size_t len)
{
    im_json_tok_t tok[MAX_TOKENS];
    char type[GW_TYPE_MAX + 1];
    im_json_t doc;
    im_err_t rc;
    int cid = -1;
    bool object;

    gw->metrics.frames_in++;
    gw->metrics.bytes_in += len;
    if (!im_utf8_valid(data, len)) {
        gw__session_close(gw, s, 1007, "invalid UTF-8", GW_CLOSE_BAD_UTF8);
        return;
    }
    rc = im_json_parse(&doc, data, len, tok, MAX_TOKENS, 0);
    object = rc == IM_OK && im_json_type(&doc, 0) == IM_JSON_OBJECT;
    if (object) {
        cid = im_json_find(&doc, 0, "cid");
        if (!check_cid(&doc, cid))
            cid = -1;
    }
    if (!admit(gw, s, object ? &doc : NULL, cid))
        return;
    if (rc != IM_OK) {
        reply_error(gw, s, NULL, -1, "bad_json", parse_error_text(rc));
        return;
    }
    if (!object) {
        reply_error(gw, s, NULL, -1, "bad_request", "a message must be a JSON object");
        return;
    }
    cid = im_json_find(&doc, 0, "cid");
    if (!check_cid(&doc, cid)) {
        reply_error(gw, s, NULL, -1, "bad_request", "cid must be a string or a number");
        return;
    }
    if (!read_type(&doc, type)) {
        reply_error(gw, s, &doc, cid, "bad_request",
                    "\"type\" must be a non-empty string of at most 32 bytes");
        return;
    }
    dispatch(gw, s, &doc, cid, type);
}

/* ---- for hooks ---- */

im_err_t gw_send_error(gw_t *gw, uint64_t session_id, const gw_frame_t *f, const char *code,
                       const char *message)
{
    gw_session_t *s = gw_sessions_get(&gw->sessions, session_id);

    if (s == NULL)
        return IM_ENOENT;
    gw->metrics.frame_errors++;
    return send_simple(gw, s, f ? f->doc : NULL, f ? f->cid : -1, "error", code, message);
}

void gw_frame_echo_cid(const gw_frame_t *f, im_jw_t *w)
{
    echo_cid(f->doc, f->cid, w);
}
