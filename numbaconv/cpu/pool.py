"""Max pooling: parallel over (image, channel) planes; each plane is one iteration's own.

Every window gives its first NaN, or else its first maximum (row-major order: the shared rule).
Any window and stride: forward records the winner's flat index per output element; backward
scatters dout to those indices plane by plane in the reference's order, so overlapping windows add
up in the same order and float64 results match the reference exactly.

2x2 windows of stride 2 (the models' pool; they tile the plane) have their own kernels, written
so that LLVM vectorises them (the generic loop's data-dependent branches mispredicted about every
other window on real data: ~7 ns per input element on one thread, 3-30x these). Their results
are the generic loop's, bit for bit (tests/test_cpu_pool_bn_speed.py).
"""
import numba
import numpy as np
from numba import njit, prange

from ..checks import check_dout, pool_geometry
from ._blas import kernel_threads


@njit(parallel=True, cache=True)
def _pool_forward(x, ph, pw, stride, out, arg):
    N, C, H, W = x.shape
    _, _, H_out, W_out = out.shape
    for t in prange(N * C):
        n = t // C
        c = t % C
        plane = x[n, c]
        for i in range(H_out):
            for j in range(W_out):
                y0 = i * stride
                x0 = j * stride
                best = plane[y0, x0]
                at = y0 * W + x0
                for k in range(ph):
                    for l in range(pw):
                        v = plane[y0 + k, x0 + l]
                        # v > best or v is NaN, unless best already is NaN: ties keep the
                        # first maximum, and the first NaN wins and stays
                        if not (v <= best) and best == best:
                            best = v
                            at = (y0 + k) * W + x0 + l
                out[n, c, i, j] = best
                arg[n, c, i, j] = at


# --- 2x2 windows, stride 2 --------------------------------------------------------------------
# A plane (H, W) is handled flat, in passes whose loops are long or unit-stride (rows of the
# output are only W/2 long: too short for LLVM's vector loop, whose scalar remainder turns the
# selects into mispredicted branches). Pass 1, over all H*W/2 horizontal pairs of the plane:
# h = the pair's winner, code = 1 (left) or 2 (right). Pass 2, per pair of rows: the winner of
# the two rows' h (the first maximum / first NaN of the window: the left-right and top-bottom
# rules compose to the row-major chain's), and the losing row's codes set to 0. So code (H, W/2)
# says for every horizontal pair whether, and which, of its elements won: backward expands each
# dout row to both rows of its windows and writes dx in one flat pass, every element once (no
# zeroing, no scatter). Selects between constants and arithmetic on the 0/1 flag, not selects of
# loaded codes: those LLVM left scalar (measured 5-8x slower). Indices are unsigned so Numba emits
# no negative-index wraparound.

MIN_WIDTH_2X2 = 4   # 2-wide planes (one window per row pair): the generic loop measured faster


@njit(cache=True)
def _max2x2_plane(x, o, code, h, W):
    # x (H*W,) -> o (H*W/4,); code, h (H*W/2,): code as above, h scratch
    # (the sizes in signed arithmetic, then converted: np.uint64(W) // 2 made this ~5x slower)
    one, two = np.uint64(1), np.uint64(2)
    Wo = np.uint64(W // 2)
    Ho = np.uint64(x.size // W // 2)
    K = two * Ho * Wo
    c1, c2 = np.uint8(1), np.uint8(2)
    for k in range(K):
        a, b = x[two * k], x[two * k + one]
        t = (not (b <= a)) & (a == a)   # b > a or b NaN, unless a is NaN: ties keep the first
        h[k] = b if t else a
        code[k] = c2 if t else c1
    for i in range(Ho):
        top = two * i * Wo
        bot = top + Wo
        q = i * Wo
        for j in range(Wo):
            a, b = h[top + j], h[bot + j]
            t = (not (b <= a)) & (a == a)
            o[q + j] = b if t else a
            m = np.uint8(t)
            code[top + j] = code[top + j] * (np.uint8(1) - m)
            code[bot + j] = code[bot + j] * m


@njit(cache=True)
def _unpool2x2_plane(d, code, dx, g, W):
    # d (H*W/4,), code (H*W/2,) -> dx (H*W,); g scratch (H*W/2,)
    one, two = np.uint64(1), np.uint64(2)
    Wo = np.uint64(W // 2)
    Ho = np.uint64(code.size // W)
    K = two * Ho * Wo
    z = dx.dtype.type(0)
    c1, c2 = np.uint8(1), np.uint8(2)
    for i in range(Ho):
        top = two * i * Wo
        q = i * Wo
        for j in range(Wo):
            g[top + j] = d[q + j]
            g[top + Wo + j] = d[q + j]
    for k in range(K):
        v = g[k] + z   # 0 + dout, as the generic scatter's += into zeros (-0.0 becomes 0.0)
        c = code[k]
        dx[two * k] = v if c == c1 else z
        dx[two * k + one] = v if c == c2 else z


@njit(parallel=True, cache=True)
def _pool2x2_forward(x, out, code, W, T):
    # x (planes, H*W), out (planes, H*W/4), code (planes, H*W/2); T chunks of planes, each with
    # its scratch row (the planes are independent: results do not depend on T)
    P = x.shape[0]
    for t in prange(T):
        h = np.empty(code.shape[1], dtype=x.dtype)
        for p in range(t * P // T, (t + 1) * P // T):
            _max2x2_plane(x[p], out[p], code[p], h, W)


@njit(parallel=True, cache=True)
def _pool2x2_backward(dout, code, dx, W, T):
    P = dx.shape[0]
    for t in prange(T):
        g = np.empty(code.shape[1], dtype=dx.dtype)
        for p in range(t * P // T, (t + 1) * P // T):
            _unpool2x2_plane(dout[p], code[p], dx[p], g, W)


def _tiles2x2(g):
    return g.pool_height == 2 and g.pool_width == 2 and g.stride == 2 and g.W >= MIN_WIDTH_2X2


@njit(parallel=True, cache=True)
def _pool_backward(dout, arg, dx):
    N, C, H, W = dx.shape
    _, _, H_out, W_out = dout.shape
    for t in prange(N * C):
        n = t // C
        c = t % C
        plane = dx[n, c].reshape(H * W)
        plane[:] = 0
        for i in range(H_out):
            for j in range(W_out):
                plane[arg[n, c, i, j]] += dout[n, c, i, j]


class MaxPool:
    @staticmethod
    def forward(x, pool_param):
        """x (N,C,H,W); pool_param {"pool_height", "pool_width", "stride"}. Returns (out, cache)."""
        g = pool_geometry(x, pool_param)
        x = np.ascontiguousarray(x)
        out = np.empty((g.N, g.C, g.H_out, g.W_out), dtype=x.dtype)
        if _tiles2x2(g):
            planes = g.N * g.C
            code = np.empty((planes, g.H * g.W_out), dtype=np.uint8)
            with kernel_threads(x.size):
                _pool2x2_forward(x.reshape(planes, -1), out.reshape(planes, -1), code, g.W,
                                 min(planes, numba.get_num_threads()))
            return out, (code, x.dtype, g)
        arg = np.empty((g.N, g.C, g.H_out, g.W_out), dtype=np.int32)
        with kernel_threads(out.size * g.pool_height * g.pool_width):
            _pool_forward(x, g.pool_height, g.pool_width, g.stride, out, arg)
        return out, (arg, x.dtype, g)

    @staticmethod
    def backward(dout, cache):
        """dx: each window's gradient goes to its first NaN, else its first maximum."""
        arg, dtype, g = cache   # arg: the 2x2 kernels' codes where _tiles2x2(g), else flat indices
        check_dout(dout, (g.N, g.C, g.H_out, g.W_out), dtype, "MaxPool")
        dx = np.empty((g.N, g.C, g.H, g.W), dtype=dtype)
        dout = np.ascontiguousarray(dout)
        with kernel_threads(dx.size):
            if _tiles2x2(g):
                planes = g.N * g.C
                _pool2x2_backward(dout.reshape(planes, -1), arg, dx.reshape(planes, -1), g.W,
                                  min(planes, numba.get_num_threads()))
            else:
                _pool_backward(dout, arg, dx)
        return dx


@njit(parallel=True, cache=True)
def _global_max_forward(x, out, arg, T):
    # x (R, L): per row its first NaN, else its first maximum (NumPy's argmax), and where it is
    R, L = x.shape
    for t in prange(T):
        for r in range(t * R // T, (t + 1) * R // T):
            row = x[r]
            best = row[0]
            at = 0
            for p in range(1, L):
                v = row[p]
                if not (v <= best) and best == best:   # v larger, or v the first NaN (unless best is one)
                    best = v
                    at = p
            out[r] = best
            arg[r] = at


@njit(parallel=True, cache=True)
def _global_max_backward(dout, arg, dx, T):
    R, L = dx.shape
    for t in prange(T):
        for r in range(t * R // T, (t + 1) * R // T):
            dx[r, :] = 0
            dx[r, arg[r]] = dout[r]


class GlobalMaxPool:
    """(N, C, H, W) -> (N, C), the max over each map; ties go to the first in row-major order and
    NaN wins (NumPy's argmax): ``numbaconv.models.global_max_pool_forward``'s results, in one kernel
    (NumPy's argmax along a 4-16 element axis cost ~20 ns a map: ~0.5 ms of a fast-recipe step)."""

    @staticmethod
    def forward(x):
        N, C = x.shape[:2]
        flat = np.ascontiguousarray(x).reshape(N * C, -1)
        out = np.empty(N * C, dtype=x.dtype)
        arg = np.empty(N * C, dtype=np.int64)
        with kernel_threads(flat.size):
            _global_max_forward(flat, out, arg, min(N * C, numba.get_num_threads()))
        return out.reshape(N, C), (x.shape, arg)

    @staticmethod
    def backward(dout, cache):
        shape, arg = cache
        N, C = shape[:2]
        dx = np.empty((N * C, shape[2] * shape[3]), dtype=dout.dtype)
        with kernel_threads(dx.size):
            _global_max_backward(np.ascontiguousarray(dout).reshape(-1), arg, dx, min(N * C, numba.get_num_threads()))
        return dx.reshape(shape)
