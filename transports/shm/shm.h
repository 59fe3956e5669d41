/*
 * Shared-memory transport: internal types shared by its files.
 *
 * One segment per node, created by local rank 0 and unlinked as soon as
 * every local rank has mapped it. It holds a small header and one channel
 * per ordered pair (i -> j, i != j) of local ranks:
 *
 *   [segment header, 4 KiB]
 *   channel (i -> j) for every i != j, in order i * (n - 1) + (j without i):
 *     control: head (sender), tail (receiver), ack (receiver), each on its
 *              own cache line
 *     ring:    `slots` slots of `slot_bytes` each
 *   collective area (when MOX_SHM_SMALL > 0), for every local rank i in
 *   order, each part page aligned:
 *     control: written, read, failed (+ its status, and a futex bell
 *              with its count of sleepers), each on its own pair of cache
 *              lines (adjacent-line prefetch); all but `sleepers` written
 *              by i only
 *     slots:   MOX_COLL_SLOTS (2) slots of MOX_COLL_HDR_BYTES +
 *              MOX_SHM_SMALL (rounded up to a cache line) each
 *   Rank i writes its input of a small collective into its own slot and
 *   publishes it through `written`; every local rank reads every slot
 *   (core/algorithms/rsag_shm_small.c defines the protocol).
 *
 * A message is a wire header at the start of a slot followed by payload,
 * continuing over as many following slots as needed, so any size fits a
 * bounded ring: the sender fills slots as they free up while the receiver
 * drains them. Large messages (RNDV) carry only the sender's pid and
 * address; the receiver reads them with process_vm_readv and bumps `ack`.
 * Large gather sends (RNDV_IOV) carry the address and length of the
 * sender's iov array instead: the receiver reads that array in batches,
 * checks it, and reads the pieces it names straight into the receive.
 *
 * Counters only grow; slot index = counter % slots, so no index into the
 * segment ever depends on an unchecked value from shared memory.
 */
#ifndef MOX_TRANSPORTS_SHM_SHM_H
#define MOX_TRANSPORTS_SHM_SHM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/comm.h"
#include "core/transport.h"

#define SHM_CACHE_LINE 64
#define SHM_SEG_HDR_BYTES 4096
#define SHM_MAGIC UINT64_C(0x6d6f782d73686d31) /* "mox-shm1" */
/* Wire header size at the start of a message's first slot; keeps the
 * payload cache-line aligned. */
#define SHM_WIRE_HDR_BYTES 64
/* process_vm_readv chunk per progress call: large enough to run at memory
 * bandwidth, small enough that other channels get their turn. */
#define SHM_CMA_CHUNK (4u << 20)
/* A size no real message has; anything above it is garbage (2^48). */
#define SHM_MAX_MSG_BYTES (UINT64_C(1) << 48)
/* A request waiting this long makes us ask whether its peer still lives. */
#define SHM_PEER_CHECK_NS (100u * 1000u * 1000u)

/* RNDV_IOV: iov entries the receiver reads and checks at a time (fixed
 * room in its per-peer state; process_vm_readv takes up to IOV_MAX). */
#define SHM_IOV_BATCH 64
/* A gather send with more pieces than this is garbage. */
#define SHM_MAX_IOV_COUNT (UINT64_C(1) << 40)

enum { SHM_KIND_EAGER = 1, SHM_KIND_RNDV = 2, SHM_KIND_RNDV_IOV = 3 };

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2,
               "shm needs lock-free 64-bit atomics across processes");

/* Flags of a rank's part of the collective area: 128 bytes apart, so the
 * adjacent-line prefetcher does not couple them. */
#define SHM_COLL_FLAG_BYTES 128

/* Written once by the creator, checked by every opener. */
typedef struct {
    uint64_t magic;
    uint64_t local_size;
    uint64_t slots;
    uint64_t slot_bytes;
    uint64_t coll_slot_bytes; /* 0: no collective area */
    uint64_t total_bytes;
} shm_seg_hdr_t;

typedef struct {
    _Alignas(SHM_COLL_FLAG_BYTES) _Atomic uint64_t written;
    _Alignas(SHM_COLL_FLAG_BYTES) _Atomic uint64_t read;
    _Alignas(SHM_COLL_FLAG_BYTES) _Atomic uint64_t failed;
    _Atomic uint64_t failed_code;
    _Atomic uint32_t bell, sleepers;
    _Alignas(SHM_COLL_FLAG_BYTES) char slots[];
} shm_coll_ctl_t;

typedef struct {
    _Alignas(SHM_CACHE_LINE) _Atomic uint64_t head; /* slots published */
    _Alignas(SHM_CACHE_LINE) _Atomic uint64_t tail; /* slots consumed */
    _Alignas(SHM_CACHE_LINE) _Atomic uint64_t ack;  /* RNDV reads done */
    _Alignas(SHM_CACHE_LINE) char ring[];
} shm_chan_t;

/* At the start of a message's first slot. */
typedef struct {
    uint64_t tag;
    uint64_t bytes;
    uint64_t addr; /* RNDV: sender's buffer; RNDV_IOV: its iov array */
    uint64_t seq;  /* messages sent before this one on the channel */
    uint32_t kind;
    int32_t pid;    /* RNDV, RNDV_IOV: sender's pid */
    uint64_t count; /* RNDV_IOV: entries of the iov array */
} shm_wire_hdr_t;

_Static_assert(sizeof(shm_wire_hdr_t) <= SHM_WIRE_HDR_BYTES, "wire header");

/* An intrusive FIFO of caller-owned requests (linked via tp_priv[0]). */
typedef struct {
    mox__treq_t *head, *tail;
} shm_queue_t;

/* This rank's view of one local peer. */
typedef struct {
    int rank;   /* rank in the communicator */
    pid_t pid;
    shm_chan_t *out; /* we send, they receive */
    shm_chan_t *in;  /* they send, we receive */

    /* Send side. sendq's head is being streamed; ackq waits for RNDV acks. */
    shm_queue_t sendq, ackq;
    uint64_t s_head, s_tail_seen; /* our head; last tail we read */
    uint64_t s_msgs, s_rndv;      /* messages, RNDV messages posted */
    uint64_t s_off;               /* payload bytes of sendq.head written */
    int s_started;                /* its header is in the ring */
    mox_status_t s_failed;        /* send side closed (cancel, peer gone) */

    /* Receive side: posted receives, and the message being delivered. */
    shm_queue_t recvq;
    uint64_t r_tail, r_head_seen;
    uint64_t r_msgs, r_acks;
    int r_active;      /* a message is being delivered (or discarded) */
    mox__treq_t *r_req; /* its receive; NULL when discarding */
    shm_wire_hdr_t r_hdr;
    uint64_t r_off;    /* payload bytes consumed */
    /* RNDV_IOV delivery: a batch of the sender's iov entries, checked. */
    mox__iov_t r_iov[SHM_IOV_BATCH];
    uint64_t r_iov_fetched; /* entries read from the sender so far */
    uint64_t r_iov_sum;     /* their lengths added up */
    unsigned r_iov_n, r_iov_i; /* entries in the batch; the next to read */
    uint64_t r_iov_skip;    /* bytes of entry r_iov_i already read */

    mox_status_t failed; /* MOX_OK, or why every request to it fails */
    int dead;            /* process gone: drain what it left, then fail */
    uint64_t stalled_since_ns;
} shm_peer_t;

struct mox__transport {
    mox__comm_t *comm;
    void *seg;
    size_t seg_bytes;
    uint64_t slots, slot_bytes;
    int cma;                 /* single copy agreed node-wide */
    uint64_t cma_threshold;
    int local_rank, local_size;
    shm_peer_t *peers;       /* [local_size]; our own entry unused */
    uint64_t coll_slot_bytes; /* per slot of the collective area; 0: none */
    mox__coll_slot_t *coll;  /* [local_size], or NULL */
    uint64_t probe_word;     /* read by a neighbour to test CMA */
    unsigned idle_polls;
};

/* Is a message of `bytes` read by the receiver (RNDV) rather than
 * streamed through the ring? */
static inline int shm_wants_rndv(const mox__transport_t *tp, uint64_t bytes)
{
    return tp->cma && bytes > 0 && bytes >= tp->cma_threshold;
}

/* shm_setup.c */
mox_status_t shm_create(mox__comm_t *comm, mox__transport_t **tp);
void shm_destroy(mox__transport_t *tp);
size_t shm_chan_bytes(uint64_t slots, uint64_t slot_bytes);
/* Bytes of one local rank's part of the collective area. */
size_t shm_coll_rank_bytes(uint64_t coll_slot_bytes);
shm_chan_t *shm_chan_at(void *seg, uint64_t slots, uint64_t slot_bytes,
                        int local_size, int from, int to);

/* shm_ring.c: move bytes between requests and channels. Each returns the
 * number of requests it completed. */
int shm_push_sends(mox__transport_t *tp, shm_peer_t *p);
int shm_poll_acks(mox__transport_t *tp, shm_peer_t *p);
int shm_drain(mox__transport_t *tp, shm_peer_t *p);
/* End the single-copy message being received: fail its receive with `st`
 * (unless MOX_OK or already gone), acknowledge it, count completions. */
void shm_rndv_end(shm_peer_t *p, mox_status_t st, int *done);

/* shm_cma.c: one bounded chunk of the single-copy message being received
 * (RNDV, RNDV_IOV); ends it through shm_rndv_end when it is complete or
 * fails. */
void shm_rndv_step(shm_peer_t *p, int *done);
void shm_rndv_iov_step(shm_peer_t *p, int *done);

/* shm.c: request bookkeeping used by the ring code. */
void shm_q_push(shm_queue_t *q, mox__treq_t *r);
mox__treq_t *shm_q_pop(shm_queue_t *q);
int shm_q_remove(shm_queue_t *q, mox__treq_t *r);
/* Unlink and return the first request with `tag`, or NULL. */
mox__treq_t *shm_q_take_tag(shm_queue_t *q, uint64_t tag);
void shm_req_done(mox__treq_t *r, mox_status_t st, size_t bytes);
int shm_peer_fail(shm_peer_t *p, mox_status_t st);
/* Is the process still there (not gone, not a zombie)? Costs syscalls. */
int shm_peer_alive(pid_t pid);

/* Fields of a request while the transport owns it. */
#define SHM_REQ_BUF(r) ((r)->tp_priv[1])
#define SHM_REQ_TAG(r) ((r)->tp_u64[0])
#define SHM_REQ_LEN(r) ((r)->tp_u64[1])  /* bytes (send) or capacity */
#define SHM_REQ_ACK(r) ((r)->tp_u64[2])  /* RNDV: ack count that ends it */
#define SHM_REQ_PEER(r) ((r)->tp_u64[3]) /* local rank of the peer */
/* Gather send: SHM_REQ_BUF is the iov array and this its entry count
 * (never 0: a gather send always has bytes); 0 for plain requests. The
 * tp_u64 words are all taken, so it lives in a pointer slot. */
static inline uint64_t shm_req_iovcnt(const mox__treq_t *r)
{
    return (uint64_t)(uintptr_t)r->tp_priv[2];
}

static inline void shm_req_set_iovcnt(mox__treq_t *r, uint64_t n)
{
    r->tp_priv[2] = (void *)(uintptr_t)n;
}

#endif
