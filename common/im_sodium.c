#include "im_sodium.h"

#include <sodium.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "im_log.h"

_Static_assert(IM_PASSWORD_HASH_BYTES == crypto_pwhash_STRBYTES,
               "IM_PASSWORD_HASH_BYTES must match libsodium");
_Static_assert(IM_HMAC_SHA256_BYTES == crypto_auth_hmacsha256_BYTES,
               "IM_HMAC_SHA256_BYTES must match libsodium");

/* sodium_init() takes a mutex on every call; this flag keeps that off paths
 * such as token verification that run once per connection. */
static atomic_bool ready;
static _Atomic int pwcost = IM_PWCOST_INTERACTIVE;

im_err_t im_sodium_init(void)
{
    if (atomic_load_explicit(&ready, memory_order_acquire))
        return IM_OK;
    if (sodium_init() < 0)
        return IM_EIO;
    atomic_store_explicit(&ready, true, memory_order_release);
    return IM_OK;
}

/* Without an entropy source no salt or key can be trusted, and libsodium
 * would abort inside randombytes anyway: fail loudly in one place. */
static void ensure_init(void)
{
    if (im_sodium_init() != IM_OK) {
        im_log_error("libsodium initialisation failed: no entropy source");
        abort();
    }
}

void im_random_bytes(void *buf, size_t len)
{
    ensure_init();
    randombytes_buf(buf, len);
}

void im_hmac_sha256(const void *key, size_t key_len, const void *msg, size_t msg_len,
                    uint8_t out[IM_HMAC_SHA256_BYTES])
{
    crypto_auth_hmacsha256_state st;

    ensure_init();
    /* The one-shot crypto_auth_hmacsha256() only takes 32-byte keys; the
     * streaming API implements RFC 2104 for keys of any length. */
    crypto_auth_hmacsha256_init(&st, key, key_len);
    crypto_auth_hmacsha256_update(&st, msg, msg_len);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

bool im_ct_equal(const void *a, const void *b, size_t len)
{
    return sodium_memcmp(a, b, len) == 0;
}

static void cost_limits(unsigned long long *ops, size_t *mem)
{
    if (atomic_load_explicit(&pwcost, memory_order_relaxed) == IM_PWCOST_MIN) {
        *ops = crypto_pwhash_argon2id_OPSLIMIT_MIN;
        *mem = crypto_pwhash_argon2id_MEMLIMIT_MIN;
    } else {
        *ops = crypto_pwhash_argon2id_OPSLIMIT_INTERACTIVE;
        *mem = crypto_pwhash_argon2id_MEMLIMIT_INTERACTIVE;
    }
}

void im_password_set_cost(im_pwcost_t cost)
{
    atomic_store_explicit(&pwcost, (int)cost, memory_order_relaxed);
}

im_err_t im_password_hash(const char *password, size_t len, char out[IM_PASSWORD_HASH_BYTES])
{
    unsigned long long ops;
    size_t mem;

    ensure_init();
    cost_limits(&ops, &mem);
    /* crypto_pwhash_str_alg fails only when argon2 cannot allocate its
     * memlimit bytes (len is far below crypto_pwhash_PASSWD_MAX). */
    if (crypto_pwhash_str_alg(out, password, len, ops, mem, crypto_pwhash_ALG_ARGON2ID13) != 0) {
        out[0] = '\0';
        return IM_ENOMEM;
    }
    return IM_OK;
}

im_err_t im_password_verify(const char *encoded, const char *password, size_t len)
{
    ensure_init();
    /* libsodium reads encoded with strlen(); bound it ourselves so that a
     * corrupt database value cannot make it read further than a real hash. */
    if (strnlen(encoded, IM_PASSWORD_HASH_BYTES) >= IM_PASSWORD_HASH_BYTES)
        return IM_EAUTH;
    return crypto_pwhash_str_verify(encoded, password, len) == 0 ? IM_OK : IM_EAUTH;
}

bool im_password_needs_rehash(const char *encoded)
{
    unsigned long long ops;
    size_t mem;

    ensure_init();
    if (strnlen(encoded, IM_PASSWORD_HASH_BYTES) >= IM_PASSWORD_HASH_BYTES)
        return true;
    cost_limits(&ops, &mem);
    /* The argon2id variant: 1 = other parameters, -1 = not an argon2id string. */
    return crypto_pwhash_argon2id_str_needs_rehash(encoded, ops, mem) != 0;
}
