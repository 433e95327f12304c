"""`numbaconv train`: parse the options into a RunSpec (numbaconv.run), execute it, render it."""
from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from numbaconv.recipe import RECIPES, describe_recipe
from numbaconv.run import MODEL_KINDS

from ..choices import Backend, DType, Optimizer, Recipe, Sampling, registry_choice
from ..console import console, fail

ModelKind = registry_choice("ModelKind", MODEL_KINDS)
RECIPE_HELP = "A named recipe that sets the model, optimizer, schedule and augmentation: " + "; ".join(
    f"{name} = {describe_recipe(name)}" for name in RECIPES) + "."
BAR_WIDTH = 16   # with the text beside it, the live display fits 80 columns


def cuda_copies():
    """The cuda backend's host<->device copy counter so far, or None when the backend was never loaded
    (it counts from its import, so then everything it counts later is this run's)."""
    import sys

    cuda = sys.modules.get("numbaconv.cuda")
    return cuda.transfer_stats() if cuda is not None else None


def copies_row(before, after) -> Optional[tuple[str, str]]:
    """The summary row of the copies between two ``cuda_copies()`` snapshots; None when there were
    none (a run on another backend)."""
    if after is None:
        return None
    d = {k: getattr(after, k) - (getattr(before, k) if before is not None else 0)
         for k in ("h2d", "d2h", "h2d_bytes", "d2h_bytes")}
    if not (d["h2d"] or d["d2h"]):
        return None
    return ("host<->GPU copies", f"{d['h2d']:,} up ({d['h2d_bytes'] / 1e6:,.1f} MB), {d['d2h']:,} down "
            f"({d['d2h_bytes'] / 1e6:,.1f} MB): uploads, 1 up + 1 down per step, checks, checkpoints")


def _clock(seconds: float) -> str:
    return "?" if math.isnan(seconds) else f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def _progress_text(solver, budget: Optional[float], session_start: tuple[int, float]) -> str:
    """Two lines: where training is now, and what the last accuracy check said (and when)."""
    it0, t0 = session_start
    steps, secs = solver.iteration - it0, solver.train_time - t0
    ips = steps * solver.batch_size / secs if secs > 0 else 0.0
    if budget is not None:
        left = max(budget - solver.train_time, 0.0)
        if solver.num_epochs < 10 ** 6 and secs > 0:
            left = min(left, (solver.num_iterations - solver.iteration) * secs / steps)
    else:
        left = (solver.num_iterations - solver.iteration) * secs / steps if steps else float("nan")
    h = solver.record
    epoch = solver.iteration / solver.iterations_per_epoch
    of = f"/{solver.num_epochs}" if solver.num_epochs < 10 ** 6 else ""
    loss = f"{h.loss[-1]:.3f}" if h.loss else "-"
    now = f"epoch {epoch:.2f}{of}  loss {loss}  {ips:,.0f} img/s  {_clock(left)} left"
    if h.val_acc:
        check = f"last check @ epoch {h.epoch[-1]:.2f}: val acc {h.val_acc[-1]:.3f}, train acc {h.train_acc[-1]:.3f}"
    else:
        check = "last check: none yet (one at each epoch end)"
    return f"{now}\n{check}"


class _Display:
    """Renders execute()'s events: a status line while loading and compiling, then a
    live progress display, then nothing (the caller prints the summary)."""

    def __init__(self):
        self.status = self.progress = None
        self.task = None
        self.session = (0, 0.0)

    def _status(self, text: Optional[str]) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        if text:
            self.status = console.status(text)
            self.status.start()

    def _refresh(self, solver, budget) -> None:
        done = solver.train_time if solver.num_epochs >= 10 ** 6 else solver.iteration
        self.progress.update(self.task, completed=done, stats=_progress_text(solver, budget, self.session))

    def __call__(self, ev) -> None:
        if ev.kind == "loading":
            what = f"checkpoint {ev.spec.resume}" if ev.spec.resume else ev.spec.dataset
            self._status(f"loading {what}...")
        elif ev.kind == "planned":
            self._status(None)
            s = ev.solver
            resuming = f"; resuming at epoch {s.epoch}, iteration {s.iteration}" if ev.plan.resumed_from else ""
            console.print(ev.plan.describe() + resuming, highlight=False)
        elif ev.kind == "compiling":
            self._status("compiling kernels (the first run only: Numba caches them)...")
        elif ev.kind == "training":
            self._status(None)
            s = ev.solver
            self.session = (s.iteration, s.train_time)
            total = ev.plan.time_budget if s.num_epochs >= 10 ** 6 else s.num_iterations
            self.progress = Progress(SpinnerColumn(), BarColumn(bar_width=BAR_WIDTH), TextColumn("{task.fields[stats]}"),
                                     console=console, transient=False)
            self.task = self.progress.add_task("train", total=total, stats="taking the first step...")
            self.progress.start()
            self._refresh(s, ev.plan.time_budget)
        elif ev.kind in ("step", "epoch", "finished"):
            self._refresh(ev.solver, ev.plan.time_budget)

    def close(self) -> None:
        self._status(None)
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def train(
    out: Path = typer.Option(..., "--out", help="Run folder: best.h5, last.h5, history.json, config.json, curves.png."),
    recipe: Optional[Recipe] = typer.Option(None, help=RECIPE_HELP),
    dataset: Optional[str] = typer.Option(None, help="synthetic (default), cifar10 (see `numbaconv datasets`) "
                                          "or an HDF5 file in numbaconv's layout."),
    model: Optional[ModelKind] = typer.Option(None, help="deep (default): {conv - (batchnorm) - relu - (pool)} x L - linear; "
                                        "three-layer: conv-relu-pool-linear-relu-linear."),
    filters: Optional[str] = typer.Option(None, help="deep: conv filters per layer, e.g. 16,32,64 (default); "
                                          "three-layer: the number of conv filters (default 32)."),
    pools: Optional[str] = typer.Option(None, help="deep: conv layers followed by a 2x2 max pool, e.g. 0,1,2 "
                                        "(default)."),
    batchnorm: Optional[bool] = typer.Option(None, "--batchnorm/--no-batchnorm",
                                             help="deep: spatial batch norm after each conv (default off)."),
    epochs: Optional[int] = typer.Option(None, help="Number of epochs."),
    time_budget: Optional[float] = typer.Option(None, help="Seconds of training steps (data loading and "
                                                "accuracy checks excluded); with --resume, the total; with --recipe "
                                                "and no --epochs, the recipe's own by default."),
    optimizer: Optional[Optimizer] = typer.Option(None, help="Update rule (default adam)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the rule's, 1e-3 for adam)."),
    lr_decay: Optional[float] = typer.Option(None, help="Learning rate factor per epoch (default 1.0)."),
    batch_size: Optional[int] = typer.Option(None, help="Minibatch size, at most the training images (default 128, or all "
                                            "the training images if fewer)."),
    sampling: Optional[Sampling] = typer.Option(None, help="How minibatches are drawn: replacement (default, the "
                                                "assignment's: each at random, with replacement) or epochs (a fresh "
                                                "shuffle each epoch: every image once)."),
    reg: Optional[float] = typer.Option(None, help="L2 strength: loss += reg * sum(W**2) (default 0)."),
    weight_scale: Optional[str] = typer.Option(None, help="Initial weight std, or 'kaiming' (default)."),
    num_train: Optional[int] = typer.Option(None, help="Use only the first N training images."),
    num_val: Optional[int] = typer.Option(None, help="Validation images held out of train (default 1000; "
                                          "with --recipe, the recipe's own)."),
    normalize_std: Optional[bool] = typer.Option(None, "--normalize-std/--no-normalize-std",
                                                 help="Also divide by the per-channel std (default off)."),
    dtype: Optional[DType] = typer.Option(None, help="Training precision (default float32)."),
    backend: Optional[Backend] = typer.Option(None, help="Layer backend (default cpu; on --resume the "
                                              "checkpoint's own, and a run may move to another)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the initial weights and minibatches (default 0)."),
    threads: Optional[int] = typer.Option(None, help="Numba (and BLAS) threads for this run (default: all, or "
                                          "NUMBA_NUM_THREADS)."),
    resume: Optional[Path] = typer.Option(None, help="Continue from a last.h5 checkpoint; the model, data and "
                                          "optimizer come from it (give --epochs or --time-budget to extend)."),
    force: Optional[bool] = typer.Option(None, "--force", help="Replace the run already in --out (without it, "
                                         "train refuses a folder that holds one, unless --resume continues it)."),
) -> None:
    """Train a convnet into a run folder (locked while training; one that holds a run needs --resume or
    --force); Ctrl-C saves last.h5 and exits with code 130, --resume continues."""
    # the options given, as `numbaconv train` names them: the RunSpec's keys
    options = {k.replace("_", "-"): (v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v)
               for k, v in locals().items() if v is not None}
    from numbaconv.files import LockedError
    from numbaconv.run import RunFilesError, RunInterrupted, execute, spec_from_options
    from numbaconv.solver import NonFiniteLossError

    display = _Display()
    try:
        spec = spec_from_options(options, prefix="--")
        copies_before = cuda_copies()
        result = execute(spec, on_progress=display)
    except (RunFilesError, LockedError) as e:   # the folder, not the options: a full disk, another run in it
        display.close()
        raise fail(str(e), 1) from None
    except ValueError as e:  # bad option values, data or checkpoint: the library says what is wrong
        display.close()
        raise fail(str(e), 2) from None
    except RunInterrupted as e:
        display.close()
        console.print(f"[yellow]interrupted[/] at epoch {e.epoch:.2f} (iteration {e.iteration}); saved {e.last}. "
                      f"Continue with: numbaconv train --out {e.run_dir} --resume {e.last}", highlight=False)
        raise typer.Exit(130)
    except NonFiniteLossError as e:
        display.close()
        raise fail(f"training stopped: {e} {getattr(e, 'kept', '')}".strip(), 1) from None
    display.close()

    table = Table(title=f"run {out}", show_header=False)
    rows = [("stopped", "time budget reached" if result.stopped == "time_limit" else "all epochs done"),
            ("epochs", f"{result.epochs:.2f}"),
            ("iterations", str(result.iterations)),
            ("training time", f"{result.train_time:.1f} s"),
            ("images/s", f"{result.images_per_s:,.0f}" if result.images_per_s else "-"),
            ("final loss", f"{result.final_loss:.4f}" if result.final_loss is not None else "-"),
            ("train acc (last check)", f"{result.final_train_acc:.4f}" if result.final_train_acc is not None else "-"),
            ("best val acc", f"{result.best_val_acc:.4f} (epoch {result.best_epoch:.2f})"
             if result.best_val_acc is not None else "-"),
            ("files", f"{out}/best.h5 last.h5 history.json config.json curves.png")]
    copies = copies_row(copies_before, cuda_copies())
    if copies is not None:   # --backend cuda: the proof that steps stay on the device
        rows.insert(5, copies)
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(train)
