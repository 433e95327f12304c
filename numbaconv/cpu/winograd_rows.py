"""Winograd F(4, 3) along rows only, for 3-wide stride-1 layers with few input channels.

Each output row segment of 4 pixels is computed from 6 consecutive input pixels of each kernel
row as ``y = A^T [(G g) * (B^T d)]`` (the 1-D form of ``winograd``'s F(4x4), with its matrices):
6 products per 4 outputs and kernel row instead of 12. Over a block of images the products are
6 GEMMs, one per transformed position xi: ``M[xi] (F, tiles) = U[xi] (F, C*HH) @ V[xi] (C*HH,
tiles)``. Their inner dimension is C*HH (36 at 12 input channels), where OpenBLAS runs about as
fast as on im2col's C*HH*WW (measured 68 and 76 GFLOP/s, float32, one thread), while 2-D Winograd's
C (12) is too short to pay; and there is no im2col copy (the input transform writes 6*C*HH values
per 4 outputs instead of 3*4*C*HH).

Backward stays in the transformed domain as ``winograd``'s does: ``dM = A dY`` per tile, then
``dU[xi] += dM[xi] @ V[xi]^T`` (dw = G^T dU) and, for dx, ``dV[xi] = U[xi]^T @ dM[xi]`` and ``B dV``
added back onto the overlapping input positions (the fused layers skip dx for a first layer).

Measured (one process, turns taken, median; 2 threads on a lightly loaded 2-core machine, N=128,
pad 1), im2col's time / this one's: 12 -> 24 @ 16x16 conv forward 1.1-1.25x, backward 1.2-1.25x,
the fused layer's kernels forward 1.2-1.3x, dx-free backward 1.1-1.2x; 12 -> 32 @ 32x32 1.3-1.55x
(float32 and float64).

As with any Winograd transform, an infinite input mixes into the whole tile: where x holds inf or
NaN, outputs of the same 4-pixel tile may be NaN where direct convolution gives a finite value or
inf (``MIN_CHANNELS`` keeps the tiny layers of the property tests on im2col).

Work is split as everywhere in the cpu backend: one contiguous chunk of images per thread, each
with its own scratch, partial dU and db summed in chunk order, so results repeat exactly for a
fixed thread count. ``use`` says which layers take this path.
"""
import numpy as np
from numba import njit, prange

from ._gemm import gemm
from ._reduce import row_total
from .winograd import G4, chunk_total

TILE = 4          # outputs per tile
TAPS = 6          # inputs per tile (TILE + 3 - 1)
# Below this many input channels im2col stays (3 -> 32 @ 32x32, float32: forward 1.07x, dw 0.96x of
# im2col's time; C*HH = 9 is a short GEMM inner dimension)
MIN_CHANNELS = 8
# Tile columns per GEMM: images are grouped into blocks of at least this many (16x16 maps: 2 images).
# 64, 128, 256 and 512 measured within ~5% of each other at 12 -> 24 @ 16x16; 512 slower at 32x32
BLOCK_TILES = 128


def use(C, HH, WW, stride, W_out):
    """True where this path computes a layer that 2-D Winograd does not (callers ask
    ``winograd.tile_size`` first): 3 wide, stride 1, at least MIN_CHANNELS input channels."""
    return WW == 3 and stride == 1 and C >= MIN_CHANNELS and W_out >= TILE


@njit(cache=True)
def tiles_per_row(W_out):
    """Tiles covering a row of W_out outputs (the last may be partial)."""
    return (W_out + TILE - 1) // TILE


def block_images(H_out, W_out, N):
    """Images per block: enough for BLOCK_TILES tile columns, at most N."""
    return max(1, min(N, -(-BLOCK_TILES // (H_out * tiles_per_row(W_out)))))


def transform_weights(w, dtype):
    """(F, C, HH, 3) -> U (6, F, C*HH): U[xi, f, c*HH + k] = (G w[f, c, k])[xi], in float64 then dtype."""
    F, C, HH, _ = w.shape
    U = np.empty((TAPS, F, C * HH), dtype=dtype)
    _transform_weights(np.ascontiguousarray(w).reshape(F, C * HH, 3), G4, U)
    return U


def weights_grad(dU_part, C):
    """Per-chunk parts dU_part (T, 6, F, C*HH), summed in chunk order in their dtype -> dw (F, C, HH, 3)
    = G^T dU in that dtype (computed in float64)."""
    _, _, F, K = dU_part.shape
    dw = np.empty((F, K, 3), dtype=dU_part.dtype)
    _weights_grad(np.ascontiguousarray(dU_part), G4, dw)
    return dw.reshape(F, C, K // C, 3)


# Kernels rather than np.einsum for the weight transforms: einsum's setup cost ~0.1 ms a call on
# these few thousand weights (measured), more than the arithmetic

@njit(cache=True)
def _transform_weights(w, Gm, U):
    # U[xi, f, k] = sum_l Gm[xi, l] w[f, k, l] in float64, rounded to U's dtype
    F, K = w.shape[0], w.shape[1]
    for xi in range(TAPS):
        g0, g1, g2 = Gm[xi, 0], Gm[xi, 1], Gm[xi, 2]
        for f in range(F):
            wf, u = w[f], U[xi, f]
            for k in range(K):
                u[k] = g0 * np.float64(wf[k, 0]) + g1 * np.float64(wf[k, 1]) + g2 * np.float64(wf[k, 2])


@njit(cache=True)
def _weights_grad(dU_part, Gm, dw):
    # dw[f, k, l] = sum_xi Gm[xi, l] dU[xi, f, k] in float64, dU = the parts added in chunk order
    F, K = dU_part.shape[2], dU_part.shape[3]
    acc = np.empty(K, dtype=dU_part.dtype)
    s = np.empty((3, K))
    for f in range(F):
        s[:] = 0.0
        for xi in range(TAPS):
            chunk_total(dU_part, xi, f, acc)
            for l in range(3):
                g, sl = Gm[xi, l], s[l]
                for k in range(K):
                    sl[k] += g * np.float64(acc[k])
        for k in range(K):
            for l in range(3):
                dw[f, k, l] = s[l, k]


@njit(cache=True)
def scratch(x, F, K, pad, H_out, tw, B):
    # one chunk's buffers, allocated once per chunk: the padded image xq and its tail columns
    # (zero outside the image), the split plane s, the transformed inputs V (6, K, B*Q) and the
    # products M (6, F, B*Q)
    C, Hp = x.shape[1], x.shape[2] + 2 * pad
    Q = H_out * tw
    xq = np.zeros((C, Hp, TILE * tw), dtype=x.dtype)
    tail = np.zeros((C, Hp, 2), dtype=x.dtype)
    s = np.zeros((4, Hp * tw + 1), dtype=x.dtype)
    return xq, tail, s, np.empty((TAPS, K, B * Q), dtype=x.dtype), np.empty((TAPS, F, B * Q), dtype=x.dtype)


@njit(cache=True)
def _pad_copy(xn, pad, tw, xq, tail):
    # xq (C, Hp, 4*tw): the padded image's columns below 4*tw; tail (C, Hp, 2): columns 4*tw and
    # 4*tw + 1 (the last tile's inputs 4 and 5). Both are zero outside the image (zeroed once
    # when allocated; only image positions are written)
    C, H, W = xn.shape
    Wq = TILE * tw
    nin = min(W, Wq - pad)
    for c in range(C):
        for y in range(H):
            src = xn[c, y]
            dst = xq[c, y + pad]
            for j in range(nin):
                dst[j + pad] = src[j]
            for e in range(2):
                j = Wq + e - pad
                if 0 <= j < W:
                    tail[c, y + pad, e] = src[j]


@njit(cache=True)
def _rows_are_tiles(W, pad, tw):
    """Image rows exactly the tiles' width (16- and 32-wide maps, pad 0 or 1): _split reads the image
    itself, and no padded copy is made."""
    return W == TILE * tw and pad <= 1


@njit(cache=True)
def _split(xn, c, pad, tw, xq, tail, s):
    # s[e][y*tw + t] = the padded plane c at (y, 4t + e), e < 4. Where _rows_are_tiles, straight
    # from the image in one loop over the plane, then the row ends put right; else from xq, the
    # padded copy (_pad_copy)
    H, W = xn.shape[1], xn.shape[2]
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    if _rows_are_tiles(W, pad, tw):
        xf = xn[c].reshape(-1)
        if pad == 0:
            for q in range(H * tw):
                s0[q] = xf[TILE * q]
                s1[q] = xf[TILE * q + 1]
                s2[q] = xf[TILE * q + 2]
                s3[q] = xf[TILE * q + 3]
            return
        for q in range(H * tw):   # column j of the image is padded column j + 1
            s1[tw + q] = xf[TILE * q]
            s2[tw + q] = xf[TILE * q + 1]
            s3[tw + q] = xf[TILE * q + 2]
            s0[tw + q + 1] = xf[TILE * q + 3]
        for y in range(H):        # each row's last pixel went to the next row's left padding
            s0[(y + 1) * tw] = 0
            tail[c, y + 1, 0] = xf[y * W + W - 1]
        s0[(H + 1) * tw] = 0
        return
    xf = xq[c].reshape(-1)
    for q in range(s.shape[1] - 1):
        s0[q] = xf[TILE * q]
        s1[q] = xf[TILE * q + 1]
        s2[q] = xf[TILE * q + 2]
        s3[q] = xf[TILE * q + 3]


@njit(cache=True)
def _in_transform(xn, pad, xq, tail, HH, H_out, tw, s, V, col0):
    # V[xi, c*HH + k, col0 + i*tw + t] = (B^T d)[xi] for d the 6 inputs of tile t of padded row
    # i + k of image xn. Per channel the padded plane is first split (_split), so each transformed
    # row is one loop over the image's tiles (rows of 16-pixel maps are 4 tiles: loops per image
    # row cost more to start than they do); inputs 4 and 5 are s[0], s[1] one tile on, except in
    # the last tile of a row, redone from the tail columns. One loop per output row: six at once
    # were not vectorised (too many pointers to check)
    dt = V.dtype.type
    h, two, q5, g5 = dt(1.5), dt(2.0), dt(0.5), dt(2.5)
    C = xq.shape[0]
    Q = H_out * tw
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    for c in range(C):
        _split(xn, c, pad, tw, xq, tail, s)
        for k in range(HH):
            r = c * HH + k
            o = k * tw
            a0, a1, a2, a3 = s0[o:o + Q + 1], s1[o:o + Q + 1], s2[o:o + Q], s3[o:o + Q]
            v = V[0, r, col0:col0 + Q]
            for q in range(Q):
                v[q] = a0[q] - h * a1[q] - two * a2[q] + h * a3[q] + a0[q + 1]
            v = V[1, r, col0:col0 + Q]
            for q in range(Q):
                v[q] = q5 * a2[q] - a1[q] + g5 * a3[q] + a0[q + 1]
            v = V[2, r, col0:col0 + Q]
            for q in range(Q):
                v[q] = a1[q] - g5 * a2[q] + q5 * a3[q] + a0[q + 1]
            v = V[3, r, col0:col0 + Q]
            for q in range(Q):
                v[q] = two * (a3[q] - a1[q]) - a2[q] + a0[q + 1]
            v = V[4, r, col0:col0 + Q]
            for q in range(Q):
                v[q] = q5 * (a1[q] - a3[q]) - a2[q] + a0[q + 1]
            v = V[5, r, col0:col0 + Q]
            for q in range(Q):
                v[q] = a1[q] - h * a2[q] - two * a3[q] + h * a0[q + 1] + a1[q + 1]
            for i in range(H_out):   # the last tile of each row
                q = i * tw + tw - 1
                d0, d1, d2, d3 = a0[q], a1[q], a2[q], a3[q]
                d4, d5 = tail[c, i + k, 0], tail[c, i + k, 1]
                p = col0 + q
                V[0, r, p] = d0 - h * d1 - two * d2 + h * d3 + d4
                V[1, r, p] = q5 * d2 - d1 + g5 * d3 + d4
                V[2, r, p] = d1 - g5 * d2 + q5 * d3 + d4
                V[3, r, p] = two * (d3 - d1) - d2 + d4
                V[4, r, p] = q5 * (d1 - d3) - d2 + d4
                V[5, r, p] = d1 - h * d2 - two * d3 + h * d4 + d5


@njit(cache=True)
def _out_transform(M, col0, H_out, W_out, tw, b, on):
    # on (F, H_out*W_out) = A^T m + b for each tile m = M[:, f, col0 + i*tw + t]; outputs past
    # the row (W_out not a multiple of 4) are dropped
    dt = on.dtype.type
    q5, q25, q125, two, four, eight = dt(0.5), dt(0.25), dt(0.125), dt(2.0), dt(4.0), dt(8.0)
    F = on.shape[0]
    Q = H_out * tw
    full = W_out // TILE
    for f in range(F):
        bf = b[f]
        o = on[f]
        m0 = M[0, f, col0:col0 + Q]
        m1 = M[1, f, col0:col0 + Q]
        m2 = M[2, f, col0:col0 + Q]
        m3 = M[3, f, col0:col0 + Q]
        m4 = M[4, f, col0:col0 + Q]
        m5 = M[5, f, col0:col0 + Q]
        if full == tw:   # rows of whole tiles: tile q's outputs are o[4q:4q + 4]
            for q in range(Q):
                a1, a2, a3, a4 = m1[q], m2[q], m3[q], m4[q]
                s, d = a1 + a2, a1 - a2
                p = TILE * q
                o[p] = m0[q] + s + a3 + a4 + bf
                o[p + 1] = d + q5 * a3 - two * a4 + bf
                o[p + 2] = s + q25 * a3 + four * a4 + bf
                o[p + 3] = d + q125 * a3 - eight * a4 + m5[q] + bf
        else:
            for i in range(H_out):
                for t in range(tw):
                    q = i * tw + t
                    a1, a2, a3, a4 = m1[q], m2[q], m3[q], m4[q]
                    s, d = a1 + a2, a1 - a2
                    p = i * W_out + TILE * t
                    n = min(TILE, W_out - TILE * t)
                    o[p] = m0[q] + s + a3 + a4 + bf
                    if n > 1:
                        o[p + 1] = d + q5 * a3 - two * a4 + bf
                    if n > 2:
                        o[p + 2] = s + q25 * a3 + four * a4 + bf
                    if n > 3:
                        o[p + 3] = d + q125 * a3 - eight * a4 + m5[q] + bf


@njit(cache=True)
def forward_block(x, n0, n1, U, b, pad, H_out, W_out, out, xq, tail, s, V, M):
    # out[n] (F, P) for n0 <= n < n1: the input transforms, 6 GEMMs, the output transforms
    F, K = U.shape[1], U.shape[2]
    C = x.shape[1]
    HH = K // C
    tw = xq.shape[2] // TILE
    Q = H_out * tw
    ld = V.shape[2]
    for n in range(n0, n1):
        if not _rows_are_tiles(x.shape[3], pad, tw):
            _pad_copy(x[n], pad, tw, xq, tail)
        _in_transform(x[n], pad, xq, tail, HH, H_out, tw, s, V, (n - n0) * Q)
    for xi in range(TAPS):
        gemm(False, False, F, (n1 - n0) * Q, K, 1.0, U[xi], K, V[xi], ld, 0.0, M[xi], ld)
    for n in range(n0, n1):
        _out_transform(M, (n - n0) * Q, H_out, W_out, tw, b, out[n])


@njit(parallel=True, cache=True)
def _forward(x, U, b, pad, H_out, W_out, B, T, out):
    # out (N, F, P); chunk t owns images t*N//T <= n < (t+1)*N//T, B at a time
    N, C, H = x.shape[0], x.shape[1], x.shape[2]
    F, K = U.shape[1], U.shape[2]
    tw = (W_out + TILE - 1) // TILE
    Q = H_out * tw
    for t in prange(T):
        xq, tail, s, V, M = scratch(x, F, K, pad, H_out, tw, B)
        end = (t + 1) * N // T
        for n0 in range(t * N // T, end, B):
            forward_block(x, n0, min(n0 + B, end), U, b, pad, H_out, W_out, out, xq, tail, s, V, M)


@njit(cache=True)
def _dout_transform(dn, col0, H_out, W_out, tw, dM):
    # dM[xi, f, col0 + q] = (A dy)[xi] for dy the outputs of tile q of dn (F, P) (the adjoint of
    # _out_transform; outputs past the row count as 0)
    dt = dM.dtype.type
    q5, q25, q125, two, four, eight = dt(0.5), dt(0.25), dt(0.125), dt(2.0), dt(4.0), dt(8.0)
    F = dn.shape[0]
    Q = H_out * tw
    full = W_out // TILE
    for f in range(F):
        g = dn[f]
        m0 = dM[0, f, col0:col0 + Q]
        m1 = dM[1, f, col0:col0 + Q]
        m2 = dM[2, f, col0:col0 + Q]
        m3 = dM[3, f, col0:col0 + Q]
        m4 = dM[4, f, col0:col0 + Q]
        m5 = dM[5, f, col0:col0 + Q]
        for q in range(Q):
            if full == tw:
                p = TILE * q
                y0, y1, y2, y3 = g[p], g[p + 1], g[p + 2], g[p + 3]
            else:
                i, t = q // tw, q % tw
                p = i * W_out + TILE * t
                n = min(TILE, W_out - TILE * t)
                y0 = g[p]
                y1 = g[p + 1] if n > 1 else dt(0.0)
                y2 = g[p + 2] if n > 2 else dt(0.0)
                y3 = g[p + 3] if n > 3 else dt(0.0)
            m0[q] = y0
            m1[q] = y0 + y1 + y2 + y3
            m2[q] = y0 - y1 + y2 - y3
            m3[q] = y0 + q5 * y1 + q25 * y2 + q125 * y3
            m4[q] = y0 - two * y1 + four * y2 - eight * y3
            m5[q] = y3


@njit(cache=True)
def _in_transform_adjoint(dV, col0, HH, H_out, tw, pad, ds, dtail, e4, dxn):
    # dxn (C, H, W) = the sum of B dV over the tiles covering each input position (the adjoint of
    # _in_transform: each step of it in reverse). ds (4, Hp*tw + 1), dtail (Hp, 2) and e4 (Q,)
    # are scratch. One loop per input phase, as in _in_transform, so each vectorises
    dt = dV.dtype.type
    h, two, q5, g5 = dt(1.5), dt(2.0), dt(0.5), dt(2.5)
    C, H, W = dxn.shape
    Q = H_out * tw
    ds0, ds1, ds2, ds3 = ds[0], ds[1], ds[2], ds[3]
    for c in range(C):
        ds[:] = 0
        dtail[:] = 0
        for k in range(HH):
            r = c * HH + k
            o = k * tw
            v0 = dV[0, r, col0:col0 + Q]
            v1 = dV[1, r, col0:col0 + Q]
            v2 = dV[2, r, col0:col0 + Q]
            v3 = dV[3, r, col0:col0 + Q]
            v4 = dV[4, r, col0:col0 + Q]
            v5 = dV[5, r, col0:col0 + Q]
            a = ds0[o:o + Q]   # inputs 0-3 of tile q: B's columns 0-3
            for q in range(Q):
                a[q] += v0[q]
            a = ds1[o:o + Q]
            for q in range(Q):
                a[q] += v2[q] - h * v0[q] - v1[q] - two * v3[q] + q5 * v4[q] + v5[q]
            a = ds2[o:o + Q]
            for q in range(Q):
                a[q] += q5 * v1[q] - two * v0[q] - g5 * v2[q] - v3[q] - v4[q] - h * v5[q]
            a = ds3[o:o + Q]
            for q in range(Q):
                a[q] += h * v0[q] + g5 * v1[q] + q5 * v2[q] + two * v3[q] - q5 * v4[q] - two * v5[q]
            for q in range(Q):   # input 4: column 4 of the next tile (s[0] one on), or the tail
                e4[q] = v0[q] + v1[q] + v2[q] + v3[q] + v4[q] + h * v5[q]
            for i in range(H_out):
                q = i * tw + tw - 1
                dtail[i + k, 0] += e4[q]
                dtail[i + k, 1] += v5[q]
                e4[q] = 0
            a = ds0[o + 1:o + Q + 1]
            for q in range(Q):
                a[q] += e4[q]
            for i in range(H_out):   # input 5 likewise, from s[1]; the last tiles' went to the tail
                q = i * tw + tw - 1
                e4[q] = v5[q]
                v5[q] = 0
            a = ds1[o + 1:o + Q + 1]
            for q in range(Q):
                a[q] += v5[q]
            for i in range(H_out):   # (dV is scratch, but put back what was borrowed)
                q = i * tw + tw - 1
                v5[q] = e4[q]
        # the padded plane's gradient at image positions: column j + pad is tile (j + pad) // 4,
        # phase (j + pad) % 4, or a tail column
        xo = dxn[c]
        Wq = TILE * tw
        for y in range(H):
            row = (y + pad) * tw
            for j in range(W):
                col = j + pad
                if col < Wq:
                    xo[y, j] = ds[col % TILE, row + col // TILE]
                else:
                    xo[y, j] = dtail[y + pad, col - Wq]


@njit(cache=True)
def backward_block(x, n0, n1, dn, pad, H_out, W_out, U, need_dx, dx, dU, db, xq, tail, s, V, M, ds, dtail, e4):
    # adds images n0 <= n < n1's shares to dU (6, F, K) and db (F,) and, if need_dx, writes dx[n];
    # dn[n - n0] (F, P) is the gradient at image n's output. M holds the transformed gradient
    # (dM); then, for dx, V the transformed input gradient (dV = U^T dM) and ds its split plane
    # (not s: _split leaves s's padding as it finds it, zero)
    F, K = dU.shape[1], dU.shape[2]
    C = x.shape[1]
    HH = K // C
    tw = xq.shape[2] // TILE
    Q = H_out * tw
    ld = V.shape[2]
    for n in range(n0, n1):
        if not _rows_are_tiles(x.shape[3], pad, tw):
            _pad_copy(x[n], pad, tw, xq, tail)
        _in_transform(x[n], pad, xq, tail, HH, H_out, tw, s, V, (n - n0) * Q)
        col0 = (n - n0) * Q
        _dout_transform(dn[n - n0], col0, H_out, W_out, tw, M)
        for f in range(F):   # dM[1] holds each tile's sum of dy: a quarter of the terms to add
            db[f] += row_total(M[1, f, col0:col0 + Q])
    for xi in range(TAPS):   # dU[xi] += dM[xi] @ V[xi]^T
        gemm(False, True, F, K, (n1 - n0) * Q, 1.0, M[xi], ld, V[xi], ld, 1.0, dU[xi], K)
    if need_dx:
        for xi in range(TAPS):   # dV[xi] = U[xi]^T @ dM[xi], into V (used up)
            gemm(True, False, K, (n1 - n0) * Q, F, 1.0, U[xi], K, M[xi], ld, 0.0, V[xi], ld)
        for n in range(n0, n1):
            _in_transform_adjoint(V, (n - n0) * Q, HH, H_out, tw, pad, ds, dtail, e4, dx[n])


@njit(parallel=True, cache=True)
def _backward(x, U, dout, pad, H_out, W_out, B, need_dx, dx, dU_part, db_part):
    # chunk t owns dU_part[t], db_part[t] and dx of its images
    N = x.shape[0]
    F, K = dU_part.shape[2], dU_part.shape[3]
    T = dU_part.shape[0]
    tw = (W_out + TILE - 1) // TILE
    for t in prange(T):
        xq, tail, s, V, M = scratch(x, F, K, pad, H_out, tw, B)
        ds, dtail, e4 = np.empty_like(s), np.empty_like(tail[0]), np.empty(H_out * tw, dtype=x.dtype)
        dU_part[t] = 0
        db_part[t] = 0
        end = (t + 1) * N // T
        for n0 in range(t * N // T, end, B):
            n1 = min(n0 + B, end)
            backward_block(x, n0, n1, dout[n0:n1], pad, H_out, W_out, U, need_dx, dx, dU_part[t], db_part[t],
                           xq, tail, s, V, M, ds, dtail, e4)


def forward(x, w, b, pad, H_out, W_out, T, out):
    """out (N, F, H_out*W_out) = conv(x, w) + b by Winograd along rows, in T chunks of images;
    returns the transformed weights U (6, F, C*HH) for backward."""
    U = transform_weights(w, x.dtype)
    _forward(x, U, np.ascontiguousarray(b), pad, H_out, W_out, block_images(H_out, W_out, x.shape[0]), T, out)
    return U


def backward(x, U, dout, pad, H_out, W_out, T, need_dx, dx):
    """(dw, db) of the layer whose forward ran here (U its transformed weights), dx written if
    need_dx; dout (N, F, H_out*W_out); T chunks of images, partials summed in chunk order."""
    N, F = dout.shape[0], dout.shape[1]
    C = x.shape[1]
    dU_part = np.empty((T,) + U.shape, dtype=x.dtype)
    db_part = np.empty((T, F), dtype=x.dtype)
    _backward(x, U, dout, pad, H_out, W_out, block_images(H_out, W_out, N), need_dx, dx, dU_part, db_part)
    return weights_grad(dU_part, C), db_part.sum(axis=0)
