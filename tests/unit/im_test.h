/*
 * im_test.h - a tiny unit-test harness (libuv-style ASSERT_* that print both
 * values).  A failed assertion abandons the current test (longjmp back to the
 * runner) and the runner moves on to the next one.
 *
 *   TEST(wheel_add) { ASSERT_EQ(1 + 1, 2); }
 *   int main(void) { RUN(wheel_add); return im_test_done(); }
 *
 * im_test_done() prints "N passed, N failed" and returns the exit status.
 */
#ifndef IM_TEST_H
#define IM_TEST_H

#include <inttypes.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

static jmp_buf im__test_jmp __attribute__((unused));
static int im__test_pass, im__test_fail;

#define TEST(name) static void name(void)

#define RUN(name)                                                                      \
    do {                                                                               \
        if (setjmp(im__test_jmp) == 0) {                                               \
            name();                                                                    \
            im__test_pass++;                                                           \
            printf("ok   %s\n", #name);                                                \
        } else {                                                                       \
            im__test_fail++;                                                           \
            printf("FAIL %s\n", #name);                                                \
        }                                                                              \
        fflush(stdout);                                                                \
    } while (0)

#define IM__FAIL(...)                                                                  \
    do {                                                                               \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                \
        fprintf(stderr, __VA_ARGS__);                                                  \
        fputc('\n', stderr);                                                           \
        fflush(stderr);                                                                \
        longjmp(im__test_jmp, 1);                                                      \
    } while (0)

#define IM__ASSERT_CMP(a, op, b)                                                       \
    do {                                                                               \
        long long im__a = (long long)(a), im__b = (long long)(b);                      \
        if (!(im__a op im__b))                                                         \
            IM__FAIL("ASSERT(%s %s %s) failed: %lld vs %lld", #a, #op, #b, im__a,      \
                     im__b);                                                           \
    } while (0)

#define ASSERT_EQ(a, b) IM__ASSERT_CMP(a, ==, b)
#define ASSERT_NE(a, b) IM__ASSERT_CMP(a, !=, b)
#define ASSERT_LT(a, b) IM__ASSERT_CMP(a, <, b)
#define ASSERT_LE(a, b) IM__ASSERT_CMP(a, <=, b)
#define ASSERT_GT(a, b) IM__ASSERT_CMP(a, >, b)
#define ASSERT_GE(a, b) IM__ASSERT_CMP(a, >=, b)

#define ASSERT_U64_EQ(a, b)                                                            \
    do {                                                                               \
        uint64_t im__a = (uint64_t)(a), im__b = (uint64_t)(b);                         \
        if (im__a != im__b)                                                            \
            IM__FAIL("ASSERT_U64_EQ(%s, %s) failed: %" PRIu64 " vs %" PRIu64, #a, #b,  \
                     im__a, im__b);                                                    \
    } while (0)

#define ASSERT_TRUE(x)                                                                 \
    do {                                                                               \
        if (!(x))                                                                      \
            IM__FAIL("ASSERT_TRUE(%s) failed", #x);                                    \
    } while (0)

#define ASSERT_NULL(p)                                                                 \
    do {                                                                               \
        const void *im__p = (p);                                                       \
        if (im__p != NULL)                                                             \
            IM__FAIL("ASSERT_NULL(%s) failed: %p", #p, im__p);                         \
    } while (0)

#define ASSERT_NOT_NULL(p)                                                             \
    do {                                                                               \
        if ((p) == NULL)                                                               \
            IM__FAIL("ASSERT_NOT_NULL(%s) failed", #p);                                \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                            \
    do {                                                                               \
        const char *im__a = (a), *im__b = (b);                                         \
        if (im__a == NULL || im__b == NULL || strcmp(im__a, im__b) != 0)               \
            IM__FAIL("ASSERT_STR_EQ(%s, %s) failed: \"%s\" vs \"%s\"", #a, #b,         \
                     im__a ? im__a : "(null)", im__b ? im__b : "(null)");              \
    } while (0)

#define ASSERT_MEM_EQ(a, b, n)                                                         \
    do {                                                                               \
        if (memcmp((a), (b), (n)) != 0)                                                \
            IM__FAIL("ASSERT_MEM_EQ(%s, %s, %zu) failed: \"%.*s\" vs \"%.*s\"", #a,    \
                     #b, (size_t)(n), (int)(n), (const char *)(a), (int)(n),           \
                     (const char *)(b));                                               \
    } while (0)

static inline int im_test_done(void)
{
    printf("%d passed, %d failed\n", im__test_pass, im__test_fail);
    return im__test_fail ? 1 : 0;
}

#endif
