/*
 * Conformance cases for barrier, statistics, alltoall and alltoallv. Data
 * comes from tools/common/testdata.h: the bytes rank s sends rank d in a
 * case are td_fill(seed, key, s, d), so every receiver checks every block
 * without trusting its sender. Receive buffers have a canary element after
 * every block; a byte written outside the blocks is a failure too.
 */
#include "conf.h"
#include "testdata.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define CANARY 0xA5

enum { L_DENSE, L_SPARSE, L_SILENT, L_SELF, L_ZERO, L_SKEW, L_DEVICE,
       L_BADARG };
static const char *layout_name[] = {"dense", "sparse", "silent-rank",
                                    "self-only", "all-zero", "skewed",
                                    "device-mem", "elem-bytes-0"};

static const struct {
    const char *name;
    int bytes;
} types[] = {{"u8", 1}, {"f16", 2}, {"f32", 4}, {"f64", 8}, {"b24", 3}};
#define NTYPES (int)(sizeof types / sizeof types[0])

/* ---- barrier and stats --------------------------------------------- */

static conf_result_t run_barrier(conf_ctx_t *x, const conf_case_t *c)
{
    if (!CONF_NEED(x, ibarrier, MOX_V1_COLL_BARRIER))
        return CASE_SKIP;
    for (int i = 0; i < 3; i++) {
        mox_v1_req_t req = NULL;
        int st = x->t->ibarrier(x->comm, &req);
        st = conf_finish(x, st, req, c->progress);
        if (st != MOX_V1_OK)
            return conf_fail(x, "barrier %d: %s: %s", i, conf_status(x, st),
                             x->t->comm_last_error(x->comm));
    }
    return CASE_PASS;
}

static conf_result_t run_stats(conf_ctx_t *x, const conf_case_t *c)
{
    if (!x->t->comm_stats)
        return conf_skip(x, "comm_stats entry is NULL");
    if (!CONF_NEED(x, ibarrier, MOX_V1_COLL_BARRIER))
        return CASE_SKIP;
    mox_v1_stats_t a = {.struct_size = sizeof a}, b = a;
    int st = x->t->comm_stats(x->comm, &a);
    mox_v1_req_t req = NULL;
    if (st == MOX_V1_OK)
        st = x->t->ibarrier(x->comm, &req);
    if (st == MOX_V1_OK)
        st = conf_finish(x, st, req, PROG_WAIT);
    if (st == MOX_V1_OK)
        st = x->t->comm_stats(x->comm, &b);
    if (st != MOX_V1_OK)
        return conf_fail(x, "%s: %s", conf_status(x, st),
                         x->t->comm_last_error(x->comm));
    if (b.ops <= a.ops)
        return conf_fail(x, "stats.ops did not grow over a barrier (%" PRIu64
                         " -> %" PRIu64 ")", a.ops, b.ops);
    return CASE_PASS;
}

/* ---- alltoall(v) --------------------------------------------------- */

static uint64_t count_of(const conf_ctx_t *x, const conf_case_t *c, int s,
                         int d)
{
    int P = x->size;
    switch (c->layout) {
    case L_SPARSE: return td_count(x->seed, c->key, s, d, c->max_count, 80);
    case L_SILENT:
        return s == P - 1 ? 0 : td_count(x->seed, c->key, s, d, c->max_count, 0);
    case L_SELF: return s == d ? c->max_count : 0;
    case L_ZERO: return 0;
    case L_SKEW:
        if (s == 0 && d == P - 1)
            return c->max_count * 4;
        return td_count(x->seed, c->key, s, d, c->max_count / 16 + 1, 0);
    default: return td_count(x->seed, c->key, s, d, c->max_count, 0);
    }
}

/* Check block `j` of `bytes` bytes at `p`, then the canary after it. */
static int check_block(conf_ctx_t *x, const conf_case_t *c, int j,
                       const unsigned char *p, uint64_t n)
{
    size_t eb = (size_t)c->elem_bytes, bytes = (size_t)n * eb;
    int64_t at = td_check(x->seed, c->key, j, x->rank, p, bytes);
    if (at >= 0) {
        uint64_t e = (uint64_t)at / eb;
        conf_fail(x, "block from rank %d (%" PRIu64 " elements of %zu bytes) "
                  "wrong at element %" PRIu64 "%s (byte %" PRId64 ")", j, n,
                  eb, e, e + 1 == n ? ", the last" : "", at);
        return 0;
    }
    for (size_t i = 0; i < eb; i++)
        if (p[bytes + i] != CANARY) {
            conf_fail(x, "byte %zu after the block from rank %d (%" PRIu64
                      " elements) was overwritten", i, j, n);
            return 0;
        }
    return 1;
}

static conf_result_t run_alltoall(conf_ctx_t *x, const conf_case_t *c)
{
    if (!CONF_NEED(x, ialltoall, MOX_V1_COLL_ALLTOALL))
        return CASE_SKIP;
    int P = x->size;
    size_t eb = (size_t)c->elem_bytes;
    uint64_t n = c->max_count;
    size_t blk = (size_t)n * eb;
    unsigned char *sb = malloc(blk * (size_t)P + 1);
    unsigned char *rb = malloc(blk * (size_t)P + eb);
    for (int j = 0; j < P; j++)
        td_fill(x->seed, c->key, x->rank, j, sb + (size_t)j * blk, blk);
    memset(rb, CANARY, blk * (size_t)P + eb);
    mox_v1_cbuf_t s = {sb, MOX_V1_MEM_HOST, 0};
    mox_v1_buf_t r = {rb, MOX_V1_MEM_HOST, 0};
    if (c->layout == L_DEVICE) {
        s.mem_type = r.mem_type = MOX_V1_MEM_DEVICE;
        if (x->caps.mem_types & (1u << MOX_V1_MEM_DEVICE)) {
            free(sb);
            free(rb);
            return conf_skip(x, "caps.mem_types has MOX_V1_MEM_DEVICE but "
                             "this suite has no device buffers to pass");
        }
    }
    mox_v1_req_t req = NULL;
    int st = x->t->ialltoall(x->comm, s, r, n, eb, &req);
    conf_result_t res = CASE_PASS;
    if (c->layout == L_DEVICE) {
        if (st != MOX_V1_ERR_UNSUPPORTED) {
            if (st == MOX_V1_OK)
                conf_finish(x, st, req, PROG_WAIT);
            res = conf_fail(x, "device buffers without MOX_V1_MEM_DEVICE in "
                            "caps: got %s, expected MOX_ERR_UNSUPPORTED at "
                            "start", conf_status(x, st));
        }
    } else {
        st = conf_finish(x, st, req, c->progress);
        if (st != MOX_V1_OK)
            res = conf_fail(x, "%s: %s", conf_status(x, st),
                            x->t->comm_last_error(x->comm));
        /* Canaries only at the very end: blocks are contiguous. */
        for (int j = 0; j < P && res == CASE_PASS; j++) {
            int64_t at = td_check(x->seed, c->key, j, x->rank,
                                  rb + (size_t)j * blk, blk);
            if (at >= 0)
                res = conf_fail(x, "block from rank %d wrong at element %"
                                PRId64 " of %" PRIu64, j, at / (int64_t)eb, n);
        }
        for (size_t i = 0; i < eb && res == CASE_PASS; i++)
            if (rb[blk * (size_t)P + i] != CANARY)
                res = conf_fail(x, "byte %zu past the receive buffer was "
                                "overwritten", i);
    }
    free(sb);
    free(rb);
    return res;
}

static conf_result_t run_alltoallv(conf_ctx_t *x, const conf_case_t *c)
{
    if (!CONF_NEED(x, ialltoallv, MOX_V1_COLL_ALLTOALLV))
        return CASE_SKIP;
    int P = x->size, me = x->rank;
    size_t eb = (size_t)c->elem_bytes;
    uint64_t *v = calloc(4 * (size_t)P, sizeof *v);
    uint64_t *sc = v, *sd = v + P, *rc = v + 2 * P, *rd = v + 3 * P;
    uint64_t stot = 0, rtot = 0;
    /* Blocks in reverse rank order with a one-element gap after each, so
     * displacements matter and stray writes land on a canary. */
    for (int j = P - 1; j >= 0; j--) {
        sc[j] = count_of(x, c, me, j);
        rc[j] = count_of(x, c, j, me);
        sd[j] = stot;
        rd[j] = rtot;
        stot += sc[j] + 1;
        rtot += rc[j] + 1;
    }
    unsigned char *sb = malloc(stot * eb + 1), *rb = malloc(rtot * eb + 1);
    for (int j = 0; j < P; j++)
        td_fill(x->seed, c->key, me, j, sb + sd[j] * eb, sc[j] * eb);
    memset(rb, CANARY, rtot * eb);
    mox_v1_req_t req = NULL;
    size_t ebytes = c->layout == L_BADARG ? 0 : eb;
    int st = x->t->ialltoallv(x->comm, (mox_v1_cbuf_t){sb, MOX_V1_MEM_HOST, 0},
                              sc, sd, (mox_v1_buf_t){rb, MOX_V1_MEM_HOST, 0},
                              rc, rd, ebytes, &req);
    conf_result_t res = CASE_PASS;
    if (c->layout == L_BADARG) {
        if (st == MOX_V1_OK) {
            st = conf_finish(x, st, req, PROG_WAIT);
            if (st == MOX_V1_OK)
                res = conf_fail(x, "elem_bytes 0 was accepted");
        } else if (st != MOX_V1_ERR_INVALID_ARG) {
            res = conf_fail(x, "elem_bytes 0: got %s, expected "
                            "MOX_ERR_INVALID_ARG", conf_status(x, st));
        }
    } else {
        st = conf_finish(x, st, req, c->progress);
        if (st != MOX_V1_OK)
            res = conf_fail(x, "%s: %s", conf_status(x, st),
                            x->t->comm_last_error(x->comm));
        for (int j = 0; j < P && res == CASE_PASS; j++)
            if (!check_block(x, c, j, rb + rd[j] * eb, rc[j]))
                res = CASE_FAIL;
    }
    free(sb);
    free(rb);
    free(v);
    return res;
}

/* ---- the matrix ---------------------------------------------------- */

int conf_basic_cases(conf_case_t *out, int max)
{
    int n = 0;
    const char *prog[] = {"wait", "test"};
    for (int p = 0; p < 2 && n < max; p++) {
        out[n] = (conf_case_t){.run = run_barrier, .progress = p};
        conf_name(&out[n++], "barrier/%s", prog[p]);
    }
    if (n < max) {
        out[n] = (conf_case_t){.run = run_stats};
        conf_name(&out[n++], "stats/ops-grow");
    }
    return n;
}

int conf_a2a_cases(conf_case_t *out, int max)
{
    int n = 0;
    static const uint64_t a2a_counts[] = {0, 1, 33, 4099};
    for (int t = 0; t < NTYPES; t++)
        for (int k = 0; k < 4 && n < max; k++) {
            out[n] = (conf_case_t){.run = run_alltoall,
                                   .elem_bytes = types[t].bytes,
                                   .max_count = a2a_counts[k]};
            conf_name(&out[n++], "alltoall/%s/n=%" PRIu64 "/wait",
                      types[t].name, a2a_counts[k]);
        }
    if (n + 2 <= max) {
        out[n] = (conf_case_t){.run = run_alltoall, .elem_bytes = 4,
                               .max_count = 257, .progress = PROG_TEST};
        conf_name(&out[n++], "alltoall/f32/n=257/test");
        out[n] = (conf_case_t){.run = run_alltoall, .elem_bytes = 4,
                               .max_count = 33, .layout = L_DEVICE};
        conf_name(&out[n++], "alltoall/f32/n=33/device-mem");
    }
    /* alltoallv: every type at three sizes, dense. */
    static const uint64_t sizes[] = {8, 1000, 30000};
    for (int t = 0; t < NTYPES; t++)
        for (int k = 0; k < 3 && n < max; k++) {
            out[n] = (conf_case_t){.run = run_alltoallv,
                                   .elem_bytes = types[t].bytes,
                                   .max_count = sizes[k], .layout = L_DENSE};
            conf_name(&out[n++], "alltoallv/%s/max=%" PRIu64 "/dense/wait",
                      types[t].name, sizes[k]);
        }
    /* Every layout at one type and size, both completion styles. */
    for (int l = L_SPARSE; l <= L_SKEW; l++)
        for (int p = 0; p < 2 && n < max; p++) {
            out[n] = (conf_case_t){.run = run_alltoallv, .elem_bytes = 4,
                                   .max_count = 1000, .layout = l,
                                   .progress = p};
            conf_name(&out[n++], "alltoallv/f32/max=1000/%s/%s",
                      layout_name[l], p ? "test" : "wait");
        }
    if (n < max) {
        out[n] = (conf_case_t){.run = run_alltoallv, .elem_bytes = 4,
                               .max_count = 10, .layout = L_BADARG};
        conf_name(&out[n++], "alltoallv/f32/max=10/elem-bytes-0");
    }
    return n;
}
