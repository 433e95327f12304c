"""Winograd F(2x2, 3x3) convolution for 3x3 stride-1 layers: forward, dx and dw.

Each 2x2 output tile is computed from a 4x4 input tile as ``Y = A^T [(G w G^T) * (B^T d B)] A``
(Lavin & Gray 2016): 16 products per tile and channel pair instead of 36 (2.25x fewer). Over a
block of images the products are 16 GEMMs, one per position xi of the 4x4 transformed tile:
``M[xi] (F, tiles) = U[xi] (F, C) @ V[xi] (C, tiles)``, with U the transformed weights and V the
transformed input tiles (``tiles`` = every tile of the block's images, so each GEMM is wide
enough to run near the BLAS's speed even on 4x4 maps).

Backward stays in the transformed domain (every step below is the exact adjoint of one of
forward's, so the results are the gradients of the function forward computes):
``dM = A dY A^T`` per tile, then ``dU[xi] += dM[xi] @ V[xi]^T`` (dw = G^T dU G) and
``dV[xi] = U[xi]^T @ dM[xi]``, whose tiles are added back onto the (overlapping) input
positions (``B dV B^T``). dw and dx thus share one input transform and one dout transform, and
all three products have 2.25x fewer multiplies than im2col's.

Work is split like ``conv``'s: one contiguous chunk of images per thread, each with its own
scratch, partial dU and db summed in chunk order, so results repeat exactly for a fixed thread
count. ``usable`` says which layers take this path (measured: see benchmarks/RESULTS.md).
"""
import numpy as np
from numba import njit, prange

from ._gemm import gemm
from ._reduce import row_total

# F(2x2, 3x3) weight transform: U = G w G^T
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# Below this many input channels the GEMMs' inner dimension is too short for the transforms to pay
# (conv 3->32: im2col's K is 27 against Winograd's 3). Measured (float32, N=128, ours / PyTorch):
# 8->16 @ 16x16 im2col 1.01, Winograd 1.18; 16->32 @ 16x16 1.00 and 0.98; 32->64 0.76-0.83 Winograd.
MIN_CHANNELS = 16
# Tile columns per GEMM: images are grouped into blocks of at least this many tiles
BLOCK_TILES = 128


def usable(C, HH, WW, stride):
    """True for the layers this path computes (3x3, stride 1, enough input channels)."""
    return HH == 3 and WW == 3 and stride == 1 and C >= MIN_CHANNELS


def tiles(H_out, W_out):
    """Tile rows and columns covering an H_out x W_out map."""
    return (H_out + 1) // 2, (W_out + 1) // 2


def block_images(H_out, W_out, N):
    """Images per block: enough for BLOCK_TILES tile columns, at most N."""
    th, tw = tiles(H_out, W_out)
    return max(1, min(N, -(-BLOCK_TILES // (th * tw))))


def transform_weights(w, dtype):
    """w (F, C, 3, 3) -> U (16, F, C) in ``dtype`` (computed in float64)."""
    F, C = w.shape[:2]
    U = np.empty((16, F, C), dtype=dtype)
    _transform_weights(np.ascontiguousarray(w), U)
    return U


def weights_grad(dU):
    """The adjoint of transform_weights: dU (16, F, C) -> dw (F, C, 3, 3) in float64."""
    _, F, C = dU.shape
    dw = np.empty((F, C, 3, 3))
    _weights_grad(np.ascontiguousarray(dU), dw)
    return dw


# Both weight transforms are a few adds per weight: a kernel instead of np.einsum, whose path
# search and temporaries cost more than the arithmetic (measured 0.2-3 ms a call against ~10 us)

@njit(cache=True)
def _g_rows(a, b, c):
    # G (a, b, c)^T: rows of G are (1, 0, 0), (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1)
    return a, 0.5 * (a + b + c), 0.5 * (a - b + c), c


@njit(cache=True)
def _gt_rows(a, b, c, d):
    # G^T (a, b, c, d)^T, the adjoint of _g_rows
    return a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d


@njit(cache=True)
def _transform_weights(w, U):
    # U[4a + b, f, c] = (G w[f, c] G^T)[a, b], in float64 then rounded to U's dtype
    F, C = w.shape[0], w.shape[1]
    t = np.empty((4, 3))
    for f in range(F):
        for c in range(C):
            k = w[f, c]
            for l in range(3):   # G w: down each column of w
                t[0, l], t[1, l], t[2, l], t[3, l] = _g_rows(np.float64(k[0, l]), np.float64(k[1, l]),
                                                             np.float64(k[2, l]))
            for a in range(4):   # then (G w) G^T: along each row
                u0, u1, u2, u3 = _g_rows(t[a, 0], t[a, 1], t[a, 2])
                U[4 * a, f, c] = u0
                U[4 * a + 1, f, c] = u1
                U[4 * a + 2, f, c] = u2
                U[4 * a + 3, f, c] = u3


@njit(cache=True)
def _weights_grad(dU, dw):
    # dw[f, c] = G^T dU[:, f, c] (as 4x4) G, in float64
    F, C = dU.shape[1], dU.shape[2]
    t = np.empty((4, 3))
    for f in range(F):
        for c in range(C):
            for a in range(4):   # dU G: along each row
                t[a, 0], t[a, 1], t[a, 2] = _gt_rows(np.float64(dU[4 * a, f, c]), np.float64(dU[4 * a + 1, f, c]),
                                                     np.float64(dU[4 * a + 2, f, c]), np.float64(dU[4 * a + 3, f, c]))
            k = dw[f, c]
            for l in range(3):   # then G^T (dU G): down each column
                k[0, l], k[1, l], k[2, l] = _gt_rows(t[0, l], t[1, l], t[2, l], t[3, l])


@njit(cache=True)
def _in_transform(xn, pad, th, tw, xpad, V, col0):
    # V[:, c, col0 + i*tw + j] = B^T d B for the 4x4 tile d at (2i, 2j) of the padded image.
    # xpad (C, 2th+2, 2tw+2) is zero outside the image; only the image is copied in.
    # Inner loops index with unsigned integers: a signed index that is not provably non-negative
    # gets a wraparound test per access, which stops LLVM vectorising the loop (the copy below
    # ran ~20x slower in a measured toy)
    C, H, W = xn.shape
    upad = np.uint64(pad)
    for c in range(C):
        for y in range(H):
            dst = xpad[c, y + pad]
            src = xn[c, y]
            for x in range(np.uint64(W)):
                dst[x + upad] = src[x]
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
    C, H, W = dxn.shape
    upad = np.uint64(pad)
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
    for c in range(C):
        for y in range(H):
            src = dxpad[c, y + pad]
            dst = dxn[c, y]
            for x in range(np.uint64(W)):
                dst[x] = src[x + upad]


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


@njit(cache=True)
def forward_block(x, n0, n1, U, b, pad, H_out, W_out, out, V, M, xpad):
    # out[n] (F, H_out*W_out) for images n0 <= n < n1 of x; V (16, C, >= cols), M (16, F, >= cols)
    # and xpad (C, 2th+2, 2tw+2, zero outside the image) are scratch
    _, F, C = U.shape
    th, tw = (H_out + 1) // 2, (W_out + 1) // 2
    T = th * tw
    cols = (n1 - n0) * T
    for n in range(n0, n1):
        _in_transform(x[n], pad, th, tw, xpad, V, (n - n0) * T)
    ld = 16 * V.shape[2]   # V[:, xi] and M[:, xi] are matrices with rows 16 tiles apart
    for xi in range(16):
        gemm(False, False, F, cols, C, 1.0, U[xi], C, V[0, xi], ld, 0.0, M[0, xi], ld)
    for n in range(n0, n1):
        _out_transform(M, (n - n0) * T, th, tw, H_out, W_out, b, out[n])


@njit(cache=True)
def backward_block(x, n0, n1, U, dout, pad, H_out, W_out, need_dx, dx, dU, db, V, M, xpad, dxpad):
    # for images n0 <= n < n1: dU (16, F, C) += dM @ V^T, db (F,) += sums of dout, dx[n] if need_dx.
    # dout[n] is (F, H_out*W_out); V, M, xpad, dxpad scratch as in forward_block (V is reused
    # for dV, position by position, once dU has taken what it needs)
    _, F, C = U.shape
    th, tw = (H_out + 1) // 2, (W_out + 1) // 2
    T = th * tw
    cols = (n1 - n0) * T
    for n in range(n0, n1):
        _in_transform(x[n], pad, th, tw, xpad, V, (n - n0) * T)
        dn = dout[n]
        _out_transform_adjoint(dn, H_out, W_out, th, tw, M, (n - n0) * T)
        for f in range(F):
            db[f] += row_total(dn[f])
    ld = 16 * V.shape[2]
    for xi in range(16):
        gemm(False, True, F, C, cols, 1.0, M[0, xi], ld, V[0, xi], ld, 1.0, dU[xi], C)
        if need_dx:
            gemm(True, False, C, cols, F, 1.0, U[xi], C, M[0, xi], ld, 0.0, V[0, xi], ld)
    if need_dx:
        for n in range(n0, n1):
            _in_transform_adjoint(V, (n - n0) * T, th, tw, pad, dxpad, dx[n])


@njit(parallel=True, cache=True)
def _forward(x, U, b, pad, H_out, W_out, B, T, out):
    # out (N, F, P); T chunks of images, each in blocks of B
    N, C, H, W = x.shape
    F = U.shape[1]
    th, tw = (H_out + 1) // 2, (W_out + 1) // 2
    for t in prange(T):
        V = np.empty((C, 16, B * th * tw), dtype=x.dtype)
        M = np.empty((F, 16, B * th * tw), dtype=x.dtype)
        xpad = np.zeros((C, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
        end = (t + 1) * N // T
        for n0 in range(t * N // T, end, B):
            forward_block(x, n0, min(n0 + B, end), U, b, pad, H_out, W_out, out, V, M, xpad)


@njit(parallel=True, cache=True)
def _backward(x, U, dout, pad, B, need_dx, dx, dU_part, db_part):
    # dout (N, F, P); chunk t owns dU_part[t], db_part[t] and dx of its images
    N, C, H, W = x.shape
    F = U.shape[1]
    T = dU_part.shape[0]
    H_out, W_out = H + 2 * pad - 2, W + 2 * pad - 2
    th, tw = (H_out + 1) // 2, (W_out + 1) // 2
    for t in prange(T):
        V = np.empty((C, 16, B * th * tw), dtype=x.dtype)
        M = np.empty((F, 16, B * th * tw), dtype=x.dtype)
        xpad = np.zeros((C, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
        dxpad = np.empty((C, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
        dU_part[t] = 0
        db_part[t] = 0
        end = (t + 1) * N // T
        for n0 in range(t * N // T, end, B):
            backward_block(x, n0, min(n0 + B, end), U, dout, pad, H_out, W_out, need_dx, dx, dU_part[t],
                           db_part[t], V, M, xpad, dxpad)


def forward(x, w, b, pad, H_out, W_out, T, out):
    """out (N, F, H_out*W_out) = conv(x, w) + b; returns U for backward. Call with BLAS on one thread."""
    U = transform_weights(w, x.dtype)
    _forward(x, U, b, pad, H_out, W_out, block_images(H_out, W_out, x.shape[0]), T, out)
    return U


def backward(x, U, dout, pad, T, need_dx, dx):
    """dout (N, F, H_out*W_out) -> (dw (F, C, 3, 3), db (F,)), and dx (N, C, H, W) if need_dx."""
    _, F, C = U.shape
    H_out, W_out = x.shape[2] + 2 * pad - 2, x.shape[3] + 2 * pad - 2
    dU_part = np.empty((T, 16, F, C), dtype=x.dtype)
    db_part = np.empty((T, F), dtype=x.dtype)
    _backward(x, U, dout, pad, block_images(H_out, W_out, x.shape[0]), need_dx, dx, dU_part, db_part)
    return weights_grad(dU_part.sum(axis=0)).astype(x.dtype), db_part.sum(axis=0)
