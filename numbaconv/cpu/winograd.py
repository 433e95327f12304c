"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution for 3x3 stride-1 layers: forward, dx and dw.

Each m x m output tile (m = 2 or 4) is computed from an n x n input tile (n = m + 2) as
``Y = A^T [(G w G^T) * (B^T d B)] A`` (Lavin & Gray 2016): n*n products per tile and channel pair
instead of 9*m*m (2.25x fewer for F(2x2), 4x for F(4x4)). Over a block of images the products are
n*n GEMMs, one per position xi of the transformed tile: ``M[xi] (F, tiles) = U[xi] (F, C) @ V[xi]
(C, tiles)``, with U the transformed weights and V the transformed input tiles (``tiles`` = every
tile of the block's images, so each GEMM is wide enough to run near the BLAS's speed even on 4x4
maps). The tile size is U's: n*n = 16 or 36 positions; ``tile_size`` picks it per layer.

Backward stays in the transformed domain (every step below is the exact adjoint of one of
forward's, so the results are the gradients of the function forward computes):
``dM = A dY A^T`` per tile, then ``dU[xi] += dM[xi] @ V[xi]^T`` (dw = G^T dU G) and
``dV[xi] = U[xi]^T @ dM[xi]``, whose tiles are added back onto the (overlapping) input
positions (``B dV B^T``). dw and dx thus share one input transform and one dout transform.

Work is split like ``conv``'s: one contiguous chunk of images per thread, each with its own
scratch, partial dU and db summed in chunk order, so results repeat exactly for a fixed thread
count. ``tile_size`` says which layers take this path and with which tiles (measured).
"""
import numpy as np
from numba import njit, prange

from ._gemm import gemm
from ._reduce import row_total
from ._shuffles import add_tile_row, join_output_row, split_output_row, split_tile_row

# Weight transforms U = G w G^T, one per tile size m (outputs per tile side; input tiles are m + 2).
# F(2x2): points {0, 1, -1, inf}.
G2 = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# F(4x4): points {0, 1, -1, 1/2, -2, inf}, not Lavin & Gray's {0, +-1, +-2, inf}. Rounding in the float32
# GEMMs, amplified by the output transform, dominates the error; measured max |err| / max |out| against
# a float64 conv (N=8, 3x3, pad 1): C=128 @ 8x8 3.1e-6 (+-2: 8.4e-6), C=256 4.8e-6 (+-2: 1.4e-5, over
# the 1e-5 the float32 tests allow; +-1/2: 1.3e-5); F(2x2) 4e-7 to 8e-7.
G4 = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, -1 / 3],
               [-16 / 15, -8 / 15, -4 / 15], [1 / 15, -2 / 15, 4 / 15], [0.0, 0.0, 1.0]])
G = {2: G2, 4: G4}
# The input and output transforms of F(4x4) (B^T and A^T; F(2x2)'s are written out in its kernels).
# (the F(4x4) kernels below apply them, and their transposes, plane by plane)
BT4 = np.array([[1, -1.5, -2, 1.5, 1, 0], [0, -1, 0.5, 2.5, 1, 0], [0, 1, -2.5, 0.5, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 0.5, -1, -0.5, 1, 0], [0, 1, -1.5, -2, 1.5, 1]])
AT4 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 0.5, -2, 0], [0, 1, 1, 0.25, 4, 0], [0, 1, -1, 0.125, -8, 1]])
# Below this many input channels the GEMMs' inner dimension is too short for the transforms to pay
# (conv 3->32: im2col's K is 27 against Winograd's 3). Measured (float32, N=128, ours / PyTorch):
# 8->16 @ 16x16 im2col 1.01, Winograd 1.18; 16->32 @ 16x16 1.00 and 0.98; 32->64 0.76-0.83 Winograd.
MIN_CHANNELS = 16
# Tile columns per GEMM in float32 (float64 takes half as many: the same bytes): images are grouped
# into blocks of at least this many tiles. A block's V and M rows span this many columns, so it sets
# how much of them stays in L2 between the transforms and the GEMMs against how wide each GEMM is.
# Measured (2-core Xeon with AVX-512, 2 MiB L2 a core, conv fwd+bwd, 2 threads, median of 9
# alternations), 96 columns against 128: 0.92-0.98x the time on 10 of 13 CIFAR, wide and long-recipe
# layer shapes, 1.0-1.02x on the other three; 64, 80 and 112 no better than 96. Float64 (5 shapes): 96
# columns 0.78-0.96x the time of 128, and 48 a further 0.89-0.97x
BLOCK_TILES = 96
# F(4x4) where it was measured faster than F(2x2), per kind of CPU: rows (min input channels, smallest
# map side, largest map side), F(4x4) when a layer fits one row. Its GEMMs take ~0.6x F(2x2)'s time but
# its transforms 1-1.7x, so it wins only where the GEMMs dominate and the maps fill its tiles; where that
# is depends on how fast the CPU's GEMMs are against its transforms, so each kind has its own rows.
# Ratios are F(4x4) time / F(2x2) time, float32, 2 threads, forward / backward, in one process.
F4_WHERE = {
    # AVX-512 (OpenBLAS's SkylakeX kernels; a 2-core Intel Xeon with AVX-512, 2026-12-01, quiet, median of
    # 5 alternations, N=128 unless said), re-measured after the F(4x4) transforms' plane passes were fused
    # (forward / backward / total): 16->32 @ 16x16 0.95 / 0.78 / 0.84, 24->48 @ 16x16 1.01 / 0.85 /
    # 0.91, 32->64 @ 16x16 1.13 / 0.83 / 0.92, 24->64 @ 31x31 0.90 / 0.76 / 0.80, 64->64 @ 31x31 0.71 /
    # 0.68 / 0.69, 64->128 @ 32x32 N=256 0.77 / 0.72 / 0.74, 24->48 @ 8x8 0.91 / 0.84 / 0.87, 32->64 @
    # 8x8 0.99 / 0.87 / 0.91, 48->96 @ 8x8 0.92 / 0.82 / 0.86, 64->128 @ 8x8 0.92 / 0.81 / 0.85, 64->128
    # @ 15x15 0.90 / 0.74 / 0.80, 128->128 @ 15x15 0.85 / 0.77 / 0.79, 128->256 @ 8x8 N=256 0.89 / 0.83
    # / 0.85; but 128->128 @ 7x7 1.11 / 1.00 / 1.04, 48->96 @ 4x4 1.05 / 1.04 / 1.04, 128->128 @ 4x4 N=256
    # 1.37 / 1.29 / 1.32, 256->256 @ 4x4 N=256 1.31 / 1.29 / 1.30, 128->128 @ 3x3 1.52 / 1.53.
    # Re-measured with blocks of 96 columns (BLOCK_TILES; were 128), which turned 7x7 to F(4x4): 128->128
    # @ 7x7 N=256 0.96 / 0.77 / 0.83 and 0.97 / 0.79 / 0.85, 64->64 @ 7x7 N=256 1.00 / 0.84 / 0.89, 24->48
    # @ 7x7 1.05 / 0.84 / 0.91 (the long recipe's step with its two 7x7 layers on F(4x4): level, 0.99x and
    # 1.00x); but 128->128 @ 6x6 N=256 1.43 / 1.17 / 1.26, 48->96 @ 4x4 1.21 / 1.08 / 1.13, 256->256 @ 4x4
    # N=256 1.01 / 0.99 / 0.99 (level: stays F(2x2)).
    "avx512": ((16, 16, 32), (24, 7, 15)),
    # Without it (AVX2; a 2-core AMD EPYC, 2026-12-01, median of 4 alternations): 64->64 @ 16x16 N=256
    # 0.80 / 0.80, 64->128 @ 16x16 0.86 / 0.81; but 128->128 @ 8x8 1.02 / 1.07, 128->128 @ 4x4 1.32 /
    # 1.22, 24->64 @ 32x32 1.19 / 1.27, 24->48 @ 8x8 N=128 0.91 / 0.94, 48->96 @ 4x4 0.93 / 1.22.
    "avx2": ((64, 16, 31),),
}


def vector_kind() -> str:
    """Which F4_WHERE rows this machine takes: "avx512" where the CPU has AVX-512 (OpenBLAS then runs
    its AVX-512 GEMMs), else "avx2"."""
    import llvmlite.binding as ll

    return "avx512" if ll.get_host_cpu_features().get("avx512f") else "avx2"


F4_KIND = vector_kind()   # read once, at import; bench reports it
F4_RULES = F4_WHERE[F4_KIND]


def tile_size(C, HH, WW, stride, H_out, W_out):
    """The one place that picks a layer's algorithm: Winograd's tile size m (F(m x m, 3x3), 2 or 4),
    or 0 where im2col computes it (not 3x3 stride 1, or too few input channels)."""
    if not (HH == 3 and WW == 3 and stride == 1 and C >= MIN_CHANNELS):
        return 0
    f4 = any(C >= c and lo <= H_out <= hi and lo <= W_out <= hi for c, lo, hi in F4_RULES)
    return 4 if f4 else 2


def tiles(H_out, W_out, m):
    """Tile rows and columns covering an H_out x W_out map with m x m output tiles."""
    return -(-H_out // m), -(-W_out // m)


def block_images(H_out, W_out, N, m, itemsize):
    """Images per block: enough for BLOCK_TILES tile columns (scaled to ``itemsize``-byte numbers, 4 for
    float32), at most N."""
    th, tw = tiles(H_out, W_out, m)
    cols = max(1, BLOCK_TILES * 4 // itemsize)
    return max(1, min(N, -(-cols // (th * tw))))


def transform_weights(w, dtype, m):
    """w (F, C, 3, 3) -> U ((m + 2)**2, F, C) in ``dtype`` (computed in float64)."""
    F, C = w.shape[:2]
    U = np.empty(((m + 2) ** 2, F, C), dtype=dtype)
    _transform_weights(np.ascontiguousarray(w), G[m], U)
    return U


def weights_grad(dU_part):
    """The adjoint of transform_weights over per-chunk parts: dU_part (T, (m + 2)**2, F, C), summed
    in chunk order in its dtype -> dw (F, C, 3, 3) in that dtype (computed in float64)."""
    _, nn, F, C = dU_part.shape
    dw = np.empty((F, C, 3, 3), dtype=dU_part.dtype)
    _weights_grad(np.ascontiguousarray(dU_part), G[size_of(nn)], dw)
    return dw


# Both weight transforms are a few multiply-adds per weight: a kernel instead of np.einsum, whose path
# search and temporaries cost more than the arithmetic (measured 0.2-3 ms a call against ~10 us).
# Their inner loops run over input channels, contiguous in U: vectorised, 2-7x faster than loops per
# weight (measured); output channels in parallel (the callers run them inside kernel_threads)

@njit(parallel=True, cache=True)
def _transform_weights(w, Gm, U):
    # U[n*a + b, f, c] = (G w[f, c] G^T)[a, b] for G (n, 3), in float64 then rounded to U's dtype
    F, C = w.shape[0], w.shape[1]
    n = Gm.shape[0]
    for f in prange(F):
        t = np.empty((n, 3, C))
        wf = w[f]
        for a in range(n):   # G w
            g0, g1, g2 = Gm[a, 0], Gm[a, 1], Gm[a, 2]
            for l in range(3):
                ta = t[a, l]
                for c in range(C):
                    ta[c] = g0 * np.float64(wf[c, 0, l]) + g1 * np.float64(wf[c, 1, l]) + g2 * np.float64(wf[c, 2, l])
        for a in range(n):   # (G w) G^T
            for b in range(n):
                h0, h1, h2 = Gm[b, 0], Gm[b, 1], Gm[b, 2]
                u, t0, t1, t2 = U[n * a + b, f], t[a, 0], t[a, 1], t[a, 2]
                for c in range(C):
                    u[c] = t0[c] * h0 + t1[c] * h1 + t2[c] * h2


@njit(cache=True, inline="always")   # called per (position, filter): a call each was 1.3-1.6x slower
def chunk_total(dU_part, i, f, acc):
    """acc (C,) = dU_part[0, i, f] + dU_part[1, i, f] + ..., added in chunk order in the parts' dtype
    (the order a sum over the chunk axis takes, so one chunk or many give the same bits as before)."""
    acc[:] = dU_part[0, i, f]
    for p in range(1, dU_part.shape[0]):
        part = dU_part[p, i, f]
        for c in range(acc.size):
            acc[c] += part[c]


@njit(parallel=True, cache=True)
def _weights_grad(dU_part, Gm, dw):
    # dw[f, c] = G^T dU[:, f, c] (as n x n) G in float64, dU = the sum of the parts in chunk order
    F, C = dU_part.shape[2], dU_part.shape[3]
    n = Gm.shape[0]
    for f in prange(F):
        acc = np.empty(C, dtype=dU_part.dtype)
        dU = np.empty((n * n, C))
        t = np.empty((n, 3, C))
        k = np.empty((3, 3, C))
        for i in range(n * n):
            chunk_total(dU_part, i, f, acc)
            d = dU[i]
            for c in range(C):
                d[c] = np.float64(acc[c])
        for a in range(n):   # dU G
            for l in range(3):
                ta = t[a, l]
                ta[:] = 0.0
                for b in range(n):
                    g, d = Gm[b, l], dU[n * a + b]
                    for c in range(C):
                        ta[c] += d[c] * g
        for r in range(3):   # G^T (dU G)
            for l in range(3):
                kr = k[r, l]
                kr[:] = 0.0
                for a in range(n):
                    g, ta = Gm[a, r], t[a, l]
                    for c in range(C):
                        kr[c] += g * ta[c]
        for c in range(C):
            for r in range(3):
                for l in range(3):
                    dw[f, c, r, l] = k[r, l, c]


@njit(cache=True)
def _crop_copy(dxpad, pad, dxn):
    # dxn (C, H, W) = the interior of dxpad at (pad, pad); the adjoint of _pad_copy
    C, H, W = dxn.shape
    upad = np.uint64(pad)
    for c in range(C):
        for y in range(H):
            src = dxpad[c, y + pad]
            dst = dxn[c, y]
            for x in range(np.uint64(W)):
                dst[x] = src[x + upad]


@njit(cache=True)
def _pad_copy(xn, pad, xpad):
    # the image xn (C, H, W) into xpad's interior at (pad, pad); xpad's border stays as it is (zero).
    # Inner loops index with unsigned integers: a signed index that is not provably non-negative
    # gets a wraparound test per access, which stops LLVM vectorising the loop (this copy
    # ran ~20x slower in a measured toy)
    C, H, W = xn.shape
    upad = np.uint64(pad)
    for c in range(C):
        for y in range(H):
            dst = xpad[c, y + pad]
            src = xn[c, y]
            for x in range(np.uint64(W)):
                dst[x + upad] = src[x]


@njit(cache=True)
def _in_transform(xn, pad, th, tw, xpad, V, col0):
    # V[c, :, col0 + i*tw + j] = B^T d B for the 4x4 tile d at (2i, 2j) of the padded image.
    # xpad (C, 2th+2, 2tw+2) is zero outside the image; only the image is copied in
    _pad_copy(xn, pad, xpad)
    C = xn.shape[0]
    for c in range(C):
        xc = xpad[c]
        for i in range(th):
            r0 = xc[2 * i]
            r1 = xc[2 * i + 1]
            r2 = xc[2 * i + 2]
            r3 = xc[2 * i + 3]
            base = np.uint64(col0 + i * tw)
            for j in range(np.uint64(tw)):
                q = np.uint64(2) * j
                # rows: B^T d
                a0 = r0[q] - r2[q]
                a1 = r0[q + 1] - r2[q + 1]
                a2 = r0[q + 2] - r2[q + 2]
                a3 = r0[q + 3] - r2[q + 3]
                b0 = r1[q] + r2[q]
                b1 = r1[q + 1] + r2[q + 1]
                b2 = r1[q + 2] + r2[q + 2]
                b3 = r1[q + 3] + r2[q + 3]
                c0 = r2[q] - r1[q]
                c1 = r2[q + 1] - r1[q + 1]
                c2 = r2[q + 2] - r1[q + 2]
                c3 = r2[q + 3] - r1[q + 3]
                d0 = r1[q] - r3[q]
                d1 = r1[q + 1] - r3[q + 1]
                d2 = r1[q + 2] - r3[q + 2]
                d3 = r1[q + 3] - r3[q + 3]
                k = base + j
                # columns: (.) B
                V[c, 0, k] = a0 - a2
                V[c, 1, k] = a1 + a2
                V[c, 2, k] = a2 - a1
                V[c, 3, k] = a1 - a3
                V[c, 4, k] = b0 - b2
                V[c, 5, k] = b1 + b2
                V[c, 6, k] = b2 - b1
                V[c, 7, k] = b1 - b3
                V[c, 8, k] = c0 - c2
                V[c, 9, k] = c1 + c2
                V[c, 10, k] = c2 - c1
                V[c, 11, k] = c1 - c3
                V[c, 12, k] = d0 - d2
                V[c, 13, k] = d1 + d2
                V[c, 14, k] = d2 - d1
                V[c, 15, k] = d1 - d3


@njit(cache=True)
def _in_transform_adjoint(dV, col0, th, tw, pad, dxpad, dxn):
    # dxn (C, H, W) = the sum of B dV B^T over the tiles covering each input position
    # (the adjoint of _in_transform); dxpad (C, 2th+2, 2tw+2) is scratch
    C = dxn.shape[0]
    dxpad[:] = 0
    for c in range(C):
        xc = dxpad[c]
        for i in range(th):
            r0 = xc[2 * i]
            r1 = xc[2 * i + 1]
            r2 = xc[2 * i + 2]
            r3 = xc[2 * i + 3]
            base = np.uint64(col0 + i * tw)
            for j in range(np.uint64(tw)):
                k = base + j
                q = np.uint64(2) * j
                # rows of dV, each through (.) B^T's adjoint: [e0, e1 - e2 + e3, -e0 + e1 + e2, -e3]
                e0, e1, e2, e3 = dV[c, 0, k], dV[c, 1, k], dV[c, 2, k], dV[c, 3, k]
                a0, a1, a2, a3 = e0, e1 - e2 + e3, e1 + e2 - e0, -e3
                e0, e1, e2, e3 = dV[c, 4, k], dV[c, 5, k], dV[c, 6, k], dV[c, 7, k]
                b0, b1, b2, b3 = e0, e1 - e2 + e3, e1 + e2 - e0, -e3
                e0, e1, e2, e3 = dV[c, 8, k], dV[c, 9, k], dV[c, 10, k], dV[c, 11, k]
                c0, c1, c2, c3 = e0, e1 - e2 + e3, e1 + e2 - e0, -e3
                e0, e1, e2, e3 = dV[c, 12, k], dV[c, 13, k], dV[c, 14, k], dV[c, 15, k]
                d0, d1, d2, d3 = e0, e1 - e2 + e3, e1 + e2 - e0, -e3
                # then down the columns the same way: row 0 gets a, 1 gets b - c + d, 2 gets b + c - a, 3 gets -d
                r0[q] += a0
                r0[q + 1] += a1
                r0[q + 2] += a2
                r0[q + 3] += a3
                r1[q] += b0 - c0 + d0
                r1[q + 1] += b1 - c1 + d1
                r1[q + 2] += b2 - c2 + d2
                r1[q + 3] += b3 - c3 + d3
                r2[q] += b0 + c0 - a0
                r2[q + 1] += b1 + c1 - a1
                r2[q + 2] += b2 + c2 - a2
                r2[q + 3] += b3 + c3 - a3
                r3[q] -= d0
                r3[q + 1] -= d1
                r3[q + 2] -= d2
                r3[q + 3] -= d3
    _crop_copy(dxpad, pad, dxn)


@njit(cache=True)
def _out_tile(M, f, k, bf, o, p, W_out, two_rows, two_cols):
    # o[p], o[p + 1], o[p + W_out], o[p + W_out + 1] = A^T m A + bf for the tile m = M[f, :, k],
    # the second row/column only where the map has it
    m = M[f]
    # A^T m: row 0 = m0 + m1 + m2 (rows of m), row 1 = m1 - m2 - m3; then the same on columns
    t0 = m[0, k] + m[4, k] + m[8, k]
    t1 = m[1, k] + m[5, k] + m[9, k]
    t2 = m[2, k] + m[6, k] + m[10, k]
    t3 = m[3, k] + m[7, k] + m[11, k]
    s0 = m[4, k] - m[8, k] - m[12, k]
    s1 = m[5, k] - m[9, k] - m[13, k]
    s2 = m[6, k] - m[10, k] - m[14, k]
    s3 = m[7, k] - m[11, k] - m[15, k]
    o[p] = t0 + t1 + t2 + bf
    if two_cols:
        o[p + 1] = t1 - t2 - t3 + bf
    if two_rows:
        o[p + W_out] = s0 + s1 + s2 + bf
        if two_cols:
            o[p + W_out + 1] = s1 - s2 - s3 + bf


# Even maps at least this many tiles wide (16x16 and up) take the output transforms a plane at a
# time (_out_planes, _dout_planes), whose loops vectorise. Measured alone on one thread against the
# tile-at-a-time loops: dout transform 0.54x the time at 32x32, 0.67x at 16x16, but 1.2x at 8x8 and
# 1.1x at 4x4, where a loop over a plane's 16 or 4 tiles costs more to start than it saves
PLANE_MIN_TW = 8


@njit(cache=True)
def _out_transform(M, col0, th, tw, H_out, W_out, b, on):
    # on (F, H_out*W_out) = A^T m A + b for each tile m = M[f, :, col]; a last row or column
    # past the map (odd H_out or W_out) is dropped
    if tw >= PLANE_MIN_TW and H_out % 2 == 0 and W_out % 2 == 0:
        _out_planes(M, col0, th, tw, W_out, b, on, np.empty((4, th * tw), dtype=on.dtype))
    else:
        _out_tiles(M, col0, th, tw, H_out, W_out, b, on)


@njit(cache=True)
def _out_tiles(M, col0, th, tw, H_out, W_out, b, on):
    # _out_transform a tile at a time: full tiles in one loop, edge tiles one by one
    F = on.shape[0]
    fh, fw = H_out // 2, W_out // 2
    for f in range(F):
        bf = b[f]
        o = on[f]
        m = M[f]
        for i in range(fh):
            base = col0 + i * tw
            r0 = o[2 * i * W_out:(2 * i + 1) * W_out]
            r1 = o[(2 * i + 1) * W_out:(2 * i + 2) * W_out]
            for j in range(fw):   # signed on purpose: unsigned indices vectorise this loop, measured slower on short rows
                k = base + j
                q = 2 * j
                t0 = m[0, k] + m[4, k] + m[8, k]
                t1 = m[1, k] + m[5, k] + m[9, k]
                t2 = m[2, k] + m[6, k] + m[10, k]
                t3 = m[3, k] + m[7, k] + m[11, k]
                s0 = m[4, k] - m[8, k] - m[12, k]
                s1 = m[5, k] - m[9, k] - m[13, k]
                s2 = m[6, k] - m[10, k] - m[14, k]
                s3 = m[7, k] - m[11, k] - m[15, k]
                r0[q] = t0 + t1 + t2 + bf
                r0[q + 1] = t1 - t2 - t3 + bf
                r1[q] = s0 + s1 + s2 + bf
                r1[q + 1] = s1 - s2 - s3 + bf
            if fw < tw:
                _out_tile(M, f, base + fw, bf, o, 2 * i * W_out + 2 * fw, W_out, True, False)
        if fh < th:
            base = col0 + fh * tw
            for j in range(tw):
                _out_tile(M, f, base + j, bf, o, 2 * fh * W_out + 2 * j, W_out, False, 2 * j + 1 < W_out)


@njit(cache=True)
def _out_planes(M, col0, th, tw, W_out, b, on, Q):
    # _out_transform for even H_out and W_out, a plane at a time: Q[r] (T,) = output r of every tile
    # (r = 2 * row + column of the 2x2 tile), each one loop over the tiles with _out_tile's
    # arithmetic in the same order, then scattered into the map
    F = on.shape[0]
    T = np.uint64(th * tw)
    c0 = np.uint64(col0)
    utw = np.uint64(tw)
    two = np.uint64(2)
    Wo = np.uint64(W_out)
    for f in range(F):
        bf = b[f]
        m = M[f]
        for k in range(T):
            j = c0 + k
            Q[0, k] = (m[0, j] + m[4, j] + m[8, j]) + (m[1, j] + m[5, j] + m[9, j]) + (m[2, j] + m[6, j] + m[10, j]) + bf
        for k in range(T):
            j = c0 + k
            Q[1, k] = (m[1, j] + m[5, j] + m[9, j]) - (m[2, j] + m[6, j] + m[10, j]) - (m[3, j] + m[7, j] + m[11, j]) + bf
        for k in range(T):
            j = c0 + k
            Q[2, k] = (m[4, j] - m[8, j] - m[12, j]) + (m[5, j] - m[9, j] - m[13, j]) + (m[6, j] - m[10, j] - m[14, j]) + bf
        for k in range(T):
            j = c0 + k
            Q[3, k] = (m[5, j] - m[9, j] - m[13, j]) - (m[6, j] - m[10, j] - m[14, j]) - (m[7, j] - m[11, j] - m[15, j]) + bf
        o = on[f]
        for i in range(np.uint64(th)):
            t = i * utw
            p0 = two * i * Wo
            p1 = p0 + Wo
            for j in range(utw):
                o[p0 + two * j] = Q[0, t + j]
                o[p0 + two * j + np.uint64(1)] = Q[1, t + j]
                o[p1 + two * j] = Q[2, t + j]
                o[p1 + two * j + np.uint64(1)] = Q[3, t + j]


@njit(cache=True)
def _dout_tile(dM, f, k, y00, y01, y10, y11):
    # dM[f, :, k] = A dY A^T for dY = [[y00, y01], [y10, y11]]: rows of A dY are
    # (dy0, dy0 + dy1, dy0 - dy1, -dy1), and each row (u, v) becomes (u, u + v, u - v, -v)
    d = dM[f]
    u, v = y00, y01
    d[0, k], d[1, k], d[2, k], d[3, k] = u, u + v, u - v, -v
    u, v = y00 + y10, y01 + y11
    d[4, k], d[5, k], d[6, k], d[7, k] = u, u + v, u - v, -v
    u, v = y00 - y10, y01 - y11
    d[8, k], d[9, k], d[10, k], d[11, k] = u, u + v, u - v, -v
    u, v = -y10, -y11
    d[12, k], d[13, k], d[14, k], d[15, k] = u, u + v, u - v, -v


@njit(cache=True)
def _out_transform_adjoint(dn, H_out, W_out, th, tw, dM, col0):
    # dM[f, :, col] = A dY A^T for each 2x2 tile dY of dn (F, H_out*W_out), zero past the map
    # (edge tiles of an odd map get their missing row/column as zeros of dn's dtype)
    if tw >= PLANE_MIN_TW and H_out % 2 == 0 and W_out % 2 == 0:
        _dout_planes(dn, W_out, th, tw, dM, col0, np.empty((4, th * tw), dtype=dn.dtype))
    else:
        _dout_tiles(dn, H_out, W_out, th, tw, dM, col0)


@njit(cache=True)
def _dout_planes(dn, W_out, th, tw, dM, col0, P):
    # _out_transform_adjoint for even H_out and W_out, a plane at a time: P (4, T) gathers the
    # tiles' corners y00, y01, y10, y11, then each row of dM[f] is one loop over the tiles with
    # _dout_tile's arithmetic
    F = dn.shape[0]
    T = np.uint64(th * tw)
    c0 = np.uint64(col0)
    utw = np.uint64(tw)
    two = np.uint64(2)
    Wo = np.uint64(W_out)
    for f in range(F):
        d = dn[f]
        for i in range(np.uint64(th)):
            t = i * utw
            p0 = two * i * Wo
            p1 = p0 + Wo
            for j in range(utw):
                P[0, t + j] = d[p0 + two * j]
                P[1, t + j] = d[p0 + two * j + np.uint64(1)]
                P[2, t + j] = d[p1 + two * j]
                P[3, t + j] = d[p1 + two * j + np.uint64(1)]
        g = dM[f]
        # rows of A dY: (y00, y01), (y00 + y10, y01 + y11), (y00 - y10, y01 - y11), (-y10, -y11);
        # each row (u, v) becomes (u, u + v, u - v, -v)
        for k in range(T):
            g[0, c0 + k] = P[0, k]
        for k in range(T):
            g[1, c0 + k] = P[0, k] + P[1, k]
        for k in range(T):
            g[2, c0 + k] = P[0, k] - P[1, k]
        for k in range(T):
            g[3, c0 + k] = -P[1, k]
        for k in range(T):
            g[4, c0 + k] = P[0, k] + P[2, k]
        for k in range(T):
            g[5, c0 + k] = (P[0, k] + P[2, k]) + (P[1, k] + P[3, k])
        for k in range(T):
            g[6, c0 + k] = (P[0, k] + P[2, k]) - (P[1, k] + P[3, k])
        for k in range(T):
            g[7, c0 + k] = -(P[1, k] + P[3, k])
        for k in range(T):
            g[8, c0 + k] = P[0, k] - P[2, k]
        for k in range(T):
            g[9, c0 + k] = (P[0, k] - P[2, k]) + (P[1, k] - P[3, k])
        for k in range(T):
            g[10, c0 + k] = (P[0, k] - P[2, k]) - (P[1, k] - P[3, k])
        for k in range(T):
            g[11, c0 + k] = -(P[1, k] - P[3, k])
        for k in range(T):
            g[12, c0 + k] = -P[2, k]
        for k in range(T):
            g[13, c0 + k] = -P[2, k] + -P[3, k]
        for k in range(T):
            g[14, c0 + k] = -P[2, k] - -P[3, k]
        for k in range(T):
            g[15, c0 + k] = -(-P[3, k])


@njit(cache=True)
def _dout_tiles(dn, H_out, W_out, th, tw, dM, col0):
    # _out_transform_adjoint a tile at a time
    F = dn.shape[0]
    fh, fw = H_out // 2, W_out // 2
    zero = np.zeros(1, dtype=dn.dtype)[0]
    for f in range(F):
        d = dn[f]
        for i in range(fh):
            base = col0 + i * tw
            r0 = d[2 * i * W_out:(2 * i + 1) * W_out]
            r1 = d[(2 * i + 1) * W_out:(2 * i + 2) * W_out]
            for j in range(np.uint64(fw)):
                q = np.uint64(2) * j
                _dout_tile(dM, f, np.uint64(base) + j, r0[q], r0[q + 1], r1[q], r1[q + 1])
            if fw < tw:
                _dout_tile(dM, f, base + fw, r0[2 * fw], zero, r1[2 * fw], zero)
        if fh < th:
            base = col0 + fh * tw
            r0 = d[2 * fh * W_out:(2 * fh + 1) * W_out]
            for j in range(tw):
                y01 = r0[2 * j + 1] if 2 * j + 1 < W_out else zero
                _dout_tile(dM, f, base + j, r0[2 * j], y01, zero, zero)


# --- F(4x4, 3x3): 6x6 input tiles at (4i, 4j), 36 GEMMs per block ---
# Its transforms run on a whole block a plane at a time: a plane is one tile position (or one
# row/column of a separable transform's intermediate) across the block's tiles, so each inner
# loop is one contiguous, vectorised pass of multiply-adds (_rows_6x6 etc.), and only the gathers
# and scatters between tiles and maps are scalar. Measured on one thread, 128->128 @ 8x8: tile-at-a-time loops
# (36 strided loads per tile) took 2.7x F(2x2)'s time per image for the output transform.
B4 = np.ascontiguousarray(BT4.T)
A4 = np.ascontiguousarray(AT4.T)


# dst[d0 + d_step*a, :cols] = sum over k of S[a, k] * src[s0 + s_step*k, :cols] for each row a of S,
# one function per shape of S (6x6: B^T and B, 4x6: A^T, 6x4: A). Every output row in one loop: each
# source element is loaded once for all rows (measured 2.1-2.6x faster on one thread than a loop per
# output row reloading the sources). Zero coefficients are kept, so each element is one store and the
# sums' order is fixed. Callers call the one for their shape: a dispatch on S's shape in between made
# the same loops 1.6-1.8x slower (measured)

@njit(cache=True)
def _rows_6x6(S, src, s0, s_step, dst, d0, d_step, cols):
    n = np.uint64(cols)
    dt = dst.dtype.type
    x0, x1, x2, x3, x4, x5 = src[s0], src[s0 + s_step], src[s0 + 2 * s_step], src[s0 + 3 * s_step], src[s0 + 4 * s_step], src[s0 + 5 * s_step]
    y0, y1, y2, y3, y4, y5 = dst[d0], dst[d0 + d_step], dst[d0 + 2 * d_step], dst[d0 + 3 * d_step], dst[d0 + 4 * d_step], dst[d0 + 5 * d_step]
    a00, a01, a02, a03, a04, a05 = dt(S[0, 0]), dt(S[0, 1]), dt(S[0, 2]), dt(S[0, 3]), dt(S[0, 4]), dt(S[0, 5])
    a10, a11, a12, a13, a14, a15 = dt(S[1, 0]), dt(S[1, 1]), dt(S[1, 2]), dt(S[1, 3]), dt(S[1, 4]), dt(S[1, 5])
    a20, a21, a22, a23, a24, a25 = dt(S[2, 0]), dt(S[2, 1]), dt(S[2, 2]), dt(S[2, 3]), dt(S[2, 4]), dt(S[2, 5])
    a30, a31, a32, a33, a34, a35 = dt(S[3, 0]), dt(S[3, 1]), dt(S[3, 2]), dt(S[3, 3]), dt(S[3, 4]), dt(S[3, 5])
    a40, a41, a42, a43, a44, a45 = dt(S[4, 0]), dt(S[4, 1]), dt(S[4, 2]), dt(S[4, 3]), dt(S[4, 4]), dt(S[4, 5])
    a50, a51, a52, a53, a54, a55 = dt(S[5, 0]), dt(S[5, 1]), dt(S[5, 2]), dt(S[5, 3]), dt(S[5, 4]), dt(S[5, 5])
    for j in range(n):
        v0, v1, v2, v3, v4, v5 = x0[j], x1[j], x2[j], x3[j], x4[j], x5[j]
        y0[j] = a00 * v0 + a01 * v1 + a02 * v2 + a03 * v3 + a04 * v4 + a05 * v5
        y1[j] = a10 * v0 + a11 * v1 + a12 * v2 + a13 * v3 + a14 * v4 + a15 * v5
        y2[j] = a20 * v0 + a21 * v1 + a22 * v2 + a23 * v3 + a24 * v4 + a25 * v5
        y3[j] = a30 * v0 + a31 * v1 + a32 * v2 + a33 * v3 + a34 * v4 + a35 * v5
        y4[j] = a40 * v0 + a41 * v1 + a42 * v2 + a43 * v3 + a44 * v4 + a45 * v5
        y5[j] = a50 * v0 + a51 * v1 + a52 * v2 + a53 * v3 + a54 * v4 + a55 * v5


@njit(cache=True)
def _rows_4x6(S, src, s0, s_step, dst, d0, d_step, cols):
    n = np.uint64(cols)
    dt = dst.dtype.type
    x0, x1, x2, x3, x4, x5 = src[s0], src[s0 + s_step], src[s0 + 2 * s_step], src[s0 + 3 * s_step], src[s0 + 4 * s_step], src[s0 + 5 * s_step]
    y0, y1, y2, y3 = dst[d0], dst[d0 + d_step], dst[d0 + 2 * d_step], dst[d0 + 3 * d_step]
    a00, a01, a02, a03, a04, a05 = dt(S[0, 0]), dt(S[0, 1]), dt(S[0, 2]), dt(S[0, 3]), dt(S[0, 4]), dt(S[0, 5])
    a10, a11, a12, a13, a14, a15 = dt(S[1, 0]), dt(S[1, 1]), dt(S[1, 2]), dt(S[1, 3]), dt(S[1, 4]), dt(S[1, 5])
    a20, a21, a22, a23, a24, a25 = dt(S[2, 0]), dt(S[2, 1]), dt(S[2, 2]), dt(S[2, 3]), dt(S[2, 4]), dt(S[2, 5])
    a30, a31, a32, a33, a34, a35 = dt(S[3, 0]), dt(S[3, 1]), dt(S[3, 2]), dt(S[3, 3]), dt(S[3, 4]), dt(S[3, 5])
    for j in range(n):
        v0, v1, v2, v3, v4, v5 = x0[j], x1[j], x2[j], x3[j], x4[j], x5[j]
        y0[j] = a00 * v0 + a01 * v1 + a02 * v2 + a03 * v3 + a04 * v4 + a05 * v5
        y1[j] = a10 * v0 + a11 * v1 + a12 * v2 + a13 * v3 + a14 * v4 + a15 * v5
        y2[j] = a20 * v0 + a21 * v1 + a22 * v2 + a23 * v3 + a24 * v4 + a25 * v5
        y3[j] = a30 * v0 + a31 * v1 + a32 * v2 + a33 * v3 + a34 * v4 + a35 * v5


@njit(cache=True)
def _rows_6x4(S, src, s0, s_step, dst, d0, d_step, cols):
    n = np.uint64(cols)
    dt = dst.dtype.type
    x0, x1, x2, x3 = src[s0], src[s0 + s_step], src[s0 + 2 * s_step], src[s0 + 3 * s_step]
    y0, y1, y2, y3, y4, y5 = dst[d0], dst[d0 + d_step], dst[d0 + 2 * d_step], dst[d0 + 3 * d_step], dst[d0 + 4 * d_step], dst[d0 + 5 * d_step]
    a00, a01, a02, a03 = dt(S[0, 0]), dt(S[0, 1]), dt(S[0, 2]), dt(S[0, 3])
    a10, a11, a12, a13 = dt(S[1, 0]), dt(S[1, 1]), dt(S[1, 2]), dt(S[1, 3])
    a20, a21, a22, a23 = dt(S[2, 0]), dt(S[2, 1]), dt(S[2, 2]), dt(S[2, 3])
    a30, a31, a32, a33 = dt(S[3, 0]), dt(S[3, 1]), dt(S[3, 2]), dt(S[3, 3])
    a40, a41, a42, a43 = dt(S[4, 0]), dt(S[4, 1]), dt(S[4, 2]), dt(S[4, 3])
    a50, a51, a52, a53 = dt(S[5, 0]), dt(S[5, 1]), dt(S[5, 2]), dt(S[5, 3])
    for j in range(n):
        v0, v1, v2, v3 = x0[j], x1[j], x2[j], x3[j]
        y0[j] = a00 * v0 + a01 * v1 + a02 * v2 + a03 * v3
        y1[j] = a10 * v0 + a11 * v1 + a12 * v2 + a13 * v3
        y2[j] = a20 * v0 + a21 * v1 + a22 * v2 + a23 * v3
        y3[j] = a30 * v0 + a31 * v1 + a32 * v2 + a33 * v3
        y4[j] = a40 * v0 + a41 * v1 + a42 * v2 + a43 * v3
        y5[j] = a50 * v0 + a51 * v1 + a52 * v2 + a53 * v3


# The moves between map rows and tile planes (a scalar loop each: a load and a store per element,
# ~60% of these transforms' time) go through _shuffles' vector shuffles, a map row at a time; the
# loop after each `if not` is for tile rows those do not take. The loops over a map's rows are
# compiled once per common tile-row width (tw, or the map's width W_out, a constant in each `if`
# branch of the callers): with the width a runtime value the same loops ran 1.7x slower (measured,
# the input transform of 32->64 @ 16x16, 64 images, one thread: 0.89 ms against 0.52). With both,
# that transform went from 0.83 to 0.52 ms

@njit(cache=True, inline="always")
def _gather_tiles(xpad, th, tw, V, base):
    # V[c, 6k + l, base + i*tw + j] = xpad[c, 4i + k, 4j + l]: the 6x6 tiles of one padded image
    C, PH, PW = xpad.shape
    ld = V.shape[2]
    for c in range(C):
        for i in range(th):
            col = base + i * tw
            for k in range(6):   # map row 4i + k: row k of each of the tile row's tiles
                if not split_tile_row(xpad, (c * PH + 4 * i + k) * PW, V, (c * 36 + 6 * k) * ld + col, ld, tw):
                    row = xpad[c, 4 * i + k]
                    for l in range(6):
                        for j in range(tw):
                            V[c, 6 * k + l, col + j] = row[4 * j + l]


@njit(cache=True, inline="always")
def _add_tiles(dV, th, tw, base, dxpad):
    # dxpad[c, 4i + k, 4j + l] += dV[c, 6k + l, base + i*tw + j]: the adjoint of _gather_tiles
    C, PH, PW = dxpad.shape
    ld = dV.shape[2]
    for c in range(C):
        for i in range(th):
            col = base + i * tw
            for k in range(6):
                if not add_tile_row(dV, (c * 36 + 6 * k) * ld + col, ld, dxpad, (c * PH + 4 * i + k) * PW, tw):
                    row = dxpad[c, 4 * i + k]
                    for j in range(tw):
                        for l in range(6):
                            row[4 * j + l] += dV[c, 6 * k + l, col + j]


@njit(cache=True, inline="always")
def _join_rows(Q, col0, th, tw, H_out, W_out, bf, o):
    # the map o (H_out*W_out) = A^T m A + bf, Q[4r + c, col0 + i*tw + j] being output (r, c) of tile
    # (i, j); rows and columns past the map are dropped
    cols = Q.shape[1]
    for i in range(th):
        col = col0 + i * tw
        for r in range(min(4, H_out - 4 * i)):
            # output row 4i + r: the tiles' r-th rows side by side, Q[4r..4r+3] interleaved
            row = (4 * i + r) * W_out
            if not join_output_row(Q, 4 * r * cols + col, cols, bf, o, row, W_out):
                for x in range(W_out):
                    o[row + x] = Q[4 * r + x % 4, col + x // 4] + bf


@njit(cache=True, inline="always")
def _split_rows(d, th, tw, H_out, W_out, P, col0):
    # P[4r + c, col0 + i*tw + j] = element (4i + r, 4j + c) of the map d (H_out*W_out): the adjoint of
    # _join_rows without the bias (the shuffles write zeros for a row's columns past the map, the loop
    # leaves them, as it leaves rows past the map: P starts zero)
    cols = P.shape[1]
    for i in range(th):
        col = col0 + i * tw
        for r in range(min(4, H_out - 4 * i)):
            row = (4 * i + r) * W_out
            if not split_output_row(d, row, P, 4 * r * cols + col, cols, W_out):
                for x in range(W_out):
                    P[4 * r + x % 4, col + x // 4] = d[row + x]


@njit(cache=True)
def _in_block4(x, n0, n1, pad, th, tw, xpad, V):
    # V[c, :, col] = B^T d B (row-major 6x6) for each 6x6 tile d at (4i, 4j) of the padded images
    # n0 <= n < n1: the tiles are gathered into V, then transformed plane by plane
    C = x.shape[1]
    T = th * tw
    cols = (n1 - n0) * T
    for n in range(n0, n1):
        _pad_copy(x[n], pad, xpad)
        base = (n - n0) * T
        if tw == 4:   # tile-row widths of 13-16, 29-32 and 5-8 wide maps compiled on their own
            _gather_tiles(xpad, th, 4, V, base)
        elif tw == 8:
            _gather_tiles(xpad, th, 8, V, base)
        elif tw == 2:
            _gather_tiles(xpad, th, 2, V, base)
        else:
            _gather_tiles(xpad, th, tw, V, base)
    t = np.empty((36, cols), dtype=V.dtype)
    for c in range(C):
        for l in range(6):   # B^T d down each column
            _rows_6x6(BT4, V[c], l, 6, t, l, 6, cols)
        for a in range(6):   # then along each row
            _rows_6x6(BT4, t, 6 * a, 1, V[c], 6 * a, 1, cols)


@njit(cache=True)
def _in_block4_adjoint(dV, n0, n1, th, tw, pad, dxpad, dx):
    # dx[n] (C, H, W) = the sum of B dV B^T over the 6x6 tiles covering each input position, for
    # n0 <= n < n1 (the adjoint of _in_block4; dV is overwritten); dxpad (C, 4th+2, 4tw+2) is scratch
    C = dx.shape[1]
    T = th * tw
    cols = (n1 - n0) * T
    t = np.empty((36, cols), dtype=dV.dtype)
    for c in range(C):
        for a in range(6):
            _rows_6x6(B4, dV[c], 6 * a, 1, t, 6 * a, 1, cols)
        for l in range(6):
            _rows_6x6(B4, t, l, 6, dV[c], l, 6, cols)
    for n in range(n0, n1):
        dxpad[:] = 0
        base = (n - n0) * T
        if tw == 4:   # as in _in_block4
            _add_tiles(dV, th, 4, base, dxpad)
        elif tw == 8:
            _add_tiles(dV, th, 8, base, dxpad)
        elif tw == 2:
            _add_tiles(dV, th, 2, base, dxpad)
        else:
            _add_tiles(dV, th, tw, base, dxpad)
        _crop_copy(dxpad, pad, dx[n])


@njit(cache=True)
def _out_block4(M, n0, n1, th, tw, H_out, W_out, b, out):
    # out[n] (F, H_out*W_out) = A^T m A + b for each 6x6 tile m = M[f, :, col] of images n0 <= n < n1;
    # rows and columns past the map are dropped
    F = M.shape[0]
    T = th * tw
    cols = (n1 - n0) * T
    t = np.empty((24, cols), dtype=M.dtype)
    Q = np.empty((16, cols), dtype=M.dtype)
    for f in range(F):
        for l in range(6):   # A^T m down each column: t[6r + l]
            _rows_4x6(AT4, M[f], l, 6, t, l, 6, cols)
        for r in range(4):   # then along each row: Q[4r + c], output (r, c) of every tile
            _rows_4x6(AT4, t, 6 * r, 1, Q, 4 * r, 1, cols)
        bf = b[f]
        for n in range(n0, n1):
            o, base = out[n, f], (n - n0) * T
            if W_out == 16:   # the map widths the nets use, each compiled on its own (see above)
                _join_rows(Q, base, th, tw, H_out, 16, bf, o)
            elif W_out == 8:
                _join_rows(Q, base, th, tw, H_out, 8, bf, o)
            elif W_out == 32:
                _join_rows(Q, base, th, tw, H_out, 32, bf, o)
            elif W_out == 15:
                _join_rows(Q, base, th, tw, H_out, 15, bf, o)
            elif W_out == 31:
                _join_rows(Q, base, th, tw, H_out, 31, bf, o)
            elif W_out == 7:
                _join_rows(Q, base, th, tw, H_out, 7, bf, o)
            else:
                _join_rows(Q, base, th, tw, H_out, W_out, bf, o)


@njit(cache=True)
def _dout_block4(dout, n0, n1, th, tw, H_out, W_out, dM):
    # dM[f, :, col] = A dY A^T for each 4x4 tile dY of dout[n] (F, H_out*W_out), n0 <= n < n1, zero
    # past the map (the adjoint of _out_block4)
    F = dM.shape[0]
    T = th * tw
    cols = (n1 - n0) * T
    t = np.empty((24, cols), dtype=dM.dtype)
    P = np.zeros((16, cols), dtype=dM.dtype)   # tile positions past the map stay zero
    for f in range(F):
        for n in range(n0, n1):
            d, base = dout[n, f], (n - n0) * T
            if W_out == 16:   # as in _out_block4
                _split_rows(d, th, tw, H_out, 16, P, base)
            elif W_out == 8:
                _split_rows(d, th, tw, H_out, 8, P, base)
            elif W_out == 32:
                _split_rows(d, th, tw, H_out, 32, P, base)
            elif W_out == 15:
                _split_rows(d, th, tw, H_out, 15, P, base)
            elif W_out == 31:
                _split_rows(d, th, tw, H_out, 31, P, base)
            elif W_out == 7:
                _split_rows(d, th, tw, H_out, 7, P, base)
            else:
                _split_rows(d, th, tw, H_out, W_out, P, base)
        for c in range(4):   # A dY down each column: t[4a + c]
            _rows_6x4(A4, P, c, 4, t, c, 4, cols)
        for a in range(6):   # then along each row
            _rows_6x4(A4, t, 4 * a, 1, dM[f], 6 * a, 1, cols)


@njit(cache=True)
def size_of(nn):
    """The tile size m of transformed weights with nn = (m + 2)**2 positions (U's first dimension)."""
    return 4 if nn == 36 else 2


@njit(cache=True)
def scratch(x, U, B, H_out, W_out):
    # one chunk's buffers for blocks of B images of x: V (C, nn, cols), M (F, nn, cols), xpad and
    # dxpad (C, m*th + 2, m*tw + 2), xpad zero (its border stays so); nn = (m + 2)**2 is U's first
    # dimension, which says the tile size m
    C = x.shape[1]
    nn, F = U.shape[0], U.shape[1]
    m = size_of(nn)
    th, tw = (H_out + m - 1) // m, (W_out + m - 1) // m
    cols = B * th * tw
    return (np.empty((C, nn, cols), dtype=x.dtype), np.empty((F, nn, cols), dtype=x.dtype),
            np.zeros((C, m * th + 2, m * tw + 2), dtype=x.dtype), np.empty((C, m * th + 2, m * tw + 2), dtype=x.dtype))


@njit(cache=True)
def forward_block(x, n0, n1, U, b, pad, H_out, W_out, out, V, M, xpad):
    # out[n] (F, H_out*W_out) for images n0 <= n < n1 of x; V, M and xpad are scratch (see
    # scratch). F(2x2) or F(4x4) as U says (16 or 36 positions)
    nn, F, C = U.shape
    m = size_of(nn)
    th, tw = (H_out + m - 1) // m, (W_out + m - 1) // m
    T = th * tw
    cols = (n1 - n0) * T
    if m == 4:
        _in_block4(x, n0, n1, pad, th, tw, xpad, V)
    else:
        for n in range(n0, n1):
            _in_transform(x[n], pad, th, tw, xpad, V, (n - n0) * T)
    ld = nn * V.shape[2]   # V[:, xi] and M[:, xi] are matrices with rows nn tiles apart
    for xi in range(nn):
        gemm(False, False, F, cols, C, 1.0, U[xi], C, V[0, xi], ld, 0.0, M[0, xi], ld)
    if m == 4:
        _out_block4(M, n0, n1, th, tw, H_out, W_out, b, out)
    else:
        for n in range(n0, n1):
            _out_transform(M, (n - n0) * T, th, tw, H_out, W_out, b, out[n])


@njit(cache=True)
def backward_block(x, n0, n1, U, dout, pad, H_out, W_out, need_dx, dx, dU, db, V, M, xpad, dxpad):
    # for images n0 <= n < n1: dU (nn, F, C) += dM @ V^T, db (F,) += sums of dout, dx[n] if need_dx.
    # dout[n] is (F, H_out*W_out); V, M, xpad, dxpad scratch as in forward_block (V is reused
    # for dV, position by position, once dU has taken what it needs)
    nn, F, C = U.shape
    m = size_of(nn)
    th, tw = (H_out + m - 1) // m, (W_out + m - 1) // m
    T = th * tw
    cols = (n1 - n0) * T
    if m == 4:
        _in_block4(x, n0, n1, pad, th, tw, xpad, V)
        _dout_block4(dout, n0, n1, th, tw, H_out, W_out, M)
    for n in range(n0, n1):
        dn = dout[n]
        if m == 2:
            _in_transform(x[n], pad, th, tw, xpad, V, (n - n0) * T)
            _out_transform_adjoint(dn, H_out, W_out, th, tw, M, (n - n0) * T)
        for f in range(F):
            db[f] += row_total(dn[f])
    ld = nn * V.shape[2]
    for xi in range(nn):
        gemm(False, True, F, C, cols, 1.0, M[0, xi], ld, V[0, xi], ld, 1.0, dU[xi], C)
        if need_dx:
            gemm(True, False, C, cols, F, 1.0, U[xi], C, M[0, xi], ld, 0.0, V[0, xi], ld)
    if need_dx and m == 4:
        _in_block4_adjoint(V, n0, n1, th, tw, pad, dxpad, dx)
    elif need_dx:
        for n in range(n0, n1):
            _in_transform_adjoint(V, (n - n0) * T, th, tw, pad, dxpad, dx[n])


@njit(parallel=True, cache=True)
def _forward(x, U, b, pad, H_out, W_out, B, T, out):
    # out (N, F, P); T chunks of images, each in blocks of B
    N = x.shape[0]
    for t in prange(T):
        V, M, xpad, _ = scratch(x, U, B, H_out, W_out)
        end = (t + 1) * N // T
        for n0 in range(t * N // T, end, B):
            forward_block(x, n0, min(n0 + B, end), U, b, pad, H_out, W_out, out, V, M, xpad)


@njit(parallel=True, cache=True)
def _backward(x, U, dout, pad, B, need_dx, dx, dU_part, db_part):
    # dout (N, F, P); chunk t owns dU_part[t], db_part[t] and dx of its images
    N, C, H, W = x.shape
    T = dU_part.shape[0]
    H_out, W_out = H + 2 * pad - 2, W + 2 * pad - 2
    for t in prange(T):
        V, M, xpad, dxpad = scratch(x, U, B, H_out, W_out)
        dU_part[t] = 0
        db_part[t] = 0
        end = (t + 1) * N // T
        for n0 in range(t * N // T, end, B):
            backward_block(x, n0, min(n0 + B, end), U, dout, pad, H_out, W_out, need_dx, dx, dU_part[t],
                           db_part[t], V, M, xpad, dxpad)


def forward(x, w, b, pad, H_out, W_out, T, out, m):
    """out (N, F, H_out*W_out) = conv(x, w) + b by F(m x m, 3x3); returns U for backward. Call with
    BLAS on one thread."""
    U = transform_weights(w, x.dtype, m)
    _forward(x, U, b, pad, H_out, W_out, block_images(H_out, W_out, x.shape[0], m, x.dtype.itemsize), T, out)
    return U


def backward(x, U, dout, pad, T, need_dx, dx):
    """dout (N, F, H_out*W_out) -> (dw (F, C, 3, 3), db (F,)), and dx (N, C, H, W) if need_dx."""
    nn, F, C = U.shape
    H_out, W_out = x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2
    dU_part = np.empty((T, nn, F, C), dtype=x.dtype)
    db_part = np.empty((T, F), dtype=x.dtype)
    _backward(x, U, dout, pad, block_images(H_out, W_out, x.shape[0], size_of(nn), x.dtype.itemsize), need_dx, dx,
              dU_part, db_part)
    return weights_grad(dU_part), db_part.sum(axis=0)
