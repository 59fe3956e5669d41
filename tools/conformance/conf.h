/*
 * mox-conformance internals: the case table and what a case gets. Every
 * case runs on every rank in the same order, computes the data it must
 * receive from the seed alone, and returns a verdict for this rank; the
 * driver (tools/mox_conformance.c) merges the ranks' verdicts.
 */
#ifndef MOX_CONF_H
#define MOX_CONF_H

#include "mox/plugin_v1.h"

#include <stddef.h>
#include <stdint.h>

typedef enum { CASE_PASS = 0, CASE_FAIL = 1, CASE_SKIP = 2 } conf_result_t;

typedef struct {
    const mox_plugin_v1_t *t; /* host-sized table: missing entries NULL */
    mox_v1_comm_t comm;
    int rank, size;
    uint64_t seed;
    mox_v1_caps_t caps;
    int have_caps;
    char detail[768]; /* why this rank failed or skipped */
} conf_ctx_t;

/* Completion styles. */
enum { PROG_WAIT = 0, PROG_TEST = 1 };

typedef struct conf_case conf_case_t;
struct conf_case {
    char name[128];
    conf_result_t (*run)(conf_ctx_t *ctx, const conf_case_t *c);
    uint64_t key;       /* distinct data per case (hash of the name) */
    int elem_bytes;     /* alltoall(v) */
    uint64_t max_count; /* alltoall(v): largest block, in elements */
    int layout;         /* cases_a2a.c / cases_moe.c specific */
    int progress;       /* PROG_* */
    int x_dtype, idx_dtype, algo; /* moe */
    int dtype, op;      /* reduce-scatter / allgather: MOX_V1_DTYPE_*, OP_* */
    int shape;          /* reduce_scatter_v / allgatherv: count layout */
    int density;        /* block-sparse: percent of blocks present */
    int inplace;        /* sendbuf = MOX_V1_IN_PLACE */
    int expect;         /* status the start must return (0: success) */
};

/* Append this family's cases to `out` (room for `max`); returns the count. */
int conf_basic_cases(conf_case_t *out, int max);
int conf_a2a_cases(conf_case_t *out, int max);
int conf_moe_cases(conf_case_t *out, int max);
int conf_rsag_cases(conf_case_t *out, int max);

/* Record why this rank failed / skipped; return the verdict. */
conf_result_t conf_fail(conf_ctx_t *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
conf_result_t conf_skip(conf_ctx_t *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Skip unless the table has `entry` (by name, at `offset`) and the caps
 * have `coll_bit` (0 = no capability needed). Returns 1 when usable. */
int conf_need(conf_ctx_t *ctx, size_t offset, const char *entry,
              uint64_t coll_bit, const char *coll_name);
#define CONF_NEED(ctx, field, bit)                                             \
    conf_need((ctx), offsetof(mox_plugin_v1_t, field), #field, (bit), #bit)

/* Finish a started request with req_wait or by polling req_test, free it,
 * and return its status. `st` is the status the start returned. */
int conf_finish(conf_ctx_t *ctx, int st, mox_v1_req_t req, int progress);

/* Name of a status through the plugin's strerror, with its number. */
const char *conf_status(conf_ctx_t *ctx, int st);

void conf_name(conf_case_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
