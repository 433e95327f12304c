"""`numbaconv train` and `numbaconv evaluate`, driven in-process."""
import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from numbaconv_cli.main import app

runner = CliRunner()
# A tiny deep net on a tiny synthetic set: 2 steps per epoch.
BASE = ["train", "--dataset", "synthetic", "--filters", "4,4,4", "--pools", "0,1,2", "--num-train", "40",
        "--num-val", "20", "--batch-size", "20", "--backend", "cpu", "--seed", "3"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 200)
    monkeypatch.setattr(c.err_console, "width", 200)


def _params(path):
    with h5py.File(path, "r") as f:
        return {k: f["params"][k][()] for k in f["params"]}


def _train(*args):
    return runner.invoke(app, [*BASE, *map(str, args)])


def test_train_writes_run_folder_and_evaluate_reads_it(tmp_path):
    out = tmp_path / "run"
    r = _train("--epochs", 2, "--out", out)
    assert r.exit_code == 0, r.output
    assert "all epochs done" in r.output and "best val acc" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["best.h5", "config.json", "curves.png", "history.json", "last.h5"]
    from matplotlib.image import imread   # the curves `numbaconv plot` draws (8x6 in at 100 dpi)
    assert imread(str(out / "curves.png")).shape[:2] == (600, 800)
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 4 and history["epoch"] == [1.0, 2.0] and len(history["val_acc"]) == 2
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["num_filters"] == [4, 4, 4] and config["model"]["max_pools"] == [0, 1, 2]
    assert config["data"]["name"] == "synthetic" and len(config["data"]["mean"]) == 3
    assert config["run"]["epochs"] == 2 and config["solver"]["update_rule"] == "adam"

    r = runner.invoke(app, ["evaluate", str(out / "best.h5"), "--split", "val", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    # the validation split, preprocessed as in training, scores what training recorded as best
    assert result["accuracy"] == pytest.approx(max(history["val_acc"]))
    assert result["num_images"] == 20 and result["split"] == "val" and len(result["per_class"]) == 10

    r = runner.invoke(app, ["evaluate", str(out / "last.h5")])
    assert r.exit_code == 0, r.output
    assert "disk" in r.output and "of 1000 images" in r.output


def test_ctrl_c_saves_last_and_resume_matches_uninterrupted(tmp_path, monkeypatch):
    from numbaconv.solver import Solver

    full = tmp_path / "full"
    assert _train("--epochs", 3, "--out", full).exit_code == 0

    real_step = Solver._step

    def step(self):
        if self.iteration == 3:  # mid-epoch 2: as if Ctrl-C arrived here
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(Solver, "_step", step)
    part = tmp_path / "part"
    r = _train("--epochs", 3, "--out", part)
    assert r.exit_code == 130, r.output
    assert "interrupted" in r.output and "--resume" in r.output
    assert (part / "last.h5").exists()
    monkeypatch.setattr(Solver, "_step", real_step)

    r = runner.invoke(app, ["train", "--resume", str(part / "last.h5"), "--out", str(part)])
    assert r.exit_code == 0, r.output
    assert "resuming at epoch 1, iteration 3" in r.output
    a, b = _params(full / "last.h5"), _params(part / "last.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    ha = json.loads((full / "history.json").read_text())
    hb = json.loads((part / "history.json").read_text())
    assert ha["loss"] == hb["loss"] and ha["val_acc"] == hb["val_acc"]


def test_nan_loss_stops_with_message_and_keeps_last_good(tmp_path, monkeypatch):
    from numbaconv.models import DeepConvNet

    real_loss = DeepConvNet.loss
    calls = {"n": 0}

    def loss(self, X, y=None):
        out = real_loss(self, X, y)
        if y is not None:
            calls["n"] += 1
            if calls["n"] == 5:   # call 1 is the warm-up pass; 5 is the second step of epoch 2
                return float("nan"), out[1]
        return out

    monkeypatch.setattr(DeepConvNet, "loss", loss)
    out = tmp_path / "run"
    r = _train("--epochs", 3, "--out", out)
    assert r.exit_code == 1
    assert "loss became nan at iteration 4 (epoch 2)" in r.output
    assert "last good checkpoint is" in r.output and "end of epoch 1" in r.output
    with h5py.File(out / "last.h5") as f:
        assert json.loads(f["solver/settings"].asstr()[()])["iteration"] == 2
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 3


def test_time_budget(tmp_path):
    out = tmp_path / "run"
    r = _train("--time-budget", "0.5", "--out", out)
    assert r.exit_code == 0, r.output
    assert "time budget reached" in r.output
    history = json.loads((out / "history.json").read_text())
    # The rule (stop when the spent time plus the last step's would pass the budget) is
    # checked exactly with a fake clock in test_solver; a real clock only bounds it loosely:
    # the first step is always taken, and each one is timed.
    assert len(history["loss"]) >= 1 and history["time"][-1] > 0
    assert history["iteration"][-1] == len(history["loss"])


@pytest.mark.parametrize("args, message", [
    (["--out", "X"], "give --epochs N or --time-budget SECONDS"),
    (["--epochs", "1", "--filters", "4,a", "--out", "X"], "--filters must be a comma-separated list of integers"),
    (["--epochs", "1", "--pools", "0,7", "--out", "X"], "max_pools entries must be conv layer indices in [0, 3)"),
    (["--epochs", "1", "--model", "three-layer", "--pools", "0", "--out", "X"], "apply to --model deep only"),
    (["--epochs", "1", "--time-budget", "-1", "--out", "X"], "--time-budget must be a number of seconds > 0"),
    (["--epochs", "1", "--dataset", "nope.h5", "--out", "X"], "unknown dataset 'nope.h5'"),
    (["--epochs", "1", "--weight-scale", "big", "--out", "X"], "--weight-scale must be a number or 'kaiming'"),
    (["--epochs", "1", "--lr", "-1", "--out", "X"], "--lr must be a number > 0, got -1"),
    (["--epochs", "1", "--lr-decay", "1.5", "--out", "X"], "--lr-decay must be a number > 0 and <= 1, got 1.5"),
    (["--epochs", "1", "--batch-size", "0", "--out", "X"], "--batch-size must be a positive integer, got 0"),
    (["--epochs", "0", "--out", "X"], "--epochs must be a positive integer, got 0"),
    (["--epochs", "1", "--threads", "100000", "--out", "X"], "threads must be between 1 and"),
])
def test_train_bad_input(tmp_path, args, message):
    args = [str(tmp_path / a) if a == "X" else a for a in args]
    r = runner.invoke(app, ["train", "--dataset", "synthetic", "--num-train", "20", "--num-val", "10",
                            "--filters", "4,4,4", *args] if "--dataset" not in args else ["train", *args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()), r.output


def test_resume_bad_input(tmp_path):
    out = tmp_path / "run"
    assert _train("--epochs", 1, "--out", out).exit_code == 0
    r = runner.invoke(app, ["train", "--resume", str(out / "last.h5"), "--filters", "8", "--out", str(out)])
    assert r.exit_code == 2 and "--filters cannot be given with --resume" in " ".join(r.output.split())
    r = runner.invoke(app, ["train", "--resume", str(out / "best.h5"), "--out", str(out)])
    assert r.exit_code == 2 and "holds no training state" in " ".join(r.output.split())
    r = runner.invoke(app, ["train", "--resume", str(out / "nope.h5"), "--out", str(out)])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_evaluate_bad_input(tmp_path):
    r = runner.invoke(app, ["evaluate", str(tmp_path / "nope.h5")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "nope.h5"), "--split", "holdout"])
    assert r.exit_code == 2


def _write_h5(path, n_train, n_test, seed):
    from numbaconv.data.store import Split, write_h5

    rng = np.random.default_rng(seed)
    splits = {"train": Split(rng.integers(0, 256, (n_train, 3, 8, 8), dtype=np.uint8), rng.integers(0, 3, n_train))}
    if n_test:
        splits["test"] = Split(rng.integers(0, 256, (n_test, 3, 8, 8), dtype=np.uint8), rng.integers(0, 3, n_test))
    write_h5(path, splits, ["a", "b", "c"], {})


def test_file_dataset_and_evaluate_preprocesses_like_training(tmp_path):
    """Train on one HDF5 file, evaluate on another: its images must be centred with
    the training file's mean (recorded in the checkpoint), not their own."""
    from numbaconv.checkpoint import load_checkpoint
    from numbaconv.data.store import read_h5

    train_file, other = tmp_path / "train.h5", tmp_path / "other.h5"
    _write_h5(train_file, 30, 0, seed=0)
    _write_h5(other, 10, 12, seed=1)
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--dataset", str(train_file), "--filters", "3,3,3", "--num-val", "10",
                            "--batch-size", "10", "--epochs", "1", "--backend", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(out / "last.h5")])    # the training file has no test split
    assert r.exit_code == 2 and "has no test split" in " ".join(r.output.split())

    r = runner.invoke(app, ["evaluate", str(out / "last.h5"), "--dataset", str(other), "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    ck = load_checkpoint(out / "last.h5")
    images, labels = read_h5(other).splits["test"]
    X = (images / 255.0 - np.reshape(ck.data_info["mean"], (1, 3, 1, 1))).astype(np.float32)
    expected = float(np.mean(ck.model.predict(X) == labels))
    assert result["accuracy"] == pytest.approx(expected) and result["num_images"] == 12
    assert list(result["per_class"]) == ["a", "b", "c"]
