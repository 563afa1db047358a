"""Per-example evaluation: suites, parquet rows, the in-ball rule, idempotence, atomicity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from jobs.checkpoint import save_checkpoint
from jobs.config import make_train_config
from jobs.evaluation import evaluate, evaluate_shard
from jobs.results import read_results, summarize
from jobs.run_folder import plan_shards
from jobs.schema import META_MODEL, META_SHARD, META_SUITE, SCHEMA, check_schema_version
from jobs.suite import ConfigError, load_suite, parse_suite, suite_names
from jobs.training import train

EPS_INF = 0.4020151261036849
TOY_PARAMS = {"n_train": 300, "n_test": 200}


def toy_suite(**changes):
    data = {
        "name": "toy-test",
        "dataset": "toy",
        "seed": 0,
        "n_test": 40,
        "groups": {"toy": {"families": ["linf", "l1"]}},
        "attacks": [
            {"name": "linf-pgd", "kind": "first-order",
             "spec": {"type": "linf", "epsilon": EPS_INF, "k": 5}, "budgets": [0.5]},
            {"name": "l1-slide", "kind": "first-order", "spec": {"type": "l1", "epsilon": 2.0, "k": 5}},
        ],
    }
    data.update(changes)
    return parse_suite(data, source="toy-test.yaml")


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> Path:
    cfg = make_train_config({
        "label": "Adv_avg",
        "dataset": {"name": "toy", "params": TOY_PARAMS},
        "model": {"name": "linear"},
        "optimizer": {"lr": 0.05},
        "strategy": "avg",
        "attacks": [{"type": "linf", "epsilon": EPS_INF, "k": 3}, {"type": "l1", "epsilon": 2.0, "k": 3}],
        "epochs": 2,
        "batch_size": 50,
    })
    return train(cfg, tmp_path_factory.mktemp("toy-train")).checkpoint


# ----------------------------------------------------------------------------------------------
# Suites


def test_builtin_suites_load():
    assert {"toy", "mnist-mini", "mnist-paper", "cifar10-paper"} <= set(suite_names())
    toy = load_suite("toy")
    assert toy.dataset == "toy" and toy.groups == {"toy": {"families": ["linf", "l1"], "affine": []}}
    full = {a.family: a for a in toy.attacks if a.budget == 1.0}
    assert full["linf"].spec.to_dict()["epsilon"] == pytest.approx(2 * 2.0 / 99**0.5)
    assert full["l1"].spec.to_dict()["epsilon"] == 2.0
    # the protocol: every attack (Square and Pointwise too) at every budget point
    points = {a.base: sorted(c.budget for c in toy.attacks if c.base == a.base) for a in toy.attacks}
    assert len(points) == 4 and all(p == [0.25, 0.5, 0.75, 1.0] for p in points.values())
    mini = load_suite("mnist-mini")
    fams = {a.family for a in mini.attacks}
    assert fams == {"linf", "l1", "l2", "rt", "linf+rt", "linf+l1"}
    assert {a.name: a.kind for a in mini.attacks}["rt-grid"] == "grid"
    eps = {a.name: a.spec.to_dict().get("epsilon") for a in mini.attacks}
    assert (eps["linf-pgd"], eps["l1-slide"], eps["l2-pgd"]) == (0.3, 10.0, 2.0)
    assert eps["linf-pgd@0.5"] == pytest.approx(0.15)
    for a in mini.attacks:  # half and full budgets (the 1/4 and 3/4 points cost the most)
        swept = a.family in ("linf", "l1", "l2", "rt")
        expected = [0.5, 1.0] if swept else [1.0]
        assert sorted(c.budget for c in mini.attacks if c.base == a.base) == expected, a.name
    affine = mini.attack("linf+rt").spec.to_dict()
    assert affine["draws"] == 2 and affine["attacks"][0]["random_tries"] < 0  # the RT grid


def test_suite_from_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("dataset: toy\nattacks:\n  - {name: a, kind: first-order, spec: {type: l1, epsilon: 1}}\n")
    suite = load_suite(path)
    assert suite.name == "mine" and suite.groups == {"mine": {"families": ["l1"], "affine": []}}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"dataset": "svhn"}, r"field 'dataset'.*unknown dataset 'svhn'"),
        ({"attacks": []}, r"field 'attacks': must be a non-empty list"),
        ({"attacks": [{"name": "a", "kind": "magic", "spec": {"type": "l1", "epsilon": 1}}]},
         r"field 'attacks\[0\].kind'"),
        ({"attacks": [{"name": "a", "kind": "grid", "spec": {"type": "l1", "epsilon": 1, "kk": 2}}]},
         r"toy-test.yaml: field 'attacks\[0\].spec'.*'kk'"),
        ({"attacks": [{"name": "a b", "kind": "grid", "spec": {"type": "l1", "epsilon": 1}}]},
         r"attacks\[0\].name"),
        ({"attacks": [{"name": "a", "kind": "grid", "spec": {"type": "l1", "epsilon": 1}, "family": "l2"}]},
         r"attacks\[0\].family.*'l1'"),
        ({"attacks": [{"name": "a", "kind": "grid", "spec": {"type": "l1", "epsilon": 1}}] * 2},
         r"duplicate attack names \['a'\]"),
        ({"groups": {"g": {"families": ["l2"]}}}, r"groups.g.*'l2' has no attack"),
        ({"n_test": 0}, r"field 'n_test'"),
        ({"colour": "red"}, r"field 'colour': unknown field"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_bad_suite_is_a_clear_error(changes, match):
    with pytest.raises(ConfigError, match=match):
        toy_suite(**changes)


def test_unknown_suite_lists_builtins():
    with pytest.raises(ConfigError, match=r"unknown suite 'nope'; built-in suites: .*mnist-mini"):
        load_suite("nope")


@pytest.mark.parametrize(
    ("n", "size", "expected"),
    [(10, 4, [(0, 4), (4, 8), (8, 10)]), (3, 5, [(0, 3)]), (4, 2, [(0, 2), (2, 4)])],
)
def test_plan_shards(n, size, expected):
    assert plan_shards(n, size) == expected


# ----------------------------------------------------------------------------------------------
# Results files


def test_rows_match_schema_and_metadata(toy_checkpoint, tmp_path):
    suite = toy_suite()
    paths = evaluate(toy_checkpoint, suite, n_test=40, out_dir=tmp_path, shard_size=25)
    assert len(paths) == 3 * 2
    assert {p.name for p in paths} == {
        f"{a}__{s}-{e}.parquet" for a in ("linf-pgd", "linf-pgd@0.5", "l1-slide") for s, e in ((0, 25), (25, 40))
    }
    for p in paths:
        table = pq.read_table(p)
        assert table.schema.remove_metadata() == SCHEMA
        check_schema_version(table.schema.metadata, path=str(p))
        meta = table.schema.metadata
        shard = json.loads(meta[META_SHARD])
        assert p.name == f"{shard['attack']}__{shard['start']}-{shard['stop']}.parquet"
        assert json.loads(meta[META_SUITE])["groups"] == {"toy": ["linf", "l1"]}
        model = json.loads(meta[META_MODEL])
        assert model["config"]["strategy"] == "avg" and model["label"] == "Adv_avg"
        assert p.parent.name == model["model_id"]
    df = read_results(paths)
    assert len(df) == 3 * 40
    assert sorted(df.groupby("attack")["index"].apply(sorted).iloc[0]) == list(range(40))
    assert (df["robust"] == (df["clean_correct"] & ~df["fooled"])).all()
    assert (df["clean_correct"] == (df["clean_pred"] == df["label"])).all()
    assert set(df["strategy"]) == {"avg"} and set(df["dataset"]) == {"toy"}
    assert set(df["train_attacks"]) == {json.dumps(["linf", "l1"])}
    assert set(df["groups"]) == {json.dumps(["toy"])}
    full = df[df["attack"] == "linf-pgd"]
    assert (full["perturbation"] <= EPS_INF * (1 + 1e-5)).all() and (full["epsilon"] == EPS_INF).all()
    half = df[df["attack"] == "linf-pgd@0.5"]
    assert (half["budget"] == 0.5).all() and half["epsilon"].iloc[0] == pytest.approx(EPS_INF / 2)
    # the fooled flag agrees with the recorded predictions for in-ball results
    assert (df["fooled"] == (df["adv_pred"] != df["label"])).all()
    # the suite fixes the test points: the default toy test split, whatever the training params
    from jobs.data import load_split

    _, y = load_split("toy", "test", n=40, seed=suite.seed)
    assert df[df["attack"] == "l1-slide"].sort_values("index")["label"].tolist() == y.tolist()
    # seeds are per shard and reproducible
    assert df.groupby(["attack", "shard_start"])["eval_seed"].nunique().max() == 1


def test_union_and_family_accuracies_agree_with_rows(toy_checkpoint, tmp_path):
    suite = toy_suite()
    paths = evaluate(toy_checkpoint, suite, n_test=40, out_dir=tmp_path, shard_size=40)
    df = read_results(paths)
    full = df[df["budget"] == 1.0]
    by_fam = full.pivot_table(index="index", columns="family", values="robust", aggfunc="all")
    (summary,) = summarize(paths, suite.groups).values()
    assert summary["n"] == 40 and summary["label"] == "Adv_avg"
    assert summary["clean"] == pytest.approx(full.groupby("index")["clean_correct"].all().mean())
    for fam in ("linf", "l1"):
        assert summary["families"][fam] == pytest.approx(by_fam[fam].mean())
    group = summary["groups"]["toy"]
    assert group["union"] == pytest.approx((by_fam["linf"] & by_fam["l1"]).mean())
    assert group["union"] <= min(summary["families"].values()) <= summary["clean"]
    assert group["average"] == pytest.approx((summary["families"]["linf"] + summary["families"]["l1"]) / 2)
    assert "linf-pgd@0.5" not in summary["attacks"]  # budget sweeps are not in the summary


def test_rerun_writes_nothing_new(toy_checkpoint, tmp_path):
    suite = toy_suite()
    first = evaluate(toy_checkpoint, suite, n_test=20, out_dir=tmp_path, shard_size=10)
    stamps = {p: p.stat().st_mtime_ns for p in first}
    time.sleep(0.01)
    second = evaluate(toy_checkpoint, suite, n_test=20, out_dir=tmp_path, shard_size=10)
    assert second == first
    assert {p: p.stat().st_mtime_ns for p in second} == stamps
    assert sorted((tmp_path / "results").rglob("*")) == sorted([*first, first[0].parent])
    assert len(read_results(second)) == len(read_results(first))
    # a changed label is a changed content key: that shard is rewritten in place, not duplicated
    again = evaluate_shard(toy_checkpoint, suite, "l1-slide", 0, 10, tmp_path, model_label="renamed")
    assert again in first and again.stat().st_mtime_ns != stamps[again]
    assert set(read_results([again])["model_label"]) == {"renamed"}


def test_failed_write_leaves_no_partial_file(toy_checkpoint, tmp_path, monkeypatch):
    import pyarrow.parquet as pq_module

    def broken_write(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq_module, "write_table", broken_write)
    with pytest.raises(OSError, match="disk full"):
        evaluate_shard(toy_checkpoint, toy_suite(), "l1-slide", 0, 10, tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_killed_evaluation_leaves_only_complete_files(toy_checkpoint, tmp_path):
    """Kill the process between shards: every .parquet present is complete; a re-run finishes."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_evaluation import toy_suite
        from jobs.evaluation import evaluate
        evaluate({str(toy_checkpoint)!r}, toy_suite(), n_test=40, out_dir={str(tmp_path)!r},
                 shard_size=5, on_shard=lambda *a: (print("shard", flush=True), time.sleep(0.2)))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(2):
            assert proc.stdout.readline().strip() == "shard"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    files = sorted(tmp_path.rglob("*.parquet"))
    assert 2 <= len(files) < 24
    for f in files:
        assert pq.read_table(f).num_rows == 5
    paths = evaluate(toy_checkpoint, toy_suite(), n_test=40, out_dir=tmp_path, shard_size=5)
    assert len(paths) == 24 and sorted(tmp_path.rglob("*.parquet")) == sorted(paths)


# ----------------------------------------------------------------------------------------------
# The in-ball rule


@dataclass(frozen=True)
class _Result:
    x_adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    pred: torch.Tensor
    norm: torch.Tensor
    transform: torch.Tensor | None = None
    component: tuple[str, ...] | None = None


class FlipX0:
    """An 'unbounded' attack: pushes the sign feature x0 across 0 by ``shift`` (ignores eps)."""

    family, epsilon, total_steps = "linf", EPS_INF, 1

    def __init__(self, spec, bounds=None):
        self.spec = spec

    def example(self, fooled):
        return "best"

    def __call__(self, model, x, y, *, generator=None):
        x_adv = x.clone()
        x_adv[:, 0, 0, 0] -= 1.2 * (2 * y.to(x.dtype) - 1)
        pred = model(x_adv).argmax(1)
        return _Result(x_adv, pred != y, torch.zeros(len(y)), pred, (x_adv - x).flatten(1).abs().amax(1))


@pytest.fixture
def sign_model_checkpoint(tmp_path) -> Path:
    """A linear toy model that predicts with the sign feature x0 only."""
    from jobs.models import build_model

    cfg = make_train_config({
        "dataset": {"name": "toy", "params": TOY_PARAMS}, "model": {"name": "linear"},
        "strategy": "nat", "epochs": 1, "batch_size": 10,
    })
    model = build_model("linear", cfg.dataset_info())
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[0, 0], model.fc.weight[1, 0] = -1.0, 1.0
    return save_checkpoint(tmp_path / "sign.pt", model=model, config=cfg.to_dict())


@pytest.mark.parametrize(("epsilon", "fooled"), [(None, False), (1.5, True)])
def test_results_outside_the_ball_do_not_count(sign_model_checkpoint, tmp_path, monkeypatch, epsilon, fooled):
    import jobs.attacks

    monkeypatch.setattr(jobs.attacks, "make_attack", lambda spec, bounds=None, **_: FlipX0(spec))
    attack = {"name": "flip", "kind": "gradient-free", "spec": {"type": "linf", "epsilon": EPS_INF}}
    if epsilon is not None:
        attack["epsilon"] = epsilon
    suite = toy_suite(attacks=[attack], groups={"toy": ["linf"]})
    df = read_results([evaluate_shard(sign_model_checkpoint, suite, "flip", 0, 30, tmp_path)])
    correct = df[df["clean_correct"]]
    assert len(correct) > 20
    assert (correct["adv_pred"] != correct["label"]).all()  # the model is fooled ...
    assert correct["perturbation"].tolist() == pytest.approx([1.2] * len(correct))
    assert (correct["fooled"] == fooled).all()  # ... but only counts inside the ball
    assert (correct["robust"] == (not fooled)).all()


# ----------------------------------------------------------------------------------------------
# Dataset checks and MNIST


def test_checkpoint_of_another_dataset_is_refused(toy_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"trained on dataset 'toy' but suite 'mnist-mini' evaluates 'mnist'"):
        evaluate_shard(toy_checkpoint, "mnist-mini", "linf-pgd", 0, 10, tmp_path)
    other_toy = toy_suite(dataset_params={"d": 50})
    with pytest.raises(ConfigError, match=r"toy data .*'d': 99.* toy data .*'d': 50"):
        evaluate_shard(toy_checkpoint, other_toy, "linf-pgd", 0, 10, tmp_path)
    assert not (tmp_path / "results").exists()


def test_unknown_attack_name(toy_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"no attack 'pgd'; its attacks: linf-pgd"):
        evaluate_shard(toy_checkpoint, toy_suite(), "pgd", 0, 10, tmp_path)


def test_mnist_checkpoint_against_every_family(tmp_path, mnist_dir):
    """A tiny MNIST model against l_p, RT and both affine families, with the in-ball rule."""
    cfg = make_train_config({
        "dataset": {"name": "mnist", "n_train": 64}, "model": {"name": "mnist_cnn_small"},
        "strategy": "nat", "epochs": 1, "batch_size": 32, "label": "Nat",
    })
    ckpt = train(cfg, tmp_path / "train", data_dir=mnist_dir).checkpoint
    lin = {"type": "linf", "epsilon": 0.3, "k": 2}
    suite = parse_suite({
        "name": "mnist-tiny", "dataset": "mnist", "n_test": 12,
        "groups": {"lp": {"families": ["linf", "l1", "l2"], "affine": ["linf+l1"]},
                   "rt": {"families": ["linf", "rt"], "affine": ["linf+rt"]}},
        "attacks": [
            {"name": "linf", "kind": "first-order", "spec": lin},
            {"name": "l1", "kind": "first-order", "spec": {"type": "l1", "epsilon": 10.0, "k": 2}},
            {"name": "l2", "kind": "first-order", "spec": {"type": "l2", "epsilon": 2.0, "k": 2}},
            {"name": "rt", "kind": "grid", "spec": {"type": "rt", "grid_granularity": [3, 3, 3]}},
            {"name": "linf+rt", "kind": "first-order", "spec": {"type": "affine", "attacks": [
                {"type": "rt", "grid_granularity": [2, 2, 2]}, lin]}},
            {"name": "linf+l1", "kind": "first-order", "spec": {"type": "affine", "attacks": [
                lin, {"type": "l1", "epsilon": 10.0, "k": 2}]}},
        ],
    })
    paths = evaluate(ckpt, suite, out_dir=tmp_path / "eval", shard_size=12, data_dir=mnist_dir)
    df = read_results(paths)
    assert len(df) == 6 * 12
    for fam in ("rt", "linf+rt", "linf+l1"):
        rows = df[df["family"] == fam]
        assert rows["epsilon"].isna().all() and (rows["perturbation"] <= 1 + 1e-5).all()
    assert (df[df["family"] == "l1"]["perturbation"] <= 10 * (1 + 1e-5)).all()
    (summary,) = summarize(paths, suite.groups).values()
    assert set(summary["groups"]) == {"lp", "rt"}
    assert set(summary["groups"]["lp"]["affine"]) == {"linf+l1"}
    for g in summary["groups"].values():
        assert g["union"] <= g["average"] <= summary["clean"]
