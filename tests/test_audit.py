"""The strength audit: every shipped l_p suite runs AutoAttack's standard components, and on a
small trained model no input AutoAttack standard (as shipped) breaks is reported robust by the
suite; ``mpo audit`` runs from the CLI and ``mpo report`` shows it (the sweep's audit, as Ray
tasks, is in test_sweep)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from analysis.audit import audit_summaries, clopper_pearson_upper
from jobs.audit import standard_coverage
from jobs.checkpoint import save_checkpoint
from jobs.config import make_train_config
from jobs.models import MadryMNIST
from jobs.suite import load_suite, parse_suite, suite_path
from orchestrator.cli import main

LP_SUITES = ["mnist-mini", "mnist-paper", "mnist-strong", "cifar10-paper", "cifar10-strong"]


@pytest.mark.parametrize("name", LP_SUITES)
def test_shipped_lp_suites_run_every_standard_component_at_every_budget(name):
    assert standard_coverage(load_suite(name)) == []


def test_a_suite_without_apgd_t_is_named():
    suite = parse_suite({"name": "weak", "dataset": "mnist", "groups": {"g": {"families": ["linf"]}},
                         "attacks": [{"name": attack, "kind": "first-order",
                                      "spec": {"type": "autoattack", "attack": attack,
                                               "norm": "linf", "epsilon": 0.3,
                                               **({"n_queries": 500} if attack == "square" else {})}}
                                     for attack in ("apgd-ce", "fab-t", "square")]})
    missing = standard_coverage(suite)
    assert len(missing) == 2
    assert missing[0].startswith("linf at budget 1: AutoAttack apgd-t (n_iter 100, n_restarts 1, "
                                 "n_target_classes 9")
    assert missing[1].startswith("linf at budget 1: AutoAttack square (n_queries 5000")


def test_clopper_pearson_upper_bound():
    assert clopper_pearson_upper(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert clopper_pearson_upper(3, 3) == 1.0
    assert clopper_pearson_upper(1, 8) == pytest.approx(0.4707, abs=1e-4)


def test_summaries_count_what_autoattack_broke_that_the_suite_kept():
    rows = pd.DataFrame({
        "model_id": ["m"] * 5, "model_label": ["M"] * 5, "family": ["linf"] * 5,
        "budget": [1.0] * 5, "epsilon": [0.3] * 5, "index": range(5), "label": [0] * 5,
        "clean_correct": [True] * 5,
        "aa_robust": [True, False, False, True, False],
        "suite_robust": [True, True, False, False, False],
        "suite_evaluated": [True, True, True, True, False],
    })
    (s,) = audit_summaries(rows)
    assert (s.n, s.suite_robust, s.aa_robust, s.missed, s.extra) == (4, 2, 2, 1, 1)
    assert s.weaker and s.upper == pytest.approx(clopper_pearson_upper(1, 4))


@pytest.fixture(scope="module")
def audited_run(mnist_model, mnist_dir, tmp_path_factory):
    """A small trained MNIST CNN evaluated with the shipped mnist-mini suite at its full budgets
    (its other budget points are the same attacks scaled; left out to keep the test short: each
    Square run costs its 5000 iterations) on 12 test points, then audited, both through the mpo
    CLI."""
    cfg = make_train_config({"label": "Nat", "dataset": {"name": "mnist"},
                             "model": {"name": "mnist_cnn_small"}, "strategy": "nat", "epochs": 1,
                             "batch_size": 10})
    model = MadryMNIST(cfg.dataset_info(), width=0.25)
    model.load_state_dict(mnist_model[0].state_dict())
    root = tmp_path_factory.mktemp("audit")
    ckpt = save_checkpoint(root / "nat.pt", model=model, config=cfg.to_dict())
    shipped = yaml.safe_load(suite_path("mnist-mini").read_text())
    del shipped["budgets"]
    (root / "mnist-mini-full.yaml").write_text(yaml.safe_dump(shipped))
    run = root / "run"
    runner = CliRunner()
    result = runner.invoke(main, ["eval", str(ckpt), "--suite", str(root / "mnist-mini-full.yaml"),
                                  "--n-test", "12", "--out", str(run), "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["audit", str(run), "--n", "12", "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    return run, result.output


def test_no_input_autoattack_breaks_is_reported_robust(audited_run):
    run, output = audited_run
    assert "AutoAttack standard on 12 of 12 test points, families linf, l1, l2" in output
    files = sorted(p.name for p in (run / "audit").glob("*/*.parquet"))
    assert files == ["l1@1.parquet", "l2@1.parquet", "linf@1.parquet"]
    rows = pd.concat([pd.read_parquet(p) for p in (run / "audit").glob("*/*.parquet")])
    assert rows["suite_evaluated"].all()
    missed = rows[rows["clean_correct"] & ~rows["aa_robust"] & rows["suite_robust"]]
    assert missed.empty, missed[["family", "budget", "index"]]
    # not vacuous: AutoAttack breaks inputs the model classifies correctly, which the suite must
    # break too (on real MNIST it also leaves some robust; on the generated digits of a clone
    # without ../shared/data it breaks every one at these radii)
    assert (rows["clean_correct"] & ~rows["aa_robust"]).any()


def test_the_report_shows_the_audit(audited_run, tmp_path):
    run, _ = audited_run
    result = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "r" / "report.md").read_text()
    assert "## Strength audit" in text
    assert "On every one of the 3 audited points (36 inputs compared) no input AutoAttack " \
           "broke was called robust by the suite." in text
    audit = pd.read_csv(tmp_path / "r" / "audit.csv")
    assert len(audit) == 3 and not audit["weaker"].any()


def test_an_audit_already_on_disk_is_not_run_again(audited_run, mnist_dir):
    run, _ = audited_run
    before = {p: p.stat().st_mtime_ns for p in Path(run, "audit").glob("*/*.parquet")}
    result = CliRunner().invoke(main, ["audit", str(run), "--n", "12", "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in Path(run, "audit").glob("*/*.parquet")} == before


SWEEP_SUITE = """
name: mnist-audit-test
dataset: mnist
seed: 0
n_test: 16
groups:
  mnist: {families: [linf], affine: []}
attacks:
  - {name: linf-pgd, kind: first-order, spec: {type: linf, epsilon: 0.3, k: 5, a: 0.1}}
"""

SWEEP_GRID = """
name: mnist-audit-test
seeds: [0]
evaluation:
  mnist: {suite: suite.yaml, n_test: 16, shard_size: 16, audit: {n: 8}}
experiments:
  mnist:
    families: [linf]
    train:
      dataset: {name: mnist, n_train: 200}
      model: {name: mnist_cnn_small}
      optimizer: {name: adam, lr: 0.001}
      epochs: 1
      batch_size: 100
    attacks: {}
    models:
      Nat: {strategy: nat}
"""


@pytest.mark.ray
@pytest.mark.slow
def test_the_grid_s_audit_runs_in_the_sweep_and_the_report_shows_it(ray_cluster, mnist_dir,
                                                                      tmp_path):
    """evaluation.mnist.audit: AutoAttack standard on 8 sampled points of the model (Ray tasks
    after its evaluation), recorded in trial.json; the report's audit table counts the inputs it
    broke that the suite called robust."""
    import json

    (tmp_path / "suite.yaml").write_text(SWEEP_SUITE)
    (tmp_path / "grid.yaml").write_text(SWEEP_GRID)
    result = CliRunner().invoke(main, [
        "sweep", str(tmp_path / "grid.yaml"), "--storage", str(tmp_path / "runs"), "--name", "a",
        "--data-dir", str(mnist_dir), "--cpus-per-trial", "1", "--eval-workers", "1",
        "--cpus-per-eval-worker", "1"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "a"
    (mid,) = json.loads((run_dir / "manifest.json").read_text())["trials"]
    record = json.loads((run_dir / "trials" / mid / "trial.json").read_text())
    assert [Path(f).name for f in record["audit_files"]] == ["linf@1.parquet"]
    rows = pd.read_parquet(record["audit_files"][0])
    assert len(rows) == 8 and rows["suite_evaluated"].all()
    assert set(rows["index"]) <= set(range(16))
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "## Strength audit" in (out / "report.md").read_text()
    audit = pd.read_csv(out / "audit.csv")
    assert list(audit["model"]) == ["Nat"] and (audit["n"] == 8).all()


def test_a_grid_cannot_audit_a_two_class_dataset(tmp_path):
    """AutoAttack's standard version needs 4 classes (DLR losses): a toy grid asking for the
    audit is refused when it is read, naming the field, the dataset and what is needed."""
    from tests.test_sweep import write_grid

    grid = write_grid(tmp_path)
    grid.write_text(grid.read_text().replace("shard_size: 20}", "shard_size: 20, audit: {n: 8}}"))
    result = CliRunner().invoke(main, ["sweep", str(grid), "--storage", str(tmp_path / "runs")])
    assert result.exit_code != 0
    assert "evaluation.toy.audit: dataset 'toy' has 2 classes" in result.output
    assert "at least 4" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
