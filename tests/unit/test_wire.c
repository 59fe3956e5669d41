/* Aggregated-message headers: round trip and every kind of corruption. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "core/wire.h"

static const uint64_t counts[3] = {5, 0, 1000};

static void encode(unsigned char *buf)
{
    mox__wire_hdr_t h = {MOX_WIRE_A2A_NET, 42, 3, 4};
    mox__wire_encode(&h, counts, buf);
}

static mox_status_t decode(const unsigned char *buf, size_t len,
                           uint64_t payload_max, uint64_t *out,
                           uint64_t *payload, char *err)
{
    mox__wire_hdr_t expect = {MOX_WIRE_A2A_NET, 42, 3, 4};
    return mox__wire_decode(buf, len, &expect, out, payload_max, payload, err,
                            256);
}

static void round_trip_keeps_every_count(void **state)
{
    unsigned char buf[64];
    uint64_t out[3], payload;
    char err[256];
    assert_int_equal(mox__wire_bytes(3), 56);
    encode(buf);
    assert_int_equal(decode(buf, 56, 4020, out, &payload, err), MOX_OK);
    assert_memory_equal(out, counts, sizeof counts);
    assert_int_equal(payload, 4 * 1005);
}

static void every_flipped_byte_is_caught(void **state)
{
    unsigned char good[64], buf[64];
    uint64_t out[3], payload;
    char err[256];
    encode(good);
    for (size_t i = 0; i < 56; i++) {
        if (i >= 28 && i < 32)
            continue; /* padding: not covered by the checksum */
        memcpy(buf, good, sizeof buf);
        buf[i] ^= 0x40;
        assert_int_not_equal(decode(buf, 56, UINT64_MAX, out, &payload, err),
                             MOX_OK);
        assert_true(strlen(err) > 0);
    }
}

static void short_and_oversized_messages_are_refused(void **state)
{
    unsigned char buf[64];
    uint64_t out[3], payload;
    char err[256];
    encode(buf);
    assert_int_equal(decode(buf, 10, UINT64_MAX, out, &payload, err),
                     MOX_ERR_PROTOCOL);
    assert_int_equal(decode(buf, 55, UINT64_MAX, out, &payload, err),
                     MOX_ERR_PROTOCOL);
    /* Counts claim more payload than arrived. */
    assert_int_equal(decode(buf, 56, 4019, out, &payload, err),
                     MOX_ERR_PROTOCOL);
    assert_non_null(strstr(err, "entry 2"));
}

static void counts_that_overflow_are_refused(void **state)
{
    unsigned char buf[64];
    uint64_t huge[3] = {UINT64_MAX / 2, UINT64_MAX / 2, 7};
    uint64_t out[3], payload;
    char err[256];
    mox__wire_hdr_t h = {MOX_WIRE_A2A_NET, 42, 3, 4};
    mox__wire_encode(&h, huge, buf);
    assert_int_equal(decode(buf, 56, UINT64_MAX, out, &payload, err),
                     MOX_ERR_PROTOCOL);
}

static void other_collective_or_type_is_named(void **state)
{
    unsigned char buf[64];
    uint64_t out[3], payload;
    char err[256];
    mox__wire_hdr_t h = {MOX_WIRE_A2A_NET, 43, 3, 4};
    mox__wire_encode(&h, counts, buf);
    assert_int_equal(decode(buf, 56, UINT64_MAX, out, &payload, err),
                     MOX_ERR_PROTOCOL);
    assert_non_null(strstr(err, "43"));
    h.seq = 42;
    h.elem_bytes = 8;
    mox__wire_encode(&h, counts, buf);
    assert_int_equal(decode(buf, 56, UINT64_MAX, out, &payload, err),
                     MOX_ERR_MISMATCH);
    assert_non_null(strstr(err, "8-byte"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(round_trip_keeps_every_count),
        cmocka_unit_test(every_flipped_byte_is_caught),
        cmocka_unit_test(short_and_oversized_messages_are_refused),
        cmocka_unit_test(counts_that_overflow_are_refused),
        cmocka_unit_test(other_collective_or_type_is_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
