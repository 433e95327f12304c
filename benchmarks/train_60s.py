"""Train a recipe ("fast" by default) for a fixed budget of training-step seconds on a CIFAR-10 HDF5 file.

    .venv/bin/python benchmarks/train_60s.py --dataset /tmp/nbdata/cifar10.h5 --seeds 0 1 2 [--against-torch]

Validation: the recipe's num_val images (numbaconv.recipe.RECIPES). For accuracy against time (a curve,
accuracy at 60 s, time to 89%), see benchmarks/time_to_accuracy.py.
Reports per seed: best val accuracy (BN running stats, flip TTA as the recipe says), test accuracy when the
file has a test split, images/s, epochs. Only training steps count toward the budget (minibatch gather,
augmentation, forward, backward, update), as the Solver's time_limit does; accuracy checks do not.
--against-torch trains the same architecture and recipe (same init scheme, augmentation function, minibatch
stream, schedule, loss, optimizer) in PyTorch CPU for the same budget on the same split, in the same run.
The two train side by side in turns of --slice seconds of training steps (ours 0-5 s, torch 0-5 s, ours
5-10 s, ...; who starts swaps every other seed), so a machine whose speed drifts during the run (a shared
one's does, by 10-20% over minutes) favours neither side; each side's accuracy is checked at its epoch ends
and at the end of each turn (the Solver checks where it stops). The last line gives the mean of the
per-seed images/s ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from time_to_accuracy import points  # noqa: E402  (a sibling script: the turns are its check points)


class OursRun:
    """numbaconv's run of the recipe: ``advance(t)`` trains until t seconds of training steps (the
    Solver checks accuracy at each epoch end and where it stops); ``result()`` once the budget is spent."""

    def __init__(self, data, budget, seed, recipe):
        from numbaconv.recipe import recipe_solver

        self.model, self.solver = recipe_solver(recipe, data, budget, seed=seed, verbose=False, num_train_samples=1000)
        self.solver.warmup()

    def advance(self, seconds: float) -> None:
        if self.solver.stop_reason != "done":
            self.solver.train(time_limit=seconds)   # best val weights swapped in afterwards

    def result(self, X_test, y_test) -> dict:
        from numbaconv.solver import evaluate_accuracy

        s = self.solver
        res = {"val_acc": s.best_val_acc, "images_per_s": s.iteration * s.batch_size / s.train_time,
               "epochs": s.iteration / s.iterations_per_epoch, "train_time": s.train_time, "steps": s.iteration}
        if X_test is not None:
            res["test_acc"] = evaluate_accuracy(self.model, X_test, y_test)[0]
        return res


class TorchRun:
    """The same recipe in PyTorch CPU (numbaconv.torch_recipe), checked as the Solver checks: at each
    epoch end and where ``advance`` stops; the best validation state is kept."""

    def __init__(self, data, budget, seed, recipe, threads):
        from numbaconv.torch_recipe import TorchRecipe

        self.data, self.best, self.best_state, self.checked_at = data, -1.0, None, None
        self.rec = TorchRecipe(recipe, data, seed=seed, threads=threads, budget=budget)
        self.rec.warmup()

    def _check(self, rec) -> None:
        acc = rec.accuracy(self.data["X_val"], self.data["y_val"])
        if acc > self.best:
            self.best, self.best_state = acc, rec.state()
        self.checked_at = rec.steps

    def advance(self, seconds: float) -> None:
        self.rec.train_until(seconds, on_epoch_end=self._check)
        if self.checked_at != self.rec.steps:
            self._check(self.rec)

    def result(self, X_test, y_test) -> dict:
        rec = self.rec
        rec.net.load_state_dict(self.best_state)
        res = {"val_acc": self.best, "images_per_s": rec.steps * rec.batch_size / rec.train_time,
               "epochs": rec.steps / rec.iterations_per_epoch, "train_time": rec.train_time, "steps": rec.steps}
        if X_test is not None:
            res["test_acc"] = rec.accuracy(X_test, y_test)
        return res


def run_seed(data, X_test, y_test, a, seed: int, torch_first: bool) -> dict:
    """One seed: ours alone for the whole budget, or (--against-torch) ours and PyTorch in turns of
    --slice seconds of training steps each until both have spent the budget, ``torch_first`` saying
    who starts."""
    runs = {"ours": OursRun(data, a.budget, seed, a.recipe)}
    if a.against_torch:
        runs["torch"] = TorchRun(data, a.budget, seed, a.recipe, a.threads)
    order = ["torch", "ours"] if torch_first and "torch" in runs else list(runs)
    for t in points(a.budget, a.slice if a.against_torch else a.budget):
        for who in order:
            runs[who].advance(t)
    return {who: runs[who].result(X_test, y_test) for who in runs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=os.path.join(os.environ.get("NUMBACONV_DATA", "datasets"), "cifar10.h5"))
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of training steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--threads", type=int, default=2, help="Numba and PyTorch threads")
    ap.add_argument("--against-torch", action="store_true")
    ap.add_argument("--slice", type=float, default=5.0,
                    help="with --against-torch: seconds of training steps each side takes per turn")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    if not a.slice > 0:
        ap.error(f"--slice must be seconds > 0, got {a.slice!r}")
    if a.against_torch:   # before numbaconv.cpu: PyTorch keeps its own OpenMP waiting (bench does the same)
        from numbaconv.bench import load_torch_first

        load_torch_first()

    import numba

    from numbaconv.data import load_dataset

    numba.set_num_threads(a.threads)
    from numbaconv.recipe import RECIPES

    ds = load_dataset(a.dataset, num_val=RECIPES[a.recipe]["num_val"])   # the recipe's validation size
    data = {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val}
    print(f"{ds.source}: {ds.X_train.shape[0]} train / {ds.X_val.shape[0]} val / "
          f"{0 if ds.X_test is None else ds.X_test.shape[0]} test; budget {a.budget:g} s; threads {a.threads}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for i, seed in enumerate(a.seeds):
        row = {"seed": seed, **run_seed(data, ds.X_test, ds.y_test, a, seed, torch_first=i % 2 == 1)}
        row["load_avg"] = os.getloadavg()[0]
        rows.append(row)
        for who in ("ours", "torch"):
            if who in row:
                r = row[who]
                test = f"  test {r['test_acc']:.4f}" if "test_acc" in r else ""
                print(f"seed {seed} {who:5s}: best val {r['val_acc']:.4f}{test}  {r['images_per_s']:7.0f} img/s  "
                      f"{r['epochs']:.2f} epochs  ({r['steps']} steps in {r['train_time']:.1f} s)", flush=True)
        if "torch" in row:
            print(f"seed {seed} images/s ours/torch = {row['ours']['images_per_s'] / row['torch']['images_per_s']:.2f}; "
                  f"load average {row['load_avg']:.2f}", flush=True)
    for who in ("ours", "torch"):
        v = [r[who]["val_acc"] for r in rows if who in r]
        if v:
            print(f"{who}: val acc mean {np.mean(v):.4f} min {min(v):.4f} max {max(v):.4f} over {len(v)} seeds")
    ratios = [r["ours"]["images_per_s"] / r["torch"]["images_per_s"] for r in rows if "torch" in r]
    if ratios:
        print(f"images/s ours/torch: mean {np.mean(ratios):.2f} min {min(ratios):.2f} max {max(ratios):.2f} "
              f"over {len(ratios)} seeds")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
