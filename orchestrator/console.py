"""How the CLI writes: rich on a terminal, plain full-width lines anywhere else, and tables that
fit the terminal without breaking a number or an id.

On a terminal rich wraps at the terminal's width. Written to a file, a pipe, a CI log or nohup,
rich would assume 80 columns and fold every table to that ("grou ps", "epoc h"); the consoles
made here are as wide as their content there instead (``PLAIN_WIDTH``), print no colour codes,
and ``orchestrator.progress`` prints one line per trial event in place of the live table.

``fitted_table`` builds a rich Table from column specs (``Col``): numbers, labels and ids never
wrap; on a terminal too narrow for every column, the least important columns are left out (each
column says how soon; the caption names them), then ids are shortened with an ellipsis; text
columns (descriptions, lists) wrap at spaces.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

#: the width of a console that is not a terminal: lines as long as their content
PLAIN_WIDTH = 4096
#: the narrowest an id is shortened to (with an ellipsis) before the table overflows
ID_MIN = 12

Kind = Literal["label", "num", "id", "text"]


def make_console(*, stderr: bool = False) -> Console:
    """A rich Console on stdout (stderr): the terminal's width on a terminal; otherwise (a file,
    a pipe, a CI log) ``PLAIN_WIDTH`` wide, so that tables and lines are never folded to 80."""
    console = Console(stderr=stderr)
    if console.is_terminal or console.is_jupyter:
        return console
    return Console(stderr=stderr, width=PLAIN_WIDTH)


def log_line(console: Console, message: str) -> None:
    """A timestamped progress line: rich's log on a terminal; in a file or a pipe one plain
    line (rich's log would pad it to ``PLAIN_WIDTH`` with spaces)."""
    if console.is_terminal:
        console.log(message)
    else:
        console.print(f"[{time.strftime('%H:%M:%S')}] {message}", markup=False, highlight=False,
                      soft_wrap=True)


@dataclass(frozen=True)
class Col:
    """One column of a ``fitted_table``.

    ``kind``: ``label`` (never wraps), ``num`` (right-aligned, never wraps), ``id`` (never wraps;
    shortened with an ellipsis as the last resort), ``text`` (wraps at spaces, never inside a
    word). ``drop``: 0 = always shown; otherwise, on a terminal too narrow for the table, the
    columns with the larger ``drop`` are left out first."""

    header: str
    kind: Kind = "label"
    drop: int = 0


def _cell_width(cell: str, kind: Kind) -> int:
    """The least width a cell needs: its longest line, or, for text, its longest word."""
    lines = Text.from_markup(cell).plain.splitlines() or [""]
    if kind == "text":
        return max((cell_len(w) for line in lines for w in line.split()), default=0)
    return max(cell_len(line) for line in lines)


def column_needs(cols: Sequence[Col], rows: Sequence[Sequence[str]]) -> list[int]:
    """Each column's least content width (header included)."""
    return [max([_cell_width(c.header, c.kind), *(_cell_width(r[i], c.kind) for r in rows)])
            for i, c in enumerate(cols)]


def table_width(needs: Sequence[int]) -> int:
    """The width of a boxed table with these content widths: each column has one space of
    padding on each side and one border, plus the closing border."""
    return sum(needs) + 3 * len(needs) + 1


def fitted_table(cols: Sequence[Col], rows: Sequence[Sequence[str]], *, width: int,
                 title: str = "", note_dropped: bool = True, **table_kwargs: Any) -> Table:
    """A Table of ``rows`` (cells as rich markup) that fits ``width`` without folding a number,
    a label or an id: the columns with the largest ``drop`` are left out until it fits (the
    caption names them), then ids are shortened with an ellipsis."""
    needs = column_needs(cols, rows)
    keep = list(range(len(cols)))
    for i in sorted((i for i, c in enumerate(cols) if c.drop), key=lambda i: -cols[i].drop):
        if table_width([needs[k] for k in keep]) <= width:
            break
        keep.remove(i)
    excess = table_width([needs[k] for k in keep]) - width
    max_width: dict[int, int] = {}
    for i in keep:
        if excess > 0 and cols[i].kind == "id" and needs[i] > ID_MIN:
            cut = min(excess, needs[i] - ID_MIN)
            max_width[i], excess = needs[i] - cut, excess - cut
    dropped = [c.header for i, c in enumerate(cols) if i not in keep]
    if dropped and note_dropped and "caption" not in table_kwargs:
        table_kwargs["caption"] = (f"left out at this terminal width: {', '.join(dropped)} "
                                   "(a wider terminal, or a file, shows them)")
    table = Table(title=title or None, **table_kwargs)
    for i in keep:
        c = cols[i]
        table.add_column(c.header, justify="right" if c.kind == "num" else "left",
                         no_wrap=c.kind != "text",
                         overflow="fold" if c.kind == "text" else "ellipsis",
                         max_width=max_width.get(i))
    for r in rows:
        table.add_row(*(r[i] for i in keep))
    return table


def print_table(console: Console, cols: Sequence[Col], rows: Sequence[Sequence[str]], *,
                title: str = "", **table_kwargs: Any) -> None:
    """``fitted_table`` at the console's width, printed."""
    console.print(fitted_table(cols, rows, width=console.width, title=title, **table_kwargs))


def joined(parts: Sequence[str], console: Console) -> str:
    """Parts of one cell (a result per group): a line each on a terminal, where the table must
    fit; one line in a file, where a row is best kept to one line."""
    return ("\n" if console.is_terminal else "  ").join(parts)
