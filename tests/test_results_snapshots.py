"""The published results (analysis/results/*) and the README's results section agree: every
summary table the README shows is the snapshot's summary.md verbatim, the README names the
commands that made it, and each snapshot holds what its README says (and nothing heavy)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "analysis" / "results"
SNAPSHOTS = sorted(p for p in RESULTS.iterdir() if p.is_dir()) if RESULTS.is_dir() else []
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_there_are_published_snapshots():
    assert {p.name for p in SNAPSHOTS} >= {"toy", "mnist-mini"}


@pytest.mark.parametrize("snap", SNAPSHOTS, ids=[p.name for p in SNAPSHOTS])
def test_snapshot_matches_readme(snap):
    summary = (snap / "summary.md").read_text(encoding="utf-8")
    assert summary.strip() and summary.strip() in README, (
        f"README.md does not show {snap.relative_to(ROOT)}/summary.md verbatim: regenerate the "
        "README's results section from the snapshot")
    assert f"--snapshot analysis/results/{snap.name}" in README
    run = json.loads((snap / "run.json").read_text())
    grid = yaml.safe_load((snap / "grid.yaml").read_text())
    assert grid["name"] == snap.name and shlex.split(run["command"])[:3] == ["mpo", "sweep", snap.name]
    assert run["git_commit"][:7] in README  # the README says which commit made the numbers
    for fig in (snap / "figures").glob("*.png"):
        assert f"analysis/results/{snap.name}/figures/{fig.name}" in README or \
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
