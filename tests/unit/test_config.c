/* Configuration table: parsing of good and bad values, unknown variables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "core/config.h"

static const char *fake_env[16][2];

static const char *fake_lookup(const char *name)
{
    for (int i = 0; i < 16 && fake_env[i][0]; i++)
        if (strcmp(fake_env[i][0], name) == 0)
            return fake_env[i][1];
    return NULL;
}

static void set_env(int i, const char *name, const char *value)
{
    fake_env[i][0] = name;
    fake_env[i][1] = value;
    fake_env[i + 1][0] = NULL;
}

static void defaults_come_from_the_table(void **state)
{
    mox__config_t cfg;
    char err[256];
    fake_env[0][0] = NULL;
    assert_int_equal(mox__config_load(&cfg, fake_lookup, err, sizeof err),
                     MOX_OK);
    assert_int_equal(cfg.timeout_ms, 60000);
    assert_int_equal(cfg.shm_slot_bytes, 64 * 1024);
    assert_int_equal(cfg.log_level, 1); /* warn */
    assert_string_equal(cfg.net_tls_str, "^sm,self");
    assert_int_equal(cfg.stats, 0);
}

static void good_values_are_parsed(void **state)
{
    mox__config_t cfg;
    char err[256];
    set_env(0, "MOX_TIMEOUT", "1500");
    set_env(1, "MOX_SHM_SLOT_SIZE", "1M");
    set_env(2, "MOX_ALLTOALLV_ALGO", "HIER");
    set_env(3, "MOX_STATS", "yes");
    set_env(4, "MOX_LOG_LEVEL", "debug");
    assert_int_equal(mox__config_load(&cfg, fake_lookup, err, sizeof err),
                     MOX_OK);
    assert_int_equal(cfg.timeout_ms, 1500);
    assert_int_equal(cfg.shm_slot_bytes, 1 << 20);
    assert_int_equal(cfg.alltoallv_algo, 2);
    assert_int_equal(cfg.stats, 1);
    assert_int_equal(cfg.log_level, 3);
}

static void expect_bad(const char *name, const char *value, const char *want)
{
    mox__config_t cfg;
    char err[256] = "";
    set_env(0, name, value);
    assert_int_equal(mox__config_load(&cfg, fake_lookup, err, sizeof err),
                     MOX_ERR_CONFIG);
    /* The message names the variable and the value. */
    assert_non_null(strstr(err, name));
    assert_non_null(strstr(err, value));
    assert_non_null(strstr(err, want));
}

static void bad_values_name_variable_and_value(void **state)
{
    expect_bad("MOX_TIMEOUT", "soon", "integer");
    expect_bad("MOX_TIMEOUT", "5", "out of range");
    expect_bad("MOX_TIMEOUT", "12x", "integer");
    expect_bad("MOX_SHM_SLOT_SIZE", "64q", "byte size");
    expect_bad("MOX_SHM_SLOT_SIZE", "1k", "out of range");
    expect_bad("MOX_ALLTOALLV_ALGO", "ring", "pairwise");
    expect_bad("MOX_STATS", "maybe", "boolean");
    expect_bad("MOX_LOG_LEVEL", "loud", "debug");
}

static void sizes_parse_with_suffixes(void **state)
{
    assert_int_equal(mox__parse_size("4096"), 4096);
    assert_int_equal(mox__parse_size("64k"), 65536);
    assert_int_equal(mox__parse_size("64KB"), 65536);
    assert_int_equal(mox__parse_size("2G"), (int64_t)2 << 30);
    assert_int_equal(mox__parse_size(""), -1);
    assert_int_equal(mox__parse_size("-1"), -1);
    assert_int_equal(mox__parse_size("k"), -1);
    assert_int_equal(mox__parse_size("99999999999999999999"), -1);
    assert_int_equal(mox__parse_size("9999999999999T"), -1);
}

static void unknown_mox_variables_are_found(void **state)
{
    char *env1[] = {"PATH=/bin", "MOX_TIMEOUT=5", "MOX_TIMOUT=5", NULL};
    assert_string_equal(mox__config_unknown(env1), "MOX_TIMOUT");
    char *env2[] = {"MOX_TIMEOUT=5", "MOX_LOCAL_RANK=1", "HOME=/", NULL};
    assert_null(mox__config_unknown(env2));
    /* A prefix of a known name is not that name. */
    char *env3[] = {"MOX_TIME=5", NULL};
    assert_string_equal(mox__config_unknown(env3), "MOX_TIME");
}

static void every_entry_has_a_doc_and_a_valid_default(void **state)
{
    for (size_t i = 0; i < mox__cfg_count; i++) {
        const mox__cfg_entry_t *e = &mox__cfg_entries[i];
        int64_t v;
        char err[256];
        assert_true(strncmp(e->name, "MOX_", 4) == 0);
        assert_true(strlen(e->doc) > 10);
        assert_int_equal(mox__config_parse(e, e->def, &v, err, sizeof err),
                         MOX_OK);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_come_from_the_table),
        cmocka_unit_test(good_values_are_parsed),
        cmocka_unit_test(bad_values_name_variable_and_value),
        cmocka_unit_test(sizes_parse_with_suffixes),
        cmocka_unit_test(unknown_mox_variables_are_found),
        cmocka_unit_test(every_entry_has_a_doc_and_a_valid_default),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
