"""MSD, multi steepest descent (Maini, Wong & Kolter, ICML 2020; locuslab/robust_union, ``msd_v0``):
one PGD loop over a union of l_p balls (l_inf, l_2, l_1).

At every step it computes ONE input gradient at the current iterate and takes from there the
steepest-ascent step of every ball, each with its own step size ``a`` (l_1: the SLIDE step with its
``perc``, where robust_union draws a top-k count per step). Each candidate is projected exactly onto
its own ball ∩ box, all are scored in one forward pass, and each input moves to the candidate with
the highest cross-entropy (robust_union's rule; ties go to the earlier ball). So every iterate lies
in one of the balls. The gradient is that of the CW margin loss, as in every PGD attack here
(robust_union differentiates the cross-entropy). Every candidate is offered to the per-input best
(a misclassified one wins, else the higher cross-entropy), kept across steps and restarts as in
the PGD loop; restarts after the first run only on the inputs not yet fooled.

Random start (``random_start``): the first ball's own random start, shrunk into each other ball
(robust_union: uniform in the l_inf cube, shrunk into the l_2 and then the l_1 ball). Shrinking
towards 0 keeps a point in every ball and box it was in, so the start lies in all of them.

Cost per restart and input: k forward+backward passes (the gradients) and k·N forward passes (the
N candidates of each step). There is no final forward: the last step's scores are the last
iterate's.

Spec: ``{type: msd, attacks: [l_p spec, l_p spec, ...], k: 100, reps: 1, random_start: true}``.
Each ball takes ``type`` (linf, l2 or l1, each at most once), ``epsilon`` (> 0), ``a`` (default
``2.5 * epsilon / k``) and, for l1, ``perc``; k, reps and random_start are the MSD spec's own.
Rotation-translation, affine and library attacks have no steepest-ascent step in a ball and are
refused. Size (family ``msd``): ``min_i ||delta||_{p_i} / epsilon_i``, at most 1 exactly when delta
lies in one of the balls (the union); ``jobs.attacks.balls.UnionBall`` is the evaluation's
in-ball rule for it. The spec is ``jobs.attacks.msd.spec.MsdSpec``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.attacks.base import Attack, Best, Bounds, RunOutput, input_grad
from jobs.attacks.norms import union_size
from jobs.attacks.pgd.attack import PGDAttack, apply_delta
from jobs.attacks.threats import L1Threat, Threat, per_input

if TYPE_CHECKING:
    from jobs.attacks.msd.spec import MsdSpec


# ----------------------------------------------------------------------------------------------
# The loop


def _start(threats: Sequence[Threat], x0: Tensor, generator: torch.Generator | None) -> Tensor:
    """A random start inside every ball and the box (see the module docstring)."""
    delta = threats[0].random_init(x0, generator)
    for t in threats[1:]:
        shrink = (t.eps / t.norm(delta).clamp_min(1e-30)).clamp(max=1.0)
        delta = delta * per_input(shrink, delta)
    return delta


def msd_run(
    model: nn.Module,
    x0: Tensor,
    y: Tensor,
    threats: Sequence[Threat],
    *,
    steps: int,
    random_start: bool,
    generator: torch.Generator | None,
    stop_when_fooled: bool = False,
) -> Best:
    """One MSD run from one start: x0 [B, ...], y [B] -> the per-input best of every candidate.

    ``stop_when_fooled``: an input leaves the batch once a candidate fooled it (as in
    ``jobs.attacks.pgd.attack.pgd_run``: the same inputs end up fooled)."""
    threats = [t.for_run(generator, x0.device) if isinstance(t, L1Threat) else t for t in threats]
    bounds = threats[0].bounds
    n = len(threats)
    delta = _start(threats, x0, generator) if random_start else torch.zeros_like(x0)
    x = apply_delta(x0, delta, bounds)
    best = Best(x0)
    live: Tensor | None = None  # the inputs still attacked (None: all of them)
    for step in range(steps):
        grad, logits = input_grad(model, x, y)
        if step == 0:
            best.update(x, logits, y)  # the start; every later iterate was scored as a candidate
        cands = torch.stack([t.project(t.step(delta, grad, x0), x0) for t in threats])  # [N, B, ...]
        xs = apply_delta(x0, cands, bounds)
        with torch.no_grad():
            scores = model(xs.flatten(0, 1))
        loss = F.cross_entropy(scores, y.repeat(n), reduction="none").view(n, -1)
        pred = scores.argmax(1).view(n, -1)
        for i in range(n):
            if live is None:
                best.offer(xs[i], loss[i], pred[i], pred[i] != y)
            else:
                best.offer_rows(live, xs[i], loss[i], pred[i], pred[i] != y)
        pick = loss.argmax(0)  # [B] the ball whose step raised the cross-entropy most
        cols = torch.arange(x0.shape[0], device=x0.device)
        delta, x = cands[pick, cols], xs[pick, cols]
        narrowed = best.still_robust(live) if stop_when_fooled else None
        if narrowed is not None:
            keep, live = narrowed
            if keep.numel() == 0:
                break
            x0, y, delta, x = x0[keep], y[keep], delta[keep], x[keep]
            threats = [t.subset(keep) for t in threats]
    return best


def msd(
    model: nn.Module,
    x0: Tensor,
    y: Tensor,
    threats: Sequence[Threat],
    *,
    steps: int,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    stop_when_fooled: bool = False,
) -> Best:
    """MSD with restarts: x0 [B, ...], y [B] -> per-input best over all restarts and candidates."""
    best = msd_run(model, x0, y, threats, steps=steps, random_start=random_start,
                   generator=generator, stop_when_fooled=stop_when_fooled)
    for _ in range(restarts - 1):
        idx = (~best.success).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        best.merge(idx, msd_run(model, x0[idx], y[idx], threats, steps=steps,
                                random_start=random_start, generator=generator,
                                stop_when_fooled=stop_when_fooled))  # fmt: skip
    return best


class MsdAttack(Attack):
    """MSD over a union of l_p balls ∩ box; ``norm`` is ``union_size`` (at most 1)."""

    epsilon = 1.0
    can_stop = True

    def __init__(self, spec: MsdSpec, *, bounds: Bounds = (0.0, 1.0)):
        self._spec = spec
        self.family = spec.family
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.spec = spec.to_dict()
        self.total_steps = spec.k * spec.reps
        # each ball's threat model, as its own PGD attack uses it
        self.threats = tuple(PGDAttack(b, bounds=self.bounds).threat for b in spec.attacks)
        self.radii = spec.ball().radii

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None) -> RunOutput:
        s = self._spec
        best = msd(model, x, y, self.threats, steps=s.k, restarts=s.reps,
                   random_start=s.random_start, generator=generator,
                   stop_when_fooled=self.stop_when_fooled)  # fmt: skip
        return RunOutput(x_adv=best.x, loss=best.loss, pred=best.pred)

    def _measure(self, x: Tensor, x_adv: Tensor, transform: Tensor | None) -> Tensor:
        return union_size(x_adv - x, self.radii)
