/* Scratch buffer cache of a communicator (scratch.h). */
#include "scratch.h"
#include "comm.h"

#include <stdint.h>
#include <stdlib.h>

/* Each buffer starts with this header, one cache line, so the caller's
 * part stays 64-byte aligned. */
typedef struct {
    size_t cap; /* bytes after the header */
    char pad[64 - sizeof(size_t)];
} scratch_hdr_t;

/* Below this, malloc's own free lists already keep memory warm. */
#define SCRATCH_MIN ((size_t)64 << 10)

static scratch_hdr_t *hdr_of(void *p)
{
    return (scratch_hdr_t *)p - 1;
}

static void drop(mox__comm_t *c, int i)
{
    c->scratch.bytes -= c->scratch.cap[i];
    c->scratch.n--;
    c->scratch.buf[i] = c->scratch.buf[c->scratch.n];
    c->scratch.cap[i] = c->scratch.cap[c->scratch.n];
}

void *mox__scratch_get(mox__comm_t *c, size_t bytes)
{
    int best = -1;
    for (int i = 0; i < c->scratch.n; i++)
        if (c->scratch.cap[i] >= bytes &&
            (best < 0 || c->scratch.cap[i] < c->scratch.cap[best]))
            best = i;
    if (best >= 0) {
        void *p = c->scratch.buf[best];
        drop(c, best);
        return p;
    }
    if (bytes > SIZE_MAX - sizeof(scratch_hdr_t) - 4095)
        return NULL;
    /* Whole pages, so a slightly larger next call still fits. */
    size_t cap = bytes < SCRATCH_MIN
                     ? (bytes ? bytes : 1)
                     : ((bytes + sizeof(scratch_hdr_t) + 4095) & ~(size_t)4095) -
                           sizeof(scratch_hdr_t);
    void *raw;
    if (posix_memalign(&raw, 64, sizeof(scratch_hdr_t) + cap) != 0)
        return NULL;
    scratch_hdr_t *h = raw;
    h->cap = cap;
    return h + 1;
}

void mox__scratch_put(mox__comm_t *c, void *p)
{
    if (!p)
        return;
    scratch_hdr_t *h = hdr_of(p);
    size_t limit = (size_t)c->cfg.scratch_cache;
    if (h->cap < SCRATCH_MIN || h->cap > limit) {
        free(h);
        return;
    }
    /* Make room: the smallest buffers go first, the large ones are the
     * expensive ones to fault in again. */
    while (c->scratch.n > 0 && (c->scratch.n == MOX_SCRATCH_SLOTS ||
                                c->scratch.bytes + h->cap > limit)) {
        int small = 0;
        for (int i = 1; i < c->scratch.n; i++)
            if (c->scratch.cap[i] < c->scratch.cap[small])
                small = i;
        if (c->scratch.cap[small] > h->cap) {
            free(h); /* everything kept is larger than this one */
            return;
        }
        free(hdr_of(c->scratch.buf[small]));
        drop(c, small);
    }
    c->scratch.buf[c->scratch.n] = p;
    c->scratch.cap[c->scratch.n] = h->cap;
    c->scratch.bytes += h->cap;
    c->scratch.n++;
}

void mox__scratch_fini(mox__comm_t *c)
{
    for (int i = 0; i < c->scratch.n; i++)
        free(hdr_of(c->scratch.buf[i]));
    c->scratch.n = 0;
    c->scratch.bytes = 0;
}
