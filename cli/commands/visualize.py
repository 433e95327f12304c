"""`numbaconv visualize-filters`: the first conv layer's filters of a checkpoint as a PNG."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..console import console, fail


def visualize_filters(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (best.h5 or last.h5 of a run)."),
    output: Path = typer.Option(Path("filters.png"), "-o", "--output", help="PNG to write."),
) -> None:
    """Draw the first conv layer's filters as a grid of colour tiles, each normalised to [0, 1] on its own."""
    from numbaconv.checkpoint import load_checkpoint
    from numbaconv.plots import plot_filters

    try:
        ck = load_checkpoint(checkpoint)
        w = ck.model.params.get("W1")
        if w is None or w.ndim != 4:
            raise ValueError(f"the model's W1 is not a conv weight (F, C, K, K): {getattr(w, 'shape', None)}")
        out = plot_filters(w, output, title=f"first-layer filters of {checkpoint.name} ({ck.model.kind})")
    except (OSError, ValueError) as e:
        raise fail(f"cannot visualize {checkpoint}: {e}", 2) from None
    t = Table(title=str(checkpoint), show_header=False)
    t.add_row("filters", "x".join(map(str, w.shape)))
    t.add_row("weight range", f"[{float(w.min()):.4g}, {float(w.max()):.4g}]")
    t.add_row("figure", str(out))
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("visualize-filters")(visualize_filters)
