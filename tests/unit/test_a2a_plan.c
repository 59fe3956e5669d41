/* Rail plan of the hierarchical alltoallv: every remote rank is served
 * exactly once, by the rank its receive is posted for, along rails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "core/a2a_plan.h"

/* Topology from node sizes, ranks in contiguous blocks (as mox-run) or
 * interleaved (round robin). */
static void make_topo(const int *sizes, int nnodes, int interleave,
                      mox__topo_t *t)
{
    char keys[64][16];
    int total = 0, left[16];
    for (int n = 0; n < nnodes; n++)
        total += left[n] = sizes[n];
    int r = 0;
    if (interleave) {
        while (r < total)
            for (int n = 0; n < nnodes; n++)
                if (left[n]-- > 0)
                    snprintf(keys[r++], 16, "node%d", n);
    } else {
        for (int n = 0; n < nnodes; n++)
            for (int k = 0; k < sizes[n]; k++)
                snprintf(keys[r++], 16, "node%d", n);
    }
    assert_int_equal(mox__topo_group(&keys[0][0], 16, total, t), MOX_OK);
}

static void check_plan(const int *sizes, int nnodes, int interleave)
{
    mox__topo_t t;
    make_topo(sizes, nnodes, interleave, &t);
    for (int node = 0; node < t.num_nodes; node++) {
        int L = mox__topo_local_size(&t, node);
        int off[65], dests[64], seen[64] = {0};
        mox__a2a_rail_plan(&t, node, off, dests);
        assert_int_equal(off[0], 0);
        assert_int_equal(off[L], t.size - L);
        for (int i = 0; i < L; i++) {
            int agg = mox__topo_rank_at(&t, node, i);
            for (int k = off[i]; k < off[i + 1]; k++) {
                int d = dests[k];
                assert_int_not_equal(t.node_of[d], node);
                seen[d]++;
                /* The destination expects the data from this very rank. */
                assert_int_equal(mox__a2a_aggregator(&t, node, d), agg);
                /* Rails: same local index when the source node is big
                 * enough. */
                if (t.local_of[d] < L)
                    assert_int_equal(t.local_of[d], i);
                if (k > off[i])
                    assert_true(dests[k - 1] < d);
            }
        }
        for (int d = 0; d < t.size; d++)
            assert_int_equal(seen[d], t.node_of[d] == node ? 0 : 1);
    }
    mox__topo_free(&t);
}

static void even_nodes_use_rails(void **state)
{
    const int two_by_four[] = {4, 4}, four_by_two[] = {2, 2, 2, 2};
    check_plan(two_by_four, 2, 0);
    check_plan(four_by_two, 4, 0);
}

static void uneven_nodes_are_covered(void **state)
{
    const int a[] = {3, 5}, b[] = {5, 3}, c[] = {1, 3, 1}, d[] = {7, 1};
    check_plan(a, 2, 0);
    check_plan(b, 2, 0);
    check_plan(c, 3, 0);
    check_plan(d, 2, 0);
}

static void interleaved_ranks_are_covered(void **state)
{
    const int a[] = {4, 4}, b[] = {3, 5};
    check_plan(a, 2, 1);
    check_plan(b, 2, 1);
}

static void one_node_has_nothing_to_forward(void **state)
{
    const int a[] = {8};
    mox__topo_t t;
    int off[9], dests[8];
    make_topo(a, 1, 0, &t);
    mox__a2a_rail_plan(&t, 0, off, dests);
    for (int i = 0; i <= 8; i++)
        assert_int_equal(off[i], 0);
    mox__topo_free(&t);
}

static void small_node_spreads_big_node(void **state)
{
    /* Node 0 has 2 ranks, node 1 has 6: each of node 0's ranks serves 3. */
    const int a[] = {2, 6};
    mox__topo_t t;
    int off[3], dests[8];
    make_topo(a, 2, 0, &t);
    mox__a2a_rail_plan(&t, 0, off, dests);
    assert_int_equal(off[1] - off[0], 3);
    assert_int_equal(off[2] - off[1], 3);
    assert_int_equal(dests[0], 2); /* local 0 of node 1 */
    assert_int_equal(dests[1], 4); /* local 2 */
    assert_int_equal(dests[2], 6); /* local 4 */
    mox__topo_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(even_nodes_use_rails),
        cmocka_unit_test(uneven_nodes_are_covered),
        cmocka_unit_test(interleaved_ranks_are_covered),
        cmocka_unit_test(one_node_has_nothing_to_forward),
        cmocka_unit_test(small_node_spreads_big_node),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
