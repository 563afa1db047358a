"""Robustness metrics computed from per-example rows only.

Definitions (all per model, on the inputs every relevant attack evaluated):

- robust to a family: clean-correct and no attack of that family (rows with ``budget == 1``)
  fooled the input: the worst case over the family's attacks, per input;
- union accuracy (1 - R_max): robust to every family of the group, per input;
- average accuracy (1 - R_avg): the mean of the per-family accuracies;
- OPT: from the single-perturbation models, each on its own family:
  OPT(R_max) = max_i R_i and OPT(R_avg) = mean_i R_i (reported as accuracies);
- bold: not significantly below the column's best model (two-sided exact McNemar test on the
  paired per-input outcomes, alpha 0.05; the exact sign test on per-input scores for the
  average column, which is McNemar's test generalised to scores in [0, 1]);
- gradient masking: gradient-free or grid attacks fool significantly more clean-correct inputs
  than the family's first-order attacks (one-sided exact binomial test on the inputs only one
  side fooled, alpha 0.05);
- train cost: ``analysis.costs``; soups: each soup family's best only (``analysis.soups``), the
  others kept aside (``GroupTable.hidden``) for the soup curves and Theorem 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact

from analysis.costs import TOTAL, train_costs
from analysis.loading import ModelInfo, ResultSet, short_id
from analysis.soups import fold_soups
from analysis.stats import ALPHA, Estimate, binomial_one_sided, paired_sign_test

FULL_BUDGET = 1.0
FIRST_ORDER = "first-order"
EXACT = "exact"  # solves an affine model's worst case: outdoing first-order is no masking
_BUDGET_DECIMALS = 6


def _at_budget(rows: pd.DataFrame, budget: float) -> pd.Series:
    return np.isclose(rows["budget"].to_numpy(dtype=float), budget, atol=1e-9)


def budget_points(rows: pd.DataFrame) -> list[float]:
    """The distinct budgets of ``rows``, ascending: one recorded value per budget (values that
    agree to 6 decimals are one budget), so that ``_at_budget`` finds its rows exactly."""
    points: dict[float, float] = {}
    for b in rows["budget"].to_numpy(dtype=float):
        points.setdefault(round(float(b), _BUDGET_DECIMALS), float(b))
    return [points[k] for k in sorted(points)]


def per_input(
    rows: pd.DataFrame, model_id: str, families: list[str] | tuple[str, ...], *,
    budget: float = FULL_BUDGET,
) -> pd.DataFrame:
    """Per-input outcomes of one model: index = test input, columns ``clean``, one per family
    that has rows (robust, bool), and, when every family has rows, ``union`` (bool) and
    ``average`` (fraction of families robust).

    Only inputs evaluated by every attack of these families (at this budget) are kept, so a
    partial shard never makes an input look robust to an attack that did not run on it.
    """
    families = list(families)
    sub = rows[(rows["model_id"] == model_id) & rows["family"].isin(families)]
    sub = sub[_at_budget(sub, budget)]
    out = pd.DataFrame(columns=["clean"], dtype=bool)
    if sub.empty:
        return out
    sub = evaluated_by_all(sub)
    clean = sub.groupby("index")["clean_correct"].all()
    out = pd.DataFrame({"clean": clean})
    present = []
    for fam in families:
        fam_rows = sub[sub["family"] == fam]
        if fam_rows.empty:
            continue
        fooled = fam_rows.groupby("index")["fooled"].any().reindex(out.index, fill_value=False)
        out[fam] = out["clean"] & ~fooled
        present.append(fam)
    if present and len(present) == len(families):
        out["union"] = out[present].all(axis=1)
        out["average"] = out[present].astype(float).mean(axis=1)
    return out.sort_index()


def evaluated_by_all(sub: pd.DataFrame) -> pd.DataFrame:
    """The rows of the inputs that every attack in ``sub`` evaluated."""
    coverage = sub.groupby("index")["attack"].nunique()
    return sub[sub["index"].isin(coverage.index[coverage == sub["attack"].nunique()])]


def estimate(scores: pd.Series) -> Estimate:
    """An accuracy estimate from per-input scores (bool or fraction)."""
    return Estimate(k=float(scores.astype(float).sum()), n=len(scores))


def family_accuracy(rows: pd.DataFrame, model_id: str, family: str) -> Estimate:
    """Accuracy against the worst case over the family's attacks, per input."""
    return estimate(per_input(rows, model_id, [family])[family])


# --------------------------------------------------------------------------------------------
# Tables 1 and 2


@dataclass(frozen=True)
class MaskingFlag:
    """Per model and family: do non-first-order attacks fool more inputs than first-order ones?

    ``extra`` counts clean-correct inputs fooled by a gradient-free/grid attack and by no
    first-order attack; ``fewer`` the reverse. ``attacks`` names the non-first-order attacks
    behind ``extra`` with how many of those inputs each fooled.
    """

    model_id: str
    label: str
    family: str
    extra: int
    fewer: int
    n: int
    p_value: float
    flagged: bool
    first_order: tuple[str, ...]
    attacks: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Cell:
    estimate: Estimate | None
    bold: bool = False
    masking: MaskingFlag | None = None


@dataclass
class TableRow:
    model: ModelInfo
    display: str
    n_inputs: int
    cells: dict[str, Cell]
    incomplete: bool = False
    #: own training passes relative to the group's single-attack models (None: unknown)
    train_cost: float | None = None
    #: with the ancestors' passes, on the same scale (None: no recorded lineage)
    train_cost_with_ancestors: float | None = None
    #: for a soup: how many soups of its family the row stands for (its best)
    best_of: int = 1


@dataclass(frozen=True)
class OptBounds:
    """OPT from the single-perturbation models (accuracies): union = min_i, average = mean_i."""

    per_family: dict[str, tuple[str, Estimate]]
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing and bool(self.per_family)

    @property
    def union(self) -> float:
        if not self.complete:
            return math.nan
        return min(e.value for _, e in self.per_family.values())

    @property
    def average(self) -> float:
        if not self.complete:
            return math.nan
        return float(np.mean([e.value for _, e in self.per_family.values()]))


@dataclass
class GroupTable:
    """One group's accuracy table; ``scores`` holds, per model id, the per-input outcomes its
    cells were computed from (``per_input`` over the group's families), for paired tests."""

    group: str
    dataset: str
    families: tuple[str, ...]
    rows: list[TableRow]
    opt: OptBounds
    notes: list[str] = field(default_factory=list)
    scores: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: the soups not shown: every soup of a family but its best (no bold computed)
    hidden: list[TableRow] = field(default_factory=list)
    #: what the train cost column divides (``TOTAL`` or ``PER_EXAMPLE`` passes)
    cost_unit: str = TOTAL

    @property
    def columns(self) -> list[str]:
        return ["clean", *self.families, "union", "average"]

    @property
    def all_rows(self) -> list[TableRow]:
        """The rows shown, then the soups folded into their family's best."""
        return [*self.rows, *self.hidden]

    @property
    def has_cost(self) -> bool:
        """Did the run record a training cost for any model of the table?"""
        return any(r.model.train_passes is not None for r in self.rows)


def display_names(models: list[ModelInfo]) -> dict[str, str]:
    """Model label, made unique with the seed (or the id) when labels repeat."""
    counts: dict[str, int] = {}
    for m in models:
        counts[m.label] = counts.get(m.label, 0) + 1
    names: dict[str, str] = {}
    for m in models:
        if counts[m.label] == 1:
            names[m.model_id] = m.label
        elif m.seed is not None:
            names[m.model_id] = f"{m.label} (seed {m.seed})"
        else:
            names[m.model_id] = f"{m.label} ({short_id(m.model_id)})"
    if len(set(names.values())) < len(names):
        names = {m.model_id: f"{m.label} ({short_id(m.model_id)})" for m in models}
    return names


def masking_flag(
    rows: pd.DataFrame, model: ModelInfo, family: str, *, alpha: float = ALPHA,
    first_order: tuple[str, ...] | None = None,
) -> MaskingFlag | None:
    """The gradient-masking test for one model and family (None without both attack kinds).

    ``first_order`` restricts the first-order side to these attacks (default: all of the
    family's), e.g. to ask whether one attack overestimates robustness.
    """
    sub = rows[(rows["model_id"] == model.model_id) & (rows["family"] == family)]
    sub = sub[_at_budget(sub, FULL_BUDGET)]
    if sub.empty:
        return None
    first = sorted(set(sub.loc[sub["kind"] == FIRST_ORDER, "attack"]))
    if first_order is not None:
        first = [a for a in first if a in first_order]
    other = sorted(set(sub.loc[~sub["kind"].isin([FIRST_ORDER, EXACT]), "attack"]))
    if not first or not other:
        return None
    sub = evaluated_by_all(sub[sub["attack"].isin([*first, *other])])
    clean = sub.groupby("index")["clean_correct"].all()
    sub = sub[sub["index"].isin(clean.index[clean])]
    fooled = sub.pivot_table(index="index", columns="attack", values="fooled", aggfunc="any")
    fooled = fooled.fillna(False).astype(bool)
    by_first = fooled[first].any(axis=1)
    by_other = fooled[other].any(axis=1)
    extra_mask = by_other & ~by_first
    extra, fewer = int(extra_mask.sum()), int((by_first & ~by_other).sum())
    p = binomial_one_sided(extra, fewer)
    named = tuple(
        (a, int(fooled.loc[extra_mask, a].sum()))
        for a in other
        if int(fooled.loc[extra_mask, a].sum()) > 0
    )
    return MaskingFlag(
        model_id=model.model_id,
        label=model.label,
        family=family,
        extra=extra,
        fewer=fewer,
        n=len(fooled),
        p_value=p,
        flagged=bool(p < alpha and extra > fewer),
        first_order=tuple(first),
        attacks=named,
    )


def masking_flags(rs: ResultSet, *, alpha: float = ALPHA) -> list[MaskingFlag]:
    """Every model/family masking test that could be run (flagged or not)."""
    out = []
    rows = rs.rows[_at_budget(rs.rows, FULL_BUDGET)]
    for model_id in sorted(rows["model_id"].unique()):
        model = rs.models[model_id]
        for family in sorted(rows.loc[rows["model_id"] == model_id, "family"].unique()):
            flag = masking_flag(rows, model, family, alpha=alpha)
            if flag is not None:
                out.append(flag)
    return out


def on_shared_inputs(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Two per-input score series restricted to the inputs both have, as floats."""
    shared = a.index.intersection(b.index)
    return a.loc[shared].astype(float), b.loc[shared].astype(float)


def not_below_best(
    best: pd.Series, other: pd.Series, *, alpha: float = ALPHA
) -> tuple[bool, float]:
    """Is ``other`` not significantly below ``best``? Returns (bold, p-value).

    Paired on the inputs both were evaluated on: the exact sign test, which on boolean outcomes
    is exactly McNemar's test. Without shared inputs, an unpaired Fisher exact test on counts.
    """
    a, b = on_shared_inputs(best, other)
    if len(a):
        p = paired_sign_test(a, b)
    else:
        kb, ko = round(best.astype(float).sum()), round(other.astype(float).sum())
        _, p = fisher_exact([[kb, len(best) - kb], [ko, len(other) - ko]])
    return bool(p >= alpha), float(p)


def opt_bounds(rs: ResultSet, group: str) -> OptBounds:
    """OPT from the group's single-perturbation models, each on its own family.

    With several single models for one family (seeds), the most robust one is used (OPT is an
    optimistic bound).
    """
    g = rs.groups[group]
    per_family: dict[str, tuple[str, Estimate]] = {}
    for model in rs.models_in(group):
        if model.strategy != "single" or len(model.train_families) != 1:
            continue
        fam = model.train_families[0]
        if fam not in g.families:
            continue
        est = family_accuracy(rs.rows, model.model_id, fam)
        if est.n and (fam not in per_family or est.value > per_family[fam][1].value):
            per_family[fam] = (model.model_id, est)
    missing = tuple(f for f in g.families if f not in per_family)
    return OptBounds(per_family=per_family, missing=missing)


def group_table(rs: ResultSet, group: str, *, alpha: float = ALPHA) -> GroupTable:
    """The paper's Table 1/2 for one group: clean, per family, union and average accuracy."""
    g = rs.groups[group]
    models = rs.models_in(group)
    names = display_names(models)
    incomplete = rs.incomplete_models()
    table = GroupTable(group=group, dataset=g.dataset, families=g.families, rows=[],
                       opt=opt_bounds(rs, group))
    scores = table.scores
    costs = train_costs(models)
    table.cost_unit = costs.unit
    if costs.note:
        table.notes.append(f"group {group}: train cost not computed: {costs.note}")
    for model in models:
        df = per_input(rs.rows, model.model_id, g.families)
        if df.empty:
            table.notes.append(f"{names[model.model_id]}: no results at full budget for "
                               f"{', '.join(g.families)}")
            continue
        scores[model.model_id] = df
        cells: dict[str, Cell] = {}
        for col in table.columns:
            est = estimate(df[col]) if col in df else None
            flag = masking_flag(rs.rows, model, col, alpha=alpha) if col in g.families else None
            cells[col] = Cell(estimate=est, masking=flag if flag and flag.flagged else None)
        missing_fams = [f for f in g.families if f not in df]
        if missing_fams:
            table.notes.append(f"{names[model.model_id]}: no results for {', '.join(missing_fams)}"
                               "; union and average not computed")
        table.rows.append(TableRow(model=model, display=names[model.model_id],
                                   n_inputs=len(df), cells=cells,
                                   incomplete=model.model_id in incomplete,
                                   train_cost=costs.own[model.model_id],
                                   train_cost_with_ancestors=costs.with_ancestors[model.model_id]))
    table.rows, table.hidden = fold_soups(table.rows)
    for col in table.columns:
        ranked = [r for r in table.rows if r.cells[col].estimate is not None]
        if not ranked:
            continue
        best = max(ranked, key=lambda r: r.cells[col].estimate.value)
        best_scores = scores[best.model.model_id][col]
        for row in ranked:
            bold, _ = not_below_best(best_scores, scores[row.model.model_id][col], alpha=alpha)
            row.cells[col] = Cell(row.cells[col].estimate, bold=bold or row is best,
                                  masking=row.cells[col].masking)
    if table.opt.missing and table.opt.per_family:
        table.notes.append("OPT not computed: no single-perturbation model for "
                           + ", ".join(table.opt.missing))
    return table


def attack_accuracies(rs: ResultSet, group: str) -> tuple[list[str], dict[str, dict[str, Estimate]]]:
    """Accuracy of each of the group's models against each attack alone at the full budget
    (robust: clean-correct and not fooled by that attack), on the inputs the attack evaluated.

    Returns the attack names (by family in the group's order, then name) and
    {model_id: {attack: Estimate}}: which attack is strongest on which model.
    """
    g = rs.groups[group]
    families = [*g.families, *g.affine]
    ids = [m.model_id for m in rs.models_in(group)]
    rows = rs.rows[rs.rows["model_id"].isin(ids) & rs.rows["family"].isin(families)]
    rows = rows[_at_budget(rows, FULL_BUDGET)]
    attacks = sorted(set(rows["attack"]),
                     key=lambda a: (families.index(rows.loc[rows["attack"] == a, "family"].iloc[0]), a))
    out: dict[str, dict[str, Estimate]] = {}
    for (model_id, attack), sub in rows.groupby(["model_id", "attack"]):
        robust = sub.groupby("index")["robust"].all()
        out.setdefault(str(model_id), {})[str(attack)] = estimate(robust)
    return attacks, out


# --------------------------------------------------------------------------------------------
# Table 3


@dataclass(frozen=True)
class AffineRow:
    group: str
    model_id: str
    display: str
    affine_family: str
    components: tuple[str, ...]
    union: Estimate
    affine: Estimate
    union_and_affine: Estimate


def affine_rows(rs: ResultSet, group: str) -> list[AffineRow]:
    """Table 3: union accuracy over an affine family's components vs accuracy against the
    affine attacks, for the group's Adv_max models (strategy 'max'), on the same inputs."""
    g = rs.groups[group]
    models = rs.models_in(group)
    names = display_names(models)
    out = []
    for model in models:
        if model.strategy != "max":
            continue
        for aff in g.affine:
            comps = tuple(aff.split("+"))
            df = per_input(rs.rows, model.model_id, [*comps, aff])
            if df.empty or aff not in df or not all(c in df for c in comps):
                continue
            union = df[list(comps)].all(axis=1)
            out.append(AffineRow(
                group=group, model_id=model.model_id, display=names[model.model_id],
                affine_family=aff, components=comps, union=estimate(union),
                affine=estimate(df[aff]), union_and_affine=estimate(union & df[aff]),
            ))
    return out


# --------------------------------------------------------------------------------------------
# Figure 1


@dataclass
class SweepCurves:
    """Accuracy against each family (and their union) as the budget fraction grows."""

    model_id: str
    display: str
    group: str
    epsilon: dict[str, float]
    family: dict[str, list[tuple[float, Estimate]]]
    union: list[tuple[float, Estimate]]
    references: list[tuple[str, str, Estimate]]  # (label, family, accuracy at full budget)
    #: the suite says its budget points use fewer attacks than the full budget (labelled so)
    reduced: bool = False


def sweep_curves(rs: ResultSet, group: str, model_id: str) -> SweepCurves | None:
    """Curves for one model of a group from the rows with budget < 1 plus budget 1 and clean
    accuracy at budget 0. Returns None when the model has no sweep rows for the group."""
    g = rs.groups[group]
    rows = rs.rows[(rs.rows["model_id"] == model_id) & rs.rows["family"].isin(g.families)]
    sweep = rows[rows["budget"] < FULL_BUDGET - 1e-9]
    if sweep.empty:
        return None
    # Figure 1 spans the fraction of the full budget: radii beyond it belong to the curves
    budgets = [b for b in budget_points(rows) if b <= FULL_BUDGET + 1e-9]
    full = per_input(rs.rows, model_id, g.families)
    clean = estimate(full["clean"]) if not full.empty else None
    curves: dict[str, list[tuple[float, Estimate]]] = {}
    epsilon: dict[str, float] = {}
    for fam in g.families:
        points = [(0.0, clean)] if clean is not None else []
        fam_rows = rows[rows["family"] == fam]
        eps = fam_rows.loc[_at_budget(fam_rows, FULL_BUDGET), "epsilon"]
        epsilon[fam] = float(eps.iloc[0]) if len(eps) else math.nan
        for t in budgets:
            if t <= 0:
                continue
            df = per_input(rs.rows, model_id, [fam], budget=t)
            if fam in df and len(df):
                points.append((t, estimate(df[fam])))
        curves[fam] = points
    union = [(0.0, clean)] if clean is not None else []
    for t in budgets:
        if t <= 0:
            continue
        df = per_input(rs.rows, model_id, g.families, budget=t)
        if "union" in df and len(df):
            union.append((t, estimate(df["union"])))
    models = rs.models_in(group)
    names = display_names(models)
    opt = opt_bounds(rs, group)
    refs = [(names.get(mid, mid), fam, est) for fam, (mid, est) in opt.per_family.items()]
    return SweepCurves(model_id=model_id, display=names.get(model_id, model_id), group=group,
                       epsilon=epsilon, family=curves, union=union, references=refs,
                       reduced=any(s.reduced for s in rs.group_suites(group)))
