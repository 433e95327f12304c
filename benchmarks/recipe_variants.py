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

    num_classes = int(max(data["y_train"].max(), data["y_val"].max())) + 1
    model = build_model(R.recipe_model_config(entry, data["X_train"].shape[1:], num_classes), seed=seed)
    ipe = max(data["X_train"].shape[0] // entry["batch_size"], 1)
    solver = FixedSteps(model, data, num_epochs=-(-steps // ipe), seed=seed, verbose=False,
                        num_train_samples=1000, **R.recipe_solver_kwargs(entry, None))
    R.apply_param_groups(solver, entry["lr_scales"])
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
    ap.add_argument("--rounds", type=int, default=30, help="--cost: timed steps per variant, one a turn")
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
        from numbaconv.bench import interleaved_times

        solvers = {name: build(entry, data, 10 ** 9, a.seed)[1] for name, entry in entries.items()}
        for s in solvers.values():
            s.warmup()
        # one step a turn, ours after ours: a burst of load hits every variant alike
        times = interleaved_times({name: s._step for name, s in solvers.items()}, a.rounds)
        first = next(iter(solvers))
        base = np.median(times[first]) / solvers[first].batch_size   # seconds per image
        for name, s in solvers.items():
            t = np.median(times[name])
            print(f"{name:16s} {1000 * t:7.1f} ms/step  {s.batch_size / t:6.0f} img/s  "
                  f"per image {t / s.batch_size / base:.2f}x the first")
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
