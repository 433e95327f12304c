"""Linear layer: the batch is split into one contiguous chunk of rows per Numba
thread; each chunk runs single-threaded BLAS GEMMs on the rows it owns (out,
dx) and its own partial dw and db, summed in chunk order afterwards, so no
second thread pool runs and results repeat for a fixed thread count. Without a
Numba-callable BLAS (``_gemm.AVAILABLE``) the products are NumPy matmuls."""
import numpy as np
from numba import njit, prange

from ..checks import check_dout, linear_shapes
from . import _gemm
from ._blas import blas_threads, kernel_threads, matmul, work_chunks
from ._gemm import gemm


@njit(parallel=True, cache=True)
def _forward(x, w, b, out, T):
    N, D = x.shape
    M = w.shape[1]
    for t in prange(T):
        lo, hi = t * N // T, (t + 1) * N // T
        gemm(False, False, hi - lo, M, D, 1.0, x[lo:hi], D, w, M, 0.0, out[lo:hi], M)
        for n in range(lo, hi):
            for m in range(M):
                out[n, m] += b[m]


@njit(parallel=True, cache=True)
def _backward(x, w, dout, dx, dw_part, db_part):
    N, D = x.shape
    M = w.shape[1]
    T = dw_part.shape[0]
    for t in prange(T):  # chunk t owns rows lo:hi of dx, dw_part[t] and db_part[t]
        lo, hi = t * N // T, (t + 1) * N // T
        gemm(False, True, hi - lo, D, M, 1.0, dout[lo:hi], M, w, M, 0.0, dx[lo:hi], D)
        gemm(True, False, D, M, hi - lo, 1.0, x[lo:hi], D, dout[lo:hi], M, 0.0, dw_part[t], M)
        for m in range(M):
            s = 0.0
            for n in range(lo, hi):
                s += dout[n, m]
            db_part[t, m] = s


class Linear:
    @staticmethod
    def forward(x, w, b):
        """x (N, d1, ..., dk) is flattened to (N, D); w (D, M), b (M,); out = x w + b."""
        N, D, M = linear_shapes(x, w, b)
        x2 = np.ascontiguousarray(x).reshape(N, D)
        w = np.ascontiguousarray(w)
        b = np.ascontiguousarray(b)
        if not _gemm.AVAILABLE:
            return matmul(x2, w) + b, (x, w)
        out = np.empty((N, M), dtype=x2.dtype)
        with kernel_threads(N * D * M), blas_threads(1):
            _forward(x2, w, b, out, work_chunks(N))
        return out, (x, w)

    @staticmethod
    def backward(dout, cache):
        """Returns (dx shaped like x, dw, db)."""
        x, w = cache
        N, D, M = x.shape[0], w.shape[0], w.shape[1]
        check_dout(dout, (N, M), x.dtype, "Linear")
        dout = np.ascontiguousarray(dout)
        x2 = np.ascontiguousarray(x).reshape(N, D)
        if not _gemm.AVAILABLE:
            return matmul(dout, w.T).reshape(x.shape), matmul(x2.T, dout), dout.sum(axis=0)
        with kernel_threads(N * D * M), blas_threads(1):
            T = work_chunks(N)
            dx = np.empty((N, D), dtype=dout.dtype)
            dw_part = np.empty((T, D, M), dtype=dout.dtype)
            db_part = np.empty((T, M), dtype=dout.dtype)
            _backward(x2, w, dout, dx, dw_part, db_part)
        return dx.reshape(x.shape), dw_part.sum(axis=0), db_part.sum(axis=0)
