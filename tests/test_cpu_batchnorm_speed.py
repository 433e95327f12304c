"""The cpu batch norm kernel's vectorised sums (fastmath "reassoc" only): NaN still propagates,
results do not depend on the thread count, and the variance stays centred (two passes)."""
import numba
import numpy as np
import pytest

from numbaconv.cpu.batchnorm import SpatialBatchNorm


def _case(dtype, shape=(3, 4, 7, 7), offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.standard_normal(shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    return x, dout, gamma, beta


def _run(x, dout, gamma, beta):
    p = {"mode": "train"}
    out, cache = SpatialBatchNorm.forward(x, gamma, beta, p)
    return (out, p["running_mean"], p["running_var"], *SpatialBatchNorm.backward_alt(dout, cache),
            *SpatialBatchNorm.backward(dout, cache))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates_to_its_channel_only(dtype):
    x, dout, gamma, beta = _case(dtype)
    clean = _run(x, dout, gamma, beta)
    x[1, 0, 3, 5] = np.nan
    out, rm, rv, dx, dg, db, dx2, dg2, db2 = _run(x, dout, gamma, beta)
    assert np.isnan(out[:, 0]).all() and np.isnan(rm[0]) and np.isnan(rv[0])
    assert np.isnan(dx[:, 0]).all() and np.isnan(dg[0]) and np.isnan(dx2[:, 0]).all() and np.isnan(dg2[0])
    # the other channels are untouched, bit for bit
    for got, want in zip((out, dx, dx2), (clean[0], clean[3], clean[6])):
        np.testing.assert_array_equal(got[:, 1:], want[:, 1:])
    for got, want in zip((rm, rv, dg, db, dg2, db2), (clean[1], clean[2], clean[4], clean[5], clean[7], clean[8])):
        np.testing.assert_array_equal(got[1:], want[1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_on_any_thread_count(dtype):
    case = _case(dtype, shape=(5, 6, 9, 11))
    saved = numba.get_num_threads()
    try:
        results = []
        for n in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(n)
            results.append(_run(*case))
    finally:
        numba.set_num_threads(saved)
    for got, want in zip(results[-1], results[0]):
        np.testing.assert_array_equal(got, want)


def test_variance_is_centred_far_from_zero():
    # mean 1e4, spread 1: a one-pass sum of squares would lose ~8 of float64's 16 digits here
    x, dout, gamma, beta = _case(np.float64, shape=(4, 3, 13, 5), offset=1e4)
    p = {"mode": "train", "momentum": 0.0}
    SpatialBatchNorm.forward(x, gamma, beta, p)
    xc = x - x.mean(axis=(0, 2, 3), keepdims=True)
    want = (xc * xc).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(p["running_var"], want, rtol=1e-13)
