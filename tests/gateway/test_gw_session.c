/* gw_session: slot+generation ids that never name a closed session again,
 * the per-user index (many devices per user, many users per hash bucket),
 * and the bounded outbound ring of refcounted buffers. */
#include <stdlib.h>

#include "gw_session.h"
#include "im_alloc.h"
#include "im_test.h"

TEST(ids_are_unique_and_never_zero)
{
    gw_sessions_t t;
    gw_session_t *a, *b;

    gw_sessions_init(&t);
    a = gw_sessions_add(&t, 7);
    b = gw_sessions_add(&t, 7);
    ASSERT_NE(a->id, 0);
    ASSERT_NE(b->id, 0);
    ASSERT_NE(a->id, b->id);
    ASSERT_TRUE(gw_sessions_get(&t, a->id) == a);
    ASSERT_TRUE(gw_sessions_get(&t, b->id) == b);
    ASSERT_NULL(gw_sessions_get(&t, 0));
    ASSERT_NULL(gw_sessions_get(&t, UINT64_C(0xffffffff00000005)));
    ASSERT_EQ(gw_sessions_count(&t), 2);
    gw_sessions_destroy(&t);
}

TEST(a_reused_slot_does_not_answer_to_the_old_id)
{
    gw_sessions_t t;
    gw_session_t *a, *c;
    uint64_t old;

    gw_sessions_init(&t);
    a = gw_sessions_add(&t, 1);
    old = a->id;
    gw_sessions_remove(&t, a);
    ASSERT_NULL(gw_sessions_get(&t, old));
    c = gw_sessions_add(&t, 2);
    /* Same slot (the free list is reused first), new generation. */
    ASSERT_EQ((uint32_t)c->id, (uint32_t)old);
    ASSERT_NE(c->id, old);
    ASSERT_NULL(gw_sessions_get(&t, old));
    ASSERT_TRUE(gw_sessions_get(&t, c->id) == c);
    gw_sessions_destroy(&t);
}

TEST(generation_skips_zero_on_wrap)
{
    gw_sessions_t t;
    gw_session_t *a;

    gw_sessions_init(&t);
    a = gw_sessions_add(&t, 1);
    t.slots[(uint32_t)a->id].gen = UINT32_MAX; /* as if freed 4 billion times */
    gw_sessions_remove(&t, a);
    a = gw_sessions_add(&t, 1);
    ASSERT_EQ(a->id >> 32, 1);
    ASSERT_NE(a->id, 0);
    gw_sessions_destroy(&t);
}

static size_t user_count(gw_sessions_t *t, uint64_t uid)
{
    size_t n = 0;

    for (gw_session_t *s = gw_sessions_user_first(t, uid); s; s = s->user_next) {
        ASSERT_EQ(s->user_id, uid);
        n++;
    }
    return n;
}

TEST(user_index_tracks_every_device)
{
    gw_sessions_t t;
    gw_session_t *s[3];

    gw_sessions_init(&t);
    for (int i = 0; i < 3; i++)
        s[i] = gw_sessions_add(&t, 42);
    gw_sessions_add(&t, 43);
    ASSERT_EQ(user_count(&t, 42), 3);
    ASSERT_EQ(user_count(&t, 43), 1);
    ASSERT_EQ(user_count(&t, 44), 0);
    ASSERT_EQ(gw_sessions_users(&t), 2);
    gw_sessions_remove(&t, s[1]); /* middle of the list */
    ASSERT_EQ(user_count(&t, 42), 2);
    gw_sessions_remove(&t, s[2]); /* head */
    gw_sessions_remove(&t, s[0]);
    ASSERT_EQ(user_count(&t, 42), 0);
    ASSERT_EQ(gw_sessions_users(&t), 1);
    ASSERT_NULL(gw_sessions_user_first(&t, 42));
    gw_sessions_destroy(&t);
}

/* Many users through growth and backward-shift deletion: after random adds
 * and removes the index agrees with a plain count per user. */
TEST(user_index_random_churn)
{
    enum { USERS = 500, OPS = 20000, MAXS = 4096 };
    static gw_session_t *live[MAXS];
    static size_t expect[USERS + 1];
    size_t nlive = 0, distinct = 0;
    gw_sessions_t t;

    srand(12345);
    gw_sessions_init(&t);
    for (int op = 0; op < OPS; op++) {
        if (nlive < MAXS && (nlive == 0 || rand() % 3 != 0)) {
            uint64_t uid = 1 + (uint64_t)(rand() % USERS);

            live[nlive++] = gw_sessions_add(&t, uid);
            expect[uid]++;
        } else {
            size_t i = (size_t)rand() % nlive;

            expect[live[i]->user_id]--;
            gw_sessions_remove(&t, live[i]);
            live[i] = live[--nlive];
        }
    }
    for (uint64_t uid = 1; uid <= USERS; uid++) {
        ASSERT_EQ(user_count(&t, uid), expect[uid]);
        distinct += expect[uid] > 0;
    }
    ASSERT_EQ(gw_sessions_users(&t), distinct);
    ASSERT_EQ(gw_sessions_count(&t), nlive);
    for (size_t i = 0; i < nlive; i++)
        ASSERT_TRUE(gw_sessions_get(&t, live[i]->id) == live[i]);
    gw_sessions_destroy(&t);
}

TEST(walk_visits_every_live_session)
{
    gw_sessions_t t;
    gw_session_t *s;
    uint32_t pos = 0;
    size_t n = 0;

    gw_sessions_init(&t);
    for (int i = 0; i < 100; i++)
        gw_sessions_add(&t, (uint64_t)i + 1);
    gw_sessions_remove(&t, gw_sessions_user_first(&t, 50));
    while ((s = gw_sessions_next(&t, &pos)) != NULL)
        n++;
    ASSERT_EQ(n, 99);
    gw_sessions_destroy(&t);
}

TEST(send_queue_is_fifo_bounded_and_refcounted)
{
    im_bufpool_t *pool = im_bufpool_new(NULL);
    im_bufpool_stats_t st;
    gw_sessions_t t;
    gw_session_t *s;
    im_buf_t *b[10];

    gw_sessions_init(&t);
    s = gw_sessions_add(&t, 1);
    for (int i = 0; i < 10; i++) {
        b[i] = im_buf_alloc(pool, 16);
        im_buf_append(b[i], &i, sizeof i);
    }
    for (int i = 0; i < 6; i++)
        ASSERT_EQ(gw_sendq_push(s, im_buf_ref(b[i]), 6), IM_OK);
    ASSERT_EQ(gw_sendq_push(s, b[6], 6), IM_EFULL); /* not taken */
    ASSERT_EQ(gw_sendq_len(s), 6);
    /* Wrap the ring: drop two, add two. */
    gw_sendq_drop_head(s);
    gw_sendq_drop_head(s);
    ASSERT_EQ(gw_sendq_push(s, im_buf_ref(b[7]), 6), IM_OK);
    ASSERT_EQ(gw_sendq_push(s, im_buf_ref(b[8]), 6), IM_OK);
    for (int want = 2; want <= 8; want++) {
        int got;

        if (want == 6)
            continue;
        memcpy(&got, im_buf_data(gw_sendq_peek(s)), sizeof got);
        ASSERT_EQ(got, want);
        gw_sendq_drop_head(s);
    }
    ASSERT_NULL(gw_sendq_peek(s));
    ASSERT_EQ(gw_sendq_push(s, im_buf_ref(b[9]), 6), IM_OK);
    gw_sessions_remove(&t, s); /* drops the queued reference */
    for (int i = 0; i < 10; i++)
        im_buf_unref(b[i]);
    im_bufpool_stats(pool, &st);
    ASSERT_EQ(st.in_use, 0);
    gw_sessions_destroy(&t);
    im_bufpool_free(pool);
}

int main(void)
{
    RUN(ids_are_unique_and_never_zero);
    RUN(a_reused_slot_does_not_answer_to_the_old_id);
    RUN(generation_skips_zero_on_wrap);
    RUN(user_index_tracks_every_device);
    RUN(user_index_random_churn);
    RUN(walk_visits_every_live_session);
    RUN(send_queue_is_fifo_bounded_and_refcounted);
    return im_test_done();
}
