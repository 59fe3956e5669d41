/*
 * Broken on purpose: alltoallv never writes the last element of the block
 * it receives from the highest-numbered rank that sends it anything (the
 * kind of off-by-one a hand-written pack loop makes). mox-conformance must
 * fail its alltoallv cases against this plugin.
 */
#include "wrap_common.h"

typedef struct {
    unsigned char *at;
    size_t bytes;
    unsigned char saved[64];
} undo_t;

static void restore(void *arg)
{
    undo_t *u = arg;
    memcpy(u->at, u->saved, u->bytes);
}

static int broken_ialltoallv(mox_v1_comm_t comm, mox_v1_cbuf_t sb,
                             const uint64_t *sc, const uint64_t *sd,
                             mox_v1_buf_t rb, const uint64_t *rc,
                             const uint64_t *rd, size_t eb, mox_v1_req_t *req)
{
    int P = real->comm_size(comm), last = -1;
    for (int j = 0; j < P && rc; j++)
        if (rc[j])
            last = j;
    undo_t u = {0};
    if (last >= 0 && eb > 0 && eb <= sizeof u.saved && rb.ptr) {
        u.at = (unsigned char *)rb.ptr + (rd[last] + rc[last] - 1) * eb;
        u.bytes = eb;
        memcpy(u.saved, u.at, eb);
    }
    int st = real->ialltoallv(comm, sb, sc, sd, rb, rc, rd, eb, req);
    if (st == MOX_V1_OK && u.at)
        wrap_hook(*req, restore, &u, sizeof u);
    return st;
}

__attribute__((constructor)) static void setup(void)
{
    wrap_load("broken-a2av-last");
    if (real)
        mox_plugin_v1.ialltoallv = broken_ialltoallv;
}
