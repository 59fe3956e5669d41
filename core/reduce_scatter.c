/* mox_reduce_scatter(_v, _sparse): argument checks and algorithm choice:
 * core/algorithms/reduce_scatter_hier.c on a grid of nodes x local ranks
 * (hier) or on one row of all ranks (flat), or, for small vectors,
 * core/algorithms/reduce_scatter_rhalving.c (recursive halving) across
 * nodes and core/algorithms/rsag_shm_small.c (the shm collective area) on
 * one node. */
#include "comm.h"
#include "dtype.h"
#include "log.h"
#include "reduce.h"
#include "rsag.h"

#include <stdlib.h>
#include <string.h>

/* 1 when [a, a+na) and [b, b+nb) share a byte. */
static int overlap(const void *a, size_t na, const void *b, size_t nb)
{
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return na && nb && x < y + nb && y < x + na;
}

/* hier runs on nodes of any sizes; flat when asked or on one node. */
static int choose_hier(const mox__comm_t *c, int64_t algo)
{
    return algo != MOX_RSAG_FLAT && c->topo.num_nodes > 1;
}

static mox_status_t start(mox__comm_t *c, mox__rs_args_t *a, uint64_t total,
                          mox_req_t *out)
{
    int64_t algo = c->cfg.reduce_scatter_algo;
    size_t bytes = total * mox__dtype_size(a->dtype);
    /* One node, small vector: every rank reads the others' inputs in the
     * shm collective area (MOX_SHM_SMALL), no messages; block-sparse ones
     * of any size write their present blocks there (in rounds above 4 x
     * that size), packed after a bitmap, when they fit (else messages,
     * decided alike on every rank). */
    int shm = algo == MOX_RSAG_AUTO &&
              (a->block_elems
                   ? mox__shm_sparse_may(c, total, a->block_elems,
                                         mox__dtype_size(a->dtype))
                   : mox__shm_small_fits(c, bytes));
    /* rhalving is dense only: sparse vectors keep their own messages. */
    /* On one node the direct shm exchange is faster than log2(P) steps
     * (measured on 1 x 8), so auto takes rhalving across nodes only. */
    int log = !a->block_elems &&
              (algo == MOX_RSAG_LOG || algo == MOX_RSAG_LEADER ||
               (algo == MOX_RSAG_AUTO && c->topo.num_nodes > 1 &&
                total * mox__dtype_size(a->dtype) <=
                    (uint64_t)c->cfg.rsag_small));
    /* Leader mode: on equal nodes of 2 or more ranks, only each node's
     * leader sends, and its ranks meet it in the shm area, asleep while
     * they wait. auto takes it from 3 nodes up: 4 x 2, 32 B - 2 KiB:
     * 94-117 us against 134-183 for rhalving on rails; on 2 x 4 it was
     * no faster (docs/reduce_scatter.md). */
    a->leader = log && algo != MOX_RSAG_LOG && mox__shm_node_may(c, bytes) &&
                (algo == MOX_RSAG_LEADER || c->topo.num_nodes >= 3);
    if (algo == MOX_RSAG_LEADER && !a->leader)
        MOX_DEBUG("reduce_scatter", "leader needs several nodes of equal "
                  "size with 2 or more ranks, a dense vector that fits "
                  "MOX_SHM_SMALL; using %s", log ? "rhalving" : "hier");
    if ((algo == MOX_RSAG_LOG || algo == MOX_RSAG_LEADER) && a->block_elems)
        MOX_DEBUG("reduce_scatter", "rhalving is dense only; sparse uses "
                  "the pipelined algorithm");
    a->hier = choose_hier(c, log ? MOX_RSAG_AUTO : algo);
    /* rhalving's grid needs equal nodes; one column of all ranks else. */
    a->node_grid = a->hier && mox__grid_nodes_equal(c);
    /* The ring runs the pipelined algorithm's column phase as a ring on
     * equal nodes, dense vectors only. */
    /* auto takes it from 3 nodes up (on 2 a ring is the direct exchange):
     * measured on 4 x 2 at 1 Gbit, 1-8 MiB 1.10-1.18 x the link bound
     * against 1.19-1.48 x for direct sends (docs/reduce_scatter.md). */
    a->ring = a->node_grid && !a->block_elems && !shm && !log &&
              (algo == MOX_RSAG_RING ||
               (algo == MOX_RSAG_AUTO && c->topo.num_nodes >= 3));
    if (algo == MOX_RSAG_RING && !a->ring)
        MOX_DEBUG("reduce_scatter", "ring needs several nodes of equal size "
                  "and a dense vector; using hier");
    const char *name = a->block_elems
                           ? (shm       ? "reduce_scatter_sparse_shm"
                              : a->hier ? "reduce_scatter_sparse_hier"
                                        : "reduce_scatter_sparse_flat")
                       : shm ? "reduce_scatter_shm"
                       : a->leader ? "reduce_scatter_leader"
                       : log ? (a->node_grid ? "reduce_scatter_rhalving_hier"
                                             : "reduce_scatter_rhalving")
                             : a->ring ? "reduce_scatter_ring"
                             : (a->hier ? "reduce_scatter_hier"
                                        : "reduce_scatter_flat");
    struct mox_req *req;
    mox_status_t st = mox__req_new(c, name, &req);
    if (st != MOX_OK)
        return st;
    MOX_DEBUG("reduce_scatter", "seq %llu: %s, %llu elements of %s, op %s, "
              "%d nodes", (unsigned long long)req->seq, name,
              (unsigned long long)total, mox__dtype_name(a->dtype),
              mox__op_name(a->op), c->topo.num_nodes);
    st = shm   ? mox__reduce_scatter_shm(req, a)
         : log ? mox__reduce_scatter_rhalving(req, a)
               : mox__reduce_scatter_hier(req, a);
    if (st != MOX_OK) {
        mox__req_abort(req, st);
        return st;
    }
    return mox__req_start(req, out);
}

/* Checks shared by every form; fills a->in/out and *total. */
static mox_status_t check_common(mox__comm_t *c, const char *what,
                                 const void *sendbuf, void *recvbuf,
                                 const uint64_t *counts, mox_dtype_t dtype,
                                 mox_op_t op, mox__rs_args_t *a,
                                 uint64_t *total)
{
    char err[128];
    mox_status_t st = mox__reduce_check(dtype, (int)op, err, sizeof err);
    if (st != MOX_OK)
        return mox__fail(c, st, "%s: %s", what, err);
    size_t esz = mox__dtype_size(dtype);
    uint64_t sum = 0;
    for (int r = 0; r < c->size; r++) {
        if (sum + counts[r] < sum)
            return mox__fail(c, MOX_ERR_OVERFLOW, "%s: counts overflow at "
                             "rank %d", what, r);
        sum += counts[r];
    }
    /* The accumulator may be 8 bytes per element. */
    if (sum > SIZE_MAX / 8)
        return mox__fail(c, MOX_ERR_OVERFLOW, "%s: %llu elements overflow "
                         "the address space", what, (unsigned long long)sum);
    uint64_t mine = counts[c->rank];
    int in_place = sendbuf == MOX_IN_PLACE;
    if ((sum && !in_place && !sendbuf) || ((mine || (in_place && sum)) &&
                                           !recvbuf))
        return mox__fail(c, MOX_ERR_INVALID_ARG, "%s: %s is NULL with %llu "
                         "elements", what, recvbuf ? "sendbuf" : "recvbuf",
                         (unsigned long long)(recvbuf ? sum : mine));
    if (!in_place && overlap(sendbuf, sum * esz, recvbuf, mine * esz))
        return mox__fail(c, MOX_ERR_INVALID_ARG, "%s: sendbuf and recvbuf "
                         "overlap; pass MOX_IN_PLACE as sendbuf to reduce "
                         "in place", what);
    a->in = in_place ? recvbuf : sendbuf;
    a->out = recvbuf;
    a->counts = counts;
    a->dtype = dtype;
    a->op = op;
    *total = sum;
    return MOX_OK;
}

mox_status_t mox_ireduce_scatter_v(mox_comm_t c, const void *sendbuf,
                                   void *recvbuf, const uint64_t *recvcounts,
                                   mox_dtype_t dtype, mox_op_t op,
                                   mox_req_t *out)
{
    if (!c)
        return MOX_ERR_INVALID_ARG;
    if (!out)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "reduce_scatter: req is "
                         "NULL");
    *out = NULL;
    if (!recvcounts)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "reduce_scatter: "
                         "recvcounts is NULL");
    mox__rs_args_t a = {0};
    uint64_t total;
    mox_status_t st = check_common(c, "reduce_scatter", sendbuf, recvbuf,
                                   recvcounts, dtype, op, &a, &total);
    if (st != MOX_OK)
        return st;
    return start(c, &a, total, out);
}

mox_status_t mox_reduce_scatter_v(mox_comm_t c, const void *sendbuf,
                                  void *recvbuf, const uint64_t *recvcounts,
                                  mox_dtype_t dtype, mox_op_t op)
{
    mox_req_t req = NULL;
    mox_status_t st = mox_ireduce_scatter_v(c, sendbuf, recvbuf, recvcounts,
                                            dtype, op, &req);
    return mox__wait_started(st, req);
}

/* Equal counts as a temporary array: read only during the start. */
static uint64_t *equal_counts(mox__comm_t *c, uint64_t count)
{
    uint64_t *v = malloc((size_t)c->size * sizeof *v);
    if (!v) {
        mox__fail(c, MOX_ERR_NO_MEMORY, "reduce_scatter: no memory");
        return NULL;
    }
    for (int r = 0; r < c->size; r++)
        v[r] = count;
    return v;
}

mox_status_t mox_ireduce_scatter(mox_comm_t c, const void *sendbuf,
                                 void *recvbuf, uint64_t recvcount,
                                 mox_dtype_t dtype, mox_op_t op,
                                 mox_req_t *out)
{
    if (!c)
        return MOX_ERR_INVALID_ARG;
    uint64_t *v = equal_counts(c, recvcount);
    if (!v)
        return MOX_ERR_NO_MEMORY;
    mox_status_t st = mox_ireduce_scatter_v(c, sendbuf, recvbuf, v, dtype, op,
                                            out);
    free(v);
    return st;
}

mox_status_t mox_reduce_scatter(mox_comm_t c, const void *sendbuf,
                                void *recvbuf, uint64_t recvcount,
                                mox_dtype_t dtype, mox_op_t op)
{
    mox_req_t req = NULL;
    mox_status_t st = mox_ireduce_scatter(c, sendbuf, recvbuf, recvcount,
                                          dtype, op, &req);
    return mox__wait_started(st, req);
}

static mox_status_t check_sparse(mox__comm_t *c, uint64_t recvcount,
                                 mox_op_t op, uint64_t block_elems,
                                 const uint64_t *blocks, uint64_t nblocks)
{
    const char *w = "reduce_scatter_sparse";
    if (op != MOX_OP_SUM && op != MOX_OP_AVG && op <= MOX_OP_AVG)
        return mox__fail(c, MOX_ERR_UNSUPPORTED, "%s: op %s is not "
                         "supported (sum and avg are)", w, mox__op_name(op));
    if (block_elems == 0 || recvcount % block_elems)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "%s: recvcount %llu is not "
                         "a multiple of block_elems %llu", w,
                         (unsigned long long)recvcount,
                         (unsigned long long)block_elems);
    uint64_t nb = recvcount / block_elems * (uint64_t)c->size;
    if (nblocks && !blocks)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "%s: blocks is NULL with "
                         "nblocks %llu", w, (unsigned long long)nblocks);
    for (uint64_t i = 0; i < nblocks; i++) {
        if (blocks[i] >= nb)
            return mox__fail(c, MOX_ERR_INVALID_ARG, "%s: blocks[%llu] = "
                             "%llu is outside [0, %llu)", w,
                             (unsigned long long)i,
                             (unsigned long long)blocks[i],
                             (unsigned long long)nb);
        if (i && blocks[i] <= blocks[i - 1])
            return mox__fail(c, MOX_ERR_INVALID_ARG, "%s: blocks[%llu] = "
                             "%llu does not ascend strictly after %llu", w,
                             (unsigned long long)i,
                             (unsigned long long)blocks[i],
                             (unsigned long long)blocks[i - 1]);
    }
    return MOX_OK;
}

mox_status_t mox_ireduce_scatter_sparse(mox_comm_t c, const void *sendbuf,
                                        void *recvbuf, uint64_t recvcount,
                                        mox_dtype_t dtype, mox_op_t op,
                                        uint64_t block_elems,
                                        const uint64_t *blocks,
                                        uint64_t nblocks, mox_req_t *out)
{
    if (!c)
        return MOX_ERR_INVALID_ARG;
    if (!out)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "reduce_scatter_sparse: "
                         "req is NULL");
    *out = NULL;
    uint64_t *v = equal_counts(c, recvcount);
    if (!v)
        return MOX_ERR_NO_MEMORY;
    mox__rs_args_t a = {0};
    uint64_t total;
    mox_status_t st = check_common(c, "reduce_scatter_sparse", sendbuf,
                                   recvbuf, v, dtype, op, &a, &total);
    if (st == MOX_OK)
        st = check_sparse(c, recvcount, op, block_elems, blocks, nblocks);
    if (st == MOX_OK) {
        a.block_elems = block_elems;
        a.blocks = blocks;
        a.nblocks = nblocks;
        st = start(c, &a, total, out);
    }
    free(v);
    return st;
}

mox_status_t mox_reduce_scatter_sparse(mox_comm_t c, const void *sendbuf,
                                       void *recvbuf, uint64_t recvcount,
                                       mox_dtype_t dtype, mox_op_t op,
                                       uint64_t block_elems,
                                       const uint64_t *blocks,
                                       uint64_t nblocks)
{
    mox_req_t req = NULL;
    mox_status_t st = mox_ireduce_scatter_sparse(c, sendbuf, recvbuf,
                                                 recvcount, dtype, op,
                                                 block_elems, blocks, nblocks,
                                                 &req);
    return mox__wait_started(st, req);
}
