/* Reduction kernels (core/reduce.h) against scalar references written
 * here: every op on every type, 16-bit accumulation in f32 with one
 * rounding, integer wrap-around, NaN in max/min, and argument checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "core/dtype.h"
#include "core/reduce.h"

#define N 1000 /* not a multiple of the kernels' chunk */

static void test_f32_all_ops(void **state)
{
    (void)state;
    static float a[N], b[N], acc[N], out[N];
    for (int op = MOX_OP_SUM; op <= MOX_OP_AVG; op++) {
        for (int i = 0; i < N; i++) {
            a[i] = (float)(i % 17) - 8.5f;
            b[i] = (float)(i % 5) * 0.25f + 0.5f;
        }
        mox__reduce_init(MOX_DTYPE_F32, acc, MOX_DTYPE_F32, a, N);
        mox__reduce_apply((mox_op_t)op, MOX_DTYPE_F32, acc, MOX_DTYPE_F32, b,
                          N);
        mox__reduce_finish((mox_op_t)op, MOX_DTYPE_F32, out, acc, N, 2);
        for (int i = 0; i < N; i++) {
            float want = op == MOX_OP_SUM ? a[i] + b[i]
                       : op == MOX_OP_PROD ? a[i] * b[i]
                       : op == MOX_OP_MAX ? fmaxf(a[i], b[i])
                       : op == MOX_OP_MIN ? fminf(a[i], b[i])
                                          : (a[i] + b[i]) / 2;
            assert_true(out[i] == want);
        }
    }
}

/* bf16: three values whose bf16 partial sums would round differently than
 * one f32 sum rounded once. */
static void test_bf16_rounds_once(void **state)
{
    (void)state;
    uint16_t x[3] = {mox__f32_to_bf16(1.0f), mox__f32_to_bf16(0x1p-8f),
                     mox__f32_to_bf16(0x1p-8f)};
    float acc[1];
    uint16_t out;
    mox__reduce_init(MOX_DTYPE_F32, acc, MOX_DTYPE_BF16, &x[0], 1);
    mox__reduce_apply(MOX_OP_SUM, MOX_DTYPE_F32, acc, MOX_DTYPE_BF16, &x[1], 1);
    mox__reduce_apply(MOX_OP_SUM, MOX_DTYPE_F32, acc, MOX_DTYPE_BF16, &x[2], 1);
    mox__reduce_finish(MOX_OP_SUM, MOX_DTYPE_BF16, &out, acc, 1, 3);
    /* Once: 1 + 2^-7 is exact in bf16. Twice: 1 + 2^-8 ties to 1, twice. */
    assert_int_equal(out, mox__f32_to_bf16(1.0f + 0x1p-7f));
}

static void test_f16_max_min_prod(void **state)
{
    (void)state;
    uint16_t a[N], b[N], out[N];
    float acc[N];
    for (int op = MOX_OP_PROD; op <= MOX_OP_MIN; op++) {
        for (int i = 0; i < N; i++) {
            a[i] = mox__f32_to_f16((float)(i % 13) * 0.5f - 3);
            b[i] = mox__f32_to_f16((float)(i % 7) - 2.75f);
        }
        mox__reduce_init(MOX_DTYPE_F32, acc, MOX_DTYPE_F16, a, N);
        mox__reduce_apply((mox_op_t)op, MOX_DTYPE_F32, acc, MOX_DTYPE_F16, b,
                          N);
        mox__reduce_finish((mox_op_t)op, MOX_DTYPE_F16, out, acc, N, 2);
        for (int i = 0; i < N; i++) {
            float x = mox__f16_to_f32(a[i]), y = mox__f16_to_f32(b[i]);
            float want = op == MOX_OP_PROD ? x * y : op == MOX_OP_MAX
                                                         ? fmaxf(x, y)
                                                         : fminf(x, y);
            assert_int_equal(out[i], mox__f32_to_f16(want));
        }
    }
}

static void test_int_wrap(void **state)
{
    (void)state;
    int32_t a[3] = {INT32_MAX, INT32_MIN, -7}, b[3] = {1, -1, 3};
    mox__reduce_apply(MOX_OP_SUM, MOX_DTYPE_I32, a, MOX_DTYPE_I32, b, 3);
    assert_int_equal(a[0], INT32_MIN);
    assert_int_equal(a[1], INT32_MAX);
    assert_int_equal(a[2], -4);
    uint8_t u[2] = {200, 16}, v[2] = {100, 16};
    mox__reduce_apply(MOX_OP_PROD, MOX_DTYPE_U8, u, MOX_DTYPE_U8, v, 2);
    assert_int_equal(u[0], (uint8_t)(200 * 100));
    assert_int_equal(u[1], 0);
    int64_t p[2] = {-5, 9}, q[2] = {3, -9};
    mox__reduce_apply(MOX_OP_MAX, MOX_DTYPE_I64, p, MOX_DTYPE_I64, q, 2);
    assert_true(p[0] == 3 && p[1] == 9);
    mox__reduce_apply(MOX_OP_MIN, MOX_DTYPE_I64, p, MOX_DTYPE_I64, q, 2);
    assert_true(p[0] == 3 && p[1] == -9);
}

static void test_nan_propagates(void **state)
{
    (void)state;
    double a[2] = {NAN, 1.0}, b[2] = {2.0, NAN};
    mox__reduce_apply(MOX_OP_MAX, MOX_DTYPE_F64, a, MOX_DTYPE_F64, b, 2);
    assert_true(isnan(a[0]) && isnan(a[1]));
}

static void test_avg_f64_and_check(void **state)
{
    (void)state;
    double acc[1] = {10.0}, out[1];
    mox__reduce_finish(MOX_OP_AVG, MOX_DTYPE_F64, out, acc, 1, 4);
    assert_true(out[0] == 2.5);
    char err[128];
    assert_int_equal(mox__reduce_check(MOX_DTYPE_I32, MOX_OP_AVG, err,
                                       sizeof err), MOX_ERR_INVALID_ARG);
    assert_non_null(strstr(err, "avg"));
    assert_int_equal(mox__reduce_check((mox_dtype_t)9, MOX_OP_SUM, err,
                                       sizeof err), MOX_ERR_INVALID_ARG);
    assert_int_equal(mox__reduce_check(MOX_DTYPE_F32, 5, err, sizeof err),
                     MOX_ERR_INVALID_ARG);
    assert_int_equal(mox__reduce_check(MOX_DTYPE_BF16, MOX_OP_AVG, err,
                                       sizeof err), MOX_OK);
    assert_int_equal(mox__reduce_acc_type(MOX_DTYPE_BF16), MOX_DTYPE_F32);
    assert_int_equal(mox__reduce_acc_type(MOX_DTYPE_I64), MOX_DTYPE_I64);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_all_ops),
        cmocka_unit_test(test_bf16_rounds_once),
        cmocka_unit_test(test_f16_max_min_prod),
        cmocka_unit_test(test_int_wrap),
        cmocka_unit_test(test_nan_propagates),
        cmocka_unit_test(test_avg_f64_and_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
