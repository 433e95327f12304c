"""Training steps with and without numbaconv.cpu._memory's malloc settings (issue #12): milliseconds,
minor page faults and system time per step.

    .venv/bin/python benchmarks/step_memory.py --dataset /tmp/nbdata/cifar10.h5 --recipe fast --steps 150 --rounds 3

The settings are made when numbaconv.cpu is imported and act on the whole process, so each figure is a
process of its own (this script with --child and NUMBACONV_MALLOC set), the two settings taken in turns
(keep, none, keep, none, ...). Each process builds the recipe's model and Solver, takes --warm steps, then
times --steps steps (Solver._step: minibatch, augmentation, forward, backward, update). The fault count
is the part that does not depend on the machine; what a fault costs does (a lot, in a VM).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = ("keep", "none")   # NUMBACONV_MALLOC: the default, and glibc's own behaviour


def measure(data: dict, recipe: str, steps: int, warm: int, seed: int = 0) -> dict:
    """ms, minor faults and system ms per step of ``recipe`` on ``data``, in this process."""
    import resource
    import time

    from numbaconv.cpu import _memory
    from numbaconv.recipe import recipe_solver

    _, solver = recipe_solver(recipe, data, None, seed=seed, num_epochs=10 ** 6, verbose=False)
    for _ in range(warm):
        solver._step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        solver._step()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"ms": 1e3 * wall / steps, "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
            "sys_ms": 1e3 * (r1.ru_stime - r0.ru_stime) / steps, "max_rss_mb": r1.ru_maxrss / 1024,
            "malloc": _memory.applied()}


def child(a) -> dict:
    import numba

    from numbaconv.data import load_dataset

    numba.set_num_threads(a.threads)
    ds = load_dataset(a.dataset, num_val=1000)
    data = {"X_train": ds.X_train, "y_train": ds.y_train, "X_val": ds.X_val, "y_val": ds.y_val}
    return {**measure(data, a.recipe, a.steps, a.warm), "load_avg": os.getloadavg()[0]}


def run_child(a, setting: str) -> dict:
    """One figure: this script in a fresh process with NUMBACONV_MALLOC=setting; its last line is JSON."""
    env = {**os.environ, "NUMBACONV_MALLOC": setting}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--dataset", a.dataset, "--recipe", a.recipe,
           "--steps", str(a.steps), "--warm", str(a.warm), "--threads", str(a.threads)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the {setting} process failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="cifar10", help="cifar10 (the data home's, from `numbaconv datasets cifar10`), "
                    "synthetic, or an HDF5 file")
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--steps", type=int, default=150, help="timed steps per process")
    ap.add_argument("--warm", type=int, default=20, help="untimed steps first (kernels loaded, buffers allocated)")
    ap.add_argument("--rounds", type=int, default=3, help="turns of keep, none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for name in ("steps", "rounds"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.warm < 0:
        ap.error(f"--warm must be >= 0, got {a.warm}")
    if a.child:
        print(json.dumps(child(a)))
        return 0
    print(f"{a.recipe} recipe on {a.dataset}: {a.steps} steps after {a.warm}, {a.threads} threads, "
          f"{a.rounds} rounds of {', '.join(SETTINGS)}", flush=True)
    figures = {s: [] for s in SETTINGS}
    for _ in range(a.rounds):
        for s in SETTINGS:
            try:
                f = run_child(a, s)
            except RuntimeError as e:   # e.g. no CIFAR file yet: the child's one line says so
                print(f"error: {e}", file=sys.stderr)
                return 1
            figures[s].append(f)
            print(f"{s:5s}: {f['ms']:7.2f} ms/step  {f['faults']:7.0f} faults/step  {f['sys_ms']:6.2f} ms system/step  "
                  f"peak RSS {f['max_rss_mb']:.0f} MB  load {f['load_avg']:.2f}", flush=True)
    ratios = [k["ms"] / n["ms"] for k, n in zip(figures["keep"], figures["none"])]
    print("time keep/none per round: " + ", ".join(f"{r:.2f}" for r in ratios))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"args": vars(a), "figures": figures, "ratios": ratios}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
