/*
 * mox — MoE eXchange: sparse, hierarchical all-to-all and friends over
 * shared memory and UCX.
 *
 * This is the whole public C API. It compiles as C99 and C++ and includes
 * nothing private.
 *
 * Conventions
 *  - Every call that can fail returns a mox_status_t; MOX_OK is 0.
 *  - Calls that take a communicator leave a message naming the bad argument
 *    or the peer in mox_comm_last_error(comm) when they fail.
 *  - Handles are opaque. Destroy/free functions accept NULL.
 *  - Counts are in elements and 64-bit; sizes in bytes are size_t.
 *  - Thread safety: a communicator and its requests may be used by one
 *    thread at a time (MPI_THREAD_SERIALIZED). Different communicators are
 *    independent.
 *  - Collectives are called in the same order on every rank of a
 *    communicator, as in MPI.
 */
#ifndef MOX_MOX_H
#define MOX_MOX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOX_VERSION_MAJOR 0
#define MOX_VERSION_MINOR 1
#define MOX_VERSION_PATCH 0
#define MOX_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define MOX_API __attribute__((visibility("default")))
#else
#define MOX_API
#endif

/*
 * Status codes, declared once: X(name, value, message). Values are never
 * renumbered or reused.
 */
#define MOX_STATUS_TABLE(X)                                                    \
    X(MOX_OK, 0, "success")                                                    \
    X(MOX_IN_PROGRESS, 1, "operation in progress")                             \
    X(MOX_ERR_INVALID_ARG, -1, "invalid argument")                             \
    X(MOX_ERR_NO_MEMORY, -2, "out of memory")                                  \
    X(MOX_ERR_TIMEOUT, -3, "timed out waiting for a peer")                     \
    X(MOX_ERR_PEER, -4, "peer failed or disconnected")                         \
    X(MOX_ERR_TRUNCATED, -5, "message larger than the receive buffer")         \
    X(MOX_ERR_MISMATCH, -6, "ranks disagree on counts or arguments")           \
    X(MOX_ERR_CONFIG, -7, "bad configuration value")                           \
    X(MOX_ERR_BOOTSTRAP, -8, "bootstrap failed")                               \
    X(MOX_ERR_TRANSPORT, -9, "transport error")                                \
    X(MOX_ERR_PROTOCOL, -10, "malformed data from a peer")                     \
    X(MOX_ERR_UNSUPPORTED, -11, "operation not supported")                     \
    X(MOX_ERR_SYSTEM, -12, "system call failed")                               \
    X(MOX_ERR_OVERFLOW, -13, "size or count overflows")                        \
    X(MOX_ERR_COMM_FAILED, -14, "communicator failed earlier; destroy it")

typedef enum {
#define MOX_STATUS_ENUM_(name, value, text) name = value,
    MOX_STATUS_TABLE(MOX_STATUS_ENUM_)
#undef MOX_STATUS_ENUM_
} mox_status_t;

/* Text of a status ("invalid argument"); never NULL. */
MOX_API const char *mox_strerror(mox_status_t status);
/* Name of a status ("MOX_ERR_INVALID_ARG"); never NULL. */
MOX_API const char *mox_status_name(mox_status_t status);

/* Runtime version: "MAJOR.MINOR.PATCH"; *major etc. may be NULL. */
MOX_API const char *mox_version(int *major, int *minor, int *patch);

/* ------------------------------------------------------------------ */
/* Logging                                                             */

typedef enum {
    MOX_LOG_ERROR = 0,
    MOX_LOG_WARN = 1,
    MOX_LOG_INFO = 2,
    MOX_LOG_DEBUG = 3,
    MOX_LOG_TRACE = 4
} mox_log_level_t;

/*
 * A host's logger. `line` is one formatted line without a newline,
 * already carrying rank and component ("rank 3 shm: ..."). Called from the
 * thread that drives mox; must not call back into mox.
 */
typedef void (*mox_log_fn)(void *ctx, mox_log_level_t level, const char *line);

/*
 * Route mox's log lines to `fn` (NULL restores stderr). Process-wide; call
 * before creating communicators. The level still comes from MOX_LOG_LEVEL.
 */
MOX_API void mox_set_log_callback(mox_log_fn fn, void *ctx);

/* ------------------------------------------------------------------ */
/* Communicators                                                       */

typedef struct mox_comm *mox_comm_t;
typedef struct mox_req *mox_req_t;

/*
 * Out-of-band allgather supplied by a host (as UCC's ucc_oob_coll_t): every
 * rank contributes `bytes` bytes from `sendbuf`; on return `recvbuf` holds
 * size * bytes, rank r's contribution at offset r * bytes. Blocking.
 * Returns 0 on success, non-zero on failure.
 */
typedef int (*mox_oob_allgather_fn)(void *ctx, const void *sendbuf,
                                    void *recvbuf, size_t bytes);

typedef struct {
    size_t struct_size;          /* sizeof(mox_comm_params_t) */
    /* Out-of-band bootstrap; when allgather is NULL the environment is used
     * (PMIx under a PMIx launcher, else the TCP rendezvous of MOX_ROOT_ADDR /
     * MASTER_ADDR, else a single process). */
    mox_oob_allgather_fn oob_allgather;
    void *oob_ctx;
    int oob_rank;                /* this rank, with oob_allgather */
    int oob_size;                /* number of ranks, with oob_allgather */
    /* Optional: where to write a message when creation fails. */
    char *error_buf;
    size_t error_buf_len;
} mox_comm_params_t;

/*
 * Create a communicator over all ranks. Collective: every rank calls it.
 * `params` may be NULL (bootstrap from the environment). On failure *comm is
 * NULL, the reason is logged at error level and copied to params->error_buf.
 * Errors: MOX_ERR_BOOTSTRAP (peers not found in time, bad secret),
 * MOX_ERR_CONFIG (a MOX_* variable has a bad value), MOX_ERR_TRANSPORT,
 * MOX_ERR_NO_MEMORY, MOX_ERR_INVALID_ARG.
 */
MOX_API mox_status_t mox_comm_create(const mox_comm_params_t *params,
                                     mox_comm_t *comm);

/* Destroy a communicator; NULL is accepted. Not collective, but peers that
 * still talk to this rank will time out. Outstanding requests are freed. */
MOX_API void mox_comm_destroy(mox_comm_t comm);

MOX_API int mox_comm_rank(mox_comm_t comm);
MOX_API int mox_comm_size(mox_comm_t comm);

/* The message of the last failure on this communicator ("" if none). The
 * string lives until the next call on `comm`. */
MOX_API const char *mox_comm_last_error(mox_comm_t comm);

/* What mox learnt about where this rank runs. */
typedef struct {
    size_t struct_size;   /* set by the caller to sizeof(mox_topo_info_t) */
    int rank, size;
    int node_id;          /* 0 .. num_nodes-1, numbered by lowest rank */
    int num_nodes;
    int local_rank, local_size;
    int numa_node;        /* -1 when unknown */
    char nic[64];         /* nearest RDMA device or "" when none */
    int nic_rate_mbps;    /* 0 when unknown */
    char node_key[96];    /* hostname:ipc-namespace or MOX_NODE_ID */
} mox_topo_info_t;

MOX_API mox_status_t mox_comm_topo(mox_comm_t comm, mox_topo_info_t *info);

/* Node and local rank of any rank of the communicator. */
MOX_API mox_status_t mox_comm_rank_location(mox_comm_t comm, int rank,
                                            int *node_id, int *local_rank);

/* ------------------------------------------------------------------ */
/* Requests                                                            */

/*
 * Progress `req`. *done becomes 1 when it finished (successfully or not).
 * Returns the request's status once done (MOX_OK or an error), MOX_OK while
 * still running, or an error for a bad argument.
 */
MOX_API mox_status_t mox_test(mox_req_t req, int *done);

/*
 * Block until `req` finishes; returns its status. Fails with MOX_ERR_TIMEOUT
 * when no peer made progress for MOX_TIMEOUT milliseconds. Progress yields
 * the CPU while waiting.
 */
MOX_API mox_status_t mox_wait(mox_req_t req);

/* Release a finished request; NULL is accepted. Freeing a running request
 * fails the communicator (its buffers may still be in use by peers). */
MOX_API void mox_req_free(mox_req_t req);

/* ------------------------------------------------------------------ */
/* Collectives                                                         */

/* Barrier. */
MOX_API mox_status_t mox_ibarrier(mox_comm_t comm, mox_req_t *req);
MOX_API mox_status_t mox_barrier(mox_comm_t comm);

/*
 * All-to-all with equal blocks: rank r sends `count` elements of
 * `elem_bytes` bytes to every rank, block j of sendbuf to rank j; receives
 * block i from rank i into recvbuf. Buffers belong to the caller and must
 * stay untouched until the request finishes; they must not overlap.
 */
MOX_API mox_status_t mox_ialltoall(mox_comm_t comm, const void *sendbuf,
                                   void *recvbuf, uint64_t count,
                                   size_t elem_bytes, mox_req_t *req);
MOX_API mox_status_t mox_alltoall(mox_comm_t comm, const void *sendbuf,
                                  void *recvbuf, uint64_t count,
                                  size_t elem_bytes);

/*
 * All-to-all with per-peer counts and displacements (in elements of
 * `elem_bytes` bytes). sendcounts[j] elements starting at element
 * sdispls[j] of sendbuf go to rank j; recvcounts[i] elements from rank i
 * land at element rdispls[i] of recvbuf. recvcounts[i] on rank j must equal
 * sendcounts[j] on rank i: a disagreement is detected and reported as
 * MOX_ERR_MISMATCH naming both ranks, never a silent truncation. Peers with
 * zero counts exchange nothing. The count arrays are read during the call
 * only; data buffers must stay untouched until the request finishes.
 * Errors: MOX_ERR_INVALID_ARG (NULL buffer with nonzero count, elem_bytes
 * 0), MOX_ERR_OVERFLOW (count * elem_bytes overflows), MOX_ERR_MISMATCH,
 * MOX_ERR_TIMEOUT, MOX_ERR_PEER.
 */
MOX_API mox_status_t mox_ialltoallv(mox_comm_t comm, const void *sendbuf,
                                    const uint64_t *sendcounts,
                                    const uint64_t *sdispls, void *recvbuf,
                                    const uint64_t *recvcounts,
                                    const uint64_t *rdispls,
                                    size_t elem_bytes, mox_req_t *req);
MOX_API mox_status_t mox_alltoallv(mox_comm_t comm, const void *sendbuf,
                                   const uint64_t *sendcounts,
                                   const uint64_t *sdispls, void *recvbuf,
                                   const uint64_t *recvcounts,
                                   const uint64_t *rdispls,
                                   size_t elem_bytes);

/* ------------------------------------------------------------------ */
/* Statistics                                                          */

typedef struct {
    size_t struct_size;        /* set by the caller */
    uint64_t ops;              /* collectives completed */
    uint64_t bytes_intra;      /* bytes this rank sent to ranks of its node */
    uint64_t bytes_inter;      /* bytes this rank sent to other nodes */
    uint64_t msgs_intra;
    uint64_t msgs_inter;
    uint64_t time_ns;          /* wall time inside collectives (start to done) */
} mox_stats_t;

/* Cumulative counters of this rank on `comm`. */
MOX_API mox_status_t mox_comm_stats(mox_comm_t comm, mox_stats_t *stats);

#ifdef __cplusplus
}
#endif
#endif /* MOX_MOX_H */
