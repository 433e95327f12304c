import numpy as np

from ..checks import check_array, check_dout


class ReLU:
    @staticmethod
    def forward(x):
        """out = max(0, x), elementwise."""
        check_array("x", x)
        out = np.where(x > 0, x, np.zeros((), dtype=x.dtype))
        return out, x

    @staticmethod
    def backward(dout, cache):
        """dx = dout where x > 0 (the gradient at exactly 0 is taken as 0)."""
        x = cache
        check_dout(dout, x.shape, x.dtype, "ReLU")
        return np.where(x > 0, dout, np.zeros((), dtype=x.dtype))
