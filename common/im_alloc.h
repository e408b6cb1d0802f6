/*
 * im_alloc.h - the project's allocator entry points.
 *
 * Allocation failure is handled in exactly one place (like redis zmalloc): the
 * out-of-memory handler, which by default logs and aborts.  So im_malloc() and
 * friends never return NULL for a non-zero size and callers do not check.
 *
 * Tests can swap the underlying functions (libuv's uv_replace_allocator) to
 * count allocations or inject failures, and swap the OOM handler to observe
 * them instead of aborting.
 */
#ifndef IM_ALLOC_H
#define IM_ALLOC_H

#include <stddef.h>

void *im_malloc(size_t size);
void *im_calloc(size_t count, size_t size);
void *im_realloc(void *ptr, size_t size);
char *im_strdup(const char *s);
char *im_strndup(const char *s, size_t n);
/* Frees memory from the functions above.  NULL is fine. */
void im_free(void *ptr);

typedef struct im_allocator_s {
    void *(*malloc_fn)(size_t);
    void *(*calloc_fn)(size_t, size_t);
    void *(*realloc_fn)(void *, size_t);
    void (*free_fn)(void *);
} im_allocator_t;

/* Replace the allocator (NULL restores libc).  Call before any allocation is
 * made, or only free memory with the allocator that made it.  Not thread-safe. */
void im_set_allocator(const im_allocator_t *a);

/* Called with the requested size when an allocation fails.  If it returns, the
 * allocation is retried once and, if it fails again, the process aborts.
 * NULL restores the default (log + abort). */
typedef void (*im_oom_handler_t)(size_t size);
void im_set_oom_handler(im_oom_handler_t h);

#endif
