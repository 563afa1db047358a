"""The balls of the evaluation's in-ball rule, and the l_p families (torch-free until measured).

An attack result counts as fooling the model only if its perturbation lies inside the ball of
its family, measured by the evaluation and not trusted from the attack. A ``Ball`` (what an
attack spec's ``ball()`` returns) is that measure and its limit:

- l_inf, l_2, l_1 (``LpBall``): the norm of ``x_adv - x`` is at most ``epsilon * (1 + 1e-5)``;
- ``linf+l1`` (``GaugeBall``): the affine set of the paper, the convex hull of the union of the
  two balls ``eps_inf * B_inf`` and ``eps_1 * B_1`` (every ``beta * d_inf + (1 - beta) * d_1``):
  its gauge at ``x_adv - x`` is at most ``1 + 1e-5``;
- ``rt`` and ``linf+rt`` (``BudgetBall``): the attack's own measure (``AttackResult.norm``, a
  fraction of the limits) is at most ``1 + 1e-5``;
- ``msd`` (``UnionBall``): the union of l_p balls, ``min_i ||delta||_{p_i} / eps_i <= 1 + 1e-5``.

The results' ``epsilon`` column is the l_p radius, NaN for the others, whose sizes are fractions
of the budget. ``key`` is what two suite attacks must share (with family and budget) to run in
one cascade. The measures themselves are torch code (``jobs.attacks.norms``), imported when a
ball first measures something.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jobs.attacks.specbase import BUDGET_RTOL, LP_FAMILIES, Radius

if TYPE_CHECKING:
    from torch import Tensor

    from jobs.attacks.base import AttackResult

__all__ = ["LP_FAMILIES", "Ball", "BudgetBall", "GaugeBall", "LpBall", "Radius", "UnionBall"]


class Ball(ABC):
    """The ball of the in-ball rule for one suite attack (see the module docstring)."""

    key: Hashable
    epsilon: float

    @abstractmethod
    def measure(self, x: Tensor, result: AttackResult) -> Tensor:
        """[B] size of each perturbation of ``result`` (made from x [B, ...]) in this ball's measure."""

    def contains(self, x: Tensor, result: AttackResult) -> tuple[Tensor, Tensor]:
        """([B] size, [B] bool inside the ball, with the in-ball rule's tolerance)."""
        size = self.measure(x, result)
        return size, size <= self.limit()

    def limit(self) -> float:
        """The largest size inside the ball: the radius (1 for a fraction of the budget), with
        the tolerance."""
        return (1.0 if math.isnan(self.epsilon) else self.epsilon) * (1.0 + BUDGET_RTOL)


@dataclass(frozen=True)
class LpBall(Ball):
    """The l_p ball of radius ``epsilon``: size is the norm of x_adv - x."""

    family: str
    epsilon: float

    @property
    def key(self) -> float:
        return round(self.epsilon, 12)

    def measure(self, x: Tensor, result: AttackResult) -> Tensor:
        from jobs.attacks.norms import perturbation_norm

        return perturbation_norm((result.x_adv - x).detach(), self.family)


@dataclass(frozen=True)
class GaugeBall(Ball):
    """The convex hull of eps_inf * B_inf ∪ eps_1 * B_1: size is its gauge at x_adv - x."""

    eps_inf: float
    eps_1: float
    key: str
    epsilon = math.nan

    def measure(self, x: Tensor, result: AttackResult) -> Tensor:
        from jobs.attacks.norms import linf_l1_gauge

        return linf_l1_gauge((result.x_adv - x).detach(), self.eps_inf, self.eps_1)


@dataclass(frozen=True)
class BudgetBall(Ball):
    """A ball measured from the transform (rt, linf+rt): size is the attack's own measure, a
    fraction of the budget, which the attack computes from its outputs and asserts."""

    key: Hashable
    epsilon = math.nan

    def measure(self, x: Tensor, result: AttackResult) -> Tensor:
        import torch

        return torch.as_tensor(result.norm, device=x.device).to(x.dtype)


@dataclass(frozen=True)
class UnionBall(Ball):
    """The union of l_p balls: size is ``union_size`` at x_adv - x (a fraction of the budget)."""

    radii: tuple[Radius, ...]
    epsilon = math.nan

    @property
    def key(self) -> tuple[Radius, ...]:
        return tuple((fam, round(eps, 12)) for fam, eps in self.radii)

    def measure(self, x: Tensor, result: AttackResult) -> Tensor:
        from jobs.attacks.norms import union_size

        return union_size((result.x_adv - x).detach(), self.radii)
