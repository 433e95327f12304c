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


def test_step_memory_benchmark_takes_turns_and_reports_the_ratio(monkeypatch, capsys):
    from conftest import load_benchmark

    sm = load_benchmark("step_memory")
    calls = []

    def fake_child(a, setting):
        calls.append(setting)
        ms = {"keep": 20.0, "none": 25.0}[setting]
        return {"ms": ms, "faults": 0.0 if setting == "keep" else 3400.0, "sys_ms": 0.1, "max_rss_mb": 900.0,
                "load_avg": 1.0}

    monkeypatch.setattr(sm, "run_child", fake_child)
    assert sm.main(["--dataset", "synthetic", "--rounds", "2", "--steps", "3"]) == 0
    assert calls == ["keep", "none", "keep", "none"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == "time keep/none per round: 0.80, 0.80"


def test_step_memory_measure_counts_steps_in_this_process():
    """The child's measurement, for real, on a few synthetic images: figures per step, and the settings
    this test process made at import."""
    import numpy as np
    from conftest import load_benchmark

    from numbaconv.cpu import _memory

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    data = {"X_train": X[:256], "y_train": y[:256], "X_val": X[256:], "y_val": y[256:]}
    out = load_benchmark("step_memory").measure(data, "fast", steps=2, warm=1)
    assert out["ms"] > 0 and out["faults"] >= 0 and out["sys_ms"] >= 0 and out["max_rss_mb"] > 0
    assert out["malloc"] == _memory.applied()


def test_step_memory_rejects_bad_counts(capsys):
    from conftest import load_benchmark

    with pytest.raises(SystemExit):
        load_benchmark("step_memory").main(["--steps", "0"])
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err


def test_step_memory_child_failure_is_one_error_line(tmp_path, capsys):
    from conftest import load_benchmark

    missing = str(tmp_path / "missing.h5")
    assert load_benchmark("step_memory").main(["--dataset", missing, "--rounds", "1", "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the keep process failed:") and "missing.h5" in err[0]
