"""Linear layer: the products are BLAS GEMMs (threads scoped to Numba's count),
the bias add and the bias gradient a parallel Numba pass."""
import numpy as np
from numba import njit, prange

from ..checks import check_dout, linear_shapes
from ._blas import matmul


@njit(parallel=True, cache=True)
def _add_bias(out, b):
    N, M = out.shape
    for n in prange(N):
        for m in range(M):
            out[n, m] += b[m]


@njit(parallel=True, cache=True)
def _column_sums(a, s):
    # each iteration owns one column sum; the loop runs down the rows in order
    N, M = a.shape
    for m in prange(M):
        acc = 0.0
        for n in range(N):
            acc += a[n, m]
        s[m] = acc


class Linear:
    @staticmethod
    def forward(x, w, b):
        """x (N, d1, ..., dk) is flattened to (N, D); w (D, M), b (M,); out = x w + b."""
        N, D, M = linear_shapes(x, w, b)
        x2 = np.ascontiguousarray(x).reshape(N, D)
        out = matmul(x2, w)
        _add_bias(out, np.ascontiguousarray(b))
        return out, (x, w)

    @staticmethod
    def backward(dout, cache):
        """Returns (dx shaped like x, dw, db)."""
        x, w = cache
        N, D, M = x.shape[0], w.shape[0], w.shape[1]
        check_dout(dout, (N, M), x.dtype, "Linear")
        dout = np.ascontiguousarray(dout)
        dx = matmul(dout, w.T).reshape(x.shape)
        dw = matmul(np.ascontiguousarray(x).reshape(N, D).T, dout)
        db = np.empty(M, dtype=dout.dtype)
        _column_sums(dout, db)
        return dx, dw, db
