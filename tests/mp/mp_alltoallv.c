/*
 * Multi-process alltoallv check, run under tools/mox-run. Every rank
 * regenerates every other rank's counts and data from the seed, so no rank
 * trusts another: each received byte is compared with td_fill's.
 *
 * Prints one line per rank "MOXTEST ok rank R inter_bytes N intra_bytes N"
 * on success; exits 1 with the first wrong byte otherwise.
 */
#include "mox/mox.h"
#include "testdata.h"

#include <dirent.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef struct {
    uint64_t seed, iters, max_count, min_total_bytes;
    int zero_pct, elem_bytes, alltoall, nonblocking;
    int silent_rank; /* this rank sends nothing (-1: none) */
    long expect_rcvbuf; /* SO_RCVBUF of every connection to another node */
    long expect_direct; /* MOX_ALLTOALLV_DIRECT in force (-1: no check) */
} opts_t;

static void usage(FILE *f)
{
    fprintf(f, "usage: mp_alltoallv [--seed S] [--iters N] [--max-count C]\n"
               "  [--zero-pct P] [--elem-bytes B] [--silent-rank R]\n"
               "  [--min-total-bytes B] [--alltoall] [--nonblocking]\n"
               "  [--expect-rcvbuf B] [--expect-direct B]\n"
               "--expect-rcvbuf: after the run, at least one connected TCP\n"
               "socket per rank on another node has SO_RCVBUF == B (the\n"
               "kernel's value, twice what was set), and none has grown\n"
               "past B or the kernel's initial size (tcp_rmem), as an\n"
               "autotuned one does after traffic.\n"
               "--expect-direct: MOX_ALLTOALLV_DIRECT is B (0: off); after\n"
               "each call this rank sent exactly one message to another\n"
               "node per block of at least B bytes there plus one per\n"
               "other node (its rail's aggregated message), by\n"
               "mox_comm_stats (equal node sizes only).\n"
               "Checks alltoall(v) results against seeded data; run it "
               "under tools/mox-run.\n");
}

static int parse(int argc, char **argv, opts_t *o)
{
    static const struct option lo[] = {
        {"seed", 1, 0, 's'},       {"iters", 1, 0, 'i'},
        {"max-count", 1, 0, 'c'},  {"zero-pct", 1, 0, 'z'},
        {"elem-bytes", 1, 0, 'e'}, {"silent-rank", 1, 0, 'r'},
        {"min-total-bytes", 1, 0, 't'}, {"alltoall", 0, 0, 'a'},
        {"nonblocking", 0, 0, 'n'}, {"expect-rcvbuf", 1, 0, 'b'},
        {"expect-direct", 1, 0, 'd'},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    *o = (opts_t){1, 3, 1000, 0, 20, 4, 0, 0, -1, 0, -1};
    int c;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case 's': o->seed = strtoull(optarg, NULL, 0); break;
        case 'i': o->iters = strtoull(optarg, NULL, 0); break;
        case 'c': o->max_count = strtoull(optarg, NULL, 0); break;
        case 'z': o->zero_pct = atoi(optarg); break;
        case 'e': o->elem_bytes = atoi(optarg); break;
        case 'r': o->silent_rank = atoi(optarg); break;
        case 't': o->min_total_bytes = strtoull(optarg, NULL, 0); break;
        case 'a': o->alltoall = 1; break;
        case 'n': o->nonblocking = 1; break;
        case 'b': o->expect_rcvbuf = atol(optarg); break;
        case 'd': o->expect_direct = atol(optarg); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); return -1;
        }
    }
    return o->elem_bytes > 0 ? 0 : -1;
}

/* Elements src sends dst in iteration `it` (every rank computes the same). */
/* Connected IPv4 TCP sockets of this process: how many have SO_RCVBUF ==
 * want, and the largest SO_RCVBUF among them. */
static void tcp_rcvbufs(long want, int *n_want, long *max)
{
    *n_want = 0;
    *max = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        int fd = atoi(e->d_name), type = 0, rb = 0;
        socklen_t len = sizeof type;
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        if (e->d_name[0] == '.' || fd == dirfd(d) ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 ||
            type != SOCK_STREAM ||
            getpeername(fd, (struct sockaddr *)&peer, &plen) != 0 ||
            peer.sin_family != AF_INET)
            continue;
        len = sizeof rb;
        if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, &len) != 0)
            continue;
        *n_want += rb == want;
        *max = rb > *max ? rb : *max;
    }
    closedir(d);
}

static uint64_t count_of(const opts_t *o, uint64_t it, int src, int dst)
{
    if (src == o->silent_rank)
        return 0;
    if (o->alltoall)
        return td_count(o->seed, it, 0, 0, o->max_count, 0);
    return td_count(o->seed, it, src, dst, o->max_count, o->zero_pct);
}

static int run_iter(mox_comm_t comm, const opts_t *o, uint64_t it,
                    uint64_t *moved)
{
    int P = mox_comm_size(comm), me = mox_comm_rank(comm);
    size_t eb = (size_t)o->elem_bytes;
    uint64_t *v = calloc(4 * (size_t)P, sizeof *v);
    uint64_t *sc = v, *sd = v + P, *rc = v + 2 * P, *rd = v + 3 * P;
    uint64_t stot = 0, rtot = 0;
    /* Blocks in reverse rank order with gaps, so displacements matter. */
    for (int j = P - 1; j >= 0; j--) {
        sc[j] = count_of(o, it, me, j);
        rc[j] = count_of(o, it, j, me);
        sd[j] = stot;
        rd[j] = rtot;
        stot += sc[j] + 1;
        rtot += rc[j] + 1;
    }
    char *sb = malloc(stot * eb + 1), *rb = malloc(rtot * eb + 1);
    for (int j = 0; j < P; j++)
        td_fill(o->seed, it, me, j, sb + sd[j] * eb, sc[j] * eb);
    memset(rb, 0xA5, rtot * eb);
    mox_status_t st;
    if (o->alltoall) {
        /* Equal blocks: contiguous layout as MPI_Alltoall. */
        uint64_t n = sc[0];
        char *s2 = malloc(n * P * eb + 1), *r2 = malloc(n * P * eb + 1);
        for (int j = 0; j < P; j++)
            memcpy(s2 + j * n * eb, sb + sd[j] * eb, n * eb);
        st = mox_alltoall(comm, s2, r2, n, eb);
        for (int j = 0; j < P; j++)
            memcpy(rb + rd[j] * eb, r2 + j * n * eb, n * eb);
        free(s2);
        free(r2);
    } else if (o->nonblocking) {
        mox_req_t req;
        int done = 0;
        st = mox_ialltoallv(comm, sb, sc, sd, rb, rc, rd, eb, &req);
        for (uint64_t polls = 0; st == MOX_OK && !done; polls++)
            st = mox_test(req, &done);
        mox_req_free(req);
    } else {
        st = mox_alltoallv(comm, sb, sc, sd, rb, rc, rd, eb);
    }
    int bad = 0;
    if (st != MOX_OK) {
        fprintf(stderr, "rank %d iter %" PRIu64 ": alltoallv failed: %s: %s\n",
                me, it, mox_status_name(st), mox_comm_last_error(comm));
        bad = 1;
    }
    if (!bad && o->expect_direct >= 0) {
        /* Nodes are contiguous blocks of L ranks; with equal sizes each
         * rank aggregates for one rank of every other node. */
        mox_topo_info_t t = {.struct_size = sizeof t};
        mox_stats_t ms = {.struct_size = sizeof ms};
        mox_comm_topo(comm, &t);
        mox_comm_stats(comm, &ms);
        int L = t.local_size;
        uint64_t want = (uint64_t)t.num_nodes - 1;
        for (int j = 0; j < P; j++)
            if (j / L != me / L && o->expect_direct > 0 &&
                sc[j] * eb >= (uint64_t)o->expect_direct)
                want++;
        if (P != L * t.num_nodes) {
            fprintf(stderr, "--expect-direct needs equal node sizes\n");
            bad = 1;
        } else if (ms.last_msgs_inter != want) {
            fprintf(stderr, "rank %d iter %" PRIu64 ": sent %" PRIu64
                    " messages to other nodes, expected %" PRIu64 "\n", me,
                    it, ms.last_msgs_inter, want);
            bad = 1;
        }
    }
    for (int j = 0; j < P && !bad; j++) {
        int64_t at = td_check(o->seed, it, j, me, rb + rd[j] * eb, rc[j] * eb);
        /* The gap byte after each block must stay untouched. */
        if (at < 0 && (unsigned char)rb[(rd[j] + rc[j]) * eb] != 0xA5)
            at = (int64_t)(rc[j] * eb);
        if (at >= 0) {
            fprintf(stderr, "rank %d iter %" PRIu64 ": block from rank %d "
                    "(%" PRIu64 " elements) wrong at byte %" PRId64 "\n", me,
                    it, j, rc[j], at);
            bad = 1;
        }
    }
    *moved += (stot - (uint64_t)P) * eb;
    free(sb);
    free(rb);
    free(v);
    return bad;
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    mox_comm_t comm;
    char err[512] = "";
    mox_comm_params_t params = {.struct_size = sizeof params,
                                .error_buf = err,
                                .error_buf_len = sizeof err};
    mox_status_t st = mox_comm_create(&params, &comm);
    if (st != MOX_OK) {
        fprintf(stderr, "mox_comm_create: %s\n", err);
        return 1;
    }
    uint64_t moved = 0, job_bytes = 0;
    int bad = 0, P = mox_comm_size(comm);
    /* Every rank computes the job's total from the seed, so all ranks agree
     * on the number of iterations. */
    for (uint64_t it = 0; !bad && (it < o.iters || (o.min_total_bytes &&
                                   job_bytes < o.min_total_bytes));
         it++) {
        bad = run_iter(comm, &o, it, &moved);
        for (int s = 0; s < P; s++)
            for (int d = 0; d < P; d++)
                job_bytes += count_of(&o, it, s, d) * (uint64_t)o.elem_bytes;
    }
    if (!bad && o.expect_rcvbuf) {
        mox_topo_info_t t = {.struct_size = sizeof t};
        mox_comm_topo(comm, &t);
        int n_want, remote = P - t.local_size;
        long max;
        tcp_rcvbufs(o.expect_rcvbuf, &n_want, &max);
        long initial = 0, limit = o.expect_rcvbuf;
        FILE *f = fopen("/proc/sys/net/ipv4/tcp_rmem", "r");
        if (f && fscanf(f, "%*s %ld", &initial) == 1 && initial > limit)
            limit = initial; /* other sockets (bootstrap) may stay there */
        if (f)
            fclose(f);
        if (n_want < remote || max > limit) {
            printf("rank %d: %d connected TCP sockets with SO_RCVBUF %ld "
                   "(want at least %d, one per rank on another node), "
                   "largest %ld\n", mox_comm_rank(comm), n_want,
                   o.expect_rcvbuf, remote, max);
            bad = 1;
        }
    }
    mox_stats_t s = {.struct_size = sizeof s};
    mox_comm_stats(comm, &s);
    if (!bad)
        printf("MOXTEST ok rank %d sent_payload %" PRIu64 " inter_bytes %"
               PRIu64 " intra_bytes %" PRIu64 " job_bytes %" PRIu64 "\n",
               mox_comm_rank(comm), moved, s.bytes_inter, s.bytes_intra,
               job_bytes);
    mox_comm_destroy(comm);
    return bad;
}
