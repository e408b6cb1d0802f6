#include "gw_session.h"

#include <string.h>

#include "im_alloc.h"

#define NO_SLOT UINT32_MAX
/* Slot indexes use the low 32 bits of an id; the last index is NO_SLOT. */
#define MAX_SLOTS (UINT32_MAX - 1)

static uint32_t id_slot(uint64_t id)
{
    return (uint32_t)id;
}

static uint32_t id_gen(uint64_t id)
{
    return (uint32_t)(id >> 32);
}

/* A well-mixed hash: user ids are often small consecutive integers, which
 * would cluster in linear probing (splitmix64's finaliser). */
static size_t user_hash(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return (size_t)x;
}

void gw_sessions_init(gw_sessions_t *t)
{
    memset(t, 0, sizeof(*t));
    t->free_head = NO_SLOT;
}

void gw_sessions_destroy(gw_sessions_t *t)
{
    for (uint32_t i = 0; i < t->nslots; i++) {
        gw_session_t *s = t->slots[i].s;

        if (s != NULL)
            gw_session_free(s);
    }
    im_free(t->slots);
    im_free(t->users);
    gw_sessions_init(t);
}

/* ---- user index: linear probing, backward-shift deletion (no tombstones) ---- */

static gw_user_entry_t *user_find(const gw_sessions_t *t, uint64_t user_id)
{
    size_t mask = t->users_cap - 1;

    if (t->users_cap == 0)
        return NULL;
    for (size_t i = user_hash(user_id) & mask;; i = (i + 1) & mask) {
        if (t->users[i].user_id == user_id)
            return &t->users[i];
        if (t->users[i].user_id == 0)
            return NULL;
    }
}

/* The entry for user_id in a table with room (load < 1/2), inserted empty if new. */
static gw_user_entry_t *user_slot(gw_user_entry_t *users, size_t cap, uint64_t user_id)
{
    size_t mask = cap - 1, i = user_hash(user_id) & mask;

    while (users[i].user_id != 0 && users[i].user_id != user_id)
        i = (i + 1) & mask;
    users[i].user_id = user_id;
    return &users[i];
}

static void users_grow(gw_sessions_t *t)
{
    size_t cap = t->users_cap ? t->users_cap * 2 : 64;
    gw_user_entry_t *users = im_calloc(cap, sizeof(*users));

    for (size_t i = 0; i < t->users_cap; i++) {
        if (t->users[i].user_id != 0)
            user_slot(users, cap, t->users[i].user_id)->head = t->users[i].head;
    }
    im_free(t->users);
    t->users = users;
    t->users_cap = cap;
}

static void user_link(gw_sessions_t *t, gw_session_t *s)
{
    gw_user_entry_t *e;

    if ((t->users_count + 1) * 2 > t->users_cap)
        users_grow(t);
    e = user_slot(t->users, t->users_cap, s->user_id);
    if (e->head == NULL)
        t->users_count++;
    s->user_prev = NULL;
    s->user_next = e->head;
    if (e->head != NULL)
        e->head->user_prev = s;
    e->head = s;
}

/* Removes entry e, shifting later members of its probe run back so that
 * lookups never need tombstones. */
static void user_erase(gw_sessions_t *t, gw_user_entry_t *e)
{
    size_t mask = t->users_cap - 1, hole = (size_t)(e - t->users), i = hole;

    for (;;) {
        size_t home;

        i = (i + 1) & mask;
        if (t->users[i].user_id == 0)
            break;
        home = user_hash(t->users[i].user_id) & mask;
        /* Move i into the hole unless its home lies cyclically in (hole, i]. */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            t->users[hole] = t->users[i];
            hole = i;
        }
    }
    t->users[hole].user_id = 0;
    t->users[hole].head = NULL;
    t->users_count--;
}

static void user_unlink(gw_sessions_t *t, gw_session_t *s)
{
    if (s->user_next != NULL)
        s->user_next->user_prev = s->user_prev;
    if (s->user_prev != NULL) {
        s->user_prev->user_next = s->user_next;
    } else {
        gw_user_entry_t *e = user_find(t, s->user_id);

        e->head = s->user_next;
        if (e->head == NULL)
            user_erase(t, e);
    }
    s->user_next = s->user_prev = NULL;
}

/* ---- slots ---- */

static uint32_t slot_take(gw_sessions_t *t)
{
    uint32_t i = t->free_head;

    if (i != NO_SLOT) {
        t->free_head = t->slots[i].next_free;
        return i;
    }
    if (t->nslots == t->cap_slots) {
        uint32_t cap = t->cap_slots ? t->cap_slots * 2 : 64;

        if (t->cap_slots > MAX_SLOTS / 2)
            cap = MAX_SLOTS; /* four billion connections: not reachable in practice */
        t->slots = im_realloc(t->slots, (size_t)cap * sizeof(*t->slots));
        t->cap_slots = cap;
    }
    i = t->nslots++;
    t->slots[i].gen = 1;
    t->slots[i].s = NULL;
    return i;
}

gw_session_t *gw_sessions_add(gw_sessions_t *t, uint64_t user_id)
{
    uint32_t i = slot_take(t);
    gw_session_t *s = im_calloc(1, sizeof(*s) + t->data_size);

    s->id = (uint64_t)t->slots[i].gen << 32 | i;
    s->user_id = user_id;
    t->slots[i].s = s;
    t->count++;
    user_link(t, s);
    return s;
}

void gw_sessions_remove(gw_sessions_t *t, gw_session_t *s)
{
    gw_sessions_unlink(t, s);
    gw_session_free(s);
}

void gw_session_free(gw_session_t *s)
{
    gw_sendq_clear(s);
    im_free(s->rx);
    im_free(s->close_reason);
    im_free(s);
}

void gw_sessions_unlink(gw_sessions_t *t, gw_session_t *s)
{
    gw_slot_t *slot = &t->slots[id_slot(s->id)];

    user_unlink(t, s);
    slot->s = NULL;
    /* Generation 0 is skipped so that no id is ever 0. */
    if (++slot->gen == 0)
        slot->gen = 1;
    slot->next_free = t->free_head;
    t->free_head = id_slot(s->id);
    t->count--;
}

gw_session_t *gw_sessions_get(const gw_sessions_t *t, uint64_t id)
{
    uint32_t i = id_slot(id);

    if (i >= t->nslots || t->slots[i].s == NULL || t->slots[i].gen != id_gen(id))
        return NULL;
    return t->slots[i].s;
}

gw_session_t *gw_sessions_user_first(const gw_sessions_t *t, uint64_t user_id)
{
    gw_user_entry_t *e = user_id ? user_find(t, user_id) : NULL;

    return e ? e->head : NULL;
}

size_t gw_sessions_count(const gw_sessions_t *t)
{
    return t->count;
}

size_t gw_sessions_users(const gw_sessions_t *t)
{
    return t->users_count;
}

gw_session_t *gw_sessions_next(const gw_sessions_t *t, uint32_t *pos)
{
    while (*pos < t->nslots) {
        gw_session_t *s = t->slots[(*pos)++].s;

        if (s != NULL)
            return s;
    }
    return NULL;
}

/* ---- outbound queue ---- */

static void sendq_grow(gw_session_t *s, uint32_t max)
{
    uint32_t cap = s->q_cap ? s->q_cap * 2 : 4;
    im_buf_t **q;

    if (cap > max)
        cap = max;
    q = im_malloc((size_t)cap * sizeof(*q));
    /* Unroll the ring into the front of the new array. */
    for (uint32_t i = 0; i < s->q_len; i++)
        q[i] = s->q[(s->q_head + i) % s->q_cap];
    im_free(s->q);
    s->q = q;
    s->q_cap = cap;
    s->q_head = 0;
}

im_err_t gw_sendq_push(gw_session_t *s, im_buf_t *b, uint32_t max)
{
    if (s->q_len >= max)
        return IM_EFULL;
    if (s->q_len == s->q_cap)
        sendq_grow(s, max);
    s->q[(s->q_head + s->q_len) % s->q_cap] = b;
    s->q_len++;
    return IM_OK;
}

im_buf_t *gw_sendq_peek(const gw_session_t *s)
{
    return s->q_len ? s->q[s->q_head] : NULL;
}

void gw_sendq_drop_head(gw_session_t *s)
{
    if (s->q_len == 0)
        return;
    im_buf_unref(s->q[s->q_head]);
    s->q_head = (s->q_head + 1) % s->q_cap;
    s->q_len--;
}

void gw_sendq_clear(gw_session_t *s)
{
    while (s->q_len)
        gw_sendq_drop_head(s);
    im_free(s->q);
    s->q = NULL;
    s->q_cap = s->q_head = 0;
}
