"""Models: numeric gradient checks (float64, reference backend as the spec),
initial loss, Kaiming init, configs, backends agreeing, and bad input."""
import math

import numpy as np
import pytest

from numbaconv.gradcheck import eval_numerical_gradient, rel_error
from numbaconv.init import kaiming_initializer
from numbaconv.models import DeepConvNet, ThreeLayerConvNet, build_model


def _data(seed, shape=(2, 3, 4, 4)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.integers(0, 10, shape[0])


def _grad_errors(model, X, y, zero_grad=()):
    """Relative error of every analytic gradient against centered differences.
    Parameters in ``zero_grad`` (a conv bias before batch norm: its true gradient
    is exactly zero, so a relative error is meaningless) get the absolute error."""
    _, grads = model.loss(X, y)
    errors = {}
    for name in sorted(grads):
        numeric = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name], verbose=False)
        if name in zero_grad:
            errors[name] = float(np.max(np.abs(numeric - grads[name])))
        else:
            errors[name] = rel_error(numeric, grads[name])
    return errors


# reg 0.1: with reg 3.14 the loss is ~70 and its rounding error alone, divided by
# the step 2h, limits the oracle to ~1e-6 relative on small gradient entries.
@pytest.mark.parametrize("reg", [0.0, 0.1])
def test_three_layer_gradients(reg):
    X, y = _data(0, (2, 3, 6, 6))
    model = ThreeLayerConvNet(input_dims=(3, 6, 6), num_filters=2, filter_size=3, hidden_dim=5,
                              weight_scale=1e-2, reg=reg, dtype=np.float64, backend="reference", seed=1)
    errors = _grad_errors(model, X, y)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("reg", [0.0, 0.1])
def test_deep_gradients(batchnorm, reg):
    X, y = _data(2)
    model = DeepConvNet(input_dims=(3, 4, 4), num_filters=[3, 4], max_pools=[0, 1], batchnorm=batchnorm,
                        weight_scale="kaiming", reg=reg, dtype=np.float64, backend="reference", seed=2)
    errors = _grad_errors(model, X, y, zero_grad=("b1", "b2") if batchnorm else ())
    assert set(errors) == set(model.params)
    assert max(errors.values()) < 1e-6, errors


def test_deep_gradients_pool_after_middle_layer():
    """Pools on some layers only, and a layer without pool at the end."""
    X, y = _data(3, (2, 2, 4, 4))
    model = DeepConvNet(input_dims=(2, 4, 4), num_filters=[2, 3, 2], max_pools=[1], weight_scale="kaiming",
                        dtype=np.float64, backend="reference", seed=3)
    errors = _grad_errors(model, X, y)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("make", [
    lambda: ThreeLayerConvNet(input_dims=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=10,
                              dtype=np.float64, backend="reference", seed=0),
    lambda: DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 4], max_pools=[0, 1], dtype=np.float64,
                        backend="reference", seed=0),
    lambda: DeepConvNet(input_dims=(3, 8, 8), num_filters=[4, 4], max_pools=[0, 1], batchnorm=True,
                        dtype=np.float64, backend="reference", seed=0),
])
def test_initial_loss_is_log_num_classes(make):
    """Small random weights give near-uniform scores: loss ~ log(10)."""
    model = make()
    X, y = _data(4, (10, 3, 8, 8))
    loss, _ = model.loss(X, y)
    assert abs(loss - math.log(10)) < 1e-3
    # L2 adds exactly reg * sum(W**2) over weights (not biases, not gamma/beta)
    model.reg = 0.5
    loss_reg, _ = model.loss(X, y)
    l2 = sum(float(np.sum(v ** 2)) for k, v in model.params.items() if k.startswith("W"))
    assert loss_reg - loss == pytest.approx(0.5 * l2, rel=1e-9)


def test_kaiming_initializer():
    rng = np.random.default_rng(0)
    w = kaiming_initializer(64, 256, K=3, rng=rng)
    assert w.shape == (256, 64, 3, 3) and w.dtype == np.float32
    assert w.std() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.01)
    w = kaiming_initializer(400, 300, relu=False, dtype=np.float64, rng=rng)
    assert w.shape == (400, 300) and w.dtype == np.float64
    assert w.std() == pytest.approx(math.sqrt(1 / 400), rel=0.01)
    assert abs(w.mean()) < 0.02 * w.std()  # 120,000 samples: the mean is within ~0.003 std
    for bad, match in [({"Din": 0}, "Din must be a positive integer"), ({"K": 2.5}, "K must be"),
                       ({"dtype": np.int32}, "float32 or float64")]:
        args = {"Din": 3, "Dout": 4, "K": 3, **bad}
        with pytest.raises(ValueError, match=match):
            kaiming_initializer(**args)


def test_deep_kaiming_uses_gain_1_for_the_last_layer():
    model = DeepConvNet(input_dims=(3, 32, 32), num_filters=[32, 32], max_pools=[0, 1], weight_scale="kaiming",
                        backend="reference", seed=0)
    assert model.params["W1"].std() == pytest.approx(math.sqrt(2 / 27), rel=0.05)
    assert model.params["W2"].std() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.05)
    D = 32 * 8 * 8
    assert model.params["W3"].shape == (D, 10)
    assert model.params["W3"].std() == pytest.approx(math.sqrt(1 / D), rel=0.05)


def test_params_shapes_dtype_and_seed():
    a = DeepConvNet(input_dims=(3, 16, 16), num_filters=[4, 8, 6], max_pools=[0, 2], batchnorm=True,
                    backend="reference", seed=5)
    assert a.param_shapes() == {
        "W1": (4, 3, 3, 3), "b1": (4,), "gamma1": (4,), "beta1": (4,),
        "W2": (8, 4, 3, 3), "b2": (8,), "gamma2": (8,), "beta2": (8,),
        "W3": (6, 8, 3, 3), "b3": (6,), "gamma3": (6,), "beta3": (6,),
        "W4": (6 * 4 * 4, 10), "b4": (10,)}
    assert all(v.dtype == np.float32 for v in a.params.values())
    assert len(a.bn_params) == 3
    b = build_model(a.config(), seed=5)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert b.config() == a.config()
    t = ThreeLayerConvNet(input_dims=(3, 8, 8), num_filters=5, filter_size=5, hidden_dim=7, backend="reference")
    assert t.param_shapes() == {"W1": (5, 3, 5, 5), "W2": (5 * 4 * 4, 7), "W3": (7, 10),
                                "b1": (5,), "b2": (7,), "b3": (10,)}
    assert build_model(t.config()).param_shapes() == t.param_shapes()


def test_test_mode_uses_running_stats_and_predict():
    X, y = _data(6, (6, 3, 4, 4))
    model = DeepConvNet(input_dims=(3, 4, 4), num_filters=[3], max_pools=[0], batchnorm=True,
                        weight_scale="kaiming", dtype=np.float64, backend="reference", seed=0)
    before = model.bn_params[0]["running_mean"].copy()
    scores = model.loss(X)                       # test mode: running stats untouched
    assert scores.shape == (6, 10)
    np.testing.assert_array_equal(model.bn_params[0]["running_mean"], before)
    model.loss(X, y)                             # train mode: they move
    assert model.bn_params[0]["mode"] == "train"
    assert not np.array_equal(model.bn_params[0]["running_mean"], before)
    preds = model.predict(X, batch_size=4)
    np.testing.assert_array_equal(preds, np.argmax(model.loss(X), axis=1))
    assert model.bn_params[0]["mode"] == "test"


# The models' default backend, checked whether or not conftest's BACKENDS lists it.
@pytest.mark.parametrize("backend", ["cpu"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_fast_backend_matches_reference(backend, batchnorm):
    X, y = _data(7, (4, 3, 8, 8))
    kw = dict(input_dims=(3, 8, 8), num_filters=[4, 6], max_pools=[0, 1], batchnorm=batchnorm,
              weight_scale="kaiming", reg=0.1, dtype=np.float64, seed=3)
    ref = DeepConvNet(backend="reference", **kw)
    fast = DeepConvNet(backend=backend, **kw)
    loss_r, g_r = ref.loss(X, y)
    loss_f, g_f = fast.loss(X, y)
    assert loss_f == pytest.approx(loss_r, rel=1e-12)
    for k in g_r:
        if batchnorm and k in ("b1", "b2"):
            np.testing.assert_allclose(g_f[k], g_r[k], atol=1e-12)
        else:
            assert rel_error(g_f[k], g_r[k]) < 1e-9, k


@pytest.mark.parametrize("kwargs, match", [
    ({"num_filters": []}, "at least one conv layer"),
    ({"num_filters": [4, 0]}, r"num_filters\[1\] must be a positive integer"),
    ({"max_pools": [0, 5]}, r"max_pools entries must be conv layer indices in \[0, 2\)"),
    ({"max_pools": [1, 1]}, "lists a layer twice"),
    ({"input_dims": (3, 6, 6), "max_pools": [0, 1]}, r"cannot be pooled 2 times.*after layer 1 is 3x3"),
    ({"weight_scale": "xavier"}, "weight_scale must be a positive number or 'kaiming'"),
    ({"weight_scale": -1.0}, "weight_scale must be a positive number"),
    ({"reg": -0.1}, "reg must be a finite number >= 0"),
    ({"dtype": np.int32}, "dtype must be float32 or float64"),
    ({"backend": "gpu"}, "unknown backend 'gpu'"),
    ({"input_dims": (3, 8)}, r"input_dims must be \(C, H, W\)"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
])
def test_deep_bad_config(kwargs, match):
    args = {"input_dims": (3, 8, 8), "num_filters": [4, 4], "max_pools": [0], "backend": "reference", **kwargs}
    with pytest.raises(ValueError, match=match):
        DeepConvNet(**args)


@pytest.mark.parametrize("kwargs, match", [
    ({"filter_size": 4}, "filter_size must be odd"),
    ({"input_dims": (3, 7, 8)}, "must be even for the 2x2 pool"),
    ({"hidden_dim": 0}, "hidden_dim must be a positive integer"),
])
def test_three_layer_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThreeLayerConvNet(**{"input_dims": (3, 8, 8), "backend": "reference", **kwargs})


def test_bad_loss_inputs():
    model = DeepConvNet(input_dims=(3, 4, 4), num_filters=[2], max_pools=[0], backend="reference", seed=0)
    X = np.zeros((2, 3, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"X must have shape \(N, 3, 4, 4\) for this model, got \(2, 3, 5, 4\)"):
        model.loss(np.zeros((2, 3, 5, 4)))
    with pytest.raises(ValueError, match="X holds no images"):
        model.loss(X[:0])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        model.loss(X, np.array([0, 10]))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        model.loss(X, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="X must be an array"):
        model.loss([[1.0]])
    with pytest.raises(ValueError, match="model config must name a kind"):
        build_model({"kind": "resnet"})
    with pytest.raises(ValueError, match="bad deep model config"):
        build_model({"kind": "deep", "layers": 3})
