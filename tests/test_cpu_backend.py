"""cpu backend properties beyond agreement with the reference (that is
test_conformance.py): repeatable results, thread-count respect, scoped BLAS
threads, and the on-disk compile cache."""
import json
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from numbaconv import get_backend
from numbaconv.cpu._blas import blas_threads

nb = get_backend("cpu")


def _blas_thread_counts():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def _run_all_layers(dtype, seed=0):
    """Forward and backward of every layer on small inputs; returns every array produced."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4, 9, 9)).astype(dtype)
    w = rng.standard_normal((5, 4, 3, 1)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    outs = []
    out, cache = nb.Conv.forward(x, w, b, {"stride": 2, "pad": 1})
    outs += [out, *nb.Conv.backward(rng.standard_normal(out.shape).astype(dtype), cache)]
    out, cache = nb.MaxPool.forward(x, {"pool_height": 3, "pool_width": 3, "stride": 2})
    outs += [out, nb.MaxPool.backward(rng.standard_normal(out.shape).astype(dtype), cache)]
    gamma, beta = rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)
    p = {"mode": "train"}
    out, cache = nb.SpatialBatchNorm.forward(x, gamma, beta, p)
    d = rng.standard_normal(x.shape).astype(dtype)
    outs += [out, p["running_mean"], p["running_var"], *nb.SpatialBatchNorm.backward(d, cache),
             *nb.SpatialBatchNorm.backward_alt(d, cache)]
    x2 = x.reshape(3, -1)
    p = {"mode": "train"}
    out, cache = nb.BatchNorm.forward(x2, x2[0], x2[1], p)
    outs += [out, *nb.BatchNorm.backward(x2, cache), *nb.BatchNorm.backward_alt(x2, cache)]
    out, cache = nb.Linear.forward(x, rng.standard_normal((324, 7)).astype(dtype), b[:1].repeat(7))
    outs += [out, *nb.Linear.backward(rng.standard_normal(out.shape).astype(dtype), cache)]
    out, cache = nb.ReLU.forward(x)
    outs += [out, nb.ReLU.backward(x, cache)]
    loss, dx = nb.softmax_loss(x2[:, :10], np.array([0, 3, 9]))
    outs += [np.array(loss), dx]
    return outs


@pytest.fixture
def parallel_always(monkeypatch):
    """Run even these tiny inputs on all threads (small work normally runs on one)."""
    from numbaconv.cpu import _blas

    monkeypatch.setattr(_blas, "SMALL_WORK", 0)


@pytest.mark.usefixtures("parallel_always")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_identical_from_run_to_run(dtype):
    first = _run_all_layers(dtype)
    for _ in range(3):
        again = _run_all_layers(dtype)
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)


@pytest.mark.usefixtures("parallel_always")
def test_numba_only_kernels_do_not_depend_on_the_thread_count():
    # ownership: each prange iteration writes its own elements in a fixed order, so
    # pooling and batch norm give the same bits on 1 thread as on all of them
    saved = numba.get_num_threads()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6, 8, 8)).astype(np.float32)
    gamma, beta = np.ones(6, np.float32), np.zeros(6, np.float32)
    results = []
    try:
        for n in sorted({1, saved}):
            numba.set_num_threads(n)
            out, cache = nb.MaxPool.forward(x, {"pool_height": 3, "pool_width": 3, "stride": 1})
            dx = nb.MaxPool.backward(np.ones_like(out), cache)
            y, c = nb.SpatialBatchNorm.forward(x, gamma, beta, {"mode": "train"})
            results.append([out, dx, y, *nb.SpatialBatchNorm.backward(x, c)])
    finally:
        numba.set_num_threads(saved)
    for a, b in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, b)


def test_blas_threads_follow_numba_threads_only_inside_the_call():
    before = _blas_thread_counts()
    assert before, "numpy's BLAS was not found by threadpoolctl"
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        with blas_threads():
            assert _blas_thread_counts() == [1] * len(before)
        assert _blas_thread_counts() == before  # scoped: nothing process-wide is left behind
        x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
        nb.Conv.forward(x, np.ones((2, 3, 3, 3)), np.zeros(2), {"stride": 1, "pad": 1})
        assert _blas_thread_counts() == before
    finally:
        numba.set_num_threads(saved)


def test_small_work_runs_on_one_thread_only_inside_the_call(monkeypatch):
    from numbaconv.cpu._blas import SMALL_WORK, kernel_threads

    # the small-work rule alone: the free-cores candidate (on by default) would give fewer threads
    # to large work too while another process holds a core
    monkeypatch.setattr("numbaconv.cpu._threads._free_cores", False)
    saved = numba.get_num_threads()
    with kernel_threads(SMALL_WORK - 1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == saved
    with kernel_threads(SMALL_WORK):
        assert numba.get_num_threads() == saved


def test_numba_num_threads_environment_is_respected():
    code = "import numba, numbaconv.cpu; print(numba.get_num_threads())"
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


_CACHE_PROBE = textwrap.dedent("""
    import json, numpy as np, numba
    from numbaconv import get_backend
    from numbaconv.cpu import batchnorm, conv, pool
    nb = get_backend("cpu")
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    out, cache = nb.Conv.forward(x, np.ones((2, 2, 3, 3), np.float32), np.zeros(2, np.float32), {"stride": 1, "pad": 1})
    nb.Conv.backward(out, cache)
    out, cache = nb.MaxPool.forward(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    nb.MaxPool.backward(out, cache)
    kernels = [conv._forward, conv._backward, pool._pool2x2_forward, pool._pool2x2_backward,
               batchnorm._bn_forward_channels, batchnorm._bn_backward_channels,
               batchnorm._block_stats, batchnorm._combine_stats, batchnorm._bn_apply,
               batchnorm._block_grad_sums, batchnorm._bn_dx, batchnorm._bn_add]
    for xb in (x, np.tile(x, (1, 1, 4, 4))):   # 4x4 rows take the per-channel kernels, 16x16 the streaming ones
        out, cache = nb.SpatialBatchNorm.forward(xb, np.ones(2, np.float32), np.zeros(2, np.float32), {})
        nb.SpatialBatchNorm.backward(out, cache)
    print(json.dumps({k.py_func.__name__: [sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())]
                      for k in kernels}))
""")


def test_second_process_loads_kernels_from_the_cache_instead_of_compiling():
    # the first process compiles (or finds the cache the rest of the suite wrote);
    # the second must hit the on-disk cache for every kernel and compile none
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats and all(hits >= 1 and misses == 0 for hits, misses in stats.values()), stats


def test_fallback_without_numba_callable_blas_agrees(monkeypatch):
    # the NumPy-matmul paths (used where NumPy's BLAS is not OpenBLAS) compute the same conv and linear
    from numbaconv.cpu import _gemm

    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((3, 2, 7, 9)), rng.standard_normal((4, 2, 3, 5)), rng.standard_normal(4)
    w_fc, b_fc = rng.standard_normal((126, 5)), rng.standard_normal(5)
    cp = {"stride": 2, "pad": 1}
    results = []
    for available in (_gemm.AVAILABLE, False):
        monkeypatch.setattr(_gemm, "AVAILABLE", available)
        out, cache = nb.Conv.forward(x, w, b, cp)
        fc, fc_cache = nb.Linear.forward(x, w_fc, b_fc)
        results.append([out, *nb.Conv.backward(np.ones_like(out) + out, cache),
                        fc, *nb.Linear.backward(fc * 2, fc_cache)])
    for a, b_ in zip(*results):
        np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-12)
