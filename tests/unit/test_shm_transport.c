/* Multi-process tests of transports/shm and transports/self: streaming of
 * any size through a small ring, single copy, gather sends, matching order,
 * truncation, cancel, malformed data, dead peers, segment hygiene. */
#include "test_shm_harness.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#include "transports/shm/shm.h"

static const mox__transport_ops_t *shm = &mox__tp_shm_ops;

/* Expected byte i of message `msg` from src to dst, independent of the
 * transport: every rank can regenerate what it should receive. */
static uint8_t pattern(int src, int dst, int msg, size_t i)
{
    return (uint8_t)(src * 131 + dst * 31 + msg * 7 + i * 13 + (i >> 8));
}

static void fill(uint8_t *buf, size_t n, int src, int dst, int msg)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = pattern(src, dst, msg, i);
}

static void verify(const uint8_t *buf, size_t n, int src, int dst, int msg)
{
    for (size_t i = 0; i < n; i++)
        CHECK(buf[i] == pattern(src, dst, msg, i),
              "msg %d from %d: byte %zu of %zu is %u, want %u", msg, src, i,
              n, buf[i], pattern(src, dst, msg, i));
}

static mox__transport_t *h_shm(mox__comm_t *c)
{
    mox__transport_t *tp = NULL;
    mox_status_t st = shm->create(c, &tp);
    CHECK(st == MOX_OK, "create: %s: %s", mox_status_name(st),
          c->last_error);
    return tp;
}

/* ------------------------------------------------------------------ */

static const size_t sizes[] = {0,    1,     4000,    4032,   4033,
                               4096, 15000, 40000,   1 << 20, (5 << 20) + 3};
#define NSIZES (sizeof sizes / sizeof sizes[0])

/* Every rank sends every size to every other rank of its node, all posted
 * at once, then checks every byte it received. */
static void body_all_sizes(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    int n = c->local_size;
    size_t total = 0;
    for (size_t k = 0; k < NSIZES; k++)
        total += sizes[k];
    uint8_t *sbuf = malloc(total * n), *rbuf = malloc(total * n);
    mox__treq_t *reqs = calloc(2 * NSIZES * n, sizeof *reqs);
    CHECK(sbuf && rbuf && reqs, "malloc");
    int nr = 0;
    /* Every finished request counts once in its collective's `moves`
     * (MOX_TIMEOUT's clock): half of them here, the others in none. */
    uint64_t moves = 0;
    for (int l = 0; l < n; l++) {
        int peer = mox__topo_rank_at(&c->topo, c->node, l);
        if (peer == rank)
            continue;
        size_t off = total * l;
        for (size_t k = 0; k < NSIZES; k++) {
            fill(sbuf + off, sizes[k], rank, peer, (int)k);
            reqs[nr].moves = k % 2 ? &moves : NULL;
            CHECK(shm->irecv(tp, peer, k, rbuf + off, sizes[k], &reqs[nr++])
                      == MOX_OK, "irecv");
            reqs[nr].moves = k % 2 ? &moves : NULL;
            CHECK(shm->isend(tp, peer, k, sbuf + off, sizes[k], &reqs[nr++])
                      == MOX_OK, "isend");
            off += sizes[k];
        }
    }
    h_wait(shm, tp, reqs, nr);
    uint64_t counted = 0;
    for (int i = 0; i < nr; i++) {
        CHECK(reqs[i].status == MOX_OK, "req %d: %s", i,
              mox_status_name(reqs[i].status));
        counted += reqs[i].moves != NULL;
    }
    CHECK(moves == counted, "moves %llu, want %llu (one per finished request)",
          (unsigned long long)moves, (unsigned long long)counted);
    for (int l = 0; l < n; l++) {
        int peer = mox__topo_rank_at(&c->topo, c->node, l);
        size_t off = total * l;
        for (size_t k = 0; peer != rank && k < NSIZES; k++) {
            verify(rbuf + off, sizes[k], peer, rank, (int)k);
            off += sizes[k];
        }
    }
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_any_size_streams_through_small_ring_eager(void **state)
{
    (void)state;
    h_env[0] = "MOX_SHM_SLOT_SIZE=4096";
    h_env[1] = "MOX_SHM_SLOTS=2";
    h_env[2] = "MOX_SHM_CMA=off";
    h_run("AAAA", body_all_sizes);
}

static void test_any_size_with_single_copy(void **state)
{
    (void)state;
    h_env[0] = "MOX_SHM_SLOT_SIZE=4096";
    h_env[1] = "MOX_SHM_SLOTS=3";
    /* auto, not on: where ptrace rules forbid it this still passes (eager) */
    h_env[2] = "MOX_SHM_CMA_THRESHOLD=4k";
    h_run("AAA", body_all_sizes);
}

static void test_default_config_two_nodes(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_run("AABAB", body_all_sizes);
}

/* ------------------------------------------------------------------ */

/* Rank 0 sends tag 1 then tag 2; rank 1 posts tag 2 first. Tag 2 must wait
 * behind tag 1 (FIFO per pair), then both arrive intact. */
static void body_order(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    uint8_t a[100], b[200], ra[100], rb[200];
    mox__treq_t r[2] = {0};
    if (rank == 0) {
        fill(a, sizeof a, 0, 1, 1);
        fill(b, sizeof b, 0, 1, 2);
        shm->isend(tp, 1, 1, a, sizeof a, &r[0]);
        shm->isend(tp, 1, 2, b, sizeof b, &r[1]);
        h_wait(shm, tp, r, 2);
    } else {
        shm->irecv(tp, 0, 2, rb, sizeof rb, &r[1]);
        for (int i = 0; i < 2000; i++)
            shm->progress(tp);
        CHECK(!r[1].done, "tag 2 overtook tag 1");
        shm->irecv(tp, 0, 1, ra, sizeof ra, &r[0]);
        h_wait(shm, tp, r, 2);
        CHECK(r[0].status == MOX_OK && r[1].status == MOX_OK, "status");
        CHECK(r[0].bytes == 100 && r[1].bytes == 200, "bytes");
        verify(ra, sizeof ra, 0, 1, 1);
        verify(rb, sizeof rb, 0, 1, 2);
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1); /* keep rank 0 mapped */
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_later_tag_never_overtakes(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_run("AA", body_order);
}

/* ------------------------------------------------------------------ */

/* Too small a receive fails with TRUNCATED and the real length; the next
 * message on the same channel still arrives intact (eager and RNDV). */
static void body_truncate(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    enum { BIG = 300000, SMALL = 5000 };
    uint8_t *big = malloc(BIG), *small = malloc(SMALL), *r = malloc(BIG);
    mox__treq_t q[4] = {0};
    fill(big, BIG, 0, 1, 0);
    fill(small, SMALL, 0, 1, 1);
    if (rank == 0) {
        shm->isend(tp, 1, 7, big, BIG, &q[0]);   /* RNDV when CMA is on */
        shm->isend(tp, 1, 7, small, SMALL, &q[1]);
        shm->isend(tp, 1, 7, small, SMALL, &q[2]); /* eager, truncated */
        shm->isend(tp, 1, 7, big, BIG, &q[3]);
        h_wait(shm, tp, q, 4);
        for (int i = 0; i < 4; i++)
            CHECK(q[i].status == MOX_OK, "send %d: %s", i,
                  mox_status_name(q[i].status));
    } else {
        uint8_t tiny[10];
        shm->irecv(tp, 0, 7, tiny, sizeof tiny, &q[0]);
        shm->irecv(tp, 0, 7, r, SMALL, &q[1]);
        h_wait(shm, tp, q, 2);
        CHECK(q[0].status == MOX_ERR_TRUNCATED && q[0].bytes == BIG,
              "big into tiny: %s %zu", mox_status_name(q[0].status),
              q[0].bytes);
        CHECK(q[1].status == MOX_OK && q[1].bytes == SMALL, "small");
        verify(r, SMALL, 0, 1, 1);
        shm->irecv(tp, 0, 7, tiny, sizeof tiny, &q[2]);
        shm->irecv(tp, 0, 7, r, BIG, &q[3]);
        h_wait(shm, tp, q + 2, 2);
        CHECK(q[2].status == MOX_ERR_TRUNCATED && q[2].bytes == SMALL, "2");
        CHECK(q[3].status == MOX_OK && q[3].bytes == BIG, "3");
        verify(r, BIG, 0, 1, 0);
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_truncation_keeps_channel_usable(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_run("AA", body_truncate);
    h_env[0] = "MOX_SHM_CMA=off";
    h_run("AA", body_truncate);
}

/* ------------------------------------------------------------------ */

/* A cancelled receive completes with TIMEOUT; the message it would have
 * matched goes to the next receive with that tag. */
static void body_cancel(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    uint8_t s[64], r[64];
    mox__treq_t q[2] = {0};
    fill(s, sizeof s, 0, 1, 3);
    if (rank == 1) {
        shm->irecv(tp, 0, 3, r, sizeof r, &q[0]);
        shm->cancel(tp, &q[0]);
        CHECK(q[0].done && q[0].status == MOX_ERR_TIMEOUT, "cancel");
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    if (rank == 0) {
        shm->isend(tp, 1, 3, s, sizeof s, &q[1]);
    } else {
        shm->irecv(tp, 0, 3, r, sizeof r, &q[1]);
    }
    h_wait(shm, tp, &q[1], 1);
    CHECK(q[1].status == MOX_OK, "after cancel");
    if (rank == 1)
        verify(r, sizeof r, 0, 1, 3);
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_cancelled_receive_frees_its_message(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_run("AA", body_cancel);
}

/* ------------------------------------------------------------------ */

/* Rank 1 writes a header with an impossible kind straight into its ring;
 * rank 0's receive fails with PROTOCOL instead of crashing or hanging. */
static void body_garbage(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    if (rank == 1) {
        shm_peer_t *p = &tp->peers[0];
        shm_wire_hdr_t h = {.tag = 5, .bytes = 1u << 30, .kind = 77};
        memcpy(p->out->ring, &h, sizeof h);
        atomic_store_explicit(&p->out->head, 1, memory_order_release);
    } else {
        uint8_t r[16];
        mox__treq_t q = {0};
        shm->irecv(tp, 1, 5, r, sizeof r, &q);
        h_wait(shm, tp, &q, 1);
        CHECK(q.status == MOX_ERR_PROTOCOL, "got %s",
              mox_status_name(q.status));
        mox__treq_t q2 = {0};
        shm->isend(tp, 1, 5, r, sizeof r, &q2);
        CHECK(q2.done && q2.status == MOX_ERR_PROTOCOL, "send after");
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_malformed_header_is_protocol_error(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_run("AA", body_garbage);
}

/* A head counter far beyond the ring is caught too. */
static void body_bad_head(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    if (rank == 1) {
        atomic_store_explicit(&tp->peers[0].out->head, UINT64_C(1) << 60,
                              memory_order_release);
    } else {
        uint8_t r[16];
        mox__treq_t q = {0};
        shm->irecv(tp, 1, 5, r, sizeof r, &q);
        h_wait(shm, tp, &q, 1);
        CHECK(q.status == MOX_ERR_PROTOCOL, "got %s",
              mox_status_name(q.status));
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_impossible_head_counter_is_protocol_error(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_run("AA", body_bad_head);
}

/* ------------------------------------------------------------------ */

/* Rank 1 sends one message and dies. Rank 0 still gets that message, then
 * a receive that can never be satisfied fails with PEER, as does a send. */
static void body_dead(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    static uint8_t s[1 << 20];
    uint8_t r[100];
    fill(s, 100, 1, 0, 0);
    mox__treq_t q[3] = {0};
    if (rank == 1) {
        shm->isend(tp, 0, 1, s, 100, &q[0]);
        CHECK(q[0].done, "small send completes at once");
        h_allgather(h_oob, "x", (char[8]){0}, 1);
        _exit(0); /* no destroy: a crash */
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->irecv(tp, 1, 1, r, sizeof r, &q[0]);
    shm->irecv(tp, 1, 2, r, sizeof r, &q[1]);
    shm->isend(tp, 1, 2, s, sizeof s, &q[2]); /* bigger than the ring */
    uint64_t t0 = h_now_ms();
    h_wait(shm, tp, q, 3);
    CHECK(q[0].status == MOX_OK, "message left by the dead peer: %s",
          mox_status_name(q[0].status));
    verify(r, sizeof r, 1, 0, 0);
    CHECK(q[1].status == MOX_ERR_PEER, "recv: %s",
          mox_status_name(q[1].status));
    CHECK(q[2].status == MOX_ERR_PEER, "send: %s",
          mox_status_name(q[2].status));
    CHECK(h_now_ms() - t0 < 3000, "took %llu ms",
          (unsigned long long)(h_now_ms() - t0));
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_dead_peer_fails_requests(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_env[0] = "MOX_SHM_CMA=off"; /* the 1 MiB send must stream */
    h_run("AA", body_dead);
}

/* ------------------------------------------------------------------ */

/* Nothing of the job is left in /dev/shm once create returned. */
static void body_unlinked(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    char path[128];
    h_allgather(h_oob, "x", (char[8]){0}, 1); /* rank 0 unlinked by now */
    for (int n = 0; n < c->topo.num_nodes; n++) {
        snprintf(path, sizeof path, "/dev/shm/mox-%s-%d", job, n);
        CHECK(access(path, F_OK) != 0, "%s still exists", path);
    }
    CHECK((tp == NULL) == (c->local_size == 1), "alone on a node: NULL");
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_segment_is_unlinked_after_create(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_run("AAB", body_unlinked);
}

/* A leftover segment with our name makes create fail on every rank, with
 * a message naming it, instead of attaching to stale memory. */
static void body_stale(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = NULL;
    mox_status_t st = shm->create(c, &tp);
    CHECK(st != MOX_OK && tp == NULL, "create on a stale segment: %s",
          mox_status_name(st));
    if (rank == 0)
        CHECK(strstr(c->last_error, "already exists"), "message: %s",
              c->last_error);
    h_comm_free(c);
}

static void test_stale_segment_is_a_clear_error(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    /* h_run names the job t<pid>-<run>; predict the next one. */
    char name[64];
    snprintf(name, sizeof name, "/mox-t%d-%d-0", (int)getpid(), h_next_run());
    int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
    assert_true(fd >= 0);
    close(fd);
    h_run("AA", body_stale);
    shm_unlink(name);
}

/* ------------------------------------------------------------------ */
/* Gather sends                                                         */

/* Piece lengths of gather message `shape`; returns their count. */
static size_t gather_shape(int shape, size_t *len, size_t max)
{
    size_t n = 0;
    switch (shape) {
    case 0: /* one piece */
        len[n++] = 100003;
        break;
    case 1: /* 1500 tiny pieces, every 7th empty, empty ends */
        len[n++] = 0;
        for (size_t i = 0; i < 1500; i++)
            len[n++] = i % 7 == 3 ? 0 : 1 + i % 29;
        len[n++] = 0;
        break;
    case 2: /* few pieces larger than a read chunk (4 MiB) */
        len[n++] = 3u << 20;
        len[n++] = 0;
        len[n++] = (5u << 20) + 3;
        len[n++] = 777;
        break;
    default: /* 1200 pieces of odd sizes, many read batches */
        for (size_t i = 0; i < 1200; i++)
            len[n++] = 1 + (i * 37) % 5003;
        break;
    }
    CHECK(n <= max, "shape %d: %zu pieces", shape, n);
    return n;
}
#define NSHAPES 4
#define MAX_PIECES 1600

/* Lay message (src, dst, shape)'s bytes into `pool` as scattered pieces in
 * reverse order with junk between them, and point iov at them. */
static size_t gather_build(int src, int dst, int shape, uint8_t **pool,
                           mox__iov_t *iov)
{
    size_t len[MAX_PIECES];
    size_t n = gather_shape(shape, len, MAX_PIECES), total = 0;
    for (size_t i = 0; i < n; i++)
        total += len[i];
    *pool = malloc(total + 3 * n + 1);
    CHECK(*pool, "malloc");
    memset(*pool, 0xEE, total + 3 * n + 1);
    size_t at = total + 3 * n, off = 0;
    for (size_t i = 0; i < n; i++) {
        at -= len[i] + 3;
        for (size_t b = 0; b < len[i]; b++)
            (*pool)[at + b] = pattern(src, dst, shape, off + b);
        iov[i] = (mox__iov_t){*pool + at, len[i]};
        off += len[i];
    }
    return n;
}

static size_t iov_total(const mox__iov_t *iov, size_t n)
{
    size_t t = 0;
    for (size_t i = 0; i < n; i++)
        t += iov[i].len;
    return t;
}

/* Every rank sends every shape as a gather to every other rank of its node
 * (all posted at once, with plain sends in between on the same tag); the
 * receiver sees ordinary messages and checks every byte. Below the
 * threshold or without CMA the transport declines and the sender packs. */
static void body_gather(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    int n = c->local_size;
    enum { PER = 2 * NSHAPES + 1 };
    mox__treq_t *reqs = calloc((size_t)(2 * PER * n), sizeof *reqs);
    mox__iov_t(*iov)[MAX_PIECES] = calloc((size_t)(NSHAPES * n), sizeof *iov);
    uint8_t **pools = calloc((size_t)(NSHAPES * n), sizeof *pools);
    uint8_t **rbufs = calloc((size_t)(PER * n), sizeof *rbufs);
    uint8_t small[500];
    CHECK(reqs && iov && pools && rbufs, "calloc");
    fill(small, sizeof small, rank, 0, 99);
    int nr = 0, gathered = 0;
    for (int l = 0; l < n; l++) {
        int peer = mox__topo_rank_at(&c->topo, c->node, l);
        if (peer == rank)
            continue;
        for (int k = 0; k < NSHAPES; k++) {
            int g = l * NSHAPES + k;
            size_t cnt = gather_build(rank, peer, k, &pools[g], iov[g]);
            size_t total = iov_total(iov[g], cnt);
            /* the receiver's buffer: expected size from its own shape */
            size_t rlen[MAX_PIECES], rn = gather_shape(k, rlen, MAX_PIECES);
            size_t rtotal = 0;
            for (size_t i = 0; i < rn; i++)
                rtotal += rlen[i];
            rbufs[l * PER + k] = malloc(rtotal);
            CHECK(shm->irecv(tp, peer, 1, rbufs[l * PER + k], rtotal,
                             &reqs[nr++]) == MOX_OK, "irecv");
            mox__treq_t *sr = &reqs[nr++];
            mox_status_t st = shm->isendv(tp, peer, 1, iov[g], cnt, total,
                                          sr);
            if (st == MOX_ERR_UNSUPPORTED) {
                CHECK(!tp->cma, "declined with CMA on (%zu bytes)", total);
                uint8_t *packed = malloc(total);
                for (size_t i = 0, o = 0; i < cnt; o += iov[g][i].len, i++)
                    memcpy(packed + o, iov[g][i].base, iov[g][i].len);
                free(pools[g]);
                pools[g] = packed; /* kept until the send is done */
                st = shm->isend(tp, peer, 1, packed, total, sr);
            } else {
                gathered++;
            }
            CHECK(st == MOX_OK, "send shape %d: %s", k, mox_status_name(st));
            /* a plain message between gathers on the same tag */
            rbufs[l * PER + NSHAPES + k] = malloc(sizeof small);
            CHECK(shm->irecv(tp, peer, 1, rbufs[l * PER + NSHAPES + k],
                             sizeof small, &reqs[nr++]) == MOX_OK, "irecv");
            CHECK(shm->isend(tp, peer, 1, small, sizeof small, &reqs[nr++])
                      == MOX_OK, "isend");
        }
        /* below the threshold: always declined, request untouched */
        mox__iov_t one = {small, 100};
        mox__treq_t probe = {.status = MOX_OK};
        CHECK(shm->isendv(tp, peer, 2, &one, 1, 100, &probe) ==
                  MOX_ERR_UNSUPPORTED && !probe.done, "small gather");
    }
    h_wait(shm, tp, reqs, nr);
    for (int i = 0; i < nr; i++)
        CHECK(reqs[i].status == MOX_OK, "req %d: %s", i,
              mox_status_name(reqs[i].status));
    for (int l = 0; l < n; l++) {
        int peer = mox__topo_rank_at(&c->topo, c->node, l);
        if (peer == rank)
            continue;
        for (int k = 0; k < NSHAPES; k++) {
            size_t rlen[MAX_PIECES], rn = gather_shape(k, rlen, MAX_PIECES);
            size_t rtotal = 0;
            for (size_t i = 0; i < rn; i++)
                rtotal += rlen[i];
            verify(rbufs[l * PER + k], rtotal, peer, rank, k);
            verify(rbufs[l * PER + NSHAPES + k], sizeof small, peer, 0, 99);
        }
    }
    CHECK(!tp->cma || gathered == NSHAPES * (n - 1), "gathered %d",
          gathered);
    for (int i = 0; i < NSHAPES * n; i++)
        free(pools[i]);
    for (int i = 0; i < PER * n; i++)
        free(rbufs[i]);
    free(pools);
    free(rbufs);
    free(iov);
    free(reqs);
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_gather_send_any_shape_arrives_as_one_message(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_env[0] = "MOX_SHM_CMA_THRESHOLD=4k";
    h_run("AAA", body_gather);
    /* streams are packed by the caller: same bytes */
    h_env[1] = "MOX_SHM_CMA=off";
    h_run("AA", body_gather);
}

/* A gather into a receive too small fails that receive with TRUNCATED and
 * the real length; the sender completes and the next gather on the
 * channel arrives intact. */
static void body_gather_truncate(int rank, const char *nodes,
                                 const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    CHECK(tp->cma, "needs single copy");
    mox__iov_t iov[MAX_PIECES];
    uint8_t *pool = NULL;
    size_t cnt = gather_build(0, 1, 3, &pool, iov);
    size_t total = iov_total(iov, cnt);
    mox__treq_t q[2] = {0};
    if (rank == 0) {
        for (int i = 0; i < 2; i++)
            CHECK(shm->isendv(tp, 1, 4, iov, cnt, total, &q[i]) == MOX_OK,
                  "isendv");
        h_wait(shm, tp, q, 2);
        CHECK(q[0].status == MOX_OK && q[1].status == MOX_OK, "sends");
    } else {
        uint8_t *r = malloc(total);
        shm->irecv(tp, 0, 4, r, 1000, &q[0]);
        shm->irecv(tp, 0, 4, r, total, &q[1]);
        h_wait(shm, tp, q, 2);
        CHECK(q[0].status == MOX_ERR_TRUNCATED && q[0].bytes == total,
              "truncated: %s %zu", mox_status_name(q[0].status), q[0].bytes);
        CHECK(q[1].status == MOX_OK && q[1].bytes == total, "next: %s",
              mox_status_name(q[1].status));
        verify(r, total, 0, 1, 3);
        free(r);
    }
    free(pool);
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_gather_truncation_completes_both_sides(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_env[0] = "MOX_SHM_CMA=on";
    h_run("AA", body_gather_truncate);
}

/* The sender corrupts its iov array after posting (pieces longer, then
 * shorter, than the message, then a piece wrapping the address space): each
 * receive fails with PROTOCOL, the sender is still acknowledged, and a
 * plain message after them arrives intact. */
static void body_gather_corrupt(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = h_shm(c);
    CHECK(tp->cma, "needs single copy");
    enum { NBAD = 3 };
    static mox__iov_t iov[NBAD][MAX_PIECES];
    uint8_t *pool[NBAD];
    size_t cnt[NBAD], total[NBAD];
    uint8_t small[300], r[300];
    fill(small, sizeof small, 0, 1, 5);
    mox__treq_t q[NBAD + 1] = {{0}};
    if (rank == 0) {
        for (int b = 0; b < NBAD; b++) {
            cnt[b] = gather_build(0, 1, 3, &pool[b], iov[b]);
            total[b] = iov_total(iov[b], cnt[b]);
            CHECK(shm->isendv(tp, 1, 6, iov[b], cnt[b], total[b], &q[b]) ==
                      MOX_OK, "isendv %d", b);
        }
        iov[0][700].len += 1;                 /* longer */
        iov[1][cnt[1] - 1].len -= 1;          /* shorter */
        iov[2][5].base = (void *)(uintptr_t)(UINTPTR_MAX - 2); /* wraps */
        CHECK(shm->isend(tp, 1, 6, small, sizeof small, &q[NBAD]) == MOX_OK,
              "isend");
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1); /* corrupted before reads */
    if (rank == 0) {
        h_wait(shm, tp, q, NBAD + 1);
        for (int b = 0; b <= NBAD; b++)
            CHECK(q[b].status == MOX_OK, "send %d acknowledged: %s", b,
                  mox_status_name(q[b].status));
        for (int b = 0; b < NBAD; b++)
            free(pool[b]);
    } else {
        size_t want = 0;
        for (size_t i = 0; i < 1200; i++)
            want += 1 + (i * 37) % 5003;
        uint8_t *big = malloc(want + 1);
        for (int b = 0; b < NBAD; b++)
            shm->irecv(tp, 0, 6, big, want + 1, &q[b]);
        shm->irecv(tp, 0, 6, r, sizeof r, &q[NBAD]);
        h_wait(shm, tp, q, NBAD + 1);
        for (int b = 0; b < NBAD; b++)
            CHECK(q[b].status == MOX_ERR_PROTOCOL, "bad gather %d: %s", b,
                  mox_status_name(q[b].status));
        CHECK(q[NBAD].status == MOX_OK && q[NBAD].bytes == sizeof r,
              "after: %s", mox_status_name(q[NBAD].status));
        verify(r, sizeof r, 0, 1, 5);
        free(big);
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_corrupt_gather_list_is_protocol_error(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_env[0] = "MOX_SHM_CMA=on";
    h_run("AA", body_gather_corrupt);
}

/* ------------------------------------------------------------------ */
/* self                                                                 */

static void test_self_matches_either_order_and_truncates(void **state)
{
    (void)state;
    const mox__transport_ops_t *ops = &mox__tp_self_ops;
    mox__comm_t c = {.rank = 3, .size = 4};
    mox__transport_t *tp = NULL;
    assert_int_equal(ops->create(&c, &tp), MOX_OK);
    char a[8] = "aaaaaaa", b[8] = "bbbbbbb", r1[8] = "", r2[8] = "", r3[4];
    mox__treq_t s1 = {0}, s2 = {0}, q1 = {0}, q2 = {0}, q3 = {0}, s3 = {0};
    uint64_t moves = 0; /* finished requests, counted by the transport */
    s1.moves = s2.moves = q1.moves = q2.moves = &moves;
    /* send first, two messages of one tag arrive in order */
    ops->isend(tp, 3, 9, a, 8, &s1);
    ops->isend(tp, 3, 9, b, 8, &s2);
    assert_false(s1.done);
    assert_int_equal(moves, 0);
    ops->irecv(tp, 3, 9, r1, 8, &q1);
    ops->irecv(tp, 3, 9, r2, 8, &q2);
    assert_true(s1.done && s2.done && q1.done && q2.done);
    assert_int_equal(moves, 4);
    assert_string_equal(r1, "aaaaaaa");
    assert_string_equal(r2, "bbbbbbb");
    /* receive first, other tag unaffected, then truncation */
    ops->irecv(tp, 3, 10, r3, sizeof r3, &q3);
    ops->isend(tp, 3, 11, a, 8, &s3);
    assert_false(q3.done);
    ops->isend(tp, 3, 10, a, 8, &s1);
    assert_true(q3.done && s1.done);
    assert_int_equal(q3.status, MOX_ERR_TRUNCATED);
    assert_int_equal(q3.bytes, 8);
    ops->cancel(tp, &s3);
    assert_int_equal(s3.status, MOX_ERR_TIMEOUT);
    ops->irecv(tp, 3, 11, r1, 8, &q1);
    assert_false(q1.done); /* the cancelled send is gone */
    assert_int_equal(ops->isend(tp, 2, 1, a, 1, &s1), MOX_ERR_INVALID_ARG);
    /* gather: pieces (one empty) concatenated, either order */
    mox__iov_t iov[3] = {{b, 3}, {a, 0}, {a + 1, 4}};
    char g[8] = "";
    ops->isendv(tp, 3, 12, iov, 3, 7, &s1);
    assert_false(s1.done);
    ops->irecv(tp, 3, 12, g, sizeof g, &q2);
    assert_true(s1.done && q2.done);
    assert_int_equal(q2.status, MOX_OK);
    assert_int_equal(q2.bytes, 7);
    assert_memory_equal(g, "bbbaaaa", 7);
    memset(g, 0, sizeof g);
    ops->irecv(tp, 3, 12, g, sizeof g, &q2);
    ops->isendv(tp, 3, 12, iov, 3, 7, &s1);
    assert_true(s1.done && q2.done);
    assert_memory_equal(g, "bbbaaaa", 7);
    /* lengths that do not add up are the caller's error */
    assert_int_equal(ops->isendv(tp, 3, 12, iov, 3, 8, &s1),
                     MOX_ERR_INVALID_ARG);
    ops->destroy(tp);
    assert_int_equal(q1.status, MOX_ERR_TIMEOUT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_any_size_streams_through_small_ring_eager),
        cmocka_unit_test(test_any_size_with_single_copy),
        cmocka_unit_test(test_default_config_two_nodes),
        cmocka_unit_test(test_later_tag_never_overtakes),
        cmocka_unit_test(test_truncation_keeps_channel_usable),
        cmocka_unit_test(test_cancelled_receive_frees_its_message),
        cmocka_unit_test(test_malformed_header_is_protocol_error),
        cmocka_unit_test(test_impossible_head_counter_is_protocol_error),
        cmocka_unit_test(test_dead_peer_fails_requests),
        cmocka_unit_test(test_segment_is_unlinked_after_create),
        cmocka_unit_test(test_stale_segment_is_a_clear_error),
        cmocka_unit_test(test_gather_send_any_shape_arrives_as_one_message),
        cmocka_unit_test(test_gather_truncation_completes_both_sides),
        cmocka_unit_test(test_corrupt_gather_list_is_protocol_error),
        cmocka_unit_test(test_self_matches_either_order_and_truncates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
