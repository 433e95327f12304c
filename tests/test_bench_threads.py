"""numbaconv.cpu._threads: the thread candidates of issue #12: "passive" and "free-cores" by default (measured, see
_threads.DEFAULT), others only when named, "none" for numba's and libgomp's own defaults; they say
when they cannot take effect and leave results as they are (no timing here)."""
import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from numbaconv.cpu import _blas, _threads

PROBE = """
import json, os
import numpy as np
import numbaconv.cpu as cpu
from numbaconv.cpu import _threads
gomp_at_import = _threads._libgomp_loaded()
import numba
layer_at_import = numba.np.ufunc.parallel._is_initialized and numba.threading_layer()
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 3, 16, 16))
w = rng.standard_normal((4, 3, 3, 3))
out, cache = cpu.Conv.forward(x, w, np.zeros(4), {"stride": 1, "pad": 1})
dx, dw, db = cpu.Conv.backward(out, cache)
import numba
print(json.dumps({"applied": _threads.applied(), "layer": numba.threading_layer(), "gomp_at_import": gomp_at_import,
                  "layer_at_import": layer_at_import,
                  "omp_wait": os.environ.get("OMP_WAIT_POLICY"), "sums": [float(abs(a).sum()) for a in (out, dx, dw)],
                  "dw": dw.ravel()[:8].tolist()}))
"""


def _probe(candidates: str | None, **extra_env):
    env = {k: v for k, v in os.environ.items() if k not in (_threads.ENV, *_threads.USER_WAIT_VARIABLES)}
    env.update(extra_env)
    if candidates is not None:
        env[_threads.ENV] = candidates
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1]), r.stderr


def test_parse_names_the_choices():
    assert _threads.parse(" passive, free-cores ") == ["passive", "free-cores"]
    assert _threads.parse(None) == _threads.parse("") == list(_threads.DEFAULT) == ["passive", "free-cores"]
    assert _threads.parse("none") == []
    with pytest.raises(ValueError, match=r"unknown candidate 'turbo'; choose from passive, spin-10k, workqueue"):
        _threads.parse("passive,turbo")


def test_every_candidate_says_why_and_changes_something():
    for name, c in _threads.CANDIDATES.items():
        assert len(c.why) > 40, name
        assert c.env or c.layer or c.chunksize is not None or c.free_cores or c.blas_threads is not None, name


def test_passive_by_default_scoped_to_numbas_libgomp_and_results_do_not_depend_on_it():
    default, _ = _probe(None)
    assert default["applied"] == {"candidates": ["passive", "free-cores"], "notes": []}
    # libgomp was loaded (numba's threads started) inside the import, with OMP_WAIT_POLICY set for
    # that moment only: the environment is the user's again afterwards (no other OpenMP runtime
    # or child process inherits it)
    assert default["layer_at_import"] in ("omp", "tbb", "workqueue") and default["omp_wait"] is None
    off, _ = _probe("none")
    assert off["applied"] == {"candidates": [], "notes": []} and off["layer_at_import"] is False
    mine, _ = _probe(None, OMP_WAIT_POLICY="ACTIVE")   # a user's own wait setting wins over the default's
    assert mine["applied"]["candidates"] == ["free-cores"] and mine["omp_wait"] == "ACTIVE"
    queue, _ = _probe("workqueue")
    assert queue["layer"] == "workqueue" and off["layer"] in ("omp", "tbb", "workqueue")
    # the same thread count gives the same numbers, bit for bit, whatever waits or hands out the work
    assert default["sums"] == off["sums"] == queue["sums"] and default["dw"] == queue["dw"]


def test_a_layer_that_cannot_load_is_a_note_not_a_crash():
    if _threads._layer_available("tbb"):
        pytest.skip("the tbb layer loads here")
    res, _ = _probe("tbb")
    assert res["applied"]["notes"] == ["tbb: numba's tbb layer cannot load here (for tbb: pip install tbb); "
                                       "tbb not applied"]
    assert res["layer"] != "tbb"


def test_an_unknown_name_in_the_variable_is_a_warning_and_nothing_applied():
    res, err = _probe("turbo")
    assert res["applied"]["candidates"] == [] and "unknown candidate 'turbo'" in err


def test_free_cores_caps_kernel_threads_only_when_chosen(monkeypatch):
    n = numba.get_num_threads()
    monkeypatch.setattr(_threads, "free_cores", lambda: 1)
    monkeypatch.setattr(_threads, "_free_cores", False)   # as with NUMBACONV_THREAD_CANDIDATES=passive
    assert _threads.threads_for_call(n) == n            # not chosen: the caller's count
    monkeypatch.setattr(_threads, "_free_cores", True)
    assert _threads.threads_for_call(n) == 1
    with _blas.kernel_threads(_blas.SMALL_WORK * 4):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == n                 # restored after the call
    monkeypatch.setattr(_threads, "free_cores", lambda: None)   # /proc cannot tell: unchanged
    assert _threads.threads_for_call(n) == n


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="reads /proc")
def test_free_cores_reads_the_machine():
    others = _threads._runnable_elsewhere()
    assert isinstance(others, int) and others >= 0
    free = _threads.free_cores()
    assert 1 <= free <= len(os.sched_getaffinity(0))


def test_free_cores_results_do_not_depend_on_the_load(monkeypatch):
    """With one core free, a kernel call runs on one thread but computes the chunks it was planned
    for at the caller's thread count, in turns: exactly the quiet machine's results (conv backward
    and linear backward sum per-chunk partials, so a different chunk count would change bits)."""
    from numbaconv import get_backend

    cpu = get_backend("cpu")
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((8, 3, 16, 16)), rng.standard_normal((4, 3, 3, 3))
    x2, w2 = rng.standard_normal((64, 300)), rng.standard_normal((300, 50))

    def run():
        out, cache = cpu.Conv.forward(x, w, np.zeros(4), {"stride": 1, "pad": 1})
        s, lcache = cpu.Linear.forward(x2, w2, np.zeros(50))
        return cpu.Conv.backward(out, cache) + cpu.Linear.backward(s, lcache)

    n = numba.get_num_threads()
    quiet = run()
    monkeypatch.setattr(_threads, "_free_cores", True)
    monkeypatch.setattr(_threads, "free_cores", lambda: 1)
    seen = []
    real = _blas.work_chunks
    monkeypatch.setattr("numbaconv.cpu.conv.work_chunks", lambda N: seen.append(numba.get_num_threads()) or real(N))
    busy = run()
    assert seen and set(seen) == {1}                   # the calls did run on one thread
    assert real(8) == min(n, 8)                         # outside a call: the caller's count
    for a, b in zip(quiet, busy):
        np.testing.assert_array_equal(a, b)


def test_work_chunks_follow_the_planned_count_not_the_running_one(monkeypatch):
    n = numba.get_num_threads()
    monkeypatch.setattr(_threads, "_free_cores", True)
    monkeypatch.setattr(_threads, "free_cores", lambda: 1)
    with _blas.kernel_threads(_blas.SMALL_WORK * 4):
        assert numba.get_num_threads() == 1 and _blas.work_chunks(100) == n
        with _blas.kernel_threads(1):                    # small work: planned for one thread
            assert _blas.work_chunks(100) == 1
        assert _blas.work_chunks(100) == n              # the outer call's plan is back
    assert _blas.work_chunks(3) == min(n, 3)
