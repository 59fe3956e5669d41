/*
 * Reduce-scatter on rows of ranks: nodes (hier, of any sizes) or one row of
 * all ranks (flat). On equal nodes the ranks form an N x L grid whose
 * columns are rails; on unequal nodes a rank of node n handles, for every
 * other node, the blocks of the ranks whose local index is its own modulo
 * n's size (mox__rows_t in core/rsag.h), so each block still leaves a node once.
 *
 *  1. inside a row (shm for hier): every rank sends each row peer, straight
 *     from its input, the blocks of that peer's column (the peer's "rail
 *     slice": the blocks owned by (n, col) for every row n), chunk by
 *     chunk. Each rank reduces the L contributions to its rail slice in
 *     column order 0..L-1, chunk by chunk as they arrive;
 *  2. along the column (the rail, over the network for hier): a reduced
 *     chunk of the block owned by (n, col) goes to that rank as soon as it
 *     is ready, in the accumulator type (f32 for 16-bit floats, so they are
 *     rounded once); the owner reduces the N row partials in row order
 *     0..N-1 and writes its result.
 * Every byte crosses the network once and each rank sends and receives
 * (P-1)/P of the vector, like a ring, but all messages are posted at once;
 * chunks pipeline the two phases. The reduction order is fixed by the grid
 * and the chunk size, so results are bitwise reproducible.
 *
 * Sparse mode: every message is a bitmap of the blocks it carries followed
 * by those blocks; partials start at zero and absent blocks are skipped.
 * The first message every rank sends each row and column peer starts with
 * an agreement header (counts, type, op; a header alone when there is no
 * data for that peer): by transitivity along rows and columns all ranks
 * agree, or some pair reports MOX_ERR_MISMATCH naming both. A segment is
 * reduced only once the headers of all its contributors have been checked.
 */
#include "core/comm.h"
#include "core/dtype.h"
#include "core/reduce.h"
#include "core/rsag.h"
#include "core/scratch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { STEP_ROW = 2, STEP_COL = 3 };

#define HDR MOX_RSAG_HDR_BYTES

/* Sparse messages start with 64-bit bitmap words: keep every slot and
 * packed message 8-byte aligned. */
#define ALIGN8(x) (((size_t)(x) + 7) & ~(size_t)7)

typedef struct {
    mox_status_t start_error;
    mox_status_t err;              /* a failed header: reported once my
                                      first messages are out */
    char err_msg[sizeof ((mox__comm_t *)0)->last_error]; /* its message,
                                      restored then (a peer leaving
                                      meanwhile overwrites it) */
    mox__rows_t g;
    int nsb, my_b, nslot;          /* slice blocks; mine among them; header
                                      slots (L-1 + nsb-1) */
    int *sb_rank;                  /* [nsb] owner of each slice block */
    int P, me;
    mox_dtype_t dt, acc_t;
    mox_op_t op;
    size_t esz, asz;
    const char *in;
    char *out;
    uint64_t *count, *displ;       /* [P] */
    uint64_t chunk;                /* elements per segment */
    uint64_t be;                   /* sparse block elements; 0 = dense */
    uint64_t *in_mask;             /* sparse: my present blocks, global */
    uint64_t *acc_mask;            /* sparse: slice blocks present in acc */
    /* Slice: the blocks this rank reduces for its row (its own and, of
     * every other row, those it handles), in rank order by row. Slice
     * block b (rank sb_rank[b]) is at slice elements
     * [slice_off[b], slice_off[b+1]); its segments are slice segments
     * [slice_seg[b], slice_seg[b+1]). */
    uint64_t *slice_off;           /* [nsb+1] */
    uint32_t *slice_seg;           /* [nsb+1] */
    uint32_t nss;                  /* segments of the slice */
    int rot_row, rot_b;            /* row messages start with this row's
                                      blocks, slice block rot_b */
    uint32_t nsr, ncr;             /* messages from each row peer (nss, at
                                      least 1) and column peer (my block's
                                      segments, at least 1) */
    size_t *slot1;                 /* [nss+1] byte offset of a segment in a
                                      row peer's receive area, after the
                                      header that starts the area */
    size_t *slot2;                 /* [my segments + 1], column partials */
    char *acc;                     /* slice, accumulator type */
    char *rx1;                     /* (L-1) row peers' contributions */
    char *rx2;                     /* (N-1) row partials of my block */
    char *fin;                     /* my block, final accumulator (N > 1) */
    int out_direct;                /* the last accumulator (acc on one row,
                                      fin on several) is `out` itself */
    int out_apart;                 /* `out` overlaps no input, so results
                                      may be written before every input
                                      was read (not in place) */
    char *pack1, *pack2;           /* sparse send staging */
    size_t *pack2_off;             /* [nss+1] */
    uint8_t *seg_done;             /* [nss] reduced over the row */
    uint8_t *fin_done;             /* [my segments] result written */
    uint32_t *cursor;              /* [nsb] next segment to send its owner */
    mox__rsag_hdr_t hdr;
    unsigned char hdr_out[HDR];
    unsigned char hdr_abort[HDR];  /* sent after a failed header */
    uint8_t *row_hdr_ok;           /* [L-1] row peer's header checked */
    uint8_t *col_hdr_ok;           /* [N-1] column peer's header checked */
    mox__iov_t (*hiov)[2];         /* [nslot] header sends' pieces */
    void **stage;                  /* [nslot] their copies, if any */
    mox__treq_t *t;
    mox__treq_t *row_recv, *row_send, *col_send, *col_recv;
    size_t nt, n_row_send, n_col_send, n_col_recv;
    /* Ring column phase (MOX_REDUCE_SCATTER_ALGO=ring): see ring_send. */
    int ring, next, prev;          /* column neighbours below and above */
    size_t *rslot;                 /* [N] byte offset in rx2 of the block
                                      received at step s */
    uint32_t *rbase, *sbase;       /* [N] first data message of step s in
                                      col_recv / col_send (after the
                                      header, index 0); [N-1]: all of
                                      them (mox__ring_step) */
    uint32_t sent, chk;            /* data messages sent to next; received
                                      from prev and checked */
    void *mem;                     /* buffers, one allocation */
    size_t zeroed;                 /* its first bytes that start at zero */
} rs_t;

static void free_state(struct mox_req *req)
{
    rs_t *s = req->state;
    if (!s || !s->mem)
        return;
    for (int i = 0; i < s->nslot; i++)
        free(s->stage[i]);
    mox__scratch_put(req->comm, s->mem);
}

/* Messages for `nseg` segments: a header alone when there is no data. */
static uint32_t nmsg(uint32_t nseg) { return nseg ? nseg : 1; }

/* Rank (n, l); length of row n. */
static int rank_at(const rs_t *s, int n, int l) { return s->g.rank[s->g.first[n] + l]; }
static int row_len(const rs_t *s, int n) { return s->g.first[n + 1] - s->g.first[n]; }
/* 1 when rank r's block is in the slice of my row's rank l. */
static int in_slice(const rs_t *s, int l, int r)
{
    return s->g.row_of[r] == s->g.row ? s->g.lidx[r] == l
                                       : s->g.lidx[r] % s->g.L == l;
}
/* Header slot of remote slice block b. */
static int col_slot(const rs_t *s, int b) { return s->g.L - 1 + (b < s->my_b ? b : b - 1); }
/* Segment k of a rank's block. */
static uint64_t seg_len(const rs_t *s, int r, uint32_t k)
{
    uint64_t left = s->count[r] - (uint64_t)k * s->chunk;
    return left < s->chunk ? left : s->chunk;
}
static size_t bm_bytes(const rs_t *s, uint64_t len)
{
    return s->be ? 8 * (size_t)((len / s->be + 63) / 64) : 0;
}
static int bit(const uint64_t *m, uint64_t i) { return (int)(m[i / 64] >> (i % 64)) & 1; }
static void set_bit(uint64_t *m, uint64_t i) { m[i / 64] |= UINT64_C(1) << (i % 64); }
/* The row message that comes first (and carries the header). */
static uint32_t first_ss(const rs_t *s)
{
    return s->nss ? s->slice_seg[s->rot_b] % s->nss : 0;
}
/* Row-peer index of column l (skipping mine). */
static int peer_idx(const rs_t *s, int l) { return l < s->g.col ? l : l - 1; }

/* Slice block and segment of slice segment `ss`. */
static void seg_of(const rs_t *s, uint32_t ss, int *n, uint32_t *k)
{
    int b = 0;
    while (s->slice_seg[b + 1] <= ss)
        b++;
    *n = b;
    *k = ss - s->slice_seg[b];
}

/* Pack `len` elements (sparse blocks present in `mask` starting at bit
 * `bit0`) from src into dst as bitmap + blocks; returns bytes written. */
static size_t pack(const rs_t *s, const uint64_t *mask, uint64_t bit0,
                   const char *src, size_t elsz, uint64_t len, char *dst)
{
    uint64_t nsb = len / s->be;
    size_t bm = bm_bytes(s, len);
    uint64_t *words = (uint64_t *)(void *)dst;
    memset(dst, 0, bm);
    char *p = dst + bm;
    size_t blk = (size_t)s->be * elsz;
    for (uint64_t b = 0; b < nsb; b++)
        if (bit(mask, bit0 + b)) {
            words[b / 64] |= UINT64_C(1) << (b % 64);
            memcpy(p, src + b * blk, blk);
            p += blk;
        }
    return (size_t)(p - dst);
}

static uint64_t popcount_mask(const uint64_t *m, uint64_t nbits)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < nbits; i++)
        n += (uint64_t)bit(m, i);
    return n;
}

/* Check a sparse message of `len` elements: bits past the end are clear
 * and the size matches the bitmap. */
static mox_status_t check_sparse(mox__comm_t *c, const rs_t *s,
                                 const mox__treq_t *r, const char *msg,
                                 uint64_t len, size_t elsz)
{
    uint64_t nsb = len / s->be;
    size_t bm = bm_bytes(s, len);
    const uint64_t *w = (const uint64_t *)(const void *)msg;
    if (r->bytes < bm)
        return mox__fail(c, MOX_ERR_MISMATCH, "reduce_scatter_sparse: "
                         "rank %d sent %zu bytes, less than the %zu-byte "
                         "bitmap rank %d expects", r->peer, r->bytes, bm,
                         c->rank);
    if (nsb % 64 && (w[nsb / 64] >> (nsb % 64)))
        return mox__fail(c, MOX_ERR_PROTOCOL, "reduce_scatter_sparse: "
                         "rank %d sent a bitmap with bits past %llu blocks",
                         r->peer, (unsigned long long)nsb);
    uint64_t want = bm + popcount_mask(w, nsb) * s->be * elsz;
    if (r->bytes != want)
        return mox__fail(c, MOX_ERR_MISMATCH, "reduce_scatter_sparse: "
                         "rank %d sent %zu bytes, its bitmap says %llu",
                         r->peer, r->bytes, (unsigned long long)want);
    return MOX_OK;
}

/* Fold a message's present blocks into acc (sum), marking them in amask
 * from bit abit0; a block not yet in amask is set from the message (acc
 * is not cleared beforehand). Without amask, acc is zeroed and summed. */
static void fold_sparse(const rs_t *s, char *acc, uint64_t *amask,
                        uint64_t abit0, const char *msg, uint64_t len,
                        mox_dtype_t src_t, size_t elsz)
{
    uint64_t nsb = len / s->be;
    const uint64_t *w = (const uint64_t *)(const void *)msg;
    const char *p = msg + bm_bytes(s, len);
    for (uint64_t b = 0; b < nsb; b++) {
        if (!bit(w, b))
            continue;
        char *a = acc + b * s->be * s->asz;
        if (amask && !bit(amask, abit0 + b)) {
            mox__reduce_init(s->acc_t, a, src_t, p, s->be);
            set_bit(amask, abit0 + b);
        } else {
            mox__reduce_apply(MOX_OP_SUM, s->acc_t, a, src_t, p, s->be);
        }
        p += s->be * elsz;
    }
}

static mox_status_t check_size(mox__comm_t *c, const mox__treq_t *r,
                               size_t want)
{
    if (r->status == MOX_ERR_TRUNCATED || (r->status == MOX_OK &&
                                           r->bytes != want))
        return mox__fail(c, MOX_ERR_MISMATCH, "reduce_scatter: rank %d sent "
                         "%zu bytes%s where rank %d expects %zu: counts "
                         "differ", r->peer, r->bytes,
                         r->status == MOX_ERR_TRUNCATED ? " (or more)" : "",
                         c->rank, want);
    return mox__treq_check(c, r, "reduce_scatter receive");
}

/* All row contributions of slice segment ss are here: reduce them in
 * column order into acc. */
static mox_status_t reduce_row(mox__comm_t *c, rs_t *s, uint32_t ss)
{
    int n;
    uint32_t k;
    seg_of(s, ss, &n, &k);
    int r = s->sb_rank[n];
    uint64_t len = seg_len(s, r, k);
    uint64_t el0 = s->displ[r] + (uint64_t)k * s->chunk; /* global */
    uint64_t sl0 = s->slice_off[n] + (uint64_t)k * s->chunk;
    char *acc = s->acc + sl0 * s->asz;
    for (int l = 0; l < s->g.L; l++) {
        const char *src;
        if (l == s->g.col) {
            src = s->in + el0 * s->esz;
        } else {
            const mox__treq_t *q =
                &s->row_recv[(size_t)peer_idx(s, l) * s->nsr + ss];
            src = s->rx1 + (size_t)peer_idx(s, l) * s->slot1[s->nss] +
                  s->slot1[ss];
            mox_status_t st = s->be ? mox__treq_check(c, q, "reduce_scatter "
                                                      "receive")
                                    : check_size(c, q, len * s->esz);
            if (st == MOX_OK && s->be)
                st = check_sparse(c, s, q, src, len, s->esz);
            if (st != MOX_OK)
                return st;
        }
        if (s->be && l == s->g.col) {
            for (uint64_t b = 0; b < len / s->be; b++)
                if (bit(s->in_mask, el0 / s->be + b)) {
                    char *a = acc + b * s->be * s->asz;
                    const char *x = src + b * s->be * s->esz;
                    if (bit(s->acc_mask, sl0 / s->be + b)) {
                        mox__reduce_apply(MOX_OP_SUM, s->acc_t, a, s->dt, x,
                                          s->be);
                    } else {
                        mox__reduce_init(s->acc_t, a, s->dt, x, s->be);
                        set_bit(s->acc_mask, sl0 / s->be + b);
                    }
                }
        } else if (s->be) {
            fold_sparse(s, acc, s->acc_mask, sl0 / s->be, src, len, s->dt,
                        s->esz);
        } else if (l == 0) {
            mox__reduce_init(s->acc_t, acc, s->dt, src, len);
        } else {
            mox__reduce_apply(s->op, s->acc_t, acc, s->dt, src, len);
        }
    }
    return MOX_OK;
}

/* Send reduced segments of other rows' blocks down the rail, in order. */
static mox_status_t send_column(mox__comm_t *c, rs_t *s, uint64_t tag)
{
    size_t i = 0;
    for (int n = 0; n < s->nsb; n++) {
        if (n == s->my_b)
            continue;
        int r = s->sb_rank[n];
        uint32_t nseg = s->slice_seg[n + 1] - s->slice_seg[n];
        size_t base = i;
        i += nmsg(nseg);
        while (s->cursor[n] < nseg &&
               s->seg_done[s->slice_seg[n] + s->cursor[n]]) {
            uint32_t k = s->cursor[n]++;
            uint32_t ss = s->slice_seg[n] + k;
            uint64_t len = seg_len(s, r, k);
            uint64_t sl0 = s->slice_off[n] + (uint64_t)k * s->chunk;
            const char *src = s->acc + sl0 * s->asz;
            size_t bytes = len * s->asz;
            if (s->be) {
                char *dst = s->pack2 + s->pack2_off[ss];
                bytes = pack(s, s->acc_mask, sl0 / s->be, src, s->asz, len,
                             dst);
                c->stats.bytes_sparse_saved +=
                    len * s->asz > bytes ? len * s->asz - bytes : 0;
                src = dst;
            }
            int h = col_slot(s, n);
            mox_status_t st =
                k ? mox__isend(c, r, tag, src, bytes, &s->col_send[base + k])
                  : mox__rsag_isend_hdr(c, r, tag, s->hdr_out, src, bytes,
                                        s->hiov[h], &s->stage[h],
                                        &s->col_send[base]);
            if (st != MOX_OK)
                return st;
        }
    }
    return MOX_OK;
}

/*
 * Ring column phase, on N equal rows, dense only. Row r's rank of my
 * column sends to row r+1 (next) and receives from row r-1 (prev), one
 * header message and then, for steps s = 0 .. N-2, the segments of slice
 * block (r-1-s) mod N: at step 0 its node-reduced block, later the partial
 * it received at step s-1 for that block with its own contribution
 * folded in (mine op partial). The partial received at step N-2 is of
 * its own block, which it finishes. Each link carries one flow per
 * column and the same bytes as the direct phase; partials of block b
 * are reduced in the fixed order rows b+1, b+2, ..., b (mod N).
 */
static int ring_block(const rs_t *s, int d) /* block (row - d) mod N */
{
    return ((s->g.row - d) % s->g.N + s->g.N) % s->g.N;
}
static uint32_t block_nseg(const rs_t *s, int b)
{
    return s->slice_seg[b + 1] - s->slice_seg[b];
}
static char *ring_rx(const rs_t *s, uint32_t step, uint32_t k)
{
    return s->rx2 + s->rslot[step] + (size_t)k * s->chunk * s->asz;
}

/* Post every send that is ready, in the order the receiver posted its
 * receives (step, then segment). */
static mox_status_t ring_send(mox__comm_t *c, rs_t *s, uint64_t tag)
{
    int steps = s->g.N - 1;
    while (s->sent < s->sbase[steps]) {
        uint32_t x = mox__ring_step(s->sbase, steps, s->sent);
        uint32_t k = s->sent - s->sbase[x];
        int b = ring_block(s, 1 + (int)x);
        if (!s->seg_done[s->slice_seg[b] + k])
            break;
        uint64_t len = seg_len(s, s->sb_rank[b], k);
        char *a = s->acc + (s->slice_off[b] + (uint64_t)k * s->chunk) * s->asz;
        if (x > 0) {
            /* its partial came at step x-1, and was checked */
            if (s->rbase[x - 1] + k >= s->chk)
                break;
            mox__reduce_apply(s->op, s->acc_t, a, s->acc_t,
                              ring_rx(s, x - 1, k), len);
        }
        mox_status_t st = mox__isend(c, s->next, tag, a, len * s->asz,
                                     &s->col_send[1 + s->sent]);
        if (st != MOX_OK)
            return st;
        s->sent++;
    }
    return MOX_OK;
}

/* Check the size of every data message from prev as it arrives: a rank
 * that failed sends its abort header in place of its next data message,
 * and this rank then fails at once and passes the abort on, instead of
 * waiting until that message's step comes. */
static mox_status_t ring_check_recvs(mox__comm_t *c, rs_t *s)
{
    if (!s->col_hdr_ok[0])
        return MOX_OK;
    int steps = s->g.N - 1;
    while (s->chk < s->rbase[steps]) {
        const mox__treq_t *q = &s->col_recv[1 + s->chk];
        if (!q->done)
            break;
        uint32_t x = mox__ring_step(s->rbase, steps, s->chk);
        uint32_t k = s->chk - s->rbase[x];
        const char *buf = ring_rx(s, x, k);
        if (q->status == MOX_OK && mox__rsag_is_abort(buf, q->bytes, &s->hdr))
            return mox__rsag_hdr_check(c, "reduce_scatter", q->peer, buf,
                                       q->bytes, &s->hdr);
        int b = ring_block(s, 2 + (int)x);
        mox_status_t st = check_size(c, q, seg_len(s, s->sb_rank[b], k) *
                                               s->asz);
        if (st != MOX_OK)
            return st;
        s->chk++;
    }
    return MOX_OK;
}

/* Segment k of my block: its last partial is in. */
static mox_status_t ring_finish_seg(mox__comm_t *c, rs_t *s, uint32_t k)
{
    uint32_t last = (uint32_t)s->g.N - 2;
    uint64_t len = seg_len(s, s->me, k);
    uint64_t off = (uint64_t)k * s->chunk;
    const mox__treq_t *q = &s->col_recv[1 + s->rbase[last] + k];
    mox_status_t st = check_size(c, q, len * s->asz);
    if (st != MOX_OK)
        return st;
    char *f = s->fin + off * s->asz;
    const char *mine = s->acc + (s->slice_off[s->my_b] + off) * s->asz;
    memcpy(f, mine, len * s->asz);
    mox__reduce_apply(s->op, s->acc_t, f, s->acc_t, ring_rx(s, last, k), len);
    mox__reduce_finish(s->op, s->dt, s->out + off * s->esz, f, len, s->P);
    s->fin_done[k] = 1;
    return MOX_OK;
}

static mox_status_t ring_finish_ready(mox__comm_t *c, rs_t *s)
{
    uint32_t last = (uint32_t)s->g.N - 2;
    for (uint32_t k = 0; k < block_nseg(s, s->my_b); k++) {
        if (s->fin_done[k] || !s->seg_done[s->slice_seg[s->my_b] + k] ||
            s->rbase[last] + k >= s->chk)
            continue; /* not all here, or its partial not checked yet */
        mox_status_t st = ring_finish_seg(c, s, k);
        if (st != MOX_OK)
            return st;
    }
    return MOX_OK;
}

/* Segment k of my block: reduce the column partials in row order and
 * write the result (several rows). */
static mox_status_t finish_seg(mox__comm_t *c, rs_t *s, uint32_t k)
{
    uint32_t nseg = mox__rsag_nseg(s->count[s->me], s->chunk);
    uint64_t len = seg_len(s, s->me, k);
    uint64_t off = (uint64_t)k * s->chunk;
    const char *res = s->acc + (s->slice_off[s->my_b] + off) * s->asz;
    char *f = s->fin + off * s->asz;
    if (s->be)
        memset(f, 0, len * s->asz);
    for (int n = 0; n < s->g.N; n++) {
        const char *src = res;
        if (n != s->g.row) {
            int ni = n < s->g.row ? n : n - 1;
            const mox__treq_t *q = &s->col_recv[(size_t)ni * s->ncr + k];
            src = s->rx2 + (size_t)ni * s->slot2[nseg] + s->slot2[k];
            mox_status_t st = s->be ? mox__treq_check(c, q,
                                      "reduce_scatter receive")
                                    : check_size(c, q, len * s->asz);
            if (st == MOX_OK && s->be)
                st = check_sparse(c, s, q, src, len, s->asz);
            if (st != MOX_OK)
                return st;
            if (s->be) {
                fold_sparse(s, f, NULL, 0, src, len, s->acc_t, s->asz);
                continue;
            }
        }
        if (s->be && n == s->g.row) {
            uint64_t sb0 = (s->slice_off[s->my_b] + off) / s->be;
            for (uint64_t b = 0; b < len / s->be; b++)
                if (bit(s->acc_mask, sb0 + b))
                    mox__reduce_apply(MOX_OP_SUM, s->acc_t,
                                      f + b * s->be * s->asz, s->acc_t,
                                      src + b * s->be * s->asz, s->be);
        } else if (n == 0) {
            memcpy(f, src, len * s->asz);
        } else {
            mox__reduce_apply(s->op, s->acc_t, f, s->acc_t, src, len);
        }
    }
    mox__reduce_finish(s->op, s->dt, s->out + off * s->esz, f, len, s->P);
    s->fin_done[k] = 1;
    return MOX_OK;
}

/* Segments of my block whose partials are all here, as they come, so
 * that the last reduction overlaps the network instead of following it
 * (several rows). */
static mox_status_t finish_ready(mox__comm_t *c, rs_t *s)
{
    /* In place, a result written early could clobber input a peer
     * still reads: finish_block writes it all. */
    if (s->g.N == 1 || !s->out_apart)
        return MOX_OK;
    if (s->ring)
        return ring_finish_ready(c, s);
    uint32_t nseg = mox__rsag_nseg(s->count[s->me], s->chunk);
    for (uint32_t k = 0; k < nseg; k++) {
        if (s->fin_done[k] || !s->seg_done[s->slice_seg[s->my_b] + k])
            continue;
        int ready = 1;
        for (int ni = 0; ni < s->g.N - 1 && ready; ni++)
            ready = s->col_hdr_ok[ni] &&
                    s->col_recv[(size_t)ni * s->ncr + k].done;
        if (!ready)
            continue;
        mox_status_t st = finish_seg(c, s, k);
        if (st != MOX_OK)
            return st;
    }
    return MOX_OK;
}

/* Everything arrived: write what is left of the result. */
static mox_status_t finish_block(mox__comm_t *c, rs_t *s)
{
    uint64_t cnt = s->count[s->me];
    if (s->g.N > 1) {
        uint32_t nseg = mox__rsag_nseg(cnt, s->chunk);
        for (uint32_t k = 0; k < nseg; k++) {
            mox_status_t st = s->fin_done[k] ? MOX_OK
                              : s->ring    ? ring_finish_seg(c, s, k)
                                           : finish_seg(c, s, k);
            if (st != MOX_OK)
                return st;
        }
        return MOX_OK;
    }
    const char *res = s->acc + s->slice_off[s->my_b] * s->asz;
    if (s->be) {
        /* One row: blocks absent on every rank are still unset in acc. */
        for (uint64_t b = 0; b < cnt / s->be; b++)
            if (!bit(s->acc_mask, b))
                memset((char *)res + b * s->be * s->asz, 0, s->be * s->asz);
    }
    mox__reduce_finish(s->op, s->dt, s->out, res, cnt, s->P);
    return MOX_OK;
}

/* Headers that start the first message of each row peer, as they come. */
static mox_status_t check_row_headers(mox__comm_t *c, rs_t *s)
{
    for (int p = 0; p < s->g.L - 1; p++) {
        mox__treq_t *q = &s->row_recv[(size_t)p * s->nsr + first_ss(s)];
        if (s->row_hdr_ok[p] || !q->done)
            continue;
        mox_status_t st = mox__rsag_recv_hdr(
            c, "reduce_scatter", q,
            s->rx1 + (size_t)p * s->slot1[s->nss], /* area starts with it */
            &s->hdr);
        if (st != MOX_OK)
            return st;
        s->row_hdr_ok[p] = 1;
    }
    return MOX_OK;
}

/* Headers that start the first message of each column peer, as they
 * come (a mismatch shows at once, not after every chunk). */
static mox_status_t check_col_headers(mox__comm_t *c, rs_t *s)
{
    if (s->ring) {
        mox__treq_t *q = &s->col_recv[0];
        if (s->g.N == 1 || s->col_hdr_ok[0] || !q->done)
            return MOX_OK;
        mox_status_t st = mox__rsag_recv_hdr(c, "reduce_scatter", q, s->rx2,
                                             &s->hdr);
        if (st == MOX_OK)
            s->col_hdr_ok[0] = 1;
        return st;
    }
    uint32_t nseg = mox__rsag_nseg(s->count[s->me], s->chunk);
    for (int ni = 0; ni < s->g.N - 1; ni++) {
        mox__treq_t *q = &s->col_recv[(size_t)ni * s->ncr];
        if (s->col_hdr_ok[ni] || !q->done)
            continue;
        mox_status_t st = mox__rsag_recv_hdr(
            c, "reduce_scatter", q,
            s->rx2 + (size_t)ni * s->slot2[nseg] + s->slot2[0] - HDR,
            &s->hdr);
        if (st != MOX_OK)
            return st;
        s->col_hdr_ok[ni] = 1;
    }
    return MOX_OK;
}

/* Index in col_send of the first message to the owner of slice block b. */
static size_t col_first(const rs_t *s, int b)
{
    size_t base = 0;
    for (int x = 0; x < b; x++)
        if (x != s->my_b)
            base += nmsg(s->slice_seg[x + 1] - s->slice_seg[x]);
    return base;
}

/*
 * A header did not match: every owner that has not had my first message
 * yet gets my header alone, so that it names the mismatch too instead of
 * waiting for chunks that will not come, and the error is returned once
 * those first messages are out (a rank that leaves at once can break a
 * peer on another node still connecting to it).
 */
static mox_status_t fail_after_headers(mox__comm_t *c, struct mox_req *req,
                                       rs_t *s, mox_status_t err)
{
    if (s->err == MOX_OK)
        snprintf(s->err_msg, sizeof s->err_msg, "%s", c->last_error);
    if (s->err == MOX_OK && s->ring) {
        /* My header went first; the next rank gets the abort header in
         * place of the data it waits for, and names the mismatch. */
        s->err = err;
        mox__rsag_hdr_encode_abort(&s->hdr, s->hdr_abort);
        if (s->sent < s->sbase[s->g.N - 1])
            (void)mox__isend(c, s->next, mox__tag(req->seq, STEP_COL),
                             s->hdr_abort, HDR, &s->col_send[1 + s->sent]);
    }
    if (s->ring) {
        for (size_t i = 0; i < s->n_col_send; i++)
            if (s->col_send[i].posted && !s->col_send[i].done)
                return MOX_IN_PROGRESS;
        return mox__fail(c, s->err, "%s", s->err_msg);
    }
    if (s->err == MOX_OK) {
        s->err = err;
        mox__rsag_hdr_encode_abort(&s->hdr, s->hdr_abort);
        for (int b = 0; b < s->nsb; b++) {
            mox__treq_t *q = &s->col_send[col_first(s, b)];
            if (b == s->my_b || q->posted)
                continue;
            int h = col_slot(s, b);
            (void)mox__rsag_isend_hdr(c, s->sb_rank[b],
                                      mox__tag(req->seq, STEP_COL),
                                      s->hdr_abort, NULL, 0, s->hiov[h],
                                      &s->stage[h], q);
        }
    }
    for (int b = 0; b < s->nsb; b++) {
        const mox__treq_t *q = &s->col_send[col_first(s, b)];
        if (b != s->my_b && q->posted && !q->done)
            return MOX_IN_PROGRESS;
    }
    return mox__fail(c, s->err, "%s", s->err_msg);
}

static int all_done(const mox__treq_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].posted && !t[i].done)
            return 0;
    return 1;
}

static mox_status_t step(struct mox_req *req)
{
    rs_t *s = req->state;
    mox__comm_t *c = req->comm;
    mox_status_t st = s->start_error;
    if (st != MOX_OK)
        return st;
    if ((st = check_row_headers(c, s)) != MOX_OK ||
        (st = check_col_headers(c, s)) != MOX_OK)
        return st;
    int pending = 0;
    for (uint32_t ss = 0; ss < s->nss; ss++) {
        if (s->seg_done[ss])
            continue;
        int ready = 1;
        for (int p = 0; p < s->g.L - 1 && ready; p++)
            ready = s->row_hdr_ok[p] &&
                    s->row_recv[(size_t)p * s->nsr + ss].done;
        if (!ready) {
            pending = 1;
            continue;
        }
        if ((st = reduce_row(c, s, ss)) != MOX_OK)
            return st;
        s->seg_done[ss] = 1;
    }
    uint64_t col_tag = mox__tag(req->seq, STEP_COL);
    /* Ring partials are checked here, once a pass, before anything
     * (ring_send, finish_ready, finish_block) uses them. */
    if (s->ring && (st = ring_check_recvs(c, s)) != MOX_OK)
        return st;
    if ((st = s->ring ? ring_send(c, s, col_tag)
                      : send_column(c, s, col_tag)) != MOX_OK ||
        (st = finish_ready(c, s)) != MOX_OK)
        return st;
    if (pending || !all_done(s->t, s->nt))
        return MOX_IN_PROGRESS;
    st = check_row_headers(c, s); /* those that completed just now */
    if (st == MOX_OK)
        st = check_col_headers(c, s);
    if (st == MOX_OK)
        st = mox__treqs_check(c, s->row_send, s->n_row_send,
                          "reduce_scatter send");
    if (st == MOX_OK)
        st = mox__treqs_check(c, s->col_send, s->n_col_send,
                              "reduce_scatter send");
    if (st == MOX_OK)
        st = finish_block(c, s);
    return st;
}

static mox_status_t progress(struct mox_req *req)
{
    rs_t *s = req->state;
    mox_status_t st = s->err != MOX_OK ? s->err : step(req);
    if (st == MOX_ERR_MISMATCH || st == MOX_ERR_PROTOCOL)
        return fail_after_headers(req->comm, req, s, st);
    return st;
}

/* Post row receives and sends, column receives, and the header-only
 * column sends to owners of empty blocks. */
static mox_status_t post_initial(struct mox_req *req, rs_t *s)
{
    mox__comm_t *c = req->comm;
    mox_status_t st = MOX_OK;
    uint64_t tag = mox__tag(req->seq, STEP_ROW);
    for (int l = 0; l < s->g.L && st == MOX_OK; l++) {
        if (l == s->g.col)
            continue;
        int peer = rank_at(s, s->g.row, l), p = peer_idx(s, l);
        char *area = s->rx1 + (size_t)p * s->slot1[s->nss];
        for (uint32_t j = 0; j < s->nsr && st == MOX_OK; j++) {
            uint32_t ss = s->nss ? (first_ss(s) + j) % s->nss : 0;
            size_t len = ss < s->nss ? s->slot1[ss + 1] - s->slot1[ss] : 0;
            size_t hdr = j ? 0 : HDR;
            st = mox__irecv(c, peer, tag, area + s->slot1[ss] - hdr,
                            len + hdr, &s->row_recv[(size_t)p * s->nsr + ss]);
        }
    }
    /* Row sends, starting with the next column so ranks spread out; the
     * first message to each peer carries the header. */
    size_t i = 0;
    char *pk = s->pack1;
    for (int d = 1; d < s->g.L && st == MOX_OK; d++) {
        int l = (s->g.col + d) % s->g.L;
        int peer = rank_at(s, s->g.row, l), h = peer_idx(s, l);
        size_t first = i;
        for (int j = 0; j < s->P && st == MOX_OK; j++) {
            int r = s->g.rank[(s->g.first[s->rot_row] + j) % s->P];
            if (!in_slice(s, l, r))
                continue;
            uint32_t nseg = mox__rsag_nseg(s->count[r], s->chunk);
            for (uint32_t k = 0; k < nseg && st == MOX_OK; k++) {
                uint64_t len = seg_len(s, r, k);
                uint64_t el0 = s->displ[r] + (uint64_t)k * s->chunk;
                const char *src = s->in + el0 * s->esz;
                size_t bytes = len * s->esz;
                if (s->be) {
                    bytes = pack(s, s->in_mask, el0 / s->be, src, s->esz, len,
                                 pk);
                    c->stats.bytes_sparse_saved +=
                        len * s->esz > bytes ? len * s->esz - bytes : 0;
                    src = pk;
                    pk += ALIGN8(bytes);
                }
                st = i > first
                         ? mox__isend(c, peer, tag, src, bytes,
                                      &s->row_send[i])
                         : mox__rsag_isend_hdr(c, peer, tag, s->hdr_out, src,
                                               bytes, s->hiov[h],
                                               &s->stage[h], &s->row_send[i]);
                i++;
            }
        }
        if (i == first && st == MOX_OK)
            st = mox__rsag_isend_hdr(c, peer, tag, s->hdr_out, NULL, 0,
                                     s->hiov[h], &s->stage[h],
                                     &s->row_send[i++]);
    }
    if (s->ring) {
        /* The header alone to the next row, then the partials from the
         * previous row, step by step. */
        uint64_t ctag = mox__tag(req->seq, STEP_COL);
        int h = s->g.L - 1;
        if (st == MOX_OK)
            st = mox__rsag_isend_hdr(c, s->next, ctag, s->hdr_out, NULL, 0,
                                     s->hiov[h], &s->stage[h], &s->col_send[0]);
        if (st == MOX_OK)
            st = mox__irecv(c, s->prev, ctag, s->rx2, HDR, &s->col_recv[0]);
        for (int st_i = 0; st_i + 1 < s->g.N && st == MOX_OK; st_i++) {
            int b = ring_block(s, 2 + st_i);
            for (uint32_t k = 0; k < block_nseg(s, b) && st == MOX_OK; k++)
                st = mox__irecv(c, s->prev, ctag, ring_rx(s, (uint32_t)st_i, k),
                                seg_len(s, s->sb_rank[b], k) * s->asz,
                                &s->col_recv[1 + s->rbase[st_i] + k]);
        }
        return st;
    }
    /* Column partials of my block, from every other row. */
    uint32_t nseg = mox__rsag_nseg(s->count[s->me], s->chunk);
    for (int n = 0; n < s->g.N && st == MOX_OK; n++) {
        if (n == s->g.row)
            continue;
        int ni = n < s->g.row ? n : n - 1;
        char *area = s->rx2 + (size_t)ni * s->slot2[nseg];
        for (uint32_t k = 0; k < s->ncr && st == MOX_OK; k++) {
            size_t len = k < nseg ? s->slot2[k + 1] - s->slot2[k] : 0;
            size_t hdr = k ? 0 : HDR;
            st = mox__irecv(c, rank_at(s, n, s->g.col % row_len(s, n)),
                            mox__tag(req->seq, STEP_COL),
                            area + s->slot2[k] - hdr, len + hdr,
                            &s->col_recv[(size_t)ni * s->ncr + k]);
        }
    }
    /* Owners of empty blocks get their header alone, now. */
    size_t base = 0;
    for (int n = 0; n < s->nsb && st == MOX_OK; n++) {
        if (n == s->my_b)
            continue;
        uint32_t ns = s->slice_seg[n + 1] - s->slice_seg[n];
        int h = col_slot(s, n);
        if (!ns)
            st = mox__rsag_isend_hdr(c, s->sb_rank[n],
                                     mox__tag(req->seq, STEP_COL), s->hdr_out,
                                     NULL, 0, s->hiov[h], &s->stage[h],
                                     &s->col_send[base]);
        base += nmsg(ns);
    }
    return st;
}

/* Offsets of every buffer in s->mem, computed once; NULL base = sizes. */
static size_t layout(rs_t *s, char *base)
{
    int N = s->g.N, L = s->g.L;
    uint32_t my_nseg = mox__rsag_nseg(s->count[s->me], s->chunk);
    uint64_t slice = s->slice_off[s->nsb], mine = s->count[s->me];
    size_t off = 0;
#define PLACE(field, bytes)                                                    \
    do {                                                                       \
        if (base)                                                              \
            s->field = (void *)(base + off);                                   \
        off += ((size_t)(bytes) + 63) & ~(size_t)63;                           \
    } while (0)
    PLACE(t, s->nt * sizeof(mox__treq_t));
    PLACE(slot1, ((size_t)s->nss + 1) * sizeof(size_t));
    PLACE(slot2, ((size_t)my_nseg + 1) * sizeof(size_t));
    PLACE(pack2_off, ((size_t)s->nss + 1) * sizeof(size_t));
    PLACE(seg_done, s->nss);
    PLACE(fin_done, my_nseg);
    PLACE(row_hdr_ok, L - 1);
    PLACE(col_hdr_ok, N - 1);
    PLACE(rslot, s->ring ? (size_t)N * sizeof(size_t) : 0);
    PLACE(rbase, s->ring ? (size_t)N * sizeof(uint32_t) : 0);
    PLACE(sbase, s->ring ? (size_t)N * sizeof(uint32_t) : 0);
    PLACE(hiov, (size_t)s->nslot * sizeof *s->hiov);
    PLACE(stage, (size_t)s->nslot * sizeof *s->stage);
    if (s->be) {
        uint64_t total = 0;
        for (int r = 0; r < s->P; r++)
            total += s->count[r];
        PLACE(in_mask, (total / s->be + 63) / 64 * 8);
        PLACE(acc_mask, (slice / s->be + 63) / 64 * 8);
    }
    /* Everything above starts zeroed; the data buffers below are written
     * before they are read (sparse partials start from their first
     * contribution, acc_mask says which), so they are not cleared: a
     * calloc of them cost a quarter of a sparse run. */
    s->zeroed = off;
    PLACE(acc, N == 1 && s->out_direct ? 0 : slice * s->asz);
    PLACE(fin, N > 1 && !s->out_direct ? mine * s->asz : 0);
    /* Receive areas: the header first, a bitmap before every sparse
     * segment. */
    size_t row_area = HDR, col_area = HDR, pack2 = 0;
    for (int j = 0; j < s->nsb; j++) {
        int n = (s->rot_b + j) % s->nsb; /* in the order they are sent */
        int r = s->sb_rank[n];
        for (uint32_t k = 0; k < s->slice_seg[n + 1] - s->slice_seg[n]; k++) {
            uint64_t len = seg_len(s, r, k);
            if (base) {
                s->slot1[s->slice_seg[n] + k] = row_area;
                s->pack2_off[s->slice_seg[n] + k] = pack2;
            }
            row_area += ALIGN8(bm_bytes(s, len) + len * s->esz);
            if (n != s->my_b)
                pack2 += ALIGN8(bm_bytes(s, len) + len * s->asz);
        }
    }
    for (uint32_t k = 0; k < my_nseg; k++) {
        if (base)
            s->slot2[k] = col_area;
        col_area += ALIGN8(bm_bytes(s, seg_len(s, s->me, k)) +
                           seg_len(s, s->me, k) * s->asz);
    }
    if (base) {
        s->slot1[s->nss] = row_area;
        s->slot2[my_nseg] = col_area;
        s->pack2_off[s->nss] = pack2;
    }
    PLACE(rx1, (size_t)(L - 1) * row_area);
    if (s->ring) {
        /* The header, then the block received at each step. */
        col_area = 64;
        uint32_t rb = 0, sb = 0;
        for (int x = 0; x + 1 < N; x++) {
            int b = ring_block(s, 2 + x);
            if (base) {
                s->rslot[x] = col_area;
                s->rbase[x] = rb;
                s->sbase[x] = sb;
            }
            col_area += ((size_t)s->count[s->sb_rank[b]] * s->asz + 63) &
                        ~(size_t)63;
            rb += block_nseg(s, b);
            sb += block_nseg(s, ring_block(s, 1 + x));
        }
        if (base) {
            s->rbase[N - 1] = rb;
            s->sbase[N - 1] = sb;
        }
        PLACE(rx2, col_area);
    } else {
        PLACE(rx2, (size_t)(N - 1) * col_area);
    }
    if (s->be) {
        /* My sparse row sends: at most bitmap + data for every block of
         * every other column. */
        size_t p1 = 0;
        for (int l = 0; l < L; l++) {
            if (l == s->g.col)
                continue;
            for (int x = 0; x < s->P; x++) {
                int r = s->g.rank[x];
                if (!in_slice(s, l, r))
                    continue;
                for (uint32_t k = 0; k < mox__rsag_nseg(s->count[r], s->chunk);
                     k++)
                    p1 += ALIGN8(bm_bytes(s, seg_len(s, r, k)) +
                                 seg_len(s, r, k) * s->esz);
            }
        }
        PLACE(pack1, p1);
        PLACE(pack2, pack2);
    }
#undef PLACE
    return off;
}

/* Sizes that depend on counts: slice, segments, transport requests. */
static void plan(rs_t *s)
{
    int N = s->g.N, L = s->g.L;
    s->slice_off[0] = 0;
    s->slice_seg[0] = 0;
    s->nsb = 0;
    for (int x = 0; x < s->P; x++) {
        int r = s->g.rank[x], b = s->nsb;
        if (!in_slice(s, s->g.col, r))
            continue;
        if (r == s->me)
            s->my_b = b;
        s->sb_rank[b] = r;
        s->slice_off[b + 1] = s->slice_off[b] + s->count[r];
        s->slice_seg[b + 1] = s->slice_seg[b] +
                              mox__rsag_nseg(s->count[r], s->chunk);
        s->nsb++;
    }
    s->nss = s->slice_seg[s->nsb];
    /* Row messages go in slice order starting at the next row's blocks:
     * every row starts with a different destination row, so the first
     * column sends spread over all links instead of all going to row 0. */
    s->rot_row = (s->g.row + 1) % N;
    s->rot_b = 0;
    while (s->rot_b < s->nsb &&
           s->g.row_of[s->sb_rank[s->rot_b]] < s->rot_row)
        s->rot_b++;
    s->nslot = L - 1 + s->nsb - 1;
    s->n_row_send = 0;
    for (int l = 0; l < L; l++) {
        uint32_t peer_nss = 0;
        for (int x = 0; x < s->P && l != s->g.col; x++)
            if (in_slice(s, l, s->g.rank[x]))
                peer_nss += mox__rsag_nseg(s->count[s->g.rank[x]], s->chunk);
        s->n_row_send += l != s->g.col ? nmsg(peer_nss) : 0;
    }
    s->n_col_send = 0;
    for (int b = 0; b < s->nsb; b++)
        if (b != s->my_b)
            s->n_col_send += nmsg(s->slice_seg[b + 1] - s->slice_seg[b]);
    s->nsr = nmsg(s->nss);
    s->ncr = nmsg(mox__rsag_nseg(s->count[s->me], s->chunk));
    s->n_col_recv = (size_t)(N - 1) * s->ncr;
    if (s->ring) {
        /* One header each way, then the data of every step. */
        s->n_col_send = s->n_col_recv = 1;
        for (int x = 0; x + 1 < N; x++) {
            s->n_col_send += block_nseg(s, ring_block(s, 1 + x));
            s->n_col_recv += block_nseg(s, ring_block(s, 2 + x));
        }
    }
    s->nt = (size_t)(L - 1) * s->nsr + s->n_row_send + s->n_col_send +
            s->n_col_recv;
}


mox_status_t mox__reduce_scatter_hier(struct mox_req *req,
                                      const mox__rs_args_t *a)
{
    mox__comm_t *c = req->comm;
    int P = c->size;
    size_t fixed = sizeof(rs_t) + (3 * (size_t)P + 1) * sizeof(uint64_t) +
                   2 * ((size_t)P + 1) * sizeof(uint32_t) +
                   (5 * (size_t)P + 1) * sizeof(int);
    rs_t *s = calloc(1, fixed);
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "reduce_scatter: no memory");
    req->state = s;
    req->cleanup = free_state;
    s->count = (uint64_t *)(s + 1);
    s->displ = s->count + P;
    s->slice_off = s->displ + P;
    s->slice_seg = (uint32_t *)(s->slice_off + P + 1);
    s->cursor = s->slice_seg + P + 1;
    s->g.rank = (int *)(s->cursor + P + 1);
    s->g.row_of = s->g.rank + P;
    s->g.lidx = s->g.row_of + P;
    s->sb_rank = s->g.lidx + P;
    s->g.first = s->sb_rank + P;
    mox__rows_build(c, a->hier, &s->g);
    s->P = P;
    s->me = c->rank;
    s->dt = a->dtype;
    s->op = a->op;
    s->acc_t = mox__reduce_acc_type(a->dtype);
    s->esz = mox__dtype_size(a->dtype);
    s->asz = mox__dtype_size(s->acc_t);
    s->in = a->in;
    s->out = a->out;
    s->be = a->block_elems;
    uint64_t total = 0;
    for (int r = 0; r < P; r++) {
        s->count[r] = a->counts[r];
        s->displ[r] = total;
        total += a->counts[r];
    }
    s->chunk = mox__rsag_chunk(c, s->asz, s->be);
    s->ring = a->ring && a->hier && !s->be && s->g.N > 1 &&
              mox__grid_nodes_equal(c);
    if (s->ring) {
        int N = s->g.N;
        s->next = rank_at(s, (s->g.row + 1) % N, s->g.col);
        s->prev = rank_at(s, (s->g.row + N - 1) % N, s->g.col);
    }
    /* The last accumulation can go straight into `out` when it has the
     * accumulator's type and overlaps no input: no copy at the end. */
    uintptr_t o = (uintptr_t)s->out, i = (uintptr_t)s->in;
    s->out_apart = o + s->count[s->me] * s->esz <= i ||
                   o >= i + total * s->esz;
    s->out_direct = s->acc_t == s->dt && s->count[s->me] && s->out_apart;
    plan(s);
    size_t bytes = layout(s, NULL);
    s->mem = mox__scratch_get(c, bytes);
    if (!s->mem)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "reduce_scatter: no memory "
                         "for %zu bytes of buffers", bytes);
    memset(s->mem, 0, s->zeroed); /* before layout writes the offsets */
    layout(s, s->mem);
    if (s->out_direct && s->g.N == 1)
        s->acc = s->out;
    else if (s->out_direct)
        s->fin = s->out;
    for (uint64_t i = 0; s->be && i < a->nblocks; i++)
        set_bit(s->in_mask, a->blocks[i]);
    s->row_recv = s->t;
    s->row_send = s->row_recv + (size_t)(s->g.L - 1) * s->nsr;
    s->col_send = s->row_send + s->n_row_send;
    s->col_recv = s->col_send + s->n_col_send;
    mox__rsag_hdr_make(&s->hdr, s->hdr_out,
                       s->be ? MOX_RSAG_KIND_RS_SPARSE : MOX_RSAG_KIND_RS,
                       req->seq, a->dtype, a->op, s->be, s->count, P, s->me);
    req->treqs = s->t;
    req->ntreqs = s->nt;
    req->progress = progress;
    s->start_error = post_initial(req, s);
    return MOX_OK;
}
