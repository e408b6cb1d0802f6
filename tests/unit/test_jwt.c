/*
 * test_jwt.c - im_sodium (HMAC, randomness, argon2id passwords) and im_jwt
 * (HS256 tokens).
 *
 * Hostile tokens are built here with a correct signature wherever possible,
 * so that each case proves the rule it names rather than merely the
 * signature check.  The helpers use their own base64url encoder, independent
 * of the static one in im_jwt.c.
 */
#include <stdlib.h>

#include "im_jwt.h"
#include "im_sodium.h"
#include "im_test.h"
#include "im_time.h"

#define SECRET "unit-test-secret-0123456789abcdef"
#define NOW    INT64_C(1700000000)
#define HDR    "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
/* A payload that verifies at NOW: iat = NOW, exp = NOW + 1 h. */
#define PAYLOAD "{\"sub\":\"42\",\"name\":\"alice\",\"iat\":1700000000,\"exp\":1700003600}"

/*
 * Known answers, computed independently of this code base with Python's
 * standard library (Debian's /usr/bin/python3 3.11):
 *
 *   import hmac, hashlib, base64, json
 *   def b64(b): return base64.urlsafe_b64encode(b).rstrip(b'=').decode()
 *   def tok(secret, header, payload):
 *       si = b64(header.encode()) + '.' + b64(payload.encode())
 *       return si + '.' + b64(hmac.new(secret, si.encode(), hashlib.sha256).digest())
 *
 * KAT_SIGNED = tok(b"im-jwt-known-answer-secret", '{"alg":"HS256","typ":"JWT"}',
 *     '{"sub":"42","name":"alice","iat":1700000000,"exp":1700003600}')
 *   is what im_jwt_sign must produce byte for byte (same key order, compact).
 *   PyJWT 2.6.0 (Debian's python3-jwt) produces the identical string from
 *   jwt.encode({...same claims...}, secret, algorithm='HS256').
 *
 * KAT_FOREIGN = tok(bytes(range(100)), json.dumps({"typ": "JWT", "alg": "HS256"}),
 *     json.dumps({"exp": 1700003600, "iat": 1700000000, "sub": "18446744073709551615",
 *                 "name": "J\u00f6rg", "jti": "x1"}, ensure_ascii=True))
 *   is another issuer's formatting: spaces, other key order, a \u escape, an
 *   unknown claim, the largest sub, and a 100-byte key (longer than the
 *   SHA-256 block, so HMAC hashes it first).
 */
#define KAT_SIGNED                                                                                 \
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."                                                        \
    "eyJzdWIiOiI0MiIsIm5hbWUiOiJhbGljZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAzNjAwfQ."          \
    "Nv59DF2WZH2eRRj9mD7YF_rLqKvoarpODs-kDYCkD3w"
#define KAT_FOREIGN                                                                                \
    "eyJ0eXAiOiAiSldUIiwgImFsZyI6ICJIUzI1NiJ9."                                                    \
    "eyJleHAiOiAxNzAwMDAzNjAwLCAiaWF0IjogMTcwMDAwMDAwMCwgInN1YiI6ICIxODQ0Njc0NDA3MzcwOTU1"         \
    "MTYxNSIsICJuYW1lIjogIkpcdTAwZjZyZyIsICJqdGkiOiAieDEifQ."                                      \
    "bFGMUsNlfdoc7D0qM0Jj7o9hqynUUAGoplrxVCuAlL4"

static char tokbuf[8192];

static size_t b64url(const void *in, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = in;
    unsigned acc = 0, bits = 0;
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8 | p[i]) & 0xffff;
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = abc[(acc >> bits) & 63];
        }
    }
    if (bits)
        out[o++] = abc[(acc << (6 - bits)) & 63];
    out[o] = '\0';
    return o;
}

/* "hseg.pseg.<HMAC of hseg.pseg under SECRET>", segments used verbatim. */
static const char *raw_token(const char *hseg, const char *pseg)
{
    uint8_t mac[IM_HMAC_SHA256_BYTES];
    int n = snprintf(tokbuf, sizeof tokbuf, "%s.%s", hseg, pseg);

    im_hmac_sha256(SECRET, strlen(SECRET), tokbuf, (size_t)n, mac);
    tokbuf[n++] = '.';
    b64url(mac, sizeof mac, tokbuf + n);
    return tokbuf;
}

static const char *make_token(const char *header, const char *payload)
{
    char h[2048], p[4096];

    b64url(header, strlen(header), h);
    b64url(payload, strlen(payload), p);
    return raw_token(h, p);
}

static im_err_t verify_at(const char *tok, int64_t now, int64_t leeway)
{
    im_jwt_claims_t c;

    return im_jwt_verify(SECRET, strlen(SECRET), tok, strlen(tok), now, leeway, &c);
}

static im_err_t verify_payload(const char *payload)
{
    return verify_at(make_token(HDR, payload), NOW, 0);
}

static im_err_t verify_header(const char *header)
{
    return verify_at(make_token(header, PAYLOAD), NOW, 0);
}

static void hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
}

/* ------------------------------------------------------------ im_sodium */

TEST(hmac_rfc4231)
{
    uint8_t key[131], mac[IM_HMAC_SHA256_BYTES];
    char h[2 * IM_HMAC_SHA256_BYTES + 1];
    static const char msg6[] = "Test Using Larger Than Block-Size Key - Hash Key First";

    memset(key, 0x0b, 20);
    im_hmac_sha256(key, 20, "Hi There", 8, mac);
    hex(mac, sizeof mac, h);
    ASSERT_STR_EQ(h, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");

    memset(key, 0xaa, sizeof key);
    im_hmac_sha256(key, sizeof key, msg6, sizeof msg6 - 1, mac);
    hex(mac, sizeof mac, h);
    ASSERT_STR_EQ(h, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST(ct_equal_and_random)
{
    uint8_t a[32], b[32];

    ASSERT_EQ(im_sodium_init(), IM_OK);
    ASSERT_EQ(im_sodium_init(), IM_OK);
    im_random_bytes(a, sizeof a);
    im_random_bytes(b, sizeof b);
    ASSERT_TRUE(memcmp(a, b, sizeof a) != 0);
    ASSERT_TRUE(!im_ct_equal(a, b, sizeof a));
    memcpy(b, a, sizeof a);
    ASSERT_TRUE(im_ct_equal(a, b, sizeof a));
    b[31] ^= 1;
    ASSERT_TRUE(!im_ct_equal(a, b, sizeof a));
    ASSERT_TRUE(im_ct_equal(a, b, 31));
}

TEST(password_cheap)
{
    char h1[IM_PASSWORD_HASH_BYTES], h2[IM_PASSWORD_HASH_BYTES], junk[IM_PASSWORD_HASH_BYTES];

    im_password_set_cost(IM_PWCOST_MIN);
    ASSERT_EQ(im_password_hash("correct horse", 13, h1), IM_OK);
    ASSERT_EQ(strncmp(h1, "$argon2id$v=19$", 15), 0);
    ASSERT_EQ(im_password_verify(h1, "correct horse", 13), IM_OK);
    ASSERT_EQ(im_password_verify(h1, "correct horsE", 13), IM_EAUTH);
    ASSERT_EQ(im_password_verify(h1, "correct hors", 12), IM_EAUTH);
    ASSERT_EQ(im_password_verify(h1, "", 0), IM_EAUTH);
    ASSERT_TRUE(!im_password_needs_rehash(h1));

    /* A fresh salt each time. */
    ASSERT_EQ(im_password_hash("correct horse", 13, h2), IM_OK);
    ASSERT_TRUE(strcmp(h1, h2) != 0);

    /* Passwords are bytes: an embedded NUL counts. */
    ASSERT_EQ(im_password_hash("ab\0cd", 5, h2), IM_OK);
    ASSERT_EQ(im_password_verify(h2, "ab\0cd", 5), IM_OK);
    ASSERT_EQ(im_password_verify(h2, "ab", 2), IM_EAUTH);
    ASSERT_EQ(im_password_hash("", 0, h2), IM_OK);
    ASSERT_EQ(im_password_verify(h2, "", 0), IM_OK);

    /* A cost change makes old hashes due for a rehash; they still verify. */
    im_password_set_cost(IM_PWCOST_INTERACTIVE);
    ASSERT_TRUE(im_password_needs_rehash(h1));
    ASSERT_EQ(im_password_verify(h1, "correct horse", 13), IM_OK);
    im_password_set_cost(IM_PWCOST_MIN);

    /* Not a hash: rejected, never crashes, never over-reads. */
    ASSERT_EQ(im_password_verify("", "x", 1), IM_EAUTH);
    ASSERT_EQ(im_password_verify("$argon2id$v=19$m=8,t=1,p=1$AAAA$AAAA", "x", 1), IM_EAUTH);
    ASSERT_TRUE(im_password_needs_rehash("garbage"));
    ASSERT_TRUE(im_password_needs_rehash(""));
    memset(junk, 'x', sizeof junk); /* no NUL anywhere */
    ASSERT_EQ(im_password_verify(junk, "x", 1), IM_EAUTH);
    ASSERT_TRUE(im_password_needs_rehash(junk));
}

TEST(password_default_cost)
{
    char h[IM_PASSWORD_HASH_BYTES];
    uint64_t t0, t1, t2;

    im_password_set_cost(IM_PWCOST_INTERACTIVE);
    t0 = im_mono_ns();
    ASSERT_EQ(im_password_hash("hunter2hunter2", 14, h), IM_OK);
    t1 = im_mono_ns();
    ASSERT_EQ(im_password_verify(h, "hunter2hunter2", 14), IM_OK);
    t2 = im_mono_ns();
    ASSERT_EQ(strncmp(h, "$argon2id$v=19$m=65536,t=2,p=1$", 31), 0);
    ASSERT_TRUE(!im_password_needs_rehash(h));
    printf("     argon2id INTERACTIVE (64 MiB, t=2): hash %.1f ms, verify %.1f ms\n",
           (double)(t1 - t0) / 1e6, (double)(t2 - t1) / 1e6);
}

/* ------------------------------------------------------------ im_jwt */

TEST(sign_known_answer)
{
    static const char secret[] = "im-jwt-known-answer-secret";
    im_jwt_claims_t c = {.sub = 42, .name = "alice", .iat = NOW, .exp = NOW + 3600};
    im_jwt_claims_t v;
    char out[IM_JWT_MAX_LEN + 1];

    ASSERT_EQ(im_jwt_sign(secret, sizeof secret - 1, &c, out, sizeof out), IM_OK);
    ASSERT_STR_EQ(out, KAT_SIGNED);
    ASSERT_EQ(im_jwt_verify(secret, sizeof secret - 1, out, strlen(out), NOW, 0, &v), IM_OK);
    ASSERT_U64_EQ(v.sub, 42);
    ASSERT_STR_EQ(v.name, "alice");
    ASSERT_EQ(v.iat, NOW);
    ASSERT_EQ(v.exp, NOW + 3600);
}

TEST(verify_foreign_format)
{
    uint8_t key[100];
    im_jwt_claims_t v;

    for (size_t i = 0; i < sizeof key; i++)
        key[i] = (uint8_t)i;
    ASSERT_EQ(im_jwt_verify(key, sizeof key, KAT_FOREIGN, strlen(KAT_FOREIGN), NOW, 0, &v), IM_OK);
    ASSERT_U64_EQ(v.sub, UINT64_MAX);
    ASSERT_STR_EQ(v.name, "J\xc3\xb6rg");
    ASSERT_EQ(v.exp, NOW + 3600);
    ASSERT_EQ(im_jwt_verify(key, sizeof key - 1, KAT_FOREIGN, strlen(KAT_FOREIGN), NOW, 0, &v),
              IM_EAUTH);
}

TEST(sign_verify_roundtrip)
{
    im_jwt_claims_t c = {.sub = 7, .name = NULL, .iat = NOW, .exp = NOW + 60};
    im_jwt_claims_t v, big = {.sub = UINT64_MAX, .iat = INT64_MIN, .exp = INT64_MAX};
    char out[IM_JWT_MAX_LEN + 1], name[IM_JWT_NAME_MAX + 1];

    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &c, out, sizeof out), IM_OK);
    ASSERT_EQ(im_jwt_verify(SECRET, strlen(SECRET), out, strlen(out), NOW, 0, &v), IM_OK);
    ASSERT_U64_EQ(v.sub, 7);
    ASSERT_STR_EQ(v.name, "");
    ASSERT_TRUE(v.name == v.name_buf);

    /* The longest token we can sign: every name byte needs a \u escape. */
    memset(name, 0x01, IM_JWT_NAME_MAX);
    name[IM_JWT_NAME_MAX] = '\0';
    big.name = name;
    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &big, out, sizeof out), IM_OK);
    ASSERT_LE(strlen(out), IM_JWT_MAX_LEN);
    ASSERT_EQ(im_jwt_verify(SECRET, strlen(SECRET), out, strlen(out), 0, 0, &v), IM_OK);
    ASSERT_U64_EQ(v.sub, UINT64_MAX);
    ASSERT_EQ(v.iat, INT64_MIN);
    ASSERT_EQ(v.exp, INT64_MAX);
    ASSERT_STR_EQ(v.name, name);
}

TEST(sign_errors)
{
    im_jwt_claims_t c = {.sub = 42, .name = "alice", .iat = NOW, .exp = NOW + 60};
    char out[IM_JWT_MAX_LEN + 1], name[IM_JWT_NAME_MAX + 2];
    size_t len;

    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &c, out, sizeof out), IM_OK);
    len = strlen(out);
    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &c, out, len + 1), IM_OK);
    ASSERT_EQ(strlen(out), len);
    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &c, out, len), IM_ERANGE);
    ASSERT_STR_EQ(out, "");
    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &c, NULL, 0), IM_ERANGE);

    c.sub = 0;
    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &c, out, sizeof out), IM_EINVAL);
    c.sub = 42;
    c.name = "bad\xff";
    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &c, out, sizeof out), IM_EINVAL);
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    c.name = name;
    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &c, out, sizeof out), IM_EINVAL);
    ASSERT_STR_EQ(out, "");
    name[IM_JWT_NAME_MAX] = '\0';
    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &c, out, sizeof out), IM_OK);
}

TEST(tampering)
{
    char tok[IM_JWT_MAX_LEN + 1];
    char *dot;

    strcpy(tok, make_token(HDR, PAYLOAD));
    ASSERT_EQ(verify_at(tok, NOW, 0), IM_OK);
    ASSERT_EQ(im_jwt_verify("other", 5, tok, strlen(tok), NOW, 0, &(im_jwt_claims_t){.sub = 0}),
              IM_EAUTH);

    /* One payload character: "42" -> "43" would need a re-signature. */
    dot = strchr(tok, '.');
    dot[3] ^= 0x01;
    ASSERT_EQ(verify_at(tok, NOW, 0), IM_EAUTH);
    dot[3] ^= 0x01;

    /* One signature character (mid-string, so still canonical base64url). */
    dot = strrchr(tok, '.');
    dot[10] = dot[10] == 'A' ? 'B' : 'A';
    ASSERT_EQ(verify_at(tok, NOW, 0), IM_EAUTH);

    /* Signature over a different payload pasted onto this one. */
    strcpy(tok, make_token(HDR, PAYLOAD));
    dot = strrchr(tok, '.');
    strcpy(dot + 1, strrchr(make_token(HDR, "{\"sub\":\"1\",\"iat\":0,\"exp\":1}"), '.') + 1);
    ASSERT_EQ(verify_at(tok, NOW, 0), IM_EAUTH);
}

TEST(header_rules)
{
    char h[256], p[512], tok[1024];

    ASSERT_EQ(verify_header("{\"alg\":\"HS256\"}"), IM_OK); /* typ is optional */
    ASSERT_EQ(verify_header("{\"typ\":\"JWT\",\"alg\":\"HS256\",\"kid\":\"k1\"}"), IM_OK);
    ASSERT_EQ(verify_header("{\"alg\":\"none\",\"typ\":\"JWT\"}"), IM_EAUTH);
    ASSERT_EQ(verify_header("{\"alg\":\"HS512\",\"typ\":\"JWT\"}"), IM_EAUTH);
    ASSERT_EQ(verify_header("{\"alg\":\"hs256\"}"), IM_EAUTH);
    ASSERT_EQ(verify_header("{\"alg\":\"RS256\"}"), IM_EAUTH);
    ASSERT_EQ(verify_header("{\"typ\":\"JWT\"}"), IM_EAUTH);
    ASSERT_EQ(verify_header("{\"alg\":null}"), IM_EAUTH);
    ASSERT_EQ(verify_header("{\"alg\":\"HS256\",\"typ\":\"JWS\"}"), IM_EAUTH);
    ASSERT_EQ(verify_header("{\"alg\":\"HS256\",\"typ\":1}"), IM_EAUTH);
    ASSERT_EQ(verify_header("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}"), IM_EAUTH);
    ASSERT_EQ(verify_header("{\"alg\":\"HS256\",\"alg\":\"HS256\"}"), IM_EAUTH);
    ASSERT_EQ(verify_header("[\"HS256\"]"), IM_EAUTH);
    ASSERT_EQ(verify_header("{\"alg\":\"HS256\""), IM_EAUTH);

    /* The classic alg=none token: empty signature segment. */
    b64url("{\"alg\":\"none\"}", 14, h);
    b64url(PAYLOAD, strlen(PAYLOAD), p);
    snprintf(tok, sizeof tok, "%s.%s.", h, p);
    ASSERT_EQ(verify_at(tok, NOW, 0), IM_EAUTH);
    snprintf(tok, sizeof tok, "%s.%s", h, p);
    ASSERT_EQ(verify_at(tok, NOW, 0), IM_EAUTH);
}

TEST(claim_rules)
{
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"iat\":1700000000,\"exp\":1700003600}"), IM_OK);
    /* Missing or mistyped required claims. */
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"iat\":1700000000}"), IM_EAUTH);
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"exp\":1700003600}"), IM_EAUTH);
    ASSERT_EQ(verify_payload("{\"iat\":1700000000,\"exp\":1700003600}"), IM_EAUTH);
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"iat\":1700000000,\"exp\":\"1700003600\"}"),
              IM_EAUTH);
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"iat\":1700000000,\"exp\":1700003600.5}"), IM_EAUTH);
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"iat\":1700000000,\"exp\":1e10}"), IM_EAUTH);
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"iat\":1700000000,\"exp\":null}"), IM_EAUTH);
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"iat\":1700000000,\"exp\":99999999999999999999}"),
              IM_EAUTH);
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"iat\":1700000000,\"exp\":1700003600,"
                             "\"exp\":1800000000}"),
              IM_EAUTH);

    /* sub: canonical decimal string of a non-zero uint64. */
#define SUB(s) verify_payload("{\"sub\":" s ",\"iat\":1700000000,\"exp\":1700003600}")
    ASSERT_EQ(SUB("\"18446744073709551615\""), IM_OK);
    ASSERT_EQ(SUB("42"), IM_EAUTH);
    ASSERT_EQ(SUB("\"0\""), IM_EAUTH);
    ASSERT_EQ(SUB("\"042\""), IM_EAUTH);
    ASSERT_EQ(SUB("\"-1\""), IM_EAUTH);
    ASSERT_EQ(SUB("\"+1\""), IM_EAUTH);
    ASSERT_EQ(SUB("\" 1\""), IM_EAUTH);
    ASSERT_EQ(SUB("\"1a\""), IM_EAUTH);
    ASSERT_EQ(SUB("\"\""), IM_EAUTH);
    ASSERT_EQ(SUB("\"18446744073709551616\""), IM_EAUTH);
    ASSERT_EQ(SUB("\"184467440737095516150\""), IM_EAUTH);
    ASSERT_EQ(SUB("null"), IM_EAUTH);
    ASSERT_EQ(SUB("[\"1\"]"), IM_EAUTH);
#undef SUB

    /* name: optional string, bounded, no NUL. */
#define NAME(s)                                                                                    \
    verify_payload("{\"sub\":\"1\",\"iat\":1700000000,\"exp\":1700003600,\"name\":" s "}")
    ASSERT_EQ(NAME("\"0123456789012345678901234567890123456789012345678901234567890123\""), IM_OK);
    ASSERT_EQ(NAME("\"01234567890123456789012345678901234567890123456789012345678901234\""),
              IM_EAUTH);
    ASSERT_EQ(NAME("\"a\\u0000b\""), IM_EAUTH);
    ASSERT_EQ(NAME("7"), IM_EAUTH);
#undef NAME

    /* The payload must be one JSON object. */
    ASSERT_EQ(verify_payload("[\"sub\",\"42\"]"), IM_EAUTH);
    ASSERT_EQ(verify_payload("\"42\""), IM_EAUTH);
    ASSERT_EQ(verify_payload("42"), IM_EAUTH);
    ASSERT_EQ(verify_payload("null"), IM_EAUTH);
    ASSERT_EQ(verify_payload(""), IM_EAUTH);
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"iat\":1700000000,\"exp\":1700003600"), IM_EAUTH);
    ASSERT_EQ(verify_payload("{\"sub\":\"42\",\"iat\":1700000000,\"exp\":1700003600}x"), IM_EAUTH);
}

TEST(time_rules)
{
    const char *tok = make_token(HDR, PAYLOAD); /* iat NOW, exp NOW + 3600 */
    char copy[IM_JWT_MAX_LEN + 1];

    strcpy(copy, tok);
    ASSERT_EQ(verify_at(copy, NOW + 3599, 0), IM_OK);
    ASSERT_EQ(verify_at(copy, NOW + 3600, 0), IM_ETIMEDOUT); /* now == exp: expired */
    ASSERT_EQ(verify_at(copy, NOW + 3600, 1), IM_OK);
    ASSERT_EQ(verify_at(copy, NOW + 3610, 10), IM_ETIMEDOUT);
    ASSERT_EQ(verify_at(copy, NOW + 3610, 11), IM_OK);
    ASSERT_EQ(verify_at(copy, NOW + 3610, -5), IM_ETIMEDOUT);
    ASSERT_EQ(verify_at(copy, INT64_MAX, INT64_MAX), IM_OK);
    ASSERT_EQ(verify_at(copy, INT64_MAX, 0), IM_ETIMEDOUT);

    /* iat in the future beyond the leeway. */
    ASSERT_EQ(verify_at(copy, NOW - 1, 0), IM_EAUTH);
    ASSERT_EQ(verify_at(copy, NOW - 30, 30), IM_OK);
    ASSERT_EQ(verify_at(copy, NOW - 31, 30), IM_EAUTH);
    ASSERT_EQ(verify_at(copy, INT64_MIN, 0), IM_EAUTH);
    ASSERT_EQ(verify_at(copy, INT64_MIN, INT64_MAX), IM_EAUTH);

    /* Extreme claims never overflow (UBSan watches). */
    tok = make_token(HDR, "{\"sub\":\"1\",\"iat\":-9223372036854775808,"
                          "\"exp\":-9223372036854775808}");
    ASSERT_EQ(verify_at(tok, INT64_MAX, INT64_MAX), IM_ETIMEDOUT);
    tok = make_token(HDR, "{\"sub\":\"1\",\"iat\":9223372036854775807,"
                          "\"exp\":9223372036854775807}");
    ASSERT_EQ(verify_at(tok, INT64_MIN, INT64_MAX), IM_EAUTH);
    ASSERT_EQ(verify_at(tok, INT64_MAX, 0), IM_ETIMEDOUT);
}

TEST(encoding_rules)
{
    char h[128], p[512], bad[600];

    b64url(HDR, strlen(HDR), h);
    b64url(PAYLOAD, strlen(PAYLOAD), p);
    ASSERT_EQ(verify_at(raw_token(h, p), NOW, 0), IM_OK);

    /* Correctly signed, but not strict base64url. */
    snprintf(bad, sizeof bad, "%s=", h); /* HDR is 27 bytes: 36 chars, no padding due */
    ASSERT_EQ(verify_at(raw_token(bad, p), NOW, 0), IM_EAUTH);
    snprintf(bad, sizeof bad, "%s==", p);
    ASSERT_EQ(verify_at(raw_token(h, bad), NOW, 0), IM_EAUTH);
    snprintf(bad, sizeof bad, "%s ", p);
    ASSERT_EQ(verify_at(raw_token(h, bad), NOW, 0), IM_EAUTH);
    snprintf(bad, sizeof bad, "%s", p);
    bad[5] = '+';
    ASSERT_EQ(verify_at(raw_token(h, bad), NOW, 0), IM_EAUTH);
    bad[5] = '/';
    ASSERT_EQ(verify_at(raw_token(h, bad), NOW, 0), IM_EAUTH);
    snprintf(bad, sizeof bad, "%s", p); /* length % 4 == 1 is impossible */
    while (strlen(bad) % 4 != 1)
        strcat(bad, "A");
    ASSERT_EQ(verify_at(raw_token(h, bad), NOW, 0), IM_EAUTH);

    /* Non-canonical: same bytes, non-zero unused bits in the last character.
     * PAYLOAD's length leaves 2 or 4 such bits, so +1 keeps the data bits. */
    ASSERT_NE(strlen(PAYLOAD) % 3, 0);
    snprintf(bad, sizeof bad, "%s", p);
    bad[strlen(bad) - 1] = (char)(bad[strlen(bad) - 1] + 1);
    ASSERT_EQ(verify_at(raw_token(h, bad), NOW, 0), IM_EAUTH);

    /* A padded signature. */
    snprintf(bad, sizeof bad, "%s=", raw_token(h, p));
    ASSERT_EQ(verify_at(bad, NOW, 0), IM_EAUTH);
}

TEST(segment_rules)
{
    char tok[IM_JWT_MAX_LEN + 1], bad[2 * IM_JWT_MAX_LEN];
    char *last;

    strcpy(tok, make_token(HDR, PAYLOAD));
    last = strrchr(tok, '.');

    ASSERT_EQ(verify_at("", NOW, 0), IM_EAUTH);
    ASSERT_EQ(im_jwt_verify(SECRET, strlen(SECRET), NULL, 0, NOW, 0, &(im_jwt_claims_t){.sub = 0}),
              IM_EAUTH);
    ASSERT_EQ(verify_at(".", NOW, 0), IM_EAUTH);
    ASSERT_EQ(verify_at("..", NOW, 0), IM_EAUTH);
    ASSERT_EQ(verify_at("...", NOW, 0), IM_EAUTH);
    ASSERT_EQ(verify_at("a.b.c", NOW, 0), IM_EAUTH);

    /* Two segments. */
    snprintf(bad, sizeof bad, "%.*s", (int)(last - tok), tok);
    ASSERT_EQ(verify_at(bad, NOW, 0), IM_EAUTH);
    /* Four segments, trailing dot, empty fourth. */
    snprintf(bad, sizeof bad, "%s.%s", tok, last + 1);
    ASSERT_EQ(verify_at(bad, NOW, 0), IM_EAUTH);
    snprintf(bad, sizeof bad, "%s.", tok);
    ASSERT_EQ(verify_at(bad, NOW, 0), IM_EAUTH);
    /* Signature truncated or extended by one character. */
    snprintf(bad, sizeof bad, "%.*s", (int)strlen(tok) - 1, tok);
    ASSERT_EQ(verify_at(bad, NOW, 0), IM_EAUTH);
    snprintf(bad, sizeof bad, "%sA", tok);
    ASSERT_EQ(verify_at(bad, NOW, 0), IM_EAUTH);
    snprintf(bad, sizeof bad, "%sAAAA", tok);
    ASSERT_EQ(verify_at(bad, NOW, 0), IM_EAUTH);
    /* The token must be passed without its NUL: token_len is exact. */
    ASSERT_EQ(im_jwt_verify(SECRET, strlen(SECRET), tok, strlen(tok) + 1, NOW, 0,
                            &(im_jwt_claims_t){.sub = 0}),
              IM_EAUTH);

    /* Every proper prefix fails. */
    for (size_t n = 0; n < strlen(tok); n++)
        ASSERT_EQ(
            im_jwt_verify(SECRET, strlen(SECRET), tok, n, NOW, 0, &(im_jwt_claims_t){.sub = 0}),
            IM_EAUTH);
}

TEST(length_limit)
{
    char payload[2048], *p;
    size_t pad, last_ok = 0;
    int n;

    /* Correctly signed tokens padded with an extra claim: accepted up to
     * IM_JWT_MAX_LEN bytes, rejected beyond. */
    for (pad = 0;; pad++) {
        const char *tok;

        n = snprintf(payload, sizeof payload,
                     "{\"sub\":\"1\",\"iat\":1700000000,\"exp\":1700003600,\"pad\":\"");
        memset(payload + n, 'x', pad);
        strcpy(payload + n + pad, "\"}");
        tok = make_token(HDR, payload);
        if (strlen(tok) > IM_JWT_MAX_LEN) {
            ASSERT_EQ(verify_at(tok, NOW, 0), IM_EAUTH);
            break;
        }
        ASSERT_EQ(verify_at(tok, NOW, 0), IM_OK);
        last_ok = strlen(tok);
    }
    ASSERT_GE(last_ok, IM_JWT_MAX_LEN - 1);

    /* A megabyte of base64url with dots: rejected on length alone. */
    p = malloc(1 << 20);
    ASSERT_NOT_NULL(p);
    memset(p, 'A', 1 << 20);
    p[1000] = p[2000] = '.';
    n = im_jwt_verify(SECRET, strlen(SECRET), p, 1 << 20, NOW, 0, &(im_jwt_claims_t){.sub = 0});
    free(p);
    ASSERT_EQ(n, IM_EAUTH);
}

/* Random corruption of a valid token is never accepted (and never crashes:
 * ASan runs this). */
TEST(mutations)
{
    char tok[IM_JWT_MAX_LEN + 1], m[IM_JWT_MAX_LEN + 1];
    size_t len;
    unsigned seed = 12345;

    strcpy(tok, make_token(HDR, PAYLOAD));
    len = strlen(tok);
    for (int i = 0; i < 20000; i++) {
        size_t mlen = len;
        im_err_t err;

        memcpy(m, tok, len);
        for (int k = 0; k < 1 + i % 3; k++) {
            seed = seed * 1103515245u + 12345u;
            m[(seed >> 8) % len] = (char)(seed >> 20);
        }
        if (i % 5 == 0)
            mlen = (seed >> 4) % (len + 1);
        err = im_jwt_verify(SECRET, strlen(SECRET), m, mlen, NOW, 0, &(im_jwt_claims_t){.sub = 0});
        if (err == IM_OK)
            ASSERT_TRUE(mlen == len && memcmp(m, tok, len) == 0);
        else
            ASSERT_EQ(err, IM_EAUTH);
    }
}

int main(void)
{
    RUN(hmac_rfc4231);
    RUN(ct_equal_and_random);
    RUN(password_cheap);
    RUN(password_default_cost);
    RUN(sign_known_answer);
    RUN(verify_foreign_format);
    RUN(sign_verify_roundtrip);
    RUN(sign_errors);
    RUN(tampering);
    RUN(header_rules);
    RUN(claim_rules);
    RUN(time_rules);
    RUN(encoding_rules);
    RUN(segment_rules);
    RUN(length_limit);
    RUN(mutations);
    return im_test_done();
}
