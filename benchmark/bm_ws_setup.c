/*
 * bm_ws_setup.c - users, tokens and groups for a run, through the REST API.
 *
 * Two ways to get users (--auth):
 *   rest  register each user (POST /api/v1/register) and log in
 *         (POST /api/v1/login): the path a real client takes, and slow on
 *         purpose (argon2id at interactive cost: ~0.15 s of CPU per call);
 *   mint  sign HS256 tokens with the gateways' secret (--jwt-secret,
 *         IM_JWT_SECRET, or <state-dir>/jwt-secret), no login.  Logic's Send
 *         refuses a direct message to a user that does not exist
 *         (unknown_user), so direct and db modes still register their users
 *         (without logging in); group, idle and connect modes use fake ids
 *         that were never registered (joining a group does not check them).
 * --users-file keeps registered users (one "id username" a line) for later
 * runs, so a big direct run pays for registration once.
 *
 * The set-up runs before the event loop, from --setup-threads worker
 * threads, each with its own keep-alive REST connection.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "bm_rest_io.h"
#include "bm_ws.h"
#include "im_alloc.h"
#include "im_json.h"
#include "im_jwt.h"
#include "im_time.h"

#define PASSWORD    "bm-password-1"
#define REST_MS     30000
#define RETRIES     5
#define FAKE_ID_BIT (UINT64_C(1) << 62) /* far above any snowflake id issued before ~2058 */

typedef struct {
    char name[40];
} bm_uname_t;

static bm_uname_t *names;
static char **tokens;
static atomic_size_t next_job;
static atomic_int failed;
static size_t njobs;
static int (*job_fn)(bm_rest_t *r, size_t i, char *msg, size_t cap);

/* ------------------------------------------------------------ workers */

static void *worker(void *arg)
{
    size_t t = (size_t)(uintptr_t)arg;
    bm_rest_t *r = bm_rest_new(&B.gw[t % B.ngw], B.gw_host[t % B.ngw]);
    char msg[512];
    size_t i;

    while (!atomic_load(&failed) && !B.stop && (i = atomic_fetch_add(&next_job, 1)) < njobs) {
        if (job_fn(r, i, msg, sizeof(msg)) != 0) {
            if (atomic_fetch_add(&failed, 1) == 0)
                fprintf(stderr, "benchmark: set-up: %s\n", msg);
        }
        if (B.cfg.progress && (i + 1) % 500 == 0)
            fprintf(stderr, "benchmark: set-up %zu/%zu\n", i + 1, njobs);
    }
    bm_rest_free(r);
    return NULL;
}

/* Runs fn(i) for i in [0, n) on the worker threads; 0 when all succeeded. */
static int run_jobs(size_t n, int (*fn)(bm_rest_t *r, size_t i, char *msg, size_t cap))
{
    size_t nt = (size_t)B.cfg.setup_threads;
    pthread_t th[64];

    if (n == 0)
        return 0;
    if (nt > n)
        nt = n;
    if (nt > 64)
        nt = 64;
    atomic_store(&next_job, 0);
    atomic_store(&failed, 0);
    njobs = n;
    job_fn = fn;
    for (size_t t = 0; t < nt; t++)
        pthread_create(&th[t], NULL, worker, (void *)(uintptr_t)t);
    for (size_t t = 0; t < nt; t++)
        pthread_join(th[t], NULL);
    return atomic_load(&failed) || B.stop ? -1 : 0;
}

/* Calls the API, retrying what a loaded server may answer for a moment
 * (503, 504, 429, connection errors).  Returns the status or -errno. */
static int call(bm_rest_t *r, const char *method, const char *path, const char *token,
                const char *body, char *out, size_t cap)
{
    int st = 0;

    for (int a = 0; a < RETRIES; a++) {
        st = bm_rest_call(r, method, path, token, body, out, cap, REST_MS);
        if (st >= 0 && st != 503 && st != 504 && st != 429)
            return st;
        struct timespec ts = {0, (long)(100000000L << a)};
        nanosleep(&ts, NULL);
    }
    return st;
}

/* The string member key of the JSON object in body (nested via a
 * "parent" object if not NULL) as a uint64. */
static int json_id(const char *body, const char *parent, const char *key, uint64_t *out)
{
    im_json_tok_t tok[64];
    im_json_t doc;
    char buf[32], *end;
    int obj = 0;

    if (im_json_parse(&doc, body, strlen(body), tok, 64, 0) != IM_OK)
        return -1;
    if (parent != NULL)
        obj = im_json_find(&doc, 0, parent);
    if (im_json_str(&doc, im_json_find(&doc, obj, key), buf, sizeof(buf), NULL) != IM_OK)
        return -1;
    *out = strtoull(buf, &end, 10);
    return *end == '\0' && *out != 0 ? 0 : -1;
}

static int job_register(bm_rest_t *r, size_t i, char *msg, size_t cap)
{
    char body[256], resp[1024];
    bm_client_t *c = &B.clients[i];
    int st;

    if (c->user != 0)
        return 0; /* from the users file */
    snprintf(body, sizeof(body), "{\"username\":\"%s\",\"password\":\"%s\"}", names[i].name,
             PASSWORD);
    st = call(r, "POST", "/api/v1/register", NULL, body, resp, sizeof(resp));
    if (st != 201 || json_id(resp, NULL, "user_id", &c->user) != 0) {
        snprintf(msg, cap, "register %s: HTTP %d %s", names[i].name, st, resp);
        return -1;
    }
    return 0;
}

static int job_login(bm_rest_t *r, size_t i, char *msg, size_t cap)
{
    char body[256], resp[2048];
    im_json_tok_t tok[32];
    im_json_t doc;
    size_t len = 0;
    int st;

    snprintf(body, sizeof(body), "{\"username\":\"%s\",\"password\":\"%s\"}", names[i].name,
             PASSWORD);
    st = call(r, "POST", "/api/v1/login", NULL, body, resp, sizeof(resp));
    if (st != 200 || json_id(resp, NULL, "user_id", &B.clients[i].user) != 0 ||
        im_json_parse(&doc, resp, strlen(resp), tok, 32, 0) != IM_OK ||
        im_json_str(&doc, im_json_find(&doc, 0, "token"), NULL, 0, &len) != IM_ERANGE) {
        snprintf(msg, cap, "login %s: HTTP %d %s", names[i].name, st, resp);
        return -1;
    }
    tokens[i] = im_malloc(len + 1);
    im_json_str(&doc, im_json_find(&doc, 0, "token"), tokens[i], len + 1, NULL);
    return 0;
}

static int job_create_group(bm_rest_t *r, size_t k, char *msg, size_t cap)
{
    char body[128], resp[1024], tok[IM_JWT_MAX_LEN + 1];
    size_t owner = k * (size_t)B.cfg.group_size;
    int st;

    snprintf(body, sizeof(body), "{\"name\":\"bm%s_g%zu\"}", B.run_tag, k);
    st = call(r, "POST", "/api/v1/groups", bm__token(owner, tok, sizeof(tok)), body, resp,
              sizeof(resp));
    if (st != 201 || json_id(resp, "group", "id", &B.group_ids[k]) != 0) {
        snprintf(msg, cap, "create group %zu: HTTP %d %s", k, st, resp);
        return -1;
    }
    return 0;
}

static int job_join(bm_rest_t *r, size_t i, char *msg, size_t cap)
{
    char path[96], resp[1024], tok[IM_JWT_MAX_LEN + 1];
    size_t k = i / (size_t)B.cfg.group_size;
    int st;

    if (i % (size_t)B.cfg.group_size == 0)
        return 0; /* the owner is a member already */
    snprintf(path, sizeof(path), "/api/v1/groups/%" PRIu64 "/join", B.group_ids[k]);
    st = call(r, "POST", path, bm__token(i, tok, sizeof(tok)), "{}", resp, sizeof(resp));
    if (st != 200) {
        snprintf(msg, cap, "join group %" PRIu64 " as client %zu: HTTP %d %s", B.group_ids[k], i,
                 st, resp);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ secret, users file */

static int load_secret(void)
{
    static char buf[512];
    const char *s = B.cfg.jwt_secret;
    char path[300];
    FILE *f;

    if (s != NULL && *s) {
        snprintf(B.secret_from, sizeof(B.secret_from), "--jwt-secret");
    } else if ((s = getenv("IM_JWT_SECRET")) != NULL && *s) {
        snprintf(B.secret_from, sizeof(B.secret_from), "IM_JWT_SECRET");
    } else {
        snprintf(path, sizeof(path), "%s/jwt-secret", B.cfg.state_dir);
        if ((f = fopen(path, "r")) == NULL)
            return -1;
        s = fgets(buf, sizeof(buf), f);
        fclose(f);
        if (s == NULL)
            return -1;
        buf[strcspn(buf, "\r\n")] = '\0';
        snprintf(B.secret_from, sizeof(B.secret_from), "%s", path);
    }
    B.secret = s;
    return *s ? 0 : -1;
}

/* Takes users from the file for the first clients; returns how many. */
static size_t read_users_file(void)
{
    FILE *f = fopen(B.cfg.users_file, "r");
    char line[128];
    size_t n = 0;

    if (f == NULL)
        return 0;
    while (n < B.n && fgets(line, sizeof(line), f)) {
        unsigned long long id;
        char name[40];
        if (sscanf(line, "%llu %39s", &id, name) != 2 || id == 0)
            continue;
        B.clients[n].user = id;
        snprintf(names[n].name, sizeof(names[n].name), "%s", name);
        n++;
    }
    fclose(f);
    return n;
}

static void append_users_file(size_t from)
{
    FILE *f = fopen(B.cfg.users_file, "a");

    if (f == NULL) {
        fprintf(stderr, "benchmark: cannot write %s: %s\n", B.cfg.users_file, strerror(errno));
        return;
    }
    for (size_t i = from; i < B.n; i++)
        fprintf(f, "%" PRIu64 " %s\n", B.clients[i].user, names[i].name);
    fclose(f);
}

/* ------------------------------------------------------------ tokens */

const char *bm__token(size_t i, char *buf, size_t cap)
{
    im_jwt_claims_t cl;
    int64_t now = (int64_t)(im_wall_ms() / 1000);

    if (tokens != NULL && tokens[i] != NULL) {
        snprintf(buf, cap, "%s", tokens[i]);
        return buf;
    }
    memset(&cl, 0, sizeof(cl));
    cl.sub = B.clients[i].user;
    cl.iat = now - 5; /* a little clock skew towards the gateway is fine */
    cl.exp = now + 86400;
    if (im_jwt_sign(B.secret, strlen(B.secret), &cl, buf, cap) != IM_OK)
        return NULL;
    return buf;
}

/* ------------------------------------------------------------ the set-up */

static int setup(void);

int bm__setup(void)
{
    int rc = setup();

    im_free(names);
    names = NULL;
    return rc;
}

static int setup(void)
{
    const char *how = B.cfg.auth;
    bool need_users = B.mode == BM_DIRECT || B.mode == BM_DB;
    size_t from_file = 0, n = B.n, off = 0;
    char *d = B.auth_desc;
    size_t dcap = sizeof(B.auth_desc);
    uint64_t t0 = im_mono_ms();

    int have_secret = load_secret() == 0;
    if (strcmp(how, "auto") == 0)
        how = have_secret ? "mint" : "rest";
    if (strcmp(how, "mint") == 0 && !have_secret) {
        fprintf(stderr,
                "benchmark: --auth mint needs the gateways' secret: --jwt-secret, IM_JWT_SECRET "
                "or %s/jwt-secret\n",
                B.cfg.state_dir);
        return -1;
    }
    if (strcmp(how, "mint") != 0 && strcmp(how, "rest") != 0) {
        fprintf(stderr, "benchmark: --auth must be auto, rest or mint\n");
        return -1;
    }
    B.minted = strcmp(how, "mint") == 0;
    names = im_calloc(n, sizeof(*names));
    for (size_t i = 0; i < n; i++)
        snprintf(names[i].name, sizeof(names[i].name), "bm%s_%zu", B.run_tag, i);

    if (B.minted && !need_users) {
        uint64_t base = FAKE_ID_BIT | (uint64_t)strtoull(B.run_tag, NULL, 16) << 24;
        for (size_t i = 0; i < n; i++)
            B.clients[i].user = base + i + 1;
        off += (size_t)snprintf(d + off, dcap - off,
                                "%zu fake user ids %" PRIu64 "..%" PRIu64
                                " (never registered: this mode does not need them to exist); "
                                "tokens minted (HS256) with the secret from %s, no login",
                                n, base + 1, base + n, B.secret_from);
    } else {
        if (B.cfg.users_file && *B.cfg.users_file)
            from_file = read_users_file();
        if (from_file < n && B.cfg.progress)
            fprintf(stderr, "benchmark: registering %zu users via REST...\n", n - from_file);
        if (run_jobs(n, job_register) != 0)
            return -1;
        if (B.cfg.users_file && *B.cfg.users_file && from_file < n)
            append_users_file(from_file);
        off += (size_t)snprintf(d + off, dcap - off, "%zu users ", n);
        if (from_file)
            off += (size_t)snprintf(d + off, dcap - off,
                                    "(%zu from %s, registered by an earlier run; %zu now) ",
                                    from_file, B.cfg.users_file, n - from_file);
        off += (size_t)snprintf(d + off, dcap - off, "registered via REST (POST /api/v1/register)");
        if (B.minted) {
            off += (size_t)snprintf(d + off, dcap - off,
                                    "; tokens minted (HS256) with the secret from %s, no login",
                                    B.secret_from);
        } else {
            tokens = im_calloc(n, sizeof(*tokens));
            B.tokens = tokens;
            if (B.cfg.progress)
                fprintf(stderr, "benchmark: logging %zu users in via REST...\n", n);
            if (run_jobs(n, job_login) != 0)
                return -1;
            off += (size_t)snprintf(d + off, dcap - off,
                                    " and logged in via REST (POST /api/v1/login)");
        }
    }
    if (B.mode == BM_GROUP) {
        if (run_jobs(B.ngroups, job_create_group) != 0 || run_jobs(n, job_join) != 0)
            return -1;
        off += (size_t)snprintf(d + off, dcap - off,
                                "; %zu group(s) of up to %" PRId64
                                " members created and joined via REST (POST /api/v1/groups, "
                                "/groups/{id}/join)",
                                B.ngroups, B.cfg.group_size);
    }
    B.setup_ms = im_mono_ms() - t0;
    return 0;
}
