import numpy as np

from ..checks import check_array, check_dout


class ReLU:
    @staticmethod
    def forward(x):
        """out = max(0, x), elementwise; NaN stays NaN (as PyTorch: x <= 0 ? 0 : x)."""
        check_array("x", x)
        out = np.where(x <= 0, np.zeros((), dtype=x.dtype), x)
        return out, x

    @staticmethod
    def backward(dout, cache):
        """dx = dout except where x <= 0 (the gradient at exactly 0 is taken as 0; at
        NaN dout passes, as PyTorch's threshold_backward: x <= 0 ? 0 : dout)."""
        x = cache
        check_dout(dout, x.shape, x.dtype, "ReLU")
        return np.where(x <= 0, np.zeros((), dtype=x.dtype), dout)
