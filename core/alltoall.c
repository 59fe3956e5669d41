/* mox_alltoall(v): argument checks and algorithm selection. */
#include "comm.h"
#include "log.h"

#include <stdlib.h>

/* Checks that every block fits in 64-bit byte offsets and that no buffer is
 * NULL where a count is nonzero. */
static mox_status_t check_side(mox__comm_t *c, const char *side,
                               const void *buf, const uint64_t *counts,
                               const uint64_t *displs, size_t elem_bytes)
{
    if (!counts || !displs)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "alltoallv: %scounts or "
                         "%sdispls is NULL", side, side);
    for (int j = 0; j < c->size; j++) {
        if (counts[j] == 0)
            continue;
        if (!buf)
            return mox__fail(c, MOX_ERR_INVALID_ARG, "alltoallv: %sbuf is "
                             "NULL but %scounts[%d] = %llu", side, side, j,
                             (unsigned long long)counts[j]);
        if (counts[j] > SIZE_MAX / elem_bytes ||
            displs[j] > SIZE_MAX / elem_bytes ||
            counts[j] + displs[j] < counts[j] ||
            counts[j] + displs[j] > SIZE_MAX / elem_bytes)
            return mox__fail(c, MOX_ERR_OVERFLOW, "alltoallv: %scounts[%d] "
                             "= %llu at %sdispls[%d] = %llu overflows with "
                             "%zu-byte elements", side, j,
                             (unsigned long long)counts[j], side, j,
                             (unsigned long long)displs[j], elem_bytes);
    }
    return MOX_OK;
}

static int use_hier(const mox__comm_t *c)
{
    switch (c->cfg.alltoallv_algo) {
    case MOX_A2A_PAIRWISE: return 0;
    case MOX_A2A_HIER: return 1;
    default: return c->topo.num_nodes > 1;
    }
}

mox_status_t mox_ialltoallv(mox_comm_t c, const void *sendbuf,
                            const uint64_t *sendcounts,
                            const uint64_t *sdispls, void *recvbuf,
                            const uint64_t *recvcounts,
                            const uint64_t *rdispls, size_t elem_bytes,
                            mox_req_t *out)
{
    if (!c)
        return MOX_ERR_INVALID_ARG;
    if (!out)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "alltoallv: req is NULL");
    *out = NULL;
    if (elem_bytes == 0)
        return mox__fail(c, MOX_ERR_INVALID_ARG,
                         "alltoallv: elem_bytes is 0");
    mox_status_t st = check_side(c, "send", sendbuf, sendcounts, sdispls,
                                 elem_bytes);
    if (st == MOX_OK)
        st = check_side(c, "recv", recvbuf, recvcounts, rdispls, elem_bytes);
    if (st != MOX_OK)
        return st;
    mox__a2av_args_t a = {sendbuf, sendcounts, sdispls, recvbuf,
                          recvcounts, rdispls, elem_bytes};
    int hier = use_hier(c);
    struct mox_req *req;
    st = mox__req_new(c, hier ? "alltoallv_hier" : "alltoallv_pairwise",
                      &req);
    if (st != MOX_OK)
        return st;
    MOX_TRACE("a2a", "seq %llu: %s", (unsigned long long)req->seq,
              req->name);
    st = hier ? mox__alltoallv_hier(req, &a) : mox__alltoallv_pairwise(req, &a);
    if (st != MOX_OK) {
        mox__req_abort(req, st);
        return st;
    }
    return mox__req_start(req, out);
}

mox_status_t mox_alltoallv(mox_comm_t c, const void *sendbuf,
                           const uint64_t *sendcounts, const uint64_t *sdispls,
                           void *recvbuf, const uint64_t *recvcounts,
                           const uint64_t *rdispls, size_t elem_bytes)
{
    mox_req_t req = NULL;
    mox_status_t st = mox_ialltoallv(c, sendbuf, sendcounts, sdispls, recvbuf,
                                     recvcounts, rdispls, elem_bytes, &req);
    return mox__wait_started(st, req);
}

/* Equal blocks: expressed as alltoallv with regular counts. The arrays are
 * read only while the call runs, so they can live on this stack frame's
 * heap copy and go away right after the start. */
mox_status_t mox_ialltoall(mox_comm_t c, const void *sendbuf, void *recvbuf,
                           uint64_t count, size_t elem_bytes, mox_req_t *out)
{
    if (!c)
        return MOX_ERR_INVALID_ARG;
    uint64_t *v = malloc(2 * (size_t)c->size * sizeof *v);
    if (!v)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "alltoall: no memory");
    uint64_t *counts = v, *displs = v + c->size;
    mox_status_t st = MOX_OK;
    for (int j = 0; j < c->size; j++) {
        counts[j] = count;
        if (count && (uint64_t)j > UINT64_MAX / count)
            st = MOX_ERR_OVERFLOW;
        displs[j] = (uint64_t)j * count;
    }
    if (st != MOX_OK)
        st = mox__fail(c, st, "alltoall: count %llu times %d ranks "
                       "overflows", (unsigned long long)count, c->size);
    else
        st = mox_ialltoallv(c, sendbuf, counts, displs, recvbuf, counts,
                            displs, elem_bytes, out);
    free(v);
    return st;
}

mox_status_t mox_alltoall(mox_comm_t c, const void *sendbuf, void *recvbuf,
                          uint64_t count, size_t elem_bytes)
{
    mox_req_t req = NULL;
    mox_status_t st = mox_ialltoall(c, sendbuf, recvbuf, count, elem_bytes,
                                    &req);
    return mox__wait_started(st, req);
}
