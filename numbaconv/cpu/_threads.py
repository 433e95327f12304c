"""How the cpu backend's threads wait and share work: candidate settings for a busy machine (issue #12).

Why a parallel region waits for a descheduled thread (read from numba 0.68 and libgomp; no timing here):

- Threading layer. numba tries tbb, then omp, then workqueue. Without the ``tbb`` wheel (the case
  here: ``tbbpool`` cannot find libtbb.so.12) it takes **omp**, which on Linux is GNU libgomp.
- Work split. numba cuts a ``prange`` into one range per thread (``gufunc_scheduler``), and the
  omp layer runs them under a plain ``#pragma omp for`` (a static schedule), so each thread's
  share is fixed before the region starts: when another process takes one core, the region
  lasts as long as the thread on that core needs, while the other thread waits at the barrier.
  ``numba.set_parallel_chunksize`` cuts the range finer, but omp still hands the pieces out
  statically (so does workqueue); only the tbb layer hands them out on demand (work stealing).
- Waiting. libgomp's waiting threads spin ``GOMP_SPINCOUNT`` times (300,000 when neither it nor
  ``OMP_WAIT_POLICY`` is set; 100 only when the process has more OpenMP threads than CPUs, and a
  busy *other* process does not count) before sleeping on a futex. A worker spinning between
  kernels, while the main thread runs NumPy and Python, is a third runnable thread on two cores:
  it takes time from our own main thread and from the other process, and the scheduler then
  charges our threads for it.
- Thread count. Two threads on two cores of which one is busy leave three runnable threads for
  two cores; with a static split and spinning, that was measured worse than one thread.
- BLAS. The kernels call OpenBLAS single-threaded (``_blas.blas_threads(1)``); OpenBLAS's own
  worker threads, once woken by a multi-threaded NumPy matmul, also spin before sleeping.

Each candidate below is one row: what it changes, in which unit, and why it might help. ``DEFAULT``
("passive" and "free-cores", chosen by measurement: see its comment) applies unless the user set libgomp's own
``OMP_WAIT_POLICY``/``GOMP_SPINCOUNT``; libgomp reads them once, when it loads, so ``numbaconv.cpu``'s
import starts numba's threads with the variable set and then puts the environment back (child processes
and other OpenMP runtimes loaded later keep the user's settings; but PyTorch's CPU wheel uses this same
system libgomp, so imported after ``numbaconv.cpu`` it waits passively too, and imported before it,
ours follows its default: ``numbaconv bench`` imports it first, ``bench.load_torch_first``). Others are
chosen by name, comma-separated, in ``NUMBACONV_THREAD_CANDIDATES`` (read at that import; ``none``:
numba's and libgomp's own defaults), e.g.::

    NUMBACONV_THREAD_CANDIDATES=none .venv/bin/python benchmarks/busy_steps.py
    NUMBACONV_THREAD_CANDIDATES=tbb,free-cores .venv/bin/python benchmarks/busy_steps.py

``applied()`` says what took effect (``numbaconv bench`` and ``busy_steps.py`` print it).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

ENV = "NUMBACONV_THREAD_CANDIDATES"


@dataclass(frozen=True)
class Candidate:
    """One setting. ``env``: variables for libgomp/OpenBLAS, set before the library is loaded;
    ``layer``: numba's threading layer; ``chunksize``: iterations per piece of a ``prange``
    (numba.set_parallel_chunksize; 0 = one piece per thread); ``free_cores``: cap each kernel
    call's threads at the cores other processes leave free; ``blas_threads``: OpenBLAS's
    process-wide thread count."""
    why: str
    env: dict = field(default_factory=dict)
    layer: str | None = None
    chunksize: int | None = None
    free_cores: bool = False
    blas_threads: int | None = None


CANDIDATES = {
    "passive": Candidate(
        "OMP_WAIT_POLICY=PASSIVE (0 spins): a thread with nothing to do sleeps at once instead of "
        "spinning, so it leaves the core to our main thread and to the other process; costs a futex "
        "wake-up per parallel region on a quiet machine",
        env={"OMP_WAIT_POLICY": "PASSIVE"}),
    "spin-10k": Candidate(
        "GOMP_SPINCOUNT=10000 spins (1/30 of libgomp's default 300,000): back-to-back kernels still "
        "find their worker awake, a worker idle for longer sleeps",
        env={"GOMP_SPINCOUNT": "10000"}),
    "workqueue": Candidate(
        "numba's own pool: waits on condition variables (never spins); static split, the calling "
        "thread does no share of the work; not thread-safe (one Python thread launching kernels)",
        layer="workqueue"),
    "tbb": Candidate(
        "TBB layer (pip install tbb) with 1-iteration pieces: idle threads steal pieces, so a slowed "
        "thread holds up the region by one piece, not by its whole share; kernels that split into "
        "one chunk per thread (conv backward) still have as many pieces as threads",
        layer="tbb", chunksize=1),
    "free-cores": Candidate(
        "each kernel call runs on at most the cores that other processes leave free (runnable "
        "threads from /proc/loadavg less our own, re-read every 0.1 s), so no region waits for a "
        "thread that shares a core; the work is still split for the caller's thread count "
        "(_blas.work_chunks), so results do not depend on the load",
        free_cores=True),
    "blas1": Candidate(
        "OpenBLAS limited to 1 thread process-wide: its worker threads are never woken by a NumPy "
        "matmul, so they never spin",
        blas_threads=1),
}

# What applies when NUMBACONV_THREAD_CANDIDATES is unset. Measured (benchmarks/RESULTS.md, "Busy
# machine"; benchmarks/busy_steps.py, 2 cores, one kept busy by another process): libgomp's default
# spinning gave 0.74x the 1-thread steps; "passive" (idle threads sleep) 1.01, 1.03, then 0.85-0.90
# once the kernels got faster (more, shorter parallel regions, each waiting for a thread that shares
# its core with the other process); "passive" + "free-cores" (each call also runs on the cores other
# processes leave free) 1.04, 1.17, 0.97 in the same rounds, with the quiet machine 169/303/326
# steps against passive's 176.5/280/320 (within the rounds' spread). Results do not depend on it
# (chunks follow the planned thread count, _blas.work_chunks; tested).
DEFAULT = ("passive", "free-cores")
# A user's own libgomp wait settings win over the default.
USER_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

_applied: dict = {"candidates": [], "notes": [], "configured": False}
_free_cores = False


def _libgomp_loaded() -> bool:
    try:
        with open("/proc/self/maps") as fh:
            return "libgomp" in fh.read()
    except OSError:
        return False


def _preload_tbb() -> None:
    """The ``tbb`` wheel puts libtbb.so.12 in the environment's lib/, which the dynamic loader
    does not search: load it globally first, so numba's tbbpool (linked against it) imports."""
    import ctypes
    import sys

    path = os.path.join(sys.prefix, "lib", "libtbb.so.12")
    if os.path.exists(path):
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass


def _layer_available(layer: str) -> bool:
    """numba's own test: its pool module for ``layer`` imports (tbbpool needs libtbb)."""
    import importlib

    module = {"tbb": "tbbpool", "omp": "omppool", "workqueue": "workqueue"}[layer]
    if layer == "tbb":
        _preload_tbb()
    try:
        importlib.import_module(f"numba.np.ufunc.{module}")
        return True
    except ImportError:
        return False


def parse(spec: str | None) -> list[str]:
    """Candidate names from a comma-separated ``spec`` (None or "": the DEFAULT; "none": none at all);
    an unknown name is a ValueError naming the choices."""
    if spec is None or not spec.strip():
        return list(DEFAULT)
    if spec.strip() == "none":
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in CANDIDATES:
            raise ValueError(f"{ENV}: unknown candidate {n!r}; choose from {', '.join(CANDIDATES)} "
                             f"(comma-separated), 'none', or leave it unset (the default: {', '.join(DEFAULT)})")
    return names


def configure(spec: str | None = None) -> dict:
    """Apply the candidates named in ``spec`` (default: ``$NUMBACONV_THREAD_CANDIDATES``, read
    once per process) before numba starts its threads. Returns ``applied()``."""
    global _free_cores
    import numba
    from numba.np.ufunc import parallel

    if spec is None and _applied["configured"]:
        return applied()
    _applied["configured"] = True
    chosen = os.environ.get(ENV) if spec is None else spec
    names = parse(chosen)
    if not (chosen or "").strip():   # the default's wait setting yields to the user's own libgomp settings
        names = [n for n in names if not any(k in os.environ for k in CANDIDATES[n].env if k in USER_WAIT_VARIABLES)]
    if not names:
        return applied()
    started = parallel._is_initialized
    gomp = _libgomp_loaded()
    notes = []
    saved_env = {}
    for name in names:
        c = CANDIDATES[name]
        for k, v in c.env.items():
            if k.startswith(("OMP_", "GOMP_")) and gomp:
                notes.append(f"{name}: libgomp already loaded, {k} has no effect")
            saved_env.setdefault(k, os.environ.get(k))
            os.environ[k] = v
        if c.layer is not None:
            if not _layer_available(c.layer):
                notes.append(f"{name}: numba's {c.layer} layer cannot load here (for tbb: pip install tbb); "
                             f"{name} not applied")
                continue
            if started:
                notes.append(f"{name}: numba's threads already started, layer {c.layer} not set")
            else:
                numba.config.THREADING_LAYER = c.layer
        if c.blas_threads is not None:
            from ._blas import _blas_controllers

            for lib in _blas_controllers():
                lib.set_num_threads(c.blas_threads)
        _free_cores = _free_cores or c.free_cores
    if saved_env and not started:
        # libgomp reads its variables once, when it loads: start numba's threads (which loads it)
        # and put the environment back, so other OpenMP runtimes loaded later in this process
        # (not PyTorch's CPU wheel: it shares this libgomp) and child processes keep the user's settings.
        numba.get_num_threads()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for name in names:   # after the layer is chosen: set_parallel_chunksize starts the threads
        if CANDIDATES[name].chunksize is not None and not any(n.startswith(name + ":") for n in notes):
            try:
                numba.set_parallel_chunksize(CANDIDATES[name].chunksize)   # this (the main) thread's setting
            except Exception as e:   # e.g. the tbb layer asked for and not installed
                notes.append(f"{name}: {e}".splitlines()[0])
    _applied["candidates"] = names
    _applied["notes"] = notes
    return applied()


def applied() -> dict:
    """The candidates chosen, and why any part of them could not take effect."""
    return {"candidates": list(_applied["candidates"]), "notes": list(_applied["notes"])}


# --- free-cores: how many cores other processes leave us ----------------------------------------

_REREAD_S = 0.1      # seconds between looks at /proc (a look costs ~0.1 ms)
_cache = {"t": -1.0, "free": None}
_cache_lock = threading.Lock()


def _runnable_elsewhere() -> int | None:
    """Runnable threads on the machine that are not ours (None where /proc cannot tell)."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
        ours = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as fh:
                    # the state follows the command name in parentheses, which may hold spaces
                    ours += fh.read().rsplit(")", 1)[1].split()[0] == "R"
            except OSError:
                continue
        return max(0, running - ours)
    except (OSError, ValueError, IndexError):
        return None


def free_cores() -> int | None:
    """Cores this process may use that no other runnable thread wants (at least 1), cached for 0.1 s."""
    now = time.monotonic()
    with _cache_lock:
        if now - _cache["t"] < _REREAD_S:
            return _cache["free"]
    others = _runnable_elsewhere()
    free = None if others is None else max(1, len(os.sched_getaffinity(0)) - others)
    with _cache_lock:
        _cache.update(t=now, free=free)
    return free


def threads_for_call(n: int) -> int:
    """The thread count one kernel call should use, given the caller's ``n``: ``n`` unless the
    free-cores candidate is on and fewer cores are free."""
    if not _free_cores or n <= 1:
        return n
    free = free_cores()
    return n if free is None else min(n, free)


def configure_from_environment() -> None:
    """``configure()`` at import: a bad name in the variable is one warning line, and nothing is applied."""
    import warnings

    try:
        configure()
    except ValueError as e:
        warnings.warn(str(e), stacklevel=2)
