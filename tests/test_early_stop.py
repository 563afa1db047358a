"""Evaluation stops an input at its first fooling candidate: the verdicts are those of the full
run with the same seeds, for every attack that can stop (PGD and SLIDE are in test_attacks), and
each row says which example it kept."""

from __future__ import annotations

import pytest
import torch

import jobs.attacks
from jobs.attacks import make_attack
from jobs.attacks.base import BEST, CLEAN_INPUT, FIRST_FOOLED, LIBRARY, SMALLEST
from jobs.checkpoint import save_checkpoint
from jobs.config import make_train_config
from jobs.evaluation import evaluate
from jobs.models import MadryMNIST
from jobs.results import read_results
from jobs.suite import EvalSuite, parse_suite

RT = {"type": "rt", "spatial_limits": [1, 1, 6], "grid_granularity": [3, 3, 5], "random_tries": -1}
LINF = {"type": "linf", "epsilon": 0.1, "k": 5, "a": 0.03}
L1 = {"type": "l1", "epsilon": 5.0, "k": 5, "a": 1.0, "perc": 99}
L2 = {"type": "l2", "epsilon": 1.0, "k": 5}

STOPPABLE = {
    "rt": RT,
    "msd": {"type": "msd", "k": 5, "attacks": [
        {"type": "linf", "epsilon": 0.1, "a": 0.03}, {"type": "l2", "epsilon": 1.0, "a": 0.25},
        {"type": "l1", "epsilon": 5.0, "a": 1.0}]},
    "linf+l1": {"type": "affine", "attacks": [LINF, L1], "draws": 2},
    "linf+rt": {"type": "affine", "attacks": [RT, {**LINF, "epsilon": 0.05}], "draws": 2},
}


def _fooled(model, attack, x, y) -> torch.Tensor:
    result = attack(model, x, y, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    return pred != y


@pytest.mark.parametrize("name", sorted(STOPPABLE))
def test_stopping_attacks_fool_the_same_inputs(name, mnist_model):
    model, x, y = mnist_model
    x, y = x[:48], y[:48]
    full = make_attack(STOPPABLE[name])
    stopped = make_attack(STOPPABLE[name], stop_when_fooled=True)
    assert stopped.can_stop and stopped.stop_when_fooled and not full.stop_when_fooled
    fooled_full, fooled_stopped = _fooled(model, full, x, y), _fooled(model, stopped, x, y)
    assert 0 < int(fooled_full.sum()) < len(y), "the comparison needs fooled and robust inputs"
    assert torch.equal(fooled_full, fooled_stopped)
    assert stopped.example(True) == FIRST_FOOLED and stopped.example(False) == BEST
    assert full.example(True) == BEST


def test_attacks_that_cannot_stop_say_what_they_keep():
    square = make_attack({"type": "autoattack", "attack": "square", "norm": "linf",
                          "epsilon": 0.3, "n_queries": 10}, stop_when_fooled=True)
    assert not square.can_stop and not square.stop_when_fooled
    assert (square.example(True), square.example(False)) == (LIBRARY, CLEAN_INPUT)
    fab = make_attack({"type": "autoattack", "attack": "fab-t", "norm": "l2", "epsilon": 1.0},
                      stop_when_fooled=True)  # one restart: a minimum-norm attack
    assert (fab.example(True), fab.example(False)) == (SMALLEST, CLEAN_INPUT)


def _suite() -> EvalSuite:
    attacks = [
        {"name": "pgd_linf", "kind": "first-order", "spec": LINF},
        {"name": "pgd_linf_long", "kind": "first-order", "spec": {**LINF, "k": 10, "reps": 2}},
        {"name": "pgd_l1", "kind": "first-order", "spec": L1, "cascade": False},
        {"name": "rt", "kind": "gradient-free", "spec": RT},
        {"name": "linf+l1", "kind": "first-order", "spec": STOPPABLE["linf+l1"]},
    ]
    return parse_suite({"name": "early-stop", "dataset": "mnist", "seed": 0, "cascade": True,
                        "attacks": attacks})


def test_an_evaluation_gives_the_verdicts_of_the_full_run(mnist_model, mnist_dir, tmp_path,
                                                          monkeypatch):
    """The same suite evaluated twice, once with every attack run to its end: identical
    per-input verdicts; the rows of the stopping run name their first fooling candidates."""
    cfg = make_train_config({"label": "Nat", "dataset": {"name": "mnist"},
                             "model": {"name": "mnist_cnn_small"}, "strategy": "nat", "epochs": 1,
                             "batch_size": 10})
    model = MadryMNIST(cfg.dataset_info(), width=0.25)
    model.load_state_dict(mnist_model[0].state_dict())
    ckpt = save_checkpoint(tmp_path / "nat.pt", model=model, config=cfg.to_dict())
    suite = _suite()
    stop_paths = evaluate(ckpt, suite, n_test=40, out_dir=tmp_path / "stop", data_dir=mnist_dir)
    real = jobs.attacks.make_attack
    monkeypatch.setattr(jobs.attacks, "make_attack",
                        lambda spec, **kw: real(spec, **{**kw, "stop_when_fooled": False}))
    full_paths = evaluate(ckpt, suite, n_test=40, out_dir=tmp_path / "full", data_dir=mnist_dir)
    keys = ["attack", "index"]
    stop = read_results(stop_paths).sort_values(keys).reset_index(drop=True)
    full = read_results(full_paths).sort_values(keys).reset_index(drop=True)
    for column in ("fooled", "robust", "broken_by", "clean_pred"):
        assert stop[column].tolist() == full[column].tolist(), column
    attacked = stop[stop["example"] != "earlier"]
    assert set(attacked[attacked["fooled"]]["example"]) == {FIRST_FOOLED}
    assert set(attacked[~attacked["fooled"]]["example"]) == {BEST}
    assert set(full[(full["example"] != "earlier") & full["fooled"]]["example"]) == {BEST}
    skipped = stop[stop["example"] == "earlier"]
    assert len(skipped) and skipped["fooled"].all()
    assert (stop["example"] == "earlier").tolist() == (full["example"] == "earlier").tolist()

