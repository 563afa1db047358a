"""Build the report of a run folder and write it as Markdown, LaTeX, CSV and HTML.

``build_report(rs)`` computes every table (no files); ``make_report(run_dir, out_dir, formats)``
loads the run, draws the figures (PNG and SVG) and writes the requested formats;
``write_snapshot(rs, out)`` writes the small, committable record of a run (``mpo report
--snapshot``).
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.figures import plot_sweep
from analysis.findings import Finding, findings
from analysis.loading import ResultSet, load_results
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
from analysis.paper import Comparison, budget_notes, compare, paper_results
from jobs.errors import MpoError

FORMATS = ("md", "tex", "html", "csv")


class ReportError(MpoError, ValueError):
    """A report option that cannot be honoured (format, snapshot folder, README markers)."""

METHODS = (
    "Accuracies are computed from the per-example results: an input counts as robust to a "
    "family when it is classified correctly and no attack of that family fooled it (the worst "
    "case over the family's attacks, per input); union = robust to every family of the group; "
    "average = mean of the per-family accuracies. Brackets are Wilson 95% confidence intervals "
    "(for the average, with the number of inputs as n). Bold: not significantly below the "
    "column's best model by a two-sided exact McNemar test on the paired per-input outcomes "
    "(alpha = 0.05; for the average column, the exact sign test on the per-input fraction of "
    "families, its generalisation to scores). OPT: from the single-perturbation models, each "
    "on its own family: OPT(R_max) = max of their risks, OPT(R_avg) = their mean. "
    "‡ gradient masking: gradient-free or grid attacks fool significantly more clean-correct "
    "inputs than the family's first-order attacks (one-sided exact binomial test on the inputs "
    "only one side fooled, alpha = 0.05). * the model has missing shards."
)


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
    """Compute the tables, flags, comparisons and sweep curves of every group."""
    tables, affine, curves, notes = [], [], [], []
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
        for model in rs.models_in(name):
            if model.strategy != "max":
                continue
            c = sweep_curves(rs, name, model.model_id)
            if c is None:
                notes.append(f"group {name}: {model.label} has no epsilon-sweep rows (budget < 1);"
                             " Figure-1 plot omitted")
            else:
                curves.append(c)
    masking = masking_flags(rs)
    found = findings(rs, tables, affine, masking,
                     epsilon=epsilon,
                     toy_params={t.group: toy_params(rs, t) for t in tables
                                 if t.dataset == "toy"})
    return Report(rs=rs, tables=tables, affine=affine, masking=masking,
                  comparisons=compare(tables, affine), curves=curves, findings=found,
                  notes=notes)


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


def _toy_panels(report: Report, fig_dir: Path) -> list[Path]:
    """Draw ``analysis.theory_plot.toy_panel`` for toy groups on l_inf and l_1.

    Imported here, not at the top: it loads pyplot, and a panel that cannot be drawn costs a
    note, never the report."""
    out: list[Path] = []
    for table in report.tables:
        if table.dataset != "toy" or not {"linf", "l1"} <= set(table.families):
            continue
        try:
            toy_panel = importlib.import_module("analysis.theory_plot").toy_panel
        except (ImportError, AttributeError) as exc:
            report.notes.append(f"group {table.group}: theory panel skipped (no toy_panel: "
                                f"analysis.theory_plot: {exc})")
            continue
        params = toy_params(report.rs, table)
        models = []
        for row in table.rows:
            ests = [row.cells[c].estimate for c in ("linf", "l1", "union")]
            if any(e is None for e in ests):
                continue
            risk_linf, risk_l1, risk_union = (1.0 - e.value for e in ests)
            models.append({"label": row.display, "risk_linf": risk_linf, "risk_l1": risk_l1,
                           "risk_union": risk_union})
        try:
            paths = toy_panel(params, models, fig_dir / f"theory_{table.group}")
        except Exception as exc:  # a broken panel must not cost the researcher the whole report
            report.notes.append(f"group {table.group}: theory panel failed "
                                f"({type(exc).__name__}: {exc}); skipped")
            continue
        out += [Path(p) for p in paths]
    return out


def write_figures(report: Report, out_dir: Path) -> list[Path]:
    """Draw every Figure-1 plot (and the toy theory panel) under ``out_dir/figures``."""
    fig_dir = out_dir / "figures"
    paths: list[Path] = []
    names: dict[str, int] = {}
    for c in report.curves:
        names[c.group] = names.get(c.group, 0) + 1
    for c in report.curves:
        stem = f"fig1_{c.group}" if names[c.group] == 1 else f"fig1_{c.group}_{c.model_id[:8]}"
        paths += plot_sweep(c, fig_dir / stem)
    paths += _toy_panels(report, fig_dir)
    report.figures = paths
    return paths


def parse_formats(formats: str | Iterable[str] | None) -> tuple[str, ...]:
    """'md,tex' or ['md', 'tex'] -> ('md', 'tex'); None -> every format."""
    if formats is None:
        return FORMATS
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    items = [f.strip().lower() for f in items if f.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ReportError(f"--format: unknown format(s) {bad or items!r}; "
                         f"allowed: {', '.join(FORMATS)} (comma-separated)")
    return tuple(dict.fromkeys(items))


def write_report(rs: ResultSet, out: Path,
                 formats: str | Iterable[str] | None = None) -> tuple[Report, list[Path]]:
    """Build the report of ``rs`` and write its figures and ``formats`` to ``out``."""
    from analysis import render

    fmts = parse_formats(formats)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(rs)
    written = write_figures(report, out)
    writers = {"md": render.write_markdown, "tex": render.write_latex,
               "html": render.write_html, "csv": render.write_csv}
    for fmt in fmts:
        written += writers[fmt](report, out)
    return report, written


def make_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    formats: str | Iterable[str] | None = None,
) -> list[Path]:
    """Write the report of ``run_dir`` to ``out_dir`` (default ``run_dir/report``).

    Returns the written files (figures first). Raises ``RunFolderError`` for a missing or empty
    run folder and ``ValueError`` for an unknown format.
    """
    fmts = parse_formats(formats)
    rs = load_results(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    return write_report(rs, out, fmts)[1]


#: What a snapshot copies from the run folder besides the report (small text files only).
SNAPSHOT_COPIES = ("run.json", "grid.yaml", "suites")


def write_snapshot(rs: ResultSet, out: Path) -> tuple[Report, list[Path]]:
    """A small, committable record of a run in ``out``: report.md, summary.md (the compact
    tables a README shows), the PNG figures, and the run's run.json (command, commit, versions,
    hardware), grid.yaml and evaluation suites. No checkpoints and no per-example results.

    Figures and suites left in ``out`` by an earlier snapshot are replaced, not mixed in.
    """
    import shutil

    from analysis import render

    if out.exists() and not out.is_dir():
        raise ReportError(f"--snapshot: {out} exists and is not a folder")
    for stale in (out / "figures", out / "suites"):
        if stale.is_dir():
            shutil.rmtree(stale)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(rs)
    for path in write_figures(report, out):
        if path.suffix != ".png":
            path.unlink()
    report.figures = [p for p in report.figures if p.suffix == ".png"]
    written = list(report.figures)
    written += render.write_markdown(report, out)
    written += render.write_summary(report, out)
    for name in SNAPSHOT_COPIES:
        src = rs.run_dir / name
        if src.is_dir():
            shutil.copytree(src, out / name)
            written += sorted(p for p in (out / name).rglob("*") if p.is_file())
        elif src.is_file():
            shutil.copyfile(src, out / name)
            written.append(out / name)
    return report, written


def readme_markers(readme: Path, snapshot: Path) -> tuple[str, str]:
    """The comment lines that enclose a snapshot's summary in a README (paths relative to it)."""
    rel = Path(os.path.relpath(snapshot.resolve(), readme.resolve().parent)).as_posix()
    return (f"<!-- begin {rel}/summary.md (written by mpo report --snapshot {rel} --readme) -->",
            f"<!-- end {rel}/summary.md -->")


def update_readme(readme: Path, snapshot: Path) -> Path:
    """Put the snapshot's summary.md, verbatim, between its markers in ``readme``.

    Everything outside the markers is kept; the file is replaced atomically.
    """
    begin, end = readme_markers(readme, snapshot)
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"--readme {readme}: cannot read it ({exc})") from None
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ReportError(f"--readme {readme}: no block for this snapshot; put the two lines\n"
                         f"{begin}\n{end}\nwhere its summary should go")
    summary = (snapshot / "summary.md").read_text(encoding="utf-8")
    new = text[:i + len(begin)] + "\n\n" + summary.strip("\n") + "\n\n" + text[j:]
    tmp = readme.with_name(f".{readme.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(readme)
    return readme


def fmt_pct(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def source_line() -> str:
    return str(paper_results()["source"])
