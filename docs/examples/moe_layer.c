/*
 * moe_layer: an expert-parallel MoE layer whose token exchange is mox's
 * dispatch and combine instead of two alltoallv calls (docs/moe.md,
 * "Replacing a framework's all-to-all").
 *
 * Every rank holds T tokens of H values and a router output (top-k expert
 * ids, -1 for "no expert", and weights). The E experts are spread evenly
 * over the ranks. One step of the layer:
 *
 *   1. mox_moe_inotify + mox_moe_recv_count: how many rows will arrive,
 *      to size the receive buffers;
 *   2. mox_moe_dispatch: each token reaches every rank that holds one of
 *      its experts, once per rank;
 *   3. the local experts run on the received rows (here a toy expert:
 *      expert e scales its input by 1 + e / E) and each row's outputs are
 *      weighted and summed;
 *   4. mox_moe_combine: the rows go back and are summed in f32 into the
 *      tokens' original slots.
 *
 * The program checks what it gets against a result it computes alone from
 * its own tokens and routing (no communication), and every received row
 * bit for bit against the token its source rank holds, then prints one
 * line per rank and exits non-zero on any difference.
 *
 * Build (from the repository, after tools/build): the target moe_layer,
 * in build/bin. Run on two emulated nodes of two ranks each:
 *   tools/mox-run -n 4 --nodes 2 -- build/bin/moe_layer
 * or under any launcher mox_comm_create can bootstrap from (mpirun, or
 * MOX_RANK / MOX_SIZE / MOX_ROOT, see the README).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mox/mox.h>

enum { TOKENS = 96, HIDDEN = 512, TOPK = 4, EXPERTS_PER_RANK = 4, STEPS = 3 };

/* Deterministic data, so that any rank can regenerate any rank's tokens. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

static float token_value(int step, int rank, int t, int h)
{
    uint64_t r = mix(((uint64_t)step << 48) ^ ((uint64_t)rank << 32) ^
                     ((uint64_t)t << 16) ^ (uint64_t)h);
    return (float)(r % 2001) / 1000.0f - 1.0f; /* in [-1, 1] */
}

/* A router's output: TOPK distinct experts per token, some slots -1, and
 * every 17th token with no expert at all. */
static void route(int step, int rank, int E, int64_t *idx, float *w)
{
    for (int t = 0; t < TOKENS; t++) {
        int64_t *ids = idx + (size_t)t * TOPK;
        for (int j = 0; j < TOPK; j++) {
            int64_t e;
            int again;
            uint64_t r = mix(((uint64_t)step << 40) ^ ((uint64_t)rank << 24) ^
                             ((uint64_t)t << 8) ^ (uint64_t)j);
            do { /* distinct within the token */
                e = (int64_t)(r % (uint64_t)E);
                again = 0;
                for (int i = 0; i < j; i++)
                    again |= ids[i] == e;
                r = mix(r);
            } while (again);
            ids[j] = e;
            w[(size_t)t * TOPK + j] = 1.0f / (float)(j + 1);
        }
        if (t % 13 == 0)
            ids[TOPK - 1] = -1;
        if (t % 17 == 5)
            for (int j = 0; j < TOPK; j++)
                ids[j] = -1;
    }
}

/* The toy expert: expert e (global id) scales its input. */
static float expert(int e_global, int E, float v)
{
    return v * (1.0f + (float)e_global / (float)E);
}

int main(void)
{
    mox_comm_t comm;
    if (mox_comm_create(NULL, &comm) != MOX_OK) {
        fprintf(stderr, "moe_layer: mox_comm_create failed\n");
        return 1;
    }
    int rank = mox_comm_rank(comm), size = mox_comm_size(comm);
    int E = EXPERTS_PER_RANK * size, El = EXPERTS_PER_RANK;

    /* Once per layer shape; collective. */
    mox_moe_config_t cfg = {
        .struct_size = sizeof cfg,
        .num_experts = E, .hidden = HIDDEN, .topk = TOPK,
        .x_dtype = MOX_DTYPE_F32, .idx_dtype = MOX_DTYPE_I64,
        .expert_alignment = 1,
        /* Native: rows arrive bit for bit, as the check below wants
         * (MOX_MOE_WIRE_BF16 or _FP8 halve or quarter the bytes between
         * nodes and round the rows, docs/numerics.md). */
        .dispatch_wire = MOX_MOE_WIRE_NATIVE,
        .combine_wire = MOX_MOE_WIRE_DEFAULT,  /* f32 */
        .algo = MOX_MOE_ALGO_DEFAULT,          /* MOX_MOE_ALGO, auto */
    };
    mox_moe_t moe;
    if (mox_moe_create(comm, &cfg, &moe) != MOX_OK) {
        fprintf(stderr, "moe_layer: rank %d: %s\n", rank,
                mox_comm_last_error(comm));
        return 1;
    }

    float *x = malloc(sizeof(float) * TOKENS * HIDDEN);
    int64_t *idx = malloc(sizeof(int64_t) * TOKENS * TOPK);
    float *w = malloc(sizeof(float) * TOKENS * TOPK);
    float *combined = malloc(sizeof(float) * TOKENS * HIDDEN);
    uint64_t *per_expert = malloc(sizeof(uint64_t) * El);
    float *recv_x = NULL, *recv_w = NULL, *y = NULL;
    int32_t *recv_idx = NULL, *recv_src = NULL;
    int bad = !x || !idx || !w || !combined || !per_expert;
    double worst = 0;
    uint64_t rows_total = 0;

    for (int step = 0; step < STEPS && !bad; step++) {
        for (int t = 0; t < TOKENS; t++)
            for (int h = 0; h < HIDDEN; h++)
                x[(size_t)t * HIDDEN + h] = token_value(step, rank, t, h);
        route(step, rank, E, idx, w);
        mox_moe_input_t in = {sizeof in, TOKENS, x, idx, w};

        /* 1. How many rows will arrive? */
        mox_req_t req;
        uint64_t rows;
        mox_status_t st = mox_moe_inotify(moe, &in, &req);
        if (st == MOX_OK) {
            st = mox_wait(req);
            mox_req_free(req);
        }
        if (st == MOX_OK)
            st = mox_moe_recv_count(moe, &rows, NULL);
        if (st != MOX_OK) {
            fprintf(stderr, "moe_layer: rank %d: notify: %s: %s\n", rank,
                    mox_strerror(st), mox_comm_last_error(comm));
            bad = 1;
            break;
        }
        size_t n = rows ? (size_t)rows : 1;
        recv_x = realloc(recv_x, sizeof(float) * n * HIDDEN);
        y = realloc(y, sizeof(float) * n * HIDDEN);
        recv_idx = realloc(recv_idx, sizeof(int32_t) * n * TOPK);
        recv_w = realloc(recv_w, sizeof(float) * n * TOPK);
        recv_src = realloc(recv_src, sizeof(int32_t) * n * 2);
        if (!recv_x || !y || !recv_idx || !recv_w || !recv_src) {
            fprintf(stderr, "moe_layer: rank %d: out of memory\n", rank);
            bad = 1;
            break;
        }

        /* 2. Dispatch. */
        mox_moe_output_t out = {sizeof out, rows, recv_x, recv_idx, recv_w,
                                recv_src, per_expert, 0};
        st = mox_moe_dispatch(moe, &in, &out);
        if (st != MOX_OK) {
            fprintf(stderr, "moe_layer: rank %d: dispatch: %s: %s\n", rank,
                    mox_strerror(st), mox_comm_last_error(comm));
            bad = 1;
            break;
        }
        rows_total += out.num_recv;

        /* 3. Local experts, on rows in received order. Each row is the
         * token its source holds, bit for bit (native wire). */
        for (uint64_t r = 0; r < out.num_recv; r++) {
            int src = recv_src[2 * r], tok = recv_src[2 * r + 1];
            const float *xr = recv_x + r * HIDDEN;
            float *yr = y + r * HIDDEN;
            for (int h = 0; h < HIDDEN; h++) {
                float v = token_value(step, src, tok, h);
                if (memcmp(&v, &xr[h], sizeof v) != 0 && !bad) {
                    fprintf(stderr, "moe_layer: rank %d step %d: row %llu "
                            "(rank %d token %d) value %d is %g, not %g\n",
                            rank, step, (unsigned long long)r, src, tok, h,
                            xr[h], v);
                    bad = 1;
                }
                yr[h] = 0;
            }
            for (int j = 0; j < TOPK; j++) {
                int e = recv_idx[r * TOPK + j]; /* local id, or -1 */
                if (e < 0)
                    continue;
                float wt = recv_w[r * TOPK + j];
                for (int h = 0; h < HIDDEN; h++)
                    yr[h] += wt * expert(e + rank * El, E, xr[h]);
            }
        }

        /* 4. Combine: results in the original token order. */
        st = mox_moe_combine(moe, y, combined);
        if (st != MOX_OK) {
            fprintf(stderr, "moe_layer: rank %d: combine: %s: %s\n", rank,
                    mox_strerror(st), mox_comm_last_error(comm));
            bad = 1;
            break;
        }

        /* The same layer computed here alone, in double. */
        for (int t = 0; t < TOKENS; t++)
            for (int h = 0; h < HIDDEN; h++) {
                double ref = 0, mag = 0;
                float v = x[(size_t)t * HIDDEN + h];
                for (int j = 0; j < TOPK; j++) {
                    int64_t e = idx[(size_t)t * TOPK + j];
                    if (e < 0)
                        continue;
                    double term = (double)w[(size_t)t * TOPK + j] *
                                  expert((int)e, E, v);
                    ref += term;
                    mag += fabs(term);
                }
                double err = fabs((double)combined[(size_t)t * HIDDEN + h] -
                                  ref);
                /* f32 sums of TOPK terms: a few ulps of their magnitude */
                if (err > 1e-5 * mag + 1e-30) {
                    if (!bad)
                        fprintf(stderr, "moe_layer: rank %d step %d: token "
                                "%d value %d is %.9g, expected %.9g\n", rank,
                                step, t, h,
                                combined[(size_t)t * HIDDEN + h], ref);
                    bad = 1;
                }
                if (mag > 0 && err / mag > worst)
                    worst = err / mag;
            }
    }

    if (!bad)
        printf("moe_layer: rank %d of %d: %d steps, %d tokens each, %llu "
               "rows received in all; combine matches the reference "
               "(largest relative error %.2g)\n", rank, size, STEPS, TOKENS,
               (unsigned long long)rows_total, worst);
    free(x);
    free(idx);
    free(w);
    free(combined);
    free(per_expert);
    free(recv_x);
    free(y);
    free(recv_idx);
    free(recv_w);
    free(recv_src);
    mox_moe_destroy(moe);
    mox_comm_destroy(comm);
    return bad;
}
