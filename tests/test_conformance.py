"""Fast backends against the reference: float64 to 1e-10 relative error (max
pooling exactly), float32 to 1e-5, on shapes chosen to hit the edge cases:
strides 2 and 3, pads 0-3, non-square kernels and inputs, overlapping pools,
N=1 and C=1. Shapes stay tiny so the CUDA simulator can run them too.

float32 sums of products (conv, linear) are compared at the scale of their terms:
|a - b| / sum|terms| < 1e-5, where sum|terms| is the same reference op run on the
absolute values (float64). That is as strict as the elementwise measure where a sum
does not cancel, and the only meaningful one where it does: on an H200 the GPU's
fused multiply-adds moved one output of a 9-term sum that cancels to 6.2e-4 (terms
up to ~7) by 1.3e-8, which the elementwise measure reads as 1.0e-5."""
import numpy as np
import pytest

from conftest import FAST_BACKENDS
from numbaconv import get_backend
from numbaconv.gradcheck import rel_error

TOL = {np.float64: 1e-10, np.float32: 1e-5}

CONV_CASES = [  # x shape, w shape, stride, pad
    ((2, 3, 5, 5), (2, 3, 3, 3), 1, 1),
    ((1, 1, 7, 5), (3, 1, 3, 1), 2, 0),
    ((2, 2, 6, 7), (2, 2, 2, 3), 2, 1),
    ((1, 3, 4, 4), (1, 3, 1, 1), 3, 0),
    ((2, 1, 3, 5), (2, 1, 3, 3), 1, 2),
    ((1, 2, 4, 3), (2, 2, 4, 4), 1, 3),
]
POOL_CASES = [  # x shape, pool h, pool w, stride
    ((2, 3, 4, 4), 2, 2, 2),
    ((1, 1, 5, 6), 3, 2, 1),
    ((2, 2, 7, 7), 3, 3, 2),
    ((1, 2, 6, 6), 2, 2, 1),
]
DTYPES = [np.float64, np.float32]

pytestmark = pytest.mark.parametrize("backend_name", FAST_BACKENDS)


def agree(a, b, dtype):
    assert a.dtype == dtype
    assert a.shape == b.shape
    assert rel_error(a, b) < TOL[dtype]


def agree_sum(a, b, terms, dtype):
    """Like agree, but for float32 relative to ``terms``, the sum of |terms| of each output."""
    if dtype is np.float64:
        return agree(a, b, dtype)
    assert a.dtype == dtype and a.shape == b.shape == terms.shape
    err = np.abs(a.astype(np.float64) - b) / np.maximum(1e-8, terms)
    assert err.max() < TOL[dtype], err.max()


def term_sums(op, inputs, dout, *params):
    """The op's forward output and backward gradients on the absolute values of its
    inputs, in float64: for a sum of products, the sum of |terms| of each element."""
    layer = getattr(get_backend("reference"), op)
    out, cache = layer.forward(*(np.abs(a).astype(np.float64) for a in inputs), *params)
    return (out, *layer.backward(np.abs(dout).astype(np.float64), cache))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, pad", CONV_CASES)
def test_conv_matches_reference(backend_name, xs, ws, stride, pad, dtype):
    nb, ref = get_backend(backend_name), get_backend("reference")
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in (xs, ws, ws[0]))
    cp = {"stride": stride, "pad": pad}
    out, cache = nb.Conv.forward(x, w, b, cp)
    out_ref, cache_ref = ref.Conv.forward(x, w, b, cp)
    dout = rng.standard_normal(out_ref.shape).astype(dtype)
    terms = term_sums("Conv", (x, w, b), dout, cp)
    agree_sum(out, out_ref, terms[0], dtype)
    for g, g_ref, t in zip(nb.Conv.backward(dout, cache), ref.Conv.backward(dout, cache_ref), terms[1:]):
        agree_sum(g, g_ref, t, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ph, pw, stride", POOL_CASES)
def test_maxpool_matches_reference_exactly(backend_name, xs, ph, pw, stride, dtype):
    nb, ref = get_backend(backend_name), get_backend("reference")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(xs).astype(dtype)
    x[0, 0, 0, :2] = 1.5  # a tie: both backends must pick the first maximum
    pp = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out, cache = nb.MaxPool.forward(x, pp)
    out_ref, cache_ref = ref.MaxPool.forward(x, pp)
    np.testing.assert_array_equal(out, out_ref)
    dout = rng.standard_normal(out_ref.shape).astype(dtype)
    dx, dx_ref = nb.MaxPool.backward(dout, cache), ref.MaxPool.backward(dout, cache_ref)
    assert dx.dtype == dtype
    # Overlapping windows add several douts into one dx: allow the summation order to differ.
    np.testing.assert_allclose(dx, dx_ref, rtol=TOL[dtype], atol=0 if ph * pw == 1 or stride >= max(ph, pw) else TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spatial, xs", [(False, (6, 5)), (False, (1, 3)), (True, (2, 3, 4, 5)), (True, (1, 1, 3, 2))])
def test_batchnorm_matches_reference(backend_name, spatial, xs, dtype):
    nb, ref = get_backend(backend_name), get_backend("reference")
    layer = "SpatialBatchNorm" if spatial else "BatchNorm"
    rng = np.random.default_rng(2)
    x = (3 * rng.standard_normal(xs) + 1).astype(dtype)
    C = xs[1]
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    p, p_ref = {"mode": "train"}, {"mode": "train"}
    out, cache = getattr(nb, layer).forward(x, gamma, beta, p)
    out_ref, cache_ref = getattr(ref, layer).forward(x, gamma, beta, p_ref)
    agree(out, out_ref, dtype)
    for key in ("running_mean", "running_var"):
        agree(np.asarray(p[key]), p_ref[key], dtype)
    dout = rng.standard_normal(xs).astype(dtype)
    for method in ("backward", "backward_alt"):
        grads = getattr(getattr(nb, layer), method)(dout, cache)
        grads_ref = getattr(getattr(ref, layer), method)(dout, cache_ref)
        for g, g_ref in zip(grads, grads_ref):
            agree(g, g_ref, dtype)
    p["mode"] = p_ref["mode"] = "test"
    agree(getattr(nb, layer).forward(x, gamma, beta, p)[0], getattr(ref, layer).forward(x, gamma, beta, p_ref)[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_relu_softmax_match_reference(backend_name, dtype):
    nb, ref = get_backend(backend_name), get_backend("reference")
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((4, 2, 3), (6, 5), (5,)))
    out, cache = nb.Linear.forward(x, w, b)
    out_ref, cache_ref = ref.Linear.forward(x, w, b)
    dout = rng.standard_normal(out_ref.shape).astype(dtype)
    terms = term_sums("Linear", (x, w, b), dout)
    agree_sum(out, out_ref, terms[0], dtype)
    for g, g_ref, t in zip(nb.Linear.backward(dout, cache), ref.Linear.backward(dout, cache_ref), terms[1:]):
        agree_sum(g, g_ref, t, dtype)
    r, rc = nb.ReLU.forward(x)
    r_ref, rc_ref = ref.ReLU.forward(x)
    np.testing.assert_array_equal(r, r_ref)
    np.testing.assert_array_equal(nb.ReLU.backward(x, rc), ref.ReLU.backward(x, rc_ref))
    y = rng.integers(0, 5, size=4)
    loss, dx = nb.softmax_loss(out_ref, y)
    loss_ref, dx_ref = ref.softmax_loss(out_ref, y)
    assert abs(loss - loss_ref) <= TOL[dtype] * abs(loss_ref)
    agree(dx, dx_ref, dtype)
