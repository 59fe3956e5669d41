/*
 * Conformance cases for MoE dispatch/combine. Every rank regenerates every
 * rank's tokens, routing and weights from the seed, so it knows exactly
 * which rows it must receive (by source rank, then token; docs/moe.md) and
 * checks each one bit for bit (native wire). Combine runs a fake expert
 * (x * (1 + e/E), weighted) whose output the source rank can recompute
 * bit for bit, and compares the sum with an fp64 reference within the
 * rounding bound of one f32 accumulation plus one rounding to x_dtype.
 */
#include "conf.h"
#include "half.h"
#include "testdata.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { M_BASIC, M_TEST, M_NOTIFY, M_ZERO_RANK, M_SHORT };
static const char *variant_name[] = {"wait", "test", "notify", "zero-rank",
                                     "short-capacity"};

typedef struct {
    conf_ctx_t *x;
    const conf_case_t *c;
    int P, E, El, k, H;
} job_t;

/* ---- the job every rank regenerates -------------------------------- */

static uint64_t rnd(const job_t *j, int s, int t, int i, int what)
{
    return td_mix(j->x->seed ^ j->c->key ^
                  td_mix(((uint64_t)s << 40) ^ ((uint64_t)t << 12) ^
                         ((uint64_t)i << 4) ^ (uint64_t)what));
}

static int tokens_of(const job_t *j, int s)
{
    if (j->c->layout == M_ZERO_RANK && s == 0)
        return 0;
    return 40 - (int)(rnd(j, s, 0, 0, 9) % 4);
}

/* Distinct global expert ids of token t of rank s; -1 = empty slot. */
static void routing(const job_t *j, int s, int t, int *ids)
{
    int n = 0;
    for (int i = 0; i < j->k; i++)
        ids[i] = -1;
    if (rnd(j, s, t, 0, 1) % 25 == 0)
        return; /* a token that goes nowhere */
    for (int tries = 0; n < j->k && tries < 64 * j->k; tries++) {
        int e = (int)(rnd(j, s, t, tries, 3) % (uint64_t)j->E), dup = 0;
        for (int q = 0; q < n; q++)
            dup |= ids[q] == e;
        if (!dup)
            ids[n++] = e;
    }
    if (j->k > 2 && rnd(j, s, t, 0, 6) % 8 == 0)
        ids[1] = -1; /* an empty slot in the middle */
}

static float weight_of(const job_t *j, int s, int t, int i)
{
    return (float)((double)(rnd(j, s, t, i, 7) % 1000000) / 1e6 + 0.001);
}

static size_t xsize(int dt) { return dt == MOX_V1_DTYPE_F32 ? 4 : 2; }

static void x_store(int dt, float v, void *dst)
{
    if (dt == MOX_V1_DTYPE_F32) {
        memcpy(dst, &v, 4);
        return;
    }
    uint16_t q = dt == MOX_V1_DTYPE_BF16 ? f_to_bf16(v) : f_to_f16(v);
    memcpy(dst, &q, 2);
}

static float x_load(int dt, const void *src)
{
    if (dt == MOX_V1_DTYPE_F32) {
        float v;
        memcpy(&v, src, 4);
        return v;
    }
    uint16_t q;
    memcpy(&q, src, 2);
    return dt == MOX_V1_DTYPE_BF16 ? bf16_to_f(q) : f16_to_f(q);
}

/* Half a unit in the last place of x_dtype at magnitude v, doubled. */
static double ulp_of(int dt, double v)
{
    int e;
    frexp(fabs(v), &e);
    int mant = dt == MOX_V1_DTYPE_F32 ? 24 : dt == MOX_V1_DTYPE_BF16 ? 8 : 11;
    double u = ldexp(1, e - mant);
    double tiny = dt == MOX_V1_DTYPE_F16 ? ldexp(1, -24) : ldexp(1, -133);
    return u > tiny ? u : tiny;
}

/* x[t][h] of rank s as stored in x_dtype. */
static void x_bits(const job_t *j, int s, int t, int h, void *dst)
{
    float v = (float)((double)(rnd(j, s, t, h, 8) % 40001) / 10000.0 - 2.0);
    x_store(j->c->x_dtype, v, dst);
}

static float x_ref(const job_t *j, int s, int t, int h)
{
    char b[4];
    x_bits(j, s, t, h, b);
    return x_load(j->c->x_dtype, b);
}

static int owner(const job_t *j, int e) { return e / j->El; }

/* The fake expert's weighted output for token (s,t) on rank d, value h,
 * stored in x_dtype: exactly what run_experts computes on rank d. */
static float expert_row(const job_t *j, int d, const int *ids, const float *w,
                        float x)
{
    float acc = 0;
    for (int i = 0; i < j->k; i++)
        if (ids[i] >= 0 && owner(j, ids[i]) == d)
            acc += w[i] * (float)(1.0 + (double)ids[i] / j->E) * x;
    char b[4];
    x_store(j->c->x_dtype, acc, b);
    return x_load(j->c->x_dtype, b);
}

/* ---- checks -------------------------------------------------------- */

static uint64_t expected_rows(const job_t *j, uint64_t *per_expert)
{
    int ids[64];
    uint64_t rows = 0;
    for (int s = 0; s < j->P; s++)
        for (int t = 0; t < tokens_of(j, s); t++) {
            routing(j, s, t, ids);
            int mine = 0;
            for (int i = 0; i < j->k; i++)
                if (ids[i] >= 0 && owner(j, ids[i]) == j->x->rank) {
                    mine = 1;
                    if (per_expert)
                        per_expert[ids[i] - j->x->rank * j->El]++;
                }
            rows += (uint64_t)mine;
        }
    return rows;
}

static conf_result_t check_dispatch(const job_t *j, const mox_v1_moe_output_t *o,
                                    const uint64_t *want_per_expert)
{
    conf_ctx_t *x = j->x;
    int k = j->k, H = j->H, me = x->rank, dt = j->c->x_dtype, ids[64];
    size_t xs = xsize(dt);
    const char *rx = o->recv_x.ptr;
    const int32_t *ri = o->recv_topk_idx.ptr, *src = o->recv_src.ptr;
    const float *rw = o->recv_topk_weights.ptr;
    uint64_t row = 0;
    for (int s = 0; s < j->P; s++)
        for (int t = 0; t < tokens_of(j, s); t++) {
            routing(j, s, t, ids);
            int mine = 0;
            for (int i = 0; i < k; i++)
                mine |= ids[i] >= 0 && owner(j, ids[i]) == me;
            if (!mine)
                continue;
            if (row >= o->num_recv)
                return conf_fail(x, "num_recv %" PRIu64 ", but the token (%d,%d)"
                                 " is still due", o->num_recv, s, t);
            if (src[2 * row] != s || src[2 * row + 1] != t)
                return conf_fail(x, "row %" PRIu64 " comes from (%d,%d), "
                                 "expected (%d,%d)", row, src[2 * row],
                                 src[2 * row + 1], s, t);
            for (int i = 0; i < k; i++) {
                int m = ids[i] >= 0 && owner(j, ids[i]) == me;
                int want = m ? ids[i] - me * j->El : -1;
                float w = m ? weight_of(j, s, t, i) : 0.0f;
                if (ri[row * k + i] != want ||
                    memcmp(&rw[row * k + i], &w, 4) != 0)
                    return conf_fail(x, "row %" PRIu64 " slot %d: expert %d "
                                     "weight %g, expected %d %g", row, i,
                                     ri[row * k + i], rw[row * k + i], want, w);
            }
            for (int h = 0; h < H; h++) {
                char b[4];
                x_bits(j, s, t, h, b);
                if (memcmp(rx + (row * H + h) * xs, b, xs) != 0)
                    return conf_fail(x, "row %" PRIu64 " (token %d of rank %d) "
                                     "value %d differs from what was sent",
                                     row, t, s, h);
            }
            row++;
        }
    if (row != o->num_recv)
        return conf_fail(x, "num_recv %" PRIu64 ", expected %" PRIu64,
                         o->num_recv, row);
    const uint64_t *pe = o->recv_per_expert.ptr;
    for (int e = 0; e < j->El; e++)
        if (pe[e] != want_per_expert[e])
            return conf_fail(x, "local expert %d: %" PRIu64 " rows, expected %"
                             PRIu64, e, pe[e], want_per_expert[e]);
    return CASE_PASS;
}

/* The fake experts on received rows; order of slots as expert_row. */
static void run_experts(const job_t *j, const mox_v1_moe_output_t *o, char *y)
{
    int k = j->k, H = j->H, dt = j->c->x_dtype;
    const int32_t *ri = o->recv_topk_idx.ptr;
    const float *rw = o->recv_topk_weights.ptr;
    for (uint64_t r = 0; r < o->num_recv; r++) {
        int ids[64];
        for (int i = 0; i < k; i++)
            ids[i] = ri[r * k + i] >= 0 ? ri[r * k + i] + j->x->rank * j->El : -1;
        for (int h = 0; h < H; h++) {
            float xv = x_load(dt, (const char *)o->recv_x.ptr + (r * H + h) * xsize(dt));
            x_store(dt, expert_row(j, j->x->rank, ids, rw + r * k, xv),
                    y + (r * H + h) * xsize(dt));
        }
    }
}

static conf_result_t check_combine(const job_t *j, const char *out)
{
    int me = j->x->rank, dt = j->c->x_dtype, ids[64];
    float w[64];
    for (int t = 0; t < tokens_of(j, me); t++) {
        routing(j, me, t, ids);
        for (int i = 0; i < j->k; i++)
            w[i] = ids[i] >= 0 ? weight_of(j, me, t, i) : 0.0f;
        for (int h = 0; h < j->H; h++) {
            double ref = 0, mag = 0;
            int nd = 0;
            float xv = x_ref(j, me, t, h);
            for (int d = 0; d < j->P; d++) {
                int to_d = 0;
                for (int i = 0; i < j->k; i++)
                    to_d |= ids[i] >= 0 && owner(j, ids[i]) == d;
                if (!to_d)
                    continue;
                double y = expert_row(j, d, ids, w, xv);
                ref += y;
                mag += fabs(y);
                nd++;
            }
            double got = x_load(dt, out + ((size_t)t * j->H + h) * xsize(dt));
            double tol = ulp_of(dt, fmax(fabs(ref), fabs(got))) +
                         (nd + 1) * ldexp(1, -23) * mag;
            if (!(fabs(got - ref) <= tol))
                return conf_fail(j->x, "combine: token %d value %d is %.9g, "
                                 "expected %.9g (+- %.3g) from %d rank(s)", t,
                                 h, got, ref, tol, nd);
        }
    }
    return CASE_PASS;
}

/* ---- the case ------------------------------------------------------ */

static const char *dt_name(int dt)
{
    return dt == MOX_V1_DTYPE_F32 ? "f32" : dt == MOX_V1_DTYPE_BF16 ? "bf16"
           : dt == MOX_V1_DTYPE_F16 ? "f16" : dt == MOX_V1_DTYPE_I32 ? "i32"
                                                                    : "i64";
}

static conf_result_t dispatch_combine(job_t *j, mox_v1_moe_t moe, char *mem[],
                                      const mox_v1_moe_input_t *in)
{
    conf_ctx_t *x = j->x;
    const mox_plugin_v1_t *T = x->t;
    uint64_t want_pe[64] = {0};
    uint64_t want = expected_rows(j, want_pe);
    size_t xs = xsize(j->c->x_dtype);
    mox_v1_req_t req = NULL;
    int st;
    if (j->c->layout == M_NOTIFY) {
        st = T->moe_inotify(moe, in, &req);
        st = conf_finish(x, st, req, PROG_WAIT);
        uint64_t n = 0, pe[64] = {0};
        if (st == MOX_V1_OK)
            st = T->moe_recv_count(moe, &n, pe);
        if (st != MOX_V1_OK)
            return conf_fail(x, "notify: %s: %s", conf_status(x, st),
                             T->comm_last_error(x->comm));
        if (n != want)
            return conf_fail(x, "recv_count %" PRIu64 " after notify, expected %"
                             PRIu64, n, want);
        for (int e = 0; e < j->El; e++)
            if (pe[e] != want_pe[e])
                return conf_fail(x, "recv_count: local expert %d %" PRIu64
                                 " rows, expected %" PRIu64, e, pe[e], want_pe[e]);
    }
    mox_v1_moe_output_t o = {
        .struct_size = sizeof o, .capacity = want,
        .recv_x = {mem[0], MOX_V1_MEM_HOST, 0},
        .recv_topk_idx = {mem[1], MOX_V1_MEM_HOST, 0},
        .recv_topk_weights = {mem[2], MOX_V1_MEM_HOST, 0},
        .recv_src = {mem[3], MOX_V1_MEM_HOST, 0},
        .recv_per_expert = {mem[4], MOX_V1_MEM_HOST, 0}};
    if (j->c->layout == M_SHORT) {
        o.capacity = want ? want - 1 : 0;
        st = T->moe_idispatch(moe, in, &o, &req);
        if (st == MOX_V1_OK)
            st = conf_finish(x, st, req, PROG_WAIT);
        if (want && st != MOX_V1_ERR_OVERFLOW)
            return conf_fail(x, "capacity %" PRIu64 " for %" PRIu64 " rows: "
                             "got %s, expected MOX_ERR_OVERFLOW", o.capacity,
                             want, conf_status(x, st));
        if (!want && st != MOX_V1_OK)
            return conf_fail(x, "capacity 0 for 0 rows: %s: %s",
                             conf_status(x, st), T->comm_last_error(x->comm));
        o.capacity = want; /* the communicator must still work */
    }
    st = T->moe_idispatch(moe, in, &o, &req);
    st = conf_finish(x, st, req, j->c->progress);
    if (st != MOX_V1_OK)
        return conf_fail(x, "dispatch: %s: %s", conf_status(x, st),
                         T->comm_last_error(x->comm));
    conf_result_t r = check_dispatch(j, &o, want_pe);
    /* Combine even after a bad dispatch, so peers are not left waiting. */
    char *y = calloc(want ? want * j->H : 1, xs);
    char *out = malloc(((size_t)tokens_of(j, x->rank) * j->H + 1) * xs);
    memset(out, 0x7f, ((size_t)tokens_of(j, x->rank) * j->H + 1) * xs);
    if (r == CASE_PASS)
        run_experts(j, &o, y);
    st = T->moe_icombine(moe, (mox_v1_cbuf_t){y, 0, 0},
                         (mox_v1_buf_t){out, 0, 0}, &req);
    st = conf_finish(x, st, req, j->c->progress);
    if (r == CASE_PASS && st != MOX_V1_OK)
        r = conf_fail(x, "combine: %s: %s", conf_status(x, st),
                      T->comm_last_error(x->comm));
    if (r == CASE_PASS)
        r = check_combine(j, out);
    free(y);
    free(out);
    return r;
}

static conf_result_t run_moe(conf_ctx_t *x, const conf_case_t *c)
{
    if (!CONF_NEED(x, moe_icombine, MOX_V1_COLL_MOE))
        return CASE_SKIP;
    if (!(x->caps.moe_x_dtypes & (1u << c->x_dtype)))
        return conf_skip(x, "caps.moe_x_dtypes lacks MOX_V1_DTYPE_%s",
                         dt_name(c->x_dtype));
    if (!(x->caps.moe_idx_dtypes & (1u << c->idx_dtype)))
        return conf_skip(x, "caps.moe_idx_dtypes lacks MOX_V1_DTYPE_%s",
                         dt_name(c->idx_dtype));
    job_t j = {x, c, x->size, 4 * x->size, 4, 4, 72};
    const mox_plugin_v1_t *T = x->t;
    mox_v1_moe_config_t cfg = {.struct_size = sizeof cfg, .num_experts = j.E,
                               .hidden = j.H, .topk = j.k,
                               .x_dtype = c->x_dtype, .idx_dtype = c->idx_dtype,
                               .dispatch_wire = -1, .combine_wire = -1,
                               .algo = c->algo};
    mox_v1_moe_t moe = NULL;
    int st = T->moe_create(x->comm, &cfg, &moe);
    if (st != MOX_V1_OK)
        return conf_fail(x, "moe_create: %s: %s", conf_status(x, st),
                         T->comm_last_error(x->comm));
    /* Input of this rank. */
    int n = tokens_of(&j, x->rank), ids[64];
    size_t xs = xsize(c->x_dtype), is = c->idx_dtype == MOX_V1_DTYPE_I32 ? 4 : 8;
    char *xin = malloc((size_t)n * j.H * xs + 1);
    char *idx = malloc((size_t)n * j.k * is + 1);
    float *w = malloc(((size_t)n * j.k + 1) * sizeof *w);
    for (int t = 0; t < n; t++) {
        routing(&j, x->rank, t, ids);
        for (int h = 0; h < j.H; h++)
            x_bits(&j, x->rank, t, h, xin + ((size_t)t * j.H + h) * xs);
        for (int i = 0; i < j.k; i++) {
            int64_t v = ids[i];
            int32_t v32 = ids[i];
            memcpy(idx + ((size_t)t * j.k + i) * is, is == 4 ? (void *)&v32
                                                             : (void *)&v, is);
            w[t * j.k + i] = ids[i] >= 0 ? weight_of(&j, x->rank, t, i) : 0.0f;
        }
    }
    mox_v1_moe_input_t in = {.struct_size = sizeof in, .num_tokens = n,
                             .x = {xin, 0, 0}, .topk_idx = {idx, 0, 0},
                             .topk_weights = {w, 0, 0}};
    uint64_t cap = expected_rows(&j, NULL) + 1;
    char *mem[5] = {malloc(cap * j.H * xs), malloc(cap * j.k * 4),
                    malloc(cap * j.k * 4), malloc(cap * 2 * 4),
                    malloc((size_t)j.El * 8)};
    conf_result_t r = dispatch_combine(&j, moe, mem, &in);
    for (int i = 0; i < 5; i++)
        free(mem[i]);
    free(xin);
    free(idx);
    free(w);
    T->moe_destroy(moe);
    return r;
}

int conf_moe_cases(conf_case_t *out, int max)
{
    int n = 0;
    static const int xs[] = {MOX_V1_DTYPE_F32, MOX_V1_DTYPE_BF16,
                             MOX_V1_DTYPE_F16};
    static const int is[] = {MOX_V1_DTYPE_I32, MOX_V1_DTYPE_I64};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2 && n < max; b++) {
            out[n] = (conf_case_t){.run = run_moe, .x_dtype = xs[a],
                                   .idx_dtype = is[b], .algo = -1};
            conf_name(&out[n++], "moe/%s/%s/algo=default/wait",
                      dt_name(xs[a]), dt_name(is[b]));
        }
    /* Algorithm hints: an implementation may ignore them, results agree. */
    static const char *algos[] = {"dedup", "alltoallv", "allgather"};
    for (int a = 0; a < 3 && n < max; a++) {
        out[n] = (conf_case_t){.run = run_moe, .x_dtype = MOX_V1_DTYPE_F32,
                               .idx_dtype = MOX_V1_DTYPE_I32, .algo = a + 1};
        conf_name(&out[n++], "moe/f32/i32/algo=%s/wait", algos[a]);
    }
    for (int v = M_TEST; v <= M_SHORT && n < max; v++) {
        out[n] = (conf_case_t){.run = run_moe, .x_dtype = MOX_V1_DTYPE_BF16,
                               .idx_dtype = MOX_V1_DTYPE_I32, .algo = -1,
                               .layout = v,
                               .progress = v == M_TEST ? PROG_TEST : PROG_WAIT};
        conf_name(&out[n++], "moe/bf16/i32/algo=default/%s", variant_name[v]);
    }
    return n;
}
