"""Batch norm and spatial batch norm, both on a (N, C, P) view.

Plain batch norm (N, D) is the P = 1 case; spatial batch norm (N, C, H, W) has
P = H*W, so both normalise per channel over N*P values and no transpose is
needed. Where rows (P) are at least MIN_ROW long, every pass walks x in memory
order, parallel over fixed blocks of images (``_image_blocks``: a block's size
depends on the shape only, never on the thread count): a block owns its rows of
the output and its partial sums per channel, which a serial step adds up block
by block in a fixed order. (Walking one channel at a time reads rows of P
elements scattered C*P apart: ~3x slower for the same sums, as the hardware
prefetcher cannot follow it.) Shorter rows, plain batch norm included, take the
flat kernels: each image is one row of C*P elements, summed four images at a
time into per-element accumulators per block of images (balanced blocks, the
same fixed order); only small
work (under FLAT_MIN_WORK elements, run on one thread) takes the per-channel
kernels at the end, one channel per iteration.
Sums are accumulated in float64 in vector partial sums (fastmath "reassoc" only,
see _REORDER) whose order the compiled code fixes, so float32 results are
accurate and repeatable on any thread count; the flat kernels first add four
images' terms of an element in x's dtype (at most three roundings, see there).

The variance stays centred (no one-pass E[x^2] - E[x]^2): each block sums its
squares about its own mean, in a second walk over the block while it is still in
cache, and the blocks are combined exactly (Chan et al.: plus n_b (m_b - mu)^2 and
the block's residual sum 2 (m_b - mu) sum(x - m_b); m_b as x's dtype holds it in
the flat kernels). Backward sums dout and dout*xhat in one pass, then writes dx.
The normalised input xhat is not stored: backward recomputes it from x with the
forward's expression (the flat kernels' sums: in x's dtype), which saves a
full-size write per forward pass. The elementwise outputs are computed in
float64, except the flat kernels' dx: the same expression regrouped to four
constants per element, computed in x's dtype.
"""
import numpy as np
from numba import njit, prange

from ..checks import batchnorm_params, check_dout
from ._blas import SMALL_WORK, kernel_threads


# Reductions may be reordered (so LLVM vectorises them into partial sums) but nothing else: no
# "nnan"/"ninf", so NaN and inf propagate as without fastmath. Only the sums get these flags;
# the elementwise outputs keep their exact expressions. The order is fixed by the compiled code,
# so results do not depend on the thread count.
_REORDER = {"reassoc"}

# Images per block: as many as fit in this many bytes of x (at least one), so that the forward's
# second walk over a block (the squares about its mean) finds it in L2.
BLOCK_BYTES = 1 << 17
# The same for the flat kernels (short rows): their per-block cost is a sum per channel of K = C*P
# accumulators, so larger blocks pay off (4x4 maps, fwd+bwd on 1 thread: 1 << 20 measured 0-5%
# faster than 1 << 19, which was 15-20% faster than 1 << 17)
FLAT_BLOCK_BYTES = 1 << 20
# ... but at least this many blocks where N allows, all of equal size but the last, so that two or
# four threads get equal shares (unequal blocks left one of two threads idle a third of the time)
FLAT_MIN_BLOCKS = 4
# Rows (H*W) shorter than this take the flat kernels below: streaming rows of a few elements
# costs a call and a short loop each (plain batch norm, P = 1: measured 4-6x slower). 8x8 maps
# (P = 64) too: fwd+bwd float32, 2 threads, turns, the flat kernels took 0.71-0.73x the streaming
# ones' time on (256,256,8,8), (128,96,8,8), (128,48,8,8) (2026-12-01); on 16x16 maps they were
# level (0.95-1.11x) and on 32x32 slower (1.2x), so rows of 128 and more stream
MIN_ROW = 128
# Short rows take the flat kernels from this many elements of x on; below it, the per-channel
# kernels (one thread: kernel_threads runs such small work serially anyway)
FLAT_MIN_WORK = SMALL_WORK


def _image_blocks(x3, flat):
    """Images per block for x3 (N, C, P): a function of the shape only. Flat blocks are balanced
    (equal but for the last) and at least FLAT_MIN_BLOCKS where N allows, so threads get equal shares."""
    N, C, P = x3.shape
    row = max(1, C * P * x3.itemsize)
    if not flat:
        return max(1, min(N, BLOCK_BYTES // row))
    blocks = min(N, max(FLAT_MIN_BLOCKS, -(-N * row // FLAT_BLOCK_BYTES)))
    return -(-N // blocks)


@njit(cache=True)
def _sum_blocks(T):
    """Column sums of T (blocks, C), the blocks added in order (np.cumsum did the same, ~0.1 ms slower)."""
    s = np.zeros(T.shape[1])
    for b in range(T.shape[0]):
        for c in range(T.shape[1]):
            s[c] += T[b, c]
    return s


@njit(fastmath=_REORDER, cache=True)
def _row_sum(r):
    s = 0.0
    for p in range(np.uint64(r.size)):
        s += r[p]
    return s


@njit(fastmath=_REORDER, cache=True)
def _row_dev(r, m):
    """(sum of r - m, sum of (r - m)**2) in float64."""
    s = 0.0
    s2 = 0.0
    for p in range(np.uint64(r.size)):
        d = r[p] - m
        s += d
        s2 += d * d
    return s, s2


@njit(fastmath=_REORDER, cache=True)
def _row_grad_sums(d, r, mu, inv, g, staged):
    """(sum of dout, sum of dout * xhat, and when staged sum of dout * g * (x - mu), else 0) over
    one row, xhat with forward's exact expression. Two loops so neither tests staged per element."""
    sb = 0.0
    sg = 0.0
    sxc = 0.0
    if staged:
        for p in range(np.uint64(r.size)):
            dp = np.float64(d[p])
            xc = r[p] - mu
            sb += dp
            sg += dp * (xc * inv)
            sxc += dp * g * xc
    else:
        for p in range(np.uint64(r.size)):
            dp = np.float64(d[p])
            sb += dp
            sg += dp * ((r[p] - mu) * inv)
    return sb, sg, sxc


@njit(parallel=True, cache=True)
def _block_stats(x, per, S, D, Q, Mc):
    # per block b and channel c: S = sum of x, and about the block's mean Mc = m = S / count,
    # D = sum of x - m and Q = sum of (x - m)**2 (the second walk finds the block in cache)
    N, C, P = x.shape
    for b in prange(S.shape[0]):
        n0 = b * per
        n1 = min(N, n0 + per)
        for c in range(C):
            S[b, c] = 0.0
            D[b, c] = 0.0
            Q[b, c] = 0.0
        for n in range(n0, n1):
            for c in range(C):
                S[b, c] += _row_sum(x[n, c])
        for c in range(C):
            Mc[b, c] = S[b, c] / ((n1 - n0) * P)
        for n in range(n0, n1):
            for c in range(C):
                s, s2 = _row_dev(x[n, c], Mc[b, c])
                D[b, c] += s
                Q[b, c] += s2


@njit(cache=True)
def _combine_stats(S, D, Q, Mc, per, N, P, mean, var):
    # block by block in order: mean = sum / M; var = sum over blocks of
    # Q + 2 (m - mu) D + n (m - mu)**2, the squares about mu exactly regrouped (m = Mc, the
    # centre D and Q were taken about: any centre is exact, the block's mean keeps them small)
    C = S.shape[1]
    M = N * P
    for c in range(C):
        s = 0.0
        for b in range(S.shape[0]):
            s += S[b, c]
        mu = s / M
        q = 0.0
        for b in range(S.shape[0]):
            nb = (min(N, (b + 1) * per) - b * per) * P
            e = Mc[b, c] - mu
            q += Q[b, c] + 2.0 * e * D[b, c] + nb * e * e
        mean[c] = mu
        var[c] = q / M


@njit(parallel=True, cache=True)
def _bn_apply(x, per, mu, inv, g, bt, out):
    # out = g * ((x - mu) * inv) + bt, constants per channel in float64
    N, C, P = x.shape
    for b in prange((N + per - 1) // per):
        for n in range(b * per, min(N, (b + 1) * per)):
            for c in range(C):
                r, o = x[n, c], out[n, c]
                m, iv, gc, bc = mu[c], inv[c], g[c], bt[c]
                for p in range(np.uint64(P)):
                    o[p] = gc * ((r[p] - m) * iv) + bc


@njit(parallel=True, cache=True)
def _block_grad_sums(dout, x, per, mu, inv, g, staged, SB, SG, SX):
    N, C, P = x.shape
    for b in prange(SB.shape[0]):
        for c in range(C):
            SB[b, c] = 0.0
            SG[b, c] = 0.0
            SX[b, c] = 0.0
        for n in range(b * per, min(N, (b + 1) * per)):
            for c in range(C):
                sb, sg, sxc = _row_grad_sums(dout[n, c], x[n, c], mu[c], inv[c], g[c], staged)
                SB[b, c] += sb
                SG[b, c] += sg
                SX[b, c] += sxc


@njit(parallel=True, cache=True)
def _bn_dx(dout, x, per, mode, mu, inv, g, a, bb, dvar, dx, SD):
    # mode 0 (test): dx = dout * g * inv, the statistics being constants; 1 (staged, first step):
    # dx = dout * g * inv + 2 (x - mu) dvar / M, and SD[b, c] = the block's sum of the stored dx;
    # 2 (closed form): dx = inv / M * (M * (dout * g) - a - xhat * bb)
    N, C, P = x.shape
    M = N * P
    for b in prange((N + per - 1) // per):
        for c in range(C):
            SD[b, c] = 0.0
        for n in range(b * per, min(N, (b + 1) * per)):
            for c in range(C):
                d, r, o = dout[n, c], x[n, c], dx[n, c]
                m, iv, gc, ac, bc, dv = mu[c], inv[c], g[c], a[c], bb[c], dvar[c]
                if mode == 0:
                    for p in range(np.uint64(P)):
                        o[p] = d[p] * gc * iv
                elif mode == 1:
                    for p in range(np.uint64(P)):
                        o[p] = d[p] * gc * iv + 2.0 * (r[p] - m) * dv / M
                    SD[b, c] += _row_sum(o)   # the stored (dtype-rounded) values, as the graph sees them
                else:
                    for p in range(np.uint64(P)):
                        h = (r[p] - m) * iv
                        o[p] = iv / M * (M * (d[p] * gc) - ac - h * bc)


@njit(parallel=True, cache=True)
def _bn_add(dx, per, shift):
    # the staged backward's last step: dx = dx + shift[c] (= dmu / M)
    N, C, P = dx.shape
    for b in prange((N + per - 1) // per):
        for n in range(b * per, min(N, (b + 1) * per)):
            for c in range(C):
                o = dx[n, c]
                sh = shift[c]
                for p in range(np.uint64(P)):
                    o[p] = o[p] + sh


# --- short rows (P < MIN_ROW): each image is one flat row of K = C*P elements, walked in memory
# order; the sums go into per-element float64 accumulators (K of them per block of images), summed
# per channel once per block. A short row streamed on its own costs a call and a horizontal sum per
# image; the per-channel kernels below read one cache line per row, C*P apart (measured: 4x4 maps
# 1.6-1.8x, (N, D) 3-5x slower). The sums take four images at a time: the four terms of an element
# are added in x's dtype (float32: 8 lanes a vector), pairwise, and only that partial sum goes into
# the float64 accumulator, which is loaded and stored once per four images instead of once per image
# (4x4 maps, float32: the sums measured ~40% faster, float64 ~35%). A float32 partial sum of four
# terms carries at most three roundings (relative 2e-7 of the terms' magnitudes); the variance's
# terms are squares about the block's mean (as x's dtype holds it), so no cancellation.
# Per-channel constants are expanded to per-element vectors inside the kernels (_expand), so P = 1
# vectorises too and the wrapper makes no copies per call.


@njit(cache=True)
def _expand(v, P, out):
    """out[c*P + p] = v[c] (cast to out's dtype): a per-channel constant as a per-element vector."""
    for c in range(v.size):
        for p in range(P):
            out[c * P + p] = v[c]
    return out


@njit(parallel=True, cache=True)
def _flat_stats(x, P, per, S, D, Q, Mc):
    # x (N, K); per block b and channel c: S = sum of x, Mc = the block's mean m as x's dtype holds
    # it, and about m: D = sum of x - m and Q = sum of (x - m)**2 (the second walk finds the block
    # in cache)
    N, K = x.shape
    C = K // P
    for b in prange(S.shape[0]):
        n0 = b * per
        n1 = min(N, n0 + per)
        cnt = (n1 - n0) * P
        acc = np.zeros(K)
        n = n0
        while n + 4 <= n1:
            r0, r1, r2, r3 = x[n], x[n + 1], x[n + 2], x[n + 3]
            for i in range(K):
                acc[i] += (r0[i] + r1[i]) + (r2[i] + r3[i])
            n += 4
        for n4 in range(n, n1):   # the block's last images, one at a time
            r = x[n4]
            for i in range(K):
                acc[i] += r[i]
        mv = np.empty_like(x[0])
        for c in range(C):
            s = _row_sum(acc[c * P:(c + 1) * P])
            S[b, c] = s
            mv[c * P:(c + 1) * P] = s / cnt
            Mc[b, c] = mv[c * P]
        acc[:] = 0.0
        acc2 = np.zeros(K)
        n = n0
        while n + 4 <= n1:
            r0, r1, r2, r3 = x[n], x[n + 1], x[n + 2], x[n + 3]
            for i in range(K):
                m = mv[i]
                d0 = r0[i] - m
                d1 = r1[i] - m
                d2 = r2[i] - m
                d3 = r3[i] - m
                acc[i] += (d0 + d1) + (d2 + d3)
                acc2[i] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            n += 4
        for n4 in range(n, n1):   # the block's last images, one at a time
            r = x[n4]
            for i in range(K):
                d0 = r[i] - mv[i]
                acc[i] += d0
                acc2[i] += d0 * d0
        for c in range(C):
            D[b, c] = _row_sum(acc[c * P:(c + 1) * P])
            Q[b, c] = _row_sum(acc2[c * P:(c + 1) * P])


@njit(parallel=True, cache=True)
def _flat_apply(x, P, per, mu, inv, g, bt, out):
    # out = g * ((x - mu) * inv) + bt, the constants per channel in float64; four images at a
    # time, so each element's constants are loaded once per four (measured ~40% faster on 4x4 maps)
    N, K = x.shape
    for b in prange((N + per - 1) // per):
        mv, iv = _expand(mu, P, np.empty(K)), _expand(inv, P, np.empty(K))
        gv, bv = _expand(g, P, np.empty(K)), _expand(bt, P, np.empty(K))
        n1 = min(N, (b + 1) * per)
        n = b * per
        while n + 4 <= n1:
            r0, r1, r2, r3 = x[n], x[n + 1], x[n + 2], x[n + 3]
            o0, o1, o2, o3 = out[n], out[n + 1], out[n + 2], out[n + 3]
            for i in range(K):
                m, v, gc, bc = mv[i], iv[i], gv[i], bv[i]
                o0[i] = gc * ((r0[i] - m) * v) + bc
                o1[i] = gc * ((r1[i] - m) * v) + bc
                o2[i] = gc * ((r2[i] - m) * v) + bc
                o3[i] = gc * ((r3[i] - m) * v) + bc
            n += 4
        for n4 in range(n, n1):   # the block's last images, one at a time
            r, o = x[n4], out[n4]
            for i in range(K):
                o[i] = gv[i] * ((r[i] - mv[i]) * iv[i]) + bv[i]


@njit(parallel=True, cache=True)
def _flat_grad_sums(dout, x, P, per, mu, inv, g, staged, SB, SG, SX):
    # per block and channel: sum of dout, of dout * xhat and, when staged, of dout * g * (x - mu);
    # xhat = (x - mu) * inv in x's dtype (float32: mu is the stored mean, inv rounded once)
    N, K = x.shape
    C = K // P
    for b in prange(SB.shape[0]):
        n0 = b * per
        n1 = min(N, n0 + per)
        mv, iv, gv = _expand(mu, P, np.empty_like(x[0])), _expand(inv, P, np.empty_like(x[0])), _expand(g, P, np.empty_like(x[0]))
        ab = np.zeros(K)
        ag = np.zeros(K)
        ax = np.zeros(K if staged else 0)
        n = n0
        while n + 4 <= n1:
            d0, d1, d2, d3 = dout[n], dout[n + 1], dout[n + 2], dout[n + 3]
            r0, r1, r2, r3 = x[n], x[n + 1], x[n + 2], x[n + 3]
            if staged:
                for i in range(K):
                    m = mv[i]
                    c0, c1, c2, c3 = r0[i] - m, r1[i] - m, r2[i] - m, r3[i] - m
                    e0, e1, e2, e3 = d0[i], d1[i], d2[i], d3[i]
                    ab[i] += (e0 + e1) + (e2 + e3)
                    ag[i] += (e0 * (c0 * iv[i]) + e1 * (c1 * iv[i])) + (e2 * (c2 * iv[i]) + e3 * (c3 * iv[i]))
                    ax[i] += (e0 * gv[i] * c0 + e1 * gv[i] * c1) + (e2 * gv[i] * c2 + e3 * gv[i] * c3)
            else:
                for i in range(K):
                    m = mv[i]
                    v = iv[i]
                    e0, e1, e2, e3 = d0[i], d1[i], d2[i], d3[i]
                    ab[i] += (e0 + e1) + (e2 + e3)
                    ag[i] += (e0 * ((r0[i] - m) * v) + e1 * ((r1[i] - m) * v)) + (e2 * ((r2[i] - m) * v)
                                                                                 + e3 * ((r3[i] - m) * v))
            n += 4
        for n4 in range(n, n1):
            d, r = dout[n4], x[n4]
            for i in range(K):
                c0 = r[i] - mv[i]
                ab[i] += d[i]
                ag[i] += d[i] * (c0 * iv[i])
            if staged:
                for i in range(K):
                    ax[i] += d[i] * gv[i] * (r[i] - mv[i])
        for c in range(C):
            SB[b, c] = _row_sum(ab[c * P:(c + 1) * P])
            SG[b, c] = _row_sum(ag[c * P:(c + 1) * P])
            SX[b, c] = _row_sum(ax[c * P:(c + 1) * P]) if staged else 0.0


@njit(parallel=True, cache=True)
def _flat_dx(dout, x, P, per, mode, A, mu, H, Cc, dx, SD):
    # dx = dout * A, and unless mode 0 (test: the statistics are constants, x is not read)
    # + (x - mu) * H + Cc, constants per channel in float64: the staged and closed forms of
    # _bn_dx regrouped so that each element needs four constants (mode 1: H = 2 dvar / M, Cc = 0;
    # mode 2: A = g inv, H = -g sum(dout xhat) inv**2 / M, Cc = -g sum(dout) inv / M), loaded once
    # per four images as in _flat_apply, and computed in x's dtype (float32: 8 lanes a vector, no
    # conversions; measured ~25% faster than float64 on 4x4 maps, a few float32 roundings per
    # element, as PyTorch and the reference). Mode 1 also sums the stored dx per block into SD
    N, K = x.shape
    C = K // P
    for b in prange(SD.shape[0]):
        av, mv = _expand(A, P, np.empty_like(x[0])), _expand(mu, P, np.empty_like(x[0]))
        hv, cv = _expand(H, P, np.empty_like(x[0])), _expand(Cc, P, np.empty_like(x[0]))
        acc = np.zeros(K if mode == 1 else 0)
        n1 = min(N, (b + 1) * per)
        n = b * per
        while n + 4 <= n1:
            d0, d1, d2, d3 = dout[n], dout[n + 1], dout[n + 2], dout[n + 3]
            o0, o1, o2, o3 = dx[n], dx[n + 1], dx[n + 2], dx[n + 3]
            if mode == 0:
                for i in range(K):
                    a = av[i]
                    o0[i] = d0[i] * a
                    o1[i] = d1[i] * a
                    o2[i] = d2[i] * a
                    o3[i] = d3[i] * a
            else:
                r0, r1, r2, r3 = x[n], x[n + 1], x[n + 2], x[n + 3]
                for i in range(K):
                    a, m, h, c = av[i], mv[i], hv[i], cv[i]
                    o0[i] = d0[i] * a + (r0[i] - m) * h + c
                    o1[i] = d1[i] * a + (r1[i] - m) * h + c
                    o2[i] = d2[i] * a + (r2[i] - m) * h + c
                    o3[i] = d3[i] * a + (r3[i] - m) * h + c
                if mode == 1:   # the stored (dtype-rounded) values, as the graph sees them
                    for i in range(K):
                        acc[i] += (o0[i] + o1[i]) + (o2[i] + o3[i])
            n += 4
        for n4 in range(n, n1):   # the block's last images, one at a time
            d, r, o = dout[n4], x[n4], dx[n4]
            if mode == 0:
                for i in range(K):
                    o[i] = d[i] * av[i]
            else:
                for i in range(K):
                    o[i] = d[i] * av[i] + (r[i] - mv[i]) * hv[i] + cv[i]
                if mode == 1:
                    for i in range(K):
                        acc[i] += o[i]
        for c in range(C):
            SD[b, c] = _row_sum(acc[c * P:(c + 1) * P]) if mode == 1 else 0.0


@njit(parallel=True, cache=True)
def _flat_add(dx, P, per, shift):
    # the staged backward's last step: dx = dx + shift[c] (= dmu / M), four images at a time
    N, K = dx.shape
    for b in prange((N + per - 1) // per):
        sv = _expand(shift, P, np.empty(K))
        n1 = min(N, (b + 1) * per)
        n = b * per
        while n + 4 <= n1:
            o0, o1, o2, o3 = dx[n], dx[n + 1], dx[n + 2], dx[n + 3]
            for i in range(K):
                s = sv[i]
                o0[i] = o0[i] + s
                o1[i] = o1[i] + s
                o2[i] = o2[i] + s
                o3[i] = o3[i] + s
            n += 4
        for n4 in range(n, n1):
            o = dx[n4]
            for i in range(K):
                o[i] = o[i] + sv[i]


# --- per-channel kernels: one channel per iteration (small work only, see FLAT_MIN_WORK)

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
def _bn_forward_channels(x, gamma, beta, eps, train, mean, var, std, out):
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
def _bn_backward_channels(dout, x, mean, std, gamma, train, staged, dx, dgamma, dbeta):
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
    out = np.empty_like(x3)
    P = x3.shape[2]
    if P < MIN_ROW and x3.size < FLAT_MIN_WORK:
        std = np.empty(C, x.dtype)
        with kernel_threads(x3.size):
            _bn_forward_channels(x3, np.ascontiguousarray(gamma), np.ascontiguousarray(beta), eps, train, mean, var,
                                 std, out)
        return _finish_forward(x, x3, out, train, mean, var, std, gamma, running_mean, running_var, momentum, bn_param)
    flat = P < MIN_ROW
    per = _image_blocks(x3, flat)
    x2 = x3.reshape(N, -1)
    with kernel_threads(x3.size):
        if train:
            S, D, Q, Mc = (np.empty(((N + per - 1) // per, C)) for _ in range(4))
            if flat:
                _flat_stats(x2, P, per, S, D, Q, Mc)
            else:
                _block_stats(x3, per, S, D, Q, Mc)
            _combine_stats(S, D, Q, Mc, per, N, P, mean, var)   # stored in x's dtype, used so
        # per channel, in float64: as the dtype stores them, std rounded only where it is stored
        sd = np.sqrt(var.astype(np.float64) + eps)
        std = sd.astype(x.dtype)
        consts = (mean.astype(np.float64), 1.0 / sd, np.asarray(gamma, np.float64), np.asarray(beta, np.float64))
        if flat:
            _flat_apply(x2, P, per, *consts, out.reshape(N, -1))
        else:
            _bn_apply(x3, per, *consts, out)
    return _finish_forward(x, x3, out, train, mean, var, std, gamma, running_mean, running_var, momentum, bn_param)


def _finish_forward(x, x3, out, train, mean, var, std, gamma, running_mean, running_var, momentum, bn_param):
    if train:  # C elements: a plain NumPy update, the same expression as the reference
        bn_param["running_mean"] = (momentum * running_mean + (1 - momentum) * mean).astype(x.dtype)
        bn_param["running_var"] = (momentum * running_var + (1 - momentum) * var).astype(x.dtype)
    return out.reshape(x.shape), (train, x3, mean, std, np.ascontiguousarray(gamma), x.shape)


def _backward(dout, cache, layer, staged):
    train, x3, mean, std, gamma, shape = cache
    check_dout(dout, shape, x3.dtype, layer)
    d3 = np.ascontiguousarray(dout).reshape(x3.shape)
    N, C, P = x3.shape
    M = N * P
    dx = np.empty_like(x3)
    if P < MIN_ROW and x3.size < FLAT_MIN_WORK:
        dgamma, dbeta = np.empty(C, x3.dtype), np.empty(C, x3.dtype)
        with kernel_threads(x3.size):
            _bn_backward_channels(d3, x3, mean, std, gamma, train, staged, dx, dgamma, dbeta)
        return dx.reshape(shape), dgamma, dbeta
    flat = P < MIN_ROW
    per = _image_blocks(x3, flat)
    B = (N + per - 1) // per
    g = gamma.astype(np.float64)
    sd = std.astype(np.float64)
    inv = 1.0 / sd
    mu = mean.astype(np.float64)
    SB, SG, SX, SD = (np.empty((B, C)) for _ in range(4))
    d2, x2, dx2 = d3.reshape(N, -1), x3.reshape(N, -1), dx.reshape(N, -1)

    def dx_pass(mode, a, bb, dvar):
        if flat:   # the same dx regrouped: dout * A + (x - mu) * H + Cc (see _flat_dx)
            _flat_dx(d2, x2, P, per, mode, g * inv, mu, 2.0 * dvar / M - bb * inv * inv / M, -a * inv / M, dx2, SD)
        else:
            _bn_dx(d3, x3, per, mode, mu, inv, g, a, bb, dvar, dx, SD)

    with kernel_threads(x3.size):
        if flat:
            _flat_grad_sums(d2, x2, P, per, mu, inv, g, staged and train, SB, SG, SX)
        else:
            _block_grad_sums(d3, x3, per, mu, inv, g, staged and train, SB, SG, SX)
        sb, sg, sxc = _sum_blocks(SB), _sum_blocks(SG), _sum_blocks(SX)
        zero = np.zeros(C)
        if not train:  # the statistics are constants
            dx_pass(0, zero, zero, zero)
        elif staged:
            # backprop node by node, as the reference's backward: xhat = xc * inv_std,
            # inv_std = 1/std, std = sqrt(var + eps), var = mean(xc**2), xc = x - mu
            dstd = -sxc / (sd * sd)
            dvar = 0.5 * dstd / sd
            dx_pass(1, zero, zero, dvar)
            dmu = -_sum_blocks(SD)
            if flat:
                _flat_add(dx2, P, per, dmu / M)
            else:
                _bn_add(dx, per, dmu / M)
        else:
            # closed form: dx = inv_std/M * (M*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))
            dx_pass(2, g * sb, g * sg, zero)
    return dx.reshape(shape), sg.astype(x3.dtype), sb.astype(x3.dtype)


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
