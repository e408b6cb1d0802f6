#include <stdlib.h>

#include "im_alloc.h"
#include "im_test.h"
#include "im_wheel.h"

/* A timer plus what the test expects of it.  The callback records when it
 * ran and checks the tick against want_tick, so every test also checks
 * "fired at the right tick" without extra code. */
typedef struct probe_s {
    im_timer_t timer;
    im_wheel_t *w;
    uint64_t want_tick;
    uint64_t fired_tick;
    unsigned fired;
    int wrong_tick;
    /* What the callback does after recording. */
    uint64_t rearm_ms; /* re-arm itself with this timeout while rearm_left > 0 */
    unsigned rearm_left;
    struct probe_s **others; /* cancel these (or re-arm them, if others_ms) */
    size_t n_others;
    uint64_t others_ms;
} probe_t;

static uint64_t last_fired_tick;
static int order_broken;

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint64_t rnd_range(uint64_t lo, uint64_t hi)
{
    return lo + rnd() % (hi - lo + 1);
}

static void probe_cb(im_timer_t *t, void *arg)
{
    probe_t *p = arg;
    uint64_t now = im_wheel_tick(p->w);

    (void)t;
    p->fired++;
    p->fired_tick = now;
    if (now != p->want_tick)
        p->wrong_tick = 1;
    if (now < last_fired_tick)
        order_broken = 1;
    last_fired_tick = now;
    for (size_t i = 0; i < p->n_others; i++) {
        if (p->others_ms)
            im_wheel_add(p->w, &p->others[i]->timer, p->others_ms);
        else
            im_wheel_cancel(p->w, &p->others[i]->timer);
    }
    if (p->rearm_left > 0) {
        p->rearm_left--;
        im_wheel_add(p->w, &p->timer, p->rearm_ms);
    }
}

static void probe_init(probe_t *p, im_wheel_t *w)
{
    memset(p, 0, sizeof(*p));
    p->w = w;
    im_timer_init(&p->timer, probe_cb, p);
}

/* The tick a timer armed now for timeout_ms must fire in, worked out from the
 * header's contract rather than from the wheel's code. */
static uint64_t due_tick(uint64_t base_ms, uint64_t now_ms, uint32_t tick_ms, uint64_t timeout_ms)
{
    uint64_t due = now_ms - base_ms + timeout_ms;
    uint64_t tick = (due + tick_ms - 1) / tick_ms;
    uint64_t next = (now_ms - base_ms) / tick_ms + 1;
    return tick > next ? tick : next;
}

static void arm(probe_t *p, uint64_t now_ms, uint64_t timeout_ms)
{
    p->want_tick = due_tick(p->w->base_ms, now_ms, p->w->tick_ms, timeout_ms);
    im_wheel_add(p->w, &p->timer, timeout_ms);
}

static void reset_order(void)
{
    last_fired_tick = 0;
    order_broken = 0;
}

TEST(fires_at_due_tick)
{
    im_wheel_t w;
    probe_t p;

    im_wheel_init(&w, 1000, 1);
    probe_init(&p, &w);
    ASSERT_EQ(im_timer_pending(&p.timer), 0);
    arm(&p, 1000, 10);
    ASSERT_EQ(im_timer_pending(&p.timer), 1);
    ASSERT_EQ(im_wheel_count(&w), 1);
    ASSERT_EQ(im_wheel_advance(&w, 1009), 0);
    ASSERT_EQ(p.fired, 0);
    ASSERT_EQ(im_wheel_advance(&w, 1010), 1);
    ASSERT_EQ(p.fired, 1);
    ASSERT_U64_EQ(p.fired_tick, 10);
    ASSERT_EQ(im_timer_pending(&p.timer), 0);
    ASSERT_EQ(im_wheel_count(&w), 0);
    ASSERT_EQ(im_wheel_advance(&w, 5000), 0);
    ASSERT_EQ(p.fired, 1);
}

TEST(timeouts_round_up_to_whole_ticks)
{
    im_wheel_t w;
    probe_t a, b;

    im_wheel_init(&w, 0, 10);
    probe_init(&a, &w);
    probe_init(&b, &w);
    im_wheel_advance(&w, 15);
    arm(&a, 15, 10); /* due at 25: tick 3 (30 ms), never early */
    arm(&b, 15, 1);  /* due at 16: tick 2 */
    ASSERT_U64_EQ(a.want_tick, 3);
    ASSERT_U64_EQ(b.want_tick, 2);
    ASSERT_EQ(im_wheel_advance(&w, 19), 0);
    ASSERT_EQ(im_wheel_advance(&w, 20), 1);
    ASSERT_EQ(b.fired, 1);
    ASSERT_EQ(im_wheel_advance(&w, 29), 0);
    ASSERT_EQ(im_wheel_advance(&w, 30), 1);
    ASSERT_EQ(a.fired, 1);
    ASSERT_EQ(a.wrong_tick + b.wrong_tick, 0);
}

TEST(zero_timeout_fires_on_next_tick)
{
    im_wheel_t w;
    probe_t p;

    im_wheel_init(&w, 100, 10);
    probe_init(&p, &w);
    arm(&p, 100, 0);
    ASSERT_EQ(im_wheel_advance(&w, 100), 0); /* no time passed */
    ASSERT_EQ(im_wheel_advance(&w, 109), 0);
    ASSERT_EQ(im_wheel_advance(&w, 110), 1);
    ASSERT_U64_EQ(p.fired_tick, 1);

    /* Clock in the middle of a tick: 0 still means the next tick boundary. */
    im_wheel_advance(&w, 115);
    arm(&p, 115, 0);
    ASSERT_EQ(im_wheel_advance(&w, 119), 0);
    ASSERT_EQ(im_wheel_advance(&w, 120), 1);
    ASSERT_U64_EQ(p.fired_tick, 2);
    ASSERT_EQ(p.wrong_tick, 0);
}

TEST(cancel)
{
    im_wheel_t w;
    probe_t a, b, c, d, never;

    im_wheel_init(&w, 0, 1);
    probe_init(&a, &w);
    probe_init(&b, &w);
    probe_init(&c, &w);
    probe_init(&d, &w);
    probe_init(&never, &w);
    im_wheel_cancel(&w, &never.timer); /* never armed: no-op */
    arm(&a, 0, 50);
    arm(&b, 0, 50); /* same slot as a */
    arm(&c, 0, 5000);
    arm(&d, 0, 20);
    ASSERT_EQ(im_wheel_count(&w), 4);
    ASSERT_U64_EQ(im_wheel_next_timeout(&w, 1000), 20);
    im_wheel_cancel(&w, &a.timer);
    im_wheel_cancel(&w, &c.timer);
    im_wheel_cancel(&w, &c.timer); /* twice: no-op */
    im_wheel_cancel(&w, &d.timer);
    ASSERT_EQ(im_timer_pending(&a.timer), 0);
    ASSERT_EQ(im_timer_pending(&b.timer), 1);
    ASSERT_EQ(im_wheel_count(&w), 1);
    /* An emptied slot no longer counts as work. */
    ASSERT_U64_EQ(im_wheel_next_timeout(&w, 1000), 50);
    ASSERT_EQ(im_wheel_advance(&w, 10000), 1);
    ASSERT_EQ(a.fired + c.fired + d.fired + never.fired, 0);
    ASSERT_EQ(b.fired, 1);
    ASSERT_EQ(im_wheel_count(&w), 0);
    ASSERT_U64_EQ(im_wheel_next_timeout(&w, 777), 777);
}

TEST(rearm_moves_earlier_and_later)
{
    im_wheel_t w;
    probe_t early, late;

    im_wheel_init(&w, 0, 1);
    probe_init(&early, &w);
    probe_init(&late, &w);
    arm(&early, 0, 100000); /* a high level ... */
    arm(&early, 0, 30);     /* ... moved down to level 0 */
    arm(&late, 0, 30);
    arm(&late, 0, 70000);
    ASSERT_EQ(im_wheel_count(&w), 2);
    for (uint64_t ms = 1; ms <= 100000; ms++)
        im_wheel_advance(&w, ms);
    ASSERT_EQ(early.fired, 1);
    ASSERT_U64_EQ(early.fired_tick, 30);
    ASSERT_EQ(late.fired, 1);
    ASSERT_U64_EQ(late.fired_tick, 70000);
    ASSERT_EQ(early.wrong_tick + late.wrong_tick, 0);
}

/* Timeouts on both sides of every level boundary, stepping one tick at a
 * time so every cascade runs. */
TEST(rounds_beyond_one_revolution)
{
    static const uint64_t timeouts[] = {1,    63,   64,     65,     127,    128,    4095,  4096,
                                        4097, 5000, 262143, 262144, 262145, 300000, 777777};
    enum { N = sizeof(timeouts) / sizeof(timeouts[0]) };
    im_wheel_t w;
    probe_t p[N];

    im_wheel_init(&w, 0, 1);
    im_wheel_advance(&w, 37); /* not aligned to any level */
    for (size_t i = 0; i < N; i++) {
        probe_init(&p[i], &w);
        arm(&p[i], 37, timeouts[i]);
    }
    for (uint64_t ms = 38; ms <= 37 + 777777; ms++)
        im_wheel_advance(&w, ms);
    for (size_t i = 0; i < N; i++) {
        ASSERT_EQ(p[i].fired, 1);
        ASSERT_U64_EQ(p[i].fired_tick, 37 + timeouts[i]);
    }
    ASSERT_EQ(im_wheel_count(&w), 0);
}

/* Beyond the wheel's whole span (64^6 ticks) timers are parked and placed
 * again; and advancing 2^40 ticks in a few calls must skip the empty ones. */
TEST(timeouts_beyond_wheel_span)
{
    const uint64_t span = (uint64_t)1 << 36;
    const uint64_t timeouts[] = {span - 1, span, span + 1, 3 * span + 12345, (uint64_t)1 << 40};
    enum { N = sizeof(timeouts) / sizeof(timeouts[0]) };
    im_wheel_t w;
    probe_t p[N], forever;

    im_wheel_init(&w, 5, 1);
    probe_init(&forever, &w);
    arm(&forever, 5, UINT64_MAX);
    for (size_t i = 0; i < N; i++) {
        probe_init(&p[i], &w);
        arm(&p[i], 5, timeouts[i]);
    }
    reset_order();
    for (size_t i = 0; i < N; i++) {
        ASSERT_EQ(im_wheel_advance(&w, 5 + timeouts[i] - 1), 0);
        ASSERT_EQ(im_wheel_advance(&w, 5 + timeouts[i]), 1);
        ASSERT_EQ(p[i].fired, 1);
        ASSERT_U64_EQ(p[i].fired_tick, timeouts[i]);
    }
    ASSERT_EQ(im_wheel_advance(&w, (uint64_t)1 << 50), 0);
    ASSERT_EQ(forever.fired, 0);
    ASSERT_EQ(im_timer_pending(&forever.timer), 1);
}

TEST(rearm_in_own_callback)
{
    im_wheel_t w;
    probe_t p;

    im_wheel_init(&w, 0, 1);
    probe_init(&p, &w);
    p.rearm_ms = 7;
    p.rearm_left = 9;
    arm(&p, 0, 7);
    for (uint64_t ms = 1; ms <= 100; ms++) {
        im_wheel_advance(&w, ms);
        if (ms % 7 == 0 && ms <= 70)
            ASSERT_U64_EQ(p.fired_tick, ms);
        p.want_tick = ms + 7 - ms % 7;
    }
    ASSERT_EQ(p.fired, 10);
    ASSERT_EQ(p.wrong_tick, 0);
    ASSERT_EQ(im_timer_pending(&p.timer), 0);

    /* Timeout 0 from its own callback: once per advance, not a busy loop,
     * and relative to the new clock even after a long step. */
    p.fired = 0;
    p.rearm_ms = 0;
    p.rearm_left = 1000;
    arm(&p, 100, 0);
    ASSERT_EQ(im_wheel_advance(&w, 101), 1);
    ASSERT_EQ(im_wheel_advance(&w, 150), 1);
    ASSERT_EQ(im_wheel_advance(&w, 151), 1);
    ASSERT_EQ(p.fired, 3);
    ASSERT_EQ(im_timer_pending(&p.timer), 1);
    im_wheel_cancel(&w, &p.timer);
}

/* Three timers due in the same tick; whichever runs first cancels the other
 * two, which sit in the detached due list at that moment. */
TEST(cancel_others_due_in_same_tick)
{
    im_wheel_t w;
    probe_t p[3], later;
    probe_t *others[3][3];

    im_wheel_init(&w, 0, 1);
    probe_init(&later, &w);
    arm(&later, 0, 500);
    for (size_t i = 0; i < 3; i++)
        probe_init(&p[i], &w);
    for (size_t i = 0; i < 3; i++) {
        size_t n = 0;
        for (size_t j = 0; j < 3; j++)
            if (j != i)
                others[i][n++] = &p[j];
        others[i][n++] = &later;
        p[i].others = others[i];
        p[i].n_others = n;
        arm(&p[i], 0, 200);
    }
    ASSERT_EQ(im_wheel_advance(&w, 1000), 1);
    ASSERT_EQ(p[0].fired + p[1].fired + p[2].fired, 1);
    ASSERT_EQ(later.fired, 0);
    ASSERT_EQ(im_wheel_count(&w), 0);
    ASSERT_U64_EQ(im_wheel_next_timeout(&w, 42), 42);
}

/* Same set-up, but the first one re-arms the others: they leave the due
 * list and fire later, relative to the clock. */
TEST(rearm_others_due_in_same_tick)
{
    im_wheel_t w;
    probe_t p[3];
    probe_t *others[3][2];

    im_wheel_init(&w, 0, 1);
    for (size_t i = 0; i < 3; i++)
        probe_init(&p[i], &w);
    for (size_t i = 0; i < 3; i++) {
        size_t n = 0;
        for (size_t j = 0; j < 3; j++)
            if (j != i)
                others[i][n++] = &p[j];
        p[i].others = others[i];
        p[i].n_others = n;
        p[i].others_ms = 5;
        arm(&p[i], 0, 20);
    }
    ASSERT_EQ(im_wheel_advance(&w, 20), 1);
    ASSERT_EQ(im_wheel_count(&w), 2);
    for (size_t i = 0; i < 3; i++) {
        p[i].n_others = 0;
        if (!p[i].fired)
            p[i].want_tick = 25;
    }
    ASSERT_EQ(im_wheel_advance(&w, 24), 0);
    ASSERT_EQ(im_wheel_advance(&w, 25), 2);
    for (size_t i = 0; i < 3; i++)
        ASSERT_EQ(p[i].fired, 1);
    ASSERT_EQ(p[0].wrong_tick + p[1].wrong_tick + p[2].wrong_tick, 0);
}

static void free_self_cb(im_timer_t *t, void *arg)
{
    unsigned *fired = arg;
    (*fired)++;
    im_free(t);
}

TEST(callback_may_free_its_timer)
{
    im_wheel_t w;
    unsigned fired = 0;

    im_wheel_init(&w, 0, 1);
    for (int i = 0; i < 10; i++) {
        im_timer_t *t = im_malloc(sizeof(*t));
        im_timer_init(t, free_self_cb, &fired);
        im_wheel_add(&w, t, 3);
    }
    ASSERT_EQ(im_wheel_advance(&w, 3), 10);
    ASSERT_EQ(fired, 10);
}

/* After a stall, one call fires everything due, tick by tick in order, and
 * each callback sees the tick it was due in. */
TEST(catch_up_after_stall_in_order)
{
    enum { N = 5000 };
    im_wheel_t w;
    probe_t *p = im_calloc(N, sizeof(*p));

    rng_state = 0x9e3779b97f4a7c15u;
    im_wheel_init(&w, 1000, 2);
    for (size_t i = 0; i < N; i++) {
        probe_init(&p[i], &w);
        arm(&p[i], 1000, rnd_range(0, 400000));
    }
    reset_order();
    ASSERT_EQ(im_wheel_advance(&w, 1000 + 400000), N);
    ASSERT_EQ(order_broken, 0);
    for (size_t i = 0; i < N; i++) {
        ASSERT_EQ(p[i].fired, 1);
        ASSERT_EQ(p[i].wrong_tick, 0);
    }
    im_free(p);
}

/* Add 1M, then advance in uneven steps until all fired; every timer fires
 * once, at its tick, in order. */
TEST(one_million_timers)
{
    enum { N = 1000000 };
    const uint64_t max_timeout = 120000;
    im_wheel_t w;
    probe_t *p = im_calloc(N, sizeof(*p));
    uint64_t now = 0;
    size_t fired = 0;

    rng_state = 0x2545f4914f6cdd1du;
    im_wheel_init(&w, 0, 1);
    for (size_t i = 0; i < N; i++) {
        probe_init(&p[i], &w);
        arm(&p[i], 0, rnd_range(0, max_timeout));
    }
    ASSERT_EQ(im_wheel_count(&w), N);
    reset_order();
    while (now <= max_timeout) {
        now += rnd_range(1, 3000);
        fired += im_wheel_advance(&w, now);
    }
    ASSERT_EQ(fired, N);
    ASSERT_EQ(im_wheel_count(&w), 0);
    ASSERT_EQ(order_broken, 0);
    for (size_t i = 0; i < N; i++) {
        ASSERT_EQ(p[i].fired, 1);
        ASSERT_EQ(p[i].wrong_tick, 0);
    }
    im_free(p);
}

/* Sleeping for next_timeout() and advancing never overshoots an expiry and
 * wakes only for slots that hold work. */
TEST(next_timeout_drives_a_loop)
{
    im_wheel_t w;
    probe_t p;
    uint64_t now = 0;
    unsigned wakeups = 0;

    im_wheel_init(&w, 0, 1);
    probe_init(&p, &w);
    ASSERT_U64_EQ(im_wheel_next_timeout(&w, 1000), 1000);
    arm(&p, 0, 300000);
    while (!p.fired) {
        uint64_t wait = im_wheel_next_timeout(&w, 1000000);
        ASSERT_GT(wait, 0);
        now += wait;
        im_wheel_advance(&w, now);
        wakeups++;
    }
    ASSERT_U64_EQ(now, 300000);
    ASSERT_EQ(p.wrong_tick, 0);
    ASSERT_LE(wakeups, IM_WHEEL_LEVELS);
    ASSERT_U64_EQ(im_wheel_next_timeout(&w, 5), 5);
    arm(&p, now, 10);
    ASSERT_U64_EQ(im_wheel_next_timeout(&w, 5), 5);
    ASSERT_U64_EQ(im_wheel_next_timeout(&w, 50), 10);
    /* Due in a level-0 slot numbered below the current one (next lap). */
    im_wheel_advance(&w, now + 50);
    arm(&p, now + 50, 60);
    ASSERT_U64_EQ(im_wheel_next_timeout(&w, 1000), 60);
    im_wheel_cancel(&w, &p.timer);
}

TEST(clock_going_backwards_is_ignored)
{
    im_wheel_t w;
    probe_t p;

    im_wheel_init(&w, 1000, 1);
    probe_init(&p, &w);
    ASSERT_EQ(im_wheel_advance(&w, 1100), 0);
    ASSERT_EQ(im_wheel_advance(&w, 900), 0);
    ASSERT_U64_EQ(im_wheel_tick(&w), 100);
    arm(&p, 1100, 10);
    ASSERT_EQ(im_wheel_advance(&w, 1109), 0);
    ASSERT_EQ(im_wheel_advance(&w, 1110), 1);
    ASSERT_EQ(p.wrong_tick, 0);
}

TEST(destroy_disarms_pending_timers)
{
    im_wheel_t w;
    probe_t p[3];

    im_wheel_init(&w, 0, 1);
    for (size_t i = 0; i < 3; i++) {
        probe_init(&p[i], &w);
        arm(&p[i], 0, 10 * i + (i == 2 ? 1000000 : 0));
    }
    im_wheel_destroy(&w);
    for (size_t i = 0; i < 3; i++)
        ASSERT_EQ(im_timer_pending(&p[i].timer), 0);
    ASSERT_EQ(im_wheel_count(&w), 0);
}

/* Random adds, re-arms, cancels (some from callbacks) and advances of all
 * sizes, checked against the contract after every step. */
TEST(random_ops_match_model)
{
    enum { N = 300, OPS = 30000 };
    im_wheel_t w;
    probe_t p[N];
    probe_t *victim[N];
    uint64_t now = 7;
    size_t armed;

    rng_state = 0xdeadbeefcafef00du;
    im_wheel_init(&w, now, 3);
    for (size_t i = 0; i < N; i++) {
        probe_init(&p[i], &w);
        victim[i] = &p[rnd() % N];
    }
    reset_order();
    for (int op = 0; op < OPS; op++) {
        probe_t *q = &p[rnd() % N];
        uint64_t r = rnd() % 100;

        if (r < 45) {
            int big = rnd() % 10 == 0;
            arm(q, now, big ? rnd_range(0, 50000000) : rnd_range(0, 20000));
            /* Some cancel another probe when they fire. */
            q->others = rnd() % 8 == 0 ? &victim[q - p] : NULL;
            q->n_others = q->others != NULL;
        } else if (r < 60) {
            im_wheel_cancel(&w, &q->timer);
        } else {
            int big = rnd() % 50 == 0;
            last_fired_tick = im_wheel_tick(&w);
            now += big ? rnd_range(0, 10000000) : rnd_range(0, 3000);
            im_wheel_advance(&w, now);
            ASSERT_EQ(order_broken, 0);
        }
        armed = 0;
        for (size_t i = 0; i < N; i++) {
            ASSERT_EQ(p[i].wrong_tick, 0);
            if (im_timer_pending(&p[i].timer)) {
                armed++;
                ASSERT_GT(p[i].want_tick, im_wheel_tick(&w));
            }
        }
        ASSERT_EQ(im_wheel_count(&w), armed);
    }
    im_wheel_destroy(&w);
}

int main(void)
{
    RUN(fires_at_due_tick);
    RUN(timeouts_round_up_to_whole_ticks);
    RUN(zero_timeout_fires_on_next_tick);
    RUN(cancel);
    RUN(rearm_moves_earlier_and_later);
    RUN(rounds_beyond_one_revolution);
    RUN(timeouts_beyond_wheel_span);
    RUN(rearm_in_own_callback);
    RUN(cancel_others_due_in_same_tick);
    RUN(rearm_others_due_in_same_tick);
    RUN(callback_may_free_its_timer);
    RUN(catch_up_after_stall_in_order);
    RUN(one_million_timers);
    RUN(next_timeout_drives_a_loop);
    RUN(clock_going_backwards_is_ignored);
    RUN(destroy_disarms_pending_timers);
    RUN(random_ops_match_model);
    return im_test_done();
}
