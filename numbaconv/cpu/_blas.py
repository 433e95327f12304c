"""Scoped BLAS threading for the cpu backend.

Two multithreaded pools on the same cores fight (spinning workers of one pool
steal the cores the other needs; measured 3-9x on conv, benchmarks/RESULTS.md).
So conv and linear call OpenBLAS from inside their Numba kernels with BLAS
limited to one thread (``blas_threads(1)``) and let Numba's threads split the
work; where that is not possible (no Numba-callable OpenBLAS) the NumPy
matmuls run with BLAS limited to ``numba.get_num_threads()``. Either way
``numba.set_num_threads`` governs both, and the limit lasts only for the call:
nothing changes process-wide once it returns.
"""
from __future__ import annotations

import threading

import numba
import numpy as np

from ._threads import threads_for_call

_lock = threading.Lock()
_controllers = None


def _blas_controllers():
    """The BLAS libraries NumPy loaded (found once; threadpoolctl scans the process)."""
    global _controllers
    if _controllers is None:
        with _lock:
            if _controllers is None:
                from threadpoolctl import ThreadpoolController

                _controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return _controllers


class blas_threads:
    """Limit BLAS to ``n`` threads (default: Numba's current count) inside the ``with`` block.

    A class, not a @contextmanager generator: it runs around every conv call, and the generator's
    machinery cost more than the work (~8 us against ~3 us a call, measured)."""
    __slots__ = ("n", "saved")

    def __init__(self, n: int | None = None):
        self.n = n

    def __enter__(self):
        n = numba.get_num_threads() if self.n is None else int(self.n)
        self.saved = []
        for lib in _blas_controllers():
            old = lib.get_num_threads()
            if old != n:
                lib.set_num_threads(n)
                self.saved.append((lib, old))
        return self

    def __exit__(self, *exc):
        for lib, old in self.saved:
            lib.set_num_threads(old)
        return False


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` with BLAS threads scoped to Numba's thread count."""
    with blas_threads():
        return np.matmul(a, b, out=out)


# Below this many element operations a kernel runs on one thread: starting a
# parallel region costs ~10-20 us on an idle machine, and on a busy one a
# worker that must be scheduled first was measured at ~8 ms per call (e.g.
# ReLU on 150 elements: 8 ms on 2 threads, 6 us on 1).
SMALL_WORK = 1 << 15

_planned = threading.local()   # .n: the thread count the current kernel call's work is split for


class kernel_threads:
    """Numba threads for one kernel call: the caller's count, or 1 for small work (or fewer when
    the free-cores candidate of ``_threads`` is chosen and other processes hold cores).

    The work is split for the caller's count either way (``work_chunks``), so a call that runs on
    fewer threads computes the same chunks in turns: the same partial sums, the same results.
    ``numba.set_num_threads`` is thread-local and restored on exit, so this is
    scoped to the call like ``blas_threads`` (a class for the same reason: it wraps every kernel call)."""
    __slots__ = ("work", "n", "want", "outer")

    def __init__(self, work: int):
        self.work = work

    def __enter__(self):
        self.n = n = numba.get_num_threads()
        planned = 1 if self.work < SMALL_WORK else n
        self.want = 1 if self.work < SMALL_WORK else threads_for_call(n)   # n unless a _threads candidate says less
        self.outer = getattr(_planned, "n", None)
        _planned.n = planned
        if self.want != self.n:
            try:
                numba.set_num_threads(self.want)
            except BaseException:
                _planned.n = self.outer
                raise
        return self

    def __exit__(self, *exc):
        try:
            if self.want != self.n:
                numba.set_num_threads(self.n)
        finally:
            _planned.n = self.outer
        return False


def work_chunks(N: int) -> int:
    """Chunks of images for one kernel call (each with its own partial sums, added in chunk order):
    one per thread the call was planned for (``kernel_threads``; outside one: Numba's current
    count), at most N. Planned, not running threads: results depend on the thread count the
    caller set, never on how many cores the machine's load left free."""
    n = getattr(_planned, "n", None) or numba.get_num_threads()
    return max(1, min(n, N))
