"""Shared rich console helpers for the CLI commands."""
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one clear error line (``message`` is plain text) and return the Exit to raise."""
    import typer

    # soft_wrap: the message stays one line (a terminal wraps it visually; a log or a pipe
    # gets it whole), however narrow the console rich detects.
    # The message is text, not markup: escaped here, so '[grid]' or a path with brackets survives.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)
