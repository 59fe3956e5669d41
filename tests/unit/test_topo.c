/* Unit tests of core/topo.c: grouping ranks into nodes, sysfs rate parsing,
 * node key. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/topo.h"

/* Pure parsers in topo.c, exposed for these tests only. */
int mox__topo_parse_ib_rate(const char *text);
int mox__topo_parse_net_speed(const char *text);

#define KEY_LEN 16

/* Keys from a string of one-letter node names: "ABAB" -> "A","B","A","B". */
static void make_keys(const char *names, char keys[][KEY_LEN])
{
    for (size_t i = 0; names[i] != '\0'; i++) {
        memset(keys[i], 0, KEY_LEN);
        snprintf(keys[i], KEY_LEN, "host-%c", names[i]);
    }
}

/*
 * Independent expectation: node of rank r is the number of distinct names
 * first seen before r's name was first seen; local rank is how many earlier
 * ranks share r's name.
 */
static void check_against_names(const char *names, const mox__topo_t *t)
{
    int size = (int)strlen(names);
    char seen[64] = "";
    assert_int_equal(t->size, size);
    for (int r = 0; r < size; r++) {
        const char *pos = strchr(seen, names[r]);
        if (pos == NULL) {
            size_t n = strlen(seen);
            seen[n] = names[r];
            seen[n + 1] = '\0';
            pos = seen + n;
        }
        int node = (int)(pos - seen), local = 0;
        for (int q = 0; q < r; q++)
            local += names[q] == names[r];
        assert_int_equal(t->node_of[r], node);
        assert_int_equal(t->local_of[r], local);
        assert_int_equal(mox__topo_rank_at(t, node, local), r);
    }
    assert_int_equal(t->num_nodes, (int)strlen(seen));
    for (int n = 0; n < t->num_nodes; n++) {
        int count = 0;
        for (int r = 0; r < size; r++)
            count += names[r] == seen[n];
        assert_int_equal(mox__topo_local_size(t, n), count);
    }
    assert_int_equal(t->node_off[t->num_nodes], size);
}

static void group_and_check(const char *names)
{
    char keys[64][KEY_LEN];
    mox__topo_t t;
    make_keys(names, keys);
    assert_int_equal(mox__topo_group(&keys[0][0], KEY_LEN,
                                     (int)strlen(names), &t),
                     MOX_OK);
    check_against_names(names, &t);
    mox__topo_free(&t);
}

static void test_group_one_rank_is_one_node(void **state)
{
    (void)state;
    group_and_check("A");
}

static void test_group_all_on_one_node(void **state)
{
    (void)state;
    group_and_check("AAAAAAAA");
}

static void test_group_two_even_nodes(void **state)
{
    (void)state;
    group_and_check("AAAABBBB");
}

static void test_group_uneven_three_plus_five(void **state)
{
    (void)state;
    group_and_check("AAABBBBB");
}

static void test_group_interleaved_keys(void **state)
{
    (void)state;
    group_and_check("ABAB");
    group_and_check("BABA"); /* node 0 is the one holding rank 0 */
    group_and_check("CABCAB");
}

static void test_group_one_rank_per_node(void **state)
{
    (void)state;
    group_and_check("ZYXWVUTS");
}

static void test_group_rejects_bad_input(void **state)
{
    (void)state;
    char keys[2][KEY_LEN];
    mox__topo_t t;
    make_keys("AB", keys);
    assert_int_equal(mox__topo_group(NULL, KEY_LEN, 2, &t),
                     MOX_ERR_INVALID_ARG);
    assert_int_equal(mox__topo_group(&keys[0][0], KEY_LEN, 2, NULL),
                     MOX_ERR_INVALID_ARG);
    assert_int_equal(mox__topo_group(&keys[0][0], KEY_LEN, 0, &t),
                     MOX_ERR_INVALID_ARG);
    assert_int_equal(mox__topo_group(&keys[0][0], KEY_LEN, -3, &t),
                     MOX_ERR_INVALID_ARG);
    assert_int_equal(mox__topo_group(&keys[0][0], 0, 2, &t),
                     MOX_ERR_INVALID_ARG);
    /* Rank 1's key fills its slot with no terminating NUL. */
    memset(keys[1], 'x', KEY_LEN);
    assert_int_equal(mox__topo_group(&keys[0][0], KEY_LEN, 2, &t),
                     MOX_ERR_INVALID_ARG);
}

static void test_free_accepts_empty_and_null(void **state)
{
    (void)state;
    mox__topo_t t;
    memset(&t, 0, sizeof(t));
    mox__topo_free(&t);
    mox__topo_free(NULL);
}

static void test_parse_ib_rate(void **state)
{
    (void)state;
    assert_int_equal(mox__topo_parse_ib_rate("100 Gb/sec (4X EDR)"), 100000);
    assert_int_equal(mox__topo_parse_ib_rate("200 Gb/sec (4X HDR)"), 200000);
    assert_int_equal(mox__topo_parse_ib_rate("2.5 Gb/sec (1X SDR)"), 2500);
    assert_int_equal(mox__topo_parse_ib_rate("56 Gb/sec (4X FDR)"), 56000);
    assert_int_equal(mox__topo_parse_ib_rate(""), 0);
    assert_int_equal(mox__topo_parse_ib_rate("fast"), 0);
    assert_int_equal(mox__topo_parse_ib_rate("100 Mb/sec"), 0);
    assert_int_equal(mox__topo_parse_ib_rate("-5 Gb/sec"), 0);
    assert_int_equal(mox__topo_parse_ib_rate(NULL), 0);
}

static void test_parse_net_speed(void **state)
{
    (void)state;
    assert_int_equal(mox__topo_parse_net_speed("25000\n"), 25000);
    assert_int_equal(mox__topo_parse_net_speed("1000"), 1000);
    assert_int_equal(mox__topo_parse_net_speed("-1\n"), 0); /* link down */
    assert_int_equal(mox__topo_parse_net_speed(""), 0);
    assert_int_equal(mox__topo_parse_net_speed("10G"), 0);
    assert_int_equal(mox__topo_parse_net_speed("99999999999999"), 0);
    assert_int_equal(mox__topo_parse_net_speed(NULL), 0);
}

static void test_node_key_override_and_default(void **state)
{
    (void)state;
    char key[MOX_NODE_KEY_LEN];
    mox__topo_node_key("emulated-3", key, sizeof(key));
    assert_string_equal(key, "emulated-3");
    mox__topo_node_key("", key, sizeof(key));
    /* hostname:inode of the IPC namespace */
    assert_non_null(strchr(key, ':'));
    char again[MOX_NODE_KEY_LEN];
    mox__topo_node_key(NULL, again, sizeof(again));
    assert_string_equal(key, again);
}

static void test_nic_absent_is_empty(void **state)
{
    (void)state;
    char nic[64] = "garbage";
    int rate = -7;
    mox__topo_nic(mox__topo_numa_node(), nic, sizeof(nic), &rate);
    /* Either a device with a sane rate or nothing at all. */
    if (nic[0] == '\0')
        assert_int_equal(rate, 0);
    else
        assert_true(rate >= 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_one_rank_is_one_node),
        cmocka_unit_test(test_group_all_on_one_node),
        cmocka_unit_test(test_group_two_even_nodes),
        cmocka_unit_test(test_group_uneven_three_plus_five),
        cmocka_unit_test(test_group_interleaved_keys),
        cmocka_unit_test(test_group_one_rank_per_node),
        cmocka_unit_test(test_group_rejects_bad_input),
        cmocka_unit_test(test_free_accepts_empty_and_null),
        cmocka_unit_test(test_parse_ib_rate),
        cmocka_unit_test(test_parse_net_speed),
        cmocka_unit_test(test_node_key_override_and_default),
        cmocka_unit_test(test_nic_absent_is_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
