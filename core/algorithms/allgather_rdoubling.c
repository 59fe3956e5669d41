/*
 * Allgather for small vectors: few messages, few steps (the mirror of
 * reduce_scatter_rhalving.c).
 *
 * On a grid of N rows x L columns (core/rsag.h: nodes x local ranks on
 * several nodes of equal size, else one column of all ranks):
 *  1. column (rail peers, the network for hier): recursive doubling over
 *     the N blocks of the column. With N2 the largest power of two <= N,
 *     rows n >= N2 first send their block to row n - N2 and get the whole
 *     column from it at the end; the N2 others double: at distance
 *     d = 1, 2 .. N2/2, virtual row v sends the d rows' blocks it holds to
 *     v ^ d and receives the d rows' blocks v ^ d holds;
 *  2. row (shm for hier): every rank sends its column's blocks, packed in
 *     one message, to each row peer and places the row peers' columns into
 *     the output.
 * A rank sends log2(N2) + L - 1 messages (+1 with folding) where
 * allgather_hier.c sends N - 1 + L - 1 first messages and then every
 * chunk; nothing is pipelined, so it is meant for small vectors.
 *
 * The column is laid out by virtual row (row v, then row v + N2), so the
 * blocks a rank holds are contiguous and go out as one message. Every
 * message starts with the agreement header (rsag.h) and arrives in a
 * buffer of this algorithm; its blocks are copied on or into the output
 * only once the header is checked. The ranks that talk form a connected
 * graph, so all agree or some pair fails with MOX_ERR_MISMATCH; counts
 * that differ make a message longer than its receive (MOX_ERR_TRUNCATED,
 * reported as MOX_ERR_MISMATCH) or shorter, never a write out of bounds.
 */
#include "core/comm.h"
#include "core/dtype.h"
#include "core/rsag.h"

#include <stdlib.h>
#include <string.h>

#define HDR MOX_RSAG_HDR_BYTES
enum { STEP_FOLD = 1, STEP_UNFOLD = 2, STEP_ROW = 3, STEP_DOUBLE = 8 };
enum { PH_GATHER, PH_FOLD, PH_DOUBLE, PH_ROW, PH_DONE };

typedef struct {
    mox_status_t start_error;
    mox__grid_t g;
    int P, me, N2, nsteps, step; /* step: next doubling step to finish */
    int phase;                   /* PH_* */
    size_t esz;
    const char *src;
    char *out;
    uint64_t *count, *displ;     /* [P] */
    /* Elements of each grid rank in the column phase: count, or in
     * leader mode the node's total at its leader. */
    uint64_t *unit;              /* [P] */
    int leader;                  /* leader mode: 1 leader, 2 other rank */
    mox__shm_node_t node;
    const char **ndata;          /* leader mode: [L] local ranks' blocks */
    mox_status_t err;            /* a failed header: reported once the
                                    abort headers are out */
    unsigned char hdr_abort[HDR];
    int *vrow;                   /* [N] rows in column order */
    int *vpos;                   /* [N] row -> index in vrow */
    uint64_t *voff;              /* [N+1] my column's offsets, column order */
    char *col;                   /* HDR + my column, column order */
    char *tx;                    /* HDR + my blocks, per step; then fold */
    size_t *tx_off;              /* [nsteps + 1] */
    char *rx;                    /* receives: steps, fold, row peers */
    size_t *rx_off;              /* [nsteps + 1 + L] */
    uint8_t *row_placed;         /* [L] row peer's column in the output */
    unsigned char hdr_out[HDR];
    mox__rsag_hdr_t hdr;
    mox__treq_t *t, *step_recv, *step_send, *fold_recv, *fold_send,
        *row_recv, *row_send;
    size_t nt;
    void *mem;
} rd_t;

static void free_state(struct mox_req *req)
{
    rd_t *s = req->state;
    if (!s)
        return;
    if (s->leader)
        mox__shm_node_end(req, &s->node, req->status);
    free(s->mem);
}

static int rank_at(const rd_t *s, int n, int l)
{
    return s->g.rank[n * s->g.L + l];
}

/* My rail peer in row `row`. */
static int col_peer(const rd_t *s, int row)
{
    return rank_at(s, row, s->g.col);
}

/* Leader mode: the blocks of the node in virtual row k, in local order,
 * from `packed` into the output (skipping mine, which is there already). */
static void unpack_nodes(mox__comm_t *c, rd_t *s, const char *packed)
{
    for (int k = 0; k < s->g.N; k++) {
        const char *from = packed + s->voff[k] * s->esz;
        for (int l = 0; l < c->local_size; l++) {
            int r = mox__topo_rank_at(&c->topo, s->vrow[k], l);
            size_t bytes = s->count[r] * s->esz;
            if (r != s->me && bytes)
                memcpy(s->out + s->displ[r] * s->esz, from, bytes);
            from += bytes;
        }
    }
}

/* Leader mode: my node's blocks, mine and the others' from the shm area,
 * packed in local order at `to`. */
static void pack_node(mox__comm_t *c, rd_t *s, char *to)
{
    for (int l = 0; l < c->local_size; l++) {
        int r = mox__topo_rank_at(&c->topo, c->node, l);
        size_t bytes = s->count[r] * s->esz;
        if (bytes)
            memcpy(to, l ? s->ndata[l] : s->src, bytes);
        to += bytes;
    }
}

static uint64_t column_count(const rd_t *s, int l)
{
    uint64_t n = 0;
    for (int r = 0; r < s->g.N; r++)
        n += s->count[rank_at(s, r, l)];
    return n;
}

/* Offset of virtual row v in the slice/column (v = N2: its end). */
static uint64_t vbegin(const rd_t *s, int v)
{
    return s->voff[mox__vrow_first(s->g.N, s->N2, v)];
}

/* Doubling step i: the d = 2^i virtual rows whose blocks I hold (mine)
 * and those my partner v ^ d holds (theirs), as [lo, hi) in elements. */
static void step_ranges(const rd_t *s, int i, uint64_t mine[2],
                        uint64_t theirs[2], int *partner)
{
    int d = 1 << i, lo = s->g.row & ~(d - 1), other = lo ^ d;
    mine[0] = vbegin(s, lo);
    mine[1] = vbegin(s, lo + d);
    theirs[0] = vbegin(s, other);
    theirs[1] = vbegin(s, other + d);
    *partner = s->g.row ^ d;
}

static int all_done(const mox__treq_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].posted && !t[i].done)
            return 0;
    return 1;
}

/* Check a completed message with the header in front and `want` payload
 * bytes. */
static mox_status_t check_msg(mox__comm_t *c, rd_t *s, mox__treq_t *r,
                              const void *buf, size_t want)
{
    mox_status_t st = mox__rsag_recv_hdr(c, "allgather", r, buf, &s->hdr);
    if (st == MOX_OK && r->bytes != want)
        st = mox__fail(c, MOX_ERR_MISMATCH, "allgather: rank %d sent %zu "
                       "bytes where rank %d expects %zu: counts differ",
                       r->peer, r->bytes, c->rank, want);
    return st;
}

/* Send the header and `bytes` of `data`, packed at `tx`. */
static mox_status_t send_packed(mox__comm_t *c, rd_t *s, int peer,
                                uint64_t tag, char *tx, const char *data,
                                size_t bytes, mox__treq_t *r)
{
    memcpy(tx, s->hdr_out, HDR);
    if (bytes)
        memcpy(tx + HDR, data, bytes);
    return mox__isend(c, peer, tag, tx, HDR + bytes, r);
}

static mox_status_t post_step(mox__comm_t *c, struct mox_req *req, rd_t *s,
                              int i)
{
    uint64_t mine[2], theirs[2];
    int p;
    step_ranges(s, i, mine, theirs, &p);
    mox_status_t st = send_packed(c, s, col_peer(s, p),
                                  mox__tag(req->seq, STEP_DOUBLE + i),
                                  s->tx + s->tx_off[i],
                                  s->col + HDR + mine[0] * s->esz,
                                  (mine[1] - mine[0]) * s->esz,
                                  &s->step_send[i]);
    return mox__rsag_gone(c, "allgather", st, &s->step_recv[i],
                          s->rx + s->rx_off[i], &s->hdr);
}

/* Blocks of column l, packed in column order at `from`, into the output
 * (skipping mine, which is there already). */
static void place_column(rd_t *s, int l, const char *from)
{
    for (int k = 0; k < s->g.N; k++) {
        int r = rank_at(s, s->vrow[k], l);
        size_t bytes = s->count[r] * s->esz;
        if (r != s->me && bytes)
            memcpy(s->out + s->displ[r] * s->esz, from, bytes);
        from += bytes;
    }
}

/* Row peers' columns that are here. */
static mox_status_t take_rows(mox__comm_t *c, rd_t *s, int *pending)
{
    for (int l = 0, p = 0; l < s->g.L; l++) {
        if (l == s->g.col)
            continue;
        mox__treq_t *q = &s->row_recv[p++];
        if (s->row_placed[l])
            continue;
        if (!q->done) {
            *pending = 1;
            continue;
        }
        const char *buf = s->rx + s->rx_off[s->nsteps + 1 + l];
        mox_status_t st = check_msg(c, s, q, buf,
                                    column_count(s, l) * s->esz);
        if (st != MOX_OK)
            return st;
        place_column(s, l, buf + HDR);
        s->row_placed[l] = 1;
    }
    return MOX_OK;
}

/* Column phase: fold, doubling steps, unfold, as far as messages allow. */
static mox_status_t column(mox__comm_t *c, struct mox_req *req, rd_t *s)
{
    mox_status_t st = MOX_OK;
    int v = s->g.row, extra = v >= s->N2;
    int has_extra = !extra && v + s->N2 < s->g.N;
    size_t col_bytes = s->voff[s->g.N] * s->esz;
    if (s->phase == PH_FOLD) {
        if ((extra || has_extra) && !s->fold_recv->done)
            return MOX_OK;
        const char *buf = s->rx + s->rx_off[s->nsteps];
        if (extra) { /* the whole column, into place behind its header */
            if ((st = check_msg(c, s, s->fold_recv, s->col, col_bytes)) !=
                MOX_OK)
                return st;
            memcpy(s->col, s->hdr_out, HDR); /* row sends carry mine */
            s->phase = PH_ROW;
            return MOX_OK;
        }
        if (has_extra) {
            int k = s->vpos[v + s->N2];
            size_t bytes = (s->voff[k + 1] - s->voff[k]) * s->esz;
            if ((st = check_msg(c, s, s->fold_recv, buf, bytes)) != MOX_OK)
                return st;
            memcpy(s->col + HDR + s->voff[k] * s->esz, buf + HDR, bytes);
        }
        s->phase = PH_DOUBLE;
        if (s->nsteps && (st = post_step(c, req, s, 0)) != MOX_OK)
            return st;
    }
    while (s->phase == PH_DOUBLE && s->step < s->nsteps) {
        int i = s->step, p;
        uint64_t mine[2], theirs[2];
        mox__treq_t *q = &s->step_recv[i];
        if (!q->done)
            return MOX_OK;
        step_ranges(s, i, mine, theirs, &p);
        const char *buf = s->rx + s->rx_off[i];
        size_t bytes = (theirs[1] - theirs[0]) * s->esz;
        if ((st = check_msg(c, s, q, buf, bytes)) != MOX_OK)
            return st;
        memcpy(s->col + HDR + theirs[0] * s->esz, buf + HDR, bytes);
        s->step++;
        if (s->step < s->nsteps &&
            (st = post_step(c, req, s, s->step)) != MOX_OK)
            return st;
    }
    if (s->phase == PH_DOUBLE) {
        s->phase = PH_ROW;
        if (has_extra)
            st = mox__isend(c, col_peer(s, v + s->N2),
                            mox__tag(req->seq, STEP_UNFOLD), s->col,
                            HDR + col_bytes, s->fold_send);
    }
    return st;
}

/* Leader mode, a rank other than the leader: my block to the leader, the
 * whole vector back. */
static mox_status_t member_progress(struct mox_req *req)
{
    rd_t *s = req->state;
    const char *all;
    mox_status_t st = mox__shm_node_put(req, &s->node, s->src,
                                        s->count[s->me] * s->esz);
    if (st == MOX_OK)
        st = mox__shm_node_fetch(req, &s->node, &all);
    if (st != MOX_OK)
        return st;
    unpack_nodes(req->comm, s, all);
    mox__shm_node_done(req, &s->node);
    return MOX_OK;
}

/* Leader mode: the node's blocks are in the shm area: pack them into my
 * column (or, for a folded row, into the fold message). */
static mox_status_t gather_node(mox__comm_t *c, struct mox_req *req, rd_t *s)
{
    mox_status_t st = mox__shm_node_gather(req, &s->node, s->ndata);
    if (st != MOX_OK)
        return st;
    int v = s->g.row;
    s->phase = PH_FOLD;
    if (v < s->N2) {
        pack_node(c, s, s->col + HDR + s->voff[s->vpos[v]] * s->esz);
        return MOX_OK;
    }
    char *tx = s->tx + s->tx_off[s->nsteps];
    memcpy(tx, s->hdr_out, HDR);
    pack_node(c, s, tx + HDR);
    return mox__isend(c, col_peer(s, v - s->N2),
                      mox__tag(req->seq, STEP_FOLD), tx,
                      HDR + s->unit[s->me] * s->esz, s->fold_send);
}

/* Leader mode: the whole vector to the node, then into my output. */
static mox_status_t publish_node(mox__comm_t *c, struct mox_req *req,
                                 rd_t *s)
{
    char *dst;
    size_t bytes = s->voff[s->g.N] * s->esz;
    mox_status_t st = mox__shm_node_slot(req, &s->node, bytes, &dst);
    if (st != MOX_OK)
        return st;
    if (bytes)
        memcpy(dst, s->col + HDR, bytes);
    mox__shm_node_publish(req, &s->node);
    unpack_nodes(c, s, s->col + HDR);
    s->phase = PH_DONE;
    return MOX_OK;
}

/*
 * A header did not match (leader mode: also a rank of my node): every
 * column peer I have not sent to yet gets an abort header alone, so that
 * it fails naming the mismatch instead of waiting for a message that will
 * not come; the error is returned once those messages are out.
 */
static mox_status_t fail_after_headers(mox__comm_t *c, struct mox_req *req,
                                       rd_t *s, mox_status_t err)
{
    if (s->err == MOX_OK) {
        s->err = err;
        mox__rsag_hdr_encode_abort(&s->hdr, s->hdr_abort);
        for (int i = 0; i < s->nsteps; i++) {
            uint64_t mine[2], theirs[2];
            int p;
            step_ranges(s, i, mine, theirs, &p);
            mox__rsag_send_abort(c, col_peer(s, p),
                                 mox__tag(req->seq, STEP_DOUBLE + i),
                                 s->hdr_abort, &s->step_send[i]);
        }
        int v = s->g.row, extra = v >= s->N2;
        int to = extra ? v - s->N2 : v + s->N2;
        if (extra || to < s->g.N)
            mox__rsag_send_abort(c, col_peer(s, to),
                                 mox__tag(req->seq,
                                          extra ? STEP_FOLD : STEP_UNFOLD),
                                 s->hdr_abort, s->fold_send);
    }
    if (!all_done(s->step_send, (size_t)s->nsteps) ||
        !all_done(s->fold_send, 1))
        return MOX_IN_PROGRESS;
    return s->err;
}

static mox_status_t run(struct mox_req *req)
{
    rd_t *s = req->state;
    mox__comm_t *c = req->comm;
    mox_status_t st = s->start_error;
    if (st != MOX_OK)
        return st;
    if (s->phase == PH_GATHER && (st = gather_node(c, req, s)) != MOX_OK)
        return st;
    if ((st = column(c, req, s)) != MOX_OK)
        return st;
    if (s->phase == PH_ROW && s->leader &&
        (st = publish_node(c, req, s)) != MOX_OK)
        return st;
    if (s->phase == PH_ROW) {
        /* My column is complete: into the output, and to the row. */
        place_column(s, s->g.col, s->col + HDR);
        size_t bytes = HDR + s->voff[s->g.N] * s->esz;
        for (int d = 1, p = 0; d < s->g.L && st == MOX_OK; d++) {
            int l = (s->g.col + d) % s->g.L;
            p = l < s->g.col ? l : l - 1;
            st = mox__isend(c, rank_at(s, s->g.row, l),
                            mox__tag(req->seq, STEP_ROW), s->col, bytes,
                            &s->row_send[p]);
        }
        if (st != MOX_OK)
            return st;
        s->phase = PH_DONE;
    }
    int pending = 0;
    if ((st = take_rows(c, s, &pending)) != MOX_OK)
        return st;
    if (s->phase != PH_DONE || pending || !all_done(s->t, s->nt))
        return MOX_IN_PROGRESS;
    return mox__treqs_check(c, s->t, s->nt, "allgather");
}

static mox_status_t progress(struct mox_req *req)
{
    rd_t *s = req->state;
    mox_status_t st = s->err != MOX_OK ? s->err : run(req);
    if (st == MOX_ERR_MISMATCH || st == MOX_ERR_PROTOCOL)
        return fail_after_headers(req->comm, req, s, st);
    return st;
}

/* Receives (every step, the fold, the row peers) and the fold send. */
static mox_status_t post_initial(struct mox_req *req, rd_t *s)
{
    mox__comm_t *c = req->comm;
    mox_status_t st = MOX_OK;
    for (int i = 0; i < s->nsteps && st == MOX_OK; i++) {
        uint64_t mine[2], theirs[2];
        int p;
        step_ranges(s, i, mine, theirs, &p);
        st = mox__irecv(c, col_peer(s, p), mox__tag(req->seq, STEP_DOUBLE + i),
                        s->rx + s->rx_off[i],
                        HDR + (theirs[1] - theirs[0]) * s->esz,
                        &s->step_recv[i]);
    }
    int v = s->g.row;
    size_t mine = s->count[s->me] * s->esz;
    if (st == MOX_OK && v >= s->N2) {
        st = mox__irecv(c, col_peer(s, v - s->N2),
                        mox__tag(req->seq, STEP_UNFOLD), s->col,
                        HDR + s->voff[s->g.N] * s->esz, s->fold_recv);
        if (st == MOX_OK && !s->leader) /* leader mode: once gathered */
            st = send_packed(c, s, col_peer(s, v - s->N2),
                             mox__tag(req->seq, STEP_FOLD),
                             s->tx + s->tx_off[s->nsteps], s->src, mine,
                             s->fold_send);
    } else if (st == MOX_OK && v + s->N2 < s->g.N) {
        int k = s->vpos[v + s->N2];
        st = mox__irecv(c, col_peer(s, v + s->N2),
                        mox__tag(req->seq, STEP_FOLD),
                        s->rx + s->rx_off[s->nsteps],
                        HDR + (s->voff[k + 1] - s->voff[k]) * s->esz,
                        s->fold_recv);
    }
    for (int l = 0, p = 0; l < s->g.L && st == MOX_OK; l++) {
        if (l == s->g.col)
            continue;
        st = mox__irecv(c, rank_at(s, s->g.row, l),
                        mox__tag(req->seq, STEP_ROW),
                        s->rx + s->rx_off[s->nsteps + 1 + l],
                        HDR + column_count(s, l) * s->esz, &s->row_recv[p++]);
    }
    return st;
}

/* Offsets of every buffer in s->mem; NULL base = sizes only. */
static size_t layout(rd_t *s, char *base)
{
    int N = s->g.N, L = s->g.L, v = s->g.row;
    size_t off = 0;
#define PLACE(field, bytes)                                                    \
    do {                                                                       \
        if (base)                                                              \
            s->field = (void *)(base + off);                                   \
        off += ((size_t)(bytes) + 63) & ~(size_t)63;                           \
    } while (0)
#define SLOT(bytes) (((size_t)(bytes) + 7) & ~(size_t)7)
    PLACE(t, s->nt * sizeof(mox__treq_t));
    PLACE(tx_off, (size_t)(s->nsteps + 1) * sizeof(size_t));
    PLACE(rx_off, (size_t)(s->nsteps + 1 + L) * sizeof(size_t));
    PLACE(row_placed, L);
    PLACE(col, HDR + s->voff[N] * s->esz);
    size_t tx = 0, rx = 0;
    for (int i = 0; i < s->nsteps; i++) {
        uint64_t mine[2], theirs[2];
        int p;
        step_ranges(s, i, mine, theirs, &p);
        if (base) {
            s->tx_off[i] = tx;
            s->rx_off[i] = rx;
        }
        tx += SLOT(HDR + (mine[1] - mine[0]) * s->esz);
        rx += SLOT(HDR + (theirs[1] - theirs[0]) * s->esz);
    }
    if (base) {
        s->tx_off[s->nsteps] = tx;
        s->rx_off[s->nsteps] = rx;
    }
    tx += v >= s->N2 ? SLOT(HDR + s->unit[s->me] * s->esz) : 0;
    if (v < s->N2 && v + s->N2 < N) {
        int k = s->vpos[v + s->N2];
        rx += SLOT(HDR + (s->voff[k + 1] - s->voff[k]) * s->esz);
    }
    for (int l = 0; l < L; l++) {
        if (base)
            s->rx_off[s->nsteps + 1 + l] = rx;
        if (l != s->g.col)
            rx += SLOT(HDR + column_count(s, l) * s->esz);
    }
    PLACE(tx, tx);
    PLACE(rx, rx);
#undef SLOT
#undef PLACE
    return off;
}

mox_status_t mox__allgather_rdoubling(struct mox_req *req,
                                      const mox__ag_args_t *a)
{
    mox__comm_t *c = req->comm;
    int P = c->size;
    size_t fixed = sizeof(rd_t) + (size_t)P * (3 * sizeof(int) +
                                               4 * sizeof(uint64_t) +
                                               sizeof(char *)) +
                   sizeof(uint64_t);
    rd_t *s = calloc(1, fixed);
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "allgather: no memory");
    req->state = s;
    req->cleanup = free_state;
    s->count = (uint64_t *)(s + 1);
    s->displ = s->count + P;
    s->unit = s->displ + P;
    s->voff = s->unit + P;
    s->ndata = (const char **)(void *)(s->voff + P + 1);
    s->g.rank = (int *)(s->ndata + P);
    s->vrow = s->g.rank + P;
    s->vpos = s->vrow + P;
    s->P = P;
    s->me = c->rank;
    s->esz = mox__dtype_size(a->dtype);
    s->src = a->src;
    s->out = a->out;
    memcpy(s->count, a->counts, (size_t)P * sizeof(uint64_t));
    memcpy(s->displ, a->displs, (size_t)P * sizeof(uint64_t));
    mox__rsag_hdr_make(&s->hdr, s->hdr_out, MOX_RSAG_KIND_AG, req->seq,
                       a->dtype, 0, 0, s->count, P, s->me);
    /* My block into place in the output (unless in place). */
    size_t mine = s->count[s->me] * s->esz;
    char *at = s->out + s->displ[s->me] * s->esz;
    if (mine && at != s->src)
        memcpy(at, s->src, mine);
    if (a->leader) {
        s->leader = c->local_rank == 0 ? 1 : 2;
        mox_status_t st = mox__shm_node_init(req, &s->node, "allgather",
                                             &s->hdr, s->hdr_out);
        if (st != MOX_OK)
            return st;
        mox__grid_build_leaders(c, s->count, &s->g, s->unit);
    } else {
        memcpy(s->unit, s->count, (size_t)P * sizeof *s->unit);
        if (a->hier)
            mox__grid_build(c, 1, &s->g);
        else
            mox__grid_build_column(c, &s->g);
    }
    int N = s->g.N;
    s->N2 = mox__vrows(N, &s->nsteps, s->vrow, s->vpos);
    s->voff[0] = 0;
    for (int k = 0; k < N; k++)
        s->voff[k + 1] = s->voff[k] + s->unit[col_peer(s, s->vrow[k])];
    if (s->leader == 2) { /* no messages: the shm area only */
        req->progress = member_progress;
        return MOX_OK;
    }
    if (s->g.row >= s->N2)
        s->nsteps = 0; /* folded rows only send and receive once */
    s->nt = 2 * (size_t)s->nsteps + 2 + 2 * (size_t)(s->g.L - 1);
    size_t bytes = layout(s, NULL);
    s->mem = calloc(1, bytes);
    if (!s->mem)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "allgather: no memory for "
                         "%zu bytes of buffers", bytes);
    layout(s, s->mem);
    s->step_recv = s->t;
    s->step_send = s->step_recv + s->nsteps;
    s->fold_recv = s->step_send + s->nsteps;
    s->fold_send = s->fold_recv + 1;
    s->row_recv = s->fold_send + 1;
    s->row_send = s->row_recv + (s->g.L - 1);
    memcpy(s->col, s->hdr_out, HDR);
    /* My block in the column (a folded row gets the whole column later;
     * leader mode: the node's blocks, once gathered). */
    s->phase = s->leader ? PH_GATHER : PH_FOLD;
    if (!s->leader && mine && s->g.row < s->N2)
        memcpy(s->col + HDR + s->voff[s->vpos[s->g.row]] * s->esz, s->src,
               mine);
    req->treqs = s->t;
    req->ntreqs = s->nt;
    req->progress = progress;
    s->start_error = post_initial(req, s);
    return MOX_OK;
}
