"""Training steps in S seconds on a quiet and on a busy machine (issue #12's measurement).

    .venv/bin/python benchmarks/busy_steps.py                       # train --dataset synthetic --batchnorm, 12 s
    .venv/bin/python benchmarks/busy_steps.py --dataset /tmp/nbdata/cifar10.h5 --recipe fast --seconds 20
    .venv/bin/python benchmarks/busy_steps.py --candidates none passive spin-10k workqueue free-cores

Four figures per thread setting: steps made in --seconds of training-step time (numbaconv.run's
plan and the Solver's time limit, as `numbaconv train --time-budget` counts them) with the default
threads and with 1 thread, on the quiet machine and beside --busy competing busy processes
(numbaconv.bench.busy_processes, killed afterwards), taken in turns. Then the two ratios of
issue #12's targets: busy default / busy 1-thread (target >= 1) and busy default / quiet default
(target >= 0.6). Quiet means: nothing of ours competing; the machine's load average is printed
beside each figure, so a machine that was not quiet shows.

--candidates: the thread settings of numbaconv.cpu._threads to compare (each a comma-separated list,
"none" for numba's defaults). They act on the whole process (threading layer, libgomp's variables),
so with more than one, each runs in a process of its own (this script, with
NUMBACONV_THREAD_CANDIDATES set) and a summary table closes the output.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def measure(dataset: str, recipe: str | None, seconds: float, busy: int, rounds: int, seed: int = 0,
            num_train: int | None = None, num_val: int = 1000) -> dict:
    """The four step counts (each the median over ``rounds``) and the two ratios, in this process."""
    import numpy as np

    import numbaconv.cpu  # noqa: F401  (applies NUMBACONV_THREAD_CANDIDATES before numba starts its threads)
    from numbaconv.bench import busy_processes, machine_info
    from numbaconv.run import RunSpec, make_plan, numba_threads

    if recipe:
        spec = RunSpec(out="unused", dataset=dataset, recipe=recipe, time_budget=seconds, seed=seed,
                       num_train=num_train, num_val=num_val)
    else:
        spec = RunSpec(out="unused", dataset=dataset, batchnorm=True, time_budget=seconds, seed=seed,
                       num_train=num_train, num_val=num_val)

    def steps(threads):
        plan = make_plan(spec)         # a fresh model and Solver: every figure starts alike
        with numba_threads(threads):
            plan.solver.warmup()       # compiling or loading kernels is not training time
            plan.solver.train(time_limit=seconds)
        return plan.solver.iteration

    import numba

    default = numba.get_num_threads()
    figures = {k: [] for k in ("quiet_default", "quiet_1", "busy_default", "busy_1")}
    loads = {k: [] for k in figures}
    for _ in range(rounds):   # in turns, so that a drift in the machine's load hits all four alike
        for key, threads, n_busy in (("quiet_default", None, 0), ("quiet_1", 1, 0),
                                     ("busy_default", None, busy), ("busy_1", 1, busy)):
            with busy_processes(n_busy):
                figures[key].append(steps(threads))
                loads[key].append(os.getloadavg()[0])
            print(f"  {key:14s} {figures[key][-1]:5d} steps in {seconds:g} s  (load {loads[key][-1]:.2f})",
                  flush=True)
    med = {k: float(np.median(v)) for k, v in figures.items()}
    return {"dataset": dataset, "recipe": recipe, "seconds": seconds, "busy": busy, "rounds": rounds,
            "default_threads": default, "steps": med, "steps_each_round": figures, "load_avg": loads,
            "busy_vs_1thread": med["busy_default"] / med["busy_1"] if med["busy_1"] else None,
            "busy_vs_quiet": med["busy_default"] / med["quiet_default"] if med["quiet_default"] else None,
            "machine": machine_info(busy)}


def report(res: dict) -> None:
    s = res["steps"]
    cand = "+".join(res["machine"]["thread_candidates"]) or "none"
    print(f"candidates {cand}: quiet {s['quiet_default']:g} ({res['default_threads']} threads) / {s['quiet_1']:g} "
          f"(1 thread); busy {s['busy_default']:g} / {s['busy_1']:g}; busy/1-thread "
          f"{res['busy_vs_1thread']:.2f} (target >= 1), busy/quiet {res['busy_vs_quiet']:.2f} (target >= 0.6)"
          + "".join(f"; {n}" for n in res["machine"]["thread_notes"]), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="synthetic", help="synthetic, cifar10 or an HDF5 file")
    ap.add_argument("--recipe", default=None, help="a recipe (e.g. fast); default: the deep net with batch norm")
    ap.add_argument("--seconds", type=float, default=12.0, help="seconds of training steps per figure")
    ap.add_argument("--busy", type=int, default=1, help="competing busy processes for the busy figures")
    ap.add_argument("--num-train", type=int, default=None, help="training images (default: the dataset's)")
    ap.add_argument("--num-val", type=int, default=1000, help="validation images (checked at epoch ends, "
                    "outside the counted time)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the four figures (medians reported)")
    ap.add_argument("--candidates", nargs="+", default=None,
                    help="thread candidates to compare, each comma-separated or 'none' (numbaconv.cpu._threads)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    if a.seconds <= 0 or a.busy < 1 or a.rounds < 1:
        ap.error(f"--seconds must be > 0, --busy and --rounds >= 1; got {a.seconds:g}, {a.busy}, {a.rounds}")
    specs = a.candidates or [None]
    if len(specs) == 1 and specs[0] is not None:
        # before numbaconv.cpu is first imported: that import reads the variable, once per process
        os.environ["NUMBACONV_THREAD_CANDIDATES"] = specs[0]
    from numbaconv.cpu._threads import ENV, parse

    for spec in specs:
        try:
            parse(spec)
        except ValueError as e:
            ap.error(str(e))
    results = []
    if len(specs) == 1:
        results.append(measure(a.dataset, a.recipe, a.seconds, a.busy, a.rounds, num_train=a.num_train,
                               num_val=a.num_val))
        report(results[-1])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for i, spec in enumerate(specs):   # each in a process of its own: the settings are per process
                out = os.path.join(tmp, f"{i}.json")
                env = {**os.environ, ENV: spec}
                args = [sys.executable, __file__, "--dataset", a.dataset, "--seconds", str(a.seconds),
                        "--busy", str(a.busy), "--rounds", str(a.rounds), "--json", out]
                args += ["--recipe", a.recipe] if a.recipe else []
                args += ["--num-train", str(a.num_train)] if a.num_train else []
                args += ["--num-val", str(a.num_val)]
                print(f"== candidates {spec}", flush=True)
                r = subprocess.run(args, env=env)
                if r.returncode != 0:
                    print(f"candidates {spec}: failed (exit {r.returncode})", flush=True)
                    continue
                with open(out) as fh:
                    results.extend(json.load(fh)["results"])
        print("== summary")
        for res in results:
            report(res)
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"args": vars(a), "results": results}, fh, indent=1)
        os.replace(tmp, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
