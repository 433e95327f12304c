"""Shared fixtures. The conformance suite is written once and runs for every
backend in BACKENDS: a new backend joins by adding its name there.

The cuda backend runs under the Numba CUDA simulator unless the caller set
NUMBA_ENABLE_CUDASIM explicitly (benchmarks/gpu_check.sh sets it to 0 on a GPU
machine). The variable must be set before numba is first imported, hence here.
"""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from numbaconv import get_backend  # noqa: E402

# Backends under test; "reference" is the oracle the others are compared with.
BACKENDS = ["reference", "cpu", "cuda"]
FAST_BACKENDS = [b for b in BACKENDS if b != "reference"]


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    return request.param


@pytest.fixture
def nb(backend_name):
    """The backend module under test."""
    return get_backend(backend_name)


@pytest.fixture
def ref():
    return get_backend("reference")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_conv_matches_reference(nb, x, w, b, conv_param, rng, tol=1e-10):
    """float64 conv forward and backward (dx, dw, db) of backend ``nb`` against the
    reference, by the assignment's relative error, for a random upstream gradient."""
    from numbaconv.gradcheck import rel_error

    ref = get_backend("reference")
    out, cache = nb.Conv.forward(x, w, b, conv_param)
    out_ref, cache_ref = ref.Conv.forward(x, w, b, conv_param)
    assert rel_error(out, out_ref) < tol
    dout = rng.standard_normal(out_ref.shape)
    for g, g_ref in zip(nb.Conv.backward(dout, cache), ref.Conv.backward(dout, cache_ref)):
        assert rel_error(g, g_ref) < tol


def load_benchmark(name: str):
    """The script benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
