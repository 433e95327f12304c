"""The benchmark harness and `numbaconv bench` (timings themselves are never asserted)."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from numbaconv.bench import (ASSIGNMENT_SHAPES, REFERENCE_LIMITS, SHAPE_SETS, Shape, conv_flops, interleaved_best_ms,
                             machine_info, run_benchmarks)
from numbaconv_cli.main import app

TINY = (Shape("conv", "tiny conv", (1, 2, 4, 4), f=2), Shape("pool", "tiny pool", (1, 2, 4, 4), k=2, stride=2, pad=0),
        Shape("bn", "tiny bn", (2, 2, 3, 3)))


def test_run_benchmarks_rows_have_every_column_and_consistent_ratios():
    rows = run_benchmarks("cpu", "float64", TINY, repeat=1, torch=False, bn_alt=True)
    ops = [r["op"] for r in rows]
    assert ops == ["conv forward", "conv forward+backward", "max pool forward+backward",
                   "spatial BN forward+backward", "spatial BN backward (graph)",
                   "spatial BN backward_alt (closed form)"]
    for r in rows:
        assert r["ms"] > 0 and r["reference_ms"] > 0
        assert np.isclose(r["speedup"], r["reference_ms"] / r["ms"])
        assert r["torch_ms"] is None and r["torch_ratio"] is None
    assert np.isclose(rows[0]["gflops"], conv_flops(TINY[0]) / rows[0]["ms"] / 1e6)
    assert rows[2]["gflops"] is None


def test_reference_is_left_out_above_the_iteration_limit_unless_none():
    conv = TINY[:1]   # 1*2*4*4 = 32 reference iterations
    assert run_benchmarks("cpu", "float64", conv, repeat=1, torch=False, reference_max_iterations=31)[0][
        "reference_ms"] is None
    row = run_benchmarks("cpu", "float64", conv, repeat=1, torch=False, reference_max_iterations=None)[0]
    assert row["reference_ms"] > 0 and np.isclose(row["speedup"], row["reference_ms"] / row["ms"])


def test_assignment_shapes_are_the_assignments_timing_cells():
    # conv: x (100,3,31,31), w (25,3,3,3), stride 2, pad 1 -> (100,25,16,16); pool 2x2/2 on (100,3,32,32)
    conv, pool = ASSIGNMENT_SHAPES
    assert (conv.x, conv.f, conv.k, conv.stride, conv.pad) == ((100, 3, 31, 31), 25, 3, 2, 1)
    assert (pool.x, pool.k, pool.stride) == ((100, 3, 32, 32), 2, 2)
    assert SHAPE_SETS["assignment"] is ASSIGNMENT_SHAPES and REFERENCE_LIMITS["assignment"] is None


def test_conv_flops_counts_multiply_adds_twice():
    assert conv_flops(Shape("conv", "c", (2, 3, 4, 4), f=5)) == 2 * 2 * 5 * 4 * 4 * 3 * 9


def test_interleaved_best_ms_calls_each_function_warmup_plus_repeat_times():
    calls = {"a": 0, "b": 0}
    times = interleaved_best_ms({k: (lambda k=k: calls.__setitem__(k, calls[k] + 1)) for k in calls}, repeat=3)
    assert calls == {"a": 4, "b": 4} and set(times) == {"a", "b"}


def test_machine_info_names_cores_and_versions():
    info = machine_info()
    assert info["cores"] >= 1 and info["numba_threads"] >= 1
    assert info["numpy"] == np.__version__ and info["cpu"]
    # which measured F(4x4) rows this CPU takes, so a table says which rule its conv ratios ran under
    from numbaconv.cpu import winograd

    kind = info["winograd_rows"]
    assert kind == winograd.vector_kind() and winograd.F4_RULES == winograd.F4_WHERE[kind]


def test_bench_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--shapes", "small", "--repeat", "1", "--no-torch",
                                      "--dtype", "float64", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["machine"]["cores"] >= 1
    assert f"F(4x4) rows {data['machine']['winograd_rows']}" in " ".join(result.output.split())
    assert {r["op"] for r in data["rows"]} >= {"conv forward+backward", "max pool forward+backward"}


def test_bench_cuda_without_gpu_prints_one_line_and_exits_2():
    # the tests run under the CUDA simulator, which is not a GPU
    result = CliRunner().invoke(app, ["bench", "--device", "cuda"])
    assert result.exit_code == 2
    assert "no CUDA GPU found" in result.output and "Traceback" not in result.output


def test_pytorch_loaded_first_keeps_its_own_openmp_waiting():
    # PyTorch's CPU wheel shares numba's libgomp, which reads its wait policy once, when it loads:
    # loaded first, it keeps libgomp's default, and numbaconv.cpu says its "passive" had no effect
    pytest.importorskip("torch", reason="PyTorch is the yardstick (pip install torch), not a dependency")
    import subprocess
    import sys

    code = ("import sys, os\n"
            "os.environ.pop('OMP_WAIT_POLICY', None); os.environ.pop('NUMBACONV_THREAD_CANDIDATES', None)\n"
            "from numbaconv.bench import load_torch_first\n"
            "load_torch_first()\n"
            "assert 'torch' in sys.modules\n"
            "from numbaconv.cpu import _threads\n"
            "print(_threads.applied()['notes'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "passive: libgomp already loaded, OMP_WAIT_POLICY has no effect" in out.stdout
