"""Train the "fast" recipe for a fixed budget of training-step seconds on a CIFAR-10 HDF5 file.

    .venv/bin/python benchmarks/train_60s.py --dataset /tmp/nbdata/cifar10.h5 --seeds 0 1 2 [--against-torch]

Reports per seed: best val accuracy (BN running stats, flip TTA as the recipe says), test accuracy when the
file has a test split, images/s, epochs. Only training steps count toward the budget (minibatch gather,
augmentation, forward, backward, update), as the Solver's time_limit does; accuracy checks do not.
--against-torch trains the same architecture and recipe (same init scheme, augmentation function, minibatch
stream, schedule, loss, optimizer) in PyTorch CPU for the same budget on the same split, in the same run.
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
    import torch
    import torch.nn as nn

    from numbaconv.models import build_model
    from numbaconv.recipe import RECIPES, TimeSchedule, augment_crop_flip, recipe_model_config

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    r = RECIPES[recipe]
    m = r["model"]
    C = data["X_train"].shape[1]
    layers, c_in = [], C
    num_classes = int(max(data["y_train"].max(), data["y_val"].max())) + 1
    if m.get("whiten"):   # the same frozen stem: fitted by our FastNet's prepare() on the same images
        ours = build_model(recipe_model_config(recipe, data["X_train"].shape[1:], num_classes), seed=seed)
        ours.prepare(data["X_train"])
        ww, cp = ours.params["whiten_W"], ours.whiten_conv_param
        stem = nn.Conv2d(C, ww.shape[0], ww.shape[2], stride=cp["stride"], padding=cp["pad"])
        with torch.no_grad():
            stem.weight.copy_(torch.from_numpy(ww))
            stem.bias.copy_(torch.from_numpy(ours.params["whiten_b"]))
        stem.requires_grad_(False)
        layers, c_in = [stem], ww.shape[0]
    plan = ([(m["stem"], False)] if m["stem"] else [])
    for w in m["widths"]:
        plan += [(w, True)] + [(w, False)] * (m["convs_per_group"] - 1)
    for F, pool in plan:   # conv - BN - ReLU - pool, the order of our Conv_BatchNorm_ReLU_Pool
        conv = nn.Conv2d(c_in, F, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.BatchNorm2d(F, momentum=0.1), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
        c_in = F
    fc = nn.Linear(c_in, num_classes)
    nn.init.normal_(fc.weight, std=(1.0 / c_in) ** 0.5)
    nn.init.zeros_(fc.bias)
    net = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), fc)
    scale = m["logit_scale"]
    trained = [p for p in net.parameters() if p.requires_grad]    # not the frozen stem
    decay = [p for p in trained if p.ndim > 1]       # conv and linear weights only
    no_decay = [p for p in trained if p.ndim <= 1]    # biases, BN gamma/beta
    oc = r["optim_config"]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": oc["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=r["peak_lr"], momentum=oc["momentum"], nesterov=True)
    sched = TimeSchedule(r["peak_lr"], budget, warmup=r["warmup"], shape=r["shape"])
    lossf = nn.CrossEntropyLoss(label_smoothing=m["smoothing"])
    augment = augment_crop_flip(r["pad"], r["flip"])
    rng = np.random.default_rng(seed)
    Xtr, ytr = data["X_train"], data["y_train"]
    B = r["batch_size"]
    ipe = max(Xtr.shape[0] // B, 1)

    def accuracy(X, y):
        net.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, X.shape[0], 500):
                xb = torch.from_numpy(np.ascontiguousarray(X[s:s + 500]))
                scores = net(xb)
                if m["tta_flip"]:
                    scores = 0.5 * (scores + net(torch.flip(xb, dims=[3])))
                correct += int((scores.argmax(1).numpy() == y[s:s + 500]).sum())
        net.train()
        return correct / X.shape[0]

    class _T:   # what TimeSchedule reads
        train_time = 0.0
    t, last, steps, best, best_state = _T(), 0.0, 0, -1.0, None
    # warm-up step outside the clock (like Solver.warmup), its update thrown away
    state0 = {k: v.clone() for k, v in net.state_dict().items()}
    lossf(net(torch.from_numpy(Xtr[:B])), torch.from_numpy(ytr[:B])).backward()
    net.load_state_dict(state0)
    opt.zero_grad(set_to_none=True)
    while t.train_time + last <= budget:
        start = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = sched.peak_lr * sched.factor(t.train_time / budget)
        idx = rng.choice(Xtr.shape[0], B)
        xb, yb = augment(Xtr[idx], ytr[idx], rng)
        loss = lossf(net(torch.from_numpy(np.ascontiguousarray(xb))) * scale, torch.from_numpy(yb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = time.perf_counter() - start
        t.train_time += last
        steps += 1
        if steps % ipe == 0:
            acc = accuracy(data["X_val"], data["y_val"])
            if acc > best:
                best, best_state = acc, {k: v.clone() for k, v in net.state_dict().items()}
    acc = accuracy(data["X_val"], data["y_val"])
    if acc > best:
        best, best_state = acc, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    res = {"val_acc": best, "images_per_s": steps * B / t.train_time, "epochs": steps / ipe,
           "train_time": t.train_time, "steps": steps}
    if X_test is not None:
        res["test_acc"] = accuracy(X_test, y_test)
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
    ds = load_dataset(a.dataset, num_val=1000)
    data = {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val}
    print(f"{ds.source}: {ds.X_train.shape[0]} train / {ds.X_val.shape[0]} val / "
          f"{0 if ds.X_test is None else ds.X_test.shape[0]} test; budget {a.budget:g} s; threads {a.threads}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for seed in a.seeds:
        row = {"seed": seed, "ours": run_ours(data, ds.X_test, ds.y_test, a.budget, seed, a.recipe)}
        if a.against_torch:
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
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
