"""The published results (analysis/results/*) and the results page (analysis/results/README.md,
linked from the README) agree: every summary table the page shows is the snapshot's summary.md
verbatim, the page names the commands that made it, and each snapshot holds what the page says
(and nothing heavy)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "analysis" / "results"
#: the sweeps' snapshots (``analysis/results/theory`` is ``mpo theory``'s page, not a sweep's)
SNAPSHOTS = sorted(p for p in RESULTS.iterdir() if (p / "run.json").exists()) if RESULTS.is_dir() else []
README = (RESULTS / "README.md").read_text(encoding="utf-8")


def test_there_are_published_snapshots():
    assert {p.name for p in SNAPSHOTS} >= {"toy", "mnist-mini"}
    main = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(analysis/results/README.md)" in main  # the README links the results page


def test_the_theory_page_is_the_command_s_output():
    page = (RESULTS / "theory" / "theory.md").read_text(encoding="utf-8")
    assert page.startswith("# The paper's Section 2, computed")
    assert "Written by `mpo theory --out analysis/results/theory`" in page
    assert "min R_avg over" in page and "![Section 2" in page
    assert (RESULTS / "theory" / "theory.png").exists()


@pytest.mark.parametrize("snap", SNAPSHOTS, ids=[p.name for p in SNAPSHOTS])
def test_snapshot_matches_readme(snap):
    summary = (snap / "summary.md").read_text(encoding="utf-8")
    assert summary.strip() and summary.strip() in README, (
        f"analysis/results/README.md does not show {snap.relative_to(ROOT)}/summary.md verbatim: "
        "regenerate the page from the snapshot (mpo report --snapshot ... --readme "
        "analysis/results/README.md)")
    assert f"--snapshot analysis/results/{snap.name} --readme analysis/results/README.md" in README
    run = json.loads((snap / "run.json").read_text())
    grid = yaml.safe_load((snap / "grid.yaml").read_text())
    assert grid["name"] == snap.name and shlex.split(run["command"])[:3] == ["mpo", "sweep", snap.name]
    assert run["git_commit"][:7] in README  # the README says which commit made the numbers
    for fig in (snap / "figures").glob("*.png"):
        assert f"]({snap.name}/figures/{fig.name})" in README or \
            f"figures/{fig.name}" in (snap / "report.md").read_text(encoding="utf-8")
    heavy = [p for p in snap.rglob("*") if p.suffix in {".pt", ".parquet", ".svg"}]
    assert heavy == [] and sum(p.stat().st_size for p in snap.rglob("*") if p.is_file()) < 2e6


@pytest.mark.parametrize("snap", SNAPSHOTS, ids=[p.name for p in SNAPSHOTS])
def test_snapshot_holds_no_machine_paths(snap):
    """What is committed names no machine's folders: the command as typed, the data dir as given."""
    machine = re.compile(r"(/work/|/root/|/home/|/tmp/|/Users/|\.venv/bin)")
    for path in snap.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".md", ".yaml", ".csv"}:
            found = machine.findall(path.read_text(encoding="utf-8"))
            assert not found, f"{path.relative_to(ROOT)} names machine paths: {found}"
