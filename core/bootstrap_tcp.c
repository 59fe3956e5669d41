/*
 * TCP rendezvous bootstrap (torchrun-style): rank 0 listens at the root
 * address, every other rank connects and says hello; allgathers are a
 * gather at the root and a broadcast of the concatenation. Connections stay
 * open for the communicator's lifetime.
 *
 * Wire (integers big-endian):
 *   hello  joiner->root  "MOXB" u32 version, u32 rank, u32 size, 32-byte
 *                        SHA-256 of the job secret
 *   answer root->joiner  "MOXA" u32 verdict (0 = welcome, else refusal)
 *   frame  both ways     "MOXG" u32 allgather number, u64 length, payload
 * Every length read from the wire must equal the length both sides agreed
 * on; anything else is a protocol error naming the peer.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bootstrap_impl.h"
#include "bootstrap_tcp_io.h"
#include "log.h"

#define TCP_PROTO_VERSION 1u
#define HELLO_BYTES (4 + 4 + 4 + 4 + BTCP_SHA256_BYTES)
#define ANSWER_BYTES 8
#define FRAME_HDR_BYTES 16
/* A joiner sends its hello right after connecting; one that stays silent
 * this long is dropped so it cannot hold up the others. */
#define HELLO_WAIT_MS 2000

/* Why the root refused a joiner; sent back so the joiner can say it too. */
enum {
    VERDICT_WELCOME,
    VERDICT_BAD_MAGIC,
    VERDICT_BAD_VERSION,
    VERDICT_WRONG_SECRET,
    VERDICT_RANK_RANGE,
    VERDICT_SIZE_MISMATCH,
    VERDICT_DUPLICATE,
    VERDICT_COUNT
};

static const char *verdict_text(uint32_t v)
{
    static const char *const text[VERDICT_COUNT] = {
        "welcome", "bad magic (not a mox bootstrap client)",
        "protocol version mismatch", "wrong job secret (MOX_JOB_SECRET)",
        "rank out of range", "size mismatch", "duplicate rank",
    };
    return v < VERDICT_COUNT ? text[v] : "unknown refusal";
}

typedef struct {
    char root_addr[256];
    int listen_fd; /* root only */
    int root_fd;   /* joiners: connection to the root */
    int *fds;      /* root: [size] connection of each joiner (-1 for 0) */
    char (*peer_addr)[64]; /* root: "IP:port" of each joiner */
} tcp_state_t;

/* ---- addresses ---------------------------------------------------------- */

int mox__boot_tcp_root_addr(const mox__config_t *cfg, char *addr,
                            size_t addr_len)
{
    addr[0] = '\0';
    if (cfg->root_addr_str != NULL && cfg->root_addr_str[0] != '\0') {
        snprintf(addr, addr_len, "%s", cfg->root_addr_str);
        return 1;
    }
    const char *host = getenv("MASTER_ADDR"), *port = getenv("MASTER_PORT");
    if (host == NULL || *host == '\0' || port == NULL || *port == '\0')
        return 0;
    snprintf(addr, addr_len, "%s:%s", host, port);
    return 1;
}

/* "IP:PORT" or "host:PORT" -> IPv4 socket address. */
static mox_status_t resolve(const char *text, struct sockaddr_in *sa,
                            char *errbuf, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(text, ':');
    size_t host_len = colon ? (size_t)(colon - text) : 0;
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (colon == NULL || host_len == 0 || host_len >= sizeof(host) ||
        *end != '\0' || end == colon + 1 || port < 1 || port > 65535) {
        snprintf(errbuf, errlen, "bootstrap: root address '%s' is not "
                 "IP:PORT (port 1..65535)", text);
        return MOX_ERR_CONFIG;
    }
    memcpy(host, text, host_len);
    host[host_len] = '\0';
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || res == NULL) {
        snprintf(errbuf, errlen, "bootstrap: cannot resolve root host '%s' "
                 "of '%s': %s", host, text, gai_strerror(rc));
        return MOX_ERR_CONFIG;
    }
    memcpy(sa, res->ai_addr, sizeof(*sa));
    sa->sin_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return MOX_OK;
}

static void sockaddr_text(const struct sockaddr_in *sa, char *out, size_t len)
{
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof(ip));
    snprintf(out, len, "%s:%u", ip, (unsigned)ntohs(sa->sin_port));
}

/* ---- hello -------------------------------------------------------------- */

static void secret_digest(const char *secret, uint8_t out[BTCP_SHA256_BYTES])
{
    /* Only a digest goes on the wire, so a capture of the rendezvous does
     * not show the secret itself; the prefix keeps it specific to mox. */
    char buf[1024];
    int n = snprintf(buf, sizeof(buf), "mox-bootstrap-v1:%s",
                     secret ? secret : "");
    size_t len = n < 0 ? 0 : (size_t)n >= sizeof(buf) ? sizeof(buf) - 1
                                                        : (size_t)n;
    btcp_sha256(buf, len, out);
}

static void hello_encode(uint8_t *h, int rank, int size, const uint8_t *digest)
{
    memcpy(h, "MOXB", 4);
    btcp_put_u32(h + 4, TCP_PROTO_VERSION);
    btcp_put_u32(h + 8, (uint32_t)rank);
    btcp_put_u32(h + 12, (uint32_t)size);
    memcpy(h + 16, digest, BTCP_SHA256_BYTES);
}

/* Verdict on a hello; *rank is the joiner's rank when welcome. */
static uint32_t hello_check(const uint8_t *h, const tcp_state_t *s, int size,
                            const uint8_t *digest, int *rank)
{
    if (memcmp(h, "MOXB", 4) != 0)
        return VERDICT_BAD_MAGIC;
    if (btcp_get_u32(h + 4) != TCP_PROTO_VERSION)
        return VERDICT_BAD_VERSION;
    if (!btcp_equal_ct(h + 16, digest, BTCP_SHA256_BYTES))
        return VERDICT_WRONG_SECRET;
    uint32_t r = btcp_get_u32(h + 8), n = btcp_get_u32(h + 12);
    if (n != (uint32_t)size)
        return VERDICT_SIZE_MISMATCH;
    if (r == 0 || r >= (uint32_t)size)
        return VERDICT_RANK_RANGE;
    if (s->fds[r] >= 0)
        return VERDICT_DUPLICATE;
    *rank = (int)r;
    return VERDICT_WELCOME;
}

/* ---- root: wait for every joiner ---------------------------------------- */

static mox_status_t root_listen(tcp_state_t *s, const struct sockaddr_in *sa,
                                int backlog, char *errbuf, size_t errlen)
{
    int one = 1;
    s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                          0);
    if (s->listen_fd < 0 ||
        setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one,
                   sizeof(one)) != 0 ||
        bind(s->listen_fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0 ||
        listen(s->listen_fd, backlog) != 0) {
        snprintf(errbuf, errlen, "bootstrap: rank 0 cannot listen at %s: %s",
                 s->root_addr, strerror(errno));
        return MOX_ERR_BOOTSTRAP;
    }
    return MOX_OK;
}

static void missing_list(const tcp_state_t *s, int size, char *out,
                         size_t len)
{
    size_t used = 0;
    int shown = 0;
    out[0] = '\0';
    for (int r = 1; r < size && used < len; r++) {
        if (s->fds[r] >= 0)
            continue;
        if (shown == 16) {
            snprintf(out + used, len - used, ", ...");
            return;
        }
        int n = snprintf(out + used, len - used, "%s%d", shown ? ", " : "", r);
        used += n > 0 ? (size_t)n : 0;
        shown++;
    }
}

/* Read and judge one joiner's hello; welcome it or refuse and close. */
static void root_greet(tcp_state_t *s, mox__boot_t *b, int fd,
                       const char *peer, const uint8_t *digest,
                       uint64_t deadline, int *joined, char *refusal,
                       size_t refusal_len)
{
    uint8_t h[HELLO_BYTES], answer[ANSWER_BYTES];
    uint64_t hello_deadline = btcp_now_ms() + HELLO_WAIT_MS;
    if (hello_deadline > deadline)
        hello_deadline = deadline;
    int err = 0;
    mox_status_t st = btcp_recv_all(fd, h, sizeof(h), hello_deadline, &err);
    if (st != MOX_OK) {
        snprintf(refusal, refusal_len, "%s sent no complete hello (%s)", peer,
                 st == MOX_ERR_TIMEOUT ? "timed out" : "connection closed");
        MOX_ERROR("boot", "bootstrap: dropped joiner %s", refusal);
        close(fd);
        return;
    }
    int rank = -1;
    uint32_t verdict = hello_check(h, s, b->size, digest, &rank);
    memcpy(answer, "MOXA", 4);
    btcp_put_u32(answer + 4, verdict);
    /* Best effort: a joiner that vanished now is caught by the allgather. */
    btcp_send_all(fd, answer, sizeof(answer), hello_deadline, &err);
    if (verdict == VERDICT_BAD_MAGIC) { /* the rest is not ours to read */
        snprintf(refusal, refusal_len, "%s: %s", peer, verdict_text(verdict));
    } else if (verdict != VERDICT_WELCOME) {
        snprintf(refusal, refusal_len, "%s (claims rank %u of %u): %s", peer,
                 btcp_get_u32(h + 8), btcp_get_u32(h + 12),
                 verdict_text(verdict));
    }
    if (verdict != VERDICT_WELCOME) {
        MOX_ERROR("boot", "bootstrap: refused joiner %s", refusal);
        close(fd);
        return;
    }
    s->fds[rank] = fd;
    snprintf(s->peer_addr[rank], sizeof(s->peer_addr[rank]), "%s", peer);
    (*joined)++;
    MOX_DEBUG("boot", "rank %d joined from %s (%d of %d)", rank, peer, *joined,
              b->size);
}

static mox_status_t root_accept_all(tcp_state_t *s, mox__boot_t *b,
                                    const uint8_t *digest, char *errbuf,
                                    size_t errlen)
{
    uint64_t start = btcp_now_ms(), deadline = start + (uint64_t)b->timeout_ms;
    int joined = 1;
    char refusal[256] = "";
    while (joined < b->size) {
        struct sockaddr_in peer_sa;
        int fd = -1, err = 0;
        mox_status_t st = btcp_accept(s->listen_fd, deadline, &peer_sa, &fd,
                                      &err);
        if (st == MOX_ERR_TIMEOUT) {
            char missing[160];
            missing_list(s, b->size, missing, sizeof(missing));
            snprintf(errbuf, errlen, "bootstrap: rank 0 waited %d ms for %d "
                     "of %d ranks to join at %s (missing: %s)%s%s",
                     b->timeout_ms, b->size - joined, b->size, s->root_addr,
                     missing, refusal[0] ? "; last refused: " : "", refusal);
            return MOX_ERR_BOOTSTRAP;
        }
        if (st != MOX_OK) {
            snprintf(errbuf, errlen, "bootstrap: rank 0 accept at %s failed: "
                     "%s", s->root_addr, strerror(err));
            return MOX_ERR_BOOTSTRAP;
        }
        char peer[64];
        sockaddr_text(&peer_sa, peer, sizeof(peer));
        root_greet(s, b, fd, peer, digest, deadline, &joined, refusal,
                   sizeof(refusal));
    }
    return MOX_OK;
}

/* ---- joiner: reach the root --------------------------------------------- */

static mox_status_t join_root(tcp_state_t *s, mox__boot_t *b,
                              const struct sockaddr_in *sa,
                              const uint8_t *digest, char *errbuf,
                              size_t errlen)
{
    uint64_t start = btcp_now_ms(), deadline = start + (uint64_t)b->timeout_ms;
    int err = 0;
    mox_status_t st = btcp_connect_retry(sa, deadline, &s->root_fd, &err);
    if (st != MOX_OK) {
        snprintf(errbuf, errlen, "bootstrap: rank %d could not reach the root "
                 "at %s for %d ms (last error: %s)", b->rank, s->root_addr,
                 b->timeout_ms, err ? strerror(err) : "timed out");
        return MOX_ERR_BOOTSTRAP;
    }
    uint8_t h[HELLO_BYTES], answer[ANSWER_BYTES];
    hello_encode(h, b->rank, b->size, digest);
    st = btcp_send_all(s->root_fd, h, sizeof(h), deadline, &err);
    if (st == MOX_OK)
        st = btcp_recv_all(s->root_fd, answer, sizeof(answer), deadline, &err);
    if (st != MOX_OK) {
        snprintf(errbuf, errlen, "bootstrap: rank %d: the root at %s %s "
                 "before answering the hello", b->rank, s->root_addr,
                 st == MOX_ERR_TIMEOUT ? "timed out" : "closed the connection");
        return MOX_ERR_BOOTSTRAP;
    }
    uint32_t verdict = btcp_get_u32(answer + 4);
    if (memcmp(answer, "MOXA", 4) != 0 || verdict != VERDICT_WELCOME) {
        snprintf(errbuf, errlen, "bootstrap: the root at %s refused rank %d "
                 "of %d: %s", s->root_addr, b->rank, b->size,
                 memcmp(answer, "MOXA", 4) ? "garbled answer"
                                           : verdict_text(verdict));
        return MOX_ERR_BOOTSTRAP;
    }
    return MOX_OK;
}

/* ---- allgather ---------------------------------------------------------- */

static mox_status_t send_frame(int fd, uint32_t seq, const void *data,
                               size_t bytes, uint64_t deadline, int *err)
{
    uint8_t hdr[FRAME_HDR_BYTES];
    memcpy(hdr, "MOXG", 4);
    btcp_put_u32(hdr + 4, seq);
    btcp_put_u64(hdr + 8, bytes);
    mox_status_t st = btcp_send_all(fd, hdr, sizeof(hdr), deadline, err);
    if (st == MOX_OK && bytes > 0)
        st = btcp_send_all(fd, data, bytes, deadline, err);
    return st;
}

/* Receive one frame of exactly `bytes` into `data`; `who` names the peer. */
static mox_status_t recv_frame(int fd, uint32_t seq, void *data, size_t bytes,
                               uint64_t deadline, const char *who,
                               char *errbuf, size_t errlen)
{
    uint8_t hdr[FRAME_HDR_BYTES];
    int err = 0;
    mox_status_t st = btcp_recv_all(fd, hdr, sizeof(hdr), deadline, &err);
    if (st == MOX_OK) {
        uint64_t len = btcp_get_u64(hdr + 8);
        if (memcmp(hdr, "MOXG", 4) != 0 || btcp_get_u32(hdr + 4) != seq ||
            len != bytes) {
            snprintf(errbuf, errlen, "bootstrap allgather #%u: %s sent a "
                     "frame (magic %.4s, #%u, %llu bytes) where %zu bytes of "
                     "#%u were expected", seq, who, (const char *)hdr,
                     btcp_get_u32(hdr + 4), (unsigned long long)len, bytes,
                     seq);
            return MOX_ERR_PROTOCOL;
        }
        if (bytes > 0)
            st = btcp_recv_all(fd, data, bytes, deadline, &err);
    }
    if (st != MOX_OK)
        snprintf(errbuf, errlen, "bootstrap allgather #%u: %s: %s", seq, who,
                 btcp_io_text(st, err));
    return st;
}

static mox_status_t root_allgather(mox__boot_t *b, const void *mine,
                                   char *all, size_t bytes, char *errbuf,
                                   size_t errlen)
{
    tcp_state_t *s = b->priv;
    uint32_t seq = (uint32_t)b->ag_count;
    char who[96];
    if (bytes > 0)
        memmove(all, mine, bytes);
    for (int r = 1; r < b->size; r++) {
        uint64_t deadline = btcp_now_ms() + (uint64_t)b->timeout_ms;
        snprintf(who, sizeof(who), "rank %d (%s)", r, s->peer_addr[r]);
        mox_status_t st = recv_frame(s->fds[r], seq, all + (size_t)r * bytes,
                                     bytes, deadline, who, errbuf, errlen);
        if (st != MOX_OK)
            return st;
    }
    for (int r = 1; r < b->size; r++) {
        uint64_t deadline = btcp_now_ms() + (uint64_t)b->timeout_ms;
        int err = 0;
        mox_status_t st = send_frame(s->fds[r], seq, all,
                                     (size_t)b->size * bytes, deadline, &err);
        if (st != MOX_OK) {
            snprintf(errbuf, errlen, "bootstrap allgather #%u: sending to "
                     "rank %d (%s): %s", seq, r, s->peer_addr[r],
                     btcp_io_text(st, err));
            return st;
        }
    }
    return MOX_OK;
}

static mox_status_t joiner_allgather(mox__boot_t *b, const void *mine,
                                     char *all, size_t bytes, char *errbuf,
                                     size_t errlen)
{
    tcp_state_t *s = b->priv;
    uint32_t seq = (uint32_t)b->ag_count;
    uint64_t deadline = btcp_now_ms() + (uint64_t)b->timeout_ms;
    char who[300];
    snprintf(who, sizeof(who), "rank 0 (root at %s)", s->root_addr);
    int err = 0;
    mox_status_t st = send_frame(s->root_fd, seq, mine, bytes, deadline, &err);
    if (st != MOX_OK) {
        snprintf(errbuf, errlen, "bootstrap allgather #%u: sending to %s: %s",
                 seq, who, btcp_io_text(st, err));
        return st;
    }
    /* The root answers only when every rank has sent, so wait a full
     * timeout for it after our own send. */
    deadline = btcp_now_ms() + (uint64_t)b->timeout_ms;
    return recv_frame(s->root_fd, seq, all, (size_t)b->size * bytes, deadline,
                      who, errbuf, errlen);
}

static mox_status_t tcp_allgather(mox__boot_t *b, const void *mine, void *all,
                                  size_t bytes, char *errbuf, size_t errlen)
{
    if (b->rank == 0)
        return root_allgather(b, mine, all, bytes, errbuf, errlen);
    return joiner_allgather(b, mine, all, bytes, errbuf, errlen);
}

/* ---- life cycle --------------------------------------------------------- */

static void tcp_destroy(mox__boot_t *b)
{
    tcp_state_t *s = b->priv;
    if (s == NULL)
        return;
    for (int r = 0; s->fds != NULL && r < b->size; r++)
        if (s->fds[r] >= 0)
            close(s->fds[r]);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->root_fd >= 0)
        close(s->root_fd);
    free(s->fds);
    free(s->peer_addr);
    free(s);
    b->priv = NULL;
}

static const mox__boot_ops_t tcp_ops = {
    .name = "tcp",
    .allgather = tcp_allgather,
    .destroy = tcp_destroy,
};

static mox_status_t tcp_rank_size(const mox__config_t *cfg, mox__boot_t *b,
                                  char *errbuf, size_t errlen)
{
    const char *src;
    mox__boot_env_rank_size(cfg, &b->rank, &b->size, &src);
    if (b->rank < 0 || b->size < 1 || b->rank >= b->size) {
        snprintf(errbuf, errlen, "bootstrap: tcp needs this rank and the "
                 "number of ranks (MOX_RANK/MOX_SIZE, RANK/WORLD_SIZE, ...); "
                 "got rank %d of %d (from %s)", b->rank, b->size, src);
        return MOX_ERR_CONFIG;
    }
    return MOX_OK;
}

static mox_status_t tcp_state_new(mox__boot_t *b, tcp_state_t **out)
{
    tcp_state_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return MOX_ERR_NO_MEMORY;
    s->listen_fd = s->root_fd = -1;
    b->priv = s;
    if (b->rank == 0) {
        s->fds = malloc((size_t)b->size * sizeof(*s->fds));
        s->peer_addr = calloc((size_t)b->size, sizeof(*s->peer_addr));
        if (s->fds == NULL || s->peer_addr == NULL)
            return MOX_ERR_NO_MEMORY;
        for (int r = 0; r < b->size; r++)
            s->fds[r] = -1;
    }
    *out = s;
    return MOX_OK;
}

static mox_status_t tcp_connect_all(const mox__config_t *cfg, mox__boot_t *b,
                                    tcp_state_t *s, char *errbuf,
                                    size_t errlen)
{
    struct sockaddr_in sa;
    mox_status_t st = resolve(s->root_addr, &sa, errbuf, errlen);
    if (st != MOX_OK || b->size == 1)
        return st;
    uint8_t digest[BTCP_SHA256_BYTES];
    secret_digest(cfg->job_secret_str, digest);
    if (b->rank != 0)
        return join_root(s, b, &sa, digest, errbuf, errlen);
    st = root_listen(s, &sa, b->size < 128 ? b->size : 128, errbuf, errlen);
    if (st == MOX_OK)
        st = root_accept_all(s, b, digest, errbuf, errlen);
    /* Late or stray joiners must not sit in our backlog believing they got
     * in; everyone expected is connected now. */
    close(s->listen_fd);
    s->listen_fd = -1;
    return st;
}

mox_status_t mox__boot_tcp_create(const mox__config_t *cfg, mox__boot_t *b,
                                  char *errbuf, size_t errlen)
{
    b->ops = &tcp_ops;
    mox_status_t st = tcp_rank_size(cfg, b, errbuf, errlen);
    if (st != MOX_OK)
        return st;
    tcp_state_t *s = NULL;
    st = tcp_state_new(b, &s);
    if (st != MOX_OK) {
        snprintf(errbuf, errlen, "bootstrap: out of memory for %d ranks",
                 b->size);
        tcp_destroy(b);
        return st;
    }
    if (!mox__boot_tcp_root_addr(cfg, s->root_addr, sizeof(s->root_addr))) {
        snprintf(errbuf, errlen, "bootstrap: tcp needs the root address "
                 "(MOX_ROOT_ADDR=IP:PORT or MASTER_ADDR+MASTER_PORT)");
        tcp_destroy(b);
        return MOX_ERR_CONFIG;
    }
    st = tcp_connect_all(cfg, b, s, errbuf, errlen);
    if (st != MOX_OK)
        tcp_destroy(b);
    return st;
}
