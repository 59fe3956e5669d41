/*
 * Element types and float conversions (dtype.h). The derivations of the
 * rounding and of the fp8 error bounds are in docs/numerics.md.
 *
 * Every per-element function is branch-free (selects, not jumps) so the
 * array loops vectorise. GCC at -O2 only vectorises loops whose trip count
 * is a known multiple of the vector width, so the array entry points run
 * fixed-size chunks through always-inlined kernels and finish the tail with
 * the same kernel. Two conversions (f32 -> f16 and f32 -> e4m3 subnormals)
 * let the FPU do the rounding by adding a magic constant; they therefore
 * assume the default rounding mode (round to nearest even), as the rest of
 * the library does.
 */
#include "dtype.h"

#include <assert.h>
#include <string.h>

/* Elements per chunk: the kernels' trip count for the vectoriser. */
#define CHUNK 64

#define KERNEL static inline __attribute__((always_inline))

static inline uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* cond ? a : b with both sides evaluated. Written with masks because GCC
 * turns a ternary whose arm holds floating-point arithmetic back into a
 * branch (the arithmetic might trap), which stops vectorisation. */
static inline uint32_t sel(int cond, uint32_t a, uint32_t b)
{
    uint32_t m = 0u - (uint32_t)(cond != 0);
    return (a & m) | (b & ~m);
}

size_t mox__dtype_size(mox_dtype_t t)
{
    switch (t) {
    case MOX_DTYPE_U8: return 1;
    case MOX_DTYPE_F16:
    case MOX_DTYPE_BF16: return 2;
    case MOX_DTYPE_I32:
    case MOX_DTYPE_F32: return 4;
    case MOX_DTYPE_I64:
    case MOX_DTYPE_F64: return 8;
    }
    return 0;
}

const char *mox__dtype_name(mox_dtype_t t)
{
    switch (t) {
    case MOX_DTYPE_U8: return "u8";
    case MOX_DTYPE_I32: return "i32";
    case MOX_DTYPE_I64: return "i64";
    case MOX_DTYPE_F16: return "f16";
    case MOX_DTYPE_BF16: return "bf16";
    case MOX_DTYPE_F32: return "f32";
    case MOX_DTYPE_F64: return "f64";
    }
    return "?";
}

int mox__dtype_is_float(mox_dtype_t t)
{
    return t == MOX_DTYPE_F16 || t == MOX_DTYPE_BF16 || t == MOX_DTYPE_F32 ||
           t == MOX_DTYPE_F64;
}

/* ------------------------------------------------------------------ */
/* Scalar conversions                                                  */

/* bf16 is the top half of an f32: add 0x7fff plus the lowest kept bit and
 * truncate (round to nearest even; a carry into the exponent is the right
 * answer, up to infinity). NaNs keep sign and top payload, quiet bit set. */
KERNEL uint16_t bf16_from(float f)
{
    uint32_t u = f2u(f);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet = (u >> 16) | 0x0040u;
    int is_nan = (u & 0x7fffffffu) > 0x7f800000u;
    return (uint16_t)(is_nan ? quiet : rounded);
}

KERNEL float bf16_to(uint16_t h)
{
    return u2f((uint32_t)h << 16);
}

/*
 * f32 -> binary16 (after F. Giesen, "float_to_half_fast3_rtne"):
 * - |f| >= 2^16 (or inf/NaN): inf, or a quiet NaN keeping the top payload.
 *   Values in [65520, 65536) reach inf through the normal path's carry.
 * - |f| < 2^-14 (f16 subnormal or zero): adding 0.5, whose ulp is 2^-24 (the
 *   f16 subnormal spacing), makes the FPU round to nearest even; the
 *   low mantissa bits of the sum are then the f16 code.
 * - otherwise rebias the exponent and round the 13 dropped bits like bf16.
 */
KERNEL uint16_t f16_from(float f)
{
    const uint32_t magic_u = 126u << 23; /* 0.5f */
    uint32_t u = f2u(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    uint32_t normal =
        (a - (112u << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    uint32_t subnormal = f2u(u2f(a) + u2f(magic_u)) - magic_u;
    uint32_t special =
        a > 0x7f800000u ? (0x7e00u | ((a >> 13) & 0x3ffu)) : 0x7c00u;
    uint32_t o = sel(a < (113u << 23), subnormal,
                     sel(a >= (143u << 23), special, normal));
    return (uint16_t)(o | sign);
}

/* binary16 -> f32, exact. Subnormals: build 2^-14 * (1 + m/1024) and
 * subtract 2^-14 (exact). NaN payloads are kept bit for bit. */
KERNEL float f16_to(uint16_t h)
{
    const uint32_t exp_mask = 0x7c00u << 13;
    uint32_t o = ((uint32_t)h & 0x7fffu) << 13;
    uint32_t exp = o & exp_mask;
    o += 112u << 23;
    uint32_t inf_nan = o + (112u << 23);
    uint32_t subnormal = f2u(u2f(o + (1u << 23)) - u2f(113u << 23));
    o = sel(exp == exp_mask, inf_nan, sel(exp == 0, subnormal, o));
    return u2f(o | (((uint32_t)h & 0x8000u) << 16));
}

/*
 * f32 -> e4m3 (OCP E4M3FN). |f| >= 448 and +-inf saturate to 0x7e; NaN is
 * 0x7f. Normal results (|f| >= 2^-6): rebias by 120 and round the 20
 * dropped mantissa bits to nearest even; for |f| < 448 the carry never
 * passes 448. Subnormals: 2^14 has ulp 2^-9 (the e4m3 subnormal spacing),
 * so |f| + 2^14 rounds in the FPU and the low bits are the code; 2^-6
 * itself comes out as 0x08, the smallest normal, so the ranges join.
 */
KERNEL uint8_t e4m3_from(float f)
{
    const uint32_t magic_u = 141u << 23; /* 2^14 */
    uint32_t u = f2u(f);
    uint32_t sign = (u >> 24) & 0x80u;
    uint32_t a = u & 0x7fffffffu;
    uint32_t normal = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - (120u << 3);
    uint32_t subnormal = f2u(u2f(a) + u2f(magic_u)) - magic_u;
    uint32_t o = sel(a < (121u << 23), subnormal,
                     sel(a < 0x43e00000u /* 448.0f */, normal,
                         sel(a > 0x7f800000u, 0x7fu, 0x7eu)));
    return (uint8_t)(o | sign);
}

/* e4m3 -> f32, exact: normal codes rebias the exponent by 120; subnormal
 * codes are m * 2^-9 (computed from an integer, so no FPU denormal mode can
 * flush them); S.1111.111 is NaN. */
KERNEL float e4m3_to(uint8_t v)
{
    uint32_t em = v & 0x7fu;
    uint32_t normal = (em << 20) + (120u << 23);
    uint32_t subnormal = f2u((float)(int32_t)(em & 7u) * 0x1p-9f);
    uint32_t o = sel(em == 0x7fu, 0x7fc00000u, sel(em < 8u, subnormal, normal));
    return u2f(o | ((uint32_t)(v & 0x80u) << 24));
}

uint16_t mox__f32_to_bf16(float f) { return bf16_from(f); }
float mox__bf16_to_f32(uint16_t h) { return bf16_to(h); }
uint16_t mox__f32_to_f16(float f) { return f16_from(f); }
float mox__f16_to_f32(uint16_t h) { return f16_to(h); }
uint8_t mox__f32_to_e4m3(float f) { return e4m3_from(f); }
float mox__e4m3_to_f32(uint8_t v) { return e4m3_to(v); }

/* ------------------------------------------------------------------ */
/* Array conversions                                                   */

KERNEL void bf16_to_n(const uint16_t *restrict s, float *restrict d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = bf16_to(s[i]);
}
KERNEL void f16_to_n(const uint16_t *restrict s, float *restrict d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = f16_to(s[i]);
}
KERNEL void bf16_from_n(const float *restrict s, uint16_t *restrict d,
                        size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = bf16_from(s[i]);
}
KERNEL void f16_from_n(const float *restrict s, uint16_t *restrict d,
                       size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] = f16_from(s[i]);
}
KERNEL void bf16_acc_n(const uint16_t *restrict s, float *restrict d,
                       size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] += bf16_to(s[i]);
}
KERNEL void f16_acc_n(const uint16_t *restrict s, float *restrict d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] += f16_to(s[i]);
}
KERNEL void f32_acc_n(const float *restrict s, float *restrict d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        d[i] += s[i];
}

MOX_CLONES static void bf16_to_f32_array(const uint16_t *s, float *d, size_t n)
{
    size_t i = 0;
    for (; i + CHUNK <= n; i += CHUNK)
        bf16_to_n(s + i, d + i, CHUNK);
    bf16_to_n(s + i, d + i, n - i);
}
MOX_CLONES static void f16_to_f32_array(const uint16_t *s, float *d, size_t n)
{
    size_t i = 0;
    for (; i + CHUNK <= n; i += CHUNK)
        f16_to_n(s + i, d + i, CHUNK);
    f16_to_n(s + i, d + i, n - i);
}
MOX_CLONES static void bf16_from_f32_array(const float *s, uint16_t *d, size_t n)
{
    size_t i = 0;
    for (; i + CHUNK <= n; i += CHUNK)
        bf16_from_n(s + i, d + i, CHUNK);
    bf16_from_n(s + i, d + i, n - i);
}
MOX_CLONES static void f16_from_f32_array(const float *s, uint16_t *d, size_t n)
{
    size_t i = 0;
    for (; i + CHUNK <= n; i += CHUNK)
        f16_from_n(s + i, d + i, CHUNK);
    f16_from_n(s + i, d + i, n - i);
}

void mox__to_f32(mox_dtype_t from, const void *src, float *dst, size_t n)
{
    switch (from) {
    case MOX_DTYPE_F32:
        memmove(dst, src, n * sizeof(float));
        return;
    case MOX_DTYPE_BF16:
        bf16_to_f32_array(src, dst, n);
        return;
    case MOX_DTYPE_F16:
        f16_to_f32_array(src, dst, n);
        return;
    case MOX_DTYPE_F64:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)((const double *)src)[i];
        return;
    default:
        assert(!"mox__to_f32: not a float type");
        return;
    }
}

void mox__from_f32(mox_dtype_t to, const float *src, void *dst, size_t n)
{
    switch (to) {
    case MOX_DTYPE_F32:
        memmove(dst, src, n * sizeof(float));
        return;
    case MOX_DTYPE_BF16:
        bf16_from_f32_array(src, dst, n);
        return;
    case MOX_DTYPE_F16:
        f16_from_f32_array(src, dst, n);
        return;
    case MOX_DTYPE_F64:
        for (size_t i = 0; i < n; i++)
            ((double *)dst)[i] = src[i];
        return;
    default:
        assert(!"mox__from_f32: not a float type");
        return;
    }
}

MOX_CLONES void mox__accumulate_f32(mox_dtype_t from, const void *src, float *dst,
                         size_t n)
{
    const uint16_t *h = src;
    const float *f = src;
    size_t i = 0;
    switch (from) {
    case MOX_DTYPE_F32:
        for (; i + CHUNK <= n; i += CHUNK)
            f32_acc_n(f + i, dst + i, CHUNK);
        f32_acc_n(f + i, dst + i, n - i);
        return;
    case MOX_DTYPE_BF16:
        for (; i + CHUNK <= n; i += CHUNK)
            bf16_acc_n(h + i, dst + i, CHUNK);
        bf16_acc_n(h + i, dst + i, n - i);
        return;
    case MOX_DTYPE_F16:
        for (; i + CHUNK <= n; i += CHUNK)
            f16_acc_n(h + i, dst + i, CHUNK);
        f16_acc_n(h + i, dst + i, n - i);
        return;
    case MOX_DTYPE_F64:
        for (; i < n; i++)
            dst[i] += (float)((const double *)src)[i];
        return;
    default:
        assert(!"mox__accumulate_f32: not a float type");
        return;
    }
}

/* Rows of expert outputs come from memory (another rank wrote them), and
 * summing them waited on it: prefetching the next row while summing this
 * one took a single-threaded sum of 2719 bf16 rows of 7168 (combine's
 * source side on 1 x 8, 512 tokens) from 6.8-7.8 to 6.1-6.6 ms. */
#define NEXT_STEP 256 /* elements summed per prefetch burst */
void mox__accumulate_f32_next(mox_dtype_t from, const void *src, float *dst,
                              size_t n, const void *next)
{
    if (!next) {
        mox__accumulate_f32(from, src, dst, n);
        return;
    }
    size_t es = mox__dtype_size(from);
    const char *s = src, *nx = next;
    for (size_t i = 0; i < n; i += NEXT_STEP) {
        size_t m = n - i < NEXT_STEP ? n - i : NEXT_STEP;
        for (size_t b = 0; b < m * es; b += 64)
            __builtin_prefetch(nx + i * es + b);
        mox__accumulate_f32(from, s + i * es, dst + i, m);
    }
}

/* Up to ROWS_MAX rows at a time, added in row order: the bf16 and f32
 * forms of the loops above, fused. `k` is a constant where acc_group
 * calls them, so the unused rows' terms fold away. */
#define ROWS_MAX 8
#define ROW_TERM(j, conv)                                                     \
    if (k > (j))                                                              \
        v += conv(r##j[i])
KERNEL void bf16_accrows_n(const uint16_t *restrict r0,
                           const uint16_t *restrict r1,
                           const uint16_t *restrict r2,
                           const uint16_t *restrict r3,
                           const uint16_t *restrict r4,
                           const uint16_t *restrict r5,
                           const uint16_t *restrict r6,
                           const uint16_t *restrict r7, float *restrict d,
                           size_t n, int k)
{
    for (size_t i = 0; i < n; i++) {
        float v = d[i] + bf16_to(r0[i]);
        ROW_TERM(1, bf16_to); ROW_TERM(2, bf16_to); ROW_TERM(3, bf16_to);
        ROW_TERM(4, bf16_to); ROW_TERM(5, bf16_to); ROW_TERM(6, bf16_to);
        ROW_TERM(7, bf16_to);
        d[i] = v;
    }
}
#define F32_ID(x) (x)
KERNEL void f32_accrows_n(const float *restrict r0, const float *restrict r1,
                          const float *restrict r2, const float *restrict r3,
                          const float *restrict r4, const float *restrict r5,
                          const float *restrict r6, const float *restrict r7,
                          float *restrict d, size_t n, int k)
{
    for (size_t i = 0; i < n; i++) {
        float v = d[i] + r0[i];
        ROW_TERM(1, F32_ID); ROW_TERM(2, F32_ID); ROW_TERM(3, F32_ID);
        ROW_TERM(4, F32_ID); ROW_TERM(5, F32_ID); ROW_TERM(6, F32_ID);
        ROW_TERM(7, F32_ID);
        d[i] = v;
    }
}

/* Elements [i, i + m) of k (1 - ROWS_MAX) rows into d, in row order;
 * rows past k are not read. */
#define ACC_ROWS(fn, T, K)                                                    \
    fn((const T *)r[0] + i, (const T *)r[(K) > 1] + i,                        \
       (const T *)r[(K) > 2 ? 2 : 0] + i, (const T *)r[(K) > 3 ? 3 : 0] + i,  \
       (const T *)r[(K) > 4 ? 4 : 0] + i, (const T *)r[(K) > 5 ? 5 : 0] + i,  \
       (const T *)r[(K) > 6 ? 6 : 0] + i, (const T *)r[(K) > 7 ? 7 : 0] + i,  \
       d + i, m, (K))
KERNEL void acc_group(int f32, const void *const *r, size_t k, float *d,
                      size_t i, size_t m)
{
#define ACC_CASE(K)                                                           \
    case K:                                                                   \
        if (f32)                                                              \
            ACC_ROWS(f32_accrows_n, float, K);                                \
        else                                                                  \
            ACC_ROWS(bf16_accrows_n, uint16_t, K);                            \
        return
    switch (k) {
    ACC_CASE(1); ACC_CASE(2); ACC_CASE(3); ACC_CASE(4);
    ACC_CASE(5); ACC_CASE(6); ACC_CASE(7); ACC_CASE(8);
    default: return;
    }
#undef ACC_CASE
}

MOX_CLONES static void acc_rows_fused(int f32, const void *const *rows,
                                      size_t nrows, float *dst, size_t n,
                                      const char *next, size_t es)
{
    for (size_t g = 0; g < nrows; g += ROWS_MAX) {
        size_t k = nrows - g < ROWS_MAX ? nrows - g : ROWS_MAX;
        int last = g + k == nrows;
        for (size_t i = 0; i < n; i += NEXT_STEP) {
            size_t m = n - i < NEXT_STEP ? n - i : NEXT_STEP;
            if (last && next)
                for (size_t b = 0; b < m * es; b += 64)
                    __builtin_prefetch(next + i * es + b);
            size_t j = 0;
            for (; j + CHUNK <= m; j += CHUNK)
                acc_group(f32, rows + g, k, dst, i + j, CHUNK);
            acc_group(f32, rows + g, k, dst, i + j, m - j);
        }
    }
}

void mox__accumulate_rows_f32(mox_dtype_t from, const void *const *rows,
                              size_t nrows, float *dst, size_t n,
                              const void *next)
{
    if (from != MOX_DTYPE_BF16 && from != MOX_DTYPE_F32) {
        for (size_t j = 0; j < nrows; j++)
            mox__accumulate_f32_next(from, rows[j], dst, n,
                                     j + 1 < nrows ? rows[j + 1] : next);
        return;
    }
    acc_rows_fused(from == MOX_DTYPE_F32, rows, nrows, dst, n, next,
                   mox__dtype_size(from));
}

/* ------------------------------------------------------------------ */
/* fp8 blocks                                                          */

#define E4M3_MAX 448.0f
/* Smallest normal f32. A scale below it would be subnormal (or zero) and
 * x / scale would lose the precision the bound in numerics.md assumes, so
 * blocks with amax < 448 * 2^-126 use this scale instead of amax / 448. */
#define MIN_SCALE 0x1p-126f

/* Bits of the largest finite |x| of a block; NaN and inf are skipped. The
 * bit patterns of non-negative floats order like the floats, and as int32
 * (not uint32) the max has an SSE2 vector form. */
KERNEL uint32_t amax_bits(const float *restrict x, size_t n)
{
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t a = (int32_t)(f2u(x[i]) & 0x7fffffffu);
        a = a < 0x7f800000 ? a : 0;
        m = a > m ? a : m;
    }
    return (uint32_t)m;
}

KERNEL void encode_n(const float *restrict x, float scale,
                     uint8_t *restrict q, size_t n)
{
    for (size_t i = 0; i < n; i++)
        q[i] = e4m3_from(x[i] / scale);
}

KERNEL void decode_n(const uint8_t *restrict q, float scale,
                     float *restrict x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = e4m3_to(q[i]) * scale;
}

KERNEL float block_scale(const float *x, size_t n)
{
    uint32_t m = n == MOX_FP8_BLOCK ? amax_bits(x, MOX_FP8_BLOCK)
                                    : amax_bits(x, n);
    if (m == 0)
        return 1.0f;
    float scale = u2f(m) / E4M3_MAX;
    return scale < MIN_SCALE ? MIN_SCALE : scale;
}

KERNEL void encode_block(const float *x, size_t n, unsigned char *scale_at,
                         uint8_t *q)
{
    float scale = block_scale(x, n);
    memcpy(scale_at, &scale, sizeof scale);
    if (n == MOX_FP8_BLOCK)
        encode_n(x, scale, q, MOX_FP8_BLOCK);
    else
        encode_n(x, scale, q, n);
}

MOX_CLONES void mox__fp8_encode(mox_dtype_t from, const void *src, size_t n, void *dst)
{
    size_t nblocks = (n + MOX_FP8_BLOCK - 1) / MOX_FP8_BLOCK;
    unsigned char *scales = dst;
    uint8_t *codes = (uint8_t *)dst + 4 * nblocks;
    float tmp[MOX_FP8_BLOCK];
    for (size_t b = 0; b < nblocks; b++) {
        size_t off = b * MOX_FP8_BLOCK;
        size_t len = n - off < MOX_FP8_BLOCK ? n - off : MOX_FP8_BLOCK;
        const float *x;
        switch (from) {
        case MOX_DTYPE_F32:
            x = (const float *)src + off;
            break;
        case MOX_DTYPE_BF16:
            bf16_to_f32_array((const uint16_t *)src + off, tmp, len);
            x = tmp;
            break;
        case MOX_DTYPE_F16:
            f16_to_f32_array((const uint16_t *)src + off, tmp, len);
            x = tmp;
            break;
        default:
            assert(!"mox__fp8_encode: source must be f32, bf16 or f16");
            return;
        }
        encode_block(x, len, scales + 4 * b, codes + off);
    }
}

MOX_CLONES void mox__fp8_decode(const void *src, size_t n, mox_dtype_t to, void *dst)
{
    size_t nblocks = (n + MOX_FP8_BLOCK - 1) / MOX_FP8_BLOCK;
    const unsigned char *scales = src;
    const uint8_t *codes = (const uint8_t *)src + 4 * nblocks;
    float tmp[MOX_FP8_BLOCK];
    if (to != MOX_DTYPE_F32 && to != MOX_DTYPE_BF16 && to != MOX_DTYPE_F16) {
        assert(!"mox__fp8_decode: target must be f32, bf16 or f16");
        return;
    }
    for (size_t b = 0; b < nblocks; b++) {
        size_t off = b * MOX_FP8_BLOCK;
        size_t len = n - off < MOX_FP8_BLOCK ? n - off : MOX_FP8_BLOCK;
        float scale;
        memcpy(&scale, scales + 4 * b, sizeof scale);
        float *x = to == MOX_DTYPE_F32 ? (float *)dst + off : tmp;
        if (len == MOX_FP8_BLOCK)
            decode_n(codes + off, scale, x, MOX_FP8_BLOCK);
        else
            decode_n(codes + off, scale, x, len);
        if (to == MOX_DTYPE_BF16)
            bf16_from_f32_array(tmp, (uint16_t *)dst + off, len);
        else if (to == MOX_DTYPE_F16)
            f16_from_f32_array(tmp, (uint16_t *)dst + off, len);
    }
}
