"""cpu Conv: patch convs with few weights per output (kernel = stride, no padding, C*HH*WW <=
conv.PATCH_MAX_K, e.g. the recipes' 2x2 whitening stem) take the direct forward kernel; results
match the reference, backward (im2col, from the same cache) too, and other convs keep their paths."""
import numpy as np
import pytest

import numbaconv.cpu as cpu
from numbaconv import get_backend
from numbaconv.cpu import _gemm, conv
from test_fused_layers import _close   # float64 to 1e-10, float32 to 1e-5 of the scale

pytestmark = pytest.mark.skipif(not _gemm.AVAILABLE, reason="the patch path sits beside the BLAS paths")


@pytest.fixture
def patch_calls(monkeypatch):
    calls = []
    real = conv._patch_forward

    def spy(*a):
        calls.append(a[3])   # the stride
        return real(*a)
    monkeypatch.setattr(conv, "_patch_forward", spy)
    return calls


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs, F, S", [
    ((5, 3, 32, 32), 12, 2),   # the fast recipe's whitening stem
    ((3, 1, 8, 12), 4, 4),     # K = 16 (the largest taken), a map wider than high
    ((2, 4, 6, 6), 7, 2),      # K = 16 from 4 channels
    ((3, 9, 5, 7), 5, 1),      # a 1x1 conv: a patch of one pixel
])
def test_patch_convs_take_the_direct_kernel_and_match_the_reference(patch_calls, xs, F, S, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((F, xs[1], S, S)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    cp = {"stride": S, "pad": 0}
    out, cache = cpu.Conv.forward(x, w, b, cp)
    ref = get_backend("reference")
    out_ref, cache_ref = ref.Conv.forward(x, w, b, cp)
    assert patch_calls == [S] and out.dtype == dtype
    _close(out, out_ref, dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    for name, g, g_ref in zip(("dx", "dw", "db"), cpu.Conv.backward(dout, cache), ref.Conv.backward(dout, cache_ref)):
        _close(g, g_ref, dtype, name)


@pytest.mark.parametrize("C, K, S, pad, H", [
    (3, 3, 3, 0, 9),    # C*HH*WW = 27 > PATCH_MAX_K
    (3, 2, 2, 1, 8),    # padded
    (3, 2, 1, 0, 9),    # overlapping windows (stride < kernel)
    (17, 1, 1, 0, 9),   # a 1x1 conv over 17 channels
])
def test_other_convs_keep_their_paths(patch_calls, C, K, S, pad, H):
    x = np.random.default_rng(1).standard_normal((2, C, H, H))
    w, b = np.random.default_rng(2).standard_normal((4, C, K, K)), np.zeros(4)
    out, _ = cpu.Conv.forward(x, w, b, {"stride": S, "pad": pad})
    assert not patch_calls
    _close(out, get_backend("reference").Conv.forward(x, w, b, {"stride": S, "pad": pad})[0], np.float64, "out")


def test_the_rule_is_the_measured_one():
    assert conv.patch_direct(3, 2, 2, 2, 0) and conv.patch_direct(16, 1, 1, 1, 0)
    assert not conv.patch_direct(3, 4, 4, 4, 0)   # K = 48: im2col + GEMM measured faster
    assert not conv.patch_direct(3, 2, 2, 2, 1) and not conv.patch_direct(3, 2, 2, 1, 0)
