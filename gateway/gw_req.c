#include "gw_req.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "im_alloc.h"

static bool fail(gw_req_error_t *err, const char *code, const char *message)
{
    err->code = code;
    snprintf(err->message, sizeof(err->message), "%s", message);
    return false;
}

/* A cid: a string or number of 1..64 characters without NUL. */
static bool take_cid(const im_json_t *doc, int cid, bool required, gw_req_t *r,
                     gw_req_error_t *err)
{
    im_json_type_t type;
    size_t len = 0;

    if (cid < 0)
        return required ? fail(err, "bad_request", "cid is required") : true;
    type = im_json_type(doc, cid);
    if (type == IM_JSON_NUMBER) { /* the number's text, as the client wrote it */
        const im_json_tok_t *tok = &doc->tok[cid];
        len = tok->end - tok->start;
        if (len < sizeof(r->cid)) {
            memcpy(r->cid, doc->js + tok->start, len);
            r->cid[len] = '\0';
        }
    } else if (type != IM_JSON_STRING ||
               im_json_str(doc, cid, r->cid, sizeof(r->cid), &len) != IM_OK) {
        len = 0;
    }
    if (len == 0 || len >= sizeof(r->cid) || strlen(r->cid) != len) {
        r->cid[0] = '\0';
        return fail(err, "bad_request", "cid must be a string or number of 1..64 characters");
    }
    r->cid_is_number = type == IM_JSON_NUMBER;
    return true;
}

/* An id member: a decimal string or a non-negative integer; 0 if not. */
static uint64_t id_of(const im_json_t *doc, int obj, const char *key)
{
    int t = obj >= 0 ? im_json_find(doc, obj, key) : -1;
    char buf[24], *end;
    uint64_t v = 0;

    if (t < 0)
        return 0;
    if (im_json_type(doc, t) == IM_JSON_STRING) {
        if (im_json_str(doc, t, buf, sizeof(buf), NULL) != IM_OK || buf[0] < '0' || buf[0] > '9')
            return 0;
        v = strtoull(buf, &end, 10);
        return *end == '\0' ? v : 0;
    }
    return im_json_uint64(doc, t, &v) == IM_OK ? v : 0;
}

static bool take_target(const im_json_t *doc, gw_req_t *r, gw_req_error_t *err)
{
    int to = im_json_find(doc, 0, "to");

    if (to >= 0 && im_json_type(doc, to) == IM_JSON_OBJECT) {
        r->to_user = id_of(doc, to, "user");
        r->to_group = id_of(doc, to, "group");
    }
    if ((r->to_user != 0) != (r->to_group != 0))
        return true;
    return fail(err, "bad_target", "to must be {\"user\": id} or {\"group\": id}");
}

/* A string member into buf (cap bytes with the NUL). */
static bool take_str(const im_json_t *doc, const char *key, char *buf, size_t cap, size_t *len,
                     gw_req_error_t *err)
{
    int t = im_json_find(doc, 0, key);
    size_t n = 0;

    if (t >= 0 && im_json_type(doc, t) == IM_JSON_STRING &&
        im_json_str(doc, t, buf, cap, &n) == IM_OK && strlen(buf) == n) {
        if (len != NULL)
            *len = n;
        return true;
    }
    err->code = "bad_request";
    if (t >= 0 && im_json_type(doc, t) == IM_JSON_STRING && n >= cap) {
        err->code = strcmp(key, "body") == 0 ? "body_too_large" : "bad_request";
        snprintf(err->message, sizeof(err->message), "%s is over %zu bytes", key, cap - 1);
    } else {
        snprintf(err->message, sizeof(err->message), "%s must be a string without NUL", key);
    }
    return false;
}

/* An optional non-negative integer member; false (error) if present but bad. */
static bool take_u64(const im_json_t *doc, const char *key, uint64_t *out, bool required,
                     gw_req_error_t *err)
{
    int t = im_json_find(doc, 0, key);

    if (t < 0 && !required)
        return true;
    if (t >= 0 && im_json_uint64(doc, t, out) == IM_OK)
        return true;
    err->code = "bad_request";
    snprintf(err->message, sizeof(err->message), "%s must be a non-negative integer", key);
    return false;
}

static bool decode_send(const im_json_t *doc, gw_req_t *r, gw_req_error_t *err)
{
    if (!take_target(doc, r, err))
        return false;
    r->body = im_malloc(GW_REQ_BODY_MAX + 1);
    return take_str(doc, "body", r->body, GW_REQ_BODY_MAX + 1, &r->body_len, err);
}

/* "have": {"<conv>": seq, ...} */
static bool decode_sync(const im_json_t *doc, gw_req_t *r, gw_req_error_t *err)
{
    int have = im_json_find(doc, 0, "have");
    size_t cap = 0;

    if (!take_u64(doc, "limit", &r->limit, false, err))
        return false;
    if (have < 0)
        return true;
    if (im_json_type(doc, have) != IM_JSON_OBJECT)
        return fail(err, "bad_request", "have must be an object {conv: seq}");
    for (int k = im_json_first(doc, have); k >= 0; k = im_json_next(doc, k)) {
        gw_req_pos_t *p;
        if (r->n_have == GW_REQ_HAVE_MAX)
            return fail(err, "bad_request", "have names too many conversations");
        if (r->n_have == cap) {
            cap = cap ? cap * 2 : 16;
            r->have = im_realloc(r->have, cap * sizeof(*r->have));
        }
        p = &r->have[r->n_have];
        if (im_json_str(doc, k, p->conv, sizeof(p->conv), NULL) != IM_OK ||
            im_json_uint64(doc, k + 1, &p->seq) != IM_OK)
            return fail(err, "bad_request", "have: each key a conversation id, each value a seq");
        r->n_have++;
    }
    return true;
}

bool gw_req_decode(const im_json_t *doc, int cid, const char *type, gw_req_t *out,
                   gw_req_error_t *err)
{
    static const struct {
        const char *type;
        gw_req_kind_t kind;
        bool cid_required;
    } types[] = {
        {"send", GW_REQ_SEND, true},       {"sync", GW_REQ_SYNC, false},
        {"read", GW_REQ_READ, false},      {"typing", GW_REQ_TYPING, false},
        {"history", GW_REQ_HISTORY, false}, {"conversations", GW_REQ_CONVERSATIONS, false},
    };
    size_t i;

    memset(out, 0, sizeof(*out));
    err->code = NULL;
    err->message[0] = '\0';
    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(type, types[i].type) == 0)
            break;
    if (i == sizeof(types) / sizeof(types[0]))
        return false;
    out->kind = types[i].kind;
    if (!take_cid(doc, cid, types[i].cid_required, out, err))
        return false;
    switch (out->kind) {
    case GW_REQ_SEND:
        return decode_send(doc, out, err);
    case GW_REQ_SYNC:
        return decode_sync(doc, out, err);
    case GW_REQ_READ:
        return take_str(doc, "conv", out->conv, sizeof(out->conv), NULL, err) &&
               take_u64(doc, "seq", &out->seq, true, err);
    case GW_REQ_TYPING:
        return take_target(doc, out, err);
    case GW_REQ_HISTORY:
        return take_str(doc, "conv", out->conv, sizeof(out->conv), NULL, err) &&
               take_u64(doc, "before", &out->before, false, err) &&
               take_u64(doc, "limit", &out->limit, false, err);
    case GW_REQ_CONVERSATIONS:
        return true;
    }
    return true;
}

void gw_req_free(gw_req_t *r)
{
    im_free(r->body);
    im_free(r->have);
    r->body = NULL;
    r->have = NULL;
}

bool gw_body_parse(gw_body_t *b, const char *body, size_t len)
{
    return im_json_parse(&b->doc, body, len, b->tok, GW_BODY_TOKENS, 4) == IM_OK &&
           im_json_type(&b->doc, 0) == IM_JSON_OBJECT;
}

bool gw_body_str(const gw_body_t *b, const char *key, char *buf, size_t cap)
{
    int t = im_json_find(&b->doc, 0, key);
    size_t n = 0;

    return t >= 0 && im_json_str(&b->doc, t, buf, cap, &n) == IM_OK && strlen(buf) == n;
}
