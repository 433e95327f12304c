"""The cuda backend on a real GPU, at sizes the simulator cannot afford.

Skipped without a GPU (CI); benchmarks/gpu_check.sh runs it on one. The shared
suites use tiny shapes, and the simulator launches at most two blocks of few
threads, so the grid-stride loops, the multi-tile paths and the reductions are
only exercised with thousands of concurrent threads here. The oracle is the
reference backend, as everywhere: float64 to 1e-10, max pooling exactly.
"""
import numpy as np
import pytest
from conftest import assert_conv_matches_reference

from numbaconv import get_backend
from numbaconv.gradcheck import rel_error

nb = get_backend("cuda")
pytestmark = pytest.mark.skipif(not nb.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu_check.sh)")
ref = get_backend("reference")
TOL = 1e-10


@pytest.mark.parametrize("xs, ws, stride, pad", [
    ((4, 16, 16, 16), (32, 16, 3, 3), 1, 1),    # many blocks, two k tiles, one f tile
    ((3, 8, 17, 15), (70, 8, 3, 3), 2, 1),      # stride 2 (the gathering dx kernel), two f tiles, odd sizes
    ((2, 3, 32, 32), (16, 3, 5, 5), 1, 2),      # CIFAR-sized first layer, 5x5
])
def test_conv_at_scale_matches_reference(xs, ws, stride, pad):
    rng = np.random.default_rng(11)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    assert_conv_matches_reference(nb, x, w, b, {"stride": stride, "pad": pad}, rng, TOL)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxpool_at_scale_matches_reference_exactly(dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((16, 32, 16, 16)).astype(dtype)
    x[:, :, ::4, ::4] = x[:, :, 1::4, 1::4]   # ties: the first maximum wins on both
    pp = {"pool_height": 2, "pool_width": 2, "stride": 2}
    out, cache = nb.MaxPool.forward(x, pp)
    out_ref, cache_ref = ref.MaxPool.forward(x, pp)
    np.testing.assert_array_equal(out, out_ref)
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(nb.MaxPool.backward(dout, cache), ref.MaxPool.backward(dout, cache_ref))


@pytest.mark.parametrize("mode", ["train", "test"])
def test_spatial_batchnorm_at_scale_matches_reference(mode):
    rng = np.random.default_rng(13)
    x = 3 + 2 * rng.standard_normal((64, 48, 16, 16))   # 16,384 values per channel: long reductions
    gamma, beta, dout = rng.standard_normal(48), rng.standard_normal(48), rng.standard_normal(x.shape)
    p, p_ref = {"mode": mode}, {"mode": mode}
    if mode == "test":
        for q in (p, p_ref):
            q["running_mean"], q["running_var"] = np.linspace(2, 4, 48), np.linspace(1, 5, 48)
    out, cache = nb.SpatialBatchNorm.forward(x, gamma, beta, p)
    out_ref, cache_ref = ref.SpatialBatchNorm.forward(x, gamma, beta, p_ref)
    # Per element, out and dx are differences (x - mean, gamma*xhat + beta): among a
    # million values some cancel, and a last-bit change in the mean (the GPU sums in
    # another order) reads as ~1e-9 there (7e-10 seen on an H200). They are compared
    # norm-wise; the per-channel sums (statistics, dgamma, dbeta) element-wise.
    assert normwise_error(out, out_ref) < TOL
    for key in ("running_mean", "running_var"):
        assert rel_error(np.asarray(p[key]), p_ref[key]) < TOL
    for method in ("backward", "backward_alt"):
        dx, dgamma, dbeta = getattr(nb.SpatialBatchNorm, method)(dout, cache)
        dx_ref, dgamma_ref, dbeta_ref = getattr(ref.SpatialBatchNorm, method)(dout, cache_ref)
        assert normwise_error(dx, dx_ref) < TOL
        assert rel_error(dgamma, dgamma_ref) < TOL and rel_error(dbeta, dbeta_ref) < TOL


def normwise_error(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_linear_relu_softmax_at_scale_match_reference():
    rng = np.random.default_rng(14)
    x, w, b = rng.standard_normal((256, 64, 4, 4)), rng.standard_normal((1024, 100)), rng.standard_normal(100)
    y = rng.integers(0, 100, 256)
    out, cache = nb.Linear.forward(x, w, b)
    out_ref, cache_ref = ref.Linear.forward(x, w, b)
    assert rel_error(out, out_ref) < TOL
    dout = rng.standard_normal(out.shape)
    for g, g_ref in zip(nb.Linear.backward(dout, cache), ref.Linear.backward(dout, cache_ref)):
        assert rel_error(g, g_ref) < TOL
    r, rc = nb.ReLU.forward(out)
    np.testing.assert_array_equal(r, ref.ReLU.forward(out)[0])
    np.testing.assert_array_equal(nb.ReLU.backward(dout, rc), ref.ReLU.backward(dout, ref.ReLU.forward(out)[1]))
    loss, dx = nb.softmax_loss(out, y)
    loss_ref, dx_ref = ref.softmax_loss(out, y)
    assert abs(loss - loss_ref) < TOL * abs(loss_ref)
    assert rel_error(dx, dx_ref) < TOL


@pytest.mark.parametrize("pool, mode", [({"pool_height": 2, "pool_width": 2, "stride": 2}, "train"),
                                        ({"pool_height": 3, "pool_width": 3, "stride": 1}, "test"),
                                        (None, "train")])
def test_fused_conv_bn_relu_pool_at_scale_matches_reference_composition(pool, mode):
    # F = 70: two filter tiles; N*H*W = 1,024 columns: 16 column tiles of statistics
    # combined per channel, with thousands of threads in every kernel.
    from numbaconv.layers import sandwiches

    rng = np.random.default_rng(15)
    x, w, b = rng.standard_normal((4, 8, 16, 16)), rng.standard_normal((70, 8, 3, 3)), rng.standard_normal(70)
    gamma, beta = rng.standard_normal(70), rng.standard_normal(70)
    name = "Conv_BatchNorm_ReLU" if pool is None else "Conv_BatchNorm_ReLU_Pool"
    extra = () if pool is None else (pool,)
    p, p_ref = {"mode": mode}, {"mode": mode}
    if mode == "test":
        for q in (p, p_ref):
            q["running_mean"], q["running_var"] = np.linspace(-1, 1, 70), np.linspace(5, 20, 70)
    cp = {"stride": 1, "pad": 1}
    out, cache = getattr(nb, name).forward(x, w, b, gamma, beta, cp, p, *extra)
    out_ref, cache_ref = getattr(sandwiches("reference"), name).forward(x, w, b, gamma, beta, cp, p_ref, *extra)
    assert normwise_error(out, out_ref) < TOL
    for key in ("running_mean", "running_var"):
        assert rel_error(np.asarray(p[key]), p_ref[key]) < TOL
    dout = rng.standard_normal(out.shape)
    grads = getattr(nb, name).backward(dout, cache)
    grads_ref = getattr(sandwiches("reference"), name).backward(dout, cache_ref)
    for what, g, g_ref in zip(("dx", "dw", "db", "dgamma", "dbeta"), grads, grads_ref):
        if what == "db" and mode == "train":   # a bias before batch norm: zero up to rounding
            assert np.max(np.abs(g - g_ref)) < 1e-9, what
        else:
            assert normwise_error(g, g_ref) < TOL, what


class _OnlyDLPack:
    """A tensor seen through DLPack alone (as JAX exports one)."""

    def __init__(self, t):
        self._t = t

    def __dlpack__(self, **kwargs):
        return self._t.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()


@pytest.mark.parametrize("through", ["__cuda_array_interface__", "__dlpack__"])
def test_pytorch_cuda_tensors_in_and_out_without_a_copy(through):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no GPU")
    rng = np.random.default_rng(16)
    x, w, b = rng.standard_normal((4, 3, 8, 8)), rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    wrap = (lambda t: t) if through == "__cuda_array_interface__" else _OnlyDLPack
    tx, tw, tb = (torch.from_numpy(a).cuda() for a in (x, w, b))
    with nb.count_transfers() as t:
        out, cache = nb.Conv.forward(wrap(tx), wrap(tw), wrap(tb), {"stride": 1, "pad": 1})
        dx, dw, db = nb.Conv.backward(wrap(torch.ones(out.shape, dtype=torch.float64, device="cuda")), cache)
    assert (t.h2d, t.d2h) == (0, 0)
    back = torch.as_tensor(out, device="cuda")   # numba's array, read by PyTorch in place
    assert back.data_ptr() == out.device_ctypes_pointer.value
    out_ref, cache_ref = ref.Conv.forward(x, w, b, {"stride": 1, "pad": 1})
    assert rel_error(back.cpu().numpy(), out_ref) < TOL
    assert rel_error(dx.copy_to_host(), ref.Conv.backward(np.ones(out_ref.shape), cache_ref)[0]) < TOL
