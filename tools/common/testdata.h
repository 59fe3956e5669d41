/*
 * Seeded test data that any rank can regenerate on its own: the byte that
 * rank `src` sends to rank `dst` at offset `i` of collective `iter` is a pure
 * function of (seed, iter, src, dst, i). Receivers check against it without
 * trusting any other rank.
 */
#ifndef MOX_TOOLS_TESTDATA_H
#define MOX_TOOLS_TESTDATA_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* splitmix64: a good 64-bit mixer, independent of the library under test. */
static inline uint64_t td_mix(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/* Seconds within which a rank waiting for a stalled peer (alive, absent)
 * must fail: 1.5 x MOX_TIMEOUT (from the environment; 60 s unset) + 1 s.
 * The library restarts a request's clock only while no peer was lost, so
 * the first ranks to give up do not buy the others more time; before it
 * did, survivors took up to 3 x MOX_TIMEOUT. */
static inline double td_stall_limit_s(void)
{
    const char *v = getenv("MOX_TIMEOUT");
    double ms = v && *v ? strtod(v, NULL) : 60000.0;
    return 1.5 * ms / 1000.0 + 1.0;
}

/* Fill `bytes` bytes of the block src -> dst. */
void td_fill(uint64_t seed, uint64_t iter, int src, int dst, void *buf,
             size_t bytes);
/* Index of the first byte that differs from td_fill's, or -1. */
int64_t td_check(uint64_t seed, uint64_t iter, int src, int dst,
                 const void *buf, size_t bytes);

/* Elements rank src sends rank dst in a random sparse alltoallv: zero with
 * probability `zero_pct` percent, else uniform in [1, max_count]. */
uint64_t td_count(uint64_t seed, uint64_t iter, int src, int dst,
                  uint64_t max_count, int zero_pct);

/* Elements src sends dst in the benchmarks' exchanges of `mean` elements
 * per peer: exactly `mean`, or (uneven, alltoallv) 50..150 % of it. mox-perf
 * and the Open MPI baselines share it so both move the same traffic
 * (tools/bench/a2a-compare recomputes it for the link bound). */
uint64_t td_pair_count(uint64_t mean, int src, int dst, int uneven);

/* A byte size from the command line: "4096", "64k", "8M", "1G" (powers of
 * 1024); 0 for anything else. */
uint64_t td_parse_bytes(const char *text);

#endif
