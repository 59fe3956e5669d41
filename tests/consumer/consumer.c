/*
 * A host program outside the mox tree: links libmox for the version calls,
 * finds the plugin through the loader (MOX_PLUGIN, default libmox.so) and
 * runs a checked alltoallv through the v1 table. Run it under mox-run.
 * Prints "consumer ok rank R" on success.
 */
#include "mox/mox.h"
#include "mox_loader.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    int maj, min, pat;
    const char *v = mox_version(&maj, &min, &pat);
    char hdr[32];
    snprintf(hdr, sizeof hdr, "%d.%d.%d", MOX_VERSION_MAJOR, MOX_VERSION_MINOR,
             MOX_VERSION_PATCH);
    if (strcmp(v, hdr) != 0 || maj != MOX_VERSION_MAJOR ||
        min != MOX_VERSION_MINOR || pat != MOX_VERSION_PATCH) {
        fprintf(stderr, "consumer: header %s, library %s\n", hdr, v);
        return 1;
    }
    mox_loader_t ld;
    char err[2048];
    if (mox_loader_open(&ld, NULL, err, sizeof err) != MOX_LOADER_OK) {
        fprintf(stderr, "consumer: %s\n", err);
        return 1;
    }
    const mox_plugin_v1_t *t = &ld.v1;
    mox_v1_comm_t comm;
    if (t->init(NULL) != 0 || t->comm_create(NULL, &comm, err, sizeof err)) {
        fprintf(stderr, "consumer: comm_create: %s\n", err);
        return 1;
    }
    int P = t->comm_size(comm), me = t->comm_rank(comm);
    /* Rank s sends rank d (s + 1) * (d + 1) ints of value 1000 s + d. */
    uint64_t *c = calloc(4 * (size_t)P, sizeof *c);
    uint64_t *sc = c, *sd = c + P, *rc = c + 2 * P, *rd = c + 3 * P, so = 0, ro = 0;
    for (int j = 0; j < P; j++) {
        sc[j] = (uint64_t)(me + 1) * (j + 1);
        rc[j] = (uint64_t)(j + 1) * (me + 1);
        sd[j] = so;
        rd[j] = ro;
        so += sc[j];
        ro += rc[j];
    }
    int *sb = malloc(so * sizeof *sb), *rb = malloc(ro * sizeof *rb);
    for (int j = 0; j < P; j++)
        for (uint64_t i = 0; i < sc[j]; i++)
            sb[sd[j] + i] = 1000 * me + j;
    mox_v1_req_t req;
    int st = t->ialltoallv(comm, (mox_v1_cbuf_t){sb, MOX_V1_MEM_HOST, 0}, sc,
                           sd, (mox_v1_buf_t){rb, MOX_V1_MEM_HOST, 0}, rc, rd,
                           sizeof(int), &req);
    if (st == 0)
        st = t->req_wait(req);
    t->req_free(req);
    int bad = st != 0;
    for (int j = 0; j < P && !bad; j++)
        for (uint64_t i = 0; i < rc[j]; i++)
            bad |= rb[rd[j] + i] != 1000 * j + me;
    if (bad)
        fprintf(stderr, "consumer: rank %d: alltoallv %s\n", me,
                st ? t->strerror(st) : "delivered wrong data");
    else
        printf("consumer ok rank %d of %d: %s %s via %s (%s), header %s\n", me,
               P, t->name, t->version, ld.path, ld.symbol, hdr);
    t->comm_destroy(comm);
    t->finalize();
    mox_loader_close(&ld);
    free(sb);
    free(rb);
    free(c);
    return bad;
}
