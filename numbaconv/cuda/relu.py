import numpy as np

from ..checks import check_array, check_dout
from ._runtime import THREADS_1D, as_device, blocks, empty, flat, is_device, launch, result


class ReLU:
    @staticmethod
    def forward(x):
        """out = max(0, x), elementwise."""
        check_array("x", x)
        dtype = np.dtype(x.dtype)
        xd = as_device(x)
        out = empty(xd.shape, dtype)
        launch("relu_forward", dtype, blocks(xd.size, THREADS_1D), THREADS_1D, flat(xd), flat(out), xd.size)
        return result(out, not is_device(x)), xd

    @staticmethod
    def backward(dout, cache):
        """dx = dout where x > 0 (the gradient at exactly 0 is taken as 0)."""
        xd = cache
        dtype = np.dtype(xd.dtype)
        check_dout(dout, xd.shape, dtype, "ReLU")
        dd = as_device(dout)
        dx = empty(xd.shape, dtype)
        launch("relu_backward", dtype, blocks(xd.size, THREADS_1D), THREADS_1D, flat(xd), flat(dd), flat(dx), xd.size)
        return result(dx, not is_device(dout))
