/*
 * 07-logic-faults: the logic process's writer under faults, on real servers.
 *   - kill -9 of the logic process while batches are in flight, then restart;
 *   - MariaDB stopped for a while under load, then started again.
 * Every message the broker confirmed (the moment a sender gets its ack) must
 * end up in MySQL exactly once, and a graceful stop afterwards must leave
 * nothing unacked.
 *
 * Usage (ctest passes them): test_07_logic_faults <logic binary> <infra.sh>
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "im.pb-c.h"
#include "im_amqp.h"
#include "im_id.h"
#include "im_mysql.h"
#include "im_test.h"
#include "im_time.h"
#include "it_env.h"
#include "it_servers.h"

#define TOTAL 20000

static const char *logic_bin, *infra_sh;
static char queue[96], conv[48];
static pid_t logic_pid;

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static pid_t start_logic(void)
{
    pid_t pid = fork();

    if (pid == 0) {
        setenv("IM_QUEUE", queue, 1);
        setenv("IM_WRITER_BATCH", "200", 1);
        setenv("IM_WRITER_PREFETCH", "400", 1);
        setenv("IM_LOG_LEVEL", "warn", 1);
        execl(logic_bin, logic_bin, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Rows of our conversation, and how many distinct seqs they have. */
static void count_rows(im_mysql_stmt_t *st, uint64_t *rows, uint64_t *distinct)
{
    ASSERT_EQ(im_mysql_stmt_exec(st), IM_OK);
    ASSERT_EQ(im_mysql_stmt_next(st), IM_OK);
    *rows = im_mysql_col_u64(st, 0);
    *distinct = im_mysql_col_u64(st, 1);
}

/* Publishes messages first..last of the conversation persistently, waiting
 * for every confirm: after this returns, all of them count as acked. */
static void publish(im_amqp_publisher_t *pub, im_idgen_t *ids, uint64_t first, uint64_t last)
{
    uint8_t buf[256];

    for (uint64_t seq = first; seq <= last; seq++) {
        Im__V1__ChatMessage m = IM__V1__CHAT_MESSAGE__INIT, *mp = &m;
        Im__V1__ChatBatch b = IM__V1__CHAT_BATCH__INIT;
        char cid[64];
        size_t len;
        im_err_t rc;

        snprintf(cid, sizeof(cid), "%s-%llu", conv, (unsigned long long)seq);
        m.id = im_id_next(ids);
        m.conv = conv;
        m.seq = seq;
        m.sender = 700000 + (uint64_t)getpid();
        m.to_user = 1;
        m.client_msg_id = cid;
        m.body = "kill -9 me";
        m.created_at_ms = (int64_t)im_wall_ms();
        b.n_messages = 1;
        b.messages = &mp;
        len = im__v1__chat_batch__pack(&b, buf);
        while ((rc = im_amqp_publish(pub, "", queue, buf, len, true, NULL)) == IM_EAGAIN)
            im_amqp_publisher_poll(pub, 100);
        ASSERT_EQ(rc, IM_OK);
    }
    while (im_amqp_publisher_outstanding(pub) > 0)
        ASSERT_NE(im_amqp_publisher_poll(pub, 1000), IM_ECLOSED);
}

TEST(kill9_mid_batch_then_restart_stores_each_message_once)
{
    im_amqp_conn_t *amqp = it_amqp_connect("it07");
    im_amqp_publisher_t *pub = im_amqp_publisher_new(amqp, 256, NULL, NULL);
    im_amqp_queue_opts_t q = {.name = queue, .durable = true};
    im_mysql_t *db = it_mysql_connect("it07");
    im_mysql_stmt_t *st;
    im_idgen_t ids;
    uint64_t rows = 0, distinct = 0, t0;
    uint32_t ready = 1;
    int status;

    ASSERT_EQ(im_idgen_init(&ids, 1000, 0, NULL), IM_OK);
    ASSERT_EQ(im_amqp_declare_queue(amqp, &q, NULL, 0, NULL), IM_OK);
    ASSERT_EQ(im_mysql_prepare(db,
                               "SELECT COUNT(*), COUNT(DISTINCT seq) FROM messages WHERE conv_id = ?",
                               &st),
              IM_OK);
    im_mysql_bind_str(st, 0, conv, strlen(conv));

    /* A backlog first, so the writer is certainly mid-drain when it dies:
     * batches committed, batches in flight, deliveries prefetched. */
    publish(pub, &ids, 1, TOTAL / 2);
    logic_pid = start_logic();
    ASSERT_GT(logic_pid, 0);
    t0 = im_mono_ms();
    do {
        sleep_ms(1);
        count_rows(st, &rows, &distinct);
    } while (rows < 400 && im_mono_ms() - t0 < 30000);
    ASSERT_GE(rows, 400);
    ASSERT_EQ(kill(logic_pid, SIGKILL), 0);
    ASSERT_EQ(waitpid(logic_pid, &status, 0), logic_pid);
    logic_pid = 0;
    ASSERT_TRUE(WIFSIGNALED(status));
    count_rows(st, &rows, &distinct);
    printf("killed with %llu of %d rows stored\n", (unsigned long long)rows, TOTAL / 2);
    ASSERT_LT(rows, TOTAL / 2); /* really mid-drain, or this test proves nothing */

    /* Senders keep getting acks while no logic runs: the broker holds them. */
    publish(pub, &ids, TOTAL / 2 + 1, TOTAL);

    logic_pid = start_logic();
    t0 = im_mono_ms();
    do {
        sleep_ms(20);
        count_rows(st, &rows, &distinct);
    } while (rows < TOTAL && im_mono_ms() - t0 < 60000);
    ASSERT_EQ(rows, TOTAL);
    ASSERT_EQ(distinct, TOTAL);

    /* Graceful stop: exit 0 and nothing left in the queue. */
    ASSERT_EQ(kill(logic_pid, SIGTERM), 0);
    ASSERT_EQ(waitpid(logic_pid, &status, 0), logic_pid);
    logic_pid = 0;
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
    q.passive = true;
    ASSERT_EQ(im_amqp_declare_queue(amqp, &q, NULL, 0, &ready), IM_OK);
    ASSERT_EQ(ready, 0);
    count_rows(st, &rows, &distinct);
    ASSERT_EQ(rows, TOTAL); /* still exactly once after everything settled */

    im_amqp_delete_queue(amqp, queue, NULL);
    im_amqp_publisher_free(pub);
    im_amqp_close(amqp);
    im_mysql_stmt_free(st);
    im_mysql_close(db);
}

/* Runs `infra.sh <args>` for our state dir (inherited IM_STATE_DIR). */
static void infra(const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "%s %s >/dev/null 2>&1", infra_sh, args);
    ASSERT_EQ(system(cmd), 0);
}

TEST(mysql_down_under_load_no_loss_backlog_drains)
{
    im_amqp_conn_t *amqp = it_amqp_connect("it07");
    im_amqp_publisher_t *pub = im_amqp_publisher_new(amqp, 256, NULL, NULL);
    im_amqp_queue_opts_t q = {.name = queue, .durable = true};
    im_mysql_t *db = it_mysql_connect("it07");
    im_mysql_stmt_t *st;
    im_idgen_t ids;
    uint64_t rows = 0, distinct = 0, t0, seq = 0;
    uint32_t ready = 1;
    int status;

    ASSERT_EQ(im_idgen_init(&ids, 1001, 0, NULL), IM_OK);
    ASSERT_EQ(im_amqp_declare_queue(amqp, &q, NULL, 0, NULL), IM_OK);
    logic_pid = start_logic();
    ASSERT_GT(logic_pid, 0);
    publish(pub, &ids, 1, 1000);
    seq = 1000;

    /* The database goes away.  Senders keep getting acks (the broker holds the
     * messages); the writer must not ack anything it could not commit. */
    im_mysql_close(db);
    infra("stop mariadb");
    t0 = im_mono_ms();
    while (im_mono_ms() - t0 < 3000) {
        publish(pub, &ids, seq + 1, seq + 200);
        seq += 200;
        sleep_ms(50);
    }
    infra("up");
    ASSERT_EQ(it_env_load(), IM_OK);
    db = it_mysql_connect("it07");
    ASSERT_EQ(im_mysql_prepare(db,
                               "SELECT COUNT(*), COUNT(DISTINCT seq) FROM messages WHERE conv_id = ?",
                               &st),
              IM_OK);
    im_mysql_bind_str(st, 0, conv, strlen(conv));
    publish(pub, &ids, seq + 1, seq + 1000);
    seq += 1000;

    t0 = im_mono_ms();
    do {
        sleep_ms(50);
        count_rows(st, &rows, &distinct);
    } while (rows < seq && im_mono_ms() - t0 < 60000);
    printf("%llu messages sent across the outage, %llu stored\n", (unsigned long long)seq,
           (unsigned long long)rows);
    ASSERT_EQ(rows, seq);
    ASSERT_EQ(distinct, seq);

    ASSERT_EQ(kill(logic_pid, SIGTERM), 0);
    ASSERT_EQ(waitpid(logic_pid, &status, 0), logic_pid);
    logic_pid = 0;
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    q.passive = true;
    ASSERT_EQ(im_amqp_declare_queue(amqp, &q, NULL, 0, &ready), IM_OK);
    ASSERT_EQ(ready, 0);

    im_amqp_delete_queue(amqp, queue, NULL);
    im_amqp_publisher_free(pub);
    im_amqp_close(amqp);
    im_mysql_stmt_free(st);
    im_mysql_close(db);
}

/* A fresh queue and conversation for each test. */
static void new_names(void)
{
    static int n;
    n++;
    snprintf(queue, sizeof(queue), "it07.%d.%d.%llu", (int)getpid(), n,
             (unsigned long long)(im_wall_ms() % 100000000u));
    snprintf(conv, sizeof(conv), "d:%d%d:%llu", (int)getpid(), n,
             (unsigned long long)(im_wall_ms() % 100000000u));
}

int main(int argc, char **argv)
{
    int rc;

    if (argc < 3) {
        fprintf(stderr, "usage: %s <logic binary> <infra.sh>\n", argv[0]);
        return 2;
    }
    logic_bin = argv[1];
    infra_sh = argv[2];
    if (it_env_load() != IM_OK)
        return 1;
    new_names();
    RUN(kill9_mid_batch_then_restart_stores_each_message_once);
    if (logic_pid > 0) {
        kill(logic_pid, SIGKILL);
        waitpid(logic_pid, NULL, 0);
        logic_pid = 0;
    }
    new_names();
    RUN(mysql_down_under_load_no_loss_backlog_drains);
    rc = im_test_done();
    if (logic_pid > 0) { /* a failed assertion left it running */
        kill(logic_pid, SIGKILL);
        waitpid(logic_pid, NULL, 0);
    }
    return rc;
}
