/*
 * Multi-process harness for transport unit tests: forks N ranks that share
 * an out-of-band allgather in anonymous shared memory, builds a real
 * communicator skeleton (config, bootstrap, topology) in each, and runs a
 * body. A body reports failure through CHECK, which exits the child; the
 * parent (inside cmocka) asserts that every child exited 0.
 */
#ifndef MOX_TEST_SHM_HARNESS_H
#define MOX_TEST_SHM_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/comm.h"

#define H_MAX_RANKS 8
#define H_MAX_BYTES 256

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "[rank %d] %s:%d: CHECK(%s) failed: ", h_rank,     \
                    __FILE__, __LINE__, #cond);                                \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, "\n");                                             \
            _exit(1);                                                          \
        }                                                                      \
    } while (0)

static int h_rank = -1;

typedef struct {
    _Atomic int arrived;
    _Atomic int generation;
    int size;
    char data[H_MAX_RANKS * H_MAX_BYTES];
} h_oob_t;

static h_oob_t *h_oob;

static void h_barrier(h_oob_t *o)
{
    int gen = atomic_load(&o->generation);
    if (atomic_fetch_add(&o->arrived, 1) == o->size - 1) {
        atomic_store(&o->arrived, 0);
        atomic_fetch_add(&o->generation, 1);
    } else {
        while (atomic_load(&o->generation) == gen)
            sched_yield();
    }
}

static int h_allgather(void *ctx, const void *send, void *recv, size_t bytes)
{
    h_oob_t *o = ctx;
    if (bytes > H_MAX_BYTES)
        return 1;
    memcpy(o->data + (size_t)h_rank * bytes, send, bytes);
    h_barrier(o);
    memcpy(recv, o->data, bytes * (size_t)o->size);
    h_barrier(o); /* nobody overwrites data before everyone copied it */
    return 0;
}

/* Config overrides for this test run: "NAME=VALUE" strings. */
static const char *h_env[8];

static const char *h_lookup(const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < 8 && h_env[i]; i++)
        if (!strncmp(h_env[i], name, n) && h_env[i][n] == '=')
            return h_env[i] + n + 1;
    return NULL;
}

static uint64_t h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A communicator skeleton: node of rank r is nodes[r] ('A', 'B', ...). */
static mox__comm_t *h_comm(int rank, const char *nodes, const char *job)
{
    int size = (int)strlen(nodes);
    mox__comm_t *c = calloc(1, sizeof *c);
    char err[256];
    CHECK(c, "calloc");
    c->rank = rank;
    c->size = size;
    CHECK(mox__config_load(&c->cfg, h_lookup, err, sizeof err) == MOX_OK,
          "config: %s", err);
    mox_comm_params_t p = {sizeof p, h_allgather, h_oob, rank, size, NULL, 0};
    CHECK(mox__boot_create(&p, &c->cfg, &c->boot, err, sizeof err) == MOX_OK,
          "boot: %s", err);
    char keys[H_MAX_RANKS][16];
    for (int r = 0; r < size; r++)
        snprintf(keys[r], sizeof keys[r], "node-%c", nodes[r]);
    CHECK(mox__topo_group(&keys[0][0], 16, size, &c->topo) == MOX_OK, "topo");
    c->node = c->topo.node_of[rank];
    c->local_rank = c->topo.local_of[rank];
    c->local_size = mox__topo_local_size(&c->topo, c->node);
    c->numa_node = -1;
    snprintf(c->job_id, sizeof c->job_id, "%s", job);
    return c;
}

static void h_comm_free(mox__comm_t *c)
{
    mox__boot_destroy(c->boot);
    mox__topo_free(&c->topo);
    free(c);
}

/* Run body(rank, nodes, job) in one child per rank; assert all exit 0. */
static int h_runs;

/* Number of the next h_run (part of its job id). */
__attribute__((unused)) static int h_next_run(void)
{
    return h_runs;
}

static void h_run(const char *nodes, void (*body)(int, const char *,
                                                  const char *))
{
    int runs = h_runs++;
    int size = (int)strlen(nodes);
    char job[32];
    snprintf(job, sizeof job, "t%d-%d", (int)getpid(), runs);
    h_oob = mmap(NULL, sizeof *h_oob, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(h_oob != MAP_FAILED);
    h_oob->size = size;
    pid_t pids[H_MAX_RANKS];
    for (int r = 0; r < size; r++) {
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] == 0) {
            h_rank = r;
            alarm(60); /* a hang is a failure, not a stuck test run */
            body(r, nodes, job);
            _exit(0);
        }
    }
    for (int r = 0; r < size; r++) {
        int ws = 0;
        assert_int_equal(waitpid(pids[r], &ws, 0), pids[r]);
        if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
            fprintf(stderr, "rank %d: status 0x%x\n", r, ws);
        assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    }
    munmap(h_oob, sizeof *h_oob);
}

/* Poll until every request is done or 20 s passed. */
__attribute__((unused)) static void h_wait(const mox__transport_ops_t *ops,
                                          mox__transport_t *tp,
                                          mox__treq_t *reqs, int n)
{
    uint64_t deadline = h_now_ms() + 20000;
    for (;;) {
        int pending = 0;
        for (int i = 0; i < n; i++)
            pending += !reqs[i].done;
        if (!pending)
            return;
        CHECK(h_now_ms() < deadline, "%d of %d requests still pending",
              pending, n);
        if (ops->progress(tp) == 0)
            sched_yield();
    }
}

#endif
