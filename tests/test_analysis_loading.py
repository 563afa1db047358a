"""Loading run folders: expectations from the manifest, inference without it, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from analysis import RunFolderError, load_results
from analysis.metrics import group_table
from tests.runfolder import AttackSpec, ModelSpec, build_run_folder, write_shard

PGD = AttackSpec("pgd_linf", "linf", "first-order", 0.3)
PGD1 = AttackSpec("pgd_l1", "l1", "first-order", 10.0)
MODEL = ModelSpec("m", "Adv_max", "max", ("linf", "l1"), ("g",), "mnist")


def test_missing_folder(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        load_results(tmp_path / "nope")


def test_not_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="not a directory"):
        load_results(tmp_path / "file")


def test_empty_folder(tmp_path):
    with pytest.raises(RunFolderError, match=r"has no results: expected results/<model_id>"):
        load_results(tmp_path)


def test_only_other_schema_version(tmp_path):
    write_shard(tmp_path, MODEL, PGD, clean_correct=[True] * 4, fooled=[False] * 4,
                schema_version=0)
    with pytest.raises(RunFolderError, match=r"no readable results.*schema version 0"):
        load_results(tmp_path)


def test_other_schema_version_and_corrupt_file_are_skipped_and_listed(tmp_path):
    write_shard(tmp_path, MODEL, PGD, clean_correct=[True] * 4, fooled=[False] * 4)
    old = write_shard(tmp_path, MODEL, PGD1, clean_correct=[True] * 4, fooled=[True] * 4,
                      schema_version=1)
    bad = tmp_path / "results" / "m" / "broken__0-4.parquet"
    bad.write_bytes(b"not parquet")
    rs = load_results(tmp_path)
    assert len(rs.rows) == 4
    reasons = {s.path.name: s.reason for s in rs.skipped_files}
    assert set(reasons) == {old.name, bad.name}
    assert "results schema version 1, this mpo reads versions 2, 3" in reasons[old.name]
    assert "unreadable parquet" in reasons[bad.name]


def test_manifest_lists_missing_shards_and_failed_trials(tmp_path):
    run = build_run_folder(tmp_path, n=40, shard_size=20, failed_trials=["toy-avg"],
                           drop_shards=[("toy-max", "pgd_l1", 20)],
                           old_schema_shards=[("toy-nat", "pgd_linf", 0)])
    rs = load_results(run)
    assert rs.missing_trials == ["toy-avg"]
    assert [m.model_id for m in rs.failed_trials] == ["toy-avg"]
    missing = {(s.model_id, s.attack, s.start): s.reason for s in rs.missing_shards}
    assert missing == {
        ("toy-max", "pgd_l1", 20): "no results file",
        ("toy-nat", "pgd_linf", 0): "results schema version 0, this mpo reads versions 2, 3; "
        "re-run the evaluation with this version of mpo or read it with the mpo that wrote it",
    }
    assert rs.incomplete_models() == {"toy-max", "toy-nat"}
    table = group_table(rs, "toy")
    assert [r.display for r in table.rows] == ["Nat", "Adv_inf", "Adv_1", "Adv_max"]
    by = {r.display: r for r in table.rows}
    assert by["Adv_max"].incomplete and by["Adv_max"].n_inputs == 20
    assert not by["Adv_inf"].incomplete and by["Adv_inf"].n_inputs == 40
    assert rs.run["git_commit"] == "deadbeef" * 5
    assert rs.models["toy-max"].wall_seconds == 12.5
    assert rs.models["toy-max"].config["dataset"]["params"]["d"] == 99


@pytest.mark.parametrize(
    "suite_groups",
    [{"g": {"families": ["linf", "l1"], "affine": []}}, {"g": ["linf", "l1"]}, {}],
    ids=["dict", "list", "from-rows"],
)
def test_groups_without_manifest(tmp_path, suite_groups):
    for attack in (PGD, PGD1):
        write_shard(tmp_path, MODEL, attack, clean_correct=[True] * 4, fooled=[False] * 4,
                    suite_groups=suite_groups)
    rs = load_results(tmp_path)
    assert rs.manifest is None and rs.missing_shards == [] and rs.missing_trials == []
    (group,) = rs.groups.values()
    assert group.name == "g" and group.dataset == "mnist" and group.models == ("m",)
    assert sorted(group.families) == ["l1", "linf"]


def test_affine_from_suite_snapshot(tmp_path):
    """jobs.evaluation writes groups as {group: [families]} plus a top-level affine mapping."""
    write_shard(tmp_path, MODEL, PGD, clean_correct=[True] * 4, fooled=[False] * 4,
                suite_groups={"g": ["linf", "l1"]}, suite_extra={"affine": {"g": ["linf+l1"]}})
    assert load_results(tmp_path).groups["g"].affine == ("linf+l1",)


def test_affine_inferred_without_manifest(tmp_path):
    affine = AttackSpec("aff", "linf+l1", "first-order", 0.3)
    for attack in (PGD, PGD1, affine):
        write_shard(tmp_path, MODEL, attack, clean_correct=[True] * 4, fooled=[False] * 4,
                    suite_groups={"g": ["linf", "l1"]})
    assert load_results(tmp_path).groups["g"].affine == ("linf+l1",)


def test_files_of_schema_2_read_with_an_empty_example(tmp_path):
    """A version-2 file (before the ``example`` column) still reads, beside a version-3 one."""
    write_shard(tmp_path, MODEL, PGD, clean_correct=[True] * 4, fooled=[False, True, False, True],
                schema_version=2)
    write_shard(tmp_path, MODEL, PGD1, clean_correct=[True] * 4, fooled=[False] * 4)
    rs = load_results(tmp_path)
    assert not rs.skipped_files
    by_attack = rs.rows.groupby("attack")["example"].agg(set).to_dict()
    assert by_attack == {PGD.name: {""}, PGD1.name: {"best"}}
    assert rs.rows[rs.rows["attack"] == PGD.name]["fooled"].tolist() == [False, True, False, True]


def test_suite_metadata_of_schema_2(tmp_path):
    """budgets_protocol, radii, full_radius and each attack's base are read; a copy without a
    base takes the name before '@'; what is missing takes the contract's default; what cannot
    be read is a warning."""
    entries = [PGD.suite_entry(), PGD.at(0.5).suite_entry(),
               {"name": "pgd_linf@0.25", "family": "linf", "kind": "first-order", "budget": 0.25,
                "epsilon": 0.075, "spec": {}}]
    write_shard(tmp_path, MODEL, PGD, clean_correct=[True] * 4, fooled=[False] * 4,
                suite_groups={"g": ["linf"]},
                suite_extra={"budgets_protocol": "reduced", "radii": {"linf": [0, 0.1, 0.2]},
                             "full_radius": {"linf": 0.3}, "attacks": entries})
    write_shard(tmp_path, MODEL, PGD1, clean_correct=[True] * 4, fooled=[False] * 4,
                suite_extra={"name": "other", "radii": {"l1": "wide"}})
    rs = load_results(tmp_path)
    suite = rs.suite_info["synthetic"]
    assert suite.reduced and suite.radii == {"linf": (0.0, 0.1, 0.2)}
    assert suite.full_radius == {"linf": 0.3}
    assert [(a.name, a.base, a.is_full) for a in suite.attacks] == [
        ("pgd_linf", "pgd_linf", True), ("pgd_linf@0.5", "pgd_linf", False),
        ("pgd_linf@0.25", "pgd_linf", False)]
    assert suite.points("pgd_linf") == [0.25, 0.5, 1.0]
    assert suite.attacks[0].spec == {"type": "linf", "epsilon": 0.3, "k": 40, "reps": 2}
    other = rs.suite_info["other"]
    assert not other.reduced and other.radii == {} and other.attacks == ()
    assert "suite other: radii of l1 unreadable ('wide'); ignored" in rs.warnings
    assert sorted(s.name for s in rs.group_suites("g")) == ["other", "synthetic"]


def test_broken_by_is_read(tmp_path):
    write_shard(tmp_path, MODEL, PGD, clean_correct=[True, True, False], fooled=[False, True, False])
    assert load_results(tmp_path).rows["broken_by"].tolist() == ["", "pgd_linf", "clean"]


def test_duplicate_rows_are_dropped_with_a_warning(tmp_path):
    first = write_shard(tmp_path, MODEL, PGD, clean_correct=[True] * 4, fooled=[False] * 4)
    first.rename(first.with_name("a_first_run.parquet"))  # read first, so the rerun wins
    write_shard(tmp_path, MODEL, PGD, clean_correct=[True] * 4, fooled=[True] * 4)
    rs = load_results(tmp_path)
    assert len(rs.rows) == 4 and rs.rows["fooled"].all()
    assert any("4 duplicate rows" in w for w in rs.warnings)


def test_manifest_without_results(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({
        "groups": {"g": {"dataset": "mnist", "families": ["linf"], "affine": [], "models": ["m"]}},
        "trials": {"m": {"label": "Nat", "dataset": "mnist", "strategy": "nat", "groups": ["g"]}},
        "shards": [{"model_id": "m", "attack": "pgd", "start": 0, "stop": 10}],
    }))
    rs = load_results(tmp_path)
    assert rs.rows.empty and rs.missing_trials == ["m"]
    assert rs.models_in("g") == []


def test_analysis_imports_no_torch_or_ray():
    """Every analysis module but the torch bridge (analysis.theory_torch) runs without them."""
    code = ("import importlib, pkgutil, sys, analysis; "
            "names = [m.name for m in pkgutil.iter_modules(analysis.__path__)]; "
            "assert {'report', 'render', 'theory'} <= set(names), names; "
            "[importlib.import_module(f'analysis.{n}') for n in names if n != 'theory_torch']; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
