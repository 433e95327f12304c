"""Every CUDA kernel of the backend, in one registry.

Each kernel is written once as a factory ``make(dt) -> python function`` (``dt``
is numba's float32 or float64: ``cuda.shared.array`` needs a compile-time dtype)
and registered with the types of its arguments. ``get_kernel`` compiles it with
exactly that signature on first use, and the PTX test compiles every entry of
``KERNELS`` for compute capability 9.0 in both dtypes, so no kernel can be
forgotten by the test.

Design rules followed by every kernel:
  * arrays are flat and C-contiguous; index arithmetic is explicit;
  * neighbouring threads (threadIdx.x) touch neighbouring addresses (coalescing);
  * tiled kernels loop over their tiles with a grid stride, so the grid size is
    free; every ``syncthreads`` is reached by all threads of a block (loop bounds
    depend only on block-uniform values);
  * every output element has exactly one owner thread: no atomics, no races
    (conv dw by (f, k) ownership, split sums added in order by a second kernel;
    conv dx as a forward convolution (stride 1) or by gathering; max-pool dx by
    gathering), so results are deterministic.

Argument codes: "A" array of the layer dtype, "I" int32 array, "L" int64 array,
"i" int64 scalar, "f" float64 scalar.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
from numba import types

from ._runtime import SIMULATOR, cuda

TILE = 16            # conv / matmul tiles: TILE x TILE threads, two TILE x TILE shared tiles
RED_THREADS = 1024   # shared slots of the block reductions (block size: power of two <= this)
DX_SMEM = 2048       # shared elements of filter taps staged by the conv dx kernel


class KernelSpec(NamedTuple):
    make: Callable            # dt -> python kernel function
    args: str                 # argument codes, see the module docstring
    shared_elems: int         # elements of dt in static shared memory (for the limit check)
    shared_int32: int = 0     # int32 elements in static shared memory


KERNELS: dict[str, KernelSpec] = {}
# The kernels of device-resident training (numbaconv/cuda/train_kernels.py: minibatch gather
# and augmentation, the loss, the update rules, evaluation): a registry of their own, so the
# layer suites' "every kernel is launched" check stays about the layers; their own tests
# (tests/test_cuda_training.py) compile every entry to PTX and check every launch.
TRAINING_KERNELS: dict[str, KernelSpec] = {}


def kernel(name: str, args: str, shared_elems: int = 0, registry: dict | None = None):
    def register(make):
        (KERNELS if registry is None else registry)[name] = KernelSpec(make, args, shared_elems)
        return make
    return register


def spec(name: str) -> KernelSpec:
    """A kernel's entry, from either registry."""
    return KERNELS[name] if name in KERNELS else TRAINING_KERNELS[name]


def device_function(fn):
    """A helper that kernels call, compiled with them (no registry entry of its own:
    the PTX test compiles it inside each kernel that uses it). Inlined at the NVVM
    level on a GPU, as if written in place; the simulator has no such option."""
    return cuda.jit(device=True, **({} if SIMULATOR else {"forceinline": True}))(fn)


_NB_DTYPES = {np.dtype(np.float32): types.float32, np.dtype(np.float64): types.float64}


def signature(name: str, dtype) -> types.Type:
    """The exact signature the kernel is compiled with for ``dtype``."""
    dt = _NB_DTYPES[np.dtype(dtype)]
    codes = {"A": types.Array(dt, 1, "C"), "I": types.Array(types.int32, 1, "C"),
             "L": types.Array(types.int64, 1, "C"), "i": types.int64, "f": types.float64}
    return types.void(*(codes[c] for c in spec(name).args))


def shared_bytes(name: str, dtype) -> int:
    entry = spec(name)
    return entry.shared_elems * np.dtype(dtype).itemsize + 4 * entry.shared_int32


def python_kernel(name: str, dtype) -> Callable:
    return spec(name).make(_NB_DTYPES[np.dtype(dtype)])


_compiled: dict = {}
_launchers: dict = {}


def get_kernel(name: str, dtype):
    """The compiled kernel (lazily, once per process and dtype)."""
    key = (name, np.dtype(dtype))
    k = _compiled.get(key)
    if k is None:
        k = _compiled[key] = cuda.jit(signature(name, dtype))(python_kernel(name, dtype))
    return k


def get_launcher(name: str, dtype):
    """``launcher(args, grid3, block3)``: the one compiled overload launched on the
    default stream without numba's per-call dispatch, or None where this numba-cuda
    does not expose what it needs (then the caller goes through the dispatcher)."""
    key = (name, np.dtype(dtype))
    if key not in _launchers:
        from numba.cuda.cudadrv import driver

        overload = getattr(get_kernel(name, dtype), "overloads", {}).get(signature(name, dtype).args)
        launch = getattr(overload, "launch", None)
        to_stream = getattr(driver, "_to_core_stream", None)
        if launch is None or to_stream is None:
            _launchers[key] = None
        else:
            stream = to_stream(0)   # what the dispatcher passes for the default stream
            _launchers[key] = lambda args, grid, block: launch(args, grid, block, stream, 0)
    return _launchers[key]


# --------------------------------------------------------------------------- conv
# Convolution as an implicit GEMM: out[n, f, p] = sum_k w[f, k] * xcol[k, (n, p)]
# with k = (c, kh, kw) and p = (i, j); xcol is gathered from x on the fly (zero
# padding is a bounds check), never materialised.

# conv forward block tile: BLOCK_F filters x BLOCK_COLS output columns, TILE x TILE
# threads, each computing a REG x REG register tile of outputs (two shared reads
# per REG*REG/2 multiply-adds instead of two per one).
REG = 4
BLOCK_F = TILE * REG
BLOCK_COLS = TILE * REG


@device_function
def tile_product(a_tile, b_tile, acc, a_reg, b_reg, ty, tx):
    # The register-tiled inner loop of conv forward and dw: thread (ty, tx) adds
    # acc[a, q] += sum over kk of a_tile[kk, ty + TILE*a] * b_tile[kk, tx + TILE*q]
    # for its REG x REG outputs, reading 2*REG shared values per REG*REG multiply-adds.
    # The register arrays come from the caller (their dtype is fixed per kernel).
    for kk in range(TILE):
        for a in range(REG):
            a_reg[a] = a_tile[kk, ty + TILE * a]
        for q in range(REG):
            b_reg[q] = b_tile[kk, tx + TILE * q]
        for a in range(REG):
            for q in range(REG):
                acc[a, q] += a_reg[a] * b_reg[q]


@kernel("conv_forward", "AAAAAAiiiiiiiiiiiii", shared_elems=2 * TILE * BLOCK_F)
def _make_conv_forward(dt):
    def conv_forward(x, w, b, out, tile_mean, tile_m2, has_bias, stats, N, C, H, W, F, HH, WW, stride, pad, Ho, Wo):
        # Thread (ty, tx) owns outputs f = f0 + ty + TILE*a, col = c0 + tx + TILE*q for
        # a, q < REG: strided, so shared reads are conflict-free and writes coalesced.
        w_tile = cuda.shared.array((TILE, BLOCK_F), dt)      # w_tile[kk, fl] = w[f0 + fl, k0 + kk]
        x_tile = cuda.shared.array((TILE, BLOCK_COLS), dt)   # x_tile[kk, cl] = xcol[k0 + kk, c0 + cl]
        acc = cuda.local.array((REG, REG), dt)
        w_reg = cuda.local.array(REG, dt)
        x_reg = cuda.local.array(REG, dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TILE + tx
        KK = HH * WW
        K = C * KK
        P = Ho * Wo
        NP = N * P
        tiles_col = (NP + BLOCK_COLS - 1) // BLOCK_COLS
        ntiles = tiles_col * ((F + BLOCK_F - 1) // BLOCK_F)
        # The loads: thread tid fetches w column kk = tid % TILE of rows tid // TILE + TILE*e,
        # and x column cl = tid % BLOCK_COLS of rows tid // BLOCK_COLS + (TILE*TILE // BLOCK_COLS)*e.
        w_kk = tid % TILE
        w_fl = tid // TILE
        x_cl = tid % BLOCK_COLS
        x_kk = tid // BLOCK_COLS
        x_step = TILE * TILE // BLOCK_COLS
        for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
            f0 = (tile // tiles_col) * BLOCK_F
            c0 = (tile % tiles_col) * BLOCK_COLS
            col = c0 + x_cl                      # the column this thread loads
            n = col // P
            p = col - n * P
            hi0 = (p // Wo) * stride - pad
            wi0 = (p - (p // Wo) * Wo) * stride - pad
            xbase = n * C * H * W
            for a in range(REG):
                for q in range(REG):
                    acc[a, q] = dt(0)
            for k0 in range(0, K, TILE):
                for e in range(REG):
                    f = f0 + w_fl + TILE * e
                    k = k0 + w_kk
                    v = dt(0)
                    if f < F and k < K:
                        v = w[f * K + k]         # coalesced: consecutive tx, consecutive k
                    w_tile[w_kk, w_fl + TILE * e] = v
                for e in range(BLOCK_COLS * TILE // (TILE * TILE)):
                    kk = x_kk + x_step * e
                    k = k0 + kk
                    v = dt(0)
                    if col < NP and k < K:
                        c = k // KK
                        r = k - c * KK
                        kh = r // WW
                        h = hi0 + kh
                        ww = wi0 + (r - kh * WW)
                        if h >= 0 and h < H and ww >= 0 and ww < W:
                            v = x[xbase + (c * H + h) * W + ww]   # coalesced along columns
                    x_tile[kk, x_cl] = v
                cuda.syncthreads()
                tile_product(w_tile, x_tile, acc, w_reg, x_reg, ty, tx)
                cuda.syncthreads()
            for a in range(REG):
                f = f0 + ty + TILE * a
                for q in range(REG):
                    col = c0 + tx + TILE * q
                    if f < F and col < NP:
                        n = col // P
                        v = acc[a, q]
                        if has_bias:
                            v += b[f]
                        acc[a, q] = v            # the stored value, for the statistics
                        out[(n * F + f) * P + (col - n * P)] = v
            if stats:
                # Batch norm's statistics straight from the registers (fused conv-BN layers),
                # so they need no pass over the output: per filter of this tile, the mean and
                # the sum of squared deviations of its ncol valid columns; bn_stats combines
                # the tiles (Chan et al.). The shared tiles are free after the k loop's sync.
                ncol = min(BLOCK_COLS, NP - c0)
                for a in range(REG):
                    s = dt(0)
                    for q in range(REG):
                        if tx + TILE * q < ncol:
                            s += acc[a, q]
                    w_tile[tx, ty + TILE * a] = s
                cuda.syncthreads()
                if tid < BLOCK_F:
                    s = dt(0)
                    for t in range(TILE):
                        s += w_tile[t, tid]
                    x_tile[0, tid] = s / dt(ncol)
                cuda.syncthreads()
                for a in range(REG):
                    m = x_tile[0, ty + TILE * a]
                    s = dt(0)
                    for q in range(REG):
                        if tx + TILE * q < ncol:
                            d = acc[a, q] - m
                            s += d * d
                    w_tile[tx, ty + TILE * a] = s
                cuda.syncthreads()
                if tid < BLOCK_F and f0 + tid < F:
                    s = dt(0)
                    for t in range(TILE):
                        s += w_tile[t, tid]
                    e = (c0 // BLOCK_COLS) * F + f0 + tid
                    tile_mean[e] = x_tile[0, tid]
                    tile_m2[e] = s
                cuda.syncthreads()
    return conv_forward


@kernel("conv_flip_weights", "AAiii")
def _make_conv_flip_weights(dt):
    def conv_flip_weights(w, wf, F, C, KK):
        # wf[c, f] = w[f, c] rotated by 180 degrees: for stride 1, dx is the forward
        # convolution of dout with wf (padding HH - 1 - pad), so it reuses conv_forward.
        for e in range(cuda.grid(1), F * C * KK, cuda.gridsize(1)):
            fc = e // KK
            f = fc // C
            wf[((fc - f * C) * F + f) * KK + (KK - 1 - (e - fc * KK))] = w[e]
    return conv_flip_weights


@kernel("conv_backward_dw", "AAAiiiiiiiiiiiii", shared_elems=2 * TILE * BLOCK_F)
def _make_conv_backward_dw(dt):
    def conv_backward_dw(x, dout, partial, N, C, H, W, F, HH, WW, stride, pad, Ho, Wo, splits, chunk):
        # dw[f, k] = sum over r = (n, p) of dout[n, f, p] * xcol[k, r]: the forward's
        # register-tiled GEMM with (f, k) as the output tile. The sum over r is cut into
        # ``splits`` chunks of ``chunk`` columns, so that small layers (few (f, k) tiles,
        # long sums) still fill the GPU. Each thread owns REG x REG elements of
        # partial[s] and sums its chunk itself, r ascending as in the reference: no
        # atomics; sum_splits adds the chunks in order (with one split, partial is dw).
        d_tile = cuda.shared.array((TILE, BLOCK_F), dt)      # d_tile[rr, fl] = dout at (f0 + fl, r0 + rr)
        x_tile = cuda.shared.array((TILE, BLOCK_COLS), dt)   # x_tile[rr, kl] = xcol[k0 + kl, r0 + rr]
        acc = cuda.local.array((REG, REG), dt)
        d_reg = cuda.local.array(REG, dt)
        x_reg = cuda.local.array(REG, dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TILE + tx
        KK = HH * WW
        K = C * KK
        P = Ho * Wo
        NP = N * P
        tiles_k = (K + BLOCK_COLS - 1) // BLOCK_COLS
        tiles_fk = tiles_k * ((F + BLOCK_F - 1) // BLOCK_F)
        d_rr = tid % TILE                 # dout loads: consecutive threads, consecutive r
        d_fl = tid // TILE
        x_kl = tid % BLOCK_COLS           # x loads: a fixed k per thread, rows spaced x_step
        x_rr = tid // BLOCK_COLS
        x_step = TILE * TILE // BLOCK_COLS
        for tile in range(cuda.blockIdx.x, tiles_fk * splits, cuda.gridDim.x):
            sp = tile // tiles_fk
            t = tile - sp * tiles_fk
            f0 = (t // tiles_k) * BLOCK_F
            k0 = (t % tiles_k) * BLOCK_COLS
            k = k0 + x_kl
            c = k // KK
            r = k - c * KK
            kh = r // WW
            kw = r - kh * WW
            r_end = min(NP, (sp + 1) * chunk)
            for a in range(REG):
                for q in range(REG):
                    acc[a, q] = dt(0)
            for r0 in range(sp * chunk, r_end, TILE):
                for e in range(REG):
                    f = f0 + d_fl + TILE * e
                    rr = r0 + d_rr
                    v = dt(0)
                    if f < F and rr < r_end:
                        n = rr // P
                        v = dout[(n * F + f) * P + (rr - n * P)]
                    d_tile[d_rr, d_fl + TILE * e] = v
                for e in range(BLOCK_COLS * TILE // (TILE * TILE)):
                    rl = x_rr + x_step * e
                    rr = r0 + rl
                    v = dt(0)
                    if k < K and rr < r_end:
                        n = rr // P
                        p = rr - n * P
                        i = p // Wo
                        h = i * stride - pad + kh
                        ww = (p - i * Wo) * stride - pad + kw
                        if h >= 0 and h < H and ww >= 0 and ww < W:
                            v = x[((n * C + c) * H + h) * W + ww]
                    x_tile[rl, x_kl] = v
                cuda.syncthreads()
                tile_product(d_tile, x_tile, acc, d_reg, x_reg, ty, tx)
                cuda.syncthreads()
            for a in range(REG):
                f = f0 + ty + TILE * a
                for q in range(REG):
                    kq = k0 + tx + TILE * q
                    if f < F and kq < K:
                        partial[(sp * F + f) * K + kq] = acc[a, q]
    return conv_backward_dw


@kernel("sum_splits", "AAii")
def _make_sum_splits(dt):
    def sum_splits(partial, out, splits, size):
        # out[e] = sum over s of partial[s, e], in order (deterministic)
        for e in range(cuda.grid(1), size, cuda.gridsize(1)):
            acc = dt(0)
            for sp in range(splits):
                acc += partial[sp * size + e]
            out[e] = acc
    return sum_splits


@kernel("conv_backward_dx", "AAAiiiiiiiiiii", shared_elems=DX_SMEM)
def _make_conv_backward_dx(dt):
    def conv_backward_dx(w, dout, dx, N, C, H, W, F, HH, WW, stride, pad, Ho, Wo):
        # Each thread owns one dx[n, c, h, w] and gathers from every output whose
        # window covers it: no scatter, no races. A block works on one channel c,
        # so the taps w[f0:f0+nf, c] are staged once in shared memory for all.
        taps = cuda.shared.array(DX_SMEM, dt)
        tid = cuda.threadIdx.x
        bs = cuda.blockDim.x
        KK = HH * WW
        HW = H * W
        NHW = N * HW
        P = Ho * Wo
        FC = DX_SMEM // KK                        # filters per chunk (the wrapper ensures >= 1)
        per_c = (NHW + bs - 1) // bs
        for tile in range(cuda.blockIdx.x, C * per_c, cuda.gridDim.x):
            c = tile // per_c
            e = (tile - c * per_c) * bs + tid
            valid = e < NHW
            n = e // HW
            h = (e - n * HW) // W
            wc = e - n * HW - h * W
            acc = dt(0)
            for f0 in range(0, F, FC):
                nf = min(FC, F - f0)
                for q in range(tid, nf * KK, bs):
                    fl = q // KK
                    taps[q] = w[((f0 + fl) * C + c) * KK + (q - fl * KK)]
                cuda.syncthreads()
                if valid:
                    # Summed in the reference's order (f, then output row i and column j
                    # ascending, i.e. kh and kw descending), so float32 rounding matches.
                    for fl in range(nf):
                        base = (n * F + f0 + fl) * P
                        for kh in range(HH - 1, -1, -1):
                            hi = h + pad - kh
                            if hi >= 0 and hi % stride == 0 and hi // stride < Ho:
                                row = base + (hi // stride) * Wo
                                for kw in range(WW - 1, -1, -1):
                                    wi = wc + pad - kw
                                    if wi >= 0 and wi % stride == 0 and wi // stride < Wo:
                                        acc += taps[fl * KK + kh * WW + kw] * dout[row + wi // stride]
                cuda.syncthreads()
            if valid:
                dx[(n * C + c) * HW + h * W + wc] = acc
    return conv_backward_dx


# --------------------------------------------------------------------------- max pool

@kernel("maxpool_forward", "AAIiiiiiiiii")
def _make_maxpool_forward(dt):
    def maxpool_forward(x, out, argmax, N, C, H, W, ph, pw, stride, Ho, Wo):
        # One thread per output; argmax keeps the first NaN of the window, else its
        # first maximum, in row-major window order, as an index into the (H, W) plane.
        total = N * C * Ho * Wo
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            plane = e // (Ho * Wo)
            q = e - plane * Ho * Wo
            i = q // Wo
            j = q - i * Wo
            base = plane * H * W
            best_at = (i * stride) * W + j * stride
            best = x[base + best_at]
            for k in range(ph):
                for l in range(pw):
                    at = (i * stride + k) * W + j * stride + l
                    v = x[base + at]
                    # v > best or v is NaN, unless best already is NaN (NaN propagates)
                    if not (v <= best) and best == best:
                        best = v
                        best_at = at
            out[e] = best
            argmax[e] = best_at
    return maxpool_forward


@device_function
def window_span(pos, p, stride, n_out):
    # The pooling windows (first, last) that contain input position pos along one
    # axis (windows of size p every stride, n_out of them): the dx gathers of max pool
    # and of the fused BN-ReLU-pool walk these.
    lo = 0
    if pos >= p:
        lo = (pos - p + stride) // stride
    return lo, min(pos // stride, n_out - 1)


@kernel("maxpool_backward", "AIAiiiiiiiii")
def _make_maxpool_backward(dt):
    def maxpool_backward(dout, argmax, dx, N, C, H, W, ph, pw, stride, Ho, Wo):
        # Each thread owns one dx element and gathers dout from the windows whose
        # maximum it is (windows overlap when stride < pool size): no races.
        total = N * C * H * W
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            plane = e // (H * W)
            at = e - plane * H * W
            h = at // W
            wc = at - h * W
            i_lo, i_hi = window_span(h, ph, stride, Ho)
            j_lo, j_hi = window_span(wc, pw, stride, Wo)
            acc = dt(0)
            for i in range(i_lo, i_hi + 1):
                for j in range(j_lo, j_hi + 1):
                    o = (plane * Ho + i) * Wo + j
                    if argmax[o] == at:
                        acc += dout[o]
            dx[e] = acc
    return maxpool_backward


# --------------------------------------------------------------------------- reductions

@device_function
def block_sum(sh, v, tid, bs):
    # The sum of every thread's v over the block (bs threads, a power of two <=
    # RED_THREADS), by a fixed tree in shared sh: deterministic. Every thread gets
    # the total; all threads of the block must call it (it synchronises).
    sh[tid] = v
    cuda.syncthreads()
    half = bs // 2
    while half > 0:
        if tid < half:
            sh[tid] += sh[tid + half]
        cuda.syncthreads()
        half //= 2
    total = sh[0]
    cuda.syncthreads()   # sh is written again only after every thread has read it
    return total


@kernel("channel_sums", "AAAAifAAAiii", shared_elems=RED_THREADS)
def _make_channel_sums(dt):
    def channel_sums(a, b, shift_a, shift_b, shifted, divisor, s_a, s_b, s_ab, N, C, L):
        # For arrays laid out (N, C, L): per channel c, with a' = a - shift_a[c] and
        # b' = b - shift_b[c] when ``shifted``, the sums of a', b' and a'*b', each
        # divided by ``divisor``. One block per channel; strided loads along L are
        # coalesced; then a tree reduction in shared memory (block size: power of 2).
        sh = cuda.shared.array(RED_THREADS, dt)
        tid = cuda.threadIdx.x
        bs = cuda.blockDim.x
        M = N * L
        for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
            oa = dt(0)
            ob = dt(0)
            if shifted:
                oa = shift_a[c]
                ob = shift_b[c]
            acc_a = dt(0)
            acc_b = dt(0)
            acc_ab = dt(0)
            for m in range(tid, M, bs):
                n = m // L
                idx = (n * C + c) * L + (m - n * L)
                va = a[idx] - oa
                vb = b[idx] - ob
                acc_a += va
                acc_b += vb
                acc_ab += va * vb
            acc_a = block_sum(sh, acc_a, tid, bs)
            acc_b = block_sum(sh, acc_b, tid, bs)
            acc_ab = block_sum(sh, acc_ab, tid, bs)
            if tid == 0:
                s_a[c] = acc_a / dt(divisor)
                s_b[c] = acc_b / dt(divisor)
                s_ab[c] = acc_ab / dt(divisor)
    return channel_sums


# --------------------------------------------------------------------------- batch norm

@kernel("bn_stats", "AAiiiAAAAAifffiii", shared_elems=RED_THREADS)
def _make_bn_stats(dt):
    def bn_stats(v, m2, has_m2, chunk, count, running_mean, running_var, mean, std, inv_std, train, eps,
                 momentum, one_minus_momentum, N, C, L):
        # Batch norm's per-channel statistics in one launch, one block per channel.
        # Entries v, laid out (N, C, L), are means of ``chunk`` values each (the last:
        # of the rest of ``count``), with sums of squared deviations m2 if has_m2.
        # A layer's input is chunk = 1 (two passes: the mean, then the centred
        # variance); the fused layers pass their conv's tile statistics (Chan et al.:
        # M2 = sum(m2 + n * (v - mean)^2)). Then the biased variance, std, 1/std and,
        # in train mode, the running statistics (1 - momentum comes from the host, so
        # float32 kernels do no float64 maths); test mode takes the running ones.
        sh = cuda.shared.array(RED_THREADS, dt)
        tid = cuda.threadIdx.x
        bs = cuda.blockDim.x
        M = N * L
        for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
            if train:
                acc = dt(0)
                for m in range(tid, M, bs):
                    n = m // L
                    acc += dt(min(chunk, count - m * chunk)) * v[(n * C + c) * L + (m - n * L)]
                mu = block_sum(sh, acc, tid, bs) / dt(count)
                acc = dt(0)
                for m in range(tid, M, bs):
                    n = m // L
                    idx = (n * C + c) * L + (m - n * L)
                    d = v[idx] - mu
                    if has_m2:
                        acc += m2[idx] + dt(min(chunk, count - m * chunk)) * (d * d)
                    else:
                        acc += d * d
                var = block_sum(sh, acc, tid, bs) / dt(count)
            else:
                mu = running_mean[c]
                var = running_var[c]
            if tid == 0:
                sd = math.sqrt(var + dt(eps))
                mean[c] = mu
                std[c] = sd
                inv_std[c] = dt(1) / sd
                if train:
                    running_mean[c] = dt(momentum) * running_mean[c] + dt(one_minus_momentum) * mu
                    running_var[c] = dt(momentum) * running_var[c] + dt(one_minus_momentum) * var
    return bn_stats


@kernel("bn_forward_apply", "AAAAAAAAiii")
def _make_bn_forward_apply(dt):
    def bn_forward_apply(x, mean, inv_std, gamma, beta, xc, xhat, out, total, C, L):
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            c = (e // L) % C
            v = x[e] - mean[c]
            xn = v * inv_std[c]
            xc[e] = v
            xhat[e] = xn
            out[e] = gamma[c] * xn + beta[c]
    return bn_forward_apply


BN_TEST, BN_STAGED, BN_ALT = 0, 1, 2


@kernel("bn_backward_sums", "AAAiAAAAiii", shared_elems=RED_THREADS)
def _make_bn_backward_sums(dt):
    def bn_backward_sums(dout, xhat, xc, staged, s_dout, s_dout_xhat, s_xc, s_dout_xc, N, C, L):
        # Every per-channel sum batch norm's backward needs, in one pass and one launch:
        # sum(dout) (dbeta), sum(dout * xhat) (dgamma) and, for the staged graph,
        # sum(xc) and sum(dout * xc). One block per channel, fixed trees.
        sh = cuda.shared.array(RED_THREADS, dt)
        tid = cuda.threadIdx.x
        bs = cuda.blockDim.x
        M = N * L
        for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
            a_d = dt(0)
            a_dh = dt(0)
            a_c = dt(0)
            a_dc = dt(0)
            for m in range(tid, M, bs):
                n = m // L
                idx = (n * C + c) * L + (m - n * L)
                d = dout[idx]
                a_d += d
                a_dh += d * xhat[idx]
                if staged:
                    v = xc[idx]
                    a_c += v
                    a_dc += d * v
            a_d = block_sum(sh, a_d, tid, bs)
            a_dh = block_sum(sh, a_dh, tid, bs)
            if staged:
                a_c = block_sum(sh, a_c, tid, bs)
                a_dc = block_sum(sh, a_dc, tid, bs)
            if tid == 0:
                s_dout[c] = a_d
                s_dout_xhat[c] = a_dh
                if staged:
                    s_xc[c] = a_c
                    s_dout_xc[c] = a_dc
    return bn_backward_sums


@kernel("bn_backward_apply", "AAAAAAAAAAAiiiii")
def _make_bn_backward_apply(dt):
    def bn_backward_apply(dout, xc, xhat, gamma, std, inv_std, s_dout, s_dout_xc, s_xc, s_dout_xhat,
                          dx, mode, M, total, C, L):
        # The per-channel sums come from channel_sums; each thread finishes one dx.
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            c = (e // L) % C
            g = gamma[c]
            inv = inv_std[c]
            dxhat = dout[e] * g
            if mode == BN_TEST:                  # the statistics are constants
                dx[e] = dxhat * inv
            elif mode == BN_STAGED:              # the reference's graph, node by node
                sd = std[c]
                dinv_std = g * s_dout_xc[c]
                dvar = dt(0.5) * (-dinv_std / (sd * sd)) / sd
                dxc = dxhat * inv + dt(2) * xc[e] * dvar / dt(M)
                # associated as the reference's sum(dxhat * inv_std): exact zeros stay zeros for N = 1
                dmu = -((s_dout[c] * g) * inv + dt(2) * dvar / dt(M) * s_xc[c])
                dx[e] = dxc + dmu / dt(M)
            else:                                # closed form
                dx[e] = inv / dt(M) * (dt(M) * dxhat - g * s_dout[c] - xhat[e] * (g * s_dout_xhat[c]))
    return bn_backward_apply


# --------------------------------------------------------------------------- fused conv - BN - ReLU [- pool]
# The conv output a (N, C, H, W) is normalised with the statistics of bn_stats,
# passed through ReLU and max-pooled in one kernel; without a pool the windows
# are 1x1 (ph = pw = stride = 1, Ho, Wo = H, W) and argmax is not written.

@kernel("bn_relu_pool", "AAAAAAIiiiiiiiiii")
def _make_bn_relu_pool(dt):
    def bn_relu_pool(a, mean, inv_std, gamma, beta, out, argmax, pool, N, C, H, W, ph, pw, stride, Ho, Wo):
        # One thread per output: the first maximum (row-major, strict '>') of
        # bn(a) over the window, or its first NaN (NaN propagates, as in max pool),
        # then ReLU (x <= 0 ? 0 : x, so NaN stays NaN); max(relu(v)) = relu(max(v)).
        # Where the maximum is not positive the recorded element may differ from the
        # unfused layers' but both get no gradient.
        total = N * C * Ho * Wo
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            plane = e // (Ho * Wo)
            c = plane % C
            q = e - plane * Ho * Wo
            i = q // Wo
            j = q - i * Wo
            base = plane * H * W
            mu = mean[c]
            inv = inv_std[c]
            g = gamma[c]
            bt = beta[c]
            best_at = (i * stride) * W + j * stride
            best = g * ((a[base + best_at] - mu) * inv) + bt
            for k in range(ph):
                for l in range(pw):
                    at = (i * stride + k) * W + j * stride + l
                    r = g * ((a[base + at] - mu) * inv) + bt
                    if not (r <= best) and best == best:   # r > best or r is NaN, unless best is
                        best = r
                        best_at = at
            out[e] = dt(0) if best <= dt(0) else best
            if pool:
                argmax[e] = best_at
    return bn_relu_pool


@kernel("bn_relu_pool_grad_sums", "AAAIAAAAAAAiiiiii", shared_elems=RED_THREADS)
def _make_bn_relu_pool_grad_sums(dt):
    def bn_relu_pool_grad_sums(dout, out, a, argmax, mean, inv_std, gamma, dgamma, dbeta, ga, gb, pool, train,
                               N, C, HW, Q):
        # Per channel, from the pooled arrays only: with dan = dout except where the
        # output is <= 0 (ReLU; NaN passes) (the gradient at bn's output, at each
        # window's maximum),
        # dbeta = sum(dan), dgamma = sum(dan * xhat); then batch norm's closed-form
        # input gradient per channel, da = gamma/std * dan - ga - xhat * gb, with
        # ga = gamma/std * dbeta / M, gb = gamma/std * dgamma / M (zero in test mode).
        sh = cuda.shared.array(RED_THREADS, dt)
        tid = cuda.threadIdx.x
        bs = cuda.blockDim.x
        M = N * Q
        for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
            mu = mean[c]
            inv = inv_std[c]
            sb = dt(0)
            sg = dt(0)
            for m in range(tid, M, bs):
                n = m // Q
                o = (n * C + c) * Q + (m - n * Q)
                if not (out[o] <= dt(0)):
                    p = argmax[o] if pool else m - n * Q
                    d = dout[o]
                    sb += d
                    sg += d * ((a[(n * C + c) * HW + p] - mu) * inv)
            sb = block_sum(sh, sb, tid, bs)
            sg = block_sum(sh, sg, tid, bs)
            if tid == 0:
                dbeta[c] = sb
                dgamma[c] = sg
                gi = gamma[c] * inv / dt(N * HW)
                ga[c] = gi * sb if train else dt(0)
                gb[c] = gi * sg if train else dt(0)
    return bn_relu_pool_grad_sums


@kernel("bn_relu_pool_backward", "AAAIAAAAAAiiiiiiiiiii")
def _make_bn_relu_pool_backward(dt):
    def bn_relu_pool_backward(dout, out, a, argmax, mean, inv_std, gamma, ga, gb, da, pool, train, N, C, H, W, ph,
                              pw, stride, Ho, Wo):
        # da, the gradient at the conv output: one thread per element, gathering
        # dout from the windows whose maximum it is where ReLU passed; no races. In
        # test mode the statistics are constants: no -ga - xhat * gb term (so an
        # infinite xhat gives no 0 * inf).
        HW = H * W
        for e in range(cuda.grid(1), N * C * HW, cuda.gridsize(1)):
            plane = e // HW
            c = plane % C
            at = e - plane * HW
            inv = inv_std[c]
            gi = gamma[c] * inv
            v = dt(0)
            if train:
                v = -ga[c] - ((a[e] - mean[c]) * inv) * gb[c]
            if pool:
                h = at // W
                wc = at - h * W
                i_lo, i_hi = window_span(h, ph, stride, Ho)
                j_lo, j_hi = window_span(wc, pw, stride, Wo)
                for i in range(i_lo, i_hi + 1):
                    for j in range(j_lo, j_hi + 1):
                        o = (plane * Ho + i) * Wo + j
                        if argmax[o] == at and not (out[o] <= dt(0)):
                            v += gi * dout[o]
            elif not (out[e] <= dt(0)):
                v += gi * dout[e]
            da[e] = v
    return bn_relu_pool_backward


# --------------------------------------------------------------------------- linear, relu, softmax

@kernel("matmul", "AAAAiiiiiiii", shared_elems=2 * TILE * TILE)
def _make_matmul(dt):
    def matmul(A, B, out, bias, has_bias, M, Nc, K, sam, sak, sbk, sbn):
        # out[m, n] = sum_k A[m*sam + k*sak] * B[k*sbk + n*sbn] (+ bias[n]); the
        # strides express transposes without copies. Shared-memory tiled.
        a_tile = cuda.shared.array((TILE, TILE), dt)
        b_tile = cuda.shared.array((TILE, TILE), dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tiles_n = (Nc + TILE - 1) // TILE
        ntiles = tiles_n * ((M + TILE - 1) // TILE)
        for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
            m = (tile // tiles_n) * TILE + ty
            n = (tile % tiles_n) * TILE + tx
            acc = dt(0)
            for k0 in range(0, K, TILE):
                k = k0 + tx
                v = dt(0)
                if m < M and k < K:
                    v = A[m * sam + k * sak]
                a_tile[ty, tx] = v
                k = k0 + ty
                v = dt(0)
                if n < Nc and k < K:
                    v = B[k * sbk + n * sbn]
                b_tile[ty, tx] = v
                cuda.syncthreads()
                for q in range(TILE):
                    acc += a_tile[ty, q] * b_tile[q, tx]
                cuda.syncthreads()
            if m < M and n < Nc:
                if has_bias:
                    acc += bias[n]
                out[m * Nc + n] = acc
    return matmul


@kernel("relu_forward", "AAi")
def _make_relu_forward(dt):
    def relu_forward(x, out, total):
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            v = x[e]
            out[e] = dt(0) if v <= dt(0) else v   # NaN propagates (as PyTorch): NaN <= 0 is false
    return relu_forward


@kernel("relu_backward", "AAAi")
def _make_relu_backward(dt):
    def relu_backward(x, dout, dx, total):
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            dx[e] = dt(0) if x[e] <= dt(0) else dout[e]   # the gradient passes at NaN, as forward does
    return relu_backward


@device_function
def row_log_sum_exp(x, base, C):
    """(top, log_total) of the scores x[base:base + C]: their max, and the log of the sum of
    exp(score - max) (shifted by the max so exp never overflows); log p_c = x_c - top - log_total."""
    top = x[base]
    for c in range(1, C):
        top = max(top, x[base + c])
    total = math.exp(x[base] - top)
    for c in range(1, C):
        total += math.exp(x[base + c] - top)
    return top, math.log(total)


@kernel("softmax_loss_rows", "ALAAii")
def _make_softmax_loss_rows(dt):
    def softmax_loss_rows(x, y, dx, loss, N, C):
        # One thread per row: shift by the row max so exp never overflows.
        for row in range(cuda.grid(1), N, cuda.gridsize(1)):
            base = row * C
            top, log_total = row_log_sum_exp(x, base, C)
            label = y[row]
            loss[row] = -(x[base + label] - top - log_total)
            for c in range(C):
                p = math.exp(x[base + c] - top - log_total)
                if c == label:
                    p -= dt(1)
                dx[base + c] = p / dt(N)
    return softmax_loss_rows


# The training kernels register themselves in TRAINING_KERNELS (they use this module's helpers).
from . import train_kernels  # noqa: E402,F401
