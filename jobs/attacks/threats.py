"""Threat models: one small immutable class per norm, the hooks of the generic PGD loop.

A threat model holds its radius ``eps`` and step size ``step`` (floats, or [B] tensors when each
input has its own budget, as in the affine attacks) and the input ``bounds`` (None: unbounded).
It works on the perturbation ``delta`` of a clean batch ``x0`` ([B, ...]):

- ``random_init(x0, generator)``: a random start inside ball ∩ box
- ``step(delta, grad, x0)``: one steepest-ascent step (not yet projected)
- ``project(delta, x0)``: exact projection onto ball ∩ box
- ``norm(delta)``: [B] sizes in this norm

``step`` and ``project`` take an optional ``box``, the box of delta around x0
(``projections.delta_box(x0, bounds)``), which a loop computes once per run instead of once per
call.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from jobs.attacks.norms import perturbation_norm
from jobs.attacks.projections import DeltaBox, delta_box, project
from jobs.attacks.specbase import Bounds


def per_input(v: float | Tensor, like: Tensor) -> float | Tensor:
    """A float stays a float; a [B] tensor becomes [B, 1, ..., 1] to broadcast against like."""
    if isinstance(v, Tensor):
        return v.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.dim() - 1)))
    return v


def _add_scaled(base: Tensor, t: Tensor, scale: float | Tensor) -> Tensor:
    """base + scale * t in one pass; scale a float or a tensor that broadcasts against t."""
    if isinstance(scale, Tensor):
        return torch.addcmul(base, t, scale.reshape(-1, *([1] * (t.dim() - 1))))
    return base.add(t, alpha=scale)


def _row_norm_safe(t: Tensor, p: float) -> Tensor:
    flat = t.reshape(t.shape[0], -1)
    n = flat.abs().sum(1) if p == 1 else flat.norm(dim=1)
    return n.clamp_min(1e-12).reshape(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class Threat(ABC):
    eps: float | Tensor
    step_size: float | Tensor
    bounds: Bounds = (0.0, 1.0)

    family = "none"

    def subset(self, idx: Tensor) -> Threat:
        """The same threat restricted to the inputs idx (per-input tensors are indexed)."""
        changes = {
            f.name: getattr(self, f.name)[idx]
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **changes) if changes else self

    def box(self, x0: Tensor) -> DeltaBox:
        """The box of delta around x0 [B, ...] (None when unbounded), for ``step`` and ``project``."""
        return delta_box(x0, self.bounds)

    def project(self, delta: Tensor, x0: Tensor, box: DeltaBox = None) -> Tensor:
        return project(delta, self.family, self.eps, x0=x0, bounds=self.bounds, box=box)

    def norm(self, delta: Tensor) -> Tensor:
        return perturbation_norm(delta, self.family)

    @abstractmethod
    def random_init(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        """A random starting perturbation inside the ball (and the box)."""

    @abstractmethod
    def step(self, delta: Tensor, grad: Tensor, x0: Tensor, box: DeltaBox = None) -> Tensor:
        """One steepest-ascent step of ``delta`` along ``grad`` (before projection)."""


@dataclass(frozen=True)
class LinfThreat(Threat):
    family = "linf"

    def random_init(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.project((2 * u - 1) * per_input(self.eps, x0), x0)

    def step(self, delta: Tensor, grad: Tensor, x0: Tensor, box: DeltaBox = None) -> Tensor:
        return _add_scaled(delta, grad.sign(), per_input(self.step_size, x0))


@dataclass(frozen=True)
class L2Threat(Threat):
    family = "l2"

    def random_init(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        g = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.project(g / _row_norm_safe(g, 2) * per_input(self.eps, x0), x0)

    def step(self, delta: Tensor, grad: Tensor, x0: Tensor, box: DeltaBox = None) -> Tensor:
        return _add_scaled(delta, grad, per_input(self.step_size, x0) / _row_norm_safe(grad, 2))


@dataclass(frozen=True)
class L1Threat(Threat):
    """SLIDE (Algorithm 1 of the paper) with the paper code's refinements.

    ``perc`` is the percentile of |grad| above which coordinates move; a [lo, hi] range is
    drawn once per run by ``for_run`` (as the paper's code does), not per step.
    """

    perc: float | tuple[float, float] = 99.0

    family = "l1"

    def for_run(self, generator: torch.Generator | None, device: torch.device) -> L1Threat:
        if not isinstance(self.perc, tuple):
            return self
        lo, hi = self.perc
        u = torch.rand((), generator=generator, device=device).item()  # one draw per run
        return dataclasses.replace(self, perc=lo + (hi - lo) * u)

    def random_init(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        mag = torch.empty(x0.shape, device=x0.device, dtype=x0.dtype).exponential_(generator=generator)
        sign = torch.randint(0, 2, x0.shape, generator=generator, device=x0.device).to(x0.dtype) * 2 - 1
        lap = mag * sign
        return self.project(lap / _row_norm_safe(lap, 1) * per_input(self.eps, x0), x0)

    def step(self, delta: Tensor, grad: Tensor, x0: Tensor, box: DeltaBox = None) -> Tensor:
        if isinstance(self.perc, tuple):
            raise RuntimeError("L1Threat with a perc range: call for_run() first to draw the percentile")
        g = grad.reshape(grad.shape[0], -1)
        s = g.sign()
        if self.bounds is not None:
            # A coordinate at the box edge whose gradient points outward cannot move: drop it
            # before the percentile so the step's l_1 mass goes to coordinates that can. Its
            # room along sign(g) is hi - x (g > 0) or x - lo (g < 0), i.e. r + sign(g) (c - x)
            # with c, r the box's centre and half width. (Float 0/1 masks: on CPU, bool masks
            # and masked_fill cost ~30x more.)
            lo, hi = self.box(x0) if box is None else box
            half = (self.bounds[1] - self.bounds[0]) / 2
            centre = (lo + hi) / 2  # c - x0
            room = (centre - delta.reshape(g.shape)).mul_(s)  # sign(g) (c - x), minus r
            s = s * torch.gt(room, 1e-6 * 2 * half - half, out=torch.empty_like(g))
        a = g * s  # |g| where the coordinate can move, else 0
        n = a.shape[1]
        # numpy's linear-interpolation percentile p lies in [a_(j), a_(j+1)] (sorted ascending);
        # {|g| >= p} equals {|g| >= a_(j+1)} when p > a_(j) and {|g| >= a_(j)} when p == a_(j),
        # so one order statistic (on the device) gives exactly the same mask: the (kth + 1)-th
        # smallest, i.e. the (n - kth)-th largest, taken with topk when that is the shorter side
        # (perc 99 of 784: the 8th largest; a partial selection, ~3x cheaper than kthvalue).
        pos = self.perc / 100.0 * (n - 1)
        j = int(pos)
        kth = min(j + 1, n - 1) if pos > j else j
        if n - kth <= kth:
            thresh = a.topk(n - kth, dim=1, sorted=True).values[:, -1:]
        else:
            thresh = a.kthvalue(kth + 1, dim=1, keepdim=True).values
        e = torch.ge(a, thresh, out=torch.empty_like(a)).mul_(s)  # s = 0 where blocked or g = 0
        mass = torch.linalg.vecdot(e, e)[:, None].clamp_min(1.0)  # e is -1, 0 or 1
        return _add_scaled(delta, e.reshape(delta.shape), per_input(self.step_size, g) / mass)


THREATS: dict[str, type[Threat]] = {"linf": LinfThreat, "l2": L2Threat, "l1": L1Threat}
