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
 *
 * The first message every rank sends each column and row peer starts with
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
    mox__grid_t g;
    int P, me;
    size_t esz;
    const char *src;
    char *out;
    uint64_t *count, *displ;    /* [P] */
    uint64_t chunk;
    uint32_t *col_seg;          /* [N+1] my column's chunks, by row */
    uint32_t fwd;               /* column chunks forwarded so far */
    stream_t col_out, row_out;  /* what I send column and row peers */
    stream_t *col_in, *row_in;  /* [N], [L] what each peer sends me */
    size_t *col_base, *row_base; /* [N], [L] a peer's first receive */
    size_t *col_slot, *row_slot; /* [N], [L] its staging slot in `stage` */
    uint8_t *col_ok, *row_ok;   /* [N], [L] its header: HDR_* */
    mox_status_t err;           /* a first message failed */
    char *stage;                /* first messages received */
    char *tx_col, *tx_row;      /* first messages sent: HDR + first */
    mox__rsag_hdr_t hdr;
    unsigned char hdr_out[HDR];
    mox__treq_t *t, *col_send, *col_recv, *row_send, *row_recv;
    size_t nt, n_col_recv, n_col_send, n_row_send, n_row_recv;
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

static int rank_at(const ag_t *s, int n, int l)
{
    return s->g.rank[n * s->g.L + l];
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

/* First rank of column l (in row order) with a nonempty block, or -1. */
static int first_owner(const ag_t *s, int l)
{
    for (int n = 0; n < s->g.N; n++)
        if (s->count[rank_at(s, n, l)])
            return rank_at(s, n, l);
    return -1;
}

/* The stream of column l's blocks (forwarding order) and of rank r's. */
static stream_t column_stream(const ag_t *s, int l)
{
    uint32_t nseg = 0;
    for (int n = 0; n < s->g.N; n++)
        nseg += mox__rsag_nseg(s->count[rank_at(s, n, l)], s->chunk);
    int r = first_owner(s, l);
    return stream_of(nseg, r < 0 ? 0 : seg_len(s, r, 0) * s->esz);
}

static stream_t block_stream(const ag_t *s, int r)
{
    uint32_t nseg = mox__rsag_nseg(s->count[r], s->chunk);
    return stream_of(nseg, nseg ? seg_len(s, r, 0) * s->esz : 0);
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
        s->err = st; /* the comm's message is this one's */
}

/*
 * Headers of column and row peers, as their first messages come. A
 * failure is returned once the first messages every peer sends at the
 * start (column peers; row peers too when the row is every rank) are
 * here, as when headers were messages of their own: a rank that fails at
 * once would leave peers on other nodes in the middle of connecting to
 * it. A mismatch is kept over another error, since it names the pair.
 */
static mox_status_t check_headers(mox__comm_t *c, ag_t *s)
{
    int waiting = 0;
    for (int n = 0; n < s->g.N; n++) {
        if (n == s->g.row)
            continue;
        mox__treq_t *q = &s->col_recv[s->col_base[n]];
        check_first(c, s, q, s->stage + s->col_slot[n], s->col_in[n],
                    s->out + s->displ[rank_at(s, n, s->g.col)] * s->esz,
                    &s->col_ok[n]);
        waiting |= !q->done;
    }
    for (int l = 0; l < s->g.L; l++) {
        if (l == s->g.col)
            continue;
        mox__treq_t *q = &s->row_recv[s->row_base[l]];
        int r = first_owner(s, l);
        check_first(c, s, q, s->stage + s->row_slot[l], s->row_in[l],
                    r < 0 ? NULL : s->out + s->displ[r] * s->esz,
                    &s->row_ok[l]);
        waiting |= s->g.N == 1 && !q->done;
    }
    return waiting ? MOX_OK : s->err;
}

/* Column chunk cs: row and chunk; whether it is here; where it is. */
static int seg_ready(mox__comm_t *c, ag_t *s, uint32_t cs, int *n,
                     uint32_t *k, const char **at, mox_status_t *st)
{
    int b = 0;
    while (s->col_seg[b + 1] <= cs)
        b++;
    *n = b;
    *k = cs - s->col_seg[b];
    int r = rank_at(s, b, s->g.col);
    if (b == s->g.row) {
        *at = s->src + (uint64_t)*k * s->chunk * s->esz;
        return 1;
    }
    if (s->col_ok[b] != HDR_OK)
        return 0;
    uint32_t m = *k + s->col_in[b].alone;
    const mox__treq_t *q = &s->col_recv[s->col_base[b] + m];
    if (m && !q->done)
        return 0;
    if (m) /* message 0 was checked with the header */
        *st = check_recv(c, q, seg_len(s, r, *k) * s->esz);
    *at = s->out + (s->displ[r] + (uint64_t)*k * s->chunk) * s->esz;
    return 1;
}

/* Forward every column chunk that is here, in order, to the row. */
static mox_status_t forward(mox__comm_t *c, ag_t *s, uint64_t tag)
{
    uint32_t total = s->col_seg[s->g.N], per_peer = msgs(s->row_out);
    while (s->fwd < total) {
        int n;
        uint32_t k;
        const char *at;
        mox_status_t st = MOX_OK;
        if (!seg_ready(c, s, s->fwd, &n, &k, &at, &st))
            return MOX_OK;
        if (st != MOX_OK)
            return st;
        size_t bytes = seg_len(s, rank_at(s, n, s->g.col), k) * s->esz;
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
        uint32_t cs = 0, alone = s->row_in[l].alone;
        for (int n = 0; n < s->g.N; n++) {
            int r = rank_at(s, n, l);
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
    if ((st = check_headers(c, s)) != MOX_OK)
        return st;
    if (s->err != MOX_OK)
        return MOX_IN_PROGRESS; /* reported by check_headers when due */
    if ((st = forward(c, s, mox__tag(req->seq, STEP_ROW))) != MOX_OK)
        return st;
    if (s->fwd < s->col_seg[s->g.N] || !all_done(s->t, s->nt))
        return MOX_IN_PROGRESS;
    if ((st = check_headers(c, s)) != MOX_OK) /* those done just now */
        return st;
    if ((st = check_row(c, s)) != MOX_OK)
        return st;
    return mox__treqs_check(c, s->t, s->nt, "allgather");
}

/* Receives of one peer's stream, the blocks of rows n0..n1-1 of column
 * l: message 0 into its staging slot, the other chunks in place. */
static mox_status_t post_stream_recv(mox__comm_t *c, ag_t *s, int peer,
                                     uint64_t tag, stream_t x, char *slot,
                                     int l, int n0, int n1, mox__treq_t *q)
{
    mox_status_t st = mox__irecv(c, peer, tag, slot, HDR + x.first, q++);
    int skip = !x.alone; /* chunk 0 comes with the header */
    for (int n = n0; n < n1 && st == MOX_OK; n++) {
        int r = rank_at(s, n, l);
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
    /* Column: receive the other rows' blocks of my column, send mine. */
    uint64_t tag = mox__tag(req->seq, STEP_COL);
    for (int n = 0; n < N && st == MOX_OK; n++) {
        if (n == s->g.row)
            continue;
        st = post_stream_recv(c, s, rank_at(s, n, s->g.col), tag,
                              s->col_in[n], s->stage + s->col_slot[n],
                              s->g.col, n, n + 1,
                              &s->col_recv[s->col_base[n]]);
    }
    memcpy(s->tx_col, s->hdr_out, HDR);
    if (s->col_out.first)
        memcpy(s->tx_col + HDR, s->src, s->col_out.first);
    size_t is = 0;
    for (int d = 1; d < N && st == MOX_OK; d++) {
        int r = rank_at(s, (s->g.row + d) % N, s->g.col);
        st = mox__isend(c, r, tag, s->tx_col, HDR + s->col_out.first,
                        &s->col_send[is++]);
        uint32_t k0 = s->col_out.alone ? 0 : 1;
        for (uint32_t k = k0; k < s->col_out.nseg && st == MOX_OK; k++)
            st = mox__isend(c, r, tag,
                            s->src + (uint64_t)k * s->chunk * s->esz,
                            seg_len(s, s->me, k) * s->esz, &s->col_send[is++]);
    }
    /* Row: from each row peer, its column's blocks in forwarding order. */
    tag = mox__tag(req->seq, STEP_ROW);
    for (int l = 0; l < L && st == MOX_OK; l++)
        if (l != s->g.col)
            st = post_stream_recv(c, s, rank_at(s, s->g.row, l), tag,
                                  s->row_in[l], s->stage + s->row_slot[l], l,
                                  0, N, &s->row_recv[s->row_base[l]]);
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
    int N = s->g.N, L = s->g.L;
    size_t off = 0;
#define PLACE(field, bytes)                                                    \
    do {                                                                       \
        if (base)                                                              \
            s->field = (void *)(base + off);                                   \
        off += ((size_t)(bytes) + 63) & ~(size_t)63;                           \
    } while (0)
    PLACE(col_in, (size_t)N * sizeof(stream_t));
    PLACE(row_in, (size_t)L * sizeof(stream_t));
    PLACE(col_base, (size_t)N * sizeof(size_t));
    PLACE(row_base, (size_t)L * sizeof(size_t));
    PLACE(col_slot, (size_t)N * sizeof(size_t));
    PLACE(row_slot, (size_t)L * sizeof(size_t));
    PLACE(col_ok, N);
    PLACE(row_ok, L);
    PLACE(tx_col, HDR + s->col_out.first);
    PLACE(tx_row, HDR + s->row_out.first);
    size_t stage = 0, nr = 0;
    for (int n = 0; n < N; n++) {
        stream_t x = block_stream(s, rank_at(s, n, s->g.col));
        if (base) {
            s->col_in[n] = x;
            s->col_base[n] = nr;
            s->col_slot[n] = stage;
        }
        if (n != s->g.row) {
            nr += msgs(x);
            stage += (HDR + x.first + 7) & ~(size_t)7;
        }
    }
    s->n_col_recv = nr;
    nr = 0;
    for (int l = 0; l < L; l++) {
        stream_t x = column_stream(s, l);
        if (base) {
            s->row_in[l] = x;
            s->row_base[l] = nr;
            s->row_slot[l] = stage;
        }
        if (l != s->g.col) {
            nr += msgs(x);
            stage += (HDR + x.first + 7) & ~(size_t)7;
        }
    }
    s->n_row_recv = nr;
    s->n_col_send = (size_t)(N - 1) * msgs(s->col_out);
    s->n_row_send = (size_t)(L - 1) * msgs(s->row_out);
    s->nt = s->n_col_recv + s->n_col_send + s->n_row_send + s->n_row_recv;
    PLACE(stage, stage);
    PLACE(t, s->nt * sizeof(mox__treq_t));
#undef PLACE
    return off;
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
    int N = s->g.N;
    s->col_seg[0] = 0;
    for (int n = 0; n < N; n++)
        s->col_seg[n + 1] = s->col_seg[n] +
            mox__rsag_nseg(s->count[rank_at(s, n, s->g.col)], s->chunk);
    s->col_out = block_stream(s, s->me);
    s->row_out = column_stream(s, s->g.col);
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
