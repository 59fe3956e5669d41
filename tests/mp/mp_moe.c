/*
 * Multi-process MoE dispatch/combine check, run under tools/mox-run.
 *
 * Every rank regenerates every rank's tokens, routing and weights from the
 * seed, so it knows exactly which rows it must receive (by source rank,
 * then token) and checks each one: bit for bit on the native wire, within
 * the documented bound for bf16/fp8 (docs/numerics.md). Combine runs a
 * fake expert (row * (1 + e/E), weighted) and is compared with an fp64
 * reference. With --check-bytes the inter-node bytes this rank sent during
 * dispatch must equal the formula of docs/moe.md exactly.
 */
#include "mox/mox.h"
#include "testdata.h"

#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    uint64_t seed;
    int tokens, hidden, experts, topk, iters, zero_rank, check_bytes;
    int use_notify, victim;
    const char *routing, *x_type, *idx_type, *wire, *comb, *algo, *mode;
    const char *rbuf; /* mox_moe_recv_buffer: none|all|odd|unused|out|odd-out */
} opts_t;

static int P, me, nnodes;
static int *node_of;
static opts_t o;
static mox_status_t last_status; /* of the last dispatch */
static mox_status_t combine_status = MOX_OK; /* of the last combine */

/* ---- the job every rank can regenerate -------------------------------- */

static int tokens_of(int s)
{
    if (s == o.zero_rank)
        return 0;
    return o.tokens - (int)(td_mix(o.seed * 7 + (uint64_t)s) % 4);
}

static uint64_t rnd(int s, int t, int j, int what)
{
    return td_mix(o.seed ^ td_mix(((uint64_t)s << 40) ^ ((uint64_t)t << 12) ^
                                  ((uint64_t)j << 4) ^ (uint64_t)what));
}

/* Global expert ids of token t of rank s into ids[k] (-1 = none). */
static void routing(int s, int t, int *ids)
{
    int E = o.experts, k = o.topk, El = E / P, n = 0;
    for (int j = 0; j < k; j++)
        ids[j] = -1;
    if (rnd(s, t, 0, 1) % 50 == 0)
        return; /* some tokens go nowhere */
    int allowed_nodes[4], na = 0;
    if (!strcmp(o.routing, "node-limited")) {
        for (int i = 0; i < 4 && i < nnodes; i++) {
            int cand = (int)(rnd(s, t, i, 2) % (uint64_t)nnodes), dup = 0;
            for (int q = 0; q < na; q++)
                dup |= allowed_nodes[q] == cand;
            if (!dup)
                allowed_nodes[na++] = cand;
        }
    }
    for (int tries = 0; n < k && tries < 64 * k; tries++) {
        int e = (int)(rnd(s, t, tries, 3) % (uint64_t)E);
        if (!strcmp(o.routing, "skewed") && n == 0 && rnd(s, t, 0, 4) % 2)
            e = 0;
        if (!strcmp(o.routing, "local"))
            e = s * El + (int)(rnd(s, t, tries, 5) % (uint64_t)El);
        if (na) {
            int ok = 0;
            for (int q = 0; q < na; q++)
                ok |= node_of[e / El] == allowed_nodes[q];
            if (!ok)
                continue;
        }
        int dup = 0;
        for (int q = 0; q < n; q++)
            dup |= ids[q] == e;
        if (dup)
            continue;
        ids[n++] = e;
    }
    /* A few empty slots in the middle. */
    if (k > 2 && rnd(s, t, 0, 6) % 10 == 0)
        ids[1] = -1;
}

static float weight_of(int s, int t, int j)
{
    return (float)((double)(rnd(s, t, j, 7) % 1000000) / 1e6 + 0.001);
}

static mox_dtype_t xdt(void)
{
    return !strcmp(o.x_type, "bf16") ? MOX_DTYPE_BF16
           : !strcmp(o.x_type, "f16") ? MOX_DTYPE_F16 : MOX_DTYPE_F32;
}
static size_t xsize(void) { return xdt() == MOX_DTYPE_F32 ? 4 : 2; }

/* Reference conversions, written independently of the library. */
static float bf16_to_f(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint16_t f_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static float f16_to_f(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return (float)((h & 0x8000) ? -v : v);
}
static uint16_t f_to_f16(float f)
{
    /* Round to nearest even in double (exact: a is a float, the scalings
     * are powers of two): subnormals in units of 2^-24, normals with 10
     * fraction bits; a carry to the next binade or into the normals is the
     * right code as it stands. */
    uint16_t sign = f < 0 ? 0x8000 : 0;
    double a = fabs((double)f);
    if (a < ldexp(1, -14))
        return (uint16_t)(sign | (uint16_t)nearbyint(ldexp(a, 24)));
    int e;
    frexp(a, &e); /* a in [2^(e-1), 2^e) */
    double q = nearbyint(ldexp(a, 11 - e)); /* in [1024, 2048] */
    int E = e - 1 + 15;
    if (q == 2048) {
        q = 1024;
        E++;
    }
    if (E >= 31)
        return (uint16_t)(sign | 0x7c00);
    return (uint16_t)(sign | (uint16_t)(E << 10 | ((int)q - 1024)));
}

static float x_value(int s, int t, int h)
{
    return (float)((double)(rnd(s, t, h, 8) % 40001) / 10000.0 - 2.0);
}

/* x[t][h] as stored in x_dtype, and as a float. */
static void x_store(int s, int t, int h, void *dst)
{
    float v = x_value(s, t, h);
    if (xdt() == MOX_DTYPE_F32) {
        memcpy(dst, &v, 4);
    } else {
        uint16_t q = xdt() == MOX_DTYPE_BF16 ? f_to_bf16(v) : f_to_f16(v);
        memcpy(dst, &q, 2);
    }
}
static float x_load(const void *src)
{
    if (xdt() == MOX_DTYPE_F32) {
        float v;
        memcpy(&v, src, 4);
        return v;
    }
    uint16_t q;
    memcpy(&q, src, 2);
    return xdt() == MOX_DTYPE_BF16 ? bf16_to_f(q) : f16_to_f(q);
}
static float x_ref(int s, int t, int h)
{
    char buf[4];
    x_store(s, t, h, buf);
    return x_load(buf);
}

/* Relative and block-absolute error allowed on the dispatch wire. */
static double wire_rel(void)
{
    if (!strcmp(o.wire, "fp8"))
        return ldexp(1, -4);
    if (!strcmp(o.wire, "bf16") && xdt() != MOX_DTYPE_BF16)
        return ldexp(1, -8);
    return 0;
}

/* ---- checks ----------------------------------------------------------- */

static int owner(int e) { return e / (o.experts / P); }

static int token_to(int s, int t, int d)
{
    int ids[1024];
    routing(s, t, ids);
    for (int j = 0; j < o.topk; j++)
        if (ids[j] >= 0 && owner(ids[j]) == d)
            return 1;
    return 0;
}

static int check_dispatch(const mox_moe_output_t *out, const char *rx)
{
    int k = o.topk, H = o.hidden, El = o.experts / P, bad = 0;
    uint64_t row = 0;
    int ids[1024];
    uint64_t per_expert[4096] = {0};
    for (int s = 0; s < P && !bad; s++) {
        for (int t = 0; t < tokens_of(s) && !bad; t++) {
            if (!token_to(s, t, me))
                continue;
            if (row >= out->num_recv) {
                fprintf(stderr, "rank %d: only %" PRIu64 " rows, expected "
                        "more (source %d token %d)\n", me, out->num_recv, s, t);
                return 1;
            }
            routing(s, t, ids);
            if (out->recv_src[2 * row] != s || out->recv_src[2 * row + 1] != t) {
                fprintf(stderr, "rank %d row %" PRIu64 ": source (%d,%d), "
                        "expected (%d,%d)\n", me, row, out->recv_src[2 * row],
                        out->recv_src[2 * row + 1], s, t);
                return 1;
            }
            for (int j = 0; j < k; j++) {
                int mine = ids[j] >= 0 && owner(ids[j]) == me;
                int want = mine ? ids[j] - me * El : -1;
                float w = mine ? weight_of(s, t, j) : 0.0f;
                if (mine)
                    per_expert[want]++;
                if (out->recv_topk_idx[row * k + j] != want ||
                    out->recv_topk_weights[row * k + j] != w) {
                    fprintf(stderr, "rank %d row %" PRIu64 " slot %d: expert "
                            "%d weight %g, expected %d %g\n", me, row, j,
                            out->recv_topk_idx[row * k + j],
                            out->recv_topk_weights[row * k + j], want, w);
                    return 1;
                }
            }
            double rel = wire_rel(), amax = 0;
            for (int h = 0; h < H; h++)
                amax = fmax(amax, fabs(x_ref(s, t, h)));
            for (int h = 0; h < H; h++) {
                float got = x_load(rx + (row * (size_t)H + (size_t)h) * xsize());
                double ref = x_ref(s, t, h);
                /* bf16 and fp8 bounds of docs/numerics.md; output rounded
                 * to x_dtype once more (one more half ulp). */
                double tol = rel ? (rel + ldexp(1, -8)) * fabs(ref) +
                                   amax / 448.0 * ldexp(1, -9) * 2 : 0;
                if (rel == 0 ? memcmp(&got, &(float){(float)ref}, 4) != 0
                             : fabs(got - ref) > tol) {
                    fprintf(stderr, "rank %d row %" PRIu64 " (src %d tok %d) "
                            "h %d: %.9g, expected %.9g\n", me, row, s, t, h,
                            got, ref);
                    return 1;
                }
            }
            row++;
        }
    }
    if (row != out->num_recv) {
        fprintf(stderr, "rank %d: %" PRIu64 " rows, expected %" PRIu64 "\n",
                me, out->num_recv, row);
        return 1;
    }
    for (int e = 0; e < El; e++)
        if (out->recv_per_expert[e] != per_expert[e]) {
            fprintf(stderr, "rank %d: expert %d got %" PRIu64 " rows, expected "
                    "%" PRIu64 "\n", me, e, out->recv_per_expert[e],
                    per_expert[e]);
            return 1;
        }
    return bad;
}

/* The fake expert e multiplies by (1 + e/E). */
static double expert_scale(int e) { return 1.0 + (double)e / o.experts; }

static void run_experts(const mox_moe_output_t *out, const char *rx, char *y)
{
    int k = o.topk, H = o.hidden, El = o.experts / P;
    for (uint64_t r = 0; r < out->num_recv; r++)
        for (int h = 0; h < H; h++) {
            float acc = 0;
            float x = x_load(rx + (r * (size_t)H + (size_t)h) * xsize());
            for (int j = 0; j < k; j++) {
                int le = out->recv_topk_idx[r * k + j];
                if (le >= 0)
                    acc += out->recv_topk_weights[r * k + j] *
                           (float)expert_scale(me * El + le) * x;
            }
            char *dst = y + (r * (size_t)H + (size_t)h) * xsize();
            if (xdt() == MOX_DTYPE_F32)
                memcpy(dst, &acc, 4);
            else {
                uint16_t q = xdt() == MOX_DTYPE_BF16 ? f_to_bf16(acc)
                                                     : f_to_f16(acc);
                memcpy(dst, &q, 2);
            }
        }
}

static int check_combine(const char *got_buf)
{
    int k = o.topk, H = o.hidden, ids[1024];
    double eps_x = xdt() == MOX_DTYPE_F32 ? ldexp(1, -22)
                   : xdt() == MOX_DTYPE_BF16 ? ldexp(1, -7) : ldexp(1, -10);
    double eps_c = !strcmp(o.comb, "bf16") ? ldexp(1, -8) : 0;
    for (int t = 0; t < tokens_of(me); t++) {
        routing(me, t, ids);
        double amax = 0;
        for (int h = 0; h < H; h++)
            amax = fmax(amax, fabs(x_ref(me, t, h)));
        for (int h = 0; h < H; h++) {
            double ref = 0, mag = 0, x = x_ref(me, t, h);
            for (int j = 0; j < k; j++)
                if (ids[j] >= 0) {
                    double term = weight_of(me, t, j) * expert_scale(ids[j]);
                    ref += term * x;
                    mag += fabs(term) * (fabs(x) * (1 + wire_rel()) +
                                         amax / 448.0 * ldexp(1, -9) * 2);
                }
            /* Wire error, rounding of each expert row and (twice with
             * dedup: a rank's row, then the forwarder's sum of its node's
             * rows) to the combine wire, f32 sums, final rounding to
             * x_dtype. */
            double tol = mag * (wire_rel() + 3 * eps_x + 2 * eps_c +
                                ldexp(1, -20)) +
                         1e-30;
            float got = x_load(got_buf + ((size_t)t * H + (size_t)h) * xsize());
            if (fabs(got - ref) > tol) {
                fprintf(stderr, "rank %d combine token %d h %d: %.9g, fp64 "
                        "reference %.9g, tolerance %.3g\n", me, t, h, got, ref,
                        tol);
                return 1;
            }
        }
    }
    return 0;
}

/* ---- byte accounting (docs/moe.md) ------------------------------------ */

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

static uint64_t expected_inter_bytes(void)
{
    size_t k = (size_t)o.topk, H = (size_t)o.hidden, hid;
    if (!strcmp(o.wire, "fp8"))
        hid = H + 4 * ((H + 127) / 128);
    else if (!strcmp(o.wire, "bf16"))
        hid = 2 * H;
    else
        hid = xsize() * H;
    size_t rec = align8(align8(4 + 8 * k) + hid);
    size_t notify = 64 + 8 * (size_t)(o.experts / P);
    int dedup = !strcmp(o.algo, "dedup") || (!strcmp(o.algo, "auto") && nnodes > 1);
    uint64_t total = 0, ids_nodes[64];
    for (int r = 0; r < P; r++)
        if (node_of[r] != node_of[me])
            total += notify;
    int ids[1024];
    for (int t = 0; t < tokens_of(me); t++) {
        routing(me, t, ids);
        int n = 0;
        for (int j = 0; j < o.topk; j++) {
            if (ids[j] < 0)
                continue;
            int d = owner(ids[j]);
            uint64_t key = dedup ? (uint64_t)node_of[d] : (uint64_t)d;
            if (node_of[d] == node_of[me])
                continue;
            int seen = 0;
            for (int q = 0; q < n; q++)
                seen |= ids_nodes[q] == key;
            if (!seen && n < 64)
                ids_nodes[n++] = key;
        }
        total += (uint64_t)n * rec;
    }
    return total;
}

/* ---- main ------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: mp_moe [--seed S] [--tokens T] [--hidden H] "
               "[--experts E] [--topk K]\n"
               "  [--routing uniform|node-limited|skewed|local] [--zero-rank R]\n"
               "  [--x f32|bf16|f16] [--idx i32|i64] [--wire native|bf16|fp8]\n"
               "  [--combine-wire f32|bf16] [--algo auto|dedup|alltoallv|allgather]\n"
               "  [--iters N] [--notify] [--check-bytes]\n"
               "  [--recv-buffer none|all|odd|unused|out|odd-out]  (recv_x from "
               "mox_moe_recv_buffer on every rank,\n"
               "  on odd ranks, or requested but recv_x elsewhere; out: the "
               "expert outputs too,\n  in its second half, on every rank or "
               "on odd ranks)\n"
               "  [--mode ok|bad-expert|dup-expert|null-x|small-capacity|bad-hidden|bad-note|"
               "bad-experts --victim R]\n"
               "  [--mode dies-early|dies-in-dispatch|dies-in-combine|dies-stalled --victim R]\n"
               "  (rank R exits without a word after creation, right after starting a\n"
               "  dispatch, or right after starting a combine; or, dies-stalled, stays\n"
               "  alive 20 s without calling dispatch, then exits: every other rank must\n"
               "  get MOX_ERR_PEER or MOX_ERR_TIMEOUT within 3 rounds (dies-stalled: within\n"
               "  1.5 x MOX_TIMEOUT + 1 s), and prints how long it took)\n"
               "  (bad-note: run with MOX_TEST_BAD_NOTE=R, rank R answers "
               "in-place reads with a bad offset,\n"
               "  or MOX_TEST_SHORT_BACK=R, rank R as a forwarder sends "
               "summed rows one row short;\n"
               "  a combine that fails passes, one that succeeds must be "
               "right)\n");
}

static int parse(int argc, char **argv)
{
    static const struct option lo[] = {
        {"seed", 1, 0, 's'}, {"tokens", 1, 0, 't'}, {"hidden", 1, 0, 'H'},
        {"experts", 1, 0, 'E'}, {"topk", 1, 0, 'k'}, {"routing", 1, 0, 'r'},
        {"zero-rank", 1, 0, 'z'}, {"x", 1, 0, 'x'}, {"idx", 1, 0, 'i'},
        {"wire", 1, 0, 'w'}, {"combine-wire", 1, 0, 'c'}, {"algo", 1, 0, 'a'},
        {"iters", 1, 0, 'n'}, {"notify", 0, 0, 'N'}, {"check-bytes", 0, 0, 'B'},
        {"mode", 1, 0, 'm'}, {"victim", 1, 0, 'v'}, {"help", 0, 0, 'h'},
        {"recv-buffer", 1, 0, 'R'},
        {0, 0, 0, 0}};
    o = (opts_t){1, 64, 128, 64, 8, 2, -1, 0, 0, -1, "uniform", "f32", "i32",
                 "native", "f32", "auto", "ok", "none"};
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 's': o.seed = strtoull(optarg, NULL, 0); break;
        case 't': o.tokens = atoi(optarg); break;
        case 'H': o.hidden = atoi(optarg); break;
        case 'E': o.experts = atoi(optarg); break;
        case 'k': o.topk = atoi(optarg); break;
        case 'r': o.routing = optarg; break;
        case 'z': o.zero_rank = atoi(optarg); break;
        case 'x': o.x_type = optarg; break;
        case 'i': o.idx_type = optarg; break;
        case 'w': o.wire = optarg; break;
        case 'c': o.comb = optarg; break;
        case 'a': o.algo = optarg; break;
        case 'n': o.iters = atoi(optarg); break;
        case 'N': o.use_notify = 1; break;
        case 'B': o.check_bytes = 1; break;
        case 'm': o.mode = optarg; break;
        case 'v': o.victim = atoi(optarg); break;
        case 'R': o.rbuf = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    return o.topk >= 1 && o.topk <= 1024 && o.hidden >= 1 && o.tokens >= 4 ? 0
                                                                           : -1;
}

static int algo_code(void)
{
    return !strcmp(o.algo, "dedup") ? MOX_MOE_ALGO_DEDUP
           : !strcmp(o.algo, "alltoallv") ? MOX_MOE_ALGO_ALLTOALLV
           : !strcmp(o.algo, "allgather") ? MOX_MOE_ALGO_ALLGATHER
                                          : MOX_MOE_ALGO_AUTO;
}

static int report(mox_comm_t comm, const char *what, mox_status_t st)
{
    printf("MOXTEST error rank %d: %s: %s: %s\n", me, what, mox_status_name(st),
           mox_comm_last_error(comm));
    fflush(stdout);
    return 1;
}

/* mox_moe_layout against counts derived here from the generator. */
static int check_layout(mox_moe_t moe, const void *idx)
{
    int T = tokens_of(me), ids[1024], bad = 0;
    uint64_t *per_rank = calloc((size_t)P, 8), *per_node = calloc(64, 8);
    uint64_t *per_expert = calloc((size_t)o.experts, 8);
    uint8_t *in_rank = calloc((size_t)T * P + 1, 1);
    mox_status_t st = mox_moe_layout(moe, idx, T, per_rank, per_node,
                                     per_expert, in_rank);
    if (st != MOX_OK) {
        fprintf(stderr, "rank %d: mox_moe_layout failed: %s\n", me,
                mox_status_name(st));
        bad = 1;
    }
    uint64_t want_rank[4096] = {0}, want_node[64] = {0};
    uint64_t *want_expert = calloc((size_t)o.experts, 8);
    for (int t = 0; t < T && !bad; t++) {
        routing(me, t, ids);
        int rank_hit[4096] = {0}, node_hit[64] = {0};
        for (int j = 0; j < o.topk; j++) {
            if (ids[j] < 0)
                continue;
            want_expert[ids[j]]++;
            int d = owner(ids[j]);
            if (!rank_hit[d]++)
                want_rank[d]++;
            if (!node_hit[node_of[d]]++)
                want_node[node_of[d]]++;
        }
        for (int d = 0; d < P; d++)
            if (in_rank[(size_t)t * P + d] != (rank_hit[d] > 0)) {
                fprintf(stderr, "rank %d: is_token_in_rank[%d][%d] = %d\n",
                        me, t, d, in_rank[(size_t)t * P + d]);
                bad = 1;
            }
    }
    for (int d = 0; d < P && !bad; d++)
        bad |= per_rank[d] != want_rank[d];
    for (int n = 0; n < nnodes && !bad; n++)
        bad |= per_node[n] != want_node[n];
    for (int e = 0; e < o.experts && !bad; e++)
        bad |= per_expert[e] != want_expert[e];
    if (bad)
        fprintf(stderr, "rank %d: mox_moe_layout counts differ from the "
                "generator's\n", me);
    free(per_rank); free(per_node); free(per_expert); free(in_rank);
    free(want_expert);
    return bad;
}

/* One dispatch + combine round; returns 0 when every check passed. */
static int round_trip(mox_comm_t comm, mox_moe_t moe, int iter,
                      uint64_t *inter_dispatch)
{
    int T = tokens_of(me), k = o.topk, H = o.hidden, ids[1024];
    int i64 = !strcmp(o.idx_type, "i64");
    char *x = malloc((size_t)T * H * xsize() + 1);
    void *idx = malloc((size_t)T * k * (i64 ? 8 : 4) + 1);
    float *w = malloc((size_t)T * k * 4 + 1);
    for (int t = 0; t < T; t++) {
        routing(me, t, ids);
        for (int h = 0; h < H; h++)
            x_store(me, t, h, x + ((size_t)t * H + (size_t)h) * xsize());
        for (int j = 0; j < k; j++) {
            int64_t e = ids[j];
            if (!strcmp(o.mode, "bad-expert") && me == o.victim && t == 1 && j == 0)
                e = o.experts + 5;
            if (!strcmp(o.mode, "dup-expert") && me == o.victim && t == 2 &&
                j < 2)
                e = 3 % o.experts;
            if (i64)
                ((int64_t *)idx)[(size_t)t * k + j] = e;
            else
                ((int32_t *)idx)[(size_t)t * k + j] = (int32_t)e;
            w[(size_t)t * k + j] = weight_of(me, t, j);
        }
    }
    mox_moe_input_t in = {sizeof in, T, x, idx, w};
    if (!strcmp(o.mode, "null-x") && me == o.victim)
        in.x = NULL; /* every rank must fail this dispatch, named */
    /* Worst case: every token of every rank. */
    uint64_t cap = 0;
    for (int s = 0; s < P; s++)
        cap += (uint64_t)tokens_of(s);
    mox_status_t st = MOX_OK;
    if (!strcmp(o.mode, "ok") && check_layout(moe, idx)) {
        free(x); free(idx); free(w);
        return 1;
    }
    if (strstr(o.mode, "-expert") && me == o.victim) {
        /* The local layout names the same bad token without talking. */
        uint64_t per_rank[4096];
        mox_status_t ls = mox_moe_layout(moe, idx, T, per_rank, NULL, NULL,
                                         NULL);
        const char *msg = mox_comm_last_error(comm);
        int ok = ls == MOX_ERR_INVALID_ARG &&
                 strstr(msg, o.mode[0] == 'b' ? "token 1 slot 0" : "token 2 slot 1");
        printf("rank %d: layout on bad routing: %s: %s\n", me,
               mox_status_name(ls), msg);
        if (!ok) {
            free(x); free(idx); free(w);
            return 1;
        }
    }
    if (o.use_notify) {
        mox_req_t req;
        st = mox_moe_inotify(moe, &in, &req);
        if (st == MOX_OK) {
            st = mox_wait(req);
            mox_req_free(req);
        }
        if (st == MOX_OK)
            st = mox_moe_recv_count(moe, &cap, NULL);
    }
    if (!strcmp(o.mode, "small-capacity") && me == o.victim)
        cap = 1;
    mox_moe_output_t out = {sizeof out, cap, NULL, NULL, NULL, NULL, NULL, 0};
    /* The shared receive buffer: on every rank, odd ranks, or requested
     * but not passed (peers must then send as usual). */
    void *rbuf = NULL;
    int shared_out = !strcmp(o.rbuf, "out") ||
                     (!strcmp(o.rbuf, "odd-out") && me % 2);
    int want_rbuf = !strcmp(o.rbuf, "all") || !strcmp(o.rbuf, "unused") ||
                    (!strcmp(o.rbuf, "odd") && me % 2) || shared_out;
    if (st == MOX_OK && want_rbuf)
        st = mox_moe_recv_buffer(moe, (shared_out ? 2 : 1) * (cap ? cap : 1),
                                 &rbuf);
    int own_x = !rbuf || !strcmp(o.rbuf, "unused");
    out.recv_x = own_x ? malloc(cap * H * xsize() + 1) : rbuf;
    out.recv_topk_idx = malloc(cap * k * 4 + 1);
    out.recv_topk_weights = malloc(cap * k * 4 + 1);
    out.recv_src = malloc(cap * 8 + 1);
    out.recv_per_expert = malloc((size_t)(o.experts / P) * 8 + 8);
    mox_stats_t s0 = {.struct_size = sizeof s0}, s1 = s0;
    mox_comm_stats(comm, &s0);
    if (st == MOX_OK && me == o.victim && !strcmp(o.mode, "dies-in-dispatch")) {
        mox_req_t r;
        mox_moe_idispatch(moe, &in, &out, &r);
        _exit(0); /* a crash with the dispatch under way */
    }
    if (st == MOX_OK)
        st = mox_moe_dispatch(moe, &in, &out);
    mox_comm_stats(comm, &s1);
    *inter_dispatch = s1.bytes_inter - s0.bytes_inter;
    last_status = st;
    /* The per-operation counters describe exactly this dispatch. */
    if (st == MOX_OK && (s1.last_bytes_inter != *inter_dispatch ||
                         s1.last_bytes_intra != s1.bytes_intra - s0.bytes_intra ||
                         strcmp(s1.last_op, "moe_dispatch") != 0)) {
        fprintf(stderr, "rank %d: last-op stats %s %" PRIu64 "/%" PRIu64
                " disagree with the cumulative delta %" PRIu64 "\n", me,
                s1.last_op, s1.last_bytes_inter, s1.last_bytes_intra,
                *inter_dispatch);
        st = MOX_ERR_PROTOCOL;
    }
    int bad = 0;
    if (strcmp(o.mode, "ok") != 0 && strcmp(o.mode, "bad-note") != 0 &&
        strncmp(o.mode, "dies-", 5) != 0) {
        /* Error modes: print what happened; main judges it. */
        if (st != MOX_OK)
            report(comm, o.mode, st);
        bad = st != MOX_OK;
    } else if (st != MOX_OK) {
        bad = report(comm, "dispatch", st);
    } else {
        bad = check_dispatch(&out, out.recv_x);
        /* shared_out: the expert outputs in the shared buffer's second
         * half, where combine reads local ranks' rows in place. */
        char *y = shared_out ? (char *)rbuf + (cap ? cap : 1) * H * xsize()
                             : malloc(out.num_recv * H * xsize() + 1);
        char *res = malloc((size_t)T * H * xsize() + 1);
        run_experts(&out, out.recv_x, y);
        if (me == o.victim && !strcmp(o.mode, "dies-in-combine")) {
            mox_req_t r;
            mox_moe_icombine(moe, y, res, &r);
            _exit(0); /* a crash with the combine under way */
        }
        st = mox_moe_combine(moe, y, res);
        combine_status = st;
        if (st != MOX_OK)
            bad = report(comm, "combine", st);
        else if (!bad)
            bad = check_combine(res);
        if (!shared_out)
            free(y);
        free(res);
    }
    if (!bad && o.check_bytes && !strcmp(o.mode, "ok")) {
        uint64_t want = expected_inter_bytes();
        if (*inter_dispatch != want) {
            fprintf(stderr, "rank %d iter %d: dispatch sent %" PRIu64 " bytes "
                    "between nodes, the formula says %" PRIu64 "\n", me, iter,
                    *inter_dispatch, want);
            bad = 1;
        }
    }
    free(x); free(idx); free(w);
    if (own_x)
        free(out.recv_x);
    free(out.recv_topk_idx); free(out.recv_topk_weights);
    free(out.recv_src); free(out.recv_per_expert);
    return bad;
}

int main(int argc, char **argv)
{
    if (parse(argc, argv) != 0) {
        usage(stderr);
        return 2;
    }
    mox_comm_t comm;
    char err[512];
    mox_comm_params_t params = {.struct_size = sizeof params, .error_buf = err,
                                .error_buf_len = sizeof err};
    if (mox_comm_create(&params, &comm) != MOX_OK) {
        fprintf(stderr, "mox_comm_create: %s\n", err);
        return 1;
    }
    P = mox_comm_size(comm);
    me = mox_comm_rank(comm);
    mox_topo_info_t topo = {.struct_size = sizeof topo};
    mox_comm_topo(comm, &topo);
    nnodes = topo.num_nodes;
    node_of = calloc((size_t)o.experts + (size_t)P, sizeof *node_of);
    for (int r = 0; r < P; r++)
        mox_comm_rank_location(comm, r, &node_of[r], NULL);
    mox_moe_config_t cfg = {sizeof cfg, o.experts, o.hidden, o.topk, xdt(),
                            !strcmp(o.idx_type, "i64") ? MOX_DTYPE_I64
                                                       : MOX_DTYPE_I32,
                            1,
                            !strcmp(o.wire, "fp8") ? MOX_MOE_WIRE_FP8
                            : !strcmp(o.wire, "bf16") ? MOX_MOE_WIRE_BF16
                                                      : MOX_MOE_WIRE_NATIVE,
                            !strcmp(o.comb, "bf16") ? MOX_MOE_WIRE_BF16
                                                    : MOX_MOE_WIRE_F32,
                            algo_code()};
    if (!strcmp(o.mode, "bad-hidden") && me == o.victim)
        cfg.hidden += 1;
    mox_moe_t moe;
    mox_status_t st = mox_moe_create(comm, &cfg, &moe);
    if (!strcmp(o.mode, "bad-hidden") || !strcmp(o.mode, "bad-experts")) {
        /* Every rank must refuse, naming the problem. */
        if (st == MOX_OK) {
            fprintf(stderr, "rank %d: mox_moe_create accepted a bad config\n", me);
            return 1;
        }
        report(comm, "create", st);
        mox_comm_destroy(comm);
        return 0;
    }
    if (st != MOX_OK) {
        report(comm, "create", st);
        return 1;
    }
    int bad = 0;
    uint64_t inter = 0, inter_total = 0;
    if (!strncmp(o.mode, "dies-", 5)) {
        /* A rank dies: the others must fail with a named error in bounded
         * time (run with a short MOX_TIMEOUT), never hang or pass with
         * wrong data. A round may still pass when everything of the
         * victim's was delivered before it left; a later one cannot. */
        if (me == o.victim && !strcmp(o.mode, "dies-early"))
            _exit(0);
        if (me == o.victim && !strcmp(o.mode, "dies-stalled")) {
            sleep(20); /* bounded: longer than the others' MOX_TIMEOUT */
            _exit(0);
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int failed = 0;
        for (int it = 0; it < 3 && !failed; it++) {
            o.seed += (uint64_t)it;
            failed = round_trip(comm, moe, it, &inter);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        mox_status_t got = last_status != MOX_OK ? last_status : combine_status;
        double secs = (double)(t1.tv_sec - t0.tv_sec) +
                      (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        printf("rank %d: %s: %s after %.1f s\n", me, o.mode,
               failed ? mox_status_name(got) : "no error", secs);
        /* A stalled victim leaves after 20 s; the others must fail long
         * before, each on its own clock (td_stall_limit_s). */
        int ok = failed && (got == MOX_ERR_PEER || got == MOX_ERR_TIMEOUT) &&
                 (strcmp(o.mode, "dies-stalled") != 0 ||
                  secs < td_stall_limit_s());
        mox_moe_destroy(moe);
        mox_comm_destroy(comm);
        return !ok;
    }
    /* Error modes run one round on every rank (only some ranks fail). */
    int iters = strcmp(o.mode, "ok") ? 1 : o.iters;
    for (int it = 0; it < iters && !bad; it++) {
        o.seed += (uint64_t)it; /* every rank changes it the same way */
        bad = round_trip(comm, moe, it, &inter);
        inter_total += inter;
    }
    if (!strcmp(o.mode, "bad-note")) {
        /* Readers of the victim's rows fail (check_run matches their
         * lines, and the time: nobody may wait for MOX_TIMEOUT); a combine
         * that reports success must still be right. */
        bad = bad && combine_status == MOX_OK;
        if (!bad)
            printf("rank %d: combine %s\n", me, mox_status_name(combine_status));
    } else if (strcmp(o.mode, "ok") != 0) {
        /* The error must be the expected one, and the communicator must
         * still work afterwards: run a correct round. */
        mox_status_t want = !strcmp(o.mode, "small-capacity") ? MOX_ERR_OVERFLOW
                                                              : MOX_ERR_INVALID_ARG;
        int expect_fail = strcmp(o.mode, "small-capacity") || me == o.victim;
        int ok = expect_fail ? bad && last_status == want : !bad;
        if (!ok)
            fprintf(stderr, "rank %d: %s gave %s, expected %s\n", me, o.mode,
                    mox_status_name(last_status),
                    expect_fail ? mox_status_name(want) : "MOX_OK");
        const char *mode = o.mode;
        o.mode = "ok";
        if (ok && round_trip(comm, moe, 99, &inter) == 0)
            printf("rank %d: %s handled, next round fine\nMOXTEST ok rank %d "
                   "inter_bytes %" PRIu64 "\n", me, mode, me, inter);
        else
            ok = 0;
        bad = !ok;
    } else if (!bad) {
        printf("MOXTEST ok rank %d inter_bytes %" PRIu64 " dispatch_inter %" PRIu64
               "\n", me, inter_total, inter);
    }
    mox_moe_destroy(moe);
    mox_comm_destroy(comm);
    return bad;
}
