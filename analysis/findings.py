"""The paper's qualitative findings, tested on a run: does this run reproduce them?

Each finding is a directional claim checked on the per-example outcomes with a paired exact
test (alpha = ``analysis.stats.ALPHA``), per group and model:

- ``union``: Adv_avg and Adv_max have higher union accuracy than every single-perturbation model
  (tested against the best single model: exact McNemar on the paired per-input outcomes);
- ``opt``: they stay below OPT, the bound built from the single-perturbation models (union:
  McNemar against the per-input outcomes of the single model that sets OPT(R_max); average:
  exact sign test against the per-input mean of the single models' own-family outcomes);
- ``affine``: the affine adversary is stronger than the union of its components, for the Adv_max
  models (McNemar between robust-to-the-union and robust-to-the-union-and-the-affine-attacks);
- ``masking``: the l_inf-trained model masks gradients for the other l_p families: gradient-free
  attacks fool significantly more inputs than a first-order attack (the report's one-sided
  masking test, against each of the family's first-order attacks on its own);
- ``theorem1``: on the ``toy`` data at Theorem 1's radii, no model's average accuracy is
  significantly above 50% (its Wilson 95% interval reaches 50%).

A verdict is ``reproduced`` (direction holds and is significant), ``not significant``
(direction holds, p >= alpha) or ``not reproduced`` (the direction does not hold).
The paper's numbers, where ``analysis/paper_results.yaml`` has them, are shown beside the run's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.loading import ModelInfo, ResultSet
from analysis.metrics import (
    AffineRow,
    GroupTable,
    MaskingFlag,
    display_names,
    masking_flag,
    on_shared_inputs,
    per_input,
)
from analysis.paper import match_table, paper_results
from analysis.stats import ALPHA, fmt_pct, paired_sign_test
from analysis.theory import Section2

REPRODUCED = "reproduced"
NOT_SIGNIFICANT = "not significant"
NOT_REPRODUCED = "not reproduced"

#: claim key -> (short name for tables, the paper's statement).
CLAIMS = {
    "union": ("union > singles", "Adv_avg and Adv_max have higher union accuracy than every "
              "single-perturbation model"),
    "opt": ("below OPT", "multi-perturbation models stay below OPT, the bound built from the "
            "single-perturbation models (a robustness trade-off)"),
    "affine": ("affine > union", "the affine adversary is stronger than the union of its "
               "components (Table 3)"),
    "masking": ("masking", "MNIST models trained against l_inf mask gradients: gradient-free "
                "attacks find l_1 / l_2 adversarial inputs that a first-order attack misses "
                "(tested per first-order attack)"),
    "theorem1": ("Theorem 1", "on the Section 2 data at eps_inf = 2 eta, eps_1 = 2, every model "
                 "has average accuracy <= 50% (R_avg >= 1/2)"),
}
#: Datasets the paper's gradient-masking finding is about.
MASKING_DATASETS = ("mnist",)
METHOD = (
    "Each of the paper's qualitative findings is tested on the per-input outcomes with an exact "
    "paired test (alpha = 0.05): union, each multi-perturbation model (avg, max) against the best "
    "single-perturbation model (two-sided McNemar); OPT, against the single model that sets "
    "OPT(R_max) (McNemar, union) and against the per-input mean of the single models' own-family "
    "outcomes (sign test, average); affine, robust to the union against robust to the union and "
    "the affine attacks (McNemar); masking, the one-sided gradient-masking test above for the "
    "l_inf-trained model on l_1 and l_2, against each first-order attack on its own; Theorem 1 "
    "(toy data at its radii), whether any model's average accuracy has a Wilson 95% interval "
    "entirely above 50%. Verdicts: reproduced (the paper's direction holds and is significant), "
    "not significant (direction holds, p >= 0.05), not reproduced (the direction does not hold)."
)
MULTI_STRATEGIES = ("avg", "max")
#: Spatial families are not l_p balls: the masking finding is about l_1 and l_2.
LP_FAMILIES = ("l1", "l2")


@dataclass(frozen=True)
class Finding:
    """One claim of the paper checked on one group and model of the run (percent numbers)."""

    claim: str
    group: str
    subject: str
    run: str
    paper: str
    p_value: float | None
    verdict: str

    @property
    def name(self) -> str:
        return CLAIMS[self.claim][0]

    @property
    def statement(self) -> str:
        return CLAIMS[self.claim][1]


def _pct(value: float) -> str:
    """A fraction in [0, 1] as a percentage."""
    return fmt_pct(100.0 * value)


def _paired(a: pd.Series, b: pd.Series) -> tuple[float, float, float]:
    """Means of ``a`` and ``b`` on their shared inputs and the two-sided exact paired p-value
    (the sign test: McNemar's on boolean outcomes)."""
    x, y = on_shared_inputs(a, b)
    return float(x.mean()), float(y.mean()), paired_sign_test(x, y)


def _verdict(holds: bool, p: float) -> str:
    if not holds:
        return NOT_REPRODUCED
    return REPRODUCED if p < ALPHA else NOT_SIGNIFICANT


def _paper_value(table: dict[str, Any] | None, label: str, column: str) -> float | None:
    if table is None:
        return None
    value = table["rows"].get(label, {}).get(column)
    return None if value is None else float(value)


def _union_findings(table: GroupTable, scores: dict[str, pd.DataFrame], names: dict[str, str],
                    singles: list[ModelInfo], multis: list[ModelInfo]) -> list[Finding]:
    ref = match_table(table.dataset, table.families)
    out = []
    for m in multis:
        best = max(singles, key=lambda s: scores[s.model_id]["union"].mean())
        mine, theirs, p = _paired(scores[m.model_id]["union"], scores[best.model_id]["union"])
        paper_m = _paper_value(ref, m.label, "union")
        paper_singles = {s.label: _paper_value(ref, s.label, "union") for s in singles}
        paper_singles = {k: v for k, v in paper_singles.items() if v is not None}
        paper = "—"
        if paper_m is not None and paper_singles:
            top = max(paper_singles, key=paper_singles.__getitem__)
            paper = f"{paper_m:.1f} vs {top} {paper_singles[top]:.1f}"
        out.append(Finding("union", table.group, names[m.model_id],
                           f"{_pct(mine)} vs {names[best.model_id]} {_pct(theirs)}", paper, p,
                           _verdict(mine > theirs, p)))
    return out


def _opt_findings(rs: ResultSet, table: GroupTable, scores: dict[str, pd.DataFrame],
                  names: dict[str, str], multis: list[ModelInfo]) -> list[Finding]:
    opt = table.opt
    if not opt.complete:
        return []
    ref = match_table(table.dataset, table.families)
    own = {fam: per_input(rs.rows, mid, [fam])[fam] for fam, (mid, _) in opt.per_family.items()}
    weakest = min(opt.per_family, key=lambda f: opt.per_family[f][1].value)
    opt_avg = pd.concat(own.values(), axis=1, join="inner").astype(float).mean(axis=1)
    out = []
    for m in multis:
        for column, target in (("union", own[weakest]), ("average", opt_avg)):
            mine, bound, p = _paired(scores[m.model_id][column], target)
            paper_m, paper_opt = _paper_value(ref, m.label, column), _paper_value(ref, "OPT", column)
            paper = ("—" if paper_m is None or paper_opt is None
                     else f"{column} {paper_m:.1f} vs OPT {paper_opt:.1f}")
            out.append(Finding("opt", table.group, names[m.model_id],
                               f"{column} {_pct(mine)} vs OPT {_pct(bound)}", paper, p,
                               _verdict(mine < bound, p)))
    return out


def _affine_findings(rs: ResultSet, rows: list[AffineRow]) -> list[Finding]:
    refs = {(r["dataset"], r["family"]): r for r in paper_results()["affine"]}
    out = []
    for a in rows:
        df = per_input(rs.rows, a.model_id, [*a.components, a.affine_family])
        union = df[list(a.components)].all(axis=1)
        both = union & df[a.affine_family]
        u, ua, p = _paired(union, both)
        ref = refs.get((rs.groups[a.group].dataset, a.affine_family))
        label = a.display.split(" (")[0]
        cols = ref["rows"].get(label, {}) if ref else {}
        paper = (f"union {cols['union']:.1f} -> {cols['affine']:.1f}"
                 if {"union", "affine"} <= set(cols) else "—")
        out.append(Finding("affine", a.group, f"{a.display}, {a.affine_family}",
                           f"union {_pct(u)} -> {_pct(ua)} (affine alone {_pct(a.affine.value)})",
                           paper, p, _verdict(ua < u, p)))
    return out


def _masking_findings(rs: ResultSet, flags: list[MaskingFlag]) -> list[Finding]:
    """For the l_inf-trained MNIST model, on l_1 and l_2: the masking test against each of the
    family's first-order attacks on its own (does this attack overestimate the robustness?)."""
    out = []
    for f in flags:
        model = rs.models[f.model_id]
        if model.strategy != "single" or model.train_families != ("linf",):
            continue
        if f.family not in LP_FAMILIES or model.dataset not in MASKING_DATASETS:
            continue
        groups = [g for g in model.groups if g in rs.groups and f.family in rs.groups[g].families]
        for attack in f.first_order:
            one = masking_flag(rs.rows, model, f.family, first_order=(attack,))
            if one is None:
                continue
            detail = f"{one.extra} fooled only by gradient-free attacks, {one.fewer} only by {attack}"
            out.append(Finding("masking", ", ".join(groups) or "—",
                               f"{f.label}, {f.family}: {attack}", detail,
                               "yes (decision-based attacks)", one.p_value,
                               _verdict(one.extra > one.fewer, one.p_value)))
    return out


def _theorem1_findings(rs: ResultSet, table: GroupTable, epsilon: dict[str, float],
                       params: dict[str, Any]) -> list[Finding]:
    if table.dataset != "toy" or set(table.families) != {"linf", "l1"}:
        return []
    dist = Section2.from_params(params)
    if not (math.isclose(epsilon.get("linf", math.nan), dist.eps_linf, rel_tol=1e-3)
            and math.isclose(epsilon.get("l1", math.nan), 2.0, rel_tol=1e-3)):
        return []
    # every model, the soups the table folds into their family's best included
    rows = [r for r in table.all_rows if r.cells["average"].estimate is not None]
    if not rows:
        return []
    top = max(rows, key=lambda r: r.cells["average"].estimate.value)
    est = top.cells["average"].estimate
    # Violated only if some model is significantly above 1/2: its interval lies above 50%.
    holds = est.low <= 0.5
    return [Finding("theorem1", table.group, f"best: {top.display}",
                    f"average {_pct(est.value)} [{_pct(est.low)}, {_pct(est.high)}]",
                    "<= 50 (proved)", None, REPRODUCED if holds else NOT_REPRODUCED)]


def group_findings(rs: ResultSet, table: GroupTable, *, epsilon: dict[str, float],
                   toy_params: dict[str, Any] | None = None) -> list[Finding]:
    """The union, OPT and Theorem 1 findings of one group's table."""
    models = rs.models_in(table.group)
    names = display_names(models)
    present = {r.model.model_id for r in table.rows
               if all(r.cells[c].estimate is not None for c in ("union", "average"))}
    scores = table.scores
    singles = [m for m in models if m.model_id in present and m.strategy == "single"]
    multis = [m for m in models if m.model_id in present and m.strategy in MULTI_STRATEGIES]
    out = []
    if singles and multis:
        out += _union_findings(table, scores, names, singles, multis)
    if multis:
        out += _opt_findings(rs, table, scores, names, multis)
    out += _theorem1_findings(rs, table, epsilon, toy_params or {})
    return out


def findings(rs: ResultSet, tables: list[GroupTable], affine: list[AffineRow],
             flags: list[MaskingFlag], *, epsilon: dict[str, dict[str, float]],
             toy_params: dict[str, dict[str, Any]] | None = None) -> list[Finding]:
    """Every finding that this run can test, in claim order.

    ``epsilon`` and ``toy_params`` are keyed by group (full-budget radii; the toy dataset's
    parameters, for Theorem 1).
    """
    out: list[Finding] = []
    for table in tables:
        out += group_findings(rs, table, epsilon=epsilon.get(table.group, {}),
                              toy_params=(toy_params or {}).get(table.group))
    out += _affine_findings(rs, affine)
    out += _masking_findings(rs, flags)
    order = list(CLAIMS)
    return sorted(out, key=lambda f: order.index(f.claim))
