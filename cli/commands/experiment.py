"""`numbaconv experiment overfit|init|bn-lr`: the report's experiments (Figures 6, 7, 9).

The logic lives in numbaconv.experiments (it builds the runs as data, runs them
through the sweep engine and writes the JSON and PNG); this module parses
options and renders the progress line and the summary table."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..choices import Backend
from ..console import console, fail
from .sweep import SCHEDULER_HELP, run_with_progress

app = typer.Typer(name="experiment", help="The report's experiments: each writes OUT/NAME.json and "
                  "OUT/NAME.png and prints a summary.", no_args_is_help=True)

DATASET_HELP = "cifar10 (see `numbaconv datasets`), synthetic, or an HDF5 file in numbaconv's layout."


def _floats(option: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{option} must be a comma-separated list of numbers, got {text!r}", 2) from None


def _ints(option: str, text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{option} must be a comma-separated list of integers, got {text!r}", 2) from None


def _pct(v) -> str:
    return "-" if v is None else f"{v:.3f}"


WORKERS_HELP = ("Local worker processes, one run each at a time (default: one per core, or 0 without Dask). "
                "0: one run after another in this process.")
THREADS_HELP = "Numba threads per run (default: 1 in workers, every core with --workers 0)."


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} exists and is not a folder; choose a folder", 2)


def _engine(workers: Optional[int], scheduler: Optional[str], threads: Optional[int]) -> dict:
    """The engine options: without --workers/--scheduler, a local cluster when Dask is installed,
    else the runs one after another in this process (said in one line)."""
    if workers is not None and scheduler is not None:
        raise fail("give --workers (a local cluster) or --scheduler (a running one), not both", 2)
    if workers is None and scheduler is None:
        from numbaconv.sweep import INSTALL_HINT, require_dask

        try:
            require_dask()
        except ImportError:
            console.print(f"Dask is not installed: the runs go one after another in this process "
                          f"({escape(INSTALL_HINT)} to run them in parallel)", highlight=False)
            workers = 0
    return {"workers": workers, "scheduler": scheduler, "threads": threads}


def _run(fn, total: int, out: Path, engine: dict | None = None, **kw) -> dict:
    from numbaconv.experiments import ExperimentError

    _check_out(out)
    try:
        return run_with_progress(lambda update: fn(out=out, on_update=update, **(engine or {}), **kw), total)
    except ExperimentError as e:   # a run failed for another reason than diverging (its worker died)
        raise fail(str(e), 1) from None


@app.command()
def overfit(
    dataset: str = typer.Option("cifar10", help=DATASET_HELP),
    backend: Backend = typer.Option(Backend.cpu, help="Layer backend."),
    seed: int = typer.Option(0, min=0, help="Seed of the weights and minibatches."),
    out: Path = typer.Option(Path("experiments/overfit"), "--out",
                             help="Folder for overfit.json, overfit.png and overfit-runs/ (the run folder)."),
    num_train: int = typer.Option(50, min=1, help="Training images to overfit."),
    num_val: int = typer.Option(1000, min=1, help="Validation images."),
    epochs: int = typer.Option(30, min=1, help="Epochs."),
    batch_size: int = typer.Option(10, min=1, help="Minibatch size."),
    lr: float = typer.Option(2e-3, help="Adam learning rate."),
    weight_scale: str = typer.Option("0.1", help="Initial weight std, or 'kaiming'."),
    filters: str = typer.Option("8,16,32,64", help="Conv filters per layer."),
    pools: str = typer.Option("0,1,2,3", help="Conv layers followed by a 2x2 max pool."),
) -> None:
    """Figure 6: a DeepConvNet trained for 30 epochs on 50 images, to see how soon it fits them (the report:
    100% training accuracy within 30 epochs on CIFAR-10); reports the first epoch at 100%, if any."""
    from numbaconv.experiments import run_overfit

    ws = weight_scale if weight_scale == "kaiming" else _floats("--weight-scale", weight_scale)[0]
    r = _run(run_overfit, 1, out, dataset=dataset, backend=backend.value, seed=seed, num_train=num_train,
             num_val=num_val, epochs=epochs, batch_size=batch_size, learning_rate=lr, weight_scale=ws,
             num_filters=_ints("--filters", filters), max_pools=_ints("--pools", pools))
    t = Table(title=f"overfit {r['num_train']} images ({dataset}, {backend.value})", show_header=False)
    for k, v in [("epochs", str(r["epochs"])),
                 ("first epoch at 100% train acc",
                  "never" if r["epochs_to_100"] is None else f"{r['epochs_to_100']:g}"),
                 ("final train acc", _pct(r["final_train_acc"])), ("final val acc", _pct(r["final_val_acc"])),
                 ("final loss", _pct(r["final_loss"])), ("diverged", escape(r["diverged"] or "no")),
                 ("run time", f"{r['seconds']:.1f} s"), ("files", f"{r['json']} {r['png']}")]:
        t.add_row(k, v)
    console.print(t)


@app.command()
def init(
    dataset: str = typer.Option("cifar10", help=DATASET_HELP),
    backend: Backend = typer.Option(Backend.cpu, help="Layer backend."),
    seed: int = typer.Option(0, min=0, help="Seed of the weights and minibatches."),
    out: Path = typer.Option(Path("experiments/init"), "--out",
                             help="Folder for init.json, init.png and init-runs/ (the runs' folders)."),
    num_train: int = typer.Option(10000, min=1, help="Training images."),
    num_val: int = typer.Option(1000, min=1, help="Validation images."),
    epochs: int = typer.Option(1, min=1, help="Epochs per initialisation."),
    batch_size: int = typer.Option(128, min=1, help="Minibatch size."),
    lr: float = typer.Option(2e-3, help="SGD+momentum learning rate."),
    scales: str = typer.Option("kaiming,1e-1,1e-2,1e-3", help="Initialisations: 'kaiming' or weight stds."),
    filters: str = typer.Option(",".join(["8"] * 10 + ["32"] * 10 + ["128"] * 10),
                                help="Conv filters per layer (default: the 31-layer net)."),
    pools: str = typer.Option("9,19", help="Conv layers followed by a 2x2 max pool."),
    workers: Optional[int] = typer.Option(None, min=0, help=WORKERS_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
    threads: Optional[int] = typer.Option(None, min=1, help=THREADS_HELP),
) -> None:
    """Figure 7: a 31-layer DeepConvNet after one epoch with Kaiming and fixed-std initialisations."""
    from numbaconv.experiments import run_init

    sc = [s if s.strip() == "kaiming" else _floats("--scales", s)[0] for s in scales.split(",") if s.strip()]
    r = _run(run_init, len(sc), out, _engine(workers, scheduler, threads), dataset=dataset, backend=backend.value,
             seed=seed, num_train=num_train, num_val=num_val, epochs=epochs, batch_size=batch_size, learning_rate=lr,
             scales=sc,
             num_filters=_ints("--filters", filters), max_pools=_ints("--pools", pools))
    t = Table(title=f"{r['layers']}-layer DeepConvNet, {r['epochs']} epoch(s) on {r['num_train']} images "
                    f"({dataset}); chance {r['chance']:.2f}")
    for col in ("init", "train acc", "val acc", "final loss", "diverged", "time"):
        t.add_column(col)
    for label, run in r["runs"].items():
        t.add_row(label, _pct(run["final_train_acc"]), _pct(run["final_val_acc"]), _pct(run["final_loss"]),
                  "yes" if run["diverged"] else "no", f"{run['seconds']:.0f} s")
    console.print(t)
    console.print(f"wrote {r['json']} and {r['png']}", highlight=False)


@app.command("bn-lr")
def bn_lr(
    dataset: str = typer.Option("cifar10", help=DATASET_HELP),
    backend: Backend = typer.Option(Backend.cpu, help="Layer backend."),
    seed: int = typer.Option(0, min=0, help="Seed of the weights and minibatches."),
    out: Path = typer.Option(Path("experiments/bn-lr"), "--out",
                             help="Folder for bn-lr.json, bn-lr.png and bn-lr-runs/ (the runs' folders)."),
    num_train: int = typer.Option(10000, min=1, help="Training images."),
    num_val: int = typer.Option(1000, min=1, help="Validation images."),
    epochs: int = typer.Option(10, min=1, help="Epochs per run."),
    batch_size: int = typer.Option(128, min=1, help="Minibatch size."),
    lrs: str = typer.Option("1e-5,1e-4,1e-3,1e-2,1e-1", help="Adam learning rates to try."),
    filters: str = typer.Option("16,32,32,64,64", help="Conv filters per layer."),
    pools: str = typer.Option("0,1,2,3,4", help="Conv layers followed by a 2x2 max pool."),
    workers: Optional[int] = typer.Option(None, min=0, help=WORKERS_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
    threads: Optional[int] = typer.Option(None, min=1, help=THREADS_HELP),
) -> None:
    """Figure 9: the DeepConvNet with and without batch norm across learning rates."""
    from numbaconv.experiments import run_bn_lr

    learning_rates = _floats("--lrs", lrs)
    r = _run(run_bn_lr, 2 * len(learning_rates), out, _engine(workers, scheduler, threads), dataset=dataset,
             backend=backend.value, seed=seed, num_train=num_train, num_val=num_val, epochs=epochs,
             batch_size=batch_size, learning_rates=learning_rates,
             num_filters=_ints("--filters", filters), max_pools=_ints("--pools", pools))
    t = Table(title=f"batch norm vs learning rate: {r['num_train']} images, {r['epochs']} epochs ({dataset})")
    for col in ("lr", "baseline train", "baseline val", "batchnorm train", "batchnorm val"):
        t.add_column(col)
    for lr in r["runs"]["baseline"]:
        b, n = r["runs"]["baseline"][lr], r["runs"]["batchnorm"][lr]
        mark = lambda x: _pct(x["final_train_acc"]) + (" (diverged)" if x["diverged"] else "")  # noqa: E731
        t.add_row(lr, mark(b), _pct(b["final_val_acc"]), mark(n), _pct(n["final_val_acc"]))
    console.print(t)
    console.print(f"wrote {r['json']} and {r['png']}", highlight=False)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="experiment")
