"""The exact attack: the worst case of an affine classifier on an l_p ball within the input box.

For logits ``z(x) = W x + b`` the margin of class j over the label y at ``x + delta`` is
``m_j = c_j + g_j . delta`` with ``g_j = W_j - W_y``: linear in delta, so its maximum over the
convex set {||delta||_p <= eps, lo <= x + delta <= hi} is a closed form per class (each
coordinate moves in the direction of ``sign(g_j)``, at most its room in the box,
``cap_i = hi - x_i`` or ``x_i - lo``, and never more than eps, which no coordinate of the ball
exceeds):

- l_inf: every coordinate by ``min(eps, cap_i)``;
- l_1: the fractional knapsack: the coordinates in decreasing ``|g_i|``, each filled to its cap
  until the budget eps is spent;
- l_2: ``t_i = min(lambda |g_i|, cap_i)`` with the lambda at which ``||t|| = eps`` (bisection in
  float64; ``t = cap`` where even that stays inside the ball), the KKT point of the problem.

The attack takes the class whose maximal margin is largest: the input is fooled inside the ball
by some perturbation exactly when that margin is positive, so an input it leaves robust cannot be
fooled by any attack (up to float rounding of the logits). The evaluation scores the result with
the model itself, as for every attack.

Which models are affine is checked, not assumed: every module of the model must be one of
``AFFINE_MODULES`` (mpo's ``linear`` model, ``nn.Linear``, ``nn.Flatten``, ``Normalize``, ...);
``W`` and ``b`` are then read from the model's outputs at 0 and at the unit vectors. Any other
model is refused with an ``AttackSpecError`` before anything runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.attacks.base import WORST_CASE, Attack, Bounds, RunOutput
from jobs.attacks.checks import AttackSpecError
from jobs.attacks.norms import perturbation_norm
from jobs.models import Linear, Normalize

if TYPE_CHECKING:
    from jobs.attacks.exact.spec import ExactSpec

#: Module types whose composition (as ``nn.Sequential`` or mpo's ``Linear``) is affine in the
#: input in eval mode; exact types, so a subclass with its own ``forward`` is not taken on trust.
AFFINE_MODULES: tuple[type[nn.Module], ...] = (
    Linear, Normalize, nn.Linear, nn.Flatten, nn.Unflatten, nn.Identity, nn.Sequential,
    nn.Dropout,
)
_BISECTION_STEPS = 80


def check_affine(model: nn.Module) -> None:
    """Refuse a model that is not a composition of ``AFFINE_MODULES``."""
    others = sorted({type(m).__name__ for m in model.modules() if type(m) not in AFFINE_MODULES})
    if others:
        allowed = ", ".join(t.__name__ for t in AFFINE_MODULES)
        raise AttackSpecError(
            f"attack type 'exact' solves the worst case of a model affine in its input (mpo's "
            f"'linear' model); this model has modules {others}, which are not affine or not "
            f"known to be (allowed: {allowed}). Evaluate it with PGD, SLIDE and AutoAttack "
            "(for toy: the suite 'toy-nonlinear')"
        )


def affine_map(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(W [K, D], b [K]) of an affine model (``check_affine``) on inputs shaped like x [B, ...],
    in float64: its outputs at 0 and at the D unit vectors."""
    check_affine(model)
    d = x[0].numel()
    with torch.no_grad():
        basis = torch.cat([x.new_zeros(1, d), torch.eye(d, dtype=x.dtype, device=x.device)])
        out = model(basis.reshape(d + 1, *x.shape[1:])).double()
    b = out[0]
    return (out[1:] - b).T.contiguous(), b


def worst_case(g: Tensor, cap: Tensor, norm: str, eps: float) -> Tensor:
    """[N, D] directions g and [N, D] room along sign(g) -> [N, D] magnitudes t >= 0 maximising
    ``|g| . t`` subject to ``t <= cap`` and ``||t||_norm <= eps`` (float64)."""
    a = g.abs()
    cap = torch.where(a > 0, cap.clamp(min=0.0, max=eps), torch.zeros_like(cap))
    if norm == "linf":
        return cap
    if norm == "l1":
        order = a.argsort(dim=1, descending=True)
        c = cap.gather(1, order)
        before = torch.cat([c.new_zeros(c.shape[0], 1), c.cumsum(1)[:, :-1]], dim=1)
        t = (eps - before).clamp(min=0.0).minimum(c)
        return torch.zeros_like(t).scatter_(1, order, t)
    if norm != "l2":
        raise ValueError(f"norm {norm!r}: must be one of ['linf', 'l2', 'l1']")
    full = cap.norm(dim=1) <= eps  # the whole room fits in the ball
    ratio = torch.where(a > 0, cap / a.clamp(min=torch.finfo(a.dtype).tiny), torch.zeros_like(a))
    lo = torch.zeros(g.shape[0], 1, dtype=g.dtype, device=g.device)
    hi = ratio.amax(1, keepdim=True)
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        inside = (mid * a).minimum(cap).norm(dim=1, keepdim=True) <= eps
        lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
    t = (lo * a).minimum(cap)
    return torch.where(full[:, None], cap, t)


class ExactAttack(Attack):
    """The exact worst case of an affine model (see the module docstring)."""

    kept = (WORST_CASE, WORST_CASE)

    def __init__(self, parsed: ExactSpec, *, bounds: Bounds = (0.0, 1.0)):
        self.parsed = parsed
        self.family = parsed.norm
        self.epsilon = parsed.epsilon
        self.spec = parsed.to_dict()
        self.bounds = bounds
        self.total_steps = 0

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> RunOutput:
        w, b = affine_map(model, x)
        n, k = x.shape[0], w.shape[0]
        flat = x.reshape(n, -1).double()
        g = w[None, :, :] - w[y][:, None, :]  # [n, K, D]: margin direction of class j over y
        z = flat @ w.T + b  # [n, K] logits at x
        c = z - z.gather(1, y[:, None])  # [n, K] margins of class j over y at x
        if self.bounds is None:
            room_up = room_down = torch.full_like(flat, float(self.epsilon))
        else:
            lo, hi = self.bounds
            room_up, room_down = hi - flat, flat - lo
        cap = torch.where(g > 0, room_up[:, None, :], room_down[:, None, :])
        t = worst_case(g.reshape(n * k, -1), cap.reshape(n * k, -1), self.family,
                       float(self.epsilon)).reshape(n, k, -1)
        margin = c + (g.abs() * t).sum(2)
        margin.scatter_(1, y[:, None], float("-inf"))
        j = margin.argmax(1)
        rows = torch.arange(n, device=x.device)
        delta = g[rows, j].sign() * t[rows, j]
        x_adv = (flat + delta).to(x.dtype).reshape(x.shape)
        if self.bounds is not None:
            x_adv = x_adv.clamp(*self.bounds)
        with torch.no_grad():
            logits = model(x_adv)
        return RunOutput(x_adv=x_adv, loss=F.cross_entropy(logits, y, reduction="none"),
                         pred=logits.argmax(1))

    def _measure(self, x: Tensor, x_adv: Tensor, transform: Tensor | None) -> Tensor:
        return perturbation_norm(x_adv - x, self.family)
