/* mox-perf: reduce-scatter and allgather buffers, runs and checks. Inputs
 * are small integers, exact in every type, so the reference is exact
 * (avg within one rounding of the result type). */
#include "perf_rsag.h"
#include "testdata.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *dt_names[] = {"u8", "i32", "i64", "f16", "bf16", "f32",
                                 "f64"};
static const char *op_names[] = {"sum", "prod", "max", "min", "avg"};
static const size_t dt_size[] = {1, 4, 8, 2, 2, 4, 8};

typedef struct {
    int ag, P, me, density;
    mox_dtype_t dt;
    mox_op_t op;
    uint64_t count, block, nblk;
    uint64_t *blk;
    char *in, *out;
} perf_rsag_t;

int rsag_is_coll(const char *coll)
{
    return !strcmp(coll, "reduce_scatter") || !strcmp(coll, "allgather");
}

static int find(const char *s, const char **names, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

int rsag_check_args(const char *dtype, const char *op, int density)
{
    if (find(dtype, dt_names, 7) < 0) {
        fprintf(stderr, "mox-perf: unknown type '%s' (u8, i32, i64, f16, "
                "bf16, f32, f64)\n", dtype);
        return -1;
    }
    if (find(op, op_names, 5) < 0) {
        fprintf(stderr, "mox-perf: unknown op '%s' (sum, prod, max, min, "
                "avg)\n", op);
        return -1;
    }
    if (density > 100) {
        fprintf(stderr, "mox-perf: --density must be 0..100\n");
        return -1;
    }
    return 0;
}

static double value(const perf_rsag_t *b, int r, uint64_t i)
{
    if (b->op == MOX_OP_PROD)
        return (double)(1 + (r + i) % 2);
    return (double)(((uint64_t)r * 3 + i) % 5);
}

static int present(const perf_rsag_t *b, int r, uint64_t blk)
{
    return b->density < 0 ||
           (int)(td_mix(blk * 131 + (uint64_t)r) % 100) < b->density;
}

static void store(mox_dtype_t t, void *p, uint64_t i, double x)
{
    float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, 4);
    switch (t) {
    case MOX_DTYPE_U8: ((uint8_t *)p)[i] = (uint8_t)x; break;
    case MOX_DTYPE_I32: ((int32_t *)p)[i] = (int32_t)x; break;
    case MOX_DTYPE_I64: ((int64_t *)p)[i] = (int64_t)x; break;
    case MOX_DTYPE_BF16: ((uint16_t *)p)[i] = (uint16_t)(u >> 16); break;
    case MOX_DTYPE_F16: {
        /* small non-negative integers < 2048: exact */
        uint16_t h = 0;
        if (x >= 1) {
            int e;
            frexp(x, &e);
            h = (uint16_t)((e - 1 + 15) << 10 |
                           (uint16_t)((ldexp(x, -(e - 1)) - 1) * 1024));
        }
        ((uint16_t *)p)[i] = h;
        break;
    }
    case MOX_DTYPE_F32: ((float *)p)[i] = f; break;
    case MOX_DTYPE_F64: ((double *)p)[i] = x; break;
    }
}

static double load(mox_dtype_t t, const void *p, uint64_t i)
{
    uint16_t h = ((const uint16_t *)p)[i];
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    switch (t) {
    case MOX_DTYPE_U8: return ((const uint8_t *)p)[i];
    case MOX_DTYPE_I32: return ((const int32_t *)p)[i];
    case MOX_DTYPE_I64: return (double)((const int64_t *)p)[i];
    case MOX_DTYPE_BF16: return f;
    case MOX_DTYPE_F16:
        return (h >> 10) ? ldexp(1024 + (h & 1023), (h >> 10) - 25)
                         : ldexp(h & 1023, -24);
    case MOX_DTYPE_F32: return ((const float *)p)[i];
    default: return ((const double *)p)[i];
    }
}

static perf_rsag_t *rsag_setup(const char *coll, const char *dtype, const char *op,
                        int density, int P, int me, uint64_t bytes)
{
    perf_rsag_t *b = calloc(1, sizeof *b);
    b->ag = !strcmp(coll, "allgather");
    b->P = P;
    b->me = me;
    b->dt = (mox_dtype_t)find(dtype, dt_names, 7);
    b->op = b->ag ? MOX_OP_SUM : (mox_op_t)find(op, op_names, 5);
    b->density = b->ag ? -1 : density;
    b->count = bytes / dt_size[b->dt] / (uint64_t)P;
    b->block = 256;
    if (b->density >= 0)
        b->count -= b->count % b->block;
    if (b->count == 0) {
        free(b);
        return NULL;
    }
    size_t es = dt_size[b->dt];
    uint64_t total = b->count * (uint64_t)P;
    b->in = malloc((b->ag ? b->count : total) * es);
    b->out = malloc((b->ag ? total : b->count) * es);
    for (uint64_t i = 0; i < (b->ag ? b->count : total); i++)
        store(b->dt, b->in, i, value(b, me, i));
    if (b->density >= 0) {
        b->blk = malloc((total / b->block + 1) * sizeof *b->blk);
        for (uint64_t k = 0; k < total / b->block; k++)
            if (present(b, me, k))
                b->blk[b->nblk++] = k;
    }
    return b;
}

static mox_status_t rsag_run(mox_comm_t comm, perf_rsag_t *b)
{
    if (b->ag)
        return mox_allgather(comm, b->in, b->out, b->count, b->dt);
    if (b->density >= 0)
        return mox_reduce_scatter_sparse(comm, b->in, b->out, b->count,
                                         b->dt, b->op, b->block, b->blk,
                                         b->nblk);
    return mox_reduce_scatter(comm, b->in, b->out, b->count, b->dt, b->op);
}

static long rsag_wrong(const perf_rsag_t *b)
{
    long wrong = 0;
    if (b->ag) {
        for (int r = 0; r < b->P; r++)
            for (uint64_t i = 0; i < b->count; i++)
                wrong += load(b->dt, b->out, (uint64_t)r * b->count + i) !=
                         value(b, r, i);
        return wrong;
    }
    uint64_t off = (uint64_t)b->me * b->count;
    for (uint64_t k = 0; k < b->count; k++) {
        uint64_t i = off + k;
        double ref = 0;
        int first = 1;
        for (int r = 0; r < b->P; r++) {
            double v = present(b, r, i / b->block) ? value(b, r, i) : 0;
            if (first)
                ref = v;
            else if (b->op == MOX_OP_PROD)
                ref *= v;
            else if (b->op == MOX_OP_MAX)
                ref = v > ref ? v : ref;
            else if (b->op == MOX_OP_MIN)
                ref = v < ref ? v : ref;
            else
                ref += v;
            first = 0;
        }
        if (b->op == MOX_OP_AVG)
            ref /= b->P;
        double got = load(b->dt, b->out, k);
        wrong += fabs(got - ref) > fabs(ref) * 0x1p-7;
    }
    return wrong;
}

static uint64_t rsag_count(const perf_rsag_t *b) { return b->count; }
static uint64_t rsag_bytes(const perf_rsag_t *b)
{
    return b->count * (uint64_t)b->P * dt_size[b->dt];
}
static const char *rsag_type(const perf_rsag_t *b) { return dt_names[b->dt]; }
static const char *rsag_op(const perf_rsag_t *b)
{
    return b->ag ? "none" : op_names[b->op];
}

static void rsag_free(perf_rsag_t *b)
{
    if (!b)
        return;
    free(b->in);
    free(b->out);
    free(b->blk);
    free(b);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Max over ranks through mox_allgather itself (timed runs are done). */
static double max_over_ranks(mox_comm_t comm, double v, int P)
{
    double *all = calloc((size_t)P, sizeof *all), m = 0;
    if (!all || mox_allgather(comm, &v, all, 1, MOX_DTYPE_F64) != MOX_OK)
        abort();
    for (int j = 0; j < P; j++)
        m = all[j] > m ? all[j] : m;
    free(all);
    return m;
}

/* Bytes that must cross each node's link one way, over its rate: every
 * node sends (N-1)/N of the vector (reduce-scatter) or receives it
 * (allgather), whatever the algorithm. */
static double link_bound_s(uint64_t bytes, int nodes, double gbps)
{
    if (nodes < 2 || gbps <= 0)
        return 0;
    return (double)bytes * (nodes - 1) / nodes * 8 / (gbps * 1e9);
}

int rsag_bench(mox_comm_t comm, const rsag_bench_opts_t *o)
{
    int P = mox_comm_size(comm), me = mox_comm_rank(comm);
    mox_topo_info_t topo = {.struct_size = sizeof topo};
    mox_comm_topo(comm, &topo);
    const char *name = o->density >= 0 ? "reduce_scatter_sparse" : o->coll;
    if (me == 0) {
        printf("# mox-perf %s: %d ranks on %d nodes, %d iters, %d warmup",
               name, P, topo.num_nodes, o->iters, o->warmup);
        if (o->density >= 0)
            printf(", %d%% of 256-element blocks present", o->density);
        if (o->link_gbps > 0)
            printf(", link bound at %g Gbit/s per node", o->link_gbps);
        printf("\n#%11s %12s %6s %6s %10s %8s %8s %7s %10s %6s\n", "size",
               "count", "type", "redop", "time(us)", "algbw", "busbw",
               "#wrong", "bound(us)", "x");
        printf("#%11s %12s %6s %6s %10s %8s %8s %7s %10s %6s\n", "(B)",
               "(elements)", "", "", "", "(GB/s)", "(GB/s)", "", "", "");
        if (o->csv)
            fprintf(o->csv, "impl,coll,ranks,nodes,size_bytes,count,type,"
                    "redop,time_us,algbw_gbs,busbw_gbs,wrong,bound_us\n");
    }
    int rc = 0;
    for (double sz = (double)o->min_bytes; sz <= (double)o->max_bytes;
         sz *= o->factor) {
        perf_rsag_t *b = rsag_setup(o->coll, o->dtype, o->op, o->density, P,
                                    me, (uint64_t)sz);
        if (!b)
            continue;
        mox_status_t st = MOX_OK;
        for (int i = 0; i < o->warmup && st == MOX_OK; i++)
            st = rsag_run(comm, b);
        if (st == MOX_OK)
            st = mox_barrier(comm);
        double t0 = now_s();
        for (int i = 0; i < o->iters && st == MOX_OK; i++)
            st = rsag_run(comm, b);
        double t = (now_s() - t0) / o->iters;
        /* Untimed barrier before the check: ranks done early would otherwise
         * compute their check while others are still in the timed loop, and
         * with more ranks than cores take their CPU (it added ~2 ms to the
         * last iteration on 1 x 8). */
        if (st == MOX_OK)
            st = mox_barrier(comm);
        if (st != MOX_OK) {
            fprintf(stderr, "mox-perf: rank %d: %s: %s\n", me,
                    mox_status_name(st), mox_comm_last_error(comm));
            return 1;
        }
        long wrong = o->check ? rsag_wrong(b) : -1;
        double tmax = max_over_ranks(comm, t, P);
        double wmax = max_over_ranks(comm, wrong < 0 ? 0 : (double)wrong, P);
        uint64_t bytes = rsag_bytes(b);
        double algbw = (double)bytes / tmax / 1e9;
        double busbw = algbw * (P - 1) / P;
        double bound = link_bound_s(bytes, topo.num_nodes, o->link_gbps);
        if (wmax > 0)
            rc = 1;
        if (me == 0) {
            char w[16], bd[16], x[16];
            snprintf(w, sizeof w, wrong < 0 ? "N/A" : "%.0f", wmax);
            snprintf(bd, sizeof bd, bound > 0 ? "%.1f" : "-", bound * 1e6);
            snprintf(x, sizeof x, bound > 0 ? "%.2f" : "-", tmax / bound);
            printf(" %11llu %12llu %6s %6s %10.2f %8.3f %8.3f %7s %10s %6s\n",
                   (unsigned long long)bytes,
                   (unsigned long long)rsag_count(b), rsag_type(b),
                   rsag_op(b), tmax * 1e6, algbw, busbw, w, bd, x);
            if (o->csv)
                fprintf(o->csv, "mox,%s,%d,%d,%llu,%llu,%s,%s,%.3f,%.6f,"
                        "%.6f,%s,%.3f\n", name, P, topo.num_nodes,
                        (unsigned long long)bytes,
                        (unsigned long long)rsag_count(b), rsag_type(b),
                        rsag_op(b), tmax * 1e6, algbw, busbw, w, bound * 1e6);
            fflush(stdout);
        }
        rsag_free(b);
    }
    return rc;
}
