/*
 * mox plugin loader: how a host finds an implementation of the mox plugin
 * ABI at run time. Two files (this one and mox_loader.c), C99, libdl only:
 * vendor them into a host, or link libmox_loader.a (mox::loader).
 *
 * Which library: `spec`, or when spec is NULL the MOX_PLUGIN environment
 * variable:
 *   unset or ""   libmox.so, then libmox.so.0 (the runtime package has no
 *                 unversioned name)
 *   "none"        load nothing: the host keeps its own collectives
 *   contains '/'  that file
 *   a bare NAME   libmox-NAME.so, then NAME, on the library search path
 * Which symbol: the newest ABI version this loader knows (v1 today), then
 * older ones. A candidate is rejected when its file is missing or not
 * loadable, when it lacks every known symbol (a library that only exports
 * a newer `mox_plugin_vN` is named "too new"), when its abi_version differs
 * from the symbol's, or when its struct_size is below the version's
 * minimum. All rejections are reported in one message.
 *
 * A table whose struct_size is smaller than this host's sizeof is copied
 * into ld->v1 with the missing entries zeroed, so `ld->v1.X == NULL` (or
 * MOX_V1_HAS) says "unsupported".
 */
#ifndef MOX_LOADER_H
#define MOX_LOADER_H

#include "mox/plugin_v1.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MOX_LOADER_OK = 0,        /* loaded: use ld->v1 */
    MOX_LOADER_DISABLED = 1,  /* MOX_PLUGIN=none */
    MOX_LOADER_FAILED = -1    /* nothing usable; see the message */
} mox_loader_status_t;

typedef struct {
    void *dl;                 /* dlopen handle */
    unsigned abi_version;     /* version of the symbol found */
    size_t plugin_struct_size;/* struct_size the plugin declared */
    char path[512];           /* the name that was loaded */
    char symbol[32];          /* the symbol that was used */
    const mox_plugin_v1_t *table; /* the plugin's own table */
    mox_plugin_v1_t v1;       /* host-sized copy, missing entries NULL */
} mox_loader_t;

/*
 * Find and open a plugin. `spec` NULL means getenv("MOX_PLUGIN"). On
 * MOX_LOADER_FAILED, err (when err_len > 0) says, for every candidate, why
 * it was rejected. Not thread-safe with itself (dlerror).
 */
mox_loader_status_t mox_loader_open(mox_loader_t *ld, const char *spec,
                                    char *err, size_t err_len);

/* dlclose the plugin; accepts a loader that failed or was never opened
 * (zero-initialised). */
void mox_loader_close(mox_loader_t *ld);

#ifdef __cplusplus
}
#endif
#endif /* MOX_LOADER_H */
