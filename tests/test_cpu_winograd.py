"""The cpu backend's Winograd F(2x2, 3x3) path (numbaconv/cpu/winograd.py) against the reference:
conv and the fused conv-BN-ReLU[-pool] layers, on shapes that hit its edges (odd maps, whose last
tile is cut; 1x1 maps; N=1; C=1; pads 0 and 2). ``MIN_CHANNELS`` is lowered so these small shapes
take the path; a stride-2 or non-3x3 layer must fall back to im2col."""
import copy

import numpy as np
import pytest

import numbaconv.cpu as cpu
from numbaconv import get_backend
from numbaconv.cpu import _gemm, winograd
from numbaconv.layers import sandwiches
from test_fused_layers import _close   # float64 to 1e-10, float32 to 1e-5 of the array's scale

pytestmark = pytest.mark.skipif(not _gemm.AVAILABLE, reason="Winograd runs only with a Numba-callable BLAS")

SHAPES = [  # x shape, filters, pad
    ((2, 3, 5, 7), 4, 1),    # odd H_out and W_out: the last tile row and column are cut
    ((1, 1, 4, 4), 2, 0),    # N=1, C=1, no padding
    ((3, 2, 6, 5), 3, 2),    # pad 2: a map larger than the input
    ((2, 4, 1, 1), 3, 1),    # 1x1 map: one tile, three quarters of it cut
    ((5, 2, 8, 8), 2, 1),    # N not a multiple of the block or the thread count
]


@pytest.fixture
def every_layer(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "BLOCK_TILES", 8)   # several blocks per chunk on these small maps


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs, F, pad", SHAPES)
def test_conv_matches_reference(every_layer, xs, F, pad, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((F, xs[1], 3, 3)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    _check_against_reference(x, w, b, pad, dtype, rng)


def _check_against_reference(x, w, b, pad, dtype, rng):
    """Conv forward (on the Winograd path) and backward against the reference's."""
    cp = {"stride": 1, "pad": pad}
    out, cache = cpu.Conv.forward(x, w, b, cp)
    assert cache[-1] is not None   # the Winograd path ran
    out_ref, cache_ref = get_backend("reference").Conv.forward(x, w, b, cp)
    _close(out, out_ref, dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    for name, g, g_ref in zip(("dx", "dw", "db"), cpu.Conv.backward(dout, cache),
                              get_backend("reference").Conv.backward(dout, cache_ref)):
        _close(g, g_ref, dtype, name)


@pytest.mark.parametrize("ws, stride", [((2, 16, 3, 3), 2), ((2, 16, 5, 5), 1), ((2, 16, 3, 1), 1)])
def test_other_layers_fall_back_to_im2col(ws, stride):
    assert not winograd.usable(ws[1], ws[2], ws[3], stride)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 7, 7))
    w, b = rng.standard_normal(ws), rng.standard_normal(ws[0])
    cp = {"stride": stride, "pad": 1}
    out, cache = cpu.Conv.forward(x, w, b, cp)
    assert cache[-1] is None
    _close(out, get_backend("reference").Conv.forward(x, w, b, cp)[0], np.float64, "out")


def test_enough_channels_take_the_path_by_default():
    assert winograd.usable(winograd.MIN_CHANNELS, 3, 3, 1)
    assert not winograd.usable(3, 3, 3, 1)   # the RGB input layer: im2col's K=27 against Winograd's 3


def test_weights_grad_is_the_adjoint_of_transform_weights():
    rng = np.random.default_rng(2)
    w, dU = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal((16, 3, 2))
    assert np.isclose(np.vdot(winograd.transform_weights(w, np.float64), dU), np.vdot(w, winograd.weights_grad(dU)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weight_transforms_are_g_w_gt_and_its_adjoint(dtype):
    # the kernels against the definitions U = G w G^T and dw = G^T dU G, written with einsum
    rng = np.random.default_rng(3)
    w, dU = rng.standard_normal((5, 4, 3, 3)).astype(dtype), rng.standard_normal((16, 5, 4)).astype(dtype)
    G = winograd.G
    U = winograd.transform_weights(w, dtype)
    assert U.dtype == dtype
    _close(U, np.einsum("ak,fckl,bl->abfc", G, w, G).reshape(16, 5, 4), dtype, "U")
    _close(winograd.weights_grad(dU), np.einsum("ak,abfc,bl->fckl", G, dU.reshape(4, 4, 5, 4).astype(np.float64), G),
           np.float64, "dw")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_results_repeat_exactly(every_layer, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 3, 6, 6)).astype(dtype)
    w, b = rng.standard_normal((4, 3, 3, 3)).astype(dtype), rng.standard_normal(4).astype(dtype)
    dout = rng.standard_normal((7, 4, 6, 6)).astype(dtype)
    runs = []
    for _ in range(2):
        out, cache = cpu.Conv.forward(x, w, b, {"stride": 1, "pad": 1})
        runs.append((out,) + cpu.Conv.backward(dout, cache))
    for a, b_ in zip(*runs):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pool, H, mode, need_dx", [(True, 6, "train", True), (False, 5, "train", True),
                                                    (True, 4, "test", True), (False, 3, "train", False)])
def test_fused_layers_match_the_reference_composition(every_layer, dtype, pool, H, mode, need_dx):
    rng = np.random.default_rng(4)
    N, C, F = 3, 2, 4
    x = rng.standard_normal((N, C, H, H)).astype(dtype)
    w = rng.standard_normal((F, C, 3, 3)).astype(dtype)
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
    assert cache[-1] is not None   # the Winograd path ran
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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H, W", [(2, 2), (4, 6), (16, 16), (18, 20)])
def test_plane_output_transforms_equal_the_tile_loops(dtype, H, W):
    # _out_planes / _dout_planes (even maps >= PLANE_MIN_TW tiles wide) against the tile-at-a-time
    # loops, bit for bit, on any even map; the block's second image starts at column col0 = T
    rng = np.random.default_rng(5)
    F, th, tw = 3, H // 2, W // 2
    T = th * tw
    M = rng.standard_normal((F, 16, 2 * T)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    dn = rng.standard_normal((F, H * W)).astype(dtype)
    got, want = np.empty((F, H * W), dtype), np.empty((F, H * W), dtype)
    winograd._out_planes(M, T, th, tw, W, b, got, np.empty((4, T), dtype))
    winograd._out_tiles(M, T, th, tw, H, W, b, want)
    np.testing.assert_array_equal(got, want)
    got, want = np.zeros_like(M), np.zeros_like(M)
    winograd._dout_planes(dn, W, th, tw, got, T, np.empty((4, T), dtype))
    winograd._dout_tiles(dn, H, W, th, tw, want, T)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H", [16, 17])   # 16: the plane-at-a-time output transforms; 17: odd, the tile loops
def test_conv_on_wide_maps_matches_reference(every_layer, dtype, H):
    assert (H + 1) // 2 >= winograd.PLANE_MIN_TW   # wide enough; only the even map takes the planes
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, H, H)).astype(dtype)
    w, b = rng.standard_normal((3, 2, 3, 3)).astype(dtype), rng.standard_normal(3).astype(dtype)
    _check_against_reference(x, w, b, 1, dtype, rng)
