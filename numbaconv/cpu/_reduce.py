"""Reductions shared by the conv kernels."""
from numba import njit


@njit(fastmath={"reassoc"}, cache=True)
def row_total(v):
    # sum of v in float64; reassociation lets LLVM vectorise it (a serial sum costs an add's
    # latency per element: ~5 ms of conv 3->32's backward went to db). Still a fixed order once
    # compiled, so results repeat
    s = 0.0
    for i in range(v.size):
        s += v[i]
    return s
