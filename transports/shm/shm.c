/*
 * Shared-memory transport: requests, queues, progress and peer failure.
 * The segment is set up in shm_setup.c; bytes move in shm_ring.c.
 *
 * Requests are the caller's mox__treq_t; the transport links them into
 * per-peer FIFOs through tp_priv[0], so nothing is allocated on the data
 * path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "shm.h"

/* ------------------------------------------------------------------ */
/* Intrusive queues                                                     */

#define NEXT(r) ((mox__treq_t *)(r)->tp_priv[0])

void shm_q_push(shm_queue_t *q, mox__treq_t *r)
{
    r->tp_priv[0] = NULL;
    if (q->tail)
        q->tail->tp_priv[0] = r;
    else
        q->head = r;
    q->tail = r;
}

mox__treq_t *shm_q_pop(shm_queue_t *q)
{
    mox__treq_t *r = q->head;
    if (!r)
        return NULL;
    q->head = NEXT(r);
    if (!q->head)
        q->tail = NULL;
    r->tp_priv[0] = NULL;
    return r;
}

static void unlink_after(shm_queue_t *q, mox__treq_t *prev, mox__treq_t *r)
{
    if (prev)
        prev->tp_priv[0] = NEXT(r);
    else
        q->head = NEXT(r);
    if (q->tail == r)
        q->tail = prev;
    r->tp_priv[0] = NULL;
}

int shm_q_remove(shm_queue_t *q, mox__treq_t *r)
{
    for (mox__treq_t *prev = NULL, *it = q->head; it; prev = it, it = NEXT(it))
        if (it == r) {
            unlink_after(q, prev, r);
            return 1;
        }
    return 0;
}

mox__treq_t *shm_q_take_tag(shm_queue_t *q, uint64_t tag)
{
    for (mox__treq_t *prev = NULL, *it = q->head; it; prev = it, it = NEXT(it))
        if (SHM_REQ_TAG(it) == tag) {
            unlink_after(q, prev, it);
            return it;
        }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Completion and failure                                               */

void shm_req_done(mox__treq_t *r, mox_status_t st, size_t bytes)
{
    mox__treq_finish(r, st, bytes);
}

static int fail_queue(shm_queue_t *q, mox_status_t st)
{
    int n = 0;
    mox__treq_t *r;
    while ((r = shm_q_pop(q))) {
        shm_req_done(r, st, 0);
        n++;
    }
    return n;
}

/* Everything sent to the peer fails; a half-written message cannot be
 * finished, so the send side stays closed. */
static int fail_sends(shm_peer_t *p, mox_status_t st)
{
    p->s_failed = st;
    return fail_queue(&p->sendq, st) + fail_queue(&p->ackq, st);
}

static int fail_recvs(shm_peer_t *p, mox_status_t st)
{
    int n = fail_queue(&p->recvq, st);
    if (p->r_req) {
        shm_req_done(p->r_req, st, 0);
        p->r_req = NULL;
        n++;
    }
    p->r_active = 0;
    return n;
}

int shm_peer_fail(shm_peer_t *p, mox_status_t st)
{
    p->failed = st;
    return fail_sends(p, st) + fail_recvs(p, st);
}

/* ------------------------------------------------------------------ */
/* Peer liveness                                                        */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* kill(pid, 0) still succeeds on a zombie nobody reaped yet, so look at
 * its state too. Called every SHM_PEER_CHECK_NS per waiting peer, and when
 * a single-copy read from it fails. */
int shm_peer_alive(pid_t pid)
{
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 0;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1; /* no /proc: trust kill() */
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')'); /* comm may contain spaces */
    return !(paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X'));
}

static int has_pending(const shm_peer_t *p)
{
    return p->sendq.head || p->ackq.head || p->recvq.head || p->r_active;
}

/* Called now and then from progress: a peer we have been waiting on for a
 * while is asked whether it still exists. */
static int check_peers(mox__transport_t *tp)
{
    uint64_t now = now_ns();
    int n = 0;
    for (int i = 0; i < tp->local_size; i++) {
        shm_peer_t *p = &tp->peers[i];
        if (i == tp->local_rank || p->failed || p->dead || !has_pending(p)) {
            p->stalled_since_ns = 0;
            continue;
        }
        if (!p->stalled_since_ns) {
            p->stalled_since_ns = now;
            continue;
        }
        if (now - p->stalled_since_ns < SHM_PEER_CHECK_NS)
            continue;
        p->stalled_since_ns = now;
        if (shm_peer_alive(p->pid))
            continue;
        MOX_ERROR("shm", "local peer rank %d (pid %d) is gone", p->rank,
                  (int)p->pid);
        p->dead = 1;
        tp->comm->peers_lost++;
        n += fail_sends(p, MOX_ERR_PEER);
    }
    return n;
}

/* A dead peer may have left whole messages in the ring: deliver those,
 * then fail whatever still waits for more. */
static int reap_dead(shm_peer_t *p)
{
    uint64_t h = atomic_load_explicit(&p->in->head, memory_order_acquire);
    if (h != p->r_tail)
        return 0; /* a later receive may still match what is left */
    p->failed = MOX_ERR_PEER;
    return fail_recvs(p, MOX_ERR_PEER);
}

/* ------------------------------------------------------------------ */
/* Operations                                                           */

static shm_peer_t *peer_of(mox__transport_t *tp, int rank)
{
    const mox__comm_t *c = tp->comm;
    if (rank < 0 || rank >= c->size || c->topo.node_of[rank] != c->node)
        return NULL;
    int local = c->topo.local_of[rank];
    if (local == tp->local_rank || local < 0 || local >= tp->local_size)
        return NULL;
    return &tp->peers[local];
}

static void req_init(mox__treq_t *r, int local, uint64_t tag, const void *buf,
                     size_t bytes)
{
    r->done = 0;
    r->status = MOX_IN_PROGRESS;
    r->bytes = 0;
    r->tp_priv[0] = NULL;
    SHM_REQ_BUF(r) = (void *)buf;
    SHM_REQ_TAG(r) = tag;
    SHM_REQ_LEN(r) = bytes;
    SHM_REQ_ACK(r) = 0;
    SHM_REQ_PEER(r) = (uint64_t)local;
    shm_req_set_iovcnt(r, 0);
}

/* A request that cannot start is completed at once and its error returned,
 * so callers that check either the status or the request see it. */
static mox_status_t refuse(mox__treq_t *r, mox_status_t st)
{
    shm_req_done(r, st, 0);
    return st;
}

static mox_status_t shm_isend(mox__transport_t *tp, int peer, uint64_t tag,
                              const void *buf, size_t bytes, mox__treq_t *req)
{
    shm_peer_t *p = tp ? peer_of(tp, peer) : NULL;
    if (!p || (bytes && !buf))
        return refuse(req, MOX_ERR_INVALID_ARG);
    req_init(req, (int)(p - tp->peers), tag, buf, bytes);
    if (p->failed || p->s_failed || p->dead)
        return refuse(req, p->failed  ? p->failed
                           : p->dead ? MOX_ERR_PEER
                                     : p->s_failed);
    shm_q_push(&p->sendq, req);
    shm_push_sends(tp, p);
    return MOX_OK;
}

/* Pieces that add up to `bytes` exactly, each with a buffer? The receiver
 * checks again what it reads: this catches the caller's mistakes here. */
static int iov_sane(const mox__iov_t *iov, size_t iovcnt, size_t bytes)
{
    if (!iov || !iovcnt)
        return 0;
    size_t sum = 0;
    for (size_t i = 0; i < iovcnt; i++) {
        if (iov[i].len > bytes - sum || (iov[i].len && !iov[i].base))
            return 0;
        sum += iov[i].len;
    }
    return sum == bytes;
}

/* Single copy only: the receiver reads the pieces where they are. Without
 * CMA, or below its threshold, packing costs no more than streaming the
 * pieces through the ring would, so the caller packs. */
static mox_status_t shm_isendv(mox__transport_t *tp, int peer, uint64_t tag,
                               const mox__iov_t *iov, size_t iovcnt,
                               size_t bytes, mox__treq_t *req)
{
    shm_peer_t *p = tp ? peer_of(tp, peer) : NULL;
    if (!p)
        return refuse(req, MOX_ERR_INVALID_ARG);
    if (!shm_wants_rndv(tp, bytes))
        return MOX_ERR_UNSUPPORTED;
    if (!iov_sane(iov, iovcnt, bytes)) {
        mox__fail(tp->comm, MOX_ERR_INVALID_ARG, "shm: gather send to rank "
                  "%d: %zu pieces do not add up to %zu bytes (or one has "
                  "no buffer)", p->rank, iovcnt, bytes);
        return refuse(req, MOX_ERR_INVALID_ARG);
    }
    req_init(req, (int)(p - tp->peers), tag, iov, bytes);
    shm_req_set_iovcnt(req, iovcnt);
    if (p->failed || p->s_failed || p->dead)
        return refuse(req, p->failed  ? p->failed
                           : p->dead ? MOX_ERR_PEER
                                     : p->s_failed);
    shm_q_push(&p->sendq, req);
    shm_push_sends(tp, p);
    return MOX_OK;
}

static mox_status_t shm_irecv(mox__transport_t *tp, int peer, uint64_t tag,
                              void *buf, size_t capacity, mox__treq_t *req)
{
    shm_peer_t *p = tp ? peer_of(tp, peer) : NULL;
    if (!p || (capacity && !buf))
        return refuse(req, MOX_ERR_INVALID_ARG);
    req_init(req, (int)(p - tp->peers), tag, buf, capacity);
    if (p->failed)
        return refuse(req, p->failed);
    shm_q_push(&p->recvq, req);
    shm_drain(tp, p);
    return MOX_OK;
}

static int progress_peer(mox__transport_t *tp, shm_peer_t *p)
{
    int n = shm_poll_acks(tp, p);
    if (!p->failed)
        n += shm_push_sends(tp, p);
    if (!p->failed)
        n += shm_drain(tp, p);
    if (p->dead && !p->failed)
        n += reap_dead(p);
    if (n)
        p->stalled_since_ns = 0;
    return n;
}

static int shm_progress(mox__transport_t *tp)
{
    if (!tp)
        return 0;
    int n = 0;
    for (int i = 0; i < tp->local_size; i++)
        if (i != tp->local_rank && !tp->peers[i].failed)
            n += progress_peer(tp, &tp->peers[i]);
    /* Liveness costs syscalls: look only every few hundred polls. */
    if ((++tp->idle_polls & 255) == 0)
        n += check_peers(tp);
    return n;
}

static void cancel_send(shm_peer_t *p, mox__treq_t *r)
{
    if (r == p->sendq.head && p->s_started) {
        /* Part of it is in the ring and the rest can no longer be read;
         * the receiver would wait forever, so close the send side. */
        MOX_DEBUG("shm", "cancel of a half-sent message to rank %d closes "
                  "the channel", p->rank);
        shm_q_pop(&p->sendq);
        fail_sends(p, MOX_ERR_TRANSPORT);
        return;
    }
    shm_q_remove(&p->sendq, r);
    shm_q_remove(&p->ackq, r);
}

static void shm_cancel(mox__transport_t *tp, mox__treq_t *req)
{
    if (!tp || !req || req->done)
        return;
    uint64_t local = SHM_REQ_PEER(req);
    if (local >= (uint64_t)tp->local_size)
        return;
    shm_peer_t *p = &tp->peers[local];
    if (p->r_req == req)
        p->r_req = NULL; /* the rest of its message is discarded */
    else if (!shm_q_remove(&p->recvq, req))
        cancel_send(p, req);
    shm_req_done(req, MOX_ERR_TIMEOUT, 0);
}

static const mox__coll_slot_t *shm_coll_slot(mox__transport_t *tp,
                                              int local_rank)
{
    if (!tp || !tp->coll || local_rank < 0 || local_rank >= tp->local_size)
        return NULL;
    return &tp->coll[local_rank];
}

/* Asked by callers that wait on the collective area, where no request of
 * ours shows the wait to check_peers. A dead peer is failed as there. */
static mox_status_t shm_peer_check(mox__transport_t *tp, int peer)
{
    shm_peer_t *p = tp ? peer_of(tp, peer) : NULL;
    if (!p)
        return MOX_OK;
    if (p->dead || p->failed == MOX_ERR_PEER)
        return MOX_ERR_PEER;
    if (shm_peer_alive(p->pid))
        return MOX_OK;
    MOX_ERROR("shm", "local peer rank %d (pid %d) is gone", p->rank,
              (int)p->pid);
    p->dead = 1;
    tp->comm->peers_lost++;
    fail_sends(p, MOX_ERR_PEER);
    return MOX_ERR_PEER;
}

const mox__transport_ops_t mox__tp_shm_ops = {
    .name = "shm",
    .create = shm_create,
    .destroy = shm_destroy,
    .isend = shm_isend,
    .irecv = shm_irecv,
    .progress = shm_progress,
    .cancel = shm_cancel,
    .isendv = shm_isendv,
    .coll_slot = shm_coll_slot,
    .peer_check = shm_peer_check,
};
