"""Tables that read well in any terminal, 80 columns included.

Rich wraps a cell at spaces while the columns' longest words fit; once they do not,
it folds words mid-way. So: long titles go above the table as their own line, paths
are shortened from the left to the room there is, and each command keeps its columns
few and its cells short enough that the longest words fit in 80 columns.
"""
from __future__ import annotations

from pathlib import Path


def short_path(path, width: int) -> str:
    """``path`` as is if it fits in ``width`` characters, else its last components
    behind "…/" (the file name is what tells files apart), cut to ``width`` at worst."""
    s = str(path)
    if len(s) <= width:
        return s
    parts = Path(s).parts
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(tail) + 2 > width:
            break
        tail = f"{part}/{tail}"
    s = f"…/{tail}"
    return s if len(s) <= width else "…" + s[-(width - 1):]


def title_line(console, text: str) -> None:
    """A table's title as a bold line above it (wrapped at spaces, never inside the table)."""
    from rich.text import Text

    console.print(Text(text, style="bold"))   # Text, not markup: a path may hold "[" 
