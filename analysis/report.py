"""Write the report of a run folder: figures, Markdown, LaTeX, HTML and CSV, or a snapshot.

``make_report(run_dir, out_dir, formats)`` loads the run, builds its ``Report``
(``analysis.build``), draws the figures (PNG and SVG) and writes the requested formats
(``analysis.render``); ``write_snapshot(rs, out)`` writes the small, committable record of a run
(``mpo report --snapshot``) and ``update_readme`` puts its summary into a README.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from analysis import render, render_csv
from analysis.build import Report, build_report, toy_params
from analysis.figures import plot_curves, plot_soup, plot_sweep
from analysis.loading import ResultSet, load_results, short_id
from analysis.soup_curves import SoupCurve
from jobs.errors import MpoError
from jobs.io import read_text, write_text_atomic

FORMATS = ("md", "tex", "html", "csv")


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
    """Draw every Figure-1 plot, each group's robustness curves, each soup family's curve and the
    toy theory panel under ``out_dir/figures``."""
    fig_dir = out_dir / "figures"
    paths: list[Path] = []
    names: dict[str, int] = {}
    for c in report.curves:
        names[c.group] = names.get(c.group, 0) + 1
    for c in report.curves:
        stem = f"fig1_{c.group}" if names[c.group] == 1 else f"fig1_{c.group}_{short_id(c.model_id)}"
        paths += plot_sweep(c, fig_dir / stem)
        report.captions[stem] = (f"Figure 1, group {c.group}: {c.display}'s accuracy against each "
                                 "family and their union as the budget grows (the same attacks, "
                                 "scaled, at every point)")
    for rc in report.robustness:
        report.curve_figures[rc.group] = plot_curves(rc, fig_dir / f"curves_{rc.group}")
        paths += report.curve_figures[rc.group]
        report.captions[f"curves_{rc.group}"] = (
            f"Robustness curves, group {rc.group}: each model's accuracy against the radius, per "
            "family and for the union")
    for sc in report.soups:
        stem = f"soup_{sc.group}_{sc.name}"
        report.soup_figures[stem] = plot_soup(sc, fig_dir / stem)
        paths += report.soup_figures[stem]
        report.captions[stem] = soup_caption(sc)
    panels = _toy_panels(report, fig_dir)
    for path in panels:
        report.captions[path.stem] = (
            f"Group {path.stem.removeprefix('theory_')} on Theorem 1's plane: each trained model's "
            "adversarial risks (l_1, l_inf) beside the linear classifiers of Section 2 and the "
            "bound R_avg >= 1/2 (labels: union accuracy, as in the tables)")
    paths += panels
    report.figures = paths
    return paths


def soup_caption(sc: SoupCurve) -> str:
    """What a soup figure shows, and how its x axis orders the points."""
    first, rest = sc.labels[0], sc.labels[1:]
    text = (f"Soup {sc.family}, group {sc.group}: clean accuracy, accuracy against "
            f"{', '.join(sc.columns[1:-1])} and their union (%) of the {len(sc.soups)} soups of "
            f"{', '.join(sc.labels)}, against the weight of {first}")
    if len(sc.labels) == 2:
        text += f"; the ends are the ingredients' own results ({first} at 1, {rest[0]} at 0)"
    else:
        text += (f"; with {len(sc.labels)} ingredients the points are ordered by {first}'s "
                 "weight (ties: by the next ingredients' weights), so points at one weight are "
                 f"different mixtures; the ingredients' own results: {first} at 1, "
                 f"{', '.join(rest)} at 0")
    best = next((p for p in sc.points if p.model_id == sc.best), None)
    if best is not None:
        text += (f". Dotted line: {best.label}, the soup the group's table shows (highest union "
                 "accuracy, then clean)")
    return text + (". Shaded" if len(sc.labels) == 2 else ". Bars") + ": Wilson 95% intervals."


def parse_formats(formats: str | Iterable[str] | None) -> tuple[str, ...]:
    """'md,tex' or ['md', 'tex'] -> ('md', 'tex'); None -> every format."""
    if formats is None:
        return FORMATS
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    items = [f.strip().lower() for f in items if f.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise MpoError(f"--format: unknown format(s) {bad or items!r}; "
                         f"allowed: {', '.join(FORMATS)} (comma-separated)")
    return tuple(dict.fromkeys(items))


def write_report(rs: ResultSet, out: Path,
                 formats: str | Iterable[str] | None = None) -> tuple[Report, list[Path]]:
    """Build the report of ``rs`` and write its figures and ``formats`` to ``out``."""
    fmts = parse_formats(formats)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(rs)
    written = write_figures(report, out)
    writers = {"md": render.write_markdown, "tex": render.write_latex,
               "html": render.write_html, "csv": render_csv.write_csv}
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
    run folder and ``MpoError`` for an unknown format.
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
    if out.exists() and not out.is_dir():
        raise MpoError(f"--snapshot: {out} exists and is not a folder")
    for stale in (out / "figures", out / "suites"):
        if stale.is_dir():
            shutil.rmtree(stale)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(rs)
    for path in write_figures(report, out):
        if path.suffix != ".png":
            path.unlink()
    report.figures = [p for p in report.figures if p.suffix == ".png"]
    report.curve_figures = {g: [p for p in paths if p.suffix == ".png"]
                            for g, paths in report.curve_figures.items()}
    report.soup_figures = {s: [p for p in paths if p.suffix == ".png"]
                           for s, paths in report.soup_figures.items()}
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
    text = read_text(readme, error=MpoError, what="--readme file")
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise MpoError(f"--readme {readme}: no block for this snapshot; put the two lines\n"
                         f"{begin}\n{end}\nwhere its summary should go")
    summary = read_text(snapshot / "summary.md", error=MpoError, what="snapshot's summary")
    new = text[:i + len(begin)] + "\n\n" + summary.strip("\n") + "\n\n" + text[j:]
    return write_text_atomic(readme, new)
