"""Validation accuracy against seconds of training steps for a recipe: one run gives both
"accuracy at 60 s" and "time to 89%", as a table, a JSON file and a PNG.

    .venv/bin/python benchmarks/time_to_accuracy.py --dataset /tmp/nbdata/cifar10.h5 --recipe long --against-torch
    .venv/bin/python benchmarks/time_to_accuracy.py --dataset /tmp/nbdata/cifar10.h5 --recipe fast --every 5

The recipe's table entry (numbaconv.recipe.RECIPES) gives the defaults: --budget its time_budget (the
schedule runs over it, as `numbaconv train --time-budget` does), --num-val its validation size (5,000
for long: 1,000 images judge 89% to about +-1%). Accuracy is measured every --every seconds of training
steps (and at each epoch end) on the whole validation split, with the recipe's test-time views; checks
are not counted as training time, so the curve is the same whatever the checks cost. The Solver is
trained to each point in turn (``train(time_limit=t)`` accumulates), so the curve is one run, not one
run per point. --against-torch trains the same recipe in PyTorch CPU (numbaconv.torch_recipe.TorchRecipe:
same architecture, init scheme, augmentation, schedule, loss, optimizer, lookahead) on the same split,
checked at the same points. Print the load average beside results; measure on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def points(budget: float, every: float) -> list[float]:
    """Check times: every ``every`` seconds up to and including ``budget``."""
    if not (budget > 0 and every > 0):
        raise ValueError(f"--budget and --every must be seconds > 0, got {budget!r} and {every!r}")
    n = int(np.ceil(budget / every - 1e-9))
    return [min(every * (i + 1), budget) for i in range(n)]


def curve_ours(data: dict, recipe: str, budget: float, seed: int, every: float, num_classes: int | None = None,
               **solver_kwargs) -> list[dict]:
    """numbaconv's curve: one dict per accuracy check (time, epoch, iteration, val_acc)."""
    from numbaconv.recipe import recipe_solver

    _, solver = recipe_solver(recipe, data, budget, seed=seed, num_classes=num_classes, verbose=False,
                              **{"num_train_samples": 500, **solver_kwargs})
    solver.warmup()
    for t in points(budget, every):
        if solver.train(time_limit=t) == "done":
            break
    h = solver.record
    return [{"time": t, "epoch": e, "iteration": i, "val_acc": v}
            for t, e, i, v in zip(h.time, h.epoch, h.iteration, h.val_acc)]


def curve_torch(data: dict, recipe: str, budget: float, seed: int, every: float, threads: int | None) -> list[dict]:
    """PyTorch's curve on the same recipe, checked at the same points of training-step time
    (a step is taken while the clock plus the last step's duration stays within the point, as
    the Solver's time limit does)."""
    from numbaconv.torch_recipe import TorchRecipe

    rec = TorchRecipe(recipe, data, seed=seed, threads=threads, budget=budget)
    rec.warmup()
    out = []
    for t in points(budget, every):
        rec.train_until(t)
        out.append({"time": rec.train_time, "epoch": rec.steps / rec.iterations_per_epoch, "iteration": rec.steps,
                    "val_acc": rec.accuracy(data["X_val"], data["y_val"])})
    return out


def summarise(curve: list[dict], at: float, target: float) -> dict:
    """Accuracy at ``at`` seconds (the last check at or before it; None if none) and the first
    check time reaching ``target`` (None if never); the best accuracy and when."""
    before = [c for c in curve if c["time"] <= at + 1e-9]
    reached = [c for c in curve if c["val_acc"] >= target]
    best = max(curve, key=lambda c: c["val_acc"]) if curve else None
    return {"acc_at": before[-1]["val_acc"] if before else None, "time_to_target": reached[0]["time"] if reached else None,
            "best_acc": best["val_acc"] if best else None, "best_time": best["time"] if best else None}


def plot_curves(curves: dict, path, at: float, target: float, title: str) -> None:
    """Validation accuracy against training seconds, one line per curve; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for who, curve in curves.items():
        ax.plot([c["time"] for c in curve], [100 * c["val_acc"] for c in curve], marker="o", ms=3, label=who)
    ax.axvline(at, color="grey", ls=":", lw=1, label=f"{at:g} s")
    ax.axhline(100 * target, color="grey", ls="--", lw=1, label=f"{100 * target:g}%")
    ax.set_xlabel("seconds of training steps")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def _fmt(v, unit=""):
    return "-" if v is None else (f"{v:.4f}" if not unit else f"{v:.1f}{unit}")


def main(argv=None):
    from numbaconv.recipe import RECIPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=os.path.join(os.environ.get("NUMBACONV_DATA", "datasets"), "cifar10.h5"))
    ap.add_argument("--recipe", default="long", choices=list(RECIPES))
    ap.add_argument("--budget", type=float, help="seconds of training steps (default: the recipe's time_budget)")
    ap.add_argument("--every", type=float, help="seconds of training steps between checks (default: budget / 15)")
    ap.add_argument("--num-val", type=int, help="validation images (default: the recipe's num_val)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="Numba and PyTorch threads")
    ap.add_argument("--at", type=float, default=60.0, help="report the accuracy at this many seconds")
    ap.add_argument("--target", type=float, default=0.89, help="report the time to this validation accuracy")
    ap.add_argument("--against-torch", action="store_true")
    ap.add_argument("--png", help="plot here (default: time_to_accuracy_<recipe>_seed<seed>.png)")
    ap.add_argument("--json", help="write the curves and summary here")
    a = ap.parse_args(argv)
    if a.against_torch:   # before numbaconv.cpu: PyTorch keeps its own OpenMP waiting (bench does the same)
        from numbaconv.bench import load_torch_first

        load_torch_first()

    import numba

    from numbaconv.data import load_dataset

    r = RECIPES[a.recipe]
    budget = a.budget if a.budget is not None else r["time_budget"]
    every = a.every if a.every is not None else budget / 15
    num_val = a.num_val if a.num_val is not None else r["num_val"]
    numba.set_num_threads(a.threads)
    ds = load_dataset(a.dataset, num_val=num_val)
    data = {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val}
    print(f"{ds.source}: {ds.X_train.shape[0]} train / {ds.X_val.shape[0]} val; recipe {a.recipe}, budget "
          f"{budget:g} s, checks every {every:g} s; seed {a.seed}; threads {a.threads}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    curves = {"numbaconv": curve_ours(data, a.recipe, budget, a.seed, every, num_classes=len(ds.class_names))}
    load = {"numbaconv": os.getloadavg()[0]}
    if a.against_torch:
        curves["pytorch"] = curve_torch(data, a.recipe, budget, a.seed, every, a.threads)
        load["pytorch"] = os.getloadavg()[0]
    summary = {who: summarise(c, a.at, a.target) for who, c in curves.items()}
    for who, curve in curves.items():
        print(f"\n{who} (load average after: {load[who]:.2f})\n   seconds   epoch   val acc")
        for c in curve:
            print(f"  {c['time']:8.1f}  {c['epoch']:6.2f}   {c['val_acc']:.4f}")
        s = summary[who]
        print(f"  accuracy at {a.at:g} s: {_fmt(s['acc_at'])}; time to {a.target:.1%}: "
              f"{_fmt(s['time_to_target'], ' s')}; best {_fmt(s['best_acc'])} at {_fmt(s['best_time'], ' s')}")
    png = a.png or f"time_to_accuracy_{a.recipe}_seed{a.seed}.png"
    plot_curves(curves, png, a.at, a.target, f"{a.recipe} recipe, seed {a.seed}, {ds.X_val.shape[0]} validation "
                f"images, {a.threads} threads")
    print(f"\nwrote {png}")
    if a.json:
        from numbaconv.checkpoint import save_json

        save_json(a.json, {"args": vars(a), "budget": budget, "every": every, "num_val": num_val,
                           "load_avg": load, "curves": curves, "summary": summary})
        print(f"wrote {a.json}")


if __name__ == "__main__":
    sys.exit(main())
