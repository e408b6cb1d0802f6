#include "im_jwt.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "im_json.h"
#include "im_sodium.h"

static const char HEADER_JSON[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* Unpadded base64url length of n bytes. */
#define B64_LEN(n) (((n)*4 + 2) / 3)

/* The longest payload we write: the fixed keys and punctuation (34 bytes), a
 * 20-digit sub, two 20-character int64s, and a name whose every byte the JSON
 * writer escapes as \u00XX. */
#define PAYLOAD_MAX (34 + 20 + 2 * 20 + 6 * IM_JWT_NAME_MAX)

_Static_assert(B64_LEN(sizeof HEADER_JSON - 1) + 1 + B64_LEN(PAYLOAD_MAX) + 1 +
                       B64_LEN(IM_HMAC_SHA256_BYTES) <=
                   IM_JWT_MAX_LEN,
               "im_jwt_sign could produce a token that im_jwt_verify rejects");

/* Decoded size of the longest segment a token of IM_JWT_MAX_LEN can hold. */
#define SEGMENT_MAX (IM_JWT_MAX_LEN / 4 * 3)

/* Our tokens hold 2 (header) or 4 (payload) members; the slack lets a future
 * issuer add claims without old gateways rejecting them. */
#define JSON_TOKENS 64

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t b64url_encode(const void *in, size_t n, char *out)
{
    const uint8_t *p = in;
    size_t i = 0, o = 0;
    uint32_t v;

    for (; i + 3 <= n; i += 3) {
        v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = B64URL[v >> 18];
        out[o++] = B64URL[v >> 12 & 63];
        out[o++] = B64URL[v >> 6 & 63];
        out[o++] = B64URL[v & 63];
    }
    if (n - i == 1) {
        v = (uint32_t)p[i] << 16;
        out[o++] = B64URL[v >> 18];
        out[o++] = B64URL[v >> 12 & 63];
    } else if (n - i == 2) {
        v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = B64URL[v >> 18];
        out[o++] = B64URL[v >> 12 & 63];
        out[o++] = B64URL[v >> 6 & 63];
    }
    return o;
}

static int b64url_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Strict decoding: the alphabet only (no '=', no whitespace), and canonical,
 * i.e. the bits of the last character that carry no data must be zero.
 * Otherwise several strings would decode to the same bytes and a token could
 * be altered without touching its signature. */
static bool b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *outlen)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;

    if (n % 4 == 1 || n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0) > cap)
        return false;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value(in[i]);

        if (v < 0)
            return false;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
        acc &= (1u << bits) - 1;
    }
    if (acc != 0)
        return false;
    *outlen = o;
    return true;
}

static im_err_t write_payload(const im_jwt_claims_t *c, char *buf, size_t cap, size_t *len)
{
    size_t name_len = c->name ? strlen(c->name) : 0;
    char sub[21];
    im_jw_t w;

    if (c->sub == 0 || name_len > IM_JWT_NAME_MAX)
        return IM_EINVAL;
    snprintf(sub, sizeof sub, "%" PRIu64, c->sub);
    im_jw_init(&w, buf, cap, 0);
    im_jw_obj_begin(&w);
    im_jw_key(&w, "sub");
    im_jw_cstr(&w, sub);
    if (name_len) {
        im_jw_key(&w, "name");
        im_jw_str(&w, c->name, name_len);
    }
    im_jw_key(&w, "iat");
    im_jw_int64(&w, c->iat);
    im_jw_key(&w, "exp");
    im_jw_int64(&w, c->exp);
    im_jw_obj_end(&w);
    /* The buffer fits the longest escaped name, so the only possible failure
     * is a name that is not valid UTF-8. */
    return im_jw_finish(&w, len) == IM_OK ? IM_OK : IM_EINVAL;
}

im_err_t im_jwt_sign(const void *secret, size_t secret_len, const im_jwt_claims_t *claims,
                     char *out, size_t outlen)
{
    char payload[PAYLOAD_MAX];
    uint8_t mac[IM_HMAC_SHA256_BYTES];
    size_t plen, n;
    im_err_t err;

    if (outlen > 0)
        out[0] = '\0';
    err = write_payload(claims, payload, sizeof payload, &plen);
    if (err != IM_OK)
        return err;
    if (B64_LEN(sizeof HEADER_JSON - 1) + 1 + B64_LEN(plen) + 1 + B64_LEN(sizeof mac) >= outlen)
        return IM_ERANGE;
    n = b64url_encode(HEADER_JSON, sizeof HEADER_JSON - 1, out);
    out[n++] = '.';
    n += b64url_encode(payload, plen, out + n);
    im_hmac_sha256(secret, secret_len, out, n, mac);
    out[n++] = '.';
    n += b64url_encode(mac, sizeof mac, out + n);
    out[n] = '\0';
    return IM_OK;
}

/* Decodes a base64url segment and parses it as a JSON object. */
static bool parse_segment(const char *b64, size_t n, uint8_t *js, im_json_t *doc,
                          im_json_tok_t *tok)
{
    size_t len;

    return b64url_decode(b64, n, js, SEGMENT_MAX, &len) &&
           im_json_parse(doc, (const char *)js, len, tok, JSON_TOKENS, 0) == IM_OK &&
           im_json_type(doc, 0) == IM_JSON_OBJECT;
}

static bool header_ok(const char *b64, size_t n)
{
    uint8_t js[SEGMENT_MAX];
    im_json_tok_t tok[JSON_TOKENS];
    im_json_t doc;
    int typ;

    if (!parse_segment(b64, n, js, &doc, tok))
        return false;
    typ = im_json_find(&doc, 0, "typ");
    return im_json_str_eq(&doc, im_json_find(&doc, 0, "alg"), "HS256") &&
           (typ == IM_ENOENT || im_json_str_eq(&doc, typ, "JWT")) &&
           im_json_find(&doc, 0, "crit") == IM_ENOENT;
}

/* sub: the canonical decimal form of a non-zero uint64. */
static bool read_sub(const im_json_t *doc, int t, uint64_t *out)
{
    char s[21];
    size_t len;
    uint64_t v = 0;

    if (im_json_str(doc, t, s, sizeof s, &len) != IM_OK || len == 0 || s[0] == '0')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned d;

        if (s[i] < '0' || s[i] > '9')
            return false;
        d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool read_name(const im_json_t *doc, int t, im_jwt_claims_t *out)
{
    size_t len;

    out->name = out->name_buf;
    out->name_buf[0] = '\0';
    if (t == IM_ENOENT)
        return true;
    return im_json_str(doc, t, out->name_buf, sizeof out->name_buf, &len) == IM_OK &&
           strlen(out->name_buf) == len;
}

static bool claims_ok(const char *b64, size_t n, im_jwt_claims_t *out)
{
    uint8_t js[SEGMENT_MAX];
    im_json_tok_t tok[JSON_TOKENS];
    im_json_t doc;

    return parse_segment(b64, n, js, &doc, tok) &&
           read_sub(&doc, im_json_find(&doc, 0, "sub"), &out->sub) &&
           im_json_int64(&doc, im_json_find(&doc, 0, "iat"), &out->iat) == IM_OK &&
           im_json_int64(&doc, im_json_find(&doc, 0, "exp"), &out->exp) == IM_OK &&
           read_name(&doc, im_json_find(&doc, 0, "name"), out);
}

/* a - b >= d in exact arithmetic (d >= 0): the claims are authentic but may
 * hold any int64, and a plain subtraction could overflow. */
static bool diff_at_least(int64_t a, int64_t b, uint64_t d)
{
    return a >= b && (uint64_t)a - (uint64_t)b >= d;
}

im_err_t im_jwt_verify(const void *secret, size_t secret_len, const char *token, size_t token_len,
                       int64_t now_s, int64_t leeway_s, im_jwt_claims_t *out)
{
    uint8_t sig[IM_HMAC_SHA256_BYTES], mac[IM_HMAC_SHA256_BYTES];
    uint64_t leeway = leeway_s > 0 ? (uint64_t)leeway_s : 0;
    const char *dot1, *dot2, *end = token + token_len;
    size_t sig_len;

    if (token_len == 0 || token_len > IM_JWT_MAX_LEN)
        return IM_EAUTH;
    dot1 = memchr(token, '.', token_len);
    dot2 = dot1 ? memchr(dot1 + 1, '.', (size_t)(end - dot1 - 1)) : NULL;
    if (!dot2)
        return IM_EAUTH;
    /* A fourth segment shows up here as a '.' outside the alphabet, a long
     * signature as not fitting sig. */
    if (!b64url_decode(dot2 + 1, (size_t)(end - dot2 - 1), sig, sizeof sig, &sig_len) ||
        sig_len != IM_HMAC_SHA256_BYTES)
        return IM_EAUTH;
    im_hmac_sha256(secret, secret_len, token, (size_t)(dot2 - token), mac);
    if (!im_ct_equal(mac, sig, sizeof mac))
        return IM_EAUTH;
    if (!header_ok(token, (size_t)(dot1 - token)) ||
        !claims_ok(dot1 + 1, (size_t)(dot2 - dot1 - 1), out))
        return IM_EAUTH;
    if (diff_at_least(out->iat, now_s, leeway + 1))
        return IM_EAUTH;
    if (diff_at_least(now_s, out->exp, leeway))
        return IM_ETIMEDOUT;
    return IM_OK;
}
