"""The report's experiments in tiny configurations on the synthetic set: each
command writes a readable PNG of the expected size and a JSON whose numbers
are the run's (checked against the histories it records and the run itself).
The runs go through the sweep engine: in this process (--workers 0) here, and
once on a two-worker local cluster, which must give the same JSON numbers."""
import json
import sys
from pathlib import Path

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
INLINE = ["--workers", "0", "--threads", "1"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 200)
    monkeypatch.setattr(c.err_console, "width", 200)


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
    # The same run done by hand gives the same numbers: the JSON is the run's. (A run's seed
    # seeds its weights and minibatches; the synthetic set is always the seed-0 one.)
    ds = load_dataset("synthetic", num_val=10, num_train=10)
    model = DeepConvNet(num_filters=[4, 4], max_pools=[0, 1], weight_scale=0.1, reg=1e-5, seed=2)
    s = Solver(model, {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val},
               update_rule="adam", optim_config={"learning_rate": 2e-3}, batch_size=5, num_epochs=3,
               num_train_samples=None, seed=2, verbose=False)
    s.train()
    np.testing.assert_allclose(saved["history"]["loss"], s.loss_history, rtol=1e-6)
    assert saved["history"]["train_acc"] == s.train_acc_history
    assert imread(saved["png"]).shape[:2] == (6 * DPI, 8 * DPI)
    assert (tmp_path / "overfit-runs" / "runs" / "overfit" / "last.h5").exists()   # the run's own folder


def test_overfit_cli(tmp_path):
    r = runner.invoke(app, ["experiment", "overfit", *TINY, "--out", str(tmp_path), "--num-train", "10",
                            "--epochs", "2", "--batch-size", "5", "--filters", "4", "--pools", "0"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "overfit.json").read_text())
    assert f"{saved['final_train_acc']:.3f}" in r.output
    assert imread(str(tmp_path / "overfit.png")).shape[:2] == (6 * DPI, 8 * DPI)


def test_init_cli(tmp_path):
    # A weight std of 1e8 overflows float32 in the first steps: a diverged run is a result here.
    r = runner.invoke(app, ["experiment", "init", *TINY, *INLINE, "--out", str(tmp_path), "--num-train", "20",
                            "--batch-size", "10", "--scales", "kaiming,1e-3,1e8", "--filters", "4,4,4",
                            "--pools", "1"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "init.json").read_text())
    assert list(saved["runs"]) == ["kaiming", "0.001", "1e+08"]
    assert saved["layers"] == 4 and saved["chance"] == 0.1
    for label, run in list(saved["runs"].items())[:2]:
        _check_history(run["history"], 1, 2)
        assert run["final_val_acc"] == run["history"]["val_acc"][-1] and run["diverged"] is None
        assert f"{run['final_train_acc']:.3f}" in r.output
    diverged = saved["runs"]["1e+08"]
    assert "training loss became" in diverged["diverged"] and diverged["history"]["loss"]
    assert diverged["history"] == json.loads((Path(diverged["run_dir"]) / "history.json").read_text())
    assert imread(str(tmp_path / "init.png")).shape[:2] == (5 * DPI, 10 * DPI)


BN_LR = ["--num-train", "20", "--epochs", "2", "--batch-size", "10", "--lrs", "1e-3,1e-2", "--filters", "4",
         "--pools", "0"]


def test_bn_lr_cli(tmp_path):
    r = runner.invoke(app, ["experiment", "bn-lr", *TINY, *INLINE, "--out", str(tmp_path), *BN_LR])
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
    engine = json.loads((tmp_path / "bn-lr-runs" / "results.json").read_text())
    assert [run["status"] for run in engine["runs"]] == ["done"] * 4


def _numbers(result: dict) -> dict:
    """An experiment's numbers, without what differs between two executions (times, folders)."""
    drop = ("seconds", "time", "run_dir", "wall_seconds", "workers", "json", "png")
    if isinstance(result, dict):
        return {k: _numbers(v) for k, v in result.items() if k not in drop}
    return result


def test_bn_lr_on_a_local_cluster_gives_the_same_json(tmp_path):
    # Two worker processes with one Numba thread each, against this process with one thread:
    # the same runs as data, so the same numbers (histories included) and the same figure.
    inline, cluster = tmp_path / "inline", tmp_path / "cluster"
    one_lr = [*BN_LR, "--lrs", "1e-2"]   # two runs: one per worker
    r = runner.invoke(app, ["experiment", "bn-lr", *TINY, *INLINE, "--out", str(inline), *one_lr])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["experiment", "bn-lr", *TINY, "--workers", "2", "--out", str(cluster), *one_lr])
    assert r.exit_code == 0, r.output
    a, b = (json.loads((d / "bn-lr.json").read_text()) for d in (inline, cluster))
    assert (a["workers"], b["workers"], b["threads"]) == (0, 2, 1)
    assert _numbers(a) == _numbers(b)
    assert "(2 workers)" in r.output


def test_out_must_be_a_folder(tmp_path):
    path = tmp_path / "taken"
    path.write_text("x")
    for name in ("overfit", "init", "bn-lr"):
        r = runner.invoke(app, ["experiment", name, *TINY, "--out", str(path)])
        assert r.exit_code == 2 and "is not a folder" in r.output and len(r.output.strip().splitlines()) == 1
    assert path.read_text() == "x"


def test_bad_sizes_are_clear_errors(tmp_path):
    r = runner.invoke(app, ["experiment", "init", *TINY, *INLINE, "--out", str(tmp_path), "--num-train", "20",
                            "--filters", "4,x"])
    assert r.exit_code == 2 and "--filters" in r.output
    r = runner.invoke(app, ["experiment", "overfit", "--dataset", "synthetic", "--num-val", "10", "--out",
                            str(tmp_path), "--filters", "4", "--pools", "3"])
    assert r.exit_code == 2 and "max_pools" in r.output


def test_without_dask_the_runs_go_in_this_process(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)   # `import distributed` now fails
    r = runner.invoke(app, ["experiment", "bn-lr", *TINY, "--out", str(tmp_path), *BN_LR, "--lrs", "1e-3"])
    assert r.exit_code == 0, r.output
    assert 'Dask is not installed' in r.output and 'pip install -e ".[sweep]"' in r.output
    assert json.loads((tmp_path / "bn-lr.json").read_text())["workers"] == 0
    r = runner.invoke(app, ["experiment", "bn-lr", *TINY, "--out", str(tmp_path), "--workers", "2"])
    assert r.exit_code == 2 and 'pip install -e ".[sweep]"' in r.output


def test_workers_and_scheduler_together_are_refused(tmp_path):
    for name in ("init", "bn-lr"):
        r = runner.invoke(app, ["experiment", name, *TINY, "--out", str(tmp_path), "--workers", "1",
                                "--scheduler", "tcp://127.0.0.1:1"])
        assert r.exit_code == 2 and "not both" in r.output
