"""Where the time of a cuda conv forward+backward goes, kernel by kernel.

Wraps the backend's single launch point and its allocator, synchronising around
each call, so each launch's time (Python launch overhead + GPU run) and each
allocation's time are seen separately. For tuning on a GPU machine:

    python3 benchmarks/cuda_kernel_times.py [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import numpy as np

from numbaconv import get_backend
from numbaconv.bench import CIFAR_SHAPES, _inputs, numbaconv_op
from numbaconv.cuda import _runtime, conv, reductions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", default=None)
    parser.add_argument("--dx-gather", action="store_true",
                        help="conv dx by the gathering kernel even where the flipped-filter GEMM would run")
    parser.add_argument("--dispatch", action="store_true",
                        help="launch through numba's dispatcher instead of the direct launcher")
    args = parser.parse_args()
    _runtime.DIRECT_LAUNCH = not args.dispatch
    if args.dx_gather:
        conv.uses_flipped_gemm_for_dx = lambda g: False
    from numba import cuda

    times = defaultdict(list)
    real_launch, real_empty = _runtime.launch, _runtime.empty

    def timed(label, fn, *a):
        cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*a)
        cuda.synchronize()
        times[label].append((time.perf_counter() - t0) * 1e3)
        return out

    def launch(name, *a):
        return timed(f"launch {name}", real_launch, name, *a)

    def empty(*a):
        return timed("allocate", real_empty, *a)

    for module in (conv, reductions):
        module.launch, module.empty = launch, empty
    report = {}
    for shape in (s for s in CIFAR_SHAPES if s.kind == "conv"):
        a = {k: cuda.to_device(v) for k, v in _inputs(shape, np.float32).items()}
        fn = numbaconv_op(get_backend("cuda"), "conv forward+backward", shape, a)
        fn()
        times.clear()
        total = []
        for _ in range(args.repeat):
            cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            cuda.synchronize()
            total.append((time.perf_counter() - t0) * 1e3)
        rows = {k: (statistics.median(v), len(v) // args.repeat) for k, v in times.items()}
        report[shape.label] = {"total_ms_median": statistics.median(total),
                               "parts": {k: {"ms_median": m, "per_call": n} for k, (m, n) in rows.items()}}
        print(f"{shape.label}: forward+backward {statistics.median(total):.3f} ms (synchronised per part)")
        for k, (m, n) in sorted(rows.items(), key=lambda kv: -kv[1][0] * kv[1][1]):
            print(f"  {k:32} {m:8.3f} ms x {n}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
