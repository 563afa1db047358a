"""Perturbation sizes, the balls of the evaluation's in-ball rule, and the public projections.

``LP_FAMILIES`` are the families whose size is a norm of the perturbation (their attack specs take
a radius ``epsilon``). ``perturbation_norm(delta, family)`` measures a batch of perturbations
[B, ...] -> [B] in the family's norm. The affine family ``linf+l1`` needs both radii: its size is the gauge of the
Minkowski sum eps_inf * B_inf + eps_1 * B_1, i.e. ``min over d1 of ||d1||_inf / eps_inf +
||delta - d1||_1 / eps_1`` (at most 1 exactly when delta is a sum of the two scaled
perturbations). It is computed exactly: for a fixed ``c = ||d1||_inf`` the best d1 is
``clip(delta, -c, c)``, and the objective is convex piecewise linear in c with breakpoints at the
|delta_i|, so the minimum is at one of them.

The in-ball rule
----------------
An attack result counts as fooling the model only if its perturbation lies inside the ball of
its family, measured by the evaluation and not trusted from the attack. A ``Ball`` (what an
attack spec's ``ball()`` returns) is that measure and its limit: for l_inf, l_2, l_1 the norm of
``x_adv - x`` must be at most ``epsilon * (1 + 1e-5)`` (``LpBall``); for ``linf+l1`` the gauge of
the Minkowski sum of the two balls at ``x_adv - x`` must be at most ``1 + 1e-5`` (``GaugeBall``);
for ``rt`` and ``linf+rt`` the attack's own measure (``AttackResult.norm``, a fraction of the
limits) must be at most ``1 + 1e-5`` (``BudgetBall``). The results' ``epsilon`` column is the
l_p radius, NaN for the others, whose sizes are fractions of the budget.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from jobs.attacks.projections import project, project_l1, project_l2, project_linf

if TYPE_CHECKING:
    from jobs.attacks.base import AttackResult

__all__ = [
    "IN_BALL_TOLERANCE",
    "LP_FAMILIES",
    "Ball",
    "BudgetBall",
    "GaugeBall",
    "LpBall",
    "linf_l1_gauge",
    "perturbation_norm",
    "project",
    "project_l1",
    "project_l2",
    "project_linf",
]

#: The families measured by a norm of delta, in the order specs and messages list them.
LP_FAMILIES = ("linf", "l2", "l1")
#: Relative slack of the in-ball rule (float rounding of x0 + delta - x0).
IN_BALL_TOLERANCE = 1e-5


def linf_l1_gauge(delta: Tensor, eps_inf: float, eps_1: float) -> Tensor:
    """[B, ...] -> [B]: the gauge of eps_inf * B_inf + eps_1 * B_1 at each delta (<= 1: inside)."""
    if not (eps_inf > 0 and eps_1 > 0):
        raise ValueError(f"linf+l1 gauge needs positive radii, got eps_inf={eps_inf}, eps_1={eps_1}")
    a = delta.reshape(delta.shape[0], -1).abs().sort(dim=1, descending=True).values
    n = a.shape[1]
    # cost(c = a_j) = a_j / eps_inf + (sum_{i<j} a_i - j * a_j) / eps_1   (0-based j)
    before = torch.cat([torch.zeros_like(a[:, :1]), a.cumsum(1)[:, :-1]], dim=1)
    j = torch.arange(n, device=a.device, dtype=a.dtype)
    cost = a / eps_inf + (before - j * a) / eps_1
    at_zero = a.sum(1) / eps_1  # c = 0: everything in the l_1 part
    return torch.minimum(cost.amin(1), at_zero)


def perturbation_norm(
    delta: Tensor, family: str, *, epsilons: tuple[float, float] | None = None
) -> Tensor:
    """Size of each perturbation in ``family``'s norm: delta [B, ...] -> [B].

    family: "linf", "l2", "l1", or "linf+l1" (then ``epsilons=(eps_inf, eps_1)`` is required and
    the result is the combined gauge, a fraction of the affine budget). "rt" and "linf+rt" are
    measured from the transform, not from delta: use the attack's result instead.
    """
    flat = delta.reshape(delta.shape[0], -1)
    if family == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if family == "l2":
        return flat.norm(dim=1)
    if family == "l1":
        return flat.abs().sum(1)
    if family == "linf+l1":
        if epsilons is None:
            raise ValueError("perturbation_norm(family='linf+l1') needs epsilons=(eps_inf, eps_1)")
        return linf_l1_gauge(delta, *epsilons)
    raise ValueError(
        f"family {family!r} has no norm of delta; allowed: ['linf', 'l2', 'l1', 'linf+l1'] "
        "(rt sizes come from the transform in AttackResult.norm)"
    )


class Ball(ABC):
    """The ball of the in-ball rule for one suite attack.

    ``key``: what two suite attacks must share (with family and budget) to run in one cascade.
    ``epsilon``: the results' epsilon column (the l_p radius; NaN for fractions of the budget).
    """

    key: Hashable
    epsilon: float

    @abstractmethod
    def measure(self, x: Tensor, result: AttackResult) -> Tensor:
        """[B] size of each perturbation of ``result`` (made from x [B, ...]) in this ball's measure."""

    def contains(self, x: Tensor, result: AttackResult) -> tuple[Tensor, Tensor]:
        """([B] size, [B] bool inside the ball, with the in-ball rule's tolerance)."""
        size = self.measure(x, result)
        limit = 1.0 if math.isnan(self.epsilon) else self.epsilon
        return size, size <= limit * (1.0 + IN_BALL_TOLERANCE)


@dataclass(frozen=True)
class LpBall(Ball):
    """The l_p ball of radius ``epsilon``: size is the norm of x_adv - x."""

    family: str
    epsilon: float

    @property
    def key(self) -> float:
        return round(self.epsilon, 12)

    def measure(self, x: Tensor, result: AttackResult) -> Tensor:
        return perturbation_norm((result.x_adv - x).detach(), self.family)


@dataclass(frozen=True)
class GaugeBall(Ball):
    """eps_inf * B_inf + eps_1 * B_1: size is the gauge at x_adv - x (a fraction of the budget)."""

    eps_inf: float
    eps_1: float
    key: str
    epsilon = math.nan

    def measure(self, x: Tensor, result: AttackResult) -> Tensor:
        return linf_l1_gauge((result.x_adv - x).detach(), self.eps_inf, self.eps_1)


@dataclass(frozen=True)
class BudgetBall(Ball):
    """A ball measured from the transform (rt, linf+rt): size is the attack's own measure, a
    fraction of the budget, which the attack computes from its outputs and asserts."""

    key: Hashable
    epsilon = math.nan

    def measure(self, x: Tensor, result: AttackResult) -> Tensor:
        return torch.as_tensor(result.norm, device=x.device).to(x.dtype)
