"""The cpu backend's vectorised 2x2 stride-2 max pool and batch norm kernels: the same bits as the
generic kernels (and the reference) on special values, any thread count."""
import numba
import numpy as np
import pytest

from numbaconv import reference
from numbaconv.checks import pool_geometry
from numbaconv.cpu import pool
from numbaconv.cpu.pool import MaxPool

POOL = {"pool_height": 2, "pool_width": 2, "stride": 2}
# few distinct values: ties in most windows, NaN, infinities and both zeros side by side
SPECIAL = np.array([-1.0, 0.0, -0.0, 1.0, 2.0, np.inf, -np.inf, np.nan])


def _special(rng, shape, dtype, nan_share=0.1):
    v = rng.choice(SPECIAL[:-1], size=shape)
    v[rng.random(shape) < nan_share] = np.nan
    return v.astype(dtype)


def _generic(x, dout):
    """The generic window loop (any window and stride) on the same input."""
    g = pool_geometry(x, POOL)
    out = np.empty((g.N, g.C, g.H_out, g.W_out), x.dtype)
    arg = np.empty(out.shape, np.int32)
    pool._pool_forward(x, 2, 2, 2, out, arg)
    dx = np.empty_like(x)
    pool._pool_backward(dout, arg, dx)
    return out, dx


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 2, 4), (3, 2, 4, 6), (2, 3, 10, 34), (1, 2, 34, 8), (2, 1, 6, 4)])
def test_pool2x2_matches_generic_loop_bit_for_bit(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    for x in (_special(rng, shape, dtype), rng.standard_normal(shape).astype(dtype)):
        N, C, H, W = shape
        dout = _special(rng, (N, C, H // 2, W // 2), dtype, nan_share=0.05)
        out, cache = MaxPool.forward(x, POOL)
        assert pool._tiles2x2(cache[2])
        dx = MaxPool.backward(dout, cache)
        want_out, want_dx = _generic(x, dout)
        np.testing.assert_array_equal(_bits(out), _bits(want_out))
        np.testing.assert_array_equal(_bits(dx), _bits(want_dx))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool2x2_matches_reference_on_every_window_pattern(dtype):
    # every arrangement of 4 values from {0, -0, 1, NaN} in a window, one window per plane row
    vals = np.array([0.0, -0.0, 1.0, np.nan])
    idx = np.indices((4, 4, 4, 4)).reshape(4, -1).T   # 256 windows
    win = vals[idx].reshape(-1, 2, 2)
    x = np.zeros((1, 1, 2, 2 * len(win)))
    for k, w in enumerate(win):
        x[0, 0, :, 2 * k:2 * k + 2] = w
    x = x.reshape(4, 1, 2, 128).astype(dtype)   # planes of 64 windows
    dout = np.random.default_rng(1).standard_normal((4, 1, 1, 64)).astype(dtype)
    out, cache = MaxPool.forward(x, POOL)
    want_out, want_cache = reference.MaxPool.forward(x, POOL)
    np.testing.assert_array_equal(_bits(out), _bits(want_out))
    np.testing.assert_array_equal(_bits(MaxPool.backward(dout, cache)),
                                  _bits(reference.MaxPool.backward(dout, want_cache)))


def test_narrow_planes_take_the_generic_loop():
    x = np.random.default_rng(2).standard_normal((3, 2, 6, 2))
    out, cache = MaxPool.forward(x, POOL)
    assert not pool._tiles2x2(cache[2]) and cache[0].dtype == np.int32
    want, want_cache = reference.MaxPool.forward(x, POOL)
    np.testing.assert_array_equal(out, want)
    dout = np.ones_like(out)
    np.testing.assert_array_equal(MaxPool.backward(dout, cache), reference.MaxPool.backward(dout, want_cache))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool2x2_same_bits_on_any_thread_count(dtype):
    rng = np.random.default_rng(3)
    x = _special(rng, (16, 8, 16, 20), dtype)   # above SMALL_WORK: runs parallel
    dout = rng.standard_normal((16, 8, 8, 10)).astype(dtype)
    saved = numba.get_num_threads()
    results = []
    try:
        for n in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(n)
            out, cache = MaxPool.forward(x, POOL)
            results.append((out, MaxPool.backward(dout, cache)))
    finally:
        numba.set_num_threads(saved)
    for got, want in zip(results[-1], results[0]):
        np.testing.assert_array_equal(_bits(got), _bits(want))


# --- batch norm: streaming kernels (rows of at least MIN_ROW) vs the per-channel ones ---------

from numbaconv.cpu import batchnorm  # noqa: E402
from numbaconv.cpu.batchnorm import SpatialBatchNorm  # noqa: E402
from test_cpu_bn_small_maps import _all, _case as _bn_case  # noqa: E402  (the same helpers)


@pytest.mark.parametrize("shape", [(5, 3, 8, 9), (1, 1, 8, 8), (7, 2, 1, 64)])
def test_bn_streaming_agrees_with_per_channel_kernels(monkeypatch, shape):
    # float64: the same maths summed in another order; uneven blocks of two images
    case = _bn_case(np.float64, shape)
    monkeypatch.setattr(batchnorm, "BLOCK_BYTES", 2 * shape[1] * shape[2] * shape[3] * 8)
    monkeypatch.setattr(batchnorm, "MIN_ROW", 8)   # these rows stream (8x8 maps take the flat kernels by default)
    streaming = _all(SpatialBatchNorm, *case)
    monkeypatch.setattr(batchnorm, "MIN_ROW", 1 << 30)
    per_channel = _all(SpatialBatchNorm, *case)
    for got, want in zip(streaming, per_channel):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bn_streaming_matches_reference(dtype):
    x, dout, gamma, beta = _bn_case(dtype, (6, 4, 9, 16), seed=1)   # rows of 144 >= MIN_ROW: streamed
    got = _all(SpatialBatchNorm, x, dout, gamma, beta)
    p = {"mode": "train"}
    out, cache = reference.SpatialBatchNorm.forward(x, gamma, beta, p)
    want = [out, p["running_mean"], p["running_var"], *reference.SpatialBatchNorm.backward_alt(dout, cache),
            *reference.SpatialBatchNorm.backward(dout, cache)]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_, w_, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bn_streaming_same_bits_on_any_thread_count(dtype):
    case = _bn_case(dtype, (9, 16, 16, 16), seed=2)   # above SMALL_WORK: runs parallel, several blocks
    saved = numba.get_num_threads()
    results = []
    try:
        for n in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(n)
            results.append(_all(SpatialBatchNorm, *case))
    finally:
        numba.set_num_threads(saved)
    for got, want in zip(results[-1], results[0]):
        np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bn_streaming_nan_and_inf_stay_in_their_channel(dtype):
    x, dout, gamma, beta = _bn_case(dtype, (4, 3, 8, 8), seed=3)
    clean = _all(SpatialBatchNorm, x, dout, gamma, beta)
    x[2, 1, 3, 5] = np.nan
    x[1, 2, 0, 0] = np.inf
    got = _all(SpatialBatchNorm, x, dout, gamma, beta)
    out, rm, rv, dx = got[0], got[1], got[2], got[3]
    assert np.isnan(out[:, 1]).all() and np.isnan(rm[1]) and np.isnan(rv[1]) and np.isnan(dx[:, 1]).all()
    assert np.isnan(rv[2])   # inf - inf in the centred squares
    for a, b in zip(got, clean):
        np.testing.assert_array_equal(a[:, 0] if a.ndim == 4 else a[0], b[:, 0] if b.ndim == 4 else b[0])


def test_bn_streaming_variance_is_centred_across_blocks(monkeypatch):
    # mean 1e4, spread 1, blocks of one image: the blocks' means differ from the mean, and the
    # combined squares must still be the centred ones
    x, dout, gamma, beta = _bn_case(np.float64, (5, 3, 8, 16), seed=4, offset=1e4)
    monkeypatch.setattr(batchnorm, "BLOCK_BYTES", 1)
    p = {"mode": "train", "momentum": 0.0}
    SpatialBatchNorm.forward(x, gamma, beta, p)
    xc = x - x.mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(p["running_var"], (xc * xc).mean(axis=(0, 2, 3)), rtol=1e-13)
