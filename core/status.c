/* Status names and texts, from the one table in mox.h. */
#include "mox/mox.h"

const char *mox_strerror(mox_status_t status)
{
    switch (status) {
#define MOX_STATUS_TEXT_(name, value, text)                                    \
    case name:                                                                 \
        return text;
        MOX_STATUS_TABLE(MOX_STATUS_TEXT_)
#undef MOX_STATUS_TEXT_
    }
    return "unknown status";
}

const char *mox_status_name(mox_status_t status)
{
    switch (status) {
#define MOX_STATUS_NAME_(name, value, text)                                    \
    case name:                                                                 \
        return #name;
        MOX_STATUS_TABLE(MOX_STATUS_NAME_)
#undef MOX_STATUS_NAME_
    }
    return "MOX_STATUS_UNKNOWN";
}

const char *mox_version(int *major, int *minor, int *patch)
{
    if (major)
        *major = MOX_VERSION_MAJOR;
    if (minor)
        *minor = MOX_VERSION_MINOR;
    if (patch)
        *patch = MOX_VERSION_PATCH;
    return MOX_VERSION_STRING;
}
