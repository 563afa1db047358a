"""Monte-Carlo risks of any classifier on the Section 2 distribution.

A classifier is any callable ``X [n, d+1] -> labels in {-1, +1}`` (a ``LinearClassifier``, a
rule written by hand, or a trained model through ``analysis.theory_torch``). It is scored against
perturbations: the classifier-free ones of the proofs (``feature_shift``, ``x0_shift``,
``x0_swaps``), or a linear classifier's exact worst ones (``linear_optimal``), so the closed forms
of ``analysis.theory`` can be checked by sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from analysis.theory import LinearClassifier, MpoError, Section2, check_int

Classifier = Callable[[np.ndarray], np.ndarray]
#: (X [n, d+1], y [n] in {-1, +1}) -> candidate perturbed inputs [k, n, d+1]
Perturbation = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RiskEstimate:
    """A Monte-Carlo risk: mean of per-input error indicators and its standard error."""

    risk: float
    stderr: float
    n: int

    @classmethod
    def of(cls, errors: np.ndarray) -> RiskEstimate:
        errors = np.asarray(errors, dtype=np.float64)
        n = errors.size
        se = float(errors.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return cls(float(errors.mean()), se, n)

    def to_dict(self) -> dict[str, float]:
        return {"risk": self.risk, "stderr": self.stderr, "n": self.n}


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

    risks: dict[str, RiskEstimate] = field(default_factory=dict)

    def __getitem__(self, key: str) -> RiskEstimate:
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
    n = check_int("n", n, 2)
    if not attacks:
        raise MpoError("attacks: give at least one {name: perturbation}")
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
    risks = {k: RiskEstimate.of(v) for k, v in flat.items()}
    risks["union"] = RiskEstimate.of(per_attack.any(axis=0))
    risks["avg"] = RiskEstimate.of(per_attack.mean(axis=0))
    return MCResult(risks)


def _predict(f: Classifier, X: np.ndarray) -> np.ndarray:
    pred = np.asarray(f(X)).reshape(-1)
    if pred.shape[0] != X.shape[0]:
        raise MpoError(f"classifier returned {pred.shape[0]} labels for {X.shape[0]} inputs")
    if not np.isin(pred, (-1, 1)).all():
        raise MpoError("classifier must return labels in {-1, +1} (class 1 <-> y = +1)")
    return pred
