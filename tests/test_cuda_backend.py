"""The cuda backend beyond the shared conformance suite, on any machine:

* device arrays in -> device arrays out (under the simulator ``cuda.to_device`` works);
* every registered kernel compiles to PTX for compute capability 9.0 in both dtypes
  (a subprocess with the simulator off: NVVM needs no driver), so code the simulator
  accepts but a GPU would reject fails here;
* launch configurations stay within the hardware limits.
"""
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_conv_matches_reference

from numbaconv import get_backend

nb = get_backend("cuda")
from numbaconv.cuda import _runtime, kernels  # noqa: E402
from numbaconv.cuda._runtime import cuda, is_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CP = {"stride": 1, "pad": 1}
PP = {"pool_height": 2, "pool_width": 2, "stride": 2}


def _every_layer(x, w, b, gamma, beta, wl, bl, y, to):
    """Forward and backward of every layer; ``to`` places the inputs. Returns all outputs."""
    outs = []
    a, c = nb.Conv.forward(to(x), to(w), to(b), CP)
    outs += [a, *nb.Conv.backward(to(np.ones(a.shape, x.dtype)), c)]
    p, c = nb.MaxPool.forward(to(x), PP)
    outs += [p, nb.MaxPool.backward(to(np.ones(p.shape, x.dtype)), c)]
    for layer, xin in ((nb.SpatialBatchNorm, x), (nb.BatchNorm, x.reshape(x.shape[0], -1)[:, :3])):
        bn_param = {"mode": "train"}
        xin = np.ascontiguousarray(xin)
        o, c = layer.forward(to(xin), to(gamma), to(beta), bn_param)
        outs += [o, *layer.backward(to(xin * 0.5), c), *layer.backward_alt(to(xin * 0.5), c),
                 bn_param["running_mean"], bn_param["running_var"]]
        bn_param["mode"] = "test"
        outs.append(layer.forward(to(xin), to(gamma), to(beta), bn_param)[0])
    o, c = nb.Linear.forward(to(x), to(wl), to(bl))
    outs += [o, *nb.Linear.backward(to(np.ones(o.shape, x.dtype)), c)]
    r, c = nb.ReLU.forward(to(x))
    outs += [r, nb.ReLU.backward(to(x), c)]
    loss, dx = nb.softmax_loss(to(o if not is_device(o) else o.copy_to_host()), y)
    outs += [np.array(loss), dx]
    return outs


def _inputs(dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
    return dict(x=x, w=rng.standard_normal((2, 3, 3, 3)).astype(dtype), b=rng.standard_normal(2).astype(dtype),
                gamma=rng.standard_normal(3).astype(dtype), beta=rng.standard_normal(3).astype(dtype),
                wl=rng.standard_normal((48, 5)).astype(dtype), bl=rng.standard_normal(5).astype(dtype),
                y=np.array([1, 4]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_arrays_in_device_arrays_out(dtype):
    args = _inputs(dtype)
    on_host = _every_layer(**args, to=lambda a: a)
    on_device = _every_layer(**args, to=cuda.to_device)
    assert len(on_host) == len(on_device) == 34
    for h, d in zip(on_host, on_device):
        if h.ndim == 0:   # the loss is a Python float either way
            assert d == h
            continue
        assert isinstance(h, np.ndarray) and is_device(d), (type(h), type(d))
        assert d.dtype == h.dtype == dtype and d.shape == h.shape
        np.testing.assert_array_equal(d.copy_to_host(), h)   # same kernels, same bits


def test_batchnorm_running_stats_stay_on_device():
    x = cuda.to_device(np.arange(12.0).reshape(4, 3))
    bn_param = {"mode": "train", "momentum": 0.5}
    nb.BatchNorm.forward(x, cuda.to_device(np.ones(3)), cuda.to_device(np.zeros(3)), bn_param)
    assert is_device(bn_param["running_mean"]) and is_device(bn_param["running_var"])
    np.testing.assert_allclose(bn_param["running_mean"].copy_to_host(), 0.5 * np.array([4.5, 5.5, 6.5]))
    np.testing.assert_allclose(bn_param["running_var"].copy_to_host(), 0.5 * np.full(3, 11.25))


def test_backend_module_api():
    assert nb.NAME == "cuda"
    assert nb.is_available() is (not nb.SIMULATOR and cuda.is_available())   # never True in the simulator
    nb.synchronize()
    assert "NUMBA_ENABLE_CUDASIM=1" in nb.NO_GPU_HINT


_PTX_SCRIPT = r"""
import re
import numpy as np
from numba import cuda
from numbaconv.cuda import kernels
import numba.cuda.dispatcher
# numba-cuda compiles the device functions a kernel calls (kernels.device_function)
# for the current device's compute capability, which needs a driver; there is none
# here, so it is told the capability the kernels are compiled for.
numba.cuda.dispatcher.get_current_device = lambda: type("Device", (), {"compute_capability": (9, 0)})()
f64_maths = re.compile(r"\b(?:add|sub|mul|fma|div|sqrt|ex2|lg2|max|min|neg)\.[a-z.]*f64\b")
compiled = 0
for name in kernels.KERNELS:
    for dtype in (np.float32, np.float64):
        ptx, restype = cuda.compile_ptx(kernels.python_kernel(name, dtype), kernels.signature(name, dtype), cc=(9, 0))
        assert ".target sm_90" in ptx, name
        assert str(restype) == "none", (name, restype)
        # deterministic results: no atomic or reduction instructions (their order varies run to run)
        assert not re.search(r"^\s*(?:@%p\d+\s+)?(?:atom|red)\.", ptx, re.M), name
        if dtype is np.float32:   # no silent promotion to double precision
            assert not f64_maths.findall(ptx), (name, sorted(set(f64_maths.findall(ptx))))
        compiled += 1
print("compiled", compiled)
"""


def test_every_kernel_compiles_to_ptx_for_sm90():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    proc = subprocess.run([sys.executable, "-c", _PTX_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"compiled {2 * len(kernels.KERNELS)}" in proc.stdout


def test_no_kernel_escapes_the_registry():
    # Kernels are compiled in one place only (kernels.get_kernel), so the PTX test
    # above sees every kernel the backend can launch; kernels.device_function makes
    # helpers, compiled inside the kernels that call them.
    for path in (REPO / "numbaconv" / "cuda").glob("*.py"):
        hits = re.findall(r"cuda\.jit\b(?!\(device=True)", path.read_text())
        assert len(hits) == (1 if path.name == "kernels.py" else 0), path.name


def _check_launch_args(name, dtype, args):
    """The arguments of a launch fit the signature the kernel is compiled with on a GPU.

    The simulator ignores signatures, so without this a float passed where the
    kernel takes an int64 (or a 2-D or strided array where it takes a flat one)
    would only fail on a real GPU, as a dispatch error."""
    codes = kernels.KERNELS[name].args
    assert len(args) == len(codes), (name, len(args), codes)
    arrays = {"A": np.dtype(dtype), "I": np.dtype(np.int32), "L": np.dtype(np.int64)}
    for i, (code, arg) in enumerate(zip(codes, args)):
        where = f"{name} argument {i} ({code})"
        if code in arrays:
            assert is_device(arg), (where, type(arg))
            assert np.dtype(arg.dtype) == arrays[code] and arg.ndim == 1 and arg.is_c_contiguous(), \
                (where, arg.dtype, arg.shape)
        elif code == "i":
            assert isinstance(arg, (int, np.integer)) and not isinstance(arg, bool), (where, type(arg))
        else:
            assert isinstance(arg, (float, np.floating)), (where, type(arg))


class _Recorder:
    """Stands in for compiled kernels: records each launch (and checks its
    arguments against the kernel's signature) instead of running it."""

    def __init__(self):
        self.launches = []

    def __call__(self, name, dtype):
        def configure(config):
            self.launches.append((name, *config))
            return lambda *args: _check_launch_args(name, dtype, args)
        return type("K", (), {"__getitem__": lambda _, config: configure(config)})()


def test_launch_configurations_within_hardware_limits(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(kernels, "get_kernel", rec)
    monkeypatch.setattr(_runtime, "DIRECT_LAUNCH", False)   # on a GPU: every launch through get_kernel
    args = _inputs(np.float32)
    args["x"] = np.zeros((8, 3, 32, 32), np.float32)   # a CIFAR-sized batch (kernels do not run)
    args["wl"] = np.zeros((3 * 32 * 32, 5), np.float32)
    args["y"] = np.zeros(8, np.int64)
    with np.errstate(all="ignore"):
        _every_layer(**args, to=lambda a: a)
        # stride 2: dx by the gathering kernel (stride 1 reuses the forward kernel)
        out, cache = nb.Conv.forward(args["x"][:, :, :31, :31], args["w"], args["b"], {"stride": 2, "pad": 1})
        nb.Conv.backward(np.zeros(out.shape, np.float32), cache)
        _fused_layers(args, np.float32)
    assert {name for name, *_ in rec.launches} == set(kernels.KERNELS)   # every kernel is used
    for name, grid, block in rec.launches:
        _runtime.check_launch(grid, block)
        threads = int(np.prod(block))
        assert threads <= _runtime.MAX_THREADS_PER_BLOCK
        if "block_sum(" in inspect.getsource(kernels.KERNELS[name].make):
            # the tree reduction needs a power of two within the shared slots
            assert threads & (threads - 1) == 0 and threads <= kernels.RED_THREADS, name
    # The GPU launch sizes (the simulator launches fewer threads) obey the same limits.
    assert kernels.TILE ** 2 <= _runtime.MAX_THREADS_PER_BLOCK
    for g in (_runtime.GPU_THREADS_1D, _runtime.GPU_THREADS_REDUCE):
        assert g <= kernels.RED_THREADS and g & (g - 1) == 0
    for name in kernels.KERNELS:
        assert kernels.shared_bytes(name, np.float64) <= _runtime.MAX_SHARED_BYTES, name


def _fused_layers(args, dtype):
    """Forward and backward of both fused layers, train and test mode (need_dx both ways)."""
    x, w, b = args["x"], args["w"], args["b"]
    gamma, beta = np.ones(w.shape[0], dtype), np.zeros(w.shape[0], dtype)
    p = {}
    for mode in ("train", "test"):   # test mode uses the running statistics train mode made
        p["mode"] = mode
        out, cache = nb.Conv_BatchNorm_ReLU.forward(x, w, b, gamma, beta, CP, p)
        nb.Conv_BatchNorm_ReLU.backward(np.zeros(out.shape, dtype), cache)
        out, cache = nb.Conv_BatchNorm_ReLU_Pool.forward(x, w, b, gamma, beta, CP, p, PP)
        nb.Conv_BatchNorm_ReLU_Pool.backward(np.zeros(out.shape, dtype), cache, need_dx=False)


def test_batchnorm_and_fused_layers_launch_counts(monkeypatch):
    # spatial batch norm: two launches each way (statistics, apply; sums, dx); the fused
    # layers' forward: conv with statistics, combine, BN-ReLU-pool in one kernel
    rec = _Recorder()
    monkeypatch.setattr(kernels, "get_kernel", rec)
    monkeypatch.setattr(_runtime, "DIRECT_LAUNCH", False)
    x = np.zeros((2, 3, 4, 4), np.float32)
    g, bt = np.ones(3, np.float32), np.zeros(3, np.float32)
    p = {}
    for mode in ("train", "test"):   # test mode uses the running statistics train mode made
        p["mode"] = mode
        for method in ("backward", "backward_alt"):
            rec.launches.clear()
            out, cache = nb.SpatialBatchNorm.forward(x, g, bt, p)
            assert [n for n, *_ in rec.launches] == ["bn_stats", "bn_forward_apply"]
            getattr(nb.SpatialBatchNorm, method)(out, cache)
            assert [n for n, *_ in rec.launches][2:] == ["bn_backward_sums", "bn_backward_apply"]
    rec.launches.clear()
    w = np.zeros((3, 3, 3, 3), np.float32)
    nb.Conv_BatchNorm_ReLU_Pool.forward(x, w, bt, g, bt, CP, {"mode": "train"}, PP)
    assert [n for n, *_ in rec.launches] == ["conv_forward", "bn_stats", "bn_relu_pool"]


def test_scratch_buffers_are_reused_per_purpose_shape_and_dtype_and_bounded(monkeypatch):
    monkeypatch.setattr(_runtime, "_scratch", {})
    a = _runtime.scratch((3, 4), np.float32, "p")
    assert _runtime.scratch((3, 4), np.float32, "p") is a
    assert _runtime.scratch((3, 4), np.float64, "p") is not a and _runtime.scratch((3, 4), np.float32, "q") is not a
    for i in range(_runtime.SCRATCH_ENTRIES):
        _runtime.scratch((i + 1,), np.float32, "fill")
    assert len(_runtime._scratch) == _runtime.SCRATCH_ENTRIES
    assert _runtime.scratch((3, 4), np.float32, "p") is not a   # the oldest went first


def test_check_launch_rejects_oversized_configurations():
    with pytest.raises(RuntimeError, match="exceeds 1024 threads"):
        _runtime.check_launch(1, (32, 33))
    with pytest.raises(RuntimeError, match="outside the CUDA limits"):
        _runtime.check_launch((1, 70000), 32)


def test_filters_too_large_for_shared_memory_are_a_clear_error():
    with pytest.raises(ValueError, match=r"at most 2048 taps per channel, got w of shape \(1, 1, 50, 50\)"):
        nb.Conv.forward(np.zeros((1, 1, 50, 50)), np.zeros((1, 1, 50, 50)), np.zeros(1), {"stride": 1, "pad": 0})


def test_missing_numba_cuda_is_a_clear_import_error():
    code = ("import importlib.util as u; real = u.find_spec\n"
            "u.find_spec = lambda name, *a: None if name == 'numba_cuda' else real(name, *a)\n"
            "import numbaconv.cuda")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert "ImportError: the numbaconv cuda backend needs the numba-cuda package: pip install 'numbaconv[cuda]'" \
        in proc.stderr


def test_conv_dw_split_over_columns_matches_reference():
    # Enough output columns (N*H_out*W_out = 512) that dw is summed in two chunks
    # and the chunks are added by sum_splits.
    from numbaconv.cuda.conv import dw_splits

    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 2, 16, 16)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    assert dw_splits(1, 2 * 16 * 16)[0] == 2
    assert_conv_matches_reference(nb, x, w, b, CP, rng)


def test_without_gpu_or_simulator_a_clear_error():
    # get_backend refuses where the backend is chosen; the module itself still guards its launches.
    code = ("import numpy as np\nimport numbaconv.cuda as nb\nfrom numbaconv import get_backend\n"
            "from numbaconv.backends import BackendUnavailableError\n"
            "if nb.is_available():\n    print('has a GPU')\nelse:\n"
            "    try:\n        get_backend('cuda')\n    except BackendUnavailableError as e:\n        print('error:', e)\n"
            "    try:\n        nb.ReLU.forward(np.ones(3))\n    except RuntimeError as e:\n        print('error:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"},
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("has a GPU") or proc.stdout.splitlines() == [
        "error: backend 'cuda' needs a CUDA GPU and none was found; use --backend cpu (or set NUMBA_ENABLE_CUDASIM=1 "
        "to run the cuda kernels in the slow simulator)", "error: " + nb.NO_GPU_HINT], proc.stdout


@pytest.mark.parametrize("xs, ws, pad", [
    ((1, 2, 3, 3), (70, 2, 1, 1), 0),   # F = 70 > BLOCK_F: two filter tiles (forward, dw; C = 2 tiles of dx)
    ((1, 8, 3, 3), (2, 8, 3, 3), 1),    # K = C*HH*WW = 72 > BLOCK_COLS: two k tiles of dw and of the forward's sum
])
def test_conv_beyond_one_block_tile_matches_reference(xs, ws, pad):
    from numbaconv.cuda.kernels import BLOCK_COLS, BLOCK_F

    rng = np.random.default_rng(6)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    assert ws[0] > BLOCK_F or ws[1] * ws[2] * ws[3] > BLOCK_COLS
    assert_conv_matches_reference(nb, x, w, b, {"stride": 1, "pad": pad}, rng)
