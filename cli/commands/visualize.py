"""`numbaconv visualize-filters`: what a checkpoint's first layer looks for in the image, as a PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..console import console, fail


def visualize_filters(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (best.h5 or last.h5 of a run)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="PNG to write (default: beside the checkpoint, NAME-filters.png)."),
) -> None:
    """Draw the first conv layer's filters as a grid of colour tiles, each normalised to [0, 1] on its own.

    For a model with a fixed whitening stem (the fast recipe), draws the stem's filters and
    the first trained conv projected through the stem onto the pixels, side by side.
    """
    from numbaconv.checkpoint import load_checkpoint
    from numbaconv.plots import input_filters, plot_filters

    output = output or checkpoint.with_name(f"{checkpoint.stem}-filters.png")
    try:
        ck = load_checkpoint(checkpoint, backend="reference")   # only the weights are drawn: no GPU needed
        panels = input_filters(ck.model)
        out = plot_filters(panels if len(panels) > 1 else panels[0][1], output,
                           title=f"{panels[0][0] if len(panels) == 1 else 'filters'} of {checkpoint.name} "
                                 f"({ck.model.kind})")
    except (OSError, ValueError) as e:
        raise fail(f"cannot visualize {checkpoint}: {e}", 2) from None
    t = Table(title=str(checkpoint), show_header=False)
    for label, w in panels:
        t.add_row(label.split(":")[0].split(" (")[0], f"{'x'.join(map(str, w.shape))}, "
                  f"range [{float(w.min()):.4g}, {float(w.max()):.4g}]")
    t.add_row("figure", str(out))
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("visualize-filters")(visualize_filters)
