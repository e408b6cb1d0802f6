#include "im_map.h"

#include "im_alloc.h"

static size_t home(uint64_t key, size_t cap)
{
    /* Fibonacci hashing: ids that differ only in low bits spread out. */
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);
}

void im_map_init(im_map_t *m)
{
    m->slots = NULL;
    m->cap = m->len = 0;
}

void im_map_free(im_map_t *m)
{
    im_free(m->slots);
    im_map_init(m);
}

static im_map_slot_t *find(const im_map_t *m, uint64_t key)
{
    if (m->cap == 0 || key == 0)
        return NULL;
    for (size_t i = home(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].key == key)
            return &m->slots[i];
        if (m->slots[i].key == 0)
            return NULL;
    }
}

void *im_map_get(const im_map_t *m, uint64_t key)
{
    im_map_slot_t *s = find(m, key);

    return s ? s->val : NULL;
}

static void insert_new(im_map_t *m, uint64_t key, void *val)
{
    size_t i = home(key, m->cap);

    while (m->slots[i].key != 0)
        i = (i + 1) & (m->cap - 1);
    m->slots[i].key = key;
    m->slots[i].val = val;
    m->len++;
}

static void grow(im_map_t *m)
{
    im_map_slot_t *old = m->slots;
    size_t old_cap = m->cap;

    m->cap = old_cap ? old_cap * 2 : 16;
    m->slots = im_calloc(m->cap, sizeof(*m->slots));
    m->len = 0;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].key != 0)
            insert_new(m, old[i].key, old[i].val);
    im_free(old);
}

void *im_map_put(im_map_t *m, uint64_t key, void *val)
{
    im_map_slot_t *s = find(m, key);
    void *prev;

    if (s != NULL) {
        prev = s->val;
        s->val = val;
        return prev;
    }
    if ((m->len + 1) * 2 > m->cap)
        grow(m);
    insert_new(m, key, val);
    return NULL;
}

void *im_map_del(im_map_t *m, uint64_t key)
{
    im_map_slot_t *s = find(m, key);
    size_t hole, i;
    void *val;

    if (s == NULL)
        return NULL;
    val = s->val;
    hole = (size_t)(s - m->slots);
    /* Backward shift: pull later entries of the probe run into the hole when
     * their home is not between the hole and them. */
    for (i = (hole + 1) & (m->cap - 1); m->slots[i].key != 0; i = (i + 1) & (m->cap - 1)) {
        size_t h = home(m->slots[i].key, m->cap);
        size_t dist_i = (i - h) & (m->cap - 1), dist_hole = (hole - h) & (m->cap - 1);

        if (dist_hole < dist_i) {
            m->slots[hole] = m->slots[i];
            hole = i;
        }
    }
    m->slots[hole].key = 0;
    m->slots[hole].val = NULL;
    m->len--;
    return val;
}
