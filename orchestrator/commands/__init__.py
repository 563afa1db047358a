"""One module per CLI area; each imports its heavy dependencies (torch, ray) inside the command."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click

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


#: The devices a command runs torch on (``jobs.training.resolve_device`` takes the same).
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
#: ctx.meta key: what an interrupted command says about continuing (``orchestrator.cli``)
RESUME_HINT = "mpo.resume_hint"


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not DEVICE_RE.match(value):
        raise click.BadParameter(f"{value!r} is not a device; allowed: auto (cuda when available), "
                                 "cpu, cuda, cuda:N, mps")
    return value


#: ``--device`` of the commands that run torch in this process, checked before any work
DEVICE_OPTION = click.option("--device", default="auto", show_default=True, callback=_device,
                             help="auto (cuda when available), cpu, cuda, cuda:N or mps.")


def set_resume_hint(ctx: click.Context, hint: str) -> None:
    """What to tell the user if Ctrl+C interrupts the command from now on."""
    ctx.find_root().meta[RESUME_HINT] = hint


def resume_hint(ctx: click.Context | Any) -> str | None:
    return ctx.find_root().meta.get(RESUME_HINT) if isinstance(ctx, click.Context) else None
