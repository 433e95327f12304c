"""`numbaconv show-data`: the report's Figure 1 (examples per class) or Figure 2 (features)."""
from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from ..choices import Backend
from ..console import console, fail


class DataSplit(str, Enum):
    train = "train"
    test = "test"


def show_data(
    dataset: str = typer.Argument(..., help="synthetic, cifar10 or an HDF5 file written by `numbaconv datasets`."),
    output: Path = typer.Option(..., "-o", "--output", help="PNG to write."),
    per_class: int = typer.Option(8, "--per-class", min=1, max=64, help="Images per class (the first ones of "
                                  "each class in the split, so the figure repeats)."),
    split: DataSplit = typer.Option(DataSplit.train, help="Which split to draw from."),
    features: bool = typer.Option(False, "--features", help="Draw Figure 2 instead: the first image of each "
                                  "class in colour, grayscale and as a Sobel edge map, both computed with "
                                  "numbaconv's own Conv layer."),
    backend: Backend = typer.Option(Backend.cpu, help="Backend whose Conv computes the --features maps."),
) -> None:
    """Look at the data: a grid of example images per class with the class names (the report's
    Figure 1), or with --features their grayscale and edge maps (its Figure 2)."""
    import numpy as np

    from numbaconv.plots import plot_examples, plot_features
    from numbaconv.data import raw_split

    try:
        X, y, class_names, source = raw_split(dataset, split.value)
        if features:
            first = [int(np.flatnonzero(y == c)[0]) for c in range(len(class_names)) if np.any(y == c)]
            plot_features(X[first], [class_names[int(y[i])] for i in first], output, backend=backend.value,
                          title=f"grayscale and Sobel edges ({Path(source).name}, {split.value})")
        else:
            plot_examples(X, y, class_names, output, per_class=per_class,
                          title=f"{Path(source).name}: {split.value} split, {len(y)} images")
    except ValueError as e:
        raise fail(str(e), 2) from None
    except OSError as e:
        raise fail(f"cannot write {output}: {e.strerror or e}", 1) from None
    console.print(f"wrote {output}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("show-data")(show_data)
