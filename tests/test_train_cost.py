"""The training cost is counted, not estimated: passes per example on known models and batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jobs.config import make_train_config
from jobs.train_cost import PassCounter, training_cost
from jobs.training import train

EPS_INF = 0.4020151261036849
LINF3 = {"type": "linf", "epsilon": EPS_INF, "k": 3}
L1_3 = {"type": "l1", "epsilon": 2.0, "k": 3}
L1_5 = {"type": "l1", "epsilon": 2.0, "k": 5}


def test_pass_counter_counts_examples_by_mode_and_direction():
    model = nn.Linear(3, 2)
    with PassCounter(model) as counter:
        model.eval()  # an attack: input gradient, then a scoring pass without gradient
        x = torch.zeros(5, 3, requires_grad=True)
        torch.autograd.grad(model(x).sum(), x)
        with torch.no_grad():
            model(torch.zeros(4, 3))
        model.train()  # the update
        model(torch.zeros(6, 3)).sum().backward()
        model(torch.zeros(2, 3))  # a forward whose backward never runs
    model(torch.zeros(7, 3)).sum().backward()  # after the counter: not counted
    assert counter.counts == {"attack_fwd": 9, "attack_bwd": 5, "update_fwd": 8, "update_bwd": 6}
    per = counter.per_example(2)
    assert (per["fwd_per_example"], per["bwd_per_example"]) == (8.5, 5.5)


def _toy(strategy: str, attacks: list[dict]) -> dict:
    return {
        "dataset": {"name": "toy", "params": {"n_train": 300, "n_test": 10}},
        "model": {"name": "linear"}, "optimizer": {"name": "adam", "lr": 0.01},
        "strategy": strategy, "attacks": attacks, "epochs": 2, "steps_per_epoch": 3,
        "batch_size": 50, "start_small": True,
    }  # fmt: skip


# per clean training example: (attack fwd+bwd passes, attack runs, update fwd, update bwd). PGD with
# k steps and one start runs k forward+backward passes, plus one forward that scores the last
# iterate of the inputs the first k iterates did not fool (between 0 and 1 per run and example;
# tests/test_attacks.py counts it exactly).
HAND_COUNTED = [
    ("nat", [], (0, 0, 1, 1)),
    ("single", [LINF3], (3, 1, 1, 1)),
    ("avg", [LINF3, L1_3], (2 * 3, 2, 2, 2)),  # the update trains on 2 x B inputs
    ("max", [LINF3, L1_3], (2 * 3, 2, 1, 1)),
    ("random", [LINF3, L1_3], (3, 1, 1, 1)),
    ("eat", [LINF3, L1_3], (3, 1, 1, 1)),
]


@pytest.mark.parametrize(("strategy", "attacks", "expected"), HAND_COUNTED, ids=[c[0] for c in HAND_COUNTED])
def test_passes_per_example_are_the_hand_counted_ones(tmp_path, strategy, attacks, expected):
    result = train(make_train_config(_toy(strategy, attacks)), tmp_path)
    steps, runs, update_fwd, update_bwd = expected
    for m in result.metrics:
        assert m["attack_bwd_per_example"] == steps
        assert steps <= m["attack_fwd_per_example"] <= steps + runs
        assert (m["update_fwd_per_example"], m["update_bwd_per_example"]) == (update_fwd, update_bwd)
        assert m["fwd_per_example"] == m["attack_fwd_per_example"] + update_fwd
        assert m["bwd_per_example"] == steps + update_bwd
        assert m["examples"] == 150 and m["device"].startswith("cpu (")
    assert result.metrics[1]["train_seconds"] == pytest.approx(
        result.metrics[0]["seconds"] + result.metrics[1]["seconds"])
    cost = result.cost
    assert cost == training_cost(result.metrics)
    fwd = sum(m["fwd_per_example"] for m in result.metrics) / 2  # two epochs of 150 examples
    assert cost["fwd_per_example"] == pytest.approx(fwd) and cost["examples"] == 300
    assert cost["train_seconds"] == result.metrics[-1]["train_seconds"] > 0
    saved = torch.load(result.checkpoint, weights_only=True)["extra"]["cost"]
    assert saved == cost


@pytest.mark.parametrize("strategy", ["random", "eat"])
def test_one_attack_per_batch_counts_the_attack_it_drew(tmp_path, strategy):
    """Attacks of 3 and 5 steps: the count follows the draws (attacked/<family>)."""
    result = train(make_train_config(_toy(strategy, [LINF3, L1_5])), tmp_path)
    for m in result.metrics:
        share_inf, share_1 = m["attacked/linf"], m["attacked/l1"]
        assert share_inf + share_1 == 1
        bwd = 3 * share_inf + 5 * share_1
        assert m["attack_bwd_per_example"] == pytest.approx(bwd)
        assert bwd <= m["attack_fwd_per_example"] <= bwd + 1
        assert m["update_fwd_per_example"] == m["update_bwd_per_example"] == 1


def test_rt_and_restarts_count_what_ran(tmp_path, mnist_dir):
    """RT with 2 random tries: 2 scoring forwards, no backward. PGD with 2 restarts: the second
    start runs only on the inputs the first did not fool, so its cost lies between 1 and 2 runs."""
    base = {"dataset": {"name": "mnist", "n_train": 200}, "model": {"name": "mnist_cnn_small"},
            "epochs": 1, "steps_per_epoch": 2, "batch_size": 16}
    rt = {"type": "rt", "spatial_limits": [3, 3, 30], "random_tries": 2}
    (m,) = train(make_train_config({**base, "strategy": "single", "attacks": [rt]}),
                 tmp_path / "rt", data_dir=mnist_dir).metrics
    assert (m["attack_fwd_per_example"], m["attack_bwd_per_example"]) == (2, 0)
    pgd = {"type": "linf", "epsilon": 0.1, "k": 2, "reps": 2}
    (m,) = train(make_train_config({**base, "strategy": "single", "attacks": [pgd]}),
                 tmp_path / "pgd", data_dir=mnist_dir).metrics
    bwd = m["attack_bwd_per_example"]
    assert 2 < bwd <= 4 and bwd <= m["attack_fwd_per_example"] <= bwd * 3 / 2


def test_epochs_resumed_from_a_state_without_cost_records_are_named_not_a_crash():
    from jobs.train_cost import COST_KEYS

    new = {"examples": 100, "device": "cpu (1 threads)", "train_seconds": 3.0,
           **{k: 2.0 for k in COST_KEYS}}
    old = {"examples": 100, "train_loss": 1.0}  # an epoch recorded before costs were counted
    cost = training_cost([old, new])
    assert cost["uncounted_epochs"] == 1 and cost["examples"] == 100
    assert cost["fwd_per_example"] == 2.0 and cost["train_seconds"] == 3.0
    assert "uncounted_epochs" not in training_cost([new, new])
