"""Perturbation sizes: the norms of the l_p families and the measures of the combined sets.

``perturbation_norm(delta, family)`` measures a batch of perturbations [B, ...] -> [B] in the
family's norm. The affine family ``linf+l1`` is the paper's affine set: every
``beta * d_inf + (1 - beta) * d_1`` with ``||d_inf||_inf <= eps_inf``, ``||d_1||_1 <= eps_1`` and
beta in [0, 1], i.e. the convex hull of the union of the two balls. Its size is that set's
gauge, ``min over d1 of ||d1||_inf / eps_inf + ||delta - d1||_1 / eps_1`` (at most 1 exactly
when delta lies in the set; ``tests/test_projections.py`` checks it against a linear program).
It is computed exactly: for a fixed ``c = ||d1||_inf`` the best d1 is ``clip(delta, -c, c)``,
and the objective is convex piecewise linear in c with breakpoints at the |delta_i|, so the
minimum is at one of them. ``union_size`` is MSD's measure of a union of l_p balls.

These are the measures behind the balls of the in-ball rule (``jobs.attacks.balls``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from jobs.attacks.specbase import LP_FAMILIES, Radius

__all__ = ["LP_FAMILIES", "linf_l1_gauge", "perturbation_norm", "union_size"]


def linf_l1_gauge(delta: Tensor, eps_inf: float, eps_1: float) -> Tensor:
    """[B, ...] -> [B]: the gauge of the convex hull of eps_inf * B_inf ∪ eps_1 * B_1 at each
    delta (<= 1: inside)."""
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


def union_size(delta: Tensor, radii: Sequence[Radius]) -> Tensor:
    """[B, ...] -> [B]: ``min_i ||delta||_{p_i} / eps_i`` (at most 1: inside one of the balls)."""
    return torch.stack([perturbation_norm(delta, fam) / eps for fam, eps in radii]).amin(0)
