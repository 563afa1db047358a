"""The report's document model: blocks (headings, paragraphs, bullets, tables, images) that
``analysis.document`` lays out and ``analysis.render`` writes as Markdown, LaTeX, HTML or rich
console tables, and the cell formats they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analysis.stats import Estimate, fmt_pct

# --------------------------------------------------------------------------------------------
# Document model


@dataclass(frozen=True)
class TCell:
    """A table cell: main text, optional confidence interval, bold, marks and a hover title."""

    text: str
    ci: str = ""
    bold: bool = False
    marks: str = ""
    flagged: bool = False
    title: str = ""


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[TCell]]
    key: str = ""


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str


@dataclass(frozen=True)
class Pre:
    text: str


Block = Heading | Para | Bullets | Image | Pre | Table


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)


def fmt_ci(e: Estimate) -> str:
    """The Wilson 95% interval of ``e`` in percent: "[low, high]"."""
    return f"[{fmt_pct(100 * e.low)}, {fmt_pct(100 * e.high)}]"
