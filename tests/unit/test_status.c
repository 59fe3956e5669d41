/* Status table: names, texts, uniqueness. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "mox/mox.h"

static const int values[] = {
#define V_(name, value, text) value,
    MOX_STATUS_TABLE(V_)
#undef V_
};
#define NSTATUS (sizeof values / sizeof values[0])

static void names_and_texts_match_the_table(void **state)
{
    assert_string_equal(mox_status_name(MOX_OK), "MOX_OK");
    assert_string_equal(mox_strerror(MOX_OK), "success");
    assert_string_equal(mox_status_name(MOX_ERR_TIMEOUT), "MOX_ERR_TIMEOUT");
    assert_string_equal(mox_strerror(MOX_ERR_MISMATCH),
                        "ranks disagree on counts or arguments");
}

static void values_are_unique_and_stable(void **state)
{
    for (size_t i = 0; i < NSTATUS; i++)
        for (size_t j = i + 1; j < NSTATUS; j++)
            assert_int_not_equal(values[i], values[j]);
    /* Released values never change. */
    assert_int_equal(MOX_OK, 0);
    assert_int_equal(MOX_ERR_INVALID_ARG, -1);
    assert_int_equal(MOX_ERR_TIMEOUT, -3);
    assert_int_equal(MOX_ERR_COMM_FAILED, -14);
}

static void unknown_values_get_a_text(void **state)
{
    assert_string_equal(mox_strerror((mox_status_t)-9999), "unknown status");
    assert_string_equal(mox_status_name((mox_status_t)77),
                        "MOX_STATUS_UNKNOWN");
    for (size_t i = 0; i < NSTATUS; i++)
        assert_string_not_equal(mox_strerror((mox_status_t)values[i]),
                                "unknown status");
}

static void version_agrees_with_macros(void **state)
{
    int a, b, c;
    const char *s = mox_version(&a, &b, &c);
    assert_int_equal(a, MOX_VERSION_MAJOR);
    assert_int_equal(b, MOX_VERSION_MINOR);
    assert_int_equal(c, MOX_VERSION_PATCH);
    assert_string_equal(s, MOX_VERSION_STRING);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(names_and_texts_match_the_table),
        cmocka_unit_test(values_are_unique_and_stable),
        cmocka_unit_test(unknown_values_get_a_text),
        cmocka_unit_test(version_agrees_with_macros),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
