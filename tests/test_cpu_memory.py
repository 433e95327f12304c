"""numbaconv.cpu._memory: importing the cpu backend keeps freed buffers for the next step (glibc's
mmap and trim thresholds), yields to the user's own malloc settings, and says what took effect.
Each case runs in a fresh interpreter: the settings are made once per process, at import."""
import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")

MIB = 1 << 20

# Allocates (and touches) a 64 MiB array twice, printing where glibc put the first one (bytes in
# mmapped chunks while it lives: mallinfo2's hblkhd) and the minor page faults of the second.
PROBE = r"""
import ctypes, json, resource, sys, numpy as np
import numbaconv.cpu
from numbaconv.cpu import _memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
a = np.ones(64 << 20, dtype=np.uint8)
mmapped = libc.mallinfo2().hblkhd
del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = np.ones(64 << 20, dtype=np.uint8)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": _memory.applied(), "mmapped": mmapped, "faults": faults}))
"""


def _probe(**env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "NUMBACONV_MALLOC"}
    full.update(env)
    r = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_default_keeps_freed_memory_on_the_heap():
    from numbaconv.cpu import _memory

    out, _ = _probe()
    assert out["applied"] == {"settings": {k: s.value for k, s in _memory.SETTINGS.items()}, "note": None}
    assert out["mmapped"] < 64 * MIB          # served from the heap, not a fresh mapping
    assert out["faults"] < 100                # the second array reuses the first one's pages (64 MiB = 16,384 pages)


def test_none_leaves_malloc_alone():
    out, _ = _probe(NUMBACONV_MALLOC="none")
    assert out["applied"]["settings"] == {}
    assert "NUMBACONV_MALLOC=none" in out["applied"]["note"]
    assert out["mmapped"] >= 64 * MIB         # glibc's default: a request this large is its own mapping


def test_user_malloc_variable_wins():
    out, _ = _probe(MALLOC_TRIM_THRESHOLD_="1000000")
    assert out["applied"]["settings"] == {}
    assert "MALLOC_TRIM_THRESHOLD_" in out["applied"]["note"]
    assert out["mmapped"] >= 64 * MIB


def test_user_glibc_tunable_wins():
    out, _ = _probe(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=4096")
    assert out["applied"]["settings"] == {}
    assert "GLIBC_TUNABLES" in out["applied"]["note"]


def test_bad_value_is_one_warning_naming_it_and_the_default_applies():
    out, err = _probe(NUMBACONV_MALLOC="kep")
    assert "NUMBACONV_MALLOC='kep'" in err and "keep" in err
    assert set(out["applied"]["settings"]) == {"M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD"}
    assert out["mmapped"] < 64 * MIB


def test_machine_info_reports_the_settings():
    from numbaconv.bench import machine_info
    from numbaconv.cpu import _memory

    info = machine_info()
    assert info["malloc_settings"] == _memory.applied()["settings"]
    assert info["malloc_note"] == _memory.applied()["note"]
