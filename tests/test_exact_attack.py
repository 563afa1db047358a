"""The exact attack (``type: exact``): the worst case of an affine model on an l_p ball within the
box, checked against a solver, against PGD / SLIDE and AutoAttack's Square on the same model, in
the toy suite's evaluation, and refused for models that are not affine (directly and in a grid)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from jobs.attacks import make_attack
from jobs.attacks.checks import AttackSpecError
from jobs.attacks.exact.attack import worst_case
from jobs.datasets import dataset_info
from jobs.evaluation import evaluate
from jobs.models import build_model
from jobs.results import read_results
from jobs.suite import load_suite
from orchestrator.grid import GridError, builtin_grid_path, parse_grid
from orchestrator.plan import expand_grid

EPS = {"linf": 0.05, "l1": 1.5, "l2": 0.4}


def _solver_max(g: np.ndarray, x: np.ndarray, family: str, eps: float) -> float:
    """max g . delta over ||delta||_p <= eps, 0 <= x + delta <= 1, by a generic solver."""
    d = len(g)
    if family == "linf":
        res = linprog(-g, bounds=[(max(-eps, -x[i]), min(eps, 1 - x[i])) for i in range(d)])
        return -res.fun
    if family == "l1":  # delta = p - q with p, q >= 0 and sum(p + q) <= eps
        res = linprog(np.concatenate([-g, g]), A_ub=np.ones((1, 2 * d)), b_ub=[eps],
                      bounds=[(0, 1 - x[i]) for i in range(d)] + [(0, x[i]) for i in range(d)])
        return -res.fun
    res = minimize(lambda v: -g @ v, np.zeros(d), jac=lambda v: -g, method="SLSQP",
                   bounds=[(-x[i], 1 - x[i]) for i in range(d)],
                   constraints=[{"type": "ineq", "fun": lambda v: eps**2 - v @ v,
                                 "jac": lambda v: -2 * v}],
                   options={"maxiter": 1000, "ftol": 1e-13})
    return -res.fun


@pytest.fixture(scope="module")
def linear_mnist():
    torch.manual_seed(0)
    model = build_model("linear", dataset_info("mnist")).eval()
    x = torch.rand(8, 1, 28, 28) * 0.8 + 0.1
    x[:, :, :4] = 0.0  # rows at the box's edge: the box binds
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("family", ["linf", "l1", "l2"])
def test_exact_reaches_the_solvers_maximum_margin_inside_ball_and_box(linear_mnist, family):
    model, x, y = linear_mnist
    eps = EPS[family]
    result = make_attack({"type": "exact", "norm": family, "epsilon": eps})(model, x, y)
    w = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy()
    assert float(result.norm.max()) <= eps * (1 + 1e-5)
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    for i in range(len(x)):
        xi, yi = x[i].flatten().double().numpy(), int(y[i])
        z = w @ result.x_adv[i].flatten().double().numpy() + b
        ours = max(z[j] - z[yi] for j in range(10) if j != yi)
        best = max((w[j] - w[yi]) @ xi + b[j] - b[yi] + _solver_max(w[j] - w[yi], xi, family, eps)
                   for j in range(10) if j != yi)
        assert ours == pytest.approx(best, abs=1e-4)
        assert bool(result.success[i]) == (ours > 0)


def test_worst_case_l2_without_a_binding_box_is_the_scaled_gradient():
    g = torch.tensor([[3.0, -4.0, 0.0]], dtype=torch.float64)
    t = worst_case(g, torch.full_like(g, 10.0), "l2", 1.0)
    assert torch.allclose(t, torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64), atol=1e-12)
    t1 = worst_case(g, torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64), "l1", 0.8)
    assert torch.allclose(t1, torch.tensor([[0.3, 0.5, 0.0]], dtype=torch.float64))


def test_exact_fools_every_input_pgd_or_square_fools(linear_mnist):
    model, x, y = linear_mnist
    gen = torch.Generator().manual_seed(0)
    exact = make_attack({"type": "exact", "norm": "linf", "epsilon": 0.005})(model, x, y)
    pgd = make_attack({"type": "linf", "epsilon": 0.005, "k": 20})(model, x, y, generator=gen)
    square = make_attack({"type": "autoattack", "attack": "square", "norm": "linf",
                          "epsilon": 0.005, "n_queries": 200})(model, x, y, generator=gen)
    assert not bool((pgd.success & ~exact.success).any())
    assert not bool((square.success & ~exact.success).any())
    assert 0 < int(exact.success.sum()) < len(x)  # the radius separates the inputs


def test_a_model_that_is_not_affine_is_refused():
    mlp = build_model("mlp", dataset_info("mnist"))
    attack = make_attack({"type": "exact", "norm": "l2", "epsilon": 1.0})
    x, y = torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long)
    with pytest.raises(AttackSpecError, match=r"modules \['MLP', 'ReLU'\].*toy-nonlinear"):
        attack(mlp, x, y)
    with pytest.raises(AttackSpecError, match=r"'norm': must be one of \['linf', 'l2', 'l1'\]"):
        make_attack({"type": "exact", "norm": "l3", "epsilon": 1.0})


def test_toy_suite_is_exact_and_refused_for_an_mlp_in_a_grid():
    suite = load_suite("toy")
    assert {a.kind for a in suite.attacks} == {"first-order", "exact"}
    import yaml

    data = yaml.safe_load(builtin_grid_path("toy").read_text())
    grid = parse_grid(copy.deepcopy(data), source="toy.yaml")
    expand_grid(grid, source="toy.yaml")  # linear models: accepted
    data["experiments"]["toy"]["train"]["model"] = {"name": "mlp"}
    with pytest.raises(GridError, match=r"models.Nat: model 'mlp' is not affine.*toy-nonlinear"):
        expand_grid(parse_grid(data, source="mlp.yaml"), source="mlp.yaml")


def test_toy_evaluation_exact_rows(tmp_path):
    from jobs.config import make_train_config
    from jobs.training import train

    cfg = make_train_config({"label": "Nat", "dataset": {"name": "toy", "params": {"n_train": 200}},
                             "model": {"name": "linear"}, "strategy": "nat", "epochs": 1,
                             "batch_size": 50})
    ckpt = train(cfg, tmp_path / "t").checkpoint
    evaluate(ckpt, "toy", n_test=60, out_dir=tmp_path / "e", shard_size=60)
    rows = read_results(sorted((tmp_path / "e").rglob("*.parquet")))
    full = rows[rows["budget"] == 1.0]
    for family, first in (("linf", "linf-pgd"), ("l1", "l1-slide")):
        exact = full[full["attack"] == f"{family}-exact"].set_index("index")
        other = full[full["attack"] == first].set_index("index")
        # attacked here, or broken at a smaller radius (the cascade across radii)
        assert set(exact["example"]) <= {"worst-case", "earlier"}
        assert "worst-case" in set(exact["example"])
        assert set(exact["kind"]) == {"exact"}
        # the exact attack fools every input PGD / SLIDE fools (and here, on a linear model, no more)
        assert not (other["fooled"] & ~exact["fooled"]).any()
        assert (exact["perturbation"] <= exact["epsilon"] * (1 + 1e-5)).all()
