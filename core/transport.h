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
    /* Owned by the transport while the request is running. */
    void *tp_priv[6];
    uint64_t tp_u64[4];
} mox__treq_t;

typedef struct mox__transport mox__transport_t;

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
} mox__transport_ops_t;

extern const mox__transport_ops_t mox__tp_self_ops;
extern const mox__transport_ops_t mox__tp_shm_ops;
extern const mox__transport_ops_t mox__tp_ucx_ops;

#endif
