/* Float conversions and the fp8 block format (core/dtype.h), checked against
 * references built differently: formats decoded from the spec formula with
 * ldexp, rounding by searching a sorted table of every representable value
 * in double precision and picking the nearer neighbour (ties to the even
 * code). See docs/numerics.md for the bounds checked here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/dtype.h"

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static void rng_seed(uint64_t s) { rng_state = s ? s : 1; }
static uint64_t rng_next(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static uint32_t rng_u32(void) { return (uint32_t)(rng_next() >> 32); }
/* Uniform in [-1, 1). */
static double rng_unit(void)
{
    return (double)(rng_next() >> 11) * 0x1p-52 - 1.0;
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ------------------------------------------------------------------ */
/* References                                                          */

/* Decode an IEEE-style binary format (sign, ebits exponent, mbits
 * fraction) from the textbook formula. */
static double ref_ieee_decode(uint32_t code, int ebits, int mbits)
{
    int bias = (1 << (ebits - 1)) - 1;
    uint32_t m = code & ((1u << mbits) - 1);
    uint32_t e = (code >> mbits) & ((1u << ebits) - 1);
    int neg = (code >> (ebits + mbits)) & 1;
    double v;
    if (e == (1u << ebits) - 1)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp((double)m, 1 - bias - mbits);
    else
        v = ldexp(1.0 + ldexp((double)m, -mbits), (int)e - bias);
    return neg ? -v : v;
}
static double ref_bf16(uint16_t c) { return ref_ieee_decode(c, 8, 7); }
static double ref_f16(uint16_t c) { return ref_ieee_decode(c, 5, 10); }

/* OCP OFP8 E4M3: bias 7; E=0 subnormal m/8 * 2^-6; S.1111.111 is NaN and
 * there are no infinities (E=15 with m<7 are normal numbers). */
static double ref_e4m3(uint8_t c)
{
    int neg = c >> 7, e = (c >> 3) & 15, m = c & 7;
    double v;
    if (e == 15 && m == 7)
        v = NAN;
    else if (e == 0)
        v = ldexp(m / 8.0, -6);
    else
        v = ldexp(1.0 + m / 8.0, e - 7);
    return neg ? -v : v;
}

typedef struct {
    double value;
    uint32_t code;
} entry_t;

typedef struct {
    entry_t *e;
    int n;        /* entries, ascending, all >= 0 */
    uint32_t sign_bit;
    uint32_t sat_code; /* |x| beyond the last entry (inf or max finite) */
} table_t;

static int cmp_entry(const void *a, const void *b)
{
    double x = ((const entry_t *)a)->value, y = ((const entry_t *)b)->value;
    return x < y ? -1 : x > y;
}

/* Every finite non-negative value of a format. For IEEE formats one more
 * entry, "inf", sits where the next binade would start (2^(emax+1)): IEEE
 * 754 rounds to infinity exactly when rounding with an unbounded exponent
 * would reach that value, ties included (it is the even neighbour). */
static table_t make_table(double (*decode)(uint32_t), int code_bits,
                          uint32_t inf_code, double inf_at)
{
    table_t t;
    t.e = malloc(sizeof(entry_t) << code_bits);
    t.n = 0;
    t.sign_bit = 1u << (code_bits - 1);
    for (uint32_t c = 0; c < t.sign_bit; c++) {
        double v = decode(c);
        if (isfinite(v))
            t.e[t.n++] = (entry_t){v, c};
    }
    if (inf_at > 0)
        t.e[t.n++] = (entry_t){inf_at, inf_code};
    qsort(t.e, (size_t)t.n, sizeof(entry_t), cmp_entry);
    t.sat_code = t.e[t.n - 1].code;
    return t;
}

static double dec_bf16(uint32_t c) { return ref_bf16((uint16_t)c); }
static double dec_f16(uint32_t c) { return ref_f16((uint16_t)c); }
static double dec_e4m3(uint32_t c) { return ref_e4m3((uint8_t)c); }

static table_t tab_bf16, tab_f16, tab_e4m3;

static int setup_tables(void **state)
{
    tab_bf16 = make_table(dec_bf16, 16, 0x7f80, 0x1p128);
    tab_f16 = make_table(dec_f16, 16, 0x7c00, 0x1p16);
    tab_e4m3 = make_table(dec_e4m3, 8, 0, 0); /* saturates to 448 */
    return 0;
}
static int teardown_tables(void **state)
{
    free(tab_bf16.e);
    free(tab_f16.e);
    free(tab_e4m3.e);
    return 0;
}

/* Round x (not NaN) to the format: nearest table entry, ties to the entry
 * with an even code; beyond the last entry, its code (inf or saturation). */
static uint32_t ref_round(const table_t *t, float x)
{
    double ax = fabs((double)x);
    uint32_t sign = signbit(x) ? t->sign_bit : 0;
    if (ax >= t->e[t->n - 1].value)
        return sign | t->sat_code;
    int lo = 0, hi = t->n - 1; /* e[lo] <= ax < e[hi] */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (t->e[mid].value <= ax)
            lo = mid;
        else
            hi = mid;
    }
    double dlo = ax - t->e[lo].value, dhi = t->e[hi].value - ax;
    uint32_t c;
    if (dlo < dhi)
        c = t->e[lo].code;
    else if (dhi < dlo)
        c = t->e[hi].code;
    else
        c = (t->e[lo].code & 1) ? t->e[hi].code : t->e[lo].code;
    return sign | c;
}

/* ------------------------------------------------------------------ */
/* Names and sizes                                                     */

static void test_dtype_size_and_name_cover_every_type(void **state)
{
    struct {
        mox_dtype_t t;
        size_t size;
        const char *name;
        int is_float;
    } want[] = {
        {MOX_DTYPE_U8, 1, "u8", 0},     {MOX_DTYPE_I32, 4, "i32", 0},
        {MOX_DTYPE_I64, 8, "i64", 0},   {MOX_DTYPE_F16, 2, "f16", 1},
        {MOX_DTYPE_BF16, 2, "bf16", 1}, {MOX_DTYPE_F32, 4, "f32", 1},
        {MOX_DTYPE_F64, 8, "f64", 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_int_equal(mox__dtype_size(want[i].t), want[i].size);
        assert_string_equal(mox__dtype_name(want[i].t), want[i].name);
        assert_int_equal(mox__dtype_is_float(want[i].t), want[i].is_float);
    }
    assert_int_equal(mox__dtype_size((mox_dtype_t)99), 0);
    assert_string_equal(mox__dtype_name((mox_dtype_t)99), "?");
    assert_int_equal(mox__dtype_is_float((mox_dtype_t)99), 0);
}

/* ------------------------------------------------------------------ */
/* 16-bit floats                                                       */

typedef struct {
    const char *name;
    uint16_t (*enc)(float);
    float (*dec)(uint16_t);
    double (*ref)(uint16_t);
    const table_t *tab;
    uint16_t exp_mask, quiet_bit;
} fmt16_t;

static const fmt16_t *fmt_bf16(void)
{
    static fmt16_t f;
    f = (fmt16_t){"bf16", mox__f32_to_bf16, mox__bf16_to_f32, ref_bf16,
                  &tab_bf16, 0x7f80, 0x0040};
    return &f;
}
static const fmt16_t *fmt_f16(void)
{
    static fmt16_t f;
    f = (fmt16_t){"f16", mox__f32_to_f16, mox__f16_to_f32, ref_f16,
                  &tab_f16, 0x7c00, 0x0200};
    return &f;
}

static int is_nan16(const fmt16_t *f, uint16_t c)
{
    return (c & f->exp_mask) == f->exp_mask && (c & ~(f->exp_mask | 0x8000));
}

/* Widening is exact for all 65536 codes; NaNs stay NaN with their sign. */
static void check_decode_all(const fmt16_t *f)
{
    for (uint32_t c = 0; c < 65536; c++) {
        float got = f->dec((uint16_t)c);
        double want = f->ref((uint16_t)c);
        if (isnan(want)) {
            assert_true(isnan(got));
        } else {
            if ((double)got != want)
                fail_msg("%s decode 0x%04x: got %a want %a", f->name, c,
                         (double)got, want);
        }
        assert_int_equal(!!signbit(got), c >> 15);
    }
}

/* Every non-NaN code survives 16 -> f32 -> 16 unchanged; NaN codes come
 * back as quiet NaNs with the same sign. */
static void check_round_trip_all(const fmt16_t *f)
{
    for (uint32_t c = 0; c < 65536; c++) {
        uint16_t back = f->enc(f->dec((uint16_t)c));
        if (is_nan16(f, (uint16_t)c)) {
            assert_true(is_nan16(f, back));
            assert_true(back & f->quiet_bit);
            assert_int_equal(back & 0x8000, c & 0x8000);
        } else if (back != c) {
            fail_msg("%s round trip 0x%04x -> 0x%04x", f->name, c, back);
        }
    }
}

static void check_round_one(const fmt16_t *f, float x)
{
    uint16_t got = f->enc(x);
    if (isnan(x)) {
        assert_true(is_nan16(f, got));
        assert_true(got & f->quiet_bit);
        assert_int_equal(got >> 15, bits_of(x) >> 31);
        return;
    }
    uint32_t want = ref_round(f->tab, x);
    if (got != want)
        fail_msg("%s(%a = 0x%08x): got 0x%04x want 0x%04x", f->name,
                 (double)x, bits_of(x), got, want);
}

/* Exact ties between every pair of neighbours (including the one between
 * max finite and the overflow threshold), one f32 ulp either side of them,
 * the representable values themselves, f32 specials and 2^20 random f32
 * bit patterns (which cover NaNs, subnormals and huge values). */
static void check_rounding(const fmt16_t *f)
{
    const table_t *t = f->tab;
    for (int i = 0; i < t->n; i++) {
        for (int s = 0; s < 2; s++) {
            double sg = s ? -1.0 : 1.0;
            check_round_one(f, (float)(sg * t->e[i].value));
            if (i + 1 == t->n)
                continue;
            double mid = (t->e[i].value + t->e[i + 1].value) / 2;
            float fm = (float)(sg * mid);
            assert_true((double)fm == sg * mid); /* a true tie */
            check_round_one(f, fm);
            check_round_one(f, nextafterf(fm, INFINITY));
            check_round_one(f, nextafterf(fm, -INFINITY));
        }
    }
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN,
                              float_of(0x7f800001u), float_of(0xffbfffffu),
                              float_of(0x7fc01234u), FLT_MIN, -FLT_MIN,
                              FLT_TRUE_MIN, -FLT_TRUE_MIN, FLT_MAX, -FLT_MAX,
                              65504.0f, 65519.996f, 65520.0f, 1e-8f, 3e-8f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++)
        check_round_one(f, specials[i]);
    rng_seed(1234);
    for (int i = 0; i < (1 << 20); i++)
        check_round_one(f, float_of(rng_u32()));
}

static void test_bf16_decodes_every_code_exactly(void **state)
{
    check_decode_all(fmt_bf16());
    /* Widening keeps NaN payloads bit for bit (it is a shift). */
    assert_int_equal(bits_of(mox__bf16_to_f32(0x7f81)), 0x7f810000u);
}
static void test_f16_decodes_every_code_exactly(void **state)
{
    check_decode_all(fmt_f16());
}
static void test_bf16_round_trip_is_identity_for_every_code(void **state)
{
    check_round_trip_all(fmt_bf16());
}
static void test_f16_round_trip_is_identity_for_every_code(void **state)
{
    check_round_trip_all(fmt_f16());
}
static void test_f32_to_bf16_rounds_to_nearest_even(void **state)
{
    check_rounding(fmt_bf16());
    /* A few fixed points worth reading. */
    assert_int_equal(mox__f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(mox__f32_to_bf16(float_of(0x3f808000u)), 0x3f80); /* tie */
    assert_int_equal(mox__f32_to_bf16(float_of(0x3f818000u)), 0x3f82); /* tie */
    assert_int_equal(mox__f32_to_bf16(FLT_MAX), 0x7f80); /* overflows */
    assert_int_equal(mox__f32_to_bf16(-0.0f), 0x8000);
}
static void test_f32_to_f16_rounds_to_nearest_even(void **state)
{
    check_rounding(fmt_f16());
    assert_int_equal(mox__f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(mox__f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(mox__f32_to_f16(65520.0f), 0x7c00);  /* tie -> inf */
    assert_int_equal(mox__f32_to_f16(0x1p-24f), 0x0001);  /* min subnormal */
    assert_int_equal(mox__f32_to_f16(0x1p-25f), 0x0000);  /* tie -> 0 */
    assert_int_equal(mox__f32_to_f16(0x1.8p-24f), 0x0002); /* tie -> even */
    assert_int_equal(mox__f32_to_f16(-0x1p-14f), 0x8400); /* min normal */
}

/* ------------------------------------------------------------------ */
/* fp8 e4m3                                                            */

static void test_e4m3_decodes_every_code_per_ocp_spec(void **state)
{
    for (uint32_t c = 0; c < 256; c++) {
        float got = mox__e4m3_to_f32((uint8_t)c);
        double want = ref_e4m3((uint8_t)c);
        if (isnan(want))
            assert_true(isnan(got));
        else if ((double)got != want)
            fail_msg("e4m3 decode 0x%02x: got %a want %a", c, (double)got,
                     want);
        assert_int_equal(!!signbit(got), c >> 7);
    }
    /* Spot values from the OCP spec table. */
    assert_true(mox__e4m3_to_f32(0x7e) == 448.0f);
    assert_true(mox__e4m3_to_f32(0x08) == 0x1p-6f);
    assert_true(mox__e4m3_to_f32(0x01) == 0x1p-9f);
    assert_true(mox__e4m3_to_f32(0x38) == 1.0f);
    assert_true(mox__e4m3_to_f32(0x78) == 256.0f); /* E=15 is finite */
}

static void test_e4m3_round_trip_is_identity_for_finite_codes(void **state)
{
    for (uint32_t c = 0; c < 256; c++) {
        /* Including S.1111.111: NaN comes back as the same NaN code. */
        uint8_t back = mox__f32_to_e4m3(mox__e4m3_to_f32((uint8_t)c));
        assert_int_equal(back, c);
    }
}

static void check_e4m3_one(float x)
{
    uint8_t got = mox__f32_to_e4m3(x);
    if (isnan(x)) {
        assert_int_equal(got & 0x7f, 0x7f);
        return;
    }
    uint32_t want = ref_round(&tab_e4m3, x);
    if (got != want)
        fail_msg("e4m3(%a): got 0x%02x want 0x%02x", (double)x, got, want);
}

static void test_e4m3_rounds_to_nearest_even_and_saturates(void **state)
{
    const table_t *t = &tab_e4m3;
    for (int i = 0; i < t->n; i++) {
        for (int s = 0; s < 2; s++) {
            double sg = s ? -1.0 : 1.0;
            check_e4m3_one((float)(sg * t->e[i].value));
            double next = i + 1 < t->n ? t->e[i + 1].value : 480.0;
            float fm = (float)(sg * (t->e[i].value + next) / 2);
            check_e4m3_one(fm);
            check_e4m3_one(nextafterf(fm, INFINITY));
            check_e4m3_one(nextafterf(fm, -INFINITY));
        }
    }
    rng_seed(99);
    for (int i = 0; i < (1 << 20); i++) {
        check_e4m3_one(float_of(rng_u32()));
        check_e4m3_one((float)(rng_unit() * 512.0));
        check_e4m3_one((float)(rng_unit() * 0x1p-5));
    }
    /* Saturation and specials, by hand. */
    assert_int_equal(mox__f32_to_e4m3(448.0f), 0x7e);
    assert_int_equal(mox__f32_to_e4m3(464.0f), 0x7e);
    assert_int_equal(mox__f32_to_e4m3(1e30f), 0x7e);
    assert_int_equal(mox__f32_to_e4m3(INFINITY), 0x7e);
    assert_int_equal(mox__f32_to_e4m3(-INFINITY), 0xfe);
    assert_int_equal(mox__f32_to_e4m3(NAN) & 0x7f, 0x7f);
    assert_int_equal(mox__f32_to_e4m3(-0.0f), 0x80);
    /* Ties: 2^-10 is half the smallest subnormal -> 0 (even); 3*2^-10 lies
     * between codes 1 and 2 -> 2; 1 + 1/16 between 0x38 and 0x39 -> 0x38;
     * 1 + 3/16 between 0x39 and 0x3a -> 0x3a; 2^-6 - 2^-10 -> 0x08. */
    assert_int_equal(mox__f32_to_e4m3(0x1p-10f), 0x00);
    assert_int_equal(mox__f32_to_e4m3(0x3p-10f), 0x02);
    assert_int_equal(mox__f32_to_e4m3(1.0625f), 0x38);
    assert_int_equal(mox__f32_to_e4m3(1.1875f), 0x3a);
    assert_int_equal(mox__f32_to_e4m3(0x1p-6f - 0x1p-10f), 0x08);
}

/* ------------------------------------------------------------------ */
/* fp8 blocks                                                          */

enum { CANARY = 16 };

/* Bound of docs/numerics.md for decode into `to`: max(c|x|, 2^-9 s) + h
 * with c = 2^-4 (f32, f16) or 2^-4 + 2^-8 (bf16) and h half the output
 * format's subnormal spacing. */
static void check_bound(double x, double got, double scale, mox_dtype_t to,
                        size_t i)
{
    double c = to == MOX_DTYPE_BF16 ? 0x1p-4 + 0x1p-8 : 0x1p-4;
    double h = to == MOX_DTYPE_F16 ? 0x1p-25 : to == MOX_DTYPE_BF16 ? 0x1p-134 : 0;
    double bound = fmax(c * fabs(x), 0x1p-9 * scale) + h;
    if (!(fabs(got - x) <= bound))
        fail_msg("element %zu: x=%a decoded %a scale %a error %a > bound %a",
                 i, x, got, scale, fabs(got - x), bound);
}

/* Encode x[0..n) (given as f32 values `xv` and in type `from` at src),
 * check layout, scales and codes against the references and the error
 * bound after decoding into every target type. */
static void check_fp8(mox_dtype_t from, const void *src, const float *xv,
                      size_t n)
{
    size_t bytes = mox__fp8_bytes(n), nb = (n + 127) / 128;
    assert_int_equal(bytes, n + 4 * nb);
    unsigned char *buf = malloc(bytes + CANARY);
    memset(buf, 0xa5, bytes + CANARY);
    mox__fp8_encode(from, src, n, buf);
    for (size_t i = 0; i < CANARY; i++)
        assert_int_equal(buf[bytes + i], 0xa5);

    float *scale = malloc((nb ? nb : 1) * sizeof(float));
    for (size_t b = 0; b < nb; b++) {
        double amax = 0;
        for (size_t i = b * 128; i < n && i < b * 128 + 128; i++)
            if (isfinite(xv[i]))
                amax = fmax(amax, fabs((double)xv[i]));
        float want = amax == 0 ? 1.0f : (float)(amax / 448.0);
        if (want < FLT_MIN)
            want = FLT_MIN;
        memcpy(&scale[b], buf + 4 * b, sizeof(float));
        if (bits_of(scale[b]) != bits_of(want))
            fail_msg("block %zu: scale %a want %a", b, (double)scale[b],
                     (double)want);
    }
    const uint8_t *codes = buf + 4 * nb;
    for (size_t i = 0; i < n; i++) {
        float s = scale[i / 128];
        /* f32 division is correctly rounded, so is double then float. */
        float y = (float)((double)xv[i] / (double)s);
        if (isnan(y)) {
            assert_int_equal(codes[i] & 0x7f, 0x7f);
            continue;
        }
        uint8_t want = (uint8_t)ref_round(&tab_e4m3, y);
        if (codes[i] != want)
            fail_msg("element %zu: x=%a code 0x%02x want 0x%02x", i,
                     (double)xv[i], codes[i], want);
    }

    const mox_dtype_t targets[] = {MOX_DTYPE_F32, MOX_DTYPE_BF16,
                                   MOX_DTYPE_F16};
    for (size_t k = 0; k < 3; k++) {
        mox_dtype_t to = targets[k];
        size_t es = mox__dtype_size(to);
        unsigned char *out = malloc(n * es + CANARY);
        memset(out, 0x5a, n * es + CANARY);
        mox__fp8_decode(buf, n, to, out);
        for (size_t i = 0; i < CANARY; i++)
            assert_int_equal(out[n * es + i], 0x5a);
        for (size_t i = 0; i < n; i++) {
            double got;
            if (to == MOX_DTYPE_F32) {
                float f;
                memcpy(&f, out + 4 * i, 4);
                got = f;
            } else {
                uint16_t h;
                memcpy(&h, out + 2 * i, 2);
                got = to == MOX_DTYPE_BF16 ? ref_bf16(h) : ref_f16(h);
            }
            double x = xv[i], s = scale[i / 128];
            if (isnan(x)) {
                assert_true(isnan(got));
            } else if (isinf(x)) {
                /* inf saturates to +-448 * scale */
                double sat = copysign(448.0 * s, x);
                if (to == MOX_DTYPE_F32)
                    assert_true(got == (double)(float)sat);
                else
                    check_bound(sat, got, s, to, i);
            } else if (to != MOX_DTYPE_F16 || fabs(x) * 1.07 < 65504) {
                check_bound(x, got, s, to, i);
            }
        }
        free(out);
    }
    free(scale);
    free(buf);
}

/* Values spread over many binades: sign * u * 2^k, k in [-lo, hi]. */
static float wide_value(int lo, int hi)
{
    int k = (int)(rng_u32() % (uint32_t)(lo + hi + 1)) - lo;
    return (float)ldexp(rng_unit(), k);
}

static const size_t fp8_sizes[] = {0, 1, 5, 127, 128, 129, 255, 256, 1000,
                                   7168, 7173};

static void test_fp8_f32_blocks_meet_error_bound(void **state)
{
    rng_seed(7);
    for (size_t k = 0; k < sizeof fp8_sizes / sizeof fp8_sizes[0]; k++) {
        size_t n = fp8_sizes[k];
        float *x = malloc((n + 1) * sizeof(float));
        for (size_t i = 0; i < n; i++)
            x[i] = wide_value(30, 30);
        check_fp8(MOX_DTYPE_F32, x, x, n);
        for (size_t i = 0; i < n; i++) /* activations-like: narrow range */
            x[i] = (float)(rng_unit() * 4.0);
        check_fp8(MOX_DTYPE_F32, x, x, n);
        free(x);
    }
}

static void test_fp8_all_zero_block_has_scale_one_and_decodes_zero(void **state)
{
    float x[200];
    for (size_t i = 0; i < 200; i++)
        x[i] = (i & 1) ? -0.0f : 0.0f;
    check_fp8(MOX_DTYPE_F32, x, x, 200);
    unsigned char buf[208];
    mox__fp8_encode(MOX_DTYPE_F32, x, 200, buf);
    float s0, s1, out[200];
    memcpy(&s0, buf, 4);
    memcpy(&s1, buf + 4, 4);
    assert_true(s0 == 1.0f && s1 == 1.0f);
    mox__fp8_decode(buf, 200, MOX_DTYPE_F32, out);
    for (size_t i = 0; i < 200; i++) {
        assert_true(out[i] == 0.0f);
        assert_int_equal(!!signbit(out[i]), i & 1); /* -0 stays -0 */
    }
}

static void test_fp8_huge_outlier_only_costs_the_absolute_floor(void **state)
{
    float x[256];
    rng_seed(11);
    for (size_t i = 0; i < 256; i++)
        x[i] = (float)(rng_unit() * 1e-3);
    x[17] = 1e30f;   /* block 0: small values fall under scale * 2^-9 */
    x[200] = -3e5f;  /* block 1 */
    check_fp8(MOX_DTYPE_F32, x, x, 256);
    float out[256];
    unsigned char buf[264];
    mox__fp8_encode(MOX_DTYPE_F32, x, 256, buf);
    mox__fp8_decode(buf, 256, MOX_DTYPE_F32, out);
    assert_true(fabs(out[17] - 1e30) <= 1e30 / 16);
    assert_true(out[0] == 0.0f || fabsf(out[0]) >= 1e30f / 448 * 0x1p-9f);
    /* The outlier does not leak into the next block. */
    for (size_t i = 128; i < 256; i++)
        if (i != 200)
            assert_true(fabsf(out[i] - x[i]) <= 3e5f / 448 * 0x1p-9f);
}

static void test_fp8_tiny_and_nonfinite_blocks(void **state)
{
    float x[300];
    rng_seed(13);
    /* Block 0: subnormal f32 values (scale clamps to FLT_MIN). */
    for (size_t i = 0; i < 128; i++)
        x[i] = (float)ldexp(rng_unit(), -135);
    /* Block 1: inf and NaN among ordinary values. */
    for (size_t i = 128; i < 256; i++)
        x[i] = (float)(rng_unit() * 10);
    x[130] = INFINITY;
    x[131] = -INFINITY;
    x[132] = NAN;
    /* Block 2 (partial): only non-finite values -> scale 1. */
    for (size_t i = 256; i < 300; i++)
        x[i] = (i & 1) ? INFINITY : -NAN;
    check_fp8(MOX_DTYPE_F32, x, x, 300);
}

/* bf16/f16 sources encode exactly as their f32 widening does. */
static void check_fp8_16bit_source(mox_dtype_t from, size_t n)
{
    uint16_t *h = malloc((n + 1) * 2);
    float *xv = malloc((n + 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        float v = from == MOX_DTYPE_F16 ? (float)(rng_unit() * 1000.0)
                                        : wide_value(40, 40);
        h[i] = from == MOX_DTYPE_F16 ? mox__f32_to_f16(v) : mox__f32_to_bf16(v);
        xv[i] = (float)(from == MOX_DTYPE_F16 ? ref_f16(h[i]) : ref_bf16(h[i]));
    }
    check_fp8(from, h, xv, n);
    size_t bytes = mox__fp8_bytes(n);
    unsigned char *a = malloc(bytes + 1), *b = malloc(bytes + 1);
    mox__fp8_encode(from, h, n, a);
    mox__fp8_encode(MOX_DTYPE_F32, xv, n, b);
    assert_memory_equal(a, b, bytes);
    free(a);
    free(b);
    free(xv);
    free(h);
}

static void test_fp8_bf16_and_f16_sources(void **state)
{
    rng_seed(17);
    for (size_t k = 0; k < sizeof fp8_sizes / sizeof fp8_sizes[0]; k++) {
        check_fp8_16bit_source(MOX_DTYPE_BF16, fp8_sizes[k]);
        check_fp8_16bit_source(MOX_DTYPE_F16, fp8_sizes[k]);
    }
}

/* ------------------------------------------------------------------ */
/* Array conversions and accumulation                                  */

static const mox_dtype_t float_types[] = {MOX_DTYPE_F32, MOX_DTYPE_BF16,
                                          MOX_DTYPE_F16, MOX_DTYPE_F64};
static const size_t array_sizes[] = {0, 1, 63, 64, 65, 200, 7168, 7205};

/* Random element of type t (any bit pattern for 16-bit types, NaNs
 * included) and its exact value. */
static double random_element(mox_dtype_t t, void *at)
{
    if (t == MOX_DTYPE_BF16 || t == MOX_DTYPE_F16) {
        uint16_t h = (uint16_t)rng_u32();
        memcpy(at, &h, 2);
        return t == MOX_DTYPE_BF16 ? ref_bf16(h) : ref_f16(h);
    }
    if (t == MOX_DTYPE_F32) {
        float f = wide_value(60, 60);
        memcpy(at, &f, 4);
        return f;
    }
    double d = ldexp(rng_unit(), (int)(rng_u32() % 200) - 100);
    memcpy(at, &d, 8);
    return d;
}

static void test_to_f32_matches_reference_for_every_float_type(void **state)
{
    rng_seed(21);
    for (size_t k = 0; k < 4; k++)
        for (size_t j = 0; j < sizeof array_sizes / sizeof array_sizes[0];
             j++) {
            mox_dtype_t t = float_types[k];
            size_t n = array_sizes[j], es = mox__dtype_size(t);
            unsigned char *src = malloc(n * es + 1);
            double *want = malloc((n + 1) * sizeof(double));
            float *dst = malloc((n + CANARY) * sizeof(float));
            for (size_t i = 0; i < n; i++)
                want[i] = random_element(t, src + i * es);
            for (size_t i = 0; i < n + CANARY; i++)
                dst[i] = -7.0f;
            mox__to_f32(t, src, dst, n);
            for (size_t i = 0; i < n; i++) {
                if (isnan(want[i]))
                    assert_true(isnan(dst[i]));
                else
                    assert_true(dst[i] == (float)want[i]);
            }
            for (size_t i = n; i < n + CANARY; i++)
                assert_true(dst[i] == -7.0f);
            free(src);
            free(want);
            free(dst);
        }
}

static void test_from_f32_matches_reference_for_every_float_type(void **state)
{
    rng_seed(23);
    for (size_t k = 0; k < 4; k++)
        for (size_t j = 0; j < sizeof array_sizes / sizeof array_sizes[0];
             j++) {
            mox_dtype_t t = float_types[k];
            size_t n = array_sizes[j], es = mox__dtype_size(t);
            float *src = malloc((n + 1) * sizeof(float));
            unsigned char *dst = malloc(n * es + CANARY);
            for (size_t i = 0; i < n; i++)
                src[i] = (i % 7 == 3) ? float_of(rng_u32()) : wide_value(30, 20);
            memset(dst, 0x33, n * es + CANARY);
            mox__from_f32(t, src, dst, n);
            for (size_t i = 0; i < n; i++) {
                if (t == MOX_DTYPE_F32) {
                    assert_memory_equal(dst + 4 * i, &src[i], 4);
                } else if (t == MOX_DTYPE_F64) {
                    double d;
                    memcpy(&d, dst + 8 * i, 8);
                    assert_true(isnan(src[i]) ? isnan(d) : d == src[i]);
                } else {
                    uint16_t h;
                    memcpy(&h, dst + 2 * i, 2);
                    const fmt16_t *f =
                        t == MOX_DTYPE_BF16 ? fmt_bf16() : fmt_f16();
                    if (isnan(src[i]))
                        assert_true(is_nan16(f, h));
                    else
                        assert_int_equal(h, ref_round(f->tab, src[i]));
                }
            }
            for (size_t i = 0; i < CANARY; i++)
                assert_int_equal(dst[n * es + i], 0x33);
            free(src);
            free(dst);
        }
}

/* mox__accumulate_f32, or with `prefetch` mox__accumulate_f32_next given a
 * next row (its own buffer, the same length): the same sums either way. */
static void accumulate_adds_in_f32(int prefetch)
{
    rng_seed(25);
    for (size_t k = 0; k < 4; k++)
        for (size_t j = 0; j < sizeof array_sizes / sizeof array_sizes[0];
             j++) {
            mox_dtype_t t = float_types[k];
            size_t n = array_sizes[j], es = mox__dtype_size(t);
            unsigned char *src = malloc(n * es + 1);
            float *acc = malloc((n + CANARY) * sizeof(float));
            double *want = malloc((n + 1) * sizeof(double));
            for (size_t i = 0; i < n; i++) {
                double v = random_element(t, src + i * es);
                acc[i] = wide_value(20, 20);
                /* One f32 rounding of the exact sum of two f32 values;
                 * double then float rounds the same way. */
                want[i] = (float)((double)acc[i] + (double)(float)v);
            }
            for (size_t i = n; i < n + CANARY; i++)
                acc[i] = 42.0f;
            unsigned char *next = prefetch ? malloc(n * es + 1) : NULL;
            if (prefetch)
                mox__accumulate_f32_next(t, src, acc, n, next);
            else
                mox__accumulate_f32(t, src, acc, n);
            free(next);
            for (size_t i = 0; i < n; i++) {
                if (isnan(want[i]))
                    assert_true(isnan(acc[i]));
                else
                    assert_true(acc[i] == (float)want[i]);
            }
            for (size_t i = n; i < n + CANARY; i++)
                assert_true(acc[i] == 42.0f);
            free(src);
            free(acc);
            free(want);
        }
}

static void test_accumulate_adds_in_f32_for_every_float_type(void **state)
{
    accumulate_adds_in_f32(0);
}

static void test_accumulate_next_adds_the_same(void **state)
{
    accumulate_adds_in_f32(1);
}

/* mox__accumulate_rows_f32 over 1-9 rows (fused in groups of eight for bf16
 * and f32, one by one for the other types), with and without a row to
 * prefetch: every element is the sum in row order, rounded to f32 after
 * each addition, as one mox__accumulate_f32 per row would give. */
static void test_accumulate_rows_adds_in_row_order(void **state)
{
    rng_seed(26);
    enum { MAXR = 9 };
    for (size_t k = 0; k < 4; k++)
        for (size_t j = 0; j < sizeof array_sizes / sizeof array_sizes[0];
             j++)
            for (size_t nr = 1; nr <= MAXR; nr++) {
                mox_dtype_t t = float_types[k];
                size_t n = array_sizes[j], es = mox__dtype_size(t);
                unsigned char *src = malloc(MAXR * n * es + 1);
                const void *rows[MAXR];
                float *acc = malloc((n + CANARY) * sizeof(float));
                float *want = malloc((n + 1) * sizeof(float));
                for (size_t i = 0; i < n; i++)
                    want[i] = acc[i] = wide_value(20, 20);
                for (size_t r = 0; r < nr; r++) {
                    rows[r] = src + r * n * es;
                    for (size_t i = 0; i < n; i++) {
                        double v = random_element(t, src + (r * n + i) * es);
                        want[i] = (float)((double)want[i] + (double)(float)v);
                    }
                }
                for (size_t i = n; i < n + CANARY; i++)
                    acc[i] = 42.0f;
                mox__accumulate_rows_f32(t, rows, nr, acc, n,
                                         nr % 2 ? src : NULL);
                for (size_t i = 0; i < n; i++) {
                    if (isnan(want[i]))
                        assert_true(isnan(acc[i]));
                    else
                        assert_true(acc[i] == want[i]);
                }
                for (size_t i = n; i < n + CANARY; i++)
                    assert_true(acc[i] == 42.0f);
                free(src);
                free(acc);
                free(want);
            }
}

/* The fp32 accumulation rule: 16-bit inputs summed in f32 and rounded once.
 * Summing 1000 bf16 ones in bf16 would stop at 256 (256 + 1 rounds back to
 * 256); through f32 the result is exactly 1000. */
static void test_accumulate_16bit_in_f32_rounds_once(void **state)
{
    uint16_t one_bf16 = mox__f32_to_bf16(1.0f), one_f16 = mox__f32_to_f16(1.0f);
    float acc[2] = {0, 0};
    for (int i = 0; i < 1000; i++) {
        mox__accumulate_f32(MOX_DTYPE_BF16, &one_bf16, &acc[0], 1);
        mox__accumulate_f32(MOX_DTYPE_F16, &one_f16, &acc[1], 1);
    }
    uint16_t out_bf16, out_f16;
    mox__from_f32(MOX_DTYPE_BF16, &acc[0], &out_bf16, 1);
    mox__from_f32(MOX_DTYPE_F16, &acc[1], &out_f16, 1);
    assert_true(ref_bf16(out_bf16) == 1000.0);
    assert_true(ref_f16(out_f16) == 1000.0);
    /* The same sum done naively in bf16 stalls. */
    uint16_t naive = 0;
    for (int i = 0; i < 1000; i++)
        naive = mox__f32_to_bf16(mox__bf16_to_f32(naive) + 1.0f);
    assert_true(ref_bf16(naive) == 256.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_size_and_name_cover_every_type),
        cmocka_unit_test(test_bf16_decodes_every_code_exactly),
        cmocka_unit_test(test_f16_decodes_every_code_exactly),
        cmocka_unit_test(test_bf16_round_trip_is_identity_for_every_code),
        cmocka_unit_test(test_f16_round_trip_is_identity_for_every_code),
        cmocka_unit_test(test_f32_to_bf16_rounds_to_nearest_even),
        cmocka_unit_test(test_f32_to_f16_rounds_to_nearest_even),
        cmocka_unit_test(test_e4m3_decodes_every_code_per_ocp_spec),
        cmocka_unit_test(test_e4m3_round_trip_is_identity_for_finite_codes),
        cmocka_unit_test(test_e4m3_rounds_to_nearest_even_and_saturates),
        cmocka_unit_test(test_fp8_f32_blocks_meet_error_bound),
        cmocka_unit_test(test_fp8_all_zero_block_has_scale_one_and_decodes_zero),
        cmocka_unit_test(test_fp8_huge_outlier_only_costs_the_absolute_floor),
        cmocka_unit_test(test_fp8_tiny_and_nonfinite_blocks),
        cmocka_unit_test(test_fp8_bf16_and_f16_sources),
        cmocka_unit_test(test_to_f32_matches_reference_for_every_float_type),
        cmocka_unit_test(test_from_f32_matches_reference_for_every_float_type),
        cmocka_unit_test(test_accumulate_adds_in_f32_for_every_float_type),
        cmocka_unit_test(test_accumulate_next_adds_the_same),
        cmocka_unit_test(test_accumulate_rows_adds_in_row_order),
        cmocka_unit_test(test_accumulate_16bit_in_f32_rounds_once),
    };
    return cmocka_run_group_tests(tests, setup_tables, teardown_tables);
}
