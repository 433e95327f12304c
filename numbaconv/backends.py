"""Backend lookup by name. Backends are imported lazily: the reference backend
needs only NumPy, the cpu backend compiles Numba kernels, and the cuda backend
needs the optional numba-cuda package."""
from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = ("reference", "cpu", "cuda")


def get_backend(name: str | ModuleType) -> ModuleType:
    """Return the backend module ``numbaconv.<name>`` (a module passes through)."""
    if isinstance(name, ModuleType):
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"numbaconv.{name}")
