/*
 * im_id.h - 64-bit unique ids: time + node id + sequence (Snowflake layout).
 *
 *   bit 63     always 0 (fits a signed BIGINT and a Java long)
 *   bits 62-22 milliseconds since IM_ID_EPOCH_MS (41 bits: ~69 years)
 *   bits 21-12 node id (10 bits: 0..1023)
 *   bits 11-0  sequence within the millisecond (4096 per ms per node)
 *
 * Ids from one generator strictly increase.  Ids from generators with
 * distinct node ids never collide.  The generator keeps a logical clock: it
 * never goes below the last id it issued, so a wall clock that steps
 * backwards (NTP) makes it keep counting from where it was instead of
 * repeating ids; a millisecond whose 4096 sequence numbers are spent borrows
 * the next millisecond instead of spinning.  The one case it cannot see is a
 * restart while the wall clock is behind the previous run's last id: pass
 * that run's highest id (e.g. MAX(id) from storage) as not_before to
 * im_idgen_init to cover it.
 *
 * Ids are sent to web clients as decimal strings (JavaScript numbers lose
 * precision above 2^53).
 */
#ifndef IM_ID_H
#define IM_ID_H

#include <stdatomic.h>
#include <stdint.h>

#include "im_err.h"

#define IM_ID_EPOCH_MS UINT64_C(1704067200000) /* 2024-01-01T00:00:00Z */
#define IM_ID_SEQ_BITS 12
#define IM_ID_NODE_BITS 10
#define IM_ID_MAX_NODE ((1u << IM_ID_NODE_BITS) - 1)

typedef uint64_t (*im_id_clock_fn)(void);

typedef struct im_idgen_s {
    /* (logical ms since epoch << SEQ_BITS) | seq of the last id issued. */
    _Atomic uint64_t state;
    uint64_t node;
    im_id_clock_fn clock_ms; /* wall clock in Unix ms */
} im_idgen_t;

/* Prepares gen for node_id (0..IM_ID_MAX_NODE).  Every id issued afterwards is
 * greater than not_before (0 if unknown).  clock_ms may be NULL for the real
 * wall clock; tests pass a fake one.  Returns IM_OK or IM_ERANGE for a bad
 * node id. */
im_err_t im_idgen_init(im_idgen_t *gen, uint32_t node_id, uint64_t not_before,
                       im_id_clock_fn clock_ms);

/* The next id.  Lock-free and safe from any number of threads. */
uint64_t im_id_next(im_idgen_t *gen);

static inline uint64_t im_id_unix_ms(uint64_t id)
{
    return (id >> (IM_ID_SEQ_BITS + IM_ID_NODE_BITS)) + IM_ID_EPOCH_MS;
}

static inline uint32_t im_id_node(uint64_t id)
{
    return (uint32_t)((id >> IM_ID_SEQ_BITS) & IM_ID_MAX_NODE);
}

static inline uint32_t im_id_seq(uint64_t id)
{
    return (uint32_t)(id & ((1u << IM_ID_SEQ_BITS) - 1));
}

#endif
