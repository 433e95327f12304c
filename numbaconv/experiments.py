"""The report's experiments (Figures 6, 7, 9). Each builds its training runs as
data (``numbaconv.run.RunSpec``), executes them through the sweep engine
(``numbaconv.sweep.run_sweep``: a local Dask cluster, a scheduler address, or
``workers=0`` for one after another in this process), and writes
``<out>/<name>.json`` (settings and every number behind the figure, histories
included) and ``<out>/<name>.png``, and returns the same dict. The runs' own
folders (checkpoints, history.json, curves.png) and the engine's results.json
are in ``<out>/<name>-runs/``. A run whose loss becomes non-finite is a result
here (recorded as diverged, with its history up to the failing step); any other
failed run is an error. The defaults are the report's (CS231n-style
assignment) setup; every size can be shrunk for tests or a slow machine.

Engine options, the same for every experiment: ``workers`` (default: one local
worker process per core; 0: in this process), ``scheduler`` (a Dask address),
``threads`` (Numba threads per run; default 1 in workers, all cores in this
process) and ``on_update(counts, record)`` (progress, see run_sweep).

>>> # r = run_overfit(dataset="synthetic", out="runs/overfit")
>>> # r["final_train_acc"], r["epochs_to_100"]
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .checkpoint import save_json
from .plots import plot_bn_lr, plot_history, plot_init_comparison

DEEP31_FILTERS = [8] * 10 + [32] * 10 + [128] * 10
DEEP31_POOLS = [9, 19]
INIT_SCALES = ("kaiming", 1e-1, 1e-2, 1e-3)
BN_LRS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


class ExperimentError(RuntimeError):
    """A run of an experiment failed for another reason than diverging (e.g. its worker died)."""


def _data_facts(dataset, num_train, num_val) -> tuple[int, int]:
    """The number of training images the runs will use and of classes; checks the dataset
    and sizes here, before any run starts (a bad one is one ValueError)."""
    from .data import load_dataset

    ds = load_dataset(dataset, num_val=num_val, num_train=num_train)
    return int(ds.X_train.shape[0]), len(ds.class_names)


def _spec(dataset, backend, seed, num_train, num_val, dtype, **options) -> dict:
    """One run's RunSpec fields, a deep net (_run_all gives it its folder)."""
    return dict(dataset=dataset, backend=backend, seed=seed, num_train=num_train, num_val=num_val,
                dtype=np.dtype(dtype).name, model="deep", **options)


def _run_all(name: str, out, runs: dict, engine: dict) -> tuple[dict, float]:
    """Run ``runs`` (label -> RunSpec fields but the folder) through the sweep engine into
    ``out/<name>-runs``; returns label -> result (as _result) and the wall time. A run that
    fails other than by diverging raises ValueError for a bad setting (its error names it),
    else ExperimentError."""
    from .run import RunSpec
    from .sweep import SweepRun, run_name, run_sweep

    folder = Path(out) / f"{name}-runs"
    sweep_runs = []
    for label, options in runs.items():
        rname = run_name({"run": label}).removeprefix("run=")
        spec = RunSpec(out=str(folder / "runs" / rname), **options).validate()
        sweep_runs.append(SweepRun(rname, {"run": label}, spec.to_dict()))
    t0 = time.perf_counter()
    records = run_sweep(sweep_runs, folder, replace=True, meta={"experiment": name}, **engine)
    wall = time.perf_counter() - t0
    results = {}
    for label, rec in zip(runs, records):
        if rec["status"] == "failed" and rec["error_type"] != "NonFiniteLossError":
            err = f"run {label} of the {name} experiment failed: {rec['error']}"
            raise (ValueError if rec["error_type"] == "ValueError" else ExperimentError)(err)
        results[label] = _result(rec)
    return results, wall


def _result(rec: dict) -> dict:
    """What an experiment's JSON keeps of a run: its history, whether it diverged (the
    message), its wall time in the worker, and the final and best accuracies and loss."""
    h = rec.get("history") or {"loss": [], "epoch": [], "iteration": [], "time": [], "lr": [], "train_acc": [],
                               "val_acc": []}
    diverged = rec["error"].split(": ", 1)[1] if rec["status"] == "failed" else None
    return {"history": h, "diverged": diverged, "seconds": rec["seconds"],
            "final_train_acc": h["train_acc"][-1] if h["train_acc"] else None,
            "final_val_acc": h["val_acc"][-1] if h["val_acc"] else None,
            "best_val_acc": max(h["val_acc"]) if h["val_acc"] else None,
            "final_loss": h["loss"][-1] if h["loss"] else None, "run_dir": rec["run_dir"]}


def _setup(dataset, backend, seed, num_train, num_val, dtype, engine, wall) -> dict:
    return {"dataset": dataset, "backend": backend, "seed": seed, "num_train": num_train, "num_val": num_val,
            "dtype": np.dtype(dtype).name, "workers": engine.get("workers"), "scheduler": engine.get("scheduler"),
            "threads": engine.get("threads"), "wall_seconds": wall}


def _engine(workers, scheduler, threads, on_update) -> dict:
    if threads is None and not (workers == 0 and scheduler is None):
        threads = 1   # one Numba thread per run in workers: the runs are the parallelism
    return {"workers": workers, "scheduler": scheduler, "threads": threads, "on_update": on_update}


def _finish(out, name, result, plot, data, title, **plot_kw) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result["json"] = str(out / f"{name}.json")
    result["png"] = str(plot(data, out / f"{name}.png", title=title, **plot_kw))
    save_json(out / f"{name}.json", result)
    return result


def run_overfit(dataset="cifar10", out="experiments/overfit", backend="cpu", seed=0, num_train=50,
                num_val=1000, epochs=30, batch_size=10, learning_rate=2e-3, weight_scale=1e-1,
                num_filters=(8, 16, 32, 64), max_pools=(0, 1, 2, 3), reg=1e-5, dtype=np.float32, workers=0,
                scheduler=None, threads=None, on_update=None) -> dict:
    """Figure 6: a DeepConvNet overfits ``num_train`` images (Adam). The JSON
    records the accuracy history and the first epoch at 100% train accuracy, if any
    (one run: by default in this process)."""
    engine = _engine(workers, scheduler, threads, on_update)
    n_train, _ = _data_facts(dataset, num_train, num_val)
    spec = _spec(dataset, backend, seed, num_train, num_val, dtype, filters=list(num_filters),
                 pools=list(max_pools), weight_scale=weight_scale, optimizer="adam", lr=learning_rate,
                 batch_size=batch_size, reg=reg, epochs=epochs)
    runs, wall = _run_all("overfit", out, {"overfit": spec}, engine)
    r = runs["overfit"]
    h = r["history"]
    hit = [e for e, a in zip(h["epoch"], h["train_acc"]) if a >= 1.0]
    result = {"experiment": "overfit", **_setup(dataset, backend, seed, n_train, num_val, dtype, engine, wall),
              "model": json.loads((Path(r["run_dir"]) / "config.json").read_text())["model"], "epochs": epochs,
              "batch_size": batch_size, "learning_rate": learning_rate,
              "epochs_to_100": hit[0] if hit else None, **r}
    title = f"overfit {result['num_train']} images ({dataset}): training loss"
    return _finish(out, "overfit", result, plot_history, h, title)


def run_init(dataset="cifar10", out="experiments/init", backend="cpu", seed=0, num_train=10000, num_val=1000,
             epochs=1, batch_size=128, learning_rate=2e-3, scales=INIT_SCALES, num_filters=tuple(DEEP31_FILTERS),
             max_pools=tuple(DEEP31_POOLS), reg=1e-5, dtype=np.float32, workers=None, scheduler=None, threads=None,
             on_update=None) -> dict:
    """Figure 7: the 31-layer DeepConvNet trained ``epochs`` with each initial
    weight scale ("kaiming" or a std), SGD+momentum; chance is 1/num_classes."""
    engine = _engine(workers, scheduler, threads, on_update)
    n_train, n_classes = _data_facts(dataset, num_train, num_val)
    specs = {}
    for ws in scales:
        label = ws if ws == "kaiming" else f"{float(ws):g}"
        specs[label] = _spec(dataset, backend, seed, num_train, num_val, dtype,
                             filters=list(num_filters), pools=list(max_pools), weight_scale=ws,
                             optimizer="sgd_momentum", lr=learning_rate, batch_size=batch_size, reg=reg, epochs=epochs)
    runs, wall = _run_all("init", out, specs, engine)
    result = {"experiment": "init", **_setup(dataset, backend, seed, n_train, num_val, dtype, engine, wall),
              "num_filters": list(num_filters), "max_pools": list(max_pools), "layers": len(num_filters) + 1,
              "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
              "chance": 1.0 / n_classes, "runs": runs}
    title = f"{len(num_filters) + 1}-layer DeepConvNet, {epochs} epoch(s) on {result['num_train']} images"
    curves = {k + (" (diverged)" if v["diverged"] else ""): v["history"] for k, v in runs.items()}
    return _finish(out, "init", result, plot_init_comparison, curves, title, chance=result["chance"])


def run_bn_lr(dataset="cifar10", out="experiments/bn-lr", backend="cpu", seed=0, num_train=10000, num_val=1000,
              epochs=10, batch_size=128, learning_rates=BN_LRS, num_filters=(16, 32, 32, 64, 64),
              max_pools=(0, 1, 2, 3, 4), reg=1e-5, dtype=np.float32, workers=None, scheduler=None, threads=None,
              on_update=None) -> dict:
    """Figure 9: the DeepConvNet (Kaiming init, Adam) with and without spatial
    batch norm at each learning rate; final and per-epoch train/val accuracy."""
    engine = _engine(workers, scheduler, threads, on_update)
    n_train, n_classes = _data_facts(dataset, num_train, num_val)
    specs = {}
    for variant in ("baseline", "batchnorm"):
        for lr in learning_rates:
            specs[(variant, f"{lr:g}")] = _spec(dataset, backend, seed, num_train, num_val, dtype,
                                                filters=list(num_filters), pools=list(max_pools),
                                                batchnorm=variant == "batchnorm", weight_scale="kaiming",
                                                optimizer="adam", lr=float(lr), batch_size=batch_size, reg=reg,
                                                epochs=epochs)
    done, wall = _run_all("bn-lr", out, {f"{v} lr={lr}": s for (v, lr), s in specs.items()}, engine)
    runs = {"baseline": {}, "batchnorm": {}}
    for variant, lr in specs:
        runs[variant][lr] = done[f"{variant} lr={lr}"]
    result = {"experiment": "bn-lr", **_setup(dataset, backend, seed, n_train, num_val, dtype, engine, wall),
              "num_filters": list(num_filters), "max_pools": list(max_pools), "epochs": epochs,
              "batch_size": batch_size, "learning_rates": [float(lr) for lr in learning_rates],
              "chance": 1.0 / n_classes, "runs": runs}
    curves = {v: {float(lr): r["history"] for lr, r in rs.items()} for v, rs in runs.items()}
    title = f"batch norm vs learning rate ({result['num_train']} images, {epochs} epochs)"
    return _finish(out, "bn-lr", result, plot_bn_lr, curves, title)


def load_result(path) -> dict:
    """An experiment's JSON as written above."""
    return json.loads(Path(path).read_text())


__all__ = ["run_overfit", "run_init", "run_bn_lr", "load_result", "ExperimentError", "DEEP31_FILTERS",
           "DEEP31_POOLS", "INIT_SCALES", "BN_LRS"]
