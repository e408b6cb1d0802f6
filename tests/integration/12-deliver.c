/*
 * 12-deliver: the gateway's delivery consumer (gateway/gw_deliver.h) on a real
 * RabbitMQ: its own routing key, refcounted group bindings, and recovery after
 * the broker is stopped and started again (infra.sh stop rabbitmq / up).
 *
 * Usage (ctest passes it): test_12_deliver <infra.sh>
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gw_deliver.h"
#include "im.pb-c.h"
#include "im_amqp.h"
#include "im_test.h"
#include "im_time.h"
#include "it_env.h"
#include "it_servers.h"

static const char *infra_sh;
static gw_deliver_t *dl;
static char gateway_id[48];
static atomic_int ups, downs;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t got[64];
static size_t n_got;

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void on_delivery(void *arg, Im__V1__Delivery *d)
{
    (void)arg;
    pthread_mutex_lock(&lock);
    if (n_got < 64 && d->message != NULL)
        got[n_got++] = d->message->id;
    pthread_mutex_unlock(&lock);
    protobuf_c_message_free_unpacked(&d->base, NULL);
}

static void on_state(void *arg, bool up)
{
    (void)arg;
    atomic_fetch_add(up ? &ups : &downs, 1);
}

/* Publishes a Delivery of message `id` with routing key rkey. */
static void publish(const char *rkey, uint64_t id)
{
    im_amqp_conn_t *c = it_amqp_connect("it12-pub");
    im_amqp_publisher_t *pub;
    Im__V1__ChatMessage m = IM__V1__CHAT_MESSAGE__INIT;
    Im__V1__Delivery d = IM__V1__DELIVERY__INIT;
    uint8_t buf[128];
    size_t len;

    ASSERT_TRUE(c != NULL);
    pub = im_amqp_publisher_new(c, 1, NULL, NULL);
    m.id = id;
    m.conv = "g:1";
    m.body = "x";
    d.message = &m;
    len = im__v1__delivery__pack(&d, buf);
    ASSERT_EQ(im_amqp_publish_sync(pub, GW_DELIVER_EXCHANGE, rkey, buf, len, false, 5000), IM_OK);
    im_amqp_publisher_free(pub);
    im_amqp_close(c);
}

/* Waits up to 3 s for message id; true if it came. */
static bool received(uint64_t id)
{
    for (int i = 0; i < 300; i++) {
        pthread_mutex_lock(&lock);
        for (size_t j = 0; j < n_got; j++) {
            if (got[j] == id) {
                pthread_mutex_unlock(&lock);
                return true;
            }
        }
        pthread_mutex_unlock(&lock);
        sleep_ms(10);
    }
    return false;
}

static void wait_groups(uint64_t want)
{
    gw_deliver_stats_t st;

    for (int i = 0; i < 300; i++) {
        gw_deliver_stats(dl, &st);
        if (st.groups == want)
            return;
        sleep_ms(10);
    }
    ASSERT_U64_EQ(st.groups, want);
}

TEST(own_key_and_refcounted_group_bindings)
{
    char own[80];

    snprintf(own, sizeof(own), "gw.%s", gateway_id);
    publish(own, 1001);
    ASSERT_TRUE(received(1001));
    gw_deliver_bind_group(dl, 77);
    gw_deliver_bind_group(dl, 77);
    gw_deliver_unbind_group(dl, 77);
    wait_groups(1);
    publish("g.77", 1002);
    ASSERT_TRUE(received(1002));
    gw_deliver_unbind_group(dl, 77);
    wait_groups(0);
    publish("g.77", 1003);
    ASSERT_TRUE(!received(1003));
    /* Many groups at once (the table grows). */
    for (uint64_t g = 1000; g < 1200; g++)
        gw_deliver_bind_group(dl, g);
    wait_groups(200);
    publish("g.1199", 1004);
    ASSERT_TRUE(received(1004));
}

TEST(broker_restart_is_reported_and_bindings_come_back)
{
    char cmd[1024];
    int ups_before = atomic_load(&ups);

    snprintf(cmd, sizeof(cmd), "%s stop rabbitmq >/dev/null 2>&1", infra_sh);
    ASSERT_EQ(system(cmd), 0);
    for (int i = 0; i < 500 && atomic_load(&downs) == 0; i++)
        sleep_ms(10);
    ASSERT_GT(atomic_load(&downs), 0);
    ASSERT_TRUE(!gw_deliver_is_up(dl));
    snprintf(cmd, sizeof(cmd), "%s up >/dev/null 2>&1", infra_sh);
    ASSERT_EQ(system(cmd), 0);
    for (int i = 0; i < 3000 && atomic_load(&ups) == ups_before; i++)
        sleep_ms(10);
    ASSERT_GT(atomic_load(&ups), ups_before);
    wait_groups(200);
    publish("g.1100", 1005);
    ASSERT_TRUE(received(1005));
}

int main(int argc, char **argv)
{
    gw_deliver_config_t cfg = {.on_delivery = on_delivery, .on_state = on_state};
    int rc;

    if (argc < 2) {
        fprintf(stderr, "usage: %s <infra.sh>\n", argv[0]);
        return 2;
    }
    infra_sh = argv[1];
    if (it_env_load() != IM_OK)
        return 1;
    snprintf(gateway_id, sizeof(gateway_id), "it12-%d", (int)getpid());
    cfg.amqp = it_amqp_config("it12");
    cfg.amqp.heartbeat_s = 10;
    cfg.gateway_id = gateway_id;
    dl = gw_deliver_new(&cfg);
    ASSERT_EQ(gw_deliver_start(dl), IM_OK);
    for (int i = 0; i < 1000 && !gw_deliver_is_up(dl); i++)
        sleep_ms(10);
    if (!gw_deliver_is_up(dl)) {
        fprintf(stderr, "the consumer never came up\n");
        gw_deliver_free(dl);
        return 1;
    }
    RUN(own_key_and_refcounted_group_bindings);
    RUN(broker_restart_is_reported_and_bindings_come_back);
    gw_deliver_free(dl);
    rc = im_test_done();
    return rc;
}
