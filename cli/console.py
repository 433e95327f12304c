"""Shared rich console helpers for the CLI commands."""
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one clear error line and return the Exit to raise."""
    import typer

    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)
