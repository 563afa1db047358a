"""MSD (jobs.attacks.msd) and the ``msd`` strategy: the ball it picks on a linear model, every
candidate in its own ball ∩ box, refusals, seeds, the spec's round trip, the evaluation's in-ball
rule, the training cost as counted, and a bit-exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jobs.attacks import AttackSpecError, make_attack, parse_spec, perturbation_norm
from jobs.attacks.balls import UnionBall
from jobs.attacks.msd import MsdSpec
from jobs.attacks.norms import union_size
from jobs.config import ConfigError, make_train_config
from jobs.training import train

LINF = {"type": "linf", "epsilon": 0.3}
L2 = {"type": "l2", "epsilon": 2.0}
L1 = {"type": "l1", "epsilon": 10.0}
EPS_INF = 0.4020151261036849


def msd_spec(*balls: dict, **keys) -> dict:
    return {"type": "msd", "attacks": list(balls), **keys}


# ----------------------------------------------------------------------------------------------
# The ball MSD picks


def linear(w: torch.Tensor) -> nn.Module:
    """Two logits (0, w.x): for label 0 the margin loss is w.x and its input gradient is w."""
    model = nn.Linear(len(w), 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros_like(w), w]))
    return model


A = {"linf": 0.1, "l2": 0.5, "l1": 2.0}  # step sizes, each inside its ball (0.3, 2, 5)
D = 100


def steps(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each ball's steepest-ascent step from 0 along w: sign steps, the normalised gradient, and
    SLIDE at perc 99 of 100 coordinates (the coordinates of largest |w|, ties included)."""
    top = (w.abs() == w.abs().max()).float() * w.sign()
    return {"linf": A["linf"] * w.sign(), "l2": A["l2"] * w / w.norm(), "l1": A["l1"] * top / top.abs().sum()}


CASES = {  # w -> the ball whose step raises w.x most (closed form: a_inf ||w||_1, a_2 ||w||_2, a_1 max|w|)
    "dense": (torch.ones(D), "linf"),  # 10 vs 5 vs 2
    "one-hot": (torch.eye(D)[3] * -1.5, "l1"),  # 0.15 vs 0.75 vs 3
    "twenty": (torch.cat([torch.ones(20), torch.zeros(D - 20)]), "l2"),  # 2 vs 2.24 vs 2
    "mixed": (torch.linspace(-1, 1, D) ** 3, "linf"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_msd_picks_the_ball_whose_step_raises_the_loss_most(case):
    w, winner = CASES[case]
    gains = {fam: float(step @ w) for fam, step in steps(w).items()}
    closed_form = {"linf": A["linf"] * w.abs().sum(), "l2": A["l2"] * w.norm(), "l1": A["l1"] * w.abs().max()}
    assert gains == pytest.approx({f: float(v) for f, v in closed_form.items()})
    assert max(gains, key=gains.get) == winner
    spec = msd_spec({**LINF, "a": A["linf"]}, {**L2, "a": A["l2"]}, {"type": "l1", "epsilon": 5.0, "a": A["l1"]},
                    k=1, random_start=False)
    x, y = torch.zeros(2, D), torch.zeros(2, dtype=torch.long)
    res = make_attack(spec, bounds=None)(linear(w), x, y)
    expected = steps(w)[winner]
    assert torch.allclose(res.x_adv, expected.expand(2, D), atol=1e-6)
    assert torch.allclose(res.loss, torch.nn.functional.softplus(torch.tensor(gains[winner])).expand(2))
    assert torch.allclose(res.norm, union_size(res.x_adv - x, [("linf", 0.3), ("l2", 2.0), ("l1", 5.0)]))


def test_each_step_moves_to_the_best_candidate_of_the_current_iterate():
    """Three steps on the 'twenty' model, each from the iterate the step before chose: the l_2
    step wins every time (gains 2.24, 4.47, 6.71 against l_inf's 2, 4.24, 6 (clipped at 0.3) and
    l_1's 2, 4.24, 5 (projected onto its ball))."""
    w, _ = CASES["twenty"]
    spec = msd_spec({**LINF, "a": A["linf"]}, {**L2, "a": A["l2"]}, {"type": "l1", "epsilon": 5.0, "a": A["l1"]},
                    k=3, random_start=False)
    res = make_attack(spec, bounds=None)(linear(w), torch.zeros(1, D), torch.zeros(1, dtype=torch.long))
    assert torch.allclose(res.x_adv[0], 3 * steps(w)["l2"], atol=1e-6)  # 3 x 0.5 along w / ||w||
    assert float(res.norm) == pytest.approx(1.5 / 2.0)


# ----------------------------------------------------------------------------------------------
# Constraints


class Recording(nn.Module):
    """Records the inputs of every forward pass made without gradient (MSD's candidate scoring)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.scored = inner, []

    def forward(self, x):
        if not torch.is_grad_enabled():
            self.scored.append(x.detach().clone())
        return self.inner(x)


def test_every_candidate_lies_in_its_own_ball_and_the_box(mnist_model):
    model, x, y = mnist_model
    x, y = x[:24], y[:24]
    balls = [{**LINF, "a": 0.2}, {**L2, "a": 1.5}, {**L1, "a": 6.0, "perc": [80, 99]}]
    spec = msd_spec(*balls, k=4, reps=2)
    rec = Recording(model)
    res = make_attack(spec)(rec, x, y, generator=torch.Generator().manual_seed(0))
    radii = [(b["type"], b["epsilon"]) for b in balls]
    assert len(rec.scored) >= 4 and all(xs.min() >= 0 and xs.max() <= 1 for xs in rec.scored)
    for xs in rec.scored[:4]:  # the first restart's steps, on every input: [3 x B, ...]
        for (fam, eps), cand in zip(radii, xs.view(3, *x.shape), strict=True):
            assert (perturbation_norm(cand - x, fam) <= eps * (1 + 1e-5)).all(), fam
    # the result: inside one of the balls and the box; its norm is the union's measure
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    size = union_size(res.x_adv - x, radii)
    assert torch.equal(res.norm, size) and (size <= 1 + 1e-5).all()
    inside_one = torch.stack([perturbation_norm(res.x_adv - x, f) <= e * (1 + 1e-5) for f, e in radii]).any(0)
    assert inside_one.all()
    assert res.success.float().mean() > 0.5  # an undefended model falls to the union
    ball = parse_spec(spec).ball()
    got, inside = ball.contains(x, res)
    assert isinstance(ball, UnionBall) and torch.equal(got, size) and inside.all()


def test_random_start_lies_in_every_ball():
    """k = 1 with a zero gradient: the start is the only iterate that can be returned."""
    model = linear(torch.zeros(784))  # a start uniform in the l_inf cube lies outside the others
    spec = msd_spec({**LINF, "a": 0.0}, {**L2, "a": 0.0}, {**L1, "a": 0.0}, k=1)
    x, y = torch.rand(16, 784), torch.zeros(16, dtype=torch.long)
    res = make_attack(spec)(model, x, y, generator=torch.Generator().manual_seed(1))
    d = res.x_adv - x
    assert (d != 0).any()
    for fam, eps in (("linf", 0.3), ("l2", 2.0), ("l1", 10.0)):
        assert (perturbation_norm(d, fam) <= eps * (1 + 1e-5)).all(), fam


# ----------------------------------------------------------------------------------------------
# Specs


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (msd_spec(LINF, {"type": "rt"}), r"key 'attacks\[1\]\.type': an msd attack combines l_p "
                                         r"balls only, one of \['linf', 'l2', 'l1'\].*got 'rt'"),
        (msd_spec({"type": "affine", "attacks": [LINF, L1]}, L2), r"key 'attacks\[0\]\.type'.*got 'affine'"),
        (msd_spec(LINF, {"type": "autoattack", "attack": "apgd-ce"}), r"'attacks\[1\]\.type'.*l_p balls only"),
        (msd_spec(LINF), r"key 'attacks': must be a list of at least two l_p attack specs"),
        (msd_spec(LINF, {**L1, "k": 5}), r"key 'attacks\[1\]\.k': unknown key for type 'l1' inside an "
                                         r"msd spec \(k, reps and random_start are set on the msd spec\)"),
        (msd_spec(LINF, {**LINF, "epsilon": 0.1}), r"'attacks\[1\]\.type': must name each l_p family at most once"),
        (msd_spec(LINF, {**L2, "epsilon": 0}), r"'attacks\[1\]\.epsilon': must be > 0 inside an msd attack"),
        (msd_spec(LINF, L2, k=0), r"key 'k': must be an integer >= 1"),
        (msd_spec(LINF, {**L1, "perc": 120}), r"'attacks\[1\]\.perc'"),
        ({"type": "msd", "attacks": LINF}, r"key 'attacks': must be a list"),
        (msd_spec(LINF, L2, steps=3), r"key 'steps': unknown key for type 'msd'"),
    ],
    ids=["rt", "affine", "library", "one-ball", "inner-k", "twice", "eps0", "k0", "perc", "not-list", "typo"],
)
def test_bad_specs_are_refused_naming_the_key(spec, match):
    with pytest.raises(AttackSpecError, match=match):
        make_attack(spec)


def test_spec_defaults_round_trip_scaling_and_restarts():
    spec = parse_spec(msd_spec(LINF, {**L1, "perc": [80, 99]}, L2, k=20))
    assert isinstance(spec, MsdSpec) and (spec.k, spec.reps, spec.random_start) == (20, 1, True)
    assert [b.a for b in spec.attacks] == pytest.approx([2.5 * 0.3 / 20, 2.5 * 10 / 20, 2.5 * 2 / 20])
    assert spec.to_dict() == {"type": "msd", "k": 20, "reps": 1, "random_start": True, "attacks": [
        {"type": "linf", "epsilon": 0.3, "a": 0.0375},
        {"type": "l1", "epsilon": 10.0, "a": 1.25, "perc": [80.0, 99.0]},
        {"type": "l2", "epsilon": 2.0, "a": 0.25}]}  # fmt: skip
    assert parse_spec(spec.to_dict()) == spec
    small = spec.scaled(1 / 3)
    assert [b.epsilon for b in small.attacks] == pytest.approx([0.1, 10 / 3, 2 / 3])
    assert [b.a for b in small.attacks] == pytest.approx([b.a / 3 for b in spec.attacks])
    assert spec.with_restarts(5).reps == 5 and spec.with_restarts(5).attacks == spec.attacks
    attack = make_attack(spec)
    assert (attack.family, attack.epsilon, attack.total_steps) == ("msd", 1.0, 20)
    assert spec.ball().key == (("linf", 0.3), ("l1", 10.0), ("l2", 2.0)) and math.isnan(spec.ball().epsilon)
    with pytest.raises(ValueError, match="only l_p families take a radius"):
        spec.ball(0.5)


def test_combine_builds_msd_from_complete_lp_specs():
    specs = [{"type": "linf", "epsilon": 0.3, "k": 20, "a": 0.01}, {"type": "l2", "epsilon": 2.0, "k": 20, "a": 0.1}]
    combined = MsdSpec.combine(specs)
    assert combined.to_dict() == msd_spec({**LINF, "a": 0.01}, {**L2, "a": 0.1}, k=20, reps=1, random_start=True)
    with pytest.raises(AttackSpecError, match=r"'attacks\[1\]\.k': must equal attacks\[0\]\.k = 20 .*got 10"):
        MsdSpec.combine([specs[0], {**specs[1], "k": 10}])
    with pytest.raises(AttackSpecError, match=r"'attacks\[0\]\.type': an msd attack combines l_p balls only"):
        MsdSpec.combine([{"type": "rt", "random_tries": 2}, specs[0]])


def test_seeds_reproduce(mnist_model):
    model, x, y = mnist_model
    x, y = x[:16], y[:16]
    attack = make_attack(msd_spec(LINF, L2, {**L1, "perc": [80, 99]}, k=3, reps=2))
    runs = [attack(model, x, y, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    for field in ("x_adv", "success", "loss", "pred", "norm"):
        assert torch.equal(getattr(runs[0], field), getattr(runs[1], field)), field
    assert not torch.equal(runs[0].x_adv, runs[2].x_adv)


def test_the_evaluation_counts_an_msd_result_by_its_union_ball():
    from jobs.cascade import CascadePrior
    from jobs.evaluation import attack_inputs
    from jobs.suite import parse_suite

    suite = parse_suite({"name": "t", "dataset": "toy", "attacks": [{
        "name": "msd", "kind": "first-order", "budgets": [0.5],
        "spec": msd_spec({"type": "linf", "epsilon": EPS_INF}, {"type": "l1", "epsilon": 2.0}, k=5)}]})  # fmt: skip
    full, half = suite.attacks
    assert full.family == half.family == "msd" and half.ball().key == (("linf", round(EPS_INF / 2, 12)), ("l1", 1.0))
    w = torch.cat([torch.tensor([3.0]), torch.full((99,), 0.2)])
    model = nn.Sequential(nn.Flatten(), linear(w))
    x = torch.randn(40, 1, 10, 10) * 0.1
    y = torch.zeros(40, dtype=torch.long)
    attack = make_attack(full.spec, bounds=None)
    out = attack_inputs(model, torch.device("cpu"), attack, full.ball(), x, y, seed=0, batch_size=40,
                        prior=CascadePrior.attack_all(40))
    res = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    assert out.size == pytest.approx(res.norm.double().tolist(), rel=1e-6)
    assert all(s <= 1 + 1e-5 for s in out.size) and any(out.fooled)


# ----------------------------------------------------------------------------------------------
# The msd strategy


def toy(**changes) -> dict:
    base = {
        "dataset": {"name": "toy", "params": {"n_train": 300, "n_test": 10}},
        "model": {"name": "linear"}, "optimizer": {"name": "adam", "lr": 0.01},
        "strategy": "msd",
        "attacks": [{"type": "linf", "epsilon": EPS_INF, "k": 3}, {"type": "l1", "epsilon": 2.0, "k": 3}],
        "epochs": 2, "steps_per_epoch": 3, "batch_size": 50, "start_small": True,
    }  # fmt: skip
    return {**base, **changes}


@pytest.mark.parametrize(
    ("attacks", "match"),
    [
        ([{"type": "linf", "epsilon": 0.3}, {"type": "rt", "random_tries": 2}],
         r"strategy 'msd': attack spec key 'attacks\[1\]\.type': an msd attack combines l_p balls only"),
        ([{"type": "linf", "epsilon": 0.3, "k": 20}, {"type": "l1", "epsilon": 10, "k": 10}],
         r"strategy 'msd': attack spec key 'attacks\[1\]\.k': must equal attacks\[0\]\.k = 20"),
        ([{"type": "linf", "epsilon": 0.3}],
         r"strategy 'msd' trains against one MSD attack over the l_p balls of several attacks: it needs "
         r"at least 2 attacks, got 1"),
    ],
    ids=["rt", "k", "one"],
)
def test_msd_strategy_refuses_what_one_msd_attack_cannot_combine(attacks, match):
    with pytest.raises(ConfigError, match=match):
        make_train_config(toy(dataset={"name": "mnist"}, model={"name": "mnist_cnn_small"}, attacks=attacks))


def test_msd_training_cost_is_counted_as_it_runs(tmp_path):
    """Per clean example: k = 3 gradients (forward+backward) and 3 x 2 candidate scorings, no
    final forward; then the update's forward and backward."""
    result = train(make_train_config(toy()), tmp_path)
    for m in result.metrics:
        assert (m["attack_fwd_per_example"], m["attack_bwd_per_example"]) == (3 + 3 * 2, 3)
        assert (m["update_fwd_per_example"], m["update_bwd_per_example"]) == (1, 1)
        assert m["attacked/linf"] == m["attacked/l1"] == 1
        assert m["adv_acc/linf"] == m["adv_acc/l1"]  # both are MSD's: the union's
    assert result.cost["fwd_per_example"] == 10 and result.cost["bwd_per_example"] == 4


def test_msd_training_resumes_bit_exact(tmp_path):
    cfg = make_train_config(toy(epochs=3))
    full = train(cfg, tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_after_first(m):
        if m["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "cut", on_epoch=stop_after_first)
    resumed = train(cfg, tmp_path / "cut")
    assert resumed.resumed_from_epoch == 1
    a = torch.load(full.checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.checkpoint, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keep = ("train_loss", "clean_acc", "adv_acc/linf", "adv_acc/l1", "fwd_per_example")
    assert [{k: m[k] for k in keep} for m in full.metrics] == [{k: m[k] for k in keep} for m in resumed.metrics]
