"""Renderers: one document model (blocks) turned into Markdown, LaTeX, HTML and rich tables;
CSV is written from the report's data directly (tidy, one row per number)."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from analysis.findings import METHOD as FINDINGS_METHOD
from analysis.findings import REPRODUCED
from analysis.metrics import Cell, GroupTable, attack_accuracies
from analysis.report import METHODS, Report, fmt_pct, group_epsilon, source_line

# --------------------------------------------------------------------------------------------
# Document model


@dataclass(frozen=True)
class TCell:
    """A table cell: main text, optional confidence interval, bold, marks and a hover title."""

    text: str
    ci: str = ""
    bold: bool = False
    marks: str = ""
    flagged: bool = False
    title: str = ""


@dataclass
class Table:
    caption: str
    headers: list[str]
    rows: list[list[TCell]]
    key: str = ""


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str


@dataclass(frozen=True)
class Pre:
    text: str


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)


def _cell(cell: Cell | None) -> TCell:
    if cell is None or cell.estimate is None:
        return TCell("—")
    e = cell.estimate
    marks, title = "", ""
    if cell.masking is not None:
        marks = "‡"
        title = "gradient masking: " + ", ".join(f"{a} fools {n} more" for a, n in
                                                 cell.masking.attacks)
    return TCell(fmt_pct(e.percent), f"[{fmt_pct(100 * e.low)}, {fmt_pct(100 * e.high)}]",
                 bold=cell.bold, marks=marks, flagged=cell.masking is not None, title=title)


def group_block(table: GroupTable) -> Table:
    headers = ["model", "n", *table.columns]
    rows = []
    for r in table.rows:
        rows.append([TCell(r.display, marks="*" if r.incomplete else ""), TCell(str(r.n_inputs)),
                     *(_cell(r.cells[c]) for c in table.columns)])
    opt = table.opt
    if opt.complete:
        rows.append([TCell("OPT"), TCell(""), TCell("")]
                    + [TCell(fmt_pct(100 * opt.per_family[f][1].value)) for f in table.families]
                    + [TCell(fmt_pct(100 * opt.union)), TCell(fmt_pct(100 * opt.average))])
    caption = (f"Group {table.group} ({table.dataset}; families {', '.join(table.families)}): "
               "accuracy (%) with Wilson 95% intervals")
    return Table(caption, headers, rows, key=table.group)


def attack_block(report: Report, table: GroupTable) -> Table:
    """Accuracy against each attack alone (full budget), one row per model of the group."""
    attacks, acc = attack_accuracies(report.rs, table.group)
    rows = [[TCell(r.display)] + [TCell(fmt_pct(acc[r.model.model_id][a].percent))
                                  if a in acc.get(r.model.model_id, {}) else TCell("—")
                                  for a in attacks]
            for r in table.rows]
    return Table(f"Group {table.group}: accuracy (%) against each attack alone at the full budget "
                 "(the family columns above take the worst case over these, per input)",
                 ["model", *attacks], rows, key=f"{table.group}-attacks")


FINDINGS_HEADERS = ["finding", "group", "model", "this run (%)", "paper (%)", "p", "verdict"]


def _findings_rows(report: Report) -> list[list[str]]:
    return [[f.name, f.group, f.subject, f.run, f.paper,
             "—" if f.p_value is None else f"{f.p_value:.2g}", f.verdict]
            for f in report.findings]


def findings_block(report: Report) -> Table:
    rows = [[TCell(text) for text in row[:-1]] + [TCell(row[-1], bold=row[-1] == REPRODUCED)]
            for row in _findings_rows(report)]
    return Table("The paper's findings tested on this run (paired exact tests, alpha 0.05; "
                 "verdict: reproduced = the paper's direction holds and is significant)",
                 FINDINGS_HEADERS, rows, key="findings")


def build_document(report: Report, figure_root: Path) -> Document:
    rs = report.rs
    run = rs.run
    doc = Document(title=f"mpo report: {run.get('name') or rs.run_dir.name}")
    b = doc.blocks
    meta = [f"run folder: {rs.run_dir}"]
    for key in ("created", "git_commit", "mpo_version", "command"):
        if run.get(key):
            meta.append(f"{key}: {run[key]}")
    for key in ("versions", "hardware"):
        if run.get(key):
            meta.append(f"{key}: {json.dumps(run[key], sort_keys=True)}")
    sweeps = [s for s in run.get("sweeps") or [] if isinstance(s, dict)]
    if sweeps:
        total = sum(float(s.get("wall_seconds") or 0.0) for s in sweeps)
        meta.append(f"sweep wall time: {total / 60:.1f} min in {len(sweeps)} driver run(s), "
                    f"last finished {sweeps[-1].get('finished', '?')}")
    b.append(Bullets(tuple(meta)))
    b += [Heading(2, "Method"), Para(METHODS)]
    for table in report.tables:
        b.append(Heading(2, f"Group {table.group}"))
        b.append(group_block(table))
        flags = [c.masking for r in table.rows for c in r.cells.values() if c.masking]
        if flags:
            b.append(Bullets(tuple(
                f"‡ {f.label} / {f.family}: {f.extra} inputs fooled only by "
                f"{', '.join(f'{a} ({n})' for a, n in f.attacks)}, {f.fewer} only by the "
                f"first-order attacks ({', '.join(f.first_order)}); one-sided p = {f.p_value:.2g}"
                for f in flags)))
        b.append(attack_block(report, table))
    if report.affine:
        b.append(Heading(2, "Table 3: union vs affine adversary (Adv_max models)"))
        rows = [[TCell(a.display), TCell(a.group), TCell(a.affine_family), TCell(str(a.union.n)),
                 *(TCell(fmt_pct(e.percent), f"[{fmt_pct(100 * e.low)}, {fmt_pct(100 * e.high)}]")
                   for e in (a.union, a.affine, a.union_and_affine))] for a in report.affine]
        b.append(Table("Union accuracy over the affine family's components vs accuracy against "
                       "the affine attacks, on the same inputs",
                       ["model", "group", "affine family", "n", "union", "affine alone",
                        "union and affine"],
                       rows, key="affine"))
    if report.masking:
        b.append(Heading(2, "Gradient-masking checks"))
        rows = [[TCell(f.label), TCell(f.family), TCell(", ".join(f.first_order)),
                 TCell(", ".join(f"{a} ({n})" for a, n in f.attacks) or "—"),
                 TCell(str(f.extra)), TCell(str(f.fewer)), TCell(f"{f.p_value:.3g}"),
                 TCell("yes" if f.flagged else "no", bold=f.flagged, flagged=f.flagged)]
                for f in report.masking]
        b.append(Table("Inputs fooled only by gradient-free/grid attacks (extra) or only by "
                       "first-order attacks (fewer)",
                       ["model", "family", "first-order", "disagreeing attacks", "extra", "fewer",
                        "p", "flag"], rows, key="masking"))
    if report.figures:
        b.append(Heading(2, "Figures"))
        b.append(Para("Accuracy of the Adv_max model against each family as its budget grows "
                      "(solid, shaded Wilson 95% band) and against their union (dotted); dashed: "
                      "single-perturbation models against their own family at the full budget. "
                      "Points below the full budget use only the attacks the suite sweeps "
                      "(those with budgets); the full-budget point is the worst case over every "
                      "attack of the family."))
        for p in report.figures:
            if p.suffix == ".png":
                b.append(Image(p.relative_to(figure_root) if p.is_relative_to(figure_root) else p,
                               p.stem))
    if report.findings:
        b += [Heading(2, "The paper's findings in this run"), Para(FINDINGS_METHOD),
              Bullets(tuple(f"{name}: {statement}" for name, statement in
                            dict.fromkeys((f.name, f.statement) for f in report.findings))),
              findings_block(report)]
    b.append(Heading(2, "Paper vs this run"))
    if report.comparisons:
        rows = [[TCell(c.table), TCell(c.model), TCell(c.column), TCell(fmt_pct(c.paper)),
                 TCell(fmt_pct(c.run)),
                 TCell("—" if c.difference is None else f"{c.difference:+.1f}")]
                for c in report.comparisons]
        b.append(Table(f"Published accuracy (%) beside this run's. Source: {source_line()}",
                       ["paper table", "model", "column", "paper", "this run", "difference"],
                       rows, key="paper"))
    else:
        b.append(Para("No group of this run matches a published table (matched by dataset and "
                      f"set of families). Source of the published numbers: {source_line()}"))
    b.append(Heading(2, "Completeness"))
    items = []
    for mid in rs.missing_trials:
        m = rs.models.get(mid)
        state = f" (trial state {m.state})" if m and m.state else ""
        items.append(f"missing trial {m.label if m else ''} {mid}: no results{state}")
    for m in rs.failed_trials:
        if m.model_id not in rs.missing_trials:
            items.append(f"failed trial {m.label} {m.model_id} (state {m.state}); "
                         "its existing results are used")
    for s in rs.missing_shards:
        items.append(f"missing shard {s.model_id} {s.attack} [{s.start}, {s.stop}): {s.reason}")
    for s in rs.skipped_files:
        items.append(f"skipped file {s.path.relative_to(rs.run_dir)}: {s.reason}")
    if rs.manifest is not None and not items:
        items.append("every expected trial and shard is present")
    if rs.manifest is None:
        items.append("no manifest.json: expected trials and shards unknown; groups inferred "
                     "from the results files")
    items += rs.warnings + report.notes
    b.append(Bullets(tuple(items)))
    trials = sorted(rs.models.values(), key=lambda m: (m.label, m.model_id))
    if trials:
        b.append(Heading(2, "Trials"))
        b.append(Table("Trials of the run", ["model", "id", "strategy", "state", "wall time (s)"],
                       [[TCell(m.label), TCell(m.model_id), TCell(m.strategy),
                         TCell(m.state or "—"),
                         TCell("—" if m.wall_seconds is None else f"{m.wall_seconds:.1f}")]
                        for m in trials], key="trials"))
    if rs.grid_text:
        b += [Heading(2, "Grid"), Pre(rs.grid_text)]
    return doc


# --------------------------------------------------------------------------------------------
# Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(c: TCell) -> str:
    text = f"**{c.text}**" if c.bold and c.text else c.text
    parts = [text + c.marks]
    if c.ci:
        parts.append(c.ci)
    return _md_escape(" ".join(parts))


def to_markdown(doc: Document) -> str:
    lines = [f"# {doc.title}", ""]
    for blk in doc.blocks:
        if isinstance(blk, Heading):
            lines += ["#" * blk.level + " " + blk.text, ""]
        elif isinstance(blk, Para):
            lines += [blk.text, ""]
        elif isinstance(blk, Bullets):
            lines += [f"- {item}" for item in blk.items] + [""]
        elif isinstance(blk, Pre):
            lines += ["```", blk.text.rstrip("\n"), "```", ""]
        elif isinstance(blk, Image):
            lines += [f"![{blk.alt}]({blk.path.as_posix()})", ""]
        elif isinstance(blk, Table):
            lines += [f"*{_md_escape(blk.caption)}*", "",
                      "| " + " | ".join(_md_escape(h) for h in blk.headers) + " |",
                      "|" + "|".join("---" for _ in blk.headers) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in blk.rows]
            lines.append("")
    return "\n".join(lines)


def write_markdown(report: Report, out_dir: Path) -> list[Path]:
    path = out_dir / "report.md"
    path.write_text(to_markdown(build_document(report, out_dir)), encoding="utf-8")
    return [path]


def _summary_cell(c: TCell) -> str:
    text = f"**{c.text}**" if c.bold and c.text else c.text
    return _md_escape(text + c.marks)


def _md_rows(headers: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


def summary_markdown(report: Report) -> str:
    """A compact Markdown summary of the report for a README: each group's accuracy table
    (estimates only; bold and marks as in the report), Table 3, the gradient-masking flags and
    the paper's numbers beside this run's. Its first line is a heading level 4, so it can be
    pasted under any section; every line comes from the report (nothing is typed by hand)."""
    lines: list[str] = []
    for t in report.tables:
        blk = group_block(t)
        eps = group_epsilon(report.rs, t.group)
        budgets = ", ".join(f"{f} {eps[f]:g}" for f in t.families
                            if f in eps and not math.isnan(eps[f]))
        n = max((r.n_inputs for r in t.rows), default=0)
        lines += [f"#### {t.group} ({t.dataset}, {n} test points; families "
                  f"{', '.join(t.families)}; epsilon {budgets or '—'})", ""]
        lines += _md_rows(blk.headers[:1] + blk.headers[2:],
                          [[_summary_cell(c) for c in row[:1] + row[2:]] for row in blk.rows])
        lines.append("")
    if report.affine:
        lines += ["#### Table 3: Adv_max against the union and the affine adversary", ""]
        lines += _md_rows(["model", "group", "affine family", "union", "affine alone",
                           "union and affine"],
                          [[_md_escape(a.display), a.group, a.affine_family,
                            *(fmt_pct(e.percent) for e in (a.union, a.affine, a.union_and_affine))]
                           for a in report.affine])
        lines.append("")
    if report.flagged:
        lines += ["‡ gradient masking (gradient-free or grid attacks fool significantly more "
                  "inputs than the first-order ones):", ""]
        lines += [f"- {f.label} / {f.family}: "
                  + ", ".join(f"{a} fools {n} more" for a, n in f.attacks)
                  + f" than {', '.join(f.first_order)} (fewer: {f.fewer}; p = {f.p_value:.2g})"
                  for f in report.flagged]
        lines.append("")
    if report.findings:
        lines += ["#### The paper's findings in this run", ""]
        lines += [f"- **{name}**: {statement}"
                  for name, statement in dict.fromkeys((f.name, f.statement)
                                                       for f in report.findings)]
        lines.append("")
        lines += _md_rows(FINDINGS_HEADERS,
                          [[_md_escape(x) for x in row] for row in _findings_rows(report)])
        lines.append("")
    if report.comparisons:
        for name in dict.fromkeys(c.table for c in report.comparisons):
            comps = [c for c in report.comparisons if c.table == name]
            models = list(dict.fromkeys(c.model for c in comps))
            columns = list(dict.fromkeys(c.column for c in comps))
            cell = {(c.model, c.column): c for c in comps}
            lines += [f"#### Paper vs this run: {name}, paper / this run (%)", ""]
            lines += _md_rows(["model", *columns],
                              [[_md_escape(m), *(f"{fmt_pct(cell[m, col].paper)} / "
                                                 f"{fmt_pct(cell[m, col].run)}"
                                                 if (m, col) in cell else "" for col in columns)]
                               for m in models])
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def write_summary(report: Report, out_dir: Path) -> list[Path]:
    path = out_dir / "summary.md"
    path.write_text(summary_markdown(report), encoding="utf-8")
    return [path]


# --------------------------------------------------------------------------------------------
# LaTeX

_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "—": "--", "–": "--", "ε": r"$\epsilon$",
                "‡": r"$^{\ddagger}$", "≥": r"$\geq$", "≤": r"$\leq$"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def _tex_cell(c: TCell) -> str:
    text = tex_escape(c.text)
    if c.bold and c.text:
        text = rf"\textbf{{{text}}}"
    if c.marks == "‡":
        text += r"$^{\ddagger}$"
    elif c.marks:
        text += rf"$^{{{c.marks}}}$"
    if c.ci:
        text += rf" {{\scriptsize {tex_escape(c.ci)}}}"
    return text


def tex_table(t: Table) -> str:
    spec = "l" + "r" * (len(t.headers) - 1)
    lines = [r"\begin{table}[ht]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(t.caption)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(tex_escape(h) for h in t.headers) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex_cell(c) for c in row) + r" \\" for row in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def to_latex(doc: Document, *, standalone: bool) -> str:
    tables = [b for b in doc.blocks if isinstance(b, Table) and b.key != "trials"]
    body = "\n".join(tex_table(t) for t in tables)
    if not standalone:
        return ("% mpo report tables; needs \\usepackage{booktabs}\n"
                f"% {tex_escape(METHODS)}\n" + body)
    return "\n".join([
        r"\documentclass{article}", r"\usepackage[utf8]{inputenc}", r"\usepackage[T1]{fontenc}",
        r"\usepackage{booktabs}", r"\usepackage[margin=2cm,landscape]{geometry}",
        r"\begin{document}", rf"\section*{{{tex_escape(doc.title)}}}", tex_escape(METHODS), "",
        body, r"\end{document}", ""])


def write_latex(report: Report, out_dir: Path) -> list[Path]:
    doc = build_document(report, out_dir)
    tables = out_dir / "tables.tex"
    tables.write_text(to_latex(doc, standalone=False), encoding="utf-8")
    full = out_dir / "report.tex"
    full.write_text(to_latex(doc, standalone=True), encoding="utf-8")
    return [tables, full]


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
caption{caption-side:top;text-align:left;font-style:italic;padding:.3em 0}
.ci{color:#777;font-size:.8em}
.masked{color:#c00}
pre{background:#f6f6f6;padding:.8em;overflow:auto}
img{max-width:100%}
"""


def _html_cell(c: TCell, tag: str = "td") -> str:
    text = html.escape(c.text)
    if c.bold and c.text:
        text = f"<strong>{text}</strong>"
    if c.marks:
        text += f"<sup>{html.escape(c.marks)}</sup>"
    if c.ci:
        text += f' <span class="ci">{html.escape(c.ci)}</span>'
    attrs = ' class="masked"' if c.flagged else ""
    if c.title:
        attrs += f' title="{html.escape(c.title, quote=True)}"'
    return f"<{tag}{attrs}>{text}</{tag}>"


def to_html(doc: Document, image_root: Path) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(doc.title)}</title>", f"<style>{_CSS}</style>", "</head>",
           "<body>", f"<h1>{html.escape(doc.title)}</h1>"]
    for blk in doc.blocks:
        if isinstance(blk, Heading):
            out.append(f"<h{blk.level}>{html.escape(blk.text)}</h{blk.level}>")
        elif isinstance(blk, Para):
            out.append(f"<p>{html.escape(blk.text)}</p>")
        elif isinstance(blk, Bullets):
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in blk.items)
                       + "</ul>")
        elif isinstance(blk, Pre):
            out.append(f"<pre>{html.escape(blk.text)}</pre>")
        elif isinstance(blk, Image):
            data = base64.b64encode((image_root / blk.path).read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(blk.alt, quote=True)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>'
                       f"{html.escape(blk.alt)}</figcaption></figure>")
        elif isinstance(blk, Table):
            out.append(f"<table><caption>{html.escape(blk.caption)}</caption><thead><tr>"
                       + "".join(f"<th>{html.escape(h)}</th>" for h in blk.headers)
                       + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in blk.rows]
            out.append("</tbody></table>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def write_html(report: Report, out_dir: Path) -> list[Path]:
    path = out_dir / "report.html"
    path.write_text(to_html(build_document(report, out_dir), out_dir), encoding="utf-8")
    return [path]


# --------------------------------------------------------------------------------------------
# CSV


def _num(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.12g}"


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_csv(report: Report, out_dir: Path) -> list[Path]:
    """Tidy CSV files: tables, affine, masking, paper_vs_run, sweep, completeness."""
    rows = []
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
                             int(r.incomplete)])
        if t.opt.complete:
            rows.append([t.group, t.dataset, "OPT", "", "", "union", _num(t.opt.union), "", "",
                         "", "", 0, "", 0])
            rows.append([t.group, t.dataset, "OPT", "", "", "average", _num(t.opt.average), "",
                         "", "", "", 0, "", 0])
    paths = [_write(out_dir / "tables.csv",
                    ["group", "dataset", "model", "model_id", "strategy", "column", "accuracy",
                     "ci_low", "ci_high", "k", "n", "bold", "masking_attacks", "incomplete"],
                    rows)]
    paths.append(_write(out_dir / "affine.csv",
                        ["group", "model", "model_id", "affine_family", "n", "union", "affine",
                         "union_and_affine"],
                        [[a.group, a.display, a.model_id, a.affine_family, a.union.n,
                          _num(a.union.value), _num(a.affine.value),
                          _num(a.union_and_affine.value)] for a in report.affine]))
    paths.append(_write(out_dir / "masking.csv",
                        ["model", "model_id", "family", "first_order", "disagreeing", "extra",
                         "fewer", "n", "p_value", "flagged"],
                        [[f.label, f.model_id, f.family, ";".join(f.first_order),
                          ";".join(f"{a}:{n}" for a, n in f.attacks), f.extra, f.fewer, f.n,
                          _num(f.p_value), int(f.flagged)] for f in report.masking]))
    paths.append(_write(out_dir / "findings.csv",
                        ["claim", "statement", "group", "model", "run", "paper", "p_value",
                         "verdict"],
                        [[f.claim, f.statement, f.group, f.subject, f.run, f.paper,
                          _num(f.p_value), f.verdict] for f in report.findings]))
    paths.append(_write(out_dir / "paper_vs_run.csv",
                        ["paper_table", "group", "model", "column", "paper", "run", "difference"],
                        [[c.table, c.group, c.model, c.column, _num(c.paper), _num(c.run),
                          _num(c.difference)] for c in report.comparisons]))
    sweep = []
    for cv in report.curves:
        for fam, pts in [*cv.family.items(), ("union", cv.union)]:
            for t, e in pts:
                sweep.append([cv.group, cv.display, cv.model_id, fam, _num(t),
                              _num(cv.epsilon.get(fam, math.nan) * t if fam != "union" else None),
                              _num(e.value), _num(e.low), _num(e.high), e.n])
    paths.append(_write(out_dir / "sweep.csv",
                        ["group", "model", "model_id", "family", "budget", "epsilon", "accuracy",
                         "ci_low", "ci_high", "n"], sweep))
    rs = report.rs
    missing = [["trial", mid, "", "", "", "no results"] for mid in rs.missing_trials]
    missing += [["shard", s.model_id, s.attack, s.start, s.stop, s.reason]
                for s in rs.missing_shards]
    missing += [["file", str(s.path.relative_to(rs.run_dir)), "", "", "", s.reason]
                for s in rs.skipped_files]
    paths.append(_write(out_dir / "completeness.csv",
                        ["what", "model_id_or_path", "attack", "start", "stop", "reason"],
                        missing))
    return paths


# --------------------------------------------------------------------------------------------
# Console


def print_console(report: Report, console=None) -> None:
    """Print the main tables with rich (bold = not significantly below the best)."""
    from rich.console import Console
    from rich.table import Table as RichTable

    console = console or Console()
    for t in report.tables:
        blk = group_block(t)
        rt = RichTable(title=blk.caption, title_justify="left")
        for i, h in enumerate(blk.headers):
            rt.add_column(h, justify="left" if i == 0 else "right")
        for row in blk.rows:
            cells = []
            for c in row:
                text = c.text + c.marks
                style = ("bold " if c.bold else "") + ("red" if c.flagged else "")
                cells.append(f"[{style.strip()}]{text}[/]" if style.strip() else text)
            rt.add_row(*cells)
        console.print(rt)
    if report.affine:
        rt = RichTable(title="Table 3: union vs affine (Adv_max)", title_justify="left")
        for h in ("model", "group", "affine", "union", "affine acc."):
            rt.add_column(h)
        for a in report.affine:
            rt.add_row(a.display, a.group, a.affine_family, fmt_pct(a.union.percent),
                       fmt_pct(a.affine.percent))
        console.print(rt)
    for f in report.flagged:
        console.print(f"[red]‡ gradient masking[/]: {f.label} / {f.family}: "
                      + ", ".join(f"{a} fools {n} inputs the first-order attacks miss"
                                  for a, n in f.attacks)
                      + f" (p = {f.p_value:.2g})")
    rs = report.rs
    problems = len(rs.missing_trials) + len(rs.missing_shards) + len(rs.skipped_files)
    if problems:
        console.print(f"[yellow]incomplete run[/]: {len(rs.missing_trials)} missing trials, "
                      f"{len(rs.missing_shards)} missing shards, {len(rs.skipped_files)} skipped "
                      "files (listed in the report)")
        for s in rs.skipped_files:
            console.print(f"[yellow]skipped[/] {s.path.relative_to(rs.run_dir)}: {s.reason}")
