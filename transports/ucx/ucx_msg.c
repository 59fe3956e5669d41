/*
 * UCX transport, messages: tagged send/receive, completion callbacks,
 * progress, cancel and the handling of failed peers.
 *
 * The UCX tag is the core tag (low MOX_TAG_BITS bits) with the sender's
 * rank above it, and receives match it with a full mask, so a receive from
 * rank p with tag t matches only p's messages with tag t.
 *
 * A running request is in tp->running and is the UCX callback's user_data.
 * A request that was given up (cancel, destroy) is detached by flagging
 * the UCX request's user area (ucxt_slot_t), so UCX may complete it later
 * without touching the caller's memory.
 *
 * Receives are posted with UCP_OP_ATTR_FLAG_NO_IMM_CMPL, so their callback
 * always runs (possibly inside ucp_tag_recv_nbx): UCX 1.13.1 leaves
 * param->recv_info.tag_info unwritten on immediate completion, which would
 * lose the received length.
 */
#include <stddef.h>
#include <stdio.h>
#include <ucp/api/ucp.h>

#include "core/comm.h"
#include "core/log.h"
#include "ucx_int.h"

/* How long cancel waits for UCX to hand a request back. */
#define UCXT_CANCEL_MS 200

enum { REQ_LINKED = 1, REQ_SEND = 2, REQ_STOPPED = 4 };
/* tp_u64 fields */
#define FLAGS(r) ((r)->tp_u64[0])
#define BYTES(r) ((r)->tp_u64[1]) /* send size or receive capacity */
#define PEER(r) ((r)->tp_u64[2])

static uint64_t wire_tag(uint64_t tag, int sender)
{
    return tag | ((uint64_t)sender << MOX_TAG_BITS);
}

static void link_req(mox__transport_t *tp, mox__treq_t *r)
{
    r->tp_priv[1] = NULL;
    r->tp_priv[2] = tp->running;
    if (tp->running != NULL)
        tp->running->tp_priv[1] = r;
    tp->running = r;
    FLAGS(r) |= REQ_LINKED;
}

static void unlink_req(mox__transport_t *tp, mox__treq_t *r)
{
    if (!(FLAGS(r) & REQ_LINKED))
        return;
    mox__treq_t *prev = UCXT_PREV(r), *next = UCXT_NEXT(r);
    if (prev != NULL)
        prev->tp_priv[2] = next;
    else
        tp->running = next;
    if (next != NULL)
        next->tp_priv[1] = prev;
    FLAGS(r) &= ~(uint64_t)REQ_LINKED;
}

mox_status_t ucxt_status(const ucxt_peer_t *p, ucs_status_t st)
{
    if (st == UCS_OK)
        return MOX_OK;
    if (st == UCS_ERR_MESSAGE_TRUNCATED)
        return MOX_ERR_TRUNCATED;
    if (p->state == UCXT_PEER_DEAD)
        return MOX_ERR_PEER;
    if (st == UCS_ERR_CANCELED || p->state == UCXT_PEER_CLOSED)
        return MOX_ERR_TIMEOUT; /* we cancelled it after a timeout */
    switch (st) {
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
        return MOX_ERR_PEER;
    default:
        return MOX_ERR_TRANSPORT;
    }
}

static void finish(mox__transport_t *tp, mox__treq_t *r, mox_status_t st,
                   size_t bytes)
{
    unlink_req(tp, r);
    UCXT_REQ(r) = NULL;
    mox__treq_finish(r, st, bytes);
    tp->completions++;
}

void ucxt_slot_init(void *request)
{
    ((ucxt_slot_t *)request)->orphaned = 0;
}

/* Release the UCX request; false when its treq was given up earlier. */
static int release(void *request)
{
    ucxt_slot_t *slot = request;
    int live = !slot->orphaned;
    slot->orphaned = 0;
    ucp_request_free(request);
    return live;
}

static void send_done(void *request, ucs_status_t us, void *user_data)
{
    mox__treq_t *r = user_data;
    if (!release(request))
        return;
    mox__transport_t *tp = UCXT_TP(r);
    if (us != UCS_OK)
        MOX_DEBUG("ucx", "send to rank %d: %s", (int)PEER(r),
                  ucs_status_string(us));
    finish(tp, r, ucxt_status(&tp->peers[PEER(r)], us),
           us == UCS_OK ? BYTES(r) : 0);
}

static void recv_done(void *request, ucs_status_t us,
                      const ucp_tag_recv_info_t *info, void *user_data)
{
    mox__treq_t *r = user_data;
    if (!release(request))
        return;
    mox__transport_t *tp = UCXT_TP(r);
    size_t bytes = 0;
    if (us == UCS_OK || us == UCS_ERR_MESSAGE_TRUNCATED)
        bytes = info->length < BYTES(r) ? info->length : BYTES(r);
    if (us != UCS_OK)
        MOX_DEBUG("ucx", "receive from rank %d: %s", (int)PEER(r),
                  ucs_status_string(us));
    finish(tp, r, ucxt_status(&tp->peers[PEER(r)], us), bytes);
}

/* Checks shared by isend and irecv; fills the request's fixed fields and
 * makes sure the endpoint exists (also for receives, so that the failure
 * of a peer we only receive from is noticed). */
static mox_status_t start(mox__transport_t *tp, int peer, uint64_t tag,
                          size_t bytes, int is_send, mox__treq_t *r,
                          const char *what)
{
    r->done = 0;
    r->status = MOX_IN_PROGRESS;
    r->bytes = 0;
    UCXT_REQ(r) = NULL;
    r->tp_priv[3] = tp;
    FLAGS(r) = is_send ? REQ_SEND : 0;
    BYTES(r) = bytes;
    PEER(r) = (uint64_t)peer;
    if (tp == NULL)
        return MOX_ERR_INVALID_ARG; /* no UCX: caller routed wrongly */
    mox__comm_t *c = tp->comm;
    if (peer < 0 || peer >= c->size || c->topo.node_of[peer] == c->node)
        return mox__fail(c, MOX_ERR_INVALID_ARG,
                         "ucx: %s rank %d, which is not on another node", what,
                         peer);
    if (tag >> MOX_TAG_BITS)
        return mox__fail(c, MOX_ERR_INVALID_ARG,
                         "ucx: tag 0x%llx for rank %d exceeds %d bits",
                         (unsigned long long)tag, peer, MOX_TAG_BITS);
    const ucxt_peer_t *p = &tp->peers[peer];
    if (p->state != UCXT_PEER_OK)
        return mox__fail(c, MOX_ERR_PEER, "ucx: %s rank %d (node %d): %s",
                         what, peer, c->topo.node_of[peer],
                         p->state == UCXT_PEER_DEAD
                             ? ucs_status_string(p->err)
                             : "endpoint closed after a timeout");
    mox_status_t st;
    if (ucxt_ep(tp, peer, &st) == NULL)
        return st;
    return MOX_OK;
}

/* Posting failed: the request is done with that status. */
static mox_status_t fail_now(mox__treq_t *r, mox_status_t st)
{
    mox__treq_finish(r, st, 0);
    return st;
}

/* Post a send of `buf` (contiguous bytes, or a ucp_dt_iov_t array of
 * `count` entries when `iov`). */
static mox_status_t send_common(mox__transport_t *tp, int peer, uint64_t tag,
                                const void *buf, size_t count, int iov,
                                size_t bytes, mox__treq_t *r)
{
    mox_status_t st = start(tp, peer, tag, bytes, 1, r, "send to");
    if (st != MOX_OK)
        return fail_now(r, st);
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = send_done,
        .user_data = r,
    };
    if (iov) {
        param.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
        param.datatype = ucp_dt_make_iov();
    }
    ucs_status_ptr_t ret = ucp_tag_send_nbx(
        tp->peers[peer].ep, buf, count, wire_tag(tag, tp->comm->rank), &param);
    if (ret == NULL) {
        finish(tp, r, MOX_OK, bytes);
        return MOX_OK;
    }
    if (UCS_PTR_IS_ERR(ret)) {
        ucs_status_t us = UCS_PTR_STATUS(ret);
        st = ucxt_status(&tp->peers[peer], us);
        return fail_now(r, mox__fail(tp->comm, st,
                                     "ucx: send of %zu bytes to rank %d: %s",
                                     bytes, peer, ucs_status_string(us)));
    }
    UCXT_REQ(r) = ret;
    link_req(tp, r);
    return MOX_OK;
}

mox_status_t ucxt_isend(mox__transport_t *tp, int peer, uint64_t tag,
                        const void *buf, size_t bytes, mox__treq_t *r)
{
    return send_common(tp, peer, tag, buf, bytes, 0, bytes, r);
}

/* Gather send: UCX's IOV datatype takes the pieces as they are (our
 * mox__iov_t has ucp_dt_iov_t's layout: pointer, then length), and the
 * receiver sees one contiguous message. Over TCP UCX copies the pieces into
 * its own buffers anyway, so long lists (a token per piece) gain nothing on
 * a packed send and are declined; short ones (a header before a block) save
 * the caller a staging copy. */
#define UCXT_MAX_IOV 4
_Static_assert(sizeof(mox__iov_t) == sizeof(ucp_dt_iov_t) &&
                   offsetof(mox__iov_t, len) == offsetof(ucp_dt_iov_t, length),
               "mox__iov_t must match ucp_dt_iov_t");

mox_status_t ucxt_isendv(mox__transport_t *tp, int peer, uint64_t tag,
                         const mox__iov_t *iov, size_t iovcnt, size_t bytes,
                         mox__treq_t *r)
{
    if (iovcnt > UCXT_MAX_IOV)
        return MOX_ERR_UNSUPPORTED;
    if (iovcnt == 1)
        return send_common(tp, peer, tag, iov[0].base, bytes, 0, bytes, r);
    return send_common(tp, peer, tag, iov, iovcnt, 1, bytes, r);
}

mox_status_t ucxt_irecv(mox__transport_t *tp, int peer, uint64_t tag,
                        void *buf, size_t capacity, mox__treq_t *r)
{
    mox_status_t st = start(tp, peer, tag, capacity, 0, r, "receive from");
    if (st != MOX_OK)
        return fail_now(r, st);
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
                        UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FLAG_NO_IMM_CMPL,
        .cb.recv = recv_done,
        .user_data = r,
    };
    ucs_status_ptr_t ret = ucp_tag_recv_nbx(tp->worker, buf, capacity,
                                            wire_tag(tag, peer), UINT64_MAX,
                                            &param);
    if (UCS_PTR_IS_ERR(ret)) {
        ucs_status_t us = UCS_PTR_STATUS(ret);
        st = ucxt_status(&tp->peers[peer], us);
        return fail_now(r, mox__fail(tp->comm, st,
                                     "ucx: receive from rank %d: %s", peer,
                                     ucs_status_string(us)));
    }
    if (r->done)
        return MOX_OK; /* the callback ran already; `ret` is released */
    if (ret == NULL) { /* NO_IMM_CMPL forbids this; never hang on it */
        finish(tp, r, MOX_ERR_TRANSPORT, 0);
        return mox__fail(tp->comm, MOX_ERR_TRANSPORT, "ucx: receive from "
                         "rank %d completed without its length", peer);
    }
    UCXT_REQ(r) = ret;
    link_req(tp, r);
    return MOX_OK;
}

/* After an error callback: fail the receives still waiting on dead peers
 * (UCX fails the sends itself; a posted receive belongs to no endpoint)
 * and force-close their endpoints. Runs outside UCX callbacks. */
static void handle_failures(mox__transport_t *tp)
{
    tp->failure_pending = 0;
    mox__comm_t *c = tp->comm;
    for (int rank = 0; rank < c->size; rank++) {
        ucxt_peer_t *p = &tp->peers[rank];
        if (p->state != UCXT_PEER_DEAD || p->failure_handled)
            continue;
        p->failure_handled = 1;
        c->peers_lost++;
        int affected = 0;
        mox__treq_t *next;
        for (mox__treq_t *r = tp->running; r != NULL; r = next) {
            next = UCXT_NEXT(r);
            if ((int)PEER(r) != rank)
                continue;
            affected++;
            if (!(FLAGS(r) & REQ_SEND) && UCXT_REQ(r) != NULL)
                ucp_request_cancel(tp->worker, UCXT_REQ(r));
        }
        if (affected > 0)
            MOX_WARN("ucx", "rank %d (node %d) failed: %s; %d operations "
                     "with it fail with MOX_ERR_PEER", rank,
                     c->topo.node_of[rank], ucs_status_string(p->err),
                     affected);
        else
            MOX_DEBUG("ucx", "rank %d (node %d) disconnected: %s", rank,
                      c->topo.node_of[rank], ucs_status_string(p->err));
        ucxt_close_ep(tp, p, 1);
    }
}

int ucxt_progress(mox__transport_t *tp)
{
    if (tp == NULL)
        return 0;
    unsigned events = 0;
    for (int i = 0; i < 4; i++) {
        unsigned n = ucp_worker_progress(tp->worker);
        events += n;
        if (n == 0)
            break;
    }
    if (tp->failure_pending)
        handle_failures(tp);
    unsigned done = tp->completions;
    tp->completions = 0;
    /* With nothing of ours in flight, UCX's events (sockets of leaving
     * peers closing, keepalives, messages for receives not yet posted)
     * move no request: they must not restart a waiting rank's MOX_TIMEOUT
     * clock (core/request.c). */
    if (tp->running == NULL && done == 0)
        return 0;
    return (int)(events > done ? events : done);
}

/* Stop UCX from touching the request's buffer: receives are cancelled;
 * UCX 1.13 cannot cancel a send, so its endpoint is force-closed, which
 * purges every send on it. */
static void stop_request(mox__transport_t *tp, mox__treq_t *r)
{
    if (!(FLAGS(r) & REQ_SEND)) {
        ucp_request_cancel(tp->worker, UCXT_REQ(r));
        return;
    }
    ucxt_peer_t *p = &tp->peers[PEER(r)];
    if (p->state == UCXT_PEER_OK)
        p->state = UCXT_PEER_CLOSED;
    ucxt_close_ep(tp, p, 1);
}

/* Detach a request UCX did not hand back: its callback will only free the
 * UCX request. */
static void orphan(mox__transport_t *tp, mox__treq_t *r)
{
    ((ucxt_slot_t *)UCXT_REQ(r))->orphaned = 1;
    MOX_DEBUG("ucx", "%s rank %d not returned by UCX; detached",
              (FLAGS(r) & REQ_SEND) ? "send to" : "receive from",
              (int)PEER(r));
    finish(tp, r, MOX_ERR_TIMEOUT, 0);
}

void ucxt_cancel(mox__transport_t *tp, mox__treq_t *r)
{
    if (tp == NULL || r->done || UCXT_REQ(r) == NULL)
        return;
    stop_request(tp, r);
    uint64_t deadline = mox__now_ns() + UCXT_CANCEL_MS * UINT64_C(1000000);
    while (!r->done && mox__now_ns() < deadline)
        ucp_worker_progress(tp->worker);
    if (!r->done)
        orphan(tp, r);
    else if (r->status == MOX_OK || r->status == MOX_ERR_TRUNCATED)
        return; /* it finished on its own meanwhile */
    else if (r->status != MOX_ERR_PEER)
        r->status = MOX_ERR_TIMEOUT;
}

void ucxt_abandon_all(mox__transport_t *tp, uint64_t deadline_ns)
{
    /* Stopping one request may complete others (a force-closed endpoint
     * purges all its sends), so rescan from the head after each. */
    for (;;) {
        mox__treq_t *r = tp->running;
        while (r != NULL && (FLAGS(r) & REQ_STOPPED))
            r = UCXT_NEXT(r);
        if (r == NULL)
            break;
        FLAGS(r) |= REQ_STOPPED;
        stop_request(tp, r);
    }
    while (tp->running != NULL && mox__now_ns() < deadline_ns)
        ucp_worker_progress(tp->worker);
    while (tp->running != NULL)
        orphan(tp, tp->running);
}
