"""The strong suites: every library attack states its budget in the suite file, the cascade runs
the decision-based attacks last (after Square, on the inputs still robust), and the strong
suite's attacks run end to end through jobs.evaluation on a tiny model at tiny budgets."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from jobs.checkpoint import save_checkpoint
from jobs.config import make_train_config
from jobs.evaluation import evaluate
from jobs.models import MadryMNIST
from jobs.results import read_cascade, read_results
from jobs.suite import load_suite, parse_suite

SUITES_DIR = Path(__file__).resolve().parents[1] / "jobs" / "suites"
DECISION_BASED = ("hsj_linf", "hsj_l2", "boundary_l2", "pointwise_l1")

# The keys that set each library attack's cost: a suite must state them, not lean on defaults.
BUDGET_KEYS = {
    ("foolbox", "cw_l2"): ("binary_search_steps", "steps"),
    ("foolbox", "ead_l1"): ("binary_search_steps", "steps"),
    ("foolbox", "hsj_linf"): ("steps", "initial_gradient_eval_steps", "max_gradient_eval_steps",
                              "init_steps"),
    ("foolbox", "boundary_l2"): ("steps", "init_steps"),
    ("foolbox", "pointwise_l1"): ("init_steps", "l2_binary_search"),
    ("autoattack", "apgd-ce"): ("n_iter", "n_restarts"),
    ("autoattack", "apgd-t"): ("n_iter", "n_target_classes"),
    ("autoattack", "fab-t"): ("n_iter", "n_target_classes"),
    ("autoattack", "square"): ("n_queries",),
    ("autoattack", "standard"): ("version",),  # AutoAttack's own budgets, as shipped
    **{("foolbox", f"fmn_{n}"): ("steps",) for n in ("linf", "l2", "l1")},
}

# Tiny values for the same keys (CPU seconds); everything else as in the shipped suite.
TINY = {
    ("foolbox", "cw_l2"): {"binary_search_steps": 2, "steps": 10, "stepsize": 0.05,
                           "initial_const": 1.0},
    ("foolbox", "ead_l1"): {"binary_search_steps": 2, "steps": 10, "initial_stepsize": 0.05,
                            "initial_const": 1.0},
    ("foolbox", "hsj_linf"): {"steps": 2, "initial_gradient_eval_steps": 10,
                              "max_gradient_eval_steps": 20, "init_steps": 20},
    ("foolbox", "boundary_l2"): {"steps": 30, "init_steps": 20},
    ("foolbox", "pointwise_l1"): {"init_steps": 50, "l2_binary_search": False},
    ("autoattack", "apgd-ce"): {"n_iter": 5, "n_restarts": 1},
    ("autoattack", "apgd-t"): {"n_iter": 5, "n_target_classes": 2},
    ("autoattack", "fab-t"): {"n_iter": 5, "n_target_classes": 2},
    ("autoattack", "square"): {"n_queries": 30},
    **{("foolbox", f"fmn_{n}"): {"steps": 10} for n in ("linf", "l2", "l1")},
}


def raw_attacks(suite: str) -> list[dict]:
    return yaml.safe_load((SUITES_DIR / f"{suite}.yaml").read_text())["attacks"]


def library_key(spec: dict) -> tuple[str, str] | None:
    if spec["type"] not in ("foolbox", "autoattack"):
        return None
    return (spec["type"], spec.get("attack") or spec["version"])


@pytest.mark.parametrize("suite", ["mnist-paper", "mnist-strong", "cifar10-paper",
                                   "cifar10-strong", "mnist-mini", "toy-nonlinear"])
def test_every_library_attack_states_its_budget(suite):
    library = [a for a in raw_attacks(suite) if library_key(a["spec"])]
    assert library, suite
    for attack in library:
        missing = [k for k in BUDGET_KEYS[library_key(attack["spec"])] if k not in attack["spec"]]
        assert not missing, f"{suite}: {attack['name']} leaves {missing} to the library default"


@pytest.mark.parametrize(("suite", "families"), [
    ("mnist-strong", ("linf", "l2", "l1")), ("cifar10-strong", ("linf", "l1")),
])
def test_strong_suites_run_decision_based_attacks_last_on_the_inputs_square_left(suite, families):
    s = load_suite(suite)
    names = [a.name for a in s.attacks]
    kinds = [a.kind for a in s.attacks]
    # every gradient-free attack comes after every first-order and grid attack
    last_other = max(i for i, k in enumerate(kinds) if k != "gradient-free")
    assert last_other < kinds.index("gradient-free")
    for family in families:
        full = [a for a in s.attacks if a.family == family and a.budget == 1.0]
        gradient_free = [a for a in full if a.kind == "gradient-free"]
        square = [a for a in gradient_free if a.spec.to_dict().get("attack") == "square"]
        decision = [a for a in gradient_free if a.spec.to_dict().get("attack") in DECISION_BASED]
        assert len(square) == 1 and len(decision) == 1, (family, [a.name for a in gradient_free])
        # after its own copy at 3/4 of the radius, after Square, and after every first-order
        # attack of its family (each of which Square also waits for)
        first = [a for a in full if a.kind == "first-order"]
        assert {decision[0].below, square[0].name} <= set(decision[0].after)
        assert {a.name for a in first} <= set(square[0].after)
        assert set(square[0].after) - {square[0].below} <= set(decision[0].after)
        assert names.index(decision[0].name) > names.index(square[0].name)
        # AutoAttack's components and C&W / EAD / FMN cascade after the paper's PGD / SLIDE
        assert first[0].spec.to_dict()["type"] == family and all(first[0].name in a.after for a in first[1:])
    # every attack of the paper's suite is here, with the same spec or, for AutoAttack's
    # components, at least the same effort (more restarts)
    paper = load_suite(suite.replace("strong", "paper"))
    for attack in paper.attacks:
        mine = s.attack(attack.name).spec
        if mine != attack.spec:
            ours, theirs = mine.to_dict(), attack.spec.to_dict()
            assert ours["attack"] == theirs["attack"] and all(
                ours[k] >= theirs[k] for k in ("n_iter", "n_restarts", "n_target_classes",
                                                "n_queries") if k in theirs), attack.name


def tiny_strong_suite() -> dict:
    """mnist-strong's l_p attacks in its order, cascaded, with tiny budgets: PGD/SLIDE at the
    full radius only, then every library attack but AutoAttack's ensemble with the TINY
    overrides."""
    attacks = []
    for attack in raw_attacks("mnist-strong"):
        spec = copy.deepcopy(attack["spec"])
        key = library_key(spec)
        if key == ("autoattack", "standard") or (key is None and spec["type"] not in ("linf", "l2", "l1")):
            # AutoAttack's ensemble (its budgets are AutoAttack's own), the RT grid and the
            # affine adversaries are tested elsewhere
            continue
        spec.update(TINY[key] if key is not None else {"k": 5, "reps": 1})
        attacks.append({"name": attack["name"], "kind": attack["kind"], "spec": spec})
    return {"name": "strong-tiny", "dataset": "mnist", "seed": 0, "cascade": True,
            "groups": {"mnist-lp": {"families": ["linf", "l1", "l2"], "affine": []}},
            "attacks": attacks}


def test_strong_suite_attacks_run_through_the_evaluation(mnist_model, mnist_dir, tmp_path):
    n = 8
    cfg = make_train_config({"label": "Nat", "dataset": {"name": "mnist"},
                             "model": {"name": "mnist_cnn_small"}, "strategy": "nat",
                             "epochs": 1, "batch_size": 10})
    model = MadryMNIST(cfg.dataset_info(), width=0.25)
    model.load_state_dict(mnist_model[0].state_dict())
    ckpt = save_checkpoint(tmp_path / "nat.pt", model=model, config=cfg.to_dict())
    suite = parse_suite(tiny_strong_suite())
    names = [a.name for a in suite.attacks]
    assert {a.spec.to_dict()["type"] for a in suite.attacks} == {"linf", "l2", "l1", "foolbox", "autoattack"}
    # per family: PGD/SLIDE, APGD-CE, APGD-T, FAB-T, FMN, Square, a decision-based attack; and
    # C&W (l_2), EAD (l_1)
    assert len(names) == 3 * 7 + 2

    paths = evaluate(ckpt, suite, n_test=n, out_dir=tmp_path / "run", data_dir=mnist_dir,
                     shard_size=n)
    df = read_results(paths)
    # complete rows: every attack, every input
    assert sorted(df["attack"].unique()) == sorted(names)
    assert (df.groupby("attack")["index"].nunique() == n).all() and len(df) == n * len(names)
    clean = df.groupby("index")["clean_correct"].all()
    assert int(clean.sum()) >= n - 1
    # every family's verdict is below clean accuracy, and fooled rows lie in the ball
    for family, eps in (("linf", 0.3), ("l2", 2.0), ("l1", 10.0)):
        rows = df[df["family"] == family]
        robust = rows.groupby("index")["robust"].all()
        assert int(robust.sum()) < int(clean.sum()), family
        assert (rows.loc[rows["fooled"], "perturbation"] <= eps * (1 + 1e-5)).all(), family
    # the decision-based attacks ran after Square and recorded it; a cascade's rows are cumulative
    by_path = {Path(p).name.split("__")[0]: p for p in paths}
    attacked = []
    for decision, square in (("linf-hsj", "linf-square"), ("l2-boundary", "l2-square"),
                             ("l1-pointwise", "l1-square")):
        record = read_cascade(by_path[decision])
        assert record is not None and record["after"] == [square]
        before = df[df["attack"] == square].set_index("index")["robust"]
        after = df[df["attack"] == decision].set_index("index")["robust"]
        assert not (after & ~before).any()  # robust after the cascade => robust before it
        for index, name in record["broken_by"].items():
            assert name in (square, "clean") and not after[index]
        attacked.append(n - len(record["broken_by"]))
    assert sum(attacked) > 0  # the decision-based attacks did run on some inputs
