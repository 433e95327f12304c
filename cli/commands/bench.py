"""`numbaconv bench`: time every layer op of a backend beside the reference and PyTorch."""
import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..choices import DType
from ..console import console, err_console

NO_GPU_LINE = ("no CUDA GPU found; the cuda kernels can be checked for correctness under the simulator: "
               "NUMBA_ENABLE_CUDASIM=1 pytest tests -k cuda")


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Shapes(str, Enum):
    small = "small"
    cifar = "cifar"
    assignment = "assignment"
    all = "all"


def _cuda_available() -> bool:
    try:
        from numbaconv import cuda as nb_cuda
    except Exception:  # numba-cuda missing or broken: no GPU for us
        return False
    return nb_cuda.is_available()


def _fmt(v, spec: str, suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def _table(rows, device: str, dtype: str, info: dict, title: str) -> Table:
    header = (f"{title} — {device} {dtype} | {info['cpu']}, {info['cores']} cores, numba {info['numba']} "
              f"({info['numba_threads']} threads, {info['threading_layer']}), numpy {info['numpy']}, "
              f"BLAS {info['blas']}, torch {info.get('torch', 'not installed')}, load {info.get('loadavg_1min')}")
    t = Table(title=header, title_justify="left")
    cols = [("op", "left"), ("shape", "left"), (f"{device} ms", "right")]
    if device == "cuda":
        cols += [("cpu ms", "right"), ("vs cpu", "right")]
    cols += [("reference ms", "right"), ("speedup", "right"), ("GFLOP/s", "right"),
             ("PyTorch ms", "right"), ("ratio to PyTorch", "right")]
    for name, justify in cols:
        t.add_column(name, justify=justify)
    for r in rows:
        cells = [r["op"], r["shape"], _fmt(r["ms"], ".2f")]
        if device == "cuda":
            cells += [_fmt(r.get("cpu_ms"), ".2f"), _fmt(r.get("speedup_vs_cpu"), ".1f", "x")]
        cells += [_fmt(r["reference_ms"], ".1f"), _fmt(r["speedup"], ",.0f", "x"), _fmt(r["gflops"], ".1f"),
                  _fmt(r["torch_ms"], ".2f"), _fmt(r["torch_ratio"], ".2f", "x")]
        t.add_row(*cells)
    return t


def bench(
    device: Device = typer.Option(Device.cpu, help="Backend to time: the Numba cpu kernels or the cuda kernels."),
    dtype: DType = typer.Option(DType.float32, help="Floating-point type of every input."),
    shapes: Shapes = typer.Option(Shapes.all, help="small: shapes the reference finishes on (speedups); "
                                  "cifar: N=128 CIFAR-10 layer shapes; assignment: the assignment's own "
                                  "timing shapes, the reference timed once on each (~10-30 s); all: all three."),
    repeat: int = typer.Option(5, min=1, help="Timed calls per op (the best is reported), after one warm-up."),
    bn: bool = typer.Option(False, "--bn", help="Also time batch norm backward (graph) against backward_alt "
                            "(closed form), for the reference and this backend."),
    no_torch: bool = typer.Option(False, "--no-torch", help="Skip the PyTorch comparison even if installed."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the rows and machine info to FILE."),
) -> None:
    """Time conv, max pool and spatial batch norm (forward and backward) of a backend:
    its ms, the reference's ms where it finishes in reasonable time, the speedup,
    GFLOP/s for conv, and PyTorch's ms and the ratio when PyTorch is installed.
    All numbers in a table come from one run, on the thread count Numba uses."""
    if device is Device.cuda and not _cuda_available():
        err_console.print(NO_GPU_LINE, highlight=False)
        raise typer.Exit(2)
    from numbaconv.bench import REFERENCE_LIMITS, SHAPE_SETS, machine_info, run_benchmarks

    if device is Device.cuda:
        import numba

        # the small shapes launch few blocks on purpose; numba would warn at every launch
        numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = 0

    sets = ["small", "cifar", "assignment"] if shapes is Shapes.all else [shapes.value]
    all_rows = []
    for name in sets:
        with console.status(f"timing {device.value} {dtype.value} on {name} shapes..."):
            rows = run_benchmarks(device.value, dtype.value, SHAPE_SETS[name], repeat=repeat,
                                  torch=not no_torch, bn_alt=bn, reference_max_iterations=REFERENCE_LIMITS[name])
        info = machine_info()
        console.print(_table(rows, device.value, dtype.value, info, f"{name} shapes"))
        all_rows += [{**r, "shape_set": name} for r in rows]
    if json_file is not None:
        json_file.write_text(json.dumps({"machine": machine_info(), "rows": all_rows}, indent=2))
        console.print(f"wrote {json_file}")


def register(app: typer.Typer) -> None:
    app.command()(bench)
