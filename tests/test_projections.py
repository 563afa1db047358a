"""Exact projections onto l_p ball ∩ box: property-based against an independent float64 reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.attacks.norms import linf_l1_gauge, perturbation_norm
from jobs.attacks.projections import project

FAMILIES = ("linf", "l2", "l1")


def ref_project(v: torch.Tensor, family: str, eps: float, lo: torch.Tensor, hi: torch.Tensor):
    """Independent reference (1-D, float64): bisection on the KKT multiplier."""
    if family == "linf":
        return v.clamp(-eps, eps).clamp(lo, hi)
    if family == "l2":  # solution clip(t v), largest t in [0, 1] with norm <= eps
        if v.clamp(lo, hi).norm() <= eps:
            return v.clamp(lo, hi)
        a, b = 0.0, 1.0
        for _ in range(200):
            m = (a + b) / 2
            a, b = (a, m) if (m * v).clamp(lo, hi).norm() > eps else (m, b)
        return (a * v).clamp(lo, hi)
    cap = torch.where(v >= 0, hi, -lo)  # l1: sign(v) * clip(|v| - lam, 0, cap)
    if torch.minimum(v.abs(), cap).sum() <= eps:
        return v.clamp(lo, hi)
    a, b = 0.0, float(v.abs().max())
    for _ in range(200):
        m = (a + b) / 2
        a, b = (m, b) if torch.minimum((v.abs() - m).clamp_min(0), cap).sum() > eps else (a, m)
    return v.sign() * torch.minimum((v.abs() - b).clamp_min(0), cap)


@st.composite
def problems(draw):
    d = draw(st.integers(1, 10))
    floats = st.floats(-4, 4, allow_nan=False, width=64)
    v = torch.tensor(draw(st.lists(floats, min_size=d, max_size=d)), dtype=torch.float64)
    x0 = torch.tensor(draw(st.lists(st.floats(0, 1, width=64), min_size=d, max_size=d)), dtype=torch.float64)
    eps = draw(st.floats(0, 5, width=64))
    bounded = draw(st.booleans())
    return v, x0, eps, bounded


def _box(x0, bounded):
    if bounded:
        return -x0, 1 - x0, (0.0, 1.0)
    big = torch.full_like(x0, 1e30)
    return -big, big, None


def _inside(d, family, eps, x0, bounds):
    n = float(perturbation_norm(d[None], family)[0])
    ok = n <= eps * (1 + 1e-9) + 1e-12
    if bounds is not None:
        x = x0 + d
        ok = ok and bool((x >= -1e-12).all() and (x <= 1 + 1e-12).all())
    return ok


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=150, deadline=None)
@given(problem=problems())
def test_projection_is_the_closest_point_of_the_set(family, problem):
    v, x0, eps, bounded = problem
    lo, hi, bounds = _box(x0, bounded)
    p = project(v[None], family, eps, x0=x0[None], bounds=bounds)[0]
    assert _inside(p, family, eps, x0, bounds)
    ref = ref_project(v, family, eps, lo, hi)
    assert torch.allclose(p, ref, atol=1e-8), (p, ref)
    # projecting twice changes nothing
    p2 = project(p[None], family, eps, x0=x0[None], bounds=bounds)[0]
    assert torch.allclose(p2, p, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=80, deadline=None)
@given(problem=problems(), shrink=st.floats(0, 1, width=64))
def test_point_inside_is_unchanged_and_no_feasible_point_is_closer(family, problem, shrink):
    v, x0, eps, bounded = problem
    lo, hi, bounds = _box(x0, bounded)
    # A feasible point: clip to the box, then scale into the ball (0 is in both sets).
    q = v.clamp(lo, hi)
    n = float(perturbation_norm(q[None], family)[0])
    q = q * (shrink * eps / n if n > 0 and n > shrink * eps else 1.0)
    assert _inside(q, family, eps, x0, bounds)
    assert torch.allclose(project(q[None], family, eps, x0=x0[None], bounds=bounds)[0], q, atol=1e-10)
    p = project(v[None], family, eps, x0=x0[None], bounds=bounds)[0]
    assert (v - p).norm() <= (v - q).norm() + 1e-9


CASES = [
    # (family, v, x0 or None, eps, expected) -- hand-solved
    ("l1", [1.0, 1.0, 1.0, 1.0], None, 2.0, [0.5, 0.5, 0.5, 0.5]),  # every coordinate stays active
    ("l1", [3.0, -1.0, 0.5], None, 2.0, [2.0, 0.0, 0.0]),
    ("l1", [1.0, 1.0, 1.0], [0.8, 0.0, 0.0], 1.0, [0.2, 0.4, 0.4]),  # box binds (clip-after gives 0.2, 1/3, 1/3)
    ("l1", [-1.0, 1.0], [0.0, 1.0], 5.0, [0.0, 0.0]),  # box pins both
    ("l2", [2.0, 2.0], [0.9, 0.0], 1.0, [0.1, 0.99**0.5]),  # box binds (clip-after gives 0.1, 0.707)
    ("l2", [3.0, 4.0], None, 1.0, [0.6, 0.8]),
    ("linf", [0.5, -0.5], [0.9, 0.2], 0.3, [0.1, -0.2]),
]


@pytest.mark.parametrize(("family", "v", "x0", "eps", "expected"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_projection_hand_solved_cases(family, v, x0, eps, expected):
    v = torch.tensor([v], dtype=torch.float64)
    x0t = None if x0 is None else torch.tensor([x0], dtype=torch.float64)
    p = project(v, family, eps, x0=x0t, bounds=None if x0 is None else (0.0, 1.0))
    assert torch.allclose(p[0], torch.tensor(expected, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_per_row_radius_float32_large(family):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 32, 32, generator=gen)
    v = torch.randn(6, 3, 32, 32, generator=gen) * 2
    eps = torch.tensor([0.0, 0.01, 0.5, 2.0, 8.0, 50.0])
    p = project(v, family, eps, x0=x0, bounds=(0.0, 1.0))
    norms = perturbation_norm(p, family)
    assert (norms <= eps * (1 + 1e-5) + 1e-7).all()
    assert ((x0 + p) >= -1e-6).all() and ((x0 + p) <= 1 + 1e-6).all()
    for i in range(6):  # each row solves its own problem
        row = project(v[i : i + 1], family, float(eps[i]), x0=x0[i : i + 1], bounds=(0.0, 1.0))
        assert torch.allclose(row[0], p[i], atol=1e-5)


def test_project_rejects_unknown_family_and_missing_x0():
    with pytest.raises(ValueError, match="family 'l3'"):
        project(torch.zeros(1, 2), "l3", 1.0)
    with pytest.raises(ValueError, match="x0 is required"):
        project(torch.zeros(1, 2), "l1", 1.0, bounds=(0.0, 1.0))


@settings(max_examples=60, deadline=None)
@given(
    d1=st.lists(st.floats(-1, 1, width=64), min_size=1, max_size=6),
    d2=st.lists(st.floats(-3, 3, width=64), min_size=6, max_size=6),
)
def test_linf_l1_gauge_matches_brute_force(d1, d2):
    delta = torch.tensor(d1, dtype=torch.float64) + torch.tensor(d2[: len(d1)], dtype=torch.float64)
    e_inf, e_1 = 0.3, 2.0
    g = float(linf_l1_gauge(delta[None], e_inf, e_1)[0])
    cs = torch.linspace(0, float(delta.abs().max()), 4001, dtype=torch.float64)
    brute = (cs / e_inf + (delta.abs()[None] - cs[:, None]).clamp_min(0).sum(1) / e_1).min()
    assert g <= float(brute) + 1e-12
    assert g >= float(brute) - float(delta.abs().max()) / 4000 / e_inf - 1e-12


def _sparse_problems(seed: int, dtype=torch.float64):
    """Batches like the attacks': sparse perturbations, many pixels at the box edge, ties."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(40, 1, 12, 12, generator=gen, dtype=dtype)
    x0 = torch.where(torch.rand(x0.shape, generator=gen, dtype=dtype) < 0.5, torch.zeros_like(x0), x0)
    v = torch.randn(40, 1, 12, 12, generator=gen, dtype=dtype)
    keep = torch.rand(v.shape, generator=gen, dtype=dtype) < torch.linspace(0.02, 1, 40, dtype=dtype)[:, None, None, None]
    v = v * keep
    v[:5] = v[:5].sign() * 0.25  # ties: equal magnitudes
    eps = torch.linspace(0.0, 6.0, 40, dtype=dtype)
    return v, x0, eps


@pytest.mark.parametrize("family", ["l2", "l1"])
@pytest.mark.parametrize("max_passes", [0, 1, 2, 100])
def test_active_set_iteration_matches_sorting_and_falls_back(family, max_passes, monkeypatch):
    """The iterative solve (and the sort fallback of rows it leaves) equals the sort-based
    multiplier; rows already inside the ball ∩ box come back as the plain clip."""
    from jobs.attacks import projections as P

    monkeypatch.setattr(P, "MAX_PASSES", max_passes)
    for seed in range(3):
        v, x0, eps = _sparse_problems(seed)
        eps = eps * (10 if family == "l1" else 1)
        p = project(v, family, eps, x0=x0, bounds=(0.0, 1.0)).reshape(40, -1)
        flat, lo, hi = v.reshape(40, -1), -x0.reshape(40, -1), 1 - x0.reshape(40, -1)
        e = eps[:, None]
        if family == "l2":
            ref = (P._l2_multiplier_sorted(flat, e, lo, hi) * flat).clamp(lo, hi)
            inside = flat.clamp(lo, hi).norm(dim=1) <= eps
        else:
            u = torch.where(flat >= 0, hi, -lo)
            lam = P._l1_multiplier_sorted(flat.abs(), u, e)
            ref = flat.sign() * torch.minimum((flat.abs() - lam).clamp_min(0), u)
            inside = torch.minimum(flat.abs(), u).sum(1) <= eps
        ref = torch.where(inside[:, None], flat.clamp(lo, hi), ref)
        assert torch.allclose(p, ref, atol=1e-9), (p - ref).abs().max()
        assert inside.any() and (~inside).any()
