/*
 * Scratch buffers of collectives, kept by the communicator between calls.
 *
 * A large malloc is a fresh mmap: every page faults in (and is zeroed by
 * the kernel) on first touch, and munmap tears it down at free. For a
 * 64 MiB reduce-scatter on one node that was about half of the run. The
 * cache keeps freed buffers, up to MOX_SCRATCH_CACHE bytes per
 * communicator, and hands the smallest one that fits to the next call.
 *
 * Buffers come back uninitialised, like malloc. Only the thread driving the
 * communicator calls these (MPI_THREAD_SERIALIZED, as the rest of it).
 */
#ifndef MOX_CORE_SCRATCH_H
#define MOX_CORE_SCRATCH_H

#include <stddef.h>

struct mox_comm;

/* At least `bytes` bytes (1 if 0), 64-byte aligned; NULL without memory. */
void *mox__scratch_get(struct mox_comm *c, size_t bytes);

/* Give back a buffer from mox__scratch_get (NULL is ignored). */
void mox__scratch_put(struct mox_comm *c, void *p);

/* Free every cached buffer (communicator destroy). */
void mox__scratch_fini(struct mox_comm *c);

#endif
