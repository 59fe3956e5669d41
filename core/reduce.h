/*
 * Typed reduction kernels for reduce-scatter: sum, prod, max, min, avg over
 * every element type. Values are combined in an accumulator type (f32 for
 * f16/bf16, the type itself otherwise), so 16-bit floats are rounded once,
 * at the end (mox__reduce_finish). Pure functions, no allocation.
 *
 * Integer sum and prod wrap modulo 2^bits (two's complement); avg is not
 * defined for integer types. max/min propagate NaN.
 */
#ifndef MOX_CORE_REDUCE_H
#define MOX_CORE_REDUCE_H

#include <stddef.h>
#include "mox/mox.h"

/* Type the reduction accumulates in: f32 for f16 and bf16, else `t`. */
mox_dtype_t mox__reduce_acc_type(mox_dtype_t t);

/* "sum", "prod", ...; "?" for an unknown op. */
const char *mox__op_name(int op);

/* MOX_OK, or MOX_ERR_INVALID_ARG with the reason in errbuf: unknown type,
 * unknown op, or an op the type does not define (avg on integers). */
mox_status_t mox__reduce_check(mox_dtype_t t, int op, char *errbuf,
                               size_t errlen);

/* acc[i] = src[i] converted to acc_t. src_t is acc_t or a 16-bit float
 * type whose acc_t is f32. */
void mox__reduce_init(mox_dtype_t acc_t, void *acc, mox_dtype_t src_t,
                      const void *src, size_t n);

/* acc[i] = acc[i] op src[i] (avg combines as sum); src_t as above. */
void mox__reduce_apply(mox_op_t op, mox_dtype_t acc_t, void *acc,
                       mox_dtype_t src_t, const void *src, size_t n);

/* dst[i] = acc[i] as type t (rounded to nearest even for 16-bit floats),
 * divided by `nranks` first for avg. dst may alias acc only when t is the
 * accumulator type. */
void mox__reduce_finish(mox_op_t op, mox_dtype_t t, void *dst,
                        const void *acc, size_t n, int nranks);

#endif
