"""Fused conv - spatial batch norm - ReLU [- max pool] layers on the GPU.

The signatures and contract of the cpu backend's fused layers (and of the
sandwiches of ``numbaconv.layers``, the reference compositions they are tested
against), with fewer launches and fewer passes over the activations:

Forward, three launches (the composition: five): (1) the conv, whose kernel
also writes each output tile's per-filter mean and sum of squared deviations
from its registers, so batch norm's statistics cost no pass over the output;
(2) bn_stats combines the tiles (Chan et al.), takes std and updates the running
statistics; (3) one kernel normalises, applies ReLU and pools, recording each
window's maximum.

Backward: (1) the sums for dbeta and dgamma, read from the pooled arrays only;
(2) batch norm's closed-form input gradient at the conv output, gathered through
the pool's recorded maxima and the ReLU mask, in one elementwise kernel; then
the conv's backward (dw, db and, unless ``need_dx`` is False, dx). (2) writes its
gradient once to a reused scratch buffer (16 MiB for a 32-channel 32x32 layer at
N=128 in float32: it fits in an H200's 50 MB L2 cache, as the cpu layer's per-image
buffer stays in its cache) rather than being folded into the loads of the dw and
dx kernels, which would recompute it once per tile of K (five times at C=32) and
gather the pool windows each time; which is faster is for a GPU to measure.

Deterministic: every reduction is a fixed tree per channel, no atomics.
"""
import numpy as np

from ..checks import batchnorm_params, check_dout, conv_geometry, pool_geometry
from ._runtime import (THREADS_1D, THREADS_REDUCE, as_device, blocks, cuda, empty, flat, is_device, launch, result,
                       scratch)
from .batchnorm import batch_statistics
from .conv import _conv_forward, check_filter_fits, conv_backward, stat_tiles
from .kernels import BLOCK_COLS


def _forward(x, w, b, gamma, beta, conv_param, bn_param, pool_param):
    g = conv_geometry(x, w, b, conv_param)
    check_filter_fits(g, w)
    dtype = np.dtype(x.dtype)
    host = not is_device(x)
    a = empty((g.N, g.F, g.H_out, g.W_out), dtype)
    mode, eps, momentum = batchnorm_params(a, gamma, beta, bn_param, spatial=True)
    pool = pool_param is not None
    if pool:
        pg = pool_geometry(a, pool_param)
        window = (pg.pool_height, pg.pool_width, pg.stride, pg.H_out, pg.W_out)
    else:
        window = (1, 1, 1, g.H_out, g.W_out)
    xd, wd, bd, gd, betad = (as_device(v) for v in (x, w, b, gamma, beta))   # inputs validated: copy them
    train = mode == "train"
    tiles = stat_tiles(g)
    stats = tuple(scratch((tiles, g.F), dtype, f"fused conv tile statistics {i}") for i in range(2)) if train else None
    _conv_forward(xd, wd, bd, a, g, stats=stats)
    tile_mean, tile_m2 = stats if train else (a, a)   # test mode: the running statistics are used instead
    mean, _, inv_std = batch_statistics(tile_mean, tile_m2, BLOCK_COLS, g.N * g.H_out * g.W_out, bn_param, mode, eps,
                                        momentum, tiles, g.F, 1, dtype, host)
    out = empty((g.N, g.F, window[3], window[4]), dtype)
    argmax = cuda.device_array(out.shape, dtype=np.int32) if pool else _no_argmax()
    launch("bn_relu_pool", dtype, blocks(out.size, THREADS_1D), THREADS_1D, flat(a), mean, inv_std, gd, betad,
           flat(out), flat(argmax), int(pool), g.N, g.F, g.H_out, g.W_out, *window)
    return result(out, host), (xd, wd, g, a, mean, inv_std, gd, out, argmax, pool, window, train, dtype)


def _no_argmax():
    """The int32 argument bn_relu_pool's kernels take and never touch without a pool."""
    return scratch((1,), np.int32, "fused layer without pool: no argmax")


def _backward(dout, cache, layer, need_dx):
    xd, wd, g, a, mean, inv_std, gd, out, argmax, pool, window, train, dtype = cache
    check_dout(dout, out.shape, dtype, layer)
    dd = as_device(dout)
    F = g.F
    dgamma, dbeta = empty((F,), dtype), empty((F,), dtype)
    ga, gb = (scratch((F,), dtype, f"fused bn gradient coefficients {i}") for i in range(2))
    launch("bn_relu_pool_grad_sums", dtype, blocks(F, 1), THREADS_REDUCE, flat(dd), flat(out), flat(a), flat(argmax),
           mean, inv_std, gd, dgamma, dbeta, ga, gb, int(pool), int(train), g.N, F, g.H_out * g.W_out,
           window[3] * window[4])
    da = scratch(a.shape, dtype, "fused conv output gradient")
    launch("bn_relu_pool_backward", dtype, blocks(a.size, THREADS_1D), THREADS_1D, flat(dd), flat(out), flat(a),
           flat(argmax), mean, inv_std, gd, ga, gb, flat(da), int(pool), int(train), g.N, F, g.H_out, g.W_out,
           *window)
    dx, dw, db = conv_backward(da, xd, wd, g, need_dx)
    host = not is_device(dout)
    return (result(dx, host) if need_dx else None), result(dw, host), result(db, host), result(dgamma, host), \
        result(dbeta, host)


class Conv_BatchNorm_ReLU:
    """conv - spatial batch norm - ReLU, fused; the sandwich's signature and results."""

    can_skip_dx = True

    @staticmethod
    def forward(x, w, b, gamma, beta, conv_param, bn_param):
        """Returns (out, cache)."""
        return _forward(x, w, b, gamma, beta, conv_param, bn_param, None)

    @staticmethod
    def backward(dout, cache, need_dx=True):
        """Returns (dx, dw, db, dgamma, dbeta); dx is None when ``need_dx`` is False."""
        return _backward(dout, cache, "Conv_BatchNorm_ReLU", need_dx)


class Conv_BatchNorm_ReLU_Pool:
    """conv - spatial batch norm - ReLU - max pool, fused; the sandwich's signature and results."""

    can_skip_dx = True

    @staticmethod
    def forward(x, w, b, gamma, beta, conv_param, bn_param, pool_param):
        """Returns (out, cache)."""
        return _forward(x, w, b, gamma, beta, conv_param, bn_param, pool_param)

    @staticmethod
    def backward(dout, cache, need_dx=True):
        """Returns (dx, dw, db, dgamma, dbeta); dx is None when ``need_dx`` is False."""
        return _backward(dout, cache, "Conv_BatchNorm_ReLU_Pool", need_dx)
