"""Section 2 theory: closed forms vs Monte Carlo, Theorems 1-4, parameter errors, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from analysis.theory import (
    LinearClassifier,
    MpoError,
    Section2,
    claim3_gap,
    constant_classifier,
    interpolating_classifier,
    linear_risk,
    linear_union_risk,
    theorem1_sweep,
)
from analysis.theory_mc import feature_shift, linear_optimal, mc_risks, x0_shift, x0_swaps
from analysis.theory_plot import toy_panel
from analysis.theory_rt import SlotClassifier, SlotSample, theorem2_table, theorem4_affine
from analysis.theory_torch import checkpoint_classifier
from jobs.checkpoint import save_checkpoint
from jobs.data import dataset_info
from jobs.models import build_model

DISTS = [Section2(), Section2(d=9, alpha=1.0, p0=0.7), Section2(d=16, alpha=2.0, x0="gaussian")]


def _random_linear(dist: Section2, seed: int) -> LinearClassifier:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dist.d + 1)
    w[0] = abs(w[0]) * 3
    w[1:] = np.abs(w[1:]) / math.sqrt(dist.d)
    return LinearClassifier(w, 0.1 * rng.normal())


@pytest.mark.parametrize("dist", DISTS, ids=repr)
@pytest.mark.parametrize("family", [None, "linf", "l1", "l2"])
def test_closed_form_matches_monte_carlo(dist: Section2, family: str | None) -> None:
    clf = _random_linear(dist, seed=dist.d)
    eps = {"linf": dist.eps_linf, "l1": 1.0, "l2": 1.0}.get(family or "", 0.0)
    exact = linear_risk(dist, clf, family, eps)
    attacks = {"a": linear_optimal(clf, family or "linf", eps if family else 0.0)}
    mc = mc_risks(clf, dist, attacks, n=60_000, seed=1)
    est = mc["a"]
    assert abs(est.risk - exact) <= 4 * est.stderr + 1e-3, (exact, est)


@pytest.mark.parametrize("family,eps", [("linf", 0.3), ("l1", 1.5), ("l2", 0.7)])
def test_optimal_perturbation_stays_in_ball_and_lowers_margin_by_dual_norm(
    family: str, eps: float
) -> None:
    dist = Section2(d=9)
    clf = _random_linear(dist, 3)
    X, y = dist.sample(50, rng=0)
    r = clf.optimal_perturbation(X, y, family, eps)
    p = {"linf": np.inf, "l1": 1, "l2": 2}[family]
    assert np.all(np.linalg.norm(r, ord=p, axis=1) <= eps * (1 + 1e-9))
    drop = y * clf.score(X) - y * clf.score(X + r)
    np.testing.assert_allclose(drop, clf.reduction(family, eps))


@pytest.mark.parametrize(
    "dist",
    [Section2(), Section2(d=4, alpha=0.5, p0=0.5), Section2(d=400, alpha=3.0, p0=1.0)],
    ids=repr,
)
def test_theorem1_bound_holds_over_sweep_and_is_tight_for_constant(dist: Section2) -> None:
    rows = theorem1_sweep(dist, n_angles=61)
    assert all(r["avg"] >= 0.5 - 1e-12 for r in rows)
    const = rows[0]
    assert const["classifier"].startswith("constant")
    assert const["linf"] == pytest.approx(0.5) and const["l1"] == pytest.approx(0.5)
    assert const["avg"] == pytest.approx(0.5)
    # sign(x0) is l_inf-robust but l_1-broken
    s0, ssum = rows[1], rows[-1]
    assert s0["linf"] == pytest.approx(1 - dist.p0) and s0["l1"] == pytest.approx(1.0)
    if dist.d >= 99:  # with many weak features, sign(sum x_i) is l_1-robust and l_inf-broken
        assert ssum["l1"] < 0.5 < ssum["linf"]


def test_theorem1_bound_for_nonlinear_classifier_with_proof_perturbations() -> None:
    dist = Section2(d=25, alpha=2.0, p0=0.8)

    def f(
        X: np.ndarray,
    ) -> np.ndarray:  # a non-linear rule: trust x0 unless the features disagree strongly
        s = X[:, 1:].sum(axis=1) / math.sqrt(dist.d)
        return np.where(np.abs(s) > 2.5, np.sign(s), np.where(X[:, 0] > 0, 1, -1)).astype(int)

    mc = mc_risks(
        f,
        dist,
        {"linf": feature_shift(dist.eps_linf), "l1": x0_shift(dist.eps_l1)},
        n=40_000,
        seed=2,
    )
    assert mc["avg"].risk >= 0.5 - 4 * mc["avg"].stderr
    assert mc["union"].risk >= mc["linf"].risk and mc["union"].risk >= mc["l1"].risk


@pytest.mark.parametrize("dist", DISTS[:2], ids=repr)
def test_claim3_affine_lp_equals_union_for_linear(dist: Section2) -> None:
    clfs = [interpolating_classifier(dist, t) for t in np.linspace(0, math.pi / 2, 9)]
    for row in claim3_gap(dist, clfs, n_beta=51):
        assert row["gap"] == pytest.approx(0.0, abs=1e-12)
    balls = {"linf": dist.eps_linf, "l1": dist.eps_l1}
    for clf in clfs:
        assert (
            linear_union_risk(dist, clf, balls)
            >= max(
                linear_risk(dist, clf, "linf", dist.eps_linf),
                linear_risk(dist, clf, "l1", dist.eps_l1),
            )
            - 1e-12
        )


def test_rt_margin_model_matches_full_monte_carlo_and_multivariate_normal() -> None:
    from scipy.stats import multivariate_normal

    dist = Section2(d=9, alpha=2.0, x0="gaussian")
    npos = 4
    slot = SlotClassifier(1.0, 0.3, 0.2)
    # margins model
    s = SlotSample.draw(dist, npos, 200_000, np.random.default_rng(0))
    margin_risk = float(np.mean(slot.margins(s) + slot.rt_gain(s) <= 0))
    # full inputs with explicit swaps
    lin = slot.linear(dist, npos)
    full = mc_risks(lin, dist, {"rt": x0_swaps(npos)}, n=60_000, seed=3)["rt"]
    assert abs(full.risk - margin_risk) <= 4 * full.stderr + 2e-3
    # exact: margins M_0..M_{N-1} are jointly Gaussian (y = +1); risk = 1 - P(all M_j > 0)
    w = lin.w
    mean_u = np.concatenate([[1.0], np.full(dist.d, dist.eta)])
    cov_u = np.diag(np.concatenate([[dist.alpha**-2], np.ones(dist.d)]))
    rows = [w]
    for j in range(1, npos):
        a = w.copy()
        a[0], a[j] = w[j], w[0]
        rows.append(a)
    A = np.array(rows)
    exact = 1.0 - multivariate_normal(mean=-(A @ mean_u), cov=A @ cov_u @ A.T).cdf(np.zeros(npos))
    assert abs(margin_risk - exact) < 5e-3


def test_theorem2_gap_shrinks_with_more_positions() -> None:
    rows = theorem2_table(Section2(d=99, alpha=2.0), [2, 8, 32], n=8_000, n_theta=13, n_phi=5)
    gaps = [r["gap"] for r in rows]
    assert all(0 < g < 0.5 for g in gaps)
    assert gaps[0] > gaps[1] > gaps[2]
    assert all(r["avg"] == pytest.approx(0.5 * (r["linf"] + r["rt"])) for r in rows)


def test_theorem4_affine_linf_rt_strictly_stronger_than_union() -> None:
    dist = Section2(d=99, alpha=2.0)
    w = math.sin(math.radians(30)) / math.sqrt(dist.d)
    res = theorem4_affine(dist, SlotClassifier(math.cos(math.radians(30)), w, w), 16, n=20_000)
    diff = res["affine_minus_union"]
    assert diff["risk"] > 10 * diff["stderr"] > 0
    assert res["union"]["risk"] >= max(res["linf"]["risk"], res["rt"]["risk"])
    assert res["per_beta"][0]["risk"] == pytest.approx(res["linf"]["risk"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"p0": 0.4}, r"p0 = 0\.4.*\[0\.5, 1\]"),
        ({"p0": 1.2}, r"p0 = 1\.2.*\[0\.5, 1\]"),
        ({"d": 0}, r"d = 0.*>= 1"),
        ({"d": 2.5}, r"d = 2\.5.*integer"),
        ({"alpha": -1.0}, r"alpha = -1\.0.*> 0"),
        ({"alpha": float("nan")}, r"alpha = nan.*> 0"),
        ({"x0": "uniform"}, r"x0 = 'uniform'.*sign, gaussian"),
    ],
)
def test_invalid_parameters_raise_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(MpoError, match=match):
        Section2(**kwargs)


def test_other_invalid_inputs() -> None:
    dist = Section2(d=9)
    with pytest.raises(MpoError, match=r"n_positions = 11.*\[2, 10\]"):
        theorem2_table(dist, [11])
    with pytest.raises(MpoError, match=r"unknown toy parameter.*'beta'"):
        Section2.from_params({"d": 9, "beta": 1})
    with pytest.raises(MpoError, match="family = 'l3'"):
        linear_risk(dist, constant_classifier(dist), "l3", 1.0)
    with pytest.raises(MpoError, match="d \\+ 1 = 10"):
        linear_risk(dist, LinearClassifier(np.ones(3)))
    with pytest.raises(MpoError, match=r"labels in \{-1, \+1\}"):
        mc_risks(lambda X: np.zeros(len(X), dtype=int), dist, {"a": x0_shift(1.0)}, n=10)
    assert Section2.from_params({"d": 9, "n_train": 5, "n_test": 5}) == dist


def test_toy_panel_writes_png_and_svg(tmp_path) -> None:
    models = [
        {"label": "Nat", "risk_linf": 0.95, "risk_l1": 0.05},
        {"label": "Adv_inf", "risk_linf": 0.12, "risk_l1": 0.99, "risk_union": 0.99},
        {"label": "Adv_max", "risk_linf": 0.5, "risk_l1": 0.52, "risk_union": 0.6},
    ]
    paths = toy_panel(
        {"d": 16, "alpha": 2.0, "p0": 0.9, "x0": "sign", "n_train": 100}, models, tmp_path / "toy"
    )
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(MpoError, match="risk_l1"):
        toy_panel({"d": 16}, [{"label": "x", "risk_linf": 0.1}], tmp_path / "bad")


def test_cli_prints_tables_and_writes_files(tmp_path) -> None:
    from orchestrator.cli import main

    out = tmp_path / "th"
    res = CliRunner().invoke(
        main,
        ["theory", "--d", "24", "--n-positions", "8", "--n-samples", "4000", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "Theorem 1" in res.output and "Theorem 4" in res.output and "holds" in res.output
    for name in ("theory.png", "theory.svg", "theory.json", "theorem1.csv", "theorem2.csv"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "theory.json").read_text())
    assert report["params"]["d"] == 24 and report["theorem1"]["holds"]
    assert [r["n_positions"] for r in report["theorem2"]] == [2, 4, 8]

    bad = CliRunner().invoke(main, ["theory", "--p0", "0.3", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "p0 = 0.3" in bad.output


def test_checkpoint_classifier_round_trip(tmp_path) -> None:
    dist = Section2(d=15, alpha=2.0, p0=0.9)
    params = {"d": 15, "alpha": 2.0, "p0": 0.9, "x0": "sign"}
    model = build_model("linear", dataset_info("toy", params))
    with torch.no_grad():  # logit(+1) - logit(-1) = x0 : the classifier sign(x0)
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[1, 0] = 1.0
    path = save_checkpoint(
        tmp_path / "c.pt",
        model=model,
        config={
            "model": {"name": "linear", "kwargs": {}},
            "dataset": {"name": "toy", "params": params},
        },
    )
    f, loaded = checkpoint_classifier(path)
    assert loaded == dist
    X, _ = dist.sample(500, rng=0)
    np.testing.assert_array_equal(f(X), np.where(X[:, 0] > 0, 1, -1))
    mc = mc_risks(f, dist, {"l1": x0_shift(dist.eps_l1)}, n=2_000, seed=0)
    assert mc["l1"].risk == pytest.approx(1.0)
