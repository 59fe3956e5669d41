/*
 * mox inside an MPI program (run under `mox-run --mpi`, i.e. Open MPI's
 * mpirun): bootstraps either through a host OOB allgather built on
 * MPI_Allgather (--oob) or through PMIx (--pmix, mox_comm_create(NULL)),
 * checks that mox and MPI agree on ranks and nodes, and runs a checked
 * alltoallv. Prints "MOXTEST ok rank R inter_bytes N".
 */
#include "mox/mox.h"
#include "testdata.h"

#include <inttypes.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int oob_allgather(void *ctx, const void *sendbuf, void *recvbuf,
                         size_t bytes)
{
    MPI_Comm comm = *(MPI_Comm *)ctx;
    return MPI_Allgather(sendbuf, (int)bytes, MPI_BYTE, recvbuf, (int)bytes,
                         MPI_BYTE, comm) != MPI_SUCCESS;
}

static int check_alltoallv(mox_comm_t comm, int me, int P)
{
    uint64_t *v = calloc(4 * (size_t)P, sizeof *v);
    uint64_t *sc = v, *sd = v + P, *rc = v + 2 * P, *rd = v + 3 * P, st = 0,
             rt = 0;
    for (int j = 0; j < P; j++) {
        sc[j] = td_count(77, 0, me, j, 5000, 20);
        rc[j] = td_count(77, 0, j, me, 5000, 20);
        sd[j] = st;
        rd[j] = rt;
        st += sc[j];
        rt += rc[j];
    }
    char *sb = malloc(st + 1), *rb = malloc(rt + 1);
    for (int j = 0; j < P; j++)
        td_fill(77, 0, me, j, sb + sd[j], sc[j]);
    mox_status_t s = mox_alltoallv(comm, sb, sc, sd, rb, rc, rd, 1);
    int bad = s != MOX_OK;
    if (bad)
        fprintf(stderr, "rank %d: %s: %s\n", me, mox_status_name(s),
                mox_comm_last_error(comm));
    for (int j = 0; j < P && !bad; j++)
        if (td_check(77, 0, j, me, rb + rd[j], rc[j]) >= 0) {
            fprintf(stderr, "rank %d: block from %d wrong\n", me, j);
            bad = 1;
        }
    free(sb);
    free(rb);
    free(v);
    return bad;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int me, P, pmix = argc > 1 && !strcmp(argv[1], "--pmix");
    MPI_Comm world = MPI_COMM_WORLD, shared;
    MPI_Comm_rank(world, &me);
    MPI_Comm_size(world, &P);
    mox_comm_params_t params = {.struct_size = sizeof params,
                                .oob_allgather = oob_allgather,
                                .oob_ctx = &world,
                                .oob_rank = me,
                                .oob_size = P};
    mox_comm_t comm;
    mox_status_t st = mox_comm_create(pmix ? NULL : &params, &comm);
    int bad = st != MOX_OK;
    if (!bad && (mox_comm_rank(comm) != me || mox_comm_size(comm) != P)) {
        fprintf(stderr, "rank %d: mox says rank %d of %d\n", me,
                mox_comm_rank(comm), mox_comm_size(comm));
        bad = 1;
    }
    /* Same nodes as MPI's shared-memory split. */
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &shared);
    int lsize, lrank;
    MPI_Comm_size(shared, &lsize);
    MPI_Comm_rank(shared, &lrank);
    mox_topo_info_t t = {.struct_size = sizeof t};
    if (!bad && (mox_comm_topo(comm, &t) != MOX_OK || t.local_size != lsize ||
                 t.local_rank != lrank)) {
        fprintf(stderr, "rank %d: mox local %d/%d, MPI %d/%d\n", me,
                t.local_rank, t.local_size, lrank, lsize);
        bad = 1;
    }
    if (!bad)
        bad = check_alltoallv(comm, me, P);
    mox_stats_t s = {.struct_size = sizeof s};
    if (!bad) {
        mox_comm_stats(comm, &s);
        printf("rank %d bootstrapped through %s\nMOXTEST ok rank %d "
               "inter_bytes %" PRIu64 "\n", me, pmix ? "pmix" : "oob", me,
               s.bytes_inter);
    }
    mox_comm_destroy(comm);
    MPI_Comm_free(&shared);
    MPI_Finalize();
    return bad;
}
