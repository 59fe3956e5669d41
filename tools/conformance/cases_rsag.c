/*
 * Conformance cases for reduce-scatter (equal blocks, per-rank counts,
 * block-sparse) and allgather(v). Every rank regenerates every rank's input
 * from the seed and computes its own expected block: exactly for integers
 * (wrap-around, as uint64 arithmetic truncated to the type), against a
 * long double reference for floats, within the tolerance of
 * docs/reduce_scatter.md:
 *
 *   |got - ref| <= (P + 1) u_acc sum|x_i| + u_t |ref|   (sum; avg: / P)
 *   |got - ref| <= (P + 1) u_acc |ref| + u_t |ref|       (prod)
 *   max, min, integers: exact
 *
 * with u_acc = 2^-24 (2^-53 for f64) and u_t the unit roundoff of the type.
 * f16/bf16 data mixes one large value (an integer in [2^(p-1), 2^p), one
 * unit in the last place apart) with small ones (0.30 to 0.49 units) from
 * the other ranks, all of one sign: one f32 sum rounded once is within half
 * a unit, while rounding to f16/bf16 after every step loses every small
 * value that comes after the large one (more than the tolerance from 3
 * ranks on). Which rank holds the large value varies by element (first,
 * last, random), so either summation order shows. f16/bf16 cases also run
 * twice and must give the same bytes (the documented reproducibility).
 */
#include "conf.h"
#include "half.h"
#include "testdata.h"

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CANARY 0xA5

enum { K_RS, K_RSV, K_SPARSE, K_AG, K_AGV };
/* Count layouts of reduce_scatter_v / allgatherv, and special cases. */
enum { C_EQUAL, C_UNEVEN, C_ZERO, C_ONE, C_ALTERNATE, C_DEVICE };
static const char *cl_name[] = {"equal", "uneven", "all-zero", "one-element",
                                "alternate-empty", "device-mem"};

static const char *dt_names[] = {"u8", "i32", "i64", "f16", "bf16", "f32",
                                 "f64"};
static const char *op_names[] = {"sum", "prod", "max", "min", "avg"};

static size_t dt_size(int dt)
{
    static const size_t s[] = {1, 4, 8, 2, 2, 4, 8};
    return s[dt];
}

static int dt_float(int dt) { return dt >= MOX_V1_DTYPE_F16; }

/* Precision (significant bits) and unit roundoff of a float type. */
static int dt_bits(int dt)
{
    return dt == MOX_V1_DTYPE_F16 ? 11 : dt == MOX_V1_DTYPE_BF16 ? 8
           : dt == MOX_V1_DTYPE_F32 ? 24 : 53;
}

/* ---- element access ------------------------------------------------- */

static void put_f(int dt, double v, void *p)
{
    switch (dt) {
    case MOX_V1_DTYPE_F16: {
        uint16_t h = f_to_f16((float)v);
        memcpy(p, &h, 2);
        break;
    }
    case MOX_V1_DTYPE_BF16: {
        uint16_t h = f_to_bf16((float)v);
        memcpy(p, &h, 2);
        break;
    }
    case MOX_V1_DTYPE_F32: {
        float f = (float)v;
        memcpy(p, &f, 4);
        break;
    }
    default: memcpy(p, &v, 8);
    }
}

static double get_f(int dt, const void *p)
{
    uint16_t h;
    float f;
    double d;
    switch (dt) {
    case MOX_V1_DTYPE_F16: memcpy(&h, p, 2); return f16_to_f(h);
    case MOX_V1_DTYPE_BF16: memcpy(&h, p, 2); return bf16_to_f(h);
    case MOX_V1_DTYPE_F32: memcpy(&f, p, 4); return f;
    default: memcpy(&d, p, 8); return d;
    }
}

/* Integers travel as uint64 truncated to the type (little endian). */
static uint64_t trunc_i(int dt, uint64_t v)
{
    size_t b = dt_size(dt);
    return b == 8 ? v : v & ((UINT64_C(1) << (8 * b)) - 1);
}

static void put_i(int dt, uint64_t v, void *p)
{
    uint8_t u8 = (uint8_t)v;
    uint32_t u32 = (uint32_t)v;
    switch (dt) {
    case MOX_V1_DTYPE_U8: memcpy(p, &u8, 1); break;
    case MOX_V1_DTYPE_I32: memcpy(p, &u32, 4); break;
    default: memcpy(p, &v, 8);
    }
}

static uint64_t get_i(int dt, const void *p)
{
    uint8_t u8;
    uint32_t u32;
    uint64_t u64;
    switch (dt) {
    case MOX_V1_DTYPE_U8: memcpy(&u8, p, 1); return u8;
    case MOX_V1_DTYPE_I32: memcpy(&u32, p, 4); return u32;
    default: memcpy(&u64, p, 8); return u64;
    }
}

/* Signed value of an integer element (u8 is unsigned). */
static int64_t sval(int dt, uint64_t v)
{
    if (dt == MOX_V1_DTYPE_I32)
        return (int32_t)(uint32_t)v;
    if (dt == MOX_V1_DTYPE_I64)
        return (int64_t)v;
    return (int64_t)v;
}

/* ---- the data every rank regenerates -------------------------------- */

static uint64_t rnd(const conf_ctx_t *x, const conf_case_t *c, int s,
                    uint64_t e, uint64_t salt)
{
    return td_mix(x->seed ^ td_mix(c->key ^ td_mix(((uint64_t)s << 40) ^
                                                   (salt << 58) ^ e)));
}

/* Value rank s contributes at element e of the full vector, as stored in
 * its type (so exactly representable in a double for float types). */
static double in_f(const conf_ctx_t *x, const conf_case_t *c, int s,
                   uint64_t e)
{
    int dt = c->dtype, P = x->size;
    uint64_t r = rnd(x, c, s, e, 1);
    double v;
    if (c->op == MOX_V1_OP_PROD) {
        v = 0.5 + (double)(r % 1024) / 1024.0; /* [0.5, 1.5) */
    } else if (dt == MOX_V1_DTYPE_F16 || dt == MOX_V1_DTYPE_BF16) {
        /* The same on every rank; element 0 always has the large value
         * on the last rank (positive). */
        uint64_t pick = e == 0 ? 0 : rnd(x, c, 0, e, 2);
        if (pick % 4 != 3) {
            /* One large value, small ones of the same sign elsewhere. */
            int big = pick % 4 == 0 ? P - 1 : pick % 4 == 1 ? 0
                      : (int)((pick >> 8) % (uint64_t)P);
            double sign = (pick >> 20) & 1 ? -1.0 : 1.0;
            int p = dt_bits(dt);
            if (s == big)
                v = ldexp(1.0, p - 1) + (double)(r % (UINT64_C(1) << (p - 1)));
            else
                v = (double)(77 + r % 49) / 256.0; /* 0.30 .. 0.49 */
            v *= sign;
        } else {
            v = (double)((int64_t)(r % 2048) - 1024) / 256.0; /* [-4, 4) */
        }
    } else {
        /* Mantissa in [-1, 1) (24 or 53 bits), spread over 2^-4 .. 2^4. */
        if (dt == MOX_V1_DTYPE_F64)
            v = ldexp((double)((int64_t)(r >> 11) - (INT64_C(1) << 52)), -52);
        else
            v = ldexp((double)((int64_t)(r >> 40) - (INT64_C(1) << 23)), -23);
        v = ldexp(v, (int)((r >> 8) % 9) - 4);
    }
    unsigned char q[8];
    put_f(dt, v, q);
    return get_f(dt, q);
}

static uint64_t in_i(const conf_ctx_t *x, const conf_case_t *c, int s,
                     uint64_t e)
{
    uint64_t r = rnd(x, c, s, e, 1);
    if (c->op == MOX_V1_OP_PROD)
        r |= 1; /* odd factors: the product keeps its low bits */
    return trunc_i(c->dtype, r);
}

/* Block-sparse: whether rank s lists block b. */
static int present(const conf_ctx_t *x, const conf_case_t *c, int s,
                   uint64_t b)
{
    return (int)(rnd(x, c, s, b, 3) % 100) < c->density;
}

#define BLOCK_ELEMS 16

/* What rank s sends at element e (sparse: what it puts there, absent
 * blocks hold junk that must be ignored). */
static void fill_elem(const conf_ctx_t *x, const conf_case_t *c, int s,
                      uint64_t e, void *p)
{
    int junk = c->layout == K_SPARSE && !present(x, c, s, e / BLOCK_ELEMS);
    if (dt_float(c->dtype))
        put_f(c->dtype, junk ? 999.0 : in_f(x, c, s, e), p);
    else
        put_i(c->dtype, junk ? 0x5a5a5a5a5a5a5a5aull : in_i(x, c, s, e), p);
}

/* ---- checking one element ------------------------------------------ */

/* 1 when `got` (element e of the full vector) is right, else a reason. */
static int check_elem(conf_ctx_t *x, const conf_case_t *c, uint64_t e,
                      const void *got, char *why, size_t len)
{
    int P = x->size, dt = c->dtype, op = c->op;
    int sparse = c->layout == K_SPARSE;
    if (!dt_float(dt)) {
        uint64_t acc = 0;
        for (int s = 0; s < P; s++) {
            uint64_t v = sparse && !present(x, c, s, e / BLOCK_ELEMS)
                             ? 0 : in_i(x, c, s, e);
            if (s == 0) {
                acc = v;
                continue;
            }
            switch (op) {
            case MOX_V1_OP_SUM: acc += v; break;
            case MOX_V1_OP_PROD: acc *= v; break;
            case MOX_V1_OP_MAX:
                if (sval(dt, v) > sval(dt, acc))
                    acc = v;
                break;
            case MOX_V1_OP_MIN:
                if (sval(dt, v) < sval(dt, acc))
                    acc = v;
                break;
            }
        }
        acc = trunc_i(dt, acc);
        uint64_t g = get_i(dt, got);
        if (g == acc)
            return 1;
        snprintf(why, len, "got %" PRId64 ", expected %" PRId64 " (exact)",
                 sval(dt, g), sval(dt, acc));
        return 0;
    }
    long double sum = 0, sumabs = 0, prod = 1;
    double mx = 0, mn = 0;
    for (int s = 0; s < P; s++) {
        double v = sparse && !present(x, c, s, e / BLOCK_ELEMS)
                       ? 0.0 : in_f(x, c, s, e);
        sum += v;
        sumabs += fabsl((long double)v);
        prod *= v;
        if (s == 0 || v > mx)
            mx = v;
        if (s == 0 || v < mn)
            mn = v;
    }
    double g = get_f(dt, got);
    long double ref, tol;
    long double u_acc = dt == MOX_V1_DTYPE_F64 ? ldexpl(1, -53) : ldexpl(1, -24);
    long double u_t = ldexpl(1, -dt_bits(dt));
    long double ref_err = 4 * P * LDBL_EPSILON; /* of our own reference */
    switch (op) {
    case MOX_V1_OP_MAX: ref = mx; tol = 0; break;
    case MOX_V1_OP_MIN: ref = mn; tol = 0; break;
    case MOX_V1_OP_PROD:
        ref = prod;
        tol = ((P + 1) * u_acc + u_t + ref_err) * fabsl(prod);
        break;
    case MOX_V1_OP_AVG:
        ref = sum / P;
        tol = ((P + 1) * u_acc + ref_err) * sumabs / P + u_t * fabsl(ref);
        break;
    default:
        ref = sum;
        tol = ((P + 1) * u_acc + ref_err) * sumabs + u_t * fabsl(ref);
    }
    if (fabsl((long double)g - ref) <= tol)
        return 1;
    snprintf(why, len, "got %.9g, expected %.9Lg (fp64 reference, "
             "tolerance %.3Lg%s)", g, ref, tol,
             tol == 0 ? ": max/min are exact" : "");
    return 0;
}

/* ---- reduce-scatter ------------------------------------------------- */

static void rs_counts(const conf_ctx_t *x, const conf_case_t *c, uint64_t *n)
{
    int P = x->size;
    for (int j = 0; j < P; j++) {
        switch (c->layout == K_RSV ? c->shape : C_EQUAL) {
        case C_UNEVEN: n[j] = td_count(x->seed, c->key, j, 0, c->max_count, 25); break;
        case C_ZERO: n[j] = 0; break;
        case C_ONE: n[j] = j == P - 1; break;
        case C_ALTERNATE: n[j] = j % 2 ? 0 : c->max_count - (uint64_t)j; break;
        default: n[j] = c->max_count;
        }
    }
}

static int need_rs(conf_ctx_t *x, const conf_case_t *c)
{
    int ok = c->layout == K_RS
                 ? CONF_NEED(x, ireduce_scatter, MOX_V1_COLL_REDUCE_SCATTER)
             : c->layout == K_RSV
                 ? CONF_NEED(x, ireduce_scatter_v, MOX_V1_COLL_REDUCE_SCATTER)
                 : CONF_NEED(x, ireduce_scatter_sparse,
                             MOX_V1_COLL_REDUCE_SCATTER_SPARSE);
    if (!ok)
        return 0;
    if (!(x->caps.reduce_dtypes & (UINT64_C(1) << c->dtype))) {
        conf_skip(x, "caps.reduce_dtypes lacks %s", dt_names[c->dtype]);
        return 0;
    }
    if (!(x->caps.reduce_ops & (UINT64_C(1) << c->op))) {
        conf_skip(x, "caps.reduce_ops lacks %s", op_names[c->op]);
        return 0;
    }
    return 1;
}

static int start_rs(conf_ctx_t *x, const conf_case_t *c, mox_v1_cbuf_t s,
                    mox_v1_buf_t r, const uint64_t *counts, mox_v1_req_t *req)
{
    const mox_plugin_v1_t *t = x->t;
    if (c->layout == K_RSV)
        return t->ireduce_scatter_v(x->comm, s, r, counts, c->dtype, c->op,
                                    req);
    if (c->layout == K_RS)
        return t->ireduce_scatter(x->comm, s, r, counts[0], c->dtype, c->op,
                                  req);
    int P = x->size, me = x->rank;
    uint64_t nb = (uint64_t)P * counts[0] / BLOCK_ELEMS, k = 0;
    uint64_t *blocks = malloc((nb + 1) * sizeof *blocks);
    for (uint64_t b = 0; b < nb; b++)
        if (present(x, c, me, b))
            blocks[k++] = b;
    int st = t->ireduce_scatter_sparse(x->comm, s, r, counts[0], c->dtype,
                                       c->op, BLOCK_ELEMS, blocks, k, req);
    free(blocks);
    return st;
}

static conf_result_t run_rs(conf_ctx_t *x, const conf_case_t *c)
{
    if (!need_rs(x, c))
        return CASE_SKIP;
    int P = x->size, me = x->rank, dt = c->dtype;
    int device = c->shape == C_DEVICE, prog = c->progress;
    size_t eb = dt_size(dt);
    uint64_t *counts = calloc((size_t)P, sizeof *counts), total = 0, off = 0;
    rs_counts(x, c, counts);
    for (int j = 0; j < P; j++) {
        if (j < me)
            off += counts[j];
        total += counts[j];
    }
    uint64_t mine = counts[me];
    /* Full input vector; receive buffer with a canary element after it. */
    unsigned char *in = malloc(total * eb + 1);
    for (uint64_t e = 0; e < total; e++)
        fill_elem(x, c, me, e, in + e * eb);
    size_t rbytes = (size_t)(c->inplace ? total : mine) * eb + eb;
    unsigned char *rb = malloc(rbytes), *first = malloc(mine * eb + 1);
    int runs = !c->expect && !device && (dt == MOX_V1_DTYPE_F16 ||
                                         dt == MOX_V1_DTYPE_BF16) ? 2 : 1;
    conf_result_t res = CASE_PASS;
    char why[256];
    /* Every rank runs the collective `runs` times whatever it found, so
     * the ranks stay in step; the first failure is the verdict. */
    for (int run = 0; run < runs; run++) {
        memset(rb, CANARY, rbytes);
        if (c->inplace)
            memcpy(rb, in, total * eb);
        mox_v1_cbuf_t s = {c->inplace ? MOX_V1_IN_PLACE : in,
                           MOX_V1_MEM_HOST, 0};
        mox_v1_buf_t r = {rb, MOX_V1_MEM_HOST, 0};
        if (device) {
            s.mem_type = r.mem_type = MOX_V1_MEM_DEVICE;
            if (x->caps.mem_types & (1u << MOX_V1_MEM_DEVICE)) {
                res = conf_skip(x, "caps.mem_types has MOX_V1_MEM_DEVICE but "
                                "this suite has no device buffers to pass");
                break;
            }
        }
        mox_v1_req_t req = NULL;
        int st = start_rs(x, c, s, r, counts, &req);
        int want = device ? MOX_V1_ERR_UNSUPPORTED : c->expect;
        if (want) { /* runs == 1 */
            if (st == MOX_V1_OK)
                st = conf_finish(x, st, req, PROG_WAIT);
            if (st != want)
                res = conf_fail(x, "%s %s: got %s, expected %s at start",
                                dt_names[dt], op_names[c->op],
                                conf_status(x, st),
                                want == MOX_V1_ERR_INVALID_ARG
                                    ? "MOX_ERR_INVALID_ARG"
                                    : "MOX_ERR_UNSUPPORTED");
            break;
        }
        st = conf_finish(x, st, req, prog);
        if (res != CASE_PASS)
            continue;
        if (st != MOX_V1_OK) {
            res = conf_fail(x, "%s: %s", conf_status(x, st),
                            x->t->comm_last_error(x->comm));
            continue;
        }
        for (uint64_t i = 0; i < mine; i++)
            if (!check_elem(x, c, off + i, rb + i * eb, why, sizeof why)) {
                res = conf_fail(x, "%s %s: element %" PRIu64 " of my %" PRIu64
                                " (%" PRIu64 " of the vector): %s",
                                dt_names[dt], op_names[c->op], i, mine,
                                off + i, why);
                break;
            }
        size_t end = rbytes - eb;
        for (size_t i = 0; i < eb && res == CASE_PASS; i++)
            if (rb[end + i] != CANARY)
                res = conf_fail(x, "byte %zu past the %s was overwritten", i,
                                c->inplace ? "full vector" : "result");
        if (res != CASE_PASS)
            continue;
        if (run == 0) {
            memcpy(first, rb, mine * eb);
            continue;
        }
        for (uint64_t i = 0; i < mine; i++)
            if (memcmp(first + i * eb, rb + i * eb, eb) != 0) {
                res = conf_fail(x, "not reproducible: the same %s %s twice "
                                "differs at element %" PRIu64 " (%.9g, then "
                                "%.9g)", dt_names[dt], op_names[c->op], i,
                                get_f(dt, first + i * eb),
                                get_f(dt, rb + i * eb));
                break;
            }
    }
    free(first);
    free(rb);
    free(in);
    free(counts);
    return res;
}

/* ---- allgather ------------------------------------------------------ */

static conf_result_t run_ag(conf_ctx_t *x, const conf_case_t *c)
{
    int v = c->layout == K_AGV;
    if (v ? !CONF_NEED(x, iallgatherv, MOX_V1_COLL_ALLGATHER)
          : !CONF_NEED(x, iallgather, MOX_V1_COLL_ALLGATHER))
        return CASE_SKIP;
    int P = x->size, me = x->rank, cl = c->shape;
    int device = cl == C_DEVICE, prog = c->progress;
    size_t eb = dt_size(c->dtype);
    uint64_t *counts = calloc(2 * (size_t)P, sizeof *counts);
    uint64_t *displs = counts + P, tot = 0;
    for (int j = 0; j < P; j++) {
        switch (v ? cl : C_EQUAL) {
        case C_UNEVEN: counts[j] = td_count(x->seed, c->key, j, 0, c->max_count, 25); break;
        case C_ZERO: counts[j] = 0; break;
        case C_ONE: counts[j] = j == P - 1; break;
        default: counts[j] = c->max_count;
        }
    }
    /* allgather: blocks in rank order, contiguous. allgatherv: reverse
     * rank order with a canary element after each block. */
    for (int k = 0; k < P; k++) {
        int j = v ? P - 1 - k : k;
        displs[j] = tot;
        tot += counts[j] + (v ? 1 : 0);
    }
    size_t rbytes = (size_t)tot * eb + eb;
    unsigned char *sb = malloc(counts[me] * eb + 1), *rb = malloc(rbytes);
    td_fill(x->seed, c->key, me, 0, sb, counts[me] * eb);
    memset(rb, CANARY, rbytes);
    if (c->inplace)
        memcpy(rb + displs[me] * eb, sb, counts[me] * eb);
    mox_v1_cbuf_t s = {c->inplace ? MOX_V1_IN_PLACE : sb, MOX_V1_MEM_HOST, 0};
    mox_v1_buf_t r = {rb, MOX_V1_MEM_HOST, 0};
    conf_result_t res = CASE_PASS;
    if (device) {
        s.mem_type = r.mem_type = MOX_V1_MEM_DEVICE;
        if (x->caps.mem_types & (1u << MOX_V1_MEM_DEVICE))
            res = conf_skip(x, "caps.mem_types has MOX_V1_MEM_DEVICE but "
                            "this suite has no device buffers to pass");
    }
    mox_v1_req_t req = NULL;
    int st = MOX_V1_OK;
    if (res == CASE_PASS)
        st = v ? x->t->iallgatherv(x->comm, s, counts[me], r, counts, displs,
                                   c->dtype, &req)
               : x->t->iallgather(x->comm, s, r, c->max_count, c->dtype, &req);
    if (res == CASE_SKIP) {
        /* nothing started */
    } else if (device) {
        if (st != MOX_V1_ERR_UNSUPPORTED) {
            if (st == MOX_V1_OK)
                conf_finish(x, st, req, PROG_WAIT);
            res = conf_fail(x, "device buffers without MOX_V1_MEM_DEVICE in "
                            "caps: got %s, expected MOX_ERR_UNSUPPORTED at "
                            "start", conf_status(x, st));
        }
    } else {
        st = conf_finish(x, st, req, prog);
        if (st != MOX_V1_OK)
            res = conf_fail(x, "%s: %s", conf_status(x, st),
                            x->t->comm_last_error(x->comm));
        for (int j = 0; j < P && res == CASE_PASS; j++) {
            const unsigned char *p = rb + displs[j] * eb;
            size_t bytes = counts[j] * eb;
            int64_t at = td_check(x->seed, c->key, j, 0, p, bytes);
            if (at >= 0) {
                res = conf_fail(x, "block from rank %d (%" PRIu64 " elements "
                                "of %zu bytes) wrong at element %" PRId64, j,
                                counts[j], eb, at / (int64_t)eb);
                break;
            }
            for (size_t i = 0; v && i < eb; i++)
                if (p[bytes + i] != CANARY) {
                    res = conf_fail(x, "byte %zu after the block from rank "
                                    "%d was overwritten", i, j);
                    break;
                }
        }
        for (size_t i = 0; i < eb && res == CASE_PASS; i++)
            if (rb[rbytes - eb + i] != CANARY)
                res = conf_fail(x, "byte %zu past the receive buffer was "
                                "overwritten", i);
    }
    free(sb);
    free(rb);
    free(counts);
    return res;
}

/* ---- the matrix ---------------------------------------------------- */

typedef struct {
    conf_case_t *out;
    int n, max;
} list_t;

static conf_case_t *add(list_t *l, conf_case_t c)
{
    if (l->n >= l->max)
        return NULL;
    l->out[l->n] = c;
    return &l->out[l->n++];
}

/* Reduce-scatter case: kind K_RS/K_RSV/K_SPARSE, count layout, size. */
static void rs(list_t *l, int kind, int dt, int op, uint64_t n, int cl,
               int inplace, int prog, int density)
{
    int expect = 0;
    if (op == MOX_V1_OP_AVG && !dt_float(dt))
        expect = MOX_V1_ERR_INVALID_ARG; /* avg is for float types only */
    else if (kind == K_SPARSE && op != MOX_V1_OP_SUM && op != MOX_V1_OP_AVG)
        expect = MOX_V1_ERR_UNSUPPORTED;
    conf_case_t *c = add(l, (conf_case_t){.run = run_rs, .layout = kind,
                                          .dtype = dt, .op = op,
                                          .max_count = n, .inplace = inplace,
                                          .progress = prog, .shape = cl,
                                          .density = density,
                                          .expect = expect});
    if (!c)
        return;
    const char *suffix = expect == MOX_V1_ERR_INVALID_ARG ? "invalid-arg"
                         : expect ? "unsupported"
                         : cl == C_DEVICE ? "device-mem"
                         : inplace ? "in-place" : prog ? "test" : "wait";
    if (kind == K_RS)
        conf_name(c, "reduce_scatter/%s/%s/n=%" PRIu64 "/%s", dt_names[dt],
                  op_names[op], n, suffix);
    else if (kind == K_RSV)
        conf_name(c, "reduce_scatter_v/%s/%s/max=%" PRIu64 "/%s/%s",
                  dt_names[dt], op_names[op], n, cl_name[cl], suffix);
    else
        conf_name(c, "reduce_scatter_sparse/%s/%s/n=%" PRIu64 "/b=%d/"
                  "density=%d/%s", dt_names[dt], op_names[op], n,
                  BLOCK_ELEMS, density, suffix);
}

static void ag(list_t *l, int kind, int dt, uint64_t n, int cl, int inplace,
               int prog)
{
    conf_case_t *c = add(l, (conf_case_t){.run = run_ag, .layout = kind,
                                          .dtype = dt, .max_count = n,
                                          .inplace = inplace,
                                          .progress = prog | cl << 4});
    if (!c)
        return;
    const char *suffix = cl == C_DEVICE ? "device-mem" : inplace ? "in-place"
                         : prog ? "test" : "wait";
    if (kind == K_AG)
        conf_name(c, "allgather/%s/n=%" PRIu64 "/%s", dt_names[dt], n, suffix);
    else
        conf_name(c, "allgatherv/%s/max=%" PRIu64 "/%s/%s", dt_names[dt], n,
                  cl_name[cl], suffix);
}

int conf_rsag_cases(conf_case_t *out, int max)
{
    list_t l = {out, 0, max};
    enum { U8, I32, I64, F16, BF16, F32, F64 };
    enum { SUM, PROD, MAX, MIN, AVG };
    /* Every type x op (avg on integers must be refused). */
    for (int dt = U8; dt <= F64; dt++)
        for (int op = SUM; op <= AVG; op++)
            rs(&l, K_RS, dt, op, 257, C_EQUAL, 0, PROG_WAIT, 0);
    /* Sizes: zero, one element, a few pages. */
    static const uint64_t sizes[] = {0, 1, 4099};
    for (int k = 0; k < 3; k++) {
        rs(&l, K_RS, F32, SUM, sizes[k], C_EQUAL, 0, PROG_WAIT, 0);
        rs(&l, K_RS, F16, SUM, sizes[k], C_EQUAL, 0, PROG_WAIT, 0);
    }
    rs(&l, K_RS, BF16, SUM, 4099, C_EQUAL, 0, PROG_WAIT, 0);
    rs(&l, K_RS, I64, PROD, 4099, C_EQUAL, 0, PROG_WAIT, 0);
    rs(&l, K_RS, F16, AVG, 4099, C_EQUAL, 0, PROG_WAIT, 0);
    rs(&l, K_RS, F32, SUM, 257, C_EQUAL, 0, PROG_TEST, 0);
    rs(&l, K_RS, F32, SUM, 33, C_DEVICE, 0, PROG_WAIT, 0);
    /* In place. */
    static const int ip[][2] = {{F32, SUM}, {F16, SUM}, {BF16, AVG},
                                {I32, MAX}, {U8, PROD}, {F64, MIN}};
    for (int k = 0; k < 6; k++)
        rs(&l, K_RS, ip[k][0], ip[k][1], 257, C_EQUAL, 1, PROG_WAIT, 0);
    /* Per-rank counts: uneven (some zero), all zero, a single element,
     * every other rank empty; in place. */
    static const int vv[][2] = {{F32, SUM}, {F16, SUM}, {BF16, SUM},
                                {I64, SUM}, {U8, MAX},  {F64, AVG}};
    for (int k = 0; k < 6; k++)
        rs(&l, K_RSV, vv[k][0], vv[k][1], 300, C_UNEVEN, 0, PROG_WAIT, 0);
    rs(&l, K_RSV, F32, SUM, 300, C_ZERO, 0, PROG_WAIT, 0);
    rs(&l, K_RSV, F16, SUM, 1, C_ONE, 0, PROG_WAIT, 0);
    rs(&l, K_RSV, F32, MIN, 300, C_ALTERNATE, 0, PROG_WAIT, 0);
    rs(&l, K_RSV, F16, SUM, 300, C_UNEVEN, 1, PROG_WAIT, 0);
    rs(&l, K_RSV, I32, PROD, 300, C_UNEVEN, 1, PROG_WAIT, 0);
    rs(&l, K_RSV, F32, SUM, 300, C_UNEVEN, 0, PROG_TEST, 0);
    rs(&l, K_RSV, F32, SUM, 33, C_DEVICE, 0, PROG_WAIT, 0);
    /* Block-sparse at a few densities; in place; an op it refuses. */
    static const int sp[][2] = {{F32, SUM}, {F16, SUM}, {BF16, AVG},
                                {F64, SUM}, {I32, SUM}};
    static const int dens[] = {10, 60};
    for (int k = 0; k < 5; k++)
        for (int d = 0; d < 2; d++)
            rs(&l, K_SPARSE, sp[k][0], sp[k][1], 512, C_EQUAL, 0, PROG_WAIT,
               dens[d]);
    rs(&l, K_SPARSE, F32, SUM, 512, C_EQUAL, 0, PROG_WAIT, 0);
    rs(&l, K_SPARSE, F32, SUM, 512, C_EQUAL, 0, PROG_WAIT, 100);
    rs(&l, K_SPARSE, F16, SUM, 512, C_EQUAL, 1, PROG_WAIT, 30);
    rs(&l, K_SPARSE, F32, MAX, 512, C_EQUAL, 0, PROG_WAIT, 30);

    /* Allgather: types x sizes, test-polling, in place, device buffers. */
    static const int at[] = {U8, F16, F32, F64, I64};
    static const uint64_t agn[] = {0, 1, 1000};
    for (int k = 0; k < 5; k++)
        for (int s = 0; s < 3; s++)
            ag(&l, K_AG, at[k], agn[s], C_EQUAL, 0, PROG_WAIT);
    ag(&l, K_AG, F32, 257, C_EQUAL, 0, PROG_TEST);
    ag(&l, K_AG, F32, 257, C_EQUAL, 1, PROG_WAIT);
    ag(&l, K_AG, U8, 1, C_EQUAL, 1, PROG_WAIT);
    ag(&l, K_AG, F32, 33, C_DEVICE, 0, PROG_WAIT);
    static const int avt[] = {U8, F16, F32, I64};
    for (int k = 0; k < 4; k++)
        ag(&l, K_AGV, avt[k], 1000, C_UNEVEN, 0, PROG_WAIT);
    ag(&l, K_AGV, F32, 1000, C_ZERO, 0, PROG_WAIT);
    ag(&l, K_AGV, F16, 1, C_ONE, 0, PROG_WAIT);
    ag(&l, K_AGV, F32, 1000, C_UNEVEN, 1, PROG_WAIT);
    ag(&l, K_AGV, F64, 1000, C_UNEVEN, 0, PROG_TEST);
    return l.n;
}
