"""`numbaconv datasets ...`: import CIFAR-10 into the data home, list and inspect datasets."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text
from rich.table import Table

from ..console import console, fail

datasets_app = typer.Typer(
    help="Get and inspect datasets: CIFAR-10 as HDF5 in the data home ($NUMBACONV_DATA, else datasets/ "
         "of the working copy) and the built-in synthetic set.",
    no_args_is_help=True,
)

# task -> (label, unit): downloads and archive reads count bytes, the HDF5 writer counts images.
_TASKS = {"download": ("downloading", "bytes"), "read": ("reading batches", "bytes"),
          "write": ("writing HDF5", "images")}


class _AmountColumn(ProgressColumn):
    """'12.3/170.5 MB 4 MB/s' for byte tasks, '20,000/50,000 images' for the writer."""

    def render(self, task) -> Text:
        total = f"{task.total:,.0f}" if task.total is not None else "?"
        if task.fields.get("unit") == "images":
            return Text(f"{task.completed:,.0f}/{total} images")
        total = f"{task.total / 1e6:.1f}" if task.total else "?"
        speed = f" {task.speed / 1e6:.0f} MB/s" if task.speed else ""
        return Text(f"{task.completed / 1e6:.1f}/{total} MB{speed}")


class _Bars:
    """Maps the library's progress(task, done, total) calls onto rich progress bars."""

    def __init__(self, progress: Progress):
        self.progress, self.tasks = progress, {}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        if task not in self.tasks:
            label, unit = _TASKS.get(task, (task, "bytes"))
            self.tasks[task] = self.progress.add_task(label, total=total, unit=unit)
        self.progress.update(self.tasks[task], completed=done, total=total)


@datasets_app.command("cifar10")
def cifar10(
    source: Optional[str] = typer.Option(
        None, "--source", help="A local cifar-10-python.tar.gz (or any .tar[.gz] of the same layout), an "
        "extracted cifar-10-batches-py folder, or an http(s) URL. Default: download the official archive "
        "and verify its MD5."),
    out: Optional[Path] = typer.Option(None, "--out", help="HDF5 file to write. Default: cifar10.h5 in the data "
                                       "home ($NUMBACONV_DATA, else datasets/ of the working copy)."),
    md5: Optional[str] = typer.Option(None, "--md5", help="Expected MD5 of the archive or download. Without "
                                      "it, the official download, and a local file with the official name and "
                                      "size, must have the official MD5."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
) -> None:
    """Convert CIFAR-10 (python version) to HDF5: /train/images uint8 (N,3,32,32), /train/labels,
    /test/... when the source has test_batch; the source and its SHA-256 are kept as attributes.
    Offline? Download cifar-10-python.tar.gz elsewhere and pass it with --source. Ctrl-C stops
    the import (exit code 130) and leaves no output file."""
    from numbaconv.data import DatasetError
    from numbaconv.data.cifar import import_cifar10

    columns = (TextColumn("{task.description:<16}"), BarColumn(), TaskProgressColumn(), _AmountColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            result = import_cifar10(source, out, md5=md5, overwrite=force, progress=_Bars(progress))
    except DatasetError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        raise fail("interrupted: the import stopped and wrote nothing", code=130) from None
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    test = f"{result.num_test:,} test images" if result.num_test else "no test split"
    console.print(f"[green]wrote[/] {result.path} ({result.size_bytes / 2**20:.1f} MiB): "
                  f"{result.num_train:,} training images, {test}, in {result.seconds:.1f} s", highlight=False)
    console.print(f"source {result.source} ({result.source_kind}), sha256 {result.sha256}"
                  + (f", md5 verified {result.md5_verified}" if result.md5_verified else ""), highlight=False)


@datasets_app.command("list")
def list_datasets() -> None:
    """List the datasets available: the built-in synthetic set and the HDF5 files in the data home."""
    from numbaconv.data import DatasetError, data_home
    from numbaconv.data.store import describe_h5

    home = data_home()
    if home.exists() and not home.is_dir():
        raise fail(f"the data home {home} is a file, not a folder; move it away or set NUMBACONV_DATA")
    table = Table(title=f"datasets in {home}")
    for col in ("name", "train", "test", "size", "source"):
        table.add_column(col, justify="right" if col in ("train", "test", "size") else "left")
    table.add_row("synthetic", "built-in", "1,000", "-", "generated on the fly (numbaconv.data.synthetic)")
    try:
        paths = sorted(home.glob("*.h5")) if home.is_dir() else []
    except OSError as e:
        raise fail(f"cannot list the data home {home}: {e.strerror}") from None
    for path in paths:
        if path.is_symlink() and not path.exists():
            table.add_row(path.stem, "-", "-", "-", f"[red]dangling link to {os.readlink(path)}: remove it[/]")
            continue
        try:
            size = f"{path.stat().st_size / 2**20:.1f} MiB"
            d = describe_h5(path)
        except OSError as e:
            table.add_row(path.stem, "-", "-", "-", f"[red]unreadable: {e.strerror}[/]")
            continue
        except DatasetError as e:
            table.add_row(path.stem, "-", "-", size, f"[red]unreadable: {e}[/]")
            continue
        test = d["splits"].get("test")
        sha = d["attrs"].get("source_sha256", "")
        table.add_row(path.stem, f"{d['splits']['train']:,}", f"{test:,}" if test else "-", size,
                      f"{d['attrs'].get('source', '?')} (sha256 {sha[:12]}...)")
    console.print(table)


@datasets_app.command("info")
def info(name: str = typer.Argument("synthetic", help="'synthetic', 'cifar10' (from the data home) or the "
                                    "path of an HDF5 file.")) -> None:
    """Check a dataset file and show its splits, per-class counts and provenance; exit 1 if unusable."""
    from numbaconv.data import DatasetError, describe_dataset

    try:
        d = describe_dataset(name)
    except DatasetError as e:
        raise fail(str(e)) from None
    table = Table(title=f"dataset {name}")
    table.add_column("class")
    for split in d["splits"]:
        table.add_column(split, justify="right")
    for k, cname in enumerate(d["class_names"]):
        table.add_row(f"{k} {cname}", *(f"{int(c[k]):,}" for c in d["counts"].values()))
    table.add_row("[bold]total[/]", *(f"[bold]{n:,}[/]" for n in d["splits"].values()))
    console.print(table)
    for key in ("source", "source_kind", "source_sha256", "source_md5"):
        if key in d["attrs"]:
            console.print(f"{key}: {d['attrs'][key]}", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")
