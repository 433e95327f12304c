"""The cpu and cuda backends' fused Conv_BatchNorm_ReLU[_Pool] against the reference
composition (the sandwiches of numbaconv.layers over the reference backend), and the
cpu ones' backward against numeric gradients (the cuda ones' are checked numerically
by tests/test_gradients.py, whose gradcheck runs each backend's fused layers)."""
import copy

import numpy as np
import pytest

import numbaconv.cpu as cpu
from numbaconv import get_backend
from numbaconv.gradcheck import THRESHOLDS_FLOAT64, eval_numerical_gradient_array, rel_error
from numbaconv.layers import sandwiches

POOLS = {"2x2": {"pool_height": 2, "pool_width": 2, "stride": 2},
         "3x3 s1": {"pool_height": 3, "pool_width": 3, "stride": 1},   # overlapping windows
         None: None}
CONVS = [({"stride": 1, "pad": 1}, 8), ({"stride": 2, "pad": 0}, 9)]   # (conv_param, input size)


def _case(dtype, seed=0, N=3, C=2, H=8, F=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, H)).astype(dtype)
    w = rng.standard_normal((F, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    gamma = rng.standard_normal(F).astype(dtype)   # negative gammas too
    beta = rng.standard_normal(F).astype(dtype)
    return rng, x, w, b, gamma, beta


def _layers(pool, backend="cpu"):
    name = "Conv_BatchNorm_ReLU" if pool is None else "Conv_BatchNorm_ReLU_Pool"
    return (getattr(sandwiches("reference"), name), getattr(get_backend(backend), name),
            (() if pool is None else (POOLS[pool],)))


def _close(got, want, dtype, what):
    if dtype == np.float64:
        assert rel_error(got, want) < 1e-10, what
    else:   # float32: relative to the array's scale (elementwise ratios blow up where terms cancel)
        assert np.max(np.abs(got - want)) <= 1e-5 * max(np.max(np.abs(want)), 1.0), what


def check_cpu_fused_against_reference(x_shape, F, dtype, pool, mode, need_dx, seed=4):
    """A cpu fused layer (3x3, pad 1, optional 2x2 pool) against the reference composition: output,
    running stats and every gradient (dx only when ``need_dx``). Returns the fused forward's cache,
    so a caller can say which kernel path ran."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((F, x_shape[1], 3, 3)).astype(dtype)
    b, gamma, beta = (rng.standard_normal(F).astype(dtype) for _ in range(3))
    name = "Conv_BatchNorm_ReLU_Pool" if pool else "Conv_BatchNorm_ReLU"
    extra = ({"pool_height": 2, "pool_width": 2, "stride": 2},) if pool else ()
    bn_ref = {"mode": mode}
    if mode == "test":
        bn_ref.update(running_mean=(0.3 * beta).astype(dtype), running_var=(np.abs(gamma) + 0.5).astype(dtype))
    bn = copy.deepcopy(bn_ref)
    cp = {"stride": 1, "pad": 1}
    ref, fused = getattr(sandwiches("reference"), name), getattr(cpu, name)
    out_r, cache_r = ref.forward(x, w, b, gamma, beta, cp, bn_ref, *extra)
    out, cache = fused.forward(x, w, b, gamma, beta, cp, bn, *extra)
    _close(out, out_r, dtype, "out")
    for key in ("running_mean", "running_var"):
        _close(bn[key], bn_ref[key], dtype, key)
    dout = rng.standard_normal(out.shape).astype(dtype)
    got, want = fused.backward(dout, cache, need_dx=need_dx), ref.backward(dout, cache_r)
    assert (got[0] is None) == (not need_dx)
    for name_, g, g_ref in zip(("dx", "dw", "db", "dgamma", "dbeta"), got, want):
        if g is None:
            continue
        if name_ == "db" and mode == "train":   # a bias before batch norm: zero up to rounding
            assert np.max(np.abs(g - g_ref)) < (1e-10 if dtype == np.float64 else 1e-4)
        else:
            _close(g, g_ref, dtype, name_)
    return cache


GRID = [("cpu", dtype, pool, conv, mode) for dtype in (np.float64, np.float32) for pool in POOLS
        for conv in range(len(CONVS)) for mode in ("train", "test")
        if not (pool == "3x3 s1" and CONVS[conv][0]["stride"] == 2)]   # overlapping pools: with the stride-1 conv
# The CUDA simulator runs each GPU thread as Python (~10 s a case): every pool, conv,
# mode and dtype, not every combination.
GRID += [("cuda", np.float64, "2x2", 0, "train"), ("cuda", np.float32, "2x2", 1, "test"),
         ("cuda", np.float64, "3x3 s1", 0, "test"), ("cuda", np.float32, None, 0, "train"),
         ("cuda", np.float64, None, 1, "test")]


@pytest.mark.parametrize("backend, dtype, pool, conv, mode", GRID)
def test_fused_matches_reference_composition(backend, dtype, pool, conv, mode):
    cp, H = CONVS[conv]
    rng, x, w, b, gamma, beta = _case(dtype, H=H)
    ref, fused, pool_args = _layers(pool, backend)
    bn_ref = {"mode": mode}
    if mode == "test":
        bn_ref.update(running_mean=(0.3 * beta).astype(dtype), running_var=(np.abs(gamma) + 0.5).astype(dtype))
    bn_fused = copy.deepcopy(bn_ref)
    out_r, cache_r = ref.forward(x, w, b, gamma, beta, cp, bn_ref, *pool_args)
    out_f, cache_f = fused.forward(x, w, b, gamma, beta, cp, bn_fused, *pool_args)
    assert out_f.dtype == dtype and out_f.shape == out_r.shape
    _close(out_f, out_r, dtype, "out")
    for key in ("running_mean", "running_var"):
        assert bn_fused[key].dtype == dtype
        _close(bn_fused[key], bn_ref[key], dtype, key)
    dout = rng.standard_normal(out_r.shape).astype(dtype)
    grads_r = ref.backward(dout, cache_r)
    grads_f = fused.backward(dout, cache_f)
    for name, gf, gr in zip(("dx", "dw", "db", "dgamma", "dbeta"), grads_f, grads_r):
        assert gf.dtype == dtype and gf.shape == gr.shape, name
        if name == "db" and mode == "train":  # a bias before batch norm: exactly zero, up to rounding
            assert np.max(np.abs(gf - gr)) < (1e-10 if dtype == np.float64 else 1e-4), name
        else:
            _close(gf, gr, dtype, name)


@pytest.mark.parametrize("backend, pool", [("cpu", "2x2"), ("cpu", None), ("cuda", "2x2")])
def test_need_dx_false_skips_only_dx(backend, pool):
    _, x, w, b, gamma, beta = _case(np.float64, seed=1)
    _, fused, pool_args = _layers(pool, backend)
    out, cache = fused.forward(x, w, b, gamma, beta, CONVS[0][0], {"mode": "train"}, *pool_args)
    dout = np.ones_like(out)
    full = fused.backward(dout, cache)
    part = fused.backward(dout, cache, need_dx=False)
    assert part[0] is None
    for a, b_ in zip(full[1:], part[1:]):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("pool", ["2x2", "3x3 s1", None])
def test_fused_backward_numeric_gradients(pool, seed):
    # numeric gradients through the fused forward itself (float64, the sandwich threshold,
    # the suite's seeds 0 and 1 as in test_gradients)
    rng, x, w, b, gamma, beta = _case(np.float64, seed=seed, N=2, C=2, H=6, F=3)
    _, fused, pool_args = _layers(pool)

    def f(**kw):
        args = {"x": x, "w": w, "b": b, "gamma": gamma, "beta": beta, **kw}
        return fused.forward(args["x"], args["w"], args["b"], args["gamma"], args["beta"], CONVS[0][0],
                             {"mode": "train"}, *pool_args)[0]

    out, cache = fused.forward(x, w, b, gamma, beta, CONVS[0][0], {"mode": "train"}, *pool_args)
    dout = rng.standard_normal(out.shape)
    dx, dw, db, dgamma, dbeta = fused.backward(dout, cache)
    for name, arr, grad in (("x", x, dx), ("w", w, dw), ("gamma", gamma, dgamma), ("beta", beta, dbeta)):
        num = eval_numerical_gradient_array(lambda v, name=name: f(**{name: v}), arr.copy(), dout)
        assert rel_error(num, grad) < THRESHOLDS_FLOAT64["sandwich"], name
    num_b = eval_numerical_gradient_array(lambda v: f(b=v), b.copy(), dout)
    assert np.max(np.abs(num_b - db)) < 1e-8   # the bias before batch norm has no effect


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_fused_rejects_bad_input_like_the_sandwich(backend):
    _, x, w, b, gamma, beta = _case(np.float64)
    nb = get_backend(backend)
    with pytest.raises(ValueError, match="gamma must have shape"):
        nb.Conv_BatchNorm_ReLU.forward(x, w, b, gamma[:2], beta, CONVS[0][0], {"mode": "train"})
    with pytest.raises(ValueError, match="does not tile"):
        nb.Conv_BatchNorm_ReLU_Pool.forward(x[:, :, :7, :7], w, b, gamma, beta, CONVS[0][0], {"mode": "train"},
                                            POOLS["2x2"])
    out, cache = nb.Conv_BatchNorm_ReLU_Pool.forward(x, w, b, gamma, beta, CONVS[0][0], {"mode": "train"},
                                                     POOLS["2x2"])
    with pytest.raises(ValueError, match="dout has shape"):
        nb.Conv_BatchNorm_ReLU_Pool.backward(np.ones((1, 1, 1, 1)), cache)


def test_without_numba_callable_blas_the_fused_layers_are_the_cpu_sandwiches(monkeypatch):
    from numbaconv.cpu import _gemm

    _, x, w, b, gamma, beta = _case(np.float64, seed=3)
    want_out, want_cache = sandwiches("cpu").Conv_BatchNorm_ReLU_Pool.forward(
        x, w, b, gamma, beta, CONVS[0][0], {"mode": "train"}, POOLS["2x2"])
    want = sandwiches("cpu").Conv_BatchNorm_ReLU_Pool.backward(np.ones_like(want_out), want_cache)
    monkeypatch.setattr(_gemm, "AVAILABLE", False)
    out, cache = cpu.Conv_BatchNorm_ReLU_Pool.forward(x, w, b, gamma, beta, CONVS[0][0], {"mode": "train"},
                                                      POOLS["2x2"])
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-14)   # Conv falls back to NumPy matmul too
    got = cpu.Conv_BatchNorm_ReLU_Pool.backward(np.ones_like(out), cache, need_dx=False)
    assert got[0] is None
    for g, w_ in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w_, rtol=1e-12, atol=1e-14)


def test_models_and_gradcheck_pick_the_fused_layer_where_a_backend_has_one():
    from numbaconv.gradcheck import _cases
    from numbaconv.layers import fastest

    for name in ("Conv_BatchNorm_ReLU", "Conv_BatchNorm_ReLU_Pool"):
        assert fastest("reference", name) is getattr(sandwiches("reference"), name)
        for backend in ("cpu", "cuda"):
            fused = getattr(get_backend(backend), name)
            assert fastest(backend, name) is fused
            case = next(c for c in _cases(backend, np.random.default_rng(0)) if c.layer == name)
            assert case.backward == fused.backward   # `numbaconv gradcheck --backend ...` checks it


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_batch_stats_are_the_numpy_expressions_bit_for_bit(dtype):
    # fused._batch_stats replaced ~20 NumPy calls per layer; it must give their bits: Chan's combine
    # of per-image (mean, M2), the statistics stored in the dtype, std in float64, and the running
    # update in the dtype (SpatialBatchNorm's expression)
    from numbaconv.cpu import fused

    rng = np.random.default_rng(0)
    N, C, per, eps, momentum = 37, 11, 64, 1e-5, 0.9
    pmean = rng.standard_normal((N, C)) * 3 + 1
    pm2 = rng.random((N, C)) * per
    rm, rv = rng.standard_normal(C).astype(dtype), (rng.random(C) + 0.5).astype(dtype)
    mean64 = pmean.mean(axis=0)
    var64 = (pm2.sum(axis=0) + per * ((pmean - mean64) ** 2).sum(axis=0)) / (N * per)
    mean, var = mean64.astype(dtype), var64.astype(dtype)
    want = (mean.astype(np.float64), np.sqrt(var.astype(np.float64) + eps),
            (momentum * rm + (1 - momentum) * mean).astype(dtype), (momentum * rv + (1 - momentum) * var).astype(dtype))
    got = fused._batch_stats(pmean, pm2, per, eps, dtype(momentum), dtype(1 - momentum), True, rm, rv)
    for w, g in zip(want, got):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    # test mode: the running statistics, unchanged
    got = fused._batch_stats(pmean, pm2, per, eps, dtype(momentum), dtype(1 - momentum), False, rm, rv)
    for w, g in zip((rm.astype(np.float64), np.sqrt(rv.astype(np.float64) + eps), rm, rv), got):
        np.testing.assert_array_equal(g, w)
