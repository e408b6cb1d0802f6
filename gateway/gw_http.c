/*
 * gw_http.c - the HTTP side of the gateway apart from sockets: which route
 * serves a path, the /api request objects handed to the on_http hook, and the
 * /healthz and /metrics answers.  gw_io.c feeds requests in and writes the
 * responses out.
 */
#include "gw_int.h"

#include <stdio.h>
#include <string.h>

#include "im_alloc.h"
#include "im_log.h"
#include "im_time.h"

gw_route_t gw__http_route(const char *path)
{
    if (strcmp(path, "/healthz") == 0)
        return GW_ROUTE_HEALTHZ;
    if (strcmp(path, "/metrics") == 0)
        return GW_ROUTE_METRICS;
    if (strncmp(path, "/api/", 5) == 0)
        return GW_ROUTE_API;
    if (strcmp(path, "/ws") == 0)
        return GW_ROUTE_OTHER; /* /ws without an upgrade */
    return GW_ROUTE_STATIC;
}

size_t gw__json_error(char *buf, size_t cap, const char *code, const char *message)
{
    size_t len = 0;
    im_jw_t w;

    im_jw_init(&w, buf, cap - 1, 0);
    im_jw_obj_begin(&w);
    im_jw_key(&w, "error");
    im_jw_obj_begin(&w);
    im_jw_key(&w, "code");
    im_jw_cstr(&w, code);
    im_jw_key(&w, "message");
    im_jw_cstr(&w, message);
    im_jw_obj_end(&w);
    im_jw_obj_end(&w);
    if (im_jw_finish(&w, &len) != IM_OK) /* a message too long for buf */
        len = 0;
    buf[len] = '\0';
    return len;
}

gw_http_req_t *gw__http_new(gw_t *gw, void *conn, const char *method, const char *path,
                            const char *query, const char *bearer)
{
    gw_http_req_t *req = im_calloc(1, sizeof(*req));

    req->id = ++gw->next_http_id;
    req->conn = conn;
    req->route = gw__http_route(path);
    req->state = GW_HTTP_READING;
    snprintf(req->method, sizeof req->method, "%s", method);
    req->path = im_strdup(path);
    req->query = im_strdup(query ? query : "");
    req->bearer = bearer ? im_strdup(bearer) : NULL;
    req->body = im_strdup("");
    gw->metrics.http[req->route]++;
    return req;
}

void gw__http_free(gw_http_req_t *req)
{
    im_free(req->path);
    im_free(req->query);
    im_free(req->bearer);
    im_free(req->body);
    im_free(req->resp);
    im_free(req);
}

void gw__http_body(gw_t *gw, gw_http_req_t *req, const char *data, size_t len)
{
    if (req->route != GW_ROUTE_API || req->body_too_big || len == 0)
        return;
    if (req->body_len + len > (size_t)gw->cfg.max_body) {
        /* Keep reading (and dropping) the rest so that the 413 can be sent
         * on a connection that is still in sync. */
        req->body_too_big = 1;
        return;
    }
    if (req->body_len + len + 1 > req->body_cap) {
        req->body_cap = req->body_len + len + 1 > 2 * req->body_cap ? req->body_len + len + 1
                                                                    : 2 * req->body_cap;
        req->body = im_realloc(req->body, req->body_cap);
    }
    memcpy(req->body + req->body_len, data, len);
    req->body_len += len;
    req->body[req->body_len] = '\0';
}

void gw__http_conn_gone(gw_http_req_t *req)
{
    req->conn = NULL;
    if (req->state != GW_HTTP_WITH_HOOK)
        gw__http_free(req);
}

void gw_http_respond(gw_t *gw, gw_http_req_t *req, int status, const char *content_type,
                     const char *body, size_t len)
{
    if (req->conn == NULL) {
        gw__http_free(req);
        return;
    }
    req->status = status;
    snprintf(req->content_type, sizeof req->content_type, "%s",
             content_type ? content_type : "application/json");
    req->resp = im_malloc(IM_BUF_HEADROOM + len + 1);
    if (len > 0)
        memcpy(req->resp + IM_BUF_HEADROOM, body, len);
    req->resp_len = len;
    req->state = GW_HTTP_HEADERS;
    gw__io_want_write(gw, req->conn);
}

void gw_http_respond_error(gw_t *gw, gw_http_req_t *req, int status, const char *code,
                           const char *message)
{
    char buf[512];
    size_t len = gw__json_error(buf, sizeof buf, code, message);

    gw_http_respond(gw, req, status, NULL, buf, len);
}

/* ---- /healthz and /metrics ---- */

static void respond_health(gw_t *gw, gw_http_req_t *req)
{
    char buf[4096];
    size_t len = 0;
    int unhealthy = 0;
    im_jw_t w;

    im_jw_init(&w, buf, sizeof buf, 0);
    im_jw_obj_begin(&w);
    im_jw_key(&w, "gateway");
    im_jw_cstr(&w, gw->gateway_id);
    im_jw_key(&w, "instance");
    im_jw_cstr(&w, gw->instance_id);
    im_jw_key(&w, "connections");
    im_jw_uint64(&w, gw_sessions_count(&gw->sessions));
    im_jw_key(&w, "uptime_s");
    im_jw_uint64(&w, (im_mono_ms() - gw->started_ms) / 1000);
    im_jw_key(&w, "checks");
    im_jw_obj_begin(&w);
    if (gw->hooks.on_health != NULL)
        unhealthy = gw->hooks.on_health(gw, &w, gw->hooks.arg);
    im_jw_obj_end(&w);
    im_jw_key(&w, "status");
    im_jw_cstr(&w, gw->stopping ? "stopping" : unhealthy ? "unavailable" : "ok");
    im_jw_obj_end(&w);
    if (im_jw_finish(&w, &len) != IM_OK) {
        gw_http_respond_error(gw, req, 500, "internal", "health report too large");
        return;
    }
    gw_http_respond(gw, req, gw->stopping || unhealthy ? 503 : 200, NULL, buf, len);
}

static void respond_metrics(gw_t *gw, gw_http_req_t *req)
{
    im_bufpool_stats_t pool;
    gw_sb_t sb;

    gw_sb_init(&sb);
    im_bufpool_stats(gw->pool, &pool);
    gw_metrics_render(&gw->metrics, gw_sessions_count(&gw->sessions), &pool, gw->gateway_id,
                      gw->instance_id, &sb);
    if (gw->hooks.on_metrics != NULL)
        gw->hooks.on_metrics(gw, &sb, gw->hooks.arg);
    gw_http_respond(gw, req, 200, "text/plain; version=0.0.4; charset=utf-8", sb.p, sb.len);
    gw_sb_free(&sb);
}

void gw__http_dispatch(gw_t *gw, gw_http_req_t *req)
{
    im_log_debug("http=%llu %s %s", (unsigned long long)req->id, req->method, req->path);
    switch (req->route) {
    case GW_ROUTE_HEALTHZ:
        respond_health(gw, req);
        return;
    case GW_ROUTE_METRICS:
        respond_metrics(gw, req);
        return;
    case GW_ROUTE_API:
        if (req->body_too_big) {
            gw_http_respond_error(gw, req, 413, "too_large", "request body above max-body");
            return;
        }
        if (gw->hooks.on_http != NULL) {
            req->state = GW_HTTP_WITH_HOOK;
            gw->hooks.on_http(gw, req, gw->hooks.arg);
            return;
        }
        gw_http_respond_error(gw, req, 404, "not_found", "no such API endpoint");
        return;
    case GW_ROUTE_OTHER:
        if (strcmp(req->path, "/ws") == 0) {
            gw_http_respond_error(gw, req, 426, "upgrade_required", "/ws is a WebSocket endpoint");
            return;
        }
        /* fallthrough */
    case GW_ROUTE_STATIC:
    default:
        gw_http_respond_error(gw, req, 404, "not_found", "no such path");
        return;
    }
}

/* ---- accessors ---- */

const char *gw_http_method(const gw_http_req_t *req)
{
    return req->method;
}

const char *gw_http_path(const gw_http_req_t *req)
{
    return req->path;
}

const char *gw_http_query(const gw_http_req_t *req)
{
    return req->query;
}

const char *gw_http_body(const gw_http_req_t *req, size_t *len)
{
    if (len != NULL)
        *len = req->body_len;
    return req->body;
}

const char *gw_http_bearer(const gw_http_req_t *req)
{
    return req->bearer;
}

uint64_t gw_http_id(const gw_http_req_t *req)
{
    return req->id;
}
