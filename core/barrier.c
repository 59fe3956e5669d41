/* mox_barrier. */
#include "comm.h"

mox_status_t mox_ibarrier(mox_comm_t c, mox_req_t *out)
{
    if (!c)
        return MOX_ERR_INVALID_ARG;
    if (!out)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "barrier: req is NULL");
    *out = NULL;
    struct mox_req *req;
    mox_status_t st = mox__req_new(c, "barrier", &req);
    if (st != MOX_OK)
        return st;
    st = mox__barrier_dissem(req);
    if (st != MOX_OK) {
        mox__req_abort(req, st);
        return st;
    }
    return mox__req_start(req, out);
}

mox_status_t mox_barrier(mox_comm_t c)
{
    mox_req_t req = NULL;
    mox_status_t st = mox_ibarrier(c, &req);
    return mox__wait_started(st, req);
}
