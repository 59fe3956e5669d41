/*
 * Failure behaviour, run under tools/mox-run. Each rank prints
 * "MOXTEST error rank R: STATUS: message" when its collective fails and
 * exits 0 when the failure it saw is the one this mode expects (check_run.py
 * matches the lines); exits 1 when something that should fail succeeded.
 *
 *  --mode early-exit --victim V   rank V leaves after creation; the others
 *                                 must fail within MOX_TIMEOUT, not hang
 *  --mode stall --victim V        rank V stays alive but never calls the
 *                                 collective: the others fail with
 *                                 MOX_ERR_TIMEOUT naming V (or see a rank
 *                                 that did leave) within 1.5 x
 *                                 MOX_TIMEOUT + 1 s, then V leaves
 *                                 (after 20 s)
 *  --mode mismatch --victim V --from F
 *                                 V expects one element more from F than F
 *                                 sends: V reports MOX_ERR_MISMATCH
 *  --mode zero-recv --victim V --from F
 *                                 V expects nothing from F, F sends data
 *  --mode fails                   one collective that every rank expects
 *                                 to fail (a MOX_TEST_* hook makes it):
 *                                 each rank prints its error
 *  --mode bad-args                invalid arguments get named errors and
 *                                 leave the communicator usable
 *  --mode create-fails            mox_comm_create must fail (a bad MOX_*
 *                                 value in the environment): each rank
 *                                 prints the error and exits 0
 *  --coll a2a|rs|ag               the collective of early-exit, stall, fails:
 *                                 alltoallv (default), reduce-scatter or
 *                                 allgather of 100 f32 per rank
 *  --poll                         start the collective nonblocking and poll
 *                                 it with mox_test (at most 60 s, then it
 *                                 counts as a hang) instead of mox_wait
 *  --poll-gap MS                  --poll, sleeping MS ms between two calls
 *                                 (an application computing between polls)
 *  --mode late --victim V --late MS
 *                                 rank V starts the alltoallv MS ms after
 *                                 the others: every rank must finish it with
 *                                 the right data (with --poll-gap and a
 *                                 MOX_TIMEOUT shorter than the wait, this
 *                                 checks that a gap between polls counts at
 *                                 most 1 s towards MOX_TIMEOUT)
 */
#include "mox/mox.h"
#include "testdata.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int me, P;
static const char *coll = "a2a";
static int poll_test; /* --poll */
static long poll_gap_ms; /* --poll-gap */

/* Poll a started request with mox_test, bounded: the library must end it
 * (with an error, when a peer is gone or stalls) well before this. */
static mox_status_t poll_req(mox_status_t st, mox_req_t req)
{
    if (st != MOX_OK)
        return st;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int done = 0;
    for (;;) {
        st = mox_test(req, &done);
        if (done || st != MOX_OK)
            break;
        if (poll_gap_ms > 0) {
            struct timespec gap = {poll_gap_ms / 1000,
                                   poll_gap_ms % 1000 * 1000000L};
            nanosleep(&gap, NULL);
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 60) {
            printf("rank %d: mox_test still not done after 60 s\n", me);
            fflush(stdout);
            _exit(3); /* a hang: leave without waiting on it */
        }
    }
    mox_req_free(req);
    return st;
}

static int report(mox_comm_t comm, const char *what, mox_status_t st)
{
    printf("MOXTEST error rank %d: %s: %s: %s\n", me, what,
           mox_status_name(st), mox_comm_last_error(comm));
    fflush(stdout);
    return st != MOX_OK;
}

/* Where exchange receives: source j's 100 elements at element j * 101. */
static char rb[64 * 101 * 4];

/* Sources whose block in rb differs from what they sent (exchange with no
 * victim), printed; returns how many. */
static int check_received(void)
{
    int bad = 0;
    for (int j = 0; j < P; j++) {
        int64_t at = td_check(5, 0, j, me, rb + (size_t)j * 101 * 4, 400);
        if (at >= 0) {
            printf("rank %d: block from rank %d differs at byte %lld\n", me,
                   j, (long long)at);
            bad++;
        }
    }
    return bad;
}

/* Alltoallv of 100 elements per pair, with recvcounts[from] on `victim`
 * replaced by `victim_count` (-1: unchanged). Returns the status. */
static mox_status_t exchange(mox_comm_t comm, int victim, int from,
                             int64_t victim_count)
{
    uint64_t sc[64], sd[64], rc[64], rd[64];
    static char sb[64 * 101 * 4];
    for (int j = 0; j < P; j++) {
        sc[j] = rc[j] = 100;
        sd[j] = rd[j] = (uint64_t)j * 101;
        td_fill(5, 0, me, j, sb + sd[j] * 4, sc[j] * 4);
    }
    if (me == victim && victim_count >= 0)
        rc[from] = (uint64_t)victim_count;
    if (poll_test) {
        mox_req_t req = NULL;
        mox_status_t st =
            !strcmp(coll, "rs")
                ? mox_ireduce_scatter(comm, sb, rb, 100, MOX_DTYPE_F32,
                                      MOX_OP_SUM, &req)
            : !strcmp(coll, "ag")
                ? mox_iallgather(comm, sb, rb, 100, MOX_DTYPE_F32, &req)
                : mox_ialltoallv(comm, sb, sc, sd, rb, rc, rd, 4, &req);
        return poll_req(st, req);
    }
    if (!strcmp(coll, "rs"))
        return mox_reduce_scatter(comm, sb, rb, 100, MOX_DTYPE_F32,
                                  MOX_OP_SUM);
    if (!strcmp(coll, "ag"))
        return mox_allgather(comm, sb, rb, 100, MOX_DTYPE_F32);
    return mox_alltoallv(comm, sb, sc, sd, rb, rc, rd, 4);
}

static int bad_args(mox_comm_t comm)
{
    uint64_t c[64] = {0}, d[64] = {0};
    char buf[16];
    int fails = 0;
    c[P - 1] = 3;
    mox_status_t st = mox_alltoallv(comm, NULL, c, d, buf, c, d, 1);
    fails += st != MOX_ERR_INVALID_ARG ||
             !strstr(mox_comm_last_error(comm), "sendbuf is NULL");
    report(comm, "NULL sendbuf", st);
    st = mox_alltoallv(comm, buf, c, d, buf, c, d, 0);
    fails += st != MOX_ERR_INVALID_ARG ||
             !strstr(mox_comm_last_error(comm), "elem_bytes");
    report(comm, "elem_bytes 0", st);
    st = mox_alltoallv(comm, buf, NULL, d, buf, c, d, 1);
    fails += st != MOX_ERR_INVALID_ARG;
    report(comm, "NULL sendcounts", st);
    c[0] = UINT64_MAX / 2;
    st = mox_alltoallv(comm, buf, c, d, buf, c, d, 8);
    fails += st != MOX_ERR_OVERFLOW ||
             !strstr(mox_comm_last_error(comm), "sendcounts[0]");
    report(comm, "overflowing count", st);
    mox_topo_info_t t = {.struct_size = 8};
    st = mox_comm_topo(comm, &t);
    fails += st != MOX_ERR_INVALID_ARG;
    report(comm, "small struct_size", st);
    st = mox_comm_rank_location(comm, P, NULL, NULL);
    fails += st != MOX_ERR_INVALID_ARG;
    report(comm, "rank out of range", st);
    /* The communicator still works after bad arguments. */
    st = exchange(comm, -1, 0, -1);
    if (st != MOX_OK) {
        report(comm, "exchange after bad arguments", st);
        fails++;
    }
    if (!fails)
        printf("MOXTEST ok rank %d\n", me);
    return fails != 0;
}

int main(int argc, char **argv)
{
    const char *mode = "";
    int victim = -1, from = 0, c;
    static const struct option lo[] = {{"mode", 1, 0, 'm'},
                                       {"victim", 1, 0, 'v'},
                                       {"from", 1, 0, 'f'},
                                       {"coll", 1, 0, 'c'},
                                       {"poll", 0, 0, 'p'},
                                       {"poll-gap", 1, 0, 'g'},
                                       {"late", 1, 0, 'l'},
                                       {0, 0, 0, 0}};
    long late_ms = 0;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (c == 'm') mode = optarg;
        else if (c == 'v') victim = atoi(optarg);
        else if (c == 'f') from = atoi(optarg);
        else if (c == 'c') coll = optarg;
        else if (c == 'p') poll_test = 1;
        else if (c == 'g') poll_test = 1, poll_gap_ms = atol(optarg);
        else if (c == 'l') late_ms = atol(optarg);
        else return 2;
    }
    /* direct-differs: the victim alone sends every alltoallv block to
     * another node direct (the others run with MOX_ALLTOALLV_DIRECT=0). */
    const char *rank_env = getenv("MOX_RANK");
    if (strcmp(mode, "direct-differs") == 0 && rank_env &&
        atoi(rank_env) == victim)
        setenv("MOX_ALLTOALLV_DIRECT", "1", 1);
    mox_comm_t comm;
    char err[512] = "";
    mox_comm_params_t params = {.struct_size = sizeof params,
                                .error_buf = err,
                                .error_buf_len = sizeof err};
    mox_status_t st = mox_comm_create(&params, &comm);
    if (strcmp(mode, "create-fails") == 0) {
        if (st == MOX_OK) {
            printf("MOXTEST mox_comm_create succeeded\n");
            mox_comm_destroy(comm);
            return 1;
        }
        printf("MOXTEST error: mox_comm_create: %s: %s\n",
               mox_status_name(st), err);
        return 0;
    }
    if (st != MOX_OK)
        return 1;
    me = mox_comm_rank(comm);
    P = mox_comm_size(comm);
    if (P > 64)
        return 2;
    int rc = 1;
    if (strcmp(mode, "bad-args") == 0) {
        rc = bad_args(comm);
    } else if (strcmp(mode, "early-exit") == 0) {
        if (me == victim)
            return 0; /* leave without a word, as a crashed rank would */
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        /* Several collectives: the first may still complete with the
         * victim's messages in flight; one of them must fail. */
        for (int i = 0; i < 5 && st == MOX_OK; i++)
            st = exchange(comm, -1, 0, -1);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        report(comm, "collective with a dead peer", st);
        printf("rank %d failed after %.1f s\n", me,
               (double)(t1.tv_sec - t0.tv_sec) +
                   (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
        rc = st == MOX_OK;
    } else if (strcmp(mode, "stall") == 0) {
        if (me == victim) {
            sleep(20); /* bounded: longer than the others' MOX_TIMEOUT */
            return 0;
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        st = exchange(comm, -1, 0, -1);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (double)(t1.tv_sec - t0.tv_sec) +
                      (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        report(comm, "collective with a stalled peer", st);
        printf("rank %d failed after %.1f s\n", me, secs);
        /* A rank that timed out leaves; its neighbours may then see it gone
         * (MOX_ERR_PEER) before their own timeout: both are clear. Either
         * must come within td_stall_limit_s, long before the victim leaves
         * (20 s): another rank giving up must not restart the clock. */
        rc = (st != MOX_ERR_TIMEOUT && st != MOX_ERR_PEER) ||
             secs >= td_stall_limit_s();
        if (secs >= td_stall_limit_s())
            printf("rank %d: %.1f s is past the limit of %.1f s\n", me, secs,
                   td_stall_limit_s());
    } else if (strcmp(mode, "late") == 0) {
        if (me == victim) {
            struct timespec late = {late_ms / 1000, late_ms % 1000 * 1000000L};
            nanosleep(&late, NULL);
        }
        coll = "a2a";
        st = exchange(comm, -1, 0, -1);
        if (st != MOX_OK)
            report(comm, "alltoallv with a late rank", st);
        int bad = st == MOX_OK ? check_received() : 0;
        mox_stats_t stats = {.struct_size = sizeof stats};
        if (st == MOX_OK && !bad && mox_comm_stats(comm, &stats) == MOX_OK)
            printf("MOXTEST ok rank %d inter_bytes %" PRIu64 "\n", me,
                   stats.bytes_inter);
        rc = st != MOX_OK || bad;
    } else if (strcmp(mode, "fails") == 0) {
        st = exchange(comm, -1, 0, -1);
        report(comm, "collective that must fail", st);
        rc = st == MOX_OK;
    } else if (strcmp(mode, "direct-differs") == 0) {
        st = exchange(comm, -1, 0, -1);
        report(comm, "alltoallv with MOX_ALLTOALLV_DIRECT differing", st);
        rc = me == victim && st == MOX_OK; /* it must see the difference */
    } else if (strcmp(mode, "mismatch") == 0 ||
               strcmp(mode, "zero-recv") == 0) {
        st = exchange(comm, victim, from, mode[0] == 'm' ? 101 : 0);
        if (st != MOX_OK)
            report(comm, "alltoallv with mismatched counts", st);
        /* Only the victim must fail; others may finish or fail. */
        rc = me == victim ? st != MOX_ERR_MISMATCH : 0;
    }
    mox_comm_destroy(comm);
    return rc;
}
