/*
 * lg_auth.h - the Auth service's rules (proto/im.proto: SignUp, Login,
 * VerifyToken) as plain C over one MySQL connection: decoded request in,
 * response or status out, no gRPC.
 *
 * Status messages follow im.proto: "<code>: <text>", e.g.
 *   INVALID_ARGUMENT  "bad_username: ..." / "bad_password: ..."
 *   ALREADY_EXISTS    "username_taken: ..."
 *   UNAUTHENTICATED   "bad_credentials: ..."  (unknown user and wrong password
 *                     alike, in about the same time: an unknown user is
 *                     checked against a dummy hash)
 *   UNAUTHENTICATED   "token_expired: ..." / "bad_token: ..."
 *   UNAVAILABLE       "db_unavailable: ..."  INTERNAL "internal: ..."
 *
 * Threads: an lg_auth_t belongs to the thread that uses its connection (one at
 * a time, like im_mysql_t).  lg_auth_verify_token needs no connection and may
 * run on any thread.
 */
#ifndef LG_AUTH_H
#define LG_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "im.pb-c.h"
#include "im_err.h"
#include "im_id.h"
#include "im_jwt.h"
#include "im_mysql.h"
#include "im_rpc.h"
#include "im_sodium.h"

#define LG_USERNAME_MIN 3
#define LG_USERNAME_MAX 32
#define LG_PASSWORD_MIN 8
#define LG_PASSWORD_MAX 128

/* Leeway for clock skew between logic hosts when verifying a token. */
#define LG_AUTH_LEEWAY_S 30

/* What every lg_auth_t of a process shares.  Filled by lg_auth_keys_init;
 * read-only afterwards, so any number of threads may use it. */
typedef struct {
    const uint8_t *secret; /* HS256 key, not owned: must outlive every user */
    size_t secret_len;
    int64_t token_ttl_s;
    im_idgen_t *ids; /* user ids; not owned */
    /* An argon2id hash of a random password at the current cost, verified
     * against when the user does not exist. */
    char dummy_hash[IM_PASSWORD_HASH_BYTES];
} lg_auth_keys_t;

/* Fills k (secret and ids are borrowed) and computes the dummy hash: call
 * after im_password_set_cost.  Slow (one hash).  Returns IM_OK, or IM_ENOMEM
 * when argon2 cannot get its memory. */
im_err_t lg_auth_keys_init(lg_auth_keys_t *k, const uint8_t *secret, size_t secret_len,
                           int64_t token_ttl_s, im_idgen_t *ids);

typedef struct lg_auth_s lg_auth_t;

/* Prepares the statements on db (borrowed: it must outlive the lg_auth_t;
 * closing db frees the statements, so free this first).  keys is borrowed.
 * Returns IM_OK and *out, or the im_mysql_prepare error. */
im_err_t lg_auth_new(im_mysql_t *db, const lg_auth_keys_t *keys, lg_auth_t **out);

/* Frees a and its statements.  NULL is fine. */
void lg_auth_free(lg_auth_t *a);

/* Each call fills resp (initialised by the caller with the generated INIT
 * macro) and returns IM_RPC_OK, or returns another code with the status
 * message in msg (msglen bytes, NUL-terminated).  Strings put in resp point
 * into a, valid until the next call on a. */
im_rpc_code_t lg_auth_signup(lg_auth_t *a, const Im__V1__RegisterRequest *req,
                             Im__V1__RegisterResponse *resp, char *msg, size_t msglen);
im_rpc_code_t lg_auth_login(lg_auth_t *a, const Im__V1__LoginRequest *req,
                            Im__V1__LoginResponse *resp, char *msg, size_t msglen);

/* Auth.DeleteAccount: checks the password of user_id, then marks the user
 * deleted (soft).  UNAUTHENTICATED "bad_credentials" for a wrong password or
 * an unknown or already deleted user.  The caller records the deletion in
 * Redis (LG_DELETED_KEY) so sessions and sends with old tokens are refused. */
im_rpc_code_t lg_auth_delete(lg_auth_t *a, const Im__V1__DeleteAccountRequest *req,
                             Im__V1__DeleteAccountResponse *resp, char *msg, size_t msglen);

/* Auth.FindUsers: by exact name (case-insensitive) or by up to
 * LG_FIND_USERS_MAX ids; deleted users are not found.  What resp points to
 * lives in a until the next call. */
#define LG_FIND_USERS_MAX 200
im_rpc_code_t lg_auth_find(lg_auth_t *a, const Im__V1__FindUsersRequest *req,
                           Im__V1__FindUsersResponse *resp, char *msg, size_t msglen);

/* Redis key marking a deleted user, for the life of its last token. */
#define LG_DELETED_KEY "im:deleted:%llu"

/* Checks a token signed with keys' secret at the current time, with
 * LG_AUTH_LEEWAY_S of leeway.  Like a gateway's local check it does not
 * consult the database: a token stays valid until its exp.  Strings put in
 * resp point into claims (caller's storage), valid as long as it is.  Pure:
 * any thread, no database. */
im_rpc_code_t lg_auth_verify_token(const lg_auth_keys_t *keys, const Im__V1__VerifyTokenRequest *req,
                                   Im__V1__VerifyTokenResponse *resp, im_jwt_claims_t *claims,
                                   char *msg, size_t msglen);

/* The database status for a failed im_mysql call: UNAVAILABLE
 * "db_unavailable: ..." for IM_EUNAVAIL and IM_EAGAIN, else INTERNAL
 * "internal: ..." (logged with what, the server's message and the error). */
im_rpc_code_t lg__db_status(im_mysql_t *db, im_err_t rc, const char *what, char *msg,
                            size_t msglen);

#endif
