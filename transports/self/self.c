/*
 * Self transport: messages from a rank to itself. A send waits (without
 * copying) until a receive with its tag is posted, then one memcpy moves
 * the bytes and completes both; either side may be posted first. Matching
 * is FIFO per tag, like every transport. Requests link through tp_priv[0].
 * A gather send is delivered the same way, one memcpy per piece.
 */
#include <stdlib.h>
#include <string.h>

#include "core/comm.h"
#include "core/log.h"

typedef struct {
    mox__treq_t *head, *tail;
} self_queue_t;

struct mox__transport {
    int rank;
    self_queue_t sends; /* unmatched sends, in posting order */
    self_queue_t recvs; /* unmatched receives, in posting order */
};

#define NEXT(r) ((mox__treq_t *)(r)->tp_priv[0])
#define BUF(r) ((r)->tp_priv[1])
#define TAG(r) ((r)->tp_u64[0])
#define LEN(r) ((r)->tp_u64[1])
/* Gather sends: BUF is the iov array, IOVCNT its entries (0: plain). */
#define IOVCNT(r) ((r)->tp_u64[2])

static void q_push(self_queue_t *q, mox__treq_t *r)
{
    r->tp_priv[0] = NULL;
    if (q->tail)
        q->tail->tp_priv[0] = r;
    else
        q->head = r;
    q->tail = r;
}

/* Unlink the first request with `tag` (any tag when r is given and
 * matches by identity); NULL when none. */
static mox__treq_t *q_take(self_queue_t *q, uint64_t tag, mox__treq_t *want)
{
    mox__treq_t *prev = NULL;
    for (mox__treq_t *it = q->head; it; prev = it, it = NEXT(it)) {
        if (want ? it != want : TAG(it) != tag)
            continue;
        if (prev)
            prev->tp_priv[0] = NEXT(it);
        else
            q->head = NEXT(it);
        if (q->tail == it)
            q->tail = prev;
        it->tp_priv[0] = NULL;
        return it;
    }
    return NULL;
}

static void done(mox__treq_t *r, mox_status_t st, size_t bytes)
{
    mox__treq_finish(r, st, bytes);
}

/* Deliver `s` into `r`; a message longer than the receive truncates it
 * and is dropped, the sender still completes. */
static void deliver(mox__treq_t *s, mox__treq_t *r)
{
    uint64_t bytes = LEN(s);
    if (bytes > LEN(r)) {
        done(r, MOX_ERR_TRUNCATED, bytes);
    } else if (IOVCNT(s)) {
        const mox__iov_t *iov = BUF(s);
        char *dst = BUF(r);
        for (uint64_t i = 0; i < IOVCNT(s); i++) {
            if (iov[i].len)
                memcpy(dst, iov[i].base, iov[i].len);
            dst += iov[i].len;
        }
        done(r, MOX_OK, bytes);
    } else {
        if (bytes)
            memcpy(BUF(r), BUF(s), bytes);
        done(r, MOX_OK, bytes);
    }
    done(s, MOX_OK, 0);
}

static void init(mox__treq_t *r, uint64_t tag, const void *buf, size_t len)
{
    r->done = 0;
    r->status = MOX_IN_PROGRESS;
    r->bytes = 0;
    BUF(r) = (void *)buf;
    TAG(r) = tag;
    LEN(r) = len;
    IOVCNT(r) = 0;
}

static mox_status_t self_create(mox__comm_t *comm, mox__transport_t **tp)
{
    *tp = calloc(1, sizeof **tp);
    if (!*tp)
        return mox__fail(comm, MOX_ERR_NO_MEMORY, "self: no memory");
    (*tp)->rank = comm->rank;
    return MOX_OK;
}

static void self_destroy(mox__transport_t *tp)
{
    if (!tp)
        return;
    mox__treq_t *r;
    while ((r = q_take(&tp->sends, 0, tp->sends.head)))
        done(r, MOX_ERR_TIMEOUT, 0);
    while ((r = q_take(&tp->recvs, 0, tp->recvs.head)))
        done(r, MOX_ERR_TIMEOUT, 0);
    free(tp);
}

static mox_status_t self_isend(mox__transport_t *tp, int peer, uint64_t tag,
                               const void *buf, size_t bytes,
                               mox__treq_t *req)
{
    init(req, tag, buf, bytes);
    if (!tp || peer != tp->rank || (bytes && !buf)) {
        done(req, MOX_ERR_INVALID_ARG, 0);
        return MOX_ERR_INVALID_ARG;
    }
    mox__treq_t *r = q_take(&tp->recvs, tag, NULL);
    if (r)
        deliver(req, r);
    else
        q_push(&tp->sends, req);
    return MOX_OK;
}

/* Pieces that add up to `bytes` exactly, each with a buffer? */
static int iov_sane(const mox__iov_t *iov, size_t iovcnt, size_t bytes)
{
    if (iovcnt && !iov)
        return 0;
    size_t sum = 0;
    for (size_t i = 0; i < iovcnt; i++) {
        if (iov[i].len > bytes - sum || (iov[i].len && !iov[i].base))
            return 0;
        sum += iov[i].len;
    }
    return sum == bytes;
}

static mox_status_t self_isendv(mox__transport_t *tp, int peer, uint64_t tag,
                                const mox__iov_t *iov, size_t iovcnt,
                                size_t bytes, mox__treq_t *req)
{
    init(req, tag, iov, bytes);
    if (!tp || peer != tp->rank || !iov_sane(iov, iovcnt, bytes)) {
        done(req, MOX_ERR_INVALID_ARG, 0);
        return MOX_ERR_INVALID_ARG;
    }
    IOVCNT(req) = iovcnt;
    mox__treq_t *r = q_take(&tp->recvs, tag, NULL);
    if (r)
        deliver(req, r);
    else
        q_push(&tp->sends, req);
    return MOX_OK;
}

static mox_status_t self_irecv(mox__transport_t *tp, int peer, uint64_t tag,
                               void *buf, size_t capacity, mox__treq_t *req)
{
    init(req, tag, buf, capacity);
    if (!tp || peer != tp->rank || (capacity && !buf)) {
        done(req, MOX_ERR_INVALID_ARG, 0);
        return MOX_ERR_INVALID_ARG;
    }
    mox__treq_t *s = q_take(&tp->sends, tag, NULL);
    if (s)
        deliver(s, req);
    else
        q_push(&tp->recvs, req);
    return MOX_OK;
}

/* Matching happens when the second side is posted; nothing to poll. */
static int self_progress(mox__transport_t *tp)
{
    (void)tp;
    return 0;
}

static void self_cancel(mox__transport_t *tp, mox__treq_t *req)
{
    if (!tp || !req || req->done)
        return;
    if (!q_take(&tp->sends, 0, req))
        q_take(&tp->recvs, 0, req);
    done(req, MOX_ERR_TIMEOUT, 0);
}

const mox__transport_ops_t mox__tp_self_ops = {
    .name = "self",
    .create = self_create,
    .destroy = self_destroy,
    .isend = self_isend,
    .irecv = self_irecv,
    .progress = self_progress,
    .cancel = self_cancel,
    .isendv = self_isendv,
};
