/*
 * Element types and the conversions the data path needs: 16-bit floats
 * (bf16, f16) to and from f32, and fp8 e4m3 with one f32 scale per block
 * of 128 values (the dispatch wire format). Pure functions, no allocation.
 */
#ifndef MOX_CORE_DTYPE_H
#define MOX_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include "mox/mox.h"

/*
 * Hot array loops are compiled twice on x86-64, for AVX2 and for the
 * baseline, and the loader picks one for the CPU (GCC function
 * multiversioning, an ifunc): measured on this machine, f32 -> bf16 runs
 * at 0.30 instead of 0.57 ns a value, fp8 encode at 0.89 instead of 1.53.
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(MOX_NO_CLONES)
#define MOX_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MOX_CLONES
#endif

/* Bytes of one element; 0 for an unknown type. */
size_t mox__dtype_size(mox_dtype_t t);
/* "f32", "bf16", ...; "?" for an unknown type. */
const char *mox__dtype_name(mox_dtype_t t);
/* 1 for the float types the conversions below accept (f16, bf16, f32,
 * f64), else 0. Callers check this before calling them: the conversions
 * treat any other type as a programming error (assert). */
int mox__dtype_is_float(mox_dtype_t t);

/* Scalar conversions. f32 -> 16-bit rounds to nearest even; NaN stays NaN
 * (quiet), infinities and signed zeros are kept. */
uint16_t mox__f32_to_bf16(float f);
float mox__bf16_to_f32(uint16_t h);
uint16_t mox__f32_to_f16(float f);
float mox__f16_to_f32(uint16_t h);

/* fp8 e4m3 (OCP "E4M3FN": bias 7, no infinities, max finite 448, NaN =
 * S.1111.111). f32 -> e4m3 rounds to nearest even and saturates to +-448;
 * NaN -> NaN. */
uint8_t mox__f32_to_e4m3(float f);
float mox__e4m3_to_f32(uint8_t v);

/* Convert n elements of type `from` at src into f32 at dst. */
void mox__to_f32(mox_dtype_t from, const void *src, float *dst, size_t n);
/* Convert n f32 at src into type `to` at dst (rounding as above). */
void mox__from_f32(mox_dtype_t to, const float *src, void *dst, size_t n);
/* dst[i] += (f32) src[i] for n elements of type `from`. */
void mox__accumulate_f32(mox_dtype_t from, const void *src, float *dst,
                         size_t n);
/* The same, prefetching the n elements at `next` (the row the caller sums
 * after this one; NULL = none) as it goes, so that row streams in from
 * memory while this one is summed. Same additions, same result. */
void mox__accumulate_f32_next(mox_dtype_t from, const void *src, float *dst,
                              size_t n, const void *next);
/*
 * dst[i] = (((dst[i] + rows[0][i]) + rows[1][i]) + ...) for the nrows rows
 * of type `from`, in order: the same additions and the same result as one
 * mox__accumulate_f32 per row, but for bf16 and f32 rows dst is read and
 * written once per eight rows instead of once per row (an f32 row of 7168
 * does not stay in L1 while the rows stream through). `next`, when not
 * NULL, is prefetched as for mox__accumulate_f32_next.
 */
void mox__accumulate_rows_f32(mox_dtype_t from, const void *const *rows,
                              size_t nrows, float *dst, size_t n,
                              const void *next);

/* fp8 blocks: MOX_FP8_BLOCK values share one f32 scale. */
#define MOX_FP8_BLOCK 128
/* Bytes of n values encoded as fp8 + scales: n + 4 * ceil(n / 128). */
static inline size_t mox__fp8_bytes(size_t n)
{
    return n + 4 * ((n + MOX_FP8_BLOCK - 1) / MOX_FP8_BLOCK);
}
/*
 * Encode n values of type `from` (f32, bf16 or f16) as fp8 e4m3: per block of
 * 128 the scale is amax / 448 (1 when amax is 0), values are divided by it
 * and rounded. Layout at dst: scales (f32, ceil(n/128) of them) then the n
 * codes. Non-finite inputs: NaN stays NaN; +-inf saturates to +-448*scale.
 */
void mox__fp8_encode(mox_dtype_t from, const void *src, size_t n, void *dst);
/* Decode into type `to` (f32, bf16 or f16). */
void mox__fp8_decode(const void *src, size_t n, mox_dtype_t to, void *dst);

#endif
