"""Per-channel sums over (N, L) of arrays laid out (N, C, L): db, batch-norm statistics."""
import numpy as np

from ._runtime import THREADS_REDUCE, blocks, empty, flat, launch, scratch


def channel_sums(a, b, N, C, L, divisor=1.0, shift=None, sum_a=None, sum_b=None, sum_ab=None):
    """Sums of a', b' and a'*b' per channel, divided by ``divisor``, where
    a' = a - shift[0][c] and b' = b - shift[1][c] when ``shift`` is given.
    Returns the three device vectors (fresh ones unless passed in; when only
    sum_a is passed, the other two are scratch, overwritten by the next call)."""
    dtype = np.dtype(a.dtype)
    if sum_a is not None and sum_b is None and sum_ab is None:   # only sum_a wanted (conv db)
        outs = [sum_a, scratch((C,), dtype, "unused channel sums b"), scratch((C,), dtype, "unused channel sums ab")]
    else:
        outs = [o if o is not None else empty((C,), dtype) for o in (sum_a, sum_b, sum_ab)]
    sa, sb = shift if shift is not None else (outs[0], outs[0])   # not read when unshifted
    launch("channel_sums", dtype, blocks(C, 1), THREADS_REDUCE, flat(a), flat(b), flat(sa), flat(sb),
           int(shift is not None), float(divisor), *(flat(o) for o in outs), N, C, L)
    return outs
