"""Robustness curves: each model's accuracy as the radius grows, per family and for the union,
the area under each curve, and MultiRobustBench's competitive robustness.

Definitions (per group, on the per-example rows only):

- a family's curve: the clean accuracy at radius 0, then, at each budget point the group's rows
  have for the family, the accuracy against the worst case over the family's attacks at that
  point, per input (the same ``per_input`` as the tables, so the full-budget point is the table's
  family column). x is the radius for l_p families, the fraction of the full budget otherwise;
- the union's curve: robust to every family of the group, at the budget fractions every family
  has (x: the fraction), from the clean point at 0;
- area: the trapezoid over the curve's x range divided by its length, i.e. the mean accuracy
  over the range. It is the mean over inputs of each input's own area (on the inputs every point
  evaluated), so it carries a Wilson interval like the average column; it is given only for
  models evaluated at every point the group has, so areas compare like with like;
- CR_ind-avg and CR_ind-worst (Dai et al., ICML 2023, ``metrics.py`` of multirobustbench): over
  the clean point and every (family, budget) point of the group, the ratio of the model's
  accuracy to the reference's at that point; 100 x their mean and 100 x their minimum. The
  reference at a family's points is the group's single-perturbation model trained on that family
  (the one OPT uses when there are several); at the clean point, the best clean accuracy among
  the references. Points where the reference's accuracy is 0 have no ratio and are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.loading import ResultSet
from analysis.metrics import FULL_BUDGET, GroupTable, budget_points, estimate, per_input
from analysis.stats import Estimate

RADIUS = "radius"
BUDGET = "budget"
UNION = "union"
_DECIMALS = 6


@dataclass(frozen=True)
class Curve:
    """Accuracy against one family (or the union) at growing radii, from the clean point."""

    family: str
    axis: str
    #: (x, accuracy), x ascending; the first point is the clean accuracy at x = 0
    points: tuple[tuple[float, Estimate], ...]
    #: the budget fraction of each point (0.0 for the clean point)
    budgets: tuple[float, ...]
    area: Estimate | None = None

    def at(self, budget: float) -> Estimate | None:
        """The accuracy at a budget fraction (0.0: clean), None when the curve has no such
        point."""
        for b, (_, e) in zip(self.budgets, self.points, strict=True):
            if math.isclose(b, budget, abs_tol=10 ** -_DECIMALS):
                return e
        return None


@dataclass
class ModelCurves:
    model_id: str
    display: str
    curves: dict[str, Curve]
    cr_avg: float | None = None
    cr_worst: float | None = None


@dataclass
class GroupCurves:
    """The robustness curves of a group's models, their areas and CR figures."""

    group: str
    #: the curves shown: the group's families, then "union", that have a point besides the
    #: full budget (``ModelCurves.curves`` has every family and the union, for CR_ind)
    columns: tuple[str, ...]
    #: the budget points (beyond the clean one) the group's rows have, per family and union
    budgets: dict[str, tuple[float, ...]]
    #: per family and union: what x is (``RADIUS`` or ``BUDGET``), its value at each budget
    axes: dict[str, str]
    xs: dict[str, tuple[float, ...]]
    models: list[ModelCurves]
    #: family -> display name of the CR reference model
    references: dict[str, str]
    reduced: bool
    notes: list[str] = field(default_factory=list)


def _radius(rows: pd.DataFrame, family: str, budget: float) -> float:
    at = rows[(rows["family"] == family)
              & np.isclose(rows["budget"].to_numpy(dtype=float), budget, atol=1e-9)]
    return float(at["epsilon"].median()) if len(at) else math.nan


def area(xs: list[float], outcomes: list[pd.Series]) -> Estimate | None:
    """Mean accuracy over [xs[0], xs[-1]] (trapezoid / length), as the mean of each input's own
    area over the inputs every point has; None with fewer than two distinct x."""
    if len(xs) < 2 or not xs[-1] > xs[0]:
        return None
    common = outcomes[0].index
    for s in outcomes[1:]:
        common = common.intersection(s.index)
    mat = np.stack([s.loc[common].to_numpy(dtype=float) for s in outcomes], axis=1)
    per_input = ((mat[:, 1:] + mat[:, :-1]) / 2 * np.diff(xs)).sum(axis=1) / (xs[-1] - xs[0])
    return Estimate(k=float(per_input.sum()), n=len(common))


def _curve(family: str, axis: str, xs: list[float], budgets: list[float],
           outcomes: list[pd.Series], complete: bool) -> Curve:
    return Curve(family=family, axis=axis,
                 points=tuple((x, estimate(s)) for x, s in zip(xs, outcomes, strict=True)),
                 budgets=tuple(budgets),
                 area=area(xs, outcomes) if complete else None)


def group_curves(rs: ResultSet, table: GroupTable) -> GroupCurves | None:
    """The curves of every model of ``table`` (None when the group has no rows at any budget
    other than the full one: a curve needs radii)."""
    g = rs.groups[table.group]
    rows = rs.rows[rs.rows["model_id"].isin(g.models) & rs.rows["family"].isin(g.families)]
    budgets = [b for b in budget_points(rows) if b > 0]
    if not any(not math.isclose(b, FULL_BUDGET) for b in budgets):
        return None
    axis = {f: RADIUS if math.isfinite(_radius(rows, f, FULL_BUDGET)) else BUDGET
            for f in g.families}
    xs = {(f, b): _radius(rows, f, b) if axis[f] == RADIUS else b
          for f in g.families for b in budgets}
    outcomes = {r.model.model_id: _outcomes(rows, r.model.model_id, g.families, budgets)
                for r in table.rows}
    every = [*g.families, UNION]
    have = {c: tuple(sorted({b for o in outcomes.values() for b in o.get(c, {})})) for c in every}
    axes = {**axis, UNION: BUDGET}
    # A column is a curve when it has a point besides the full budget; every family's points
    # count for CR_ind all the same.
    columns = tuple(c for c in every if any(not math.isclose(b, FULL_BUDGET) for b in have[c]))
    out = GroupCurves(group=table.group, columns=columns, budgets=have, axes=axes,
                      xs={c: tuple(b if c == UNION else xs[c, b] for b in have[c])
                          for c in every},
                      models=[], references={},
                      reduced=any(s.reduced for s in rs.group_suites(table.group)))
    short: dict[str, list[str]] = {}  # model -> the columns it lacks points of
    for r in table.rows:
        per = outcomes[r.model.model_id]
        clean = table.scores[r.model.model_id]["clean"]
        curves = {}
        for c in every:
            points = per.get(c, {})
            complete = tuple(points) == have[c]
            if not complete and c in columns:
                short.setdefault(r.display, []).append(c)
            curves[c] = _curve(c, axes[c], [0.0, *(b if c == UNION else xs[c, b] for b in points)],
                               [0.0, *points], [clean, *points.values()], complete)
        out.models.append(ModelCurves(r.model.model_id, r.display, curves))
    by_columns: dict[tuple[str, ...], list[str]] = {}
    for name, lacking in short.items():
        by_columns.setdefault(tuple(lacking), []).append(name)
    for lacking, names in by_columns.items():
        out.notes.append(f"group {table.group}: no area under the {', '.join(lacking)} "
                         f"curve{'s' if len(lacking) > 1 else ''} for {', '.join(names)} "
                         "(not evaluated at every point of the group)")
    _competitive(out, table, g.families)
    return out


def _outcomes(rows: pd.DataFrame, model_id: str, families: tuple[str, ...],
              budgets: list[float]) -> dict[str, dict[float, pd.Series]]:
    """Per family and the union: {budget: per-input robust outcomes} at each budget the model
    has, on the inputs every attack of the group at that budget evaluated (as the tables)."""
    mine = rows[rows["model_id"] == model_id]
    out: dict[str, dict[float, pd.Series]] = {}
    for b in budgets:
        df = per_input(mine, model_id, families, budget=b)
        for c in (*families, UNION):
            if c in df and len(df):
                out.setdefault(c, {})[b] = df[c]
    return out


def _competitive(out: GroupCurves, table: GroupTable, families: tuple[str, ...]) -> None:
    """CR_ind-avg and CR_ind-worst of each model against the group's single-perturbation
    models (``table.opt``'s), or a note saying why there are none."""
    missing = [f for f in families if f not in table.opt.per_family]
    if missing:
        out.notes.append(f"group {out.group}: no CR_ind figures: no single-perturbation model "
                         f"trained on {', '.join(missing)} to serve as the reference")
        return
    by_id = {m.model_id: m for m in out.models}
    refs = {f: by_id[mid] for f, (mid, _) in table.opt.per_family.items()}
    out.references = {f: m.display for f, m in refs.items()}
    clean_ref = max(m.curves[families[0]].points[0][1].value for m in refs.values())
    left_out = set() if clean_ref else {"clean"}
    for model in out.models:
        ratios = [model.curves[families[0]].points[0][1].value / clean_ref] if clean_ref else []
        complete = True
        for f in families:
            for b in out.budgets[f]:
                mine, ref = model.curves[f].at(b), refs[f].curves[f].at(b)
                if mine is None or ref is None:
                    complete = False
                elif ref.value > 0:
                    ratios.append(mine.value / ref.value)
                else:
                    left_out.add(f"{f} at {b:g} of the budget")
        if complete and ratios:
            model.cr_avg = 100 * float(np.mean(ratios))
            model.cr_worst = 100 * float(np.min(ratios))
    lacking = [m.display for m in out.models if m.cr_avg is None]
    if lacking:
        out.notes.append(f"group {out.group}: no CR_ind figures for {', '.join(lacking)} "
                         "(it or its reference is not evaluated at every point of the group)")
    if left_out:
        out.notes.append(f"group {out.group}: CR_ind leaves out the points where the reference's "
                         f"accuracy is 0 ({', '.join(sorted(left_out))})")
