"""The paper's Section 2 distribution and the exact risks of linear classifiers on it.

The distribution (Tramer & Boneh, Section 2): y uniform in {-1, +1}; x0 = y with probability p0
else -y (``x0="sign"``), or x0 ~ N(y, alpha^-2) (``x0="gaussian"``, the Theorem 2 variant);
x1..xd iid N(y * eta, 1) with eta = alpha / sqrt(d). An input is a vector X of length d + 1
(x0 first), the same order as the ``toy`` dataset's row-major grid.

What is here:

- ``Section2``: validated parameters, sampling.
- Exact adversarial risks of linear classifiers ``sign(w . x + b)`` under l_inf, l_1 and l_2
  balls (closed forms: the worst perturbation lowers the margin y (w . x + b) by eps * ||w||_dual),
  their union and the affine adversary over two balls (Claim 3: equal to the union).
- Theorem 1 over a family of linear classifiers, and Claim 3.

The rest of the theory builds on this module: ``analysis.theory_mc`` (Monte-Carlo risks of any
classifier), ``analysis.theory_rt`` (the RT adversary: Theorems 2 and 4), ``analysis.theory_report``
(every number of ``mpo theory``), ``analysis.theory_plot`` (its figures) and
``analysis.theory_torch`` (a trained toy checkpoint as a classifier; the only one that needs torch).

An input exactly on a linear decision boundary counts as an error (the adversary's choice); it has
probability zero except for degenerate classifiers. numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import ndtr

from jobs.errors import MpoError

if TYPE_CHECKING:
    from jobs.data import ToyParams

X0_KINDS = ("sign", "gaussian")
#: l_p family -> the dual norm's p (the margin drops by eps * ||w||_dual).
DUAL_P: dict[str, float] = {"linf": 1.0, "l1": math.inf, "l2": 2.0}
#: keys of ``jobs.data.ToyParams`` that do not change the distribution.
_IGNORED_KEYS = frozenset({"n_train", "n_test"})


# --------------------------------------------------------------------------------------------
# The distribution


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    integral = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer()
    )
    if isinstance(value, bool) or not integral:
        raise MpoError(f"{name} = {value!r}: must be an integer >= {lo}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise MpoError(f"{name} = {value}: must be an integer {allowed}")
    return value


@dataclass(frozen=True)
class Section2:
    """Parameters of the Section 2 distribution (the ``toy`` dataset's ``ToyParams``)."""

    d: int = 99
    alpha: float = 2.0
    p0: float = 0.9
    x0: str = "sign"

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", check_int("d", self.d, 1))
        try:
            alpha = float(self.alpha)
        except (TypeError, ValueError):
            raise MpoError(f"alpha = {self.alpha!r}: must be a finite number > 0") from None
        if not (math.isfinite(alpha) and alpha > 0):
            raise MpoError(f"alpha = {self.alpha!r}: must be a finite number > 0")
        object.__setattr__(self, "alpha", alpha)
        try:
            p0 = float(self.p0)
        except (TypeError, ValueError):
            raise MpoError(f"p0 = {self.p0!r}: must be a number in [0.5, 1]") from None
        if not (0.5 <= p0 <= 1.0):
            raise MpoError(
                f"p0 = {self.p0!r}: must be in [0.5, 1] (x0 agrees with y at least half the time)"
            )
        object.__setattr__(self, "p0", p0)
        if self.x0 not in X0_KINDS:
            raise MpoError(f"x0 = {self.x0!r}: must be one of {', '.join(X0_KINDS)}")

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any] | Section2 | ToyParams | None = None
    ) -> Section2:
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
            raise MpoError(f"unknown toy parameter(s) {unknown}; allowed: d, alpha, p0, x0")
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
        n = check_int("n", n, 1)
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
            raise MpoError(f"w: must be a finite 1-D weight vector, got shape {w.shape}")
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
        raise MpoError(f"family = {family!r}: must be one of {', '.join(DUAL_P)}")
    return family


def _check_dim(dist: Section2, clf: LinearClassifier) -> None:
    if clf.w.shape[0] != dist.d + 1:
        raise MpoError(
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
        raise MpoError(f"beta = {beta}: must be in [0, 1]")
    red = beta * clf.reduction(*ball_a) + (1.0 - beta) * clf.reduction(*ball_b)
    return linear_margin_risk(dist, clf, red)


# --------------------------------------------------------------------------------------------
# Theorem 1


def interpolating_classifier(dist: Section2, theta: float) -> LinearClassifier:
    """sign(cos(theta) x0 + sin(theta) sum_i x_i / sqrt(d)): theta = 0 is sign(x0), pi/2 is sign(sum x_i)."""
    if not 0.0 <= theta <= math.pi / 2 + 1e-12:
        raise MpoError(f"theta = {theta}: must be in [0, pi/2]")
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
    n_angles = check_int("n_angles", n_angles, 2)
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
