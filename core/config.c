/* Parsing of the one MOX_* table (config.h). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const mox__cfg_entry_t mox__cfg_entries[] = {
#define MOX_CFG_ENTRY_(field, name, type, def, choices, mn, mx, doc)           \
    {name, type, def, choices, mn, mx, doc},
    MOX_CONFIG_TABLE(MOX_CFG_ENTRY_)
#undef MOX_CFG_ENTRY_
};
const size_t mox__cfg_count =
    sizeof mox__cfg_entries / sizeof mox__cfg_entries[0];

int64_t mox__parse_size(const char *text)
{
    if (!text || !*text)
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || text[0] == '-')
        return -1;
    uint64_t mult = 1;
    if (*end) {
        switch (tolower((unsigned char)*end)) {
        case 'k': mult = UINT64_C(1) << 10; break;
        case 'm': mult = UINT64_C(1) << 20; break;
        case 'g': mult = UINT64_C(1) << 30; break;
        case 't': mult = UINT64_C(1) << 40; break;
        default: return -1;
        }
        end++;
        if (tolower((unsigned char)*end) == 'b')
            end++;
        if (*end)
            return -1;
    }
    if (v > (uint64_t)INT64_MAX / mult)
        return -1;
    return (int64_t)(v * mult);
}

static int parse_bool(const char *t)
{
    static const char *const yes[] = {"1", "y", "yes", "on", "true"};
    static const char *const no[] = {"0", "n", "no", "off", "false"};
    for (size_t i = 0; i < 5; i++) {
        if (strcasecmp(t, yes[i]) == 0)
            return 1;
        if (strcasecmp(t, no[i]) == 0)
            return 0;
    }
    return -1;
}

/* Index of `t` in the '|' separated `choices`, or -1. */
static int parse_enum(const char *choices, const char *t)
{
    int idx = 0;
    size_t tlen = strlen(t);
    for (const char *p = choices; *p; idx++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == tlen && strncasecmp(p, t, len) == 0)
            return idx;
        if (!bar)
            break;
        p = bar + 1;
    }
    return -1;
}

mox_status_t mox__config_parse(const mox__cfg_entry_t *e, const char *text,
                               int64_t *out, char *errbuf, size_t errlen)
{
    int64_t v = 0;
    const char *expect = NULL;
    switch (e->type) {
    case MOX_CFG_STRING:
        *out = 0;
        return MOX_OK;
    case MOX_CFG_BOOL:
        v = parse_bool(text);
        if (v < 0)
            expect = "a boolean (0/1, yes/no, on/off, true/false)";
        break;
    case MOX_CFG_ENUM:
        v = parse_enum(e->choices, text);
        if (v < 0)
            expect = e->choices;
        break;
    case MOX_CFG_SIZE:
        v = mox__parse_size(text);
        if (v < 0)
            expect = "a byte size such as 4096, 64k, 8M or 1G";
        break;
    case MOX_CFG_INT: {
        char *end;
        errno = 0;
        long long l = strtoll(text, &end, 10);
        if (errno || end == text || *end)
            expect = "an integer";
        v = l;
        break;
    }
    }
    if (!expect && (e->type == MOX_CFG_INT || e->type == MOX_CFG_SIZE) &&
        (v < e->min || v > e->max)) {
        snprintf(errbuf, errlen, "%s=%s is out of range [%lld, %lld]",
                 e->name, text, (long long)e->min, (long long)e->max);
        return MOX_ERR_CONFIG;
    }
    if (expect) {
        snprintf(errbuf, errlen, "%s=\"%s\" is not valid: expected %s",
                 e->name, text, expect);
        return MOX_ERR_CONFIG;
    }
    *out = v;
    return MOX_OK;
}

mox_status_t mox__config_load(mox__config_t *cfg,
                              const char *(*lookup)(const char *name),
                              char *errbuf, size_t errlen)
{
    size_t i = 0;
    mox_status_t st = MOX_OK;
    memset(cfg, 0, sizeof *cfg);
    /* Fields are visited in table order, so entry i matches each field. */
#define MOX_CFG_LOAD_(field, name, type, def, choices, mn, mx, doc)            \
    if (st == MOX_OK) {                                                        \
        const mox__cfg_entry_t *e = &mox__cfg_entries[i++];                    \
        const char *v = lookup ? lookup(name) : getenv(name);                  \
        const char *text = (v && *v) ? v : def;                                \
        cfg->field##_str = text;                                               \
        st = mox__config_parse(e, text, &cfg->field, errbuf, errlen);          \
    }
    MOX_CONFIG_TABLE(MOX_CFG_LOAD_)
#undef MOX_CFG_LOAD_
    return st;
}

const char *mox__config_unknown(char *const *envp)
{
    static char name[128];
    for (; envp && *envp; envp++) {
        if (strncmp(*envp, "MOX_", 4) != 0)
            continue;
        const char *eq = strchr(*envp, '=');
        size_t len = eq ? (size_t)(eq - *envp) : strlen(*envp);
        int known = 0;
        for (size_t i = 0; i < mox__cfg_count && !known; i++)
            known = strlen(mox__cfg_entries[i].name) == len &&
                    strncmp(mox__cfg_entries[i].name, *envp, len) == 0;
        /* Variables of the tools, launcher and loader, not the library
         * (mox-run's MOX_LOCAL_*, the loader's MOX_PLUGIN, mox-conformance's
         * MOX_RUN). */
        if (!known && (strncmp(*envp, "MOX_LOCAL_", 10) == 0 ||
                       (strncmp(*envp, "MOX_RUN", 7) == 0 && len == 7) ||
                       strncmp(*envp, "MOX_PLUGIN", 10) == 0 ||
                       strncmp(*envp, "MOX_MPI_", 8) == 0 ||
                       strncmp(*envp, "MOX_TEST_", 9) == 0))
            known = 1;
        if (!known) {
            snprintf(name, sizeof name, "%.*s", (int)len, *envp);
            return name;
        }
    }
    return NULL;
}
