"""The report's experiments (Figures 6, 7, 9): each trains DeepConvNets with the
Solver, writes ``<out>/<name>.json`` (settings and every number behind the
figure, histories included) and ``<out>/<name>.png``, and returns the same
dict. The defaults are the report's (CS231n-style assignment) setup; every size
can be shrunk for tests or a slow machine.

>>> # r = run_overfit(dataset="synthetic", out="runs/overfit")
>>> # r["final_train_acc"], r["epochs_to_100"]
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .checkpoint import save_json
from .data import load_dataset
from .models import DeepConvNet
from .plots import plot_bn_lr, plot_history, plot_init_comparison
from .solver import NonFiniteLossError, Solver

DEEP31_FILTERS = [8] * 10 + [32] * 10 + [128] * 10
DEEP31_POOLS = [9, 19]
INIT_SCALES = ("kaiming", 1e-1, 1e-2, 1e-3)
BN_LRS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _data(dataset, num_train, num_val, dtype, seed):
    ds = load_dataset(dataset, num_val=num_val, num_train=num_train, dtype=dtype, seed=seed)
    return ds, {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val}


def _train(model, data, **kw) -> dict:
    """Train; a run whose loss becomes non-finite is recorded as diverged (its
    history up to the failing step kept), since divergence is a result here."""
    solver = Solver(model, data, verbose=False, **kw)
    t0 = time.perf_counter()
    try:
        solver.train()
        diverged = None
    except NonFiniteLossError as e:
        diverged = str(e)
    h = solver.history()
    return {"history": h, "diverged": diverged, "seconds": time.perf_counter() - t0,
            "final_train_acc": h["train_acc"][-1] if h["train_acc"] else None,
            "final_val_acc": h["val_acc"][-1] if h["val_acc"] else None,
            "best_val_acc": max(h["val_acc"]) if h["val_acc"] else None,
            "final_loss": h["loss"][-1] if h["loss"] else None}


def _setup(dataset, backend, seed, num_train, num_val, dtype):
    return {"dataset": dataset, "backend": backend, "seed": seed, "num_train": num_train,
            "num_val": num_val, "dtype": np.dtype(dtype).name}


def _finish(out, name, result, plot, data, title, **plot_kw) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result["json"] = str(out / f"{name}.json")
    result["png"] = str(plot(data, out / f"{name}.png", title=title, **plot_kw))
    save_json(out / f"{name}.json", result)
    return result


def run_overfit(dataset="cifar10", out="experiments/overfit", backend="cpu", seed=0, num_train=50,
                num_val=1000, epochs=30, batch_size=10, learning_rate=2e-3, weight_scale=1e-1,
                num_filters=(8, 16, 32, 64), max_pools=(0, 1, 2, 3), reg=1e-5, dtype=np.float32, progress=None) -> dict:
    """Figure 6: a DeepConvNet overfits ``num_train`` images (Adam). The JSON
    records the accuracy history and the first epoch at 100% train accuracy."""
    ds, data = _data(dataset, num_train, num_val, dtype, seed)
    if progress:
        progress(f"overfit {ds.X_train.shape[0]} images")
    model = DeepConvNet(input_dims=ds.X_train.shape[1:], num_filters=list(num_filters), max_pools=list(max_pools),
                        num_classes=len(ds.class_names), weight_scale=weight_scale, reg=reg, dtype=dtype,
                        backend=backend, seed=seed)
    r = _train(model, data, update_rule="adam", optim_config={"learning_rate": learning_rate},
               batch_size=batch_size, num_epochs=epochs, num_train_samples=None, seed=seed)
    h = r["history"]
    hit = [e for e, a in zip(h["epoch"], h["train_acc"]) if a >= 1.0]
    result = {"experiment": "overfit", **_setup(dataset, backend, seed, int(ds.X_train.shape[0]), num_val, dtype),
              "model": model.config(), "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
              "epochs_to_100": hit[0] if hit else None, **r}
    title = f"overfit {result['num_train']} images ({dataset}): training loss"
    return _finish(out, "overfit", result, plot_history, h, title)


def run_init(dataset="cifar10", out="experiments/init", backend="cpu", seed=0, num_train=10000, num_val=1000,
             epochs=1, batch_size=128, learning_rate=2e-3, scales=INIT_SCALES, num_filters=tuple(DEEP31_FILTERS),
             max_pools=tuple(DEEP31_POOLS), reg=1e-5, dtype=np.float32, progress=None) -> dict:
    """Figure 7: the 31-layer DeepConvNet trained ``epochs`` with each initial
    weight scale ("kaiming" or a std), SGD+momentum; chance is 1/num_classes.
    ``progress(label)`` is called before each run (for a CLI display)."""
    ds, data = _data(dataset, num_train, num_val, dtype, seed)
    runs = {}
    for ws in scales:
        label = ws if ws == "kaiming" else f"{float(ws):g}"
        if progress:
            progress(label)
        model = DeepConvNet(input_dims=ds.X_train.shape[1:], num_filters=list(num_filters),
                            max_pools=list(max_pools), num_classes=len(ds.class_names), weight_scale=ws,
                            reg=reg, dtype=dtype, backend=backend, seed=seed)
        runs[label] = _train(model, data, update_rule="sgd_momentum", optim_config={"learning_rate": learning_rate},
                             batch_size=batch_size, num_epochs=epochs, seed=seed)
    result = {"experiment": "init", **_setup(dataset, backend, seed, int(ds.X_train.shape[0]), num_val, dtype),
              "num_filters": list(num_filters), "max_pools": list(max_pools), "layers": len(num_filters) + 1,
              "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
              "chance": 1.0 / len(ds.class_names), "runs": runs}
    title = f"{len(num_filters) + 1}-layer DeepConvNet, {epochs} epoch(s) on {result['num_train']} images"
    curves = {k + (" (diverged)" if v["diverged"] else ""): v["history"] for k, v in runs.items()}
    return _finish(out, "init", result, plot_init_comparison, curves, title, chance=result["chance"])


def run_bn_lr(dataset="cifar10", out="experiments/bn-lr", backend="cpu", seed=0, num_train=10000, num_val=1000,
              epochs=10, batch_size=128, learning_rates=BN_LRS, num_filters=(16, 32, 32, 64, 64),
              max_pools=(0, 1, 2, 3, 4), reg=1e-5, dtype=np.float32, progress=None) -> dict:
    """Figure 9: the DeepConvNet (Kaiming init, Adam) with and without spatial
    batch norm at each learning rate; final and per-epoch train/val accuracy."""
    ds, data = _data(dataset, num_train, num_val, dtype, seed)
    runs = {"baseline": {}, "batchnorm": {}}
    for variant in runs:
        for lr in learning_rates:
            if progress:
                progress(f"{variant} lr={lr:g}")
            model = DeepConvNet(input_dims=ds.X_train.shape[1:], num_filters=list(num_filters),
                                max_pools=list(max_pools), batchnorm=variant == "batchnorm",
                                num_classes=len(ds.class_names), weight_scale="kaiming", reg=reg, dtype=dtype,
                                backend=backend, seed=seed)
            runs[variant][f"{lr:g}"] = _train(model, data, update_rule="adam", optim_config={"learning_rate": lr},
                                              batch_size=batch_size, num_epochs=epochs, seed=seed)
    result = {"experiment": "bn-lr", **_setup(dataset, backend, seed, int(ds.X_train.shape[0]), num_val, dtype),
              "num_filters": list(num_filters), "max_pools": list(max_pools), "epochs": epochs,
              "batch_size": batch_size, "learning_rates": [float(lr) for lr in learning_rates],
              "chance": 1.0 / len(ds.class_names), "runs": runs}
    curves = {v: {float(lr): r["history"] for lr, r in rs.items()} for v, rs in runs.items()}
    title = f"batch norm vs learning rate ({result['num_train']} images, {epochs} epochs)"
    return _finish(out, "bn-lr", result, plot_bn_lr, curves, title)


def load_result(path) -> dict:
    """An experiment's JSON as written above."""
    return json.loads(Path(path).read_text())


__all__ = ["run_overfit", "run_init", "run_bn_lr", "load_result", "DEEP31_FILTERS", "DEEP31_POOLS",
           "INIT_SCALES", "BN_LRS"]
