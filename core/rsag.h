/*
 * Shared by reduce-scatter and allgather: arguments handed from the API
 * files to the algorithms, the rank grid both algorithms run on, chunking,
 * and the agreement header every rank sends its grid neighbours so that
 * ranks passing different counts, types or ops fail with MOX_ERR_MISMATCH
 * naming both ranks instead of hanging.
 */
#ifndef MOX_CORE_RSAG_H
#define MOX_CORE_RSAG_H

#include <stddef.h>
#include <stdint.h>
#include "comm.h"

/* Values of MOX_REDUCE_SCATTER_ALGO / MOX_ALLGATHER_ALGO (LOG: rhalving
 * for reduce-scatter, rdoubling for allgather). */
enum { MOX_RSAG_AUTO, MOX_RSAG_FLAT, MOX_RSAG_HIER, MOX_RSAG_LOG,
       MOX_RSAG_RING, MOX_RSAG_LEADER };

/*
 * Ranks as an N x L grid: row n, column l is grid[n * L + l]. hier: rows
 * are nodes and columns local ranks (so a column is a rail); flat: one row
 * of all ranks in rank order.
 */
typedef struct {
    int N, L, row, col;
    int *rank;   /* [N * L], owned by the algorithm's state */
} mox__grid_t;

/* 1 when the communicator's nodes all have the same number of ranks. */
int mox__grid_nodes_equal(const mox__comm_t *c);
/* Fill g (g->rank must hold size ints) as hier or flat. */
void mox__grid_build(const mox__comm_t *c, int hier, mox__grid_t *g);
/* Fill g as one column of all ranks (N = size, L = 1, rank order): the
 * grid of the latency algorithms on one node or on nodes of unequal size. */
void mox__grid_build_column(const mox__comm_t *c, mox__grid_t *g);
/* Fill g as one column of the nodes' leaders (local rank 0; leader mode,
 * see mox__shm_node_t) and add to unit[leader of n] (zeroed by the
 * caller) the counts of node n's ranks. */
void mox__grid_build_leaders(const mox__comm_t *c, const uint64_t *counts,
                             mox__grid_t *g, uint64_t *unit);

/*
 * Rows of possibly different lengths, for the pipelined algorithms: nodes
 * (hier, of any sizes) or one row of all ranks (flat). Rank (n, l) is
 * rank[first[n] + l]. On row n, the block of a rank r of another row is
 * handled by (n, lidx[r] % length of n): r's rail peer when rows are
 * equal, a fixed rank otherwise, so every block still crosses between two
 * nodes once.
 */
typedef struct {
    int N, L, row, col;  /* rows; my row's length, my row and index */
    int *first;          /* [N+1] */
    int *rank;           /* [P] by row, then index */
    int *row_of, *lidx;  /* [P] by rank */
} mox__rows_t;

/* Fill g; the caller owns the arrays (first: N+1 <= size+1 ints, the
 * others size ints). */
void mox__rows_build(const mox__comm_t *c, int hier, mox__rows_t *g);

/*
 * Virtual rows of recursive halving/doubling over N rows (rhalving,
 * rdoubling): with N2 the largest power of two <= N, virtual row v
 * (0 <= v < N2) is row v and, when v + N2 < N, row v + N2. mox__vrows
 * returns N2, sets *nsteps = log2(N2) and lists the rows in virtual order
 * (vrow[N]; vpos[row] = its index there), so that any range of virtual
 * rows is one contiguous range of rows; mox__vrow_first is the index of
 * virtual row v's first row in that order (v = N2 gives N).
 */
int mox__vrows(int N, int *nsteps, int *vrow, int *vpos);
static inline int mox__vrow_first(int N, int N2, int v)
{
    int extra = N - N2; /* virtual rows 0..extra-1 have two rows */
    return v <= extra ? 2 * v : extra + v;
}

/* Elements per pipeline chunk for elements of `elem_bytes` (MOX_RS_CHUNK_SIZE),
 * a multiple of `align` elements (>= 1). */
uint64_t mox__rsag_chunk(const mox__comm_t *c, size_t elem_bytes,
                         uint64_t align);
static inline uint32_t mox__rsag_nseg(uint64_t count, uint64_t chunk)
{
    return (uint32_t)((count + chunk - 1) / chunk);
}

typedef struct {
    const char *in;          /* full input vector (recvbuf when in place) */
    char *out;               /* this rank's slice */
    const uint64_t *counts;  /* [P] */
    mox_dtype_t dtype;
    mox_op_t op;
    uint64_t block_elems;    /* sparse: block size; 0 = dense */
    const uint64_t *blocks;  /* sparse: present blocks, ascending */
    uint64_t nblocks;
    int hier;                /* hier algorithm: node grid, else flat */
    int ring;                /* hier on equal nodes, dense: ring among
                                rail peers instead of direct sends */
    int node_grid;           /* rhalving: nodes x local ranks (equal
                                nodes), else one column of all ranks */
    int leader;              /* rhalving in leader mode (see
                                mox__shm_node_t) */
} mox__rs_args_t;

typedef struct {
    const char *src;         /* this rank's block */
    char *out;
    const uint64_t *counts, *displs; /* [P] */
    mox_dtype_t dtype;
    int hier;
    int ring;                /* hier on equal nodes: ring among rail peers */
    int leader;              /* rdoubling in leader mode (see
                                mox__shm_node_t) */
} mox__ag_args_t;

mox_status_t mox__reduce_scatter_hier(struct mox_req *req,
                                      const mox__rs_args_t *a);
mox_status_t mox__reduce_scatter_rhalving(struct mox_req *req,
                                          const mox__rs_args_t *a);
mox_status_t mox__allgather_hier(struct mox_req *req,
                                 const mox__ag_args_t *a);
mox_status_t mox__allgather_rdoubling(struct mox_req *req,
                                      const mox__ag_args_t *a);

/* Small vectors on one node, through the shm collective area
 * (rsag_shm_small.c). mox__shm_small_fits: 1 when the
 * communicator has several ranks, all on one node, and a vector of
 * `bytes` (the whole vector) fits MOX_SHM_SMALL; the same on every rank,
 * as MOX_SHM_SMALL must be. */
int mox__shm_small_fits(mox__comm_t *c, uint64_t bytes);
/* Block-sparse reduce-scatter in the shm area: the bitmap in front of the
 * data (a multiple of 64 bytes; 0 when dense). A slot has room for
 * MOX_SHM_SMALL bytes of data and a bitmap of 1/64 of that. */
size_t mox__shm_sparse_bitmap_bytes(uint64_t total, uint64_t block_elems);
/* Block-sparse reduce-scatter may try the shm area (the same on every
 * rank): one node; vectors above 4 x MOX_SHM_SMALL bytes go in rounds of
 * that span (a part of every slice each), and the bitmap and prefix
 * counts of a round take at most 3/16 of MOX_SHM_SMALL. The present
 * blocks go packed into each rank's slot; when some rank's do not fit,
 * every rank sees it after the first flag exchange and the request goes
 * on as the message algorithm. */
int mox__shm_sparse_may(mox__comm_t *c, uint64_t total, uint64_t block_elems,
                        size_t elem_bytes);
mox_status_t mox__reduce_scatter_shm(struct mox_req *req,
                                     const mox__rs_args_t *a);
/* Allgather through the shm area: blocks larger than a slot go in rounds
 * of a slot's capacity each. mox__shm_ag_rounds: how many rounds blocks
 * of up to `max_block_bytes` take (0: not on this communicator, or more
 * than the flag values can number). */
mox_status_t mox__allgather_shm(struct mox_req *req, const mox__ag_args_t *a);
uint32_t mox__shm_ag_rounds(mox__comm_t *c, uint64_t max_block_bytes);

/*
 * The data messages of a ring (reduce_scatter_ring, allgather_ring) as
 * one stream: step x (0 <= x < nsteps) has messages base[x] ..
 * base[x+1]-1, base[nsteps] of them in all (steps may be empty). The
 * step of message i < base[nsteps]:
 */
static inline uint32_t mox__ring_step(const uint32_t *base, int nsteps,
                                      uint32_t i)
{
    int x = 0;
    while (x + 1 < nsteps && base[x + 1] <= i)
        x++;
    return (uint32_t)x;
}

/* Agreement header: what must be equal on every rank. */
#define MOX_RSAG_HDR_BYTES 40
/* Encoded headers of ranks that agree are equal in these first bytes
 * (all but `mine`), which is all mox__rsag_hdr_check looks at. */
#define MOX_RSAG_HDR_AGREED_BYTES 32
enum { MOX_RSAG_KIND_RS = 1, MOX_RSAG_KIND_RS_SPARSE = 2, MOX_RSAG_KIND_AG = 3,
       /* sent alone by a rank that found a disagreement, to the peers
        * still waiting for its first message: they fail naming it */
       MOX_RSAG_KIND_ABORT = 0xff };
typedef struct {
    uint32_t kind;
    uint64_t seq;
    uint64_t hash;   /* FNV-1a of dtype, op, block size, size, counts */
    uint64_t total;  /* sum of counts, to print */
    uint64_t mine;   /* the sender's own count, to print */
} mox__rsag_hdr_t;

uint64_t mox__rsag_hash(uint32_t kind, int dtype, int op, uint64_t block,
                        const uint64_t *counts, int P);
/* This rank's header (kind, sequence, the hash of what must agree, the
 * total of counts[P] and its own counts[me]) into *h, encoded into out
 * (MOX_RSAG_HDR_BYTES). */
void mox__rsag_hdr_make(mox__rsag_hdr_t *h, void *out, uint32_t kind,
                        uint64_t seq, int dtype, int op, uint64_t block,
                        const uint64_t *counts, int P, int me);
void mox__rsag_hdr_encode(const mox__rsag_hdr_t *h, void *buf);
/* The same header with kind MOX_RSAG_KIND_ABORT. */
void mox__rsag_hdr_encode_abort(const mox__rsag_hdr_t *h, void *buf);
/* 1 when a message of `len` bytes at buf is an abort header of this
 * collective (magic, kind, sequence): a ring rank sends one in place of
 * its next data message when it gives up. Data that equals those 16
 * bytes would be taken for one. */
int mox__rsag_is_abort(const void *buf, size_t len,
                       const mox__rsag_hdr_t *mine);
/* Compare a received header with ours; MOX_ERR_MISMATCH (or
 * MOX_ERR_PROTOCOL for garbage) naming `peer` and this rank. */
mox_status_t mox__rsag_hdr_check(mox__comm_t *c, const char *what, int peer,
                                 const void *buf, size_t len,
                                 const mox__rsag_hdr_t *mine);
/* After a header did not match: send `abort` (the encoded abort header)
 * alone to `peer` on r, unless r was posted already. An abort that cannot
 * go out (that peer is gone too) leaves the communicator's error, which
 * names the mismatch, as it was. */
void mox__rsag_send_abort(mox__comm_t *c, int peer, uint64_t tag,
                          const void *abort, mox__treq_t *r);
/* A send to a partner failed with `st`: when r, the partner's message of
 * the same step (received at buf), is here and is an abort header (the
 * partner gave up on a mismatch and left), that mismatch is the error to
 * report (MOX_ERR_MISMATCH naming the partner), not its absence; else
 * `st`. */
mox_status_t mox__rsag_gone(mox__comm_t *c, const char *what,
                            mox_status_t st, const mox__treq_t *r,
                            const void *buf, const mox__rsag_hdr_t *mine);

/*
 * The header rides in front of the first message each rank sends each grid
 * peer (no message of its own: on 8 ranks over 4 nodes that halves the
 * messages of a small collective). mox__rsag_isend_hdr sends `hdr`
 * (MOX_RSAG_HDR_BYTES) then `bytes` of `data` as one message: a gather
 * send where the transport has one (iov[2] must then live until the send
 * is done), else a copy into *stage (malloc'd; the caller frees it after
 * the send is done).
 */
mox_status_t mox__rsag_isend_hdr(mox__comm_t *c, int peer, uint64_t tag,
                                 const void *hdr, const void *data,
                                 size_t bytes, mox__iov_t iov[2],
                                 void **stage, mox__treq_t *r);
/*
 * Check a completed first message (header + payload, received at `buf`):
 * the transfer, the header's length and agreement. On success r->bytes
 * becomes the payload's length, so the caller checks the payload as any
 * other message. A message longer than the receive is MOX_ERR_MISMATCH.
 */
mox_status_t mox__rsag_recv_hdr(mox__comm_t *c, const char *what,
                                mox__treq_t *r, const void *buf,
                                const mox__rsag_hdr_t *mine);

/* Waiting on the shm area (rsag_shm_small.c): whom, since when. */
typedef struct {
    int waiting;                 /* rank keeping us waiting (-1: none) */
    unsigned polls;
    uint64_t wait_ns, check_ns;  /* waiting on it since; last peer check */
} mox__shm_waiter_t;

/*
 * Leader mode of the latency algorithms (rhalving, rdoubling) on several
 * nodes: local rank 0 of each node, its leader, runs the network part for
 * the whole node, and the node's ranks meet it in the shm area
 * (rsag_shm_small.c). An op takes two rounds in the area's order of small
 * ops:
 *  round 0: every other local rank writes the agreement header and its
 *           data into its slot (mox__shm_node_put); the leader waits for
 *           all of them and checks their headers (mox__shm_node_gather);
 *  round 1: the leader writes the node's result into its slot
 *           (mox__shm_node_slot, mox__shm_node_publish) and the others
 *           read it (mox__shm_node_fetch, mox__shm_node_done).
 * A leader that fails before it publishes, or another rank that fails
 * before it writes round 0, stores its status in its `failed` flag
 * (mox__shm_node_end), so the ranks waiting for it fail at once with
 * that status instead of waiting for MOX_TIMEOUT.
 * Calls return MOX_IN_PROGRESS while they wait (with the shm area's
 * MOX_TIMEOUT and dead-peer checks).
 */
typedef struct {
    mox__shm_waiter_t wt;
    const mox__coll_slot_t **cs;  /* [L] by local rank */
    int L, me, leader;            /* local ranks, mine; leader's rank */
    int state, next;
    int slot0, slot1;
    uint64_t k0, prev0, reuse0, reuse1; /* round 1's flag is k0 + 1 */
    size_t out_bytes;             /* leader: what it publishes */
    const char *what;
    const mox__rsag_hdr_t *h;     /* the caller's, with its encoding: */
    const unsigned char *hdr_out;
} mox__shm_node_t;

/* Leader mode may run: several nodes of equal size with 2 or more ranks,
 * each with the shm area, and a whole vector of `bytes` that fits a slot
 * (the same on every rank, as MOX_SHM_SMALL must be). */
int mox__shm_node_may(mox__comm_t *c, uint64_t bytes);
/* Take the op's two rounds (on every rank, in the order ops start). */
mox_status_t mox__shm_node_init(struct mox_req *req, mox__shm_node_t *n,
                                const char *what, const mox__rsag_hdr_t *h,
                                const unsigned char *hdr_out);
mox_status_t mox__shm_node_put(struct mox_req *req, mox__shm_node_t *n,
                               const void *data, size_t bytes);
/* Leader: data[l] = local rank l's data (l >= 1). */
mox_status_t mox__shm_node_gather(struct mox_req *req, mox__shm_node_t *n,
                                  const char **data);
/* Leader: where the result goes (room for `bytes`), once the slot is
 * free; then publish it. */
mox_status_t mox__shm_node_slot(struct mox_req *req, mox__shm_node_t *n,
                                size_t bytes, char **dst);
void mox__shm_node_publish(struct mox_req *req, mox__shm_node_t *n);
/* Others: the leader's result, or its failure. */
mox_status_t mox__shm_node_fetch(struct mox_req *req, mox__shm_node_t *n,
                                 const char **data);
void mox__shm_node_done(struct mox_req *req, mox__shm_node_t *n);
/* From the algorithm's cleanup, on success and failure: a leader that did
 * not publish, or another rank that did not write round 0, stores `st` as
 * its failure; every rank's rounds count as read and done. */
void mox__shm_node_end(struct mox_req *req, mox__shm_node_t *n,
                       mox_status_t st);

#endif
