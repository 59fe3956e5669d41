/*
 * MoE dispatch: notify (count exchange) then data, with node dedup.
 *
 * 1. notify: every rank tells every rank how many records it will send it
 *    as first hop, how many rows it will finally receive from it, its
 *    (token, expert) counts per local expert, and whether its routing was
 *    valid. It is also the agreement point: a bad expert id on any rank
 *    makes every rank fail the same way before any data moves, and the
 *    communicator stays usable.
 * 2. hop: each source sends every first hop its records in token order
 *    (dedup: the rail peer of each remote node, the rank itself inside the
 *    node). A message that crosses the network is cut into up to
 *    HOP_CHUNKS_MAX chunks of about MOX_MOE_CHUNK_SIZE, by record count, so
 *    that both ends know the cut from the count notify gave.
 * 3. forward (dedup): as each chunk arrives, a rail peer sends each rank of
 *    its node the records of that chunk the rank needs (one message per
 *    chunk and rank, none when empty), sources in rank order and each
 *    source's chunks in order, so forwarding overlaps the network. A rank
 *    receives one forwarder's messages one after another into one area,
 *    by source then token; notify told it how many rows each source has.
 * 4. unpack: rows in (source rank, token) order into the caller's buffers.
 */
#include "core/dtype.h"
#include "core/moe.h"
#include "core/log.h"

#include <stdlib.h>
#include <string.h>

enum { STEP_NOTIFY = 1, STEP_HOP = 2, STEP_FWD = 3, STEP_HIDDEN = 4,
       STEP_PLACE = 5 };
#define NOTIFY_MAGIC 0x4e584f4du /* "MOXN" */
#define HOP_CHUNKS_MAX MOX_MOE_CHUNKS_MAX

typedef mox__place_t place_t;
#define PLACE_MAGIC MOX_PLACE_MAGIC

typedef struct {
    struct mox_moe *m;
    mox_moe_output_t *out;
    int notify_only, phase;
    mox_status_t start_error;
    int L, me_local;
    mox__treq_t *t;
    mox__treq_t *nsend, *nrecv, *hsend, *hrecv, *fsend, *frecv;
    mox__treq_t *xsend, *xrecv;  /* hidden blocks of split messages */
    char *hidden_in;             /* where split hidden blocks land: recv_x,
                                    or scratch when it cannot take them */
    size_t nt;
    /* Forwarding, as hop chunks come in: the remote sources I serve in
     * rank order, which one and which chunk is next, and how many forward
     * sends are out. Per local rank, records so far in its region of
     * fwdrec/fwdiov (room `fcap` each). */
    int *srv, nsrv, fcur;
    uint32_t fchunk;
    size_t nfsend, fsend_max;
    uint64_t *fcount, fcap;
    int forwarded;               /* every served chunk forwarded */
    int hops_in;                 /* every hop message arrived (traced) */
    /* Receiving forwards: per local forwarder, the source whose rows come
     * now (-1: none left), bytes of it so far, and where the next lands. */
    int *rsrc;
    uint64_t *rgot, *roff;
    /* Rows written as their records arrive (forwarded ones, and those a
     * forwarder keeps), while the network still works, when the output
     * can take them all; urow[src] counts a forwarder's own. */
    int early;
    uint64_t *urow;
    float *utmp;
    /* Packing the records of network hops, one chunk per progress call
     * so the transports move the chunks already posted in between: the
     * destinations in the order they are visited, the next one, and per
     * destination the next chunk (pknext[h]). */
    int *pkdest, npk, pkcur, pkleft;
    uint32_t *pknext;            /* [P] */
    float *ptmp;                 /* an H-float encode row */
    const char **first;          /* [num_tokens] a token's first record */
    /* Shared receive buffers (mox_moe_recv_buffer): whether mine takes
     * this dispatch's rows from local sources; per local rank, the place
     * messages, and whether my rows for it wait for its place. */
    int use_rbuf;
    mox__treq_t *plsend, *plrecv; /* [L] */
    place_t *plout, *plin;        /* [L] */
    uint8_t *pwait;               /* [L] */
} dispatch_t;

static mox_status_t next_forward_recv(struct mox_req *req, dispatch_t *s,
                                      int first);
static void write_row(const struct mox_moe *m, mox_moe_output_t *o,
                      uint64_t row, int src, const char *rec, int hidden,
                      float *tmp);

/* Chunks of a network hop message of n records (0 when empty). */
static uint32_t hop_chunks(const struct mox_moe *m, uint64_t n)
{
    return mox__moe_chunks(m, n, m->rec_bytes);
}

static uint64_t chunk_lo(uint64_t n, uint32_t nch, uint32_t c)
{
    return mox__moe_chunk_lo(n, nch, c);
}

/*
 * Inside a node a source's message to a rank is split in two: the records'
 * meta blocks, and the hidden vectors as one block in x's own format that
 * lands straight in recv_x at that source's rows (they are contiguous: rows
 * are ordered by source). The wire format (bf16, fp8) is for the network:
 * inside a node it would only cost conversions and precision, so rows from
 * the same node arrive bit-exact whatever MOX_MOE_WIRE says.
 */
static int split_with(const struct mox_moe *m, int peer)
{
    return !m->broadcast && m->comm->topo.node_of[peer] == m->comm->node;
}

/* Notify message fields (little-endian host order: peers share the ABI). */
typedef struct {
    uint32_t magic, bad;
    uint64_t seq, fingerprint, n_hop, n_final;
    int64_t bad_token, bad_value;
    int32_t bad_slot;
    int32_t has_rbuf; /* the sender has a shared receive buffer: local
                         sources wait for its place message */
} notify_hdr_t;


static int node_of(const struct mox_moe *m, int r)
{
    return m->comm->topo.node_of[r];
}

static int is_remote(const struct mox_moe *m, int r)
{
    return node_of(m, r) != m->comm->node;
}

/* Owner rank of the expert in slot j of a record's meta, or -1. */
static int rec_owner(const struct mox_moe *m, const char *rec, int j)
{
    int32_t e;
    memcpy(&e, rec + 4 + 4 * (size_t)j, 4);
    return e < 0 || e >= m->E ? -1 : e / m->E_local;
}

static int rec_for(const struct mox_moe *m, const char *rec, int rank)
{
    for (int j = 0; j < m->k; j++)
        if (rec_owner(m, rec, j) == rank)
            return 1;
    return 0;
}

/* ---- notify ----------------------------------------------------------- */

static mox_status_t build_notify(struct mox_req *req, dispatch_t *s,
                                 mox_status_t route_st, int64_t bad_token,
                                 int bad_slot, int64_t bad_value)
{
    int bad_kind = s->m->input_bad;
    if (!bad_kind && route_st != MOX_OK)
        bad_kind = bad_value < -1 || bad_value >= s->m->E ? MOX_MOE_BAD_RANGE
                                                          : MOX_MOE_BAD_REPEAT;
    struct mox_moe *m = s->m;
    size_t nb = m->notify_bytes;
    /* Local sources will wait for my place message when I say I have a
     * shared receive buffer: say it only when I do, and remember it (a
     * buffer made after this notify serves the next one). */
    m->rbuf_told = m->rbuf.p != NULL;
    char *buf = mox__buf_reserve(&m->notify, 2 * (size_t)m->P * nb);
    if (!buf)
        return mox__fail(m->comm, MOX_ERR_NO_MEMORY, "moe: no memory");
    memset(buf, 0, 2 * (size_t)m->P * nb);
    for (int x = 0; x < m->P; x++) {
        notify_hdr_t h = {NOTIFY_MAGIC, (uint32_t)bad_kind, req->seq,
                          m->fingerprint, 0, 0, bad_token, bad_value,
                          bad_slot, m->rbuf_told};
        if (route_st == MOX_OK) {
            h.n_hop = m->hop.off[x + 1] - m->hop.off[x];
            h.n_final = m->final_out[x];
        }
        memcpy(buf + (size_t)x * nb, &h, sizeof h);
    }
    if (route_st != MOX_OK)
        return MOX_OK;
    /* (token, expert) pairs per expert, in the owner's message. */
    for (int64_t t = 0; t < m->num_tokens; t++)
        for (int j = 0; j < m->k; j++) {
            int64_t e = mox__moe_expert(m, m->in.topk_idx, t, j);
            if (e < 0)
                continue;
            int owner = (int)(e / m->E_local);
            uint64_t *cnt = (uint64_t *)(buf + (size_t)owner * nb +
                                         MOX_MOE_NOTIFY_FIXED);
            cnt[e - (int64_t)owner * m->E_local]++;
        }
    return MOX_OK;
}

static mox_status_t post_notify(struct mox_req *req, dispatch_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t nb = m->notify_bytes;
    char *out = m->notify.p, *in = out + (size_t)m->P * nb;
    uint64_t tag = mox__tag(req->seq, STEP_NOTIFY);
    mox_status_t st = MOX_OK;
    for (int i = 0; i < m->P && st == MOX_OK; i++) {
        int x = (c->rank - i + m->P) % m->P;
        st = mox__irecv(c, x, tag, in + (size_t)x * nb, nb, &s->nrecv[x]);
    }
    for (int i = 0; i < m->P && st == MOX_OK; i++) {
        int x = (c->rank + i) % m->P;
        st = mox__isend(c, x, tag, out + (size_t)x * nb, nb, &s->nsend[x]);
    }
    return st;
}

/* Counts the forwarders of my node will send me (dedup). */
static void count_forwarded(struct mox_moe *m, int me_local, int L)
{
    mox__comm_t *c = m->comm;
    memset(m->fwd_in, 0, (size_t)L * sizeof *m->fwd_in);
    if (!m->forward)
        return;
    for (int src = 0; src < m->P; src++) {
        if (!is_remote(m, src))
            continue;
        int h = mox__moe_forwarder_for(m, src);
        int hl = c->topo.local_of[h];
        if (hl != me_local)
            m->fwd_in[hl] += m->final_in[src];
    }
}

/* The agreed error every rank reports when one rank's input was bad. */
static mox_status_t report_bad_input(mox__comm_t *c, int rank,
                                     const notify_hdr_t *h, int E)
{
    static const char *const null_of[] = {"x", "topk_idx", "topk_weights"};
    if (h->bad == MOX_MOE_BAD_RANGE || h->bad == MOX_MOE_BAD_REPEAT)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe: rank %d token %lld "
                         "slot %d has expert %lld, %s (num_experts %d)", rank,
                         (long long)h->bad_token, h->bad_slot,
                         (long long)h->bad_value,
                         h->bad == MOX_MOE_BAD_RANGE
                             ? "out of range"
                             : "repeated within the token", E);
    if (h->bad == MOX_MOE_BAD_NUM_TOKENS)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe: rank %d passed "
                         "num_tokens %lld, outside [0, 2^31)", rank,
                         (long long)h->bad_token);
    if (h->bad >= MOX_MOE_BAD_NULL_X && h->bad <= MOX_MOE_BAD_NULL_WEIGHTS)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe: rank %d passed %lld "
                         "tokens with %s NULL", rank, (long long)h->bad_token,
                         null_of[h->bad - MOX_MOE_BAD_NULL_X]);
    return mox__fail(c, MOX_ERR_PROTOCOL, "moe: rank %d sent unknown input "
                     "problem %u", rank, h->bad);
}

static mox_status_t read_notify(struct mox_req *req, dispatch_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t nb = m->notify_bytes;
    const char *in = (const char *)m->notify.p + (size_t)m->P * nb;
    for (int x = 0; x < m->P; x++) {
        mox_status_t st = mox__treq_check(c, &s->nrecv[x], "moe notify");
        if (st == MOX_OK)
            st = mox__treq_check(c, &s->nsend[x], "moe notify");
        if (st != MOX_OK)
            return st;
    }
    memset(m->per_expert_raw, 0, (size_t)m->E_local * sizeof(uint64_t));
    int bad_rank = -1;
    notify_hdr_t bad = {0};
    for (int x = 0; x < m->P; x++) {
        notify_hdr_t h;
        memcpy(&h, in + (size_t)x * nb, sizeof h);
        if (s->nrecv[x].bytes != nb || h.magic != NOTIFY_MAGIC ||
            h.seq != req->seq)
            return mox__fail(c, MOX_ERR_PROTOCOL, "moe: malformed notify "
                             "from rank %d (%zu bytes)", x, s->nrecv[x].bytes);
        if (h.fingerprint != m->fingerprint)
            return mox__fail(c, MOX_ERR_MISMATCH, "moe: rank %d dispatches "
                             "with another configuration than rank %d",
                             x, c->rank);
        if (h.bad && bad_rank < 0) {
            bad_rank = x;
            bad = h;
        }
        m->hop_in[x] = h.n_hop;
        m->final_in[x] = h.n_final;
        const uint64_t *cnt = (const uint64_t *)(in + (size_t)x * nb +
                                                 MOX_MOE_NOTIFY_FIXED);
        for (int e = 0; e < m->E_local; e++)
            m->per_expert_raw[e] += cnt[e];
    }
    if (bad_rank >= 0) {
        req->agreed_error = 1;
        return report_bad_input(c, bad_rank, &bad, m->E);
    }
    m->num_recv = 0;
    for (int x = 0; x < m->P; x++) {
        m->final_off[x] = m->num_recv;
        m->num_recv += m->final_in[x];
    }
    m->final_off[m->P] = m->num_recv;
    uint64_t a = (uint64_t)m->cfg.expert_alignment;
    for (int e = 0; e < m->E_local; e++)
        m->per_expert[e] = (m->per_expert_raw[e] + a - 1) / a * a;
    count_forwarded(m, s->me_local, s->L);
    m->state = MOE_NOTIFIED;
    return MOX_OK;
}

/* ---- hop -------------------------------------------------------------- */

static void encode_hidden(const struct mox_moe *m, const void *x, char *dst,
                          float *tmp)
{
    size_t H = (size_t)m->H;
    mox_dtype_t xt = m->cfg.x_dtype;
    switch (m->cfg.dispatch_wire) {
    case MOX_MOE_WIRE_BF16:
        if (xt == MOX_DTYPE_BF16) {
            memcpy(dst, x, 2 * H);
        } else {
            mox__to_f32(xt, x, tmp, H);
            mox__from_f32(MOX_DTYPE_BF16, tmp, dst, H);
        }
        break;
    case MOX_MOE_WIRE_FP8:
        mox__fp8_encode(xt, x, H, dst);
        break;
    default:
        memcpy(dst, x, m->x_elem * H);
    }
}

static void pack_meta(const struct mox_moe *m, int64_t t, char *rec)
{
    int32_t tok = (int32_t)t;
    memcpy(rec, &tok, 4);
    for (int j = 0; j < m->k; j++) {
        int32_t e = (int32_t)mox__moe_expert(m, m->in.topk_idx, t, j);
        memcpy(rec + 4 + 4 * (size_t)j, &e, 4);
    }
    memcpy(rec + 4 + 4 * (size_t)m->k,
           m->in.topk_weights + (size_t)t * (size_t)m->k, 4 * (size_t)m->k);
}

static void pack_record(const struct mox_moe *m, int64_t t, char *rec,
                        float *tmp)
{
    pack_meta(m, t, rec);
    const char *x = (const char *)m->in.x +
                    (size_t)t * (size_t)m->H * m->x_elem;
    encode_hidden(m, x, rec + m->meta_bytes, tmp);
}

/* Did local rank h say in notify that it has a shared receive buffer? */
static int dest_has_rbuf(const struct mox_moe *m, int h)
{
    notify_hdr_t hd;
    memcpy(&hd, (const char *)m->notify.p +
                    ((size_t)m->P + (size_t)h) * m->notify_bytes,
           sizeof hd);
    return hd.has_rbuf != 0;
}

/* My records for local rank h: the metas, then the hidden block, gathered
 * straight from x when the transport reads it in place (one copy in all),
 * else packed in the records' room. */
static mox_status_t send_split(struct mox_req *req, dispatch_t *s, int h,
                               const mox__iov_t *iov)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t hb = (size_t)m->H * m->x_elem;
    uint64_t n = m->hop.off[h + 1] - m->hop.off[h];
    char *msg = (char *)m->hopout.p + m->hop.off[h] * m->rec_bytes;
    char *hid = msg + n * m->meta_bytes;
    const char *x = m->in.x;
    mox_status_t st = mox__isend(c, h, mox__tag(req->seq, STEP_HOP), msg,
                                 n * m->meta_bytes, &s->hsend[h * HOP_CHUNKS_MAX]);
    uint64_t xtag = mox__tag(req->seq, STEP_HIDDEN);
    if (st == MOX_OK)
        st = iov ? mox__isendv(c, h, xtag, iov + m->hop.off[h], n, n * hb,
                               &s->xsend[h])
                 : MOX_ERR_UNSUPPORTED;
    if (st == MOX_ERR_UNSUPPORTED) {
        for (uint64_t j = 0; j < n; j++) {
            int64_t t = m->hop.item[m->hop.off[h] + j];
            memcpy(hid + j * hb, x + (size_t)t * hb, hb);
        }
        st = mox__isend(c, h, xtag, hid, n * hb, &s->xsend[h]);
    }
    return st;
}

/* Local destinations with a shared receive buffer whose place message
 * arrived: write my rows straight into their buffer and send the metas
 * after them (so the metas' arrival means the rows are there), or, when
 * the buffer does not take them this time, send as usual. */
static mox_status_t place_ready(struct mox_req *req, dispatch_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t hb = (size_t)m->H * m->x_elem;
    for (int l = 0; l < s->L; l++) {
        if (!s->pwait[l] || !s->plrecv[l].done)
            continue;
        s->pwait[l] = 0;
        int h = mox__topo_rank_at(&c->topo, c->node, l);
        const place_t *p = &s->plin[l];
        uint64_t n = m->hop.off[h + 1] - m->hop.off[h];
        mox_status_t st = mox__moe_check_place(c, &s->plrecv[l], p, req->seq,
                                               n, hb, "moe dispatch");
        if (st != MOX_OK)
            return st;
        if (!p->use) {
            if ((st = send_split(req, s, h, m->hopiov.p)) != MOX_OK)
                return st;
            continue;
        }
        char *base;
        st = mox__moe_map_peer(m, 0, h, p->gen, p->bytes, &base);
        if (st != MOX_OK)
            return st;
        const char *x = m->in.x;
        char *dst = base + p->row_off * hb;
        for (uint64_t j = 0; j < n; j++) {
            int64_t t = m->hop.item[m->hop.off[h] + j];
            memcpy(dst + j * hb, x + (size_t)t * hb, hb);
        }
        mox__count_put(c, n * hb);
        char *msg = (char *)m->hopout.p + m->hop.off[h] * m->rec_bytes;
        st = mox__isend(c, h, mox__tag(req->seq, STEP_HOP), msg,
                        n * m->meta_bytes, &s->hsend[h * HOP_CHUNKS_MAX]);
        if (st != MOX_OK)
            return st;
    }
    return MOX_OK;
}

static int places_pending(const dispatch_t *s)
{
    for (int l = 0; l < s->L; l++)
        if (s->pwait[l])
            return 1;
    return 0;
}

/*
 * Pack and send the next chunk of a network hop, visiting destinations in
 * turn (pkcur). A token going to several nodes is encoded once, its later
 * records copied from the first. Chunk by chunk and one per call, so the
 * transports move what is posted while the rest is packed: packing all of
 * it up front kept the links idle for 80-100 ms at 4096 tokens per rank.
 */
static mox_status_t pack_chunk(struct mox_req *req, dispatch_t *s)
{
    struct mox_moe *m = s->m;
    size_t rb = m->rec_bytes;
    for (int tries = 0; tries < s->npk; tries++) {
        int h = s->pkdest[s->pkcur];
        s->pkcur = (s->pkcur + 1) % s->npk;
        uint64_t n = m->hop.off[h + 1] - m->hop.off[h];
        uint32_t nch = hop_chunks(m, n), k = s->pknext[h];
        if (k >= nch)
            continue;
        s->pknext[h] = k + 1;
        s->pkleft--;
        char *msg = (char *)m->hopout.p + m->hop.off[h] * rb;
        uint64_t lo = chunk_lo(n, nch, k), hi = chunk_lo(n, nch, k + 1);
        for (uint64_t j = lo; j < hi; j++) {
            int64_t t = m->hop.item[m->hop.off[h] + j];
            char *rec = msg + j * rb;
            if (s->first && s->first[t])
                memcpy(rec, s->first[t], rb);
            else
                pack_record(m, t, rec, s->ptmp);
            if (s->first && !s->first[t])
                s->first[t] = rec;
        }
        return mox__isend(m->comm, h, mox__tag(req->seq, STEP_HOP),
                          msg + lo * rb, (hi - lo) * rb,
                          &s->hsend[h * HOP_CHUNKS_MAX + k]);
    }
    return MOX_OK;
}

static mox_status_t post_hops(struct mox_req *req, dispatch_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t rb = m->rec_bytes, hb = (size_t)m->H * m->x_elem;
    uint64_t in_total = 0, in_bytes = 0;
    for (int x = 0; x < m->P; x++) {
        m->hopin_off[x] = in_bytes;
        m->hopin_first[x] = in_total;
        in_total += m->hop_in[x];
        in_bytes += m->hop_in[x] * (split_with(m, x) ? m->meta_bytes : rb);
    }
    m->hopin_off[m->P] = in_bytes;
    m->hopin_first[m->P] = in_total;
    /* Hidden blocks go to recv_x when it can take all rows, else to
     * scratch (the overflow is reported after everything arrived). */
    s->hidden_in = s->out && s->out->recv_x &&
                           m->num_recv <= s->out->capacity
                       ? s->out->recv_x
                       : mox__buf_reserve(&m->hidscratch, m->num_recv * hb + 8);
    s->early = s->out && m->num_recv <= s->out->capacity;
    s->urow = mox__buf_reserve(&m->urow, (size_t)m->P * sizeof(uint64_t) +
                                             2 * (size_t)m->H * sizeof(float) +
                                             8);
    if (!s->urow)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory");
    memset(s->urow, 0, (size_t)m->P * sizeof(uint64_t));
    s->utmp = (float *)(void *)(s->urow + m->P);
    s->ptmp = s->utmp + m->H;
    uint64_t fwd_total = 0;
    for (int l = 0; l < s->L; l++) {
        m->fwdin_off[l] = fwd_total * rb;
        fwd_total += m->fwd_in[l];
    }
    m->fwdin_off[s->L] = fwd_total * rb;
    uint64_t out_total = m->hop.off[m->P];
    char *hin = mox__buf_reserve(&m->hopin, in_bytes + 8);
    char *fin = mox__buf_reserve(&m->fwdin, fwd_total * rb + 8);
    char *hout = mox__buf_reserve(&m->hopout, out_total * rb + 8);
    if (!hin || !fin || !hout || !s->hidden_in) {
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory for %llu + "
                         "%llu records", (unsigned long long)in_total,
                         (unsigned long long)out_total);
    }
    /* My shared receive buffer takes the rows of local sources when it
     * is this dispatch's recv_x and holds them all (they then write them
     * there and send only the metas); each local source learns it from
     * my place message. */
    s->use_rbuf = m->rbuf_told && s->out && s->out->recv_x == m->rbuf.p &&
                  m->num_recv <= s->out->capacity &&
                  m->num_recv * hb <= m->rbuf.bytes;
    /* Where each token's record was first packed (NULL: not yet). */
    const char **first = mox__buf_reserve(&m->recfirst,
                                          (size_t)m->num_tokens *
                                                  sizeof *first + 8);
    if (first)
        memset(first, 0, (size_t)m->num_tokens * sizeof *first);
    s->first = first;
    mox_status_t st = MOX_OK;
    uint64_t htag = mox__tag(req->seq, STEP_HOP);
    uint64_t xtag = mox__tag(req->seq, STEP_HIDDEN);
    for (int x = 0; x < m->P && st == MOX_OK; x++) {
        if (!m->hop_in[x])
            continue;
        if (split_with(m, x)) {
            st = mox__irecv(c, x, htag, hin + m->hopin_off[x],
                            m->hop_in[x] * m->meta_bytes,
                            &s->hrecv[x * HOP_CHUNKS_MAX]);
            int l = c->topo.local_of[x];
            if (st == MOX_OK && m->rbuf_told && x != c->rank) {
                s->plout[l] = (place_t){PLACE_MAGIC, (uint32_t)s->use_rbuf,
                                        req->seq, m->rbuf.gen, m->rbuf.bytes,
                                        m->final_off[x], m->hop_in[x]};
                st = mox__isend(c, x, mox__tag(req->seq, STEP_PLACE),
                                &s->plout[l], sizeof(place_t), &s->plsend[l]);
            }
            if (st == MOX_OK && !(s->use_rbuf && x != c->rank))
                st = mox__irecv(c, x, xtag,
                                s->hidden_in + m->final_off[x] * hb,
                                m->hop_in[x] * hb, &s->xrecv[x]);
            continue;
        }
        uint64_t n = m->hop_in[x];
        uint32_t nch = hop_chunks(m, n);
        for (uint32_t k = 0; k < nch && st == MOX_OK; k++) {
            uint64_t lo = chunk_lo(n, nch, k), hi = chunk_lo(n, nch, k + 1);
            st = mox__irecv(c, x, htag, hin + m->hopin_off[x] + lo * rb,
                            (hi - lo) * rb, &s->hrecv[x * HOP_CHUNKS_MAX + k]);
        }
    }
    /* Forwarded rows: the first source of each forwarder (the next are
     * posted as these arrive, see take_forwards). */
    for (int l = 0; l < s->L; l++) {
        s->rsrc[l] = -1;
        s->rgot[l] = 0;
        s->roff[l] = m->fwdin_off[l];
    }
    if (m->forward && st == MOX_OK)
        st = next_forward_recv(req, s, 1);
    /* Forwarding: room for every served record in every local rank's
     * region (fwdrec items, fwdiov pieces, fwdout when packing). */
    s->fcap = 0;
    for (int i = 0; i < s->nsrv; i++)
        s->fcap += m->hop_in[s->srv[i]];
    if (s->nsrv &&
        (!mox__buf_reserve(&m->fwdrec, (size_t)s->L * s->fcap * 8 + 8) ||
         !mox__buf_reserve(&m->fwdiov, (size_t)s->L * s->fcap *
                                           sizeof(mox__iov_t) + 8))) {
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory to forward "
                         "%llu records", (unsigned long long)s->fcap);
    }
    for (int i = 0; i < m->P && st == MOX_OK; i++) {
        int h = (c->rank + i) % m->P;
        uint64_t n = m->hop.off[h + 1] - m->hop.off[h];
        char *msg = hout + m->hop.off[h] * rb;
        if (n && split_with(m, h)) {
            /* Metas, then the hidden block (send_split). The gather list
             * lives in m->hopiov until the send is done (one list per
             * dispatch: sized for every hop, so later hops never move
             * it). */
            mox__iov_t *iov = mox__buf_reserve(&m->hopiov, out_total *
                                                               sizeof *iov);
            const char *x = m->in.x;
            for (uint64_t j = 0; j < n; j++) {
                int64_t t = m->hop.item[m->hop.off[h] + j];
                pack_meta(m, t, msg + j * m->meta_bytes);
                if (iov)
                    iov[m->hop.off[h] + j] =
                        (mox__iov_t){x + (size_t)t * hb, hb};
            }
            if (h != c->rank && dest_has_rbuf(m, h)) {
                /* Wait for its place message (place_ready). */
                int l = c->topo.local_of[h];
                s->pwait[l] = 1;
                st = mox__irecv(c, h, mox__tag(req->seq, STEP_PLACE),
                                &s->plin[l], sizeof(place_t), &s->plrecv[l]);
                continue;
            }
            st = send_split(req, s, h, iov);
            continue;
        }
        if (n) { /* packed chunk by chunk (pack_chunk) */
            s->pkdest[s->npk++] = h;
            s->pknext[h] = 0;
            s->pkleft += (int)hop_chunks(m, n);
        }
    }
    /* The first chunk for every destination now, so every link starts
     * after one chunk each; the rest one per progress call. */
    for (int i = 0; i < s->npk && st == MOX_OK; i++)
        st = pack_chunk(req, s);
    return st;
}

/* ---- forward (dedup) -------------------------------------------------- */

static int served_remote(const struct mox_moe *m, int src)
{
    return m->forward && is_remote(m, src) &&
           mox__moe_forwarder_for(m, src) == m->comm->rank;
}

/* Forward chunk k of source src's hop message: each local rank gets the
 * records of it that it needs, as one gather send straight from hopin (or
 * packed where the transport declines), appended to its region of
 * fwdrec (kept for combine). */
static mox_status_t forward_chunk(struct mox_req *req, dispatch_t *s, int src,
                                  uint32_t k, uint32_t nch)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t rb = m->rec_bytes;
    uint64_t n = m->hop_in[src];
    uint64_t lo = chunk_lo(n, nch, k), hi = chunk_lo(n, nch, k + 1);
    uint64_t *items = m->fwdrec.p;
    mox__iov_t *iov = m->fwdiov.p;
    const char *hin = (const char *)m->hopin.p + m->hopin_off[src];
    uint64_t start[s->L];
    for (int l = 0; l < s->L; l++)
        start[l] = s->fcount[l];
    for (uint64_t j = lo; j < hi; j++) {
        const char *rec = hin + j * rb;
        for (int l = 0; l < s->L; l++) {
            if (!rec_for(m, rec, mox__topo_rank_at(&c->topo, c->node, l)))
                continue;
            if (l == s->me_local && s->early) {
                if (s->urow[src] < m->final_in[src])
                    write_row(m, s->out, m->final_off[src] + s->urow[src],
                              src, rec, 1, s->utmp);
                s->urow[src]++; /* more than announced: an error later */
            }
            uint64_t pos = (uint64_t)l * s->fcap + s->fcount[l]++;
            items[pos] = m->hopin_first[src] + j; /* record index */
            iov[pos] = (mox__iov_t){rec, rb};
        }
    }
    mox_status_t st = MOX_OK;
    uint64_t tag = mox__tag(req->seq, STEP_FWD);
    for (int l = 0; l < s->L && st == MOX_OK; l++) {
        uint64_t cnt = s->fcount[l] - start[l];
        uint64_t pos = (uint64_t)l * s->fcap + start[l];
        int d = mox__topo_rank_at(&c->topo, c->node, l);
        if (l == s->me_local || !cnt)
            continue;
        if (s->nfsend >= s->fsend_max)
            return mox__fail(c, MOX_ERR_PROTOCOL, "moe: more forward "
                             "messages than planned (%zu)", s->fsend_max);
        mox__treq_t *r = &s->fsend[s->nfsend++];
        st = mox__isendv(c, d, tag, iov + pos, cnt, cnt * rb, r);
        if (st != MOX_ERR_UNSUPPORTED)
            continue;
        char *fout = mox__buf_reserve(&m->fwdout,
                                      (size_t)s->L * s->fcap * rb + 8);
        if (!fout)
            return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory to "
                             "forward %llu records", (unsigned long long)cnt);
        for (uint64_t j = 0; j < cnt; j++)
            memcpy(fout + (pos + j) * rb, iov[pos + j].base, rb);
        st = mox__isend(c, d, tag, fout + pos * rb, cnt * rb, r);
    }
    return st;
}

/* Forward every hop chunk that is in, in order (sources by rank, chunks
 * in order); when all are, lay the lists out for combine. */
static mox_status_t forward_ready(struct mox_req *req, dispatch_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    size_t rb = m->rec_bytes;
    while (s->fcur < s->nsrv) {
        int src = s->srv[s->fcur];
        uint64_t n = m->hop_in[src];
        uint32_t nch = hop_chunks(m, n);
        if (s->fchunk >= nch) {
            s->fcur++;
            s->fchunk = 0;
            continue;
        }
        mox__treq_t *r = &s->hrecv[src * HOP_CHUNKS_MAX + s->fchunk];
        if (!r->done)
            return MOX_OK;
        mox_status_t st = mox__treq_check(c, r, "moe dispatch");
        if (st != MOX_OK)
            return st;
        uint64_t want = (chunk_lo(n, nch, s->fchunk + 1) -
                         chunk_lo(n, nch, s->fchunk)) * rb;
        if (r->bytes != want)
            return mox__fail(c, MOX_ERR_PROTOCOL, "moe: rank %d sent a hop "
                             "chunk of %zu bytes, %llu expected", src,
                             r->bytes, (unsigned long long)want);
        st = forward_chunk(req, s, src, s->fchunk, nch);
        if (st != MOX_OK)
            return st;
        s->fchunk++;
    }
    if (s->forwarded)
        return MOX_OK;
    /* Compact the regions into one list by local rank (each region moves
     * down, never over a later one). */
    uint64_t *items = m->fwdrec.p, *off = m->fwd.off;
    off[0] = 0;
    for (int l = 0; l < s->L; l++) {
        if (s->fcount[l] && items)
            memmove(items + off[l], items + (uint64_t)l * s->fcap,
                    s->fcount[l] * sizeof *items);
        off[l + 1] = off[l] + s->fcount[l];
    }
    m->fwd_rec = items;
    s->forwarded = 1;
    return MOX_OK;
}

/* The next source whose forwarded rows forwarder l sends me, after
 * `after` (-1: the first), or -1. */
static int next_source_of(const dispatch_t *s, int l, int after)
{
    const struct mox_moe *m = s->m;
    const mox__comm_t *c = m->comm;
    int fwd = mox__topo_rank_at(&c->topo, c->node, l);
    for (int src = after + 1; src < m->P; src++)
        if (is_remote(m, src) && m->final_in[src] &&
            mox__moe_forwarder_for(m, src) == fwd)
            return src;
    return -1;
}

static mox_status_t post_forward_recv(struct mox_req *req, dispatch_t *s,
                                      int l)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    uint64_t left = m->final_in[s->rsrc[l]] * m->rec_bytes - s->rgot[l];
    return mox__irecv(c, mox__topo_rank_at(&c->topo, c->node, l),
                      mox__tag(req->seq, STEP_FWD),
                      (char *)m->fwdin.p + s->roff[l], left, &s->frecv[l]);
}

/* Start receiving forwards (first: every forwarder's first source), or
 * take what arrived and post the next receive, one at a time per
 * forwarder: its messages come in source order, each source's in
 * chunks of whole records. */
static mox_status_t next_forward_recv(struct mox_req *req, dispatch_t *s,
                                      int first)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    mox_status_t st = MOX_OK;
    if (first) {
        for (int l = 0; l < s->L && st == MOX_OK; l++) {
            if (l == s->me_local || !m->fwd_in[l])
                continue;
            s->rsrc[l] = next_source_of(s, l, -1);
            if (s->rsrc[l] >= 0)
                st = post_forward_recv(req, s, l);
        }
        return st;
    }
    for (int l = 0; l < s->L && st == MOX_OK; l++) {
        mox__treq_t *r = &s->frecv[l];
        if (s->rsrc[l] < 0 || !r->done)
            continue;
        st = mox__treq_check(c, r, "moe forward");
        if (st != MOX_OK)
            return st;
        if (!r->bytes || r->bytes % m->rec_bytes)
            return mox__fail(c, MOX_ERR_PROTOCOL, "moe: forwarder rank %d "
                             "sent %zu bytes, not a positive number of "
                             "%zu-byte records",
                             mox__topo_rank_at(&c->topo, c->node, l),
                             r->bytes, m->rec_bytes);
        if (s->early) {
            const char *rec = (const char *)m->fwdin.p + s->roff[l];
            uint64_t row = m->final_off[s->rsrc[l]] + s->rgot[l] / m->rec_bytes;
            for (uint64_t j = 0; j < r->bytes / m->rec_bytes; j++)
                write_row(m, s->out, row + j, s->rsrc[l],
                          rec + j * m->rec_bytes, 1, s->utmp);
        }
        s->rgot[l] += r->bytes;
        s->roff[l] += r->bytes;
        if (s->rgot[l] == m->final_in[s->rsrc[l]] * m->rec_bytes) {
            s->rsrc[l] = next_source_of(s, l, s->rsrc[l]);
            s->rgot[l] = 0;
        }
        if (s->rsrc[l] >= 0)
            st = post_forward_recv(req, s, l);
    }
    return st;
}

static int forwards_received(const dispatch_t *s)
{
    for (int l = 0; l < s->L; l++)
        if (s->rsrc[l] >= 0)
            return 0;
    return 1;
}

/* ---- unpack ----------------------------------------------------------- */

static void decode_hidden(const struct mox_moe *m, const char *src, void *x,
                          float *tmp)
{
    size_t H = (size_t)m->H;
    mox_dtype_t xt = m->cfg.x_dtype;
    switch (m->cfg.dispatch_wire) {
    case MOX_MOE_WIRE_BF16:
        if (xt == MOX_DTYPE_BF16) {
            memcpy(x, src, 2 * H);
        } else {
            mox__to_f32(MOX_DTYPE_BF16, src, tmp, H);
            mox__from_f32(xt, tmp, x, H);
        }
        break;
    case MOX_MOE_WIRE_FP8:
        mox__fp8_decode(src, H, xt, x);
        break;
    default:
        memcpy(x, src, m->x_elem * H);
    }
}

static void write_row(const struct mox_moe *m, mox_moe_output_t *o,
                      uint64_t row, int src, const char *rec, int hidden,
                      float *tmp)
{
    int me = m->comm->rank;
    size_t k = (size_t)m->k;
    int32_t tok;
    memcpy(&tok, rec, 4);
    if (o->recv_x && hidden)
        decode_hidden(m, rec + m->meta_bytes,
                      (char *)o->recv_x + row * (size_t)m->H * m->x_elem, tmp);
    for (size_t j = 0; j < k; j++) {
        int32_t e;
        float w;
        memcpy(&e, rec + 4 + 4 * j, 4);
        memcpy(&w, rec + 4 + 4 * k + 4 * j, 4);
        int mine = rec_owner(m, rec, (int)j) == me;
        if (o->recv_topk_idx)
            o->recv_topk_idx[row * k + j] = mine ? e - me * m->E_local : -1;
        if (o->recv_topk_weights)
            o->recv_topk_weights[row * k + j] = mine ? w : 0.0f;
    }
    if (o->recv_src) {
        o->recv_src[2 * row] = src;
        o->recv_src[2 * row + 1] = tok;
    }
}

/* Records of source `src` for me: where they are and whether they need
 * filtering (records sent to me as hop may be for other ranks too). */
static const char *source_records(const struct mox_moe *m, dispatch_t *s,
                                  int src, uint64_t *n, int *filter,
                                  size_t *stride, uint64_t *fwd_cursor)
{
    *stride = m->rec_bytes;
    if (m->forward && is_remote(m, src) &&
        mox__moe_forwarder_for(m, src) != m->comm->rank) {
        int l = m->comm->topo.local_of[mox__moe_forwarder_for(m, src)];
        const char *p = (const char *)m->fwdin.p + m->fwdin_off[l] +
                        fwd_cursor[l] * m->rec_bytes;
        fwd_cursor[l] += m->final_in[src];
        *n = m->final_in[src];
        *filter = 0;
        return p;
    }
    *n = m->hop_in[src];
    *filter = m->broadcast || served_remote(m, src);
    if (split_with(m, src))
        *stride = m->meta_bytes;
    return (const char *)m->hopin.p + m->hopin_off[src];
}

static mox_status_t unpack(dispatch_t *s)
{
    struct mox_moe *m = s->m;
    mox__comm_t *c = m->comm;
    mox_moe_output_t *o = s->out;
    o->num_recv = m->num_recv;
    if (o->recv_per_expert)
        memcpy(o->recv_per_expert, m->per_expert,
               (size_t)m->E_local * sizeof(uint64_t));
    if (m->num_recv > o->capacity) {
        s->start_error = MOX_ERR_OVERFLOW;
        return mox__fail(c, MOX_ERR_OVERFLOW, "moe_dispatch: rank %d receives "
                         "%llu rows but capacity is %llu; nothing written",
                         c->rank, (unsigned long long)m->num_recv,
                         (unsigned long long)o->capacity);
    }
    uint64_t cursor[s->L];
    memset(cursor, 0, sizeof cursor);
    float *tmp = malloc((size_t)m->H * sizeof *tmp + 8);
    if (!tmp)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory");
    mox_status_t st = MOX_OK;
    for (int src = 0; src < m->P && st == MOX_OK; src++) {
        uint64_t n, row = m->final_off[src], got = 0;
        int filter;
        size_t stride;
        const char *p = source_records(m, s, src, &n, &filter, &stride,
                                       cursor);
        /* Written as they arrived: forwarded rows (all of them arrived, or
         * the receives would not be done) and a forwarder's own. */
        if (s->early && m->forward && is_remote(m, src)) {
            if (served_remote(m, src) && s->urow[src] != m->final_in[src])
                st = mox__fail(c, MOX_ERR_PROTOCOL, "moe: rank %d announced "
                               "%llu rows for rank %d, %llu arrived", src,
                               (unsigned long long)m->final_in[src], c->rank,
                               (unsigned long long)s->urow[src]);
            continue;
        }
        /* Split messages put their hidden block in place already. */
        int in_place = split_with(m, src);
        for (uint64_t j = 0; j < n && got <= m->final_in[src]; j++) {
            const char *rec = p + j * stride;
            if (filter && !rec_for(m, rec, c->rank))
                continue;
            if (got < m->final_in[src])
                write_row(m, o, row + got, src, rec, !in_place, tmp);
            got++;
        }
        if (got != m->final_in[src])
            st = mox__fail(c, MOX_ERR_PROTOCOL, "moe: rank %d announced %llu "
                           "rows for rank %d, %llu arrived", src,
                           (unsigned long long)m->final_in[src], c->rank,
                           (unsigned long long)got);
    }
    free(tmp);
    return st;
}

/* ---- state machine ---------------------------------------------------- */

static mox_status_t progress(struct mox_req *req)
{
    dispatch_t *s = req->state;
    struct mox_moe *m = s->m;
    mox_status_t st = s->start_error;
    if (st != MOX_OK)
        return st;
    if (s->phase == 1) {
        if (!mox__treqs_done(s->nsend, 2 * (size_t)m->P))
            return MOX_IN_PROGRESS;
        if ((st = read_notify(req, s)) != MOX_OK)
            return st;
        if (s->notify_only)
            return MOX_OK;
        m->state = MOE_IDLE; /* this dispatch consumes the notify */
        s->phase = 2;
        MOX_TRACE("moe", "dispatch %llu: notify done after %.3f ms",
                  (unsigned long long)req->seq,
                  (double)(mox__now_ns() - req->start_ns) / 1e6);
    }
    if (s->phase == 2) {
        s->phase = 3;
        if ((st = post_hops(req, s)) != MOX_OK)
            return st;
        MOX_TRACE("moe", "dispatch %llu: hops posted after %.3f ms",
                  (unsigned long long)req->seq,
                  (double)(mox__now_ns() - req->start_ns) / 1e6);
    }
    if (s->phase == 3) {
        if (s->pkleft > 0) {
            if ((st = pack_chunk(req, s)) != MOX_OK)
                return st;
            if (s->pkleft == 0)
                MOX_TRACE("moe", "dispatch %llu: hops packed after %.3f ms",
                          (unsigned long long)req->seq,
                          (double)(mox__now_ns() - req->start_ns) / 1e6);
        }
        if ((st = forward_ready(req, s)) != MOX_OK)
            return st;
        if (m->forward && (st = next_forward_recv(req, s, 0)) != MOX_OK)
            return st;
        if (!s->hops_in &&
            mox__treqs_done(s->hrecv, (size_t)m->P * HOP_CHUNKS_MAX)) {
            s->hops_in = 1;
            MOX_TRACE("moe", "dispatch %llu: hop messages in after %.3f ms",
                      (unsigned long long)req->seq,
                      (double)(mox__now_ns() - req->start_ns) / 1e6);
        }
        if ((st = place_ready(req, s)) != MOX_OK)
            return st;
        if (s->pkleft > 0 || !s->forwarded || !forwards_received(s) ||
            places_pending(s))
            return MOX_IN_PROGRESS;
        s->phase = 4;
    }
    if (!mox__treqs_done(s->t, s->nt))
        return MOX_IN_PROGRESS;
    st = mox__treqs_check(m->comm, s->t, s->nt, "moe dispatch");
    if (st != MOX_OK)
        return st;
    MOX_TRACE("moe", "dispatch %llu: all messages done after %.3f ms",
              (unsigned long long)req->seq,
              (double)(mox__now_ns() - req->start_ns) / 1e6);
    st = unpack(s);
    if (st == MOX_ERR_OVERFLOW)
        req->agreed_error = 1; /* everything arrived: peers are in step */
    m->state = st == MOX_OK ? MOE_DISPATCHED : MOE_IDLE;
    return st;
}

/* Per-peer arrays of the handle, sized once. */
static mox_status_t peer_arrays(struct mox_moe *m, int L)
{
    if (m->hop_in)
        return MOX_OK;
    size_t P = (size_t)m->P;
    uint64_t *a = calloc(7 * P + 5 + 4 * (size_t)L + 4 + 2 * (size_t)m->E_local,
                         sizeof *a);
    if (!a)
        return mox__fail(m->comm, MOX_ERR_NO_MEMORY, "moe: no memory");
    m->hop_in = a;
    m->final_in = a + P;
    m->final_off = a + 2 * P;          /* P + 1 */
    m->hopin_off = a + 3 * P + 1;      /* P + 1 */
    m->fwd_in = a + 4 * P + 2;         /* L */
    m->fwdin_off = m->fwd_in + L;      /* L + 1 */
    m->fwd.off = m->fwdin_off + L + 1; /* L + 1 */
    m->per_expert = m->fwd.off + L + 1;
    m->per_expert_raw = m->per_expert + m->E_local;
    m->hopin_first = m->per_expert_raw + m->E_local; /* P + 1 */
    return MOX_OK;
}

mox_status_t mox__moe_dispatch_start(struct mox_req *req, struct mox_moe *m,
                                     mox_moe_output_t *out, int notify_only,
                                     int skip_notify)
{
    mox__comm_t *c = m->comm;
    int L = c->local_size;
    if (peer_arrays(m, L) != MOX_OK)
        return MOX_ERR_NO_MEMORY;
    /* Remote sources I forward for, by rank: at most HOP_CHUNKS_MAX
     * forward messages to each other local rank for each. */
    int nsrv = 0;
    for (int src = 0; src < m->P; src++)
        nsrv += served_remote(m, src);
    size_t P = (size_t)m->P, fsend_max = (size_t)nsrv * HOP_CHUNKS_MAX * L;
    size_t nt = 4 * P + 2 * P * HOP_CHUNKS_MAX + fsend_max + 3 * (size_t)L;
    dispatch_t *s = calloc(1, sizeof *s + nt * sizeof(mox__treq_t) +
                                  2 * (size_t)L * sizeof(place_t) +
                                  3 * (size_t)L * sizeof(uint64_t) +
                                  P * sizeof(uint32_t) +
                                  (2 * P + (size_t)L) * sizeof(int) +
                                  (size_t)L);
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory");
    req->state = s;
    s->m = m;
    s->out = out;
    s->notify_only = notify_only;
    s->L = L;
    s->me_local = c->local_rank;
    s->t = (mox__treq_t *)(s + 1);
    s->nt = nt;
    s->nsend = s->t;
    s->nrecv = s->nsend + P;
    s->hsend = s->nrecv + P;
    s->hrecv = s->hsend + P * HOP_CHUNKS_MAX;
    s->xsend = s->hrecv + P * HOP_CHUNKS_MAX;
    s->xrecv = s->xsend + P;
    s->fsend = s->xrecv + P;
    s->frecv = s->fsend + fsend_max;
    s->plsend = s->frecv + L;
    s->plrecv = s->plsend + L;
    s->fsend_max = fsend_max;
    s->plout = (place_t *)(void *)(s->t + nt);
    s->plin = s->plout + L;
    s->fcount = (uint64_t *)(void *)(s->plin + L);
    s->rgot = s->fcount + L;
    s->roff = s->rgot + L;
    s->pknext = (uint32_t *)(void *)(s->roff + L);
    s->rsrc = (int *)(s->pknext + P);
    s->srv = s->rsrc + L;
    s->pkdest = s->srv + P;
    s->pwait = (uint8_t *)(s->pkdest + P);
    for (int src = 0; src < m->P; src++)
        if (served_remote(m, src))
            s->srv[s->nsrv++] = src;
    for (int l = 0; l < L; l++)
        s->rsrc[l] = -1;
    req->treqs = s->t;
    req->ntreqs = nt;
    req->progress = progress;
    if (skip_notify) {
        m->state = MOE_IDLE;
        s->phase = 2;
        return MOX_OK;
    }
    m->state = MOE_IDLE;
    int64_t bad_token = -1, bad_value = 0;
    int bad_slot = -1;
    mox_status_t route_st = MOX_ERR_INVALID_ARG;
    if (m->input_bad)
        bad_token = m->in.num_tokens; /* reported with the problem */
    else
        route_st = mox__moe_route(m, &m->in, &bad_token, &bad_slot,
                                  &bad_value);
    if (route_st != MOX_OK && route_st != MOX_ERR_INVALID_ARG)
        return route_st;
    mox_status_t st = build_notify(req, s, route_st, bad_token, bad_slot,
                                   bad_value);
    if (st != MOX_OK)
        return st;
    s->phase = 1;
    s->start_error = post_notify(req, s);
    return MOX_OK;
}
