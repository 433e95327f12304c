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
    solver.batch_size = 32   # the recipe's 256 exceeds the toy set
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
