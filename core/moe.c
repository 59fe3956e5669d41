/* MoE dispatch/combine: handle, configuration checks, routing, API. */
#include "moe.h"
#include "wire.h"
#include "a2a_plan.h"
#include "dtype.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void *mox__buf_reserve(mox__buf_t *b, size_t bytes)
{
    if (bytes <= b->cap && b->p)
        return b->p;
    /* Grow by half again, so a slowly growing batch does not realloc on
     * every call. */
    size_t cap = bytes + bytes / 2 + 64;
    void *p = realloc(b->p, cap);
    if (!p)
        return NULL;
    b->p = p;
    b->cap = cap;
    return p;
}

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

int mox__moe_forwarder_for(const struct mox_moe *m, int s)
{
    return mox__a2a_aggregator(&m->comm->topo, m->comm->node, s);
}

static mox_status_t check_config(mox__comm_t *c, const mox_moe_config_t *g)
{
    const char *bad = NULL;
    if (g->num_experts < 1 || g->num_experts % c->size)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe: num_experts %d is not "
                         "a positive multiple of the %d ranks",
                         g->num_experts, c->size);
    if (g->hidden < 1)
        bad = "hidden must be >= 1";
    else if (g->topk < 1 || g->topk > 1024)
        bad = "topk must be in 1..1024";
    else if (g->x_dtype != MOX_DTYPE_F32 && g->x_dtype != MOX_DTYPE_BF16 &&
             g->x_dtype != MOX_DTYPE_F16)
        bad = "x_dtype must be MOX_DTYPE_F32, BF16 or F16";
    else if (g->idx_dtype != MOX_DTYPE_I32 && g->idx_dtype != MOX_DTYPE_I64)
        bad = "idx_dtype must be MOX_DTYPE_I32 or I64";
    else if (g->expert_alignment < 0)
        bad = "expert_alignment must be >= 0";
    else if (g->dispatch_wire < -1 || g->dispatch_wire > MOX_MOE_WIRE_FP8)
        bad = "dispatch_wire must be DEFAULT, NATIVE, BF16 or FP8";
    else if (g->combine_wire != MOX_MOE_WIRE_DEFAULT &&
             g->combine_wire != MOX_MOE_WIRE_F32 &&
             g->combine_wire != MOX_MOE_WIRE_BF16)
        bad = "combine_wire must be DEFAULT, F32 or BF16";
    else if (g->algo < -1 || g->algo > MOX_MOE_ALGO_ALLGATHER)
        bad = "algo must be a mox_moe_algo_t";
    if (bad)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe: %s", bad);
    return MOX_OK;
}

/* Fill sizes and resolved choices from the checked configuration. */
static void resolve(struct mox_moe *m, const mox_moe_config_t *g)
{
    mox__comm_t *c = m->comm;
    static const int wire_of[] = {MOX_MOE_WIRE_NATIVE, MOX_MOE_WIRE_BF16,
                                  MOX_MOE_WIRE_FP8};
    static const int algo_of[] = {MOX_MOE_ALGO_AUTO, MOX_MOE_ALGO_DEDUP,
                                  MOX_MOE_ALGO_ALLTOALLV,
                                  MOX_MOE_ALGO_ALLGATHER};
    m->cfg = *g;
    m->cfg.struct_size = sizeof m->cfg;
    if (m->cfg.dispatch_wire == MOX_MOE_WIRE_DEFAULT)
        m->cfg.dispatch_wire = wire_of[c->cfg.moe_wire];
    if (m->cfg.combine_wire == MOX_MOE_WIRE_DEFAULT)
        m->cfg.combine_wire = c->cfg.moe_combine_wire ? MOX_MOE_WIRE_BF16
                                                      : MOX_MOE_WIRE_F32;
    if (m->cfg.algo == MOX_MOE_ALGO_DEFAULT)
        m->cfg.algo = algo_of[c->cfg.moe_algo];
    if (m->cfg.algo == MOX_MOE_ALGO_AUTO) {
        m->cfg.algo = c->topo.num_nodes > 1 ? MOX_MOE_ALGO_DEDUP
                                            : MOX_MOE_ALGO_ALLTOALLV;
        MOX_DEBUG("moe", "auto picked %s (%d nodes)",
                  m->cfg.algo == MOX_MOE_ALGO_DEDUP ? "dedup" : "alltoallv",
                  c->topo.num_nodes);
    }
    if (m->cfg.expert_alignment < 1)
        m->cfg.expert_alignment = 1;
    m->P = c->size;
    m->E = g->num_experts;
    m->E_local = g->num_experts / c->size;
    m->H = g->hidden;
    m->k = g->topk;
    m->forward = m->cfg.algo == MOX_MOE_ALGO_DEDUP;
    m->broadcast = m->cfg.algo == MOX_MOE_ALGO_ALLGATHER;
    m->x_elem = mox__dtype_size(g->x_dtype);
    m->idx_elem = mox__dtype_size(g->idx_dtype);
    m->meta_bytes = align8(4 + 8 * (size_t)m->k);
    switch (m->cfg.dispatch_wire) {
    case MOX_MOE_WIRE_BF16: m->hid_bytes = 2 * (size_t)m->H; break;
    case MOX_MOE_WIRE_FP8: m->hid_bytes = mox__fp8_bytes((size_t)m->H); break;
    default: m->hid_bytes = m->x_elem * (size_t)m->H; break;
    }
    m->rec_bytes = align8(m->meta_bytes + m->hid_bytes);
    m->comb_elem = m->cfg.combine_wire == MOX_MOE_WIRE_BF16 ? 2 : 4;
    m->notify_bytes = MOX_MOE_NOTIFY_FIXED + 8 * (size_t)m->E_local;
    int32_t f[] = {m->E, m->H, m->k, g->x_dtype, g->idx_dtype,
                   m->cfg.dispatch_wire, m->cfg.combine_wire, m->cfg.algo,
                   m->cfg.expert_alignment,
                   (int32_t)(m->comm->cfg.moe_chunk_bytes >> 32),
                   (int32_t)m->comm->cfg.moe_chunk_bytes};
    m->fingerprint = mox__fnv64(MOX_FNV64_INIT, f, sizeof f);
}

/* Every rank sends its resolved configuration to every rank; the first
 * difference is named. */
static mox_status_t agree(struct mox_moe *m)
{
    mox__comm_t *c = m->comm;
    int32_t mine[9] = {m->E, m->H, m->k, m->cfg.x_dtype, m->cfg.idx_dtype,
                       m->cfg.dispatch_wire, m->cfg.combine_wire, m->cfg.algo,
                       m->cfg.expert_alignment};
    static const char *const names[9] = {
        "num_experts", "hidden", "topk", "x_dtype", "idx_dtype",
        "dispatch_wire", "combine_wire", "algo", "expert_alignment"};
    int32_t *all_in = malloc((size_t)c->size * sizeof mine);
    int32_t *all_out = malloc((size_t)c->size * sizeof mine);
    if (!all_in || !all_out) {
        free(all_in);
        free(all_out);
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory");
    }
    for (int r = 0; r < c->size; r++)
        memcpy(all_out + 9 * r, mine, sizeof mine);
    mox_status_t st = mox_alltoall(c, all_out, all_in, 9, sizeof(int32_t));
    for (int r = 0; r < c->size && st == MOX_OK; r++)
        for (int i = 0; i < 9; i++)
            if (all_in[9 * r + i] != mine[i]) {
                st = mox__fail(c, MOX_ERR_MISMATCH, "moe: rank %d has %s = %d, "
                               "rank %d has %d", r, names[i],
                               all_in[9 * r + i], c->rank, mine[i]);
                break;
            }
    free(all_in);
    free(all_out);
    return st;
}

mox_status_t mox_moe_create(mox_comm_t c, const mox_moe_config_t *g,
                            mox_moe_t *out)
{
    if (!c)
        return MOX_ERR_INVALID_ARG;
    if (!out || !g)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe: config or handle "
                         "pointer is NULL");
    *out = NULL;
    if (g->struct_size < sizeof *g)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe: config->struct_size "
                         "%zu is smaller than %zu", g->struct_size,
                         sizeof *g);
    mox_status_t st = check_config(c, g);
    if (st != MOX_OK)
        return st;
    struct mox_moe *m = calloc(1, sizeof *m);
    if (!m)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory");
    m->comm = c;
    m->id = c->moe_created++;
    /* MOX_TEST_COMBINE_MESSAGES (tests only): as if shared memory could
     * not be had, so combine takes the message path. Read once here, not
     * on every combine. */
    m->cbuf_failed = getenv("MOX_TEST_COMBINE_MESSAGES") != NULL;
    /* MOX_TEST_BAD_NOTE=R (tests only): rank R tells local ranks that
     * read its rows in place an offset past its buffer, as a corrupt peer
     * would; they must fail with MOX_ERR_PROTOCOL and R must not hang. */
    const char *bad_note = getenv("MOX_TEST_BAD_NOTE");
    m->test_bad_note = bad_note ? atoi(bad_note) : -1;
    /* MOX_TEST_SHORT_BACK=R (tests only): rank R, as a forwarder, sends
     * its first chunk of summed rows back one row short; the source must
     * fail with MOX_ERR_PROTOCOL, not sum what is not there. */
    const char *short_back = getenv("MOX_TEST_SHORT_BACK");
    m->test_short_back = short_back ? atoi(short_back) : -1;
    resolve(m, g);
    st = agree(m);
    if (st != MOX_OK) {
        mox_moe_destroy(m);
        return st;
    }
    *out = m;
    return MOX_OK;
}

/* ---- shared receive buffers ------------------------------------------- */

/* kind "" (receive buffers) or "c" (combine areas). */
static void shmbuf_name(const struct mox_moe *m, const char *kind, int rank,
                        uint64_t gen, char *name, size_t len)
{
    char job[sizeof m->comm->job_id];
    size_t i = 0;
    for (; m->comm->job_id[i] && i < sizeof job - 1; i++) {
        char ch = m->comm->job_id[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                 (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
        job[i] = ok ? ch : '_';
    }
    job[i] = '\0';
    snprintf(name, len, "/mox-%s-m%u-%s%d-%llu", job, m->id, kind, rank,
             (unsigned long long)gen);
}

static void shmbuf_drop(struct mox_moe *m, const char *kind, mox__shmbuf_t *b,
                        int owner_rank)
{
    if (b->p)
        munmap(b->p, b->bytes);
    if (b->p && owner_rank >= 0) {
        char name[160];
        shmbuf_name(m, kind, owner_rank, b->gen, name, sizeof name);
        shm_unlink(name);
    }
    b->p = NULL;
    b->bytes = 0;
}

/* Replace b by a new generation of `bytes` (whole pages). */
static mox_status_t shmbuf_create(struct mox_moe *m, const char *kind,
                                  mox__shmbuf_t *b, size_t bytes,
                                  const char *what)
{
    mox__comm_t *c = m->comm;
    bytes = (bytes + 4095) & ~(size_t)4095;
    shmbuf_drop(m, kind, b, c->rank);
    uint64_t gen = b->gen + 1;
    char name[160];
    shmbuf_name(m, kind, c->rank, gen, name, sizeof name);
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 && errno == EEXIST) { /* a crashed run's leftover */
        shm_unlink(name);
        fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    }
    if (fd < 0)
        return mox__fail(c, MOX_ERR_SYSTEM, "%s: shm_open(%s): %s", what,
                         name, strerror(errno));
    /* posix_fallocate reserves the pages now: a full /dev/shm (containers
     * often give it 64 MiB) is an error here, not a SIGBUS on first
     * touch. */
    void *p = MAP_FAILED;
    int err = posix_fallocate(fd, 0, (off_t)bytes);
    if (err == 0)
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (err == 0 && p == MAP_FAILED)
        err = errno;
    close(fd);
    if (p == MAP_FAILED) {
        shm_unlink(name);
        return mox__fail(c, MOX_ERR_SYSTEM, "%s: %zu bytes of shared memory "
                         "(%s): %s", what, bytes, name, strerror(err));
    }
    *b = (mox__shmbuf_t){p, bytes, gen};
    MOX_DEBUG("moe", "%s %s: %zu bytes", what, name, bytes);
    return MOX_OK;
}

mox_status_t mox_moe_recv_buffer(mox_moe_t m, uint64_t rows, void **recv_x)
{
    if (!m)
        return MOX_ERR_INVALID_ARG;
    mox__comm_t *c = m->comm;
    if (!recv_x)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe_recv_buffer: recv_x "
                         "pointer is NULL");
    size_t row = (size_t)m->H * m->x_elem;
    if (!rows || rows > (SIZE_MAX / 2) / row)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe_recv_buffer: %llu rows "
                         "of %zu bytes", (unsigned long long)rows, row);
    size_t bytes = (size_t)rows * row;
    if (m->rbuf.p && bytes <= m->rbuf.bytes) {
        *recv_x = m->rbuf.p;
        return MOX_OK;
    }
    /* Growth by half again, as mox__buf_reserve. */
    if (m->rbuf.p)
        bytes += bytes / 2;
    mox_status_t st = shmbuf_create(m, "", &m->rbuf, bytes,
                                    "moe_recv_buffer");
    if (st == MOX_OK)
        *recv_x = m->rbuf.p;
    return st;
}

char *mox__moe_comb_area(struct mox_moe *m, size_t bytes)
{
    if (m->cbuf.p && bytes <= m->cbuf.bytes)
        return m->cbuf.p;
    if (m->cbuf_failed)
        return NULL;
    /* Exact the first time: the pages are reserved (posix_fallocate), so
     * headroom would cost memory on every rank for batches that may never
     * come. Growth by half again, as mox__buf_reserve. */
    if (m->cbuf.p)
        bytes += bytes / 2;
    if (shmbuf_create(m, "c", &m->cbuf, bytes, "moe combine area") !=
        MOX_OK) {
        m->cbuf_failed = 1; /* messages then; the error is only logged */
        MOX_DEBUG("moe", "no shared combine area: %s",
                  mox_comm_last_error(m->comm));
        return NULL;
    }
    return m->cbuf.p;
}

mox_status_t mox__moe_map_peer(struct mox_moe *m, int kind, int rank,
                               uint64_t gen, size_t bytes, char **base)
{
    mox__comm_t *c = m->comm;
    int l = c->topo.local_of[rank];
    mox__shmbuf_t **arr = kind ? &m->peer_cbuf : &m->peer_rbuf;
    const char *k = kind ? "c" : "";
    if (!*arr) {
        *arr = calloc((size_t)c->local_size, sizeof **arr);
        if (!*arr)
            return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory");
    }
    mox__shmbuf_t *b = &(*arr)[l];
    if (b->p && b->gen == gen && b->bytes == bytes) {
        *base = b->p;
        return MOX_OK;
    }
    shmbuf_drop(m, k, b, -1);
    char name[160];
    shmbuf_name(m, k, rank, gen, name, sizeof name);
    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0 && errno == ENOENT) /* its owner unlinked it: gave up */
        return mox__fail(c, MOX_ERR_PEER, "moe: rank %d's shared buffer %s "
                         "is gone: rank %d failed or left the operation",
                         rank, name, rank);
    if (fd < 0)
        return mox__fail(c, MOX_ERR_SYSTEM, "moe: rank %d's shared buffer "
                         "%s: %s", rank, name, strerror(errno));
    struct stat st;
    void *p = MAP_FAILED;
    if (fstat(fd, &st) == 0 && (size_t)st.st_size >= bytes)
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    else
        errno = EINVAL;
    int err = errno;
    close(fd);
    if (p == MAP_FAILED)
        return mox__fail(c, MOX_ERR_SYSTEM, "moe: mapping rank %d's shared "
                         "buffer %s (%zu bytes): %s", rank, name, bytes,
                         strerror(err));
    *b = (mox__shmbuf_t){p, bytes, gen};
    *base = p;
    return MOX_OK;
}

mox_status_t mox__moe_check_place(mox__comm_t *c, const mox__treq_t *r,
                                  const mox__place_t *p, uint64_t seq,
                                  uint64_t rows, size_t row_bytes,
                                  const char *what)
{
    mox_status_t st = mox__treq_check(c, r, what);
    if (st != MOX_OK)
        return st;
    if (r->bytes == sizeof *p && p->magic == MOX_PLACE_MAGIC &&
        p->seq == seq && p->rows == rows &&
        (!p->use || (p->row_off <= p->bytes / row_bytes &&
                     p->rows <= p->bytes / row_bytes - p->row_off)))
        return MOX_OK;
    return mox__fail(c, MOX_ERR_PROTOCOL, "%s: malformed place message from "
                     "rank %d (%zu bytes, %llu rows at row %llu of a "
                     "%llu-byte buffer; %llu rows expected)", what, r->peer,
                     r->bytes, (unsigned long long)p->rows,
                     (unsigned long long)p->row_off,
                     (unsigned long long)p->bytes, (unsigned long long)rows);
}

void mox_moe_destroy(mox_moe_t m)
{
    if (!m)
        return;
    shmbuf_drop(m, "", &m->rbuf, m->comm->rank);
    shmbuf_drop(m, "c", &m->cbuf, m->comm->rank);
    for (int l = 0; l < m->comm->local_size; l++) {
        if (m->peer_rbuf)
            shmbuf_drop(m, "", &m->peer_rbuf[l], -1);
        if (m->peer_cbuf)
            shmbuf_drop(m, "c", &m->peer_cbuf[l], -1);
    }
    free(m->peer_rbuf);
    free(m->peer_cbuf);
    mox__buf_t *bufs[] = {&m->route_mem, &m->hopout,   &m->hopin,
                          &m->fwdout,    &m->fwdin,    &m->fwdrec,
                          &m->fwdiov,    &m->hidscratch, &m->notify,
                          &m->comb_send, &m->comb_recv, &m->comb_accum,
                          &m->comb_part, &m->hopiov, &m->recfirst, &m->urow};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]->p);
    free(m->hop_in); /* the per-peer arrays, one allocation */
    free(m);
}

/* Check token t's ids; fills its distinct owner ranks, ascending. */
static mox_status_t token_dests(const struct mox_moe *m, const void *idx,
                                int64_t t, int32_t *dest, int32_t *ndest,
                                int *bad_slot, int64_t *bad_value,
                                const char **why)
{
    int n = 0;
    for (int j = 0; j < m->k; j++) {
        int64_t e = mox__moe_expert(m, idx, t, j);
        if (e == -1)
            continue;
        if (e < -1 || e >= m->E) {
            *bad_slot = j;
            *bad_value = e;
            *why = "is out of range";
            return MOX_ERR_INVALID_ARG;
        }
        for (int i = 0; i < j; i++)
            if (mox__moe_expert(m, idx, t, i) == e) {
                *bad_slot = j;
                *bad_value = e;
                *why = "repeats an expert of the same token";
                return MOX_ERR_INVALID_ARG;
            }
        int32_t owner = (int32_t)(e / m->E_local);
        int pos = 0;
        while (pos < n && dest[pos] < owner)
            pos++;
        if (pos < n && dest[pos] == owner)
            continue;
        memmove(dest + pos + 1, dest + pos, (size_t)(n - pos) * sizeof *dest);
        dest[pos] = owner;
        n++;
    }
    *ndest = n;
    return MOX_OK;
}

/* The ranks token t is sent to (first hop), ascending, into hops[]. */
static int token_hops(const struct mox_moe *m, const int32_t *dest, int ndest,
                      int32_t *hops)
{
    const mox__comm_t *c = m->comm;
    if (m->broadcast) {
        if (ndest == 0)
            return 0;
        for (int r = 0; r < m->P; r++)
            hops[r] = r;
        return m->P;
    }
    int n = 0;
    for (int i = 0; i < ndest; i++) {
        int32_t h = dest[i];
        if (m->forward && c->topo.node_of[h] != c->node)
            h = mox__a2a_aggregator(&c->topo, c->topo.node_of[h], c->rank);
        int seen = 0;
        for (int j = 0; j < n && !seen; j++)
            seen = hops[j] == h;
        if (!seen)
            hops[n++] = h;
    }
    /* Hops of one remote node coincide; keep the list sorted for order. */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && hops[j - 1] > hops[j]; j--) {
            int32_t tmp = hops[j];
            hops[j] = hops[j - 1];
            hops[j - 1] = tmp;
        }
    return n;
}

/* Lay out every routing array in one reused allocation. */
static mox_status_t route_alloc(struct mox_moe *m, int64_t T)
{
    size_t P = (size_t)m->P, k = (size_t)m->k, t = (size_t)T;
    size_t hop_items = t * (m->broadcast ? P : k);
    size_t bytes = t * sizeof(int32_t) + t * k * sizeof(int32_t) +
                   2 * (P + 1) * sizeof(uint64_t) + hop_items * sizeof(int32_t) +
                   t * k * sizeof(int32_t) + P * sizeof(uint64_t) + 64;
    char *p = mox__buf_reserve(&m->route_mem, bytes);
    if (!p)
        return mox__fail(m->comm, MOX_ERR_NO_MEMORY, "moe: no memory to route "
                         "%lld tokens", (long long)T);
    m->hop.off = (uint64_t *)p;
    m->direct.off = m->hop.off + P + 1;
    m->final_out = m->direct.off + P + 1;
    m->tok_ndest = (int32_t *)(m->final_out + P);
    m->tok_dest = m->tok_ndest + t;
    m->hop.item = m->tok_dest + t * k;
    m->direct.item = m->hop.item + hop_items;
    return MOX_OK;
}

mox_status_t mox__moe_route(struct mox_moe *m, const mox_moe_input_t *in,
                            int64_t *bad_token, int *bad_slot,
                            int64_t *bad_value)
{
    mox__comm_t *c = m->comm;
    int64_t T = in->num_tokens;
    mox_status_t st = route_alloc(m, T);
    if (st != MOX_OK)
        return st;
    size_t P = (size_t)m->P, k = (size_t)m->k;
    int32_t *hops = malloc((P > k ? P : k) * sizeof *hops);
    if (!hops)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory");
    memset(m->hop.off, 0, 2 * (P + 1) * sizeof(uint64_t) + P * sizeof(uint64_t));
    /* Pass 1: check ids, find D(t), count per hop and per direct rank. */
    for (int64_t t = 0; t < T && st == MOX_OK; t++) {
        const char *why = "";
        int32_t *dest = m->tok_dest + (size_t)t * k;
        st = token_dests(m, in->topk_idx, t, dest, &m->tok_ndest[t], bad_slot,
                         bad_value, &why);
        if (st != MOX_OK) {
            *bad_token = t;
            st = mox__fail(c, MOX_ERR_INVALID_ARG, "moe: rank %d token %lld "
                           "slot %d: expert %lld %s (num_experts %d)", c->rank,
                           (long long)t, *bad_slot, (long long)*bad_value, why,
                           m->E);
            break;
        }
        int n = token_hops(m, dest, m->tok_ndest[t], hops);
        for (int i = 0; i < n; i++)
            m->hop.off[hops[i] + 1]++;
        for (int i = 0; i < m->tok_ndest[t]; i++) {
            m->final_out[dest[i]]++;
            if (!m->forward || c->topo.node_of[dest[i]] == c->node)
                m->direct.off[dest[i] + 1]++;
        }
    }
    if (st == MOX_OK) {
        for (size_t r = 0; r < P; r++) {
            m->hop.off[r + 1] += m->hop.off[r];
            m->direct.off[r + 1] += m->direct.off[r];
        }
        /* Pass 2: fill the lists in token order. */
        uint64_t *hfill = calloc(2 * P, sizeof *hfill);
        if (!hfill) {
            free(hops);
            return mox__fail(c, MOX_ERR_NO_MEMORY, "moe: no memory");
        }
        uint64_t *dfill = hfill + P;
        for (int64_t t = 0; t < T; t++) {
            const int32_t *dest = m->tok_dest + (size_t)t * k;
            int n = token_hops(m, dest, m->tok_ndest[t], hops);
            for (int i = 0; i < n; i++)
                m->hop.item[m->hop.off[hops[i]] + hfill[hops[i]]++] = (int32_t)t;
            for (int i = 0; i < m->tok_ndest[t]; i++)
                if (!m->forward || c->topo.node_of[dest[i]] == c->node)
                    m->direct.item[m->direct.off[dest[i]] + dfill[dest[i]]++] =
                        (int32_t)t;
        }
        free(hfill);
    }
    free(hops);
    return st;
}

mox_status_t mox_moe_layout(mox_moe_t m, const void *topk_idx,
                            int64_t num_tokens, uint64_t *tokens_per_rank,
                            uint64_t *tokens_per_node,
                            uint64_t *tokens_per_expert,
                            uint8_t *is_token_in_rank)
{
    if (!m)
        return MOX_ERR_INVALID_ARG;
    mox__comm_t *c = m->comm;
    if (num_tokens < 0 || (num_tokens > 0 && !topk_idx))
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe_layout: num_tokens "
                         "%lld with topk_idx %p", (long long)num_tokens,
                         topk_idx);
    if (tokens_per_rank)
        memset(tokens_per_rank, 0, (size_t)m->P * sizeof(uint64_t));
    if (tokens_per_node)
        memset(tokens_per_node, 0, (size_t)c->topo.num_nodes * sizeof(uint64_t));
    if (tokens_per_expert)
        memset(tokens_per_expert, 0, (size_t)m->E * sizeof(uint64_t));
    if (is_token_in_rank)
        memset(is_token_in_rank, 0, (size_t)num_tokens * (size_t)m->P);
    int32_t dest[1024], ndest;
    int nodes_seen[1024];
    for (int64_t t = 0; t < num_tokens; t++) {
        int slot;
        int64_t value;
        const char *why;
        if (token_dests(m, topk_idx, t, dest, &ndest, &slot, &value, &why) !=
            MOX_OK)
            return mox__fail(c, MOX_ERR_INVALID_ARG, "moe_layout: token %lld "
                             "slot %d: expert %lld %s (num_experts %d)",
                             (long long)t, slot, (long long)value, why, m->E);
        int nn = 0;
        for (int i = 0; i < ndest; i++) {
            if (tokens_per_rank)
                tokens_per_rank[dest[i]]++;
            if (is_token_in_rank)
                is_token_in_rank[(size_t)t * (size_t)m->P + (size_t)dest[i]] = 1;
            int node = c->topo.node_of[dest[i]], seen = 0;
            for (int j = 0; j < nn && !seen; j++)
                seen = nodes_seen[j] == node;
            if (!seen && nn < 1024)
                nodes_seen[nn++] = node;
            if (!seen && tokens_per_node)
                tokens_per_node[node]++;
        }
        for (int j = 0; j < m->k && tokens_per_expert; j++) {
            int64_t e = mox__moe_expert(m, topk_idx, t, j);
            if (e >= 0)
                tokens_per_expert[e]++;
        }
    }
    return MOX_OK;
}

/* Input problems every rank must hear of (through notify), so that all of
 * them fail the same dispatch instead of waiting for this rank: returns
 * MOX_MOE_BAD_* (0 when fine) and records the message locally. */
static int input_problem(struct mox_moe *m, const mox_moe_input_t *in)
{
    mox__comm_t *c = m->comm;
    if (in->num_tokens < 0 || in->num_tokens > INT32_MAX) {
        mox__fail(c, MOX_ERR_INVALID_ARG, "moe: num_tokens %lld is outside "
                  "[0, 2^31)", (long long)in->num_tokens);
        return MOX_MOE_BAD_NUM_TOKENS;
    }
    if (in->num_tokens > 0 && (!in->x || !in->topk_idx || !in->topk_weights)) {
        mox__fail(c, MOX_ERR_INVALID_ARG, "moe: num_tokens %lld but %s is "
                  "NULL", (long long)in->num_tokens,
                  !in->x ? "x" : !in->topk_idx ? "topk_idx" : "topk_weights");
        return !in->x ? MOX_MOE_BAD_NULL_X
               : !in->topk_idx ? MOX_MOE_BAD_NULL_IDX : MOX_MOE_BAD_NULL_WEIGHTS;
    }
    return 0;
}

static mox_status_t start(struct mox_moe *m, const mox_moe_input_t *in,
                          mox_moe_output_t *out, int notify_only,
                          mox_req_t *req)
{
    mox__comm_t *c = m->comm;
    if (!req)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe: req is NULL");
    *req = NULL;
    /* Misuse of the API itself (the structs) is this caller's alone. */
    if (!in || in->struct_size < sizeof *in)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe: input is NULL or its "
                         "struct_size is too small");
    if (out && out->struct_size < sizeof *out)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe: output struct_size %zu "
                         "is smaller than %zu", out->struct_size, sizeof *out);
    m->input_bad = input_problem(m, in);
    int skip_notify = !notify_only && !m->input_bad &&
                      m->state == MOE_NOTIFIED &&
                      in->num_tokens == m->in.num_tokens &&
                      in->topk_idx == m->in.topk_idx;
    m->in = *in;
    m->num_tokens = m->input_bad ? 0 : in->num_tokens;
    mox_status_t st;
    struct mox_req *r;
    st = mox__req_new(c, notify_only ? "moe_notify" : "moe_dispatch", &r);
    if (st != MOX_OK)
        return st;
    st = mox__moe_dispatch_start(r, m, out, notify_only, skip_notify);
    if (st != MOX_OK) {
        mox__req_abort(r, st);
        return st;
    }
    return mox__req_start(r, req);
}

mox_status_t mox_moe_inotify(mox_moe_t m, const mox_moe_input_t *in,
                             mox_req_t *req)
{
    if (!m)
        return MOX_ERR_INVALID_ARG;
    return start(m, in, NULL, 1, req);
}

mox_status_t mox_moe_recv_count(mox_moe_t m, uint64_t *num_recv,
                                uint64_t *per_expert)
{
    if (!m)
        return MOX_ERR_INVALID_ARG;
    if (m->state == MOE_IDLE)
        return mox__fail(m->comm, MOX_ERR_INVALID_ARG, "moe_recv_count: no "
                         "notify or dispatch has completed on this handle");
    if (num_recv)
        *num_recv = m->num_recv;
    if (per_expert)
        memcpy(per_expert, m->per_expert, (size_t)m->E_local * sizeof(uint64_t));
    return MOX_OK;
}

mox_status_t mox_moe_idispatch(mox_moe_t m, const mox_moe_input_t *in,
                               mox_moe_output_t *out, mox_req_t *req)
{
    if (!m)
        return MOX_ERR_INVALID_ARG;
    if (!out)
        return mox__fail(m->comm, MOX_ERR_INVALID_ARG, "moe_dispatch: output "
                         "is NULL");
    return start(m, in, out, 0, req);
}

mox_status_t mox_moe_dispatch(mox_moe_t m, const mox_moe_input_t *in,
                              mox_moe_output_t *out)
{
    mox_req_t req = NULL;
    mox_status_t st = mox_moe_idispatch(m, in, out, &req);
    return mox__wait_started(st, req);
}

mox_status_t mox_moe_icombine(mox_moe_t m, const void *expert_out, void *out,
                              mox_req_t *req)
{
    if (!m)
        return MOX_ERR_INVALID_ARG;
    mox__comm_t *c = m->comm;
    if (!req)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe_combine: req is NULL");
    *req = NULL;
    if (m->state != MOE_DISPATCHED)
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe_combine: no successful "
                         "dispatch on this handle to reverse");
    if ((m->num_recv && !expert_out) || (m->num_tokens && !out))
        return mox__fail(c, MOX_ERR_INVALID_ARG, "moe_combine: %s is NULL",
                         !out ? "out" : "expert_out");
    struct mox_req *r;
    mox_status_t st = mox__req_new(c, "moe_combine", &r);
    if (st != MOX_OK)
        return st;
    st = mox__moe_combine_start(r, m, expert_out, out);
    if (st != MOX_OK) {
        mox__req_abort(r, st);
        return st;
    }
    return mox__req_start(r, req);
}

mox_status_t mox_moe_combine(mox_moe_t m, const void *expert_out, void *out)
{
    mox_req_t req = NULL;
    mox_status_t st = mox_moe_icombine(m, expert_out, out, &req);
    return mox__wait_started(st, req);
}
