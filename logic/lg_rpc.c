#include "lg_rpc.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "im.pb-c.h"
#include "im_alloc.h"
#include "im_log.h"
#include "im_rpc.h"
#include "lg_auth.h"
#include "lg_group.h"

/* One MySQL session and the statements prepared on it. */
typedef struct session_s {
    struct session_s *next; /* in the free list */
    im_mysql_t *db;
    lg_auth_t *auth;
    lg_group_t *group;
} session_t;

struct lg_rpc_s {
    lg_rpc_config_t cfg;
    lg_auth_keys_t keys;
    im_rpc_server_t *server;
    session_t *sessions; /* cfg.n_workers of them */
    session_t *free_list;
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

static session_t *session_take(lg_rpc_t *r)
{
    session_t *s;

    pthread_mutex_lock(&r->lock);
    /* Never waits while handlers <= workers == sessions; kept for safety. */
    while (r->free_list == NULL)
        pthread_cond_wait(&r->cond, &r->lock);
    s = r->free_list;
    r->free_list = s->next;
    pthread_mutex_unlock(&r->lock);
    return s;
}

static void session_give(lg_rpc_t *r, session_t *s)
{
    pthread_mutex_lock(&r->lock);
    s->next = r->free_list;
    r->free_list = s;
    pthread_cond_signal(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void session_close(session_t *s)
{
    lg_auth_free(s->auth);
    lg_group_free(s->group);
    im_mysql_close(s->db);
    s->auth = NULL;
    s->group = NULL;
    s->db = NULL;
}

/* Connects, reconnects or prepares as needed.  Returns IM_RPC_OK, or
 * UNAVAILABLE with msg set when the database cannot be reached. */
static im_rpc_code_t session_ready(lg_rpc_t *r, session_t *s, char *msg, size_t msglen)
{
    char err[256];
    im_err_t rc = IM_OK;

    if (s->db == NULL) {
        s->db = im_mysql_connect(&r->cfg.mysql, err, sizeof(err));
        if (s->db == NULL) {
            im_log_warn("rpc: mysql connect failed: %s", err);
            rc = IM_EUNAVAIL;
        }
    } else if (!im_mysql_is_open(s->db)) {
        rc = im_mysql_reconnect(s->db);
    }
    if (rc == IM_OK && s->auth == NULL) {
        rc = lg_auth_new(s->db, &r->keys, &s->auth);
        if (rc == IM_OK)
            rc = lg_group_new(s->db, r->cfg.ids, &s->group);
        if (rc != IM_OK) {
            im_log_warn("rpc: preparing statements: %s (%s)", im_strerror(rc),
                        im_mysql_error(s->db));
            session_close(s); /* start from a fresh connection next time */
        }
    }
    if (rc != IM_OK) {
        snprintf(msg, msglen, "db_unavailable: the database is unavailable, try again");
        return IM_RPC_UNAVAILABLE;
    }
    return IM_RPC_OK;
}

static void complete(im_rpc_call_t *call, im_rpc_code_t code, const ProtobufCMessage *resp,
                     const char *msg)
{
    if (code == IM_RPC_OK)
        im_rpc_reply(call, resp);
    else
        im_rpc_fail(call, code, msg);
}

/* A blocking handler: takes a session, runs fn(s->obj, request, &response),
 * replies, and only then gives the session back, since the response points
 * into obj's buffers. */
#define DB_HANDLER(name, obj, fn, ReqT, RespT, RESP_INIT)                                          \
    static void name##_cb(im_rpc_call_t *call, void *arg)                                          \
    {                                                                                              \
        lg_rpc_t *r = arg;                                                                         \
        RespT resp = RESP_INIT;                                                                    \
        char msg[256];                                                                             \
        session_t *s = session_take(r);                                                            \
        im_rpc_code_t code = session_ready(r, s, msg, sizeof(msg));                                \
                                                                                                   \
        if (code == IM_RPC_OK)                                                                     \
            code = fn(s->obj, (const ReqT *)im_rpc_call_request(call), &resp, msg, sizeof(msg));   \
        complete(call, code, &resp.base, msg);                                                     \
        session_give(r, s);                                                                        \
    }

DB_HANDLER(signup, auth, lg_auth_signup, Im__V1__RegisterRequest, Im__V1__RegisterResponse,
           IM__V1__REGISTER_RESPONSE__INIT)
DB_HANDLER(login, auth, lg_auth_login, Im__V1__LoginRequest, Im__V1__LoginResponse,
           IM__V1__LOGIN_RESPONSE__INIT)
DB_HANDLER(create, group, lg_group_create, Im__V1__CreateGroupRequest, Im__V1__GroupResponse,
           IM__V1__GROUP_RESPONSE__INIT)
DB_HANDLER(join, group, lg_group_join, Im__V1__GroupRequest, Im__V1__GroupResponse,
           IM__V1__GROUP_RESPONSE__INIT)
DB_HANDLER(leave, group, lg_group_leave, Im__V1__GroupRequest, Im__V1__GroupResponse,
           IM__V1__GROUP_RESPONSE__INIT)
DB_HANDLER(members, group, lg_group_members, Im__V1__GroupRequest, Im__V1__MembersResponse,
           IM__V1__MEMBERS_RESPONSE__INIT)
DB_HANDLER(mine, group, lg_group_mine, Im__V1__MyGroupsRequest, Im__V1__MyGroupsResponse,
           IM__V1__MY_GROUPS_RESPONSE__INIT)

/* HMAC only: cheap enough for the completion-queue thread. */
static void verify_token_cb(im_rpc_call_t *call, void *arg)
{
    lg_rpc_t *r = arg;
    Im__V1__VerifyTokenResponse resp = IM__V1__VERIFY_TOKEN_RESPONSE__INIT;
    im_jwt_claims_t claims;
    char msg[256];
    im_rpc_code_t code = lg_auth_verify_token(
        &r->keys, (const Im__V1__VerifyTokenRequest *)im_rpc_call_request(call), &resp, &claims,
        msg, sizeof(msg));

    complete(call, code, &resp.base, msg);
}

/* In the order of the methods in proto/im.proto (= the descriptors'). */
static const im_rpc_method_t auth_methods[] = {
    {signup_cb, true},
    {login_cb, true},
    {verify_token_cb, false},
};
static const im_rpc_method_t group_methods[] = {
    {create_cb, true}, {join_cb, true}, {leave_cb, true}, {members_cb, true}, {mine_cb, true},
};

lg_rpc_t *lg_rpc_new(const lg_rpc_config_t *cfg)
{
    lg_rpc_t *r = im_calloc(1, sizeof(*r));
    im_err_t rc;

    r->cfg = *cfg;
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->cond, NULL);
    r->sessions = im_calloc(cfg->n_workers, sizeof(*r->sessions));
    for (unsigned i = 0; i < cfg->n_workers; i++)
        session_give(r, &r->sessions[i]);
    rc = lg_auth_keys_init(&r->keys, cfg->secret, cfg->secret_len, cfg->token_ttl_s, cfg->ids);
    if (rc != IM_OK) {
        im_log_error("rpc: hashing the dummy password: %s", im_strerror(rc));
        lg_rpc_free(r);
        return NULL;
    }
    r->server = im_rpc_server_new(cfg->listen, 1, cfg->n_workers);
    if ((rc = im_rpc_server_add_service(r->server, &im__v1__auth__descriptor, auth_methods, r)) !=
            IM_OK ||
        (rc = im_rpc_server_add_service(r->server, &im__v1__group__descriptor, group_methods,
                                        r)) != IM_OK) {
        im_log_error("rpc: registering services: %s", im_strerror(rc));
        lg_rpc_free(r);
        return NULL;
    }
    return r;
}

im_err_t lg_rpc_start(lg_rpc_t *r, unsigned *port)
{
    const char *colon = strrchr(r->cfg.listen, ':');
    int host_len = colon ? (int)(colon - r->cfg.listen) : (int)strlen(r->cfg.listen);
    unsigned bound = 0;
    im_err_t rc = im_rpc_server_start(r->server, &bound);

    if (rc != IM_OK) {
        im_log_error("logic: cannot listen on %s: %s", r->cfg.listen, im_strerror(rc));
        return rc;
    }
    im_log_info("logic: grpc listening on %.*s:%u", host_len, r->cfg.listen, bound);
    if (port != NULL)
        *port = bound;
    return IM_OK;
}

void lg_rpc_free(lg_rpc_t *r)
{
    if (r == NULL)
        return;
    if (r->server != NULL) {
        im_rpc_server_stop(r->server, 1000);
        im_rpc_server_free(r->server); /* joins the workers: no session is in use now */
    }
    for (unsigned i = 0; i < r->cfg.n_workers; i++)
        session_close(&r->sessions[i]);
    im_free(r->sessions);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    im_free(r);
}
