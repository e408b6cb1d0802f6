#include "im_id.h"

#include "im_time.h"

#define SEQ_MASK ((UINT64_C(1) << IM_ID_SEQ_BITS) - 1)

im_err_t im_idgen_init(im_idgen_t *gen, uint32_t node_id, uint64_t not_before,
                       im_id_clock_fn clock_ms)
{
    uint64_t floor_state = 0;

    if (node_id > IM_ID_MAX_NODE)
        return IM_ERANGE;
    gen->node = node_id;
    gen->clock_ms = clock_ms ? clock_ms : im_wall_ms;
    /* Start at the not_before id's millisecond with its sequence maxed, so the
     * first id lands in the next millisecond at the earliest: its own sequence
     * numbers can then never collide with the previous run's, whatever node
     * that run had. */
    if (not_before)
        floor_state = ((not_before >> (IM_ID_SEQ_BITS + IM_ID_NODE_BITS)) << IM_ID_SEQ_BITS) |
                      SEQ_MASK;
    atomic_init(&gen->state, floor_state);
    return IM_OK;
}

uint64_t im_id_next(im_idgen_t *gen)
{
    uint64_t now = gen->clock_ms(), old, next, ms;

    now = now > IM_ID_EPOCH_MS ? now - IM_ID_EPOCH_MS : 0;
    old = atomic_load_explicit(&gen->state, memory_order_relaxed);
    do {
        /* Either the first sequence number of the current millisecond, or one
         * past the last id when the clock has not moved (or moved back).  The
         * +1 carries a spent sequence into the next millisecond. */
        next = now << IM_ID_SEQ_BITS;
        if (next <= old)
            next = old + 1;
    } while (!atomic_compare_exchange_weak_explicit(&gen->state, &old, next, memory_order_relaxed,
                                                    memory_order_relaxed));
    ms = next >> IM_ID_SEQ_BITS;
    return (ms << (IM_ID_SEQ_BITS + IM_ID_NODE_BITS)) | (gen->node << IM_ID_SEQ_BITS) |
           (next & SEQ_MASK);
}
