#include <stdlib.h>

#include "im_alloc.h"
#include "im_err.h"
#include "im_test.h"

static size_t n_malloc, n_free;
static int fail_next;
static size_t oom_size;

static void *counting_malloc(size_t n)
{
    if (fail_next) {
        fail_next--;
        return NULL;
    }
    n_malloc++;
    return malloc(n);
}

static void *counting_calloc(size_t c, size_t n)
{
    if (fail_next) {
        fail_next--;
        return NULL;
    }
    n_malloc++;
    return calloc(c, n);
}

static void *counting_realloc(void *p, size_t n)
{
    if (fail_next) {
        fail_next--;
        return NULL;
    }
    if (p == NULL)
        n_malloc++;
    return realloc(p, n);
}

static void counting_free(void *p)
{
    n_free++;
    free(p);
}

static const im_allocator_t counting = {counting_malloc, counting_calloc, counting_realloc,
                                        counting_free};

static void record_oom(size_t size)
{
    oom_size = size;
}

TEST(strerror_covers_every_code)
{
    ASSERT_STR_EQ(im_strerror(IM_OK), "ok");
    ASSERT_STR_EQ(im_strerror(IM_EUTF8), "invalid UTF-8");
    ASSERT_STR_EQ(im_errname(IM_EAGAIN), "IM_EAGAIN");
    ASSERT_STR_EQ(im_strerror(-9999), "unknown error");
    for (int e = 0; e >= IM_EHELP; e--) {
        ASSERT_NOT_NULL(im_strerror(e));
        ASSERT_TRUE(strcmp(im_strerror(e), "unknown error") != 0);
    }
}

TEST(replaced_allocator_is_used)
{
    char *s;

    n_malloc = n_free = 0;
    im_set_allocator(&counting);
    s = im_strdup("hello");
    ASSERT_STR_EQ(s, "hello");
    im_free(s);
    s = im_strndup("hello world", 5);
    ASSERT_STR_EQ(s, "hello");
    s = im_realloc(s, 64);
    im_free(s);
    im_free(NULL);
    im_set_allocator(NULL);
    ASSERT_EQ(n_malloc, 2);
    ASSERT_EQ(n_free, 2);
}

/* A failing allocation goes to the OOM handler once; the retry then succeeds. */
TEST(oom_handler_sees_failure_and_retry_succeeds)
{
    int *p;

    im_set_allocator(&counting);
    im_set_oom_handler(record_oom);
    fail_next = 1;
    oom_size = 0;
    p = im_calloc(10, sizeof(int));
    ASSERT_EQ(oom_size, 10 * sizeof(int));
    ASSERT_NOT_NULL(p);
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(p[i], 0);
    im_free(p);
    fail_next = 1;
    oom_size = 0;
    p = im_malloc(33);
    ASSERT_EQ(oom_size, 33);
    im_free(p);
    im_set_oom_handler(NULL);
    im_set_allocator(NULL);
}

int main(void)
{
    RUN(strerror_covers_every_code);
    RUN(replaced_allocator_is_used);
    RUN(oom_handler_sees_failure_and_retry_succeeds);
    return im_test_done();
}
