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
SHAPES = [(5, 3, 4, 4), (1, 4, 2, 2), (7, 2, 1, 1), (3, 5, 8, 7), (9, 6, 3, 5), (11, 13)]


@pytest.mark.parametrize("shape", SHAPES)
def test_flat_kernels_agree_with_per_channel_kernels(monkeypatch, shape):
    # float64: the same maths summed in another order; blocks of two images, the last one short
    case = _case(np.float64, shape)
    monkeypatch.setattr(batchnorm, "FLAT_BLOCK_BYTES", 2 * int(np.prod(shape[1:])) * 8)
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(40, 64, 4, 4), (70, 600)])   # above SMALL_WORK: runs parallel
def test_flat_kernels_same_bits_on_any_thread_count(monkeypatch, dtype, shape):
    assert np.prod(shape) >= batchnorm.FLAT_MIN_WORK
    # blocks of three images: several per thread, the last one short
    monkeypatch.setattr(batchnorm, "FLAT_BLOCK_BYTES", 3 * int(np.prod(shape[1:])) * np.dtype(dtype).itemsize)
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_kernels_nan_and_inf_stay_in_their_channel(monkeypatch, dtype):
    monkeypatch.setattr(batchnorm, "FLAT_MIN_WORK", 0)
    x, dout, gamma, beta = _case(dtype, (4, 3, 4, 4), seed=3)
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
