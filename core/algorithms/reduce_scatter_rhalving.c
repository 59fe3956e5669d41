/*
 * Reduce-scatter for small vectors: few messages, few steps.
 *
 * On a grid of N rows x L columns (core/rsag.h: nodes x local ranks on
 * nodes of equal size, else one column of all ranks):
 *  1. row (shm for hier): every rank sends each row peer, packed in one
 *     message, the blocks of that peer's column ("rail slice"), and
 *     reduces the L contributions to its own slice in column order;
 *  2. column (rail peers, the network for hier): recursive halving over
 *     the N row blocks of the slice. With N2 the largest power of two
 *     <= N, rows n >= N2 first fold their slice into row n - N2 and get
 *     their block back from it at the end; the N2 others halve: at
 *     distance d = N2/2 .. 1, virtual row v keeps the half of its range
 *     that holds v, sends the other half to v ^ d and adds what v ^ d
 *     sends for its own half.
 * A rank sends L - 1 + log2(N2) messages (+1 with folding) where the
 * pipelined algorithm (reduce_scatter_hier.c) sends L - 1 + N - 1 headers
 * and chunks; nothing is pipelined, so it is meant for small vectors.
 *
 * The slice is laid out by virtual row (row v, then row v + N2), so every
 * half is contiguous and goes out as it lies. Every message starts with
 * the agreement header (rsag.h); the ranks that talk form a connected
 * graph, so all agree or some pair fails with MOX_ERR_MISMATCH. The
 * reduction tree is fixed by the grid, so results are bitwise
 * reproducible; all ops are commutative, so acc op partner is exact
 * whichever side computes it.
 */
#include "core/comm.h"
#include "core/dtype.h"
#include "core/reduce.h"
#include "core/rsag.h"

#include <stdlib.h>
#include <string.h>

#define HDR MOX_RSAG_HDR_BYTES
enum { STEP_ROW = 1, STEP_FOLD = 2, STEP_UNFOLD = 3, STEP_HALVE = 8 };

typedef struct {
    mox_status_t start_error;
    mox_status_t err;            /* a failed header: reported once my
                                    messages are out */
    mox__grid_t g;
    int P, me, N2, nsteps, step; /* step: next halving step to run */
    int phase;                   /* see enum below */
    mox_dtype_t dt, acc_t;
    mox_op_t op;
    size_t esz, asz;
    const char *in;
    char *out;
    uint64_t *count, *displ;     /* [P] */
    /* Elements of each grid rank in the column phase: count, or in
     * leader mode the node's total at its leader. */
    uint64_t *unit;              /* [P] */
    int leader;                  /* leader mode: 1 leader, 2 other rank */
    mox__shm_node_t node;
    uint64_t node_off;           /* leader mode: my slice in the node's */
    uint64_t total;              /* elements of the whole vector */
    const char **ndata;          /* leader mode: [L] local ranks' inputs */
    int *vrow;                   /* [N] rows in slice order */
    int *vpos;                   /* [N] row -> index in vrow */
    uint64_t *voff;              /* [N+1] slice offsets, in slice order */
    char *acc;                   /* my slice, accumulator type */
    char *tx;                    /* packed row sends, header first */
    size_t *tx_off;              /* [L] */
    char *rx_row;                /* (L-1) x (HDR + my slice in dt) */
    char *rx_fold;               /* HDR + slice, or HDR + my block (extra) */
    char *rx_step;               /* HDR + half, per step */
    size_t *rx_step_off;         /* [nsteps] */
    unsigned char hdr_out[HDR];
    unsigned char hdr_abort[HDR]; /* sent after a failed header */
    mox__rsag_hdr_t hdr;
    mox__iov_t (*hiov)[2];       /* [nsteps + 2] */
    void **stage;                /* [nsteps + 2] */
    mox__treq_t *t, *row_recv, *row_send, *step_recv, *step_send;
    mox__treq_t *fold_recv, *fold_send;
    size_t nt;
    void *mem;
} rh_t;

enum { PH_ROW, PH_FOLD, PH_HALVE, PH_DONE };

static void free_state(struct mox_req *req)
{
    rh_t *s = req->state;
    if (!s)
        return;
    if (s->leader)
        mox__shm_node_end(req, &s->node, req->status);
    if (!s->mem)
        return;
    for (int i = 0; i < s->nsteps + 2; i++)
        free(s->stage[i]);
    free(s->mem);
}

static int rank_at(const rh_t *s, int n, int l) { return s->g.rank[n * s->g.L + l]; }
static uint64_t slice_of(const rh_t *s, int l)
{
    uint64_t n = 0;
    for (int r = 0; r < s->g.N; r++)
        n += s->count[rank_at(s, r, l)];
    return n;
}

/* Offset of virtual row v in the slice/column (v = N2: its end). */
static uint64_t vbegin(const rh_t *s, int v)
{
    return s->voff[mox__vrow_first(s->g.N, s->N2, v)];
}

/* Check a completed message with the header in front and `want` payload
 * bytes. */
static mox_status_t check_msg(mox__comm_t *c, rh_t *s, mox__treq_t *r,
                              const void *buf, size_t want)
{
    mox_status_t st = mox__rsag_recv_hdr(c, "reduce_scatter", r, buf, &s->hdr);
    if (st == MOX_OK && r->bytes != want)
        st = mox__fail(c, MOX_ERR_MISMATCH, "reduce_scatter: rank %d sent "
                       "%zu bytes where rank %d expects %zu: counts differ",
                       r->peer, r->bytes, c->rank, want);
    return st;
}

static int all_done(const mox__treq_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].posted && !t[i].done)
            return 0;
    return 1;
}

/* Row contributions are here: reduce them in column order into acc. */
static mox_status_t reduce_row(mox__comm_t *c, rh_t *s)
{
    uint64_t slice = s->voff[s->g.N];
    for (int l = 0; l < s->g.L; l++) {
        const char *src = NULL;
        if (l != s->g.col) {
            int p = l < s->g.col ? l : l - 1;
            mox__treq_t *q = &s->row_recv[p];
            src = s->rx_row + (size_t)p * (HDR + slice * s->esz);
            mox_status_t st = check_msg(c, s, q, src, slice * s->esz);
            if (st != MOX_OK)
                return st;
            src += HDR;
        }
        for (int k = 0; k < s->g.N; k++) {
            int r = rank_at(s, s->vrow[k], s->g.col);
            uint64_t n = s->count[r];
            const char *x = l == s->g.col ? s->in + s->displ[r] * s->esz
                                          : src + s->voff[k] * s->esz;
            char *a = s->acc + s->voff[k] * s->asz;
            if (l == 0)
                mox__reduce_init(s->acc_t, a, s->dt, x, n);
            else
                mox__reduce_apply(s->op, s->acc_t, a, s->dt, x, n);
        }
    }
    return MOX_OK;
}

/* Leader mode: the node's inputs (mine, then the others' in the shm area,
 * in local order) reduced into acc, where node n's block holds its ranks'
 * slices in local order. */
static void reduce_node(mox__comm_t *c, rh_t *s)
{
    for (int j = 0; j < c->local_size; j++) {
        const char *src = j ? s->ndata[j] : s->in;
        for (int k = 0; k < s->g.N; k++) {
            uint64_t at = s->voff[k];
            for (int l = 0; l < c->local_size; l++) {
                int r = mox__topo_rank_at(&c->topo, s->vrow[k], l);
                const char *x = src + s->displ[r] * s->esz;
                char *a = s->acc + at * s->asz;
                if (j == 0)
                    mox__reduce_init(s->acc_t, a, s->dt, x, s->count[r]);
                else
                    mox__reduce_apply(s->op, s->acc_t, a, s->dt, x,
                                      s->count[r]);
                at += s->count[r];
            }
        }
    }
}

static int col_peer(const rh_t *s, int row) { return rank_at(s, row, s->g.col); }

/* Send acc[lo, hi) (slice elements) to row `row` with the header. */
static mox_status_t send_acc(mox__comm_t *c, rh_t *s, int row, uint64_t tag,
                             uint64_t lo, uint64_t hi, int slot,
                             mox__treq_t *r)
{
    return mox__rsag_isend_hdr(c, col_peer(s, row), tag, s->hdr_out,
                               s->acc + lo * s->asz, (hi - lo) * s->asz,
                               s->hiov[slot], &s->stage[slot], r);
}

/* Halving step i: distance d = N2 >> (i + 1). My range before the step is
 * the 2d virtual rows holding v; I keep the half with v. */
static void step_halves(const rh_t *s, int i, int *keep_a, int *keep_b,
                        int *give_a, int *give_b, int *partner)
{
    int v = s->g.row, d = s->N2 >> (i + 1);
    int lo = v & ~(2 * d - 1);
    int mine = v & d ? lo + d : lo, other = v & d ? lo : lo + d;
    *keep_a = mine;
    *keep_b = mine + d;
    *give_a = other;
    *give_b = other + d;
    *partner = v ^ d;
}

static mox_status_t post_step(mox__comm_t *c, struct mox_req *req, rh_t *s,
                              int i)
{
    int ka, kb, ga, gb, p;
    step_halves(s, i, &ka, &kb, &ga, &gb, &p);
    (void)ka;
    (void)kb;
    mox_status_t st = send_acc(c, s, p, mox__tag(req->seq, STEP_HALVE + i),
                               vbegin(s, ga), vbegin(s, gb), i,
                               &s->step_send[i]);
    return mox__rsag_gone(c, "reduce_scatter", st, &s->step_recv[i],
                          s->rx_step + s->rx_step_off[i], &s->hdr);
}

static mox_status_t step(struct mox_req *req)
{
    rh_t *s = req->state;
    mox__comm_t *c = req->comm;
    mox_status_t st = s->start_error;
    if (st != MOX_OK)
        return st;
    int extra = s->g.row >= s->N2;
    int has_extra = !extra && s->g.row + s->N2 < s->g.N;
    uint64_t slice = s->voff[s->g.N];
    if (s->phase == PH_ROW) {
        if (s->leader) {
            if ((st = mox__shm_node_gather(req, &s->node, s->ndata)) !=
                MOX_OK)
                return st;
            reduce_node(c, s);
        } else {
            if (!all_done(s->row_recv, (size_t)s->g.L - 1))
                return MOX_IN_PROGRESS;
            if ((st = reduce_row(c, s)) != MOX_OK)
                return st;
        }
        s->phase = PH_FOLD;
        if (extra && (st = send_acc(c, s, s->g.row - s->N2,
                                    mox__tag(req->seq, STEP_FOLD), 0, slice,
                                    s->nsteps, s->fold_send)) != MOX_OK)
            return st;
    }
    if (s->phase == PH_FOLD) {
        if ((extra || has_extra) && !s->fold_recv->done)
            return MOX_IN_PROGRESS;
        if (extra) {
            uint64_t mine = s->unit[s->me];
            if ((st = check_msg(c, s, s->fold_recv, s->rx_fold,
                                mine * s->asz)) != MOX_OK)
                return st;
            s->phase = PH_DONE;
        } else {
            if (has_extra) {
                if ((st = check_msg(c, s, s->fold_recv, s->rx_fold,
                                    slice * s->asz)) != MOX_OK)
                    return st;
                mox__reduce_apply(s->op, s->acc_t, s->acc, s->acc_t,
                                  s->rx_fold + HDR, slice);
            }
            s->phase = PH_HALVE;
            if (s->nsteps && (st = post_step(c, req, s, 0)) != MOX_OK)
                return st;
        }
    }
    while (s->phase == PH_HALVE && s->step < s->nsteps) {
        int i = s->step, ka, kb, ga, gb, p;
        mox__treq_t *q = &s->step_recv[i];
        if (!q->done)
            return MOX_IN_PROGRESS;
        step_halves(s, i, &ka, &kb, &ga, &gb, &p);
        uint64_t lo = vbegin(s, ka), hi = vbegin(s, kb);
        char *buf = s->rx_step + s->rx_step_off[i];
        if ((st = check_msg(c, s, q, buf, (hi - lo) * s->asz)) != MOX_OK)
            return st;
        mox__reduce_apply(s->op, s->acc_t, s->acc + lo * s->asz, s->acc_t,
                          buf + HDR, hi - lo);
        s->step++;
        if (s->step < s->nsteps &&
            (st = post_step(c, req, s, s->step)) != MOX_OK)
            return st;
    }
    if (s->phase == PH_HALVE) {
        s->phase = PH_DONE;
        if (has_extra) {
            int k = s->vpos[s->g.row + s->N2];
            if ((st = send_acc(c, s, s->g.row + s->N2,
                               mox__tag(req->seq, STEP_UNFOLD), s->voff[k],
                               s->voff[k + 1], s->nsteps + 1,
                               s->fold_send)) != MOX_OK)
                return st;
        }
    }
    if (!all_done(s->t, s->nt))
        return MOX_IN_PROGRESS;
    st = mox__treqs_check(c, s->t, s->nt, "reduce_scatter");
    if (st != MOX_OK)
        return st;
    const char *res = extra ? s->rx_fold + HDR
                            : s->acc + s->voff[s->vpos[s->g.row]] * s->asz;
    if (s->leader) {
        /* The node's block, rank by rank in local order: mine first. */
        char *dst;
        st = mox__shm_node_slot(req, &s->node, s->unit[s->me] * s->esz, &dst);
        if (st != MOX_OK)
            return st;
        mox__reduce_finish(s->op, s->dt, dst, res, s->unit[s->me], s->P);
        memcpy(s->out, dst, s->count[s->me] * s->esz);
        mox__shm_node_publish(req, &s->node);
        return MOX_OK;
    }
    mox__reduce_finish(s->op, s->dt, s->out, res, s->count[s->me], s->P);
    return MOX_OK;
}

/*
 * A header did not match: every column peer I have not sent to yet gets my
 * header alone, so that it names the mismatch too instead of waiting for a
 * message that will not come, and the error is returned once those
 * messages are out.
 */
static mox_status_t fail_after_headers(mox__comm_t *c, struct mox_req *req,
                                       rh_t *s, mox_status_t err)
{
    if (s->err == MOX_OK) {
        s->err = err;
        mox__rsag_hdr_encode_abort(&s->hdr, s->hdr_abort);
        int extra = s->g.row >= s->N2;
        for (int i = 0; i < s->nsteps; i++) {
            int ka, kb, ga, gb, p;
            step_halves(s, i, &ka, &kb, &ga, &gb, &p);
            mox__rsag_send_abort(c, col_peer(s, p),
                                 mox__tag(req->seq, STEP_HALVE + i),
                                 s->hdr_abort, &s->step_send[i]);
        }
        int to = extra ? s->g.row - s->N2 : s->g.row + s->N2;
        if (extra || to < s->g.N)
            mox__rsag_send_abort(c, col_peer(s, to),
                                 mox__tag(req->seq,
                                          extra ? STEP_FOLD : STEP_UNFOLD),
                                 s->hdr_abort, s->fold_send);
    }
    if (!all_done(s->step_send, (size_t)s->nsteps) || !all_done(s->fold_send, 1))
        return MOX_IN_PROGRESS;
    return s->err;
}

/* Leader mode, a rank other than the leader: my input to the leader,
 * my slice of the node's result back. */
static mox_status_t member_progress(struct mox_req *req)
{
    rh_t *s = req->state;
    const char *res;
    mox_status_t st = mox__shm_node_put(req, &s->node, s->in,
                                        s->total * s->esz);
    if (st == MOX_OK)
        st = mox__shm_node_fetch(req, &s->node, &res);
    if (st != MOX_OK)
        return st;
    memcpy(s->out, res + s->node_off * s->esz, s->count[s->me] * s->esz);
    mox__shm_node_done(req, &s->node);
    return MOX_OK;
}

static mox_status_t progress(struct mox_req *req)
{
    rh_t *s = req->state;
    mox_status_t st = s->err != MOX_OK ? s->err : step(req);
    if (st == MOX_ERR_MISMATCH || st == MOX_ERR_PROTOCOL)
        return fail_after_headers(req->comm, req, s, st);
    return st;
}

static mox_status_t post_initial(struct mox_req *req, rh_t *s)
{
    mox__comm_t *c = req->comm;
    mox_status_t st = MOX_OK;
    uint64_t slice = s->voff[s->g.N];
    uint64_t tag = mox__tag(req->seq, STEP_ROW);
    /* Receives first: the row contributions, the fold, every step. */
    for (int l = 0, p = 0; l < s->g.L && st == MOX_OK; l++) {
        if (l == s->g.col)
            continue;
        st = mox__irecv(c, rank_at(s, s->g.row, l), tag,
                        s->rx_row + (size_t)p * (HDR + slice * s->esz),
                        HDR + slice * s->esz, &s->row_recv[p]);
        p++;
    }
    int extra = s->g.row >= s->N2;
    if (st == MOX_OK && extra)
        st = mox__irecv(c, col_peer(s, s->g.row - s->N2),
                        mox__tag(req->seq, STEP_UNFOLD), s->rx_fold,
                        HDR + s->unit[s->me] * s->asz, s->fold_recv);
    else if (st == MOX_OK && s->g.row + s->N2 < s->g.N)
        st = mox__irecv(c, col_peer(s, s->g.row + s->N2),
                        mox__tag(req->seq, STEP_FOLD), s->rx_fold,
                        HDR + slice * s->asz, s->fold_recv);
    for (int i = 0; i < s->nsteps && st == MOX_OK; i++) {
        int ka, kb, ga, gb, p;
        step_halves(s, i, &ka, &kb, &ga, &gb, &p);
        st = mox__irecv(c, col_peer(s, p), mox__tag(req->seq, STEP_HALVE + i),
                        s->rx_step + s->rx_step_off[i],
                        HDR + (vbegin(s, kb) - vbegin(s, ka)) * s->asz,
                        &s->step_recv[i]);
    }
    /* Row sends: each peer's slice packed in slice order behind the
     * header, starting with the next column so ranks spread out. */
    for (int d = 1; d < s->g.L && st == MOX_OK; d++) {
        int l = (s->g.col + d) % s->g.L, p = l < s->g.col ? l : l - 1;
        char *m = s->tx + s->tx_off[l], *w = m + HDR;
        memcpy(m, s->hdr_out, HDR);
        for (int k = 0; k < s->g.N; k++) {
            int r = rank_at(s, s->vrow[k], l);
            memcpy(w, s->in + s->displ[r] * s->esz, s->count[r] * s->esz);
            w += s->count[r] * s->esz;
        }
        st = mox__isend(c, rank_at(s, s->g.row, l), tag, m, (size_t)(w - m),
                        &s->row_send[p]);
    }
    return st;
}

/* Offsets of every buffer in s->mem; NULL base = sizes only. */
static size_t layout(rh_t *s, char *base)
{
    int N = s->g.N, L = s->g.L;
    uint64_t slice = s->voff[N];
    size_t off = 0;
#define PLACE(field, bytes)                                                    \
    do {                                                                       \
        if (base)                                                              \
            s->field = (void *)(base + off);                                   \
        off += ((size_t)(bytes) + 63) & ~(size_t)63;                           \
    } while (0)
    PLACE(t, s->nt * sizeof(mox__treq_t));
    PLACE(hiov, (size_t)(s->nsteps + 2) * sizeof *s->hiov);
    PLACE(stage, (size_t)(s->nsteps + 2) * sizeof *s->stage);
    PLACE(tx_off, (size_t)L * sizeof(size_t));
    PLACE(rx_step_off, (size_t)(s->nsteps + 1) * sizeof(size_t));
    PLACE(acc, slice * s->asz);
    size_t tx = 0;
    for (int l = 0; l < L; l++) {
        if (base)
            s->tx_off[l] = tx;
        if (l != s->g.col)
            tx += (HDR + slice_of(s, l) * s->esz + 7) & ~(size_t)7;
    }
    PLACE(tx, tx);
    PLACE(rx_row, (size_t)(L - 1) * (HDR + slice * s->esz));
    uint64_t fold = s->g.row >= s->N2 ? s->unit[s->me] : slice;
    PLACE(rx_fold, HDR + fold * s->asz);
    size_t rx = 0;
    for (int i = 0; i < s->nsteps; i++) {
        int ka, kb, ga, gb, p;
        step_halves(s, i, &ka, &kb, &ga, &gb, &p);
        if (base)
            s->rx_step_off[i] = rx;
        rx += (HDR + (vbegin(s, kb) - vbegin(s, ka)) * s->asz + 7) &
              ~(size_t)7;
    }
    PLACE(rx_step, rx);
#undef PLACE
    return off;
}

mox_status_t mox__reduce_scatter_rhalving(struct mox_req *req,
                                          const mox__rs_args_t *a)
{
    mox__comm_t *c = req->comm;
    int P = c->size;
    size_t fixed = sizeof(rh_t) + (size_t)P * (3 * sizeof(int) +
                                               4 * sizeof(uint64_t) +
                                               sizeof(char *)) +
                   sizeof(uint64_t);
    rh_t *s = calloc(1, fixed);
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "reduce_scatter: no memory");
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
    s->dt = a->dtype;
    s->op = a->op;
    s->acc_t = mox__reduce_acc_type(a->dtype);
    s->esz = mox__dtype_size(a->dtype);
    s->asz = mox__dtype_size(s->acc_t);
    s->in = a->in;
    s->out = a->out;
    for (int r = 0; r < P; r++) {
        s->count[r] = a->counts[r];
        s->displ[r] = s->total;
        s->total += a->counts[r];
    }
    mox__rsag_hdr_make(&s->hdr, s->hdr_out, MOX_RSAG_KIND_RS, req->seq,
                       a->dtype, a->op, 0, s->count, P, s->me);
    if (a->leader) {
        s->leader = c->local_rank == 0 ? 1 : 2;
        mox_status_t st = mox__shm_node_init(req, &s->node, "reduce_scatter",
                                             &s->hdr, s->hdr_out);
        if (st != MOX_OK)
            return st;
        /* A leader's unit is its node's total; my slice is node_off
         * into it. */
        mox__grid_build_leaders(c, s->count, &s->g, s->unit);
        for (int l = 0; l < c->local_rank; l++)
            s->node_off += s->count[mox__topo_rank_at(&c->topo, c->node, l)];
        if (s->leader == 2) { /* no messages: the shm area only */
            req->progress = member_progress;
            return MOX_OK;
        }
    } else {
        memcpy(s->unit, s->count, (size_t)P * sizeof *s->unit);
        if (a->node_grid)
            mox__grid_build(c, 1, &s->g);
        else
            mox__grid_build_column(c, &s->g);
    }
    int N = s->g.N;
    s->N2 = mox__vrows(N, &s->nsteps, s->vrow, s->vpos);
    s->voff[0] = 0;
    for (int k = 0; k < N; k++)
        s->voff[k + 1] = s->voff[k] + s->unit[rank_at(s, s->vrow[k],
                                                      s->g.col)];
    if (s->g.row >= s->N2)
        s->nsteps = 0; /* folded rows only send and receive once */
    s->nt = (size_t)2 * (size_t)(s->g.L - 1) + 2 * (size_t)s->nsteps + 2;
    size_t bytes = layout(s, NULL);
    s->mem = calloc(1, bytes);
    if (!s->mem)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "reduce_scatter: no memory "
                         "for %zu bytes of buffers", bytes);
    layout(s, s->mem);
    s->row_recv = s->t;
    s->row_send = s->row_recv + (s->g.L - 1);
    s->step_recv = s->row_send + (s->g.L - 1);
    s->step_send = s->step_recv + s->nsteps;
    s->fold_recv = s->step_send + s->nsteps;
    s->fold_send = s->fold_recv + 1;
    req->treqs = s->t;
    req->ntreqs = s->nt;
    req->progress = progress;
    s->start_error = post_initial(req, s);
    return MOX_OK;
}
