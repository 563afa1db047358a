"""The published numbers (``paper_results.yaml``) and the "paper vs this run" comparison."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from analysis.metrics import AffineRow, GroupTable
from jobs.errors import MpoError
from jobs.io import load_yaml

#: The published numbers, shipped as package data next to this module.
PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")


@lru_cache(maxsize=1)
def paper_results() -> dict[str, Any]:
    """The parsed ``analysis/paper_results.yaml`` (tables, affine, source).

    A researcher may add published tables to it, so a broken file is an input error."""
    data = load_yaml(PAPER_RESULTS, what="published numbers")
    for key in ("source", "tables", "affine"):
        if not isinstance(data, dict) or key not in data:
            raise MpoError(f"{PAPER_RESULTS}: missing top-level key '{key}'")
    return data


@dataclass(frozen=True)
class Comparison:
    """One published number beside this run's (both in percent)."""

    table: str
    group: str
    model: str
    column: str
    paper: float
    run: float | None

    @property
    def difference(self) -> float | None:
        return None if self.run is None or math.isnan(self.run) else self.run - self.paper


def match_table(dataset: str, families: tuple[str, ...] | list[str]) -> dict[str, Any] | None:
    """The paper's table for a run group with this dataset and set of families, if any."""
    for table in paper_results()["tables"]:
        if table["dataset"] == dataset and set(table["families"]) == set(families):
            return table
    return None


def budget_notes(table: GroupTable, epsilon: dict[str, float]) -> list[str]:
    """Say where the run's full budgets differ from the paper's for the matched table."""
    ref = match_table(table.dataset, table.families)
    if ref is None:
        return []
    notes = []
    for fam, eps in ref.get("epsilon", {}).items():
        mine = epsilon.get(fam)
        if mine is not None and not math.isnan(mine) and not math.isclose(mine, eps, rel_tol=1e-3):
            notes.append(f"{table.group}: this run's {fam} budget is {mine:g}, the paper's {eps:g}")
    return notes


def compare(tables: list[GroupTable], affine: list[AffineRow]) -> list[Comparison]:
    """Pair every published number with this run's for the groups that match a paper table.

    With several models of one label (seeds), each is compared; OPT rows use the OPT bounds.
    """
    out: list[Comparison] = []
    for table in tables:
        ref = match_table(table.dataset, table.families)
        if ref is None:
            continue
        for label, cols in ref["rows"].items():
            for col, value in cols.items():
                if label == "OPT":
                    run = {"union": table.opt.union, "average": table.opt.average}.get(col)
                    out.append(Comparison(ref["name"], table.group, "OPT", col, float(value),
                                          None if run is None else 100.0 * run))
                    continue
                matches = [r for r in table.rows if r.model.label == label]
                for row in matches or [None]:
                    cell = row.cells.get(col) if row is not None else None
                    run = cell.estimate.percent if cell and cell.estimate else None
                    out.append(Comparison(ref["name"], table.group,
                                          row.display if row else label, col, float(value), run))
    datasets = {t.group: t.dataset for t in tables}
    for ref in paper_results()["affine"]:
        rows = [a for a in affine
                if a.affine_family == ref["family"] and datasets.get(a.group) == ref["dataset"]]
        for label, cols in ref["rows"].items():
            for row in (a for a in rows if a.display.split(" (")[0] == label):
                for col, value in cols.items():
                    # The paper's affine set holds both components (beta = 0 and 1), so its
                    # accuracy is against the union and the affine attacks together.
                    est = row.union if col == "union" else row.union_and_affine
                    out.append(Comparison(ref["name"], row.group, row.display, col,
                                          float(value), est.percent))
    return out
