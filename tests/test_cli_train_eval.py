"""`mpo train` then `mpo eval` through click's CliRunner, end to end on toy."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from orchestrator.cli import main

TOY_CONFIG = """\
label: Adv_max
dataset: {name: toy, params: {n_train: 200, n_test: 100}}
model: {name: linear}
optimizer: {name: adam, lr: 0.05}
strategy: max
attacks:
  - {type: linf, epsilon: 0.4020151261036849, k: 3}
  - {type: l1, epsilon: 2.0, k: 3}
epochs: 2
batch_size: 50
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = root / "toy.yaml"
    config.write_text(TOY_CONFIG)
    result = CliRunner().invoke(main, ["train", str(config), "--out", str(root / "train"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return root, result


def test_train_writes_checkpoint_and_prints_epochs(trained):
    root, result = trained
    assert (root / "train" / "checkpoint.pt").exists()
    lines = (root / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "training of Adv_max" in result.output and "checkpoint:" in result.output


def test_train_again_resumes_without_work(trained):
    root, _ = trained
    result = CliRunner().invoke(main, ["train", str(root / "toy.yaml"), "--out", str(root / "train")])
    assert result.exit_code == 0, result.output
    assert "resumed after epoch 2" in result.output


def test_eval_writes_run_folder_and_summary(trained):
    root, _ = trained
    out = root / "eval"
    args = ["eval", str(root / "train"), "--suite", "toy", "--n-test", "30", "--out", str(out),
            "--shard-size", "15", "--attack", "linf-pgd", "--attack", "l1-slide"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for word in ("clean", "linf", "l1", "union", "average"):
        assert word in result.output
    files = sorted((out / "results").rglob("*.parquet"))
    assert len(files) == 4 * 4  # with their copies at 1/4, 1/2, 3/4 of the budget (a cascade)
    run = json.loads((out / "run.json").read_text())
    assert {"name", "created", "mpo_version", "git_commit", "versions", "hardware", "command"} <= set(run)
    manifest = json.loads((out / "manifest.json").read_text())
    (model_id,) = manifest["trials"]
    assert manifest["groups"]["toy"]["models"] == [model_id]
    assert manifest["trials"][model_id]["label"] == "Adv_max"
    assert len(manifest["shards"]) == 4
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0
    assert sorted((out / "results").rglob("*.parquet")) == files
    assert len(json.loads((out / "manifest.json").read_text())["shards"]) == 4


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (TOY_CONFIG.replace("strategy: max", "strategy: maxx"), r"bad.yaml.*field 'strategy' = 'maxx'"),
        (TOY_CONFIG.replace("k: 3}", "k: -3}", 1), r"bad.yaml.*attacks\[0\].*'k'"),
        (TOY_CONFIG.replace("attacks:\n", "attacks: []\nx:\n"), r"bad.yaml.*field 'x'"),
    ],
)
def test_train_bad_config_is_a_clean_error(tmp_path, content, match):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = CliRunner().invoke(main, ["train", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    import re

    assert re.search(match, result.output, re.S), result.output
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_suite_of_another_dataset(trained):
    root, _ = trained
    result = CliRunner().invoke(
        main, ["eval", str(root / "train" / "checkpoint.pt"), "--suite", "mnist-mini", "--out", str(root / "bad")]
    )
    assert result.exit_code != 0
    assert "trained on dataset 'toy'" in result.output and "mnist-mini" in result.output
    assert not (root / "bad").exists()


def test_eval_unknown_suite_and_attack(trained):
    root, _ = trained
    ckpt = str(root / "train" / "checkpoint.pt")
    result = CliRunner().invoke(main, ["eval", ckpt, "--suite", "nope"])
    assert result.exit_code != 0 and "unknown suite 'nope'" in result.output
    result = CliRunner().invoke(main, ["eval", ckpt, "--suite", "toy", "--attack", "zzz"])
    assert result.exit_code != 0 and "no attack 'zzz'" in result.output


def test_train_accepts_a_recipe_name_in_help():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0 and "recipe" in result.output
