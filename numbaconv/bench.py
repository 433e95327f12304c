"""Benchmark harness: time each layer op of a backend against the reference and,
when installed, PyTorch, on the same inputs in one run.

Used by ``numbaconv bench`` and by ``benchmarks/bench_cpu.py`` (the op and shape
tables live here, once: ``OPS``, ``SHAPE_SETS``). ``run_step_benchmark`` times a whole
training step against PyTorch; ``busy_processes`` runs competing busy processes beside
any of it. Any backend name works: for the cuda backend the inputs
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
# The long recipe's layers (N=256, 3x3, pad 1) and batch norm on their outputs: minutes on 2 cores,
# so not part of "all".
WIDE_SHAPES = (
    Shape("conv", "conv 3x3 64->128 @ 32x32, N=256", (256, 64, 32, 32), f=128),
    Shape("conv", "conv 3x3 128->128 @ 16x16, N=256", (256, 128, 16, 16), f=128),
    Shape("conv", "conv 3x3 128->256 @ 8x8, N=256", (256, 128, 8, 8), f=256),
    Shape("conv", "conv 3x3 256->256 @ 4x4, N=256", (256, 256, 4, 4), f=256),
    Shape("bn", "spatial BN (256,128,32,32)", (256, 128, 32, 32)),
    Shape("bn", "spatial BN (256,128,16,16)", (256, 128, 16, 16)),
    Shape("bn", "spatial BN (256,256,8,8)", (256, 256, 8, 8)),
    Shape("bn", "spatial BN (256,256,4,4)", (256, 256, 4, 4)),
)
SHAPE_SETS = {"small": SMALL_SHAPES, "cifar": CIFAR_SHAPES, "assignment": ASSIGNMENT_SHAPES, "wide": WIDE_SHAPES}

# The reference runs one Python-level loop iteration per output element (conv: per
# (n, f, i, j)); above this many it takes minutes, so it is left out, except on
# the assignment's shapes.
REFERENCE_MAX_ITERATIONS = 40_000
REFERENCE_LIMITS = {"small": REFERENCE_MAX_ITERATIONS, "cifar": REFERENCE_MAX_ITERATIONS, "assignment": None,
                    "wide": REFERENCE_MAX_ITERATIONS}


def machine_info(busy: int = 0) -> dict:
    """Cores, CPU model, thread counts and library versions, for the table header; ``busy``:
    the competing busy processes running beside the measurement (``busy_processes``)."""
    import numba

    from .cpu import _memory, _threads, winograd   # importing the cpu backend applies thread and malloc settings first

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    threads, memory = _threads.applied(), _memory.applied()
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
        "busy_processes": busy,
        # numbaconv.cpu._threads candidates chosen for this measurement (none: numba's defaults)
        "thread_candidates": threads["candidates"],
        "thread_notes": threads["notes"],
        # numbaconv.cpu._memory: glibc malloc thresholds set (name -> bytes; empty: malloc's own)
        "malloc_settings": memory["settings"],
        "malloc_note": memory["note"],
        # which rows of winograd.F4_WHERE pick F(4x4) on this CPU (they were measured per kind)
        "winograd_rows": winograd.F4_KIND,
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


def load_torch_first() -> None:
    """Import PyTorch (if installed) before ``numbaconv.cpu``, so that it keeps its own OpenMP waiting.

    Its CPU wheel uses the system's libgomp, the runtime numba's omp layer loads too, and libgomp reads
    its wait policy once, when it loads: loaded by ``numbaconv.cpu`` it takes our "passive" candidate,
    which made PyTorch's fast-recipe step 16.8 ms against 12.8 (RESULTS.md, "A new machine ...").
    Loaded first, PyTorch keeps libgomp's default and ours shares it (the thread notes say so)."""
    import sys

    if "numbaconv.cpu" not in sys.modules:
        _torch()


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


def interleaved_times(fns: dict, repeat: int, syncs: dict | None = None) -> dict:
    """Every callable once (warm-up, not timed), then ``repeat`` rounds taking turns, so that a
    burst of load on a shared machine hits all of them alike and the ratios stay fair.
    Returns each callable's ``repeat`` times in seconds."""
    syncs = syncs or {}
    for name, fn in fns.items():
        fn()
        if syncs.get(name):
            syncs[name]()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if syncs.get(name):
                syncs[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_best_ms(fns: dict, repeat: int, syncs: dict | None = None) -> dict:
    """Like best_ms for several callables, taking turns (``interleaved_times``): the best, in ms."""
    return {name: min(t) * 1e3 for name, t in interleaved_times(fns, repeat, syncs).items()}


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


# One row per op: which shape kinds it applies to, the numbaconv call, the PyTorch call (None: no
# counterpart) and its FLOP count (None: not reported). A new op is one entry here.

def _conv_param(shape: Shape) -> dict:
    return {"stride": shape.stride, "pad": shape.pad}


def _nb_conv_forward(nb, shape, a):
    return lambda: nb.Conv.forward(a["x"], a["w"], a["b"], _conv_param(shape))


def _nb_conv_forward_backward(nb, shape, a):
    def run():
        out, cache = nb.Conv.forward(a["x"], a["w"], a["b"], _conv_param(shape))
        return nb.Conv.backward(a["dout"], cache)
    return run


def _nb_pool_forward_backward(nb, shape, a):
    pp = {"pool_height": shape.k, "pool_width": shape.k, "stride": shape.stride}

    def run():
        out, cache = nb.MaxPool.forward(a["x"], pp)
        return nb.MaxPool.backward(a["dout"], cache)
    return run


def _nb_bn_forward_backward(nb, shape, a):
    def run():
        out, cache = nb.SpatialBatchNorm.forward(a["x"], a["gamma"], a["beta"], {"mode": "train"})
        return nb.SpatialBatchNorm.backward_alt(a["dout"], cache)
    return run


def _nb_bn_backward(method: str):
    def make(nb, shape, a):
        _, cache = nb.SpatialBatchNorm.forward(a["x"], a["gamma"], a["beta"], {"mode": "train"})
        fn = getattr(nb.SpatialBatchNorm, method)
        return lambda: fn(a["dout"], cache)
    return make


def _th_conv_forward(torch, shape, t):
    F = torch.nn.functional

    def run():
        with torch.no_grad():
            return F.conv2d(t["x"], t["w"], t["b"], shape.stride, shape.pad)
    return run


def _th_conv_forward_backward(torch, shape, t):
    F = torch.nn.functional
    x, w, b = (t[k].clone().requires_grad_() for k in ("x", "w", "b"))

    def run():
        F.conv2d(x, w, b, shape.stride, shape.pad).backward(t["dout"])
        x.grad = w.grad = b.grad = None
    return run


def _th_pool_forward_backward(torch, shape, t):
    x = t["x"].clone().requires_grad_()

    def run():
        torch.nn.functional.max_pool2d(x, shape.k, shape.stride).backward(t["dout"])
        x.grad = None
    return run


def _th_bn_forward_backward(torch, shape, t):
    x, g, b = (t[k].clone().requires_grad_() for k in ("x", "gamma", "beta"))
    rm, rv = torch.zeros_like(g), torch.ones_like(g)

    def run():
        torch.nn.functional.batch_norm(x, rm, rv, g, b, training=True, momentum=0.1, eps=1e-5).backward(t["dout"])
        x.grad = g.grad = b.grad = None
    return run


@dataclass(frozen=True)
class Op:
    """One benchmarked op: ``kinds`` of Shape it applies to; ``ours(nb, shape, a)`` and
    ``torch(torch, shape, tensors)`` return a no-argument callable; ``flops(shape)`` counts one call;
    ``bn_alt``: only with ``--bn``."""
    name: str
    kinds: tuple
    ours: Callable
    torch: Callable | None = None
    flops: Callable | None = None
    bn_alt: bool = False


OPS = (
    Op("conv forward", ("conv",), _nb_conv_forward, _th_conv_forward, lambda s: conv_flops(s)),
    # backward computes dx and dw, each as many multiply-adds as the forward
    Op("conv forward+backward", ("conv",), _nb_conv_forward_backward, _th_conv_forward_backward,
       lambda s: 3 * conv_flops(s)),
    Op("max pool forward+backward", ("pool",), _nb_pool_forward_backward, _th_pool_forward_backward),
    Op("spatial BN forward+backward", ("bn",), _nb_bn_forward_backward, _th_bn_forward_backward),
    Op("spatial BN backward (graph)", ("bn",), _nb_bn_backward("backward"), bn_alt=True),
    Op("spatial BN backward_alt (closed form)", ("bn",), _nb_bn_backward("backward_alt"), bn_alt=True),
)
OPS_BY_NAME = {op.name: op for op in OPS}


def _op(name: str) -> Op:
    if name not in OPS_BY_NAME:
        raise ValueError(f"unknown op {name!r}; choose one of {', '.join(OPS_BY_NAME)}")
    return OPS_BY_NAME[name]


def ops_for(shape: Shape, bn_alt: bool = False) -> list[str]:
    """The op rows benchmarked for a shape."""
    return [op.name for op in OPS if shape.kind in op.kinds and (bn_alt or not op.bn_alt)]


def numbaconv_op(nb, op: str, shape: Shape, a: dict) -> Callable[[], object]:
    """A no-argument callable running ``op`` of backend ``nb`` on inputs ``a``."""
    return _op(op).ours(nb, shape, a)


# PyTorch's memory formats for the comparison. channels_last (NHWC) is oneDNN's own layout and the
# faster one on this CPU (conv forward+backward 0.67-0.89x of NCHW's time on the cifar and wide
# shapes, a fast-recipe step ~0.8x), so it is the default: ratios are against PyTorch at its best.
TORCH_LAYOUTS = ("channels_last", "nchw")


def _memory_format(torch, layout: str):
    if layout not in TORCH_LAYOUTS:
        raise ValueError(f"unknown torch layout {layout!r}; choose one of {', '.join(TORCH_LAYOUTS)}")
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def torch_op(torch, op: str, shape: Shape, a: dict, device: str = "cpu",
             layout: str = "channels_last") -> Callable[[], object] | None:
    """The same op in PyTorch (autograd for the backward), or None where it has no counterpart;
    4-d inputs in ``layout``'s memory format (the ops' clones keep it)."""
    make = _op(op).torch
    if make is None:
        return None
    mf = _memory_format(torch, layout)
    return make(torch, shape, {k: (torch.from_numpy(v).to(device).contiguous(memory_format=mf) if v.ndim == 4
                                   else torch.from_numpy(v).to(device)) for k, v in a.items()})


def op_flops(op: str, shape: Shape) -> float | None:
    """FLOPs of one call of ``op`` on ``shape`` (None where the table gives no count)."""
    f = _op(op).flops
    return f(shape) if f else None


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
                   reference_max_iterations: int | None = REFERENCE_MAX_ITERATIONS,
                   torch_layout: str = "channels_last") -> list[dict]:
    """Time every op of ``backend`` on ``shapes``; one dict per (op, shape).
    The reference is timed where its loop count is at most ``reference_max_iterations``
    (None: always): best of up to 3 calls, one call above REFERENCE_MAX_ITERATIONS. PyTorch's
    inputs are in ``torch_layout`` (TORCH_LAYOUTS).

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
                top = torch_op(th, op, shape, a, tdev, torch_layout)
                if top is not None:
                    fns["torch_ms"] = top
                    syncs["torch_ms"] = th.cuda.synchronize if tdev == "cuda" else None
            if th is not None:
                with _torch_threads(th, numba.get_num_threads()):
                    times = interleaved_best_ms(fns, repeat, syncs)
            else:
                times = interleaved_best_ms(fns, repeat, syncs)
            row = {"op": op, "shape": shape.label, "dtype": dtype.name, "backend": backend, **times,
                   "torch_layout": torch_layout if "torch_ms" in times else None}
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
            flops = op_flops(op, shape)
            row["gflops"] = flops / row["ms"] / 1e6 if flops else None
            row["torch_ratio"] = row["ms"] / row["torch_ms"] if row["torch_ms"] else None
            if cpu is not None:
                row["speedup_vs_cpu"] = row["cpu_ms"] / row["ms"]
            rows.append(row)
    return rows


# --- a whole training step ---------------------------------------------------------------------

def step_data(n: int = 1024, input_dims=(3, 32, 32), num_classes: int = 10, seed: int = 0) -> dict:
    """Random CIFAR-shaped splits (float32, zero-mean pixels) for timing steps: the time of a step
    does not depend on the values, and no dataset has to be on disk."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n,) + tuple(input_dims)).astype(np.float32) * 0.25
    y = rng.integers(0, num_classes, n)
    y[:num_classes] = np.arange(num_classes)   # every class present: both sides count the same classes
    return {"X_train": X, "y_train": y, "X_val": X[:num_classes], "y_val": y[:num_classes]}


def run_step_benchmark(recipe: str = "fast", repeat: int = 5, torch: bool = True, seed: int = 0,
                       data: dict | None = None, torch_layout: str = "channels_last") -> dict:
    """One training step (minibatch gather, augmentation, forward, backward, update) of ``recipe``
    with the cpu backend against the same network in PyTorch (numbaconv.torch_recipe), in turns
    (ours, theirs, ours, ...) after one warm-up step each, on Numba's thread count.

    Keys: op, recipe, batch, ms and median_ms (ours), images_per_s, torch_ms, torch_median_ms,
    torch_images_per_s, torch_ratio (ours/PyTorch time: below 1 is faster), images_per_s_ratio
    (ours/PyTorch images/s, the figure of issue #12's target). Missing values are None."""
    import numba

    from .recipe import recipe_solver

    data = step_data(seed=seed) if data is None else data
    model, solver = recipe_solver(recipe, data, None, seed=seed, verbose=False)
    solver.warmup()
    fns = {"ms": solver._step}
    th = _torch() if torch else None
    if th is not None:
        from .torch_recipe import TorchRecipe

        _memory_format(th, torch_layout)   # a bad name is an error before anything is built
        theirs = TorchRecipe(recipe, data, seed=seed, channels_last=torch_layout == "channels_last")
        theirs.warmup()
        fns["torch_ms"] = theirs.step
    if th is not None:
        with _torch_threads(th, numba.get_num_threads()):
            times = interleaved_times(fns, repeat)
    else:
        times = interleaved_times(fns, repeat)
    B = solver.batch_size
    row = {"op": "training step", "shape": f"{recipe} recipe, batch {B}", "recipe": recipe, "batch": B,
           "dtype": "float32", "backend": "cpu", "torch_layout": torch_layout if th is not None else None}
    for key in ("ms", "torch_ms"):
        t = times.get(key)
        row[key] = min(t) * 1e3 if t else None
        row[key.replace("ms", "median_ms")] = float(np.median(t)) * 1e3 if t else None
    row["images_per_s"] = B / row["ms"] * 1e3
    row["torch_images_per_s"] = B / row["torch_ms"] * 1e3 if row["torch_ms"] else None
    row["torch_ratio"] = row["ms"] / row["torch_ms"] if row["torch_ms"] else None
    row["images_per_s_ratio"] = 1 / row["torch_ratio"] if row["torch_ratio"] else None
    return row


# --- a busy machine ----------------------------------------------------------------------------

# The competing load of issue #12: a Python loop that never yields. It asks the kernel to kill it
# when its parent dies (Linux prctl PR_SET_PDEATHSIG = 1, SIGKILL = 9), so a benchmark killed
# without its finally clause leaves nothing spinning; then it checks the parent is still there.
BUSY_CODE = """\
import ctypes, os, sys
try:
    ctypes.CDLL(None).prctl(1, 9)
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
while True:
    pass
"""


@contextmanager
def busy_processes(n: int):
    """Run ``n`` processes that each keep one core busy for the duration of the block; they are
    killed on the way out, also on Ctrl-C or an error. Yields their PIDs."""
    import subprocess
    import sys

    if n < 0:
        raise ValueError(f"busy must be a number of processes >= 0, got {n}")
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", BUSY_CODE, str(os.getpid())],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
