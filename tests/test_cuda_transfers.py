"""The cuda backend's host<->device copy counter, and other libraries' GPU arrays
taken without a copy (under the simulator: objects exposing
``__cuda_array_interface__`` or a CUDA ``__dlpack__`` over a simulator array's memory)."""
import numpy as np
import pytest

from numbaconv import get_backend

nb = get_backend("cuda")
from numbaconv.cuda import _runtime  # noqa: E402
from numbaconv.cuda._runtime import cuda, is_device  # noqa: E402

CP = {"stride": 1, "pad": 1}


def _conv_inputs(dtype=np.float32):
    rng = np.random.default_rng(3)
    return (rng.standard_normal((2, 2, 4, 4)).astype(dtype), rng.standard_normal((3, 2, 3, 3)).astype(dtype),
            rng.standard_normal(3).astype(dtype))


def test_layer_on_numpy_inputs_counts_each_copy_and_its_bytes():
    x, w, b = _conv_inputs()
    out_bytes = 2 * 3 * 4 * 4 * 4
    with nb.count_transfers() as fwd:
        out, cache = nb.Conv.forward(x, w, b, CP)
        assert fwd.h2d == 3   # live inside the block
    assert (fwd.h2d, fwd.h2d_bytes) == (3, x.nbytes + w.nbytes + b.nbytes)
    assert (fwd.d2h, fwd.d2h_bytes) == (1, out_bytes)
    before = nb.transfer_stats()
    with nb.count_transfers() as bwd:
        nb.Conv.backward(np.ones_like(out), cache)
    assert (bwd.h2d, bwd.h2d_bytes) == (1, out_bytes)
    assert (bwd.d2h, bwd.d2h_bytes) == (3, x.nbytes + w.nbytes + b.nbytes)   # dx, dw, db
    after = nb.transfer_stats()
    assert after.h2d - before.h2d == 1 and after.d2h - before.d2h == 3
    nb.ReLU.forward(x)
    assert bwd.h2d == 1 and bwd.d2h == 3   # fixed once the block has ended


def test_layers_on_device_arrays_copy_nothing():
    x, w, b = _conv_inputs()
    xd, wd, bd = (cuda.to_device(a) for a in (x, w, b))
    bn_param = {"mode": "train"}
    gamma, beta = cuda.to_device(np.ones(3, np.float32)), cuda.to_device(np.zeros(3, np.float32))
    with nb.count_transfers() as t:
        out, cache = nb.Conv.forward(xd, wd, bd, CP)
        nb.Conv.backward(out, cache)
        a, c = nb.SpatialBatchNorm.forward(out, gamma, beta, bn_param)   # running stats created on the device
        nb.SpatialBatchNorm.backward(a, c)
        r, c = nb.ReLU.forward(a)
        nb.ReLU.backward(r, c)
    assert (t.h2d, t.d2h, t.h2d_bytes, t.d2h_bytes) == (2, 0, 2 * 3 * 4, 0)   # the two zero running stats
    with nb.count_transfers() as t:
        nb.SpatialBatchNorm.forward(out, gamma, beta, bn_param)   # now they exist
    assert (t.h2d, t.d2h) == (0, 0)


class CudaArrayInterfaceTensor:
    """Another library's GPU tensor, as PyTorch and CuPy expose one (version 3 of the interface)."""

    def __init__(self, d):
        self._d = d   # a simulator device array: its memory is host memory here
        host = d._ary
        self.__cuda_array_interface__ = {"shape": host.shape, "typestr": host.dtype.str, "strides": None,
                                         "data": (host.ctypes.data, False), "version": 3, "stream": None}


class DLPackTensor:
    """A tensor reachable only through DLPack, on a CUDA device (as ``__dlpack_device__`` says)."""

    def __init__(self, d):
        self._d = d

    def __dlpack__(self, stream=None, **kwargs):
        kwargs.pop("dl_device", None)
        return self._d._ary.__dlpack__(**{k: v for k, v in kwargs.items() if k in ("max_version", "copy")})

    def __dlpack_device__(self):
        return (2, 0)   # kDLCUDA, device 0


@pytest.mark.parametrize("wrap", [CudaArrayInterfaceTensor, DLPackTensor])
def test_foreign_gpu_arrays_are_taken_without_a_copy(wrap):
    x, w, b = _conv_inputs(np.float64)
    xd, wd, bd = (cuda.to_device(a) for a in (x, w, b))
    want, cache = nb.Conv.forward(x, w, b, CP)
    with nb.count_transfers() as t:
        out, fcache = nb.Conv.forward(wrap(xd), wrap(wd), wrap(bd), CP)
        dx, dw, db = nb.Conv.backward(wrap(out), fcache)
    assert (t.h2d, t.d2h) == (0, 0)
    assert is_device(out) and is_device(dx) and is_device(dw) and is_device(db)
    np.testing.assert_array_equal(out.copy_to_host(), want)
    np.testing.assert_array_equal(dx.copy_to_host(), nb.Conv.backward(want, cache)[0])
    adopted = _runtime.adopt(wrap(xd))
    adopted[0, 0, 0, 0] = 123.0   # a view of the same memory, not a copy
    assert xd.copy_to_host()[0, 0, 0, 0] == 123.0


def test_every_public_layer_adopts_foreign_arrays():
    d = cuda.to_device(np.array([[-1.0, 2.0], [3.0, -4.0]]))
    out, _ = nb.ReLU.forward(CudaArrayInterfaceTensor(d))
    np.testing.assert_array_equal(out.copy_to_host(), [[0.0, 2.0], [3.0, 0.0]])
    loss, dx = nb.softmax_loss(DLPackTensor(d), np.array([1, 0]))
    assert is_device(dx) and loss == pytest.approx(get_backend("reference").softmax_loss(d.copy_to_host(),
                                                                                          np.array([1, 0]))[0])
    for layer in nb.LAYERS:
        for name in ("forward", "backward", "backward_alt"):
            if hasattr(layer, name):
                assert getattr(layer, name).__wrapped__, (layer.__name__, name)


def test_host_arrays_and_cpu_dlpack_are_not_foreign():
    x = np.ones(3)
    assert not _runtime.is_foreign_device(x) and _runtime.adopt(x) is x
    assert not _runtime.is_foreign_device(cuda.to_device(x))

    class CPUTensor(DLPackTensor):
        def __dlpack_device__(self):
            return (1, 0)   # kDLCPU

    assert not _runtime.is_foreign_device(CPUTensor(cuda.to_device(x)))
