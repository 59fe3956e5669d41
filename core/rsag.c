/* Helpers shared by reduce-scatter and allgather (rsag.h). */
#include "rsag.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

int mox__grid_nodes_equal(const mox__comm_t *c)
{
    int L = mox__topo_local_size(&c->topo, 0);
    for (int n = 1; n < c->topo.num_nodes; n++)
        if (mox__topo_local_size(&c->topo, n) != L)
            return 0;
    return 1;
}

void mox__grid_build(const mox__comm_t *c, int hier, mox__grid_t *g)
{
    if (hier) {
        g->N = c->topo.num_nodes;
        g->L = c->size / g->N;
        for (int n = 0; n < g->N; n++)
            for (int l = 0; l < g->L; l++)
                g->rank[n * g->L + l] = mox__topo_rank_at(&c->topo, n, l);
        g->row = c->node;
        g->col = c->local_rank;
    } else {
        g->N = 1;
        g->L = c->size;
        for (int r = 0; r < c->size; r++)
            g->rank[r] = r;
        g->row = 0;
        g->col = c->rank;
    }
}

void mox__grid_build_column(const mox__comm_t *c, mox__grid_t *g)
{
    g->N = c->size;
    g->L = 1;
    for (int r = 0; r < c->size; r++)
        g->rank[r] = r;
    g->row = c->rank;
    g->col = 0;
}

void mox__grid_build_leaders(const mox__comm_t *c, const uint64_t *counts,
                             mox__grid_t *g, uint64_t *unit)
{
    g->N = c->topo.num_nodes;
    g->L = 1;
    g->row = c->node;
    g->col = 0;
    for (int n = 0; n < g->N; n++) {
        int lead = mox__topo_rank_at(&c->topo, n, 0);
        g->rank[n] = lead;
        for (int l = 0; l < mox__topo_local_size(&c->topo, n); l++)
            unit[lead] += counts[mox__topo_rank_at(&c->topo, n, l)];
    }
}

void mox__rows_build(const mox__comm_t *c, int hier, mox__rows_t *g)
{
    g->N = hier ? c->topo.num_nodes : 1;
    g->first[0] = 0;
    for (int n = 0; n < g->N; n++) {
        int len = hier ? mox__topo_local_size(&c->topo, n) : c->size;
        g->first[n + 1] = g->first[n] + len;
        for (int l = 0; l < len; l++) {
            int r = hier ? mox__topo_rank_at(&c->topo, n, l) : l;
            g->rank[g->first[n] + l] = r;
            g->row_of[r] = n;
            g->lidx[r] = l;
        }
    }
    g->row = g->row_of[c->rank];
    g->col = g->lidx[c->rank];
    g->L = g->first[g->row + 1] - g->first[g->row];
}

int mox__vrows(int N, int *nsteps, int *vrow, int *vpos)
{
    int N2 = 1, k = 0;
    for (*nsteps = 0; N2 * 2 <= N; N2 *= 2)
        ++*nsteps;
    for (int v = 0; v < N2; v++) {
        vrow[k++] = v;
        if (v + N2 < N)
            vrow[k++] = v + N2;
    }
    for (k = 0; k < N; k++)
        vpos[vrow[k]] = k;
    return N2;
}

uint64_t mox__rsag_chunk(const mox__comm_t *c, size_t elem_bytes,
                         uint64_t align)
{
    uint64_t n = (uint64_t)c->cfg.rs_chunk_bytes / elem_bytes;
    if (align < 1)
        align = 1;
    n -= n % align;
    return n < align ? align : n;
}


uint64_t mox__rsag_hash(uint32_t kind, int dtype, int op, uint64_t block,
                        const uint64_t *counts, int P)
{
    uint64_t h = MOX_FNV64_INIT;
    int32_t v[4] = {(int32_t)kind, dtype, op, P};
    h = mox__fnv64(h, v, sizeof v);
    h = mox__fnv64(h, &block, sizeof block);
    return mox__fnv64(h, counts, (size_t)P * sizeof *counts);
}

#define HDR_MAGIC 0x53524f4du /* "MORS" */


void mox__rsag_hdr_encode(const mox__rsag_hdr_t *h, void *buf)
{
    unsigned char *p = buf;
    mox__put32(p, HDR_MAGIC);
    mox__put32(p + 4, h->kind);
    mox__put64(p + 8, h->seq);
    mox__put64(p + 16, h->hash);
    mox__put64(p + 24, h->total);
    mox__put64(p + 32, h->mine);
}

void mox__rsag_hdr_encode_abort(const mox__rsag_hdr_t *h, void *buf)
{
    mox__rsag_hdr_t a = *h;
    a.kind = MOX_RSAG_KIND_ABORT;
    mox__rsag_hdr_encode(&a, buf);
}

void mox__rsag_hdr_make(mox__rsag_hdr_t *h, void *out, uint32_t kind,
                        uint64_t seq, int dtype, int op, uint64_t block,
                        const uint64_t *counts, int P, int me)
{
    uint64_t total = 0;
    for (int r = 0; r < P; r++)
        total += counts[r];
    *h = (mox__rsag_hdr_t){kind, seq,
                           mox__rsag_hash(kind, dtype, op, block, counts, P),
                           total, counts[me]};
    mox__rsag_hdr_encode(h, out);
}

void mox__rsag_send_abort(mox__comm_t *c, int peer, uint64_t tag,
                          const void *abort, mox__treq_t *r)
{
    if (r->posted)
        return;
    char why[sizeof c->last_error];
    memcpy(why, c->last_error, sizeof why);
    (void)mox__isend(c, peer, tag, abort, MOX_RSAG_HDR_BYTES, r);
    memcpy(c->last_error, why, sizeof why);
}

mox_status_t mox__rsag_gone(mox__comm_t *c, const char *what,
                            mox_status_t st, const mox__treq_t *r,
                            const void *buf, const mox__rsag_hdr_t *mine)
{
    if (st != MOX_ERR_PEER || !r->done || r->status != MOX_OK ||
        !mox__rsag_is_abort(buf, r->bytes, mine))
        return st;
    return mox__rsag_hdr_check(c, what, r->peer, buf, r->bytes, mine);
}

int mox__rsag_is_abort(const void *buf, size_t len,
                       const mox__rsag_hdr_t *mine)
{
    const unsigned char *p = buf;
    return len == MOX_RSAG_HDR_BYTES && mox__get32(p) == HDR_MAGIC &&
           mox__get32(p + 4) == MOX_RSAG_KIND_ABORT &&
           mox__get64(p + 8) == mine->seq;
}

mox_status_t mox__rsag_hdr_check(mox__comm_t *c, const char *what, int peer,
                                 const void *buf, size_t len,
                                 const mox__rsag_hdr_t *mine)
{
    const unsigned char *p = buf;
    if (len != MOX_RSAG_HDR_BYTES || mox__get32(p) != HDR_MAGIC ||
        mox__get64(p + 8) != mine->seq)
        return mox__fail(c, MOX_ERR_PROTOCOL, "%s: malformed agreement "
                         "header from rank %d (%zu bytes)", what, peer, len);
    uint32_t kind = mox__get32(p + 4);
    if (kind == MOX_RSAG_KIND_ABORT)
        return mox__fail(c, MOX_ERR_MISMATCH, "%s: rank %d gave up at "
                         "sequence %llu: ranks disagree on counts, dtype, op "
                         "or block size (rank %d's error names them)", what,
                         peer, (unsigned long long)mine->seq, peer);
    if (kind != mine->kind)
        return mox__fail(c, MOX_ERR_MISMATCH, "%s: rank %d called another "
                         "collective (kind %u) than rank %d (kind %u) at "
                         "sequence %llu", what, peer, kind, c->rank,
                         mine->kind, (unsigned long long)mine->seq);
    if (mox__get64(p + 16) != mine->hash)
        return mox__fail(c, MOX_ERR_MISMATCH, "%s: rank %d and rank %d "
                         "disagree on counts, dtype, op or block size (rank "
                         "%d: total %llu elements, its own %llu; rank %d: "
                         "total %llu, its own %llu)", what, peer, c->rank,
                         peer, (unsigned long long)mox__get64(p + 24),
                         (unsigned long long)mox__get64(p + 32), c->rank,
                         (unsigned long long)mine->total,
                         (unsigned long long)mine->mine);
    return MOX_OK;
}

mox_status_t mox__rsag_isend_hdr(mox__comm_t *c, int peer, uint64_t tag,
                                 const void *hdr, const void *data,
                                 size_t bytes, mox__iov_t iov[2],
                                 void **stage, mox__treq_t *r)
{
    iov[0] = (mox__iov_t){hdr, MOX_RSAG_HDR_BYTES};
    iov[1] = (mox__iov_t){data, bytes};
    size_t total = MOX_RSAG_HDR_BYTES + bytes;
    mox_status_t st = mox__isendv(c, peer, tag, iov, bytes ? 2 : 1, total, r);
    if (st != MOX_ERR_UNSUPPORTED)
        return st;
    char *p = malloc(total);
    if (!p)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "no memory to stage %zu "
                         "bytes for rank %d", total, peer);
    memcpy(p, hdr, MOX_RSAG_HDR_BYTES);
    if (bytes)
        memcpy(p + MOX_RSAG_HDR_BYTES, data, bytes);
    *stage = p;
    return mox__isend(c, peer, tag, p, total, r);
}

mox_status_t mox__rsag_recv_hdr(mox__comm_t *c, const char *what,
                                mox__treq_t *r, const void *buf,
                                const mox__rsag_hdr_t *mine)
{
    if (r->status == MOX_ERR_TRUNCATED)
        return mox__fail(c, MOX_ERR_MISMATCH, "%s: rank %d and rank %d "
                         "disagree on counts, dtype, op or block size (rank "
                         "%d sent a longer message than rank %d expects)",
                         what, r->peer, c->rank, r->peer, c->rank);
    mox_status_t st = mox__treq_check(c, r, what);
    if (st != MOX_OK)
        return st;
    if (r->bytes < MOX_RSAG_HDR_BYTES)
        return mox__fail(c, MOX_ERR_PROTOCOL, "%s: malformed agreement "
                         "header from rank %d (%zu bytes)", what, r->peer,
                         r->bytes);
    st = mox__rsag_hdr_check(c, what, r->peer, buf, MOX_RSAG_HDR_BYTES, mine);
    if (st == MOX_OK)
        r->bytes -= MOX_RSAG_HDR_BYTES;
    return st;
}
