"""Backend lookup by name. Backends are imported lazily: the reference backend
needs only NumPy, the cpu backend compiles Numba kernels, and the cuda backend
needs the optional numba-cuda package."""
from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = ("reference", "cpu", "cuda")


class BackendUnavailableError(ValueError):
    """The backend exists but cannot run here (no CUDA GPU, numba-cuda not installed)."""


def get_backend(name: str | ModuleType) -> ModuleType:
    """Return the backend module ``numbaconv.<name>`` (a module passes through).

    "cuda" needs a CUDA GPU or the Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1);
    without either it raises BackendUnavailableError here, where the backend is
    chosen, rather than a driver error at the first kernel launch."""
    if isinstance(name, ModuleType):
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name != "cuda":
        return importlib.import_module(f"numbaconv.{name}")
    try:
        nb = importlib.import_module("numbaconv.cuda")
    except ImportError as e:
        raise BackendUnavailableError(f"backend 'cuda' is not available: {e}; or use --backend cpu") from None
    if not (nb.SIMULATOR or nb.is_available()):
        raise BackendUnavailableError("backend 'cuda' needs a CUDA GPU and none was found; use --backend cpu "
                                      "(or set NUMBA_ENABLE_CUDASIM=1 to run the cuda kernels in the slow simulator)")
    return nb
