"""pytest-benchmark suites for the cpu backend (not part of the default test run).

    .venv/bin/python -m pytest benchmarks/bench_cpu.py --benchmark-enable
    .venv/bin/python -m pytest benchmarks/bench_cpu.py --benchmark-enable -k "cifar and float32"

Each op, shape and dtype is one benchmark group, so the table puts the
implementations side by side: reference vs cpu on small shapes, cpu vs PyTorch
CPU (when installed, on Numba's thread count) on CIFAR-scale shapes (N=128).
The ops, shapes and inputs are those of ``numbaconv.bench`` (the CLI's tables).
"""
import numba
import numpy as np
import pytest

from numbaconv import get_backend
from numbaconv.bench import (CIFAR_SHAPES, REFERENCE_MAX_ITERATIONS, SMALL_SHAPES, _inputs, _reference_cost,
                             numbaconv_op, ops_for, torch_op)

try:
    import torch
except ImportError:  # the optional `bench` extra
    torch = None

DTYPES = ["float32", "float64"]


def _cases():
    for set_name, shapes, impls in (("small", SMALL_SHAPES, ("reference", "cpu", "torch")),
                                    ("cifar", CIFAR_SHAPES, ("cpu", "torch"))):
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
