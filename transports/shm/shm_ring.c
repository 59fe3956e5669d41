/*
 * The wire protocol of a shared-memory channel: the sender streams a
 * message's header and payload slot by slot, the receiver drains slots into
 * the matched receive (single-copy messages, RNDV and RNDV_IOV, are read
 * out of the sender's memory by shm_cma.c and acknowledged).
 *
 * Ordering: slot contents are written before `head` is published with
 * release and read after `head` is loaded with acquire; the receiver
 * publishes `tail` with release only after it finished reading the slot, so
 * the sender (acquire on `tail`) never overwrites a slot being read. `ack`
 * works the same way for RNDV reads of the sender's buffer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/uio.h>

#include "core/log.h"
#include "shm.h"

static char *slot_at(const mox__transport_t *tp, shm_chan_t *ch, uint64_t n)
{
    return ch->ring + (size_t)(n % tp->slots) * tp->slot_bytes;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* Payload bytes of the slot that starts at payload offset `off`. */
static uint64_t frag_len(const mox__transport_t *tp, uint64_t bytes,
                         uint64_t off, int first)
{
    uint64_t cap = first ? tp->slot_bytes - SHM_WIRE_HDR_BYTES
                         : tp->slot_bytes;
    return min_u64(cap, bytes - off);
}

static int protocol_error(shm_peer_t *p, const char *what, uint64_t value)
{
    MOX_ERROR("shm", "malformed data from rank %d: %s (%llu); failing its "
              "requests", p->rank, what, (unsigned long long)value);
    return shm_peer_fail(p, MOX_ERR_PROTOCOL);
}

/* ------------------------------------------------------------------ */
/* Send side                                                            */

/* Room for one more slot? Re-reads `tail` only when the cached value says
 * the ring is full. Returns 1 when there is room, 0 when full, -1 on a
 * tail that cannot be right. */
static int ring_has_room(const mox__transport_t *tp, shm_peer_t *p)
{
    if (p->s_head - p->s_tail_seen < tp->slots)
        return 1;
    uint64_t t = atomic_load_explicit(&p->out->tail, memory_order_acquire);
    if (t < p->s_tail_seen || t > p->s_head)
        return -1;
    p->s_tail_seen = t;
    return p->s_head - t < tp->slots;
}

/* Write the first slot of the message at the head of sendq. Returns the
 * payload bytes it carries. */
static uint64_t write_first(mox__transport_t *tp, shm_peer_t *p,
                            mox__treq_t *r, char *slot)
{
    shm_wire_hdr_t h = {
        .tag = SHM_REQ_TAG(r),
        .bytes = SHM_REQ_LEN(r),
        .seq = p->s_msgs,
        .kind = SHM_KIND_EAGER,
    };
    uint64_t len = 0;
    if (shm_wants_rndv(tp, h.bytes)) {
        h.kind = SHM_KIND_RNDV;
        h.pid = (int32_t)tp->peers[tp->local_rank].pid;
        h.addr = (uint64_t)(uintptr_t)SHM_REQ_BUF(r);
        h.count = shm_req_iovcnt(r);
        if (h.count)
            h.kind = SHM_KIND_RNDV_IOV;
    } else {
        len = frag_len(tp, h.bytes, 0, 1);
        if (len)
            memcpy(slot + SHM_WIRE_HDR_BYTES, SHM_REQ_BUF(r), len);
    }
    memcpy(slot, &h, sizeof h);
    p->s_msgs++;
    p->s_started = 1;
    return h.kind == SHM_KIND_EAGER ? len : h.bytes;
}

/* The head send is fully in the ring: complete it, or park it until the
 * receiver acknowledges its RNDV read. */
static int finish_send(mox__transport_t *tp, shm_peer_t *p)
{
    mox__treq_t *r = shm_q_pop(&p->sendq);
    int rndv = shm_wants_rndv(tp, SHM_REQ_LEN(r));
    p->s_off = 0;
    p->s_started = 0;
    if (rndv) {
        SHM_REQ_ACK(r) = ++p->s_rndv;
        shm_q_push(&p->ackq, r);
        return 0;
    }
    shm_req_done(r, MOX_OK, 0);
    return 1;
}

int shm_push_sends(mox__transport_t *tp, shm_peer_t *p)
{
    int done = 0;
    for (uint64_t budget = tp->slots; budget > 0 && p->sendq.head; budget--) {
        int room = ring_has_room(tp, p);
        if (room < 0)
            return done + protocol_error(p, "tail counter",
                                         atomic_load(&p->out->tail));
        if (!room)
            break;
        mox__treq_t *r = p->sendq.head;
        char *slot = slot_at(tp, p->out, p->s_head);
        uint64_t len;
        if (!p->s_started) {
            len = write_first(tp, p, r, slot);
        } else {
            len = frag_len(tp, SHM_REQ_LEN(r), p->s_off, 0);
            memcpy(slot, (const char *)SHM_REQ_BUF(r) + p->s_off, len);
        }
        p->s_off += len;
        p->s_head++;
        atomic_store_explicit(&p->out->head, p->s_head, memory_order_release);
        if (p->s_off == SHM_REQ_LEN(r))
            done += finish_send(tp, p);
    }
    return done;
}

int shm_poll_acks(mox__transport_t *tp, shm_peer_t *p)
{
    (void)tp;
    if (!p->ackq.head)
        return 0;
    uint64_t a = atomic_load_explicit(&p->out->ack, memory_order_acquire);
    if (a > p->s_rndv)
        return protocol_error(p, "ack counter", a);
    int done = 0;
    while (p->ackq.head && SHM_REQ_ACK(p->ackq.head) <= a) {
        shm_req_done(shm_q_pop(&p->ackq), MOX_OK, 0);
        done++;
    }
    return done;
}

/* ------------------------------------------------------------------ */
/* Receive side                                                         */

static void consume_slot(shm_peer_t *p)
{
    p->r_tail++;
    atomic_store_explicit(&p->in->tail, p->r_tail, memory_order_release);
}

static void send_ack(shm_peer_t *p)
{
    p->r_acks++;
    atomic_store_explicit(&p->in->ack, p->r_acks, memory_order_release);
}

/* Check a header copied out of shared memory; NULL when it is sane. */
static const char *bad_header(const mox__transport_t *tp, const shm_peer_t *p,
                              const shm_wire_hdr_t *h)
{
    if (h->seq != p->r_msgs)
        return "sequence number";
    if (h->bytes > SHM_MAX_MSG_BYTES)
        return "message size";
    if (h->kind == SHM_KIND_EAGER)
        return NULL;
    if (h->kind != SHM_KIND_RNDV && h->kind != SHM_KIND_RNDV_IOV)
        return "message kind";
    if (!tp->cma || h->bytes == 0)
        return "unexpected single-copy message";
    if (h->pid != (int32_t)p->pid)
        return "sender pid";
    if (h->kind == SHM_KIND_RNDV)
        return h->addr + h->bytes < h->addr ? "sender address" : NULL;
    if (h->count == 0 || h->count > SHM_MAX_IOV_COUNT)
        return "gather piece count";
    if (h->addr + h->count * sizeof(mox__iov_t) < h->addr)
        return "sender iov address";
    return NULL;
}

/* The message at the ring's head has a header we trust: bind it to the
 * first posted receive with its tag. Returns 1 when bound, 0 when no
 * receive is posted for it yet (it stays in the ring), or -(completions+1)
 * on a malformed header. */
static int begin_message(mox__transport_t *tp, shm_peer_t *p, int *done)
{
    shm_wire_hdr_t h;
    memcpy(&h, slot_at(tp, p->in, p->r_tail), sizeof h);
    const char *bad = bad_header(tp, p, &h);
    if (bad) {
        MOX_ERROR("shm", "bad %s in message %llu from rank %d: kind %u, "
                  "%llu bytes, seq %llu", bad, (unsigned long long)p->r_msgs,
                  p->rank, h.kind, (unsigned long long)h.bytes,
                  (unsigned long long)h.seq);
        *done += shm_peer_fail(p, MOX_ERR_PROTOCOL);
        return -1;
    }
    mox__treq_t *r = shm_q_take_tag(&p->recvq, h.tag);
    if (!r)
        return 0;
    p->r_hdr = h;
    p->r_msgs++;
    p->r_active = 1;
    p->r_off = 0;
    p->r_iov_fetched = p->r_iov_sum = p->r_iov_skip = 0;
    p->r_iov_n = p->r_iov_i = 0;
    p->r_req = r;
    if (h.bytes > SHM_REQ_LEN(r)) {
        /* Tell the caller now; the rest of the message is discarded. */
        shm_req_done(r, MOX_ERR_TRUNCATED, h.bytes);
        p->r_req = NULL;
        (*done)++;
    }
    return 1;
}

static void end_message(shm_peer_t *p, int *done)
{
    if (p->r_req) {
        shm_req_done(p->r_req, MOX_OK, p->r_hdr.bytes);
        (*done)++;
    }
    p->r_req = NULL;
    p->r_active = 0;
}

/* Copy (or skip, when discarding) the payload of the slot at r_tail. */
static void drain_slot(mox__transport_t *tp, shm_peer_t *p, int first,
                       int *done)
{
    const char *slot = slot_at(tp, p->in, p->r_tail);
    uint64_t len = frag_len(tp, p->r_hdr.bytes, p->r_off, first);
    if (first)
        slot += SHM_WIRE_HDR_BYTES;
    if (p->r_req && len)
        memcpy((char *)SHM_REQ_BUF(p->r_req) + p->r_off, slot, len);
    p->r_off += len;
    consume_slot(p);
    if (p->r_off == p->r_hdr.bytes)
        end_message(p, done);
}

/* End the single-copy message being read: the sender waits for our ack
 * whatever happens, so every way out acknowledges it. `st` fails the
 * receive (when there still is one). */
void shm_rndv_end(shm_peer_t *p, mox_status_t st, int *done)
{
    if (st != MOX_OK && p->r_req) {
        shm_req_done(p->r_req, st, 0);
        (*done)++;
        p->r_req = NULL;
    }
    send_ack(p);
    end_message(p, done);
}

/* Is there an unread slot? Re-reads `head` only when the cached value says
 * the ring is empty. Returns 1, 0, or -1 on a head that cannot be right. */
static int ring_has_data(const mox__transport_t *tp, shm_peer_t *p)
{
    if (p->r_tail != p->r_head_seen)
        return 1;
    uint64_t h = atomic_load_explicit(&p->in->head, memory_order_acquire);
    if (h < p->r_head_seen || h - p->r_tail > tp->slots)
        return -1;
    p->r_head_seen = h;
    return h != p->r_tail;
}

int shm_drain(mox__transport_t *tp, shm_peer_t *p)
{
    int done = 0;
    for (uint64_t budget = tp->slots; budget > 0; budget--) {
        if (p->r_active && p->r_hdr.kind != SHM_KIND_EAGER) {
            if (p->r_hdr.kind == SHM_KIND_RNDV)
                shm_rndv_step(p, &done);
            else
                shm_rndv_iov_step(p, &done);
            if (p->r_active)
                break; /* one chunk per call keeps channels fair */
            continue;
        }
        int avail = ring_has_data(tp, p);
        if (avail < 0)
            return done + protocol_error(p, "head counter",
                                     atomic_load(&p->in->head));
        if (!avail)
            break;
        if (p->r_active) {
            drain_slot(tp, p, 0, &done);
            continue;
        }
        int bound = begin_message(tp, p, &done);
        if (bound <= 0)
            break;
        if (p->r_hdr.kind != SHM_KIND_EAGER)
            consume_slot(p); /* the header was all it had */
        else
            drain_slot(tp, p, 1, &done);
    }
    return done;
}
