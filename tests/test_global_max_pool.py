"""The cpu backend's GlobalMaxPool against the models' NumPy global max pool (the rule every
backend shares: per map its first NaN, else its first maximum), bit for bit, forward and backward."""
import numpy as np
import pytest

import numbaconv.cpu as cpu
from numbaconv.models import FastNet, global_max_pool_backward, global_max_pool_forward


def _special_maps(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7, 3, 4)).astype(dtype)
    x[0, 0] = 1.0                              # all tied: the first wins
    x[0, 1] = -0.0
    x[0, 1, 1, 2] = 0.0                        # 0.0 and -0.0 compare equal: the first (-0.0) stays
    x[1, 0, 2, 3] = np.nan                     # a NaN last in its map wins
    x[1, 1, 0, 0] = np.nan
    x[1, 1, 2, 2] = np.nan                     # two NaNs: the first
    x[2, 0] = -np.inf
    x[2, 1, 1, 1] = np.inf
    x[3, :, 0, 0] = x[3, :, 2, 3] = 9.0         # a tie between first and last element
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7, 3, 4), (1, 1, 1, 1), (3, 2, 1, 5), (64, 96, 2, 2)])
def test_cpu_global_max_pool_is_the_numpy_rule_bit_for_bit(dtype, shape):
    rng = np.random.default_rng(1)
    x = _special_maps(dtype) if shape == (5, 7, 3, 4) else rng.standard_normal(shape).astype(dtype)
    g, cache = cpu.GlobalMaxPool.forward(x)
    g_ref, cache_ref = global_max_pool_forward(x)
    assert g.dtype == dtype and g.shape == shape[:2]
    np.testing.assert_array_equal(g, g_ref)
    assert np.array_equal(np.signbit(g), np.signbit(g_ref))   # -0.0 stays -0.0
    dout = rng.standard_normal(shape[:2]).astype(dtype)
    dx, dx_ref = cpu.GlobalMaxPool.backward(dout, cache), global_max_pool_backward(dout, cache_ref)
    assert dx.dtype == dtype and dx.shape == shape
    np.testing.assert_array_equal(dx, dx_ref)


def test_fastnet_on_cpu_uses_the_kernel_and_matches_the_numpy_op(monkeypatch):
    import numbaconv.models as models

    net = FastNet(input_dims=(3, 8, 8), stem=4, widths=[5, 6], dtype=np.float64, backend="cpu", seed=0)
    X = np.random.default_rng(2).standard_normal((4, 3, 8, 8))
    y = np.array([0, 1, 2, 3])
    calls = []
    forward = cpu.GlobalMaxPool.forward
    monkeypatch.setattr(cpu.GlobalMaxPool, "forward", staticmethod(lambda x: calls.append(1) or forward(x)))
    loss, grads = net.loss(X, y)
    assert calls   # the kernel ran
    monkeypatch.setattr(models, "_host_ops", lambda nb: models._HostOps)   # the NumPy op instead
    loss_np, grads_np = net.loss(X, y)
    assert loss == loss_np
    for k in grads:
        np.testing.assert_array_equal(grads[k], grads_np[k])
