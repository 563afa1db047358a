"""The report as a document: a list of blocks (headings, paragraphs, bullets, tables, images)
that ``analysis.render`` writes as Markdown, LaTeX, HTML or rich console tables.

``build_document(report, figure_root)`` lays out every section of the report; each section is
one function below (``run_facts``, ``group_section``, ``affine_section``, ...), so the order of the
report is the list in ``build_document`` and each section's content is in one place.
"""

from __future__ import annotations

import json
from pathlib import Path

from analysis.blocks import (
    Block,
    Bullets,
    Document,
    Heading,
    Image,
    Para,
    Pre,
    Table,
    TCell,
    fmt_ci,
)
from analysis.build import Report
from analysis.costs import PER_EXAMPLE, TOTAL
from analysis.document_eval import (
    audit_section,
    broken_by_section,
    curves_section,
    protocol_section,
)
from analysis.findings import METHOD as FINDINGS_METHOD
from analysis.findings import REPRODUCED, Finding
from analysis.loading import ResultSet
from analysis.metrics import Cell, GroupTable, MaskingFlag, TableRow, attack_accuracies
from analysis.paper import paper_results
from analysis.stats import fmt_pct

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
FINDINGS_HEADERS = ["finding", "group", "model", "this run (%)", "paper (%)", "p", "verdict"]
FIGURES_CAPTION = (
    "Figure 1: accuracy of the Adv_max model against each family as its budget grows (solid, "
    "shaded Wilson 95% band) and against their union (dotted); dashed: single-perturbation "
    "models against their own family at the full budget. Each point is the worst case over the "
    "attacks that run at it, per input."
)
TRAIN_COST = {
    TOTAL: ("train cost: the model's own training passes (forward + backward, attacks included, "
            "over all its training examples) relative to the mean of the group's single-attack "
            "models trained from scratch"),
    PER_EXAMPLE: ("train cost: training passes per example (forward + backward, attacks "
                  "included) relative to the mean of the group's single-attack models trained "
                  "from scratch (this run's cost records do not count the examples)"),
}
WITH_ANCESTORS = ("; in parentheses, with its ancestors' passes on the same scale (the models it "
                  "was fine-tuned from or, for a soup, its ingredients and theirs, each once)")
BEST_SOUP = ("; a soup row is the best of its family's soups (highest union accuracy, then "
             "clean); every soup is on the family's soup curve")
SOUPS_METHOD = (
    "A soup (Croce et al., CVPR 2023) averages the weights of its ingredients, models fine-tuned "
    "from one parent, and is evaluated as a model of its own with the group's suite. Each figure "
    "follows one soup family along the first ingredient's weight: clean accuracy, accuracy "
    "against each family and against their union, computed as in the tables (full budget, worst "
    "case over the family's attacks per input), with the ingredients' own results at the ends. "
    "The group's table shows only the best soup of each family (highest union accuracy, then "
    "clean); soups.csv has every point."
)


# --------------------------------------------------------------------------------------------
# Text shared by the document and the summary


def source_line() -> str:
    """Where the published numbers come from (the paper and its tables)."""
    return str(paper_results()["source"])


def tested_claims(found: list[Finding]) -> dict[str, str]:
    """The paper's statements that ``found`` tests: short name -> statement, in report order."""
    return dict((f.name, f.statement) for f in found)


def findings_rows(report: Report) -> list[list[str]]:
    return [[f.name, f.group, f.subject, f.run, f.paper,
             "—" if f.p_value is None else f"{f.p_value:.2g}", f.verdict]
            for f in report.findings]


# --------------------------------------------------------------------------------------------
# Tables


def _cell(cell: Cell | None) -> TCell:
    if cell is None or cell.estimate is None:
        return TCell("—")
    e = cell.estimate
    marks, title = "", ""
    if cell.masking is not None:
        marks = "‡"
        title = "gradient masking: " + ", ".join(f"{a} fools {n} more" for a, n in
                                                 cell.masking.attacks)
    return TCell(fmt_pct(e.percent), fmt_ci(e), bold=cell.bold, marks=marks,
                 flagged=cell.masking is not None, title=title)


def _cost(x: float) -> str:
    return "0" if x == 0 else f"{x:.2f}"


def cost_text(row: TableRow) -> str:
    """The train cost cell: own, and with the ancestors in parentheses ("0.17 (1.17)")."""
    if row.train_cost is None:
        return ""
    if row.train_cost_with_ancestors is None:
        return _cost(row.train_cost)
    return f"{_cost(row.train_cost)} ({_cost(row.train_cost_with_ancestors)})"


def group_block(table: GroupTable) -> Table:
    cost = table.has_cost
    headers = ["model", "n", *table.columns, *(["train cost"] if cost else [])]
    rows = []
    for r in table.rows:
        rows.append([TCell(r.display, marks="*" if r.incomplete else ""), TCell(str(r.n_inputs)),
                     *(_cell(r.cells[c]) for c in table.columns),
                     *([TCell(cost_text(r))] if cost else [])])
    opt = table.opt
    if opt.complete:
        rows.append([TCell("OPT"), TCell(""), TCell("")]
                    + [TCell(fmt_pct(100 * opt.per_family[f][1].value)) for f in table.families]
                    + [TCell(fmt_pct(100 * opt.union)), TCell(fmt_pct(100 * opt.average))]
                    + ([TCell("")] if cost else []))
    caption = (f"Group {table.group} ({table.dataset}; families {', '.join(table.families)}): "
               "accuracy (%) with Wilson 95% intervals")
    if cost:
        caption += "; " + TRAIN_COST[table.cost_unit]
        if any(r.train_cost_with_ancestors is not None for r in table.rows):
            caption += WITH_ANCESTORS
    if any(r.best_of > 1 for r in table.rows):
        caption += BEST_SOUP
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


def findings_block(report: Report) -> Table:
    rows = [[TCell(text) for text in row[:-1]] + [TCell(row[-1], bold=row[-1] == REPRODUCED)]
            for row in findings_rows(report)]
    return Table("The paper's findings tested on this run (paired exact tests, alpha 0.05; "
                 "verdict: reproduced = the paper's direction holds and is significant)",
                 FINDINGS_HEADERS, rows, key="findings")


# --------------------------------------------------------------------------------------------
# Sections, in report order


def run_facts(rs: ResultSet) -> list[Block]:
    """Where the results come from: folder, commit, versions, hardware, sweep wall time."""
    run = rs.run
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
    return [Bullets(tuple(meta)), Heading(2, "Method"), Para(METHODS)]


def _masking_note(f: MaskingFlag) -> str:
    return (f"‡ {f.label} / {f.family}: {f.extra} inputs fooled only by "
            f"{', '.join(f'{a} ({n})' for a, n in f.attacks)}, {f.fewer} only by the "
            f"first-order attacks ({', '.join(f.first_order)}); one-sided p = {f.p_value:.2g}")


def group_section(report: Report, table: GroupTable) -> list[Block]:
    """Tables 1/2 for one group, its masking marks explained, and each attack on its own."""
    out: list[Block] = [Heading(2, f"Group {table.group}"), group_block(table)]
    flags = [c.masking for r in table.rows for c in r.cells.values() if c.masking]
    if flags:
        out.append(Bullets(tuple(_masking_note(f) for f in flags)))
    out.append(attack_block(report, table))
    return out


def affine_section(report: Report) -> list[Block]:
    if not report.affine:
        return []
    rows = [[TCell(a.display), TCell(a.group), TCell(a.affine_family), TCell(str(a.union.n)),
             *(TCell(fmt_pct(e.percent), fmt_ci(e))
               for e in (a.union, a.affine, a.union_and_affine))] for a in report.affine]
    return [Heading(2, "Table 3: union vs affine adversary (Adv_max models)"),
            Table("Union accuracy over the affine family's components vs accuracy against "
                  "the affine attacks, on the same inputs",
                  ["model", "group", "affine family", "n", "union", "affine alone",
                   "union and affine"],
                  rows, key="affine")]


def masking_section(report: Report) -> list[Block]:
    if not report.masking:
        return []
    rows = [[TCell(f.label), TCell(f.family), TCell(", ".join(f.first_order)),
             TCell(", ".join(f"{a} ({n})" for a, n in f.attacks) or "—"),
             TCell(str(f.extra)), TCell(str(f.fewer)), TCell(f"{f.p_value:.3g}"),
             TCell("yes" if f.flagged else "no", bold=f.flagged, flagged=f.flagged)]
            for f in report.masking]
    return [Heading(2, "Gradient-masking checks"),
            Table("Inputs fooled only by gradient-free/grid attacks (extra) or only by "
                  "first-order attacks (fewer)",
                  ["model", "family", "first-order", "disagreeing attacks", "extra", "fewer",
                   "p", "flag"], rows, key="masking")]


def figures_section(report: Report, figure_root: Path) -> list[Block]:
    """The PNG figures, with paths relative to ``figure_root`` where they lie below it."""
    curves = {p for paths in [*report.curve_figures.values(), *report.soup_figures.values()]
              for p in paths}
    figures = [p for p in report.figures if p not in curves]
    if not figures:
        return []
    out: list[Block] = [Heading(2, "Figures")]
    if report.curves:
        out.append(Para(" ".join([FIGURES_CAPTION, *report.protocol_statements.values()])))
    for p in figures:
        if p.suffix == ".png":
            out.append(Image(p.relative_to(figure_root) if p.is_relative_to(figure_root) else p,
                             report.captions.get(p.stem, p.stem)))
    return out


def soups_section(report: Report, figure_root: Path) -> list[Block]:
    """Each soup family's figure along its weights, with its caption."""
    if not report.soups:
        return []
    out: list[Block] = [Heading(2, "Model soups"), Para(SOUPS_METHOD)]
    for stem, paths in report.soup_figures.items():
        for p in paths:
            if p.suffix == ".png":
                out.append(Image(p.relative_to(figure_root) if p.is_relative_to(figure_root)
                                 else p, report.captions.get(stem, stem)))
    return out


def findings_section(report: Report) -> list[Block]:
    if not report.findings:
        return []
    return [Heading(2, "The paper's findings in this run"), Para(FINDINGS_METHOD),
            Bullets(tuple(f"{name}: {statement}"
                          for name, statement in tested_claims(report.findings).items())),
            findings_block(report)]


def paper_section(report: Report) -> list[Block]:
    out: list[Block] = [Heading(2, "Paper vs this run")]
    if not report.comparisons:
        out.append(Para("No group of this run matches a published table (matched by dataset and "
                        f"set of families). Source of the published numbers: {source_line()}"))
        return out
    rows = [[TCell(c.table), TCell(c.model), TCell(c.column), TCell(fmt_pct(c.paper)),
             TCell(fmt_pct(c.run)),
             TCell("—" if c.difference is None else f"{c.difference:+.1f}")]
            for c in report.comparisons]
    out.append(Table(f"Published accuracy (%) beside this run's. Source: {source_line()}",
                     ["paper table", "model", "column", "paper", "this run", "difference"],
                     rows, key="paper"))
    return out


def completeness_section(report: Report) -> list[Block]:
    """What is missing or was skipped, and every warning and note of the run."""
    rs = report.rs
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
    return [Heading(2, "Completeness"), Bullets(tuple(items))]


def trials_section(rs: ResultSet) -> list[Block]:
    """One row per trial, then the grid file as run."""
    out: list[Block] = []
    trials = sorted(rs.models.values(), key=lambda m: (m.label, m.model_id))
    if trials:
        out += [Heading(2, "Trials"),
                Table("Trials of the run", ["model", "id", "strategy", "state", "wall time (s)"],
                      [[TCell(m.label), TCell(m.model_id), TCell(m.strategy),
                        TCell(m.state or "—"),
                        TCell("—" if m.wall_seconds is None else f"{m.wall_seconds:.1f}")]
                       for m in trials], key="trials")]
    if rs.grid_text:
        out += [Heading(2, "Grid"), Pre(rs.grid_text)]
    return out


def build_document(report: Report, figure_root: Path) -> Document:
    """Every section of the report, in order; image paths relative to ``figure_root``."""
    rs = report.rs
    doc = Document(title=f"mpo report: {rs.run.get('name') or rs.run_dir.name}")
    doc.blocks += run_facts(rs)
    doc.blocks += protocol_section(report)
    for table in report.tables:
        doc.blocks += group_section(report, table)
    doc.blocks += soups_section(report, figure_root)
    doc.blocks += affine_section(report)
    doc.blocks += masking_section(report)
    doc.blocks += figures_section(report, figure_root)
    doc.blocks += curves_section(report, figure_root)
    doc.blocks += broken_by_section(report)
    doc.blocks += audit_section(report)
    doc.blocks += findings_section(report)
    doc.blocks += paper_section(report)
    doc.blocks += completeness_section(report)
    doc.blocks += trials_section(rs)
    return doc
