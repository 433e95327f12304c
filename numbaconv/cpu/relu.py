import numpy as np
from numba import njit, prange

from ..checks import check_array, check_dout
from ._blas import kernel_threads


@njit(parallel=True, cache=True)
def _relu_forward(x, out):
    for i in prange(x.size):
        v = x[i]
        out[i] = 0 if v <= 0 else v  # NaN stays NaN


@njit(parallel=True, cache=True)
def _relu_backward(dout, x, dx):
    for i in prange(x.size):
        dx[i] = 0 if x[i] <= 0 else dout[i]  # dout passes at NaN


class ReLU:
    @staticmethod
    def forward(x):
        """out = max(0, x), elementwise, NaN stays NaN; any shape of at least one dimension."""
        check_array("x", x)
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)
        with kernel_threads(x.size):
            _relu_forward(x.reshape(-1), out.reshape(-1))
        return out, x

    @staticmethod
    def backward(dout, cache):
        """dx = dout except where x <= 0 (so dout passes at NaN, as in PyTorch)."""
        x = cache
        check_dout(dout, x.shape, x.dtype, "ReLU")
        dx = np.empty_like(x)
        with kernel_threads(x.size):
            _relu_backward(np.ascontiguousarray(dout).reshape(-1), x.reshape(-1), dx.reshape(-1))
        return dx
