/* Reduction kernels (reduce.h). Each loop is written per (op, type) so the
 * compiler can vectorise it; 16-bit sources are widened to f32 in chunks
 * on the stack first. */
#include "reduce.h"
#include "dtype.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define CHUNK 256

mox_dtype_t mox__reduce_acc_type(mox_dtype_t t)
{
    return t == MOX_DTYPE_F16 || t == MOX_DTYPE_BF16 ? MOX_DTYPE_F32 : t;
}

const char *mox__op_name(int op)
{
    switch (op) {
    case MOX_OP_SUM: return "sum";
    case MOX_OP_PROD: return "prod";
    case MOX_OP_MAX: return "max";
    case MOX_OP_MIN: return "min";
    case MOX_OP_AVG: return "avg";
    }
    return "?";
}

mox_status_t mox__reduce_check(mox_dtype_t t, int op, char *errbuf,
                               size_t errlen)
{
    if (mox__dtype_size(t) == 0) {
        snprintf(errbuf, errlen, "unknown dtype %d", (int)t);
        return MOX_ERR_INVALID_ARG;
    }
    if (op < MOX_OP_SUM || op > MOX_OP_AVG) {
        snprintf(errbuf, errlen, "unknown op %d", op);
        return MOX_ERR_INVALID_ARG;
    }
    if (op == MOX_OP_AVG && !mox__dtype_is_float(t)) {
        snprintf(errbuf, errlen, "op avg is not defined for the integer "
                 "type %s (use sum and divide)", mox__dtype_name(t));
        return MOX_ERR_INVALID_ARG;
    }
    return MOX_OK;
}

void mox__reduce_init(mox_dtype_t acc_t, void *acc, mox_dtype_t src_t,
                      const void *src, size_t n)
{
    if (src_t == acc_t)
        memcpy(acc, src, n * mox__dtype_size(acc_t));
    else
        mox__to_f32(src_t, src, acc, n);
}

/* NaN-propagating max/min: a NaN on either side wins. */
#define MAXF(a, b) ((a) > (b) || (a) != (a) ? (a) : (b))
#define MINF(a, b) ((a) < (b) || (a) != (a) ? (a) : (b))
#define MAXI(a, b) ((a) > (b) ? (a) : (b))
#define MINI(a, b) ((a) < (b) ? (a) : (b))

/* One loop per (op, element type). Integer sum/prod run on the unsigned
 * type so that overflow wraps instead of being undefined. */
#define LOOP(T, U, EXPR)                                                       \
    do {                                                                       \
        T *restrict a_ = acc;                                                  \
        const T *restrict s_ = src;                                            \
        for (size_t i = 0; i < n; i++) {                                       \
            T x = a_[i], y = s_[i];                                            \
            (void)sizeof(U);                                                   \
            a_[i] = (EXPR);                                                    \
        }                                                                      \
    } while (0)

#define FLOAT_OPS(T)                                                           \
    switch (op) {                                                              \
    case MOX_OP_PROD: LOOP(T, T, x * y); return;                               \
    case MOX_OP_MAX: LOOP(T, T, MAXF(x, y)); return;                           \
    case MOX_OP_MIN: LOOP(T, T, MINF(x, y)); return;                           \
    default: LOOP(T, T, x + y); return;                                        \
    }

#define INT_OPS(T, U)                                                          \
    switch (op) {                                                              \
    case MOX_OP_PROD: LOOP(T, U, (T)((U)x * (U)y)); return;                    \
    case MOX_OP_MAX: LOOP(T, U, MAXI(x, y)); return;                           \
    case MOX_OP_MIN: LOOP(T, U, MINI(x, y)); return;                           \
    default: LOOP(T, U, (T)((U)x + (U)y)); return;                             \
    }

MOX_CLONES static void apply_same(mox_op_t op, mox_dtype_t t, void *acc, const void *src,
                       size_t n)
{
    switch (t) {
    case MOX_DTYPE_F32: FLOAT_OPS(float)
    case MOX_DTYPE_F64: FLOAT_OPS(double)
    case MOX_DTYPE_I32: INT_OPS(int32_t, uint32_t)
    case MOX_DTYPE_I64: INT_OPS(int64_t, uint64_t)
    case MOX_DTYPE_U8: INT_OPS(uint8_t, unsigned)
    default: return; /* 16-bit types never accumulate in themselves */
    }
}

void mox__reduce_apply(mox_op_t op, mox_dtype_t acc_t, void *acc,
                       mox_dtype_t src_t, const void *src, size_t n)
{
    if (src_t == acc_t) {
        apply_same(op, acc_t, acc, src, n);
        return;
    }
    if (op == MOX_OP_SUM || op == MOX_OP_AVG) {
        mox__accumulate_f32(src_t, src, acc, n);
        return;
    }
    float tmp[CHUNK];
    size_t esz = mox__dtype_size(src_t);
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        mox__to_f32(src_t, (const char *)src + i * esz, tmp, m);
        apply_same(op, MOX_DTYPE_F32, (float *)acc + i, tmp, m);
    }
}

void mox__reduce_finish(mox_op_t op, mox_dtype_t t, void *dst,
                        const void *acc, size_t n, int nranks)
{
    mox_dtype_t acc_t = mox__reduce_acc_type(t);
    if (op == MOX_OP_AVG && acc_t == MOX_DTYPE_F64) {
        const double *a = acc;
        double *d = dst;
        for (size_t i = 0; i < n; i++)
            d[i] = a[i] / nranks;
        return;
    }
    if (op == MOX_OP_AVG) {
        const float *a = acc;
        float tmp[CHUNK];
        float div = (float)nranks;
        for (size_t i = 0; i < n; i += CHUNK) {
            size_t m = n - i < CHUNK ? n - i : CHUNK;
            for (size_t k = 0; k < m; k++)
                tmp[k] = a[i + k] / div;
            mox__from_f32(t, tmp, (char *)dst + i * mox__dtype_size(t), m);
        }
        return;
    }
    if (acc_t == t) {
        if (dst != acc)
            memcpy(dst, acc, n * mox__dtype_size(t));
        return;
    }
    mox__from_f32(t, acc, dst, n);
}
