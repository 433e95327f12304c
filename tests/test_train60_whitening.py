"""FastNet's whitening stem: fitted from data (2x2 patch PCA, unit variance), frozen in
training, exact gradients through the rest of the net, kept by checkpoints."""
import numpy as np
import pytest

from numbaconv.checkpoint import load_checkpoint, save_checkpoint
from numbaconv.gradcheck import eval_numerical_gradient, rel_error
from numbaconv.models import FastNet, build_model
from numbaconv.solver import Solver


def _images(n=40, hw=8, seed=0):
    # correlated channels and neighbouring pixels, so whitening has work to do
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3, hw + 1, hw + 1))
    x = z[:, :, 1:, 1:] + 0.8 * z[:, :, :-1, 1:] + 0.5 * z[:, :, 1:, :-1]
    return x + 0.7 * x[:, [1, 2, 0]] + 0.3


def _net(**kw):
    args = dict(input_dims=(3, 8, 8), stem=0, widths=[3, 4], whiten=12, smoothing=0.1, dtype=np.float64,
                backend="reference", seed=0)
    args.update(kw)
    return FastNet(**args)


def test_stride1_stem_whitens_every_2x2_patch():
    X = _images()
    net = _net(whiten=12, whiten_stride=1)
    evals = net.fit_whitening(X, eps=1e-12)
    assert np.all(np.diff(evals) <= 0)
    out, _ = net.nb.Conv.forward(X, net.params["whiten_W"], net.params["whiten_b"], net.whiten_conv_param)
    assert out.shape == (40, 12, 8, 8)
    inner = out[:, :, 1:, 1:].transpose(1, 0, 2, 3).reshape(12, -1)   # windows with no padding in them
    np.testing.assert_allclose(inner.mean(axis=1), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(inner, bias=True), np.eye(12), atol=1e-8)


def test_stride2_stem_is_the_same_filters_on_non_overlapping_windows():
    X = _images()
    s1, s2 = _net(whiten=5, whiten_stride=1), _net(whiten=5, whiten_stride=2)
    s1.fit_whitening(X)
    s2.fit_whitening(X)
    np.testing.assert_array_equal(s2.params["whiten_W"], s1.params["whiten_W"][:, :, :2, :2])
    o1, _ = s1.nb.Conv.forward(X, s1.params["whiten_W"], s1.params["whiten_b"], s1.whiten_conv_param)
    o2, _ = s2.nb.Conv.forward(X, s2.params["whiten_W"], s2.params["whiten_b"], s2.whiten_conv_param)
    assert o2.shape == (40, 5, 4, 4)
    np.testing.assert_allclose(o2, o1[:, :, 1::2, 1::2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_with_a_whitening_stem(stride):
    rng = np.random.default_rng(1)
    X, y = _images(n=3, seed=2), rng.integers(0, 10, 3)
    net = _net(whiten=6, whiten_stride=stride, widths=[3] if stride == 2 else [3, 4])
    net.fit_whitening(_images(seed=3))
    _, grads = net.loss(X, y)
    assert sorted(grads) == sorted(set(net.params) - set(net.frozen))
    last = len(net.layers) + 1
    for name in sorted(grads):
        # the loss is smooth in the last layer's parameters (only softmax follows), so they get
        # gradcheck's oracle for smooth functions (h 1e-3, five points: no rounding floor at the
        # whitened net's larger loss); elsewhere h 1e-5, so no step crosses a ReLU or max kink
        step = {"h": 1e-3, "order": 4} if name in (f"W{last}", f"b{last}") else {}
        num = eval_numerical_gradient(lambda _: net.loss(X, y)[0], net.params[name], verbose=False, **step)
        if name.startswith("b") and name != f"b{last}":   # conv bias before BN: zero
            assert np.max(np.abs(num - grads[name])) < 1e-8, name
        else:
            assert rel_error(num, grads[name]) < 1e-6, name


def test_cpu_matches_reference_with_a_stem():
    X, y = _images(n=4, seed=4), np.arange(4)
    ref, cpu = _net(whiten_stride=2), _net(whiten_stride=2, backend="cpu")
    ref.fit_whitening(_images())
    cpu.fit_whitening(_images())
    lr, gr = ref.loss(X, y)
    lc, gc = cpu.loss(X, y)
    assert lc == pytest.approx(lr, rel=1e-10)
    for k in gr:
        np.testing.assert_allclose(gc[k], gr[k], rtol=1e-7, atol=1e-10, err_msg=k)


def test_solver_fits_the_stem_and_training_leaves_it_alone():
    X = _images(n=32).astype(np.float32)
    data = {"X_train": X, "y_train": np.arange(32) % 10, "X_val": X[:8], "y_val": np.arange(8)}
    net = _net(dtype=np.float32, backend="cpu")
    before = net.params["whiten_W"].copy()
    solver = Solver(net, data, update_rule="sgd_nesterov", optim_config={"learning_rate": 0.1},
                    batch_size=8, num_epochs=1, verbose=False, seed=0)
    fitted = net.params["whiten_W"].copy()
    assert not np.array_equal(fitted, before)          # prepare() fitted it to X_train
    w1 = net.params["W1"].copy()
    solver.train()
    np.testing.assert_array_equal(net.params["whiten_W"], fitted)
    assert not np.array_equal(net.params["W1"], w1)


def test_checkpoint_keeps_the_stem(tmp_path):
    net = _net(dtype=np.float32, backend="cpu")
    net.fit_whitening(_images())
    save_checkpoint(tmp_path / "m.h5", net, which="model")
    back = load_checkpoint(tmp_path / "m.h5").model
    assert back.whiten == 12 and back.whiten_stride == 1
    np.testing.assert_array_equal(back.params["whiten_W"], net.params["whiten_W"])
    X = _images(n=2).astype(np.float32)
    np.testing.assert_array_equal(back.loss(X), net.loss(X))


@pytest.mark.parametrize("kw, match", [({"whiten": 13}, "at most 12"), ({"whiten_stride": 3}, "whiten_stride"),
                                       ({"whiten": -1}, "whiten must be a positive integer"),
                                       ({"whiten_stride": 2, "input_dims": (3, 6, 6)}, "pooled")])
def test_bad_whitening_config(kw, match):
    with pytest.raises(ValueError, match=match):
        _net(**kw)
    with pytest.raises(ValueError, match="no whitening stem"):
        _net(whiten=0).fit_whitening(_images())


def test_config_round_trip():
    net = _net(whiten=7, whiten_stride=2)
    again = build_model(net.config())
    assert (again.whiten, again.whiten_stride) == (7, 2)
    assert again.param_shapes() == net.param_shapes()
