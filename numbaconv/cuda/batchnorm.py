"""Batch norm and spatial batch norm: one code path for (N, D) and (N, C, H, W),
seen as (N, C, L) with L = 1 or H*W. Two launches each way: forward, the
statistics (two-pass block reductions: mean, then centred variance; std and the
running statistics in the same kernel) and the elementwise apply; backward, every
per-channel sum in one pass, then the elementwise dx.

Running statistics live where x lives: NumPy arrays in bn_param for NumPy x,
device arrays for device x (created as zeros on first use, as in the reference).
"""
import math

import numpy as np

from ..checks import batchnorm_params, check_dout
from ._runtime import (THREADS_1D, THREADS_REDUCE, as_device, blocks, empty, flat, is_device, launch, result, scratch,
                       to_device, to_host)
from .kernels import BN_ALT, BN_STAGED, BN_TEST


def _running_stats(bn_param, C, dtype, host):
    """The running statistics as device arrays (created as zeros on first use)."""
    stats = []
    for key in ("running_mean", "running_var"):
        if bn_param.get(key) is None:
            bn_param[key] = np.zeros(C, dtype=dtype) if host else to_device(np.zeros(C, dtype=dtype))
        stats.append(as_device(bn_param[key], dtype))
    return stats


def batch_statistics(v, m2, chunk, count, bn_param, mode, eps, momentum, N, C, L, dtype, host):
    """(mean, std, inv_std) per channel, one launch of bn_stats: from entries v laid
    out (N, C, L), each the mean of ``chunk`` of the ``count`` values of a channel,
    with sums of squared deviations m2 (None when chunk is 1). In train mode the
    running statistics in bn_param are updated (on the host for host callers)."""
    running_mean, running_var = _running_stats(bn_param, C, dtype, host)
    mean, std, inv_std = (empty((C,), dtype) for _ in range(3))
    train = mode == "train"
    launch("bn_stats", dtype, blocks(C, 1), THREADS_REDUCE, flat(v), flat(m2 if m2 is not None else v),
           int(m2 is not None), chunk, count, running_mean, running_var, mean, std, inv_std, int(train), float(eps),
           float(momentum), float(1 - momentum), N, C, L)
    if train:
        if host:
            bn_param["running_mean"], bn_param["running_var"] = to_host(running_mean), to_host(running_var)
        else:
            bn_param["running_mean"], bn_param["running_var"] = running_mean, running_var
    return mean, std, inv_std


def _forward(x, gamma, beta, bn_param, spatial):
    mode, eps, momentum = batchnorm_params(x, gamma, beta, bn_param, spatial=spatial)
    host = not is_device(x)
    dtype = np.dtype(x.dtype)
    N, C = int(x.shape[0]), int(x.shape[1])
    L = math.prod(int(s) for s in x.shape[2:])
    xd, gd, bd = as_device(x), as_device(gamma), as_device(beta)
    mean, std, inv_std = batch_statistics(xd, None, 1, N * L, bn_param, mode, eps, momentum, N, C, L, dtype, host)
    xc, xhat, out = (empty(xd.shape, dtype) for _ in range(3))
    launch("bn_forward_apply", dtype, blocks(xd.size, THREADS_1D), THREADS_1D, flat(xd), mean, inv_std, gd, bd,
           flat(xc), flat(xhat), flat(out), xd.size, C, L)
    return result(out, host), (mode, xc, xhat, gd, std, inv_std, N, C, L, dtype)


def _backward(dout, cache, closed_form, layer):
    mode, xc, xhat, gd, std, inv_std, N, C, L, dtype = cache
    check_dout(dout, xc.shape, dtype, layer)
    dd = as_device(dout)
    kind = BN_TEST if mode == "test" else BN_ALT if closed_form else BN_STAGED
    dbeta, dgamma = empty((C,), dtype), empty((C,), dtype)                # sum(dout), sum(dout * xhat)
    if kind == BN_STAGED:                                                 # sum(xc), sum(dout * xc)
        s_xc, s_dout_xc = (scratch((C,), dtype, f"bn staged sum {i}") for i in range(2))
    else:
        s_xc = s_dout_xc = dgamma                                         # neither computed nor read
    launch("bn_backward_sums", dtype, blocks(C, 1), THREADS_REDUCE, flat(dd), flat(xhat), flat(xc),
           int(kind == BN_STAGED), dbeta, dgamma, s_xc, s_dout_xc, N, C, L)
    dx = empty(xc.shape, dtype)
    launch("bn_backward_apply", dtype, blocks(dx.size, THREADS_1D), THREADS_1D, flat(dd), flat(xc), flat(xhat), gd,
           std, inv_std, dbeta, s_dout_xc, s_xc, dgamma, flat(dx), kind, N * L, dx.size, C, L)
    host = not is_device(dout)
    return result(dx, host), result(dgamma, host), result(dbeta, host)


class BatchNorm:
    @staticmethod
    def forward(x, gamma, beta, bn_param):
        """x (N, D); gamma, beta (D,); bn_param {"mode", "eps", "momentum", running stats}."""
        return _forward(x, gamma, beta, bn_param, spatial=False)

    @staticmethod
    def backward(dout, cache):
        """The reference's staged graph, node by node. Returns (dx, dgamma, dbeta)."""
        return _backward(dout, cache, False, "BatchNorm")

    @staticmethod
    def backward_alt(dout, cache):
        """dx = inv_std / N * (N * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))."""
        return _backward(dout, cache, True, "BatchNorm")


class SpatialBatchNorm:
    @staticmethod
    def forward(x, gamma, beta, bn_param):
        """x (N, C, H, W); gamma, beta (C,); statistics over (N, H, W) per channel."""
        return _forward(x, gamma, beta, bn_param, spatial=True)

    @staticmethod
    def backward(dout, cache):
        return _backward(dout, cache, False, "SpatialBatchNorm")

    @staticmethod
    def backward_alt(dout, cache):
        return _backward(dout, cache, True, "SpatialBatchNorm")
