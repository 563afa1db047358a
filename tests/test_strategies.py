"""Training strategies on constructed cases: which examples each trains on, how random and E-AT
draw their attack, and that E-AT's weights follow the published rule."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from jobs.config import STRATEGIES
from jobs.strategies import BUILDERS, EAT, RandomAttack, avg, get_strategy, max_, select_max


@dataclass
class FakeResult:
    x_adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor


class FakeAttack:
    """Adds a constant to x; reports a fixed per-input loss and fools the inputs in ``fooled``."""

    def __init__(self, shift: float, losses: list[float], fooled: list[bool] | None = None):
        self.shift, self.losses, self.calls = shift, torch.tensor(losses), 0
        self.fooled = None if fooled is None else torch.tensor(fooled)

    def __call__(self, model, x, y, *, generator=None):
        self.calls += 1
        success = torch.zeros(len(y), dtype=torch.bool) if self.fooled is None else self.fooled
        return FakeResult(x + self.shift, success, self.losses)


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1)[:, :1])


def test_every_strategy_name_has_a_builder():
    assert set(BUILDERS) == set(STRATEGIES)
    assert {get_strategy(name).name for name in STRATEGIES} == set(STRATEGIES)
    with pytest.raises(ValueError, match="unknown strategy 'minmax'; valid strategies: nat, single"):
        get_strategy("minmax")


def test_max_picks_per_input_the_highest_loss_attack():
    x, y = torch.zeros(4, 1), torch.tensor([0, 1, 0, 1])
    attacks = [
        FakeAttack(1.0, [5.0, 0.1, 0.2, 1.0]),
        FakeAttack(2.0, [1.0, 3.0, 0.1, 1.0]),
        FakeAttack(3.0, [0.0, 0.0, 9.0, 1.0]),
    ]
    model = Recorder()
    out = max_(model, x, y, attacks)
    (trained_on,) = model.seen
    assert trained_on[:, 0].tolist() == [1.0, 2.0, 3.0, 1.0]  # tie -> first attack
    assert out.n == 4 and torch.isfinite(out.loss)
    assert select_max(torch.tensor([[0.0, 2.0], [1.0, 1.0]])).tolist() == [1, 0]


def test_avg_trains_on_every_attack_batch():
    x, y = torch.zeros(3, 1), torch.tensor([0, 1, 1])
    attacks = [FakeAttack(s, [0.0] * 3) for s in (1.0, 2.0, 3.0)]
    model = Recorder()
    out = avg(model, x, y, attacks)
    (trained_on,) = model.seen
    assert trained_on[:, 0].tolist() == [1.0] * 3 + [2.0] * 3 + [3.0] * 3
    assert all(a.calls == 1 for a in attacks) and out.adv_correct.tolist() == [3, 3, 3]


@pytest.mark.parametrize("name", ["avg", "max", "single", "random", "eat", "msd"])
def test_strategies_refuse_wrong_attack_counts(name):
    with pytest.raises(ValueError, match=f"strategy '{name}' .*needs"):
        get_strategy(name)(Recorder(), torch.zeros(2, 1), torch.tensor([0, 1]), [])


# ----------------------------------------------------------------------------------------------
# random and eat: one attack per batch


class FixedU(random.Random):
    """Python's generator with ``random()`` pinned to one value."""

    def __init__(self, u: float):
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


@pytest.mark.parametrize("weights", [[0.7, 0.2, 0.5], [1.0, 1.0], [0.0, 1.0, 0.0], [0.1, 0.0, 0.9]])
def test_draw_is_the_rule_of_random_choices(weights):
    """The published E-AT code draws with ``random.choices(range(K), weights=ps)``."""
    sampler = RandomAttack(seed=3)
    for _ in range(300):
        twin = torch.Generator()
        twin.set_state(sampler.generator.get_state())
        u = float(torch.rand((), dtype=torch.float64, generator=twin))
        assert sampler.draw(weights) == FixedU(u).choices(range(len(weights)), weights=weights)[0]


def _result(correct: int, n: int = 100) -> FakeResult:
    fooled = torch.arange(n) >= correct
    return FakeResult(torch.zeros(n, 1), fooled, torch.zeros(n))


def test_eat_weights_follow_the_published_rule():
    """fra31/robust-finetuning train.py: weights 1 - (running robust accuracy) once every threat
    model has been drawn, equal before; the running accuracy counts every batch so far."""
    eat = EAT(seed=0)
    assert eat.weights(3) == [1.0, 1.0, 1.0]
    eat.observe(0, _result(30))
    assert eat.weights(3) == [1.0, 1.0, 1.0]  # attacks 1 and 2 not drawn yet
    eat.observe(1, _result(80))
    eat.observe(2, _result(50))
    assert eat.weights(3) == pytest.approx([0.7, 0.2, 0.5])
    eat.observe(0, _result(70))  # attack 0 now 100 of 200 inputs
    assert eat.weights(3) == pytest.approx([0.5, 0.2, 0.5])
    assert eat.robust_accuracies() == pytest.approx([0.5, 0.8, 0.5])
    assert (eat.correct, eat.seen) == ([100, 80, 50], [200, 100, 100])
    # E-AT's draws have those probabilities: 0.5 / 1.2, 0.2 / 1.2, 0.5 / 1.2
    n = 20000
    picks = torch.tensor([eat.draw(eat.weights(3)) for _ in range(n)])
    freq = torch.bincount(picks, minlength=3).double() / n
    assert freq.tolist() == pytest.approx([5 / 12, 2 / 12, 5 / 12], abs=0.015)  # ~4 sigma
    with pytest.raises(ValueError, match="tracking 3 attacks, got 2"):
        eat.weights(2)


def test_eat_draws_uniformly_when_no_attack_fools_the_model():
    eat = EAT(seed=0)
    eat.weights(2)
    eat.observe(0, _result(100))
    eat.observe(1, _result(100))
    assert eat.weights(2) == [1.0, 1.0]


def test_eat_trains_on_the_attack_the_model_is_weakest_against():
    """Attack 0 fools every input and attack 1 none: once both were drawn, E-AT draws only 0."""
    x, y = torch.zeros(4, 1), torch.tensor([0, 1, 0, 1])
    attacks = [FakeAttack(1.0, [0.0] * 4, fooled=[True] * 4),
               FakeAttack(2.0, [0.0] * 4, fooled=[False] * 4)]
    eat, model = get_strategy("eat", seed=1), Recorder()
    outs = [eat(model, x, y, attacks) for _ in range(30)]
    picks = [int(m[0, 0]) - 1 for m in model.seen]
    first_both = max(picks.index(0), picks.index(1))
    assert set(picks[first_both + 1 :]) == {0} and len(picks[first_both + 1 :]) > 20
    assert sum(a.calls for a in attacks) == 30  # one attack per batch
    assert [o.attacked for o in outs[-1:]] == [[4, 0]] and outs[-1].adv_correct.tolist() == [0, 0]
    assert eat.seen == [4 * picks.count(0), 4 * picks.count(1)]
    assert eat.correct == [0, 4 * picks.count(1)]


def test_random_draws_each_attack_equally_often_one_per_batch():
    x, y = torch.zeros(2, 1), torch.tensor([0, 1])
    attacks = [FakeAttack(float(s), [0.0] * 2) for s in (1, 2, 3)]
    strategy, model = get_strategy("random", seed=0), Recorder()
    n = 1500
    outs = [strategy(model, x, y, attacks) for _ in range(n)]
    assert [a.calls / n for a in attacks] == pytest.approx([1 / 3] * 3, abs=0.05)  # ~4 sigma
    assert all(sum(o.attacked) == 2 and o.adv_correct.sum() == 2 for o in outs)
    # the batch trained on is the drawn attack's
    assert all(int(m[0, 0]) - 1 == o.attacked.index(2) for m, o in zip(model.seen, outs, strict=True))
    twin = get_strategy("random", seed=0)
    assert [twin.draw([1.0] * 3) for _ in range(50)] == [o.attacked.index(2) for o in outs[:50]]


# ----------------------------------------------------------------------------------------------
# msd: one MSD attack over the training attacks' balls


def test_msd_trains_on_one_msd_attack_built_once_per_list_of_attacks():
    from jobs.attacks import make_attack
    from jobs.attacks.msd import MsdSpec

    specs = [{"type": "linf", "epsilon": 0.4, "k": 2}, {"type": "l1", "epsilon": 2.0, "k": 2}]
    full = [make_attack(s, bounds=None) for s in specs]
    small = [make_attack({**s, "epsilon": s["epsilon"] / 3}, bounds=None) for s in specs]
    msd, model = get_strategy("msd"), Recorder()
    x, y = torch.randn(5, 1), torch.tensor([0, 1, 0, 1, 1])
    out = msd(model, x, y, full, generator=torch.Generator().manual_seed(0))
    trained_on = model.seen[-1]  # the update's forward comes last
    combined = msd.combined(full)
    assert msd.combined(full) is combined and msd.combined(small) is not combined
    assert combined.spec == MsdSpec.combine(specs).to_dict() and combined.family == "msd"
    twin = combined(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(trained_on, twin.x_adv)
    robust = int((~twin.success).sum())
    assert out.adv_correct.tolist() == [robust, robust] and out.attacked == [5, 5]


# ----------------------------------------------------------------------------------------------
# Grids take the same strategy names and rules


def _grid(models: dict) -> dict:
    return {
        "name": "t",
        "evaluation": {"toy": {"suite": "toy", "n_test": 40, "shard_size": 20}},
        "experiments": {"toy": {
            "train": {"dataset": {"name": "toy"}, "model": {"name": "linear"}, "epochs": 1,
                      "batch_size": 100},
            "attacks": {"linf": {"type": "linf", "epsilon": 0.4, "k": 3},
                        "l1": {"type": "l1", "epsilon": 2.0, "k": 3}},
            "models": models,
        }},
    }  # fmt: skip


def test_grid_entries_take_random_and_eat_with_two_attacks_or_more():
    from orchestrator.grid import GridError, parse_grid
    from orchestrator.plan import expand_grid

    models = {"Adv_rand": {"strategy": "random", "attacks": ["linf", "l1"]},
              "Adv_eat": {"strategy": "eat", "attacks": ["linf", "l1"]}}
    plan = expand_grid(parse_grid(_grid(models), source="g.yaml"), source="g.yaml")
    assert sorted(t.strategy for t in plan.trials.values()) == ["eat", "random"]
    one = parse_grid(_grid({"Adv_eat": {"strategy": "eat", "attacks": ["linf"]}}), source="g.yaml")
    with pytest.raises(GridError, match=r"g\.yaml: experiments\.toy\.models\.Adv_eat .*strategy "
                                        r"'eat' .*needs at least 2 attacks, got 1"):
        expand_grid(one, source="g.yaml")


def test_grid_entries_take_msd_over_lp_attacks_only():
    from orchestrator.grid import GridError, parse_grid
    from orchestrator.plan import expand_grid

    plan = expand_grid(parse_grid(_grid({"Adv_msd": {"strategy": "msd", "attacks": ["linf", "l1"]}}),
                                  source="g.yaml"), source="g.yaml")  # fmt: skip
    (trial,) = plan.trials.values()
    assert trial.strategy == "msd" and [a["type"] for a in trial.config["attacks"]] == ["linf", "l1"]
    data = _grid({"Adv_msd": {"strategy": "msd", "attacks": ["linf", "rt"]}})
    data["experiments"]["toy"]["attacks"]["rt"] = {"type": "rt", "random_tries": 2}
    with pytest.raises(GridError, match=r"g\.yaml: experiments\.toy\.models\.Adv_msd .*strategy 'msd': "
                                        r"attack spec key 'attacks\[1\]\.type': an msd attack combines l_p "
                                        r"balls only"):
        expand_grid(parse_grid(data, source="g.yaml"), source="g.yaml")
