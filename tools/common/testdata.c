#include "testdata.h"

#include <stdlib.h>
#include <string.h>

static uint64_t block_key(uint64_t seed, uint64_t iter, int src, int dst)
{
    return td_mix(seed ^ td_mix(iter * 1000003u + (uint64_t)src * 65537u +
                                (uint64_t)dst));
}

void td_fill(uint64_t seed, uint64_t iter, int src, int dst, void *buf,
             size_t bytes)
{
    uint64_t key = block_key(seed, iter, src, dst);
    unsigned char *p = buf;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        uint64_t v = td_mix(key + i);
        memcpy(p + i, &v, 8);
    }
    if (i < bytes) {
        uint64_t v = td_mix(key + i);
        memcpy(p + i, &v, bytes - i);
    }
}

int64_t td_check(uint64_t seed, uint64_t iter, int src, int dst,
                 const void *buf, size_t bytes)
{
    uint64_t key = block_key(seed, iter, src, dst);
    const unsigned char *p = buf;
    for (size_t i = 0; i < bytes; i += 8) {
        uint64_t v = td_mix(key + i);
        size_t n = bytes - i < 8 ? bytes - i : 8;
        if (memcmp(p + i, &v, n) != 0) {
            const unsigned char *e = (const unsigned char *)&v;
            for (size_t k = 0; k < n; k++)
                if (p[i + k] != e[k])
                    return (int64_t)(i + k);
        }
    }
    return -1;
}

uint64_t td_count(uint64_t seed, uint64_t iter, int src, int dst,
                  uint64_t max_count, int zero_pct)
{
    uint64_t r = td_mix(block_key(seed, iter, src, dst) ^ 0x5eed);
    if ((int)(r % 100) < zero_pct || max_count == 0)
        return 0;
    return 1 + (r >> 8) % max_count;
}

uint64_t td_pair_count(uint64_t mean, int src, int dst, int uneven)
{
    if (!uneven || mean < 2)
        return mean;
    return mean / 2 +
           td_mix(mean * 31 + (uint64_t)src * 977 + (uint64_t)dst) % (mean + 1);
}

uint64_t td_parse_bytes(const char *text)
{
    char *end;
    double v = strtod(text, &end);
    if (end == text)
        return 0;
    switch (*end) {
    case 'k': case 'K': v *= 1024; end++; break;
    case 'm': case 'M': v *= 1024 * 1024; end++; break;
    case 'g': case 'G': v *= 1024.0 * 1024 * 1024; end++; break;
    default: break;
    }
    return *end != '\0' || v < 0 ? 0 : (uint64_t)v;
}
