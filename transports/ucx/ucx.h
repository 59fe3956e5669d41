/*
 * The UCX transport (inter-node) beyond the common ops table: the worker's
 * event fd for sleeping waits, and facts for `mox_info -v`.
 * Thread safety: as the communicator (one thread at a time).
 */
#ifndef MOX_TRANSPORTS_UCX_H
#define MOX_TRANSPORTS_UCX_H

#include <stddef.h>
#include "mox/mox.h"
#include "core/transport.h"

/*
 * File descriptor that becomes readable when the UCX worker has events, or
 * -1 when `tp` is NULL (no UCX on this communicator: one node). Owned by
 * the transport; valid until destroy. Poll it only after mox__ucx_arm
 * returned MOX_OK.
 */
int mox__ucx_event_fd(mox__transport_t *tp);

/*
 * Arm the event fd (ucp_worker_arm). Returns MOX_OK when armed and it is
 * safe to sleep on the fd, MOX_IN_PROGRESS when events are pending (call
 * progress instead of sleeping), MOX_ERR_UNSUPPORTED when `tp` is NULL,
 * MOX_ERR_TRANSPORT when UCX fails.
 */
mox_status_t mox__ucx_arm(mox__transport_t *tp);

/* UCX library version at run time ("1.13.1"); never NULL. */
const char *mox__ucx_version(void);

/*
 * Write the UCX transports/devices this process could use, ignoring
 * MOX_NET_TLS, as "tl/dev" words separated by spaces ("tcp/eth0 tcp/lo
 * self/memory0 ...") into buf (always NUL-terminated when len > 0;
 * truncated when short). Returns the number of entries, or -1 when UCX
 * cannot be initialised. Opens and closes a UCX context: not for hot paths.
 */
int mox__ucx_list_transports(char *buf, size_t len);

#endif
