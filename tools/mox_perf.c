/*
 * mox-perf: collective benchmarks with nccl-tests columns. Every timed
 * collective's result is checked against seeded data afterwards (#wrong).
 * Run under tools/mox-run (or mpirun): mox-perf -c alltoallv -b 8 -e 64M.
 */
#include "mox/mox.h"
#include "testdata.h"
#include "perf_rsag.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *coll;
    uint64_t min_bytes, max_bytes;
    double factor;
    int iters, warmup, check, barrier;
    const char *csv;
    const char *dtype, *op;   /* reduce_scatter / allgather */
    int density;              /* block-sparse reduce_scatter; -1 = dense */
    double link_gbps;
} perf_opts_t;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: mox-perf -c alltoall|alltoallv|reduce_scatter|allgather\n"
        "                [-b MIN] [-e MAX] [-f FACTOR] [-d TYPE] [-o OP]\n"
        "                [--density PCT] [--link-gbps G]\n"
        "                [-n ITERS] [-w WARMUP] [--barrier] [--no-check]\n"
        "                [--csv FILE]\n"
        "  -c, --coll      collective to time\n"
        "  -b, --minbytes  smallest size in bytes per rank (default 8; k/M/G "
        "suffixes)\n"
        "  -e, --maxbytes  largest size (default 64M)\n"
        "  -f, --stepfactor  multiply the size by this each step (default 2)\n"
        "  -n, --iters     timed iterations per size (default 20)\n"
        "  -w, --warmup    untimed iterations per size (default 5)\n"
        "      --barrier   alltoall(v): a barrier before every timed\n"
        "                  iteration, each operation timed alone (as OSU's\n"
        "                  benchmarks); default: iterations back to back,\n"
        "                  the loop timed\n"
        "      --no-check  skip the result check (#wrong shows N/A)\n"
        "      --csv FILE  also write the table as CSV (rank 0)\n"
        "  -d, --datatype  reduce_scatter/allgather type: u8 i32 i64 f16 bf16\n"
        "                  f32 f64 (default f32)\n"
        "  -o, --op        reduce_scatter op: sum prod max min avg (default "
        "sum)\n"
        "      --density PCT  block-sparse reduce_scatter with PCT %% of the\n"
        "                  256-element blocks present on each rank\n"
        "      --link-gbps G  per-node link rate: print the link bound, the\n"
        "                  time the inter-node bytes need at G Gbit/s, and\n"
        "                  time / bound (x)\n"
        "reduce_scatter/allgather size is the full vector (P * count * type\n"
        "size), as nccl-tests.\n"
        "Size is the bytes each rank sends in total (as nccl-tests);\n"
        "alltoallv uses uneven per-peer counts (50%%..150%% of the mean).\n"
        "time is the slowest rank's mean; algbw = size/time; busbw = algbw *\n"
        "(P-1)/P. Run under tools/mox-run or mpirun.\n");
}

static int parse(int argc, char **argv, perf_opts_t *o)
{
    static const struct option lo[] = {
        {"coll", 1, 0, 'c'},   {"minbytes", 1, 0, 'b'},
        {"maxbytes", 1, 0, 'e'}, {"stepfactor", 1, 0, 'f'},
        {"iters", 1, 0, 'n'},  {"warmup", 1, 0, 'w'},
        {"no-check", 0, 0, 'C'}, {"csv", 1, 0, 'V'},
        {"datatype", 1, 0, 'd'}, {"op", 1, 0, 'o'},
        {"density", 1, 0, 'D'}, {"link-gbps", 1, 0, 'L'},
        {"barrier", 0, 0, 'B'},
        {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
    *o = (perf_opts_t){"alltoallv", 8, 64 << 20, 2.0, 20, 5, 1, 0, NULL,
                       "f32", "sum", -1, 0};
    int c;
    while ((c = getopt_long(argc, argv, "c:b:e:f:n:w:d:o:h", lo, NULL)) != -1) {
        switch (c) {
        case 'c': o->coll = optarg; break;
        case 'b': o->min_bytes = td_parse_bytes(optarg); break;
        case 'e': o->max_bytes = td_parse_bytes(optarg); break;
        case 'f': o->factor = strtod(optarg, NULL); break;
        case 'n': o->iters = atoi(optarg); break;
        case 'w': o->warmup = atoi(optarg); break;
        case 'C': o->check = 0; break;
        case 'B': o->barrier = 1; break;
        case 'V': o->csv = optarg; break;
        case 'd': o->dtype = optarg; break;
        case 'o': o->op = optarg; break;
        case 'D': o->density = atoi(optarg); break;
        case 'L': o->link_gbps = strtod(optarg, NULL); break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mox-perf: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (strcmp(o->coll, "alltoall") && strcmp(o->coll, "alltoallv") &&
        !rsag_is_coll(o->coll)) {
        fprintf(stderr, "mox-perf: unknown collective '%s' (alltoall, "
                "alltoallv, reduce_scatter, allgather)\n", o->coll);
        return -1;
    }
    if (rsag_is_coll(o->coll) &&
        rsag_check_args(o->dtype, o->op, o->density) != 0)
        return -1;
    if (rsag_is_coll(o->coll) && o->barrier) {
        fprintf(stderr, "mox-perf: --barrier is for alltoall and "
                "alltoallv\n");
        return -1;
    }
    if (!o->min_bytes || o->max_bytes < o->min_bytes || o->factor <= 1.0 ||
        o->iters < 1 || o->warmup < 0) {
        fprintf(stderr, "mox-perf: need 0 < MIN <= MAX, FACTOR > 1, "
                "ITERS >= 1\n");
        return -1;
    }
    return 0;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef struct {
    int P, me;
    uint64_t *sc, *sd, *rc, *rd;
    char *sb, *rb;
} bufs_t;

static void setup(const perf_opts_t *o, bufs_t *b, uint64_t mean)
{
    uint64_t st = 0, rt = 0;
    for (int j = 0; j < b->P; j++) {
        b->sc[j] = td_pair_count(mean, b->me, j, o->coll[8] == 'v');
        b->rc[j] = td_pair_count(mean, j, b->me, o->coll[8] == 'v');
        b->sd[j] = st;
        b->rd[j] = rt;
        st += b->sc[j];
        rt += b->rc[j];
    }
    b->sb = malloc(st + 1);
    b->rb = malloc(rt + 1);
    for (int j = 0; j < b->P; j++)
        td_fill(mean, 0, b->me, j, b->sb + b->sd[j], b->sc[j]);
}

static mox_status_t run_once(mox_comm_t comm, const perf_opts_t *o,
                             bufs_t *b)
{
    if (o->coll[8] != 'v')
        return mox_alltoall(comm, b->sb, b->rb, b->sc[0], 1);
    return mox_alltoallv(comm, b->sb, b->sc, b->sd, b->rb, b->rc, b->rd, 1);
}

static long count_wrong(const bufs_t *b, uint64_t mean)
{
    long wrong = 0;
    for (int j = 0; j < b->P; j++)
        wrong += td_check(mean, 0, j, b->me, b->rb + b->rd[j], b->rc[j]) >= 0;
    return wrong;
}

/* Max of a double over ranks, via mox_alltoall (every rank gets all). */
static double max_over_ranks(mox_comm_t comm, double v, int P)
{
    double *in = calloc((size_t)P, sizeof *in);
    double *out = calloc((size_t)P, sizeof *out);
    if (!in || !out)
        abort();
    for (int j = 0; j < P; j++)
        in[j] = v;
    mox_alltoall(comm, in, out, 1, sizeof(double));
    double m = 0;
    for (int j = 0; j < P; j++)
        m = out[j] > m ? out[j] : m;
    free(in);
    free(out);
    return m;
}

int main(int argc, char **argv)
{
    perf_opts_t o;
    if (parse(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    mox_comm_t comm;
    char err[512] = "";
    mox_comm_params_t params = {.struct_size = sizeof params,
                                .error_buf = err, .error_buf_len = sizeof err};
    if (mox_comm_create(&params, &comm) != MOX_OK) {
        fprintf(stderr, "mox-perf: %s\n", err);
        return 1;
    }
    if (rsag_is_coll(o.coll)) {
        FILE *f = NULL;
        if (mox_comm_rank(comm) == 0 && o.csv && !(f = fopen(o.csv, "w"))) {
            perror(o.csv);
            return 1;
        }
        rsag_bench_opts_t ro = {o.coll, o.dtype, o.op, o.density,
                                o.link_gbps, o.min_bytes, o.max_bytes,
                                o.factor, o.iters, o.warmup, o.check, f};
        int rrc = rsag_bench(comm, &ro);
        if (f)
            fclose(f);
        mox_comm_destroy(comm);
        return rrc;
    }
    bufs_t b = {.P = mox_comm_size(comm), .me = mox_comm_rank(comm)};
    mox_topo_info_t topo = {.struct_size = sizeof topo};
    mox_comm_topo(comm, &topo);
    uint64_t *v = malloc(4 * (size_t)b.P * sizeof *v);
    b.sc = v; b.sd = v + b.P; b.rc = v + 2 * b.P; b.rd = v + 3 * b.P;
    FILE *csv = NULL;
    if (b.me == 0) {
        printf("# mox-perf %s: %d ranks on %d nodes, %d iters, %d warmup\n",
               o.coll, b.P, topo.num_nodes, o.iters, o.warmup);
        printf("#%11s %12s %8s %10s %8s %8s %7s\n", "size", "count", "type",
               "time(us)", "algbw", "busbw", "#wrong");
        printf("#%11s %12s %8s %10s %8s %8s %7s\n", "(B)", "(elements)", "",
               "", "(GB/s)", "(GB/s)", "");
        if (o.csv && !(csv = fopen(o.csv, "w"))) {
            perror(o.csv);
            return 1;
        }
        if (csv)
            fprintf(csv, "impl,coll,ranks,nodes,size_bytes,count,type,"
                         "time_us,algbw_gbs,busbw_gbs,wrong\n");
    }
    int rc = 0;
    for (double sz = (double)o.min_bytes; sz <= (double)o.max_bytes;
         sz *= o.factor) {
        uint64_t mean = (uint64_t)sz / (uint64_t)b.P;
        if (mean == 0)
            continue;
        setup(&o, &b, mean);
        mox_status_t st = MOX_OK;
        for (int i = 0; i < o.warmup && st == MOX_OK; i++)
            st = run_once(comm, &o, &b);
        if (st == MOX_OK)
            st = mox_barrier(comm);
        double t0 = now_s(), t = 0;
        for (int i = 0; i < o.iters && st == MOX_OK; i++) {
            if (o.barrier) {
                st = mox_barrier(comm);
                double t1 = now_s();
                if (st == MOX_OK)
                    st = run_once(comm, &o, &b);
                t += now_s() - t1;
            } else {
                st = run_once(comm, &o, &b);
            }
        }
        t = (o.barrier ? t : now_s() - t0) / o.iters;
        /* Untimed barrier before the check: ranks done early would otherwise
         * compute their check while others are still in the timed loop, and
         * with more ranks than cores take their CPU (it added ~2 ms to the
         * last iteration on 1 x 8). */
        if (st == MOX_OK)
            st = mox_barrier(comm);
        if (st != MOX_OK) {
            fprintf(stderr, "mox-perf: rank %d: %s: %s\n", b.me,
                    mox_status_name(st), mox_comm_last_error(comm));
            return 1;
        }
        long wrong = o.check ? count_wrong(&b, mean) : -1;
        double tmax = max_over_ranks(comm, t, b.P);
        double wmax = max_over_ranks(comm, (double)(wrong < 0 ? 0 : wrong), b.P);
        uint64_t bytes = mean * (uint64_t)b.P;
        double algbw = (double)bytes / tmax / 1e9;
        double busbw = algbw * (b.P - 1) / b.P;
        if (wmax > 0)
            rc = 1;
        if (b.me == 0) {
            char w[16];
            if (wrong < 0)
                snprintf(w, sizeof w, "N/A");
            else
                snprintf(w, sizeof w, "%.0f", wmax);
            printf(" %11" PRIu64 " %12" PRIu64 " %8s %10.2f %8.3f %8.3f %7s\n",
                   bytes, bytes, "uint8", tmax * 1e6, algbw, busbw, w);
            if (csv)
                fprintf(csv, "mox,%s,%d,%d,%" PRIu64 ",%" PRIu64 ",uint8,%.3f,"
                        "%.6f,%.6f,%s\n", o.coll, b.P, topo.num_nodes, bytes,
                        bytes, tmax * 1e6, algbw, busbw, w);
            fflush(stdout);
        }
        free(b.sb);
        free(b.rb);
    }
    if (csv)
        fclose(csv);
    free(v);
    mox_comm_destroy(comm);
    return rc;
}
