"""PGD l_inf / l_2, SLIDE l_1, RT and the affine attacks: constraints, strength, seeds, specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jobs.attacks import (
    AttackConstraintError,
    AttackSpecError,
    L1Threat,
    LinfThreat,
    make_attack,
    perturbation_norm,
)

SPECS = {
    "linf": {"type": "linf", "epsilon": 0.3, "k": 8},
    "linf-reps": {"type": "linf", "epsilon": 0.3, "k": 4, "reps": 3},
    "linf-nostart": {"type": "linf", "epsilon": 0.2, "k": 6, "random_start": False},
    "l2": {"type": "l2", "epsilon": 2.0, "k": 8},
    "l2-reps": {"type": "l2", "epsilon": 2.0, "k": 4, "reps": 2, "a": 0.5},
    "l1": {"type": "l1", "epsilon": 10.0, "k": 8, "a": 1.0, "perc": 99},
    "l1-range-reps": {"type": "l1", "epsilon": 10.0, "k": 4, "a": 1.0, "perc": [80, 99], "reps": 2},
    "affine-linf-l1": {"type": "affine", "weight": 0.5, "attacks": [
        {"type": "linf", "epsilon": 0.3, "k": 4}, {"type": "l1", "epsilon": 10.0, "k": 4, "a": 1.0}]},
    "affine-linf-l1-dirichlet": {"type": "affine", "reps": 2, "attacks": [
        {"type": "l1", "epsilon": 10.0, "k": 3, "a": 1.0}, {"type": "linf", "epsilon": 0.3, "k": 3}]},
    "rt-grid": {"type": "rt", "grid_granularity": [3, 3, 7]},
    "rt-random": {"type": "rt", "random_tries": 10},
    "affine-linf-rt": {"type": "affine", "attacks": [
        {"type": "linf", "epsilon": 0.3, "k": 3}, {"type": "rt", "random_tries": 2}]},
}
N = 64  # inputs of the shared trained model used per test


@pytest.fixture(scope="module")
def trained(mnist_model):
    model, x, y = mnist_model
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return model, x[keep][:N], y[keep][:N]


def _budget(attack):
    return 1.0 if attack.family in ("linf+l1", "linf+rt", "rt") else attack.epsilon


@pytest.mark.parametrize("name", list(SPECS))
def test_attack_holds_constraints_lowers_accuracy_and_reproduces(name, trained):
    model, x, y = trained
    attack = make_attack(SPECS[name])
    model.train()
    r1 = attack(model, x, y, generator=torch.Generator().manual_seed(3))
    assert model.training, "the model's mode must be restored"
    model.eval()
    r2 = attack(model, x, y, generator=torch.Generator().manual_seed(3))
    assert not model.training
    # constraints (also asserted inside the attack)
    assert r1.x_adv.shape == x.shape and r1.x_adv.min() >= 0 and r1.x_adv.max() <= 1
    assert (r1.norm <= _budget(attack) * (1 + 1e-5)).all()
    if attack.family in ("linf", "l2", "l1"):
        assert torch.allclose(r1.norm, perturbation_norm(r1.x_adv - x, attack.family))
    # the reported loss / prediction are those of the model at x_adv
    with torch.no_grad():
        logits = model(r1.x_adv)
    assert torch.allclose(r1.loss, F.cross_entropy(logits, y, reduction="none"), atol=1e-4)
    assert torch.equal(r1.success, r1.pred != y)
    # x was all correctly classified: the attack must fool some of it
    assert r1.success.float().mean() > 0
    # same seed, same result
    for field in ("x_adv", "success", "loss", "pred", "norm"):
        assert torch.equal(getattr(r1, field), getattr(r2, field)), field


@pytest.mark.parametrize(("name", "steps"), [
    ("linf", 8), ("linf-reps", 12), ("l1-range-reps", 8), ("affine-linf-l1", 8),
    ("affine-linf-l1-dirichlet", 12), ("affine-linf-rt", 6),
])
def test_total_steps(name, steps):
    assert make_attack(SPECS[name]).total_steps == steps


def test_restarts_only_add_successes(trained):
    model, x, y = trained
    one = make_attack({"type": "linf", "epsilon": 0.15, "k": 4})(model, x, y, generator=torch.Generator().manual_seed(0))
    three = make_attack({"type": "linf", "epsilon": 0.15, "k": 4, "reps": 3})(
        model, x, y, generator=torch.Generator().manual_seed(0))
    assert (three.success | ~one.success).all()
    assert (three.loss[~one.success] >= one.loss[~one.success] - 1e-6).all()


class Linear2(nn.Module):
    """Two-class linear model on flat unbounded inputs: logits (0, w.x + b)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        z = x.flatten(1) @ self.w
        return torch.stack([torch.zeros_like(z), z], dim=1)


@pytest.mark.parametrize(("family", "extra", "optimum"), [
    ("linf", {}, lambda w: w.abs().sum()),
    ("l2", {}, lambda w: w.norm()),
    ("l1", {"perc": 99.0, "a": 0.5}, lambda w: w.abs().max()),
])
def test_linear_model_reaches_the_optimal_margin_drop(family, extra, optimum):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(100, generator=gen)
    model = Linear2(w)
    x = torch.randn(8, 1, 10, 10, generator=gen) * 0.01
    y = torch.ones(8, dtype=torch.long)  # class 1: margin = -(w.x); the attack lowers w.x
    eps = 0.05 if family == "linf" else 1.0
    spec = {"type": family, "epsilon": eps, "k": 20, "random_start": False, **extra}
    r = make_attack(spec, bounds=None)(model, x, y)
    drop = (x.flatten(1) @ w) - (r.x_adv.flatten(1) @ w)
    assert torch.allclose(drop, eps * optimum(w).expand(8), rtol=1e-2)


def test_slide_mask_matches_numpy_percentile_and_skips_blocked_coordinates():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(4, 50, generator=gen)
    for q in (0.0, 37.3, 50.0, 90.0, 99.0, 100.0):
        t = L1Threat(eps=5.0, step_size=1.0, bounds=None, perc=q)
        step = t.step(torch.zeros_like(g), g, torch.zeros_like(g))
        for row in range(4):
            mask = np.abs(g[row].numpy()) >= np.percentile(np.abs(g[row].numpy()), q)
            assert np.array_equal(step[row].numpy() != 0, mask), q
        assert torch.allclose(step.abs().sum(1), torch.ones(4))  # a = total l1 mass
    # a pixel at the top of the box whose gradient points up cannot move
    x0 = torch.zeros(1, 4)
    x0[0, 0] = 1.0
    grad = torch.tensor([[10.0, 1.0, 0.5, 0.1]])
    t = L1Threat(eps=5.0, step_size=1.0, bounds=(0.0, 1.0), perc=70.0)
    step = t.step(torch.zeros_like(x0), grad, x0)
    assert step[0, 0] == 0 and step[0, 1] > 0


def test_slide_mask_with_ties_and_mnist_size_and_lower_edge():
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(3, 784, generator=gen).round(decimals=1)  # many ties among |g|
    g = torch.where(g == 0, 0.1, g)  # (a zero gradient never moves: sign(0) = 0)
    for q in (1.0, 50.0, 98.9, 99.0, 99.5):
        t = L1Threat(eps=5.0, step_size=1.0, bounds=None, perc=q)
        step = t.step(torch.zeros_like(g), g, torch.zeros_like(g))
        for row in range(3):
            mask = np.abs(g[row].numpy()) >= np.percentile(np.abs(g[row].numpy()), q)
            assert np.array_equal(step[row].numpy() != 0, mask), q
            assert np.array_equal(np.sign(step[row].numpy()), np.sign(g[row].numpy()) * mask)
    # a pixel at the bottom of the box whose gradient points down cannot move; inside ones can
    x0 = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    grad = torch.tensor([[-10.0, 2.0, -1.0, -3.0]])
    t = L1Threat(eps=5.0, step_size=1.0, bounds=(0.0, 1.0), perc=50.0)
    step = t.step(torch.zeros_like(x0), grad, x0)
    assert step[0, 0] == 0 and step[0, 3] < 0 and step[0, 1] > 0 and step[0, 2] == 0


def test_zero_gradient_gives_no_nan():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    nn.init.zeros_(model[1].weight)
    x = torch.rand(3, 1, 4, 4)
    y = torch.zeros(3, dtype=torch.long)
    for family in ("linf", "l2", "l1"):
        r = make_attack({"type": family, "epsilon": 1.0, "k": 3, "random_start": False})(model, x, y)
        assert torch.isfinite(r.x_adv).all() and torch.equal(r.x_adv, x)


def test_a_perturbation_outside_the_budget_raises():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    attack = make_attack({"type": "linf", "epsilon": 0.1, "k": 2})
    attack.threat = LinfThreat(eps=0.5, step_size=0.5, bounds=(0.0, 1.0))  # a bug: wrong radius
    with pytest.raises(AttackConstraintError, match=r"exceeds the budget 0\.1"):
        attack(model, torch.full((2, 1, 4, 4), 0.5), torch.zeros(2, dtype=torch.long))


def test_bad_inputs_raise():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    attack = make_attack({"type": "linf", "epsilon": 0.1, "k": 1})
    x, y = torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="outside bounds"):
        attack(model, x + 2, y)
    with pytest.raises(ValueError, match="y must be a long tensor"):
        attack(model, x, y.float())
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="generator is on"):
            attack(model, x, y, generator=torch.Generator(device="cuda"))


BAD_SPECS = [
    ({"type": "l3", "epsilon": 1}, "'type'.*linf"),
    ({"epsilon": 1}, "'type'"),
    ({"type": "linf"}, "'epsilon': required"),
    ({"type": "linf", "epsilon": -0.1}, "'epsilon': must be >= 0"),
    ({"type": "linf", "epsilon": float("nan")}, "'epsilon'"),
    ({"type": "l2", "epsilon": 1, "k": 0}, "'k': must be an integer >= 1"),
    ({"type": "l2", "epsilon": 1, "k": 2.5}, "'k'"),
    ({"type": "l1", "epsilon": 1, "perc": 101}, "'perc'.*\\[0, 100\\]"),
    ({"type": "l1", "epsilon": 1, "perc": [90, 80]}, "'perc'.*range"),
    ({"type": "l1", "epsilon": 1, "perc": [90]}, "'perc'"),
    ({"type": "linf", "epsilon": 1, "perc": 99}, "'perc': unknown key.*allowed keys"),
    ({"type": "linf", "epsilon": 1, "epsilion": 2}, "'epsilion': unknown key"),
    ({"type": "linf", "epsilon": 1, "random_start": "yes"}, "'random_start'"),
    ({"type": "linf", "epsilon": 1, "reps": 0}, "'reps'"),
    ({"type": "linf", "epsilon": 1, "a": -1}, "'a'"),
    ({"type": "rt", "spatial_limits": [3, 3]}, "'spatial_limits'"),
    ({"type": "rt", "grid_granularity": [5, 0, 31]}, "'grid_granularity'"),
    ({"type": "rt", "random_tries": 0}, "'random_tries'"),
    ({"type": "affine", "attacks": [{"type": "linf", "epsilon": 1}]}, "'attacks'.*exactly two"),
    ({"type": "affine", "attacks": [{"type": "l2", "epsilon": 1}, {"type": "l1", "epsilon": 1}]}, "'attacks'"),
    ({"type": "affine", "weight": 1.5, "attacks": [{"type": "linf", "epsilon": 1}, {"type": "rt"}]}, "'weight'"),
    ({"type": "affine", "attacks": [{"type": "linf", "epsilon": 1, "k": 0}, {"type": "rt"}]}, "'attacks\\[0\\].k'"),
    ({"type": "affine", "attacks": [{"type": "linf", "epsilon": 1}, {"type": "rt", "bogus": 1}]}, "'attacks\\[1\\].bogus'"),
]


@pytest.mark.parametrize(("spec", "match"), BAD_SPECS, ids=[str(i) for i in range(len(BAD_SPECS))])
def test_bad_specs_raise_naming_the_key(spec, match):
    with pytest.raises(AttackSpecError, match=match):
        make_attack(spec)


def test_spec_defaults_are_filled_and_json_able():
    import json

    a = make_attack({"type": "linf", "epsilon": 0.3, "k": 40})
    assert a.spec == {"type": "linf", "epsilon": 0.3, "k": 40, "a": 2.5 * 0.3 / 40,
                      "random_start": True, "reps": 1}
    rt = make_attack({"type": "rt"})
    assert rt.spec["spatial_limits"] == [3.0, 3.0, 30.0] and rt.spec["grid_granularity"] == [5, 5, 31]
    assert np.isnan(rt.epsilon) and rt.family == "rt"
    aff = make_attack({"type": "affine", "attacks": [{"type": "linf", "epsilon": 0.3}, {"type": "rt"}]})
    assert aff.family == "linf+rt" and aff.spec["weight"] is None
    for attack in (a, rt, aff):
        assert json.loads(json.dumps(attack.spec)) == attack.spec
    with pytest.raises(ValueError, match="bounds"):
        make_attack({"type": "linf", "epsilon": 0.3}, bounds=(1.0, 0.0))


@pytest.mark.parametrize("family", ["linf", "l2", "l1"])
def test_result_loss_and_pred_are_the_models_at_x_adv(family):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 5, (16,))
    r = make_attack({"type": family, "epsilon": 1.0, "k": 4})(model, x, y)
    with torch.no_grad():
        logits = model(r.x_adv)
    assert torch.allclose(r.loss, F.cross_entropy(logits, y, reduction="none"), atol=1e-6)
    assert torch.equal(r.pred, logits.argmax(1)) and torch.equal(r.success, r.pred != y)


@pytest.mark.parametrize("family", ["linf", "l2", "l1"])
def test_last_iterate_is_scored_only_for_the_inputs_not_yet_fooled(family, trained):
    """k steps cost k forward+backward passes of every input plus one forward of the inputs that
    none of x_0 .. x_{k-1} fooled, which are those a (k-1)-step run (the same iterates, its last
    scored by its own final forward) leaves unfooled."""
    from jobs.train_cost import PassCounter

    model, x, y = trained
    spec = {"type": family, "epsilon": {"linf": 0.1, "l2": 1.0, "l1": 6.0}[family],
            "a": {"linf": 0.03, "l2": 0.4, "l1": 1.0}[family]}
    k = 4
    shorter = make_attack({**spec, "k": k - 1})(model, x, y, generator=torch.Generator().manual_seed(1))
    left = int((~shorter.success).sum())
    assert 0 < left < len(y), "the budget should leave some inputs unfooled"
    with PassCounter(model) as counter:
        make_attack({**spec, "k": k})(model, x, y, generator=torch.Generator().manual_seed(1))
    assert counter.counts["attack_bwd"] == k * len(y)
    assert counter.counts["attack_fwd"] == k * len(y) + left


def test_margin_gradient_is_the_gradient_of_the_margin_loss():
    from jobs.attacks.base import input_grad, margin_loss

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
    x = torch.rand(32, 1, 8, 8, requires_grad=True)
    y = torch.randint(0, 7, (32,))
    (expected,) = torch.autograd.grad(margin_loss(model(x), y).sum(), x)
    grad, logits = input_grad(model, x, y)
    assert torch.allclose(grad, expected, atol=1e-6)
    assert torch.equal(logits, model(x).detach())


@pytest.mark.parametrize("family", ["linf", "l2", "l1"])
def test_stopping_when_fooled_finds_the_same_inputs_for_fewer_passes(family, trained):
    """An input leaves at its first fooled iterate: the same inputs are fooled (the others'
    iterates are computed as before), each result is still the model's at a valid x_adv, and
    the passes drop by the fooled inputs' remaining steps."""
    from jobs.attacks.pgd import PGDAttack
    from jobs.attacks.spec import parse_spec
    from jobs.train_cost import PassCounter

    model, x, y = trained
    spec = parse_spec({"type": family, "epsilon": {"linf": 0.1, "l2": 1.0, "l1": 6.0}[family],
                       "a": {"linf": 0.03, "l2": 0.4, "l1": 1.0}[family], "k": 6, "reps": 2})
    results, counts = [], []
    for stop in (False, True):
        with PassCounter(model) as counter:
            results.append(PGDAttack(spec, stop_when_fooled=stop)(
                model, x, y, generator=torch.Generator().manual_seed(2)))
        counts.append(counter.counts["attack_bwd"])
    full, stopped = results
    assert torch.equal(stopped.success, full.success)
    assert 0 < int(full.success.sum()) < len(y)
    assert counts[1] < counts[0]
    with torch.no_grad():
        logits = model(stopped.x_adv)
    assert torch.allclose(stopped.loss, F.cross_entropy(logits, y, reduction="none"), atol=1e-5)
    assert torch.equal(stopped.pred, logits.argmax(1))
    assert (stopped.norm <= spec.epsilon * (1 + 1e-5)).all()
    robust = ~full.success  # never fooled: the very same iterates
    assert torch.allclose(stopped.x_adv[robust], full.x_adv[robust], atol=1e-6)
