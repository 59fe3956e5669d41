/* mox_info: version, topology and configuration of mox. */
#include "core/comm.h"
#include "core/config.h"
#include "transports/ucx/ucx.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mox_info [-v] [-c] [--topo] [-h]\n"
            "  -v, --version  mox version, UCX version and transports found\n"
            "  -c, --config   every MOX_* variable: default, current value, "
            "doc\n"
            "  -t, --topo     topology of this rank; run under mox-run (or "
            "mpirun)\n"
            "                 to print every rank's, one line each\n"
            "  -h, --help     this text\n");
}

static void print_version(void)
{
    printf("mox %s (ABI v1)\n", mox_version(NULL, NULL, NULL));
    printf("UCX %s\n", mox__ucx_version());
    char buf[4096];
    mox__ucx_list_transports(buf, sizeof buf);
    printf("UCX transports: %s\n", buf);
    printf("mox transports: self, shm, ucx\n");
}

static const char *type_name(mox__cfg_type_t t)
{
    switch (t) {
    case MOX_CFG_INT: return "int";
    case MOX_CFG_SIZE: return "size";
    case MOX_CFG_STRING: return "string";
    case MOX_CFG_ENUM: return "enum";
    case MOX_CFG_BOOL: return "bool";
    }
    return "?";
}

static int print_config(void)
{
    int bad = 0;
    for (size_t i = 0; i < mox__cfg_count; i++) {
        const mox__cfg_entry_t *e = &mox__cfg_entries[i];
        const char *cur = getenv(e->name);
        printf("%s\n", e->name);
        printf("    %s\n", e->doc);
        printf("    type: %s%s%s, default: %s", type_name(e->type),
               e->choices ? " " : "", e->choices ? e->choices : "",
               e->def[0] ? e->def : "(empty)");
        if (cur) {
            int64_t v;
            char err[256];
            int ok = mox__config_parse(e, cur, &v, err, sizeof err) == MOX_OK;
            printf(", current: %s%s%s", cur, ok ? "" : "  <-- ",
                   ok ? "" : err);
            bad |= !ok;
        }
        printf("\n");
    }
    extern char **environ;
    const char *unknown = mox__config_unknown(environ);
    if (unknown)
        printf("warning: %s is not a mox variable\n", unknown);
    return bad;
}

static int print_topo(void)
{
    mox_comm_t comm;
    mox_status_t st = mox_comm_create(NULL, &comm);
    if (st != MOX_OK) {
        fprintf(stderr, "mox_info: cannot create a communicator: %s\n",
                mox_strerror(st));
        return 1;
    }
    mox_topo_info_t t = {.struct_size = sizeof t};
    mox_comm_topo(comm, &t);
    /* Print in rank order: each rank waits for its turn. */
    for (int r = 0; r < t.size; r++) {
        if (r == t.rank) {
            printf("rank %d/%d node %d/%d local %d/%d numa %d nic %s "
                   "rate %d Mbit/s key %s\n", t.rank, t.size, t.node_id,
                   t.num_nodes, t.local_rank, t.local_size, t.numa_node,
                   t.nic[0] ? t.nic : "(none)", t.nic_rate_mbps, t.node_key);
            fflush(stdout);
        }
        mox_barrier(comm);
    }
    mox_comm_destroy(comm);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"version", no_argument, 0, 'v'},
                                         {"config", no_argument, 0, 'c'},
                                         {"topo", no_argument, 0, 't'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int v = 0, c = 0, t = 0, o;
    while ((o = getopt_long(argc, argv, "vcth", opts, NULL)) != -1) {
        switch (o) {
        case 'v': v = 1; break;
        case 'c': c = 1; break;
        case 't': t = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mox_info: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!v && !c && !t)
        v = 1;
    int rc = 0;
    if (v)
        print_version();
    if (c)
        rc |= print_config();
    if (t)
        rc |= print_topo();
    return rc;
}
