"""Batch norm and spatial batch norm: one code path for (N, D) and (N, C, H, W),
seen as (N, C, L) with L = 1 or H*W. Statistics by two-pass block reductions
(mean, then centred variance); elementwise kernels do the rest.

Running statistics live where x lives: NumPy arrays in bn_param for NumPy x,
device arrays for device x (created as zeros on first use, as in the reference).
"""
import math

import numpy as np

from ..checks import batchnorm_params, check_dout
from ._runtime import THREADS_1D, as_device, blocks, empty, flat, is_device, launch, result, to_device, to_host
from .kernels import BN_ALT, BN_STAGED, BN_TEST
from .reductions import channel_sums


def _running_stats(bn_param, C, dtype, host):
    """The running statistics as device arrays (created as zeros on first use)."""
    stats = []
    for key in ("running_mean", "running_var"):
        if bn_param.get(key) is None:
            bn_param[key] = np.zeros(C, dtype=dtype) if host else to_device(np.zeros(C, dtype=dtype))
        stats.append(as_device(bn_param[key], dtype))
    return stats


def _forward(x, gamma, beta, bn_param, spatial):
    mode, eps, momentum = batchnorm_params(x, gamma, beta, bn_param, spatial=spatial)
    host = not is_device(x)
    dtype = np.dtype(x.dtype)
    N, C = int(x.shape[0]), int(x.shape[1])
    L = math.prod(int(s) for s in x.shape[2:])
    xd, gd, bd = as_device(x), as_device(gamma), as_device(beta)
    running_mean, running_var = _running_stats(bn_param, C, dtype, host)
    c_threads = blocks(C, THREADS_1D)
    if mode == "train":
        mean = channel_sums(xd, xd, N, C, L, divisor=N * L)[0]
        var = channel_sums(xd, xd, N, C, L, divisor=N * L, shift=(mean, mean))[2]   # biased variance
        launch("bn_running_update", dtype, c_threads, THREADS_1D, running_mean, running_var, mean, var,
               float(momentum), float(1 - momentum), C)
        if host:
            bn_param["running_mean"] = to_host(running_mean)
            bn_param["running_var"] = to_host(running_var)
        else:
            bn_param["running_mean"], bn_param["running_var"] = running_mean, running_var
    else:
        mean, var = running_mean, running_var
    std, inv_std = empty((C,), dtype), empty((C,), dtype)
    launch("bn_std", dtype, c_threads, THREADS_1D, var, float(eps), std, inv_std, C)
    xc, xhat, out = (empty(xd.shape, dtype) for _ in range(3))
    launch("bn_forward_apply", dtype, blocks(xd.size, THREADS_1D), THREADS_1D, flat(xd), mean, inv_std, gd, bd,
           flat(xc), flat(xhat), flat(out), xd.size, C, L)
    return result(out, host), (mode, xc, xhat, gd, std, inv_std, N, C, L, dtype)


def _backward(dout, cache, closed_form, layer):
    mode, xc, xhat, gd, std, inv_std, N, C, L, dtype = cache
    check_dout(dout, xc.shape, dtype, layer)
    dd = as_device(dout)
    dbeta, _, dgamma = channel_sums(dd, xhat, N, C, L)             # sum(dout), sum(dout * xhat)
    s_dout_xc, s_xc = dgamma, dgamma                               # not read unless staged
    if mode == "test":
        kind = BN_TEST
    elif closed_form:
        kind = BN_ALT
    else:
        kind = BN_STAGED
        _, s_xc, s_dout_xc = channel_sums(dd, xc, N, C, L)        # sum(xc), sum(dout * xc)
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
