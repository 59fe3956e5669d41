/* mox plugin loader: see mox_loader.h. Depends on libc and libdl only. */
#include "mox_loader.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ABI versions this loader knows, newest first, with the bytes every table
 * of that version has. A v2 loader adds {2, "mox_plugin_v2", ...} first. */
static const struct {
    unsigned version;
    const char *symbol;
    size_t min_size;
} known[] = {
    {MOX_PLUGIN_ABI_V1, MOX_PLUGIN_V1_SYMBOL, MOX_PLUGIN_V1_MIN_SIZE},
};
#define NKNOWN (sizeof known / sizeof known[0])

/* Versions past the newest we know that we probe for, only to say "too
 * new" instead of "not a mox plugin". */
#define PROBE_NEWER 8

typedef struct {
    char *buf;
    size_t len, used;
} msg_t;

static void say(msg_t *m, const char *fmt, ...)
{
    if (!m->buf || m->len == 0 || m->used + 1 >= m->len)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(m->buf + m->used, m->len - m->used, fmt, ap);
    va_end(ap);
    if (n > 0)
        m->used += (size_t)n < m->len - m->used ? (size_t)n
                                                : m->len - m->used - 1;
}

/* The newest mox_plugin_vN symbol with N above what we know, or 0. */
static unsigned newer_symbol(void *dl)
{
    unsigned newest = known[0].version;
    for (unsigned v = newest + PROBE_NEWER; v > newest; v--) {
        char name[32];
        snprintf(name, sizeof name, "mox_plugin_v%u", v);
        if (dlsym(dl, name))
            return v;
    }
    return 0;
}

/* Try one file; 1 when ld is filled in. */
static int try_file(mox_loader_t *ld, const char *file, msg_t *m)
{
    dlerror();
    void *dl = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *why = dlerror();
        say(m, "\n  %s: cannot load (%s)", file, why ? why : "not found");
        return 0;
    }
    int found = 0;
    for (size_t i = 0; i < NKNOWN; i++) {
        const mox_plugin_v1_t *t = dlsym(dl, known[i].symbol);
        if (!t)
            continue;
        found = 1;
        if (t->abi_version != known[i].version) {
            say(m, "\n  %s: symbol %s has abi_version %u, expected %u (%s)",
                file, known[i].symbol, t->abi_version, known[i].version,
                t->abi_version > known[i].version ? "version too new"
                                                  : "corrupt table");
            continue;
        }
        if (t->struct_size < known[i].min_size) {
            say(m, "\n  %s: symbol %s has struct_size %zu, smaller than the "
                "%zu bytes every v%u table has (size too small)", file,
                known[i].symbol, t->struct_size, known[i].min_size,
                known[i].version);
            continue;
        }
        memset(&ld->v1, 0, sizeof ld->v1);
        memcpy(&ld->v1, t, t->struct_size < sizeof ld->v1 ? t->struct_size
                                                           : sizeof ld->v1);
        ld->v1.struct_size = t->struct_size < sizeof ld->v1 ? t->struct_size
                                                            : sizeof ld->v1;
        ld->dl = dl;
        ld->table = t;
        ld->abi_version = known[i].version;
        ld->plugin_struct_size = t->struct_size;
        snprintf(ld->path, sizeof ld->path, "%s", file);
        snprintf(ld->symbol, sizeof ld->symbol, "%s", known[i].symbol);
        return 1;
    }
    unsigned v = found ? 0 : newer_symbol(dl);
    if (found)
        ; /* the rejection was reported above */
    else if (v)
        say(m, "\n  %s: exports only mox_plugin_v%u, an ABI version newer "
            "than this host knows (newest known: v%u) (version too new)",
            file, v, known[0].version);
    else
        say(m, "\n  %s: no %s symbol (symbol missing: not a mox plugin)",
            file, known[NKNOWN - 1].symbol);
    dlclose(dl);
    return 0;
}

mox_loader_status_t mox_loader_open(mox_loader_t *ld, const char *spec,
                                    char *err, size_t err_len)
{
    msg_t m = {err, err_len, 0};
    if (err && err_len)
        err[0] = '\0';
    if (!ld) {
        say(&m, "mox_loader_open: ld is NULL");
        return MOX_LOADER_FAILED;
    }
    memset(ld, 0, sizeof *ld);
    const char *from = spec ? "spec" : "MOX_PLUGIN";
    if (!spec)
        spec = getenv("MOX_PLUGIN");
    if (spec && strcmp(spec, "none") == 0)
        return MOX_LOADER_DISABLED;

    char cand[2][512];
    int n = 0;
    if (!spec || !*spec) {
        snprintf(cand[n++], sizeof cand[0], "libmox.so");
        snprintf(cand[n++], sizeof cand[0], "libmox.so.0");
    } else if (strchr(spec, '/')) {
        snprintf(cand[n++], sizeof cand[0], "%s", spec);
    } else {
        snprintf(cand[n++], sizeof cand[0], "libmox-%s.so", spec);
        snprintf(cand[n++], sizeof cand[0], "%s", spec);
    }
    say(&m, "mox plugin loader: no usable plugin for %s=\"%s\"; tried:", from,
        spec ? spec : "");
    for (int i = 0; i < n; i++)
        if (try_file(ld, cand[i], &m)) {
            if (err && err_len)
                err[0] = '\0';
            return MOX_LOADER_OK;
        }
    return MOX_LOADER_FAILED;
}

void mox_loader_close(mox_loader_t *ld)
{
    if (ld && ld->dl)
        dlclose(ld->dl);
    if (ld)
        memset(ld, 0, sizeof *ld);
}
