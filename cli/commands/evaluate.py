"""`numbaconv evaluate`: accuracy of a checkpoint on a dataset split."""
from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..choices import Backend
from ..console import console, fail


class Split(str, Enum):
    test = "test"
    val = "val"
    train = "train"


def evaluate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `numbaconv train` (best.h5 or last.h5)."),
    dataset: Optional[str] = typer.Option(None, help="synthetic, cifar10 or an HDF5 file (default: the "
                                          "checkpoint's training data)."),
    split: Split = typer.Option(Split.test, help="Which split to score."),
    num_val: Optional[int] = typer.Option(None, min=0, help="Validation images held out of train "
                                          "(default: as in training)."),
    backend: Optional[Backend] = typer.Option(None, help="Run on another backend than the checkpoint's."),
    batch_size: int = typer.Option(100, min=1, help="Images per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (with an 'accuracy' field)."),
) -> None:
    """Accuracy and per-class accuracy of a trained model; the data is preprocessed
    with the mean/std recorded in the checkpoint."""
    from numbaconv.checkpoint import load_checkpoint, load_split_for
    from numbaconv.solver import evaluate_accuracy

    try:
        ck = load_checkpoint(checkpoint, backend=backend.value if backend else None)
        X, y, class_names, source = load_split_for(ck, split.value, dataset, num_val)
        accuracy, per_class = evaluate_accuracy(ck.model, X, y, batch_size)
    except ValueError as e:
        raise fail(str(e), 2) from None
    names = list(class_names) if len(class_names) == len(per_class) else [str(i) for i in range(len(per_class))]
    result = {"accuracy": accuracy, "correct": int(round(accuracy * len(y))), "num_images": int(len(y)),
              "split": split.value, "dataset": source, "checkpoint": str(checkpoint),
              "model": ck.model.kind, "backend": ck.model.backend,
              "per_class": {n: (None if math.isnan(a) else float(a)) for n, a in zip(names, per_class)}}
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title=f"{checkpoint} on the {split.value} split of {source}")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for n, a in result["per_class"].items():
        table.add_row(n, "-" if a is None else f"{a:.4f}")
    table.add_row("[bold]all[/]", f"[bold]{accuracy:.4f}[/]")
    console.print(table)
    console.print(f"accuracy {accuracy:.4f} ({result['correct']} of {len(y)} images)")


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
