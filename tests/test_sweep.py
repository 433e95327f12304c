"""`numbaconv sweep` and numbaconv.sweep: specs, run folders, results.json, and the Dask engine
with its faults (a failing run, a killed worker, Ctrl-C and --resume, a real scheduler and worker
started as separate processes). Runs are tiny (20 synthetic images, one epoch of two steps)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from numbaconv.sweep import SweepRun, expand, load_spec, parse_spec, read_results, run_name, run_sweep
from numbaconv_cli.main import app

runner = CliRunner()
TINY = """
[base]
dataset = "synthetic"
pools = [0, 1]
num-train = 20
num-val = 10
batch-size = 10
epochs = 1
"""


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 200)
    monkeypatch.setattr(c.err_console, "width", 200)


def _spec(tmp_path, grid: str, filters: str = "filters = [4, 4]\n") -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(TINY + filters + "[grid]\n" + grid)
    return path


def _results(out) -> dict:
    return {r["name"]: r for r in read_results(out)["runs"]}


# --------------------------------------------------------------- specs (no engine)
def test_expand_makes_one_run_per_combination_in_its_own_folder(tmp_path):
    spec = load_spec(_spec(tmp_path, 'lr = [1e-3, 1e-2]\nfilters = [[4], [4, 8]]\nbatchnorm = [true]\n', ""))
    runs = expand(spec, tmp_path / "out")
    assert [r.name for r in runs] == ["lr=0.001_filters=4_batchnorm=true", "lr=0.001_filters=4-8_batchnorm=true",
                                      "lr=0.01_filters=4_batchnorm=true", "lr=0.01_filters=4-8_batchnorm=true"]
    assert len({r.spec["out"] for r in runs}) == 4
    for r in runs:
        assert Path(r.spec["out"]) == tmp_path / "out" / "runs" / r.name
        assert r.spec["lr"] == r.params["lr"] and r.spec["filters"] == r.params["filters"]
        assert r.spec["pools"] == [0, 1] and r.spec["num_train"] == 20 and r.spec["batchnorm"] is True


def test_run_names_are_sanitised_and_unique(tmp_path):
    assert run_name({}) == "run"
    assert run_name({"dataset": "../a b/c.h5"}) == "dataset=..-a-b-c.h5"
    long = run_name({"filters": list(range(100))})
    assert len(long) < 110 and "~" in long
    spec = parse_spec({"base": {"epochs": 1}, "grid": {"dataset": ["a/b.h5", "a_b.h5", "a b.h5"]}})
    names = [r.name for r in expand(spec, tmp_path)]
    assert names == ["dataset=a-b.h5", "dataset=a_b.h5", "dataset=a-b.h5~2"]


@pytest.mark.parametrize("text, named", [
    ("[base]\nepochs = 1\n[grid]\nlrr = [1e-3]\n", "'lrr'"),
    ("[base]\nepochs = 1\n[grid]\nlr = [1e-3, 'fast']\n", "lr"),
    ("[base]\nepochs = 1\n[grid]\nlr = 1e-3\n", "[grid] lr"),
    ("[base]\nepochs = 1\n[grid]\nlr = []\n", "[grid] lr"),
    ("[base]\nepochs = 1\n[grid]\nseed = [1, 1]\n", "[grid] seed"),
    ("[base]\nepochs = 1\nlr = 1e-3\n[grid]\nlr = [1e-3]\n", "lr is in both"),
    ("[base]\nepochs = 1\nout = 'x'\n", "[base] out"),
    ("[base]\nepochs = 1\n[grids]\nlr = [1]\n", "'grids'"),
    ("[base]\nbatch-size = 0\nepochs = 1\n", "batch-size"),
    ("[base]\nlr = 1e-3\n", "epochs"),
    ("[base\nlr = 1\n", "not valid TOML"),
])
def test_bad_spec_is_exit_2_naming_the_key(tmp_path, text, named):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        expand(load_spec(path), tmp_path / "out")
    assert named in str(e.value) and str(path) in str(e.value)
    r = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert r.exit_code == 2 and named in r.output
    assert not (tmp_path / "out").exists()   # nothing ran, nothing written


def test_without_dask_sweep_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)   # `import distributed` now fails
    r = runner.invoke(app, ["sweep", str(_spec(tmp_path, "seed = [0]\n")), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert 'pip install -e ".[sweep]"' in r.output and len(r.output.strip().splitlines()) == 1


# ---------------------------------------------------------------------- engine
def test_kernels_are_warmed_in_the_driver_once_per_kind_of_run(tmp_path, monkeypatch):
    # Workers only read the Numba cache: the driver trains a one-step copy of one run per kind
    # (what selects kernels), not per learning rate or seed.
    import numbaconv.run
    from numbaconv.sweep import _warm_kernels

    warmed = []

    class Plan:
        def __init__(self, spec):
            warmed.append(spec)
            self.solver = self

        def train(self):
            pass

    monkeypatch.setattr(numbaconv.run, "make_plan", Plan)
    spec = load_spec(_spec(tmp_path, "lr = [1e-3, 1e-2]\nseed = [0, 1]\nbatchnorm = [false, true]\n"))
    _warm_kernels([r.spec for r in expand(spec, tmp_path)])
    assert sorted(w.batchnorm for w in warmed) == [False, True]
    assert all(w.epochs == 1 and w.num_train == w.batch_size and w.threads is None for w in warmed)


def test_four_runs_on_two_workers_one_failing(tmp_path):
    # A one-layer net has no layer 1 to pool after: that run fails in its worker, the others finish.
    spec = _spec(tmp_path, "filters = [[4, 4], [8, 4], [4, 8], [4]]\n", "")
    out = tmp_path / "sweep"
    r = runner.invoke(app, ["sweep", str(spec), "--out", str(out), "--workers", "2"])
    assert r.exit_code == 1, r.output
    res = _results(out)
    assert [v["status"] for v in res.values()] == ["done", "done", "done", "failed"]
    bad = res["filters=4"]
    assert "max_pools" in bad["error"] and bad["val_acc"] is None and bad["params"] == {"filters": [4]}
    for name, rec in res.items():
        if rec["status"] == "done":
            run_dir = Path(rec["run_dir"])
            assert run_dir == out / "runs" / name
            history = json.loads((run_dir / "history.json").read_text())
            assert rec["val_acc"] == max(history["val_acc"]) and rec["iterations"] == 2
            assert {"best.h5", "last.h5", "config.json"} <= {p.name for p in run_dir.iterdir()}
            assert f"{rec['val_acc']:.3f}" in r.output
    assert "max_pools" in r.output and (out / "summary.png").stat().st_size > 0
    assert read_results(out)["counts"] == {"total": 4, "done": 3, "failed": 1, "pending": 0}


def kill_worker_on_first_try(spec):
    """A run's execute for the killed-worker test: the run named *kill-once* kills its worker
    process on its first try (a marker file remembers the try), *kill-always* on every try, each
    once its first epoch's files are written (so a retry finds them in its folder)."""
    from numbaconv.run import execute

    marker = Path(spec.out + ".tried")
    kill = "kill-always" in spec.out or ("kill-once" in spec.out and not marker.exists())
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()

    def on_progress(event):
        if event.kind == "epoch" and kill:
            os.kill(os.getpid(), signal.SIGKILL)

    return execute(spec, on_progress=on_progress)


def test_a_killed_worker_run_is_retried_once_then_failed(tmp_path):
    spec = load_spec(_spec(tmp_path, "seed = [0]\n"))
    [base] = expand(spec, tmp_path)
    runs = [SweepRun(name, {}, dict(base.spec, out=str(tmp_path / "runs" / name)))
            for name in ("plain", "kill-once", "kill-always")]
    records = run_sweep(runs, tmp_path, workers=2, execute=kill_worker_on_first_try)
    status = {r["name"]: r for r in records}
    assert status["plain"]["status"] == "done" and status["kill-once"]["status"] == "done"
    assert (tmp_path / "runs" / "kill-once" / "best.h5").exists()
    assert status["kill-always"]["status"] == "failed" and "KilledWorker" in status["kill-always"]["error"]
    assert _results(tmp_path)["kill-once"]["status"] == "done"


def test_resume_after_an_interrupted_sweep_runs_only_what_is_not_done(tmp_path):
    spec = _spec(tmp_path, "seed = [0, 1, 2]\n")
    out = tmp_path / "sweep"

    def interrupt_after_first(counts, record):
        if counts["done"] == 1:
            raise KeyboardInterrupt   # as Ctrl-C would, in the driver

    with pytest.raises(KeyboardInterrupt):
        run_sweep(expand(load_spec(spec), out), out, workers=1, on_update=interrupt_after_first)
    before = _results(out)
    assert sorted(r["status"] for r in before.values()) == ["done", "pending", "pending"]
    [first] = [name for name, r in before.items() if r["status"] == "done"]
    stamp = (out / "runs" / first / "last.h5").stat().st_mtime_ns
    r = runner.invoke(app, ["sweep", str(spec), "--out", str(out), "--workers", "1"])
    assert r.exit_code == 2 and "--resume" in r.output      # a second start does not overwrite it
    # Resumed in this process (the engine's choice of what to run does not depend on where).
    r = runner.invoke(app, ["sweep", str(spec), "--out", str(out), "--workers", "0", "--resume"])
    assert r.exit_code == 0, r.output
    after = _results(out)
    assert all(v["status"] == "done" for v in after.values())
    assert after[first] == before[first]                     # not run again
    assert (out / "runs" / first / "last.h5").stat().st_mtime_ns == stamp
    # Resuming with a spec that makes other runs, or the same runs with other options, is refused.
    for grid, base, says in (("seed = [0, 1]\n", "filters = [4, 4]\n", "other runs"),
                             ("seed = [0, 1, 2]\n", "filters = [4, 8]\n", "other options")):
        r = runner.invoke(app, ["sweep", str(_spec(tmp_path, grid, base)), "--out", str(out), "--workers", "0",
                                "--resume"])
        assert r.exit_code == 2 and says in r.output
    assert _results(out) == after


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_sweep_on_a_dask_scheduler_and_worker_started_separately(tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    dask = [sys.executable, "-m", "dask"]
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    logs = [open(tmp_path / name, "w") for name in ("scheduler.log", "worker.log")]
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                               "--no-dashboard"], stdout=logs[0], stderr=subprocess.STDOUT, env=env)]
    try:
        procs.append(subprocess.Popen([*dask, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                       "--host", "127.0.0.1", "--no-dashboard"],
                                      stdout=logs[1], stderr=subprocess.STDOUT, env=env))
        spec, out = _spec(tmp_path, "seed = [0, 1]\n"), tmp_path / "sweep"
        t0 = time.time()
        r = subprocess.run([sys.executable, "-m", "numbaconv_cli.main", "sweep", str(spec), "--out", str(out),
                            "--scheduler", address], capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, r.stdout + r.stderr + (tmp_path / "worker.log").read_text()
        assert "(1 worker)" in r.stdout
        res = _results(out)
        assert [v["status"] for v in res.values()] == ["done", "done"]
        for rec in res.values():   # written by the separate worker process, after the CLI started
            assert (Path(rec["run_dir"]) / "best.h5").stat().st_mtime > t0
    finally:
        for p in reversed(procs):
            _stop(p)
        for f in logs:
            f.close()
