"""The report's experiments in tiny configurations on the synthetic set: each
command writes a readable PNG of the expected size and a JSON whose numbers
are the run's (checked against the histories it records and the run itself)."""
import json

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from numbaconv.data import load_dataset
from numbaconv.experiments import run_overfit
from numbaconv.models import DeepConvNet
from numbaconv.plots import DPI
from numbaconv.solver import Solver
from numbaconv_cli.main import app

runner = CliRunner()
TINY = ["--dataset", "synthetic", "--num-val", "10", "--seed", "1"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 200)


def _check_history(h, epochs, iters_per_epoch):
    assert h["epoch"] == list(range(1, epochs + 1))
    assert len(h["loss"]) == epochs * iters_per_epoch
    assert len(h["train_acc"]) == len(h["val_acc"]) == epochs


def test_overfit_matches_a_direct_solver_run(tmp_path):
    r = run_overfit(dataset="synthetic", out=tmp_path, num_train=10, num_val=10, epochs=3, batch_size=5,
                    num_filters=(4, 4), max_pools=(0, 1), seed=2)
    saved = json.loads((tmp_path / "overfit.json").read_text())
    assert saved["history"] == r["history"]
    _check_history(saved["history"], 3, 2)
    assert saved["final_train_acc"] == saved["history"]["train_acc"][-1]
    hit = [e for e, a in zip(saved["history"]["epoch"], saved["history"]["train_acc"]) if a >= 1.0]
    assert saved["epochs_to_100"] == (hit[0] if hit else None)
    # The same run done by hand gives the same numbers: the JSON is the run's.
    ds = load_dataset("synthetic", num_val=10, num_train=10, seed=2)
    model = DeepConvNet(num_filters=[4, 4], max_pools=[0, 1], weight_scale=0.1, reg=1e-5, seed=2)
    s = Solver(model, {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val},
               update_rule="adam", optim_config={"learning_rate": 2e-3}, batch_size=5, num_epochs=3,
               num_train_samples=None, seed=2, verbose=False)
    s.train()
    np.testing.assert_allclose(saved["history"]["loss"], s.loss_history, rtol=1e-6)
    assert saved["history"]["train_acc"] == s.train_acc_history
    assert imread(saved["png"]).shape[:2] == (6 * DPI, 8 * DPI)


def test_overfit_cli(tmp_path):
    r = runner.invoke(app, ["experiment", "overfit", *TINY, "--out", str(tmp_path), "--num-train", "10",
                            "--epochs", "2", "--batch-size", "5", "--filters", "4", "--pools", "0"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "overfit.json").read_text())
    assert f"{saved['final_train_acc']:.3f}" in r.output
    assert imread(str(tmp_path / "overfit.png")).shape[:2] == (6 * DPI, 8 * DPI)


def test_init_cli(tmp_path):
    r = runner.invoke(app, ["experiment", "init", *TINY, "--out", str(tmp_path), "--num-train", "20",
                            "--batch-size", "10", "--scales", "kaiming,1e-3", "--filters", "4,4,4",
                            "--pools", "1"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "init.json").read_text())
    assert list(saved["runs"]) == ["kaiming", "0.001"]
    assert saved["layers"] == 4 and saved["chance"] == 0.1
    for label, run in saved["runs"].items():
        _check_history(run["history"], 1, 2)
        assert run["final_val_acc"] == run["history"]["val_acc"][-1]
        assert f"{run['final_train_acc']:.3f}" in r.output
    assert imread(str(tmp_path / "init.png")).shape[:2] == (5 * DPI, 10 * DPI)


def test_bn_lr_cli(tmp_path):
    r = runner.invoke(app, ["experiment", "bn-lr", *TINY, "--out", str(tmp_path), "--num-train", "20",
                            "--epochs", "2", "--batch-size", "10", "--lrs", "1e-3,1e-2", "--filters", "4",
                            "--pools", "0"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "bn-lr.json").read_text())
    assert saved["learning_rates"] == [1e-3, 1e-2]
    for variant in ("baseline", "batchnorm"):
        assert list(saved["runs"][variant]) == ["0.001", "0.01"]
        for run in saved["runs"][variant].values():
            _check_history(run["history"], 2, 2)
            assert run["final_train_acc"] == run["history"]["train_acc"][-1]
            assert run["best_val_acc"] == max(run["history"]["val_acc"])
    assert imread(str(tmp_path / "bn-lr.png")).shape[:2] == (8 * DPI, 10 * DPI)


def test_bad_sizes_are_clear_errors(tmp_path):
    r = runner.invoke(app, ["experiment", "init", *TINY, "--out", str(tmp_path), "--num-train", "20",
                            "--filters", "4,x"])
    assert r.exit_code == 2 and "--filters" in r.output
    r = runner.invoke(app, ["experiment", "overfit", "--dataset", "synthetic", "--num-val", "10", "--out",
                            str(tmp_path), "--filters", "4", "--pools", "3"])
    assert r.exit_code == 2 and "max_pools" in r.output
