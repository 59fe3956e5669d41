/*
 * Broken on purpose: reduce-scatter (equal blocks and per-rank counts) of
 * f16 reduces in the wrong order with the wrong accumulator: it sums the
 * ranks' contributions in reverse rank order in f16, rounding after every
 * step, instead of accumulating in f32 and rounding once (mox.h,
 * docs/reduce_scatter.md). Small addends after a large one are lost, so
 * mox-conformance must fail its f16 sum/avg reduce-scatter cases; max and
 * min (order-free, exact), every other type, the block-sparse form and
 * allgather still pass.
 *
 * How: the slices travel with the real alltoall(v), this plugin reduces
 * them itself, and the request it returns is a real barrier's.
 */
#include "wrap_common.h"

#include "half.h" /* tools/conformance: the suite's f16 conversions */

static float f16_op(int op, float a, float b)
{
    switch (op) {
    case MOX_V1_OP_PROD: return a * b;
    case MOX_V1_OP_MAX: return b > a ? b : a;
    case MOX_V1_OP_MIN: return b < a ? b : a;
    default: return a + b; /* sum, avg */
    }
}

/* tmp holds P slices of n elements, rank j's at j * n. */
static void reduce_reverse_f16(const uint16_t *tmp, int P, uint64_t n, int op,
                               uint16_t *out)
{
    for (uint64_t i = 0; i < n; i++) {
        uint16_t acc = tmp[(size_t)(P - 1) * n + i];
        for (int j = P - 2; j >= 0; j--) /* rounded to f16 at every step */
            acc = f_to_f16(f16_op(op, f16_to_f(acc), f16_to_f(tmp[j * n + i])));
        if (op == MOX_V1_OP_AVG)
            acc = f_to_f16(f16_to_f(acc) / (float)P);
        out[i] = acc;
    }
}

static int host(mox_v1_cbuf_t sb, mox_v1_buf_t rb)
{
    return (sb.ptr == MOX_V1_IN_PLACE || sb.mem_type == MOX_V1_MEM_HOST) &&
           rb.mem_type == MOX_V1_MEM_HOST;
}

/* Reduce-scatter with per-rank counts n[], the broken way. */
static int broken_rs(mox_v1_comm_t comm, mox_v1_cbuf_t sb, mox_v1_buf_t rb,
                     const uint64_t *n, int op, mox_v1_req_t *req)
{
    int P = real->comm_size(comm), me = real->comm_rank(comm);
    uint64_t *v = calloc(4 * (size_t)P, sizeof *v);
    uint64_t *sc = v, *sd = v + P, *rc = v + 2 * P, *rd = v + 3 * P, off = 0;
    for (int j = 0; j < P; j++) {
        sc[j] = n[j];
        sd[j] = off;
        off += n[j];
        rc[j] = n[me];
        rd[j] = (uint64_t)j * n[me];
    }
    const void *in = sb.ptr == MOX_V1_IN_PLACE ? rb.ptr : sb.ptr;
    uint16_t *tmp = malloc(((size_t)P * n[me] + 1) * 2);
    mox_v1_req_t r = NULL;
    int st = real->ialltoallv(comm, (mox_v1_cbuf_t){in, MOX_V1_MEM_HOST, 0},
                              sc, sd, (mox_v1_buf_t){tmp, MOX_V1_MEM_HOST, 0},
                              rc, rd, 2, &r);
    if (st == MOX_V1_OK) {
        st = real->req_wait(r);
        real->req_free(r);
    }
    if (st == MOX_V1_OK) {
        reduce_reverse_f16(tmp, P, n[me], op, rb.ptr);
        st = real->ibarrier(comm, req);
    }
    free(tmp);
    free(v);
    return st;
}

static int broken_ireduce_scatter(mox_v1_comm_t comm, mox_v1_cbuf_t sb,
                                  mox_v1_buf_t rb, uint64_t recvcount,
                                  int32_t dtype, int32_t op, mox_v1_req_t *req)
{
    if (dtype != MOX_V1_DTYPE_F16 || !host(sb, rb) || !comm || !req ||
        op < MOX_V1_OP_SUM || op > MOX_V1_OP_AVG)
        return real->ireduce_scatter(comm, sb, rb, recvcount, dtype, op, req);
    int P = real->comm_size(comm);
    uint64_t *n = malloc((size_t)P * sizeof *n);
    for (int j = 0; j < P; j++)
        n[j] = recvcount;
    int st = broken_rs(comm, sb, rb, n, op, req);
    free(n);
    return st;
}

static int broken_ireduce_scatter_v(mox_v1_comm_t comm, mox_v1_cbuf_t sb,
                                    mox_v1_buf_t rb, const uint64_t *counts,
                                    int32_t dtype, int32_t op,
                                    mox_v1_req_t *req)
{
    if (dtype != MOX_V1_DTYPE_F16 || !host(sb, rb) || !comm || !req ||
        !counts || op < MOX_V1_OP_SUM || op > MOX_V1_OP_AVG)
        return real->ireduce_scatter_v(comm, sb, rb, counts, dtype, op, req);
    return broken_rs(comm, sb, rb, counts, op, req);
}

__attribute__((constructor)) static void setup(void)
{
    wrap_load("broken-rs-f16-order");
    if (real) {
        mox_plugin_v1.ireduce_scatter = broken_ireduce_scatter;
        mox_plugin_v1.ireduce_scatter_v = broken_ireduce_scatter_v;
    }
}
