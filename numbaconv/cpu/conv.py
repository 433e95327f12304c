"""Convolution as im2col (a parallel Numba gather) + one GEMM (BLAS).

Layout: the columns matrix is (C*HH*WW, N*H_out*W_out), so the forward pass is
one GEMM ``w2 (F, CKK) @ cols`` and the backward pass two GEMMs:
``dw2 = dout2 @ cols.T`` and ``dcols = w2.T @ dout2``. Every Numba loop is
parallel over what its iteration owns: im2col and col2im over (image,
channel) planes, the output and dout transposes over (image, filter) or
filters, so no two iterations ever write the same element and results do not
depend on scheduling.
"""
import numpy as np
from numba import njit, prange

from ..checks import check_dout, conv_geometry
from ._blas import matmul


@njit(parallel=True, cache=True)
def _im2col(x, HH, WW, stride, pad, H_out, W_out, cols):
    N, C, H, W = x.shape
    KK = HH * WW
    P = H_out * W_out
    for t in prange(N * C):
        n = t // C
        c = t % C
        for k in range(HH):
            for l in range(WW):
                row = cols[c * KK + k * WW + l]
                # output columns j whose input column j*stride + l - pad is inside [0, W)
                j_lo = max(0, (pad - l + stride - 1) // stride)
                j_hi = min(W_out, (W - 1 + pad - l) // stride + 1)
                if j_hi < j_lo:
                    j_hi = j_lo
                for i in range(H_out):
                    base = n * P + i * W_out
                    y = i * stride + k - pad
                    if y < 0 or y >= H:
                        for j in range(W_out):
                            row[base + j] = 0
                        continue
                    for j in range(j_lo):
                        row[base + j] = 0
                    x0 = l - pad
                    for j in range(j_lo, j_hi):
                        row[base + j] = x[n, c, y, j * stride + x0]
                    for j in range(j_hi, W_out):
                        row[base + j] = 0


@njit(parallel=True, cache=True)
def _col2im(dcols, HH, WW, stride, pad, H_out, W_out, dx):
    N, C, H, W = dx.shape
    KK = HH * WW
    P = H_out * W_out
    for t in prange(N * C):
        n = t // C
        c = t % C
        plane = dx[n, c]
        plane[:, :] = 0
        for k in range(HH):
            for l in range(WW):
                row = dcols[c * KK + k * WW + l]
                j_lo = max(0, (pad - l + stride - 1) // stride)
                j_hi = min(W_out, (W - 1 + pad - l) // stride + 1)
                x0 = l - pad
                for i in range(H_out):
                    y = i * stride + k - pad
                    if y < 0 or y >= H:
                        continue
                    base = n * P + i * W_out
                    for j in range(j_lo, j_hi):
                        plane[y, j * stride + x0] += row[base + j]


@njit(parallel=True, cache=True)
def _gemm_to_nchw(res, b, out):
    # res (F, N*P) -> out (N, F, H_out, W_out) + bias
    N, F, H_out, W_out = out.shape
    P = H_out * W_out
    for t in prange(N * F):
        n = t // F
        f = t % F
        src = res[f, n * P:(n + 1) * P]
        dst = out[n, f].reshape(P)
        bf = b[f]
        for p in range(P):
            dst[p] = src[p] + bf


@njit(parallel=True, cache=True)
def _nchw_to_gemm(dout, dout2, db):
    # dout (N, F, H_out, W_out) -> dout2 (F, N*P); db[f] = sum of dout[:, f]
    N, F, H_out, W_out = dout.shape
    P = H_out * W_out
    for f in prange(F):
        acc = 0.0
        for n in range(N):
            src = dout[n, f].reshape(P)
            dst = dout2[f, n * P:(n + 1) * P]
            for p in range(P):
                v = src[p]
                dst[p] = v
                acc += v
        db[f] = acc


class Conv:
    @staticmethod
    def forward(x, w, b, conv_param):
        """x (N,C,H,W), w (F,C,HH,WW), b (F,); conv_param {"stride", "pad"}. Returns (out, cache)."""
        g = conv_geometry(x, w, b, conv_param)
        x = np.ascontiguousarray(x)
        w2 = np.ascontiguousarray(w).reshape(g.F, -1)
        b = np.ascontiguousarray(b)
        P = g.H_out * g.W_out
        cols = np.empty((g.C * g.HH * g.WW, g.N * P), dtype=x.dtype)
        _im2col(x, g.HH, g.WW, g.stride, g.pad, g.H_out, g.W_out, cols)
        res = matmul(w2, cols)
        out = np.empty((g.N, g.F, g.H_out, g.W_out), dtype=x.dtype)
        _gemm_to_nchw(res, b, out)
        # cols is kept: backward needs it for dw, and rebuilding it costs a full im2col
        return out, (cols, w2, w.shape, g)

    @staticmethod
    def backward(dout, cache):
        """Returns (dx, dw, db)."""
        cols, w2, w_shape, g = cache
        check_dout(dout, (g.N, g.F, g.H_out, g.W_out), cols.dtype, "Conv")
        dout = np.ascontiguousarray(dout)
        dout2 = np.empty((g.F, g.N * g.H_out * g.W_out), dtype=dout.dtype)
        db = np.empty(g.F, dtype=dout.dtype)
        _nchw_to_gemm(dout, dout2, db)
        # dw2 = dout2 @ cols.T has the long N*P axis as its inner dimension; OpenBLAS
        # handles it best with the larger output side as rows (measured: 64->128 @ 8x8
        # 8x faster as (cols @ dout2.T).T, 3->32 @ 32x32 1.5x faster as is)
        if cols.shape[0] > g.F:
            dw = np.ascontiguousarray(matmul(cols, dout2.T).T).reshape(w_shape)
        else:
            dw = matmul(dout2, cols.T).reshape(w_shape)
        dcols = matmul(w2.T, dout2)
        dx = np.empty((g.N, g.C, g.H, g.W), dtype=dout.dtype)
        _col2im(dcols, g.HH, g.WW, g.stride, g.pad, g.H_out, g.W_out, dx)
        return dx, dw, db
