/* Log lines: "mox[rank 3] shm: message", to stderr or the host's callback. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

mox_log_level_t mox__log_level = MOX_LOG_WARN;
int mox__log_rank = -1;

static mox_log_fn host_fn;
static void *host_ctx;

static const char *const level_names[] = {"error", "warn", "info", "debug",
                                          "trace"};

void mox_set_log_callback(mox_log_fn fn, void *ctx)
{
    host_fn = fn;
    host_ctx = ctx;
}

/* The level is read early and without the config table so that config
 * errors themselves can be logged; the table re-validates it. */
void mox__log_init(void)
{
    const char *v = getenv("MOX_LOG_LEVEL");
    if (!v)
        return;
    for (int i = 0; i < 5; i++)
        if (strcasecmp(v, level_names[i]) == 0)
            mox__log_level = (mox_log_level_t)i;
}

void mox__log(mox_log_level_t level, const char *component, const char *fmt,
              ...)
{
    char line[1024];
    int n;
    if (mox__log_rank >= 0)
        n = snprintf(line, sizeof line, "mox[rank %d] %s %s: ", mox__log_rank,
                     level_names[level], component);
    else
        n = snprintf(line, sizeof line, "mox %s %s: ", level_names[level],
                     component);
    if (n < 0 || (size_t)n >= sizeof line)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (host_fn) {
        host_fn(host_ctx, level, line);
        return;
    }
    fprintf(stderr, "%s\n", line);
}
