import numpy as np

from ..checks import check_dout, linear_shapes


class Linear:
    @staticmethod
    def forward(x, w, b):
        """x (N, d1, ..., dk) is flattened to (N, D); w (D, M), b (M,); out = x w + b."""
        N, D, _ = linear_shapes(x, w, b)
        out = x.reshape(N, D) @ w + b
        return out, (x, w, b)

    @staticmethod
    def backward(dout, cache):
        """Returns (dx shaped like x, dw, db)."""
        x, w, b = cache
        N, D = x.shape[0], w.shape[0]
        check_dout(dout, (N, w.shape[1]), x.dtype, "Linear")
        dx = (dout @ w.T).reshape(x.shape)
        dw = x.reshape(N, D).T @ dout
        db = dout.sum(axis=0)
        return dx, dw, db
