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
 */
#include "core/dtype.h"
#include "core/moe.h"
#include "core/log.h"

#include <stdlib.h>
#include <string.h>

enum { STEP_PART = 1, STEP_BACK = 2 };

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
    float *fwd_accum;               /* [hopin records][H] (forwarder) */
    mox__iov_t *iov;                /* [P] pieces of gather sends */
    size_t niov;
    mox__treq_t *t;
    mox__treq_t *psend, *precv, *bsend, *brecv;
    size_t nt;
} combine_t;

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

static void accumulate(const struct mox_moe *m, const char *wire_row,
                       float *acc)
{
    mox__accumulate_f32(m->comb_elem == 4 ? MOX_DTYPE_F32 : MOX_DTYPE_BF16,
                        wire_row, acc, (size_t)m->H);
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
    s->recv = mox__buf_reserve(&m->comb_recv, recv_rows * rb + 8);
    float *tmp = malloc((size_t)m->H * sizeof *tmp + 8);
    if (!s->send || !s->recv || !tmp) {
        free(tmp);
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe_combine: no memory for "
                         "%llu + %llu rows", (unsigned long long)send_rows,
                         (unsigned long long)recv_rows);
    }
    mox_status_t st = MOX_OK;
    uint64_t btag = mox__tag(req->seq, STEP_BACK);
    uint64_t ptag = mox__tag(req->seq, STEP_PART);
    for (int x = 0; x < m->P && st == MOX_OK; x++) {
        const mox__csr_t *bl = back_list(m, x);
        uint64_t n = bl->off[x + 1] - bl->off[x];
        if (n)
            st = mox__irecv(c, x, btag, s->recv + s->recv_off[x] * rb, n * rb,
                            &s->brecv[x]);
    }
    for (int l = 0; l < s->L && st == MOX_OK; l++) {
        uint64_t n = m->forward && l != c->local_rank
                         ? m->fwd.off[l + 1] - m->fwd.off[l] : 0;
        if (n)
            st = mox__irecv(c, mox__topo_rank_at(&c->topo, c->node, l), ptag,
                            s->recv + s->part_off[l] * rb, n * rb,
                            &s->precv[l]);
    }
    /* Direct rows back to their sources. */
    for (int i = 0; i < m->P && st == MOX_OK; i++) {
        int x = (c->rank + i) % m->P;
        uint64_t n = m->final_in[x];
        if (!direct_back(m, x) || !n)
            continue;
        const char *rows = s->expert_out +
                           m->final_off[x] * (size_t)m->H * m->x_elem;
        if (!same_format(m)) {
            char *dst = s->send + s->send_off[x] * rb;
            to_wire(m, rows, dst, n, tmp);
            rows = dst;
        }
        /* Rows of one source are contiguous in expert_out: sent in place
         * when the wire format is x's own. */
        st = mox__isend(c, x, btag, rows, n * rb, &s->bsend[x]);
    }
    /* Partial rows to each rail peer of my node that forwarded to me: rows
     * of the remote sources it serves, in source order. */
    uint64_t pos = part_send_base;
    for (int l = 0; l < s->L && st == MOX_OK; l++) {
        int h = mox__topo_rank_at(&c->topo, c->node, l);
        if (!m->fwd_in[l])
            continue;
        /* The rows of each served source are contiguous in expert_out:
         * in x's own format they go as one gather send, without packing. */
        size_t nv = 0;
        for (int x = 0; x < m->P; x++)
            if (m->forward && remote(m, x) &&
                mox__moe_forwarder_for(m, x) == h && m->final_in[x])
                s->iov[s->niov + nv++] = (mox__iov_t){
                    s->expert_out + m->final_off[x] * (size_t)m->H * m->x_elem,
                    m->final_in[x] * rb};
        st = same_format(m) ? mox__isendv(c, h, ptag, s->iov + s->niov, nv,
                                          m->fwd_in[l] * rb, &s->psend[l])
                            : MOX_ERR_UNSUPPORTED;
        s->niov += nv;
        if (st != MOX_ERR_UNSUPPORTED)
            continue;
        char *start = s->send + pos * rb;
        for (size_t v = 0; v < nv; v++) {
            const mox__iov_t *piece = &s->iov[s->niov - nv + v];
            to_wire(m, piece->base, s->send + pos * rb, piece->len / rb, tmp);
            pos += piece->len / rb;
        }
        st = mox__isend(c, h, ptag, start, m->fwd_in[l] * rb, &s->psend[l]);
    }
    free(tmp);
    return st;
}

/*
 * Forwarder: partial rows of every local rank are here; sum them per
 * record in local-rank order and send one row per record back. Record by
 * record, as the source does with its tokens: each local rank's rows are
 * in record order, so a cursor per rank finds a record's rows, which are
 * summed into one cache-resident f32 row and written to the send area
 * once; each source's rows go as soon as they are summed.
 */
static mox_status_t post_sums(struct mox_req *req, combine_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t H = (size_t)m->H, rb = s->row_bytes, L = (size_t)s->L;
    size_t me = (size_t)c->local_rank;
    uint64_t *cur = mox__buf_reserve(&m->comb_accum, 2 * L * sizeof(uint64_t) +
                                                         H * sizeof(float) + 8);
    if (!cur)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe_combine: no memory to "
                         "sum records");
    uint64_t *end = cur + L;
    float *acc = (float *)(void *)(end + L);
    for (size_t l = 0; l < L; l++) {
        cur[l] = m->fwd.off[l];
        end[l] = m->fwd.off[l + 1];
    }
    /* My own rows come straight from expert_out: the served sources' rows,
     * in source then token order, as my list; (ox, ok) walks them. */
    int ox = 0;
    uint64_t ok = 0;
    mox_status_t st = MOX_OK;
    uint64_t btag = mox__tag(req->seq, STEP_BACK);
    for (int x = 0; x < m->P && st == MOX_OK; x++) {
        if (!served_remote(m, x) || !m->hop_in[x])
            continue;
        char *dst = s->send + s->send_off[x] * rb;
        for (uint64_t r = m->hopin_first[x]; r < m->hopin_first[x + 1]; r++) {
            memset(acc, 0, H * sizeof(float));
            for (size_t l = 0; l < L; l++) {
                if (cur[l] >= end[l] || m->fwd_rec[cur[l]] != r)
                    continue;
                if (l != me) {
                    accumulate(m, s->recv + (s->part_off[l] + cur[l]++ -
                                             m->fwd.off[l]) * rb, acc);
                    continue;
                }
                while (ox < m->P &&
                       (!served_remote(m, ox) || ok >= m->final_in[ox])) {
                    ox++;
                    ok = 0;
                }
                if (ox == m->P)
                    return mox__fail(c, MOX_ERR_PROTOCOL, "moe_combine: more "
                                     "own rows listed than received");
                mox__accumulate_f32(m->cfg.x_dtype,
                                    s->expert_out + (m->final_off[ox] + ok++) *
                                                        H * m->x_elem,
                                    acc, H);
                cur[l]++;
            }
            char *row = dst + (r - m->hopin_first[x]) * rb;
            if (m->comb_elem == 4)
                memcpy(row, acc, H * sizeof(float));
            else
                mox__from_f32(MOX_DTYPE_BF16, acc, row, H);
        }
        st = mox__isend(c, x, btag, dst, m->hop_in[x] * rb, &s->bsend[x]);
    }
    for (size_t l = 0; l < L && st == MOX_OK; l++)
        if (cur[l] != end[l])
            st = mox__fail(c, MOX_ERR_PROTOCOL, "moe_combine: local rank "
                           "%zu's rows are not in record order", l);
    return st;
}

/*
 * Source: sum the rows returned for each token in rank order, then write
 * it. Token by token: each rank's rows for me are in token order, so a
 * cursor per rank finds the token's rows; they are summed into one
 * cache-resident f32 row and written once. (Summing every rank's rows into
 * a T x H f32 array and converting it afterwards moved about 4 x the
 * bytes; on 1 x 8 that array was a fifth of the whole run.) Per element
 * the additions are the same, in the same order, as in that array.
 */
static mox_status_t finish_out(combine_t *s)
{
    struct mox_moe *m = s->m;
    size_t H = (size_t)m->H, rb = s->row_bytes, P = (size_t)m->P;
    size_t T = (size_t)m->num_tokens, ob = H * m->x_elem;
    uint64_t *cur = mox__buf_reserve(&m->comb_part, 3 * P * sizeof(uint64_t) +
                                                        H * sizeof(float) + 8);
    if (!cur)
        return mox__fail(m->comm, MOX_ERR_NO_MEMORY, "moe_combine: no memory "
                         "for %zu tokens", T);
    uint64_t *end = cur + P;
    const int32_t **item = (const int32_t **)(void *)(end + P);
    float *acc = (float *)(void *)(item + P);
    for (size_t x = 0; x < P; x++) {
        const mox__csr_t *bl = back_list(m, (int)x);
        item[x] = bl->item + bl->off[x];
        cur[x] = 0;
        end[x] = bl->off[x + 1] - bl->off[x];
    }
    for (size_t t = 0; t < T; t++) {
        memset(acc, 0, H * sizeof(float));
        for (size_t x = 0; x < P; x++)
            if (cur[x] < end[x] && (size_t)item[x][cur[x]] == t)
                accumulate(m, s->recv + (s->recv_off[x] + cur[x]++) * rb, acc);
        mox__from_f32(m->cfg.x_dtype, acc, (char *)s->out + t * ob, H);
    }
    for (size_t x = 0; x < P; x++)
        if (cur[x] != end[x])
            return mox__fail(m->comm, MOX_ERR_PROTOCOL, "moe_combine: rank "
                             "%zu's rows for this rank are not in token order",
                             x);
    return MOX_OK;
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
    if (s->phase == 1) {
        if (!mox__treqs_done(s->precv, (size_t)s->L))
            return MOX_IN_PROGRESS;
        if ((st = check_all(m->comm, s->precv, (size_t)s->L)) != MOX_OK)
            return st;
        s->phase = 2;
        MOX_TRACE("moe", "combine %llu: partial rows in after %.3f ms",
                  (unsigned long long)req->seq,
                  (double)(mox__now_ns() - req->start_ns) / 1e6);
        if ((st = post_sums(req, s)) != MOX_OK)
            return st;
        MOX_TRACE("moe", "combine %llu: sums sent after %.3f ms",
                  (unsigned long long)req->seq,
                  (double)(mox__now_ns() - req->start_ns) / 1e6);
    }
    if (!mox__treqs_done(s->t, s->nt))
        return MOX_IN_PROGRESS;
    if ((st = check_all(m->comm, s->t, s->nt)) != MOX_OK)
        return st;
    MOX_TRACE("moe", "combine %llu: all rows back after %.3f ms",
              (unsigned long long)req->seq,
              (double)(mox__now_ns() - req->start_ns) / 1e6);
    return finish_out(s);
}

mox_status_t mox__moe_combine_start(struct mox_req *req, struct mox_moe *m,
                                    const void *expert_out, void *out)
{
    mox__comm_t *c = m->comm;
    int L = c->local_size;
    size_t nt = 2 * (size_t)m->P + 2 * (size_t)L;
    size_t bytes = sizeof(combine_t) + nt * sizeof(mox__treq_t) +
                   (2 * (size_t)m->P + (size_t)L) * sizeof(uint64_t) +
                   (size_t)m->P * sizeof(mox__iov_t);
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
    s->precv = s->psend + L;
    s->bsend = s->precv + L;
    s->brecv = s->bsend + m->P;
    s->send_off = (uint64_t *)(s->t + nt);
    s->recv_off = s->send_off + m->P;
    s->part_off = s->recv_off + m->P;
    s->iov = (mox__iov_t *)(s->part_off + L);
    req->treqs = s->t;
    req->ntreqs = nt;
    req->progress = progress;
    s->phase = m->forward ? 1 : 2;
    s->start_error = post_initial(req, s);
    return MOX_OK;
}
