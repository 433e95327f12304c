"""pytest-benchmark suites for the cpu backend (not part of the default test run).

    .venv/bin/python -m pytest benchmarks/bench_cpu.py --benchmark-enable
    .venv/bin/python -m pytest benchmarks/bench_cpu.py --benchmark-enable -k "cifar and float32"

Each op, shape and dtype is one benchmark group, so the table puts the
implementations side by side: reference vs cpu on small shapes, cpu vs PyTorch
CPU (when installed, on Numba's thread count) on CIFAR-scale shapes (N=128) and on the long
recipe's wide shapes (N=256; ``-k wide``, minutes on 2 cores).
The ops, shapes and inputs are those of ``numbaconv.bench`` (the CLI's tables).
"""
import numba
import numpy as np
import pytest

from numbaconv import get_backend
from numbaconv.bench import (CIFAR_SHAPES, REFERENCE_MAX_ITERATIONS, SMALL_SHAPES, WIDE_SHAPES, _inputs,
                             _reference_cost, numbaconv_op, ops_for, torch_op)

try:
    import torch
except ImportError:  # the optional `bench` extra
    torch = None

DTYPES = ["float32", "float64"]


def _cases():
    for set_name, shapes, impls in (("small", SMALL_SHAPES, ("reference", "cpu", "torch")),
                                    ("cifar", CIFAR_SHAPES, ("cpu", "torch")),
                                    ("wide", WIDE_SHAPES, ("cpu", "torch"))):
        for shape in shapes:
            for op in ops_for(shape):
                for impl in impls:
                    if impl == "reference" and _reference_cost(shape) > REFERENCE_MAX_ITERATIONS:
                        continue
                    yield pytest.param(shape, op, impl, id=f"{set_name}-{op}-{shape.label}-{impl}".replace(" ", "_"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, op, impl", list(_cases()))
def test_op(benchmark, shape, op, impl, dtype):
    benchmark.group = f"{op} | {shape.label} | {dtype}"
    a = _inputs(shape, np.dtype(dtype))
    if impl == "torch":
        if torch is None:
            pytest.skip("PyTorch not installed (optional `bench` extra)")
        old = torch.get_num_threads()
        torch.set_num_threads(numba.get_num_threads())
        try:
            fn = torch_op(torch, op, shape, a)
            benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
        finally:
            torch.set_num_threads(old)
        return
    fn = numbaconv_op(get_backend(impl), op, shape, a)
    rounds = 2 if impl == "reference" else 5
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)


_STARTUP_PROBE = """
import time
t0 = time.perf_counter()
import numpy as np
from numbaconv.bench import SMALL_SHAPES, _inputs, numbaconv_op, ops_for
from numbaconv import get_backend
nb = get_backend("cpu")
t1 = time.perf_counter()
for dtype in ("float32", "float64"):
    for shape in SMALL_SHAPES:
        for op in ops_for(shape, bn_alt=True):
            numbaconv_op(nb, op, shape, _inputs(shape, np.dtype(dtype)))()
    x = np.ones((2, 3), dtype)
    out, cache = nb.Linear.forward(x, np.ones((3, 4), dtype), np.zeros(4, dtype))
    nb.Linear.backward(out, cache)
    out, cache = nb.ReLU.forward(x)
    nb.ReLU.backward(x, cache)
    nb.softmax_loss(x, np.array([0, 1]))
    nb.BatchNorm.backward(x, nb.BatchNorm.forward(x, np.ones(3, dtype), np.zeros(3, dtype), {})[1])
print(t1 - t0, time.perf_counter() - t1)
"""


def test_startup_first_call_vs_cached(benchmark, tmp_path):
    """Every kernel in both dtypes, first in a process with an empty cache (compiles),
    then in a second process (loads the cache). extra_info holds both times."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}

    def probe():
        out = subprocess.run([sys.executable, "-c", _STARTUP_PROBE], env=env, capture_output=True, text=True,
                             check=True)
        return [float(v) for v in out.stdout.split()]

    import_s, first_s = probe()
    benchmark.extra_info.update(import_s=import_s, first_call_compile_s=first_s)
    cached = benchmark.pedantic(probe, rounds=1, iterations=1)
    benchmark.extra_info.update(cached_import_s=cached[0], cached_first_call_s=cached[1])
    print(f"\nstartup: import {import_s:.2f} s, first calls (compiling) {first_s:.2f} s; "
          f"second process: import {cached[0]:.2f} s, first calls (cached) {cached[1]:.2f} s")


@pytest.mark.parametrize("path", ["in-kernel-gemm", "numpy-matmul-fallback"])
@pytest.mark.parametrize("shape", CIFAR_SHAPES[:3], ids=lambda s: s.label.replace(" ", "_"))
def test_conv_thread_pools(benchmark, monkeypatch, shape, path):
    """Conv forward+backward float32 with one thread pool (each Numba thread runs a
    single-threaded GEMM on its images: the default) against two (2-thread OpenBLAS
    matmuls between Numba kernels: the fallback where no Numba-callable BLAS exists)."""
    from numbaconv.cpu import _gemm

    if path == "in-kernel-gemm" and not _gemm.AVAILABLE:
        pytest.skip("NumPy's BLAS is not an OpenBLAS callable from Numba")
    monkeypatch.setattr(_gemm, "AVAILABLE", path == "in-kernel-gemm")
    benchmark.group = f"conv threading | {shape.label} | float32"
    fn = numbaconv_op(get_backend("cpu"), "conv forward+backward", shape, _inputs(shape, np.dtype("float32")))
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
