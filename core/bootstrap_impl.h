/*
 * Inside the bootstrap: the small ops table each back end fills (oob, pmix,
 * tcp, single), one back end per file. Only core/bootstrap*.c include this.
 */
#ifndef MOX_CORE_BOOTSTRAP_IMPL_H
#define MOX_CORE_BOOTSTRAP_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include "bootstrap.h"

typedef struct {
    const char *name; /* "oob", "pmix", "tcp", "single" */
    /* Arguments are validated by bootstrap.c: buffers non-NULL when
     * bytes > 0, size * bytes does not overflow. */
    mox_status_t (*allgather)(mox__boot_t *boot, const void *mine, void *all,
                              size_t bytes, char *errbuf, size_t errlen);
    /* Release the back end's state (boot->priv); the struct itself is
     * freed by bootstrap.c. */
    void (*destroy)(mox__boot_t *boot);
} mox__boot_ops_t;

struct mox__boot {
    const mox__boot_ops_t *ops;
    int rank, size;
    int timeout_ms;
    uint64_t ag_count; /* allgathers done; tags PMIx keys and TCP frames */
    void *priv;        /* back end state */
};

/* Back ends. Each fills boot->ops, rank, size and priv on success and leaves
 * a message naming the cause in errbuf on failure. */
mox_status_t mox__boot_oob_create(const mox_comm_params_t *params,
                                  mox__boot_t *boot, char *errbuf,
                                  size_t errlen);
/* `quiet`: a failing PMIx_Init is expected (auto mode probing), so it is
 * logged at debug level only. */
mox_status_t mox__boot_pmix_create(const mox__config_t *cfg, int quiet,
                                   mox__boot_t *boot, char *errbuf,
                                   size_t errlen);
mox_status_t mox__boot_tcp_create(const mox__config_t *cfg, mox__boot_t *boot,
                                  char *errbuf, size_t errlen);

/* Root address of the TCP rendezvous from cfg->root_addr_str, else
 * MASTER_ADDR + MASTER_PORT; 0 and "" when neither is set. */
int mox__boot_tcp_root_addr(const mox__config_t *cfg, char *addr,
                            size_t addr_len);

/* Rank and size for the TCP rendezvous: cfg->rank/size when set (>= 0),
 * else the first pair found among RANK/WORLD_SIZE, OMPI_COMM_WORLD_*,
 * PMI_*, SLURM_PROCID/SLURM_NTASKS. -1 for what is not found; `src` names
 * the variables used (for messages). */
void mox__boot_env_rank_size(const mox__config_t *cfg, int *rank, int *size,
                             const char **src);

/* Values of MOX_BOOTSTRAP (indices of its choices). */
enum { MOX_BOOT_AUTO, MOX_BOOT_PMIX, MOX_BOOT_TCP, MOX_BOOT_SINGLE };

#endif
