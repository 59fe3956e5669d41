/*
 * Test fixtures: plugins that wrap libmox's real v1 table. wrap_load()
 * dlopens the real library (MOX_WRAP_REAL, else the build's libmox.so),
 * copies its table into `mox_plugin_v1` and lets the fixture replace
 * entries. Completion hooks run when a wrapped request finishes, so a
 * fixture can corrupt results after the real collective wrote them.
 *
 * Fixtures fill their table from a constructor: fine for a test plugin,
 * not a pattern for mox itself.
 */
#ifndef MOX_TESTS_WRAP_COMMON_H
#define MOX_TESTS_WRAP_COMMON_H

#include "mox/plugin_v1.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WRAP_EXPORT __attribute__((visibility("default")))

static const mox_plugin_v1_t *real;

typedef void (*wrap_hook_fn)(void *arg);
static struct {
    mox_v1_req_t req;
    wrap_hook_fn fn;
    char arg[256];
} hooks[64];

__attribute__((unused)) static void wrap_hook(mox_v1_req_t req, wrap_hook_fn fn, const void *arg,
                      size_t len)
{
    for (int i = 0; i < 64; i++)
        if (!hooks[i].req) {
            hooks[i].req = req;
            hooks[i].fn = fn;
            memcpy(hooks[i].arg, arg, len);
            return;
        }
}

static void run_hook(mox_v1_req_t req)
{
    for (int i = 0; i < 64; i++)
        if (hooks[i].req == req) {
            hooks[i].req = NULL;
            hooks[i].fn(hooks[i].arg);
        }
}

static int wrap_test(mox_v1_req_t r, int *done)
{
    int st = real->req_test(r, done);
    if (*done)
        run_hook(r);
    return st;
}

static int wrap_wait(mox_v1_req_t r)
{
    int st = real->req_wait(r);
    run_hook(r);
    return st;
}

static void wrap_free(mox_v1_req_t r)
{
    for (int i = 0; i < 64; i++)
        if (hooks[i].req == r)
            hooks[i].req = NULL;
    real->req_free(r);
}

WRAP_EXPORT mox_plugin_v1_t mox_plugin_v1;

static void wrap_load(const char *name)
{
    const char *path = getenv("MOX_WRAP_REAL");
    void *dl = dlopen(path ? path : MOX_REAL_LIB, RTLD_NOW | RTLD_LOCAL);
    real = dl ? dlsym(dl, "mox_plugin_v1") : NULL;
    if (!real) {
        fprintf(stderr, "%s: cannot load the real mox table from %s\n", name,
                path ? path : MOX_REAL_LIB);
        return; /* struct_size stays 0: the loader rejects this plugin */
    }
    memcpy(&mox_plugin_v1, real, sizeof mox_plugin_v1);
    mox_plugin_v1.name = name;
    mox_plugin_v1.req_test = wrap_test;
    mox_plugin_v1.req_wait = wrap_wait;
    mox_plugin_v1.req_free = wrap_free;
}

#endif
