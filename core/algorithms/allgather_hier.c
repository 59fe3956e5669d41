/*
 * Allgather on rows of ranks: nodes (hier, of any sizes) or one row of all
 * ranks (flat); the mirror of reduce_scatter_hier.c. On row n, the block
 * of a rank r of another row arrives at its "handler" (n, lidx[r] % length
 * of n): r's rail peer when rows are equal, a fixed rank otherwise. A
 * rank's "slice" is its own block and the blocks it handles, in rank order
 * by row (on equal rows: its column, in row order).
 *  1. across rows (over the network for hier): every rank sends its block,
 *     chunk by chunk, to its handler on every other row, which receives it
 *     straight into place;
 *  2. inside the row (shm for hier): every chunk of the slice (its own
 *     first, the others as they arrive) is forwarded to every row peer,
 *     which receives it straight into place.
 * Each block crosses the network once per destination node, whatever the
 * node sizes; forwarding starts with the first chunk, so the two phases
 * overlap. Flat is one row: every rank sends its block to every other rank
 * directly. Forwarding follows a fixed order (slice block, then chunk),
 * because messages between two ranks with one tag match in posting order.
 *
 * The first message every rank sends each handler and row peer starts with
 * the agreement header (rsag.h). Data lands in the caller's output, where
 * there is no room for a header in front, so when the first chunk of a
 * peer's stream is at most INLINE_MAX bytes it travels behind the header
 * into a staging slot and is copied into place once the header is checked;
 * a larger first chunk is preceded by the header alone (a header alone too
 * when the stream is empty). Sender and receiver decide from their own
 * counts: when counts differ, the first message is longer than the receive
 * (MOX_ERR_TRUNCATED) or its header differs, both MOX_ERR_MISMATCH. A
 * peer's chunks are forwarded only once its header is checked.
 */
#include "core/comm.h"
#include "core/dtype.h"
#include "core/rsag.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { STEP_COL = 2, STEP_ROW = 3 };

#define HDR MOX_RSAG_HDR_BYTES
/* A first chunk up to this size rides behind the header (one copy of at
 * most this much); beyond, the header goes alone (one small message). */
#define INLINE_MAX (64 * 1024)

enum { HDR_WAIT, HDR_OK, HDR_BAD };


/* The messages one rank sends another in one phase. */
typedef struct {
    uint32_t nseg;   /* data chunks */
    uint32_t alone;  /* 1: message 0 is the header alone, message k + 1
                        carries chunk k; 0: message k carries chunk k and
                        message 0 starts with the header */
    size_t first;    /* alone == 0: bytes of chunk 0 (0 when no chunks) */
} stream_t;

typedef struct {
    mox_status_t start_error;
    mox__rows_t g;
    int P, me;
    int nsb, my_b;              /* slice blocks; mine among them */
    int *sb_rank;               /* [nsb] whose block slice block b is */
    uint32_t *slice_seg;        /* [nsb+1] slice chunks, by slice block */
    size_t esz;
    const char *src;
    char *out;
    uint64_t *count, *displ;    /* [P] */
    uint64_t chunk;
    uint32_t fwd;               /* slice chunks forwarded so far */
    stream_t col_out, row_out;  /* what I send handlers and row peers */
    /* Column peers are indexed by slice block (the ranks whose blocks I
     * handle; my own index unused), row peers by index in the row. */
    stream_t *col_in, *row_in;  /* [nsb], [L] what each peer sends me */
    size_t *col_base, *row_base; /* [nsb], [L] a peer's first receive */
    size_t *col_slot, *row_slot; /* [nsb], [L] its staging slot in `stage` */
    uint8_t *col_ok, *row_ok;   /* [nsb], [L] its header: HDR_* */
    int *row_first;             /* [L] first nonempty block of a row peer's
                                   slice, or -1 */
    mox_status_t err;           /* a first message failed */
    char err_msg[sizeof ((mox__comm_t *)0)->last_error]; /* its message,
                                   restored when err is returned (a peer
                                   leaving meanwhile overwrites it) */
    char *stage;                /* first messages received */
    char *tx_col, *tx_row;      /* first messages sent: HDR + first */
    mox__rsag_hdr_t hdr;
    unsigned char hdr_out[HDR];
    mox__treq_t *t, *col_send, *col_recv, *row_send, *row_recv;
    size_t nt, n_col_recv, n_col_send, n_row_send, n_row_recv;
    /* Ring across rows (see ring_send): header from prev, its state. */
    int ring, next, prev;
    uint8_t ring_ok;
    int abort_sent;
    size_t ring_slot;           /* prev's header in `stage` */
    uint32_t *rbase, *sbase;    /* [N] first data message of step s in
                                   col_recv / col_send (after index 0);
                                   [N-1]: all of them (mox__ring_step) */
    uint32_t sent, chk;         /* data messages sent to next; received
                                   from prev and checked */
    unsigned char hdr_abort[HDR];
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

/* Rank (n, l); length of row n. */
static int rank_at(const ag_t *s, int n, int l)
{
    return s->g.rank[s->g.first[n] + l];
}

static int row_len(const ag_t *s, int n)
{
    return s->g.first[n + 1] - s->g.first[n];
}

/*
 * The blocks of the stream `peer` sends me, in rank order by row: a rank
 * of another row sends its own block; a rank (row, l) of mine (me too:
 * what I send) its slice, that is its own block and, on every other row
 * n, the blocks of local indices l, l + L, l + 2L, ... below n's length.
 * Start with *n = 0, *j = -1; returns the next rank, -1 at the end.
 */
static int next_block(const ag_t *s, int peer, int *n, int *j)
{
    if (s->g.row_of[peer] != s->g.row) {
        if (*j >= 0)
            return -1;
        *j = s->g.lidx[peer];
        return peer;
    }
    for (; *n < s->g.N; (*n)++, *j = -1) {
        int next = *j < 0 ? s->g.lidx[peer] : *j + s->g.L;
        if (next < row_len(s, *n)) { /* on my row: l only */
            *j = next;
            return rank_at(s, *n, next);
        }
    }
    return -1;
}

static stream_t stream_of(uint32_t nseg, size_t first_bytes)
{
    stream_t x = {nseg, first_bytes > INLINE_MAX, 0};
    x.first = x.alone ? 0 : first_bytes;
    return x;
}

static uint32_t msgs(stream_t x)
{
    return x.nseg + x.alone ? x.nseg + x.alone : 1; /* a header at least */
}

/* The stream `peer` sends me (or I send, peer = me: my slice), and the
 * first rank of it with a nonempty block (-1 when none). */
static stream_t stream_from(const ag_t *s, int peer, int *first)
{
    uint32_t nseg = 0;
    *first = -1;
    int n = 0, j = -1;
    for (int r; (r = next_block(s, peer, &n, &j)) >= 0;) {
        nseg += mox__rsag_nseg(s->count[r], s->chunk);
        if (*first < 0 && s->count[r])
            *first = r;
    }
    return stream_of(nseg, *first < 0 ? 0 : seg_len(s, *first, 0) * s->esz);
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

/* A peer's first message is here: check its header, then put the chunk
 * behind it (if any) in place at `dst`. */
static mox_status_t take_first(mox__comm_t *c, ag_t *s, mox__treq_t *q,
                               const char *slot, stream_t x, char *dst)
{
    mox_status_t st = mox__rsag_recv_hdr(c, "allgather", q, slot, &s->hdr);
    if (st != MOX_OK)
        return st;
    if (q->bytes != x.first)
        return check_recv(c, q, x.first);
    if (x.first)
        memcpy(dst, slot + HDR, x.first);
    return MOX_OK;
}

/*
 * Ring across rows (MOX_ALLGATHER_ALGO=ring; equal rows): the mirror of
 * the reduce-scatter ring. Rank (r, col) sends only to (r+1, col) (next)
 * and receives only from (r-1, col) (prev): a header message, then for
 * steps s = 0 .. N-2 the chunks of slice block (r-s) mod N, its own at
 * step 0 and later the block it received at step s-1, each chunk as soon
 * as it is here. Received chunks land in place and are forwarded to the
 * row as in the direct algorithm. A rank that gives up sends an abort
 * header in place of its next data message.
 */
static int ring_block(const ag_t *s, int d) /* slice block (row - d) mod N */
{
    return ((s->g.row - d) % s->g.N + s->g.N) % s->g.N;
}
static uint32_t block_nseg(const ag_t *s, int b)
{
    return s->slice_seg[b + 1] - s->slice_seg[b];
}
static char *block_at(const ag_t *s, int b, uint32_t k)
{
    return s->out + (s->displ[s->sb_rank[b]] + (uint64_t)k * s->chunk) * s->esz;
}
/* Receive (step, k) is here and checked. */
static int ring_have(const ag_t *s, uint32_t step, uint32_t k)
{
    return s->rbase[step] + k < s->chk;
}

/* Check every data message from prev as it arrives: its size, and
 * whether it is an abort header. */
static mox_status_t ring_check_recvs(mox__comm_t *c, ag_t *s)
{
    if (s->ring_ok != HDR_OK)
        return MOX_OK;
    int steps = s->g.N - 1;
    while (s->chk < s->rbase[steps]) {
        const mox__treq_t *q = &s->col_recv[1 + s->chk];
        if (!q->done)
            break;
        uint32_t x = mox__ring_step(s->rbase, steps, s->chk);
        uint32_t k = s->chk - s->rbase[x];
        int b = ring_block(s, 1 + (int)x);
        const char *at = block_at(s, b, k);
        if (q->status == MOX_OK && mox__rsag_is_abort(at, q->bytes, &s->hdr))
            return mox__rsag_hdr_check(c, "allgather", q->peer, at, q->bytes,
                                       &s->hdr);
        mox_status_t st = check_recv(c, q, seg_len(s, s->sb_rank[b], k) *
                                               s->esz);
        if (st != MOX_OK)
            return st;
        s->chk++;
    }
    return MOX_OK;
}

/* Pass on every chunk received from prev that is here, in order. */
static mox_status_t ring_send(mox__comm_t *c, ag_t *s, uint64_t tag)
{
    int steps = s->g.N - 1;
    while (s->sent < s->sbase[steps]) {
        /* step 0 (my own block) went out at the start: x >= 1 here */
        uint32_t x = mox__ring_step(s->sbase, steps, s->sent);
        uint32_t k = s->sent - s->sbase[x];
        int b = ring_block(s, (int)x);
        if (!ring_have(s, x - 1, k)) /* block b came in at step x-1 */
            break;
        mox_status_t st = mox__isend(c, s->next, tag, block_at(s, b, k),
                                     seg_len(s, s->sb_rank[b], k) * s->esz,
                                     &s->col_send[1 + s->sent]);
        if (st != MOX_OK)
            return st;
        s->sent++;
    }
    return MOX_OK;
}

/* After a disagreement (not a failed peer: the abort says the ranks
 * disagree): the abort header in place of my next data message, so that
 * next fails too instead of waiting for it. */
static void ring_abort(mox__comm_t *c, ag_t *s, uint64_t tag)
{
    if (s->abort_sent)
        return;
    s->abort_sent = 1;
    if (s->sent >= s->sbase[s->g.N - 1])
        return;
    mox__rsag_hdr_encode_abort(&s->hdr, s->hdr_abort);
    (void)mox__isend(c, s->next, tag, s->hdr_abort, HDR,
                     &s->col_send[1 + s->sent]);
}

/* Keep the first failure and its message. */
static void set_err(mox__comm_t *c, ag_t *s, mox_status_t st)
{
    if (s->err == MOX_OK || (st == MOX_ERR_MISMATCH && s->err != st)) {
        s->err = st;
        snprintf(s->err_msg, sizeof s->err_msg, "%s", c->last_error);
    }
}

/* One peer's first message, if here and not yet looked at: HDR_OK or
 * HDR_BAD (the error recorded in s->err). */
static void check_first(mox__comm_t *c, ag_t *s, mox__treq_t *q,
                        const char *slot, stream_t x, char *dst,
                        uint8_t *state)
{
    if (*state != HDR_WAIT || !q->done || s->err == MOX_ERR_MISMATCH)
        return;
    mox_status_t st = take_first(c, s, q, slot, x, dst);
    *state = st == MOX_OK ? HDR_OK : HDR_BAD;
    if (st != MOX_OK)
        set_err(c, s, st);
}

/*
 * Headers of column and row peers, as their first messages come. A
 * failure is returned once the first messages every peer sends at the
 * start (column peers; row peers too when the row is every rank) are
 * here and my first message to each handler is done, as when headers were
 * messages of their own: a rank that fails at once would leave peers on
 * other nodes in the middle of connecting to it. On nodes of different
 * sizes a handler need not send anything to the ranks whose blocks it
 * receives, so a message from it cannot tell that it has answered my
 * connection; my first send to it being done does (leaving before that
 * made UCX 1.13 abort on the handler's side at teardown, about 1 run in
 * 50 of a mismatch on 1 + 4 + 3). A mismatch is kept over another error,
 * since it names the pair.
 */
static mox_status_t check_headers(mox__comm_t *c, ag_t *s)
{
    int waiting = 0;
    if (s->ring) {
        mox__treq_t *q = &s->col_recv[0];
        check_first(c, s, q, s->stage + s->ring_slot, stream_of(0, 0), NULL,
                    &s->ring_ok);
        waiting |= !s->col_send[0].done || !q->done ||
                   (s->abort_sent && !all_done(s->col_send, s->n_col_send));
    }
    for (int d = 0; d < s->g.N - 1 && !s->ring; d++)
        waiting |= !s->col_send[(size_t)d * msgs(s->col_out)].done;
    for (int b = 0; b < s->nsb && !s->ring; b++) {
        if (b == s->my_b)
            continue;
        mox__treq_t *q = &s->col_recv[s->col_base[b]];
        check_first(c, s, q, s->stage + s->col_slot[b], s->col_in[b],
                    s->out + s->displ[s->sb_rank[b]] * s->esz, &s->col_ok[b]);
        waiting |= !q->done;
    }
    for (int l = 0; l < s->g.L; l++) {
        if (l == s->g.col)
            continue;
        mox__treq_t *q = &s->row_recv[s->row_base[l]];
        int r = s->row_first[l];
        check_first(c, s, q, s->stage + s->row_slot[l], s->row_in[l],
                    r < 0 ? NULL : s->out + s->displ[r] * s->esz,
                    &s->row_ok[l]);
        waiting |= s->g.N == 1 && !q->done;
    }
    if (waiting || s->err == MOX_OK)
        return MOX_OK;
    return mox__fail(c, s->err, "%s", s->err_msg);
}

/* Slice chunk cs: slice block and chunk; whether it is here; where. */
static int seg_ready(mox__comm_t *c, ag_t *s, uint32_t cs, int *b,
                     uint32_t *k, const char **at, mox_status_t *st)
{
    int i = 0;
    while (s->slice_seg[i + 1] <= cs)
        i++;
    *b = i;
    *k = cs - s->slice_seg[i];
    int r = s->sb_rank[i];
    if (i == s->my_b) {
        *at = s->src + (uint64_t)*k * s->chunk * s->esz;
        return 1;
    }
    if (s->ring) {
        /* block i comes in at step (row - 1 - i) mod N, checked there */
        uint32_t step = (uint32_t)((s->g.row - 1 - i + 2 * s->g.N) % s->g.N);
        *at = s->out + (s->displ[r] + (uint64_t)*k * s->chunk) * s->esz;
        return ring_have(s, step, *k);
    }
    if (s->col_ok[i] != HDR_OK)
        return 0;
    uint32_t m = *k + s->col_in[i].alone;
    const mox__treq_t *q = &s->col_recv[s->col_base[i] + m];
    if (m && !q->done)
        return 0;
    if (m) /* message 0 was checked with the header */
        *st = check_recv(c, q, seg_len(s, r, *k) * s->esz);
    *at = s->out + (s->displ[r] + (uint64_t)*k * s->chunk) * s->esz;
    return 1;
}

/* Forward every slice chunk that is here, in order, to the row. */
static mox_status_t forward(mox__comm_t *c, ag_t *s, uint64_t tag)
{
    uint32_t total = s->slice_seg[s->nsb], per_peer = msgs(s->row_out);
    while (s->fwd < total) {
        int b;
        uint32_t k;
        const char *at;
        mox_status_t st = MOX_OK;
        if (!seg_ready(c, s, s->fwd, &b, &k, &at, &st))
            return MOX_OK;
        if (st != MOX_OK)
            return st;
        size_t bytes = seg_len(s, s->sb_rank[b], k) * s->esz;
        uint32_t m = s->fwd + s->row_out.alone;
        if (m == 0) { /* chunk 0 behind the header */
            memcpy(s->tx_row + HDR, at, bytes);
            at = s->tx_row;
            bytes += HDR;
        }
        for (int d = 1; d < s->g.L && st == MOX_OK; d++) {
            int l = (s->g.col + d) % s->g.L;
            int li = l < s->g.col ? l : l - 1;
            st = mox__isend(c, rank_at(s, s->g.row, l), tag, at, bytes,
                            &s->row_send[(size_t)li * per_peer + m]);
        }
        if (st != MOX_OK)
            return st;
        s->fwd++;
    }
    return MOX_OK;
}

/* Every row message is here and its header checked: check the sizes of
 * the chunks that came without one. */
static mox_status_t check_row(mox__comm_t *c, ag_t *s)
{
    for (int l = 0; l < s->g.L; l++) {
        if (l == s->g.col)
            continue;
        int peer = rank_at(s, s->g.row, l);
        uint32_t cs = 0, alone = s->row_in[l].alone;
        int n = 0, j = -1;
        for (int r; (r = next_block(s, peer, &n, &j)) >= 0;) {
            for (uint32_t k = 0; k < mox__rsag_nseg(s->count[r], s->chunk);
                 k++, cs++) {
                if (cs + alone == 0)
                    continue;
                mox_status_t st = check_recv(
                    c, &s->row_recv[s->row_base[l] + cs + alone],
                    seg_len(s, r, k) * s->esz);
                if (st != MOX_OK)
                    return st;
            }
        }
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
    if (s->ring && s->err == MOX_OK) {
        st = ring_check_recvs(c, s);
        if (st != MOX_OK && st != MOX_ERR_MISMATCH && st != MOX_ERR_PROTOCOL)
            return st;
        if (st != MOX_OK)
            set_err(c, s, st);
    }
    st = check_headers(c, s);
    if (s->ring && (s->err == MOX_ERR_MISMATCH || s->err == MOX_ERR_PROTOCOL) &&
        !s->abort_sent) {
        /* check_headers waits for it to go out before it reports */
        ring_abort(c, s, mox__tag(req->seq, STEP_COL));
        return MOX_IN_PROGRESS;
    }
    if (st != MOX_OK)
        return st;
    if (s->err != MOX_OK)
        return MOX_IN_PROGRESS; /* reported by check_headers when due */
    if (s->ring && (st = ring_send(c, s, mox__tag(req->seq, STEP_COL))) !=
                       MOX_OK)
        return st;
    if ((st = forward(c, s, mox__tag(req->seq, STEP_ROW))) != MOX_OK)
        return st;
    if (s->fwd < s->slice_seg[s->nsb] || !all_done(s->t, s->nt))
        return MOX_IN_PROGRESS;
    if ((st = check_headers(c, s)) != MOX_OK) /* those done just now */
        return st;
    if ((st = check_row(c, s)) != MOX_OK)
        return st;
    return mox__treqs_check(c, s->t, s->nt, "allgather");
}

/* Receives of one peer's stream (the blocks it carries, in rank order by
 * row): message 0 into its staging slot, the other chunks in place. */
static mox_status_t post_stream_recv(mox__comm_t *c, ag_t *s, int peer,
                                     uint64_t tag, stream_t x, char *slot,
                                     mox__treq_t *q)
{
    mox_status_t st = mox__irecv(c, peer, tag, slot, HDR + x.first, q++);
    int skip = !x.alone; /* chunk 0 comes with the header */
    int n = 0, j = -1;
    for (int r; st == MOX_OK && (r = next_block(s, peer, &n, &j)) >= 0;) {
        for (uint32_t k = 0; k < mox__rsag_nseg(s->count[r], s->chunk) &&
                             st == MOX_OK; k++) {
            if (skip) {
                skip = 0;
                continue;
            }
            st = mox__irecv(c, peer, tag,
                            s->out + (s->displ[r] + (uint64_t)k * s->chunk) *
                                         s->esz,
                            seg_len(s, r, k) * s->esz, q++);
        }
    }
    return st;
}

static mox_status_t post_initial(struct mox_req *req, ag_t *s)
{
    mox__comm_t *c = req->comm;
    mox_status_t st = MOX_OK;
    int N = s->g.N, L = s->g.L;
    /* Across rows: receive the blocks I handle, send mine to my handler
     * on every other row (ring: to next, from prev, step by step). */
    uint64_t tag = mox__tag(req->seq, STEP_COL);
    if (s->ring) {
        st = mox__irecv(c, s->prev, tag, s->stage + s->ring_slot, HDR,
                        &s->col_recv[0]);
        for (int x = 0; x + 1 < N && st == MOX_OK; x++) {
            int b = ring_block(s, 1 + x);
            for (uint32_t k = 0; k < block_nseg(s, b) && st == MOX_OK; k++)
                st = mox__irecv(c, s->prev, tag, block_at(s, b, k),
                                seg_len(s, s->sb_rank[b], k) * s->esz,
                                &s->col_recv[1 + s->rbase[x] + k]);
        }
        if (st == MOX_OK)
            st = mox__isend(c, s->next, tag, s->hdr_out, HDR, &s->col_send[0]);
        for (uint32_t k = 0; k < s->col_out.nseg && st == MOX_OK; k++)
            st = mox__isend(c, s->next, tag,
                            s->src + (uint64_t)k * s->chunk * s->esz,
                            seg_len(s, s->me, k) * s->esz,
                            &s->col_send[1 + k]);
        s->sent = s->sbase[1]; /* step 0: my block */
    }
    for (int b = 0; b < s->nsb && st == MOX_OK && !s->ring; b++)
        if (b != s->my_b)
            st = post_stream_recv(c, s, s->sb_rank[b], tag, s->col_in[b],
                                  s->stage + s->col_slot[b],
                                  &s->col_recv[s->col_base[b]]);
    memcpy(s->tx_col, s->hdr_out, HDR);
    if (s->col_out.first)
        memcpy(s->tx_col + HDR, s->src, s->col_out.first);
    size_t is = 0;
    for (int d = 1; d < N && st == MOX_OK && !s->ring; d++) {
        int n = (s->g.row + d) % N;
        int r = rank_at(s, n, s->g.col % row_len(s, n));
        st = mox__isend(c, r, tag, s->tx_col, HDR + s->col_out.first,
                        &s->col_send[is++]);
        uint32_t k0 = s->col_out.alone ? 0 : 1;
        for (uint32_t k = k0; k < s->col_out.nseg && st == MOX_OK; k++)
            st = mox__isend(c, r, tag,
                            s->src + (uint64_t)k * s->chunk * s->esz,
                            seg_len(s, s->me, k) * s->esz, &s->col_send[is++]);
    }
    /* Row: from each row peer, its slice in forwarding order. */
    tag = mox__tag(req->seq, STEP_ROW);
    for (int l = 0; l < L && st == MOX_OK; l++)
        if (l != s->g.col)
            st = post_stream_recv(c, s, rank_at(s, s->g.row, l), tag,
                                  s->row_in[l], s->stage + s->row_slot[l],
                                  &s->row_recv[s->row_base[l]]);
    /* The header alone goes now, chunk 0 behind it when it is here: at
     * once when it is mine, so that a rank that fails on a peer's header
     * has still sent its own to every rank it talks to. */
    memcpy(s->tx_row, s->hdr_out, HDR);
    for (int d = 1; d < L && st == MOX_OK && !s->row_out.first; d++) {
        int l = (s->g.col + d) % L, li = l < s->g.col ? l : l - 1;
        st = mox__isend(c, rank_at(s, s->g.row, l), tag, s->tx_row, HDR,
                        &s->row_send[(size_t)li * msgs(s->row_out)]);
    }
    return st == MOX_OK ? forward(c, s, tag) : st;
}

/* Streams, request counts and buffer offsets; NULL base = sizes only. */
static size_t layout(ag_t *s, char *base)
{
    int L = s->g.L, B = s->nsb;
    size_t off = 0;
#define PLACE(field, bytes)                                                    \
    do {                                                                       \
        if (base)                                                              \
            s->field = (void *)(base + off);                                   \
        off += ((size_t)(bytes) + 63) & ~(size_t)63;                           \
    } while (0)
    PLACE(col_in, (size_t)B * sizeof(stream_t));
    PLACE(row_in, (size_t)L * sizeof(stream_t));
    PLACE(col_base, (size_t)B * sizeof(size_t));
    PLACE(row_base, (size_t)L * sizeof(size_t));
    PLACE(col_slot, (size_t)B * sizeof(size_t));
    PLACE(row_slot, (size_t)L * sizeof(size_t));
    PLACE(col_ok, B);
    PLACE(row_ok, L);
    PLACE(row_first, (size_t)L * sizeof(int));
    PLACE(rbase, s->ring ? (size_t)s->g.N * sizeof(uint32_t) : 0);
    PLACE(sbase, s->ring ? (size_t)s->g.N * sizeof(uint32_t) : 0);
    PLACE(tx_col, HDR + s->col_out.first);
    PLACE(tx_row, HDR + s->row_out.first);
    size_t stage = 0, nr = 0;
    for (int b = 0; b < B; b++) {
        int first;
        stream_t x = b == s->my_b ? s->col_out
                                  : stream_from(s, s->sb_rank[b], &first);
        if (base) {
            s->col_in[b] = x;
            s->col_base[b] = nr;
            s->col_slot[b] = stage;
        }
        if (b != s->my_b && !s->ring) {
            nr += msgs(x);
            stage += (HDR + x.first + 7) & ~(size_t)7;
        }
    }
    s->n_col_recv = nr;
    s->n_col_send = (size_t)(s->g.N - 1) * msgs(s->col_out);
    if (s->ring) {
        /* a header each way, then every step's chunks */
        uint32_t rb = 0, sb = 0;
        for (int x = 0; x + 1 < s->g.N; x++) {
            if (base) {
                s->rbase[x] = rb;
                s->sbase[x] = sb;
            }
            rb += block_nseg(s, ring_block(s, 1 + x));
            sb += block_nseg(s, ring_block(s, x));
        }
        if (base) {
            s->rbase[s->g.N - 1] = rb;
            s->sbase[s->g.N - 1] = sb;
        }
        s->n_col_recv = 1 + rb;
        s->n_col_send = 1 + sb;
        s->ring_slot = stage;
        stage += HDR;
    }
    nr = 0;
    for (int l = 0; l < L; l++) {
        int first;
        stream_t x = stream_from(s, rank_at(s, s->g.row, l), &first);
        if (base) {
            s->row_in[l] = x;
            s->row_base[l] = nr;
            s->row_slot[l] = stage;
            s->row_first[l] = first;
        }
        if (l != s->g.col) {
            nr += msgs(x);
            stage += (HDR + x.first + 7) & ~(size_t)7;
        }
    }
    s->n_row_recv = nr;
    s->n_row_send = (size_t)(L - 1) * msgs(s->row_out);
    s->nt = s->n_col_recv + s->n_col_send + s->n_row_send + s->n_row_recv;
    PLACE(stage, stage);
    PLACE(t, s->nt * sizeof(mox__treq_t));
#undef PLACE
    return off;
}


/* My slice: my block and those I handle, in rank order by row. */
static void plan_slice(ag_t *s)
{
    s->nsb = 0;
    s->slice_seg[0] = 0;
    int n = 0, j = -1;
    for (int r, b = 0; (r = next_block(s, s->me, &n, &j)) >= 0; b++) {
        if (r == s->me)
            s->my_b = b;
        s->sb_rank[b] = r;
        s->slice_seg[b + 1] = s->slice_seg[b] +
                              mox__rsag_nseg(s->count[r], s->chunk);
        s->nsb = b + 1;
    }
}

mox_status_t mox__allgather_hier(struct mox_req *req,
                                 const mox__ag_args_t *a)
{
    mox__comm_t *c = req->comm;
    int P = c->size;
    ag_t *s = calloc(1, sizeof *s + 2 * (size_t)P * sizeof(uint64_t) +
                            ((size_t)P + 1) * sizeof(uint32_t) +
                            (5 * (size_t)P + 1) * sizeof(int));
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "allgather: no memory");
    req->state = s;
    req->cleanup = free_state;
    s->count = (uint64_t *)(s + 1);
    s->displ = s->count + P;
    s->slice_seg = (uint32_t *)(s->displ + P);
    s->g.rank = (int *)(s->slice_seg + P + 1);
    s->g.row_of = s->g.rank + P;
    s->g.lidx = s->g.row_of + P;
    s->sb_rank = s->g.lidx + P;
    s->g.first = s->sb_rank + P;
    mox__rows_build(c, a->hier, &s->g);
    s->P = P;
    s->me = c->rank;
    s->esz = mox__dtype_size(a->dtype);
    s->src = a->src;
    s->out = a->out;
    memcpy(s->count, a->counts, (size_t)P * sizeof(uint64_t));
    memcpy(s->displ, a->displs, (size_t)P * sizeof(uint64_t));
    s->chunk = mox__rsag_chunk(c, s->esz, 1);
    s->ring = a->ring && a->hier && s->g.N > 1 && mox__grid_nodes_equal(c);
    if (s->ring) {
        int N = s->g.N;
        s->next = rank_at(s, (s->g.row + 1) % N, s->g.col);
        s->prev = rank_at(s, (s->g.row + N - 1) % N, s->g.col);
    }
    plan_slice(s);
    int first;
    s->col_out = stream_of(mox__rsag_nseg(s->count[s->me], s->chunk),
                           s->count[s->me] ? seg_len(s, s->me, 0) * s->esz
                                           : 0);
    s->row_out = stream_from(s, s->me, &first);
    size_t bytes = layout(s, NULL);
    s->mem = calloc(1, bytes);
    if (!s->mem)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "allgather: no memory for "
                         "%zu requests and %zu bytes of buffers", s->nt,
                         bytes);
    layout(s, s->mem);
    s->col_recv = s->t;
    s->col_send = s->col_recv + s->n_col_recv;
    s->row_send = s->col_send + s->n_col_send;
    s->row_recv = s->row_send + s->n_row_send;
    mox__rsag_hdr_make(&s->hdr, s->hdr_out, MOX_RSAG_KIND_AG, req->seq,
                       a->dtype, 0, 0, s->count, P, s->me);
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
