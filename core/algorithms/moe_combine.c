/*
 * MoE combine: the reverse of the last dispatch.
 *
 * Each rank returns its rows (already weighted by the caller) along the path
 * the tokens came: straight to the source for direct deliveries, or to the
 * rail peer that forwarded them (dedup). The rail peer sums, in f32 and in
 * local-rank order, the partial rows of every rank of its node for each
 * record, and sends one row per record back over the network. The source
 * sums what comes back in rank order and writes x_dtype rows in token order.
 * Fixed orders make the result bitwise reproducible.
 *
 * Pipelined like dispatch (core/moe.h, mox__moe_chunks): a rank sends a
 * forwarder the partial rows of each source in chunks; the forwarder sums
 * record by record as soon as every row of a record is in, and sends the
 * rows back in the chunks of the dispatch hop, each as soon as it is
 * summed, so summing overlaps both the shm phase and the network.
 *
 * Rows between ranks of one node go through shared memory: written into
 * the receiving rank's combine area, or, when the returning rank's
 * expert_out lies in its shared receive buffer, summed by the receiving
 * rank where they are (see combine_t).
 */
#include "core/dtype.h"
#include "core/moe.h"
#include "core/log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { STEP_PART = 1, STEP_BACK = 2, STEP_PLACE = 3, STEP_DONE = 4 };

/* Place message `use` in combine: 0 send me the rows, 1 write them into
 * my combine area, 2 the same, or, when they are in your shared receive
 * buffer already, tell me where (I sum them from there). */
enum { PLACE_SEND = 0, PLACE_WRITE = 1, PLACE_READ = 2 };

/* A local rank's answer to a place: gen 0 when it wrote its rows into my
 * area, else its receive buffer (generation, bytes) and the offset of
 * its rows for me there. */
typedef struct {
    uint64_t gen, bytes, off;
} note_t;

typedef struct {
    struct mox_moe *m;
    const char *expert_out;
    void *out;
    int phase, L;
    mox_status_t start_error;
    size_t row_bytes;               /* H on the combine wire */
    uint64_t *send_off, *recv_off;  /* [P] into send/recv areas (BACK) */
    uint64_t *part_off;             /* [L] into recv area (partials in) */
    char *send, *recv;
    mox__treq_t *t;
    mox__treq_t *psend, *precv, *bsend, *brecv; /* bsend, brecv: [P][CMAX] */
    size_t nt, npsend;
    /* Forwarder: local rank l's partial rows come as messages
     * precv[l * pmax + j] of prow[same] rows, in order; pdone[l] of them
     * are in (a prefix), parrived[l] rows. */
    size_t pmax;
    uint64_t *prow, *pn, *pdone, *parrived;
    /* Forwarder summing, resumed as rows arrive: the si-th source in my
     * order (sources from my rank on, see sum_ready), its record sr, chunk
     * sc; cur/end per local rank into fwd_rec; ok my own rows of it. Per
     * local rank l and source x ([l * P + x]): the first and end index of
     * x's records in l's part of fwd_rec, and how many of l's partial rows
     * come before x's (in my order, the order l sends them). */
    int si, summed, traced_first;
    uint64_t sr, ok;
    uint32_t sc;
    uint64_t *cur, *end;
    uint64_t *pstart, *pend, *pbase;
    float *acc;
    const void **srows;           /* [L] a record's rows, in local order */
    /* Rows back between ranks of the node: a rank's receive area is in
     * shared memory (shared), and it tells each local rank that returns
     * rows where to write them (place messages, STEP_PLACE); the rank
     * writes them there and sends a note (note_t) in their stead. cwait[l]:
     * my rows for local rank l wait for its place. */
    int shared;
    mox__treq_t *cpsend, *cprecv; /* [L] */
    mox__place_t *cpout, *cpin;   /* [L] */
    uint8_t *cwait;               /* [L] */
    note_t *cnote;                /* [L] notes received */
    note_t *nout;                 /* [L] notes sent */
    /* Rows read in place: a local rank whose expert_out lies in its
     * shared receive buffer (mox_moe_recv_buffer) tells a source that
     * asked (PLACE_READ) where its rows are, and the source sums them
     * from there, with no copy. The source then sends it a done message
     * (STEP_DONE); the rank finishes only once that came, since the
     * caller may reuse expert_out afterwards. */
    int finished;
    mox_status_t fin_st;
    mox__treq_t *dsend, *drecv;   /* [L] */
    uint64_t *dnote;              /* [L] done messages received */
    uint64_t done;                /* the done message sent */
    size_t nt_data;               /* requests before dsend, drecv */
    float *wtmp;                  /* [H] conversions to the wire */
    /* Source side, summing my tokens as their rows come in (out_step):
     * set up once the notes of local ranks are in (out_ready); out_t is
     * the next token. Per rank x: a cursor into the rows it returns me,
     * their end, how many have arrived (a prefix: whole chunks) and how
     * many of its onch chunks were taken. out_err: the first failure,
     * reported once every transfer is over. */
    int out_ready;
    mox_status_t out_err;
    size_t out_t;
    uint64_t *ocur, *oend, *oavail;   /* [P] */
    const int32_t **oitem;            /* [P] tokens of x's rows */
    const char **ofrom, **orows;      /* [P] x's first row; a token's rows */
    uint32_t *ochunk, *onch;          /* [P] */
    float *oacc;                      /* [H] */
} combine_t;

#define CMAX MOX_MOE_CHUNKS_MAX

static int remote(const struct mox_moe *m, int r)
{
    return m->comm->topo.node_of[r] != m->comm->node;
}

static int served_remote(const struct mox_moe *m, int src)
{
    return m->forward && remote(m, src) &&
           mox__moe_forwarder_for(m, src) == m->comm->rank;
}

/* Rows of mine for source src go back directly (not through a rail peer
 * and not summed by me as the rail peer). */
static int direct_back(const struct mox_moe *m, int src)
{
    return !m->forward || !remote(m, src);
}

/* Rows rank x returns to me for my tokens: its hop list when x is my rail
 * peer on another node, else the tokens x finally received from me. */
static const mox__csr_t *back_list(const struct mox_moe *m, int x)
{
    return m->forward && remote(m, x) ? &m->hop : &m->direct;
}

static int same_format(const struct mox_moe *m)
{
    return (m->comb_elem == 4 && m->cfg.x_dtype == MOX_DTYPE_F32) ||
           (m->comb_elem == 2 && m->cfg.x_dtype == MOX_DTYPE_BF16);
}

static void to_wire(const struct mox_moe *m, const void *src, char *dst,
                    size_t rows, float *tmp)
{
    size_t H = (size_t)m->H;
    for (size_t r = 0; r < rows; r++) {
        const char *row = (const char *)src + r * H * m->x_elem;
        if (m->comb_elem == 4) {
            mox__to_f32(m->cfg.x_dtype, row, (float *)(dst + r * H * 4), H);
        } else if (m->cfg.x_dtype == MOX_DTYPE_BF16) {
            memcpy(dst + r * H * 2, row, H * 2);
        } else {
            mox__to_f32(m->cfg.x_dtype, row, tmp, H);
            mox__from_f32(MOX_DTYPE_BF16, tmp, dst + r * H * 2, H);
        }
    }
}

/* Lay out send and receive areas and post every receive and every send
 * that needs no peer data. */
static mox_status_t post_initial(struct mox_req *req, combine_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t rb = s->row_bytes;
    uint64_t send_rows = 0, recv_rows = 0;
    for (int x = 0; x < m->P; x++) {
        s->send_off[x] = send_rows;
        /* Direct rows back to x, or (forwarder) one summed row per record
         * of x; partial rows for a rail peer are counted below. */
        if (direct_back(m, x))
            send_rows += m->final_in[x];
        else if (served_remote(m, x))
            send_rows += m->hop_in[x];
        s->recv_off[x] = recv_rows;
        const mox__csr_t *bl = back_list(m, x);
        recv_rows += bl->off[x + 1] - bl->off[x];
    }
    uint64_t part_send_base = send_rows;
    for (int l = 0; l < s->L; l++)
        send_rows += m->fwd_in[l];
    for (int l = 0; l < s->L; l++) {
        s->part_off[l] = recv_rows;
        if (m->forward && l != m->comm->local_rank)
            recv_rows += m->fwd.off[l + 1] - m->fwd.off[l];
    }
    s->send = mox__buf_reserve(&m->comb_send, send_rows * rb + 8);
    /* Receive area in shared memory when other ranks of the node return
     * rows: they write them straight into it. */
    s->recv = NULL;
    if (c->local_size > 1)
        s->recv = mox__moe_comb_area(m, recv_rows * rb + 8);
    s->shared = s->recv != NULL;
    if (!s->recv)
        s->recv = mox__buf_reserve(&m->comb_recv, recv_rows * rb + 8);
    float *tmp = malloc((size_t)m->H * sizeof *tmp + 8);
    size_t L = (size_t)s->L, P = (size_t)m->P;
    uint64_t *cur = mox__buf_reserve(&m->comb_accum,
                                     (2 * L + 3 * L * P) * sizeof(uint64_t) +
                                         2 * (size_t)m->H * sizeof(float) +
                                         L * sizeof(char *) + 8);
    if (!s->send || !s->recv || !tmp || !cur) {
        free(tmp);
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe_combine: no memory for "
                         "%llu + %llu rows", (unsigned long long)send_rows,
                         (unsigned long long)recv_rows);
    }
    s->cur = cur;
    s->end = cur + L;
    s->pstart = s->end + L;
    s->pend = s->pstart + L * P;
    s->pbase = s->pend + L * P;
    s->srows = (const void **)(void *)(s->pbase + L * P);
    s->acc = (float *)(void *)(s->srows + L);
    s->wtmp = s->acc + m->H;
    /* Each local rank's records are in record order, so in source order:
     * find where each source's records begin. */
    for (size_t l = 0; l < L && m->forward; l++) {
        uint64_t i = m->fwd.off[l];
        for (size_t x = 0; x < P; x++) {
            s->pstart[l * P + x] = i;
            if (served_remote(m, (int)x))
                while (i < m->fwd.off[l + 1] &&
                       m->fwd_rec[i] < m->hopin_first[x + 1])
                    i++;
            s->pend[l * P + x] = i;
        }
    }
    mox_status_t st = MOX_OK;
    uint64_t btag = mox__tag(req->seq, STEP_BACK);
    uint64_t ptag = mox__tag(req->seq, STEP_PART);
    /* Rows back: from my rail peers on other nodes (dedup) in the chunks
     * of the hop I sent them, else in one message. */
    for (int x = 0; x < m->P && st == MOX_OK; x++) {
        const mox__csr_t *bl = back_list(m, x);
        uint64_t n = bl->off[x + 1] - bl->off[x];
        char *at = s->recv + s->recv_off[x] * rb;
        if (n && x != c->rank && !remote(m, x)) {
            /* A local rank: it waits for my place message. */
            int l = c->topo.local_of[x];
            s->cpout[l] = (mox__place_t){MOX_PLACE_MAGIC,
                                         !s->shared       ? PLACE_SEND
                                         : same_format(m) ? PLACE_READ
                                                          : PLACE_WRITE,
                                         req->seq, m->cbuf.gen, m->cbuf.bytes,
                                         s->recv_off[x], n};
            st = mox__isend(c, x, mox__tag(req->seq, STEP_PLACE),
                            &s->cpout[l], sizeof(mox__place_t),
                            &s->cpsend[l]);
            if (st == MOX_OK)
                st = s->shared
                         ? mox__irecv(c, x, btag, &s->cnote[l], sizeof(note_t),
                                      &s->brecv[(size_t)x * CMAX])
                         : mox__irecv(c, x, btag, at, n * rb,
                                      &s->brecv[(size_t)x * CMAX]);
            continue;
        }
        uint32_t nch = bl == &m->hop ? mox__moe_chunks(m, n, m->rec_bytes)
                                     : (n != 0);
        for (uint32_t k = 0; k < nch && st == MOX_OK; k++) {
            uint64_t lo = mox__moe_chunk_lo(n, nch, k);
            uint64_t hi = mox__moe_chunk_lo(n, nch, k + 1);
            st = mox__irecv(c, x, btag, at + lo * rb, (hi - lo) * rb,
                            &s->brecv[(size_t)x * CMAX + k]);
        }
    }
    /* Partial rows from each local rank I forwarded to: for each source I
     * serve, in my order (sum_ready), as many rows as records of it I
     * forwarded to that rank, in chunks (the rank cuts them the same way
     * from the same count), each put where it lies in record order. */
    for (int l = 0; l < s->L && st == MOX_OK; l++) {
        if (!m->forward || l == c->local_rank)
            continue;
        uint64_t base = 0;
        for (int j = 0; j < m->P && st == MOX_OK; j++) {
            size_t x = (size_t)((c->rank + j) % m->P), lx = (size_t)l * P + x;
            uint64_t f = s->pend[lx] - s->pstart[lx];
            uint64_t at = s->part_off[l] + s->pstart[lx] - m->fwd.off[l];
            s->pbase[lx] = base;
            base += f;
            uint32_t nch = mox__moe_chunks(m, f, rb);
            for (uint32_t k = 0; k < nch && st == MOX_OK; k++) {
                uint64_t rows = mox__moe_chunk_lo(f, nch, k + 1) -
                                mox__moe_chunk_lo(f, nch, k);
                size_t j = (size_t)l * s->pmax + s->pn[l]++;
                if (s->pn[l] > s->pmax)
                    return mox__fail(c, MOX_ERR_PROTOCOL, "moe_combine: "
                                     "more partial messages than planned");
                s->prow[j] = rows;
                st = mox__irecv(c, mox__topo_rank_at(&c->topo, c->node, l),
                                ptag, s->recv + at * rb, rows * rb,
                                &s->precv[j]);
                at += rows;
            }
        }
    }
    /* Direct rows back to their sources. */
    for (int i = 0; i < m->P && st == MOX_OK; i++) {
        int x = (c->rank + i) % m->P;
        uint64_t n = m->final_in[x];
        if (!direct_back(m, x) || !n)
            continue;
        if (x != c->rank && !remote(m, x)) {
            int l = c->topo.local_of[x];
            s->cwait[l] = 1;
            st = mox__irecv(c, x, mox__tag(req->seq, STEP_PLACE), &s->cpin[l],
                            sizeof(mox__place_t), &s->cprecv[l]);
            continue;
        }
        const char *rows = s->expert_out +
                           m->final_off[x] * (size_t)m->H * m->x_elem;
        if (!same_format(m)) {
            char *dst = s->send + s->send_off[x] * rb;
            to_wire(m, rows, dst, n, tmp);
            rows = dst;
        }
        /* Rows of one source are contiguous in expert_out: sent in place
         * when the wire format is x's own. */
        st = mox__isend(c, x, btag, rows, n * rb,
                        &s->bsend[(size_t)x * CMAX]);
    }
    /* Partial rows to the rail peer that forwarded each remote source's
     * tokens to me, source by source in that peer's order (sum_ready), in
     * chunks: straight from expert_out (a source's rows are contiguous
     * there) in x's own format, else converted into the send area first. */
    uint64_t pos = part_send_base;
    for (int i = 0; i < c->local_size * m->P && m->forward && st == MOX_OK;
         i++) {
        int h = mox__topo_rank_at(&c->topo, c->node, i / m->P);
        int x = (h + i % m->P) % m->P;
        uint64_t f = m->final_in[x];
        if (h == c->rank || !remote(m, x) || !f ||
            mox__moe_forwarder_for(m, x) != h)
            continue;
        const char *rows = s->expert_out +
                           m->final_off[x] * (size_t)m->H * m->x_elem;
        if (!same_format(m)) {
            to_wire(m, rows, s->send + pos * rb, f, tmp);
            rows = s->send + pos * rb;
            pos += f;
        }
        uint32_t nch = mox__moe_chunks(m, f, rb);
        for (uint32_t k = 0; k < nch && st == MOX_OK; k++) {
            uint64_t lo = mox__moe_chunk_lo(f, nch, k);
            uint64_t hi = mox__moe_chunk_lo(f, nch, k + 1);
            st = mox__isend(c, h, ptag, rows + lo * rb, (hi - lo) * rb,
                            &s->psend[s->npsend++]);
        }
    }
    free(tmp);
    return st;
}

/* Partial-row messages that arrived, as a prefix per local rank. */
static mox_status_t take_partials(combine_t *s)
{
    mox__comm_t *c = s->m->comm;
    for (int l = 0; l < s->L; l++)
        while (s->pdone[l] < s->pn[l]) {
            size_t j = (size_t)l * s->pmax + s->pdone[l];
            const mox__treq_t *r = &s->precv[j];
            if (!r->done)
                break;
            mox_status_t st = mox__treq_check(c, r, "moe combine");
            if (st == MOX_OK && r->bytes != s->prow[j] * s->row_bytes)
                st = mox__fail(c, MOX_ERR_PROTOCOL, "moe combine: rank %d "
                               "sent %zu bytes of partial rows, %llu "
                               "expected", r->peer, r->bytes,
                               (unsigned long long)(s->prow[j] *
                                                    s->row_bytes));
            if (st != MOX_OK)
                return st;
            s->parrived[l] += s->prow[j];
            s->pdone[l]++;
        }
    return MOX_OK;
}

/*
 * Forwarder: sum, per record in local-rank order, the partial rows of
 * every local rank and send one row per record back, chunk by chunk as
 * the chunks of the dispatch hop. Record by record, as the source does
 * with its tokens: each local rank's rows are in record order, so a
 * cursor per rank finds a record's rows, which are summed into one
 * cache-resident f32 row and written to the send area once. A record
 * waits until every one of its rows has arrived; the next call goes on
 * from there.
 *
 * Sources go in the order of ranks from mine on (local ranks send me
 * their partial rows in that order too), so that at the start the
 * forwarders of each node send to the next node rather than all to the
 * first: in rank order every forwarder began with rank 0's node, whose
 * link then carried three nodes' rows while the last node's got none
 * until the forwarders reached it.
 */
static mox_status_t sum_ready(struct mox_req *req, combine_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t H = (size_t)m->H, rb = s->row_bytes, L = (size_t)s->L;
    size_t me = (size_t)c->local_rank, P = (size_t)m->P;
    float *acc = s->acc;
    mox_status_t st = take_partials(s);
    uint64_t btag = mox__tag(req->seq, STEP_BACK);
    for (; s->si < m->P && st == MOX_OK; s->si++, s->sr = 0, s->sc = 0) {
        int x = (c->rank + s->si) % m->P;
        if (!served_remote(m, x) || !m->hop_in[x])
            continue;
        uint64_t n = m->hop_in[x];
        uint32_t nch = mox__moe_chunks(m, n, m->rec_bytes);
        char *dst = s->send + s->send_off[x] * rb;
        const uint64_t *ps = s->pstart + x, *pb = s->pbase + x;
        if (s->sr == 0) { /* nothing of x taken yet */
            for (size_t l = 0; l < L; l++) {
                s->cur[l] = ps[l * P];
                s->end[l] = s->pend[l * P + x];
            }
            s->ok = 0;
        }
        for (; s->sr < n; s->sr++) {
            uint64_t r = m->hopin_first[x] + s->sr;
            for (size_t l = 0; l < L; l++)
                if (l != me && s->cur[l] < s->end[l] &&
                    m->fwd_rec[s->cur[l]] == r &&
                    pb[l * P] + s->cur[l] - ps[l * P] >= s->parrived[l])
                    return MOX_OK; /* a row of r is not here yet */
            /* The record's rows in local order: the others' partial rows
             * (wire format) and mine (x's format), summed up to eight at
             * a time when the formats agree, else one by one. */
            size_t nr = 0, own = SIZE_MAX;
            for (size_t l = 0; l < L; l++) {
                if (s->cur[l] >= s->end[l] || m->fwd_rec[s->cur[l]] != r)
                    continue;
                if (l != me) {
                    s->srows[nr++] = s->recv + (s->part_off[l] + s->cur[l]++ -
                                                m->fwd.off[l]) * rb;
                    continue;
                }
                if (s->ok >= m->final_in[x])
                    return mox__fail(c, MOX_ERR_PROTOCOL, "moe_combine: more "
                                     "own rows of rank %d listed than "
                                     "received", x);
                own = nr;
                s->srows[nr++] = s->expert_out +
                                 (m->final_off[x] + s->ok++) * H * m->x_elem;
                s->cur[l]++;
            }
            mox_dtype_t wt = m->comb_elem == 4 ? MOX_DTYPE_F32
                                               : MOX_DTYPE_BF16;
            memset(acc, 0, H * sizeof(float));
            if (own == SIZE_MAX || m->cfg.x_dtype == wt) {
                mox__accumulate_rows_f32(wt, s->srows, nr, acc, H, NULL);
            } else {
                for (size_t j = 0; j < nr; j++)
                    mox__accumulate_f32(j == own ? m->cfg.x_dtype : wt,
                                        s->srows[j], acc, H);
            }
            char *row = dst + s->sr * rb;
            if (m->comb_elem == 4)
                memcpy(row, acc, H * sizeof(float));
            else
                mox__from_f32(MOX_DTYPE_BF16, acc, row, H);
            uint64_t lo = mox__moe_chunk_lo(n, nch, s->sc);
            if (s->sr + 1 == mox__moe_chunk_lo(n, nch, s->sc + 1)) {
                size_t bytes = (s->sr + 1 - lo) * rb;
                if (m->test_short_back == c->rank && s->sc == 0)
                    bytes -= rb; /* tests: a short message */
                st = mox__isend(c, x, btag, dst + lo * rb, bytes,
                                &s->bsend[(size_t)x * CMAX + s->sc]);
                if (!s->traced_first) {
                    s->traced_first = 1;
                    MOX_TRACE("moe", "combine %llu: first sum sent after "
                              "%.3f ms", (unsigned long long)req->seq,
                              (double)(mox__now_ns() - req->start_ns) / 1e6);
                }
                s->sc++;
                if (st != MOX_OK)
                    return st;
            }
        }
        for (size_t l = 0; l < L; l++)
            if (s->cur[l] != s->end[l])
                return mox__fail(c, MOX_ERR_PROTOCOL, "moe_combine: local "
                                 "rank %zu's rows of rank %d are not in "
                                 "record order", l, x);
        if (s->ok != m->final_in[x])
            return mox__fail(c, MOX_ERR_PROTOCOL, "moe_combine: %llu own "
                             "rows of rank %d listed, %llu received",
                             (unsigned long long)s->ok, x,
                             (unsigned long long)m->final_in[x]);
    }
    if (st != MOX_OK)
        return st;
    s->summed = 1;
    return MOX_OK;
}

/* Local ranks whose place message arrived: tell them where my rows are
 * when they may read them in place (PLACE_READ, and expert_out is in my
 * shared receive buffer in the wire format), else write my rows straight
 * into their shared combine area (in the wire format) and send the note
 * after them, or send the rows when the place says so. */
static mox_status_t back_ready(struct mox_req *req, combine_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t rb = s->row_bytes;
    uint64_t btag = mox__tag(req->seq, STEP_BACK);
    for (int l = 0; l < s->L; l++) {
        if (!s->cwait[l] || !s->cprecv[l].done)
            continue;
        s->cwait[l] = 0;
        int x = mox__topo_rank_at(&c->topo, c->node, l);
        const mox__place_t *p = &s->cpin[l];
        uint64_t n = m->final_in[x];
        mox_status_t st = mox__moe_check_place(c, &s->cprecv[l], p, req->seq,
                                               n, rb, "moe combine");
        if (st != MOX_OK)
            return st;
        const char *rows = s->expert_out +
                           m->final_off[x] * (size_t)m->H * m->x_elem;
        const char *rb0 = m->rbuf.p;
        if (p->use == PLACE_READ && same_format(m) && rb0 && rows >= rb0 &&
            (size_t)(rows - rb0) <= m->rbuf.bytes &&
            n * rb <= m->rbuf.bytes - (size_t)(rows - rb0)) {
            /* x reads them where they are; I finish once it is done. */
            s->nout[l] = (note_t){m->rbuf.gen, m->rbuf.bytes,
                                  (uint64_t)(rows - rb0)};
            if (m->test_bad_note == c->rank)
                s->nout[l].off = m->rbuf.bytes; /* tests: a corrupt note */
            mox__count_put(c, n * rb);
            st = mox__irecv(c, x, mox__tag(req->seq, STEP_DONE), &s->dnote[l],
                            sizeof s->dnote[l], &s->drecv[l]);
            if (st == MOX_OK)
                st = mox__isend(c, x, btag, &s->nout[l], sizeof(note_t),
                                &s->bsend[(size_t)x * CMAX]);
            if (st != MOX_OK)
                return st;
            continue;
        }
        char *dst;
        if (p->use) {
            char *base;
            st = mox__moe_map_peer(m, 1, x, p->gen, p->bytes, &base);
            if (st != MOX_OK)
                return st;
            dst = base + p->row_off * rb;
        } else {
            dst = s->send + s->send_off[x] * rb;
        }
        if (same_format(m) && !p->use)
            dst = (char *)rows; /* sent in place */
        else if (same_format(m))
            memcpy(dst, rows, n * rb);
        else
            to_wire(m, rows, dst, n, s->wtmp);
        if (p->use)
            mox__count_put(c, n * rb);
        s->nout[l] = (note_t){0, 0, 0};
        st = p->use ? mox__isend(c, x, btag, &s->nout[l], sizeof(note_t),
                                 &s->bsend[(size_t)x * CMAX])
                    : mox__isend(c, x, btag, dst, n * rb,
                                 &s->bsend[(size_t)x * CMAX]);
        if (st != MOX_OK)
            return st;
    }
    return MOX_OK;
}

/* Notes from local ranks: whole, and a place in a receive buffer only
 * where I can read one (the note of a rank whose message failed is
 * cleared: that rank gets no done message). */
static mox_status_t check_notes(combine_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    for (int l = 0; l < s->L && s->shared; l++) {
        int x = mox__topo_rank_at(&c->topo, c->node, l);
        const mox__treq_t *q = &s->brecv[(size_t)x * CMAX];
        if (l == c->local_rank || !q->posted)
            continue;
        if (q->status != MOX_OK) {
            s->cnote[l].gen = 0;
            continue;
        }
        if (q->bytes != sizeof(note_t) ||
            (s->cnote[l].gen && !same_format(m))) {
            /* gen is left as it came: a rank that says it waits for my
             * done message gets it */
            return mox__fail(c, MOX_ERR_PROTOCOL, "moe_combine: rank %d "
                             "answered my place with %zu bytes%s", x,
                             q->bytes, q->bytes == sizeof(note_t)
                                           ? " naming rows I cannot read in "
                                             "place" : "");
        }
    }
    return MOX_OK;
}

/*
 * Source: sum the rows returned for each token in rank order, then write
 * it. Token by token: each rank's rows for me are in token order, so a
 * cursor per rank finds the token's rows; they are summed into one
 * cache-resident f32 row and written once. (Summing every rank's rows into
 * a T x H f32 array and converting it afterwards moved about 4 x the
 * bytes; on 1 x 8 that array was a fifth of the whole run.) Per element
 * the additions are the same, in the same order, as in that array.
 *
 * A token is summed as soon as all its rows are in, so summing overlaps
 * the network: rows of local ranks are there once their notes came (read
 * in their receive buffers, or written into my area), rows over the
 * network chunk by chunk. Summing everything after the last chunk took
 * 12-36 ms of a 0.5-0.75 s combine on 2 x 4 and 4 x 2 at 1024 tokens.
 * A token's rows are summed up to eight at a time
 * (mox__accumulate_rows_f32: the f32 row is read and written once per
 * eight rows; on 1 x 8 that took combine at 1024 tokens from 41-43 to
 * 28-36 ms), and the next token's first row is prefetched while the last
 * group is summed.
 */
static mox_status_t out_setup(combine_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t H = (size_t)m->H, rb = s->row_bytes, P = (size_t)m->P;
    for (int l = 0; l < s->L && s->shared; l++) {
        int x = mox__topo_rank_at(&c->topo, c->node, l);
        const mox__treq_t *q = &s->brecv[(size_t)x * CMAX];
        if (l != c->local_rank && q->posted && !q->done)
            return MOX_OK; /* a note is still out */
    }
    mox_status_t st = check_notes(s);
    if (st != MOX_OK)
        return st;
    uint64_t *cur = mox__buf_reserve(&m->comb_part, 3 * P * sizeof(uint64_t) +
                                                        3 * P * sizeof(char *) +
                                                        2 * P * sizeof(uint32_t) +
                                                        H * sizeof(float) + 8);
    if (!cur)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe_combine: no memory "
                         "for %lld tokens", (long long)m->num_tokens);
    s->ocur = cur;
    s->oend = cur + P;
    s->oavail = s->oend + P;
    s->oitem = (const int32_t **)(void *)(s->oavail + P);
    s->ofrom = (const char **)(void *)(s->oitem + P);
    s->orows = s->ofrom + P;
    s->ochunk = (uint32_t *)(void *)(s->orows + P);
    s->onch = s->ochunk + P;
    s->oacc = (float *)(void *)(s->onch + P);
    for (size_t x = 0; x < P; x++) {
        const mox__csr_t *bl = back_list(m, (int)x);
        uint64_t n = bl->off[x + 1] - bl->off[x];
        s->oitem[x] = bl->item + bl->off[x];
        s->ocur[x] = 0;
        s->oend[x] = n;
        s->ofrom[x] = s->recv + s->recv_off[x] * rb;
        s->ochunk[x] = 0;
        int l = c->topo.local_of[x];
        if (!s->shared || remote(m, (int)x) || (int)x == c->rank) {
            /* In messages, as post_initial posted them. */
            s->onch[x] = bl == &m->hop ? mox__moe_chunks(m, n, m->rec_bytes)
                                       : (n != 0);
            s->oavail[x] = 0;
            continue;
        }
        s->onch[x] = 0;
        s->oavail[x] = n; /* its note came */
        if (!n || !s->cnote[l].gen)
            continue;
        /* x's rows for me are in its receive buffer (checked to lie
         * inside it; mapped as for dispatch). */
        const note_t *nt = &s->cnote[l];
        char *base;
        if (nt->off > nt->bytes || n * rb > nt->bytes - nt->off)
            return mox__fail(c, MOX_ERR_PROTOCOL, "moe_combine: rank %zu "
                             "says its %llu rows for me are at byte %llu of "
                             "its %llu-byte receive buffer", x,
                             (unsigned long long)n,
                             (unsigned long long)nt->off,
                             (unsigned long long)nt->bytes);
        st = mox__moe_map_peer(m, 0, (int)x, nt->gen, (size_t)nt->bytes,
                               &base);
        if (st != MOX_OK)
            return st;
        s->ofrom[x] = base + nt->off;
    }
    s->out_ready = 1;
    return MOX_OK;
}

/* Chunks of rows from x that arrived, in order, each of the size agreed;
 * a failed one stops here (it is reported with every transfer's status
 * at the end). */
static mox_status_t out_arrived(combine_t *s, size_t x)
{
    uint64_t n = s->oend[x];
    uint32_t nch = s->onch[x];
    while (s->ochunk[x] < nch) {
        uint32_t k = s->ochunk[x];
        const mox__treq_t *r = &s->brecv[x * CMAX + k];
        if (!r->done || r->status != MOX_OK)
            return MOX_OK;
        uint64_t hi = mox__moe_chunk_lo(n, nch, k + 1);
        uint64_t want = (hi - mox__moe_chunk_lo(n, nch, k)) * s->row_bytes;
        if (r->bytes != want)
            return mox__fail(s->m->comm, MOX_ERR_PROTOCOL, "moe_combine: "
                             "rank %zu returned %zu bytes of rows in message "
                             "%u, %llu expected", x, r->bytes, k,
                             (unsigned long long)want);
        s->oavail[x] = hi;
        s->ochunk[x] = k + 1;
    }
    return MOX_OK;
}

/* Sum tokens from out_t on while all their rows are in, at most `budget`
 * of them (so that a long run does not keep the transports waiting). */
static mox_status_t out_sum(combine_t *s, size_t budget)
{
    struct mox_moe *m = s->m;
    size_t H = (size_t)m->H, rb = s->row_bytes, P = (size_t)m->P;
    size_t T = (size_t)m->num_tokens, ob = H * m->x_elem;
    uint64_t *cur = s->ocur;
    for (; s->out_t < T && budget; s->out_t++, budget--) {
        size_t t = s->out_t, n = 0;
        for (size_t x = 0; x < P; x++) {
            if (cur[x] >= s->oend[x] || (size_t)s->oitem[x][cur[x]] != t ||
                cur[x] < s->oavail[x])
                continue;
            mox_status_t st = out_arrived(s, x);
            if (st != MOX_OK)
                return st;
            if (cur[x] >= s->oavail[x])
                return MOX_OK; /* a row of t is not here yet */
        }
        for (size_t x = 0; x < P; x++)
            if (cur[x] < s->oend[x] && (size_t)s->oitem[x][cur[x]] == t)
                s->orows[n++] = s->ofrom[x] + cur[x]++ * rb;
        /* The next token's first row, when it is here, follows the last. */
        const char *after = NULL;
        for (size_t x = 0; x < P && !after; x++)
            if (cur[x] < s->oavail[x] &&
                (size_t)s->oitem[x][cur[x]] == t + 1)
                after = s->ofrom[x] + cur[x] * rb;
        memset(s->oacc, 0, H * sizeof(float));
        mox__accumulate_rows_f32(m->comb_elem == 4 ? MOX_DTYPE_F32
                                                   : MOX_DTYPE_BF16,
                                 (const void *const *)s->orows, n, s->oacc,
                                 H, after);
        mox__from_f32(m->cfg.x_dtype, s->oacc, (char *)s->out + t * ob, H);
    }
    return MOX_OK;
}

/* While rows come in: sum what can be summed. */
#define OUT_BUDGET 16 /* tokens per progress call */
static void out_step(combine_t *s)
{
    if (s->out_err != MOX_OK)
        return;
    if (!s->out_ready)
        s->out_err = out_setup(s);
    if (s->out_err == MOX_OK && s->out_ready)
        s->out_err = out_sum(s, OUT_BUDGET);
}

/* Every transfer is over: sum the rest and check that every row was
 * used. */
static mox_status_t out_finish(combine_t *s)
{
    mox_status_t st = s->out_err;
    if (st == MOX_OK && !s->out_ready)
        st = out_setup(s);
    if (st == MOX_OK)
        st = out_sum(s, SIZE_MAX);
    if (st != MOX_OK)
        return st;
    for (size_t x = 0; x < (size_t)s->m->P; x++)
        if (s->ocur[x] != s->oend[x])
            return mox__fail(s->m->comm, MOX_ERR_PROTOCOL, "moe_combine: "
                             "rank %zu's rows for this rank are not in token "
                             "order", x);
    return MOX_OK;
}

static int backs_pending(const combine_t *s)
{
    for (int l = 0; l < s->L; l++)
        if (s->cwait[l])
            return 1;
    return 0;
}

/* Receives are posted only for nonzero counts: an empty one is a peer's
 * bug. */
static mox_status_t check_all(mox__comm_t *c, const mox__treq_t *t, size_t n)
{
    mox_status_t st = mox__treqs_check(c, t, n, "moe combine");
    for (size_t i = 0; i < n && st == MOX_OK; i++)
        if (t[i].posted && !t[i].is_send && t[i].bytes == 0)
            st = mox__fail(c, MOX_ERR_PROTOCOL, "moe combine: empty message "
                           "from rank %d", t[i].peer);
    return st;
}

static mox_status_t progress(struct mox_req *req)
{
    combine_t *s = req->state;
    struct mox_moe *m = s->m;
    mox_status_t st = s->start_error;
    if (st != MOX_OK)
        return st;
    if ((st = back_ready(req, s)) != MOX_OK)
        return st;
    if (s->phase == 1) {
        if ((st = sum_ready(req, s)) != MOX_OK)
            return st;
        if (s->summed) {
            s->phase = 2;
            MOX_TRACE("moe", "combine %llu: sums sent after %.3f ms",
                      (unsigned long long)req->seq,
                      (double)(mox__now_ns() - req->start_ns) / 1e6);
        }
    }
    if (!s->finished) {
        if (s->phase == 1 || backs_pending(s) ||
            !mox__treqs_done(s->t, s->nt_data)) {
            out_step(s);
            return MOX_IN_PROGRESS;
        }
        st = s->out_ready ? MOX_OK : check_notes(s);
        if (st == MOX_OK)
            st = check_all(m->comm, s->t, s->nt_data);
        MOX_TRACE("moe", "combine %llu: all rows back after %.3f ms, "
                  "%llu of %lld tokens summed",
                  (unsigned long long)req->seq,
                  (double)(mox__now_ns() - req->start_ns) / 1e6,
                  (unsigned long long)s->out_t, (long long)m->num_tokens);
        s->fin_st = st == MOX_OK ? out_finish(s) : st;
        s->finished = 1;
        /* Whatever happened, the ranks whose rows I read may go on. */
        for (int l = 0; l < s->L; l++) {
            if (!s->cnote[l].gen)
                continue;
            int x = mox__topo_rank_at(&m->comm->topo, m->comm->node, l);
            mox_status_t sst = mox__isend(m->comm, x,
                                          mox__tag(req->seq, STEP_DONE),
                                          &s->done, sizeof s->done,
                                          &s->dsend[l]);
            if (s->fin_st == MOX_OK)
                s->fin_st = sst;
        }
    }
    if (!mox__treqs_done(s->t, s->nt))
        return MOX_IN_PROGRESS;
    if (s->fin_st != MOX_OK)
        return s->fin_st;
    return mox__treqs_check(m->comm, s->dsend, 2 * (size_t)s->L,
                            "moe combine");
}

mox_status_t mox__moe_combine_start(struct mox_req *req, struct mox_moe *m,
                                    const void *expert_out, void *out)
{
    mox__comm_t *c = m->comm;
    int L = c->local_size;
    size_t P = (size_t)m->P;
    /* Partial-row messages from one local rank: at most CMAX per source I
     * serve. */
    size_t nsrv = 0;
    for (int x = 0; x < m->P; x++)
        nsrv += (size_t)served_remote(m, x);
    size_t pmax = nsrv * CMAX;
    size_t nt = 3 * P * CMAX + (size_t)L * pmax + 4 * (size_t)L;
    size_t bytes = sizeof(combine_t) + nt * sizeof(mox__treq_t) +
                   (2 * P + (size_t)L) * sizeof(uint64_t) +
                   ((size_t)L * pmax + 3 * (size_t)L) * sizeof(uint64_t) +
                   2 * (size_t)L * sizeof(mox__place_t) +
                   2 * (size_t)L * sizeof(note_t) +
                   (size_t)L * sizeof(uint64_t) + (size_t)L;
    combine_t *s = calloc(1, bytes);
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe_combine: no memory");
    req->state = s;
    s->m = m;
    s->expert_out = expert_out;
    s->out = out;
    s->L = L;
    s->row_bytes = (size_t)m->H * m->comb_elem;
    s->t = (mox__treq_t *)(s + 1);
    s->nt = nt;
    s->psend = s->t;
    s->bsend = s->psend + P * CMAX;
    s->brecv = s->bsend + P * CMAX;
    s->precv = s->brecv + P * CMAX;
    s->cpsend = s->precv + (size_t)L * pmax;
    s->cprecv = s->cpsend + L;
    s->dsend = s->cprecv + L; /* last: not waited for before summing */
    s->drecv = s->dsend + L;
    s->nt_data = nt - 2 * (size_t)L;
    s->pmax = pmax;
    s->send_off = (uint64_t *)(s->t + nt);
    s->recv_off = s->send_off + P;
    s->part_off = s->recv_off + P;
    s->prow = s->part_off + L;
    s->pn = s->prow + (size_t)L * pmax;
    s->pdone = s->pn + L;
    s->parrived = s->pdone + L;
    s->cpout = (mox__place_t *)(void *)(s->parrived + L);
    s->cpin = s->cpout + L;
    s->cnote = (note_t *)(void *)(s->cpin + L);
    s->nout = s->cnote + L;
    s->dnote = (uint64_t *)(void *)(s->nout + L);
    s->cwait = (uint8_t *)(s->dnote + L);
    req->treqs = s->t;
    req->ntreqs = nt;
    req->progress = progress;
    s->phase = m->forward ? 1 : 2;
    s->start_error = post_initial(req, s);
    MOX_TRACE("moe", "combine %llu: posted after %.3f ms",
              (unsigned long long)req->seq,
              (double)(mox__now_ns() - req->start_ns) / 1e6);
    return MOX_OK;
}
