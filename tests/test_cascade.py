"""Cascaded evaluation: the same per-input verdicts as running every attack on every input,
complete rows, the breaking attack recorded, and the suite rules for who cascades after whom."""

from __future__ import annotations

import pytest

from jobs.cascade import CLEAN
from jobs.checkpoint import save_checkpoint
from jobs.config import make_train_config
from jobs.evaluation import evaluate, shard_path
from jobs.models import MadryMNIST
from jobs.results import read_cascade, read_results
from jobs.suite import ConfigError, parse_suite

N_TEST = 24

# Deterministic attacks (no random start, C&W without the batch-coupled early abort), so that
# running on a subset of the inputs gives each input the same result as running on all of them.
ATTACKS = [
    {"name": "linf-weak", "kind": "first-order",
     "spec": {"type": "linf", "epsilon": 0.1, "k": 3, "random_start": False}},
    {"name": "linf-pgd", "kind": "first-order",
     "spec": {"type": "linf", "epsilon": 0.1, "k": 10, "random_start": False}},
    {"name": "linf-fmn", "kind": "first-order",
     "spec": {"type": "foolbox", "attack": "fmn_linf", "epsilon": 0.1, "steps": 10}},
    {"name": "l2-pgd", "kind": "first-order",
     "spec": {"type": "l2", "epsilon": 1.0, "k": 5, "random_start": False}},
    {"name": "l2-cw", "kind": "first-order",
     "spec": {"type": "foolbox", "attack": "cw_l2", "epsilon": 1.0, "binary_search_steps": 2,
              "steps": 10, "stepsize": 0.05, "initial_const": 1.0, "abort_early": False}},
]


def suite(cascade: bool, attacks=ATTACKS):
    return parse_suite({
        "name": "cascade-test", "dataset": "mnist", "seed": 0, "cascade": cascade, "attacks": attacks,
    })


@pytest.fixture(scope="module")
def plain_checkpoint(mnist_model, tmp_path_factory):
    cfg = make_train_config({
        "label": "Nat", "dataset": {"name": "mnist"}, "model": {"name": "mnist_cnn_small"},
        "strategy": "nat", "epochs": 1, "batch_size": 10,
    })
    model = MadryMNIST(cfg.dataset_info(), width=0.25)
    model.load_state_dict(mnist_model[0].state_dict())
    path = tmp_path_factory.mktemp("cascade") / "nat.pt"
    return save_checkpoint(path, model=model, config=cfg.to_dict()), cfg.model_id()


@pytest.fixture(scope="module")
def both_runs(plain_checkpoint, mnist_dir, tmp_path_factory):
    ckpt, model_id = plain_checkpoint
    out = {}
    for cascade in (False, True):
        run = tmp_path_factory.mktemp(f"run-{cascade}")
        paths = evaluate(ckpt, suite(cascade), n_test=N_TEST, out_dir=run, data_dir=mnist_dir,
                         shard_size=N_TEST)
        out[cascade] = (run, read_results(paths))
    return model_id, out


def test_cascade_gives_the_same_verdicts_as_running_everything(both_runs):
    _, runs = both_runs
    (_, full), (_, casc) = runs[False], runs[True]
    assert len(casc) == len(full) == N_TEST * len(ATTACKS)  # rows stay complete
    for fam in ("linf", "l2"):
        verdict_full = full[full["family"] == fam].groupby("index")["robust"].all()
        verdict_casc = casc[casc["family"] == fam].groupby("index")["robust"].all()
        assert verdict_casc.equals(verdict_full)
        assert 0 < verdict_full.sum() < N_TEST  # the case is not trivial
    # the first attack of each family is not cascaded: identical rows
    for first in ("linf-weak", "l2-pgd"):
        a = full[full["attack"] == first].drop(columns="shard_seconds").reset_index(drop=True)
        b = casc[casc["attack"] == first].drop(columns="shard_seconds").reset_index(drop=True)
        assert a.equals(b)


def test_skipped_inputs_record_the_breaking_attack(both_runs):
    model_id, runs = both_runs
    run, casc = runs[True]
    s = suite(True)
    assert s.attack("linf-pgd").after == ("linf-weak",)
    assert s.attack("linf-fmn").after == ("linf-weak", "linf-pgd")
    assert s.attack("l2-cw").after == ("l2-pgd",)
    assert read_cascade(shard_path(run, model_id, "linf-weak", 0, N_TEST)) is None
    record = read_cascade(shard_path(run, model_id, "linf-fmn", 0, N_TEST))
    assert record["after"] == ["linf-weak", "linf-pgd"]
    rows = {a: df.set_index("index") for a, df in casc.groupby("attack")}
    broken = record["broken_by"]
    assert broken and len(broken) < N_TEST  # some inputs skipped, some attacked
    assert set(broken.values()) <= {"linf-weak", "linf-pgd", CLEAN}
    for index, by in broken.items():
        row = rows["linf-fmn"].loc[index]
        assert bool(row["fooled"]) and not bool(row["robust"])
        if by == CLEAN:
            assert not bool(row["clean_correct"])
            continue
        src = rows[by].loc[index]
        assert bool(src["fooled"]) and bool(src["clean_correct"])
        assert row["adv_pred"] == src["adv_pred"]
        assert row["perturbation"] == src["perturbation"]
        assert row["loss"] == src["loss"]
        if by == "linf-pgd":  # the earlier attack in the cascade left it robust
            assert bool(rows["linf-weak"].loc[index]["robust"])


def test_cascaded_shard_is_idempotent_and_computes_missing_predecessors(
    plain_checkpoint, mnist_dir, tmp_path
):
    from jobs.evaluation import evaluate_shard

    ckpt, model_id = plain_checkpoint
    s = suite(True)
    path = evaluate_shard(ckpt, s, "l2-cw", 0, 8, tmp_path, data_dir=mnist_dir)
    assert shard_path(tmp_path, model_id, "l2-pgd", 0, 8).exists()  # computed on the way
    mtime = path.stat().st_mtime_ns
    assert evaluate_shard(ckpt, s, "l2-cw", 0, 8, tmp_path, data_dir=mnist_dir) == path
    assert path.stat().st_mtime_ns == mtime


def test_kinds_cascade_separately_and_explicit_lists():
    attacks = [
        {"name": "a", "kind": "first-order", "spec": {"type": "l2", "epsilon": 1.0, "k": 2}},
        {"name": "b", "kind": "gradient-free",
         "spec": {"type": "autoattack", "attack": "square", "norm": "l2", "epsilon": 1.0}},
        {"name": "c", "kind": "first-order",
         "spec": {"type": "autoattack", "attack": "apgd-ce", "norm": "l2", "epsilon": 1.0}},
        {"name": "d", "kind": "gradient-free", "cascade": ["a", "b"],
         "spec": {"type": "foolbox", "attack": "boundary_l2", "epsilon": 1.0}},
        {"name": "e", "kind": "first-order", "cascade": False,
         "spec": {"type": "l2", "epsilon": 1.0, "k": 5}},
        {"name": "f", "kind": "first-order", "spec": {"type": "l2", "epsilon": 0.5, "k": 5}},
    ]
    s = suite(True, attacks)
    after = {a.name: a.after for a in s.attacks}
    assert after == {"a": (), "b": (), "c": ("a",), "d": ("a", "b"), "e": (), "f": ()}
    assert "after" not in s.attack("a").to_dict() and s.attack("c").to_dict()["after"] == ["a"]
    per_attack = suite(False, [attacks[0], {**attacks[2], "cascade": True}])
    assert per_attack.attack("c").after == ("a",)


def test_budget_copies_cascade_within_their_budget_and_across_radii():
    attacks = [
        {"name": "p", "kind": "first-order", "spec": {"type": "l2", "epsilon": 1.0, "k": 2},
         "budgets": [0.5]},
        {"name": "q", "kind": "first-order", "spec": {"type": "l2", "epsilon": 1.0, "k": 4},
         "budgets": [0.5], "cascade": ["p"]},
    ]
    s = suite(False, attacks)
    # each copy first after its own smaller-radius copy, then after the named attack at its budget
    assert s.attack("q").after == ("q@0.5", "p") and s.attack("q@0.5").after == ("p@0.5",)
    assert s.attack("p").after == ("p@0.5",) and s.attack("p@0.5").after == ()
    assert [a.name for a in s.attacks] == ["p", "p@0.5", "q", "q@0.5"]


@pytest.mark.parametrize(("attacks", "cascade", "match"), [
    ([{"name": "x", "kind": "first-order", "spec": {"type": "l2", "epsilon": 1.0}, "cascade": ["y"]},
      {"name": "y", "kind": "first-order", "spec": {"type": "l2", "epsilon": 1.0}}],
     False, r"attacks\[0\]\.cascade.*'y' is not an attack listed before 'x'"),
    ([{"name": "x", "kind": "first-order", "spec": {"type": "linf", "epsilon": 0.1}},
      {"name": "y", "kind": "first-order", "spec": {"type": "l2", "epsilon": 1.0}, "cascade": ["x"]}],
     False, r"attacks\[1\]\.cascade.*another family, budget or ball"),
    ([{"name": "x", "kind": "first-order", "spec": {"type": "l2", "epsilon": 1.0}, "cascade": "yes"}],
     False, r"attacks\[0\]\.cascade.*must be true, false or a non-empty list"),
    ([{"name": "x", "kind": "first-order", "spec": {"type": "l2", "epsilon": 1.0}}],
     "always", r"field 'cascade'.*must be true or false"),
])
def test_bad_cascades_are_refused(attacks, cascade, match):
    with pytest.raises(ConfigError, match=match):
        suite(cascade, attacks)


def test_the_prior_names_what_broke_each_input_and_converts_budget_fractions():
    """Within a radius a row keeps what its earlier row names (an AutoAttack component too);
    across radii, an input the smaller copy's own run broke is named by that copy, and sizes
    that are fractions of the budget (rt, affine) are converted to the larger budget's."""
    import pandas as pd

    from jobs.cascade import Earlier, prior_from_rows

    rows = pd.DataFrame({
        "robust": [False, False, False, True], "clean_correct": [True, True, False, True],
        "broken_by": ["apgd-t", "aa@0.25", "clean", ""], "adv_pred": [3, 4, 5, 0],
        "perturbation": [0.5, 0.2, 0.0, 0.1], "loss": [1.0, 2.0, 3.0, 0.1],
    })
    labels = ("aa@0.5", "apgd-ce", "apgd-t", "fab-t", "square")
    within = prior_from_rows([Earlier("aa@0.5", rows, labels)], 4)
    assert within.broken_by == ["apgd-t", "aa@0.25", CLEAN, None]
    assert within.skip == [True, True, True, False] and within.adv_pred[:3] == [3, 4, 5]
    across = prior_from_rows([Earlier("aa@0.5", rows, labels, smaller_radius=True,
                                      size_factor=0.5)], 4)
    assert across.broken_by == ["aa@0.5", "aa@0.25", CLEAN, None]
    assert across.perturbation[:2] == [0.25, 0.1]
