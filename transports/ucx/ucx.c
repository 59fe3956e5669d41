/*
 * UCX transport: the inter-node path. One UCP context restricted to network
 * transports (MOX_NET_TLS, MOX_NET_DEVICES), one worker in single-thread
 * mode with wakeup, worker addresses exchanged through the bootstrap, and
 * an endpoint per remote rank created on first use with peer-failure
 * handling. Messages are in ucx_msg.c, `mox_info` helpers in ucx_info.c.
 *
 * UCX picks eager or rendezvous per message size and, for rendezvous,
 * registers the user buffer through its own registration cache (rcache,
 * UCX_RCACHE_ENABLE, on by default for transports that need registration),
 * so mox keeps no registration cache of its own.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucp/api/ucp.h>

#include "core/comm.h"
#include "core/log.h"
#include "ucx.h"
#include "ucx_int.h"

/* A UCX worker address is a few hundred bytes for TCP and a few KiB with
 * many RDMA devices; anything above this is garbage from a peer. */
#define UCXT_MAX_ADDR_BYTES (64u * 1024u)
#define UCXT_DEFAULT_TLS "^sm,self"
/* Bounds for tearing down: closing endpoints must not wait on dead peers. */
#define UCXT_CLOSE_MS 1000

static void log_context(ucp_context_h ctx)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return;
    ucp_context_print_info(ctx, f);
    fclose(f);
    /* Keep only the resource lines: "resource 1 : md 1 dev 1 flags -- tcp/eth0" */
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (strstr(line, "resource") != NULL)
            MOX_DEBUG("ucx", "usable:%s", line + 1);
    }
    free(text);
}

static void log_ep(ucp_ep_h ep, int peer)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return;
    ucp_ep_print_info(ep, f);
    fclose(f);
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (strstr(line, "lane[") != NULL || strstr(line, "tag_send:") != NULL)
            MOX_DEBUG("ucx", "ep to rank %d:%s", peer, line + 1);
    }
    free(text);
}

/*
 * RNDV_THRESH from MOX_NET_EAGER_MAX (*value stays NULL: leave UCX's).
 * Over TCP a rendezvous costs a handshake through the receiving process,
 * which on a busy node waits for that process to run; measured on 4
 * emulated nodes x 2 ranks (2 cores), eager sends took a 8 MiB
 * reduce-scatter from 1.75 to 1.37 x the link bound and an MoE dispatch
 * from 1.55 to 1.24 x.
 */
static mox_status_t eager_max(const mox__config_t *cfg, const char *tls,
                              char *buf, size_t len, const char **value,
                              char *why, size_t why_len)
{
    const char *v = cfg->net_eager_max_str ? cfg->net_eager_max_str : "auto";
    *value = NULL;
    if (getenv("UCX_RNDV_THRESH") || !strcmp(v, "ucx"))
        return MOX_OK;
    int64_t bytes = !strcmp(v, "auto") ? (strcmp(tls, "tcp") ? -1 : 64 << 20)
                                       : mox__parse_size(v);
    if (strcmp(v, "auto") && bytes < 0) {
        snprintf(why, why_len, "MOX_NET_EAGER_MAX=\"%s\" is not valid: "
                 "expected auto, ucx or a byte size such as 1M", v);
        return MOX_ERR_CONFIG;
    }
    if (bytes >= 0) {
        snprintf(buf, len, "%lld", (long long)bytes);
        *value = buf;
    }
    return MOX_OK;
}

/* UCX_TCP_RCVBUF in the environment was put there by set_rcvbuf_env. */
static int rcvbuf_env_ours;

/* UCX reads its transports' settings from the environment when it opens
 * them (ucp_config_modify(..., "TCP_RCVBUF", ...) is accepted by UCX 1.13
 * but does not reach the tcp transport: measured with ss, its connections
 * kept autotuned buffers), so the value goes there (rcvbuf_size gives none
 * when the user set it); NULL takes back a value set earlier. */
static void set_rcvbuf_env(const char *value)
{
    if (value) {
        setenv("UCX_TCP_RCVBUF", value, 1);
        rcvbuf_env_ours = 1;
    } else if (rcvbuf_env_ours) {
        unsetenv("UCX_TCP_RCVBUF");
        rcvbuf_env_ours = 0;
    }
}

/* May UCX load its tcp transport with this UCX_TLS list? (UCX warns about
 * TCP_RCVBUF when it does not.) */
static int tls_has_tcp(const char *tls)
{
    if (tls[0] == '^')
        return strstr(tls, "tcp") == NULL;
    return strstr(tls, "tcp") != NULL || !strcmp(tls, "all");
}

/*
 * TCP_RCVBUF from MOX_NET_RCVBUF (*value stays NULL: leave UCX's). A
 * connection's receive buffer caps its data in flight. Left to the kernel
 * (autotuned up to tcp_rmem's maximum), the connections that share a
 * deep-buffered link fill its queue unevenly and share it by how much
 * each has queued: some end early and leave links half used meanwhile.
 * Measured on 4 emulated nodes x 2 ranks (1 Gbit/s), alternating runs:
 * MoE dispatch of 512 tokens/rank 1.18-1.34 -> 1.13-1.18 x the link
 * bound at 64K (docs/design.md). Only UCX's tcp transport reads it.
 */
static mox_status_t rcvbuf_size(const mox__config_t *cfg, const char *tls,
                                char *buf, size_t len, const char **value,
                                char *why, size_t why_len)
{
    const char *v = cfg->net_rcvbuf_str ? cfg->net_rcvbuf_str : "auto";
    *value = NULL;
    if ((getenv("UCX_TCP_RCVBUF") && !rcvbuf_env_ours) || !strcmp(v, "ucx") ||
        (!strcmp(v, "auto") && !tls_has_tcp(tls)))
        return MOX_OK;
    int64_t bytes = !strcmp(v, "auto") ? 64 << 10 : mox__parse_size(v);
    if (bytes < 4096 || bytes > (INT64_C(1) << 30)) {
        snprintf(why, why_len, "MOX_NET_RCVBUF=\"%s\" is not valid: "
                 "expected auto, ucx or a byte size from 4K to 1G such as "
                 "256K", v);
        return MOX_ERR_CONFIG;
    }
    snprintf(buf, len, "%lld", (long long)bytes);
    *value = buf;
    return MOX_OK;
}

static mox_status_t open_worker(mox__transport_t *tp, ucp_address_t **addr,
                                size_t *addr_len, char *why, size_t why_len)
{
    const mox__config_t *cfg = &tp->comm->cfg;
    const char *tls = (cfg->net_tls_str && *cfg->net_tls_str)
                          ? cfg->net_tls_str : UCXT_DEFAULT_TLS;
    const char *devs = cfg->net_devices_str ? cfg->net_devices_str : "";
    ucp_config_t *ucfg = NULL;
    ucs_status_t us = ucp_config_read(NULL, NULL, &ucfg);
    if (us != UCS_OK) {
        snprintf(why, why_len, "ucp_config_read: %s", ucs_status_string(us));
        return MOX_ERR_TRANSPORT;
    }
    us = ucp_config_modify(ucfg, "TLS", tls);
    if (us != UCS_OK) {
        snprintf(why, why_len, "UCX rejects MOX_NET_TLS=\"%s\": %s", tls,
                 ucs_status_string(us));
        ucp_config_release(ucfg);
        return MOX_ERR_CONFIG;
    }
    if (*devs != '\0') {
        us = ucp_config_modify(ucfg, "NET_DEVICES", devs);
        if (us != UCS_OK) {
            snprintf(why, why_len, "UCX rejects MOX_NET_DEVICES=\"%s\": %s",
                     devs, ucs_status_string(us));
            ucp_config_release(ucfg);
            return MOX_ERR_CONFIG;
        }
    }
    const char *rndv = NULL;
    char rndv_buf[32];
    mox_status_t st = eager_max(cfg, tls, rndv_buf, sizeof rndv_buf, &rndv,
                                why, why_len);
    if (st == MOX_OK && rndv &&
        (us = ucp_config_modify(ucfg, "RNDV_THRESH", rndv)) != UCS_OK) {
        snprintf(why, why_len, "UCX rejects RNDV_THRESH=%s (MOX_NET_EAGER_MAX):"
                 " %s", rndv, ucs_status_string(us));
        st = MOX_ERR_CONFIG;
    }
    const char *rcvbuf = NULL;
    char rcvbuf_buf[32];
    if (st == MOX_OK)
        st = rcvbuf_size(cfg, tls, rcvbuf_buf, sizeof rcvbuf_buf, &rcvbuf, why,
                         why_len);
    if (st == MOX_OK)
        set_rcvbuf_env(rcvbuf);
    if (st != MOX_OK) {
        ucp_config_release(ucfg);
        return st;
    }
    MOX_DEBUG("ucx", "UCX %s, TLS=%s NET_DEVICES=%s RNDV_THRESH=%s "
              "TCP_RCVBUF=%s", ucp_get_version_string(), tls,
              *devs ? devs : "(all)", rndv ? rndv : "(UCX's)",
              rcvbuf ? rcvbuf : "(UCX's)");

    ucp_params_t params = {
        .field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_REQUEST_SIZE |
                      UCP_PARAM_FIELD_REQUEST_INIT |
                      UCP_PARAM_FIELD_MT_WORKERS_SHARED |
                      UCP_PARAM_FIELD_ESTIMATED_NUM_EPS,
        .features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP,
        .request_size = sizeof(ucxt_slot_t),
        .request_init = ucxt_slot_init,
        .mt_workers_shared = 0,
        .estimated_num_eps = (size_t)tp->comm->size,
    };
    us = ucp_init(&params, ucfg, &tp->ctx);
    ucp_config_release(ucfg);
    if (us != UCS_OK) {
        tp->ctx = NULL;
        snprintf(why, why_len,
                 "ucp_init with TLS=\"%s\" NET_DEVICES=\"%s\" failed: %s "
                 "(check MOX_NET_TLS / MOX_NET_DEVICES against `ucx_info -d`)",
                 tls, devs, ucs_status_string(us));
        return MOX_ERR_TRANSPORT;
    }
    if (mox__log_level >= MOX_LOG_DEBUG)
        log_context(tp->ctx);

    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE,
    };
    us = ucp_worker_create(tp->ctx, &wp, &tp->worker);
    if (us != UCS_OK) {
        tp->worker = NULL;
        snprintf(why, why_len, "ucp_worker_create: %s", ucs_status_string(us));
        return MOX_ERR_TRANSPORT;
    }
    us = ucp_worker_get_efd(tp->worker, &tp->efd);
    if (us != UCS_OK) {
        snprintf(why, why_len, "ucp_worker_get_efd: %s", ucs_status_string(us));
        return MOX_ERR_TRANSPORT;
    }
    us = ucp_worker_get_address(tp->worker, addr, addr_len);
    if (us != UCS_OK) {
        snprintf(why, why_len, "ucp_worker_get_address: %s",
                 ucs_status_string(us));
        return MOX_ERR_TRANSPORT;
    }
    if (*addr_len == 0 || *addr_len > UCXT_MAX_ADDR_BYTES) {
        snprintf(why, why_len, "worker address of %zu bytes (limit %u)",
                 *addr_len, UCXT_MAX_ADDR_BYTES);
        return MOX_ERR_TRANSPORT;
    }
    return MOX_OK;
}

/* Two allgathers: lengths (0 = that rank failed), then padded addresses.
 * Every rank takes the same branch because every rank sees the same
 * lengths, so the bootstrap calls line up even when one rank failed. */
static mox_status_t exchange_addresses(mox__transport_t *tp,
                                       const ucp_address_t *addr,
                                       uint32_t my_len, mox_status_t local,
                                       const char *why)
{
    mox__comm_t *c = tp->comm;
    char err[256] = "";
    mox_status_t st = mox__boot_allgather(c->boot, &my_len, tp->addr_len,
                                          sizeof my_len, err, sizeof err);
    if (st != MOX_OK)
        return mox__fail(c, st, "ucx: address length exchange: %s", err);

    if (local != MOX_OK) /* report our own failure before anyone else's */
        return mox__fail(c, local, "ucx: %s", why);
    uint32_t max_len = 0;
    for (int r = 0; r < c->size; r++) {
        uint32_t len = tp->addr_len[r];
        if (len == 0 || len > UCXT_MAX_ADDR_BYTES)
            return mox__fail(c, MOX_ERR_TRANSPORT,
                             "ucx: rank %d could not start UCX (address "
                             "length %u; see that rank's log)", r, len);
        if (len > max_len)
            max_len = len;
    }
    tp->addr_slot = max_len;
    tp->addrs = calloc((size_t)c->size, max_len);
    char *mine = calloc(1, max_len);
    if (tp->addrs == NULL || mine == NULL) {
        free(mine);
        /* The others then wait in the second allgather until the
         * bootstrap timeout: nothing better is possible without memory. */
        return mox__fail(c, MOX_ERR_NO_MEMORY,
                         "ucx: %d worker addresses of %u bytes", c->size,
                         max_len);
    }
    memcpy(mine, addr, my_len);
    st = mox__boot_allgather(c->boot, mine, tp->addrs, max_len, err,
                             sizeof err);
    free(mine);
    if (st != MOX_OK)
        return mox__fail(c, st, "ucx: address exchange: %s", err);
    return MOX_OK;
}

static void ucxt_destroy(mox__transport_t *tp);

static mox_status_t ucxt_create(mox__comm_t *c, mox__transport_t **out)
{
    *out = NULL;
    if (c->topo.num_nodes <= 1) {
        MOX_DEBUG("ucx", "one node: UCX not started");
        return MOX_OK;
    }
    mox__transport_t *tp = calloc(1, sizeof *tp);
    if (tp == NULL)
        return mox__fail(c, MOX_ERR_NO_MEMORY, "ucx: transport state");
    tp->comm = c;
    tp->efd = -1;
    tp->addr_len = calloc((size_t)c->size, sizeof *tp->addr_len);
    tp->peers = calloc((size_t)c->size, sizeof *tp->peers);

    char why[512] = "out of memory for per-rank state";
    ucp_address_t *addr = NULL;
    size_t addr_len = 0;
    mox_status_t local = MOX_ERR_NO_MEMORY;
    if (tp->addr_len != NULL && tp->peers != NULL)
        local = open_worker(tp, &addr, &addr_len, why, sizeof why);
    uint32_t my_len = local == MOX_OK ? (uint32_t)addr_len : 0;

    mox_status_t st;
    if (tp->addr_len == NULL) {
        /* Cannot even hold the lengths: take part with a scratch array. */
        uint32_t *scratch = calloc((size_t)c->size, sizeof *scratch);
        char err[256];
        if (scratch != NULL)
            mox__boot_allgather(c->boot, &my_len, scratch, sizeof my_len, err,
                                sizeof err);
        free(scratch);
        st = mox__fail(c, MOX_ERR_NO_MEMORY, "ucx: %s", why);
    } else {
        st = exchange_addresses(tp, addr, my_len, local, why);
    }
    if (addr != NULL)
        ucp_worker_release_address(tp->worker, addr);
    if (st != MOX_OK) {
        ucxt_destroy(tp);
        return st;
    }
    for (int r = 0; r < c->size; r++) {
        tp->peers[r].tp = tp;
        tp->peers[r].rank = r;
    }
    MOX_DEBUG("ucx", "worker ready, %u-byte address slots, event fd %d",
              (unsigned)tp->addr_slot, tp->efd);
    *out = tp;
    return MOX_OK;
}

static void ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    ucxt_peer_t *p = arg;
    (void)ep;
    if (p->state == UCXT_PEER_OK) {
        p->state = UCXT_PEER_DEAD;
        p->err = status;
    }
    p->tp->failure_pending = 1;
    MOX_DEBUG("ucx", "endpoint to rank %d failed: %s", p->rank,
              ucs_status_string(status));
}

ucp_ep_h ucxt_ep(mox__transport_t *tp, int peer, mox_status_t *st)
{
    ucxt_peer_t *p = &tp->peers[peer];
    if (p->ep != NULL || p->state != UCXT_PEER_OK) {
        *st = p->ep != NULL ? MOX_OK : MOX_ERR_PEER;
        return p->ep;
    }
    ucp_ep_params_t ep_params = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                      UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .address = (const ucp_address_t *)(tp->addrs +
                                           (size_t)peer * tp->addr_slot),
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = ep_error, .arg = p},
    };
    ucs_status_t us = ucp_ep_create(tp->worker, &ep_params, &p->ep);
    if (us != UCS_OK) {
        p->ep = NULL;
        p->state = UCXT_PEER_DEAD;
        p->err = us;
        *st = mox__fail(tp->comm, MOX_ERR_PEER,
                        "ucx: cannot reach rank %d (node %d): %s", peer,
                        tp->comm->topo.node_of[peer], ucs_status_string(us));
        return NULL;
    }
    if (mox__log_level >= MOX_LOG_DEBUG)
        log_ep(p->ep, peer);
    *st = MOX_OK;
    return p->ep;
}

void ucxt_close_ep(mox__transport_t *tp, ucxt_peer_t *p, int force)
{
    (void)tp;
    if (p->ep == NULL)
        return;
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
        .flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0,
    };
    void *req = ucp_ep_close_nbx(p->ep, &param);
    p->ep = NULL;
    if (UCS_PTR_IS_PTR(req)) {
        if (p->close_req != NULL)
            ucp_request_free(p->close_req);
        p->close_req = req;
    } else if (UCS_PTR_IS_ERR(req)) {
        MOX_DEBUG("ucx", "closing endpoint to rank %d: %s", p->rank,
                  ucs_status_string(UCS_PTR_STATUS(req)));
    }
}

/* Wait (bounded) for endpoint closes; returns how many are still pending. */
static int finish_closes(mox__transport_t *tp, uint64_t deadline_ns)
{
    int pending;
    do {
        pending = 0;
        ucp_worker_progress(tp->worker);
        for (int r = 0; r < tp->comm->size; r++) {
            ucxt_peer_t *p = &tp->peers[r];
            if (p->close_req == NULL)
                continue;
            if (ucp_request_check_status(p->close_req) == UCS_INPROGRESS) {
                pending++;
                continue;
            }
            ucp_request_free(p->close_req);
            p->close_req = NULL;
        }
    } while (pending > 0 && mox__now_ns() < deadline_ns);
    return pending;
}

static void ucxt_destroy(mox__transport_t *tp)
{
    if (tp == NULL)
        return;
    if (tp->worker != NULL && tp->peers != NULL) {
        uint64_t deadline = mox__now_ns() + UCXT_CLOSE_MS * UINT64_C(1000000);
        ucxt_abandon_all(tp, deadline);
        /* Flush live endpoints so our last sends arrive; force the rest. */
        for (int r = 0; r < tp->comm->size; r++)
            ucxt_close_ep(tp, &tp->peers[r],
                          tp->peers[r].state != UCXT_PEER_OK);
        int pending = finish_closes(tp, deadline);
        if (pending > 0) {
            MOX_DEBUG("ucx", "%d endpoint closes still pending after %d ms",
                      pending, UCXT_CLOSE_MS);
            for (int r = 0; r < tp->comm->size; r++) {
                if (tp->peers[r].close_req != NULL)
                    ucp_request_free(tp->peers[r].close_req);
            }
        }
    }
    if (tp->worker != NULL)
        ucp_worker_destroy(tp->worker);
    if (tp->ctx != NULL)
        ucp_cleanup(tp->ctx);
    free(tp->peers);
    free(tp->addrs);
    free(tp->addr_len);
    free(tp);
}

int mox__ucx_event_fd(mox__transport_t *tp)
{
    return tp != NULL ? tp->efd : -1;
}

mox_status_t mox__ucx_arm(mox__transport_t *tp)
{
    if (tp == NULL)
        return MOX_ERR_UNSUPPORTED;
    /* A failure seen by a callback must be handled before sleeping. */
    if (tp->failure_pending)
        return MOX_IN_PROGRESS;
    ucs_status_t us = ucp_worker_arm(tp->worker);
    if (us == UCS_OK)
        return MOX_OK;
    if (us == UCS_ERR_BUSY)
        return MOX_IN_PROGRESS;
    MOX_DEBUG("ucx", "ucp_worker_arm: %s", ucs_status_string(us));
    return MOX_ERR_TRANSPORT;
}

const mox__transport_ops_t mox__tp_ucx_ops = {
    .name = "ucx",
    .create = ucxt_create,
    .destroy = ucxt_destroy,
    .isend = ucxt_isend,
    .irecv = ucxt_irecv,
    .progress = ucxt_progress,
    .cancel = ucxt_cancel,
    .isendv = ucxt_isendv,
};
