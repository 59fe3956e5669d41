/*
 * Bootstrap: how ranks find each other before any transport exists.
 * Back ends, in order of preference: a host's OOB allgather, PMIx, a TCP
 * rendezvous from the environment, one process alone.
 */
#ifndef MOX_CORE_BOOTSTRAP_H
#define MOX_CORE_BOOTSTRAP_H

#include <stddef.h>
#include "mox/mox.h"
#include "config.h"

typedef struct mox__boot mox__boot_t;

/*
 * Start the bootstrap. `params` may be NULL or carry an OOB allgather.
 * Otherwise MOX_BOOTSTRAP=auto picks PMIx when PMIX_RANK is set and PMIx_Init
 * succeeds, TCP when a root address is known (MOX_ROOT_ADDR, or
 * MASTER_ADDR+MASTER_PORT), else a single process. Rank/size for TCP come
 * from MOX_RANK/MOX_SIZE, else RANK/WORLD_SIZE, OMPI_COMM_WORLD_RANK/SIZE,
 * PMI_RANK/PMI_SIZE, SLURM_PROCID/SLURM_NTASKS.
 * Every wait is bounded by cfg->timeout_ms; a failure writes a message
 * naming the cause (address, rank, secret) into errbuf.
 */
mox_status_t mox__boot_create(const mox_comm_params_t *params,
                              const mox__config_t *cfg, mox__boot_t **boot,
                              char *errbuf, size_t errlen);
void mox__boot_destroy(mox__boot_t *boot);

int mox__boot_rank(const mox__boot_t *boot);
int mox__boot_size(const mox__boot_t *boot);
/* "oob", "pmix", "tcp" or "single". */
const char *mox__boot_kind(const mox__boot_t *boot);

/*
 * Allgather: every rank gives `bytes` bytes; `all` receives size * bytes,
 * rank r's at r * bytes. Collective, blocking, bounded by the timeout.
 */
mox_status_t mox__boot_allgather(mox__boot_t *boot, const void *mine,
                                 void *all, size_t bytes, char *errbuf,
                                 size_t errlen);

mox_status_t mox__boot_barrier(mox__boot_t *boot, char *errbuf,
                               size_t errlen);

#endif
