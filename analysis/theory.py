"""The paper's Section 2 results, computed: risks on the Tsipras et al. distribution.

The distribution (Tramer & Boneh, Section 2): y uniform in {-1, +1}; x0 = y with probability p0
else -y (``x0="sign"``), or x0 ~ N(y, alpha^-2) (``x0="gaussian"``, the Theorem 2 variant);
x1..xd iid N(y * eta, 1) with eta = alpha / sqrt(d). An input is a vector X of length d + 1
(x0 first), the same order as the ``toy`` dataset's row-major grid.

What is here:

- ``Section2``: validated parameters, sampling.
- Exact adversarial risks of linear classifiers ``sign(w . x + b)`` under l_inf, l_1 and l_2
  balls (closed forms: the worst perturbation lowers the margin y (w . x + b) by eps * ||w||_dual),
  their union and the affine adversary over two balls (Claim 3: equal to the union).
- The RT model: the adversary moves x0 to one of ``N`` positions (positions 0..N-1 of X) by
  swapping it with the feature there; RT risks of linear classifiers are estimated by Monte Carlo
  on the margins (the minimum of N correlated Gaussian margins has no closed form).
- Theorem 1 over a family of classifiers, Theorem 2 numerics, Theorem 4 (affine l_inf+RT).
- ``mc_risks``: Monte-Carlo risks of any classifier (a callable X -> labels in {-1, +1}) against
  the perturbations of the proofs or a linear classifier's optimal ones; ``torch_classifier`` and
  ``checkpoint_classifier`` adapt a trained model (torch imported lazily).

An input exactly on a linear decision boundary counts as an error (the adversary's choice); it has
probability zero except for degenerate classifiers. numpy and scipy only at module level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtr

from jobs.errors import MpoError

X0_KINDS = ("sign", "gaussian")
#: l_p family -> the dual norm's p (the margin drops by eps * ||w||_dual).
DUAL_P: dict[str, float] = {"linf": 1.0, "l1": math.inf, "l2": 2.0}
#: keys of ``jobs.data.ToyParams`` that do not change the distribution.
_IGNORED_KEYS = frozenset({"n_train", "n_test"})

Classifier = Callable[[np.ndarray], np.ndarray]
#: (X [n, d+1], y [n] in {-1, +1}) -> candidate perturbed inputs [k, n, d+1]
Perturbation = Callable[[np.ndarray, np.ndarray], np.ndarray]


class TheoryError(MpoError, ValueError):
    """Invalid parameters for the Section 2 computations (names the parameter and the range)."""


# --------------------------------------------------------------------------------------------
# The distribution


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    integral = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    )
    if isinstance(value, bool) or not integral:
        raise TheoryError(f"{name} = {value!r}: must be an integer >= {lo}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise TheoryError(f"{name} = {value}: must be an integer {allowed}")
    return value


@dataclass(frozen=True)
class Section2:
    """Parameters of the Section 2 distribution (the ``toy`` dataset's ``ToyParams``)."""

    d: int = 99
    alpha: float = 2.0
    p0: float = 0.9
    x0: str = "sign"

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", _check_int("d", self.d, 1))
        try:
            alpha = float(self.alpha)
        except (TypeError, ValueError):
            raise TheoryError(f"alpha = {self.alpha!r}: must be a finite number > 0") from None
        if not (math.isfinite(alpha) and alpha > 0):
            raise TheoryError(f"alpha = {self.alpha!r}: must be a finite number > 0")
        object.__setattr__(self, "alpha", alpha)
        try:
            p0 = float(self.p0)
        except (TypeError, ValueError):
            raise TheoryError(f"p0 = {self.p0!r}: must be a number in [0.5, 1]") from None
        if not (0.5 <= p0 <= 1.0):
            raise TheoryError(
                f"p0 = {self.p0!r}: must be in [0.5, 1] (x0 agrees with y at least half the time)"
            )
        object.__setattr__(self, "p0", p0)
        if self.x0 not in X0_KINDS:
            raise TheoryError(f"x0 = {self.x0!r}: must be one of {', '.join(X0_KINDS)}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | Section2 | Any | None = None) -> Section2:
        """From a dict (the toy dataset's params), a ``Section2`` or a ``ToyParams``-like object."""
        if params is None:
            return cls()
        if isinstance(params, Section2):
            return params
        if not isinstance(params, Mapping):
            params = {
                k: getattr(params, k) for k in ("d", "alpha", "p0", "x0") if hasattr(params, k)
            }
        unknown = sorted(set(params) - {"d", "alpha", "p0", "x0"} - _IGNORED_KEYS)
        if unknown:
            raise TheoryError(f"unknown toy parameter(s) {unknown}; allowed: d, alpha, p0, x0")
        return cls(**{k: v for k, v in params.items() if k not in _IGNORED_KEYS})

    @property
    def eta(self) -> float:
        return self.alpha / math.sqrt(self.d)

    @property
    def eps_linf(self) -> float:
        """Theorem 1's l_inf radius, 2 * eta: shifts every weak feature to the other class's mean."""
        return 2.0 * self.eta

    @property
    def eps_l1(self) -> float:
        """Theorem 1's l_1 radius, 2: flips x0 = +-1."""
        return 2.0

    def with_x0(self, x0: str) -> Section2:
        return Section2(self.d, self.alpha, self.p0, x0)

    def to_dict(self) -> dict[str, Any]:
        return {"d": self.d, "alpha": self.alpha, "p0": self.p0, "x0": self.x0, "eta": self.eta}

    def sample(
        self, n: int, *, rng: np.random.Generator | int | None = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` points: X float64 [n, d+1] (x0 first), y int64 [n] in {-1, +1}."""
        n = _check_int("n", n, 1)
        rng = np.random.default_rng(rng)
        y = rng.integers(0, 2, n) * 2 - 1
        X = np.empty((n, self.d + 1))
        if self.x0 == "sign":
            X[:, 0] = np.where(rng.random(n) < self.p0, y, -y)
        else:
            X[:, 0] = y + rng.standard_normal(n) / self.alpha
        X[:, 1:] = rng.standard_normal((n, self.d)) + self.eta * y[:, None]
        return X, y


# --------------------------------------------------------------------------------------------
# Linear classifiers: exact risks


@dataclass(frozen=True)
class LinearClassifier:
    """``sign(w . x + b)`` on X [n, d+1]; ``name`` for tables."""

    w: np.ndarray
    b: float = 0.0
    name: str = "linear"

    def __post_init__(self) -> None:
        w = np.asarray(self.w, dtype=np.float64)
        if w.ndim != 1 or not np.all(np.isfinite(w)):
            raise TheoryError(f"w: must be a finite 1-D weight vector, got shape {w.shape}")
        object.__setattr__(self, "w", w)
        object.__setattr__(self, "b", float(self.b))

    def score(self, X: np.ndarray) -> np.ndarray:
        return X @ self.w + self.b

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return np.where(self.score(X) > 0, 1, -1)

    def dual_norm(self, family: str) -> float:
        return float(np.linalg.norm(self.w, ord=DUAL_P[_check_family(family)]))

    def reduction(self, family: str, eps: float) -> float:
        """How much the optimal perturbation in the eps-ball lowers the margin y (w . x + b)."""
        return float(eps) * self.dual_norm(family)

    def optimal_perturbation(
        self, X: np.ndarray, y: np.ndarray, family: str, eps: float
    ) -> np.ndarray:
        """The worst perturbation in the eps-ball of ``family`` (exact for a linear classifier)."""
        family = _check_family(family)
        w = self.w
        if family == "linf":
            r = eps * np.sign(w)
        elif family == "l2":
            norm = np.linalg.norm(w)
            r = eps * w / norm if norm > 0 else np.zeros_like(w)
        else:
            r = np.zeros_like(w)
            j = int(np.argmax(np.abs(w)))
            r[j] = eps * np.sign(w[j])
        return -np.asarray(y, dtype=np.float64)[:, None] * r[None, :]


def _check_family(family: str) -> str:
    if family not in DUAL_P:
        raise TheoryError(f"family = {family!r}: must be one of {', '.join(DUAL_P)}")
    return family


def _check_dim(dist: Section2, clf: LinearClassifier) -> None:
    if clf.w.shape[0] != dist.d + 1:
        raise TheoryError(
            f"w has {clf.w.shape[0]} weights; the distribution has d + 1 = {dist.d + 1} features"
        )


def _p_nonpositive(mu: float, var: float) -> float:
    """P(N(mu, var) <= 0)."""
    if var <= 0:
        return float(mu <= 0)
    return float(ndtr(-mu / math.sqrt(var)))


def linear_margin_risk(dist: Section2, clf: LinearClassifier, reduction: float = 0.0) -> float:
    """P(y (w . x + b) - reduction <= 0): the risk when the adversary lowers every margin by
    ``reduction`` (l_p balls: eps * ||w||_dual; a union or affine combination: its maximum)."""
    _check_dim(dist, clf)
    w0, wf = clf.w[0], clf.w[1:]
    mean_f = dist.eta * wf.sum() - reduction
    var_f = float(wf @ wf)
    risk = 0.0
    for y in (1.0, -1.0):
        mu = mean_f + y * clf.b
        if dist.x0 == "sign":
            risk += 0.5 * dist.p0 * _p_nonpositive(w0 + mu, var_f)
            risk += 0.5 * (1.0 - dist.p0) * _p_nonpositive(-w0 + mu, var_f)
        else:
            risk += 0.5 * _p_nonpositive(w0 + mu, var_f + (w0 / dist.alpha) ** 2)
    return risk


def linear_risk(
    dist: Section2, clf: LinearClassifier, family: str | None = None, eps: float = 0.0
) -> float:
    """Exact risk of a linear classifier: natural (``family=None``) or against one l_p ball."""
    if family is None:
        return linear_margin_risk(dist, clf, 0.0)
    return linear_margin_risk(dist, clf, clf.reduction(family, eps))


def linear_union_risk(dist: Section2, clf: LinearClassifier, balls: Mapping[str, float]) -> float:
    """Exact risk against the union of l_p balls {family: eps}: the largest margin reduction wins."""
    return linear_margin_risk(dist, clf, max(clf.reduction(f, e) for f, e in balls.items()))


def linear_affine_risk(
    dist: Section2,
    clf: LinearClassifier,
    ball_a: tuple[str, float],
    ball_b: tuple[str, float],
    beta: float,
) -> float:
    """Exact risk against r_a + r_b with r_a in beta * S_a and r_b in (1 - beta) * S_b."""
    if not 0.0 <= beta <= 1.0:
        raise TheoryError(f"beta = {beta}: must be in [0, 1]")
    red = beta * clf.reduction(*ball_a) + (1.0 - beta) * clf.reduction(*ball_b)
    return linear_margin_risk(dist, clf, red)


# --------------------------------------------------------------------------------------------
# Theorem 1


def interpolating_classifier(dist: Section2, theta: float) -> LinearClassifier:
    """sign(cos(theta) x0 + sin(theta) sum_i x_i / sqrt(d)): theta = 0 is sign(x0), pi/2 is sign(sum x_i)."""
    if not 0.0 <= theta <= math.pi / 2 + 1e-12:
        raise TheoryError(f"theta = {theta}: must be in [0, pi/2]")
    w = np.full(dist.d + 1, math.sin(theta) / math.sqrt(dist.d))
    w[0] = math.cos(theta)
    if theta == 0.0:
        name = "sign(x0)"
    elif abs(theta - math.pi / 2) < 1e-12:
        name = "sign(sum x_i)"
    else:
        name = f"theta={math.degrees(theta):.0f}deg"
    return LinearClassifier(w, 0.0, name)


def constant_classifier(dist: Section2, label: int = 1) -> LinearClassifier:
    """The constant classifier f(x) = label: every adversary leaves it at risk 1/2."""
    return LinearClassifier(np.zeros(dist.d + 1), float(label), f"constant {label:+d}")


def theorem1_row(
    dist: Section2, clf: LinearClassifier, *, eps_l2: float = 2.0, theta: float | None = None
) -> dict[str, Any]:
    """Exact risks of one linear classifier at Theorem 1's radii (l_inf 2 eta, l_1 2; l_2 ``eps_l2``)."""
    balls = {"linf": dist.eps_linf, "l1": dist.eps_l1}
    r_inf = linear_risk(dist, clf, "linf", dist.eps_linf)
    r_1 = linear_risk(dist, clf, "l1", dist.eps_l1)
    return {
        "classifier": clf.name,
        "theta_deg": None if theta is None else math.degrees(theta),
        "nat": linear_risk(dist, clf),
        "linf": r_inf,
        "l1": r_1,
        "l2": linear_risk(dist, clf, "l2", eps_l2),
        "union": linear_union_risk(dist, clf, balls),
        "avg": 0.5 * (r_inf + r_1),
    }


def theorem1_sweep(
    dist: Section2, *, n_angles: int = 91, eps_l2: float = 2.0
) -> list[dict[str, Any]]:
    """Theorem 1 over sign(x0) -> sign(sum x_i) (``n_angles`` classifiers) plus the constant one.

    Every row has ``avg`` = R_avg(f; S_inf(2 eta), S_1(2)) >= 1/2 when x0 is a sign feature.
    """
    n_angles = _check_int("n_angles", n_angles, 2)
    rows = [theorem1_row(dist, constant_classifier(dist), eps_l2=eps_l2)]
    for theta in np.linspace(0.0, math.pi / 2, n_angles):
        rows.append(
            theorem1_row(
                dist,
                interpolating_classifier(dist, float(theta)),
                eps_l2=eps_l2,
                theta=float(theta),
            )
        )
    return rows


def claim3_gap(
    dist: Section2, classifiers: Sequence[LinearClassifier], *, n_beta: int = 101
) -> list[dict[str, Any]]:
    """Claim 3: for linear f, max over beta of the affine l_inf+l_1 risk equals the union risk."""
    balls = {"linf": dist.eps_linf, "l1": dist.eps_l1}
    rows = []
    for clf in classifiers:
        affine = max(
            linear_affine_risk(dist, clf, ("linf", dist.eps_linf), ("l1", dist.eps_l1), float(b))
            for b in np.linspace(0.0, 1.0, n_beta)
        )
        union = linear_union_risk(dist, clf, balls)
        rows.append(
            {"classifier": clf.name, "union": union, "affine": affine, "gap": affine - union}
        )
    return rows


# --------------------------------------------------------------------------------------------
# RT: x0 moved to one of N positions (Theorem 2, Theorem 4)


def check_positions(dist: Section2, n_positions: int) -> int:
    return _check_int("n_positions", n_positions, 2, dist.d + 1)


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


@dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo risk: mean of per-input error indicators and its standard error."""

    risk: float
    stderr: float
    n: int

    @classmethod
    def of(cls, errors: np.ndarray) -> Estimate:
        errors = np.asarray(errors, dtype=np.float64)
        n = errors.size
        se = float(errors.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return cls(float(errors.mean()), se, n)

    def to_dict(self) -> dict[str, float]:
        return {"risk": self.risk, "stderr": self.stderr, "n": self.n}


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
        rt = Estimate.of(best.margins(fresh) + best.rt_gain(fresh) <= 0)
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
        per_beta.append(Estimate.of(m <= 0))
        worst = np.minimum(worst, m)
    union_m = np.minimum(base - red, base + clf.rt_gain(s))
    union_err, affine_err = union_m <= 0, worst <= 0
    return {
        "classifier": {"w0": clf.w0, "u": clf.u, "v": clf.v},
        "n_positions": npos,
        "linf": Estimate.of(base - red <= 0).to_dict(),
        "rt": Estimate.of(base + clf.rt_gain(s) <= 0).to_dict(),
        "union": Estimate.of(union_err).to_dict(),
        "affine": Estimate.of(affine_err).to_dict(),
        "affine_minus_union": Estimate.of(
            affine_err.astype(float) - union_err.astype(float)
        ).to_dict(),
        "betas": betas.tolist(),
        "per_beta": [e.to_dict() for e in per_beta],
    }


# --------------------------------------------------------------------------------------------
# Monte Carlo for any classifier


def feature_shift(eps: float) -> Perturbation:
    """l_inf (radius eps) perturbations of Theorem 1's proof: every weak feature moves by -y eps
    (at eps = 2 eta, class y then looks like class -y); a second candidate also moves x0."""

    def perturb(X: np.ndarray, y: np.ndarray) -> np.ndarray:
        shift = -eps * y[:, None].astype(np.float64)
        a = X.copy()
        a[:, 1:] += shift
        b = a.copy()
        b[:, :1] += shift
        return np.stack([a, b])

    return perturb


def x0_shift(eps: float) -> Perturbation:
    """l_1 (radius eps) perturbation of Theorem 1's proof: x0 moves by -y eps (eps = 2 flips x0 = y)."""

    def perturb(X: np.ndarray, y: np.ndarray) -> np.ndarray:
        a = X.copy()
        a[:, 0] -= eps * y
        return a[None]

    return perturb


def x0_swaps(n_positions: int) -> Perturbation:
    """RT perturbations: x0 moved to position j (swapped with x_j), for every j in 1..N-1."""

    def perturb(X: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.repeat(X[None], n_positions - 1, axis=0)
        for j in range(1, n_positions):
            out[j - 1, :, 0], out[j - 1, :, j] = X[:, j], X[:, 0]
        return out

    return perturb


def linear_optimal(clf: LinearClassifier, family: str, eps: float) -> Perturbation:
    """The exact worst perturbation of the eps-ball of ``family`` for a linear classifier."""

    def perturb(X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (X + clf.optimal_perturbation(X, y, family, eps))[None]

    return perturb


@dataclass(frozen=True)
class MCResult:
    """Monte-Carlo risks: ``nat``, one per attack, ``union`` (any attack) and ``avg`` (their mean)."""

    risks: dict[str, Estimate] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Estimate:
        return self.risks[key]

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {k: v.to_dict() for k, v in self.risks.items()}


def mc_risks(
    f: Classifier,
    dist: Section2,
    attacks: Mapping[str, Perturbation],
    *,
    n: int = 100_000,
    seed: int = 0,
    batch: int = 20_000,
) -> MCResult:
    """Monte-Carlo risks of any classifier ``f(X [n, d+1]) -> labels in {-1, +1}``.

    An input counts as an error for an attack when ``f`` errs on the clean input or on any of the
    attack's candidates (the zero perturbation is in every ball). ``union`` is an error for any
    attack; ``avg`` is the per-input mean over attacks (its mean is R_avg).
    """
    n = _check_int("n", n, 2)
    if not attacks:
        raise TheoryError("attacks: give at least one {name: perturbation}")
    rng = np.random.default_rng(seed)
    errs: dict[str, list[np.ndarray]] = {k: [] for k in ("nat", *attacks)}
    for start in range(0, n, batch):
        X, y = dist.sample(min(batch, n - start), rng=rng)
        nat = _predict(f, X) != y
        errs["nat"].append(nat)
        for name, perturb in attacks.items():
            cands = perturb(X, y)
            err = nat.copy()
            for c in cands:
                err |= _predict(f, c) != y
            errs[name].append(err)
    flat = {k: np.concatenate(v) for k, v in errs.items()}
    per_attack = np.stack([flat[k] for k in attacks])
    risks = {k: Estimate.of(v) for k, v in flat.items()}
    risks["union"] = Estimate.of(per_attack.any(axis=0))
    risks["avg"] = Estimate.of(per_attack.mean(axis=0))
    return MCResult(risks)


def _predict(f: Classifier, X: np.ndarray) -> np.ndarray:
    pred = np.asarray(f(X)).reshape(-1)
    if pred.shape[0] != X.shape[0]:
        raise TheoryError(f"classifier returned {pred.shape[0]} labels for {X.shape[0]} inputs")
    if not np.isin(pred, (-1, 1)).all():
        raise TheoryError("classifier must return labels in {-1, +1} (class 1 <-> y = +1)")
    return pred


# --------------------------------------------------------------------------------------------
# Trained models (torch imported lazily)


def features_to_grid(X: np.ndarray, side: int) -> np.ndarray:
    """X [n, d+1] -> [n, 1, side, side]: the toy layout (x0 at [0, 0, 0], row-major, zero padding)."""
    n, width = X.shape
    if width > side * side:
        raise TheoryError(f"{width} features do not fit a {side}x{side} grid")
    flat = np.zeros((n, side * side), dtype=np.float32)
    flat[:, :width] = X
    return flat.reshape(n, 1, side, side)


def torch_classifier(
    model: Any, dist: Section2, *, device: str = "cpu", batch: int = 8192
) -> Classifier:
    """Wrap a torch model on the toy grid (logits [B, 2], class 1 <-> y = +1) as X -> {-1, +1}."""
    import torch

    side = math.ceil(math.sqrt(dist.d + 1))
    model = model.to(device).eval()

    def f(X: np.ndarray) -> np.ndarray:
        grid = features_to_grid(X, side)
        out = []
        with torch.no_grad():
            for i in range(0, grid.shape[0], batch):
                logits = model(torch.from_numpy(grid[i : i + batch]).to(device))
                out.append(logits.argmax(dim=1).cpu().numpy())
        return np.concatenate(out) * 2 - 1

    return f


def checkpoint_classifier(
    path: str | Path,
    *,
    model_name: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> tuple[Classifier, Section2]:
    """Load a trained toy checkpoint as a classifier; returns (f, the distribution it was trained on).

    The model name, its keyword arguments and the toy parameters come from the checkpoint's config
    (a ``TrainConfig``: ``model.name``, ``model.kwargs``, ``dataset.params``) unless given here.
    """
    from jobs.checkpoint import load_checkpoint
    from jobs.data import dataset_info
    from jobs.models import build_model

    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    spec = cfg.get("model")
    if isinstance(spec, Mapping):  # TrainConfig: {"model": {"name", "kwargs"}}
        kwargs = dict(spec.get("kwargs") or {})
        spec = spec.get("name")
    else:
        kwargs = dict(cfg.get("model_kwargs") or {})
    name = model_name or spec
    if not name:
        raise TheoryError(f"checkpoint {path}: no model name in its config; pass model_name=")
    if model_kwargs is not None:
        kwargs = dict(model_kwargs)
    data = cfg.get("dataset") if isinstance(cfg.get("dataset"), Mapping) else {}
    if data.get("name", "toy") != "toy":
        raise TheoryError(
            f"checkpoint {path}: dataset = {data['name']!r}; the theory needs a 'toy' model"
        )
    if params is None:
        params = data.get("params") or cfg.get("dataset_params") or {}
    dist = Section2.from_params(params)
    toy = {"d": dist.d, "alpha": dist.alpha, "p0": dist.p0, "x0": dist.x0}
    model = build_model(name, dataset_info("toy", toy), **kwargs)
    model.load_state_dict(ckpt["state_dict"])
    return torch_classifier(model, dist, device=device), dist


def theorem4_best_union(
    dist: Section2, n_positions: int, *, n_theta: int = 17, n: int = 100_000, seed: int = 0
) -> dict[str, Any]:
    """Theorem 4 at the most union-robust member of the interpolating family (0 < theta < pi/2, so
    w0 > w_i > 0): x0 ~ N(y, alpha^-2), weights cos(theta) on x0 and sin(theta) / sqrt(d) elsewhere."""
    g = dist.with_x0("gaussian")
    best = None
    for theta in np.linspace(0.0, math.pi / 2, _check_int("n_theta", n_theta, 3))[1:-1]:
        w = math.sin(theta) / math.sqrt(g.d)
        res = theorem4_affine(g, SlotClassifier(math.cos(theta), w, w), n_positions, n=n, seed=seed)
        res["theta_deg"] = math.degrees(theta)
        if best is None or res["union"]["risk"] < best["union"]["risk"]:
            best = res
    assert best is not None
    return best


def default_positions(n_positions: int) -> list[int]:
    """Theorem 2's sweep: powers of two below ``n_positions``, then ``n_positions`` itself."""
    out = [2**k for k in range(1, 16) if 2**k < n_positions]
    return [*out, n_positions]


def theory_report(
    dist: Section2, *, n_positions: int = 16, n_angles: int = 91, n: int = 40_000, seed: int = 0
) -> dict[str, Any]:
    """Every number ``mpo theory`` shows: Theorem 1 sweep, Claim 3, Theorem 2, Theorem 4, and a
    Monte-Carlo check of the closed forms for sign(x0) and sign(sum x_i), with each classifier's
    optimal perturbations (must agree) and with the proofs' classifier-free perturbations (a lower
    bound for any classifier)."""
    npos = check_positions(dist, n_positions)
    sweep = theorem1_sweep(dist, n_angles=n_angles)
    ends = [
        constant_classifier(dist),
        interpolating_classifier(dist, 0.0),
        interpolating_classifier(dist, math.pi / 2),
    ]
    mc_check = []
    proof = {"linf": feature_shift(dist.eps_linf), "l1": x0_shift(dist.eps_l1)}
    for clf in ends[1:]:
        optimal = {
            "linf": linear_optimal(clf, "linf", dist.eps_linf),
            "l1": linear_optimal(clf, "l1", dist.eps_l1),
        }
        mc_opt = mc_risks(clf, dist, optimal, n=n, seed=seed)
        mc_proof = mc_risks(clf, dist, proof, n=n, seed=seed)
        row = theorem1_row(dist, clf)
        for k in ("nat", "linf", "l1", "avg"):
            mc_check.append(
                {
                    "classifier": clf.name,
                    "risk": k,
                    "exact": row[k],
                    "mc_optimal": mc_opt[k].risk,
                    "mc_optimal_stderr": mc_opt[k].stderr,
                    "mc_proof": mc_proof[k].risk,
                    "mc_proof_stderr": mc_proof[k].stderr,
                }
            )
    avgs = [r["avg"] for r in sweep]
    return {
        "params": {
            **dist.to_dict(),
            "eps_linf": dist.eps_linf,
            "eps_l1": dist.eps_l1,
            "eps_l2": 2.0,
            "n_positions": npos,
        },
        "theorem1": {
            "rows": sweep,
            "min_avg": min(avgs),
            "min_avg_classifier": sweep[int(np.argmin(avgs))]["classifier"],
            "holds": dist.x0 != "sign" or min(avgs) >= 0.5 - 1e-12,
        },
        "claim3": claim3_gap(
            dist, [interpolating_classifier(dist, float(t)) for t in np.linspace(0, math.pi / 2, 7)]
        ),
        "theorem2": theorem2_table(dist, default_positions(npos), n=n, seed=seed),
        "theorem4": theorem4_best_union(dist, npos, n=2 * n, seed=seed),
        "mc_check": mc_check,
    }
