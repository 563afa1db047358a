"""One module per CLI area; each imports its heavy dependencies (torch, ray) inside the command."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


def progress_bars(console: Console, *, info: bool = False) -> Progress:
    """The commands' rich progress bars: description, bar, done/total, elapsed time (and, with
    ``info``, a free text field ``info`` before the time)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, TimeElapsedColumn(), console=console)
