/* The communicator and requests: state shared by algorithms. */
#ifndef MOX_CORE_COMM_H
#define MOX_CORE_COMM_H

#include <stdint.h>
#include <stddef.h>
#include "mox/mox.h"
#include "bootstrap.h"
#include "config.h"
#include "topo.h"
#include "transport.h"

/* Scratch buffers a communicator keeps between collectives (scratch.c). */
#define MOX_SCRATCH_SLOTS 8

/* Tags: core uses the low MOX_TAG_BITS bits; transports may use the rest
 * (ucx puts the sender's rank there). */
#define MOX_TAG_BITS 40
#define MOX_TAG_STEP_BITS 12
#define MOX_TAG_SEQ_MASK ((UINT64_C(1) << (MOX_TAG_BITS - MOX_TAG_STEP_BITS)) - 1)

static inline uint64_t mox__tag(uint64_t seq, unsigned step)
{
    return ((seq & MOX_TAG_SEQ_MASK) << MOX_TAG_STEP_BITS) |
           (step & ((1u << MOX_TAG_STEP_BITS) - 1));
}

enum { MOX_TP_SELF, MOX_TP_SHM, MOX_TP_UCX, MOX_TP_COUNT };

/* Values of MOX_ALLTOALLV_ALGO (indices of its choices). */
enum { MOX_A2A_AUTO, MOX_A2A_PAIRWISE, MOX_A2A_HIER };

struct mox_comm {
    int rank, size;
    mox__config_t cfg;
    mox__boot_t *boot;
    mox__topo_t topo;
    int node, local_rank, local_size;
    int numa_node;
    int64_t spin_count;     /* resolved MOX_SPIN_COUNT */
    int host_ranks;         /* ranks on this machine (any emulated node) */
    char nic[64];
    int nic_rate_mbps;
    char node_key[MOX_NODE_KEY_LEN];
    char job_id[32];

    const mox__transport_ops_t *tp_ops[MOX_TP_COUNT];
    mox__transport_t *tp[MOX_TP_COUNT];

    uint64_t coll_seq;      /* collectives started; same on every rank */
    /* Small collectives through the shm collective area
     * (core/algorithms/rsag_shm_small.c), in the order they started; the
     * same on every rank, as coll_seq. Values are flag values,
     * (seq + 1) << 20 plus the round of an op in rounds (0: none). */
    struct {
        uint64_t ops;       /* started: op i uses slot i % MOX_COLL_SLOTS */
        uint64_t last_seq1; /* the last one started */
        uint64_t done_seq1; /* the last one finished on this rank */
        uint64_t slot_seq1[MOX_COLL_SLOTS]; /* the last one in each slot */
    } shm_small;
    /* Scratch buffers kept for the next collective (core/scratch.c). */
    struct {
        int n;
        size_t bytes;
        void *buf[MOX_SCRATCH_SLOTS];
        size_t cap[MOX_SCRATCH_SLOTS];
    } scratch;
    uint32_t moe_created;   /* MoE handles created (collectively) */
    int failed;             /* a fatal error happened; only destroy is useful */
    uint32_t peers_lost;    /* peers the transports saw fail or leave: from
                               then on only a request's own messages
                               restart its MOX_TIMEOUT clock (request.c) */
    mox_stats_t stats;
    struct mox_req *active; /* requests not yet finished, for progress */
    struct mox_req *cur;    /* request being started or stepped: its
                               sends are counted in its own stats */

    char last_error[768];
    uint64_t nfail;         /* mox__fail calls, to tell whether a callee
                               already left a message */
};

typedef struct mox_comm mox__comm_t;

/*
 * A running collective. An algorithm fills `progress` (advance as far as
 * possible without blocking: MOX_IN_PROGRESS, MOX_OK when finished, or an
 * error) and `cleanup`, and lists the transport requests it may wait on in
 * `treqs` so timeouts can name the peers and cancel them.
 */
struct mox_req {
    mox__comm_t *comm;
    const char *name;       /* "alltoallv_hier" */
    int done;
    mox_status_t status;
    int agreed_error;       /* every rank saw the same error and nothing is
                               in flight: the communicator stays usable */
    uint64_t seq;
    uint64_t start_ns;
    /* mox_test's clock for MOX_TIMEOUT: time polled with nothing moving,
     * and when it last polled (0: never, or something moved). */
    uint64_t test_idle_ns, test_poll_ns;
    /* Its messages finished so far (transports count them, through
     * mox__treq_t's `moves`), and the count mox_test last saw. */
    uint64_t moves, test_moves;
    mox_status_t (*progress)(struct mox_req *req);
    void (*cleanup)(struct mox_req *req);
    mox__treq_t *treqs;
    size_t ntreqs;
    /* Optional, for algorithms that wait on something other than treqs
     * (the shm collective area's flags): write the ranks still awaited
     * into buf ("3, 5"); returns how many. */
    int (*describe_wait)(struct mox_req *req, char *buf, size_t len);
    /* Optional: set while all the request waits for is a shm area bell
     * to ring (mox__bell_ring): mox_wait, with nothing else to progress,
     * sleeps on it (a futex) instead of yielding. */
    _Atomic uint32_t *doze_bell, *doze_sleepers;
    void *state;
    uint64_t bytes_intra, bytes_inter, msgs_intra, msgs_inter;
    struct mox_req *next;   /* in comm->active */
};

/* After storing what others wait for (release): wake the ranks asleep on
 * `bell` (struct mox_req's doze_bell), with no system call when none
 * sleeps. */
void mox__bell_ring(_Atomic uint32_t *bell, _Atomic uint32_t *sleepers);

/* Record an error on the communicator (message formatted like printf) and
 * return `st`, so `return mox__fail(c, st, ...)` reads naturally. */
mox_status_t mox__fail(mox__comm_t *c, mox_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Send/receive through the transport that reaches `peer`; counts bytes. */
/* Count `bytes` written straight into a local peer's shared memory (no
 * message) as one intra-node send. */
void mox__count_put(mox__comm_t *c, size_t bytes);
mox_status_t mox__isend(mox__comm_t *c, int peer, uint64_t tag,
                        const void *buf, size_t bytes, mox__treq_t *r);
mox_status_t mox__irecv(mox__comm_t *c, int peer, uint64_t tag, void *buf,
                        size_t capacity, mox__treq_t *r);
/* Gather send (see isendv in transport.h): `iov` and the buffers it points
 * to are the caller's and must stay valid until `r` is done. Returns
 * MOX_ERR_UNSUPPORTED, with no message on the communicator, `r` not posted
 * and nothing counted, when the peer's transport would not do it in fewer
 * copies than packing; the caller then packs and calls mox__isend. Counts
 * like mox__isend otherwise. */
mox_status_t mox__isendv(mox__comm_t *c, int peer, uint64_t tag,
                         const mox__iov_t *iov, size_t iovcnt, size_t bytes,
                         mox__treq_t *r);

/* The shm collective area of local rank `local_rank` (transport.h), or
 * NULL when there is none (no shm transport: alone on the node, or
 * MOX_SHM_SMALL=0). */
const mox__coll_slot_t *mox__shm_coll_slot(mox__comm_t *c, int local_rank);
/* MOX_OK while `peer` may still be alive, MOX_ERR_PEER (with a message
 * naming it) once its transport saw its process gone. Costs syscalls
 * (shm): call it now and then, not on every poll. */
mox_status_t mox__peer_check(mox__comm_t *c, int peer);

/* Poll every transport once; returns events seen or a negative status. */
int mox__progress(mox__comm_t *c);

/* New request for a collective: takes the next sequence number. */
mox_status_t mox__req_new(mox__comm_t *c, const char *name,
                          struct mox_req **req);
/* Give up on a request whose algorithm failed to start: frees it and fails
 * the communicator (its sequence number is spent). */
void mox__req_abort(struct mox_req *req, mox_status_t st);
/* Start it: first progress, and on success put it in comm->active. On an
 * immediate error the request is freed and *out stays NULL. */
mox_status_t mox__req_start(struct mox_req *req, mox_req_t *out);

/* Check a finished transport request; returns its status with a message
 * naming the peer on failure. */
mox_status_t mox__treq_check(mox__comm_t *c, const mox__treq_t *r,
                             const char *what);

/* 1 when every posted request of t[0..n) is done. */
int mox__treqs_done(const mox__treq_t *t, size_t n);
/* First failure among the posted requests of t[0..n), named; else MOX_OK. */
mox_status_t mox__treqs_check(mox__comm_t *c, const mox__treq_t *t, size_t n,
                              const char *what);

uint64_t mox__now_ns(void);

/* The blocking form of a collective: `st` is the status of its start and
 * `req` the request it made; waits for it, frees it, returns its status. */
mox_status_t mox__wait_started(mox_status_t st, mox_req_t req);

/* Free every request of the communicator (at destroy). */
void mox__req_free_all(mox__comm_t *c);

/* Algorithms (core/algorithms/). Arguments already validated. */
typedef struct {
    const char *sendbuf;
    const uint64_t *sendcounts, *sdispls;
    char *recvbuf;
    const uint64_t *recvcounts, *rdispls;
    size_t elem_bytes;
} mox__a2av_args_t;

mox_status_t mox__alltoallv_pairwise(struct mox_req *req,
                                     const mox__a2av_args_t *a);
mox_status_t mox__alltoallv_hier(struct mox_req *req,
                                 const mox__a2av_args_t *a);
mox_status_t mox__barrier_dissem(struct mox_req *req);

#endif
