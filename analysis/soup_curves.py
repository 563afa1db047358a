"""Model soups along their weights: per group and soup family, each soup's clean, per-family and
union accuracy at its mixture, with the ingredients' own results at the ends.

A soup family is the soups of one family name and one set of ingredients (``SoupRecord.key``,
``analysis.soups``). Its curve is ordered by the first ingredient's weight, falling (ties: by
the next ingredients' weights), so that with two ingredients it runs from the first ingredient alone (weight 1) through the soups to the second
alone (weight 0); with more, points at one weight of the first ingredient are different
mixtures of the others. Every point is computed as the tables are (``metrics.per_input`` at the
full budget, on the inputs every attack of the group evaluated), from the table's own scores
where the model is one of the group's; the group's table shows only each family's best soup
(``soups.fold_soups``).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from analysis.loading import ResultSet
from analysis.metrics import GroupTable, TableRow, estimate, per_input
from analysis.soups import SoupRecord
from analysis.stats import Estimate


@dataclass(frozen=True)
class SoupPoint:
    """One model on a soup curve: a soup, or an ingredient alone (weight 1 on it)."""

    model_id: str
    label: str
    weights: tuple[float, ...]
    ingredient: bool
    #: accuracy per column of the curve (clean, each family, union) that has results
    accuracy: dict[str, Estimate]

    @property
    def x(self) -> float:
        """The first ingredient's weight."""
        return self.weights[0]


@dataclass
class SoupCurve:
    """The soups of one family of a group, with their ingredients at the ends."""

    group: str
    family: str
    ingredients: tuple[str, ...]
    labels: tuple[str, ...]
    #: "clean", the group's families, "union"
    columns: tuple[str, ...]
    #: by the first ingredient's weight, falling (see the module's docstring)
    points: list[SoupPoint]
    #: the soup the group's table shows (its family's best)
    best: str
    #: the family's name in file names, unique within the group
    name: str

    @property
    def soups(self) -> list[SoupPoint]:
        return [p for p in self.points if not p.ingredient]


def _accuracy(scores: pd.DataFrame, columns: tuple[str, ...]) -> dict[str, Estimate]:
    if scores.empty:
        return {}
    return {c: estimate(scores[c]) for c in columns if c in scores}


def _file_name(family: str, ingredients: tuple[str, ...], repeated: bool) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", family)
    if repeated:  # the same family name over other ingredients (another seed)
        name += "_" + hashlib.sha256("\n".join(ingredients).encode()).hexdigest()[:8]
    return name


def _ingredient_points(rs: ResultSet, table: GroupTable, soup: SoupRecord,
                       columns: tuple[str, ...], notes: list[str]) -> list[SoupPoint]:
    out = []
    for i, (mid, label) in enumerate(zip(soup.ingredients, soup.labels, strict=True)):
        scores = table.scores.get(mid)
        if scores is None:  # an ingredient that is not one of the group's models
            scores = per_input(rs.rows, mid, table.families)
        model = rs.models.get(mid)
        name = model.label if model is not None else label
        accuracy = _accuracy(scores, columns)
        if not accuracy:
            notes.append(f"group {table.group}: soup {soup.family}: ingredient {name} has no "
                         f"results for {', '.join(table.families)}; its end of the curve is "
                         "left out")
            continue
        weights = tuple(1.0 if j == i else 0.0 for j in range(len(soup.ingredients)))
        out.append(SoupPoint(mid, name, weights, True, accuracy))
    return out


def soup_curves(rs: ResultSet, table: GroupTable) -> tuple[list[SoupCurve], list[str]]:
    """The curve of each soup family of ``table`` (its shown and folded soups), and notes on
    what is left out."""
    families: dict[tuple[str, tuple[str, ...]], list[TableRow]] = {}
    for r in table.all_rows:
        soup = r.model.soup
        if soup is not None:
            families.setdefault(soup.key, []).append(r)
    shown = {r.model.model_id for r in table.rows}
    repeated = Counter(family for family, _ in families)
    columns = ("clean", *table.families, "union")
    curves, notes = [], []
    for (family, ingredients), rows in sorted(families.items()):
        soup = rows[0].model.soup
        assert soup is not None
        points = _ingredient_points(rs, table, soup, columns, notes)
        for r in rows:
            weights = r.model.soup.weights if r.model.soup is not None else soup.weights
            points.append(SoupPoint(r.model.model_id, r.model.label, weights, False,
                                    _accuracy(table.scores[r.model.model_id], columns)))
        points.sort(key=lambda p: p.weights, reverse=True)
        best = next(r.model.model_id for r in rows if r.model.model_id in shown)
        curves.append(SoupCurve(group=table.group, family=family, ingredients=ingredients,
                                labels=soup.labels, columns=columns, points=points, best=best,
                                name=_file_name(family, ingredients, repeated[family] > 1)))
    return curves, notes
