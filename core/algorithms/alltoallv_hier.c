/*
 * alltoallv, two-level (hierarchical), for communicators that span nodes.
 *
 * Rank d = (node b, local m) on another node is served by this node's
 * aggregator with local index m % L (L = this node's local size), so local
 * rank i of one node talks to local rank i of another (rails), also when
 * nodes have different sizes.
 *   1. gather (shm): every local rank sends each aggregator a header with its
 *      counts for the destinations that aggregator serves, then the blocks;
 *   2. network: each aggregator sends every destination it serves ONE
 *      message holding the blocks of all local ranks (header + payload), so
 *      a node pair exchanges one message per rail instead of L*L;
 *   3. scatter on arrival: the destination checks the per-source counts in
 *      the header against its recvcounts and copies the blocks into place.
 * Ranks of the same node exchange directly (pairwise through shm).
 *
 * Every header is sent even when its counts are all zero, so each receiver
 * learns every sender's count and a disagreement is MOX_ERR_MISMATCH naming
 * both ranks. Messages per rank: 2(L-1) + about N-1, not P-1.
 *
 * Large blocks go direct: a block of at least MOX_ALLTOALLV_DIRECT bytes
 * for a rank on another node is sent straight from sendbuf into the
 * receiver's recvbuf, one message, no copy, from the start, instead of
 * being gathered, packed and scattered (those copies are not overlapped
 * with the network and cost 5-20 % at large sizes, docs/design.md). Both
 * ends decide from the same number (the sender's sendcounts[d], the
 * receiver's recvcounts[s], equal in a valid call), and the block's count
 * still travels in the aggregators' headers, so a disagreement is still
 * reported, as soon as the header arrives.
 */
#include "core/comm.h"
#include "core/wire.h"
#include "core/a2a_plan.h"
#include "core/scratch.h"

#include <stdlib.h>
#include <string.h>

enum { STEP_LOCAL = 1, STEP_GHDR = 2, STEP_GDATA = 3, STEP_NET = 4,
       STEP_DIRECT = 5 };

typedef struct {
    int phase;
    mox_status_t start_error;
    int P, N, L, me_local, my_node;
    size_t elem_bytes;
    uint64_t direct_min;             /* blocks of >= this many elements go
                                        direct (0: none) */
    char *recvbuf;
    uint64_t *recvcounts, *rdispls;  /* copies, [P] */
    uint64_t *local_expect;          /* [L] bytes expected from local peers */
    /* Remote destinations grouped by the aggregator (local index) serving
     * them: dests[dest_off[a] .. dest_off[a+1]). */
    int *dest_off, *dests;
    int nserve;                      /* destinations I serve */
    const int *serve;                /* = dests + dest_off[me_local] */
    /* Buffers. */
    char *pack;          /* my blocks for remote ranks, grouped by aggregator */
    char *ghdr_out;      /* [L] gather headers I send */
    size_t ghdr_out_stride;
    char *ghdr_in;       /* [L] gather headers I receive (as aggregator) */
    uint64_t *gcounts;   /* [L][nserve] decoded counts */
    uint64_t *gbytes;    /* [L] payload bytes from each local rank */
    char *gdata;         /* gathered payloads, local rank order */
    char *netout;        /* messages I send as aggregator */
    char *netin;         /* messages from other nodes, by node */
    size_t *netin_off;   /* [N+1] */
    uint64_t *scattered; /* [N] node b's message checked and placed */
    /* Transport requests, one array (core cancels and reports them). */
    mox__treq_t *t;
    mox__treq_t *local_recv, *local_send, *ghdr_send, *gdata_send,
        *ghdr_recv, *gdata_recv, *net_send, *net_recv;
    mox__treq_t *direct_recv, *direct_send; /* [P] */
    size_t nt;
} hier_t;

/* Whether a block of `count` elements travels direct (both ends agree). */
static int is_direct(const hier_t *s, uint64_t count)
{
    return s->direct_min && count >= s->direct_min;
}

/* Bytes of a block inside the aggregated messages (0 when direct). */
static uint64_t agg_bytes(const hier_t *s, uint64_t count)
{
    return is_direct(s, count) ? 0 : count * s->elem_bytes;
}

static void free_state(struct mox_req *req)
{
    hier_t *s = req->state;
    if (!s)
        return;
    mox__scratch_put(req->comm, s->pack);
    mox__scratch_put(req->comm, s->gdata);
    mox__scratch_put(req->comm, s->netout);
    mox__scratch_put(req->comm, s->netin);
}

/* Phase 1 -> 2: all gather headers are in; post the payload receives. */
static mox_status_t post_gather_data(struct mox_req *req)
{
    hier_t *s = req->state;
    mox__comm_t *c = req->comm;
    mox_status_t st = mox__treqs_check(c, s->ghdr_recv, (size_t)s->L,
                                "gather header");
    uint64_t total = 0;
    mox__wire_hdr_t expect = {MOX_WIRE_A2A_GATHER, req->seq,
                              (uint32_t)s->nserve, (uint32_t)s->elem_bytes};
    for (int a = 0; a < s->L && st == MOX_OK && s->nserve; a++) {
        char err[256];
        const char *hdr = s->ghdr_in + (size_t)a * mox__wire_bytes(s->nserve);
        st = mox__wire_decode(hdr, s->ghdr_recv[a].bytes, &expect,
                              s->gcounts + (size_t)a * s->nserve,
                              UINT64_MAX / 2, &s->gbytes[a], err, sizeof err);
        if (st != MOX_OK)
            return mox__fail(c, st, "alltoallv: gather header from rank %d: "
                             "%s", mox__topo_rank_at(&c->topo, s->my_node, a),
                             err);
        s->gbytes[a] = 0;
        for (int k = 0; k < s->nserve; k++)
            s->gbytes[a] += agg_bytes(s, s->gcounts[(size_t)a * s->nserve + k]);
        total += s->gbytes[a];
    }
    if (st != MOX_OK)
        return st;
    s->gdata = mox__scratch_get(c, total);
    if (!s->gdata)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "alltoallv: no memory to "
                         "gather %llu bytes", (unsigned long long)total);
    uint64_t off = 0;
    uint64_t tag = mox__tag(req->seq, STEP_GDATA);
    for (int a = 0; a < s->L && st == MOX_OK; a++) {
        if (s->gbytes[a])
            st = mox__irecv(c, mox__topo_rank_at(&c->topo, s->my_node, a),
                            tag, s->gdata + off, s->gbytes[a],
                            &s->gdata_recv[a]);
        off += s->gbytes[a];
    }
    return st;
}

/* Phase 2 -> 3: every local rank's blocks are here; build and send one
 * message per destination served. */
static mox_status_t post_net_sends(struct mox_req *req)
{
    hier_t *s = req->state;
    mox__comm_t *c = req->comm;
    mox_status_t st = mox__treqs_check(c, s->gdata_recv, (size_t)s->L,
                                "gather payload");
    for (int a = 0; a < s->L && st == MOX_OK; a++)
        if (s->gdata_recv[a].posted && s->gdata_recv[a].bytes != s->gbytes[a])
            st = mox__fail(c, MOX_ERR_PROTOCOL, "alltoallv: rank %d sent "
                           "%zu gather bytes, its header said %llu (is "
                           "MOX_ALLTOALLV_DIRECT the same on every rank?)",
                           mox__topo_rank_at(&c->topo, s->my_node, a),
                           s->gdata_recv[a].bytes,
                           (unsigned long long)s->gbytes[a]);
    if (st != MOX_OK)
        return st;
    uint64_t total = 0;
    for (int a = 0; a < s->L; a++)
        total += s->gbytes[a];
    size_t hdr_bytes = mox__wire_bytes((uint32_t)s->L);
    s->netout = mox__scratch_get(c, total + (size_t)s->nserve * hdr_bytes);
    if (!s->netout)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "alltoallv: no memory for "
                         "%d network messages", s->nserve);
    /* src_off[a]: where local rank a's block for the current destination
     * starts in gdata; blocks of one source follow destination order. */
    uint64_t src_base = 0, counts[s->L], src_off[s->L];
    for (int a = 0; a < s->L; a++) {
        src_off[a] = src_base;
        src_base += s->gbytes[a];
    }
    char *out = s->netout;
    uint64_t tag = mox__tag(req->seq, STEP_NET);
    for (int i = 0; i < s->nserve && st == MOX_OK; i++) {
        char *msg = out;
        out += hdr_bytes;
        for (int a = 0; a < s->L; a++) {
            counts[a] = s->gcounts[(size_t)a * s->nserve + i];
            size_t b = agg_bytes(s, counts[a]);
            memcpy(out, s->gdata + src_off[a], b);
            src_off[a] += b;
            out += b;
        }
        mox__wire_hdr_t h = {MOX_WIRE_A2A_NET, req->seq, (uint32_t)s->L,
                             (uint32_t)s->elem_bytes};
        mox__wire_encode(&h, counts, msg);
        st = mox__isend(c, s->serve[i], tag, msg, (size_t)(out - msg),
                        &s->net_send[i]);
    }
    return st;
}

/* A message from node b arrived: check it and scatter it into recvbuf. */
static mox_status_t scatter_node(mox__comm_t *c, hier_t *s, int b,
                                 uint64_t seq)
{
    const mox__treq_t *r = &s->net_recv[b];
    int Lb = mox__topo_local_size(&c->topo, b);
    int agg = mox__a2a_aggregator(&c->topo, b, c->rank);
    size_t cap = s->netin_off[b + 1] - s->netin_off[b];
    if (r->status == MOX_ERR_TRUNCATED)
        return mox__fail(c, MOX_ERR_MISMATCH, "alltoallv: ranks of node %d "
                         "(via rank %d) sent rank %d more than its "
                         "recvcounts allow (%zu bytes with header; or "
                         "MOX_ALLTOALLV_DIRECT differs between ranks)", b,
                         agg, c->rank, cap);
    mox_status_t st = mox__treq_check(c, r, "alltoallv network receive");
    if (st != MOX_OK)
        return st;
    const char *msg = s->netin + s->netin_off[b];
    size_t hdr_bytes = mox__wire_bytes((uint32_t)Lb);
    uint64_t counts[Lb], payload;
    char err[256];
    mox__wire_hdr_t expect = {MOX_WIRE_A2A_NET, seq, (uint32_t)Lb,
                              (uint32_t)s->elem_bytes};
    st = mox__wire_decode(msg, r->bytes, &expect, counts, UINT64_MAX / 2,
                          &payload, err, sizeof err);
    if (st != MOX_OK)
        return mox__fail(c, st, "alltoallv: message from rank %d (node %d): "
                         "%s", agg, b, err);
    payload = 0;
    for (int a = 0; a < Lb; a++)
        payload += agg_bytes(s, counts[a]);
    if (payload != r->bytes - hdr_bytes)
        return mox__fail(c, MOX_ERR_PROTOCOL, "alltoallv: message from rank "
                         "%d (node %d) holds %zu payload bytes, its header "
                         "lists %llu (is MOX_ALLTOALLV_DIRECT the same on "
                         "every rank?)", agg, b, r->bytes - hdr_bytes,
                         (unsigned long long)payload);
    const char *p = msg + hdr_bytes;
    for (int a = 0; a < Lb; a++) {
        int src = mox__topo_rank_at(&c->topo, b, a);
        if (counts[a] != s->recvcounts[src])
            return mox__fail(c, MOX_ERR_MISMATCH, "alltoallv: rank %d sent "
                             "%llu elements to rank %d, whose recvcounts[%d] "
                             "= %llu", src, (unsigned long long)counts[a],
                             c->rank, src,
                             (unsigned long long)s->recvcounts[src]);
        size_t bytes = agg_bytes(s, counts[a]);
        memcpy(s->recvbuf + s->rdispls[src] * s->elem_bytes, p, bytes);
        p += bytes;
    }
    return MOX_OK;
}

/* Direct blocks: each arrived whole (the counts agreed, see scatter_node,
 * but a sender may still have sent other bytes than its header said). */
static mox_status_t check_direct(mox__comm_t *c, hier_t *s)
{
    for (int src = 0; src < s->P; src++) {
        const mox__treq_t *r = &s->direct_recv[src];
        if (!r->posted)
            continue;
        uint64_t want = s->recvcounts[src] * s->elem_bytes;
        if (r->status == MOX_ERR_TRUNCATED ||
            (r->status == MOX_OK && r->bytes != want))
            return mox__fail(c, MOX_ERR_PROTOCOL, "alltoallv: rank %d sent "
                             "%zu bytes%s straight to rank %d, its header "
                             "said %llu", src, r->bytes,
                             r->status == MOX_ERR_TRUNCATED ? " (or more)"
                                                            : "",
                             c->rank, (unsigned long long)want);
        mox_status_t st = mox__treq_check(c, r, "alltoallv direct receive");
        if (st != MOX_OK)
            return st;
    }
    return MOX_OK;
}

static mox_status_t check_local(mox__comm_t *c, hier_t *s)
{
    for (int a = 0; a < s->L; a++) {
        const mox__treq_t *r = &s->local_recv[a];
        int peer = mox__topo_rank_at(&c->topo, s->my_node, a);
        if (r->status == MOX_ERR_TRUNCATED ||
            (r->status == MOX_OK && r->bytes != s->local_expect[a]))
            return mox__fail(c, MOX_ERR_MISMATCH, "alltoallv: rank %d sent "
                             "%zu bytes%s to rank %d, whose recvcounts[%d] = "
                             "%llu elements of %zu bytes", peer, r->bytes,
                             r->status == MOX_ERR_TRUNCATED ? " (or more)"
                                                            : "",
                             c->rank, peer,
                             (unsigned long long)s->recvcounts[peer],
                             s->elem_bytes);
        mox_status_t st = mox__treq_check(c, r, "alltoallv receive");
        if (st != MOX_OK)
            return st;
    }
    return MOX_OK;
}

static mox_status_t progress(struct mox_req *req)
{
    hier_t *s = req->state;
    mox__comm_t *c = req->comm;
    mox_status_t st = s->start_error;
    if (st != MOX_OK)
        return st;
    if (s->phase == 1 && mox__treqs_done(s->ghdr_recv, (size_t)s->L)) {
        s->phase = 2;
        if ((st = post_gather_data(req)) != MOX_OK)
            return st;
    }
    if (s->phase == 2 && mox__treqs_done(s->gdata_recv, (size_t)s->L)) {
        s->phase = 3;
        if ((st = post_net_sends(req)) != MOX_OK)
            return st;
    }
    /* Each node's message as it comes: its header also tells whether the
     * direct blocks this rank waits for agree with their senders. */
    for (int b = 0; b < s->N; b++) {
        if (b == s->my_node || s->scattered[b] || !s->net_recv[b].done)
            continue;
        if ((st = scatter_node(c, s, b, req->seq)) != MOX_OK)
            return st;
        s->scattered[b] = 1;
    }
    if (s->phase != 3 || !mox__treqs_done(s->t, s->nt))
        return MOX_IN_PROGRESS;
    st = check_local(c, s);
    if (st == MOX_OK)
        st = check_direct(c, s);
    if (st == MOX_OK)
        st = mox__treqs_check(c, s->t, s->nt, "alltoallv");
    return st;
}

static void build_dest_lists(const mox__comm_t *c, hier_t *s)
{
    mox__a2a_rail_plan(&c->topo, s->my_node, s->dest_off, s->dests);
    s->serve = s->dests + s->dest_off[s->me_local];
    s->nserve = s->dest_off[s->me_local + 1] - s->dest_off[s->me_local];
}

/* Carve every fixed-size array out of one allocation. */
static hier_t *alloc_state(const mox__comm_t *c)
{
    int P = c->size, L = c->local_size, N = c->topo.num_nodes;
    size_t maxd = (size_t)P; /* bound for any aggregator's destinations */
    size_t nt = 6 * (size_t)L + maxd + (size_t)N + 2 * (size_t)P;
    size_t ghdr = mox__wire_bytes((uint32_t)maxd);
    size_t bytes = sizeof(hier_t) + nt * sizeof(mox__treq_t) +
                   (3 * (size_t)P + (size_t)L + (size_t)L * maxd +
                    (size_t)L + (size_t)N) * sizeof(uint64_t) +
                   ((size_t)N + 1) * sizeof(size_t) +
                   ((size_t)L + 1 + maxd) * sizeof(int) + 2 * (size_t)L * ghdr;
    hier_t *s = calloc(1, bytes);
    if (!s)
        return NULL;
    char *p = (char *)(s + 1);
#define CARVE(field, count)                                                    \
    s->field = (void *)p;                                                      \
    p += (count) * sizeof(*s->field)
    CARVE(t, nt);
    CARVE(recvcounts, (size_t)P);
    CARVE(rdispls, (size_t)P);
    CARVE(local_expect, (size_t)L);
    CARVE(gcounts, (size_t)L * maxd);
    CARVE(gbytes, (size_t)L);
    CARVE(scattered, (size_t)N);
    CARVE(netin_off, (size_t)N + 1);
    CARVE(dest_off, (size_t)L + 1);
    CARVE(dests, maxd);
#undef CARVE
    s->ghdr_out = p;
    s->ghdr_in = p + (size_t)L * ghdr;
    s->ghdr_out_stride = ghdr;
    s->nt = nt;
    s->local_recv = s->t;
    s->local_send = s->local_recv + L;
    s->ghdr_send = s->local_send + L;
    s->gdata_send = s->ghdr_send + L;
    s->ghdr_recv = s->gdata_send + L;
    s->gdata_recv = s->ghdr_recv + L;
    s->net_recv = s->gdata_recv + L;
    s->net_send = s->net_recv + N;
    s->direct_recv = s->net_send + maxd;
    s->direct_send = s->direct_recv + P;
    return s;
}

/* Post what needs no peer data: local exchange, gather headers and
 * payloads to the aggregators, header receives, network receives. */
static mox_status_t post_initial(struct mox_req *req, hier_t *s,
                                 const mox__a2av_args_t *a)
{
    mox__comm_t *c = req->comm;
    mox_status_t st = MOX_OK;
    size_t eb = a->elem_bytes;
    /* Network receives: one per other node, from its aggregator for me. */
    for (int b = 0; b < s->N && st == MOX_OK; b++) {
        if (b == s->my_node)
            continue;
        int agg = mox__a2a_aggregator(&c->topo, b, c->rank);
        st = mox__irecv(c, agg, mox__tag(req->seq, STEP_NET),
                        s->netin + s->netin_off[b],
                        s->netin_off[b + 1] - s->netin_off[b], &s->net_recv[b]);
    }
    /* Direct blocks: receives, then sends (next rank up first, as
     * pairwise), before any packing so the network starts at once. */
    for (int src = 0; src < s->P && st == MOX_OK; src++)
        if (c->topo.node_of[src] != s->my_node &&
            is_direct(s, a->recvcounts[src]))
            st = mox__irecv(c, src, mox__tag(req->seq, STEP_DIRECT),
                            a->recvbuf + a->rdispls[src] * eb,
                            a->recvcounts[src] * eb, &s->direct_recv[src]);
    for (int i = 1; i < s->P && st == MOX_OK; i++) {
        int d = (c->rank + i) % s->P;
        if (c->topo.node_of[d] != s->my_node && is_direct(s, a->sendcounts[d]))
            st = mox__isend(c, d, mox__tag(req->seq, STEP_DIRECT),
                            a->sendbuf + a->sdispls[d] * eb,
                            a->sendcounts[d] * eb, &s->direct_send[d]);
    }
    for (int i = 0; i < s->L && st == MOX_OK; i++) {
        int la = (s->me_local + i) % s->L;
        int peer = mox__topo_rank_at(&c->topo, s->my_node, la);
        s->local_expect[la] = a->recvcounts[peer] * eb;
        st = mox__irecv(c, peer, mox__tag(req->seq, STEP_LOCAL),
                        a->recvbuf + a->rdispls[peer] * eb,
                        s->local_expect[la], &s->local_recv[la]);
        if (st == MOX_OK && s->nserve)
            st = mox__irecv(c, peer, mox__tag(req->seq, STEP_GHDR),
                            s->ghdr_in + (size_t)la * mox__wire_bytes(s->nserve),
                            mox__wire_bytes(s->nserve), &s->ghdr_recv[la]);
    }
    char *pk = s->pack;
    for (int i = 0; i < s->L && st == MOX_OK; i++) {
        int la = (s->me_local + i) % s->L;
        int peer = mox__topo_rank_at(&c->topo, s->my_node, la);
        st = mox__isend(c, peer, mox__tag(req->seq, STEP_LOCAL),
                        a->sendbuf + a->sdispls[peer] * eb,
                        a->sendcounts[peer] * eb, &s->local_send[la]);
        int nd = s->dest_off[la + 1] - s->dest_off[la];
        if (st != MOX_OK || nd == 0)
            continue;
        /* Pack my blocks for the destinations aggregator `la` serves. */
        uint64_t counts[nd];
        char *start = pk;
        for (int k = 0; k < nd; k++) {
            int d = s->dests[s->dest_off[la] + k];
            counts[k] = a->sendcounts[d];
            uint64_t b = agg_bytes(s, counts[k]);
            memcpy(pk, a->sendbuf + a->sdispls[d] * eb, b);
            pk += b;
        }
        char *hdr = s->ghdr_out + (size_t)la * s->ghdr_out_stride;
        mox__wire_hdr_t h = {MOX_WIRE_A2A_GATHER, req->seq, (uint32_t)nd,
                             (uint32_t)eb};
        mox__wire_encode(&h, counts, hdr);
        st = mox__isend(c, peer, mox__tag(req->seq, STEP_GHDR), hdr,
                        mox__wire_bytes((uint32_t)nd), &s->ghdr_send[la]);
        if (st == MOX_OK && pk > start)
            st = mox__isend(c, peer, mox__tag(req->seq, STEP_GDATA), start,
                            (size_t)(pk - start), &s->gdata_send[la]);
    }
    return st;
}

mox_status_t mox__alltoallv_hier(struct mox_req *req,
                                 const mox__a2av_args_t *a)
{
    mox__comm_t *c = req->comm;
    hier_t *s = alloc_state(c);
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "alltoallv: no memory");
    req->state = s;
    req->cleanup = free_state;
    s->P = c->size;
    s->N = c->topo.num_nodes;
    s->L = c->local_size;
    s->me_local = c->local_rank;
    s->my_node = c->node;
    s->elem_bytes = a->elem_bytes;
    int64_t db = c->cfg.alltoallv_direct;
    s->direct_min = db > 0 ? ((uint64_t)db + a->elem_bytes - 1) / a->elem_bytes
                           : 0;
    s->recvbuf = a->recvbuf;
    memcpy(s->recvcounts, a->recvcounts, (size_t)s->P * sizeof(uint64_t));
    memcpy(s->rdispls, a->rdispls, (size_t)s->P * sizeof(uint64_t));
    build_dest_lists(c, s);

    uint64_t pack_bytes = 0;
    for (int d = 0; d < s->P; d++)
        if (c->topo.node_of[d] != s->my_node)
            pack_bytes += agg_bytes(s, a->sendcounts[d]);
    s->netin_off[0] = 0;
    for (int b = 0; b < s->N; b++) {
        size_t bytes = 0;
        if (b != s->my_node) {
            int Lb = mox__topo_local_size(&c->topo, b);
            bytes = mox__wire_bytes((uint32_t)Lb);
            for (int k = 0; k < Lb; k++)
                bytes += agg_bytes(s, s->recvcounts[mox__topo_rank_at(
                                          &c->topo, b, k)]);
        }
        s->netin_off[b + 1] = s->netin_off[b] + bytes;
    }
    s->pack = mox__scratch_get(c, pack_bytes);
    s->netin = mox__scratch_get(c, s->netin_off[s->N]);
    if (!s->pack || !s->netin)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "alltoallv: no memory for "
                         "%llu + %zu staging bytes",
                         (unsigned long long)pack_bytes, s->netin_off[s->N]);
    req->treqs = s->t;
    req->ntreqs = s->nt;
    req->progress = progress;
    s->phase = s->nserve ? 1 : 3;
    s->start_error = post_initial(req, s, a);
    return MOX_OK;
}
