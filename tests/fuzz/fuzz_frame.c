/*
 * fuzz_frame: a client's WebSocket text frame as the gateway decodes it:
 * the JSON tokenizer with the gateway's limits, then "type" and "cid", then
 * the request decoder (gateway/gw_req.c) for every request type.  Any input
 * must give a request or an error code, never a crash or a leak.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gw_req.h"
#include "im_json.h"

#define NTOK 512

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static im_json_tok_t tok[NTOK];
    im_json_t doc;
    char type[33];
    gw_req_error_t err;
    gw_req_t req;
    int t, cid;

    if (im_json_parse(&doc, (const char *)data, size, tok, NTOK, 16) != IM_OK ||
        im_json_type(&doc, 0) != IM_JSON_OBJECT)
        return 0;
    t = im_json_find(&doc, 0, "type");
    cid = im_json_find(&doc, 0, "cid");
    if (im_json_str(&doc, t, type, sizeof(type), NULL) != IM_OK)
        memcpy(type, "send", 5); /* decode bodies of any shape as a send too */
    if (gw_req_decode(&doc, cid < 0 ? -1 : cid, type, &req, &err)) {
        /* What the gateway relies on after a successful decode. */
        if (req.kind == GW_REQ_SEND && (req.body == NULL || strlen(req.body) != req.body_len))
            __builtin_trap();
        if ((req.kind == GW_REQ_SEND || req.kind == GW_REQ_TYPING) &&
            (req.to_user != 0) == (req.to_group != 0))
            __builtin_trap();
    } else if (err.code != NULL && err.message[0] == '\0') {
        __builtin_trap(); /* every refusal says why */
    }
    gw_req_free(&req);
    return 0;
}
