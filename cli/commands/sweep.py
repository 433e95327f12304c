"""`numbaconv sweep SPEC.toml --out DIR`: many training runs on Dask distributed.

The logic lives in numbaconv.sweep (spec, runs, engine, results.json, summary
figure); this module parses options, shows the live progress line and renders
the final table. Shared with `numbaconv experiment`: the engine options and the
progress display."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from ..console import console, fail

WORKERS_HELP = ("Local worker processes, one run each at a time (default: one per core). 0: run one after "
                "another in this process, without Dask.")
SCHEDULER_HELP = ("Address of a running Dask scheduler (tcp://host:8786) to run on instead of a local cluster; "
                  "start its workers with --nthreads 1, and let them reach --out at the same path.")
THREADS_HELP = "Numba threads per run (per worker), unless the spec sets `threads`."


def progress_text(c: dict) -> str:
    w = c.get("workers")
    where = "" if w is None else "  (in this process)" if w == 0 else f"  ({w} worker{'s' if w != 1 else ''})"
    return (f"{c['done']}/{c['total']} done  {c['running']} running  {c['failed']} failed  "
            f"{c['pending']} waiting{where}")


def run_with_progress(call, total: int, *, again: str | None = None):
    """``call(on_update)`` (numbaconv.sweep.run_sweep or an experiment) with a live progress line
    shown once the engine has checked its folder; a failed run is printed as it ends. Bad options
    and a missing Dask become one error line (exit 2), Ctrl-C a message (exit 130)."""
    progress = Progress(SpinnerColumn(), BarColumn(), TextColumn("{task.fields[stats]}"), console=console,
                        transient=False)
    task = progress.add_task("runs", total=total, stats="starting...")

    def update(c, record):
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=c["done"] + c["failed"], stats=progress_text(c))
        if record is not None and record["status"] == "failed":
            progress.console.print(f"[red]failed[/] {escape(record['name'])}: {escape(record['error'])}",
                                   highlight=False)

    try:
        try:
            return call(update)
        finally:
            progress.stop()
    except ImportError as e:   # Dask is an optional extra
        raise fail(str(e), 2) from None
    except ValueError as e:    # bad folder, resume of another sweep, unreachable scheduler, bad run settings
        raise fail(str(e), 2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: runs in flight were stopped; finished runs are recorded"
                      + (f". Continue with: {escape(again)}" if again else ""), highlight=False)
        raise typer.Exit(130)


def _acc(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def sweep(
    spec: Path = typer.Argument(..., help="TOML spec: [base] options common to every run (any `numbaconv train` "
                                "option by its long name), [grid] option = [values] (every combination is a run)."),
    out: Path = typer.Option(..., "--out",
                             help="Sweep folder: results.json, summary.png, runs/NAME/ (one folder per run)."),
    workers: Optional[int] = typer.Option(None, min=0, help=WORKERS_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
    threads: int = typer.Option(1, min=1, help=THREADS_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the sweep in --out: run only what is not done."),
) -> None:
    """Train every combination of a spec's [grid] on Dask distributed; exit code 0 when every run is done,
    1 when some failed (results still written), 2 for a bad spec or option, 130 on Ctrl-C."""
    from numbaconv.sweep import RESULTS, SUMMARY_PNG, expand, load_spec, plot_sweep, require_dask, run_sweep

    if workers is not None and scheduler is not None:
        raise fail("give --workers (a local cluster) or --scheduler (a running one), not both", 2)
    if workers != 0 or scheduler is not None:
        try:
            require_dask()
        except ImportError as e:
            raise fail(str(e), 2) from None
    try:
        sweep_spec = load_spec(spec)
        runs = expand(sweep_spec, out)
    except ValueError as e:
        raise fail(str(e), 2) from None
    keys = list(sweep_spec.grid)
    console.print(f"sweep {spec}: {len(runs)} run{'s' if len(runs) != 1 else ''} into {out}/runs "
                  f"({', '.join(f'{k}: {len(v)}' for k, v in sweep_spec.grid.items()) or 'no grid'})",
                  highlight=False)
    meta = {"spec": str(spec), **sweep_spec.to_dict()}
    records = run_with_progress(
        lambda update: run_sweep(runs, out, workers=workers, scheduler=scheduler, threads=threads, resume=resume,
                                 meta=meta, on_update=update),
        len(runs), again=f"numbaconv sweep {spec} --out {out} --resume")

    png = plot_sweep(records, keys, out / SUMMARY_PNG, title=f"sweep {out}")
    table = Table(title=f"sweep {out}")
    for col in [*keys, "status", "best val acc", "train time", "error"]:
        table.add_column(col)
    for r in records:
        err = r["error"] or ""
        table.add_row(*[escape(str(r["params"][k])) for k in keys], r["status"], _acc(r["val_acc"]),
                      "-" if r["train_time"] is None else f"{r['train_time']:.1f} s",
                      escape(err if len(err) <= 80 else err[:77] + "..."))
    console.print(table)
    failed = sum(r["status"] == "failed" for r in records)
    console.print(f"wrote {out / RESULTS} and {png}" + (f"; {failed} run(s) failed" if failed else ""),
                  highlight=False)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(sweep)
