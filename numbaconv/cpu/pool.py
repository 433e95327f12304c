"""Max pooling: parallel over (image, channel) planes; each plane is one iteration's own.

Forward records, per output element, the flat index of the window's first
NaN, or else its first maximum (row-major order: the shared rule); backward scatters dout to those
indices plane by plane in the reference's order, so overlapping windows add up
in the same order and float64 results match the reference exactly.
"""
import numpy as np
from numba import njit, prange

from ..checks import check_dout, pool_geometry
from ._blas import kernel_threads


@njit(parallel=True, cache=True)
def _pool_forward(x, ph, pw, stride, out, arg):
    N, C, H, W = x.shape
    _, _, H_out, W_out = out.shape
    for t in prange(N * C):
        n = t // C
        c = t % C
        plane = x[n, c]
        for i in range(H_out):
            for j in range(W_out):
                y0 = i * stride
                x0 = j * stride
                best = plane[y0, x0]
                at = y0 * W + x0
                for k in range(ph):
                    for l in range(pw):
                        v = plane[y0 + k, x0 + l]
                        # v > best or v is NaN, unless best already is NaN: ties keep the
                        # first maximum, and the first NaN wins and stays
                        if not (v <= best) and best == best:
                            best = v
                            at = (y0 + k) * W + x0 + l
                out[n, c, i, j] = best
                arg[n, c, i, j] = at


@njit(parallel=True, cache=True)
def _pool_backward(dout, arg, dx):
    N, C, H, W = dx.shape
    _, _, H_out, W_out = dout.shape
    for t in prange(N * C):
        n = t // C
        c = t % C
        plane = dx[n, c].reshape(H * W)
        plane[:] = 0
        for i in range(H_out):
            for j in range(W_out):
                plane[arg[n, c, i, j]] += dout[n, c, i, j]


class MaxPool:
    @staticmethod
    def forward(x, pool_param):
        """x (N,C,H,W); pool_param {"pool_height", "pool_width", "stride"}. Returns (out, cache)."""
        g = pool_geometry(x, pool_param)
        x = np.ascontiguousarray(x)
        out = np.empty((g.N, g.C, g.H_out, g.W_out), dtype=x.dtype)
        arg = np.empty((g.N, g.C, g.H_out, g.W_out), dtype=np.int32)
        with kernel_threads(out.size * g.pool_height * g.pool_width):
            _pool_forward(x, g.pool_height, g.pool_width, g.stride, out, arg)
        return out, (arg, x.dtype, g)

    @staticmethod
    def backward(dout, cache):
        """dx: each window's gradient goes to its first NaN, else its first maximum."""
        arg, dtype, g = cache
        check_dout(dout, (g.N, g.C, g.H_out, g.W_out), dtype, "MaxPool")
        dx = np.empty((g.N, g.C, g.H, g.W), dtype=dtype)
        with kernel_threads(dx.size):
            _pool_backward(np.ascontiguousarray(dout), arg, dx)
        return dx
