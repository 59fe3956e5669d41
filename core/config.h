/* The one table of every MOX_* environment variable. */
#ifndef MOX_CORE_CONFIG_H
#define MOX_CORE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include "mox/mox.h"

typedef enum {
    MOX_CFG_INT,      /* signed 64-bit integer with bounds */
    MOX_CFG_SIZE,     /* byte size: 4096, 64k, 8M, 1G */
    MOX_CFG_STRING,   /* free text */
    MOX_CFG_ENUM,     /* one of a '|' separated list */
    MOX_CFG_BOOL      /* 0/1, yes/no, on/off, true/false */
} mox__cfg_type_t;

/* Every variable, in one X-macro:
 * X(field, NAME, type, default, enum choices or NULL, min, max, doc) */
#define MOX_CONFIG_TABLE(X)                                                    \
    X(log_level, "MOX_LOG_LEVEL", MOX_CFG_ENUM, "warn",                        \
      "error|warn|info|debug|trace", 0, 0,                                     \
      "log threshold; lines carry rank and component")                         \
    X(timeout_ms, "MOX_TIMEOUT", MOX_CFG_INT, "60000", NULL, 100,              \
      86400000,                                                                \
      "milliseconds without progress from a peer before an operation "         \
      "fails with MOX_ERR_TIMEOUT, waited on or polled (mox_test); once a "    \
      "peer was lost only the operation's own messages count; also "           \
      "bounds the bootstrap")                                                  \
    X(rank, "MOX_RANK", MOX_CFG_INT, "-1", NULL, -1, 1 << 24,                  \
      "this process's rank for the TCP rendezvous (else RANK, "                \
      "OMPI_COMM_WORLD_RANK, PMI_RANK, SLURM_PROCID)")                         \
    X(size, "MOX_SIZE", MOX_CFG_INT, "-1", NULL, -1, 1 << 24,                  \
      "number of ranks for the TCP rendezvous (else WORLD_SIZE, "              \
      "OMPI_COMM_WORLD_SIZE, PMI_SIZE, SLURM_NTASKS)")                         \
    X(root_addr, "MOX_ROOT_ADDR", MOX_CFG_STRING, "", NULL, 0, 0,              \
      "IP:PORT where rank 0 listens for the TCP rendezvous (else "             \
      "MASTER_ADDR:MASTER_PORT)")                                              \
    X(job_secret, "MOX_JOB_SECRET", MOX_CFG_STRING, "", NULL, 0, 0,            \
      "shared secret every rank presents at the rendezvous; joiners "          \
      "with another secret are refused")                                       \
    X(job_id, "MOX_JOB_ID", MOX_CFG_STRING, "", NULL, 0, 0,                    \
      "job name used in /dev/shm segment names (default: chosen by "           \
      "rank 0)")                                                               \
    X(bootstrap, "MOX_BOOTSTRAP", MOX_CFG_ENUM, "auto",                        \
      "auto|pmix|tcp|single", 0, 0,                                            \
      "how ranks find each other when the host passes no OOB allgather")       \
    X(node_id, "MOX_NODE_ID", MOX_CFG_STRING, "", NULL, 0, 0,                  \
      "override the node key (default hostname:ipc-namespace); ranks "         \
      "with equal keys share memory")                                          \
    X(net_tls, "MOX_NET_TLS", MOX_CFG_STRING, "^sm,self", NULL, 0, 0,          \
      "UCX transports for traffic between nodes (UCX_TLS syntax); "            \
      "tcp on emulated nodes")                                                 \
    X(net_devices, "MOX_NET_DEVICES", MOX_CFG_STRING, "", NULL, 0, 0,          \
      "UCX network devices between nodes (UCX_NET_DEVICES syntax; "            \
      "default: all)")                                                         \
    X(net_eager_max, "MOX_NET_EAGER_MAX", MOX_CFG_STRING, "auto", NULL, 0, 0,  \
      "largest message between nodes sent eagerly, without UCX's rendezvous "  \
      "handshake (UCX RNDV_THRESH): a size such as 1M, ucx (UCX's choice) "    \
      "or auto = 64M when MOX_NET_TLS is tcp (a handshake per message "        \
      "waits on a busy peer), UCX's choice otherwise; UCX_RNDV_THRESH in "     \
      "the environment wins")                                                  \
    X(net_rcvbuf, "MOX_NET_RCVBUF", MOX_CFG_STRING, "auto", NULL, 0, 0,        \
      "receive buffer of each TCP connection between nodes (UCX "              \
      "TCP_RCVBUF), which caps the data in flight per connection so that "     \
      "connections sharing a link share it evenly: a size such as 256K, ucx "  \
      "(UCX's and the kernel's choice) or auto = 64K when MOX_NET_TLS "        \
      "lets UCX use tcp; mox_comm_create sets UCX_TCP_RCVBUF in the "          \
      "environment to it, unless the user set UCX_TCP_RCVBUF")                 \
    X(net_connect, "MOX_NET_CONNECT", MOX_CFG_INT, "256", NULL, 0, 1 << 30,    \
      "communicators of at most this many ranks on several nodes connect "     \
      "every pair of ranks on different nodes at creation (one byte each "     \
      "way), so that a rank that dies later is a broken connection to its "    \
      "peers rather than one they are still opening (UCX 1.13's TCP "          \
      "transport can abort the process there); 0 = connect on first use")      \
    X(shm_slot_bytes, "MOX_SHM_SLOT_SIZE", MOX_CFG_SIZE, "64k", NULL, 4096,    \
      1 << 26, "bytes per slot of a shared-memory channel")                    \
    X(shm_slots, "MOX_SHM_SLOTS", MOX_CFG_INT, "8", NULL, 2, 1024,             \
      "slots per ordered pair of ranks in a node")                             \
    X(shm_cma, "MOX_SHM_CMA", MOX_CFG_ENUM, "auto", "auto|on|off", 0, 0,       \
      "single-copy large messages with process_vm_readv (auto: when "          \
      "permitted)")                                                            \
    X(shm_cma_threshold, "MOX_SHM_CMA_THRESHOLD", MOX_CFG_SIZE, "32k",         \
      NULL, 0, (int64_t)1 << 40,                                               \
      "messages of at least this many bytes use single copy")                  \
    X(spin_count, "MOX_SPIN_COUNT", MOX_CFG_INT, "-1", NULL, -1, 100000000,    \
      "progress polls before a waiting rank starts yielding the CPU (or, "    \
      "when all it waits for is its node leader in the shm area, sleeping "   \
      "on a futex until the leader wakes it); -1 = auto: 0 when the "          \
      "machine's ranks outnumber its usable cores, else 2000")                 \
    X(alltoallv_algo, "MOX_ALLTOALLV_ALGO", MOX_CFG_ENUM, "auto",              \
      "auto|pairwise|hier", 0, 0,                                              \
      "alltoall(v) algorithm: pairwise (direct) or hier (two-level, one "      \
      "message per node pair per rail)")                                       \
    X(alltoallv_direct, "MOX_ALLTOALLV_DIRECT", MOX_CFG_SIZE, "64k", NULL, 0, \
      (int64_t)1 << 50,                                                        \
      "hier alltoall(v): a block of at least this many bytes for a rank on "   \
      "another node goes straight to it instead of through the rails' "        \
      "aggregators (its count still travels in their headers); 0 = every "    \
      "block through the aggregators; must be the same on every rank")         \
    X(moe_algo, "MOX_MOE_ALGO", MOX_CFG_ENUM, "auto",                          \
      "auto|dedup|alltoallv|allgather", 0, 0,                                  \
      "MoE dispatch/combine algorithm when the handle's config says "          \
      "DEFAULT; auto = dedup with several nodes, else alltoallv")              \
    X(moe_wire, "MOX_MOE_WIRE", MOX_CFG_ENUM, "native", "native|bf16|fp8", 0,  \
      0, "MoE dispatch wire format when the handle's config says DEFAULT")     \
    X(moe_combine_wire, "MOX_MOE_COMBINE_WIRE", MOX_CFG_ENUM, "f32",           \
      "f32|bf16", 0, 0,                                                        \
      "MoE combine wire format when the handle's config says DEFAULT")         \
    X(moe_chunk_bytes, "MOX_MOE_CHUNK_SIZE", MOX_CFG_SIZE, "128k", NULL, 1,   \
      (int64_t)1 << 40,                                                        \
      "MoE dispatch: a message that crosses the network goes in chunks of "   \
      "about this many bytes (at most 8), so that its forwarding inside "     \
      "the destination node overlaps the transfer; same value on every rank") \
    X(reduce_scatter_algo, "MOX_REDUCE_SCATTER_ALGO", MOX_CFG_ENUM, "auto",    \
      "auto|flat|hier|rhalving|ring|leader", 0, 0,                             \
      "reduce-scatter algorithm: flat (direct, fixed rank order), hier (shm "  \
      "inside nodes, then rail peers, pipelined), rhalving (shm inside "       \
      "nodes, then recursive halving among rail peers; all ranks on one or "   \
      "uneven nodes), ring (hier with a pipelined ring among rail peers "      \
      "instead of direct sends; equal nodes, dense, else hier) or leader "     \
      "(rhalving among one leader per node, whose node meets it in the shm "   \
      "area; equal nodes of 2+ ranks, dense, vector up to MOX_SHM_SMALL, "     \
      "else rhalving); auto = leader on 3 or more nodes, else rhalving, "      \
      "across nodes up to MOX_RSAG_SMALL, the shm collective area on one "     \
      "node up to MOX_SHM_SMALL, else ring on 3 or more equal nodes "          \
      "(dense), hier on other nodes, flat on one node")                        \
    X(allgather_algo, "MOX_ALLGATHER_ALGO", MOX_CFG_ENUM, "auto",              \
      "auto|flat|hier|rdoubling|ring|leader", 0, 0,                            \
      "allgather algorithm: flat (direct), hier (rail peers, then shm "        \
      "forwarding, pipelined), rdoubling (recursive doubling among rail "      \
      "peers, then shm; all ranks on one or uneven nodes), ring (hier "        \
      "with a pipelined ring among rail peers; equal nodes, else hier) or "    \
      "leader (rdoubling among one leader per node, whose node meets it in "   \
      "the shm area; equal nodes of 2+ ranks, vector up to MOX_SHM_SMALL, "    \
      "else rdoubling); auto = leader on 3 or more nodes, else rdoubling, "    \
      "across nodes up to MOX_RSAG_SMALL, the shm "                            \
      "collective area on one node (blocks above MOX_SHM_SMALL in rounds; "    \
      "flat on 2 ranks above 64 KiB or with MOX_SHM_SMALL=0), else ring on "   \
      "3 or more equal nodes, hier on other nodes")                            \
    X(rsag_small, "MOX_RSAG_SMALL", MOX_CFG_SIZE, "64k", NULL, 0,              \
      (int64_t)1 << 40,                                                        \
      "reduce-scatter/allgather vectors (bytes of the whole vector) up to "    \
      "this size use the latency algorithms (rhalving, rdoubling, leader) "   \
      "in auto")                                                               \
    X(shm_small, "MOX_SHM_SMALL", MOX_CFG_SIZE, "1M", NULL, 0,                 \
      (int64_t)1 << 24,                                                        \
      "reduce-scatter vectors (bytes of the whole vector) and allgathers "    \
      "whose blocks (bytes of the largest) are up to this size go through "    \
      "the shm segment's collective area when all ranks share one node "       \
      "(allgathers with larger blocks too, in rounds of a slot each); "        \
      "block-sparse reduce-scatters of any size too (in rounds above 4 "       \
      "times this size) when every rank's present blocks of each round "       \
      "fit it packed; on several nodes, the latency algorithms' leader "      \
      "mode meets each node's leader there (the segment holds 2 "              \
      "slots of this size, plus 1/64 for a sparse bitmap, per local rank, "    \
      "capped so the area stays within about 32 MiB per node; "                \
      "allgathers above 64k on 2 ranks stay flat; same value on every "        \
      "rank; 0 disables)")                                                     \
    X(rs_chunk_bytes, "MOX_RS_CHUNK_SIZE", MOX_CFG_SIZE, "1M", NULL, 4096,     \
      (int64_t)1 << 34,                                                        \
      "reduce-scatter/allgather pipeline chunk (bytes of input per message); " \
      "part of the fixed reduction order")                                     \
    X(scratch_cache, "MOX_SCRATCH_CACHE", MOX_CFG_SIZE, "256M", NULL, 0,       \
      (int64_t)1 << 40,                                                        \
      "bytes of collective scratch buffers (receive and packing areas of "     \
      "reduce-scatter and alltoallv) a communicator keeps for its next "       \
      "calls instead of returning them to the system, so large calls do not "  \
      "fault fresh pages in every time; kept until destroy; 0 disables")       \
    X(stats, "MOX_STATS", MOX_CFG_BOOL, "0", NULL, 0, 0,                       \
      "print this rank's traffic counters when the communicator is "           \
      "destroyed")

typedef struct {
#define MOX_CFG_FIELD_(field, name, type, def, choices, mn, mx, doc)           \
    int64_t field;                                                             \
    const char *field##_str;
    MOX_CONFIG_TABLE(MOX_CFG_FIELD_)
#undef MOX_CFG_FIELD_
} mox__config_t;

typedef struct {
    const char *name;
    mox__cfg_type_t type;
    const char *def;
    const char *choices;
    int64_t min, max;
    const char *doc;
} mox__cfg_entry_t;

/* The table, for mox_info -c. */
extern const mox__cfg_entry_t mox__cfg_entries[];
extern const size_t mox__cfg_count;

/*
 * Fill `cfg` from `getenv` (or from `lookup` when not NULL, for tests). A bad
 * value fails with MOX_ERR_CONFIG and a message naming the variable and the
 * value in errbuf. Enum fields hold the index of the choice; string fields
 * point into the environment or the default. Unknown MOX_* variables found
 * in `environ` (when `env` is non-NULL) are returned in *unknown (first
 * one) so the caller can warn once.
 */
mox_status_t mox__config_load(mox__config_t *cfg,
                              const char *(*lookup)(const char *name),
                              char *errbuf, size_t errlen);

/* Parse one value of the given entry; exposed for unit tests. */
mox_status_t mox__config_parse(const mox__cfg_entry_t *e, const char *text,
                               int64_t *out, char *errbuf, size_t errlen);

/* Name of the first MOX_* variable in `envp` that is not in the table, or
 * NULL. */
const char *mox__config_unknown(char *const *envp);

/* Parse a byte size ("64k", "8M", "1G", "4096"); -1 on malformed text. */
int64_t mox__parse_size(const char *text);

#endif
