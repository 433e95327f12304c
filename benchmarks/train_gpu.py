"""Train a recipe on the GPU with device-resident training, beside PyTorch eager on the same GPU.

    python3 benchmarks/train_gpu.py --recipe fast [--against-torch] [--budget 20] [--dataset synthetic]

Ours: ``recipe_solver(..., backend="cuda")`` (weights, optimizer state, the split and the augmentation
on the device; numbaconv.solver). PyTorch: numbaconv.torch_recipe.TorchRecipe (the same architecture,
init scheme, frozen whitening stem, augmentation function, minibatch stream, schedule, loss and
optimizer) with its net on the GPU (cuDNN). Its minibatches are gathered and augmented on the host
by the same function and copied up each step (~3 MB at batch 256: a fraction of a millisecond), so
PyTorch's images/s include that copy and ours do not include an equivalent one.
Only training steps count toward the budget (as the Solver's time_limit); checks do not. Reports per
side: images/s, best val accuracy, the training seconds to reach --target (None if never), and for
ours the host<->device copies of the training loop. ``--backend cpu --torch-device cpu`` runs the
same script without a GPU (a smoke test of the script, not a measurement).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time


def _first_time_at(times, accs, target):
    return next((t for t, a in zip(times, accs) if a >= target), None)


def run_ours(data, budget, seed, recipe, backend, target):
    from numbaconv import get_backend
    from numbaconv.recipe import recipe_solver

    _, solver = recipe_solver(recipe, data, budget, seed=seed, backend=backend, verbose=False, num_train_samples=1000)
    solver.warmup()   # compiles the kernels and uploads the split, outside the clock
    counter = get_backend("cuda").count_transfers() if backend == "cuda" else contextlib.nullcontext()
    with counter as t:
        solver.train(time_limit=budget)
    h = solver.record
    res = {"val_acc": solver.best_val_acc, "images_per_s": solver.iteration * solver.batch_size / solver.train_time,
           "epochs": solver.iteration / solver.iterations_per_epoch, "train_time": solver.train_time,
           "steps": solver.iteration, "time_to_target": _first_time_at(h.time, h.val_acc, target)}
    if t is not None:
        res["copies"] = {"h2d": t.h2d, "d2h": t.d2h, "h2d_bytes": t.h2d_bytes, "d2h_bytes": t.d2h_bytes}
    return res


class _TorchOn:
    """``torch`` whose ``from_numpy`` puts the tensor on ``device``: TorchRecipe's code, unchanged, on a GPU."""

    def __init__(self, torch, device):
        self._torch, self._device = torch, device

    def from_numpy(self, a):
        return self._torch.from_numpy(a).to(self._device)

    def __getattr__(self, name):
        return getattr(self._torch, name)


def torch_recipe_on(device, recipe, data, seed, budget):
    from numbaconv.torch_recipe import TorchRecipe

    class OnDevice(TorchRecipe):
        def _view_scores(self, X):   # scores back on the host, where accuracy() counts them
            return super()._view_scores(X).cpu()

    rec = OnDevice(recipe, data, seed=seed, budget=budget)
    rec.net.to(device)   # before any optimizer state exists: the optimizer keeps the same parameters
    rec.torch = _TorchOn(rec.torch, device)
    return rec


def run_torch(data, budget, seed, recipe, device, target):
    import torch

    rec = torch_recipe_on(torch.device(device), recipe, data, seed, budget)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    ipe = max(rec.X.shape[0] // rec.batch_size, 1)
    train_time, last, steps, best, times, accs = 0.0, 0.0, 0, -1.0, [], []
    rec.warmup()
    sync()
    while train_time + last <= budget:
        start = time.perf_counter()
        rec.step(train_time / budget)   # returns float(loss): the step has finished on the GPU
        last = time.perf_counter() - start
        train_time += last
        steps += 1
        if steps % ipe == 0:
            accs.append(rec.accuracy(data["X_val"], data["y_val"]))
            times.append(train_time)
    accs.append(rec.accuracy(data["X_val"], data["y_val"]))
    times.append(train_time)
    return {"val_acc": max(accs), "images_per_s": steps * rec.batch_size / train_time, "epochs": steps / ipe,
            "train_time": train_time, "steps": steps, "time_to_target": _first_time_at(times, accs, target)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--dataset", default="synthetic", help="synthetic, cifar10 or an HDF5 file (numbaconv datasets)")
    ap.add_argument("--num-train", type=int, default=None, help="only the first N training images")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of training steps per side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=0.8, help="validation accuracy for the time-to-accuracy column")
    ap.add_argument("--against-torch", action="store_true")
    ap.add_argument("--backend", default="cuda", help="ours (cpu: a smoke test without a GPU)")
    ap.add_argument("--torch-device", default="cuda", help="PyTorch's (cpu: a smoke test without a GPU)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)

    from numbaconv.data import load_dataset
    from numbaconv.recipe import RECIPES

    ds = load_dataset(a.dataset, num_val=RECIPES[a.recipe]["num_val"], num_train=a.num_train)
    data = {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val}
    print(f"{ds.source}: {ds.X_train.shape[0]} train / {ds.X_val.shape[0]} val; recipe {a.recipe}; "
          f"budget {a.budget:g} s per side", flush=True)
    row = {"ours": run_ours(data, a.budget, a.seed, a.recipe, a.backend, a.target)}
    if a.against_torch:
        row["torch"] = run_torch(data, a.budget, a.seed, a.recipe, a.torch_device, a.target)
    for who, r in row.items():
        reach = "not reached" if r["time_to_target"] is None else f"at {r['time_to_target']:.1f} s"
        copies = ""
        if "copies" in r:
            c = r["copies"]
            copies = f"  copies {c['h2d']} up / {c['d2h']} down ({c['h2d'] / max(r['steps'], 1):.2f} / " \
                     f"{c['d2h'] / max(r['steps'], 1):.2f} per step, checks included)"
        print(f"{who:5s}: best val {r['val_acc']:.4f}  {r['images_per_s']:8.0f} img/s  {r['epochs']:.2f} epochs  "
              f"({r['steps']} steps in {r['train_time']:.1f} s); val >= {a.target:g} {reach}{copies}", flush=True)
    if "torch" in row:
        print(f"images/s ours/torch = {row['ours']['images_per_s'] / row['torch']['images_per_s']:.2f} "
              f"(target >= 0.5)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "row": row, "load_avg": os.getloadavg()[0]}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
