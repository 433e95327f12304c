"""Convolution: implicit-GEMM forward and dw kernels with shared-memory tiles and
4x4 register tiles per thread; dx for stride 1 is the forward kernel run on dout
with rotated filters, for other strides a gathering kernel (each dx element owned
by one thread)."""
import math

import numpy as np

from ..checks import ConvGeometry, check_dout, conv_geometry
from ._runtime import THREADS_1D, as_device, blocks, empty, flat, is_device, launch, result, scratch
from .kernels import BLOCK_COLS, BLOCK_F, DX_SMEM, TILE
from .reductions import channel_sums


# dw sums over every output column (N * H_out * W_out of them): with few (f, k)
# tiles that is a few blocks doing long loops, so the sum is split until about
# DW_TARGET_BLOCKS blocks are busy, each split at least DW_MIN_CHUNK columns long.
DW_TARGET_BLOCKS = 512
DW_MIN_CHUNK = 16 * TILE


def dw_splits(ntiles: int, columns: int) -> tuple[int, int]:
    """(splits, columns per split) for the conv dw kernel; chunks are whole tiles."""
    splits = max(1, min(math.ceil(DW_TARGET_BLOCKS / ntiles), columns // DW_MIN_CHUNK))
    chunk = math.ceil(math.ceil(columns / splits) / TILE) * TILE
    return math.ceil(columns / chunk), chunk


def uses_flipped_gemm_for_dx(g: ConvGeometry) -> bool:
    """dx by the register-tiled GEMM kernel on flipped filters (stride 1, square
    filters), else by the gathering kernel. Even at C=3, where most of the GEMM's
    64-row tile idles, the GEMM was the faster on an H200 (conv 3->32 @ 32x32,
    N=128: dx 0.53 ms against 1.22 ms gathering)."""
    return g.stride == 1 and g.HH == g.WW and g.pad <= g.HH - 1


def stat_tiles(g: ConvGeometry) -> int:
    """Column tiles of the conv forward: the entries of its per-tile statistics (per filter)."""
    return math.ceil(g.N * g.H_out * g.W_out / BLOCK_COLS)


def _conv_forward(xd, wd, bd, out, g: ConvGeometry, stats=None) -> None:
    """out = conv(x, w) (+ b unless bd is None), all on the device. With ``stats``
    = (tile_mean, tile_m2), each (stat_tiles(g), F), the kernel also writes each
    column tile's per-filter mean and sum of squared deviations (for batch norm)."""
    ntiles = stat_tiles(g) * math.ceil(g.F / BLOCK_F)
    tile_mean, tile_m2 = stats if stats is not None else (out, out)   # not written without stats
    launch("conv_forward", np.dtype(out.dtype), blocks(ntiles, 1), (TILE, TILE), flat(xd), flat(wd),
           flat(bd if bd is not None else out), flat(out), flat(tile_mean), flat(tile_m2), int(bd is not None),
           int(stats is not None), *g)


def check_filter_fits(g: ConvGeometry, w) -> None:
    if g.HH * g.WW > DX_SMEM:   # the dx kernel stages at least one filter's taps in shared memory
        raise ValueError(f"the cuda backend supports filters of at most {DX_SMEM} taps per channel, "
                         f"got w of shape {tuple(w.shape)} ({g.HH}x{g.WW} = {g.HH * g.WW})")


def conv_backward(dd, xd, wd, g: ConvGeometry, need_dx: bool = True):
    """(dx or None, dw, db) on the device for dout ``dd`` (a device array)."""
    dtype = np.dtype(dd.dtype)
    dw, db = empty(wd.shape, dtype), empty((g.F,), dtype)
    K = g.C * g.HH * g.WW
    ntiles = math.ceil(K / BLOCK_COLS) * math.ceil(g.F / BLOCK_F)
    splits, chunk = dw_splits(ntiles, g.N * g.H_out * g.W_out)
    partial = dw if splits == 1 else scratch((splits, g.F, K), dtype, "conv dw partial sums")
    launch("conv_backward_dw", dtype, blocks(ntiles * splits, 1), (TILE, TILE), flat(xd), flat(dd),
           flat(partial), *g, splits, chunk)
    if splits > 1:
        launch("sum_splits", dtype, blocks(g.F * K, THREADS_1D), THREADS_1D, flat(partial), flat(dw), splits,
               g.F * K)
    dx = empty(xd.shape, dtype) if need_dx else None
    if need_dx and uses_flipped_gemm_for_dx(g):
        # dx = dout convolved with the rotated, transposed filters: the register-tiled
        # GEMM kernel, summing in the reference's order (f, then kh and kw descending).
        wf = scratch((g.C, g.F, g.HH, g.WW), dtype, "conv flipped filters")
        launch("conv_flip_weights", dtype, blocks(wd.size, THREADS_1D), THREADS_1D, flat(wd), flat(wf),
               g.F, g.C, g.HH * g.WW)
        _conv_forward(dd, wf, None, dx, ConvGeometry(g.N, g.F, g.H_out, g.W_out, g.C, g.HH, g.WW, 1,
                                                     g.HH - 1 - g.pad, g.H, g.W))
    elif need_dx:
        ntiles = g.C * math.ceil(g.N * g.H * g.W / THREADS_1D)
        launch("conv_backward_dx", dtype, blocks(ntiles, 1), THREADS_1D, flat(wd), flat(dd), flat(dx), *g)
    channel_sums(dd, dd, g.N, g.F, g.H_out * g.W_out, sum_a=db)
    return dx, dw, db


class Conv:
    @staticmethod
    def forward(x, w, b, conv_param):
        """x (N,C,H,W), w (F,C,HH,WW), b (F,); conv_param {"stride", "pad"}."""
        g = conv_geometry(x, w, b, conv_param)
        check_filter_fits(g, w)
        dtype = np.dtype(x.dtype)
        xd, wd, bd = as_device(x), as_device(w), as_device(b)
        out = empty((g.N, g.F, g.H_out, g.W_out), dtype)
        _conv_forward(xd, wd, bd, out, g)
        return result(out, not is_device(x)), (xd, wd, g, dtype)

    @staticmethod
    def backward(dout, cache):
        """Returns (dx, dw, db), on the host if dout is a NumPy array."""
        xd, wd, g, dtype = cache
        check_dout(dout, (g.N, g.F, g.H_out, g.W_out), dtype, "Conv")
        dx, dw, db = conv_backward(as_device(dout), xd, wd, g)
        host = not is_device(dout)
        return result(dx, host), result(dw, host), result(db, host)
