/*
 * Shared-memory transport: segment set-up and tear-down.
 *
 * create is collective over the whole communicator. Every stage ends with
 * an allgather of each rank's status, so all ranks take the same branch:
 * nobody waits in a bootstrap call that a failed rank skipped.
 *   1. allgather pid, layout config, CMA mode and a probe word address;
 *   2. local rank 0 creates, sizes, NUMA-places and maps the segment;
 *      allgather statuses;
 *   3. the other local ranks map it and probe single copy on a neighbour;
 *      allgather statuses and probe results; local rank 0 unlinks the name
 *      (every local rank holds a mapping now), so a crash leaves nothing in
 *      /dev/shm.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "shm.h"

enum { CMA_AUTO = 0, CMA_ON = 1, CMA_OFF = 2 };

/* What every rank tells every other rank at stage 1. */
typedef struct {
    int32_t pid;
    int32_t cma_mode;
    uint64_t slots, slot_bytes, coll_bytes;
    uint64_t probe_addr, probe_word;
} shm_info_t;

/* Stage 3 result of one rank. */
typedef struct {
    int32_t status;
    int32_t cma_ok;
} shm_attach_t;

typedef struct {
    mox__comm_t *comm;
    mox__transport_t *tp; /* NULL when calloc failed */
    shm_info_t *info;     /* [comm->size] */
    char name[96];
    int created;          /* we created the name and must unlink it */
    mox_status_t init_st; /* local state could not be built */
} setup_t;

/* ------------------------------------------------------------------ */
/* Layout                                                               */

static uint64_t round_up(uint64_t v, uint64_t to)
{
    return (v + to - 1) / to * to;
}

size_t shm_chan_bytes(uint64_t slots, uint64_t slot_bytes)
{
    /* Page-rounded so channels never share a page (NUMA, false sharing). */
    return (size_t)round_up(sizeof(shm_chan_t) + slots * slot_bytes, 4096);
}

shm_chan_t *shm_chan_at(void *seg, uint64_t slots, uint64_t slot_bytes,
                        int local_size, int from, int to)
{
    size_t idx = (size_t)from * (size_t)(local_size - 1) +
                 (size_t)(to < from ? to : to - 1);
    return (shm_chan_t *)((char *)seg + SHM_SEG_HDR_BYTES +
                          idx * shm_chan_bytes(slots, slot_bytes));
}

size_t shm_coll_rank_bytes(uint64_t coll_slot_bytes)
{
    return (size_t)round_up(sizeof(shm_coll_ctl_t) +
                                MOX_COLL_SLOTS * coll_slot_bytes,
                            4096);
}

/* Start of the collective area: right after the last channel (channels
 * and the header are whole pages, so it is page aligned). */
static size_t coll_offset(int local_size, uint64_t slots, uint64_t slot_bytes)
{
    return SHM_SEG_HDR_BYTES + (size_t)local_size * (size_t)(local_size - 1) *
                                   shm_chan_bytes(slots, slot_bytes);
}

static mox_status_t segment_bytes(int local_size, uint64_t slots,
                                  uint64_t slot_bytes, uint64_t coll_slot_bytes,
                                  size_t *out)
{
    size_t chans, bytes, coll = 0;
    if (__builtin_mul_overflow((size_t)local_size, (size_t)(local_size - 1),
                               &chans) ||
        __builtin_mul_overflow(chans, shm_chan_bytes(slots, slot_bytes),
                               &bytes) ||
        (coll_slot_bytes &&
         __builtin_mul_overflow((size_t)local_size,
                                shm_coll_rank_bytes(coll_slot_bytes), &coll)) ||
        __builtin_add_overflow(bytes, coll, &bytes) ||
        __builtin_add_overflow(bytes, (size_t)SHM_SEG_HDR_BYTES, out))
        return MOX_ERR_OVERFLOW;
    return MOX_OK;
}

/* ------------------------------------------------------------------ */
/* Stage 2: the creator                                                 */

static void segment_name(const mox__comm_t *c, char *name, size_t len)
{
    char job[sizeof c->job_id];
    size_t i = 0;
    /* A '/' or odd byte in MOX_JOB_ID must not change which file we open. */
    for (; c->job_id[i] && i < sizeof job - 1; i++) {
        char ch = c->job_id[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                 (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
        job[i] = ok ? ch : '_';
    }
    job[i] = '\0';
    snprintf(name, len, "/mox-%s-%d", job, c->node);
}

/* Best effort: pages follow the creator's NUMA node, not whoever touches
 * them first; each rank's part of the collective area then follows its
 * owner's (init_peers). */
static void place_on_numa(void *seg, size_t bytes, int numa_node)
{
    unsigned long mask[16] = {0};
    if (numa_node < 0 || numa_node >= (int)(sizeof mask * 8))
        return;
    mask[numa_node / (8 * sizeof(unsigned long))] |=
        1UL << (numa_node % (8 * sizeof(unsigned long)));
    if (mbind(seg, bytes, MPOL_PREFERRED, mask, sizeof mask * 8, 0) != 0)
        MOX_DEBUG("shm", "mbind to NUMA node %d failed: %s (ignored)",
                  numa_node, strerror(errno));
}

static mox_status_t map_fd(mox__transport_t *tp, int fd, const char *name)
{
    void *seg = mmap(NULL, tp->seg_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                     fd, 0);
    if (seg == MAP_FAILED)
        return mox__fail(tp->comm, MOX_ERR_SYSTEM, "shm: mmap of %s (%zu "
                         "bytes) failed: %s", name, tp->seg_bytes,
                         strerror(errno));
    tp->seg = seg;
    return MOX_OK;
}

static mox_status_t create_segment(setup_t *s)
{
    mox__transport_t *tp = s->tp;
    int fd = shm_open(s->name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 && errno == EEXIST)
        return mox__fail(s->comm, MOX_ERR_SYSTEM, "shm: segment %s already "
                         "exists: left by an earlier job with the same job "
                         "id? remove /dev/shm%s", s->name, s->name);
    if (fd < 0)
        return mox__fail(s->comm, MOX_ERR_SYSTEM, "shm: shm_open(%s) "
                         "failed: %s", s->name, strerror(errno));
    s->created = 1;
    mox_status_t st = MOX_OK;
    if (ftruncate(fd, (off_t)tp->seg_bytes) != 0)
        st = mox__fail(s->comm, MOX_ERR_SYSTEM, "shm: sizing %s to %zu "
                       "bytes failed: %s", s->name, tp->seg_bytes,
                       strerror(errno));
    if (st == MOX_OK)
        st = map_fd(tp, fd, s->name);
    close(fd);
    if (st != MOX_OK)
        return st;
    place_on_numa(tp->seg, tp->seg_bytes, s->comm->numa_node);
    shm_seg_hdr_t h = {SHM_MAGIC, (uint64_t)tp->local_size, tp->slots,
                       tp->slot_bytes, tp->coll_slot_bytes, tp->seg_bytes};
    memcpy(tp->seg, &h, sizeof h);
    return MOX_OK;
}

/* ------------------------------------------------------------------ */
/* Stage 3: the others                                                  */

static mox_status_t open_segment(setup_t *s)
{
    mox__transport_t *tp = s->tp;
    int fd = shm_open(s->name, O_RDWR, 0);
    if (fd < 0)
        return mox__fail(s->comm, MOX_ERR_SYSTEM, "shm: opening %s failed: "
                         "%s", s->name, strerror(errno));
    struct stat sb;
    mox_status_t st = MOX_OK;
    if (fstat(fd, &sb) != 0 || (uint64_t)sb.st_size != tp->seg_bytes)
        st = mox__fail(s->comm, MOX_ERR_PROTOCOL, "shm: %s has %lld bytes, "
                       "expected %zu", s->name, (long long)sb.st_size,
                       tp->seg_bytes);
    if (st == MOX_OK)
        st = map_fd(tp, fd, s->name);
    close(fd);
    if (st != MOX_OK)
        return st;
    shm_seg_hdr_t want = {SHM_MAGIC, (uint64_t)tp->local_size, tp->slots,
                          tp->slot_bytes, tp->coll_slot_bytes, tp->seg_bytes};
    if (memcmp(tp->seg, &want, sizeof want) != 0)
        return mox__fail(s->comm, MOX_ERR_PROTOCOL, "shm: %s has another "
                         "layout than this rank computed", s->name);
    return MOX_OK;
}

/* Can we read the next local rank's memory? Its probe word came through
 * the bootstrap, so a wrong value means the read went astray. */
static int probe_cma(setup_t *s)
{
    mox__comm_t *c = s->comm;
    int nb = mox__topo_rank_at(&c->topo, c->node,
                               (c->local_rank + 1) % c->local_size);
    const shm_info_t *in = &s->info[nb];
    uint64_t got = 0;
    struct iovec local = {&got, sizeof got};
    struct iovec remote = {(void *)(uintptr_t)in->probe_addr, sizeof got};
    ssize_t n = process_vm_readv(in->pid, &local, 1, &remote, 1, 0);
    if (n == (ssize_t)sizeof got && got == in->probe_word)
        return 1;
    MOX_DEBUG("shm", "single-copy probe of rank %d failed: %s", nb,
              n < 0 ? strerror(errno) : "wrong value");
    return 0;
}

/* ------------------------------------------------------------------ */
/* Agreement                                                            */

/* The bootstrap clears its error buffer on success, so it must not write
 * into last_error, which may already explain our own failure. */
static mox_status_t allgather(mox__comm_t *c, const void *mine, void *all,
                              size_t bytes)
{
    char err[256];
    mox_status_t st = mox__boot_allgather(c->boot, mine, all, bytes, err,
                                          sizeof err);
    if (st != MOX_OK)
        mox__fail(c, st, "shm: bootstrap allgather failed: %s", err);
    return st;
}

static mox_status_t gather_status(setup_t *s, mox_status_t mine,
                                  int32_t *all)
{
    mox__comm_t *c = s->comm;
    int32_t v = mine;
    mox_status_t st = allgather(c, &v, all, sizeof v);
    if (st != MOX_OK)
        return st;
    for (int r = 0; r < c->size; r++)
        if (all[r] != MOX_OK) {
            if (mine == MOX_OK)
                mox__fail(c, (mox_status_t)all[r], "shm: set-up failed on "
                          "rank %d: %s", r,
                          mox_strerror((mox_status_t)all[r]));
            return (mox_status_t)all[r];
        }
    return MOX_OK;
}

/* All ranks of this node must compute the same layout. */
static mox_status_t check_node_config(setup_t *s)
{
    mox__comm_t *c = s->comm;
    const shm_info_t *me = &s->info[c->rank];
    for (int l = 0; l < c->local_size; l++) {
        int r = mox__topo_rank_at(&c->topo, c->node, l);
        const shm_info_t *o = &s->info[r];
        if (o->slots != me->slots || o->slot_bytes != me->slot_bytes ||
            o->cma_mode != me->cma_mode)
            return mox__fail(c, MOX_ERR_CONFIG, "shm: rank %d and rank %d "
                             "disagree on MOX_SHM_SLOTS, MOX_SHM_SLOT_SIZE "
                             "or MOX_SHM_CMA", c->rank, r);
        /* Also decides which algorithm small collectives take. */
        if (o->coll_bytes != me->coll_bytes)
            return mox__fail(c, MOX_ERR_CONFIG, "shm: rank %d and rank %d "
                             "disagree on MOX_SHM_SMALL (%llu and %llu)",
                             c->rank, r, (unsigned long long)me->coll_bytes,
                             (unsigned long long)o->coll_bytes);
    }
    return MOX_OK;
}

/* Single copy for a node when no rank disabled it and every probe worked;
 * MOX_SHM_CMA=on turns a failed probe into an error on every rank. */
static mox_status_t decide_cma(setup_t *s, const shm_attach_t *att)
{
    mox__comm_t *c = s->comm;
    for (int n = 0; n < c->topo.num_nodes; n++) {
        int ok = 1, mode = CMA_AUTO;
        for (int l = 0; l < mox__topo_local_size(&c->topo, n); l++) {
            int r = mox__topo_rank_at(&c->topo, n, l);
            ok &= att[r].cma_ok;
            mode = s->info[r].cma_mode;
        }
        if (mode == CMA_ON && !ok && mox__topo_local_size(&c->topo, n) > 1)
            return mox__fail(c, MOX_ERR_TRANSPORT, "shm: MOX_SHM_CMA=on but "
                             "process_vm_readv does not work between the "
                             "ranks of node %d (ptrace restrictions?)", n);
        if (n == c->node && s->tp)
            s->tp->cma = ok && mode != CMA_OFF;
    }
    return MOX_OK;
}

/* ------------------------------------------------------------------ */
/* create / destroy                                                     */

/* Shared memory the collective area may take per node: with many local
 * ranks MOX_SHM_SMALL shrinks to fit (2 slots per rank). */
#define SHM_COLL_BUDGET ((uint64_t)32 << 20)

static mox_status_t init_state(setup_t *s)
{
    mox__comm_t *c = s->comm;
    uint64_t cap = SHM_COLL_BUDGET / (2 * (uint64_t)c->local_size) &
                   ~(uint64_t)4095;
    if ((uint64_t)c->cfg.shm_small > cap) {
        MOX_DEBUG("shm", "MOX_SHM_SMALL %lld capped to %llu bytes for %d "
                  "local ranks", (long long)c->cfg.shm_small,
                  (unsigned long long)cap, c->local_size);
        c->cfg.shm_small = (int64_t)cap;
    }
    mox__transport_t *tp = calloc(1, sizeof *tp);
    if (tp) {
        tp->peers = calloc((size_t)c->local_size, sizeof *tp->peers);
        tp->coll = c->cfg.shm_small
                       ? calloc((size_t)c->local_size, sizeof *tp->coll)
                       : NULL;
    }
    if (!tp || !tp->peers || (c->cfg.shm_small && !tp->coll)) {
        if (tp) {
            free(tp->peers);
            free(tp->coll);
        }
        free(tp);
        return mox__fail(c, MOX_ERR_NO_MEMORY, "shm: no memory for state");
    }
    tp->comm = c;
    tp->local_rank = c->local_rank;
    tp->local_size = c->local_size;
    tp->slots = (uint64_t)c->cfg.shm_slots;
    /* Slots start cache-line aligned whatever size was asked for. */
    tp->slot_bytes = round_up((uint64_t)c->cfg.shm_slot_bytes, SHM_CACHE_LINE);
    tp->cma_threshold = (uint64_t)c->cfg.shm_cma_threshold;
    /* Room for MOX_SHM_SMALL bytes of data plus a block-sparse bitmap
     * (1/64 of it: blocks of 8 bytes and more). */
    if (c->cfg.shm_small)
        tp->coll_slot_bytes = MOX_COLL_HDR_BYTES +
                              round_up((uint64_t)c->cfg.shm_small +
                                           (uint64_t)c->cfg.shm_small / 64,
                                       SHM_CACHE_LINE);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    tp->probe_word = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^
                     SHM_MAGIC;
    s->tp = tp;
    return segment_bytes(c->local_size, tp->slots, tp->slot_bytes,
                         tp->coll_slot_bytes, &tp->seg_bytes) == MOX_OK
               ? MOX_OK
               : mox__fail(c, MOX_ERR_OVERFLOW, "shm: segment for %d ranks "
                           "of %llu x %llu-byte slots overflows",
                           c->local_size, (unsigned long long)tp->slots,
                           (unsigned long long)tp->slot_bytes);
}

static void my_info(setup_t *s, shm_info_t *me)
{
    mox__comm_t *c = s->comm;
    memset(me, 0, sizeof *me);
    me->pid = (int32_t)getpid();
    me->cma_mode = (int32_t)c->cfg.shm_cma;
    me->slots = (uint64_t)c->cfg.shm_slots;
    me->slot_bytes = (uint64_t)c->cfg.shm_slot_bytes;
    me->coll_bytes = (uint64_t)c->cfg.shm_small;
    if (s->tp) {
        me->probe_addr = (uint64_t)(uintptr_t)&s->tp->probe_word;
        me->probe_word = s->tp->probe_word;
    }
}

static void init_peers(setup_t *s)
{
    mox__comm_t *c = s->comm;
    mox__transport_t *tp = s->tp;
    for (int l = 0; l < tp->local_size; l++) {
        shm_peer_t *p = &tp->peers[l];
        p->rank = mox__topo_rank_at(&c->topo, c->node, l);
        p->pid = (pid_t)s->info[p->rank].pid;
        if (l == tp->local_rank)
            continue;
        p->out = shm_chan_at(tp->seg, tp->slots, tp->slot_bytes,
                             tp->local_size, tp->local_rank, l);
        p->in = shm_chan_at(tp->seg, tp->slots, tp->slot_bytes,
                            tp->local_size, l, tp->local_rank);
    }
    if (!tp->coll)
        return;
    char *area = (char *)tp->seg +
                 coll_offset(tp->local_size, tp->slots, tp->slot_bytes);
    size_t part = shm_coll_rank_bytes(tp->coll_slot_bytes);
    for (int l = 0; l < tp->local_size; l++) {
        shm_coll_ctl_t *ctl = (shm_coll_ctl_t *)(area + (size_t)l * part);
        mox__coll_slot_t *cs = &tp->coll[l];
        cs->written = &ctl->written;
        cs->read = &ctl->read;
        cs->failed = &ctl->failed;
        cs->failed_code = &ctl->failed_code;
        cs->bell = &ctl->bell;
        cs->sleepers = &ctl->sleepers;
        for (int k = 0; k < MOX_COLL_SLOTS; k++)
            cs->slot[k] = ctl->slots + (size_t)k * tp->coll_slot_bytes;
        cs->slot_bytes = (size_t)tp->coll_slot_bytes;
        /* Its owner writes every byte of it and the others read them:
         * on the owner's NUMA node (before anyone touches it: the first
         * collective comes after creation). */
        if (l == tp->local_rank)
            place_on_numa(ctl, part, c->numa_node);
    }
}

static void unlink_name(setup_t *s)
{
    if (s->created && shm_unlink(s->name) != 0)
        MOX_WARN("shm", "shm_unlink(%s) failed: %s", s->name,
                 strerror(errno));
    s->created = 0;
}

/* Stages 2 and 3; each rank's result is gathered even when it failed. */
static mox_status_t attach(setup_t *s, int32_t *statuses)
{
    mox__comm_t *c = s->comm;
    int alone = c->local_size < 2;
    mox_status_t st = s->init_st;
    if (st == MOX_OK && !alone)
        st = check_node_config(s);
    if (st == MOX_OK && !alone && c->local_rank == 0)
        st = create_segment(s);
    st = gather_status(s, st, statuses);
    if (st != MOX_OK) {
        unlink_name(s);
        return st;
    }
    shm_attach_t mine = {MOX_OK, 1};
    if (!alone && c->local_rank != 0)
        mine.status = open_segment(s);
    if (!alone)
        mine.cma_ok = c->cfg.shm_cma != CMA_OFF && probe_cma(s);
    shm_attach_t *all = calloc((size_t)c->size, sizeof *all);
    st = all ? allgather(c, &mine, all, sizeof mine) : MOX_ERR_NO_MEMORY;
    unlink_name(s); /* everyone who will ever map it has done so */
    for (int r = 0; st == MOX_OK && r < c->size; r++)
        if (all[r].status != MOX_OK)
            st = r == c->rank ? (mox_status_t)all[r].status
                              : mox__fail(c, (mox_status_t)all[r].status,
                                          "shm: rank %d could not map its "
                                          "node's segment", r);
    if (st == MOX_OK)
        st = decide_cma(s, all);
    free(all);
    return st;
}

void shm_destroy(mox__transport_t *tp)
{
    if (!tp)
        return;
    for (int l = 0; l < tp->local_size; l++)
        if (l != tp->local_rank)
            shm_peer_fail(&tp->peers[l], MOX_ERR_TIMEOUT);
    if (tp->seg)
        munmap(tp->seg, tp->seg_bytes);
    free(tp->peers);
    free(tp->coll);
    free(tp);
}

mox_status_t shm_create(mox__comm_t *comm, mox__transport_t **out)
{
    *out = NULL;
    setup_t s = {.comm = comm};
    segment_name(comm, s.name, sizeof s.name);
    s.info = calloc((size_t)comm->size, sizeof *s.info);
    int32_t *statuses = calloc((size_t)comm->size, sizeof *statuses);
    if (!s.info || !statuses) {
        free(s.info);
        free(statuses);
        return mox__fail(comm, MOX_ERR_NO_MEMORY, "shm: no memory");
    }
    s.init_st = init_state(&s); /* a failure travels with stage 2 */
    shm_info_t me;
    my_info(&s, &me);
    mox_status_t st = allgather(comm, &me, s.info, sizeof me);
    if (st == MOX_OK)
        st = attach(&s, statuses);
    if (st == MOX_OK && comm->local_size > 1) {
        init_peers(&s);
        MOX_DEBUG("shm", "%s: %d local ranks, %llu slots of %llu bytes, "
                  "collective slots of %llu bytes, %zu bytes, single copy "
                  "%s", s.name, comm->local_size,
                  (unsigned long long)s.tp->slots,
                  (unsigned long long)s.tp->slot_bytes,
                  (unsigned long long)s.tp->coll_slot_bytes, s.tp->seg_bytes,
                  s.tp->cma ? "on" : "off");
        *out = s.tp;
        s.tp = NULL;
    }
    shm_destroy(s.tp); /* unused: failed, or alone on the node */
    free(s.info);
    free(statuses);
    return st;
}
