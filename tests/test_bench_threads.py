"""numbaconv.cpu._threads: the thread candidates of issue #12 are off by default, take effect only
when named, say when they cannot, and leave results as they are (no timing here)."""
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
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 3, 16, 16))
w = rng.standard_normal((4, 3, 3, 3))
out, cache = cpu.Conv.forward(x, w, np.zeros(4), {"stride": 1, "pad": 1})
dx, dw, db = cpu.Conv.backward(out, cache)
import numba
print(json.dumps({"applied": _threads.applied(), "layer": numba.threading_layer(), "gomp_at_import": gomp_at_import,
                  "omp_wait": os.environ.get("OMP_WAIT_POLICY"), "sums": [float(abs(a).sum()) for a in (out, dx, dw)],
                  "dw": dw.ravel()[:8].tolist()}))
"""


def _probe(candidates: str | None):
    env = {k: v for k, v in os.environ.items() if k != _threads.ENV}
    if candidates is not None:
        env[_threads.ENV] = candidates
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1]), r.stderr


def test_parse_names_the_choices():
    assert _threads.parse(" passive, free-cores ") == ["passive", "free-cores"]
    assert _threads.parse(None) == [] and _threads.parse("") == []
    with pytest.raises(ValueError, match=r"unknown candidate 'turbo'; choose from passive, spin-10k, workqueue"):
        _threads.parse("passive,turbo")


def test_every_candidate_says_why_and_changes_something():
    for name, c in _threads.CANDIDATES.items():
        assert len(c.why) > 40, name
        assert c.env or c.layer or c.chunksize is not None or c.free_cores or c.blas_threads is not None, name


def test_nothing_changes_by_default_and_results_do_not_depend_on_the_wait_policy_or_layer():
    default, _ = _probe(None)
    assert default["applied"] == {"candidates": [], "notes": []} and default["omp_wait"] is None
    passive, _ = _probe("passive")
    # set before libgomp was loaded (numba loads it when its threads start), so libgomp reads it
    assert passive["applied"]["candidates"] == ["passive"] and passive["omp_wait"] == "PASSIVE"
    assert not passive["gomp_at_import"] and passive["applied"]["notes"] == []
    queue, _ = _probe("workqueue")
    assert queue["layer"] == "workqueue" and default["layer"] in ("omp", "tbb", "workqueue")
    # the same thread count gives the same numbers, bit for bit, whatever waits or hands out the work
    assert default["sums"] == passive["sums"] == queue["sums"] and default["dw"] == queue["dw"]


def test_a_layer_that_cannot_load_is_a_note_not_a_crash():
    try:
        import numba.np.ufunc.tbbpool  # noqa: F401
        pytest.skip("the tbb layer loads here")
    except ImportError:
        pass
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


def test_free_cores_results_match_one_thread_when_it_picks_one(monkeypatch):
    """With one core free, a kernel call computes exactly what it computes on one thread."""
    from numbaconv import get_backend

    cpu = get_backend("cpu")
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((8, 3, 16, 16)), rng.standard_normal((4, 3, 3, 3))

    def run():
        out, cache = cpu.Conv.forward(x, w, np.zeros(4), {"stride": 1, "pad": 1})
        return cpu.Conv.backward(out, cache)

    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = run()
    finally:
        numba.set_num_threads(n)
    monkeypatch.setattr(_threads, "_free_cores", True)
    monkeypatch.setattr(_threads, "free_cores", lambda: 1)
    for a, b in zip(one, run()):
        np.testing.assert_array_equal(a, b)
