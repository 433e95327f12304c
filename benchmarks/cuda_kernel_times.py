"""Where the time of a cuda conv forward+backward goes, kernel by kernel.

Wraps the backend's single launch point and its allocator, synchronising around
each call, so each launch's time (Python launch overhead + GPU run) and each
allocation's time are seen separately. ``--op fused`` times the fused
conv-BN-ReLU-pool layer instead, ``--op composed`` the same layer as the
composition of the single layers (the sandwich). For tuning on a GPU machine:

    python3 benchmarks/cuda_kernel_times.py [--op conv|fused|composed] [--json FILE]
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
from numbaconv.cuda import _runtime, batchnorm, conv, fused, pool, reductions, relu
from numbaconv.layers import sandwiches

POOL = {"pool_height": 2, "pool_width": 2, "stride": 2}


def conv_bn_relu_pool(layer, a: dict, shape):
    """forward+backward of a conv-BN-ReLU-pool layer on device inputs ``a`` (train mode)."""
    from numba import cuda

    cp = {"stride": shape.stride, "pad": shape.pad}
    F = a["w"].shape[0]
    gamma, beta = cuda.to_device(np.ones(F, np.float32)), cuda.to_device(np.zeros(F, np.float32))
    N, _, Ho, Wo = a["dout"].shape
    dout = cuda.to_device(np.ones((N, F, Ho // 2, Wo // 2), np.float32))
    bn_param = {"mode": "train"}

    def run():
        out, cache = layer.forward(a["x"], a["w"], a["b"], gamma, beta, cp, bn_param, POOL)
        return layer.backward(dout, cache)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--op", choices=("conv", "fused", "composed"), default="conv",
                        help="conv forward+backward, or conv-BN-ReLU-pool fused or composed of the single layers")
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

    for module in (conv, reductions, batchnorm, fused, pool, relu):
        module.launch, module.empty = launch, empty
    report = {}
    for shape in (s for s in CIFAR_SHAPES if s.kind == "conv"):
        a = {k: cuda.to_device(v) for k, v in _inputs(shape, np.float32).items()}
        nb = get_backend("cuda")
        if args.op == "conv":
            fn = numbaconv_op(nb, "conv forward+backward", shape, a)
        else:
            layer = nb.Conv_BatchNorm_ReLU_Pool if args.op == "fused" else sandwiches(nb).Conv_BatchNorm_ReLU_Pool
            fn = conv_bn_relu_pool(layer, a, shape)
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
        print(f"{shape.label} ({args.op}): forward+backward {statistics.median(total):.3f} ms "
              "(synchronised per part)")
        for k, (m, n) in sorted(rows.items(), key=lambda kv: -kv[1][0] * kv[1][1]):
            print(f"  {k:32} {m:8.3f} ms x {n}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
