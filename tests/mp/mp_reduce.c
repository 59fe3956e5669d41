/*
 * Multi-process check of reduce-scatter (dense, _v, block-sparse) and
 * allgather(v), run under tools/mox-run. Every rank regenerates every
 * rank's input from the seed and compares its result with a reference
 * computed here in fp64 (floats, within the tolerance documented in
 * docs/reduce_scatter.md) or exactly (integers, allgather). Each
 * configuration runs twice in the process and the two results must be
 * bitwise equal (reproducibility).
 *
 * Prints "MOXTEST ok rank R inter_bytes N intra_bytes N" on success.
 * --mode bad-args: bad inputs get named errors and the communicator stays
 * usable. --mode mismatch --victim V: V passes other counts and must get
 * MOX_ERR_MISMATCH. --mode overlap: four nonblocking collectives in
 * flight at once, finished in reverse order.
 */
#include "mox/mox.h"
#include "testdata.h"

#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *coll, *mode, *algo; /* algo: expected stats.last_op */
    mox_dtype_t dt;
    mox_op_t op;
    uint64_t seed, iters, max_count, block;
    int zero_pct, in_place, nonblocking, density, victim, check_inter;
    int dense_rank; /* sparse: this rank has every block (-1: none) */
} opts_t;

static int me, P;

static void usage(FILE *f)
{
    fprintf(f, "usage: mp_reduce [--coll rs|rsv|sparse|ag|agv] [--dtype T] "
               "[--op OP]\n  [--seed S] [--iters N] [--count C] [--zero-pct "
               "P] [--in-place]\n  [--nonblocking] [--block B --density PCT] "
               "[--mode bad-args|mismatch|overlap|corrupt --victim V] "
               "[--check-inter]\n  [--expect-algo NAME] [--dense-rank R]\n"
               "--dense-rank: block-sparse, rank R has every block\n"
               "--expect-algo: every collective must have run as NAME "
               "(mox_stats_t.last_op)\n"
               "--check-inter: dense reduce-scatter must send each block "
               "out of each node once,\n  node-reduced: the job's "
               "inter-node bytes (two runs) equal 2 x sum over nodes of\n"
               "  (remote elements x accumulator size + one 40-byte header "
               "per remote rank);\n  allgather(v) must bring each block "
               "into each other node once: 2 x sum over\n  nodes of "
               "(remote elements x type size + one 40-byte header per "
               "remote rank)\n");
}

static const char *dt_names[] = {"u8", "i32", "i64", "f16", "bf16", "f32",
                                 "f64"};
static const char *op_names[] = {"sum", "prod", "max", "min", "avg"};
static const size_t dt_size[] = {1, 4, 8, 2, 2, 4, 8};

static int lookup(const char *s, const char **names, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

static int parse(int argc, char **argv, opts_t *o)
{
    static const struct option lo[] = {
        {"coll", 1, 0, 'c'}, {"dtype", 1, 0, 'd'}, {"op", 1, 0, 'o'},
        {"seed", 1, 0, 's'}, {"iters", 1, 0, 'i'}, {"count", 1, 0, 'n'},
        {"zero-pct", 1, 0, 'z'}, {"in-place", 0, 0, 'p'},
        {"nonblocking", 0, 0, 'b'}, {"block", 1, 0, 'B'},
        {"density", 1, 0, 'D'}, {"mode", 1, 0, 'm'}, {"victim", 1, 0, 'v'},
        {"check-inter", 0, 0, 'I'}, {"expect-algo", 1, 0, 'A'},
        {"dense-rank", 1, 0, 'R'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    *o = (opts_t){"rs", "check", NULL, MOX_DTYPE_F32, MOX_OP_SUM, 1, 2, 1000, 16,
                  0, 0, 0, 50, 1, 0, -1};
    int c, v;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 'c': o->coll = optarg; break;
        case 'd':
            if ((v = lookup(optarg, dt_names, 7)) < 0)
                return -1;
            o->dt = (mox_dtype_t)v;
            break;
        case 'o':
            if ((v = lookup(optarg, op_names, 5)) < 0)
                return -1;
            o->op = (mox_op_t)v;
            break;
        case 's': o->seed = strtoull(optarg, NULL, 0); break;
        case 'i': o->iters = strtoull(optarg, NULL, 0); break;
        case 'n': o->max_count = strtoull(optarg, NULL, 0); break;
        case 'z': o->zero_pct = atoi(optarg); break;
        case 'p': o->in_place = 1; break;
        case 'b': o->nonblocking = 1; break;
        case 'B': o->block = strtoull(optarg, NULL, 0); break;
        case 'D': o->density = atoi(optarg); break;
        case 'm': o->mode = optarg; break;
        case 'v': o->victim = atoi(optarg); break;
        case 'I': o->check_inter = 1; break;
        case 'A': o->algo = optarg; break;
        case 'R': o->dense_rank = atoi(optarg); break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Values: exactly representable in their type, so the reference knows */
/* each input exactly.                                                  */

static uint64_t h64(uint64_t seed, uint64_t it, int src, uint64_t i)
{
    return td_mix(seed * 0x1000193 ^ td_mix(it << 32 ^ (uint64_t)src) ^
                  td_mix(i + 0x51));
}

/* Input element i of rank src as a double. prod uses values near 1 so
 * that products of many ranks stay in range. */
static double value(const opts_t *o, uint64_t it, int src, uint64_t i)
{
    uint64_t h = h64(o->seed, it, src, i);
    switch (o->dt) {
    case MOX_DTYPE_U8: return (double)(h & 0xff);
    case MOX_DTYPE_I32: return (double)((int64_t)(h % 2001) - 1000);
    case MOX_DTYPE_I64: return (double)((int64_t)(h % 2000001) - 1000000);
    case MOX_DTYPE_BF16: /* 8 significant bits */
        if (o->op == MOX_OP_PROD)
            return ldexp((double)(128 + h % 128), -7);
        return ldexp((double)((int64_t)(h % 511) - 255), -(int)(h >> 60));
    case MOX_DTYPE_F16: /* 11 significant bits */
        if (o->op == MOX_OP_PROD)
            return ldexp((double)(1024 + h % 1024), -10);
        return ldexp((double)((int64_t)(h % 4095) - 2047), -(int)(h >> 61) - 4);
    case MOX_DTYPE_F32:
        if (o->op == MOX_OP_PROD)
            return 0.5 + (double)(float)ldexp((double)(h >> 40), -24);
        return (double)(float)(ldexp((double)(h >> 11), -53) * 2 - 1);
    default:
        if (o->op == MOX_OP_PROD)
            return 0.5 + ldexp((double)(h >> 11), -53);
        return ldexp((double)(h >> 11), -52) - 1;
    }
}

static uint16_t f16_bits(double x)
{
    uint16_t sign = x < 0 ? 0x8000 : 0;
    double a = fabs(x);
    if (a == 0)
        return sign;
    int e;
    frexp(a, &e); /* a = m 2^e, m in [0.5, 1) */
    int E = e - 1 + 15;
    if (E <= 0)
        return sign | (uint16_t)(a * 16777216.0); /* a / 2^-24 */
    return sign | (uint16_t)(E << 10) |
           (uint16_t)((ldexp(a, -(e - 1)) - 1) * 1024);
}

static double f16_value(uint16_t b)
{
    int E = (b >> 10) & 31, m = b & 1023;
    double v = E == 0 ? ldexp(m, -24)
             : E == 31 ? (m ? NAN : INFINITY)
                       : ldexp(1024 + m, E - 25);
    return b & 0x8000 ? -v : v;
}

static void store(mox_dtype_t t, void *buf, uint64_t i, double x)
{
    switch (t) {
    case MOX_DTYPE_U8: ((uint8_t *)buf)[i] = (uint8_t)x; break;
    case MOX_DTYPE_I32: ((int32_t *)buf)[i] = (int32_t)x; break;
    case MOX_DTYPE_I64: ((int64_t *)buf)[i] = (int64_t)x; break;
    case MOX_DTYPE_F16: ((uint16_t *)buf)[i] = f16_bits(x); break;
    case MOX_DTYPE_BF16: {
        float f = (float)x;
        uint32_t u;
        memcpy(&u, &f, 4);
        ((uint16_t *)buf)[i] = (uint16_t)(u >> 16); /* exact: 8 bits */
        break;
    }
    case MOX_DTYPE_F32: ((float *)buf)[i] = (float)x; break;
    case MOX_DTYPE_F64: ((double *)buf)[i] = x; break;
    }
}

static double load(mox_dtype_t t, const void *buf, uint64_t i)
{
    switch (t) {
    case MOX_DTYPE_U8: return ((const uint8_t *)buf)[i];
    case MOX_DTYPE_I32: return ((const int32_t *)buf)[i];
    case MOX_DTYPE_I64: return (double)((const int64_t *)buf)[i];
    case MOX_DTYPE_F16: return f16_value(((const uint16_t *)buf)[i]);
    case MOX_DTYPE_BF16: {
        uint32_t u = (uint32_t)((const uint16_t *)buf)[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case MOX_DTYPE_F32: return ((const float *)buf)[i];
    default: return ((const double *)buf)[i];
    }
}

static int is_int(mox_dtype_t t)
{
    return t == MOX_DTYPE_U8 || t == MOX_DTYPE_I32 || t == MOX_DTYPE_I64;
}

/* Unit roundoff of the result type and of the accumulator. */
static double eps_of(mox_dtype_t t)
{
    switch (t) {
    case MOX_DTYPE_F16: return ldexp(1, -11);
    case MOX_DTYPE_BF16: return ldexp(1, -8);
    case MOX_DTYPE_F32: return ldexp(1, -24);
    default: return ldexp(1, -53);
    }
}

/* Sparse presence: block b of rank src. */
static int present(const opts_t *o, uint64_t it, int src, uint64_t b)
{
    if (src == o->dense_rank)
        return 1;
    return (int)(td_mix(o->seed ^ td_mix(it * 977 + (uint64_t)src) ^
                        td_mix(b * 31 + 7)) % 100) < o->density;
}

/* Integer reference: wraps like the library (two's complement). */
static int64_t int_ref(const opts_t *o, uint64_t it, uint64_t i)
{
    uint64_t acc = 0;
    for (int r = 0; r < P; r++) {
        int64_t v = (int64_t)value(o, it, r, i);
        if (r == 0) {
            acc = (uint64_t)v;
            continue;
        }
        switch (o->op) {
        case MOX_OP_PROD: acc *= (uint64_t)v; break;
        case MOX_OP_MAX: acc = (int64_t)acc > v ? acc : (uint64_t)v; break;
        case MOX_OP_MIN: acc = (int64_t)acc < v ? acc : (uint64_t)v; break;
        default: acc += (uint64_t)v; break;
        }
    }
    switch (o->dt) {
    case MOX_DTYPE_U8: return (uint8_t)acc;
    case MOX_DTYPE_I32: return (int32_t)(uint32_t)acc;
    default: return (int64_t)acc;
    }
}

/* Float reference in fp64 and the documented bound on the error:
 * (P+1) * u_acc * sum|terms| (accumulation) + u_t * |ref| (final rounding). */
static double float_ref(const opts_t *o, uint64_t it, uint64_t i, int sparse,
                        double *tol)
{
    double ref = 0, mag = 0;
    for (int r = 0; r < P; r++) {
        double v = value(o, it, r, i);
        if (sparse && !present(o, it, r, i / o->block))
            v = 0;
        if (r == 0 && !sparse) {
            ref = v;
            mag = fabs(v);
            continue;
        }
        switch (o->op) {
        case MOX_OP_PROD: ref *= v; mag = fabs(ref); break;
        case MOX_OP_MAX: ref = v > ref ? v : ref; break;
        case MOX_OP_MIN: ref = v < ref ? v : ref; break;
        default: ref += v; mag += fabs(v); break;
        }
    }
    if (o->op == MOX_OP_AVG) {
        ref /= P;
        mag /= P;
    }
    double u_acc = o->dt == MOX_DTYPE_F64 ? ldexp(1, -53) : ldexp(1, -24);
    *tol = o->op == MOX_OP_MAX || o->op == MOX_OP_MIN
               ? 0
               : (P + 1) * u_acc * mag + eps_of(o->dt) * fabs(ref);
    return ref;
}

static int check_rs(const opts_t *o, uint64_t it, const char *out,
                    uint64_t off, uint64_t n, int sparse)
{
    for (uint64_t k = 0; k < n; k++) {
        uint64_t i = off + k;
        if (is_int(o->dt)) {
            int64_t want = int_ref(o, it, i);
            int64_t got = o->dt == MOX_DTYPE_I64
                              ? ((const int64_t *)(const void *)out)[k]
                              : (int64_t)load(o->dt, out, k);
            if (got != want) {
                printf("rank %d: element %" PRIu64 ": got %" PRId64
                       ", want %" PRId64 "\n", me, i, got, want);
                return 1;
            }
            continue;
        }
        double tol, want = float_ref(o, it, i, sparse, &tol);
        double got = load(o->dt, out, k);
        if (!(fabs(got - want) <= tol)) {
            printf("rank %d: element %" PRIu64 ": got %.17g, want %.17g "
                   "(tolerance %.3g)\n", me, i, got, want, tol);
            return 1;
        }
    }
    return 0;
}

static mox_status_t finish(const opts_t *o, mox_status_t st, mox_req_t req)
{
    if (st != MOX_OK || !o->nonblocking)
        return st;
    int done = 0;
    while (!done && st == MOX_OK)
        st = mox_test(req, &done);
    mox_req_free(req);
    return st;
}

static int fail(mox_comm_t comm, const char *what, mox_status_t st)
{
    printf("MOXTEST error rank %d: %s: %s: %s\n", me, what,
           mox_status_name(st), mox_comm_last_error(comm));
    return 1;
}

static uint64_t count_of(const opts_t *o, uint64_t it, int r)
{
    if (!strcmp(o->coll, "rs") || !strcmp(o->coll, "ag") ||
        !strcmp(o->coll, "sparse"))
        return o->max_count;
    return td_count(o->seed, it, r, 0, o->max_count, o->zero_pct);
}

/* --expect-algo: the last collective ran as the test says it should. */
static int check_algo(const opts_t *o, const mox_stats_t *s)
{
    if (!o->algo || !strcmp(s->last_op, o->algo))
        return 0;
    printf("rank %d: ran as %s, expected %s\n", me, s->last_op, o->algo);
    return 1;
}

/* One reduce-scatter (any form); result copied into res. */
static mox_status_t run_rs(mox_comm_t comm, const opts_t *o, uint64_t it,
                           const uint64_t *counts, uint64_t total,
                           char *in, char *out, char *res, const uint64_t *blk,
                           uint64_t nblk)
{
    size_t es = dt_size[o->dt];
    for (uint64_t i = 0; i < total; i++)
        store(o->dt, in, i, value(o, it, me, i));
    const void *sb = in;
    char *rb = out;
    if (o->in_place) {
        sb = MOX_IN_PLACE;
        rb = in;
    }
    mox_req_t req = NULL;
    mox_status_t st;
    int sparse = !strcmp(o->coll, "sparse");
    if (sparse)
        st = o->nonblocking
                 ? mox_ireduce_scatter_sparse(comm, sb, rb, counts[0], o->dt,
                                              o->op, o->block, blk, nblk, &req)
                 : mox_reduce_scatter_sparse(comm, sb, rb, counts[0], o->dt,
                                             o->op, o->block, blk, nblk);
    else if (!strcmp(o->coll, "rs"))
        st = o->nonblocking ? mox_ireduce_scatter(comm, sb, rb, counts[0],
                                                  o->dt, o->op, &req)
                            : mox_reduce_scatter(comm, sb, rb, counts[0],
                                                 o->dt, o->op);
    else
        st = o->nonblocking ? mox_ireduce_scatter_v(comm, sb, rb, counts,
                                                    o->dt, o->op, &req)
                            : mox_reduce_scatter_v(comm, sb, rb, counts,
                                                   o->dt, o->op);
    st = finish(o, st, req);
    if (st == MOX_OK)
        memcpy(res, rb, counts[me] * es);
    return st;
}

/*
 * The job's inter-node bytes over the two runs of an iteration against the
 * volume of the pipelined hierarchical algorithms: for every rank r and
 * every node n other than r's, count[r] x elem_bytes once plus one 40-byte
 * agreement header, per run.
 * Reduce-scatter: each node sends r the partial of r's block reduced on
 * that node, once, in the accumulator type (elem_bytes 4 for 16-bit
 * floats), from one rank of n (the one that handles r's block there): one
 * (sender, receiver) pair per (n, r), so one header.
 * Allgather: r sends its block to one rank of each other node n, its
 * handler there (local index r's modulo n's size), which forwards it
 * through shm; so one (sender, receiver) pair across nodes per (r, n), and
 * its first message carries the one header of that stream: in front of
 * chunk 0, alone before a first chunk above 64 KiB, or alone when r's
 * block is empty; either way 40 bytes. Flat sends r's block to every rank
 * of n (and a header to each), so on a node of more than one rank it
 * exceeds this.
 * The rings (--expect-algo reduce_scatter_ring or allgather_ring) send
 * the same blocks, but each rank sends one header only, to the next row.
 */
static int check_inter(mox_comm_t comm, const opts_t *o,
                       const uint64_t *counts, uint64_t mine)
{
    int wide = o->coll[0] != 'a' &&
               (o->dt == MOX_DTYPE_F16 || o->dt == MOX_DTYPE_BF16);
    size_t elem_bytes = wide ? 4 : dt_size[o->dt];
    uint64_t *all = malloc((size_t)P * sizeof *all);
    int *node = malloc((size_t)P * sizeof *node), local, nodes = 0;
    mox_status_t st = mox_allgather(comm, &mine, all, 1, MOX_DTYPE_I64);
    for (int r = 0; r < P && st == MOX_OK; r++) {
        st = mox_comm_rank_location(comm, r, &node[r], &local);
        nodes = node[r] + 1 > nodes ? node[r] + 1 : nodes;
    }
    uint64_t got = 0, want = 0;
    for (int r = 0; r < P; r++)
        got += all[r];
    int ring = o->algo && (!strcmp(o->algo, "reduce_scatter_ring") ||
                           !strcmp(o->algo, "allgather_ring"));
    for (int n = 0; n < nodes; n++)
        for (int r = 0; r < P; r++)
            if (node[r] != n)
                want += 2 * (counts[r] * elem_bytes + (ring ? 0 : 40));
    if (ring)
        want += 2 * 40 * (uint64_t)P;
    free(all);
    free(node);
    if (st != MOX_OK)
        return fail(comm, "check-inter", st);
    if (got != want) {
        printf("rank %d: inter-node bytes %" PRIu64 ", hierarchical volume "
               "%" PRIu64 "\n", me, got, want);
        return 1;
    }
    return 0;
}

static int iter_rs(mox_comm_t comm, const opts_t *o, uint64_t it)
{
    size_t es = dt_size[o->dt];
    uint64_t *counts = malloc((size_t)P * sizeof *counts), total = 0, off = 0;
    for (int r = 0; r < P; r++) {
        counts[r] = count_of(o, it, r);
        if (r < me)
            off += counts[r];
        total += counts[r];
    }
    int sparse = !strcmp(o->coll, "sparse");
    uint64_t nb = sparse ? total / o->block : 0, nblk = 0;
    uint64_t *blk = malloc((nb + 1) * sizeof *blk);
    for (uint64_t b = 0; b < nb; b++)
        if (present(o, it, me, b))
            blk[nblk++] = b;
    char *in = malloc(total * es + 1), *out = malloc(counts[me] * es + 1);
    char *res[2] = {malloc(counts[me] * es + 1), malloc(counts[me] * es + 1)};
    int bad = 0;
    mox_stats_t before = {.struct_size = sizeof before}, after = before;
    mox_comm_stats(comm, &before);
    for (int rep = 0; rep < 2 && !bad; rep++) {
        mox_status_t st = run_rs(comm, o, it, counts, total, in, out,
                                 res[rep], blk, nblk);
        if (st != MOX_OK)
            bad = fail(comm, "reduce_scatter", st);
    }
    mox_comm_stats(comm, &after);
    if (!bad)
        bad = check_algo(o, &after);
    if (!bad && memcmp(res[0], res[1], counts[me] * es)) {
        printf("rank %d: two runs of the same layout differ\n", me);
        bad = 1;
    }
    if (!bad)
        bad = check_rs(o, it, res[0], off, counts[me], sparse);
    if (!bad && o->check_inter && !sparse)
        bad = check_inter(comm, o, counts,
                          after.bytes_inter - before.bytes_inter);
    if (!bad && sparse && P > 1 && o->density < 50 && total &&
        me != o->dense_rank &&
        after.bytes_sparse_saved == before.bytes_sparse_saved) {
        printf("rank %d: sparse run saved no bytes at density %d%%\n", me,
               o->density);
        bad = 1;
    }
    free(counts);
    free(blk);
    free(in);
    free(out);
    free(res[0]);
    free(res[1]);
    return bad;
}

static int iter_ag(mox_comm_t comm, const opts_t *o, uint64_t it)
{
    size_t es = dt_size[o->dt];
    uint64_t *counts = malloc(2 * (size_t)P * sizeof *counts),
             *displs = counts + P, total = 0;
    int v = !strcmp(o->coll, "agv");
    /* agv: blocks in reverse rank order with gaps, so displs matter. */
    for (int r = P - 1; r >= 0; r--) {
        counts[r] = count_of(o, it, r);
        displs[r] = total + (v ? 3 : 0);
        total = displs[r] + counts[r];
    }
    if (!v)
        for (int r = 0; r < P; r++)
            displs[r] = (uint64_t)r * counts[0];
    char *send = malloc(counts[me] * es + 1);
    char *out[2] = {malloc(total * es + 1), malloc(total * es + 1)};
    for (uint64_t i = 0; i < counts[me]; i++)
        store(o->dt, send, i, value(o, it, me, i));
    int bad = 0;
    mox_stats_t before = {.struct_size = sizeof before}, after = before;
    mox_comm_stats(comm, &before);
    for (int rep = 0; rep < 2 && !bad; rep++) {
        memset(out[rep], 0xa5, total * es);
        const void *sb = send;
        if (o->in_place) {
            memcpy(out[rep] + displs[me] * es, send, counts[me] * es);
            sb = MOX_IN_PLACE;
        }
        mox_req_t req = NULL;
        mox_status_t st =
            v ? (o->nonblocking
                     ? mox_iallgatherv(comm, sb, counts[me], out[rep], counts,
                                       displs, o->dt, &req)
                     : mox_allgatherv(comm, sb, counts[me], out[rep], counts,
                                      displs, o->dt))
              : (o->nonblocking ? mox_iallgather(comm, sb, out[rep],
                                                 counts[0], o->dt, &req)
                                : mox_allgather(comm, sb, out[rep], counts[0],
                                                o->dt));
        st = finish(o, st, req);
        if (st != MOX_OK)
            bad = fail(comm, "allgather", st);
    }
    mox_comm_stats(comm, &after);
    if (!bad)
        bad = check_algo(o, &after);
    char *want = malloc(total * es + 1);
    memset(want, 0xa5, total * es);
    for (int r = 0; r < P && !bad; r++)
        for (uint64_t i = 0; i < counts[r]; i++)
            store(o->dt, want + displs[r] * es, i, value(o, it, r, i));
    for (int rep = 0; rep < 2 && !bad; rep++)
        if (memcmp(out[rep], want, total * es)) {
            uint64_t i = 0;
            while (out[rep][i] == want[i])
                i++;
            printf("rank %d: allgather byte %" PRIu64 " differs (run %d)\n",
                   me, i, rep);
            bad = 1;
        }
    if (!bad && o->check_inter)
        bad = check_inter(comm, o, counts,
                          after.bytes_inter - before.bytes_inter);
    free(want);
    free(counts);
    free(send);
    free(out[0]);
    free(out[1]);
    return bad;
}

static int expect(mox_comm_t comm, const char *what, mox_status_t st,
                  mox_status_t want, const char *text)
{
    const char *msg = mox_comm_last_error(comm);
    if (st != want || !strstr(msg, text)) {
        printf("rank %d: %s: got %s (%s), want %s mentioning '%s'\n", me,
               what, mox_status_name(st), msg, mox_status_name(want), text);
        return 1;
    }
    printf("MOXTEST expected rank %d: %s: %s: %s\n", me, what,
           mox_status_name(st), msg);
    return 0;
}

/* Bad input: named errors before anything is sent; the communicator
 * stays usable afterwards (a correct reduce-scatter follows). */
static int bad_args(mox_comm_t comm, opts_t *o)
{
    float buf[64] = {0}, out[64];
    uint64_t blk[2] = {3, 1};
    int bad = 0;
    bad |= expect(comm, "unknown dtype",
                  mox_reduce_scatter(comm, buf, out, 1, (mox_dtype_t)42,
                                     MOX_OP_SUM),
                  MOX_ERR_INVALID_ARG, "unknown dtype 42");
    bad |= expect(comm, "unknown op",
                  mox_reduce_scatter(comm, buf, out, 1, MOX_DTYPE_F32,
                                     (mox_op_t)9),
                  MOX_ERR_INVALID_ARG, "unknown op 9");
    bad |= expect(comm, "avg on i32",
                  mox_reduce_scatter(comm, buf, out, 1, MOX_DTYPE_I32,
                                     MOX_OP_AVG),
                  MOX_ERR_INVALID_ARG, "avg is not defined");
    bad |= expect(comm, "overlap",
                  mox_reduce_scatter(comm, buf, buf + 1, 1, MOX_DTYPE_F32,
                                     MOX_OP_SUM),
                  MOX_ERR_INVALID_ARG, "overlap");
    bad |= expect(comm, "allgather overlap",
                  mox_allgather(comm, buf + 1, buf, 1, MOX_DTYPE_F32),
                  MOX_ERR_INVALID_ARG, "overlap");
    bad |= expect(comm, "sparse unsorted",
                  mox_reduce_scatter_sparse(comm, buf, out, 4, MOX_DTYPE_F32,
                                            MOX_OP_SUM, 2, blk, 2),
                  MOX_ERR_INVALID_ARG, "ascend");
    bad |= expect(comm, "sparse max",
                  mox_reduce_scatter_sparse(comm, buf, out, 4, MOX_DTYPE_F32,
                                            MOX_OP_MAX, 2, blk, 0),
                  MOX_ERR_UNSUPPORTED, "max");
    bad |= expect(comm, "sparse block",
                  mox_reduce_scatter_sparse(comm, buf, out, 5, MOX_DTYPE_F32,
                                            MOX_OP_SUM, 2, blk, 0),
                  MOX_ERR_INVALID_ARG, "multiple of block_elems");
    o->coll = "rs";
    o->max_count = 7;
    return bad | iter_rs(comm, o, 0);
}

/* The victim passes one more element for rank 0: every rank it talks to
 * and the victim itself must report MOX_ERR_MISMATCH, nobody hangs.
 * Reduce-scatter with 10 elements per rank; --coll ag(v): allgatherv with
 * --count elements per rank (where the first message of a peer switches
 * from header + data to a header alone, the sizes disagree too). */
static int mismatch(mox_comm_t comm, const opts_t *o)
{
    if (!strcmp(o->coll, "sparse")) {
        /* Same counts, but the victim cuts them into other blocks. */
        uint64_t be = me == o->victim ? 32 : 16, n = 64 * (uint64_t)P / be;
        float *in = calloc(64 * (size_t)P, sizeof *in), out[64];
        uint64_t *blocks = malloc(n * sizeof *blocks);
        for (uint64_t b = 0; b < n; b++)
            blocks[b] = b;
        mox_status_t st = mox_reduce_scatter_sparse(
            comm, in, out, 64, MOX_DTYPE_F32, MOX_OP_SUM, be, blocks, n);
        if (st != MOX_OK)
            fail(comm, "sparse reduce_scatter with mismatched blocks", st);
        free(in);
        free(blocks);
        return st != MOX_ERR_MISMATCH;
    }
    int ag = o->coll[0] == 'a';
    uint64_t base = ag ? o->max_count : 10;
    uint64_t *counts = malloc(2 * (size_t)P * sizeof *counts),
             *displs = counts + P, total = 0;
    for (int r = 0; r < P; r++) {
        displs[r] = total;
        total += counts[r] = base + (uint64_t)(me == o->victim && r == 0);
    }
    float *in = calloc(total, sizeof *in),
          *out = calloc(ag ? total : 16, sizeof *out);
    mox_status_t st =
        ag ? mox_allgatherv(comm, in, counts[me], out, counts, displs,
                            MOX_DTYPE_F32)
           : mox_reduce_scatter_v(comm, in, out, counts, MOX_DTYPE_F32,
                                  MOX_OP_SUM);
    if (st != MOX_OK)
        fail(comm, ag ? "allgather with mismatched counts"
                      : "reduce_scatter with mismatched counts", st);
    free(in);
    free(out);
    free(counts);
    return me == o->victim ? st != MOX_ERR_MISMATCH : 0;
}

/* Four nonblocking collectives in flight at once: a reduce-scatter of
 * iteration 2i, an allgatherv of 2i's values, a reduce-scatter of 2i + 1
 * and an allgatherv of 2i + 1's values, all started before any is waited
 * for, then waited for in reverse order; each result checked against its
 * reference. Counts as --coll says (rsv/agv: per-rank counts, zeros with
 * --zero-pct). */
static int overlap(mox_comm_t comm, const opts_t *o)
{
    size_t es = dt_size[o->dt];
    int bad = 0;
    for (uint64_t it = 0; it < o->iters && !bad; it++) {
        uint64_t *cnt = malloc(4 * (size_t)P * sizeof *cnt),
                 *cnt2 = cnt + P, *displs = cnt + 2 * P,
                 *displs2 = cnt + 3 * P;
        uint64_t tot = 0, tot2 = 0, off = 0, off2 = 0;
        for (int r = 0; r < P; r++) {
            cnt[r] = count_of(o, 2 * it, r);
            cnt2[r] = count_of(o, 2 * it + 1, r);
            if (r < me) {
                off += cnt[r];
                off2 += cnt2[r];
            }
            displs[r] = tot;
            displs2[r] = tot2;
            tot += cnt[r];
            tot2 += cnt2[r];
        }
        char *in = malloc(tot * es + 1), *in2 = malloc(tot2 * es + 1);
        char *out = malloc(cnt[me] * es + 1), *out2 = malloc(cnt2[me] * es + 1);
        char *send = malloc(cnt[me] * es + 1), *ag = malloc(tot * es + 1);
        char *want = malloc(tot * es + 1);
        char *send2 = malloc(cnt2[me] * es + 1), *ag2 = malloc(tot2 * es + 1);
        char *want2 = malloc(tot2 * es + 1);
        for (uint64_t i = 0; i < cnt2[me]; i++)
            store(o->dt, send2, i, value(o, 2 * it + 1, me, i));
        for (int r = 0; r < P; r++)
            for (uint64_t i = 0; i < cnt2[r]; i++)
                store(o->dt, want2 + displs2[r] * es, i,
                      value(o, 2 * it + 1, r, i));
        for (uint64_t i = 0; i < tot; i++)
            store(o->dt, in, i, value(o, 2 * it, me, i));
        for (uint64_t i = 0; i < tot2; i++)
            store(o->dt, in2, i, value(o, 2 * it + 1, me, i));
        for (uint64_t i = 0; i < cnt[me]; i++)
            store(o->dt, send, i, value(o, 2 * it, me, i));
        for (int r = 0; r < P; r++)
            for (uint64_t i = 0; i < cnt[r]; i++)
                store(o->dt, want + displs[r] * es, i,
                      value(o, 2 * it, r, i));
        mox_req_t q[4] = {NULL, NULL, NULL, NULL};
        mox_status_t st = mox_ireduce_scatter_v(comm, in, out, cnt, o->dt,
                                                o->op, &q[0]);
        if (st == MOX_OK)
            st = mox_iallgatherv(comm, send, cnt[me], ag, cnt, displs, o->dt,
                                 &q[1]);
        if (st == MOX_OK)
            st = mox_ireduce_scatter_v(comm, in2, out2, cnt2, o->dt, o->op,
                                       &q[2]);
        if (st == MOX_OK)
            st = mox_iallgatherv(comm, send2, cnt2[me], ag2, cnt2, displs2,
                                 o->dt, &q[3]);
        for (int k = 3; k >= 0; k--) {
            mox_status_t w = q[k] ? mox_wait(q[k]) : MOX_OK;
            if (st == MOX_OK)
                st = w;
            mox_req_free(q[k]);
        }
        if (st != MOX_OK)
            bad = fail(comm, "overlapping collectives", st);
        if (!bad)
            bad = check_rs(o, 2 * it, out, off, cnt[me], 0) ||
                  check_rs(o, 2 * it + 1, out2, off2, cnt2[me], 0);
        if (!bad && (memcmp(ag, want, tot * es) ||
                     memcmp(ag2, want2, tot2 * es))) {
            printf("rank %d: overlapping allgather differs\n", me);
            bad = 1;
        }
        free(cnt);
        free(in);
        free(in2);
        free(out);
        free(out2);
        free(send);
        free(ag);
        free(want);
        free(send2);
        free(ag2);
        free(want2);
    }
    return bad;
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    mox_comm_t comm;
    char err[512] = "";
    mox_comm_params_t params = {.struct_size = sizeof params,
                                .error_buf = err, .error_buf_len = sizeof err};
    if (mox_comm_create(&params, &comm) != MOX_OK) {
        fprintf(stderr, "mp_reduce: %s\n", err);
        return 1;
    }
    me = mox_comm_rank(comm);
    P = mox_comm_size(comm);
    int bad = 0;
    if (!strcmp(o.mode, "bad-args"))
        bad = bad_args(comm, &o);
    else if (!strcmp(o.mode, "mismatch"))
        bad = mismatch(comm, &o);
    else if (!strcmp(o.mode, "overlap"))
        bad = overlap(comm, &o);
    else if (!strcmp(o.mode, "corrupt")) {
        /* MOX_TEST_BAD_SLOT=R: every rank must name R's slot; every rank
         * saw it alike, so a small dense reduce-scatter (through the shm
         * area too, after the failed op's rounds) still works after. */
        bad = !iter_rs(comm, &o, 0) ||
              !strstr(mox_comm_last_error(comm), "shm slot is inconsistent");
        opts_t dense = o;
        dense.coll = "rs";
        dense.max_count = 16;
        dense.in_place = 0;
        dense.algo = NULL;
        if (!bad && iter_rs(comm, &dense, 1)) {
            printf("rank %d: the reduce-scatter after the corrupt slot "
                   "failed\n", me);
            bad = 1;
        }
    }
    else
        for (uint64_t it = 0; it < o.iters && !bad; it++)
            bad = o.coll[0] == 'a' ? iter_ag(comm, &o, it)
                                   : iter_rs(comm, &o, it);
    mox_stats_t s = {.struct_size = sizeof s};
    mox_comm_stats(comm, &s);
    if (!bad && strcmp(o.mode, "mismatch") && strcmp(o.mode, "corrupt"))
        printf("MOXTEST ok rank %d inter_bytes %" PRIu64 " intra_bytes %"
               PRIu64 " sparse_saved %" PRIu64 "\n", me, s.bytes_inter,
               s.bytes_intra, s.bytes_sparse_saved);
    fflush(stdout);
    mox_comm_destroy(comm);
    return bad;
}
