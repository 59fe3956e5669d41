/*
 * Bootstrap dispatch: pick a back end (host OOB, PMIx, TCP rendezvous, one
 * process alone), validate arguments once for all of them, and hold the
 * single-process back end.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap_impl.h"
#include "log.h"

/* ---- single process ---------------------------------------------------- */

static mox_status_t single_allgather(mox__boot_t *boot, const void *mine,
                                     void *all, size_t bytes, char *errbuf,
                                     size_t errlen)
{
    (void)boot, (void)errbuf, (void)errlen;
    if (bytes > 0)
        memmove(all, mine, bytes);
    return MOX_OK;
}

static void single_destroy(mox__boot_t *boot) { (void)boot; }

static const mox__boot_ops_t single_ops = {
    .name = "single",
    .allgather = single_allgather,
    .destroy = single_destroy,
};

static mox_status_t single_create(mox__boot_t *boot)
{
    boot->ops = &single_ops;
    boot->rank = 0;
    boot->size = 1;
    return MOX_OK;
}

/* ---- rank and size from the environment -------------------------------- */

/* A non-negative int from `name`, or -1 when unset or not a number. */
static int env_int(const char *name)
{
    const char *text = getenv(name);
    if (text == NULL || *text == '\0')
        return -1;
    errno = 0;
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < 0 || v > INT_MAX)
        return -1;
    return (int)v;
}

void mox__boot_env_rank_size(const mox__config_t *cfg, int *rank, int *size,
                             const char **src)
{
    /* Launchers in the order the design lists them; a pair is taken whole
     * so RANK from torchrun is never mixed with SLURM_NTASKS. */
    static const char *const pairs[][3] = {
        {"RANK", "WORLD_SIZE", "RANK/WORLD_SIZE"},
        {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
         "OMPI_COMM_WORLD_RANK/SIZE"},
        {"PMI_RANK", "PMI_SIZE", "PMI_RANK/PMI_SIZE"},
        {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_PROCID/SLURM_NTASKS"},
    };
    *rank = cfg->rank >= 0 ? (int)cfg->rank : -1;
    *size = cfg->size >= 0 ? (int)cfg->size : -1;
    *src = "MOX_RANK/MOX_SIZE";
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        if (*rank >= 0 && *size >= 0)
            return;
        int r = env_int(pairs[i][0]), s = env_int(pairs[i][1]);
        if (r < 0 && s < 0)
            continue;
        if (*rank < 0)
            *rank = r;
        if (*size < 0)
            *size = s;
        *src = pairs[i][2];
    }
}

/* ---- dispatch ---------------------------------------------------------- */

static int oob_requested(const mox_comm_params_t *params)
{
    return params != NULL && params->oob_allgather != NULL;
}

/* MOX_BOOTSTRAP=auto: PMIx under a PMIx launcher, TCP when a root address
 * is known, else one process — but never one process when the environment
 * says there are several, since each would silently run alone. */
static mox_status_t auto_create(const mox__config_t *cfg, mox__boot_t *boot,
                                char *errbuf, size_t errlen)
{
    if (getenv("PMIX_RANK") != NULL) {
        mox_status_t st = mox__boot_pmix_create(cfg, 1, boot, errbuf, errlen);
        if (st == MOX_OK)
            return MOX_OK;
        MOX_DEBUG("boot", "PMIX_RANK is set but PMIx failed (%s); trying TCP",
                  errbuf);
    }
    char addr[256];
    if (mox__boot_tcp_root_addr(cfg, addr, sizeof(addr)))
        return mox__boot_tcp_create(cfg, boot, errbuf, errlen);

    int rank, size;
    const char *src;
    mox__boot_env_rank_size(cfg, &rank, &size, &src);
    if (size > 1) {
        snprintf(errbuf, errlen,
                 "bootstrap: %s says %d ranks but no root address is known "
                 "(set MOX_ROOT_ADDR=IP:PORT or MASTER_ADDR+MASTER_PORT, or "
                 "launch under a PMIx launcher)",
                 src, size);
        return MOX_ERR_BOOTSTRAP;
    }
    MOX_DEBUG("boot", "no PMIx and no root address: single process");
    return single_create(boot);
}

static mox_status_t pick_backend(const mox_comm_params_t *params,
                                 const mox__config_t *cfg, mox__boot_t *boot,
                                 char *errbuf, size_t errlen)
{
    if (oob_requested(params))
        return mox__boot_oob_create(params, boot, errbuf, errlen);
    switch (cfg->bootstrap) {
    case MOX_BOOT_AUTO:
        return auto_create(cfg, boot, errbuf, errlen);
    case MOX_BOOT_PMIX:
        return mox__boot_pmix_create(cfg, 0, boot, errbuf, errlen);
    case MOX_BOOT_TCP:
        return mox__boot_tcp_create(cfg, boot, errbuf, errlen);
    case MOX_BOOT_SINGLE:
        return single_create(boot);
    default:
        snprintf(errbuf, errlen, "bootstrap: MOX_BOOTSTRAP index %lld is not "
                 "one of auto|pmix|tcp|single", (long long)cfg->bootstrap);
        return MOX_ERR_CONFIG;
    }
}

mox_status_t mox__boot_create(const mox_comm_params_t *params,
                              const mox__config_t *cfg, mox__boot_t **boot,
                              char *errbuf, size_t errlen)
{
    char local[512];
    if (errbuf == NULL || errlen == 0) { /* back ends always write a reason */
        errbuf = local;
        errlen = sizeof(local);
    }
    errbuf[0] = '\0';
    if (boot == NULL || cfg == NULL) {
        snprintf(errbuf, errlen, "bootstrap: %s is NULL",
                 boot == NULL ? "boot" : "cfg");
        return MOX_ERR_INVALID_ARG;
    }
    *boot = NULL;
    mox__boot_t *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        snprintf(errbuf, errlen, "bootstrap: out of memory");
        return MOX_ERR_NO_MEMORY;
    }
    b->timeout_ms = cfg->timeout_ms > INT_MAX ? INT_MAX : (int)cfg->timeout_ms;
    mox_status_t st = pick_backend(params, cfg, b, errbuf, errlen);
    if (st != MOX_OK) {
        /* The caller reports the failure (mox_comm_create logs it at error
         * level); logging it here too would print every reason twice. */
        MOX_DEBUG("boot", "%s", errbuf);
        free(b);
        return st;
    }
    MOX_DEBUG("boot", "%s bootstrap: rank %d of %d", b->ops->name, b->rank,
              b->size);
    *boot = b;
    return MOX_OK;
}

void mox__boot_destroy(mox__boot_t *boot)
{
    if (boot == NULL)
        return;
    boot->ops->destroy(boot);
    free(boot);
}

int mox__boot_rank(const mox__boot_t *boot) { return boot->rank; }
int mox__boot_size(const mox__boot_t *boot) { return boot->size; }
const char *mox__boot_kind(const mox__boot_t *boot) { return boot->ops->name; }

mox_status_t mox__boot_allgather(mox__boot_t *boot, const void *mine,
                                 void *all, size_t bytes, char *errbuf,
                                 size_t errlen)
{
    char local[512];
    if (errbuf == NULL || errlen == 0) {
        errbuf = local;
        errlen = sizeof(local);
    }
    errbuf[0] = '\0';
    if (boot == NULL || (bytes > 0 && (mine == NULL || all == NULL))) {
        snprintf(errbuf, errlen, "bootstrap allgather: %s is NULL",
                 boot == NULL ? "boot" : mine == NULL ? "mine" : "all");
        return MOX_ERR_INVALID_ARG;
    }
    if (bytes > 0 && (size_t)boot->size > SIZE_MAX / bytes) {
        snprintf(errbuf, errlen, "bootstrap allgather: %d ranks x %zu bytes "
                 "overflows", boot->size, bytes);
        return MOX_ERR_OVERFLOW;
    }
    mox_status_t st = boot->ops->allgather(boot, mine, all, bytes, errbuf,
                                           errlen);
    boot->ag_count++;
    if (st != MOX_OK)
        MOX_DEBUG("boot", "%s", errbuf); /* the caller reports it */
    return st;
}

mox_status_t mox__boot_barrier(mox__boot_t *boot, char *errbuf, size_t errlen)
{
    if (boot == NULL) {
        snprintf(errbuf, errlen, "bootstrap barrier: boot is NULL");
        return MOX_ERR_INVALID_ARG;
    }
    /* An allgather of one byte: nobody returns before everyone arrived. */
    unsigned char mine = 1;
    unsigned char *all = malloc((size_t)boot->size);
    if (all == NULL) {
        snprintf(errbuf, errlen, "bootstrap barrier: out of memory");
        return MOX_ERR_NO_MEMORY;
    }
    mox_status_t st = mox__boot_allgather(boot, &mine, all, 1, errbuf, errlen);
    free(all);
    return st;
}
