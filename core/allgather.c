/* mox_allgather(v): argument checks and algorithm choice:
 * core/algorithms/allgather_hier.c on rows of nodes of any sizes (hier) or
 * one row of all ranks (flat), or, for small vectors,
 * core/algorithms/allgather_rdoubling.c (recursive doubling) across nodes
 * and core/algorithms/rsag_shm_small.c (the shm collective area) on one
 * node. */
#include "comm.h"
#include "dtype.h"
#include "log.h"
#include "rsag.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t start, end;
    int rank;
} span_t;

static int by_start(const void *a, const void *b)
{
    const span_t *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Blocks must not overlap in recvbuf (a receive would clobber another);
 * returns the end of the last block in elements, or fails. */
static mox_status_t check_blocks(mox__comm_t *c, const uint64_t *counts,
                                 const uint64_t *displs, uint64_t *extent)
{
    span_t *sp = malloc((size_t)c->size * sizeof *sp);
    if (!sp)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "allgather: no memory");
    int n = 0;
    mox_status_t st = MOX_OK;
    *extent = 0;
    for (int r = 0; r < c->size && st == MOX_OK; r++) {
        if (!counts[r])
            continue;
        if (displs[r] + counts[r] < displs[r] ||
            displs[r] + counts[r] > SIZE_MAX / 8)
            st = mox__fail(c, MOX_ERR_OVERFLOW, "allgather: block of rank "
                           "%d (displs %llu, count %llu) overflows", r,
                           (unsigned long long)displs[r],
                           (unsigned long long)counts[r]);
        sp[n++] = (span_t){displs[r], displs[r] + counts[r], r};
        if (displs[r] + counts[r] > *extent)
            *extent = displs[r] + counts[r];
    }
    /* Blocks usually come in rank order already: sort only when not. */
    int sorted = 1;
    for (int i = 1; i < n && sorted; i++)
        sorted = sp[i - 1].start <= sp[i].start;
    if (st == MOX_OK && !sorted)
        qsort(sp, (size_t)n, sizeof *sp, by_start);
    for (int i = 1; i < n && st == MOX_OK; i++)
        if (sp[i].start < sp[i - 1].end)
            st = mox__fail(c, MOX_ERR_INVALID_ARG, "allgather: the blocks "
                           "of rank %d and rank %d overlap in recvbuf",
                           sp[i - 1].rank, sp[i].rank);
    free(sp);
    return st;
}

mox_status_t mox_iallgatherv(mox_comm_t c, const void *sendbuf,
                             uint64_t sendcount, void *recvbuf,
                             const uint64_t *recvcounts,
                             const uint64_t *displs, mox_dtype_t dtype,
                             mox_req_t *out)
{
    if (!c)
        return MOX_ERR_INVALID_ARG;
    if (!out)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "allgather: req is NULL");
    *out = NULL;
    size_t esz = mox__dtype_size(dtype);
    if (!esz)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "allgather: unknown dtype "
                         "%d", (int)dtype);
    if (!recvcounts || !displs)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "allgather: recvcounts or "
                         "displs is NULL");
    int in_place = sendbuf == MOX_IN_PLACE;
    if (!in_place && sendcount != recvcounts[c->rank])
        return mox__fail(c, MOX_ERR_INVALID_ARG, "allgather: sendcount %llu "
                         "differs from recvcounts[%d] = %llu",
                         (unsigned long long)sendcount, c->rank,
                         (unsigned long long)recvcounts[c->rank]);
    uint64_t extent = 0;
    mox_status_t st = check_blocks(c, recvcounts, displs, &extent);
    if (st != MOX_OK)
        return st;
    uint64_t mine = recvcounts[c->rank];
    if ((extent && !recvbuf) || (mine && !in_place && !sendbuf))
        return mox__fail(c, MOX_ERR_INVALID_ARG, "allgather: %s is NULL "
                         "with a nonzero count", recvbuf ? "sendbuf"
                                                         : "recvbuf");
    uintptr_t s0 = (uintptr_t)sendbuf, r0 = (uintptr_t)recvbuf;
    if (!in_place && mine && extent && s0 < r0 + extent * esz &&
        r0 < s0 + mine * esz)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "allgather: sendbuf and "
                         "recvbuf overlap; pass MOX_IN_PLACE as sendbuf when "
                         "this rank's block is already in recvbuf");
    mox__ag_args_t a = {in_place ? (const char *)recvbuf + displs[c->rank] * esz
                                 : sendbuf,
                        recvbuf, recvcounts, displs, dtype, 0, 0, 0};
    /* The blocks do not overlap, so their sum is at most `extent`. */
    uint64_t total = 0;
    for (int r = 0; r < c->size; r++)
        total += recvcounts[r];
    int64_t algo = c->cfg.allgather_algo;
    /* One node: every rank writes its block into its slot of the shm
     * collective area (MOX_SHM_SMALL) and copies the others out, no
     * messages; larger blocks in rounds of a slot each. Two user-space
     * copies beat one CMA copy on a busy node (1 x 8, 8 MiB: 3.0 against
     * 4.6 ms; 64 MiB in rounds 25-26 against 48-56 ms). */
    /* Two ranks: one single copy each beats writing and reading the area
     * above 64 KiB (1 x 2, measured: 21 against 36 us at 128 KiB). */
    uint64_t maxblk = 0;
    for (int r = 0; r < c->size; r++)
        maxblk = recvcounts[r] > maxblk ? recvcounts[r] : maxblk;
    /* Larger blocks go through the area in rounds of a slot each. */
    int shm = algo == MOX_RSAG_AUTO && c->cfg.shm_small > 0 &&
              mox__shm_ag_rounds(c, maxblk * esz) > 0 &&
              (c->size > 2 || total * esz <= (64 << 10));
    /* On one node the direct shm exchange (flat) is faster than log2(P)
     * steps (1 x 8, 32 B - 16 KiB: 15-30 us against 32-53 us), so auto
     * takes rdoubling across nodes only. */
    int log = !shm && (algo == MOX_RSAG_LOG || algo == MOX_RSAG_LEADER ||
              (algo == MOX_RSAG_AUTO && c->topo.num_nodes > 1 &&
               total * esz <= (uint64_t)c->cfg.rsag_small));
    /* Leader mode: on equal nodes of 2 or more ranks, only each node's
     * leader sends, and its ranks meet it in the shm area, asleep while
     * they wait. auto takes it from 3 nodes up: 4 x 2, 32 B - 2 KiB:
     * 96-113 us against 117-143 for rdoubling on rails; on 2 x 4 it was
     * no faster (docs/reduce_scatter.md). */
    a.leader = log && algo != MOX_RSAG_LOG &&
               mox__shm_node_may(c, total * esz) &&
               (algo == MOX_RSAG_LEADER || c->topo.num_nodes >= 3);
    if (algo == MOX_RSAG_LEADER && !a.leader)
        MOX_DEBUG("allgather", "leader needs several nodes of equal size "
                  "with 2 or more ranks and a vector that fits "
                  "MOX_SHM_SMALL; using rdoubling");
    /* a.hier: nodes as rows, of any sizes for the pipelined algorithm;
     * rdoubling's grid needs nodes of equal size, else it runs on one
     * column of all ranks. Not hier: one row of all ranks (flat). */
    a.hier = c->topo.num_nodes > 1 &&
             (log ? mox__grid_nodes_equal(c) : algo != MOX_RSAG_FLAT);
    /* ring: the pipelined algorithm with a ring among rail peers across
     * nodes, on equal nodes; auto from 3 nodes up (on 2 it is the direct
     * exchange). */
    a.ring = a.hier && !shm && !log && mox__grid_nodes_equal(c) &&
             (algo == MOX_RSAG_RING ||
              (algo == MOX_RSAG_AUTO && c->topo.num_nodes >= 3));
    if (algo == MOX_RSAG_RING && !a.ring)
        MOX_DEBUG("allgather", "ring needs several nodes of equal size; "
                  "using hier");
    struct mox_req *req;
    st = mox__req_new(c, shm      ? "allgather_shm"
                         : a.leader ? "allgather_leader"
                         : log    ? "allgather_rdoubling"
                         : a.ring ? "allgather_ring"
                         : a.hier ? "allgather_hier"
                                  : "allgather_flat",
                      &req);
    if (st != MOX_OK)
        return st;
    MOX_DEBUG("allgather", "seq %llu: %s%s, %llu elements of %s on rank %d "
              "(%llu in all), %d nodes", (unsigned long long)req->seq,
              req->name, !log ? "" : a.hier ? " (nodes x local ranks)"
                                            : " (one column of all ranks)",
              (unsigned long long)mine, mox__dtype_name(dtype), c->rank,
              (unsigned long long)total, c->topo.num_nodes);
    st = shm   ? mox__allgather_shm(req, &a)
         : log ? mox__allgather_rdoubling(req, &a)
               : mox__allgather_hier(req, &a);
    if (st != MOX_OK) {
        mox__req_abort(req, st);
        return st;
    }
    return mox__req_start(req, out);
}

mox_status_t mox_allgatherv(mox_comm_t c, const void *sendbuf,
                            uint64_t sendcount, void *recvbuf,
                            const uint64_t *recvcounts,
                            const uint64_t *displs, mox_dtype_t dtype)
{
    mox_req_t req = NULL;
    mox_status_t st = mox_iallgatherv(c, sendbuf, sendcount, recvbuf,
                                      recvcounts, displs, dtype, &req);
    return mox__wait_started(st, req);
}

mox_status_t mox_iallgather(mox_comm_t c, const void *sendbuf, void *recvbuf,
                            uint64_t count, mox_dtype_t dtype, mox_req_t *out)
{
    if (!c)
        return MOX_ERR_INVALID_ARG;
    uint64_t *v = malloc(2 * (size_t)c->size * sizeof *v);
    if (!v)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "allgather: no memory");
    mox_status_t st = MOX_OK;
    for (int r = 0; r < c->size; r++) {
        v[r] = count;
        v[c->size + r] = (uint64_t)r * count;
        if (count && (uint64_t)r > UINT64_MAX / count)
            st = MOX_ERR_OVERFLOW;
    }
    if (st != MOX_OK)
        st = mox__fail(c, st, "allgather: count %llu times %d ranks "
                       "overflows", (unsigned long long)count, c->size);
    else
        st = mox_iallgatherv(c, sendbuf, count, recvbuf, v, v + c->size,
                             dtype, out);
    free(v);
    return st;
}

mox_status_t mox_allgather(mox_comm_t c, const void *sendbuf, void *recvbuf,
                           uint64_t count, mox_dtype_t dtype)
{
    mox_req_t req = NULL;
    mox_status_t st = mox_iallgather(c, sendbuf, recvbuf, count, dtype, &req);
    return mox__wait_started(st, req);
}
