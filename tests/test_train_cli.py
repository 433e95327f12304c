"""`numbaconv train` and `numbaconv evaluate`, driven in-process."""
import json
from pathlib import Path

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
    monkeypatch.setattr(c.err_console, "width", 2000)   # an error is one line, however long its paths


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


# ---------------------------------------------------------------- reliability (issue #16)
def _one_line_error(r, code, alone=True):
    """The command failed with ``code`` and said so in one `error:` line, no traceback: the
    only output (``alone``: it failed before training), or the last line after the progress."""
    assert r.exit_code == code, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum("error:" in line for line in lines) == 1, r.output
    assert len(lines) == 1 or not alone, r.output
    assert "Traceback" not in r.output
    return lines[-1]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_run_folder_is_never_silently_replaced(tmp_path):
    out = tmp_path / "run"
    assert _train("--epochs", 1, "--out", out).exit_code == 0
    before = _snapshot(out)
    line = _one_line_error(_train("--epochs", 1, "--seed", 4, "--out", out), 2)
    assert f"{out} already holds a run" in line and f"--resume {out / 'last.h5'}" in line and "--force" in line
    assert _snapshot(out) == before

    r = _train("--epochs", 2, "--out", out, "--force")   # replaces it: a 2-epoch run now
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["run"]["epochs"] == 2
    assert json.loads((out / "history.json").read_text())["epoch"] == [1.0, 2.0]


def test_a_run_folder_is_locked_while_training(tmp_path):
    import os

    from numbaconv.files import exclusive_lock

    out = tmp_path / "run"
    out.mkdir()
    with exclusive_lock(out):   # as if another `numbaconv train` were writing it
        line = _one_line_error(_train("--epochs", 1, "--out", out), 1)
    assert f"in use by process {os.getpid()}" in line
    assert list(out.iterdir()) == []


def test_sizes_beyond_the_data_are_refused_before_loading(tmp_path):
    out = tmp_path / "run"
    line = _one_line_error(_train("--epochs", 1, "--batch-size", 100000, "--out", out), 2)
    assert "--batch-size 100000 is more than the 40 training images" in line
    r = runner.invoke(app, ["train", "--dataset", "synthetic", "--num-train", "1000000000", "--epochs", "1",
                            "--out", str(out)])
    assert "1000000000" in _one_line_error(r, 2)
    assert not out.exists()


def test_cuda_without_a_gpu_fails_before_any_file(tmp_path, monkeypatch):
    import numbaconv.cuda as nc

    out = tmp_path / "run"
    assert _train("--epochs", 1, "--out", out).exit_code == 0
    before = _snapshot(out)
    monkeypatch.setattr(nc, "SIMULATOR", False)          # a machine without a GPU (tests otherwise use the simulator)
    monkeypatch.setattr(nc, "is_available", lambda: False)
    fresh = tmp_path / "fresh"
    line = _one_line_error(_train("--epochs", 1, "--out", fresh, "--backend", "cuda"), 2)
    assert "cuda" in line and "GPU" in line
    assert not fresh.exists()
    line = _one_line_error(runner.invoke(app, ["train", "--resume", str(out / "last.h5"), "--epochs", "2",
                                               "--out", str(out), "--backend", "cuda"]), 2)
    assert "GPU" in line and _snapshot(out) == before


def test_out_under_a_file_or_unwritable(tmp_path, monkeypatch):
    import os

    (tmp_path / "notes.txt").write_text("x")
    line = _one_line_error(_train("--epochs", 1, "--out", tmp_path / "notes.txt" / "run"), 2)
    assert "which is a file" in line
    line = _one_line_error(_train("--epochs", 1, "--out", tmp_path / "notes.txt"), 2)
    assert "is a file" in line

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:   # root writes anywhere: stand in for a read-only folder
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
    try:
        line = _one_line_error(_train("--epochs", 1, "--out", ro / "run"), 2)
    finally:
        ro.chmod(0o755)
    assert "no write permission" in line and not (ro / "run").exists()


def test_full_disk_while_training_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import numbaconv.checkpoint as ckpt

    real = ckpt._put_json
    calls = {"n": 0}

    def put_json(group, name, obj):   # inside the writer, while the temporary file is open
        if name == "model_config":
            calls["n"] += 1
            if calls["n"] == 3:   # epoch 1 wrote last.h5 and best.h5; the disk fills at epoch 2's last.h5
                raise OSError(errno.ENOSPC, "No space left on device")
        real(group, name, obj)

    monkeypatch.setattr(ckpt, "_put_json", put_json)
    out = tmp_path / "run"
    line = _one_line_error(_train("--epochs", 3, "--out", out), 1, alone=False)
    assert "no space left on device" in line and f"{out / 'last.h5'} from iteration 2 is kept" in line
    assert f"--resume {out / 'last.h5'}" in line
    assert sorted(p.name for p in out.iterdir()) == ["best.h5", "config.json", "history.json", "last.h5"]
    from numbaconv.checkpoint import load_checkpoint
    assert load_checkpoint(out / "last.h5").solver_state["settings"]["iteration"] == 2


def test_resume_refuses_changed_data_and_cleans_stale_temporaries(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "data.h5"
    _write_h5(data, 30, 0, seed=0)
    out = tmp_path / "run"
    args = ["--filters", "3,3,3", "--num-val", "10", "--batch-size", "10", "--backend", "cpu"]
    r = runner.invoke(app, ["train", "--dataset", str(data), *args, "--epochs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output

    # a writer killed mid-write (kill -9) leaves its temporary: the next use of the folder removes it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".last.h5.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    r = runner.invoke(app, ["train", "--resume", str(out / "last.h5"), "--epochs", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert not stale.exists()

    before = _snapshot(out)
    from numbaconv.data.store import Split, write_h5
    rng = np.random.default_rng(1)   # the file now holds 16x16 images
    write_h5(data, {"train": Split(rng.integers(0, 256, (30, 3, 16, 16), dtype=np.uint8), rng.integers(0, 3, 30))},
             ["a", "b", "c"], {})
    line = _one_line_error(runner.invoke(app, ["train", "--resume", str(out / "last.h5"), "--epochs", "3",
                                               "--out", str(out)]), 2)
    assert "cannot resume from" in line and "images (3, 8, 8)" in line and "now has images (3, 16, 16)" in line
    assert _snapshot(out) == before


def test_header_is_readable_and_the_live_display_fits_80_columns(tmp_path):
    import io
    from types import SimpleNamespace

    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

    from numbaconv.solver import History
    from numbaconv_cli.commands.train import BAR_WIDTH, _progress_text

    r = _train("--epochs", 1, "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    header = " ".join(r.output.split())
    assert "training deep net (filters 4,4,4, pools 0,1,2, float32) with adam, lr 0.001, batch 20" in header
    assert "{" not in r.output.split("run ")[0]   # no raw JSON

    # the widest numbers a run shows: 5-digit images/s, 3-digit epochs, hours left
    record = History(loss=[12.3456], epoch=[99.5], iteration=[99500], time=[3000.0], lr=[0.1], train_acc=[0.834],
                     val_acc=[0.812])
    solver = SimpleNamespace(iteration=99999, train_time=1000.0, batch_size=128, num_epochs=100,
                             iterations_per_epoch=1000, num_iterations=100000, record=record)
    text = _progress_text(solver, None, (0, 0.0))
    assert "last check @ epoch 99.50: val acc 0.812, train acc 0.834" in text and "12,800 img/s" in text
    console = Console(width=80, file=io.StringIO(), record=True, force_terminal=False)
    progress = Progress(SpinnerColumn(), BarColumn(bar_width=BAR_WIDTH), TextColumn("{task.fields[stats]}"),
                        console=console)
    progress.add_task("train", total=100000, completed=99999, stats=text)
    console.print(progress.make_tasks_table(progress.tasks))
    lines = console.export_text().splitlines()
    assert len(lines) == 2 and max(len(line) for line in lines) <= 80, lines
    assert "@ epoch" not in _progress_text(SimpleNamespace(**{**vars(solver), "record": History(loss=[2.0])}),
                                           60.0, (0, 0.0))
