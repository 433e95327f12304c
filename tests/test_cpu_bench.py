"""The benchmark harness and `numbaconv bench` (timings themselves are never asserted)."""
import json

import numpy as np
from typer.testing import CliRunner

from numbaconv.bench import Shape, conv_flops, interleaved_best_ms, machine_info, run_benchmarks
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


def test_bench_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--shapes", "small", "--repeat", "1", "--no-torch",
                                      "--dtype", "float64", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["machine"]["cores"] >= 1
    assert {r["op"] for r in data["rows"]} >= {"conv forward+backward", "max pool forward+backward"}


def test_bench_cuda_without_gpu_prints_one_line_and_exits_2():
    # the tests run under the CUDA simulator, which is not a GPU
    result = CliRunner().invoke(app, ["bench", "--device", "cuda"])
    assert result.exit_code == 2
    assert "no CUDA GPU found" in result.output and "Traceback" not in result.output
