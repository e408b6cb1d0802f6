/*
 * im_map.h - a hash map from nonzero uint64_t keys to pointers: open
 * addressing with linear probing and backward-shift deletion (no tombstones,
 * so lookups stay short after many deletes), power-of-two capacity, grown at
 * 50% load.  One thread at a time.
 *
 *   im_map_t m;
 *   im_map_init(&m);
 *   im_map_put(&m, id, ptr);          // replaces
 *   void *p = im_map_get(&m, id);     // NULL when absent
 *   im_map_del(&m, id);               // returns the value removed
 *   IM_MAP_FOREACH(&m, key, val) { ... }   // no put/del inside
 *   im_map_free(&m);
 *
 * Key 0 is reserved (it marks a free slot) and values must not be NULL.
 */
#ifndef IM_MAP_H
#define IM_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t key;
    void *val;
} im_map_slot_t;

typedef struct {
    im_map_slot_t *slots;
    size_t cap; /* 0 or a power of two */
    size_t len;
} im_map_t;

void im_map_init(im_map_t *m);
void im_map_free(im_map_t *m);
void *im_map_get(const im_map_t *m, uint64_t key);
/* Sets key to val (key != 0, val != NULL); returns the previous value or NULL. */
void *im_map_put(im_map_t *m, uint64_t key, void *val);
/* Removes key; returns its value, or NULL when absent. */
void *im_map_del(im_map_t *m, uint64_t key);

#define IM_MAP_FOREACH(m, k, v)                                                                    \
    for (size_t im__i = 0; im__i < (m)->cap; im__i++)                                              \
        if (((k) = (m)->slots[im__i].key) != 0 && ((v) = (m)->slots[im__i].val, 1))

#endif
