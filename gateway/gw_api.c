/*
 * gw_api.c - REST under /api/v1 (README "REST API"), forwarded to logic:
 *
 *   POST /api/v1/register                 {username, password} -> 201 {user_id}
 *   POST /api/v1/login                    {username, password} -> {user_id, token, expires_at}
 *   GET  /api/v1/me                                            -> {user_id, username}
 *   POST /api/v1/me/delete                {password}           -> {deleted: true}
 *   GET  /api/v1/users?name=alice | ?ids=1,2                   -> {users: [{id, username}]}
 *   GET  /api/v1/groups                                        -> {groups: [...]}
 *   POST /api/v1/groups                   {name}               -> 201 {group}
 *   POST /api/v1/groups/{id}/join | /leave                     -> {group}
 *   GET  /api/v1/groups/{id}/members                           -> {members: [ids]}
 *   GET  /api/v1/conversations                                 -> {conversations: [...]}
 *   GET  /api/v1/conversations/{conv}/messages?before=&limit=  -> {messages: [...], more}
 *
 * Everything but register and login needs Authorization: Bearer <token>,
 * checked here (401 before logic is called).  Errors are
 * {"error":{"code":"...","message":"..."}} with the HTTP status of the gRPC
 * code (INVALID_ARGUMENT 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403,
 * NOT_FOUND 404, ALREADY_EXISTS / FAILED_PRECONDITION / ABORTED 409,
 * RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, else 500).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_int.h"
#include "gw_req.h"
#include "gw_service_int.h"
#include "im_alloc.h"
#include "im_log.h"

/* ------------------------------------------------------------ encoders */

static void jw_group(im_jw_t *w, const Im__V1__GroupInfo *g)
{
    im_jw_obj_begin(w);
    gw__jw_id(w, "id", g->id);
    im_jw_key(w, "name");
    im_jw_cstr(w, g->name ? g->name : "");
    gw__jw_id(w, "owner", g->owner);
    im_jw_key(w, "member_count");
    im_jw_uint64(w, g->member_count);
    im_jw_obj_end(w);
}

size_t gw__history_size(const Im__V1__HistoryResponse *r)
{
    size_t n = 256;

    for (size_t i = 0; i < r->n_messages; i++)
        n += 320 + strlen(r->messages[i]->body) * 6;
    return n;
}

/* "messages": [...], "more": bool */
void gw__jw_history(im_jw_t *w, const Im__V1__HistoryResponse *r)
{
    im_jw_key(w, "messages");
    im_jw_arr_begin(w);
    for (size_t i = 0; i < r->n_messages; i++) {
        im_jw_obj_begin(w);
        gw__jw_msg_fields(w, r->messages[i]);
        im_jw_obj_end(w);
    }
    im_jw_arr_end(w);
    im_jw_key(w, "more");
    im_jw_bool(w, r->more);
}

/* "conversations": [...] */
void gw__jw_conversations(im_jw_t *w, const Im__V1__ConversationsResponse *r)
{
    im_jw_key(w, "conversations");
    im_jw_arr_begin(w);
    for (size_t i = 0; i < r->n_conversations; i++) {
        const Im__V1__Conversation *c = r->conversations[i];
        im_jw_obj_begin(w);
        im_jw_key(w, "conv");
        im_jw_cstr(w, c->conv);
        if (c->group_id)
            gw__jw_id(w, "group", c->group_id);
        else
            gw__jw_id(w, "peer", c->peer);
        im_jw_key(w, "last_seq");
        im_jw_uint64(w, c->last_seq);
        im_jw_key(w, "read_seq");
        im_jw_uint64(w, c->read_seq);
        im_jw_key(w, "unread");
        im_jw_uint64(w, c->unread);
        im_jw_key(w, "peer_read_seq");
        im_jw_uint64(w, c->peer_read_seq);
        if (c->peer != 0) {
            im_jw_key(w, "peer_online");
            im_jw_bool(w, c->peer_online);
        }
        im_jw_key(w, "last_ts");
        im_jw_int64(w, c->last_at_ms);
        im_jw_obj_end(w);
    }
    im_jw_arr_end(w);
}

/* ------------------------------------------------------------ answers */

static int http_status(im_rpc_code_t code)
{
    switch (code) {
    case IM_RPC_INVALID_ARGUMENT:
    case IM_RPC_OUT_OF_RANGE:
        return 400;
    case IM_RPC_UNAUTHENTICATED:
        return 401;
    case IM_RPC_PERMISSION_DENIED:
        return 403;
    case IM_RPC_NOT_FOUND:
        return 404;
    case IM_RPC_ALREADY_EXISTS:
    case IM_RPC_FAILED_PRECONDITION:
    case IM_RPC_ABORTED:
        return 409;
    case IM_RPC_RESOURCE_EXHAUSTED:
        return 429;
    case IM_RPC_UNAVAILABLE:
    case IM_RPC_CANCELLED:
        return 503;
    case IM_RPC_DEADLINE_EXCEEDED:
        return 504;
    default:
        return 500;
    }
}

/* Writes the body of a successful call into w (inside an object). */
typedef void (*encode_fn)(im_jw_t *w, const gw_call_t *c);

/* Answers c's request from its result: an error object, or what encode
 * writes, with c->http_ok_status. */
static void answer(gw_service_t *svc, gw_call_t *c, encode_fn encode, size_t size)
{
    char code[48], *buf;
    const char *text;
    im_jw_t w;
    size_t len = 0;

    if (c->code != IM_RPC_OK) {
        text = gw__status_split(c, code, sizeof(code));
        gw_http_respond_error(svc->gw, c->http, http_status(c->code), code, text);
        return;
    }
    buf = im_malloc(size);
    im_jw_init(&w, buf, size, 0);
    im_jw_obj_begin(&w);
    encode(&w, c);
    im_jw_obj_end(&w);
    if (im_jw_finish(&w, &len) != IM_OK)
        gw_http_respond_error(svc->gw, c->http, 500, "internal", "the answer did not encode");
    else
        gw_http_respond(svc->gw, c->http, c->http_ok_status, NULL, buf, len);
    im_free(buf);
}

#define RESP(c, T) ((const T *)(c)->resp)

static void enc_register(im_jw_t *w, const gw_call_t *c)
{
    gw__jw_id(w, "user_id", RESP(c, Im__V1__RegisterResponse)->user_id);
}

static void enc_login(im_jw_t *w, const gw_call_t *c)
{
    const Im__V1__LoginResponse *r = RESP(c, Im__V1__LoginResponse);

    gw__jw_id(w, "user_id", r->user_id);
    im_jw_key(w, "token");
    im_jw_cstr(w, r->token);
    im_jw_key(w, "expires_at");
    im_jw_int64(w, r->expires_at_ms);
}

static void enc_group(im_jw_t *w, const gw_call_t *c)
{
    const Im__V1__GroupResponse *r = RESP(c, Im__V1__GroupResponse);

    im_jw_key(w, "group");
    if (r->group)
        jw_group(w, r->group);
    else
        im_jw_null(w);
}

static void enc_mine(im_jw_t *w, const gw_call_t *c)
{
    const Im__V1__MyGroupsResponse *r = RESP(c, Im__V1__MyGroupsResponse);

    im_jw_key(w, "groups");
    im_jw_arr_begin(w);
    for (size_t i = 0; i < r->n_groups; i++)
        jw_group(w, r->groups[i]);
    im_jw_arr_end(w);
}

static void enc_members(im_jw_t *w, const gw_call_t *c)
{
    const Im__V1__MembersResponse *r = RESP(c, Im__V1__MembersResponse);
    char id[24];

    im_jw_key(w, "members");
    im_jw_arr_begin(w);
    for (size_t i = 0; i < r->n_user_ids; i++) {
        snprintf(id, sizeof(id), "%" PRIu64, r->user_ids[i]);
        im_jw_cstr(w, id);
    }
    im_jw_arr_end(w);
}

static void enc_convs(im_jw_t *w, const gw_call_t *c)
{
    gw__jw_conversations(w, RESP(c, Im__V1__ConversationsResponse));
}

static void enc_history(im_jw_t *w, const gw_call_t *c)
{
    gw__jw_history(w, RESP(c, Im__V1__HistoryResponse));
}

#define DONE(name, encode, size_expr)                                                              \
    static void name(gw_service_t *svc, gw_call_t *c)                                              \
    {                                                                                              \
        answer(svc, c, encode, c->code == IM_RPC_OK ? (size_expr) : 0);                            \
    }

DONE(register_done, enc_register, 128)
DONE(login_done, enc_login, 2048)
DONE(group_done, enc_group, 512)
DONE(mine_done, enc_mine, 256 + RESP(c, Im__V1__MyGroupsResponse)->n_groups * 400)
DONE(members_done, enc_members, 64 + RESP(c, Im__V1__MembersResponse)->n_user_ids * 24)
DONE(convs_done, enc_convs, 64 + RESP(c, Im__V1__ConversationsResponse)->n_conversations * 320)
DONE(history_done, enc_history, gw__history_size(RESP(c, Im__V1__HistoryResponse)))

/* ------------------------------------------------------------ requests */

typedef struct {
    gw_service_t *svc;
    gw_http_req_t *req;
    uint64_t user; /* 0 before authentication */
    const char *name;
    im_jwt_claims_t claims;
    gw_body_t body;
} api_ctx_t;

static bool authenticate(api_ctx_t *a)
{
    const char *token = gw_http_bearer(a->req);
    im_err_t rc = token ? gw__auth(a->svc->gw, token, strlen(token), &a->claims) : IM_EAUTH;

    if (rc == IM_OK) {
        a->user = a->claims.sub;
        a->name = a->claims.name;
        return true;
    }
    gw_http_respond_error(a->svc->gw, a->req, 401,
                          token == NULL          ? "missing_token"
                          : rc == IM_ETIMEDOUT   ? "token_expired"
                                                 : "invalid_token",
                          token == NULL ? "Authorization: Bearer <token> is required"
                                        : "the token is not valid");
    return false;
}

/* Parses the JSON object body; false (400 sent) if it is not one. */
static bool parse_body(api_ctx_t *a)
{
    size_t len = 0;
    const char *body = gw_http_body(a->req, &len);

    if (gw_body_parse(&a->body, body, len))
        return true;
    gw_http_respond_error(a->svc->gw, a->req, 400, "bad_json", "the body must be a JSON object");
    return false;
}

/* A string member of the body, copied into buf; false (400 sent) if bad. */
static bool body_str(api_ctx_t *a, const char *key, char *buf, size_t cap)
{
    char msg[96];

    if (gw_body_str(&a->body, key, buf, cap))
        return true;
    snprintf(msg, sizeof(msg), "%s must be a string of at most %zu bytes", key, cap - 1);
    gw_http_respond_error(a->svc->gw, a->req, 400, "bad_request", msg);
    return false;
}

static void forward(api_ctx_t *a, gw_call_done_fn done, int ok_status,
                    const ProtobufCServiceDescriptor *sd, unsigned method,
                    const ProtobufCMessage *msg)
{
    gw_call_t *c = gw__call_new(a->svc, GW_CALL_HTTP, done);

    c->http = a->req;
    c->http_ok_status = ok_status;
    c->user = a->user;
    gw__call(a->svc, c, sd, method, msg);
}

static void api_auth(api_ctx_t *a, bool login)
{
    char user[64], pass[256];

    if (!parse_body(a) || !body_str(a, "username", user, sizeof(user)) ||
        !body_str(a, "password", pass, sizeof(pass)))
        return;
    if (login) {
        Im__V1__LoginRequest req = IM__V1__LOGIN_REQUEST__INIT;
        req.username = user;
        req.password = pass;
        forward(a, login_done, 200, &im__v1__auth__descriptor, 1, &req.base);
    } else {
        Im__V1__RegisterRequest req = IM__V1__REGISTER_REQUEST__INIT;
        req.username = user;
        req.password = pass;
        forward(a, register_done, 201, &im__v1__auth__descriptor, 0, &req.base);
    }
}

static void enc_deleted(im_jw_t *w, const gw_call_t *c)
{
    (void)c;
    im_jw_key(w, "deleted");
    im_jw_bool(w, true);
}

DONE(deleted_done, enc_deleted, 64)

/* POST /api/v1/me/delete {password} */
static void api_delete(api_ctx_t *a)
{
    Im__V1__DeleteAccountRequest req = IM__V1__DELETE_ACCOUNT_REQUEST__INIT;
    char pass[256];

    if (!parse_body(a) || !body_str(a, "password", pass, sizeof(pass)))
        return;
    req.user_id = a->user;
    req.password = pass;
    forward(a, deleted_done, 200, &im__v1__auth__descriptor, 3, &req.base);
}

static void enc_users(im_jw_t *w, const gw_call_t *c)
{
    const Im__V1__FindUsersResponse *r = RESP(c, Im__V1__FindUsersResponse);

    im_jw_key(w, "users");
    im_jw_arr_begin(w);
    for (size_t i = 0; i < r->n_users; i++) {
        im_jw_obj_begin(w);
        gw__jw_id(w, "id", r->users[i]->id);
        im_jw_key(w, "username");
        im_jw_cstr(w, r->users[i]->username);
        im_jw_obj_end(w);
    }
    im_jw_arr_end(w);
}

DONE(users_done, enc_users, 64 + RESP(c, Im__V1__FindUsersResponse)->n_users * 80)

/* A query parameter's value into buf ("" when absent). */
static void query_str(const char *query, const char *key, char *buf, size_t cap)
{
    size_t n = strlen(key);

    buf[0] = '\0';
    for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        if (strncmp(p, key, n) == 0 && p[n] == '=') {
            const char *v = p + n + 1, *end = strchr(v, '&');
            size_t len = end ? (size_t)(end - v) : strlen(v);
            snprintf(buf, cap, "%.*s", (int)(len < cap ? len : cap - 1), v);
            return;
        }
    }
}

/* GET /api/v1/users?name=alice  or  ?ids=1,2,3 */
static void api_users(api_ctx_t *a)
{
    Im__V1__FindUsersRequest req = IM__V1__FIND_USERS_REQUEST__INIT;
    char name[64], ids_text[4096], *save = NULL;
    uint64_t ids[200];

    query_str(gw_http_query(a->req), "name", name, sizeof(name));
    query_str(gw_http_query(a->req), "ids", ids_text, sizeof(ids_text));
    for (char *t = strtok_r(ids_text, ",", &save); t != NULL && req.n_ids < 200;
         t = strtok_r(NULL, ",", &save))
        if ((ids[req.n_ids] = strtoull(t, NULL, 10)) != 0)
            req.n_ids++;
    if ((name[0] != '\0') == (req.n_ids > 0)) {
        gw_http_respond_error(a->svc->gw, a->req, 400, "bad_request",
                              "give ?name=<username> or ?ids=<id,id,...>");
        return;
    }
    req.username = name;
    req.ids = ids;
    forward(a, users_done, 200, &im__v1__auth__descriptor, 4, &req.base);
}

static void api_me(api_ctx_t *a)
{
    char body[160];
    int n = snprintf(body, sizeof(body), "{\"user_id\":\"%" PRIu64 "\",\"username\":", a->user);
    im_jw_t w;
    size_t len = 0;

    im_jw_init(&w, body + n, sizeof(body) - (size_t)n - 1, 0);
    im_jw_cstr(&w, a->name ? a->name : "");
    im_jw_finish(&w, &len);
    body[n + (int)len] = '}';
    gw_http_respond(a->svc->gw, a->req, 200, NULL, body, (size_t)n + len + 1);
}

static void api_groups(api_ctx_t *a, const char *method)
{
    if (strcmp(method, "GET") == 0) {
        Im__V1__MyGroupsRequest req = IM__V1__MY_GROUPS_REQUEST__INIT;
        req.user_id = a->user;
        forward(a, mine_done, 200, &im__v1__group__descriptor, 4, &req.base);
    } else {
        Im__V1__CreateGroupRequest req = IM__V1__CREATE_GROUP_REQUEST__INIT;
        char name[256];
        if (!parse_body(a) || !body_str(a, "name", name, sizeof(name)))
            return;
        req.user_id = a->user;
        req.name = name;
        forward(a, group_done, 201, &im__v1__group__descriptor, 0, &req.base);
    }
}

/* /api/v1/groups/{id}/{join,leave,members} */
static bool api_group_action(api_ctx_t *a, const char *method, const char *rest)
{
    Im__V1__GroupRequest req = IM__V1__GROUP_REQUEST__INIT;
    char action[16];
    int end = 0;

    if (sscanf(rest, "%" SCNu64 "/%15[a-z]%n", &req.group_id, action, &end) != 2 ||
        rest[end] != '\0' || req.group_id == 0)
        return false;
    req.user_id = a->user;
    if (strcmp(action, "members") == 0 && strcmp(method, "GET") == 0)
        forward(a, members_done, 200, &im__v1__group__descriptor, 3, &req.base);
    else if (strcmp(action, "join") == 0 && strcmp(method, "POST") == 0)
        forward(a, group_done, 200, &im__v1__group__descriptor, 1, &req.base);
    else if (strcmp(action, "leave") == 0 && strcmp(method, "POST") == 0)
        forward(a, group_done, 200, &im__v1__group__descriptor, 2, &req.base);
    else
        return false;
    return true;
}

/* A query parameter as a number (0 when absent). */
static uint64_t query_u64(const char *query, const char *key)
{
    size_t n = strlen(key);

    for (const char *p = query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL)
        if (strncmp(p, key, n) == 0 && p[n] == '=')
            return strtoull(p + n + 1, NULL, 10);
    return 0;
}

/* /api/v1/conversations/{conv}/messages */
static bool api_messages(api_ctx_t *a, const char *rest)
{
    Im__V1__HistoryRequest req = IM__V1__HISTORY_REQUEST__INIT;
    const char *slash = strchr(rest, '/');
    char conv[64];
    uint64_t limit = query_u64(gw_http_query(a->req), "limit");

    if (slash == NULL || strcmp(slash, "/messages") != 0 || (size_t)(slash - rest) >= sizeof(conv))
        return false;
    memcpy(conv, rest, (size_t)(slash - rest));
    conv[slash - rest] = '\0';
    req.user_id = a->user;
    req.conv = conv;
    req.before_seq = query_u64(gw_http_query(a->req), "before");
    req.limit = (uint32_t)(limit > 0 && limit <= 200 ? limit : 50);
    forward(a, history_done, 200, &im__v1__message__descriptor, 2, &req.base);
    return true;
}

/* Routes an authenticated request; false when nothing matched. */
static bool route_authed(api_ctx_t *a, const char *method, const char *path)
{
    static const char groups[] = "/api/v1/groups/", convs[] = "/api/v1/conversations/";

    if (strcmp(path, "/api/v1/me") == 0 && strcmp(method, "GET") == 0)
        api_me(a);
    else if (strcmp(path, "/api/v1/me/delete") == 0 && strcmp(method, "POST") == 0)
        api_delete(a);
    else if (strcmp(path, "/api/v1/users") == 0 && strcmp(method, "GET") == 0)
        api_users(a);
    else if (strcmp(path, "/api/v1/groups") == 0 &&
             (strcmp(method, "GET") == 0 || strcmp(method, "POST") == 0))
        api_groups(a, method);
    else if (strncmp(path, groups, sizeof(groups) - 1) == 0)
        return api_group_action(a, method, path + sizeof(groups) - 1);
    else if (strcmp(path, "/api/v1/conversations") == 0 && strcmp(method, "GET") == 0) {
        Im__V1__ConversationsRequest req = IM__V1__CONVERSATIONS_REQUEST__INIT;
        req.user_id = a->user;
        forward(a, convs_done, 200, &im__v1__message__descriptor, 4, &req.base);
    } else if (strncmp(path, convs, sizeof(convs) - 1) == 0 && strcmp(method, "GET") == 0)
        return api_messages(a, path + sizeof(convs) - 1);
    else
        return false;
    return true;
}

void gw__on_http(gw_t *gw, gw_http_req_t *req, void *arg)
{
    api_ctx_t *a = im_calloc(1, sizeof(*a));
    const char *method = gw_http_method(req), *path = gw_http_path(req);
    bool is_post = strcmp(method, "POST") == 0;

    (void)gw;
    a->svc = arg;
    a->req = req;
    if (strcmp(path, "/api/v1/register") == 0 && is_post)
        api_auth(a, false);
    else if (strcmp(path, "/api/v1/login") == 0 && is_post)
        api_auth(a, true);
    else if (strncmp(path, "/api/v1/", 8) == 0 &&
             strcmp(path, "/api/v1/register") != 0 && strcmp(path, "/api/v1/login") != 0) {
        if (authenticate(a) && !route_authed(a, method, path))
            gw_http_respond_error(a->svc->gw, req, 404, "not_found", "no such API endpoint");
    } else {
        gw_http_respond_error(a->svc->gw, req, 404, "not_found", "no such API endpoint");
    }
    im_free(a);
}
