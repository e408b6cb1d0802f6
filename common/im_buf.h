/*
 * im_buf.h - a pool of refcounted message buffers in fixed size classes.
 *
 * A message fanned out to N connections is encoded once into one buffer and
 * queued N times by reference (h2o's shared chunks, mosquitto's stored
 * messages); the buffer goes back to its pool when the last holder lets go.
 * Once a pool has grown to its working set, allocating and releasing buffers
 * never calls malloc.
 *
 * One buffer:
 *
 *   [ private header | IM_BUF_HEADROOM bytes | payload: im_buf_cap() bytes ]
 *                                            ^ im_buf_data(), IM_BUF_ALIGN-aligned
 *
 * A buffer costs its class size plus 80 bytes on 64-bit (header and
 * headroom), rounded up to IM_BUF_ALIGN.  The headroom is scratch space for
 * the thread that sends the buffer: the WebSocket adapter writes its frame
 * header there (libwebsockets needs LWS_PRE bytes in front of the payload it
 * sends, and lws_write fills them on every send), so a frame goes out
 * without a copy.  common/ does not include libwebsockets; the gateway
 * static_asserts IM_BUF_HEADROOM >= LWS_PRE.
 *
 * Size classes: a pool has 1..IM_BUF_MAX_CLASSES classes of increasing payload
 * capacity, and a request is served by the smallest class that fits it.  Each
 * class takes memory from im_malloc in slabs (one of `prealloc` buffers when
 * the pool is made, then slabs of `grow` buffers on demand) until it holds
 * `max` buffers.  Slabs are reused for the pool's whole life, never returned
 * early, and freed by im_bufpool_free.
 *
 * Limits are defined results, never a block or an abort:
 *   - exhaustion: all `max` buffers of the fitting class are in use ->
 *     im_buf_alloc returns NULL and counts it in that class's `exhausted`.
 *     It does not borrow from a larger class (one hot class must not starve
 *     the others).  Allocation succeeds again as soon as a buffer of the class
 *     is released.
 *   - oversize: a request above the largest class -> NULL, counted in
 *     `oversize`.  There is no oversize path: payloads that large do not
 *     belong on the message path, and a caller that needs one uses im_malloc.
 * What to do about a NULL (drop, push back on the sender, close a slow
 * connection) is the caller's policy.
 *
 * Ownership: im_buf_alloc returns a buffer holding one reference, owned by the
 * caller.  Each im_buf_ref adds a reference and each reference is dropped by
 * exactly one im_buf_unref; nobody frees a buffer directly.  The contents and
 * length may be changed only while the caller holds the only reference (fill
 * it, then share it); once shared, the payload is read-only for every
 * holder (debug builds assert this), and only one thread at a time may use
 * the headroom: in the gateway, the event loop that writes to the sockets.
 *
 * Threads: a pool may be used from any number of threads at once (a mutex per
 * class, atomic refcounts).  A buffer may be allocated on one thread and
 * referenced and released on others, e.g. filled by the AMQP consumer thread
 * and released by the event loop after its last write.  Hand a buffer to
 * another thread through something that synchronises (a locked queue): that
 * is what makes its contents visible there.  Only im_bufpool_new and
 * im_bufpool_free must not run concurrently with other use of the pool.
 */
#ifndef IM_BUF_H
#define IM_BUF_H

#include <stddef.h>
#include <stdint.h>

#include "im_err.h"

/* Bytes of headroom in front of every payload; a multiple of IM_BUF_ALIGN.
 * libwebsockets 4.1 needs LWS_PRE = 16. */
#define IM_BUF_HEADROOM 32
/* Alignment of every payload (and so of the headroom's first byte). */
#define IM_BUF_ALIGN       16
#define IM_BUF_MAX_CLASSES 8
/* The largest class size a configuration may ask for (1 GiB). */
#define IM_BUF_SIZE_LIMIT ((size_t)1 << 30)

typedef struct im_buf_s im_buf_t;
typedef struct im_bufpool_s im_bufpool_t;

typedef struct im_bufclass_config_s {
    size_t size;     /* payload capacity in bytes: > 0, <= IM_BUF_SIZE_LIMIT */
    size_t max;      /* most buffers this class will ever hold: > 0 */
    size_t prealloc; /* buffers allocated by im_bufpool_new: <= max */
    size_t grow;     /* buffers per slab when the class grows: > 0 */
} im_bufclass_config_t;

/* classes[0 .. nclasses-1] in strictly increasing size order. */
typedef struct im_bufpool_config_s {
    size_t nclasses; /* 1 .. IM_BUF_MAX_CLASSES */
    im_bufclass_config_t classes[IM_BUF_MAX_CLASSES];
} im_bufpool_config_t;

typedef struct im_bufclass_stats_s {
    size_t size;        /* payload capacity */
    size_t max;         /* configured limit */
    size_t allocated;   /* buffers carved from slabs so far (<= max; never shrinks) */
    size_t in_use;      /* buffers currently referenced */
    size_t high_water;  /* the largest in_use seen */
    size_t bytes;       /* memory held by this class's slabs */
    uint64_t exhausted; /* allocations refused because in_use was max */
} im_bufclass_stats_t;

typedef struct im_bufpool_stats_s {
    size_t nclasses;
    im_bufclass_stats_t classes[IM_BUF_MAX_CLASSES];
    size_t in_use;      /* sum over classes */
    size_t bytes;       /* sum over classes */
    uint64_t exhausted; /* sum over classes */
    uint64_t oversize;  /* requests larger than the largest class */
    uint64_t heap;      /* buffers im_buf_alloc_any took from the heap instead */
} im_bufpool_stats_t;

/* Fills cfg with the defaults, for callers that want to tune a few fields:
 *   size    256    1K     4K    16K   64K
 *   max     65536  16384  4096  1024  256   (about 16 MiB of payload each)
 *   prealloc/grow 1024, 256, 64, 16, 4      (about 1.4 MiB up front)
 * Any thread. */
void im_bufpool_config_default(im_bufpool_config_t *cfg);

/* Makes a pool from cfg (copied; NULL = the defaults) and allocates every
 * class's prealloc slab.  Returns NULL only if cfg breaks a rule stated in
 * the config structs above (a programming or configuration error).  Free it
 * with im_bufpool_free. */
im_bufpool_t *im_bufpool_new(const im_bufpool_config_t *cfg);

/* Frees the pool and all its memory.  NULL is fine.  Precondition: every
 * buffer has been released (stats in_use == 0; debug builds assert it): a
 * buffer still referenced would point into freed memory.  No other thread
 * may be using the pool. */
void im_bufpool_free(im_bufpool_t *pool);

/* A buffer of at least payload_size bytes (0 is fine: the smallest class)
 * holding one reference owned by the caller, with len 0; its contents and
 * headroom are uninitialised.  NULL when the fitting class is exhausted or
 * payload_size is above the largest class (see the top of this file).
 * Never calls malloc unless the class has to grow.  Any thread. */
im_buf_t *im_buf_alloc(im_bufpool_t *pool, size_t payload_size);

/* As im_buf_alloc, but when the fitting class is exhausted or payload_size is
 * above the largest class, a buffer from im_malloc (counted in `heap`, also
 * in `exhausted` or `oversize`), freed by its last im_buf_unref.  For callers
 * whose memory is bounded elsewhere (the gateway's per-connection send queue
 * limit), so a full pool slows them instead of losing a frame.  NULL only
 * when payload_size is above IM_BUF_SIZE_LIMIT.  Any thread. */
im_buf_t *im_buf_alloc_any(im_bufpool_t *pool, size_t payload_size);

/* Adds a reference to b (which the caller holds) and returns b, so a
 * fan-out loop reads queue_push(conn, im_buf_ref(b)).  Any thread. */
im_buf_t *im_buf_ref(im_buf_t *b);

/* Drops one reference; the last one returns b to its class's free list, so
 * b must not be used afterwards.  NULL is fine.  Any thread. */
void im_buf_unref(im_buf_t *b);

/* The payload's first byte.  The IM_BUF_HEADROOM bytes before it are the
 * headroom, the im_buf_cap() bytes from it the payload. */
char *im_buf_data(im_buf_t *b);

/* Bytes of valid payload (set by im_buf_set_len / im_buf_append). */
size_t im_buf_len(const im_buf_t *b);

/* Payload capacity: the size of b's class, so >= the size asked for. */
size_t im_buf_cap(const im_buf_t *b);

/* Sets the valid length after writing into im_buf_data() directly.
 * IM_ERANGE (b unchanged) if len > im_buf_cap(b).  Sole holder only. */
im_err_t im_buf_set_len(im_buf_t *b, size_t len);

/* Copies n bytes from p after the valid payload.  IM_ERANGE (b unchanged)
 * if they do not all fit.  p must be valid even when n is 0.  Sole holder
 * only. */
im_err_t im_buf_append(im_buf_t *b, const void *p, size_t n);

/* A snapshot of the pool's counters.  Each class is read consistently, but
 * classes one after another, so totals may mix moments while other threads
 * run.  Any thread. */
void im_bufpool_stats(const im_bufpool_t *pool, im_bufpool_stats_t *out);

#endif
