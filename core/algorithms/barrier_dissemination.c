/*
 * Barrier by dissemination (Hensgen, Finkel, Manber 1988): in round k every
 * rank signals rank + 2^k and waits for rank - 2^k; after ceil(log2 P)
 * rounds every rank has heard, directly or not, from every other.
 */
#include "core/comm.h"

#include <stdlib.h>

typedef struct {
    int round, rounds;
    mox_status_t start_error;
    char token, sink;
    mox__treq_t t[2];     /* send, receive of the current round */
} dissem_t;

static mox_status_t post_round(struct mox_req *req, dissem_t *s)
{
    mox__comm_t *c = req->comm;
    int dist = 1 << s->round, P = c->size;
    uint64_t tag = mox__tag(req->seq, (unsigned)s->round + 1);
    mox_status_t st = mox__irecv(c, (c->rank - dist % P + P) % P, tag,
                                 &s->sink, 0, &s->t[1]);
    if (st == MOX_OK)
        st = mox__isend(c, (c->rank + dist) % P, tag, &s->token, 0, &s->t[0]);
    return st;
}

static mox_status_t progress(struct mox_req *req)
{
    dissem_t *s = req->state;
    mox__comm_t *c = req->comm;
    while (s->start_error == MOX_OK && s->round < s->rounds) {
        if (!s->t[0].done || !s->t[1].done)
            return MOX_IN_PROGRESS;
        mox_status_t st = mox__treq_check(c, &s->t[1], "barrier receive");
        if (st == MOX_OK)
            st = mox__treq_check(c, &s->t[0], "barrier send");
        if (st != MOX_OK)
            return st;
        if (++s->round < s->rounds)
            s->start_error = post_round(req, s);
    }
    return s->start_error;
}

mox_status_t mox__barrier_dissem(struct mox_req *req)
{
    mox__comm_t *c = req->comm;
    dissem_t *s = calloc(1, sizeof *s);
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "barrier: no memory");
    req->state = s;
    req->treqs = s->t;
    req->ntreqs = 2;
    req->progress = progress;
    while ((1 << s->rounds) < c->size)
        s->rounds++;
    if (s->rounds > 0)
        s->start_error = post_round(req, s);
    return MOX_OK;
}
