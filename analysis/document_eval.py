"""The report's sections about the evaluation itself: the protocol (the attacks that count per
family and their points), the robustness curves (figure, areas and CR figures per group) and what
broke each input. ``analysis.document`` places them; ``analysis.render`` writes them.
"""

from __future__ import annotations

from pathlib import Path

from analysis.audit import CONFIDENCE, audit_totals
from analysis.blocks import Block, Heading, Image, Para, Table, TCell, fmt_ci
from analysis.build import Report
from analysis.curves import RADIUS, GroupCurves
from analysis.protocol import ProtocolRow, fmt_points
from analysis.stats import fmt_pct
from analysis.suite_meta import SuiteInfo

PROTOCOL_HEADERS = ["family", "attack", "kind", "type", "radius",
                    "steps / iterations / queries", "restarts", "points"]
CURVES_METHOD = (
    "Each model's accuracy against each family as the radius grows (the worst case over the "
    "family's attacks at that radius, per input, as in the tables; radius 0 is the clean "
    "accuracy) and against the union of the group's families at the budget fractions every "
    "family has. Area: the trapezoid under the curve divided by the length of its range, i.e. "
    "the mean accuracy over the range (the mean of each input's own area, with a Wilson 95% "
    "interval as for the average column); given only for models evaluated at every point of the "
    "group. CR_ind-avg and CR_ind-worst (MultiRobustBench, Dai et al. ICML 2023): over the clean "
    "point and every (family, radius) point of the group, the ratio of the model's accuracy to "
    "the reference's, 100 x their mean and 100 x their minimum; the reference at a family's "
    "points is the single-perturbation model trained on that family, at the clean point the best "
    "clean accuracy among those models."
)
BROKEN_BY_METHOD = (
    "For each model and family at the full budget, the inputs the model is not robust to, by "
    "what broke them: clean (misclassified without attack), the attack that fooled the input, "
    "or for AutoAttack's standard ensemble the component that did (apgd-ce, apgd-t, fab-t, "
    "square). An input fooled by several attacks is counted once, for the first in the suite's "
    "order (a cascade's order)."
)


def _points(row: ProtocolRow) -> str:
    if row.radii:
        return "radius " + fmt_points(row.radii)
    return "budget " + fmt_points(row.budgets)


def protocol_block(report: Report, suite: SuiteInfo) -> Table:
    """One suite's protocol: per family, the attacks that count and the points each runs at."""
    rows = [[TCell(r.family), TCell(r.attack), TCell(r.kind), TCell(r.type), TCell(r.radius),
             TCell(r.effort), TCell(r.restarts), TCell(_points(r))]
            for r in report.protocol if r.suite == suite.name]
    asked = "; ".join(f"{f} {fmt_points(list(v))}" for f, v in suite.radii.items())
    caption = (f"Suite {suite.name} (budgets_protocol: {suite.budgets_protocol}): the attacks "
               "that count for each family at its full budget, and the budget fractions or "
               "radii each runs at (the family's accuracy at a point is the worst case over the "
               "attacks that run there, per input)")
    if asked:
        caption += f"; radius ranges asked for: {asked} (radius 0 is the clean accuracy)"
    return Table(caption, PROTOCOL_HEADERS, rows, key=f"protocol-{suite.name}")


def protocol_section(report: Report) -> list[Block]:
    suites = [s for s in report.rs.suite_info.values()
              if any(r.suite == s.name for r in report.protocol)]
    if not suites:
        return []
    return [Heading(2, "Evaluation protocol"), *(protocol_block(report, s) for s in suites)]


def _range(rc: GroupCurves, column: str) -> str:
    xs = rc.xs[column]
    what = "radius" if rc.axes[column] == RADIUS else "fraction of the budget"
    return f"{column}: {what} 0 to {xs[-1]:.4g} ({len(xs) + 1} points)" if xs else column


def curves_block(rc: GroupCurves) -> Table:
    """Area under each curve and the CR figures, one row per model of the group."""
    rows = []
    for m in rc.models:
        cells = [TCell(m.display)]
        for c in rc.columns:
            a = m.curves[c].area
            cells.append(TCell(fmt_pct(a.percent), fmt_ci(a)) if a is not None else TCell("—"))
        cells += [TCell(fmt_pct(x)) for x in (m.cr_avg, m.cr_worst)]
        rows.append(cells)
    refs = ", ".join(f"{f} {name}" for f, name in rc.references.items())
    caption = (f"Group {rc.group}: area under each robustness curve (%, the mean accuracy over "
               f"its range) and CR_ind (%, against {refs or 'no reference'}); ranges: "
               + "; ".join(_range(rc, c) for c in rc.columns))
    if rc.reduced:
        caption += "; reduced protocol: points below the full budget use fewer attacks"
    headers = ["model", *(f"area {c}" for c in rc.columns), "CR_ind-avg", "CR_ind-worst"]
    return Table(caption, headers, rows, key=f"{rc.group}-curves")


def curves_section(report: Report, figure_root: Path) -> list[Block]:
    if not report.robustness:
        return []
    out: list[Block] = [Heading(2, "Robustness curves"), Para(CURVES_METHOD)]
    for rc in report.robustness:
        for p in report.curve_figures.get(rc.group, []):
            if p.suffix == ".png":
                out.append(Image(p.relative_to(figure_root) if p.is_relative_to(figure_root)
                                 else p, report.captions.get(p.stem, p.stem)))
        out.append(curves_block(rc))
    return out


def broken_by_blocks(report: Report) -> list[Table]:
    """Per group: model, family, inputs, how many are not robust, and what broke them."""
    out = []
    for group in dict.fromkeys(b.group for b in report.broken_by):
        rows = [[TCell(b.display), TCell(b.family), TCell(str(b.n)), TCell(str(b.not_robust)),
                 TCell(", ".join(f"{v} {k}" for v, k in b.counts) or "—")]
                for b in report.broken_by if b.group == group]
        out.append(Table(f"Group {group}: what broke the inputs each model is not robust to, "
                         "at the full budget (inputs)",
                         ["model", "family", "n", "not robust", "broken by"], rows,
                         key=f"{group}-broken-by"))
    return out


def broken_by_section(report: Report) -> list[Block]:
    blocks = broken_by_blocks(report)
    if not blocks:
        return []
    return [Heading(2, "What broke each input"), Para(BROKEN_BY_METHOD), *blocks]


AUDIT_METHOD = (
    "AutoAttack's standard version as shipped (pyautoattack's run_standard_evaluation: APGD-CE, "
    "APGD-T, FAB-T and Square with the standard settings), run by `mpo audit` on a seeded sample "
    "of each model's test points for each l_p family, beside the suite's verdicts on the same "
    "inputs. AA broke, suite robust: inputs AutoAttack broke that the suite called robust (the "
    "suite is weaker than AutoAttack there, and its robust accuracy too high by at least that "
    f"share); upper: a one-sided {100 * CONFIDENCE:.0f}% Clopper-Pearson bound on that share in "
    "the test set. Suite broke, AA robust: inputs the suite's other attacks broke."
)
AUDIT_HEADERS = ["model", "family", "budget", "n", "suite robust (%)", "AA robust (%)",
                 "AA broke, suite robust", "upper (%)", "suite broke, AA robust", "verdict"]


def audit_block(report: Report) -> Table:
    rows = [[TCell(s.label), TCell(s.family), TCell(f"{s.budget:g}"), TCell(str(s.n)),
             TCell(fmt_pct(100 * s.suite_robust / s.n if s.n else None)),
             TCell(fmt_pct(100 * s.aa_robust / s.n if s.n else None)), TCell(str(s.missed)),
             TCell(fmt_pct(100 * s.upper)), TCell(str(s.extra)),
             TCell("WEAKER than AutoAttack" if s.weaker else "at least as strong")]
            for s in report.audit]
    return Table("Strength audit: AutoAttack standard against the suite, per input",
                 AUDIT_HEADERS, rows, key="audit")


def audit_section(report: Report) -> list[Block]:
    if not report.audit:
        return []
    t = audit_totals(report.audit)
    verdict = (f"On {t['weaker_points']} of {t['points']} audited points the suite is weaker than "
               f"AutoAttack: {t['missed']} of {t['inputs']} inputs compared were broken by "
               "AutoAttack and called robust by the suite." if t["missed"] else
               f"On every one of the {t['points']} audited points ({t['inputs']} inputs compared) "
               "no input AutoAttack broke was called robust by the suite.")
    return [Heading(2, "Strength audit"), Para(AUDIT_METHOD), Para(verdict), audit_block(report)]
