"""Benchmark harness: time each layer op of a backend against the reference and,
when installed, PyTorch, on the same inputs in one run.

Used by ``numbaconv bench`` and by ``benchmarks/bench_cpu.py`` (the op and shape
tables live here, once). Any backend name works: for the cuda backend the inputs
are copied to the device once, ``nb.synchronize()`` is called after every timed
call, and the cpu backend is timed beside it.

>>> from numbaconv.bench import SMALL_SHAPES, run_benchmarks
>>> rows = run_benchmarks("cpu", "float32", SMALL_SHAPES[:1], repeat=1, torch=False)  # doctest: +SKIP
>>> rows[0]["op"]                                                                       # doctest: +SKIP
'conv forward'

Times are the best of ``repeat`` calls after one warm-up call (the minimum is the
figure least disturbed by other work on a shared machine); ratios compare numbers
taken in the same run, with the calls of the compared implementations interleaved.
"""
from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .backends import get_backend


@dataclass(frozen=True)
class Shape:
    """One benchmark input: ``kind`` is conv, pool or bn (spatial batch norm)."""
    kind: str
    label: str
    x: tuple            # (N, C, H, W)
    f: int = 0          # conv filters
    k: int = 3          # conv kernel size (square) / pool window
    stride: int = 1
    pad: int = 1


# Small shapes: the reference finishes on these, so speedups over it are measured.
SMALL_SHAPES = (
    Shape("conv", "conv 3x3 8->16 @ 16x16, N=8", (8, 8, 16, 16), f=16),
    Shape("pool", "pool 2x2/2 on (8,16,16,16)", (8, 16, 16, 16), k=2, stride=2, pad=0),
    Shape("bn", "spatial BN (8,16,16,16)", (8, 16, 16, 16)),
)
# CIFAR-scale shapes (N=128): a conv net's layers on 32x32 images.
CIFAR_SHAPES = (
    Shape("conv", "conv 3x3 3->32 @ 32x32", (128, 3, 32, 32), f=32),
    Shape("conv", "conv 3x3 32->64 @ 16x16", (128, 32, 16, 16), f=64),
    Shape("conv", "conv 3x3 64->128 @ 8x8", (128, 64, 8, 8), f=128),
    Shape("pool", "pool 2x2/2 on (128,32,32,32)", (128, 32, 32, 32), k=2, stride=2, pad=0),
    Shape("bn", "spatial BN (128,64,16,16)", (128, 64, 16, 16)),
)
# The assignment's own timing cells (its "naive vs fast" speedups, the 100x / 500x
# bars): the reference is timed on them however long it takes (~10-30 s).
ASSIGNMENT_SHAPES = (
    Shape("conv", "assignment conv (100,3,31,31) 25x3x3 s2 p1", (100, 3, 31, 31), f=25, stride=2, pad=1),
    Shape("pool", "assignment pool (100,3,32,32) 2x2/2", (100, 3, 32, 32), k=2, stride=2, pad=0),
)
SHAPE_SETS = {"small": SMALL_SHAPES, "cifar": CIFAR_SHAPES, "assignment": ASSIGNMENT_SHAPES}

# The reference runs one Python-level loop iteration per output element (conv: per
# (n, f, i, j)); above this many it takes minutes, so it is left out, except on
# the assignment's shapes.
REFERENCE_MAX_ITERATIONS = 40_000
REFERENCE_LIMITS = {"small": REFERENCE_MAX_ITERATIONS, "cifar": REFERENCE_MAX_ITERATIONS, "assignment": None}


def machine_info() -> dict:
    """Cores, CPU model, thread counts and library versions, for the table header."""
    import numba

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": _threading_layer(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "blas": _blas_name(),
        # a shared machine: the load while the numbers were taken is part of the numbers
        "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    torch = _torch()
    if torch is not None:
        info["torch"] = torch.__version__
    return info


def _threading_layer() -> str:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return numba.config.THREADING_LAYER


def _blas_name() -> str:
    try:
        from threadpoolctl import threadpool_info

        libs = [f"{d['internal_api']} {d.get('version') or ''} ({d['num_threads']} threads)".replace("  ", " ")
                for d in threadpool_info() if d["user_api"] == "blas"]
        return ", ".join(libs) or "none found"
    except Exception:  # informational only
        return "unknown"


def _torch():
    """PyTorch if installed (the optional ``bench`` extra), else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextmanager
def _torch_threads(torch, n: int):
    """PyTorch on the same thread count as Numba, restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def best_ms(fn: Callable[[], object], repeat: int, sync: Callable[[], None] | None = None,
            warmup: bool = True) -> float:
    """Best wall time of ``repeat`` calls after one warm-up call (unless ``warmup``
    is False: the reference compiles nothing), in milliseconds."""
    if warmup:
        fn()
        if sync:
            sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def interleaved_best_ms(fns: dict, repeat: int, syncs: dict | None = None) -> dict:
    """Like best_ms for several callables, taking turns, so that a burst of load on a
    shared machine hits all of them alike and the ratios stay fair."""
    syncs = syncs or {}
    for name, fn in fns.items():
        fn()
        if syncs.get(name):
            syncs[name]()
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if syncs.get(name):
                syncs[name]()
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: t * 1e3 for name, t in best.items()}


# --- ops ---------------------------------------------------------------------------

def _inputs(shape: Shape, dtype: np.dtype, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape.x).astype(dtype)
    N, C, H, W = shape.x
    if shape.kind == "conv":
        Ho = 1 + (H + 2 * shape.pad - shape.k) // shape.stride
        Wo = 1 + (W + 2 * shape.pad - shape.k) // shape.stride
        w = (rng.standard_normal((shape.f, C, shape.k, shape.k)) * np.sqrt(2.0 / (C * shape.k ** 2))).astype(dtype)
        return {"x": x, "w": w, "b": np.zeros(shape.f, dtype),
                "dout": rng.standard_normal((N, shape.f, Ho, Wo)).astype(dtype)}
    if shape.kind == "pool":
        Ho = 1 + (H - shape.k) // shape.stride
        Wo = 1 + (W - shape.k) // shape.stride
        return {"x": x, "dout": rng.standard_normal((N, C, Ho, Wo)).astype(dtype)}
    return {"x": x, "gamma": np.ones(C, dtype), "beta": np.zeros(C, dtype),
            "dout": rng.standard_normal(shape.x).astype(dtype)}


def conv_flops(shape: Shape) -> float:
    """Multiply-adds x 2 of one conv forward; backward (dx and dw) is twice that."""
    N, C, H, W = shape.x
    Ho = 1 + (H + 2 * shape.pad - shape.k) // shape.stride
    Wo = 1 + (W + 2 * shape.pad - shape.k) // shape.stride
    return 2.0 * N * shape.f * Ho * Wo * C * shape.k * shape.k


def ops_for(shape: Shape, bn_alt: bool = False) -> list[str]:
    """The op rows benchmarked for a shape."""
    if shape.kind == "conv":
        return ["conv forward", "conv forward+backward"]
    if shape.kind == "pool":
        return ["max pool forward+backward"]
    rows = ["spatial BN forward+backward"]
    if bn_alt:
        rows += ["spatial BN backward (graph)", "spatial BN backward_alt (closed form)"]
    return rows


def numbaconv_op(nb, op: str, shape: Shape, a: dict) -> Callable[[], object]:
    """A no-argument callable running ``op`` of backend ``nb`` on inputs ``a``."""
    cp = {"stride": shape.stride, "pad": shape.pad}
    pp = {"pool_height": shape.k, "pool_width": shape.k, "stride": shape.stride}
    if op == "conv forward":
        return lambda: nb.Conv.forward(a["x"], a["w"], a["b"], cp)
    if op == "conv forward+backward":
        def run():
            out, cache = nb.Conv.forward(a["x"], a["w"], a["b"], cp)
            return nb.Conv.backward(a["dout"], cache)
        return run
    if op == "max pool forward+backward":
        def run():
            out, cache = nb.MaxPool.forward(a["x"], pp)
            return nb.MaxPool.backward(a["dout"], cache)
        return run
    if op == "spatial BN forward+backward":
        def run():
            out, cache = nb.SpatialBatchNorm.forward(a["x"], a["gamma"], a["beta"], {"mode": "train"})
            return nb.SpatialBatchNorm.backward_alt(a["dout"], cache)
        return run
    if op.startswith("spatial BN backward"):
        _, cache = nb.SpatialBatchNorm.forward(a["x"], a["gamma"], a["beta"], {"mode": "train"})
        method = nb.SpatialBatchNorm.backward_alt if "alt" in op else nb.SpatialBatchNorm.backward
        return lambda: method(a["dout"], cache)
    raise ValueError(f"unknown op {op!r}")


def torch_op(torch, op: str, shape: Shape, a: dict, device: str = "cpu") -> Callable[[], object] | None:
    """The same op in PyTorch (autograd for the backward), or None where it has no counterpart."""
    F = torch.nn.functional
    t = {k: torch.from_numpy(v).to(device) for k, v in a.items()}
    if op == "conv forward":
        def run():
            with torch.no_grad():
                return F.conv2d(t["x"], t["w"], t["b"], shape.stride, shape.pad)
        return run
    if op == "conv forward+backward":
        x, w, b = (t[k].clone().requires_grad_() for k in ("x", "w", "b"))
        def run():
            F.conv2d(x, w, b, shape.stride, shape.pad).backward(t["dout"])
            x.grad = w.grad = b.grad = None
        return run
    if op == "max pool forward+backward":
        x = t["x"].clone().requires_grad_()
        def run():
            F.max_pool2d(x, shape.k, shape.stride).backward(t["dout"])
            x.grad = None
        return run
    if op == "spatial BN forward+backward":
        x, g, b = (t[k].clone().requires_grad_() for k in ("x", "gamma", "beta"))
        rm, rv = torch.zeros_like(g), torch.ones_like(g)
        def run():
            F.batch_norm(x, rm, rv, g, b, training=True, momentum=0.1, eps=1e-5).backward(t["dout"])
            x.grad = g.grad = b.grad = None
        return run
    return None


def _reference_cost(shape: Shape) -> int:
    N, C, H, W = shape.x
    if shape.kind == "conv":
        return N * shape.f * H * W // shape.stride ** 2
    if shape.kind == "pool":
        return N * C * H * W // shape.stride ** 2
    return 0  # batch norm is vectorised NumPy in the reference


def _to_device(nb, a: dict) -> dict:
    if getattr(nb, "NAME", "") != "cuda":
        return a
    from numba import cuda

    return {k: cuda.to_device(v) for k, v in a.items()}


def run_benchmarks(backend: str, dtype: str, shapes=CIFAR_SHAPES, repeat: int = 5, reference: bool = True,
                   torch: bool = True, bn_alt: bool = False, compare_cpu: bool | None = None,
                   reference_max_iterations: int | None = REFERENCE_MAX_ITERATIONS) -> list[dict]:
    """Time every op of ``backend`` on ``shapes``; one dict per (op, shape).
    The reference is timed where its loop count is at most ``reference_max_iterations``
    (None: always): best of up to 3 calls, one call above REFERENCE_MAX_ITERATIONS.

    Keys: op, shape, ms (the backend), reference_ms, speedup (reference/backend),
    gflops (conv only), torch_ms, torch_ratio (backend/torch: below 1 is faster),
    and for a non-cpu backend cpu_ms and speedup_vs_cpu. Missing values are None.
    """
    import numba

    dtype = np.dtype(dtype)
    nb = get_backend(backend)
    ref = get_backend("reference") if reference else None
    if compare_cpu is None:
        compare_cpu = backend not in ("cpu", "reference")
    cpu = get_backend("cpu") if compare_cpu else None
    sync = getattr(nb, "synchronize", None)
    th = _torch() if torch else None
    tdev = "cuda" if backend == "cuda" else "cpu"
    if th is not None and tdev == "cuda" and not th.cuda.is_available():
        th = None
    rows = []
    for shape in shapes:
        a = _inputs(shape, dtype)
        a_dev = _to_device(nb, a)
        for op in ops_for(shape, bn_alt):
            fns = {"ms": numbaconv_op(nb, op, shape, a_dev)}
            syncs = {"ms": sync}
            if cpu is not None:
                fns["cpu_ms"] = numbaconv_op(cpu, op, shape, a)
            if th is not None:
                top = torch_op(th, op, shape, a, tdev)
                if top is not None:
                    fns["torch_ms"] = top
                    syncs["torch_ms"] = th.cuda.synchronize if tdev == "cuda" else None
            if th is not None:
                with _torch_threads(th, numba.get_num_threads()):
                    times = interleaved_best_ms(fns, repeat, syncs)
            else:
                times = interleaved_best_ms(fns, repeat, syncs)
            row = {"op": op, "shape": shape.label, "dtype": dtype.name, "backend": backend, **times}
            row.setdefault("torch_ms", None)
            cost = _reference_cost(shape)
            if ref is not None and backend != "reference" and (reference_max_iterations is None
                                                                or cost <= reference_max_iterations):
                row["reference_ms"] = best_ms(numbaconv_op(ref, op, shape, a),
                                              1 if cost > REFERENCE_MAX_ITERATIONS else max(1, min(repeat, 3)),
                                              warmup=False)
                row["speedup"] = row["reference_ms"] / row["ms"]
            else:
                row["reference_ms"] = row["speedup"] = None
            flops = None
            if op == "conv forward":
                flops = conv_flops(shape)
            elif op == "conv forward+backward":
                flops = 3 * conv_flops(shape)
            row["gflops"] = flops / row["ms"] / 1e6 if flops else None
            row["torch_ratio"] = row["ms"] / row["torch_ms"] if row["torch_ms"] else None
            if cpu is not None:
                row["speedup_vs_cpu"] = row["cpu_ms"] / row["ms"]
            rows.append(row)
    return rows
