"""The evaluation protocol, stated, and which attack broke each input.

- ``protocol_rows``: per suite and family, the attacks that count at the full budget (kind, type,
  radius, steps / iterations / queries, restarts) and the budget or radius points each runs at,
  from the suite metadata (``analysis.suite_meta``);
- ``protocol_statement``: the sentence under Figure 1 saying which attacks every point uses;
- ``broken_by_counts``: per group, model and family at the full budget, what broke the inputs the
  model is not robust to (the ``broken_by`` column: "clean", an attack, or an AutoAttack
  component), each input counted once, for the first attack in suite order that broke it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.loading import ResultSet
from analysis.metrics import FULL_BUDGET, display_names, evaluated_by_all
from analysis.suite_meta import RecordedAttack, SuiteInfo

CLEAN = "clean"
@dataclass(frozen=True)
class ProtocolRow:
    """One attack that counts for a family, as the protocol table shows it."""

    suite: str
    family: str
    attack: str
    kind: str
    type: str
    radius: str
    effort: str
    restarts: str
    #: the budget fractions it runs at (1.0 included) and, for l_p families, their radii
    budgets: tuple[float, ...]
    radii: tuple[float, ...]


def _num(x: float) -> str:
    return f"{x:.4g}"


def fmt_points(values: tuple[float, ...] | list[float]) -> str:
    """A list of points; an evenly spaced run of more than four as "a to b by s (n points)"."""
    values = list(values)
    steps = np.diff(values)
    if len(values) > 4 and np.allclose(steps, steps[0], rtol=1e-6, atol=1e-12):
        return (f"{_num(values[0])} to {_num(values[-1])} by {_num(float(steps[0]))} "
                f"({len(values)} points)")
    return ", ".join(_num(v) for v in values)


def _row(suite: SuiteInfo, attack: RecordedAttack) -> ProtocolRow:
    budgets = tuple(suite.points(attack.name))
    full = suite.full_radius.get(attack.family, attack.epsilon)
    radii = tuple(b * full for b in budgets) if math.isfinite(full) else ()
    d = attack.description
    return ProtocolRow(suite=suite.name, family=attack.family, attack=attack.name,
                       kind=attack.kind, type=str(d.get("label", attack.spec.get("type", ""))),
                       radius=str(d.get("radius", "—")), effort=str(d.get("effort", "—")),
                       restarts=str(d.get("restarts", "1")), budgets=budgets, radii=radii)


def protocol_rows(rs: ResultSet) -> list[ProtocolRow]:
    """Every suite's full-budget attacks, by family (in suite order), with their points."""
    return [_row(suite, a) for suite in rs.suite_info.values() for family in suite.families()
            for a in suite.full_attacks(family)]


def protocol_statement(rs: ResultSet, group: str) -> str:
    """Which attacks Figure 1's points use for ``group``: the same ones at every point (the
    full protocol), or, for a suite that says its protocol is reduced, which ones where."""
    g = rs.groups[group]
    out = []
    for suite in rs.group_suites(group):
        per_family = {f: [a.name for a in suite.full_attacks(f)] for f in g.families}
        listing = "; ".join(f"{f}: {', '.join(names) or '—'}" for f, names in per_family.items())
        if not suite.reduced:
            out.append(f"Group {group} (suite {suite.name}): every point uses the same attacks, "
                       f"scaled to its radius: {listing}.")
            continue
        below = {f: list(dict.fromkeys(_below_full(suite, f))) for f in g.families}
        out.append(f"Group {group} (suite {suite.name}), reduced protocol (the suite says "
                   f"budgets_protocol: {suite.budgets_protocol}): points below the full budget "
                   "use only "
                   + "; ".join(f"{f}: {', '.join(names) or 'none'}" for f, names in below.items())
                   + f"; the full-budget point is the worst case over {listing}.")
    return " ".join(out)


def _below_full(suite: SuiteInfo, family: str) -> list[str]:
    """The attacks of ``family`` that run at some budget other than the full one."""
    return [a.base for a in suite.attacks if a.family == family and not a.is_full]


# --------------------------------------------------------------------------------------------
# What broke each input


@dataclass(frozen=True)
class BrokenBy:
    """At the full budget, for one model and family: ``n`` inputs, ``not_robust`` of them
    misclassified or fooled, and ``counts`` (what broke them: value, inputs), in suite order."""

    group: str
    model_id: str
    display: str
    family: str
    n: int
    not_robust: int
    counts: tuple[tuple[str, int], ...]


def _suite_order(rs: ResultSet, group: str) -> list[str]:
    """"clean", then each attack of the group's suites followed by its AutoAttack components."""
    order = [CLEAN]
    for suite in rs.group_suites(group):
        for a in suite.attacks:
            order += [a.name, *a.components]
    return list(dict.fromkeys(order))


def broken_by_counts(rs: ResultSet, group: str) -> list[BrokenBy]:
    """What broke the inputs each model of ``group`` is not robust to, per family and affine
    family, at the full budget (inputs every attack of the family evaluated; each input counted
    once, for the first attack in suite order whose row is not robust)."""
    g = rs.groups[group]
    models = rs.models_in(group)
    names = display_names(models)
    order = _suite_order(rs, group)
    rank = {name: i for i, name in enumerate(order)}
    rows = rs.rows[np.isclose(rs.rows["budget"].to_numpy(dtype=float), FULL_BUDGET, atol=1e-9)]
    out = []
    for model in models:
        for family in (*g.families, *g.affine):
            sub = rows[(rows["model_id"] == model.model_id) & (rows["family"] == family)]
            if sub.empty:
                continue
            sub = evaluated_by_all(sub)
            broken = sub[~sub["robust"]].assign(rank=sub["attack"].map(rank).fillna(len(rank)))
            first = broken.sort_values(["index", "rank", "attack"]).groupby("index").first()
            values = first["broken_by"].where(first["broken_by"] != "", _fallback(first))
            counts = values.value_counts()
            ordered = sorted(counts.index, key=lambda v: (rank.get(v, len(rank)), v))
            out.append(BrokenBy(group=group, model_id=model.model_id,
                                display=names[model.model_id], family=family,
                                n=int(sub["index"].nunique()), not_robust=len(first),
                                counts=tuple((str(v), int(counts[v])) for v in ordered)))
    return out


def _fallback(first: pd.DataFrame) -> pd.Series:
    """What broke an input whose row does not say: misclassified clean, else its attack."""
    return first["attack"].where(first["clean_correct"], CLEAN)
