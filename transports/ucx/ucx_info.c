/* UCX transport: facts for `mox_info -v` (version, usable transports). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucp/api/ucp.h>

#include "ucx.h"

const char *mox__ucx_version(void)
{
    const char *v = ucp_get_version_string();
    return v != NULL ? v : "unknown";
}

/* Append the "tl/dev" of each "resource N : md M dev D flags -- tl/dev"
 * line of ucp_context_print_info; returns the number found. */
static int collect_resources(char *text, char *buf, size_t len)
{
    int count = 0;
    size_t used = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (strstr(line, "resource") == NULL)
            continue;
        const char *name = strstr(line, "-- ");
        if (name == NULL)
            continue;
        name += 3;
        count++;
        if (len == 0)
            continue;
        int n = snprintf(buf + used, len - used, "%s%s", used ? " " : "",
                         name);
        if (n < 0 || (size_t)n >= len - used)
            used = len - 1; /* truncated; keep counting */
        else
            used += (size_t)n;
    }
    return count;
}

int mox__ucx_list_transports(char *buf, size_t len)
{
    if (len > 0)
        buf[0] = '\0';
    ucp_config_t *cfg = NULL;
    if (ucp_config_read(NULL, NULL, &cfg) != UCS_OK)
        return -1;
    /* All transports, whatever UCX_TLS says: this lists what exists. */
    ucp_config_modify(cfg, "TLS", "all");
    ucp_params_t params = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                           .features = UCP_FEATURE_TAG};
    ucp_context_h ctx = NULL;
    ucs_status_t us = ucp_init(&params, cfg, &ctx);
    ucp_config_release(cfg);
    if (us != UCS_OK)
        return -1;
    char *text = NULL;
    size_t text_len = 0;
    FILE *f = open_memstream(&text, &text_len);
    int count = -1;
    if (f != NULL) {
        ucp_context_print_info(ctx, f);
        fclose(f);
        count = collect_resources(text, buf, len);
        free(text);
    }
    ucp_cleanup(ctx);
    return count;
}
