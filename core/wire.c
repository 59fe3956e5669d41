/* Encoding and checking of aggregated-message headers (wire.h). */
#include "wire.h"

#include <stdio.h>
#include <string.h>


/* FNV-1a over the header with the checksum field taken as zero. */
static uint32_t checksum(const unsigned char *p, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (i >= 24 && i < 28) ? 0 : p[i];
        h = (h ^ b) * 16777619u;
    }
    return h;
}

void mox__wire_encode(const mox__wire_hdr_t *h, const uint64_t *counts,
                      void *buf)
{
    unsigned char *p = buf;
    mox__put32(p, MOX_WIRE_MAGIC);
    p[4] = MOX_WIRE_VERSION & 0xff;
    p[5] = MOX_WIRE_VERSION >> 8;
    p[6] = (unsigned char)(h->kind & 0xff);
    p[7] = (unsigned char)(h->kind >> 8);
    mox__put64(p + 8, h->seq);
    mox__put32(p + 16, h->nsrc);
    mox__put32(p + 20, h->elem_bytes);
    mox__put32(p + 24, 0);
    mox__put32(p + 28, 0);
    for (uint32_t i = 0; i < h->nsrc; i++)
        mox__put64(p + MOX_WIRE_FIXED_BYTES + 8 * (size_t)i, counts[i]);
    mox__put32(p + 24, checksum(p, mox__wire_bytes(h->nsrc)));
}

mox_status_t mox__wire_decode(const void *buf, size_t len,
                              const mox__wire_hdr_t *expect,
                              uint64_t *counts, uint64_t payload_max,
                              uint64_t *payload_bytes, char *errbuf,
                              size_t errlen)
{
    const unsigned char *p = buf;
    if (len < MOX_WIRE_FIXED_BYTES) {
        snprintf(errbuf, errlen, "header of %zu bytes is shorter than %d",
                 len, MOX_WIRE_FIXED_BYTES);
        return MOX_ERR_PROTOCOL;
    }
    if (mox__get32(p) != MOX_WIRE_MAGIC) {
        snprintf(errbuf, errlen, "bad magic 0x%08x", mox__get32(p));
        return MOX_ERR_PROTOCOL;
    }
    unsigned version = p[4] | (unsigned)p[5] << 8;
    unsigned kind = p[6] | (unsigned)p[7] << 8;
    uint64_t seq = mox__get64(p + 8);
    uint32_t nsrc = mox__get32(p + 16), elem_bytes = mox__get32(p + 20);
    if (version != MOX_WIRE_VERSION) {
        snprintf(errbuf, errlen, "wire version %u, expected %d", version,
                 MOX_WIRE_VERSION);
        return MOX_ERR_PROTOCOL;
    }
    if (nsrc != expect->nsrc || len < mox__wire_bytes(expect->nsrc)) {
        snprintf(errbuf, errlen, "header lists %u entries in %zu bytes, "
                 "expected %u", nsrc, len, expect->nsrc);
        return MOX_ERR_PROTOCOL;
    }
    if (mox__get32(p + 24) != checksum(p, mox__wire_bytes(nsrc))) {
        snprintf(errbuf, errlen, "header checksum does not match");
        return MOX_ERR_PROTOCOL;
    }
    if (kind != expect->kind || seq != expect->seq) {
        snprintf(errbuf, errlen, "message of kind %u for collective %llu, "
                 "expected kind %u for collective %llu", kind,
                 (unsigned long long)seq, expect->kind,
                 (unsigned long long)expect->seq);
        return MOX_ERR_PROTOCOL;
    }
    if (elem_bytes != expect->elem_bytes) {
        snprintf(errbuf, errlen, "sender uses %u-byte elements, this rank "
                 "%u-byte", elem_bytes, expect->elem_bytes);
        return MOX_ERR_MISMATCH;
    }
    uint64_t total = 0;
    for (uint32_t i = 0; i < nsrc; i++) {
        uint64_t c = mox__get64(p + MOX_WIRE_FIXED_BYTES + 8 * (size_t)i);
        if (elem_bytes && c > (payload_max - total) / elem_bytes) {
            snprintf(errbuf, errlen, "entry %u counts %llu elements: more "
                     "than the %llu payload bytes allowed", i,
                     (unsigned long long)c, (unsigned long long)payload_max);
            return MOX_ERR_PROTOCOL;
        }
        total += c * elem_bytes;
        counts[i] = c;
    }
    *payload_bytes = total;
    return MOX_OK;
}
