"""Convolution as the textbook writes it: one output element per loop iteration."""
import numpy as np

from ..checks import check_dout, conv_geometry


class Conv:
    @staticmethod
    def forward(x, w, b, conv_param):
        """x (N,C,H,W), w (F,C,HH,WW), b (F,); conv_param {"stride", "pad"}.

        out[n,f,i,j] = b[f] + sum_{c,k,l} xpad[n,c,i*s+k,j*s+l] * w[f,c,k,l]
        """
        g = conv_geometry(x, w, b, conv_param)
        s, p = g.stride, g.pad
        xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        out = np.empty((g.N, g.F, g.H_out, g.W_out), dtype=x.dtype)
        for n in range(g.N):
            for f in range(g.F):
                for i in range(g.H_out):
                    for j in range(g.W_out):
                        window = xpad[n, :, i * s:i * s + g.HH, j * s:j * s + g.WW]
                        out[n, f, i, j] = np.sum(window * w[f]) + b[f]
        return out, (x, w, b, g)

    @staticmethod
    def backward(dout, cache):
        """Returns (dx, dw, db): each output element sends dout back along its window."""
        x, w, b, g = cache
        check_dout(dout, (g.N, g.F, g.H_out, g.W_out), x.dtype, "Conv")
        s, p = g.stride, g.pad
        xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        dxpad = np.zeros_like(xpad)
        dw = np.zeros_like(w)
        db = np.zeros_like(b)
        for n in range(g.N):
            for f in range(g.F):
                for i in range(g.H_out):
                    for j in range(g.W_out):
                        d = dout[n, f, i, j]
                        rows = slice(i * s, i * s + g.HH)
                        cols = slice(j * s, j * s + g.WW)
                        dw[f] += d * xpad[n, :, rows, cols]
                        dxpad[n, :, rows, cols] += d * w[f]
                        db[f] += d
        dx = dxpad[:, :, p:p + g.H, p:p + g.W].copy()
        return dx, dw, db
