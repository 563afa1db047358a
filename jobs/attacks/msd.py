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
lies in one of the balls (the union); ``UnionBall`` is the evaluation's in-ball rule for it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jobs.attacks.base import Attack, AttackSpec, Best, Bounds, RunOutput, input_grad
from jobs.attacks.checks import AttackSpecError, check_keys, flag, integer, spec_error
from jobs.attacks.norms import LP_FAMILIES, Ball, perturbation_norm
from jobs.attacks.pgd import PGDAttack, _apply
from jobs.attacks.threats import L1Threat, Threat, per_input

if TYPE_CHECKING:
    from jobs.attacks.base import AttackResult
    from jobs.attacks.spec import LpSpec

#: An MSD ball's radius: (family, epsilon).
Radius = tuple[str, float]
#: Keys of the MSD spec that its balls take from it (one loop runs them all).
LOOP_KEYS = ("k", "reps", "random_start")


def union_size(delta: Tensor, radii: Sequence[Radius]) -> Tensor:
    """[B, ...] -> [B]: ``min_i ||delta||_{p_i} / eps_i`` (at most 1: inside one of the balls)."""
    return torch.stack([perturbation_norm(delta, fam) / eps for fam, eps in radii]).amin(0)


@dataclass(frozen=True)
class UnionBall(Ball):
    """The union of l_p balls: size is ``union_size`` at x_adv - x (a fraction of the budget)."""

    radii: tuple[Radius, ...]
    epsilon = math.nan

    @property
    def key(self) -> tuple[Radius, ...]:
        return tuple((fam, round(eps, 12)) for fam, eps in self.radii)

    def measure(self, x: Tensor, result: AttackResult) -> Tensor:
        return union_size((result.x_adv - x).detach(), self.radii)


def _not_a_ball(path: str, typ: object) -> AttackSpecError:
    return spec_error(
        path, "type",
        f"an msd attack combines l_p balls only, one of {list(LP_FAMILIES)} (rotation-translation, "
        "affine and library attacks have no steepest-ascent step in a ball)", typ,
    )  # fmt: skip


def _too_few(path: str, value: object) -> AttackSpecError:
    return spec_error(path, "attacks", "must be a list of at least two l_p attack specs (MSD over "
                      "one ball is that ball's own PGD attack)", value)  # fmt: skip


def _ball(spec: object, path: str, *, k: int, random_start: bool) -> LpSpec:
    """One ball of an msd spec dict: an l_p spec without the loop's keys."""
    from jobs.attacks.spec import LpSpec

    if not isinstance(spec, Mapping):
        raise AttackSpecError(f"attack spec {path}must be a dict, got {type(spec).__name__}")
    typ = spec.get("type")
    if typ not in LP_FAMILIES:
        raise _not_a_ball(path, typ)
    keys = ("type", "epsilon", "a") + (("perc",) if typ == "l1" else ())
    check_keys(spec, path, keys, f"type {typ!r} inside an msd spec (k, reps and random_start are "
               "set on the msd spec)")  # fmt: skip
    return LpSpec.parse({**spec, "k": k, "random_start": random_start}, path=path)


@dataclass(frozen=True)
class MsdSpec(AttackSpec):
    """MSD over two or more l_p balls (see the module docstring for the keys)."""

    attacks: tuple[LpSpec, ...]
    k: int
    reps: int
    random_start: bool

    type: str = "msd"
    family = "msd"

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> MsdSpec:
        check_keys(spec, path, ("type", "attacks", *LOOP_KEYS), "type 'msd'")
        k = integer(spec, "k", path, default=100, lo=1)
        reps = integer(spec, "reps", path, default=1, lo=1)
        random_start = flag(spec, "random_start", path, default=True)
        subs = spec.get("attacks")
        if not isinstance(subs, list | tuple):
            raise _too_few(path, subs)
        balls = [_ball(s, f"{path}attacks[{i}].", k=k, random_start=random_start) for i, s in enumerate(subs)]
        return cls._checked(balls, k=k, reps=reps, random_start=random_start, path=path)

    @classmethod
    def combine(cls, specs: Sequence[Mapping[str, Any] | AttackSpec]) -> MsdSpec:
        """The MSD attack over the balls of complete l_p specs (strategy ``msd``: a config's
        training attacks). Their k, reps and random_start must agree (one loop runs them all);
        each ball keeps its epsilon, a and perc. Errors name the key as ``attacks[i].key``."""
        from jobs.attacks.spec import LpSpec, parse_spec

        balls: list[LpSpec] = []
        for i, s in enumerate(specs):
            parsed = parse_spec(s, path=f"attacks[{i}].")
            if not isinstance(parsed, LpSpec):
                raise _not_a_ball(f"attacks[{i}].", parsed.type)
            balls.append(parsed)
        if len(balls) < 2:
            raise _too_few("", [b.type for b in balls])
        first = balls[0]
        for key in LOOP_KEYS:
            for i, ball in enumerate(balls[1:], start=1):
                if getattr(ball, key) != getattr(first, key):
                    raise spec_error(
                        f"attacks[{i}].", key,
                        f"must equal attacks[0].{key} = {getattr(first, key)!r} (one MSD loop "
                        "runs every ball)", getattr(ball, key),
                    )  # fmt: skip
        return cls._checked(balls, k=first.k, reps=first.reps, random_start=first.random_start, path="")

    @classmethod
    def _checked(cls, balls: Sequence[LpSpec], *, k: int, reps: int, random_start: bool,
                 path: str) -> MsdSpec:
        if len(balls) < 2:
            raise _too_few(path, [b.type for b in balls])
        seen: set[str] = set()
        for i, ball in enumerate(balls):
            where = f"{path}attacks[{i}]."
            if ball.type in seen:
                raise spec_error(where, "type", "must name each l_p family at most once", ball.type)
            seen.add(ball.type)
            if not ball.epsilon > 0:
                raise spec_error(where, "epsilon", "must be > 0 inside an msd attack (its size is "
                                 "||delta|| / epsilon)", ball.epsilon)  # fmt: skip
        # The loop's keys live on the MSD spec; its balls carry them only as one value.
        same = tuple(dataclasses.replace(b, k=k, reps=1, random_start=random_start) for b in balls)
        return cls(attacks=same, k=k, reps=reps, random_start=random_start)

    def to_dict(self) -> dict[str, Any]:
        balls = [{key: v for key, v in b.to_dict().items() if key not in LOOP_KEYS} for b in self.attacks]
        return {"type": "msd", "attacks": balls, "k": self.k, "reps": self.reps,
                "random_start": self.random_start}  # fmt: skip

    def _scaled(self, factor: float) -> MsdSpec:
        return dataclasses.replace(self, attacks=tuple(b.scaled(factor) for b in self.attacks))

    def with_restarts(self, reps: int) -> MsdSpec:
        return dataclasses.replace(self, reps=reps)

    def ball(self, radius: float | None = None) -> UnionBall:
        self._no_radius(radius)
        return UnionBall(tuple((b.type, b.epsilon) for b in self.attacks))

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        return MsdAttack(self, bounds=bounds)


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
) -> Best:
    """One MSD run from one start: x0 [B, ...], y [B] -> the per-input best of every candidate."""
    threats = [t.for_run(generator, x0.device) if isinstance(t, L1Threat) else t for t in threats]
    bounds = threats[0].bounds
    n, rows = len(threats), torch.arange(x0.shape[0], device=x0.device)
    delta = _start(threats, x0, generator) if random_start else torch.zeros_like(x0)
    x = _apply(x0, delta, bounds)
    best = Best(x0)
    for step in range(steps):
        grad, logits = input_grad(model, x, y)
        if step == 0:
            best.update(x, logits, y)  # the start; every later iterate was scored as a candidate
        cands = torch.stack([t.project(t.step(delta, grad, x0), x0) for t in threats])  # [N, B, ...]
        xs = _apply(x0, cands, bounds)
        with torch.no_grad():
            scores = model(xs.flatten(0, 1))
        loss = F.cross_entropy(scores, y.repeat(n), reduction="none").view(n, -1)
        pred = scores.argmax(1).view(n, -1)
        for i in range(n):
            best.offer(xs[i], loss[i], pred[i], pred[i] != y)
        pick = loss.argmax(0)  # [B] the ball whose step raised the cross-entropy most
        delta, x = cands[pick, rows], xs[pick, rows]
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
) -> Best:
    """MSD with restarts: x0 [B, ...], y [B] -> per-input best over all restarts and candidates."""
    best = msd_run(model, x0, y, threats, steps=steps, random_start=random_start, generator=generator)
    for _ in range(restarts - 1):
        idx = (~best.success).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        best.merge(idx, msd_run(model, x0[idx], y[idx], threats, steps=steps,
                                random_start=random_start, generator=generator))  # fmt: skip
    return best


class MsdAttack(Attack):
    """MSD over a union of l_p balls ∩ box; ``norm`` is ``union_size`` (at most 1)."""

    epsilon = 1.0

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
                   random_start=s.random_start, generator=generator)  # fmt: skip
        return RunOutput(x_adv=best.x, loss=best.loss, pred=best.pred)

    def _measure(self, x: Tensor, x_adv: Tensor, transform: Tensor | None) -> Tensor:
        return union_size(x_adv - x, self.radii)
