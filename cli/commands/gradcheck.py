"""`numbaconv gradcheck`: every layer's backward against numeric gradients."""

import typer
from rich.table import Table

from ..choices import Backend, DType
from ..console import console, fail


def gradcheck(
    backend: Backend = typer.Option(Backend.reference, help="Backend whose layers are checked."),
    dtype: DType = typer.Option(DType.float64, help="float64 uses the assignment's thresholds; float32 is "
                                "compared with a float64 numeric gradient at 1e-3."),
    seed: int = typer.Option(0, help="Seed for the random inputs (an integer >= 0)."),
) -> None:
    """Check every layer's and sandwich layer's backward pass against numeric gradients.

    Small random inputs; the numeric gradients are centered differences through the
    reference backend (the spec) in float64. Exits with code 1 if any check fails.
    """
    from numbaconv.gradcheck import check_backend

    try:
        with console.status(f"checking {backend.value} layers in {dtype.value}..."):
            results = check_backend(backend.value, dtype.value, seed)
    except ValueError as e:   # a bad seed, or a backend that cannot run here
        raise fail(str(e), 2) from None
    table = Table(title=f"gradient check: backend={backend.value} dtype={dtype.value} seed={seed}")
    for col, justify in (("layer", "left"), ("gradient", "left"), ("relative error", "right"),
                         ("threshold", "right"), ("result", "center")):
        table.add_column(col, justify=justify)
    for r in results:
        verdict = "[green]pass[/]" if r.passed else "[bold red]FAIL[/]"
        table.add_row(r.layer, r.gradient, f"{r.error:.2e}", f"{r.threshold:.0e}", verdict)
    console.print(table)
    failed = [r for r in results if not r.passed]
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(results)} gradient checks failed[/]")
        raise typer.Exit(1)
    console.print(f"[green]all {len(results)} gradient checks passed[/]")


def register(app: typer.Typer) -> None:
    app.command()(gradcheck)
