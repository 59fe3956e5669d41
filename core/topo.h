/* Topology: which ranks share a node, local ranks, NUMA node, NIC. */
#ifndef MOX_CORE_TOPO_H
#define MOX_CORE_TOPO_H

#include <stddef.h>
#include "mox/mox.h"

#define MOX_NODE_KEY_LEN 96

typedef struct {
    int size;            /* ranks */
    int num_nodes;
    int *node_of;        /* [size]  node of each rank */
    int *local_of;       /* [size]  local rank of each rank */
    int *node_off;       /* [num_nodes+1]  CSR offsets into node_ranks */
    int *node_ranks;     /* [size]  ranks of node n: node_ranks[node_off[n]..] */
} mox__topo_t;

/*
 * Group ranks into nodes by key (`keys` holds size keys of `key_len`
 * bytes, NUL-terminated within). Nodes are numbered in order of their
 * lowest rank; local ranks follow global rank order. Pure function.
 */
mox_status_t mox__topo_group(const char *keys, size_t key_len, int size,
                             mox__topo_t *topo);
void mox__topo_free(mox__topo_t *topo);

static inline int mox__topo_local_size(const mox__topo_t *t, int node)
{
    return t->node_off[node + 1] - t->node_off[node];
}
/* Rank of local rank `local` on node `node`. */
static inline int mox__topo_rank_at(const mox__topo_t *t, int node, int local)
{
    return t->node_ranks[t->node_off[node] + local];
}

/* This process's node key: MOX_NODE_ID if set, else hostname:ipc-ns-inode. */
void mox__topo_node_key(const char *node_id_override, char *key,
                        size_t key_len);

/* NUMA node of the CPU this process runs on (-1 when unknown); nearest RDMA
 * NIC (libibverbs) and its rate in Mbit/s from sysfs ("" / 0 when none). */
int mox__topo_numa_node(void);
void mox__topo_nic(int numa_node, char *name, size_t name_len,
                   int *rate_mbps);

#endif
