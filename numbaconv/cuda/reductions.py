"""Per-channel sums over (N, L) of arrays laid out (N, C, L): db, batch-norm statistics."""
import numpy as np

from ._runtime import THREADS_1D, blocks, empty, flat, launch


def channel_sums(a, b, N, C, L, divisor=1.0, shift=None, sum_a=None, sum_b=None, sum_ab=None):
    """Sums of a', b' and a'*b' per channel, divided by ``divisor``, where
    a' = a - shift[0][c] and b' = b - shift[1][c] when ``shift`` is given.
    Returns the three device vectors (fresh ones unless passed in)."""
    dtype = np.dtype(a.dtype)
    outs = [o if o is not None else empty((C,), dtype) for o in (sum_a, sum_b, sum_ab)]
    sa, sb = shift if shift is not None else (outs[0], outs[0])   # not read when unshifted
    launch("channel_sums", dtype, blocks(C, 1), THREADS_1D, flat(a), flat(b), flat(sa), flat(sb),
           int(shift is not None), float(divisor), *(flat(o) for o in outs), N, C, L)
    return outs
