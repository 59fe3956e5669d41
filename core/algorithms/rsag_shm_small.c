/*
 * Small reduce-scatter(_v) and allgather(v) on one node, through the shm
 * segment's collective area (core/transport.h, transports/shm/shm.h)
 * instead of messages: every rank writes its input once into a slot of
 * its own, publishes it with one flag, and reads what it needs straight
 * from the others' slots. No message, no ring, no allocation beyond the
 * request; the steady state has one synchronisation per operation.
 *
 * Each local rank owns two flags and MOX_COLL_SLOTS (2) slots; only the
 * owner writes them. Small op number i (counted on the communicator, the
 * same on every rank) with sequence number seq uses slot b = i % 2 and
 * the flag value k = (seq + 1) << ROUND_BITS (64 bits, never wraps).
 * An allgather whose blocks do not fit a slot runs in rounds: round j
 * moves bytes [j * cap, (j + 1) * cap) of every block (cap: a slot's data
 * capacity) as op number i + j with flag value k + j; all its rounds are
 * numbered when it starts, so ops started after it come after its last
 * round. Each round is:
 *  1. turn: this rank's previous small op has finished (a second op in
 *     flight waits here for the first: ops run one at a time, in order),
 *     and every rank has read >= k', where k' is the value of the op that
 *     used slot b before (op i - 2), so nobody still reads it;
 *  2. write the agreement header (core/rsag.h) and the input (reduce-
 *     scatter: the whole vector; allgather: this rank's block) into slot
 *     b, then store-release written = k. A block-sparse reduce-scatter
 *     writes, after the header, the size of the rest and then the bitmap
 *     of its blocks, the number of present blocks before each bitmap
 *     word, and its present blocks packed in order; when they do not fit
 *     the slot, only the size NO_ROOM. Above SPARSE_SPAN x MOX_SHM_SMALL
 *     bytes it runs in rounds too: round j holds the blocks [j * w,
 *     (j + 1) * w) of every rank's slice (bitmap bit q = r * wj + k - j *
 *     w for slice r's block k), and a rank writes NO_ROOM in the first
 *     round when its blocks of any round do not fit. If some rank wrote
 *     NO_ROOM, every rank sees it in step 3 of the first round, releases
 *     the slot and the op's later rounds (step 4) and goes on with the
 *     message algorithm in the same request;
 *  3. wait until every rank has written >= k (load-acquire), check every
 *     header against ours, then reduce-scatter: reduce this rank's block
 *     from the P slots in rank order 0..P-1 (flat's order, so results are
 *     bitwise those of flat); allgather: copy every block into place;
 *  4. store-release read = k.
 * Step 1's second condition always holds by then: a rank writes op i - 1
 * only after it finished op i - 2 (its step 1), and this rank saw every
 * written >= k(i - 1) before it finished op i - 1. Two slots are what make
 * that so; with one, a fast rank would wait for the slowest reader before
 * every write (a second synchronisation per op). It is still checked, as
 * it costs P loads of lines that are not being written.
 * written may already be past k when looked at (that rank is in op i + 1,
 * in the other slot): the header's sequence number tells whose data the
 * slot holds.
 *
 * Block-sparse rounds: 1 x 8, 64 MiB at 10 %: 9.9-13.2 ms against 17-18.5
 * ms as messages (each rank packs its blocks for every peer, which read
 * them with CMA), at 20 % 19.9 against 29.1 ms.
 *
 * Allgather rounds: CMA reads at about 10.5 GB/s on one core here, memcpy from
 * shared memory at about 19 GB/s, and each block is written once and
 * read P - 1 times; 1 x 8 allgather of 64 MiB took 25-26 ms in rounds of
 * 1 MiB against 48-56 ms with one CMA copy per block (flat), 32 MiB 16-17
 * against 25-26 ms. A mismatch in an op of several rounds fails the
 * communicator (ranks that disagree on the counts may have numbered
 * different rounds).
 *
 * Waiting is the request's progress returning MOX_IN_PROGRESS, so
 * mox_test/mox_wait, their idle policy and MOX_TIMEOUT apply; the request
 * also times out by itself (no flag moved for MOX_TIMEOUT, naming the
 * ranks) and asks the transport every 100 ms whether the rank it waits
 * for still lives (MOX_ERR_PEER).
 */
#include "core/comm.h"
#include "core/dtype.h"
#include "core/log.h"
#include "core/reduce.h"
#include "core/rsag.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HDR MOX_RSAG_HDR_BYTES
/* Sparse: after the agreement header, each slot says how many bytes of
 * bitmap, prefix counts and packed blocks follow, or NO_ROOM. */
#define NO_ROOM UINT64_MAX
/* Block-sparse vectors go through the area in rounds, each round a part of
 * every rank's slice that is SPARSE_SPAN x MOX_SHM_SMALL bytes dense in
 * all: the present blocks of a round fit a slot at up to about 1 /
 * SPARSE_SPAN density (a rank whose do not writes NO_ROOM in the first
 * round, and all take the message algorithm). */
#define SPARSE_SPAN 4
/* Flag values: (seq + 1) << ROUND_BITS, plus the round. */
#define ROUND_BITS 20
#define MAX_ROUNDS ((1u << ROUND_BITS) - 1)
_Static_assert(HDR + 8 <= MOX_COLL_HDR_BYTES, "room for the packed size");
/* How often a rank that waits asks whether the rank it waits for lives. */
#define PEER_CHECK_NS (100u * 1000u * 1000u)
/* Polls between clock reads while waiting. */
#define CLOCK_POLLS 64

enum { PH_TURN, PH_ARRIVE };

typedef struct {
    uint32_t kind;               /* MOX_RSAG_KIND_RS or _AG */
    int P, me, slot, phase;
    int next;                    /* first rank not yet seen in this phase */
    int waiting;                 /* rank keeping us waiting (-1: none) */
    uint64_t seq1, prev1, reuse1;
    /* Rounds (allgather): this one, how many, bytes of each block per
     * round; op number of round 0, and the flag values before this op
     * (the last op started, the last op in each slot). */
    uint32_t round, rounds;
    size_t cap;
    uint64_t ops0, prev0, before[MOX_COLL_SLOTS];
    unsigned polls;
    uint64_t wait_ns, check_ns;  /* waiting on `next` since; last check */
    const char *src;             /* what goes into my slot */
    size_t src_bytes;            /* dense reduce-scatter: what goes into
                                    my slot (the whole vector) */
    char *out;
    mox_dtype_t dt;
    mox_op_t op;
    uint64_t mine, off;          /* reduce-scatter: my block (elements) */
    uint64_t be;                 /* sparse: block elements; 0 = dense */
    const uint64_t *blocks;      /* sparse: my present blocks, ascending */
    uint64_t nblocks;
    size_t bm_bytes;             /* sparse: bitmap in front of the data */
    size_t pf_bytes;             /* sparse: present blocks before each
                                    bitmap word (uint32), after it */
    int no_room;                 /* sparse: some round of mine does not
                                    fit a slot */
    uint64_t nb, w;              /* sparse: blocks per slice; of each
                                    slice per round (the last may have
                                    fewer) */
    uint64_t *bcur;              /* sparse: [P] next of my blocks in each
                                    slice (index into blocks) */
    mox__rs_args_t fb;           /* sparse: the arguments again, for the
                                    message algorithm when some rank's
                                    blocks do not fit its slot */
    void *fb_mem;                /* fb's counts and blocks, and xs */
    const char **xs;             /* sparse: [P] one block's sources */
    int test_bad_slot;           /* MOX_TEST_BAD_SLOT names this rank */
    uint64_t *count, *displ;     /* allgather: [P] */
    const mox__coll_slot_t **cs; /* [P] by rank */
    mox__rsag_hdr_t hdr;
    unsigned char hdr_out[HDR];
} sm_t;

static const char *what(const sm_t *s)
{
    return s->kind == MOX_RSAG_KIND_AG ? "allgather" : "reduce_scatter";
}

static uint64_t flag_of(uint64_t seq, uint32_t round)
{
    return ((seq + 1) << ROUND_BITS) + round;
}

/* Bytes of rank r's block that this round moves, from byte *at of it. */
static size_t round_bytes(const sm_t *s, int r, size_t *at)
{
    size_t bytes = (size_t)s->count[r] * mox__dtype_size(s->dt);
    *at = (size_t)s->round * s->cap;
    if (*at >= bytes)
        return 0;
    return bytes - *at < s->cap ? bytes - *at : s->cap;
}

/* Is rank r still keeping us in the current phase? */
static int pending(const sm_t *s, int r)
{
    if (s->phase == PH_TURN)
        return atomic_load_explicit(s->cs[r]->read, memory_order_acquire) <
               s->reuse1;
    return r != s->me &&
           atomic_load_explicit(s->cs[r]->written, memory_order_acquire) <
               s->seq1;
}

static int describe_wait(struct mox_req *req, char *buf, size_t len)
{
    const sm_t *s = req->state;
    mox__comm_t *c = req->comm;
    size_t n = 0;
    int shown = 0;
    if (!s)
        return 0;
    if (s->phase == PH_TURN && c->shm_small.done_seq1 < s->prev1)
        return snprintf(buf, len, "%d (its previous small collective, seq "
                        "%llu)", s->me,
                        (unsigned long long)((s->prev1 >> ROUND_BITS) - 1)) > 0;
    for (int r = 0; r < s->P && n + 24 < len; r++)
        if (pending(s, r)) {
            n += (size_t)snprintf(buf + n, len - n, "%s%d (shm %s flag)",
                                  shown ? ", " : "", r,
                                  s->phase == PH_TURN ? "read" : "written");
            shown++;
        }
    return shown;
}

/* Rank r keeps us waiting: now and then read the clock, ask whether r
 * lives, and give up after MOX_TIMEOUT without a flag moving. */
static mox_status_t wait_for(struct mox_req *req, sm_t *s, int r)
{
    mox__comm_t *c = req->comm;
    if (r != s->waiting) {
        s->waiting = r;
        s->wait_ns = 0;
    }
    if (++s->polls % CLOCK_POLLS)
        return MOX_IN_PROGRESS;
    uint64_t now = mox__now_ns();
    if (!s->wait_ns) {
        s->wait_ns = s->check_ns = now;
        return MOX_IN_PROGRESS;
    }
    if (now - s->check_ns >= PEER_CHECK_NS) {
        s->check_ns = now;
        mox_status_t st = mox__peer_check(c, r);
        if (st != MOX_OK)
            return mox__fail(c, st, "%s: rank %d is gone (its process "
                             "ended) while this rank waited for its shm "
                             "flag", req->name, r);
    }
    uint64_t ms = (now - s->wait_ns) / 1000000u;
    if (ms <= (uint64_t)c->cfg.timeout_ms)
        return MOX_IN_PROGRESS;
    char ranks[192] = "";
    int n = describe_wait(req, ranks, sizeof ranks);
    return mox__fail(c, MOX_ERR_TIMEOUT, "%s: no progress for %llu ms "
                     "(MOX_TIMEOUT=%lld); still waiting for rank%s %s",
                     req->name, (unsigned long long)ms,
                     (long long)c->cfg.timeout_ms, n == 1 ? "" : "s",
                     n ? ranks : "(none: a flag moved just now)");
}

/* Reduce my block from every slot, in rank order, through an
 * accumulator on the stack (16-bit floats) or in place in `out`. */
static void reduce_block(const sm_t *s)
{
    mox_dtype_t acc_t = mox__reduce_acc_type(s->dt);
    size_t esz = mox__dtype_size(s->dt), asz = mox__dtype_size(acc_t);
    uint64_t stack[512]; /* 4 KiB, 8-byte aligned */
    uint64_t chunk = sizeof stack / asz;
    for (uint64_t lo = 0; lo < s->mine; lo += chunk) {
        size_t m = (size_t)(s->mine - lo < chunk ? s->mine - lo : chunk);
        size_t at = (size_t)(s->off + lo) * esz;
        char *dst = s->out + (size_t)lo * esz;
        void *acc = acc_t == s->dt ? (void *)dst : (void *)stack;
        for (int r = 0; r < s->P; r++) {
            const char *x = s->cs[r]->slot[s->slot] + MOX_COLL_HDR_BYTES + at;
            if (r == 0)
                mox__reduce_init(acc_t, acc, s->dt, x, m);
            else
                mox__reduce_apply(s->op, acc_t, acc, s->dt, x, m);
        }
        mox__reduce_finish(s->op, s->dt, dst, acc, m, s->P);
    }
}

/* Rank r's block q of this round in its slot, or NULL when r does not
 * have it: the blocks are packed in order after the bitmap and the prefix
 * counts. A round holds, for every slice r in rank order, its blocks
 * [lo, lo + wj) (round_span); q = r * wj + (k - lo) is slice r's block
 * k (one round: q is the block's index in the vector). */
static const char *sparse_block(const sm_t *s, int r, uint64_t b)
{
    const char *base = s->cs[r]->slot[s->slot] + MOX_COLL_HDR_BYTES;
    const uint64_t *bm = (const uint64_t *)(const void *)base;
    uint64_t w = bm[b / 64], bit = UINT64_C(1) << (b % 64);
    if (!(w & bit))
        return NULL;
    const uint32_t *pf = (const uint32_t *)(const void *)(base + s->bm_bytes);
    uint64_t idx = pf[b / 64] + (uint64_t)__builtin_popcountll(w & (bit - 1));
    return base + s->bm_bytes + s->pf_bytes +
           idx * s->be * mox__dtype_size(s->dt);
}

/* This round's blocks of every slice: [*lo, *lo + wj). */
static uint64_t round_span(const sm_t *s, uint64_t *lo)
{
    *lo = (uint64_t)s->round * s->w;
    return s->nb - *lo < s->w ? s->nb - *lo : s->w;
}

/* Block-sparse: each block of my slice in this round from the slots that
 * have it, in rank order (the order of the message algorithms: partials
 * start from their first contribution); blocks nobody has come out
 * zero. */
static void reduce_sparse(const sm_t *s)
{
    mox_dtype_t acc_t = mox__reduce_acc_type(s->dt);
    size_t esz = mox__dtype_size(s->dt), asz = mox__dtype_size(acc_t);
    uint64_t stack[512];
    uint64_t chunk = sizeof stack / asz;
    if (chunk > s->be)
        chunk = s->be;
    uint64_t k0, wj = round_span(s, &k0);
    for (uint64_t k = k0; k < k0 + wj; k++) {
        const char **x = s->xs;
        uint64_t q = (uint64_t)s->me * wj + (k - k0);
        int n = 0;
        for (int r = 0; r < s->P; r++)
            if ((x[n] = sparse_block(s, r, q)) != NULL)
                n++;
        for (uint64_t lo = 0; lo < s->be; lo += chunk) {
            size_t m = (size_t)(s->be - lo < chunk ? s->be - lo : chunk);
            char *dst = s->out + (size_t)(k * s->be + lo) * esz;
            void *acc = acc_t == s->dt ? (void *)dst : (void *)stack;
            for (int i = 0; i < n; i++) {
                if (i == 0)
                    mox__reduce_init(acc_t, acc, s->dt, x[i] + lo * esz, m);
                else
                    mox__reduce_apply(s->op, acc_t, acc, s->dt,
                                      x[i] + lo * esz, m);
            }
            if (n == 0)
                memset(dst, 0, m * esz);
            else
                mox__reduce_finish(s->op, s->dt, dst, acc, m, s->P);
        }
    }
}

/* My slot: header, then (sparse) the size of what follows, and, when it
 * fits, the bitmap of my blocks, the prefix counts and my present blocks
 * packed in order; absent blocks are neither written nor read. */
static void write_slot(sm_t *s, mox__comm_t *c)
{
    char *mine = s->cs[s->me]->slot[s->slot];
    memcpy(mine, s->hdr_out, HDR);
    if (s->kind == MOX_RSAG_KIND_AG) {
        size_t at, bytes = round_bytes(s, s->me, &at);
        if (bytes)
            memcpy(mine + MOX_COLL_HDR_BYTES, s->src + at, bytes);
        return;
    }
    if (!s->be) {
        if (s->src_bytes)
            memcpy(mine + MOX_COLL_HDR_BYTES, s->src, s->src_bytes);
        return;
    }
    uint64_t packed = NO_ROOM; /* bytes after the slot header */
    if (s->no_room) {
        memcpy(mine + HDR, &packed, sizeof packed);
        return;
    }
    uint64_t *bm = (uint64_t *)(void *)(mine + MOX_COLL_HDR_BYTES);
    uint32_t *pf = (uint32_t *)(void *)(mine + MOX_COLL_HDR_BYTES +
                                        s->bm_bytes);
    char *data = mine + MOX_COLL_HDR_BYTES + s->bm_bytes + s->pf_bytes;
    size_t blk = (size_t)s->be * mox__dtype_size(s->dt);
    memset(bm, 0, s->bm_bytes);
    uint64_t k0, wj = round_span(s, &k0), np = 0;
    for (int r = 0; r < s->P; r++) {
        /* My blocks of slice r in this round: from its cursor on, below
         * block k0 + wj of the slice (they ascend). */
        uint64_t first = (uint64_t)r * s->nb, i = s->bcur[r];
        for (; i < s->nblocks && s->blocks[i] < first + k0 + wj; i++) {
            uint64_t b = s->blocks[i], q = (uint64_t)r * wj + (b - first - k0);
            bm[q / 64] |= UINT64_C(1) << (q % 64);
            memcpy(data + np++ * blk, s->src + b * blk, blk);
        }
        s->bcur[r] = i;
    }
    packed = s->bm_bytes + s->pf_bytes + np * blk;
    memcpy(mine + HDR, &packed, sizeof packed);
    uint32_t n = 0;
    for (size_t w = 0; w < s->bm_bytes / 8; w++) {
        pf[w] = n;
        n += (uint32_t)__builtin_popcountll(bm[w]);
    }
    if (s->test_bad_slot && s->bm_bytes)
        pf[0] += 1; /* MOX_TEST_BAD_SLOT: a corrupt slot, for the tests */
    c->stats.bytes_sparse_saved += ((uint64_t)s->P * wj - np) * blk;
}

static void gather_blocks(const sm_t *s)
{
    size_t esz = mox__dtype_size(s->dt);
    for (int r = 0; r < s->P; r++) {
        size_t at, bytes = round_bytes(s, r, &at);
        char *dst = s->out + (size_t)s->displ[r] * esz + at;
        const char *src = r == s->me ? s->src + at
                                     : s->cs[r]->slot[s->slot] +
                                           MOX_COLL_HDR_BYTES;
        if (bytes && src != dst) /* in place: my block is already there */
            memcpy(dst, src, bytes);
    }
}

/* MOX_TEST_BAD_SLOT=R (tests only): rank R writes wrong prefix counts.
 * Read from the environment once per process, not on every call. */
static int test_bad_slot_rank(void)
{
    static int rank = -2;
    if (rank == -2) {
        const char *v = getenv("MOX_TEST_BAD_SLOT");
        rank = v ? atoi(v) : -1;
    }
    return rank;
}

/* Rank r's packed slot is what sparse_block trusts: its size fits the
 * slot, and the prefix counts agree with the bitmap and add up to the
 * blocks that follow. Every rank checks every slot, so all fail alike. */
static mox_status_t check_packed(mox__comm_t *c, const sm_t *s, int r)
{
    const char *slot = s->cs[r]->slot[s->slot];
    const uint64_t *bm = (const uint64_t *)(const void *)(slot +
                                                          MOX_COLL_HDR_BYTES);
    const uint32_t *pf = (const uint32_t *)(const void *)(slot +
                                                          MOX_COLL_HDR_BYTES +
                                                          s->bm_bytes);
    size_t blk = (size_t)s->be * mox__dtype_size(s->dt);
    uint64_t packed, n = 0;
    memcpy(&packed, slot + HDR, sizeof packed);
    const char *why = NULL;
    if (packed > s->cs[r]->slot_bytes - MOX_COLL_HDR_BYTES ||
        packed < s->bm_bytes + s->pf_bytes ||
        (packed - s->bm_bytes - s->pf_bytes) % blk)
        why = "its size";
    for (size_t w = 0; !why && w < s->bm_bytes / 8; w++) {
        if (pf[w] != n)
            why = "its prefix counts";
        n += (uint64_t)__builtin_popcountll(bm[w]);
    }
    if (!why && n != (packed - s->bm_bytes - s->pf_bytes) / blk)
        why = "its block count";
    if (!why)
        return MOX_OK;
    return mox__fail(c, MOX_ERR_PROTOCOL, "reduce_scatter_sparse: rank %d's "
                     "shm slot is inconsistent (%s; %llu bytes after the "
                     "header)", r, why, (unsigned long long)packed);
}

static void free_fb(struct mox_req *req)
{
    sm_t *s = req->state;
    if (s) {
        free(s->fb_mem);
        s->fb_mem = NULL;
    }
}

/* Some rank's blocks did not fit its slot: the same request goes on as
 * the message algorithm (flat), which the ranks start alike. */
static mox_status_t message_fallback(struct mox_req *req, sm_t *s)
{
    MOX_DEBUG("reduce_scatter", "seq %llu: present blocks of some rank do "
              "not fit a shm collective slot; messages instead",
              (unsigned long long)req->seq);
    req->state = NULL;
    req->cleanup = NULL;
    req->describe_wait = NULL;
    req->name = "reduce_scatter_sparse_flat";
    mox_status_t st = mox__reduce_scatter_hier(req, &s->fb);
    free(s->fb_mem);
    free(s);
    if (st != MOX_OK)
        return st;
    return req->progress(req);
}

static void enter_round(sm_t *s, uint32_t j);

/* Everyone's data is here: check the headers, compute, release. */
static mox_status_t complete(struct mox_req *req, sm_t *s)
{
    mox__comm_t *c = req->comm;
    mox_status_t st = MOX_OK;
    /* Headers equal to ours need no decoding. */
    for (int r = 0; r < s->P && st == MOX_OK; r++)
        if (r != s->me && memcmp(s->cs[r]->slot[s->slot], s->hdr_out,
                                 MOX_RSAG_HDR_AGREED_BYTES))
            st = mox__rsag_hdr_check(c, what(s), r, s->cs[r]->slot[s->slot],
                                     HDR, &s->hdr);
    /* Sparse: every rank's blocks fit its slot, or all ranks, seeing the
     * same sizes, take the message algorithm. */
    int fall_back = 0;
    for (int r = 0; r < s->P && st == MOX_OK && s->be && !s->round; r++) {
        uint64_t packed;
        memcpy(&packed, s->cs[r]->slot[s->slot] + HDR, sizeof packed);
        fall_back |= packed == NO_ROOM;
    }
    for (int r = 0; r < s->P && st == MOX_OK && s->be && !fall_back; r++)
        st = check_packed(c, s, r);
    if (st == MOX_ERR_PROTOCOL)
        req->agreed_error = 1; /* every rank read the same slots */
    if (st == MOX_OK && s->kind == MOX_RSAG_KIND_AG)
        gather_blocks(s);
    else if (st == MOX_OK && fall_back)
        ; /* below, once the slot is released */
    else if (st == MOX_OK && s->be)
        reduce_sparse(s);
    else if (st == MOX_OK)
        reduce_block(s);
    /* Done reading, even after a mismatch: every rank saw every header,
     * so all fail alike and the slots stay in step for the next op. */
    /* Falling back (in the first round) or failing ends the op's rounds
     * here: its later rounds count as read and done, or the next op would
     * wait for them (a failure every rank saw alike leaves the
     * communicator usable). */
    uint64_t done1 = fall_back || st != MOX_OK
                         ? flag_of(s->hdr.seq, s->rounds - 1)
                         : s->seq1;
    atomic_store_explicit(s->cs[s->me]->read, done1, memory_order_release);
    c->shm_small.done_seq1 = done1;
    if (st == MOX_ERR_MISMATCH && s->rounds == 1)
        req->agreed_error = 1;
    if (st == MOX_OK && fall_back)
        return message_fallback(req, s);
    if (st == MOX_OK && s->round + 1 < s->rounds) {
        enter_round(s, s->round + 1);
        return MOX_IN_PROGRESS; /* progress goes on with it */
    }
    return st;
}

static mox_status_t step(struct mox_req *req);

static mox_status_t progress(struct mox_req *req)
{
    sm_t *s = req->state;
    uint32_t round;
    mox_status_t st;
    do { /* a round that completes goes straight on to the next */
        round = s->round;
        st = step(req);
        /* A fallback handed the request (and freed s) to the message
         * algorithm. */
        if (req->progress != progress)
            return st;
    } while (st == MOX_IN_PROGRESS && s->round != round);
    return st;
}

static mox_status_t step(struct mox_req *req)
{
    sm_t *s = req->state;
    mox__comm_t *c = req->comm;
    if (s->phase == PH_TURN) {
        if (c->shm_small.done_seq1 < s->prev1) {
            if (c->failed)
                return mox__fail(c, MOX_ERR_COMM_FAILED, "%s: the small "
                                 "collective before it failed", req->name);
            return wait_for(req, s, s->me);
        }
        for (; s->next < s->P; s->next++)
            if (pending(s, s->next))
                return wait_for(req, s, s->next);
        write_slot(s, c);
        atomic_store_explicit(s->cs[s->me]->written, s->seq1,
                              memory_order_release);
        s->phase = PH_ARRIVE;
        s->next = 0;
        s->waiting = -1;
    }
    for (; s->next < s->P; s->next++)
        if (pending(s, s->next))
            return wait_for(req, s, s->next);
    return complete(req, s);
}

int mox__shm_small_fits(mox__comm_t *c, uint64_t bytes)
{
    return c->topo.num_nodes == 1 && c->size > 1 && c->cfg.shm_small > 0 &&
           bytes <= (uint64_t)c->cfg.shm_small &&
           mox__shm_coll_slot(c, c->local_rank) != NULL;
}

/* Slice blocks per round (*w) and rounds for a block-sparse vector of
 * `total` elements; 0 rounds: not through the area. One round up to
 * SPARSE_SPAN x MOX_SHM_SMALL bytes, else rounds of that span; the bitmap
 * of a round (one bit per block of every slice) and its prefix counts take
 * at most 3/16 of MOX_SHM_SMALL. */
static uint32_t sparse_rounds(mox__comm_t *c, uint64_t total,
                              uint64_t block_elems, size_t elem_bytes,
                              uint64_t *w)
{
    uint64_t small = (uint64_t)c->cfg.shm_small, P = (uint64_t)c->size;
    if (c->topo.num_nodes != 1 || P < 2 || !small || !block_elems ||
        !mox__shm_coll_slot(c, c->local_rank))
        return 0;
    uint64_t nb = total / P / block_elems, bytes = block_elems * elem_bytes;
    *w = total * elem_bytes <= SPARSE_SPAN * small ? nb
                                                   : SPARSE_SPAN * small /
                                                         (P * bytes);
    if (*w == 0)
        *w = 1;
    for (;;) {
        size_t bm = mox__shm_sparse_bitmap_bytes(P * *w, 1);
        if (bm + bm / 2 <= small / 8)
            break;
        if (*w == 1)
            return 0;
        *w /= 2;
    }
    uint64_t n = nb ? (nb + *w - 1) / *w : 1;
    return n > MAX_ROUNDS ? 0 : (uint32_t)n;
}

int mox__shm_sparse_may(mox__comm_t *c, uint64_t total, uint64_t block_elems,
                        size_t elem_bytes)
{
    uint64_t w;
    return sparse_rounds(c, total, block_elems, elem_bytes, &w) > 0;
}

size_t mox__shm_sparse_bitmap_bytes(uint64_t total, uint64_t block_elems)
{
    if (!block_elems)
        return 0;
    return (size_t)((total / block_elems + 511) / 512 * 64);
}

/* Round j of this op: its slot and flag value, what it waits for. */
static void enter_round(sm_t *s, uint32_t j)
{
    uint64_t seq = s->hdr.seq;
    s->round = j;
    s->slot = (int)((s->ops0 + j) % MOX_COLL_SLOTS);
    s->seq1 = flag_of(seq, j);
    s->prev1 = j ? flag_of(seq, j - 1) : s->prev0;
    s->reuse1 = j >= MOX_COLL_SLOTS ? flag_of(seq, j - MOX_COLL_SLOTS)
                                    : s->before[s->slot];
    s->phase = PH_TURN;
    s->next = 0;
    s->waiting = -1;
}

/* Number this op's rounds in the communicator's order of small ops. */
static void take_turns(mox__comm_t *c, sm_t *s, uint64_t seq, uint32_t rounds)
{
    s->rounds = rounds;
    s->ops0 = c->shm_small.ops;
    s->prev0 = c->shm_small.last_seq1;
    memcpy(s->before, c->shm_small.slot_seq1, sizeof s->before);
    c->shm_small.ops += rounds;
    c->shm_small.last_seq1 = flag_of(seq, rounds - 1);
    for (uint32_t j = rounds > MOX_COLL_SLOTS ? rounds - MOX_COLL_SLOTS : 0;
         j < rounds; j++)
        c->shm_small.slot_seq1[(s->ops0 + j) % MOX_COLL_SLOTS] =
            flag_of(seq, j);
    s->hdr.seq = seq;
    enter_round(s, 0);
}

/* Data bytes of the smallest slot of the node (all are made alike). */
static size_t slot_cap(mox__comm_t *c)
{
    size_t cap = SIZE_MAX;
    for (int l = 0; l < c->local_size; l++) {
        const mox__coll_slot_t *cs = mox__shm_coll_slot(c, l);
        if (!cs || cs->slot_bytes <= MOX_COLL_HDR_BYTES)
            return 0;
        if (cs->slot_bytes - MOX_COLL_HDR_BYTES < cap)
            cap = cs->slot_bytes - MOX_COLL_HDR_BYTES;
    }
    return cap;
}

uint32_t mox__shm_ag_rounds(mox__comm_t *c, uint64_t max_block_bytes)
{
    size_t cap = slot_cap(c);
    if (c->topo.num_nodes != 1 || c->size < 2 || !cap)
        return 0;
    uint64_t n = (max_block_bytes + cap - 1) / cap;
    return n == 0 ? 1 : n > MAX_ROUNDS ? 0 : (uint32_t)n;
}

/* State shared by both collectives; takes this op's place (allgather: its
 * rounds' places) in the communicator's order of small ops. */
static mox_status_t setup(struct mox_req *req, uint32_t kind, int with_counts,
                          uint32_t rounds, sm_t **out)
{
    mox__comm_t *c = req->comm;
    int P = c->size;
    size_t extra = (size_t)P * (sizeof(void *) +
                                (with_counts ? 2 * sizeof(uint64_t) : 0));
    sm_t *s = calloc(1, sizeof *s + extra);
    if (!s)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "%s: no memory",
                         req->name);
    req->state = s;
    s->cs = (const mox__coll_slot_t **)(s + 1);
    if (with_counts) {
        s->count = (uint64_t *)(s->cs + P);
        s->displ = s->count + P;
    }
    for (int r = 0; r < P; r++)
        if (!(s->cs[r] = mox__shm_coll_slot(c, c->topo.local_of[r])))
            return mox__fail(c, MOX_ERR_TRANSPORT, "%s: no shm collective "
                             "area for rank %d", req->name, r);
    s->kind = kind;
    s->P = P;
    s->me = c->rank;
    if (!rounds)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "%s: the vector needs more "
                         "than %u rounds through the shm collective area",
                         req->name, MAX_ROUNDS);
    take_turns(c, s, req->seq, rounds);
    req->progress = progress;
    req->describe_wait = describe_wait;
    *out = s;
    return MOX_OK;
}

static mox_status_t check_room(struct mox_req *req, const sm_t *s)
{
    if (MOX_COLL_HDR_BYTES + s->src_bytes <= s->cs[s->me]->slot_bytes)
        return MOX_OK;
    return mox__fail(req->comm, MOX_ERR_INVALID_ARG, "%s: %zu bytes do not "
                     "fit a shm collective slot of %zu", req->name,
                     s->src_bytes, s->cs[s->me]->slot_bytes);
}

mox_status_t mox__reduce_scatter_shm(struct mox_req *req,
                                     const mox__rs_args_t *a)
{
    sm_t *s;
    uint64_t total = 0, w = 0;
    for (int r = 0; r < req->comm->size; r++)
        total += a->counts[r];
    uint32_t rounds = a->block_elems
                          ? sparse_rounds(req->comm, total, a->block_elems,
                                          mox__dtype_size(a->dtype), &w)
                          : 1;
    mox_status_t st = setup(req, MOX_RSAG_KIND_RS, 0, rounds, &s);
    if (st != MOX_OK)
        return st;
    for (int r = 0; r < s->me; r++)
        s->off += a->counts[r];
    s->mine = a->counts[s->me];
    s->dt = a->dtype;
    s->op = a->op;
    s->src = a->in;
    s->be = a->block_elems;
    s->blocks = a->blocks;
    s->nblocks = a->nblocks;
    s->nb = s->be ? s->mine / s->be : 0;
    s->w = w;
    s->bm_bytes = mox__shm_sparse_bitmap_bytes((uint64_t)s->P * w, 1);
    s->src_bytes = (size_t)total * mox__dtype_size(a->dtype);
    s->out = a->out;
    uint32_t kind = s->be ? MOX_RSAG_KIND_RS_SPARSE : MOX_RSAG_KIND_RS;
    s->hdr = (mox__rsag_hdr_t){
        kind, req->seq,
        mox__rsag_hash(kind, a->dtype, a->op, s->be, a->counts, s->P),
        total, s->mine};
    mox__rsag_hdr_encode(&s->hdr, s->hdr_out);
    if (!s->be)
        return check_room(req, s);
    /* Sparse: my blocks of each round packed, after the bitmap and one
     * prefix count per bitmap word; keep the arguments for the message
     * algorithm. */
    size_t blk = (size_t)s->be * mox__dtype_size(s->dt);
    s->pf_bytes = (s->bm_bytes / 8 * sizeof(uint32_t) + 63) / 64 * 64;
    s->fb_mem = malloc((size_t)s->P * (2 * sizeof(uint64_t) + sizeof(char *)) +
                       (size_t)a->nblocks * sizeof(uint64_t) + 1);
    if (!s->fb_mem)
        return mox__fail(req->comm, MOX_ERR_NO_MEMORY, "%s: no memory",
                         req->name);
    req->cleanup = free_fb;
    uint64_t *counts = s->fb_mem, *blocks = counts + s->P;
    memcpy(counts, a->counts, (size_t)s->P * sizeof *counts);
    if (a->nblocks)
        memcpy(blocks, a->blocks, (size_t)a->nblocks * sizeof *blocks);
    s->bcur = blocks + a->nblocks;
    s->xs = (const char **)(void *)(s->bcur + s->P);
    /* Where my blocks of each slice start, and whether my blocks of every
     * round fit my slot (decided before the first round, so that all ranks
     * can fall back alike before anything is written). */
    for (int r = 0; r < s->P; r++)
        s->bcur[r] = a->nblocks;
    for (uint64_t i = a->nblocks; i-- > 0;)
        s->bcur[a->blocks[i] / s->nb] = i;
    uint64_t *per = calloc(rounds, sizeof *per), most = 0;
    if (!per)
        return mox__fail(req->comm, MOX_ERR_NO_MEMORY, "%s: no memory",
                         req->name);
    for (uint64_t i = 0; i < a->nblocks; i++)
        per[a->blocks[i] % s->nb / s->w]++;
    for (uint32_t j = 0; j < rounds; j++)
        most = per[j] > most ? per[j] : most;
    free(per);
    s->no_room = MOX_COLL_HDR_BYTES + s->bm_bytes + s->pf_bytes +
                     most * (uint64_t)blk > s->cs[s->me]->slot_bytes;
    s->fb = *a;
    s->fb.counts = counts;
    s->fb.blocks = blocks;
    s->test_bad_slot = test_bad_slot_rank() == s->me;
    s->fb.hier = 0; /* one node: flat */
    s->fb.ring = 0;
    return MOX_OK;
}

mox_status_t mox__allgather_shm(struct mox_req *req, const mox__ag_args_t *a)
{
    sm_t *s;
    uint64_t maxblk = 0;
    for (int r = 0; r < req->comm->size; r++)
        if (a->counts[r] > maxblk)
            maxblk = a->counts[r];
    mox_status_t st = setup(req, MOX_RSAG_KIND_AG, 1,
                            mox__shm_ag_rounds(req->comm,
                                               maxblk * mox__dtype_size(a->dtype)),
                            &s);
    if (st != MOX_OK)
        return st;
    s->cap = slot_cap(req->comm);
    uint64_t total = 0;
    for (int r = 0; r < s->P; r++) {
        s->count[r] = a->counts[r];
        s->displ[r] = a->displs[r];
        total += a->counts[r];
    }
    s->dt = a->dtype;
    s->src = a->src;
    s->out = a->out;
    s->hdr = (mox__rsag_hdr_t){
        MOX_RSAG_KIND_AG, req->seq,
        mox__rsag_hash(MOX_RSAG_KIND_AG, a->dtype, 0, 0, a->counts, s->P),
        total, s->count[s->me]};
    mox__rsag_hdr_encode(&s->hdr, s->hdr_out);
    return MOX_OK; /* in rounds when the blocks do not fit a slot */
}
