/*
 * Broken on purpose: alltoall delivers the blocks of the last two ranks
 * swapped (a wrong index in a block-offset table). mox-conformance must
 * fail its alltoall cases against this plugin, except count 0.
 */
#include "wrap_common.h"

typedef struct {
    unsigned char *a, *b;
    size_t bytes;
} swap_t;

static void swap_blocks(void *arg)
{
    swap_t *s = arg;
    for (size_t i = 0; i < s->bytes; i++) {
        unsigned char t = s->a[i];
        s->a[i] = s->b[i];
        s->b[i] = t;
    }
}

static int broken_ialltoall(mox_v1_comm_t comm, mox_v1_cbuf_t sb,
                            mox_v1_buf_t rb, uint64_t count, size_t eb,
                            mox_v1_req_t *req)
{
    int P = real->comm_size(comm);
    int st = real->ialltoall(comm, sb, rb, count, eb, req);
    if (st == MOX_V1_OK && P >= 2 && count && rb.ptr) {
        size_t blk = (size_t)count * eb;
        swap_t s = {(unsigned char *)rb.ptr + (size_t)(P - 2) * blk,
                    (unsigned char *)rb.ptr + (size_t)(P - 1) * blk, blk};
        wrap_hook(*req, swap_blocks, &s, sizeof s);
    }
    return st;
}

__attribute__((constructor)) static void setup(void)
{
    wrap_load("broken-a2a-swap");
    if (real)
        mox_plugin_v1.ialltoall = broken_ialltoall;
}
