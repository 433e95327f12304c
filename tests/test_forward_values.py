"""Forward passes against values computed by hand, for every backend."""
import numpy as np
import pytest

from numbaconv.layers import sandwiches


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_forward_hand_computed(nb, dtype):
    # One 3x3 image, one 2x2 filter of ones: each output is the window sum, plus the bias.
    x = np.arange(9, dtype=dtype).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2), dtype=dtype)
    b = np.array([0.5], dtype=dtype)
    out, _ = nb.Conv.forward(x, w, b, {"stride": 1, "pad": 0})
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.array([[[[8.5, 12.5], [20.5, 24.5]]]], dtype=dtype))
    # A 3x3 filter of ones, zero padding 1, stride 2: each corner window covers
    # one 2x2 corner of x plus zeros.
    out, _ = nb.Conv.forward(x, np.ones((1, 1, 3, 3), dtype=dtype), b, {"stride": 2, "pad": 1})
    np.testing.assert_array_equal(out, np.array([[[[8.5, 12.5], [20.5, 24.5]]]], dtype=dtype))
    # Stride 2, no padding, on a 4x4 input.
    x4 = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    out, _ = nb.Conv.forward(x4, w, b, {"stride": 2, "pad": 0})
    np.testing.assert_array_equal(out, np.array([[[[10.5, 18.5], [42.5, 50.5]]]], dtype=dtype))


def test_conv_forward_two_channels_two_filters(nb):
    x = np.stack([np.ones((2, 2)), 2 * np.ones((2, 2))])[None]            # (1, 2, 2, 2)
    w = np.stack([np.stack([np.eye(2), np.zeros((2, 2))]),                  # picks channel 0 diag
                  np.stack([np.zeros((2, 2)), np.ones((2, 2))])])           # sums channel 1
    out, _ = nb.Conv.forward(x, w, np.array([0.0, -1.0]), {"stride": 1, "pad": 0})
    np.testing.assert_array_equal(out.ravel(), [2.0, 7.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_forward_hand_computed(nb, dtype):
    x = np.array([[1, 5, 2, 0], [3, 4, 8, 1], [0, 0, 1, 1], [9, 0, 1, 2]], dtype=dtype)[None, None]
    out, _ = nb.MaxPool.forward(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    assert out.dtype == dtype
    np.testing.assert_array_equal(out[0, 0], [[5, 8], [9, 2]])
    # Overlapping, non-square windows: 3 rows x 2 cols, stride 1.
    out, _ = nb.MaxPool.forward(x, {"pool_height": 3, "pool_width": 2, "stride": 1})
    np.testing.assert_array_equal(out[0, 0], [[5, 8, 8], [9, 8, 8]])


def test_maxpool_backward_routes_to_first_maximum_on_ties(nb):
    x = np.ones((1, 1, 2, 2))
    _, cache = nb.MaxPool.forward(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    dx = nb.MaxPool.backward(np.full((1, 1, 1, 1), 3.0), cache)
    np.testing.assert_array_equal(dx[0, 0], [[3.0, 0.0], [0.0, 0.0]])


def test_maxpool_backward_accumulates_over_overlapping_windows(nb):
    x = np.array([[0.0, 9.0, 0.0]])[None, None]                  # (1,1,1,3); 9 is in both windows
    _, cache = nb.MaxPool.forward(x, {"pool_height": 1, "pool_width": 2, "stride": 1})
    dx = nb.MaxPool.backward(np.array([[[[1.0, 2.0]]]]), cache)
    np.testing.assert_array_equal(dx.ravel(), [0.0, 3.0, 0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batchnorm_train_normalises_and_updates_running_stats(nb, rng, dtype):
    x = (4 * rng.standard_normal((200, 3)) + 7).astype(dtype)
    bn_param = {"mode": "train"}
    out, _ = nb.BatchNorm.forward(x, np.ones(3, dtype), np.zeros(3, dtype), bn_param)
    assert out.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=tol)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-4 if dtype == np.float32 else 1e-6)
    # running = 0.9 * 0 + 0.1 * batch statistic (biased variance)
    np.testing.assert_allclose(bn_param["running_mean"], 0.1 * x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn_param["running_var"], 0.1 * x.var(axis=0), rtol=1e-5)
    assert bn_param["running_mean"].dtype == dtype


def test_batchnorm_gamma_beta_and_test_mode(nb, rng):
    x = 3 * rng.standard_normal((500, 2)) - 1
    gamma, beta = np.array([2.0, 0.5]), np.array([-3.0, 4.0])
    bn_param = {"mode": "train", "momentum": 0.0}   # running stats := this batch's
    out, _ = nb.BatchNorm.forward(x, gamma, beta, bn_param)
    np.testing.assert_allclose(out.mean(axis=0), beta, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=0), gamma, rtol=1e-4)
    bn_param["mode"] = "test"
    out_test, _ = nb.BatchNorm.forward(x, gamma, beta, bn_param)
    expected = gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) + beta
    np.testing.assert_allclose(out_test, expected, rtol=1e-10)


def test_spatial_batchnorm_normalises_per_channel(nb, rng):
    x = rng.standard_normal((4, 3, 5, 5)) * np.array([1.0, 5.0, 0.2])[None, :, None, None] + 2
    gamma, beta = np.array([1.0, 2.0, 3.0]), np.array([0.0, -1.0, 1.0])
    out, _ = nb.SpatialBatchNorm.forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), beta, atol=1e-10)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), gamma, rtol=1e-3)


def test_linear_relu_softmax_hand_computed(nb):
    x = np.array([[1.0, 2.0], [-1.0, 0.0]])
    w = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    out, _ = nb.Linear.forward(x, w, np.array([0.0, 1.0, 0.0]))
    np.testing.assert_array_equal(out, [[1.0, 3.0, 1.0], [-1.0, 1.0, 1.0]])
    r, _ = nb.ReLU.forward(out)
    np.testing.assert_array_equal(r, [[1.0, 3.0, 1.0], [0.0, 1.0, 1.0]])
    loss, dx = nb.softmax_loss(np.zeros((5, 10)), np.arange(5))
    assert loss == pytest.approx(np.log(10))
    np.testing.assert_allclose(dx.sum(axis=1), 0, atol=1e-15)
    # softmax loss is stable for huge scores
    loss, _ = nb.softmax_loss(np.array([[1000.0, 0.0]]), np.array([0]))
    assert loss == pytest.approx(0.0, abs=1e-12)


def test_linear_flattens_higher_rank_input(nb, rng):
    x = rng.standard_normal((2, 3, 2))
    w = rng.standard_normal((6, 4))
    out, cache = nb.Linear.forward(x, w, np.zeros(4))
    np.testing.assert_allclose(out, x.reshape(2, 6) @ w, rtol=1e-12)
    dx, dw, db = nb.Linear.backward(np.ones((2, 4)), cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (4,)


def test_sandwich_equals_its_layers(backend_name, rng):
    nb_ = __import__("numbaconv").get_backend(backend_name)
    L = sandwiches(backend_name)
    x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    cp, pp = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}
    out, _ = L.Conv_ReLU_Pool.forward(x, w, b, cp, pp)
    a, _ = nb_.Conv.forward(x, w, b, cp)
    expected, _ = nb_.MaxPool.forward(np.maximum(a, 0), pp)
    np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------- special values (README, Conventions)

def test_maxpool_nan_propagates_and_takes_the_gradient(nb):
    # window 1: NaN after the maximum; window 2: two NaNs (the first one wins); window 3: no NaN,
    # -0.0 before 0.0 (a tie: the first, -0.0, is the output); window 4: all -inf
    nan, inf = np.nan, np.inf
    x = np.array([[1.0, nan, 5.0, 5.0, -0.0, 0.0, -inf, -inf],
                  [3.0, 2.0, nan, nan, -1.0, 0.0, -inf, -inf]])[None, None]
    pp = {"pool_height": 2, "pool_width": 2, "stride": 2}
    out, cache = nb.MaxPool.forward(x, pp)
    np.testing.assert_array_equal(out[0, 0], [[nan, nan, 0.0, -inf]])
    assert np.signbit(out[0, 0, 0, 2])
    dx = nb.MaxPool.backward(np.array([[[[1.0, 2.0, 3.0, 4.0]]]]), cache)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0, 0.0, 0.0, 3.0, 0.0, 4.0, 0.0],
                                             [0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]])


def test_relu_nan_inf_and_signed_zero(nb):
    x = np.array([np.nan, -0.0, 0.0, -1.0, 2.0, np.inf, -np.inf])
    out, cache = nb.ReLU.forward(x)
    np.testing.assert_array_equal(out, [np.nan, 0.0, 0.0, 0.0, 2.0, np.inf, 0.0])   # as PyTorch: x <= 0 ? 0 : x
    assert not np.signbit(out[1:]).any()
    dx = nb.ReLU.backward(np.arange(1.0, 8.0), cache)
    np.testing.assert_array_equal(dx, [1.0, 0.0, 0.0, 0.0, 5.0, 6.0, 0.0])   # dout passes at NaN


def test_relu_and_linear_accept_empty_arrays(nb):
    out, cache = nb.ReLU.forward(np.zeros((0, 3), np.float32))
    assert out.shape == (0, 3) and out.dtype == np.float32
    assert nb.ReLU.backward(np.zeros((0, 3), np.float32), cache).shape == (0, 3)
    out, cache = nb.Linear.forward(np.zeros((0, 3)), np.ones((3, 2)), np.ones(2))
    assert out.shape == (0, 2)
    dx, dw, db = nb.Linear.backward(np.zeros((0, 2)), cache)
    assert dx.shape == (0, 3)
    np.testing.assert_array_equal(dw, np.zeros((3, 2)))
    np.testing.assert_array_equal(db, np.zeros(2))


@pytest.mark.parametrize("layer, shape", [("BatchNorm", (4, 2)), ("SpatialBatchNorm", (2, 2, 3, 3))])
def test_batchnorm_running_stats_are_used_in_x_dtype(nb, rng, layer, shape):
    # float64 statistics (as a checkpoint may hold them) with float32 x: computed in float32
    x = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = np.ones(2, np.float32), np.zeros(2, np.float32)
    stats = {"running_mean": np.array([0.5, -1.0]), "running_var": np.array([2.0, 0.25])}
    out, _ = getattr(nb, layer).forward(x, gamma, beta, {"mode": "test", **stats})
    assert out.dtype == np.float32
    as32 = {k: v.astype(np.float32) for k, v in stats.items()}
    expected, _ = getattr(nb, layer).forward(x, gamma, beta, {"mode": "test", **as32})
    np.testing.assert_array_equal(out, expected)
    p = {"mode": "train", **stats}
    getattr(nb, layer).forward(x, gamma, beta, p)
    assert p["running_mean"].dtype == p["running_var"].dtype == np.float32


@pytest.mark.parametrize("pool", [None, {"pool_height": 2, "pool_width": 2, "stride": 2}])
def test_fused_layers_propagate_nan(nb, pool):
    # test mode keeps a NaN local: the window holding it outputs NaN, its gradient goes to
    # the NaN (ReLU passes it), and the other windows are untouched, as in the composition
    if not hasattr(nb, "Conv_BatchNorm_ReLU"):
        pytest.skip("this backend has no fused layers")
    name = "Conv_BatchNorm_ReLU" if pool is None else "Conv_BatchNorm_ReLU_Pool"
    extra = () if pool is None else (pool,)
    x = np.array([[1.0, np.nan, -5.0, -6.0], [3.0, 2.0, -7.0, -8.0]])[None, None]
    args = (x, np.ones((1, 1, 1, 1)), np.zeros(1), np.ones(1), np.zeros(1), {"stride": 1, "pad": 0})
    stats = {"mode": "test", "running_mean": np.zeros(1), "running_var": np.ones(1)}
    out, cache = getattr(nb, name).forward(*args, dict(stats), *extra)
    want, cache_ref = getattr(sandwiches("reference"), name).forward(*args, dict(stats), *extra)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_allclose(out, want, rtol=1e-12)
    dout = np.arange(1.0, 1.0 + want.size).reshape(want.shape)
    dx = getattr(nb, name).backward(dout, cache)[0]
    np.testing.assert_allclose(dx, getattr(sandwiches("reference"), name).backward(dout, cache_ref)[0], rtol=1e-12)
    assert dx[0, 0, 0, 1] != 0   # the NaN's position takes its window's gradient
