/*
 * MoE dispatch/combine: the handle, its cached routing and buffers.
 * core/moe.c holds the API and routing; core/algorithms/moe_dispatch.c and
 * moe_combine.c the two state machines.
 *
 * Vocabulary. For a token t of source rank s, D(t) is the set of ranks that
 * own at least one of its experts. A "hop" is the rank s sends the token
 * to: the destination itself, or (dedup, remote node) the rail peer on
 * that node, which forwards it to every rank of D(t) on its node. A
 * "record" is one token on the wire: meta (token index, k global expert
 * ids, k weights) followed by the hidden vector in the wire format.
 */
#ifndef MOX_CORE_MOE_H
#define MOX_CORE_MOE_H

#include "comm.h"

/* Grow-only buffer kept by the handle across calls. */
typedef struct {
    void *p;
    size_t cap;
} mox__buf_t;

/* Returns the buffer with at least `bytes` bytes, or NULL. */
void *mox__buf_reserve(mox__buf_t *b, size_t bytes);

/* Compressed lists: items of list i are item[off[i] .. off[i+1]). */
typedef struct {
    uint64_t *off;
    int32_t *item;
} mox__csr_t;

/* A named shared-memory buffer: "/mox-<job>-m<id>-<rank>-<gen>". */
typedef struct mox__shmbuf {
    void *p;
    size_t bytes;
    uint64_t gen;           /* 0: none */
} mox__shmbuf_t;

enum { MOE_IDLE, MOE_NOTIFIED, MOE_DISPATCHED };

/* Why a rank's dispatch input is refused, as told to every rank in notify
 * (0 = fine). Bad expert ids come first: out of range, repeated. */
enum {
    MOX_MOE_BAD_RANGE = 1,
    MOX_MOE_BAD_REPEAT = 2,
    MOX_MOE_BAD_NUM_TOKENS = 3,
    MOX_MOE_BAD_NULL_X = 4,
    MOX_MOE_BAD_NULL_IDX = 5,
    MOX_MOE_BAD_NULL_WEIGHTS = 6
};

/* Notify message: fixed header, then per-local-expert counts. */
#define MOX_MOE_NOTIFY_FIXED 64

struct mox_moe {
    mox__comm_t *comm;
    mox_moe_config_t cfg;   /* as given, DEFAULTs resolved */
    int P, E, E_local, H, k;
    int forward;            /* dedup: remote tokens go through rail peers */
    int broadcast;          /* allgather: every token to every rank */
    size_t x_elem;          /* bytes per x value */
    size_t idx_elem;
    size_t meta_bytes;      /* per record: index, ids, weights (8-aligned) */
    size_t hid_bytes;       /* hidden vector on the dispatch wire */
    size_t rec_bytes;       /* meta_bytes + hid_bytes, 8-aligned */
    size_t comb_elem;       /* 4 (f32) or 2 (bf16) on the combine wire */
    size_t notify_bytes;
    uint64_t fingerprint;   /* of the configuration, checked in notify */

    /* Routing of the current dispatch (source side). */
    int state;
    int input_bad;          /* MOX_MOE_BAD_* of this rank's input, or 0 */
    mox_moe_input_t in;
    int64_t num_tokens;
    int32_t *tok_ndest;     /* [num_tokens] |D(t)| */
    int32_t *tok_dest;      /* [num_tokens][k] ranks of D(t), ascending */
    mox__csr_t hop;         /* per rank: tokens sent to it as first hop */
    mox__csr_t direct;      /* per rank: tokens whose rows it returns to me
                               directly in combine (local, or no forward) */
    uint64_t *final_out;    /* [P] tokens each rank finally receives */

    /* What peers told us in notify (receiver side). */
    uint64_t *hop_in;       /* [P] records each source sends me as hop */
    uint64_t *final_in;     /* [P] rows I finally receive from each source */
    uint64_t *final_off;    /* [P+1] where each source's rows start */
    uint64_t *per_expert;   /* [E_local] padded counts */
    uint64_t *per_expert_raw; /* [E_local] (token, expert) pairs */
    uint64_t num_recv;

    /* Forwarding (dedup): for each local rank d, the records I forward to
     * it, as offsets into hopin. */
    mox__csr_t fwd;         /* lists by local rank; items index recs */
    uint64_t *fwd_rec;      /* record indices into hopin (items) */
    uint64_t *fwd_in;       /* [L] records each local forwarder sends me */

    /* Buffers reused across calls. */
    mox__buf_t route_mem, hopout, hopin, fwdout, fwdin, fwdrec, fwdiov, hidscratch, notify,
        comb_send, comb_recv, comb_accum, comb_part;
    mox__buf_t hopiov; /* gather lists of split hidden blocks (mox__iov_t) */
    mox__buf_t recfirst; /* [num_tokens] where a token's record was first
                            packed in this dispatch (its other hops copy) */
    mox__buf_t urow;     /* dispatch: [P] rows unpacked early per source,
                            then an H-float decode row */

    /* Shared receive buffer (mox_moe_recv_buffer): this rank's, and the
     * mappings of local peers' (by local rank) that it wrote into. */
    uint32_t id;            /* handles created on the communicator before */
    mox__shmbuf_t rbuf;
    int rbuf_told;          /* the last notify said I have one */
    mox__shmbuf_t *peer_rbuf; /* [L] */
    /* Combine's receive area in shared memory, which local ranks write
     * their rows into; and the mappings of local peers' areas. */
    mox__shmbuf_t cbuf;
    int cbuf_failed;        /* could not be made (or a test said so):
                               combine uses messages */
    int test_bad_note;      /* MOX_TEST_BAD_NOTE: this rank's answers to
                               in-place reads name a wrong offset (tests
                               only; -1 = none) */
    int test_short_back;    /* MOX_TEST_SHORT_BACK: as a forwarder, this
                               rank sends its first chunk of summed rows
                               back one row short (tests only; -1 = none) */
    mox__shmbuf_t *peer_cbuf; /* [L] */
    uint64_t *hopin_off;    /* [P+1] byte offsets of each source in hopin */
    uint64_t *hopin_first;  /* [P+1] index of each source's first record */
    uint64_t *fwdin_off;    /* [L+1] byte offsets of each forwarder */
};

/* Route this rank's tokens (fills tok_*, hop, direct, final_out). Checks
 * every expert id; on bad input returns MOX_ERR_INVALID_ARG with *bad_token
 * / *bad_slot / *bad_value set and a message on the communicator. */
mox_status_t mox__moe_route(struct mox_moe *m, const mox_moe_input_t *in,
                            int64_t *bad_token, int *bad_slot,
                            int64_t *bad_value);

/* Global expert id of token t, slot j (-1 for none). */
static inline int64_t mox__moe_expert(const struct mox_moe *m,
                                      const void *topk_idx, int64_t t, int j)
{
    size_t i = (size_t)t * (size_t)m->k + (size_t)j;
    if (m->idx_elem == 4)
        return ((const int32_t *)topk_idx)[i];
    return ((const int64_t *)topk_idx)[i];
}

/* The rank on my node that forwards source s's tokens to me (dedup). */
int mox__moe_forwarder_for(const struct mox_moe *m, int s);

/* Map local peer `rank`'s receive buffer (kind 0) or combine area (kind
 * 1) of generation gen and `bytes` (kept mapped until its generation
 * changes or the handle goes). */
mox_status_t mox__moe_map_peer(struct mox_moe *m, int kind, int rank,
                               uint64_t gen, size_t bytes, char **base);
/* This rank's combine receive area in shared memory, at least `bytes`;
 * NULL when shared memory is not to be had (combine then uses messages). */
char *mox__moe_comb_area(struct mox_moe *m, size_t bytes);

/* Place message: a rank tells a local peer whether to write its rows
 * straight into the rank's shared buffer and where (dispatch: the receive
 * buffer; combine: the combine area). */
typedef struct {
    uint32_t magic, use;
    uint64_t seq, gen, bytes, row_off, rows;
} mox__place_t;
#define MOX_PLACE_MAGIC 0x4c504f4du /* "MOPL" */

/* A place message r brought p: it arrived whole, is of this operation
 * (seq), names `rows` rows and, when it says to write, a place inside the
 * buffer for them (rows of row_bytes). MOX_ERR_PROTOCOL naming the peer
 * otherwise. */
mox_status_t mox__moe_check_place(mox__comm_t *c, const mox__treq_t *r,
                                  const mox__place_t *p, uint64_t seq,
                                  uint64_t rows, size_t row_bytes,
                                  const char *what);

/* Messages that cross the network (dispatch hops, combine rows back) and
 * the partial rows a forwarder sums go in chunks: n items of item_bytes in
 * about MOX_MOE_CHUNK_SIZE bytes each, at most MOX_MOE_CHUNKS_MAX, none
 * empty (0 chunks when n is 0). Both ends compute the cut from n, which
 * both know. Chunk c holds items [lo(c), lo(c + 1)). */
#define MOX_MOE_CHUNKS_MAX 8
static inline uint32_t mox__moe_chunks(const struct mox_moe *m, uint64_t n,
                                       size_t item_bytes)
{
    if (!n)
        return 0;
    uint64_t cb = (uint64_t)m->comm->cfg.moe_chunk_bytes, b = n * item_bytes;
    uint64_t c = b / cb + (b % cb != 0);
    if (c > MOX_MOE_CHUNKS_MAX)
        c = MOX_MOE_CHUNKS_MAX;
    return (uint32_t)(c < n ? c : n);
}
static inline uint64_t mox__moe_chunk_lo(uint64_t n, uint32_t nch,
                                         uint32_t c)
{
    return n * c / nch;
}

/* Start the state machines (core/algorithms/moe_*.c). notify_only stops
 * after the count exchange. */
mox_status_t mox__moe_dispatch_start(struct mox_req *req, struct mox_moe *m,
                                     mox_moe_output_t *out, int notify_only,
                                     int skip_notify);
mox_status_t mox__moe_combine_start(struct mox_req *req, struct mox_moe *m,
                                    const void *expert_out, void *out);

#endif
