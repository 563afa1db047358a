"""Model soups in the tables: what a soup is made of (``SoupRecord``, from its config's ``soup``
record, ``jobs.soup.soup_record``) and which soup of each family a group's table shows
(``fold_soups``). A soup family is the soups of one family name and one set of ingredients
(``SoupRecord.key``): the soups a grid's ``soups:`` entry makes from one seed's models. Their
curves along the weights are ``analysis.soup_curves``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the table's rows are metrics', which folds its soups with this module
    from analysis.metrics import TableRow


@dataclass(frozen=True)
class SoupRecord:
    """What a soup is made of (``jobs.soup.soup_record``'s ``soup``): its family (the grid's soup
    name), the ingredients' model ids and labels, and the weight of each, in the same order."""

    family: str
    ingredients: tuple[str, ...]
    labels: tuple[str, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(cls, value: object) -> SoupRecord | None:
        """The record of a config's ``soup`` entry; None when it is absent or malformed."""
        if not isinstance(value, dict):
            return None
        ingredients = value.get("ingredients")
        weights = value.get("weights")
        if not isinstance(ingredients, list) or not isinstance(weights, list):
            return None
        if len(ingredients) != len(weights) or len(ingredients) < 2:
            return None
        if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
            return None
        labels = value.get("labels")
        if not isinstance(labels, list) or len(labels) != len(ingredients):
            labels = ingredients
        return cls(family=str(value.get("family") or "soup"),
                   ingredients=tuple(str(i) for i in ingredients),
                   labels=tuple(str(x) for x in labels),
                   weights=tuple(float(w) for w in weights))

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """Soups of one family and one set of ingredients lie on one curve."""
        return (self.family, self.ingredients)


def _soup_rank(row: TableRow) -> tuple[float, float]:
    """Union accuracy, then clean (-1 where a column has no estimate)."""
    union, clean = (row.cells[c].estimate for c in ("union", "clean"))
    return (union.value if union is not None else -1.0,
            clean.value if clean is not None else -1.0)


def fold_soups(rows: list[TableRow]) -> tuple[list[TableRow], list[TableRow]]:
    """(the rows shown, the soups folded away): of each soup family (one family and one set of
    ingredients) only its best soup stays, highest union accuracy first, then clean accuracy
    (then the row order); with several soups its display says "best of N"."""
    families: dict[tuple[str, tuple[str, ...]], list[TableRow]] = {}
    for r in rows:
        soup = r.model.soup
        if soup is not None:
            families.setdefault(soup.key, []).append(r)
    hidden: list[TableRow] = []
    for members in families.values():
        best = max(members, key=_soup_rank)
        if len(members) > 1:
            best.best_of = len(members)
            best.display = f"{best.display}, best of {len(members)}"
        hidden += [r for r in members if r is not best]
    gone = {id(r) for r in hidden}
    return [r for r in rows if id(r) not in gone], hidden
