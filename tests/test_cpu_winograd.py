"""The cpu backend's Winograd F(2x2, 3x3) and F(4x4, 3x3) paths (numbaconv/cpu/winograd.py) against
the reference: conv and the fused conv-BN-ReLU[-pool] layers, on shapes that hit their edges (odd
maps, whose last tiles are cut; 1x1 maps; N=1; C=1; pads 0 and 2). The ``every_layer`` fixture lowers
the thresholds so these small shapes take the path, once per tile size; a stride-2 or non-3x3 layer
must fall back to im2col."""

import numba
import numpy as np
import pytest

import numbaconv.cpu as cpu
from numbaconv import get_backend
from numbaconv.cpu import _gemm, winograd
from numbaconv.cpu._blas import blas_threads
from test_fused_layers import _close, check_cpu_fused_against_reference   # _close: float64 to 1e-10, float32 to 1e-5 of the scale

pytestmark = pytest.mark.skipif(not _gemm.AVAILABLE, reason="Winograd runs only with a Numba-callable BLAS")

SHAPES = [  # x shape, filters, pad
    ((2, 3, 5, 7), 4, 1),    # odd H_out and W_out: the last tile row and column are cut
    ((1, 1, 4, 4), 2, 0),    # N=1, C=1, no padding
    ((3, 2, 6, 5), 3, 2),    # pad 2: a map larger than the input
    ((2, 4, 1, 1), 3, 1),    # 1x1 map: one tile, three quarters of it cut
    ((5, 2, 8, 8), 2, 1),    # N not a multiple of the block or the thread count
]


@pytest.fixture(params=[2, 4], ids=["F2", "F4"])
def every_layer(monkeypatch, request):
    """Every 3x3 stride-1 layer takes Winograd with tiles of the parameter's size; the size is returned."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "BLOCK_TILES", 8)   # several blocks per chunk on these small maps
    monkeypatch.setattr(winograd, "F4_RULES", ((1, 1, 10**6),) if request.param == 4 else ())
    return request.param


def _took(cache, m):
    """The Winograd path ran, with m x m tiles (U, the cache's last item, has (m + 2)**2 positions)."""
    return cache[-1] is not None and cache[-1].shape[0] == (m + 2) ** 2


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("xs, F, pad", SHAPES)
def test_conv_matches_reference(every_layer, xs, F, pad, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((F, xs[1], 3, 3)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    _check_against_reference(x, w, b, pad, dtype, rng, every_layer)


def _check_against_reference(x, w, b, pad, dtype, rng, m):
    """Conv forward (on the Winograd path with m x m tiles) and backward against the reference's."""
    cp = {"stride": 1, "pad": pad}
    out, cache = cpu.Conv.forward(x, w, b, cp)
    assert _took(cache, m)
    out_ref, cache_ref = get_backend("reference").Conv.forward(x, w, b, cp)
    _close(out, out_ref, dtype, "out")
    dout = rng.standard_normal(out.shape).astype(dtype)
    for name, g, g_ref in zip(("dx", "dw", "db"), cpu.Conv.backward(dout, cache),
                              get_backend("reference").Conv.backward(dout, cache_ref)):
        if m == 4 and dtype == np.float64 and name == "dw":
            # taps that see only padding (1x1 maps) have an exact zero gradient, which F(4x4) gives to
            # rounding (~1e-17), not exactly: its G has thirds and fifteenths. The elementwise relative
            # error cannot measure that, so those elements are held to float64 rounding of the array
            zero = g_ref == 0
            assert np.max(np.abs(g[zero]), initial=0) <= 1e-14 * np.max(np.abs(g_ref)), name
            g, g_ref = g[~zero], g_ref[~zero]
        _close(g, g_ref, dtype, name)


@pytest.mark.parametrize("ws, stride", [((2, 16, 3, 3), 2), ((2, 16, 5, 5), 1), ((2, 16, 3, 1), 1)])
def test_other_layers_fall_back_to_im2col(ws, stride):
    assert winograd.tile_size(ws[1], ws[2], ws[3], stride, 7, 7) == 0
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 7, 7))
    w, b = rng.standard_normal(ws), rng.standard_normal(ws[0])
    cp = {"stride": stride, "pad": 1}
    out, cache = cpu.Conv.forward(x, w, b, cp)
    assert cache[-1] is None
    _close(out, get_backend("reference").Conv.forward(x, w, b, cp)[0], np.float64, "out")


def test_enough_channels_take_the_path_by_default():
    assert winograd.tile_size(winograd.MIN_CHANNELS, 3, 3, 1, 8, 8) == 2
    assert winograd.tile_size(3, 3, 3, 1, 8, 8) == 0   # the RGB input layer: im2col's K=27 against Winograd's 3


@pytest.mark.parametrize("kind, C, H, W, m", [
    ("avx2", 64, 16, 16, 4), ("avx2", 128, 31, 16, 4), ("avx2", 32, 16, 16, 2), ("avx2", 128, 8, 8, 2),
    ("avx2", 64, 32, 32, 2), ("avx2", 64, 16, 8, 2),
    ("avx512", 24, 31, 31, 4), ("avx512", 32, 16, 16, 4), ("avx512", 64, 32, 32, 4), ("avx512", 64, 8, 8, 4),
    ("avx512", 128, 15, 15, 4), ("avx512", 16, 16, 16, 4), ("avx512", 24, 8, 8, 4), ("avx512", 48, 8, 8, 4),
    ("avx512", 16, 8, 8, 2), ("avx512", 128, 7, 7, 4), ("avx512", 128, 6, 6, 2), ("avx512", 48, 4, 4, 2),
    ("avx512", 256, 4, 4, 2),
    ("avx512", 64, 33, 33, 2), ("avx512", 64, 16, 4, 2)])
def test_f4_only_where_it_was_measured_faster(monkeypatch, kind, C, H, W, m):
    # each kind of CPU's rows of winograd.F4_WHERE (its comment has the ratios)
    monkeypatch.setattr(winograd, "F4_RULES", winograd.F4_WHERE[kind])
    assert winograd.tile_size(C, 3, 3, 1, H, W) == m


@pytest.mark.parametrize("H, m, itemsize, B", [
    (16, 4, 4, 6), (16, 4, 8, 3), (8, 4, 4, 24), (8, 4, 8, 12), (32, 4, 4, 2), (32, 4, 8, 1), (7, 2, 4, 6)])
def test_blocks_span_the_same_bytes_in_either_dtype(monkeypatch, H, m, itemsize, B):
    # 96 float32 tile columns, 48 float64: the images to cover them, rounded up (16 tiles on a 16x16 map
    # with 4x4 tiles: 6 images; 64 on 32x32: 2 images, 1 in float64)
    monkeypatch.setattr(winograd, "BLOCK_TILES", 96)
    assert winograd.block_images(H, H, 512, m, itemsize) == B
    assert winograd.block_images(H, H, 1, m, itemsize) == 1   # never more images than there are


def test_this_machine_takes_its_own_rows():
    # the kernel's own list of CPU flags, a source independent of llvmlite's
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    kind = "avx512" if "avx512f" in flags else "avx2"
    assert winograd.vector_kind() == kind and winograd.F4_RULES == winograd.F4_WHERE[kind]


@pytest.mark.parametrize("m", [2, 4])
def test_weights_grad_is_the_adjoint_of_transform_weights(m):
    rng = np.random.default_rng(2)
    w, dU = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(((m + 2) ** 2, 3, 2))
    assert np.isclose(np.vdot(winograd.transform_weights(w, np.float64, m), dU), np.vdot(w, winograd.weights_grad(dU[None])))


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weight_transforms_are_g_w_gt_and_its_adjoint(dtype, m):
    # the kernels against the definitions U = G w G^T and dw = G^T dU G, written with einsum
    rng = np.random.default_rng(3)
    n = m + 2
    w, dU = rng.standard_normal((5, 4, 3, 3)).astype(dtype), rng.standard_normal((n * n, 5, 4)).astype(dtype)
    G = winograd.G[m]
    U = winograd.transform_weights(w, dtype, m)
    assert U.dtype == dtype
    _close(U, np.einsum("ak,fckl,bl->abfc", G, w, G).reshape(n * n, 5, 4), dtype, "U")
    dw = winograd.weights_grad(dU[None])
    assert dw.dtype == dtype
    _close(dw, np.einsum("ak,abfc,bl->fckl", G, dU.reshape(n, n, 5, 4).astype(np.float64), G), dtype, "dw")


@pytest.mark.parametrize("name, S", [("_rows_6x6", winograd.BT4), ("_rows_6x6", winograd.B4),
                                     ("_rows_4x6", winograd.AT4), ("_rows_6x4", winograd.A4)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_plane_passes_are_the_matrix_product(name, S, dtype):
    # dst rows d0 + d_step*a = S[a] . the source rows s0 + s_step*k, over the first cols columns, with
    # sources and destinations spread over strided rows as the F(4x4) passes use them; nothing else
    # of dst is touched
    rng = np.random.default_rng(10)
    R, K = S.shape
    cols = 37   # not a multiple of any vector width: the loops' tails run
    src = rng.standard_normal((2 + 3 * K, 40)).astype(dtype)
    dst = rng.standard_normal((1 + 2 * R, 40)).astype(dtype)
    want = dst.copy()
    want[1::2][:R, :cols] = S @ src[2::3][:K, :cols].astype(np.float64)
    getattr(winograd, name)(S, src, 2, 3, dst, 1, 2, cols)
    _close(dst, want, dtype, name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weights_grad_sums_the_chunk_parts_in_order(dtype):
    # per-chunk parts are added in chunk order in their dtype, then transformed: the same bits as
    # summing them first (what a single-chunk call sees)
    rng = np.random.default_rng(4)
    parts = rng.standard_normal((3, 16, 7, 9)).astype(dtype)
    total = (parts[0] + parts[1]) + parts[2]
    np.testing.assert_array_equal(winograd.weights_grad(parts), winograd.weights_grad(total[None]))


def test_f4_matrices_compute_a_3x3_correlation():
    # A^T [(G g) * (B^T d)] = the 4 outputs of the 3-tap correlation of d (6,) with g (3,), exactly
    rng = np.random.default_rng(7)
    d, g = rng.standard_normal(6), rng.standard_normal(3)
    want = [d[i:i + 3] @ g for i in range(4)]
    np.testing.assert_allclose(winograd.AT4 @ ((winograd.G4 @ g) * (winograd.BT4 @ d)), want, rtol=0, atol=1e-14)


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
    cache = check_cpu_fused_against_reference((3, 2, H, H), 4, dtype, pool, mode, need_dx)
    assert _took(cache, every_layer)


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
    _check_against_reference(x, w, b, 1, dtype, rng, every_layer)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H", [7, 8, 15, 31, 32])   # 16 above: the widths F(4x4)'s row moves compile on their own
def test_f4_on_the_map_widths_compiled_on_their_own(monkeypatch, dtype, H):
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "F4_RULES", ((1, 1, 10**6),))
    rng = np.random.default_rng(H)
    x = rng.standard_normal((2, 2, H, H)).astype(dtype)
    w, b = rng.standard_normal((3, 2, 3, 3)).astype(dtype), rng.standard_normal(3).astype(dtype)
    _check_against_reference(x, w, b, 1, dtype, rng, 4)


@pytest.mark.parametrize("m", [2, 4])
def test_results_depend_on_the_planned_chunks_not_the_running_threads(m):
    # 3 chunks of images, each with its partial dU and db, summed in chunk order: the same bits on
    # one running thread as on all of them
    rng = np.random.default_rng(8)
    N, C, F, H = 7, 4, 5, 9
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w, b = rng.standard_normal((F, C, 3, 3)).astype(np.float32), rng.standard_normal(F).astype(np.float32)
    dout = rng.standard_normal((N, F, H * H)).astype(np.float32)
    saved = numba.get_num_threads()
    runs = []
    try:
        for n in sorted({1, saved}):
            numba.set_num_threads(n)
            out, dx = np.empty((N, F, H * H), np.float32), np.empty_like(x)
            with blas_threads(1):
                U = winograd.forward(x, w, b, 1, H, H, 3, out, m)
                runs.append((out, dx) + winograd.backward(x, U, dout, 1, 3, True, dx))
    finally:
        numba.set_num_threads(saved)
    for a, b_ in zip(runs[0], runs[-1]):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("C, F, H, N", [(64, 64, 16, 4), (128, 128, 8, 4), (256, 256, 4, 8)])
def test_float32_holds_the_tolerance_on_realistic_layers(C, F, H, N):
    # Kaiming-scaled weights on ReLU'd standard-normal inputs (the channel counts the nets use), both
    # tile sizes in float32 against the same data in float64 (which matches the reference to 1e-10,
    # tests above); F(4x4)'s error is ~6x F(2x2)'s, from its GEMMs (see winograd.G4's comment)
    rng = np.random.default_rng(9)
    x = np.maximum(rng.standard_normal((N, C, H, H)), 0).astype(np.float32)
    w = (rng.standard_normal((F, C, 3, 3)) * np.sqrt(2 / (9 * C))).astype(np.float32)
    b = np.zeros(F, np.float32)
    dout = rng.standard_normal((N, F, H * H)).astype(np.float32)

    def run(dtype, m):
        xd = x.astype(dtype)
        out, dx = np.empty((N, F, H * H), dtype), np.empty_like(xd)
        with blas_threads(1):
            U = winograd.forward(xd, w.astype(dtype), b.astype(dtype), 1, H, H, 2, out, m)
            return (out, dx) + winograd.backward(xd, U, dout.astype(dtype), 1, 2, True, dx)

    want = run(np.float64, 2)
    for m in (2, 4):
        for name, g, g_ref in zip(("out", "dx", "dw", "db"), run(np.float32, m), want):
            _close(g, g_ref, np.float32, f"F{m} {name}")
