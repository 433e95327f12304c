"""Entry point of the ``numbaconv`` console script.

Each command lives in its own module under ``commands/`` and registers itself
with ``register(app)``; this file only lists them.
"""
import typer

from .commands import (bench, datasets, evaluate, experiment, export, gradcheck, plot, predict, show_data, sweep,
                       train, visualize)

app = typer.Typer(
    name="numbaconv",
    help="A hand-written CNN library for CIFAR-10: reference, Numba CPU and CUDA backends.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstrings reflow: line breaks in source are not line breaks on screen
)



def _print_version(value: bool) -> None:
    if value:
        from numbaconv import __version__

        typer.echo(f"numbaconv {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """numbaconv: build, check, benchmark and train convnets on CIFAR-10."""


for module in (gradcheck, datasets, bench, train, evaluate, predict, export, show_data, plot, visualize, experiment, sweep):
    module.register(app)


if __name__ == "__main__":
    app()
