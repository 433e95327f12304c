"""`numbaconv predict`: class probabilities of a trained model for new images."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text
from rich.table import Table

from ..choices import Backend
from ..console import console, err_console, fail
from ..tables import short_path, title_line


def predict(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by `numbaconv train` (best.h5 or last.h5)."),
    images: List[Path] = typer.Argument(..., help="PNG/JPEG files (any size or mode: converted to RGB, resized to "
                                        "the model's input with Pillow's bilinear filter, antialiased when "
                                        "shrinking), .npy arrays of raw uint8 images (N,3,32,32) or (N,32,32,3), "
                                        "or folders of them."),
    top_k: int = typer.Option(3, "--top-k", min=1, help="Classes shown per image, most probable first."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: per image its top-k and all "
                                 "class probabilities; notes and errors in their own fields."),
    backend: Optional[Backend] = typer.Option(None, help="Run on another backend than the checkpoint's."),
    batch_size: int = typer.Option(100, min=1, help="Images per forward pass."),
) -> None:
    """Predict the class of each image with the checkpoint's model, preprocessed exactly as
    in training (the training run's mean/std, then the model's own whitening stem and mirror
    averaging). A file that cannot be read is one error line and makes the exit code 1; the
    other files are still predicted."""
    from numbaconv.checkpoint import load_checkpoint
    from numbaconv.predict import predict as predict_images
    from numbaconv.predict import read_images, top_k as rank

    try:
        ck = load_checkpoint(checkpoint, backend=backend.value if backend else None)
        found = read_images(images, ck.model.input_dims)
    except ValueError as e:
        raise fail(str(e), 2) from None
    names = ck.data_info.get("class_names") or [str(i) for i in range(ck.model.num_classes)]
    probabilities = None
    if found.names:
        try:
            probabilities = predict_images(ck, found.images, batch_size=batch_size)
        except ValueError as e:
            raise fail(str(e), 2) from None
    ranked = rank(probabilities, names, top_k) if probabilities is not None else []
    if as_json:
        typer.echo(json.dumps({
            "checkpoint": str(checkpoint), "model": ck.model.kind, "class_names": list(names),
            "predictions": [{"image": n, "top_k": [{"class": c, "probability": p} for c, p in r],
                             "probabilities": probabilities[i].tolist()}
                            for i, (n, r) in enumerate(zip(found.names, ranked))],
            "notes": found.notes, "errors": found.errors}))
    else:
        for note in found.notes:
            err_console.print(Text(f"note: {note}"))
        if ranked:
            title_line(console, f"{short_path(checkpoint, max(console.width - 20, 20))} ({ck.model.kind}): "
                                f"top {min(top_k, len(names))} of {len(names)} classes")
            # one row per (image, rank): three columns fit 80 columns whatever the paths
            table = Table()
            table.add_column("image", no_wrap=True)
            table.add_column("class", no_wrap=True)
            table.add_column("probability", justify="right")
            room = max(console.width - 14 - max(len(n) for n in names) - 10, 12)
            for image, r in zip(found.names, ranked):
                for j, (c, p) in enumerate(r):
                    table.add_row(Text(short_path(image, room) if j == 0 else ""), Text(c), f"{p:.4f}",
                                  end_section=j == len(r) - 1)
            console.print(table)
    for line in found.errors:
        err_console.print(Text.assemble(("error:", "bold red"), f" {line}"))
    if found.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(predict)
