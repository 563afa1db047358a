"""Affine adversaries (Section 4 of the paper): a beta-share of one budget plus a (1 - beta)-share
of another, beta fixed (``weight``) or drawn per input (Dirichlet(1, 1), i.e. uniform in [0, 1]).
``weight`` is the share of ``attacks[0]``.

- linf+rt: random (or grid) transforms with limits scaled by the RT share, then l_inf PGD with
  the l_inf share of epsilon around each transformed input; the worst pair per input is kept.
  Size: rt_fraction(transform) + ||x_adv - T(x)||_inf / eps_inf  (<= 1).
- linf+l1: two perturbations updated in alternation, each inside its scaled ball (and each
  keeping x0 + d in the box), the sum clipped to the box. Clipping only shrinks coordinates
  towards 0, which stays inside the (solid) Minkowski sum. Size: the exact gauge of
  eps_inf * B_inf + eps_1 * B_1 at x_adv - x (<= 1).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from jobs.attacks.base import Attack, AttackConstraintError, Best, Bounds, RunOutput, input_grad
from jobs.attacks.norms import linf_l1_gauge, perturbation_norm
from jobs.attacks.pgd import _apply, pgd_run
from jobs.attacks.spatial import (
    DEFAULT_EVAL_BATCH,
    random_transforms,
    rt_fraction,
    rt_grid,
    rt_transform,
)
from jobs.attacks.threats import L1Threat, LinfThreat

if TYPE_CHECKING:
    from jobs.attacks.spec import AffineSpec, LpSpec, RTSpec


def _shares(spec: AffineSpec, n: int, generator: torch.Generator | None, device: torch.device,
            dtype: torch.dtype) -> Tensor:
    """[n] share of attacks[0]: the fixed weight, or one uniform draw per input."""
    if spec.weight is not None:
        return torch.full((n,), spec.weight, device=device, dtype=dtype)
    return torch.rand(n, generator=generator, device=device, dtype=dtype)


class _AffineBase(Attack):
    epsilon = 1.0

    def __init__(self, spec: AffineSpec, *, bounds: Bounds = (0.0, 1.0), eval_batch: int = DEFAULT_EVAL_BATCH):
        self._spec = spec
        self.family = spec.family
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.spec = spec.to_dict()
        self.eval_batch = eval_batch
        self.first = spec.attacks[0].type

    def _linf_share(self, beta0: Tensor) -> Tensor:
        return beta0 if self.first == "linf" else 1 - beta0

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> RunOutput:
        best = Best(x)
        chosen = torch.zeros(x.shape[0], 3, device=x.device, dtype=x.dtype)
        idx = torch.arange(x.shape[0], device=x.device)
        for _ in range(self._spec.reps):
            run, t = self._one_run(model, x[idx], y[idx], generator)
            take = best.merge(idx, run)
            if t is not None:
                chosen[idx[take]] = t[take]
            idx = (~best.success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
        return RunOutput(x_adv=best.x, loss=best.loss, pred=best.pred,
                         transform=chosen if self.family == "linf+rt" else None)

    @abstractmethod
    def _one_run(self, model: nn.Module, x: Tensor, y: Tensor,
                 generator: torch.Generator | None) -> tuple[Best, Tensor | None]:
        """One run from one random draw: the per-input best, and the transforms (or None)."""


class AffineLinfRT(_AffineBase):
    """l_inf + rotation-translation affine adversary."""

    def __init__(self, spec: AffineSpec, *, bounds: Bounds = (0.0, 1.0), eval_batch: int = DEFAULT_EVAL_BATCH):
        super().__init__(spec, bounds=bounds, eval_batch=eval_batch)
        self.lin: LpSpec = spec.part("linf")  # type: ignore[assignment]
        self.rt: RTSpec = spec.part("rt")  # type: ignore[assignment]
        g = self.rt.grid_granularity
        tries = g[0] * g[1] * g[2] if self.rt.grid_mode else self.rt.random_tries
        self.total_steps = tries * self.lin.k * spec.reps

    def _one_run(self, model: nn.Module, x: Tensor, y: Tensor,
                 generator: torch.Generator | None) -> tuple[Best, Tensor]:
        b = x.shape[0]
        lin_share = self._linf_share(_shares(self._spec, b, generator, x.device, x.dtype))
        rt_share = 1 - lin_share
        if self.rt.grid_mode:
            base = rt_grid(self.rt.spatial_limits, self.rt.grid_granularity, device=x.device, dtype=x.dtype)
            ts = base[None] * rt_share[:, None, None]
        else:
            ts = random_transforms(b, self.rt.random_tries, self.rt.spatial_limits,
                                   generator=generator, device=x.device, dtype=x.dtype)
            ts = ts * rt_share[:, None, None]
        t_count = ts.shape[1]
        best = Best(x)
        chosen = torch.zeros(b, 3, device=x.device, dtype=x.dtype)
        chunk = max(1, min(self.eval_batch, b))  # <= b pairs: distinct inputs per chunk
        total = b * t_count
        for start in range(0, total, chunk):
            p = torch.arange(start, min(start + chunk, total), device=x.device)
            bi, ti = p % b, p // b
            t = ts[bi, ti]
            xt = rt_transform(x[bi], t)
            if self.bounds is not None:
                xt = xt.clamp(*self.bounds)
            threat = LinfThreat(eps=self.lin.epsilon * lin_share[bi], step_size=self.lin.a * lin_share[bi],
                                bounds=self.bounds)
            run = pgd_run(model, xt, y[bi], threat, steps=self.lin.k,
                          random_start=self.lin.random_start, generator=generator)
            take = best.merge(bi, run)
            chosen[bi[take]] = t[take]
        return best, chosen

    def _measure(self, x: Tensor, x_adv: Tensor, transform: Tensor | None) -> Tensor:
        assert transform is not None
        base = rt_transform(x, transform)
        if self.bounds is not None:
            base = base.clamp(*self.bounds)
        frac = rt_fraction(transform, self.rt.spatial_limits)
        if self.lin.epsilon > 0:
            return frac + perturbation_norm(x_adv - base, "linf") / self.lin.epsilon
        if not torch.equal(x_adv, base):
            raise AttackConstraintError(f"{self!r}: l_inf part must be 0 with epsilon 0")
        return frac


class AffineLinfL1(_AffineBase):
    """l_inf + l_1 affine adversary: alternating PGD and SLIDE steps."""

    def __init__(self, spec: AffineSpec, *, bounds: Bounds = (0.0, 1.0), eval_batch: int = DEFAULT_EVAL_BATCH):
        super().__init__(spec, bounds=bounds, eval_batch=eval_batch)
        self.lin: LpSpec = spec.part("linf")  # type: ignore[assignment]
        self.l1: LpSpec = spec.part("l1")  # type: ignore[assignment]
        self.total_steps = (self.lin.k + self.l1.k) * spec.reps
        # Alternate, starting with attacks[0]; the longer one finishes alone.
        order = ["linf", "l1"] if self.first == "linf" else ["l1", "linf"]
        left = {"linf": self.lin.k, "l1": self.l1.k}
        self.schedule: list[str] = []
        while left["linf"] + left["l1"]:
            for name in order:
                if left[name]:
                    self.schedule.append(name)
                    left[name] -= 1

    def _one_run(self, model: nn.Module, x: Tensor, y: Tensor,
                 generator: torch.Generator | None) -> tuple[Best, None]:
        b = x.shape[0]
        lin_share = self._linf_share(_shares(self._spec, b, generator, x.device, x.dtype))
        l1_share = 1 - lin_share
        t_inf = LinfThreat(eps=self.lin.epsilon * lin_share, step_size=self.lin.a * lin_share,
                           bounds=self.bounds)
        t_1 = L1Threat(eps=self.l1.epsilon * l1_share, step_size=self.l1.a * l1_share,
                       bounds=self.bounds, perc=self.l1.perc).for_run(generator, x.device)
        d_inf = t_inf.random_init(x, generator) if self.lin.random_start else torch.zeros_like(x)
        d_1 = t_1.random_init(x, generator) if self.l1.random_start else torch.zeros_like(x)
        best = Best(x)
        for name in self.schedule:
            xa = _apply(x, d_inf + d_1, self.bounds)
            grad, logits = input_grad(model, xa, y)
            best.update(xa, logits, y)
            if name == "linf":
                d_inf = t_inf.project(t_inf.step(d_inf, grad, x), x)
            else:
                d_1 = t_1.project(t_1.step(d_1, grad, x + d_inf), x)
        xa = _apply(x, d_inf + d_1, self.bounds)
        with torch.no_grad():
            best.update(xa, model(xa), y)
        return best, None

    def _measure(self, x: Tensor, x_adv: Tensor, transform: Tensor | None) -> Tensor:
        return linf_l1_gauge(x_adv - x, self.lin.epsilon, self.l1.epsilon)
