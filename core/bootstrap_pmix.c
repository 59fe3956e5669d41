/*
 * Bootstrap over PMIx (Open MPI's mpirun, Slurm's srun): the launcher
 * already knows rank and size, and an allgather is a put + fence that
 * collects the data + one get per rank.
 */
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pmix.h>

#include "bootstrap_impl.h"
#include "log.h"

typedef struct {
    pmix_proc_t me;
    pmix_proc_t all; /* wildcard rank of our namespace */
} pmix_state_t;

static mox_status_t pmix_fail(pmix_status_t rc, const char *what,
                              const char *key, int rank, char *errbuf,
                              size_t errlen)
{
    char from[32] = "";
    if (rank >= 0)
        snprintf(from, sizeof(from), " from rank %d", rank);
    snprintf(errbuf, errlen, "bootstrap: %s of '%s'%s failed: %s (%d)", what,
             key, from, PMIx_Error_string(rc), (int)rc);
    return MOX_ERR_BOOTSTRAP;
}

static mox_status_t job_size(const pmix_state_t *s, int *size, char *errbuf,
                             size_t errlen)
{
    pmix_value_t *val = NULL;
    pmix_status_t rc = PMIx_Get(&s->all, PMIX_JOB_SIZE, NULL, 0, &val);
    if (rc != PMIX_SUCCESS || val == NULL)
        return pmix_fail(rc, "PMIx_Get", PMIX_JOB_SIZE, -1, errbuf, errlen);
    long n = -1;
    if (val->type == PMIX_UINT32)
        n = (long)val->data.uint32;
    else if (val->type == PMIX_INT)
        n = val->data.integer;
    PMIX_VALUE_RELEASE(val);
    if (n < 1 || n > INT_MAX || s->me.rank >= (pmix_rank_t)n) {
        snprintf(errbuf, errlen, "bootstrap: PMIx job size %ld is invalid for "
                 "rank %u", n, (unsigned)s->me.rank);
        return MOX_ERR_BOOTSTRAP;
    }
    *size = (int)n;
    return MOX_OK;
}

static mox_status_t put_mine(const char *key, const void *mine, size_t bytes,
                             char *errbuf, size_t errlen)
{
    pmix_value_t val;
    memset(&val, 0, sizeof(val));
    val.type = PMIX_BYTE_OBJECT;
    val.data.bo.bytes = (char *)mine; /* PMIx_Put copies it */
    val.data.bo.size = bytes;
    pmix_status_t rc = PMIx_Put(PMIX_GLOBAL, key, &val);
    if (rc != PMIX_SUCCESS)
        return pmix_fail(rc, "PMIx_Put", key, -1, errbuf, errlen);
    rc = PMIx_Commit();
    if (rc != PMIX_SUCCESS)
        return pmix_fail(rc, "PMIx_Commit", key, -1, errbuf, errlen);
    return MOX_OK;
}

static mox_status_t fence(const pmix_state_t *s, int timeout_ms,
                          const char *key, char *errbuf, size_t errlen)
{
    pmix_info_t info[2];
    bool collect = true;
    /* PMIx counts in whole seconds; round up so a short timeout stays
     * non-zero (zero would mean forever). */
    int timeout_s = timeout_ms / 1000 + (timeout_ms % 1000 != 0);
    PMIx_Info_load(&info[0], PMIX_COLLECT_DATA, &collect, PMIX_BOOL);
    PMIx_Info_load(&info[1], PMIX_TIMEOUT, &timeout_s, PMIX_INT);
    pmix_status_t rc = PMIx_Fence(&s->all, 1, info, 2);
    PMIX_INFO_DESTRUCT(&info[0]);
    PMIX_INFO_DESTRUCT(&info[1]);
    if (rc != PMIX_SUCCESS)
        return pmix_fail(rc, "PMIx_Fence after put", key, -1, errbuf, errlen);
    return MOX_OK;
}

static mox_status_t get_from(const pmix_state_t *s, int rank, const char *key,
                             void *dst, size_t bytes, char *errbuf,
                             size_t errlen)
{
    pmix_proc_t peer;
    PMIX_LOAD_PROCID(&peer, s->me.nspace, (pmix_rank_t)rank);
    pmix_value_t *val = NULL;
    pmix_status_t rc = PMIx_Get(&peer, key, NULL, 0, &val);
    if (rc != PMIX_SUCCESS || val == NULL)
        return pmix_fail(rc, "PMIx_Get", key, rank, errbuf, errlen);
    mox_status_t st = MOX_OK;
    if (val->type != PMIX_BYTE_OBJECT || val->data.bo.size != bytes) {
        snprintf(errbuf, errlen, "bootstrap: rank %d put %zu bytes (type %d) "
                 "under '%s' where %zu were expected", rank,
                 val->type == PMIX_BYTE_OBJECT ? val->data.bo.size : 0,
                 (int)val->type, key, bytes);
        st = MOX_ERR_PROTOCOL;
    } else {
        memcpy(dst, val->data.bo.bytes, bytes);
    }
    PMIX_VALUE_RELEASE(val);
    return st;
}

static mox_status_t pmix_allgather(mox__boot_t *b, const void *mine,
                                   void *all, size_t bytes, char *errbuf,
                                   size_t errlen)
{
    const pmix_state_t *s = b->priv;
    char key[PMIX_MAX_KEYLEN + 1];
    snprintf(key, sizeof(key), "mox.ag.%llu", (unsigned long long)b->ag_count);
    mox_status_t st = put_mine(key, mine, bytes, errbuf, errlen);
    if (st == MOX_OK)
        st = fence(s, b->timeout_ms, key, errbuf, errlen);
    for (int r = 0; st == MOX_OK && r < b->size; r++)
        st = get_from(s, r, key, (char *)all + (size_t)r * bytes, bytes,
                      errbuf, errlen);
    return st;
}

static void pmix_destroy(mox__boot_t *b)
{
    if (b->priv == NULL)
        return;
    /* PMIx_Init/Finalize are reference counted, so a host that uses PMIx
     * itself keeps its connection. */
    PMIx_Finalize(NULL, 0);
    free(b->priv);
    b->priv = NULL;
}

static const mox__boot_ops_t pmix_ops = {
    .name = "pmix",
    .allgather = pmix_allgather,
    .destroy = pmix_destroy,
};

mox_status_t mox__boot_pmix_create(const mox__config_t *cfg, int quiet,
                                   mox__boot_t *b, char *errbuf, size_t errlen)
{
    (void)cfg;
    pmix_state_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(errbuf, errlen, "bootstrap: out of memory");
        return MOX_ERR_NO_MEMORY;
    }
    pmix_status_t rc = PMIx_Init(&s->me, NULL, 0);
    if (rc != PMIX_SUCCESS) {
        snprintf(errbuf, errlen, "bootstrap: PMIx_Init failed: %s (%d)%s",
                 PMIx_Error_string(rc), (int)rc,
                 quiet ? "" : "; MOX_BOOTSTRAP=pmix needs a PMIx launcher "
                              "(mpirun, srun --mpi=pmix)");
        free(s);
        return MOX_ERR_BOOTSTRAP;
    }
    PMIX_LOAD_PROCID(&s->all, s->me.nspace, PMIX_RANK_WILDCARD);
    b->ops = &pmix_ops;
    b->priv = s;
    b->rank = (int)s->me.rank;
    mox_status_t st = job_size(s, &b->size, errbuf, errlen);
    if (st != MOX_OK) {
        pmix_destroy(b);
        return st;
    }
    MOX_DEBUG("boot", "PMIx namespace %s: rank %d of %d", s->me.nspace,
              b->rank, b->size);
    return MOX_OK;
}
