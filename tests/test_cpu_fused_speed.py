"""The cpu fused layers' specialised kernels (numbaconv/cpu/fused.py) against their generic
forms, bit for bit: the 2x2 stride-2 pools against the any-window pool, on odd widths,
1x1 outputs, ties, signed zeros, NaN and inf, float32 and float64; and the whole
normalise-ReLU-pool pass independent of the thread count."""
import numba
import numpy as np
import pytest

from numbaconv.cpu import fused


def _planes(dtype, N, C, H, W, seed):
    """(N, C, H*W) activations with ties, signed zeros, NaN and +-inf, and per-channel statistics
    (mean as stored in the dtype; std float64, as the fused forward passes them)."""
    rng = np.random.default_rng(seed)
    a = np.round(rng.standard_normal((N, C, H * W)) * 4) / 4   # many ties
    flat = a.reshape(-1)
    idx = rng.permutation(flat.size)[: max(4, flat.size // 8)]
    flat[idx[0::4]] = np.nan
    flat[idx[1::4]] = np.inf
    flat[idx[2::4]] = -np.inf
    flat[idx[3::4]] = -0.0
    a = a.astype(dtype)
    mean = np.round(rng.standard_normal(C), 1).astype(dtype).astype(np.float64)
    mean[0] = 0.0   # with beta 0: bn(-0.0) and bn(0.0) are zeros of both signs, tied
    std = np.abs(rng.standard_normal(C)) + 0.5
    gamma = rng.standard_normal(C).astype(dtype)
    gamma[-1] = 0   # 0 * inf: NaN from finite parameters
    beta = rng.standard_normal(C).astype(dtype)
    beta[0] = 0
    return a, mean, std, gamma, beta


def _bits(x):
    return x.view(np.uint8)


def _pool_plane(kernel, a, mean, std, gamma, beta, n, c, W):
    Q = a.shape[2] // 4
    on = np.full(Q, 7, a.dtype)
    argn = np.full(Q, -1, np.int32)
    hmn = np.full(Q, 7, a.dtype)
    args = (a[n, c], W, mean[c], 1.0 / std[c], np.float64(gamma[c]), np.float64(beta[c]))
    r = np.full(a.shape[2], 7, a.dtype)   # scratch plane
    if kernel is fused._max_pool_plane:
        kernel(*args, 2, 2, 2, W // 2, on, argn, hmn, r)
    elif kernel is fused._max2x2:
        kernel(*args, on, argn, hmn, r)
    else:
        kernel(*args, on, argn, hmn)
    return on, argn, hmn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, W", [(2, 2), (4, 6), (6, 10), (2, 34), (4, 32)])
@pytest.mark.parametrize("kernel", ["_max2x2", "_max2x2_rows"])
def test_2x2_pools_match_the_generic_pool_bit_for_bit(kernel, H, W, dtype):
    a, mean, std, gamma, beta = _planes(dtype, 2, 4, H, W, seed=H * 100 + W)
    assert np.isnan(a).any() and np.isinf(a).any()
    for n in range(a.shape[0]):
        for c in range(a.shape[1]):
            want = _pool_plane(fused._max_pool_plane, a, mean, std, gamma, beta, n, c, W)
            got = _pool_plane(getattr(fused, kernel), a, mean, std, gamma, beta, n, c, W)
            for name, g, w in zip(("out", "arg", "hm"), got, want):
                assert np.array_equal(_bits(g), _bits(w)), (name, n, c)


def test_2x2_pool_ties_keep_the_first_maximum_and_the_first_nan_wins():
    # one 2x2 window per row of cases, bn the identity: (values, the element the pool must record)
    cases = [([1, 1, 1, 1], 0), ([0, 2, 2, 1], 1), ([0, 1, 2, 2], 2), ([-0.0, 0.0, 0.0, -1], 0),
             ([1, np.nan, 3, np.nan], 1), ([np.nan, 5, np.nan, 9], 0), ([1, 2, 3, np.nan], 3),
             ([-np.inf, -np.inf, -np.inf, -np.inf], 0), ([1, np.inf, np.inf, 2], 1)]
    for kernel in (fused._max2x2, fused._max2x2_rows, fused._max_pool_plane):
        for dtype in (np.float32, np.float64):
            for values, first in cases:
                a = np.array(values, dtype=dtype).reshape(1, 1, 4)
                one = np.zeros(1)
                on, argn, hmn = _pool_plane(kernel, a, one, one + 1, np.ones(1, dtype), np.zeros(1, dtype), 0, 0, 2)
                assert argn[0] == first, (kernel, values)
                v = a[0, 0, first]
                assert np.array_equal(_bits(hmn), _bits(np.array([v], dtype))), (kernel, values)
                assert np.array_equal(_bits(on), _bits(np.array([0 if v <= 0 else v], dtype))), (kernel, values)


def _relu_pool(a, W, mean, std, gamma, beta, pool, chunks=3):
    N, C, P = a.shape
    shape = (N, C, P // 4) if pool else (N, C, P)
    out = np.full(shape, 7, a.dtype)
    arg = np.full(shape if pool else (1, 1, 0), -1, np.int32)
    hm = np.full(shape if pool else (1, 1, 0), 7, a.dtype)
    fused._bn_relu_pool(a, W, mean, std, gamma, beta, pool, 2, 2, 2, W // 2, out, arg, hm, chunks)
    return out, arg, hm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalise_relu_pool_pass_is_independent_of_threads_and_chunks(dtype):
    a, mean, std, gamma, beta = _planes(dtype, 5, 3, 4, 8, seed=7)
    saved = numba.get_num_threads()
    for pool in (True, False):
        try:
            numba.set_num_threads(1)
            one = _relu_pool(a, 8, mean, std, gamma, beta, pool, chunks=1)
        finally:
            numba.set_num_threads(saved)
        for chunks in (2, 7, a.shape[0] * a.shape[1]):
            many = _relu_pool(a, 8, mean, std, gamma, beta, pool, chunks)
            for g, w in zip(many, one):
                assert np.array_equal(_bits(g), _bits(w)), (pool, chunks)
        if not pool:   # relu(bn(a)) rounded to the dtype, as batch norm then ReLU store it
            with np.errstate(invalid="ignore"):   # 0 * inf
                bn = (gamma[None, :, None].astype(np.float64) * ((a - mean[None, :, None]) * (1.0 / std)[None, :, None])
                      + beta[None, :, None]).astype(dtype)
                want = np.where(bn <= 0, dtype(0), bn)
            assert np.array_equal(_bits(one[0]), _bits(want))


def _pooled(dtype, N, C, H, W, seed, pool):
    """Forward results as _backward receives them, with NaN and inf in dout too."""
    a, mean, std, gamma, beta = _planes(dtype, N, C, H, W, seed)
    out, arg, hm = _relu_pool(a, W, mean, std, gamma, beta, pool)
    rng = np.random.default_rng(seed + 1)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dout.reshape(-1)[::7] = np.inf
    dout.reshape(-1)[::11] = np.nan
    return a, mean, std, gamma, out, arg, hm, dout


def _same_or_both_nan(got, want):
    # bits, except that a NaN's sign and payload depend on the operand order LLVM picks
    nan = np.isnan(got) & np.isnan(want)
    return np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(_bits(got[~nan]), _bits(want[~nan]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool", [True, False])
def test_grad_sums_are_the_in_order_float64_sums(pool, dtype):
    a, mean, std, _, out, _, hm, dout = _pooled(dtype, 3, 4, 4, 6, seed=5, pool=pool)
    C = a.shape[1]
    sb, sg = np.empty(C), np.empty(C)
    fused._bn_grad_sums(dout, out, hm if pool else hm[:, :, :0], a, mean, std, pool, sb, sg)
    inv = 1.0 / std
    with np.errstate(invalid="ignore"):
        xhat = hm.astype(np.float64) if pool else (a - mean[None, :, None]) * inv[None, :, None]
        dan = np.where(out <= 0, 0.0, dout.astype(np.float64))
        for c in range(C):   # the kernel's order: images, then positions
            want_b = want_g = 0.0
            for d, x in zip(dan[:, c].ravel(), xhat[:, c].ravel()):
                want_b += d
                want_g += d * x
            assert _same_or_both_nan(np.array([sb[c], sg[c]]), np.array([want_b, want_g])), c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool, train", [(True, True), (True, False), (False, True), (False, False)])
def test_bn_dout_is_the_closed_form_gradient_bit_for_bit(pool, train, dtype):
    a, mean, std, gamma, out, arg, hm, dout = _pooled(dtype, 2, 3, 4, 6, seed=9, pool=pool)
    N, C, P = a.shape
    rng = np.random.default_rng(3)
    ga, gb = rng.standard_normal(C), rng.standard_normal(C)
    inv = 1.0 / std
    gi = gamma.astype(np.float64) * inv
    for n in range(N):
        dn = np.full((C, P), 7, dtype)
        fused._bn_dout(n, a, mean, std, gamma, train, ga, gb, dout, out, arg, pool, dn)
        with np.errstate(invalid="ignore", over="ignore"):
            if train:
                want = (-ga[:, None] - ((a[n] - mean[:, None]) * inv[:, None]) * gb[:, None]).astype(dtype)
            else:
                want = np.zeros((C, P), dtype)
            add = np.where(out[n] <= 0, 0.0, gi[:, None] * dout[n].astype(np.float64))
            if pool:   # each window's maximum gets its own term (2x2 windows: no index twice)
                rows = np.arange(C)[:, None]
                want[rows, arg[n]] = (want[rows, arg[n]] + add).astype(dtype)
            else:
                want = (want + add).astype(dtype)
        assert _same_or_both_nan(dn, want), n
