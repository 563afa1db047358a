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

from jobs.attacks.specbase import Bounds


def _radius(eps: float | Tensor, ref: Tensor) -> Tensor:
    """eps as a [B, 1] tensor on ref's device and dtype (eps may be a float or a [B] tensor)."""
    if isinstance(eps, Tensor):
        return eps.to(device=ref.device, dtype=ref.dtype).reshape(-1, 1).expand(ref.shape[0], 1)
    return torch.full((ref.shape[0], 1), float(eps), device=ref.device, dtype=ref.dtype)


#: The box of delta around a clean batch: (lo - x0, hi - x0), each [B, D]; None when unbounded.
DeltaBox = tuple[Tensor, Tensor] | None


def delta_box(x0: Tensor | None, bounds: Bounds) -> DeltaBox:
    """The box [lo - x0, hi - x0] for the perturbations of x0 [B, ...], flattened to [B, D]
    (None when unbounded). An attack computes it once per run and hands it to ``project``."""
    if bounds is None:
        return None
    if x0 is None:
        raise ValueError("x0 is required when bounds are given (the box for delta is x0-relative)")
    flat = x0.reshape(x0.shape[0], -1)
    return bounds[0] - flat, bounds[1] - flat


def _rescale(d: Tensor, norms: Tensor, eps: Tensor) -> Tensor:
    scale = torch.where(norms > eps[:, 0], eps[:, 0] / norms.clamp_min(1e-30), torch.ones_like(norms))
    return d * scale[:, None]


def l_inf_ball_box(v: Tensor, eps: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    """[B, D] -> [B, D]: projection onto {||d||_inf <= eps} ∩ [lo, hi] (eps [B, 1])."""
    d = torch.clamp(v, -eps, eps)
    return d if lo is None else torch.clamp(d, lo, hi)


#: Passes of the active-set iterations below before the rows left go to the sort-based solve.
MAX_PASSES = 12

_INF = float("inf")


def _solve_rows(solve, need: Tensor, base: Tensor, *args: Tensor) -> Tensor:
    """``base`` with the rows in ``need`` replaced by ``solve(*args)`` on those rows only."""
    if bool(need.all()):
        return solve(*args)
    rows = need.nonzero().squeeze(1)
    if rows.numel() == 0:
        return base
    return base.index_copy(0, rows, solve(*(t.index_select(0, rows) for t in args)))


def _finish(result: Tensor, done: Tensor, solve_sorted, *args: Tensor) -> Tensor:
    """Rows the active-set iteration left unfinished ([R, 1] ``done``) get the sort-based solve."""
    if bool(done.all()):
        return result
    rows = (~done[:, 0]).nonzero().squeeze(1)
    return result.index_copy(0, rows, solve_sorted(*(t.index_select(0, rows) for t in args)))


def _l2_multiplier_sorted(v: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """[R, 1] multiplier t of the l_2 problem by sorting all D breakpoints (the reference path)."""
    b = torch.where(v >= 0, hi, lo)
    v2 = v * v
    # Breakpoint of coordinate i: the t where t * v_i reaches its box bound b_i.
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
    f = torch.where(tau_s < 1, f, torch.full_like(f, _INF))
    eps2 = eps * eps
    j = (f <= eps2).sum(1, keepdim=True)  # number of clipped coordinates at the solution
    zero = torch.zeros_like(eps)
    c_sum = torch.where(j > 0, c_b2.gather(1, (j - 1).clamp_min(0)), zero)
    tot_v2 = v2_s.sum(1, keepdim=True)
    s_sum = torch.where(j > 0, rest_v2.gather(1, (j - 1).clamp_min(0)), tot_v2)
    return ((eps2 - c_sum).clamp_min(0) / s_sum.clamp_min(1e-30)).sqrt().clamp(0, 1)


def _mask(out_like: Tensor, op, a: Tensor, b: Tensor | float) -> Tensor:
    """A comparison as a float 0/1 tensor: on CPU comparisons that write floats are vectorised,
    while bool tensors and ``torch.where`` over them run many times slower."""
    return op(a, b, out=torch.empty_like(out_like))


def _big(t: Tensor) -> float:
    """A finite stand-in for +inf that survives multiplication by 0 (inf * 0 is nan)."""
    return torch.finfo(t.dtype).max / 4


#: The breakpoint given to coordinates that never reach their bound for t in [0, 1] (v_i = 0).
_NEVER = 2.0


def _l2_multiplier(v: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """[R, 1] multiplier t in [0, 1]: the projection is ``clip(t v)``.

    Active-set iteration from below: with C = {i: tau_i <= t} clipped, ``||clip(s v)||^2`` is
    ``sum_C b^2 + s^2 sum_notC v^2`` up to the next breakpoint, and this quadratic bounds it from
    above for every s >= t, so its root t' satisfies t <= t' <= t* (the root of the norm, which
    may exceed 1). When no breakpoint lies in (t, t'] the quadratic is the function there and
    t' = t*; once t >= 1, t* >= 1 and the answer is t = 1 (the box clip lies inside the ball).
    Each pass clips at least one more coordinate, so the iteration is finite (at most 4 passes on
    every row of the bench's PGD l_2 run). Rows not finished after MAX_PASSES go to the
    sort-based solve.
    """
    # Breakpoint of coordinate i: the t where t v_i reaches its bound, max(hi / v, lo / v) (one
    # of the two is <= 0). v_i = 0 gives nan or inf: never (any t > 1 will do). Breakpoints
    # above 1 never matter, so every one is capped at _NEVER and stays finite. (The passes
    # write into one scratch buffer: fewer fresh allocations, a working set that stays in
    # cache; the CPU time of this loop is mostly memory traffic.)
    scratch = v.reciprocal()
    tau = torch.mul(hi, scratch)
    torch.maximum(tau, scratch.mul_(lo), out=tau).nan_to_num_(nan=_NEVER, posinf=_NEVER)
    tau.clamp_max_(_NEVER)
    b2 = torch.mul(tau, v).square_()  # |b_i|^2 where coordinate i is clipped (0 where v_i = 0)
    v2 = v * v
    tot_v2 = v2.sum(1, keepdim=True)
    eps2 = eps * eps
    t = torch.zeros_like(eps)
    done = torch.zeros(eps.shape, dtype=torch.bool, device=eps.device)
    clipped = torch.empty_like(v)
    for _ in range(MAX_PASSES):
        torch.le(tau, t, out=clipped)
        sb = torch.mul(b2, clipped, out=scratch).sum(1, keepdim=True)
        sv = tot_v2 - torch.mul(v2, clipped, out=scratch).sum(1, keepdim=True)
        tc = ((eps2 - sb).clamp_min(0) / sv.clamp_min(1e-30)).sqrt()
        # next breakpoint above t: clipped ones are lifted above every unclipped one
        nxt = torch.add(tau, clipped, alpha=2 * _NEVER, out=scratch).amin(1, keepdim=True)
        # A finished row (tc <= nxt) stays where it is: at t = tc the clipped set, and so tc,
        # are the same (a coordinate with tau = tc adds tc^2 v^2 = b^2 to either sum).
        t = torch.maximum(tc, t)
        done = (tc <= nxt) | (t >= 1)
        if bool(done.all()):
            break
    return _finish(t.clamp(0, 1), done, _l2_multiplier_sorted, v, eps, lo, hi)


def l2_ball_box(v: Tensor, eps: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    """[B, D] -> [B, D]: exact projection onto {||d||_2 <= eps} ∩ [lo, hi], lo <= 0 <= hi.

    Rows whose box clip is already inside the ball come back as the clip (t = 1).
    """
    if lo is None:
        norms = v.norm(dim=1)
        return _rescale(v, norms, eps)
    d = torch.clamp(_l2_multiplier(v, eps, lo, hi) * v, lo, hi)
    return _rescale(d, d.norm(dim=1), eps)


def _l1_multiplier_sorted(a: Tensor, u: Tensor, eps: Tensor) -> Tensor:
    """[R, 1] multiplier lam of the l_1 problem by sorting all 2D breakpoints (the reference path)."""
    f0 = torch.minimum(a, u).sum(1, keepdim=True)
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
    return lam.clamp_min(0)


def _l1_value(a: Tensor, u: Tensor, lam: Tensor) -> Tensor:
    return torch.minimum((a - lam).clamp_min(0), u).sum(1, keepdim=True)


def _l1_multiplier(a: Tensor, u: Tensor, eps: Tensor) -> Tensor:
    """[R, 1] multiplier lam for rows with f(0) = sum min(a, u) > eps.

    f(lam) = sum clip(a - lam, 0, u) is piecewise linear and non-increasing. A bracket
    lo < lam* <= hi is kept (f(lo) > eps >= f(hi)); each pass (1) tries the exact root of the
    linear piece starting at lo (slope: the coordinates shrinking just right of lo): it is the
    answer when it lies before the next breakpoint; (2) else moves lo to that breakpoint (f is
    known there: the same line) and (3) evaluates f at a Newton or secant point to shrink the
    bracket (at most 8 passes on every row of the bench's SLIDE run). Coordinates with a = 0 or
    u = 0 are 0 for every lam and are left out of the breakpoints. Rows not finished after
    MAX_PASSES go to the sort-based solve.
    """
    a = a * _mask(a, torch.gt, u, 0.0)  # u = 0: dead, like a = 0 (both breakpoints at 0)
    start = (a - u).clamp_min(0)
    big = _big(a)
    lo = torch.zeros_like(eps)
    f_lo = torch.minimum(a, u).sum(1, keepdim=True)
    hi = a.amax(1, keepdim=True)
    f_hi = torch.zeros_like(eps)
    sol = torch.zeros_like(eps)
    done = torch.zeros(eps.shape, dtype=torch.bool, device=eps.device)
    for _ in range(MAX_PASSES):
        above_start = _mask(a, torch.gt, start, lo)
        above_end = _mask(a, torch.gt, a, lo)
        s = (above_end - above_start).sum(1, keepdim=True)  # shrinking just right of lo
        nxt = torch.minimum(torch.add(start, 1 - above_start, alpha=big).amin(1, keepdim=True),
                            torch.add(a, 1 - above_end, alpha=big).amin(1, keepdim=True))
        c = lo + (f_lo - eps) / s.clamp_min(1)
        new = (s > 0) & (c <= nxt) & ~done
        sol = torch.where(new, c, sol)
        done = done | new
        if bool(done.all()):
            break
        # Not on the last piece: f is linear with slope -s up to nxt, and f(nxt) > eps there.
        step = ~done & (nxt < hi)
        f_lo = torch.where(step, f_lo - s * (nxt - lo), f_lo)
        lo = torch.where(step, nxt, lo)
        # Trial point: a Newton step from the new lo with the slope of the piece just passed
        # when it stays inside the bracket (where no cap is reached f is convex and this step
        # does not pass lam*), else the secant of the bracket. f(p) decides which end moves.
        c = lo + (f_lo - eps) / s.clamp_min(1)
        sec = lo + (f_lo - eps) * (hi - lo) / (f_lo - f_hi).clamp_min(1e-30)
        p = torch.where((s > 0) & (c < hi), c, sec)
        p = torch.minimum(torch.maximum(p, lo), hi)
        f_p = _l1_value(a, u, p)
        up = ~done & (f_p > eps) & (p > lo)
        down = ~done & (f_p <= eps) & (p < hi)
        lo, f_lo = torch.where(up, p, lo), torch.where(up, f_p, f_lo)
        hi, f_hi = torch.where(down, p, hi), torch.where(down, f_p, f_hi)
    return _finish(sol.clamp_min(0), done, _l1_multiplier_sorted, a, u, eps)


def l1_ball_box(v: Tensor, eps: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    """[B, D] -> [B, D]: exact projection onto {||d||_1 <= eps} ∩ [lo, hi], lo <= 0 <= hi.

    Rows whose box clip is already inside the ball are the clip; only the others are solved.
    """
    a = v.abs()
    if lo is None:
        u = torch.full_like(v, _INF)
    else:
        pos = _mask(v, torch.ge, v, 0.0)
        u = hi * pos - lo * (1 - pos)  # the box bound in the direction of v (one term is 0)
    m = torch.minimum(a, u)  # the solution at lam = 0 (plain box clip)
    need = m.sum(1) > eps[:, 0]

    def solve(a: Tensor, u: Tensor, eps: Tensor) -> Tensor:
        lam = _l1_multiplier(a, u, eps)
        return torch.minimum((a - lam).clamp_min(0), u)

    d_abs = _solve_rows(solve, need, m, a, u, eps)
    return _rescale(d_abs.copysign(v), d_abs.sum(1), eps)


_BALL_BOX = {"linf": l_inf_ball_box, "l2": l2_ball_box, "l1": l1_ball_box}


def project(
    delta: Tensor,
    family: str,
    eps: float | Tensor,
    *,
    x0: Tensor | None = None,
    bounds: Bounds = None,
    box: DeltaBox = None,
) -> Tensor:
    """Project perturbations onto the ``family`` ball of radius eps (float or [B]) ∩ the box.

    delta: [B, ...]; x0: [B, ...] clean inputs (needed when bounds is given);
    bounds: (lo, hi) for x0 + delta, or None (unbounded); box: ``delta_box(x0, bounds)`` when
    the caller has it already (then x0 and bounds are not read). Returns [B, ...].
    """
    try:
        fn = _BALL_BOX[family]
    except KeyError:
        raise ValueError(f"family {family!r} has no ball projection; allowed: {sorted(_BALL_BOX)}") from None
    flat = delta.reshape(delta.shape[0], -1)
    if box is None:
        box = delta_box(x0, bounds)
    lo, hi = (None, None) if box is None else (box[0].to(flat.dtype), box[1].to(flat.dtype))
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
