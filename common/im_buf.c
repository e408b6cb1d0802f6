#include "im_buf.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "im_alloc.h"

#define ALIGN_UP(n, a) (((n) + (a)-1) / (a) * (a))

_Static_assert(IM_BUF_HEADROOM % IM_BUF_ALIGN == 0, "headroom must keep the payload aligned");
_Static_assert(IM_BUF_HEADROOM >= 16, "libwebsockets 4.1 needs LWS_PRE (16) bytes of headroom");

struct im_buf_s {
    atomic_uint refs; /* 0 while on the free list */
    uint32_t cls;
    size_t len;
    size_t cap;
    im_bufpool_t *pool;
    im_buf_t *next_free;
};

/* Header rounded up so that header + headroom keeps the payload aligned. */
#define HDR_SIZE ALIGN_UP(sizeof(im_buf_t), IM_BUF_ALIGN)

/* Slabs are chained through their first bytes so im_bufpool_free finds them. */
typedef struct slab_s {
    struct slab_s *next;
} slab_t;

/* Room in front of the first buffer of a slab: the chain pointer, and
 * padding to align the buffers even if the allocator gives less than
 * IM_BUF_ALIGN. */
#define SLAB_OVERHEAD (sizeof(slab_t) + IM_BUF_ALIGN - 1)

typedef struct bufclass_s {
    pthread_mutex_t lock;
    im_buf_t *free; /* LIFO, so the buffer reused next is the one warmest in cache */
    slab_t *slabs;
    size_t size;
    size_t stride; /* bytes from one buffer's header to the next */
    size_t max;
    size_t grow;
    size_t count; /* buffers carved so far */
    size_t in_use;
    size_t high_water;
    size_t bytes;
    uint64_t exhausted;
} bufclass_t;

struct im_bufpool_s {
    size_t nclasses;
    bufclass_t classes[IM_BUF_MAX_CLASSES];
    atomic_uint_least64_t oversize; /* no class lock covers it */
    atomic_uint_least64_t heap;
};

static const im_bufpool_config_t default_config = {
    5,
    {
        {256, 65536, 1024, 1024},
        {1024, 16384, 256, 256},
        {4096, 4096, 64, 64},
        {16384, 1024, 16, 16},
        {65536, 256, 4, 4},
    },
};

/* Debug check that nobody writes to a buffer other holders can see. */
#define ASSERT_SOLE_HOLDER(b)                                                                      \
    assert(atomic_load_explicit(&(b)->refs, memory_order_relaxed) == 1 &&                          \
           "a shared buffer is read-only")

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

static size_t stride_of(size_t size)
{
    return ALIGN_UP(HDR_SIZE + IM_BUF_HEADROOM + size, IM_BUF_ALIGN);
}

static int slab_fits(size_t stride, size_t n)
{
    return n <= (SIZE_MAX - SLAB_OVERHEAD) / stride;
}

static int class_config_valid(const im_bufclass_config_t *cc, size_t prev_size)
{
    size_t largest_slab;

    if (cc->size == 0 || cc->size > IM_BUF_SIZE_LIMIT || cc->size <= prev_size)
        return 0;
    if (cc->max == 0 || cc->prealloc > cc->max || cc->grow == 0)
        return 0;
    largest_slab = min_size(cc->prealloc > cc->grow ? cc->prealloc : cc->grow, cc->max);
    return slab_fits(stride_of(cc->size), largest_slab);
}

static int config_valid(const im_bufpool_config_t *cfg)
{
    size_t prev_size = 0;

    if (cfg->nclasses == 0 || cfg->nclasses > IM_BUF_MAX_CLASSES)
        return 0;
    for (size_t i = 0; i < cfg->nclasses; i++) {
        if (!class_config_valid(&cfg->classes[i], prev_size))
            return 0;
        prev_size = cfg->classes[i].size;
    }
    return 1;
}

/* Carves n more buffers out of one new allocation.  Runs with c->lock held
 * (or before the pool is shared): growth is the rare path, and holding the
 * lock keeps count <= max exact without a second check. */
static void class_grow(im_bufpool_t *pool, bufclass_t *c, size_t n)
{
    size_t bytes = SLAB_OVERHEAD + n * c->stride;
    slab_t *slab = im_malloc(bytes);
    uintptr_t first = ALIGN_UP((uintptr_t)(slab + 1), IM_BUF_ALIGN);
    uint32_t cls = (uint32_t)(c - pool->classes);

    slab->next = c->slabs;
    c->slabs = slab;
    /* Pushed back to front so the free list hands buffers out in address order. */
    for (size_t i = n; i-- > 0;) {
        im_buf_t *b = (im_buf_t *)(first + i * c->stride);

        atomic_init(&b->refs, 0);
        b->cls = cls;
        b->cap = c->size;
        b->pool = pool;
        b->next_free = c->free;
        c->free = b;
    }
    c->count += n;
    c->bytes += bytes;
}

static void class_init(im_bufpool_t *pool, bufclass_t *c, const im_bufclass_config_t *cc)
{
    pthread_mutex_init(&c->lock, NULL);
    c->size = cc->size;
    c->stride = stride_of(cc->size);
    c->max = cc->max;
    c->grow = cc->grow;
    if (cc->prealloc > 0)
        class_grow(pool, c, cc->prealloc);
}

static void class_destroy(bufclass_t *c)
{
    assert(c->in_use == 0 && "im_bufpool_free with buffers still referenced");
    while (c->slabs != NULL) {
        slab_t *next = c->slabs->next;

        im_free(c->slabs);
        c->slabs = next;
    }
    pthread_mutex_destroy(&c->lock);
}

void im_bufpool_config_default(im_bufpool_config_t *cfg)
{
    *cfg = default_config;
}

im_bufpool_t *im_bufpool_new(const im_bufpool_config_t *cfg)
{
    im_bufpool_t *pool;

    if (cfg == NULL)
        cfg = &default_config;
    if (!config_valid(cfg))
        return NULL;
    pool = im_calloc(1, sizeof(*pool));
    pool->nclasses = cfg->nclasses;
    atomic_init(&pool->oversize, 0);
    atomic_init(&pool->heap, 0);
    for (size_t i = 0; i < cfg->nclasses; i++)
        class_init(pool, &pool->classes[i], &cfg->classes[i]);
    return pool;
}

void im_bufpool_free(im_bufpool_t *pool)
{
    if (pool == NULL)
        return;
    for (size_t i = 0; i < pool->nclasses; i++)
        class_destroy(&pool->classes[i]);
    im_free(pool);
}

/* A linear scan: there are at most IM_BUF_MAX_CLASSES, and the small classes
 * that serve most chat messages come first. */
static bufclass_t *class_for(im_bufpool_t *pool, size_t size)
{
    for (size_t i = 0; i < pool->nclasses; i++)
        if (size <= pool->classes[i].size)
            return &pool->classes[i];
    return NULL;
}

static im_buf_t *class_take(im_bufpool_t *pool, bufclass_t *c)
{
    im_buf_t *b;

    pthread_mutex_lock(&c->lock);
    if (c->free == NULL && c->count < c->max)
        class_grow(pool, c, min_size(c->grow, c->max - c->count));
    b = c->free;
    if (b != NULL) {
        c->free = b->next_free;
        if (++c->in_use > c->high_water)
            c->high_water = c->in_use;
    } else {
        c->exhausted++;
    }
    pthread_mutex_unlock(&c->lock);
    return b;
}

static void class_put(bufclass_t *c, im_buf_t *b)
{
    pthread_mutex_lock(&c->lock);
    b->next_free = c->free;
    c->free = b;
    c->in_use--;
    pthread_mutex_unlock(&c->lock);
}

im_buf_t *im_buf_alloc(im_bufpool_t *pool, size_t payload_size)
{
    bufclass_t *c = class_for(pool, payload_size);
    im_buf_t *b;

    if (c == NULL) {
        atomic_fetch_add_explicit(&pool->oversize, 1, memory_order_relaxed);
        return NULL;
    }
    b = class_take(pool, c);
    if (b != NULL) {
        atomic_store_explicit(&b->refs, 1, memory_order_relaxed);
        b->len = 0;
    }
    return b;
}

#define HEAP_CLASS UINT32_MAX /* cls of a buffer from im_malloc */

im_buf_t *im_buf_alloc_any(im_bufpool_t *pool, size_t payload_size)
{
    im_buf_t *b = im_buf_alloc(pool, payload_size);

    if (b != NULL)
        return b;
    if (payload_size > IM_BUF_SIZE_LIMIT)
        return NULL;
    b = im_malloc(HDR_SIZE + IM_BUF_HEADROOM + payload_size);
    atomic_init(&b->refs, 1);
    b->cls = HEAP_CLASS;
    b->len = 0;
    b->cap = payload_size;
    b->pool = pool;
    b->next_free = NULL;
    atomic_fetch_add_explicit(&pool->heap, 1, memory_order_relaxed);
    return b;
}

/* Relaxed is enough: the caller already holds a reference, so the buffer
 * cannot be released concurrently, and handing the new reference to another
 * thread is synchronised by whatever does the handing. */
im_buf_t *im_buf_ref(im_buf_t *b)
{
    unsigned prev = atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);

    assert(prev > 0 && "im_buf_ref of a released buffer");
    (void)prev;
    return b;
}

/* acq_rel: the release half orders this holder's reads of the payload before
 * its decrement; the acquire half makes the last holder see every other
 * holder's decrement (and so their reads) before the buffer is reused.  An
 * acquire fence after a release decrement would be cheaper on some CPUs, but
 * ThreadSanitizer does not model fences. */
void im_buf_unref(im_buf_t *b)
{
    unsigned prev;

    if (b == NULL)
        return;
    prev = atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel);
    assert(prev > 0 && "im_buf_unref of a released buffer");
    if (prev == 1 && b->cls == HEAP_CLASS)
        im_free(b);
    else if (prev == 1)
        class_put(&b->pool->classes[b->cls], b);
}

char *im_buf_data(im_buf_t *b)
{
    return (char *)b + HDR_SIZE + IM_BUF_HEADROOM;
}

size_t im_buf_len(const im_buf_t *b)
{
    return b->len;
}

size_t im_buf_cap(const im_buf_t *b)
{
    return b->cap;
}

im_err_t im_buf_set_len(im_buf_t *b, size_t len)
{
    ASSERT_SOLE_HOLDER(b);
    if (len > b->cap)
        return IM_ERANGE;
    b->len = len;
    return IM_OK;
}

im_err_t im_buf_append(im_buf_t *b, const void *p, size_t n)
{
    ASSERT_SOLE_HOLDER(b);
    if (n > b->cap - b->len)
        return IM_ERANGE;
    memcpy(im_buf_data(b) + b->len, p, n);
    b->len += n;
    return IM_OK;
}

static void class_stats(const bufclass_t *c, im_bufclass_stats_t *out)
{
    /* Taking the lock does not change anything a caller can observe, so the
     * pool stays logically const (C++ would call the mutex `mutable`). */
    pthread_mutex_t *lock = (pthread_mutex_t *)&c->lock;

    pthread_mutex_lock(lock);
    out->size = c->size;
    out->max = c->max;
    out->allocated = c->count;
    out->in_use = c->in_use;
    out->high_water = c->high_water;
    out->bytes = c->bytes;
    out->exhausted = c->exhausted;
    pthread_mutex_unlock(lock);
}

void im_bufpool_stats(const im_bufpool_t *pool, im_bufpool_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->nclasses = pool->nclasses;
    for (size_t i = 0; i < pool->nclasses; i++) {
        im_bufclass_stats_t *cs = &out->classes[i];

        class_stats(&pool->classes[i], cs);
        out->in_use += cs->in_use;
        out->bytes += cs->bytes;
        out->exhausted += cs->exhausted;
    }
    out->oversize = atomic_load_explicit(&pool->oversize, memory_order_relaxed);
    out->heap = atomic_load_explicit(&pool->heap, memory_order_relaxed);
}
