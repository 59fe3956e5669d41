/*
 * mox-moe-bench: MoE dispatch + combine, mox against a plain Open MPI
 * alltoallv, in ONE MPI program on the same ranks in the same run.
 *
 * Routing is DeepSeek-like and regenerated from the seed on every rank:
 * E experts spread evenly over the ranks, top-k per token, node-limited
 * (each token's experts lie on at most --max-nodes nodes picked at random).
 * x is bf16 [tokens][hidden]. Implementations:
 *   mox-dedup      mox_moe, algo DEDUP, native (bf16) dispatch wire
 *   mox-a2av       mox_moe, algo ALLTOALLV
 *   mox-dedup-fp8  mox_moe, algo DEDUP, fp8 dispatch wire
 *   ompi-a2av      MPI_Alltoall of counts + pack + MPI_Alltoallv of records
 *                  (token index, k ids, k weights, bf16 hidden) per
 *                  destination rank; combine = MPI_Alltoallv of bf16 rows
 *                  back + f32 sum per token.
 * Every impl's first dispatch is checked row by row (source, token, expert
 * ids, weights, hidden values: bit-exact on bf16, within the fp8 bound on
 * fp8) and its combine token by token (identity experts: the result must
 * be x * sum of weights), giving #wrong. Run under mpirun or
 * tools/mox-run --mpi.
 */
#include "mox/mox.h"
#include "testdata.h"

#include <mpi.h>

#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LIST 32

typedef struct {
    int tokens[MAX_LIST], ntok;
    int iters[MAX_LIST], niters;
    int warm[MAX_LIST], nwarm;
    int hidden, experts, topk, max_nodes;
    int warmup; /* of the tokens value being run (from warm) */
    double link_gbit;
    uint64_t seed;
    const char *csv, *impls, *comb_wire;
    int rbuf, b2b;
} opts_t;

static opts_t o;
static int P, me, nnodes, El;
/* argument errors: rank 0 speaks for all */
#define ARGERR(...) do { if (me == 0) fprintf(stderr, __VA_ARGS__); } while (0)
static int *node_of; /* [P] node of each rank (MPI's view, checked vs mox) */

/* ---- options ---------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: mox-moe-bench [-t LIST] [-n LIST] [-w LIST] [--hidden H]\n"
        "                     [--experts E] [--topk K] [--max-nodes M]\n"
        "                     [--link-gbit G] [--combine-wire bf16|f32]\n"
        "                     [--impls LIST] [--seed S] [--csv FILE]\n"
        "                     [--recv-buffer] [--back-to-back]\n"
        "  -t, --tokens LIST   tokens per rank, comma separated\n"
        "                      (default 128,512,1024,2048,4096)\n"
        "  -n, --iters LIST    timed iterations per tokens value; the last one\n"
        "                      repeats (default 10)\n"
        "  -w, --warmup LIST   untimed iterations per tokens value; the last\n"
        "                      one repeats (default 2)\n"
        "      --hidden H      values per token (default 7168), bf16\n"
        "      --experts E     experts, a multiple of the ranks (default 256)\n"
        "      --topk K        experts per token (default 8)\n"
        "      --max-nodes M   a token's experts lie on at most M nodes picked\n"
        "                      at random (default 4)\n"
        "      --link-gbit G   each node's link rate for the link bound\n"
        "                      (default 1)\n"
        "      --combine-wire  mox combine wire (default bf16, as the MPI path)\n"
        "      --impls LIST    subset of mox-dedup,mox-a2av,mox-dedup-fp8,"
        "ompi-a2av\n"
        "      --seed S        routing and data seed (default 1)\n"
        "      --recv-buffer   mox impls receive into the handle's shared\n"
        "                      buffer (mox_moe_recv_buffer): rows from the\n"
        "                      same node are written straight into it,\n"
        "                      and the expert outputs are written into\n"
        "                      its second half, where combine reads the\n"
        "                      rows of ranks of the same node in place\n"
        "      --csv FILE      also write the results as CSV (rank 0)\n"
        "      --back-to-back  start combine as soon as this rank's dispatch\n"
        "                      returned, not after a barrier (its time then\n"
        "                      includes waiting for the slower ranks'\n"
        "                      dispatch)\n"
        "Every iteration: barrier, dispatch, barrier, combine; each op is\n"
        "timed on every rank from the barrier before it to its own return.\n"
        "Columns: dispatch/combine = slowest rank's mean time; GB/s = bf16 token\n"
        "bytes delivered per rank / dispatch time; inter B/rank = bytes a rank\n"
        "sent to other nodes per dispatch (mox: mox_comm_stats, MPI: from the\n"
        "counts); x dedup-min = that / (sum over tokens of distinct remote nodes\n"
        "x record bytes, record = align8(align8(4+8k) + 2H)); x bound = dispatch\n"
        "time / link bound (dedup-min bytes over the busiest node link, the\n"
        "larger direction, at G Gbit/s) or, on one node, / memcpy bound (before\n"
        "each timed dispatch every rank memcpys its share of the record bytes\n"
        "delivered, out of cache, then waits in a barrier; timed from the\n"
        "barrier before, as the ops; per implementation, last column).\n"
        "#wrong = wrong rows + wrong combined tokens.\n"
        "The implementations are timed in an order that rotates with the batch\n"
        "size (the first one timed at a size runs slower) and printed in a\n"
        "fixed one. Run under mpirun or tools/mox-run --mpi.\n");
}

static int parse_list(const char *s, int *out, int *n, int min)
{
    char *end;
    *n = 0;
    while (*s) {
        long v = strtol(s, &end, 10);
        if (end == s || v < min || v > INT_MAX / 2 || *n >= MAX_LIST)
            return -1;
        out[(*n)++] = (int)v;
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return *n ? 0 : -1;
}

static int parse(int argc, char **argv)
{
    static const struct option lo[] = {
        {"tokens", 1, 0, 't'}, {"iters", 1, 0, 'n'}, {"warmup", 1, 0, 'w'},
        {"hidden", 1, 0, 'H'}, {"experts", 1, 0, 'E'}, {"topk", 1, 0, 'k'},
        {"max-nodes", 1, 0, 'M'}, {"link-gbit", 1, 0, 'L'},
        {"combine-wire", 1, 0, 'C'}, {"impls", 1, 0, 'I'}, {"seed", 1, 0, 's'},
        {"csv", 1, 0, 'o'}, {"recv-buffer", 0, 0, 'R'},
        {"back-to-back", 0, 0, 'B'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    o = (opts_t){.hidden = 7168, .experts = 256, .topk = 8, .max_nodes = 4,
                 .link_gbit = 1.0, .seed = 1, .csv = NULL,
                 .impls = "mox-dedup,mox-a2av,mox-dedup-fp8,ompi-a2av",
                 .comb_wire = "bf16"};
    parse_list("128,512,1024,2048,4096", o.tokens, &o.ntok, 1);
    parse_list("10", o.iters, &o.niters, 1);
    parse_list("2", o.warm, &o.nwarm, 0);
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "t:n:w:h", lo, NULL)) != -1) {
        switch (c) {
        case 't':
            if (parse_list(optarg, o.tokens, &o.ntok, 1)) {
                ARGERR("mox-moe-bench: -t needs positive integers "
                        "separated by commas, got '%s'\n", optarg);
                return -1;
            }
            break;
        case 'n':
            if (parse_list(optarg, o.iters, &o.niters, 1)) {
                ARGERR("mox-moe-bench: -n needs positive integers "
                        "separated by commas, got '%s'\n", optarg);
                return -1;
            }
            break;
        case 'w':
            if (parse_list(optarg, o.warm, &o.nwarm, 0)) {
                ARGERR("mox-moe-bench: -w needs integers >= 0 separated "
                        "by commas, got '%s'\n", optarg);
                return -1;
            }
            break;
        case 'H': o.hidden = atoi(optarg); break;
        case 'E': o.experts = atoi(optarg); break;
        case 'k': o.topk = atoi(optarg); break;
        case 'M': o.max_nodes = atoi(optarg); break;
        case 'L': o.link_gbit = strtod(optarg, &end);
            if (*end) o.link_gbit = -1;
            break;
        case 'C': o.comb_wire = optarg; break;
        case 'I': o.impls = optarg; break;
        case 's': o.seed = strtoull(optarg, NULL, 0); break;
        case 'R': o.rbuf = 1; break;
        case 'B': o.b2b = 1; break;
        case 'o': o.csv = optarg; break;
        case 'h': return 1;
        default: return -1;
        }
    }
    if (optind < argc) {
        ARGERR("mox-moe-bench: unexpected argument '%s'\n",
                argv[optind]);
        return -1;
    }
    if (o.hidden < 1 || o.experts < 1 || o.topk < 1 || o.topk > 64 ||
        o.topk > o.experts || o.max_nodes < 1 || !(o.link_gbit > 0)) {
        ARGERR("mox-moe-bench: need --hidden >= 1, --experts >= 1, "
                "1 <= --topk <= min(64, experts), --max-nodes >= 1, "
                "--link-gbit > 0\n");
        return -1;
    }
    if (strcmp(o.comb_wire, "bf16") && strcmp(o.comb_wire, "f32")) {
        ARGERR("mox-moe-bench: --combine-wire is bf16 or f32, got "
                "'%s'\n", o.comb_wire);
        return -1;
    }
    return 0;
}

/* ---- the job every rank can regenerate -------------------------------- */

static int T;             /* tokens per rank of the current size */
static int32_t *ids_all;  /* [P][T][k] global expert ids */
static float *w_all;      /* [P][T][k] weights */

static uint64_t tok_hash(int s, int t)
{
    return td_mix(o.seed * 0x100000001b3ull ^
                  td_mix(((uint64_t)s << 32) ^ (uint64_t)t));
}

static int owner(int e) { return e / El; }

static void gen_routing(int s, int t, int32_t *ids, float *w)
{
    uint64_t h = tok_hash(s, t), ctr = 0;
    int k = o.topk, allowed[1024], na = 0, all = nnodes <= o.max_nodes;
    if (!all) { /* max_nodes distinct nodes, partial Fisher-Yates */
        int perm[1024];
        for (int i = 0; i < nnodes; i++)
            perm[i] = i;
        for (int i = 0; i < o.max_nodes; i++) {
            int j = i + (int)(td_mix(h + ++ctr) % (uint64_t)(nnodes - i));
            int x = perm[i];
            perm[i] = perm[j];
            perm[j] = x;
        }
        for (int i = 0; i < nnodes; i++)
            allowed[i] = 0;
        for (int i = 0; i < o.max_nodes; i++)
            allowed[perm[i]] = 1;
        na = o.max_nodes;
    }
    (void)na;
    int n = 0;
    while (n < k) {
        int e = (int)(td_mix(h + ++ctr) % (uint64_t)o.experts);
        if (!all && !allowed[node_of[owner(e)]])
            continue;
        int dup = 0;
        for (int q = 0; q < n; q++)
            dup |= ids[q] == e;
        if (dup)
            continue;
        ids[n] = e;
        w[n] = (float)((td_mix(h ^ (0xabcdull + (uint64_t)n)) % 1000) + 1) /
               1000.0f;
        n++;
    }
}

/* x[s][t][h] as bf16 bits: sign random, magnitude in [0.5, 2). */
static inline uint16_t xbits(uint32_t g, int h)
{
    uint32_t r = g + (uint32_t)h * 0x9E3779B1u;
    r ^= r >> 15;
    r *= 0x2c1b3c6du;
    r ^= r >> 12;
    return (uint16_t)(((r >> 16) & 0x8000u) | 0x3f00u | (r & 0xffu));
}
static inline float bf2f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t f2bf(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }
static size_t meta_bytes(void) { return align8(4 + 8 * (size_t)o.topk); }
static size_t rec_bytes(void) { return align8(meta_bytes() + 2 * (size_t)o.hidden); }

/* ---- expected receive list and byte accounting ------------------------ */

typedef struct {
    uint64_t nrecv;          /* rows this rank receives */
    int32_t *src;            /* [nrecv][2] expected (source, token) */
    double dedup_min_rank;   /* mean over ranks of dedup-min bytes */
    double link_bound_s;     /* busiest node link at dedup-min bytes */
    double delivered_rank;   /* mean rows delivered per rank */
    double rec_total;        /* record bytes delivered, all ranks */
} expect_t;

static void build_expect(expect_t *x)
{
    int k = o.topk;
    size_t rec = rec_bytes();
    double *out = calloc((size_t)nnodes, sizeof *out);
    double *in = calloc((size_t)nnodes, sizeof *in);
    double total_dedup = 0, rows_total = 0;
    x->nrecv = 0;
    x->src = malloc((size_t)P * T * 2 * sizeof(int32_t) + 8);
    int *seen_node = malloc((size_t)nnodes * sizeof *seen_node);
    int *seen_rank = malloc((size_t)P * sizeof *seen_rank);
    for (int s = 0; s < P; s++)
        for (int t = 0; t < T; t++) {
            const int32_t *ids = ids_all + ((size_t)s * T + t) * k;
            memset(seen_node, 0, (size_t)nnodes * sizeof *seen_node);
            memset(seen_rank, 0, (size_t)P * sizeof *seen_rank);
            for (int j = 0; j < k; j++) {
                int d = owner(ids[j]);
                seen_rank[d] = 1;
                seen_node[node_of[d]] = 1;
            }
            for (int n = 0; n < nnodes; n++)
                if (seen_node[n] && n != node_of[s]) {
                    total_dedup += (double)rec;
                    out[node_of[s]] += (double)rec;
                    in[n] += (double)rec;
                }
            for (int d = 0; d < P; d++)
                rows_total += seen_rank[d];
            if (seen_rank[me]) {
                x->src[2 * x->nrecv] = s;
                x->src[2 * x->nrecv + 1] = t;
                x->nrecv++;
            }
        }
    double busiest = 0;
    for (int n = 0; n < nnodes; n++)
        busiest = fmax(busiest, fmax(out[n], in[n]));
    x->dedup_min_rank = total_dedup / P;
    x->link_bound_s = busiest / (o.link_gbit * 1e9 / 8);
    x->delivered_rank = rows_total / P;
    x->rec_total = rows_total * (double)rec;
    free(out); free(in); free(seen_node); free(seen_rank);
}

/* ---- checks ----------------------------------------------------------- */

/* 0 when row `got` is x of (s, t), bit-exact or within fp8's bound. */
static int check_row(const uint16_t *got, int s, int t, int fp8)
{
    uint32_t g = (uint32_t)tok_hash(s, t);
    for (int h = 0; h < o.hidden; h++) {
        uint16_t want = xbits(g, h);
        if (got[h] == want)
            continue;
        if (!fp8)
            return 1;
        float ref = bf2f(want);
        /* e4m3 with one scale per 128 values (all |x| in [0.5, 2), so no
         * subnormals): half an e4m3 ulp, then bf16 rounding. */
        if (fabsf(bf2f(got[h]) - ref) >
            fabsf(ref) * (ldexpf(1, -4) + ldexpf(1, -8)) * 1.001f)
            return 1;
    }
    return 0;
}

/* Expected local id and weight of slot j of (s, t) on this rank. */
static void want_slot(int s, int t, int j, int32_t *id, float *w)
{
    size_t i = ((size_t)s * T + t) * o.topk + (size_t)j;
    int e = ids_all[i];
    *id = owner(e) == me ? e - me * El : -1;
    *w = owner(e) == me ? w_all[i] : 0.0f;
}

/* The fake experts are the identity: row * (sum of this rank's weights). */
static void run_experts(uint64_t n, const uint16_t *x, size_t xstride,
                        const float *wts, size_t wstride, const int32_t *ids,
                        size_t istride, int global_ids, uint16_t *y)
{
    for (uint64_t r = 0; r < n; r++) {
        float ws = 0;
        for (int j = 0; j < o.topk; j++) {
            int32_t e = ids[r * istride + (size_t)j];
            int mine = global_ids ? owner(e) == me : e >= 0;
            if (mine)
                ws += wts[r * wstride + (size_t)j];
        }
        const uint16_t *xr = x + r * xstride;
        uint16_t *yr = y + r * (size_t)o.hidden;
        for (int h = 0; h < o.hidden; h++)
            yr[h] = f2bf(bf2f(xr[h]) * ws);
    }
}

/* Combined tokens that are not x * (sum of weights) within the bound. */
static long check_combine(const uint16_t *out, int fp8, int f32wire)
{
    long wrong = 0;
    double tol = (fp8 ? ldexp(1, -4) : 0) + (f32wire ? 3 : 4) * ldexp(1, -8) +
                 ldexp(1, -16);
    for (int t = 0; t < T; t++) {
        uint32_t g = (uint32_t)tok_hash(me, t);
        double W = 0;
        for (int j = 0; j < o.topk; j++)
            W += w_all[((size_t)me * T + t) * o.topk + (size_t)j];
        const uint16_t *row = out + (size_t)t * o.hidden;
        for (int h = 0; h < o.hidden; h++) {
            double ref = bf2f(xbits(g, h)) * W;
            if (fabs(bf2f(row[h]) - ref) > fabs(ref) * tol) {
                wrong++;
                break;
            }
        }
    }
    return wrong;
}

/* ---- results ---------------------------------------------------------- */

typedef struct {
    double disp_s, comb_s;       /* this rank's mean */
    double copy_s;               /* its paired copy's mean (one node) */
    double inter, comb_inter;    /* bytes to other nodes per op, this rank */
    long wrong;
} result_t;

static void die_mox(mox_comm_t comm, const char *what, mox_status_t st)
{
    fprintf(stderr, "mox-moe-bench: rank %d: %s: %s: %s\n", me, what,
            mox_status_name(st), mox_comm_last_error(comm));
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* Per-size buffers shared by all impls. */
static uint16_t *x_in;     /* [T][H] this rank's tokens */
static int32_t *ids_me;    /* [T][k] */
static float *w_me;        /* [T][k] */
static uint16_t *recv_x;   /* [cap][H] */
static uint16_t *y_buf;    /* [cap][H] expert outputs */
static uint16_t *comb_out; /* [T][H] */

/*
 * One node: the memcpy bound, measured in the timed iterations
 * themselves, so that it sees the machine the ops see. Before each timed
 * dispatch every rank copies its share of the record bytes delivered
 * (rec_total / P) from one buffer to another, both out of cache, and
 * then waits in a barrier, timed from the barrier before it as the ops
 * are: like a dispatch, a rank is done only once every rank's bytes
 * are. (Timing the copy alone missed the time copies waited for a core,
 * as ranks leave a barrier one after another on 2 cores; first start to
 * last end counted that stagger in.) Measured once per program as an
 * aggregate rate, the bound had moved by up to 50 % between programs
 * (13-33 GB/s on this 2-core VM, whose L3 other tenants share) while the
 * ops' own times did not.
 */
static struct {
    char *a, *b;
    size_t len;
    double t;
} mc;

static void paired_copy(void)
{
    if (!mc.a)
        return;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    memcpy(mc.b, mc.a, mc.len);
    MPI_Barrier(MPI_COMM_WORLD);
    mc.t += MPI_Wtime() - t0;
}

static uint64_t cap;

/* ---- mox -------------------------------------------------------------- */

static void run_mox(mox_comm_t comm, mox_moe_t moe, int fp8, int iters,
                    const expect_t *ex, result_t *res)
{
    int k = o.topk;
    mox_moe_input_t in = {sizeof in, T, x_in, ids_me, w_me};
    int32_t *rid = malloc(cap * k * 4 + 4), *rsrc = malloc(cap * 8 + 8);
    float *rw = malloc(cap * k * 4 + 4);
    uint64_t *per_e = malloc((size_t)El * 8 + 8);
    mox_status_t st;
    /* --recv-buffer: rows land in the handle's shared receive buffer and
     * the expert outputs go into its second half, so that combine reads
     * them in place. */
    uint16_t *rx = recv_x, *y = y_buf;
    if (o.rbuf) {
        if ((st = mox_moe_recv_buffer(moe, 2 * cap, (void **)&rx)) != MOX_OK)
            die_mox(comm, "recv_buffer", st);
        y = rx + cap * (size_t)o.hidden;
    }
    mox_moe_output_t out = {sizeof out, cap, rx, rid, rw, rsrc, per_e, 0};
    int f32wire = !strcmp(o.comb_wire, "f32");

    /* checked round */
    memset(rx, 0, cap * (size_t)o.hidden * 2);
    if ((st = mox_moe_dispatch(moe, &in, &out)) != MOX_OK)
        die_mox(comm, "dispatch", st);
    long wrong = 0;
    if (out.num_recv != ex->nrecv) {
        fprintf(stderr, "mox-moe-bench: rank %d: mox received %" PRIu64
                " rows, expected %" PRIu64 "\n", me, out.num_recv, ex->nrecv);
        wrong += (long)(out.num_recv > ex->nrecv ? out.num_recv - ex->nrecv
                                                 : ex->nrecv - out.num_recv);
    }
    uint64_t n = out.num_recv < ex->nrecv ? out.num_recv : ex->nrecv;
    for (uint64_t r = 0; r < n; r++) {
        int s = ex->src[2 * r], t = ex->src[2 * r + 1], bad = 0;
        bad |= rsrc[2 * r] != s || rsrc[2 * r + 1] != t;
        for (int j = 0; j < k && !bad; j++) {
            int32_t id;
            float w;
            want_slot(s, t, j, &id, &w);
            bad |= rid[r * k + j] != id || rw[r * k + j] != w;
        }
        if (!bad)
            bad = check_row(rx + r * (size_t)o.hidden, s, t, fp8);
        if (bad && wrong < 3)
            fprintf(stderr, "mox-moe-bench: rank %d: wrong row %" PRIu64
                    " (expected source %d token %d)\n", me, r, s, t);
        wrong += bad;
    }
    run_experts(out.num_recv, rx, (size_t)o.hidden, rw, (size_t)k, rid,
                (size_t)k, 0, y);
    if ((st = mox_moe_combine(moe, y, comb_out)) != MOX_OK)
        die_mox(comm, "combine", st);
    wrong += check_combine(comb_out, fp8, f32wire);

    for (int i = 0; i < o.warmup; i++) {
        if ((st = mox_moe_dispatch(moe, &in, &out)) != MOX_OK)
            die_mox(comm, "dispatch", st);
        if ((st = mox_moe_combine(moe, y, comb_out)) != MOX_OK)
            die_mox(comm, "combine", st);
    }
    double td = 0, tc = 0, bi = 0, bc = 0;
    mc.t = 0;
    for (int i = 0; i < iters; i++) {
        mox_stats_t s0 = {.struct_size = sizeof s0}, s1 = s0, s2 = s0;
        paired_copy();
        MPI_Barrier(MPI_COMM_WORLD);
        mox_comm_stats(comm, &s0);
        double t0 = MPI_Wtime();
        if ((st = mox_moe_dispatch(moe, &in, &out)) != MOX_OK)
            die_mox(comm, "dispatch", st);
        double t1 = MPI_Wtime();
        td += t1 - t0;
        mox_comm_stats(comm, &s1);
        if (!o.b2b) { /* combine starts together */
            MPI_Barrier(MPI_COMM_WORLD);
            t1 = MPI_Wtime();
        }
        if ((st = mox_moe_combine(moe, y, comb_out)) != MOX_OK)
            die_mox(comm, "combine", st);
        double t2 = MPI_Wtime();
        mox_comm_stats(comm, &s2);
        tc += t2 - t1;
        bi += (double)(s1.bytes_inter - s0.bytes_inter);
        bc += (double)(s2.bytes_inter - s1.bytes_inter);
    }
    res->disp_s = td / iters;
    res->comb_s = tc / iters;
    res->copy_s = mc.t / iters;
    res->inter = bi / iters;
    res->comb_inter = bc / iters;
    res->wrong = wrong;
    free(rid); free(rsrc); free(rw); free(per_e);
}

/* ---- Open MPI alltoallv baseline -------------------------------------- */

typedef struct {
    int *scnt, *sdsp, *rcnt, *rdsp, *cur; /* in records / rows */
    char *sbuf, *rbuf;                    /* records */
    int32_t *stok;                        /* token of each sent record */
    uint16_t *cbuf;                       /* combine rows received */
    float *acc;                           /* [T][H] f32 sums */
    size_t scap, rcap;                    /* records */
    MPI_Datatype rec_t, row_t;
} mpi_t;

/* Counts + pack + MPI_Alltoall + MPI_Alltoallv: one record per (token,
 * destination rank). */
static void mpi_dispatch(mpi_t *m)
{
    int k = o.topk;
    size_t rec = rec_bytes(), meta = meta_bytes();
    for (int d = 0; d < P; d++)
        m->scnt[d] = 0;
    unsigned char *mask = (unsigned char *)m->cur; /* reuse: P bytes <= P ints */
    for (int t = 0; t < T; t++) {
        memset(mask, 0, (size_t)P);
        for (int j = 0; j < k; j++)
            mask[owner(ids_me[(size_t)t * k + j])] = 1;
        for (int d = 0; d < P; d++)
            m->scnt[d] += mask[d];
    }
    MPI_Alltoall(m->scnt, 1, MPI_INT, m->rcnt, 1, MPI_INT, MPI_COMM_WORLD);
    int so = 0, ro = 0;
    for (int d = 0; d < P; d++) {
        m->sdsp[d] = so;
        m->rdsp[d] = ro;
        so += m->scnt[d];
        ro += m->rcnt[d];
    }
    if ((size_t)so > m->scap || (size_t)ro > m->rcap) {
        fprintf(stderr, "mox-moe-bench: rank %d: MPI buffers too small\n", me);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    int *cur = m->cur;
    for (int d = 0; d < P; d++)
        cur[d] = m->sdsp[d];
    for (int t = 0; t < T; t++) {
        const int32_t *ids = ids_me + (size_t)t * k;
        /* destinations in rank order, each once */
        for (int d0 = 0; d0 < P; d0++) {
            int hit = 0;
            for (int j = 0; j < k; j++)
                hit |= owner(ids[j]) == d0;
            if (!hit)
                continue;
            char *r = m->sbuf + (size_t)cur[d0] * rec;
            m->stok[cur[d0]] = t;
            int32_t tt = t;
            memcpy(r, &tt, 4);
            memcpy(r + 4, ids, 4 * (size_t)k);
            memcpy(r + 4 + 4 * (size_t)k, w_me + (size_t)t * k, 4 * (size_t)k);
            memcpy(r + meta, x_in + (size_t)t * o.hidden, 2 * (size_t)o.hidden);
            cur[d0]++;
        }
    }
    MPI_Alltoallv(m->sbuf, m->scnt, m->sdsp, m->rec_t, m->rbuf, m->rcnt,
                  m->rdsp, m->rec_t, MPI_COMM_WORLD);
}

/* MPI_Alltoallv of the expert rows back, then f32 sum per token. */
static void mpi_combine(mpi_t *m)
{
    MPI_Alltoallv(y_buf, m->rcnt, m->rdsp, m->row_t, m->cbuf, m->scnt,
                  m->sdsp, m->row_t, MPI_COMM_WORLD);
    size_t H = (size_t)o.hidden;
    memset(m->acc, 0, (size_t)T * H * sizeof(float));
    for (int d = 0; d < P; d++)
        for (int i = m->sdsp[d]; i < m->sdsp[d] + m->scnt[d]; i++) {
            float *a = m->acc + (size_t)m->stok[i] * H;
            const uint16_t *row = m->cbuf + (size_t)i * H;
            for (size_t h = 0; h < H; h++)
                a[h] += bf2f(row[h]);
        }
    for (size_t i = 0; i < (size_t)T * H; i++)
        comb_out[i] = f2bf(m->acc[i]);
}

static void run_mpi(int iters, const expect_t *ex, result_t *res)
{
    int k = o.topk;
    size_t rec = rec_bytes(), meta = meta_bytes(), H = (size_t)o.hidden;
    mpi_t m;
    int *v = malloc(5 * (size_t)P * sizeof *v);
    m.scnt = v; m.sdsp = v + P; m.rcnt = v + 2 * P; m.rdsp = v + 3 * P;
    m.cur = v + 4 * P;
    m.scap = (size_t)T * (size_t)(k < P ? k : P);
    m.rcap = ex->nrecv;
    m.sbuf = malloc(m.scap * rec + 8);
    m.rbuf = malloc(m.rcap * rec + 8);
    m.stok = malloc(m.scap * 4 + 4);
    m.cbuf = malloc(m.scap * H * 2 + 8);
    m.acc = malloc((size_t)T * H * 4 + 8);
    if (!m.sbuf || !m.rbuf || !m.stok || !m.cbuf || !m.acc) {
        fprintf(stderr, "mox-moe-bench: rank %d: out of memory\n", me);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Type_contiguous((int)rec, MPI_BYTE, &m.rec_t);
    MPI_Type_commit(&m.rec_t);
    MPI_Type_contiguous((int)(2 * H), MPI_BYTE, &m.row_t);
    MPI_Type_commit(&m.row_t);

    /* checked round */
    memset(m.rbuf, 0, m.rcap * rec);
    mpi_dispatch(&m);
    long wrong = 0;
    uint64_t n = 0;
    for (int s = 0; s < P; s++)
        n += (uint64_t)m.rcnt[s];
    if (n != ex->nrecv) {
        fprintf(stderr, "mox-moe-bench: rank %d: MPI received %" PRIu64
                " rows, expected %" PRIu64 "\n", me, n, ex->nrecv);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    /* received order is by source rank then token, as mox's */
    int32_t *gid = malloc(n * k * 4 + 4);
    float *gw = malloc(n * k * 4 + 4);
    for (uint64_t r = 0; r < n; r++) {
        const char *rp = m.rbuf + r * rec;
        int s = ex->src[2 * r], t = ex->src[2 * r + 1], bad = 0;
        int32_t tt;
        memcpy(&tt, rp, 4);
        bad |= tt != t;
        memcpy(gid + r * k, rp + 4, 4 * (size_t)k);
        memcpy(gw + r * k, rp + 4 + 4 * (size_t)k, 4 * (size_t)k);
        for (int j = 0; j < k && !bad; j++) {
            size_t i = ((size_t)s * T + t) * k + (size_t)j;
            bad |= gid[r * k + j] != ids_all[i] || gw[r * k + j] != w_all[i];
        }
        if (!bad)
            bad = check_row((const uint16_t *)(rp + meta), s, t, 0);
        if (bad && wrong < 3)
            fprintf(stderr, "mox-moe-bench: rank %d: MPI: wrong row %" PRIu64
                    " (expected source %d token %d)\n", me, r, s, t);
        wrong += bad;
    }
    /* the experts read the hidden rows in place (stride = record) */
    run_experts(n, (const uint16_t *)(m.rbuf + meta), rec / 2, gw, (size_t)k,
                gid, (size_t)k, 1, y_buf);
    free(gid);
    free(gw);
    mpi_combine(&m);
    wrong += check_combine(comb_out, 0, 0);

    for (int i = 0; i < o.warmup; i++) {
        mpi_dispatch(&m);
        mpi_combine(&m);
    }
    double td = 0, tc = 0;
    mc.t = 0;
    for (int i = 0; i < iters; i++) {
        paired_copy();
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        mpi_dispatch(&m);
        double t1 = MPI_Wtime();
        td += t1 - t0;
        if (!o.b2b) { /* combine starts together */
            MPI_Barrier(MPI_COMM_WORLD);
            t1 = MPI_Wtime();
        }
        mpi_combine(&m);
        double t2 = MPI_Wtime();
        tc += t2 - t1;
    }
    double inter = 0, cinter = 0;
    for (int d = 0; d < P; d++)
        if (node_of[d] != node_of[me]) {
            inter += (double)m.scnt[d] * (double)rec;
            cinter += (double)m.rcnt[d] * 2.0 * (double)H;
        }
    res->disp_s = td / iters;
    res->comb_s = tc / iters;
    res->copy_s = mc.t / iters;
    res->inter = inter;
    res->comb_inter = cinter;
    res->wrong = wrong;
    MPI_Type_free(&m.rec_t);
    MPI_Type_free(&m.row_t);
    free(m.sbuf); free(m.rbuf); free(m.stok); free(m.cbuf); free(m.acc);
    free(v);
}

/* ---- setup ------------------------------------------------------------ */

static int oob_allgather(void *ctx, const void *sendbuf, void *recvbuf,
                         size_t bytes)
{
    (void)ctx;
    if (bytes > INT_MAX)
        return 1;
    return MPI_Allgather(sendbuf, (int)bytes, MPI_BYTE, recvbuf, (int)bytes,
                         MPI_BYTE, MPI_COMM_WORLD) != MPI_SUCCESS;
}

/* Nodes as MPI sees them, numbered by lowest rank (as mox numbers them). */
static void mpi_nodes(void)
{
    MPI_Comm node;
    int leader;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0,
                        MPI_INFO_NULL, &node);
    /* lowest world rank of my node */
    MPI_Allreduce(&me, &leader, 1, MPI_INT, MPI_MIN, node);
    MPI_Comm_free(&node);
    int *leaders = malloc((size_t)P * sizeof *leaders);
    MPI_Allgather(&leader, 1, MPI_INT, leaders, 1, MPI_INT, MPI_COMM_WORLD);
    node_of = malloc((size_t)P * sizeof *node_of);
    nnodes = 0;
    for (int r = 0; r < P; r++) {
        if (leaders[r] == r)
            node_of[r] = nnodes++;
        else
            node_of[r] = node_of[leaders[r]];
    }
    free(leaders);
}

static const char *IMPL_NAMES[4] = {"mox-dedup", "mox-a2av", "mox-dedup-fp8",
                                    "ompi-a2av"};

static int impl_on(int i)
{
    const char *s = o.impls, *n = IMPL_NAMES[i];
    size_t l = strlen(n);
    while (*s) {
        const char *e = strchr(s, ',');
        size_t sl = e ? (size_t)(e - s) : strlen(s);
        if (sl == l && !strncmp(s, n, l))
            return 1;
        s += sl + (e ? 1 : 0);
    }
    return 0;
}

static void fmt_bytes(char *buf, size_t len, double b)
{
    if (b >= 1e9)
        snprintf(buf, len, "%.2f GB", b / 1e9);
    else if (b >= 1e6)
        snprintf(buf, len, "%.2f MB", b / 1e6);
    else if (b >= 1e3)
        snprintf(buf, len, "%.1f kB", b / 1e3);
    else
        snprintf(buf, len, "%.0f B", b);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    int pr = parse(argc, argv);
    if (pr != 0) {
        if (me == 0)
            usage(pr > 0 ? stdout : stderr);
        MPI_Finalize();
        return pr > 0 ? 0 : 2;
    }
    {   /* Every pair of ranks talks once now, on idle links: Open MPI's TCP
         * transport connects a pair at its first message. Once, on 2 x 4
         * at 4096 tokens, a connect with mox's traffic filling the links
         * failed ("connect() ... Operation now in progress") and took the
         * job down; a pair whose alltoallv counts were zero at the
         * smaller sizes would connect only there. */
        for (int i = 1; i < P; i++) { /* pairwise: MPI_Alltoall of one
                                          int may take a log-P pattern */
            int out = me, in = -1;
            MPI_Sendrecv(&out, 1, MPI_INT, (me + i) % P, 0, &in, 1, MPI_INT,
                         (me + P - i) % P, 0, MPI_COMM_WORLD,
                         MPI_STATUS_IGNORE);
            if (in != (me + P - i) % P)
                MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    {   /* impl names */
        const char *s = o.impls;
        while (*s) {
            const char *e = strchr(s, ',');
            size_t sl = e ? (size_t)(e - s) : strlen(s);
            int ok = 0;
            for (int i = 0; i < 4; i++)
                ok |= strlen(IMPL_NAMES[i]) == sl && !strncmp(s, IMPL_NAMES[i], sl);
            if (!ok) {
                if (me == 0)
                    fprintf(stderr, "mox-moe-bench: unknown impl '%.*s' in "
                            "--impls\n", (int)sl, s);
                MPI_Finalize();
                return 2;
            }
            s += sl + (e ? 1 : 0);
        }
    }
    if (o.experts % P) {
        if (me == 0)
            fprintf(stderr, "mox-moe-bench: --experts %d is not a multiple of "
                    "the %d ranks\n", o.experts, P);
        MPI_Finalize();
        return 2;
    }
    El = o.experts / P;
    mpi_nodes();

    /* mox bootstraps over MPI (no PMIx needed) */
    mox_comm_t comm;
    char err[512] = "";
    mox_comm_params_t params = {.struct_size = sizeof params,
                                .oob_allgather = oob_allgather,
                                .oob_ctx = NULL, .oob_rank = me,
                                .oob_size = P, .error_buf = err,
                                .error_buf_len = sizeof err};
    if (mox_comm_create(&params, &comm) != MOX_OK) {
        fprintf(stderr, "mox-moe-bench: rank %d: mox_comm_create: %s\n", me,
                err);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    int agree = mox_comm_rank(comm) == me && mox_comm_size(comm) == P;
    for (int r = 0; r < P && agree; r++) {
        int nd = -1;
        mox_comm_rank_location(comm, r, &nd, NULL);
        agree = nd == node_of[r];
    }
    int all_agree;
    MPI_Allreduce(&agree, &all_agree, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all_agree) {
        if (!agree)
            fprintf(stderr, "mox-moe-bench: rank %d: mox and MPI disagree "
                    "(mox rank %d of %d; nodes differ?)\n", me,
                    mox_comm_rank(comm), mox_comm_size(comm));
        MPI_Abort(MPI_COMM_WORLD, 1);
    }

    int cw = !strcmp(o.comb_wire, "f32") ? MOX_MOE_WIRE_F32 : MOX_MOE_WIRE_BF16;
    mox_moe_config_t cfgs[3] = {
        {sizeof(mox_moe_config_t), o.experts, o.hidden, o.topk, MOX_DTYPE_BF16,
         MOX_DTYPE_I32, 1, MOX_MOE_WIRE_NATIVE, cw, MOX_MOE_ALGO_DEDUP},
        {sizeof(mox_moe_config_t), o.experts, o.hidden, o.topk, MOX_DTYPE_BF16,
         MOX_DTYPE_I32, 1, MOX_MOE_WIRE_NATIVE, cw, MOX_MOE_ALGO_ALLTOALLV},
        {sizeof(mox_moe_config_t), o.experts, o.hidden, o.topk, MOX_DTYPE_BF16,
         MOX_DTYPE_I32, 1, MOX_MOE_WIRE_FP8, cw, MOX_MOE_ALGO_DEDUP}};

    FILE *csv = NULL;
    char warm_list[MAX_LIST * 12] = "";
    for (int i = 0, n = 0; i < o.nwarm; i++)
        n += snprintf(warm_list + n, sizeof warm_list - (size_t)n, "%s%d",
                      i ? "," : "", o.warm[i]);
    if (me == 0) {
        printf("# mox-moe-bench: %d ranks on %d nodes, %d experts, top-%d, "
               "node-limited to %d, hidden %d bf16, combine wire %s, "
               "warmup %s, %s\n", P, nnodes, o.experts, o.topk, o.max_nodes,
               o.hidden, o.comb_wire, warm_list,
               o.b2b ? "combine back to back after dispatch"
                     : "a barrier before each op");
        if (nnodes > 1)
            printf("# x bound = dispatch time / link bound at %g Gbit/s\n",
                   o.link_gbit);
        else
            printf("# x bound = dispatch time / memcpy bound (every rank "
                   "copying its share of the delivered bytes, then a "
                   "barrier, before each timed dispatch)\n");
        if (o.csv && !(csv = fopen(o.csv, "w"))) {
            perror(o.csv);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (csv)
            fprintf(csv, "impl,ranks,nodes,tokens,hidden,experts,topk,iters,"
                         "dispatch_us,combine_us,gbs,inter_bytes_rank,"
                         "combine_inter_bytes_rank,dedup_min_bytes_rank,"
                         "x_dedup_min,bound_kind,bound_us,x_bound,wrong\n");
    }
    int rc = 0;
    for (int ti = 0; ti < o.ntok; ti++) {
        T = o.tokens[ti];
        int iters = o.iters[ti < o.niters ? ti : o.niters - 1];
        o.warmup = o.warm[ti < o.nwarm ? ti : o.nwarm - 1];
        int k = o.topk;
        size_t H = (size_t)o.hidden;
        ids_all = malloc((size_t)P * T * k * 4);
        w_all = malloc((size_t)P * T * k * 4);
        for (int s = 0; s < P; s++)
            for (int t = 0; t < T; t++)
                gen_routing(s, t, ids_all + ((size_t)s * T + t) * k,
                            w_all + ((size_t)s * T + t) * k);
        expect_t ex;
        build_expect(&ex);
        ids_me = ids_all + (size_t)me * T * k;
        w_me = w_all + (size_t)me * T * k;
        x_in = malloc((size_t)T * H * 2);
        for (int t = 0; t < T; t++) {
            uint32_t g = (uint32_t)tok_hash(me, t);
            for (size_t h = 0; h < H; h++)
                x_in[(size_t)t * H + h] = xbits(g, (int)h);
        }
        cap = ex.nrecv;
        recv_x = malloc(cap * H * 2 + 8);
        y_buf = malloc(cap * H * 2 + 8);
        comb_out = malloc((size_t)T * H * 2 + 8);
        if (!ids_all || !w_all || !x_in || !recv_x || !y_buf || !comb_out) {
            fprintf(stderr, "mox-moe-bench: rank %d: out of memory\n", me);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (nnodes == 1) { /* paired copies (paired_copy) */
            mc.len = (size_t)(ex.rec_total / P) + 64;
            mc.a = malloc(mc.len);
            mc.b = malloc(mc.len);
            if (!mc.a || !mc.b) {
                fprintf(stderr, "mox-moe-bench: rank %d: out of memory\n", me);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            memset(mc.a, 1, mc.len);
            memset(mc.b, 2, mc.len);
        }
        const char *bkind = nnodes > 1 ? "link" : "memcpy";
        char b1[32], bnd[64];
        fmt_bytes(b1, sizeof b1, ex.dedup_min_rank);
        if (nnodes > 1)
            snprintf(bnd, sizeof bnd, "link bound %.0f us",
                     ex.link_bound_s * 1e6);
        else
            snprintf(bnd, sizeof bnd, "memcpy bound per impl (last column)");
        if (me == 0) {
            printf("\n# %d tokens/rank, %d iters, %d warmup: dedup-min "
                   "%s/rank, %s, %.0f rows delivered/rank\n", T, iters,
                   o.warmup, b1, bnd,
                   ex.delivered_rank);
            printf("#%-14s %12s %12s %8s %14s %11s %8s %7s%s\n", "impl",
                   "dispatch(us)", "combine(us)", "GB/s", "inter B/rank",
                   "x dedup-min", "x bound", "#wrong",
                   nnodes > 1 ? "" : "    bound(us)");
            fflush(stdout);
        }
        double disp[4] = {0}, comb[4] = {0};
        /* Measured in an order that rotates with the batch size (the first
         * implementation timed at a size ran slower than the same code
         * timed later), printed in a fixed one. */
        result_t rs[4];
        for (int j = 0; j < 4; j++) {
            int i = (j + ti) % 4;
            if (!impl_on(i))
                continue;
            if (i < 3) {
                /* One handle at a time, destroyed after its run: a handle
                 * keeps its buffers (about twice the bytes a rank receives,
                 * docs/moe.md "Memory"), and three of them at 4096 tokens
                 * would not fit beside each other in 24 GiB. */
                mox_moe_t moe = NULL;
                mox_status_t st = mox_moe_create(comm, &cfgs[i], &moe);
                if (st != MOX_OK)
                    die_mox(comm, "mox_moe_create", st);
                run_mox(comm, moe, i == 2, iters, &ex, &rs[i]);
                MPI_Barrier(MPI_COMM_WORLD); /* peers done with my buffers */
                mox_moe_destroy(moe);
            } else
                run_mpi(iters, &ex, &rs[i]);
        }
        for (int i = 0; i < 4; i++) {
            if (!impl_on(i))
                continue;
            result_t r = rs[i];
            double in4[4] = {r.disp_s, r.comb_s, r.copy_s, 0}, mx[4];
            double in2[3] = {r.inter, r.comb_inter, (double)r.wrong}, sum[3];
            MPI_Reduce(in4, mx, 3, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
            MPI_Reduce(in2, sum, 3, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
            long wrong = (long)sum[2];
            MPI_Bcast(&wrong, 1, MPI_LONG, 0, MPI_COMM_WORLD);
            if (wrong)
                rc = 1;
            if (me == 0) {
                double bound_s = nnodes > 1 ? ex.link_bound_s : mx[2];
                disp[i] = mx[0];
                comb[i] = mx[1];
                double inter = sum[0] / P, cinter = sum[1] / P;
                double gbs = ex.delivered_rank * 2.0 * (double)H / mx[0] / 1e9;
                char ib[32], xd[16], xb[16];
                fmt_bytes(ib, sizeof ib, inter);
                if (ex.dedup_min_rank > 0)
                    snprintf(xd, sizeof xd, "%.2f", inter / ex.dedup_min_rank);
                else
                    snprintf(xd, sizeof xd, "-");
                snprintf(xb, sizeof xb, "%.2f", mx[0] / bound_s);
                char mb[32] = "";
                if (nnodes == 1)
                    snprintf(mb, sizeof mb, " %12.0f", bound_s * 1e6);
                printf(" %-14s %12.1f %12.1f %8.3f %14s %11s %8s %7ld%s\n",
                       IMPL_NAMES[i], mx[0] * 1e6, mx[1] * 1e6, gbs, ib, xd,
                       xb, wrong, mb);
                fflush(stdout);
                if (csv)
                    fprintf(csv, "%s,%d,%d,%d,%d,%d,%d,%d,%.3f,%.3f,%.6f,%.0f,"
                            "%.0f,%.0f,%s,%s,%.3f,%.4f,%ld\n", IMPL_NAMES[i],
                            P, nnodes, T, o.hidden, o.experts, o.topk, iters,
                            mx[0] * 1e6, mx[1] * 1e6, gbs, inter, cinter,
                            ex.dedup_min_rank, ex.dedup_min_rank > 0 ? xd : "",
                            bkind, bound_s * 1e6, mx[0] / bound_s, wrong);
            }
        }
        if (me == 0 && impl_on(0) && impl_on(3) && disp[0] > 0 && comb[0] > 0)
            printf("# summary %d tokens: mox-dedup vs ompi-a2av: dispatch "
                   "%.2fx, combine %.2fx, dispatch+combine %.2fx faster\n", T,
                   disp[3] / disp[0], comb[3] / comb[0],
                   (disp[3] + comb[3]) / (disp[0] + comb[0]));
        free(ids_all); free(w_all); free(ex.src); free(x_in); free(recv_x);
        free(y_buf); free(comb_out); free(mc.a); free(mc.b);
        mc.a = mc.b = NULL;
    }
    if (csv)
        fclose(csv);
    mox_comm_destroy(comm);
    MPI_Finalize();
    return rc;
}
