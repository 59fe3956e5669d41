/*
 * A host built against plugin_v1.h only: what the loader does with the
 * current library, with a v2-only plugin, with short, tiny and mislabelled
 * tables, with missing files and with MOX_PLUGIN=none.
 *
 * usage: test_loader LIBDIR   (LIBDIR holds libmox.so and the fixtures and
 * is on LD_LIBRARY_PATH, so bare names resolve there)
 */
#include "mox_loader.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (cond) {                                                            \
            printf("ok    ");                                                  \
        } else {                                                               \
            printf("FAIL  ");                                                  \
            failures++;                                                        \
        }                                                                      \
        printf(__VA_ARGS__);                                                   \
        printf("\n");                                                          \
    } while (0)

static char err[4096];

static mox_loader_status_t open_(mox_loader_t *ld, const char *spec)
{
    mox_loader_status_t st = mox_loader_open(ld, spec, err, sizeof err);
    printf("      open(%s) -> %d%s%s\n", spec ? spec : "NULL", st,
           *err ? ": " : "", err);
    return st;
}

/* The loaded table really works: one rank, a barrier and an alltoallv. */
static int run_one_rank(const mox_plugin_v1_t *t)
{
    mox_v1_comm_t comm;
    char e[256];
    if (t->init(NULL) || t->comm_create(NULL, &comm, e, sizeof e))
        return 0;
    mox_v1_req_t req;
    int ok = t->ibarrier(comm, &req) == 0 && t->req_wait(req) == 0;
    t->req_free(req);
    int src[3] = {7, 8, 9}, dst[3] = {0};
    uint64_t cnt = 3, disp = 0;
    ok = ok && t->ialltoallv(comm, (mox_v1_cbuf_t){src, MOX_V1_MEM_HOST, 0},
                             &cnt, &disp, (mox_v1_buf_t){dst, MOX_V1_MEM_HOST, 0},
                             &cnt, &disp, sizeof(int), &req) == 0;
    ok = ok && t->req_wait(req) == 0 && memcmp(src, dst, sizeof src) == 0;
    t->req_free(req);
    /* Device memory is declared but not supported by libmox. */
    ok = ok && t->ialltoallv(comm, (mox_v1_cbuf_t){src, MOX_V1_MEM_DEVICE, 0},
                             &cnt, &disp, (mox_v1_buf_t){dst, MOX_V1_MEM_HOST, 0},
                             &cnt, &disp, sizeof(int), &req) ==
                  MOX_V1_ERR_UNSUPPORTED;
    t->comm_destroy(comm);
    t->finalize();
    return ok;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_loader LIBDIR\n");
        return 2;
    }
    char path[1024];
    mox_loader_t ld;
    unsetenv("MOX_PLUGIN");

    CHECK(open_(&ld, NULL) == MOX_LOADER_OK &&
              strcmp(ld.path, "libmox.so") == 0 &&
              strcmp(ld.v1.name, "mox") == 0 &&
              ld.plugin_struct_size == sizeof(mox_plugin_v1_t),
          "MOX_PLUGIN unset loads libmox.so, the full v1 table");
    CHECK(ld.dl && run_one_rank(&ld.v1),
          "the loaded table runs a barrier and an alltoallv on one rank, "
          "device memory -> unsupported");
    mox_loader_close(&ld);

    snprintf(path, sizeof path, "%s/libmox.so", argv[1]);
    CHECK(open_(&ld, path) == MOX_LOADER_OK && ld.abi_version == 1 &&
              strcmp(ld.symbol, "mox_plugin_v1") == 0,
          "a path loads that file through mox_plugin_v1");
    mox_loader_close(&ld);

    CHECK(open_(&ld, "broken-a2av-last") == MOX_LOADER_OK &&
              strcmp(ld.path, "libmox-broken-a2av-last.so") == 0,
          "a bare name resolves to libmox-NAME.so on the library path");
    mox_loader_close(&ld);

    CHECK(open_(&ld, "none") == MOX_LOADER_DISABLED && !ld.dl,
          "none loads nothing");
    setenv("MOX_PLUGIN", "none", 1);
    CHECK(open_(&ld, NULL) == MOX_LOADER_DISABLED,
          "MOX_PLUGIN=none in the environment loads nothing");
    unsetenv("MOX_PLUGIN");

    CHECK(open_(&ld, "/nonexistent/libmox-x.so") == MOX_LOADER_FAILED &&
              strstr(err, "/nonexistent/libmox-x.so: cannot load"),
          "a missing file is named as such");
    CHECK(open_(&ld, "nosuch") == MOX_LOADER_FAILED &&
              strstr(err, "libmox-nosuch.so: cannot load") &&
              strstr(err, "\n  nosuch: cannot load"),
          "a missing bare name lists both candidates");

    CHECK(open_(&ld, "fake-v2-only") == MOX_LOADER_FAILED &&
              strstr(err, "exports only mox_plugin_v2") &&
              strstr(err, "version too new"),
          "a v2-only plugin is rejected by this v1 host as too new");
    CHECK(open_(&ld, "fake-badver") == MOX_LOADER_FAILED &&
              strstr(err, "abi_version 3, expected 1 (version too new)"),
          "a v1 symbol with abi_version 3 is rejected");
    CHECK(open_(&ld, "fake-tiny") == MOX_LOADER_FAILED &&
              strstr(err, "struct_size 16") && strstr(err, "size too small"),
          "a table below the v1 minimum is rejected");
    CHECK(open_(&ld, "libc.so.6") == MOX_LOADER_FAILED &&
              strstr(err, "symbol missing"),
          "a library without the symbol is not a plugin");

    CHECK(open_(&ld, "fake-short") == MOX_LOADER_OK &&
              ld.plugin_struct_size == offsetof(mox_plugin_v1_t, moe_create) &&
              MOX_V1_HAS(&ld.v1, ialltoallv) &&
              !MOX_V1_HAS(&ld.v1, moe_create) && ld.v1.moe_icombine == NULL,
          "a short table loads; entries past its struct_size read as NULL");
    mox_loader_close(&ld);

    printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}
