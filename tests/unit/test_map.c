/* im_map: put/get/del against a reference array, growth, backward-shift
 * deletion keeping every remaining key reachable. */
#include <stdint.h>
#include <stdlib.h>

#include "im_map.h"
#include "im_test.h"

#define N 20000

TEST(put_get_replace_delete)
{
    im_map_t m;
    int vals[3] = {1, 2, 3};

    im_map_init(&m);
    ASSERT_TRUE(im_map_get(&m, 5) == NULL);
    ASSERT_TRUE(im_map_del(&m, 5) == NULL);
    ASSERT_TRUE(im_map_put(&m, 5, &vals[0]) == NULL);
    ASSERT_TRUE(im_map_put(&m, 5, &vals[1]) == &vals[0]);
    ASSERT_TRUE(im_map_get(&m, 5) == &vals[1]);
    ASSERT_EQ(m.len, 1);
    ASSERT_TRUE(im_map_del(&m, 5) == &vals[1]);
    ASSERT_EQ(m.len, 0);
    ASSERT_TRUE(im_map_get(&m, 5) == NULL);
    im_map_free(&m);
}

/* Random puts and deletes, checked after every step against an array. */
TEST(matches_a_reference_under_churn)
{
    static void *ref[N];
    im_map_t m;
    uint64_t k;
    void *v;
    size_t count = 0, seen = 0;

    im_map_init(&m);
    srand(7);
    for (int step = 0; step < 200000; step++) {
        uint64_t key = 1 + (uint64_t)(rand() % N);
        if (rand() % 3 == 0) {
            ASSERT_TRUE(im_map_del(&m, key) == ref[key - 1]);
            ref[key - 1] = NULL;
        } else {
            void *val = (void *)(uintptr_t)(step + 1);
            ASSERT_TRUE(im_map_put(&m, key, val) == ref[key - 1]);
            ref[key - 1] = val;
        }
        if (step % 1000 == 0)
            for (uint64_t j = 0; j < N; j++)
                ASSERT_TRUE(im_map_get(&m, j + 1) == ref[j]);
    }
    for (size_t j = 0; j < N; j++)
        count += ref[j] != NULL;
    ASSERT_EQ(m.len, count);
    IM_MAP_FOREACH(&m, k, v)
    {
        ASSERT_TRUE(ref[k - 1] == v);
        seen++;
    }
    ASSERT_EQ(seen, count);
    im_map_free(&m);
}

int main(void)
{
    RUN(put_get_replace_delete);
    RUN(matches_a_reference_under_churn);
    return im_test_done();
}
