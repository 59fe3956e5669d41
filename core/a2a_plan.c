#include "a2a_plan.h"

#include <string.h>

void mox__a2a_rail_plan(const mox__topo_t *t, int node, int *dest_off,
                        int *dests)
{
    int L = mox__topo_local_size(t, node);
    memset(dest_off, 0, (size_t)(L + 1) * sizeof *dest_off);
    for (int d = 0; d < t->size; d++)
        if (t->node_of[d] != node)
            dest_off[t->local_of[d] % L + 1]++;
    for (int i = 0; i < L; i++)
        dest_off[i + 1] += dest_off[i];
    /* Counting sort keeps increasing rank order inside each group. */
    int fill[L];
    memcpy(fill, dest_off, (size_t)L * sizeof *fill);
    for (int d = 0; d < t->size; d++)
        if (t->node_of[d] != node)
            dests[fill[t->local_of[d] % L]++] = d;
}
