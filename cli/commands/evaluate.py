"""`numbaconv evaluate`: accuracy of a checkpoint on a dataset split."""
from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text
from rich.table import Table

from ..choices import Backend
from ..console import console, fail
from ..tables import short_path, title_line


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
    batch_size: int = typer.Option(100, min=1, help="Images per forward pass (each batch is preprocessed "
                                   "on its own, so memory is the uint8 images plus one batch)."),
    confusion: Optional[Path] = typer.Option(None, "--confusion", help="Also draw the confusion matrix "
                                             "(counts, per-class recall) to this PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (with 'accuracy', 'per_class' "
                                 "and 'confusion': counts[true][predicted])."),
) -> None:
    """Accuracy and per-class accuracy of a trained model; the data is preprocessed
    with the mean/std recorded in the checkpoint."""
    from numbaconv.checkpoint import load_checkpoint, load_split_for
    from numbaconv.predict import evaluate as evaluate_images

    try:
        ck = load_checkpoint(checkpoint, backend=backend.value if backend else None)
        X, y, class_names, source = load_split_for(ck, split.value, dataset, num_val)
        scored = evaluate_images(ck, X, y, batch_size=batch_size)
    except ValueError as e:
        raise fail(str(e), 2) from None
    per_class, counts = scored["per_class"], scored["confusion"]
    names = list(class_names) if len(class_names) == len(per_class) else [str(i) for i in range(len(per_class))]
    accuracy = scored["accuracy"]
    result = {"accuracy": accuracy, "correct": scored["correct"], "num_images": int(len(y)),
              "split": split.value, "dataset": source, "checkpoint": str(checkpoint),
              "model": ck.model.kind, "backend": ck.model.backend,
              "per_class": {n: (None if math.isnan(a) else float(a)) for n, a in zip(names, per_class)},
              "class_names": names, "confusion": counts.tolist()}
    if confusion is not None:
        from numbaconv.plots import plot_confusion

        try:
            plot_confusion(counts, names, confusion,
                           title=f"{checkpoint.name}: {split.value} split, accuracy {accuracy:.4f}")
        except (OSError, ValueError) as e:
            raise fail(f"cannot write the confusion matrix to {confusion}: {e}", 1) from None
        result["confusion_png"] = str(confusion)
    if as_json:
        typer.echo(json.dumps(result))
        return
    room = max(console.width - 30, 20)
    title_line(console, f"{short_path(checkpoint, room)} on the {split.value} split")
    console.print(f"data: {short_path(source, max(console.width - 6, 20))}", highlight=False)
    table = Table()
    table.add_column("class", no_wrap=True)
    table.add_column("images", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column("most often mistaken for", no_wrap=True, overflow="ellipsis")
    for i, (n, a) in enumerate(result["per_class"].items()):
        wrong = counts[i].copy()
        wrong[i] = 0
        confused = Text(f"{names[int(wrong.argmax())]} ({int(wrong.max())})") if wrong.max() > 0 else "-"
        table.add_row(Text(n), str(int(counts[i].sum())), "-" if a is None else f"{a:.4f}", confused)
    table.add_row("[bold]all[/]", str(len(y)), f"[bold]{accuracy:.4f}[/]", "")
    console.print(table)
    console.print(f"accuracy {accuracy:.4f} ({result['correct']} of {len(y)} images)")
    if confusion is not None:
        console.print(f"confusion matrix: {confusion}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
