/*
 * Plugins that a v1 host must handle, one per FAKE_KIND:
 *   FAKE_V2_ONLY  exports only `mox_plugin_v2` (an ABI newer than v1):
 *                 rejected with "version too new"
 *   FAKE_TINY     a v1 table with struct_size 16: rejected, "size too small"
 *   FAKE_SHORT    the real table cut off before moe_create: loaded; the MoE
 *                 entries read as unsupported (conformance skips them)
 *   FAKE_BADVER   a `mox_plugin_v1` symbol whose abi_version says 3
 */
#define FAKE_V2_ONLY 1
#define FAKE_TINY 2
#define FAKE_SHORT 3
#define FAKE_BADVER 4

#if FAKE_KIND == FAKE_V2_ONLY
#include <stddef.h>
#include <stdint.h>
/* What a future plugin_v2.h table starts with; no mox_plugin_v1 at all. */
__attribute__((visibility("default"))) const struct {
    size_t struct_size;
    uint32_t abi_version;
    const char *name;
} mox_plugin_v2 = {sizeof mox_plugin_v2, 2, "fake-v2-only"};
#else
#include "wrap_common.h"
#endif

#if FAKE_KIND == FAKE_TINY
__attribute__((constructor)) static void setup(void)
{
    wrap_load("fake-tiny");
    mox_plugin_v1.struct_size = 16;
}
#elif FAKE_KIND == FAKE_SHORT
__attribute__((constructor)) static void setup(void)
{
    wrap_load("fake-short");
    mox_plugin_v1.struct_size = offsetof(mox_plugin_v1_t, moe_create);
}
#elif FAKE_KIND == FAKE_BADVER
__attribute__((constructor)) static void setup(void)
{
    wrap_load("fake-badver");
    mox_plugin_v1.abi_version = 3;
}
#endif
