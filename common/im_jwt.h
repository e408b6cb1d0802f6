/*
 * im_jwt.h - HS256 JSON Web Tokens (RFC 7519 / RFC 7515 compact form), just
 * the subset the IM service issues.  The logic service signs a token at login;
 * gateways verify it locally with the shared secret, without a round trip.
 *
 *   header   {"alg":"HS256","typ":"JWT"}
 *   payload  {"sub":"42","name":"alice","iat":1700000000,"exp":1700086400}
 *
 * sub is the user id as a decimal string (RFC 7519 makes sub a string, and
 * JavaScript numbers lose precision above 2^53); iat and exp are integer Unix
 * seconds; name is optional.
 *
 * What im_jwt_verify accepts, exactly:
 *   - three base64url segments (RFC 4648 section 5) joined by two dots, no
 *     '=' padding, no other characters, canonical encoding (unused low bits
 *     of the last character are zero), at most IM_JWT_MAX_LEN bytes;
 *   - a signature that is the HMAC-SHA256 of "header.payload" under the
 *     secret.  It is checked, in constant time, before either JSON segment is
 *     parsed: unauthenticated bytes never reach the JSON parser, and since
 *     only HS256 is ever accepted the header cannot change how we verify;
 *   - a header object whose "alg" is "HS256" (missing, "none", "HS512" and
 *     anything else are rejected), whose "typ", if present, is "JWT", and
 *     without "crit" (RFC 7515: we understand no extensions);
 *   - a payload object with "sub" a decimal string of a non-zero uint64
 *     without leading zeros or sign, integer "iat" and "exp" (both required:
 *     we always issue them), "name" if present a string of at most
 *     IM_JWT_NAME_MAX bytes without NUL.  Other claims are ignored
 *     (RFC 7519 section 4).
 *   - time: with leeway L >= 0, the token is expired when now >= exp + L
 *     (RFC 7519: now must be before exp), and rejected as not yet valid when
 *     iat > now + L (a token from the future means a forged or badly skewed
 *     clock; L absorbs normal skew between the logic and gateway hosts).
 *
 * Pure functions: any thread, no allocation, no global state.
 */
#ifndef IM_JWT_H
#define IM_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "im_err.h"

/* Longest token im_jwt_verify accepts.  Every token im_jwt_sign can produce
 * is shorter, so a buffer of IM_JWT_MAX_LEN + 1 bytes always suffices. */
#define IM_JWT_MAX_LEN 1024

/* Longest name claim, in bytes (usernames are 3..32 ASCII characters today). */
#define IM_JWT_NAME_MAX 64

typedef struct im_jwt_claims_s {
    uint64_t sub;     /* user id, non-zero */
    const char *name; /* username; NULL or "" means no name claim */
    int64_t iat;      /* issued at, Unix seconds */
    int64_t exp;      /* expires at, Unix seconds */
    /* Filled by im_jwt_verify, which points name here ("" when the token has
     * no name).  A copy of the struct still points into the original. */
    char name_buf[IM_JWT_NAME_MAX + 1];
} im_jwt_claims_t;

/* Writes the signed token for claims to out as a NUL-terminated string.
 * name must be valid UTF-8 of at most IM_JWT_NAME_MAX bytes.  The secret
 * should be at least 32 random bytes.  Returns IM_OK; IM_EINVAL when sub is 0
 * or name is too long or not valid UTF-8; IM_ERANGE when outlen is too small
 * (IM_JWT_MAX_LEN + 1 is always enough).  On error out is "" (if outlen > 0). */
im_err_t im_jwt_sign(const void *secret, size_t secret_len, const im_jwt_claims_t *claims,
                     char *out, size_t outlen);

/* Verifies token[0..token_len) (need not be NUL-terminated) against the
 * secret at time now_s (Unix seconds) with leeway_s seconds of allowed clock
 * skew (a negative leeway counts as 0), and on success fills *out (name
 * points to out->name_buf).
 * Returns:
 *   IM_OK         valid;
 *   IM_ETIMEDOUT  authentic and well-formed but expired (the client should
 *                 log in again; every other rejection is IM_EAUTH);
 *   IM_EAUTH      anything else: wrong signature or secret, a rule from the
 *                 top of this file broken, iat in the future, empty or longer
 *                 than IM_JWT_MAX_LEN.
 * *out is unspecified on error. */
im_err_t im_jwt_verify(const void *secret, size_t secret_len, const char *token, size_t token_len,
                       int64_t now_s, int64_t leeway_s, im_jwt_claims_t *out);

#endif
