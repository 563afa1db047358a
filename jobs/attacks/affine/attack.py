"""Affine adversaries (Section 4 of the paper): a beta-share of one budget plus a (1 - beta)-share
of another, beta fixed (``weight``) or drawn per input (Dirichlet(1, 1), i.e. uniform in [0, 1]).
``weight`` is the share of ``attacks[0]``.

``draws`` betas are drawn, one after the other; each draw attacks only the inputs still robust
(a cascade) and the worst result per input is kept. Within a draw, ``reps`` random restarts at
the same beta (again only on the inputs not yet fooled).

- linf+rt (the paper's code, ``grid_perturb``): the RT transforms with their limits scaled by the
  RT share (the full grid, or ``random_tries`` random transforms per input), then l_inf PGD with
  the l_inf share of epsilon from each transformed input; the worst (input, transform) pair per
  input is kept. The pairs are batched (many transforms of many inputs per PGD batch), the
  transforms of each input run most promising first (ranked by the loss of the transformed clean
  input, a forward pass each), and an input stops once one of its transforms fooled the model:
  the search for an input that stays robust is the full search, and every other input is fooled.
  Size: rt_fraction(transform) + ||x_adv - T(x)||_inf / eps_inf (<= 1). (The paper's code adds
  the l_inf perturbation before the transform, T(x + d); after it, T(x) + d, is a superset: T
  with bilinear sampling and zero fill maps the l_inf ball into itself.)
- linf+l1 (the paper's ``norm_perturb``): two perturbations updated in alternation, starting
  with ``attacks[0]`` (strictly alternating for equal k; the longer one finishes alone),
  the gradient taken at the combined input; the l_inf step is ``a`` scaled by the l_inf share
  (the paper's default step 2.5 * eps_w / k), SLIDE's step is its ``a`` unscaled (the paper's l_1
  step is never scaled) with the edge mask at the combined input and its percentile drawn once
  per run. Each part is projected onto its scaled ball and the box around x, and the sum is
  clipped to the box: clipping only shrinks coordinates towards 0, which stays inside the
  affine set (the convex hull of the union of the two scaled balls, whose gauge grows with
  every |coordinate|). (The paper's code clips each part against the other's position, which
  can leave a part's ball.) Size: the exact gauge of the convex hull of eps_inf * B_inf ∪
  eps_1 * B_1 at x_adv - x (<= 1). Unlike the paper's code, which returns the last iterate, the
  best iterate is kept.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from jobs.attacks.base import Attack, AttackConstraintError, Best, Bounds, RunOutput, input_grad
from jobs.attacks.norms import linf_l1_gauge, perturbation_norm
from jobs.attacks.pgd.attack import apply_delta, pgd
from jobs.attacks.spatial.attack import (
    DEFAULT_EVAL_BATCH,
    random_transforms,
    resolve_eval_batch,
    rt_fraction,
    rt_grid,
    rt_transform,
    score_transforms,
)
from jobs.attacks.threats import L1Threat, LinfThreat

if TYPE_CHECKING:
    from jobs.attacks.affine.spec import AffineSpec
    from jobs.attacks.pgd.spec import LpSpec
    from jobs.attacks.spatial.spec import RTSpec


def _shares(spec: AffineSpec, n: int, generator: torch.Generator | None, device: torch.device,
            dtype: torch.dtype) -> Tensor:
    """[n] share of attacks[0]: the fixed weight, or one uniform draw per input."""
    if spec.weight is not None:
        return torch.full((n,), spec.weight, device=device, dtype=dtype)
    return torch.rand(n, generator=generator, device=device, dtype=dtype)


class _AffineBase(Attack):
    epsilon = 1.0
    #: an input is never attacked again once a draw fooled it; within a draw, ``stop_when_fooled``
    #: also stops it at its first fooled iterate
    can_stop = True

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
        for _ in range(self._spec.draws):
            beta0 = _shares(self._spec, idx.numel(), generator, x.device, x.dtype)
            run, t = self._draw(model, x[idx], y[idx], self._linf_share(beta0), generator)
            take = best.merge(idx, run)
            if t is not None:
                chosen[idx[take]] = t[take]
            idx = (~best.success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
        return RunOutput(x_adv=best.x, loss=best.loss, pred=best.pred,
                         transform=chosen if self.family == "linf+rt" else None)

    @abstractmethod
    def _draw(self, model: nn.Module, x: Tensor, y: Tensor, lin_share: Tensor,
              generator: torch.Generator | None) -> tuple[Best, Tensor | None]:
        """One beta draw (``lin_share`` [B]: each input's l_inf share): the per-input best over
        its restarts, and the chosen transforms [B, 3] (or None)."""


def _promising_first(loss: Tensor, success: Tensor) -> Tensor:
    """[T, B] scores -> [B, T] transform indices per input, misclassified first, then by
    descending loss (ties in transform order)."""
    order = loss.T.argsort(dim=1, descending=True, stable=True)
    hit = success.T.gather(1, order)
    return order.gather(1, hit.int().argsort(dim=1, descending=True, stable=True))


def _best_of_pairs(n: int, bi: Tensor, run: Best) -> tuple[Tensor, Tensor, Best]:
    """Several (input, transform) pairs per input -> (the inputs [m], the best pair of each [m],
    a Best over those inputs); bi [P]: each pair's input in [0, n)."""
    order = run.loss.argsort(stable=True)
    order = order[run.success[order].int().argsort(stable=True)]  # worst first, best last
    place = torch.empty_like(order)
    place[order] = torch.arange(order.numel(), device=order.device)
    top = torch.full((n,), -1, dtype=place.dtype, device=place.device)
    top = top.scatter_reduce(0, bi, place, reduce="amax")
    inputs = (top >= 0).nonzero().squeeze(1)
    pair = order[top[inputs]]
    part = Best(run.x[pair])
    part.offer(run.x[pair], run.loss[pair], run.pred[pair], run.success[pair])
    return inputs, pair, part


class AffineLinfRT(_AffineBase):
    """l_inf + rotation-translation affine adversary."""

    def __init__(self, spec: AffineSpec, *, bounds: Bounds = (0.0, 1.0), eval_batch: int = DEFAULT_EVAL_BATCH):
        super().__init__(spec, bounds=bounds, eval_batch=eval_batch)
        self.lin: LpSpec = spec.part("linf")  # type: ignore[assignment]
        self.rt: RTSpec = spec.part("rt")  # type: ignore[assignment]
        g = self.rt.grid_granularity
        tries = g[0] * g[1] * g[2] if self.rt.grid_mode else self.rt.random_tries
        self.total_steps = tries * self.lin.k * spec.reps * spec.draws

    def _transforms(self, rt_share: Tensor, generator: torch.Generator | None) -> Tensor:
        """[B, T, 3]: the grid (or random transforms) with each input's limits scaled by its share."""
        b, like = rt_share.shape[0], rt_share
        if self.rt.grid_mode:
            base = rt_grid(self.rt.spatial_limits, self.rt.grid_granularity, device=like.device,
                           dtype=like.dtype)[None].expand(b, -1, -1)
        else:
            base = random_transforms(b, self.rt.random_tries, self.rt.spatial_limits,
                                     generator=generator, device=like.device, dtype=like.dtype)
        return base * rt_share[:, None, None]

    def _draw(self, model: nn.Module, x: Tensor, y: Tensor, lin_share: Tensor,
              generator: torch.Generator | None) -> tuple[Best, Tensor]:
        b = x.shape[0]
        ts = self._transforms(1 - lin_share, generator)
        t_count = ts.shape[1]
        loss, pred = score_transforms(model, x, y, ts, bounds=self.bounds, eval_batch=self.eval_batch)
        ranked = _promising_first(loss, pred != y[None])  # [B, T]
        eps, step = self.lin.epsilon * lin_share, self.lin.a * lin_share
        chunk = resolve_eval_batch(self.eval_batch, x.device)
        best = Best(x)
        chosen = torch.zeros(b, 3, device=x.device, dtype=x.dtype)
        rank = 0
        while rank < t_count:
            alive = (~best.success).nonzero().squeeze(1)
            if alive.numel() == 0:
                break  # every input is fooled: its other transforms cannot change that
            ranks = torch.arange(rank, min(rank + max(1, chunk // alive.numel()), t_count),
                                 device=x.device)
            bi = alive.repeat(ranks.numel())  # rank-major (input, transform) pairs
            ti = ranked[bi, ranks.repeat_interleave(alive.numel())]
            for s in range(0, bi.numel(), chunk):
                pi, pt = bi[s : s + chunk], ts[bi[s : s + chunk], ti[s : s + chunk]]
                xt = rt_transform(x[pi], pt)
                if self.bounds is not None:
                    xt = xt.clamp(*self.bounds)
                threat = LinfThreat(eps=eps[pi], step_size=step[pi], bounds=self.bounds)
                run = pgd(model, xt, y[pi], threat, steps=self.lin.k, restarts=self._spec.reps,
                          random_start=self.lin.random_start, generator=generator,
                          stop_when_fooled=self.stop_when_fooled)
                inputs, pair, part = _best_of_pairs(b, pi, run)
                take = best.merge(inputs, part)
                chosen[inputs[take]] = pt[pair[take]]
            rank += ranks.numel()
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
        self.total_steps = (self.lin.k + self.l1.k) * spec.reps * spec.draws
        # Alternate, starting with attacks[0]; the longer one finishes alone.
        order = ["linf", "l1"] if self.first == "linf" else ["l1", "linf"]
        left = {"linf": self.lin.k, "l1": self.l1.k}
        self.schedule: list[str] = []
        while left["linf"] + left["l1"]:
            for name in order:
                if left[name]:
                    self.schedule.append(name)
                    left[name] -= 1

    def _draw(self, model: nn.Module, x: Tensor, y: Tensor, lin_share: Tensor,
              generator: torch.Generator | None) -> tuple[Best, None]:
        best = Best(x)
        idx = torch.arange(x.shape[0], device=x.device)
        for _ in range(self._spec.reps):
            best.merge(idx, self._alternate(model, x[idx], y[idx], lin_share[idx], generator))
            idx = (~best.success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
        return best, None

    def _alternate(self, model: nn.Module, x: Tensor, y: Tensor, lin_share: Tensor,
                   generator: torch.Generator | None) -> Best:
        """One run from one random start: the per-input best iterate (``stop_when_fooled``: an
        input leaves the run at its first fooled iterate)."""
        t_inf = LinfThreat(eps=self.lin.epsilon * lin_share, step_size=self.lin.a * lin_share,
                           bounds=self.bounds)
        t_1 = L1Threat(eps=self.l1.epsilon * (1 - lin_share), step_size=self.l1.a,
                       bounds=self.bounds, perc=self.l1.perc).for_run(generator, x.device)
        d_inf = t_inf.random_init(x, generator) if self.lin.random_start else torch.zeros_like(x)
        d_1 = t_1.random_init(x, generator) if self.l1.random_start else torch.zeros_like(x)
        best = Best(x)
        live: Tensor | None = None  # the inputs still attacked (None: all of them)
        for name in self.schedule:
            xa = apply_delta(x, d_inf + d_1, self.bounds)
            grad, logits = input_grad(model, xa, y)
            best.update(xa, logits, y, live)
            narrowed = best.still_robust(live) if self.stop_when_fooled else None
            if narrowed is not None:
                keep, live = narrowed
                if keep.numel() == 0:
                    return best
                x, y, d_inf, d_1, grad = x[keep], y[keep], d_inf[keep], d_1[keep], grad[keep]
                t_inf, t_1 = t_inf.subset(keep), t_1.subset(keep)
            if name == "linf":
                d_inf = t_inf.project(t_inf.step(d_inf, grad, x), x)
            else:
                d_1 = t_1.project(t_1.step(d_1, grad, x + d_inf), x)
        xa = apply_delta(x, d_inf + d_1, self.bounds)
        with torch.no_grad():
            best.update(xa, model(xa), y, live)
        return best

    def _measure(self, x: Tensor, x_adv: Tensor, transform: Tensor | None) -> Tensor:
        return linf_l1_gauge(x_adv - x, self.lin.epsilon, self.l1.epsilon)
