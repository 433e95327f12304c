import numpy as np
from numba import njit, prange

from ..checks import check_array, check_dout
from ._blas import kernel_threads


@njit(parallel=True, cache=True)
def _relu_forward(x, out):
    for i in prange(x.size):
        v = x[i]
        out[i] = v if v > 0 else 0


@njit(parallel=True, cache=True)
def _relu_backward(dout, x, dx):
    for i in prange(x.size):
        dx[i] = dout[i] if x[i] > 0 else 0


class ReLU:
    @staticmethod
    def forward(x):
        """out = max(0, x), elementwise; any shape."""
        check_array("x", x)
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)
        with kernel_threads(x.size):
            _relu_forward(x.reshape(-1), out.reshape(-1))
        return out, x

    @staticmethod
    def backward(dout, cache):
        """dx = dout where x > 0 (the gradient at exactly 0 is taken as 0)."""
        x = cache
        check_dout(dout, x.shape, x.dtype, "ReLU")
        dx = np.empty_like(x)
        with kernel_threads(x.size):
            _relu_backward(np.ascontiguousarray(dout).reshape(-1), x.reshape(-1), dx.reshape(-1))
        return dx
