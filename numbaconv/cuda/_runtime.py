"""numba.cuda import guard, host/device array handling and the one launch helper.

Convention of the whole backend: the primary input of a call decides where the
result lives. NumPy in -> NumPy out (copied to the GPU and back); device array in
-> device array out, with no host round trip, so a model can keep its tensors on
the GPU. Kernels only ever see flat, C-contiguous device arrays and scalars.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import warnings
from dataclasses import dataclass

import numpy as np

_INSTALL_HINT = ("the numbaconv cuda backend needs the numba-cuda package: "
                 "pip install 'numbaconv[cuda]' (or pip install 'numba-cuda[cu13]')")

if importlib.util.find_spec("numba_cuda") is None:
    raise ImportError(_INSTALL_HINT)
try:
    import numba
    from numba import cuda
except ImportError as exc:  # numba-cuda present but broken: say what to install, keep the cause
    raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc

# NUMBA_ENABLE_CUDASIM=1 (read by numba at import): kernels run in the Python simulator.
SIMULATOR = bool(numba.config.ENABLE_CUDASIM)

MAX_THREADS_PER_BLOCK = 1024   # every CUDA GPU since compute capability 2.0
MAX_GRID_YZ = 65535
MAX_SHARED_BYTES = 48 * 1024   # static shared memory per block without opt-in
# Tiled kernels loop over their tiles (grid-stride), so the grid can be capped. On
# a GPU the cap only bounds the launch; the simulator costs ~0.5 ms per thread, so
# there two blocks are enough (still more than one, to exercise the striding).
GPU_MAX_BLOCKS = 65535
MAX_BLOCKS = 2 if SIMULATOR else GPU_MAX_BLOCKS
# Threads per block of the 1-D kernels (elementwise, reductions: a power of two
# <= kernels.RED_THREADS). Only the launch changes in the simulator, not the code.
GPU_THREADS_1D = 256
THREADS_1D = 32 if SIMULATOR else GPU_THREADS_1D
# The per-channel reductions run one block per channel: with a network's few
# channels (C=32: 32 blocks) only big blocks keep the GPU busy (db of conv
# 3->32 @ 32x32, N=128: 0.25 ms at 256 threads on an H200).
GPU_THREADS_REDUCE = 1024
THREADS_REDUCE = 32 if SIMULATOR else GPU_THREADS_REDUCE

NO_GPU_HINT = ("no CUDA GPU was found; to check the cuda kernels for correctness without one, run them in the "
               "Numba CUDA simulator: NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_backend.py")


def is_device(a) -> bool:
    """True for numba device arrays (and simulator fakes); NumPy arrays are host."""
    return not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")


# ---------------------------------------------------------------- transfer counter
# Every host<->device copy of the backend goes through to_device / to_host below,
# so a caller can check that a loop keeps its tensors on the GPU.

@dataclass
class TransferStats:
    """Host->device (h2d) and device->host (d2h) copies made by the backend, and their bytes."""
    h2d: int = 0
    d2h: int = 0
    h2d_bytes: int = 0
    d2h_bytes: int = 0


_totals = TransferStats()


def transfer_stats() -> TransferStats:
    """The copies made since the process started (a snapshot)."""
    return TransferStats(**vars(_totals))


class TransferCount:
    """The copies made inside a ``count_transfers()`` block: live while it runs, fixed after."""

    def __init__(self):
        self._start, self._end = transfer_stats(), None

    def _delta(self, name: str) -> int:
        return getattr(self._end or _totals, name) - getattr(self._start, name)

    h2d = property(lambda self: self._delta("h2d"))
    d2h = property(lambda self: self._delta("d2h"))
    h2d_bytes = property(lambda self: self._delta("h2d_bytes"))
    d2h_bytes = property(lambda self: self._delta("d2h_bytes"))

    def __repr__(self):
        return f"TransferCount(h2d={self.h2d}, d2h={self.d2h}, h2d_bytes={self.h2d_bytes}, d2h_bytes={self.d2h_bytes})"


@contextlib.contextmanager
def count_transfers():
    """``with count_transfers() as t: ...``; then t.h2d, t.d2h, t.h2d_bytes, t.d2h_bytes."""
    window = TransferCount()
    try:
        yield window
    finally:
        window._end = transfer_stats()


def to_device(h: np.ndarray):
    """cuda.to_device, counted."""
    _totals.h2d += 1
    _totals.h2d_bytes += int(h.nbytes)
    return cuda.to_device(h)


def to_host(d) -> np.ndarray:
    """d.copy_to_host(), counted."""
    _totals.d2h += 1
    _totals.d2h_bytes += int(d.nbytes)
    return d.copy_to_host()


# ---------------------------------------------------------------- other libraries' GPU arrays
_DLPACK_GPU = (2, 13)   # kDLCUDA, kDLCUDAManaged: memory a kernel can read


def is_foreign_device(a) -> bool:
    """True for another library's GPU array (PyTorch, CuPy, JAX ...): it exposes
    ``__cuda_array_interface__`` or ``__dlpack__`` on a CUDA device, and is not numba's."""
    if isinstance(a, np.ndarray) or is_device(a):
        return False
    if hasattr(a, "__cuda_array_interface__"):
        return True
    device = getattr(a, "__dlpack_device__", None)
    if device is None or not hasattr(a, "__dlpack__"):
        return False
    try:
        return int(device()[0]) in _DLPACK_GPU
    except Exception:   # an exporter that cannot say where it lives is not taken as GPU memory
        return False


def adopt(a):
    """A numba device array sharing a foreign GPU array's memory (no copy); anything
    else is returned unchanged. The foreign object is kept alive by the result."""
    if not is_foreign_device(a):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        desc, owner = dict(a.__cuda_array_interface__), a
    else:
        from cuda.core.utils import StridedMemoryView   # numba-cuda's own dependency

        # stream 1 is CUDA's legacy default stream, the backend's: the exporter orders its
        # pending work on its own stream before it (DLPack's stream protocol)
        view = StridedMemoryView.from_dlpack(a, stream_ptr=1)
        itemsize = np.dtype(view.dtype).itemsize
        desc = {"shape": tuple(view.shape), "typestr": np.dtype(view.dtype).str, "version": 3,
                "data": (int(view.ptr), bool(view.readonly)),
                "strides": None if view.strides is None else tuple(s * itemsize for s in view.strides)}
        owner = view
    if SIMULATOR:
        # The simulator's "device memory" is host memory: view it through NumPy's
        # array interface, which has the same fields, and wrap it as the simulator does.
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        holder = type("_Memory", (), {"__array_interface__": {k: desc[k] for k in ("shape", "typestr", "data",
                                                                                    "strides")} | {"version": 3},
                                     "owner": owner})()
        return FakeCUDAArray(np.asarray(holder))
    return cuda.from_cuda_array_interface(desc, owner=owner)


def adopting(fn):
    """``fn`` with every foreign GPU array among its arguments adopted first."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*(adopt(a) for a in args), **{k: adopt(v) for k, v in kwargs.items()})
    return wrapper


def as_device(a, dtype=None):
    """A C-contiguous device array holding ``a`` (no copy if it already is one)."""
    if is_device(a):
        if not a.is_c_contiguous():
            raise ValueError(f"device arrays must be C-contiguous, got one of shape {tuple(a.shape)}")
        if dtype is not None and np.dtype(a.dtype) != np.dtype(dtype):
            raise ValueError(f"device array has dtype {a.dtype}, expected {np.dtype(dtype)}")
        return a
    _require_gpu()
    h = np.ascontiguousarray(a, dtype=dtype)
    if h.strides != _c_strides(h.shape, h.itemsize):
        # NumPy calls an array with odd strides on its length-1 axes C-contiguous
        # (x[None] has stride 0 there); numba's device reshape then refuses to
        # flatten it ("operation requires copying", seen on an H200). Copy it.
        h = h.copy(order="C")
    return to_device(h)


def _c_strides(shape, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def flat(d):
    """The 1-D view every kernel takes, sharing d's memory (d is C-contiguous)."""
    if d.ndim == 1:
        return d
    if SIMULATOR:
        return d.reshape(d.size)
    # Built directly rather than by d.reshape, which refuses arrays whose length-1
    # axes carry odd strides (a caller's device array may).
    return type(d)(shape=(d.size,), strides=(d.dtype.itemsize,), dtype=d.dtype, gpu_data=d.gpu_data)


def empty(shape, dtype):
    _require_gpu()
    return cuda.device_array(shape, dtype=np.dtype(dtype))


_scratch: dict = {}
SCRATCH_ENTRIES = 64   # distinct (purpose, shape, dtype) kept; a network has a few per layer shape


def scratch(shape, dtype, purpose: str):
    """A device buffer for temporaries that never leave a call (partial sums,
    flipped filters), reused by later calls with the same purpose, shape and dtype.

    Each allocation costs ~55 us on an H200 through numba (measured), as much as a
    small kernel. Reuse is safe because every kernel of the backend runs on the
    default stream, in order: a later call's writes come after this call's reads."""
    key = (purpose, tuple(shape), np.dtype(dtype))
    buf = _scratch.get(key)
    if buf is None:
        if len(_scratch) >= SCRATCH_ENTRIES:
            _scratch.pop(next(iter(_scratch)))   # the oldest entry
        buf = _scratch[key] = empty(shape, dtype)
    return buf


def result(d, host: bool):
    """Hand a device result back in the caller's form."""
    return to_host(d) if host else d


def blocks(work: int, per_block: int) -> int:
    """Blocks for a grid-stride kernel: enough to cover ``work``, at most MAX_BLOCKS."""
    return max(1, min(MAX_BLOCKS, math.ceil(work / per_block)))


def check_launch(grid, block) -> tuple:
    """Reject a launch configuration the hardware would refuse (a bug here, not user error)."""
    grid = grid if isinstance(grid, tuple) else (grid,)
    block = block if isinstance(block, tuple) else (block,)
    if math.prod(block) > MAX_THREADS_PER_BLOCK or min(block) < 1:
        raise RuntimeError(f"block {block} exceeds {MAX_THREADS_PER_BLOCK} threads")
    if min(grid) < 1 or grid[0] > 2**31 - 1 or any(g > MAX_GRID_YZ for g in grid[1:]):
        raise RuntimeError(f"grid {grid} is outside the CUDA limits")
    return grid, block


_gpu_seen = SIMULATOR


def _require_gpu() -> None:
    """Fail with one clear line, instead of a driver traceback, when there is no GPU."""
    global _gpu_seen
    if not _gpu_seen:
        try:
            found = cuda.is_available()
        except Exception:  # a broken driver install reads as "no GPU"
            found = False
        if not found:
            raise RuntimeError(NO_GPU_HINT)
        _gpu_seen = True


# Launch the compiled kernel directly: each kernel has exactly one signature and
# every call's arguments match it (tests/test_cuda_backend.py checks each launch),
# so numba's per-call dispatch (typing every argument) is skipped. Off: the usual path.
DIRECT_LAUNCH = True


def launch(name: str, dtype, grid, block, *args) -> None:
    """Launch registered kernel ``name`` compiled for ``dtype``; the single launch point."""
    from .kernels import get_kernel, get_launcher

    grid, block = check_launch(grid, block)
    _require_gpu()
    global DIRECT_LAUNCH
    launcher = get_launcher(name, dtype) if DIRECT_LAUNCH and not SIMULATOR else None
    if launcher is not None:
        try:
            launcher(args, _dim3(grid), _dim3(block))
            return
        except Exception as exc:   # an internal API changed: the dispatcher still works
            DIRECT_LAUNCH = False
            warnings.warn(f"numbaconv: direct kernel launch failed ({exc!r}); using numba's dispatcher",
                          RuntimeWarning, stacklevel=2)
    get_kernel(name, dtype)[grid, block](*args)


def _dim3(d) -> tuple:
    return d + (1,) * (3 - len(d))
