/*
 * mpi-rs-bench: Open MPI's MPI_Reduce_scatter_block and MPI_Allgather timed
 * like mox-perf -c reduce_scatter|allgather: same sizes (size = P * count *
 * type size), same columns (nccl-tests plus the link bound) and CSV (impl
 * "ompi"), same small-integer data, checked after the timed runs (#wrong).
 * Run under mpirun or tools/mox-run --mpi:
 *   mpi-rs-bench -c reduce_scatter -d f32 -b 8 -e 64M --link-gbps 1
 */
#include <mpi.h>

#include "testdata.h"

#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *coll, *csv;
    int dt; /* 0 f32, 1 f64, 2 i32, 3 i64, 4 u8 */
    uint64_t min_bytes, max_bytes;
    double factor, link_gbps;
    int iters, warmup, nodes;
} opts_t;

static const char *dt_names[] = {"f32", "f64", "i32", "i64", "u8"};
static const size_t dt_size[] = {4, 8, 4, 8, 1};

static void usage(FILE *f)
{
    fprintf(f,
        "usage: mpi-rs-bench -c reduce_scatter|allgather [-d f32|f64|i32|i64|u8]\n"
        "                    [-b MIN] [-e MAX] [-f FACTOR] [-n ITERS] [-w WARMUP]\n"
        "                    [--nodes N --link-gbps G] [--csv FILE]\n"
        "MPI_Reduce_scatter_block (sum) or MPI_Allgather with mox-perf's sizes\n"
        "and columns. size = P * count * type size; algbw = size/time; busbw =\n"
        "algbw (P-1)/P; bound = (N-1)/N * size at G Gbit/s per node.\n");
}

static int parse(int argc, char **argv, opts_t *o)
{
    static const struct option lo[] = {
        {"coll", 1, 0, 'c'}, {"datatype", 1, 0, 'd'}, {"minbytes", 1, 0, 'b'},
        {"maxbytes", 1, 0, 'e'}, {"stepfactor", 1, 0, 'f'},
        {"iters", 1, 0, 'n'}, {"warmup", 1, 0, 'w'}, {"csv", 1, 0, 'V'},
        {"nodes", 1, 0, 'N'}, {"link-gbps", 1, 0, 'L'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    *o = (opts_t){"reduce_scatter", NULL, 0, 8, 64 << 20, 2.0, 0, 20, 5, 1};
    int c;
    while ((c = getopt_long(argc, argv, "c:d:b:e:f:n:w:h", lo, NULL)) != -1) {
        switch (c) {
        case 'c': o->coll = optarg; break;
        case 'd':
            o->dt = -1;
            for (int i = 0; i < 5; i++)
                if (!strcmp(optarg, dt_names[i]))
                    o->dt = i;
            if (o->dt < 0)
                return -1;
            break;
        case 'b': o->min_bytes = td_parse_bytes(optarg); break;
        case 'e': o->max_bytes = td_parse_bytes(optarg); break;
        case 'f': o->factor = strtod(optarg, NULL); break;
        case 'n': o->iters = atoi(optarg); break;
        case 'w': o->warmup = atoi(optarg); break;
        case 'V': o->csv = optarg; break;
        case 'N': o->nodes = atoi(optarg); break;
        case 'L': o->link_gbps = strtod(optarg, NULL); break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (strcmp(o->coll, "reduce_scatter") && strcmp(o->coll, "allgather"))
        return -1;
    return o->min_bytes && o->max_bytes >= o->min_bytes && o->factor > 1 &&
                   o->iters > 0 && o->nodes > 0
               ? 0 : -1;
}

static MPI_Datatype mpi_type(int dt)
{
    MPI_Datatype t[] = {MPI_FLOAT, MPI_DOUBLE, MPI_INT32_T, MPI_INT64_T,
                        MPI_UINT8_T};
    return t[dt];
}

static double value(int r, uint64_t i) { return (double)(((uint64_t)r * 3 + i) % 5); }

static void store(int dt, void *p, uint64_t i, double x)
{
    switch (dt) {
    case 0: ((float *)p)[i] = (float)x; break;
    case 1: ((double *)p)[i] = x; break;
    case 2: ((int32_t *)p)[i] = (int32_t)x; break;
    case 3: ((int64_t *)p)[i] = (int64_t)x; break;
    default: ((uint8_t *)p)[i] = (uint8_t)x; break;
    }
}

static double load(int dt, const void *p, uint64_t i)
{
    switch (dt) {
    case 0: return ((const float *)p)[i];
    case 1: return ((const double *)p)[i];
    case 2: return ((const int32_t *)p)[i];
    case 3: return (double)((const int64_t *)p)[i];
    default: return ((const uint8_t *)p)[i];
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int P, me;
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    opts_t o;
    if (parse(argc, argv, &o) != 0) {
        if (me == 0)
            usage(stderr);
        MPI_Finalize();
        return 2;
    }
    int ag = !strcmp(o.coll, "allgather");
    FILE *csv = NULL;
    if (me == 0) {
        printf("# mpi-rs-bench %s: %d ranks on %d nodes, %d iters, %d warmup\n",
               ag ? "MPI_Allgather" : "MPI_Reduce_scatter_block", P, o.nodes,
               o.iters, o.warmup);
        printf("#%11s %12s %6s %6s %10s %8s %8s %7s %10s %6s\n", "size",
               "count", "type", "redop", "time(us)", "algbw", "busbw",
               "#wrong", "bound(us)", "x");
        if (o.csv && (csv = fopen(o.csv, "w")))
            fprintf(csv, "impl,coll,ranks,nodes,size_bytes,count,type,redop,"
                    "time_us,algbw_gbs,busbw_gbs,wrong,bound_us\n");
    }
    size_t es = dt_size[o.dt];
    int rc = 0;
    for (double sz = (double)o.min_bytes; sz <= (double)o.max_bytes;
         sz *= o.factor) {
        uint64_t count = (uint64_t)sz / es / (uint64_t)P;
        if (!count || count > INT32_MAX)
            continue;
        uint64_t total = count * (uint64_t)P;
        char *in = malloc((ag ? count : total) * es);
        char *out = malloc((ag ? total : count) * es);
        for (uint64_t i = 0; i < (ag ? count : total); i++)
            store(o.dt, in, i, value(me, i));
        for (int i = 0; i < o.warmup + o.iters + 1; i++) {
            if (i == o.warmup)
                MPI_Barrier(MPI_COMM_WORLD);
            if (ag)
                MPI_Allgather(in, (int)count, mpi_type(o.dt), out, (int)count,
                              mpi_type(o.dt), MPI_COMM_WORLD);
            else
                MPI_Reduce_scatter_block(in, out, (int)count, mpi_type(o.dt),
                                         MPI_SUM, MPI_COMM_WORLD);
        }
        double t0 = MPI_Wtime();
        for (int i = 0; i < o.iters; i++) {
            if (ag)
                MPI_Allgather(in, (int)count, mpi_type(o.dt), out, (int)count,
                              mpi_type(o.dt), MPI_COMM_WORLD);
            else
                MPI_Reduce_scatter_block(in, out, (int)count, mpi_type(o.dt),
                                         MPI_SUM, MPI_COMM_WORLD);
        }
        double t = (MPI_Wtime() - t0) / o.iters, tmax;
        /* Untimed barrier before the check: ranks done early would otherwise
         * compute their check while others are still in the timed loop, and
         * with more ranks than cores take their CPU (it added ~2 ms to the
         * last iteration on 1 x 8). */
        MPI_Barrier(MPI_COMM_WORLD);
        long wrong = 0, wsum;
        for (uint64_t k = 0; k < (ag ? total : count); k++) {
            double want = 0;
            if (ag)
                want = value((int)(k / count), k % count);
            else
                for (int r = 0; r < P; r++)
                    want += value(r, (uint64_t)me * count + k);
            if (o.dt == 4)
                want = (double)(uint8_t)want;
            wrong += load(o.dt, out, k) != want;
        }
        MPI_Reduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        MPI_Reduce(&wrong, &wsum, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
        if (me == 0) {
            uint64_t bytes = total * es;
            double algbw = (double)bytes / tmax / 1e9;
            double bound = o.nodes > 1 && o.link_gbps > 0
                               ? (double)bytes * (o.nodes - 1) / o.nodes * 8 /
                                     (o.link_gbps * 1e9)
                               : 0;
            char bd[16], x[16];
            snprintf(bd, sizeof bd, bound > 0 ? "%.1f" : "-", bound * 1e6);
            snprintf(x, sizeof x, bound > 0 ? "%.2f" : "-", tmax / bound);
            printf(" %11llu %12llu %6s %6s %10.2f %8.3f %8.3f %7ld %10s %6s\n",
                   (unsigned long long)bytes, (unsigned long long)count,
                   dt_names[o.dt], ag ? "none" : "sum", tmax * 1e6, algbw,
                   algbw * (P - 1) / P, wsum, bd, x);
            if (csv)
                fprintf(csv, "ompi,%s,%d,%d,%llu,%llu,%s,%s,%.3f,%.6f,%.6f,"
                        "%ld,%.3f\n", o.coll, P, o.nodes,
                        (unsigned long long)bytes, (unsigned long long)count,
                        dt_names[o.dt], ag ? "none" : "sum", tmax * 1e6,
                        algbw, algbw * (P - 1) / P, wsum, bound * 1e6);
            fflush(stdout);
            if (wsum)
                rc = 1;
        }
        free(in);
        free(out);
    }
    if (csv)
        fclose(csv);
    MPI_Finalize();
    return rc;
}
