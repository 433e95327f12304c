"""Property-based tests (hypothesis): every fast backend against the reference over
random shapes, strides, pads, pool geometry, both dtypes and special values (NaN,
+-inf, -0.0, ties, huge and tiny magnitudes). The contract they hold (README,
"Conventions"): NaN propagates as in PyTorch; a max-pool window containing NaN
gives NaN and its gradient goes to the first NaN in row-major window order.

Where a value is NaN or infinite in the reference it must be exactly that in the
backend; finite values agree to 1e-10 (float64) or 1e-5 (float32), measured
against the sum of |terms| of each output for sums of products (see
test_conformance) and for batch norm (bn_term_scales). A fused layer's gradients
are another algebra than the composition's, so there only finite positions must
match. Examples are few and shapes tiny (the cuda backend runs in the simulator)
and generation is derandomized, so CI sees the same cases every run.
"""
import copy
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FAST_BACKENDS
from numbaconv import get_backend
from numbaconv.layers import sandwiches
from test_conformance import term_sums

TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
DTYPES = [np.dtype(np.float64), np.dtype(np.float32)]
SPECIALS = [math.nan, math.inf, -math.inf, -0.0, 0.0]
# Whole-array scales: products and short sums of them stay far from overflow and
# underflow in the dtype, so any inf or NaN comes from the inputs, not from rounding.
MAGNITUDES = {np.dtype(np.float64): [1e-150, 1e-8, 1.0, 1e8, 1e150],
              np.dtype(np.float32): [1e-15, 1e-4, 1.0, 1e4, 1e15]}
# Examples per backend: the CUDA simulator runs each GPU thread as Python.
EXAMPLES = {"cpu": 40, "cuda": 12}

pytestmark = pytest.mark.parametrize("backend_name", FAST_BACKENDS)


def run(backend_name, strategy, check, examples=None):
    """Run ``check(nb, case)`` on derandomized hypothesis examples of ``strategy``."""
    nb = get_backend(backend_name)

    @settings(max_examples=examples or EXAMPLES[backend_name], deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def prop(case):
        check(nb, case)

    prop()


@st.composite
def values(draw, shape, dtype, specials=True, scaled=True):
    """An array of ``shape``: normal values or small integers (ties), one magnitude
    for the whole array, and up to three special values at drawn positions."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        a = rng.integers(-2, 3, size=shape).astype(np.float64)   # ties and exact zeros
    else:
        a = rng.standard_normal(shape)
    if scaled:
        a *= draw(st.sampled_from(MAGNITUDES[dtype]))
    a = a.astype(dtype)
    if specials and a.size:   # positions and values from the seeded generator: spread over the array
        k = min(draw(st.integers(0, 3)), a.size)
        a.flat[rng.choice(a.size, size=k, replace=False)] = rng.choice(SPECIALS, size=k)
    return a


def same(got, want, what, scale=None, nonfinite=False):
    """``got`` equals ``want`` where ``want`` is NaN or infinite (and is NaN or
    infinite nowhere else); elsewhere it agrees to the dtype's tolerance, relative
    to ``scale`` (default |got| + |want|). With ``nonfinite``, only where each is
    finite must agree (for a different algebra of the same gradient, where an inf
    input may meet another inf as a sum in one and a product in the other)."""
    got = np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape, want.shape)
    fin = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), fin, err_msg=f"{what}: finite positions")
    if not nonfinite:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
        inf = np.isinf(want)
        np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: inf signs")
    g, w = got[fin].astype(np.float64), want[fin].astype(np.float64)
    s = (np.abs(g) + np.abs(w)) if scale is None else np.asarray(scale, dtype=np.float64)[fin]
    err = np.abs(g - w) / np.maximum(s, np.finfo(want.dtype).tiny)
    assert err.size == 0 or err.max() < TOL[want.dtype], (what, err.max())


def same_terms(got, want, terms, what):
    """``same`` for sums of products: finite values relative to the sum of |terms|."""
    if want.dtype == np.float64:
        return same(got, want, what)
    return same(got, want, what, scale=np.where(np.isfinite(terms), terms, 0))


# --------------------------------------------------------------------------- strategies

dtypes = st.sampled_from(DTYPES)


@st.composite
def pool_cases(draw):
    dtype = draw(dtypes)
    ph, pw, stride = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    Ho, Wo = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2)), (Ho - 1) * stride + ph, (Wo - 1) * stride + pw)
    x = draw(values(shape, dtype))
    dout = draw(values((shape[0], shape[1], Ho, Wo), dtype))
    return x, {"pool_height": ph, "pool_width": pw, "stride": stride}, dout


@st.composite
def conv_cases(draw, scaled=True):
    dtype = draw(dtypes)
    N, C, F = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    HH, WW, stride = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    pad = draw(st.integers(0, 2))
    Ho, Wo = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = (Ho - 1) * stride + HH - 2 * pad, (Wo - 1) * stride + WW - 2 * pad
    if H < 1 or W < 1:  # the padding is all there is: make the input one pixel larger per step
        extra = stride * max(0, math.ceil((1 - min(H, W)) / stride))
        H, W, Ho, Wo = H + extra, W + extra, Ho + extra // stride, Wo + extra // stride
    x = draw(values((N, C, H, W), dtype, scaled=scaled))
    w = draw(values((F, C, HH, WW), dtype, specials=False, scaled=False))
    b = draw(values((F,), dtype, specials=False, scaled=False))
    dout = draw(values((N, F, Ho, Wo), dtype))
    return x, w, b, {"stride": stride, "pad": pad}, dout


@st.composite
def bn_cases(draw):
    dtype = draw(dtypes)
    spatial = draw(st.booleans())
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = (N, C, draw(st.integers(1, 3)), draw(st.integers(1, 3))) if spatial else (N, C)
    x = draw(values(shape, dtype))
    gamma = draw(values((C,), dtype, specials=False, scaled=False))
    beta = draw(values((C,), dtype, specials=False, scaled=False))
    mode = draw(st.sampled_from(["train", "test"]))
    bn_param = {"mode": mode, "momentum": draw(st.sampled_from([0.0, 0.9, 1.0]))}
    if mode == "test":
        bn_param["running_mean"] = draw(values((C,), dtype, specials=False))
        bn_param["running_var"] = np.abs(draw(values((C,), dtype, specials=False)))
    dout = draw(values(shape, dtype))
    return spatial, x, gamma, beta, bn_param, dout


@st.composite
def linear_cases(draw):
    dtype = draw(dtypes)
    N = draw(st.integers(1, 3))
    rest = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    D = math.prod(rest)
    M = draw(st.integers(1, 3))
    x = draw(values((N,) + rest, dtype))
    w = draw(values((D, M), dtype, specials=False, scaled=False))
    b = draw(values((M,), dtype, specials=False, scaled=False))
    return x, w, b, draw(values((N, M), dtype))


@st.composite
def relu_cases(draw):
    dtype = draw(dtypes)
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=1, max_size=4)))
    return draw(values(shape, dtype)), draw(values(shape, dtype))


@st.composite
def softmax_cases(draw):
    dtype = draw(dtypes)
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    x = draw(values((N, C), dtype))
    y = np.array(draw(st.lists(st.integers(0, C - 1), min_size=N, max_size=N)), dtype=np.int64)
    return x, y


# --------------------------------------------------------------------------- properties

def test_maxpool(backend_name):
    ref = get_backend("reference")

    def check(nb, case):
        x, pp, dout = case
        out, cache = nb.MaxPool.forward(x, pp)
        out_ref, cache_ref = ref.MaxPool.forward(x, pp)
        np.testing.assert_array_equal(out, out_ref)                     # NaN where the window has one
        np.testing.assert_array_equal(np.signbit(out), np.signbit(out_ref))  # the first maximum itself (-0.0)
        dx, dx_ref = nb.MaxPool.backward(dout, cache), ref.MaxPool.backward(dout, cache_ref)
        if pp["stride"] >= max(pp["pool_height"], pp["pool_width"]):  # one window per element: exact
            np.testing.assert_array_equal(dx, dx_ref)
        else:   # overlapping windows may add their douts in another order
            same(dx, dx_ref, "dx")

    run(backend_name, pool_cases(), check)


def test_relu(backend_name):
    ref = get_backend("reference")

    def check(nb, case):
        x, dout = case
        out, cache = nb.ReLU.forward(x)
        out_ref, cache_ref = ref.ReLU.forward(x)
        np.testing.assert_array_equal(out, out_ref)
        np.testing.assert_array_equal(np.signbit(out), np.signbit(out_ref))
        assert out.shape == x.shape and out.dtype == x.dtype
        dx, dx_ref = nb.ReLU.backward(dout, cache), ref.ReLU.backward(dout, cache_ref)
        np.testing.assert_array_equal(dx, dx_ref)
        np.testing.assert_array_equal(np.signbit(dx), np.signbit(dx_ref))

    run(backend_name, relu_cases(), check)


def test_conv(backend_name):
    ref = get_backend("reference")

    def check(nb, case):
        x, w, b, cp, dout = case
        out, cache = nb.Conv.forward(x, w, b, cp)
        out_ref, cache_ref = ref.Conv.forward(x, w, b, cp)
        terms = term_sums("Conv", (x, w, b), dout, cp)
        same_terms(out, out_ref, terms[0], "out")
        for name, g, g_ref, t in zip(("dx", "dw", "db"), nb.Conv.backward(dout, cache),
                                     ref.Conv.backward(dout, cache_ref), terms[1:]):
            same_terms(g, g_ref, t, name)

    run(backend_name, conv_cases(), check, examples={"cpu": 40, "cuda": 6}[backend_name])


def bn_term_scales(x, gamma, beta, bn_param, dout, spatial):
    """Batch norm's outputs at the scale of their terms, in float64 (as term_sums for
    sums of products): each value is compared relative to the sum of the magnitudes
    that make it up. float32 rounding of the mean (|mu| * 6e-8) then counts at the
    scale of |mu| / std, which is what it costs in any float32 implementation."""
    def rows(a):   # (N, C[, H, W]) -> (M, C), float64
        a = np.asarray(a, dtype=np.float64)
        return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1]) if spatial else a

    def back(a):
        return a.reshape(x.shape[0], x.shape[2], x.shape[3], -1).transpose(0, 3, 1, 2) if spatial else a

    x2, d2 = np.abs(rows(x)), np.abs(rows(dout))
    g, bt = np.abs(gamma.astype(np.float64)), np.abs(beta.astype(np.float64))
    m = bn_param["momentum"]
    eps = 1e-5
    train = bn_param["mode"] == "train"
    with np.errstate(all="ignore"):
        if train:
            mu, var = rows(x).mean(axis=0), rows(x).var(axis=0)
        else:
            mu, var = bn_param["running_mean"].astype(np.float64), bn_param["running_var"].astype(np.float64)
        mu = np.abs(mu)
        std = np.sqrt(var + eps)
        a = (x2 + mu) / std                         # |terms| of xhat = (x - mu) / std
        scales = {"out": back(g * a + bt), "dgamma": (d2 * a).sum(axis=0), "dbeta": d2.sum(axis=0)}
        if train:
            scales["dx"] = back(g / std * (d2 + d2.mean(axis=0) + a * (d2 * a).mean(axis=0)))
            scales["running_mean"] = (1 - m) * x2.mean(axis=0)
            scales["running_var"] = (1 - m) * ((x2 + mu) ** 2).mean(axis=0)
        else:
            scales["dx"] = back(g / std * d2)
    for key in ("running_mean", "running_var"):
        scales[key] = scales.get(key, 0.0) + m * np.abs(np.asarray(bn_param.get(key, 0.0), dtype=np.float64))
    return {k: np.where(np.isfinite(v), v, 0.0) for k, v in scales.items()}


def test_batchnorm(backend_name):
    ref = get_backend("reference")

    def check(nb, case):
        spatial, x, gamma, beta, bn_param, dout = case
        layer = "SpatialBatchNorm" if spatial else "BatchNorm"
        p, p_ref = copy.deepcopy(bn_param), copy.deepcopy(bn_param)
        scales = bn_term_scales(x, gamma, beta, bn_param, dout, spatial)
        out, cache = getattr(nb, layer).forward(x, gamma, beta, p)
        out_ref, cache_ref = getattr(ref, layer).forward(x, gamma, beta, p_ref)
        same(out, out_ref, "out", scales["out"])
        for key in ("running_mean", "running_var"):
            same(p[key], p_ref[key], key, np.broadcast_to(scales[key], p_ref[key].shape))
        for method in ("backward", "backward_alt"):
            grads = getattr(getattr(nb, layer), method)(dout, cache)
            grads_ref = getattr(getattr(ref, layer), method)(dout, cache_ref)
            for name, g, g_ref in zip(("dx", "dgamma", "dbeta"), grads, grads_ref):
                same(g, g_ref, f"{method} {name}", scales[name])

    run(backend_name, bn_cases(), check)


def test_linear(backend_name):
    ref = get_backend("reference")

    def check(nb, case):
        x, w, b, dout = case
        out, cache = nb.Linear.forward(x, w, b)
        out_ref, cache_ref = ref.Linear.forward(x, w, b)
        terms = term_sums("Linear", (x, w, b), dout)
        same_terms(out, out_ref, terms[0], "out")
        for name, g, g_ref, t in zip(("dx", "dw", "db"), nb.Linear.backward(dout, cache),
                                     ref.Linear.backward(dout, cache_ref), terms[1:]):
            same_terms(g, g_ref, t, name)

    run(backend_name, linear_cases(), check)


def test_softmax_loss(backend_name):
    ref = get_backend("reference")

    def check(nb, case):
        x, y = case
        loss, dx = nb.softmax_loss(x, y)
        loss_ref, dx_ref = ref.softmax_loss(x, y)
        same(np.array(loss, x.dtype), np.array(loss_ref, x.dtype), "loss")
        same(dx, dx_ref, "dx")

    run(backend_name, softmax_cases(), check)


@st.composite
def fused_cases(draw):
    # unscaled: a tiny x after an O(1) bias would make batch norm's statistics
    # ill-conditioned (mean/std ~ 1e5), which test_batchnorm covers with its own scales
    x, w, b, cp, _ = draw(conv_cases(scaled=False))
    dtype = x.dtype
    N, F = x.shape[0], w.shape[0]
    Ho = 1 + (x.shape[2] + 2 * cp["pad"] - w.shape[2]) // cp["stride"]
    Wo = 1 + (x.shape[3] + 2 * cp["pad"] - w.shape[3]) // cp["stride"]
    gamma = draw(values((F,), dtype, specials=False, scaled=False))
    beta = draw(values((F,), dtype, specials=False, scaled=False))
    mode = draw(st.sampled_from(["train", "test"]))
    bn_param = {"mode": mode}
    if mode == "test":
        bn_param["running_mean"] = draw(values((F,), dtype, specials=False))
        bn_param["running_var"] = np.abs(draw(values((F,), dtype, specials=False)))
    pool = None
    out_shape = (N, F, Ho, Wo)
    if draw(st.booleans()):
        ph, pw, stride = draw(st.integers(1, min(3, Ho))), draw(st.integers(1, min(3, Wo))), draw(st.integers(1, 2))
        if (Ho - ph) % stride or (Wo - pw) % stride:
            stride = 1
        pool = {"pool_height": ph, "pool_width": pw, "stride": stride}
        out_shape = (N, F, 1 + (Ho - ph) // stride, 1 + (Wo - pw) // stride)
    return x, w, b, gamma, beta, cp, bn_param, pool, draw(values(out_shape, dtype, scaled=False))


def test_fused_conv_batchnorm_relu(backend_name):
    """A backend's fused Conv_BatchNorm_ReLU[_Pool] against the reference composition."""
    nb = get_backend(backend_name)
    if not hasattr(nb, "Conv_BatchNorm_ReLU"):
        pytest.skip(f"the {backend_name} backend has no fused layers")
    ref = sandwiches("reference")

    def check(nb, case):
        x, w, b, gamma, beta, cp, bn_param, pool, dout = case
        name = "Conv_BatchNorm_ReLU" if pool is None else "Conv_BatchNorm_ReLU_Pool"
        extra = () if pool is None else (pool,)
        p, p_ref = copy.deepcopy(bn_param), copy.deepcopy(bn_param)
        out, cache = getattr(nb, name).forward(x, w, b, gamma, beta, cp, p, *extra)
        out_ref, cache_ref = getattr(ref, name).forward(x, w, b, gamma, beta, cp, p_ref, *extra)
        # batch norm divides by the batch's spread: compare relative to each channel's largest value
        scale = np.nanmax(np.where(np.isinf(out_ref), np.nan, np.abs(out_ref)), axis=(0, 2, 3), keepdims=True,
                          initial=1.0)
        same(out, out_ref, "out", scale=np.broadcast_to(scale, out_ref.shape))
        for key in ("running_mean", "running_var"):
            same(p[key], p_ref[key], key)
        for gname, g, g_ref in zip(("dx", "dw", "db", "dgamma", "dbeta"), getattr(nb, name).backward(dout, cache),
                                   getattr(ref, name).backward(dout, cache_ref)):
            fin = np.abs(g_ref[np.isfinite(g_ref)])
            # the fused backward is batch norm's closed form, the composition's the staged graph
            same(g, g_ref, gname, scale=np.full(g_ref.shape, max(fin.max(initial=0.0), 1.0)), nonfinite=True)

    run(backend_name, fused_cases(), check, examples={"cpu": 30, "cuda": 5}[backend_name])
