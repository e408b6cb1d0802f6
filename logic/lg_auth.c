#include "lg_auth.h"

#include <stdio.h>
#include <string.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

struct lg_auth_s {
    im_mysql_t *db;
    const lg_auth_keys_t *keys;
    im_mysql_stmt_t *insert_user;
    im_mysql_stmt_t *find_user;
    im_mysql_stmt_t *find_by_id;
    im_mysql_stmt_t *mark_deleted;
    im_mysql_stmt_t *by_id;
    /* FindUsers' answer (valid until the next call). */
    Im__V1__UserInfo users[LG_FIND_USERS_MAX];
    Im__V1__UserInfo *user_ptrs[LG_FIND_USERS_MAX];
    char names[LG_FIND_USERS_MAX][33];
    char token[IM_JWT_MAX_LEN + 1];
};

im_err_t lg_auth_keys_init(lg_auth_keys_t *k, const uint8_t *secret, size_t secret_len,
                           int64_t token_ttl_s, im_idgen_t *ids)
{
    uint8_t pw[32];

    memset(k, 0, sizeof(*k));
    k->secret = secret;
    k->secret_len = secret_len;
    k->token_ttl_s = token_ttl_s;
    k->ids = ids;
    im_random_bytes(pw, sizeof(pw));
    return im_password_hash((const char *)pw, sizeof(pw), k->dummy_hash);
}

im_err_t lg_auth_new(im_mysql_t *db, const lg_auth_keys_t *keys, lg_auth_t **out)
{
    lg_auth_t *a = im_calloc(1, sizeof(*a));
    im_err_t rc;

    a->db = db;
    a->keys = keys;
    rc = im_mysql_prepare(db,
                          "INSERT INTO users (id, username, pass_hash, created_at_ms) "
                          "VALUES (?, ?, ?, ?)",
                          &a->insert_user);
    if (rc == IM_OK)
        rc = im_mysql_prepare(db,
                              "SELECT id, username, pass_hash FROM users "
                              "WHERE username = ? AND deleted_at_ms IS NULL",
                              &a->find_user);
    if (rc == IM_OK)
        rc = im_mysql_prepare(db,
                              "SELECT pass_hash FROM users WHERE id = ? AND deleted_at_ms IS NULL",
                              &a->find_by_id);
    if (rc == IM_OK)
        rc = im_mysql_prepare(db,
                              "UPDATE users SET deleted_at_ms = ? "
                              "WHERE id = ? AND deleted_at_ms IS NULL",
                              &a->mark_deleted);
    if (rc == IM_OK)
        rc = im_mysql_prepare(db,
                              "SELECT id, username FROM users WHERE id = ? AND deleted_at_ms IS NULL",
                              &a->by_id);
    if (rc != IM_OK) {
        lg_auth_free(a);
        return rc;
    }
    *out = a;
    return IM_OK;
}

void lg_auth_free(lg_auth_t *a)
{
    if (a == NULL)
        return;
    im_mysql_stmt_free(a->insert_user);
    im_mysql_stmt_free(a->find_user);
    im_mysql_stmt_free(a->find_by_id);
    im_mysql_stmt_free(a->mark_deleted);
    im_mysql_stmt_free(a->by_id);
    im_free(a);
}

im_rpc_code_t lg__db_status(im_mysql_t *db, im_err_t rc, const char *what, char *msg,
                            size_t msglen)
{
    if (rc == IM_EUNAVAIL || rc == IM_EAGAIN) {
        snprintf(msg, msglen, "db_unavailable: the database is unavailable, try again");
        return IM_RPC_UNAVAILABLE;
    }
    im_log_error("%s: %s (%u: %s)", what, im_strerror(rc), im_mysql_errno(db), im_mysql_error(db));
    snprintf(msg, msglen, "internal: database error");
    return IM_RPC_INTERNAL;
}

static bool username_ok(const char *s)
{
    size_t n = strlen(s);

    if (n < LG_USERNAME_MIN || n > LG_USERNAME_MAX)
        return false;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n;
}

static bool password_len_ok(size_t n)
{
    return n >= LG_PASSWORD_MIN && n <= LG_PASSWORD_MAX;
}

im_rpc_code_t lg_auth_signup(lg_auth_t *a, const Im__V1__RegisterRequest *req,
                             Im__V1__RegisterResponse *resp, char *msg, size_t msglen)
{
    char hash[IM_PASSWORD_HASH_BYTES];
    size_t pwlen = strlen(req->password);
    uint64_t id;
    im_err_t rc;

    if (!username_ok(req->username)) {
        snprintf(msg, msglen, "bad_username: %d..%d characters of A-Z a-z 0-9 _ . -",
                 LG_USERNAME_MIN, LG_USERNAME_MAX);
        return IM_RPC_INVALID_ARGUMENT;
    }
    if (!password_len_ok(pwlen)) {
        snprintf(msg, msglen, "bad_password: %d..%d bytes", LG_PASSWORD_MIN, LG_PASSWORD_MAX);
        return IM_RPC_INVALID_ARGUMENT;
    }
    if (im_password_hash(req->password, pwlen, hash) != IM_OK) {
        snprintf(msg, msglen, "busy: out of memory for password hashing, try again");
        return IM_RPC_RESOURCE_EXHAUSTED;
    }
    id = im_id_next(a->keys->ids);
    im_mysql_bind_u64(a->insert_user, 0, id);
    im_mysql_bind_str(a->insert_user, 1, req->username, strlen(req->username));
    im_mysql_bind_str(a->insert_user, 2, hash, strlen(hash));
    im_mysql_bind_i64(a->insert_user, 3, (int64_t)im_wall_ms());
    rc = im_mysql_stmt_exec(a->insert_user);
    /* Ids never repeat (im_id.h), so a duplicate is the unique username key;
     * the name check only guards that reasoning against a schema change. */
    if (rc == IM_EEXIST && strstr(im_mysql_error(a->db), "uk_users_username") != NULL) {
        snprintf(msg, msglen, "username_taken: \"%s\" is already registered", req->username);
        return IM_RPC_ALREADY_EXISTS;
    }
    if (rc != IM_OK)
        return lg__db_status(a->db, rc, "auth: insert user", msg, msglen);
    im_log_info("auth: user %llu signed up as %s", (unsigned long long)id, req->username);
    resp->user_id = id;
    return IM_RPC_OK;
}

im_rpc_code_t lg_auth_login(lg_auth_t *a, const Im__V1__LoginRequest *req,
                            Im__V1__LoginResponse *resp, char *msg, size_t msglen)
{
    size_t pwlen = strlen(req->password);
    im_jwt_claims_t claims = {0};
    const char *hash = a->keys->dummy_hash;
    bool found = false;
    im_err_t rc;

    /* A malformed name or password can match no account: answer at once,
     * which tells the caller nothing about which accounts exist. */
    if (username_ok(req->username) && password_len_ok(pwlen)) {
        im_mysql_bind_str(a->find_user, 0, req->username, strlen(req->username));
        rc = im_mysql_stmt_exec(a->find_user);
        if (rc == IM_OK)
            rc = im_mysql_stmt_next(a->find_user);
        if (rc != IM_OK && rc != IM_ENOENT)
            return lg__db_status(a->db, rc, "auth: find user", msg, msglen);
        found = rc == IM_OK;
        if (found)
            hash = im_mysql_col_str(a->find_user, 2, NULL);
        if (im_password_verify(hash, req->password, pwlen) != IM_OK)
            found = false;
    }
    if (!found) {
        im_log_debug("auth: failed login as %s", req->username);
        snprintf(msg, msglen, "bad_credentials: wrong username or password");
        return IM_RPC_UNAUTHENTICATED;
    }
    claims.sub = im_mysql_col_u64(a->find_user, 0);
    /* The stored spelling: the lookup is case-insensitive. */
    claims.name = im_mysql_col_str(a->find_user, 1, NULL);
    claims.iat = (int64_t)(im_wall_ms() / 1000);
    claims.exp = claims.iat + a->keys->token_ttl_s;
    rc = im_jwt_sign(a->keys->secret, a->keys->secret_len, &claims, a->token, sizeof(a->token));
    if (rc != IM_OK) {
        im_log_error("auth: signing a token for user %llu: %s", (unsigned long long)claims.sub,
                     im_strerror(rc));
        snprintf(msg, msglen, "internal: cannot issue a token");
        return IM_RPC_INTERNAL;
    }
    resp->user_id = claims.sub;
    resp->token = a->token;
    resp->expires_at_ms = claims.exp * 1000;
    return IM_RPC_OK;
}

im_rpc_code_t lg_auth_delete(lg_auth_t *a, const Im__V1__DeleteAccountRequest *req,
                             Im__V1__DeleteAccountResponse *resp, char *msg, size_t msglen)
{
    size_t pwlen = strlen(req->password);
    const char *hash = a->keys->dummy_hash;
    bool found;
    im_err_t rc;

    (void)resp;
    im_mysql_bind_u64(a->find_by_id, 0, req->user_id);
    rc = im_mysql_stmt_exec(a->find_by_id);
    if (rc == IM_OK)
        rc = im_mysql_stmt_next(a->find_by_id);
    if (rc != IM_OK && rc != IM_ENOENT)
        return lg__db_status(a->db, rc, "auth: find user", msg, msglen);
    found = rc == IM_OK;
    if (found)
        hash = im_mysql_col_str(a->find_by_id, 0, NULL);
    /* The hash is checked either way: the time does not tell what exists. */
    if (im_password_verify(hash, req->password, pwlen) != IM_OK || !found) {
        snprintf(msg, msglen, "bad_credentials: wrong password");
        return IM_RPC_UNAUTHENTICATED;
    }
    im_mysql_bind_i64(a->mark_deleted, 0, (int64_t)im_wall_ms());
    im_mysql_bind_u64(a->mark_deleted, 1, req->user_id);
    rc = im_mysql_stmt_exec(a->mark_deleted);
    if (rc != IM_OK)
        return lg__db_status(a->db, rc, "auth: delete user", msg, msglen);
    im_log_info("auth: user %llu deleted its account", (unsigned long long)req->user_id);
    return IM_RPC_OK;
}

/* Runs st (bound) and appends its (id, username) row, if any, to resp. */
static im_err_t find_one(lg_auth_t *a, im_mysql_stmt_t *st, Im__V1__FindUsersResponse *resp)
{
    im_err_t rc = im_mysql_stmt_exec(st);
    size_t i = resp->n_users;

    if (rc == IM_OK)
        rc = im_mysql_stmt_next(st);
    if (rc == IM_ENOENT)
        return IM_OK;
    if (rc != IM_OK)
        return rc;
    im__v1__user_info__init(&a->users[i]);
    a->users[i].id = im_mysql_col_u64(st, 0);
    snprintf(a->names[i], sizeof(a->names[i]), "%s", im_mysql_col_str(st, 1, NULL));
    a->users[i].username = a->names[i];
    a->user_ptrs[i] = &a->users[i];
    resp->users = a->user_ptrs;
    resp->n_users = i + 1;
    return IM_OK;
}

im_rpc_code_t lg_auth_find(lg_auth_t *a, const Im__V1__FindUsersRequest *req,
                           Im__V1__FindUsersResponse *resp, char *msg, size_t msglen)
{
    im_err_t rc = IM_OK;

    if ((req->username[0] != '\0') == (req->n_ids > 0) || req->n_ids > LG_FIND_USERS_MAX) {
        snprintf(msg, msglen, "bad_request: a username or 1..%d ids", LG_FIND_USERS_MAX);
        return IM_RPC_INVALID_ARGUMENT;
    }
    if (req->username[0] != '\0') {
        if (!username_ok(req->username))
            return IM_RPC_OK; /* no such name can exist */
        im_mysql_bind_str(a->find_user, 0, req->username, strlen(req->username));
        rc = find_one(a, a->find_user, resp);
    }
    for (size_t i = 0; rc == IM_OK && i < req->n_ids; i++) {
        im_mysql_bind_u64(a->by_id, 0, req->ids[i]);
        rc = find_one(a, a->by_id, resp);
    }
    if (rc != IM_OK)
        return lg__db_status(a->db, rc, "auth: find users", msg, msglen);
    return IM_RPC_OK;
}

im_rpc_code_t lg_auth_verify_token(const lg_auth_keys_t *keys, const Im__V1__VerifyTokenRequest *req,
                                   Im__V1__VerifyTokenResponse *resp, im_jwt_claims_t *claims,
                                   char *msg, size_t msglen)
{
    im_err_t rc = im_jwt_verify(keys->secret, keys->secret_len, req->token, strlen(req->token),
                                (int64_t)(im_wall_ms() / 1000), LG_AUTH_LEEWAY_S, claims);

    if (rc == IM_ETIMEDOUT) {
        snprintf(msg, msglen, "token_expired: log in again");
        return IM_RPC_UNAUTHENTICATED;
    }
    if (rc != IM_OK) {
        snprintf(msg, msglen, "bad_token: the token is not valid");
        return IM_RPC_UNAUTHENTICATED;
    }
    resp->user_id = claims->sub;
    resp->username = (char *)claims->name;
    resp->expires_at_ms = claims->exp * 1000;
    return IM_RPC_OK;
}
