"""numbaconv.bench's op table, wide shapes, training-step benchmark and busy processes, and the
bench CLI's --op step / --busy (timings are never asserted; PyTorch parts skip without it)."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from numbaconv import bench
from numbaconv.bench import (OPS, OPS_BY_NAME, SHAPE_SETS, WIDE_SHAPES, Op, Shape, busy_processes, conv_flops,
                             numbaconv_op, op_flops, ops_for, run_benchmarks, run_step_benchmark, step_data, torch_op)
from numbaconv.recipe import RECIPES
from numbaconv_cli.main import app

HAS_TORCH = importlib.util.find_spec("torch") is not None
TINY_BN = Shape("bn", "tiny bn", (2, 3, 4, 4))
ROOT = Path(__file__).resolve().parent.parent


def test_every_shape_kind_has_ops_and_every_op_names_a_kind_in_use():
    kinds = {s.kind for shapes in SHAPE_SETS.values() for s in shapes}
    assert kinds == {k for op in OPS for k in op.kinds}
    assert len(OPS_BY_NAME) == len(OPS)   # names are unique
    assert ops_for(TINY_BN) == ["spatial BN forward+backward"]
    assert ops_for(TINY_BN, bn_alt=True) == ["spatial BN forward+backward", "spatial BN backward (graph)",
                                             "spatial BN backward_alt (closed form)"]


def test_unknown_op_is_one_error_naming_the_choices():
    with pytest.raises(ValueError, match="unknown op 'conv sideways'; choose one of conv forward, "):
        numbaconv_op(None, "conv sideways", TINY_BN, {})


def test_a_new_op_is_one_table_entry(monkeypatch):
    """An op added to the table is timed, gets its FLOP rate, and has no PyTorch column without a call."""
    def relu_forward(nb, shape, a):
        return lambda: nb.ReLU.forward(a["x"])

    extra = Op("relu forward", ("bn",), relu_forward, flops=lambda s: float(np.prod(s.x)))
    monkeypatch.setattr(bench, "OPS", OPS + (extra,))
    monkeypatch.setattr(bench, "OPS_BY_NAME", {**OPS_BY_NAME, extra.name: extra})
    rows = run_benchmarks("cpu", "float64", (TINY_BN,), repeat=1, torch=False)
    assert [r["op"] for r in rows] == ["spatial BN forward+backward", "relu forward"]
    relu = rows[1]
    assert relu["ms"] > 0 and np.isclose(relu["gflops"], 2 * 3 * 4 * 4 / relu["ms"] / 1e6)
    assert rows[0]["gflops"] is None


def test_conv_flops_come_from_the_table():
    s = Shape("conv", "c", (2, 3, 4, 4), f=5)
    assert op_flops("conv forward", s) == conv_flops(s)
    assert op_flops("conv forward+backward", s) == 3 * conv_flops(s)   # dx and dw: a forward each
    assert op_flops("max pool forward+backward", s) is None


def test_wide_shapes_are_the_long_recipes_layers():
    convs = [(s.x, s.f, s.k, s.stride, s.pad) for s in WIDE_SHAPES if s.kind == "conv"]
    assert convs == [((256, 64, 32, 32), 128, 3, 1, 1), ((256, 128, 16, 16), 128, 3, 1, 1),
                     ((256, 128, 8, 8), 256, 3, 1, 1), ((256, 256, 4, 4), 256, 3, 1, 1)]
    # batch norm on each conv's output
    assert [s.x for s in WIDE_SHAPES if s.kind == "bn"] == [(256, f, h, w) for (_, _, h, w), f, *_ in convs]
    assert SHAPE_SETS["wide"] is WIDE_SHAPES and bench.REFERENCE_LIMITS["wide"] == bench.REFERENCE_MAX_ITERATIONS


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed (optional `bench` extra)")
def test_torch_ops_compute_what_ours_compute():
    import torch

    s = Shape("conv", "c", (2, 3, 5, 5), f=4)
    a = bench._inputs(s, np.dtype("float64"))
    ours = numbaconv_op(bench.get_backend("cpu"), "conv forward", s, a)()[0]
    np.testing.assert_allclose(torch_op(torch, "conv forward", s, a)().numpy(), ours, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed (optional `bench` extra)")
def test_torch_layouts_compute_the_same_and_rows_say_which():
    import torch

    s = Shape("conv", "c", (2, 3, 5, 5), f=4)
    a = bench._inputs(s, np.dtype("float64"))
    nhwc, nchw = (torch_op(torch, "conv forward", s, a, layout=lay)() for lay in ("channels_last", "nchw"))
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nchw.is_contiguous(
        memory_format=torch.channels_last)
    np.testing.assert_allclose(nhwc.numpy(), nchw.numpy(), rtol=1e-10, atol=1e-12)
    rows = run_benchmarks("cpu", "float64", (TINY_BN,), repeat=1, reference=False, torch_layout="nchw")
    assert rows[0]["torch_layout"] == "nchw" and rows[0]["torch_ms"] > 0
    assert run_benchmarks("cpu", "float64", (TINY_BN,), repeat=1, torch=False)[0]["torch_layout"] is None
    with pytest.raises(ValueError, match="unknown torch layout 'nhwc'; choose one of channels_last, nchw"):
        run_benchmarks("cpu", "float64", (TINY_BN,), repeat=1, reference=False, torch_layout="nhwc")


# --- training step -------------------------------------------------------------------------------

def test_step_data_has_every_class_and_cifar_shapes():
    d = step_data(n=64)
    assert d["X_train"].shape == (64, 3, 32, 32) and d["X_train"].dtype == np.float32
    assert set(d["y_val"]) == set(range(10))


def test_step_benchmark_row_without_torch():
    row = run_step_benchmark("fast", repeat=2, torch=False, data=step_data(n=300))
    batch = RECIPES["fast"]["batch_size"]
    assert row["op"] == "training step" and row["batch"] == batch and row["recipe"] == "fast"
    assert 0 < row["ms"] <= row["median_ms"]
    assert np.isclose(row["images_per_s"], batch / row["ms"] * 1e3)
    assert row["torch_ms"] is None and row["torch_ratio"] is None and row["images_per_s_ratio"] is None


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed (optional `bench` extra)")
def test_step_benchmark_row_with_torch():
    row = run_step_benchmark("fast", repeat=1, torch=True, data=step_data(n=300))
    assert np.isclose(row["torch_ratio"], row["ms"] / row["torch_ms"])
    assert np.isclose(row["images_per_s_ratio"], row["images_per_s"] / row["torch_images_per_s"])


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed (optional `bench` extra)")
def test_torch_recipe_is_the_same_network():
    from numbaconv.recipe import recipe_solver
    from numbaconv.torch_recipe import TorchRecipe

    data = step_data(n=300)
    model, _ = recipe_solver("fast", data, None)
    theirs = TorchRecipe("fast", data)
    trained = sum(p.numel() for p in theirs.net.parameters() if p.requires_grad)
    ours = sum(v.size for k, v in model.params.items() if k not in model.frozen)
    assert trained == ours
    assert np.isfinite(theirs.step(0.5))


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed (optional `bench` extra)")
def test_torch_recipe_layouts_train_the_same():
    """channels_last (the default: PyTorch's faster layout) changes where numbers sit, not what is computed."""
    import torch

    from numbaconv.torch_recipe import TorchRecipe

    data = step_data(n=300)
    nhwc, nchw = TorchRecipe("fast", data, seed=3), TorchRecipe("fast", data, seed=3, channels_last=False)
    conv = next(m for m in nhwc.net if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        np.testing.assert_allclose(nhwc.step(0.5), nchw.step(0.5), rtol=1e-4)
    assert nhwc.accuracy(data["X_val"], data["y_val"]) == pytest.approx(nchw.accuracy(data["X_val"], data["y_val"]),
                                                                         abs=0.02)


# --- busy processes ------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_busy_processes_run_inside_and_are_killed_after_also_on_errors():
    with busy_processes(2) as pids:
        assert len(pids) == 2 and all(_alive(p) for p in pids)
    assert not any(_alive(p) for p in pids)
    with pytest.raises(KeyboardInterrupt):
        with busy_processes(1) as pids:
            raise KeyboardInterrupt
    assert not _alive(pids[0])
    with busy_processes(0) as pids:
        assert pids == []
    with pytest.raises(ValueError, match="busy must be a number of processes >= 0, got -1"):
        with busy_processes(-1):
            pass


def test_busy_process_does_not_start_for_another_parent():
    # the busy loop checks that the parent it was started for is still its parent (no orphan spinning)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", bench.BUSY_CODE, "1"], timeout=30)
    assert r.returncode == 0 and time.monotonic() - t0 < 30


# --- the CLI ---------------------------------------------------------------------------------------

def test_bench_cli_step_with_busy_writes_json(tmp_path):
    out = tmp_path / "step.json"
    r = CliRunner().invoke(app, ["bench", "--op", "step", "--repeat", "1", "--no-torch", "--busy", "1",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "training step" in r.output and "beside 1 busy process(es)" in " ".join(r.output.split())
    data = json.loads(out.read_text())
    from numbaconv.cpu import _threads

    # what this process runs with (the default "passive" and "free-cores", unless the environment chose otherwise)
    assert data["machine"]["busy_processes"] == 1
    assert data["machine"]["thread_candidates"] == _threads.applied()["candidates"]
    (row,) = data["rows"]
    assert row["op"] == "training step" and row["shape_set"] == "step" and row["images_per_s"] > 0
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["--dtype", "float64"], "--op step times the cpu backend in float32"),
    (["--recipe", "slow"], "unknown --recipe 'slow'; choose one of fast"),
])
def test_bench_cli_step_refuses_what_it_cannot_time(args, message):
    r = CliRunner().invoke(app, ["bench", "--op", "step", "--no-torch", *args])
    assert r.exit_code == 2 and message in " ".join(r.output.split()) and "Traceback" not in r.output


def test_bench_cli_refuses_negative_busy():
    r = CliRunner().invoke(app, ["bench", "--busy", "-1"])
    assert r.exit_code == 2 and "--busy" in r.output


def test_step_table_fits_80_columns():
    from rich.console import Console

    from numbaconv_cli.commands.bench import _tables

    row = {"op": "training step", "shape": "fast recipe, batch 256", "ms": 12345.67, "median_ms": 12345.67,
           "images_per_s": 123456.0, "torch_ms": 12345.67, "torch_images_per_s": 123456.0, "torch_ratio": 12.34}
    c = Console(width=80, record=True, file=open(os.devnull, "w"))
    for t in _tables([row], "cpu", 80):
        c.print(t)
    text = c.export_text()
    assert max(map(len, text.splitlines())) <= 80
    assert all(w in text.split() for w in ["12345.67", "123,456", "12.34x"])


# --- benchmarks/busy_steps.py ---------------------------------------------------------------------

def test_busy_steps_prints_four_figures_and_the_two_ratios(tmp_path):
    out = tmp_path / "busy.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "busy_steps.py"), "--seconds", "0.2",
                        "--num-train", "300", "--num-val", "20", "--candidates", "none", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(out.read_text())["results"]
    s = res["steps"]
    assert set(s) == {"quiet_default", "quiet_1", "busy_default", "busy_1"} and min(s.values()) >= 1
    assert np.isclose(res["busy_vs_1thread"], s["busy_default"] / s["busy_1"])
    assert np.isclose(res["busy_vs_quiet"], s["busy_default"] / s["quiet_default"])
    assert res["machine"]["busy_processes"] == 1
    assert "busy/1-thread" in r.stdout and "busy/quiet" in r.stdout


def test_busy_steps_refuses_an_unknown_candidate():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "busy_steps.py"), "--candidates", "turbo"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown candidate 'turbo'" in r.stderr
