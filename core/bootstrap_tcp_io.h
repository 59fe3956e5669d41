/*
 * Socket plumbing of the TCP bootstrap: every wait bounded by a deadline on
 * the monotonic clock, big-endian field helpers, and the digest used to
 * present the job secret. Only core/bootstrap_tcp*.c include this.
 */
#ifndef MOX_CORE_BOOTSTRAP_TCP_IO_H
#define MOX_CORE_BOOTSTRAP_TCP_IO_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include "mox/mox.h"

#define BTCP_SHA256_BYTES 32

/* Monotonic milliseconds. */
uint64_t btcp_now_ms(void);

void btcp_put_u32(uint8_t *p, uint32_t v);
void btcp_put_u64(uint8_t *p, uint64_t v);
uint32_t btcp_get_u32(const uint8_t *p);
uint64_t btcp_get_u64(const uint8_t *p);

/* 1 when equal; time does not depend on where the bytes differ, so a
 * joiner cannot learn the secret's digest byte by byte. */
int btcp_equal_ct(const uint8_t *a, const uint8_t *b, size_t len);

void btcp_sha256(const void *data, size_t len,
                 uint8_t out[BTCP_SHA256_BYTES]);

/*
 * Move exactly `len` bytes on a non-blocking socket before `deadline_ms`.
 * MOX_OK; MOX_ERR_TIMEOUT; MOX_ERR_PEER on EOF or reset; MOX_ERR_SYSTEM
 * otherwise. *err receives errno for the last two.
 */
mox_status_t btcp_send_all(int fd, const void *buf, size_t len,
                           uint64_t deadline_ms, int *err);
mox_status_t btcp_recv_all(int fd, void *buf, size_t len,
                           uint64_t deadline_ms, int *err);

/* Accept one connection (made non-blocking, TCP_NODELAY) before the
 * deadline. */
mox_status_t btcp_accept(int listen_fd, uint64_t deadline_ms,
                         struct sockaddr_in *peer, int *fd, int *err);

/* Connect, retrying with backoff until the deadline (the root may start
 * after us). *err keeps the last connect error. */
mox_status_t btcp_connect_retry(const struct sockaddr_in *sa,
                                uint64_t deadline_ms, int *fd, int *err);

/* "closed the connection", "timed out", or strerror(err). */
const char *btcp_io_text(mox_status_t st, int err);

#endif
