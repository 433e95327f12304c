"""Linear layer on the tiled matmul kernel; transposes are strides, not copies."""
import math

import numpy as np

from ..checks import check_dout, linear_shapes
from ._runtime import as_device, blocks, empty, flat, is_device, launch, result
from .kernels import TILE
from .reductions import channel_sums


def _matmul(a, b, out, bias, M, Nc, K, sam, sak, sbk, sbn):
    """out (M, Nc) = A (M, K) @ B (K, Nc) (+ bias) with A, B addressed through strides."""
    ntiles = math.ceil(M / TILE) * math.ceil(Nc / TILE)
    launch("matmul", np.dtype(out.dtype), blocks(ntiles, 1), (TILE, TILE), flat(a), flat(b), flat(out),
           flat(bias if bias is not None else out), int(bias is not None), M, Nc, K, sam, sak, sbk, sbn)


class Linear:
    @staticmethod
    def forward(x, w, b):
        """x (N, d1, ..., dk) is flattened to (N, D); w (D, M), b (M,); out = x w + b."""
        N, D, M = linear_shapes(x, w, b)
        dtype = np.dtype(x.dtype)
        xd, wd, bd = as_device(x), as_device(w), as_device(b)
        out = empty((N, M), dtype)
        _matmul(xd, wd, out, bd, N, M, D, D, 1, M, 1)
        return result(out, not is_device(x)), (xd, wd, N, D, M, dtype)

    @staticmethod
    def backward(dout, cache):
        """Returns (dx shaped like x, dw, db)."""
        xd, wd, N, D, M, dtype = cache
        check_dout(dout, (N, M), dtype, "Linear")
        dd = as_device(dout)
        dx, dw = empty(xd.shape, dtype), empty((D, M), dtype)
        _matmul(dd, wd, dx, None, N, D, M, M, 1, 1, M)      # dx = dout @ w.T
        _matmul(xd, dd, dw, None, D, M, N, 1, D, M, 1)      # dw = x.T @ dout
        db = channel_sums(dd, dd, N, M, 1)[0]
        host = not is_device(dout)
        return result(dx, host), result(dw, host), result(db, host)
