/*
 * im_sodium.h - the project's only door to libsodium: randomness, HMAC-SHA256,
 * constant-time comparison and argon2id password hashing.  Nothing else
 * includes <sodium.h>.
 *
 * Call im_sodium_init() once at start-up and check its result; that is where a
 * missing entropy source is reported.  Every other function also initialises
 * libsodium on first use (so a forgotten call cannot silently weaken anything)
 * and aborts the process if that fails, as libsodium itself does.
 *
 * Threads: every function may be called from any thread, except
 * im_password_set_cost (see there).
 */
#ifndef IM_SODIUM_H
#define IM_SODIUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "im_err.h"

/* Initialises libsodium (picks the fastest implementations, opens the entropy
 * source).  Idempotent and thread-safe.  Returns IM_OK, or IM_EIO when no
 * randomness is available. */
im_err_t im_sodium_init(void);

/* Fills buf[0..len) with cryptographically secure random bytes. */
void im_random_bytes(void *buf, size_t len);

#define IM_HMAC_SHA256_BYTES 32

/* out = HMAC-SHA256(key, msg).  The key may have any length (longer than 64
 * bytes is hashed first, per RFC 2104); len 0 is allowed for either. */
void im_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
                    uint8_t out[IM_HMAC_SHA256_BYTES]);

/* True if a[0..len) equals b[0..len).  Takes the same time wherever the first
 * difference is: use it for MACs, tokens and anything secret. */
bool im_ct_equal(const void *a, const void *b, size_t len);

/*
 * Passwords: argon2id (libsodium's crypto_pwhash_str), stored as the encoded
 * string "$argon2id$v=19$m=...,t=...,p=1$salt$hash", which carries its own salt
 * and cost so that old hashes keep verifying after the cost changes.
 */

/* Size of a buffer that holds any encoded hash, NUL included (libsodium's
 * crypto_pwhash_STRBYTES).  The string itself is about 97 bytes. */
#define IM_PASSWORD_HASH_BYTES 128

typedef enum {
    /* The default: libsodium's INTERACTIVE limits (2 passes over 64 MiB,
     * ~50-100 ms on one core).  The minimum for real passwords. */
    IM_PWCOST_INTERACTIVE = 0,
    /* 1 pass over 8 KiB: offers no protection.  For tests only, so that
     * suites creating many users run in milliseconds. */
    IM_PWCOST_MIN
} im_pwcost_t;

/* Sets the cost of hashes made from now on, and the cost im_password_needs_rehash
 * compares with.  Process-wide.  Call at start-up (or at the top of a test)
 * before other threads hash; a concurrent change is not a data race but is not
 * ordered with respect to hashes already in progress. */
void im_password_set_cost(im_pwcost_t cost);

/* Hashes password[0..len) (any bytes, NUL included) with a fresh random salt
 * at the current cost and writes the NUL-terminated encoded string to out.
 * Slow on purpose (see im_pwcost_t) and uses that much memory: call it from a
 * worker thread, never from an event loop.  Returns IM_OK, or IM_ENOMEM when
 * the argon2 working memory cannot be allocated (out is then ""). */
im_err_t im_password_hash(const char *password, size_t len, char out[IM_PASSWORD_HASH_BYTES]);

/* Checks password[0..len) against encoded, a NUL-terminated string made by
 * im_password_hash (any cost).  The final comparison is constant-time; the
 * running time is that of one hash at encoded's cost.  Returns IM_OK on a
 * match, IM_EAUTH on a mismatch or when encoded is not a valid argon2 string
 * (longer than IM_PASSWORD_HASH_BYTES - 1 included).  To keep "no such user"
 * as slow as "wrong password", verify against a hash of a dummy password. */
im_err_t im_password_verify(const char *encoded, const char *password, size_t len);

/* True if encoded was made with another algorithm or cost than the current
 * one (then hash the password again after a successful login), or is not a
 * valid argon2id string at all.  Fast: it only parses the string. */
bool im_password_needs_rehash(const char *encoded);

#endif
