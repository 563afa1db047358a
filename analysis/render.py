"""Renderers: the report's document (``analysis.document``) written as Markdown, LaTeX, HTML
and rich console tables, and summary.md (the compact tables a README shows); the CSV files are
``analysis.render_csv``'s. Every file goes through ``jobs.io``."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from analysis.blocks import Bullets, Document, Heading, Image, Para, Pre, Table, TCell
from analysis.build import Report, group_epsilon
from analysis.document import (
    FINDINGS_HEADERS,
    METHODS,
    build_document,
    findings_rows,
    group_block,
    tested_claims,
)
from analysis.document_eval import curves_block, protocol_block
from analysis.metrics import GroupTable
from analysis.stats import fmt_pct
from jobs.io import write_text_atomic

# --------------------------------------------------------------------------------------------
# Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(c: TCell, *, ci: bool = True) -> str:
    text = (f"**{c.text}**" if c.bold and c.text else c.text) + c.marks
    if ci and c.ci:
        text += " " + c.ci
    return _md_escape(text)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table; the cells are Markdown already (escaped), the headers are plain text."""
    return (["| " + " | ".join(_md_escape(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
            + ["| " + " | ".join(row) + " |" for row in rows])


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
            lines += [f"![{blk.alt}]({blk.path.as_posix()})", "", f"*{_md_escape(blk.alt)}*", ""]
        elif isinstance(blk, Table):
            lines += [f"*{_md_escape(blk.caption)}*", ""]
            lines += _md_table(blk.headers, [[_md_cell(c) for c in row] for row in blk.rows])
            lines.append("")
    return "\n".join(lines)


def write_markdown(report: Report, out_dir: Path) -> list[Path]:
    return [write_text_atomic(out_dir / "report.md",
                              to_markdown(build_document(report, out_dir)))]


# --------------------------------------------------------------------------------------------
# summary.md: the compact tables a README shows


def _summary_group(report: Report, t: GroupTable) -> list[str]:
    """One group's accuracy table without the n column and the intervals."""
    blk = group_block(t)
    eps = group_epsilon(report.rs, t.group)
    budgets = ", ".join(f"{f} {eps[f]:g}" for f in t.families
                        if f in eps and not math.isnan(eps[f]))
    n = max((r.n_inputs for r in t.rows), default=0)
    table = _md_table(blk.headers[:1] + blk.headers[2:],
                      [[_md_cell(c, ci=False) for c in row[:1] + row[2:]] for row in blk.rows])
    return [f"#### {t.group} ({t.dataset}, {n} test points; families "
            f"{', '.join(t.families)}; epsilon {budgets or '—'})", "", *table, ""]


def _summary_affine(report: Report) -> list[str]:
    if not report.affine:
        return []
    table = _md_table(["model", "group", "affine family", "union", "affine alone",
                       "union and affine"],
                      [[_md_escape(a.display), a.group, a.affine_family,
                        *(fmt_pct(e.percent) for e in (a.union, a.affine, a.union_and_affine))]
                       for a in report.affine])
    return ["#### Table 3: Adv_max against the union and the affine adversary", "", *table, ""]


def _summary_masking(report: Report) -> list[str]:
    if not report.flagged:
        return []
    items = [f"- {f.label} / {f.family}: "
             + ", ".join(f"{a} fools {n} more" for a, n in f.attacks)
             + f" than {', '.join(f.first_order)} (fewer: {f.fewer}; p = {f.p_value:.2g})"
             for f in report.flagged]
    return ["‡ gradient masking (gradient-free or grid attacks fool significantly more "
            "inputs than the first-order ones):", "", *items, ""]


def _summary_findings(report: Report) -> list[str]:
    if not report.findings:
        return []
    claims = [f"- **{name}**: {statement}"
              for name, statement in tested_claims(report.findings).items()]
    table = _md_table(FINDINGS_HEADERS,
                      [[_md_escape(x) for x in row] for row in findings_rows(report)])
    return ["#### The paper's findings in this run", "", *claims, "", *table, ""]


def _summary_paper(report: Report) -> list[str]:
    """One table per published table: the paper's number / this run's, per model and column."""
    lines: list[str] = []
    for name in dict.fromkeys(c.table for c in report.comparisons):
        comps = [c for c in report.comparisons if c.table == name]
        models = list(dict.fromkeys(c.model for c in comps))
        columns = list(dict.fromkeys(c.column for c in comps))
        cell = {(c.model, c.column): c for c in comps}
        lines += [f"#### Paper vs this run: {name}, paper / this run (%)", ""]
        lines += _md_table(["model", *columns],
                           [[_md_escape(m), *(f"{fmt_pct(cell[m, col].paper)} / "
                                              f"{fmt_pct(cell[m, col].run)}"
                                              if (m, col) in cell else "" for col in columns)]
                            for m in models])
        lines.append("")
    return lines


def _summary_table(title: str, blk: Table) -> list[str]:
    """A document table under a level-4 heading, without intervals."""
    return [f"#### {title}", "",
            *_md_table(blk.headers, [[_md_cell(c, ci=False) for c in row] for row in blk.rows]),
            ""]


def _summary_curves(report: Report) -> list[str]:
    lines: list[str] = []
    for rc in report.robustness:
        title = f"{rc.group}: area under the robustness curves and CR_ind (%)"
        lines += _summary_table(title + (" (reduced protocol)" if rc.reduced else ""),
                                curves_block(rc))
    return lines


def _summary_protocol(report: Report) -> list[str]:
    lines: list[str] = []
    for suite in report.rs.suite_info.values():
        if any(r.suite == suite.name for r in report.protocol):
            lines += _summary_table(f"Evaluation protocol: suite {suite.name} (budgets_protocol: "
                                    f"{suite.budgets_protocol})", protocol_block(report, suite))
    return lines


def _summary_audit(report: Report) -> list[str]:
    from analysis.document_eval import audit_block, audit_section

    if not report.audit:
        return []
    verdict = next(b for b in audit_section(report) if isinstance(b, Para) and "audited" in b.text)
    return [*_summary_table("Strength audit: AutoAttack standard against the suite",
                            audit_block(report)), verdict.text, ""]


def summary_markdown(report: Report) -> str:
    """A compact Markdown summary of the report for a README: each group's accuracy table
    (estimates only; bold and marks as in the report), the areas under its robustness curves and
    CR figures, Table 3, the gradient-masking flags, the paper's numbers beside this run's and
    the evaluation protocol. Its first line is a heading level 4, so it can be
    pasted under any section; every line comes from the report (nothing is typed by hand)."""
    lines: list[str] = []
    for t in report.tables:
        lines += _summary_group(report, t)
    lines += _summary_curves(report)
    lines += _summary_affine(report)
    lines += _summary_masking(report)
    lines += _summary_findings(report)
    lines += _summary_paper(report)
    lines += _summary_audit(report)
    lines += _summary_protocol(report)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_summary(report: Report, out_dir: Path) -> list[Path]:
    return [write_text_atomic(out_dir / "summary.md", summary_markdown(report))]


# --------------------------------------------------------------------------------------------
# LaTeX

_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "—": "--", "–": "--", "ε": r"$\epsilon$",
                "‡": r"$^{\ddagger}$", "≥": r"$\geq$", "≤": r"$\leq$", "±": r"$\pm$",
                "°": r"$^{\circ}$", "×": r"$\times$", "∪": r"$\cup$"}


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
    return [write_text_atomic(out_dir / "tables.tex", to_latex(doc, standalone=False)),
            write_text_atomic(out_dir / "report.tex", to_latex(doc, standalone=True))]


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
    return [write_text_atomic(out_dir / "report.html",
                              to_html(build_document(report, out_dir), out_dir))]


# --------------------------------------------------------------------------------------------
# Console


def print_console(report: Report, console: Console | None = None) -> None:
    """Print the main tables with rich (bold = not significantly below the best)."""
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
