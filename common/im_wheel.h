/*
 * im_wheel.h - hierarchical timing wheel for heartbeats and idle timeouts.
 *
 * Add, cancel and re-arm are O(1).  A tick costs time proportional to the
 * timers that expire in it (plus the amortised cascading below), not to the
 * number of timers held, and advancing over a long idle stretch skips empty
 * ticks instead of visiting them.  There is no limit on the number of timers
 * and no allocation: timers live in the caller's structs.
 *
 * Layout (Varghese & Lauck scheme 7, as in the classic Linux timer wheel):
 * IM_WHEEL_LEVELS levels of IM_WHEEL_SLOTS slots.  Level L holds the timers
 * due within 64^(L+1) ticks, in slots 64^L ticks wide; when the level below
 * wraps, one slot of level L is emptied into the lower levels ("cascade"), so
 * a timer moves at most IM_WHEEL_LEVELS - 1 times before it fires.  Timers due
 * further ahead than the whole wheel (64^6 ticks: 795 days at 1 ms) are parked
 * in the top level and placed again when it comes round, so any timeout works.
 *
 * Time is what the caller says it is: the wheel never reads a clock.  Pass a
 * monotonic reading in milliseconds (im_mono_ms()) to im_wheel_init and
 * im_wheel_advance.  A timer fires on the first tick boundary at or after its
 * due time, so never early and at most one tick late; timers due in the same
 * tick fire in no particular order, timers of different ticks in tick order.
 *
 * Threads: a wheel and its timers belong to one thread (the event loop that
 * owns them); no function here may be called from any other thread.
 */
#ifndef IM_WHEEL_H
#define IM_WHEEL_H

#include <stddef.h>
#include <stdint.h>

#define IM_WHEEL_LEVEL_BITS 6
#define IM_WHEEL_SLOTS      (1u << IM_WHEEL_LEVEL_BITS)
#define IM_WHEEL_LEVELS     6

typedef struct im_timer_s im_timer_t;

/* Called once each time t expires, from inside im_wheel_advance.  t is no
 * longer pending when this runs.  The callback may re-arm t (with any
 * timeout: even 0 fires on the next tick, never in this same advance), add or
 * cancel any other timer (including ones due in this same tick: a cancelled
 * one does not fire), and free t's memory.  It must not call
 * im_wheel_advance or im_wheel_destroy on the same wheel. */
typedef void (*im_timer_cb)(im_timer_t *t, void *arg);

/* Caller-owned memory, usually embedded in the object the timer is for (a
 * session, a connection).  The fields are private; use the functions below.
 * A pending timer must not be moved, freed or passed to im_timer_init. */
struct im_timer_s {
    im_timer_t *next;   /* slot list, NULL-terminated */
    im_timer_t **pprev; /* the pointer that points at us; NULL when not pending */
    uint64_t expires;   /* absolute tick */
    uint32_t slot;      /* level * IM_WHEEL_SLOTS + index of the list we are on */
    im_timer_cb cb;
    void *arg;
};

/* Caller-owned (embed it in the loop struct).  Private fields; the struct
 * must not be copied or moved while timers are pending (they point into it). */
typedef struct im_wheel_s {
    im_timer_t *slots[IM_WHEEL_LEVELS * IM_WHEEL_SLOTS];
    uint64_t occupied[IM_WHEEL_LEVELS]; /* bit i set <=> slot i of the level is non-empty */
    uint64_t cur;                       /* next tick to process (its cascades included) */
    uint64_t base_ms;                   /* the time of tick 0 */
    uint64_t now_ms;                    /* the latest time passed in */
    uint32_t tick_ms;
    int firing; /* inside im_wheel_advance: catches re-entry */
    size_t count;
} im_wheel_t;

/* Prepares an empty wheel whose clock reads now_ms and which advances in
 * steps of tick_ms (> 0) milliseconds.  Timeouts are rounded up to whole
 * ticks.  Elapsed time since init must stay below 2^63 ms. */
void im_wheel_init(im_wheel_t *w, uint64_t now_ms, uint32_t tick_ms);

/* Cancels every pending timer without running it (they all become not
 * pending; their memory stays the caller's).  Allocates nothing, so this is
 * only needed when timers outlive the wheel.  Not from a timer callback. */
void im_wheel_destroy(im_wheel_t *w);

/* Prepares t (not pending) to call cb(t, arg) when it expires. */
void im_timer_init(im_timer_t *t, im_timer_cb cb, void *arg);

/* Arms t to fire timeout_ms after the wheel's clock (the now_ms of the last
 * im_wheel_advance, or of init: like libuv's cached loop time).  If t is
 * already pending it is re-armed: the old expiry is forgotten.  A timeout of
 * 0 fires on the next tick.  Timeouts too large to represent never fire.
 * O(1). */
void im_wheel_add(im_wheel_t *w, im_timer_t *t, uint64_t timeout_ms);

/* Stops t from firing.  A no-op if t is not pending.  O(1). */
void im_wheel_cancel(im_wheel_t *w, im_timer_t *t);

/* 1 if t is armed and has not fired or been cancelled yet, else 0. */
int im_timer_pending(const im_timer_t *t);

/* Moves the wheel's clock to now_ms and runs the callbacks of every timer due
 * by then, tick by tick in order; a now_ms not after the current clock does
 * nothing.  After a stall it catches up in one call, skipping empty ticks.
 * While a callback runs, im_wheel_tick() is the tick it was due in, but
 * timers it arms are relative to now_ms, so they fire in a later call.
 * Returns the number of callbacks run. */
size_t im_wheel_advance(im_wheel_t *w, uint64_t now_ms);

/* Milliseconds from the wheel's clock until the next tick at which the wheel
 * has work (an expiry or a cascade), at most cap_ms; cap_ms when it holds no
 * timers.  Never later than the next expiry, possibly earlier: use it as a
 * poll timeout, then call im_wheel_advance. */
uint64_t im_wheel_next_timeout(const im_wheel_t *w, uint64_t cap_ms);

/* The number of pending timers. */
size_t im_wheel_count(const im_wheel_t *w);

/* The tick being processed inside a callback, otherwise the last tick
 * reached.  Tick n starts n * tick_ms after the init time. */
uint64_t im_wheel_tick(const im_wheel_t *w);

#endif
