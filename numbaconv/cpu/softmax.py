import numpy as np
from numba import njit, prange

from ..checks import softmax_inputs
from ._blas import kernel_threads


@njit(parallel=True, cache=True)
def _softmax_rows(x, y, dx, losses):
    # one row per iteration; the per-row losses are summed in order afterwards
    N, C = x.shape
    for n in prange(N):
        m = x[n, 0]
        for c in range(1, C):
            if x[n, c] > m:
                m = x[n, c]
        z = 0.0
        for c in range(C):
            z += np.exp(x[n, c] - m)
        logz = np.log(z)
        losses[n] = logz - (x[n, y[n]] - m)
        for c in range(C):  # (p - onehot) / N, rounded once: a certain class gets exactly 0
            p = np.exp(x[n, c] - m - logz)
            dx[n, c] = ((p - 1.0) if c == y[n] else p) / N


def softmax_loss(x, y):
    """Mean cross-entropy of softmax(x) against integer labels y.

    x (N, C) scores, y (N,) labels in [0, C). Returns (loss as a Python float, dx).
    """
    N, _ = softmax_inputs(x, y)
    dx = np.empty(x.shape, dtype=x.dtype)
    losses = np.empty(N, dtype=np.float64)
    with kernel_threads(x.size):
        _softmax_rows(np.ascontiguousarray(x), np.ascontiguousarray(y, dtype=np.int64), dx, losses)
    return float(losses.sum() / N), dx
