"""`mpo export`: the accuracy records and RobustBench-style model entries on hand-made outcomes,
the formats, and the public schema table (jobs/SCHEMA.md) against jobs.schema.COLUMNS."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from jobs.schema import COLUMNS
from orchestrator.cli import main
from orchestrator.commands.export import schema_markdown
from tests.runfolder import AttackSpec, ModelSpec, build_run_folder, write_shard

SCHEMA_PAGE = Path(__file__).resolve().parents[1] / "jobs" / "SCHEMA.md"
AA_LINF = {"type": "autoattack", "version": "standard", "norm": "linf", "epsilon": 8 / 255}


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_readme_schema_table_is_the_code():
    text = SCHEMA_PAGE.read_text()
    match = re.search(r"<!-- begin schema \(mpo export --schema\) -->\n(.*?)<!-- end schema -->",
                      text, re.S)
    assert match, "jobs/SCHEMA.md has no schema section between its marker comments"
    assert match.group(1) == schema_markdown()
    for name in COLUMNS:
        assert f"| `{name}` |" in match.group(1)
    assert _invoke("export", "--schema") == schema_markdown()


@pytest.fixture
def run(tmp_path) -> Path:
    """Two models on 4 inputs, families linf and l2; numbers checked by hand below.

    A (trained, single): clean 1,1,1,0; linf fools input 0 (AutoAttack) and 1 (PGD); l2 none.
    B (external): clean 1,1,1,1; linf fools nothing; l2 fools input 3.
    """
    groups = {"cifar-lp": {"families": ["linf", "l2"], "affine": []}}
    a = ModelSpec("cifar10-single-linf-aaaa", "A", "single", ("linf",), ("cifar-lp",), "cifar10",
                  config={"model": {"name": "wrn"}})
    b = ModelSpec("cifar10-external-b-bbbb", "B", "external", (), ("cifar-lp",), "cifar10",
                  config={"model": {"name": "Ding2020MMA"}, "external": {
                      "source": "Ding2020MMA", "spec": {"threat_model": "L2"}}})
    pgd = AttackSpec("linf-pgd", "linf", epsilon=8 / 255)
    aa = AttackSpec("linf-aa", "linf", epsilon=8 / 255, spec=AA_LINF)
    l2 = AttackSpec("l2-pgd", "l2", epsilon=0.5)
    clean_a, clean_b = [True, True, True, False], [True] * 4
    for model, attack, clean, fooled in (
        (a, pgd, clean_a, [False, True, False, False]),
        (a, aa, clean_a, [True, False, False, False]),
        (a, l2, clean_a, [False] * 4),
        (b, pgd, clean_b, [False] * 4),
        (b, aa, clean_b, [False] * 4),
        (b, l2, clean_b, [False, False, False, True]),
    ):
        write_shard(tmp_path, model, attack, clean_correct=clean, fooled=fooled,
                    suite_groups=groups,
                    suite_extra={"attacks": [x.suite_entry() for x in (pgd, aa, l2)]})
    return tmp_path


def test_accuracy_records_and_model_info(run):
    _invoke("export", str(run), "--rows")
    acc = pd.read_csv(run / "export" / "accuracy.csv")
    got = {(r.label, r.measure): r.accuracy for r in acc.itertuples()}
    assert got == {
        ("A", "clean"): 0.75, ("A", "linf"): 0.25, ("A", "l2"): 0.75, ("A", "union"): 0.25,
        ("A", "average"): 0.5,
        ("B", "clean"): 1.0, ("B", "linf"): 1.0, ("B", "l2"): 0.75, ("B", "union"): 0.75,
        ("B", "average"): 0.875,
    }
    assert (acc["n"] == 4).all() and (acc["ci_low"] <= acc["accuracy"]).all()
    assert set(acc.loc[acc["label"] == "B", "source"]) == {"Ding2020MMA"}
    assert json.loads((run / "export" / "accuracy.json").read_text()) == json.loads(
        acc.where(acc.notna(), None).assign(source=acc["source"].fillna(""))
        .to_json(orient="records"))

    folder = run / "export" / "model_info" / "cifar10" / "cifar-lp"
    a = json.loads((folder / "cifar10-single-linf-aaaa.json").read_text())
    assert a == {
        "name": "A", "dataset": "cifar10", "architecture": "wrn", "number_forward_passes": 1,
        "additional_data": False, "eps": "8/255", "clean_acc": "75.00",
        "autoattack_acc": "50.00",  # inputs 1, 2 robust to AutoAttack alone
        "mpo_model_id": "cifar10-single-linf-aaaa", "mpo_strategy": "single", "mpo_source": "",
        "mpo_group": "cifar-lp", "mpo_threat_model": "Linf", "mpo_families": ["linf", "l2"],
        "mpo_epsilon": {"linf": pytest.approx(8 / 255), "l2": 0.5}, "mpo_n": 4,
        "mpo_family_acc": {"linf": "25.00", "l2": "75.00"},
        "mpo_union_acc": "25.00", "mpo_average_acc": "50.00", "mpo_complete": True,
    }
    b = json.loads((folder / "cifar10-external-b-bbbb.json").read_text())
    # a zoo entry's own threat model picks the family of eps (no AutoAttack run for l2 here)
    assert b["eps"] == "0.5" and b["mpo_threat_model"] == "L2" and "autoattack_acc" not in b
    assert "additional_data" not in b and b["mpo_source"] == "Ding2020MMA"
    rows = pd.read_csv(run / "export" / "rows.csv")
    assert list(rows.columns) == list(COLUMNS) and len(rows) == 24
    assert len((run / "export" / "rows.jsonl").read_text().splitlines()) == 24


@pytest.mark.parametrize(("formats", "files"), [
    ("csv", {"accuracy.csv"}),
    ("json", {"accuracy.json", "model_info"}),
    ("csv,json", {"accuracy.csv", "accuracy.json", "model_info"}),
])
def test_formats_write_their_files(run, tmp_path, formats, files):
    out = tmp_path / "out"
    _invoke("export", str(run), "--format", formats, "--out", str(out))
    assert {p.name for p in out.iterdir()} == files


def test_export_of_a_sweep_folder(tmp_path):
    """A realistic run (manifest, trials, every group) exports every model of every group."""
    run = build_run_folder(tmp_path, preset="mnist-lp")
    _invoke("export", str(run), "--format", "json")
    manifest = json.loads((run / "manifest.json").read_text())
    written = {p.stem for p in (run / "export" / "model_info" / "mnist" / "mnist-lp").iterdir()}
    assert written == set(manifest["groups"]["mnist-lp"]["models"])


@pytest.mark.parametrize(("args", "match"), [
    (["--format", "pdf"], "--format 'pdf': allowed formats are csv, json"),
    ([], "give RUN_DIR"),
])
def test_export_usage_errors(run, args, match):
    argv = ["export", *([] if not args else [str(run)]), *args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code != 0 and match in result.output
