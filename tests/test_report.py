"""`mpo report` and analysis.report.make_report on synthetic run folders: every format is
written and parses, the theory panel hook, the paper comparison, and bad input."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from click.testing import CliRunner

from analysis import FORMATS, RunFolderError, build_report, load_results, make_report
from analysis.paper import budget_notes, compare, match_table, paper_results
from analysis.report import parse_formats
from analysis.stats import Estimate
from jobs.errors import MpoError
from orchestrator.cli import main
from tests.runfolder import build_run_folder

VOID = {"meta", "img", "br", "hr", "link", "input"}


class StrictParser(HTMLParser):
    """Collect tags, check that every non-void element is closed in order, keep img sources."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return build_run_folder(root / "run", n=120, shard_size=60, failed_trials=["toy-avg"],
                            drop_shards=[("toy-max", "pgd_l1", 60)],
                            old_schema_shards=[("toy-nat", "pgd_linf", 0)])


@pytest.fixture(scope="module")
def toy_report(toy_run):
    """The default report (every format, RUN_DIR/report), without the theory panel (tested
    separately with a stand-in) so the expected file set does not depend on analysis.theory_plot."""
    out = toy_run / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "analysis.theory_plot", types.SimpleNamespace())
        written = make_report(toy_run, None, None)
    return out, written


def test_every_format_written(toy_report):
    out, written = toy_report
    names = {p.relative_to(out).as_posix() for p in written}
    assert names == {
        "figures/fig1_toy.png", "figures/fig1_toy.svg", "figures/curves_toy.png",
        "figures/curves_toy.svg", "report.md", "tables.tex", "report.tex",
        "report.html", "tables.csv", "affine.csv", "masking.csv", "findings.csv",
        "paper_vs_run.csv", "sweep.csv", "curves.csv", "robustness.csv", "protocol.csv",
        "broken_by.csv", "audit.csv", "completeness.csv",
    }
    assert all(p.stat().st_size > 0 for p in written)


def test_html_is_valid_and_self_contained(toy_report):
    out, _ = toy_report
    parser = StrictParser()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert parser.tags[0] == "html" and "table" in parser.tags
    assert len(parser.images) == 2  # Figure 1 and the robustness curves
    for image in parser.images:
        assert image.startswith("data:image/png;base64,")
        png = base64.b64decode(image.split(",", 1)[1])
        assert mpimg.imread(io.BytesIO(png), format="png").shape[2] in (3, 4)
    text = " ".join(parser.text)
    for needed in ("deadbeef", "McNemar", "Wilson", "missing trial", "toy-avg", "ERROR",
                   "wall time", "schema version 0", "pointwise_l1"):
        assert needed in text, needed


def test_png_and_svg_open(toy_report):
    out, _ = toy_report
    img = mpimg.imread(out / "figures" / "fig1_toy.png")
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert (out / "figures" / "fig1_toy.svg").read_text().lstrip().startswith("<?xml")


def test_markdown_tables(toy_report):
    out, _ = toy_report
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| model | n | clean | linf | l1 | union | average |" in md
    caption = ("Figure 1, group toy: Adv_max's accuracy against each family and their union as "
               "the budget grows (the same attacks, scaled, at every point)")
    assert f"![{caption}](figures/fig1_toy.png)" in md and f"*{caption}*" in md  # not a file name
    table_lines = [ln for ln in md.splitlines() if ln.startswith("| Adv_inf ")]
    assert "‡" in table_lines[0]  # pointwise_l1 reveals masking of Adv_inf's l1 robustness
    assert re.search(r"\| Adv_max\* \| 60 \|", md)  # missing shard: marked, fewer inputs
    assert "missing shard toy-max pgd_l1 [60, 120): no results file" in md


def _check_latex(text: str) -> None:
    begins = re.findall(r"\\begin\{(\w+)\}", text)
    ends = re.findall(r"\\end\{(\w+)\}", text)
    assert sorted(begins) == sorted(ends)
    depth = 0
    for ch in re.sub(r"\\[{}]", "", text):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0


def test_latex_balanced_and_compiles_if_possible(toy_report, tmp_path):
    out, _ = toy_report
    for name in ("tables.tex", "report.tex"):
        _check_latex((out / name).read_text(encoding="utf-8"))
    tex = (out / "report.tex").read_text(encoding="utf-8")
    assert r"\begin{tabular}" in tex and r"\textbf{" in tex and r"$^{\ddagger}$" in tex
    if shutil.which("pdflatex"):
        shutil.copy(out / "report.tex", tmp_path / "report.tex")
        subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
                       cwd=tmp_path, check=True, capture_output=True, timeout=60)
        assert (tmp_path / "report.pdf").exists()


def test_csv_matches_the_tables(toy_report, toy_run):
    out, _ = toy_report
    with (out / "tables.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    report = build_report(load_results(toy_run))
    table = report.tables[0]
    for r in table.rows:
        for col in table.columns:
            (match,) = [x for x in rows if x["model_id"] == r.model.model_id
                        and x["column"] == col]
            assert float(match["accuracy"]) == pytest.approx(r.cells[col].estimate.value)
            assert match["bold"] == str(int(r.cells[col].bold))
    with (out / "completeness.csv").open() as fh:
        what = [row["what"] for row in csv.DictReader(fh)]
    assert what.count("trial") == 1 and what.count("shard") == 2 and what.count("file") == 1
    with (out / "sweep.csv").open() as fh:
        sweep = list(csv.DictReader(fh))
    assert {r["family"] for r in sweep} == {"linf", "l1", "union"}
    assert sorted({float(r["budget"]) for r in sweep}) == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_theory_panel_is_called_for_toy(toy_run, tmp_path, monkeypatch):
    calls = []

    def toy_panel(params, models, path_without_suffix):
        calls.append((params, models))
        path = Path(str(path_without_suffix) + ".png")
        shutil.copy(path.parent / "fig1_toy.png", path)  # any PNG will do; Figure 1 is drawn first
        return [path]

    monkeypatch.setitem(sys.modules, "analysis.theory_plot",
                        types.SimpleNamespace(toy_panel=toy_panel))
    written = make_report(toy_run, tmp_path / "out", "html")
    (params, models), = calls
    assert params == {"d": 99, "alpha": 2.0, "p0": 0.9, "x0": "sign"}
    assert [m["label"] for m in models] == ["Nat", "Adv_inf", "Adv_1", "Adv_max"]
    for m in models:
        assert 0 <= m["risk_union"] <= 1 and m["risk_union"] >= max(m["risk_linf"], m["risk_l1"])
    assert tmp_path / "out" / "figures" / "theory_toy.png" in written
    parser = StrictParser()
    parser.feed((tmp_path / "out" / "report.html").read_text(encoding="utf-8"))
    assert len(parser.images) == 3  # Figure 1, the robustness curves and the theory panel


@pytest.mark.parametrize(
    ("module", "note"),
    [(types.SimpleNamespace(), "theory panel skipped"),
     (types.SimpleNamespace(toy_panel=lambda *a: 1 / 0), "theory panel failed (ZeroDivisionError")],
    ids=["absent", "raises"],
)
def test_theory_panel_problems_become_notes(toy_run, tmp_path, monkeypatch, module, note):
    monkeypatch.setitem(sys.modules, "analysis.theory_plot", module)
    make_report(toy_run, tmp_path, "md")
    assert note in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_paper_comparison_for_mnist_groups(tmp_path):
    run = build_run_folder(tmp_path / "lp", preset="mnist-lp", n=60, shard_size=60)
    report = build_report(load_results(run))
    comps = {(c.model, c.column): c for c in report.comparisons}
    assert comps[("Adv_max", "union")].paper == 52.4
    assert comps[("Nat", "l1")].paper == 12.4
    run_value = report.tables[0].rows[-1].cells["union"].estimate.percent
    assert comps[("Adv_max", "union")].run == pytest.approx(run_value)
    assert comps[("Adv_max", "union")].difference == pytest.approx(run_value - 52.4)
    rt = build_report(load_results(build_run_folder(tmp_path / "rt", preset="mnist-rt", n=60,
                                                    shard_size=60)))
    by = {(c.table, c.model, c.column): c for c in rt.comparisons}
    assert by[("Table 1 (MNIST, l_inf / RT)", "OPT", "union")].run == pytest.approx(
        100 * rt.tables[0].opt.union)
    table3 = by[("Table 3 (MNIST, l_inf & RT)", "Adv_max", "affine")]
    assert table3.paper == 62.6
    assert rt.affine[0].affine_family == "linf+rt"
    # the paper's affine set contains the union: compared with "union and affine", not the
    # affine attacks alone
    row = dataclasses.replace(rt.affine[0], affine=Estimate(k=60, n=60))  # alone: fools nothing
    (c,) = [c for c in compare(rt.tables, [row])
            if c.table.startswith("Table 3") and c.column == "affine"]
    assert c.run == pytest.approx(row.union_and_affine.percent) and c.run < 100.0


def test_paper_results_file_and_budget_notes(tmp_path):
    data = paper_results()
    assert "Tramer & Boneh" in data["source"]
    assert match_table("cifar10", ["l1", "linf"])["rows"]["Adv_max"] == {"union": 61.1,
                                                                          "average": 64.1}
    assert match_table("toy", ["linf", "l1"]) is None
    report = build_report(load_results(build_run_folder(tmp_path, preset="mnist-lp", n=20,
                                                        shard_size=20)))
    notes = budget_notes(report.tables[0], {"linf": 0.1, "l1": 10.0, "l2": 2.0})
    assert notes == ["mnist-lp: this run's linf budget is 0.1, the paper's 0.3"]
    assert compare([], []) == []


def test_cli_report(toy_run, tmp_path):
    result = CliRunner().invoke(main, ["report", str(toy_run), "--out", str(tmp_path),
                                       "--format", "md,csv"])
    assert result.exit_code == 0, result.output
    assert "Adv_max" in result.output and "gradient masking" in result.output
    assert "1 missing trials, 2 missing shards, 1 skipped files" in result.output
    assert (tmp_path / "report.md").exists() and (tmp_path / "tables.csv").exists()
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["report", "{missing}"], "does not exist"),
     (["report", "{empty}"], "has no results"),
     (["report", "{run}", "--format", "md,pdf"], "unknown format(s) ['pdf']")],
    ids=["missing", "empty", "bad-format"],
)
def test_cli_errors(toy_run, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "run": toy_run}
    argv = [a.format(**paths) for a in args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code != 0
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_make_report_errors(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        make_report(tmp_path / "nope")
    with pytest.raises(MpoError, match=r"allowed: md, tex, html, csv"):
        parse_formats("docx")
    assert parse_formats(None) == FORMATS
    assert parse_formats(["html", " md ", "html"]) == ("html", "md")


def test_report_without_manifest(tmp_path):
    run = build_run_folder(tmp_path, n=40, shard_size=40, manifest=False)
    written = make_report(run, tmp_path / "out", "md")
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "no manifest.json" in md and "| Adv_avg |" in md
    assert any(p.name == "fig1_toy.png" for p in written)


def test_snapshot_is_small_complete_and_replaces_stale_files(tmp_path):
    run = build_run_folder(tmp_path / "rt", preset="mnist-rt", n=60, shard_size=60)
    (run / "suites").mkdir()
    (run / "suites" / "mnist-mini.yaml").write_text("name: mnist-mini\n")
    snap = tmp_path / "snap"
    (snap / "figures").mkdir(parents=True)
    (snap / "figures" / "fig1_from_an_old_run.png").write_bytes(b"stale")
    result = CliRunner().invoke(main, ["report", str(run), "--snapshot", str(snap), "--quiet"])
    assert result.exit_code == 0, result.output
    files = {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()}
    assert files == {"report.md", "summary.md", "run.json", "grid.yaml",
                     "suites/mnist-mini.yaml", "figures/fig1_mnist-rt.png",
                     "figures/curves_mnist-rt.png"}
    assert mpimg.imread(snap / "figures" / "fig1_mnist-rt.png").shape[0] > 100
    assert (snap / "run.json").read_text() == (run / "run.json").read_text()
    report = build_report(load_results(run))
    summary = (snap / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith(
        "#### mnist-rt (mnist, 60 test points; families linf, rt; epsilon linf 0.3)\n")
    adv_max = next(r for r in report.tables[0].rows if r.display == "Adv_max")
    union = f"{adv_max.cells['union'].estimate.percent:.1f}"
    row = next(ln for ln in summary.splitlines() if ln.startswith("| Adv_max |"))
    assert union in row.split(" | ")[-2]
    assert "[" not in row  # no intervals in the summary
    paper_row = [ln for ln in summary.splitlines() if ln.startswith("| Adv_max | 83.8 / ")]
    assert paper_row and f"83.8 / {union}" in paper_row[0]
    assert "#### Table 3: Adv_max against the union and the affine adversary" in summary
    assert "](figures/fig1_mnist-rt.png)" in (snap / "report.md").read_text()


def test_snapshot_option_errors(toy_run, tmp_path):
    result = CliRunner().invoke(main, ["report", str(toy_run), "--snapshot", str(tmp_path / "s"),
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--snapshot and --out are exclusive" in result.output
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["report", str(toy_run), "--snapshot", str(tmp_path / "file")])
    assert result.exit_code != 0 and "a file, not a folder" in result.output


def test_readme_block_is_the_snapshots_summary(tmp_path):
    """--readme replaces only the snapshot's marked block, verbatim, and says which markers it
    needs when they are missing (after writing the snapshot: nothing is lost)."""
    run = build_run_folder(tmp_path / "rt", preset="mnist-rt", n=60, shard_size=60)
    info = json.loads((run / "run.json").read_text())
    info["sweeps"] = [{"started": "2025-01-01T00:00:00+00:00", "wall_seconds": 90.0,
                       "finished": "2025-01-01T00:01:30+00:00"},
                      {"started": "2025-01-01T01:00:00+00:00", "wall_seconds": 30.0,
                       "finished": "2025-01-01T01:00:30+00:00"}]
    (run / "run.json").write_text(json.dumps(info))
    readme = tmp_path / "README.md"
    snap = tmp_path / "results" / "rt"
    readme.write_text("# title\n\nno markers here\n")
    args = ["report", str(run), "--snapshot", str(snap), "--readme", str(readme), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "no block for this snapshot" in result.output
    assert "<!-- begin results/rt/summary.md" in result.output
    assert (snap / "summary.md").exists()  # the snapshot was written before the README check
    begin = "<!-- begin results/rt/summary.md (written by mpo report --snapshot results/rt --readme) -->"
    end = "<!-- end results/rt/summary.md -->"
    readme.write_text(f"# title\n\nbefore\n{begin}\nstale table\n{end}\nafter\n")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    text = readme.read_text()
    summary = (snap / "summary.md").read_text()
    assert "stale table" not in text and f"{begin}\n\n{summary.strip()}\n\n{end}" in text
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{end}\nafter\n")
    CliRunner().invoke(main, args)  # idempotent
    assert readme.read_text() == text
    assert "sweep wall time: 2.0 min in 2 driver run(s), last finished 2025-01-01T01:00:30" in \
        (snap / "report.md").read_text()
    result = CliRunner().invoke(main, ["report", str(run), "--readme", str(readme)])
    assert result.exit_code != 0 and "--readme needs --snapshot" in result.output
