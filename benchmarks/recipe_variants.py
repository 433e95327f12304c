"""Compare variants of a recipe at equal training time on a busy machine: their relative step cost
(taken in turns in one process), and their validation accuracy after a fixed number of steps (which
does not depend on the load).

    # 1. step cost of each variant relative to the first (turns taken; quote the load average)
    .venv/bin/python benchmarks/recipe_variants.py --dataset /tmp/nbdata/cifar10.h5 --cost \\
        base='{}' b128='{"batch_size": 128}' neg='{"model.whiten_neg": true}'
    # 2. accuracy after N steps, the schedule run over those steps (N = the base's steps / cost ratio)
    .venv/bin/python benchmarks/recipe_variants.py --dataset /tmp/nbdata/cifar10.h5 --steps 1250 \\
        b128='{"batch_size": 128, "peak_lr": 0.3}'

A variant is NAME=JSON: overrides of the recipe's table entry (numbaconv.recipe.RECIPES); keys
"model.X" override its model config. Accuracy is on --num-val held-out images (default 5,000: less
noise than the recipe's 1,000), with the final weights and the recipe's test-time views. A fixed
step count is how the fast recipe was retuned (benchmarks/RESULTS.md, "Retuning the fast recipe"):
time-budgeted runs need a quiet machine, this does not.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import numpy as np


def variant(recipe: str, overrides: dict) -> dict:
    """The recipe's table entry with ``overrides`` applied ("model.X" keys go to the model config)."""
    from numbaconv.recipe import RECIPES

    r = copy.deepcopy(RECIPES[recipe])
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        target = r["model"] if section == "model" else r
        if (name if section else key) not in target:
            raise ValueError(f"{key!r} is not an entry of recipe {recipe!r}'s table")
        target[name if section else key] = value
    return r


def build(entry: dict, data: dict, steps: int, seed: int):
    """(model, solver) for table entry ``entry``, its schedule run over ``steps`` steps."""
    from numbaconv import recipe as R
    from numbaconv.models import build_model
    from numbaconv.solver import Solver

    class FixedSteps(Solver):   # num_epochs rounds to whole epochs; a variant's step count is not one
        @property
        def num_iterations(self) -> int:
            return steps

    name = "_variant"
    R.RECIPES[name] = entry   # recipe_solver_kwargs reads the table by name
    try:
        num_classes = int(max(data["y_train"].max(), data["y_val"].max())) + 1
        model = build_model(R.recipe_model_config(name, data["X_train"].shape[1:], num_classes), seed=seed)
        ipe = max(data["X_train"].shape[0] // entry["batch_size"], 1)
        solver = FixedSteps(model, data, num_epochs=-(-steps // ipe), seed=seed, verbose=False,
                            num_train_samples=1000, **R.recipe_solver_kwargs(name, None))
        R.apply_param_groups(solver, entry["lr_scales"])
    finally:
        del R.RECIPES[name]
    return model, solver


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", metavar="NAME=JSON")
    ap.add_argument("--dataset", default=os.path.join(os.environ.get("NUMBACONV_DATA", "datasets"), "cifar10.h5"))
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--num-val", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cost", action="store_true", help="relative step cost, variants taken in turns")
    mode.add_argument("--steps", type=int, help="train each variant this many steps; report val accuracy")
    ap.add_argument("--rounds", type=int, default=6, help="--cost: turns per variant (5 steps each)")
    a = ap.parse_args(argv)

    from numbaconv.data import load_dataset

    entries = {}
    for v in a.variants:
        name, sep, text = v.partition("=")
        if not sep:
            ap.error(f"a variant is NAME=JSON, got {v!r}")
        entries[name] = variant(a.recipe, json.loads(text))
    ds = load_dataset(a.dataset, num_val=a.num_val)
    data = {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val}
    print(f"{ds.X_train.shape[0]} train / {ds.X_val.shape[0]} val; load average {os.getloadavg()[0]:.2f}", flush=True)

    if a.cost:
        solvers = {}
        for name, entry in entries.items():
            _, s = build(entry, data, 10 ** 9, a.seed)
            s.warmup()
            s._step(), s._step()   # compiled and allocated before timing
            solvers[name] = s
        times = {name: [] for name in solvers}
        for _ in range(a.rounds):
            for name, s in solvers.items():
                start = time.perf_counter()
                for _ in range(5):
                    s._step()
                times[name].append((time.perf_counter() - start) / 5)
        base = np.median(times[next(iter(solvers))])
        for name, s in solvers.items():
            t = np.median(times[name])
            print(f"{name:16s} {1000 * t:7.1f} ms/step  {t / base:5.2f}x the first  "
                  f"{s.batch_size / t:6.0f} img/s  per image {t / s.batch_size / (base / solvers[next(iter(solvers))].batch_size):.2f}x")
        print(f"load average {os.getloadavg()[0]:.2f}")
        return 0

    for name, entry in entries.items():
        _, s = build(entry, data, a.steps, a.seed)
        s.warmup()
        s.train()
        s._unswap()   # the final weights: the schedule's end, not the best epoch check
        acc = s.check_accuracy(data["X_val"], data["y_val"])
        print(f"{name:16s} {a.steps} steps  val {acc:.4f}  (epoch checks {', '.join(f'{v:.3f}' for v in s.val_acc_history)})"
              f"  load average {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
