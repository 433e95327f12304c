"""Batch norm and spatial batch norm: one set of kernels on a (N, C, P) view.

Plain batch norm (N, D) is the P = 1 case; spatial batch norm (N, C, H, W) has
P = H*W, so both normalise per channel over N*P values and no transpose is
needed. Every kernel is parallel over channels: an iteration owns its
channel's statistics, dgamma, dbeta and its slice of dx. Sums are accumulated
in float64 in vector partial sums (fastmath "reassoc" only, see _REORDER) whose
order the compiled code fixes, so float32 results are accurate and repeatable on
any thread count. The variance is taken about the mean in a second pass (no
one-pass cancellation); backward sums dout and dout*xhat in one pass, then dx.
The normalised input xhat is not stored: backward recomputes it from x with the
forward's exact expression, which saves a full-size write per forward pass.
"""
import numpy as np
from numba import njit, prange

from ..checks import batchnorm_params, check_dout
from ._blas import kernel_threads


# Reductions may be reordered (so LLVM vectorises them into partial sums) but nothing else: no
# "nnan"/"ninf", so NaN and inf propagate as without fastmath. Only the sums get these flags;
# the elementwise outputs keep their exact expressions. The order is fixed by the compiled code,
# so results do not depend on the thread count.
_REORDER = {"reassoc"}


@njit(fastmath=_REORDER, cache=True)
def _channel_sums(x, c, mu):
    """(sum of x - mu, sum of (x - mu)**2) over channel c of x (N, C, P), in float64."""
    N, _, P = x.shape
    s = 0.0
    s2 = 0.0
    for n in range(N):
        for p in range(P):
            d = x[n, c, p] - mu
            s += d
            s2 += d * d
    return s, s2


@njit(fastmath=_REORDER, cache=True)
def _channel_grad_sums(dout, x, c, mu, inv, g, staged):
    """(sum of dout, sum of dout * xhat, and when staged sum of dout * g * (x - mu), else 0) over
    channel c, xhat with forward's exact expression. Two loops so neither tests staged per element."""
    N, _, P = x.shape
    sb = 0.0
    sg = 0.0
    sxc = 0.0
    if staged:
        for n in range(N):
            for p in range(P):
                d = np.float64(dout[n, c, p])
                xc = x[n, c, p] - mu
                sb += d
                sg += d * (xc * inv)
                sxc += d * g * xc
    else:
        for n in range(N):
            for p in range(P):
                d = np.float64(dout[n, c, p])
                sb += d
                sg += d * ((x[n, c, p] - mu) * inv)
    return sb, sg, sxc


@njit(parallel=True, cache=True)
def _bn_forward(x, gamma, beta, eps, train, mean, var, std, out):
    # train: mean/var are written (batch statistics); test: they are read (running statistics)
    N, C, P = x.shape
    M = N * P
    for c in prange(C):
        if train:
            # two passes (mean, then squares about it): exact centring, no cancellation
            s, _ = _channel_sums(x, c, 0.0)
            mu = s / M
            _, s2 = _channel_sums(x, c, mu)
            mean[c] = mu
            var[c] = s2 / M
        mu = np.float64(mean[c])
        sd = np.sqrt(np.float64(var[c]) + eps)
        std[c] = sd
        inv = 1.0 / sd
        g = np.float64(gamma[c])
        bt = np.float64(beta[c])
        for n in range(N):
            for p in range(P):
                out[n, c, p] = g * ((x[n, c, p] - mu) * inv) + bt


@njit(parallel=True, cache=True)
def _bn_backward(dout, x, mean, std, gamma, train, staged, dx, dgamma, dbeta):
    N, C, P = dout.shape
    M = N * P
    for c in prange(C):
        g = np.float64(gamma[c])
        sd = np.float64(std[c])
        inv = 1.0 / sd
        mu = np.float64(mean[c])
        sb, sg, sxc = _channel_grad_sums(dout, x, c, mu, inv, g, staged and train)
        dbeta[c] = sb
        dgamma[c] = sg
        if not train:  # the statistics are constants
            for n in range(N):
                for p in range(P):
                    dx[n, c, p] = dout[n, c, p] * g * inv
        elif staged:
            # backprop node by node, as the reference's backward: xhat = xc * inv_std,
            # inv_std = 1/std, std = sqrt(var + eps), var = mean(xc**2), xc = x - mu
            dstd = -sxc / (sd * sd)
            dvar = 0.5 * dstd / sd
            sdxc = 0.0
            for n in range(N):
                for p in range(P):
                    dxc = dout[n, c, p] * g * inv + 2.0 * (x[n, c, p] - mu) * dvar / M
                    dx[n, c, p] = dxc
                    sdxc += dx[n, c, p]  # the stored (dtype-rounded) value, as the graph sees it
            dmu = -sdxc
            for n in range(N):
                for p in range(P):
                    dx[n, c, p] = dx[n, c, p] + dmu / M
        else:
            # closed form: dx = inv_std/M * (M*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))
            a = g * sb
            b = g * sg
            for n in range(N):
                for p in range(P):
                    h = (x[n, c, p] - mu) * inv
                    dx[n, c, p] = inv / M * (M * (dout[n, c, p] * g) - a - h * b)


def _running_stats(bn_param, C, dtype):
    """The running statistics in x's dtype (created as zeros on first use)."""
    for key in ("running_mean", "running_var"):
        if bn_param.get(key) is None:
            bn_param[key] = np.zeros(C, dtype=dtype)
    return (np.asarray(bn_param["running_mean"], dtype=dtype), np.asarray(bn_param["running_var"], dtype=dtype))


def _forward(x, gamma, beta, bn_param, spatial):
    mode, eps, momentum = batchnorm_params(x, gamma, beta, bn_param, spatial=spatial)
    shape = x.shape
    N, C = shape[0], shape[1]
    x3 = np.ascontiguousarray(x).reshape(N, C, -1)
    running_mean, running_var = _running_stats(bn_param, C, x.dtype)
    train = mode == "train"
    if train:
        mean, var = np.empty(C, x.dtype), np.empty(C, x.dtype)
    else:
        mean = np.ascontiguousarray(running_mean, dtype=x.dtype)
        var = np.ascontiguousarray(running_var, dtype=x.dtype)
    std = np.empty(C, x.dtype)
    out = np.empty_like(x3)
    with kernel_threads(x3.size):
        _bn_forward(x3, np.ascontiguousarray(gamma), np.ascontiguousarray(beta), eps, train, mean, var, std, out)
    if train:  # C elements: a plain NumPy update, the same expression as the reference
        bn_param["running_mean"] = (momentum * running_mean + (1 - momentum) * mean).astype(x.dtype)
        bn_param["running_var"] = (momentum * running_var + (1 - momentum) * var).astype(x.dtype)
    return out.reshape(shape), (train, x3, mean, std, np.ascontiguousarray(gamma), shape)


def _backward(dout, cache, layer, staged):
    train, x3, mean, std, gamma, shape = cache
    check_dout(dout, shape, x3.dtype, layer)
    d3 = np.ascontiguousarray(dout).reshape(x3.shape)
    C = x3.shape[1]
    dx = np.empty_like(x3)
    dgamma, dbeta = np.empty(C, x3.dtype), np.empty(C, x3.dtype)
    with kernel_threads(x3.size):
        _bn_backward(d3, x3, mean, std, gamma, train, staged, dx, dgamma, dbeta)
    return dx.reshape(shape), dgamma, dbeta


class BatchNorm:
    @staticmethod
    def forward(x, gamma, beta, bn_param):
        """x (N, D); gamma, beta (D,); bn_param {"mode", "eps", "momentum", running stats}."""
        return _forward(x, gamma, beta, bn_param, spatial=False)

    @staticmethod
    def backward(dout, cache):
        """Backprop node by node through the graph of forward. Returns (dx, dgamma, dbeta)."""
        return _backward(dout, cache, "BatchNorm", staged=True)

    @staticmethod
    def backward_alt(dout, cache):
        """The same gradient in simplified closed form."""
        return _backward(dout, cache, "BatchNorm", staged=False)


class SpatialBatchNorm:
    @staticmethod
    def forward(x, gamma, beta, bn_param):
        """x (N, C, H, W); gamma, beta (C,); statistics over (N, H, W) per channel."""
        return _forward(x, gamma, beta, bn_param, spatial=True)

    @staticmethod
    def backward(dout, cache):
        return _backward(dout, cache, "SpatialBatchNorm", staged=True)

    @staticmethod
    def backward_alt(dout, cache):
        return _backward(dout, cache, "SpatialBatchNorm", staged=False)
