"""numbaconv: a hand-written CNN library with three interchangeable backends.

>>> import numpy as np
>>> from numbaconv import get_backend
>>> nb = get_backend("reference")
>>> x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
>>> w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))
>>> out, cache = nb.Conv.forward(x, w, np.zeros(4), {"stride": 1, "pad": 1})
>>> out.shape
(2, 4, 8, 8)
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__version__ = "0.1.0"


def _writable_dir(path: Path) -> bool:
    """True if ``path`` exists (or can be made) and a file can be created in it: numba's own test."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _private_dir(path: Path) -> bool:
    """A folder only we can write: numba's cache files are pickles, so one that another
    user could plant files in (a shared /tmp) must not be used."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    owner_ok = not hasattr(os, "getuid") or st.st_uid == os.getuid()   # no owners to check on Windows
    return (stat.S_ISDIR(st.st_mode) and owner_ok and not st.st_mode & 0o022
            and _writable_dir(path))


def numba_cache_fallback(env=os.environ, package_dir: Path = Path(__file__).parent) -> str | None:
    """Point NUMBA_CACHE_DIR at a writable per-user folder when the package's own
    ``cpu/__pycache__`` (where numba caches the kernels compiled with cache=True)
    is not writable, e.g. a system-wide install. numba would try ~/.cache next and,
    with no writable home either, refuse to even define the kernels ("no locator
    available"). A NUMBA_CACHE_DIR set by the user is left alone. Returns the folder
    chosen, or None when nothing was changed. Runs at import, before numba does."""
    if env.get("NUMBA_CACHE_DIR") or _writable_dir(package_dir / "cpu" / "__pycache__"):
        return None
    home_cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    for folder in (Path(home_cache) / "numbaconv" / "numba",
                   Path(tempfile.gettempdir()) / f"numbaconv-numba-cache-{uid}"):
        if _private_dir(folder):
            env["NUMBA_CACHE_DIR"] = str(folder)
            import sys
            config = sys.modules.get("numba.core.config")
            if config is not None and env is os.environ:   # numba already read the environment
                config.CACHE_DIR = str(folder)
            return str(folder)
    return None


numba_cache_fallback()

from .backends import BACKENDS, get_backend  # noqa: E402  (after the cache folder is settled)

__all__ = ["BACKENDS", "get_backend", "__version__"]
