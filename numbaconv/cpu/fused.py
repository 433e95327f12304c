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
from . import _gemm, winograd, winograd_rows
from ._blas import blas_threads, kernel_threads, work_chunks
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


@njit(cache=True)
def _batch_stats(pmean, pm2, per, eps, mo, rest, train, running_mean, running_var):
    """(mean, std) in float64 for the kernels, and the new running (mean, var). Train: per-image
    (mean, M2) pairs (N, C) of ``per`` values each, combined by Chan et al. in image order, the
    statistics then stored in the dtype (as SpatialBatchNorm stores them) and the running update
    momentum ``mo`` and 1 - momentum ``rest``, in the dtype (SpatialBatchNorm's update); test: the
    running stats. One call instead of ~20 NumPy ones (~0.4 ms a step of the fast recipe, measured),
    the same operations in the same order as the NumPy expressions it replaced: the same bits."""
    N, C = pmean.shape
    mean, var = running_mean.copy(), running_var.copy()
    new_mean, new_var = running_mean.copy(), running_var.copy()
    if train:
        M = N * per
        m64, q, r = np.zeros(C), np.zeros(C), np.zeros(C)
        for n in range(N):
            for c in range(C):
                m64[c] += pmean[n, c]
                q[c] += pm2[n, c]
        for c in range(C):
            m64[c] /= N
        for n in range(N):
            for c in range(C):
                d = pmean[n, c] - m64[c]
                r[c] += d * d
        for c in range(C):
            mean[c] = m64[c]
            var[c] = (q[c] + per * r[c]) / M
            new_mean[c] = mo * running_mean[c] + rest * mean[c]
            new_var[c] = mo * running_var[c] + rest * var[c]
    mean_f, std = np.empty(C), np.empty(C)
    for c in range(C):
        mean_f[c] = np.float64(mean[c])
        std[c] = np.sqrt(np.float64(var[c]) + eps)
    return mean_f, std, new_mean, new_var


def _flat(a):
    """(N, C, H, W) -> (N, C, H*W), a view."""
    return a.reshape(a.shape[0], a.shape[1], -1)


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
    N = x.shape[0]
    for t in prange(T):
        V, M, xpad, _ = winograd.scratch(x, U, B, H_out, W_out)
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
def _rows_stats_forward(x, U, b, pad, H_out, W_out, B, T, a, pmean, pm2):
    # _conv_stats_forward's results by Winograd along rows (winograd_rows.forward_block), B images at a time
    N = x.shape[0]
    F, K = U.shape[1], U.shape[2]
    tw = winograd_rows.tiles_per_row(W_out)
    for t in prange(T):
        xq, tail, s, V, M = winograd_rows.scratch(x, F, K, pad, H_out, tw, B)
        end = (t + 1) * N // T
        for n0 in range(t * N // T, end, B):
            n1 = min(n0 + B, end)
            winograd_rows.forward_block(x, n0, n1, U, b, pad, H_out, W_out, a, xq, tail, s, V, M)
            for n in range(n0, n1):
                _plane_stats(a[n], n, pmean, pm2)


ROWS_MIN_WIDTH = 32   # planes from this width pool with _max2x2_rows


@njit(parallel=True, cache=True)
def _bn_relu_pool(a, W, mean, std, gamma, beta, pool, ph, pw, stride, W_out, out, arg, hm, T):
    # a (N, C, P), planes of width W; pool: out (N, C, Q) = max over each window of relu(bn(a)),
    # arg its flat index in the plane, hm the normalised value (a - mean) / std there, for
    # windows numbered row-major with W_out per row; else out (N, C, P) = relu(bn(a)).
    # Parallel over planes (n, c): each writes only its own, so results do not depend on the
    # thread count or the T chunks of planes (each with its scratch plane), and big batches of
    # few channels still split evenly.
    N, C, P = a.shape
    NC = N * C
    dt = out.dtype.type
    invs = 1.0 / std   # per channel, not per plane: on 8x8 maps that was ~10% of the pass
    for t in prange(T):
        r = np.empty(P, dtype=out.dtype)
        start = t * NC // T
        n, c = start // C, start % C
        for _ in range(start, (t + 1) * NC // T):
            mu = mean[c]
            inv = invs[c]
            g = np.float64(gamma[c])
            bt = np.float64(beta[c])
            an, on = a[n, c], out[n, c]
            if not pool:
                for p in range(np.uint64(P)):
                    v = dt(g * ((an[p] - mu) * inv) + bt)   # rounded to the dtype as BN stores it
                    on[p] = 0 if v <= 0 else v   # ReLU; NaN stays NaN
            elif ph == 2 and pw == 2 and stride == 2 and W >= ROWS_MIN_WIDTH:
                _max2x2_rows(an, W, mu, inv, g, bt, on, arg[n, c], hm[n, c])
            elif ph == 2 and pw == 2 and stride == 2:
                _max2x2(an, W, mu, inv, g, bt, on, arg[n, c], hm[n, c], r)
            else:
                _max_pool_plane(an, W, mu, inv, g, bt, ph, pw, stride, W_out, on, arg[n, c], hm[n, c], r)
            c += 1
            if c == C:
                n, c = n + 1, 0


# max(relu(v)) = relu(max(v)), NaN included (ReLU keeps NaN, the max takes the first NaN).
# Where a window's max is not positive the recorded element may differ from the
# composition's (its first element), but ReLU gives both a zero gradient, so outputs and
# gradients agree. The pool kernels below compare bn(a) as rounded to the dtype and give the
# result of visiting a window's elements row-major, taking an element when it is > the best
# so far or NaN, unless the best already is NaN: ties keep the first maximum, the first NaN
# wins and stays (the same bits from each). They are written as selects, not branches: on
# real activations the comparison is a coin flip, and mispredicted branches cost more than
# the rest of the loop (LLVM still turns some scalar selects into branches: see _max2x2).

@njit(cache=True)
def _max_pool_plane(an, W, mu, inv, g, bt, ph, pw, stride, W_out, on, argn, hmn, r):
    # any window size and stride (overlapping windows included): bn(a) of the plane first, into r
    dt = on.dtype.type
    for p in range(an.size):
        r[p] = dt(g * ((an[p] - mu) * inv) + bt)
    for i in range(on.size // W_out):
        for j in range(W_out):
            at = i * stride * W + j * stride
            best = r[at]
            for k in range(ph):
                for l in range(pw):
                    p = (i * stride + k) * W + j * stride + l
                    take = (not (r[p] <= best)) & (best == best)
                    best = r[p] if take else best
                    at = p if take else at
            q = i * W_out + j
            on[q] = 0 if best <= 0 else best
            argn[q] = at
            hmn[q] = (an[at] - mu) * inv


# The 2x2 stride-2 pool (the models' pool; its windows tile the plane), in two forms. Numba
# indexes with unsigned integers below because it then emits no negative-index wraparound.
# The winning window element (0 top left, 1 top right, 2 bottom left, 3 bottom right) by
# t0 = v1 > v0, t1 = v3 > v2, t2 = max(v2, v3) > max(v0, v1): a pairwise tree gives the
# chain's result (the first maximum), and a table lookup keeps LLVM from turning the index
# select into a branch (as it does a cmov here)
_WIN = np.array([0, 1, 0, 1, 2, 2, 3, 3], dtype=np.uint64)


@njit(cache=True)
def _max2x2(an, W, mu, inv, g, bt, on, argn, hmn, r):
    # bn(a) of the plane into r (a vectorised pass), then the windows: scalar and branch-free
    # except for windows holding a NaN (rare; a predictable branch). ~1.2x computing bn(a)
    # inside the window loop, where the float32 <-> float64 conversions are scalar
    dt = on.dtype.type
    one, two = np.uint64(1), np.uint64(2)
    for p in range(np.uint64(an.size)):
        r[p] = dt(g * ((an[p] - mu) * inv) + bt)
    Wu = np.uint64(W)
    Wo = Wu // two
    for i in range(np.uint64(on.size) // Wo):
        for j in range(Wo):
            p = two * (i * Wu + j)
            v0, v1, v2, v3 = r[p], r[p + one], r[p + Wu], r[p + Wu + one]
            if (v0 != v0) | (v1 != v1) | (v2 != v2) | (v3 != v3):   # the first NaN wins
                at = p
                at = p + one if (v1 != v1) & (v0 == v0) else at
                at = p + Wu if (v2 != v2) & (v0 == v0) & (v1 == v1) else at
                at = p + Wu + one if (v3 != v3) & (v0 == v0) & (v1 == v1) & (v2 == v2) else at
                best = r[at]
            else:
                t0, t1 = v1 > v0, v3 > v2
                b0 = v1 if t0 else v0
                b1 = v3 if t1 else v2
                t2 = b1 > b0
                best = b1 if t2 else b0
                e = _WIN[np.uint64(t0) | (np.uint64(t1) << one) | (np.uint64(t2) << two)]
                at = p + (e >> one) * Wu + (e & one)
            q = i * Wo + j
            on[q] = 0 if best <= 0 else best
            argn[q] = at
            hmn[q] = (an[at] - mu) * inv


@njit(cache=True)
def _max2x2_rows(an, W, mu, inv, g, bt, on, argn, hmn):
    # the same as the select chain of _max_pool_plane, which LLVM vectorises over a row of
    # windows (then the selects are blends); its scalar remainder branches, so only for
    # planes at least 32 wide (measured 1.6-1.8x _max2x2 there; 3x slower on 16)
    dt = on.dtype.type
    one, two = np.uint64(1), np.uint64(2)
    Wu = np.uint64(W)
    Wo = Wu // two
    for i in range(np.uint64(on.size) // Wo):
        for j in range(Wo):
            p = two * (i * Wu + j)
            x0 = (an[p] - mu) * inv
            x1 = (an[p + one] - mu) * inv
            x2 = (an[p + Wu] - mu) * inv
            x3 = (an[p + Wu + one] - mu) * inv
            best = dt(g * x0 + bt)
            xb = x0
            at = p
            v = dt(g * x1 + bt)
            take = (not (v <= best)) & (best == best)
            best = v if take else best
            xb = x1 if take else xb
            at = p + one if take else at
            v = dt(g * x2 + bt)
            take = (not (v <= best)) & (best == best)
            best = v if take else best
            xb = x2 if take else xb
            at = p + Wu if take else at
            v = dt(g * x3 + bt)
            take = (not (v <= best)) & (best == best)
            best = v if take else best
            xb = x3 if take else xb
            at = p + Wu + one if take else at
            q = i * Wo + j
            on[q] = 0 if best <= 0 else best
            argn[q] = at
            hmn[q] = xb


# ReLU's mask in the backward kernels: d if the output passed (> 0, or NaN), else 0.0, as
# pick[not (o <= 0)] with pick = [0.0, d]. Written as a select, LLVM compiles it to a branch
# (a coin flip on real activations, ~1.5x the cost of these loops); the two-element lookup
# costs a store and a load instead and gives the select's value bit for bit.


@njit(parallel=True, cache=True)
def _bn_grad_sums(dout, out, hm, a, mean, std, pool, sb_out, sg_out):
    # dbeta = sum of dan, dgamma = sum of dan * xhat, where dan (the gradient at bn's
    # output) is dout except where the output is <= 0 (ReLU; NaN passes), at the recorded
    # maxima (pool); summed in order over (n, q), one channel per iteration
    N, C, Q = dout.shape
    for c in prange(C):
        mu = mean[c]
        inv = 1.0 / std[c]
        sb = 0.0
        sg = 0.0
        pick = np.zeros(2)
        for n in range(N):
            dn = dout[n, c]
            on = out[n, c]
            if pool:
                hn = hm[n, c]
                for q in range(np.uint64(Q)):
                    pick[1] = dn[q]
                    d = pick[np.uint64(not (on[q] <= 0))]
                    sb += d
                    sg += d * hn[q]
            else:
                an = a[n, c]
                for q in range(np.uint64(Q)):
                    pick[1] = dn[q]
                    d = pick[np.uint64(not (on[q] <= 0))]
                    sb += d
                    sg += d * ((an[q] - mu) * inv)
        sb_out[c] = sb
        sg_out[c] = sg


@njit(cache=True)
def _bn_dout(n, a, mean, std, gamma, train, ga, gb, dout, out, arg, pool, dn):
    # dn (F, P): the gradient at image n's conv output (batch norm's closed-form backward
    # through ReLU [and the pool]): -ga - xhat * gb everywhere (train mode), rounded to the
    # dtype, plus gamma/std * dout where it passed
    F, P = dn.shape
    Q = dout.shape[2]
    dt = dn.dtype.type
    pick = np.zeros(2)
    for f in range(F):
        mu = mean[f]
        inv = 1.0 / std[f]
        gi = np.float64(gamma[f]) * inv
        gaf, gbf = ga[f], gb[f]   # locals: LLVM cannot tell that stores to dn leave them alone
        an = a[n, f]
        row = dn[f]
        do = dout[n, f]
        on = out[n, f]
        if not pool:   # one pass; vectorised, so the select is a blend
            for p in range(np.uint64(P)):
                # in test mode the statistics are constants: no such term (an infinite xhat gives no 0 * inf)
                r = dt(-gaf - ((an[p] - mu) * inv) * gbf) if train else dt(0.0)
                row[p] = r + (0.0 if on[p] <= 0 else gi * np.float64(do[p]))
            continue
        if train:
            for p in range(np.uint64(P)):
                row[p] = -gaf - ((an[p] - mu) * inv) * gbf
        else:
            row[:] = 0.0
        at = arg[n, f]
        for q in range(np.uint64(Q)):   # adding 0 where ReLU blocked, as the composition's scatter does
            pick[1] = gi * np.float64(do[q])
            k = np.uint64(at[q])
            row[k] = row[k] + pick[np.uint64(not (on[q] <= 0))]


@njit(parallel=True, cache=True)
def _wino_bn_backward(x, U, pad, B, a, mean, std, gamma, train, ga, gb, dout, out, arg, pool, need_dx, dx,
                      dU_part, db_part):
    # _bn_conv_backward by Winograd (winograd.backward_block), B images at a time
    N = x.shape[0]
    F, P = a.shape[1], a.shape[2]
    H_out, W_out = x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2
    T = dU_part.shape[0]
    for t in prange(T):  # chunk t owns dU_part[t], db_part[t] and dx of its images
        V, M, xpad, dxpad = winograd.scratch(x, U, B, H_out, W_out)
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
def _rows_bn_backward(x, U, pad, H_out, W_out, B, a, mean, std, gamma, train, ga, gb, dout, out, arg, pool, need_dx,
                      dx, dU_part, db_part):
    # _bn_conv_backward by Winograd along rows (winograd_rows.backward_block), B images at a time
    N = x.shape[0]
    F, P = a.shape[1], a.shape[2]
    K = dU_part.shape[3]
    T = dU_part.shape[0]
    tw = winograd_rows.tiles_per_row(W_out)
    for t in prange(T):  # chunk t owns dU_part[t], db_part[t] and dx of its images
        xq, tail, s, V, M = winograd_rows.scratch(x, F, K, pad, H_out, tw, B)
        ds, dtail, e4 = np.empty_like(s), np.empty_like(tail[0]), np.empty(H_out * tw, dtype=x.dtype)
        dn = np.empty((B, F, P), dtype=x.dtype)
        dU_part[t] = 0
        db_part[t] = 0
        end = (t + 1) * N // T
        for n0 in range(t * N // T, end, B):
            n1 = min(n0 + B, end)
            for n in range(n0, n1):
                _bn_dout(n, a, mean, std, gamma, train, ga, gb, dout, out, arg, pool, dn[n - n0])
            winograd_rows.backward_block(x, n0, n1, dn, pad, H_out, W_out, U, need_dx, dx, dU_part[t], db_part[t],
                                         xq, tail, s, V, M, ds, dtail, e4)


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
    pmean = np.empty((N, C))
    pm2 = np.empty((N, C))
    U = None   # Winograd's transformed weights (2-D or along rows), when one of its paths runs
    with kernel_threads(a.size * w2.shape[1]), blas_threads(1):
        m = winograd.tile_size(cg.C, cg.HH, cg.WW, cg.stride, cg.H_out, cg.W_out)
        if m:
            U = winograd.transform_weights(w, x.dtype, m)
            _wino_stats_forward(x, U, np.ascontiguousarray(b), cg.pad, cg.H_out, cg.W_out,
                                winograd.block_images(cg.H_out, cg.W_out, N, m, x.dtype.itemsize), work_chunks(N),
                                _flat(a), pmean, pm2)
        elif winograd_rows.use(cg.C, cg.HH, cg.WW, cg.stride, cg.W_out):
            U = winograd_rows.transform_weights(w, x.dtype)
            _rows_stats_forward(x, U, np.ascontiguousarray(b), cg.pad,
                                cg.H_out, cg.W_out, winograd_rows.block_images(cg.H_out, cg.W_out, N),
                                work_chunks(N), _flat(a), pmean, pm2)
        else:
            _conv_stats_forward(x, with_bias(w2, b), cg.HH, cg.WW, cg.stride, cg.pad, cg.H_out, cg.W_out,
                                work_chunks(N), _flat(a), pmean, pm2)
    running_mean, running_var = _running_stats(bn_param, C, a.dtype)
    train = mode == "train"
    # std stays float64 so backward's ReLU mask and xhat see forward's values
    mean_f, std, new_mean, new_var = _batch_stats(pmean, pm2, a.size // (N * C), eps, a.dtype.type(momentum),
                                                  a.dtype.type(1 - momentum), train,
                                                  np.ascontiguousarray(running_mean), np.ascontiguousarray(running_var))
    gamma, beta = np.ascontiguousarray(gamma), np.ascontiguousarray(beta)
    with kernel_threads(a.size):
        _bn_relu_pool(_flat(a), cg.W_out, mean_f, std, gamma, beta, pool, ph, pw, stride, out.shape[3], _flat(out),
                      _flat(arg), _flat(hm), min(N * C, 4 * numba.get_num_threads()))
    if train:
        bn_param["running_mean"], bn_param["running_var"] = new_mean, new_var
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
        T = work_chunks(x.shape[0])
        db_part = np.empty((T, w2.shape[0]), dtype=x.dtype)
        if U is not None and U.shape[0] == winograd_rows.TAPS:   # along rows: U from forward, as in Conv
            dU_part = np.empty((T,) + U.shape, dtype=x.dtype)
            _rows_bn_backward(x, U, cg.pad, cg.H_out, cg.W_out,
                              winograd_rows.block_images(cg.H_out, cg.W_out, x.shape[0]), _flat(a), mean, std, gamma,
                              train, ga, gb, _flat(dout), _flat(out), _flat(arg), pool, need_dx, dx, dU_part, db_part)
            dw = winograd_rows.weights_grad(dU_part, cg.C)
        elif U is not None:
            dU_part = np.empty((T,) + U.shape, dtype=x.dtype)
            B = winograd.block_images(cg.H_out, cg.W_out, x.shape[0], winograd.size_of(U.shape[0]), x.dtype.itemsize)
            _wino_bn_backward(x, U, cg.pad, B, _flat(a), mean, std, gamma, train, ga, gb, _flat(dout), _flat(out),
                              _flat(arg), pool, need_dx, dx, dU_part, db_part)
            dw = winograd.weights_grad(dU_part)
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
