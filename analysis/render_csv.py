"""The report's tidy CSV files, written from its data directly (one row per number), through
``jobs.io``."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from analysis.build import Report
from jobs.io import write_text_atomic


def _num(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.12g}"


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return write_text_atomic(path, buf.getvalue())


#: A CSV file's header and rows.
CsvRows = tuple[list[str], list[list[object]]]


def _accuracy_csv(report: Report) -> CsvRows:
    """Every cell of every group's table (with its interval, counts and marks), then OPT."""
    rows: list[list[object]] = []
    for t in report.tables:
        for r in t.rows:
            for col in t.columns:
                c = r.cells[col]
                e = c.estimate
                rows.append([t.group, t.dataset, r.display, r.model.model_id, r.model.strategy,
                             col, _num(e.value if e else None), _num(e.low if e else None),
                             _num(e.high if e else None), _num(e.k if e else None),
                             e.n if e else "", int(c.bold),
                             ";".join(a for a, _ in c.masking.attacks) if c.masking else "",
                             int(r.incomplete), _num(r.model.train_passes),
                             _num(r.model.train_passes_total),
                             _num(r.model.passes_with_ancestors), _num(r.train_cost),
                             _num(r.train_cost_with_ancestors), t.cost_unit, r.best_of])
        if t.opt.complete:
            for col, value in (("union", t.opt.union), ("average", t.opt.average)):
                rows.append([t.group, t.dataset, "OPT", "", "", col, _num(value), "", "", "", "",
                             0, "", 0, "", "", "", "", "", "", ""])
    return (["group", "dataset", "model", "model_id", "strategy", "column", "accuracy",
             "ci_low", "ci_high", "k", "n", "bold", "masking_attacks", "incomplete",
             "train_passes_per_example", "train_passes", "train_passes_with_ancestors",
             "train_cost", "train_cost_with_ancestors", "train_cost_unit", "best_of_soups"], rows)


def _affine_csv(report: Report) -> CsvRows:
    return (["group", "model", "model_id", "affine_family", "n", "union", "affine",
             "union_and_affine"],
            [[a.group, a.display, a.model_id, a.affine_family, a.union.n, _num(a.union.value),
              _num(a.affine.value), _num(a.union_and_affine.value)] for a in report.affine])


def _masking_csv(report: Report) -> CsvRows:
    return (["model", "model_id", "family", "first_order", "disagreeing", "extra", "fewer", "n",
             "p_value", "flagged"],
            [[f.label, f.model_id, f.family, ";".join(f.first_order),
              ";".join(f"{a}:{n}" for a, n in f.attacks), f.extra, f.fewer, f.n,
              _num(f.p_value), int(f.flagged)] for f in report.masking])


def _findings_csv(report: Report) -> CsvRows:
    return (["claim", "statement", "group", "model", "run", "paper", "p_value", "verdict"],
            [[f.claim, f.statement, f.group, f.subject, f.run, f.paper, _num(f.p_value),
              f.verdict] for f in report.findings])


def _paper_csv(report: Report) -> CsvRows:
    return (["paper_table", "group", "model", "column", "paper", "run", "difference"],
            [[c.table, c.group, c.model, c.column, _num(c.paper), _num(c.run),
              _num(c.difference)] for c in report.comparisons])


def _sweep_csv(report: Report) -> CsvRows:
    """Figure 1's points: accuracy per family (and union) at each fraction of the budget."""
    rows: list[list[object]] = []
    for cv in report.curves:
        for fam, pts in [*cv.family.items(), ("union", cv.union)]:
            for t, e in pts:
                rows.append([cv.group, cv.display, cv.model_id, fam, _num(t),
                             _num(cv.epsilon.get(fam, math.nan) * t if fam != "union" else None),
                             _num(e.value), _num(e.low), _num(e.high), e.n])
    return (["group", "model", "model_id", "family", "budget", "epsilon", "accuracy", "ci_low",
             "ci_high", "n"], rows)


def _curves_csv(report: Report) -> CsvRows:
    """Every point of every robustness curve (x: the radius, or the budget fraction)."""
    rows: list[list[object]] = []
    for rc in report.robustness:
        for m in rc.models:
            for column in rc.columns:
                curve = m.curves[column]
                for b, (x, e) in zip(curve.budgets, curve.points, strict=True):
                    rows.append([rc.group, m.display, m.model_id, column, curve.axis, _num(b),
                                 _num(x), _num(e.value), _num(e.low), _num(e.high), e.n])
    return (["group", "model", "model_id", "column", "axis", "budget", "x", "accuracy",
             "ci_low", "ci_high", "n"], rows)


def _robustness_csv(report: Report) -> CsvRows:
    """Per model: the area under each curve (with its interval) and the CR_ind figures."""
    rows: list[list[object]] = []
    for rc in report.robustness:
        for m in rc.models:
            for column in rc.columns:
                a = m.curves[column].area
                rows.append([rc.group, m.display, m.model_id, "area", column,
                             _num(a.value if a else None), _num(a.low if a else None),
                             _num(a.high if a else None), a.n if a else ""])
            for measure, value in (("cr_ind_avg", m.cr_avg), ("cr_ind_worst", m.cr_worst)):
                rows.append([rc.group, m.display, m.model_id, measure, "",
                             _num(None if value is None else value / 100), "", "", ""])
    return (["group", "model", "model_id", "measure", "column", "value", "ci_low", "ci_high",
             "n"], rows)


def _soups_csv(report: Report) -> CsvRows:
    """Every point of every soup curve, in the curve's order (the first ingredient alone, the
    soups by its weight falling, ..., the last ingredient alone), one row per column."""
    rows: list[list[object]] = []
    for sc in report.soups:
        for i, p in enumerate(sc.points):
            for column in sc.columns:
                e = p.accuracy.get(column)
                rows.append([sc.group, sc.family, i, p.label, p.model_id,
                             "ingredient" if p.ingredient else "soup",
                             int(p.model_id == sc.best), ";".join(_num(w) for w in p.weights),
                             _num(p.x), column, _num(e.value if e else None),
                             _num(e.low if e else None), _num(e.high if e else None),
                             e.n if e else ""])
    return (["group", "soup_family", "point", "model", "model_id", "kind", "in_table", "weights",
             "x", "column", "accuracy", "ci_low", "ci_high", "n"], rows)


def _protocol_csv(report: Report) -> CsvRows:
    return (["suite", "family", "attack", "kind", "type", "radius", "steps_iterations_queries",
             "restarts", "budgets", "radii"],
            [[r.suite, r.family, r.attack, r.kind, r.type, r.radius, r.effort, r.restarts,
              ";".join(_num(b) for b in r.budgets), ";".join(_num(x) for x in r.radii)]
             for r in report.protocol])


def _broken_by_csv(report: Report) -> CsvRows:
    return (["group", "model", "model_id", "family", "n", "not_robust", "broken_by", "inputs"],
            [[b.group, b.display, b.model_id, b.family, b.n, b.not_robust, value, count]
             for b in report.broken_by for value, count in b.counts])


def _audit_csv(report: Report) -> CsvRows:
    return (["model", "model_id", "family", "budget", "epsilon", "n", "suite_robust", "aa_robust",
             "aa_broke_suite_robust", "upper_95", "suite_broke_aa_robust", "weaker"],
            [[s.label, s.model_id, s.family, s.budget, s.epsilon, s.n, s.suite_robust,
              s.aa_robust, s.missed, _num(s.upper), s.extra, s.weaker] for s in report.audit])


def _completeness_csv(report: Report) -> CsvRows:
    """Missing trials and shards, and skipped files."""
    rs = report.rs
    rows: list[list[object]] = [["trial", mid, "", "", "", "no results"]
                                for mid in rs.missing_trials]
    rows += [["shard", s.model_id, s.attack, s.start, s.stop, s.reason]
             for s in rs.missing_shards]
    rows += [["file", str(s.path.relative_to(rs.run_dir)), "", "", "", s.reason]
             for s in rs.skipped_files]
    return (["what", "model_id_or_path", "attack", "start", "stop", "reason"], rows)


#: The tidy CSV files of a report, in the order they are written.
CSV_FILES = {"tables.csv": _accuracy_csv, "affine.csv": _affine_csv, "masking.csv": _masking_csv,
             "findings.csv": _findings_csv, "paper_vs_run.csv": _paper_csv,
             "sweep.csv": _sweep_csv, "curves.csv": _curves_csv,
             "robustness.csv": _robustness_csv, "soups.csv": _soups_csv,
             "protocol.csv": _protocol_csv,
             "broken_by.csv": _broken_by_csv, "audit.csv": _audit_csv,
             "completeness.csv": _completeness_csv}


#: Files written only when the run has their kind of model (soups.csv: a run with soups).
ONLY_WITH_ROWS = ("soups.csv",)


def write_csv(report: Report, out_dir: Path) -> list[Path]:
    """Tidy CSV files (``CSV_FILES``): one row per number."""
    out = []
    for name, table in CSV_FILES.items():
        header, rows = table(report)
        if rows or name not in ONLY_WITH_ROWS:
            out.append(_write(out_dir / name, header, rows))
    return out
