"""The "long" recipe (airbench93-class): its table entry builds, and a run of it (scaled down:
narrow groups on 16x16 images) checkpoints, resumes bit-identically (lookahead averages, the
alternating flips' seed, per-group learning rates) and evaluates like every other model."""
import numpy as np
import pytest

from conftest import load_benchmark
from numbaconv.checkpoint import load_checkpoint, save_checkpoint
from numbaconv.models import build_model
from numbaconv.recipe import RECIPES, describe_recipe, recipe_model_config, recipe_solver, recipe_solver_kwargs
from numbaconv.solver import Solver, evaluate_accuracy

SMALL = {"widths": [4, 8, 8]}   # the recipe's pieces, at a size a test can train


def _data(n=48, hw=16, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.standard_normal((n, 3, hw, hw)).astype(np.float32)
    X[:, 0] += y[:, None, None]   # learnable: class shifts the first channel
    yv = np.arange(12) % 3
    Xv = rng.standard_normal((12, 3, hw, hw)).astype(np.float32)
    Xv[:, 0] += yv[:, None, None]
    return {"X_train": X, "y_train": y, "X_val": Xv, "y_val": yv}


def test_long_recipe_table_and_model():
    r = RECIPES["long"]
    assert r["num_val"] == 5000 and r["time_budget"] == 900.0 and r["flip"] == "alternate"
    model = build_model(recipe_model_config("long", (3, 32, 32), 10), seed=0)
    assert [w.shape for k, w in model.params.items() if k.startswith("W")][:2] == [(64, 24, 3, 3), (64, 64, 3, 3)]
    assert model.params["whiten_W"].shape == (24, 3, 3, 3) and len(model.layers) == 6
    assert {f"gamma{i}" for i in range(1, 7)} <= set(model.frozen)
    text = describe_recipe("long")
    for words in ("groups 64/128/128 of 2 convs", "identity-initialised", "alternating flips", "lookahead every 5",
                  "bn bias lr x 64", "1-pixel shifts", "5000 validation images"):
        assert words in text, words


def _interrupt_at(k):
    def hook(solver):
        if solver.iteration == k:
            raise KeyboardInterrupt
    return hook


def test_long_recipe_checkpoints_resume_bit_identical_and_evaluate(tmp_path):
    data = _data()
    common = dict(time_budget=None, seed=3, num_epochs=3, num_classes=3, model_overrides=SMALL, verbose=False,
                  batch_size=8, num_train_samples=None)
    model, solver = recipe_solver("long", data, **common)
    assert solver.optim_configs["beta1"]["lr_scale"] == 64.0 and solver.lookahead_every == 5
    solver.train()
    assert np.isfinite(solver.loss_history).all() and solver.iteration == 18
    assert "lookahead" in solver.optim_configs["W1"]

    _, first = recipe_solver("long", data, on_iteration=_interrupt_at(7), **common)
    with pytest.raises(KeyboardInterrupt):
        first.train()
    path = tmp_path / "last.h5"
    save_checkpoint(path, first.model, solver=first, which="last")
    ck = load_checkpoint(path)
    for key in ("whiten_neg", "dirac", "freeze_bn_scale", "bn_momentum", "tta_shift"):
        assert ck.model.config()[key] == model.config()[key], key
    assert ck.model.bn_params[0]["momentum"] == 0.6
    hooks = recipe_solver_kwargs("long", None)   # what `train --resume` rebuilds (numbaconv.run.plan_resume)
    resumed = Solver(ck.model, data, num_epochs=3, verbose=False, seed=3, update_rule="sgd_nesterov",
                     schedule=hooks["schedule"], augment=hooks["augment"])
    resumed.load_state_dict(ck.solver_state)
    assert resumed.lookahead_every == 5 and resumed.augment_seed == solver.augment_seed
    assert resumed.sampling == solver.sampling == "epochs" and resumed.shuffle_seed == solver.shuffle_seed
    resumed.train()
    want, got = solver.training_weights(), resumed.training_weights()
    for k in want[0]:
        np.testing.assert_array_equal(got[0][k], want[0][k], err_msg=k)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_array_equal(a["running_mean"], b["running_mean"])
    h1, h2 = resumed.history(), solver.history()
    assert {k: v for k, v in h1.items() if k != "time"} == {k: v for k, v in h2.items() if k != "time"}   # time: the clock

    best = tmp_path / "best.h5"
    save_checkpoint(best, model, solver=solver, which="best")
    ck = load_checkpoint(best)
    acc, _ = evaluate_accuracy(ck.model, data["X_val"], data["y_val"])
    assert acc == evaluate_accuracy(model, data["X_val"], data["y_val"])[0] == solver.best_val_acc
    assert ck.model.tta_shift == 1 and ck.model.tta_flip


def _bench():
    return load_benchmark("time_to_accuracy")


def test_time_to_accuracy_points_summary_and_plot(tmp_path):
    b = _bench()
    assert b.points(60, 20) == [20, 40, 60] and b.points(50, 20) == [20, 40, 50]
    with pytest.raises(ValueError, match="every"):
        b.points(60, 0)
    curve = [{"time": t, "epoch": t / 10, "iteration": t, "val_acc": v}
             for t, v in ((10.0, 0.5), (30.0, 0.7), (60.0, 0.8), (90.0, 0.9), (120.0, 0.88))]
    assert b.summarise(curve, at=60, target=0.89) == {"acc_at": 0.8, "time_to_target": 90.0, "best_acc": 0.9,
                                                      "best_time": 90.0}
    assert b.summarise(curve, at=5, target=0.95) == {"acc_at": None, "time_to_target": None, "best_acc": 0.9,
                                                     "best_time": 90.0}
    png = tmp_path / "curve.png"
    b.plot_curves({"numbaconv": curve, "pytorch": curve[:3]}, png, 60, 0.89, "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == ["curve.png"]


def test_time_to_accuracy_curve_of_a_short_run():
    curve = _bench().curve_ours(_data(), "long", 0.6, seed=0, every=0.2, num_classes=3, model_overrides=SMALL,
                                batch_size=8)
    times = [c["time"] for c in curve]
    assert len(curve) >= 3 and times == sorted(times) and times[-1] <= 0.6
    assert all(0 <= c["val_acc"] <= 1 for c in curve)


def test_torch_recipe_follows_the_long_recipe():
    torch = pytest.importorskip("torch", reason="PyTorch is the yardstick (pip install torch), not a dependency")
    from numbaconv.torch_recipe import TorchRecipe

    data = _data(hw=32)
    rec = TorchRecipe("long", data, seed=0, threads=1, budget=10.0)
    bns = [m for m in rec.net if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 6 and all(abs(bn.momentum - 0.4) < 1e-12 and not bn.weight.requires_grad for bn in bns)
    assert isinstance(rec.net[1], torch.nn.ReLU)   # after the whitening stem
    conv = rec.net[2]
    assert torch.equal(conv.weight[:24, :, 1, 1], torch.eye(24))
    scales = sorted(g["lr_scale"] for g in rec.opt.param_groups)
    assert scales[-1] == 64.0 and set(scales[:-1]) == {1.0}
    for i in range(5):
        assert np.isfinite(rec.step(i / 10))
    assert rec.slow is not None and 0.0 <= rec.accuracy(data["X_val"], data["y_val"]) <= 1.0
    # the Solver's minibatches: its shuffle seed for this seed, each image once an epoch
    _, solver = recipe_solver("long", data, time_budget=None, seed=0, num_classes=3, model_overrides=SMALL, verbose=False)
    assert rec.sampling == solver.sampling == "epochs" and rec.shuffle_seed == solver.shuffle_seed
