/*
 * The exported v1 table of libmox.so: every entry maps onto the public C
 * API of mox.h. Only host memory is supported; a device buffer gives
 * MOX_ERR_UNSUPPORTED (before anything is sent).
 *
 * ABI handles wrap mox's: a v1 request remembers its communicator (so
 * comm_destroy can release what the host did not) and, for dispatch, where
 * to copy num_recv when it finishes.
 */
#include "mox/mox.h"
#include "mox/plugin_v1.h"

#include <stdio.h>
#include <stdlib.h>

/* The v1 numbers are mox.h's; they may never drift apart. */
_Static_assert(MOX_V1_OK == MOX_OK && MOX_V1_IN_PROGRESS == MOX_IN_PROGRESS &&
               MOX_V1_ERR_INVALID_ARG == MOX_ERR_INVALID_ARG &&
               MOX_V1_ERR_OVERFLOW == MOX_ERR_OVERFLOW &&
               MOX_V1_ERR_UNSUPPORTED == MOX_ERR_UNSUPPORTED,
               "v1 status values differ from mox_status_t");
_Static_assert(MOX_V1_DTYPE_U8 == MOX_DTYPE_U8 &&
               MOX_V1_DTYPE_I32 == MOX_DTYPE_I32 &&
               MOX_V1_DTYPE_I64 == MOX_DTYPE_I64 &&
               MOX_V1_DTYPE_F16 == MOX_DTYPE_F16 &&
               MOX_V1_DTYPE_BF16 == MOX_DTYPE_BF16 &&
               MOX_V1_DTYPE_F32 == MOX_DTYPE_F32 &&
               MOX_V1_DTYPE_F64 == MOX_DTYPE_F64,
               "v1 dtype values differ from mox_dtype_t");
_Static_assert(MOX_V1_OP_SUM == MOX_OP_SUM && MOX_V1_OP_PROD == MOX_OP_PROD &&
               MOX_V1_OP_MAX == MOX_OP_MAX && MOX_V1_OP_MIN == MOX_OP_MIN &&
               MOX_V1_OP_AVG == MOX_OP_AVG,
               "v1 op values differ from mox_op_t");
_Static_assert(MOX_V1_ERR_MISMATCH == MOX_ERR_MISMATCH,
               "v1 status values differ from mox_status_t");

struct mox_v1_req {
    mox_req_t inner;
    struct mox_v1_comm *comm;
    struct mox_v1_req *prev, *next; /* the comm's live requests */
    mox_v1_moe_output_t *out;       /* dispatch: where num_recv goes */
    const mox_moe_output_t *inner_out;
};

struct mox_v1_moe {
    mox_moe_t inner;
    struct mox_v1_comm *comm;
    struct mox_v1_moe *prev, *next;
    mox_moe_output_t out; /* what mox writes num_recv into */
};

struct mox_v1_comm {
    mox_comm_t inner;
    struct mox_v1_req *reqs;
    struct mox_v1_moe *moes;
};

/* ---- library ------------------------------------------------------- */

static int get_caps(mox_v1_caps_t *caps)
{
    if (!caps || caps->struct_size < sizeof *caps)
        return MOX_ERR_INVALID_ARG;
    *caps = (mox_v1_caps_t){
        .struct_size = sizeof *caps,
        .collectives = MOX_V1_COLL_BARRIER | MOX_V1_COLL_ALLTOALL |
                       MOX_V1_COLL_ALLTOALLV | MOX_V1_COLL_MOE |
                       MOX_V1_COLL_REDUCE_SCATTER | MOX_V1_COLL_ALLGATHER |
                       MOX_V1_COLL_REDUCE_SCATTER_SPARSE,
        .moe_x_dtypes = 1u << MOX_V1_DTYPE_F32 | 1u << MOX_V1_DTYPE_BF16 |
                        1u << MOX_V1_DTYPE_F16,
        .moe_idx_dtypes = 1u << MOX_V1_DTYPE_I32 | 1u << MOX_V1_DTYPE_I64,
        .reduce_dtypes = 1u << MOX_V1_DTYPE_U8 | 1u << MOX_V1_DTYPE_I32 |
                         1u << MOX_V1_DTYPE_I64 | 1u << MOX_V1_DTYPE_F16 |
                         1u << MOX_V1_DTYPE_BF16 | 1u << MOX_V1_DTYPE_F32 |
                         1u << MOX_V1_DTYPE_F64,
        .reduce_ops = 1u << MOX_V1_OP_SUM | 1u << MOX_V1_OP_PROD |
                      1u << MOX_V1_OP_MAX | 1u << MOX_V1_OP_MIN |
                      1u << MOX_V1_OP_AVG, /* avg: float types only */
        .mem_types = 1u << MOX_V1_MEM_HOST,
        .max_elem_bytes = 0};
    return MOX_OK;
}

static mox_v1_log_fn host_log;

static void log_trampoline(void *ctx, mox_log_level_t level, const char *line)
{
    if (host_log)
        host_log(ctx, (int)level, line);
}

static int init(const mox_v1_host_t *host)
{
    if (host && host->struct_size < offsetof(mox_v1_host_t, log_ctx) +
                                        sizeof host->log_ctx)
        return MOX_ERR_INVALID_ARG;
    host_log = host ? host->log : NULL;
    mox_set_log_callback(host_log ? log_trampoline : NULL,
                         host ? host->log_ctx : NULL);
    return MOX_OK;
}

static void finalize(void)
{
    mox_set_log_callback(NULL, NULL);
    host_log = NULL;
}

static const char *status_text(int status)
{
    return mox_strerror((mox_status_t)status);
}

/* ---- communicators ------------------------------------------------- */

static int comm_create(const mox_v1_comm_params_t *params, mox_v1_comm_t *out,
                       char *err, size_t err_len)
{
    if (!out)
        return MOX_ERR_INVALID_ARG;
    *out = NULL;
    mox_comm_params_t p = {.struct_size = sizeof p,
                           .error_buf = err_len ? err : NULL,
                           .error_buf_len = err ? err_len : 0};
    if (params) {
        if (params->struct_size < sizeof *params) {
            if (err && err_len)
                snprintf(err, err_len, "comm_create: params->struct_size %zu "
                         "is smaller than %zu", params->struct_size,
                         sizeof *params);
            return MOX_ERR_INVALID_ARG;
        }
        p.oob_allgather = params->oob_allgather;
        p.oob_ctx = params->oob_ctx;
        p.oob_rank = params->oob_rank;
        p.oob_size = params->oob_size;
    }
    struct mox_v1_comm *c = calloc(1, sizeof *c);
    if (!c)
        return MOX_ERR_NO_MEMORY;
    mox_status_t st = mox_comm_create(&p, &c->inner);
    if (st != MOX_OK) {
        free(c);
        return st;
    }
    *out = c;
    return MOX_OK;
}

static void req_unlink(struct mox_v1_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        r->comm->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
}

static void moe_unlink(struct mox_v1_moe *m)
{
    if (m->prev)
        m->prev->next = m->next;
    else
        m->comm->moes = m->next;
    if (m->next)
        m->next->prev = m->prev;
}

static void comm_destroy(mox_v1_comm_t c)
{
    if (!c)
        return;
    /* mox stops the running requests; the handles are ours to free. */
    mox_comm_destroy(c->inner);
    while (c->reqs) {
        struct mox_v1_req *r = c->reqs;
        c->reqs = r->next;
        mox_req_free(r->inner);
        free(r);
    }
    while (c->moes) {
        struct mox_v1_moe *m = c->moes;
        c->moes = m->next;
        mox_moe_destroy(m->inner);
        free(m);
    }
    free(c);
}

/* mox_comm_destroy does not synchronise with peers already: abort is the
 * same teardown, named for hosts that distinguish the two. */
static void comm_abort(mox_v1_comm_t c) { comm_destroy(c); }

static int comm_rank(mox_v1_comm_t c) { return c ? mox_comm_rank(c->inner) : -1; }
static int comm_size(mox_v1_comm_t c) { return c ? mox_comm_size(c->inner) : -1; }

static const char *comm_last_error(mox_v1_comm_t c)
{
    return mox_comm_last_error(c ? c->inner : NULL);
}

static int comm_stats(mox_v1_comm_t c, mox_v1_stats_t *s)
{
    if (!c || !s || s->struct_size < sizeof *s)
        return MOX_ERR_INVALID_ARG;
    mox_stats_t in = {.struct_size = sizeof in};
    mox_status_t st = mox_comm_stats(c->inner, &in);
    if (st != MOX_OK)
        return st;
    *s = (mox_v1_stats_t){sizeof *s,         in.ops,       in.bytes_intra,
                          in.bytes_inter,    in.msgs_intra, in.msgs_inter,
                          in.time_ns};
    return MOX_OK;
}

/* ---- requests ------------------------------------------------------ */

/* Wrap a started mox request (`st` is its start's status; callers compute
 * it before the call, since argument evaluation order is unspecified). */
static int wrap_req(struct mox_v1_comm *c, mox_status_t st, mox_req_t inner,
                    mox_v1_req_t *out, struct mox_v1_moe *m,
                    mox_v1_moe_output_t *moe_out)
{
    if (st != MOX_OK)
        return st;
    struct mox_v1_req *r = calloc(1, sizeof *r);
    if (!r) {
        mox_wait(inner);
        mox_req_free(inner);
        return MOX_ERR_NO_MEMORY;
    }
    r->inner = inner;
    r->comm = c;
    r->out = moe_out;
    r->inner_out = m ? &m->out : NULL;
    r->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = r;
    c->reqs = r;
    *out = r;
    return MOX_OK;
}

static void req_finished(struct mox_v1_req *r)
{
    if (r->out && r->inner_out)
        r->out->num_recv = r->inner_out->num_recv;
}

static int req_test(mox_v1_req_t r, int *done)
{
    if (!r || !done)
        return MOX_ERR_INVALID_ARG;
    mox_status_t st = mox_test(r->inner, done);
    if (*done)
        req_finished(r);
    return st;
}

static int req_wait(mox_v1_req_t r)
{
    if (!r)
        return MOX_ERR_INVALID_ARG;
    mox_status_t st = mox_wait(r->inner);
    req_finished(r);
    return st;
}

static void req_free(mox_v1_req_t r)
{
    if (!r)
        return;
    mox_req_free(r->inner);
    req_unlink(r);
    free(r);
}

/* ---- collectives --------------------------------------------------- */

/* Only host memory in this implementation (caps.mem_types). */
static int is_host(uint32_t mem_type) { return mem_type == MOX_V1_MEM_HOST; }

static int ibarrier(mox_v1_comm_t c, mox_v1_req_t *req)
{
    if (!c || !req)
        return MOX_ERR_INVALID_ARG;
    mox_req_t in = NULL;
    mox_status_t st = mox_ibarrier(c->inner, &in);
    return wrap_req(c, st, in, req, NULL, NULL);
}

static int ialltoall(mox_v1_comm_t c, mox_v1_cbuf_t sb, mox_v1_buf_t rb,
                     uint64_t count, size_t elem_bytes, mox_v1_req_t *req)
{
    if (!c || !req)
        return MOX_ERR_INVALID_ARG;
    if (!is_host(sb.mem_type) || !is_host(rb.mem_type))
        return MOX_ERR_UNSUPPORTED;
    mox_req_t in = NULL;
    mox_status_t st = mox_ialltoall(c->inner, sb.ptr, rb.ptr, count,
                                    elem_bytes, &in);
    return wrap_req(c, st, in, req, NULL, NULL);
}

static int ialltoallv(mox_v1_comm_t c, mox_v1_cbuf_t sb, const uint64_t *sc,
                      const uint64_t *sd, mox_v1_buf_t rb, const uint64_t *rc,
                      const uint64_t *rd, size_t elem_bytes, mox_v1_req_t *req)
{
    if (!c || !req)
        return MOX_ERR_INVALID_ARG;
    if (!is_host(sb.mem_type) || !is_host(rb.mem_type))
        return MOX_ERR_UNSUPPORTED;
    mox_req_t in = NULL;
    mox_status_t st = mox_ialltoallv(c->inner, sb.ptr, sc, sd, rb.ptr, rc,
                                     rd, elem_bytes, &in);
    return wrap_req(c, st, in, req, NULL, NULL);
}

/* ---- reduce-scatter and allgather --------------------------------- */

/* sendbuf of the in-place forms: MOX_V1_IN_PLACE is mox.h's MOX_IN_PLACE,
 * and its memory type is that of recvbuf. */
static const void *send_ptr(mox_v1_cbuf_t sb)
{
    return sb.ptr == MOX_V1_IN_PLACE ? MOX_IN_PLACE : sb.ptr;
}

static int host_bufs(mox_v1_cbuf_t sb, mox_v1_buf_t rb)
{
    return (sb.ptr == MOX_V1_IN_PLACE || is_host(sb.mem_type)) &&
           is_host(rb.mem_type);
}

static int ireduce_scatter(mox_v1_comm_t c, mox_v1_cbuf_t sb, mox_v1_buf_t rb,
                           uint64_t recvcount, int32_t dtype, int32_t op,
                           mox_v1_req_t *req)
{
    if (!c || !req)
        return MOX_ERR_INVALID_ARG;
    if (!host_bufs(sb, rb))
        return MOX_ERR_UNSUPPORTED;
    mox_req_t in = NULL;
    mox_status_t st = mox_ireduce_scatter(c->inner, send_ptr(sb), rb.ptr,
                                          recvcount, (mox_dtype_t)dtype,
                                          (mox_op_t)op, &in);
    return wrap_req(c, st, in, req, NULL, NULL);
}

static int ireduce_scatter_v(mox_v1_comm_t c, mox_v1_cbuf_t sb,
                             mox_v1_buf_t rb, const uint64_t *recvcounts,
                             int32_t dtype, int32_t op, mox_v1_req_t *req)
{
    if (!c || !req)
        return MOX_ERR_INVALID_ARG;
    if (!host_bufs(sb, rb))
        return MOX_ERR_UNSUPPORTED;
    mox_req_t in = NULL;
    mox_status_t st = mox_ireduce_scatter_v(c->inner, send_ptr(sb), rb.ptr,
                                            recvcounts, (mox_dtype_t)dtype,
                                            (mox_op_t)op, &in);
    return wrap_req(c, st, in, req, NULL, NULL);
}

static int ireduce_scatter_sparse(mox_v1_comm_t c, mox_v1_cbuf_t sb,
                                  mox_v1_buf_t rb, uint64_t recvcount,
                                  int32_t dtype, int32_t op,
                                  uint64_t block_elems, const uint64_t *blocks,
                                  uint64_t nblocks, mox_v1_req_t *req)
{
    if (!c || !req)
        return MOX_ERR_INVALID_ARG;
    if (!host_bufs(sb, rb))
        return MOX_ERR_UNSUPPORTED;
    mox_req_t in = NULL;
    mox_status_t st = mox_ireduce_scatter_sparse(
        c->inner, send_ptr(sb), rb.ptr, recvcount, (mox_dtype_t)dtype,
        (mox_op_t)op, block_elems, blocks, nblocks, &in);
    return wrap_req(c, st, in, req, NULL, NULL);
}

static int iallgather(mox_v1_comm_t c, mox_v1_cbuf_t sb, mox_v1_buf_t rb,
                      uint64_t count, int32_t dtype, mox_v1_req_t *req)
{
    if (!c || !req)
        return MOX_ERR_INVALID_ARG;
    if (!host_bufs(sb, rb))
        return MOX_ERR_UNSUPPORTED;
    mox_req_t in = NULL;
    mox_status_t st = mox_iallgather(c->inner, send_ptr(sb), rb.ptr, count,
                                     (mox_dtype_t)dtype, &in);
    return wrap_req(c, st, in, req, NULL, NULL);
}

static int iallgatherv(mox_v1_comm_t c, mox_v1_cbuf_t sb, uint64_t sendcount,
                       mox_v1_buf_t rb, const uint64_t *recvcounts,
                       const uint64_t *displs, int32_t dtype,
                       mox_v1_req_t *req)
{
    if (!c || !req)
        return MOX_ERR_INVALID_ARG;
    if (!host_bufs(sb, rb))
        return MOX_ERR_UNSUPPORTED;
    mox_req_t in = NULL;
    mox_status_t st = mox_iallgatherv(c->inner, send_ptr(sb), sendcount,
                                      rb.ptr, recvcounts, displs,
                                      (mox_dtype_t)dtype, &in);
    return wrap_req(c, st, in, req, NULL, NULL);
}

/* ---- MoE ----------------------------------------------------------- */

static int moe_create(mox_v1_comm_t c, const mox_v1_moe_config_t *cfg,
                      mox_v1_moe_t *out)
{
    if (!c || !cfg || !out || cfg->struct_size < sizeof *cfg)
        return MOX_ERR_INVALID_ARG;
    *out = NULL;
    mox_moe_config_t mc = {.struct_size = sizeof mc,
                           .num_experts = cfg->num_experts,
                           .hidden = cfg->hidden,
                           .topk = cfg->topk,
                           .x_dtype = (mox_dtype_t)cfg->x_dtype,
                           .idx_dtype = (mox_dtype_t)cfg->idx_dtype,
                           .expert_alignment = cfg->expert_alignment,
                           .dispatch_wire = cfg->dispatch_wire,
                           .combine_wire = cfg->combine_wire,
                           .algo = cfg->algo};
    struct mox_v1_moe *m = calloc(1, sizeof *m);
    if (!m)
        return MOX_ERR_NO_MEMORY;
    mox_status_t st = mox_moe_create(c->inner, &mc, &m->inner);
    if (st != MOX_OK) {
        free(m);
        return st;
    }
    m->comm = c;
    m->next = c->moes;
    if (c->moes)
        c->moes->prev = m;
    c->moes = m;
    *out = m;
    return MOX_OK;
}

static void moe_destroy(mox_v1_moe_t m)
{
    if (!m)
        return;
    moe_unlink(m);
    mox_moe_destroy(m->inner);
    free(m);
}

static int moe_input(const mox_v1_moe_input_t *in, mox_moe_input_t *mi)
{
    if (!in || in->struct_size < sizeof *in)
        return MOX_ERR_INVALID_ARG;
    if (!is_host(in->x.mem_type) || !is_host(in->topk_idx.mem_type) ||
        !is_host(in->topk_weights.mem_type))
        return MOX_ERR_UNSUPPORTED;
    *mi = (mox_moe_input_t){.struct_size = sizeof *mi,
                            .num_tokens = in->num_tokens,
                            .x = in->x.ptr,
                            .topk_idx = in->topk_idx.ptr,
                            .topk_weights = in->topk_weights.ptr};
    return MOX_OK;
}

static int moe_inotify(mox_v1_moe_t m, const mox_v1_moe_input_t *in,
                       mox_v1_req_t *req)
{
    if (!m || !req)
        return MOX_ERR_INVALID_ARG;
    mox_moe_input_t mi;
    int st = moe_input(in, &mi);
    if (st != MOX_OK)
        return st;
    mox_req_t r = NULL;
    st = mox_moe_inotify(m->inner, &mi, &r);
    return wrap_req(m->comm, st, r, req, NULL, NULL);
}

static int moe_recv_count(mox_v1_moe_t m, uint64_t *num_recv,
                          uint64_t *per_expert)
{
    if (!m)
        return MOX_ERR_INVALID_ARG;
    return mox_moe_recv_count(m->inner, num_recv, per_expert);
}

static int moe_idispatch(mox_v1_moe_t m, const mox_v1_moe_input_t *in,
                         mox_v1_moe_output_t *out, mox_v1_req_t *req)
{
    if (!m || !out || !req || out->struct_size < sizeof *out)
        return MOX_ERR_INVALID_ARG;
    mox_moe_input_t mi;
    int st = moe_input(in, &mi);
    if (st != MOX_OK)
        return st;
    const mox_v1_buf_t *bufs[] = {&out->recv_x, &out->recv_topk_idx,
                                  &out->recv_topk_weights, &out->recv_src,
                                  &out->recv_per_expert};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]->ptr && !is_host(bufs[i]->mem_type))
            return MOX_ERR_UNSUPPORTED;
    m->out = (mox_moe_output_t){
        .struct_size = sizeof m->out,
        .capacity = out->capacity,
        .recv_x = out->recv_x.ptr,
        .recv_topk_idx = out->recv_topk_idx.ptr,
        .recv_topk_weights = out->recv_topk_weights.ptr,
        .recv_src = out->recv_src.ptr,
        .recv_per_expert = out->recv_per_expert.ptr};
    out->num_recv = 0;
    mox_req_t r = NULL;
    st = mox_moe_idispatch(m->inner, &mi, &m->out, &r);
    return wrap_req(m->comm, st, r, req, m, out);
}

static int moe_icombine(mox_v1_moe_t m, mox_v1_cbuf_t expert_out,
                        mox_v1_buf_t out, mox_v1_req_t *req)
{
    if (!m || !req)
        return MOX_ERR_INVALID_ARG;
    if (!is_host(expert_out.mem_type) || !is_host(out.mem_type))
        return MOX_ERR_UNSUPPORTED;
    mox_req_t r = NULL;
    mox_status_t st = mox_moe_icombine(m->inner, expert_out.ptr, out.ptr, &r);
    return wrap_req(m->comm, st, r, req, NULL, NULL);
}

/* ---- the table ----------------------------------------------------- */

MOX_API const mox_plugin_v1_t mox_plugin_v1 = {
    .struct_size = sizeof(mox_plugin_v1_t),
    .abi_version = MOX_PLUGIN_ABI_V1,
    .name = "mox",
    .version = MOX_VERSION_STRING,
    .get_caps = get_caps,
    .init = init,
    .finalize = finalize,
    .strerror = status_text,
    .comm_create = comm_create,
    .comm_destroy = comm_destroy,
    .comm_abort = comm_abort,
    .comm_rank = comm_rank,
    .comm_size = comm_size,
    .comm_last_error = comm_last_error,
    .comm_stats = comm_stats,
    .req_test = req_test,
    .req_wait = req_wait,
    .req_free = req_free,
    .ibarrier = ibarrier,
    .ialltoall = ialltoall,
    .ialltoallv = ialltoallv,
    .moe_create = moe_create,
    .moe_destroy = moe_destroy,
    .moe_inotify = moe_inotify,
    .moe_recv_count = moe_recv_count,
    .moe_idispatch = moe_idispatch,
    .moe_icombine = moe_icombine,
    .ireduce_scatter = ireduce_scatter,
    .ireduce_scatter_v = ireduce_scatter_v,
    .ireduce_scatter_sparse = ireduce_scatter_sparse,
    .iallgather = iallgather,
    .iallgatherv = iallgatherv,
};
