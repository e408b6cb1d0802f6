/*
 * gw_req.h - decoding of the client protocol's request frames (README
 * "Client protocol") into plain structs, with the error frame to send when a
 * frame is not acceptable.  Pure: no I/O, no gateway state, so it is unit
 * tested and fuzzed on its own (tests/fuzz/fuzz_frame.c).
 */
#ifndef GW_REQ_H
#define GW_REQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_json.h"

#define GW_REQ_CID_MAX 64
#define GW_REQ_CONV_MAX 48
#define GW_REQ_BODY_MAX (64 * 1024) /* logic's own limit (4 KiB) is checked there */
#define GW_REQ_HAVE_MAX 10000       /* conversations named in one sync */

typedef enum {
    GW_REQ_SEND,
    GW_REQ_SYNC,
    GW_REQ_READ,
    GW_REQ_TYPING,
    GW_REQ_HISTORY,
    GW_REQ_CONVERSATIONS,
} gw_req_kind_t;

typedef struct {
    char conv[GW_REQ_CONV_MAX + 1];
    uint64_t seq;
} gw_req_pos_t;

typedef struct {
    gw_req_kind_t kind;
    char cid[GW_REQ_CID_MAX + 1]; /* "" when absent */
    bool cid_is_number;
    uint64_t to_user, to_group; /* send, typing: exactly one is set */
    char *body;                 /* send: NUL-terminated, no NUL inside */
    size_t body_len;
    char conv[GW_REQ_CONV_MAX + 1]; /* read, history */
    uint64_t seq;                   /* read */
    uint64_t before, limit;         /* history (limit 0: default); sync limit */
    gw_req_pos_t *have;             /* sync */
    size_t n_have;
} gw_req_t;

/* The error to answer with when decoding fails. */
typedef struct {
    const char *code; /* static: bad_request, bad_target, body_too_large */
    char message[128];
} gw_req_error_t;

/* Decodes the message doc (token 0, an object) of type `type` with its "cid"
 * at token cid (negative when absent).  Returns true with *out filled (free
 * it with gw_req_free), false with *err set, or false with err->code NULL
 * when type is not a request type.  Never reads outside doc. */
bool gw_req_decode(const im_json_t *doc, int cid, const char *type, gw_req_t *out,
                   gw_req_error_t *err);

void gw_req_free(gw_req_t *r);

/* REST request bodies (gw_api.c): a JSON object of at most GW_BODY_TOKENS
 * tokens and depth 4, whose string members are read by key. */
#define GW_BODY_TOKENS 64
typedef struct {
    im_json_t doc;
    im_json_tok_t tok[GW_BODY_TOKENS];
} gw_body_t;

/* False when body[0..len) is not such an object. */
bool gw_body_parse(gw_body_t *b, const char *body, size_t len);

/* Copies string member key into buf (cap bytes with the NUL); false when it
 * is missing, not a string, longer than cap - 1 or holds a NUL. */
bool gw_body_str(const gw_body_t *b, const char *key, char *buf, size_t cap);

#endif
