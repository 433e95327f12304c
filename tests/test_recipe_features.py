"""The fast recipe's pieces: label-smoothed loss, Nesterov SGD with weight decay,
decay exclusion, augmentation, time-fraction schedules, global max pool, FastNet
(gradients against centered differences, float64, reference backend), test-time flip."""
import math

import numpy as np
import pytest

from numbaconv.gradcheck import eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from numbaconv.losses import smoothed_softmax_loss
from numbaconv.models import FastNet, build_model, global_max_pool_backward, global_max_pool_forward
from numbaconv.optim import sgd_nesterov
from numbaconv.recipe import TimeSchedule, augment_crop_flip, exclude_from_decay, recipe_solver


def test_smoothed_loss_without_smoothing_is_softmax_loss():
    from numbaconv.reference import softmax_loss

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    loss, dx = smoothed_softmax_loss(x, y, 0.0)
    ref_loss, ref_dx = softmax_loss(x, y)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-10, atol=1e-14)


def test_smoothed_loss_value_and_gradient():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 5)), rng.integers(0, 5, 6)
    loss, dx = smoothed_softmax_loss(x, y, 0.2)
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    target = np.full((6, 5), 0.2 / 5)
    target[np.arange(6), y] += 0.8
    assert loss == pytest.approx(-(target * np.log(p)).sum() / 6, rel=1e-12)
    num = eval_numerical_gradient(lambda z: smoothed_softmax_loss(z, y, 0.2)[0], x.copy(), verbose=False)
    # the oracle's rounding floor: ~1e-16 * loss / h = 2e-11 absolute, i.e. ~3e-8 relative on
    # the smallest entries (~6e-4) here; a wrong gradient is off by far more than 1e-7
    assert rel_error(num, dx) < 1e-7
    x32 = x.astype(np.float32)
    assert smoothed_softmax_loss(x32, y, 0.2)[1].dtype == np.float32


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), "a"])
def test_smoothed_loss_rejects_bad_smoothing(bad):
    with pytest.raises(ValueError, match="smoothing"):
        smoothed_softmax_loss(np.zeros((2, 3)), np.array([0, 1]), bad)


def test_sgd_nesterov_two_steps_by_hand():
    w, dw = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    cfg = {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.01}
    w1, cfg1 = sgd_nesterov(w, dw, dict(cfg))
    g = dw + 0.01 * w
    v = g
    np.testing.assert_allclose(w1, w - 0.1 * (g + 0.9 * v))
    w2, _ = sgd_nesterov(w1, dw, cfg1)
    g2 = dw + 0.01 * w1
    v2 = 0.9 * v + g2
    np.testing.assert_allclose(w2, w1 - 0.1 * (g2 + 0.9 * v2))
    np.testing.assert_array_equal(w, [1.0, -2.0])   # inputs untouched
    w32, c32 = sgd_nesterov(w.astype(np.float32), dw.astype(np.float32), dict(cfg))
    assert w32.dtype == np.float32 and c32["velocity"].dtype == np.float32


def _nesterov_numpy(w, dw, cfg):
    # sgd_nesterov's contract written out in NumPy: the compiled pass must give these bits
    g = dw + cfg["weight_decay"] * w if cfg["weight_decay"] else dw
    v = cfg["momentum"] * cfg.get("velocity", np.zeros_like(w)) + g
    return w - cfg["learning_rate"] * (g + cfg["momentum"] * v), v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
def test_sgd_nesterov_compiled_pass_is_bit_for_bit_numpys(dtype, weight_decay):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 5, 3, 3)).astype(dtype)[:, ::2]   # not contiguous
    dw = rng.standard_normal(w.shape).astype(dtype)
    dw.flat[3], w.flat[7] = np.nan, np.inf                          # NaN and inf go through as NumPy's do
    cfg = {"learning_rate": 0.3, "momentum": 0.9, "weight_decay": weight_decay}
    w1, cfg1 = sgd_nesterov(w, dw, dict(cfg))
    want_w, want_v = _nesterov_numpy(w, dw, cfg)
    assert w1.dtype == dtype and cfg1["velocity"].dtype == dtype and w1.shape == w.shape
    np.testing.assert_array_equal(w1, want_w)
    np.testing.assert_array_equal(cfg1["velocity"], want_v)
    w2, cfg2 = sgd_nesterov(w1, dw, cfg1)                            # with a velocity
    want_w2, want_v2 = _nesterov_numpy(w1, dw, {**cfg, "velocity": cfg1["velocity"]})
    np.testing.assert_array_equal(w2, want_w2)
    np.testing.assert_array_equal(cfg2["velocity"], want_v2)


def test_sgd_nesterov_mixed_dtypes_follow_numpys_promotion():
    w, dw = np.ones(3, dtype=np.float32), np.full(3, 0.5)   # float64 gradient: NumPy promotes
    w1, cfg1 = sgd_nesterov(w, dw, {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    want_w, want_v = _nesterov_numpy(w, dw, {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    assert w1.dtype == want_w.dtype == np.float64
    np.testing.assert_array_equal(w1, want_w)


def test_sgd_nesterov_matches_torch_when_installed():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal(4)
    t = torch.tensor(w0.copy(), requires_grad=True)
    opt = torch.optim.SGD([t], lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    w, cfg = w0.copy(), {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    for _ in range(3):
        dw = rng.standard_normal(4)
        t.grad = torch.tensor(dw)
        opt.step()
        w, cfg = sgd_nesterov(w, dw, cfg)
    np.testing.assert_allclose(w, t.detach().numpy(), rtol=1e-12)


def test_sgd_nesterov_rejects_negative_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        sgd_nesterov(np.ones(2), np.ones(2), {"weight_decay": -1.0})


def _tiny_data(n=40, hw=16, seed=0):   # 16x16: the fast recipe halves the size, then pools 3 times
    rng = np.random.default_rng(seed)
    return {"X_train": rng.standard_normal((n, 3, hw, hw)).astype(np.float32), "y_train": rng.integers(0, 10, n),
            "X_val": rng.standard_normal((10, 3, hw, hw)).astype(np.float32), "y_val": rng.integers(0, 10, 10)}


def test_recipe_solver_decays_weights_only():
    model, solver = recipe_solver("fast", _tiny_data(), time_budget=5.0, verbose=False)
    for name, cfg in solver.optim_configs.items():
        assert cfg["weight_decay"] == (5e-4 if name.startswith("W") else 0.0), name
    assert any(not n.startswith("W") for n in solver.optim_configs)
    # the exclusion survives a call on an already-excluded solver
    exclude_from_decay(solver)
    assert solver.optim_configs["gamma1"]["weight_decay"] == 0.0


def test_augment_identity_without_pad_or_flip():
    X = np.random.default_rng(3).standard_normal((4, 3, 5, 5)).astype(np.float32)
    out, _ = augment_crop_flip(0, flip=False)(X, np.zeros(4, dtype=np.int64), np.random.default_rng(0))
    np.testing.assert_array_equal(out, X)


def test_augment_is_a_shift_and_maybe_a_flip_of_each_image():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((32, 2, 6, 7))
    y = np.arange(32)
    out, y_out = augment_crop_flip(2)(X, y, np.random.default_rng(5))
    assert out.shape == X.shape and out.dtype == X.dtype
    np.testing.assert_array_equal(y_out, y)
    seen = set()
    for n in range(32):
        padded = np.pad(X[n], ((0, 0), (2, 2), (2, 2)))
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if np.array_equal(out[n], (lambda c: c[..., ::-1] if f else c)(padded[:, dy:dy + 6, dx:dx + 7]))]
        assert matches, f"image {n} is not a shifted/flipped copy"
        seen.update(matches)
    assert {m[2] for m in seen} == {False, True}      # both flipped and unflipped images occur
    assert len({m[:2] for m in seen}) > 5                # many different shifts
    again, _ = augment_crop_flip(2)(X, y, np.random.default_rng(5))
    np.testing.assert_array_equal(again, out)            # seeded: reproducible


def test_augment_rejects_bad_input():
    with pytest.raises(ValueError, match="pad"):
        augment_crop_flip(-1)
    with pytest.raises(ValueError, match="images"):
        augment_crop_flip(1)(np.zeros((2, 3)), np.zeros(2), np.random.default_rng(0))


def test_time_schedule_shapes():
    s = TimeSchedule(1.0, 10.0, warmup=0.2, shape="linear", start=0.1, final=0.0)
    assert s.factor(0.0) == pytest.approx(0.1)
    assert s.factor(0.1) == pytest.approx(0.55)
    assert s.factor(0.2) == pytest.approx(1.0)
    assert s.factor(0.6) == pytest.approx(0.5)
    assert s.factor(1.0) == pytest.approx(0.0) and s.factor(2.0) == pytest.approx(0.0)
    c = TimeSchedule(1.0, 10.0, warmup=0.0, shape="cosine", final=0.1)
    assert c.factor(0.0) == pytest.approx(1.0)
    assert c.factor(0.5) == pytest.approx(0.55)
    assert c.factor(1.0) == pytest.approx(0.1)


def test_time_schedule_follows_the_solvers_training_time():
    _, solver = recipe_solver("fast", _tiny_data(), time_budget=10.0, verbose=False)
    sched = TimeSchedule(0.4, 10.0, warmup=0.2)
    solver.train_time = 6.0           # 60% of the budget: half-way down the linear decay
    sched(solver)
    assert solver.learning_rate == pytest.approx(0.2)
    epochs = TimeSchedule(0.4, None, warmup=0.0)   # no budget: by iterations
    solver.iteration = solver.num_iterations // 2
    epochs(solver)
    assert solver.learning_rate == pytest.approx(0.2, rel=0.05)


@pytest.mark.parametrize("kwargs", [{"shape": "step"}, {"warmup": 1.0}, {"time_budget": 0.0}, {"start": -1.0}])
def test_time_schedule_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        TimeSchedule(**{"peak_lr": 0.1, "time_budget": 10.0, **kwargs})


def test_global_max_pool_forward_backward():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5))
    out, cache = global_max_pool_forward(x)
    np.testing.assert_array_equal(out, x.max(axis=(2, 3)))
    dout = rng.standard_normal(out.shape)
    dx = global_max_pool_backward(dout, cache)
    num = eval_numerical_gradient_array(lambda z: global_max_pool_forward(z)[0], x.copy(), dout)
    assert rel_error(num, dx) < 1e-9
    ties = np.zeros((1, 1, 2, 2))
    _, c = global_max_pool_forward(ties)
    np.testing.assert_array_equal(global_max_pool_backward(np.ones((1, 1)), c)[0, 0], [[1, 0], [0, 0]])


def _fastnet(**kw):
    args = dict(input_dims=(3, 8, 8), stem=2, widths=[3, 4], convs_per_group=2, smoothing=0.2,
                logit_scale=0.5, dtype=np.float64, backend="reference", seed=0)
    args.update(kw)
    return FastNet(**args)


def test_fastnet_gradients():
    rng = np.random.default_rng(7)
    X, y = rng.standard_normal((3, 3, 4, 4)), rng.integers(0, 10, 3)
    # small (the loop-based reference is the spec, and slow): stem, two groups of two convs
    model = _fastnet(input_dims=(3, 4, 4), widths=[2, 3], reg=0.01)
    _, grads = model.loss(X, y)
    assert sorted(grads) == sorted(model.params)
    for name in sorted(grads):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name], verbose=False)
        if name.startswith("b") and name != f"b{len(model.layers) + 1}":
            # a conv bias before batch norm: the true gradient is exactly zero
            assert np.max(np.abs(num - grads[name])) < 1e-8, name
        else:
            assert rel_error(num, grads[name]) < 1e-6, name


def test_fastnet_tta_flip_averages_the_mirror():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((3, 3, 8, 8))
    plain = _fastnet(stem=0)
    tta = build_model({**plain.config(), "tta_flip": True}, seed=0)
    np.testing.assert_array_equal(tta.params["W1"], plain.params["W1"])
    expected = 0.5 * (plain.loss(X) + plain.loss(X[..., ::-1]))
    np.testing.assert_allclose(tta.loss(X), expected, rtol=1e-12)


def test_fastnet_cpu_matches_reference():
    rng = np.random.default_rng(9)
    X, y = rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 10, 4)
    ref, cpu = _fastnet(), _fastnet(backend="cpu")
    lr, gr = ref.loss(X, y)
    lc, gc = cpu.loss(X, y)
    assert lc == pytest.approx(lr, rel=1e-10)
    for k in gr:
        np.testing.assert_allclose(gc[k], gr[k], rtol=1e-7, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("kw, match", [({"widths": []}, None), ({"widths": [2, 2, 2, 2]}, "pooled"),
                                       ({"smoothing": 1.0}, "smoothing"), ({"logit_scale": 0}, "logit_scale"),
                                       ({"convs_per_group": 0}, "convs_per_group")])
def test_fastnet_bad_config(kw, match):
    if not kw.get("widths", [1]):
        _fastnet(**kw)   # no groups is allowed: stem + global pool + linear
        return
    with pytest.raises(ValueError, match=match):
        _fastnet(**kw)


def test_recipe_trains_and_reduces_loss():
    data = _tiny_data(n=64, seed=1)
    data["y_train"] = np.arange(64) % 2      # a learnable toy task
    data["X_train"][data["y_train"] == 1, 0] += 1.5
    model, solver = recipe_solver("fast", data, time_budget=None, num_epochs=8, verbose=False)
    solver.batch_size = 32   # the recipe's batch exceeds the toy set
    solver.train()
    first, last = np.mean(solver.loss_history[:2]), np.mean(solver.loss_history[-2:])
    assert last < first
    assert math.isfinite(last)


def test_augment_kernel_matches_a_numpy_gather():
    # the kernel against the plain NumPy gather it replaced (pad, index, mirror the columns)
    X = np.random.default_rng(6).standard_normal((9, 3, 5, 6)).astype(np.float32)
    out, _ = augment_crop_flip(2)(X, np.zeros(9, dtype=np.int64), np.random.default_rng(7))
    rng = np.random.default_rng(7)
    oy, ox, mirror = rng.integers(0, 5, size=9), rng.integers(0, 5, size=9), rng.random(9) < 0.5
    Xp = np.pad(X, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for n in range(9):
        want = Xp[n, :, oy[n]:oy[n] + 5, ox[n]:ox[n] + 6]
        np.testing.assert_array_equal(out[n], want[..., ::-1] if mirror[n] else want)


# ---------------------------------------------------------------- issue #13's recipe pieces
def test_dirac_init_makes_identity_filters_and_leaves_the_rest():
    plain, dirac = _fastnet(stem=0, widths=[2, 4]), _fastnet(stem=0, widths=[2, 4], dirac=True)
    for name in plain.params:
        if not name.startswith("W") or name == f"W{len(plain.layers) + 1}":
            np.testing.assert_array_equal(dirac.params[name], plain.params[name], err_msg=name)
    W1, W2 = dirac.params["W1"], dirac.params["W2"]   # (2, 3): 2 identity filters; (4, 2): 2 of 4
    for W in (W1, W2):
        n = min(W.shape[:2])
        ident = np.zeros((n, W.shape[1], 3, 3))
        ident[np.arange(n), np.arange(n), 1, 1] = 1
        np.testing.assert_array_equal(W[:n], ident)
    np.testing.assert_array_equal(W2[2:], plain.params["W2"][2:])   # the other filters as drawn
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8))
    from numbaconv.reference import Conv   # an identity filter copies its channel
    np.testing.assert_allclose(Conv.forward(x, W1, np.zeros(2), {"stride": 1, "pad": 1})[0], x[:, :2], atol=1e-15)


def _tiny_solver(model, n=8, **kw):
    rng = np.random.default_rng(0)
    C, H, W = model.input_dims
    data = {"X_train": rng.standard_normal((n, C, H, W)), "y_train": rng.integers(0, 10, n),
            "X_val": rng.standard_normal((4, C, H, W)), "y_val": rng.integers(0, 10, 4)}
    from numbaconv.solver import Solver

    return Solver(model, data, batch_size=4, num_epochs=2, verbose=False, seed=0, **kw)


def test_frozen_bn_scale_stays_one_and_bn_momentum_is_used():
    model = _fastnet(input_dims=(3, 4, 4), stem=0, widths=[2], convs_per_group=1, freeze_bn_scale=True,
                     bn_momentum=0.6)
    assert "gamma1" in model.frozen and model.bn_params[0]["momentum"] == 0.6
    solver = _tiny_solver(model, update_rule="sgd", optim_config={"learning_rate": 0.1})
    beta0 = model.params["beta1"].copy()
    X = solver.X_train[:4]
    model.loss(X, solver.y_train[:4])
    from numbaconv.reference import Conv
    a = Conv.forward(X, model.params["W1"], model.params["b1"], {"stride": 1, "pad": 1})[0]
    np.testing.assert_allclose(model.bn_params[0]["running_mean"], 0.4 * a.mean(axis=(0, 2, 3)), rtol=1e-12)
    solver.train()
    np.testing.assert_array_equal(model.params["gamma1"], np.ones(2))
    assert not np.array_equal(model.params["beta1"], beta0)
    assert build_model(model.config()).frozen == model.frozen


@pytest.mark.parametrize("bad", [1.0, -0.1, "x", True])
def test_bn_momentum_refuses_bad_values(bad):
    with pytest.raises(ValueError, match="bn_momentum"):
        _fastnet(bn_momentum=bad)


def test_whitening_with_its_negation_and_gradients():
    rng = np.random.default_rng(10)
    X, y = rng.standard_normal((3, 3, 4, 4)), rng.integers(0, 10, 3)
    model = _fastnet(input_dims=(3, 4, 4), stem=0, widths=[2], convs_per_group=2, whiten=3, whiten_neg=True,
                     dirac=True, freeze_bn_scale=True, tta_shift=1)
    model.fit_whitening(rng.standard_normal((20, 3, 4, 4)))
    ww, wb = model.params["whiten_W"], model.params["whiten_b"]
    assert ww.shape[0] == 6 == model.stem_channels and model.params["W1"].shape[1] == 6
    np.testing.assert_array_equal(ww[3:], -ww[:3])
    np.testing.assert_array_equal(wb[3:], -wb[:3])
    _, grads = model.loss(X, y)
    for name in ("W1", "W2", "beta1", "W3"):
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name], verbose=False)
        # relative 1e-6, but entries that are 0 up to the oracle's rounding (~1e-10) compared absolutely
        np.testing.assert_allclose(grads[name], num, rtol=1e-6, atol=1e-8, err_msg=name)
    cpu = build_model({**model.config(), "backend": "cpu"}, seed=0)
    cpu.params = {k: v.copy() for k, v in model.params.items()}
    np.testing.assert_allclose(cpu.loss(X, y)[0], model.loss(X, y)[0], rtol=1e-10)
    for bc, br in zip(cpu.bn_params, model.bn_params):   # the same running statistics for test mode
        bc.update(running_mean=br["running_mean"].copy(), running_var=br["running_var"].copy())
    np.testing.assert_allclose(cpu.loss(X), model.loss(X), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="whiten_neg"):
        _fastnet(whiten_neg=True)


def test_shift_images_pads_with_zeros():
    from numbaconv.models import shift_images

    X = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    for dy, dx in ((1, 1), (-2, -1), (0, 2), (1, -1)):
        padded = np.pad(X, ((0, 0), (0, 0), (2, 2), (2, 2)))
        want = padded[..., 2 - dy:2 - dy + 4, 2 - dx:2 - dx + 5]
        np.testing.assert_array_equal(shift_images(X, dy, dx), want)


def test_tta_shift_weights_the_views():
    from numbaconv.models import shift_images

    X = np.random.default_rng(11).standard_normal((3, 3, 8, 8))
    for flip in (False, True):
        plain = _fastnet(stem=0, tta_flip=flip)
        tta = build_model({**plain.config(), "tta_shift": 2}, seed=0)
        np.testing.assert_array_equal(tta.params["W1"], plain.params["W1"])
        want = 0.5 * plain.loss(X) + 0.25 * plain.loss(shift_images(X, 2, 2)) + 0.25 * plain.loss(shift_images(X, -2, -2))
        np.testing.assert_allclose(tta.loss(X), want, rtol=1e-12)
    for bad in (3, -1, True, 1.5):
        with pytest.raises(ValueError, match="tta_shift"):
            _fastnet(tta_shift=bad)


def test_new_options_default_off_and_round_trip_the_config():
    old = {"kind": "fast", "input_dims": [3, 8, 8], "stem": 2, "widths": [3, 4], "whiten": 0, "whiten_stride": 1,
           "convs_per_group": 2, "num_classes": 10, "smoothing": 0.2, "logit_scale": 0.5, "tta_flip": False,
           "weight_scale": "kaiming", "reg": 0.0, "dtype": "float64", "backend": "reference"}   # as written before
    model = build_model(old, seed=0)
    ref = _fastnet()
    for k in ref.params:
        np.testing.assert_array_equal(model.params[k], ref.params[k])
    assert model.frozen == () and model.bn_params[0]["momentum"] == 0.9
    cfg = _fastnet(dirac=True, freeze_bn_scale=True, bn_momentum=0.6, tta_shift=1).config()
    assert {k: cfg[k] for k in ("dirac", "freeze_bn_scale", "bn_momentum", "tta_shift")} == \
        {"dirac": True, "freeze_bn_scale": True, "bn_momentum": 0.6, "tta_shift": 1}
    assert build_model(cfg, seed=0).config() == cfg


def test_param_groups_scale_learning_rates_by_name():
    from numbaconv.recipe import apply_param_groups, param_group

    assert [param_group(n) for n in ("W1", "beta2", "gamma3", "b1", "whiten_W")] == \
        ["weights", "bn_bias", "bn_scale", "other", "other"]
    solver = _tiny_solver(_fastnet(input_dims=(3, 4, 4), stem=0, widths=[2]), update_rule="sgd_nesterov",
                          optim_config={"learning_rate": 0.1, "weight_decay": 1e-3})
    apply_param_groups(solver, {"bn_bias": 64.0})
    cfg = solver.optim_configs
    assert cfg["beta1"]["learning_rate"] == pytest.approx(6.4) and cfg["W1"]["learning_rate"] == 0.1
    assert cfg["W1"]["weight_decay"] == 1e-3 and cfg["beta1"]["weight_decay"] == 0.0 == cfg["b1"]["weight_decay"]
    solver.set_learning_rate(0.01)
    assert cfg["beta1"]["learning_rate"] == pytest.approx(0.64) and solver.learning_rate == pytest.approx(0.01)
    model, w0 = solver.model, {k: v.copy() for k, v in solver.model.params.items()}
    bn0 = [dict(bp) for bp in model.bn_params]
    copy = np.random.Generator(np.random.PCG64())
    copy.bit_generator.state = solver.rng.bit_generator.state
    idx = copy.choice(8, 4)   # the minibatch the step will draw
    _, g = model.loss(solver.X_train[idx], solver.y_train[idx])   # the gradient the step will take
    for bp, b in zip(model.bn_params, bn0):
        bp.update(b)
    solver._step()   # one Nesterov step from zero velocity: w -= lr * (1 + momentum) * (g + wd * w)
    np.testing.assert_allclose(w0["beta1"] - model.params["beta1"], 0.64 * 1.9 * g["beta1"], rtol=1e-10)
    np.testing.assert_allclose(w0["W1"] - model.params["W1"], 0.01 * 1.9 * (g["W1"] + 1e-3 * w0["W1"]), rtol=1e-9)
    with pytest.raises(ValueError, match="group"):
        apply_param_groups(solver, {"biases": 2.0})
    with pytest.raises(ValueError, match="bn_bias"):
        apply_param_groups(solver, {"bn_bias": 0.0})


class _Quadratic:
    """loss = 0.5 * |w - 1|^2 whatever the batch: a model whose steps are known by hand."""
    num_classes = 2

    def __init__(self):
        self.params, self.bn_params = {"W": np.zeros(3)}, []

    def loss(self, X, y=None):
        w = self.params["W"]
        return 0.5 * float(np.sum((w - 1) ** 2)), {"W": w - 1}


def test_lookahead_every_k_steps_by_hand():
    rng = np.random.default_rng(12)
    data = {"X_train": rng.standard_normal((8, 1, 2, 2)), "y_train": np.zeros(8, dtype=np.int64),
            "X_val": rng.standard_normal((2, 1, 2, 2)), "y_val": np.zeros(2, dtype=np.int64)}
    from numbaconv.solver import Solver

    model = _Quadratic()
    solver = Solver(model, data, update_rule="sgd", optim_config={"learning_rate": 0.5}, batch_size=2,
                    num_epochs=2, verbose=False, lookahead_every=2, lookahead_decay=0.9)
    for _ in range(8):
        solver._step()
    w, slow = np.zeros(3), None
    for it in range(8):
        w = w - 0.5 * (w - 1)
        if (it + 1) % 2 == 0:
            d = 0.9 ** 2 * (it / 8) ** 3   # progress: the steps committed before this one
            slow = w.copy() if slow is None else d * slow + (1 - d) * w
            w = slow.copy()
    np.testing.assert_allclose(model.params["W"], w, rtol=1e-15)
    np.testing.assert_allclose(solver.optim_configs["W"]["lookahead"], slow, rtol=1e-15)
    assert solver.state_dict()["settings"]["lookahead_every"] == 2
    for bad in ({"lookahead_every": 0}, {"lookahead_decay": 1.0}):
        with pytest.raises(ValueError, match="lookahead"):
            Solver(_Quadratic(), data, verbose=False, **bad)


def test_alternating_flip_mirrors_each_image_on_every_other_epoch():
    from numbaconv.recipe import image_bits

    hook = augment_crop_flip(0, flip="alternate")
    assert hook.per_image
    X = np.random.default_rng(13).standard_normal((64, 1, 2, 3))
    idx = np.arange(64)
    out = [hook(X, idx, np.random.default_rng(0), index=idx, epoch=e, seed=5)[0] for e in range(3)]
    flipped = [np.array([np.array_equal(o[n], X[n, ..., ::-1]) for n in range(64)]) for o in out]
    for n in range(64):   # each image: exactly one of the two orientations
        assert all(np.array_equal(o[n], X[n, ..., ::-1] if f[n] else X[n]) for o, f in zip(out, flipped))
    np.testing.assert_array_equal(flipped[0], ~flipped[1])
    np.testing.assert_array_equal(flipped[0], flipped[2])
    np.testing.assert_array_equal(flipped[0], image_bits(5, idx))
    assert 16 < flipped[0].sum() < 48                                     # about half start mirrored
    assert not np.array_equal(image_bits(5, idx), image_bits(6, idx))   # the seed decides
    with pytest.raises(ValueError, match="flip"):
        augment_crop_flip(0, flip="sometimes")
