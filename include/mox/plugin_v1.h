/*
 * mox plugin ABI, version 1: the table of function pointers a host
 * framework finds with dlsym() in any library that implements mox's
 * collectives. libmox.so exports it as the symbol `mox_plugin_v1`.
 *
 * This header is self-contained (C99 and C++, no other mox header), so a
 * host can copy it into its own tree.
 *
 * Versioning rules (also docs/abi.md)
 *  1. Once released, this file, the layout of every struct in it and the
 *     symbol name `mox_plugin_v1` never change. A new ABI version is a new
 *     file (plugin_v2.h) and a new symbol (`mox_plugin_v2`) beside the old
 *     ones; a library may export several versions at once.
 *  2. A host looks for the newest symbol it knows and falls back to older
 *     ones (as NCCL does with ncclNet_vN). plugin/mox_loader.c does this.
 *  3. Every struct crossing the ABI starts with `struct_size` (and the
 *     table also with `abi_version`). A host that receives a table whose
 *     struct_size is smaller than sizeof(mox_plugin_v1_t) treats the entries
 *     beyond struct_size as unsupported (MOX_V1_HAS below). A table smaller
 *     than MOX_PLUGIN_V1_MIN_SIZE is rejected.
 *  4. Unused or unsupported entries are NULL; capabilities say what works.
 *
 * STATUS: v1 was released with mox 0.1.0 (2026-11-25) and is FROZEN: it
 * holds every collective of mox 0.1 (barrier, alltoall(v), MoE
 * dispatch/combine, reduce-scatter dense/v/sparse, allgather(v)). The
 * abidiff baseline in packaging/abi/ is its reference; anything new goes
 * into plugin_v2.h beside this file.
 *
 * Conventions of every entry
 *  - Statuses are ints with the values of mox_status_t in mox.h (which are
 *    never renumbered): 0 success, 1 in progress, negative errors. The
 *    table's `strerror` names them; the few a host needs are below.
 *  - Handles are opaque; destroy/free entries accept NULL.
 *  - Collectives are nonblocking: they start the operation and return a
 *    request, finished with req_test/req_wait and released with req_free.
 *    Buffers belong to the caller and stay untouched until the request is
 *    done. Collectives are called in the same order on every rank.
 *  - Thread safety: one thread at a time per communicator.
 */
#ifndef MOX_PLUGIN_V1_H
#define MOX_PLUGIN_V1_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOX_PLUGIN_ABI_V1 1u
#define MOX_PLUGIN_V1_SYMBOL "mox_plugin_v1"

/* Status values (same numbers as mox_status_t). */
#define MOX_V1_OK 0
#define MOX_V1_IN_PROGRESS 1
#define MOX_V1_ERR_INVALID_ARG (-1)
#define MOX_V1_ERR_MISMATCH (-6)
#define MOX_V1_ERR_OVERFLOW (-13)
#define MOX_V1_ERR_UNSUPPORTED (-11)

/* Element types (same numbers as mox_dtype_t). */
#define MOX_V1_DTYPE_U8 0
#define MOX_V1_DTYPE_I32 1
#define MOX_V1_DTYPE_I64 2
#define MOX_V1_DTYPE_F16 3
#define MOX_V1_DTYPE_BF16 4
#define MOX_V1_DTYPE_F32 5
#define MOX_V1_DTYPE_F64 6

/* Reduction operations (same numbers as mox_op_t). */
#define MOX_V1_OP_SUM 0
#define MOX_V1_OP_PROD 1
#define MOX_V1_OP_MAX 2
#define MOX_V1_OP_MIN 3
#define MOX_V1_OP_AVG 4

/* Memory types of a buffer. Only host memory is defined in v1; device is
 * reserved so that v1 buffer descriptors can carry it later. A plugin
 * rejects a memory type missing from its capabilities with
 * MOX_V1_ERR_UNSUPPORTED. */
#define MOX_V1_MEM_HOST 0
#define MOX_V1_MEM_DEVICE 1 /* reserved */

/* Collectives (bits of mox_v1_caps_t.collectives). */
#define MOX_V1_COLL_BARRIER (1u << 0)
#define MOX_V1_COLL_ALLTOALL (1u << 1)
#define MOX_V1_COLL_ALLTOALLV (1u << 2)
#define MOX_V1_COLL_MOE (1u << 3) /* moe_* entries */
#define MOX_V1_COLL_REDUCE_SCATTER (1u << 4) /* ireduce_scatter, _v */
#define MOX_V1_COLL_ALLGATHER (1u << 5)      /* iallgather, iallgatherv */
#define MOX_V1_COLL_REDUCE_SCATTER_SPARSE (1u << 6) /* ireduce_scatter_sparse */

/* sendbuf.ptr of the in-place reduce-scatter and allgather forms (the
 * value of MOX_IN_PLACE in mox.h). */
#define MOX_V1_IN_PLACE ((const void *)1)

/* A buffer: where it is and in which memory. */
typedef struct {
    void *ptr;
    uint32_t mem_type; /* MOX_V1_MEM_* */
    int32_t device;    /* device index for device memory, else 0 */
} mox_v1_buf_t;

/* A read-only buffer. */
typedef struct {
    const void *ptr;
    uint32_t mem_type;
    int32_t device;
} mox_v1_cbuf_t;

typedef struct mox_v1_comm *mox_v1_comm_t;
typedef struct mox_v1_req *mox_v1_req_t;
typedef struct mox_v1_moe *mox_v1_moe_t;

/* What a plugin supports. Bits are (1 << value) of the macros above. */
typedef struct {
    size_t struct_size;    /* set by the caller */
    uint64_t collectives;  /* MOX_V1_COLL_* */
    uint64_t moe_x_dtypes; /* hidden-vector types of moe dispatch/combine */
    uint64_t moe_idx_dtypes; /* expert-id types of moe */
    uint64_t reduce_dtypes;  /* element types of reduce-scatter (all forms) */
    uint64_t reduce_ops;     /* MOX_V1_OP_* of reduce-scatter (sparse: the
                                sum and avg among them) */
    uint64_t mem_types;      /* MOX_V1_MEM_* */
    uint64_t max_elem_bytes; /* largest elem_bytes of alltoall(v); 0 = any */
} mox_v1_caps_t;

/* Log levels: 0 error, 1 warn, 2 info, 3 debug, 4 trace. `line` has no
 * newline and already names rank and component. Must not call the plugin. */
typedef void (*mox_v1_log_fn)(void *ctx, int level, const char *line);

/* Host context passed to init. */
typedef struct {
    size_t struct_size;
    uint32_t abi_version;  /* MOX_PLUGIN_ABI_V1 */
    mox_v1_log_fn log;     /* NULL: the plugin logs to stderr */
    void *log_ctx;
} mox_v1_host_t;

/* Out-of-band allgather (as UCC's ucc_oob_coll_t): every rank contributes
 * `bytes` from sendbuf; recvbuf gets size * bytes, rank r's at r * bytes.
 * Blocking; 0 on success. */
typedef int (*mox_v1_oob_allgather_fn)(void *ctx, const void *sendbuf,
                                       void *recvbuf, size_t bytes);

typedef struct {
    size_t struct_size;
    mox_v1_oob_allgather_fn oob_allgather; /* NULL: bootstrap from the
                                              environment */
    void *oob_ctx;
    int32_t oob_rank;
    int32_t oob_size;
} mox_v1_comm_params_t;

typedef struct {
    size_t struct_size;
    uint64_t ops, bytes_intra, bytes_inter, msgs_intra, msgs_inter, time_ns;
} mox_v1_stats_t;

/* MoE dispatch/combine: the semantics of mox_moe_* in mox.h. */
typedef struct {
    size_t struct_size;
    int32_t num_experts, hidden, topk;
    int32_t x_dtype, idx_dtype; /* MOX_V1_DTYPE_* */
    int32_t expert_alignment;
    int32_t dispatch_wire, combine_wire, algo; /* mox_moe_wire_t / algo_t */
} mox_v1_moe_config_t;

typedef struct {
    size_t struct_size;
    int64_t num_tokens;
    mox_v1_cbuf_t x;            /* [num_tokens][hidden] x_dtype */
    mox_v1_cbuf_t topk_idx;     /* [num_tokens][topk] idx_dtype */
    mox_v1_cbuf_t topk_weights; /* [num_tokens][topk] float */
} mox_v1_moe_input_t;

typedef struct {
    size_t struct_size;
    uint64_t capacity;              /* rows that fit in each buffer */
    mox_v1_buf_t recv_x;            /* [capacity][hidden] x_dtype */
    mox_v1_buf_t recv_topk_idx;     /* [capacity][topk] int32, optional */
    mox_v1_buf_t recv_topk_weights; /* [capacity][topk] float, optional */
    mox_v1_buf_t recv_src;          /* [capacity][2] int32, optional */
    mox_v1_buf_t recv_per_expert;   /* [E/P] uint64, optional */
    uint64_t num_recv;              /* out: valid once the request is done */
} mox_v1_moe_output_t;

typedef struct mox_plugin_v1 {
    size_t struct_size;   /* sizeof(mox_plugin_v1_t) of the plugin */
    uint32_t abi_version; /* MOX_PLUGIN_ABI_V1 */
    const char *name;     /* "mox", or the implementation's name */
    const char *version;  /* the implementation's version string */

    /* --- library --- */
    int (*get_caps)(mox_v1_caps_t *caps);
    /* Once per process before anything else; `host` may be NULL. */
    int (*init)(const mox_v1_host_t *host);
    void (*finalize)(void);
    const char *(*strerror)(int status); /* never NULL */

    /* --- communicators --- */
    /* Collective over all ranks. params NULL (or oob_allgather NULL):
     * bootstrap from the environment. On failure *comm is NULL and the
     * reason is copied to err (when err_len > 0). */
    int (*comm_create)(const mox_v1_comm_params_t *params,
                       mox_v1_comm_t *comm, char *err, size_t err_len);
    /* Not collective; also releases the communicator's requests and moe
     * handles, which the host must not use afterwards. NULL accepted. */
    void (*comm_destroy)(mox_v1_comm_t comm);
    /* Tear down at once without synchronising with peers (they see a
     * failed peer); outstanding requests and moe handles are released. */
    void (*comm_abort)(mox_v1_comm_t comm);
    int (*comm_rank)(mox_v1_comm_t comm);
    int (*comm_size)(mox_v1_comm_t comm);
    /* Message of the last failure on comm ("" if none); lives until the
     * next call on comm. */
    const char *(*comm_last_error)(mox_v1_comm_t comm);
    int (*comm_stats)(mox_v1_comm_t comm, mox_v1_stats_t *stats);

    /* --- requests --- */
    int (*req_test)(mox_v1_req_t req, int *done);
    int (*req_wait)(mox_v1_req_t req);
    void (*req_free)(mox_v1_req_t req);

    /* Every table has at least the entries above (MOX_PLUGIN_V1_MIN_SIZE);
     * hosts check the ones below with MOX_V1_HAS. */

    /* --- collectives --- */
    int (*ibarrier)(mox_v1_comm_t comm, mox_v1_req_t *req);
    int (*ialltoall)(mox_v1_comm_t comm, mox_v1_cbuf_t sendbuf,
                     mox_v1_buf_t recvbuf, uint64_t count, size_t elem_bytes,
                     mox_v1_req_t *req);
    int (*ialltoallv)(mox_v1_comm_t comm, mox_v1_cbuf_t sendbuf,
                      const uint64_t *sendcounts, const uint64_t *sdispls,
                      mox_v1_buf_t recvbuf, const uint64_t *recvcounts,
                      const uint64_t *rdispls, size_t elem_bytes,
                      mox_v1_req_t *req);

    /* --- MoE dispatch/combine --- */
    int (*moe_create)(mox_v1_comm_t comm, const mox_v1_moe_config_t *config,
                      mox_v1_moe_t *moe);
    void (*moe_destroy)(mox_v1_moe_t moe);
    int (*moe_inotify)(mox_v1_moe_t moe, const mox_v1_moe_input_t *in,
                       mox_v1_req_t *req);
    int (*moe_recv_count)(mox_v1_moe_t moe, uint64_t *num_recv,
                          uint64_t *per_expert);
    int (*moe_idispatch)(mox_v1_moe_t moe, const mox_v1_moe_input_t *in,
                         mox_v1_moe_output_t *out, mox_v1_req_t *req);
    int (*moe_icombine)(mox_v1_moe_t moe, mox_v1_cbuf_t expert_out,
                        mox_v1_buf_t out, mox_v1_req_t *req);

    /* --- reduce-scatter and allgather (appended before the v1 freeze) ---
     * The semantics of mox_ireduce_scatter, _v, _sparse, mox_iallgather and
     * mox_iallgatherv in mox.h (docs/reduce_scatter.md): element types
     * MOX_V1_DTYPE_*, ops MOX_V1_OP_*; every rank passes the same counts,
     * dtype and op (else MOX_V1_ERR_MISMATCH, not a hang). In place:
     * sendbuf.ptr == MOX_V1_IN_PLACE (its mem_type is then ignored).
     * Reductions: f16/bf16 accumulate in f32 and round once at the end;
     * integer sum/prod wrap; avg is for float types only (an integer type
     * gives MOX_V1_ERR_INVALID_ARG); the result of a given layout is
     * bitwise the same from run to run. A dtype missing from
     * caps.reduce_dtypes or an op missing from caps.reduce_ops gives
     * MOX_V1_ERR_UNSUPPORTED. Buffers in a memory type missing from
     * caps.mem_types give MOX_V1_ERR_UNSUPPORTED before anything is sent. */

    /* Equal blocks (caps bit MOX_V1_COLL_REDUCE_SCATTER): sendbuf holds
     * size * recvcount elements; rank j receives the reduction of every
     * rank's elements [j * recvcount, (j + 1) * recvcount). In place:
     * recvbuf holds the full vector and gets the result at its start. */
    int (*ireduce_scatter)(mox_v1_comm_t comm, mox_v1_cbuf_t sendbuf,
                           mox_v1_buf_t recvbuf, uint64_t recvcount,
                           int32_t dtype, int32_t op, mox_v1_req_t *req);
    /* Per-rank counts (MOX_V1_COLL_REDUCE_SCATTER): rank j's slice starts
     * at the prefix sum of recvcounts[0..j) and has recvcounts[j] elements
     * (zero allowed). recvcounts[size] is read during the call only. */
    int (*ireduce_scatter_v)(mox_v1_comm_t comm, mox_v1_cbuf_t sendbuf,
                             mox_v1_buf_t recvbuf, const uint64_t *recvcounts,
                             int32_t dtype, int32_t op, mox_v1_req_t *req);
    /* Block-sparse, equal blocks (MOX_V1_COLL_REDUCE_SCATTER_SPARSE): the
     * dense input cut into blocks of block_elems elements; blocks[nblocks]
     * lists, strictly ascending, the blocks this rank touched; the others
     * count as zero. recvcount is a multiple of block_elems. Ops sum and
     * avg only (others: MOX_V1_ERR_UNSUPPORTED). The result equals the
     * dense reduce-scatter with absent blocks zeroed (up to the sign of
     * zero). */
    int (*ireduce_scatter_sparse)(mox_v1_comm_t comm, mox_v1_cbuf_t sendbuf,
                                  mox_v1_buf_t recvbuf, uint64_t recvcount,
                                  int32_t dtype, int32_t op,
                                  uint64_t block_elems, const uint64_t *blocks,
                                  uint64_t nblocks, mox_v1_req_t *req);
    /* Equal blocks (MOX_V1_COLL_ALLGATHER): `count` elements of `dtype`
     * from every rank, rank i's at element i * count of recvbuf. In place:
     * this rank's block already sits there. Any MOX_V1_DTYPE_* (only its
     * size matters). */
    int (*iallgather)(mox_v1_comm_t comm, mox_v1_cbuf_t sendbuf,
                      mox_v1_buf_t recvbuf, uint64_t count, int32_t dtype,
                      mox_v1_req_t *req);
    /* Per-rank counts (MOX_V1_COLL_ALLGATHER): rank i's sendcount
     * (== recvcounts[i], the same array on every rank) elements land at
     * element displs[i] of recvbuf (this rank's own layout; blocks must
     * not overlap). In place: this rank's block is already at
     * recvbuf + displs[rank]. */
    int (*iallgatherv)(mox_v1_comm_t comm, mox_v1_cbuf_t sendbuf,
                       uint64_t sendcount, mox_v1_buf_t recvbuf,
                       const uint64_t *recvcounts, const uint64_t *displs,
                       int32_t dtype, mox_v1_req_t *req);

    /* v1 ends here. Nothing is added to this struct once v1 is released
     * (first release tag): new entries go to mox_plugin_v2_t in
     * plugin_v2.h. Never reorder the entries above. */
} mox_plugin_v1_t;

/* Bytes every v1 table has: through req_free. */
#define MOX_PLUGIN_V1_MIN_SIZE                                                 \
    (offsetof(mox_plugin_v1_t, req_free) + sizeof(void (*)(void)))

/* Whether table `t` has a non-NULL entry `field` within its struct_size. */
#define MOX_V1_HAS(t, field)                                                   \
    ((t)->struct_size >= offsetof(mox_plugin_v1_t, field) +                    \
                             sizeof((t)->field) &&                             \
     (t)->field != NULL)

#ifdef __cplusplus
}
#endif
#endif /* MOX_PLUGIN_V1_H */
