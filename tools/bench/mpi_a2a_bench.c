/*
 * mpi-a2a-bench: MPI_Alltoall(v) timed exactly like mox-perf, for a
 * side-by-side comparison: same options, same nccl-tests columns and CSV
 * (impl "ompi"), same per-peer counts (td_pair_count) and the same seeded data
 * (tools/common/testdata.h), checked after the timed iterations (#wrong).
 * Run under mpirun or tools/mox-run --mpi:
 *   mpi-a2a-bench -c alltoallv -b 1k -e 16M -f 4 --csv out.csv
 */
#include "testdata.h"

#include <mpi.h>

#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *coll;
    uint64_t min_bytes, max_bytes;
    double factor;
    int iters, warmup, check, barrier;
    const char *csv;
} perf_opts_t;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: mpi-a2a-bench -c alltoall|alltoallv [-b MIN] [-e MAX] [-f FACTOR]\n"
        "                     [-n ITERS] [-w WARMUP] [--barrier] [--no-check]\n"
        "                     [--csv FILE]\n"
        "  -c, --coll      collective to time (MPI_Alltoall / MPI_Alltoallv)\n"
        "  -b, --minbytes  smallest size in bytes per rank (default 8; k/M/G "
        "suffixes)\n"
        "  -e, --maxbytes  largest size (default 64M)\n"
        "  -f, --stepfactor  multiply the size by this each step (default 2)\n"
        "  -n, --iters     timed iterations per size (default 20)\n"
        "  -w, --warmup    untimed iterations per size (default 5)\n"
        "      --barrier   a barrier before every timed iteration, each\n"
        "                  operation timed alone (as OSU's benchmarks);\n"
        "                  default: iterations back to back, the loop timed\n"
        "      --no-check  skip the result check (#wrong shows N/A)\n"
        "      --csv FILE  also write the table as CSV (rank 0), impl \"ompi\"\n"
        "Same traffic, columns and CSV as mox-perf: size is the bytes each rank\n"
        "sends in total; alltoallv uses uneven per-peer counts (50%%..150%% of\n"
        "the mean). time is the slowest rank's mean (MPI_Reduce MAX); algbw =\n"
        "size/time; busbw = algbw * (P-1)/P. Run under mpirun or\n"
        "tools/mox-run --mpi.\n");
}

static int parse(int argc, char **argv, perf_opts_t *o)
{
    static const struct option lo[] = {
        {"coll", 1, 0, 'c'},   {"minbytes", 1, 0, 'b'},
        {"maxbytes", 1, 0, 'e'}, {"stepfactor", 1, 0, 'f'},
        {"iters", 1, 0, 'n'},  {"warmup", 1, 0, 'w'},
        {"no-check", 0, 0, 'C'}, {"csv", 1, 0, 'o'},
        {"barrier", 0, 0, 'B'},
        {"help", 0, 0, 'h'},   {0, 0, 0, 0}};
    *o = (perf_opts_t){"alltoallv", 8, 64 << 20, 2.0, 20, 5, 1, 0, NULL};
    int c;
    while ((c = getopt_long(argc, argv, "c:b:e:f:n:w:h", lo, NULL)) != -1) {
        switch (c) {
        case 'c': o->coll = optarg; break;
        case 'b': o->min_bytes = td_parse_bytes(optarg); break;
        case 'e': o->max_bytes = td_parse_bytes(optarg); break;
        case 'f': o->factor = strtod(optarg, NULL); break;
        case 'n': o->iters = atoi(optarg); break;
        case 'w': o->warmup = atoi(optarg); break;
        case 'C': o->check = 0; break;
        case 'B': o->barrier = 1; break;
        case 'o': o->csv = optarg; break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mpi-a2a-bench: unexpected argument '%s'\n",
                argv[optind]);
        return -1;
    }
    if (strcmp(o->coll, "alltoall") && strcmp(o->coll, "alltoallv")) {
        fprintf(stderr, "mpi-a2a-bench: unknown collective '%s' (alltoall, "
                "alltoallv)\n", o->coll);
        return -1;
    }
    if (!o->min_bytes || o->max_bytes < o->min_bytes || o->factor <= 1.0 ||
        o->iters < 1 || o->warmup < 0) {
        fprintf(stderr, "mpi-a2a-bench: need 0 < MIN <= MAX, FACTOR > 1, "
                "ITERS >= 1, WARMUP >= 0\n");
        return -1;
    }
    return 0;
}

typedef struct {
    int P, me;
    int *sc, *sd, *rc, *rd;
    char *sb, *rb;
} bufs_t;

/* Counts and displacements for this size; -1 if they do not fit an int. */
static int setup(const perf_opts_t *o, bufs_t *b, uint64_t mean)
{
    uint64_t st = 0, rt = 0;
    for (int j = 0; j < b->P; j++) {
        uint64_t s = td_pair_count(mean, b->me, j, o->coll[8] == 'v');
        uint64_t r = td_pair_count(mean, j, b->me, o->coll[8] == 'v');
        if (st + s > INT_MAX || rt + r > INT_MAX)
            return -1;
        b->sc[j] = (int)s;
        b->rc[j] = (int)r;
        b->sd[j] = (int)st;
        b->rd[j] = (int)rt;
        st += s;
        rt += r;
    }
    b->sb = malloc(st + 1);
    b->rb = malloc(rt + 1);
    if (!b->sb || !b->rb)
        return -1;
    for (int j = 0; j < b->P; j++)
        td_fill(mean, 0, b->me, j, b->sb + b->sd[j], (size_t)b->sc[j]);
    memset(b->rb, 0, rt + 1);
    return 0;
}

static int run_once(const perf_opts_t *o, bufs_t *b)
{
    if (o->coll[8] != 'v')
        return MPI_Alltoall(b->sb, b->sc[0], MPI_BYTE, b->rb, b->rc[0],
                            MPI_BYTE, MPI_COMM_WORLD);
    return MPI_Alltoallv(b->sb, b->sc, b->sd, MPI_BYTE, b->rb, b->rc, b->rd,
                         MPI_BYTE, MPI_COMM_WORLD);
}

static long count_wrong(const bufs_t *b, uint64_t mean)
{
    long wrong = 0;
    for (int j = 0; j < b->P; j++)
        wrong += td_check(mean, 0, j, b->me, b->rb + b->rd[j],
                          (size_t)b->rc[j]) >= 0;
    return wrong;
}

/* Number of nodes as MPI sees them (shared-memory domains). */
static int count_nodes(void)
{
    MPI_Comm node;
    int lr, leaders = 0, one;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0,
                        MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &lr);
    one = lr == 0;
    MPI_Allreduce(&one, &leaders, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Comm_free(&node);
    return leaders;
}

int main(int argc, char **argv)
{
    perf_opts_t o;
    if (parse(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    MPI_Init(&argc, &argv);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    bufs_t b;
    MPI_Comm_size(MPI_COMM_WORLD, &b.P);
    MPI_Comm_rank(MPI_COMM_WORLD, &b.me);
    int nodes = count_nodes();
    int *v = malloc(4 * (size_t)b.P * sizeof *v);
    if (!v)
        MPI_Abort(MPI_COMM_WORLD, 1);
    b.sc = v; b.sd = v + b.P; b.rc = v + 2 * b.P; b.rd = v + 3 * b.P;
    FILE *csv = NULL;
    if (b.me == 0) {
        printf("# mpi-a2a-bench %s: %d ranks on %d nodes, %d iters, "
               "%d warmup\n", o.coll, b.P, nodes, o.iters, o.warmup);
        printf("#%11s %12s %8s %10s %8s %8s %7s\n", "size", "count", "type",
               "time(us)", "algbw", "busbw", "#wrong");
        printf("#%11s %12s %8s %10s %8s %8s %7s\n", "(B)", "(elements)", "",
               "", "(GB/s)", "(GB/s)", "");
        if (o.csv && !(csv = fopen(o.csv, "w"))) {
            perror(o.csv);
            MPI_Abort(MPI_COMM_WORLD, 1);
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
        int ok = setup(&o, &b, mean) == 0, all_ok;
        MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        if (!all_ok) {
            if (b.me == 0)
                fprintf(stderr, "mpi-a2a-bench: size %.0f does not fit int "
                        "counts or memory\n", sz);
            rc = 1;
            break;
        }
        int st = MPI_SUCCESS;
        for (int i = 0; i < o.warmup && st == MPI_SUCCESS; i++)
            st = run_once(&o, &b);
        if (st == MPI_SUCCESS)
            st = MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime(), t = 0;
        for (int i = 0; i < o.iters && st == MPI_SUCCESS; i++) {
            if (o.barrier) {
                st = MPI_Barrier(MPI_COMM_WORLD);
                double t1 = MPI_Wtime();
                if (st == MPI_SUCCESS)
                    st = run_once(&o, &b);
                t += MPI_Wtime() - t1;
            } else {
                st = run_once(&o, &b);
            }
        }
        t = (o.barrier ? t : MPI_Wtime() - t0) / o.iters;
        /* Untimed barrier before the check: ranks done early would otherwise
         * compute their check while others are still in the timed loop, and
         * with more ranks than cores take their CPU (it added ~2 ms to the
         * last iteration on 1 x 8). */
        if (st == MPI_SUCCESS)
            st = MPI_Barrier(MPI_COMM_WORLD);
        if (st != MPI_SUCCESS) {
            char es[MPI_MAX_ERROR_STRING];
            int len = 0;
            MPI_Error_string(st, es, &len);
            fprintf(stderr, "mpi-a2a-bench: rank %d: %s\n", b.me, es);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        long wrong = o.check ? count_wrong(&b, mean) : -1;
        double w = (double)(wrong < 0 ? 0 : wrong), tmax = 0, wmax = 0;
        MPI_Reduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        MPI_Reduce(&w, &wmax, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        MPI_Bcast(&wmax, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        uint64_t bytes = mean * (uint64_t)b.P;
        if (wmax > 0)
            rc = 1;
        if (b.me == 0) {
            double algbw = (double)bytes / tmax / 1e9;
            double busbw = algbw * (b.P - 1) / b.P;
            char ws[16];
            if (wrong < 0)
                snprintf(ws, sizeof ws, "N/A");
            else
                snprintf(ws, sizeof ws, "%.0f", wmax);
            printf(" %11" PRIu64 " %12" PRIu64 " %8s %10.2f %8.3f %8.3f %7s\n",
                   bytes, bytes, "uint8", tmax * 1e6, algbw, busbw, ws);
            if (csv)
                fprintf(csv, "ompi,%s,%d,%d,%" PRIu64 ",%" PRIu64 ",uint8,"
                        "%.3f,%.6f,%.6f,%s\n", o.coll, b.P, nodes, bytes,
                        bytes, tmax * 1e6, algbw, busbw, ws);
            fflush(stdout);
        }
        free(b.sb);
        free(b.rb);
    }
    if (csv)
        fclose(csv);
    free(v);
    MPI_Finalize();
    return rc;
}
