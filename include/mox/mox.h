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
#define MOX_VERSION_MINOR 2
#define MOX_VERSION_PATCH 0
#define MOX_VERSION_STRING "0.2.0"

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

/* Element types. Values are part of the ABI and never change. */
typedef enum {
    MOX_DTYPE_U8 = 0,
    MOX_DTYPE_I32 = 1,
    MOX_DTYPE_I64 = 2,
    MOX_DTYPE_F16 = 3,  /* IEEE binary16 */
    MOX_DTYPE_BF16 = 4, /* bfloat16 */
    MOX_DTYPE_F32 = 5,
    MOX_DTYPE_F64 = 6
} mox_dtype_t;

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

/* Destroy a communicator; NULL is accepted. Call it on every rank: on a
 * healthy communicator spanning several nodes it first waits (at most
 * about 2 s) until every rank is in destroy, so that no rank closes its
 * connections while a peer still takes in its last messages; a failed
 * communicator, or ranks that never come, only cost that wait. Peers that
 * still talk to this rank afterwards will time out. Outstanding requests
 * are freed. */
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
 * still running, or an error for a bad argument. Polling with mox_test
 * times out as mox_wait does: once calls that see nothing move add up to
 * MOX_TIMEOUT, the request ends with MOX_ERR_TIMEOUT (a gap between two
 * calls counts at most one second, so computing between polls does not).
 */
MOX_API mox_status_t mox_test(mox_req_t req, int *done);

/*
 * Block until `req` finishes; returns its status. Fails with MOX_ERR_TIMEOUT
 * when no peer made progress for MOX_TIMEOUT milliseconds, naming the ranks
 * it still waits for. Progress is any traffic of this communicator while
 * no peer has been lost; once one was seen failing or leaving, only the
 * request's own messages finishing, so other ranks giving up around a
 * stalled peer do not extend the wait (mox_test counts the same way).
 * Progress yields the CPU while waiting.
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
/* MoE expert parallelism: dispatch and combine                        */
/*
 * Every rank holds num_tokens tokens of `hidden` values and, per token, the
 * router's top-k: topk_idx[t][j] is a global expert id in [0, num_experts)
 * or -1 for "no expert", topk_weights[t][j] its weight. Experts are spread
 * evenly: rank r owns experts [r*E/P, (r+1)*E/P). Dispatch delivers every
 * token to every rank owning one of its experts; combine brings the
 * experts' outputs back and sums them into the token's slot.
 *
 * With the dedup algorithm a token whose experts sit on several ranks of one
 * remote node crosses the network to that node once, to the rail peer
 * (same local rank), which forwards it through shared memory; combine sums
 * the partial outputs inside that node in f32 before the one trip back.
 *
 * Received order (deterministic): by source rank, then source token index.
 * A token appears once per destination rank, however many of its experts
 * that rank owns.
 */

/* Wire formats of dispatched hidden vectors between nodes (inside a node
 * tokens always travel in x_dtype, bit-exact). */
typedef enum {
    MOX_MOE_WIRE_DEFAULT = -1, /* MOX_MOE_WIRE (default native) */
    MOX_MOE_WIRE_NATIVE = 0,   /* x_dtype as given: bit-exact */
    MOX_MOE_WIRE_BF16 = 1,     /* bf16 (f32 input rounded to nearest even) */
    MOX_MOE_WIRE_FP8 = 2,      /* fp8 e4m3, one f32 scale per 128 values;
                                  dispatch only */
    MOX_MOE_WIRE_F32 = 3       /* f32; combine only (the default there) */
} mox_moe_wire_t;

typedef enum {
    MOX_MOE_ALGO_DEFAULT = -1, /* MOX_MOE_ALGO (default auto) */
    MOX_MOE_ALGO_AUTO = 0,     /* dedup when nodes > 1, else alltoallv */
    MOX_MOE_ALGO_DEDUP = 1,    /* one network copy per (token, node) */
    MOX_MOE_ALGO_ALLTOALLV = 2,/* one copy per (token, rank): the baseline */
    MOX_MOE_ALGO_ALLGATHER = 3 /* every rank gets every token and keeps its
                                  own: for tiny batches */
} mox_moe_algo_t;

typedef struct {
    size_t struct_size;     /* sizeof(mox_moe_config_t) */
    int num_experts;        /* E, a multiple of the communicator size */
    int hidden;             /* H, values per token (>= 1) */
    int topk;               /* k, experts per token (1..1024) */
    mox_dtype_t x_dtype;    /* MOX_DTYPE_F32, BF16 or F16 */
    mox_dtype_t idx_dtype;  /* MOX_DTYPE_I32 or I64 */
    int expert_alignment;   /* pad per-expert receive counts to a multiple
                               of this (grouped GEMM); 0 or 1 = none */
    int dispatch_wire;      /* mox_moe_wire_t: DEFAULT, NATIVE, BF16, FP8 */
    int combine_wire;       /* mox_moe_wire_t: DEFAULT (f32), F32, BF16 */
    int algo;               /* mox_moe_algo_t */
} mox_moe_config_t;

typedef struct mox_moe *mox_moe_t;

/*
 * Create a dispatch/combine handle. Collective over `comm`: every rank
 * passes the same configuration, which is checked (MOX_ERR_MISMATCH names
 * the first rank and field that differ). The handle caches plans and
 * buffers across calls with the same shapes. Errors: MOX_ERR_INVALID_ARG
 * (a field out of range, num_experts not divisible by the size),
 * MOX_ERR_MISMATCH, MOX_ERR_NO_MEMORY, and communication errors.
 */
MOX_API mox_status_t mox_moe_create(mox_comm_t comm,
                                    const mox_moe_config_t *config,
                                    mox_moe_t *moe);
/* Destroy; NULL accepted. Not collective. Frees the buffers the handle
 * kept from its last calls (sized by the batch: at 4096 tokens of 7168
 * bf16 values per rank on 4 x 2, about 0.9 GB per rank; docs/moe.md
 * "Memory"). */
MOX_API void mox_moe_destroy(mox_moe_t moe);

/*
 * Routing layout of this rank's tokens, computed locally without
 * communication. Any output may be NULL. tokens_per_rank[size]: tokens that
 * go to each rank; tokens_per_node[num_nodes]: tokens that go to each node;
 * tokens_per_expert[num_experts]: (token, expert) pairs per expert;
 * is_token_in_rank[num_tokens * size]: 1 when the token goes to the rank.
 * Errors: MOX_ERR_INVALID_ARG naming the token and slot of an expert id out
 * of range or repeated within a token.
 */
MOX_API mox_status_t mox_moe_layout(mox_moe_t moe, const void *topk_idx,
                                    int64_t num_tokens,
                                    uint64_t *tokens_per_rank,
                                    uint64_t *tokens_per_node,
                                    uint64_t *tokens_per_expert,
                                    uint8_t *is_token_in_rank);

/* This rank's input to dispatch. Buffers are read until the request is
 * done. x is [num_tokens][hidden] of x_dtype; topk_idx [num_tokens][topk]
 * of idx_dtype; topk_weights [num_tokens][topk]. */
typedef struct {
    size_t struct_size;
    int64_t num_tokens;
    const void *x;
    const void *topk_idx;
    const float *topk_weights;
} mox_moe_input_t;

/* Where dispatch writes. `capacity` rows fit in each buffer; optional
 * outputs may be NULL. */
typedef struct {
    size_t struct_size;
    uint64_t capacity;
    void *recv_x;              /* [capacity][hidden] x_dtype */
    int32_t *recv_topk_idx;    /* [capacity][topk] local expert id (global id
                                  - rank*E/P) or -1 for experts elsewhere */
    float *recv_topk_weights;  /* [capacity][topk], 0 where the id is -1 */
    int32_t *recv_src;         /* [capacity][2]: source rank, token index */
    uint64_t *recv_per_expert; /* [E/P] rows per local expert, rounded up to
                                  expert_alignment */
    uint64_t num_recv;         /* out: rows received, valid when done */
} mox_moe_output_t;

/*
 * A receive buffer for dispatch in shared memory, owned by the handle (since
 * 0.2): room for `rows` rows of hidden x x_dtype bytes. Pass it as
 * out->recv_x (out->capacity <= rows) and the ranks of this node write
 * their rows straight into it, one copy in user space, instead of this rank
 * copying them out of their memory through the kernel (CMA), which runs at
 * about half the speed on a busy node; rows from other nodes arrive as
 * before. Not collective: peers learn in each dispatch's count exchange
 * whether this rank has one (so a buffer made between mox_moe_inotify and
 * its dispatch serves from the next dispatch on), and a rank without one
 * is served as before. With a buffer but another out->recv_x, or more rows
 * than out->capacity or the buffer holds, the dispatch takes the usual
 * path. A call for more rows than the current buffer holds replaces it
 * (the previous pointer becomes invalid; not while a dispatch is in
 * flight); fewer rows return the current buffer. mox_moe_destroy frees it.
 * The buffer may also hold combine's expert_out (ask for room for both,
 * e.g. 2 x capacity rows, and write the expert outputs in the second
 * half): see mox_moe_icombine.
 * Errors: MOX_ERR_INVALID_ARG (NULL recv_x, rows 0 or too large),
 * MOX_ERR_SYSTEM (no shared memory: shm_open/mmap failed, the message
 * names the call).
 */
MOX_API mox_status_t mox_moe_recv_buffer(mox_moe_t moe, uint64_t rows,
                                         void **recv_x);

/*
 * Optional first step: route and exchange counts (nonblocking). When done,
 * mox_moe_recv_count() tells how many rows dispatch will deliver, so the
 * caller can size its buffers; the next mox_moe_idispatch() must pass the
 * same input and skips this step.
 */
MOX_API mox_status_t mox_moe_inotify(mox_moe_t moe, const mox_moe_input_t *in,
                                     mox_req_t *req);
/* Rows the notified dispatch will deliver, and rows per local expert
 * (padded as recv_per_expert; `per_expert` may be NULL). */
MOX_API mox_status_t mox_moe_recv_count(mox_moe_t moe, uint64_t *num_recv,
                                        uint64_t *per_expert);

/*
 * Dispatch (nonblocking). Without a preceding mox_moe_inotify it notifies
 * first. When the rows to receive exceed out->capacity, the data is still
 * exchanged (peers stay in step) but nothing is written: the request ends
 * with MOX_ERR_OVERFLOW naming the rows needed, and the communicator stays
 * usable. Bad input on any rank (an expert id out of range or repeated
 * within a token, a NULL buffer with tokens, num_tokens out of range) makes
 * every rank's dispatch end with MOX_ERR_INVALID_ARG naming that rank and
 * the problem, before any token moves; the communicator stays usable.
 * A rank that dies or leaves makes every other rank's dispatch (and
 * combine) end with MOX_ERR_PEER naming it, or MOX_ERR_TIMEOUT after
 * MOX_TIMEOUT; the communicator is then unusable.
 */
MOX_API mox_status_t mox_moe_idispatch(mox_moe_t moe,
                                       const mox_moe_input_t *in,
                                       mox_moe_output_t *out,
                                       mox_req_t *req);
MOX_API mox_status_t mox_moe_dispatch(mox_moe_t moe,
                                      const mox_moe_input_t *in,
                                      mox_moe_output_t *out);

/*
 * Combine (nonblocking), the reverse of the last successful dispatch on
 * `moe`. expert_out is [num_recv][hidden] of x_dtype in received order: row
 * r is this rank's result for received row r, already weighted by the
 * caller (sum over its local experts e of recv_topk_weights * expert_e(x)).
 * out is [num_tokens][hidden] of x_dtype of that dispatch's input: the sum
 * over ranks of their rows for each token, accumulated in f32 in a fixed
 * order (bitwise reproducible), zeros for tokens with no expert.
 * When expert_out lies inside this rank's mox_moe_recv_buffer and
 * x_dtype is the combine wire format (bf16 with a bf16 wire, f32 with an
 * f32 wire), the ranks of this node sum this rank's rows for their tokens
 * where they are, with no copy; this rank's combine then ends only after
 * those ranks have read them, and expert_out must stay unchanged until
 * then. The results are the same either way.
 */
MOX_API mox_status_t mox_moe_icombine(mox_moe_t moe, const void *expert_out,
                                      void *out, mox_req_t *req);
MOX_API mox_status_t mox_moe_combine(mox_moe_t moe, const void *expert_out,
                                     void *out);

/* ------------------------------------------------------------------ */
/* Reduce-scatter and allgather                                        */
/*
 * Reductions. Values are part of the ABI and never change. avg is the sum
 * divided by the communicator size; it is defined for float types only.
 * Integer sum and prod wrap modulo 2^bits; max and min propagate NaN.
 */
typedef enum {
    MOX_OP_SUM = 0,
    MOX_OP_PROD = 1,
    MOX_OP_MAX = 2,
    MOX_OP_MIN = 3,
    MOX_OP_AVG = 4
} mox_op_t;

/* Pass as sendbuf for the in-place forms (see each call). */
#define MOX_IN_PLACE ((const void *)1)

/*
 * Reduce-scatter with per-rank counts: element-wise reduction over all
 * ranks of sendbuf (sum of recvcounts elements of `dtype`, rank j's slice
 * at the prefix sum of recvcounts[0..j)), then rank j receives its slice,
 * recvcounts[j] elements, in recvbuf. Every rank passes the same
 * recvcounts, dtype and op; a disagreement is MOX_ERR_MISMATCH naming the
 * ranks, not a hang.
 *
 * In place: sendbuf == MOX_IN_PLACE takes the input from recvbuf (which
 * then holds the full vector) and writes the result at its start. Other
 * overlap between sendbuf and recvbuf is MOX_ERR_INVALID_ARG.
 *
 * Numerics: f16/bf16 accumulate in f32 and are rounded to nearest even
 * once, at the end. The reduction order is fixed by the layout (ranks per
 * node, nodes, algorithm, MOX_RS_CHUNK), so the result is bitwise the same
 * from run to run of the same layout; see docs/reduce_scatter.md for the
 * order and the tolerances against an exact reference.
 *
 * Buffers belong to the caller and must stay untouched until the request
 * finishes; recvcounts is read during the call only. Thread safety: as the
 * communicator. Errors: MOX_ERR_INVALID_ARG (unknown dtype or op, avg on an
 * integer type, NULL buffer with a nonzero count, overlapping buffers),
 * MOX_ERR_OVERFLOW, MOX_ERR_MISMATCH, MOX_ERR_TIMEOUT, MOX_ERR_PEER.
 */
MOX_API mox_status_t mox_ireduce_scatter_v(mox_comm_t comm,
                                           const void *sendbuf, void *recvbuf,
                                           const uint64_t *recvcounts,
                                           mox_dtype_t dtype, mox_op_t op,
                                           mox_req_t *req);
MOX_API mox_status_t mox_reduce_scatter_v(mox_comm_t comm,
                                          const void *sendbuf, void *recvbuf,
                                          const uint64_t *recvcounts,
                                          mox_dtype_t dtype, mox_op_t op);
/* Equal blocks: every rank receives `recvcount` elements; sendbuf holds
 * size * recvcount (as MPI_Reduce_scatter_block). */
MOX_API mox_status_t mox_ireduce_scatter(mox_comm_t comm, const void *sendbuf,
                                         void *recvbuf, uint64_t recvcount,
                                         mox_dtype_t dtype, mox_op_t op,
                                         mox_req_t *req);
MOX_API mox_status_t mox_reduce_scatter(mox_comm_t comm, const void *sendbuf,
                                        void *recvbuf, uint64_t recvcount,
                                        mox_dtype_t dtype, mox_op_t op);

/*
 * Block-sparse reduce-scatter. sendbuf is the dense input (size * recvcount
 * elements), cut into blocks of `block_elems` elements; blocks[0..nblocks)
 * lists, strictly ascending, the blocks this rank touched. Only those
 * travel; the others are taken as zero, whatever sendbuf holds there. The
 * result equals mox_reduce_scatter of the same data with absent blocks
 * zeroed (bitwise, except that -0.0 may come out as +0.0 or back), and
 * blocks absent on every rank come out zero. Ops: sum and avg.
 * recvcount must be a multiple of block_elems. The bytes that did not
 * travel are counted in mox_stats_t.bytes_sparse_saved. Different ranks may
 * list different blocks; block_elems, recvcount, dtype and op must agree.
 * In place: as mox_ireduce_scatter. Errors: as above, plus
 * MOX_ERR_INVALID_ARG for an unsorted, repeated or out-of-range block
 * index and MOX_ERR_UNSUPPORTED for ops other than sum and avg.
 */
MOX_API mox_status_t mox_ireduce_scatter_sparse(
    mox_comm_t comm, const void *sendbuf, void *recvbuf, uint64_t recvcount,
    mox_dtype_t dtype, mox_op_t op, uint64_t block_elems,
    const uint64_t *blocks, uint64_t nblocks, mox_req_t *req);
MOX_API mox_status_t mox_reduce_scatter_sparse(
    mox_comm_t comm, const void *sendbuf, void *recvbuf, uint64_t recvcount,
    mox_dtype_t dtype, mox_op_t op, uint64_t block_elems,
    const uint64_t *blocks, uint64_t nblocks);

/*
 * Allgather with per-rank counts: rank i's sendcount elements (which must
 * equal recvcounts[i]) land on every rank at element displs[i] of recvbuf.
 * Every rank passes the same recvcounts (checked: MOX_ERR_MISMATCH);
 * displs are this rank's own layout. In place: sendbuf == MOX_IN_PLACE
 * means this rank's block is already at recvbuf + displs[rank]. Blocks
 * must not overlap in recvbuf; sendbuf must not overlap recvbuf
 * (MOX_ERR_INVALID_ARG). Buffers as for reduce-scatter.
 */
MOX_API mox_status_t mox_iallgatherv(mox_comm_t comm, const void *sendbuf,
                                     uint64_t sendcount, void *recvbuf,
                                     const uint64_t *recvcounts,
                                     const uint64_t *displs,
                                     mox_dtype_t dtype, mox_req_t *req);
MOX_API mox_status_t mox_allgatherv(mox_comm_t comm, const void *sendbuf,
                                    uint64_t sendcount, void *recvbuf,
                                    const uint64_t *recvcounts,
                                    const uint64_t *displs,
                                    mox_dtype_t dtype);
/* Equal blocks: `count` elements from every rank, rank i's at element
 * i * count of recvbuf. In place: this rank's block already sits there. */
MOX_API mox_status_t mox_iallgather(mox_comm_t comm, const void *sendbuf,
                                    void *recvbuf, uint64_t count,
                                    mox_dtype_t dtype, mox_req_t *req);
MOX_API mox_status_t mox_allgather(mox_comm_t comm, const void *sendbuf,
                                   void *recvbuf, uint64_t count,
                                   mox_dtype_t dtype);

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
    /* The last collective that finished, counted exactly even when
     * collectives overlap: */
    uint64_t last_bytes_intra, last_bytes_inter;
    uint64_t last_msgs_intra, last_msgs_inter;
    uint64_t last_time_ns;
    char last_op[32];          /* its algorithm, e.g. "alltoallv_hier" */
    uint64_t bytes_sparse_saved; /* bytes block-sparse reduce-scatter did
                                    not send (absent blocks) */
} mox_stats_t;

/* Counters of this rank on `comm`: cumulative, and of the last finished
 * collective. Bytes are payload plus mox's headers as handed to the
 * transports (what crosses the network adds the transport's framing). */
MOX_API mox_status_t mox_comm_stats(mox_comm_t comm, mox_stats_t *stats);

#ifdef __cplusplus
}
#endif
#endif /* MOX_MOX_H */
