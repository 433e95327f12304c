"""`numbaconv bench`: time every layer op of a backend beside the reference and PyTorch."""
import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..choices import DType
from ..console import console, err_console, fail
from ..tables import title_line

NO_GPU_LINE = ("no CUDA GPU found; the cuda kernels can be checked for correctness under the simulator: "
               "NUMBA_ENABLE_CUDASIM=1 pytest tests -k cuda")


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Shapes(str, Enum):
    small = "small"
    cifar = "cifar"
    assignment = "assignment"
    wide = "wide"
    all = "all"


class BenchOp(str, Enum):
    layers = "layers"
    step = "step"


class TorchLayout(str, Enum):   # numbaconv.bench.TORCH_LAYOUTS
    channels_last = "channels_last"
    nchw = "nchw"


def _cuda_available() -> bool:
    try:
        from numbaconv import cuda as nb_cuda
    except Exception:  # numba-cuda missing or broken: no GPU for us
        return False
    return nb_cuda.is_available()


def _fmt(v, spec: str, suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def _header(device: str, dtype: str, info: dict, title: str, torch_layout: str | None = None) -> str:
    extra = f", torch layout {torch_layout}" if torch_layout and info.get("torch") else ""
    if info.get("busy_processes"):
        extra += f", beside {info['busy_processes']} busy process(es)"
    if info.get("thread_candidates"):
        extra += f", thread candidates {'+'.join(info['thread_candidates'])}"
    extra += "".join(f" ({note})" for note in info.get("thread_notes") or ())
    if info.get("malloc_settings"):   # numbaconv.cpu._memory: freed buffers kept between steps
        extra += ", malloc keeps freed memory"
    if info.get("malloc_note"):
        extra += f" ({info['malloc_note']})"
    if info.get("winograd_rows"):
        extra += f", F(4x4) rows {info['winograd_rows']}"
    return (f"{title} — {device} {dtype} | {info['cpu']}, {info['cores']} cores, numba {info['numba']} "
            f"({info['numba_threads']} threads, {info['threading_layer']}), numpy {info['numpy']}, "
            f"BLAS {info['blas']}, torch {info.get('torch', 'not installed')}, load {info.get('loadavg_1min')}"
            f"{extra}")


def _short_op(op: str) -> str:
    """"conv forward+backward" -> "conv fwd+bwd": the long words made the op column wrap mid-word at 80 columns."""
    return op.replace("backward", "bwd").replace("forward", "fwd")


def _tables(rows, device: str, width: int = 80):
    """One table per shape (the shape label is its title): op and the numbers, in short columns so
    that 80 columns hold them; a column with no value in any row (no PyTorch, reference skipped) is left out."""
    from rich import box

    cols = [("ms", f"{device} ms", ".2f", "")]
    if device == "cuda":
        cols += [("cpu_ms", "cpu ms", ".2f", ""), ("speedup_vs_cpu", "vs cpu", ".1f", "x")]
    cols += [("median_ms", "median ms", ".2f", ""), ("images_per_s", "img/s", ",.0f", ""),
             ("reference_ms", "ref ms", ".1f", ""), ("speedup", "vs ref", ",.0f", "x"), ("gflops", "GFLOP/s", ".1f", ""),
             ("torch_ms", "torch ms", ".2f", ""), ("torch_images_per_s", "torch img/s", ",.0f", ""),
             ("torch_ratio", "vs torch", ".2f", "x")]
    tables = []
    for label in dict.fromkeys(r["shape"] for r in rows):
        group = [r for r in rows if r["shape"] == label]
        used = [c for c in cols if c[0] == "ms" or any(r.get(c[0]) is not None for r in group)]
        ops = [_short_op(r["op"]) for r in group]
        op_min = max(len(w) for op in ops for w in op.split())
        cells = [[_fmt(r.get(key), spec, suffix) for key, _, spec, suffix in used] for r in group]
        full = [max([len(name)] + [len(row[j]) for row in cells]) for j, (_, name, _, _) in enumerate(used)]
        # a column costs its width plus 3 (padding either side and the space SIMPLE_HEAD draws between)
        if max(map(len, ops)) + sum(full) + 3 * (len(used) + 1) > width:
            # short of room: each number column as wide as its widest number or header word (the header
            # then wraps at its space; numbers never do), the op column takes the rest
            full = [max([len(w) for w in name.split()] + [len(row[j]) for row in cells])
                    for j, (_, name, _, _) in enumerate(used)]
        # still too wide (many columns of big numbers): the columns go into as many tables as it takes,
        # each repeating the op column, rather than rich dropping or folding one
        parts, room = [[]], width - op_min - 3
        for j, w in enumerate(full):
            if parts[-1] and sum(full[k] + 3 for k in parts[-1]) + w + 3 > room:
                parts.append([])
            parts[-1].append(j)
        for part in parts:
            t = Table(title=label, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
            t.add_column("op", min_width=op_min)   # wraps at spaces only
            for j in part:
                t.add_column(used[j][1], justify="right", width=full[j])
            for op, row in zip(ops, cells):
                t.add_row(op, *(row[j] for j in part))
            tables.append(t)
    return tables


def bench(
    device: Device = typer.Option(Device.cpu, help="Backend to time: the Numba cpu kernels or the cuda kernels."),
    dtype: DType = typer.Option(DType.float32, help="Floating-point type of every input."),
    shapes: Shapes = typer.Option(Shapes.all, help="small: shapes the reference finishes on (speedups); "
                                  "cifar: N=128 CIFAR-10 layer shapes; assignment: the assignment's own "
                                  "timing shapes, the reference timed once on each (~10-30 s); wide: the long "
                                  "recipe's layers at N=256 (conv and batch norm; minutes on 2 cores); "
                                  "all: small, cifar and assignment."),
    op: BenchOp = typer.Option(BenchOp.layers, "--op", help="layers: the layer ops on --shapes; step: one whole "
                               "training step of --recipe (cpu, float32), ours and PyTorch's in turns."),
    recipe: str = typer.Option("fast", help="Recipe whose training step --op step times (numbaconv.recipe)."),
    busy: int = typer.Option(0, min=0, help="Run N competing busy processes (one core each) while timing; "
                             "they are killed afterwards, also on Ctrl-C."),
    repeat: int = typer.Option(5, min=1, help="Timed calls per op (the best is reported), after one warm-up."),
    bn: bool = typer.Option(False, "--bn", help="Also time batch norm backward (graph) against backward_alt "
                            "(closed form), for the reference and this backend."),
    no_torch: bool = typer.Option(False, "--no-torch", help="Skip the PyTorch comparison even if installed."),
    torch_layout: TorchLayout = typer.Option(TorchLayout.channels_last, "--torch-layout",
                                             help="PyTorch's memory format: channels_last (NHWC, oneDNN's own and "
                                             "the faster here) or nchw (the layout numbaconv computes in)."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the rows and machine info to FILE."),
) -> None:
    """Time conv, max pool and spatial batch norm (forward and backward) of a backend:
    its ms, the reference's ms where it finishes in reasonable time, the speedup,
    GFLOP/s for conv, and PyTorch's ms and the ratio when PyTorch is installed;
    or (--op step) one training step of a recipe: ms (best and median) and images/s, ours and PyTorch's.
    All numbers in a table come from one run, on the thread count Numba uses
    ("vs ref": the reference's time over this backend's; "vs torch": this backend's over PyTorch's)."""
    if device is Device.cuda and not _cuda_available():
        err_console.print(NO_GPU_LINE, highlight=False)
        raise typer.Exit(2)
    from numbaconv.bench import (REFERENCE_LIMITS, SHAPE_SETS, busy_processes, load_torch_first, machine_info,
                                 run_benchmarks)

    if not no_torch and device is Device.cpu:
        load_torch_first()   # PyTorch shares numba's libgomp: it keeps its own wait policy, ours follows
    from numbaconv.recipe import RECIPES

    if op is BenchOp.step:
        if device is not Device.cpu or dtype is not DType.float32:
            raise fail("--op step times the cpu backend in float32 (the recipe's dtype); "
                 "leave out --device/--dtype", code=2)
        if recipe not in RECIPES:
            raise fail(f"unknown --recipe {recipe!r}; choose one of {', '.join(RECIPES)}", code=2)
        with busy_processes(busy):
            with console.status(f"timing a {recipe} training step, numbaconv and PyTorch in turns..."):
                from numbaconv.bench import run_step_benchmark

                row = run_step_benchmark(recipe, repeat=repeat, torch=not no_torch, torch_layout=torch_layout.value)
            info = machine_info(busy)
        title_line(console, _header("cpu", "float32", info, "training step", row.get("torch_layout")))
        for table in _tables([row], "cpu", console.width):
            console.print(table)
        if json_file is not None:
            _write_json(json_file, {"machine": info, "rows": [{**row, "shape_set": "step"}]})
        return

    if device is Device.cuda:
        import numba

        # the small shapes launch few blocks on purpose; numba would warn at every launch
        numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = 0

    sets = ["small", "cifar", "assignment"] if shapes is Shapes.all else [shapes.value]
    all_rows = []
    with busy_processes(busy):
        for name in sets:
            with console.status(f"timing {device.value} {dtype.value} on {name} shapes..."):
                rows = run_benchmarks(device.value, dtype.value, SHAPE_SETS[name], repeat=repeat,
                                      torch=not no_torch, bn_alt=bn, reference_max_iterations=REFERENCE_LIMITS[name],
                                      torch_layout=torch_layout.value)
            title_line(console, _header(device.value, dtype.value, machine_info(busy), f"{name} shapes",
                                        None if no_torch else torch_layout.value))
            for table in _tables(rows, device.value, console.width):
                console.print(table)
            all_rows += [{**r, "shape_set": name} for r in rows]
        info = machine_info(busy)
    if json_file is not None:
        _write_json(json_file, {"machine": info, "rows": all_rows})


def _write_json(path: Path, data: dict) -> None:
    """Written whole or not at all (a temporary beside it, then renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise fail(f"cannot write --json {path}: {e.strerror or e}")
    console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command()(bench)
