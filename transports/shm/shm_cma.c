/*
 * Single-copy reads: the receiver pulls an RNDV message, or the pieces of
 * an RNDV_IOV (gather) message, out of the sender's memory with
 * process_vm_readv, a bounded chunk per progress call, and acknowledges
 * it through shm_rndv_end whatever happens (the sender waits for that).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/uio.h>

#include "core/log.h"
#include "shm.h"

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static int read_retry(ssize_t got)
{
    return got < 0 && (errno == EINTR || errno == EAGAIN || errno == ENOMEM);
}

/* A process_vm_readv of `n` bytes from rank p that returned `got`. */
static mox_status_t read_failed(const shm_peer_t *p, const char *what,
                                uint64_t n, ssize_t got)
{
    int err = got < 0 ? errno : 0;
    /* A peer that is exiting can fail a read in other ways than ESRCH
     * (its memory half gone): that is still the peer's failure. */
    int gone = err == ESRCH || !shm_peer_alive(p->pid);
    MOX_ERROR("shm", "single-copy read of %s (%llu bytes) from rank %d "
              "failed: %s%s", what, (unsigned long long)n, p->rank,
              err ? strerror(err) : "short read",
              gone ? " (the process is gone)" : "");
    return gone ? MOX_ERR_PEER : MOX_ERR_TRANSPORT;
}

/* One chunk of a single-copy read. */
void shm_rndv_step(shm_peer_t *p, int *done)
{
    if (!p->r_req) {
        shm_rndv_end(p, MOX_OK, done);
        return;
    }
    uint64_t n = min_u64(SHM_CMA_CHUNK, p->r_hdr.bytes - p->r_off);
    struct iovec local = {(char *)SHM_REQ_BUF(p->r_req) + p->r_off, n};
    struct iovec remote = {(void *)(uintptr_t)(p->r_hdr.addr + p->r_off), n};
    ssize_t got = process_vm_readv(p->pid, &local, 1, &remote, 1, 0);
    if (read_retry(got))
        return;
    if (got <= 0) {
        shm_rndv_end(p, read_failed(p, "a message", n, got), done);
        return;
    }
    p->r_off += (uint64_t)got;
    if (p->r_off == p->r_hdr.bytes)
        shm_rndv_end(p, MOX_OK, done);
}

/* ------------------------------------------------------------------ */
/* Gather messages (RNDV_IOV)                                           */

/* Syscalls one progress call spends on a gather message, so that tiny
 * pieces cannot keep the other channels waiting. */
#define SHM_IOV_CALLS_PER_STEP 32

static mox_status_t iov_malformed(const shm_peer_t *p, const char *what,
                                  uint64_t entry, uint64_t value)
{
    MOX_ERROR("shm", "malformed gather message %llu from rank %d: %s "
              "(entry %llu, %llu); failing its receive",
              (unsigned long long)p->r_hdr.seq, p->rank, what,
              (unsigned long long)entry, (unsigned long long)value);
    return MOX_ERR_PROTOCOL;
}

/* Read the next batch of the sender's iov entries and check it: the
 * lengths never pass the message size and reach it exactly with the last
 * entry, and no piece wraps the address space. Returns MOX_OK,
 * MOX_IN_PROGRESS (try again later) or the error that ends the message. */
static mox_status_t fetch_iov(shm_peer_t *p)
{
    const shm_wire_hdr_t *h = &p->r_hdr;
    uint64_t n = min_u64(SHM_IOV_BATCH, h->count - p->r_iov_fetched);
    uint64_t first = p->r_iov_fetched;
    struct iovec local = {p->r_iov, (size_t)n * sizeof p->r_iov[0]};
    struct iovec remote = {
        (void *)(uintptr_t)(h->addr + first * sizeof p->r_iov[0]),
        local.iov_len};
    ssize_t got = process_vm_readv(p->pid, &local, 1, &remote, 1, 0);
    if (read_retry(got))
        return MOX_IN_PROGRESS;
    if (got != (ssize_t)local.iov_len)
        return read_failed(p, "a gather list", local.iov_len, got);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = p->r_iov[i].len;
        uintptr_t base = (uintptr_t)p->r_iov[i].base;
        if (len > h->bytes - p->r_iov_sum)
            return iov_malformed(p, "pieces longer than the message",
                                 first + i, len);
        if (len && base + len < base)
            return iov_malformed(p, "piece wraps around", first + i, base);
        p->r_iov_sum += len;
    }
    p->r_iov_fetched += n;
    if (p->r_iov_fetched == h->count && p->r_iov_sum != h->bytes)
        return iov_malformed(p, "pieces shorter than the message",
                             h->count - 1, p->r_iov_sum);
    p->r_iov_n = (unsigned)n;
    p->r_iov_i = 0;
    p->r_iov_skip = 0;
    return MOX_OK;
}

/* Up to `budget` bytes of the checked batch, as remote iovecs from where
 * reading stopped; returns their count and sets *bytes. */
static int iov_remote(const shm_peer_t *p, uint64_t budget,
                      struct iovec *remote, uint64_t *bytes)
{
    int cnt = 0;
    uint64_t want = 0;
    for (unsigned i = p->r_iov_i; i < p->r_iov_n && want < budget; i++) {
        uint64_t skip = i == p->r_iov_i ? p->r_iov_skip : 0;
        uint64_t len = min_u64(p->r_iov[i].len - skip, budget - want);
        if (!len)
            continue;
        remote[cnt].iov_base = (char *)(uintptr_t)p->r_iov[i].base + skip;
        remote[cnt].iov_len = (size_t)len;
        cnt++;
        want += len;
    }
    *bytes = want;
    return cnt;
}

/* `got` more bytes were read: step over the entries they filled (and the
 * empty ones after them). */
static void iov_advance(shm_peer_t *p, uint64_t got)
{
    p->r_off += got;
    while (p->r_iov_i < p->r_iov_n) {
        uint64_t left = p->r_iov[p->r_iov_i].len - p->r_iov_skip;
        if (got < left) {
            p->r_iov_skip += got;
            return;
        }
        got -= left;
        p->r_iov_i++;
        p->r_iov_skip = 0;
    }
}

/* Up to SHM_CMA_CHUNK bytes of a gather message, straight from the
 * sender's pieces into the receive buffer. The checked lengths never pass
 * h.bytes, which fits the receive, so no read can overrun it. */
void shm_rndv_iov_step(shm_peer_t *p, int *done)
{
    if (!p->r_req) {
        shm_rndv_end(p, MOX_OK, done);
        return;
    }
    uint64_t budget = SHM_CMA_CHUNK;
    for (int calls = 0; calls < SHM_IOV_CALLS_PER_STEP; calls++) {
        if (p->r_iov_i == p->r_iov_n) {
            if (p->r_iov_fetched == p->r_hdr.count) {
                shm_rndv_end(p, p->r_off == p->r_hdr.bytes ? MOX_OK
                                                       : MOX_ERR_PROTOCOL,
                         done);
                return;
            }
            mox_status_t st = fetch_iov(p);
            if (st != MOX_OK) {
                if (st != MOX_IN_PROGRESS)
                    shm_rndv_end(p, st, done);
                return;
            }
            continue;
        }
        if (!budget)
            return;
        struct iovec remote[SHM_IOV_BATCH];
        uint64_t want;
        int cnt = iov_remote(p, budget, remote, &want);
        ssize_t got = 0;
        if (cnt) {
            struct iovec local = {(char *)SHM_REQ_BUF(p->r_req) + p->r_off,
                                  (size_t)want};
            got = process_vm_readv(p->pid, &local, 1, remote,
                                   (unsigned long)cnt, 0);
            if (read_retry(got))
                return;
            if (got <= 0) {
                shm_rndv_end(p, read_failed(p, "gathered pieces", want, got),
                         done);
                return;
            }
            budget -= (uint64_t)got;
        }
        iov_advance(p, (uint64_t)got);
    }
}
