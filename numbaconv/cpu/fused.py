"""Fused conv - spatial batch norm - ReLU [- max pool] layers.

Same signatures and results as the sandwiches of ``numbaconv.layers``
(``Conv_BatchNorm_ReLU`` and ``Conv_BatchNorm_ReLU_Pool``, the reference
compositions they are tested against). Unfused, batch norm, ReLU and the pool
are a parallel region and one or more full passes over the activations each;
on a 2-core test machine those passes are memory-bound (a 16 MiB pass ~1.7 ms)
and together cost more than the convolutions (94 ms of a 190 ms step of a
16/32/64 conv-BN-ReLU-pool net, batch 256). Fused, the activations are touched
about half as often:

Forward: (1) the conv, image by image as ``Conv``; while an image's output is
in cache its per-channel mean and sum of squared deviations are taken (float64;
combined over images with Chan's formula, so no pass over the batch is needed
for the statistics); (2) parallel over channels, ``bn(a)`` rounded to the
layer's dtype exactly as the composition stores it, then ReLU and the pool in
the same loop, recording each window's maximum and its normalised value.

Backward: (1) parallel over channels, the sums for dbeta and dgamma, read from
the pooled arrays only (dout, the output, which says where ReLU passed, and the
normalised value at each maximum); (2) the conv's backward, image by image,
with batch norm's (closed-form) input gradient for that image computed into a
scratch buffer just before its GEMMs, so it is never written out. The first
layer of a net can skip dx (``need_dx=False``): nothing uses the gradient
with respect to the images.

Without a Numba-callable BLAS (``_gemm.AVAILABLE`` false) these are the cpu
backend's sandwiches.
"""
import numba
import numpy as np
from numba import njit, prange

from ..checks import batchnorm_params, check_dout, conv_geometry, pool_geometry
from . import _gemm, winograd
from ._blas import blas_threads, kernel_threads
from .batchnorm import _running_stats
from .conv import _backward_image, _forward_image, with_bias


@njit(fastmath={"reassoc"}, cache=True)
def _sum(v, mu):
    # sum(v - mu) and sum((v - mu)**2) in float64; reassociation lets LLVM vectorise
    # the reduction (a fixed order once compiled, so results still repeat)
    s = 0.0
    s2 = 0.0
    for i in range(v.size):
        d = v[i] - mu
        s += d
        s2 += d * d
    return s, s2


def _flat(a):
    """(N, C, H, W) -> (N, C, H*W), a view."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _chunks(N):
    return max(1, min(numba.get_num_threads(), N))


@njit(cache=True)
def _plane_stats(on, n, pmean, pm2):
    # pmean[n, f], pm2[n, f]: mean and sum of squared deviations of each plane on[f]
    F, P = on.shape
    for f in range(F):
        m = _sum(on[f], 0.0)[0] / P
        pmean[n, f] = m
        pm2[n, f] = _sum(on[f], m)[1]


@njit(parallel=True, cache=True)
def _wino_stats_forward(x, U, b, pad, H_out, W_out, B, T, a, pmean, pm2):
    # _conv_stats_forward's results by Winograd (winograd.forward_block), B images at a time
    N, C = x.shape[0], x.shape[1]
    F = U.shape[1]
    th, tw = (H_out + 1) // 2, (W_out + 1) // 2
    for t in prange(T):
        V = np.empty((C, 16, B * th * tw), dtype=x.dtype)
        M = np.empty((F, 16, B * th * tw), dtype=x.dtype)
        xpad = np.zeros((C, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
        end = (t + 1) * N // T
        for n0 in range(t * N // T, end, B):
            n1 = min(n0 + B, end)
            winograd.forward_block(x, n0, n1, U, b, pad, H_out, W_out, a, V, M, xpad)
            for n in range(n0, n1):
                _plane_stats(a[n], n, pmean, pm2)


@njit(parallel=True, cache=True)
def _conv_stats_forward(x, w2b, HH, WW, stride, pad, H_out, W_out, T, a, pmean, pm2):
    # a[n] (F, P) = conv(x[n]); pmean[n, f], pm2[n, f]: mean and sum of squared deviations of a[n, f].
    # Arrays come flattened to (N, C, P) by the caller: a reshape inside the loops is a C call
    # each (measured ~0.2 us; per image and channel that was most of the cost on 8x8 maps).
    N, F, P = a.shape
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for t in prange(T):
        cols = np.empty((w2b.shape[1], P), dtype=x.dtype)
        xpad = np.zeros((C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
        for n in range(t * N // T, (t + 1) * N // T):
            on = a[n]
            _forward_image(x[n], w2b, HH, WW, stride, pad, H_out, W_out, on, cols, xpad)
            _plane_stats(on, n, pmean, pm2)


@njit(parallel=True, cache=True)
def _bn_relu_pool(a, W, mean, std, gamma, beta, pool, ph, pw, stride, W_out, out, arg, hm):
    # a (N, C, P), planes of width W; pool: out (N, C, Q) = max over each window of relu(bn(a)),
    # arg its flat index in the plane, hm the normalised value (a - mean) / std there, for
    # windows numbered row-major with W_out per row; else out (N, C, P) = relu(bn(a))
    N, C, P = a.shape
    Q = out.shape[2]
    for c in prange(C):
        mu = mean[c]
        inv = 1.0 / std[c]
        g = np.float64(gamma[c])
        bt = np.float64(beta[c])
        r = np.empty(P, dtype=out.dtype)  # bn(a) of one plane, rounded to the dtype as BN stores it
        for n in range(N):
            an = a[n, c]
            for p in range(P):
                r[p] = g * ((an[p] - mu) * inv) + bt
            on = out[n, c]
            if not pool:
                for p in range(P):
                    on[p] = 0 if r[p] <= 0 else r[p]   # ReLU; NaN stays NaN
                continue
            # max(relu(v)) = relu(max(v)), NaN included (ReLU keeps NaN, the max takes the
            # first NaN). Where a window's max is not positive the recorded element may differ
            # from the composition's (its first element), but ReLU gives both a zero gradient,
            # so outputs and gradients agree.
            argn = arg[n, c]
            hmn = hm[n, c]
            for i in range(Q // W_out):
                for j in range(W_out):
                    at = i * stride * W + j * stride
                    best = r[at]
                    for k in range(ph):
                        for l in range(pw):
                            p = (i * stride + k) * W + j * stride + l
                            # r[p] > best or r[p] is NaN, unless best already is NaN: ties keep
                            # the first maximum, the first NaN wins and stays. Written as selects,
                            # not a branch: on real activations the comparison is a coin flip,
                            # and mispredicted branches cost more than the rest of the loop
                            take = (not (r[p] <= best)) & (best == best)
                            best = r[p] if take else best
                            at = p if take else at
                    q = i * W_out + j
                    on[q] = 0 if best <= 0 else best
                    argn[q] = at
                    hmn[q] = (an[at] - mu) * inv


@njit(parallel=True, cache=True)
def _bn_grad_sums(dout, out, hm, a, mean, std, pool, sb_out, sg_out):
    # dbeta = sum of dan, dgamma = sum of dan * xhat, where dan (the gradient at bn's
    # output) is dout except where the output is <= 0 (ReLU; NaN passes), at the recorded
    # maxima (pool)
    N, C, Q = dout.shape
    for c in prange(C):
        mu = mean[c]
        inv = 1.0 / std[c]
        sb = 0.0
        sg = 0.0
        for n in range(N):
            dn = dout[n, c]
            on = out[n, c]
            # the ReLU mask as a 0/1 factor rather than a (coin-flip) branch
            if pool:
                hn = hm[n, c]
                for q in range(Q):
                    d = 0.0 if on[q] <= 0 else np.float64(dn[q])
                    sb += d
                    sg += d * hn[q]
            else:
                an = a[n, c]
                for q in range(Q):
                    d = 0.0 if on[q] <= 0 else np.float64(dn[q])
                    sb += d
                    sg += d * ((an[q] - mu) * inv)
        sb_out[c] = sb
        sg_out[c] = sg


@njit(cache=True)
def _bn_dout(n, a, mean, std, gamma, train, ga, gb, dout, out, arg, pool, dn):
    # dn (F, P): the gradient at image n's conv output (batch norm's closed-form backward
    # through ReLU [and the pool]): -ga - xhat * gb everywhere (train mode), plus
    # gamma/std * dout where it passed
    F, P = dn.shape
    Q = dout.shape[2]
    for f in range(F):
        mu = mean[f]
        inv = 1.0 / std[f]
        gi = np.float64(gamma[f]) * inv
        an = a[n, f]
        row = dn[f]
        if train:
            for p in range(P):
                row[p] = -ga[f] - ((an[p] - mu) * inv) * gb[f]
        else:   # the statistics are constants: no such term (so an infinite xhat gives no 0 * inf)
            row[:] = 0.0
        do = dout[n, f]
        on = out[n, f]
        if pool:   # adding 0 where ReLU blocked: no branch to mispredict
            at = arg[n, f]
            for q in range(Q):
                row[at[q]] = row[at[q]] + (0.0 if on[q] <= 0 else gi * np.float64(do[q]))
        else:
            for q in range(Q):
                row[q] = row[q] + (0.0 if on[q] <= 0 else gi * np.float64(do[q]))


@njit(parallel=True, cache=True)
def _wino_bn_backward(x, U, pad, B, a, mean, std, gamma, train, ga, gb, dout, out, arg, pool, need_dx, dx,
                      dU_part, db_part):
    # _bn_conv_backward by Winograd (winograd.backward_block), B images at a time
    N, C = x.shape[0], x.shape[1]
    F, P = a.shape[1], a.shape[2]
    H_out, W_out = x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2
    th, tw = (H_out + 1) // 2, (W_out + 1) // 2
    T = dU_part.shape[0]
    for t in prange(T):  # chunk t owns dU_part[t], db_part[t] and dx of its images
        V = np.empty((C, 16, B * th * tw), dtype=x.dtype)
        M = np.empty((F, 16, B * th * tw), dtype=x.dtype)
        xpad = np.zeros((C, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
        dxpad = np.empty((C, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
        dn = np.empty((B, F, P), dtype=x.dtype)
        dU_part[t] = 0
        db_part[t] = 0
        end = (t + 1) * N // T
        for n0 in range(t * N // T, end, B):
            n1 = min(n0 + B, end)
            for n in range(n0, n1):
                _bn_dout(n, a, mean, std, gamma, train, ga, gb, dout, out, arg, pool, dn[n - n0])
            winograd.backward_block(x[n0:n1], 0, n1 - n0, U, dn, pad, H_out, W_out, need_dx,
                                    dx[n0:n1], dU_part[t], db_part[t], V, M, xpad, dxpad)


@njit(parallel=True, cache=True)
def _bn_conv_backward(x, w2, HH, WW, stride, pad, HWo, a, mean, std, gamma, train, ga, gb, dout, out, arg, pool,
                      need_dx, dx, dw_part, db_part):
    # per image: the gradient at the conv's output (_bn_dout), then conv's backward
    # a, dout, out, arg flattened to (N, C, P or Q) by the caller
    N, F, P = a.shape
    H_out, W_out = HWo
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    T = dw_part.shape[0]
    for t in prange(T):  # chunk t owns dw_part[t], db_part[t] and dx of its images
        cols = np.empty((w2.shape[1], P), dtype=x.dtype)
        dcols = np.empty((w2.shape[1], P), dtype=x.dtype)
        xpad = np.zeros((C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
        dxpad = np.empty((C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
        dn = np.empty((F, P), dtype=x.dtype)
        dw_part[t] = 0
        db_part[t] = 0
        for n in range(t * N // T, (t + 1) * N // T):
            _bn_dout(n, a, mean, std, gamma, train, ga, gb, dout, out, arg, pool, dn)
            _backward_image(x[n], w2, dn, HH, WW, stride, pad, H_out, W_out, need_dx, dx[n],
                            dw_part[t], db_part[t], cols, dcols, xpad, dxpad)


def _forward(x, w, b, gamma, beta, conv_param, bn_param, pool_param):
    cg = conv_geometry(x, w, b, conv_param)
    x = np.ascontiguousarray(x)
    a = np.empty((cg.N, cg.F, cg.H_out, cg.W_out), dtype=x.dtype)
    mode, eps, momentum = batchnorm_params(a, gamma, beta, bn_param, spatial=True)
    if pool_param is None:
        ph = pw = stride = 1
        out = np.empty_like(a)
    else:
        pg = pool_geometry(a, pool_param)
        ph, pw, stride = pg.pool_height, pg.pool_width, pg.stride
        out = np.empty((cg.N, cg.F, pg.H_out, pg.W_out), dtype=a.dtype)
    pool = pool_param is not None
    arg = np.empty(out.shape if pool else (1, 1, 0, 0), dtype=np.int32)
    hm = np.empty(out.shape if pool else (1, 1, 0, 0), dtype=a.dtype)
    w2 = np.ascontiguousarray(w).reshape(cg.F, -1)
    N, C = cg.N, cg.F
    M = a.size // C
    pmean = np.empty((N, C))
    pm2 = np.empty((N, C))
    U = None   # Winograd's transformed weights, when that path runs
    with kernel_threads(a.size * w2.shape[1]), blas_threads(1):
        if winograd.usable(cg.C, cg.HH, cg.WW, cg.stride):
            U = winograd.transform_weights(w, x.dtype)
            _wino_stats_forward(x, U, np.ascontiguousarray(b), cg.pad, cg.H_out, cg.W_out,
                                winograd.block_images(cg.H_out, cg.W_out, N), _chunks(N), _flat(a), pmean, pm2)
        else:
            _conv_stats_forward(x, with_bias(w2, b), cg.HH, cg.WW, cg.stride, cg.pad, cg.H_out, cg.W_out,
                                _chunks(N), _flat(a), pmean, pm2)
    running_mean, running_var = _running_stats(bn_param, C, a.dtype)
    train = mode == "train"
    if train:  # Chan et al.: per-image (mean, M2) pairs combined in a fixed order
        mean64 = pmean.mean(axis=0)
        var64 = (pm2.sum(axis=0) + (a.size // (N * C)) * ((pmean - mean64) ** 2).sum(axis=0)) / M
        mean, var = mean64.astype(a.dtype), var64.astype(a.dtype)
    else:
        mean = np.ascontiguousarray(running_mean, dtype=a.dtype)
        var = np.ascontiguousarray(running_var, dtype=a.dtype)
    # normalise with the statistics as stored in the dtype (as SpatialBatchNorm does); std
    # stays float64 so backward's ReLU mask and xhat see forward's values
    mean_f = mean.astype(np.float64)
    std = np.sqrt(var.astype(np.float64) + eps)
    gamma, beta = np.ascontiguousarray(gamma), np.ascontiguousarray(beta)
    with kernel_threads(a.size):
        _bn_relu_pool(_flat(a), cg.W_out, mean_f, std, gamma, beta, pool, ph, pw, stride, out.shape[3], _flat(out),
                      _flat(arg), _flat(hm))
    if train:  # the same update as SpatialBatchNorm's
        bn_param["running_mean"] = (momentum * running_mean + (1 - momentum) * mean).astype(a.dtype)
        bn_param["running_var"] = (momentum * running_var + (1 - momentum) * var).astype(a.dtype)
    return out, (x, w2, tuple(w.shape), cg, a, train, pool, out, arg, hm, mean_f, std, gamma, U)


def _backward(dout, cache, layer, need_dx):
    x, w2, w_shape, cg, a, train, pool, out, arg, hm, mean, std, gamma, U = cache
    check_dout(dout, out.shape, a.dtype, layer)
    dout = np.ascontiguousarray(dout)
    C = a.shape[1]
    M = a.size // C
    sb, sg = np.empty(C), np.empty(C)
    with kernel_threads(out.size):
        _bn_grad_sums(_flat(dout), _flat(out), _flat(hm), _flat(a), mean, std, pool, sb, sg)
    g = gamma.astype(np.float64)
    if train:  # closed form: da = inv/M * (M*g*dan - g*sum(dan) - xhat*g*sum(dan*xhat))
        ga = g * sb / std / M
        gb = g * sg / std / M
    else:
        ga = gb = np.zeros(C)
    dx = np.empty(x.shape if need_dx else (x.shape[0], 0, 0, 0), dtype=x.dtype)
    with kernel_threads(a.size * w2.shape[1]), blas_threads(1):
        T = _chunks(x.shape[0])
        db_part = np.empty((T, w2.shape[0]), dtype=x.dtype)
        if U is not None:
            dU_part = np.empty((T,) + U.shape, dtype=x.dtype)
            _wino_bn_backward(x, U, cg.pad, winograd.block_images(cg.H_out, cg.W_out, x.shape[0]), _flat(a), mean,
                              std, gamma, train, ga, gb, _flat(dout), _flat(out), _flat(arg), pool, need_dx, dx,
                              dU_part, db_part)
            dw = winograd.weights_grad(dU_part.sum(axis=0)).astype(x.dtype)
        else:
            dw_part = np.empty((T,) + w2.shape, dtype=x.dtype)
            _bn_conv_backward(x, w2, cg.HH, cg.WW, cg.stride, cg.pad, (cg.H_out, cg.W_out), _flat(a), mean, std,
                              gamma, train, ga, gb, _flat(dout), _flat(out), _flat(arg), pool, need_dx, dx, dw_part,
                              db_part)
            dw = dw_part.sum(axis=0).reshape(w_shape)
    return ((dx if need_dx else None), dw, db_part.sum(axis=0), sg.astype(a.dtype), sb.astype(a.dtype))


def _sandwich(name):
    from ..layers import sandwiches

    return getattr(sandwiches("cpu"), name)


def _backward_or_sandwich(dout, cache, layer, need_dx):
    """The fused backward, or the sandwich's where Numba cannot call BLAS (the forward
    then made the sandwich's cache); dx is None when ``need_dx`` is False."""
    if _gemm.AVAILABLE:
        return _backward(dout, cache, layer, need_dx)
    g = _sandwich(layer).backward(dout, cache)
    return ((g[0] if need_dx else None),) + tuple(g[1:])


class Conv_BatchNorm_ReLU:
    """conv - spatial batch norm - ReLU, fused; the sandwich's signature and results."""

    can_skip_dx = True

    @staticmethod
    def forward(x, w, b, gamma, beta, conv_param, bn_param):
        """Returns (out, cache)."""
        if not _gemm.AVAILABLE:
            return _sandwich("Conv_BatchNorm_ReLU").forward(x, w, b, gamma, beta, conv_param, bn_param)
        return _forward(x, w, b, gamma, beta, conv_param, bn_param, None)

    @staticmethod
    def backward(dout, cache, need_dx=True):
        """Returns (dx, dw, db, dgamma, dbeta); dx is None when ``need_dx`` is False."""
        return _backward_or_sandwich(dout, cache, "Conv_BatchNorm_ReLU", need_dx)


class Conv_BatchNorm_ReLU_Pool:
    """conv - spatial batch norm - ReLU - max pool, fused; the sandwich's signature and results."""

    can_skip_dx = True

    @staticmethod
    def forward(x, w, b, gamma, beta, conv_param, bn_param, pool_param):
        """Returns (out, cache)."""
        if not _gemm.AVAILABLE:
            return _sandwich("Conv_BatchNorm_ReLU_Pool").forward(x, w, b, gamma, beta, conv_param, bn_param,
                                                                pool_param)
        return _forward(x, w, b, gamma, beta, conv_param, bn_param, pool_param)

    @staticmethod
    def backward(dout, cache, need_dx=True):
        """Returns (dx, dw, db, dgamma, dbeta); dx is None when ``need_dx`` is False."""
        return _backward_or_sandwich(dout, cache, "Conv_BatchNorm_ReLU_Pool", need_dx)
