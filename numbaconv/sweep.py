"""Sweeps: many training runs, each one a ``numbaconv.run.RunSpec``, run on Dask distributed.

A sweep spec is TOML::

    [base]            # any `numbaconv train` option, by its long name (common to every run)
    dataset = "synthetic"
    batchnorm = true
    time-budget = 20
    [grid]            # option -> list of values; every combination is one run
    lr = [1e-4, 1e-3, 1e-2]
    seed = [0, 1]

>>> # runs = expand(load_spec("spec.toml"), "sweeps/a")      # ValueError names a bad key
>>> # records = run_sweep(runs, "sweeps/a", workers=2)        # or scheduler="tcp://host:8786"

The sweep folder DIR holds ``results.json`` (every run: name, params, status, val_acc, run_dir,
error, the run's spec, ...; rewritten atomically whenever a run finishes), ``runs/<name>/``
(each run's folder: best.h5, last.h5, history.json, config.json, curves.png; the names come from
the grid values, sanitised and unique, so two runs never share a folder) and ``summary.png``
(accuracy by parameter, written by the CLI).

Engine: with no scheduler address, a ``LocalCluster`` of worker processes (one per core by
default), each running one run at a time with ``threads`` Numba threads (set with
``numba.set_num_threads`` in the worker, by ``numbaconv.run.execute``); with an address, the same
code on a user's cluster (start its workers with ``--nthreads 1``; DIR must be reachable by them at
the same path). ``workers=0`` runs the runs one after another in this process, without Dask. The
driver hands out at most one run per worker thread at a time, so a run that waits is never
assigned to a worker (a worker's death then touches only what it was running), and the driver
compiles or loads the Numba kernels the runs need before any worker starts: concurrent writes to
one Numba cache are known to crash (numba issue 4807), while concurrent reads are safe.

Faults: a run that raises (a non-finite loss, a bad config) is recorded as failed with its error
and the others go on. A worker process that dies mid-run gets its run retried once, on whichever
worker is free, then recorded as failed (Dask's ``allowed-failures``, set to 1 for the local
cluster; a user's scheduler applies its own setting). Ctrl-C stops dispatching, cancels the runs
in flight, writes results.json (unfinished runs "pending") and raises KeyboardInterrupt; every
file is written whole (temporary name + rename). ``resume=True`` runs only what is not done.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

RESULTS = "results.json"
SUMMARY_PNG = "summary.png"
RESULTS_VERSION = 1
INSTALL_HINT = 'pip install -e ".[sweep]"'
# Options a sweep decides itself: each run's folder, and where a run starts from.
NOT_IN_SPEC = ("out", "resume", "force")
# RunSpec fields that do not change which Numba kernels a run compiles (see _warm_kernels).
_NOT_KERNEL_KEYS = ("out", "lr", "lr_decay", "seed", "epochs", "time_budget", "num_train", "num_val", "reg",
                    "weight_scale", "threads", "resume", "force")


# ------------------------------------------------------------------- specs
@dataclass
class SweepSpec:
    """[base] options common to every run and [grid] option -> values (file order kept)."""
    base: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    source: str = "spec"

    def to_dict(self) -> dict:
        return {"base": self.base, "grid": self.grid}


@dataclass
class SweepRun:
    """One run of a sweep: its folder name, the grid values that make it, its RunSpec as a dict."""
    name: str
    params: dict
    spec: dict


def load_spec(path) -> SweepSpec:
    """Read and check a TOML sweep spec; a ValueError names the file and the bad key."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("reading a TOML spec on Python 3.10 needs tomli: pip install tomli") from None
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read sweep spec {path}: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    return parse_spec(doc, source=str(path))


def parse_spec(doc: dict, source: str = "spec") -> SweepSpec:
    """Check the shape of a spec (tables [base] and [grid] only; grid values non-empty lists of
    distinct values; no option in both; no option the sweep decides) and return it. The option
    names and values themselves are checked by ``expand``, which builds every run."""
    if not isinstance(doc, dict):
        raise ValueError(f"{source}: a sweep spec is a table with [base] and [grid], got {type(doc).__name__}")
    unknown = [k for k in doc if k not in ("base", "grid")]
    if unknown:
        raise ValueError(f"{source}: unknown key {unknown[0]!r}; a sweep spec has tables [base] and [grid] only")
    base, grid = doc.get("base", {}), doc.get("grid", {})
    for name, table in (("base", base), ("grid", grid)):
        if not isinstance(table, dict):
            raise ValueError(f"{source}: {name} must be a table ([{name}]), got {type(table).__name__}")
        for key in table:
            if str(key).replace("_", "-") in NOT_IN_SPEC:
                raise ValueError(f"{source}: [{name}] {key}: the sweep sets it itself (each run's folder is "
                                 f"DIR/runs/<name>; --resume continues a sweep); remove it")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{source}: [grid] {key} must be a non-empty list of values, got {values!r}")
        seen = []
        for v in values:
            if v in seen:
                raise ValueError(f"{source}: [grid] {key} lists {v!r} twice")
            seen.append(v)
        if key in base:
            raise ValueError(f"{source}: {key} is in both [base] and [grid]; keep it in one")
    return SweepSpec(dict(base), dict(grid), source)


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(_fmt(x) for x in v)
    return str(v)


def run_name(params: dict) -> str:
    """A folder name from a run's grid values: ``lr=0.001_seed=1``; characters other than
    letters, digits and ``.=+-`` become ``-``; long names are cut and get a hash of the params."""
    if not params:
        return "run"
    name = "_".join(f"{k}={_fmt(v)}" for k, v in params.items())
    name = re.sub(r"[^A-Za-z0-9.=+\-_]", "-", name).lstrip(".") or "run"
    if len(name) > 100:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
        name = f"{name[:90]}~{digest}"
    return name


def _unique(names: list[str]) -> list[str]:
    """Names made distinct (two sanitised names can coincide): later ones get ``~2``, ``~3``..."""
    seen, out = set(), []
    for n in names:
        cand, i = n, 1
        while cand in seen:
            i += 1
            cand = f"{n}~{i}"
        seen.add(cand)
        out.append(cand)
    return out


def expand(sweep: SweepSpec, out) -> list[SweepRun]:
    """Every combination of the grid as a run in ``out/runs/<name>``; each is checked as a
    RunSpec here, so a bad option fails before anything runs (ValueError naming the key)."""
    from .run import spec_from_options

    keys = list(sweep.grid)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(sweep.grid[k] for k in keys))]
    names = _unique([run_name(c) for c in combos])
    runs = []
    for name, params in zip(names, combos):
        folder = Path(out) / "runs" / name
        try:
            spec = spec_from_options({**sweep.base, **params, "out": str(folder)})
        except ValueError as e:
            where = ", ".join(f"{k} = {_fmt(v)}" for k, v in params.items())
            raise ValueError(f"{sweep.source}: {e}" + (f" (in the run with {where})" if where else "")) from None
        runs.append(SweepRun(name, params, spec.to_dict()))
    return runs


# ----------------------------------------------------------------- results
def _record(run: SweepRun, **fields_) -> dict:
    rec = {"name": run.name, "params": run.params, "status": "pending", "val_acc": None,
           "final_train_acc": None, "stopped": None, "iterations": None, "train_time": None, "seconds": None,
           "run_dir": run.spec["out"], "error": None, "error_type": None, "spec": run.spec}
    rec.update(fields_)
    return rec


def counts(records: list[dict]) -> dict:
    """How many runs are done, failed and pending (not finished)."""
    c = {"total": len(records), "done": 0, "failed": 0, "pending": 0}
    for r in records:
        c[r["status"] if r["status"] in ("done", "failed") else "pending"] += 1
    return c


def write_results(out, records: list[dict], meta: dict | None = None) -> Path:
    """DIR/results.json, atomically (histories stay in the run folders)."""
    from .checkpoint import save_json

    path = Path(out) / RESULTS
    runs = [{k: v for k, v in r.items() if k != "history"} for r in records]
    save_json(path, {"version": RESULTS_VERSION, "sweep": meta or {}, "counts": counts(records), "runs": runs})
    return path


def read_results(out) -> dict:
    """DIR/results.json as written by ``write_results``; ValueError if missing or unreadable."""
    path = Path(out) / RESULTS
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: there is no sweep to resume in {out}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        raise ValueError(f"{path} is not a numbaconv sweep's results file")
    return doc


def _same_run(old: dict, new: dict) -> bool:
    """Whether a run recorded in results.json is the run the spec now makes; fields a newer
    RunSpec added count at their defaults, where it runs and on how many threads do not count."""
    from dataclasses import fields

    from .run import RunSpec

    known = {f.name for f in fields(RunSpec)}
    try:
        old = RunSpec(**{k: v for k, v in old.items() if k in known}).to_dict()
    except (TypeError, ValueError):
        return False
    skip = ("out", "threads", "force")
    return ({k: v for k, v in old.items() if k not in skip} == {k: v for k, v in new.items() if k not in skip})


def _starting_records(runs: list[SweepRun], out: Path, resume: bool, replace: bool = False) -> list[dict]:
    if not resume:
        if (out / RESULTS).exists() and not replace:
            raise ValueError(f"{out} already holds a sweep ({out / RESULTS}); pass --resume to finish it, "
                             f"or choose another --out")
        if not (out / RESULTS).exists() and any(run_folders := list((out / "runs").glob("*"))):
            raise ValueError(f"{out / 'runs'} already holds {run_folders[0].name} but {out} has no {RESULTS}: "
                             f"it is not a sweep's; choose another --out")
        return [_record(r) for r in runs]
    old = {r.get("name"): r for r in read_results(out)["runs"]}
    if set(old) != {r.name for r in runs}:
        raise ValueError(f"{out / RESULTS} lists other runs than this spec makes; resume with the spec the sweep "
                         f"was started with, or choose another --out")
    records = []
    for run in runs:
        prev = old[run.name]
        if not _same_run(prev.get("spec") or {}, run.spec):
            raise ValueError(f"run {run.name} in {out / RESULTS} was made with other options than this spec "
                             f"gives it; resume with the spec the sweep was started with, or choose another --out")
        records.append(prev if prev.get("status") == "done" else _record(run))
    return records


# ------------------------------------------------------------------ a run
def run_one(spec: dict, threads: int | None = None, execute: Callable | None = None) -> dict:
    """Execute one run (in a Dask worker, or in this process) and describe how it ended; an
    Exception becomes a "failed" outcome with its error (a diverged run keeps its history).
    ``threads``: Numba threads for a spec that does not set them. ``execute`` defaults to
    ``numbaconv.run.execute`` (tests pass their own, e.g. to kill the worker)."""
    from .run import RunSpec
    from .run import execute as execute_run

    spec = dict(spec)
    if spec.get("threads") is None and threads is not None:
        spec["threads"] = threads
    t0 = time.perf_counter()
    try:
        result = (execute or execute_run)(RunSpec.from_dict(spec))
    except Exception as e:  # noqa: BLE001: any error of a run is its result; the sweep goes on
        history = None
        with contextlib.suppress(OSError, ValueError):  # diverged runs write history.json before raising
            if type(e).__name__ == "NonFiniteLossError":
                history = json.loads((Path(spec["out"]) / "history.json").read_text())
        return {"status": "failed", "error": f"{type(e).__name__}: {e}", "error_type": type(e).__name__,
                "seconds": time.perf_counter() - t0, "history": history}
    return {"status": "done", "val_acc": result.best_val_acc, "final_train_acc": result.final_train_acc,
            "stopped": result.stopped, "iterations": result.iterations, "train_time": result.train_time,
            "seconds": time.perf_counter() - t0, "error": None, "error_type": None, "history": result.history}


def _warm_kernels(specs: list[dict]) -> None:
    """Compile (or load from the cache) the Numba kernels of every kind of run here, once, by
    training a one-step copy of one run per kind (in memory: no files), so that the workers
    only read the cache. Kinds differ in what selects kernels (model, batch norm, pools, dtype,
    backend, recipe, dataset, batch size); learning rates, seeds and lengths do not."""
    from .run import RunSpec, make_plan

    kinds = {}
    for s in specs:
        key = json.dumps({k: v for k, v in s.items() if k not in _NOT_KERNEL_KEYS}, sort_keys=True)
        kinds.setdefault(key, s)
    for s in kinds.values():
        tiny = dict(s, epochs=1, time_budget=None, num_train=s["batch_size"], num_val=min(s["num_val"], 100),
                    threads=None, resume=None)
        with contextlib.suppress(Exception):   # a run that cannot start fails in its worker, with its error
            make_plan(RunSpec.from_dict(tiny)).solver.train()


# ------------------------------------------------------------------ engine
def require_dask():
    """``distributed``, or ImportError with the one line saying what to install."""
    try:
        import distributed
    except ImportError:
        raise ImportError(f"sweeps run on Dask distributed, which is not installed: {INSTALL_HINT}") from None
    return distributed


class _Progress:
    def __init__(self, records, on_update, workers=None):
        self.records, self.on_update, self.running, self.workers = records, on_update, 0, workers

    def __call__(self, record=None):
        if self.on_update is not None:
            c = counts(self.records)
            c["running"] = self.running
            c["pending"] -= self.running
            c["workers"] = self.workers
            self.on_update(c, record)


def run_sweep(runs: list[SweepRun], out, *, workers: int | None = None, threads: int | None = 1,
              scheduler: str | None = None, resume: bool = False, replace: bool = False, meta: dict | None = None,
              on_update: Callable[[dict, dict | None], None] | None = None,
              execute: Callable | None = None) -> list[dict]:
    """Run ``runs`` into ``out`` and return one record per run (as in results.json, plus each
    finished run's ``history``). ``workers``: local worker processes (default: one per core;
    0: in this process, no Dask); ``scheduler``: a Dask scheduler address instead; ``threads``:
    Numba threads per run unless its spec sets them (None: leave as set). ``on_update(counts,
    record)`` is called when a run starts or ends (counts: total, done, failed, running,
    pending, workers: 0 in this process, None until a cluster is up). ``resume``: keep the done
    runs of the sweep already in ``out`` and run the rest; ``replace``: start over in ``out`` even
    if it holds a sweep (the experiments rerun this way); otherwise ``out`` holding a sweep is an
    error. Raises ValueError for a bad folder or
    resume, ImportError without Dask, KeyboardInterrupt after Ctrl-C (results.json written first)."""
    from .files import check_writable_folder, exclusive_lock

    out = Path(out)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    if scheduler is not None and workers is not None:
        raise ValueError("give workers (a local cluster) or a scheduler address, not both")
    if resume and replace:
        raise ValueError("resume keeps a sweep's done runs, replace starts over: give one")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError("two runs of a sweep share a name (and so a folder); names must be unique")
    inline = scheduler is None and workers == 0
    if not inline:
        require_dask()
    check_writable_folder(out, "sweep folder")
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out, f"sweep folder {out}"):
        records = _starting_records(runs, out, resume, replace)
        write_results(out, records, meta)
        # force: a run (re)starts afresh in its folder, which a killed or interrupted try may have
        # written; the folders under DIR/runs are the sweep's own (_starting_records checks).
        todo = [(i, SweepRun(run.name, run.params, dict(run.spec, force=True)))
                for i, (run, rec) in enumerate(zip(runs, records)) if rec["status"] != "done"]
        progress = _Progress(records, on_update, 0 if inline else None)
        progress()
        if todo:
            go = _run_inline if inline else _run_dask
            go(todo, records, out, meta, progress, threads=threads, workers=workers, scheduler=scheduler,
               execute=execute)
        return records


def _finish(records, i, run, outcome, out, meta, progress):
    records[i] = _record(run, **outcome)
    write_results(out, records, meta)
    progress(records[i])


def _run_inline(todo, records, out, meta, progress, *, threads, execute, **_):
    try:
        for i, run in todo:
            progress.running = 1
            progress()
            outcome = run_one(run.spec, threads, execute)
            progress.running = 0
            _finish(records, i, run, outcome, out, meta, progress)
    finally:
        progress.running = 0
        write_results(out, records, meta)


def _outcome_of(future) -> dict:
    """The record fields of a finished Dask future (its worker died, or the run returned)."""
    if future.status == "finished":
        return future.result()
    if future.status == "error":
        e = future.exception()
        if type(e).__name__ == "KilledWorker":
            msg = f"KilledWorker: the worker process running it died on every try ({e})"
        else:
            msg = f"{type(e).__name__}: {e}"
        return {"status": "failed", "error": msg, "error_type": type(e).__name__}
    return {"status": "pending"}   # cancelled


def _run_dask(todo, records, out, meta, progress, *, threads, workers, scheduler, execute):
    import dask
    from distributed import Client, LocalCluster, wait

    _warm_kernels([run.spec for _, run in todo])
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            n = workers or os.cpu_count() or 1
            # Numba sizes its thread pool at import: as many as the most any run asks for.
            most = max([threads or os.cpu_count() or 1] + [run.spec.get("threads") or 1 for _, run in todo])
            # allowed-failures 1: a run whose worker dies is retried once, then fails (KilledWorker).
            with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
                cluster = stack.enter_context(LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                    silence_logs=50, env={"NUMBA_NUM_THREADS": str(most)}))
            client = stack.enter_context(Client(cluster, set_as_default=False))
        else:
            try:
                client = stack.enter_context(Client(scheduler, timeout="20s", set_as_default=False))
            except (OSError, TimeoutError, ValueError) as e:
                raise ValueError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        stack.enter_context(client.as_current())   # for distributed.wait
        queue, active = deque(todo), {}
        try:
            while queue or active:
                nthreads = client.nthreads()
                progress.workers = len(nthreads)
                # One run per worker thread at a time: waiting runs stay here, not on a worker.
                while queue and len(active) < max(1, sum(nthreads.values())):
                    i, run = queue.popleft()
                    key = f"numbaconv-run-{run.name}-{uuid.uuid4().hex[:8]}"
                    active[client.submit(run_one, run.spec, threads, execute, key=key, pure=False)] = (i, run)
                    progress.running = len(active)
                    progress()
                try:
                    done, _ = wait(list(active), timeout=0.5, return_when="FIRST_COMPLETED")
                except (TimeoutError, asyncio.TimeoutError):   # distinct types before Python 3.11
                    continue
                for fut in done:
                    i, run = active.pop(fut)
                    progress.running = len(active)
                    _finish(records, i, run, _outcome_of(fut), out, meta, progress)
        except BaseException:
            # Ctrl-C (or a lost scheduler): stop dispatching, cancel what is in flight, keep what finished.
            with contextlib.suppress(Exception):
                client.cancel(list(active))
            raise
        finally:
            progress.running = 0
            write_results(out, records, meta)


# ------------------------------------------------------------------ summary
def plot_sweep(records: list[dict], keys: list[str], path, title: str | None = None) -> Path:
    """Accuracy by parameter: one panel per grid option, the best val accuracy of every done run
    at its value (dots) and their mean (line); failed runs as red crosses at 0. One panel of all
    runs when the grid is empty. Size 5 x 4 inches per panel (at plots.DPI)."""
    import numpy as np

    from .plots import _figure, _save

    keys = list(keys) or [None]
    fig = _figure((5 * len(keys), 4))
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for ax, key in zip(axes, keys):
        labels = []
        for r in records:
            label = _fmt(r["params"].get(key)) if key else r["name"]
            if label not in labels:
                labels.append(label)
        xs = {label: j for j, label in enumerate(labels)}
        means = []
        for label in labels:
            rs = [r for r in records if (_fmt(r["params"].get(key)) if key else r["name"]) == label]
            acc = [r["val_acc"] for r in rs if r["status"] == "done" and r["val_acc"] is not None]
            failed = sum(r["status"] == "failed" for r in rs)
            ax.plot([xs[label]] * len(acc), acc, "o", color="C0", alpha=0.7)
            if failed:
                ax.plot([xs[label]] * failed, [0.0] * failed, "x", color="C3", markersize=9)
            means.append(np.mean(acc) if acc else math.nan)
        ax.plot(range(len(labels)), means, "-", color="C0", alpha=0.6, label="mean of done runs")
        ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0)
        ax.set_xlabel(key or "run")
        ax.set_ylabel("best val accuracy")
        ax.set_ylim(-0.03, 1.02)
        ax.grid(alpha=0.3)
    if any(r["status"] == "failed" for r in records):
        axes[0].plot([], [], "x", color="C3", label="failed")
    axes[0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["SweepSpec", "SweepRun", "load_spec", "parse_spec", "expand", "run_name", "run_sweep", "run_one",
           "read_results", "write_results", "counts", "plot_sweep", "require_dask", "RESULTS", "SUMMARY_PNG",
           "INSTALL_HINT"]
