/*
 * Rail plan of the hierarchical alltoall(v): which rank of a node forwards
 * the node's data to a rank on another node. Pure functions of the
 * topology, shared by the algorithm and its unit test.
 *
 * Rank d = (node b, local m) is served on node a by local rank m % L_a, so
 * local rank i of one node talks to local rank i of another (one rail per
 * local index) and uneven nodes still spread the work.
 */
#ifndef MOX_CORE_A2A_PLAN_H
#define MOX_CORE_A2A_PLAN_H

#include "topo.h"

/* The rank on node `node` that forwards that node's data to `dest`. */
static inline int mox__a2a_aggregator(const mox__topo_t *t, int node,
                                      int dest)
{
    int L = mox__topo_local_size(t, node);
    return mox__topo_rank_at(t, node, t->local_of[dest] % L);
}

/*
 * Group the ranks outside `node` by the local index on `node` that serves
 * them: dests[dest_off[i] .. dest_off[i+1]) are served by local rank i, in
 * increasing rank order. dest_off has L+1 entries (L = local size of
 * `node`), dests room for size entries.
 */
void mox__a2a_rail_plan(const mox__topo_t *t, int node, int *dest_off,
                        int *dests);

#endif
