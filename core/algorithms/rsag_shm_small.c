/*
 * Small reduce-scatter(_v) and allgather(v) on one node, through the shm
 * segment's collective area (core/transport.h, transports/shm/shm.h)
 * instead of messages: every rank writes its input once into a slot of
 * its own, publishes it with one flag, and reads what it needs straight
 * from the others' slots. No message, no ring, no allocation beyond the
 * request; the steady state has one synchronisation per operation. The
 * same area serves leader mode of rhalving and rdoubling on several nodes
 * (mox__shm_node_*, at the end of this file).
 *
 * Each local rank owns its flags (written, read; failed, for leader mode)
 * and MOX_COLL_SLOTS (2) slots; only the owner writes them. Small op number i (counted on the communicator, the
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

/* An op's place in the communicator's order of small ops: the op number
 * of its round 0, the flag value of the op before it, the flag value of
 * the last op in each slot before it. */
typedef struct {
    uint64_t seq, ops0, prev0, before[MOX_COLL_SLOTS];
} turns_t;

typedef struct {
    uint32_t kind;               /* MOX_RSAG_KIND_RS or _AG */
    int P, me, slot, phase;
    int next;                    /* first rank not yet seen in this phase */
    mox__shm_waiter_t wt;
    uint64_t seq1, prev1, reuse1;
    /* Rounds: this one, how many, (allgather) bytes of each block per
     * round; the op's place in the order of small ops. */
    uint32_t round, rounds;
    size_t cap;
    turns_t turns;
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
static mox_status_t wait_for(struct mox_req *req, mox__shm_waiter_t *w, int r)
{
    mox__comm_t *c = req->comm;
    if (r != w->waiting) {
        w->waiting = r;
        w->wait_ns = 0;
    }
    if (++w->polls % CLOCK_POLLS)
        return MOX_IN_PROGRESS;
    uint64_t now = mox__now_ns();
    if (!w->wait_ns) {
        w->wait_ns = w->check_ns = now;
        return MOX_IN_PROGRESS;
    }
    if (now - w->check_ns >= PEER_CHECK_NS) {
        w->check_ns = now;
        mox_status_t st = mox__peer_check(c, r);
        if (st != MOX_OK)
            return mox__fail(c, st, "%s: rank %d is gone (its process "
                             "ended) while this rank waited for its shm "
                             "flag", req->name, r);
    }
    uint64_t ms = (now - w->wait_ns) / 1000000u;
    if (ms <= (uint64_t)c->cfg.timeout_ms)
        return MOX_IN_PROGRESS;
    char ranks[192] = "";
    int n = req->describe_wait ? req->describe_wait(req, ranks, sizeof ranks)
                               : snprintf(ranks, sizeof ranks,
                                          "%d (shm flag)", r) > 0;
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

/* The rank a MOX_TEST_* hook (tests only) names, or -1; read from the
 * environment once per process (*cached starts at -2), not on every
 * call. */
static int test_rank(const char *var, int *cached)
{
    if (*cached == -2) {
        const char *v = getenv(var);
        *cached = v ? atoi(v) : -1;
    }
    return *cached;
}

/* MOX_TEST_BAD_SLOT=R: rank R writes wrong prefix counts. */
static int test_bad_slot_rank(void)
{
    static int rank = -2;
    return test_rank("MOX_TEST_BAD_SLOT", &rank);
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
            return wait_for(req, &s->wt, s->me);
        }
        for (; s->next < s->P; s->next++)
            if (pending(s, s->next))
                return wait_for(req, &s->wt, s->next);
        write_slot(s, c);
        atomic_store_explicit(s->cs[s->me]->written, s->seq1,
                              memory_order_release);
        s->phase = PH_ARRIVE;
        s->next = 0;
        s->wt.waiting = -1;
    }
    for (; s->next < s->P; s->next++)
        if (pending(s, s->next))
            return wait_for(req, &s->wt, s->next);
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

/* Round j of an op (turns_t): its slot, flag value, the value its rank's
 * previous round had (prev1) and the value every rank must have read
 * before the slot is written (reuse1). */
static void round_of(const turns_t *t, uint32_t j, int *slot, uint64_t *seq1,
                     uint64_t *prev1, uint64_t *reuse1)
{
    *slot = (int)((t->ops0 + j) % MOX_COLL_SLOTS);
    *seq1 = flag_of(t->seq, j);
    *prev1 = j ? flag_of(t->seq, j - 1) : t->prev0;
    *reuse1 = j >= MOX_COLL_SLOTS ? flag_of(t->seq, j - MOX_COLL_SLOTS)
                                  : t->before[*slot];
}

/* Number an op's rounds in the communicator's order of small ops. */
static void number_rounds(mox__comm_t *c, uint64_t seq, uint32_t rounds,
                          turns_t *t)
{
    t->seq = seq;
    t->ops0 = c->shm_small.ops;
    t->prev0 = c->shm_small.last_seq1;
    memcpy(t->before, c->shm_small.slot_seq1, sizeof t->before);
    c->shm_small.ops += rounds;
    c->shm_small.last_seq1 = flag_of(seq, rounds - 1);
    for (uint32_t j = rounds > MOX_COLL_SLOTS ? rounds - MOX_COLL_SLOTS : 0;
         j < rounds; j++)
        c->shm_small.slot_seq1[(t->ops0 + j) % MOX_COLL_SLOTS] =
            flag_of(seq, j);
}

/* Round j of this op: its slot and flag value, what it waits for. */
static void enter_round(sm_t *s, uint32_t j)
{
    s->round = j;
    round_of(&s->turns, j, &s->slot, &s->seq1, &s->prev1, &s->reuse1);
    s->phase = PH_TURN;
    s->next = 0;
    s->wt.waiting = -1;
}

static void take_turns(mox__comm_t *c, sm_t *s, uint64_t seq, uint32_t rounds)
{
    s->rounds = rounds;
    number_rounds(c, seq, rounds, &s->turns);
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
    mox__rsag_hdr_make(&s->hdr, s->hdr_out,
                       s->be ? MOX_RSAG_KIND_RS_SPARSE : MOX_RSAG_KIND_RS,
                       req->seq, a->dtype, a->op, s->be, a->counts, s->P,
                       s->me);
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
    for (int r = 0; r < s->P; r++) {
        s->count[r] = a->counts[r];
        s->displ[r] = a->displs[r];
    }
    s->dt = a->dtype;
    s->src = a->src;
    s->out = a->out;
    mox__rsag_hdr_make(&s->hdr, s->hdr_out, MOX_RSAG_KIND_AG, req->seq,
                       a->dtype, 0, 0, a->counts, s->P, s->me);
    return MOX_OK; /* in rounds when the blocks do not fit a slot */
}

/* ------------------------------------------------------------------ */
/* Leader mode of rhalving and rdoubling on several nodes (core/rsag.h):
 * the node's ranks meet their leader (local rank 0) in the area, in two
 * rounds numbered like every other small op's. Round 0's flag value k0
 * is each rank's `written` (the others; the leader writes nothing) and,
 * once its data is out or read, its `read`; round 1's, k0 + 1, is the
 * leader's `written` once its result is in its slot. A leader that gives
 * up stores k0 + 1 in its `failed`, another rank that gives up before
 * round 0 stores k0 in its own. The leader's `written` cannot pass k0 + 1
 * before every rank of the node has read round 1: its next round-1 write
 * waits for their `read`. The others sleep on the leader's bell while
 * they wait for round 1 (mox_wait's doze); it rings when it publishes or
 * gives up. */

enum { NODE_START, NODE_IN, NODE_OUT, NODE_DONE };

int mox__shm_node_may(mox__comm_t *c, uint64_t bytes)
{
    return c->topo.num_nodes > 1 && c->local_size > 1 &&
           c->cfg.shm_small > 0 && bytes <= (uint64_t)c->cfg.shm_small &&
           mox__grid_nodes_equal(c) &&
           mox__shm_coll_slot(c, c->local_rank) != NULL;
}

mox_status_t mox__shm_node_init(struct mox_req *req, mox__shm_node_t *n,
                                const char *what, const mox__rsag_hdr_t *h,
                                const unsigned char *hdr_out)
{
    mox__comm_t *c = req->comm;
    turns_t t;
    uint64_t k1, prev1;
    n->L = c->local_size;
    n->me = c->local_rank;
    n->leader = mox__topo_rank_at(&c->topo, c->node, 0);
    n->what = what;
    n->h = h;
    n->hdr_out = hdr_out;
    n->wt.waiting = -1;
    number_rounds(c, h->seq, 2, &t);
    round_of(&t, 0, &n->slot0, &n->k0, &n->prev0, &n->reuse0);
    round_of(&t, 1, &n->slot1, &k1, &prev1, &n->reuse1);
    n->cs = calloc((size_t)n->L, sizeof *n->cs);
    if (!n->cs)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "%s: no memory", req->name);
    for (int l = 0; l < n->L; l++)
        if (!(n->cs[l] = mox__shm_coll_slot(c, l)))
            return mox__fail(c, MOX_ERR_TRANSPORT, "%s: no shm collective "
                             "area for local rank %d", req->name, l);
    return MOX_OK;
}

static int local_rank_of(mox__comm_t *c, int l)
{
    return mox__topo_rank_at(&c->topo, c->node, l);
}

/* Every local rank has read at least `flag` (from n->next on). */
static mox_status_t wait_read(struct mox_req *req, mox__shm_node_t *n,
                              uint64_t flag)
{
    for (; n->next < n->L; n->next++)
        if (atomic_load_explicit(n->cs[n->next]->read,
                                 memory_order_acquire) < flag)
            return wait_for(req, &n->wt, local_rank_of(req->comm, n->next));
    n->next = 0;
    n->wt.waiting = -1;
    return MOX_OK;
}

/* My previous small op has finished (ops run one at a time, in order). */
static mox_status_t wait_prev(struct mox_req *req, mox__shm_node_t *n)
{
    mox__comm_t *c = req->comm;
    if (c->shm_small.done_seq1 >= n->prev0)
        return MOX_OK;
    if (c->failed)
        return mox__fail(c, MOX_ERR_COMM_FAILED, "%s: the small collective "
                         "before it failed", req->name);
    return wait_for(req, &n->wt, req->comm->rank);
}

static mox_status_t room(struct mox_req *req, const mox__shm_node_t *n,
                         size_t bytes)
{
    size_t cap = n->cs[n->me]->slot_bytes - MOX_COLL_HDR_BYTES;
    if (bytes <= cap)
        return MOX_OK;
    return mox__fail(req->comm, MOX_ERR_INVALID_ARG, "%s: %zu bytes do not "
                     "fit a shm collective slot of %zu", req->name, bytes,
                     cap);
}

/* Rank r (`who`) stored its failure of this op in its `failed` flag. */
static mox_status_t failed_at(struct mox_req *req, const mox__shm_node_t *n,
                              const mox__coll_slot_t *o, int r,
                              const char *who)
{
    mox_status_t code = (mox_status_t)(int64_t)atomic_load_explicit(
        o->failed_code, memory_order_relaxed);
    if (code == MOX_ERR_MISMATCH)
        return mox__fail(req->comm, code, "%s: rank %d, %s, gave up at "
                         "sequence %llu: ranks disagree on counts, dtype, op "
                         "or block size (its error names them)", n->what, r,
                         who, (unsigned long long)n->h->seq);
    return mox__fail(req->comm, code < 0 ? code : MOX_ERR_PEER, "%s: rank "
                     "%d, %s, failed at sequence %llu: %s", n->what, r, who,
                     (unsigned long long)n->h->seq, mox_strerror(code));
}

/* MOX_TEST_NODE_FAIL=R: rank R, not a leader, fails its leader-mode ops
 * before it writes its input. */
static int test_node_fail_rank(void)
{
    static int rank = -2;
    return test_rank("MOX_TEST_NODE_FAIL", &rank);
}

mox_status_t mox__shm_node_put(struct mox_req *req, mox__shm_node_t *n,
                               const void *data, size_t bytes)
{
    mox__comm_t *c = req->comm;
    mox_status_t st;
    if (n->state != NODE_START)
        return MOX_OK;
    if (test_node_fail_rank() == c->rank)
        return mox__fail(c, MOX_ERR_PEER, "%s: MOX_TEST_NODE_FAIL: rank %d "
                         "fails before it writes its input", n->what,
                         c->rank);
    if ((st = wait_prev(req, n)) != MOX_OK ||
        (st = wait_read(req, n, n->reuse0)) != MOX_OK ||
        (st = room(req, n, bytes)) != MOX_OK)
        return st;
    char *slot = n->cs[n->me]->slot[n->slot0];
    memcpy(slot, n->hdr_out, HDR);
    if (bytes)
        memcpy(slot + MOX_COLL_HDR_BYTES, data, bytes);
    atomic_store_explicit(n->cs[n->me]->written, n->k0, memory_order_release);
    /* It reads nothing in round 0. */
    atomic_store_explicit(n->cs[n->me]->read, n->k0, memory_order_release);
    c->shm_small.done_seq1 = n->k0;
    n->state = NODE_OUT;
    mox__count_put(c, bytes);
    return MOX_OK;
}

mox_status_t mox__shm_node_gather(struct mox_req *req, mox__shm_node_t *n,
                                  const char **data)
{
    mox__comm_t *c = req->comm;
    mox_status_t st;
    if (n->state == NODE_START) {
        if ((st = wait_prev(req, n)) != MOX_OK)
            return st;
        n->state = NODE_IN;
        n->next = 1;
    }
    for (; n->next < n->L; n->next++) {
        const mox__coll_slot_t *o = n->cs[n->next];
        if (atomic_load_explicit(o->written, memory_order_acquire) >= n->k0)
            continue;
        if (atomic_load_explicit(o->failed, memory_order_acquire) >= n->k0)
            return failed_at(req, n, o, local_rank_of(c, n->next),
                             "a rank of this node");
        return wait_for(req, &n->wt, local_rank_of(c, n->next));
    }
    n->next = 0;
    n->wt.waiting = -1;
    for (int l = 1; l < n->L; l++) {
        const char *slot = n->cs[l]->slot[n->slot0];
        if (memcmp(slot, n->hdr_out, MOX_RSAG_HDR_AGREED_BYTES) &&
            (st = mox__rsag_hdr_check(c, n->what, local_rank_of(c, l), slot,
                                      HDR, n->h)) != MOX_OK)
            return st;
        data[l] = slot + MOX_COLL_HDR_BYTES;
    }
    n->state = NODE_OUT;
    return MOX_OK;
}

mox_status_t mox__shm_node_slot(struct mox_req *req, mox__shm_node_t *n,
                                size_t bytes, char **dst)
{
    mox_status_t st;
    if ((st = wait_read(req, n, n->reuse1)) != MOX_OK ||
        (st = room(req, n, bytes)) != MOX_OK)
        return st;
    *dst = n->cs[n->me]->slot[n->slot1] + MOX_COLL_HDR_BYTES;
    n->out_bytes = bytes;
    return MOX_OK;
}

/* Round 1 is over for this rank. */
static void node_finish(struct mox_req *req, mox__shm_node_t *n)
{
    atomic_store_explicit(n->cs[n->me]->read, n->k0 + 1,
                          memory_order_release);
    req->comm->shm_small.done_seq1 = n->k0 + 1;
    req->doze_bell = req->doze_sleepers = NULL;
    n->state = NODE_DONE;
}

void mox__shm_node_publish(struct mox_req *req, mox__shm_node_t *n)
{
    const mox__coll_slot_t *me = n->cs[n->me];
    memcpy(me->slot[n->slot1], n->hdr_out, HDR);
    atomic_store_explicit(me->written, n->k0 + 1, memory_order_release);
    mox__bell_ring(me->bell, me->sleepers);
    mox__count_put(req->comm, n->out_bytes);
    node_finish(req, n);
}

mox_status_t mox__shm_node_fetch(struct mox_req *req, mox__shm_node_t *n,
                                 const char **data)
{
    mox__comm_t *c = req->comm;
    const mox__coll_slot_t *ld = n->cs[0];
    if (atomic_load_explicit(ld->written, memory_order_acquire) >= n->k0 + 1) {
        const char *slot = ld->slot[n->slot1];
        mox_status_t st;
        if (memcmp(slot, n->hdr_out, MOX_RSAG_HDR_AGREED_BYTES) &&
            (st = mox__rsag_hdr_check(c, n->what, n->leader, slot, HDR,
                                      n->h)) != MOX_OK)
            return st;
        *data = slot + MOX_COLL_HDR_BYTES;
        return MOX_OK;
    }
    if (atomic_load_explicit(ld->failed, memory_order_acquire) >= n->k0 + 1)
        return failed_at(req, n, ld, n->leader, "this node's leader");
    /* All this rank waits for: mox_wait may sleep until the leader rings. */
    req->doze_bell = ld->bell;
    req->doze_sleepers = ld->sleepers;
    return wait_for(req, &n->wt, n->leader);
}

void mox__shm_node_done(struct mox_req *req, mox__shm_node_t *n)
{
    node_finish(req, n);
}

void mox__shm_node_end(struct mox_req *req, mox__shm_node_t *n,
                       mox_status_t st)
{
    if (!n->cs)
        return;
    /* A leader that did not publish, or another rank that did not write
     * round 0, says so in its `failed` flag (the leader with round 1's
     * value, which its ranks wait for; the others with round 0's, which
     * the leader waits for), so that those waiting for it fail now,
     * with its status. */
    const mox__coll_slot_t *me = n->cs[n->me];
    if (n->state != NODE_DONE && (n->me == 0 || n->state == NODE_START)) {
        atomic_store_explicit(me->failed_code,
                              (uint64_t)(int64_t)(st == MOX_OK ? MOX_ERR_PEER
                                                               : st),
                              memory_order_relaxed);
        atomic_store_explicit(me->failed, n->k0 + (n->me == 0),
                              memory_order_release);
        if (n->me == 0)
            mox__bell_ring(me->bell, me->sleepers);
    }
    if (n->state != NODE_DONE)
        node_finish(req, n);
    free(n->cs);
    n->cs = NULL;
}
