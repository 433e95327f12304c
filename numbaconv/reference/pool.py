"""Max pooling with explicit windows; windows may overlap and be non-square."""
import numpy as np

from ..checks import check_dout, pool_geometry


def _first_max(window):
    """(row, col) of the window's output, the convention all backends share: the
    first NaN in row-major order if there is one (NaN propagates, as in PyTorch),
    else the first maximum (ties go to the first). np.argmax does exactly that."""
    return np.unravel_index(np.argmax(window), window.shape)


class MaxPool:
    @staticmethod
    def forward(x, pool_param):
        """x (N,C,H,W); pool_param {"pool_height", "pool_width", "stride"}."""
        g = pool_geometry(x, pool_param)
        s = g.stride
        out = np.empty((g.N, g.C, g.H_out, g.W_out), dtype=x.dtype)
        for n in range(g.N):
            for c in range(g.C):
                for i in range(g.H_out):
                    for j in range(g.W_out):
                        window = x[n, c, i * s:i * s + g.pool_height, j * s:j * s + g.pool_width]
                        out[n, c, i, j] = window[_first_max(window)]
        return out, (x, g)

    @staticmethod
    def backward(dout, cache):
        """Each window's gradient goes to the element its output came from (``_first_max``)."""
        x, g = cache
        check_dout(dout, (g.N, g.C, g.H_out, g.W_out), x.dtype, "MaxPool")
        s = g.stride
        dx = np.zeros_like(x)
        for n in range(g.N):
            for c in range(g.C):
                for i in range(g.H_out):
                    for j in range(g.W_out):
                        window = x[n, c, i * s:i * s + g.pool_height, j * s:j * s + g.pool_width]
                        k, l = _first_max(window)
                        dx[n, c, i * s + k, j * s + l] += dout[n, c, i, j]
        return dx
