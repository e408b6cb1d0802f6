#include "im_wheel.h"

#include <assert.h>

#define MASK ((uint64_t)IM_WHEEL_SLOTS - 1)
/* Distances (in ticks) below SPAN fit the wheel; beyond it a timer is parked. */
#define SPAN ((uint64_t)1 << (IM_WHEEL_LEVELS * IM_WHEEL_LEVEL_BITS))

static unsigned shift_of(unsigned level)
{
    return level * IM_WHEEL_LEVEL_BITS;
}

static void slot_push(im_wheel_t *w, uint32_t slot, im_timer_t *t)
{
    im_timer_t **head = &w->slots[slot];

    t->next = *head;
    if (t->next != NULL)
        t->next->pprev = &t->next;
    t->pprev = head;
    t->slot = slot;
    *head = t;
    w->occupied[slot / IM_WHEEL_SLOTS] |= (uint64_t)1 << (slot % IM_WHEEL_SLOTS);
}

/* Works on wheel slots and on a list detached by fire_list() alike, which is
 * what lets a callback cancel a timer that is due in the tick being run. */
static void unlink_timer(im_timer_t *t)
{
    *t->pprev = t->next;
    if (t->next != NULL)
        t->next->pprev = t->pprev;
    t->next = NULL;
    t->pprev = NULL;
}

static im_timer_t *slot_detach(im_wheel_t *w, uint32_t slot)
{
    im_timer_t *list = w->slots[slot];

    w->slots[slot] = NULL;
    w->occupied[slot / IM_WHEEL_SLOTS] &= ~((uint64_t)1 << (slot % IM_WHEEL_SLOTS));
    return list;
}

/* The level comes from the distance to w->cur, the slot from the expiry
 * itself, so a slot of level L holds exactly the timers due in one
 * 64^L-tick block: the one that starts when that slot is next cascaded. */
static void place(im_wheel_t *w, im_timer_t *t)
{
    uint64_t at = t->expires > w->cur ? t->expires : w->cur;
    uint64_t dist = at - w->cur;
    unsigned level = 0;

    if (dist >= SPAN) {
        dist = SPAN - 1;
        at = w->cur + dist;
    }
    if (dist >= IM_WHEEL_SLOTS)
        level = (unsigned)(63 - __builtin_clzll(dist)) / IM_WHEEL_LEVEL_BITS;
    slot_push(w, (uint32_t)(level * IM_WHEEL_SLOTS + ((at >> shift_of(level)) & MASK)), t);
}

/* The first tick >= w->cur at which an occupied slot of this level comes
 * due; UINT64_MAX if none (or it is beyond 2^64).  For level 0 that is an
 * expiry, above it a cascade, which happens on ticks that are multiples of
 * the level's slot width.  place() guarantees a slot's timers belong to its
 * next turn, never a later lap, so the nearest occupied slot is the answer. */
static uint64_t level_next_tick(const im_wheel_t *w, unsigned level)
{
    uint64_t bits = w->occupied[level];
    unsigned shift = shift_of(level);
    uint64_t block, rotated, pos;

    if (bits == 0)
        return UINT64_MAX;
    block = (w->cur >> shift) + ((w->cur & (((uint64_t)1 << shift) - 1)) != 0);
    pos = block & MASK;
    rotated = pos ? (bits >> pos) | (bits << (IM_WHEEL_SLOTS - pos)) : bits;
    block += (uint64_t)__builtin_ctzll(rotated);
    if (block > UINT64_MAX >> shift)
        return UINT64_MAX;
    return block << shift;
}

static uint64_t next_event_tick(const im_wheel_t *w)
{
    uint64_t best = UINT64_MAX;

    if (w->count == 0)
        return best;
    for (unsigned level = 0; level < IM_WHEEL_LEVELS; level++) {
        uint64_t tick = level_next_tick(w, level);
        if (tick < best)
            best = tick;
    }
    return best;
}

/* On a tick that is a multiple of a level's slot width, that level's current
 * slot holds exactly the timers due within the next width ticks.  Placed
 * again from this tick, each lands on a lower level in a slot still ahead,
 * never in one being emptied now, so the levels can go in any order. */
static void cascade(im_wheel_t *w, uint64_t tick)
{
    for (unsigned level = 1; level < IM_WHEEL_LEVELS; level++) {
        unsigned shift = shift_of(level);
        im_timer_t *list;

        if ((tick & (((uint64_t)1 << shift) - 1)) != 0)
            break;
        list = slot_detach(w, (uint32_t)(level * IM_WHEEL_SLOTS + ((tick >> shift) & MASK)));
        while (list != NULL) {
            im_timer_t *t = list;
            list = t->next;
            place(w, t);
        }
    }
}

/* The due list is detached first and popped one timer at a time, so a
 * callback can cancel or re-arm any timer in it, and whatever it arms lands
 * in the wheel, never in the list being run. */
static size_t fire_list(im_wheel_t *w, im_timer_t *list)
{
    size_t fired = 0;

    if (list != NULL)
        list->pprev = &list;
    while (list != NULL) {
        im_timer_t *t = list;
        unlink_timer(t);
        w->count--;
        fired++;
        t->cb(t, t->arg);
    }
    return fired;
}

static size_t run_tick(im_wheel_t *w, uint64_t tick)
{
    im_timer_t *due;

    w->cur = tick;
    cascade(w, tick);
    due = slot_detach(w, (uint32_t)(tick & MASK));
    w->cur = tick + 1;
    return fire_list(w, due);
}

void im_wheel_init(im_wheel_t *w, uint64_t now_ms, uint32_t tick_ms)
{
    assert(tick_ms > 0);
    *w = (im_wheel_t){.cur = 1, .base_ms = now_ms, .now_ms = now_ms, .tick_ms = tick_ms};
}

void im_wheel_destroy(im_wheel_t *w)
{
    assert(!w->firing);
    for (uint32_t slot = 0; slot < IM_WHEEL_LEVELS * IM_WHEEL_SLOTS; slot++) {
        im_timer_t *list = slot_detach(w, slot);
        while (list != NULL) {
            im_timer_t *t = list;
            list = t->next;
            t->next = NULL;
            t->pprev = NULL;
        }
    }
    w->count = 0;
}

void im_timer_init(im_timer_t *t, im_timer_cb cb, void *arg)
{
    *t = (im_timer_t){.cb = cb, .arg = arg};
}

/* Due at the first tick boundary at or after now + timeout, and at least one
 * tick ahead of the clock, so a timer armed from a callback cannot fire in
 * the advance that is running it. */
static uint64_t expiry_tick(const im_wheel_t *w, uint64_t timeout_ms)
{
    uint64_t elapsed = w->now_ms - w->base_ms;
    uint64_t due = timeout_ms > UINT64_MAX - elapsed ? UINT64_MAX : elapsed + timeout_ms;
    uint64_t tick = due / w->tick_ms + (due % w->tick_ms != 0);
    uint64_t next = elapsed / w->tick_ms + 1;

    return tick > next ? tick : next;
}

void im_wheel_add(im_wheel_t *w, im_timer_t *t, uint64_t timeout_ms)
{
    im_wheel_cancel(w, t);
    t->expires = expiry_tick(w, timeout_ms);
    place(w, t);
    w->count++;
}

void im_wheel_cancel(im_wheel_t *w, im_timer_t *t)
{
    if (t->pprev == NULL)
        return;
    unlink_timer(t);
    /* t may sit in a due list detached from this slot; then the slot's bit is
     * already right and this test leaves it alone. */
    if (w->slots[t->slot] == NULL)
        w->occupied[t->slot / IM_WHEEL_SLOTS] &= ~((uint64_t)1 << (t->slot % IM_WHEEL_SLOTS));
    w->count--;
}

int im_timer_pending(const im_timer_t *t)
{
    return t->pprev != NULL;
}

size_t im_wheel_advance(im_wheel_t *w, uint64_t now_ms)
{
    uint64_t target, tick;
    size_t fired = 0;

    assert(!w->firing);
    if (now_ms <= w->now_ms)
        return 0;
    w->now_ms = now_ms;
    target = (now_ms - w->base_ms) / w->tick_ms;
    w->firing = 1;
    /* Ticks with nothing to fire or cascade are skipped, not visited.  Timers
     * armed by callbacks are due after target, so this loop ends. */
    while ((tick = next_event_tick(w)) <= target)
        fired += run_tick(w, tick);
    w->cur = target + 1;
    w->firing = 0;
    return fired;
}

uint64_t im_wheel_next_timeout(const im_wheel_t *w, uint64_t cap_ms)
{
    uint64_t tick = next_event_tick(w);
    uint64_t elapsed = w->now_ms - w->base_ms;
    uint64_t at, wait;

    if (tick > UINT64_MAX / w->tick_ms)
        return cap_ms;
    at = tick * w->tick_ms;
    wait = at > elapsed ? at - elapsed : 0;
    return wait < cap_ms ? wait : cap_ms;
}

size_t im_wheel_count(const im_wheel_t *w)
{
    return w->count;
}

uint64_t im_wheel_tick(const im_wheel_t *w)
{
    return w->cur - 1;
}
