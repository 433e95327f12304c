"""Convolution as im2col + GEMM, image by image inside one parallel Numba kernel;
3x3 stride-1 layers with at least ``winograd.MIN_CHANNELS`` input channels go
through ``winograd`` instead (F(2x2) or F(4x4) as ``winograd.tile_size`` picks:
2.25x or 4x fewer multiplies in forward, dx and dw), and 3-wide stride-1 layers
with fewer channels (down to ``winograd_rows.MIN_CHANNELS``) through
``winograd_rows`` (F(4, 3) along rows: 2x fewer multiplies in forward,
dx and dw, no im2col). Patch convs with few weights per output (kernel = stride,
no padding, C*HH*WW <= ``PATCH_MAX_K``: the recipes' 2x2 whitening stem) run
forward as a direct kernel (``patch_direct``): their GEMM is too small for BLAS.

Forward: the batch is split into one contiguous chunk of images per thread;
for each image ``cols_n = im2col(x[n])`` (C*HH*WW + 1, H_out*W_out) in a buffer
small enough to stay in cache, then ``out[n] = [w2 | b] @ cols_n`` (a last row of
ones adds the bias) by a single-threaded BLAS GEMM written straight into the
NCHW output. Backward splits the batch the same way: each chunk rebuilds its ``cols_n``,
accumulates its own partial ``dw`` and ``db`` and writes ``dx[n]`` for its
images (``dcols = w2.T @ dout[n]``, then col2im). The partials are summed in
chunk order afterwards, so no two iterations write one element and results are
identical from run to run for a fixed thread count. Nothing but x (and
Winograd's transformed weights) is kept for backward (cols is rebuilt: cheaper
than storing it).

Without an OpenBLAS callable from Numba (``_gemm.AVAILABLE``), the same
layout runs as whole-batch im2col + one NumPy matmul per product.
"""
import numpy as np
from numba import njit, prange

from ..checks import check_dout, conv_geometry
from . import _gemm, winograd, winograd_rows
from ._blas import blas_threads, kernel_threads, matmul, work_chunks
from ._gemm import gemm
from ._reduce import row_total


@njit(cache=True)
def _im2col_image(xn, HH, WW, stride, pad, H_out, W_out, cols, xpad):
    # xn (C, H, W) -> cols (C*HH*WW, H_out*W_out). xpad (C, H+2p, W+2p) is a scratch
    # buffer whose border is zero: copying the image into it first leaves the gather
    # loops without bounds tests (measured 3.6-7x faster than testing each element).
    C, H, W = xn.shape
    for c in range(C):
        for y in range(H):
            dst = xpad[c, y + pad]
            src = xn[c, y]
            for x in range(W):
                dst[x + pad] = src[x]
    for c in range(C):
        for k in range(HH):
            for l in range(WW):
                row = cols[(c * HH + k) * WW + l]
                for i in range(H_out):
                    src = xpad[c, i * stride + k]
                    base = i * W_out
                    if stride == 1:
                        for j in range(W_out):
                            row[base + j] = src[j + l]
                    else:
                        for j in range(W_out):
                            row[base + j] = src[j * stride + l]


@njit(cache=True)
def _col2im_image(dcols, HH, WW, stride, pad, H_out, W_out, dxn, dxpad):
    # the adjoint of _im2col_image: dxn (C, H, W) = sum of dcols over every window
    # position, accumulated in the padded scratch dxpad, whose interior is kept
    C, H, W = dxn.shape
    dxpad[:] = 0
    for c in range(C):
        for k in range(HH):
            for l in range(WW):
                row = dcols[(c * HH + k) * WW + l]
                for i in range(H_out):
                    dst = dxpad[c, i * stride + k]
                    base = i * W_out
                    if stride == 1:
                        for j in range(W_out):
                            dst[j + l] += row[base + j]
                    else:
                        for j in range(W_out):
                            dst[j * stride + l] += row[base + j]
    for c in range(C):
        for y in range(H):
            src = dxpad[c, y + pad]
            dst = dxn[c, y]
            for x in range(W):
                dst[x] = src[x + pad]


@njit(cache=True)
def _forward_image(xn, w2b, HH, WW, stride, pad, H_out, W_out, on, cols, xpad):
    # on (F, P) = w2 @ im2col(xn) + b, one single-threaded GEMM: w2b (F, CKK + 1) is w2 with b
    # as its last column and cols (CKK + 1, P) gets a last row of ones, so the GEMM adds the
    # bias (a separate pass over the output cost more); cols and xpad are scratch
    F, K = w2b.shape
    P = H_out * W_out
    _im2col_image(xn, HH, WW, stride, pad, H_out, W_out, cols, xpad)
    cols[K - 1] = 1
    gemm(False, False, F, P, K, 1.0, w2b, K, cols, P, 0.0, on, P)


@njit(cache=True)
def _backward_image(xn, w2, dn, HH, WW, stride, pad, H_out, W_out, need_dx, dxn, dwt, dbt,
                    cols, dcols, xpad, dxpad):
    # adds image n's share to dwt (F, CKK) and dbt (F,); writes dxn (C, H, W) if need_dx.
    # dn (F, P) is dout[n]; cols, dcols, xpad, dxpad are scratch
    F, CKK = w2.shape
    P = H_out * W_out
    _im2col_image(xn, HH, WW, stride, pad, H_out, W_out, cols, xpad)
    gemm(False, True, F, CKK, P, 1.0, dn, P, cols, P, 1.0, dwt, CKK)    # dw += dout_n @ cols_n.T
    if need_dx:
        gemm(True, False, CKK, P, F, 1.0, w2, CKK, dn, P, 0.0, dcols, P)  # dcols = w2.T @ dout_n
        _col2im_image(dcols, HH, WW, stride, pad, H_out, W_out, dxn, dxpad)
    for f in range(F):
        dbt[f] += row_total(dn[f])


@njit(parallel=True, cache=True)
def _forward(x, w2b, HH, WW, stride, pad, H_out, W_out, T, out):
    # out (N, F, P); chunk t owns the images t*N//T <= n < (t+1)*N//T (scratch allocated once a chunk)
    N, F, P = out.shape
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for t in prange(T):
        cols = np.empty((w2b.shape[1], P), dtype=x.dtype)
        xpad = np.zeros((C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
        for n in range(t * N // T, (t + 1) * N // T):
            _forward_image(x[n], w2b, HH, WW, stride, pad, H_out, W_out, out[n], cols, xpad)


@njit(parallel=True, cache=True)
def _backward(x, w2, dout, HH, WW, stride, pad, dx, dw_part, db_part):
    N = x.shape[0]
    F, CKK = w2.shape
    H_out, W_out = dout.shape[2], dout.shape[3]
    P = H_out * W_out
    T = dw_part.shape[0]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for t in prange(T):  # chunk t owns dw_part[t], db_part[t] and dx of its images
        cols = np.empty((CKK, P), dtype=x.dtype)
        dcols = np.empty((CKK, P), dtype=x.dtype)
        xpad = np.zeros((C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
        dxpad = np.empty((C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
        dw_part[t] = 0
        db_part[t] = 0
        for n in range(t * N // T, (t + 1) * N // T):
            _backward_image(x[n], w2, dout[n].reshape(F, P), HH, WW, stride, pad, H_out, W_out, True, dx[n],
                            dw_part[t], db_part[t], cols, dcols, xpad, dxpad)


# A patch conv (kernel = stride, no padding: non-overlapping patches, e.g. the recipes' 2x2 whitening
# stem) with at most this many weights per output runs forward as a direct kernel: its im2col is a
# plain gather and its GEMM (F x K @ K x P per image) too small for BLAS to pay. Measured (float32,
# N=128, one process, turns, median; direct time / im2col+GEMM time): K=12 (3 channels, 2x2) F=12 0.53,
# F=24 0.60, F=48 0.85; K=64 (16 channels, 2x2) F=32 0.96; K=48 (3 channels, 4x4) F=64 1.39, F=96 1.62;
# K=128 F=64 1.41
PATCH_MAX_K = 16


def patch_direct(C, HH, WW, stride, pad):
    """True where a conv's forward takes ``_patch_forward`` (see PATCH_MAX_K)."""
    return HH == WW == stride and pad == 0 and C * HH * WW <= PATCH_MAX_K


@njit(parallel=True, cache=True)
def _patch_forward(x, w2, b, S, H_out, W_out, out):
    # out (N, F, P) = b + w2 @ patches(x[n]) per image, patches S x S at stride S: the gather into
    # cols (K, P), then each output plane as the bias plus K scaled rows (contiguous, vectorised)
    N, C = x.shape[0], x.shape[1]
    F, K = w2.shape
    P = H_out * W_out
    for n in prange(N):
        cols = np.empty((K, P), dtype=x.dtype)
        for c in range(C):
            for k in range(S):
                for l in range(S):
                    row = cols[(c * S + k) * S + l]
                    for i in range(H_out):
                        src = x[n, c, i * S + k]
                        for j in range(W_out):
                            row[i * W_out + j] = src[j * S + l]
        for f in range(F):
            o = out[n, f]
            o[:] = b[f]
            for q in range(K):
                wq = w2[f, q]
                r = cols[q]
                for p in range(P):
                    o[p] += wq * r[p]


# --- fallback without a Numba-callable BLAS: whole-batch im2col + NumPy matmul ---

@njit(parallel=True, cache=True)
def _im2col_batch(x, HH, WW, stride, pad, H_out, W_out, cols):
    P = H_out * W_out
    N, C, H, W = x.shape
    for n in prange(N):
        xpad = np.zeros((C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
        _im2col_image(x[n], HH, WW, stride, pad, H_out, W_out, cols[:, n * P:(n + 1) * P], xpad)


@njit(parallel=True, cache=True)
def _col2im_batch(dcols, HH, WW, stride, pad, H_out, W_out, dx):
    P = H_out * W_out
    N, C, H, W = dx.shape
    for n in prange(N):
        dxpad = np.empty((C, H + 2 * pad, W + 2 * pad), dtype=dx.dtype)
        _col2im_image(dcols[:, n * P:(n + 1) * P], HH, WW, stride, pad, H_out, W_out, dx[n], dxpad)


def _forward_fallback(x, w2, b, g, out):
    P = g.H_out * g.W_out
    cols = np.empty((w2.shape[1], g.N * P), dtype=x.dtype)
    _im2col_batch(x, g.HH, g.WW, g.stride, g.pad, g.H_out, g.W_out, cols)
    res = matmul(w2, cols).reshape(g.F, g.N, P)
    out.reshape(g.N, g.F, P)[:] = res.transpose(1, 0, 2) + b[None, :, None]


def _backward_fallback(x, w2, dout, g, dx):
    P = g.H_out * g.W_out
    cols = np.empty((w2.shape[1], g.N * P), dtype=x.dtype)
    _im2col_batch(x, g.HH, g.WW, g.stride, g.pad, g.H_out, g.W_out, cols)
    dout2 = np.ascontiguousarray(dout.reshape(g.N, g.F, P).transpose(1, 0, 2)).reshape(g.F, g.N * P)
    dw2 = matmul(dout2, cols.T)
    _col2im_batch(matmul(w2.T, dout2), g.HH, g.WW, g.stride, g.pad, g.H_out, g.W_out, dx)
    return dw2, dout2.sum(axis=1)


def with_bias(w2, b):
    """(F, CKK) and (F,) -> (F, CKK + 1), the bias as the last column (see _forward_image)."""
    return np.ascontiguousarray(np.concatenate((w2, b.reshape(-1, 1)), axis=1))


class Conv:
    @staticmethod
    def forward(x, w, b, conv_param):
        """x (N,C,H,W), w (F,C,HH,WW), b (F,); conv_param {"stride", "pad"}. Returns (out, cache)."""
        g = conv_geometry(x, w, b, conv_param)
        x = np.ascontiguousarray(x)
        w2 = np.ascontiguousarray(w).reshape(g.F, -1)
        b = np.ascontiguousarray(b)
        out = np.empty((g.N, g.F, g.H_out, g.W_out), dtype=x.dtype)
        U = None   # Winograd's transformed weights, when one of its paths runs
        with kernel_threads(out.size * w2.shape[1]):
            if _gemm.AVAILABLE:
                with blas_threads(1):  # Numba's threads each run their own GEMM
                    m = winograd.tile_size(g.C, g.HH, g.WW, g.stride, g.H_out, g.W_out)
                    if m:
                        U = winograd.forward(x, w, b, g.pad, g.H_out, g.W_out, work_chunks(g.N),
                                             out.reshape(g.N, g.F, -1), m)
                    elif winograd_rows.use(g.C, g.HH, g.WW, g.stride, g.W_out):
                        U = winograd_rows.forward(x, w, b, g.pad, g.H_out, g.W_out, work_chunks(g.N),
                                                  out.reshape(g.N, g.F, -1))
                    elif patch_direct(g.C, g.HH, g.WW, g.stride, g.pad):
                        _patch_forward(x, w2, b, g.stride, g.H_out, g.W_out, out.reshape(g.N, g.F, -1))
                    else:
                        _forward(x, with_bias(w2, b), g.HH, g.WW, g.stride, g.pad, g.H_out, g.W_out,
                                 work_chunks(g.N), out.reshape(g.N, g.F, -1))
            else:
                _forward_fallback(x, w2, b, g, out)
        return out, (x, w2, tuple(w.shape), g, U)

    @staticmethod
    def backward(dout, cache):
        """Returns (dx, dw, db)."""
        x, w2, w_shape, g, U = cache
        check_dout(dout, (g.N, g.F, g.H_out, g.W_out), x.dtype, "Conv")
        dout = np.ascontiguousarray(dout)
        dx = np.empty_like(x)
        with kernel_threads(dout.size * w2.shape[1]):
            if U is not None:   # the Winograd path's transformed weights: (6, F, C*HH) along rows
                rows = U.shape[0] == winograd_rows.TAPS
                with blas_threads(1):
                    if rows:
                        dw, db = winograd_rows.backward(x, U, dout.reshape(g.N, g.F, -1), g.pad, g.H_out, g.W_out,
                                                        work_chunks(g.N), True, dx)
                    else:
                        dw, db = winograd.backward(x, U, dout.reshape(g.N, g.F, -1), g.pad, work_chunks(g.N), True,
                                                   dx)
                return dx, dw, db
            if _gemm.AVAILABLE:
                T = work_chunks(g.N)
                dw_part = np.empty((T, g.F, w2.shape[1]), dtype=x.dtype)
                db_part = np.empty((T, g.F), dtype=x.dtype)
                with blas_threads(1):
                    _backward(x, w2, dout, g.HH, g.WW, g.stride, g.pad, dx, dw_part, db_part)
                dw2, db = dw_part.sum(axis=0), db_part.sum(axis=0)  # partials added in chunk order
            else:
                dw2, db = _backward_fallback(x, w2, dout, g, dx)
        return dx, dw2.reshape(w_shape), db
