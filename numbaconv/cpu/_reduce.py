"""Reductions shared by the conv kernels (conv.py, winograd.py).

Numba's on-disk cache keys a kernel on its own file's source only: after editing this file, the
callers' cached kernels still hold the old code until their files change or their entries in
``numbaconv/cpu/__pycache__`` are removed."""
import numpy as np
from numba import njit

# Rows shorter than this are summed left to right, in the reference's order (the property tests'
# float64 cases compare cancelling sums of a few elements elementwise).
SHORT = 64


@njit(cache=True)
def row_total(v):
    """Sum of v in float64, in a fixed order: left to right for short rows, else in eight
    interleaved partial sums added pairwise at the end. A single running sum costs an add's
    latency per element (~5 ms of conv 3->32's backward went to db); eight independent ones
    vectorise and pipeline."""
    n = v.size
    if n < SHORT:
        s = 0.0
        for i in range(n):
            s += v[i]
        return s
    r = np.zeros(8)
    m = n - n % 8
    for i in range(0, m, 8):
        for k in range(8):
            r[k] += v[i + k]
    s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    for i in range(m, n):
        s += v[i]
    return s
