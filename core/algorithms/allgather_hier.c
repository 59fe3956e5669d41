/*
 * Allgather on the grid of core/rsag.h, the mirror of reduce_scatter_hier:
 *  1. along the column (rail peers, over the network for hier): every rank
 *     sends its block, chunk by chunk, to the other ranks of its column,
 *     which receive it straight into place;
 *  2. inside the row (shm for hier): every chunk of the column's blocks
 *     (its own first, the others as they arrive) is forwarded to every row
 *     peer, which receives it straight into place.
 * Each block crosses the network once per destination node; forwarding
 * starts with the first chunk, so the two phases overlap. Flat is one row:
 * every rank sends its block to every other rank directly.
 * Forwarding follows a fixed order (row 0..N-1, chunk 0..), because
 * messages between two ranks with one tag match in posting order.
 */
#include "core/comm.h"
#include "core/dtype.h"
#include "core/rsag.h"

#include <stdlib.h>
#include <string.h>

enum { STEP_HDR = 1, STEP_COL = 2, STEP_ROW = 3 };

typedef struct {
    mox_status_t start_error;
    mox__grid_t g;
    int P, me;
    size_t esz;
    const char *src;
    char *out;
    uint64_t *count, *displ;    /* [P] */
    uint64_t chunk;
    uint32_t *col_seg;          /* [N+1] my column's segments, by row */
    uint32_t fwd;               /* column segments forwarded so far */
    mox__rsag_hdr_t hdr;
    unsigned char hdr_out[MOX_RSAG_HDR_BYTES];
    unsigned char *hdr_in;
    int nhdr, hdr_checked;
    mox__treq_t *t, *hdr_send, *hdr_recv, *col_send, *col_recv, *row_send,
        *row_recv;
    size_t nt, n_row_recv;
    void *mem;
} ag_t;

static void free_state(struct mox_req *req)
{
    ag_t *s = req->state;
    if (s)
        free(s->mem);
}

static uint64_t seg_len(const ag_t *s, int r, uint32_t k)
{
    uint64_t left = s->count[r] - (uint64_t)k * s->chunk;
    return left < s->chunk ? left : s->chunk;
}

static int all_done(const mox__treq_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].posted && !t[i].done)
            return 0;
    return 1;
}

static mox_status_t check_recv(mox__comm_t *c, const mox__treq_t *r,
                               size_t want)
{
    if (r->status == MOX_ERR_TRUNCATED || (r->status == MOX_OK &&
                                           r->bytes != want))
        return mox__fail(c, MOX_ERR_MISMATCH, "allgather: rank %d sent %zu "
                         "bytes%s where rank %d expects %zu: counts differ",
                         r->peer, r->bytes,
                         r->status == MOX_ERR_TRUNCATED ? " (or more)" : "",
                         c->rank, want);
    return mox__treq_check(c, r, "allgather receive");
}

/* Column segment cs: row and chunk; whether it is here; where it is. */
static int seg_ready(mox__comm_t *c, ag_t *s, uint32_t cs, int *n,
                     uint32_t *k, const char **at, mox_status_t *st)
{
    int b = 0;
    while (s->col_seg[b + 1] <= cs)
        b++;
    *n = b;
    *k = cs - s->col_seg[b];
    int r = s->g.rank[b * s->g.L + s->g.col];
    if (b == s->g.row) {
        *at = s->src + (uint64_t)*k * s->chunk * s->esz;
        return 1;
    }
    /* Column receives are listed by row (skipping mine), then chunk. */
    uint32_t idx = cs - (b > s->g.row ? s->col_seg[s->g.row + 1] -
                                            s->col_seg[s->g.row] : 0);
    const mox__treq_t *q = &s->col_recv[idx];
    if (!q->done)
        return 0;
    *st = check_recv(c, q, seg_len(s, r, *k) * s->esz);
    *at = s->out + (s->displ[r] + (uint64_t)*k * s->chunk) * s->esz;
    return 1;
}

/* Forward every column segment that is here, in order, to the row. */
static mox_status_t forward(mox__comm_t *c, ag_t *s, uint64_t tag)
{
    uint32_t total = s->col_seg[s->g.N];
    while (s->fwd < total) {
        int n;
        uint32_t k;
        const char *at;
        mox_status_t st = MOX_OK;
        if (!seg_ready(c, s, s->fwd, &n, &k, &at, &st))
            return MOX_OK;
        if (st != MOX_OK)
            return st;
        size_t bytes = seg_len(s, s->g.rank[n * s->g.L + s->g.col], k) *
                       s->esz;
        for (int d = 1; d < s->g.L && st == MOX_OK; d++) {
            int l = (s->g.col + d) % s->g.L;
            int li = l < s->g.col ? l : l - 1;
            st = mox__isend(c, s->g.rank[s->g.row * s->g.L + l], tag, at,
                            bytes,
                            &s->row_send[(size_t)li * total + s->fwd]);
        }
        if (st != MOX_OK)
            return st;
        s->fwd++;
    }
    return MOX_OK;
}

static mox_status_t progress(struct mox_req *req)
{
    ag_t *s = req->state;
    mox__comm_t *c = req->comm;
    mox_status_t st = s->start_error;
    if (st != MOX_OK)
        return st;
    if (!s->hdr_checked && all_done(s->hdr_recv, (size_t)s->nhdr)) {
        for (int h = 0; h < s->nhdr && st == MOX_OK; h++) {
            st = mox__treq_check(c, &s->hdr_recv[h], "allgather header");
            if (st == MOX_OK)
                st = mox__rsag_hdr_check(
                    c, "allgather", s->hdr_recv[h].peer,
                    s->hdr_in + (size_t)h * MOX_RSAG_HDR_BYTES,
                    s->hdr_recv[h].bytes, &s->hdr);
        }
        if (st != MOX_OK)
            return st;
        s->hdr_checked = 1;
    }
    if ((st = forward(c, s, mox__tag(req->seq, STEP_ROW))) != MOX_OK)
        return st;
    if (!s->hdr_checked || s->fwd < s->col_seg[s->g.N] ||
        !all_done(s->t, s->nt))
        return MOX_IN_PROGRESS;
    /* Row receives: sizes; then every send. */
    size_t i = 0;
    for (int l = 0; l < s->g.L; l++) {
        if (l == s->g.col)
            continue;
        for (int n = 0; n < s->g.N; n++) {
            int r = s->g.rank[n * s->g.L + l];
            for (uint32_t k = 0; k < mox__rsag_nseg(s->count[r], s->chunk);
                 k++)
                if ((st = check_recv(c, &s->row_recv[i++],
                                     seg_len(s, r, k) * s->esz)) != MOX_OK)
                    return st;
        }
    }
    return mox__treqs_check(c, s->t, s->nt, "allgather");
}

static mox_status_t post_initial(struct mox_req *req, ag_t *s)
{
    mox__comm_t *c = req->comm;
    mox_status_t st = MOX_OK;
    int N = s->g.N, L = s->g.L, h = 0;
    for (int i = 1; i < L + N - 1 && st == MOX_OK; i++) {
        int peer = i < L ? s->g.rank[s->g.row * L + (s->g.col + i) % L]
                         : s->g.rank[((s->g.row + i - L + 1) % N) * L +
                                     s->g.col];
        st = mox__irecv(c, peer, mox__tag(req->seq, STEP_HDR),
                        s->hdr_in + (size_t)h * MOX_RSAG_HDR_BYTES,
                        MOX_RSAG_HDR_BYTES, &s->hdr_recv[h]);
        if (st == MOX_OK)
            st = mox__isend(c, peer, mox__tag(req->seq, STEP_HDR),
                            s->hdr_out, MOX_RSAG_HDR_BYTES, &s->hdr_send[h]);
        h++;
    }
    /* Column: receive the other rows' blocks of my column into place,
     * send mine to them. */
    uint64_t tag = mox__tag(req->seq, STEP_COL);
    uint32_t my_nseg = mox__rsag_nseg(s->count[s->me], s->chunk);
    size_t ir = 0, is = 0;
    for (int n = 0; n < N && st == MOX_OK; n++) {
        if (n == s->g.row)
            continue;
        int r = s->g.rank[n * L + s->g.col];
        for (uint32_t k = 0; k < mox__rsag_nseg(s->count[r], s->chunk) &&
                             st == MOX_OK; k++)
            st = mox__irecv(c, r, tag,
                            s->out + (s->displ[r] + (uint64_t)k * s->chunk) *
                                         s->esz,
                            seg_len(s, r, k) * s->esz, &s->col_recv[ir++]);
    }
    for (int d = 1; d < N && st == MOX_OK; d++) {
        int r = s->g.rank[((s->g.row + d) % N) * L + s->g.col];
        for (uint32_t k = 0; k < my_nseg && st == MOX_OK; k++)
            st = mox__isend(c, r, tag,
                            s->src + (uint64_t)k * s->chunk * s->esz,
                            seg_len(s, s->me, k) * s->esz, &s->col_send[is++]);
    }
    /* Row: from each row peer, its column's blocks in forwarding order. */
    tag = mox__tag(req->seq, STEP_ROW);
    ir = 0;
    for (int l = 0; l < L && st == MOX_OK; l++) {
        if (l == s->g.col)
            continue;
        int peer = s->g.rank[s->g.row * L + l];
        for (int n = 0; n < N && st == MOX_OK; n++) {
            int r = s->g.rank[n * L + l];
            for (uint32_t k = 0; k < mox__rsag_nseg(s->count[r], s->chunk) &&
                                 st == MOX_OK; k++)
                st = mox__irecv(c, peer, tag,
                                s->out + (s->displ[r] +
                                          (uint64_t)k * s->chunk) * s->esz,
                                seg_len(s, r, k) * s->esz,
                                &s->row_recv[ir++]);
        }
    }
    return st;
}

mox_status_t mox__allgather_hier(struct mox_req *req,
                                 const mox__ag_args_t *a)
{
    mox__comm_t *c = req->comm;
    int P = c->size;
    ag_t *s = calloc(1, sizeof *s + (size_t)P * (sizeof(int) +
                                                 2 * sizeof(uint64_t)) +
                            ((size_t)P + 1) * sizeof(uint32_t));
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "allgather: no memory");
    req->state = s;
    req->cleanup = free_state;
    s->count = (uint64_t *)(s + 1);
    s->displ = s->count + P;
    s->g.rank = (int *)(s->displ + P);
    s->col_seg = (uint32_t *)(s->g.rank + P);
    mox__grid_build(c, a->hier, &s->g);
    s->P = P;
    s->me = c->rank;
    s->esz = mox__dtype_size(a->dtype);
    s->src = a->src;
    s->out = a->out;
    memcpy(s->count, a->counts, (size_t)P * sizeof(uint64_t));
    memcpy(s->displ, a->displs, (size_t)P * sizeof(uint64_t));
    s->chunk = mox__rsag_chunk(c, s->esz, 1);
    int N = s->g.N, L = s->g.L;
    s->col_seg[0] = 0;
    for (int n = 0; n < N; n++)
        s->col_seg[n + 1] = s->col_seg[n] +
            mox__rsag_nseg(s->count[s->g.rank[n * L + s->g.col]], s->chunk);
    uint32_t ncol = s->col_seg[N];
    uint32_t my_nseg = mox__rsag_nseg(s->count[s->me], s->chunk);
    s->n_row_recv = 0;
    for (int l = 0; l < L; l++)
        for (int n = 0; n < N && l != s->g.col; n++)
            s->n_row_recv += mox__rsag_nseg(s->count[s->g.rank[n * L + l]],
                                            s->chunk);
    s->nhdr = L - 1 + N - 1;
    size_t ncol_recv = ncol - my_nseg, ncol_send = (size_t)(N - 1) * my_nseg,
           nrow_send = (size_t)(L - 1) * ncol;
    s->nt = 2 * (size_t)s->nhdr + ncol_recv + ncol_send + nrow_send +
            s->n_row_recv;
    s->mem = calloc(1, s->nt * sizeof(mox__treq_t) +
                           (size_t)s->nhdr * MOX_RSAG_HDR_BYTES + 1);
    if (!s->mem)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "allgather: no memory for "
                         "%zu requests", s->nt);
    s->t = s->mem;
    s->hdr_send = s->t;
    s->hdr_recv = s->hdr_send + s->nhdr;
    s->col_recv = s->hdr_recv + s->nhdr;
    s->col_send = s->col_recv + ncol_recv;
    s->row_send = s->col_send + ncol_send;
    s->row_recv = s->row_send + nrow_send;
    s->hdr_in = (unsigned char *)(s->t + s->nt);
    uint64_t total = 0;
    for (int r = 0; r < P; r++)
        total += s->count[r];
    s->hdr = (mox__rsag_hdr_t){
        MOX_RSAG_KIND_AG, req->seq,
        mox__rsag_hash(MOX_RSAG_KIND_AG, a->dtype, 0, 0, s->count, P), total,
        s->count[s->me]};
    mox__rsag_hdr_encode(&s->hdr, s->hdr_out);
    /* My own block into place (not in place: src is elsewhere). */
    char *mine = s->out + s->displ[s->me] * s->esz;
    if (mine != s->src && s->count[s->me])
        memcpy(mine, s->src, s->count[s->me] * s->esz);
    req->treqs = s->t;
    req->ntreqs = s->nt;
    req->progress = progress;
    s->start_error = post_initial(req, s);
    return MOX_OK;
}
