/* The communicator's scratch cache: reuse, best fit, the byte limit,
 * eviction order, disabling it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/comm.h"
#include "core/scratch.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

static mox__comm_t *comm_with_limit(size_t limit)
{
    mox__comm_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->cfg.scratch_cache = (int64_t)limit;
    return c;
}

static void done(mox__comm_t *c)
{
    mox__scratch_fini(c);
    assert_int_equal(c->scratch.n, 0);
    assert_int_equal(c->scratch.bytes, 0);
    free(c);
}

static void a_buffer_given_back_serves_the_next_call(void **state)
{
    (void)state;
    mox__comm_t *c = comm_with_limit(64 * MiB);
    char *a = mox__scratch_get(c, 3 * MiB);
    assert_non_null(a);
    assert_int_equal((uintptr_t)a % 64, 0);
    memset(a, 0x5a, 3 * MiB); /* all of it is writable */
    mox__scratch_put(c, a);
    assert_int_equal(c->scratch.n, 1);
    assert_true(c->scratch.bytes >= 3 * MiB);
    /* A slightly smaller request gets the same memory, and it leaves the
     * cache while in use. */
    char *b = mox__scratch_get(c, 3 * MiB - 100);
    assert_ptr_equal(a, b);
    assert_int_equal(c->scratch.n, 0);
    /* A second buffer in use at once is a different one. */
    char *d = mox__scratch_get(c, 3 * MiB);
    assert_ptr_not_equal(b, d);
    mox__scratch_put(c, b);
    mox__scratch_put(c, d);
    assert_int_equal(c->scratch.n, 2);
    done(c);
}

static void the_smallest_buffer_that_fits_is_chosen(void **state)
{
    (void)state;
    mox__comm_t *c = comm_with_limit(64 * MiB);
    char *big = mox__scratch_get(c, 8 * MiB);
    char *mid = mox__scratch_get(c, 2 * MiB);
    char *small = mox__scratch_get(c, 512 * KiB);
    mox__scratch_put(c, big);
    mox__scratch_put(c, small);
    mox__scratch_put(c, mid);
    assert_ptr_equal(mox__scratch_get(c, 1 * MiB), mid);
    assert_ptr_equal(mox__scratch_get(c, 100 * KiB), small);
    /* Nothing kept fits 9 MiB: a new buffer, the 8 MiB one stays. */
    char *huge = mox__scratch_get(c, 9 * MiB);
    assert_ptr_not_equal(huge, big);
    assert_int_equal(c->scratch.n, 1);
    mox__scratch_put(c, huge);
    mox__scratch_put(c, mid);
    mox__scratch_put(c, small);
    done(c);
}

static void the_cache_stays_within_its_limit(void **state)
{
    (void)state;
    mox__comm_t *c = comm_with_limit(10 * MiB);
    char *p[4];
    for (int i = 0; i < 4; i++)
        p[i] = mox__scratch_get(c, (size_t)(i + 1) * MiB); /* 1..4 MiB */
    char *over = mox__scratch_get(c, 11 * MiB);
    mox__scratch_put(c, over); /* larger than the limit: freed */
    assert_int_equal(c->scratch.n, 0);
    for (int i = 0; i < 4; i++) {
        mox__scratch_put(c, p[i]);
        assert_true(c->scratch.bytes <= 10 * MiB);
    }
    /* 1 + 2 + 3 fit in 10 MiB; adding 4 evicts the smallest first (1), so
     * 2, 3 and 4 are kept. */
    assert_int_equal(c->scratch.n, 3);
    for (int i = 0; i < c->scratch.n; i++)
        assert_true(c->scratch.cap[i] >= 2 * MiB);
    /* A buffer that does not fit and is smaller than everything kept (2,
     * 3 and 4 MiB) does not push any out. */
    char *a = mox__scratch_get(c, 2 * MiB);
    char *b = mox__scratch_get(c, 3 * MiB);
    char *d = mox__scratch_get(c, 4 * MiB);
    assert_int_equal(c->scratch.n, 0);
    char *tiny = mox__scratch_get(c, 1536 * KiB);
    mox__scratch_put(c, a);
    mox__scratch_put(c, b);
    mox__scratch_put(c, d);
    size_t before = c->scratch.bytes;
    mox__scratch_put(c, tiny);
    assert_int_equal(c->scratch.bytes, before);
    done(c);
}

static void small_buffers_and_a_zero_limit_bypass_the_cache(void **state)
{
    (void)state;
    mox__comm_t *c = comm_with_limit(64 * MiB);
    void *s = mox__scratch_get(c, 1000);
    void *z = mox__scratch_get(c, 0);
    assert_non_null(s);
    assert_non_null(z);
    mox__scratch_put(c, s);
    mox__scratch_put(c, z);
    mox__scratch_put(c, NULL);
    assert_int_equal(c->scratch.n, 0);
    done(c);
    c = comm_with_limit(0);
    void *l = mox__scratch_get(c, 4 * MiB);
    mox__scratch_put(c, l);
    assert_int_equal(c->scratch.n, 0);
    done(c);
}

static void at_most_the_slot_count_is_kept(void **state)
{
    (void)state;
    mox__comm_t *c = comm_with_limit(1024 * MiB);
    void *p[MOX_SCRATCH_SLOTS + 2];
    for (int i = 0; i < MOX_SCRATCH_SLOTS + 2; i++)
        p[i] = mox__scratch_get(c, (size_t)(i + 1) * 256 * KiB);
    for (int i = 0; i < MOX_SCRATCH_SLOTS + 2; i++)
        mox__scratch_put(c, p[i]);
    assert_int_equal(c->scratch.n, MOX_SCRATCH_SLOTS);
    /* The two smallest went. */
    for (int i = 0; i < c->scratch.n; i++)
        assert_true(c->scratch.cap[i] >= 3 * 256 * KiB);
    done(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(a_buffer_given_back_serves_the_next_call),
        cmocka_unit_test(the_smallest_buffer_that_fits_is_chosen),
        cmocka_unit_test(the_cache_stays_within_its_limit),
        cmocka_unit_test(small_buffers_and_a_zero_limit_bypass_the_cache),
        cmocka_unit_test(at_most_the_slot_count_is_kept),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
