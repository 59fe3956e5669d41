/*
 * alltoallv, pairwise: every rank posts one receive from and one send to
 * every rank, all at once; the transports move them in parallel. Used
 * inside one node (shm single-copy makes it one memcpy per block) and for
 * tiny communicators.
 *
 * A zero count still sends an empty message: every receiver then learns
 * each sender's exact count, so a disagreement between sendcounts and
 * recvcounts is reported as MOX_ERR_MISMATCH instead of hanging.
 */
#include "core/comm.h"

#include <stdlib.h>

enum { STEP_DATA = 1 };

typedef struct {
    int size;
    size_t elem_bytes;
    mox_status_t start_error; /* a post failed: report it from progress */
    uint64_t *expect_bytes;   /* [size] bytes expected from each rank */
    mox__treq_t *recv;        /* [size] */
    mox__treq_t *send;        /* [size] */
} pairwise_t;

static mox_status_t check_recv(mox__comm_t *c, const pairwise_t *s, int peer)
{
    const mox__treq_t *r = &s->recv[peer];
    if (r->status == MOX_ERR_TRUNCATED || (r->status == MOX_OK &&
                                           r->bytes != s->expect_bytes[peer]))
        return mox__fail(c, MOX_ERR_MISMATCH,
                         "alltoallv: rank %d sent %zu bytes%s to rank %d, "
                         "whose recvcounts[%d] = %llu elements of %zu bytes",
                         peer, r->bytes,
                         r->status == MOX_ERR_TRUNCATED ? " (or more)" : "",
                         c->rank, peer,
                         (unsigned long long)(s->expect_bytes[peer] /
                                              s->elem_bytes),
                         s->elem_bytes);
    return mox__treq_check(c, r, "alltoallv receive");
}

static mox_status_t progress(struct mox_req *req)
{
    pairwise_t *s = req->state;
    mox__comm_t *c = req->comm;
    if (s->start_error != MOX_OK)
        return s->start_error; /* core cancels what was posted */
    for (int p = 0; p < s->size; p++)
        if (!s->recv[p].done || !s->send[p].done)
            return MOX_IN_PROGRESS;
    for (int p = 0; p < s->size; p++) {
        mox_status_t st = check_recv(c, s, p);
        if (st == MOX_OK)
            st = mox__treq_check(c, &s->send[p], "alltoallv send");
        if (st != MOX_OK)
            return st;
    }
    return MOX_OK;
}

mox_status_t mox__alltoallv_pairwise(struct mox_req *req,
                                     const mox__a2av_args_t *a)
{
    mox__comm_t *c = req->comm;
    int n = c->size;
    /* One allocation for the whole state; freed with the request. */
    size_t bytes = sizeof(pairwise_t) + (size_t)n * sizeof(uint64_t) +
                   2 * (size_t)n * sizeof(mox__treq_t);
    pairwise_t *s = calloc(1, bytes);
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "alltoallv: no memory for "
                         "%d ranks", n);
    s->size = n;
    s->elem_bytes = a->elem_bytes;
    s->recv = (mox__treq_t *)(s + 1);
    s->send = s->recv + n;
    s->expect_bytes = (uint64_t *)(s->send + n);
    req->state = s;
    req->treqs = s->recv;
    req->ntreqs = 2 * (size_t)n;
    req->progress = progress;

    uint64_t tag = mox__tag(req->seq, STEP_DATA);
    mox_status_t st = MOX_OK;
    for (int i = 0; i < n && st == MOX_OK; i++) {
        int p = (c->rank - i + n) % n;
        s->expect_bytes[p] = a->recvcounts[p] * a->elem_bytes;
        st = mox__irecv(c, p, tag, a->recvbuf + a->rdispls[p] * a->elem_bytes,
                        s->expect_bytes[p], &s->recv[p]);
    }
    /* Start with the next rank up, so ranks do not all hit rank 0 first. */
    for (int i = 0; i < n && st == MOX_OK; i++) {
        int p = (c->rank + i) % n;
        st = mox__isend(c, p, tag,
                        a->sendbuf + a->sdispls[p] * a->elem_bytes,
                        a->sendcounts[p] * a->elem_bytes, &s->send[p]);
    }
    s->start_error = st;
    return MOX_OK;
}
