/*
 * The small interface every transport implements (self, shm, ucx).
 * Algorithms in core/ talk only to this, through mox__isend / mox__irecv in
 * comm.h, which pick the transport for a peer.
 *
 * Semantics: tagged, point-to-point, nonblocking. Between one ordered pair of
 * ranks, messages with the same tag are matched in the order they were
 * posted. A receive posted with `capacity` bytes matches a message of the
 * same (peer, tag) of any length <= capacity; a longer message completes the
 * receive with MOX_ERR_TRUNCATED. Requests are owned by the caller and must
 * stay at a fixed address until done.
 */
#ifndef MOX_CORE_TRANSPORT_H
#define MOX_CORE_TRANSPORT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "mox/mox.h"

struct mox_comm;

typedef struct mox__treq {
    int done;             /* set to 1 by the transport when finished */
    mox_status_t status;  /* MOX_OK or the error, valid when done */
    size_t bytes;         /* bytes received (receives), valid when done */
    int peer;             /* set by core (mox__isend/irecv), for messages */
    int is_send;
    int posted;           /* set by core once handed to a transport */
    uint64_t *moves;      /* set by core: its collective's count of finished
                             messages (MOX_TIMEOUT's clock), or NULL */
    /* Owned by the transport while the request is running. */
    void *tp_priv[6];
    uint64_t tp_u64[4];
} mox__treq_t;

/* Transports end every request through this, exactly once. */
static inline void mox__treq_finish(mox__treq_t *r, mox_status_t st,
                                    size_t bytes)
{
    r->status = st;
    r->bytes = bytes;
    r->done = 1;
    if (r->moves)
        ++*r->moves;
}

typedef struct mox__transport mox__transport_t;

/*
 * One local rank's part of a node's collective area (shm only; see
 * transports/shm/shm.h for the layout): three flags on cache lines of their
 * own and MOX_COLL_SLOTS data slots of `slot_bytes` each, in memory every
 * local rank maps. Only the owner writes its flags and slots; the
 * collectives built on it (core/algorithms/rsag_shm_small.c) define what
 * the values mean.
 */
#define MOX_COLL_SLOTS 2
/* Room at the start of a slot for a header; the data follows, cache-line
 * aligned. */
#define MOX_COLL_HDR_BYTES 64
typedef struct {
    _Atomic uint64_t *written;   /* owner: data of an op is in a slot */
    _Atomic uint64_t *read;      /* owner: it finished reading an op */
    _Atomic uint64_t *failed;    /* owner: it gave up an op (its status in
                                    failed_code, stored first) */
    _Atomic uint64_t *failed_code;
    _Atomic uint32_t *bell;      /* owner: bumped when `written` or
                                    `failed` moves (mox__bell_ring) */
    _Atomic uint32_t *sleepers;  /* ranks asleep on the bell (they count
                                    themselves) */
    char *slot[MOX_COLL_SLOTS];
    size_t slot_bytes;           /* MOX_COLL_HDR_BYTES + data capacity */
} mox__coll_slot_t;

/* One piece of a gather send (same layout as struct iovec). */
typedef struct mox__iov {
    const void *base;
    size_t len;
} mox__iov_t;

typedef struct {
    const char *name;
    /*
     * Collective over all ranks of `comm` (uses the bootstrap in
     * comm->boot). Every rank calls every transport's create, even when it
     * has no peer for it, so bootstrap allgathers line up. On success
     * *tp is the transport's state (may be NULL if unused on this rank).
     */
    mox_status_t (*create)(struct mox_comm *comm, mox__transport_t **tp);
    /* Release everything; cancels running requests. NULL accepted. */
    void (*destroy)(mox__transport_t *tp);
    /* `peer` is a rank of the communicator. */
    mox_status_t (*isend)(mox__transport_t *tp, int peer, uint64_t tag,
                          const void *buf, size_t bytes, mox__treq_t *req);
    mox_status_t (*irecv)(mox__transport_t *tp, int peer, uint64_t tag,
                          void *buf, size_t capacity, mox__treq_t *req);
    /* Make progress; returns the number of completions or events seen
     * (0 when idle), or a negative mox_status_t on a fatal error. */
    int (*progress)(mox__transport_t *tp);
    /* Cancel a running request (after a timeout); it is done afterwards
     * with MOX_ERR_TIMEOUT and the transport no longer touches its buffer.
     * May be NULL when the transport cannot cancel. */
    void (*cancel)(mox__transport_t *tp, mox__treq_t *req);
    /*
     * Optional gather send: one message of `bytes` bytes made of the
     * `iovcnt` pieces of `iov` in order (their lengths add up to `bytes`;
     * zero-length pieces are allowed). It matches an ordinary irecv, which
     * sees one message. The iov array and every buffer it points to stay
     * valid and unchanged until the request is done. May be NULL; returns
     * MOX_ERR_UNSUPPORTED, leaving `req` untouched, for a call it would do
     * no better than a packed send (the caller packs and calls isend).
     */
    mox_status_t (*isendv)(mox__transport_t *tp, int peer, uint64_t tag,
                           const mox__iov_t *iov, size_t iovcnt, size_t bytes,
                           mox__treq_t *req);
    /*
     * Optional: the collective area of local rank `local_rank` (0 ..
     * local size - 1), or NULL when the transport has none (not shm,
     * alone on the node, MOX_SHM_SMALL=0). The pointers stay valid until
     * destroy.
     */
    const mox__coll_slot_t *(*coll_slot)(mox__transport_t *tp,
                                         int local_rank);
    /*
     * Optional: is `peer` (a rank of the communicator this transport
     * reaches) still there? MOX_OK, or MOX_ERR_PEER once its process is
     * gone (every request to it then fails too). Costs syscalls: for
     * callers that wait on something the transport does not see (the
     * collective area's flags), now and then.
     */
    mox_status_t (*peer_check)(mox__transport_t *tp, int peer);
} mox__transport_ops_t;

extern const mox__transport_ops_t mox__tp_self_ops;
extern const mox__transport_ops_t mox__tp_shm_ops;
extern const mox__transport_ops_t mox__tp_ucx_ops;

#endif
