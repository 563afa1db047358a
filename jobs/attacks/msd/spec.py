"""The MSD spec (torch-free): one steepest-descent loop over a union of l_p balls.

``{type: msd, attacks: [l_p spec, l_p spec, ...], k: 100, reps: 1, random_start: true}``. Each
ball takes ``type`` (linf, l2 or l1, each at most once), ``epsilon`` (> 0), ``a`` (default
``2.5 * epsilon / k``) and, for l1, ``perc``; k, reps and random_start are the MSD spec's own.
Rotation-translation, affine and library attacks have no steepest-ascent step in a ball and are
refused. Its ball is the union of the l_p balls (``jobs.attacks.balls.UnionBall``); the attack
is ``jobs.attacks.msd.attack.MsdAttack`` (see its module for the loop).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.attacks.balls import LP_FAMILIES, UnionBall
from jobs.attacks.checks import AttackSpecError, check_keys, flag, integer, spec_error
from jobs.attacks.pgd.spec import LpSpec
from jobs.attacks.specbase import AttackSpec, Bounds, Description

if TYPE_CHECKING:
    from jobs.attacks.base import Attack

#: Keys of the MSD spec that its balls take from it (one loop runs them all).
LOOP_KEYS = ("k", "reps", "random_start")


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
        balls: list[LpSpec] = []
        for i, s in enumerate(specs):
            if isinstance(s, LpSpec):
                balls.append(s)
                continue
            if isinstance(s, AttackSpec):
                raise _not_a_ball(f"attacks[{i}].", s.type)
            if not isinstance(s, Mapping):
                raise AttackSpecError(f"attack spec attacks[{i}]. must be a dict, got {type(s).__name__}")
            if s.get("type") not in LP_FAMILIES:
                raise _not_a_ball(f"attacks[{i}].", s.get("type"))
            balls.append(LpSpec.parse(s, path=f"attacks[{i}]."))
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

    def describe(self) -> Description:
        parts = [b.describe() for b in self.attacks]
        return {**super().describe(), "label": "MSD (" + ", ".join(b.type for b in self.attacks) + ")",
                "radius": " ∪ ".join(f"{b.type} {p['radius']}"
                                     for b, p in zip(self.attacks, parts, strict=True)),
                "effort": f"{self.k} steps", "restarts": str(self.reps)}

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        from jobs.attacks.msd.attack import MsdAttack

        return MsdAttack(self, bounds=bounds)


