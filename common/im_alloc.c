#include "im_alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static im_allocator_t alloc = {malloc, calloc, realloc, free};
static im_oom_handler_t oom_handler;

static void default_oom(size_t size)
{
    fprintf(stderr, "im: out of memory allocating %zu bytes\n", size);
    fflush(stderr);
    abort();
}

/* The single place where allocation failure is handled. */
static void *oom(size_t size, void *(*retry)(void *, size_t), void *arg)
{
    void *p;

    (oom_handler ? oom_handler : default_oom)(size);
    p = retry(arg, size);
    if (p == NULL)
        default_oom(size);
    return p;
}

static void *retry_malloc(void *arg, size_t size)
{
    (void)arg;
    return alloc.malloc_fn(size);
}

static void *retry_realloc(void *arg, size_t size)
{
    return alloc.realloc_fn(arg, size);
}

void *im_malloc(size_t size)
{
    void *p = alloc.malloc_fn(size ? size : 1);
    return p ? p : oom(size, retry_malloc, NULL);
}

void *im_calloc(size_t count, size_t size)
{
    void *p;

    if (size && count > (size_t)-1 / size)
        default_oom((size_t)-1);
    p = alloc.calloc_fn(count ? count : 1, size ? size : 1);
    if (p == NULL) {
        p = oom(count * size, retry_malloc, NULL);
        memset(p, 0, count * size);
    }
    return p;
}

void *im_realloc(void *ptr, size_t size)
{
    void *p = alloc.realloc_fn(ptr, size ? size : 1);
    return p ? p : oom(size, retry_realloc, ptr);
}

char *im_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = im_malloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *im_strdup(const char *s)
{
    return im_strndup(s, strlen(s));
}

void im_free(void *ptr)
{
    if (ptr)
        alloc.free_fn(ptr);
}

void im_set_allocator(const im_allocator_t *a)
{
    if (a)
        alloc = *a;
    else
        alloc = (im_allocator_t){malloc, calloc, realloc, free};
}

void im_set_oom_handler(im_oom_handler_t h)
{
    oom_handler = h;
}
