"""Exact Euclidean projections onto l_p balls intersected with a box.

Every function here works on a batch: rows are independent problems. The box for the
perturbation ``delta`` of a clean input ``x0`` inside ``[lo, hi]`` is ``[lo - x0, hi - x0]``;
it always contains 0, which is what makes the sign-symmetric algorithms below exact.

- l_inf: the ball is a box, so ball ∩ box is a box and clipping is exact.
- l_2: the minimiser is ``clip(t * v)`` for the largest ``t in [0, 1]`` whose norm is at most
  eps (KKT of the ball constraint); ``||clip(t v)||^2`` is piecewise quadratic in ``t`` with
  one breakpoint per coordinate, so sorting the breakpoints gives ``t`` in closed form.
- l_1: the minimiser is ``sign(v) * clip(|v| - lam, 0, u)`` with ``u`` the box bound in the
  direction of ``v`` (Croce & Hein 2021); ``sum clip(|v| - lam, 0, u)`` is piecewise linear in
  ``lam`` with two breakpoints per coordinate, so sorting gives ``lam`` in closed form. With no
  box (``u = inf``) this is the sort-based projection of Duchi et al., with the correct index.

All of it stays on the input's device: sorts, cumulative sums and gathers, no host round trip.
After the closed-form solution a final rescale by ``min(1, eps / ||d||)`` removes float
rounding (a factor 1 - O(1e-7)); scaling towards 0 never leaves a box that contains 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

Bounds = tuple[float, float] | None


def _radius(eps: float | Tensor, ref: Tensor) -> Tensor:
    """eps as a [B, 1] tensor on ref's device and dtype (eps may be a float or a [B] tensor)."""
    if isinstance(eps, Tensor):
        return eps.to(device=ref.device, dtype=ref.dtype).reshape(-1, 1).expand(ref.shape[0], 1)
    return torch.full((ref.shape[0], 1), float(eps), device=ref.device, dtype=ref.dtype)


def _delta_box(x0: Tensor | None, bounds: Bounds, like: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """The box [lo - x0, hi - x0] for delta, flattened like ``like`` ([B, D]); None = unbounded."""
    if bounds is None:
        return None, None
    if x0 is None:
        raise ValueError("x0 is required when bounds are given (the box for delta is x0-relative)")
    flat = x0.reshape(like.shape).to(like.dtype)
    return bounds[0] - flat, bounds[1] - flat


def _rescale(d: Tensor, norms: Tensor, eps: Tensor) -> Tensor:
    scale = torch.where(norms > eps[:, 0], eps[:, 0] / norms.clamp_min(1e-30), torch.ones_like(norms))
    return d * scale[:, None]


def l_inf_ball_box(v: Tensor, eps: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    """[B, D] -> [B, D]: projection onto {||d||_inf <= eps} ∩ [lo, hi] (eps [B, 1])."""
    d = torch.maximum(torch.minimum(v, eps), -eps)
    if lo is not None:
        d = torch.minimum(torch.maximum(d, lo), hi)
    return d


def l2_ball_box(v: Tensor, eps: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    """[B, D] -> [B, D]: exact projection onto {||d||_2 <= eps} ∩ [lo, hi], lo <= 0 <= hi."""
    if lo is None:
        norms = v.norm(dim=1)
        return _rescale(v, norms, eps)
    inside = torch.minimum(torch.maximum(v, lo), hi)
    # Breakpoint of coordinate i: the t where t * v_i reaches its box bound b_i.
    b = torch.where(v >= 0, hi, lo)
    v2 = v * v
    tau = torch.where(v != 0, b / torch.where(v != 0, v, torch.ones_like(v)), torch.full_like(v, 2.0))
    tau = tau.clamp_min(0)
    tau_s, order = tau.sort(dim=1)
    b2_s = (b * b).gather(1, order)
    v2_s = v2.gather(1, order)
    # f(tau_j) = sum_{i <= j} b_i^2 + tau_j^2 * sum_{i > j} v_i^2 (coordinates sorted by tau).
    c_b2 = b2_s.cumsum(1)
    rest_v2 = v2_s.sum(1, keepdim=True) - v2_s.cumsum(1)
    f = c_b2 + tau_s * tau_s * rest_v2
    # Only breakpoints below t = 1 matter: beyond them the crossing has already happened.
    f = torch.where(tau_s < 1, f, torch.full_like(f, float("inf")))
    eps2 = eps * eps
    j = (f <= eps2).sum(1, keepdim=True)  # number of clipped coordinates at the solution
    zero = torch.zeros_like(eps)
    c_sum = torch.where(j > 0, c_b2.gather(1, (j - 1).clamp_min(0)), zero)
    tot_v2 = v2_s.sum(1, keepdim=True)
    s_sum = torch.where(j > 0, rest_v2.gather(1, (j - 1).clamp_min(0)), tot_v2)
    t = ((eps2 - c_sum).clamp_min(0) / s_sum.clamp_min(1e-30)).sqrt().clamp(0, 1)
    d = torch.minimum(torch.maximum(t * v, lo), hi)
    need = inside.norm(dim=1) > eps[:, 0]
    d = torch.where(need[:, None], d, inside)
    return _rescale(d, d.norm(dim=1), eps)


def l1_ball_box(v: Tensor, eps: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    """[B, D] -> [B, D]: exact projection onto {||d||_1 <= eps} ∩ [lo, hi], lo <= 0 <= hi."""
    a = v.abs()
    if lo is None:
        u = torch.full_like(v, float("inf"))
    else:
        u = torch.where(v >= 0, hi, -lo)
    m = torch.minimum(a, u)  # the solution at lam = 0 (plain box clip)
    f0 = m.sum(1, keepdim=True)
    start = (a - u).clamp_min(0)  # lam where coordinate i leaves its cap and starts shrinking
    bp = torch.cat([start, a], dim=1)  # ... and where it reaches 0
    bp_s, order = bp.sort(dim=1)
    # +1 at a start breakpoint (index < D), -1 at an end breakpoint: the running count is the
    # number of shrinking coordinates after bp_s[j] (the slope of f there, negated).
    slope = torch.where(order < a.shape[1], 1.0, -1.0).to(a.dtype).cumsum(1)
    drop = (slope[:, :-1] * bp_s.diff(dim=1)).cumsum(1)
    f = f0 - torch.cat([torch.zeros_like(f0), drop], dim=1)  # f(lam) at each sorted breakpoint
    j = ((f >= eps).sum(1, keepdim=True) - 1).clamp_min(0)  # last breakpoint with f >= eps
    f_j = f.gather(1, j)
    s_j = slope.gather(1, j)
    lam = bp_s.gather(1, j) + torch.where(s_j > 0, (f_j - eps) / s_j.clamp_min(1), torch.zeros_like(f_j))
    lam = lam.clamp_min(0)
    d_abs = torch.minimum((a - lam).clamp_min(0), u)
    d_abs = torch.where(f0 > eps, d_abs, m)
    d = torch.where(v >= 0, d_abs, -d_abs)
    return _rescale(d, d_abs.sum(1), eps)


_BALL_BOX = {"linf": l_inf_ball_box, "l2": l2_ball_box, "l1": l1_ball_box}


def project(
    delta: Tensor,
    family: str,
    eps: float | Tensor,
    *,
    x0: Tensor | None = None,
    bounds: Bounds = None,
) -> Tensor:
    """Project perturbations onto the ``family`` ball of radius eps (float or [B]) ∩ the box.

    delta: [B, ...]; x0: [B, ...] clean inputs (needed when bounds is given);
    bounds: (lo, hi) for x0 + delta, or None (unbounded). Returns [B, ...].
    """
    try:
        fn = _BALL_BOX[family]
    except KeyError:
        raise ValueError(f"family {family!r} has no ball projection; allowed: {sorted(_BALL_BOX)}") from None
    flat = delta.reshape(delta.shape[0], -1)
    lo, hi = _delta_box(x0, bounds, flat)
    return fn(flat, _radius(eps, flat), lo, hi).reshape(delta.shape)


def project_linf(delta: Tensor, eps: float | Tensor, *, x0: Tensor | None = None, bounds: Bounds = None) -> Tensor:
    """Projection onto {||d||_inf <= eps} ∩ {x0 + d in bounds}; shapes [B, ...]."""
    return project(delta, "linf", eps, x0=x0, bounds=bounds)


def project_l2(delta: Tensor, eps: float | Tensor, *, x0: Tensor | None = None, bounds: Bounds = None) -> Tensor:
    """Exact projection onto {||d||_2 <= eps} ∩ {x0 + d in bounds}; shapes [B, ...]."""
    return project(delta, "l2", eps, x0=x0, bounds=bounds)


def project_l1(delta: Tensor, eps: float | Tensor, *, x0: Tensor | None = None, bounds: Bounds = None) -> Tensor:
    """Exact projection onto {||d||_1 <= eps} ∩ {x0 + d in bounds}; shapes [B, ...]."""
    return project(delta, "l1", eps, x0=x0, bounds=bounds)
