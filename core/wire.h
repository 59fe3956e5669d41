/*
 * Headers that travel with aggregated messages. Every field read from the
 * wire is checked before use: a peer (or a bug) can send anything.
 *
 * Layout (little-endian, 32 + 8 * nsrc bytes):
 *   u32 magic "MOXW" | u16 version | u16 kind | u64 seq | u32 nsrc |
 *   u32 elem_bytes | u32 checksum (FNV-1a of everything else) | u32 pad |
 *   u64 counts[nsrc]  (elements per source or per destination)
 */
#ifndef MOX_CORE_WIRE_H
#define MOX_CORE_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include "mox/mox.h"

#define MOX_WIRE_MAGIC 0x57584f4du /* "MOXW" */
#define MOX_WIRE_VERSION 1
#define MOX_WIRE_FIXED_BYTES 32

enum {
    MOX_WIRE_A2A_GATHER = 1, /* local rank -> aggregator: counts per dest */
    MOX_WIRE_A2A_NET = 2     /* aggregator -> dest: counts per source */
};

/* Little-endian field access for headers that cross process boundaries. */
static inline void mox__put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline void mox__put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint32_t mox__get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static inline uint64_t mox__get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* FNV-1a, 64-bit, continuing from h (start with MOX_FNV64_INIT). */
#define MOX_FNV64_INIT UINT64_C(14695981039346656037)
static inline uint64_t mox__fnv64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * UINT64_C(1099511628211);
    return h;
}

typedef struct {
    uint16_t kind;
    uint64_t seq;
    uint32_t nsrc;
    uint32_t elem_bytes;
} mox__wire_hdr_t;

static inline size_t mox__wire_bytes(uint32_t nsrc)
{
    return MOX_WIRE_FIXED_BYTES + (size_t)nsrc * 8;
}

/* Write header + counts into buf (mox__wire_bytes(h->nsrc) bytes). */
void mox__wire_encode(const mox__wire_hdr_t *h, const uint64_t *counts,
                      void *buf);

/*
 * Check and read a header of `len` bytes. `expect` holds what the receiver
 * knows (kind, seq, nsrc, elem_bytes); every difference is an error with a
 * message in errbuf. counts receives nsrc values. Also checks that the
 * counts times elem_bytes add up to at most `payload_max` bytes
 * (overflow-safe); *payload_bytes gets their sum.
 */
mox_status_t mox__wire_decode(const void *buf, size_t len,
                              const mox__wire_hdr_t *expect,
                              uint64_t *counts, uint64_t payload_max,
                              uint64_t *payload_bytes, char *errbuf,
                              size_t errlen);

#endif
