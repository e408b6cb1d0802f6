/*
 * 15-publish-outcome: a Send whose publish may or may not have reached the
 * queue (the broker connection is lost before its confirm) is answered
 * broker_unavailable, and the client's retry with the same client_msg_id is
 * acked with the id that is stored: logic publishes that same message again
 * (same id, seq and time) rather than a new one that the writer would drop.
 *
 * The real logic binary talks to the real RabbitMQ through a TCP proxy in
 * this test.  Armed, the proxy cuts every connection on which the broker
 * sends anything: the publish goes through, the broker queues it and
 * confirms, and the confirm never reaches logic.  Whether the message did
 * reach the queue is then read from MariaDB (the writer stores it once it
 * reconnects), so the test knows it exercised the unknown outcome.
 *
 * Also: the "sending" records themselves (a lease that ran out is taken over
 * by the retry, a running one answers in_progress, another conversation under
 * the same client_msg_id is refused).
 *
 * Usage (ctest passes it): test_15_publish_outcome <logic binary>
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "im.pb-c.h"
#include "im_mysql.h"
#include "im_redis.h"
#include "im_test.h"
#include "im_time.h"
#include "it_chat.h"
#include "it_env.h"
#include "it_logic.h"
#include "it_servers.h"

#define PAIRS_MAX 32

static it_logic_t lg = {.tag = "it15"};
static im_mysql_t *db;
static im_redis_t *redis;


/* ------------------------------------------------------------ the proxy */

/* Relays loopback TCP connections to the broker.  While `cut` is set, a
 * connection on which the broker sends anything is closed, both ways,
 * without passing those bytes on. */
typedef struct {
    int lfd;
    unsigned port, up_port;
    atomic_int cut, stop;
    atomic_uint cuts;
    pthread_t thread;
    int fds[PAIRS_MAX][2]; /* [client, broker], -1 when free */
} proxy_t;

static proxy_t px;

static void pair_close(int *pair)
{
    close(pair[0]);
    close(pair[1]);
    pair[0] = pair[1] = -1;
}

static bool send_all(int fd, const char *p, ssize_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, (size_t)n, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= w;
    }
    return true;
}

static int connect_broker(unsigned port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static void proxy_accept(proxy_t *p)
{
    int c = accept(p->lfd, NULL, NULL), u;

    if (c < 0)
        return;
    if ((u = connect_broker(p->up_port)) < 0) {
        close(c);
        return;
    }
    for (int i = 0; i < PAIRS_MAX; i++)
        if (p->fds[i][0] < 0) {
            p->fds[i][0] = c;
            p->fds[i][1] = u;
            return;
        }
    close(c);
    close(u);
}

static void *proxy_main(void *arg)
{
    proxy_t *p = arg;
    char buf[16384];

    while (!atomic_load(&p->stop)) {
        struct pollfd pfd[1 + 2 * PAIRS_MAX];
        int who[1 + 2 * PAIRS_MAX], n = 1;

        pfd[0] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
        for (int i = 0; i < PAIRS_MAX; i++)
            for (int side = 0; side < 2 && p->fds[i][0] >= 0; side++) {
                pfd[n] = (struct pollfd){.fd = p->fds[i][side], .events = POLLIN};
                who[n++] = i * 2 + side;
            }
        if (poll(pfd, (nfds_t)n, 50) <= 0)
            continue;
        if (pfd[0].revents & POLLIN)
            proxy_accept(p);
        for (int k = 1; k < n; k++) {
            int *pair = p->fds[who[k] / 2], side = who[k] % 2;
            ssize_t got;

            if (pfd[k].revents == 0 || pair[0] < 0)
                continue;
            got = recv(pair[side], buf, sizeof(buf), 0);
            if (got <= 0) {
                pair_close(pair);
            } else if (side == 1 && atomic_load(&p->cut)) {
                atomic_fetch_add(&p->cuts, 1);
                pair_close(pair);
            } else if (!send_all(pair[1 - side], buf, got)) {
                pair_close(pair);
            }
        }
    }
    for (int i = 0; i < PAIRS_MAX; i++)
        if (p->fds[i][0] >= 0)
            pair_close(p->fds[i]);
    return NULL;
}

static bool proxy_start(proxy_t *p, unsigned up_port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int one = 1;

    memset(p->fds, -1, sizeof(p->fds));
    p->up_port = up_port;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    p->lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (p->lfd < 0)
        return false;
    setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(p->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(p->lfd, 16) != 0 ||
        getsockname(p->lfd, (struct sockaddr *)&sa, &len) != 0)
        return false;
    p->port = ntohs(sa.sin_port);
    return pthread_create(&p->thread, NULL, proxy_main, p) == 0;
}

static void proxy_stop(proxy_t *p)
{
    atomic_store(&p->stop, 1);
    pthread_join(p->thread, NULL);
    close(p->lfd);
}

/* ------------------------------------------------------------ helpers */

/* The stored row of (sender, cid), waiting up to wait_ms: its id and seq, and
 * how many rows have that pair (0 when none came). */
static uint64_t stored(uint64_t sender, const char *cid, unsigned wait_ms, uint64_t *id,
                       uint64_t *seq)
{
    uint64_t t0 = im_mono_ms(), n = 0;
    char sql[256];

    snprintf(sql, sizeof(sql),
             "SELECT id, seq FROM messages WHERE sender_id = %" PRIu64 " AND client_msg_id = '%s'",
             sender, cid);
    do {
        im_mysql_stmt_t *st = NULL;

        ASSERT_EQ(im_mysql_prepare(db, sql, &st), IM_OK);
        ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
        n = 0;
        while (im_mysql_stmt_next(st) == IM_OK) {
            *id = im_mysql_col_u64(st, 0);
            *seq = im_mysql_col_u64(st, 1);
            n++;
        }
        im_mysql_stmt_free(st);
        if (n > 0)
            break;
        it_sleep_ms(50);
    } while (im_mono_ms() - t0 < wait_ms);
    return n;
}

/* The dedup key's value (malloc'd), or NULL when there is none. */
static char *dedup_value(uint64_t sender, const char *cid)
{
    im_redis_reply_t *rep = NULL;
    const char *v;
    char *out = NULL;

    ASSERT_EQ(im_redis_command(redis, &rep, "GET im:dedup:%" PRIu64 ":%s", sender, cid), IM_OK);
    if ((v = im_redis_reply_str(rep, NULL)) != NULL)
        out = strdup(v);
    im_redis_reply_free(rep);
    return out;
}

/* Sets the dedup key of (sender, cid) to "sending <id> <conv> <seq> <ts> <lease>". */
static void set_sending(uint64_t sender, const char *cid, uint64_t id, const char *conv,
                        uint64_t seq, int64_t ts, uint64_t lease)
{
    char v[192];

    snprintf(v, sizeof(v), "sending %" PRIu64 " %s %" PRIu64 " %" PRId64 " %" PRIu64, id, conv,
             seq, ts, lease);
    ASSERT_EQ(im_redis_command(redis, NULL, "SET im:dedup:%" PRIu64 ":%s %s PX 60000", sender,
                               cid, v),
              IM_OK);
}

/* Retries a send until it is not refused for the broker (the publisher
 * reconnects with a backoff), for up to 20 s. */
static im_rpc_code_t send_until_up(uint64_t from, uint64_t to, const char *cid,
                                   Im__V1__SendResponse **out, char *msg, size_t msglen)
{
    uint64_t t0 = im_mono_ms();
    im_rpc_code_t code;

    while ((code = it_send(&lg, from, to, 0, cid, cid, out, msg, msglen)) == IM_RPC_UNAVAILABLE &&
           im_mono_ms() - t0 < 20000)
        it_sleep_ms(200);
    return code;
}

/* ------------------------------------------------------------ tests */

TEST(lost_confirm_then_retry_acks_the_stored_id)
{
    uint64_t a = it_new_user(&lg, "uo"), b = it_new_user(&lg, "uo");
    uint64_t id = 0, seq = 0, id2 = 0, seq2 = 0;
    Im__V1__SendResponse *r = NULL;
    /* The window closed (a Redis that kept its data): only the dedup records
     * can tell a retry from a new message, which is the case under test. */
    char *window = it_dedup_window_set(redis, 0), *v, cid[32], msg[256];
    bool reached = false;

    for (int attempt = 0; attempt < 3 && !reached; attempt++) {
        im_rpc_code_t code;

        /* The publisher is connected and its confirms are on. */
        snprintf(cid, sizeof(cid), "warm-%d", attempt);
        ASSERT_EQ(send_until_up(a, b, cid, NULL, msg, sizeof(msg)), IM_RPC_OK);
        snprintf(cid, sizeof(cid), "lost-%d", attempt);
        atomic_store(&px.cuts, 0);
        atomic_store(&px.cut, 1);
        code = it_send(&lg, a, b, 0, cid, cid, NULL, msg, sizeof(msg));
        atomic_store(&px.cut, 0);
        ASSERT_EQ(code, IM_RPC_UNAVAILABLE);
        ASSERT_TRUE(it_starts_with(msg, "broker_unavailable"));
        ASSERT_GT(atomic_load(&px.cuts), 0);
        /* The key now says which message was tried, with its lease over. */
        v = dedup_value(a, cid);
        ASSERT_NOT_NULL(v);
        ASSERT_TRUE(it_starts_with(v, "sending "));
        ASSERT_TRUE(strlen(v) > 2 && strcmp(v + strlen(v) - 2, " 0") == 0);
        free(v);
        /* Did the publish reach the queue (the cut came with its confirm, not
         * with a heartbeat before it)?  Then the writer stores it. */
        reached = stored(a, cid, 15000, &id, &seq) == 1;
        if (!reached)
            printf("     attempt %d: the publish did not reach the queue; again\n", attempt);
    }
    ASSERT_TRUE(reached);
    /* The retry: acked with the stored id and seq; still one row. */
    ASSERT_EQ(send_until_up(a, b, cid, &r, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_U64_EQ(r->id, id);
    ASSERT_U64_EQ(r->seq, seq);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    it_sleep_ms(300); /* the re-published copy reaches the writer */
    ASSERT_EQ(stored(a, cid, 0, &id2, &seq2), 1);
    ASSERT_U64_EQ(id2, id);
    /* And now a plain duplicate. */
    ASSERT_EQ(it_send(&lg, a, b, 0, cid, cid, &r, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_U64_EQ(r->id, id);
    ASSERT_TRUE(r->duplicate);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    it_dedup_window_restore(redis, window);
}

TEST(sending_records_lease_takeover_and_reuse)
{
    uint64_t a = it_new_user(&lg, "uo"), b = it_new_user(&lg, "uo"), c = it_new_user(&lg, "uo");
    uint64_t id = (1ull << 62) + (uint64_t)getpid() * 1000 + it_serial(), sid, sseq;
    int64_t ts = (int64_t)im_wall_ms() - 5000;
    Im__V1__SendResponse *r = NULL;
    char conv[48], msg[256], *window = it_dedup_window_set(redis, 0), *v;

    it_direct_conv(conv, sizeof(conv), a, b);
    /* A try whose lease still runs (its instance may still get the confirm). */
    set_sending(a, "held", id, conv, 41, ts, im_wall_ms() + 60000);
    ASSERT_EQ(it_send(&lg, a, b, 0, "held", "held", NULL, msg, sizeof(msg)), IM_RPC_ABORTED);
    ASSERT_TRUE(it_starts_with(msg, "in_progress"));
    /* The same client_msg_id to another peer: refused, the record kept. */
    set_sending(a, "gone", id, conv, 42, ts, 0);
    ASSERT_EQ(it_send(&lg, a, c, 0, "gone", "gone", NULL, msg, sizeof(msg)),
              IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(it_starts_with(msg, "client_msg_id_reused"));
    /* A lease that ran out (a crash, or the refusal just above took it):
     * the retry publishes exactly that message once its lease ends again. */
    set_sending(a, "gone", id, conv, 42, ts, 0);
    ASSERT_EQ(it_send(&lg, a, b, 0, "gone", "gone", &r, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_U64_EQ(r->id, id);
    ASSERT_U64_EQ(r->seq, 42);
    ASSERT_EQ(r->created_at_ms, ts);
    ASSERT_STR_EQ(r->conv, conv);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    ASSERT_EQ(stored(a, "gone", 5000, &sid, &sseq), 1);
    ASSERT_U64_EQ(sid, id);
    ASSERT_U64_EQ(sseq, 42);
    v = dedup_value(a, "gone");
    ASSERT_NOT_NULL(v);
    ASSERT_TRUE(!it_starts_with(v, "sending"));
    free(v);
    /* A plain send writes "sending" before it publishes and the record
     * after: nothing of the first is left once it is acked.  The record
     * lives --dedup-ttl (1h here, not the default day). */
    ASSERT_EQ(it_send(&lg, a, b, 0, "plain", "plain", &r, msg, sizeof(msg)), IM_RPC_OK);
    v = dedup_value(a, "plain");
    ASSERT_NOT_NULL(v);
    ASSERT_TRUE(it_starts_with(v, "sending") == false);
    ASSERT_TRUE(r->id > 0 && strstr(v, conv) != NULL);
    free(v);
    {
        im_redis_reply_t *rep = NULL;
        long long ttl;

        ASSERT_EQ(im_redis_command(redis, &rep, "PTTL im:dedup:%" PRIu64 ":plain", a), IM_OK);
        ttl = im_redis_reply_int(rep);
        im_redis_reply_free(rep);
        if (ttl <= 3500 * 1000 || ttl > 3600 * 1000)
            IM__FAIL("the record's TTL is %lld ms, want about an hour", ttl);
    }
    protobuf_c_message_free_unpacked(&r->base, NULL);
    it_dedup_window_restore(redis, window);
}

static void cleanup(void)
{
    it_logic_kill(&lg);
}

int main(int argc, char **argv)
{
    char port[16];
    const char *extra[] = {"--dedup-ttl", "1h", "--amqp-host", "127.0.0.1", "--amqp-port", port,
                           "--writer-delay", "5ms", NULL};

    if (argc < 2) {
        fprintf(stderr, "usage: %s <logic binary>\n", argv[0]);
        return 2;
    }
    lg.bin = argv[1];
    if (it_env_load() != IM_OK)
        return 1;
    if (!proxy_start(&px, it_env_port("IM_AMQP_PORT"))) {
        fprintf(stderr, "cannot start the proxy\n");
        return 1;
    }
    snprintf(port, sizeof(port), "%u", px.port);
    atexit(cleanup);
    db = it_mysql_connect("it15");
    redis = it_redis_connect("it15");
    if (db == NULL || redis == NULL)
        return 1;
    if (!it_logic_start(&lg, extra))
        return 1;
    RUN(lost_confirm_then_retry_acks_the_stored_id);
    RUN(sending_records_lease_takeover_and_reuse);
    if (!it_logic_stop_checked(&lg))
        return 1;
    proxy_stop(&px);
    im_mysql_close(db);
    im_redis_close(redis);
    return it_test_done_log(&lg);
}
