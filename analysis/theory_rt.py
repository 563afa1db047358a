"""The RT adversary of Section 2: x0 moved to one of ``N`` positions (Theorems 2 and 4).

The adversary moves x0 to one of ``N`` positions (positions 0..N-1 of X) by swapping it with the
feature there. RT risks of linear classifiers are estimated by Monte Carlo on the margins (the
minimum of N correlated Gaussian margins has no closed form): ``SlotSample`` draws only the
margins' sufficient statistics, N + 1 numbers per input instead of d + 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.theory import LinearClassifier, Section2, check_int, linear_risk
from analysis.theory_mc import RiskEstimate


def check_positions(dist: Section2, n_positions: int) -> int:
    return check_int("n_positions", n_positions, 2, dist.d + 1)


@dataclass(frozen=True)
class SlotSample:
    """Sufficient statistics of the margins of the 3-weight family under RT swaps (per input, y = +1
    by symmetry): a = y x0, the N - 1 slot features y x_1..y x_{N-1}, and the sum of the rest."""

    a: np.ndarray  # [n]
    slots: np.ndarray  # [n, N-1]
    rest_sum: np.ndarray  # [n]
    n_rest: int

    @classmethod
    def draw(cls, dist: Section2, n_positions: int, n: int, rng: np.random.Generator) -> SlotSample:
        n_positions = check_positions(dist, n_positions)
        if dist.x0 == "sign":
            a = np.where(rng.random(n) < dist.p0, 1.0, -1.0)
        else:
            a = 1.0 + rng.standard_normal(n) / dist.alpha
        slots = dist.eta + rng.standard_normal((n, n_positions - 1))
        n_rest = dist.d - (n_positions - 1)
        rest_sum = dist.eta * n_rest + math.sqrt(n_rest) * rng.standard_normal(n)
        return cls(a, slots, rest_sum, n_rest)


@dataclass(frozen=True)
class SlotClassifier:
    """sign(w0 x0 + u sum_{slots} x_j + v sum_{rest} x_i): a linear classifier with one weight on x0,
    one on the other N - 1 positions RT can swap x0 into, and one on the remaining features."""

    w0: float
    u: float
    v: float
    name: str = ""

    def linear(self, dist: Section2, n_positions: int) -> LinearClassifier:
        w = np.full(dist.d + 1, self.v)
        w[0] = self.w0
        w[1:n_positions] = self.u
        return LinearClassifier(w, 0.0, self.name or "slot")

    def margins(self, s: SlotSample) -> np.ndarray:
        return self.w0 * s.a + self.u * s.slots.sum(axis=1) + self.v * s.rest_sum

    def rt_gain(self, s: SlotSample, k: int | None = None) -> np.ndarray:
        """Margin change of the best swap of x0 with one of the first ``k`` slots (all by default);
        swapping x0 with slot j changes the margin by (w0 - u)(x_j - x0); no swap is allowed."""
        slots = s.slots if k is None else s.slots[:, :k]
        if slots.shape[1] == 0:
            return np.zeros_like(s.a)
        c = self.w0 - self.u
        pick = slots.min(axis=1) if c >= 0 else slots.max(axis=1)
        return np.minimum(0.0, c * (pick - s.a))

    def linf_reduction(self, dist: Section2, n_positions: int, eps: float) -> float:
        n_rest = dist.d - (n_positions - 1)
        return eps * (abs(self.w0) + (n_positions - 1) * abs(self.u) + n_rest * abs(self.v))


def _slot_family(n_theta: int, n_phi: int) -> list[SlotClassifier]:
    out = []
    for theta in np.linspace(0.0, math.pi / 2, n_theta):
        for phi in np.linspace(0.0, math.pi / 2, n_phi):
            out.append(
                SlotClassifier(
                    math.cos(theta),
                    math.sin(theta) * math.cos(phi),
                    math.sin(theta) * math.sin(phi),
                )
            )
    return out


def theorem2_table(
    dist: Section2,
    positions: Sequence[int],
    *,
    n: int = 40_000,
    seed: int = 0,
    n_theta: int = 31,
    n_phi: int = 11,
) -> list[dict[str, Any]]:
    """Theorem 2 numerics (x0 ~ N(y, alpha^-2)): for each N, the lowest R_avg(f; S_inf(2 eta), S_RT(N))
    over a grid of linear classifiers sign(w0 x0 + u sum_slots + v sum_rest) with w0, u, v >= 0.

    The per-feature weights u and v are scaled so that (w0, u sqrt(N-1), v sqrt(d-N+1)) is a unit
    vector on the grid. The best classifier is chosen on one sample and re-scored on a fresh one
    (no winner's-curse bias). Expect 1/2 - R_avg to shrink like 1/sqrt(N).
    """
    g = dist.with_x0("gaussian")
    rows = []
    for i, npos in enumerate(positions):
        npos = check_positions(g, npos)
        n_slots, n_rest = npos - 1, g.d - (npos - 1)
        family = [
            SlotClassifier(
                c.w0, c.u / math.sqrt(max(n_slots, 1)), c.v / math.sqrt(n_rest) if n_rest else 0.0
            )
            for c in _slot_family(n_theta, n_phi)
        ]
        rng = np.random.default_rng([seed, i])
        search = SlotSample.draw(g, npos, n, rng)
        best, best_avg = family[0], math.inf
        for clf in family:
            r_inf = linear_risk(g, clf.linear(g, npos), "linf", g.eps_linf)
            r_rt = float(np.mean(clf.margins(search) + clf.rt_gain(search) <= 0))
            if 0.5 * (r_inf + r_rt) < best_avg:
                best, best_avg = clf, 0.5 * (r_inf + r_rt)
        fresh = SlotSample.draw(g, npos, n, rng)
        r_inf = linear_risk(g, best.linear(g, npos), "linf", g.eps_linf)
        rt = RiskEstimate.of(best.margins(fresh) + best.rt_gain(fresh) <= 0)
        avg = 0.5 * (r_inf + rt.risk)
        rows.append(
            {
                "n_positions": npos,
                "linf": r_inf,
                "rt": rt.risk,
                "rt_stderr": rt.stderr,
                "avg": avg,
                "avg_stderr": 0.5 * rt.stderr,
                "gap": 0.5 - avg,
                "gap_sqrt_n": (0.5 - avg) * math.sqrt(npos),
                "w0": best.w0,
                "u": best.u,
                "v": best.v,
            }
        )
    return rows


def theorem4_affine(
    dist: Section2, clf: SlotClassifier, n_positions: int, *, n: int = 100_000, seed: int = 0
) -> dict[str, Any]:
    """Theorem 4: affine l_inf + RT against a linear classifier with w0 > u > 0 (x0 gaussian).

    beta * S_RT lets RT move x0 to one of the first 1 + floor(beta (N - 1)) positions (the RT
    range scales with beta, as in the paper's affine attack); (1 - beta) * S_inf is the l_inf ball of
    radius (1 - beta) 2 eta. Only beta = k / (N - 1) matter (the least beta for k positions).
    The affine risk is at least the union risk on every input (beta in {0, 1} is the union), so the
    paired difference and its standard error come from the same sample.
    """
    g = dist.with_x0("gaussian")
    npos = check_positions(g, n_positions)
    s = SlotSample.draw(g, npos, n, np.random.default_rng(seed))
    base = clf.margins(s)
    red = clf.linf_reduction(g, npos, g.eps_linf)
    ks = np.arange(npos)
    betas = ks / (npos - 1)
    per_beta = []
    worst = np.full(n, np.inf)
    for k, beta in zip(ks, betas, strict=True):
        m = base + clf.rt_gain(s, int(k)) - (1.0 - beta) * red
        per_beta.append(RiskEstimate.of(m <= 0))
        worst = np.minimum(worst, m)
    union_m = np.minimum(base - red, base + clf.rt_gain(s))
    union_err, affine_err = union_m <= 0, worst <= 0
    return {
        "classifier": {"w0": clf.w0, "u": clf.u, "v": clf.v},
        "n_positions": npos,
        "linf": RiskEstimate.of(base - red <= 0).to_dict(),
        "rt": RiskEstimate.of(base + clf.rt_gain(s) <= 0).to_dict(),
        "union": RiskEstimate.of(union_err).to_dict(),
        "affine": RiskEstimate.of(affine_err).to_dict(),
        "affine_minus_union": RiskEstimate.of(
            affine_err.astype(float) - union_err.astype(float)
        ).to_dict(),
        "betas": betas.tolist(),
        "per_beta": [e.to_dict() for e in per_beta],
    }


def theorem4_best_union(
    dist: Section2, n_positions: int, *, n_theta: int = 17, n: int = 100_000, seed: int = 0
) -> dict[str, Any]:
    """Theorem 4 at the most union-robust member of the interpolating family (0 < theta < pi/2, so
    w0 > w_i > 0): x0 ~ N(y, alpha^-2), weights cos(theta) on x0 and sin(theta) / sqrt(d) elsewhere."""
    g = dist.with_x0("gaussian")
    best = None
    for theta in np.linspace(0.0, math.pi / 2, check_int("n_theta", n_theta, 3))[1:-1]:
        w = math.sin(theta) / math.sqrt(g.d)
        res = theorem4_affine(g, SlotClassifier(math.cos(theta), w, w), n_positions, n=n, seed=seed)
        res["theta_deg"] = math.degrees(theta)
        if best is None or res["union"]["risk"] < best["union"]["risk"]:
            best = res
    assert best is not None
    return best
