"""The l_p attack spec: PGD on the l_inf and l_2 balls, SLIDE on the l_1 ball (torch-free).

Keys (those of the paper's public config files): ``epsilon`` (required), ``k=100`` steps,
``a=2.5*epsilon/k`` (the step; for SLIDE the l_1 mass of a step), ``random_start=True``,
``reps=1`` restarts, and for l1 ``perc=99`` (a number or a [lo, hi] range in [0, 100], drawn once
per restart). The attack is ``jobs.attacks.pgd.attack.PGDAttack``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.attacks.balls import LpBall
from jobs.attacks.checks import check_keys, flag, integer, is_number, number, spec_error
from jobs.attacks.specbase import AttackSpec, Bounds, Description, num

if TYPE_CHECKING:
    from jobs.attacks.base import Attack

#: What runs, per family.
LABELS = {"linf": "PGD", "l2": "PGD", "l1": "SLIDE"}


def _perc(spec: Mapping[str, Any], path: str) -> float | tuple[float, float]:
    v = spec.get("perc", 99.0)
    msg = "must be a number in [0, 100] or a [lo, hi] range with 0 <= lo <= hi <= 100"
    if is_number(v):
        if not 0 <= v <= 100:
            raise spec_error(path, "perc", msg, v)
        return float(v)
    if isinstance(v, list | tuple) and len(v) == 2 and all(is_number(i) for i in v):
        lo, hi = float(v[0]), float(v[1])
        if not 0 <= lo <= hi <= 100:
            raise spec_error(path, "perc", msg, v)
        return (lo, hi)
    raise spec_error(path, "perc", msg, v)


@dataclass(frozen=True)
class LpSpec(AttackSpec):
    """PGD on an l_p ball: l_inf and l_2 (steepest ascent), l_1 (SLIDE, with ``perc``)."""

    type: str
    epsilon: float
    k: int
    a: float
    random_start: bool
    reps: int
    perc: float | tuple[float, float] | None = None  # l1 only

    @property
    def family(self) -> str:
        return self.type

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, path: str) -> LpSpec:
        typ = spec["type"]
        keys = ("type", "epsilon", "k", "a", "random_start", "reps") + (("perc",) if typ == "l1" else ())
        check_keys(spec, path, keys, f"type {typ!r}")
        eps = number(spec, "epsilon", path, lo=0.0)
        k = integer(spec, "k", path, default=100, lo=1)
        a = number(spec, "a", path, default=2.5 * eps / k, lo=0.0)
        random_start = flag(spec, "random_start", path, default=True)
        reps = integer(spec, "reps", path, default=1, lo=1)
        perc = _perc(spec, path) if typ == "l1" else None
        return cls(type=typ, epsilon=eps, k=k, a=a, random_start=random_start, reps=reps, perc=perc)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type,
            "epsilon": self.epsilon,
            "k": self.k,
            "a": self.a,
            "random_start": self.random_start,
            "reps": self.reps,
        }
        if self.type == "l1":
            out["perc"] = list(self.perc) if isinstance(self.perc, tuple) else self.perc
        return out

    def _scaled(self, factor: float) -> LpSpec:
        # the step keeps its ratio to the radius
        return dataclasses.replace(self, epsilon=self.epsilon * factor, a=self.a * factor)

    def with_restarts(self, reps: int) -> LpSpec:
        return dataclasses.replace(self, reps=reps)

    def ball(self, radius: float | None = None) -> LpBall:
        return LpBall(self.family, self.epsilon if radius is None else float(radius))

    def describe(self) -> Description:
        return {**super().describe(), "label": LABELS[self.type], "radius": num(self.epsilon),
                "effort": f"{self.k} steps", "restarts": str(self.reps)}

    def build(self, *, bounds: Bounds, eval_batch: int) -> Attack:
        from jobs.attacks.pgd.attack import PGDAttack

        return PGDAttack(self, bounds=bounds)
