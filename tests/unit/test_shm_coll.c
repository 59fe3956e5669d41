/* Multi-process tests of the shm segment's collective area (the slots of
 * core/algorithms/rsag_shm_small.c) and of the transport's peer check:
 * layout, sharing between processes, agreement on MOX_SHM_SMALL, and a
 * dead peer seen without any request pending. */
#include "test_shm_harness.h"

#include "transports/shm/shm.h"

#include <errno.h>
#include <numaif.h>
#include <string.h>

static const mox__transport_ops_t *shm = &mox__tp_shm_ops;

static uint8_t pattern(int owner, int slot, size_t i)
{
    return (uint8_t)(owner * 37 + slot * 101 + i * 7 + (i >> 8));
}

static int overlaps(const char *a, size_t na, const char *b, size_t nb)
{
    return a < b + nb && b < a + na;
}

/* Every local rank has its own flags (zero at first, 128 bytes apart) and
 * two slots of 64 + MOX_SHM_SMALL rounded up to 64 bytes; nothing
 * overlaps; what one process writes and publishes, the others read. A
 * rank alone on its node has no area. */
static void body_layout(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = NULL;
    mox_status_t st = shm->create(c, &tp);
    CHECK(st == MOX_OK, "create: %s: %s", mox_status_name(st),
          c->last_error);
    if (c->local_size == 1) {
        CHECK(tp == NULL, "alone on a node: no transport");
        for (int i = 0; i < 3; i++) /* the others' barriers */
            h_allgather(h_oob, "x", (char[8]){0}, 1);
        h_comm_free(c);
        return;
    }
    int n = c->local_size;
    const size_t want = MOX_COLL_HDR_BYTES + 1024; /* 1000 rounded up */
    CHECK(!shm->coll_slot(tp, -1) && !shm->coll_slot(tp, n),
          "local ranks outside [0, %d) have no slot", n);
    for (int l = 0; l < n; l++) {
        const mox__coll_slot_t *a = shm->coll_slot(tp, l);
        CHECK(a && a->slot_bytes == want, "slot bytes %zu, want %zu",
              a ? a->slot_bytes : 0, want);
        CHECK(atomic_load(a->written) == 0 && atomic_load(a->read) == 0,
              "flags of %d start at zero", l);
        CHECK((char *)a->read - (char *)a->written >= 128,
              "flags of %d share a line pair", l);
        for (int k = 0; k < MOX_COLL_SLOTS; k++) {
            CHECK(((uintptr_t)a->slot[k] & 63) == 0, "slot aligned");
            CHECK(!overlaps(a->slot[k], want, (char *)a->written, 8) &&
                      !overlaps(a->slot[k], want, (char *)a->read, 8),
                  "slot %d of %d overlaps its flags", k, l);
        }
        CHECK(!overlaps(a->slot[0], want, a->slot[1], want), "slots overlap");
        for (int m = 0; m < l; m++) {
            const mox__coll_slot_t *b = shm->coll_slot(tp, m);
            CHECK(!overlaps(a->slot[0], (size_t)(a->slot[1] - a->slot[0]) +
                                            want,
                            b->slot[0], (size_t)(b->slot[1] - b->slot[0]) +
                                            want),
                  "slots of %d and %d overlap", l, m);
        }
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1); /* all saw zeros */
    const mox__coll_slot_t *me = shm->coll_slot(tp, c->local_rank);
    for (int k = 0; k < MOX_COLL_SLOTS; k++)
        for (size_t i = 0; i < want; i++)
            me->slot[k][i] = (char)pattern(c->local_rank, k, i);
    atomic_store_explicit(me->written, (uint64_t)c->local_rank + 1,
                          memory_order_release);
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    for (int l = 0; l < n; l++) {
        const mox__coll_slot_t *a = shm->coll_slot(tp, l);
        CHECK(atomic_load_explicit(a->written, memory_order_acquire) ==
                  (uint64_t)l + 1,
              "written of %d", l);
        for (int k = 0; k < MOX_COLL_SLOTS; k++)
            for (size_t i = 0; i < want; i++)
                CHECK((uint8_t)a->slot[k][i] == pattern(l, k, i),
                      "byte %zu of slot %d of %d", i, k, l);
        if (l != c->local_rank)
            CHECK(shm->peer_check(tp, mox__topo_rank_at(&c->topo, c->node,
                                                        l)) == MOX_OK,
                  "live peer %d", l);
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_slots_are_separate_and_shared(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_env[0] = "MOX_SHM_SMALL=1000";
    h_run("AAAB", body_layout);
}

static void body_disabled(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = NULL;
    CHECK(shm->create(c, &tp) == MOX_OK && tp, "create");
    CHECK(!shm->coll_slot(tp, 0) && !shm->coll_slot(tp, 1),
          "MOX_SHM_SMALL=0: no collective area");
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

/* The NUMA policy of the bytes at p: its mode, and whether node 0 is in
 * its node mask. */
static int policy_at(const void *p, int *has_node0)
{
    int mode = -1;
    unsigned long mask[16] = {0};
    CHECK(get_mempolicy(&mode, mask, sizeof mask * 8, (void *)p,
                        MPOL_F_ADDR) == 0,
          "get_mempolicy: %s", strerror(errno));
    *has_node0 = (int)(mask[0] & 1);
    return mode;
}

/* Each rank's part of the area (its flags and both slots, up to their last
 * byte) prefers its owner's NUMA node. Here local rank 0, which creates
 * the segment, has no NUMA node (so nothing binds the segment as a whole)
 * and the others have node 0: their parts must say MPOL_PREFERRED node 0,
 * rank 0's the default. */
static void body_numa(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    c->numa_node = c->local_rank == 0 ? -1 : 0;
    mox__transport_t *tp = NULL;
    CHECK(shm->create(c, &tp) == MOX_OK && tp, "create");
    h_allgather(h_oob, "x", (char[8]){0}, 1); /* every rank placed its part */
    for (int l = 0; l < c->local_size; l++) {
        const mox__coll_slot_t *a = shm->coll_slot(tp, l);
        const char *at[3] = {(const char *)a->written, a->slot[0],
                             a->slot[1] + a->slot_bytes - 1};
        for (int i = 0; i < 3; i++) {
            int node0, mode = policy_at(at[i], &node0);
            if (l == 0)
                CHECK(mode == MPOL_DEFAULT, "rank 0's part (%d): mode %d, "
                      "want the default", i, mode);
            else
                CHECK(mode == MPOL_PREFERRED && node0, "part of %d (%d): "
                      "mode %d, node 0 %s; want preferred node 0", l, i,
                      mode, node0 ? "in" : "not in");
        }
    }
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_area_parts_on_owner_numa_node(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_env[0] = "MOX_SHM_SMALL=64k";
    h_run("AAA", body_numa);
}

static void test_no_area_when_disabled(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_env[0] = "MOX_SHM_SMALL=0";
    h_run("AA", body_disabled);
}

/* The area's size is part of the segment layout and picks the algorithm
 * of small collectives: ranks of a node that disagree fail to create it,
 * every one of them, naming the variable. */
static void body_disagree(int rank, const char *nodes, const char *job)
{
    h_env[0] = rank == 1 ? "MOX_SHM_SMALL=32k" : "MOX_SHM_SMALL=64k";
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = NULL;
    mox_status_t st = shm->create(c, &tp);
    CHECK(st == MOX_ERR_CONFIG && tp == NULL, "create: %s",
          mox_status_name(st));
    CHECK(strstr(c->last_error, "MOX_SHM_SMALL"), "message: %s",
          c->last_error);
    h_comm_free(c);
}

static void test_disagreeing_size_is_config_error(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_run("AAA", body_disagree);
}

/* Nothing is pending when a rank waits on another's flag: peer_check
 * alone must see the peer gone (as a zombie, before it is reaped). */
static void body_dead(int rank, const char *nodes, const char *job)
{
    mox__comm_t *c = h_comm(rank, nodes, job);
    mox__transport_t *tp = NULL;
    CHECK(shm->create(c, &tp) == MOX_OK && tp, "create");
    h_allgather(h_oob, "x", (char[8]){0}, 1);
    if (rank == 1)
        _exit(0); /* no destroy: a crash */
    uint64_t t0 = h_now_ms();
    mox_status_t st = MOX_OK;
    while (st == MOX_OK && h_now_ms() - t0 < 5000) {
        st = shm->peer_check(tp, 1);
        if (st == MOX_OK)
            usleep(1000);
    }
    CHECK(st == MOX_ERR_PEER, "peer_check: %s", mox_status_name(st));
    CHECK(shm->peer_check(tp, 1) == MOX_ERR_PEER, "stays gone");
    CHECK(shm->peer_check(tp, 0) == MOX_OK, "not a peer: nothing to say");
    mox__treq_t q = {0};
    shm->isend(tp, 1, 1, "x", 1, &q);
    CHECK(q.done && q.status == MOX_ERR_PEER, "send to the dead: %s",
          mox_status_name(q.status));
    shm->destroy(tp);
    h_comm_free(c);
}

static void test_peer_check_sees_dead_peer(void **state)
{
    (void)state;
    memset(h_env, 0, sizeof h_env);
    h_run("AA", body_dead);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots_are_separate_and_shared),
        cmocka_unit_test(test_no_area_when_disabled),
        cmocka_unit_test(test_area_parts_on_owner_numa_node),
        cmocka_unit_test(test_disagreeing_size_is_config_error),
        cmocka_unit_test(test_peer_check_sees_dead_peer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
