"""Every number of a run's report, computed once from its ``ResultSet`` (no files, no text).

``build_report(rs)`` returns a ``Report``: per group the accuracy table (Tables 1 and 2), Table 3's
affine rows, the gradient-masking checks, the paper's numbers beside the run's, the Figure-1 sweep
curves, the robustness curves with their areas and CR figures, each soup family's curve along
its weights, the protocol, what broke each input, and the paper's findings tested on the run.
A soup folded into its family's best (``GroupTable.hidden``) appears only on its soup curve: the
masking checks and what broke each input list the models the tables show. ``analysis.document`` turns it into text,
``analysis.report`` into files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.audit import AuditSummary, audit_summaries
from analysis.curves import GroupCurves, group_curves
from analysis.findings import Finding, findings
from analysis.loading import ResultSet
from analysis.metrics import (
    FULL_BUDGET,
    AffineRow,
    GroupTable,
    MaskingFlag,
    SweepCurves,
    affine_rows,
    group_table,
    masking_flags,
    sweep_curves,
)
from analysis.paper import Comparison, budget_notes, compare
from analysis.protocol import (
    BrokenBy,
    ProtocolRow,
    broken_by_counts,
    protocol_rows,
    protocol_statement,
)
from analysis.soup_curves import SoupCurve, soup_curves


@dataclass
class Report:
    """Everything the renderers need, computed once from a ``ResultSet``."""

    rs: ResultSet
    tables: list[GroupTable]
    affine: list[AffineRow]
    masking: list[MaskingFlag]
    comparisons: list[Comparison]
    curves: list[SweepCurves]
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    #: per group with points other than the full budget: its models' robustness curves
    robustness: list[GroupCurves] = field(default_factory=list)
    #: the attacks that count, per suite and family, with their points
    protocol: list[ProtocolRow] = field(default_factory=list)
    #: per group: which attacks Figure 1's points use
    protocol_statements: dict[str, str] = field(default_factory=dict)
    broken_by: list[BrokenBy] = field(default_factory=list)
    #: group -> the robustness-curve figure's files (also in ``figures``)
    curve_figures: dict[str, list[Path]] = field(default_factory=dict)
    #: figure file stem -> the caption the documents show under it
    captions: dict[str, str] = field(default_factory=dict)
    #: the strength audit: AutoAttack's standard version against the suite, per model, family
    #: and budget point
    audit: list[AuditSummary] = field(default_factory=list)
    #: per group and soup family: its soups along their weights, the ingredients at the ends
    soups: list[SoupCurve] = field(default_factory=list)
    #: soup figure file stem -> its files (also in ``figures``)
    soup_figures: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def flagged(self) -> list[MaskingFlag]:
        return [f for f in self.masking if f.flagged]


def group_epsilon(rs: ResultSet, group: str) -> dict[str, float]:
    """The full-budget epsilon of each family of the group, as the rows record it."""
    g = rs.groups[group]
    rows = rs.rows[rs.rows["model_id"].isin(g.models) & rs.rows["family"].isin(g.families)]
    rows = rows[(rows["budget"] - FULL_BUDGET).abs() < 1e-9]
    return {fam: float(rows.loc[rows["family"] == fam, "epsilon"].median())
            for fam in g.families if (rows["family"] == fam).any()}


def build_report(rs: ResultSet) -> Report:
    """Compute the tables, flags, comparisons, curves and protocol of every group."""
    tables, affine, curves, notes = [], [], [], []
    robustness, broken, statements, soups = [], [], {}, []
    hidden: set[str] = set()
    epsilon: dict[str, dict[str, float]] = {}
    for name in sorted(rs.groups):
        table = group_table(rs, name)
        if not table.rows:
            notes.append(f"group {name}: no model has results yet; table omitted")
            continue
        tables.append(table)
        notes += table.notes
        epsilon[name] = group_epsilon(rs, name)
        notes += budget_notes(table, epsilon[name])
        affine += affine_rows(rs, name)
        hidden |= {r.model.model_id for r in table.hidden}
        broken += [b for b in broken_by_counts(rs, name) if b.model_id not in hidden]
        group_soups, soup_notes = soup_curves(rs, table)
        soups += group_soups
        notes += soup_notes
        rc = group_curves(rs, table)
        if rc is not None:
            robustness.append(rc)
            notes += rc.notes
        for model in rs.models_in(name):
            if model.strategy != "max":
                continue
            c = sweep_curves(rs, name, model.model_id)
            if c is None:
                notes.append(f"group {name}: {model.label} has no epsilon-sweep rows (budget < 1);"
                             " Figure-1 plot omitted")
            else:
                curves.append(c)
                statements[name] = protocol_statement(rs, name)
    # every per-model list in the order of the models in the tables (the strategies' order)
    order = {mid: i for i, mid in enumerate(dict.fromkeys(
        row.model.model_id for t in tables for row in t.rows))}
    rank = lambda mid: order.get(mid, len(order))  # noqa: E731
    flags = masking_flags(rs)
    notes += [f"{f.label} (a soup the tables fold into its family's best): gradient masking "
              f"flagged on {f.family}" for f in flags if f.flagged and f.model_id in hidden]
    masking = sorted((f for f in flags if f.model_id not in hidden), key=lambda f: rank(f.model_id))
    broken.sort(key=lambda b: (b.group, rank(b.model_id)))
    audit = sorted(audit_summaries(rs.audit), key=lambda a: (rank(a.model_id), a.family, a.budget))
    found = findings(rs, tables, affine, masking,
                     epsilon=epsilon,
                     toy_params={t.group: toy_params(rs, t) for t in tables
                                 if t.dataset == "toy"})
    return Report(rs=rs, tables=tables, affine=affine, masking=masking,
                  comparisons=compare(tables, affine), curves=curves, findings=found,
                  notes=notes, robustness=robustness, protocol=protocol_rows(rs),
                  protocol_statements=statements, broken_by=broken, audit=audit, soups=soups)


def toy_params(rs: ResultSet, table: GroupTable) -> dict[str, Any]:
    """The toy dataset's parameters of a group (from a model config or the suite snapshot)."""
    for row in table.rows:
        p = (row.model.config.get("dataset") or {}).get("params")
        if isinstance(p, dict) and p:
            return p
    for suite in rs.suites.values():  # the evaluation suite snapshot also records them
        if suite.get("dataset") == "toy" and isinstance(suite.get("dataset_params"), dict):
            return suite["dataset_params"]
    return {}
