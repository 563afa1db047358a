"""The generic batched PGD loop and the l_p attacks built on it (PGD l_inf / l_2, SLIDE l_1).

Cost per restart: k forward+backward passes plus one forward pass of the inputs that none of
x_0 .. x_{k-1} fooled (to score the last iterate). Every iterate x_0 .. x_k is a candidate; the
candidates x_0 .. x_{k-1} are scored with the logits of the forward pass that computed their
gradient, so the bookkeeping needs no extra forward; x_k is offered only to the inputs not yet
fooled (``Best.score_unfooled``): a fooled input stays fooled, and keeps the highest-loss fooled
iterate among x_0 .. x_{k-1}. Restarts after the first run only on the inputs not yet
misclassified (a cascade).

``PGDAttack(..., stop_when_fooled=True)`` (evaluation only) takes an input out of the batch at
its first misclassified iterate: the same inputs end up fooled, for far fewer passes when many
are fooled early, but a fooled input's example is its first fooled iterate rather than the one
with the highest loss (training wants the latter, so it is off by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from jobs.attacks.base import Attack, Best, Bounds, RunOutput, input_grad
from jobs.attacks.norms import perturbation_norm
from jobs.attacks.threats import THREATS, L1Threat, Threat

if TYPE_CHECKING:
    from jobs.attacks.pgd.spec import LpSpec


def apply_delta(x0: Tensor, delta: Tensor, bounds: Bounds) -> Tensor:
    x = x0 + delta
    return x.clamp(*bounds) if bounds is not None else x


def pgd_run(
    model: nn.Module,
    x0: Tensor,
    y: Tensor,
    threat: Threat,
    *,
    steps: int,
    random_start: bool,
    generator: torch.Generator | None,
    stop_when_fooled: bool = False,
) -> Best:
    """One PGD run from one start: returns the per-input best of x_0 .. x_k (Best tracker).

    ``stop_when_fooled``: an input leaves the batch at its first misclassified iterate (it
    stays fooled; its result is that iterate, not the highest-loss fooled one), so the later
    passes run on the inputs still robust only. Which inputs end up fooled is the same as
    without (inputs are attacked independently), up to float rounding."""
    if isinstance(threat, L1Threat):
        threat = threat.for_run(generator, x0.device)
    if random_start:
        delta = threat.random_init(x0, generator)
    else:
        delta = torch.zeros_like(x0)
    box = threat.box(x0)
    best = Best(x0)
    rows: Tensor | None = None  # the inputs still attacked (None: all of them)
    for _ in range(steps):
        x = apply_delta(x0, delta, threat.bounds)
        grad, logits = input_grad(model, x, y)
        best.update(x, logits, y, rows)
        narrowed = best.still_robust(rows) if stop_when_fooled else None
        if narrowed is not None:
            keep, rows = narrowed
            if keep.numel() == 0:
                return best
            x0, y, delta, grad, threat = x0[keep], y[keep], delta[keep], grad[keep], threat.subset(keep)
            box = None if box is None else (box[0][keep], box[1][keep])
        delta = threat.project(threat.step(delta, grad, x0, box), x0, box)
    best.score_unfooled(model, apply_delta(x0, delta, threat.bounds), y, rows)
    return best


def pgd(
    model: nn.Module,
    x0: Tensor,
    y: Tensor,
    threat: Threat,
    *,
    steps: int,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    stop_when_fooled: bool = False,
) -> Best:
    """PGD with restarts: x0 [B, ...], y [B] -> per-input best over all restarts and iterates."""
    best = pgd_run(model, x0, y, threat, steps=steps, random_start=random_start,
                   generator=generator, stop_when_fooled=stop_when_fooled)
    for _ in range(restarts - 1):
        idx = (~best.success).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        run = pgd_run(
            model, x0[idx], y[idx], threat.subset(idx),
            steps=steps, random_start=random_start, generator=generator,
            stop_when_fooled=stop_when_fooled,
        )
        best.merge(idx, run)
    return best


class PGDAttack(Attack):
    """PGD on an l_p ball ∩ box: l_inf and l_2 (steepest ascent) and l_1 (SLIDE)."""

    can_stop = True

    def __init__(self, spec: LpSpec, *, bounds: Bounds = (0.0, 1.0), stop_when_fooled: bool = False):
        self._spec = spec
        #: evaluation only: an input stops at its first fooled iterate (``pgd_run``)
        self.stop_when_fooled = stop_when_fooled
        self.family = spec.type
        self.epsilon = spec.epsilon
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.spec = spec.to_dict()
        self.total_steps = spec.k * spec.reps
        kwargs = {"perc": spec.perc} if spec.type == "l1" else {}
        self.threat: Threat = THREATS[spec.type](
            eps=spec.epsilon, step_size=spec.a, bounds=self.bounds, **kwargs
        )

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> RunOutput:
        s = self._spec
        best = pgd(
            model, x, y, self.threat,
            steps=s.k, restarts=s.reps, random_start=s.random_start, generator=generator,
            stop_when_fooled=self.stop_when_fooled,
        )
        return RunOutput(x_adv=best.x, loss=best.loss, pred=best.pred)

    def _measure(self, x: Tensor, x_adv: Tensor, transform: Tensor | None) -> Tensor:
        return perturbation_norm(x_adv - x, self.family)
