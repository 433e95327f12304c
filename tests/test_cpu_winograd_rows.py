"""The cpu backend's Winograd F(4, 3) along rows (numbaconv/cpu/winograd_rows.py): conv and the fused
conv-BN-ReLU[-pool] layers (forward, dx, dw; the fused layers also without dx) against the reference
on shapes that hit its edges (rows not a multiple of the 4-pixel tile, whose last tile is cut; maps
whose rows are exactly whole tiles, split straight from the image; pads 0 and 2; kernels 1, 3 and 5
rows high; N=1; N not a multiple of the block). The ``every_layer`` fixture lowers the thresholds so
these small shapes take the path (and keeps 3x3 layers off 2-D Winograd); other layers must stay on
im2col."""

import numba
import numpy as np
import pytest

import numbaconv.cpu as cpu
from numbaconv import get_backend
from numbaconv.cpu import _gemm, fused, winograd, winograd_rows
from numbaconv.cpu._blas import blas_threads
from test_fused_layers import _close, check_cpu_fused_against_reference   # _close: float64 to 1e-10, float32 to 1e-5 of the scale

pytestmark = pytest.mark.skipif(not _gemm.AVAILABLE, reason="the rows path runs only with a Numba-callable BLAS")

SHAPES = [  # x shape, filters, kernel height, pad
    ((2, 3, 5, 7), 4, 3, 1),    # W_out 7: the last tile of each row has 3 outputs
    ((1, 1, 4, 9), 2, 3, 0),    # N=1, C=1, no padding, W_out 7
    ((3, 2, 6, 5), 3, 3, 2),    # pad 2: W_out 7, a map larger than the input
    ((5, 2, 8, 8), 2, 3, 1),    # rows of whole tiles (split from the image), N not a multiple of the block
    ((2, 3, 6, 10), 3, 3, 0),   # pad 0, W_out 8: whole tiles, split from the padded copy
    ((2, 3, 6, 8), 3, 3, 0),    # pad 0, W 8: split straight from the image, the last tile cut (W_out 6)
    ((2, 2, 7, 6), 3, 5, 2),    # a 5x3 kernel
    ((3, 2, 5, 12), 2, 1, 1),   # a 1x3 kernel
]


@pytest.fixture
def every_layer(monkeypatch):
    """Every 3-wide stride-1 layer takes the rows path; returns the calls made to its kernels."""
    monkeypatch.setattr(winograd_rows, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd_rows, "BLOCK_TILES", 8)   # several blocks per chunk on these small maps
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 10**6)
    calls = []
    for mod, name in ((winograd_rows, "forward"), (winograd_rows, "backward"), (fused, "_rows_stats_forward"),
                      (fused, "_rows_bn_backward")):
        def spy(*a, _f=getattr(mod, name), _n=name):
            calls.append(_n)
            return _f(*a)
        monkeypatch.setattr(mod, name, spy)
    return calls


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs, F, HH, pad", SHAPES)
def test_conv_matches_reference(every_layer, xs, F, HH, pad, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((F, xs[1], HH, 3)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    cp = {"stride": 1, "pad": pad}
    out, cache = cpu.Conv.forward(x, w, b, cp)
    out_ref, cache_ref = get_backend("reference").Conv.forward(x, w, b, cp)
    _close(out, out_ref, dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    for name, g, g_ref in zip(("dx", "dw", "db"), cpu.Conv.backward(dout, cache),
                              get_backend("reference").Conv.backward(dout, cache_ref)):
        _close(g, g_ref, dtype, name)
    assert every_layer == ["forward", "backward"]


@pytest.mark.parametrize("ws, stride", [((2, 16, 3, 3), 2), ((2, 16, 3, 5), 1), ((2, 16, 3, 1), 1),
                                        ((2, 3, 3, 3), 1)])
def test_other_layers_stay_on_im2col(monkeypatch, ws, stride):
    # stride 2, kernels not 3 wide, and (default thresholds) fewer than MIN_CHANNELS input channels
    called = []
    monkeypatch.setattr(winograd_rows, "forward", lambda *a: called.append(1))
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 10**6)
    x = np.random.default_rng(2).standard_normal((2, ws[1], 9, 9))
    out, _ = cpu.Conv.forward(x, np.ones(ws), np.zeros(ws[0]), {"stride": stride, "pad": 1})
    assert not called
    ref, _ = get_backend("reference").Conv.forward(x, np.ones(ws), np.zeros(ws[0]), {"stride": stride, "pad": 1})
    _close(out, ref, np.float64, "out")


def test_few_channels_below_2d_winograd_take_the_path_by_default():
    assert winograd_rows.use(12, 3, 3, 1, 16) and winograd.tile_size(12, 3, 3, 1, 16, 16) == 0
    assert not winograd_rows.use(winograd_rows.MIN_CHANNELS - 1, 3, 3, 1, 16)


def test_weights_grad_is_the_adjoint_of_transform_weights():
    rng = np.random.default_rng(3)
    w, dU = rng.standard_normal((3, 2, 5, 3)), rng.standard_normal((6, 3, 10))
    U = winograd_rows.transform_weights(w, np.float64)
    np.testing.assert_allclose(np.vdot(U, dU), np.vdot(w, winograd_rows.weights_grad(dU[None], 2)), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weight_transforms_are_g_w_and_its_adjoint_over_chunk_parts(dtype):
    # the kernels against their definitions, U = G w along the kernel's width and dw = G^T dU, with
    # einsum; dU arrives as per-chunk parts, added in chunk order in their dtype
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3, 2, 3)).astype(dtype)
    parts = rng.standard_normal((3, 6, 4, 6)).astype(dtype)
    U = winograd_rows.transform_weights(w, dtype)
    assert U.dtype == dtype
    want_U = np.einsum("xl,fckl->xfck", winograd.G4, w.astype(np.float64)).reshape(6, 4, 6).astype(dtype)
    np.testing.assert_allclose(U, want_U, rtol=1e-6 if dtype == np.float32 else 1e-14)
    dw = winograd_rows.weights_grad(parts, 3)
    assert dw.dtype == dtype and dw.shape == (4, 3, 2, 3)
    total = ((parts[0] + parts[1]) + parts[2]).astype(np.float64)
    want_dw = np.einsum("xl,xfck->fckl", winograd.G4, total.reshape(6, 4, 3, 2)).astype(dtype)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pool, H, W, mode, need_dx", [(True, 8, 8, "train", False), (False, 5, 7, "train", False),
                                                       (True, 6, 10, "test", True), (False, 6, 6, "train", True)])
def test_fused_layers_match_the_reference_composition(every_layer, dtype, pool, H, W, mode, need_dx):
    check_cpu_fused_against_reference((5, 2, H, W), 4, dtype, pool, mode, need_dx)
    assert every_layer == ["_rows_stats_forward", "_rows_bn_backward"]


def test_results_depend_on_the_planned_chunks_not_the_running_threads():
    # 3 chunks of images, each with its partial dU and db, summed in chunk order: the same bits on
    # one running thread as on all of them; and blocks of 2 images leave a short last block
    rng = np.random.default_rng(8)
    N, C, F, H = 7, 4, 5, 8
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w, b = rng.standard_normal((F, C, 3, 3)).astype(np.float32), rng.standard_normal(F).astype(np.float32)
    dout = rng.standard_normal((N, F, H * H)).astype(np.float32)
    U = winograd_rows.transform_weights(w, np.float32)
    saved = numba.get_num_threads()
    runs = []
    try:
        for n in sorted({1, 2, saved}):
            numba.set_num_threads(n)
            out, dx = np.empty((N, F, H * H), np.float32), np.empty_like(x)
            dU, db = np.empty((3, 6, F, 3 * C), np.float32), np.empty((3, F), np.float32)
            with blas_threads(1):
                winograd_rows._forward(x, U, b, 1, H, H, 2, 3, out)
                winograd_rows._backward(x, U, dout, 1, H, H, 2, True, dx, dU, db)
            runs.append((out, dx, dU.sum(axis=0), db.sum(axis=0)))
    finally:
        numba.set_num_threads(saved)
    for run in runs[1:]:
        for a, b_ in zip(runs[0], run):
            np.testing.assert_array_equal(a, b_)


def test_float32_holds_the_tolerance_on_the_recipe_layer():
    # 12 -> 24 @ 16x16 with Kaiming-scaled weights on ReLU'd inputs, float32 against float64 (which
    # matches the reference to 1e-10, tests above), relative to the output's scale
    rng = np.random.default_rng(9)
    x = np.maximum(rng.standard_normal((4, 12, 16, 16)), 0)
    w = rng.standard_normal((24, 12, 3, 3)) * np.sqrt(2 / 108)
    b = np.zeros(24)
    assert winograd_rows.use(12, 3, 3, 1, 16)
    out32, _ = cpu.Conv.forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32),
                                {"stride": 1, "pad": 1})
    out64, _ = cpu.Conv.forward(x, w, b, {"stride": 1, "pad": 1})
    assert np.max(np.abs(out32 - out64)) < 1e-5 * np.max(np.abs(out64))
