"""`numbaconv plot`: a run folder's training curves as a PNG."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..console import console, fail


def plot(
    run_dir: Path = typer.Argument(..., help="Run folder written by `numbaconv train` (reads history.json)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="PNG to write (default RUN_DIR/curves.png)."),
) -> None:
    """Plot training loss per iteration and train/val accuracy per epoch from RUN_DIR/history.json."""
    from numbaconv.plots import plot_history
    from numbaconv.solver import History

    path = run_dir / "history.json"
    if not path.is_file():
        raise fail(f"{path} not found: RUN_DIR must be a folder written by `numbaconv train`", 2)
    try:
        history = History.from_dict(json.loads(path.read_text())).to_dict()   # names a bad or missing list
        out = plot_history(history, output or run_dir / "curves.png", title=f"{run_dir}: training loss")
    except (ValueError, OSError) as e:   # bad JSON or history; an output that cannot be written
        raise fail(f"cannot plot {path}: {e}", 2) from None
    t = Table(title=f"{run_dir}", show_header=False)
    t.add_row("iterations", str(len(history["loss"])))
    t.add_row("accuracy checks", str(len(history["epoch"])))
    if history["loss"]:
        t.add_row("final loss", f"{history['loss'][-1]:.4f}")
    if history["val_acc"]:
        t.add_row("final train / val acc", f"{history['train_acc'][-1]:.4f} / {history['val_acc'][-1]:.4f}")
        t.add_row("best val acc", f"{max(history['val_acc']):.4f}")
    t.add_row("figure", str(out))
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command()(plot)
