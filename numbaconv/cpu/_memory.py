"""How freed memory is kept between training steps: glibc malloc's mmap and trim thresholds (issue #12).

Why. A training step allocates its activations, Winograd buffers and gradients afresh (NumPy arrays,
megabytes each) and frees them by the next step. glibc serves a request of at least
``M_MMAP_THRESHOLD`` bytes with a fresh ``mmap`` and returns it to the kernel when freed, and it
gives back the top of the heap once more than ``M_TRIM_THRESHOLD`` bytes there are free. Both start
small (128 KiB; the mmap threshold then follows the largest chunk freed, up to 32 MiB, and the trim
threshold is twice it), so every step's buffers came back as new pages: each first touch a page fault
in the kernel. Measured on the fast recipe (2-core AMD EPYC, batch 128, benchmarks/RESULTS.md,
"Freed memory kept"): 3,400 minor faults and ~12 ms of system time per step of ~21-35 ms; with the
thresholds below, 0-1 faults and ~0.1 ms. (A PyTorch run earlier in the same process had hidden it:
freeing its own larger buffers raised the dynamic thresholds, so our steps were faster after PyTorch's
than before.)

``SETTINGS`` below is the table (parameter, bytes, reason). ``configure()`` applies it with
``mallopt`` when ``numbaconv.cpu`` is imported, on glibc only, and leaves malloc alone where the user
set glibc's own variables (``MALLOC_*_`` or ``glibc.malloc`` tunables) or ``NUMBACONV_MALLOC=none``.
The settings are process-wide: other libraries in the process (PyTorch in a comparison) keep their
freed memory the same way. ``applied()`` says what took effect (``numbaconv bench`` prints it).
"""
from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

ENV = "NUMBACONV_MALLOC"   # "none": leave glibc's malloc as it is


@dataclass(frozen=True)
class Setting:
    param: int     # mallopt's parameter number (glibc's malloc.h)
    value: int     # bytes
    why: str


SETTINGS = {
    "M_MMAP_THRESHOLD": Setting(
        -3, 1 << 30,
        "requests under 1 GiB come from the heap, whose freed chunks the next step reuses (no new pages); "
        "a long-recipe activation at batch 512 is 128 MiB, past glibc's 32 MiB dynamic ceiling"),
    "M_TRIM_THRESHOLD": Setting(
        -1, 1 << 30,
        "keep up to 1 GiB free at the top of the heap instead of returning it: a long-recipe step frees "
        "~1.3 GB by its end and allocates it again at the start of the next"),
}
# glibc's own ways to set these (environment variables read when it starts, and its tunables).
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_applied: dict = {"settings": {}, "note": None, "configured": False}


def _user_settings() -> str | None:
    """The user's own glibc malloc setting, if there is one (its name)."""
    for k in USER_VARIABLES:
        if k in os.environ:
            return k
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return None


def configure() -> dict:
    """Apply ``SETTINGS`` once per process (unless glibc is not the C library, the user set malloc's
    own variables, or ``NUMBACONV_MALLOC=none``). Returns ``applied()``."""
    if _applied["configured"]:
        return applied()
    _applied["configured"] = True
    choice = os.environ.get(ENV, "").strip()
    if choice not in ("", "none", "keep"):
        import warnings

        warnings.warn(f"{ENV}={choice!r}: not 'keep' or 'none'; using the default (keep)", stacklevel=2)
    user = _user_settings()
    if choice == "none":
        _applied["note"] = f"{ENV}=none: malloc left as it is"
    elif user is not None:
        _applied["note"] = f"{user} is set: malloc left to the user's settings"
    elif platform.libc_ver()[0] != "glibc":
        _applied["note"] = "not glibc: malloc left as it is"
    else:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        for name, s in SETTINGS.items():
            if mallopt(s.param, s.value) == 1:
                _applied["settings"][name] = s.value
            else:
                _applied["note"] = f"mallopt({name}, {s.value}) was refused"
    return applied()


def applied() -> dict:
    """The settings that took effect (name -> bytes), and why any did not (``note``, or None)."""
    return {"settings": dict(_applied["settings"]), "note": _applied["note"]}
