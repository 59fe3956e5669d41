/* Requests, progress and waiting: the engine under every collective. */
#include "comm.h"
#include "log.h"

#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int mox__progress(mox__comm_t *c)
{
    int events = 0;
    for (int i = 0; i < MOX_TP_COUNT; i++) {
        if (!c->tp[i])
            continue;
        int n = c->tp_ops[i]->progress(c->tp[i]);
        if (n < 0)
            return n;
        events += n;
    }
    return events;
}

static int transport_of(const mox__comm_t *c, int peer)
{
    if (peer == c->rank)
        return MOX_TP_SELF;
    return c->topo.node_of[peer] == c->node ? MOX_TP_SHM : MOX_TP_UCX;
}

static mox_status_t route(mox__comm_t *c, int peer, int *tp)
{
    if (peer < 0 || peer >= c->size)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "peer rank %d is outside "
                         "[0, %d)", peer, c->size);
    *tp = transport_of(c, peer);
    if (!c->tp[*tp])
        return mox__fail(c, MOX_ERR_TRANSPORT, "no %s transport reaches "
                         "rank %d", c->tp_ops[*tp]->name, peer);
    return MOX_OK;
}

const mox__coll_slot_t *mox__shm_coll_slot(mox__comm_t *c, int local_rank)
{
    const mox__transport_ops_t *ops = c->tp_ops[MOX_TP_SHM];
    if (!c->tp[MOX_TP_SHM] || !ops || !ops->coll_slot)
        return NULL;
    return ops->coll_slot(c->tp[MOX_TP_SHM], local_rank);
}

mox_status_t mox__peer_check(mox__comm_t *c, int peer)
{
    if (peer < 0 || peer >= c->size || peer == c->rank)
        return MOX_OK;
    int tp = transport_of(c, peer);
    if (!c->tp[tp] || !c->tp_ops[tp]->peer_check)
        return MOX_OK;
    mox_status_t st = c->tp_ops[tp]->peer_check(c->tp[tp], peer);
    if (st != MOX_OK)
        return mox__fail(c, st, "rank %d (%s) is gone", peer,
                         c->tp_ops[tp]->name);
    return MOX_OK;
}

/* Traffic counters of the communicator and of the running collective. */
static void count_send(mox__comm_t *c, int tp, size_t bytes)
{
    struct mox_req *op = c->cur;
    if (tp == MOX_TP_UCX) {
        c->stats.bytes_inter += bytes;
        c->stats.msgs_inter++;
        if (op) {
            op->bytes_inter += bytes;
            op->msgs_inter++;
        }
    } else if (tp == MOX_TP_SHM) {
        c->stats.bytes_intra += bytes;
        c->stats.msgs_intra++;
        if (op) {
            op->bytes_intra += bytes;
            op->msgs_intra++;
        }
    }
}

void mox__count_put(mox__comm_t *c, size_t bytes)
{
    count_send(c, MOX_TP_SHM, bytes);
}

/* A transport request about to be posted for the collective being
 * started or stepped (c->cur), which counts it when it finishes. */
static void treq_init(mox__comm_t *c, mox__treq_t *r, int peer, int is_send)
{
    memset(r, 0, sizeof *r);
    r->moves = c->cur ? &c->cur->moves : NULL;
    r->peer = peer;
    r->is_send = is_send;
}

mox_status_t mox__isend(mox__comm_t *c, int peer, uint64_t tag,
                        const void *buf, size_t bytes, mox__treq_t *r)
{
    int tp = 0;
    treq_init(c, r, peer, 1);
    mox_status_t st = route(c, peer, &tp);
    if (st != MOX_OK)
        return st;
    count_send(c, tp, bytes);
    uint64_t fails = c->nfail;
    st = c->tp_ops[tp]->isend(c->tp[tp], peer, tag, buf, bytes, r);
    r->posted = st == MOX_OK;
    /* Keep the transport's own message when it left one: it knows more. */
    if (st != MOX_OK && c->nfail == fails)
        return mox__fail(c, st, "%s send of %zu bytes to rank %d failed",
                         c->tp_ops[tp]->name, bytes, peer);
    return st;
}

mox_status_t mox__isendv(mox__comm_t *c, int peer, uint64_t tag,
                         const mox__iov_t *iov, size_t iovcnt, size_t bytes,
                         mox__treq_t *r)
{
    int tp = 0;
    treq_init(c, r, peer, 1);
    mox_status_t st = route(c, peer, &tp);
    if (st != MOX_OK)
        return st;
    if (!c->tp_ops[tp]->isendv)
        return MOX_ERR_UNSUPPORTED;
    uint64_t fails = c->nfail;
    st = c->tp_ops[tp]->isendv(c->tp[tp], peer, tag, iov, iovcnt, bytes, r);
    if (st == MOX_ERR_UNSUPPORTED) {
        /* A decline, not a failure: the caller packs and sends. */
        treq_init(c, r, peer, 1);
        return st;
    }
    count_send(c, tp, bytes);
    r->posted = st == MOX_OK;
    if (st != MOX_OK && c->nfail == fails)
        return mox__fail(c, st, "%s gather send of %zu bytes in %zu pieces "
                         "to rank %d failed", c->tp_ops[tp]->name, bytes,
                         iovcnt, peer);
    return st;
}

mox_status_t mox__irecv(mox__comm_t *c, int peer, uint64_t tag, void *buf,
                        size_t capacity, mox__treq_t *r)
{
    int tp = 0; /* route() sets it; gcc -O3 cannot tell */
    treq_init(c, r, peer, 0);
    mox_status_t st = route(c, peer, &tp);
    if (st != MOX_OK)
        return st;
    uint64_t fails = c->nfail;
    st = c->tp_ops[tp]->irecv(c->tp[tp], peer, tag, buf, capacity, r);
    r->posted = st == MOX_OK;
    if (st != MOX_OK && c->nfail == fails)
        return mox__fail(c, st, "%s receive from rank %d failed",
                         c->tp_ops[tp]->name, peer);
    return st;
}

mox_status_t mox__treq_check(mox__comm_t *c, const mox__treq_t *r,
                             const char *what)
{
    if (r->status == MOX_OK)
        return MOX_OK;
    return mox__fail(c, r->status, "%s %s rank %d failed: %s", what,
                     r->is_send ? "to" : "from", r->peer,
                     mox_strerror(r->status));
}

int mox__treqs_done(const mox__treq_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].posted && !t[i].done)
            return 0;
    return 1;
}

mox_status_t mox__treqs_check(mox__comm_t *c, const mox__treq_t *t, size_t n,
                              const char *what)
{
    for (size_t i = 0; i < n; i++) {
        if (!t[i].posted)
            continue;
        mox_status_t st = mox__treq_check(c, &t[i], what);
        if (st != MOX_OK)
            return st;
    }
    return MOX_OK;
}

mox_status_t mox__req_new(mox__comm_t *c, const char *name,
                          struct mox_req **out)
{
    *out = NULL;
    if (c->failed)
        return mox__fail(c, MOX_ERR_COMM_FAILED, "%s: the communicator "
                         "failed earlier (%s); destroy it", name,
                         c->last_error);
    struct mox_req *req = calloc(1, sizeof *req);
    if (!req)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "%s: no memory for a request",
                         name);
    req->comm = c;
    req->name = name;
    req->seq = c->coll_seq++;
    req->start_ns = mox__now_ns();
    c->cur = req; /* the algorithm's start posts on its behalf */
    *out = req;
    return MOX_OK;
}

void mox__req_abort(struct mox_req *req, mox_status_t st)
{
    mox__comm_t *c = req->comm;
    /* The sequence number is spent: peers would disagree from now on. */
    c->failed = 1;
    if (c->cur == req)
        c->cur = NULL;
    req->done = 1;
    req->status = st;
    if (req->cleanup)
        req->cleanup(req);
    req->cleanup = NULL;
    mox_req_free(req);
}

/* How long a failed request waits for its sends already posted before it
 * cancels them. */
#define FLUSH_SENDS_MS 100

/* A failed request's sends may be what its peers need to fail cleanly
 * (a ring's abort header, the data a peer still reduces); cancelling a
 * UCX send force-closes its endpoint, which drops them and shows the peer
 * a broken connection instead. So give them a moment to go out first.
 * Measured: the allgather ring's mismatch test saw the rank after the one
 * that found the mismatch fail with MOX_ERR_PEER ("Endpoint timeout")
 * instead of the mismatch, in CI. */
static void flush_sends(struct mox_req *req)
{
    mox__comm_t *c = req->comm;
    uint64_t deadline = mox__now_ns() + FLUSH_SENDS_MS * UINT64_C(1000000);
    for (;;) {
        int pending = 0;
        for (size_t i = 0; i < req->ntreqs && !pending; i++) {
            const mox__treq_t *r = &req->treqs[i];
            pending = r->posted && r->is_send && !r->done;
        }
        if (!pending || mox__now_ns() >= deadline)
            return;
        int events = mox__progress(c);
        if (events < 0)
            return;
        if (events == 0)
            sched_yield(); /* peers may need this core to take them */
    }
}

static void cancel_pending(struct mox_req *req)
{
    mox__comm_t *c = req->comm;
    for (size_t i = 0; i < req->ntreqs; i++) {
        mox__treq_t *r = &req->treqs[i];
        if (!r->posted || r->done)
            continue;
        int tp = transport_of(c, r->peer);
        if (c->tp[tp] && c->tp_ops[tp]->cancel)
            c->tp_ops[tp]->cancel(c->tp[tp], r);
    }
}

static void unlink_active(struct mox_req *req)
{
    mox__comm_t *c = req->comm;
    for (struct mox_req **p = &c->active; *p; p = &(*p)->next)
        if (*p == req) {
            *p = req->next;
            break;
        }
}

/* Finish `req` with `st`. An error mid-flight leaves peers waiting for
 * messages that will never come, so it fails the whole communicator. */
static void finish(struct mox_req *req, mox_status_t st)
{
    mox__comm_t *c = req->comm;
    req->done = 1;
    req->status = st;
    unlink_active(req);
    if (st != MOX_OK) {
        flush_sends(req);
        cancel_pending(req);
        if (!req->agreed_error || st == MOX_ERR_TIMEOUT)
            c->failed = 1;
        MOX_DEBUG("core", "%s (seq %llu) failed: %s", req->name,
                  (unsigned long long)req->seq, c->last_error);
    } else {
        c->stats.ops++;
    }
    uint64_t ns = mox__now_ns() - req->start_ns;
    c->stats.time_ns += ns;
    c->stats.last_bytes_intra = req->bytes_intra;
    c->stats.last_bytes_inter = req->bytes_inter;
    c->stats.last_msgs_intra = req->msgs_intra;
    c->stats.last_msgs_inter = req->msgs_inter;
    c->stats.last_time_ns = ns;
    /* Every op passes here: a copy, not a printf. */
    size_t len = strlen(req->name);
    if (len >= sizeof c->stats.last_op)
        len = sizeof c->stats.last_op - 1;
    memcpy(c->stats.last_op, req->name, len);
    c->stats.last_op[len] = '\0';
    if (req->cleanup)
        req->cleanup(req);
    req->cleanup = NULL;
}

/* Advance one request; returns 1 if it made a step. */
static int step(struct mox_req *req)
{
    if (req->done)
        return 0;
    mox__comm_t *c = req->comm;
    struct mox_req *outer = c->cur;
    c->cur = req;
    mox_status_t st = req->progress(req);
    c->cur = outer;
    if (st == MOX_IN_PROGRESS)
        return 0;
    finish(req, st);
    return 1;
}

mox_status_t mox__req_start(struct mox_req *req, mox_req_t *out)
{
    mox__comm_t *c = req->comm;
    req->next = c->active;
    c->active = req;
    step(req);
    c->cur = NULL;
    *out = req;
    return MOX_OK;
}

/* One round of progress over transports and every active request of the
 * communicator (another rank may need an earlier request of ours to move
 * before it can serve the one we wait on). Returns events seen. */
static int progress_all(mox__comm_t *c, mox_status_t *fatal)
{
    int events = mox__progress(c);
    if (events < 0) {
        *fatal = (mox_status_t)events;
        return 0;
    }
    struct mox_req *next;
    for (struct mox_req *r = c->active; r; r = next) {
        next = r->next;
        events += step(r);
    }
    return events;
}

static void fail_active(mox__comm_t *c, mox_status_t st)
{
    while (c->active)
        finish(c->active, st);
}

/* Name the peers `req` still waits for, into the communicator's error. */
static void report_timeout(struct mox_req *req, uint64_t waited_ms)
{
    mox__comm_t *c = req->comm;
    char peers[256] = "";
    size_t n = 0, shown = 0;
    for (size_t i = 0; i < req->ntreqs && n + 16 < sizeof peers; i++) {
        const mox__treq_t *r = &req->treqs[i];
        if (!r->posted || r->done)
            continue;
        n += (size_t)snprintf(peers + n, sizeof peers - n, "%s%d (%s)",
                              shown ? ", " : "", r->peer,
                              r->is_send ? "send" : "receive");
        shown++;
    }
    char more[192] = "";
    size_t extra = req->describe_wait
                       ? (size_t)req->describe_wait(req, more, sizeof more)
                       : 0;
    if (extra && n < sizeof peers) /* snprintf counts what did not fit */
        snprintf(peers + n, sizeof peers - n, "%s%s", shown ? ", " : "",
                 more);
    shown += extra;
    mox__fail(c, MOX_ERR_TIMEOUT,
              "%s: no progress for %llu ms (MOX_TIMEOUT=%lld); still waiting "
              "for rank%s %s", req->name, (unsigned long long)waited_ms,
              (long long)c->cfg.timeout_ms, shown == 1 ? "" : "s",
              shown ? peers : "(none pending: a local step is stuck)");
}

/* A gap between two mox_test calls counts this much at most towards
 * MOX_TIMEOUT: while the caller computes, nothing can move that needs
 * this rank to progress, so only polled time is waiting time. */
#define TEST_GAP_MAX_NS UINT64_C(1000000000)

/* mox_test found nothing moving: add the time since the last poll (capped)
 * and end `req` with MOX_ERR_TIMEOUT once it passes MOX_TIMEOUT, as
 * mox_wait would. */
static void test_idle(struct mox_req *req)
{
    mox__comm_t *c = req->comm;
    uint64_t now = mox__now_ns();
    if (req->test_poll_ns) {
        uint64_t gap = now - req->test_poll_ns;
        req->test_idle_ns += gap < TEST_GAP_MAX_NS ? gap : TEST_GAP_MAX_NS;
    }
    req->test_poll_ns = now;
    if (req->test_idle_ns > (uint64_t)c->cfg.timeout_ms * 1000000u) {
        report_timeout(req, req->test_idle_ns / 1000000u);
        finish(req, MOX_ERR_TIMEOUT);
    }
}

mox_status_t mox_test(mox_req_t req, int *done)
{
    if (!req || !done)
        return MOX_ERR_INVALID_ARG;
    mox_status_t fatal = MOX_OK;
    if (!req->done) {
        int events = progress_all(req->comm, &fatal);
        if (fatal != MOX_OK) {
            mox__fail(req->comm, fatal, "%s: transport failed",
                      req->name);
            fail_active(req->comm, fatal);
        } else if (events > 0 && (!req->comm->peers_lost ||
                                  req->moves != req->test_moves)) {
            req->test_idle_ns = req->test_poll_ns = 0;
        } else if (!req->done) {
            test_idle(req);
        }
        req->test_moves = req->moves;
    }
    *done = req->done;
    return req->done ? req->status : MOX_OK;
}

/* Idle strategy: spin, then yield, then sleep briefly, so that 8 ranks on
 * 2 cores share the CPUs with the ranks that have work. */
static void idle(uint64_t idle_rounds, int64_t spin_count)
{
    if ((int64_t)idle_rounds < spin_count)
        return;
    if ((int64_t)idle_rounds < spin_count + 2000) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, 20000};
    nanosleep(&ts, NULL);
}

void mox__bell_ring(_Atomic uint32_t *bell, _Atomic uint32_t *sleepers)
{
    /* Orders the caller's store before the sleepers' count is read; a
     * sleeper counts itself before it reads the bell and the flags (doze),
     * so one of the two sees the other. */
    atomic_thread_fence(memory_order_seq_cst);
    atomic_fetch_add_explicit(bell, 1, memory_order_relaxed);
    if (atomic_load_explicit(sleepers, memory_order_relaxed))
        syscall(SYS_futex, (uint32_t *)bell, FUTEX_WAKE, INT32_MAX, NULL,
                NULL, 0);
}

/* Longest sleep on a bell before the loop looks at the clock and the
 * peers again. */
#define DOZE_NS 1000000

/*
 * `req` waits for a shm area bell alone (doze_bell) and nothing else is
 * active: sleep on the bell (a futex in shared memory) until it rings or
 * DOZE_NS pass, instead of yielding. With more ranks than cores a rank
 * that yields still takes turns on a core the ranks with work need:
 * leader mode's other ranks waiting for their leader this way took 4 x 2
 * reduce-scatter of 32 B from 121 to 94 us (docs/reduce_scatter.md).
 * Returns 0 when it does not apply.
 */
static int doze(mox__comm_t *c, struct mox_req *req, uint64_t idle_rounds)
{
    _Atomic uint32_t *bell = req->doze_bell, *sleepers = req->doze_sleepers;
    if (!bell || c->active != req || req->next ||
        (int64_t)idle_rounds < c->spin_count)
        return 0;
    atomic_fetch_add_explicit(sleepers, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t seen = atomic_load_explicit(bell, memory_order_relaxed);
    if (!step(req)) { /* still waiting once counted */
        struct timespec ts = {0, DOZE_NS};
        syscall(SYS_futex, (uint32_t *)bell, FUTEX_WAIT, seen, &ts, NULL, 0);
    }
    atomic_fetch_sub_explicit(sleepers, 1, memory_order_relaxed);
    return 1;
}

/*
 * MOX_TIMEOUT's clock. Until a peer is lost, any event restarts it: a
 * large message moves for a long time before it finishes, and another
 * active request may be what a peer waits for. Once the transports saw a
 * peer fail or leave (comm->peers_lost), that peer's fallout is events too
 * (its sockets closing, other ranks giving up and leaving in turn), and a
 * rank waiting for a stalled peer kept restarting its clock: it reported
 * after up to 3 x MOX_TIMEOUT. From then on only the request's own
 * messages finishing count, as seen at the clock checks.
 */
mox_status_t mox_wait(mox_req_t req)
{
    if (!req)
        return MOX_ERR_INVALID_ARG;
    mox__comm_t *c = req->comm;
    uint64_t last = mox__now_ns(), own_last = last, idle_rounds = 0;
    uint64_t moves_seen = req->moves;
    const uint64_t timeout_ns = (uint64_t)c->cfg.timeout_ms * 1000000u;
    while (!req->done) {
        mox_status_t fatal = MOX_OK;
        int events = progress_all(c, &fatal);
        if (fatal != MOX_OK) {
            mox__fail(c, fatal, "%s: transport failed", req->name);
            fail_active(c, fatal);
            break;
        }
        if (events > 0 && !c->peers_lost) {
            idle_rounds = 0;
            last = 0;
            continue;
        }
        /* Events after a loss keep the clock running but do not sleep:
         * more of them may follow. */
        ++idle_rounds;
        if (events <= 0 && !doze(c, req, idle_rounds))
            idle(idle_rounds, c->spin_count);
        if ((idle_rounds & 63) != 0)
            continue;
        uint64_t now = mox__now_ns();
        if (last == 0)
            last = now;
        if (req->moves != moves_seen) {
            moves_seen = req->moves;
            own_last = now;
        }
        uint64_t since = c->peers_lost ? own_last : last;
        if (now - since > timeout_ns) {
            report_timeout(req, (now - since) / 1000000u);
            finish(req, MOX_ERR_TIMEOUT);
        }
    }
    return req->status;
}

mox_status_t mox__wait_started(mox_status_t st, mox_req_t req)
{
    if (st != MOX_OK)
        return st;
    st = mox_wait(req);
    mox_req_free(req);
    return st;
}

void mox_req_free(mox_req_t req)
{
    if (!req)
        return;
    if (!req->done) {
        mox__fail(req->comm, MOX_ERR_INVALID_ARG,
                  "%s freed while running; the communicator is unusable",
                  req->name);
        finish(req, MOX_ERR_INVALID_ARG);
    }
    free(req->state);
    free(req);
}

void mox__req_free_all(mox__comm_t *c)
{
    /* Requests the user still holds stay allocated (they own them); we only
     * stop them so no transport touches their buffers after destroy. */
    while (c->active) {
        struct mox_req *r = c->active;
        finish(r, MOX_ERR_COMM_FAILED);
        r->comm = c; /* still valid until the user frees it */
    }
}
