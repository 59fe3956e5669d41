/*
 * Bootstrap over a host's out-of-band allgather (mox_comm_params_t), as
 * UCC's ucc_oob_coll_t: the host already knows rank and size and moves the
 * bytes; mox only checks what it is given.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "bootstrap_impl.h"

typedef struct {
    mox_oob_allgather_fn fn;
    void *ctx;
} oob_state_t;

static mox_status_t oob_allgather(mox__boot_t *boot, const void *mine,
                                  void *all, size_t bytes, char *errbuf,
                                  size_t errlen)
{
    const oob_state_t *s = boot->priv;
    int rc = s->fn(s->ctx, mine, all, bytes);
    if (rc != 0) {
        snprintf(errbuf, errlen, "bootstrap: the host's OOB allgather "
                 "returned %d (rank %d of %d, %zu bytes, allgather #%llu)",
                 rc, boot->rank, boot->size, bytes,
                 (unsigned long long)boot->ag_count);
        return MOX_ERR_BOOTSTRAP;
    }
    return MOX_OK;
}

static void oob_destroy(mox__boot_t *boot)
{
    free(boot->priv);
    boot->priv = NULL;
}

static const mox__boot_ops_t oob_ops = {
    .name = "oob",
    .allgather = oob_allgather,
    .destroy = oob_destroy,
};

/* The host's struct may be older than ours; every field we read must lie
 * inside the size it declared. */
static int params_cover_oob(const mox_comm_params_t *p)
{
    return p->struct_size >= offsetof(mox_comm_params_t, oob_size) +
                                 sizeof(p->oob_size);
}

mox_status_t mox__boot_oob_create(const mox_comm_params_t *params,
                                  mox__boot_t *boot, char *errbuf,
                                  size_t errlen)
{
    if (params == NULL || params->oob_allgather == NULL) {
        snprintf(errbuf, errlen, "bootstrap: OOB allgather function is NULL");
        return MOX_ERR_INVALID_ARG;
    }
    if (!params_cover_oob(params)) {
        snprintf(errbuf, errlen, "bootstrap: params->struct_size %zu is too "
                 "small to hold oob_rank/oob_size (need %zu)",
                 params->struct_size,
                 offsetof(mox_comm_params_t, oob_size) +
                     sizeof(params->oob_size));
        return MOX_ERR_INVALID_ARG;
    }
    if (params->oob_size < 1 || params->oob_rank < 0 ||
        params->oob_rank >= params->oob_size) {
        snprintf(errbuf, errlen, "bootstrap: OOB rank %d / size %d is invalid "
                 "(need size >= 1 and 0 <= rank < size)",
                 params->oob_rank, params->oob_size);
        return MOX_ERR_INVALID_ARG;
    }
    oob_state_t *s = malloc(sizeof(*s));
    if (s == NULL) {
        snprintf(errbuf, errlen, "bootstrap: out of memory");
        return MOX_ERR_NO_MEMORY;
    }
    s->fn = params->oob_allgather;
    s->ctx = params->oob_ctx;
    boot->ops = &oob_ops;
    boot->priv = s;
    boot->rank = params->oob_rank;
    boot->size = params->oob_size;
    return MOX_OK;
}
