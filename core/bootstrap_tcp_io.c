/*
 * Socket plumbing of the TCP bootstrap (see bootstrap_tcp_io.h): bounded
 * waits with poll(), connect with backoff, and a small SHA-256 so the job
 * secret never crosses the wire in clear.
 */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap_tcp_io.h"

uint64_t btcp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void btcp_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

void btcp_put_u64(uint8_t *p, uint64_t v)
{
    btcp_put_u32(p, (uint32_t)(v >> 32));
    btcp_put_u32(p + 4, (uint32_t)v);
}

uint32_t btcp_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           (uint32_t)p[3];
}

uint64_t btcp_get_u64(const uint8_t *p)
{
    return (uint64_t)btcp_get_u32(p) << 32 | btcp_get_u32(p + 4);
}

int btcp_equal_ct(const uint8_t *a, const uint8_t *b, size_t len)
{
    volatile uint8_t diff = 0; /* keeps the compiler from exiting early */
    for (size_t i = 0; i < len; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

/* ---- SHA-256 (FIPS 180-4) ------------------------------------------------ */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t ror(uint32_t x, int n) { return x >> n | x << (32 - n); }

static void sha_block(uint32_t h[8], const uint8_t *blk)
{
    uint32_t w[64], v[8];
    for (int i = 0; i < 16; i++)
        w[i] = btcp_get_u32(blk + 4 * i);
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ w[i - 15] >> 3;
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ w[i - 2] >> 10;
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(v, h, sizeof(v));
    for (int i = 0; i < 64; i++) {
        uint32_t s1 = ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25);
        uint32_t ch = (v[4] & v[5]) ^ (~v[4] & v[6]);
        uint32_t t1 = v[7] + s1 + ch + sha_k[i] + w[i];
        uint32_t s0 = ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22);
        uint32_t maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
        memmove(v + 1, v, 7 * sizeof(v[0]));
        v[4] += t1;
        v[0] = t1 + s0 + maj;
    }
    for (int i = 0; i < 8; i++)
        h[i] += v[i];
}

void btcp_sha256(const void *data, size_t len, uint8_t out[BTCP_SHA256_BYTES])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const uint8_t *p = data;
    size_t left = len;
    for (; left >= 64; left -= 64, p += 64)
        sha_block(h, p);
    uint8_t tail[128] = {0};
    memcpy(tail, p, left);
    tail[left] = 0x80;
    size_t tail_len = left < 56 ? 64 : 128;
    btcp_put_u64(tail + tail_len - 8, (uint64_t)len * 8);
    for (size_t off = 0; off < tail_len; off += 64)
        sha_block(h, tail + off);
    for (int i = 0; i < 8; i++)
        btcp_put_u32(out + 4 * i, h[i]);
}

/* ---- bounded socket I/O ------------------------------------------------- */

/* Wait for `events` on fd until the deadline. */
static mox_status_t wait_fd(int fd, short events, uint64_t deadline_ms,
                            int *err)
{
    for (;;) {
        uint64_t now = btcp_now_ms();
        if (now >= deadline_ms)
            return MOX_ERR_TIMEOUT;
        uint64_t left = deadline_ms - now;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left > 1000000 ? 1000000 : (int)left);
        if (n > 0)
            return MOX_OK; /* errors and hang-ups surface in the next call */
        if (n < 0 && errno != EINTR) {
            *err = errno;
            return MOX_ERR_SYSTEM;
        }
    }
}

static mox_status_t io_error(int e, int *err)
{
    *err = e;
    return (e == ECONNRESET || e == EPIPE || e == ENOTCONN) ? MOX_ERR_PEER
                                                            : MOX_ERR_SYSTEM;
}

mox_status_t btcp_send_all(int fd, const void *buf, size_t len,
                           uint64_t deadline_ms, int *err)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            mox_status_t st = wait_fd(fd, POLLOUT, deadline_ms, err);
            if (st != MOX_OK)
                return st;
        } else if (n < 0 && errno != EINTR) {
            return io_error(errno, err);
        }
    }
    return MOX_OK;
}

mox_status_t btcp_recv_all(int fd, void *buf, size_t len,
                           uint64_t deadline_ms, int *err)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n == 0) {
            *err = 0;
            return MOX_ERR_PEER;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            mox_status_t st = wait_fd(fd, POLLIN, deadline_ms, err);
            if (st != MOX_OK)
                return st;
        } else if (errno != EINTR) {
            return io_error(errno, err);
        }
    }
    return MOX_OK;
}

static void tune(int fd)
{
    int one = 1;
    /* Bootstrap messages are small and latency-bound. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

mox_status_t btcp_accept(int listen_fd, uint64_t deadline_ms,
                         struct sockaddr_in *peer, int *fd, int *err)
{
    for (;;) {
        socklen_t len = sizeof(*peer);
        int c = accept4(listen_fd, (struct sockaddr *)peer, &len,
                        SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c >= 0) {
            tune(c);
            *fd = c;
            return MOX_OK;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
            errno == ECONNABORTED) {
            mox_status_t st = wait_fd(listen_fd, POLLIN, deadline_ms, err);
            if (st != MOX_OK)
                return st;
            continue;
        }
        *err = errno;
        return MOX_ERR_SYSTEM;
    }
}

/* One non-blocking connect attempt bounded by the deadline. */
static int connect_once(const struct sockaddr_in *sa, uint64_t deadline_ms,
                        int *err)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    int rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    if (rc != 0 && errno == EINPROGRESS) {
        int e = 0;
        socklen_t elen = sizeof(e);
        if (wait_fd(fd, POLLOUT, deadline_ms, err) == MOX_OK &&
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) == 0)
            rc = e == 0 ? 0 : (errno = e, -1);
        else
            errno = ETIMEDOUT;
    }
    if (rc != 0) {
        *err = errno;
        close(fd);
        return -1;
    }
    tune(fd);
    return fd;
}

mox_status_t btcp_connect_retry(const struct sockaddr_in *sa,
                                uint64_t deadline_ms, int *fd, int *err)
{
    uint64_t backoff_ms = 10;
    *err = 0;
    while (btcp_now_ms() < deadline_ms) {
        int c = connect_once(sa, deadline_ms, err);
        if (c >= 0) {
            *fd = c;
            return MOX_OK;
        }
        uint64_t now = btcp_now_ms();
        uint64_t nap = now + backoff_ms > deadline_ms ? deadline_ms - now
                                                      : backoff_ms;
        struct timespec ts = {.tv_sec = (time_t)(nap / 1000),
                              .tv_nsec = (long)(nap % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        /* Back off to 500 ms: a late root is found quickly, a missing one
         * is not hammered. */
        backoff_ms = backoff_ms * 2 > 500 ? 500 : backoff_ms * 2;
    }
    return MOX_ERR_TIMEOUT;
}

const char *btcp_io_text(mox_status_t st, int err)
{
    if (st == MOX_ERR_TIMEOUT)
        return "timed out";
    if (st == MOX_ERR_PEER && err == 0)
        return "closed the connection";
    return strerror(err);
}
