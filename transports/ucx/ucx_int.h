/* State shared by the files of the UCX transport (private to it). */
#ifndef MOX_TRANSPORTS_UCX_INT_H
#define MOX_TRANSPORTS_UCX_INT_H

#include <stdint.h>
#include <ucp/api/ucp.h>
#include "core/comm.h"
#include "core/transport.h"

typedef enum {
    UCXT_PEER_OK = 0,
    UCXT_PEER_DEAD,    /* UCX reported the endpoint failed */
    UCXT_PEER_CLOSED   /* we force-closed it to stop a timed-out send */
} ucxt_peer_state_t;

typedef struct ucxt_peer {
    struct mox__transport *tp;
    ucp_ep_h ep;               /* created on first use; NULL before/after */
    void *close_req;           /* pending ucp_ep_close_nbx request */
    int rank;
    ucxt_peer_state_t state;
    ucs_status_t err;          /* why it is dead */
    int failure_handled;       /* receives from it were cancelled */
} ucxt_peer_t;

struct mox__transport {
    mox__comm_t *comm;
    ucp_context_h ctx;
    ucp_worker_h worker;
    int efd;
    size_t addr_slot;          /* bytes per rank in addrs */
    uint32_t *addr_len;        /* [size] */
    char *addrs;               /* [size * addr_slot] worker addresses */
    ucxt_peer_t *peers;        /* [size] */
    mox__treq_t *running;      /* requests in flight (doubly linked) */
    int failure_pending;       /* an error callback fired since last progress */
    unsigned completions;      /* callbacks since the last progress call */
};

/* The UCX request's user area (ucp_params.request_size). `orphaned` is set
 * when its treq was given up (cancel, destroy): the completion callback
 * then only frees the request. Zeroed by ucp_params.request_init and reset
 * by the callback before the request goes back to UCX's pool. */
typedef struct {
    int orphaned;
} ucxt_slot_t;

void ucxt_slot_init(void *request);

/* Fields of mox__treq_t used by this transport. */
#define UCXT_REQ(r) ((r)->tp_priv[0])            /* UCX request or NULL */
#define UCXT_PREV(r) ((mox__treq_t *)(r)->tp_priv[1])
#define UCXT_NEXT(r) ((mox__treq_t *)(r)->tp_priv[2])
#define UCXT_TP(r) ((struct mox__transport *)(r)->tp_priv[3])

/* ucx.c */
ucp_ep_h ucxt_ep(struct mox__transport *tp, int peer, mox_status_t *st);
void ucxt_close_ep(struct mox__transport *tp, ucxt_peer_t *p, int force);

/* ucx_msg.c */
mox_status_t ucxt_isend(struct mox__transport *tp, int peer, uint64_t tag,
                        const void *buf, size_t bytes, mox__treq_t *req);
mox_status_t ucxt_isendv(struct mox__transport *tp, int peer, uint64_t tag,
                         const mox__iov_t *iov, size_t iovcnt, size_t bytes,
                         mox__treq_t *r);
mox_status_t ucxt_irecv(struct mox__transport *tp, int peer, uint64_t tag,
                        void *buf, size_t capacity, mox__treq_t *req);
int ucxt_progress(struct mox__transport *tp);
void ucxt_cancel(struct mox__transport *tp, mox__treq_t *req);
/* Give up every running request (destroy): cancel, wait a little, orphan. */
void ucxt_abandon_all(struct mox__transport *tp, uint64_t deadline_ns);
mox_status_t ucxt_status(const ucxt_peer_t *p, ucs_status_t st);

#endif
