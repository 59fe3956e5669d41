/* mox-perf: reduce-scatter (dense or block-sparse) and allgather. */
#ifndef MOX_TOOLS_PERF_RSAG_H
#define MOX_TOOLS_PERF_RSAG_H

#include <stdint.h>
#include <stdio.h>
#include "mox/mox.h"

typedef struct {
    const char *coll, *dtype, *op;
    int density;               /* block-sparse % of blocks present; -1 dense */
    double link_gbps;          /* per-node link rate for the bound; 0 none */
    uint64_t min_bytes, max_bytes;
    double factor;
    int iters, warmup, check;
    FILE *csv;                 /* rank 0 only; may be NULL */
} rsag_bench_opts_t;

/* 1 for "reduce_scatter" and "allgather". */
int rsag_is_coll(const char *coll);
/* Check -d/-o/--density; 0 when valid, else prints why and returns -1. */
int rsag_check_args(const char *dtype, const char *op, int density);
/* Run the size sweep and print the table (rank 0); returns the exit code. */
int rsag_bench(mox_comm_t comm, const rsag_bench_opts_t *o);

#endif
