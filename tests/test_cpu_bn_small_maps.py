"""The cpu batch norm's flat kernels for short rows (H*W < MIN_ROW, plain BatchNorm included):
against the per-channel kernels and the reference, special values, any thread count."""
import numba
import numpy as np
import pytest

from numbaconv import reference
from numbaconv.cpu import batchnorm
from numbaconv.cpu.batchnorm import BatchNorm, SpatialBatchNorm


def _all(layer, x, dout, gamma, beta):
    """Every output of train-mode forward, both backwards, and test-mode forward and backward."""
    p = {"mode": "train"}
    out, cache = layer.forward(x, gamma, beta, p)
    res = [out, p["running_mean"], p["running_var"], *layer.backward_alt(dout, cache), *layer.backward(dout, cache)]
    p["mode"] = "test"
    out, cache = layer.forward(x, gamma, beta, p)
    return res + [out, *layer.backward(dout, cache)]


def _case(dtype, shape, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    return ((rng.standard_normal(shape) * 2 + offset).astype(dtype), rng.standard_normal(shape).astype(dtype),
            rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype))


def _layer(shape):
    return BatchNorm if len(shape) == 2 else SpatialBatchNorm


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


# odd sizes; 1x1 .. 8x7 maps; one image; N not a multiple of the block (set per test below)
SHAPES = [(5, 3, 4, 4), (1, 4, 2, 2), (7, 2, 1, 1), (3, 5, 8, 7), (9, 6, 3, 5), (11, 13), (13, 3, 4, 4),
          (10, 2, 2, 2), (14, 6)]


def _blocks_of(monkeypatch, per, shape, itemsize):
    """Flat blocks of ``per`` images (the last one shorter where N is not a multiple)."""
    monkeypatch.setattr(batchnorm, "FLAT_MIN_BLOCKS", 1)
    monkeypatch.setattr(batchnorm, "FLAT_BLOCK_BYTES", per * int(np.prod(shape[1:])) * itemsize)


@pytest.mark.parametrize("per", [2, 5, 9])   # the sums and writes take four images at a time: none, 4 + 1, 8 + 1
@pytest.mark.parametrize("shape", SHAPES)
def test_flat_kernels_agree_with_per_channel_kernels(monkeypatch, shape, per):
    # float64: the same maths summed in another order
    case = _case(np.float64, shape)
    _blocks_of(monkeypatch, per, shape, 8)
    monkeypatch.setattr(batchnorm, "FLAT_MIN_WORK", 0)
    flat = _all(_layer(shape), *case)
    monkeypatch.setattr(batchnorm, "FLAT_MIN_WORK", 1 << 62)
    per_channel = _all(_layer(shape), *case)
    for got, want in zip(flat, per_channel):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 4, 4, 4), (5, 7, 8, 8), (20, 9)])
def test_flat_kernels_match_reference(monkeypatch, dtype, shape):
    monkeypatch.setattr(batchnorm, "FLAT_MIN_WORK", 0)
    x, dout, gamma, beta = _case(dtype, shape, seed=1)
    layer = _layer(shape)
    got = _all(layer, x, dout, gamma, beta)
    ref = getattr(reference, layer.__name__)
    p = {"mode": "train"}
    out, cache = ref.forward(x, gamma, beta, p)
    want = [out, p["running_mean"], p["running_var"], *ref.backward_alt(dout, cache), *ref.backward(dout, cache)]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_, w_, rtol=tol, atol=tol)


@pytest.mark.parametrize("per", [3, 6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(40, 64, 4, 4), (70, 600)])   # above SMALL_WORK: runs parallel
def test_flat_kernels_same_bits_on_any_thread_count(monkeypatch, dtype, shape, per):
    assert np.prod(shape) >= batchnorm.FLAT_MIN_WORK
    # blocks of three or six images: several per thread, the last one short
    _blocks_of(monkeypatch, per, shape, np.dtype(dtype).itemsize)
    case = _case(dtype, shape, seed=2)
    saved = numba.get_num_threads()
    results = []
    try:
        for n in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(n)
            results.append(_all(_layer(shape), *case))
    finally:
        numba.set_num_threads(saved)
    for got, want in zip(results[-1], results[0]):
        np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("N", [4, 9])   # blocks of one image; one block of 9 (two groups of four and one)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_kernels_nan_and_inf_stay_in_their_channel(monkeypatch, dtype, N):
    monkeypatch.setattr(batchnorm, "FLAT_MIN_WORK", 0)
    if N == 9:
        _blocks_of(monkeypatch, 9, (N, 3, 4, 4), np.dtype(dtype).itemsize)
    x, dout, gamma, beta = _case(dtype, (N, 3, 4, 4), seed=3)
    clean = _all(SpatialBatchNorm, x, dout, gamma, beta)
    x[2, 1, 3, 1] = np.nan
    x[1, 2, 0, 0] = np.inf
    got = _all(SpatialBatchNorm, x, dout, gamma, beta)
    out, rm, rv, dx = got[0], got[1], got[2], got[3]
    assert np.isnan(out[:, 1]).all() and np.isnan(rm[1]) and np.isnan(rv[1]) and np.isnan(dx[:, 1]).all()
    assert np.isnan(rv[2])   # inf - inf in the centred squares
    for a, b in zip(got, clean):
        np.testing.assert_array_equal(a[:, 0] if a.ndim == 4 else a[0], b[:, 0] if b.ndim == 4 else b[0])


def test_flat_kernels_variance_is_centred_across_blocks(monkeypatch):
    # mean 1e4, spread 2, blocks of one image: each block's mean differs from the batch mean, and
    # the combined squares must still be the centred ones
    monkeypatch.setattr(batchnorm, "FLAT_MIN_WORK", 0)
    monkeypatch.setattr(batchnorm, "FLAT_BLOCK_BYTES", 1)
    x, dout, gamma, beta = _case(np.float64, (5, 3, 4, 4), seed=4, offset=1e4)
    p = {"mode": "train", "momentum": 0.0}
    SpatialBatchNorm.forward(x, gamma, beta, p)
    xc = x - x.mean(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(p["running_var"], (xc * xc).mean(axis=(0, 2, 3)), rtol=1e-13)


@pytest.mark.parametrize("shape", [(256, 256, 4, 4), (128, 96, 4, 4), (7, 3, 2, 2), (3, 100000), (1, 5, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_blocks_are_balanced_and_depend_on_the_shape_only(shape, dtype):
    N = shape[0]
    x3 = np.empty((N, shape[1], int(np.prod(shape[2:]))), dtype)
    per = batchnorm._image_blocks(x3, True)
    blocks = -(-N // per)
    row = x3[0].nbytes
    assert blocks >= min(N, batchnorm.FLAT_MIN_BLOCKS)
    assert per == 1 or per * row <= batchnorm.FLAT_BLOCK_BYTES or blocks == min(N, batchnorm.FLAT_MIN_BLOCKS)
    assert blocks * per - N < blocks   # equal blocks, the last short by less than one image per block
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert batchnorm._image_blocks(x3, True) == per
    finally:
        numba.set_num_threads(saved)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_kernels_large_offset_against_float64_truth(monkeypatch, dtype):
    # mean 1e4, std 1: float32 sums of four images must stay centred (E[x^2] - E[x]^2 would lose
    # every digit of the variance); blocks of 7 images (4 + 3), three blocks, the last short
    shape = (19, 5, 4, 4)
    _blocks_of(monkeypatch, 7, shape, np.dtype(dtype).itemsize)
    monkeypatch.setattr(batchnorm, "FLAT_MIN_WORK", 0)
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) + 1e4).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    p = {"mode": "train", "momentum": 0.0}
    _, cache = SpatialBatchNorm.forward(x, gamma, beta, p)
    dx, dgamma, dbeta = SpatialBatchNorm.backward_alt(dout, cache)
    x64, d64 = x.astype(np.float64), dout.astype(np.float64)
    mu = x64.mean(axis=(0, 2, 3))
    var = ((x64 - mu[:, None, None]) ** 2).mean(axis=(0, 2, 3))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(p["running_mean"], mu, rtol=tol)
    np.testing.assert_allclose(p["running_var"], var, rtol=tol)
    # the gradient sums about the stored statistics, as the layer defines them
    xhat = (x64 - p["running_mean"].astype(np.float64)[:, None, None]) / np.sqrt(
        p["running_var"].astype(np.float64) + 1e-5)[:, None, None]
    np.testing.assert_allclose(dbeta, d64.sum(axis=(0, 2, 3)), rtol=tol, atol=tol)
    np.testing.assert_allclose(dgamma, (d64 * xhat).sum(axis=(0, 2, 3)), rtol=tol, atol=tol)
