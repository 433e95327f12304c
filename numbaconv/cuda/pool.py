"""Max pooling: one thread per output forward (records the first NaN, else the
first maximum), one thread per input element backward (gathers from the windows
it won)."""
import numpy as np

from ..checks import check_dout, pool_geometry
from ._runtime import THREADS_1D, as_device, blocks, cuda, empty, flat, is_device, launch, result


class MaxPool:
    @staticmethod
    def forward(x, pool_param):
        """x (N,C,H,W); pool_param {"pool_height", "pool_width", "stride"}."""
        g = pool_geometry(x, pool_param)
        dtype = np.dtype(x.dtype)
        xd = as_device(x)
        shape = (g.N, g.C, g.H_out, g.W_out)
        out = empty(shape, dtype)
        argmax = cuda.device_array(shape, dtype=np.int32)
        total = g.N * g.C * g.H_out * g.W_out
        launch("maxpool_forward", dtype, blocks(total, THREADS_1D), THREADS_1D, flat(xd), flat(out), flat(argmax), *g)
        return result(out, not is_device(x)), (argmax, g, dtype)

    @staticmethod
    def backward(dout, cache):
        """dx: each window's gradient goes to its first NaN, else its first maximum (row-major)."""
        argmax, g, dtype = cache
        check_dout(dout, (g.N, g.C, g.H_out, g.W_out), dtype, "MaxPool")
        dd = as_device(dout)
        dx = empty((g.N, g.C, g.H, g.W), dtype)
        total = g.N * g.C * g.H * g.W
        launch("maxpool_backward", dtype, blocks(total, THREADS_1D), THREADS_1D, flat(dd), flat(argmax), flat(dx), *g)
        return result(dx, not is_device(dout))
