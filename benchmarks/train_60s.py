"""Train a recipe ("fast" by default) for a fixed budget of training-step seconds on a CIFAR-10 HDF5 file.

    .venv/bin/python benchmarks/train_60s.py --dataset /tmp/nbdata/cifar10.h5 --seeds 0 1 2 [--against-torch]

Validation: the recipe's num_val images (numbaconv.recipe.RECIPES). For accuracy against time (a curve,
accuracy at 60 s, time to 89%), see benchmarks/time_to_accuracy.py.
Reports per seed: best val accuracy (BN running stats, flip TTA as the recipe says), test accuracy when the
file has a test split, images/s, epochs. Only training steps count toward the budget (minibatch gather,
augmentation, forward, backward, update), as the Solver's time_limit does; accuracy checks do not.
--against-torch trains the same architecture and recipe (same init scheme, augmentation function, minibatch
stream, schedule, loss, optimizer) in PyTorch CPU for the same budget on the same split, in the same run.
The two take turns and swap who goes first every other seed (ours, torch; torch, ours; ...), so a machine
whose speed drifts during the run (a shared one's does, by 10-20% over minutes) favours neither side;
the last line gives the mean of the per-seed images/s ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def run_ours(data, X_test, y_test, budget, seed, recipe):
    from numbaconv.recipe import recipe_solver
    from numbaconv.solver import evaluate_accuracy

    model, solver = recipe_solver(recipe, data, budget, seed=seed, verbose=False, num_train_samples=1000)
    solver.warmup()
    solver.train(time_limit=budget)   # best val weights swapped in afterwards
    imgs = solver.iteration * solver.batch_size
    res = {"val_acc": solver.best_val_acc, "images_per_s": imgs / solver.train_time,
           "epochs": solver.iteration / solver.iterations_per_epoch, "train_time": solver.train_time,
           "steps": solver.iteration}
    if X_test is not None:
        res["test_acc"] = evaluate_accuracy(model, X_test, y_test)[0]
    return res


def run_torch(data, X_test, y_test, budget, seed, recipe, threads):
    from numbaconv.torch_recipe import TorchRecipe

    rec = TorchRecipe(recipe, data, seed=seed, threads=threads, budget=budget)
    ipe = max(rec.X.shape[0] // rec.batch_size, 1)
    train_time, last, steps, best, best_state = 0.0, 0.0, 0, -1.0, None
    rec.warmup()
    while train_time + last <= budget:
        start = time.perf_counter()
        rec.step(train_time / budget)
        last = time.perf_counter() - start
        train_time += last
        steps += 1
        if steps % ipe == 0:
            acc = rec.accuracy(data["X_val"], data["y_val"])
            if acc > best:
                best, best_state = acc, rec.state()
    acc = rec.accuracy(data["X_val"], data["y_val"])
    if acc > best:
        best, best_state = acc, rec.state()
    rec.net.load_state_dict(best_state)
    res = {"val_acc": best, "images_per_s": steps * rec.batch_size / train_time, "epochs": steps / ipe,
           "train_time": train_time, "steps": steps}
    if X_test is not None:
        res["test_acc"] = rec.accuracy(X_test, y_test)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=os.path.join(os.environ.get("NUMBACONV_DATA", "datasets"), "cifar10.h5"))
    ap.add_argument("--budget", type=float, default=60.0, help="seconds of training steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--threads", type=int, default=2, help="Numba and PyTorch threads")
    ap.add_argument("--against-torch", action="store_true")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)

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
        row = {"seed": seed}
        order = ("ours", "torch") if i % 2 == 0 else ("torch", "ours")
        for who in order if a.against_torch else ("ours",):
            if who == "ours":
                row["ours"] = run_ours(data, ds.X_test, ds.y_test, a.budget, seed, a.recipe)
            else:
                row["torch"] = run_torch(data, ds.X_test, ds.y_test, a.budget, seed, a.recipe, a.threads)
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
